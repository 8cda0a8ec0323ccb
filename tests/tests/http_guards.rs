//! The node's and the hub's HTTP servers against browser-borne and abusive clients, over real processes on
//! loopback: every write names its content type (and a refused one changes nothing), foreign `Host`s and
//! cross-site `Origin`s are refused, the `[http]` section is applied, slow headers are cut off, invented
//! methods do not grow the metrics' label set, the API is served over TLS with a certificate from
//! `oms ca issue --http` (renewed without a restart), and plain HTTP is refused on a reachable address
//! unless `insecure_http` says otherwise.
//!
//! Every loop is bounded in count and every wait in time.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use oms_tests::cluster::{self, free_tcp, free_udp, pki};
use oms_tests::{NodeProc, get, http, order_body, place, seed};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Content types a cross-site page can send without a preflight, and none at all.
const BROWSER_TYPES: [Option<&str>; 4] =
    [None, Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("multipart/form-data; boundary=x")];

/// Sends `method url` with `content_type` (none if `None`) and `body`; status and JSON answer.
async fn send(c: &reqwest::Client, method: &str, url: &str, content_type: Option<&str>, body: &str) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut rb = c.request(m, url).header("idempotency-key", "guard-test").body(body.to_owned());
    if let Some(ct) = content_type {
        rb = rb.header("content-type", ct);
    }
    let r = rb.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn assert_code(s: u16, v: &Value, status: u16, code: &str, what: &str) {
    assert_eq!((s, v["code"].as_str()), (status, Some(code)), "{what}: {v}");
}

/// Everything a write could change at a node: stock, ledger, catalog, orders, waves.
async fn node_state(c: &reqwest::Client, n: &NodeProc, ids: &[&str]) -> Value {
    let mut all = vec![
        get(c, n.url("/v1/stock")).await.1,
        get(c, n.url("/v1/stock/A/ledger")).await.1,
        get(c, n.url("/v1/catalog")).await.1,
        get(c, n.url("/v1/orders")).await.1,
        json!(get(c, n.url("/v1/waves/1")).await.0),
    ];
    for id in ids {
        all.push(get(c, n.url(&format!("/v1/orders/{id}"))).await.1);
    }
    Value::Array(all)
}

