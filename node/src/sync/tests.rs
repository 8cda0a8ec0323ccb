//! The stock document's upkeep by the feed follower: balances (and the SKU's escrow counter) are coalesced
//! into one Automerge change per `stock_coalesce_ms`, and `repair_stock` at start rewrites every balance, so
//! that a crash between a ledger commit and the coalesced write loses nothing.

use super::*;
use crate::escrow::EscrowPolicy;
use crate::test_support::{hub_assignment, movement, site, store_with_catalog};
use oms_protocol::domain::{Balance, Movement, OrderId};
use oms_protocol::escrow::{EscrowCounter, Party};
use oms_protocol::sync::automerge::ChangeHash;
use std::collections::BTreeMap;

const SKUS: [&str; 5] = ["SKU-A", "SKU-B", "SKU-C", "SKU-D", "SKU-E"];

fn stock_name() -> DocId {
    schema::stock_doc(&site()).unwrap()
}

/// A store for `wh-a` with [`SKUS`] in the catalog and no stock yet.
async fn store(dir: &Path) -> Store {
    store_with_catalog(dir, &SKUS).await
}

fn site_info() -> schema::SiteInfo {
    schema::SiteInfo { name: "A".into(), lat: 52.0, lon: 13.0, priority: 1, capacity_per_day: 100, region: "eu".into() }
}

/// The node's documents in `dir/sync.redb`, with the stock document created (site info published) and the
/// feed followed up to now. The last stock write is placed a minute ahead, so that no coalescing period ends
/// until a test says so, however slow the machine.
fn docs(dir: &Path, store: &Store) -> NodeDocs {
    let mut docs = open_docs(&dir.join(SYNC_DB_FILE), 7);
    docs.stock_written_ms = hold_back();
    publish_site(&mut docs, &site_info(), None).unwrap();
    drain(&mut docs, store);
    docs
}

/// The node's documents for `wh-a` in `path` (actor `actor` repeated), with nothing pending and no stock
/// write yet, as the node opens them at start. Shared with the module's freeze tests.
pub(super) fn open_docs(path: &Path, actor: u8) -> NodeDocs {
    let db = DocDb::open(path, vec![actor; 16], 1_000).unwrap();
    NodeDocs::new(db, site())
}

/// Runs the follower until the feed is drained (bounded). Shared with the module's freeze tests.
pub(super) fn drain(docs: &mut NodeDocs, store: &Store) {
    for _ in 0..100 {
        if ingest(docs, store, &SyncTuning::default()).unwrap().is_none() {
            return;
        }
    }
    panic!("the feed did not drain");
}

fn hold_back() -> u64 {
    now_ms() + 60_000
}

fn stock_heads(docs: &mut NodeDocs) -> Vec<ChangeHash> {
    docs.sync.db.get_mut(&stock_name()).unwrap().get_heads()
}

/// Balances and escrow counters in the stock document.
fn doc_view(docs: &mut NodeDocs) -> (BTreeMap<Sku, Balance>, BTreeMap<Sku, EscrowCounter>) {
    let doc = docs.sync.db.get_mut(&stock_name()).unwrap();
    let stock = schema::read_stock(doc, stock_name().as_str(), 1_000).unwrap();
    let (escrow, bad) = schema::read_escrow(doc, 1_000).unwrap();
    assert!(bad.is_empty(), "undecodable escrow counters {bad:?}");
    (stock.skus.into_iter().collect(), escrow.into_iter().map(|c| (c.sku().clone(), c)).collect())
}

