//! Channel order → accepted by a node, end to end on loopback: a real hub and two real nodes (the `oms-it`
//! binary), certificates from `oms ca`, QUIC with mutual TLS.
//!
//! 1. Sequential: one client posts an order to the hub and polls the chosen node's `GET /v1/orders/{id}`
//!    every 1 ms until it reads `accepted`; latency from the POST's start, p50/p99/max. Same run, for
//!    scale: the hub's `201` alone.
//! 2. Throughput: `BENCH_CLIENTS` clients post `BENCH_TP_N` orders; time until every fulfillment is
//!    accepted at its node (orders/s), and per order POST → accepted p50/p99.
//!
//! The sites grant the hub a large unacknowledged budget (`[hub.escrow] unacked_max`), as `bench hub_intake`
//! does, so that no order is backordered for want of the sites' acknowledgements; `BENCH_UNACKED=50` runs
//! with a node's default budget instead, and the bench then counts the orders backordered; `BENCH_SKUS=1`
//! puts every order on one SKU (a flash sale) instead of spreading them over four.
//!
//! How a client learns that its order was accepted: by default (`BENCH_WAIT=feed`) one follower per node
//! long-polls the node's `GET /v1/events` (which answers at the commit that holds the event) and wakes the
//! client whose order it saw `accepted`, as a channel integration would follow its orders; with
//! `BENCH_WAIT=poll` each client polls `GET /v1/orders/{id}` every 1 ms, as this bench did before (on two
//! cores, 16 clients polling cost the machine some 15,000 requests a second).
//!
//! `cargo bench -p oms-tests --bench intake` (env: `BENCH_N` default 200, `BENCH_TP_N` default 1000,
//! `BENCH_CLIENTS` default 16, `BENCH_WAIT` default `feed`, `BENCH_UNACKED` default 100,000,000, `BENCH_SKUS`
//! default 4). Every loop is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::cast_precision_loss)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oms_tests::cluster::{self, ClusterNode, free_tcp, free_udp, get_json, pki};
use oms_tests::stats::{env_u64, fsync_rate, loadavg, percentile};
use serde_json::{Value, json};

const SITES: [(&str, f64, f64); 2] = [("wh-berlin", 52.52, 13.40), ("wh-munich", 48.14, 11.58)];

/// Order `n`: to Berlin if `n` is even, else to Munich; one unit of `SKU-{n mod skus}`.
fn order(n: u64, skus: u64) -> Value {
    let (lat, lon) = if n.is_multiple_of(2) { (52.5, 13.4) } else { (48.1, 11.6) };
    json!({
        "external_ref": format!("bench-{n}"), "channel": "web",
        "lines": [{"sku": format!("SKU-{}", n % skus.clamp(1, 4)), "qty": 1, "unit_price_minor": 1999, "currency": "EUR"}],
        "ship_to": {"name": "C", "line1": "1 Street", "city": "X", "postcode": "10115", "country": "DE", "lat": lat, "lon": lon}
    })
}

