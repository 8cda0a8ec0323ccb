//! Planner reads against sync, and a start over many finished orders (issue 17, items 3 and 4).
//!
//! In one process, on a hub built from its library parts over a seeded `hub.redb`: `BENCH_ORDERS` (default
//! 200,000) order documents of 4 sites (delivered, over the last 90 days, 40 SKUs) and the 4 sites' stock
//! documents, labelled as the hub labels them, written before the hub opens the file.
//!
//! 1. **Start**: `DocDb::open` + `HubDocs::new` + `Intake::open` + `Hub::new` + `orders::recover`, i.e. what
//!    `oms hub` does before it serves HTTP; then the demand ledger's first read of every order (`warm`,
//!    which the hub runs in the background after start).
//! 2. **Sync under reads**: one "session" changes an order document the way a node's change lands (under the
//!    documents' lock) and waits until it is durable (`server::flush_docs`, the sessions' flush), over and
//!    over for `BENCH_SECS` (default 5): first with no readers, then while `BENCH_READERS` (default 8) threads
//!    ask for a forecast (a random SKU), the replenishment run and a stock page in turn. Each round trip is
//!    timed; the figure is p50/p99 with readers against without, and the readers' requests per second.
//!
//! The readers go through the hub's gate on planner reads (`oms_hub::gate`, as the handlers do): one fewer
//! at once than the machine has cores; `BENCH_READ_SLOTS=<n>` sets another bound (8 = no bound for 8 readers).
//!
//! `BENCH_START_ONLY=1` stops after the start: it starts the hub over the seeded files `BENCH_STARTS` times
//! (default 3, at most 20), dropping it in between, and prints each start and the median (the figure of issue
//! 17 item 4: start to healthy with `BENCH_ORDERS=1000000` finished orders stored).
//!
//! `cargo bench -p oms-hub --bench reads` (`--profile dev` to reuse a debug build). Every loop is bounded in
//! count or time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::cast_precision_loss)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use oms_hub::docs::HubDocs;
use oms_hub::forecast_config::ForecastConfig;
use oms_hub::server::{Hub, ServerTuning};
use oms_protocol::domain::{Balance, FulfillmentState, NodeId, OrderDraft, OrderId, Sku};
use oms_protocol::records::{FulfillmentLine, OrderRecord, TimelineEntry};
use oms_protocol::schema;
use oms_sync::DocDb;

const SITES: [&str; 4] = ["wh-a", "wh-b", "wh-c", "wh-d"];
const SKUS: u64 = 40;
const DAY_MS: u64 = 86_400_000;
/// Documents per flush while seeding (bounds the seeder's memory).
const SEED_CHUNK: u64 = 2_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn draft(n: u64) -> OrderDraft {
    serde_json::from_value(serde_json::json!({
        "external_ref": format!("web-{n}"), "channel": "web",
        "lines": [{"sku": format!("SKU-{}", n % SKUS), "qty": 1 + n % 3, "unit_price_minor": 1999, "currency": "EUR"}],
        "ship_to": {"name": "C", "line1": "1 Street", "city": "Berlin", "postcode": "10115", "country": "DE",
                    "lat": 52.5, "lon": 13.4}
    }))
    .unwrap()
}

/// Order `n` of `site`, accepted `age_days` ago; delivered unless `open`.
fn record(site: &NodeId, n: u64, now: u64, open: bool, step: u64) -> OrderRecord {
    let d = draft(n);
    let created_at_ms = now - (1 + n % 90) * DAY_MS;
    let mut timeline =
        vec![TimelineEntry { at_ms: created_at_ms, status: FulfillmentState::Accepted, note: String::new() }];
    let status = if open {
        FulfillmentState::Picking
    } else {
        timeline.push(TimelineEntry {
            at_ms: created_at_ms + DAY_MS / 2,
            status: FulfillmentState::Shipped,
            note: String::new(),
        });
        timeline.push(TimelineEntry {
            at_ms: created_at_ms + DAY_MS,
            status: FulfillmentState::Delivered,
            note: String::new(),
        });
        FulfillmentState::Delivered
    };
    let lines = d
        .lines
        .iter()
        .map(|l| FulfillmentLine {
            sku: l.sku.clone(),
            qty: l.qty,
            picked: Some(l.qty),
            shipped: if open { 0 } else { l.qty },
            returned: 0,
        })
        .collect();
    if open {
        timeline.push(TimelineEntry {
            at_ms: created_at_ms + step,
            status: FulfillmentState::Picking,
            note: format!("{step}"),
        });
    }
    OrderRecord {
        id: OrderId::new(site, n),
        site: site.clone(),
        status,
        order: d,
        lines,
        wave: None,
        parcels: None,
        shipment: None,
        returns: vec![],
        timeline,
        created_at_ms,
    }
}

