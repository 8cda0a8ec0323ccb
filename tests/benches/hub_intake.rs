//! Hub intake throughput: how many channel orders the hub takes durably (`201` from `POST /v1/orders`), at 1,
//! 16 and 64 concurrent clients, with a real hub and two real nodes (the `oms-it` binary) on loopback,
//! certificates from `oms ca`, QUIC with mutual TLS, API keys as the tests provision them.
//!
//! Each `201` means the order, its idempotency record, the rights it consumed, the capacity it used, its
//! tracking token, channel index entry and audit row were committed (fsync) in `intake.redb`, and its
//! fulfillment documents written into the hub's documents (the sites get them by sync meanwhile). The raw
//! fsync rate of the same disk is measured in the same run: the ceiling of one commit per order.
//!
//! The sites grant the hub a large unacknowledged budget (`[hub.escrow] unacked_max`) so that the figure is
//! the hub's, not the escrow round trip's; the count of orders placed at a site (not backordered) is given.
//!
//! After the ratio to raw fsync come the hub's resident memory at the end of the level (`/proc`), which a
//! bounded hub keeps from growing with the orders taken; the share of the level's time the hub's documents'
//! lock was held (`oms_hub_documents_lock_held_seconds_total`), which every sync session, the intake's
//! documents thread and the watcher take: near 100 %, they wait in line for one another; and the CPU time the
//! hub and both nodes spent per order taken over the level (user and system, every thread, from `/proc`),
//! which this shared, noisy machine moves less than a throughput (contention for the cores moves it too:
//! compare medians of several rounds).
//!
//! Each level runs twice in a row: orders without payment, then orders with a card payment that the hub
//! authorizes at the in-process test provider before the `201` (an attempt row committed before the call, the
//! payment written in the order's transaction): the same run gives both, as the `payment` column says.
//!
//! `cargo bench -p oms-tests --bench hub_intake` (env: `BENCH_SECS` per level, default 8; `BENCH_LEVELS`,
//! default `1,16,64`; `BENCH_PAYMENTS=0` runs only the orders without payment; `BENCH_UNACKED` sets the
//! sites' `unacked_max`, default 100,000,000 (a node's own default is 50); `BENCH_DETACH=1` stops the nodes
//! once they granted their rights, to measure the hub alone while its lease lasts: keep the run under
//! 30 s; `BENCH_SKUS` the SKUs in each site's catalog that the orders spread over, default 8; `BENCH_UNITS` the
//! units of each SKU each site is seeded with, default 1,000,000: the sites grant the hub at most
//! `move_units_max` (1,000) a SKU a second, so with a million a SKU they grant on every SKU every second through
//! the whole run, while a catalog stocked in thousands reaches its target share within a few seconds). Every
//! loop is bounded by time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::cast_precision_loss)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use oms_tests::cluster::{self, ClusterNode, free_tcp, free_udp, get_json, pki};
use oms_tests::stats::{env_u64, fsync_rate, loadavg, percentile};
use serde_json::{Value, json};

const SITES: [(&str, f64, f64); 2] = [("wh-berlin", 52.52, 13.40), ("wh-munich", 48.14, 11.58)];
/// SKUs in each site's catalog, the orders spread over them (`BENCH_SKUS`, default 8). The hub's escrow view
/// of a site holds one counter per SKU it has sold there, so a large catalog makes that document large.
static SKUS: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| env_u64("BENCH_SKUS", 8).max(1));

/// CPU seconds both nodes have used so far (0 for a node that was stopped: `BENCH_DETACH`).
fn nodes_cpu(nodes: &[ClusterNode]) -> f64 {
    nodes.iter().map(|n| n.proc.cpu_secs()).filter(|s| s.is_finite()).sum()
}

fn order(n: u64, card: bool) -> Value {
    let (lat, lon) = if n.is_multiple_of(2) { (52.5, 13.4) } else { (48.1, 11.6) };
    let mut o = json!({
        "external_ref": format!("bench-{n}"), "channel": "web",
        "lines": [{"sku": format!("SKU-{}", n % *SKUS), "qty": 1, "unit_price_minor": 1999, "currency": "EUR"}],
        "ship_to": {"name": "C", "line1": "1 Street", "city": "X", "postcode": "10115", "country": "DE", "lat": lat, "lon": lon}
    });
    if card {
        o["payment"] = json!({"method": "card", "provider": "test", "token": "tok_bench"});
    }
    o
}

/// What one level measured.
struct Level {
    clients: u64,
    created: usize,
    placed: usize,
    errors: usize,
    secs: f64,
    lat_ms: Vec<f64>,
}

