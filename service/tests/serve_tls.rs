//! The server loop over TLS, on real sockets on loopback, with certificates from the tenant PKI
//! (`oms_transport::pki::issue_http`) and the reloading configuration node and hub build
//! (`oms_transport::tls::http_server_tls`): HTTPS verified against the CA and nothing answered in clear, a
//! renewed certificate presented to new connections without a restart while open ones keep working, a broken
//! replacement ignored, and a client that never finishes its handshake cut off at the header-read timeout
//! while others are served.
//!
//! Every wait is bounded in time and every loop in count.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use oms_service::serve::{HttpConfig, serve};
use oms_transport::pki::{self, FileMode, IssueOptions, KeyChoice};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, RootCertStore};
use tokio_rustls::{TlsConnector, client::TlsStream};

/// The name of the HTTP certificate in the PKI directory (`http-api.pem`, `http-api.key`).
const NAME: &str = "api";

/// A CA and an HTTP server certificate for `localhost` and 127.0.0.1 in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    serial: Vec<u8>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        pki::ca_init(dir.path(), "acme", time::Duration::days(365)).unwrap();
        let opts = IssueOptions {
            dns_names: vec!["localhost".into()],
            ip_addresses: vec![[127, 0, 0, 1].into()],
            ..IssueOptions::valid_for(time::Duration::days(90))
        };
        let issued = pki::issue_http(dir.path(), dir.path(), NAME, &opts).unwrap();
        Pki { dir, serial: issued.serial }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn files(&self) -> (PathBuf, PathBuf) {
        pki::http_paths(self.dir.path(), NAME)
    }

    /// `oms ca renew --http api`: a new certificate and key, written by rename; returns the new serial.
    fn renew(&self) -> Vec<u8> {
        pki::renew_http(self.dir.path(), self.dir.path(), NAME, time::Duration::days(90), KeyChoice::Fresh)
            .unwrap()
            .new
            .serial
    }
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.stop.take());
        self.task.abort();
    }
}

