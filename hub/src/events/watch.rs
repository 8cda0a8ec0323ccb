//! Events the hub learns of by watching rather than by making the change: a site's progress on its
//! fulfillments (from the order documents it syncs) and the nodes' connections.
//!
//! **Fulfillments** ([`report_fulfillments`], called by the watcher in `crate::orders` with what it read
//! from the changed documents): per fulfillment the table `events_reported` remembers which of
//! `fulfillment.accepted`, `fulfillment.shipped` and `order.delivered` were reported, in the transaction
//! that appends them, so a document read again (a re-read, a restart, a re-sync) reports nothing twice.
//! A state implies the ones before it (a document first seen as shipped reports accepted, then shipped, in
//! that order). A start re-reads the
//! documents of shipped, undelivered fulfillments ([`unfinished`]), which the intake no longer tracks, so a
//! delivery seen just before a crash is still reported.
//!
//! **Nodes** ([`NodeWatch`], one pass a second): `node.offline` once a node has been disconnected for
//! `node_debounce_ms`, `node.online` once it has been connected that long after being reported offline (or
//! when first seen). What was last reported per node is kept (`events_nodes`), so a restart reports only
//! changes; the debounce clock starts again at a restart.
//!
//! **Stock** ([`read_stock_change`] then [`report_stock`] or [`report_stock_skus`], called by the watcher
//! each time a site's stock document changes): `stock.low` once a SKU's available units at a site (on hand −
//! reserved) fall to `[events] stock_low_at` or below. The table `events_stock_low` keeps the (site, SKU)
//! pairs reported low, in the transaction that appends their events, and forgets a pair once it is back above
//! the threshold, so each fall reports once however often the document is read again, and the next fall
//! reports again. A change costs what it touched: the hub notes which SKUs each accepted change of a stock
//! document touched (the diff between the heads before and after it, which the ownership check makes anyway,
//! so changes merged concurrently are in it), and the watcher reads those SKUs' balances and their rows of
//! the table only. The first change after a start (what changed while the hub was down is not known), and one
//! that touched more than `schema::STOCK_TOUCHED_MAX` SKUs, reads the whole document and reconciles the
//! site's rows.

use std::collections::{BTreeMap, HashMap};

use oms_protocol::domain::{Balance, Channel, FulfillmentState, NodeId, OrderId, Sku};
use oms_service::storage::StorageError;
use redb::{ReadableTable, TableDefinition};
use serde_json::json;

use super::{
    EventDraft, FULFILLMENT_ACCEPTED, FULFILLMENT_SHIPPED, NODE_OFFLINE, NODE_ONLINE, ORDER_DELIVERED, append,
};

/// Fulfillment id → the events reported for it ([`ACCEPTED`] | [`SHIPPED`] | [`DELIVERED`]). One byte per
/// fulfillment that got as far as accepted; kept (not pruned) so that no re-read reports again.
const REPORTED: TableDefinition<&str, u8> = TableDefinition::new("events_reported");
/// Fulfillment id → (): those reported shipped and not yet delivered, kept with [`REPORTED`] in the same
/// transactions, so that a start reads these rows and not every fulfillment ever reported
/// ([`unfinished`]). A file from before it gets it built from [`REPORTED`] once, when [`init`] creates it.
const IN_TRANSIT: TableDefinition<&str, ()> = TableDefinition::new("events_in_transit");
/// Node id → 1 if last reported online, 0 if offline.
const NODES: TableDefinition<&str, u8> = TableDefinition::new("events_nodes");
/// (site, SKU) → the available units when reported low: the pairs reported `stock.low` and not back above
/// the threshold since.
const STOCK_LOW: TableDefinition<(&str, &str), u64> = TableDefinition::new("events_stock_low");
const ACCEPTED: u8 = 1;
const SHIPPED: u8 = 2;
const DELIVERED: u8 = 4;
/// Most fulfillments a start re-reads for a delivery.
pub const UNFINISHED_MAX: usize = 100_000;
/// Most nodes whose reported state one pass reads.
pub const NODES_READ_MAX: usize = 100_000;
/// Most `stock.low` events one stock document's change appends (a site whose every SKU ran out at once
/// reports the first this many; the rest are reported by the document's next change).
pub const STOCK_LOW_EVENTS_MAX: usize = 10_000;

