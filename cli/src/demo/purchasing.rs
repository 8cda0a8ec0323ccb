//! The demo's purchasing pass: a demo supplier offering every SKU (MOQ 12, multiples of 6, folder channel),
//! then per site a purchase order from the replenishment's suggestions (the demo's few seconds of demand are
//! too short a history to forecast, so a site without suggestions gets explicit lines at the supplier's
//! terms), each created twice under one idempotency key (one order), sent through the hub's outbox into its
//! folder (`hub/purchase-orders/<po>.json|csv`), confirmed, and announced by an ASN recorded twice (once).
//! One more order is cancelled. Then it checks that what the hub counts as on order equals the open lines of
//! the orders (`on_order_mismatches`, also per replenishment row), that every order sent was delivered with
//! its documents in the folder and that replays made nothing twice (`purchasing_mismatches`); all must be 0.
//! Then every site receives its ASN at the dock (`POST /v1/inbound/{asn}/receipts`, sent twice under one
//! key: booked once), the cut site while the demo cuts it off from the hub again; the hub advances each order
//! once the receipts sync back (`units_received_against_po` = the units received, else
//! `receipt_mismatches`). Every site also receives one more unit of its ASN line through the receiving
//! screen as its `picker` (the form pressed twice): `screen_receipts` counts them, and
//! `screen_receipt_mismatches` (must be 0) counts receipts whose ledger entries differ from what was posted.
//!
//! The supplier acts with its own `supplier` key: it lists its orders, confirms them and posts their ASNs
//! (`asns_by_supplier_key`). A second supplier gets one order of its own, which the demo supplier's key
//! probes (listing, reading, confirming, an ASN, a CSV of ASNs with one row for it):
//! `supplier_key_foreign_access` counts every answer that let it see or touch that order (must be 0).
//! Once the receipts reached the hub, the sites drop them from their stock documents (acknowledged by the
//! hub, after the demo's 1 s grace): `site_receipts_pruned` and `receipt_prune_mismatches` (receipts or
//! acknowledgements still in flight at the end of the wait, or units received that moved; must be 0).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

/// The demo's supplier.
pub(super) const SUPPLIER: &str = "demo-supplier";
/// Another supplier, whose order the demo supplier's key must not reach.
const OTHER_SUPPLIER: &str = "other-supplier";
/// Longest wait for the outbox to deliver every order.
const DELIVERY_WAIT: Duration = Duration::from_secs(15);
/// Longest wait for an ASN to reach its site, and for the receipts to reach the hub after the heal.
const RECEIVING_WAIT: Duration = Duration::from_secs(60);

/// Units every site receives through the receiving screen.
const SCREEN_UNITS: u64 = 1;

/// The sites' side of the pass: their staff key, where each site listens, and the site to cut off.
pub(super) struct Docks<'a> {
    /// A staff client of the nodes.
    pub staff: &'a reqwest::Client,
    /// (site id, HTTP address).
    pub sites: Vec<(&'a str, SocketAddr)>,
    /// The site that receives while cut off.
    pub cut_site: &'a str,
    /// Its link to the hub.
    pub relay: &'a oms_transport::relay::Relay,
    /// The PIN of every site's `picker` (staff), for the receiving screen.
    pub picker_pin: &'a str,
}

/// What the pass found.
#[derive(Debug, Default)]
pub(super) struct PurchasingFigures {
    by_state: Value,
    received: u64,
    on_order: u64,
    from_replenishment: u64,
    asns: u64,
    receipts: u64,
    received_while_cut_off: u64,
    receipt_mismatches: u64,
    on_order_mismatches: u64,
    mismatches: u64,
    screen_receipts: u64,
    screen_units: u64,
    screen_receipt_mismatches: u64,
    asns_by_supplier_key: u64,
    supplier_key_foreign_access: u64,
    receipts_pruned: u64,
    receipt_prune_mismatches: u64,
}

