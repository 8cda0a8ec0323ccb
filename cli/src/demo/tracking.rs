//! The demo acting as the carrier (issue 15, item 6): after the end of day, for (at most [`TRACKED_MAX`]
//! of) the hub's fulfillments shipped and not delivered (staff deliver only their site's own orders), it posts signed tracking events to the hub (`POST /v1/carriers/test/events`, the
//! hub's `[carriers.test]`): `in_transit` then `delivered` for all but one, whose parcel fails (`failure`,
//! which flags the order for customer service). Every other parcel travels with a carrier that posts in
//! EasyPost's own format instead (`POST /v1/carriers/test-easypost/events`, `[carriers.test-easypost]` with
//! `format = "easypost"`: an `Event` with a `Tracker`, signed `X-Hmac-Signature`), and one EasyPost event of
//! a status the hub does not know (`unknown`) that must change nothing. Then it waits until the sites delivered those fulfillments
//! (the hub writes the carrier's delivery into each fulfillment's document; each site applies its own
//! deliver), replays some events and posts a late `in_transit` after a delivery: neither may change what the
//! hub shows. The summary adds `tracking_events`, `tracking_events_replayed_changed` (0),
//! `tracking_state_regressions` (0), `delivered_by_carrier`, `delivered_by_carrier_missing` (0),
//! `carrier_exceptions`, `carrier_exception_mismatches` (0), `order_delivered_twice` (0),
//! `tracking_events_easypost_format` and `tracking_unknown_status_changed` (0).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The carrier's name in the hub's config.
pub(super) const CARRIER: &str = "test";
/// Its webhook secret (the demo's own, on loopback).
pub(super) const SECRET: &str = "whsec_oms_demo_test_carrier";
/// The carrier that posts in EasyPost's format.
pub(super) const CARRIER_EASYPOST: &str = "test-easypost";
/// Its webhook secret.
const SECRET_EASYPOST: &str = "easypost_demo_webhook_secret";
/// Most fulfillments the demo tracks (bounds the run).
const TRACKED_MAX: usize = 100;
/// Most events replayed.
const REPLAYS_MAX: usize = 5;
/// How long the sites get to deliver what the carrier delivered.
const DELIVERY_WAIT: Duration = Duration::from_secs(60);
/// Most pages of the event feed read.
const FEED_PAGES_MAX: usize = 1_000;

/// The hub's `[carriers.test]` section, and an open-route rate per client IP that lets one carrier on
/// loopback post its events at once (the default, 20/s, is meant for customers' tracking pages).
pub(super) fn hub_toml() -> String {
    format!(
        "[carriers.{CARRIER}]\nwebhook_secret = \"{SECRET}\"\n[carriers.{CARRIER_EASYPOST}]\n\
         webhook_secret = \"{SECRET_EASYPOST}\"\nformat = \"easypost\"\n[auth]\nopen_rate_per_s = 1000\n"
    )
}

/// What the demo's carrier did and found.
#[derive(Debug, Default)]
pub(super) struct TrackingFigures {
    events: u64,
    refused: u64,
    replayed_changed: u64,
    regressions: u64,
    delivered_by_carrier: u64,
    delivered_missing: u64,
    exceptions: u64,
    exception_mismatches: u64,
    delivered_twice: u64,
    easypost: u64,
    unknown_changed: u64,
}

impl TrackingFigures {
    pub(super) fn json(&self) -> Value {
        json!({
            "tracking_events": self.events,
            "tracking_events_refused": self.refused,
            "tracking_events_replayed_changed": self.replayed_changed,
            "tracking_state_regressions": self.regressions,
            "delivered_by_carrier": self.delivered_by_carrier,
            "delivered_by_carrier_missing": self.delivered_missing,
            "carrier_exceptions": self.exceptions,
            "carrier_exception_mismatches": self.exception_mismatches,
            "order_delivered_twice": self.delivered_twice,
            "tracking_events_easypost_format": self.easypost,
            "tracking_unknown_status_changed": self.unknown_changed,
        })
    }

    pub(super) fn line(&self) -> String {
        format!(
            "carrier tracking: {} events posted ({} in EasyPost's format, {} refused), {} fulfillments delivered by the carrier (missing {}), {} carrier exceptions flagged (mismatches {}); replays that changed something {}, state regressions {}, order.delivered twice {}, unknown statuses that changed something {} (all must be 0)",
            self.events,
            self.easypost,
            self.refused,
            self.delivered_by_carrier,
            self.delivered_missing,
            self.exceptions,
            self.exception_mismatches,
            self.replayed_changed,
            self.regressions,
            self.delivered_twice,
            self.unknown_changed
        )
    }

