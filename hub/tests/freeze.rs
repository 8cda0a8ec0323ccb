//! The hub's side of frozen orders: the change that freezes an order document is accepted and compacts its
//! storage to one full save; any later change to it, even from the fulfilling node, is quarantined (counted,
//! not applied).
#![allow(clippy::unwrap_used)]

use oms_hub::docs::HubDocs;
use oms_protocol::domain::{FulfillmentState, NodeId, OrderId, Sku};
use oms_protocol::fixtures;
use oms_protocol::records::OrderRecord;
use oms_protocol::schema::{self, keys};
use oms_protocol::sync::DocStore;
use oms_protocol::sync::automerge::{AutoCommit, ROOT, ReadDoc, transaction::Transactable};
use oms_protocol::wire::DocId;
use oms_sync::docdb::{DocDb, stored_doc_parts};

fn record(site: &NodeId) -> OrderRecord {
    fixtures::accepted(OrderId::new(site, 1), site, &Sku::parse("A").unwrap(), 1)
}

/// Applies what `node_doc` has that the hub lacks, as a sync message would, runs the hub's ownership check
/// and flushes.
fn sync(hub: &mut HubDocs, node: &NodeId, name: &DocId, node_doc: &mut AutoCommit) -> bool {
    let before = hub.heads(name);
    hub.sync.create_doc(name).unwrap().merge(node_doc).unwrap();
    hub.mark_dirty(name);
    let ok = hub.check_applied(node, name, &before, 0, 100);
    hub.flush().unwrap();
    ok
}

fn open(path: &std::path::Path) -> HubDocs {
    HubDocs::new(DocDb::open(path, vec![9; 16], 1_000).unwrap()).unwrap()
}

#[test]
fn a_frozen_order_is_compacted_and_refuses_every_later_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.redb");
    let n = NodeId::parse("wh-north").unwrap();
    let mut rec = record(&n);
    let name = schema::order_doc(&rec.id).unwrap();
    let mut node_doc = AutoCommit::new();

    // Created, then two progress changes: a full save and increments.
    let mut hub = open(&path);
    for (t, status) in
        [(10, FulfillmentState::Accepted), (20, FulfillmentState::Picking), (30, FulfillmentState::Picked)]
    {
        rec.status = status;
        schema::write_order(&mut node_doc, &n, &rec, t).unwrap();
        node_doc.commit();
        assert!(sync(&mut hub, &n, &name, &mut node_doc), "{status}");
    }
    drop(hub);
    let (full, increments) = stored_doc_parts(&path, name.as_str()).unwrap();
    assert!(full.is_some() && increments >= 2, "{full:?} {increments}");

    // The final progress and the freeze: accepted, and the document is stored as one full save.
    let mut hub = open(&path);
    rec.status = FulfillmentState::Shipped;
    schema::write_order(&mut node_doc, &n, &rec, 40).unwrap();
    schema::write_frozen(&mut node_doc, 50).unwrap();
    node_doc.commit();
    assert!(sync(&mut hub, &n, &name, &mut node_doc));
    let frozen = hub.heads(&name);
    assert_eq!(hub.get(&name).and_then(|d| schema::frozen_at_ms(&d)), Some(50));
    drop(hub);
    assert_eq!(stored_doc_parts(&path, name.as_str()).unwrap().1, 0, "compacted when frozen");

    // A hand-made change by the fulfilling node itself: quarantined, not applied, counted.
    let mut hub = open(&path);
    let mut rogue = node_doc.fork();
    let node_map = rogue.get(ROOT, keys::NODE).unwrap().unwrap().1;
    rogue.put(&node_map, keys::STATUS, "delivered").unwrap();
    rogue.commit();
    assert!(!sync(&mut hub, &n, &name, &mut rogue));
    assert_eq!(hub.heads(&name), frozen, "the document is as it was");
    assert_eq!(hub.status(&n).changes_quarantined, 1);
    assert_eq!(schema::order_status(&hub.get(&name).unwrap()).as_deref(), Some("shipped"));
    // The hub's own cancellation request writes nothing into a frozen order.
    assert_eq!(hub.write_local(&name, |d| schema::request_cancel(d, 60)).unwrap(), Vec::<String>::new());
    assert_eq!(hub.heads(&name), frozen);
    hub.flush().unwrap();
    drop(hub);
    assert_eq!(stored_doc_parts(&path, name.as_str()).unwrap().1, 0);
    let mut hub = open(&path);
    assert_eq!(hub.heads(&name), frozen, "the refused change did not reach the disk");
}