/// Posts order `n` until the hub takes it: its first fulfillment's id and site, or `None` if the hub
/// backordered it (placed at no site).
async fn place(c: &reqwest::Client, hub: SocketAddr, n: u64, skus: u64) -> Option<(String, String)> {
    for _ in 0..100 {
        let r = c
            .post(format!("http://{hub}/v1/orders"))
            .header("idempotency-key", format!("bench-{n}"))
            .json(&order(n, skus))
            .send()
            .await;
        if let Ok(r) = r
            && r.status().as_u16() == 201
        {
            let v: Value = r.json().await.unwrap();
            let f = &v["fulfillments"][0];
            return match (f["id"].as_str(), f["site"].as_str()) {
                (Some(id), Some(site)) => Some((id.to_owned(), site.to_owned())),
                _ if v["unfilled"].as_array().is_some_and(|u| !u.is_empty()) => None,
                _ => panic!("order {n} neither placed nor backordered: {v}"),
            };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("order {n} was not accepted by the hub");
}

/// When each order was first seen `accepted` by a node's feed follower.
#[derive(Default)]
struct Accepted {
    at: Mutex<HashMap<String, Instant>>,
    seen: tokio::sync::Notify,
}

/// Follows `node`'s event feed (long-polls of up to 1 s) until `stop`, noting each order's first `accepted`.
async fn follow(c: reqwest::Client, node: SocketAddr, accepted: Arc<Accepted>, stop: Arc<tokio::sync::Notify>) {
    let mut after = 0u64;
    loop {
        let url = format!("http://{node}/v1/events?after={after}&limit=1000&wait_ms=1000");
        let page = tokio::select! {
            v = get_json(&c, url) => v,
            () = stop.notified() => return,
        };
        let Some(page) = page else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let now = Instant::now();
        let mut any = false;
        if let Some(events) = page["events"].as_array() {
            let mut at = accepted.at.lock().unwrap();
            for e in events {
                if e["type"] == "order.changed"
                    && e["data"]["status"] == "accepted"
                    && let Some(id) = e["order_id"].as_str()
                {
                    at.entry(id.to_owned()).or_insert(now);
                    any = true;
                }
            }
        }
        if any {
            accepted.seen.notify_waiters();
        }
        after = page["next_after"].as_u64().unwrap_or(after);
    }
}

/// How a client waits for its order's acceptance (`BENCH_WAIT`).
#[derive(Clone)]
enum Wait {
    /// The feed followers' notes.
    Feed(Arc<Accepted>),
    /// `GET /v1/orders/{id}` every 1 ms.
    Poll,
}

/// Waits at most `budget` for order `id` to be accepted at `node`; returns when it was seen accepted.
async fn wait_accepted(
    c: &reqwest::Client,
    how: &Wait,
    node: SocketAddr,
    id: &str,
    budget: Duration,
) -> Option<Instant> {
    let deadline = Instant::now() + budget;
    while Instant::now() < deadline {
        match how {
            Wait::Feed(accepted) => {
                let seen = accepted.seen.notified();
                if let Some(at) = accepted.at.lock().unwrap().get(id) {
                    return Some(*at);
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), seen).await;
            }
            Wait::Poll => {
                if let Some(v) = get_json(c, format!("http://{node}/v1/orders/{id}")).await
                    && v["status"] == "accepted"
                {
                    return Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    None
}

fn report(name: &str, ms: &mut [f64]) {
    ms.sort_by(f64::total_cmp);
    println!(
        "{name}: n={} p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms.len(),
        percentile(ms, 0.5),
        percentile(ms, 0.9),
        percentile(ms, 0.99),
        ms.last().copied().unwrap_or(f64::NAN)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_u64("BENCH_N", 200);
    let tp_n = env_u64("BENCH_TP_N", 1000);
    let clients = env_u64("BENCH_CLIENTS", 16).max(1);
    let unacked = env_u64("BENCH_UNACKED", 100_000_000);
    let skus = env_u64("BENCH_SKUS", 4).clamp(1, 4);
    println!("[hub.escrow] unacked_max = {unacked} units per SKU; orders spread over {skus} SKU(s)");
    let c = oms_tests::client_builder().timeout(Duration::from_secs(20)).build().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let ids: Vec<&str> = SITES.iter().map(|s| s.0).collect();
    let certs = pki(root, &ids);
    let (quic, hub_http) = (free_udp(), free_tcp());
    let _hub = cluster::spawn_hub(root, &certs, quic, hub_http, "warn");
    let mut nodes: Vec<ClusterNode> = Vec::new();
    for (id, lat, lon) in SITES {
        // As in `bench hub_intake`: the hub may spend without waiting for the sites' acknowledgements, so the
        // figure is the order's path, not the escrow round trip's. With the default budget (50 units per SKU
        // unacknowledged) a site's acknowledgements, which come back with its coalesced stock document,
        // cap each SKU at a site near 100 orders/s, and past that the hub backorders (this bench then stops).
        let extra = format!("\n[hub.escrow]\nunacked_max = {unacked}\n\n[site]\nlat = {lat}\nlon = {lon}\n");
        let (config, http, dir) = cluster::node_config_with(root, &certs, id, quic, &extra);
        nodes.push(cluster::spawn_node_with(id, &config, http, &dir, "warn"));
    }
    for nd in &nodes {
        cluster::wait_healthy(&c, nd.http, Duration::from_secs(60)).await;
        cluster::seed(&c, nd, 4, 1_000_000).await;
    }
    cluster::wait_healthy(&c, hub_http, Duration::from_secs(60)).await;
    // Wait for the sites' grants to reach the hub.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = get_json(&c, format!("http://{hub_http}/v1/stock")).await.unwrap_or(Value::Null);
        let ok = v["skus"]
            .as_array()
            .is_some_and(|s| s.len() == 4 && s.iter().all(|k| k["hub_promisable"].as_u64().unwrap_or(0) > 0));
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "no escrow at the hub: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let node_of = |site: &str| nodes.iter().find(|nd| nd.id == site).unwrap().http;
    let stop = Arc::new(tokio::sync::Notify::new());
    let how = if std::env::var("BENCH_WAIT").is_ok_and(|w| w == "poll") {
        Wait::Poll
    } else {
        let accepted = Arc::new(Accepted::default());
        for nd in &nodes {
            tokio::spawn(follow(c.clone(), nd.http, accepted.clone(), stop.clone()));
        }
        Wait::Feed(accepted)
    };
    println!(
        "clients learn of acceptance by: {}",
        if matches!(how, Wait::Poll) { "polling every 1 ms" } else { "the nodes' event feeds" }
    );
    println!("machine: {} cores, load {}", std::thread::available_parallelism().map_or(0, |n| n.get()), loadavg());
    let (fsync_per_s, fsync_p50, fsync_p99) = fsync_rate(root, 300);
    println!(
        "raw fsync (4 KiB write + fdatasync), same disk: {fsync_per_s:.0}/s, p50 {fsync_p50:.3} ms, p99 {fsync_p99:.3} ms"
    );

    // 1. Sequential latency.
    let (mut e2e, mut post_ms) = (Vec::new(), Vec::new());
    let (mut missed, mut backordered) = (0, 0);
    for i in 0..n {
        let t0 = Instant::now();
        let placed = place(&c, hub_http, i, skus).await;
        post_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        let Some((id, site)) = placed else {
            backordered += 1;
            continue;
        };
        if let Some(at) = wait_accepted(&c, &how, node_of(&site), &id, Duration::from_secs(30)).await {
            e2e.push(at.duration_since(t0).as_secs_f64() * 1e3);
        } else {
            missed += 1;
        }
    }
    report("hub 201 (POST /v1/orders)", &mut post_ms);
    report("channel order -> accepted at the node", &mut e2e);
    println!(
        "  = {:.1} raw fsyncs at the median (hub intake commit, hub document flush, node commit, node flush, and back)",
        percentile(&e2e, 0.5) / fsync_p50
    );
    println!("missed (not accepted within 30 s): {missed}; backordered: {backordered}");

    // 2. Throughput with concurrent clients.
    let started = Instant::now();
    let per = tp_n / clients;
    let mut tasks = Vec::new();
    let sites: Arc<Vec<(String, SocketAddr)>> = Arc::new(nodes.iter().map(|nd| (nd.id.clone(), nd.http)).collect());
    for k in 0..clients {
        let (c, sites, how) = (c.clone(), sites.clone(), how.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut posts, mut backordered) = (Vec::new(), Vec::new(), 0u64);
            for j in 0..per {
                let i = 1_000_000 + k * per + j;
                let t0 = Instant::now();
                let placed = place(&c, hub_http, i, skus).await;
                posts.push(t0.elapsed().as_secs_f64() * 1e3);
                let Some((id, site)) = placed else {
                    backordered += 1;
                    continue;
                };
                let addr = sites.iter().find(|s| s.0 == site).unwrap().1;
                if let Some(at) = wait_accepted(&c, &how, addr, &id, Duration::from_secs(60)).await {
                    lat.push(at.duration_since(t0).as_secs_f64() * 1e3);
                }
            }
            (lat, posts, backordered)
        }));
    }
    let (mut all, mut posts, mut backordered) = (Vec::new(), Vec::new(), 0);
    for t in tasks {
        let (lat, p, b) = t.await.unwrap();
        all.extend(lat);
        posts.extend(p);
        backordered += b;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "throughput: {} orders with {clients} clients, all accepted in {secs:.2} s = {:.0} orders/s; backordered: \
         {backordered}",
        all.len(),
        all.len() as f64 / secs
    );
    report("  per order POST -> accepted", &mut all);
    report("  of which the hub's 201", &mut posts);
    println!("load at end {}", loadavg());
    stop.notify_waiters();
}
