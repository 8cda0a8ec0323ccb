//! Routing throughput and latency on one thread: 50 sites × 10,000 SKUs, 5-line orders, max split 3,
//! seeded random stock and locations. Plain `harness = false` bench so it needs no extra dependency;
//! prints decisions/s, median and p99 latency. Run with `cargo bench -p oms-hub --bench routing`.
//!
//! "schedules on" gives every site a shipping schedule (three time zones, two services, a closure) and, per
//! order, computes every site's promise first, as the intake does for each order it routes, then routes with
//! the promises in the ranking; "schedules off" is the same index without them, in the same run. Each order
//! moves the clock on 50 ms and adds one shipment to one site's open work (round robin), so promises change
//! as they would in a day's routing. "uncached" computes each promise (`site_promise`, what the intake did
//! before the cache); "cached" asks the schedule's cache (`Schedule::promise`, what the intake does), which
//! gives the same answers (checked at the end).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use oms_hub::routing::{
    RouteLine, RouteRequest, RoutingDecision, RoutingPolicy, SiteTable, SiteView, route, route_indexed,
};
use oms_protocol::domain::{GeoPoint, NodeId, Sku};
use oms_protocol::shipping::{OpenWork, Schedule, ServiceSchedule, ShippingSchedule, Weekday, site_promise};

const SITES: usize = 50;
const SKUS: usize = 10_000;
const LINES: usize = 5;
const ORDERS: usize = 20_000;
/// A routing entry point under test.
type Router<'a> = &'a dyn Fn(&RouteRequest, &RoutingPolicy) -> RoutingDecision;

const SEED: u64 = 0x0005_eed0_4047_1e55;

/// SplitMix64: a tiny seeded generator, so the bench needs no RNG crate and every run sees the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (self.next() >> 11) as f64 / (1u64 << 53) as f64 * (hi - lo)
    }
}

fn point(rng: &mut Rng) -> GeoPoint {
    // Roughly continental Europe.
    GeoPoint { lat: rng.range(36.0, 60.0), lon: rng.range(-9.0, 30.0) }
}

