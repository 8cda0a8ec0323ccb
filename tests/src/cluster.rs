//! A hub and nodes as real `oms` processes on loopback, with a tenant CA made by `oms ca`: what the sync
//! tests and the sync benchmark both start. Every wait has a deadline; processes die with their guard.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The tenant of every certificate made here.
pub const TENANT: &str = "acme";

/// A child process, SIGKILLed when dropped.
pub struct Proc {
    /// The process.
    pub child: Child,
}

impl Proc {
    /// SIGKILL, no chance to flush anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to 30 s for a graceful exit (in-flight commits finish, files close cleanly);
    /// SIGKILL after that. Panics if the process exited with a failure.
    pub fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "process {pid} exited with {status} on SIGTERM");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
        panic!("process {pid} did not stop within 30 s of SIGTERM");
    }

    /// CPU time the process has used so far, user and system, all its threads, in seconds (from
    /// `/proc/<pid>/stat`, whose ticks are `USER_HZ`, 100 a second on Linux whatever the kernel's own tick;
    /// NaN where unavailable, as for a process gone). The difference over a level divided by the orders is a
    /// figure this machine's noise moves less than a throughput, though contention for the cores moves it too.
    pub fn cpu_secs(&self) -> f64 {
        let Ok(s) = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())) else { return f64::NAN };
        // After the command name, which may hold spaces, in parentheses: fields 3.. (utime and stime are 14, 15).
        let Some(rest) = s.rfind(')').map(|i| &s[i + 1..]) else { return f64::NAN };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
        // `rest` starts at field 3 (the state), so field n is at index n - 3.
        (tick(14 - 3) + tick(15 - 3)) / 100.0
    }

    /// Resident set size from /proc, MB (NaN where unavailable).
    pub fn rss_mb(&self) -> f64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A command running the `oms` binary under test.
pub fn oms() -> Command {
    Command::new(crate::oms_bin())
}

/// Runs `cmd`, asserts success, returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run oms");
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A free loopback TCP address.
pub fn free_tcp() -> SocketAddr {
    crate::free_addr()
}

/// A free loopback UDP address, never one this test binary was given before ([`crate::unused_port`]).
pub fn free_udp() -> SocketAddr {
    crate::unused_port(|| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp").local_addr().expect("udp addr"))
}

/// A tenant CA in `root/certs`, the hub's certificate and one per node, made with `oms ca`.
pub fn pki<S: AsRef<str>>(root: &Path, nodes: &[S]) -> PathBuf {
    let certs = root.join("certs");
    run_ok(oms().args(["ca", "init", "--tenant", TENANT, "--dir"]).arg(&certs));
    run_ok(oms().args(["ca", "issue", "--hub", "--dir"]).arg(&certs));
    for n in nodes {
        let out = run_ok(oms().args(["ca", "issue", "--node", n.as_ref(), "--dir"]).arg(&certs));
        assert!(out.contains("serial"), "{out}");
    }
    certs
}

/// A hub process.
pub struct HubProc {
    /// The process.
    pub proc: Proc,
    /// Its HTTP address.
    pub http: SocketAddr,
}

/// The data directory of the hub started in `root`.
pub fn hub_data(root: &Path) -> PathBuf {
    root.join("hub-data")
}

/// Starts `oms hub` with its data in `root/hub-data`, logging to `root/hub.log` at `log_level`.
pub fn spawn_hub(root: &Path, certs: &Path, quic: SocketAddr, http: SocketAddr, log_level: &str) -> HubProc {
    spawn_hub_with(root, certs, quic, http, log_level, "")
}

/// [`spawn_hub`] with a configuration file `root/hub.toml` holding `toml` (flags override its addresses).
/// The hub's data directory gets the test admin key first ([`crate::install_admin_key`]), so a client from
/// [`crate::http`] or [`crate::client_builder`] may call every route.
pub fn spawn_hub_with(
    root: &Path,
    certs: &Path,
    quic: SocketAddr,
    http: SocketAddr,
    log_level: &str,
    toml: &str,
) -> HubProc {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(root.join("hub.log")).expect("hub log");
    let config = root.join("hub.toml");
    std::fs::write(&config, toml).expect("hub config");
    crate::install_admin_key(&hub_data(root));
    let child = oms()
        .arg("hub")
        .arg("--config")
        .arg(&config)
        .args(["--tenant", TENANT, "--listen-quic", &quic.to_string(), "--listen-http", &http.to_string()])
        .arg("--data")
        .arg(hub_data(root))
        .arg("--certs")
        .arg(certs)
        .env("RUST_LOG", log_level)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn hub");
    HubProc { proc: Proc { child }, http }
}

/// A node process linked to a hub.
pub struct ClusterNode {
    /// The process.
    pub proc: Proc,
    /// Node id.
    pub id: String,
    /// HTTP address.
    pub http: SocketAddr,
    /// Its directory (config, log, data).
    pub dir: PathBuf,
    /// Its config file.
    pub config: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    log_level: String,
}

/// Writes `root/<id>/node.toml` for a node linked to the hub at `hub_quic`.
pub fn node_config(root: &Path, certs: &Path, id: &str, hub_quic: SocketAddr) -> (PathBuf, SocketAddr, PathBuf) {
    node_config_with(root, certs, id, hub_quic, "")
}

/// [`node_config`] with `extra` TOML appended after the `[hub]` keys (so bare keys land in `[hub]`, and
/// tables such as `[site]` or `[hub.escrow]` may follow).
pub fn node_config_with(
    root: &Path,
    certs: &Path,
    id: &str,
    hub_quic: SocketAddr,
    extra: &str,
) -> (PathBuf, SocketAddr, PathBuf) {
    let http = free_tcp();
    let dir = root.join(id);
    std::fs::create_dir_all(&dir).expect("node dir");
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = \"{id}\"\ndata_dir = \"{}\"\nlisten = \"{http}\"\n\n[hub]\naddr = \"{hub_quic}\"\ncerts_dir = \"{}\"\ntenant = \"{TENANT}\"\n{extra}\n",
            dir.join("data").display(),
            certs.display()
        ),
    )
    .expect("write node config");
    (config, http, dir)
}

