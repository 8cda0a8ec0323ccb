//! Purchasing over a real `intake.redb`: suppliers, orders, ASNs, receipts and the sending outbox.

use std::sync::{Arc, Mutex};

use oms_protocol::domain::{AsnId, NodeId, Sku, SupplierId};
use oms_service::audit::Actor;
use oms_service::auth::Role;

use super::model::{AsnLine, ChannelSpec, PoState, PoStep, SupplierInput, SupplierSku};
use super::store::{LineInput, NewPo};
use super::{Purchasing, PurchasingConfig, PurchasingError};

fn actor() -> Actor {
    Actor { key: "planner".into(), role: Role::Planner, method: "POST", route: "/test".into() }
}

struct Db(redb::Database);

impl crate::events::webhooks::DbSource for Db {
    fn db(&self) -> &redb::Database {
        &self.0
    }
}

fn open(dir: &std::path::Path, cfg: PurchasingConfig) -> (Purchasing, Arc<Db>) {
    let db = redb::Database::create(dir.join("intake.redb")).unwrap();
    let p = Purchasing::new(cfg, dir, &db).unwrap();
    (p, Arc::new(Db(db)))
}

fn acme(channel: ChannelSpec) -> SupplierInput {
    let terms =
        |s: &str, cost, moq, mult| SupplierSku { supplier_sku: s.into(), cost_minor: cost, moq, order_multiple: mult };
    SupplierInput {
        name: "Acme".into(),
        contact: "orders@acme.test".into(),
        currency: oms_protocol::domain::Currency::parse("EUR").unwrap(),
        lead_time_days: 5,
        skus: [
            (Sku::parse("A").unwrap(), terms("acme-a", 250, 10, 5)),
            (Sku::parse("B").unwrap(), terms("acme-b", 99, 1, 1)),
        ]
        .into(),
        channel,
    }
}

fn new_po(lines: &[(&str, u64)]) -> NewPo {
    NewPo {
        supplier: SupplierId::parse("acme").unwrap(),
        site: NodeId::parse("wh1").unwrap(),
        expected_day: None,
        lines: lines.iter().map(|(s, q)| LineInput { sku: Sku::parse(s).unwrap(), qty: *q }).collect(),
        origin: "lines",
        strict_terms: true,
    }
}

fn asn_of(po: &str, id: &AsnId, lines: Vec<AsnLine>) -> super::store::NewAsn {
    super::store::NewAsn { po: po.to_owned(), id: id.clone(), lines, expected_day: None }
}

fn audit_rows(db: &redb::Database) -> usize {
    oms_service::audit::page(db, 0, 1_000).unwrap().0.len()
}

