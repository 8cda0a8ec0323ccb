//! API keys, roles, channel isolation, the audit trail, tracking links and the refusal counters of the hub,
//! over real HTTP on loopback against a real `oms hub` process. Keys are made in the hub's data directory
//! with `oms_service::auth::keys` (what `oms keys create` does) and revoked the same way; the hub picks the
//! change up from the file.
//!
//! Every wait is a bounded loop with a deadline; the hub is killed when its guard drops.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use oms_protocol::domain::Channel;
use oms_service::auth::keys::{self, NewKey, Role};
use oms_tests::cluster::{self, free_tcp, free_udp, hub_data, pki};
use serde_json::{Value, json};

const HEALTHY: Duration = Duration::from_secs(30);

/// Creates a key in the hub's data directory; returns its token.
fn key(root: &Path, name: &str, role: Role, channel: Option<&str>, rate_per_s: Option<u32>) -> String {
    let new = NewKey {
        name: name.into(),
        role,
        channel: channel.map(|c| Channel::parse(c).unwrap()),
        supplier: None,
        rate_per_s,
    };
    keys::create(&hub_data(root), new, 1).unwrap()
}

fn client(token: &str) -> reqwest::Client {
    oms_tests::client_with_token(token).timeout(Duration::from_secs(20)).build().unwrap()
}

fn anonymous() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap()
}

fn order(ext: &str, channel: &str) -> Value {
    json!({
        "external_ref": ext, "channel": channel,
        "lines": [{"sku": "SKU-1", "qty": 2, "unit_price_minor": 1250, "currency": "EUR"}],
        "ship_to": {"name": "Ada Customer", "line1": "1 Secret Street", "city": "X", "postcode": "10115",
            "country": "DE", "lat": 52.52, "lon": 13.40}
    })
}

/// Status, JSON body (Null if none) and the response's headers.
async fn call(req: reqwest::RequestBuilder) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = req.send().await.unwrap();
    let (s, h) = (r.status().as_u16(), r.headers().clone());
    (s, r.json().await.unwrap_or(Value::Null), h)
}

async fn create(c: &reqwest::Client, hub: SocketAddr, idem: &str, body: &Value) -> (u16, Value, bool) {
    let (s, v, h) = call(c.post(format!("http://{hub}/v1/orders")).header("idempotency-key", idem).json(body)).await;
    (s, v, h.get("idempotent-replayed").is_some())
}

async fn get(c: &reqwest::Client, url: String) -> (u16, Value) {
    let (s, v, _) = call(c.get(url)).await;
    (s, v)
}

async fn cancel(c: &reqwest::Client, hub: SocketAddr, id: &str, body: Option<Value>) -> (u16, Value) {
    let req = c.post(format!("http://{hub}/v1/orders/{id}/cancel")).header("content-type", "application/json");
    let req = match body {
        Some(b) => req.body(b.to_string()),
        None => req,
    };
    let (s, v, _) = call(req).await;
    (s, v)
}

fn code(v: &Value) -> &str {
    v["code"].as_str().unwrap_or("")
}

/// Every audit row, as (key, method, route, target, outcome).
async fn audit_rows(admin: &reqwest::Client, hub: SocketAddr) -> Vec<(String, String, String, String, String)> {
    let mut out = Vec::new();
    let mut after = 0u64;
    for _ in 0..100 {
        let (s, v) = get(admin, format!("http://{hub}/v1/audit/events?after={after}&limit=2")).await;
        assert_eq!(s, 200, "{v}");
        for e in v["events"].as_array().unwrap() {
            let f = |k: &str| e[k].as_str().unwrap_or("").to_owned();
            out.push((f("key"), f("method"), f("route"), f("target"), f("outcome")));
        }
        match v["next_after"].as_u64() {
            Some(n) => after = n,
            None => return out,
        }
    }
    panic!("the audit trail did not end within 100 pages");
}

