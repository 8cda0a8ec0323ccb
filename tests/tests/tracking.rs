//! Carrier tracking end to end (issue 15, item 6): a real hub and node (`oms-it` processes, QUIC with
//! certificates, HTTP on loopback); a carrier posts signed tracking events to the hub. Bad input on the route
//! is a typed problem that stores nothing; a replay changes nothing; a late `in_transit` does not undo a
//! delivery; an event that arrives before its shipment syncs is matched when it does; an exception flags the
//! order for customer service; the carrier's `delivered` completes the fulfillment at the node, and a manual
//! deliver racing it reaches `delivered` once, with one `order.delivered`.
//!
//! Every wait is a bounded loop with a deadline; processes are killed when their guard drops.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use oms_hub::events::webhooks::signature_header;
use oms_service::auth::keys::Role;
use oms_service::auth::users::{self, NewUser};
use oms_tests::browser::Browser;
use oms_tests::cluster::{self, free_tcp, free_udp, pki};
use oms_tests::{get, http, post};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(60);
const HEALTHY: Duration = Duration::from_secs(30);
const SECRET: &str = "whsec_it_carrier_secret_0123456789";
const HUB_TOML: &str =
    "[carriers.ups]\nwebhook_secret = \"whsec_it_carrier_secret_0123456789\"\n[auth]\nopen_rate_per_s = 1000\n";

fn now_s() -> u64 {
    oms_service::now_ms() / 1_000
}

/// Posts `body` as carrier `carrier` would, signed at `t` with `secret` (no API key).
async fn carrier_post(hub: SocketAddr, carrier: &str, body: &[u8], sig: Option<String>) -> (u16, Value) {
    post_signed(hub, carrier, body, sig.map(|s| ("x-oms-signature", s))).await
}

/// Posts `body` to carrier `carrier`'s route with the signature header `sig` (name, value), if any.
async fn post_signed(hub: SocketAddr, carrier: &str, body: &[u8], sig: Option<(&str, String)>) -> (u16, Value) {
    let c = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let mut r = c
        .post(format!("http://{hub}/v1/carriers/{carrier}/events"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some((name, value)) = sig {
        r = r.header(name, value);
    }
    let r = r.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn event(id: &str, tracking: &str, status: &str, at_ms: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({"id": id, "tracking_code": tracking, "status": status, "occurred_at_ms": at_ms,
        "description": format!("{status} at the depot")}))
    .unwrap()
}

/// Posts a well-signed event and checks the answer.
async fn send(hub: SocketAddr, id: &str, tracking: &str, status: &str, at_ms: u64) -> Value {
    let b = event(id, tracking, status, at_ms);
    let (s, v) = carrier_post(hub, "ups", &b, Some(signature_header(SECRET, now_s(), &b))).await;
    assert_eq!(s, 200, "{v}");
    v
}

async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not reached within {DEADLINE:?}");
}

/// Every event of the hub's feed (admin).
async fn feed(c: &reqwest::Client, hub: SocketAddr) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    for _ in 0..100 {
        let (s, v) = get(c, format!("http://{hub}/v1/events?after={after}&limit=1000")).await;
        assert_eq!(s, 200, "{v}");
        out.extend(v["events"].as_array().unwrap().clone());
        let next = v["next_after"].as_u64().unwrap();
        if next == after {
            return out;
        }
        after = next;
    }
    panic!("the feed did not end");
}

/// A hub (`hub_toml`) and one node `wh-1` (`site_toml`) with `n` hub orders of one unit each, accepted,
/// picked and packed at the node, not shipped.
struct Packed {
    _hub: cluster::HubProc,
    node: cluster::ClusterNode,
    hub_http: SocketAddr,
    /// The node's API.
    base: String,
    /// The customer orders.
    ids: Vec<String>,
    /// Their fulfillments (`<id>.1`).
    fos: Vec<String>,
}