pub(super) fn init(w: &redb::WriteTransaction) -> Result<(), StorageError> {
    use redb::TableHandle;
    let built = w.list_tables().map_err(redb::Error::from)?.any(|t| t.name() == IN_TRANSIT.name());
    let reported = w.open_table(REPORTED).map_err(redb::Error::from)?;
    let mut in_transit = w.open_table(IN_TRANSIT).map_err(redb::Error::from)?;
    if !built {
        // Once, for a file from before the table: every fulfillment reported shipped and not delivered.
        for row in reported.range::<&str>(..).map_err(redb::Error::from)? {
            let (k, v) = row.map_err(redb::Error::from)?;
            if v.value() & (SHIPPED | DELIVERED) == SHIPPED {
                in_transit.insert(k.value(), ()).map_err(redb::Error::from)?;
            }
        }
    }
    drop((reported, in_transit));
    w.open_table(NODES).map_err(redb::Error::from)?;
    w.open_table(STOCK_LOW).map_err(redb::Error::from)?;
    Ok(())
}

/// What the watcher read of one fulfillment document.
#[derive(Debug, Clone)]
pub struct FulfillmentSeen {
    /// The fulfillment.
    pub id: OrderId,
    /// Its customer order.
    pub parent: OrderId,
    /// The order's channel.
    pub channel: Channel,
    /// The site.
    pub site: NodeId,
    /// Its state at the site.
    pub status: FulfillmentState,
    /// The carrier's hand-over, once shipped (carrier, tracking), as the document shows it.
    pub shipment: Option<serde_json::Value>,
    /// When the site shipped it, by the site's clock (its timeline), once shipped.
    pub shipped_at_ms: Option<u64>,
}

impl FulfillmentSeen {
    /// What the watcher read of fulfillment `id` of customer order `parent` (none for a document without a
    /// parent, which is no hub fulfillment).
    pub fn of(
        id: &OrderId,
        parent: Option<&str>,
        site: &NodeId,
        channel: &Channel,
        p: &oms_protocol::schema::Progress,
    ) -> Option<FulfillmentSeen> {
        Some(FulfillmentSeen {
            id: id.clone(),
            parent: OrderId::parse(parent?).ok()?,
            channel: channel.clone(),
            site: site.clone(),
            status: p.status,
            shipment: p.shipment.as_ref().and_then(|s| serde_json::to_value(s).ok()),
            shipped_at_ms: p.timeline.iter().rev().find(|e| e.status == FulfillmentState::Shipped).map(|e| e.at_ms),
        })
    }
}

/// The events `status` implies, in order, as (bit, type).
fn implied(status: FulfillmentState) -> &'static [(u8, &'static str)] {
    use FulfillmentState as S;
    const ACC: (u8, &str) = (ACCEPTED, FULFILLMENT_ACCEPTED);
    const SHIP: (u8, &str) = (SHIPPED, FULFILLMENT_SHIPPED);
    const DELIV: (u8, &str) = (DELIVERED, ORDER_DELIVERED);
    match status {
        S::Accepted | S::Picking | S::Picked | S::Packed | S::Backordered => &[ACC],
        S::Shipped => &[ACC, SHIP],
        S::Delivered => &[ACC, SHIP, DELIV],
        S::Assigned | S::Rejected | S::Cancelled => &[],
    }
}

/// Appends the events the fulfillments' states imply and were not reported yet, in one transaction of
/// `db`, and records them. Returns how many events were appended.
pub fn report_fulfillments(db: &redb::Database, seen: &[FulfillmentSeen], now_ms: u64) -> Result<usize, StorageError> {
    // A read first: the watcher passes every changed document, and most changes imply nothing new (a pick,
    // a pack, a re-sync), so they should cost no write transaction (and no fsync).
    let due: Vec<&FulfillmentSeen> = {
        use redb::ReadableDatabase;
        let r = db.begin_read().map_err(redb::Error::from)?;
        let t = super::read_table(&r, REPORTED)?;
        let mut due = Vec::new();
        for f in seen {
            let mask = match &t {
                Some(t) => t.get(f.id.as_str()).map_err(redb::Error::from)?.map(|v| v.value()).unwrap_or(0),
                None => 0,
            };
            if implied(f.status).iter().any(|(bit, _)| mask & bit == 0) {
                due.push(f);
            }
        }
        due
    };
    if due.is_empty() {
        return Ok(0);
    }
    let w = db.begin_write().map_err(redb::Error::from)?;
    let mut n = 0;
    for f in due {
        n += report_in(&w, f, now_ms)?;
    }
    w.commit().map_err(redb::Error::from)?;
    Ok(n)
}

