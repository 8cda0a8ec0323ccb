//! PKI hygiene end to end, with `oms ca` and real `oms` processes on loopback: private keys written `0600`,
//! a revoked node's live session cut by the hub within `crl_check_interval_ms` with the typed close code
//! `Revoked` (and its reconnection refused), and a node whose certificate is renewed while everything runs
//! reloading it without a restart, reconnecting with it once the old one is revoked, with its certificate's
//! remaining validity in its `/metrics`, in the hub's `GET /v1/nodes`, and a warning in the logs when fewer
//! than 30 days are left.
//!
//! Every wait is a bounded loop with a deadline; processes are killed when their guard drops.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use oms_protocol::wire::{ErrorCode, Frame, Hello, PROTOCOL_VERSION, PeerId};
use oms_tests::cluster::{self, TENANT, free_tcp, free_udp, get_json, oms, run_ok};
use oms_transport::tls::ClientTlsFiles;
use oms_transport::{FramedStream, Limits};
use serde_json::{Value, json};

const STEP: Duration = Duration::from_secs(10);
const DEADLINE: Duration = Duration::from_secs(60);

fn client() -> reqwest::Client {
    oms_tests::client_builder().timeout(Duration::from_secs(10)).build().unwrap()
}

/// The hex serial `oms ca issue` or `oms ca renew` printed on its first line (`... serial <hex> ...`).
fn serial_of(out: &str) -> String {
    let words: Vec<&str> = out.lines().next().unwrap_or_default().split_whitespace().collect();
    let at = words.iter().position(|w| *w == "serial").unwrap_or_else(|| panic!("no serial in {out:?}"));
    words[at + 1].to_owned()
}

/// `oms ca init` for the tenant in `root/certs`, and the hub's certificate valid `hub_days`.
fn ca(root: &Path, hub_days: u32) -> std::path::PathBuf {
    let certs = root.join("certs");
    run_ok(oms().args(["ca", "init", "--tenant", TENANT, "--dir"]).arg(&certs));
    run_ok(oms().args(["ca", "issue", "--hub", "--days", &hub_days.to_string(), "--dir"]).arg(&certs));
    certs
}

/// `oms ca issue --node id --days days`; returns the serial.
fn issue_node(certs: &Path, id: &str, days: u32) -> String {
    serial_of(&run_ok(oms().args(["ca", "issue", "--node", id, "--days", &days.to_string(), "--dir"]).arg(certs)))
}

#[cfg(unix)]
#[test]
fn oms_ca_writes_private_keys_0600() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let certs = ca(tmp.path(), 365);
    issue_node(&certs, "wh-north", 365);
    run_ok(oms().args(["ca", "renew", "--node", "wh-north", "--dir"]).arg(&certs));
    run_ok(oms().args(["ca", "renew", "--hub", "--reuse-key", "--dir"]).arg(&certs));
    let mode = |name: &str| std::fs::metadata(certs.join(name)).unwrap().permissions().mode() & 0o777;
    for key in ["ca.key", "hub.key", "node-wh-north.key"] {
        assert_eq!(mode(key), 0o600, "{key}");
    }
    for public in ["ca.pem", "crl.pem", "hub.pem", "node-wh-north.pem", "tenant"] {
        assert_eq!(mode(public) & !0o644, 0, "{public}");
    }
    let names: Vec<String> =
        std::fs::read_dir(&certs).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "a temporary file stayed: {names:?}");
}

