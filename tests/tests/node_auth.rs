//! Who may do what on a node, over real HTTP on loopback: API keys (401), roles (403), channel scoping of
//! orders and idempotency keys, per-key rate limits (429), key changes without a restart, and the audit
//! trail (a row for each change, none for each refusal).

use std::time::{Duration, Instant};

use oms_tests::{NodeProc, create_key, get, http, http_anonymous, http_as, order_body, place, post, seed};
use serde_json::{Value, json};

/// A node whose key file is re-read every 100 ms.
fn node(d: &tempfile::TempDir) -> NodeProc {
    NodeProc::start_with_config("wh1", d.path(), "[auth]\nkeys_check_interval_ms = 100\n")
}

fn body(ext: &str, channel: &str) -> Value {
    let mut b = order_body(ext, &[("A", 1)]);
    b["channel"] = json!(channel);
    b
}

async fn audit(c: &reqwest::Client, n: &NodeProc) -> Vec<Value> {
    let (s, v) = get(c, n.url("/v1/audit/events?limit=1000")).await;
    assert_eq!(s, 200, "{v}");
    v["events"].as_array().unwrap().clone()
}

/// Polls `url` with `c` until it answers `want`, for at most 10 s.
async fn until_status(c: &reqwest::Client, url: String, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = 0;
    while Instant::now() < deadline {
        last = c.get(&url).send().await.unwrap().status().as_u16();
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} still answered {last}, not {want}, after 10 s");
}

