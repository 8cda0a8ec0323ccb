//! The demo's returns pass: per site, one shipped card order of the hub's gets a return request for one unit
//! (`POST /v1/orders/{id}/returns`, naming the fulfillment), service approves it, the hub publishes it to the
//! site that shipped it, and the site receives it at the dock against the RMA (`POST
//! /v1/orders/{fulfillment}/returns` with `"rma"`; every other return scrapped) — the cut site while the demo
//! cuts it off from the hub again. After the heal the receipts come back, the hub credits and refunds each
//! through the money outbox and closes it. The figures: RMAs per state (`rmas`), units received, refunds, and
//! `rma_mismatches` (units the hub counts received ≠ units the sites recorded against the RMAs, the hub's own
//! check that refunds equal the credit notes of exactly the units received, and RMAs not refunded in time):
//! it must be 0. Once applied, the sites' receipts against the RMAs leave their stock documents (the hub
//! acknowledges them, the sites prune them after the demo's 1 s grace): `rma_receipts_pruned`, and
//! `rma_receipt_prune_mismatches`, receipts or acknowledgements still in the documents after the wait: 0.
//!
//! The first of these returns is asked for by the customer on the order's tracking page (`GET /t/{token}`,
//! then the page's form posted with its form cookie, as a phone's browser does), the others over the API.
//! The hub's reports must then count one return per RMA that received units and every unit received:
//! `returns_via_tracking_page` (≥ 1) and `report_returns_mismatches` (the reports' `returns` and
//! `units_returned` against the RMAs' own figures) must be 0.
//!
//! Last, service's line-level cancel: an order for a SKU no site holds waits for stock; cancelling more units
//! than wait is refused (`409 units_not_waiting`, nothing changed), then two of its three units are
//! cancelled and the order still waits for the third (then it is cancelled whole, so nothing is left
//! waiting): `units_cancelled_waiting` and `line_cancel_mismatches` (must be 0).
//!
//! And service's cancel at one site (`POST /v1/orders/{id}/fulfillments/{f}/cancel`): one order's part is
//! moved away from its site (`then: reroute`: it lands at another, and the order never goes back to the
//! first), another's is cancelled there (`then: cancel`: its unit ends cancelled, not waiting):
//! `site_cancels_moved`, `site_cancels_cancelled` and `site_cancel_mismatches` (must be 0). Each of those
//! orders is also found by its customer without the link (`POST /t` with the order number and the e-mail
//! address, in another case; another address finds nothing): `orders_found_by_email`, `order_find_mismatches`
//! (must be 0).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::purchasing::Docks;

/// Orders per site a return is asked for, in turn, until one is taken.
const CANDIDATES_PER_SITE: usize = 3;
/// Longest wait for an RMA to reach its site, and for the refunds after the heal.
const RETURNS_WAIT: Duration = Duration::from_secs(60);

/// What the pass found.
#[derive(Debug, Default)]
pub(super) struct ReturnsFigures {
    by_state: Value,
    requested: u64,
    received_at_sites: u64,
    received_at_hub: u64,
    received_while_cut_off: u64,
    refunded_minor: u64,
    mismatches: u64,
    via_tracking_page: u64,
    report_returns: u64,
    report_mismatches: u64,
    units_cancelled_waiting: u64,
    line_cancel_mismatches: u64,
    site_cancels_moved: u64,
    site_cancels_cancelled: u64,
    site_cancel_mismatches: u64,
    orders_found_by_email: u64,
    order_find_mismatches: u64,
    receipts_pruned: u64,
    prune_mismatches: u64,
}

impl ReturnsFigures {
    pub(super) fn json(&self) -> Value {
        json!({
            "rmas": self.by_state,
            "rmas_requested": self.requested,
            "rma_units_received": self.received_at_hub,
            "rma_units_received_at_sites": self.received_at_sites,
            "rmas_received_while_cut_off": self.received_while_cut_off,
            "rma_refunded_minor": self.refunded_minor,
            "rma_mismatches": self.mismatches,
            "returns_via_tracking_page": self.via_tracking_page,
            "report_returns": self.report_returns,
            "report_returns_mismatches": self.report_mismatches,
            "units_cancelled_waiting": self.units_cancelled_waiting,
            "line_cancel_mismatches": self.line_cancel_mismatches,
            "site_cancels_moved": self.site_cancels_moved,
            "site_cancels_cancelled": self.site_cancels_cancelled,
            "site_cancel_mismatches": self.site_cancel_mismatches,
            "orders_found_by_email": self.orders_found_by_email,
            "order_find_mismatches": self.order_find_mismatches,
            "rma_receipts_pruned": self.receipts_pruned,
            "rma_receipt_prune_mismatches": self.prune_mismatches,
        })
    }