/// A stock document whose history grew long continues in its next generation: the feed pass that writes past
/// the bound hands the link the new document (not the old one, which is gone), the new one shows exactly what
/// the ledger says with a short history, and after a restart the follower keeps writing into it.
#[tokio::test]
async fn a_stock_document_whose_history_grew_long_continues_in_a_new_generation() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let mut docs = docs(dir.path(), &store);
    let tuning = SyncTuning::default();
    let next = oms_protocol::generations::name(&stock_name(), 1).unwrap();
    let mut rotated_at = None;
    // Every pass rewrites five balances and counters: the bound (1,000 operations beyond twice the visible
    // state) is passed within a hundred passes or so.
    for pass in 0..1_000u32 {
        for s in SKUS {
            movement(&store, s, Movement::Receipt { qty: 1, note: None }).await;
        }
        docs.stock_written_ms = now_ms() - tuning.stock_coalesce_ms;
        let changed = ingest(&mut docs, &store, &tuning).unwrap().unwrap();
        if docs.stock_name() != Some(stock_name()) {
            assert_eq!(changed, vec![next.clone()], "the link is told of the new generation only");
            rotated_at = Some(pass);
            break;
        }
        assert_eq!(changed, vec![stock_name()]);
    }
    let pass = rotated_at.expect("the stock document started a new generation");
    assert!(pass > 50, "not before its history grew: pass {pass}");
    assert!(!docs.sync.db.contains(&stock_name()), "the older generation is gone");
    let view = |docs: &mut NodeDocs| {
        let doc = docs.sync.db.get_mut(&next).unwrap();
        let stock = schema::read_stock(doc, next.as_str(), 1_000).unwrap();
        let (escrow, _) = schema::read_escrow(doc, 1_000).unwrap();
        let info = schema::read_site_info(doc);
        let stock: BTreeMap<Sku, Balance> = stock.skus.into_iter().collect();
        (stock, escrow.into_iter().map(|c| (c.sku().clone(), c)).collect::<BTreeMap<_, _>>(), info)
    };
    let (balances, escrow, info) = view(&mut docs);
    assert_eq!((balances, escrow), ledger_view(&store));
    assert_eq!(info.map(|i| i.name), Some("A".to_owned()), "the site's facts came along");
    let ops = oms_protocol::sync::automerge::ReadDoc::stats(docs.sync.db.get_mut(&next).unwrap()).num_ops;
    assert!(ops < 200, "{ops} operations in the new generation");

    // After a restart the follower writes into the new generation.
    drop(docs);
    let mut docs = open_docs(&dir.path().join(SYNC_DB_FILE), 9);
    assert_eq!(docs.stock_name(), Some(next.clone()));
    movement(&store, SKUS[0], Movement::Receipt { qty: 5, note: None }).await;
    docs.stock_written_ms = now_ms() - tuning.stock_coalesce_ms;
    assert_eq!(ingest(&mut docs, &store, &tuning).unwrap().unwrap(), vec![next.clone()]);
    assert_eq!(view(&mut docs).0, ledger_view(&store).0);
    assert!(!docs.sync.db.contains(&stock_name()));
}

/// Balances and escrow counters in the ledger.
fn ledger_view(store: &Store) -> (BTreeMap<Sku, Balance>, BTreeMap<Sku, EscrowCounter>) {
    let balances: BTreeMap<Sku, Balance> = store.balances(None, 1_000).unwrap().into_iter().collect();
    let escrow = balances.keys().filter_map(|s| store.escrow(s).unwrap().map(|c| (s.clone(), c))).collect();
    (balances, escrow)
}

#[tokio::test]
async fn balances_of_many_skus_are_coalesced_into_one_change_per_period() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let mut docs = docs(dir.path(), &store);
    let tuning = SyncTuning::default();
    assert_eq!(tuning.stock_coalesce_ms, 250);
    let before = stock_heads(&mut docs);

    // Several movements for every SKU, in two feed batches, within one period.
    for (i, s) in SKUS.iter().enumerate() {
        movement(&store, s, Movement::Receipt { qty: 10 + i as u32, note: None }).await;
    }
    let changed = ingest(&mut docs, &store, &tuning).unwrap().unwrap();
    assert!(!changed.contains(&stock_name()), "balances wait for the end of the period");
    for s in &SKUS[..3] {
        movement(&store, s, Movement::Adjustment { delta: -2, reason: "damaged".into() }).await;
    }
    ingest(&mut docs, &store, &tuning).unwrap().unwrap();
    assert_eq!(stock_heads(&mut docs), before, "no stock change before the period ends");
    assert_eq!(docs.stock_pending.len(), SKUS.len());

    // The period ends: one change carries every SKU's balance and escrow counter.
    docs.stock_written_ms = now_ms() - tuning.stock_coalesce_ms;
    let changed = ingest(&mut docs, &store, &tuning).unwrap().unwrap();
    assert_eq!(changed, vec![stock_name()]);
    let doc = docs.sync.db.get_mut(&stock_name()).unwrap();
    assert_eq!(doc.get_changes(&before).len(), 1, "one Automerge change for all SKUs of the period");
    let (ledger_balances, ledger_escrow) = ledger_view(&store);
    assert_eq!(ledger_balances.len(), SKUS.len());
    assert_eq!(ledger_escrow.len(), SKUS.len(), "every receipt created rights at the site");
    assert_eq!(doc_view(&mut docs), (ledger_balances, ledger_escrow));
    assert!(docs.stock_pending.is_empty());

    // Nothing pending: the next period writes nothing.
    let after = stock_heads(&mut docs);
    docs.stock_written_ms = now_ms() - tuning.stock_coalesce_ms;
    assert_eq!(ingest(&mut docs, &store, &tuning).unwrap(), None);
    assert_eq!(stock_heads(&mut docs), after);
}

