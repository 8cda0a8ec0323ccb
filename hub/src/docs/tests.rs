//! Unit tests of the hub's documents: parties and labels, the sites' views, touched-key tracking, quotas,
//! quarantine, and the by-hand measurements of `stock.low` and the escrow merge.

use super::*;
use crate::demand::test_support::{TODAY, hub_docs};
use oms_protocol::domain::FulfillmentState;
use oms_protocol::sync::DocStore;
use oms_protocol::sync::SyncSession;
use oms_protocol::sync::automerge::{ROOT, transaction::Transactable};
use oms_protocol::sync::{manifest_buckets_of, manifest_digest_of};
use oms_protocol::wire::Frame;

/// The hub's documents in `hub.redb` at `path` (the test key), holding at most `docs_max` documents.
fn open_docs(path: &std::path::Path, docs_max: usize) -> HubDocs {
    HubDocs::new(DocDb::open(path, vec![9; 16], docs_max).unwrap()).unwrap()
}

#[test]
fn a_cached_digest_is_recomputed_after_any_change() {
    let dir = tempfile::tempdir().unwrap();
    let orders: &[crate::demand::test_support::TestOrder] = &[
        ("wh1", 1, TODAY - 2, 1, FulfillmentState::Accepted, &[("A", 2)]),
        ("wh1", 2, TODAY - 1, 1, FulfillmentState::Accepted, &[("A", 3)]),
        ("wh2", 1, TODAY - 1, 1, FulfillmentState::Accepted, &[("A", 1)]),
    ];
    let mut docs = hub_docs(dir.path(), orders, &[]);
    docs.flush().unwrap();
    let wh1 = PeerId::new("oms://acme/node/wh1").unwrap();
    let wh2 = PeerId::new("oms://acme/node/wh2").unwrap();
    let first = docs.sync.manifest_digest(&wh1);
    assert_eq!(first, manifest_digest_of(&mut docs.sync, &wh1));
    // Bucket digests likewise, for the count the sender chooses and for one a peer asks for.
    let buckets = |docs: &mut HubDocs, n: Option<u32>| {
        let cached = docs.sync.manifest_buckets(&wh1, n);
        assert_eq!(cached, manifest_buckets_of(&mut docs.sync, &wh1, n), "a stale bucket digest");
        cached
    };
    let first_buckets = buckets(&mut docs, Some(4));
    assert_eq!(first_buckets.len(), 4);
    assert_eq!(first_buckets.iter().map(|b| b.docs()).sum::<u64>(), 2);
    assert_eq!(buckets(&mut docs, None).len(), 1, "two documents: one bucket");
    assert_eq!(first.docs(), 2, "wh1's two orders");
    assert_eq!(docs.sync.manifest_digest(&wh2).docs(), 1);
    // Unchanged: the cached digest, computed at the current generation.
    assert_eq!(docs.sync.manifest_digest(&wh1), first);
    assert_eq!(docs.sync.digest_cached_at(&wh1), Some(docs.sync.db.generation()));
    // A change to one of wh1's documents, not yet flushed: a new digest, equal to one computed afresh.
    let doc = DocId::new("order/wh1-0000000002").unwrap();
    docs.sync.doc_mut(&doc).unwrap().put(ROOT, "k", 1).unwrap();
    let second = docs.sync.manifest_digest(&wh1);
    assert_ne!(second, first);
    assert_eq!(second, manifest_digest_of(&mut docs.sync, &wh1));
    assert_ne!(buckets(&mut docs, Some(4)), first_buckets);
    // Removing a document is a change too.
    docs.remove_doc(&doc);
    let third = docs.sync.manifest_digest(&wh1);
    assert_eq!(third.docs(), 1);
    assert_eq!(third, manifest_digest_of(&mut docs.sync, &wh1));
    assert_eq!(buckets(&mut docs, Some(4)).iter().map(|b| b.docs()).sum::<u64>(), 1);
}

/// Routing's view of the sites is kept between calls and follows every change a node makes to its stock
/// document (a new site, a moved one), without reading the documents of the others.
#[test]
fn the_sites_view_follows_stock_document_changes() {
    let dir = tempfile::tempdir().unwrap();
    let mut docs = open_docs(&dir.path().join("hub.redb"), 1_000);
    let info = |lat: f64| schema::SiteInfo {
        name: "s".into(),
        lat,
        lon: 13.0,
        priority: 0,
        capacity_per_day: 10,
        region: "de".into(),
    };
    let publish = |docs: &mut HubDocs, node: &NodeId, lat: f64| {
        let stock = schema::stock_doc(node).unwrap();
        let before = docs.heads(&stock);
        let d = match docs.sync.doc_mut(&stock) {
            Some(d) => d,
            None => docs.sync.create_doc(&stock).unwrap(),
        };
        schema::write_site_info(d, node, &info(lat), 1).unwrap();
        d.commit();
        assert!(docs.check_applied(node, &stock, &before, 64, TODAY));
    };
    let (a, b) = (NodeId::parse("wh-a").unwrap(), NodeId::parse("wh-b").unwrap());
    publish(&mut docs, &a, 50.0);
    let lats = |docs: &mut HubDocs| -> Vec<(String, f64)> {
        docs.sites(10).into_iter().map(|(n, i)| (n.to_string(), i.info.lat)).collect()
    };
    assert_eq!(lats(&mut docs), [("wh-a".to_owned(), 50.0)]);
    publish(&mut docs, &a, 51.0);
    publish(&mut docs, &b, 48.0);
    assert_eq!(lats(&mut docs), [("wh-a".to_owned(), 51.0), ("wh-b".to_owned(), 48.0)]);
    assert!(docs.sites_stale.is_empty(), "read again once");
    docs.remove_doc(&schema::stock_doc(&a).unwrap());
    assert_eq!(lats(&mut docs), [("wh-b".to_owned(), 48.0)]);
}

/// Writes `skus` (SKU, on hand) into `node`'s stock document as the node would, in one change the hub
/// then checks as it checks each applied frame.
fn write_skus(docs: &mut HubDocs, node: &NodeId, skus: &[(String, u64)]) {
    use oms_protocol::domain::{Balance, Sku};
    node_writes_stock(docs, node, |d| {
        for (sku, on_hand) in skus {
            let b = Balance { on_hand: *on_hand, reserved: 0, staged: 0 };
            schema::write_stock(d, node, &Sku::parse(sku).unwrap(), &b, 1).unwrap();
        }
    });
}

