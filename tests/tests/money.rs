//! Money at the hub, end to end over real processes: a card order authorized at intake, shipped from two
//! sites, captured and invoiced per shipment, refunded with a credit note; a decline that reserves nothing
//! and leaves the idempotency key unused; bad input on every money route; and a hub killed with SIGKILL
//! between the provider's capture and its commit that captures once after its restart (the test provider
//! keeps its state in a file, so "the provider" outlives the hub).
//!
//! Every wait is a bounded loop with a deadline; processes are killed when their guard drops.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use oms_tests::cluster::{self, ClusterNode, free_tcp, free_udp, pki, seed_sku, wait_for};
use oms_tests::{get, http, post};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(60);
const HEALTHY: Duration = Duration::from_secs(30);
const BERLIN: (f64, f64) = (52.52, 13.40);
const MUNICH: (f64, f64) = (48.14, 11.58);

fn hub_toml(state: &Path, capture_delay_ms: u64) -> String {
    format!(
        "[payments]\ncall_timeout_ms = 30000\nretry_backoff_ms = 50\n\
         [payments.providers.test]\nkind = \"test\"\nstate_file = {:?}\ncapture_delay_ms = {capture_delay_ms}\n\
         [tax]\nprices = \"inclusive\"\n[tax.rates]\nDE = 1900\n",
        state.display().to_string()
    )
}

fn node(root: &Path, certs: &Path, id: &str, quic: SocketAddr, at: (f64, f64)) -> ClusterNode {
    let toml = format!("\n[site]\nname = \"site\"\nlat = {}\nlon = {}\n", at.0, at.1);
    let (config, http, dir) = cluster::node_config_with(root, certs, id, quic, &toml);
    cluster::spawn_node_with(id, &config, http, &dir, "info")
}

fn order(ext: &str, lines: &[(&str, u32, i64)], to: (f64, f64), payment: Value) -> Value {
    json!({
        "external_ref": ext, "channel": "web",
        "lines": lines.iter().map(|(s, q, p)| json!({"sku": s, "qty": q, "unit_price_minor": p, "currency": "EUR"})).collect::<Vec<_>>(),
        "ship_to": {"name": "C", "line1": "1 Street", "city": "X", "postcode": "10115", "country": "DE", "lat": to.0, "lon": to.1},
        "payment": payment,
    })
}

fn card(token: &str) -> Value {
    json!({"method": "card", "provider": "test", "token": token})
}

async fn hub_post(c: &reqwest::Client, hub: SocketAddr, key: &str, body: &Value) -> (u16, Value) {
    let r = c.post(format!("http://{hub}/v1/orders")).header("idempotency-key", key).json(body).send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn wait_promisable(c: &reqwest::Client, hub: SocketAddr, sku: &str, site: &str, min: u64) {
    wait_for(c, format!("http://{hub}/v1/stock/{sku}"), &format!("hub rights for {sku} at {site}"), |v| {
        v["sites"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["site"] == site))
            .and_then(|r| r["hub_promisable"].as_u64())
            .is_some_and(|n| n >= min)
    })
    .await;
}

async fn ship(c: &reqwest::Client, n: &ClusterNode, id: &str, lines: &[(&str, u32)]) {
    let base = format!("http://{}/v1", n.http);
    wait_for(c, format!("{base}/orders/{id}"), "accepted at the site", |v| v["status"] == "accepted").await;
    let (s, w) = post(c, format!("{base}/waves"), json!({"max_orders": 50})).await;
    assert_eq!(s, 201, "wave: {w}");
    let picks: Vec<Value> = lines.iter().map(|(s, q)| json!({"sku": s, "picked": q})).collect();
    let (s, v) = post(c, format!("{base}/orders/{id}/picks"), json!({"lines": picks})).await;
    assert_eq!(s, 200, "picks: {v}");
    let (s, v) = post(c, format!("{base}/orders/{id}/pack"), json!({"parcels": 1})).await;
    assert_eq!(s, 200, "pack: {v}");
    let (s, v) = post(c, format!("{base}/orders/{id}/ship"), json!({"carrier": "DHL", "tracking": "T1"})).await;
    assert_eq!(s, 200, "ship: {v}");
}

fn counts(state: &Path) -> Value {
    std::fs::read(state)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .map(|v| v["counts"].clone())
        .unwrap_or(Value::Null)
}

/// A hub with `toml` and two sites, Berlin holding SKU-A and Munich SKU-B (50 each), both promisable at the
/// hub: one order of both ships in two pieces.
async fn two_sites(
    c: &reqwest::Client,
    root: &Path,
    toml: &str,
) -> (cluster::HubProc, SocketAddr, ClusterNode, ClusterNode) {
    let certs = pki(root, &["wh-berlin", "wh-munich"]);
    let (quic, hub) = (free_udp(), free_tcp());
    let hub_proc = cluster::spawn_hub_with(root, &certs, quic, hub, "info", toml);
    let berlin = node(root, &certs, "wh-berlin", quic, BERLIN);
    let munich = node(root, &certs, "wh-munich", quic, MUNICH);
    for n in [&berlin, &munich] {
        cluster::wait_healthy(c, n.http, HEALTHY).await;
    }
    cluster::wait_healthy(c, hub, HEALTHY).await;
    seed_sku(c, &berlin, "SKU-A", 50).await;
    seed_sku(c, &munich, "SKU-B", 50).await;
    wait_promisable(c, hub, "SKU-A", "wh-berlin", 2).await;
    wait_promisable(c, hub, "SKU-B", "wh-munich", 2).await;
    (hub_proc, hub, berlin, munich)
}

