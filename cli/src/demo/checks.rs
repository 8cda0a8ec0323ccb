//! What the demo checks at the end of the run against the nodes and the hub: per-site counts, the ledger, the
//! audit trail, refusals, screens, ship-by promises, certificates, and the hub's documents reopened.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use serde_json::{Value, json};

use super::cluster::Site;
use super::traffic::Tally;
use super::{screens, sku};

/// Per site: the audit trail's successful ship rows, read through every page; None if unreachable.
pub(super) async fn audited_ships(http: &reqwest::Client, addr: SocketAddr) -> Option<u64> {
    let mut after = 0u64;
    let mut ships = 0u64;
    for _ in 0..10_000 {
        let url = format!("http://{addr}/v1/audit/events?after={after}&limit=1000");
        let v: Value = http.get(url).send().await.ok()?.json().await.ok()?;
        for e in v["events"].as_array()? {
            if e["route"] == "/v1/orders/{id}/ship" && e["outcome"] == "ok" {
                ships += 1;
            }
        }
        match v["next_after"].as_u64() {
            Some(n) => after = n,
            None => return Some(ships),
        }
    }
    None
}

/// Calls that must be refused: no token (401), and the staff key creating an order (403). Returns how many
/// were not refused as they should be (must be 0).
pub(super) async fn auth_probes(staff: &reqwest::Client, addr: SocketAddr) -> u64 {
    let anonymous = reqwest::Client::new();
    let url = format!("http://{addr}/v1/orders");
    let mut wrong = 0;
    let r = anonymous.get(&url).send().await;
    wrong += u64::from(!r.is_ok_and(|r| r.status() == 401));
    let r = staff.post(&url).header("idempotency-key", "probe").json(&json!({})).send().await;
    wrong += u64::from(!r.is_ok_and(|r| r.status() == 403));
    wrong
}

/// Screens served and refusals that did not happen as they should, from a person's side: the sign-in page for
/// a stranger, sign-in with the PIN, today's work, a SKU's stock, receiving, returns and dispatch, a form
/// without its CSRF token refused, a wrong PIN refused. Returns (pages rendered, failures).
pub(super) async fn screen_probes(addr: SocketAddr, site: &str, pin: &str) -> (u64, u64) {
    let Ok(browser) = screens::browser() else { return (0, 1) };
    let base = format!("http://{addr}");
    let (mut rendered, mut failures) = (0u64, 0u64);
    match browser.get(format!("{base}/ui")).send().await {
        Ok(r) if screens::located(&r, "/ui/sign-in") => {}
        _ => failures += 1,
    }
    let wrong = browser.post(format!("{base}/ui/sign-in")).form(&[("name", "picker"), ("password", "x")]).send().await;
    failures += u64::from(!wrong.is_ok_and(|r| r.status() == 401));
    let Some(cookie) = screens::sign_in(&browser, addr, "picker", pin, "/ui").await else {
        return (rendered, failures + 1);
    };
    let stock = format!("/ui/stock?sku={}", sku(0));
    for (path, expect) in [
        ("/ui", format!("Today at {site}")),
        (stock.as_str(), "On hand".to_owned()),
        ("/ui/inbound", "<h1>Receiving</h1>".to_owned()),
        ("/ui/returns", "<h1>Returns</h1>".to_owned()),
        ("/ui/dispatch", "<h1>Dispatch</h1>".to_owned()),
    ] {
        match browser.get(format!("{base}{path}")).header("cookie", &cookie).send().await {
            Ok(r) if r.status() == 200 => {
                let body = r.text().await.unwrap_or_default();
                if body.contains(&expect) { rendered += 1 } else { failures += 1 }
            }
            _ => failures += 1,
        }
    }
    let forged =
        browser.post(format!("{base}/ui/waves")).header("cookie", &cookie).form(&[("max_orders", "1")]).send().await;
    failures += u64::from(!forged.is_ok_and(|r| r.status() == 403));
    (rendered, failures)
}

/// The hub's ship-by promises against what the sites did: a live fulfillment shipped after its promise, or
/// not shipped when its promise has passed, is missed, counted by reason.
#[derive(Default)]
pub(super) struct Promises {
    pub(super) promised: u64,
    pub(super) unpromised: u64,
    pub(super) missed_by_reason: BTreeMap<&'static str, u64>,
}

impl Promises {
    /// Checks the fulfillments of one hub order view (`GET /v1/orders/{id}`) at `now_ms`.
    pub(super) fn check(&mut self, order: &Value, now_ms: u64) {
        let empty = Vec::new();
        let timeline = order["timeline"].as_array().unwrap_or(&empty);
        for f in order["fulfillments"].as_array().unwrap_or(&empty) {
            if !f["released"].is_null() || f["status"] == "cancelled" {
                continue;
            }
            let Some(promise) = f["promised_ship_by_ms"].as_u64() else {
                self.unpromised += 1;
                continue;
            };
            self.promised += 1;
            let shipped_at = timeline
                .iter()
                .find(|t| t["fulfillment"] == f["id"] && t["status"] == "shipped")
                .and_then(|t| t["at_ms"].as_u64());
            let reason = match shipped_at {
                Some(at) if at > promise => "shipped after the promised cut-off",
                None if now_ms > promise => "not shipped by the promised cut-off",
                _ => continue,
            };
            *self.missed_by_reason.entry(reason).or_default() += 1;
        }
    }

