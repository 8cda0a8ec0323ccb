//! Consignments and the label outbox over real processes, with the fault-injecting `test` carrier (its
//! labels and `purchases.log` live in a directory outside the node, so they survive the node being killed):
//! a lost answer is found on retry, not bought again; a node killed mid-call finds the label after restart;
//! packing goes on while the carrier is unreachable and the labels are bought after; bad input is refused
//! with typed errors and changes nothing.
//!
//! Every wait is a bounded loop with a deadline; processes are killed when their guard drops.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oms_tests::{NodeProc, get, http, order_body, place, post, seed};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

struct Site {
    _tmp: tempfile::TempDir,
    carrier: PathBuf,
    node_dir: PathBuf,
    node: NodeProc,
}

fn config(carrier: &Path) -> String {
    format!(
        "[carrier]\nkind = \"test\"\ndir = {:?}\ndefault_service = \"ground\"\nservices = [\"express\"]\n\
         label_timeout_ms = 1500\nlabel_poll_ms = 50\n",
        carrier.display().to_string()
    )
}

impl Site {
    fn start(fault: Option<&str>) -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let carrier = tmp.path().join("carrier");
        std::fs::create_dir_all(&carrier).unwrap();
        set_fault(&carrier, fault);
        let node_dir = tmp.path().join("node");
        std::fs::create_dir_all(&node_dir).unwrap();
        let node = NodeProc::start_with_config("site-a", &node_dir, &config(&carrier));
        Site { _tmp: tmp, carrier, node_dir, node }
    }

    /// Purchases the test carrier recorded for `reference`.
    fn purchases(&self, reference: &str) -> usize {
        std::fs::read_to_string(self.carrier.join("purchases.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split(' ').next() == Some(reference))
            .count()
    }
}

fn set_fault(carrier: &Path, fault: Option<&str>) {
    match fault {
        Some(f) => std::fs::write(carrier.join("fault"), f).unwrap(),
        None => {
            let _ = std::fs::remove_file(carrier.join("fault"));
        }
    }
}

fn parcel() -> Value {
    json!({"weight_g": 1200, "length_mm": 300, "width_mm": 200, "height_mm": 100})
}

/// Places an order for one unit of `sku` (already seeded) and picks it; answers the order id.
async fn picked(c: &reqwest::Client, n: &NodeProc, sku: &str, ext: &str) -> String {
    let (s, o) = place(c, n, ext, &order_body(ext, &[(sku, 1)])).await;
    assert_eq!(s, 201, "order: {o}");
    let id = o["id"].as_str().unwrap().to_owned();
    let (s, w) = post(c, n.url("/v1/waves"), json!({"max_orders": 50})).await;
    assert_eq!(s, 201, "wave: {w}");
    let (s, v) = post(c, n.url(&format!("/v1/orders/{id}/picks")), json!({"lines": [{"sku": sku, "picked": 1}]})).await;
    assert_eq!(s, 200, "picks: {v}");
    id
}

async fn pack(c: &reqwest::Client, n: &NodeProc, id: &str) -> String {
    let (s, v) = post(c, n.url(&format!("/v1/orders/{id}/pack")), json!({"parcels": [parcel()]})).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("packed")), "pack: {v}");
    format!("C-{id}")
}

