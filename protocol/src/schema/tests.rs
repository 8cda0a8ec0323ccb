use super::*;
use crate::domain::{Address, Channel, Contact, Currency, OrderLine};

fn node(s: &str) -> NodeId {
    NodeId::parse(s).unwrap()
}

proptest::proptest! {
    /// The document [`new_hub_order`] builds at once is the one [`create_hub_order`] writes put by put:
    /// the same change (heads), the same bytes saved, the same order read back, and a later change (the
    /// site's acceptance, a cancel asked) lands the same on both. Fails if an operation, its order, a value's
    /// type or the change's metadata differ.
    #[test]
    fn a_hub_order_built_at_once_is_the_one_written_put_by_put(
        seq in 1u64..u64::MAX / 2,
        k in 1u32..40,
        site in "[a-z][a-z0-9-]{0,30}",
        name in "\\PC{0,40}",
        qty in 1u32..10_000,
        now in proptest::prelude::any::<u64>(),
        actor in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..32),
    ) {
        let actor = automerge::ActorId::from(actor);
        let parent = OrderId::parse(&format!("hub-{seq:010}")).unwrap();
        let id = OrderId::parse(&format!("{parent}.{k}")).unwrap();
        let site = node(&site);
        let mut draft = record("wh-a", 1).order;
        draft.ship_to.name = name;
        draft.lines[0].qty = qty;
        let mut slow = AutoCommit::new().with_actor(actor.clone());
        proptest::prop_assert!(create_hub_order(&mut slow, &id, &parent, &site, &draft, now).unwrap());
        slow.commit();
        let mut fast = new_hub_order(&actor, &id, &parent, &site, &draft, now).unwrap();
        proptest::prop_assert_eq!(fast.get_heads(), slow.get_heads());
        proptest::prop_assert_eq!(fast.save(), slow.save());
        let view = read_order(&fast, "x").unwrap();
        proptest::prop_assert_eq!(&view, &read_order(&slow, "x").unwrap());
        proptest::prop_assert_eq!(view.parent.as_deref(), Some(parent.as_str()));
        // Already there: neither is written again.
        proptest::prop_assert!(!create_hub_order(&mut fast, &id, &parent, &site, &draft, now).unwrap());
        for d in [&mut fast, &mut slow] {
            let mut accepted = record(site.as_str(), 1);
            accepted.id = id.clone();
            write_order(d, &site, &accepted, now.saturating_add(1)).unwrap();
            request_cancel(d, now.saturating_add(2)).unwrap();
            d.commit();
        }
        proptest::prop_assert_eq!(fast.get_heads(), slow.get_heads());
        proptest::prop_assert_eq!(read_order(&fast, "x").unwrap(), read_order(&slow, "x").unwrap());
    }
}

fn record(site: &str, seq: u64) -> OrderRecord {
    let sku = Sku::parse("SKU-1").unwrap();
    OrderRecord {
        id: OrderId::new(&node(site), seq),
        site: node(site),
        status: FulfillmentState::Accepted,
        order: OrderDraft {
            external_ref: "web-1".into(),
            channel: Channel::parse("web").unwrap(),
            lines: vec![OrderLine {
                sku: sku.clone(),
                qty: 2,
                unit_price_minor: 1999,
                currency: Currency::parse("EUR").unwrap(),
            }],
            ship_to: Address {
                name: "A".into(),
                line1: "1 Street".into(),
                line2: None,
                city: "Berlin".into(),
                postcode: "10115".into(),
                country: "DE".into(),
                lat: 52.5,
                lon: 13.4,
            },
            contact: Contact::default(),
        },
        lines: vec![FulfillmentLine { sku, qty: 2, picked: None, shipped: 0, returned: 0 }],
        wave: None,
        parcels: None,
        shipment: None,
        returns: vec![],
        timeline: vec![],
        created_at_ms: 1,
    }
}