/// The value of the sample `name` in OpenMetrics `text`.
fn sample(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

struct Hub {
    tmp: tempfile::TempDir,
    _proc: cluster::HubProc,
    http: SocketAddr,
}

/// A hub without nodes (orders wait, backordered), its keys re-read every 100 ms; `keys` runs first, with the
/// data directory's parent, to create keys before the start.
async fn hub(keys: impl FnOnce(&Path)) -> Hub {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let certs = pki(root, &[] as &[&str]);
    keys(root);
    let http = free_tcp();
    let toml = "[auth]\nkeys_check_interval_ms = 100\n";
    let proc = cluster::spawn_hub_with(root, &certs, free_udp(), http, "info", toml);
    cluster::wait_healthy(&anonymous(), http, HEALTHY).await;
    Hub { tmp, _proc: proc, http }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_channel_isolation_audit_tracking_and_refusal_counters() {
    let mut tokens = std::collections::BTreeMap::new();
    let h = hub(|root| {
        for (name, role, channel, rate) in [
            ("plan", Role::Planner, None, None),
            ("web", Role::Channel, Some("web"), None),
            ("mkt", Role::Channel, Some("marketplace"), None),
            ("svc", Role::Service, None, None),
            ("mon", Role::Monitor, None, None),
            ("slow", Role::Channel, Some("web"), Some(1)),
        ] {
            tokens.insert(name, key(root, name, role, channel, rate));
        }
    })
    .await;
    let hub = h.http;
    let base = format!("http://{hub}/v1");
    let [plan, web, mkt, svc, mon, slow] = ["plan", "web", "mkt", "svc", "mon", "slow"].map(|n| client(&tokens[n]));
    let admin = oms_tests::http();
    let anon = anonymous();

    // 401: no token, a malformed one, an unknown one; with the challenge header.
    let (s, v, headers) = call(anon.get(format!("{base}/nodes"))).await;
    assert_eq!((s, code(&v)), (401, "unauthenticated"), "{v}");
    assert_eq!(headers.get("www-authenticate").map(|h| h.to_str().unwrap()), Some("Bearer"));
    let (s, _) = get(&client("not-a-token"), format!("{base}/nodes")).await;
    assert_eq!(s, 401);
    let unknown = format!("oms_{}", "0".repeat(64));
    let (s, v, _) = create(&client(&unknown), hub, "x-1", &order("x-1", "web")).await;
    assert_eq!((s, code(&v)), (401, "unauthenticated"), "{v}");
    let (s, _) = get(&anon, format!("http://{hub}/metrics")).await;
    assert_eq!(s, 401);

    // 403: roles the route does not admit.
    let (s, v, _) = create(&plan, hub, "p-1", &order("p-1", "web")).await;
    assert_eq!((s, code(&v)), (403, "forbidden"), "planner creates no order: {v}");
    let (s, v) = get(&web, format!("{base}/nodes")).await;
    assert_eq!((s, code(&v)), (403, "forbidden"), "{v}");
    let (s, v) = get(&mon, format!("{base}/orders")).await;
    assert_eq!((s, code(&v)), (403, "forbidden"), "{v}");
    let (s, v) = get(&plan, format!("{base}/audit/events")).await;
    assert_eq!((s, code(&v)), (403, "forbidden"), "{v}");
    let (s, _) = get(&plan, format!("{base}/nodes")).await;
    assert_eq!(s, 200);
    let (s, _) = get(&plan, format!("{base}/stock")).await;
    assert_eq!(s, 200);

    // A channel key creates its own channel's orders only.
    let (s, v, _) = create(&web, hub, "k-1", &order("web-1", "marketplace")).await;
    assert_eq!((s, code(&v)), (403, "forbidden"), "{v}");
    let (s, a, replayed) = create(&web, hub, "k-1", &order("web-1", "web")).await;
    assert_eq!((s, replayed), (201, false), "{a}");
    let a_id = a["id"].as_str().unwrap().to_owned();
    assert_eq!(a["channel"], "web");
    // Channel B: A's key and A's very body is refused (not B's channel), B's own body under the same key is B's
    // own new order, never A's.
    let (s, v, _) = create(&mkt, hub, "k-1", &order("web-1", "web")).await;
    assert_eq!((s, code(&v)), (403, "forbidden"), "{v}");
    let (s, b, replayed) = create(&mkt, hub, "k-1", &order("mkt-1", "marketplace")).await;
    assert_eq!((s, replayed), (201, false), "{b}");
    let b_id = b["id"].as_str().unwrap().to_owned();
    assert_ne!(a_id, b_id);
    let (s, again, replayed) = create(&web, hub, "k-1", &order("web-1", "web")).await;
    assert_eq!((s, replayed, again["id"].as_str()), (201, true, Some(a_id.as_str())));
    assert_eq!(again["tracking_token"], a["tracking_token"], "a replay answers the original, link included");

    // Channel B cannot read, route or cancel A's order: 404 as for an id that does not exist.
    let (s, missing) = get(&mkt, format!("{base}/orders/hub-999999")).await;
    assert_eq!((s, code(&missing)), (404, "order_not_found"));
    for url in [format!("{base}/orders/{a_id}"), format!("{base}/orders/{a_id}/routing")] {
        let (s, v) = get(&mkt, url.clone()).await;
        assert_eq!((s, code(&v)), (404, "order_not_found"), "{url}: {v}");
    }
    let (s, v) = cancel(&mkt, hub, &a_id, None).await;
    assert_eq!((s, code(&v)), (404, "order_not_found"), "{v}");
    let (s, v) = get(&admin, format!("{base}/orders/{a_id}")).await;
    assert_eq!((s, &v["cancel_requested_at_ms"]), (200, &Value::Null), "B's cancel changed nothing: {v}");
    let (s, v) = get(&web, format!("{base}/orders/{a_id}")).await;
    assert_eq!((s, v["id"].as_str()), (200, Some(a_id.as_str())), "{v}");
    // Each lists its own.
    let (s, v) = get(&mkt, format!("{base}/orders")).await;
    assert_eq!(s, 200, "{v}");
    let listed: Vec<&str> = v["orders"].as_array().unwrap().iter().filter_map(|o| o["id"].as_str()).collect();
    assert_eq!(listed, [b_id.as_str()], "{v}");
    let (s, v) = get(&svc, format!("{base}/orders")).await;
    assert_eq!(s, 200, "service lists orders: {v}");

    // Customer service cancels any order, with a reason only.
    let (s, v) = cancel(&svc, hub, &b_id, None).await;
    assert_eq!((s, code(&v)), (403, "reason_required"), "{v}");
    let (s, v) = cancel(&svc, hub, &b_id, Some(json!({"reason": "  "}))).await;
    assert_eq!((s, code(&v)), (403, "reason_required"), "a blank reason is none: {v}");
    let (s, v) = cancel(&svc, hub, &b_id, Some(json!({"reason": "customer called"}))).await;
    assert_eq!(s, 202, "{v}");
    let (_, v) = get(&admin, format!("{base}/orders/{b_id}")).await;
    assert_eq!(v["cancel_reason"], "customer called", "{v}");
    let (s, v) = cancel(&web, hub, &a_id, None).await;
    assert_eq!(s, 202, "a channel cancels its own: {v}");

    // 429 past a key's rate (1 a second, burst 2), with Retry-After; what was refused left no audit row.
    let mut created = 0;
    let mut limited = None;
    for i in 0..20 {
        let r = slow
            .post(format!("{base}/orders"))
            .header("idempotency-key", format!("slow-{i}"))
            .json(&order(&format!("slow-{i}"), "web"))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            201 => created += 1,
            429 => {
                limited = Some(r);
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let limited = limited.expect("no 429 within 20 quick requests of a 1/s key");
    let retry: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1, "{retry}");
    assert_eq!(limited.json::<Value>().await.unwrap()["code"], "rate_limited");

    // The audit trail: a row for each change and each call the intake refused, none for 401/403/429.
    let rows = audit_rows(&admin, hub).await;
    let brief: Vec<(&str, &str, &str)> =
        rows.iter().map(|(k, _, r, _, o)| (k.as_str(), r.as_str(), o.as_str())).filter(|r| r.0 != "slow").collect();
    assert_eq!(
        brief,
        [
            ("web", "/v1/orders", "ok"),
            ("mkt", "/v1/orders", "ok"),
            ("web", "/v1/orders", "ok"),
            ("mkt", "/v1/orders/{id}/cancel", "order_not_found"),
            ("svc", "/v1/orders/{id}/cancel", "ok"),
            ("web", "/v1/orders/{id}/cancel", "ok"),
        ],
        "{rows:?}"
    );
    assert_eq!(rows[0].3, a_id);
    assert_eq!(rows[3].3, a_id, "the refused cancel names what it tried");
    assert!(rows.iter().all(|r| r.1 == "POST"));
    assert_eq!(rows.iter().filter(|r| r.0 == "slow").count(), created, "one row per admitted create");
    assert!(rows.iter().all(|r| !["plan", "mon"].contains(&r.0.as_str())));

    // Tracking: open, customer-safe; a guessed token is 404.
    let token = a["tracking_token"].as_str().unwrap().to_owned();
    assert_eq!(a["tracking_url"], format!("/v1/track/{token}"));
    let (s, t) = get(&anon, format!("http://{hub}{}", a["tracking_url"].as_str().unwrap())).await;
    assert_eq!(s, 200, "{t}");
    assert_eq!((t["external_ref"].as_str(), t["lines"][0]["qty"].as_u64()), (Some("web-1"), Some(2)), "{t}");
    assert!(t["status"].is_string() && t["timeline"].is_array() && t["shipments"].is_array(), "{t}");
    let text = t.to_string();
    for internal in ["Secret Street", "Ada Customer", "fulfillments", "decisions", "site", a_id.as_str()] {
        assert!(!text.contains(internal), "the tracking view shows {internal:?}: {t}");
    }
    let mut guess = token.clone().into_bytes();
    guess[10] = if guess[10] == b'a' { b'b' } else { b'a' };
    let guess = String::from_utf8(guess).unwrap();
    for bad in [guess.as_str(), "0", a_id.as_str(), b["tracking_token"].as_str().unwrap_or("")] {
        let (s, v) = get(&anon, format!("http://{hub}/v1/track/{bad}")).await;
        if bad == b["tracking_token"].as_str().unwrap_or("") {
            assert_eq!((s, v["external_ref"].as_str()), (200, Some("mkt-1")), "B's own link shows B's order");
        } else {
            assert_eq!((s, code(&v)), (404, "tracking_not_found"), "{bad}: {v}");
        }
    }

    // The refusals show in /metrics (monitor's route).
    let r = mon.get(format!("http://{hub}/metrics")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text = r.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let n = |reason: &str| sample(&text, &format!("oms_hub_auth_refusals_total{{reason=\"{reason}\"}}"));
    assert!(n("unauthenticated").is_some_and(|n| n >= 4), "{text}");
    assert!(n("forbidden").is_some_and(|n| n >= 4), "{text}");
    assert!(n("rate_limited").is_some_and(|n| n >= 1), "{text}");
    assert_eq!(sample(&text, "oms_hub_api_keys_live"), Some(7), "six keys and the test admin: {text}");
    assert!(sample(&text, "oms_hub_orders_taken_total").is_some_and(|n| n >= 2), "{text}");
    // Every family is well formed: its HELP, then its TYPE, then at least one sample named as OpenMetrics wants
    // (a counter's samples end in `_total`), and no family twice.
    let lines: Vec<&str> = text.lines().collect();
    let mut families = std::collections::BTreeSet::new();
    for (i, l) in lines.iter().enumerate() {
        let Some(rest) = l.strip_prefix("# HELP ") else { continue };
        let name = rest.split(' ').next().unwrap();
        assert!(families.insert(name), "{name} twice: {text}");
        let kind = lines[i + 1].strip_prefix(&format!("# TYPE {name} ")).unwrap_or_else(|| panic!("{name}: {text}"));
        let sample = match kind {
            "counter" => format!("{name}_total"),
            "gauge" => name.to_owned(),
            other => panic!("{name}: type {other}"),
        };
        let first = lines[i + 2];
        assert!(
            first.starts_with(&format!("{sample} "))
                || first.starts_with(&format!("{sample}{{"))
                || first.starts_with('#'),
            "{name} ({kind}) is followed by {first:?}"
        );
    }
    assert!(families.len() >= 20 && families.contains("oms_hub_intake_document_fallbacks"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_created_or_revoked_in_the_file_take_effect_without_a_restart() {
    let mut token = String::new();
    let h = hub(|root| token = key(root, "ops", Role::Planner, None, None)).await;
    let root = h.tmp.path().to_owned();
    let url = format!("http://{}/v1/nodes", h.http);
    let ops = client(&token);
    assert_eq!(get(&ops, url.clone()).await.0, 200);

    // Revoked: refused within the reload interval (100 ms here), checked for up to 10 s.
    keys::revoke(&hub_data(&root), "ops", 2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = 0;
    while Instant::now() < deadline {
        last = get(&ops, url.clone()).await.0;
        if last == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, 401, "the revoked key still worked after 10 s");

    // A new key works once the file is re-read.
    let fresh = client(&key(&root, "ops2", Role::Planner, None, None));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        last = get(&fresh, url.clone()).await.0;
        if last == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, 200, "the new key was not taken within 10 s");
    assert_eq!(get(&ops, url).await.0, 401, "revoked stays revoked");
}
