//! What Automerge costs per order on the assignment path today, against a per-site assignment stream (issue 17's
//! design lever), in one process, no I/O: the figures that decide how such a stream must be shaped.
//!
//! **Today** (`per-order`), per order, with the workspace's own functions: the hub builds the fulfillment
//! document (`schema::new_hub_order`) and saves it whole (what its first sync message carries); the site loads
//! it, writes its acceptance (`schema::write_order` of an accepted record) and commits; the hub applies that
//! change (`load_incremental`).
//!
//! **Stream** (`stream k=K gen=G`): one document per site and generation. The hub puts each order of a batch
//! of `K` as **one** value (the draft, postcard) keyed by order id and commits the batch as one change; the site
//! applies it, puts each order's acceptance as one value (its progress, postcard) and commits one change; the
//! hub applies that. A new generation (a fresh document, created by the hub and loaded whole by the site, both
//! counted) starts every `G` orders. Changes travel as `save_after` / `load_incremental` on both paths.
//!
//! Each round measures every variant over `BENCH_ORDERS` orders (default 8,192, so that the largest generation
//! fills; a generation is named by the orders it can hold, at most that many) and prints the µs per order of
//! each side and the ratio of the total to today's in the same round. The closing table gives the medians over
//! `BENCH_ROUNDS` rounds (default 3) of each figure, and each round's ratio: the host drifts between rounds, so
//! the median of the rounds' ratios, not the ratio of the median totals, is the figure.
//! `cargo bench -p oms-tests --bench stream_costs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::cast_precision_loss)]

use std::time::Instant;

use oms_protocol::domain::{FulfillmentState, NodeId, OrderId, Sku};
use oms_protocol::fixtures;
use oms_protocol::schema::{self, HUB_ORIGIN};
use oms_protocol::sync::automerge::{
    ActorId, AutoCommit, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, transaction::Transactable,
};
use oms_tests::stats::{env_u64, loadavg, percentile};

/// µs per order: the hub's side, the site's side.
#[derive(Clone, Copy, Default)]
struct Cost {
    hub: f64,
    site: f64,
}

impl Cost {
    fn total(self) -> f64 {
        self.hub + self.site
    }
}

fn us_per(ns: u128, orders: u64) -> f64 {
    ns as f64 / orders as f64 / 1_000.0
}

fn ids(n: u64) -> Vec<OrderId> {
    let hub = NodeId::parse(HUB_ORIGIN).unwrap();
    (1..=n).map(|i| OrderId::new(&hub, i)).collect()
}

/// Today's path, per order; with the µs per order of each step (`STEPS`).
fn per_order(n: u64) -> (Cost, [f64; 6]) {
    let hub_actor = ActorId::from(vec![1u8; 16]);
    let site_actor = ActorId::from(vec![2u8; 16]);
    let site = NodeId::parse("wh-a").unwrap();
    let sku = Sku::parse("SKU-1").unwrap();
    let mut ns = [0u128; 6];
    for id in ids(n) {
        let rec = fixtures::accepted(id.clone(), &site, &sku, 1);
        let t = Instant::now();
        let mut h = schema::new_hub_order(&hub_actor, &id, &id, &site, &rec.order, 1).unwrap();
        ns[0] += t.elapsed().as_nanos();
        let t = Instant::now();
        let whole = h.save();
        ns[1] += t.elapsed().as_nanos();
        let t = Instant::now();
        let mut s = AutoCommit::load(&whole).unwrap().with_actor(site_actor.clone());
        ns[2] += t.elapsed().as_nanos();
        let t = Instant::now();
        assert!(schema::write_order(&mut s, &site, &rec, 2).unwrap());
        s.commit();
        ns[3] += t.elapsed().as_nanos();
        let t = Instant::now();
        let change = s.save_after(&h.get_heads());
        ns[4] += t.elapsed().as_nanos();
        let t = Instant::now();
        h.load_incremental(&change).unwrap();
        ns[5] += t.elapsed().as_nanos();
        assert_eq!(schema::order_status(&h).as_deref(), Some(FulfillmentState::Accepted.as_str()));
    }
    let steps = ns.map(|x| us_per(x, n));
    (Cost { hub: steps[0] + steps[1] + steps[5], site: steps[2] + steps[3] + steps[4] }, steps)
}

/// The steps of [`per_order`]: the hub's first two and last, the site's three between.
const STEPS: [&str; 6] =
    ["hub new_hub_order", "hub save", "site load", "site write_order + commit", "site save_after", "hub apply"];