#[test]
fn an_escrow_view_written_late_never_goes_back() {
    use crate::escrow::{EscrowCounter, Party};
    let node = NodeId::parse("wh-1").unwrap();
    let mut older = EscrowCounter::new(crate::domain::Sku::parse("A").unwrap());
    older.add(Party::Site, 10).unwrap();
    older.grant_lease(Party::Site, Party::Hub, u64::MAX / 2, 10).unwrap();
    older.transfer(Party::Site, Party::Hub, 10, 0).unwrap();
    older.consume(Party::Hub, 2, 0).unwrap();
    let mut newer = older.clone();
    newer.consume(Party::Hub, 3, 0).unwrap();
    let mut doc = AutoCommit::new();
    assert!(merge_escrow(&mut doc, &node, &newer, 1).unwrap());
    // The older state arrives second: nothing changes, the newer one stands.
    assert!(!merge_escrow(&mut doc, &node, &older, 2).unwrap());
    let (read, bad) = read_escrow(&doc, 10).unwrap();
    assert!(bad.is_empty());
    assert_eq!(read, vec![newer.clone()]);
    assert_eq!(read[0].consumed(Party::Hub), 5);
    // A newer one still moves it on.
    let mut newest = newer.clone();
    newest.consume(Party::Hub, 1, 0).unwrap();
    assert!(merge_escrow(&mut doc, &node, &newest, 3).unwrap());
    assert_eq!(read_escrow(&doc, 10).unwrap().0[0].consumed(Party::Hub), 6);
}

#[test]
fn order_roundtrip_and_idempotent_rewrite() {
    let rec = record("wh-north", 7);
    let mut doc = AutoCommit::new();
    assert!(write_order(&mut doc, &node("wh-north"), &rec, 10).unwrap());
    let heads = doc.get_heads();
    assert!(!write_order(&mut doc, &node("wh-north"), &rec, 11).unwrap(), "same record, no change");
    assert_eq!(doc.get_heads(), heads);
    let view = read_order(&doc, "x").unwrap();
    assert_eq!(view.id, rec.id);
    assert_eq!(view.draft, rec.order);
    assert_eq!(view.progress.unwrap().status, FulfillmentState::Accepted);
    assert_eq!(order_origin(&rec.id), Some("wh-north"));
}

#[test]
fn ownership_is_enforced() {
    let rec = record("wh-north", 1);
    let name = order_doc(&rec.id).unwrap();
    let n = node("wh-north");
    let mut doc = AutoCommit::new();
    write_order(&mut doc, &n, &rec, 10).unwrap();
    doc.commit();
    assert_eq!(check_writer(&mut doc, &name, &[], Writer::Node(&n)), Ok(()));
    let created = doc.get_heads();

    // The node updates its progress: fine.
    let mut shipped = rec.clone();
    shipped.status = FulfillmentState::Cancelled;
    write_order(&mut doc, &n, &shipped, 20).unwrap();
    doc.commit();
    assert_eq!(check_writer(&mut doc, &name, &created, Writer::Node(&n)), Ok(()));
    let progressed = doc.get_heads();

    // The node writes a hub key, or edits the draft after creation: refused.
    doc.put(ROOT, keys::DRAFT, vec![1u8]).unwrap();
    doc.commit();
    assert!(check_writer(&mut doc, &name, &progressed, Writer::Node(&n)).is_err());
    let mut doc2 = doc.fork_at(&progressed).unwrap();
    request_cancel(&mut doc2, 30).unwrap();
    doc2.commit();
    assert!(check_writer(&mut doc2, &name, &progressed, Writer::Node(&n)).is_err());
    assert_eq!(check_writer(&mut doc2, &name, &progressed, Writer::Hub), Ok(()));
    // The carrier's delivery is the hub's key too: the first one counts, a node may not write it.
    let mut doc4 = doc.fork_at(&progressed).unwrap();
    assert!(request_delivered(&mut doc4, 40).unwrap());
    assert!(!request_delivered(&mut doc4, 50).unwrap(), "a second delivery changes nothing");
    doc4.commit();
    assert!(check_writer(&mut doc4, &name, &progressed, Writer::Node(&n)).is_err());
    assert_eq!(check_writer(&mut doc4, &name, &progressed, Writer::Hub), Ok(()));
    assert_eq!(read_order(&doc4, name.as_str()).unwrap().carrier_delivered_at_ms, Some(40));

    // Another node creating wh-north's order: refused.
    let mut doc3 = AutoCommit::new();
    write_order(&mut doc3, &node("3pl-east"), &record("wh-north", 1), 10).unwrap();
    doc3.commit();
    let other = node("3pl-east");
    assert!(check_writer(&mut doc3, &name, &[], Writer::Node(&other)).is_err());

    // A node creating its own order but naming another site as the one to fulfil it: refused (the hub
    // would otherwise send that site an order it never accepted).
    let mut foreign_site = record("wh-north", 2);
    foreign_site.site = node("wh-south");
    let mut doc4 = AutoCommit::new();
    write_order(&mut doc4, &n, &foreign_site, 10).unwrap();
    doc4.commit();
    let name4 = order_doc(&foreign_site.id).unwrap();
    let v = check_writer(&mut doc4, &name4, &[], Writer::Node(&n)).unwrap_err();
    assert!(v.what.contains("for site wh-south"), "{v}");
    // The fulfilling site of a hub order writes its progress; another node does not, even one named nowhere.
    let hub_id = OrderId::parse("hub-0000000001.1").unwrap();
    let hub_name = order_doc(&hub_id).unwrap();
    let mut h = AutoCommit::new();
    create_hub_order(&mut h, &hub_id, &OrderId::parse("hub-0000000001").unwrap(), &n, &rec.order, 5).unwrap();
    h.commit();
    let assigned = h.get_heads();
    let mut progress = rec.clone();
    progress.id = hub_id.clone();
    write_order(&mut h, &n, &progress, 6).unwrap();
    h.commit();
    assert_eq!(check_writer(&mut h, &hub_name, &assigned, Writer::Node(&n)), Ok(()));
    assert!(check_writer(&mut h, &hub_name, &assigned, Writer::Node(&other)).is_err());

    // Stock: only the owner.
    let sname = stock_doc(&n).unwrap();
    let mut s = AutoCommit::new();
    write_stock(&mut s, &n, &Sku::parse("A").unwrap(), &Balance { on_hand: 3, reserved: 1, staged: 0 }, 5).unwrap();
    s.commit();
    assert_eq!(check_writer(&mut s, &sname, &[], Writer::Node(&n)), Ok(()));
    assert!(check_writer(&mut s, &sname, &[], Writer::Node(&other)).is_err());
    assert!(check_writer(&mut s, &sname, &[], Writer::Hub).is_err());
    assert_eq!(read_stock(&s, "s", 10).unwrap().skus.len(), 1);
}