/// `node` changes its stock document by `write`, in one change the hub then checks as it checks each
/// applied frame.
fn node_writes_stock(docs: &mut HubDocs, node: &NodeId, write: impl FnOnce(&mut AutoCommit)) {
    let stock = schema::stock_doc(node).unwrap();
    let before = docs.heads(&stock);
    let d = match docs.sync.doc_mut(&stock) {
        Some(d) => d,
        None => docs.sync.create_doc(&stock).unwrap(),
    };
    write(d);
    d.commit();
    // As the session does for every applied message: stored at the next flush.
    docs.mark_dirty(&stock);
    assert!(docs.check_applied(node, &stock, &before, 64, TODAY));
}

/// What the `stock.low` watcher reads of `node`'s stock document now (as `orders::watch_once` does).
fn stock_read(docs: &mut HubDocs, node: &NodeId) -> crate::events::watch::StockRead {
    let stock = schema::stock_doc(node).unwrap();
    let touched = docs.take_stock_touched(&stock);
    let d = docs.get(&stock).unwrap();
    crate::events::watch::read_stock_change(&d, &stock, touched).unwrap()
}

fn skus_of(n: usize) -> Vec<(String, u64)> {
    (0..n).map(|i| (format!("SKU-{i:05}"), 10)).collect()
}

#[test]
fn a_stock_change_reads_only_the_skus_it_touched() {
    use crate::events::watch::{StockRead, report_stock_skus};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.redb");
    let mut docs = open_docs(&path, 1_000);
    let n = NodeId::parse("wh-a").unwrap();
    write_skus(&mut docs, &n, &skus_of(20_000));
    // The first read since the start is the whole document: what changed before is not known.
    match stock_read(&mut docs, &n) {
        StockRead::Whole(s) => assert_eq!(s.len(), 20_000),
        r => panic!("{r:?}"),
    }
    // One SKU of 20,000 changes: that SKU is what is read, and nothing else.
    write_skus(&mut docs, &n, &[("SKU-00007".into(), 1)]);
    let touched = |r: StockRead| -> Vec<(String, Option<u64>)> {
        match r {
            StockRead::Touched(s) => s.into_iter().map(|(k, b)| (k.to_string(), b.map(|b| b.on_hand))).collect(),
            r => panic!("{r:?}"),
        }
    };
    let read: Vec<(String, Option<u64>)> = touched(stock_read(&mut docs, &n));
    assert_eq!(read, [("SKU-00007".to_owned(), Some(1))]);
    assert_eq!(touched(stock_read(&mut docs, &n)), Vec::<(String, Option<u64>)>::new(), "nothing changed since");
    // Two changes before the watcher looks (each frame diffed on its own): both SKUs, once each.
    write_skus(&mut docs, &n, &[("SKU-00001".into(), 2)]);
    write_skus(&mut docs, &n, &[("SKU-00002".into(), 3), ("SKU-00001".into(), 4)]);
    let read = touched(stock_read(&mut docs, &n));
    assert_eq!(read, [("SKU-00001".to_owned(), Some(4)), ("SKU-00002".to_owned(), Some(3))]);
    // What the watcher reports from a touched read: the one SKU that fell, from its own row.
    let events = tempfile::tempdir().unwrap();
    let db = redb::Database::create(events.path().join("e.redb")).unwrap();
    crate::events::init(&db).unwrap();
    write_skus(&mut docs, &n, &[("SKU-00009".into(), 0)]);
    let StockRead::Touched(skus) = stock_read(&mut docs, &n) else { panic!("a touched read") };
    assert_eq!(report_stock_skus(&db, "wh-a", &skus, 2, 5).unwrap(), 1);
    assert_eq!(report_stock_skus(&db, "wh-a", &skus, 2, 6).unwrap(), 0, "reported once");
    // More SKUs touched than are listed: the next read is the whole document again.
    write_skus(
        &mut docs,
        &n,
        &skus_of(schema::STOCK_TOUCHED_MAX + 1).iter().map(|(s, _)| (s.clone(), 5)).collect::<Vec<_>>(),
    );
    assert!(matches!(stock_read(&mut docs, &n), StockRead::Whole(s) if s.len() == 20_000));
    // A restart knows nothing of what changed: whole again, then touched.
    docs.flush().unwrap();
    drop(docs);
    let mut docs = open_docs(&path, 1_000);
    assert!(matches!(stock_read(&mut docs, &n), StockRead::Whole(s) if s.len() == 20_000));
    write_skus(&mut docs, &n, &[("SKU-00003".into(), 1)]);
    assert_eq!(touched(stock_read(&mut docs, &n)), [("SKU-00003".to_owned(), Some(1))]);
}

/// Writes escrow counters (SKU, units created at the site) into `node`'s stock document as the node would,
/// in one change the hub checks.
fn write_counters(docs: &mut HubDocs, node: &NodeId, skus: &[(String, u64)]) {
    use oms_protocol::domain::Sku;
    use oms_protocol::escrow::{EscrowCounter, Party};
    node_writes_stock(docs, node, |d| {
        for (sku, units) in skus {
            let mut c = EscrowCounter::new(Sku::parse(sku).unwrap());
            c.add(Party::Site, *units).unwrap();
            schema::write_escrow(d, node, &c, 1).unwrap();
        }
    });
}

/// The counters the watcher's escrow merge reads of `node`'s stock document now (as `orders::watch_once`
/// does): `(whole read, [(SKU, units at the site)])`.
fn escrow_read(docs: &mut HubDocs, node: &NodeId) -> (bool, Vec<(String, u64)>) {
    use oms_protocol::escrow::Party;
    let stock = schema::stock_doc(node).unwrap();
    let touched = docs.take_escrow_touched(&stock);
    let d = docs.get(&stock).unwrap();
    let (read, bad) = match &touched {
        Some(skus) => schema::read_escrow_of(&d, skus.iter().map(String::as_str)).unwrap(),
        None => schema::read_escrow(&d, usize::MAX).unwrap(),
    };
    assert!(bad.is_empty(), "{bad:?}");
    (touched.is_none(), read.iter().map(|c| (c.sku().to_string(), c.local(Party::Site))).collect())
}

