//! The demo's returns pass: per site, one shipped card order of the hub's gets a return request for one unit
//! (`POST /v1/orders/{id}/returns`, naming the fulfillment), service approves it, the hub publishes it to the
//! site that shipped it, and the site receives it at the dock against the RMA (`POST
//! /v1/orders/{fulfillment}/returns` with `"rma"`; every other return scrapped) — the cut site while the demo
//! cuts it off from the hub again. After the heal the receipts come back, the hub credits and refunds each
//! through the money outbox and closes it. The figures: RMAs per state (`rmas`), units received, refunds, and
//! `rma_mismatches` (units the hub counts received ≠ units the sites recorded against the RMAs, the hub's own
//! check that refunds equal the credit notes of exactly the units received, and RMAs not refunded in time):
//! it must be 0.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::purchasing::Docks;

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
        })
    }

    pub(super) fn ok(&self) -> bool {
        self.mismatches == 0
    }

    pub(super) fn line(&self) -> String {
        format!(
            "returns: {} RMAs requested and approved, {} units received at the sites ({} while cut off), {} counted by the hub, refunded {} (minor units); by state {}; RMA mismatches {} (must be 0)",
            self.requested,
            self.received_at_sites,
            self.received_while_cut_off,
            self.received_at_hub,
            self.refunded_minor,
            self.by_state,
            self.mismatches
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
    // One order per site, the cut site's included.
    let mut chosen: BTreeMap<String, (String, String, String)> = BTreeMap::new();
    for id in acked {
        if chosen.len() >= docks.sites.len() {
            break;
        }
        let (_, v) = call(admin.get(format!("{base}/orders/{id}"))).await?;
        if let Some((order, fo, site, sku)) = returnable(&v)
            && !chosen.contains_key(&site)
        {
            chosen.insert(site, (order, fo, sku));
        }
    }
    let mut rmas: Vec<(String, String, String, String)> = Vec::new(); // rma, site, fulfillment, sku
    for (site, (order, fo, sku)) in &chosen {
        let body = json!({"fulfillment": fo, "lines": [{"sku": sku, "qty": 1, "reason": "arrived damaged (demo)"}]});
        let (s, rma) = call(admin.post(format!("{base}/orders/{order}/returns")).json(&body)).await?;
        let Some(id) = rma["id"].as_str().filter(|_| s == 201) else {
            println!("returns: the request for {order} was refused: {s} {rma}");
            f.mismatches += 1;
            continue;
        };
        let (s, _) = call(admin.post(format!("{base}/returns/{id}/approve")).json(&json!({}))).await?;
        f.mismatches += u64::from(s != 200);
        f.requested += 1;
        rmas.push((id.to_owned(), site.clone(), fo.clone(), sku.clone()));
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
    Ok(f)
}
