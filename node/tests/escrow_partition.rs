//! Property test of escrowed stock across a real node store and a model hub: random local orders, hub
//! assignments, receipts, losses, cancellations, rejections, escrow syncs in either direction, partitions
//! (nothing crosses) and heals, with real leases running out on the real clock.
//!
//! Checked after every step, on both replicas:
//! - the site never holds rights to more than it has available, and its balances stay whole;
//! - every unit the hub has assigned but the site has not yet taken is still there for it:
//!   `pending + site's own rights ≤ available` (local sales plus hub assignments never exceed stock);
//! - every assignment, when it finally reaches the site, is accepted — never refused for lack of stock;
//! - the hub's merged view never shows a party below zero rights.
//!
//! At the end the ledger replays to the balances.

mod common;

use std::collections::VecDeque;
use std::time::Duration;

use oms_node::escrow::EscrowPolicy;
use oms_node::store::{EscrowTicked, Limits, NewOrder, Store, StoreError, cmd};
use oms_protocol::domain::{FulfillmentState, Movement, OrderId, Sku};
use oms_protocol::escrow::{EscrowCounter, Party, RebalancePolicy};
use oms_protocol::fixtures;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Local(u32),
    HubAssign(u32),
    Deliver,
    ToHub,
    ToSite,
    Tick,
    Receive(u32),
    Lose(u32),
    CancelLocal,
    CancelHub,
    Partition,
    Heal,
    Wait,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u32..6).prop_map(Op::Local),
        3 => (1u32..6).prop_map(Op::HubAssign),
        2 => Just(Op::Deliver),
        2 => Just(Op::ToHub),
        2 => Just(Op::ToSite),
        2 => Just(Op::Tick),
        1 => (1u32..20).prop_map(Op::Receive),
        1 => (1u32..4).prop_map(Op::Lose),
        1 => Just(Op::CancelLocal),
        1 => Just(Op::CancelHub),
        1 => Just(Op::Partition),
        1 => Just(Op::Heal),
        1 => Just(Op::Wait),
    ]
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

struct World {
    store: Store,
    sku: Sku,
    hub: EscrowCounter,
    /// Assignments made by the hub, not yet delivered to the site.
    in_flight: VecDeque<(OrderId, u32)>,
    hub_seq: u64,
    connected: bool,
    local_orders: Vec<OrderId>,
    hub_orders: Vec<OrderId>,
    policy: EscrowPolicy,
    key: u64,
}

impl World {
    async fn step(&mut self, op: &Op) {
        let sku = self.sku.clone();
        match op {
            Op::Local(q) => {
                self.key += 1;
                let cmd = cmd::CreateOrder { key: format!("k{}", self.key), draft: fixtures::draft("x", &sku, *q) };
                match self.store.execute(cmd).await {
                    Ok(NewOrder { record, .. }) => self.local_orders.push(record.id),
                    Err(StoreError::InsufficientStock(_)) => {}
                    other => panic!("local order: {other:?}"),
                }
            }
            Op::HubAssign(q) if self.hub.spendable(Party::Hub, now_ms()) >= u64::from(*q) => {
                self.hub.consume(Party::Hub, u64::from(*q), now_ms()).unwrap();
                self.hub_seq += 1;
                let id = OrderId::parse(&format!("hub-{:010}.1", self.hub_seq)).unwrap();
                self.in_flight.push_back((id, *q));
            }
            Op::Deliver if self.connected => {
                if let Some((id, q)) = self.in_flight.pop_front() {
                    let cmd = cmd::AcceptAssignment {
                        id: id.clone(),
                        draft: fixtures::draft("x", &sku, q),
                        assigned_at_ms: now_ms(),
                        auto_accept: true,
                    };
                    match self.store.execute(cmd).await {
                        Ok(NewOrder { record, .. }) => {
                            assert_eq!(
                                record.status,
                                FulfillmentState::Accepted,
                                "assignment {id} refused: {record:?}"
                            );
                            self.hub_orders.push(id);
                        }
                        other => panic!("assignment: {other:?}"),
                    }
                }
            }
            Op::ToHub if self.connected => {
                let site = self.store.escrow(&sku).unwrap().unwrap();
                self.hub.merge(&site).unwrap();
            }
            Op::ToSite if self.connected => {
                let cmd = cmd::EscrowSync { hub: vec![self.hub.clone()], policy: self.policy };
                self.store.execute(cmd).await.unwrap();
            }
            Op::Tick => {
                let cmd = cmd::EscrowTick {
                    hub_reachable: self.connected,
                    policy: self.policy,
                    skus_max: 10,
                    changes_max: 10,
                    after: None,
                };
                self.store.execute(cmd).await.unwrap();
            }
            Op::Receive(q) => {
                let m = Movement::Receipt { qty: *q, note: None };
                self.store.execute(cmd::Stock { sku, movement: m }).await.unwrap();
            }
            Op::Lose(q) => {
                let m = Movement::Adjustment { delta: -i64::from(*q), reason: "damaged".into() };
                match self.store.execute(cmd::Stock { sku, movement: m }).await {
                    Ok(_) | Err(StoreError::EscrowedToHub { .. } | StoreError::BelowReserved { .. }) => {}
                    other => panic!("loss: {other:?}"),
                }
            }
            Op::CancelLocal => {
                if let Some(id) = self.local_orders.pop() {
                    self.store.execute(cmd::Cancel { order: id, reason: "t".into() }).await.unwrap();
                }
            }
            Op::CancelHub => {
                if let Some(id) = self.hub_orders.pop() {
                    self.store.execute(cmd::Cancel { order: id, reason: "t".into() }).await.unwrap();
                }
            }
            Op::Partition => self.connected = false,
            Op::Heal => self.connected = true,
            Op::Wait => tokio::time::sleep(Duration::from_millis(7)).await,
            _ => {}
        }
    }

