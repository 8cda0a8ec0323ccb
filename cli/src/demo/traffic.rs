//! The demo's traffic: the channels' and tills' orders at a steady rate, and each site's staff working them
//! (waves, picks, pack, ship, deliver, the odd cancel and return), with what the clients counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};

use super::{SKUS, post, sku};

/// Where channel customers live: the hub routes each order to the nearest site holding rights.
pub(super) const CITIES: [(&str, f64, f64); 7] = [
    ("Hamburg", 53.55, 9.99),
    ("Munich", 48.14, 11.58),
    ("Cologne", 50.94, 6.96),
    ("Berlin", 52.52, 13.40),
    ("Frankfurt", 50.11, 8.68),
    ("Leipzig", 51.34, 12.37),
    ("Stuttgart", 48.78, 9.18),
];

#[derive(Default)]
pub(super) struct Tally {
    /// Orders acknowledged by the hub (channels) and by the sites (their own tills).
    pub(super) hub_placed: AtomicU64,
    pub(super) hub_backordered: AtomicU64,
    /// Channel orders whose card the provider declined (`402`, nothing taken).
    pub(super) hub_declined: AtomicU64,
    /// Of those, the ones at the Stripe-compatible provider (`--stripe-url`): taken, declined.
    pub(super) stripe_placed: AtomicU64,
    pub(super) stripe_declined: AtomicU64,
    pub(super) placed: AtomicU64,
    pub(super) refused_stock: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) shipped: AtomicU64,
    pub(super) short_picks: AtomicU64,
    pub(super) cancelled: AtomicU64,
    pub(super) returned: AtomicU64,
    /// The certificate the hub's HTTPS must present (DER of `http-hub.pem`).
    pub(super) hub_cert: Vec<u8>,
    /// Answers from the hub over TLS with that certificate.
    pub(super) hub_https_ok: AtomicU64,
    /// Answers from the hub that were not: plain HTTP, or another certificate. Must stay 0.
    pub(super) hub_https_mismatches: AtomicU64,
}