    /// True when every mismatch counter is 0.
    pub(super) fn ok(&self) -> bool {
        self.refused == 0
            && self.replayed_changed == 0
            && self.regressions == 0
            && self.delivered_missing == 0
            && self.exception_mismatches == 0
            && self.delivered_twice == 0
            && self.unknown_changed == 0
    }
}

/// A shipped fulfillment the demo tracks.
struct Parcel {
    order: String,
    fulfillment: String,
    tracking: String,
    /// Its carrier posts in EasyPost's format.
    easypost: bool,
}

/// One tracking event as `p`'s carrier posts it: the hub's format, or EasyPost's `Event` with a `Tracker`.
fn body(p: &Parcel, id: &str, status: &str, at_ms: u64) -> Vec<u8> {
    let words = format!("demo carrier: {status}");
    let v = if p.easypost {
        let at = oms_protocol::shipping::rfc3339(at_ms);
        json!({"id": format!("evt_{id}"), "object": "Event", "description": "tracker.updated", "mode": "test",
            "result": {"object": "Tracker", "tracking_code": p.tracking, "status": status, "carrier": "DemoPost",
                "tracking_details": [{"object": "TrackingDetail", "status": status, "message": words,
                    "datetime": at}]}})
    } else {
        json!({"id": id, "tracking_code": p.tracking, "status": status, "occurred_at_ms": at_ms,
            "description": words})
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Posts one signed event as `p`'s carrier; the hub's answer.
async fn send(carrier: &reqwest::Client, hub: SocketAddr, p: &Parcel, b: &[u8]) -> Option<Value> {
    let req = if p.easypost {
        carrier
            .post(format!("https://{hub}/v1/carriers/{CARRIER_EASYPOST}/events"))
            .header("x-hmac-signature", oms_hub::tracking::easypost_signature(SECRET_EASYPOST, b))
    } else {
        let t = oms_service::now_ms() / 1_000;
        carrier
            .post(format!("https://{hub}/v1/carriers/{CARRIER}/events"))
            .header("x-oms-signature", oms_hub::events::webhooks::signature_header(SECRET, t, b))
    };
    let r = req.header(reqwest::header::CONTENT_TYPE, "application/json").body(b.to_vec()).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

async fn order(admin: &reqwest::Client, hub: SocketAddr, id: &str) -> Option<Value> {
    let r = admin.get(format!("https://{hub}/v1/orders/{id}")).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

fn fulfillment<'a>(v: &'a Value, fo: &str) -> Option<&'a Value> {
    v["fulfillments"].as_array()?.iter().find(|f| f["id"] == fo)
}

/// Plays the carrier for the hub's shipped fulfillments of `acked` orders. `admin` reads the hub; `carrier`
/// (no API key) posts the events.
pub(super) async fn pass(
    admin: &reqwest::Client,
    carrier: &reqwest::Client,
    hub: SocketAddr,
    acked: &[String],
) -> TrackingFigures {
    let mut f = TrackingFigures::default();
    let mut parcels = Vec::new();
    for id in acked {
        if parcels.len() >= TRACKED_MAX {
            break;
        }
        let Some(v) = order(admin, hub, id).await else { continue };
        for fo in v["fulfillments"].as_array().into_iter().flatten() {
            if fo["status"] == "shipped"
                && let (Some(fid), Some(t)) = (fo["id"].as_str(), fo["shipment"]["tracking"].as_str())
                && parcels.len() < TRACKED_MAX
            {
                let easypost = parcels.len() % 2 == 1;
                parcels.push(Parcel {
                    order: id.clone(),
                    fulfillment: fid.to_owned(),
                    tracking: t.to_owned(),
                    easypost,
                });
            }
        }
    }
    let t0 = oms_service::now_ms();
    // The first parcel fails; the others travel and arrive.
    for (i, p) in parcels.iter().enumerate() {
        let last = if i == 0 { "failure" } else { "delivered" };
        for (n, status) in [(1u64, "in_transit"), (2, last)] {
            let b = body(p, &format!("{}-{n}", p.tracking), status, t0 + n * 1_000);
            match send(carrier, hub, p, &b).await {
                Some(v) if v["replayed"] == false => {
                    f.events += 1;
                    f.easypost += u64::from(p.easypost);
                }
                _ => f.refused += 1,
            }
        }
    }
    // The sites deliver what the carrier delivered (through the fulfillments' documents and their sync).
    let deadline = Instant::now() + DELIVERY_WAIT;
    let mut waiting: Vec<&Parcel> = parcels.iter().skip(1).collect();
    while !waiting.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for p in waiting {
            let done = order(admin, hub, &p.order)
                .await
                .and_then(|v| fulfillment(&v, &p.fulfillment).map(|fo| fo["status"] == "delivered"))
                .unwrap_or(false);
            if done {
                f.delivered_by_carrier += 1;
            } else {
                still.push(p);
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    f.delivered_missing = waiting.len() as u64;
    // Replays and a late in_transit change nothing the hub shows.
    for p in parcels.iter().skip(1).take(REPLAYS_MAX) {
        let before = order(admin, hub, &p.order).await;
        let b = body(p, &format!("{}-2", p.tracking), "delivered", t0 + 2_000);
        let replayed = send(carrier, hub, p, &b).await.is_some_and(|v| v["replayed"] == true);
        let after = order(admin, hub, &p.order).await;
        if !replayed
            || before.is_none()
            || before.map(|v| v["fulfillments"].clone()) != after.map(|v| v["fulfillments"].clone())
        {
            f.replayed_changed += 1;
        }
        let late = body(p, &format!("{}-late", p.tracking), "in_transit", t0 + 60_000);
        match send(carrier, hub, p, &late).await {
            Some(_) => {
                f.events += 1;
                f.easypost += u64::from(p.easypost);
            }
            None => f.refused += 1,
        }
        let state = order(admin, hub, &p.order).await.and_then(|v| {
            fulfillment(&v, &p.fulfillment).map(|fo| (fo["status"].clone(), fo["tracking_status"].clone()))
        });
        if state != Some((json!("delivered"), json!("delivered"))) {
            f.regressions += 1;
        }
    }
    // An EasyPost status the hub does not know is stored and changes nothing the hub shows.
    if let Some(p) = parcels.iter().find(|p| p.easypost) {
        let before = order(admin, hub, &p.order).await;
        let b = body(p, &format!("{}-unknown", p.tracking), "unknown", t0 + 90_000);
        match send(carrier, hub, p, &b).await {
            Some(v) if v["replayed"] == false => {
                f.events += 1;
                f.easypost += 1;
            }
            _ => f.refused += 1,
        }
        let after = order(admin, hub, &p.order).await;
        let shown = |v: &Option<Value>| {
            v.as_ref().and_then(|v| fulfillment(v, &p.fulfillment)).map(|fo| {
                (fo["status"].clone(), fo["tracking_status"].clone(), v.as_ref().map(|v| v["timeline"].clone()))
            })
        };
        let tracked = after
            .as_ref()
            .and_then(|v| fulfillment(v, &p.fulfillment))
            .and_then(|fo| fo["tracking"].as_array().map(|a| a.iter().any(|e| e["status"] == "unknown")));
        if before.is_none() || shown(&before) != shown(&after) || tracked != Some(true) {
            f.unknown_changed += 1;
        }
    }
    // The exception is flagged for customer service.
    if let Ok(r) = admin.get(format!("https://{hub}/v1/orders?flag=carrier_exception")).send().await
        && let Ok(v) = r.json::<Value>().await
    {
        let flagged: Vec<&str> =
            v["orders"].as_array().into_iter().flatten().filter_map(|o| o["fulfillment"].as_str()).collect();
        f.exceptions = flagged.len() as u64;
        let expected: Vec<&str> = parcels.first().map(|p| p.fulfillment.as_str()).into_iter().collect();
        if flagged != expected {
            f.exception_mismatches += 1;
        }
    } else {
        f.exception_mismatches += 1;
    }
    // order.delivered once per fulfillment, whoever delivered it.
    let mut delivered: BTreeMap<String, u64> = BTreeMap::new();
    let mut after = 0u64;
    for _ in 0..FEED_PAGES_MAX {
        let url = format!("https://{hub}/v1/events?after={after}&limit=1000&types=order.delivered");
        let Ok(r) = admin.get(url).send().await else { break };
        let Ok(v) = r.json::<Value>().await else { break };
        for e in v["events"].as_array().into_iter().flatten() {
            if let Some(fo) = e["data"]["fulfillment_id"].as_str() {
                *delivered.entry(fo.to_owned()).or_default() += 1;
            }
        }
        let next = v["next_after"].as_u64().unwrap_or(after);
        if next == after {
            break;
        }
        after = next;
    }
    f.delivered_twice = delivered.values().filter(|n| **n > 1).count() as u64;
    f
}
