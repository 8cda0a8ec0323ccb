//! Sync figures for bench/sync/RESULTS.md: real `oms` hub and node processes (the `oms-it` binary), real QUIC
//! with `oms ca` certificates on loopback, each node talking to the hub through a byte-counting UDP forwarder
//! in this process (which can also blackhole the path).
//!
//! 1. Latency node 201 → order visible at the hub's `GET /v1/orders/{id}` (polled every 1 ms), p50/p99.
//! 2. UDP payload bytes (both directions) per new order during a steady stream, against the postcard size of
//!    the drafts sent, with deflate and (a second node that does not announce it) without, in the same run.
//! 3. Catch-up: blackhole, 10,000 orders at the node with 32 concurrent clients, heal, time until the hub
//!    lists all of them.
//! 4. Hub RSS with K nodes × M open orders.
//!
//! `cargo bench -p oms-tests --bench sync` (env: `BENCH_LAT_N` default 300, `BENCH_BYTES_N` default 500,
//! `BENCH_CATCHUP_N` default 10000, `BENCH_K` default 4, `BENCH_M` default 2500). Every loop is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::cast_precision_loss)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use oms_tests::cluster::{self, ClusterNode, HubProc, free_tcp, free_udp, get_json, pki};
use oms_tests::stats::{env_u64, loadavg, percentile};
use serde_json::{Value, json};
use tokio::net::UdpSocket;

// ---- process helpers: tests/src/cluster.rs, shared with tests/tests/sync_hub.rs ----

fn spawn_hub(root: &Path, certs: &Path, quic: SocketAddr, http: SocketAddr) -> HubProc {
    cluster::spawn_hub(root, certs, quic, http, "warn")
}

fn spawn_node(root: &Path, certs: &Path, id: &str, hub_quic: SocketAddr) -> ClusterNode {
    cluster::spawn_node(root, certs, id, hub_quic, "warn")
}

async fn wait_healthy(http: &reqwest::Client, addr: SocketAddr) {
    cluster::wait_healthy(http, addr, Duration::from_secs(60)).await
}

/// Order `n`: one or two lines, a customer, street, city and postcode that vary from order to order (drawn
/// deterministically from `n`), so that compression finds only what real orders share.
fn order_json(n: u64) -> Value {
    const NAMES: [&str; 8] = [
        "Anna Schmidt",
        "Jonas Müller",
        "Lea Weber",
        "Paul Fischer",
        "Mia Wagner",
        "Ben Becker",
        "Emma Hoffmann",
        "Noah Schulz",
    ];
    const STREETS: [&str; 6] = ["Hauptstraße", "Schulstraße", "Gartenweg", "Bahnhofstraße", "Lindenallee", "Am Markt"];
    const CITIES: [(&str, f64, f64); 6] = [
        ("Berlin", 52.52, 13.40),
        ("Hamburg", 53.55, 9.99),
        ("München", 48.14, 11.58),
        ("Köln", 50.94, 6.96),
        ("Frankfurt am Main", 50.11, 8.68),
        ("Leipzig", 51.34, 12.37),
    ];
    let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16;
    let (city, lat, lon) = CITIES[(h % 6) as usize];
    let mut lines = vec![
        json!({"sku": format!("SKU-{}", n % 3), "qty": 1 + h % 3, "unit_price_minor": 499 + h % 9_500, "currency": "EUR"}),
    ];
    if h.is_multiple_of(4) {
        lines.push(
            json!({"sku": format!("SKU-{}", (n + 1) % 3), "qty": 1, "unit_price_minor": 1_999, "currency": "EUR"}),
        );
    }
    json!({
        "external_ref": format!("web-{}", 100_000 + h % 900_000), "channel": "web",
        "lines": lines,
        "ship_to": {
            "name": NAMES[(h % 8) as usize],
            "line1": format!("{} {}", STREETS[(h / 8 % 6) as usize], 1 + h / 48 % 180),
            "city": city,
            "postcode": format!("{:05}", 10_000 + h % 89_999),
            "country": "DE",
            "lat": lat + (h % 1_000) as f64 / 10_000.0,
            "lon": lon - (h % 997) as f64 / 10_000.0
        }
    })
}

