//! Purchasing at the hub over real processes: suppliers by JSON and CSV, a purchase order sent through the
//! outbox into the folder channel, confirmed, announced by an ASN (a replay recorded once), counted as on
//! order by the replenishment; and bad input on every purchasing route, each refused with its typed code and
//! changing nothing. A supplier key sees and acts on its own orders only. Receipts the hub applied leave the
//! sites' stock documents. Every wait is a bounded loop; processes are killed when their guard drops.

use oms_tests::cluster::{hub_and_node, hub_data, seed_sku, wait_for};
use oms_tests::{get, http, post};
use serde_json::{Value, json};

const SITE: &str = "\n[site]\nname = \"Berlin\"\nlat = 52.52\nlon = 13.40\n";

async fn put(c: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = c.put(url).json(&body).send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn raw(c: &reqwest::Client, url: String, content_type: &str, body: &str) -> (u16, Value) {
    let r = c.post(url).header("content-type", content_type).body(body.to_owned()).send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn supplier() -> Value {
    json!({"name": "Acme", "contact": "po@acme.test", "currency": "EUR", "lead_time_days": 5,
           "skus": {"SKU-A": {"supplier_sku": "AC-A", "cost_minor": 250, "moq": 10, "order_multiple": 5}}})
}

/// A hub and site `wh1` holding 5 of SKU-A, which the hub has seen; the hub's API base URL.
async fn hub_and_stocked_site(
    c: &reqwest::Client,
    root: &std::path::Path,
) -> (oms_tests::cluster::HubProc, oms_tests::cluster::ClusterNode, String) {
    let (hub, node) = hub_and_node(c, root, "wh1", SITE).await;
    let base = format!("http://{}/v1", hub.http);
    seed_sku(c, &node, "SKU-A", 5).await;
    wait_for(c, format!("{base}/stock/SKU-A"), "the site's stock at the hub", |v| {
        v["sites"].as_array().is_some_and(|a| a.iter().any(|s| s["site"] == "wh1"))
    })
    .await;
    (hub, node, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppliers_orders_and_asns_and_every_bad_input_changes_nothing() {
    let c = http();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (_hub, _node, base) = hub_and_stocked_site(&c, root).await;

    // Suppliers: bad ones refused with their codes, nothing stored.
    let mut bad_currency = supplier();
    bad_currency["currency"] = json!("XXX");
    let mut bad_moq = supplier();
    bad_moq["skus"]["SKU-A"]["moq"] = json!(0);
    let mut bad_url = supplier();
    bad_url["channel"] = json!({"kind": "webhook", "url": "http://127.0.0.1:1/po"});
    for (id, body, status, code) in [
        ("acme", bad_currency, 422, "unknown_currency"),
        ("acme", bad_moq, 422, "invalid_quantity"),
        ("acme", bad_url, 422, "invalid_url"),
        ("not an id", supplier(), 422, "invalid_supplier_id"),
    ] {
        let (s, v) = put(&c, format!("{base}/suppliers/{}", id.replace(' ', "%20")), body).await;
        assert_eq!((s, v["code"].as_str()), (status, Some(code)), "{v}");
    }
    let (s, v) = raw(&c, format!("{base}/suppliers/import"), "text/csv", "supplier,name\nx,y\n").await;
    assert_eq!((s, v["code"].as_str()), (422, Some("invalid_csv")), "{v}");
    let csv = "supplier,name,contact,currency,lead_time_days,sku,supplier_sku,cost_minor,moq,order_multiple\n\
               zed,Zed,,EUR,3,SKU-A,Z-A,200,1,1\nzed,Zed,,EUR,3,SKU-B,Z-B,abc,1,1\n";
    let (s, v) = raw(&c, format!("{base}/suppliers/import"), "text/csv", csv).await;
    assert_eq!((s, v["code"].as_str(), v["rows"][0]["line"].as_u64()), (422, Some("invalid_csv"), Some(3)), "{v}");
    assert_eq!(v["rows"][0]["code"], "invalid_number", "{v}");
    let (s, v) = raw(&c, format!("{base}/suppliers/import"), "application/json", "{}").await;
    assert_eq!((s, v["code"].as_str()), (415, Some("unsupported_media_type")), "{v}");
    let (_, list) = get(&c, format!("{base}/suppliers")).await;
    assert_eq!(list["suppliers"], json!([]), "nothing stored: {list}");

    // Good ones: JSON and CSV.
    let (s, v) = put(&c, format!("{base}/suppliers/acme"), supplier()).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = put(&c, format!("{base}/suppliers/acme"), supplier()).await;
    assert_eq!(s, 200, "replaced: {v}");
    let csv = "supplier,name,contact,currency,lead_time_days,sku,supplier_sku,cost_minor,moq,order_multiple\n\
               zed,Zed,,EUR,3,SKU-A,Z-A,900,1,1\nzed,Zed,,EUR,3,SKU-B,Z-B,100,2,2\n";
    let (s, v) = raw(&c, format!("{base}/suppliers/import"), "text/csv", csv).await;
    assert_eq!((s, v["suppliers"].as_u64(), v["skus"].as_u64()), (200, Some(1), Some(2)), "{v}");

    // Purchase orders: bad ones refused, nothing created.
    let po = |lines: Value| json!({"supplier": "acme", "site": "wh1", "lines": lines});
    for (body, status, code) in [
        (json!({"supplier": "acme", "site": "nowhere", "lines": [{"sku": "SKU-A", "qty": 10}]}), 422, "unknown_site"),
        (
            json!({"supplier": "nobody", "site": "wh1", "lines": [{"sku": "SKU-A", "qty": 10}]}),
            404,
            "supplier_not_found",
        ),
        (po(json!([{"sku": "SKU-A", "qty": 7}])), 422, "below_moq"),
        (po(json!([{"sku": "SKU-A", "qty": 12}])), 422, "not_order_multiple"),
        (po(json!([{"sku": "SKU-B", "qty": 2}])), 422, "sku_not_offered"),
        (json!({"supplier": "acme", "site": "wh1", "lines": [], "from_replenishment": true}), 422, "invalid_body"),
        (json!({"supplier": "acme", "site": "wh1", "from_replenishment": true}), 422, "nothing_to_order"),
        (json!({"supplier": "acme", "site": "wh1", "expected_date": "2026-02-30", "lines": []}), 422, "invalid_date"),
    ] {
        let (s, v) = post(&c, format!("{base}/purchase-orders"), body.clone()).await;
        assert_eq!((s, v["code"].as_str()), (status, Some(code)), "{body}: {v}");
    }
    let (_, list) = get(&c, format!("{base}/purchase-orders")).await;
    assert_eq!(list["purchase_orders"], json!([]), "nothing created: {list}");

    // One order, its key replayed: one order.
    let body = po(json!([{"sku": "SKU-A", "qty": 15}]));
    let create = |key: &'static str, body: Value| {
        let c = c.clone();
        let url = format!("{base}/purchase-orders");
        async move {
            let r = c.post(url).header("idempotency-key", key).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (s, created) = create("po-1", body.clone()).await;
    assert_eq!((s, created["state"].as_str(), created["total_minor"].as_u64()), (201, Some("draft"), Some(3_750)));
    let (s, again) = create("po-1", body).await;
    assert_eq!((s, &again["id"]), (200, &created["id"]));
    let (s, v) = create("po-1", po(json!([{"sku": "SKU-A", "qty": 20}]))).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("idempotency_key_reused")));
    let id = created["id"].as_str().unwrap().to_owned();

    // Steps out of order, unknown orders and lines: typed, nothing changed.
    let step = |what: String| post(&c, format!("{base}/purchase-orders/{what}"), json!({}));
    let (s, v) = step(format!("{id}/confirm")).await;
    assert_eq!((s, v["code"].as_str(), v["state"].as_str()), (409, Some("invalid_transition"), Some("draft")), "{v}");
    let (s, v) = step("PO-999999/send".into()).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("purchase_order_not_found")));
    let (s, v) = step(format!("{id}/lines/1/close")).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("not_receivable")), "no short-close of a draft: {v}");
    let asn = |lines: Value| json!({"asn": "ASN-1", "lines": lines});
    let (s, v) = post(&c, format!("{base}/purchase-orders/{id}/asns"), asn(json!([{"line": 1, "qty": 5}]))).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("not_receivable")), "no ASN before sending: {v}");

    // Sent through the outbox into the folder; confirmed.
    let (s, v) = step(format!("{id}/send")).await;
    assert_eq!(
        (s, v["state"].as_str(), v["send_key"].as_str()),
        (200, Some("sent"), Some(format!("po-send-{id}").as_str()))
    );
    let v =
        wait_for(&c, format!("{base}/purchase-orders/{id}"), "delivered", |v| v["send_status"] == "delivered").await;
    assert_eq!(v["state"], "sent");
    let folder = hub_data(root).join("purchase-orders");
    let doc: Value = serde_json::from_slice(&std::fs::read(folder.join(format!("{id}.json"))).unwrap()).unwrap();
    assert_eq!((doc["total_minor"].as_u64(), doc["lines"][0]["supplier_sku"].as_str()), (Some(3_750), Some("AC-A")));
    assert!(folder.join(format!("{id}.csv")).is_file());
    let (s, v) = step(format!("{id}/confirm")).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("confirmed")));

    // ASNs: bad ones typed; one recorded once however often it is sent.
    for (lines, code) in
        [(json!([{"line": 9, "qty": 1}]), "unknown_line"), (json!([{"line": 1, "qty": 16}]), "invalid_quantity")]
    {
        let (s, v) = post(&c, format!("{base}/purchase-orders/{id}/asns"), asn(lines)).await;
        assert_eq!((s, v["code"].as_str()), (422, Some(code)), "{v}");
    }
    let (s, _) = post(&c, format!("{base}/purchase-orders/{id}/asns"), asn(json!([{"line": 1, "qty": 5}]))).await;
    assert_eq!(s, 201);
    let (s, _) = post(&c, format!("{base}/purchase-orders/{id}/asns"), asn(json!([{"line": 1, "qty": 5}]))).await;
    assert_eq!(s, 200);
    let (s, v) = post(&c, format!("{base}/purchase-orders/{id}/asns"), asn(json!([{"line": 1, "qty": 6}]))).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("asn_conflict")));
    let (_, v) = get(&c, format!("{base}/purchase-orders/{id}")).await;
    assert_eq!(v["asns"], json!(["ASN-1"]), "{v}");

    // On order, as the summary and the replenishment count it.
    let (_, summary) = get(&c, format!("{base}/purchasing/summary")).await;
    assert_eq!(
        (summary["units_on_order"].as_u64(), summary["purchase_orders"]["confirmed"].as_u64()),
        (Some(15), Some(1))
    );
    let (s, run) = get(&c, format!("{base}/replenishment?all=true")).await;
    assert_eq!((s, run["on_order_source"].as_str()), (200, Some("purchase_orders")), "{run}");
    let (_, f) = get(&c, format!("{base}/forecast/SKU-A?site=wh1")).await;
    // Too little history to forecast: the answer says so; the on-order figure shows where there is one.
    assert!(f["code"] == "insufficient_history" || f["on_order"] == 15, "{f}");

    // A cancel after confirming is fine before any receipt; a second one is not.
    let (s, v) = step(format!("{id}/cancel")).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("cancelled")));
    let (s, v) = step(format!("{id}/cancel")).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("invalid_transition")));
    let (_, summary) = get(&c, format!("{base}/purchasing/summary")).await;
    assert_eq!(summary["units_on_order"], 0, "{summary}");
}

