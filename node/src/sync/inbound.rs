//! What the hub sends the node, turned into store commands: assignments (`order/hub-…` documents for this
//! site) become local orders, the hub's cancellation requests become cancellations, the carrier's delivery
//! the hub records (`carrier_delivered_at_ms`) becomes the site's own `Deliver` of a shipped order (so a
//! manual deliver and the carrier's reach `delivered` once: the second is an illegal transition), and the hub's escrow
//! view (`escrow/<node>`) is merged into the site's counters, and the purchase orders the hub publishes for the
//! site (`inbound/<node>`) are stored for receiving. Plus the site's periodic escrow duties.
//!
//! The documents are already durable in `sync.redb` when a change is announced, and every command here is
//! idempotent (an assignment is keyed by its order id, a cancellation of a cancelled order is refused as an
//! illegal transition, a merge is a max), so after a crash the startup scan simply runs them again.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt as _;

use oms_protocol::domain::{FulfillmentState, OrderId};
use oms_protocol::sync::automerge::{AutoCommit, ChangeHash};
use oms_protocol::wire::DocId;

use super::Shared;
use crate::config::HubLink;
use crate::store::{EscrowTicked, Store, StoreError, cmd};
use oms_protocol::schema::{self, DocKind, HUB_ORIGIN};
use oms_service::{lock, now_ms};

/// Documents handled per wake-up; the rest wait for the next one.
pub(crate) const INBOUND_BATCH_MAX: usize = 256;
/// Assignments of one wake-up submitted to the store at once: the store's writer takes concurrent commands
/// in one transaction, so a burst of assignments costs a few commits rather than one fsync each. Bounded
/// well under the store's queue (`[store] queue_max`, 8,192 by default) so that staff and tills still get in.
pub(crate) const ASSIGNMENTS_IN_FLIGHT_MAX: usize = 64;
/// Hub order documents looked at by the startup scan, per page.
const SCAN_PAGE_MAX: usize = 1_000;
/// The hub counts as reachable for escrow duties while its last frame is younger than this.
pub(crate) const HUB_REACHABLE_WINDOW_MS: u64 = 30_000;
/// Period of the escrow duties.
pub(crate) const ESCROW_TICK_MS: u64 = 1_000;

/// At least this often the site merges the hub's escrow view whole, not only the counters that changed since
/// the last merge: a counter the site refused then (its state contradicted the site's) is looked at again
/// once the site's own state may have moved on, as every merge did before it was made partial.
pub(crate) const ESCROW_FULL_MERGE_MS: u64 = 60_000;

/// The hub's escrow view as the site last merged it: the document (a generation of `escrow/<node>`), its
/// heads then, and when it was last merged whole.
#[derive(Debug, Clone)]
pub(crate) struct EscrowMerged {
    doc: DocId,
    heads: Vec<ChangeHash>,
    full_at_ms: u64,
}

/// The SKUs whose counters the hub's escrow view `d` changed since `heads`, or `None` to read it whole: `d`
/// lacks a change of `heads` (another generation, or an empty document then), or the changes cannot be
/// listed by key ([`schema::keys_touched_since`]). A view holds a counter for every SKU the hub has sold at
/// the site, thousands in a large catalog, and the hub changes it with nearly every order it sends here:
/// reading and merging every counter each time cost the site's writer a transaction over the whole catalog
/// per wake-up of the inbound task. Listing the keys reads the operations of the changes since `heads` only
/// (a diff of the view, as this did first, visited all its operations: a tenth of the site's CPU at 16
/// clients).
fn escrow_touched_since(d: &mut AutoCommit, heads: &[ChangeHash]) -> Option<BTreeSet<String>> {
    if heads.is_empty() || !d.get_missing_deps(heads).is_empty() {
        return None;
    }
    let [escrow] = schema::keys_touched_since(d, heads, [schema::keys::ESCROW]);
    escrow
}

/// What to do about one document the hub changed.
enum Action {
    Assign {
        id: OrderId,
        draft: Box<oms_protocol::domain::OrderDraft>,
        at_ms: u64,
        cancel: bool,
        delivered: bool,
    },
    /// The hub's counters that changed since the last merge (every one when `merged.full_at_ms` is now),
    /// and what to remember once they are merged.
    Escrow {
        counters: Vec<oms_protocol::escrow::EscrowCounter>,
        merged: EscrowMerged,
    },
    Inbound(Vec<schema::InboundPo>, Vec<schema::InboundRma>),
}