#[tokio::test]
async fn a_full_pending_set_is_written_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let mut docs = docs(dir.path(), &store);
    let tuning = SyncTuning { stock_pending_max: 2, ..SyncTuning::default() };
    let before = stock_heads(&mut docs);
    for s in SKUS {
        movement(&store, s, Movement::Receipt { qty: 3, note: None }).await;
    }
    let changed = ingest(&mut docs, &store, &tuning).unwrap().unwrap();
    assert_eq!(changed, vec![stock_name()], "beyond stock_pending_max the period does not wait");
    assert!(docs.stock_pending.is_empty());
    assert_eq!(docs.sync.db.get_mut(&stock_name()).unwrap().get_changes(&before).len(), 1);
    assert_eq!(doc_view(&mut docs), ledger_view(&store));
}

/// The site's acknowledgement of what the hub spent on `sku`, as the stock document carries it.
fn acked_in_doc(docs: &mut NodeDocs, sku: &str) -> u64 {
    doc_view(docs).1.get(&Sku::parse(sku).unwrap()).map_or(0, |c| c.acked_spent(Party::Hub))
}

/// The hub spends `n` units of its rights to `sku` and the site merges its view (acknowledging it), as when
/// the hub's escrow document arrives; then the follower runs once, an eighth of the coalescing period after
/// the last stock write (the least gap between two writes an acknowledgement presses for).
async fn hub_spends(store: &Store, docs: &mut NodeDocs, hub: &mut EscrowCounter, n: u64) -> Option<Vec<DocId>> {
    docs.stock_written_ms = now_ms() - SyncTuning::default().stock_coalesce_ms / 8;
    hub.merge(&store.escrow(hub.sku()).unwrap().unwrap()).unwrap();
    hub.consume(Party::Hub, n, now_ms()).unwrap();
    let cmd = crate::store::cmd::EscrowSync { hub: vec![hub.clone()], policy: EscrowPolicy::default() };
    store.execute(cmd).await.unwrap();
    ingest(docs, store, &SyncTuning::default()).unwrap()
}