impl Tally {
    /// Counts an answer from the hub: over TLS with the hub's HTTP certificate, or a mismatch.
    pub(super) fn hub_answer(&self, r: &reqwest::Response) {
        let presented = r.extensions().get::<reqwest::tls::TlsInfo>().and_then(|t| t.peer_certificate());
        if r.url().scheme() == "https" && presented == Some(self.hub_cert.as_slice()) {
            self.hub_https_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.hub_https_mismatches.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The payment of channel order `n`: mostly cards at the hub's test provider, whose faults the token chooses
/// (a capture that times out after taking effect, one answered twice, a decline now and then), some on terms;
/// with `stripe`, one card in five at the Stripe-compatible provider (localstripe's test cards, one of them
/// declining).
pub(super) fn demo_payment(n: u64, stripe: bool) -> Value {
    let token = match n % 50 {
        7 => "tok_decline_demo",
        k if k % 10 == 3 => "tok_demo_capture_timeout",
        k if k % 10 == 6 => "tok_demo_capture_dup",
        k if k % 10 == 9 => "tok_demo_capture_500",
        _ => "tok_demo",
    };
    if n.is_multiple_of(22) {
        json!({"method": "terms"})
    } else if n.is_multiple_of(11) {
        json!({"method": "cod"})
    } else if stripe && n % 5 == 2 {
        let token = if n % 50 == 22 { "pm_card_chargeCustomerFail" } else { "pm_card_visa" };
        json!({"method": "card", "provider": "stripe", "token": token})
    } else {
        json!({"method": "card", "provider": "test", "token": token})
    }
}

/// Drives one site's staff: waves, picks, pack, ship, deliver, the odd cancel and return.
/// Staff keep working after the order flow stops, until `stop` is set (once the hub and the sites have
/// converged, so assignments that arrive late are shipped too), at most two minutes.
pub(super) async fn staff_loop(
    http: reqwest::Client,
    service: reqwest::Client,
    addr: SocketAddr,
    seed: u64,
    until: Instant,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tally: Arc<Tally>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let base = format!("http://{addr}/v1");
    // Packed orders whose label is not bought yet (the carrier is unreachable from the cut site).
    let mut awaiting: Vec<String> = Vec::new();
    while !stop.load(Ordering::Relaxed) && Instant::now() < until + Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut still = Vec::new();
        for id in std::mem::take(&mut awaiting) {
            if !ship_labelled(&http, &base, &id, &tally).await {
                still.push(id);
            }
        }
        awaiting = still;
        let Ok((201, wave)) = post(&http, format!("{base}/waves"), json!({"max_orders": 20})).await else { continue };
        let orders: Vec<String> = wave["orders"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default();
        for id in orders {
            let Ok(r) = http.get(format!("{base}/orders/{id}")).send().await else { continue };
            let Ok(order) = r.json::<Value>().await else { continue };
            let lines: Vec<Value> = order["lines"]
                .as_array()
                .map(|ls| {
                    ls.iter()
                        .map(|l| {
                            let qty = l["qty"].as_u64().unwrap_or(0);
                            // One line in fifty is short: the bin held less than the book said.
                            let picked = if rng.random_ratio(1, 50) { qty / 2 } else { qty };
                            json!({"sku": l["sku"], "picked": picked})
                        })
                        .collect()
                })
                .unwrap_or_default();
            let Ok((200, picked)) = post(&http, format!("{base}/orders/{id}/picks"), json!({"lines": lines})).await
            else {
                continue;
            };
            if picked["timeline"]
                .as_array()
                .and_then(|t| t.last())
                .and_then(|e| e["note"].as_str())
                .is_some_and(|n| n.starts_with("short"))
            {
                tally.short_picks.fetch_add(1, Ordering::Relaxed);
            }
            if picked["status"] != "picked" {
                continue;
            }
            if rng.random_ratio(1, 40) {
                if let Ok((200, _)) =
                    post(&service, format!("{base}/orders/{id}/cancel"), json!({"reason": "customer changed mind"}))
                        .await
                {
                    tally.cancelled.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            // Packed into a consignment; shipped with the label's tracking once the test carrier sold it
            // (at the cut site, after the heal).
            let parcel = json!({"weight_g": 900, "length_mm": 300, "width_mm": 200, "height_mm": 100});
            if !matches!(
                post(&http, format!("{base}/orders/{id}/pack"), json!({"parcels": [parcel]})).await,
                Ok((200, _))
            ) {
                continue;
            }
            if !ship_labelled(&http, &base, &id, &tally).await {
                awaiting.push(id);
                continue;
            }
            if rng.random_ratio(1, 30) {
                let l0 = &lines[0];
                let body = json!({"lines": [{"sku": l0["sku"], "qty": 1}], "disposition": "restock"});
                if let Ok((201, _)) = post(&http, format!("{base}/orders/{id}/returns"), body).await {
                    tally.returned.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Ships (and, a site's own, delivers) the packed order `id` with its consignment's tracking if its label is bought,
/// waiting for it at most a second; false if the label is not there yet.
pub(super) async fn ship_labelled(http: &reqwest::Client, base: &str, id: &str, tally: &Tally) -> bool {
    let mut tracking = None;
    for _ in 0..10 {
        if let Ok(r) = http.get(format!("{base}/consignments/C-{id}")).send().await
            && let Ok(c) = r.json::<Value>().await
            && c["state"] == "labelled"
        {
            tracking = c["tracking"].as_str().map(String::from);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(tracking) = tracking else { return false };
    let Ok((200, _)) =
        post(http, format!("{base}/orders/{id}/ship"), json!({"carrier": "test", "tracking": tracking})).await
    else {
        return false;
    };
    tally.shipped.fetch_add(1, Ordering::Relaxed);
    // The hub's fulfillments are delivered by the carrier (the demo plays it at the end, see `tracking`);
    // staff deliver the site's own orders by hand.
    if id.starts_with(oms_protocol::domain::HUB_ORDER_PREFIX) {
        return true;
    }
    // Body-less, but every write names its content type (the node refuses it otherwise).
    let _ = http
        .post(format!("{base}/orders/{id}/deliver"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .send()
        .await;
    true
}

/// What the order stream needs ([`spawn_placer`]).
pub(super) struct Placer {
    /// The `web` channel's client (its key).
    pub(super) web_http: reqwest::Client,
    /// The `marketplace` channel's client.
    pub(super) market_http: reqwest::Client,
    /// The sites' tills' client (channel `pos`).
    pub(super) pos_http: reqwest::Client,
    pub(super) tally: Arc<Tally>,
    /// The sites' HTTP addresses.
    pub(super) addrs: Vec<SocketAddr>,
    /// The ids of the orders the hub took, in the order it answered.
    pub(super) hub_ids: Arc<std::sync::Mutex<Vec<String>>>,
    /// Orders a second across all channels.
    pub(super) rate: u32,
    pub(super) seed: u64,
    /// One card in five to the Stripe-compatible provider.
    pub(super) stripe: bool,
    pub(super) hub_http: SocketAddr,
    pub(super) until: Instant,
}

/// The order stream: three quarters of the orders to the hub from the `web` and `marketplace` channels
/// (with payments), the rest to a random site's till, at `rate` a second until `until`, each retried with
/// its idempotency key until answered (at most 20 tries, 256 in flight). Counts in `tally`; the ids of the
/// hub's orders in `hub_ids`.
pub(super) fn spawn_placer(p: Placer) -> tokio::task::JoinHandle<()> {
    let Placer { web_http, market_http, pos_http, tally, addrs, hub_ids, rate, seed, stripe, hub_http, until } = p;
    tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
        let mut n = 0u64;
        let mut inflight = tokio::task::JoinSet::new();
        while Instant::now() < until {
            tick.tick().await;
            n += 1;
            let to_hub = !n.is_multiple_of(4);
            let site = rng.random_range(0..addrs.len());
            let nlines = rng.random_range(1..=3usize);
            let mut skus: Vec<usize> = (0..nlines).map(|_| rng.random_range(0..SKUS)).collect();
            skus.sort_unstable();
            skus.dedup();
            let channel = if !to_hub {
                "pos"
            } else if n.is_multiple_of(3) {
                "marketplace"
            } else {
                "web"
            };
            let (city, lat, lon) = CITIES[rng.random_range(0..CITIES.len())];
            let mut body = json!({
                "external_ref": format!("{channel}-{n}"), "channel": channel,
                "lines": skus.iter().map(|i| json!({"sku": sku(*i), "qty": rng.random_range(1..=3), "unit_price_minor": 1999, "currency": "EUR"})).collect::<Vec<_>>(),
                "ship_to": {"name": "Demo Customer", "line1": format!("{n} Demo Street"), "city": city, "postcode": "10115", "country": "DE", "lat": lat, "lon": lon}
            });
            if to_hub {
                body["payment"] = demo_payment(n, stripe);
            }
            let url = if to_hub {
                format!("https://{hub_http}/v1/orders")
            } else {
                format!("http://{}/v1/orders", addrs[site])
            };
            // The hub's channels and each site's till each use their own key.
            let http = match channel {
                "web" => web_http.clone(),
                "marketplace" => market_http.clone(),
                _ => pos_http.clone(),
            };
            let (tally, hub_ids) = (tally.clone(), hub_ids.clone());
            if inflight.len() >= 256 {
                let _ = inflight.join_next().await;
            }
            let at_stripe = body["payment"]["provider"] == "stripe";
            inflight.spawn(async move {
                // Retry with the same idempotency key: a process being restarted must not lose or double it.
                for _ in 0..20 {
                    let r = http.post(&url).header("idempotency-key", format!("demo-{n}")).json(&body).send().await;
                    let r = match r {
                        Ok(r) => r,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(250)).await;
                            continue;
                        }
                    };
                    if to_hub {
                        tally.hub_answer(&r);
                    }
                    match r.status().as_u16() {
                        201 if to_hub => {
                            let v: Value = r.json().await.unwrap_or(Value::Null);
                            tally.hub_placed.fetch_add(1, Ordering::Relaxed);
                            if at_stripe {
                                tally.stripe_placed.fetch_add(1, Ordering::Relaxed);
                            }
                            if v["status"] == "backordered" {
                                tally.hub_backordered.fetch_add(1, Ordering::Relaxed);
                            }
                            if let Some(id) = v["id"].as_str()
                                && let Ok(mut ids) = hub_ids.lock()
                            {
                                ids.push(id.to_owned());
                            }
                            return;
                        }
                        201 => {
                            tally.placed.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        402 if to_hub => {
                            tally.hub_declined.fetch_add(1, Ordering::Relaxed);
                            if at_stripe {
                                tally.stripe_declined.fetch_add(1, Ordering::Relaxed);
                            }
                            return;
                        }
                        409 => {
                            tally.refused_stock.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(250)).await,
                    }
                }
                tally.errors.fetch_add(1, Ordering::Relaxed);
            });
        }
        while inflight.join_next().await.is_some() {}
    })
}