/// `inbound/<node>` is the hub's alone; the site's receipts go in its own stock document; both read back
/// what was written and a rewrite of the same value changes nothing.
#[test]
fn inbound_is_hub_owned_and_receipts_are_the_sites() {
    let (n, other) = (node("wh-a"), node("wh-b"));
    let name = inbound_doc(&n).unwrap();
    assert_eq!(DocKind::of(&name), Some(DocKind::Inbound(n.clone())));
    let po = InboundPo {
        po: "PO-1".into(),
        state: "sent".into(),
        receivable: true,
        expected_day: 20_000,
        lines: vec![InboundLine { line: 1, sku: Sku::parse("A").unwrap(), ordered: 10, received: 0, short_closed: 0 }],
        asns: vec![InboundAsn { id: "ASN-1".into(), lines: vec![(1, 4)], expected_day: 20_001 }],
    };
    let mut d = AutoCommit::new();
    assert!(write_inbound(&mut d, &n, &po, 1).unwrap());
    assert!(!write_inbound(&mut d, &n, &po, 2).unwrap());
    d.commit();
    assert_eq!(check_writer(&mut d, &name, &[], Writer::Hub), Ok(()));
    assert!(check_writer(&mut d, &name, &[], Writer::Node(&n)).is_err());
    assert_eq!(read_inbound(&d, 10).unwrap(), (vec![po], vec![]));

    let sname = stock_doc(&n).unwrap();
    let r = SiteReceipt { id: "r-1".into(), po: "PO-1".into(), asn: None, lines: vec![(1, 4)], at_ms: 3 };
    let mut s = AutoCommit::new();
    assert!(write_receipt(&mut s, &n, &r, 3).unwrap());
    assert!(!write_receipt(&mut s, &n, &r, 4).unwrap());
    s.commit();
    assert_eq!(check_writer(&mut s, &sname, &[], Writer::Node(&n)), Ok(()));
    assert!(check_writer(&mut s, &sname, &[], Writer::Node(&other)).is_err());
    assert_eq!(read_receipts(&s, 10).unwrap(), (vec![r], vec![]));
}