#[tokio::test]
async fn tokens_roles_and_key_changes_without_restart() {
    let d = tempfile::tempdir().unwrap();
    let n = node(&d);
    let admin = http();
    seed(&admin, &n, "A", 10).await;

    // No token, a malformed one, an unknown one: 401 problems with WWW-Authenticate; /healthz stays open.
    let anon = http_anonymous();
    let r = anon.get(n.url("/v1/orders")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "unauthenticated");
    for token in ["nonsense", &format!("oms_{}", "0".repeat(64))] {
        let (s, v) = get(&http_as(token), n.url("/v1/stock")).await;
        assert_eq!((s, v["code"].as_str()), (401, Some("unauthenticated")), "{token}");
    }
    assert_eq!(anon.get(n.url("/healthz")).send().await.unwrap().status(), 200);
    // An unauthenticated write changes nothing.
    let r = anon.post(n.url("/v1/stock/receipts")).json(&json!({"sku": "A", "qty": 5})).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // Each role on a route it may not use: 403 forbidden, nothing changed.
    let dir = n.dir.clone();
    let staff = http_as(&create_key(&dir, "picker", "staff", None, None));
    let chan = http_as(&create_key(&dir, "shop", "channel", Some("web"), None));
    let planner = http_as(&create_key(&dir, "plan", "planner", None, None));
    let service = http_as(&create_key(&dir, "cs", "service", None, None));
    let monitor = http_as(&create_key(&dir, "prom", "monitor", None, None));
    // The keys file is read whole: once the key made last is known, so are the others.
    until_status(&monitor, n.url("/metrics"), 200).await;
    let forbidden: Vec<(&reqwest::Client, &str, &str)> = vec![
        (&staff, "POST", "/v1/orders"),
        (&staff, "POST", "/v1/import/stock"),
        (&staff, "PUT", "/v1/catalog/A"),
        (&staff, "GET", "/v1/audit/events"),
        (&chan, "POST", "/v1/waves"),
        (&chan, "POST", "/v1/stock/receipts"),
        (&chan, "GET", "/v1/stock"),
        (&planner, "POST", "/v1/stock/adjustments"),
        (&planner, "POST", "/v1/inbound/ASN-1/receipts"),
        (&planner, "POST", "/v1/inbound/po/PO-1/receipts"),
        (&chan, "GET", "/v1/inbound"),
        (&service, "POST", "/v1/inbound/ASN-1/receipts"),
        (&planner, "GET", "/v1/orders"),
        (&monitor, "GET", "/v1/orders"),
        (&monitor, "GET", "/v1/stock"),
        (&service, "POST", "/v1/orders/wh1-0000000001/pack"),
        (&staff, "GET", "/metrics"),
    ];
    for (c, method, path) in &forbidden {
        let r = c
            .request(method.parse().unwrap(), n.url(path))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!((s, v["code"].as_str()), (403, Some("forbidden")), "{method} {path}: {v}");
    }
    // What each role may do.
    let (s, v) = post(&staff, n.url("/v1/stock/receipts"), json!({"sku": "A", "qty": 5})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(get(&planner, n.url("/v1/stock/A")).await.0, 200);
    let text = monitor.get(n.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("oms_node_auth_refusals_total{reason=\"forbidden\"} 17"), "{text}");
    // At least the four above (more if a poll ran before the new keys were loaded).
    let unauthenticated: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("oms_node_auth_refusals_total{reason=\"unauthenticated\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(unauthenticated >= 4, "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "still valid OpenMetrics");
    let (s, v) = get(&admin, n.url("/v1/stock/A")).await;
    assert_eq!((s, v["on_hand"].as_u64()), (200, Some(15)), "only the admitted receipt changed stock: {v}");

    // Revoked: refused within the check interval, without a restart.
    let out = oms_tests::run_oms(&["keys", "revoke", "--data", dir.to_str().unwrap(), "--name", "picker"]);
    assert!(out.contains("revoked"), "{out}");
    until_status(&staff, n.url("/v1/stock"), 401).await;
    // The CLI lists every key, the revoked one too, and never a token.
    let listed = oms_tests::run_oms(&["keys", "list", "--data", dir.to_str().unwrap()]);
    assert!(listed.contains("picker") && listed.contains("shop") && !listed.contains("oms_"), "{listed}");
}

#[tokio::test]
async fn channels_see_only_their_orders_and_their_idempotency_keys() {
    let d = tempfile::tempdir().unwrap();
    let n = node(&d);
    let admin = http();
    seed(&admin, &n, "A", 10).await;
    let web = http_as(&create_key(&n.dir, "web-shop", "channel", Some("web"), None));
    let pos = http_as(&create_key(&n.dir, "pos", "channel", Some("pos-1"), None));
    until_status(&web, n.url("/v1/orders"), 200).await;

    // The same idempotency key from two channels: two orders, neither a replay of the other.
    let (s, a) = place(&web, &n, "k-1", &body("w-1", "web")).await;
    assert_eq!(s, 201, "{a}");
    let (s, b) = place(&pos, &n, "k-1", &body("p-1", "pos-1")).await;
    assert_eq!(s, 201, "{b}");
    assert_ne!(a["id"], b["id"]);
    // Channel pos replaying with web's body is not web's order either: it may not sell for web at all.
    let (s, v) = place(&pos, &n, "k-1", &body("w-1", "web")).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("forbidden")), "{v}");
    // web's own retry is a replay.
    let r =
        web.post(n.url("/v1/orders")).header("idempotency-key", "k-1").json(&body("w-1", "web")).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], a["id"]);

    // pos cannot read, cancel or refund web's order: 404, as if it did not exist; web's order is untouched.
    let a_id = a["id"].as_str().unwrap();
    let (s, v) = get(&pos, n.url(&format!("/v1/orders/{a_id}"))).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("order_not_found")), "{v}");
    let (s, v) = post(&pos, n.url(&format!("/v1/orders/{a_id}/cancel")), json!({"reason": "mine"})).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("order_not_found")), "{v}");
    let (s, v) = post(&pos, n.url(&format!("/v1/orders/{a_id}/returns/1/refund")), json!({})).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("order_not_found")), "{v}");
    let (_, v) = get(&admin, n.url(&format!("/v1/orders/{a_id}"))).await;
    assert_eq!(v["status"], "accepted");
    // Listings show each channel its own orders only; the admin sees both.
    let ids = |v: &Value| v["orders"].as_array().unwrap().iter().map(|o| o["id"].clone()).collect::<Vec<_>>();
    let (_, v) = get(&pos, n.url("/v1/orders")).await;
    assert_eq!(ids(&v), [b["id"].clone()]);
    let (_, v) = get(&web, n.url("/v1/orders")).await;
    assert_eq!(ids(&v), [a["id"].clone()]);
    let (_, v) = get(&admin, n.url("/v1/orders")).await;
    assert_eq!(ids(&v).len(), 2);
    // web may cancel its own.
    let (s, v) = post(&web, n.url(&format!("/v1/orders/{a_id}/cancel")), json!({"reason": "customer asked"})).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("cancelled")), "{v}");
}