#[tokio::test]
async fn node_writes_must_name_their_content_type_and_refusals_change_nothing() {
    let d = tempfile::tempdir().unwrap();
    let n = NodeProc::start("wh1", d.path());
    let c = http();
    seed(&c, &n, "A", 10).await;
    let (_, o1) = place(&c, &n, "o1", &order_body("o1", &[("A", 2)])).await;
    let (_, o2) = place(&c, &n, "o2", &order_body("o2", &[("A", 1)])).await;
    let (id1, id2) = (o1["id"].as_str().unwrap().to_owned(), o2["id"].as_str().unwrap().to_owned());
    let before = node_state(&c, &n, &[&id1, &id2]).await;
    let order = order_body("o3", &[("A", 1)]).to_string();
    let o = format!("/v1/orders/{id1}");
    // Every write route with a body that would change something if the route took it.
    let json_routes: Vec<(&str, String, &str)> = vec![
        ("PUT", "/v1/catalog/A".into(), r#"{"name": "Changed", "bin": "X"}"#),
        ("POST", "/v1/stock/receipts".into(), r#"{"sku": "A", "qty": 5}"#),
        ("POST", "/v1/stock/adjustments".into(), r#"{"sku": "A", "delta": -1, "reason": "x"}"#),
        ("POST", "/v1/stock/counts".into(), r#"{"sku": "A", "counted": 1}"#),
        ("POST", "/v1/orders".into(), &order),
        ("POST", format!("{o}/picks"), r#"{"lines": [{"sku": "A", "picked": 2}]}"#),
        ("POST", format!("{o}/pack"), ""),
        ("POST", format!("{o}/ship"), r#"{"carrier": "DHL", "tracking": "1"}"#),
        ("POST", format!("{o}/deliver"), ""),
        ("POST", format!("{o}/cancel"), r#"{"reason": "x"}"#),
        ("POST", format!("{o}/cancel"), ""),
        ("POST", format!("{o}/accept"), ""),
        ("POST", format!("{o}/reject"), ""),
        ("POST", format!("{o}/returns"), r#"{"lines": [{"sku": "A", "qty": 1}], "disposition": "restock"}"#),
        ("POST", format!("{o}/returns/1/refund"), ""),
        ("POST", "/v1/waves".into(), ""),
        ("POST", "/v1/waves".into(), "{}"),
    ];
    for (method, path, body) in &json_routes {
        for ct in BROWSER_TYPES.into_iter().chain([Some("text/csv")]) {
            let (s, v) = send(&c, method, &n.url(path), ct, body).await;
            assert_code(s, &v, 415, "unsupported_media_type", &format!("{method} {path} as {ct:?}"));
        }
    }
    let csv_routes =
        [("/v1/import/catalog", "sku,name,bin\nA,Changed,X\nN,New,Y\n"), ("/v1/import/stock", "sku,on_hand\nA,99\n")];
    for (path, body) in csv_routes {
        for ct in BROWSER_TYPES.into_iter().chain([Some("application/json")]) {
            let (s, v) = send(&c, "POST", &n.url(path), ct, body).await;
            assert_code(s, &v, 415, "unsupported_media_type", &format!("POST {path} as {ct:?}"));
        }
    }
    assert_eq!(node_state(&c, &n, &[&id1, &id2]).await, before, "no refused write changed anything");

    // The body-less writes take application/json with an empty body or `{}`.
    let j = Some("application/json");
    let (s, v) = send(&c, "POST", &n.url("/v1/waves"), j, "").await;
    assert_eq!(s, 201, "wave: {v}");
    let (s, v) = send(&c, "POST", &n.url(&format!("{o}/picks")), j, r#"{"lines": [{"sku": "A", "picked": 2}]}"#).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("picked")), "{v}");
    let (s, v) = send(&c, "POST", &n.url(&format!("{o}/pack")), j, "").await;
    assert_eq!((s, v["status"].as_str()), (200, Some("packed")), "{v}");
    let (s, v) = send(&c, "POST", &n.url(&format!("{o}/ship")), j, r#"{"carrier": "DHL", "tracking": "1"}"#).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("shipped")), "{v}");
    let (s, v) = send(&c, "POST", &n.url(&format!("{o}/deliver")), j, "").await;
    assert_eq!((s, v["status"].as_str()), (200, Some("delivered")), "{v}");
    let ret = r#"{"lines": [{"sku": "A", "qty": 1}], "disposition": "restock"}"#;
    let (s, v) = send(&c, "POST", &n.url(&format!("{o}/returns")), j, ret).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = send(&c, "POST", &n.url(&format!("{o}/returns/1/refund")), j, "").await;
    assert_eq!((s, v["returns"][0]["status"].as_str()), (200, Some("refunded")), "{v}");
    let o2 = format!("/v1/orders/{id2}");
    let (s, v) = send(&c, "POST", &n.url(&format!("{o2}/picks")), j, r#"{"lines": [{"sku": "A", "picked": 0}]}"#).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("backordered")), "{v}");
    let (s, v) = send(&c, "POST", &n.url(&format!("{o2}/accept")), j, "").await;
    assert_eq!((s, v["status"].as_str()), (200, Some("accepted")), "{v}");
    let (s, v) = send(&c, "POST", &n.url(&format!("{o2}/cancel")), j, "").await;
    assert_eq!((s, v["status"].as_str()), (200, Some("cancelled")), "{v}");
    let (s, v) = send(&c, "POST", &n.url(&format!("{o2}/reject")), j, "{}").await;
    assert_code(s, &v, 409, "illegal_transition", "reject passes the content-type check");
    // And the imports take text/csv.
    let (s, v) = send(&c, "POST", &n.url("/v1/import/stock"), Some("text/csv"), "sku,on_hand\nA,99\n").await;
    assert_eq!((s, v["accepted"].as_u64()), (200, Some(1)), "{v}");
    assert_eq!(get(&c, n.url("/v1/stock/A")).await.1["on_hand"], 99);
}

#[tokio::test]
async fn node_refuses_foreign_hosts_and_cross_site_writes() {
    let d = tempfile::tempdir().unwrap();
    let n = NodeProc::start("wh1", d.path());
    let c = http();
    seed(&c, &n, "A", 10).await;
    for path in ["/healthz", "/metrics", "/v1/stock/A", "/v1/nothing"] {
        let r = c.get(n.url(path)).header("host", "rebind.evil.example").send().await.unwrap();
        let s = r.status().as_u16();
        assert_code(s, &r.json().await.unwrap(), 421, "misdirected_request", path);
    }
    let receipt = r#"{"sku": "A", "qty": 5}"#;
    let url = n.url("/v1/stock/receipts");
    let r = c.post(&url).header("host", "rebind.evil.example").header("content-type", "application/json");
    assert_eq!(r.body(receipt).send().await.unwrap().status(), 421);
    for origin in ["http://evil.example", "null"] {
        let r = c.post(&url).header("origin", origin).header("content-type", "application/json").body(receipt);
        let r = r.send().await.unwrap();
        let s = r.status().as_u16();
        assert_code(s, &r.json().await.unwrap(), 403, "forbidden_origin", origin);
    }
    let r =
        c.put(n.url("/v1/catalog/A")).header("origin", "https://evil.example").json(&json!({"name": "X", "bin": "Y"}));
    assert_eq!(r.send().await.unwrap().status(), 403);
    assert_eq!(get(&c, n.url("/v1/stock/A")).await.1["on_hand"], 10, "no refused receipt was booked");
    assert_eq!(get(&c, n.url("/v1/catalog/A")).await.1["name"], "A");
    // The node's own origin on any port, and no Origin at all, pass.
    let r = c.post(&url).header("origin", "http://localhost:3000").header("content-type", "application/json");
    assert_eq!(r.body(receipt).send().await.unwrap().status(), 201);
    let r = c.post(&url).header("host", "localhost").header("content-type", "application/json");
    assert_eq!(r.body(receipt).send().await.unwrap().status(), 201);
    assert_eq!(get(&c, n.url("/v1/stock/A")).await.1["on_hand"], 20);
}

/// Sends a request head one byte every 100 ms on a fresh connection until the server closes it; returns
/// how long that took, or `None` if the whole head (about 10 s of it) went through. Meanwhile, checks that
/// `healthz` keeps answering.
async fn slow_head(c: &reqwest::Client, addr: SocketAddr, host: &str, healthz: &str) -> Option<Duration> {
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let head = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-Padding: {}\r\n\r\n", "a".repeat(60));
    let started = Instant::now();
    for (i, b) in head.bytes().enumerate() {
        if slow.write_all(&[b]).await.is_err() {
            return Some(started.elapsed());
        }
        if i % 5 == 0 {
            let r = c.get(healthz).header("host", host).send().await.unwrap();
            assert_eq!(r.status(), 200, "others are served meanwhile");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await {
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "cut off, not answered: {text}");
            return Some(started.elapsed());
        }
    }
    None
}

#[tokio::test]
async fn node_applies_its_http_section() {
    let d = tempfile::tempdir().unwrap();
    let toml = "[http]\nallowed_hosts = [\"wh1.example\", \"localhost\"]\nheader_read_timeout_ms = 1000\n";
    let n = NodeProc::start_with_config("wh1", d.path(), toml);
    let c = http();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = 0;
    while Instant::now() < deadline {
        status = c.get(n.url("/healthz")).header("host", "wh1.example:8081").send().await.unwrap().status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200, "a listed name is served");
    let r = c.get(n.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 421, "127.0.0.1 is not on the configured list");
    let took = slow_head(&c, n.addr, "wh1.example", &n.url("/healthz")).await.expect("a slow head is cut off");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "cut off after {took:?}");
}

#[tokio::test]
async fn node_refuses_a_bad_http_section() {
    let d = tempfile::tempdir().unwrap();
    let config = d.path().join("node.toml");
    for bad in
        ["[http]\nallowed_hosts = [\"localhost:8081\"]", "[http]\nconnections_max = 0", "[http]\nheader_timeout = 1"]
    {
        std::fs::write(&config, bad).unwrap();
        let listen = oms_tests::free_addr().to_string();
        let mut child = cluster::oms()
            .args(["node", "--listen", &listen, "--config"])
            .arg(&config)
            .arg("--data")
            .arg(d.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // It must stop at once; one that starts anyway is killed after 10 s and fails the test.
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(status.is_some_and(|s| !s.success()), "{bad}: the node started anyway ({status:?})");
        assert!(err.contains("http") || err.contains("header_timeout"), "{bad}: {err}");
    }
}

/// The `method` label values of the node's request counter.
async fn method_labels(c: &reqwest::Client, n: &NodeProc) -> BTreeSet<String> {
    let text = c.get(n.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("oms_node_http_requests_total{"))
        .filter_map(|l| l.split("method=\"").nth(1)?.split('"').next().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn invented_methods_add_at_most_one_metric_label() {
    let d = tempfile::tempdir().unwrap();
    let n = NodeProc::start("wh1", d.path());
    let c = http();
    seed(&c, &n, "A", 1).await;
    let _ = get(&c, n.url("/v1/stock/A")).await;
    let before = method_labels(&c, &n).await;
    assert!(before.contains("GET") && before.contains("PUT") && before.contains("POST"), "{before:?}");
    for i in 0..50 {
        let m = reqwest::Method::from_bytes(format!("INVENTED{i}").as_bytes()).unwrap();
        let path = if i % 2 == 0 { "/v1/orders" } else { "/v1/no-such-route" };
        let r = c.request(m, n.url(path)).send().await.unwrap();
        assert!(r.status().is_client_error(), "{}", r.status());
    }
    let after = method_labels(&c, &n).await;
    let added: Vec<&String> = after.difference(&before).collect();
    assert!(added.len() <= 1, "50 invented methods added {added:?}");
    assert!(added.iter().all(|m| *m == "other"), "{added:?}");
    let text = c.get(n.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!text.contains("no-such-route"), "unmatched paths are labelled `other` too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_refuses_untyped_writes_foreign_hosts_cross_site_writes_and_slow_heads() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let certs = pki(root, &[] as &[&str]);
    let hub_http = free_tcp();
    let toml = "[http]\nheader_read_timeout_ms = 1000\n";
    let _hub = cluster::spawn_hub_with(root, &certs, free_udp(), hub_http, "warn", toml);
    let c = http();
    cluster::wait_healthy(&c, hub_http, Duration::from_secs(30)).await;
    let base = format!("http://{hub_http}/v1");
    let order = json!({
        "external_ref": "web-1", "channel": "web",
        "lines": [{"sku": "SKU-1", "qty": 1, "unit_price_minor": 1250, "currency": "EUR"}],
        "ship_to": {"name": "C", "line1": "1 Street", "city": "X", "postcode": "10115", "country": "DE",
            "lat": 52.52, "lon": 13.40}
    })
    .to_string();
    // With no site, the order waits (backordered): something a cancel can change.
    let (s, placed) = send(&c, "POST", &format!("{base}/orders"), Some("application/json"), &order).await;
    assert_eq!(s, 201, "{placed}");
    let id = placed["id"].as_str().unwrap().to_owned();
    let before = get(&c, format!("{base}/orders/{id}")).await;
    assert_eq!(before.0, 200, "{before:?}");
    for ct in BROWSER_TYPES.into_iter().chain([Some("text/csv")]) {
        let (s, v) = send(&c, "POST", &format!("{base}/orders/{id}/cancel"), ct, "").await;
        assert_code(s, &v, 415, "unsupported_media_type", &format!("cancel as {ct:?}"));
        let (s, v) = send(&c, "POST", &format!("{base}/orders"), ct, &order.replace("web-1", "web-2")).await;
        assert_code(s, &v, 415, "unsupported_media_type", &format!("order as {ct:?}"));
    }
    assert_eq!(get(&c, format!("{base}/orders/{id}")).await, before, "the refused cancels changed nothing");
    let (s, listed) = get(&c, format!("{base}/orders")).await;
    assert_eq!(s, 200);
    assert!(!listed.to_string().contains("web-2"), "no refused order was taken: {listed}");
    // Foreign host, cross-site origin.
    let r = c.get(format!("http://{hub_http}/healthz")).header("host", "rebind.evil.example").send().await.unwrap();
    let s = r.status().as_u16();
    assert_code(s, &r.json().await.unwrap(), 421, "misdirected_request", "hub healthz");
    let r = c
        .post(format!("{base}/orders/{id}/cancel"))
        .header("origin", "http://evil.example")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    assert_code(s, &r.json().await.unwrap(), 403, "forbidden_origin", "hub cancel");
    assert_eq!(get(&c, format!("{base}/orders/{id}")).await, before);
    // The body-less cancel takes application/json with an empty body.
    let (s, v) = send(&c, "POST", &format!("{base}/orders/{id}/cancel"), Some("application/json"), "").await;
    assert_eq!(s, 202, "{v}");
    // A slow head is cut off after the configured second.
    let took = slow_head(&c, hub_http, "127.0.0.1", &format!("http://{hub_http}/healthz")).await.expect("cut off");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "cut off after {took:?}");
}

/// A client that trusts only the CA in `certs` and reports the certificate each server presented. Each call
/// builds a new one, so its first request opens a new connection with a full handshake.
fn https_client(certs: &Path) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(certs.join("ca.pem")).unwrap()).unwrap();
    // With the test admin key: every route but /healthz needs one.
    oms_tests::client_builder()
        .use_rustls_tls()
        .add_root_certificate(ca)
        .tls_info(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `GET url` on a new connection: the status and the serial (hex) of the certificate presented.
async fn https_get(certs: &Path, url: &str) -> Result<(u16, String), String> {
    let r = https_client(certs).get(url).send().await.map_err(|e| format!("{e:?}"))?;
    let der = r.extensions().get::<reqwest::tls::TlsInfo>().and_then(|t| t.peer_certificate()).ok_or("no cert")?;
    let serial = oms_transport::pki::server_cert_info(der).map_err(|e| e.to_string())?.serial_hex();
    Ok((r.status().as_u16(), serial))
}

/// The serial `oms ca issue` or `renew` printed (`... serial <hex> ...` on the first line).
fn printed_serial(out: &str) -> String {
    let words: Vec<&str> = out.lines().next().unwrap_or_default().split_whitespace().collect();
    words[words.iter().position(|w| *w == "serial").unwrap() + 1].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_serves_https_from_oms_ca_issue_http_and_takes_a_renewal_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    cluster::run_ok(cluster::oms().args(["ca", "init", "--tenant", cluster::TENANT, "--dir"]).arg(&certs));
    let issued =
        printed_serial(&cluster::run_ok(cluster::oms().args(["ca", "issue", "--http", "wh1", "--dir"]).arg(&certs)));
    let data = tmp.path().join("wh1");
    std::fs::create_dir_all(&data).unwrap();
    let toml = format!(
        "[http]\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntls_check_interval_ms = 200\n",
        certs.join("http-wh1.pem").display(),
        certs.join("http-wh1.key").display()
    );
    let n = NodeProc::start_with_config("wh1", &data, &toml);
    let https = |path: &str| format!("https://127.0.0.1:{}{path}", n.addr.port());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = Err(String::new());
    while Instant::now() < deadline {
        last = https_get(&certs, &https("/healthz")).await;
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, Ok((200, issued.clone())), "served over TLS with the issued certificate, verified against the CA");
    // Writes too, over the same TLS.
    let c = https_client(&certs);
    let r = c.put(https("/v1/catalog/A")).json(&json!({"name": "A", "bin": "B-1"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Nothing in clear on the API's port.
    assert!(http().get(n.url("/healthz")).send().await.is_err(), "plain HTTP is not answered");

    // Renewed while the node runs: new connections get the new certificate within the check interval.
    let renewed =
        printed_serial(&cluster::run_ok(cluster::oms().args(["ca", "renew", "--http", "wh1", "--dir"]).arg(&certs)));
    assert_ne!(renewed, issued);
    let started = Instant::now();
    let mut seen = String::new();
    while started.elapsed() < Duration::from_secs(10) {
        let (status, serial) = https_get(&certs, &https("/healthz")).await.unwrap();
        assert_eq!(status, 200);
        seen = serial;
        if seen == renewed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, renewed, "the renewed certificate is presented without a restart");
    assert!(started.elapsed() < Duration::from_secs(5), "after {:?}", started.elapsed());
    // The client that connected before the renewal still reads through its kept-alive connection.
    let r = c.get(https("/v1/catalog/A")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// Starts `oms node` listening on every address (`0.0.0.0`) with `toml` as its config; the child and its
/// stderr file.
fn node_on_any_address(dir: &Path, toml: &str) -> (std::process::Child, SocketAddr, std::path::PathBuf) {
    let config = dir.join("node.toml");
    std::fs::write(&config, toml).unwrap();
    let port = oms_tests::free_addr().port();
    let log = dir.join("node.err");
    let child = cluster::oms()
        .args(["node", "--listen", &format!("0.0.0.0:{port}"), "--config"])
        .arg(&config)
        .arg("--data")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (child, SocketAddr::from(([127, 0, 0, 1], port)), log)
}

#[test]
fn plain_http_on_a_reachable_address_needs_insecure_http_and_then_warns() {
    let d = tempfile::tempdir().unwrap();
    // Without TLS and without insecure_http: refused at start, saying what to set.
    let (mut child, _, log) = node_on_any_address(d.path(), "");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(status.is_some_and(|s| !s.success()), "the node started anyway ({status:?})");
    assert!(err.contains("0.0.0.0") && err.contains("tls_cert") && err.contains("insecure_http = true"), "{err}");

    // With insecure_http = true: served, with a warning.
    let (mut child, addr, log) = node_on_any_address(d.path(), "[http]\ninsecure_http = true\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut up = false;
    while Instant::now() < deadline && !up {
        assert!(child.try_wait().unwrap().is_none(), "exited: {}", std::fs::read_to_string(&log).unwrap());
        up = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok();
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut warned = false;
    while up && Instant::now() < deadline && !warned {
        warned = std::fs::read_to_string(&log).unwrap().contains("plain HTTP on a non-loopback address");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "the node did not listen: {}", std::fs::read_to_string(&log).unwrap());
    assert!(warned, "no warning: {}", std::fs::read_to_string(&log).unwrap());
}