/// Waits until the consignment `id` is in `state`; answers it.
async fn wait_state(c: &reqwest::Client, n: &NodeProc, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (s, v) = get(c, n.url(&format!("/v1/consignments/{id}"))).await;
        if s == 200 && v["state"] == state {
            return v;
        }
        assert!(Instant::now() < deadline, "consignment {id} not {state} within {WAIT:?}: {s} {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_label_whose_answer_was_lost_is_found_on_retry_not_bought_twice() {
    let site = Site::start(Some("timeout_after_buy"));
    let c = http();
    seed(&c, &site.node, "SKU-1", 5).await;
    let order = picked(&c, &site.node, "SKU-1", "lost-1").await;
    let id = pack(&c, &site.node, &order).await;
    let v = wait_state(&c, &site.node, &id, "labelled").await;
    assert_eq!(site.purchases(&id), 1, "bought once");
    assert_eq!(v["label_found"], true, "{v}");
    assert_eq!(v["label_attempts"], 2, "{v}");
    let tracking = v["tracking"].as_str().unwrap().to_owned();
    assert_eq!(tracking, format!("TST-{id}-1"));
    let r = c.get(site.node.url(&format!("/v1/consignments/{id}/label"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/zpl");
    assert!(r.text().await.unwrap().starts_with(&tracking));
}

#[tokio::test]
async fn a_node_killed_mid_label_call_finds_the_label_after_restart() {
    let mut site = Site::start(Some("hang_after_buy"));
    let c = http();
    seed(&c, &site.node, "SKU-1", 5).await;
    let order = picked(&c, &site.node, "SKU-1", "kill-1").await;
    let id = pack(&c, &site.node, &order).await;
    // The carrier sold the label; the node still waits for its answer.
    let deadline = Instant::now() + WAIT;
    while site.purchases(&id) == 0 {
        assert!(Instant::now() < deadline, "the carrier saw no purchase");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, v) = get(&c, site.node.url(&format!("/v1/consignments/{id}"))).await;
    assert_eq!(v["state"], "awaiting_label", "{v}");
    site.node.kill9();
    set_fault(&site.carrier, None);
    site.node = NodeProc::start_with_config("site-a", &site.node_dir, &config(&site.carrier));
    let v = wait_state(&c, &site.node, &id, "labelled").await;
    assert_eq!(site.purchases(&id), 1, "found after the restart, not bought again");
    assert_eq!(v["label_found"], true, "{v}");
    assert_eq!(v["tracking"], format!("TST-{id}-1"));
}

#[tokio::test]
async fn packing_goes_on_while_the_carrier_is_unreachable_and_labels_follow() {
    let site = Site::start(Some("unreachable"));
    let c = http();
    seed(&c, &site.node, "SKU-1", 10).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let order = picked(&c, &site.node, "SKU-1", &format!("down-{i}")).await;
        ids.push(pack(&c, &site.node, &order).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s, v) = get(&c, site.node.url("/v1/consignments?state=awaiting_label")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["items"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(v["awaiting_label"]["count"], 3, "{v}");
    assert!(v["awaiting_label"]["oldest_since_ms"].as_u64().unwrap() > 0, "{v}");
    assert!(v["items"][0]["last_error"].as_str().unwrap().contains("unreachable"), "{v}");
    let m = c.get(site.node.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("oms_node_consignments_awaiting_label 3"), "{m}");
    let r = c.get(site.node.url(&format!("/v1/consignments/{}/label", ids[0]))).send().await.unwrap();
    assert_eq!(r.status(), 409);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["code"], "label_not_ready", "{p}");
    set_fault(&site.carrier, None);
    for id in &ids {
        wait_state(&c, &site.node, id, "labelled").await;
        assert_eq!(site.purchases(id), 1, "{id} bought once");
    }
    let (_, v) = get(&c, site.node.url("/v1/consignments?state=labelled")).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(v["awaiting_label"]["count"], 0, "{v}");
}

#[tokio::test]
async fn consignment_routes_refuse_bad_input_and_change_nothing() {
    let site = Site::start(Some("unreachable"));
    let c = http();
    seed(&c, &site.node, "SKU-1", 5).await;
    let order = picked(&c, &site.node, "SKU-1", "bad-1").await;
    let url = site.node.url(&format!("/v1/orders/{order}/pack"));
    let heavy = json!({"weight_g": 70_001, "length_mm": 1, "width_mm": 1, "height_mm": 1});
    let flat = json!({"weight_g": 1, "length_mm": 0, "width_mm": 1, "height_mm": 1});
    let many: Vec<Value> = (0..51).map(|_| parcel()).collect();
    let cases = [
        (json!({"parcels": []}), 422, "invalid_parcels"),
        (json!({"parcels": [heavy]}), 422, "invalid_parcels"),
        (json!({"parcels": [flat]}), 422, "invalid_parcels"),
        (json!({"parcels": many}), 422, "invalid_parcels"),
        (json!({"parcels": [parcel()], "service": "teleport"}), 422, "unknown_service"),
        (json!({"parcels": 1, "service": "express"}), 422, "invalid_parcels"),
        (json!({"parcels": [{"weight_g": 1}]}), 422, "invalid_quantity"),
    ];
    for (body, status, code) in cases {
        let (s, v) = post(&c, url.clone(), body.clone()).await;
        assert_eq!(s, status, "{body}: {v}");
        if !code.is_empty() {
            assert_eq!(v["code"], code, "{body}: {v}");
        }
    }
    let (_, o) = get(&c, site.node.url(&format!("/v1/orders/{order}"))).await;
    assert_eq!(o["status"], "picked", "refusals changed nothing: {o}");
    let (_, v) = get(&c, site.node.url("/v1/consignments")).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 0, "{v}");
    let (s, v) = get(&c, site.node.url("/v1/consignments?state=lost")).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("invalid_query")), "{v}");
    let (s, v) = get(&c, site.node.url("/v1/consignments?limit=x")).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("invalid_query")), "{v}");
    let (s, v) = get(&c, site.node.url("/v1/consignments/C-nope")).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("consignment_not_found")), "{v}");
    let (s, v) = get(&c, site.node.url("/v1/consignments/C-nope/label")).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("consignment_not_found")), "{v}");
    // A staff-chosen service the carrier offers is kept.
    let (s, v) = post(&c, url, json!({"parcels": [parcel(), parcel()], "service": "express"})).await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = get(&c, site.node.url(&format!("/v1/consignments/C-{order}"))).await;
    assert_eq!((v["service"].as_str(), v["parcels"].as_array().map(Vec::len)), (Some("express"), Some(2)), "{v}");
    assert_eq!(site.purchases(&format!("C-{order}")), 0, "unreachable: nothing bought");
}