async fn packed(c: &reqwest::Client, root: &std::path::Path, hub_toml: &str, site_toml: &str, n: usize) -> Packed {
    let certs = pki(root, &["wh-1"]);
    let (quic, hub_http) = (free_udp(), free_tcp());
    let hub_proc = cluster::spawn_hub_with(root, &certs, quic, hub_http, "info", hub_toml);
    cluster::wait_healthy(c, hub_http, HEALTHY).await;
    let (config, node_http, dir) = cluster::node_config_with(root, &certs, "wh-1", quic, site_toml);
    let node = cluster::spawn_node_with("wh-1", &config, node_http, &dir, "info");
    cluster::wait_healthy(c, node.http, HEALTHY).await;
    let base = format!("http://{}/v1", node.http);
    let hub = |p: &str| format!("http://{hub_http}{p}");
    cluster::seed_sku(c, &node, "SKU-1", 50).await;
    wait_until("rights at the site", || async {
        let (_, st) = get(c, hub("/v1/stock/SKU-1")).await;
        st["sites"].as_array().is_some_and(|a| a.iter().any(|r| r["hub_promisable"].as_u64().unwrap_or(0) >= n as u64))
    })
    .await;
    let mut ids = Vec::new();
    for k in 1..=n {
        let body = json!({
            "external_ref": format!("web-{k}"), "channel": "web",
            "lines": [{"sku": "SKU-1", "qty": 1, "unit_price_minor": 1250, "currency": "EUR"}],
            "ship_to": {"name": "C", "line1": "1 Street", "city": "X", "postcode": "10115", "country": "DE", "lat": 52.52, "lon": 13.40}
        });
        let r = c.post(hub("/v1/orders")).header("idempotency-key", format!("k-{k}")).json(&body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 201);
        ids.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
    }
    let fos: Vec<String> = ids.iter().map(|id| format!("{id}.1")).collect();
    for fo in &fos {
        cluster::wait_for(c, format!("{base}/orders/{fo}"), "assignment accepted", |v| v["status"] == "accepted").await;
    }
    let (s, w) = post(c, format!("{base}/waves"), json!({"max_orders": 10})).await;
    assert_eq!(s, 201, "{w}");
    for fo in &fos {
        let (s, v) =
            post(c, format!("{base}/orders/{fo}/picks"), json!({"lines": [{"sku": "SKU-1", "picked": 1}]})).await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = post(c, format!("{base}/orders/{fo}/pack"), json!({"parcels": 1})).await;
        assert_eq!(s, 200, "{v}");
    }
    Packed { _hub: hub_proc, node, hub_http, base, ids, fos }
}

/// Ships each fulfillment `fos[k]` at the node (`base`) with `carrier` and tracking number `trackings[k]`,
/// and waits until the hub shows every order `ids[k]` shipped.
async fn ship_all(
    c: &reqwest::Client,
    hub_http: SocketAddr,
    base: &str,
    ids: &[String],
    fos: &[String],
    carrier: &str,
    trackings: &[&str],
) {
    for (fo, t) in fos.iter().zip(trackings) {
        let (s, v) = post(c, format!("{base}/orders/{fo}/ship"), json!({"carrier": carrier, "tracking": t})).await;
        assert_eq!(s, 200, "{v}");
    }
    wait_until("the shipments reach the hub", || async {
        let mut all = true;
        for id in ids {
            all &=
                get(c, format!("http://{hub_http}/v1/orders/{id}")).await.1["fulfillments"][0]["status"] == "shipped";
        }
        all
    })
    .await;
}