/// The id of the fulfillment of `placed` (a `201` of `POST /v1/orders`) at `site`.
fn fulfillment_at(placed: &Value, site: &str) -> String {
    placed["fulfillments"].as_array().unwrap().iter().find(|f| f["site"] == site).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_order_is_authorized_captured_per_shipment_invoiced_and_refunded() {
    let c = http();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let state = root.join("provider.json");
    // SKU-A only in Berlin, SKU-B only in Munich: one order, two shipments.
    let (_hub, hub, berlin, munich) = two_sites(&c, root, &hub_toml(&state, 0)).await;

    // A decline: 402 with the provider's reason, nothing reserved, and the key still free.
    let body =
        order("web-1", &[("SKU-A", 1, 1_190), ("SKU-B", 2, 595)], BERLIN, card("tok_decline_insufficient_funds"));
    let (s, v) = hub_post(&c, hub, "k-1", &body).await;
    assert_eq!(
        (s, v["code"].as_str(), v["reason"].as_str()),
        (402, Some("payment_declined"), Some("insufficient_funds")),
        "{v}"
    );
    let metrics = c.get(format!("http://{hub}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("oms_hub_orders_taken_total 0"), "a decline takes no order and no rights: {metrics}");
    let (_, list) = get(&c, format!("http://{hub}/v1/orders")).await;
    assert_eq!(list["total"], 0, "no order: {list}");

    // Bad payments: typed, nothing stored.
    for bad in [
        json!({"method": "card", "provider": "nope", "token": "t"}),
        json!({"method": "wire"}),
        json!({"method": "cod", "token": "x"}),
    ] {
        let (s, v) = hub_post(&c, hub, "k-bad", &order("web-x", &[("SKU-A", 1, 100)], BERLIN, bad.clone())).await;
        assert_eq!((s, v["code"].as_str()), (422, Some("invalid_payment")), "{bad}: {v}");
    }

    // The same key with another card: authorized for the gross total before the 201.
    let body = order("web-1", &[("SKU-A", 1, 1_190), ("SKU-B", 2, 595)], BERLIN, card("tok_ok"));
    let (s, placed) = hub_post(&c, hub, "k-1", &body).await;
    assert_eq!(s, 201, "{placed}");
    assert_eq!(
        (placed["payment"]["status"].as_str(), placed["payment"]["authorized_minor"].as_u64()),
        (Some("authorized"), Some(2_380)),
        "{placed}"
    );
    let (s, again) = hub_post(&c, hub, "k-1", &body).await;
    assert_eq!((s, &again["id"]), (201, &placed["id"]));
    assert_eq!(counts(&state)["authorize"], 1, "a retry gets the same authorization");
    // The same key and order with another payment is a changed body: 409, and the other card's authorization
    // voided; terms, COD or no payment at all are refused the same way, and nothing is authorized for them.
    let other = order("web-1", &[("SKU-A", 1, 1_190), ("SKU-B", 2, 595)], BERLIN, card("tok_other"));
    let (s, again) = hub_post(&c, hub, "k-1", &other).await;
    assert_eq!((s, again["code"].as_str()), (409, Some("idempotency_key_reused")), "{again}");
    assert_eq!((counts(&state)["authorize"].as_u64(), counts(&state)["void"].as_u64()), (Some(2), Some(1)));
    for payment in [json!({"method": "terms"}), json!({"method": "cod"}), Value::Null] {
        let mut changed = order("web-1", &[("SKU-A", 1, 1_190), ("SKU-B", 2, 595)], BERLIN, payment.clone());
        if payment.is_null() {
            changed.as_object_mut().unwrap().remove("payment");
        }
        let (s, again) = hub_post(&c, hub, "k-1", &changed).await;
        assert_eq!((s, again["code"].as_str()), (409, Some("idempotency_key_reused")), "{payment}: {again}");
    }
    let (s, again) = hub_post(&c, hub, "k-1", &body).await;
    assert_eq!((s, &again["id"]), (201, &placed["id"]), "the original body still replays");
    assert_eq!(counts(&state)["authorize"], 2, "nothing authorized for the refused ones");
    let id = placed["id"].as_str().unwrap().to_owned();
    let (fa, fb) = (fulfillment_at(&placed, "wh-berlin"), fulfillment_at(&placed, "wh-munich"));

    // Berlin ships SKU-A: invoice 1, captured exactly its amount.
    ship(&c, &berlin, &fa, &[("SKU-A", 1)]).await;
    let url = format!("http://{hub}/v1/orders/{id}");
    let v = wait_for(&c, url.clone(), "first capture", |v| v["payment"]["captured_minor"] == 1_190).await;
    assert_eq!(v["payment"]["status"], "partially_captured", "{v}");
    let inv1 = v["payment"]["invoices"][0].as_str().unwrap().to_owned();
    // Munich ships SKU-B: invoice 2, fully captured.
    ship(&c, &munich, &fb, &[("SKU-B", 2)]).await;
    let v = wait_for(&c, url.clone(), "second capture", |v| v["payment"]["status"] == "captured").await;
    assert_eq!(v["payment"]["captured_minor"], 2_380, "{v}");
    let inv2 = v["payment"]["invoices"][1].as_str().unwrap().to_owned();
    assert_eq!(counts(&state)["capture"], 2);
    let statuses: Vec<&str> = v["timeline"].as_array().unwrap().iter().filter_map(|t| t["status"].as_str()).collect();
    assert!(statuses.contains(&"payment_invoiced") && statuses.contains(&"payment_captured"), "{statuses:?}");

    // Each invoice is an `invoice.created` event, committed with it, in the feed (and so to webhooks).
    let (s, ev) = get(&c, format!("http://{hub}/v1/events?types=invoice.created&limit=100")).await;
    assert_eq!(s, 200, "{ev}");
    let numbers: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["order_id"] == id.as_str())
        .filter_map(|e| e["data"]["invoice"].as_str())
        .collect();
    assert_eq!(numbers, [inv1.as_str(), inv2.as_str()], "{ev}");

    // The invoices: gap-free numbers, lines, tax (19 % inclusive), JSON, HTML and CSV.
    let (s, i2) = get(&c, format!("http://{hub}/v1/invoices/{inv2}")).await;
    assert_eq!(s, 200);
    assert_eq!(
        (i2["total_minor"].as_i64(), i2["tax_minor"].as_i64(), i2["net_minor"].as_i64()),
        (Some(1_190), Some(190), Some(1_000)),
        "{i2}"
    );
    let n = |s: &str| s.rsplit('-').next().unwrap().parse::<u64>().unwrap();
    assert_eq!(n(&inv2), n(&inv1) + 1);
    let html = c.get(format!("http://{hub}/v1/invoices/{inv1}?format=html")).send().await.unwrap();
    assert!(html.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(html.text().await.unwrap().contains(&inv1));
    let csv = c.get(format!("http://{hub}/v1/invoices?format=csv")).send().await.unwrap().text().await.unwrap();
    assert!(csv.starts_with("number,order,reference") && csv.contains(&inv2), "{csv}");

    // Bad input on the money routes: typed problems, nothing changes.
    let refund_url = format!("http://{hub}/v1/orders/{id}/refunds");
    for (body, code) in [
        (json!({"amount_minor": 100}), "invalid_refund"),
        (json!({"amount_minor": 0, "reason": "x"}), "invalid_refund"),
        (json!({"lines": [{"sku": "SKU-B", "qty": 3}], "reason": "x", "invoice": inv2}), "refund_exceeds_invoice"),
        (json!({"amount_minor": 1, "reason": "x", "invoice": "INV-999999"}), "invoice_not_found"),
        (json!({"amount_minor": 1, "reason": "x", "bogus": 1}), "invalid_json"),
    ] {
        let (s, v) = post(&c, refund_url.clone(), body.clone()).await;
        assert!((400..500).contains(&s), "{body}: {s} {v}");
        if code != "invalid_json" {
            assert_eq!(v["code"], code, "{body}: {v}");
        }
    }
    for bad in
        ["/v1/invoices?from=5&to=1", "/v1/invoices?bogus=1", "/v1/invoices?format=xml", "/v1/credit-notes?from=x"]
    {
        let (s, v) = get(&c, format!("http://{hub}{bad}")).await;
        assert_eq!((s, v["code"].as_str()), (400, Some("invalid_query")), "{bad}: {v}");
    }
    let (s, v) = get(&c, format!("http://{hub}/v1/invoices/INV-999999")).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("invoice_not_found")));
    let (_, cns) = get(&c, format!("http://{hub}/v1/credit-notes")).await;
    assert_eq!(cns["credit_notes"].as_array().map(Vec::len), Some(0), "refusals wrote nothing: {cns}");

    // A refund of one unit of SKU-B: credit note referencing invoice 2, refunded through the provider.
    let (s, cn) = post(&c, refund_url, json!({"lines": [{"sku": "SKU-B", "qty": 1}], "reason": "damaged"})).await;
    assert_eq!(s, 201, "{cn}");
    assert_eq!((cn["invoice"].as_str(), cn["total_minor"].as_i64()), (Some(inv2.as_str()), Some(595)), "{cn}");
    let v = wait_for(&c, url, "refund", |v| v["payment"]["refunded_minor"] == 595).await;
    assert_eq!(v["payment"]["status"], "partially_refunded");
    let (s, cnj) = get(&c, format!("http://{hub}/v1/credit-notes/{}", cn["number"].as_str().unwrap())).await;
    assert_eq!((s, &cnj["reason"]), (200, &json!("damaged")));
    let (_, summary) = get(&c, format!("http://{hub}/v1/payments/summary")).await;
    assert_eq!(summary["payment_mismatches"], 0, "{summary}");
    assert_eq!((summary["captured_minor"].as_u64(), summary["refunded_minor"].as_u64()), (Some(2_380), Some(595)));
    assert_eq!(counts(&state)["refund"], 1);

    // Every settled money movement is a `payment.*` event, each once, committed with what it reports: the
    // authorization with the order, a capture per invoice, the refund with its credit note.
    let (s, ev) = get(&c, format!("http://{hub}/v1/events?types=payment.*&limit=100")).await;
    assert_eq!(s, 200, "{ev}");
    let mine: Vec<(&str, u64, Option<&str>)> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["order_id"] == id.as_str())
        .map(|e| {
            (e["type"].as_str().unwrap(), e["data"]["amount_minor"].as_u64().unwrap(), e["data"]["document"].as_str())
        })
        .collect();
    assert_eq!(
        mine,
        [
            ("payment.authorized", 2_380, None),
            ("payment.captured", 1_190, Some(inv1.as_str())),
            ("payment.captured", 1_190, Some(inv2.as_str())),
            ("payment.refunded", 595, cn["number"].as_str()),
        ],
        "{ev}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_killed_between_capture_and_commit_captures_once() {
    let c = http();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let state = root.join("provider.json");
    let certs = pki(root, &["wh-berlin"]);
    let (quic, hub) = (free_udp(), free_tcp());
    // Captures answer 20 s after they took effect: the kill lands between the call and the commit.
    let mut hub_proc = cluster::spawn_hub_with(root, &certs, quic, hub, "info", &hub_toml(&state, 20_000));
    let berlin = node(root, &certs, "wh-berlin", quic, BERLIN);
    cluster::wait_healthy(&c, berlin.http, HEALTHY).await;
    cluster::wait_healthy(&c, hub, HEALTHY).await;
    seed_sku(&c, &berlin, "SKU-A", 50).await;
    wait_promisable(&c, hub, "SKU-A", "wh-berlin", 2).await;
    let (s, placed) =
        hub_post(&c, hub, "k-kill", &order("web-k", &[("SKU-A", 2, 1_000)], BERLIN, card("tok_ok"))).await;
    assert_eq!(s, 201, "{placed}");
    let id = placed["id"].as_str().unwrap().to_owned();
    let fo = placed["fulfillments"][0]["id"].as_str().unwrap().to_owned();
    ship(&c, &berlin, &fo, &[("SKU-A", 2)]).await;
    let deadline = Instant::now() + DEADLINE;
    while counts(&state)["capture"] != 1 {
        assert!(Instant::now() < deadline, "the provider never captured: {}", counts(&state));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The provider captured; the hub has not committed (its answer is 20 s away). Kill it there.
    hub_proc.proc.kill9();
    let _hub2 = cluster::spawn_hub_with(root, &certs, quic, hub, "info", &hub_toml(&state, 0));
    cluster::wait_healthy(&c, hub, HEALTHY).await;
    let v = wait_for(&c, format!("http://{hub}/v1/orders/{id}"), "captured after the restart", |v| {
        v["payment"]["status"] == "captured"
    })
    .await;
    assert_eq!(v["payment"]["captured_minor"], 2_000, "{v}");
    assert_eq!(counts(&state)["capture"], 1, "captured once");
    let (_, summary) = get(&c, format!("http://{hub}/v1/payments/summary")).await;
    assert_eq!((summary["payment_mismatches"].as_u64(), summary["invoices"].as_u64()), (Some(0), Some(1)), "{summary}");
}

/// The same lifecycle through the Stripe-compatible provider at localstripe (`OMS_LOCALSTRIPE_URL`; see
/// tests/stripe.rs): the intake's PaymentIntent is captured once by the first shipment (Stripe releases the
/// rest), so the second shipment's capture re-authorizes the rest on the same card and captures that; a
/// refund goes back through the Refunds API. Skipped without localstripe, failing in CI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_order_at_a_stripe_compatible_provider_is_captured_per_shipment_and_refunded() {
    let Some(stripe) = oms_tests::localstripe("the hub's stripe lifecycle") else { return };
    let c = http();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let secret = root.join("stripe.key");
    std::fs::write(&secret, "sk_test_oms\n").unwrap();
    let toml = format!(
        "[payments]\ncall_timeout_ms = 10000\nretry_backoff_ms = 50\n\
         [payments.providers.stripe]\nkind = \"stripe\"\nbase_url = {stripe:?}\nsecret_key_file = {:?}\n\
         [tax]\nprices = \"inclusive\"\n[tax.rates]\nDE = 1900\n",
        secret.display().to_string()
    );
    let (_hub, hub, berlin, munich) = two_sites(&c, root, &toml).await;
    let stripe_card = |token: &str| json!({"method": "card", "provider": "stripe", "token": token});

    // localstripe's declining test card: 402 with Stripe's reason, nothing taken.
    let lines = [("SKU-A", 1, 1_190), ("SKU-B", 2, 595)];
    let body = order("web-s", &lines, BERLIN, stripe_card("pm_card_chargeCustomerFail"));
    let (s, v) = hub_post(&c, hub, "k-s", &body).await;
    assert_eq!((s, v["code"].as_str(), v["reason"].as_str()), (402, Some("payment_declined"), Some("card_declined")));

    let (s, placed) = hub_post(&c, hub, "k-s", &order("web-s", &lines, BERLIN, stripe_card("pm_card_visa"))).await;
    assert_eq!((s, placed["payment"]["authorized_minor"].as_u64()), (201, Some(2_380)), "{placed}");
    let id = placed["id"].as_str().unwrap().to_owned();
    let url = format!("http://{hub}/v1/orders/{id}");
    ship(&c, &berlin, &fulfillment_at(&placed, "wh-berlin"), &[("SKU-A", 1)]).await;
    let v = wait_for(&c, url.clone(), "first capture", |v| v["payment"]["captured_minor"] == 1_190).await;
    assert_eq!(v["payment"]["status"], "partially_captured", "{v}");
    ship(&c, &munich, &fulfillment_at(&placed, "wh-munich"), &[("SKU-B", 2)]).await;
    let v = wait_for(&c, url.clone(), "second capture", |v| v["payment"]["status"] == "captured").await;
    // The second PaymentIntent covers the rest: 2,380 + 1,190 authorized, 2,380 captured, two invoices.
    assert_eq!(
        (v["payment"]["captured_minor"].as_u64(), v["payment"]["authorized_minor"].as_u64()),
        (Some(2_380), Some(3_570)),
        "{v}"
    );
    assert_eq!(v["payment"]["invoices"].as_array().map(Vec::len), Some(2), "{v}");
    // The order is final: what the first PaymentIntent did not capture was released by its partial capture
    // (Stripe releases the rest), the second was captured in full, nothing is held.
    let v = wait_for(&c, url.clone(), "the release settled", |v| v["payment"]["held_minor"] == 0).await;
    assert_eq!(v["payment"]["released_minor"], 1_190, "authorized = captured + released: {v}");

    let (s, cn) =
        post(&c, format!("{url}/refunds"), json!({"lines": [{"sku": "SKU-B", "qty": 1}], "reason": "damaged"})).await;
    assert_eq!(s, 201, "{cn}");
    let v = wait_for(&c, url, "refund", |v| v["payment"]["refunded_minor"] == 595).await;
    assert_eq!(v["payment"]["status"], "partially_refunded", "{v}");
    let (_, summary) = get(&c, format!("http://{hub}/v1/payments/summary")).await;
    assert_eq!(
        (summary["payment_mismatches"].as_u64(), summary["action_required"].as_u64(), summary["outbox_open"].as_u64()),
        (Some(0), Some(0), Some(0)),
        "{summary}"
    );
}

/// An order that reaches its final state with part of its authorization never to be captured releases the
/// rest at the provider through the outbox, once: here the customer cancels after Berlin shipped its part and
/// Munich cancels its part at the site. Authorized = captured + released, nothing held, one void call, one
/// `payment.released` event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_cancelled_after_a_partial_shipment_releases_the_rest_once() {
    let c = http();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let state = root.join("provider.json");
    let (_hub, hub, berlin, _munich) = two_sites(&c, root, &hub_toml(&state, 0)).await;
    let body = order("web-r", &[("SKU-A", 1, 1_190), ("SKU-B", 2, 595)], BERLIN, card("tok_ok"));
    let (s, placed) = hub_post(&c, hub, "k-r", &body).await;
    assert_eq!(s, 201, "{placed}");
    let id = placed["id"].as_str().unwrap().to_owned();
    let url = format!("http://{hub}/v1/orders/{id}");
    ship(&c, &berlin, &fulfillment_at(&placed, "wh-berlin"), &[("SKU-A", 1)]).await;
    let v = wait_for(&c, url.clone(), "first capture", |v| v["payment"]["captured_minor"] == 1_190).await;
    assert_eq!((v["payment"]["held_minor"].as_u64(), v["payment"]["released_minor"].as_u64()), (Some(1_190), Some(0)));
    assert_eq!(counts(&state)["void"], Value::Null, "nothing released while the order is open");

    let (s, v) = post(&c, format!("{url}/cancel"), json!({"reason": "changed their mind"})).await;
    assert_eq!(s, 202, "{v}");
    let v = wait_for(&c, url.clone(), "the rest released", |v| v["payment"]["released_minor"] == 1_190).await;
    assert_eq!(v["status"], "partially_cancelled", "{v}");
    let p = &v["payment"];
    assert_eq!(
        (p["status"].as_str(), p["authorized_minor"].as_u64(), p["captured_minor"].as_u64(), p["held_minor"].as_u64()),
        (Some("captured"), Some(2_380), Some(1_190), Some(0)),
        "{v}"
    );
    let statuses: Vec<&str> = v["timeline"].as_array().unwrap().iter().filter_map(|t| t["status"].as_str()).collect();
    assert!(statuses.contains(&"payment_released"), "{statuses:?}");
    assert_eq!(counts(&state)["void"], 1, "released at the provider once");
    let (s, ev) = get(&c, format!("http://{hub}/v1/events?types=payment.released&limit=100")).await;
    assert_eq!(s, 200, "{ev}");
    let released: Vec<u64> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["order_id"] == id.as_str())
        .filter_map(|e| e["data"]["amount_minor"].as_u64())
        .collect();
    assert_eq!(released, [1_190], "{ev}");
    let (_, summary) = get(&c, format!("http://{hub}/v1/payments/summary")).await;
    assert_eq!(
        (
            summary["released_minor"].as_u64(),
            summary["held_minor"].as_u64(),
            summary["outbox_open"].as_u64(),
            summary["payment_mismatches"].as_u64()
        ),
        (Some(1_190), Some(0), Some(0), Some(0)),
        "{summary}"
    );
}