fn action_for(shared: &Shared, doc: &DocId) -> Option<Action> {
    let mut docs = lock(&shared.docs);
    let me = docs.node();
    match DocKind::of(doc)? {
        DocKind::Order(_) => {
            let d = docs.sync.db.read(doc)?;
            let view = schema::read_order(&d, doc.as_str()).ok()?;
            if view.origin.as_str() != HUB_ORIGIN || &view.site != me {
                return None;
            }
            let cancel = view.cancel_requested_at_ms.is_some();
            let delivered = view.carrier_delivered_at_ms.is_some();
            Some(Action::Assign {
                id: view.id,
                draft: Box::new(view.draft),
                at_ms: view.created_at_ms,
                cancel,
                delivered,
            })
        }
        DocKind::Escrow(n) if &n == me => {
            let now = now_ms();
            let last = lock(&shared.escrow_merged)
                .clone()
                .filter(|m| &m.doc == doc && now.saturating_sub(m.full_at_ms) < ESCROW_FULL_MERGE_MS);
            let d = docs.sync.db.get_mut(doc)?;
            let heads = d.get_heads();
            let touched = last.as_ref().and_then(|m| escrow_touched_since(d, &m.heads));
            let (counters, bad) = match &touched {
                Some(skus) => schema::read_escrow_of(d, skus.iter().map(String::as_str)),
                None => schema::read_escrow(d, usize::MAX),
            }
            .ok()?;
            if !bad.is_empty() {
                tracing::warn!(%doc, skus = ?bad, "sync: hub escrow entries that do not decode were skipped");
            }
            let full_at_ms = match (&touched, last) {
                (Some(_), Some(m)) => m.full_at_ms,
                _ => now,
            };
            Some(Action::Escrow { counters, merged: EscrowMerged { doc: doc.clone(), heads, full_at_ms } })
        }
        DocKind::Inbound(n) if &n == me => {
            // The hub may have acknowledged receipts: the feed pass prunes them from the stock document.
            docs.prune_soon();
            let d = docs.sync.db.read(doc)?;
            let limit = usize::try_from(crate::store::INBOUND_POS_MAX).unwrap_or(usize::MAX);
            let (pos, bad) = schema::read_inbound(&d, limit).ok()?;
            if !bad.is_empty() {
                tracing::warn!(%doc, pos = ?bad, "sync: hub purchase orders that do not decode were skipped");
            }
            let limit = usize::try_from(crate::store::RMAS_MAX).unwrap_or(usize::MAX);
            let (rmas, bad) = schema::read_inbound_rmas(&d, limit).ok()?;
            if !bad.is_empty() {
                tracing::warn!(%doc, rmas = ?bad, "sync: hub returns (RMAs) that do not decode were skipped");
            }
            Some(Action::Inbound(pos, rmas))
        }
        _ => None,
    }
}