    fn check(&self) {
        let b = self.store.balance(&self.sku).unwrap().unwrap();
        let site = self.store.escrow(&self.sku).unwrap().unwrap();
        assert!(b.reserved <= b.on_hand, "{b:?}");
        let own = site.local(Party::Site);
        let pending: u64 = self.in_flight.iter().map(|(_, q)| u64::from(*q)).sum();
        assert!(
            own + pending <= b.available(),
            "site rights {own} + hub assignments in flight {pending} exceed available {}: {b:?} {site:?}",
            b.available()
        );
        let mut merged = self.hub.clone();
        merged.merge(&site).unwrap();
        merged.check().unwrap();
        self.hub.check().unwrap();
    }
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let store = common::store_with_stock(dir.path(), Limits::default(), &[("A", 30)]).await;
    let sku = Sku::parse("A").unwrap();
    let policy = EscrowPolicy {
        lease_ms: 40,
        margin_ms: 5,
        unacked_max: 6,
        rebalance: RebalancePolicy { move_units_min: 1, deadband_bp: 500, ..RebalancePolicy::default() },
    };
    let mut w = World {
        store: store.clone(),
        hub: EscrowCounter::new(sku.clone()),
        sku,
        in_flight: VecDeque::new(),
        hub_seq: 0,
        connected: true,
        local_orders: vec![],
        hub_orders: vec![],
        policy,
        key: 0,
    };
    for op in &ops {
        w.step(op).await;
        w.check();
    }
    // Heal and drain: every assignment made during the run is accepted.
    w.connected = true;
    while !w.in_flight.is_empty() {
        w.step(&Op::Deliver).await;
        w.check();
    }
    assert!(store.verify_ledger().unwrap().is_empty(), "ledger replay differs from balances");
    drop(w);
    store.close();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn escrow_never_promises_a_unit_twice(ops in proptest::collection::vec(op(), 20..160)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}

/// A catalog larger than one tick is covered over several ticks: every SKU's lease gets renewed.
#[test]
fn escrow_duties_walk_the_whole_catalog() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let names = ["A", "B", "C", "D", "E"];
        let stock: Vec<(&str, u32)> = names.iter().map(|n| (*n, 10)).collect();
        let store = common::store_with_stock(dir.path(), Limits::default(), &stock).await;
        let skus: Vec<Sku> = names.iter().map(|s| Sku::parse(s).unwrap()).collect();
        let policy = EscrowPolicy::default();
        let (mut after, mut seen, mut ticks) = (None, Vec::new(), 0);
        loop {
            ticks += 1;
            assert!(ticks <= 5, "the walk does not end");
            let cmd =
                cmd::EscrowTick { hub_reachable: true, policy, skus_max: 2, changes_max: 10, after: after.take() };
            let EscrowTicked { changed, next_after } = store.execute(cmd).await.unwrap();
            seen.extend(changed);
            match next_after {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(ticks, 3);
        assert_eq!(seen, skus, "every SKU was granted a lease once");
        for sku in &skus {
            assert!(store.escrow(sku).unwrap().unwrap().lease_until_ms(Party::Hub) > 0, "{sku}");
        }
        store.close();
    });
}