/// Postcard size of order `n`'s draft: the floor the wire bytes are compared with.
fn postcard_size(n: u64) -> usize {
    let draft: oms_protocol::domain::OrderDraft = serde_json::from_value(order_json(n)).unwrap();
    postcard::to_allocvec(&draft).unwrap().len()
}

/// Places order `n` at `node` (retrying with the same idempotency key); returns its id.
async fn place(http: &reqwest::Client, node: &ClusterNode, n: u64) -> String {
    cluster::place(http, node, &format!("{}-{n}", node.id), &order_json(n)).await
}

async fn hub_total(http: &reqwest::Client, hub: SocketAddr, site: &str) -> Option<u64> {
    get_json(http, format!("http://{hub}/v1/orders?site={site}&limit=1")).await?["total"].as_u64()
}

/// Polls the hub's total for `site` every `every` until it reaches `n`; returns when, or None at the deadline.
async fn wait_total(
    http: &reqwest::Client,
    hub: SocketAddr,
    site: &str,
    n: u64,
    limit: Duration,
    every: Duration,
) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if hub_total(http, hub, site).await.unwrap_or(0) >= n {
            return Some(Instant::now());
        }
        tokio::time::sleep(every).await;
    }
    None
}

async fn node_connected(http: &reqwest::Client, hub: SocketAddr, site: &str) -> bool {
    let Some(v) = get_json(http, format!("http://{hub}/v1/nodes")).await else { return false };
    v["nodes"].as_array().is_some_and(|ns| ns.iter().any(|n| n["node"] == site && n["connected"] == true))
}

// ---- counting UDP forwarder ----

#[derive(Default)]
struct Fwd {
    up_bytes: AtomicU64,
    down_bytes: AtomicU64,
    up_dgrams: AtomicU64,
    down_dgrams: AtomicU64,
    dropped: AtomicU64,
    blackhole: AtomicBool,
}

impl Fwd {
    fn bytes(&self) -> (u64, u64, u64) {
        let d = self.up_dgrams.load(Ordering::SeqCst) + self.down_dgrams.load(Ordering::SeqCst);
        (self.up_bytes.load(Ordering::SeqCst), self.down_bytes.load(Ordering::SeqCst), d)
    }
}

/// A UDP forwarder on 127.0.0.1 to `upstream` that counts payload bytes each way; returns its address.
async fn forwarder(upstream: SocketAddr, fwd: Arc<Fwd>) -> SocketAddr {
    let front = Arc::new(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap());
    let addr = front.local_addr().unwrap();
    tokio::spawn(async move {
        let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, client)) = front.recv_from(&mut buf).await {
            if !backs.contains_key(&client) {
                if backs.len() >= 16 {
                    continue;
                }
                let back = Arc::new(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap());
                back.connect(upstream).await.unwrap();
                let (b, f, s) = (back.clone(), front.clone(), fwd.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65_535];
                    while let Ok(n) = b.recv(&mut buf).await {
                        if s.blackhole.load(Ordering::SeqCst) {
                            s.dropped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        s.down_bytes.fetch_add(n as u64, Ordering::SeqCst);
                        s.down_dgrams.fetch_add(1, Ordering::SeqCst);
                        let _ = f.send_to(&buf[..n], client).await;
                    }
                });
                backs.insert(client, back);
            }
            if fwd.blackhole.load(Ordering::SeqCst) {
                fwd.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            fwd.up_bytes.fetch_add(n as u64, Ordering::SeqCst);
            fwd.up_dgrams.fetch_add(1, Ordering::SeqCst);
            let _ = backs[&client].send(&buf[..n]).await;
        }
    });
    addr
}