#[tokio::test]
async fn the_audit_trail_records_each_change_and_no_refusal() {
    let d = tempfile::tempdir().unwrap();
    let n = node(&d);
    let admin = http();
    let staff = http_as(&create_key(&n.dir, "picker", "staff", None, None));
    let web = http_as(&create_key(&n.dir, "web-shop", "channel", Some("web"), None));
    until_status(&staff, n.url("/v1/stock"), 200).await;
    seed(&admin, &n, "A", 10).await;
    let before = audit(&admin, &n).await;
    assert_eq!(before.len(), 2, "catalog put and receipt: {before:?}");
    assert_eq!(
        (before[0]["key"].as_str(), before[0]["route"].as_str()),
        (Some("test-admin"), Some("/v1/catalog/{sku}"))
    );
    assert_eq!((before[1]["target"].as_str(), before[1]["outcome"].as_str()), (Some("A"), Some("ok")));

    let (s, o) = place(&web, &n, "k1", &body("w-1", "web")).await;
    assert_eq!(s, 201, "{o}");
    let id = o["id"].as_str().unwrap().to_owned();
    // Refusals before the store: 401, 403, 415, 429-free. None leaves a row.
    let anon = http_anonymous();
    assert_eq!(anon.post(n.url("/v1/waves")).json(&json!({})).send().await.unwrap().status(), 401);
    assert_eq!(post(&web, n.url("/v1/waves"), json!({})).await.0, 403);
    assert_eq!(post(&staff, n.url("/v1/orders"), body("s-1", "web")).await.0, 403);
    // A command the store refuses (pack before pick) is recorded with its code; a success with "ok".
    let (s, v) = post(&staff, n.url(&format!("/v1/orders/{id}/pack")), json!({})).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("illegal_transition")), "{v}");
    let (s, wave) = post(&staff, n.url("/v1/waves"), json!({})).await;
    assert_eq!(s, 201, "{wave}");

    let after = audit(&admin, &n).await;
    let rows: Vec<(String, String, String, String, String)> = after[before.len()..]
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("-").to_owned();
            (s("key"), s("role"), s("route"), s("target"), s("outcome"))
        })
        .collect();
    let w = |a: &str, b: &str, c: &str, d: &str, e: &str| (a.into(), b.into(), c.into(), d.into(), e.into());
    assert_eq!(
        rows,
        [
            w("web-shop", "channel", "/v1/orders", &id, "ok"),
            w("picker", "staff", "/v1/orders/{id}/pack", &id, "illegal_transition"),
            w("picker", "staff", "/v1/waves", &format!("wave-{}", wave["id"].as_u64().unwrap()), "ok"),
        ]
    );
    // Sequence numbers increase by one and every row has a time.
    for pair in after.windows(2) {
        assert_eq!(pair[1]["seq"].as_u64().unwrap(), pair[0]["seq"].as_u64().unwrap() + 1);
    }
    assert!(after.iter().all(|e| e["at_ms"].as_u64().unwrap() > 1_700_000_000_000));
    // Paging: after=<seq> continues; only an admin reads the trail.
    let (_, v) = get(&admin, n.url("/v1/audit/events?after=3&limit=1")).await;
    assert_eq!(v["events"][0]["seq"], 4);
    assert_eq!(v["next_after"], 4);
    assert_eq!(get(&staff, n.url("/v1/audit/events")).await.0, 403);
    // The trail survives a restart (it is in the node's database, committed with the changes).
    let mut n = n;
    n.restart();
    // A fresh client: the old one's pooled connections died with the process.
    assert_eq!(audit(&http(), &n).await.len(), after.len());
}

#[tokio::test]
async fn past_its_rate_a_key_gets_429_with_retry_after() {
    let d = tempfile::tempdir().unwrap();
    let n = node(&d);
    // 2 a second, burst 4.
    let slow = http_as(&create_key(&n.dir, "slow", "staff", None, Some(2)));
    until_status(&slow, n.url("/v1/stock"), 200).await;
    let mut limited = None;
    for _ in 0..20 {
        let r = slow.get(n.url("/v1/stock")).send().await.unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("a key at 2/s is limited within 20 back-to-back requests");
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "rate_limited");
    // Another key is unaffected.
    assert_eq!(http().get(n.url("/v1/stock")).send().await.unwrap().status(), 200);
    // After the wait it is served again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(slow.get(n.url("/v1/stock")).send().await.unwrap().status(), 200);
}