#[test]
fn a_stock_change_reads_only_the_escrow_counters_it_touched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.redb");
    let mut docs = open_docs(&path, 1_000);
    let n = NodeId::parse("wh-a").unwrap();
    write_counters(&mut docs, &n, &skus_of(12_000));
    // The first read since the start takes every counter: what changed before is not known.
    let (whole, read) = escrow_read(&mut docs, &n);
    assert!(whole);
    assert_eq!(read.len(), 12_000);
    // Two counters of 12,000 change, in two frames: those two are read, with their new values.
    write_counters(&mut docs, &n, &[("SKU-00007".into(), 30)]);
    write_counters(&mut docs, &n, &[("SKU-00011".into(), 40)]);
    assert_eq!(escrow_read(&mut docs, &n), (false, vec![("SKU-00007".into(), 30), ("SKU-00011".into(), 40)]));
    assert_eq!(escrow_read(&mut docs, &n), (false, vec![]), "nothing changed since");
    // A balance changes and no counter does: no counter is read (the balances' reader gets the SKU).
    write_skus(&mut docs, &n, &[("SKU-00003".into(), 1)]);
    assert_eq!(escrow_read(&mut docs, &n), (false, vec![]));
    // More counters touched than are listed: every counter is read again.
    write_counters(
        &mut docs,
        &n,
        &skus_of(schema::STOCK_TOUCHED_MAX + 1).iter().map(|(s, _)| (s.clone(), 5)).collect::<Vec<_>>(),
    );
    assert!(escrow_read(&mut docs, &n).0);
    // The watcher could not merge what it read: the next read is whole too.
    write_counters(&mut docs, &n, &[("SKU-00001".into(), 9)]);
    docs.reread_escrow(&schema::stock_doc(&n).unwrap());
    let (whole, read) = escrow_read(&mut docs, &n);
    assert!(whole && read.len() == 12_000 && read.contains(&("SKU-00001".into(), 9)));
    // A restart knows nothing of what changed: whole, then touched.
    docs.flush().unwrap();
    drop(docs);
    let mut docs = open_docs(&path, 1_000);
    assert!(escrow_read(&mut docs, &n).0);
    write_counters(&mut docs, &n, &[("SKU-00002".into(), 7)]);
    assert_eq!(escrow_read(&mut docs, &n), (false, vec![("SKU-00002".into(), 7)]));
}

/// The change-to-event cost of `stock.low` (BENCHMARKS.md): one SKU of a site of 1 and of 20,000 SKUs
/// changes; timed from the hub's check of the applied change to the event appended, against reading
/// the whole document as before. `cargo test -p oms-hub --lib stock_low_cost -- --ignored --nocapture`
#[test]
#[ignore = "a measurement; run by hand"]
fn stock_low_cost() {
    use crate::events::watch::{StockRead, report_stock, report_stock_skus};
    const ROUNDS: usize = 50;
    for size in [1usize, 20_000] {
        let dir = tempfile::tempdir().unwrap();
        let mut docs = open_docs(&dir.path().join("hub.redb"), 1_000);
        // Each way its own event log, so that each appends (and commits) the events it finds.
        let db = redb::Database::create(dir.path().join("e.redb")).unwrap();
        let db_whole = redb::Database::create(dir.path().join("e-whole.redb")).unwrap();
        crate::events::init(&db).unwrap();
        crate::events::init(&db_whole).unwrap();
        let n = NodeId::parse("wh-a").unwrap();
        write_skus(&mut docs, &n, &skus_of(size));
        let _ = stock_read(&mut docs, &n);
        let (mut check, mut touched, mut whole) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..ROUNDS {
            // Down to 0 (reported) and back to 10 (forgotten): an event every other round.
            let units = if i % 2 == 0 { 0 } else { 10 };
            let t = std::time::Instant::now();
            write_skus(&mut docs, &n, &[("SKU-00000".into(), units)]);
            check.push(t.elapsed());
            let t = std::time::Instant::now();
            let StockRead::Touched(skus) = stock_read(&mut docs, &n) else { panic!("a touched read") };
            report_stock_skus(&db, "wh-a", &skus, 2, i as u64).unwrap();
            touched.push(t.elapsed());
            // As before: the whole document read and the site's rows compared.
            let t = std::time::Instant::now();
            let stock = schema::stock_doc(&n).unwrap();
            let d = docs.get(&stock).unwrap();
            let all = schema::read_stock(&d, stock.as_str(), STOCK_SKUS_MAX).unwrap();
            report_stock(&db_whole, "wh-a", &all.skus, 2, i as u64).unwrap();
            whole.push(t.elapsed());
        }
        for v in [&mut check, &mut touched, &mut whole] {
            v.sort();
        }
        println!(
            "stock_low_cost skus={size} write_and_check_p50_us={} touched_read_report_p50_us={} \
                 whole_read_report_p50_us={}",
            check[ROUNDS / 2].as_micros(),
            touched[ROUNDS / 2].as_micros(),
            whole[ROUNDS / 2].as_micros()
        );
    }
}

