//! Node figures for BENCHMARKS.md: durable order intake over HTTP on loopback with 1, 16 and 64 concurrent
//! clients (orders/s, p50, p99) against the disk's raw fsync rate measured in the same run (the ceiling for
//! unbatched commits); then order lookup by id with 1,000,000 orders stored (p50, p99) and the node's RSS.
//!
//! `cargo bench -p oms-tests --bench node_intake` (env: `BENCH_SECS` per level, default 10;
//! `BENCH_ORDERS` for the lookup store, default 1000000; `BENCH_DIR` for the data, default a temp dir;
//! `BENCH_TLS=1` serves the API over HTTPS with a certificate from a CA the bench makes). Every request
//! carries the test admin key (`oms_tests::TEST_ADMIN_TOKEN`), as every request to a node must.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oms_node::store::{CatalogItem, Limits, Store, cmd};
use oms_protocol::domain::{NodeId, OrderDraft, Sku};
use oms_tests::cluster::Proc;
use oms_tests::free_addr;
use oms_tests::stats::{env_u64, fsync_rate, percentile};

struct Node {
    proc: Proc,
    addr: SocketAddr,
    /// `http` or `https`.
    scheme: &'static str,
}

/// Runs `oms-it` with `args` to completion.
fn oms(args: &[&str]) {
    let ok = Command::new(env!("CARGO_BIN_EXE_oms-it")).args(args).stdout(Stdio::null()).status().unwrap().success();
    assert!(ok, "oms {args:?} failed");
}