/// `oms ca issue --http`: the HTTP API's certificate, its key `0600`, for the names and addresses given, and
/// no oms identity (so it can never sync as a node or the hub); `oms ca renew --http` keeps its names.
#[cfg(unix)]
#[test]
fn oms_ca_issue_http_writes_a_0600_key_and_a_certificate_without_an_identity() {
    use oms_transport::pki;
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let certs = ca(tmp.path(), 365);
    let out = run_ok(
        oms()
            .args(["ca", "issue", "--http", "hub", "--dns", "hub.example", "--dns", "localhost", "--ip", "10.0.0.5"])
            .arg("--dir")
            .arg(&certs),
    );
    let serial = serial_of(&out);
    let mode = |name: &str| std::fs::metadata(certs.join(name)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("http-hub.key"), 0o600);
    assert_eq!(mode("http-hub.pem") & !0o644, 0);
    let pem = std::fs::read_to_string(certs.join("http-hub.pem")).unwrap();
    let info = pki::server_cert_info_pem(&pem).unwrap();
    assert_eq!(info.serial_hex(), serial);
    assert_eq!(info.identity, None, "an HTTP certificate is no oms identity");
    assert_eq!(info.dns_names, ["hub.example", "localhost"]);
    assert_eq!(info.ip_addresses, [std::net::IpAddr::from([10, 0, 0, 5])]);
    assert!(pki::cert_info_pem(&pem).is_err(), "nothing reads an identity out of it");
    // The hub's own certificate is untouched and still its identity.
    let hub = pki::cert_info_pem(&std::fs::read_to_string(certs.join("hub.pem")).unwrap()).unwrap();
    assert_eq!(hub.identity, Some(oms_transport::Identity::hub(TENANT).unwrap()));

    let out = run_ok(oms().args(["ca", "renew", "--http", "hub", "--dir"]).arg(&certs));
    let renewed = pki::server_cert_info_pem(&std::fs::read_to_string(certs.join("http-hub.pem")).unwrap()).unwrap();
    assert_eq!(renewed.serial_hex(), serial_of(&out));
    assert_ne!(renewed.serial, info.serial);
    assert_eq!((renewed.dns_names, renewed.ip_addresses, renewed.identity), (info.dns_names, info.ip_addresses, None));
    assert_eq!(mode("http-hub.key"), 0o600);
    // Defaults: localhost and 127.0.0.1.
    run_ok(oms().args(["ca", "issue", "--http", "wh1", "--dir"]).arg(&certs));
    let wh1 = pki::server_cert_info_pem(&std::fs::read_to_string(certs.join("http-wh1.pem")).unwrap()).unwrap();
    assert_eq!((wh1.dns_names, wh1.ip_addresses), (vec!["localhost".to_owned()], vec![[127, 0, 0, 1].into()]));
}

/// A hand-made node session: its endpoint, connection and stream, held open.
struct Session {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    _stream: FramedStream,
}

/// A QUIC connection to the hub with `node`'s certificate from `certs`, past `Hello` / `HelloAck` (so the
/// hub has registered the session), its stream held open.
async fn hello(certs: &Path, node: &str, quic: SocketAddr) -> Result<Session, String> {
    hello_with(&node_files(certs, certs, node), node, quic).await
}

/// A node's TLS files: the hub verified with `trust/ca.pem` (and its `crl.pem`), the node's pair from `pair`.
fn node_files(trust: &Path, pair: &Path, node: &str) -> ClientTlsFiles {
    ClientTlsFiles {
        ca: trust.join("ca.pem"),
        crl: trust.join("crl.pem"),
        crl_check_interval_ms: 0,
        cert: pair.join(format!("node-{node}.pem")),
        key: pair.join(format!("node-{node}.key")),
        cert_check_interval_ms: 0,
    }
}

/// [`hello`] with the TLS files given.
async fn hello_with(files: &ClientTlsFiles, node: &str, quic: SocketAddr) -> Result<Session, String> {
    let ep = oms_transport::client_endpoint("127.0.0.1:0".parse().unwrap(), files, &Limits::default())
        .map_err(|e| e.to_string())?;
    let conn = oms_transport::connect(&ep, quic, "localhost", STEP).await.map_err(|e| format!("connect: {e}"))?;
    let (send, recv) = oms_transport::open_bi(&conn, STEP).await.map_err(|e| format!("open: {e}"))?;
    let mut s = FramedStream::new(send, recv, 64 * 1024, STEP);
    let me = PeerId::new(format!("oms://{TENANT}/node/{node}")).unwrap();
    let frame = Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        min_version: PROTOCOL_VERSION,
        capabilities: 0,
        peer_id: me,
        actor: vec![7; 16],
    });
    s.write_frame(&frame).await.map_err(|e| format!("write: {e}"))?;
    match s.read_frame().await {
        Ok(Some(Frame::HelloAck(_))) => Ok(Session { _endpoint: ep, conn, _stream: s }),
        other => Err(format!("no HelloAck: {other:?}")),
    }
}

