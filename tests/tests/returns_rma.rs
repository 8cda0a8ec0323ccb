//! Returns (RMAs) over real processes: a card order shipped from a site, a return requested at the hub,
//! approved by service, published to the site, received there against the RMA (one line restocked, one
//! scrapped, the node killed with SIGKILL in between), credit-noted and refunded once; refusals
//! (over-return at the hub and at the site, a non-returnable SKU, a declined RMA at the site) that change
//! nothing; and a held refund that waits for service. The window is covered by the hub's unit tests (a
//! test cannot wait 24 hours). The customer's own tracking page: a return asked for there (refusals in a
//! sentence, storing nothing), its state in words as it moves on, its `return.*` events in order and in the
//! reports; a cancel from the page; forged and other orders' links refused.
//!
//! Every wait is a bounded loop with a deadline; processes are killed when their guard drops.

use std::net::SocketAddr;
use std::time::Duration;

use oms_service::auth::Role;
use oms_service::auth::users::{self, NewUser};
use oms_tests::browser::Browser;
use oms_tests::cluster::{self, ClusterNode, wait_for};
use oms_tests::shipped::{HEALTHY, counts, hub_post, order, shipped_order};
use oms_tests::{get, http, post};
use serde_json::{Value, json};

async fn on_hand(c: &reqwest::Client, node: &ClusterNode, sku: &str) -> u64 {
    let (_, v) = get(c, format!("http://{}/v1/stock/{sku}", node.http)).await;
    v["balance"]["on_hand"].as_u64().or_else(|| v["on_hand"].as_u64()).unwrap_or(u64::MAX)
}

/// The node's view of one RMA, once it has it in `state`.
async fn at_site(c: &reqwest::Client, node: &ClusterNode, rma: &str, state: &str) -> Value {
    let v = wait_for(c, format!("http://{}/v1/rmas", node.http), &format!("{rma} {state} at the site"), |v| {
        v["items"].as_array().is_some_and(|a| a.iter().any(|r| r["rma"] == rma && r["state"] == state))
    })
    .await;
    v["items"].as_array().unwrap().iter().find(|r| r["rma"] == rma).unwrap().clone()
}

