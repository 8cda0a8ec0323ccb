//! Shared helpers for the integration tests: spawn a real `oms` process (the `oms-it` binary of this crate is
//! the full CLI), wait for it, kill it with SIGKILL, talk HTTP to it on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod browser;
pub mod cluster;
pub mod floor;
pub mod shipped;

/// Small helpers the benchmarks share.
pub mod stats {
    /// An integer from the environment, or `default`.
    pub fn env_u64(name: &str, default: u64) -> u64 {
        std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    }

    /// The load average (1, 5, 15 min) from `/proc/loadavg`, for the record of a noisy machine.
    pub fn loadavg() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Raw fsync rate in `dir`: `n` times a 4 KiB write + `fdatasync`. Returns (per second, p50 ms, p99 ms):
    /// the ceiling for unbatched durable commits on this disk, measured in the same run as the figure it
    /// scales.
    pub fn fsync_rate(dir: &std::path::Path, n: usize) -> (f64, f64, f64) {
        use std::io::Write;
        let path = dir.join("fsync-probe");
        let mut f = std::fs::File::create(&path).expect("fsync probe");
        let buf = vec![7u8; 4096];
        let mut lat = Vec::with_capacity(n);
        let start = std::time::Instant::now();
        for _ in 0..n {
            let t = std::time::Instant::now();
            f.write_all(&buf).expect("write");
            f.sync_data().expect("fsync");
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        std::fs::remove_file(&path).ok();
        lat.sort_by(f64::total_cmp);
        (rate, percentile(&lat, 0.5), percentile(&lat, 0.99))
    }

    /// The `p` quantile (0..=1) of an ascending slice, nearest rank; NaN when empty.
    pub fn percentile(sorted: &[f64], p: f64) -> f64 {
        if sorted.is_empty() {
            return f64::NAN;
        }
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[i.min(sorted.len() - 1)]
    }
}

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of the `oms` binary under test.
///
/// Cargo builds this crate's `oms-it` binary before running its integration tests and puts it in the target
/// directory, one level above the test executables in `deps/` (`CARGO_BIN_EXE_*` is only visible to the test
/// files themselves, not to this helper library).
pub fn oms_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target dir");
    dir.join("oms-it")
}