/// The watcher's merge of a site's escrow view after one counter of 1 or 20,000 changes (BENCHMARKS.md):
/// the touched counters read and merged into the intake (`Intake::merge_site`, one commit), against every
/// counter read and merged, as before, into an intake of its own. Run by hand:
/// `cargo test --release -p oms-hub --lib escrow_merge_cost -- --ignored --nocapture`
#[test]
#[ignore = "a measurement; run by hand"]
fn escrow_merge_cost() {
    use crate::intake::{INTAKE_DB_FILE, Intake};
    const ROUNDS: usize = 50;
    for size in [1usize, 20_000] {
        let dir = tempfile::tempdir().unwrap();
        let mut docs = open_docs(&dir.path().join("hub.redb"), 1_000);
        let intake = Intake::open(&dir.path().join(INTAKE_DB_FILE), Default::default()).unwrap();
        let whole_dir = dir.path().join("whole");
        std::fs::create_dir_all(&whole_dir).unwrap();
        let intake_whole = Intake::open(&whole_dir.join(INTAKE_DB_FILE), Default::default()).unwrap();
        let n = NodeId::parse("wh-a").unwrap();
        let stock = schema::stock_doc(&n).unwrap();
        write_counters(&mut docs, &n, &skus_of(size));
        let (all, _) = {
            let d = docs.get(&stock).unwrap();
            schema::read_escrow(&d, usize::MAX).unwrap()
        };
        let _ = docs.take_escrow_touched(&stock);
        intake.merge_site(&n, all.clone(), TODAY).unwrap();
        intake_whole.merge_site(&n, all, TODAY).unwrap();
        let (mut touched, mut whole) = (Vec::new(), Vec::new());
        for i in 0..ROUNDS {
            write_counters(&mut docs, &n, &[("SKU-00000".into(), 20 + i as u64)]);
            let t = std::time::Instant::now();
            let keys = docs.take_escrow_touched(&stock).expect("tracked");
            let (read, _) = {
                let d = docs.get(&stock).unwrap();
                schema::read_escrow_of(&d, keys.iter().map(String::as_str)).unwrap()
            };
            assert_eq!(read.len(), 1);
            intake.merge_site(&n, read, TODAY).unwrap();
            touched.push(t.elapsed());
            let t = std::time::Instant::now();
            let (read, _) = {
                let d = docs.get(&stock).unwrap();
                schema::read_escrow(&d, usize::MAX).unwrap()
            };
            assert_eq!(read.len(), size);
            intake_whole.merge_site(&n, read, TODAY).unwrap();
            whole.push(t.elapsed());
        }
        touched.sort();
        whole.sort();
        println!(
            "escrow_merge_cost skus={size} touched_read_merge_p50_us={} whole_read_merge_p50_us={} \
                 touched_p99_us={} whole_p99_us={}",
            touched[ROUNDS / 2].as_micros(),
            whole[ROUNDS / 2].as_micros(),
            touched[ROUNDS * 99 / 100].as_micros(),
            whole[ROUNDS * 99 / 100].as_micros()
        );
    }
}

fn peer(node: &str) -> PeerId {
    PeerId::new(format!("oms://acme/node/{node}")).unwrap()
}

/// Issue 12, item 6: a node with a valid certificate named 65,536 invented sites (before the fix, keys
/// `origin` and `site` in its own stock document each took a party number, filling the table), so hub
/// orders for a node enrolled afterwards were labelled "no parties" and reached nobody. Now nothing a node
/// writes takes a number: the table holds the hub, the rogue and the new node, and the new node's hub
/// order reaches it.
#[test]
fn invented_sites_do_not_fill_the_party_table_and_a_new_node_gets_its_hub_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut docs = open_docs(&dir.path().join("hub.redb"), 1_000_000);
    let rogue = NodeId::parse("wh-rogue").unwrap();
    assert!(docs.enroll(&rogue));
    let stock = schema::stock_doc(&rogue).unwrap();
    let started = std::time::Instant::now();
    // Each change names two new sites. (The hub's copy starts afresh each time, as if the rogue's stock
    // document were created anew, so that the test's cost does not grow with one document's history.)
    for i in 0..PARTIES_MAX / 2 {
        let d = docs.sync.create_doc(&stock).unwrap();
        d.put(ROOT, schema::keys::OWNER, rogue.as_str()).unwrap();
        d.put(ROOT, schema::keys::ORIGIN, format!("x{i}-a")).unwrap();
        d.put(ROOT, schema::keys::SITE, format!("x{i}-b")).unwrap();
        d.commit();
        assert!(docs.check_applied(&rogue, &stock, &[], 64, TODAY), "the stock document is the rogue's");
        docs.remove_doc(&stock);
    }
    eprintln!("{} changes naming invented sites in {:?}", PARTIES_MAX / 2, started.elapsed());
    // An order of its own naming another site is refused outright (as before).
    let own = DocId::new("order/wh-rogue-0000000001").unwrap();
    let record = oms_protocol::fixtures::accepted(
        oms_protocol::domain::OrderId::parse("wh-rogue-0000000001").unwrap(),
        &NodeId::parse("wh-invented").unwrap(),
        &oms_protocol::domain::Sku::parse("SKU-0").unwrap(),
        1,
    );
    let d = docs.sync.create_doc(&own).unwrap();
    schema::write_order(d, &rogue, &record, 1).unwrap();
    d.commit();
    assert!(!docs.check_applied(&rogue, &own, &[], 64, TODAY));
    docs.flush().unwrap();
    let mut parties = docs.sync.access.party_names.clone();
    parties.sort();
    assert_eq!(parties, ["hub", "wh-rogue"], "no invented party");
    assert!(docs.order_counts().is_empty(), "{:?}", docs.order_counts());

    // A real node enrolls (connects) afterwards, and the hub assigns it an order.
    let new = NodeId::parse("wh-new").unwrap();
    assert!(docs.enroll(&new));
    let id = oms_protocol::domain::OrderId::new(&crate::intake::hub_node(), 1);
    let name = schema::order_doc(&id).unwrap();
    let draft = oms_protocol::fixtures::draft("web-1", &oms_protocol::domain::Sku::parse("SKU-0").unwrap(), 1);
    let told = docs.write_local(&name, |d| schema::create_hub_order(d, &id, &id, &new, &draft, 1)).unwrap();
    assert_eq!(told, vec!["wh-new".to_owned()]);
    assert!(docs.sync.entitled(&peer("wh-new"), &name), "the new node may have its order");
    assert!(docs.sync.docs_for(&peer("wh-new")).contains(&name), "and is sent it");
    assert!(!docs.sync.entitled(&peer("wh-rogue"), &name));
    // The same after a restart, from what is on disk.
    docs.flush().unwrap();
    drop(docs);
    let docs = open_docs(&dir.path().join("hub.redb"), 1_000_000);
    assert!(docs.sync.entitled(&peer("wh-new"), &name));
    assert_eq!(docs.sync.access.party_names.len(), 3);
}

/// A v2 sync message carrying `changes`.
fn message_with(changes: Vec<u8>) -> Vec<u8> {
    use oms_protocol::sync::automerge::sync::{ChunkList, MessageVersion, State, SyncDoc};
    let mut state = State::new();
    let mut msg = AutoCommit::new().sync().generate_sync_message(&mut state).unwrap();
    msg.changes = ChunkList::from(changes);
    msg.version = MessageVersion::V2;
    msg.encode()
}