/// Polls the hub's `GET /v1/nodes` until `node`'s entry satisfies `ok`; returns the whole answer.
async fn wait_node(
    http: &reqwest::Client,
    hub: SocketAddr,
    node: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + DEADLINE;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Some(v) = get_json(http, format!("http://{hub}/v1/nodes")).await {
            if let Some(n) = v["nodes"].as_array().and_then(|a| a.iter().find(|n| n["node"] == node))
                && ok(n)
            {
                return v;
            }
            last = v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: the hub's nodes never showed it: {last}");
}

/// `oms ca revoke` on a connected node: the hub closes its live connection with `Revoked` within
/// `crl_check_interval_ms`, refuses its next handshake, and keeps serving another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_node_is_cut_within_the_crl_interval_and_cannot_reconnect() {
    const CRL_CHECK_INTERVAL_MS: u64 = 2_000;
    let tmp = tempfile::tempdir().unwrap();
    let certs = ca(tmp.path(), 365);
    let serial = issue_node(&certs, "wh-gone", 365);
    issue_node(&certs, "wh-stays", 365);
    let (quic, http_addr) = (free_udp(), free_tcp());
    let toml = format!("crl_check_interval_ms = {CRL_CHECK_INTERVAL_MS}\n");
    let hub = cluster::spawn_hub_with(tmp.path(), &certs, quic, http_addr, "info", &toml);
    let http = client();
    cluster::wait_healthy(&http, hub.http, DEADLINE).await;

    let gone = hello(&certs, "wh-gone", quic).await.expect("accepted before the revocation");
    let stays = hello(&certs, "wh-stays", quic).await.expect("another node");
    wait_node(&http, hub.http, "wh-gone", "connected", |n| n["connected"] == true).await;

    run_ok(oms().args(["ca", "revoke", "--serial", &serial, "--dir"]).arg(&certs));
    let revoked_at = Instant::now();
    let budget = Duration::from_millis(CRL_CHECK_INTERVAL_MS);
    let closed =
        tokio::time::timeout(budget * 3, gone.conn.closed()).await.expect("the hub never closed the revoked node");
    let took = revoked_at.elapsed();
    eprintln!("revoked node cut {took:?} after `oms ca revoke` returned");
    assert_eq!(oms_transport::close_code(&closed), Some(ErrorCode::Revoked), "{closed:?}");
    assert!(took <= budget, "cut after {took:?}, more than crl_check_interval_ms = {budget:?}");

    // Its next handshake is refused by the same CRL; the other node was not touched and can still connect.
    let again = hello(&certs, "wh-gone", quic).await;
    assert!(again.is_err(), "a revoked node connected again");
    let other = stays.conn.close_reason();
    assert!(other.is_none(), "the other node's connection was closed: {other:?}");
    hello(&certs, "wh-stays", quic).await.expect("other nodes are still served");
    let nodes = wait_node(&http, hub.http, "wh-gone", "disconnected", |n| n["connected"] == false).await;
    let log = std::fs::read_to_string(tmp.path().join("hub.log")).unwrap_or_default();
    assert!(log.contains("revoked by the new CRL"), "the hub should log the cut:\n{log}\n{nodes}");
}

/// Orders the hub lists for `site` (one page is enough here).
async fn hub_order_count(http: &reqwest::Client, hub: SocketAddr, site: &str) -> usize {
    get_json(http, format!("http://{hub}/v1/orders?site={site}&limit=1000"))
        .await
        .and_then(|v| v["orders"].as_array().map(Vec::len))
        .unwrap_or(0)
}

async fn wait_hub_orders(http: &reqwest::Client, hub: SocketAddr, site: &str, want: usize) {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        if hub_order_count(http, hub, site).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the hub never had {want} orders of {site}: {}", hub_order_count(http, hub, site).await);
}