    pub(super) fn ok(&self) -> bool {
        self.mismatches == 0
            && self.report_mismatches == 0
            && self.via_tracking_page > 0
            && self.line_cancel_mismatches == 0
            && self.units_cancelled_waiting > 0
            && self.site_cancel_mismatches == 0
            && self.site_cancels_moved > 0
            && self.site_cancels_cancelled > 0
            && self.order_find_mismatches == 0
            && self.orders_found_by_email > 0
            && self.prune_mismatches == 0
    }

    pub(super) fn line(&self) -> String {
        format!(
            "returns: {} RMAs requested ({} on the customer's tracking page) and approved, {} units received at the sites ({} while cut off), {} counted by the hub, refunded {} (minor units); by state {}; the reports count {} returns (mismatches {}, must be 0); RMA mismatches {} (must be 0); {} RMA receipts pruned from the stock documents (mismatches {}, must be 0); {} units waiting for stock cancelled by line (mismatches {}, must be 0); cancels at one site: {} moved to another site, {} cancelled there (mismatches {}, must be 0); {} orders found on /t by number and e-mail (mismatches {}, must be 0)",
            self.requested,
            self.via_tracking_page,
            self.received_at_sites,
            self.received_while_cut_off,
            self.received_at_hub,
            self.refunded_minor,
            self.by_state,
            self.report_returns,
            self.report_mismatches,
            self.mismatches,
            self.receipts_pruned,
            self.prune_mismatches,
            self.units_cancelled_waiting,
            self.line_cancel_mismatches,
            self.site_cancels_moved,
            self.site_cancels_cancelled,
            self.site_cancel_mismatches,
            self.orders_found_by_email,
            self.order_find_mismatches
        )
    }
}

async fn call(r: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
    let r = r.send().await?;
    let s = r.status().as_u16();
    Ok((s, r.json().await.unwrap_or(Value::Null)))
}

/// A shipped fulfillment of a captured hub order: (order, fulfillment, site, SKU). One the site already took a
/// return for (the order flow returns one shipped order in 30 at the dock) is not chosen: its unit came back.
fn returnable(v: &Value) -> Option<(String, String, String, String)> {
    if v["payment"]["captured_minor"].as_u64().unwrap_or(0) == 0 || v["rmas"].as_array().is_some_and(|a| !a.is_empty())
    {
        return None;
    }
    let returned_at_site = |f: &Value| {
        v["timeline"].as_array().is_some_and(|t| {
            t.iter()
                .any(|e| e["fulfillment"] == f["id"] && e["note"].as_str().is_some_and(|n| n.starts_with("return ")))
        })
    };
    let f = v["fulfillments"]
        .as_array()?
        .iter()
        .find(|f| (f["status"] == "shipped" || f["status"] == "delivered") && !returned_at_site(f))?;
    let sku = f["lines"].as_array()?.iter().find(|l| l["qty"].as_u64().unwrap_or(0) > 0)?["sku"].as_str()?.to_owned();
    Some((v["id"].as_str()?.to_owned(), f["id"].as_str()?.to_owned(), f["site"].as_str()?.to_owned(), sku))
}