/// The hub acknowledges applied receipts in its inbound document (which only it may write); the site
/// removes only acknowledged receipts past the grace period from its stock document (which only it may
/// write); the hub then drops the acknowledgements of receipts gone, so both hold only receipts in flight.
#[test]
fn acknowledged_receipts_are_pruned_after_the_grace_and_only_they() {
    let n = node("wh-a");
    let (iname, sname) = (inbound_doc(&n).unwrap(), stock_doc(&n).unwrap());
    let mut s = AutoCommit::new();
    for (id, at) in [("r-1", 1_000), ("r-2", 1_000), ("r-3", 9_000)] {
        let r = SiteReceipt { id: id.into(), po: "PO-1".into(), asn: None, lines: vec![(1, 1)], at_ms: at };
        write_receipt(&mut s, &n, &r, at).unwrap();
    }
    let rr = SiteRmaReceipt { id: "m-1".into(), rma: "RMA-1".into(), order: "o".into(), lines: vec![], at_ms: 1_000 };
    write_rma_receipt(&mut s, &n, &rr, 1_000).unwrap();
    s.commit();
    let ids = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<std::collections::BTreeSet<_>>();

    // Nothing acknowledged: nothing goes, however old (a site cut off from the hub keeps everything).
    let mut i = AutoCommit::new();
    assert!(!write_receipt_acks(&mut i, &n, keys::RECEIPTS_APPLIED, &ids(&[]), 5).unwrap(), "no empty map");
    let none = read_receipt_acks(&i, 100).unwrap();
    assert_eq!(prune_receipts(&mut s, &none, 1_000_000, 10, 100).unwrap(), Pruned::default());
    assert_eq!(read_receipts(&s, 10).unwrap().0.len(), 3);

    // The hub applied r-1, r-3 (and a receipt not in the document, which the site ignores) and m-1.
    assert!(write_receipt_acks(&mut i, &n, keys::RECEIPTS_APPLIED, &ids(&["r-1", "r-3", "r-9"]), 10_000).unwrap());
    assert!(!write_receipt_acks(&mut i, &n, keys::RECEIPTS_APPLIED, &ids(&["r-1", "r-3", "r-9"]), 10_001).unwrap());
    assert!(write_receipt_acks(&mut i, &n, keys::RMA_RECEIPTS_APPLIED, &ids(&["m-1"]), 10_000).unwrap());
    i.commit();
    assert_eq!(check_writer(&mut i, &iname, &[], Writer::Hub), Ok(()));
    assert!(check_writer(&mut i, &iname, &[], Writer::Node(&n)).is_err(), "the acknowledgements are the hub's");
    let acks = read_receipt_acks(&i, 100).unwrap();
    assert_eq!((acks.po.clone(), acks.rma.clone()), (ids(&["r-1", "r-3", "r-9"]), ids(&["m-1"])));

    // At 10 000 with a 5 000 ms grace: r-1 and m-1 go, r-3 (booked at 9 000) waits until 14 000, r-2 stays.
    let before = s.get_heads();
    let p = prune_receipts(&mut s, &acks, 10_000, 5_000, 100).unwrap();
    assert_eq!(p, Pruned { receipts: 1, rma_receipts: 1, next_at_ms: Some(14_000) });
    s.commit();
    assert_eq!(check_writer(&mut s, &sname, &before, Writer::Node(&n)), Ok(()), "the site prunes its own");
    let left: Vec<String> = read_receipts(&s, 10).unwrap().0.into_iter().map(|r| r.id).collect();
    assert_eq!(left, ["r-2", "r-3"]);
    assert!(read_rma_receipts(&s, 10).unwrap().0.is_empty());
    let p = prune_receipts(&mut s, &acks, 14_000, 5_000, 100).unwrap();
    assert_eq!((p.receipts, p.next_at_ms), (1, None));
    let left: Vec<String> = read_receipts(&s, 10).unwrap().0.into_iter().map(|r| r.id).collect();
    assert_eq!(left, ["r-2"], "never acknowledged: kept");

    // The hub sees them gone and drops their acknowledgements.
    assert!(write_receipt_acks(&mut i, &n, keys::RECEIPTS_APPLIED, &ids(&[]), 20_000).unwrap());
    assert!(read_receipt_acks(&i, 100).unwrap().po.is_empty());
}

/// Approved returns ride in the hub's inbound document, the site's receipts against them in its stock
/// document; a node may not write the former, another node not the latter.
#[test]
fn rmas_are_hub_owned_and_rma_receipts_are_the_sites() {
    let (n, other) = (node("wh-north"), node("wh-south"));
    let name = inbound_doc(&n).unwrap();
    let rma = InboundRma {
        rma: "RMA-1".into(),
        order: "hub-1.1".into(),
        state: "approved".into(),
        receivable: true,
        lines: vec![InboundRmaLine { sku: Sku::parse("A").unwrap(), qty: 2, received: 0 }],
    };
    let mut d = AutoCommit::new();
    assert!(write_inbound_rma(&mut d, &n, &rma, 1).unwrap());
    assert!(!write_inbound_rma(&mut d, &n, &rma, 2).unwrap());
    d.commit();
    assert_eq!(check_writer(&mut d, &name, &[], Writer::Hub), Ok(()));
    assert!(check_writer(&mut d, &name, &[], Writer::Node(&n)).is_err());
    assert_eq!(read_inbound_rmas(&d, 10).unwrap(), (vec![rma], vec![]));
    assert_eq!(read_inbound(&d, 10).unwrap(), (vec![], vec![]), "purchase orders are another map");

    let sname = stock_doc(&n).unwrap();
    let line = SiteRmaLine { sku: Sku::parse("A").unwrap(), qty: 1, disposition: Disposition::Scrap };
    let r = SiteRmaReceipt {
        id: "hub-1.1/1".into(),
        rma: "RMA-1".into(),
        order: "hub-1.1".into(),
        lines: vec![line],
        at_ms: 3,
    };
    let mut s = AutoCommit::new();
    assert!(write_rma_receipt(&mut s, &n, &r, 3).unwrap());
    assert!(!write_rma_receipt(&mut s, &n, &r, 4).unwrap());
    s.commit();
    assert_eq!(check_writer(&mut s, &sname, &[], Writer::Node(&n)), Ok(()));
    assert!(check_writer(&mut s, &sname, &[], Writer::Node(&other)).is_err());
    assert_eq!(read_rma_receipts(&s, 10).unwrap(), (vec![r], vec![]));
}