/// A free loopback port (bound and released; the small race with other processes is acceptable in tests).
/// Never one this test binary was given before ([`unused_port`]).
pub fn free_addr() -> SocketAddr {
    unused_port(|| std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback").local_addr().expect("local addr"))
}

/// What `bind` (bind to port 0 and release) gives, retried until its port is one this test binary was not
/// given before, by `free_addr` or `cluster::free_udp`: the tests of one binary run in parallel, and two of
/// them given the same released port would start two processes on it, one test then talking to the other's
/// process.
pub(crate) fn unused_port(bind: impl Fn() -> SocketAddr) -> SocketAddr {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut addr = None;
    for _ in 0..1_000 {
        let a = bind();
        if !given.contains(&a.port()) {
            addr = Some(a);
            break;
        }
    }
    let addr = addr.expect("a loopback port not given before within 1,000 tries");
    given.push(addr.port());
    addr
}

/// A node process on loopback.
pub struct NodeProc {
    /// The child process.
    pub child: Child,
    /// HTTP address.
    pub addr: SocketAddr,
    /// Data directory.
    pub dir: PathBuf,
    /// Node id.
    pub id: String,
}

impl NodeProc {
    /// Starts `oms node` with its data in `dir` and waits until `/healthz` answers.
    pub fn start(id: &str, dir: &Path) -> NodeProc {
        Self::start_at(id, dir, free_addr())
    }

    /// Starts `oms node` listening on `addr`.
    pub fn start_at(id: &str, dir: &Path, addr: SocketAddr) -> NodeProc {
        Self::spawn(id, dir, addr, None)
    }

    /// Starts `oms node` with a config file `dir/node.toml` holding `toml` (the flags set id, address and
    /// data directory).
    pub fn start_with_config(id: &str, dir: &Path, toml: &str) -> NodeProc {
        let config = dir.join("node.toml");
        std::fs::write(&config, toml).expect("write node config");
        Self::spawn(id, dir, free_addr(), Some(&config))
    }

    fn spawn(id: &str, dir: &Path, addr: SocketAddr, config: Option<&Path>) -> NodeProc {
        install_admin_key(dir);
        let mut cmd = Command::new(oms_bin());
        cmd.arg("node");
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        let child = cmd
            .args(["--node-id", id, "--listen", &addr.to_string(), "--data"])
            .arg(dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn oms node");
        let mut n = NodeProc { child, addr, dir: dir.to_owned(), id: id.to_owned() };
        n.wait_healthy(Duration::from_secs(20));
        n
    }

    /// Base URL of the API.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn wait_healthy(&mut self, budget: Duration) {
        let deadline = Instant::now() + budget;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("node {} exited before listening: {status}", self.id);
            }
            if let Ok(s) = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)) {
                drop(s);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("node {} did not listen on {} within {budget:?}", self.id, self.addr);
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills and starts again on the same address and data.
    pub fn restart(&mut self) {
        self.kill9();
        let again = NodeProc::start_at(&self.id, &self.dir, self.addr);
        *self = again;
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The admin token every test node and hub is provisioned with ([`install_admin_key`]) and [`http`] sends:
/// fixed, so that one client can speak to every process a test starts. Only for tests on loopback.
pub const TEST_ADMIN_TOKEN: &str = "oms_7e57000000000000000000000000000000000000000000000000000000000001";
/// The name of that key (in audit rows).
pub const TEST_ADMIN_KEY: &str = "test-admin";

/// Records [`TEST_ADMIN_TOKEN`] as the `admin` key of the data directory `dir` (created if missing), as
/// `oms keys` would with that token. Idempotent.
pub fn install_admin_key(dir: &Path) {
    use oms_service::auth::keys;
    let hash = keys::hex(&keys::token_hash(TEST_ADMIN_TOKEN));
    if keys::read(dir).expect("read keys").keys.iter().any(|k| k.live() && k.sha256 == hash) {
        return;
    }
    let admin = keys::NewKey {
        name: TEST_ADMIN_KEY.into(),
        role: keys::Role::Admin,
        channel: None,
        supplier: None,
        rate_per_s: Some(1_000_000),
    };
    keys::add_token(dir, TEST_ADMIN_TOKEN, admin, 1).expect("provision the test admin key");
}

/// Creates a key in `dir` and returns its token.
pub fn create_key(dir: &Path, name: &str, role: &str, channel: Option<&str>, rate_per_s: Option<u32>) -> String {
    use oms_service::auth::keys;
    let new = keys::NewKey {
        name: name.into(),
        role: role.parse().expect("role"),
        channel: channel.map(|c| oms_protocol::domain::Channel::parse(c).expect("channel")),
        supplier: None,
        rate_per_s,
    };
    keys::create(dir, new, 1).expect("create key")
}

/// Creates a `supplier` key for `supplier` in `dir` and returns its token.
pub fn create_supplier_key(dir: &Path, name: &str, supplier: &str) -> String {
    use oms_service::auth::keys;
    let new = keys::NewKey {
        name: name.into(),
        role: keys::Role::Supplier,
        channel: None,
        supplier: Some(oms_protocol::domain::SupplierId::parse(supplier).expect("supplier")),
        rate_per_s: None,
    };
    keys::create(dir, new, 1).expect("create key")
}

/// A client builder that sends `Authorization: Bearer` [`TEST_ADMIN_TOKEN`] with every request.
pub fn client_builder() -> reqwest::ClientBuilder {
    client_with_token(TEST_ADMIN_TOKEN)
}

/// A client builder that sends `Authorization: Bearer <token>` with every request.
pub fn client_with_token(token: &str) -> reqwest::ClientBuilder {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).expect("token header");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder().default_headers(headers)
}

/// An HTTP client with a time budget per request that authenticates as the test admin.
pub fn http() -> reqwest::Client {
    http_as(TEST_ADMIN_TOKEN)
}

/// An HTTP client that sends `token` as its bearer token.
pub fn http_as(token: &str) -> reqwest::Client {
    client_with_token(token).timeout(Duration::from_secs(20)).build().expect("client")
}

/// Runs `oms <args>` to completion and returns its standard output; panics (with its stderr) if it fails.
pub fn run_oms(args: &[&str]) -> String {
    let out = Command::new(oms_bin()).args(args).output().expect("run oms");
    assert!(out.status.success(), "oms {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An HTTP client that sends no credentials.
pub fn http_anonymous() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("client")
}

/// A valid order body for `skus` (sku, qty).
pub fn order_body(ext: &str, lines: &[(&str, u32)]) -> serde_json::Value {
    serde_json::json!({
        "external_ref": ext, "channel": "web",
        "lines": lines.iter().map(|(s, q)| serde_json::json!({"sku": s, "qty": q, "unit_price_minor": 1250, "currency": "EUR"})).collect::<Vec<_>>(),
        "ship_to": {"name": "Ada Lovelace", "line1": "1 Main St", "city": "Berlin", "postcode": "10115", "country": "DE", "lat": 52.52, "lon": 13.40}
    })
}

/// Adds `sku` to the catalog and receives `qty` units.
pub async fn seed(c: &reqwest::Client, n: &NodeProc, sku: &str, qty: u32) {
    let r = c
        .put(n.url(&format!("/v1/catalog/{sku}")))
        .json(&serde_json::json!({"name": sku, "bin": format!("B-{sku}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "catalog put");
    if qty > 0 {
        let r = c
            .post(n.url("/v1/stock/receipts"))
            .json(&serde_json::json!({"sku": sku, "qty": qty}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "receipt");
    }
}

/// Posts an order with an idempotency key; returns status and body.
pub async fn place(c: &reqwest::Client, n: &NodeProc, key: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let r = c.post(n.url("/v1/orders")).header("idempotency-key", key).json(body).send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// GET returning JSON.
pub async fn get(c: &reqwest::Client, url: String) -> (u16, serde_json::Value) {
    let r = c.get(url).send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// POST JSON returning status and JSON.
pub async fn post(c: &reqwest::Client, url: String, body: serde_json::Value) -> (u16, serde_json::Value) {
    let r = c.post(url).json(&body).send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// The localstripe the Stripe-compatible provider's tests run against (`OMS_LOCALSTRIPE_URL`, set by
/// `.ci/localstripe`). None when unset, after saying the test skipped; a panic when unset but
/// `OMS_REQUIRE_LOCALSTRIPE` is (CI), so a missing localstripe fails instead of passing.
pub fn localstripe(test: &str) -> Option<String> {
    match std::env::var("OMS_LOCALSTRIPE_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                std::env::var("OMS_REQUIRE_LOCALSTRIPE").is_err(),
                "OMS_REQUIRE_LOCALSTRIPE is set but OMS_LOCALSTRIPE_URL is not: {test} cannot run"
            );
            eprintln!("skipped {test}: OMS_LOCALSTRIPE_URL is unset (run it with `bash .ci/localstripe cargo test …`)");
            None
        }
    }
}