/// Runs the pass over the hub's acknowledged orders `acked`.
pub(super) async fn pass(
    admin: &reqwest::Client,
    hub: SocketAddr,
    acked: &[String],
    docks: &Docks<'_>,
) -> anyhow::Result<ReturnsFigures> {
    let mut f = ReturnsFigures::default();
    let base = format!("https://{hub}/v1");
    // Up to CANDIDATES_PER_SITE orders per site, the cut site's included: the sites' staff take the odd
    // unit back without an RMA, and the hub refuses to authorize a unit already back (`409 over_return`),
    // so the next candidate is asked then.
    let mut chosen: BTreeMap<String, Vec<(String, String, String)>> = BTreeMap::new();
    for id in acked {
        if chosen.len() >= docks.sites.len() && chosen.values().all(|c| c.len() >= CANDIDATES_PER_SITE) {
            break;
        }
        let (_, v) = call(admin.get(format!("{base}/orders/{id}"))).await?;
        if let Some((order, fo, site, sku)) = returnable(&v) {
            let c = chosen.entry(site).or_default();
            if c.len() < CANDIDATES_PER_SITE {
                c.push((order, fo, sku));
            }
        }
    }
    let mut rmas: Vec<(String, String, String, String)> = Vec::new(); // rma, site, fulfillment, sku
    for (i, (site, candidates)) in chosen.iter().enumerate() {
        let mut taken = None;
        for (order, fo, sku) in candidates {
            let (s, rma) = if i == 0 {
                on_tracking_page(admin, hub, order, sku).await?
            } else {
                let body =
                    json!({"fulfillment": fo, "lines": [{"sku": sku, "qty": 1, "reason": "arrived damaged (demo)"}]});
                call(admin.post(format!("{base}/orders/{order}/returns")).json(&body)).await?
            };
            if s == 409 {
                println!("returns: {order}'s unit of {sku} is back at {site} already; asking for the next order");
                continue;
            }
            taken = Some((order, fo, sku, s, rma));
            break;
        }
        let Some((order, fo, sku, s, rma)) = taken else {
            println!("returns: no order of {site} could be returned");
            f.mismatches += 1;
            continue;
        };
        let Some(id) = rma["id"].as_str().filter(|_| s == 201) else {
            println!("returns: the request for {order} was refused: {s} {rma}");
            f.mismatches += 1;
            continue;
        };
        f.via_tracking_page += u64::from(i == 0);
        let (s, _) = call(admin.post(format!("{base}/returns/{id}/approve")).json(&json!({}))).await?;
        f.mismatches += u64::from(s != 200);
        f.requested += 1;
        // The page names no fulfillment: the hub picked the one that shipped the unit.
        let (site, fo) = (rma["site"].as_str().unwrap_or(site), rma["fulfillment"].as_str().unwrap_or(fo));
        rmas.push((id.to_owned(), site.to_owned(), fo.to_owned(), sku.clone()));
    }
    for (i, (rma, site, fo, sku)) in rmas.iter().enumerate() {
        let Some((_, addr)) = docks.sites.iter().find(|(s, _)| s == site) else { continue };
        let started = Instant::now();
        loop {
            let (_, v) = call(docks.staff.get(format!("http://{addr}/v1/rmas?limit=1000"))).await?;
            let here = v["items"]
                .as_array()
                .is_some_and(|a| a.iter().any(|r| r["rma"] == rma.as_str() && r["receivable"] == true));
            if here || started.elapsed() > RETURNS_WAIT {
                f.mismatches += u64::from(!here);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let cut = site == docks.cut_site;
        if cut {
            docks.relay.set_blackhole(true);
            println!("returns: {site} cut off from the hub again, receiving {rma} at the dock");
        }
        let disposition = if i % 2 == 0 { "restock" } else { "scrap" };
        let body = json!({"rma": rma, "lines": [{"sku": sku, "qty": 1, "disposition": disposition}]});
        let (s, v) = call(docks.staff.post(format!("http://{addr}/v1/orders/{fo}/returns")).json(&body)).await?;
        if s != 201 {
            println!("returns: {site} could not receive {rma}: {s} {v}");
        }
        if cut {
            docks.relay.set_blackhole(false);
            f.received_while_cut_off += u64::from(s == 201);
        }
        f.received_at_sites += u64::from(s == 201);
    }
    // After the heal: every RMA received, refunded through the outbox and closed.
    let started = Instant::now();
    loop {
        let mut done = 0;
        for (rma, ..) in &rmas {
            let (_, v) = call(admin.get(format!("{base}/returns/{rma}"))).await?;
            done += usize::from(v["state"] == "closed");
        }
        if done == rmas.len() || started.elapsed() > RETURNS_WAIT {
            f.mismatches += (rmas.len() - done) as u64;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Applied and acknowledged: the receipts leave the sites' stock documents, the acknowledgements follow.
    let started = Instant::now();
    loop {
        let (_, p) = call(admin.get(format!("{base}/purchasing/summary"))).await?;
        let left = &p["site_receipts_in_flight"];
        let (receipts, acks) =
            (left["rma_receipts"].as_u64().unwrap_or(u64::MAX), left["acknowledged"].as_u64().unwrap_or(u64::MAX));
        if (receipts == 0 && acks == 0) || started.elapsed() > RETURNS_WAIT {
            f.receipts_pruned = if receipts == 0 { f.received_at_sites } else { 0 };
            f.prune_mismatches = receipts.min(1_000) + acks.min(1_000);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // What the sites recorded against the RMAs, against what the hub counts.
    let mut at_sites = 0;
    for (_, addr) in &docks.sites {
        let (_, v) = call(docks.staff.get(format!("http://{addr}/v1/rmas?limit=1000"))).await?;
        for r in v["items"].as_array().into_iter().flatten() {
            at_sites += r["lines"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| l["received_here"].as_u64().unwrap_or(0))
                .sum::<u64>();
        }
    }
    let (_, sum) = call(admin.get(format!("{base}/returns/summary"))).await?;
    f.received_at_hub = sum["units_received"].as_u64().unwrap_or(0);
    f.refunded_minor = sum["refunded_minor"].as_u64().unwrap_or(0);
    f.by_state = sum["rmas"].clone();
    f.mismatches += sum["rma_mismatches"].as_u64().unwrap_or(1);
    f.mismatches += u64::from(at_sites != f.received_at_hub) + u64::from(f.received_at_sites != f.received_at_hub);
    // The reports, folded from the `return.received` events: one return per RMA that received units.
    let with_units: u64 = ["partially_received", "received", "refunded", "closed"]
        .iter()
        .map(|s| sum["rmas"][*s].as_u64().unwrap_or(0))
        .sum();
    let (_, rep) = call(admin.get(format!("{base}/reports"))).await?;
    f.report_returns = rep["total"]["returns"].as_u64().unwrap_or(u64::MAX);
    let units = rep["total"]["units_returned"].as_u64().unwrap_or(u64::MAX);
    f.report_mismatches = u64::from(f.report_returns != with_units) + u64::from(units != f.received_at_hub);
    (f.units_cancelled_waiting, f.line_cancel_mismatches) = cancel_waiting_units(admin, &base).await?;
    (
        f.site_cancels_moved,
        f.site_cancels_cancelled,
        f.site_cancel_mismatches,
        f.orders_found_by_email,
        f.order_find_mismatches,
    ) = cancel_at_sites(admin, &base).await?;
    Ok(f)
}

/// The e-mail address the orders cancelled at their site are placed with (the customer finds them by it).
const DEMO_EMAIL: &str = "demo.customer@example.com";

/// The customer without the link: `POST /t` with the order number and the e-mail address (in another case)
/// must lead to the order's tracking page, and another address must find nothing (404). Returns (found,
/// mismatches).
async fn find_by_email(admin: &reqwest::Client, base: &str, order: &str) -> anyhow::Result<(u64, u64)> {
    let site = base.trim_end_matches("/v1");
    let post = |email: &str| admin.post(format!("{site}/t")).form(&[("order", order), ("email", email)]).send();
    let found = post(&DEMO_EMAIL.to_uppercase()).await?;
    let (status, path) = (found.status().as_u16(), found.url().path().to_owned());
    let page = found.text().await.unwrap_or_default();
    let ok = status == 200 && path.starts_with("/t/") && page.contains("web-site-cancel-");
    let wrong = post("someone.else@example.com").await?.status().as_u16();
    Ok((u64::from(ok), u64::from(!ok) + u64::from(wrong != 404)))
}

/// SKUs tried in turn for the orders cancelled at their site, until one is placed.
const SITE_CANCEL_SKUS: usize = 24;

/// A placed one-unit order of the first SKU some site can still take (an order left waiting is cancelled
/// whole): (order, fulfillment, site).
async fn placed_order(admin: &reqwest::Client, base: &str, n: u32) -> anyhow::Result<Option<(String, String, String)>> {
    for i in 0..SITE_CANCEL_SKUS {
        let order = json!({
            "external_ref": format!("web-site-cancel-{n}-{i}"), "channel": "web",
            "lines": [{"sku": format!("SKU-{i:03}"), "qty": 1, "unit_price_minor": 1500, "currency": "EUR"}],
            "ship_to": {"name": "Demo Customer", "line1": "1 Demo Street", "city": "Berlin", "postcode": "10115",
                "country": "DE", "lat": 52.52, "lon": 13.40},
            "contact": {"email": DEMO_EMAIL}
        });
        let key = format!("demo-site-cancel-{n}-{i}");
        let (s, v) = call(admin.post(format!("{base}/orders")).header("idempotency-key", key).json(&order)).await?;
        let (Some(id), Some(fo), Some(site)) =
            (v["id"].as_str(), v["fulfillments"][0]["id"].as_str(), v["fulfillments"][0]["site"].as_str())
        else {
            if let Some(id) = v["id"].as_str().filter(|_| s == 201) {
                let whole = json!({"reason": "nothing to show here (demo)"});
                call(admin.post(format!("{base}/orders/{id}/cancel")).json(&whole)).await?;
            }
            continue;
        };
        return Ok(Some((id.to_owned(), fo.to_owned(), site.to_owned())));
    }
    Ok(None)
}

/// Service's cancel at one site: one order's fulfillment moved away from its site (it must land at another
/// and the order avoid the first), another's cancelled there (its unit must end cancelled, not waiting).
/// Returns (moved, cancelled, mismatches).
async fn cancel_at_sites(admin: &reqwest::Client, base: &str) -> anyhow::Result<(u64, u64, u64, u64, u64)> {
    let (mut moved, mut cancelled, mut bad) = (0, 0, 0);
    let (mut found, mut find_bad) = (0, 0);
    for (n, then) in [(1, "reroute"), (2, "cancel")] {
        let Some((id, fo, site)) = placed_order(admin, base, n).await? else {
            println!("cancel at a site: no site could take a one-unit order");
            bad += 1;
            continue;
        };
        let (f, b) = find_by_email(admin, base, &id).await?;
        (found, find_bad) = (found + f, find_bad + b);
        let body = json!({"reason": format!("demo: {then} away from {site}"), "then": then});
        let (s, v) = call(admin.post(format!("{base}/orders/{id}/fulfillments/{fo}/cancel")).json(&body)).await?;
        if s != 202 {
            println!("cancel at a site: {id} {fo}: {s} {v}");
            bad += 1;
            continue;
        }
        let deadline = Instant::now() + RETURNS_WAIT;
        loop {
            let (_, v) = call(admin.get(format!("{base}/orders/{id}"))).await?;
            let done = if then == "reroute" {
                let fos = v["fulfillments"].as_array().map(Vec::as_slice).unwrap_or_default();
                fos.len() == 2 && fos[1]["site"] != site.as_str() && v["avoid_sites"][0] == site.as_str()
            } else {
                v["cancelled_unfilled"][0]["qty"] == 1 && v["unfilled"].as_array().is_some_and(Vec::is_empty)
            };
            if done {
                if then == "reroute" {
                    moved += 1;
                } else {
                    cancelled += 1;
                }
                break;
            }
            if Instant::now() > deadline {
                println!("cancel at a site: {id} did not {then} in time: {v}");
                bad += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok((moved, cancelled, bad, found, find_bad))
}

/// The SKU no site holds, for the order that waits.
const WAITING_SKU: &str = "DEMO-WAITING";

/// Service's line-level cancel of units waiting for stock (see the module's docs): units cancelled, mismatches.
async fn cancel_waiting_units(admin: &reqwest::Client, base: &str) -> anyhow::Result<(u64, u64)> {
    let order = json!({
        "external_ref": "web-waiting-1", "channel": "web",
        "lines": [{"sku": WAITING_SKU, "qty": 3, "unit_price_minor": 1999, "currency": "EUR"}],
        "ship_to": {"name": "Demo Customer", "line1": "1 Demo Street", "city": "Berlin", "postcode": "10115",
            "country": "DE", "lat": 52.52, "lon": 13.40}
    });
    let placed = admin.post(format!("{base}/orders")).header("idempotency-key", "demo-waiting-1").json(&order);
    let (s, v) = call(placed).await?;
    let Some(id) = v["id"].as_str().filter(|_| s == 201 && v["status"] == "backordered") else {
        println!("line cancel: the waiting order was not taken as backordered: {s} {v}");
        return Ok((0, 1));
    };
    let cancel = |qty: u64| {
        let body = json!({"reason": "customer wants fewer (demo)", "lines": [{"sku": WAITING_SKU, "qty": qty}]});
        admin.post(format!("{base}/orders/{id}/cancel")).json(&body)
    };
    let mut bad = 0;
    let (s, v) = call(cancel(4)).await?;
    bad += u64::from(s != 409 || v["code"] != "units_not_waiting" || v["waiting"] != 3);
    let (s, _) = call(cancel(2)).await?;
    bad += u64::from(s != 202);
    let (_, v) = call(admin.get(format!("{base}/orders/{id}"))).await?;
    let (waiting, cancelled) = (v["lines"][0]["unfilled"].as_u64(), v["cancelled_unfilled"][0]["qty"].as_u64());
    bad += u64::from(waiting != Some(1) || cancelled != Some(2) || !v["cancel_requested_at_ms"].is_null());
    let whole = json!({"reason": "the last unit is not coming (demo)"});
    let (s, _) = call(admin.post(format!("{base}/orders/{id}/cancel")).json(&whole)).await?;
    bad += u64::from(s != 202);
    Ok((cancelled.unwrap_or(0), bad))
}

/// The customer's return of one unit of `sku` on `order`'s tracking page: the page read (its form cookie
/// kept), the form posted back as a browser does. `201` and the RMA it made, or the page's status.
async fn on_tracking_page(
    admin: &reqwest::Client,
    hub: SocketAddr,
    order: &str,
    sku: &str,
) -> anyhow::Result<(u16, Value)> {
    let (_, v) = call(admin.get(format!("https://{hub}/v1/orders/{order}"))).await?;
    let Some(token) = v["tracking_token"].as_str() else { return Ok((0, Value::Null)) };
    let page = admin.get(format!("https://{hub}/t/{token}")).send().await?;
    let cookie = page
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|c| c.to_str().ok())
        .and_then(|c| c.split(';').next())
        .map(str::to_owned);
    let html = page.text().await?;
    let field = |name: &str| -> Option<String> {
        let at = html.find(&format!(r#"name="{name}" value=""#))? + name.len() + 15;
        html[at..].split('"').next().map(str::to_owned)
    };
    // The form's line for `sku`: `sku.<i>`.
    let line =
        (0..oms_hub::selfservice::RETURN_LINES_SHOWN_MAX).find(|i| field(&format!("sku.{i}")).as_deref() == Some(sku));
    let (Some(cookie), Some(form)) = (cookie, field("form")) else { return Ok((0, Value::Null)) };
    // The page offers only what may still be returned: a unit already back at the site is not offered.
    let Some(i) = line else { return Ok((409, Value::Null)) };
    let body = [
        ("form".to_owned(), form),
        (format!("sku.{i}"), sku.to_owned()),
        (format!("qty.{i}"), "1".to_owned()),
        (format!("reason.{i}"), "damaged".to_owned()),
    ];
    let sent = admin
        .post(format!("https://{hub}/t/{token}/returns"))
        .header(reqwest::header::COOKIE, cookie)
        .form(&body)
        .send()
        .await?;
    if !(sent.status().is_success() || sent.status().is_redirection()) {
        return Ok((sent.status().as_u16(), Value::Null));
    }
    let (_, v) = call(admin.get(format!("https://{hub}/v1/orders/{order}"))).await?;
    Ok(v["rmas"].as_array().and_then(|a| a.last()).cloned().map_or((0, Value::Null), |r| (201, r)))
}