/// A node that never writes the layout version would have every change count as the creation, and could
/// rewrite the creation keys (its order's site) at will.
#[test]
fn an_order_without_its_layout_version_is_refused_so_its_site_cannot_be_rewritten() {
    let n = node("wh-north");
    let rec = record("wh-north", 1);
    let name = order_doc(&rec.id).unwrap();
    let mut doc = AutoCommit::new();
    doc.put(ROOT, keys::ID, rec.id.as_str()).unwrap();
    doc.put(ROOT, keys::ORIGIN, "wh-north").unwrap();
    doc.put(ROOT, keys::SITE, "wh-north").unwrap();
    doc.put(ROOT, keys::CREATED_AT_MS, 1u64).unwrap();
    doc.put(ROOT, keys::DRAFT, postcard::to_allocvec(&rec.order).unwrap()).unwrap();
    doc.commit();
    let v = check_writer(&mut doc, &name, &[], Writer::Node(&n)).unwrap_err();
    assert!(v.what.contains("without \"v\""), "{v}");
    // Written properly, the same keys are fixed from the next change on: rewriting the site is refused.
    let mut doc = AutoCommit::new();
    write_order(&mut doc, &n, &rec, 10).unwrap();
    doc.commit();
    let created = doc.get_heads();
    doc.put(ROOT, keys::SITE, "wh-south").unwrap();
    doc.commit();
    assert!(check_writer(&mut doc, &name, &created, Writer::Node(&n)).is_err());
}

#[test]
fn the_freeze_is_the_last_change_of_an_order_document() {
    let rec = record("wh-north", 2);
    let name = order_doc(&rec.id).unwrap();
    let n = node("wh-north");
    let mut doc = AutoCommit::new();
    write_order(&mut doc, &n, &rec, 10).unwrap();
    doc.commit();
    let created = doc.get_heads();

    // The node's final progress and the freeze, in one change: accepted.
    let mut shipped = rec.clone();
    shipped.status = FulfillmentState::Shipped;
    assert!(write_order(&mut doc, &n, &shipped, 20).unwrap());
    assert!(write_frozen(&mut doc, 30).unwrap());
    doc.commit();
    assert_eq!(check_writer(&mut doc, &name, &created, Writer::Node(&n)), Ok(()));
    assert_eq!(frozen_at_ms(&doc), Some(30));
    assert_eq!(read_order(&doc, "x").unwrap().frozen_at_ms, Some(30));
    assert_eq!(read_order(&doc, "x").unwrap().progress.unwrap().status, FulfillmentState::Shipped);
    let frozen = doc.get_heads();
    assert!(!frozen_at(&doc, &created) && frozen_at(&doc, &frozen) && !frozen_at(&doc, &[]));

    // Nothing here writes a frozen document again.
    let mut delivered = shipped.clone();
    delivered.status = FulfillmentState::Delivered;
    assert!(!write_order(&mut doc, &n, &delivered, 40).unwrap());
    assert!(!write_frozen(&mut doc, 50).unwrap());
    assert!(!request_cancel(&mut doc, 60).unwrap());
    doc.commit();
    assert_eq!(doc.get_heads(), frozen);
    assert_eq!(frozen_at_ms(&doc), Some(30), "the first freeze time stays");

    // A hand-made change after the freeze is refused from anyone: the node's own progress, unfreezing,
    // the hub's own map.
    let node_map = doc.get(ROOT, keys::NODE).unwrap().unwrap().1;
    let mut by_node = doc.fork();
    by_node.put(&node_map, keys::STATUS, "delivered").unwrap();
    by_node.commit();
    assert!(check_writer(&mut by_node, &name, &frozen, Writer::Node(&n)).is_err());
    let mut unfreeze = doc.fork();
    unfreeze.delete(&node_map, keys::FROZEN_AT_MS).unwrap();
    unfreeze.commit();
    assert!(check_writer(&mut unfreeze, &name, &frozen, Writer::Node(&n)).is_err());
    let mut by_hub = doc.fork();
    let hub_map = by_hub.put_object(ROOT, keys::HUB, ObjType::Map).unwrap();
    by_hub.put(&hub_map, keys::CANCEL_REQUESTED_AT_MS, 70u64).unwrap();
    by_hub.commit();
    assert!(check_writer(&mut by_hub, &name, &frozen, Writer::Hub).is_err());
    // The same hub change before the freeze was fine.
    let mut early = doc.fork_at(&created).unwrap();
    request_cancel(&mut early, 15).unwrap();
    early.commit();
    assert_eq!(check_writer(&mut early, &name, &created, Writer::Hub), Ok(()));
}