/// Postcard size of the stored draft and Automerge `save()` size of one order document, read from `sync.redb`.
fn draft_sizes(node_data: &Path, order_id: &str) -> (usize, usize) {
    use oms_protocol::sync::automerge::{ROOT, ReadDoc, ScalarValue, Value as AmValue};
    let mut db = oms_sync::docdb::DocDb::open(&node_data.join("sync.redb"), vec![9; 16], 1_000_000).unwrap();
    let id = oms_protocol::wire::DocId::new(format!("order/{order_id}")).unwrap();
    let doc = db.get(&id).expect("order doc in sync.redb");
    let draft = match doc.get(ROOT, "draft").unwrap() {
        Some((AmValue::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Bytes(b) => b.len(),
            other => panic!("draft is {other:?}"),
        },
        other => panic!("draft is {other:?}"),
    };
    let mut doc = doc.clone();
    (draft, doc.save().len())
}

/// Places `bytes_n` orders one after another at `node` and returns the idle-corrected UDP payload bytes per
/// order through `fwd` (both directions).
async fn bytes_stream(
    http: &reqwest::Client,
    hub_http: SocketAddr,
    node: &ClusterNode,
    fwd: &Fwd,
    bytes_n: u64,
    first: u64,
    label: &str,
) -> f64 {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (u0, d0, g0) = fwd.bytes();
    let idle_t = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (u1, d1, g1) = fwd.bytes();
    let idle_rate = (u1 + d1 - u0 - d0) as f64 / idle_t.elapsed().as_secs_f64();
    let before_total = hub_total(http, hub_http, &node.id).await.unwrap();
    let t = Instant::now();
    for n in 0..bytes_n {
        place(http, node, first + n).await;
    }
    let posted = t.elapsed();
    let done = wait_total(
        http,
        hub_http,
        &node.id,
        before_total + bytes_n,
        Duration::from_secs(60),
        Duration::from_millis(20),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_000)).await; // acks settle
    let (u2, d2, g2) = fwd.bytes();
    let span = t.elapsed().as_secs_f64();
    let gross = (u2 + d2 - u1 - d1) as f64;
    let net = gross - idle_rate * span;
    println!(
        "2. bytes ({label}): {bytes_n} orders in {:.2} s (hub had all: {}); up={} B down={} B datagrams={} (idle: {} dgrams, {:.0} B/s); \
         gross {:.0} B/order, idle-corrected {:.0} B/order",
        posted.as_secs_f64(),
        done.is_some(),
        u2 - u1,
        d2 - d1,
        g2 - g1,
        g1 - g0,
        idle_rate,
        gross / bytes_n as f64,
        net / bytes_n as f64
    );
    net / bytes_n as f64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let lat_n = env_u64("BENCH_LAT_N", 300);
    let bytes_n = env_u64("BENCH_BYTES_N", 500);
    let catch_n = env_u64("BENCH_CATCHUP_N", 10_000);
    let k = env_u64("BENCH_K", 4);
    let m = env_u64("BENCH_M", 2_500);
    println!("sync bench: loadavg at start {}", loadavg());

    let tmp = tempfile::tempdir().unwrap();
    let mut names = vec!["wh-lat".to_owned(), "wh-plain".to_owned(), "wh-catch".to_owned()];
    names.extend((0..k).map(|i| format!("wh-k{i}")));
    let certs = pki(tmp.path(), &names);
    let (quic, hub_http) = (free_udp(), free_tcp());
    let hub = spawn_hub(tmp.path(), &certs, quic, hub_http);
    let http = oms_tests::client_builder().timeout(Duration::from_secs(10)).build().unwrap();
    wait_healthy(&http, hub_http).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hub_rss_empty = hub.proc.rss_mb();

    // ---- 1. latency ----
    let fwd = Arc::new(Fwd::default());
    let via = forwarder(quic, fwd.clone()).await;
    let node = spawn_node(tmp.path(), &certs, "wh-lat", via);
    wait_healthy(&http, node.http).await;
    cluster::seed(&http, &node, 3, 1_000_000).await;
    let dl = Instant::now() + Duration::from_secs(30);
    while !node_connected(&http, hub_http, "wh-lat").await && Instant::now() < dl {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Warm-up: one order through end to end.
    let warm = place(&http, &node, 1_000_000).await;
    let dl = Instant::now() + Duration::from_secs(30);
    while get_json(&http, format!("http://{hub_http}/v1/orders/{warm}")).await.is_none() && Instant::now() < dl {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let poll = oms_tests::client_builder().timeout(Duration::from_secs(5)).build().unwrap();
    let mut lat = Vec::new();
    let mut lat_from_post = Vec::new();
    let mut missed = 0;
    let mut polls = 0u64;
    let mut last_id = warm.clone();
    let lat_start = Instant::now();
    for n in 0..lat_n {
        if lat_start.elapsed() > Duration::from_secs(240) {
            println!("latency: stopped after {n} orders (240 s bound)");
            break;
        }
        let t_post = Instant::now();
        let id = place(&http, &node, n).await;
        let t0 = Instant::now();
        let dl = t0 + Duration::from_secs(5);
        let mut seen = false;
        while Instant::now() < dl {
            polls += 1;
            if let Ok(r) = poll.get(format!("http://{hub_http}/v1/orders/{id}")).send().await
                && r.status().is_success()
            {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if seen {
            lat.push(t0.elapsed().as_secs_f64() * 1e3);
            lat_from_post.push(t_post.elapsed().as_secs_f64() * 1e3);
        } else {
            missed += 1;
        }
        last_id = id;
    }
    lat.sort_by(f64::total_cmp);
    lat_from_post.sort_by(f64::total_cmp);
    println!(
        "1. latency 201→visible at hub: n={} missed(>5s)={missed} p50={:.2} ms p90={:.2} ms p99={:.2} ms max={:.2} ms; \
         from POST start p50={:.2} p99={:.2} ms; hub GETs={polls}; loadavg {}",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN),
        percentile(&lat_from_post, 0.5),
        percentile(&lat_from_post, 0.99),
        loadavg()
    );

    // ---- 2. bytes per order ----
    let bytes_per_order = bytes_stream(&http, hub_http, &node, &fwd, bytes_n, 2_000_000, "deflate").await;
    let floor = (0..bytes_n).map(|n| postcard_size(2_000_000 + n)).sum::<usize>() as f64 / bytes_n as f64;
    // The same stream from a node that does not announce deflate (as an older build), in the same run.
    let pfwd = Arc::new(Fwd::default());
    let pvia = forwarder(quic, pfwd.clone()).await;
    let (pconfig, phttp, pdir) = cluster::node_config_with(tmp.path(), &certs, "wh-plain", pvia, "compress = false");
    let pnode = cluster::spawn_node_with("wh-plain", &pconfig, phttp, &pdir, "warn");
    wait_healthy(&http, pnode.http).await;
    cluster::seed(&http, &pnode, 3, 1_000_000).await;
    let dl = Instant::now() + Duration::from_secs(30);
    while !node_connected(&http, hub_http, "wh-plain").await && Instant::now() < dl {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let plain_per_order = bytes_stream(&http, hub_http, &pnode, &pfwd, bytes_n, 2_000_000, "plain").await;
    drop(pnode);
    println!(
        "2a. postcard floor {floor:.1} B/order (mean over the {bytes_n} drafts sent); wire/postcard: deflate {:.2}×, plain {:.2}×; deflate/plain {:.2}",
        bytes_per_order / floor,
        plain_per_order / floor,
        bytes_per_order / plain_per_order
    );

    // ---- 3. catch-up after a partition ----
    let cfwd = Arc::new(Fwd::default());
    let cvia = forwarder(quic, cfwd.clone()).await;
    let cnode = spawn_node(tmp.path(), &certs, "wh-catch", cvia);
    wait_healthy(&http, cnode.http).await;
    cluster::seed(&http, &cnode, 3, 1_000_000).await;
    let dl = Instant::now() + Duration::from_secs(30);
    while !node_connected(&http, hub_http, "wh-catch").await && Instant::now() < dl {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    cfwd.blackhole.store(true, Ordering::SeqCst);
    let many = oms_tests::client_builder().timeout(Duration::from_secs(30)).pool_max_idle_per_host(64).build().unwrap();
    let t = Instant::now();
    let ids: Vec<String> =
        futures::stream::iter(0..catch_n).map(|n| place(&many, &cnode, n)).buffer_unordered(32).collect().await;
    let intake = t.elapsed();
    assert_eq!(ids.len() as u64, catch_n);
    let blackholed_for = t.elapsed();
    let heal = Instant::now();
    cfwd.blackhole.store(false, Ordering::SeqCst);
    // First order arriving, then all.
    let mut first = None;
    let mut all = None;
    let dl = heal + Duration::from_secs(120);
    while Instant::now() < dl {
        let n = hub_total(&http, hub_http, "wh-catch").await.unwrap_or(0);
        if n > 0 && first.is_none() {
            first = Some(heal.elapsed());
        }
        if n >= catch_n {
            all = Some(heal.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (cu, cd, _) = cfwd.bytes();
    println!(
        "3. catch-up: {catch_n} orders taken in {:.2} s ({:.0}/s, 32 clients) while partitioned ({:.1} s); after heal: first order at hub {:?}, all {:?}; \
         wire {:.0} B/order; hub total now {:?}; loadavg {}",
        intake.as_secs_f64(),
        catch_n as f64 / intake.as_secs_f64(),
        blackholed_for.as_secs_f64(),
        first.map(|d| d.as_secs_f64()),
        all.map(|d| d.as_secs_f64()),
        (cu + cd) as f64 / catch_n as f64,
        hub_total(&http, hub_http, "wh-catch").await,
        loadavg()
    );
    let hub_rss_1node = hub.proc.rss_mb();
    let all_orders = get_json(&http, format!("http://{hub_http}/v1/orders?limit=1")).await.map(|v| v["total"].clone());
    println!("4a. hub RSS: empty {hub_rss_empty:.1} MB; with 2 nodes / {all_orders:?} orders {hub_rss_1node:.1} MB");

    // ---- 4. K nodes × M orders ----
    let mut knodes = Vec::new();
    let mut kfwds = Vec::new();
    for i in 0..k {
        let f = Arc::new(Fwd::default());
        let v = forwarder(quic, f.clone()).await;
        kfwds.push(f);
        knodes.push(spawn_node(tmp.path(), &certs, &format!("wh-k{i}"), v));
    }
    for n in &knodes {
        wait_healthy(&http, n.http).await;
        cluster::seed(&http, n, 3, 1_000_000).await;
    }
    let t = Instant::now();
    let placed: Vec<String> = futures::stream::iter(knodes.iter().flat_map(|nd| (0..m).map(move |i| (nd, i))))
        .map(|(nd, i)| place(&many, nd, i))
        .buffer_unordered(32)
        .collect()
        .await;
    let k_intake = t.elapsed();
    let mut ok = true;
    for nd in &knodes {
        ok &= wait_total(&http, hub_http, &nd.id, m, Duration::from_secs(120), Duration::from_millis(200))
            .await
            .is_some();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all_orders = get_json(&http, format!("http://{hub_http}/v1/orders?limit=1")).await.map(|v| v["total"].clone());
    println!(
        "4b. hub RSS with {k} more nodes × {m} orders ({} placed in {:.1} s, all synced: {ok}; hub total {all_orders:?}): {:.1} MB; loadavg {}",
        placed.len(),
        k_intake.as_secs_f64(),
        hub.proc.rss_mb(),
        loadavg()
    );

    // ---- postcard floor ----
    drop(knodes);
    let ClusterNode { mut proc, dir, .. } = node;
    proc.kill9();
    let (draft, saved) = draft_sizes(&dir.join("data"), &last_id);
    println!("2b. last order: postcard draft {draft} B, Automerge order doc save() {saved} B");
    drop(cnode);
    drop(hub);
    println!("sync bench: loadavg at end {}", loadavg());
}