/// A tick changes at most `changes_max` counters and the next tick goes on after the last SKU it looked at:
/// a catalog whose counters all fall due at once is covered in bounded steps, each SKU once, and a round
/// after that changes nothing (every lease fresh, every grant made).
#[tokio::test]
async fn an_escrow_tick_changes_at_most_its_bound_and_the_next_goes_on_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["A", "B", "C", "D", "E"];
    let stock: Vec<(&str, u32)> = names.iter().map(|n| (*n, 10)).collect();
    let store = common::store_with_stock(dir.path(), Limits::default(), &stock).await;
    let policy = EscrowPolicy::default();
    let tick = |after| cmd::EscrowTick { hub_reachable: true, policy, skus_max: 10, changes_max: 2, after };
    let sku = |s: &str| Sku::parse(s).unwrap();
    let mut steps = Vec::new();
    let mut after = None;
    for _ in 0..4 {
        let EscrowTicked { changed, next_after } = store.execute(tick(after.take())).await.unwrap();
        steps.push((changed, next_after.clone()));
        match next_after {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(
        steps,
        vec![
            (vec![sku("A"), sku("B")], Some(sku("B"))),
            (vec![sku("C"), sku("D")], Some(sku("D"))),
            (vec![sku("E")], None),
        ]
    );
    for name in names {
        let c = store.escrow(&sku(name)).unwrap().unwrap();
        assert!(c.lease_until_ms(Party::Hub) > 0 && c.local(Party::Hub) == 3, "{name}: {c:?}");
    }
    let EscrowTicked { changed, next_after } = store.execute(tick(None)).await.unwrap();
    assert_eq!((changed, next_after), (vec![], None), "nothing was due a second time");
    // The bound is the store's limit at most: asking for more changes no more than the limit allows.
    store.close();
    let limits = Limits { escrow_tick_changes_max: 1, ..Limits::default() };
    let dir = tempfile::tempdir().unwrap();
    let store = common::store_with_stock(dir.path(), limits, &stock).await;
    let cmd = cmd::EscrowTick { hub_reachable: true, policy, skus_max: 10, changes_max: 100, after: None };
    let EscrowTicked { changed, next_after } = store.execute(cmd).await.unwrap();
    assert_eq!((changed, next_after), (vec![sku("A")], Some(sku("A"))));
    store.close();
}

/// A site holding a million units of a SKU grants the hub its default share (three tenths) within a few
/// ticks, not in `move_units_max` (1,000) steps a tick: each step rewrites the SKU's counter into the stock
/// document the hub merges.
#[tokio::test]
async fn a_large_pool_reaches_the_hubs_share_in_a_few_ticks() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::store_with_stock(dir.path(), Limits::default(), &[("A", 1_000_000)]).await;
    let policy = EscrowPolicy::default();
    let sku = Sku::parse("A").unwrap();
    let mut ticks = 0;
    loop {
        let cmd = cmd::EscrowTick { hub_reachable: true, policy, skus_max: 10, changes_max: 10, after: None };
        let EscrowTicked { changed, .. } = store.execute(cmd).await.unwrap();
        if changed.is_empty() {
            break;
        }
        ticks += 1;
        assert!(ticks <= 10, "still granting after {ticks} ticks");
    }
    assert_eq!(ticks, 3, "100,000 units a tick towards 300,000");
    let c = store.escrow(&sku).unwrap().unwrap();
    assert_eq!((c.local(Party::Hub), c.local(Party::Site)), (300_000, 700_000));
    store.close();
}