/// The fulfillments of the feed's `order.delivered` events, in order.
fn delivered_fulfillments(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .filter(|e| e["type"] == "order.delivered")
        .filter_map(|e| e["data"]["fulfillment_id"].as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_events_are_signed_idempotent_matched_late_and_deliver_once_at_the_node() {
    let c = http();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let sam = NewUser { name: "sam".into(), role: Role::Service, secret: "a long password".into(), pin: false };
    users::create(&cluster::hub_data(root), sam, 1).unwrap();
    let site = "[site]\nname = \"s\"\nlat = 52.5\nlon = 13.4\n";
    let Packed { _hub, node, hub_http, base, ids, fos } = packed(&c, root, HUB_TOML, site, 3).await;
    let hub = |p: &str| format!("http://{hub_http}{p}");
    // The carrier reports T3 before its site ships it: stored, not matched yet.
    let t0 = oms_service::now_ms();
    let v = send(hub_http, "e3-1", "T3", "in_transit", t0).await;
    assert_eq!((v["replayed"].as_bool(), v["matched"].as_bool()), (Some(false), Some(false)), "{v}");
    ship_all(&c, hub_http, &base, &ids, &fos, "UPS", &["T1", "T2", "T3"]).await;
    let order = |i: usize| {
        let (c, url) = (c.clone(), hub(&format!("/v1/orders/{}", ids[i])));
        async move { get(&c, url).await.1 }
    };
    // Matched late: T3's early event shows once its shipment arrived.
    wait_until("T3's early event matched", || async {
        order(2).await["fulfillments"][0]["tracking_status"] == "in_transit"
    })
    .await;

    // Bad input: each a typed problem, nothing stored.
    let good = event("bad-1", "T1", "delivered", t0);
    let sig = signature_header(SECRET, now_s(), &good);
    let tampered = event("bad-1", "T1", "delivered", t0 + 1);
    // (carrier, body, signature, status, code)
    type Case = (&'static str, Vec<u8>, Option<String>, u16, &'static str);
    let cases: Vec<Case> = vec![
        ("fedex", good.clone(), Some(sig.clone()), 404, "carrier_not_found"),
        ("ups", good.clone(), None, 401, "signature_missing"),
        ("ups", good.clone(), Some("t=1".into()), 401, "signature_malformed"),
        ("ups", tampered, Some(sig.clone()), 401, "signature_mismatch"),
        (
            "ups",
            good.clone(),
            Some(signature_header("whsec_someone_else_entirely", now_s(), &good)),
            401,
            "signature_mismatch",
        ),
        ("ups", good.clone(), Some(signature_header(SECRET, now_s() - 3_600, &good)), 401, "signature_stale"),
    ];
    for (carrier, body, sig, status, code) in cases {
        let (s, v) = carrier_post(hub_http, carrier, &body, sig).await;
        assert_eq!((s, v["code"].as_str()), (status, Some(code)), "{v}");
    }
    for bad in [
        &b"{not json"[..],
        br#"{"id":"x","tracking_code":"T1","status":"teleported","occurred_at_ms":1}"#,
        br#"{"id":"","tracking_code":"T1","status":"delivered","occurred_at_ms":1}"#,
        br#"{"tracking_code":"T1","status":"delivered","occurred_at_ms":1}"#,
    ] {
        let (s, v) = carrier_post(hub_http, "ups", bad, Some(signature_header(SECRET, now_s(), bad))).await;
        assert!(matches!(s, 400 | 422) && v["code"].is_string(), "{s} {v}");
    }
    let big = vec![b' '; 20_000];
    let (s, v) = carrier_post(hub_http, "ups", &big, Some(signature_header(SECRET, now_s(), &big))).await;
    assert_eq!(s, 413, "{v}");
    let v = order(0).await;
    assert_eq!(v["fulfillments"][0]["tracking"], json!([]), "nothing stored for T1: {v}");
    assert_eq!(v["fulfillments"][0]["status"], "shipped");

    // T1: in transit, then delivered by the carrier: the node delivers it.
    send(hub_http, "e1-1", "T1", "in_transit", t0 + 10).await;
    let v = send(hub_http, "e1-2", "T1", "delivered", t0 + 20).await;
    assert_eq!((v["replayed"].as_bool(), v["matched"].as_bool()), (Some(false), Some(true)), "{v}");
    cluster::wait_for(&c, format!("{base}/orders/{}", fos[0]), "the node delivers T1", |v| v["status"] == "delivered")
        .await;
    // A replay and a late in_transit change nothing.
    wait_until("the hub sees T1 delivered", || async { order(0).await["fulfillments"][0]["status"] == "delivered" })
        .await;
    let before = order(0).await;
    let v = send(hub_http, "e1-2", "T1", "delivered", t0 + 20).await;
    assert_eq!(v["replayed"].as_bool(), Some(true), "{v}");
    let after = order(0).await;
    assert_eq!(before["fulfillments"], after["fulfillments"], "a replay changed the order");
    send(hub_http, "e1-3", "T1", "in_transit", t0 + 30).await;
    let v = order(0).await;
    assert_eq!(v["fulfillments"][0]["tracking_status"], "delivered", "{v}");
    assert_eq!(v["fulfillments"][0]["tracking"].as_array().map(Vec::len), Some(3));
    assert_eq!(v["status"], "delivered");
    assert!(
        v["timeline"].as_array().unwrap().iter().any(|t| t["status"] == "carrier_delivered"),
        "the carrier's events are in the timeline: {v}"
    );

    // T2: staff deliver by hand while the carrier's delivered arrives: delivered once.
    let manual = post(&c, format!("{base}/orders/{}/deliver", fos[1]), json!({}));
    let carrier = send(hub_http, "e2-1", "T2", "delivered", t0 + 40);
    let ((s, _), _) = tokio::join!(manual, carrier);
    assert!(matches!(s, 200 | 409), "manual deliver: {s}");
    cluster::wait_for(&c, format!("{base}/orders/{}", fos[1]), "T2 delivered", |v| v["status"] == "delivered").await;

    // T3: the carrier fails to deliver: the order is flagged for customer service.
    send(hub_http, "e3-2", "T3", "failure", t0 + 50).await;
    let (s, v) = get(&c, hub("/v1/orders?flag=carrier_exception")).await;
    assert_eq!(s, 200, "{v}");
    let flagged: Vec<&str> = v["orders"].as_array().unwrap().iter().filter_map(|f| f["order"].as_str()).collect();
    assert_eq!(flagged, [ids[2].as_str()], "{v}");
    assert_eq!(order(2).await["carrier_exception"]["status"], "failure");
    // Customer service sees it on the console: the list and the order's page.
    let mut sam = Browser::new(hub_http);
    assert_eq!(sam.sign_in("sam", "a long password").await.status, 303);
    let p = sam.get("/ui/orders").await;
    assert!(p.html.contains("Carrier exceptions") && p.html.contains(&format!("/ui/orders/{}", ids[2])), "{}", p.html);
    let p = sam.get(&format!("/ui/orders/{}", ids[2])).await;
    assert!(p.html.contains("Carrier exception: ups reports failure for T3"), "{}", p.html);
    let (s, v) = get(&c, hub("/v1/orders?flag=overdue")).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("invalid_query")), "{v}");

    // The feed: one order.delivered per delivered fulfillment, one tracking.updated per stored event.
    wait_until("T2's delivery reported", || async {
        feed(&c, hub_http).await.iter().filter(|e| e["type"] == "order.delivered").count() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events = feed(&c, hub_http).await;
    assert_eq!(delivered_fulfillments(&events), [fos[0].as_str(), fos[1].as_str()], "each delivered once");
    let tracking = events.iter().filter(|e| e["type"] == "tracking.updated").count();
    assert_eq!(tracking, 6, "e3-1, e1-1, e1-2, e1-3, e2-1, e3-2 once each");
    let metrics = c.get(hub("/metrics")).send().await.unwrap().text().await.unwrap();
    for line in
        ["oms_hub_carrier_events_total{result=\"stored\"} 6", "oms_hub_carrier_events_total{result=\"replayed\"} 1"]
    {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    // The customer's page shows the carrier's words.
    let token = order(0).await["tracking_token"].as_str().unwrap().to_owned();
    let page = reqwest::get(hub(&format!("/t/{token}"))).await.unwrap().text().await.unwrap();
    assert!(page.contains("With the carrier, on its way"), "{page}");
    drop(node);
}

const EP_SECRET: &str = "easypost_it_webhook_secret_0123";
const HUB_TOML_EASYPOST: &str = "[carriers.easypost]\nwebhook_secret = \"easypost_it_webhook_secret_0123\"\n\
     format = \"easypost\"\n[auth]\nopen_rate_per_s = 1000\n";
/// The node freezes a finished order this long after it shipped (or was delivered).
const RETURN_WINDOW_MS: u64 = 20_000;

/// An EasyPost `Event` with a `Tracker`, as EasyPost posts it.
fn ep_event(id: &str, tracking: &str, status: &str, at: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"id": id, "object": "Event", "description": "tracker.updated", "mode": "test",
        "created_at": at, "result": {"id": format!("trk_{tracking}"), "object": "Tracker", "tracking_code": tracking,
            "status": status, "status_detail": "unknown", "carrier": "USPS", "updated_at": at,
            "tracking_details": [{"object": "TrackingDetail", "message": format!("{status} (EasyPost)"),
                "status": status, "datetime": at}]}}))
    .unwrap()
}