/// One generated write: which writer (of three), which key (of five), and what it writes.
#[derive(Debug, Clone)]
enum Put {
    Str(String),
    Uint(u64),
    Bytes(Vec<u8>),
    Map,
    Counter(i64),
    Increment(i64),
    Delete,
}

fn put_strategy() -> impl proptest::prelude::Strategy<Value = Put> {
    use proptest::prelude::*;
    prop_oneof![
        "[a-z]{0,6}".prop_map(Put::Str),
        any::<u64>().prop_map(Put::Uint),
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(Put::Bytes),
        Just(Put::Map),
        (-5i64..5).prop_map(Put::Counter),
        (-5i64..5).prop_map(Put::Increment),
        Just(Put::Delete),
    ]
}

proptest::proptest! {
    /// A map read in one pass ([`MapValues`]) answers for every key what `get` answers: the same value (the
    /// winner of concurrent writes by several actors, a counter with its increments, nothing for a deleted
    /// key) and the same nested map.
    #[test]
    fn a_map_read_in_one_pass_answers_as_get(
        writes in proptest::collection::vec((0..3usize, 0..5usize, put_strategy()), 0..40),
        merges in proptest::collection::vec(proptest::prelude::any::<bool>(), 40),
    ) {
        let keys = ["id", "site", "node", "hub", "v"];
        let mut docs: Vec<AutoCommit> =
            (1..=3u8).map(|a| AutoCommit::new().with_actor(automerge::ActorId::from(vec![a; 4]))).collect();
        for (n, (w, k, put)) in writes.iter().enumerate() {
            let doc = &mut docs[*w];
            let key = keys[*k];
            // A write the document refuses (an increment of what is not a counter) is skipped, as a writer would.
            let _ = match put {
                Put::Str(s) => doc.put(ROOT, key, s.as_str()),
                Put::Uint(u) => doc.put(ROOT, key, *u),
                Put::Bytes(b) => doc.put(ROOT, key, b.clone()),
                Put::Map => doc.put_object(ROOT, key, ObjType::Map).and_then(|m| doc.put(&m, "k", 1u64)),
                Put::Counter(c) => doc.put(ROOT, key, automerge::ScalarValue::counter(*c)),
                Put::Increment(i) => doc.increment(ROOT, key, *i),
                Put::Delete => doc.delete(ROOT, key),
            };
            // Each write its own change, so a copy handed to a merge carries no transaction of its own.
            doc.commit();
            if merges[n] {
                let (a, b) = (*w, (*w + 1) % 3);
                let mut other = docs[b].clone();
                docs[a].merge(&mut other).unwrap();
            }
        }
        let mut doc = docs[0].clone();
        for other in &mut docs[1..] {
            doc.merge(other).unwrap();
        }
        let read = MapValues::read(&doc, &ROOT);
        for key in keys {
            let got = doc.get(ROOT, key).unwrap();
            proptest::prop_assert_eq!(read.get(key).cloned(), got.as_ref().map(|(v, _)| v.clone().into_owned()), "{}", key);
            let map = got.and_then(|(v, id)| matches!(v, automerge::Value::Object(ObjType::Map)).then_some(id));
            proptest::prop_assert_eq!(read.map(key).cloned(), map, "{}", key);
        }
    }
}

