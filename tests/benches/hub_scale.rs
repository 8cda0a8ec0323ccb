//! Hub memory and CPU at scale, for bench/hub_scale/RESULTS.md: N nodes × M open orders (default 100 ×
//! 10,000, i.e. 1,000,000 order documents at the hub).
//!
//! Real `oms` processes (`oms-it`): one hub and N nodes with `oms ca` certificates, QUIC on loopback. To reach
//! a million documents in minutes on a small machine, each node's `sync.redb` is seeded before the node
//! starts: M order documents written by the node's own code (`schema::write_order` into a `DocDb`, records
//! shaped like the store's new orders). The node's `node.redb` does not hold these orders (no HTTP intake);
//! the hub's `hub.redb` starts empty and receives every document over real sync from the N connected nodes.
//!
//! Phases, each with hub RSS (`VmRSS`), peak RSS (`VmHWM`) and hub CPU seconds (`utime + stime` from
//! `/proc/<pid>/stat`):
//! 1. seed (bench process only),
//! 2. hub empty,
//! 3. load: N nodes start (reniced to 19: on two shared cores they must not starve the hub, whose silence
//!    beyond three seconds makes a node reconnect) while the hub is down, then the hub starts again (empty); until its `/v1/orders`
//!    total reaches N × M and every node is connected with nothing pending,
//! 4. in sync: every node connected and no session pending; then an idle window (`BENCH_IDLE_S`, default 35 s,
//!    two manifest intervals) with N connected nodes: CPU per second, RSS at the end,
//! 5. restart: the hub is killed (-9) and started again over the same `hub.redb`; time to healthy, then
//!    until all N nodes are connected and in sync again, then another idle window.
//!
//! `hub_scale --bench --probe <hub.redb>` instead opens a (closed) `hub.redb` with the hub's settings and
//! prints this process's RSS after opening it (the per-document index) and after loading `BENCH_PROBE_LOAD`
//! (default 4,096) documents, for the breakdown in the results (also run under `heaptrack`).
//!
//! `cargo bench -p oms-tests --bench hub_scale` (env: `BENCH_NODES` default 100, `BENCH_ORDERS` default 10000,
//! `BENCH_IDLE_S` default 35, `BENCH_DEADLINE_S` default 1500, `BENCH_DIR` a directory to keep the run in
//! instead of a temporary one, `BENCH_SEED_DIR` a directory that keeps seeded node files for later runs,
//! `BENCH_RESTART=0` skips phase 5, `BENCH_REUSE=1` reuses the finished run in `BENCH_DIR`).
//! Every loop is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::cast_precision_loss)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oms_node::SYNC_DB_FILE;
use oms_protocol::domain::{FulfillmentState, NodeId, OrderDraft, OrderId};
use oms_protocol::records::{FulfillmentLine, OrderRecord, TimelineEntry};
use oms_protocol::schema;
use oms_sync::docdb::DocDb;
use oms_tests::cluster::{self, ClusterNode, HubProc, get_json, pki};
use oms_tests::stats::{env_u64, loadavg};
use serde_json::json;

/// Documents per seeding transaction (bounds the bench's own memory).
const SEED_CHUNK: u64 = 1_000;

fn draft(node: &str, n: u64) -> OrderDraft {
    let d: OrderDraft = serde_json::from_value(json!({
        "external_ref": format!("{node}-web-{n}"), "channel": "web",
        "lines": [{"sku": format!("SKU-{}", n % 3), "qty": 1, "unit_price_minor": 1999, "currency": "EUR"}],
        "ship_to": {"name": "C", "line1": "1 Street", "city": "Berlin", "postcode": "10115", "country": "DE", "lat": 52.5, "lon": 13.4}
    }))
    .unwrap();
    d.validate().unwrap();
    d
}