/// The sample of `oms_node_certificate_expires_in_seconds` in the node's `/metrics`: (serial, seconds).
async fn node_cert_gauge(http: &reqwest::Client, node: SocketAddr) -> Option<(String, i64)> {
    let text = http.get(format!("http://{node}/metrics")).send().await.ok()?.text().await.ok()?;
    let line = text.lines().find(|l| l.starts_with("oms_node_certificate_expires_in_seconds{"))?;
    let serial = line.split("serial=\"").nth(1)?.split('"').next()?.to_owned();
    Some((serial, line.rsplit(' ').next()?.parse().ok()?))
}

/// A node whose certificate has 10 days left (so node and hub warn) is renewed while hub and node run: the
/// node reloads the new pair without a restart (its `/metrics` shows the new serial); once the old serial is
/// revoked, the hub cuts the old session and the node reconnects presenting the new certificate, which the
/// hub's `GET /v1/nodes` shows, and orders keep reaching the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_node_certificate_is_reloaded_and_used_after_the_old_one_is_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = ca(tmp.path(), 10);
    let old_serial = issue_node(&certs, "wh-renew", 10);
    let (quic, http_addr) = (free_udp(), free_tcp());
    let toml = "crl_check_interval_ms = 1000\ncert_check_interval_ms = 200\n";
    let hub = cluster::spawn_hub_with(tmp.path(), &certs, quic, http_addr, "info", toml);
    let (config, node_http, dir) =
        cluster::node_config_with(tmp.path(), &certs, "wh-renew", quic, "cert_check_interval_ms = 200\n");
    let mut node = cluster::spawn_node_with("wh-renew", &config, node_http, &dir, "info");
    let http = client();
    cluster::wait_healthy(&http, hub.http, DEADLINE).await;
    cluster::wait_healthy(&http, node.http, DEADLINE).await;
    cluster::seed(&http, &node, 1, 100).await;
    let body = |n: u32| {
        json!({
            "external_ref": format!("web-{n}"), "channel": "web",
            "lines": [{"sku": "SKU-0", "qty": 1, "unit_price_minor": 1999, "currency": "EUR"}],
            "ship_to": {"name": "C", "line1": "1 Street", "city": "Berlin", "postcode": "10115", "country": "DE",
                        "lat": 52.5, "lon": 13.4}
        })
    };
    cluster::place(&http, &node, "k-0", &body(0)).await;
    wait_hub_orders(&http, hub.http, "wh-renew", 1).await;

    // Ten days left: the warning condition, in the node's metrics, the hub's node list and both logs.
    let (serial, left) = node_cert_gauge(&http, node.http).await.expect("the node exports its certificate's validity");
    assert_eq!(serial, old_serial);
    assert!((10 * 86_400 - 600..=10 * 86_400).contains(&left), "{left}");
    let nodes = wait_node(&http, hub.http, "wh-renew", "the old certificate", |n| {
        n["certificate"]["serial"] == old_serial.as_str()
    })
    .await;
    let entry = nodes["nodes"].as_array().unwrap().iter().find(|n| n["node"] == "wh-renew").unwrap().clone();
    assert_eq!(entry["certificate"]["expiring_soon"], true, "{entry}");
    assert_eq!(nodes["hub_certificate"]["expiring_soon"], true, "{nodes}");
    assert!(nodes["hub_certificate"]["expires_in_s"].as_i64().unwrap() <= 10 * 86_400, "{nodes}");
    let deadline = Instant::now() + DEADLINE;
    let warned = |path: &Path| std::fs::read_to_string(path).unwrap_or_default().contains("expires within 30 days");
    while Instant::now() < deadline && !(warned(&node.log) && warned(&tmp.path().join("hub.log"))) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(warned(&node.log), "the node did not warn:\n{}", std::fs::read_to_string(&node.log).unwrap());
    assert!(warned(&tmp.path().join("hub.log")), "the hub did not warn");

    // Renew in place (the node reads the same directory), without restarting anything.
    let out = run_ok(oms().args(["ca", "renew", "--node", "wh-renew", "--days", "365", "--dir"]).arg(&certs));
    let new_serial = serial_of(&out);
    assert_ne!(new_serial, old_serial);
    assert!(out.contains(&old_serial), "renew names the old serial to revoke later: {out}");
    let deadline = Instant::now() + DEADLINE;
    let mut gauge = None;
    while Instant::now() < deadline {
        gauge = node_cert_gauge(&http, node.http).await;
        if gauge.as_ref().is_some_and(|(s, _)| *s == new_serial) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (serial, left) = gauge.unwrap();
    assert_eq!(serial, new_serial, "the node did not reload its renewed certificate");
    assert!(left > 300 * 86_400, "{left}");
    // The live session keeps the old certificate: it is still valid.
    let nodes = get_json(&http, format!("http://{}/v1/nodes", hub.http)).await.unwrap();
    let entry = nodes["nodes"].as_array().unwrap().iter().find(|n| n["node"] == "wh-renew").unwrap().clone();
    assert_eq!(entry["certificate"]["serial"], old_serial.as_str(), "{entry}");
    let sessions = entry["sessions"].as_u64().unwrap();

    // Revoke the old one: the hub cuts the session, the node reconnects with the new certificate.
    run_ok(oms().args(["ca", "revoke", "--serial", &old_serial, "--dir"]).arg(&certs));
    let nodes = wait_node(&http, hub.http, "wh-renew", "a session with the new certificate", |n| {
        n["connected"] == true && n["certificate"]["serial"] == new_serial.as_str()
    })
    .await;
    let entry = nodes["nodes"].as_array().unwrap().iter().find(|n| n["node"] == "wh-renew").unwrap().clone();
    assert!(entry["sessions"].as_u64().unwrap() > sessions, "{entry}");
    assert_eq!(entry["certificate"]["expiring_soon"], false, "{entry}");
    cluster::place(&http, &node, "k-1", &body(1)).await;
    wait_hub_orders(&http, hub.http, "wh-renew", 2).await;
    assert!(node.proc.child.try_wait().unwrap().is_none(), "the node was not to restart");
    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
    assert!(log.contains("certificate is revoked"), "the node should log why its link was cut:\n{log}");
    node.proc.kill9();
}

