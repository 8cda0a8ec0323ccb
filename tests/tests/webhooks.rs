//! Events and webhooks, end to end over real processes: the hub's event feed and signed webhook deliveries
//! to the reference receiver (`oms_hub::events::receiver`, in this process on loopback), retries, a hub
//! SIGKILLed with events in its outbox, ordering under concurrent changes, the fulfillment events a site's
//! progress produces, bad input on every route, and the node's own feed without a hub.
//!
//! Every wait is a bounded loop with a deadline; processes are killed when their guard drops.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use oms_hub::events::receiver::Receiver;
use oms_tests::cluster::{self, free_tcp, free_udp, pki};
use oms_tests::{NodeProc, create_key, get, http, http_as, post};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(60);
const HEALTHY: Duration = Duration::from_secs(30);

/// Loopback receivers allowed; quick retries.
const HUB_TOML: &str = "[webhooks]\nallow_private_addresses = true\nbackoff_base_ms = 50\nbackoff_max_ms = 300\n\
     timeout_ms = 2000\n[events]\nnode_debounce_ms = 300\n";

struct Hub {
    _tmp: tempfile::TempDir,
    proc: cluster::HubProc,
    root: std::path::PathBuf,
    certs: std::path::PathBuf,
    quic: SocketAddr,
    toml: String,
}

impl Hub {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proc.http)
    }

    /// SIGKILL and start again on the same data and addresses.
    async fn restart(&mut self, c: &reqwest::Client) {
        self.proc.proc.kill9();
        self.proc = cluster::spawn_hub_with(&self.root, &self.certs, self.quic, self.proc.http, "info", &self.toml);
        cluster::wait_healthy(c, self.proc.http, HEALTHY).await;
    }
}

async fn hub_with(c: &reqwest::Client, toml: &str, nodes: &[&str]) -> Hub {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_owned();
    let certs = pki(&root, nodes);
    let (quic, http) = (free_udp(), free_tcp());
    let proc = cluster::spawn_hub_with(&root, &certs, quic, http, "info", toml);
    cluster::wait_healthy(c, http, HEALTHY).await;
    Hub { _tmp: tmp, proc, root, certs, quic, toml: toml.to_owned() }
}

fn order(ext: &str, channel: &str) -> Value {
    json!({
        "external_ref": ext, "channel": channel,
        "lines": [{"sku": "SKU-1", "qty": 1, "unit_price_minor": 1250, "currency": "EUR"}],
        "ship_to": {"name": "C", "line1": "1 Street", "city": "X", "postcode": "10115", "country": "DE", "lat": 52.52, "lon": 13.40}
    })
}

