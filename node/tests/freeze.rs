//! Finished orders are frozen by a bounded store command: cancelled ones at once, shipped ones after the
//! return window (or once every unit came back and was refunded); a frozen order refuses every change with
//! `order_frozen` and nothing about it changes; passes resume from a cursor and survive a restart.

mod common;

use oms_node::store::{Limits, PickConfirmation, ReturnLine, Store, StoreError, cmd};
use oms_protocol::domain::{Disposition, OrderId, Sku};
use oms_protocol::fixtures;
use oms_service::Problem;

const HOUR_MS: u64 = 3_600_000;

fn sku() -> Sku {
    Sku::parse("A").unwrap()
}

async fn order(store: &Store, key: &str, qty: u32) -> OrderId {
    let cmd = cmd::CreateOrder { key: key.into(), draft: fixtures::draft(key, &sku(), qty) };
    store.execute(cmd).await.unwrap().record.id
}

/// Creates an order and takes it through a wave, picking, packing and shipping.
async fn shipped(store: &Store, key: &str, qty: u32) -> OrderId {
    let id = order(store, key, qty).await;
    store.execute(cmd::CreateWave { orders_max: 1 }).await.unwrap();
    let lines = vec![PickConfirmation { sku: sku(), picked: qty }];
    store.execute(cmd::ConfirmPicks { order: id.clone(), lines, reason: None }).await.unwrap();
    store.execute(cmd::Pack { order: id.clone(), parcels: 1, consignment: None }).await.unwrap();
    let ship = cmd::Ship { order: id.clone(), carrier: "DHL".into(), tracking: format!("T-{key}") };
    store.execute(ship).await.unwrap();
    id
}

async fn freeze(store: &Store, window_ms: u64, max: usize, after: Option<String>) -> (Vec<OrderId>, Option<String>) {
    let cmd = cmd::Freeze { return_window_ms: window_ms, orders_max: max, after };
    let frozen = store.execute(cmd).await.unwrap();
    (frozen.frozen, frozen.next_after)
}

/// Everything a refused command could have touched.
fn snapshot(store: &Store, id: &OrderId) -> String {
    format!(
        "{:?} {:?} {:?} {} {}",
        store.order_and_frozen_at(id).unwrap(),
        store.balance(&sku()).unwrap(),
        store.escrow(&sku()).unwrap(),
        store.ledger_all(0, 100_000).unwrap().len(),
        store.feed_after(0, 100_000).unwrap().len(),
    )
}

fn assert_frozen_refusal(e: StoreError, id: &OrderId) {
    assert!(matches!(&e, StoreError::OrderFrozen { order, .. } if order == id), "{e:?}");
    let p = Problem::from(e);
    assert_eq!((p.status, p.code), (409, "order_frozen"));
}