/// Writes `m` accepted orders of `node` into `data/sync.redb` the way the node's feed follower does.
fn seed_node(data: &Path, node: &NodeId, m: u64, now_ms: u64) {
    std::fs::create_dir_all(data).unwrap();
    let actor: [u8; 16] = rand_actor(node.as_str());
    let mut db = DocDb::open(&data.join(SYNC_DB_FILE), actor.to_vec(), 2_000_000).unwrap();
    db.set_cache_max(SEED_CHUNK as usize);
    let mut seq = 1;
    for _ in 0..m.div_ceil(SEED_CHUNK) {
        let end = (seq + SEED_CHUNK).min(m + 1);
        for i in seq..end {
            let id = OrderId::new(node, i);
            let order = draft(node.as_str(), i);
            let lines = order
                .lines
                .iter()
                .map(|l| FulfillmentLine { sku: l.sku.clone(), qty: l.qty, picked: None, shipped: 0, returned: 0 })
                .collect();
            let at = now_ms + i;
            let rec = OrderRecord {
                id: id.clone(),
                site: node.clone(),
                status: FulfillmentState::Accepted,
                order,
                lines,
                wave: None,
                parcels: None,
                shipment: None,
                returns: Vec::new(),
                timeline: vec![TimelineEntry {
                    at_ms: at,
                    status: FulfillmentState::Accepted,
                    note: "accepted".into(),
                }],
                created_at_ms: at,
            };
            let name = schema::order_doc(&id).unwrap();
            let doc = db.get_or_create(&name).unwrap();
            assert!(schema::write_order(doc, node, &rec, at).unwrap());
            doc.commit();
            db.mark_dirty(&name);
        }
        db.flush().unwrap();
        seq = end;
    }
    assert_eq!(db.len() as u64, m);
}

fn rand_actor(seed: &str) -> [u8; 16] {
    let mut a = [7u8; 16];
    for (i, b) in seed.bytes().enumerate() {
        a[i % 16] ^= b;
    }
    a
}

/// Hub process figures from /proc.
#[derive(Debug, Clone, Copy, Default)]
struct ProcStat {
    rss_mb: f64,
    hwm_mb: f64,
    cpu_s: f64,
}

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

fn proc_stat(pid: u32, tck: f64) -> ProcStat {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is the 3rd field, utime the 14th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    ProcStat { rss_mb: kb("VmRSS:"), hwm_mb: kb("VmHWM:"), cpu_s: (ticks(11) + ticks(12)) / tck }
}

/// Total CPU seconds of the node processes.
fn nodes_cpu_s(nodes: &[ClusterNode], tck: f64) -> f64 {
    nodes.iter().map(|n| proc_stat(n.proc.child.id(), tck).cpu_s).sum()
}

fn nodes_rss_mb(nodes: &[ClusterNode], tck: f64) -> f64 {
    nodes.iter().map(|n| proc_stat(n.proc.child.id(), tck).rss_mb).sum()
}

async fn hub_total(http: &reqwest::Client, hub: SocketAddr) -> Option<u64> {
    get_json(http, format!("http://{hub}/v1/orders?limit=1")).await.and_then(|v| v["total"].as_u64())
}

/// (connected, pending) node sessions at the hub, and the documents it holds loaded.
async fn hub_sessions(http: &reqwest::Client, hub: SocketAddr) -> Option<(usize, usize, u64, u64)> {
    let v = get_json(http, format!("http://{hub}/v1/nodes")).await?;
    let ns = v["nodes"].as_array()?;
    let connected = ns.iter().filter(|n| n["connected"] == true).count();
    let pending = ns.iter().filter(|n| n["connected"] == true && n["pending"] == true).count();
    let states: u64 = ns.iter().filter_map(|n| n["session"]["doc_states"].as_u64()).sum();
    Some((connected, pending, v["documents"]["loaded"].as_u64().unwrap_or(0), states))
}