#[tokio::test]
async fn an_acknowledgement_of_a_quarter_of_the_hubs_budget_is_written_without_waiting_for_the_period() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let mut docs = docs(dir.path(), &store);
    movement(&store, "SKU-A", Movement::Receipt { qty: 1_000, note: None }).await;
    // The site grants the hub a lease (budget 50 unacknowledged units) and rights, by its policy.
    let policy = EscrowPolicy::default();
    assert_eq!(policy.unacked_max, 50);
    let tick =
        crate::store::cmd::EscrowTick { hub_reachable: true, policy, skus_max: 10, changes_max: 10, after: None };
    store.execute(tick).await.unwrap();
    drain(&mut docs, &store);
    let mut hub = store.escrow(&Sku::parse("SKU-A").unwrap()).unwrap().unwrap();
    assert!(hub.spendable(Party::Hub, now_ms()) >= 50, "{hub:?}");
    let before = stock_heads(&mut docs);

    // 10 units acknowledged: under a quarter of 50, so they wait for the period like any balance.
    let changed = hub_spends(&store, &mut docs, &mut hub, 10).await.unwrap();
    assert!(!changed.contains(&stock_name()));
    assert_eq!(stock_heads(&mut docs), before);
    assert_eq!(store.escrow(hub.sku()).unwrap().unwrap().acked_spent(Party::Hub), 10, "the ledger acknowledged");

    // 15 acknowledged, 15 more than the document says: pressing, but not within an eighth of the period of
    // the last write; then written, in one change, though the period has not ended.
    docs.stock_written_ms = now_ms();
    hub.merge(&store.escrow(hub.sku()).unwrap().unwrap()).unwrap();
    hub.consume(Party::Hub, 5, now_ms()).unwrap();
    let cmd = crate::store::cmd::EscrowSync { hub: vec![hub.clone()], policy: EscrowPolicy::default() };
    store.execute(cmd).await.unwrap();
    let changed = ingest(&mut docs, &store, &SyncTuning::default()).unwrap().unwrap();
    assert!(!changed.contains(&stock_name()), "pressing, but too soon after the last write");
    assert_eq!(stock_heads(&mut docs), before);
    let changed = hub_spends(&store, &mut docs, &mut hub, 0).await.unwrap();
    assert_eq!(changed, vec![stock_name()]);
    assert_eq!(docs.sync.db.get_mut(&stock_name()).unwrap().get_changes(&before).len(), 1);
    assert_eq!(acked_in_doc(&mut docs, "SKU-A"), 15);
    assert_eq!(doc_view(&mut docs), ledger_view(&store));
    assert!(docs.stock_pending.is_empty());

    // Counted from what the document says, not from the start: 20 is only 5 past the 15 written.
    let after = stock_heads(&mut docs);
    let changed = hub_spends(&store, &mut docs, &mut hub, 5).await.unwrap();
    assert!(!changed.contains(&stock_name()));
    assert_eq!(stock_heads(&mut docs), after);
    assert_eq!(acked_in_doc(&mut docs, "SKU-A"), 15);
    // 12 more (a quarter of 50 is 12): 32 acknowledged, 17 past the document, written.
    let changed = hub_spends(&store, &mut docs, &mut hub, 12).await.unwrap();
    assert_eq!(changed, vec![stock_name()]);
    assert_eq!(acked_in_doc(&mut docs, "SKU-A"), 32);
}

/// Movements whose feed entries the follower consumed (cursor saved) while their balances waited for the
/// period, then a crash: the reopened documents lack them and the feed has nothing more to say.
async fn crash_with_pending_balances(dir: &Path) -> (Store, NodeDocs) {
    let store = store(dir).await;
    let mut docs = docs(dir, &store);
    for s in SKUS {
        movement(&store, s, Movement::Receipt { qty: 5, note: None }).await;
    }
    movement(&store, "SKU-B", Movement::Adjustment { delta: 4, reason: "found".into() }).await;
    ingest(&mut docs, &store, &SyncTuning::default()).unwrap().unwrap();
    assert_eq!(docs.stock_pending.len(), SKUS.len());
    drop(docs); // The crash: what was pending in memory is gone, the cursor is on disk.

    let mut docs = open_docs(&dir.join(SYNC_DB_FILE), 8);
    assert!(doc_view(&mut docs).0.is_empty(), "the stock document lacks the balances");
    assert_eq!(ingest(&mut docs, &store, &SyncTuning::default()).unwrap(), None, "the feed is past them");
    (store, docs)
}

#[tokio::test]
async fn repair_after_a_crash_rewrites_every_balance_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut docs) = crash_with_pending_balances(dir.path()).await;
    let before = stock_heads(&mut docs);
    assert_eq!(repair_stock(&mut docs, &store).unwrap(), vec![stock_name()]);
    assert_eq!(docs.sync.db.get_mut(&stock_name()).unwrap().get_changes(&before).len(), 1);
    assert_eq!(doc_view(&mut docs), ledger_view(&store));
    let repaired = stock_heads(&mut docs);

    // A second repair finds nothing to do and adds no change.
    assert_eq!(repair_stock(&mut docs, &store).unwrap(), Vec::<DocId>::new());
    assert_eq!(stock_heads(&mut docs), repaired);

    // The repair is durable.
    drop(docs);
    let mut docs = open_docs(&dir.path().join(SYNC_DB_FILE), 9);
    assert_eq!(stock_heads(&mut docs), repaired);
    assert_eq!(doc_view(&mut docs), ledger_view(&store));
}

/// The feed follower repairs at start: after the crash above, the stock document catches up with the ledger
/// without any new movement, and is handed to the link as changed.
#[tokio::test]
async fn the_feed_follower_repairs_the_stock_document_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (store, docs) = crash_with_pending_balances(dir.path()).await;
    let shared = Arc::new(Shared::new(docs, SyncTuning { feed_poll_ms: 20, ..SyncTuning::default() }));
    let task = tokio::spawn(follow_feed(shared.clone(), store.clone()));
    let want = ledger_view(&store);
    let mut caught_up = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if doc_view(&mut lock(&shared.docs)) == want && lock(&shared.dirty).contains(&stock_name()) {
            caught_up = true;
            break;
        }
    }
    task.abort();
    assert!(caught_up, "the stock document never caught up with the ledger: {:?}", doc_view(&mut lock(&shared.docs)));
}