#[test]
fn finished_orders_freeze_and_then_refuse_every_change() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = common::store_with_stock(dir.path(), Limits::default(), &[("A", 100)]).await;
        let ship1 = shipped(&store, "ship1", 2).await;
        let cancelled = order(&store, "cancel", 1).await;
        store.execute(cmd::Cancel { order: cancelled.clone(), reason: "x".into() }).await.unwrap();
        let open = order(&store, "open", 1).await;

        // Within the return window only the cancelled order is finished.
        assert_eq!(freeze(&store, HOUR_MS, 100, None).await.0, vec![cancelled.clone()]);
        assert_eq!(store.frozen_at(&ship1).unwrap(), None);
        // Past the window (0 ms) the shipped one is too; the open one never; a second pass freezes nothing.
        assert_eq!(freeze(&store, 0, 100, None).await.0, vec![ship1.clone()]);
        assert_eq!(freeze(&store, 0, 100, None).await.0, Vec::<OrderId>::new());
        let at = store.frozen_at(&ship1).unwrap().expect("frozen");
        assert_eq!(store.frozen_at(&open).unwrap(), None);
        assert!(store.freeze_queue(None, 100).unwrap().is_empty(), "frozen orders leave the queue");
        // The freeze is on the change feed, for the document follower.
        let feed = store.feed_after(0, 100_000).unwrap();
        assert!(matches!(&feed.last().unwrap().1, oms_node::store::FeedEntry::Order(o) if o == &ship1));

        // Every change to a frozen order is refused and changes nothing.
        let before = snapshot(&store, &ship1);
        let lines = vec![(ReturnLine { sku: sku(), qty: 1 }, Disposition::Restock)];
        let ret = cmd::ReceiveReturn { order: ship1.clone(), lines, rma: None, expect_received: None };
        assert_frozen_refusal(store.execute(ret).await.unwrap_err(), &ship1);
        assert_frozen_refusal(store.execute(cmd::Deliver { order: ship1.clone() }).await.unwrap_err(), &ship1);
        let refund = cmd::Refund { order: ship1.clone(), return_id: 1 };
        assert_frozen_refusal(store.execute(refund).await.unwrap_err(), &ship1);
        let cancel = cmd::Cancel { order: ship1.clone(), reason: "late".into() };
        assert_frozen_refusal(store.execute(cancel).await.unwrap_err(), &ship1);
        let pack = cmd::Pack { order: ship1.clone(), parcels: 2, consignment: None };
        assert_frozen_refusal(store.execute(pack).await.unwrap_err(), &ship1);
        assert_eq!(snapshot(&store, &ship1), before);
        let before = snapshot(&store, &cancelled);
        assert_frozen_refusal(store.execute(cmd::Reaccept { order: cancelled.clone() }).await.unwrap_err(), &cancelled);
        assert_eq!(snapshot(&store, &cancelled), before);
        // A refused command in a batch leaves the others alone: the open order still changes.
        store.execute(cmd::Cancel { order: open.clone(), reason: "x".into() }).await.unwrap();

        // A restart keeps the freeze (same time) and the next pass is idempotent.
        store.close();
        let store = Store::open(
            &dir.path().join("node.redb"),
            oms_protocol::domain::NodeId::parse("wh-a").unwrap(),
            Limits::default(),
            std::sync::Arc::new(oms_node::metrics::Metrics::new()),
        )
        .unwrap();
        assert_eq!(store.frozen_at(&ship1).unwrap(), Some(at));
        assert_eq!(freeze(&store, 0, 100, None).await.0, vec![open.clone()], "only the newly cancelled one");
        assert_eq!(store.frozen_at(&ship1).unwrap(), Some(at));
        store.close();
    });
}

#[test]
fn returns_decide_when_a_shipped_order_is_finished() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = common::store_with_stock(dir.path(), Limits::default(), &[("A", 100)]).await;
        let id = shipped(&store, "s", 2).await;
        let ret = |qty| cmd::ReceiveReturn {
            order: id.clone(),
            lines: vec![(ReturnLine { sku: sku(), qty }, Disposition::Restock)],
            rma: None,
            expect_received: None,
        };
        // Everything came back but the refund is owed: open even past the window.
        store.execute(ret(2)).await.unwrap();
        assert!(freeze(&store, 0, 100, None).await.0.is_empty());
        // Refunded: every unit is back, so finished within the window.
        store.execute(cmd::Refund { order: id.clone(), return_id: 1 }).await.unwrap();
        assert_eq!(freeze(&store, HOUR_MS, 100, None).await.0, vec![id.clone()]);
        store.close();
    });
}

#[test]
fn passes_are_bounded_and_resume_from_the_cursor() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = common::store_with_stock(dir.path(), Limits::default(), &[("A", 100)]).await;
        // Shipped first (not due within the window), then five cancelled orders.
        let waiting = shipped(&store, "w", 1).await;
        let mut ids = Vec::new();
        for i in 0..5 {
            let id = order(&store, &format!("c{i}"), 1).await;
            store.execute(cmd::Cancel { order: id.clone(), reason: "x".into() }).await.unwrap();
            ids.push(id);
        }
        let mut frozen = Vec::new();
        let mut after = None;
        let mut passes = 0;
        for _ in 0..20 {
            let (f, next) = freeze(&store, HOUR_MS, 2, after.take()).await;
            assert!(f.len() <= 2, "at most orders_max per pass");
            frozen.extend(f);
            passes += 1;
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(frozen, ids, "every cancelled order once, in id order");
        assert_eq!(passes, 4, "6 queued orders, 2 per pass, and a last pass that finds the end");
        assert_eq!(
            store.freeze_queue(None, 100).unwrap(),
            vec![(waiting.to_string(), store_shipped_at(&store, &waiting))]
        );
        store.close();
    });
}

fn store_shipped_at(store: &Store, id: &OrderId) -> u64 {
    let rec = store.order(id).unwrap().unwrap();
    rec.timeline.iter().find(|t| t.status == oms_protocol::domain::FulfillmentState::Shipped).unwrap().at_ms
}