#[test]
fn bad_suppliers_and_orders_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (p, db) = open(dir.path(), PurchasingConfig::default());
    let db = &db.0;
    let id = SupplierId::parse("acme").unwrap();
    let mut bad = acme(ChannelSpec::Folder);
    bad.name = " ".into();
    assert_eq!(p.put_supplier(db, &id, bad, &actor(), 1).unwrap_err().code(), "missing_field");
    let mut bad = acme(ChannelSpec::Folder);
    bad.skus.values_mut().for_each(|t| t.moq = 0);
    assert_eq!(p.put_supplier(db, &id, bad, &actor(), 1).unwrap_err().code(), "invalid_quantity");
    let bad = acme(ChannelSpec::Webhook { url: "http://127.0.0.1:9/po".into() });
    assert_eq!(p.put_supplier(db, &id, bad, &actor(), 1).unwrap_err().code(), "invalid_url", "private address");
    assert!(p.suppliers(db, "", 10).unwrap().is_empty());
    assert_eq!(audit_rows(db), 0);

    let csv = "supplier,name,contact,currency,lead_time_days,sku,supplier_sku,cost_minor,moq,order_multiple\n\
               acme,Acme,x,EUR,5,A,a1,100,1,1\n\
               zed,Zed,,XXX,5,A,z1,100,1,1\n\
               acme,Acme,x,EUR,5,B,b1,-3,1,1\n\
               acme,Acme,x,EUR,5,A,a1,100,1,1\n";
    let Err(PurchasingError::Csv(rows)) = super::http::parse_csv(csv.as_bytes()) else { panic!("refused") };
    let codes: Vec<(u64, &str)> = rows.iter().map(|r| (r.line, r.code)).collect();
    assert_eq!(codes, [(3, "unknown_currency"), (4, "invalid_number"), (5, "duplicate_row")]);
    assert!(p.suppliers(db, "", 10).unwrap().is_empty());

    p.put_supplier(db, &id, acme(ChannelSpec::Folder), &actor(), 1).unwrap();
    let rows_before = audit_rows(db);
    for (lines, code) in [
        (vec![("A", 3)], "below_moq"),
        (vec![("A", 12)], "not_order_multiple"),
        (vec![("C", 10)], "sku_not_offered"),
        (vec![("B", 1), ("B", 2)], "duplicate_line"),
        (vec![("B", 0)], "invalid_quantity"),
        (vec![], "nothing_to_order"),
    ] {
        let err = p.create_po(db, new_po(&lines), None, &actor(), 2).unwrap_err();
        assert_eq!(err.code(), code, "{lines:?}");
    }
    let mut unknown = new_po(&[("B", 1)]);
    unknown.supplier = SupplierId::parse("nobody").unwrap();
    assert_eq!(p.create_po(db, unknown, None, &actor(), 2).unwrap_err().code(), "supplier_not_found");
    assert!(p.pos(db, None, None, "", 10).unwrap().is_empty());
    assert_eq!(audit_rows(db), rows_before);
    // The first order still gets the first number: refusals took none.
    let (po, _) = p.create_po(db, new_po(&[("A", 15)]), None, &actor(), 3).unwrap();
    assert_eq!(po.id.as_str(), "PO-000001");
}