/// Receipts in the stock document leave it only once the hub acknowledged them in its inbound document and
/// their grace is over: nothing goes while the site is cut off (no acknowledgement), the feed pass prunes
/// after an acknowledgement arrives, and one kept for its grace goes when it is due.
#[tokio::test]
async fn acknowledged_receipts_leave_the_stock_document_after_their_grace_and_only_they() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let mut docs = docs(dir.path(), &store);
    let tuning = SyncTuning { receipt_prune_grace_ms: 10_000, ..SyncTuning::default() };
    let now = now_ms();
    let node = site();
    for (id, at) in [("r-old", now - 60_000), ("r-new", now), ("r-unacked", now - 60_000)] {
        let r = schema::SiteReceipt { id: id.into(), po: "PO-1".into(), asn: None, lines: vec![(1, 1)], at_ms: at };
        schema::write_receipt(docs.sync.db.get_or_create(&stock_name()).unwrap(), &node, &r, at).unwrap();
    }
    let receipts = |docs: &mut NodeDocs| -> Vec<String> {
        let doc = docs.sync.db.get_mut(&stock_name()).unwrap();
        schema::read_receipts(doc, 100).unwrap().0.into_iter().map(|r| r.id).collect()
    };

    // Cut off: no acknowledgement, however often it looks, nothing goes.
    docs.prune_soon();
    assert_eq!(ingest(&mut docs, &store, &tuning).unwrap(), None);
    assert_eq!(receipts(&mut docs).len(), 3);

    // The hub's inbound document arrives with two acknowledgements: the old one goes, the new one waits.
    let inbound = schema::inbound_doc(&node).unwrap();
    let acked: BTreeSet<String> = ["r-old", "r-new"].into_iter().map(str::to_owned).collect();
    let i = docs.sync.db.get_or_create(&inbound).unwrap();
    schema::write_receipt_acks(i, &node, schema::keys::RECEIPTS_APPLIED, &acked, now).unwrap();
    docs.prune_soon();
    let changed = ingest(&mut docs, &store, &tuning).unwrap().unwrap();
    assert_eq!(changed, vec![stock_name()]);
    assert_eq!(receipts(&mut docs), ["r-new", "r-unacked"]);
    let due = docs.prune_at_ms.unwrap();
    assert!(due >= now + 10_000 && due <= now_ms() + 10_000, "due at the end of r-new's grace: {due}");

    // Before it is due nothing happens; once due, r-new goes; the unacknowledged one stays for good.
    assert_eq!(ingest(&mut docs, &store, &tuning).unwrap(), None);
    docs.prune_at_ms = Some(0);
    let later = SyncTuning { receipt_prune_grace_ms: 0, ..tuning };
    assert_eq!(ingest(&mut docs, &store, &later).unwrap().unwrap(), vec![stock_name()]);
    assert_eq!(receipts(&mut docs), ["r-unacked"]);
    assert_eq!(docs.prune_at_ms, None, "nothing acknowledged is waiting");
}

