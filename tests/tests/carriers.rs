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

// ---------------------------------------------------------------------------------------------------------
// Void, manifest, collection and the packing slip (test carrier).

async fn labelled(c: &reqwest::Client, site: &Site, ext: &str) -> (String, String, Value) {
    let order = picked(c, &site.node, "SKU-1", ext).await;
    let id = pack(c, &site.node, &order).await;
    let v = wait_state(c, &site.node, &id, "labelled").await;
    (order, id, v)
}

#[tokio::test]
async fn a_manifest_closes_only_labelled_consignments_and_collection_ships_them() {
    let site = Site::start(None);
    let c = http();
    seed(&c, &site.node, "SKU-1", 10).await;
    let (order, id, v) = labelled(&c, &site, "man-1").await;
    let tracking = v["tracking"].as_str().unwrap().to_owned();
    // A second consignment stays awaiting its label (carrier down); a third is labelled then voided.
    let (_, voided, _) = labelled(&c, &site, "man-3").await;
    let (s, v) =
        post(&c, site.node.url(&format!("/v1/consignments/{voided}/void")), json!({"reason": "wrong box"})).await;
    assert_eq!((s, v["state"].as_str()), (202, Some("void_pending")), "{v}");
    wait_state(&c, &site.node, &voided, "voided").await;
    set_fault(&site.carrier, Some("unreachable"));
    let waiting_order = picked(&c, &site.node, "SKU-1", "man-2").await;
    let waiting = pack(&c, &site.node, &waiting_order).await;

    let (s, m) = post(&c, site.node.url("/v1/manifests"), json!({})).await;
    assert_eq!(s, 201, "{m}");
    assert_eq!(m["manifests"].as_array().unwrap().len(), 1, "{m}");
    assert_eq!(m["manifests"][0]["carrier"], "test", "{m}");
    assert_eq!(m["manifests"][0]["consignments"], json!([id]), "only the labelled one: {m}");
    let mid = m["manifests"][0]["id"].as_str().unwrap().to_owned();
    wait_state(&c, &site.node, &id, "manifested").await;
    wait_state(&c, &site.node, &waiting, "awaiting_label").await;
    wait_state(&c, &site.node, &voided, "voided").await;
    // Nothing labelled is left: a second close is refused and changes nothing.
    let (s, v) = post(&c, site.node.url("/v1/manifests"), json!({})).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("nothing_to_manifest")), "{v}");
    let (_, o) = get(&c, site.node.url(&format!("/v1/orders/{order}"))).await;
    assert_eq!(o["status"], "packed", "manifested is not shipped yet: {o}");

    let (s, v) = post(&c, site.node.url(&format!("/v1/manifests/{mid}/collected")), json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["shipped"], json!([order]), "{v}");
    assert!(v["manifest"]["collected_ms"].as_u64().is_some(), "{v}");
    wait_state(&c, &site.node, &id, "collected").await;
    let (_, o) = get(&c, site.node.url(&format!("/v1/orders/{order}"))).await;
    assert_eq!(o["status"], "shipped", "{o}");
    assert_eq!(o["shipment"]["tracking"], tracking.as_str(), "{o}");
    assert_eq!(o["shipment"]["carrier"], "test", "{o}");
    // Collecting again changes nothing.
    let (s, v) = post(&c, site.node.url(&format!("/v1/manifests/{mid}/collected")), json!({})).await;
    assert_eq!((s, v["shipped"].as_array().map(Vec::len)), (200, Some(0)), "{v}");
    let (s, v) = get(&c, site.node.url(&format!("/v1/manifests/{mid}"))).await;
    assert_eq!((s, v["consignments"].clone()), (200, json!([id])), "{v}");
    let (_, v) = get(&c, site.node.url("/v1/consignments")).await;
    assert_eq!(v["counts"]["collected"], 1, "{v}");
    assert_eq!(v["counts"]["voided"], 1, "{v}");
    assert_eq!(v["counts"]["awaiting_label"], 1, "{v}");

    // The packing slip names the order, the SKU, the parcels and the tracking.
    let r = c.get(site.node.url(&format!("/v1/consignments/{id}/slip"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = r.text().await.unwrap();
    for want in [order.as_str(), "SKU-1", tracking.as_str(), "1200", "300 × 200 × 100", "Packing slip"] {
        assert!(html.contains(want), "slip lacks {want:?}: {html}");
    }
}

#[tokio::test]
async fn a_void_goes_through_the_outbox_once_the_carrier_answers() {
    let site = Site::start(None);
    let c = http();
    seed(&c, &site.node, "SKU-1", 5).await;
    let (_, id, _) = labelled(&c, &site, "void-1").await;
    set_fault(&site.carrier, Some("unreachable"));
    let url = site.node.url(&format!("/v1/consignments/{id}/void"));
    let (s, v) = post(&c, url.clone(), json!({"reason": "customer changed the address"})).await;
    assert_eq!((s, v["state"].as_str()), (202, Some("void_pending")), "{v}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, v) = get(&c, site.node.url(&format!("/v1/consignments/{id}"))).await;
    assert_eq!(v["state"], "void_pending", "the carrier is down: still pending: {v}");
    assert!(v["last_error"].as_str().unwrap().contains("unreachable"), "{v}");
    set_fault(&site.carrier, None);
    wait_state(&c, &site.node, &id, "voided").await;
    let voids = std::fs::read_to_string(site.carrier.join("voids.log")).unwrap();
    assert_eq!(voids.lines().filter(|l| *l == id).count(), 1, "{voids}");
    // Voiding again answers the same and calls nobody; a voided consignment is not manifested.
    let (s, v) = post(&c, url, json!({"reason": "again"})).await;
    assert_eq!((s, v["state"].as_str()), (202, Some("voided")), "{v}");
    let (s, v) = post(&c, site.node.url("/v1/manifests"), json!({})).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("nothing_to_manifest")), "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let voids = std::fs::read_to_string(site.carrier.join("voids.log")).unwrap();
    assert_eq!(voids.lines().count(), 1, "{voids}");
}

#[tokio::test]
async fn dispatch_routes_refuse_bad_input_and_change_nothing() {
    let site = Site::start(Some("unreachable"));
    let c = http();
    seed(&c, &site.node, "SKU-1", 5).await;
    let order = picked(&c, &site.node, "SKU-1", "dbad-1").await;
    let id = pack(&c, &site.node, &order).await;
    let void = site.node.url(&format!("/v1/consignments/{id}/void"));
    let cases = [
        (void.clone(), json!({"reason": "not labelled yet"}), 409, "illegal_consignment_state"),
        (void.clone(), json!({"reason": ""}), 422, "missing_field"),
        (void.clone(), json!({"reason": "x".repeat(501)}), 422, "invalid_text"),
        (void.clone(), json!({"why": "x"}), 422, ""),
        (site.node.url("/v1/consignments/C-nope/void"), json!({"reason": "x"}), 404, "consignment_not_found"),
        (site.node.url("/v1/manifests"), json!({"carrier": "test", "day": 1}), 422, ""),
        (site.node.url("/v1/manifests"), json!({}), 409, "nothing_to_manifest"),
        (site.node.url("/v1/manifests"), json!({"carrier": "other"}), 409, "nothing_to_manifest"),
        (site.node.url("/v1/manifests/M-9/collected"), json!({}), 404, "manifest_not_found"),
    ];
    for (url, body, status, code) in cases {
        let (s, v) = post(&c, url.clone(), body.clone()).await;
        assert!(s == status || (code.is_empty() && s == 400), "{url} {body}: {s} {v}");
        if !code.is_empty() {
            assert_eq!(v["code"], code, "{url} {body}: {v}");
        }
        assert!(v["type"].is_string() || v["code"].is_string(), "problem+json: {v}");
    }
    let (s, v) = get(&c, site.node.url("/v1/manifests/M-1")).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("manifest_not_found")), "{v}");
    let (s, v) = get(&c, site.node.url("/v1/consignments/C-nope/slip")).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("consignment_not_found")), "{v}");
    let (_, v) = get(&c, site.node.url(&format!("/v1/consignments/{id}"))).await;
    assert_eq!(v["state"], "awaiting_label", "refusals changed nothing: {v}");
    let (_, o) = get(&c, site.node.url(&format!("/v1/orders/{order}"))).await;
    assert_eq!(o["status"], "packed", "{o}");
}