    pub(super) fn missed(&self) -> u64 {
        self.missed_by_reason.values().sum()
    }
}

/// The hub's order count per site.
pub(super) async fn hub_counts(
    http: &reqwest::Client,
    hub: SocketAddr,
    tally: &Tally,
) -> Option<BTreeMap<String, u64>> {
    let r = http.get(format!("https://{hub}/v1/orders?limit=1")).send().await.ok()?;
    tally.hub_answer(&r);
    let v: Value = r.json().await.ok()?;
    let map = v["by_site"].as_object()?;
    Some(map.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
}

/// What the hub reports of the certificates in use (its own and each connected node's): how many it shows,
/// and how many of them expire within the warning period. None if the hub is unreachable.
pub(super) async fn hub_certificates(http: &reqwest::Client, hub: SocketAddr, tally: &Tally) -> Option<(u64, u64)> {
    let r = http.get(format!("https://{hub}/v1/nodes")).send().await.ok()?;
    tally.hub_answer(&r);
    let v: Value = r.json().await.ok()?;
    let nodes = v["nodes"].as_array().into_iter().flatten().map(|n| &n["certificate"]);
    let certs: Vec<&Value> = std::iter::once(&v["hub_certificate"]).chain(nodes).filter(|c| c.is_object()).collect();
    let soon = certs.iter().filter(|c| c["expiring_soon"] == Value::Bool(true)).count();
    // cannot truncate: usize has at most 64 bits.
    Some((certs.len() as u64, soon as u64))
}

/// Ids of every order a node holds (all states, all pages); None if unreachable.
pub(super) async fn node_order_ids(http: &reqwest::Client, addr: SocketAddr) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10_000 {
        let mut url = format!("http://{addr}/v1/orders?limit=500");
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let v: Value = http.get(url).send().await.ok()?.json().await.ok()?;
        let page = v["orders"].as_array().cloned().unwrap_or_default();
        out.extend(page.iter().filter_map(|o| o["id"].as_str()).map(String::from));
        after = v["next_after"].as_str().map(String::from);
        if page.len() < 500 {
            break;
        }
    }
    Some(out)
}

/// The hub's documents opened again after the run, as a start opens them (issue 17, item 4).
pub(super) struct HubStart {
    /// Documents held.
    pub(super) documents: u64,
    /// `DocDb::open` + `HubDocs::new`, ms.
    pub(super) start_ms: u64,
    /// `doc_meta` rows they read (not one per stored order).
    pub(super) rows_read: u64,
    /// Places where the figures kept with the rows (count, totals per group and label, documents due a full
    /// save) differ from a walk of every row; must be 0. A file that does not open counts 1.
    pub(super) mismatches: u64,
    /// Sync states of superseded generations of state documents the open found (and deleted): each should
    /// have gone with its generation; must be 0.
    pub(super) superseded_states: u64,
}

pub(super) fn hub_start_check(path: &std::path::Path) -> HubStart {
    let t = Instant::now();
    let opened = oms_sync::DocDb::open(path, vec![0; 16], usize::MAX)
        .map_err(anyhow::Error::from)
        .and_then(|db| Ok(oms_hub::docs::HubDocs::new(db)?));
    let start_ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
    let audit = opened.and_then(|docs| {
        let db = docs.db();
        Ok((db.rows_read(), db.superseded_states_dropped(), db.audit_totals()?))
    });
    match audit {
        Ok((rows_read, superseded_states, (kept, walked))) => {
            let groups = kept.by_group.iter().filter(|(k, v)| walked.by_group.get(*k) != Some(*v)).count()
                + walked.by_group.keys().filter(|k| !kept.by_group.contains_key(*k)).count();
            let mismatches = u64::from(kept.documents != walked.documents)
                + u64::from(kept.full_needed != walked.full_needed)
                + groups as u64;
            HubStart { documents: kept.documents, start_ms, rows_read, mismatches, superseded_states }
        }
        Err(e) => {
            println!("hub.redb does not open after the run: {e:#}");
            HubStart { documents: 0, start_ms, rows_read: 0, mismatches: 1, superseded_states: 0 }
        }
    }
}

