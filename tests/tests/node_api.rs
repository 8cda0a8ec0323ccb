//! The node's HTTP API over real HTTP on loopback: the happy paths, every bad input, idempotency,
//! concurrency for the last units, and crash safety under kill -9.

use std::collections::HashMap;
use std::sync::Arc;

use oms_tests::{NodeProc, get, http, order_body, place, post, seed};
use serde_json::{Value, json};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

async fn stock(c: &reqwest::Client, n: &NodeProc, sku: &str) -> (u64, u64, u64) {
    let (s, v) = get(c, n.url(&format!("/v1/stock/{sku}"))).await;
    assert_eq!(s, 200, "{v}");
    (v["on_hand"].as_u64().unwrap(), v["reserved"].as_u64().unwrap(), v["available"].as_u64().unwrap())
}

fn assert_problem(status: u16, v: &Value, want_status: u16, code: &str) {
    assert_eq!(status, want_status, "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["status"], want_status, "{v}");
    assert!(v["detail"].as_str().is_some_and(|d| d.len() > 10), "a sentence a person can act on: {v}");
}

#[tokio::test]
async fn catalog_stock_movements_and_ledger() {
    let d = tmp();
    let n = NodeProc::start("wh1", d.path());
    let c = http();
    seed(&c, &n, "A", 10).await;
    let (s, v) = post(&c, n.url("/v1/stock/adjustments"), json!({"sku": "A", "delta": -3, "reason": "damaged"})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(stock(&c, &n, "A").await, (7, 0, 7));
    let (s, v) = post(&c, n.url("/v1/stock/counts"), json!({"sku": "A", "counted": 12})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["entry"]["movement"]["cycle_count"]["delta"], 5, "count records the discrepancy: {v}");
    assert_eq!(stock(&c, &n, "A").await, (12, 0, 12));
    let (s, v) = get(&c, n.url("/v1/stock/A/ledger")).await;
    assert_eq!(s, 200);
    let kinds: Vec<String> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["movement"].as_object().unwrap().keys().next().unwrap().clone())
        .collect();
    assert_eq!(kinds, ["receipt", "adjustment", "cycle_count"]);
    let (s, v) = get(&c, n.url("/v1/catalog")).await;
    assert_eq!(s, 200);
    assert_eq!(v["items"][0]["bin"], "B-A");
    // Update the item.
    let r = c.put(n.url("/v1/catalog/A")).json(&json!({"name": "Apple", "bin": "Z-9"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (_, v) = get(&c, n.url("/v1/catalog/A")).await;
    assert_eq!(v["bin"], "Z-9");
    let (s, v) = get(&c, n.url("/metrics")).await;
    let _ = v;
    assert_eq!(s, 200);
    let text = c.get(n.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("oms_node_commit_seconds"), "{text}");
    assert!(text.contains("oms_node_http_requests_total"), "{text}");
}

#[tokio::test]
async fn bad_input_gets_typed_problems_and_changes_nothing() {
    let d = tmp();
    let n = NodeProc::start("wh1", d.path());
    let c = http();
    seed(&c, &n, "A", 5).await;

    // Malformed JSON.
    let r = c
        .post(n.url("/v1/orders"))
        .header("idempotency-key", "k1")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let s = r.status().as_u16();
    assert_problem(s, &r.json().await.unwrap(), 400, "malformed_json");
    // Unknown SKU in an order and in each movement.
    let (s, v) = place(&c, &n, "k2", &order_body("e", &[("NOPE", 1)])).await;
    assert_problem(s, &v, 422, "unknown_sku");
    for (path, body) in [
        ("/v1/stock/receipts", json!({"sku": "NOPE", "qty": 1})),
        ("/v1/stock/adjustments", json!({"sku": "NOPE", "delta": 1, "reason": "x"})),
        ("/v1/stock/counts", json!({"sku": "NOPE", "counted": 1})),
    ] {
        let (s, v) = post(&c, n.url(path), body).await;
        assert_problem(s, &v, 422, "unknown_sku");
    }
    // Zero and negative quantities.
    for q in [0, -2] {
        let (s, v) = place(
            &c,
            &n,
            "k3",
            &order_body("e", &[("A", 1)])
                .as_object()
                .map(|o| {
                    let mut o = o.clone();
                    o["lines"][0]["qty"] = json!(q);
                    Value::Object(o)
                })
                .unwrap(),
        )
        .await;
        assert_problem(s, &v, 422, "invalid_quantity");
        let (s, v) = post(&c, n.url("/v1/stock/receipts"), json!({"sku": "A", "qty": q})).await;
        assert_problem(s, &v, 422, "invalid_quantity");
    }
    // Unknown currency.
    let mut b = order_body("e", &[("A", 1)]);
    b["lines"][0]["currency"] = json!("XYZ");
    let (s, v) = place(&c, &n, "k4", &b).await;
    assert_problem(s, &v, 422, "unknown_currency");
    // Oversized body. The server answers before reading the rest of the body and then drops the
    // connection; `connection: close` keeps the client from reusing it for the next request (which then
    // failed now and then with an incomplete message).
    let big = "x".repeat(300 * 1024);
    let r = c
        .post(n.url("/v1/stock/receipts"))
        .header("content-type", "application/json")
        .header("connection", "close")
        .body(format!("{{\"sku\":\"A\",\"qty\":1,\"note\":\"{big}\"}}"))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    assert_problem(s, &r.json().await.unwrap(), 413, "body_too_large");
    let r = c
        .post(n.url("/v1/orders"))
        .header("idempotency-key", "big")
        .header("content-type", "application/json")
        .header("connection", "close")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    assert_problem(s, &r.json().await.unwrap(), 413, "body_too_large");
    // Unknown order, unknown wave, unknown route, wrong method.
    let (s, v) = get(&c, n.url("/v1/orders/wh1-0000009999")).await;
    assert_problem(s, &v, 404, "order_not_found");
    let (s, v) = post(&c, n.url("/v1/orders/wh1-0000009999/ship"), json!({"carrier": "x", "tracking": "y"})).await;
    assert_problem(s, &v, 404, "order_not_found");
    let (s, v) = get(&c, n.url("/v1/waves/77")).await;
    assert_problem(s, &v, 404, "wave_not_found");
    let (s, v) = get(&c, n.url("/v1/nothing")).await;
    assert_problem(s, &v, 404, "not_found");
    let r = c.delete(n.url("/v1/orders")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    // Missing idempotency key, wrong content type, bad query.
    let r = c.post(n.url("/v1/orders")).json(&order_body("e", &[("A", 1)])).send().await.unwrap();
    let s = r.status().as_u16();
    assert_problem(s, &r.json().await.unwrap(), 400, "idempotency_key_required");
    let r = c.post(n.url("/v1/stock/receipts")).header("content-type", "text/plain").body("{}").send().await.unwrap();
    let s = r.status().as_u16();
    assert_problem(s, &r.json().await.unwrap(), 415, "unsupported_media_type");
    let (s, v) = get(&c, n.url("/v1/orders?status=flying")).await;
    assert_problem(s, &v, 400, "invalid_query");
    // Wrong shape, unknown field, bad address.
    let (s, v) = post(&c, n.url("/v1/stock/receipts"), json!({"sku": "A", "qty": "five"})).await;
    assert_problem(s, &v, 422, "invalid_quantity");
    let (s, v) = post(&c, n.url("/v1/stock/receipts"), json!({"sku": "A", "qty": 1, "extra": true})).await;
    assert_problem(s, &v, 422, "invalid_body");
    let mut b = order_body("e", &[("A", 1)]);
    b["ship_to"]["lat"] = json!(123.0);
    let (s, v) = place(&c, &n, "k5", &b).await;
    assert_problem(s, &v, 422, "invalid_geo");
    // An adjustment below what is reserved.
    let (s, _) = place(&c, &n, "k6", &order_body("e6", &[("A", 4)])).await;
    assert_eq!(s, 201);
    let (s, v) = post(&c, n.url("/v1/stock/adjustments"), json!({"sku": "A", "delta": -2, "reason": "lost"})).await;
    assert_problem(s, &v, 409, "below_reserved");
    let (s, v) = post(&c, n.url("/v1/stock/counts"), json!({"sku": "A", "counted": 3})).await;
    assert_problem(s, &v, 409, "below_reserved");
    // Illegal transition: ship an order that was never picked.
    let (_, v) = get(&c, n.url("/v1/orders?status=accepted")).await;
    let id = v["orders"][0]["id"].as_str().unwrap().to_owned();
    let (s, v) = post(&c, n.url(&format!("/v1/orders/{id}/ship")), json!({"carrier": "DHL", "tracking": "1"})).await;
    assert_problem(s, &v, 409, "illegal_transition");
    assert_eq!(v["state"], "accepted");
    assert_eq!(v["step"], "ship");

    // Nothing of the above changed anything: one order, A = 5 on hand, 4 reserved, ledger of 2 entries.
    assert_eq!(stock(&c, &n, "A").await, (5, 4, 1));
    let (_, v) = get(&c, n.url("/v1/orders")).await;
    assert_eq!(v["orders"].as_array().unwrap().len(), 1);
    let (_, v) = get(&c, n.url("/v1/stock/A/ledger")).await;
    assert_eq!(v["entries"].as_array().unwrap().len(), 2);
    let (_, v) = get(&c, n.url("/v1/catalog")).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "NOPE was never added");
}

#[tokio::test]
async fn idempotency_and_insufficient_stock() {
    let d = tmp();
    let n = NodeProc::start("wh1", d.path());
    let c = http();
    seed(&c, &n, "A", 5).await;
    seed(&c, &n, "B", 1).await;
    let body = order_body("web-1", &[("A", 2)]);
    let (s1, v1) = place(&c, &n, "key-1", &body).await;
    assert_eq!(s1, 201, "{v1}");
    assert_eq!(v1["status"], "accepted");
    // Same key, same body (re-serialized with other key order): the original order, nothing reserved twice.
    let text = serde_json::to_string(&body).unwrap();
    let reordered: Value = serde_json::from_str(&text).unwrap();
    let r = c.post(n.url("/v1/orders")).header("idempotency-key", "key-1").json(&reordered).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    let v2: Value = r.json().await.unwrap();
    assert_eq!(v1["id"], v2["id"]);
    assert_eq!(stock(&c, &n, "A").await, (5, 2, 3));
    // Same key, different body.
    let (s, v) = place(&c, &n, "key-1", &order_body("web-1", &[("A", 3)])).await;
    assert_problem(s, &v, 409, "idempotency_key_reused");
    // Not enough stock on one of two lines: 409 naming the SKU, and nothing reserved on either.
    let (s, v) = place(&c, &n, "key-2", &order_body("web-2", &[("A", 1), ("B", 4)])).await;
    assert_problem(s, &v, 409, "insufficient_stock");
    assert_eq!(v["shortfalls"], json!([{"sku": "B", "available": 1, "requested": 4, "held_for_hub": 0}]));
    assert_eq!(stock(&c, &n, "A").await, (5, 2, 3));
    assert_eq!(stock(&c, &n, "B").await, (1, 0, 1));
    // The key was not consumed by the refusal: after a receipt the same request succeeds.
    let (s, _) = post(&c, n.url("/v1/stock/receipts"), json!({"sku": "B", "qty": 3})).await;
    assert_eq!(s, 201);
    let (s, v) = place(&c, &n, "key-2", &order_body("web-2", &[("A", 1), ("B", 4)])).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(stock(&c, &n, "B").await, (4, 4, 0));
}

#[tokio::test]
async fn order_lifecycle_wave_pick_pack_ship_return_refund() {
    let d = tmp();
    let n = NodeProc::start("wh1", d.path());
    let c = http();
    // Bins: B-A, B-B, B-C; put C first alphabetically by renaming its bin.
    seed(&c, &n, "A", 10).await;
    seed(&c, &n, "B", 10).await;
    seed(&c, &n, "C", 10).await;
    let r = c.put(n.url("/v1/catalog/C")).json(&json!({"name": "C", "bin": "A-00"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (_, o1) = place(&c, &n, "o1", &order_body("o1", &[("B", 2), ("A", 1)])).await;
    let (_, o2) = place(&c, &n, "o2", &order_body("o2", &[("C", 3)])).await;
    let (id1, id2) = (o1["id"].as_str().unwrap().to_owned(), o2["id"].as_str().unwrap().to_owned());
    // A wave of at most 1 order takes the oldest; then the rest.
    let (s, w1) = post(&c, n.url("/v1/waves"), json!({"max_orders": 1})).await;
    assert_eq!(s, 201, "{w1}");
    assert_eq!(w1["orders"], json!([id1]));
    let bins: Vec<&str> = w1["lines"].as_array().unwrap().iter().map(|l| l["bin"].as_str().unwrap()).collect();
    assert_eq!(bins, ["B-A", "B-B"], "one walk through the aisles");
    let (s, w2) = post(&c, n.url("/v1/waves"), json!({})).await;
    assert_eq!(s, 201);
    assert_eq!(w2["orders"], json!([id2]));
    let (s, v) = post(&c, n.url("/v1/waves"), json!({})).await;
    assert_problem(s, &v, 409, "nothing_to_pick");
    let (s, w) = get(&c, n.url(&format!("/v1/waves/{}", w1["id"]))).await;
    assert_eq!((s, &w), (200, &w1));
    // Picks line by line.
    let (s, v) =
        post(&c, n.url(&format!("/v1/orders/{id1}/picks")), json!({"lines": [{"sku": "A", "picked": 1}]})).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("picking")));
    let (s, v) =
        post(&c, n.url(&format!("/v1/orders/{id1}/picks")), json!({"lines": [{"sku": "A", "picked": 1}]})).await;
    assert_problem(s, &v, 422, "line_mismatch");
    let (s, v) =
        post(&c, n.url(&format!("/v1/orders/{id1}/picks")), json!({"lines": [{"sku": "B", "picked": 3}]})).await;
    assert_problem(s, &v, 422, "line_mismatch");
    let (s, v) =
        post(&c, n.url(&format!("/v1/orders/{id1}/picks")), json!({"lines": [{"sku": "B", "picked": 2}]})).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("picked")), "{v}");
    assert_eq!(stock(&c, &n, "B").await, (8, 0, 8), "picked units left the bin");
    let (s, v) = post(&c, n.url(&format!("/v1/orders/{id1}/pack")), json!({"parcels": 2})).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("packed")));
    let (s, v) =
        post(&c, n.url(&format!("/v1/orders/{id1}/ship")), json!({"carrier": "DHL", "tracking": "JD01"})).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("shipped")));
    assert_eq!(v["shipment"], json!({"carrier": "DHL", "tracking": "JD01", "parcels": 2}));
    let (s, v) = post(&c, n.url(&format!("/v1/orders/{id1}/cancel")), json!({})).await;
    assert_problem(s, &v, 409, "illegal_transition");
    let (s, v) = post(&c, n.url(&format!("/v1/orders/{id1}/deliver")), json!({})).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("delivered")));
    // Return: 1 B restocked, then 2 more B is more than shipped. A return receipt is new, never a replay.
    let r = c
        .post(n.url(&format!("/v1/orders/{id1}/returns")))
        .json(&json!({"lines": [{"sku": "B", "qty": 1}], "disposition": "restock"}))
        .send()
        .await
        .unwrap();
    let (s, replayed) = (r.status().as_u16(), r.headers().get("idempotent-replayed").cloned());
    let v: Value = r.json().await.unwrap();
    assert_eq!(s, 201, "{v}");
    assert_eq!(replayed, None, "a return receipt is not an idempotent replay");
    assert_eq!(v["returns"][0]["status"], "received");
    assert_eq!(stock(&c, &n, "B").await, (9, 0, 9));
    let (s, v) = post(
        &c,
        n.url(&format!("/v1/orders/{id1}/returns")),
        json!({"lines": [{"sku": "B", "qty": 2}], "disposition": "scrap"}),
    )
    .await;
    assert_problem(s, &v, 422, "line_mismatch");
    let (s, v) = post(
        &c,
        n.url(&format!("/v1/orders/{id1}/returns")),
        json!({"lines": [{"sku": "A", "qty": 1}], "disposition": "scrap"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(stock(&c, &n, "A").await, (9, 0, 9), "scrapped goods do not come back on hand");
    let (s, v) = post(&c, n.url(&format!("/v1/orders/{id1}/returns/1/refund")), json!({})).await;
    assert_eq!((s, v["returns"][0]["status"].as_str()), (200, Some("refunded")));
    let (s, v) = post(&c, n.url(&format!("/v1/orders/{id1}/returns/1/refund")), json!({})).await;
    assert_problem(s, &v, 422, "line_mismatch");
    let statuses: Vec<&str> = v["detail"].as_str().into_iter().collect();
    assert!(!statuses.is_empty());
    let (_, v) = get(&c, n.url(&format!("/v1/orders/{id1}"))).await;
    let tl: Vec<&str> = v["timeline"].as_array().unwrap().iter().map(|e| e["status"].as_str().unwrap()).collect();
    assert_eq!(tl[..6], ["accepted", "picking", "picked", "packed", "shipped", "delivered"]);

    // Order 2: nothing found → backordered, reservation released; re-accept reserves again.
    let (s, v) =
        post(&c, n.url(&format!("/v1/orders/{id2}/picks")), json!({"lines": [{"sku": "C", "picked": 0}]})).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("backordered")), "{v}");
    assert_eq!(stock(&c, &n, "C").await, (10, 0, 10));
    let (s, v) = post(&c, n.url(&format!("/v1/orders/{id2}/accept")), json!({})).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("accepted")), "{v}");
    assert_eq!(stock(&c, &n, "C").await, (10, 3, 7));
    // Short pick: 1 of 3, ships 1, the rest is released.
    let (s, _) = post(&c, n.url("/v1/waves"), json!({})).await;
    assert_eq!(s, 201);
    let (s, v) =
        post(&c, n.url(&format!("/v1/orders/{id2}/picks")), json!({"lines": [{"sku": "C", "picked": 1}]})).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("picked")), "{v}");
    assert!(v["timeline"].as_array().unwrap().last().unwrap()["note"].as_str().unwrap().starts_with("short pick"));
    assert_eq!(stock(&c, &n, "C").await, (9, 0, 9));
    // Cancel after pick: the staged unit goes back to the bin.
    let (s, v) = post(&c, n.url(&format!("/v1/orders/{id2}/cancel")), json!({"reason": "customer"})).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("cancelled")));
    assert_eq!(stock(&c, &n, "C").await, (10, 0, 10));
    // Listing by status, paged.
    let (_, v) = get(&c, n.url("/v1/orders?status=cancelled")).await;
    assert_eq!(v["orders"].as_array().unwrap().len(), 1);
    let (_, v) = get(&c, n.url("/v1/orders?limit=1")).await;
    assert_eq!(v["orders"][0]["id"], id1);
    let (_, v) = get(&c, n.url(&format!("/v1/orders?limit=1&after={id1}"))).await;
    assert_eq!(v["orders"][0]["id"], id2);
}