/// Waits until the hub holds `total` orders and all `n` nodes are connected with nothing pending, printing
/// progress every 10 s. Returns the time taken, or None at the deadline.
async fn wait_in_sync(
    http: &reqwest::Client,
    hub: &HubProc,
    nodes: &[ClusterNode],
    total: u64,
    deadline: Duration,
    tck: f64,
) -> Option<Duration> {
    let t = Instant::now();
    let pid = hub.proc.child.id();
    let mut last_print = Instant::now();
    let mut in_sync_since: Option<Instant> = None;
    while t.elapsed() < deadline {
        let have = hub_total(http, hub.http).await.unwrap_or(0);
        let sessions = hub_sessions(http, hub.http).await;
        let done = have >= total && sessions.is_some_and(|(c, p, _, _)| c == nodes.len() && p == 0);
        // Pending flips between frames; require it to hold for a second.
        match (done, in_sync_since) {
            (true, Some(s)) if s.elapsed() >= Duration::from_secs(1) => return Some(t.elapsed()),
            (true, None) => in_sync_since = Some(Instant::now()),
            (false, _) => in_sync_since = None,
            _ => {}
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            let s = proc_stat(pid, tck);
            println!(
                "  {:>6.1} s: hub total {have}, sessions (connected, pending, docs loaded, sync states) {sessions:?}, hub RSS {:.1} MB (peak {:.1}), hub CPU {:.1} s, nodes CPU {:.1} s, loadavg {}",
                t.elapsed().as_secs_f64(),
                s.rss_mb,
                s.hwm_mb,
                s.cpu_s,
                nodes_cpu_s(nodes, tck),
                loadavg()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

/// Idle window with the nodes connected: hub CPU per second and RSS at the end.
async fn idle_window(hub: &HubProc, nodes: &[ClusterNode], secs: u64, tck: f64, label: &str) {
    let pid = hub.proc.child.id();
    let (h0, n0) = (proc_stat(pid, tck), nodes_cpu_s(nodes, tck));
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (h1, n1) = (proc_stat(pid, tck), nodes_cpu_s(nodes, tck));
    let span = t.elapsed().as_secs_f64();
    println!(
        "{label}: idle {span:.1} s with {} nodes connected: hub CPU {:.3} s/s ({:.1} % of one core), nodes CPU {:.3} s/s in total; hub RSS {:.1} MB (peak {:.1} MB); nodes RSS {:.0} MB in total; loadavg {}",
        nodes.len(),
        (h1.cpu_s - h0.cpu_s) / span,
        100.0 * (h1.cpu_s - h0.cpu_s) / span,
        (n1 - n0) / span,
        h1.rss_mb,
        h1.hwm_mb,
        nodes_rss_mb(nodes, tck),
        loadavg()
    );
}

fn self_rss_mb() -> f64 {
    proc_stat(std::process::id(), clk_tck()).rss_mb
}

/// See the module docs: RSS of a `DocDb` over a large `hub.redb`, index only and with documents loaded.
fn probe(path: &Path, load: usize) {
    let base = self_rss_mb();
    let t = Instant::now();
    let mut db = DocDb::open(path, vec![9; 16], 10_000_000).unwrap();
    let docs = db.len();
    let opened = self_rss_mb();
    println!(
        "probe: opened {docs} documents in {:.1} s; RSS {base:.1} → {opened:.1} MB: {:.0} B per document (index, with redb's cache)",
        t.elapsed().as_secs_f64(),
        (opened - base) * 1048576.0 / docs as f64
    );
    db.set_cache_max(load.max(1));
    let ids: Vec<_> = db.ids().step_by((docs / load.max(1)).max(1)).take(load).collect();
    let before = self_rss_mb();
    let t = Instant::now();
    let mut ok = 0usize;
    for id in &ids {
        ok += usize::from(db.get(id).is_some());
    }
    let after = self_rss_mb();
    println!(
        "probe: loaded {ok} documents in {:.2} s; RSS {before:.1} → {after:.1} MB: {:.0} B per loaded document",
        t.elapsed().as_secs_f64(),
        (after - before) * 1048576.0 / ok.max(1) as f64
    );
}

/// A free loopback port (UDP or TCP) in 20000..32000, below Linux's default ephemeral range (32768..60999),
/// so no process binding port 0 can be handed it while the hub is down. Bounded: 12,000 probes at most.
fn fixed_port_outside_ephemeral(udp: bool) -> SocketAddr {
    let start = 20_000 + (std::process::id() % 12_000) as u16;
    for k in 0..12_000u16 {
        let port = 20_000 + (start - 20_000 + k) % 12_000;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let free =
            if udp { std::net::UdpSocket::bind(addr).is_ok() } else { std::net::TcpListener::bind(addr).is_ok() };
        if free {
            return addr;
        }
    }
    panic!("no free port in 20000..32000")
}

fn spawn_hub(root: &Path, certs: &Path, quic: SocketAddr, http: SocketAddr) -> HubProc {
    cluster::spawn_hub(root, certs, quic, http, "warn")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--probe") {
        let path = PathBuf::from(args.get(i + 1).expect("--probe <hub.redb>"));
        return probe(&path, env_u64("BENCH_PROBE_LOAD", 4_096) as usize);
    }
    let n = env_u64("BENCH_NODES", 100);
    let m = env_u64("BENCH_ORDERS", 10_000);
    let idle_s = env_u64("BENCH_IDLE_S", 35);
    let deadline = Duration::from_secs(env_u64("BENCH_DEADLINE_S", 1_500));
    let tck = clk_tck();
    let tmp = tempfile::tempdir().unwrap();
    let root: PathBuf = std::env::var_os("BENCH_DIR").map_or_else(|| tmp.path().to_owned(), PathBuf::from);
    std::fs::create_dir_all(&root).unwrap();
    println!("hub_scale: {n} nodes × {m} orders; root {}; loadavg at start {}", root.display(), loadavg());
    let bench_start = Instant::now();
    let ids: Vec<String> = (0..n).map(|i| format!("wh{i:03}")).collect();
    // BENCH_REUSE=1: BENCH_DIR holds a finished run (certificates, nodes' and hub's data): no seeding, and
    // phases 2–5 all measure a hub starting over the documents it already holds.
    let reuse = env_u64("BENCH_REUSE", 0) == 1;
    let certs = if reuse { root.join("certs") } else { pki(&root, &ids) };

    // ---- 1. seed ----
    if !reuse {
        let t = Instant::now();
        // With BENCH_SEED_DIR, seeded node files are kept there (per N × M) and copied for later runs.
        let seed_root = std::env::var_os("BENCH_SEED_DIR").map(|d| PathBuf::from(d).join(format!("{n}x{m}")));
        let seeded_at = seed_root.clone().unwrap_or_else(|| root.clone());
        if !seeded_at.join("done").exists() {
            let now = oms_service::now_ms();
            let threads = 2usize;
            std::thread::scope(|s| {
                for part in 0..threads {
                    let (ids, seeded_at) = (&ids, &seeded_at);
                    s.spawn(move || {
                        for id in ids.iter().skip(part).step_by(threads) {
                            let node = NodeId::parse(id).unwrap();
                            let data = seeded_at.join(id).join("data");
                            if data.exists() {
                                std::fs::remove_dir_all(&data).unwrap();
                            }
                            seed_node(&data, &node, m, now);
                        }
                    });
                }
            });
            std::fs::write(seeded_at.join("done"), b"").unwrap();
        }
        if seeded_at != root {
            for id in &ids {
                let to = root.join(id).join("data");
                std::fs::create_dir_all(&to).unwrap();
                std::fs::copy(seeded_at.join(id).join("data").join(SYNC_DB_FILE), to.join(SYNC_DB_FILE)).unwrap();
            }
        }
        let seed_bytes: u64 = ids
            .iter()
            .filter_map(|id| std::fs::metadata(root.join(id).join("data").join(SYNC_DB_FILE)).ok())
            .map(|md| md.len())
            .sum();
        println!(
            "1. seeded {} order documents in {:.1} s ({:.0} MB of sync.redb in total{})",
            n * m,
            t.elapsed().as_secs_f64(),
            seed_bytes as f64 / 1e6,
            if seed_root.is_some() { ", copied from BENCH_SEED_DIR" } else { "" }
        );
    }

    // ---- 2. hub, empty ----
    let http = oms_tests::client_builder().timeout(Duration::from_secs(30)).build().unwrap();
    // The hub's ports lie below the ephemeral range: the hub is down while the nodes start, and a port from
    // `free_udp` (an ephemeral one) could be taken by a node's client endpoint in the meantime.
    let (quic, hub_http) = (fixed_port_outside_ephemeral(true), fixed_port_outside_ephemeral(false));
    let mut hub = spawn_hub(&root, &certs, quic, hub_http);
    cluster::wait_healthy(&http, hub_http, Duration::from_secs(60)).await;
    let s = proc_stat(hub.proc.child.id(), tck);
    println!("2. hub empty: RSS {:.1} MB, CPU {:.2} s", s.rss_mb, s.cpu_s);
    // The nodes start while the hub is down (a hundred processes starting and syncing at once would starve
    // each other's start on two cores), then the hub starts again and they all connect within their backoff.
    hub.proc.kill9();

    // ---- 3. load ----
    let t = Instant::now();
    let mut nodes = Vec::new();
    for id in &ids {
        let (config, node_http, dir) = cluster::node_config(&root, &certs, id, quic);
        // Nodes run on machines of their own; here they share two cores with the hub, so they are reniced
        // below it once healthy.
        nodes.push(cluster::spawn_node_with(id, &config, node_http, &dir, "warn"));
    }
    for nd in &mut nodes {
        cluster::wait_healthy(&http, nd.http, Duration::from_secs(300)).await;
        // A port handed out by `free_tcp` may be taken by another process before the node binds it: start
        // such a node again on another port (bounded).
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if nd.proc.child.try_wait().ok().flatten().is_none() {
                break;
            }
            let (config, node_http, dir) = cluster::node_config(&root, &certs, &nd.id, quic);
            *nd = cluster::spawn_node_with(&nd.id.clone(), &config, node_http, &dir, "warn");
            cluster::wait_healthy(&http, nd.http, Duration::from_secs(300)).await;
        }
        let _ = std::process::Command::new("renice")
            .args(["-n", "19", "-p", &nd.proc.child.id().to_string()])
            .stdout(std::process::Stdio::null())
            .status();
    }
    println!(
        "3. {n} nodes started and healthy in {:.1} s (hub down); nodes RSS {:.0} MB in total; loadavg {}",
        t.elapsed().as_secs_f64(),
        nodes_rss_mb(&nodes, tck),
        loadavg()
    );
    let nodes_cpu_before = nodes_cpu_s(&nodes, tck);
    hub = spawn_hub(&root, &certs, quic, hub_http);
    let synced = wait_in_sync(&http, &hub, &nodes, n * m, deadline, tck).await;
    let s = proc_stat(hub.proc.child.id(), tck);
    let total = hub_total(&http, hub_http).await;
    println!(
        "3. load: hub total {total:?} of {} in {:?} s from the hub's start; hub CPU {:.1} s; hub RSS {:.1} MB, peak {:.1} MB; nodes CPU {:.1} s; nodes RSS {:.0} MB in total; loadavg {}",
        n * m,
        synced.map(|d| d.as_secs_f64()),
        s.cpu_s,
        s.rss_mb,
        s.hwm_mb,
        nodes_cpu_s(&nodes, tck) - nodes_cpu_before,
        nodes_rss_mb(&nodes, tck),
        loadavg()
    );
    assert!(synced.is_some(), "not in sync within the deadline");

    // ---- 4. steady state ----
    idle_window(&hub, &nodes, idle_s, tck, "4. steady").await;

    // ---- 5. restart over 1M documents ----
    if env_u64("BENCH_RESTART", 1) == 0 {
        println!("hub_scale: done in {:.1} s; loadavg at end {}", bench_start.elapsed().as_secs_f64(), loadavg());
        return;
    }
    hub.proc.kill9();
    let t = Instant::now();
    hub = spawn_hub(&root, &certs, quic, hub_http);
    cluster::wait_healthy(&http, hub_http, Duration::from_secs(600)).await;
    let healthy = t.elapsed();
    let s = proc_stat(hub.proc.child.id(), tck);
    println!(
        "5. restart: healthy in {:.1} s; RSS {:.1} MB, peak {:.1} MB, CPU {:.1} s",
        healthy.as_secs_f64(),
        s.rss_mb,
        s.hwm_mb,
        s.cpu_s
    );
    let synced = wait_in_sync(&http, &hub, &nodes, n * m, deadline, tck).await;
    let s = proc_stat(hub.proc.child.id(), tck);
    println!(
        "5. restart: all {n} nodes connected and in sync {:?} s after the start; hub CPU {:.1} s; RSS {:.1} MB, peak {:.1} MB; loadavg {}",
        synced.map(|d| (d + healthy).as_secs_f64()),
        s.cpu_s,
        s.rss_mb,
        s.hwm_mb,
        loadavg()
    );
    idle_window(&hub, &nodes, idle_s, tck, "5. steady after restart").await;
    println!("hub_scale: done in {:.1} s; loadavg at end {}", bench_start.elapsed().as_secs_f64(), loadavg());
    drop(nodes);
    drop(hub);
}