/// One write of [`keys_touched_since`]'s property test, by writer `w` (of three) on `key` of `map` (of the
/// two listed maps, another map of the root, or the root itself).
#[derive(Debug, Clone)]
enum Touch {
    Put { map: usize, key: u8, v: u8 },
    Counter { map: usize, key: u8 },
    Increment { map: usize, key: u8 },
    Delete { map: usize, key: u8 },
}

/// The maps of the property test: the two listed, another map, and `None` for the root itself.
const TOUCH_MAPS: [Option<&str>; 4] = [Some(keys::SKUS), Some(keys::ESCROW), Some(keys::RECEIPTS), None];

fn touch() -> impl proptest::strategy::Strategy<Value = Touch> {
    use proptest::prelude::*;
    let (map, key) = (0usize..4, 0u8..6);
    prop_oneof![
        4 => (map.clone(), key.clone(), any::<u8>()).prop_map(|(map, key, v)| Touch::Put { map, key, v }),
        1 => (map.clone(), key.clone()).prop_map(|(map, key)| Touch::Counter { map, key }),
        2 => (map.clone(), key.clone()).prop_map(|(map, key)| Touch::Increment { map, key }),
        1 => (map, key).prop_map(|(map, key)| Touch::Delete { map, key }),
    ]
}

proptest::proptest! {
    /// Three writers change a stock-like document (two listed maps, another, the root's own keys), each its own
    /// change, merging into each other now and then; from every heads the first writer saw, the keys
    /// [`keys_touched_since`] lists from the changes since are those the diff shows, plus at most keys an
    /// operation since then touched without a visible effect; listed only when the diff lists them too.
    /// Fails if a key the diff shows is missed, a map is listed that the diff cannot list, or a key no change
    /// since touched is listed.
    #[test]
    fn the_keys_touched_since_some_heads_are_those_the_diff_shows(
        steps in proptest::collection::vec((0usize..3, touch(), proptest::prelude::any::<bool>()), 1..40),
    ) {
        let mut first = AutoCommit::new().with_actor(automerge::ActorId::from(vec![1u8]));
        for map in [keys::SKUS, keys::ESCROW, keys::RECEIPTS] {
            first.put_object(ROOT, map, ObjType::Map).unwrap();
        }
        first.commit();
        let mut docs = [first.clone(), first.fork(), first.fork()];
        for (i, d) in docs.iter_mut().enumerate().skip(1) {
            d.set_actor(automerge::ActorId::from(vec![u8::try_from(i).unwrap() + 1]));
        }
        // Every heads of the first writer, and the keys each later step wrote (by any writer).
        let mut seen = vec![docs[0].get_heads()];
        for (w, t, merge) in &steps {
            let doc = &mut docs[*w];
            let (map, key) = match t {
                Touch::Put { map, key, .. } | Touch::Counter { map, key } | Touch::Increment { map, key }
                | Touch::Delete { map, key } => (*map, format!("k{key}")),
            };
            let obj = match TOUCH_MAPS[map] {
                Some(m) => doc.get(ROOT, m).unwrap().unwrap().1,
                None => ROOT,
            };
            let key = if TOUCH_MAPS[map].is_none() { format!("root-{key}") } else { key };
            // Refused writes (an increment of no counter, a delete of nothing) change nothing.
            let _ = match t {
                Touch::Put { v, .. } => doc.put(&obj, &key, u64::from(*v)),
                Touch::Counter { .. } => doc.put(&obj, &key, automerge::ScalarValue::counter(0)),
                Touch::Increment { .. } => doc.increment(&obj, &key, 1),
                Touch::Delete { .. } => doc.delete(&obj, &key),
            };
            doc.commit();
            if *merge {
                let (a, b) = (*w, (*w + 1) % 3);
                let mut other = docs[b].clone();
                docs[a].merge(&mut other).unwrap();
            }
            seen.push(docs[0].get_heads());
        }
        let mut doc = docs[0].clone();
        for other in &mut docs[1..] {
            doc.merge(other).unwrap();
        }
        let now = doc.get_heads();
        for before in &seen {
            let patches = doc.diff(before, &now);
            let got = keys_touched_since(&mut doc, before, [keys::SKUS, keys::ESCROW]);
            // What any change since `before` touched, from the changes' own metadata-free record: the keys of
            // every operation (the property's upper bound).
            let changed: BTreeSet<String> = doc
                .get_changes(before)
                .iter()
                .flat_map(|c| c.decode().operations)
                .filter_map(|op| match op.key { automerge::legacy::Key::Map(k) => Some(k.to_string()), _ => None })
                .collect();
            for (i, map) in [keys::SKUS, keys::ESCROW].into_iter().enumerate() {
                let model = keys_touched_by_diff(&patches, map);
                match (&got[i], &model) {
                    (Some(got), Some(model)) => {
                        proptest::prop_assert!(got.is_superset(model), "{map}: {got:?} misses some of {model:?}");
                        proptest::prop_assert!(got.is_subset(&changed), "{map}: {got:?} beyond {changed:?}");
                    }
                    (None, None) => {}
                    (got, model) => proptest::prop_assert!(false, "{map}: listed {got:?}, the diff {model:?}"),
                }
            }
        }
    }
}

