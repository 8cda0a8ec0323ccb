//! The server loop and the request guards over real HTTP on loopback: host allow-list, origin check, content
//! types, header-read and request timeouts, the connection and in-flight limits, graceful shutdown.
//!
//! Every wait is bounded in time and every loop in count.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use oms_service::guard::{MediaType, require_media_type};
use oms_service::serve::{HttpConfig, serve};
use oms_service::{Problem, RawBody};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

/// Size of the `/big` answer: far beyond what the socket buffers of a client that reads nothing hold.
const BIG_BYTES: usize = 32 << 20;

/// What the test routes share: how many writes ran, and a gate the `/hold` route waits on.
#[derive(Clone, Default)]
struct Probe {
    writes: Arc<AtomicUsize>,
    gate: Arc<Notify>,
}

fn app(probe: Probe) -> Router {
    let json = Router::new()
        .route("/hit", get(|| async { "ok" }))
        .route("/big", get(|| async { vec![b'x'; BIG_BYTES] }))
        .route(
            "/write",
            post(|State(p): State<Probe>, RawBody(b): RawBody| async move {
                p.writes.fetch_add(1, Ordering::SeqCst);
                format!("wrote {} bytes", b.len())
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .route(
            "/hold",
            get(|State(p): State<Probe>| async move {
                p.gate.notified().await;
                "released"
            }),
        );
    let json = require_media_type(json, MediaType::Json);
    let csv = Router::new().route(
        "/import",
        post(|State(p): State<Probe>| async move {
            p.writes.fetch_add(1, Ordering::SeqCst);
            "imported"
        }),
    );
    let csv = require_media_type(csv, MediaType::Csv);
    json.merge(csv)
        .fallback(|| async { Problem::new(axum::http::StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(probe)
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    probe: Probe,
}

impl Server {
    async fn start(cfg: HttpConfig) -> Server {
        let probe = Probe::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let app = app(probe.clone());
        let task = tokio::spawn(async move {
            serve(listener, app, &cfg, None, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Server { addr, stop: Some(stop), task, probe }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn writes(&self) -> usize {
        self.probe.writes.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

async fn problem(r: reqwest::Response) -> (u16, Value) {
    let s = r.status().as_u16();
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if s >= 400 {
        assert_eq!(ct, "application/problem+json", "{s} {v}");
    }
    (s, v)
}

/// Writes `req` on a fresh connection and reads until the server closes it (at most 10 s).
async fn raw(addr: SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.expect("the server answers").unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn foreign_hosts_are_misdirected_on_every_path() {
    let srv = Server::start(HttpConfig::default()).await;
    let c = client();
    for host in ["evil.example", "evil.example:80", "localhost.evil.example", "127.0.0.2"] {
        for path in ["/hit", "/nowhere", "/write"] {
            let (s, v) = problem(c.get(srv.url(path)).header("host", host).send().await.unwrap()).await;
            assert_eq!((s, v["code"].as_str()), (421, Some("misdirected_request")), "{host} {path}: {v}");
        }
    }
    let port = srv.addr.port();
    for host in [format!("localhost:{port}"), "127.0.0.1".to_owned(), "[::1]:1".to_owned(), "LocalHost".to_owned()] {
        let r = c.get(srv.url("/hit")).header("host", &host).send().await.unwrap();
        assert_eq!(r.status(), 200, "{host}");
    }
    // No Host at all (HTTP/1.0), and an absolute-form target naming another host.
    let r = raw(srv.addr, b"GET /hit HTTP/1.0\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.0 421") && r.contains("misdirected_request"), "{r}");
    let r =
        raw(srv.addr, b"GET http://evil.example/hit HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 421"), "{r}");
    // A refused write changes nothing.
    let r = c.post(srv.url("/write")).header("host", "evil.example").json(&1).send().await.unwrap();
    assert_eq!(r.status(), 421);
    assert_eq!(srv.writes(), 0);
}

#[tokio::test]
async fn configured_hosts_replace_the_default() {
    let cfg = HttpConfig { allowed_hosts: Some(vec!["oms.example".into()]), ..HttpConfig::default() };
    let srv = Server::start(cfg).await;
    let c = client();
    assert_eq!(c.get(srv.url("/hit")).header("host", "OMS.example:443").send().await.unwrap().status(), 200);
    assert_eq!(c.get(srv.url("/hit")).send().await.unwrap().status(), 421, "127.0.0.1 is no longer listed");
}

#[tokio::test]
async fn cross_origin_writes_are_forbidden_and_change_nothing() {
    let srv = Server::start(HttpConfig::default()).await;
    let c = client();
    for origin in ["http://evil.example", "https://evil.example:8081", "null", "garbage"] {
        let r = c.post(srv.url("/write")).header("origin", origin).json(&1).send().await.unwrap();
        let (s, v) = problem(r).await;
        assert_eq!((s, v["code"].as_str()), (403, Some("forbidden_origin")), "{origin}: {v}");
        for m in [reqwest::Method::PUT, reqwest::Method::PATCH, reqwest::Method::DELETE] {
            let r = c.request(m.clone(), srv.url("/write")).header("origin", origin).json(&1).send().await.unwrap();
            assert_eq!(r.status(), 403, "{m} {origin}");
        }
    }
    assert_eq!(srv.writes(), 0, "no refused write ran");
    // Reads are not origin-checked (the browser keeps a cross-origin answer from the page: no CORS headers).
    let r = c.get(srv.url("/hit")).header("origin", "http://evil.example").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    // Same host on another port, and no Origin at all (curl, servers), pass.
    let r = c.post(srv.url("/write")).header("origin", "http://localhost:5173").json(&1).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.post(srv.url("/write")).json(&1).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(srv.writes(), 2);
}

#[tokio::test]
async fn writes_must_name_their_media_type() {
    let srv = Server::start(HttpConfig::default()).await;
    let c = client();
    let refused = [
        c.post(srv.url("/write")),
        c.post(srv.url("/write")).header("content-type", "text/plain").body("{}"),
        c.post(srv.url("/write")).header("content-type", "application/x-www-form-urlencoded").body("a=1"),
        c.post(srv.url("/import")).header("content-type", "text/plain").body("sku,on_hand\n"),
        c.post(srv.url("/import")).header("content-type", "application/json").body("{}"),
        c.post(srv.url("/import")),
    ];
    for rb in refused {
        let (s, v) = problem(rb.send().await.unwrap()).await;
        assert_eq!((s, v["code"].as_str()), (415, Some("unsupported_media_type")), "{v}");
    }
    assert_eq!(srv.writes(), 0, "no refused write ran");
    for rb in [
        c.post(srv.url("/write")).header("content-type", "application/json"),
        c.post(srv.url("/write")).header("content-type", "application/json; charset=utf-8").body("{}"),
        c.post(srv.url("/import")).header("content-type", "text/csv").body("sku,on_hand\n"),
    ] {
        assert_eq!(rb.send().await.unwrap().status(), 200);
    }
    assert_eq!(srv.writes(), 3);
    // Unknown paths and reads are not content-type checked.
    assert_eq!(c.post(srv.url("/nowhere")).send().await.unwrap().status(), 404);
    assert_eq!(c.get(srv.url("/hit")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn slow_headers_are_cut_off_while_others_are_served() {
    let cfg = HttpConfig { header_read_timeout_ms: 1_000, ..HttpConfig::default() };
    let srv = Server::start(cfg).await;
    let c = client();
    let mut slow = TcpStream::connect(srv.addr).await.unwrap();
    let head =
        b"GET /hit HTTP/1.1\r\nHost: localhost\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = Instant::now();
    let mut cut_off_after = None;
    // One byte every 100 ms: the whole head would take 9 s. Bounded by the head's length.
    for (i, b) in head.iter().enumerate() {
        if slow.write_all(&[*b]).await.is_err() {
            cut_off_after = Some(started.elapsed());
            break;
        }
        if i % 5 == 0 {
            // Others are served meanwhile.
            assert_eq!(c.get(srv.url("/hit")).send().await.unwrap().status(), 200);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The server closes the connection; the next read sees it.
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await {
            assert!(n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"), "closed, not answered");
            cut_off_after = Some(started.elapsed());
            break;
        }
    }
    let took = cut_off_after.expect("the slow client is cut off before its head is complete");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "cut off after {took:?}");
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_header_timeout() {
    let cfg = HttpConfig { header_read_timeout_ms: 500, ..HttpConfig::default() };
    let srv = Server::start(cfg).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("closed in time").unwrap_or(0);
    assert!(n == 0 || buf.starts_with(b"HTTP/1.1 408"), "{:?}", String::from_utf8_lossy(&buf[..n]));
    assert!(started.elapsed() >= Duration::from_millis(400), "{:?}", started.elapsed());
}

#[tokio::test]
async fn slow_handlers_and_slow_bodies_time_out() {
    let cfg = HttpConfig { request_timeout_ms: 300, ..HttpConfig::default() };
    let srv = Server::start(cfg).await;
    let c = client();
    let started = Instant::now();
    let (s, v) = problem(c.get(srv.url("/slow")).send().await.unwrap()).await;
    assert_eq!((s, v["code"].as_str()), (503, Some("processing_timeout")), "{v}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    // A body announced but not sent: the client is too slow.
    let mut conn = TcpStream::connect(srv.addr).await.unwrap();
    let head =
        "POST /write HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{";
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut out))
        .await
        .expect("answered and closed")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 408") && out.contains("request_timeout"), "{out}");
    assert_eq!(srv.writes(), 0, "the handler never completed");
    // Quick requests are unaffected.
    assert_eq!(c.get(srv.url("/hit")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let cfg = HttpConfig { connections_max: 2, ..HttpConfig::default() };
    let srv = Server::start(cfg).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /hit HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200", "served, and kept alive");
        held.push(s);
    }
    let c = reqwest::Client::builder().timeout(Duration::from_secs(10)).pool_max_idle_per_host(0).build().unwrap();
    let url = srv.url("/hit");
    let mut third = tokio::spawn(async move { c.get(url).send().await.map(|r| r.status().as_u16()) });
    assert!(
        tokio::time::timeout(Duration::from_millis(700), &mut third).await.is_err(),
        "a third connection waits while two are held"
    );
    drop(held.pop());
    let status = tokio::time::timeout(Duration::from_secs(5), third).await.expect("served once a slot frees");
    assert_eq!(status.unwrap().unwrap(), 200);
}

#[tokio::test]
async fn clients_that_do_not_read_their_answers_are_cut_off() {
    let cfg = HttpConfig { connections_max: 1, send_timeout_ms: 500, ..HttpConfig::default() };
    let srv = Server::start(cfg).await;
    // A client with a small receive window that asks for a large answer and reads none of it holds the only
    // connection slot.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut greedy = socket.connect(srv.addr).await.unwrap();
    greedy.write_all(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let started = Instant::now();
    let c = reqwest::Client::builder().timeout(Duration::from_secs(10)).pool_max_idle_per_host(0).build().unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), c.get(srv.url("/hit")).send())
        .await
        .expect("served once the stalled answer is given up");
    assert_eq!(r.unwrap().status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(400), "after the send timeout: {:?}", started.elapsed());
    // What the greedy client gets is cut short.
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), greedy.read_to_end(&mut got)).await.expect("closed");
    assert!(got.len() < BIG_BYTES, "the answer was cut off ({} bytes)", got.len());
}

#[tokio::test]
async fn requests_beyond_the_in_flight_limit_are_refused() {
    let cfg = HttpConfig { requests_in_flight_max: 1, ..HttpConfig::default() };
    let srv = Server::start(cfg).await;
    let c = client();
    let url = srv.url("/hold");
    let first = tokio::spawn({
        let c = c.clone();
        async move { c.get(url).send().await.unwrap().status().as_u16() }
    });
    // Until the first request holds the only slot (bounded).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut refused = None;
    while Instant::now() < deadline {
        let (s, v) = problem(c.get(srv.url("/hit")).send().await.unwrap()).await;
        if s == 503 {
            refused = Some(v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let v = refused.expect("a second request is refused while the first is in flight");
    assert_eq!(v["code"], "overloaded", "{v}");
    srv.probe.gate.notify_one();
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), first).await.unwrap().unwrap(), 200);
    assert_eq!(c.get(srv.url("/hit")).send().await.unwrap().status(), 200, "the slot is free again");
}

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish_and_stops_accepting() {
    let mut srv = Server::start(HttpConfig::default()).await;
    let c = client();
    let url = srv.url("/hold");
    let in_flight = tokio::spawn({
        let c = c.clone();
        async move { c.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    // Until the request is being handled (a second one to /hit answers meanwhile; bounded).
    tokio::time::sleep(Duration::from_millis(200)).await;
    srv.stop.take().unwrap().send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!srv.task.is_finished(), "the server waits for the request in flight");
    srv.probe.gate.notify_one();
    let status = tokio::time::timeout(Duration::from_secs(5), in_flight).await.unwrap().unwrap();
    assert_eq!(status.unwrap(), 200, "the request in flight finished");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !srv.task.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(srv.task.is_finished(), "serve returned");
    assert!(TcpStream::connect(srv.addr).await.is_err(), "no longer listening");
}