#[tokio::test]
async fn cancel_releases_reservation() {
    let d = tmp();
    let n = NodeProc::start("wh1", d.path());
    let c = http();
    seed(&c, &n, "A", 3).await;
    let (_, o) = place(&c, &n, "k", &order_body("x", &[("A", 3)])).await;
    assert_eq!(stock(&c, &n, "A").await, (3, 3, 0));
    let (s, v) = post(&c, n.url(&format!("/v1/orders/{}/cancel", o["id"].as_str().unwrap())), json!({})).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("cancelled")));
    assert_eq!(stock(&c, &n, "A").await, (3, 0, 3));
}

#[tokio::test]
async fn fifty_concurrent_orders_for_the_last_ten_units() {
    let d = tmp();
    let n = NodeProc::start("wh1", d.path());
    let c = http();
    seed(&c, &n, "LAST", 10).await;
    let n = Arc::new(n);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (c, n) = (c.clone(), n.clone());
        tasks.push(tokio::spawn(async move {
            place(&c, &n, &format!("k{i}"), &order_body(&format!("e{i}"), &[("LAST", 1)])).await.0
        }));
    }
    let mut by_status: HashMap<u16, usize> = HashMap::new();
    for t in tasks {
        *by_status.entry(t.await.unwrap()).or_default() += 1;
    }
    assert_eq!(by_status.get(&201), Some(&10), "{by_status:?}");
    assert_eq!(by_status.get(&409), Some(&40), "{by_status:?}");
    assert_eq!(stock(&c, &n, "LAST").await, (10, 10, 0));
}