/// `parts` concatenated into `to`, written durably (an operator's `cat a b > tmp && mv tmp to`).
fn bundle(to: &Path, parts: &[std::path::PathBuf]) {
    let text: String = parts.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
    oms_transport::pki::write_durable(to, text.as_bytes(), oms_transport::pki::FileMode::Public).unwrap();
}

/// Retries [`hello_with`] until it succeeds or `budget` passes; the session and how long it took.
async fn hello_within(files: &ClientTlsFiles, node: &str, quic: SocketAddr, budget: Duration) -> (Session, Duration) {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < budget {
        match hello_with(files, node, quic).await {
            Ok(s) => return (s, start.elapsed()),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{node} was not accepted within {budget:?}: {last}");
}

/// CA rollover without a hub restart: a node with a certificate from a NEW CA is refused; once the hub's
/// `ca.pem` holds the old and the new CA (and `crl.pem` a CRL of each), it connects within
/// `crl_check_interval_ms`, and a node of the old CA still does. A broken bundle keeps the roots in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_a_new_ca_connects_once_the_hubs_ca_bundle_holds_it_without_a_restart() {
    const CRL_CHECK_INTERVAL_MS: u64 = 1_000;
    let tmp = tempfile::tempdir().unwrap();
    let certs = ca(tmp.path(), 365);
    issue_node(&certs, "wh-old", 365);
    let new_ca = tmp.path().join("new-ca");
    run_ok(oms().args(["ca", "init", "--tenant", TENANT, "--dir"]).arg(&new_ca));
    issue_node(&new_ca, "wh-new", 365);
    let (quic, http_addr) = (free_udp(), free_tcp());
    let toml = format!("crl_check_interval_ms = {CRL_CHECK_INTERVAL_MS}\n");
    let hub = cluster::spawn_hub_with(tmp.path(), &certs, quic, http_addr, "info", &toml);
    let http = client();
    cluster::wait_healthy(&http, hub.http, DEADLINE).await;

    // The new node trusts the hub through the old CA (its ca.pem is the old one), its pair is the new CA's.
    let new_node = node_files(&certs, &new_ca, "wh-new");
    let refused = hello_with(&new_node, "wh-new", quic).await;
    assert!(refused.is_err(), "a certificate of a CA the hub does not trust was accepted");
    hello(&certs, "wh-old", quic).await.expect("a node of the old CA");

    // The bundle: old and new CA, and a CRL of each. The node's own trust files stay the old CA's.
    let node_trust = tmp.path().join("node-trust");
    std::fs::create_dir_all(&node_trust).unwrap();
    for f in ["ca.pem", "crl.pem"] {
        std::fs::copy(certs.join(f), node_trust.join(f)).unwrap();
    }
    let new_node = node_files(&node_trust, &new_ca, "wh-new");
    bundle(&certs.join("crl.pem"), &[certs.join("crl.pem"), new_ca.join("crl.pem")]);
    bundle(&certs.join("ca.pem"), &[certs.join("ca.pem"), new_ca.join("ca.pem")]);
    let (_new, took) = hello_within(&new_node, "wh-new", quic, DEADLINE).await;
    eprintln!("the node of the new CA was accepted {took:?} after the bundle was written");
    let budget = Duration::from_millis(CRL_CHECK_INTERVAL_MS) * 3;
    assert!(took <= budget, "accepted after {took:?}, more than {budget:?}");
    hello_with(&node_files(&node_trust, &certs, "wh-old"), "wh-old", quic).await.expect("the old CA's node too");

    // A broken bundle: the roots in force stay, and the hub says so.
    oms_transport::pki::write_durable(
        &certs.join("ca.pem"),
        b"-----BEGIN CERTIFICATE-----\nnot a certificate\n",
        oms_transport::pki::FileMode::Public,
    )
    .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let log = || std::fs::read_to_string(tmp.path().join("hub.log")).unwrap_or_default();
    while Instant::now() < deadline && !log().contains("does not load; keeping the previous ones") {
        // Handshakes make the hub look at the files.
        let _ = hello_with(&new_node, "wh-new", quic).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(log().contains("does not load; keeping the previous ones"), "the hub should log the broken bundle");
    hello_with(&new_node, "wh-new", quic).await.expect("the new CA's node after a broken bundle");
    hello_with(&node_files(&node_trust, &certs, "wh-old"), "wh-old", quic).await.expect("and the old CA's");
}

/// A node certificate that expires while connected: the hub closes the session with `CertificateExpired`
/// within `crl_check_interval_ms` of its `not_after`, logs it, and refuses the next handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_that_expires_while_connected_is_cut_with_certificate_expired() {
    use oms_transport::pki::{self, IssueOptions};
    const CRL_CHECK_INTERVAL_MS: u64 = 1_000;
    const VALID_S: i64 = 5;
    let tmp = tempfile::tempdir().unwrap();
    let certs = ca(tmp.path(), 365);
    let (quic, http_addr) = (free_udp(), free_tcp());
    let toml = format!("crl_check_interval_ms = {CRL_CHECK_INTERVAL_MS}\n");
    let hub = cluster::spawn_hub_with(tmp.path(), &certs, quic, http_addr, "info", &toml);
    let http = client();
    cluster::wait_healthy(&http, hub.http, DEADLINE).await;

    // Issued in-process: the CLI takes whole days, and a few seconds make no sense there.
    let id = oms_transport::Identity::node(TENANT, "wh-short").unwrap();
    let opts = IssueOptions {
        not_after: time::OffsetDateTime::now_utc() + time::Duration::seconds(VALID_S),
        ..IssueOptions::valid_for(time::Duration::days(1))
    };
    let issued = pki::issue(&certs, &certs, &id, &opts).unwrap();
    let not_after = pki::cert_info_pem(&std::fs::read_to_string(&issued.cert_path).unwrap()).unwrap().not_after_unix_s;
    let session = hello(&certs, "wh-short", quic).await.expect("accepted while valid");
    let closed = tokio::time::timeout(Duration::from_secs(VALID_S as u64) + DEADLINE / 2, session.conn.closed())
        .await
        .expect("the hub never closed the expired node's connection");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    eprintln!("cut {}s after not_after", now - not_after);
    assert_eq!(oms_transport::close_code(&closed), Some(ErrorCode::CertificateExpired), "{closed:?}");
    assert!(now > not_after, "cut before its not_after");
    let budget_s = i64::try_from(CRL_CHECK_INTERVAL_MS / 1_000).unwrap() + 1;
    assert!(now - not_after <= budget_s + 1, "cut {}s after not_after", now - not_after);
    assert!(hello(&certs, "wh-short", quic).await.is_err(), "an expired certificate connected again");
    let log = std::fs::read_to_string(tmp.path().join("hub.log")).unwrap_or_default();
    assert!(log.contains("expired while connected"), "the hub should log the cut:\n{log}");
}

/// The serial of the certificate in `path`.
fn serial_in(path: &Path) -> String {
    oms_transport::pki::cert_info_pem(&std::fs::read_to_string(path).unwrap()).unwrap().serial_hex()
}

/// A node whose `certs_dir` holds its pair and `ca.pem`, but no `crl.pem` yet.
fn node_certs(root: &Path, certs: &Path, node: &str) -> std::path::PathBuf {
    let dir = root.join(format!("{node}-certs"));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["ca.pem".to_owned(), format!("node-{node}.pem"), format!("node-{node}.key")] {
        std::fs::copy(certs.join(&f), dir.join(&f)).unwrap();
    }
    dir
}

/// Polls `log` until it contains `what`.
async fn wait_log(log: &Path, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    let read = || std::fs::read_to_string(log).unwrap_or_default();
    while Instant::now() < deadline && !read().contains(what) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(read().contains(what), "{} never said {what:?}:\n{}", log.display(), read());
}

/// The hub's certificate revoked and the CRL copied into a node's certs dir: the node cuts its live link
/// (code `Revoked`, within its `crl_check_interval_ms`) and refuses to connect again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_crl_refuses_a_revoked_hub_certificate_and_cuts_its_link() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = ca(tmp.path(), 365);
    issue_node(&certs, "wh-crl", 365);
    let hub_serial = serial_in(&certs.join("hub.pem"));
    let node_dir = node_certs(tmp.path(), &certs, "wh-crl");
    let (quic, http_addr) = (free_udp(), free_tcp());
    let hub = cluster::spawn_hub_with(tmp.path(), &certs, quic, http_addr, "info", "crl_check_interval_ms = 500\n");
    let (config, node_http, dir) =
        cluster::node_config_with(tmp.path(), &node_dir, "wh-crl", quic, "crl_check_interval_ms = 200\n");
    let node = cluster::spawn_node_with("wh-crl", &config, node_http, &dir, "info");
    let http = client();
    cluster::wait_healthy(&http, hub.http, DEADLINE).await;
    let nodes = wait_node(&http, hub.http, "wh-crl", "connected", |n| n["connected"] == true).await;
    let entry = nodes["nodes"].as_array().unwrap().iter().find(|n| n["node"] == "wh-crl").unwrap().clone();
    let sessions = entry["sessions"].as_u64().unwrap();

    run_ok(oms().args(["ca", "revoke", "--serial", &hub_serial, "--dir"]).arg(&certs));
    std::fs::copy(certs.join("crl.pem"), node_dir.join("crl.pem")).unwrap();
    wait_log(&node.log, "revoked by the node's crl.pem").await;
    wait_node(&http, hub.http, "wh-crl", "disconnected", |n| n["connected"] == false).await;
    // It stays away: its reconnections are refused by its own verifier.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let v = get_json(&http, format!("http://{}/v1/nodes", hub.http)).await.unwrap();
        let entry = v["nodes"].as_array().unwrap().iter().find(|n| n["node"] == "wh-crl").unwrap().clone();
        assert_eq!(entry["connected"], false, "the node connected to a revoked hub: {entry}");
        assert_eq!(entry["sessions"].as_u64().unwrap(), sessions, "{entry}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_log(&node.log, "Revoked").await;
}

/// A hub certificate that expires while a node is linked: the node closes the link with
/// `CertificateExpired`, logs why, and does not link again with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_closes_its_link_when_the_hubs_certificate_expires() {
    use oms_transport::pki::{self, IssueOptions};
    const VALID_S: i64 = 15;
    let tmp = tempfile::tempdir().unwrap();
    let certs = ca(tmp.path(), 365);
    issue_node(&certs, "wh-exp", 365);
    let (quic, http_addr) = (free_udp(), free_tcp());
    let hub = cluster::spawn_hub_with(tmp.path(), &certs, quic, http_addr, "info", "cert_check_interval_ms = 100\n");
    let http = client();
    cluster::wait_healthy(&http, hub.http, DEADLINE).await;
    // A hub certificate with seconds left, reloaded by the running hub (issued in-process: the CLI takes days).
    let opts = IssueOptions {
        dns_names: vec!["localhost".into()],
        not_after: time::OffsetDateTime::now_utc() + time::Duration::seconds(VALID_S),
        ..IssueOptions::valid_for(time::Duration::days(1))
    };
    let issued = pki::issue(&certs, &certs, &oms_transport::Identity::hub(TENANT).unwrap(), &opts).unwrap();
    let short = pki::hex(&issued.serial);
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        let v = get_json(&http, format!("http://{}/v1/nodes", hub.http)).await.unwrap_or_default();
        if v["hub_certificate"]["serial"] == short.as_str() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (config, node_http, dir) = cluster::node_config_with(tmp.path(), &certs, "wh-exp", quic, "");
    let node = cluster::spawn_node_with("wh-exp", &config, node_http, &dir, "info");
    wait_node(&http, hub.http, "wh-exp", "connected", |n| n["connected"] == true).await;
    wait_log(&node.log, "the hub's certificate expired").await;
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(log.contains("CertificateExpired"), "the node should log the typed reason:\n{log}");
    wait_node(&http, hub.http, "wh-exp", "disconnected", |n| n["connected"] == false).await;
    let expired_at = pki::cert_info_pem(&std::fs::read_to_string(&issued.cert_path).unwrap()).unwrap().not_after_unix_s;
    assert!(time::OffsetDateTime::now_utc().unix_timestamp() > expired_at);
}