/// The stream: batches of `k` orders, a new generation every `gen` orders.
fn stream(n: u64, k: u64, gen_orders: u64) -> Cost {
    let hub_actor = ActorId::from(vec![1u8; 16]);
    let site_actor = ActorId::from(vec![2u8; 16]);
    let site = NodeId::parse("wh-a").unwrap();
    let sku = Sku::parse("SKU-1").unwrap();
    let all = ids(n);
    let (mut hub_ns, mut site_ns) = (0u128, 0u128);
    // The hub's and the site's copies of the generation's document, and its two maps.
    let mut docs: Option<(AutoCommit, AutoCommit, ObjId, ObjId)> = None;
    let mut in_gen = 0u64;
    for batch in all.chunks(usize::try_from(k).unwrap()) {
        let recs: Vec<_> = batch.iter().map(|id| fixtures::accepted(id.clone(), &site, &sku, 1)).collect();
        if docs.is_none() || in_gen >= gen_orders {
            let t = Instant::now();
            let mut h = AutoCommit::new().with_actor(hub_actor.clone());
            let assigned = h.put_object(ROOT, "assigned", ObjType::Map).unwrap();
            let accepted = h.put_object(ROOT, "accepted", ObjType::Map).unwrap();
            h.commit();
            let whole = h.save();
            hub_ns += t.elapsed().as_nanos();
            let t = Instant::now();
            let s = AutoCommit::load(&whole).unwrap().with_actor(site_actor.clone());
            site_ns += t.elapsed().as_nanos();
            docs = Some((h, s, assigned, accepted));
            in_gen = 0;
        }
        let (h, s, assigned, accepted) = docs.as_mut().unwrap();
        let t = Instant::now();
        let site_heads = s.get_heads();
        for rec in &recs {
            let draft = postcard::to_allocvec(&rec.order).unwrap();
            h.put(&*assigned, rec.id.as_str(), ScalarValue::Bytes(draft)).unwrap();
        }
        h.commit();
        let change = h.save_after(&site_heads);
        hub_ns += t.elapsed().as_nanos();
        let t = Instant::now();
        s.load_incremental(&change).unwrap();
        let hub_heads = h.get_heads();
        for rec in &recs {
            let progress = postcard::to_allocvec(&(rec.status.as_str(), &rec.lines, &rec.timeline)).unwrap();
            s.put(&*accepted, rec.id.as_str(), ScalarValue::Bytes(progress)).unwrap();
        }
        s.commit();
        let change = s.save_after(&hub_heads);
        site_ns += t.elapsed().as_nanos();
        let t = Instant::now();
        h.load_incremental(&change).unwrap();
        hub_ns += t.elapsed().as_nanos();
        assert!(h.get(&*accepted, batch[batch.len() - 1].as_str()).unwrap().is_some());
        in_gen += batch.len() as u64;
    }
    Cost { hub: us_per(hub_ns, n), site: us_per(site_ns, n) }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

fn main() {
    let n = env_u64("BENCH_ORDERS", 8_192).max(64);
    let rounds = env_u64("BENCH_ROUNDS", 3).max(1);
    let variants: Vec<(u64, u64)> =
        vec![(1, 512), (16, 256), (16, 512), (16, 2_048), (16, 8_192), (64, 512), (64, 2_048)];
    println!("stream_costs: {n} orders a variant, {rounds} rounds; machine: load {}", loadavg());
    let mut base_totals = Vec::new();
    let mut rows: Vec<(String, Vec<Cost>, Vec<f64>)> =
        variants.iter().map(|(k, g)| (format!("stream k={k} gen={}", (*g).min(n)), Vec::new(), Vec::new())).collect();
    let mut base_costs = Vec::new();
    for round in 1..=rounds {
        let (base, steps) = per_order(n);
        println!(
            "round {round}: per-order: hub {:.1} µs, site {:.1} µs, total {:.1} µs",
            base.hub,
            base.site,
            base.total()
        );
        let split: Vec<String> = STEPS.iter().zip(steps).map(|(name, us)| format!("{name} {us:.1}")).collect();
        println!("round {round}: per-order steps, µs: {}", split.join(", "));
        base_totals.push(base.total());
        base_costs.push(base);
        for ((k, g), (name, costs, ratios)) in variants.iter().zip(rows.iter_mut()) {
            let c = stream(n, *k, *g);
            let r = c.total() / base.total();
            println!(
                "round {round}: {name}: hub {:.1} µs, site {:.1} µs, total {:.1} µs = {r:.2}× per-order",
                c.hub,
                c.site,
                c.total()
            );
            costs.push(c);
            ratios.push(r);
        }
    }
    println!(
        "| path | hub µs/order | site µs/order | total µs/order | ÷ per-order, median | ÷ per-order, each round |"
    );
    println!("|---|---:|---:|---:|---:|---|");
    println!(
        "| per-order documents (today) | {:.1} | {:.1} | {:.1} | 1 | |",
        median(base_costs.iter().map(|c| c.hub).collect()),
        median(base_costs.iter().map(|c| c.site).collect()),
        median(base_totals.clone())
    );
    for (name, costs, ratios) in &rows {
        let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.2}× | {} |",
            median(costs.iter().map(|c| c.hub).collect()),
            median(costs.iter().map(|c| c.site).collect()),
            median(costs.iter().map(|c| c.total()).collect()),
            median(ratios.clone()),
            each.join(" / ")
        );
    }
    let best = rows.iter().map(|(name, _, r)| (name, median(r.clone()))).min_by(|a, b| a.1.total_cmp(&b.1));
    if let Some((name, r)) = best {
        println!(
            "stream_costs: cheapest {name} at {r:.2}× today's Automerge cost per order (median of {rounds} rounds)"
        );
    }
}