/// Writes `orders` order documents and the sites' stock into `path`, labelled with the sites' party numbers.
fn seed(path: &std::path::Path, orders: u64, now: u64) {
    let mut db = DocDb::open(path, vec![5; 16], usize::try_from(orders).unwrap() + 1_000).unwrap();
    db.set_cache_max(64);
    let sites: Vec<NodeId> = SITES.iter().map(|s| NodeId::parse(s).unwrap()).collect();
    for (i, s) in sites.iter().enumerate() {
        db.set_meta(&format!("party|{s}"), i as u64 + 1);
        let name = schema::stock_doc(s).unwrap();
        for k in 0..SKUS {
            let b = Balance { on_hand: 1_000 + k, reserved: k, staged: 0 };
            schema::write_stock(
                db.get_or_create(&name).unwrap(),
                s,
                &Sku::parse(&format!("SKU-{k}")).unwrap(),
                &b,
                now,
            )
            .unwrap();
        }
        db.mark_dirty(&name);
    }
    for n in 0..orders {
        let i = usize::try_from(n).unwrap() % sites.len();
        let site = &sites[i];
        let rec = record(site, n, now, false, 0);
        let name = schema::order_doc(&rec.id).unwrap();
        schema::write_order(db.get_or_create(&name).unwrap(), site, &rec, now).unwrap();
        db.mark_dirty(&name);
        let p = i as u64 + 1;
        db.set_label(&name, (p << 32) | p);
        if n % SEED_CHUNK == SEED_CHUNK - 1 {
            db.flush().unwrap();
        }
    }
    db.flush().unwrap();
}