/// What the sites hold at the end of the run, read through their APIs ([`sites`]).
#[derive(Default)]
pub(super) struct SiteCounts {
    /// Per site: orders (its own and the hub's), shipped, and by state.
    pub(super) per_site: serde_json::Map<String, Value>,
    /// Units reserved beyond stock, plus the units of hub assignments a site rejected: must be 0.
    pub(super) oversold: u64,
    /// The sites' own (till) orders stored.
    pub(super) total_orders: u64,
    pub(super) total_shipped: u64,
    /// Every site's balances equal its ledger's replay.
    pub(super) all_consistent: bool,
    pub(super) audit_ships: u64,
    /// Shipped orders without their audited `ship` row, or the other way round: must be 0.
    pub(super) audit_mismatches: u64,
    pub(super) auth_probe_failures: u64,
    pub(super) screens_rendered: u64,
    pub(super) screen_failures: u64,
}

/// Counts every site's orders by state (printing a line a site), and checks its stock against reservations,
/// its ledger, its audit trail, its refusals and its screens.
pub(super) async fn sites(
    sites: &[Site],
    admin: &reqwest::Client,
    staff_http: &reqwest::Client,
    picker_pin: &str,
) -> anyhow::Result<SiteCounts> {
    let mut c = SiteCounts { all_consistent: true, ..SiteCounts::default() };
    println!(
        "\n{:<9} {:>7} {:>8} {:>8} {:>9} {:>10}  ledger   (orders = the site's own + routed by the hub)",
        "site", "orders", "shipped", "deliv.", "cancelled", "backorder"
    );
    for s in sites {
        let base = format!("http://{}/v1", s.addr);
        let mut counts = BTreeMap::new();
        let (mut local_orders, mut hub_orders, mut rejected_units) = (0u64, 0u64, 0u64);
        for st in [
            "assigned",
            "accepted",
            "picking",
            "picked",
            "packed",
            "shipped",
            "delivered",
            "cancelled",
            "backordered",
            "rejected",
        ] {
            let mut n = 0u64;
            let mut after: Option<String> = None;
            for _ in 0..10_000 {
                let mut url = format!("{base}/orders?status={st}&limit=500");
                if let Some(a) = &after {
                    url.push_str(&format!("&after={a}"));
                }
                let v: Value = admin.get(url).send().await?.json().await?;
                let page = v["orders"].as_array().cloned().unwrap_or_default();
                // cannot truncate: usize has at most 64 bits.
                let k = page.len() as u64;
                n += k;
                for o in &page {
                    if o["id"].as_str().is_some_and(|id| id.starts_with(oms_protocol::domain::HUB_ORDER_PREFIX)) {
                        hub_orders += 1;
                        // A hub assignment the site could not fill is an over-promise by the hub.
                        if st == "rejected" {
                            rejected_units += o["lines"]
                                .as_array()
                                .map(|ls| ls.iter().filter_map(|l| l["qty"].as_u64()).sum::<u64>())
                                .unwrap_or(0);
                        }
                    } else {
                        local_orders += 1;
                    }
                }
                after = v["next_after"].as_str().map(String::from);
                if k < 500 {
                    break;
                }
            }
            counts.insert(st, n);
        }
        let stock: Value = admin.get(format!("{base}/stock?limit=500")).send().await?.json().await?;
        for item in stock["items"].as_array().into_iter().flatten() {
            let on_hand = item["on_hand"].as_u64().unwrap_or(0);
            let reserved = item["reserved"].as_u64().unwrap_or(0);
            c.oversold += reserved.saturating_sub(on_hand);
        }
        c.oversold += rejected_units;
        let audit: Value = admin.get(format!("{base}/audit/ledger")).send().await?.json().await?;
        let ledger_ok = audit["consistent"] == Value::Bool(true);
        c.all_consistent &= ledger_ok;
        let orders: u64 = counts.values().sum();
        let shipped = counts["shipped"] + counts["delivered"];
        // Every shipped order has its `ship` row in the site's audit trail, committed with the change.
        let ships = audited_ships(admin, s.addr).await;
        c.audit_mismatches += ships.map_or(1, |n| n.abs_diff(shipped));
        c.audit_ships += ships.unwrap_or(0);
        c.auth_probe_failures += auth_probes(staff_http, s.addr).await;
        let (rendered, failed) = screen_probes(s.addr, s.id, picker_pin).await;
        c.screens_rendered += rendered;
        c.screen_failures += failed;
        c.total_orders += local_orders;
        c.total_shipped += shipped;
        println!(
            "{:<9} {:>7} {:>8} {:>8} {:>9} {:>10}  {}",
            s.id,
            orders,
            shipped,
            counts["delivered"],
            counts["cancelled"],
            counts["backordered"],
            if ledger_ok { "balances = ledger replay" } else { "MISMATCH" }
        );
        c.per_site.insert(
        s.id.into(),
        json!({"orders": orders, "local_orders": local_orders, "hub_orders": hub_orders, "shipped": shipped, "by_state": counts}),
    );
    }
    Ok(c)
}