/// Sends node `node`'s order `seq` (one full save) through a hub session as a sync message, with the
/// ownership check the server runs; returns the refusals the session answered with.
fn send_order(docs: &mut HubDocs, s: &mut SyncSession, node: &NodeId, seq: u64) -> Vec<Frame> {
    let id = oms_protocol::domain::OrderId::new(node, seq);
    let name = schema::order_doc(&id).unwrap();
    let record = oms_protocol::fixtures::accepted(id, node, &oms_protocol::domain::Sku::parse("A").unwrap(), 1);
    let mut d = AutoCommit::new();
    schema::write_order(&mut d, node, &record, 1).unwrap();
    let msg = message_with(d.save());
    let (before, len) = (docs.heads(&name), msg.len());
    s.handle_frame(&mut docs.sync, Frame::Sync { doc: name.clone(), msg });
    assert!(docs.check_applied(node, &name, &before, len, TODAY));
    std::iter::from_fn(|| s.poll_transmit()).filter(|f| matches!(f, Frame::Refused { .. })).collect()
}

fn session(docs: &mut HubDocs, node: &str) -> SyncSession {
    let hub = PeerId::new("oms://acme/hub").unwrap();
    let cfg = oms_protocol::sync::SessionConfig::default();
    let mut s = SyncSession::new_server(cfg.clone(), hub.clone(), peer(node), vec![1; 16], 0);
    let hello = SyncSession::new_client(cfg, peer(node), hub, vec![2; 16], 0).poll_transmit().unwrap();
    s.handle_frame(&mut docs.sync, hello);
    while s.poll_transmit().is_some() {}
    s
}

/// Issue 12, item 6: a node past its quota of documents, then of stored bytes, gets `QuotaExceeded` for
/// the change and nothing is stored; another node keeps syncing; the usage is counted from disk after a
/// restart.
#[test]
fn a_node_past_its_quota_is_refused_and_another_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.redb");
    let mut docs = open_docs(&path, 1_000);
    docs.set_quota(NodeQuota { docs_max: 2, stored_bytes_max: 1 << 20 });
    let (a, b) = (NodeId::parse("wh-a").unwrap(), NodeId::parse("wh-b").unwrap());
    assert!(docs.enroll(&a) && docs.enroll(&b));
    let (mut sa, mut sb) = (session(&mut docs, "wh-a"), session(&mut docs, "wh-b"));
    for seq in 1..=2 {
        assert_eq!(send_order(&mut docs, &mut sa, &a, seq), vec![], "order {seq} within the quota");
    }
    let third = schema::order_doc(&oms_protocol::domain::OrderId::new(&a, 3)).unwrap();
    assert_eq!(
        send_order(&mut docs, &mut sa, &a, 3),
        vec![Frame::Refused { doc: third.clone(), code: ErrorCode::QuotaExceeded }]
    );
    assert!(!docs.db().contains(&third), "the refused document was not created");
    assert!(!sa.is_closed(), "the node's session goes on");
    let limited: Vec<_> = std::iter::from_fn(|| sa.poll_event())
        .filter(|e| matches!(e, oms_protocol::sync::Event::Limited { code: ErrorCode::QuotaExceeded, .. }))
        .collect();
    assert_eq!(limited.len(), 1);
    let used = docs.usage("wh-a");
    assert_eq!(used.documents, 2);
    assert!(used.stored_bytes > 0);
    // Another node is held to its own quota, not wh-a's.
    for seq in 1..=2 {
        assert_eq!(send_order(&mut docs, &mut sb, &b, seq), vec![]);
    }
    // Stored bytes: a quota just above what wh-b stores refuses its next change.
    docs.flush().unwrap();
    drop((sa, sb));
    drop(docs);
    let mut docs = open_docs(&path, 1_000);
    let after = docs.usage("wh-a");
    assert_eq!(after.documents, 2, "counted again from disk");
    assert!(after.stored_bytes > 0 && after.stored_bytes <= used.stored_bytes, "{after:?} vs {used:?}");
    let stored = docs.usage("wh-b").stored_bytes;
    docs.set_quota(NodeQuota { docs_max: 100, stored_bytes_max: stored + 10 });
    let mut sb = session(&mut docs, "wh-b");
    let refused = send_order(&mut docs, &mut sb, &b, 3);
    assert!(matches!(refused.as_slice(), [Frame::Refused { code: ErrorCode::QuotaExceeded, .. }]), "{refused:?}");
    // wh-a, below its own byte quota, still syncs.
    let mut sa = session(&mut docs, "wh-a");
    let used_a = docs.usage("wh-a").stored_bytes;
    docs.set_quota(NodeQuota { docs_max: 100, stored_bytes_max: stored.max(used_a) + 100_000 });
    assert_eq!(send_order(&mut docs, &mut sa, &a, 3), vec![]);
}

/// A node's stored bytes follow what the hub stores: recounted from the totals `hub.redb` keeps (with the
/// messages counted since the last flush was prepared), as a restart counts them, not only summed from the
/// sizes of the messages its changes came in, which nothing ever took off.
#[test]
fn a_nodes_stored_bytes_are_recounted_from_what_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.redb");
    let mut docs = open_docs(&path, 1_000);
    let a = NodeId::parse("wh-a").unwrap();
    assert!(docs.enroll(&a));
    let n = docs.number("wh-a").unwrap();
    let mut sa = session(&mut docs, "wh-a");
    for seq in 1..=4 {
        assert_eq!(send_order(&mut docs, &mut sa, &a, seq), vec![]);
    }
    let summed = docs.usage("wh-a").stored_bytes;
    docs.flush().unwrap();
    let stored = |docs: &HubDocs| {
        let totals = docs.db().stored_totals(TOTALS_READ_MAX).unwrap();
        docs.sync.access.count(&totals).0.get(&n).map_or(0, |u| u.stored_bytes)
    };
    let on_disk = stored(&docs);
    assert!(on_disk > 0 && on_disk != summed, "the messages' sizes are not what is stored: {on_disk} {summed}");
    let t0 = oms_service::now_ms();
    docs.recount_stored_bytes_if_due(t0);
    assert_eq!(docs.usage("wh-a").stored_bytes, summed, "not due yet");
    docs.recount_stored_bytes_if_due(t0 + STORED_RECOUNT_MS);
    assert_eq!(docs.usage("wh-a").stored_bytes, on_disk, "recounted from what is stored");
    // An order arrives after the flush: its message counts on top of what is stored until a flush takes it.
    assert_eq!(send_order(&mut docs, &mut sa, &a, 5), vec![]);
    let grown = docs.usage("wh-a").stored_bytes;
    assert!(grown > on_disk);
    docs.recount_stored_bytes_if_due(t0 + 2 * STORED_RECOUNT_MS);
    assert_eq!(docs.usage("wh-a").stored_bytes, grown, "what came since the flush is kept");
    let batch = docs.prepare_flush().unwrap();
    batch.commit().unwrap();
    docs.recount_stored_bytes_if_due(t0 + 3 * STORED_RECOUNT_MS);
    let live = docs.usage("wh-a").stored_bytes;
    assert_eq!(live, stored(&docs), "after a prepared flush's commit, what is stored");
    // A restart counts the same from disk.
    drop(sa);
    drop(docs);
    let docs = open_docs(&path, 1_000);
    assert_eq!(docs.usage("wh-a").stored_bytes, live);
}