/// Units waiting for stock (no site carries the SKU) cancelled by line after the rest of the order shipped:
/// the order is final, so what it will never capture is released at once, not held until it expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_cancel_that_leaves_the_order_final_releases_the_rest() {
    let c = http();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let state = root.join("provider.json");
    let (_hub, hub, berlin, _munich) = two_sites(&c, root, &hub_toml(&state, 0)).await;
    let body = order("web-l", &[("SKU-A", 1, 1_190), ("SKU-NONE", 1, 500)], BERLIN, card("tok_ok"));
    let (s, placed) = hub_post(&c, hub, "k-l", &body).await;
    assert_eq!(s, 201, "{placed}");
    let id = placed["id"].as_str().unwrap().to_owned();
    let url = format!("http://{hub}/v1/orders/{id}");
    ship(&c, &berlin, &fulfillment_at(&placed, "wh-berlin"), &[("SKU-A", 1)]).await;
    let v = wait_for(&c, url.clone(), "the capture", |v| v["payment"]["captured_minor"] == 1_190).await;
    assert_eq!(v["payment"]["held_minor"].as_u64(), Some(500), "SKU-NONE still waits: its part is held");
    assert_eq!(counts(&state)["void"], Value::Null, "nothing released while a unit waits");
    let cancel = json!({"reason": "out of range", "lines": [{"sku": "SKU-NONE", "qty": 1}]});
    let (s, v) = post(&c, format!("{url}/cancel"), cancel).await;
    assert_eq!(s, 202, "{v}");
    let v = wait_for(&c, url.clone(), "the rest released", |v| v["payment"]["released_minor"] == 500).await;
    let p = &v["payment"];
    assert_eq!(
        (p["captured_minor"].as_u64(), p["released_minor"].as_u64(), p["held_minor"].as_u64()),
        (Some(1_190), Some(500), Some(0)),
        "{v}"
    );
    assert_eq!(counts(&state)["void"], 1, "released at the provider once");
    let (_, summary) = get(&c, format!("http://{hub}/v1/payments/summary")).await;
    assert_eq!(summary["payment_mismatches"].as_u64(), Some(0), "{summary}");
}