/// Once the site has approved RMA `rma`, receives `qty` units of SKU-A against it there, restocked.
async fn restock_at_site(c: &reqwest::Client, node: &ClusterNode, fo: &str, rma: &str, qty: u64) {
    at_site(c, node, rma, "approved").await;
    let (s, v) = post(
        c,
        format!("http://{}/v1/orders/{fo}/returns", node.http),
        json!({"rma": rma, "disposition": "restock", "lines": [{"sku": "SKU-A", "qty": qty}]}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rma_is_approved_received_at_the_site_and_refunded_once_and_refusals_change_nothing() {
    let c = http();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let policy = "window_days = 30\nnon_returnable_skus = [\"SKU-N\"]\nauto_approve = false\nrefund = \"auto\"";
    let (_hub, mut berlin, hub, id, fo) =
        shipped_order(&c, root, policy, &[("SKU-A", 3, 1_190), ("SKU-N", 1, 500)]).await;
    let returns = format!("http://{hub}/v1/orders/{id}/returns");
    let req = |lines: Value| json!({"lines": lines});
    let line = |sku: &str, qty: u64| json!({"sku": sku, "qty": qty, "reason": "does not fit"});

    // Refusals at the hub: typed, nothing stored.
    for (body, status, code) in [
        (req(json!([line("SKU-A", 4)])), 409, "over_return"),
        (req(json!([line("SKU-N", 1)])), 422, "sku_not_returnable"),
        (req(json!([line("SKU-Z", 1)])), 409, "over_return"),
        (req(json!([])), 422, "invalid_lines"),
        (req(json!([{"sku": "SKU-A", "qty": 1, "reason": ""}])), 422, "invalid_text"),
    ] {
        let (s, v) = post(&c, returns.clone(), body.clone()).await;
        assert_eq!((s, v["code"].as_str()), (status, Some(code)), "{body}: {v}");
    }
    let (s, v) = post(&c, format!("http://{hub}/v1/orders/hub-999/returns"), req(json!([line("SKU-A", 1)]))).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("order_not_found")), "{v}");
    let (_, list) = get(&c, format!("http://{hub}/v1/returns")).await;
    assert_eq!(list["rmas"], json!([]), "refusals stored nothing: {list}");

    // A declined RMA: the site knows it and refuses units against it; stock unchanged.
    let (s, first) = post(&c, returns.clone(), req(json!([line("SKU-A", 1)]))).await;
    assert_eq!(
        (s, first["state"].as_str(), first["site"].as_str()),
        (201, Some("requested"), Some("wh-berlin")),
        "{first}"
    );
    let r1 = first["id"].as_str().unwrap().to_owned();
    let (s, v) = post(&c, format!("http://{hub}/v1/returns/{r1}/decline"), json!({})).await;
    assert_eq!((s, v["code"].as_str()), (422, Some("invalid_text")), "a decline needs a reason: {v}");
    let (s, v) = post(&c, format!("http://{hub}/v1/returns/{r1}/decline"), json!({"reason": "worn"})).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("declined")), "{v}");
    let (s, v) = post(&c, format!("http://{hub}/v1/returns/{r1}/approve"), json!({})).await;
    assert_eq!((s, v["code"].as_str(), v["state"].as_str()), (409, Some("invalid_rma_state"), Some("declined")));
    at_site(&c, &berlin, &r1, "declined").await;
    let node_returns = format!("http://{}/v1/orders/{fo}/returns", berlin.http);
    let receive = |rma: &str, lines: Value| json!({"rma": rma, "lines": lines});
    let unit = |sku: &str, qty: u64, d: &str| json!({"sku": sku, "qty": qty, "disposition": d});
    let stock_before = on_hand(&c, &berlin, "SKU-A").await;
    let (s, v) = post(&c, node_returns.clone(), receive(&r1, json!([unit("SKU-A", 1, "restock")]))).await;
    assert_eq!(
        (s, v["code"].as_str(), v["state"].as_str()),
        (409, Some("rma_not_receivable"), Some("declined")),
        "{v}"
    );
    let (s, v) = post(&c, node_returns.clone(), receive("RMA-999", json!([unit("SKU-A", 1, "restock")]))).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("rma_not_found")), "{v}");

    // Two units, approved by service: published to the site that shipped them.
    let (s, rma) = post(&c, returns.clone(), req(json!([line("SKU-A", 2)]))).await;
    assert_eq!((s, rma["state"].as_str()), (201, Some("requested")), "{rma}");
    let r2 = rma["id"].as_str().unwrap().to_owned();
    let (s, v) = post(&c, returns.clone(), req(json!([line("SKU-A", 2)]))).await;
    assert_eq!((s, v["code"].as_str(), v["returnable"].as_u64()), (409, Some("over_return"), Some(1)), "{v}");
    let (s, v) = post(&c, format!("http://{hub}/v1/returns/{r2}/approve"), json!({})).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("approved")), "{v}");
    at_site(&c, &berlin, &r2, "approved").await;
    let (_, pending) = get(&c, format!("http://{hub}/v1/returns?state=approved")).await;
    assert_eq!(pending["rmas"].as_array().map(Vec::len), Some(1), "{pending}");

    // At the site: more than the RMA allows is refused and changes nothing.
    let (s, v) = post(&c, node_returns.clone(), receive(&r2, json!([unit("SKU-A", 3, "restock")]))).await;
    assert_eq!((s, v["code"].as_str(), v["approved"].as_u64()), (409, Some("over_return"), Some(2)), "{v}");
    assert_eq!(on_hand(&c, &berlin, "SKU-A").await, stock_before, "refusals at the site moved no stock");

    // One unit restocked; the node killed mid-way; the second scrapped after its restart.
    let (s, v) = post(&c, node_returns.clone(), receive(&r2, json!([unit("SKU-A", 1, "restock")]))).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(on_hand(&c, &berlin, "SKU-A").await, stock_before + 1, "restocked");
    let rma_url = format!("http://{hub}/v1/returns/{r2}");
    wait_for(&c, rma_url.clone(), "partially received at the hub", |v| v["state"] == "partially_received").await;
    let (s, v) = post(&c, format!("http://{hub}/v1/returns/{r2}/cancel"), json!({})).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("invalid_rma_state")), "no cancel once units arrived: {v}");
    berlin.restart();
    cluster::wait_healthy(&c, berlin.http, HEALTHY).await;
    let (s, v) = post(&c, node_returns.clone(), receive(&r2, json!([unit("SKU-A", 1, "scrap")]))).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(on_hand(&c, &berlin, "SKU-A").await, stock_before + 1, "scrapped, not restocked");
    let (s, v) = post(&c, node_returns.clone(), receive(&r2, json!([unit("SKU-A", 1, "restock")]))).await;
    // Received in full: refused by the site's own count, whether or not the hub's `received` reached it yet.
    let code = v["code"].as_str().unwrap_or("");
    assert!(s == 409 && ["over_return", "rma_not_receivable"].contains(&code), "received in full: {v}");

    // Received → credit note → refund (automatic), once; closed when the refund settled.
    let v = wait_for(&c, rma_url.clone(), "closed", |v| v["state"] == "closed").await;
    assert_eq!(
        (v["refunded_minor"].as_u64(), v["credit_notes"].as_array().map(Vec::len)),
        (Some(2_380), Some(1)),
        "{v}"
    );
    assert_eq!((v["lines"][0]["received"].as_u64(), v["lines"][0]["restocked"].as_u64()), (Some(2), Some(1)), "{v}");
    let site = at_site(&c, &berlin, &r2, "closed").await;
    assert_eq!(site["lines"][0]["received_here"], 2, "{site}");
    let order_url = format!("http://{hub}/v1/orders/{id}");
    let o = wait_for(&c, order_url, "refunded", |v| v["payment"]["refunded_minor"] == 2_380).await;
    assert_eq!(counts(&root.join("provider.json"))["refund"], 1, "refunded once");
    let states: Vec<&str> = o["rmas"].as_array().unwrap().iter().filter_map(|r| r["state"].as_str()).collect();
    assert_eq!(states, ["declined", "closed"], "{o}");
    let timeline: Vec<&str> = o["timeline"].as_array().unwrap().iter().filter_map(|t| t["status"].as_str()).collect();
    for s in ["rma_requested", "rma_approved", "rma_partially_received", "rma_received", "rma_refunded", "rma_closed"] {
        assert!(timeline.contains(&s), "{s} in {timeline:?}");
    }
    let (_, cns) = get(&c, format!("http://{hub}/v1/credit-notes")).await;
    assert_eq!(cns["credit_notes"].as_array().map(Vec::len), Some(1), "{cns}");
    assert_eq!(cns["credit_notes"][0]["reason"], format!("return {r2}"));
    let (_, sum) = get(&c, format!("http://{hub}/v1/returns/summary")).await;
    assert_eq!(
        (sum["units_received"].as_u64(), sum["rma_mismatches"].as_u64(), sum["rmas"]["closed"].as_u64()),
        (Some(2), Some(0), Some(1)),
        "{sum}"
    );
    let (_, pay) = get(&c, format!("http://{hub}/v1/payments/summary")).await;
    assert_eq!(pay["payment_mismatches"], 0, "{pay}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_refund_waits_for_service_and_refunds_once() {
    let c = http();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (_hub, berlin, hub, id, fo) =
        shipped_order(&c, root, "auto_approve = true\nrefund = \"hold\"", &[("SKU-A", 2, 1_000)]).await;
    let (s, rma) = post(
        &c,
        format!("http://{hub}/v1/orders/{id}/returns"),
        json!({"lines": [{"sku": "SKU-A", "qty": 2, "reason": "changed my mind"}]}),
    )
    .await;
    assert_eq!((s, rma["state"].as_str()), (201, Some("approved")), "approved by policy: {rma}");
    let r = rma["id"].as_str().unwrap().to_owned();
    let url = format!("http://{hub}/v1/returns/{r}");
    let (s, v) = post(&c, format!("{url}/refund"), json!({})).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("invalid_rma_state")), "nothing received yet: {v}");
    restock_at_site(&c, &berlin, &fo, &r, 2).await;
    wait_for(&c, url.clone(), "received", |v| v["state"] == "received").await;
    // Held: several watcher passes later, still no credit note and no refund.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (_, v) = get(&c, url.clone()).await;
    assert_eq!((v["state"].as_str(), v["credit_notes"].as_array().map(Vec::len)), (Some("received"), Some(0)), "{v}");
    assert_eq!(counts(&root.join("provider.json"))["refund"], Value::Null, "no refund call");

    let (s, v) = post(&c, format!("{url}/refund"), json!({})).await;
    assert_eq!((s, v["state"].as_str(), v["refunded_minor"].as_u64()), (200, Some("refunded"), Some(2_000)), "{v}");
    let (s, v) = post(&c, format!("{url}/refund"), json!({})).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("invalid_rma_state")), "refunded once: {v}");
    wait_for(&c, url, "closed", |v| v["state"] == "closed").await;
    assert_eq!(counts(&root.join("provider.json"))["refund"], 1);
    let (_, pay) = get(&c, format!("http://{hub}/v1/payments/summary")).await;
    assert_eq!((pay["refunded_minor"].as_u64(), pay["payment_mismatches"].as_u64()), (Some(2_000), Some(0)), "{pay}");
}