#[test]
fn lifecycle_asns_and_receipts_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let (p, db) = open(dir.path(), PurchasingConfig::default());
    let db = &db.0;
    p.put_supplier(db, &SupplierId::parse("acme").unwrap(), acme(ChannelSpec::Folder), &actor(), 1).unwrap();
    let body = br#"{"same":"body"}"#;
    let (po, replayed) = p.create_po(db, new_po(&[("A", 20), ("B", 7)]), Some(("k1", body)), &actor(), 2).unwrap();
    assert!(!replayed);
    let (again, replayed) = p.create_po(db, new_po(&[("A", 20), ("B", 7)]), Some(("k1", body)), &actor(), 3).unwrap();
    assert!(replayed);
    assert_eq!(again.id, po.id);
    let err = p.create_po(db, new_po(&[("B", 1)]), Some(("k1", b"other")), &actor(), 3).unwrap_err();
    assert_eq!(err.code(), "idempotency_key_reused");
    assert_eq!(p.pos(db, None, None, "", 10).unwrap().len(), 1);
    let id = po.id.to_string();
    let on = p.on_order(db).unwrap();
    assert_eq!(on[&("A".to_owned(), "wh1".to_owned())].qty, 20, "a draft counts as on order");

    // No ASN before sending.
    let asn = AsnId::parse("ASN-1").unwrap();
    let lines = vec![AsnLine { line: 1, qty: 10 }];
    assert_eq!(p.record_asn(db, asn_of(&id, &asn, lines.clone()), &actor(), 4).unwrap_err().code(), "not_receivable");
    assert_eq!(p.step(db, &id, PoStep::Confirm, &actor(), 4).unwrap_err().code(), "invalid_transition");
    let sent = p.step(db, &id, PoStep::Send, &actor(), 5).unwrap();
    assert_eq!(
        (sent.state, sent.send_status.as_str(), sent.send_key.as_deref()),
        (PoState::Sent, "pending", Some("po-send-PO-000001"))
    );
    p.step(db, &id, PoStep::Confirm, &actor(), 6).unwrap();

    let (_, _, replayed) = p.record_asn(db, asn_of(&id, &asn, lines.clone()), &actor(), 7).unwrap();
    assert!(!replayed);
    let (_, po_now, replayed) = p.record_asn(db, asn_of(&id, &asn, lines), &actor(), 8).unwrap();
    assert!(replayed);
    assert_eq!(po_now.asns.len(), 1, "a replayed ASN is recorded once");
    let other = vec![AsnLine { line: 1, qty: 11 }];
    assert_eq!(p.record_asn(db, asn_of(&id, &asn, other), &actor(), 9).unwrap_err().code(), "asn_conflict");
    for (bad, code) in
        [(vec![AsnLine { line: 9, qty: 1 }], "unknown_line"), (vec![AsnLine { line: 1, qty: 21 }], "invalid_quantity")]
    {
        let e = p.record_asn(db, asn_of(&id, &AsnId::parse("ASN-2").unwrap(), bad), &actor(), 9).unwrap_err();
        assert_eq!(e.code(), code);
    }

    // Two receipts, one replayed: received once.
    assert!(p.apply_receipt(db, "wh1:r1", &id, &[(1, 10)], 10).unwrap());
    assert!(!p.apply_receipt(db, "wh1:r1", &id, &[(1, 10)], 11).unwrap());
    let po = p.po(db, &id).unwrap().unwrap();
    assert_eq!((po.state, po.lines[0].received), (PoState::PartiallyReceived, 10));
    assert_eq!(p.step(db, &id, PoStep::Cancel, &actor(), 12).unwrap_err().code(), "invalid_transition");
    assert_eq!(p.on_order(db).unwrap()[&("A".to_owned(), "wh1".to_owned())].qty, 10);
    assert!(p.apply_receipt(db, "wh1:r2", &id, &[(1, 10), (2, 4)], 13).unwrap());
    let po = p.close_line(db, &id, 2, &actor(), 14).unwrap();
    assert_eq!((po.state, po.lines[1].short_closed), (PoState::Closed, 3));
    assert_eq!(p.close_line(db, &id, 2, &actor(), 15).unwrap_err().code(), "not_receivable");
    assert!(p.on_order(db).unwrap().is_empty());
    assert_eq!(p.units(db).unwrap(), (24, 0));
    let counts = p.counts(db).unwrap();
    assert_eq!((counts["closed"], counts["draft"]), (1, 0));

    // ASNs by CSV: all in one transaction or none.
    let (po2, _) = p.create_po(db, new_po(&[("A", 10), ("B", 4)]), None, &actor(), 20).unwrap();
    p.step(db, po2.id.as_str(), PoStep::Send, &actor(), 21).unwrap();
    let po2 = po2.id.to_string();
    let bad = format!("asn,purchase_order,line,qty,expected_date\nC-1,{po2},1,5,\nC-2,{po2},9,1,\n");
    let asns = super::http::parse_asn_csv(bad.as_bytes()).unwrap();
    let Err(PurchasingError::Csv(rows)) = p.record_asns(db, asns, &actor(), 22) else { panic!("refused") };
    assert_eq!((rows[0].line, rows[0].code), (3, "unknown_line"));
    assert!(p.asn(db, "C-1").unwrap().is_none(), "the good ASN before it is not kept");
    let Err(PurchasingError::Csv(rows)) =
        super::http::parse_asn_csv(b"asn,purchase_order,line,qty,expected_date\nC-1,X,1,x,\nC-1,Y,1,1,\n")
    else {
        panic!("refused")
    };
    assert_eq!(rows.iter().map(|r| r.code).collect::<Vec<_>>(), ["invalid_number"]);
    let good =
        format!("asn,purchase_order,line,qty,expected_date\nC-1,{po2},1,5,2026-12-24\nC-1,{po2},2,4,2026-12-24\n");
    let out = p.record_asns(db, super::http::parse_asn_csv(good.as_bytes()).unwrap(), &actor(), 23).unwrap();
    assert_eq!((out.len(), out[0].0.lines.len(), out[0].1), (1, 2, false));
    let out = p.record_asns(db, super::http::parse_asn_csv(good.as_bytes()).unwrap(), &actor(), 24).unwrap();
    assert!(out[0].1, "a replay");
    assert_eq!(p.po(db, &po2).unwrap().unwrap().asns.len(), 1);
}