/// Appends, in `w`, the events `f`'s state implies and were not reported yet, and records them. Returns how
/// many events were appended.
pub(crate) fn report_in(w: &redb::WriteTransaction, f: &FulfillmentSeen, now_ms: u64) -> Result<usize, StorageError> {
    let mut n = 0;
    let mut t = w.open_table(REPORTED).map_err(redb::Error::from)?;
    let mut in_transit = w.open_table(IN_TRANSIT).map_err(redb::Error::from)?;
    let key = f.id.as_str();
    let mask = t.get(key).map_err(redb::Error::from)?.map(|v| v.value()).unwrap_or(0);
    let mut new_mask = mask;
    for (bit, kind) in implied(f.status) {
        if mask & bit != 0 {
            continue;
        }
        let data = json!({"fulfillment_id": f.id, "site": f.site, "status": f.status.as_str(),
            "shipment": f.shipment, "shipped_at_ms": f.shipped_at_ms});
        append(w, EventDraft::new(kind, now_ms).order(&f.parent, &f.channel).data(data))?;
        if *bit == SHIPPED {
            // Its tracking number, and the carrier's events that arrived before it, in this transaction.
            crate::tracking::on_shipped(w, f)?;
        }
        n += 1;
        new_mask |= bit;
    }
    if new_mask != mask {
        t.insert(key, new_mask).map_err(redb::Error::from)?;
        if new_mask & (SHIPPED | DELIVERED) == SHIPPED {
            in_transit.insert(key, ()).map_err(redb::Error::from)?;
        } else if new_mask & DELIVERED != 0 {
            in_transit.remove(key).map_err(redb::Error::from)?;
        }
    }
    Ok(n)
}

/// Appends `stock.low` for each SKU of `site` whose available units (on hand − reserved, from `skus`, the
/// site's stock document as just read) are at most `low_at` and were not reported low since they were last
/// above it; forgets the pairs back above it (or gone from the document). One write transaction, and none
/// when nothing changed. Returns how many events were appended.
pub fn report_stock(
    db: &redb::Database,
    site: &str,
    skus: &[(Sku, Balance)],
    low_at: u64,
    now_ms: u64,
) -> Result<usize, StorageError> {
    use std::collections::BTreeSet;
    let low: BTreeMap<&str, u64> =
        skus.iter().filter(|(_, b)| available(b) <= low_at).map(|(s, b)| (s.as_str(), available(b))).collect();
    // The pairs reported low before (only this site's rows: few, however many SKUs the site holds).
    let reported: BTreeSet<String> = {
        use redb::ReadableDatabase;
        let r = db.begin_read().map_err(redb::Error::from)?;
        let Some(t) = super::read_table(&r, STOCK_LOW)? else { return Ok(0) };
        let mut out = BTreeSet::new();
        for row in t.range::<(&str, &str)>((site, "")..).map_err(redb::Error::from)? {
            let (k, _) = row.map_err(redb::Error::from)?;
            let (s, sku) = k.value();
            if s != site {
                break;
            }
            out.insert(sku.to_owned());
        }
        out
    };
    let fell: Vec<(&str, u64)> = low
        .iter()
        .filter(|(sku, _)| !reported.contains(**sku))
        .map(|(s, a)| (*s, *a))
        .take(STOCK_LOW_EVENTS_MAX)
        .collect();
    let recovered: Vec<&str> = reported.iter().map(String::as_str).filter(|sku| !low.contains_key(sku)).collect();
    record_stock_low(db, site, &fell, &recovered, low_at, now_ms)
}