async fn place(c: &reqwest::Client, hub: &Hub, key: &str, body: &Value) -> String {
    let r = c.post(hub.url("/v1/orders")).header("idempotency-key", key).json(body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201, "order {key}");
    r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

/// Subscribes `rx` to `types` and gives it the secret; returns the subscription.
async fn subscribe(c: &reqwest::Client, hub: &Hub, rx: &Receiver, types: &[&str]) -> Value {
    let (s, v) = post(c, hub.url("/v1/webhooks"), json!({"url": rx.url(), "types": types, "after": 0})).await;
    assert_eq!(s, 201, "{v}");
    rx.set_secret(v["secret"].as_str().unwrap());
    v
}

/// Waits until the hub or node at `url` knows the key `c` sends (keys are re-read from the file).
async fn until_known(c: &reqwest::Client, url: String) {
    let deadline = Instant::now() + DEADLINE;
    while c.get(&url).send().await.unwrap().status().as_u16() == 401 {
        assert!(Instant::now() < deadline, "key never loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not reached within {DEADLINE:?}");
}

/// Every event of the feed (admin), following `next_after`.
async fn feed(c: &reqwest::Client, hub: &Hub) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    for _ in 0..100 {
        let (s, v) = get(c, hub.url(&format!("/v1/events?after={after}&limit=1000"))).await;
        assert_eq!(s, 200, "{v}");
        let events = v["events"].as_array().unwrap().clone();
        let next = v["next_after"].as_u64().unwrap();
        out.extend(events);
        if next == after {
            return out;
        }
        after = next;
    }
    panic!("the feed did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_three_times_gets_the_event_with_the_same_id_and_a_valid_signature() {
    let c = http();
    let hub = hub_with(&c, HUB_TOML, &[]).await;
    let rx = Receiver::start().await.unwrap();
    rx.fail_next(3);
    let sub = subscribe(&c, &hub, &rx, &["order.created"]).await;
    let id = place(&c, &hub, "k-1", &order("web-1", "web")).await;
    wait_until("delivered", || rx.tally().unique == 1).await;
    let t = rx.tally();
    assert_eq!((t.failed_on_purpose, t.duplicates, t.refused_signature), (3, 0, 0), "{t:?}");
    let got = &rx.events()[0].event;
    assert_eq!((got.kind.as_str(), got.order_id.as_deref()), ("order.created", Some(id.as_str())));
    // The same id in the feed, which also has what the subscription did not ask for.
    let events = feed(&c, &hub).await;
    let created: Vec<&Value> = events.iter().filter(|e| e["type"] == "order.created").collect();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["id"], got.id.as_str());
    assert_eq!(created[0]["seq"], got.seq);
    // The admin sees the subscription's state: caught up, no error, the secret never again.
    let (_, list) = get(&c, hub.url("/v1/webhooks")).await;
    let row = &list["webhooks"][0];
    assert_eq!(
        (row["id"].clone(), row["delivered"].clone(), row["attempts"].clone()),
        (sub["id"].clone(), json!(1), json!(0))
    );
    assert!(row["last_error"].is_null() && row.get("secret").is_none(), "{row}");

    // A receiver holding another secret refuses every delivery: the subscription shows why.
    let wrong = Receiver::start().await.unwrap();
    let (s, v) = post(&c, hub.url("/v1/webhooks"), json!({"url": wrong.url(), "after": 0})).await;
    assert_eq!(s, 201, "{v}");
    wrong.set_secret("whsec_not-the-one");
    wait_until("refused", || wrong.tally().refused_signature >= 2).await;
    let (_, list) = get(&c, hub.url("/v1/webhooks")).await;
    let row = list["webhooks"].as_array().unwrap().iter().find(|w| w["id"] == v["id"]).unwrap().clone();
    assert_eq!(row["delivered"], 0, "{row}");
    assert!(row["last_error"].as_str().unwrap().contains("401"), "{row}");
    assert_eq!(wrong.tally().unique, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_killed_with_events_in_its_outbox_delivers_them_after_restart() {
    let c = http();
    let mut hub = hub_with(&c, HUB_TOML, &[]).await;
    // Nobody listens there yet: every delivery fails and the events wait in the outbox.
    let addr = free_tcp();
    let (s, sub) =
        post(&c, hub.url("/v1/webhooks"), json!({"url": format!("http://{addr}/hook"), "types": ["order.created"]}))
            .await;
    assert_eq!(s, 201, "{sub}");
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(place(&c, &hub, &format!("k-{i}"), &order(&format!("web-{i}"), "web")).await);
    }
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, list) = get(&c, hub.url("/v1/webhooks")).await;
        if list["webhooks"][0]["attempts"].as_u64().unwrap_or(0) >= 1 {
            assert_eq!(list["webhooks"][0]["delivered"], 0);
            break;
        }
        assert!(Instant::now() < deadline, "no failed attempt: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    hub.proc.proc.kill9();
    let rx = Receiver::start_at(addr).await.unwrap();
    rx.set_secret(sub["secret"].as_str().unwrap());
    hub.restart(&c).await;
    wait_until("all 20 delivered after the restart", || rx.tally().unique == 20).await;
    let mut got: Vec<String> = rx.events().iter().map(|d| d.event.order_id.clone().unwrap()).collect();
    got.sort();
    ids.sort();
    assert_eq!(got, ids, "none lost");
    // Strictly in log order.
    let seqs: Vec<u64> = rx.events().iter().map(|d| d.event.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_each_order_arrive_in_order_under_concurrent_changes() {
    let c = http();
    let hub = hub_with(&c, HUB_TOML, &[]).await;
    let rx = Receiver::start().await.unwrap();
    subscribe(&c, &hub, &rx, &["order.*"]).await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (c, base) = (c.clone(), hub.url(""));
        tasks.push(tokio::spawn(async move {
            for i in 0..5 {
                let key = format!("k-{t}-{i}");
                let r = c
                    .post(format!("{base}/v1/orders"))
                    .header("idempotency-key", &key)
                    .json(&order(&key, "web"))
                    .send();
                let v: Value = r.await.unwrap().json().await.unwrap();
                let id = v["id"].as_str().unwrap().to_owned();
                let r = c.post(format!("{base}/v1/orders/{id}/cancel")).json(&json!({"reason": "test"})).send().await;
                assert_eq!(r.unwrap().status().as_u16(), 202);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait_until("80 events", || rx.tally().unique == 80).await;
    let events = rx.events();
    let seqs: Vec<u64> = events.iter().map(|d| d.event.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "strict order per subscription: {seqs:?}");
    let mut orders = std::collections::BTreeMap::<String, Vec<String>>::new();
    for d in &events {
        orders.entry(d.event.order_id.clone().unwrap()).or_default().push(d.event.kind.clone());
    }
    assert_eq!(orders.len(), 40);
    for (id, kinds) in orders {
        assert_eq!(kinds, ["order.created", "order.cancelled"], "{id}");
    }
    assert_eq!(rx.tally().duplicates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_every_route_is_a_typed_problem_and_changes_nothing() {
    let c = http();
    // The default `[webhooks]`: private addresses refused.
    let hub = hub_with(&c, "", &[]).await;
    let data = cluster::hub_data(&hub.root);
    let web = http_as(&create_key(&data, "web-shop", "channel", Some("web"), None));
    let planner = http_as(&create_key(&data, "planner", "planner", None, None));
    until_known(&web, hub.url("/v1/events")).await;
    until_known(&planner, hub.url("/v1/nodes")).await;
    let cases: &[(Value, u16, &str)] = &[
        (json!({"url": "ftp://example.com/x"}), 422, "invalid_webhook"),
        (json!({"url": "https://u:p@example.com/x"}), 422, "invalid_webhook"),
        (json!({"url": "http://127.0.0.1:9/x"}), 422, "invalid_webhook"),
        (json!({"url": "http://localhost/x"}), 422, "invalid_webhook"),
        (json!({"url": "http://169.254.169.254/x"}), 422, "invalid_webhook"),
        (json!({"url": format!("https://example.com/{}", "a".repeat(3000))}), 422, "invalid_webhook"),
        (json!({"url": "https://example.com/x", "types": ["order.teleported"]}), 422, "invalid_webhook"),
        (json!({"url": "https://example.com/x", "channel": "not a channel!"}), 422, "invalid_webhook"),
        (json!({"url": "https://example.com/x", "surprise": 1}), 422, "invalid_body"),
        (json!({"types": []}), 422, "invalid_body"),
        (json!("https://example.com/x"), 422, "invalid_body"),
    ];
    for (body, status, code) in cases {
        let (s, v) = post(&c, hub.url("/v1/webhooks"), body.clone()).await;
        assert_eq!((s, v["code"].as_str()), (*status, Some(*code)), "{body}: {v}");
    }
    let r = c.post(hub.url("/v1/webhooks")).header("content-type", "text/plain").body("{}").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 415);
    // A channel key may not subscribe to another channel's orders.
    let (s, v) = post(&web, hub.url("/v1/webhooks"), json!({"url": "https://example.com/x", "channel": "shop"})).await;
    assert_eq!((s, v["code"].as_str(), v["field"].as_str()), (422, Some("invalid_webhook"), Some("channel")), "{v}");
    for q in ["limit=0", "limit=1001", "after=x", "wait_ms=999999", "types=order.teleported", "surprise=1"] {
        let (s, v) = get(&c, hub.url(&format!("/v1/events?{q}"))).await;
        assert_eq!((s, v["code"].as_str()), (400, Some("invalid_query")), "{q}: {v}");
    }
    for id in ["nope", "wh_0000000000000000", "..%2f..%2fetc"] {
        let r = c.delete(hub.url(&format!("/v1/webhooks/{id}"))).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404, "{id}");
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "webhook_not_found");
    }
    // Roles: a planner key reaches neither the feed nor the subscriptions.
    for path in ["/v1/events", "/v1/webhooks"] {
        let (s, _) = get(&planner, hub.url(path)).await;
        assert_eq!(s, 403, "{path}");
    }
    // Nothing was written: no subscription, no audit row, no event.
    let (_, list) = get(&c, hub.url("/v1/webhooks")).await;
    assert_eq!(list["webhooks"], json!([]));
    let (_, audit) = get(&c, hub.url("/v1/audit/events")).await;
    assert_eq!(audit["events"], json!([]), "{audit}");
    assert!(feed(&c, &hub).await.is_empty());

    // A valid one by the channel key: confined to its channel, listed for it and the admin, deleted by it.
    let (s, v) = post(&web, hub.url("/v1/webhooks"), json!({"url": "https://example.com/x"})).await;
    assert_eq!((s, v["channel"].as_str()), (201, Some("web")), "{v}");
    assert!(v["secret"].as_str().unwrap().starts_with("whsec_"));
    let id = v["id"].as_str().unwrap();
    let r = web.delete(hub.url(&format!("/v1/webhooks/{id}"))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let (_, audit) = get(&c, hub.url("/v1/audit/events")).await;
    assert_eq!(audit["events"].as_array().unwrap().len(), 2, "create and delete audited: {audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_reads_only_its_own_events_and_a_long_poll_wakes_on_a_commit() {
    let c = http();
    let hub = hub_with(&c, HUB_TOML, &[]).await;
    let data = cluster::hub_data(&hub.root);
    let web = http_as(&create_key(&data, "web-shop", "channel", Some("web"), None));
    until_known(&web, hub.url("/v1/events")).await;
    let mine = place(&c, &hub, "k-web", &order("w-1", "web")).await;
    place(&c, &hub, "k-shop", &order("s-1", "shop")).await;
    let (s, v) = get(&web, hub.url("/v1/events")).await;
    assert_eq!(s, 200, "{v}");
    let ids: Vec<&str> = v["events"].as_array().unwrap().iter().map(|e| e["order_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [mine.as_str()], "{v}");
    let after = v["next_after"].as_u64().unwrap();
    assert_eq!(feed(&c, &hub).await.len(), 2, "the admin sees both");

    // A long poll that finds nothing waits, and answers once an order of its channel is committed.
    let (wc, url) = (web.clone(), hub.url(&format!("/v1/events?after={after}&wait_ms=10000")));
    let started = Instant::now();
    let poll = tokio::spawn(async move { get(&wc, url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let next = place(&c, &hub, "k-web-2", &order("w-2", "web")).await;
    let (s, v) = poll.await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(v["events"][0]["order_id"], next.as_str(), "{v}");
    assert!(started.elapsed() < Duration::from_secs(8), "woke on the commit, not the deadline");
}

/// One site, linked: the fulfillment events come from its progress, once each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sites_progress_becomes_fulfillment_events_once_each() {
    let c = http();
    let hub = hub_with(&c, HUB_TOML, &["wh-1"]).await;
    let rx = Receiver::start().await.unwrap();
    subscribe(&c, &hub, &rx, &[]).await;
    let (config, node_http, dir) = cluster::node_config_with(
        &hub.root,
        &hub.certs,
        "wh-1",
        hub.quic,
        "[site]\nname = \"s\"\nlat = 52.5\nlon = 13.4\n",
    );
    let node = cluster::spawn_node_with("wh-1", &config, node_http, &dir, "info");
    cluster::wait_healthy(&c, node.http, HEALTHY).await;
    let base = format!("http://{}/v1", node.http);
    let r = c.put(format!("{base}/catalog/SKU-1")).json(&json!({"name": "one", "bin": "A-01"})).send().await.unwrap();
    assert!(r.status().is_success());
    let (s, _) = post(&c, format!("{base}/stock/receipts"), json!({"sku": "SKU-1", "qty": 50})).await;
    assert_eq!(s, 201);
    // Wait until the hub may promise a unit there.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, st) = get(&c, hub.url("/v1/stock/SKU-1")).await;
        let ok =
            st["sites"].as_array().is_some_and(|a| a.iter().any(|r| r["hub_promisable"].as_u64().unwrap_or(0) >= 1));
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "no rights at the site: {st}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = place(&c, &hub, "k-1", &order("web-1", "web")).await;
    let fo = format!("{id}.1");
    wait_until("accepted", || rx.events().iter().any(|d| d.event.kind == "fulfillment.accepted")).await;
    let (s, w) = post(&c, format!("{base}/waves"), json!({"max_orders": 10})).await;
    assert_eq!(s, 201, "{w}");
    let (s, v) = post(&c, format!("{base}/orders/{fo}/picks"), json!({"lines": [{"sku": "SKU-1", "picked": 1}]})).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = post(&c, format!("{base}/orders/{fo}/pack"), json!({"parcels": 1})).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = post(&c, format!("{base}/orders/{fo}/ship"), json!({"carrier": "DHL", "tracking": "T1"})).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = post(&c, format!("{base}/orders/{fo}/deliver"), json!({})).await;
    assert_eq!(s, 200, "{v}");
    wait_until("delivered", || rx.events().iter().any(|d| d.event.kind == "order.delivered")).await;
    // The node's connection is reported online once it held for the debounce, with no order.
    wait_until("node online", || {
        rx.events().iter().any(|d| d.event.kind == "node.online" && d.event.data["node"] == "wh-1")
    })
    .await;
    // A restart (SIGKILL) of the hub reads the documents again and reports nothing twice.
    let mut hub = hub;
    hub.restart(&c).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kinds: Vec<String> = rx
        .events()
        .iter()
        .filter(|d| d.event.order_id.as_deref() == Some(id.as_str()))
        .map(|d| d.event.kind.clone())
        .collect();
    assert_eq!(
        kinds,
        ["order.created", "order.routed", "fulfillment.accepted", "fulfillment.shipped", "order.delivered"],
        "each once, in order"
    );
    let shipped = rx.events().into_iter().find(|d| d.event.kind == "fulfillment.shipped").unwrap();
    assert_eq!(shipped.event.data["shipment"]["tracking"], "T1", "{:?}", shipped.event);
    // A delivery acknowledged just before the SIGKILL may come again (its cursor was not fsynced yet): the
    // receiver dropped it by its id, and the list above holds each event once.
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_serves_its_own_events_without_a_hub() {
    let c = http();
    let dir = tempfile::tempdir().unwrap();
    let n = NodeProc::start("wh-solo", dir.path());
    oms_tests::seed(&c, &n, "SKU-1", 10).await;
    let (s, placed) = oms_tests::place(&c, &n, "k-1", &oms_tests::order_body("web-1", &[("SKU-1", 2)])).await;
    assert_eq!(s, 201, "{placed}");
    let id = placed["id"].as_str().unwrap();
    let (s, v) = get(&c, n.url("/v1/events?limit=100")).await;
    assert_eq!(s, 200, "{v}");
    let events = v["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["type"] == "order.changed" && e["order_id"] == id), "{v}");
    assert!(events.iter().any(|e| e["type"] == "stock.changed" && e["sku"] == "SKU-1"), "{v}");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    // A channel key sees its channel's orders only, and no stock.
    let shop = http_as(&create_key(dir.path(), "shop", "channel", Some("shop"), None));
    until_known(&shop, n.url("/v1/events")).await;
    let (_, v) = get(&shop, n.url("/v1/events")).await;
    assert_eq!(v["events"], json!([]), "{v}");
    let web = http_as(&create_key(dir.path(), "web", "channel", Some("web"), None));
    until_known(&web, n.url("/v1/events")).await;
    let (_, v) = get(&web, n.url("/v1/events")).await;
    assert!(v["events"].as_array().unwrap().iter().all(|e| e["type"] == "order.changed"), "{v}");
    // Long-poll past the end waits and comes back empty; bad queries are typed problems.
    let after = v["next_after"].as_u64().unwrap();
    let (s, v) = get(&web, n.url(&format!("/v1/events?after={after}&wait_ms=200"))).await;
    assert_eq!((s, v["events"].clone()), (200, json!([])));
    // A long-poll is answered by the commit that holds its event, not at its deadline (20 s).
    let (wc, url) = (web.clone(), n.url(&format!("/v1/events?after={after}&wait_ms=20000")));
    let started = Instant::now();
    let waiting = tokio::spawn(async move { get(&wc, url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, placed) = oms_tests::place(&c, &n, "k-2", &oms_tests::order_body("web-2", &[("SKU-1", 1)])).await;
    assert_eq!(s, 201, "{placed}");
    let (s, v) = waiting.await.unwrap();
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["events"][0]["order_id"], placed["id"], "{v}");
    assert!(started.elapsed() < Duration::from_secs(10), "woken by the commit, not at the deadline");
    for q in ["limit=0", "after=x", "wait_ms=999999", "surprise=1"] {
        let (s, v) = get(&c, n.url(&format!("/v1/events?{q}"))).await;
        assert_eq!((s, v["code"].as_str()), (400, Some("invalid_query")), "{q}: {v}");
    }
}