/// The value of the page's `form` field (its form token).
fn form_token(html: &str) -> String {
    let at = html.find(r#"name="form" value=""#).expect("a form on the page") + 19;
    html[at..].split('"').next().unwrap().to_owned()
}

/// A form's fields as `Browser::post` takes them.
fn refs<'a>(v: &'a [(&'a str, String)]) -> Vec<(&'a str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The kinds of the `return.*` events of `rma`, in feed order.
async fn return_events(c: &reqwest::Client, hub: SocketAddr, rma: &str) -> Vec<String> {
    let (s, v) = get(c, format!("http://{hub}/v1/events?types=return.*&limit=100")).await;
    assert_eq!(s, 200, "{v}");
    let events = v["events"].as_array().cloned().unwrap_or_default();
    assert!(events.windows(2).all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()), "in order: {v}");
    events.iter().filter(|e| e["data"]["rma"] == rma).filter_map(|e| e["type"].as_str().map(str::to_owned)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_returns_and_cancels_on_the_tracking_page() {
    let c = http();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let policy = "window_days = 30\nnon_returnable_skus = [\"SKU-N\"]\nauto_approve = false\nrefund = \"auto\"";
    let (_hub, berlin, hub, id, fo) = shipped_order(&c, root, policy, &[("SKU-A", 3, 1_190), ("SKU-N", 1, 500)]).await;
    let (_, o) = get(&c, format!("http://{hub}/v1/orders/{id}")).await;
    let token = o["tracking_token"].as_str().unwrap().to_owned();
    let mut ada = Browser::new(hub);
    let p = ada.get(&format!("/t/{token}")).await;
    assert_eq!(p.status, 200);
    assert!(p.html.contains("Paid 40.70 EUR."), "the payment in words: {}", p.html);
    assert!(p.html.contains("How many (up to 3)") && p.html.contains("cannot be returned: SKU-N"), "{}", p.html);
    assert!(!p.html.contains("Cancel the order"), "everything shipped: no cancel");
    assert!(!p.html.contains("wh-berlin") && !p.html.contains(&fo), "nothing internal");
    assert!(ada.cookie.as_deref().is_some_and(|c| c.starts_with("oms_t=")), "the form cookie");
    let form = form_token(&p.html);
    let path = format!("/t/{token}/returns");
    let ask = |sku: &'static str, qty: &'static str, reason: &'static str| {
        vec![("form", form.clone()), ("sku.0", sku.into()), ("qty.0", qty.into()), ("reason.0", reason.into())]
    };

    // Refused with a sentence, storing nothing: a form without its cookie (another site's), more than was
    // shipped, a non-returnable SKU, a reason not on the list, nothing chosen.
    let mut forger = Browser::new(hub);
    let body = ask("SKU-A", "1", "damaged");
    let p = forger.post(&path, &refs(&body)).await;
    assert_eq!(p.status, 403, "{}", p.html);
    assert!(p.html.contains("This form has expired or did not come from this page"), "{}", p.html);
    for (body, status, words) in [
        (ask("SKU-A", "4", "damaged"), 409, "At most 3 of SKU-A can still be returned."),
        (ask("SKU-N", "1", "damaged"), 422, "SKU-N cannot be returned."),
        (ask("SKU-A", "1", "bored"), 422, "Choose a reason from the list"),
        (ask("SKU-A", "0", "damaged"), 422, "Choose how many of an item"),
    ] {
        let p = ada.post(&path, &refs(&body)).await;
        assert_eq!(p.status, status, "{body:?}: {}", p.html);
        assert!(p.html.contains(words), "{words}: {}", p.html);
    }
    let (_, list) = get(&c, format!("http://{hub}/v1/returns")).await;
    assert_eq!(list["rmas"], json!([]), "refusals stored nothing: {list}");

    // A forged link, for the page and its forms: the same 404 as a missing order.
    let forged = "0".repeat(64);
    let missing = ada.get(&format!("/t/{forged}")).await;
    assert_eq!(missing.status, 404);
    let p = ada.post(&format!("/t/{forged}/returns"), &refs(&body)).await;
    assert_eq!((p.status, &p.html), (404, &missing.html));
    let p = ada.post(&format!("/t/{forged}/cancel"), &[("form", &form)]).await;
    assert_eq!((p.status, &p.html), (404, &missing.html));

    // Two units returned from the page: requested, in plain words, audited as the customer.
    let p = ada.post(&path, &refs(&ask("SKU-A", "2", "damaged"))).await;
    assert_eq!((p.status, p.location.as_deref()), (303, Some(format!("/t/{token}#returns").as_str())), "{}", p.html);
    let (_, list) = get(&c, format!("http://{hub}/v1/returns")).await;
    let rma = list["rmas"][0].clone();
    assert_eq!(
        (rma["state"].as_str(), rma["requested_by"].as_str(), rma["lines"][0]["reason"].as_str()),
        (Some("requested"), Some("customer"), Some("Arrived damaged")),
        "{list}"
    );
    let r = rma["id"].as_str().unwrap().to_owned();
    let p = ada.get(&format!("/t/{token}")).await;
    assert!(p.html.contains(&format!("Return {r}")) && p.html.contains("Requested: we will confirm it shortly"));
    assert!(p.html.contains("How many (up to 1)"), "one unit of SKU-A is left to return: {}", p.html);
    let (_, audit) = get(&c, format!("http://{hub}/v1/audit/events?limit=1000")).await;
    let mine = audit["events"].as_array().unwrap().iter().filter(|e| e["route"] == "/t/{token}/returns").count();
    assert_eq!(mine, 3, "each request from the page the policy took or refused is audited: {audit}");

    // Approved by service, received at the site, refunded: the page says so at each step.
    let (s, v) = post(&c, format!("http://{hub}/v1/returns/{r}/approve"), json!({})).await;
    assert_eq!(s, 200, "{v}");
    let p = ada.get(&format!("/t/{token}")).await;
    assert!(p.html.contains("Approved: please send the items back"), "{}", p.html);
    restock_at_site(&c, &berlin, &fo, &r, 2).await;
    wait_for(&c, format!("http://{hub}/v1/returns/{r}"), "closed", |v| v["state"] == "closed").await;
    let p = ada.get(&format!("/t/{token}")).await;
    assert!(p.html.contains("Completed") && p.html.contains("(23.80 EUR)"), "{}", p.html);
    assert!(p.html.contains("Paid 40.70 EUR, of which 23.80 EUR refunded."), "{}", p.html);

    // Its events, in order, once each; the reports count one return of two units.
    let kinds = return_events(&c, hub, &r).await;
    assert_eq!(
        kinds,
        ["return.requested", "return.approved", "return.received", "return.refunded", "return.closed"],
        "{kinds:?}"
    );
    let (_, rep) = get(&c, format!("http://{hub}/v1/reports")).await;
    assert_eq!(
        (rep["total"]["returns"].as_u64(), rep["total"]["units_returned"].as_u64(), rep["total"]["shipped"].as_u64()),
        (Some(1), Some(2), Some(1)),
        "{rep}"
    );

    // A second order, nothing shipped: cancelled from its page. The first order's link cannot act on it and
    // its link cannot return the first order's units.
    let (s, second) = hub_post(&c, hub, "k-2", &order("web-2", &[("SKU-A", 1, 1_190)])).await;
    assert_eq!(s, 201, "{second}");
    let (id2, token2) = (second["id"].as_str().unwrap().to_owned(), second["tracking_token"].as_str().unwrap());
    let p = ada.get(&format!("/t/{token2}")).await;
    assert!(p.html.contains("Cancel the order") && !p.html.contains("Return items"), "{}", p.html);
    let form2 = form_token(&p.html);
    let body =
        [("form", form2.clone()), ("sku.0", "SKU-A".into()), ("qty.0", "1".into()), ("reason.0", "damaged".into())];
    let p = ada.post(&format!("/t/{token2}/returns"), &refs(&body)).await;
    assert_eq!(p.status, 409, "nothing of the second order shipped: {}", p.html);
    assert!(p.html.contains("There is nothing left of SKU-A to return."), "{}", p.html);
    let p = ada.post(&format!("/t/{token2}/cancel"), &[("form", &form2)]).await;
    assert_eq!((p.status, p.location), (303, Some(format!("/t/{token2}"))), "{}", p.html);
    let (_, o2) = get(&c, format!("http://{hub}/v1/orders/{id2}")).await;
    assert!(o2["cancel_requested_at_ms"].is_u64(), "{o2}");
    assert_eq!(o2["cancel_reason"], "cancelled by the customer on the tracking page");
    let p = ada.get(&format!("/t/{token2}")).await;
    assert!(!p.html.contains("Cancel the order"), "{}", p.html);
    let p = ada.post(&format!("/t/{token2}/cancel"), &[("form", &form2)]).await;
    assert_eq!(p.status, 409);
    assert!(p.html.contains("This order is already cancelled."), "{}", p.html);
    let (_, list) = get(&c, format!("http://{hub}/v1/returns")).await;
    assert_eq!(list["rmas"].as_array().map(Vec::len), Some(1), "still the one RMA: {list}");

    // Service, on the order's page in the console: a return needs a reason; with one it is created and
    // approved at once, each step audited as the person.
    let sam = NewUser { name: "sam".into(), role: Role::Service, secret: "a long password".into(), pin: false };
    users::create(&cluster::hub_data(root), sam, 1).unwrap();
    // The hub reads its key file again within a second ([auth] keys_check_interval_ms).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let mut sam = Browser::new(hub);
    let p = sam.sign_in("sam", "a long password").await;
    assert_eq!(p.status, 303, "{}", p.html);
    let p = sam.get(&format!("/ui/orders/{id}")).await;
    assert!(p.html.contains("Create a return") && p.html.contains(&r), "{}", p.html);
    let csrf = p.csrf();
    let console = format!("/ui/orders/{id}/returns");
    let mut form = vec![("csrf", csrf.as_str()), ("sku.0", "SKU-A"), ("qty.0", "1"), ("approve", "1")];
    let p = sam.post(&console, &form).await;
    assert_eq!(p.status, 422);
    assert!(p.html.contains("Give a reason for the return."), "{}", p.html);
    form.push(("reason", "customer called: wrong colour"));
    let p = sam.post(&console, &form).await;
    assert_eq!((p.status, p.location), (303, Some(format!("/ui/orders/{id}"))), "{}", p.html);
    let (_, list) = get(&c, format!("http://{hub}/v1/returns")).await;
    let made = list["rmas"].as_array().unwrap().iter().find(|x| x["id"] != r.as_str()).cloned().unwrap();
    assert_eq!(
        (made["state"].as_str(), made["requested_by"].as_str(), made["lines"][0]["reason"].as_str()),
        (Some("approved"), Some("user:sam"), Some("customer called: wrong colour")),
        "{list}"
    );
    let (_, audit) = get(&c, format!("http://{hub}/v1/audit/events?limit=1000")).await;
    let rows = audit["events"].as_array().unwrap().iter().filter(|e| e["route"] == "/ui/orders/{id}/returns");
    assert_eq!(rows.map(|e| e["key"].as_str().unwrap_or("")).collect::<Vec<_>>(), ["user:sam", "user:sam"], "{audit}");
    let p = sam.post(&console, &form).await;
    assert_eq!(p.status, 409, "nothing of SKU-A left to return: {}", p.html);
    assert!(p.html.contains("may still be returned"), "{}", p.html);
}