/// What the watcher read of a changed stock document ([`read_stock_change`]).
#[derive(Debug)]
pub enum StockRead {
    /// Every SKU (at most `docs::STOCK_SKUS_MAX`): for [`report_stock`].
    Whole(Vec<(Sku, Balance)>),
    /// The SKUs the changes touched, `None` for one no longer in the document: for [`report_stock_skus`].
    Touched(Vec<(Sku, Option<Balance>)>),
}

/// Reads what changed of stock document `d` (named `doc`): the SKUs `touched`
/// ([`crate::docs::HubDocs::take_stock_touched`], taken under the same hold of the documents' lock), or the
/// whole document when that is `None`. `None` if it does not read (logged).
pub fn read_stock_change(
    d: &oms_protocol::sync::automerge::AutoCommit,
    doc: &oms_protocol::wire::DocId,
    touched: Option<std::collections::BTreeSet<String>>,
) -> Option<StockRead> {
    use oms_protocol::schema;
    let read = match touched {
        Some(keys) => schema::read_stock_skus(d, doc.as_str(), keys.iter().map(String::as_str)).map(StockRead::Touched),
        None => schema::read_stock(d, doc.as_str(), crate::docs::STOCK_SKUS_MAX).map(|s| StockRead::Whole(s.skus)),
    };
    read.inspect_err(|e| tracing::warn!(%doc, error = %e, "cannot read the site's stock for stock.low")).ok()
}

/// [`report_stock`] for the SKUs in `skus` only (each with its balance now, `None` if gone from the
/// document): reads their rows of the table, not the site's; appends `stock.low` for those that fell to
/// `low_at` or below and forgets those back above it (or gone). One write transaction, and none when nothing
/// changed. Returns how many events were appended.
pub fn report_stock_skus(
    db: &redb::Database,
    site: &str,
    skus: &[(Sku, Option<Balance>)],
    low_at: u64,
    now_ms: u64,
) -> Result<usize, StorageError> {
    let low_now = |b: &Option<Balance>| b.as_ref().map(available).filter(|a| *a <= low_at);
    let reported: Vec<bool> = {
        use redb::ReadableDatabase;
        let r = db.begin_read().map_err(redb::Error::from)?;
        let Some(t) = super::read_table(&r, STOCK_LOW)? else { return Ok(0) };
        let mut out = Vec::with_capacity(skus.len());
        for (sku, _) in skus {
            out.push(t.get((site, sku.as_str())).map_err(redb::Error::from)?.is_some());
        }
        out
    };
    let mut fell = Vec::new();
    let mut recovered = Vec::new();
    for ((sku, b), was) in skus.iter().zip(reported) {
        match (low_now(b), was) {
            (Some(a), false) if fell.len() < STOCK_LOW_EVENTS_MAX => fell.push((sku.as_str(), a)),
            (None, true) => recovered.push(sku.as_str()),
            _ => {}
        }
    }
    record_stock_low(db, site, &fell, &recovered, low_at, now_ms)
}

/// Available units of a balance: on hand − reserved.
fn available(b: &Balance) -> u64 {
    b.on_hand.saturating_sub(b.reserved)
}

/// Appends `stock.low` for `fell` and remembers them, forgets `recovered`: one write transaction, none when
/// both are empty. Returns how many events were appended.
fn record_stock_low(
    db: &redb::Database,
    site: &str,
    fell: &[(&str, u64)],
    recovered: &[&str],
    low_at: u64,
    now_ms: u64,
) -> Result<usize, StorageError> {
    if fell.is_empty() && recovered.is_empty() {
        return Ok(0);
    }
    let w = db.begin_write().map_err(redb::Error::from)?;
    let mut t = w.open_table(STOCK_LOW).map_err(redb::Error::from)?;
    for sku in recovered {
        t.remove((site, *sku)).map_err(redb::Error::from)?;
    }
    for (sku, units) in fell {
        let data = json!({"site": site, "sku": sku, "available": units, "low_at": low_at});
        append(&w, EventDraft::new(super::STOCK_LOW, now_ms).data(data))?;
        t.insert((site, *sku), *units).map_err(redb::Error::from)?;
    }
    drop(t);
    w.commit().map_err(redb::Error::from)?;
    Ok(fell.len())
}