fn start(dir: &std::path::Path) -> Hub {
    let t = Instant::now();
    let db = DocDb::open(&dir.join("hub.redb"), vec![6; 16], 5_000_000).unwrap();
    let opened = t.elapsed();
    let docs = HubDocs::new(db).unwrap();
    println!(
        "  of which DocDb::open {:.3} s, HubDocs::new (parties, usage, per-site counts) {:.3} s",
        opened.as_secs_f64(),
        (t.elapsed() - opened).as_secs_f64()
    );
    let intake = oms_hub::intake::Intake::open(&dir.join("intake.redb"), Default::default()).unwrap();
    oms_hub::events::init(intake.db()).unwrap();
    let purchasing = oms_hub::purchasing::Purchasing::new(Default::default(), dir, intake.db()).unwrap();
    let money = oms_hub::money::Money::new(Default::default(), Default::default()).unwrap();
    let hub = Hub::new(docs, intake, money, purchasing, "acme", vec![6; 16], ServerTuning::default()).unwrap();
    oms_hub::orders::recover(&hub).unwrap();
    hub
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One "session" changing open orders and waiting for each change to be durable, for `secs`; the round
/// trips in ms, sorted, and the waits for the documents' lock before each change, sorted.
fn sync_rounds(hub: &Arc<Hub>, rt: &tokio::runtime::Runtime, secs: u64, now: u64, first: u64) -> (Vec<f64>, Vec<f64>) {
    let site = NodeId::parse(SITES[0]).unwrap();
    let mut out = Vec::new();
    let mut waits = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut step = first;
    while Instant::now() < end && out.len() < 1_000_000 {
        step += 1;
        // 200 open orders of the first site, numbered after the seeded ones, changed in turn.
        let rec = record(&site, 10_000_000 + step % 200, now, true, step);
        let name = schema::order_doc(&rec.id).unwrap();
        let t = Instant::now();
        let mut docs = hub.docs.lock();
        waits.push(t.elapsed().as_secs_f64() * 1e3);
        docs.write_local(&name, |d| schema::write_order(d, &site, &rec, now + step)).unwrap();
        drop(docs);
        rt.block_on(oms_hub::server::flush_docs(hub)).unwrap();
        out.push(t.elapsed().as_secs_f64() * 1e3);
    }
    out.sort_by(f64::total_cmp);
    waits.sort_by(f64::total_cmp);
    (out, waits)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let orders = env_u64("BENCH_ORDERS", 200_000);
    let secs = env_u64("BENCH_SECS", 5);
    let readers = env_u64("BENCH_READERS", 8);
    let tmp = tempfile::tempdir().unwrap();
    // `BENCH_DIR` keeps the seeded files for the next run (seeded only if it holds no `hub.redb` yet).
    let dir = std::env::var("BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| tmp.path().to_owned());
    std::fs::create_dir_all(&dir).unwrap();
    let now = oms_service::now_ms();
    let today = now / DAY_MS;
    let t = Instant::now();
    if dir.join("hub.redb").exists() {
        println!("reusing the seeded files in {}", dir.display());
    } else {
        seed(&dir.join("hub.redb"), orders, now);
        let secs = t.elapsed().as_secs_f64();
        println!("seeded {orders} delivered order documents of {} sites in {secs:.1} s", SITES.len());
    }
    let dir = dir.as_path();

    if env_u64("BENCH_START_ONLY", 0) == 1 {
        let mut starts = Vec::new();
        for i in 0..env_u64("BENCH_STARTS", 3).clamp(1, 20) {
            let t = Instant::now();
            let hub = start(dir);
            let secs = t.elapsed().as_secs_f64();
            println!("start {}: {secs:.3} s", i + 1);
            starts.push(secs);
            drop(hub);
        }
        starts.sort_by(f64::total_cmp);
        println!(
            "hub start at {orders} finished orders: median {:.3} s over {} starts (min {:.3} s, max {:.3} s)",
            pct(&starts, 0.5),
            starts.len(),
            starts[0],
            starts[starts.len() - 1]
        );
        return;
    }

    let t = Instant::now();
    let mut hub = start(dir);
    // The planner reads' gate (`oms_hub::gate`): as the hub sets it for this machine, or `BENCH_READ_SLOTS`
    // slots (e.g. as many as the readers, to measure without it).
    if let Some(slots) = std::env::var("BENCH_READ_SLOTS").ok().and_then(|v| v.parse().ok()) {
        hub.planner_reads = oms_hub::gate::ReadGate::new(slots, Duration::from_millis(oms_hub::gate::READ_WAIT_MAX_MS));
    }
    println!("planner read slots: {}", hub.planner_reads.max());
    let hub = Arc::new(hub);
    let started = t.elapsed();
    println!("start (open hub.redb and intake.redb, parties, recover): {:.3} s", started.as_secs_f64());
    let t = Instant::now();
    hub.demand.warm(&hub.docs);
    println!(
        "demand ledger's first read of every order (background after start): {:.2} s, {} documents",
        t.elapsed().as_secs_f64(),
        hub.demand.docs_read()
    );

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (base, base_waits) = sync_rounds(&hub, &rt, secs, now, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let config = Arc::new(ForecastConfig::default());
    let threads: Vec<_> = (0..readers)
        .map(|r| {
            let (hub, stop, served, config) = (hub.clone(), stop.clone(), served.clone(), config.clone());
            std::thread::spawn(move || {
                // Each reader awaits its reads as a handler does, on a runtime of its own.
                let reader = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
                let mut n = r;
                // Bounded by time (the flag) and by count.
                while !stop.load(Ordering::Relaxed) && n < 100_000_000 {
                    n += readers;
                    let q: HashMap<String, String> = HashMap::new();
                    match n % 3 {
                        0 => {
                            let sku = format!("SKU-{}", n % SKUS);
                            let (h, config) = (hub.clone(), config.clone());
                            let _ = reader.block_on(hub.planner_reads.read(move || {
                                oms_hub::forecast_api::forecast_answer(&h.demand, &h, &config, &sku, &q, today)
                            }));
                        }
                        1 => {
                            let (h, config) = (hub.clone(), config.clone());
                            let _ = reader.block_on(hub.planner_reads.read(move || {
                                oms_hub::forecast_api::replenishment_answer(&h.demand, &h, &config, &q, today)
                            }));
                        }
                        _ => {
                            let h = hub.clone();
                            let _ =
                                reader.block_on(hub.planner_reads.read(move || {
                                    oms_hub::api::stock_page(&h, None, None, 1_000, oms_service::now_ms())
                                }));
                        }
                    }
                    served.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let t = Instant::now();
    let (loaded, loaded_waits) = sync_rounds(&hub, &rt, secs, now, 1_000_000);
    let elapsed = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for th in threads {
        th.join().unwrap();
    }
    let reads = served.load(Ordering::Relaxed);
    println!(
        "sync round trip, no readers: {} rounds, p50 {:.2} ms, p99 {:.2} ms; wait for the documents' lock p99 {:.3} ms, max {:.3} ms",
        base.len(),
        pct(&base, 0.5),
        pct(&base, 0.99),
        pct(&base_waits, 0.99),
        pct(&base_waits, 1.0)
    );
    println!(
        "sync round trip, {readers} readers (forecast, replenishment, stock page): {} rounds, p50 {:.2} ms, p99 {:.2} ms; \
         wait for the documents' lock p99 {:.3} ms, max {:.3} ms; readers served {:.0} requests/s",
        loaded.len(),
        pct(&loaded, 0.5),
        pct(&loaded, 0.99),
        pct(&loaded_waits, 0.99),
        pct(&loaded_waits, 1.0),
        reads as f64 / elapsed
    );
    println!(
        "hub reads at {orders} orders: sync p99 with {readers} readers {:.2} ms vs {:.2} ms without, ratio {:.2}x; start {:.3} s",
        pct(&loaded, 0.99),
        pct(&base, 0.99),
        pct(&loaded, 0.99) / pct(&base, 0.99),
        started.as_secs_f64()
    );
}