/// `clients` clients post orders (with a card payment if `card`) for `secs` seconds; every order gets a fresh
/// idempotency key.
async fn level(c: &reqwest::Client, hub: SocketAddr, clients: u64, secs: u64, base: u64, card: bool) -> Level {
    let started = Instant::now();
    let stop = started + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for k in 0..clients {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut placed, mut errors) = (Vec::new(), 0usize, 0usize);
            let mut j = 0u64;
            while Instant::now() < stop {
                let n = base + k * 10_000_000 + j;
                j += 1;
                let body = serde_json::to_vec(&order(n, card)).unwrap();
                let t0 = Instant::now();
                let r = c
                    .post(format!("http://{hub}/v1/orders"))
                    .header("idempotency-key", format!("hb-{n}"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().as_u16() == 201 => {
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        lat.push(t0.elapsed().as_secs_f64() * 1e3);
                        if v["fulfillments"].as_array().is_some_and(|f| !f.is_empty()) {
                            placed += 1;
                        }
                    }
                    _ => errors += 1,
                }
            }
            (lat, placed, errors)
        }));
    }
    let mut out = Level { clients, created: 0, placed: 0, errors: 0, secs: 0.0, lat_ms: Vec::new() };
    for t in tasks {
        let (lat, placed, errors) = t.await.unwrap();
        out.created += lat.len();
        out.placed += placed;
        out.errors += errors;
        out.lat_ms.extend(lat);
    }
    out.secs = started.elapsed().as_secs_f64();
    out.lat_ms.sort_by(f64::total_cmp);
    out
}