/// Serves `/hit` over TLS with the certificate of `pki`, its files checked at most every `check_ms`.
async fn start(pki: &Pki, cfg: HttpConfig, check_ms: u64) -> Server {
    let (cert, key) = pki.files();
    let tls = oms_transport::tls::http_server_tls(&cert, &key, check_ms).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let app = Router::new().route("/hit", get(|| async { "ok" }));
    let task = tokio::spawn(async move {
        serve(listener, app, &cfg, Some(tls.config), async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Server { addr, stop: Some(stop), task }
}

/// A client that trusts only the CA of `ca` (a fresh configuration, so no session is resumed).
fn connector(ca: &Path) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for cert in oms_transport::tls::load_certs(ca).unwrap() {
        roots.add(cert).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(oms_transport::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(cfg))
}

/// A TLS connection to `addr` verified against the CA as `localhost`, within 5 s.
async fn connect(addr: SocketAddr, ca: &Path) -> Result<TlsStream<TcpStream>, std::io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(Duration::from_secs(5), connector(ca).connect(name, tcp)).await?
}

/// The serial of the certificate the server presented on `conn`.
fn serial(conn: &TlsStream<TcpStream>) -> Vec<u8> {
    let chain = conn.get_ref().1.peer_certificates().unwrap();
    pki::server_cert_info(&chain[0]).unwrap().serial
}

/// `GET /hit` on an open connection (kept alive); the status line and body, within 5 s.
async fn hit(conn: &mut TlsStream<TcpStream>) -> String {
    conn.write_all(b"GET /hit HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    // The answer is small: read until its body ("ok", the end of the answer) is in.
    while !out.ends_with(b"ok") && Instant::now() < deadline {
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&out);
    format!("{} {}", text.lines().next().unwrap_or_default(), if out.ends_with(b"ok") { "ok" } else { "" })
}

const OK: &str = "HTTP/1.1 200 OK ok";

#[tokio::test]
async fn https_verifies_against_the_ca_and_nothing_is_answered_in_clear() {
    let pki = Pki::new();
    let server = start(&pki, HttpConfig::default(), 5_000).await;
    // A standard client that trusts the CA: the chain verifies for the name and the address.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.ca()).unwrap()).unwrap();
    let c = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(ca)
        .https_only(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let port = server.addr.port();
    for url in [format!("https://127.0.0.1:{port}/hit"), format!("https://localhost:{port}/hit")] {
        let r = c.get(&url).send().await.unwrap_or_else(|e| panic!("{url}: {e:?}"));
        assert_eq!(r.status(), 200, "{url}");
        assert_eq!(r.text().await.unwrap(), "ok");
    }
    let mut conn = connect(server.addr, &pki.ca()).await.unwrap();
    assert_eq!(serial(&conn), pki.serial);
    assert_eq!(conn.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(hit(&mut conn).await, OK);
    // A client that does not trust the CA gets no connection.
    let untrusting = reqwest::Client::builder().use_rustls_tls().timeout(Duration::from_secs(10)).build().unwrap();
    assert!(untrusting.get(format!("https://127.0.0.1:{port}/hit")).send().await.is_err());
    // Plain HTTP on the TLS port: no HTTP answer, the connection is closed.
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain.write_all(b"GET /hit HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the connection is closed, not left open");
    assert!(!out.starts_with(b"HTTP/") && !out.windows(2).any(|w| w == b"ok"), "answered in clear: {out:?}");
    let r = reqwest::Client::new().get(format!("http://127.0.0.1:{port}/hit")).send().await;
    assert!(r.is_err(), "{r:?}");
    // And the server still serves TLS.
    assert_eq!(hit(&mut connect(server.addr, &pki.ca()).await.unwrap()).await, OK);
}

#[tokio::test]
async fn a_renewed_certificate_reaches_new_connections_and_open_ones_keep_working() {
    let pki = Pki::new();
    let check_ms = 200;
    let server = start(&pki, HttpConfig::default(), check_ms).await;
    let mut old = connect(server.addr, &pki.ca()).await.unwrap();
    assert_eq!(serial(&old), pki.serial);
    assert_eq!(hit(&mut old).await, OK);

    let renewed = pki.renew();
    assert_ne!(renewed, pki.serial);
    let started = Instant::now();
    let mut seen = None;
    for _ in 0..200 {
        let mut conn = connect(server.addr, &pki.ca()).await.unwrap();
        if serial(&conn) == renewed {
            assert_eq!(hit(&mut conn).await, OK, "the new certificate serves");
            seen = Some(started.elapsed());
            break;
        }
        assert_eq!(serial(&conn), pki.serial, "the old one until then");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let took = seen.expect("the renewed certificate is presented within 5 s");
    assert!(took < Duration::from_millis(check_ms + 2_000), "took {took:?}");
    // The connection opened before the renewal keeps its session and is still served.
    assert_eq!(hit(&mut old).await, OK);
}

#[tokio::test]
async fn a_broken_replacement_keeps_the_old_certificate_serving() {
    let pki = Pki::new();
    // Checked on every handshake: each connection below looks at the files.
    let server = start(&pki, HttpConfig::default(), 0).await;
    let (cert, key) = pki.files();
    let good_cert = std::fs::read(&cert).unwrap();
    let good_key = std::fs::read(&key).unwrap();
    // A half-copied certificate, then a certificate whose key is not the one beside it (a renewal of
    // another directory's copy), each replaced by rename as `oms ca` does.
    let other = tempfile::tempdir().unwrap();
    for f in ["ca.pem", "ca.key", "http-api.pem", "http-api.key"] {
        std::fs::copy(pki.dir.path().join(f), other.path().join(f)).unwrap();
    }
    pki::renew_http(other.path(), other.path(), NAME, time::Duration::days(90), KeyChoice::Fresh).unwrap();
    let mismatched = std::fs::read(other.path().join("http-api.pem")).unwrap();
    let half = &good_cert[..good_cert.len() / 2];
    for (what, bytes) in [("half a certificate", half), ("garbage", &b"not a pem"[..]), ("another key's", &mismatched)]
    {
        pki::write_durable(&cert, bytes, FileMode::Public).unwrap();
        for _ in 0..3 {
            let mut conn = connect(server.addr, &pki.ca()).await.unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(serial(&conn), pki.serial, "{what}: the old certificate is kept");
            assert_eq!(hit(&mut conn).await, OK, "{what}");
        }
    }
    assert_eq!(std::fs::read(&key).unwrap(), good_key, "the key was never touched");
    // A good pair again is taken.
    let renewed = pki.renew();
    let conn = connect(server.addr, &pki.ca()).await.unwrap();
    assert_eq!(serial(&conn), renewed);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_cut_off_while_others_are_served() {
    let pki = Pki::new();
    let cfg = HttpConfig { header_read_timeout_ms: 1_000, connections_max: 4, ..HttpConfig::default() };
    let server = start(&pki, cfg, 5_000).await;
    // Two silent sockets and one that sends the first bytes of a ClientHello and stalls.
    let mut stalled = Vec::new();
    for partial in [&b""[..], b"", b"\x16\x03\x01\x02\x00\x01"] {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(partial).await.unwrap();
        stalled.push(s);
    }
    let started = Instant::now();
    // Meanwhile others are served, on the one slot left.
    for _ in 0..4 {
        let mut conn = connect(server.addr, &pki.ca()).await.unwrap();
        assert_eq!(hit(&mut conn).await, OK);
        drop(conn);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, s) in stalled.iter_mut().enumerate() {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        let took = started.elapsed();
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "socket {i}: closed, not answered ({read:?})");
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_secs(5),
            "socket {i}: cut off after {took:?}"
        );
    }
    // Their slots are free again: four connections at once are served.
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(connect(server.addr, &pki.ca()).await.unwrap());
    }
    for conn in &mut open {
        assert_eq!(hit(conn).await, OK);
    }
}