/// Fulfillments reported shipped and not delivered (at most [`UNFINISHED_MAX`]): a start reads their
/// documents again. Reads those rows only ([`IN_TRANSIT`]), however many fulfillments were ever reported.
pub fn unfinished(db: &redb::Database) -> Result<Vec<OrderId>, StorageError> {
    use redb::ReadableDatabase;
    let r = db.begin_read().map_err(redb::Error::from)?;
    let Some(t) = super::read_table(&r, IN_TRANSIT)? else { return Ok(vec![]) };
    let mut out = Vec::new();
    for row in t.range::<&str>(..).map_err(redb::Error::from)?.take(UNFINISHED_MAX) {
        let (k, _) = row.map_err(redb::Error::from)?;
        if let Ok(id) = OrderId::parse(k.value()) {
            out.push(id);
        }
    }
    Ok(out)
}

/// The connection-state half: what is seen of each node since when, in memory.
#[derive(Debug, Default)]
pub struct NodeWatch {
    /// Per node: connected or not, and since when (as far as this process has seen).
    seen: HashMap<String, (bool, u64)>,
}

impl NodeWatch {
    /// One pass: `connected` is every node known to the hub's sessions and whether it is connected now.
    /// Nodes reported before but not in `connected` count as disconnected. Appends the debounced changes;
    /// returns how many.
    pub fn pass(
        &mut self,
        db: &redb::Database,
        connected: &BTreeMap<String, bool>,
        debounce_ms: u64,
        now_ms: u64,
    ) -> Result<usize, StorageError> {
        use redb::ReadableDatabase;
        let mut reported: BTreeMap<String, bool> = BTreeMap::new();
        {
            let r = db.begin_read().map_err(redb::Error::from)?;
            if let Some(t) = super::read_table(&r, NODES)? {
                for row in t.range::<&str>(..).map_err(redb::Error::from)?.take(NODES_READ_MAX) {
                    let (k, v) = row.map_err(redb::Error::from)?;
                    reported.insert(k.value().to_owned(), v.value() == 1);
                }
            }
        }
        let mut changes = Vec::new();
        let names: std::collections::BTreeSet<&String> = connected.keys().chain(reported.keys()).collect();
        for name in names {
            let up = connected.get(name).copied().unwrap_or(false);
            let since = match self.seen.get(name) {
                Some((was, at)) if *was == up => *at,
                _ => {
                    self.seen.insert(name.clone(), (up, now_ms));
                    now_ms
                }
            };
            if now_ms.saturating_sub(since) < debounce_ms {
                continue;
            }
            match reported.get(name) {
                Some(r) if *r == up => {}
                // A node never reported and never connected in this process: nothing to say.
                None if !up => {}
                _ => changes.push((name.clone(), up, since)),
            }
        }
        if changes.is_empty() {
            return Ok(0);
        }
        let w = db.begin_write().map_err(redb::Error::from)?;
        for (name, up, since) in &changes {
            let kind = if *up { NODE_ONLINE } else { NODE_OFFLINE };
            append(&w, EventDraft::new(kind, now_ms).data(json!({"node": name, "since_ms": since})))?;
            w.open_table(NODES)
                .map_err(redb::Error::from)?
                .insert(name.as_str(), u8::from(*up))
                .map_err(redb::Error::from)?;
        }
        w.commit().map_err(redb::Error::from)?;
        Ok(changes.len())
    }
}

/// Period of the nodes' connection check, ms.
pub const NODES_TICK_MS: u64 = 1_000;