/// (write transactions, orders in them, seconds the documents' lock was held) from the hub's `/metrics`.
async fn batches(c: &reqwest::Client, hub: SocketAddr) -> (u64, u64, f64) {
    let text = match c.get(format!("http://{hub}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("oms_hub_intake_commits_total") as u64,
        value("oms_hub_intake_orders_total") as u64,
        value("oms_hub_documents_lock_held_seconds_total"),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs = env_u64("BENCH_SECS", 8);
    let levels: Vec<u64> = std::env::var("BENCH_LEVELS")
        .unwrap_or_else(|_| "1,16,64".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let c = oms_tests::client_builder().timeout(Duration::from_secs(20)).pool_max_idle_per_host(256).build().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let ids: Vec<&str> = SITES.iter().map(|s| s.0).collect();
    let certs = pki(root, &ids);
    let (quic, hub_http) = (free_udp(), free_tcp());
    // The test admin key (`install_admin_key`) may send 1,000,000 requests/s; 64 clients stay below the
    // per-key in-flight cap, raised anyway so that a larger BENCH_LEVELS is not refused.
    let hub = cluster::spawn_hub_with(
        root,
        &certs,
        quic,
        hub_http,
        "warn",
        "[auth]\nin_flight_per_key = 1024\n[payments]\nin_flight_max = 1024\n[payments.providers.test]\nkind = \"test\"\n",
    );
    let mut nodes: Vec<ClusterNode> = Vec::new();
    let unacked = env_u64("BENCH_UNACKED", 100_000_000);
    let units = env_u64("BENCH_UNITS", 1_000_000);
    println!("[hub.escrow] unacked_max = {unacked} units per SKU");
    for (id, lat, lon) in SITES {
        // `[hub.escrow]` right after the `[hub]` keys: the hub may spend without waiting for acknowledgements.
        // A site ships at most `capacity_per_day` orders a day (default 10,000): past it the hub backorders,
        // which costs it less than placing. The bench's sites take all it can send.
        let extra = format!(
            "\n[hub.escrow]\nunacked_max = {unacked}\n\n[site]\nlat = {lat}\nlon = {lon}\ncapacity_per_day = 10000000\n"
        );
        let (config, http, dir) = cluster::node_config_with(root, &certs, id, quic, &extra);
        nodes.push(cluster::spawn_node_with(id, &config, http, &dir, "warn"));
    }
    for nd in &nodes {
        cluster::wait_healthy(&c, nd.http, Duration::from_secs(60)).await;
        cluster::seed(&c, nd, *SKUS as usize, units).await;
    }
    println!("{} SKUs in each site's catalog, seeded", *SKUS);
    cluster::wait_healthy(&c, hub_http, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    // Nine SKUs spread over the catalog (all of them when it is small), each asked for alone: a large
    // catalog's listing would take pages.
    let mut probes: Vec<u64> = (0..8).map(|i| i * *SKUS / 8).chain([*SKUS - 1]).collect();
    probes.dedup();
    // Both sites' budgets, or the large grant when the budget is not what bounds it; with a large catalog the
    // sites' grants ramp up over many ticks, and a thousand units a SKU outlast a level.
    // A tenth of what a site holds at most: the hub's default share is three tenths.
    let want = if *SKUS > 64 { 1_000 } else { (2 * unacked).min(100_001) }.min(units / 10).max(1);
    loop {
        let mut ok = true;
        let mut last = Value::Null;
        for p in &probes {
            let v = get_json(&c, format!("http://{hub_http}/v1/stock?sku=SKU-{p}")).await.unwrap_or(Value::Null);
            ok &= v["skus"]
                .as_array()
                .is_some_and(|s| s.len() == 1 && s.iter().all(|k| k["hub_promisable"].as_u64().unwrap_or(0) >= want));
            last = v;
        }
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "no escrow at the hub: {last}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if env_u64("BENCH_DETACH", 0) == 1 {
        // Diagnostic: the hub alone. The sites granted their rights (the hub may spend them until its lease
        // ends, at least 30 s from now); with the nodes gone, no CPU goes to syncing and accepting the
        // fulfillments, so the figure is the hub's intake (HTTP, commit, fulfillment documents) by itself.
        for nd in &mut nodes {
            nd.proc.kill9();
        }
        println!("nodes stopped after granting: the hub alone (BENCH_DETACH=1)");
    }
    println!("machine: {} cores, load {}", std::thread::available_parallelism().map_or(0, |n| n.get()), loadavg());
    let (fsync_per_s, fsync_p50, fsync_p99) = fsync_rate(root, 300);
    println!(
        "raw fsync (4 KiB write + fdatasync), same disk: {fsync_per_s:.0}/s, p50 {fsync_p50:.3} ms, p99 {fsync_p99:.3} ms"
    );
    // Warm-up: connections, caches.
    let _ = level(&c, hub_http, 4, 1, 900_000_000_000, false).await;
    let _ = level(&c, hub_http, 4, 1, 950_000_000_000, true).await;
    let payments = env_u64("BENCH_PAYMENTS", 1) == 1;
    println!(
        "| clients | payment | orders/s (201) | placed | p50 ms | p99 ms | errors | orders per commit | ÷ raw fsync | hub RSS MB | documents' lock held | hub CPU µs/order | nodes CPU µs/order |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut last = None;
    for (i, &clients) in levels.iter().enumerate() {
        let mut none = None;
        for card in [false, true] {
            if card && !payments {
                continue;
            }
            let (c0, o0, h0) = batches(&c, hub_http).await;
            let (hub_cpu0, nodes_cpu0) = (hub.proc.cpu_secs(), nodes_cpu(&nodes));
            let base = (i as u64 + 1) * 1_000_000_000_000 + if card { 500_000_000_000 } else { 0 };
            let l = level(&c, hub_http, clients, secs, base, card).await;
            let (c1, o1, h1) = batches(&c, hub_http).await;
            // CPU per order (µs) of the hub and of both nodes over the level: what the order cost the machine.
            let per_order = |cpu: f64| cpu * 1e6 / l.created.max(1) as f64;
            let hub_us = per_order(hub.proc.cpu_secs() - hub_cpu0);
            let nodes_us = per_order(nodes_cpu(&nodes) - nodes_cpu0);
            // The share of the level's time the documents' lock was held (1.0: never free).
            let held = (h1 - h0) / l.secs;
            let rate = l.created as f64 / l.secs;
            let per_commit = if c1 > c0 { (o1 - o0) as f64 / (c1 - c0) as f64 } else { f64::NAN };
            let (p50, p99) = (percentile(&l.lat_ms, 0.5), percentile(&l.lat_ms, 0.99));
            println!(
                "| {} | {} | {rate:.0} | {} | {p50:.2} | {p99:.2} | {} | {per_commit:.1} | {:.2} | {:.0} | {:.0} % | {hub_us:.0} | {nodes_us:.0} |",
                l.clients,
                if card { "card" } else { "none" },
                l.placed,
                l.errors,
                rate / fsync_per_s,
                hub.proc.rss_mb(),
                held * 100.0
            );
            match (card, none) {
                (false, _) => none = Some((rate, p50, p99)),
                (true, Some((r0, m0, q0))) => println!(
                    "  card ÷ none at {clients} clients: orders/s {:.2}x, p50 {:.2}x, p99 {:.2}x",
                    rate / r0,
                    p50 / m0,
                    p99 / q0
                ),
                (true, None) => {}
            }
            last = Some((clients, rate, p99));
        }
    }
    println!("load at end {}", loadavg());
    if let Some((clients, rate, p99)) = last {
        println!(
            "hub intake at {clients} clients: {rate:.0} orders/s, p99 {p99:.2} ms, {:.2}x the raw fsync rate ({fsync_per_s:.0}/s)",
            rate / fsync_per_s
        );
    }
}