async fn apply(shared: &Shared, store: &Store, link: &HubLink, action: Action) -> Result<(), StoreError> {
    match action {
        Action::Assign { id, draft, at_ms, cancel, delivered } => {
            let existing = store.order(&id)?;
            if existing.is_none() {
                let cmd = cmd::AcceptAssignment {
                    id: id.clone(),
                    draft: *draft,
                    assigned_at_ms: at_ms,
                    auto_accept: link.auto_accept,
                };
                store.execute(cmd).await?;
            }
            if cancel {
                let status = store.order(&id)?.map(|r| r.status);
                let cancellable = status.is_some_and(|s| s.next(oms_protocol::domain::Step::Cancel).is_ok());
                if cancellable {
                    let reason = "requested by the hub (customer)".to_owned();
                    match store.execute(cmd::Cancel { order: id.clone(), reason }).await {
                        Ok(_) | Err(StoreError::Transition { .. } | StoreError::OrderFrozen { .. }) => {}
                        Err(e) => return Err(e),
                    }
                } else if let Some(s) = status
                    && !matches!(s, FulfillmentState::Cancelled | FulfillmentState::Rejected)
                {
                    tracing::info!(order = %id, state = %s, "sync: the hub asked to cancel an order past cancelling");
                }
            }
            if delivered && store.order(&id)?.is_some_and(|r| r.status == FulfillmentState::Shipped) {
                // The carrier delivered it. Staff may deliver it by hand meanwhile: then this is an illegal
                // transition, and the order is delivered once either way.
                match store.execute(cmd::Deliver { order: id.clone() }).await {
                    Ok(_) | Err(StoreError::Transition { .. } | StoreError::OrderFrozen { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
        Action::Escrow { counters, merged } => {
            if !counters.is_empty() {
                store.execute(cmd::EscrowSync { hub: counters, policy: link.escrow }).await?;
            }
            *lock(&shared.escrow_merged) = Some(merged);
            Ok(())
        }
        Action::Inbound(pos, rmas) => {
            // Only what changed: the document holds every order the site has been sent.
            let changed: Vec<_> = pos
                .into_iter()
                .filter(|p| store.inbound_po(&p.po).ok().flatten().is_none_or(|r| &r.hub != p))
                .collect();
            for chunk in changed.chunks(INBOUND_BATCH_MAX) {
                store.execute(cmd::SetInbound(chunk.to_vec())).await?;
            }
            let changed: Vec<_> =
                rmas.into_iter().filter(|r| store.rma(&r.rma).ok().flatten().is_none_or(|o| &o.hub != r)).collect();
            for chunk in changed.chunks(INBOUND_BATCH_MAX) {
                store.execute(cmd::SetRmas(chunk.to_vec())).await?;
            }
            Ok(())
        }
    }
}

/// Scans the documents for hub work not yet in the store (after a start or a crash).
fn startup_scan(shared: &Shared) {
    let docs = lock(&shared.docs);
    let mut found = BTreeSet::new();
    let prefix = format!("{}{}-", schema::ORDER_PREFIX, HUB_ORIGIN);
    let mut after: Option<String> = None;
    // Bounded: at most docs_max documents exist, scanned a page at a time.
    for _ in 0..(shared.tuning.docs_max / SCAN_PAGE_MAX + 1) {
        let page = docs.sync.db.ids_with_prefix(&prefix, after.as_deref(), SCAN_PAGE_MAX);
        let Some(last) = page.last() else { break };
        after = Some(last.as_str().to_owned());
        let full = page.len() == SCAN_PAGE_MAX;
        found.extend(page);
        if !full {
            break;
        }
    }
    // The current generations of the hub's documents for this site.
    found.extend(schema::escrow_doc(docs.node()).map(|base| docs.sync.db.current(&base)));
    found.extend(schema::inbound_doc(docs.node()).map(|base| docs.sync.db.current(&base)));
    drop(docs);
    let mut inbound = lock(&shared.inbound);
    inbound.extend(found);
}

/// Runs the inbound task: wakes when the link reports documents the hub changed.
pub(super) async fn run(shared: Arc<Shared>, store: Store, link: HubLink) {
    startup_scan(&shared);
    shared.inbound_changed.notify_one();
    let mut tick = tokio::time::interval(Duration::from_millis(ESCROW_TICK_MS));
    let mut cursor: Option<oms_protocol::domain::Sku> = None;
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.inbound_changed.notified() => {}
            _ = tick.tick() => {
                let last = shared.last_hub_frame_ms.load(Ordering::Relaxed);
                let reachable = last > 0 && now_ms().saturating_sub(last) < HUB_REACHABLE_WINDOW_MS;
                let cmd = cmd::EscrowTick {
                    hub_reachable: reachable,
                    policy: link.escrow,
                    skus_max: store.limits().escrow_tick_skus_max,
                    changes_max: store.limits().escrow_tick_changes_max,
                    after: cursor.take(),
                };
                match store.execute(cmd).await {
                    Ok(EscrowTicked { next_after, .. }) => cursor = next_after,
                    Err(e) => tracing::warn!(error = %e, "sync: escrow duties failed; retrying next tick"),
                }
            }
        }
        let batch: Vec<DocId> = {
            let mut inbound = lock(&shared.inbound);
            let take: Vec<DocId> = inbound.iter().take(INBOUND_BATCH_MAX).cloned().collect();
            for d in &take {
                inbound.remove(d);
            }
            if !inbound.is_empty() {
                shared.inbound_changed.notify_one();
            }
            take
        };
        take_batch(&shared, &store, &link, batch).await;
    }
}

/// Whether `action` is submitted together with the wake-up's assignments rather than before them, in turn:
/// the escrow view's merge goes with them, so that the store's writer can take it in the same transaction
/// (one commit a wake-up, not two one after the other). The two commute: a merge only raises the hub's
/// entries of the counters, and an assignment reserves units the hub already paid for, which changes no
/// counter (`escrow::on_movement`); each is still checked against the stock as the writer applies it.
fn with_assignments(action: &Action) -> bool {
    matches!(action, Action::Assign { .. } | Action::Escrow { .. })
}

/// Applies one wake-up's documents: the purchase orders first, one after another, in the documents' order;
/// then the escrow view's merge and the assignments ([`with_assignments`]), each assignment its own sequence
/// (accept, then a cancel or a delivery the hub asked for), up to `ASSIGNMENTS_IN_FLIGHT_MAX` at once:
/// different orders touch different records, and the writer still applies every command in one order and
/// checks each against stock. What fails is put back for the next wake-up.
async fn take_batch(shared: &Shared, store: &Store, link: &HubLink, batch: Vec<DocId>) {
    let mut together = Vec::new();
    for doc in batch {
        let Some(action) = action_for(shared, &doc) else { continue };
        if with_assignments(&action) {
            together.push((doc, action));
            continue;
        }
        if let Err(e) = apply(shared, store, link, action).await {
            retry(shared, doc, &e);
        }
    }
    let failed: Vec<(DocId, StoreError)> = futures::stream::iter(together)
        .map(|(doc, action)| async move { apply(shared, store, link, action).await.err().map(|e| (doc, e)) })
        .buffer_unordered(ASSIGNMENTS_IN_FLIGHT_MAX)
        .filter_map(std::future::ready)
        .collect()
        .await;
    for (doc, e) in failed {
        retry(shared, doc, &e);
    }
}

/// Puts `doc` back for the next wake-up after `e` (bounded like every dirty set).
fn retry(shared: &Shared, doc: DocId, e: &StoreError) {
    tracing::warn!(%doc, error = %e, "sync: cannot apply the hub's change; will retry");
    let mut inbound = lock(&shared.inbound);
    if inbound.len() < shared.tuning.dirty_docs_max {
        inbound.insert(doc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::escrow::EscrowPolicy;
    use crate::test_support::{hub_assignment, movement, site, store_with_catalog};
    use oms_protocol::domain::{Movement, Sku};
    use oms_protocol::escrow::{EscrowCounter, Party};

    const SKUS: [&str; 5] = ["SKU-A", "SKU-B", "SKU-C", "SKU-D", "SKU-E"];

    /// What the inbound task would merge for `doc` now: the SKUs of the counters, sorted.
    fn to_merge(shared: &Shared, doc: &DocId) -> (Vec<String>, Action) {
        let action = action_for(shared, doc).expect("an escrow action");
        let Action::Escrow { counters, .. } = &action else { panic!("not an escrow action") };
        let mut skus: Vec<String> = counters.iter().map(|c| c.sku().as_str().to_owned()).collect();
        skus.sort();
        (skus, action)
    }

    /// A site in `dir` with the catalog `SKUS`, `receipts` booked and one escrow tick run (the hub granted its
    /// share), its documents, the current escrow view's id and a link to no hub.
    async fn granted_site(dir: &std::path::Path, receipts: &[(&str, u32)]) -> (Store, Shared, DocId, HubLink) {
        let store = store_with_catalog(dir, &SKUS).await;
        for (s, qty) in receipts {
            movement(&store, s, Movement::Receipt { qty: *qty, note: None }).await;
        }
        let tick = cmd::EscrowTick {
            hub_reachable: true,
            policy: EscrowPolicy::default(),
            skus_max: 10,
            changes_max: 10,
            after: None,
        };
        store.execute(tick).await.unwrap();
        let docs = crate::sync::tests::open_docs(&dir.join(crate::sync::SYNC_DB_FILE), 3);
        let escrow = docs.sync.db.current(&schema::escrow_doc(&site()).unwrap());
        let shared = Shared::new(docs, crate::sync::SyncTuning::default());
        let link: HubLink =
            serde_json::from_value(serde_json::json!({"addr": "127.0.0.1:9", "certs_dir": "/nonexistent"})).unwrap();
        (store, shared, escrow, link)
    }

    /// The hub spends `n` of its rights to `sku` and writes its view into the escrow document.
    fn hub_spends(shared: &Shared, doc: &DocId, hub: &mut EscrowCounter, n: u64) {
        hub.consume(Party::Hub, n, now_ms()).unwrap();
        let mut docs = lock(&shared.docs);
        schema::write_escrow(docs.sync.db.get_or_create(doc).unwrap(), &site(), hub, now_ms()).unwrap();
    }

    /// The site merges the hub's escrow view by the counters that changed since its last merge, not the
    /// whole view each time (a counter for every SKU the hub ever sold here); whole again after
    /// `ESCROW_FULL_MERGE_MS`, and whenever the last merge's heads are not in the document.
    #[tokio::test]
    async fn the_hubs_escrow_view_is_merged_by_the_counters_that_changed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, shared, doc, link) = granted_site(dir.path(), &SKUS.map(|s| (s, 1_000))).await;
        let sku = |s: &str| Sku::parse(s).unwrap();
        let mut hub: Vec<EscrowCounter> = SKUS.iter().map(|s| store.escrow(&sku(s)).unwrap().unwrap()).collect();
        for c in &mut hub {
            hub_spends(&shared, &doc, c, 1);
        }
        let consumed = |s: &str| store.escrow(&sku(s)).unwrap().unwrap().consumed(Party::Hub);

        // First merge: every counter.
        let (skus, action) = to_merge(&shared, &doc);
        assert_eq!(skus, SKUS);
        apply(&shared, &store, &link, action).await.unwrap();
        assert!(SKUS.iter().all(|s| consumed(s) == 1));

        // The hub spends on SKU-C only: only its counter is read and merged.
        hub_spends(&shared, &doc, &mut hub[2], 2);
        let (skus, action) = to_merge(&shared, &doc);
        assert_eq!(skus, ["SKU-C"]);
        apply(&shared, &store, &link, action).await.unwrap();
        assert_eq!(consumed("SKU-C"), 3);
        assert_eq!(consumed("SKU-D"), 1);
        let (skus, _) = to_merge(&shared, &doc);
        assert!(skus.is_empty(), "nothing changed since: {skus:?}");

        // Two changes before one merge: both counters.
        hub_spends(&shared, &doc, &mut hub[0], 1);
        hub_spends(&shared, &doc, &mut hub[4], 1);
        let (skus, action) = to_merge(&shared, &doc);
        assert_eq!(skus, ["SKU-A", "SKU-E"]);
        apply(&shared, &store, &link, action).await.unwrap();
        assert_eq!((consumed("SKU-A"), consumed("SKU-E")), (2, 2));

        // The last whole merge is too old: whole again.
        if let Some(m) = lock(&shared.escrow_merged).as_mut() {
            m.full_at_ms = now_ms() - ESCROW_FULL_MERGE_MS;
        }
        let (skus, action) = to_merge(&shared, &doc);
        assert_eq!(skus, SKUS);
        apply(&shared, &store, &link, action).await.unwrap();
        assert!(lock(&shared.escrow_merged).as_ref().is_some_and(|m| now_ms() - m.full_at_ms < 1_000));
        assert!(to_merge(&shared, &doc).0.is_empty());

        // Heads the document does not hold (another generation's, a document rebuilt): whole.
        if let Some(m) = lock(&shared.escrow_merged).as_mut() {
            m.heads = vec![ChangeHash([7; 32])];
        }
        assert_eq!(to_merge(&shared, &doc).0, SKUS);
        store.close();
    }

    /// One wake-up with the hub's escrow view and two assignments: the merge goes with the assignments (not
    /// awaited before them), and both take effect: the orders are accepted with their units reserved, and the
    /// hub's spending is merged into the site's counter.
    #[tokio::test]
    async fn a_wake_up_submits_the_escrow_merge_with_its_assignments() {
        let dir = tempfile::tempdir().unwrap();
        let (store, shared, escrow, link) = granted_site(dir.path(), &[("SKU-A", 10)]).await;
        let sku = Sku::parse("SKU-A").unwrap();
        let mut hub = store.escrow(&sku).unwrap().unwrap();
        assert!(hub.local(Party::Hub) >= 2, "the tick granted the hub rights: {hub:?}");
        // The hub spends two units and assigns them here, one order each.
        hub_spends(&shared, &escrow, &mut hub, 2);
        let mut batch = vec![escrow.clone()];
        let mut ids = Vec::new();
        let draft = oms_protocol::fixtures::draft("w", &sku, 1);
        for n in 1..=2 {
            let (id, name) = hub_assignment(&mut lock(&shared.docs).sync.db, n, &draft);
            batch.push(name);
            ids.push(id);
        }
        for doc in &batch {
            assert!(with_assignments(&action_for(&shared, doc).unwrap()), "{doc} goes with the assignments");
        }
        take_batch(&shared, &store, &link, batch).await;
        for id in &ids {
            assert_eq!(store.order(id).unwrap().unwrap().status, FulfillmentState::Accepted, "{id}");
        }
        assert_eq!(store.balance(&sku).unwrap().unwrap().available(), 8, "two units reserved");
        assert_eq!(store.escrow(&sku).unwrap().unwrap().consumed(Party::Hub), 2, "the hub's spending merged");
        assert!(lock(&shared.inbound).is_empty(), "nothing failed, nothing put back");
        // The purchase orders the hub publishes still go first, in turn.
        assert!(!with_assignments(&Action::Inbound(Vec::new(), Vec::new())));
        store.close();
    }
}