/// Reports the nodes' connection changes ([`NodeWatch`]) every [`NODES_TICK_MS`] until the runtime stops.
pub async fn nodes(hub: std::sync::Arc<crate::server::Hub>, debounce_ms: u64) {
    let state = std::sync::Arc::new(std::sync::Mutex::new(NodeWatch::default()));
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(NODES_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let connected: BTreeMap<String, bool> =
            hub.docs.lock().nodes.iter().map(|(n, s)| (n.clone(), s.connected)).collect();
        let (h, st) = (hub.clone(), state.clone());
        let r = tokio::task::spawn_blocking(move || {
            oms_service::lock(&st).pass(h.intake.db(), &connected, debounce_ms, oms_service::now_ms())
        })
        .await;
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot record the nodes' connection events"),
            Err(e) => tracing::error!(error = %e, "the nodes' connection check failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{TypeFilter, page};

    fn seen(status: FulfillmentState) -> FulfillmentSeen {
        FulfillmentSeen {
            id: OrderId::parse("hub-1.1").unwrap(),
            parent: OrderId::parse("hub-1").unwrap(),
            channel: Channel::parse("web").unwrap(),
            site: NodeId::parse("wh-1").unwrap(),
            status,
            shipment: None,
            shipped_at_ms: None,
        }
    }

    fn kinds(db: &redb::Database) -> Vec<String> {
        page(db, 0, 100, &TypeFilter::default(), None, 1000).unwrap().events.into_iter().map(|e| e.kind).collect()
    }

    #[test]
    fn a_file_from_before_the_in_transit_table_gets_it_built_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("e.redb")).unwrap();
        // As an older hub left it: fulfillments reported, no in-transit table.
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(REPORTED).unwrap();
            t.insert("hub-1.1", ACCEPTED | SHIPPED).unwrap();
            t.insert("hub-2.1", ACCEPTED | SHIPPED | DELIVERED).unwrap();
            t.insert("hub-3.1", ACCEPTED).unwrap();
        }
        w.commit().unwrap();
        assert!(unfinished(&db).unwrap().is_empty(), "no table yet");
        crate::events::init(&db).unwrap();
        assert_eq!(unfinished(&db).unwrap(), vec![OrderId::parse("hub-1.1").unwrap()]);
        // Built once: a row the table lost is not brought back by the next start's init.
        let w = db.begin_write().unwrap();
        w.open_table(IN_TRANSIT).unwrap().remove("hub-1.1").unwrap();
        w.commit().unwrap();
        crate::events::init(&db).unwrap();
        assert!(unfinished(&db).unwrap().is_empty(), "a start does not walk the reported fulfillments again");
    }

    #[test]
    fn stock_low_is_reported_once_per_fall_per_site_and_sku() {
        use oms_protocol::domain::{Balance, Sku};
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("e.redb")).unwrap();
        crate::events::init(&db).unwrap();
        let doc = |rows: &[(&str, u64, u64)]| -> Vec<(Sku, Balance)> {
            rows.iter()
                .map(|(s, on_hand, reserved)| {
                    (Sku::parse(s).unwrap(), Balance { on_hand: *on_hand, reserved: *reserved, staged: 0 })
                })
                .collect()
        };
        // Threshold 2: A has 5 - 4 = 1 available (low), B has 3 (not).
        assert_eq!(report_stock(&db, "wh-1", &doc(&[("A", 5, 4), ("B", 3, 0)]), 2, 1).unwrap(), 1);
        assert_eq!(report_stock(&db, "wh-1", &doc(&[("A", 5, 5), ("B", 3, 0)]), 2, 2).unwrap(), 0, "still low");
        // The same SKU at another site is its own pair.
        assert_eq!(report_stock(&db, "wh-2", &doc(&[("A", 0, 0)]), 2, 3).unwrap(), 1);
        // A back above, B down: B reported; A forgotten, so its next fall reports again.
        assert_eq!(report_stock(&db, "wh-1", &doc(&[("A", 9, 0), ("B", 2, 0)]), 2, 4).unwrap(), 1);
        assert_eq!(report_stock(&db, "wh-1", &doc(&[("A", 1, 0), ("B", 2, 0)]), 2, 5).unwrap(), 1);
        // wh-2's row untouched by wh-1's reads; a SKU gone from the document is forgotten.
        assert_eq!(report_stock(&db, "wh-2", &doc(&[]), 2, 6).unwrap(), 0);
        assert_eq!(report_stock(&db, "wh-2", &doc(&[("A", 1, 0)]), 2, 7).unwrap(), 1);
        let events = page(&db, 0, 100, &TypeFilter::default(), None, 1000).unwrap().events;
        let got: Vec<(String, String, u64)> = events
            .iter()
            .map(|e| {
                assert_eq!(e.kind, crate::events::STOCK_LOW);
                assert!(e.order_id.is_none() && e.channel.is_none(), "no channel sees stock events");
                (
                    e.data["site"].as_str().unwrap().into(),
                    e.data["sku"].as_str().unwrap().into(),
                    e.data["available"].as_u64().unwrap(),
                )
            })
            .collect();
        let want: Vec<(String, String, u64)> =
            [("wh-1", "A", 1), ("wh-2", "A", 0), ("wh-1", "B", 2), ("wh-1", "A", 1), ("wh-2", "A", 1)]
                .iter()
                .map(|(a, b, c)| ((*a).into(), (*b).into(), *c))
                .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn each_fulfillment_event_is_reported_once_in_lifecycle_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("e.redb")).unwrap();
        crate::events::init(&db).unwrap();
        use FulfillmentState as S;
        assert_eq!(report_fulfillments(&db, &[seen(S::Assigned)], 1).unwrap(), 0);
        assert_eq!(report_fulfillments(&db, &[seen(S::Picking)], 2).unwrap(), 1);
        assert_eq!(report_fulfillments(&db, &[seen(S::Packed), seen(S::Picked)], 3).unwrap(), 0, "re-reads");
        // Seen first as shipped after a gap: shipped only (accepted was reported).
        assert_eq!(report_fulfillments(&db, &[seen(S::Shipped)], 4).unwrap(), 1);
        assert_eq!(unfinished(&db).unwrap(), vec![OrderId::parse("hub-1.1").unwrap()]);
        assert_eq!(report_fulfillments(&db, &[seen(S::Delivered)], 5).unwrap(), 1);
        assert_eq!(report_fulfillments(&db, &[seen(S::Delivered)], 6).unwrap(), 0, "delivered stays reported");
        assert!(unfinished(&db).unwrap().is_empty());
        assert_eq!(kinds(&db), [FULFILLMENT_ACCEPTED, FULFILLMENT_SHIPPED, ORDER_DELIVERED]);
        // Another fulfillment seen first as delivered: all three, in order.
        let mut f = seen(S::Delivered);
        f.id = OrderId::parse("hub-1.2").unwrap();
        assert_eq!(report_fulfillments(&db, &[f], 7).unwrap(), 3);
        assert_eq!(kinds(&db)[3..], [FULFILLMENT_ACCEPTED, FULFILLMENT_SHIPPED, ORDER_DELIVERED]);
    }

    #[test]
    fn node_changes_are_debounced_and_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("e.redb")).unwrap();
        crate::events::init(&db).unwrap();
        let mut w = NodeWatch::default();
        let up: BTreeMap<String, bool> = [("wh-1".to_owned(), true)].into();
        let down: BTreeMap<String, bool> = [("wh-1".to_owned(), false)].into();
        assert_eq!(w.pass(&db, &up, 100, 0).unwrap(), 0, "not up for the debounce yet");
        assert_eq!(w.pass(&db, &up, 100, 100).unwrap(), 1, "online");
        assert_eq!(w.pass(&db, &up, 100, 200).unwrap(), 0);
        // A blip shorter than the debounce says nothing.
        assert_eq!(w.pass(&db, &down, 100, 210).unwrap(), 0);
        assert_eq!(w.pass(&db, &up, 100, 250).unwrap(), 0);
        assert_eq!(w.pass(&db, &up, 100, 400).unwrap(), 0);
        assert_eq!(w.pass(&db, &down, 100, 500).unwrap(), 0);
        assert_eq!(w.pass(&db, &down, 100, 650).unwrap(), 1, "offline");
        // A restarted hub (a fresh watch) that never sees the node: nothing more to say.
        let mut fresh = NodeWatch::default();
        assert_eq!(fresh.pass(&db, &BTreeMap::new(), 100, 700).unwrap(), 0);
        assert_eq!(fresh.pass(&db, &BTreeMap::new(), 100, 900).unwrap(), 0);
        assert_eq!(kinds(&db), [NODE_ONLINE, NODE_OFFLINE]);
    }
}