/// Beyond the layout: an object below one of the maps, and a map put again, cannot be listed key by key.
#[test]
fn keys_touched_below_a_map_or_by_a_new_map_are_not_listed() {
    let mut doc = AutoCommit::new();
    let skus = doc.put_object(ROOT, keys::SKUS, ObjType::Map).unwrap();
    doc.put_object(ROOT, keys::ESCROW, ObjType::Map).unwrap();
    doc.commit();
    let before = doc.get_heads();
    doc.put(&skus, "a", 1u64).unwrap();
    doc.put(ROOT, keys::UPDATED_AT_MS, 5u64).unwrap();
    doc.commit();
    let [s, e] = keys_touched_since(&mut doc, &before, [keys::SKUS, keys::ESCROW]);
    assert_eq!(s, Some(BTreeSet::from(["a".to_owned()])));
    assert_eq!(e, Some(BTreeSet::new()));
    // Nested: the operations on the inner map name an object that is not one of the root's.
    let mid = doc.get_heads();
    let inner = doc.put_object(&skus, "b", ObjType::Map).unwrap();
    doc.put(&inner, "x", 1u64).unwrap();
    doc.commit();
    assert_eq!(keys_touched_since(&mut doc, &mid, [keys::SKUS, keys::ESCROW]), [None, None]);
    // The escrow map replaced: none of its keys can be listed; the other map's still can.
    let mid = doc.get_heads();
    doc.put_object(ROOT, keys::ESCROW, ObjType::Map).unwrap();
    doc.put(&skus, "c", 1u64).unwrap();
    doc.commit();
    let [s, e] = keys_touched_since(&mut doc, &mid, [keys::SKUS, keys::ESCROW]);
    assert_eq!((s, e), (Some(BTreeSet::from(["c".to_owned()])), None));
    // Nothing since the heads: nothing touched. From nothing: every map created since.
    let now = doc.get_heads();
    assert_eq!(keys_touched_since(&mut doc, &now, [keys::SKUS]), [Some(BTreeSet::new())]);
    assert_eq!(keys_touched_since(&mut doc, &[], [keys::SKUS, keys::ESCROW]), [None, None]);
    // More operations since the heads than are worth decoding (in another map: the listed one is untouched):
    // the maps are read whole.
    let receipts = doc.put_object(ROOT, keys::RECEIPTS, ObjType::Map).unwrap();
    doc.commit();
    let mid = doc.get_heads();
    for i in 0..=TOUCHED_OPS_MAX {
        doc.put(&receipts, format!("r{i}"), 1u64).unwrap();
    }
    doc.commit();
    assert_eq!(keys_touched_since(&mut doc, &mid, [keys::SKUS]), [None]);
}

/// The model [`keys_touched_since`] is held to: the keys of root map `map` that `patches` (a diff between two
/// heads, so every change in between, concurrent ones included) touch, as the hub and the sites listed them
/// before (a diff visits every operation of the document); other keys of the document are ignored. `None` when they cannot be listed: the map itself was put (created or replaced: any key may
/// differ), a patch in it is not a map key's, or more than [`STOCK_TOUCHED_MAX`] keys were touched.
fn keys_touched_by_diff(patches: &[Patch], map: &str) -> Option<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for p in patches {
        let key = match p.path.first() {
            Some((obj, Prop::Map(k))) if obj == &ROOT && k == map => match (p.path.get(1), &p.action) {
                (Some((_, Prop::Map(sku))), _) => sku.clone(),
                (Some(_), _) => return None,
                (None, PatchAction::PutMap { key, .. } | PatchAction::DeleteMap { key }) => key.clone(),
                (
                    None,
                    PatchAction::Increment { prop: Prop::Map(sku), .. }
                    | PatchAction::Conflict { prop: Prop::Map(sku) },
                ) => sku.clone(),
                (None, _) => return None,
            },
            Some(_) => continue,
            None if root_key(p).as_deref() == Some(map) => return None,
            None => continue,
        };
        out.insert(key);
        if out.len() > STOCK_TOUCHED_MAX {
            return None;
        }
    }
    Some(out)
}