/// A client with the admin key, trusting the bench CA when there is one.
fn client(ca: Option<&Path>, pool: usize) -> reqwest::Client {
    let mut b = oms_tests::client_builder().pool_max_idle_per_host(pool);
    if let Some(ca) = ca {
        let pem = std::fs::read(ca.join("ca.pem")).unwrap();
        b = b.tls_built_in_root_certs(false).add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

impl Node {
    /// Starts a node with its data in `dir`; with `tls`, HTTPS with a certificate from a CA in `tls`.
    fn start(dir: &Path, tls: Option<&Path>) -> Node {
        let addr = free_addr();
        oms_tests::install_admin_key(dir);
        let config = dir.join("node.toml");
        let mut text = String::new();
        if let Some(ca) = tls {
            let c = ca.to_str().unwrap();
            if !ca.join("ca.pem").exists() {
                oms(&["ca", "init", "--dir", c, "--tenant", "bench"]);
                oms(&["ca", "issue", "--dir", c, "--http", "bench"]);
            }
            text = format!(
                "[http]\ntls_cert = {:?}\ntls_key = {:?}\n",
                ca.join("http-bench.pem").display().to_string(),
                ca.join("http-bench.key").display().to_string()
            );
        }
        std::fs::write(&config, text).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_oms-it"))
            .args(["node", "--node-id", "bench", "--listen", &addr.to_string(), "--data"])
            .arg(dir)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "node did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Node { proc: Proc { child }, addr, scheme: if tls.is_some() { "https" } else { "http" } }
    }

    fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }
    fn rss_mb(&self) -> f64 {
        self.proc.rss_mb()
    }
}

fn order_json(n: u64) -> serde_json::Value {
    serde_json::json!({
        "external_ref": format!("bench-{n}"), "channel": "web",
        "lines": [{"sku": format!("S{}", n % 100), "qty": 1, "unit_price_minor": 999, "currency": "EUR"},
                  {"sku": format!("S{}", (n + 37) % 100), "qty": 2, "unit_price_minor": 499, "currency": "EUR"}],
        "ship_to": {"name": "Bench Customer", "line1": "1 Loop Road", "city": "Berlin", "postcode": "10115",
                    "country": "DE", "lat": 52.5, "lon": 13.4}
    })
}

async fn intake_level(
    url: String,
    http: reqwest::Client,
    clients: usize,
    secs: u64,
    key_base: u64,
) -> (f64, f64, f64, u64) {
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut i = 0u64;
            while Instant::now() < until {
                let n = key_base + (c as u64) * 10_000_000 + i;
                i += 1;
                let t = Instant::now();
                let r = http.post(&url).header("idempotency-key", format!("k{n}")).json(&order_json(n)).send().await;
                match r {
                    Ok(r) if r.status() == 201 => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    let took = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    (all.len() as f64 / took, percentile(&all, 0.5), percentile(&all, 0.99), errors)
}

fn main() {
    let secs = env_u64("BENCH_SECS", 10);
    let lookup_orders = env_u64("BENCH_ORDERS", 1_000_000);
    let tmp = tempfile::tempdir().unwrap();
    let base = std::env::var("BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| tmp.path().to_owned());
    std::fs::create_dir_all(&base).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!(
        "machine: {} cores; date: {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        chrono_date()
    );

    let (fsync_per_s, fsync_p50, fsync_p99) = fsync_rate(&base, 500);
    println!("raw fsync (4 KiB write + fdatasync): {fsync_per_s:.0}/s, p50 {fsync_p50:.3} ms, p99 {fsync_p99:.3} ms");

    // Intake.
    let tls = (env_u64("BENCH_TLS", 0) == 1).then(|| base.join("ca"));
    println!("HTTP API: {}, every request with an API key", if tls.is_some() { "HTTPS (TLS)" } else { "plain HTTP" });
    let dir = base.join("intake");
    std::fs::create_dir_all(&dir).unwrap();
    let node = Node::start(&dir, tls.as_deref());
    rt.block_on(async {
        let http = client(tls.as_deref(), 1);
        for i in 0..100 {
            let r = http
                .put(node.url(&format!("/v1/catalog/S{i}")))
                .json(&serde_json::json!({"name": "x", "bin": format!("A-{i}")}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
            let r = http
                .post(node.url("/v1/stock/receipts"))
                .json(&serde_json::json!({"sku": format!("S{i}"), "qty": 1_000_000}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
    });
    println!("\n| clients | orders/s | p50 ms | p99 ms | errors | orders/s ÷ raw fsync/s |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for (li, clients) in [1usize, 16, 64].into_iter().enumerate() {
        let http = client(tls.as_deref(), clients);
        let (rate, p50, p99, errors) =
            rt.block_on(intake_level(node.url("/v1/orders"), http, clients, secs, (li as u64) << 40));
        println!("| {clients} | {rate:.0} | {p50:.2} | {p99:.2} | {errors} | {:.2} |", rate / fsync_per_s);
    }
    println!("node RSS after intake: {:.0} MB", node.rss_mb());
    drop(node);

    // Lookup with many orders stored: preload through the store (group commit, no HTTP), then serve.
    let dir = base.join("lookup");
    std::fs::create_dir_all(&dir).unwrap();
    let t = Instant::now();
    rt.block_on(preload(&dir, lookup_orders));
    println!("\npreloaded {lookup_orders} orders in {:.1} s", t.elapsed().as_secs_f64());
    let node = Node::start(&dir, tls.as_deref());
    let rss_idle = node.rss_mb();
    let (p50, p99, rss_after) = rt.block_on(async {
        let http = client(tls.as_deref(), 1);
        let mut lat = Vec::new();
        let mut x = 0x9E3779B97F4A7C15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let seq = 1 + x % lookup_orders;
            let t = Instant::now();
            let r = http.get(node.url(&format!("/v1/orders/bench-{seq:010}"))).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let _ = r.bytes().await.unwrap();
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        lat.sort_by(f64::total_cmp);
        (percentile(&lat, 0.5), percentile(&lat, 0.99), node.rss_mb())
    });
    println!(
        "lookup by id, {lookup_orders} orders stored, 20000 random GETs, 1 client: p50 {p50:.3} ms, p99 {p99:.3} ms"
    );
    println!("node RSS: {rss_idle:.0} MB after start, {rss_after:.0} MB after the lookups");

    // Online backup of that node while 16 clients place orders: what the backup costs and how intake fares
    // during it, against the same load just before (baseline measured in the same run).
    let url = node.url("/v1/orders");
    let base_secs = secs.min(5);
    let (b_rate, b_p50, b_p99, _) =
        rt.block_on(intake_level(url.clone(), client(tls.as_deref(), 16), 16, base_secs, 900_000_000));
    let out = base.join("lookup.backup");
    let (data, file) = (dir.clone(), out.clone());
    let backup = std::thread::spawn(move || {
        let t = Instant::now();
        let o = Command::new(env!("CARGO_BIN_EXE_oms-it"))
            .args(["backup", "--data", data.to_str().unwrap(), "--out", file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "backup: {}", String::from_utf8_lossy(&o.stderr));
        (t.elapsed().as_secs_f64(), serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap())
    });
    let (d_rate, d_p50, d_p99, d_err) =
        rt.block_on(intake_level(url, client(tls.as_deref(), 16), 16, base_secs, 950_000_000));
    let (took, report) = backup.join().unwrap();
    println!(
        "online backup with {lookup_orders}+ orders stored: {} bytes in {took:.2} s (pause_ms_max {:.3} ms); \
         16 clients placing orders {base_secs} s before: {b_rate:.0}/s p50 {b_p50:.2} ms p99 {b_p99:.2} ms; \
         {base_secs} s from its start: {d_rate:.0}/s p50 {d_p50:.2} ms p99 {d_p99:.2} ms, errors {d_err}",
        report["bytes"],
        report["pause_ms_max"].as_f64().unwrap_or(f64::NAN)
    );
    let t = Instant::now();
    let restored = base.join("lookup-restored");
    let ok = Command::new(env!("CARGO_BIN_EXE_oms-it"))
        .args(["restore", "--from", out.to_str().unwrap(), "--data", restored.to_str().unwrap()])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "restore failed");
    println!("restore with checks (checksums, integrity, ledger replay): {:.2} s", t.elapsed().as_secs_f64());
}

async fn preload(dir: &Path, n: u64) {
    let store = Store::open(
        &dir.join("node.redb"),
        NodeId::parse("bench").unwrap(),
        Limits::default(),
        Arc::new(oms_node::metrics::Metrics::new()),
    )
    .unwrap();
    for i in 0..100 {
        let sku = Sku::parse(&format!("S{i}")).unwrap();
        store
            .execute(cmd::PutCatalog(CatalogItem { sku: sku.clone(), name: "x".into(), bin: "A".into() }))
            .await
            .unwrap();
        store
            .execute(cmd::Stock {
                sku,
                movement: oms_protocol::domain::Movement::Receipt { qty: 1_000_000, note: None },
            })
            .await
            .unwrap();
    }
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let store = store.clone();
        let draft: OrderDraft = serde_json::from_value(order_json(i)).unwrap();
        if set.len() >= 2048 {
            set.join_next().await.unwrap().unwrap();
        }
        set.spawn(async move {
            loop {
                match store.execute(cmd::CreateOrder { key: format!("p{i}"), draft: draft.clone() }).await {
                    Ok(_) => return,
                    Err(oms_node::store::StoreError::Overloaded) => tokio::time::sleep(Duration::from_millis(1)).await,
                    Err(e) => panic!("preload: {e}"),
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    store.close();
}

fn chrono_date() -> String {
    let out = Command::new("date").arg("-u").arg("+%Y-%m-%d").output().ok();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default()
}