impl PurchasingFigures {
    pub(super) fn json(&self) -> Value {
        json!({
            "purchase_orders": self.by_state,
            "purchase_orders_from_replenishment": self.from_replenishment,
            "asns_recorded": self.asns,
            "units_on_order": self.on_order,
            "units_received_against_po": self.received,
            "site_receipts": self.receipts,
            "site_receipts_while_cut_off": self.received_while_cut_off,
            "receipt_mismatches": self.receipt_mismatches,
            "on_order_mismatches": self.on_order_mismatches,
            "purchasing_mismatches": self.mismatches,
            "screen_receipts": self.screen_receipts,
            "screen_receipt_units": self.screen_units,
            "screen_receipt_mismatches": self.screen_receipt_mismatches,
            "asns_by_supplier_key": self.asns_by_supplier_key,
            "supplier_key_foreign_access": self.supplier_key_foreign_access,
            "site_receipts_pruned": self.receipts_pruned,
            "receipt_prune_mismatches": self.receipt_prune_mismatches,
        })
    }

    pub(super) fn ok(&self) -> bool {
        self.on_order_mismatches == 0
            && self.mismatches == 0
            && self.receipt_mismatches == 0
            && self.screen_receipt_mismatches == 0
            && self.supplier_key_foreign_access == 0
            && self.receipt_prune_mismatches == 0
    }

    pub(super) fn line(&self) -> String {
        format!(
            "purchasing: orders by state {}, {} from the replenishment, {} ASNs ({} by the supplier's own key; its reaches into another supplier's order {}), {} units on order, {} received against orders in {} site receipts ({} while cut off) and {} through the receiving screen ({} units), {} receipts pruned from the stock documents (prune mismatches {}); on-order mismatches {}, purchasing mismatches {}, receipt mismatches {}, screen receipt mismatches {} (all must be 0)",
            self.by_state,
            self.from_replenishment,
            self.asns,
            self.asns_by_supplier_key,
            self.supplier_key_foreign_access,
            self.on_order,
            self.received,
            self.receipts,
            self.received_while_cut_off,
            self.screen_receipts,
            self.screen_units,
            self.receipts_pruned,
            self.receipt_prune_mismatches,
            self.on_order_mismatches,
            self.mismatches,
            self.receipt_mismatches,
            self.screen_receipt_mismatches
        )
    }
}