/// Starts `oms node --config <config>`.
pub fn spawn_node_with(id: &str, config: &Path, http: SocketAddr, dir: &Path, log_level: &str) -> ClusterNode {
    // The node's data directory is `dir/data` (see `node_config_with`).
    crate::install_admin_key(&dir.join("data"));
    let log_path = dir.join("node.log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("node log");
    let child = oms()
        .args(["node", "--config"])
        .arg(config)
        .env("RUST_LOG", log_level)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn node");
    ClusterNode {
        proc: Proc { child },
        id: id.to_owned(),
        http,
        dir: dir.to_owned(),
        config: config.to_owned(),
        log: log_path,
        log_level: log_level.to_owned(),
    }
}

/// Writes a config and starts a node linked to the hub at `hub_quic`.
pub fn spawn_node(root: &Path, certs: &Path, id: &str, hub_quic: SocketAddr, log_level: &str) -> ClusterNode {
    let (config, http, dir) = node_config(root, certs, id, hub_quic);
    spawn_node_with(id, &config, http, &dir, log_level)
}

impl ClusterNode {
    /// kill -9 and start again with the same config and data.
    pub fn restart(&mut self) {
        self.proc.kill9();
        let fresh = spawn_node_with(&self.id, &self.config, self.http, &self.dir, &self.log_level);
        let ClusterNode { proc, .. } = fresh;
        self.proc = proc;
    }
}

/// Waits until `GET /healthz` at `addr` answers 2xx, at most `budget`.
pub async fn wait_healthy(http: &reqwest::Client, addr: SocketAddr, budget: Duration) {
    let deadline = Instant::now() + budget;
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("http://{addr}/healthz")).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{addr} did not become healthy in {budget:?}");
}

/// Puts SKU-0 to SKU-`skus - 1` in `node`'s catalog and receives `qty` units of each.
pub async fn seed(http: &reqwest::Client, node: &ClusterNode, skus: usize, qty: u64) {
    for i in 0..skus {
        catalog_and_receive(http, node, &format!("SKU-{i}"), &format!("Item {i}"), &format!("A-{i:02}"), qty).await;
    }
}

/// Places order `body` at `node` under idempotency key `key`, retrying (same key, so at most one order) up to
/// 50 times, 100 ms apart, until it is created; returns the order's id. Panics if it was never accepted.
pub async fn place(http: &reqwest::Client, node: &ClusterNode, key: &str, body: &Value) -> String {
    for _ in 0..50 {
        let r =
            http.post(format!("http://{}/v1/orders", node.http)).header("idempotency-key", key).json(body).send().await;
        if let Ok(r) = r
            && r.status().as_u16() == 201
        {
            let v: Value = r.json().await.unwrap();
            return v["id"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("order {key} was not accepted");
}

/// GET returning JSON, or None when unreachable or not 2xx.
pub async fn get_json(http: &reqwest::Client, url: String) -> Option<Value> {
    let r = http.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// How long [`wait_for`] waits.
pub const WAIT_FOR_MAX: Duration = Duration::from_secs(60);

/// Waits until `f` holds for the JSON at `url` (GET, 2xx), polling every 100 ms for at most
/// [`WAIT_FOR_MAX`]; returns it. Panics naming `what` and the last answer seen.
pub async fn wait_for(http: &reqwest::Client, url: String, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT_FOR_MAX;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Some(v) = get_json(http, url.clone()).await {
            if f(&v) {
                return v;
            }
            last = v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not reached within {WAIT_FOR_MAX:?}; last seen {last}");
}

/// A hub and one node `id` linked to it, with a tenant CA in `root`, both healthy. `site` is TOML added to
/// the node's config after its `[hub]` keys (see [`node_config_with`]).
pub async fn hub_and_node(http: &reqwest::Client, root: &Path, id: &str, site: &str) -> (HubProc, ClusterNode) {
    let certs = pki(root, &[id]);
    let (quic, hub_http) = (free_udp(), free_tcp());
    let hub = spawn_hub(root, &certs, quic, hub_http, "info");
    let (config, node_http, dir) = node_config_with(root, &certs, id, quic, site);
    let node = spawn_node_with(id, &config, node_http, &dir, "info");
    wait_healthy(http, node.http, WAIT_FOR_MAX).await;
    wait_healthy(http, hub_http, WAIT_FOR_MAX).await;
    (hub, node)
}

/// Puts `sku` in `node`'s catalog and receives `qty` units of it.
pub async fn seed_sku(http: &reqwest::Client, node: &ClusterNode, sku: &str, qty: u32) {
    catalog_and_receive(http, node, sku, sku, "A-01", u64::from(qty)).await;
}

/// Puts `sku` (named `name`, in `bin`) in `node`'s catalog and receives `qty` units of it.
async fn catalog_and_receive(http: &reqwest::Client, node: &ClusterNode, sku: &str, name: &str, bin: &str, qty: u64) {
    let base = format!("http://{}/v1", node.http);
    let r = http
        .put(format!("{base}/catalog/{sku}"))
        .json(&serde_json::json!({"name": name, "bin": bin}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "catalog: {}", r.status());
    let r = http
        .post(format!("{base}/stock/receipts"))
        .json(&serde_json::json!({"sku": sku, "qty": qty, "note": "opening"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "receipt of {sku}");
}