/// `oms ca init` makes the PKI directory 0700 (tightening an existing one); `oms ca renew` archives the
/// replaced pair to `archive/<stem>-<serial>.pem/.key` (key 0600), says where, and keeps the last 5.
#[cfg(unix)]
#[test]
fn oms_ca_init_makes_the_dir_0700_and_renew_archives_the_replaced_pair() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::set_permissions(&certs, std::fs::Permissions::from_mode(0o755)).unwrap();
    run_ok(oms().args(["ca", "init", "--tenant", TENANT, "--dir"]).arg(&certs));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&certs), 0o700, "oms ca init should tighten the PKI directory");
    let fresh = tmp.path().join("fresh");
    run_ok(oms().args(["ca", "init", "--tenant", TENANT, "--dir"]).arg(&fresh));
    assert_eq!(mode(&fresh), 0o700);

    let mut serial = issue_node(&certs, "wh-a", 365);
    let mut replaced = Vec::new();
    for round in 0..7 {
        let key_before = std::fs::read(certs.join("node-wh-a.key")).unwrap();
        let out = run_ok(oms().args(["ca", "renew", "--node", "wh-a", "--dir"]).arg(&certs));
        let archived = certs.join("archive").join(format!("node-wh-a-{serial}"));
        let (pem, key) = (archived.with_extension("pem"), archived.with_extension("key"));
        assert!(out.contains(&pem.display().to_string()), "renew should say where the old pair went: {out}");
        assert_eq!(std::fs::read(&key).unwrap(), key_before, "round {round}");
        assert_eq!(serial_in(&pem), serial);
        assert_eq!(mode(&key), 0o600);
        replaced.push(pem);
        serial = serial_of(&out);
    }
    assert_eq!(mode(&certs.join("archive")), 0o700);
    let kept: Vec<bool> = replaced.iter().map(|p| p.exists() && p.with_extension("key").exists()).collect();
    assert_eq!(kept, [false, false, true, true, true, true, true], "the last 5 are kept");
}