/// A cash-on-delivery order: nothing is owed before it ships; once shipped (invoiced) service records what
/// the courier collected, over the API (idempotent by its key) and on the order's screen, never more than it
/// owes; every refusal is typed and changes nothing; the order's payment view, its timeline, the
/// `payment.recorded` event and the summary show the payments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cod_order_records_payments_up_to_what_it_owes() {
    use oms_service::auth::{Role, users};
    let c = http();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(cluster::hub_data(root)).unwrap();
    let sam = users::NewUser { name: "sam".into(), role: Role::Service, secret: "a long password".into(), pin: false };
    users::create(&cluster::hub_data(root), sam, 1).unwrap();
    let (_hub, hub, berlin, _munich) = two_sites(&c, root, &hub_toml(&root.join("provider.json"), 0)).await;
    let card_order = order("web-card", &[("SKU-A", 1, 100)], BERLIN, card("tok_ok"));
    let (s, card_placed) = hub_post(&c, hub, "k-card", &card_order).await;
    assert_eq!(s, 201, "{card_placed}");
    let (s, placed) =
        hub_post(&c, hub, "k-cod", &order("web-cod", &[("SKU-A", 1, 1_190)], BERLIN, json!({"method": "cod"}))).await;
    assert_eq!(s, 201, "{placed}");
    let id = placed["id"].as_str().unwrap().to_owned();
    let url = format!("http://{hub}/v1/orders/{id}");
    let record = |key: Option<&'static str>, body: Value, order: String| {
        let c = c.clone();
        async move {
            let mut r = c.post(format!("http://{hub}/v1/orders/{order}/payments")).json(&body);
            if let Some(k) = key {
                r = r.header("idempotency-key", k);
            }
            let r = r.send().await.unwrap();
            let replayed = r.headers().get("idempotent-replayed").is_some();
            (r.status().as_u16(), replayed, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let cash = |amount: u64| json!({"amount_minor": amount, "method": "cash", "reference": "R-1", "reason": "courier"});
    let (s, _, v) = record(Some("p-1"), cash(1_000), id.clone()).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("overpayment")), "nothing owed before it ships: {v}");

    ship(&c, &berlin, &fulfillment_at(&placed, "wh-berlin"), &[("SKU-A", 1)]).await;
    wait_for(&c, url.clone(), "invoiced", |v| v["payment"]["outstanding_minor"] == 1_190).await;
    let (s, replayed, first) = record(Some("p-1"), cash(1_000), id.clone()).await;
    assert_eq!((s, replayed, first["amount_minor"].as_u64()), (201, false, Some(1_000)), "{first}");
    let (s, replayed, again) = record(Some("p-1"), cash(1_000), id.clone()).await;
    assert_eq!((s, replayed, &again), (201, true, &first), "the same key and body: the first record");
    let card_id = card_placed["id"].as_str().unwrap().to_owned();
    for (key, body, order, status, code) in [
        (Some("p-1"), cash(900), id.clone(), 409, "idempotency_key_reused"),
        (Some("p-2"), cash(191), id.clone(), 409, "overpayment"),
        (None, cash(1), id.clone(), 400, "idempotency_key_required"),
        (
            Some("p-2"),
            json!({"amount_minor": 0, "method": "cash", "reference": "R", "reason": "x"}),
            id.clone(),
            422,
            "invalid_payment",
        ),
        (
            Some("p-2"),
            json!({"amount_minor": 1, "method": "gold", "reference": "R", "reason": "x"}),
            id.clone(),
            422,
            "invalid_body",
        ),
        (Some("p-2"), cash(1), card_id, 409, "payment_not_manual"),
        (Some("p-2"), cash(1), "hub-0000009999".to_owned(), 404, "payment_not_found"),
    ] {
        let (s, _, v) = record(key, body.clone(), order).await;
        assert_eq!((s, v["code"].as_str()), (status, Some(code)), "{body}: {v}");
    }
    let (_, v) = get(&c, url.clone()).await;
    assert_eq!(
        (v["payment"]["paid_minor"].as_u64(), v["payment"]["outstanding_minor"].as_u64()),
        (Some(1_000), Some(190))
    );

    // The rest on the order's screen, by a person of service; the same form sent twice records once.
    let mut b = oms_tests::browser::Browser::new(hub);
    assert_eq!(b.sign_in("sam", "a long password").await.status, 303);
    let p = b.get(&format!("/ui/orders/{id}")).await;
    assert!(p.html.contains("Record the payment") && p.html.contains("owed"), "{}", p.html);
    let key = p.html.split("name=\"key\" value=\"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_owned();
    let csrf = p.csrf();
    let form = |amount: &str| -> Vec<(&'static str, String)> {
        let f = [("key", key.as_str()), ("amount_minor", amount), ("method", "cash"), ("reference", "R-2")];
        let mut f: Vec<(&'static str, String)> = f.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        f.extend([("csrf", csrf.clone()), ("reason", "the rest".to_owned())]);
        f
    };
    let too_much = form("191");
    let too_much: Vec<(&str, &str)> = too_much.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let p = b.post(&format!("/ui/orders/{id}/payments"), &too_much).await;
    assert_eq!(p.status, 409);
    assert!(p.html.contains("owes 190"), "{}", p.html);
    let right = form("190");
    let right: Vec<(&str, &str)> = right.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for _ in 0..2 {
        let p = b.post(&format!("/ui/orders/{id}/payments"), &right).await;
        assert_eq!(p.status, 303, "{}", p.html);
    }
    let (_, v) = get(&c, url).await;
    let pay = &v["payment"];
    assert_eq!((pay["paid_minor"].as_u64(), pay["outstanding_minor"].as_u64()), (Some(1_190), Some(0)), "{v}");
    assert_eq!(pay["recorded"].as_array().map(Vec::len), Some(2), "the form sent twice recorded once: {v}");
    assert_eq!(pay["recorded"][1]["recorded_by"], "user:sam", "{v}");
    let statuses: Vec<&str> = v["timeline"].as_array().unwrap().iter().filter_map(|t| t["status"].as_str()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == "payment_recorded").count(), 2, "{statuses:?}");
    let (_, ev) = get(&c, format!("http://{hub}/v1/events?types=payment.recorded&limit=100")).await;
    let amounts: Vec<u64> =
        ev["events"].as_array().unwrap().iter().filter_map(|e| e["data"]["amount_minor"].as_u64()).collect();
    assert_eq!(amounts, [1_000, 190], "{ev}");
    let (_, summary) = get(&c, format!("http://{hub}/v1/payments/summary")).await;
    assert_eq!(
        (summary["payments_recorded"].as_u64(), summary["paid_minor"].as_u64(), summary["payment_mismatches"].as_u64()),
        (Some(2), Some(1_190), Some(0)),
        "{summary}"
    );
}