async fn call(req: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
    let r = req.send().await.context("hub unreachable")?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

/// Runs the pass against the hub at `hub` for `sites`, offering `skus`; `folder` is the hub's purchase-order
/// folder.
pub(super) async fn pass(
    admin: &reqwest::Client,
    supplier_key: &reqwest::Client,
    hub: SocketAddr,
    sites: &[&str],
    skus: &[String],
    folder: &Path,
    docks: &Docks<'_>,
) -> anyhow::Result<PurchasingFigures> {
    let base = format!("https://{hub}/v1");
    let mut f = PurchasingFigures::default();
    let offers: serde_json::Map<String, Value> = skus
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let terms = json!({"supplier_sku": format!("DS-{s}"), "cost_minor": 700 + 10 * i as u64, "moq": 12, "order_multiple": 6});
            (s.clone(), terms)
        })
        .collect();
    let supplier = json!({"name": "Demo Supplier", "contact": "orders@supplier.test", "currency": "EUR", "lead_time_days": 4, "skus": offers});
    let (status, _) = call(admin.put(format!("{base}/suppliers/{SUPPLIER}")).json(&supplier)).await?;
    anyhow::ensure!(status == 201 || status == 200, "PUT supplier answered {status}");
    let mut ids: Vec<(String, &str)> = Vec::new();
    for (n, site) in sites.iter().enumerate() {
        let key = format!("demo-po-{site}");
        let from = json!({"supplier": SUPPLIER, "site": site, "from_replenishment": true});
        let post = |body: &Value, key: &str| {
            admin.post(format!("{base}/purchase-orders")).header("Idempotency-Key", key).json(body)
        };
        let (mut status, mut po) = call(post(&from, &key)).await?;
        let mut body = from;
        if status == 201 {
            f.from_replenishment += 1;
        } else if po["code"] == "nothing_to_order" {
            // No forecastable history yet: explicit lines at the supplier's terms.
            let lines: Vec<Value> =
                (0..3).map(|k| json!({"sku": skus[(n * 3 + k) % skus.len()], "qty": 12 + 6 * k})).collect();
            body = json!({"supplier": SUPPLIER, "site": site, "lines": lines});
            (status, po) = call(post(&body, &format!("{key}-lines"))).await?;
        }
        anyhow::ensure!(status == 201, "POST purchase order for {site} answered {status}: {po}");
        let id = po["id"].as_str().unwrap_or_default().to_owned();
        // The same request again: the same order, not a second one.
        let again_key = if body.get("lines").is_some() { format!("{key}-lines") } else { key };
        let (s2, again) = call(post(&body, &again_key)).await?;
        if s2 != 200 || again["id"] != po["id"] {
            f.mismatches += 1;
        }
        ids.push((id, site));
    }
    let foreign = other_suppliers_order(admin, &base, sites[0], &skus[0]).await?;
    let mut asns = Vec::new();
    for (n, (id, site)) in ids.iter().enumerate() {
        let (s, _) = call(admin.post(format!("{base}/purchase-orders/{id}/send")).json(&json!({}))).await?;
        // The supplier confirms with its own key and reads the order it got.
        let (c, _) = call(supplier_key.post(format!("{base}/purchase-orders/{id}/confirm")).json(&json!({}))).await?;
        f.mismatches += u64::from(s != 200) + u64::from(c != 200);
        // An ASN for half of line 1, recorded twice: once.
        let (_, po) = call(supplier_key.get(format!("{base}/purchase-orders/{id}"))).await?;
        let qty = po["lines"][0]["ordered"].as_u64().unwrap_or(2) / 2;
        let asn = json!({"asn": format!("ASN-{id}-1"), "lines": [{"line": 1, "qty": qty.max(1)}]});
        let (a1, _) = call(supplier_key.post(format!("{base}/purchase-orders/{id}/asns")).json(&asn)).await?;
        let (a2, _) = call(supplier_key.post(format!("{base}/purchase-orders/{id}/asns")).json(&asn)).await?;
        f.mismatches += u64::from(a1 != 201) + u64::from(a2 != 200);
        f.asns += u64::from(a1 == 201);
        f.asns_by_supplier_key += u64::from(a1 == 201);
        asns.push((format!("ASN-{id}-1"), *site, po["lines"][0]["sku"].clone(), qty.max(1)));
        if n == 0 {
            // A second order to the first site, cancelled before anything arrives.
            let body = json!({"supplier": SUPPLIER, "site": sites[0], "lines": [{"sku": skus[0], "qty": 12}]});
            let (_, extra) = call(admin.post(format!("{base}/purchase-orders")).json(&body)).await?;
            let extra = extra["id"].as_str().unwrap_or_default();
            let (x, _) = call(admin.post(format!("{base}/purchase-orders/{extra}/cancel")).json(&json!({}))).await?;
            f.mismatches += u64::from(x != 200);
        }
    }
    f.supplier_key_foreign_access +=
        probe_foreign(supplier_key, &base, &foreign, ids.first().map(|i| i.0.as_str())).await?;
    receive(docks, &asns, &mut f).await?;
    // The receipts come back to the hub: each unit counted once.
    let expected: u64 = asns.iter().map(|a| a.3).sum::<u64>() + f.screen_units;
    let started = Instant::now();
    loop {
        let (_, summary) = call(admin.get(format!("{base}/purchasing/summary"))).await?;
        let got = summary["units_received_against_po"].as_u64().unwrap_or(0);
        if got == expected || started.elapsed() > RECEIVING_WAIT {
            f.receipt_mismatches += u64::from(got != expected);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Applied, acknowledged, pruned: the stock documents and the acknowledgements empty, the units unmoved.
    let started = Instant::now();
    loop {
        let (_, summary) = call(admin.get(format!("{base}/purchasing/summary"))).await?;
        let left = &summary["site_receipts_in_flight"];
        let (receipts, acks) =
            (left["po_receipts"].as_u64().unwrap_or(u64::MAX), left["acknowledged"].as_u64().unwrap_or(u64::MAX));
        let units = summary["units_received_against_po"].as_u64().unwrap_or(0);
        if (receipts == 0 && acks == 0) || started.elapsed() > RECEIVING_WAIT {
            // Every receipt booked at the sites, none left in their documents.
            f.receipts_pruned = if receipts == 0 { f.receipts + f.screen_receipts } else { 0 };
            f.receipt_prune_mismatches += receipts.min(1_000) + acks.min(1_000) + u64::from(units != expected);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The outbox delivers every order sent (bounded wait).
    let started = Instant::now();
    let pos = loop {
        let (_, list) = call(admin.get(format!("{base}/purchase-orders"))).await?;
        let pos = list["purchase_orders"].as_array().cloned().unwrap_or_default();
        let waiting = pos.iter().filter(|p| p["send_status"] == "pending").count();
        if waiting == 0 || started.elapsed() > DELIVERY_WAIT {
            break pos;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut open: BTreeMap<(String, String), u64> = BTreeMap::new();
    let open_states = ["draft", "sent", "confirmed", "partially_received"];
    for p in &pos {
        let id = p["id"].as_str().unwrap_or_default();
        if p["send_key"].is_string() {
            let delivered = p["send_status"] == "delivered"
                && folder.join(format!("{id}.json")).is_file()
                && folder.join(format!("{id}.csv")).is_file();
            f.mismatches += u64::from(!delivered);
        }
        if !open_states.contains(&p["state"].as_str().unwrap_or_default()) {
            continue;
        }
        for l in p["lines"].as_array().into_iter().flatten() {
            let left = l["ordered"].as_u64().unwrap_or(0).saturating_sub(
                l["received"].as_u64().unwrap_or(0).saturating_add(l["short_closed"].as_u64().unwrap_or(0)),
            );
            let k =
                (l["sku"].as_str().unwrap_or_default().to_owned(), p["site"].as_str().unwrap_or_default().to_owned());
            *open.entry(k).or_default() += left;
        }
    }
    let (_, summary) = call(admin.get(format!("{base}/purchasing/summary"))).await?;
    f.by_state = summary["purchase_orders"].clone();
    f.received = summary["units_received_against_po"].as_u64().unwrap_or(0);
    f.on_order = summary["units_on_order"].as_u64().unwrap_or(0);
    f.on_order_mismatches += u64::from(f.on_order != open.values().sum::<u64>());
    // Every replenishment row counts exactly its SKU × site's open quantity.
    let (_, run) = call(admin.get(format!("{base}/replenishment?all=true"))).await?;
    for r in run["rows"].as_array().into_iter().flatten() {
        let k = (r["sku"].as_str().unwrap_or_default().to_owned(), r["site"].as_str().unwrap_or_default().to_owned());
        let expected = open.get(&k).copied().unwrap_or(0);
        f.on_order_mismatches += u64::from(r["on_order"].as_u64() != Some(expected));
    }
    Ok(f)
}

/// Another supplier offering `sku`, with one order sent to `site` (by the admin): what the demo supplier's
/// key must not reach. Returns its id.
async fn other_suppliers_order(admin: &reqwest::Client, base: &str, site: &str, sku: &str) -> anyhow::Result<String> {
    let terms = json!({"supplier_sku": "OS-1", "cost_minor": 990, "moq": 1, "order_multiple": 1});
    let other = json!({"name": "Other Supplier", "contact": "orders@other.test", "currency": "EUR", "lead_time_days": 9, "skus": {sku: terms}});
    let (status, _) = call(admin.put(format!("{base}/suppliers/{OTHER_SUPPLIER}")).json(&other)).await?;
    anyhow::ensure!(status == 201 || status == 200, "PUT {OTHER_SUPPLIER} answered {status}");
    let body = json!({"supplier": OTHER_SUPPLIER, "site": site, "lines": [{"sku": sku, "qty": 3}]});
    let (status, po) = call(admin.post(format!("{base}/purchase-orders")).json(&body)).await?;
    anyhow::ensure!(status == 201, "POST {OTHER_SUPPLIER}'s order answered {status}: {po}");
    let id = po["id"].as_str().unwrap_or_default().to_owned();
    let (status, _) = call(admin.post(format!("{base}/purchase-orders/{id}/send")).json(&json!({}))).await?;
    anyhow::ensure!(status == 200, "sending {id} answered {status}");
    Ok(id)
}

/// The demo supplier's key tries every way at another supplier's order `foreign`: its listing must not show
/// it, reading, confirming and an ASN must answer 404 like an unknown id, and an ASN file with one row for it
/// (and one for its own order `own`) must be refused whole. Returns the answers that let it through.
async fn probe_foreign(key: &reqwest::Client, base: &str, foreign: &str, own: Option<&str>) -> anyhow::Result<u64> {
    let mut through = 0u64;
    let (s, list) = call(key.get(format!("{base}/purchase-orders?limit=1000"))).await?;
    let pos = list["purchase_orders"].as_array().cloned().unwrap_or_default();
    through += u64::from(s != 200) + pos.iter().filter(|p| p["supplier"] != SUPPLIER).count() as u64;
    let (s, _) = call(key.get(format!("{base}/purchase-orders/{foreign}"))).await?;
    through += u64::from(s != 404);
    let (s, _) = call(key.post(format!("{base}/purchase-orders/{foreign}/confirm")).json(&json!({}))).await?;
    through += u64::from(s != 404);
    let asn = json!({"asn": format!("ASN-{foreign}-X"), "lines": [{"line": 1, "qty": 1}]});
    let (s, _) = call(key.post(format!("{base}/purchase-orders/{foreign}/asns")).json(&asn)).await?;
    through += u64::from(s != 404);
    if let Some(own) = own {
        let csv = format!(
            "asn,purchase_order,line,qty,expected_date\nASN-{own}-CSV,{own},1,1,\nASN-{foreign}-CSV,{foreign},1,1,\n"
        );
        let req = key.post(format!("{base}/asns/import")).header("content-type", "text/csv").body(csv);
        let (s, v) = call(req).await?;
        through += u64::from(s != 422 || v["rows"][0]["code"] != "purchase_order_not_found");
    }
    Ok(through)
}

/// Each site receives its ASN `(asn, site, sku, qty)` at the dock, the request sent twice under one key; the
/// cut site does it while cut off from the hub.
async fn receive(
    docks: &Docks<'_>,
    asns: &[(String, &str, Value, u64)],
    f: &mut PurchasingFigures,
) -> anyhow::Result<()> {
    for (asn, site, sku, qty) in asns {
        let Some((_, addr)) = docks.sites.iter().find(|(s, _)| s == site) else { continue };
        let inbound = format!("http://{addr}/v1/inbound?limit=500");
        let started = Instant::now();
        let po = loop {
            let (_, v) = call(docks.staff.get(&inbound)).await?;
            let arrived =
                v["items"].as_array().into_iter().flatten().find(|p| {
                    p["asns"].as_array().into_iter().flatten().any(|a| a["asn"].as_str() == Some(asn.as_str()))
                });
            if arrived.is_some() || started.elapsed() > RECEIVING_WAIT {
                f.receipt_mismatches += u64::from(arrived.is_none());
                break arrived.and_then(|p| p["purchase_order"].as_str()).map(str::to_owned);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let cut = *site == docks.cut_site;
        if cut {
            docks.relay.set_blackhole(true);
            println!("purchasing: {site} cut off from the hub again, receiving {asn} at the dock");
        }
        let url = format!("http://{addr}/v1/inbound/{asn}/receipts");
        let body = json!({"lines": [{"line": 1, "sku": sku, "qty": qty}]});
        let key = format!("demo-receipt-{asn}");
        let (s1, _) = call(docks.staff.post(&url).header("Idempotency-Key", &key).json(&body)).await?;
        let (s2, _) = call(docks.staff.post(&url).header("Idempotency-Key", &key).json(&body)).await?;
        // One more unit of the line through the receiving screen, as the site's picker (cut off too).
        let screen = match &po {
            Some(po) => {
                let line = (po.as_str(), asn.as_str(), sku.as_str().unwrap_or_default(), SCREEN_UNITS);
                Some(super::screens::receive_asn_line(*addr, docks.picker_pin, docks.staff, line).await)
            }
            None => None,
        };
        if cut {
            docks.relay.set_blackhole(false);
            f.received_while_cut_off += u64::from(s1 == 201);
        }
        f.receipts += u64::from(s1 == 201);
        f.receipt_mismatches += u64::from(s1 != 201) + u64::from(s2 != 200);
        if let Some(done) = screen.transpose()? {
            f.screen_receipts += u64::from(done.posted > 0);
            f.screen_units += done.booked;
            f.screen_receipt_mismatches += u64::from(done.posted != SCREEN_UNITS || done.booked != done.posted);
        }
    }
    Ok(())
}