/// A recount whose read of the totals is cut short leaves the figures as they are: from part of the totals it
/// would lower them, and a node's byte quota would then let it store more than it may.
#[test]
fn a_recount_from_totals_cut_short_keeps_the_figures() {
    let dir = tempfile::tempdir().unwrap();
    let mut docs = open_docs(&dir.path().join("hub.redb"), 1_000);
    let a = NodeId::parse("wh-a").unwrap();
    assert!(docs.enroll(&a));
    let mut sa = session(&mut docs, "wh-a");
    for seq in 1..=4 {
        assert_eq!(send_order(&mut docs, &mut sa, &a, seq), vec![]);
    }
    let summed = docs.usage("wh-a").stored_bytes;
    docs.flush().unwrap();
    let rows = docs.db().stored_totals(TOTALS_READ_MAX).unwrap().len();
    assert!(rows > 0);
    let t0 = oms_service::now_ms();
    docs.recount_stored_bytes_reading(t0 + STORED_RECOUNT_MS, rows);
    assert_eq!(docs.usage("wh-a").stored_bytes, summed, "a read of {rows} rows at most may have missed some");
    docs.recount_stored_bytes_reading(t0 + 2 * STORED_RECOUNT_MS, rows + 1);
    let on_disk = docs.usage("wh-a").stored_bytes;
    assert!(on_disk > 0 && on_disk != summed, "recounted from all the totals: {on_disk} {summed}");
}

/// Pages `site`'s orders `limit` at a time, reading at most `rows_max` rows per page; returns the ids and
/// the number of pages.
fn all_pages(docs: &HubDocs, site: &str, limit: usize, rows_max: usize) -> (Vec<String>, usize) {
    let (mut ids, mut after, mut pages) = (Vec::new(), None::<String>, 0);
    for _ in 0..1_000 {
        let page = docs.order_page(Some(site), after.as_deref(), limit, rows_max);
        pages += 1;
        assert!(page.ids.len() <= limit, "{page:?}");
        ids.extend(page.ids.iter().map(|d| d.as_str().to_owned()));
        match page.next_after {
            Some(d) => after = Some(d.as_str().strip_prefix(schema::ORDER_PREFIX).unwrap().to_owned()),
            None => return (ids, pages),
        }
    }
    panic!("no last page after 1,000 pages");
}

#[test]
fn a_site_page_reads_a_bounded_number_of_rows_and_paging_finds_every_order_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut orders: Vec<crate::demand::test_support::TestOrder> = Vec::new();
    for seq in 1..=40 {
        orders.push(("wh1", seq, TODAY - 1, 1, FulfillmentState::Accepted, &[("A", 1)]));
    }
    for seq in 1..=3 {
        orders.push(("wh2", seq, TODAY - 1, 1, FulfillmentState::Accepted, &[("A", 1)]));
    }
    let mut docs = hub_docs(dir.path(), &orders, &[]);
    let wh2: Vec<String> = (1..=3).map(|n| format!("order/wh2-{n:010}")).collect();
    for flushed in [false, true] {
        // wh1's 40 orders sort first: the first page reads 5 of them, finds none of wh2's and says
        // where to go on.
        let first = docs.order_page(Some("wh2"), None, 2, 5);
        assert!(first.ids.is_empty(), "{first:?}");
        assert_eq!(first.next_after.as_ref().map(DocId::as_str), Some("order/wh1-0000000005"));
        let (ids, pages) = all_pages(&docs, "wh2", 2, 5);
        assert_eq!(ids, wh2, "flushed: {flushed}");
        assert!(pages >= 43 / 5, "{pages} pages for 43 rows at 5 a page");
        // Without a bound on rows, the first page holds the first `limit` orders of the site.
        let unbounded = docs.order_page(Some("wh2"), None, 2, usize::MAX);
        assert_eq!(unbounded.ids.iter().map(DocId::as_str).collect::<Vec<_>>(), wh2[..2].to_vec());
        assert_eq!(unbounded.next_after.as_ref().map(DocId::as_str), Some(wh2[1].as_str()));
        // Every order of wh1, in pages that end on `limit`.
        let (ids, _) = all_pages(&docs, "wh1", 7, 1_000);
        assert_eq!(ids.len(), 40);
        // A site the hub has not heard of: one empty, last page.
        let unknown = docs.order_page(Some("wh9"), None, 2, 5);
        assert!(unknown.ids.is_empty() && unknown.next_after.is_none());
        docs.flush().unwrap();
    }
}

/// What a start computes from the totals and the parties index (orders per site, each node's usage, the
/// documents each node is sent), and the same computed by walking every row as the hub did before.
type Figures = (BTreeMap<String, u64>, Vec<(String, Usage)>, Vec<Vec<DocId>>);

fn start_figures(docs: &HubDocs) -> Figures {
    let nodes = ["hub", "wh1", "wh2"];
    let usage = nodes.iter().map(|n| (n.to_string(), docs.usage(n))).collect();
    let sent = nodes[1..].iter().map(|n| docs.sync.docs_for(&peer(n))).collect();
    (docs.order_counts(), usage, sent)
}