/// Service moves one site's part of an order to another site, and cancels another site's part, each with a
/// reason: the first goes back to routing and lands elsewhere, never at the site it left; the second's units
/// are cancelled when the site confirms (`order.lines_cancelled`), and the payment releases their value once
/// the rest ships. Refusals (no reason, unknown or shipped fulfillment, asked twice) change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_moves_a_fulfillment_to_another_site_and_cancels_one_at_its_site() {
    let c = http();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let state = root.join("provider.json");
    oms_service::auth::users::create(
        &cluster::hub_data(root),
        oms_service::auth::users::NewUser {
            name: "sam".into(),
            role: oms_service::auth::Role::Service,
            secret: "a long password".into(),
            pin: false,
        },
        1,
    )
    .unwrap();
    let (_hub_proc, hub, berlin, munich) = two_sites(&c, root, &hub_toml(&state, 0)).await;
    let url = |o: &str, f: &str| format!("http://{hub}/v1/orders/{o}/fulfillments/{f}/cancel");
    // Cancelled at one site, on the console: A from Berlin, B from Munich; service cancels Munich's part.
    let (s, placed) =
        hub_post(&c, hub, "k-cut", &order("web-c", &[("SKU-A", 1, 1_000), ("SKU-B", 1, 500)], BERLIN, card("tok_ok")))
            .await;
    assert_eq!(s, 201, "{placed}");
    let id2 = placed["id"].as_str().unwrap().to_owned();
    let (fa, fb) = (fulfillment_at(&placed, "wh-berlin"), fulfillment_at(&placed, "wh-munich"));
    let mut sam = oms_tests::browser::Browser::new(hub);
    assert_eq!(sam.sign_in("sam", "a long password").await.status, 303);
    let p = sam.get(&format!("/ui/orders/{id2}")).await;
    assert!(p.html.contains("Move to another site") && p.html.contains("Cancel at this site"), "{}", p.html);
    let csrf = p.csrf();
    let form = format!("/ui/orders/{id2}/fulfillments/{fb}/cancel");
    let p = sam.post(&form, &[("csrf", &csrf), ("reason", ""), ("then", "cancel")]).await;
    assert_eq!(p.status, 422);
    assert!(p.html.contains("Give a reason for cancelling at this site."), "{}", p.html);
    let p = sam.submit(&form, &[("csrf", &csrf), ("reason", "customer no longer wants B"), ("then", "cancel")]).await;
    assert!(p.html.contains("cancel asked of the site"), "{}", p.html);
    let v = wait_for(&c, format!("http://{hub}/v1/orders/{id2}"), "B cancelled at Munich", |v| {
        v["cancelled_unfilled"].as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    assert_eq!(v["cancelled_unfilled"], json!([{"sku": "SKU-B", "qty": 1}]), "{v}");
    assert_eq!(v["unfilled"], json!([]), "not re-routed: {v}");
    let (_, ev) = get(&c, format!("http://{hub}/v1/events?types=order.lines_cancelled")).await;
    let evs: Vec<&Value> = ev["events"].as_array().unwrap().iter().filter(|e| e["order_id"] == id2.as_str()).collect();
    assert_eq!(evs.len(), 1, "{ev}");
    assert_eq!(evs[0]["data"]["reason"], "customer no longer wants B", "{ev}");
    // Berlin ships A; the order is final; B's value (500) is released, A's captured.
    ship(&c, &berlin, &fa, &[("SKU-A", 1)]).await;
    let v = wait_for(&c, format!("http://{hub}/v1/orders/{id2}"), "captured and released", |v| {
        v["payment"]["captured_minor"] == 1_000 && v["payment"]["released_minor"] == 500
    })
    .await;
    assert_eq!(v["payment"]["status"], "captured", "{v}");
    // A shipped fulfillment cannot be cancelled at its site.
    wait_for(&c, format!("http://{hub}/v1/orders/{id2}"), "shipped at the hub", |v| {
        v["fulfillments"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["id"] == fa.as_str() && f["status"] == "shipped"))
    })
    .await;
    let (s, v) = post(&c, url(&id2, &fa), json!({"reason": "too late"})).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("fulfillment_not_cancellable")), "{v}");

    // A line cancel of units placed at a site: one of three A at Berlin. Berlin cancels its part whole; the
    // unit is cancelled and the other two are placed again, at Berlin (the only site with A).
    let (s, placed) =
        hub_post(&c, hub, "k-line", &order("web-l", &[("SKU-A", 3, 1_000)], BERLIN, card("tok_ok"))).await;
    assert_eq!(s, 201, "{placed}");
    let id3 = placed["id"].as_str().unwrap().to_owned();
    let first = fulfillment_at(&placed, "wh-berlin");
    let (s, v) = post(
        &c,
        format!("http://{hub}/v1/orders/{id3}/cancel"),
        json!({"reason": "one is enough", "lines": [{"sku": "SKU-A", "qty": 4}]}),
    )
    .await;
    assert_eq!((s, v["code"].as_str(), v["waiting"].as_u64()), (409, Some("units_not_waiting"), Some(3)), "{v}");
    let (s, v) = post(
        &c,
        format!("http://{hub}/v1/orders/{id3}/cancel"),
        json!({"reason": "one is enough", "lines": [{"sku": "SKU-A", "qty": 1}]}),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["lines"][0]["result"], "cancel_requested", "{v}");
    assert_eq!((v["lines"][0]["fulfillment"].as_str(), v["lines"][0]["qty"].as_u64()), (Some(first.as_str()), Some(1)));
    let v = wait_for(&c, format!("http://{hub}/v1/orders/{id3}"), "one cancelled, two placed again", |v| {
        v["cancelled_unfilled"].as_array().is_some_and(|a| !a.is_empty())
            && v["fulfillments"].as_array().is_some_and(|f| f.len() == 2)
    })
    .await;
    assert_eq!(v["cancelled_unfilled"], json!([{"sku": "SKU-A", "qty": 1}]), "{v}");
    assert_eq!(v["unfilled"], json!([]), "{v}");
    let again = &v["fulfillments"][1];
    assert_eq!((again["site"].as_str(), again["lines"][0]["qty"].as_u64()), (Some("wh-berlin"), Some(2)), "{v}");
    assert_eq!(v["avoid_sites"], json!([]), "a line cancel does not move the order away: {v}");
    assert_eq!(v["lines"][0]["cancellable"].as_u64(), Some(2), "{v}");
    let (_, ev) = get(&c, format!("http://{hub}/v1/events?types=order.lines_cancelled")).await;
    let evs: Vec<&Value> = ev["events"].as_array().unwrap().iter().filter(|e| e["order_id"] == id3.as_str()).collect();
    assert_eq!(evs.len(), 1, "{ev}");
    assert_eq!(evs[0]["data"]["lines"], json!([{"sku": "SKU-A", "qty": 1}]), "{ev}");

    seed_sku(&c, &munich, "SKU-A", 10).await;
    wait_promisable(&c, hub, "SKU-A", "wh-munich", 2).await;

    // Moved: two of A, placed at Berlin (nearest), moved away by service; Munich takes them.
    let (s, placed) =
        hub_post(&c, hub, "k-move", &order("web-m", &[("SKU-A", 2, 1_000)], BERLIN, card("tok_ok"))).await;
    assert_eq!(s, 201, "{placed}");
    let id = placed["id"].as_str().unwrap().to_owned();
    let fo = fulfillment_at(&placed, "wh-berlin");
    for (body, status, code) in [
        (json!({"then": "reroute"}), 422, "reason_required"),
        (json!({"reason": "x", "then": "elsewhere"}), 422, "invalid_body"),
    ] {
        let (s, v) = post(&c, url(&id, &fo), body).await;
        assert_eq!((s, v["code"].as_str()), (status, Some(code)), "{v}");
    }
    let (s, v) = post(&c, url(&id, &format!("{id}.9")), json!({"reason": "x"})).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("fulfillment_not_found")), "{v}");
    let (s, v) = post(&c, url(&id, &fo), json!({"reason": "Berlin's dock is flooded", "then": "reroute"})).await;
    assert_eq!(
        (s, v["result"].as_str(), v["site"].as_str()),
        (202, Some("cancel_requested"), Some("wh-berlin")),
        "{v}"
    );
    let (s, v) = post(&c, url(&id, &fo), json!({"reason": "again", "then": "reroute"})).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("fulfillment_not_cancellable")), "asked twice: {v}");
    let v = wait_for(&c, format!("http://{hub}/v1/orders/{id}"), "moved to Munich", |v| {
        v["fulfillments"].as_array().is_some_and(|f| f.iter().any(|f| f["site"] == "wh-munich"))
    })
    .await;
    assert_eq!(v["avoid_sites"], json!(["wh-berlin"]), "{v}");
    let fos = v["fulfillments"].as_array().unwrap();
    assert_eq!(fos.len(), 2, "{v}");
    assert!(fos[0]["released"].is_string() && fos[0]["site_cancel"]["then"] == "reroute", "{v}");
    assert_eq!(v["unfilled"], json!([]), "{v}");
    assert_eq!(v["cancelled_unfilled"], json!([]), "moved, not cancelled: {v}");

    let (_, audit) = get(&c, format!("http://{hub}/v1/audit/events?limit=200")).await;
    let outcomes: Vec<&str> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["route"].as_str().is_some_and(|r| r.ends_with("/fulfillments/{fulfillment}/cancel")))
        .filter_map(|e| e["outcome"].as_str())
        .collect();
    assert!(outcomes.contains(&"ok") && outcomes.contains(&"fulfillment_not_found"), "{audit}");
    let (_, summary) = get(&c, format!("http://{hub}/v1/payments/summary")).await;
    assert_eq!(summary["payment_mismatches"].as_u64(), Some(0), "{summary}");
}