/// POSTs a receipt to a node with an idempotency key.
async fn receipt(c: &reqwest::Client, url: String, key: Option<&str>, body: Value) -> (u16, Value) {
    let mut r = c.post(url).json(&body);
    if let Some(k) = key {
        r = r.header("idempotency-key", k);
    }
    let r = r.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn on_hand(c: &reqwest::Client, node: &oms_tests::cluster::ClusterNode, sku: &str) -> u64 {
    let (_, v) = get(c, format!("http://{}/v1/stock/{sku}", node.http)).await;
    v["balance"]["on_hand"].as_u64().or_else(|| v["on_hand"].as_u64()).unwrap_or(u64::MAX)
}

/// Receiving at two sites: each sees its own purchase orders in `GET /v1/inbound`; one receives an ASN while
/// the hub is down (a replay of the receipt changes nothing) and the order advances once after the heal;
/// an over-receipt is refused, then forced with a reason; a short-close closes the order, after which the
/// site receives nothing more against it; the other site receives part of its order. Bad input on the
/// node's receiving routes is typed and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_receive_against_purchase_orders_offline_once_with_tolerance_and_short_close() {
    use oms_tests::cluster::{node_config_with, pki, spawn_hub, spawn_node_with, wait_healthy};
    let c = http();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let certs = pki(root, &["wh1", "wh2"]);
    let (quic, hub_http) = (oms_tests::cluster::free_udp(), oms_tests::cluster::free_tcp());
    let hub = spawn_hub(root, &certs, quic, hub_http, "info");
    let extra = format!("{SITE}\n[receiving]\nover_receipt_tolerance_pct = 10\nreceipt_prune_grace_ms = 0\n");
    let mut nodes = Vec::new();
    for id in ["wh1", "wh2"] {
        let (config, node_http, dir) = node_config_with(root, &certs, id, quic, &extra);
        nodes.push(spawn_node_with(id, &config, node_http, &dir, "info"));
    }
    let max = oms_tests::cluster::WAIT_FOR_MAX;
    wait_healthy(&c, hub_http, max).await;
    for n in &nodes {
        wait_healthy(&c, n.http, max).await;
        for sku in ["SKU-A", "SKU-B", "SKU-X"] {
            seed_sku(&c, n, sku, 5).await;
        }
    }
    let base = format!("http://{hub_http}/v1");
    wait_for(&c, format!("{base}/stock/SKU-A"), "both sites' stock at the hub", |v| {
        v["sites"].as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    let mut sup = supplier();
    sup["skus"]["SKU-B"] = json!({"supplier_sku": "AC-B", "cost_minor": 100, "moq": 1, "order_multiple": 1});
    assert_eq!(put(&c, format!("{base}/suppliers/acme"), sup).await.0, 201);
    let mut pos = Vec::new();
    for site in ["wh1", "wh2"] {
        let body = json!({"supplier": "acme", "site": site,
                          "lines": [{"sku": "SKU-A", "qty": 20}, {"sku": "SKU-B", "qty": 10}]});
        let (s, v) = post(&c, format!("{base}/purchase-orders"), body).await;
        assert_eq!(s, 201, "{v}");
        let id = v["id"].as_str().unwrap().to_owned();
        assert_eq!(post(&c, format!("{base}/purchase-orders/{id}/send"), json!({})).await.0, 200);
        pos.push(id);
    }
    let asn = json!({"asn": "ASN-W1", "lines": [{"line": 1, "qty": 10}]});
    assert_eq!(post(&c, format!("{base}/purchase-orders/{}/asns", pos[0]), asn).await.0, 201);
    let (w1, w2) = (&nodes[0], &nodes[1]);
    let inbound1 = format!("http://{}/v1/inbound", w1.http);
    let v = wait_for(&c, inbound1.clone(), "the ASN at wh1", |v| v["items"][0]["asns"][0]["asn"] == "ASN-W1").await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1), "only its own order: {v}");
    assert_eq!(v["items"][0]["purchase_order"], pos[0].as_str());
    wait_for(&c, format!("http://{}/v1/inbound", w2.http), "wh2's order", |v| {
        v["items"][0]["purchase_order"] == pos[1].as_str()
    })
    .await;

    // Bad input at the node: typed, nothing booked.
    let asn_url = format!("http://{}/v1/inbound/ASN-W1/receipts", w1.http);
    let good = json!({"lines": [{"sku": "SKU-A", "qty": 10}, {"sku": "SKU-X", "qty": 2}]});
    for (url, key, body, status, code) in [
        (asn_url.clone(), None, good.clone(), 400, "idempotency_key_required"),
        (format!("http://{}/v1/inbound/ASN-NONE/receipts", w1.http), Some("b1"), good.clone(), 404, "asn_not_found"),
        (
            format!("http://{}/v1/inbound/po/PO-NONE/receipts", w1.http),
            Some("b2"),
            good.clone(),
            404,
            "purchase_order_not_found",
        ),
        (asn_url.clone(), Some("b3"), json!({"lines": []}), 422, "invalid_lines"),
        (asn_url.clone(), Some("b4"), json!({"lines": [{"sku": "SKU-A", "qty": 0}]}), 422, "invalid_quantity"),
        (asn_url.clone(), Some("b5"), json!({"lines": [{"line": 9, "sku": "SKU-A", "qty": 1}]}), 422, "unknown_line"),
        (asn_url.clone(), Some("b6"), json!({"lines": [{"line": 2, "sku": "SKU-A", "qty": 1}]}), 422, "line_mismatch"),
        (asn_url.clone(), Some("b7"), json!({"lines": [{"sku": "NOPE", "qty": 1}]}), 422, "unknown_sku"),
        (
            asn_url.clone(),
            Some("b8"),
            json!({"lines": [{"sku": "SKU-A", "qty": 1}], "force": true}),
            422,
            "reason_required",
        ),
    ] {
        let (s, v) = receipt(&c, url, key, body.clone()).await;
        assert_eq!((s, v["code"].as_str()), (status, Some(code)), "{body}: {v}");
    }
    assert_eq!(on_hand(&c, w1, "SKU-A").await, 5, "nothing booked");

    // Cut off from the hub: the site receives the ASN (and unplanned units), once however often it is sent.
    drop(hub);
    let (s, v) = receipt(&c, asn_url.clone(), Some("r-1"), good.clone()).await;
    assert_eq!((s, v["receipt"]["lines"][0]["line"].as_u64()), (201, Some(1)), "{v}");
    assert_eq!(v["receipt"]["lines"][1]["line"], Value::Null, "SKU-X is unplanned: {v}");
    let (s, again) = receipt(&c, asn_url.clone(), Some("r-1"), good.clone()).await;
    assert_eq!((s, &again["receipt"]), (200, &v["receipt"]));
    let (s, v) = receipt(&c, asn_url.clone(), Some("r-1"), json!({"lines": [{"sku": "SKU-A", "qty": 9}]})).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("idempotency_key_reused")));
    assert_eq!((on_hand(&c, w1, "SKU-A").await, on_hand(&c, w1, "SKU-X").await), (15, 7));

    // Over-receipt: line 2 expects 10, 10 % more is 11; 12 is refused, then forced with a reason.
    let po_url = format!("http://{}/v1/inbound/po/{}/receipts", w1.http, pos[0]);
    let twelve = json!({"lines": [{"line": 2, "sku": "SKU-B", "qty": 12}]});
    let (s, v) = receipt(&c, po_url.clone(), Some("r-2"), twelve.clone()).await;
    assert_eq!((s, v["code"].as_str(), v["expected"].as_u64()), (409, Some("over_receipt"), Some(10)), "{v}");
    assert_eq!(on_hand(&c, w1, "SKU-B").await, 5, "refused: nothing booked");
    let forced =
        json!({"lines": [{"line": 2, "sku": "SKU-B", "qty": 12}], "force": true, "reason": "supplier sent extra"});
    let (s, v) = receipt(&c, po_url.clone(), Some("r-3"), forced).await;
    assert_eq!((s, v["receipt"]["forced_reason"].as_str()), (201, Some("supplier sent extra")), "{v}");

    // The heal: the hub applies each receipt once, whatever the replays.
    let hub = spawn_hub(root, &certs, quic, hub_http, "info");
    wait_healthy(&c, hub_http, max).await;
    let v = wait_for(&c, format!("{base}/purchase-orders/{}", pos[0]), "wh1's receipts at the hub", |v| {
        v["lines"][0]["received"] == 10 && v["lines"][1]["received"] == 12
    })
    .await;
    assert_eq!(v["state"], "partially_received", "{v}");

    // wh2 receives part of its order, online.
    let (s, v) = receipt(
        &c,
        format!("http://{}/v1/inbound/po/{}/receipts", w2.http, pos[1]),
        Some("r-1"),
        json!({"lines": [{"sku": "SKU-A", "qty": 5}]}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let v = wait_for(&c, format!("{base}/purchase-orders/{}", pos[1]), "wh2's receipt at the hub", |v| {
        v["lines"][0]["received"] == 5
    })
    .await;
    assert_eq!(v["state"], "partially_received", "{v}");

    // Short-close what will not come to wh1: closed, and the site sees it and receives no more.
    let (s, v) = post(&c, format!("{base}/purchase-orders/{}/lines/1/close", pos[0]), json!({})).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("closed")), "{v}");
    wait_for(&c, inbound1.clone(), "the closed order at wh1", |v| v["items"][0]["state"] == "closed").await;
    let (s, v) = receipt(&c, asn_url, Some("r-4"), json!({"lines": [{"sku": "SKU-A", "qty": 1}]})).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("not_receivable")), "{v}");

    // Exactly once, after everything: units received are the sum of the receipts.
    let (_, summary) = get(&c, format!("{base}/purchasing/summary")).await;
    assert_eq!(summary["units_received_against_po"], 27, "{summary}");

    // The receipts wh1 booked while cut off were kept until the hub applied them (they arrived above); once
    // applied and acknowledged, both sites prune them from their stock documents and the hub drops its
    // acknowledgements: nothing left in flight, and the orders' totals are unchanged.
    let pruned = json!({"po_receipts": 0, "rma_receipts": 0, "acknowledged": 0});
    let v = wait_for(&c, format!("{base}/purchasing/summary"), "receipts pruned", |v| {
        v["site_receipts_in_flight"] == pruned
    })
    .await;
    assert_eq!(v["units_received_against_po"], 27, "{v}");
    let (_, po0) = get(&c, format!("{base}/purchase-orders/{}", pos[0])).await;
    assert_eq!((&po0["lines"][0]["received"], &po0["lines"][1]["received"]), (&json!(10), &json!(12)), "{po0}");

    // A replay of a pruned receipt at the site changes nothing anywhere.
    let (s, again) = receipt(&c, po_url, Some("r-3"), forced_again()).await;
    assert_eq!((s, again["replayed"].as_bool()), (200, Some(true)), "{again}");
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let (_, v) = get(&c, format!("{base}/purchasing/summary")).await;
    assert_eq!((&v["units_received_against_po"], &v["site_receipts_in_flight"]), (&json!(27), &pruned), "{v}");
    let (_, after) = get(&c, format!("{base}/purchase-orders/{}", pos[0])).await;
    assert_eq!(after["lines"], po0["lines"]);
    drop(hub);
}