/// A burst of assignments from the hub is taken in shared store transactions (the store's writer takes
/// concurrent commands in one), not one transaction and one fsync each: the inbound task submits them together.
#[tokio::test]
async fn a_burst_of_assignments_is_taken_in_shared_transactions() {
    const ORDERS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let store =
        Store::open(&dir.path().join("node.redb"), site(), crate::store::Limits::default(), metrics.clone()).unwrap();
    for s in SKUS {
        let item = crate::store::CatalogItem { sku: Sku::parse(s).unwrap(), name: s.into(), bin: "A-1".into() };
        store.execute(crate::store::cmd::PutCatalog(item)).await.unwrap();
        movement(&store, s, Movement::Receipt { qty: 100, note: None }).await;
    }
    let mut docs = docs(dir.path(), &store);
    let draft: oms_protocol::domain::OrderDraft = serde_json::from_value(serde_json::json!({
        "external_ref": "x", "channel": "web",
        "lines": [{"sku": "SKU-A", "qty": 1, "unit_price_minor": 100, "currency": "EUR"}],
        "ship_to": {"name": "C", "line1": "1", "city": "B", "postcode": "1", "country": "DE", "lat": 52.5, "lon": 13.4}
    }))
    .unwrap();
    let mut ids = Vec::new();
    for i in 1..=ORDERS {
        ids.push(hub_assignment(&mut docs.sync.db, i as u64, &draft));
    }
    let batches = |m: &crate::metrics::Metrics| -> u64 {
        let text = m.render();
        let line = text.lines().find(|l| l.starts_with("oms_node_commit_batch_size_count")).unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let before = batches(&metrics);
    let shared = Arc::new(Shared::new(docs, SyncTuning::default()));
    lock(&shared.inbound).extend(ids.iter().map(|(_, d)| d.clone()));
    let link: crate::config::HubLink =
        serde_json::from_value(serde_json::json!({"addr": "127.0.0.1:9", "certs_dir": "/nonexistent"})).unwrap();
    let task = tokio::spawn(inbound::run(shared.clone(), store.clone(), link));
    let mut accepted = 0;
    for _ in 0..200 {
        accepted = ids.iter().filter(|(id, _)| store.order(id).unwrap().is_some()).count();
        if accepted == ORDERS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
    assert_eq!(accepted, ORDERS, "every assignment is taken");
    for (id, _) in &ids {
        // The hub holds no rights here, so the site turns each down: decided, once, like an accepted one.
        assert_eq!(store.order(id).unwrap().unwrap().status, oms_protocol::domain::FulfillmentState::Rejected);
    }
    let took = batches(&metrics) - before;
    assert!(took >= 1 && took <= (ORDERS / 2) as u64, "{ORDERS} assignments took {took} store transactions");
}

/// Creates a one-unit order of `SKU-A` at the store (with a unit received for it) and returns its document.
async fn order_at(store: &Store, key: &str) -> DocId {
    movement(store, "SKU-A", Movement::Receipt { qty: 1, note: None }).await;
    let sku = oms_protocol::domain::Sku::parse("SKU-A").unwrap();
    let cmd = crate::store::cmd::CreateOrder { key: key.into(), draft: oms_protocol::fixtures::draft("w", &sku, 1) };
    let id: OrderId = store.execute(cmd).await.unwrap().record.id;
    schema::order_doc(&id).unwrap()
}

/// Waits (bounded) until the follower hands the link `doc`; then how many documents are left unflushed.
async fn handed_over(shared: &Shared, doc: &DocId) -> usize {
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if lock(&shared.dirty).contains(doc) {
            return lock(&shared.docs).sync.db.dirty_docs();
        }
    }
    panic!("the follower never handed {doc} to the link");
}

/// With no session up the feed follower flushes each pass itself before it hands the link what changed; with
/// one up it leaves its documents (and the cursor) for the session's flush, which the session makes before it
/// sends anything: one `sync.redb` commit a round instead of two, and no fsync under the documents' lock.
#[tokio::test]
async fn while_a_session_is_up_the_follower_leaves_its_flush_to_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let docs = docs(dir.path(), &store);
    let shared = Arc::new(Shared::new(docs, SyncTuning { feed_poll_ms: 20, ..SyncTuning::default() }));
    let task = tokio::spawn(follow_feed(shared.clone(), store.clone()));

    let first = order_at(&store, "k1").await;
    assert_eq!(handed_over(&shared, &first).await, 0, "unlinked: the follower flushed what it handed over");

    shared.link.up(now_ms());
    let second = order_at(&store, "k2").await;
    let unflushed = handed_over(&shared, &second).await;
    assert!(unflushed >= 1, "linked: the order's document waits for the session's flush");
    let cursor = lock(&shared.docs).sync.db.meta(FEED_CURSOR).unwrap();
    // The session's flush writes it all, cursor included.
    persist(&shared).await.unwrap();
    assert_eq!(lock(&shared.docs).sync.db.dirty_docs(), 0);
    task.abort();
    let _ = task.await;
    drop(shared);
    let mut reopened = open_docs(&dir.path().join(SYNC_DB_FILE), 7);
    assert!(cursor.is_some());
    assert_eq!(reopened.sync.db.meta(FEED_CURSOR).unwrap(), cursor);
    assert!(reopened.sync.db.get(&second).is_some() && reopened.sync.db.get(&first).is_some());
}