fn main() {
    let mut rng = Rng(SEED);
    let skus: Vec<Sku> = (0..SKUS).map(|i| Sku::parse(&format!("SKU-{i:05}")).expect("valid sku")).collect();
    let sites: Vec<SiteView> = (0..SITES)
        .map(|i| {
            // Each site holds escrow for about 60% of the catalogue, 1 to 20 units each.
            let mut promisable: HashMap<Sku, u32> = HashMap::new();
            for s in &skus {
                if rng.below(10) < 6 {
                    promisable.insert(s.clone(), 1 + rng.below(20) as u32);
                }
            }
            SiteView {
                id: NodeId::parse(&format!("site-{i:02}")).expect("valid id"),
                location: point(&mut rng),
                priority: rng.below(3) as u32,
                capacity_left_shipments: 1 + rng.below(500) as u32,
                region: "eu".into(),
                reachable: rng.below(10) != 0,
                last_heard_age_ms: rng.below(30 * 60 * 1000),
                promisable,
                promise: None,
            }
        })
        .collect();
    let orders: Vec<RouteRequest> = (0..ORDERS)
        .map(|_| {
            let mut lines: Vec<RouteLine> = Vec::with_capacity(LINES);
            while lines.len() < LINES {
                let sku = &skus[rng.below(SKUS as u64) as usize];
                if lines.iter().all(|l| l.sku != *sku) {
                    lines.push(RouteLine { sku: sku.clone(), qty: 1 + rng.below(3) as u32 });
                }
            }
            RouteRequest { lines, ship_to: point(&mut rng), region: None }
        })
        .collect();

    let table = SiteTable::new(sites.clone());
    // 2026-12-01 12:00 UTC, a Tuesday: some sites make today's cut-off, others not.
    const NOW_MS: u64 = 1_796_126_400_000;
    let schedules: Vec<Schedule> = (0..SITES)
        .map(|i| {
            let service = |carrier: &str, days: &[Weekday], hour: u64| ServiceSchedule {
                carrier: carrier.into(),
                service: "parcel".into(),
                pickup_days: days.to_vec(),
                cutoff: format!("{hour:02}:00"),
                transit_days: 2,
            };
            ShippingSchedule {
                time_zone: ["Europe/Berlin", "Europe/Lisbon", "Europe/Helsinki"][i % 3].into(),
                handling_minutes: 30 + rng.below(120) as u32,
                minutes_per_shipment: rng.below(3) as u32,
                closures: vec!["2026-12-25".into()],
                schedules: vec![
                    service("dhl", &Weekday::ALL[..5], 10 + rng.below(9)),
                    service("ups", &Weekday::ALL[..6], 10 + rng.below(9)),
                ],
            }
            .compile()
            .expect("valid schedule")
        })
        .collect();
    let promises = |open: u64| -> Vec<_> {
        schedules.iter().map(|s| site_promise(s, NOW_MS, OpenWork { shipments: open })).collect()
    };
    let table_scheduled =
        SiteTable::new(sites.iter().zip(promises(10)).map(|(s, promise)| SiteView { promise, ..s.clone() }).collect());
    // The day's clock and each site's open work, advanced per order (reset at the start of each run).
    let clock = Cell::new(0u64);
    let open_work: RefCell<Vec<u64>> = RefCell::new(vec![10; SITES]);
    let reset = || {
        clock.set(0);
        open_work.borrow_mut().iter_mut().for_each(|o| *o = 10);
    };
    let schedules_cached: Vec<Schedule> = schedules.clone(); // a clone starts with an empty cache
    let promises_now = |cached: bool| -> Vec<_> {
        let i = clock.get();
        clock.set(i + 1);
        let now = NOW_MS + i * 50;
        let mut open = open_work.borrow_mut();
        open[(i as usize) % SITES] += 1;
        let set = if cached { &schedules_cached } else { &schedules };
        set.iter()
            .zip(open.iter())
            .map(|(s, o)| {
                let open = OpenWork { shipments: *o };
                if cached { s.promise(now, open) } else { site_promise(s, now, open) }
            })
            .collect::<Vec<_>>()
    };
    let whole = RoutingPolicy::default();
    let split = RoutingPolicy { split_lines: true, ..RoutingPolicy::default() };
    let runs: [(&str, &RoutingPolicy, Router); 7] = [
        ("route, per-site maps, whole lines", &whole, &|o, p| route(o, &sites, p)),
        ("route, per-site maps, split lines", &split, &|o, p| route(o, &sites, p)),
        ("route_indexed, whole lines", &whole, &|o, p| route_indexed(o, &table, p)),
        ("route_indexed, split lines", &split, &|o, p| route_indexed(o, &table, p)),
        ("route_indexed, whole lines, schedules off", &whole, &|o, p| route_indexed(o, &table, p)),
        (
            "route_indexed, whole lines, schedules on, uncached (every site's promise computed per order)",
            &whole,
            &|o, p| {
                black_box(promises_now(false));
                route_indexed(o, &table_scheduled, p)
            },
        ),
        ("route_indexed, whole lines, schedules on, cached (every site's promise asked per order)", &whole, &|o, p| {
            black_box(promises_now(true));
            route_indexed(o, &table_scheduled, p)
        }),
    ];
    for (name, policy, run) in runs {
        reset();
        // Warm-up: caches, allocator, branch predictors.
        for o in orders.iter().take(2_000) {
            black_box(run(black_box(o), policy));
        }
        let mut latencies: Vec<Duration> = Vec::with_capacity(ORDERS);
        let mut outcomes: HashMap<String, usize> = HashMap::new();
        let started = Instant::now();
        for o in &orders {
            let t = Instant::now();
            let d = black_box(run(black_box(o), policy));
            latencies.push(t.elapsed());
            *outcomes.entry(format!("{:?}", d.outcome)).or_default() += 1;
        }
        let total = started.elapsed();
        latencies.sort_unstable();
        let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
        let mut outcomes: Vec<_> = outcomes.into_iter().collect();
        outcomes.sort();
        println!(
            "{name}: {SITES} sites x {SKUS} SKUs, {LINES}-line orders, max split {}, {ORDERS} orders\n  \
             throughput {:.0} decisions/s (1 thread)\n  \
             latency median {:.1} us, p99 {:.1} us, max {:.1} us\n  outcomes {:?}",
            policy.max_split,
            ORDERS as f64 / total.as_secs_f64(),
            pct(0.5).as_secs_f64() * 1e6,
            pct(0.99).as_secs_f64() * 1e6,
            latencies[latencies.len() - 1].as_secs_f64() * 1e6,
            outcomes,
        );
    }
    // The cache must give the uncached answers, on the clock and open work the runs went through and beyond.
    reset();
    let fresh: Vec<Schedule> = schedules.clone();
    for i in 0..2_000u64 {
        let now = NOW_MS + i * 600;
        for (n, (s, f)) in schedules_cached.iter().zip(&fresh).enumerate() {
            let open = OpenWork { shipments: 10 + (i + n as u64) % 500 };
            let want = site_promise(s, now, open);
            assert_eq!(s.promise(now, open), want, "the cached promise disagrees");
            assert_eq!(f.promise(now, open), want, "the cached promise disagrees");
        }
    }
    // Both paths must agree; a bench that measured a wrong answer would be worthless.
    for o in orders.iter().take(1_000) {
        assert_eq!(route(o, &sites, &whole), route_indexed(o, &table, &whole), "indexed routing disagrees");
    }
}