fn walked_figures(docs: &HubDocs) -> (BTreeMap<String, u64>, Vec<(String, Usage)>) {
    let p = &docs.sync.access;
    let name = |n: u32| p.party_name(n).unwrap().to_owned();
    let mut counts = BTreeMap::new();
    let mut usage: BTreeMap<String, Usage> = BTreeMap::new();
    for prefix in [schema::ORDER_PREFIX, schema::STOCK_PREFIX] {
        docs.db().for_each_stored(prefix, |doc, label, bytes| {
            let creator = match DocKind::of(doc) {
                Some(DocKind::Order(id)) => schema::order_origin(&id).map(str::to_owned),
                Some(DocKind::Stock(n)) => Some(n.as_str().to_owned()),
                _ => None,
            };
            if let Some((_, s)) = split_label(label) {
                *counts.entry(name(s)).or_insert(0) += 1;
            }
            let writer = split_label(label).map(|(_, s)| name(s)).or(creator.clone());
            if let Some(c) = creator {
                usage.entry(c).or_default().documents += 1;
            }
            if let Some(w) = writer {
                usage.entry(w).or_default().stored_bytes += bytes;
            }
        });
    }
    let usage = ["hub", "wh1", "wh2"].iter().map(|n| (n.to_string(), usage.get(*n).copied().unwrap_or_default()));
    (counts, usage.collect())
}

/// Issue 17, item 4: a start reads no `doc_meta` row per order stored (the per-site counts, each node's
/// usage and the parties index are kept in `hub.redb` with the labels), and what it knows equals what a
/// walk of every row computes, before and after the restart.
#[test]
fn a_start_reads_no_row_per_stored_order_and_knows_what_a_walk_knows() {
    let mut reads = Vec::new();
    for n in [20u64, 400] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        let orders: Vec<crate::demand::test_support::TestOrder> = (1..=n)
            .map(|i| {
                let site = if i % 2 == 0 { "wh1" } else { "wh2" };
                (site, i, TODAY - 1 - i % 30, 1, FulfillmentState::Delivered, &[("A", 1)][..])
            })
            .collect();
        // The first start labels the orders (written unlabelled, as before labels) and indexes them.
        let mut docs = hub_docs(dir.path(), &orders, &[("wh1", "A", 5), ("wh2", "A", 7)]);
        let wh2 = NodeId::parse("wh2").unwrap();
        assert!(docs.enroll(&wh2));
        let draft = oms_protocol::fixtures::draft("web-1", &oms_protocol::domain::Sku::parse("A").unwrap(), 1);
        let mut hub_orders = Vec::new();
        for i in 1..=n / 10 {
            let id = oms_protocol::domain::OrderId::new(&crate::intake::hub_node(), i);
            let name = schema::order_doc(&id).unwrap();
            docs.write_local(&name, |d| schema::create_hub_order(d, &id, &id, &wh2, &draft, 1)).unwrap();
            hub_orders.push(name);
        }
        // One hub order removed (quarantined as it was created), one of wh1's too.
        docs.remove_doc(&hub_orders.pop().unwrap());
        docs.remove_doc(&DocId::new("order/wh1-0000000002").unwrap());
        let before = start_figures(&docs);
        docs.flush().unwrap();
        assert_eq!(walked_figures(&docs).0, before.0);
        assert!(before.2[1].iter().any(|d| hub_orders.contains(d)), "wh2 is sent the hub's orders");
        assert_eq!(before.2[1].iter().filter(|d| hub_orders.contains(d)).count(), hub_orders.len());
        assert!(!before.2[0].iter().any(|d| hub_orders.contains(d)), "wh1 is not");
        drop(docs);

        let docs = open_docs(&path, 100_000);
        reads.push(docs.db().rows_read());
        let after = start_figures(&docs);
        // (Usage is counted from disk at a start and only grows with accepted changes until the next.)
        assert_eq!((&after.0, &after.2), (&before.0, &before.2), "{n} orders: the start knows what the hub knew");
        assert_eq!(walked_figures(&docs), (after.0.clone(), after.1.clone()));
        assert_eq!(after.1[0].1.documents, hub_orders.len() as u64, "the hub created its orders");
        assert_eq!(after.0.get("wh2"), Some(&(n / 2 + hub_orders.len() as u64)));
        let (kept, walked) = docs.db().audit_totals().unwrap();
        assert_eq!(kept, walked);
    }
    assert_eq!(reads, [0, 0], "doc_meta rows read by a start, with 20 and 400 orders stored");
}

/// A file from before the parties index gets it at its first start (one walk), not at the next.
#[test]
fn the_parties_index_is_built_once_for_a_file_from_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.redb");
    let mut docs = hub_docs(dir.path(), &[("wh1", 1, TODAY - 1, 1, FulfillmentState::Delivered, &[("A", 1)])], &[]);
    let wh2 = NodeId::parse("wh2").unwrap();
    assert!(docs.enroll(&wh2));
    let draft = oms_protocol::fixtures::draft("web-1", &oms_protocol::domain::Sku::parse("A").unwrap(), 1);
    let id = oms_protocol::domain::OrderId::new(&crate::intake::hub_node(), 1);
    let name = schema::order_doc(&id).unwrap();
    docs.write_local(&name, |d| schema::create_hub_order(d, &id, &id, &wh2, &draft, 1)).unwrap();
    let n = u64::from(docs.number("wh2").unwrap());
    // The file as the code before the index left it: no entries, no mark.
    docs.sync.db.index_remove(n, &name);
    docs.flush().unwrap();
    drop(docs);
    {
        let db = redb::Database::open(&path).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(redb::TableDefinition::<&str, u64>::new("meta")).unwrap().remove(OTHERS_BUILT).unwrap();
        w.commit().unwrap();
    }
    let docs = open_docs(&path, 100);
    assert!(docs.db().rows_read() >= 2, "the first start walks the order rows");
    assert_eq!(docs.db().indexed(n), vec![name.clone()]);
    assert!(docs.sync.docs_for(&peer("wh2")).contains(&name));
    drop(docs);
    let docs = open_docs(&path, 100);
    assert_eq!(docs.db().rows_read(), 0, "the second does not");
    assert!(docs.sync.docs_for(&peer("wh2")).contains(&name));
}