/// The forced receipt `r-3` of the receiving test, as sent.
fn forced_again() -> Value {
    json!({"lines": [{"line": 2, "sku": "SKU-B", "qty": 12}], "force": true, "reason": "supplier sent extra"})
}

/// A supplier key: its own purchase orders listed, read, confirmed and announced (JSON and CSV); another
/// supplier's answer 404 like an unknown id, however asked; every other route 403; a CSV with one foreign
/// row refused whole, nothing written; the audit trail names the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplier_key_sees_and_acts_on_its_own_purchase_orders_only() {
    let c = http();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (hub, node, base) = hub_and_stocked_site(&c, root).await;
    let mut ids = Vec::new();
    for sup in ["acme", "zed"] {
        assert_eq!(put(&c, format!("{base}/suppliers/{sup}"), supplier()).await.0, 201);
        let body = json!({"supplier": sup, "site": "wh1", "lines": [{"sku": "SKU-A", "qty": 15}]});
        let (s, v) = post(&c, format!("{base}/purchase-orders"), body).await;
        assert_eq!(s, 201, "{v}");
        let id = v["id"].as_str().unwrap().to_owned();
        assert_eq!(post(&c, format!("{base}/purchase-orders/{id}/send"), json!({})).await.0, 200);
        ids.push(id);
    }
    let (own, foreign) = (ids[0].clone(), ids[1].clone());
    let token = oms_tests::create_supplier_key(&hub_data(root), "acme-portal", "acme");
    let sup = oms_tests::http_as(&token);
    let list = wait_for(&sup, format!("{base}/purchase-orders"), "the supplier key taken", |v| {
        v["purchase_orders"].is_array()
    })
    .await;
    let listed: Vec<&str> =
        list["purchase_orders"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(listed, [own.as_str()], "only its own orders: {list}");
    let (s, v) = get(&sup, format!("{base}/purchase-orders?supplier=zed")).await;
    assert_eq!((s, &v["purchase_orders"]), (200, &json!([])), "asking for another's finds none: {v}");
    let (s, v) = get(&sup, format!("{base}/purchase-orders/{own}")).await;
    assert_eq!((s, v["supplier"].as_str()), (200, Some("acme")), "{v}");

    // Another supplier's order: the answer an unknown id gets, on every route.
    let (s, unknown) = get(&sup, format!("{base}/purchase-orders/PO-999999")).await;
    assert_eq!((s, unknown["code"].as_str()), (404, Some("purchase_order_not_found")));
    let (s, v) = get(&sup, format!("{base}/purchase-orders/{foreign}")).await;
    assert_eq!((s, &v["code"]), (404, &unknown["code"]), "{v}");
    let (s, v) = post(&sup, format!("{base}/purchase-orders/{foreign}/confirm"), json!({})).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("purchase_order_not_found")), "{v}");
    let asn = |id: &str| json!({"asn": id, "lines": [{"line": 1, "qty": 5}]});
    let (s, v) = post(&sup, format!("{base}/purchase-orders/{foreign}/asns"), asn("ASN-Z")).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("purchase_order_not_found")), "{v}");
    let (_, z) = get(&c, format!("{base}/purchase-orders/{foreign}")).await;
    assert_eq!((z["state"].as_str(), &z["asns"]), (Some("sent"), &json!([])), "untouched: {z}");

    // Its own: confirmed, announced.
    let (s, v) = post(&sup, format!("{base}/purchase-orders/{own}/confirm"), json!({})).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("confirmed")), "{v}");
    let (s, v) = post(&sup, format!("{base}/purchase-orders/{own}/asns"), asn("ASN-A1")).await;
    assert_eq!(s, 201, "{v}");

    // Nothing else.
    let (s, v) = put(&sup, format!("{base}/suppliers/acme"), supplier()).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("forbidden")), "{v}");
    for (method, path) in [
        ("GET", "/suppliers".to_owned()),
        ("GET", "/suppliers/acme".to_owned()),
        ("GET", "/purchasing/summary".to_owned()),
        ("GET", "/stock".to_owned()),
        ("GET", "/nodes".to_owned()),
        ("GET", "/orders".to_owned()),
        ("GET", "/replenishment".to_owned()),
        ("GET", "/events".to_owned()),
        ("POST", "/orders".to_owned()),
        ("POST", "/purchase-orders".to_owned()),
        ("POST", format!("/purchase-orders/{own}/send")),
        ("POST", format!("/purchase-orders/{own}/cancel")),
        ("POST", format!("/purchase-orders/{own}/lines/1/close")),
        ("POST", "/suppliers/import".to_owned()),
    ] {
        let url = format!("{base}{path}");
        let (s, v) = if method == "GET" { get(&sup, url).await } else { post(&sup, url, json!({})).await };
        assert_eq!((s, v["code"].as_str()), (403, Some("forbidden")), "{method} {path}: {v}");
    }

    // The ASN file: one row for another supplier's order refuses the whole file, naming the row.
    let csv = format!("asn,purchase_order,line,qty,expected_date\nASN-A2,{own},1,5,\nASN-Z2,{foreign},1,5,\n");
    let (s, v) = sup_csv(&sup, &base, &csv).await;
    assert_eq!((s, v["code"].as_str(), v["rows"][0]["line"].as_u64()), (422, Some("invalid_csv"), Some(3)), "{v}");
    assert_eq!(
        (v["rows"][0]["code"].as_str(), v["rows"].as_array().map(Vec::len)),
        (Some("purchase_order_not_found"), Some(1))
    );
    let (_, a) = get(&c, format!("{base}/purchase-orders/{own}")).await;
    let (_, z) = get(&c, format!("{base}/purchase-orders/{foreign}")).await;
    assert_eq!((&a["asns"], &z["asns"]), (&json!(["ASN-A1"]), &json!([])), "nothing written");
    let csv = format!("asn,purchase_order,line,qty,expected_date\nASN-A2,{own},1,5,\n");
    let (s, v) = sup_csv(&sup, &base, &csv).await;
    assert_eq!((s, v["asns"].as_u64()), (200, Some(1)), "{v}");

    // The audit trail names the key for what it did.
    let (s, audit) = get(&c, format!("{base}/audit/events?limit=1000")).await;
    assert_eq!(s, 200, "{audit}");
    let by_key: Vec<(String, String)> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["key"] == "acme-portal")
        .map(|e| (e["route"].as_str().unwrap_or("").to_owned(), e["target"].as_str().unwrap_or("").to_owned()))
        .collect();
    assert!(by_key.contains(&("/v1/purchase-orders/{id}/confirm".into(), own.clone())), "{by_key:?}");
    assert!(by_key.iter().any(|(r, t)| r == "/v1/asns/import" && t == "ASN-A2"), "{by_key:?}");
    assert!(by_key.iter().all(|(_, t)| t != &foreign), "nothing on another's order: {by_key:?}");

    // A node admits no supplier key on any route (401 until it read the key, 403 once it has).
    let token = oms_tests::create_supplier_key(&node.dir.join("data"), "acme-at-the-dock", "acme");
    let at_node = oms_tests::http_as(&token);
    let inbound = format!("http://{}/v1/inbound", node.http);
    let mut status = 0;
    for _ in 0..100 {
        status = get(&at_node, inbound.clone()).await.0;
        if status != 401 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, 403, "the node read the supplier key and refuses it");
    for path in ["/v1/stock/SKU-A", "/v1/orders", "/v1/inbound", "/v1/rmas"] {
        let (s, v) = get(&at_node, format!("http://{}{path}", node.http)).await;
        assert_eq!((s, v["code"].as_str()), (403, Some("forbidden")), "{path}: {v}");
    }
    let (s, v) = post(&at_node, format!("http://{}/v1/inbound/ASN-A1/receipts", node.http), json!({})).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("forbidden")), "{v}");
    drop((hub, node));
}

async fn sup_csv(c: &reqwest::Client, base: &str, csv: &str) -> (u16, Value) {
    raw(c, format!("{base}/asns/import"), "text/csv", csv).await
}