#[tokio::test]
async fn csv_import_reports_rejected_rows() {
    let d = tmp();
    let n = NodeProc::start("wh1", d.path());
    let c = http();
    let r = c
        .post(n.url("/v1/import/catalog"))
        .header("content-type", "text/csv")
        .body("sku,name,bin\nA,Apple,A-1\nbad sku,X,A-2\nB,Banana,A-3\n")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["accepted"], 2, "{v}");
    assert_eq!(v["rejected"], 1);
    assert_eq!(v["rejects"][0]["line"], 3);
    let r = c
        .post(n.url("/v1/import/stock"))
        .header("content-type", "text/csv")
        .body("sku,on_hand\nA,7\nB,-1\nZ,3\nB,4\n")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["accepted"], 2, "{v}");
    assert_eq!(v["rejected"], 2, "negative count and unknown SKU: {v}");
    assert_eq!(stock(&c, &n, "A").await, (7, 0, 7));
    assert_eq!(stock(&c, &n, "B").await, (4, 0, 4));
}

#[tokio::test]
async fn cli_import_then_serve() {
    let d = tmp();
    let cat = d.path().join("cat.csv");
    let stk = d.path().join("stock.csv");
    let mut rows = String::from("sku,name,bin\n");
    let mut srows = String::from("sku,on_hand\n");
    for i in 0..5000 {
        rows.push_str(&format!("S{i},Item {i},A-{}\n", i % 97));
        srows.push_str(&format!("S{i},{}\n", i % 13));
    }
    srows.push_str("UNKNOWN,5\n");
    std::fs::write(&cat, rows).unwrap();
    std::fs::write(&stk, srows).unwrap();
    let data = d.path().join("data");
    let out = std::process::Command::new(oms_tests::oms_bin())
        .args(["node", "--data"])
        .arg(&data)
        .args(["import", "--catalog"])
        .arg(&cat)
        .arg("--stock")
        .arg(&stk)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a rejected row makes the exit code non-zero");
    assert!(stdout.contains("5000 rows imported, 0 rejected"), "{stdout}");
    assert!(stdout.contains("5000 rows imported, 1 rejected"), "{stdout}");
    assert!(stdout.contains("line 5002"), "{stdout}");
    let n = NodeProc::start("wh1", &data);
    let c = http();
    assert_eq!(stock(&c, &n, "S14").await, (1, 0, 1));
}