/// A minimal supplier endpoint: answers each status of `plan` in turn (200 after it), records each call's
/// idempotency key and whether its signature verifies.
async fn supplier_endpoint(plan: Vec<u16>, secret: Arc<Mutex<String>>) -> (String, Arc<Mutex<Vec<(String, bool)>>>) {
    use axum::http::HeaderMap;
    let calls: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let c = calls.clone();
    let app = axum::Router::new().route(
        "/po",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let (c, plan, secret) = (c.clone(), plan.clone(), secret.clone());
            async move {
                let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let sig = headers.get("x-oms-signature").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let secret = secret.lock().unwrap().clone();
                let now_s = oms_service::now_ms() / 1_000;
                let ok = crate::events::webhooks::verify_signature(
                    &secret,
                    &sig,
                    &body,
                    now_s,
                    crate::events::webhooks::REPLAY_WINDOW_S,
                )
                .is_ok();
                let mut calls = c.lock().unwrap();
                let n = calls.len();
                calls.push((key, ok));
                axum::http::StatusCode::from_u16(plan.get(n).copied().unwrap_or(200)).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/po", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

#[tokio::test]
async fn the_webhook_channel_retries_a_500_with_the_same_key_and_delivers_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = PurchasingConfig { retry_backoff_ms: 1, allow_private_addresses: true, ..PurchasingConfig::default() };
    let (p, db) = open(dir.path(), cfg);
    let secret = Arc::new(Mutex::new(String::new()));
    let (url, calls) = supplier_endpoint(vec![500], secret.clone()).await;
    let out = p
        .put_supplier(&db.0, &SupplierId::parse("acme").unwrap(), acme(ChannelSpec::Webhook { url }), &actor(), 1)
        .unwrap();
    *secret.lock().unwrap() = out.new_secret.clone().unwrap();
    let (po, _) = p.create_po(&db.0, new_po(&[("B", 3)]), None, &actor(), 2).unwrap();
    p.step(&db.0, po.id.as_str(), PoStep::Send, &actor(), 3).unwrap();
    let client = p.client().unwrap();
    let src: Arc<dyn crate::events::webhooks::DbSource> = db.clone();
    // Bounded: a handful of passes, each waiting past the (1 ms, doubled) backoff.
    for _ in 0..20 {
        p.send_pass(src.clone(), &client).await;
        if p.po(&db.0, po.id.as_str()).unwrap().unwrap().send_status == "delivered" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "a 500, then a 200: {calls:?}");
    assert!(calls.iter().all(|(k, ok)| k == "po-send-PO-000001" && *ok), "same key, signed: {calls:?}");
    assert_eq!(p.po(&db.0, po.id.as_str()).unwrap().unwrap().send_status, "delivered");
    // Nothing left to send: a further pass calls nobody.
    assert_eq!(p.send_pass(src, &client).await, 0);
}

#[tokio::test]
async fn the_folder_channel_writes_csv_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let (p, db) = open(dir.path(), PurchasingConfig::default());
    p.put_supplier(&db.0, &SupplierId::parse("acme").unwrap(), acme(ChannelSpec::Folder), &actor(), 1).unwrap();
    let (po, _) = p.create_po(&db.0, new_po(&[("A", 15), ("B", 2)]), None, &actor(), 2).unwrap();
    p.step(&db.0, po.id.as_str(), PoStep::Send, &actor(), 3).unwrap();
    let src: Arc<dyn crate::events::webhooks::DbSource> = db.clone();
    assert_eq!(p.send_pass(src, &p.client().unwrap()).await, 1);
    let folder = dir.path().join("purchase-orders");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("PO-000001.json")).unwrap()).unwrap();
    assert_eq!(json["total_minor"], 15 * 250 + 2 * 99);
    assert_eq!(json["idempotency_key"], "po-send-PO-000001");
    let csv = std::fs::read_to_string(folder.join("PO-000001.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3);
    assert!(csv.lines().nth(1).unwrap().contains(",acme-a,15,250,3750"), "{csv}");
    // Sent, then cancelled before the outbox got to it: withdrawn, never written.
    let (po2, _) = p.create_po(&db.0, new_po(&[("B", 1)]), None, &actor(), 4).unwrap();
    p.step(&db.0, po2.id.as_str(), PoStep::Send, &actor(), 5).unwrap();
    p.step(&db.0, po2.id.as_str(), PoStep::Cancel, &actor(), 6).unwrap();
    let src: Arc<dyn crate::events::webhooks::DbSource> = db.clone();
    assert_eq!(p.send_pass(src.clone(), &p.client().unwrap()).await, 1);
    assert_eq!(p.po(&db.0, po2.id.as_str()).unwrap().unwrap().send_status, "withdrawn");
    assert!(!folder.join("PO-000002.json").exists());
    assert_eq!(p.send_pass(src, &p.client().unwrap()).await, 0);
}

#[test]
fn every_purchasing_route_is_for_planners_and_the_supplier_ones_for_suppliers_too() {
    use axum::http::Method;
    use oms_service::auth::Access;
    let routes = [
        (Method::GET, "/v1/suppliers"),
        (Method::GET, "/v1/suppliers/{id}"),
        (Method::PUT, "/v1/suppliers/{id}"),
        (Method::POST, "/v1/suppliers/import"),
        (Method::GET, "/v1/purchase-orders"),
        (Method::POST, "/v1/purchase-orders"),
        (Method::GET, "/v1/purchase-orders/{id}"),
        (Method::POST, "/v1/purchase-orders/{id}/send"),
        (Method::POST, "/v1/purchase-orders/{id}/confirm"),
        (Method::POST, "/v1/purchase-orders/{id}/cancel"),
        (Method::POST, "/v1/purchase-orders/{id}/lines/{n}/close"),
        (Method::POST, "/v1/purchase-orders/{id}/asns"),
        (Method::POST, "/v1/asns/import"),
        (Method::GET, "/v1/purchasing/summary"),
    ];
    // A supplier key reads, confirms and announces against purchase orders (its own: the handlers check).
    let supplier_routes = [
        "/v1/purchase-orders/{id}/confirm",
        "/v1/purchase-orders/{id}/asns",
        "/v1/asns/import",
        "/v1/purchase-orders/{id}",
    ];
    for (m, r) in routes {
        let both = supplier_routes.contains(&r) || (m == Method::GET && r == "/v1/purchase-orders");
        let want: &[Role] = if both { &[Role::Planner, Role::Supplier] } else { &[Role::Planner] };
        assert_eq!(crate::api::policy(&m, Some(r)), Access::Roles(want), "{m} {r}");
    }
    assert!(
        !oms_service::auth::ANY_ROLE.contains(&Role::Supplier),
        "a supplier key is admitted only where a route names it"
    );
    assert_eq!(
        crate::api::policy(&Method::DELETE, Some("/v1/suppliers/{id}")),
        Access::Roles(oms_service::auth::ANY_ROLE)
    );
}

/// A hub over `docs` in `dir`, with supplier `acme` (the folder channel).
fn hub_with_acme(dir: &std::path::Path, docs: crate::docs::HubDocs) -> crate::server::Hub {
    use crate::demand::test_support::{hub_over, money};
    let hub = hub_over(dir, docs, money(), Default::default());
    let (p, db) = (&hub.purchasing, hub.intake.db());
    p.put_supplier(db, &SupplierId::parse("acme").unwrap(), acme(ChannelSpec::Folder), &actor(), 1).unwrap();
    hub
}

/// `from_replenishment` orders the site's suggestion rounded to the supplier's MOQ and multiple; once that
/// draft exists it counts as on order and nothing more is suggested.
#[test]
fn from_replenishment_orders_the_suggestion_at_the_suppliers_terms_once() {
    use crate::demand::DAY_MS;
    use crate::demand::test_support::{TestOrder, hub_docs};
    use oms_protocol::domain::FulfillmentState;
    let dir = tempfile::tempdir().unwrap();
    let today = oms_service::now_ms() / DAY_MS;
    let orders: Vec<TestOrder> =
        (0..60u64).map(|d| ("wh1", d + 1, today - 60 + d, 10, FulfillmentState::Accepted, &[("A", 10)][..])).collect();
    let docs = hub_docs(dir.path(), &orders, &[("wh1", "A", 5)]);
    let hub = hub_with_acme(dir.path(), docs);
    let (p, db) = (&hub.purchasing, hub.intake.db());
    let config = Arc::new(crate::forecast_config::ForecastConfig::default());
    let lines = super::http::suggested_lines(&hub, &config, "acme", "wh1").unwrap();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let q = lines[0].qty;
    assert!(q >= 10 && q.is_multiple_of(5), "MOQ 10, multiples of 5: {q}");
    assert!(super::http::suggested_lines(&hub, &config, "acme", "wh2").unwrap().is_empty());
    let new = NewPo { lines, origin: "replenishment", strict_terms: false, ..new_po(&[]) };
    let (po, _) = p.create_po(db, new, None, &actor(), 2).unwrap();
    assert_eq!((po.origin.as_str(), po.lines[0].ordered), ("replenishment", q));
    let again = super::http::suggested_lines(&hub, &config, "acme", "wh1").unwrap();
    assert!(again.is_empty(), "what is on order is not ordered twice: {again:?}");
}

/// The hub acknowledges, in the site's inbound document, exactly the receipts of the stock document it has
/// applied (not one it refused); once the site pruned them it drops the acknowledgement; a receipt seen
/// again after pruning (a site's document rebuilt) advances nothing.
#[test]
fn applied_receipts_are_acknowledged_then_forgotten_and_a_replay_changes_nothing() {
    use oms_protocol::schema::{self, SiteReceipt};
    let dir = tempfile::tempdir().unwrap();
    let docs = crate::demand::test_support::hub_docs(dir.path(), &[], &[("wh1", "A", 5)]);
    let hub = hub_with_acme(dir.path(), docs);
    let (p, db) = (&hub.purchasing, hub.intake.db());
    let (po, _) = p.create_po(db, new_po(&[("A", 10)]), None, &actor(), 2).unwrap();
    p.step(db, po.id.as_str(), PoStep::Send, &actor(), 3).unwrap();
    let site = NodeId::parse("wh1").unwrap();
    let (stock, inbound) = (schema::stock_doc(&site).unwrap(), schema::inbound_doc(&site).unwrap());
    let good = SiteReceipt { id: "r-1".into(), po: po.id.to_string(), asn: None, lines: vec![(1, 4)], at_ms: 5 };
    let stray = SiteReceipt { id: "r-x".into(), po: "PO-999999".into(), asn: None, lines: vec![(1, 1)], at_ms: 5 };
    let write = |r: &SiteReceipt| {
        hub.docs.lock().write_local(&stock, |d| schema::write_receipt(d, &site, r, 5)).unwrap();
    };
    write(&good);
    write(&stray);
    let acks = || {
        let docs = hub.docs.lock();
        docs.get(&inbound).map(|d| schema::read_receipt_acks(&d, 100).unwrap()).unwrap_or_default()
    };
    let received = || p.po(db, po.id.as_str()).unwrap().unwrap().lines[0].received;

    super::sites::apply_site_receipts(&hub, &site, &stock);
    assert_eq!(received(), 4);
    let a = acks();
    assert_eq!(a.po.iter().map(String::as_str).collect::<Vec<_>>(), ["r-1"], "the refused one is not acknowledged");
    assert_eq!(
        super::sites::in_flight(&hub),
        super::sites::InFlight { po_receipts: 2, rma_receipts: 0, acknowledged: 1 }
    );

    // The site prunes what was acknowledged; the next pass drops the acknowledgement.
    hub.docs
        .lock()
        .write_local(&stock, |d| schema::prune_receipts(d, &a, 100, 0, 100).map(|p| p.receipts > 0))
        .unwrap();
    super::sites::apply_site_receipts(&hub, &site, &stock);
    assert!(acks().po.is_empty());
    assert_eq!(
        super::sites::in_flight(&hub),
        super::sites::InFlight { po_receipts: 1, rma_receipts: 0, acknowledged: 0 }
    );
    assert_eq!(received(), 4);

    // The pruned receipt comes back: applied once already, nothing moves; acknowledged again.
    write(&good);
    super::sites::apply_site_receipts(&hub, &site, &stock);
    assert_eq!((received(), p.units(db).unwrap().0), (4, 4));
    assert_eq!(acks().po.len(), 1);
}