// ---------------------------------------------------------------------------------------------------------
// The `easypost` adapter against a fake EasyPost-shaped API on loopback that can time out, fail and be late.

mod fake_easypost {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::Json;
    use axum::extract::{Path, Query, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use serde_json::{Value, json};

    /// `ep-test-key:` in base64: the node's key as the basic-auth user.
    const AUTH: &str = "Basic ZXAtdGVzdC1rZXk6";

    #[derive(Default)]
    pub struct State_ {
        pub shipments: Vec<Shipment>,
        /// Labels sold per reference.
        pub purchases: BTreeMap<String, u32>,
        /// The next this many shipment creations answer 500 (creating nothing).
        pub create_500s: u32,
        /// The next this many purchases are made, then the answer hangs past any client budget.
        pub hang_after_buy: u32,
        /// Every answer waits this long first.
        pub late_ms: u64,
        pub base: String,
    }

    #[derive(Clone)]
    pub struct Shipment {
        pub id: String,
        pub reference: String,
        pub service: String,
        pub tracking: Option<String>,
        pub refunded: bool,
    }

    pub type Fake = Arc<Mutex<State_>>;

    fn view(s: &Shipment, base: &str) -> Value {
        json!({
            "id": s.id, "reference": s.reference,
            "rates": [{"id": format!("rate_{}_ground", s.id), "service": "ground", "carrier": "FakeCarrier", "rate": "7.10"},
                      {"id": format!("rate_{}_express", s.id), "service": "express", "carrier": "FakeCarrier", "rate": "21.00"}],
            "tracking_code": s.tracking,
            "postage_label": s.tracking.as_ref().map(|_| json!({"label_url": format!("{base}/labels/{}", s.id), "label_file_type": "ZPL"})),
            "refund_status": if s.refunded { Value::from("submitted") } else { Value::Null },
        })
    }

    async fn late(f: &Fake, h: &HeaderMap) -> Result<(), Response> {
        let ms = f.lock().unwrap().late_ms;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        if h.get("authorization").and_then(|v| v.to_str().ok()) != Some(AUTH) {
            return Err((StatusCode::UNAUTHORIZED, Json(json!({"error": {"code": "APIKEY.INVALID"}}))).into_response());
        }
        Ok(())
    }

    async fn list(State(f): State<Fake>, h: HeaderMap, Query(q): Query<BTreeMap<String, String>>) -> Response {
        if let Err(r) = late(&f, &h).await {
            return r;
        }
        let st = f.lock().unwrap();
        let want = q.get("reference").cloned().unwrap_or_default();
        let items: Vec<Value> =
            st.shipments.iter().filter(|s| s.reference == want).map(|s| view(s, &st.base)).collect();
        Json(json!({"shipments": items})).into_response()
    }

    async fn create(State(f): State<Fake>, h: HeaderMap, Json(b): Json<Value>) -> Response {
        if let Err(r) = late(&f, &h).await {
            return r;
        }
        let mut st = f.lock().unwrap();
        if st.create_500s > 0 {
            st.create_500s -= 1;
            return (StatusCode::INTERNAL_SERVER_ERROR, "upstream carrier error").into_response();
        }
        let s = Shipment {
            id: format!("shp_{}", st.shipments.len() + 1),
            reference: b["shipment"]["reference"].as_str().unwrap_or_default().to_owned(),
            service: b["shipment"]["service"].as_str().unwrap_or_default().to_owned(),
            tracking: None,
            refunded: false,
        };
        assert!(b["shipment"]["parcels"].as_array().is_some_and(|p| !p.is_empty()), "{b}");
        st.shipments.push(s.clone());
        Json(view(&s, &st.base)).into_response()
    }

    async fn buy(State(f): State<Fake>, h: HeaderMap, Path(id): Path<String>, Json(b): Json<Value>) -> Response {
        if let Err(r) = late(&f, &h).await {
            return r;
        }
        let (answer, hang) = {
            let mut st = f.lock().unwrap();
            let base = st.base.clone();
            let Some(i) = st.shipments.iter().position(|s| s.id == id) else {
                return (StatusCode::NOT_FOUND, "no shipment").into_response();
            };
            if st.shipments[i].tracking.is_some() {
                return (StatusCode::UNPROCESSABLE_ENTITY, "SHIPMENT.POSTAGE.EXISTS").into_response();
            }
            let service = st.shipments[i].service.clone();
            assert_eq!(b["rate"]["id"], format!("rate_{id}_{service}"), "{b}");
            let reference = st.shipments[i].reference.clone();
            let n = st.purchases.entry(reference.clone()).or_default();
            *n += 1;
            st.shipments[i].tracking = Some(format!("EZ{}{}", id.trim_start_matches("shp_"), reference));
            let hang = st.hang_after_buy > 0;
            st.hang_after_buy = st.hang_after_buy.saturating_sub(1);
            (view(&st.shipments[i], &base), hang)
        };
        if hang {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Json(answer).into_response()
    }

    async fn refund(State(f): State<Fake>, h: HeaderMap, Path(id): Path<String>) -> Response {
        if let Err(r) = late(&f, &h).await {
            return r;
        }
        let mut st = f.lock().unwrap();
        let base = st.base.clone();
        match st.shipments.iter_mut().find(|s| s.id == id) {
            Some(s) => {
                s.refunded = true;
                Json(view(s, &base)).into_response()
            }
            None => (StatusCode::NOT_FOUND, "no shipment").into_response(),
        }
    }

    async fn label(State(f): State<Fake>, h: HeaderMap, Path(id): Path<String>) -> Response {
        if let Err(r) = late(&f, &h).await {
            return r;
        }
        let st = f.lock().unwrap();
        match st.shipments.iter().find(|s| s.id == id).and_then(|s| s.tracking.clone()) {
            Some(t) => format!("^XA^FD{t}^FS^XZ\n").into_response(),
            None => (StatusCode::NOT_FOUND, "no label").into_response(),
        }
    }

    /// Starts the fake on loopback; answers its state and base URL (`.../v2`).
    pub async fn start() -> (Fake, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/v2", listener.local_addr().unwrap());
        let fake: Fake = Arc::new(Mutex::new(State_ { base: base.clone(), ..Default::default() }));
        let app = axum::Router::new()
            .route("/v2/shipments", get(list).post(create))
            .route("/v2/shipments/{id}/buy", post(buy))
            .route("/v2/shipments/{id}/refund", post(refund))
            .route("/v2/labels/{id}", get(label))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (fake, base)
    }
}

struct EpSite {
    _tmp: tempfile::TempDir,
    fake: fake_easypost::Fake,
    node: NodeProc,
}

impl EpSite {
    async fn start(timeout_ms: u64, setup: impl FnOnce(&mut fake_easypost::State_)) -> EpSite {
        let (fake, base) = fake_easypost::start().await;
        setup(&mut fake.lock().unwrap());
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("easypost.key");
        std::fs::write(&key, "ep-test-key\n").unwrap();
        let node_dir = tmp.path().join("node");
        std::fs::create_dir_all(&node_dir).unwrap();
        let cfg = format!(
            "[carrier]\nkind = \"easypost\"\nbase_url = {base:?}\napi_key_file = {:?}\ndefault_service = \"ground\"\n\
             services = [\"express\"]\nlabel_timeout_ms = {timeout_ms}\nlabel_poll_ms = 50\n",
            key.display().to_string()
        );
        let node = NodeProc::start_with_config("site-ep", &node_dir, &cfg);
        EpSite { _tmp: tmp, fake, node }
    }

    fn purchases(&self, reference: &str) -> u32 {
        self.fake.lock().unwrap().purchases.get(reference).copied().unwrap_or(0)
    }

    fn shipments(&self, reference: &str) -> usize {
        self.fake.lock().unwrap().shipments.iter().filter(|s| s.reference == reference).count()
    }
}

#[tokio::test]
async fn easypost_label_timeout_then_retry_buys_once() {
    let site = EpSite::start(700, |f| f.hang_after_buy = 1).await;
    let c = http();
    seed(&c, &site.node, "SKU-1", 5).await;
    let order = picked(&c, &site.node, "SKU-1", "ep-1").await;
    let id = pack(&c, &site.node, &order).await;
    let v = wait_state(&c, &site.node, &id, "labelled").await;
    assert_eq!(site.purchases(&id), 1, "the timed-out purchase is found, not bought again");
    assert_eq!(site.shipments(&id), 1, "one shipment for the reference");
    assert_eq!(v["label_found"], true, "{v}");
    assert!(v["label_attempts"].as_u64().unwrap() >= 2, "{v}");
    let tracking = v["tracking"].as_str().unwrap().to_owned();
    assert_eq!(tracking, format!("EZ1{id}"));
    let r = c.get(site.node.url(&format!("/v1/consignments/{id}/label"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/zpl");
    assert_eq!(r.text().await.unwrap(), format!("^XA^FD{tracking}^FS^XZ\n"));
}

#[tokio::test]
async fn easypost_500s_and_late_answers_still_buy_once_and_void_refunds() {
    // Two 500s on create, every answer 300 ms late (within the 3 s budget).
    let site = EpSite::start(3_000, |f| {
        f.create_500s = 2;
        f.late_ms = 300;
    })
    .await;
    let c = http();
    seed(&c, &site.node, "SKU-1", 5).await;
    let order = picked(&c, &site.node, "SKU-1", "ep-2").await;
    let (s, v) = post(
        &c,
        site.node.url(&format!("/v1/orders/{order}/pack")),
        json!({"parcels": [parcel()], "service": "express"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let id = format!("C-{order}");
    let v = wait_state(&c, &site.node, &id, "labelled").await;
    assert_eq!((site.purchases(&id), site.shipments(&id)), (1, 1), "{v}");
    assert_eq!(v["label_found"], false, "bought by the attempt that got the answer: {v}");
    assert!(v["label_attempts"].as_u64().unwrap() >= 3, "two 500s first: {v}");
    // The void reaches the API as a refund of the bought shipment.
    let (s, v) = post(&c, site.node.url(&format!("/v1/consignments/{id}/void")), json!({"reason": "test"})).await;
    assert_eq!(s, 202, "{v}");
    wait_state(&c, &site.node, &id, "voided").await;
    assert!(site.fake.lock().unwrap().shipments.iter().all(|s| s.refunded), "refunded at the carrier");
    assert_eq!(site.purchases(&id), 1);
}