/// kill -9 while 8 clients send orders; restart; every acknowledged order is there exactly once and the
/// balances equal a replay of the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_intake_loses_nothing_acknowledged() {
    let d = tmp();
    let mut n = NodeProc::start("wh1", d.path());
    let c = http();
    seed(&c, &n, "A", 100_000).await;
    let addr = n.addr;
    let acked = Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for w in 0..8 {
        let (c, acked, stop) = (c.clone(), acked.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            for i in 0..2000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let ext = format!("w{w}-{i}");
                let r = c
                    .post(format!("http://{addr}/v1/orders"))
                    .header("idempotency-key", &ext)
                    .json(&order_body(&ext, &[("A", 1)]))
                    .send()
                    .await;
                if let Ok(r) = r
                    && r.status() == 201
                {
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    if let Some(id) = v["id"].as_str() {
                        acked.lock().unwrap().push((ext, id.to_owned()));
                    }
                }
            }
        }));
    }
    // Let some orders land, then kill without warning.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while acked.lock().unwrap().len() < 200 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    n.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in clients {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 200, "only {} orders acknowledged before the kill", acked.len());

    // Check the database offline: ledger replay equals balances.
    {
        let store = oms_node::store::Store::open(
            &d.path().join("node.redb"),
            oms_protocol::domain::NodeId::parse("wh1").unwrap(),
            oms_node::store::Limits::default(),
            Arc::new(oms_node::metrics::Metrics::new()),
        )
        .unwrap();
        assert_eq!(store.verify_ledger().unwrap(), Vec::<oms_protocol::domain::Sku>::new());
        store.close();
    }
    n.restart();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut after: Option<String> = None;
    for _ in 0..100 {
        let mut url = n.url("/v1/orders?limit=500");
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let (_, v) = get(&c, url).await;
        let page = v["orders"].as_array().unwrap().clone();
        for o in &page {
            *seen.entry(o["order"]["external_ref"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        after = v["next_after"].as_str().map(String::from);
        if page.len() < 500 {
            break;
        }
    }
    for (ext, id) in &acked {
        assert_eq!(seen.get(ext), Some(&1), "acknowledged order {ext} ({id}) must be stored exactly once");
    }
    assert!(seen.values().all(|&k| k == 1), "no order stored twice");
    let (s, v) = get(&c, n.url("/v1/audit/ledger")).await;
    assert_eq!((s, &v["consistent"]), (200, &json!(true)), "{v}");
    let (on_hand, reserved, _) = stock(&c, &n, "A").await;
    assert_eq!(on_hand, 100_000);
    assert_eq!(reserved as usize, seen.len(), "one unit reserved per stored order");
}