/// A site's stock document continues in a new generation (its follower's copy of what it shows): the hub
/// drops the older one, reads the new one whole (then only what changes), counts no new document for it (so a
/// site at its quota still may), and refuses the older one from then on. The hub's own escrow view starts a
/// new generation in `write_local` once its history grew long, and the site is told of the new one.
#[test]
fn state_documents_continue_in_new_generations_at_the_hub() {
    use oms_protocol::escrow::{EscrowCounter, Party};
    use oms_protocol::generations;
    let dir = tempfile::tempdir().unwrap();
    let mut docs = open_docs(&dir.path().join("hub.redb"), 1_000);
    let n = NodeId::parse("wh-a").unwrap();
    assert!(docs.enroll(&n));
    let stock = schema::stock_doc(&n).unwrap();
    write_counters(&mut docs, &n, &skus_of(3));
    assert!(escrow_read(&mut docs, &n).0, "whole at first");
    write_counters(&mut docs, &n, &[("SKU-00001".into(), 4)]);
    assert_eq!(escrow_read(&mut docs, &n), (false, vec![("SKU-00001".into(), 4)]));
    let documents = docs.usage("wh-a").documents;

    // The site's next generation arrives, as a session creates it.
    let gen1 = generations::name(&stock, 1).unwrap();
    let mut copy = AutoCommit::new();
    generations::copy_visible(&docs.get(&stock).unwrap(), &mut copy).unwrap();
    copy.commit();
    let peer = PeerId::new("oms://t/node/wh-a").unwrap();
    assert_eq!(docs.sync.admit_changes(&peer, &gen1, true, 100), Ok(()));
    *docs.sync.create_doc(&gen1).unwrap() = copy;
    docs.mark_dirty(&gen1);
    assert!(docs.check_applied(&n, &gen1, &[], 64, TODAY));
    assert!(!docs.sync.db.contains(&stock), "the older generation is gone");
    assert_eq!(docs.sync.db.current(&stock), gen1);
    assert_eq!(docs.usage("wh-a").documents, documents, "a new generation is not one more document");
    // Read whole, with every counter, once; then only what changes.
    assert_eq!(docs.take_escrow_touched(&gen1), None);
    let d = docs.get(&stock).unwrap();
    let (all, _) = schema::read_escrow(&d, usize::MAX).unwrap();
    drop(d);
    assert_eq!(all.len(), 3);
    let before = docs.heads(&gen1);
    let d = docs.sync.doc_mut(&gen1).unwrap();
    let mut c = EscrowCounter::new(oms_protocol::domain::Sku::parse("SKU-00002").unwrap());
    c.add(Party::Site, 9).unwrap();
    schema::write_escrow(d, &n, &c, 1).unwrap();
    d.commit();
    docs.mark_dirty(&gen1);
    assert!(docs.check_applied(&n, &gen1, &before, 64, TODAY));
    assert_eq!(docs.take_escrow_touched(&gen1), Some(BTreeSet::from(["SKU-00002".to_owned()])));
    // The older generation is refused from now on.
    assert!(!docs.sync.entitled(&peer, &stock));
    assert!(docs.sync.create_doc(&stock).is_err());
    docs.flush().unwrap();

    // The hub's escrow view: overwritten until its history passes the bound, it continues in generation 1.
    let escrow = schema::escrow_doc(&n).unwrap();
    let (mut told, mut last) = (Vec::new(), 0);
    for round in 1..=6_000u64 {
        let mut c = EscrowCounter::new(oms_protocol::domain::Sku::parse("SKU-00001").unwrap());
        c.add(Party::Hub, round).unwrap();
        told = docs.write_local(&escrow, |d| schema::merge_escrow(d, &n, &c, round)).unwrap();
        last = round;
        if docs.sync.db.current(&escrow) != escrow {
            break;
        }
    }
    assert!(last > 100, "not before its history grew: round {last}");
    let next = generations::name(&escrow, 1).unwrap();
    assert_eq!(docs.sync.db.current(&escrow), next, "the escrow view started generation 1");
    assert_eq!(told, vec!["wh-a".to_owned()]);
    assert!(docs.local.get("wh-a").is_some_and(|s| s.contains_key(&next)), "the site's session is told of it");
    assert!(!docs.sync.db.contains(&escrow));
    let d = docs.get(&escrow).unwrap();
    let (counters, _) = schema::read_escrow(&d, 10).unwrap();
    assert!(counters.len() == 1 && counters[0].local(Party::Hub) == last, "the last write came along: {counters:?}");
    assert!(oms_protocol::sync::automerge::ReadDoc::stats(&*d).num_ops < 50);
}

/// A start queues more open work for the watcher than one pass holds: nothing is lost. Requeued documents fill
/// half of a pass, so a node's change still finds room; the next passes take the rest from the backlog,
/// `per_pass` at a time, each document once; a node's change past a full pass goes to the backlog too; past
/// the backlog's bound a drop is counted. (Before the backlog, everything past the first [`CHANGED_MAX`] was
/// dropped without a word.) Small bounds here; the defaults are [`CHANGED_MAX`], [`BACKLOG_MAX`],
/// [`BACKLOG_PER_PASS`].
#[test]
fn open_work_beyond_one_watcher_pass_is_handed_out_over_the_next_passes() {
    let (changed_max, backlog_max, per_pass) = (10, 30, 4);
    let dir = tempfile::tempdir().unwrap();
    let mut docs = open_docs(&dir.path().join("hub.redb"), 1_000);
    docs.set_watch_bounds(changed_max, backlog_max, per_pass);
    let name = |i: usize| DocId::new(format!("order/hub-{i:010}.1")).unwrap();
    // Twelve documents of a start, two of them twice.
    docs.requeue_docs((0..12).chain([3, 11]).map(name));
    assert_eq!(docs.backlog_len(), 7, "half a pass, the rest once each");
    // Nodes' changes: the other half of the pass, then the backlog.
    for i in 100..106 {
        docs.note_for_watcher(name(i), changed_max);
    }
    assert_eq!(docs.backlog_len(), 8);
    let mut all = BTreeSet::new();
    let mut passes = 0;
    loop {
        let pass = docs.take_changed();
        if pass.is_empty() {
            break;
        }
        assert!(pass.len() <= changed_max + per_pass, "{}", pass.len());
        for d in pass {
            assert!(all.insert(d), "a document handed out twice");
        }
        passes += 1;
        assert!(passes <= 4, "the backlog does not drain");
    }
    assert_eq!(all, (0..12).chain(100..106).map(name).collect::<BTreeSet<_>>());
    assert_eq!((passes, docs.requeue_dropped()), (2, 0));
    // Past the backlog's bound: counted, not held.
    docs.requeue_docs((0..changed_max / 2 + backlog_max + 3).map(name));
    assert_eq!((docs.backlog_len(), docs.requeue_dropped()), (backlog_max, 3));
}