/// Posts `body` to the EasyPost-format carrier with `X-Hmac-Signature: sig` (none if `None`).
async fn ep_post(hub: SocketAddr, body: &[u8], sig: Option<String>) -> (u16, Value) {
    post_signed(hub, "easypost", body, sig.map(|s| ("x-hmac-signature", s))).await
}

async fn ep_send(hub: SocketAddr, id: &str, tracking: &str, status: &str, at: &str) -> Value {
    let b = ep_event(id, tracking, status, at);
    let (s, v) = ep_post(hub, &b, Some(oms_hub::tracking::easypost_signature(EP_SECRET, &b))).await;
    assert_eq!(s, 200, "{v}");
    v
}

/// A carrier that posts in EasyPost's format (`format = "easypost"`): its events move fulfillments like the
/// hub's own; bad signatures, malformed bodies, replays and unknown statuses change nothing. And a delivery
/// that comes after the site froze the fulfillment as shipped still reaches the order (the hub's record),
/// once, while the frozen document stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn easypost_events_deliver_and_a_frozen_fulfillment_still_reaches_delivered_once() {
    let c = http();
    let tmp = tempfile::tempdir().unwrap();
    let site = format!(
        "[site]\nname = \"s\"\nlat = 52.5\nlon = 13.4\n[orders]\nreturn_window_ms = {RETURN_WINDOW_MS}\nfreeze_interval_ms = 200\n"
    );
    let Packed { _hub, node, hub_http, base, ids, fos } = packed(&c, tmp.path(), HUB_TOML_EASYPOST, &site, 2).await;
    let hub = |p: &str| format!("http://{hub_http}{p}");
    ship_all(&c, hub_http, &base, &ids, &fos, "USPS", &["EZ1", "EZ2"]).await;
    let order = |i: usize| {
        let (c, url) = (c.clone(), hub(&format!("/v1/orders/{}", ids[i])));
        async move { get(&c, url).await.1 }
    };

    // Bad input in EasyPost's format: typed problems, nothing stored.
    let good = ep_event("evt_bad", "EZ1", "delivered", "2026-12-01T12:00:00Z");
    let sig = |b: &[u8]| Some(oms_hub::tracking::easypost_signature(EP_SECRET, b));
    let cases: Vec<(Vec<u8>, Option<String>, u16, &str)> = vec![
        (good.clone(), None, 401, "signature_missing"),
        (good.clone(), Some("sha256=abc".into()), 401, "signature_malformed"),
        (
            good.clone(),
            Some(oms_hub::tracking::easypost_signature("someone_else_secret_0123", &good)),
            401,
            "signature_mismatch",
        ),
        (ep_event("evt_bad", "EZ1", "in_transit", "2026-12-01T12:00:00Z"), sig(&good), 401, "signature_mismatch"),
    ];
    for (body, s, status, code) in cases {
        let (st, v) = ep_post(hub_http, &body, s).await;
        assert_eq!((st, v["code"].as_str()), (status, Some(code)), "{v}");
    }
    // The hub's own signature does not authenticate the EasyPost-format carrier.
    let oms_sig = Some(("x-oms-signature", signature_header(EP_SECRET, now_s(), &good)));
    let (s, v) = post_signed(hub_http, "easypost", &good, oms_sig).await;
    assert_eq!((s, v["code"].as_str()), (401, Some("signature_missing")), "{v}");
    let malformed: Vec<Vec<u8>> = vec![
        b"{not json".to_vec(),
        serde_json::to_vec(&json!({"id": "evt_m1", "object": "Shipment", "description": "tracker.updated"})).unwrap(),
        serde_json::to_vec(&json!({"id": "evt_m2", "object": "Event", "description": "tracker.updated",
            "result": {"object": "Batch", "tracking_code": "EZ1", "status": "delivered"}}))
        .unwrap(),
        serde_json::to_vec(&json!({"id": "evt_m3", "object": "Event", "description": "tracker.updated"})).unwrap(),
    ];
    for b in &malformed {
        let (s, v) = ep_post(hub_http, b, sig(b)).await;
        assert!(matches!(s, 400 | 422), "{s} {v}");
        assert_eq!(v["status"].as_u64(), Some(u64::from(s)), "problem+json: {v}");
        assert!(v["code"].is_string(), "{v}");
    }
    let v = order(0).await;
    assert_eq!(v["fulfillments"][0]["tracking"], json!([]), "nothing stored for EZ1: {v}");

    // EZ1: in transit, an unknown status, then delivered: the node delivers it.
    let v = ep_send(hub_http, "evt_11", "EZ1", "in_transit", "2026-12-01T12:00:00Z").await;
    assert_eq!((v["replayed"].as_bool(), v["matched"].as_bool()), (Some(false), Some(true)), "{v}");
    assert_eq!(order(0).await["fulfillments"][0]["tracking_status"], "in_transit");
    let before = order(0).await;
    ep_send(hub_http, "evt_12", "EZ1", "unknown", "2026-12-01T13:00:00Z").await;
    let after = order(0).await;
    assert_eq!(after["fulfillments"][0]["tracking_status"], "in_transit", "an unknown status changes no state");
    assert_eq!(after["fulfillments"][0]["tracking"].as_array().map(Vec::len), Some(2), "but it is kept");
    assert_eq!(before["timeline"], after["timeline"]);
    ep_send(hub_http, "evt_13", "EZ1", "delivered", "2026-12-01T14:00:00Z").await;
    cluster::wait_for(&c, format!("{base}/orders/{}", fos[0]), "the node delivers EZ1", |v| v["status"] == "delivered")
        .await;
    wait_until("the hub sees EZ1 delivered", || async { order(0).await["fulfillments"][0]["status"] == "delivered" })
        .await;
    let before = order(0).await;
    let v = ep_send(hub_http, "evt_13", "EZ1", "delivered", "2026-12-01T14:00:00Z").await;
    assert_eq!(v["replayed"].as_bool(), Some(true), "{v}");
    assert_eq!(before["fulfillments"], order(0).await["fulfillments"], "a replay changed the order");
    // Another kind of EasyPost event is acknowledged and ignored.
    let batch = serde_json::to_vec(&json!({"id": "evt_b", "object": "Event", "description": "batch.updated",
        "result": {"object": "Batch"}}))
    .unwrap();
    let (s, v) = ep_post(hub_http, &batch, sig(&batch)).await;
    assert_eq!((s, v["ignored"].as_bool()), (200, Some(true)), "{v}");

    // EZ2: the site freezes it as shipped (its return window passed); then the carrier delivers it.
    wait_until("the site froze EZ2", || async { order(1).await["fulfillments"][0]["frozen_at_ms"].is_u64() }).await;
    let v = ep_send(hub_http, "evt_21", "EZ2", "delivered", "2026-12-01T15:00:00Z").await;
    assert_eq!(v["matched"].as_bool(), Some(true), "{v}");
    wait_until("the hub shows EZ2 delivered", || async {
        let v = order(1).await;
        v["fulfillments"][0]["status"] == "delivered" && v["status"] == "delivered"
    })
    .await;
    let v = order(1).await;
    let delivered_steps = v["timeline"].as_array().unwrap().iter().filter(|t| t["status"] == "delivered").count();
    assert_eq!(delivered_steps, 1, "one delivered step in the timeline: {v}");
    // The customer sees it delivered too.
    let token = v["tracking_token"].as_str().unwrap().to_owned();
    let (s, t) = get(&c, hub(&format!("/v1/track/{token}"))).await;
    assert_eq!((s, t["status"].as_str()), (200, Some("delivered")), "{t}");
    // The frozen document did not change: the site still has it shipped and frozen.
    let (s, n) = get(&c, format!("{base}/orders/{}", fos[1])).await;
    assert_eq!((s, n["status"].as_str()), (200, Some("shipped")), "{n}");
    // A replay of the delivery changes nothing.
    let v = ep_send(hub_http, "evt_21", "EZ2", "delivered", "2026-12-01T15:00:00Z").await;
    assert_eq!(v["replayed"].as_bool(), Some(true), "{v}");

    // order.delivered once per fulfillment, whoever recorded it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events = feed(&c, hub_http).await;
    assert_eq!(delivered_fulfillments(&events), [fos[0].as_str(), fos[1].as_str()], "each delivered once");
    // evt_11, evt_12, evt_13 (and its replay), evt_21 (and its replay).
    let metrics = c.get(hub("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("oms_hub_carrier_events_easypost_total 6\n"), "{metrics}");
    drop(node);
}
