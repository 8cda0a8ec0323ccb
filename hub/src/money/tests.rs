use std::sync::Arc;

use proptest::prelude::*;

use oms_protocol::domain::OrderDraft;
use oms_service::auth::Role;

use super::outbox::{Kind, RowStatus};
use super::provider::{TestProvider, TestProviderConfig};
use super::*;
use crate::intake::{INTAKE_DB_FILE, Intake};

fn draft(lines: &[(&str, u32, i64)]) -> OrderDraft {
    serde_json::from_value(serde_json::json!({
        "external_ref": "x", "channel": "web",
        "lines": lines.iter().map(|(s, q, p)| serde_json::json!({"sku": s, "qty": q, "unit_price_minor": p, "currency": "EUR"})).collect::<Vec<_>>(),
        "ship_to": {"name": "C", "line1": "1", "city": "B", "postcode": "1", "country": "DE", "lat": 52.0, "lon": 13.0}
    }))
    .unwrap()
}

fn actor() -> Actor {
    Actor { key: "svc".into(), role: Role::Service, method: "POST", route: "/v1/orders/{id}/refunds".into() }
}

struct World {
    _dir: tempfile::TempDir,
    intake: Intake,
    money: Money,
    provider: Arc<TestProvider>,
}

fn world(cfg: PaymentsConfig, tax: TaxConfig, pcfg: TestProviderConfig) -> World {
    let dir = tempfile::tempdir().unwrap();
    let intake = Intake::open(&dir.path().join(INTAKE_DB_FILE), Default::default()).unwrap();
    let provider = Arc::new(TestProvider::new(pcfg, cfg.call_timeout_ms).unwrap());
    let money = Money::new(cfg, tax).unwrap().with_provider("test", provider.clone());
    World { _dir: dir, intake, money, provider }
}

fn de19() -> TaxConfig {
    TaxConfig { rates: [("DE".to_owned(), 1900)].into(), ..TaxConfig::default() }
}

/// Authorizes and records a paid order `order` as the intake would (the payment in the order's
/// transaction).
fn paid(w: &World, order: &str, token: &str, d: &OrderDraft, now: u64) -> Result<Payment, MoneyError> {
    let req = PaymentRequest { method: Method::Card, provider: Some("test".into()), token: Some(token.into()) };
    let mut p = w.money.prepare(order, d, &[7; 32], &req);
    w.money.authorize(w.intake.db(), &mut p, now)?;
    w.money.record_payment(w.intake.db(), order, p).unwrap();
    Ok(w.money.payment(w.intake.db(), order).unwrap().unwrap())
}

fn pass(w: &World, now: u64) {
    for _ in 0..10 {
        if w.money.outbox_pass(w.intake.db(), now).unwrap() == 0 {
            return;
        }
    }
}

fn lines(v: &[(&str, u64)]) -> Vec<(String, u64)> {
    v.iter().map(|(s, q)| ((*s).to_owned(), *q)).collect()
}

#[test]
fn two_shipments_two_invoices_captured_exactly_then_a_credit_note_refunds() {
    let w = world(PaymentsConfig::default(), de19(), TestProviderConfig::default());
    let d = draft(&[("A", 1, 1_190), ("B", 3, 333)]);
    let p = paid(&w, "hub-1", "tok_ok", &d, 1).unwrap();
    assert_eq!((p.total_minor, p.status()), (1_190 + 999, "authorized"));
    let db = w.intake.db();
    let i1 = w.money.bill_shipment(db, "hub-1.1", "hub-1", "wh-a", &lines(&[("A", 1), ("B", 1)]), 10).unwrap();
    assert_eq!(i1.as_deref(), Some("INV-000001"));
    assert_eq!(w.money.bill_shipment(db, "hub-1.1", "hub-1", "wh-a", &lines(&[("A", 1)]), 11).unwrap(), None, "once");
    pass(&w, 20);
    let p = w.money.payment(db, "hub-1").unwrap().unwrap();
    assert_eq!((p.captured_minor, p.status()), (1_190 + 333, "partially_captured"));
    // Site B ships the rest; more than ordered is never invoiced.
    let i2 = w.money.bill_shipment(db, "hub-1.2", "hub-1", "wh-b", &lines(&[("B", 5)]), 30).unwrap().unwrap();
    pass(&w, 40);
    let p = w.money.payment(db, "hub-1").unwrap().unwrap();
    assert_eq!((p.captured_minor, p.invoiced_minor, p.status()), (p.total_minor, p.total_minor, "captured"));
    assert_eq!(w.provider.count("capture"), 2);
    let inv2 = w.money.invoice(db, &i2).unwrap().unwrap();
    assert_eq!((inv2.lines[0].qty, inv2.lines[0].before), (2, 1));
    // Per document: net + tax = gross on every line and the totals are the lines' sums.
    for n in [&i1.unwrap(), &i2] {
        let inv = w.money.invoice(db, n).unwrap().unwrap();
        assert!(inv.lines.iter().all(|l| l.net_minor + l.tax_minor == l.gross_minor));
        assert_eq!(inv.total_minor, inv.lines.iter().map(|l| l.gross_minor).sum::<i64>());
    }
    // A refund of one unit of B against invoice 2, then a goodwill amount; over-refunds change nothing.
    let one = RefundRequest {
        lines: Some(vec![RefundLine { sku: "B".into(), qty: 1 }]),
        reason: "damaged".into(),
        invoice: Some(i2.clone()),
        ..RefundRequest::default()
    };
    let cn = w.money.refund(db, "hub-1", None, &one, &actor(), 50).unwrap();
    assert_eq!((cn.number.as_str(), cn.invoice.as_str(), cn.total_minor), ("CN-000001", i2.as_str(), 333));
    let too_much = RefundRequest {
        lines: Some(vec![RefundLine { sku: "B".into(), qty: 2 }]),
        reason: "x".into(),
        invoice: Some(i2.clone()),
        ..RefundRequest::default()
    };
    let before = w.money.payment(db, "hub-1").unwrap().unwrap();
    assert_eq!(
        w.money.refund(db, "hub-1", None, &too_much, &actor(), 51).unwrap_err().code(),
        "refund_exceeds_invoice"
    );
    let no_reason = RefundRequest { amount_minor: Some(5), ..RefundRequest::default() };
    assert_eq!(w.money.refund(db, "hub-1", None, &no_reason, &actor(), 52).unwrap_err().code(), "invalid_refund");
    let other = Channel::parse("marketplace").unwrap();
    let goodwill = RefundRequest { amount_minor: Some(100), reason: "late".into(), ..RefundRequest::default() };
    assert_eq!(
        w.money.refund(db, "hub-1", Some(&other), &goodwill, &actor(), 53).unwrap_err().code(),
        "payment_not_found"
    );
    assert_eq!(w.money.payment(db, "hub-1").unwrap().unwrap(), before, "refusals change nothing");
    w.money.refund(db, "hub-1", None, &goodwill, &actor(), 54).unwrap();
    pass(&w, 60);
    let p = w.money.payment(db, "hub-1").unwrap().unwrap();
    assert_eq!((p.refunded_minor, p.credit_noted_minor, p.status()), (433, 433, "partially_refunded"));
    let t = w.money.totals(db).unwrap();
    assert_eq!((t.payment_mismatches, t.outbox_open, t.invoices, t.credit_notes), (0, 0, 2, 2));
}

#[test]
fn a_decline_leaves_no_attempt_and_a_refused_order_is_voided() {
    let w = world(PaymentsConfig::default(), TaxConfig::default(), TestProviderConfig::default());
    let d = draft(&[("A", 1, 100)]);
    let e = paid(&w, "hub-1", "tok_decline_insufficient_funds", &d, 1).unwrap_err();
    assert!(matches!(&e, MoneyError::Declined(r) if r == "insufficient_funds"), "{e}");
    let r = w.intake.db().begin_read().unwrap();
    assert_eq!(r.open_table(ATTEMPTS).unwrap().len().unwrap(), 0);
    drop(r);
    // Authorized, then refused by the intake: released (voided) and forgotten.
    let req = PaymentRequest { method: Method::Card, provider: Some("test".into()), token: Some("tok_ok".into()) };
    let mut p = w.money.prepare("k", &d, &[1; 32], &req);
    w.money.authorize(w.intake.db(), &mut p, 1).unwrap();
    let mut again = w.money.prepare("k", &d, &[1; 32], &req);
    w.money.authorize(w.intake.db(), &mut again, 2).unwrap();
    assert_eq!(p.payment.authorizations[0].reference, again.payment.authorizations[0].reference);
    assert_eq!(w.provider.count("authorize"), 1, "the same request gets the same authorization");
    w.money.release(w.intake.db(), &p).unwrap();
    assert_eq!(w.provider.count("void"), 1);
    let r = w.intake.db().begin_read().unwrap();
    assert_eq!(r.open_table(ATTEMPTS).unwrap().len().unwrap(), 0);
}

#[test]
fn a_stale_attempt_is_voided_by_the_sweep() {
    let cfg = PaymentsConfig { attempt_grace_ms: 1_000, ..PaymentsConfig::default() };
    let w = world(cfg, TaxConfig::default(), TestProviderConfig::default());
    let req = PaymentRequest { method: Method::Card, provider: Some("test".into()), token: Some("tok_ok".into()) };
    let mut p = w.money.prepare("k", &draft(&[("A", 1, 100)]), &[1; 32], &req);
    w.money.authorize(w.intake.db(), &mut p, 1).unwrap();
    w.money.outbox_pass(w.intake.db(), 500).unwrap();
    assert_eq!(w.provider.count("void"), 0, "within the grace");
    w.money.outbox_pass(w.intake.db(), 2_000).unwrap();
    assert_eq!((w.provider.count("void"), w.provider.count("authorize")), (1, 1));
}

#[test]
fn a_timed_out_capture_is_indeterminate_until_retrieve_settles_it_once() {
    let w = world(PaymentsConfig::default(), TaxConfig::default(), TestProviderConfig::default());
    paid(&w, "hub-1", "tok_capture_timeout", &draft(&[("A", 2, 500)]), 1).unwrap();
    let db = w.intake.db();
    w.money.bill_shipment(db, "hub-1.1", "hub-1", "wh-a", &lines(&[("A", 2)]), 2).unwrap();
    w.money.outbox_pass(db, 3).unwrap();
    let rows = w.money.rows(db, "hub-1", 10).unwrap();
    assert_eq!(rows[0].status, RowStatus::Indeterminate);
    assert_eq!(w.money.payment(db, "hub-1").unwrap().unwrap().captured_minor, 0, "not counted yet");
    pass(&w, u64::MAX / 2);
    let p = w.money.payment(db, "hub-1").unwrap().unwrap();
    assert_eq!((p.captured_minor, p.status()), (1_000, "captured"));
    assert_eq!(w.provider.count("capture"), 1);
    assert_eq!(w.money.rows(db, "hub-1", 10).unwrap()[0].status, RowStatus::Done);
}

#[test]
fn a_timed_out_void_is_named_a_void_in_the_timeline_and_settled_once() {
    let w = world(PaymentsConfig::default(), TaxConfig::default(), TestProviderConfig::default());
    let db = w.intake.db();
    paid(&w, "hub-1", "tok_void_timeout", &draft(&[("A", 1, 300)]), 1).unwrap();
    assert!(w.money.settle_final(db, "hub-1", &[], 2).unwrap());
    w.money.outbox_pass(db, 3).unwrap();
    let p = w.money.payment(db, "hub-1").unwrap().unwrap();
    let statuses: Vec<&str> = p.events.iter().map(|e| e.status.as_str()).collect();
    assert!(statuses.contains(&"void_indeterminate"), "{statuses:?}");
    assert!(!statuses.iter().any(|s| s.starts_with("capture")), "no capture was ever asked: {statuses:?}");
    assert!(!p.voided, "not settled before retrieve");
    pass(&w, u64::MAX / 2);
    let p = w.money.payment(db, "hub-1").unwrap().unwrap();
    assert_eq!((p.status(), p.released_minor, p.held_minor()), ("voided", 300, 0));
    assert_eq!(w.provider.count("void"), 1, "voided once");
    assert_eq!(w.money.totals(db).unwrap().payment_mismatches, 0);
}

#[test]
fn a_500_is_retried_and_a_duplicate_answer_counts_once() {
    let w = world(PaymentsConfig::default(), TaxConfig::default(), TestProviderConfig::default());
    let db = w.intake.db();
    for (order, token) in [("hub-1", "tok_capture_500"), ("hub-2", "tok_capture_dup")] {
        paid(&w, order, token, &draft(&[("A", 1, 700)]), 1).unwrap();
        w.money.bill_shipment(db, &format!("{order}.1"), order, "wh-a", &lines(&[("A", 1)]), 2).unwrap();
    }
    pass(&w, u64::MAX / 2);
    for order in ["hub-1", "hub-2"] {
        assert_eq!(w.money.payment(db, order).unwrap().unwrap().captured_minor, 700, "{order}");
    }
    assert_eq!(w.provider.count("capture"), 2);
    assert_eq!(w.money.totals(db).unwrap().payment_mismatches, 0);
}

#[test]
fn an_expired_authorization_is_renewed_or_flagged() {
    let cfg = PaymentsConfig { authorization_validity_ms: 1_000, ..PaymentsConfig::default() };
    let w = world(cfg, TaxConfig::default(), TestProviderConfig::default());
    let db = w.intake.db();
    let now = oms_service::now_ms();
    paid(&w, "hub-1", "tok_ok", &draft(&[("A", 1, 100)]), now - 5_000).unwrap();
    paid(&w, "hub-2", "tok_reauth_decline", &draft(&[("A", 1, 100)]), now - 5_000).unwrap();
    for o in ["hub-1", "hub-2"] {
        w.money.bill_shipment(db, &format!("{o}.1"), o, "wh-a", &lines(&[("A", 1)]), now).unwrap();
    }
    pass(&w, now);
    let p1 = w.money.payment(db, "hub-1").unwrap().unwrap();
    assert_eq!((p1.authorizations.len(), p1.captured_minor, p1.status()), (2, 100, "captured"));
    assert!(p1.authorizations[0].closed && p1.authorizations[1].captured_minor == 100);
    let p2 = w.money.payment(db, "hub-2").unwrap().unwrap();
    assert_eq!((p2.captured_minor, p2.status()), (0, "action_required"));
    let flagged = w.money.action_required(db, 10).unwrap();
    assert_eq!(flagged.iter().map(|p| p.order.as_str()).collect::<Vec<_>>(), ["hub-2"]);
}

#[test]
fn a_cancel_before_shipment_voids_once() {
    let w = world(PaymentsConfig::default(), TaxConfig::default(), TestProviderConfig::default());
    let db = w.intake.db();
    paid(&w, "hub-1", "tok_ok", &draft(&[("A", 1, 100)]), 1).unwrap();
    assert!(w.money.settle_final(db, "hub-1", &[], 2).unwrap());
    assert!(!w.money.settle_final(db, "hub-1", &[], 3).unwrap(), "once");
    pass(&w, 10);
    let p = w.money.payment(db, "hub-1").unwrap().unwrap();
    assert_eq!((p.status(), p.captured_minor), ("voided", 0));
    assert_eq!((p.released_minor, p.held_minor()), (100, 0), "the void released the whole authorization");
    assert_eq!(w.provider.count("void"), 1);
}

#[test]
fn a_final_order_releases_what_it_will_never_capture_once() {
    let w = world(PaymentsConfig::default(), TaxConfig::default(), TestProviderConfig::default());
    let db = w.intake.db();
    // Two of A and one of B authorized (250); one A and the B ship, the other A never will (short-shipped).
    let p = paid(&w, "hub-1", "tok_ok", &draft(&[("A", 2, 100), ("B", 1, 50)]), 1).unwrap();
    assert_eq!(p.held_minor(), 250);
    w.money.bill_shipment(db, "hub-1.1", "hub-1", "wh-a", &lines(&[("A", 1), ("B", 1)]), 2).unwrap();
    assert!(
        !w.money.settle_final(db, "hub-1", &["hub-1.1", "hub-1.2"], 3).unwrap(),
        "not before every shipment is billed"
    );
    assert!(w.money.settle_final(db, "hub-1", &["hub-1.1"], 3).unwrap());
    assert!(!w.money.settle_final(db, "hub-1", &["hub-1.1"], 4).unwrap(), "once");
    let kinds: Vec<Kind> = w.money.rows(db, "hub-1", 10).unwrap().iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [Kind::Capture, Kind::Release], "the release comes after the capture");
    pass(&w, 10);
    let p = w.money.payment(db, "hub-1").unwrap().unwrap();
    assert_eq!((p.captured_minor, p.released_minor, p.held_minor(), p.status()), (150, 100, 0, "captured"));
    assert_eq!((p.authorizations[0].captured_minor, p.authorizations[0].released_minor), (150, 100));
    assert!(p.events.iter().any(|e| e.status == "released" && e.amount_minor == 100), "{:?}", p.events);
    assert_eq!(w.provider.count("void"), 1);
    let at_provider = w.provider.retrieve(&p.authorizations[0].reference).unwrap();
    assert!(at_provider.closed && at_provider.captured_minor == 150, "{at_provider:?}");
    assert!(w.money.rows(db, "hub-1", 10).unwrap().iter().all(|r| r.status == RowStatus::Done));

    // Shipped in full: the release finds nothing held, calls nobody and reports nothing.
    paid(&w, "hub-2", "tok_ok", &draft(&[("A", 1, 100)]), 1).unwrap();
    w.money.bill_shipment(db, "hub-2.1", "hub-2", "wh-a", &lines(&[("A", 1)]), 2).unwrap();
    assert!(w.money.settle_final(db, "hub-2", &["hub-2.1"], 3).unwrap());
    pass(&w, 10);
    let p2 = w.money.payment(db, "hub-2").unwrap().unwrap();
    assert_eq!((p2.captured_minor, p2.released_minor, p2.held_minor(), p2.status()), (100, 0, 0, "captured"));
    assert!(!p2.events.iter().any(|e| e.status == "released"));
    assert_eq!(w.provider.count("void"), 1, "no call for a release of nothing");

    let t = w.money.totals(db).unwrap();
    assert_eq!((t.authorized_minor, t.captured_minor, t.released_minor, t.held_minor), (350, 250, 100, 0));
    assert_eq!(t.payment_mismatches, 0);
    // A payment whose amounts do not add up is counted.
    let mut bad = w.money.payment(db, "hub-1").unwrap().unwrap();
    bad.released_minor += 1;
    w.money.record_payment(db, "hub-1", Prepared { payment: bad, attempt_key: None }).unwrap();
    assert_eq!(w.money.totals(db).unwrap().payment_mismatches, 1);
}

#[test]
fn a_cod_payment_is_recorded_once_per_key_and_never_above_what_is_owed() {
    let w = world(PaymentsConfig::default(), TaxConfig::default(), TestProviderConfig::default());
    let db = w.intake.db();
    let req = PaymentRequest { method: Method::Cod, provider: None, token: None };
    let mut prepared = w.money.prepare("hub-1", &draft(&[("A", 2, 500)]), &[7; 32], &req);
    w.money.authorize(db, &mut prepared, 1).unwrap();
    w.money.record_payment(db, "hub-1", prepared).unwrap();
    let pay = |amount_minor, reference: &str| ManualPaymentRequest {
        amount_minor,
        method: ReceivedBy::Cash,
        reference: reference.into(),
        reason: "paid the courier".into(),
    };
    let a = actor();
    // Nothing shipped, nothing owed.
    let e = w.money.record_manual(db, "hub-1", "k1", &pay(100, "r1"), &a, 2).unwrap_err();
    assert_eq!(e.code(), "overpayment", "{e}");
    w.money.bill_shipment(db, "hub-1.1", "hub-1", "wh-a", &lines(&[("A", 1)]), 3).unwrap();
    pass(&w, 10);
    let (r1, replayed) = w.money.record_manual(db, "hub-1", "k1", &pay(300, "r1"), &a, 4).unwrap();
    assert_eq!((r1.id.as_str(), r1.amount_minor, replayed), ("hub-1-P1", 300, false));
    let (again, replayed) = w.money.record_manual(db, "hub-1", "k1", &pay(300, "r1"), &a, 5).unwrap();
    assert_eq!((again, replayed), (r1.clone(), true), "the same key and body answer the first record");
    let e = w.money.record_manual(db, "hub-1", "k1", &pay(200, "r1"), &a, 5).unwrap_err();
    assert_eq!(e.code(), "idempotency_key_reused");
    // 500 invoiced, 300 paid: 201 is too much, 200 is right.
    let e = w.money.record_manual(db, "hub-1", "k2", &pay(201, "r2"), &a, 6).unwrap_err();
    assert_eq!(e.code(), "overpayment");
    for (bad, code) in [
        (pay(0, "r2"), "invalid_payment"),
        (pay(1, " "), "invalid_payment"),
        (pay(1, &"x".repeat(129)), "invalid_payment"),
    ] {
        assert_eq!(w.money.record_manual(db, "hub-1", "k2", &bad, &a, 6).unwrap_err().code(), code, "{bad:?}");
    }
    w.money.record_manual(db, "hub-1", "k2", &pay(200, "r2"), &a, 7).unwrap();
    let p = w.money.payment(db, "hub-1").unwrap().unwrap();
    assert_eq!((p.paid_minor, p.outstanding_minor(), p.recorded.len()), (500, 0, 2));
    assert!(p.events.iter().any(|e| e.status == "recorded" && e.document.as_deref() == Some("hub-1-P2")));
    let t = w.money.totals(db).unwrap();
    assert_eq!((t.paid_minor, t.payments_recorded, t.payment_mismatches), (500, 2, 0));

    // A card order's money moves through captures.
    paid(&w, "hub-2", "tok_ok", &draft(&[("A", 1, 100)]), 1).unwrap();
    assert_eq!(w.money.record_manual(db, "hub-2", "k", &pay(1, "r"), &a, 8).unwrap_err().code(), "payment_not_manual");
    assert_eq!(w.money.record_manual(db, "hub-9", "k", &pay(1, "r"), &a, 8).unwrap_err().code(), "payment_not_found");
}

#[test]
fn fifty_concurrent_shipments_get_gap_free_invoice_numbers() {
    let w = Arc::new(world(PaymentsConfig::default(), de19(), TestProviderConfig::default()));
    for i in 0..50 {
        paid(&w, &format!("hub-{i}"), "tok_ok", &draft(&[("A", 1, 1_000 + i)]), oms_service::now_ms()).unwrap();
    }
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let w = w.clone();
            std::thread::spawn(move || {
                let order = format!("hub-{i}");
                w.money
                    .bill_shipment(w.intake.db(), &format!("{order}.1"), &order, "wh", &lines(&[("A", 1)]), 5)
                    .unwrap()
            })
        })
        .collect();
    let mut numbers: Vec<String> = threads.into_iter().map(|t| t.join().unwrap().unwrap()).collect();
    numbers.sort();
    let want: Vec<String> = (1..=50).map(|n| format!("INV-{n:06}")).collect();
    assert_eq!(numbers, want);
    pass(&w, 10);
    let t = w.money.totals(w.intake.db()).unwrap();
    assert_eq!(
        (t.invoices, t.payment_mismatches, t.captured_minor, t.invoiced_minor),
        (50, 0, t.authorized_minor, t.authorized_minor),
        "no re-authorization: each authorization captured whole"
    );
    let listed = w.money.invoices(w.intake.db(), 0, u64::MAX, 1_000, None).unwrap();
    assert_eq!(listed.len(), 50);
}

#[test]
fn config_is_checked() {
    assert!(PaymentsConfig::default().check().is_ok());
    for bad in [
        PaymentsConfig { call_timeout_ms: 0, ..PaymentsConfig::default() },
        PaymentsConfig { invoice_series: "IN V".into(), ..PaymentsConfig::default() },
        PaymentsConfig { credit_note_series: "INV".into(), ..PaymentsConfig::default() },
        PaymentsConfig {
            providers: [(MANUAL.to_owned(), ProviderConfig::Test(TestProviderConfig::default()))].into(),
            ..PaymentsConfig::default()
        },
    ] {
        assert!(bad.check().is_err(), "{bad:?}");
    }
    let m = Money::new(PaymentsConfig::default(), TaxConfig::default()).unwrap();
    let body = |v: serde_json::Value| serde_json::to_vec(&serde_json::json!({"payment": v})).unwrap();
    assert!(m.payment_request(b"{}").unwrap().is_none());
    assert_eq!(
        m.payment_request(&body(serde_json::json!({"method": "terms"}))).unwrap().unwrap().method,
        Method::Terms
    );
    for bad in [
        serde_json::json!({"method": "card", "provider": "nope", "token": "t"}),
        serde_json::json!({"method": "card", "provider": "manual", "token": "t"}),
        serde_json::json!({"method": "cash"}),
        serde_json::json!({"method": "cod", "token": "t"}),
        serde_json::json!("card"),
    ] {
        assert_eq!(m.payment_request(&body(bad.clone())).unwrap_err().code(), "invalid_payment", "{bad}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Random orders shipped in random parts: every invoice's lines add up to its totals and net + tax =
    /// gross on each line; the invoices of an order add up to its authorized total to the minor unit, and
    /// that is exactly what is captured.
    #[test]
    fn invoices_of_random_orders_add_up_to_the_order(
        lines in prop::collection::vec((1..40u32, 0..1_000_000i64), 1..6),
        bp in 0..=2_500u32,
        exclusive in any::<bool>(),
        parts in 1..5u64,
    ) {
        let tax = TaxConfig {
            prices: if exclusive { Prices::Exclusive } else { Prices::Inclusive },
            rates: [("DE".to_owned(), bp)].into(),
            ..TaxConfig::default()
        };
        let w = world(PaymentsConfig::default(), tax, TestProviderConfig::default());
        let skus: Vec<String> = (0..lines.len()).map(|i| format!("S{i}")).collect();
        let spec: Vec<(&str, u32, i64)> = lines.iter().zip(&skus).map(|((q, p), s)| (s.as_str(), *q, *p)).collect();
        let p = paid(&w, "hub-1", "tok_ok", &draft(&spec), oms_service::now_ms()).unwrap();
        let db = w.intake.db();
        for k in 1..=parts {
            let ship: Vec<(String, u64)> = spec
                .iter()
                .map(|(s, q, _)| {
                    let q = u64::from(*q);
                    ((*s).to_owned(), q * k / parts - q * (k - 1) / parts)
                })
                .collect();
            w.money.bill_shipment(db, &format!("hub-1.{k}"), "hub-1", "wh", &ship, 5).unwrap();
        }
        pass(&w, u64::MAX / 2);
        let after = w.money.payment(db, "hub-1").unwrap().unwrap();
        let mut sum = 0i64;
        for n in &after.invoices {
            let inv = w.money.invoice(db, n).unwrap().unwrap();
            prop_assert!(inv.lines.iter().all(|l| l.net_minor + l.tax_minor == l.gross_minor && l.tax_minor >= 0));
            prop_assert_eq!(inv.total_minor, inv.lines.iter().map(|l| l.gross_minor).sum::<i64>());
            prop_assert_eq!(inv.tax_minor, inv.lines.iter().map(|l| l.tax_minor).sum::<i64>());
            prop_assert_eq!(inv.net_minor + inv.tax_minor, inv.total_minor);
            sum += inv.total_minor;
        }
        prop_assert_eq!(u64::try_from(sum).unwrap(), p.total_minor);
        prop_assert_eq!(after.invoiced_minor, p.total_minor);
        prop_assert_eq!(after.captured_minor, if p.total_minor > 0 { p.total_minor } else { 0 });
    }
}

/// A hub over `dir` with `provider` as the `test` provider, as a start opens it.
fn hub_in(dir: &std::path::Path, provider: &Arc<TestProvider>) -> crate::server::Hub {
    let docs = crate::demand::test_support::hub_docs(dir, &[], &[]);
    let money =
        Money::new(PaymentsConfig::default(), TaxConfig::default()).unwrap().with_provider("test", provider.clone());
    crate::demand::test_support::hub_over(dir, docs, money, Default::default())
}

#[test]
fn a_cancel_whose_settlement_a_crash_cut_off_is_settled_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Arc::new(TestProvider::new(TestProviderConfig::default(), 1_000).unwrap());
    let id = {
        let hub = hub_in(dir.path(), &provider);
        let d = draft(&[("A", 2, 250)]);
        // No site holds A: the order waits for stock, its card authorized.
        let placed = hub.intake.place("k1", d.clone(), &[], &actor(), 1).unwrap();
        let id = placed.order.id.to_string();
        let req = PaymentRequest { method: Method::Card, provider: Some("test".into()), token: Some("tok_ok".into()) };
        let mut p = hub.money.prepare(&id, &d, &[7; 32], &req);
        hub.money.authorize(hub.intake.db(), &mut p, 1).unwrap();
        hub.money.record_payment(hub.intake.db(), &id, p).unwrap();
        // The cancel commits; the hub dies before the settlement the cancel route would queue next.
        let o = hub.intake.request_cancel(&id, None, Some("changed mind"), &actor(), 2).unwrap();
        assert!(o.unfilled.is_empty() && o.fulfillments.is_empty(), "final: {o:?}");
        assert!(hub.money.rows(hub.intake.db(), &id, 10).unwrap().is_empty(), "nothing queued before the crash");
        id
    };
    let hub = hub_in(dir.path(), &provider);
    crate::orders::recover(&hub).unwrap();
    let db = hub.intake.db();
    let kinds: Vec<Kind> = hub.money.rows(db, &id, 10).unwrap().iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [Kind::Void], "the start queued the void the crash cut off");
    assert!(hub.money.settle_due(db, 10).unwrap().is_empty(), "the note left with the settlement");
    for _ in 0..10 {
        if hub.money.outbox_pass(db, 10).unwrap() == 0 {
            break;
        }
    }
    let p = hub.money.payment(db, &id).unwrap().unwrap();
    assert_eq!((p.status(), p.released_minor, p.held_minor()), ("voided", 500, 0));
    assert_eq!(provider.count("void"), 1);
    // Another start settles nothing again.
    drop(hub);
    let hub = hub_in(dir.path(), &provider);
    crate::orders::recover(&hub).unwrap();
    assert_eq!(hub.money.rows(hub.intake.db(), &id, 10).unwrap().len(), 1, "voided once");
}

#[test]
fn a_store_from_before_released_amounts_is_migrated_to_add_up() {
    let w = world(PaymentsConfig::default(), TaxConfig::default(), TestProviderConfig::default());
    let db = w.intake.db();
    paid(&w, "hub-1", "tok_ok", &draft(&[("A", 1, 500)]), 1).unwrap();
    assert!(w.money.settle_final(db, "hub-1", &[], 2).unwrap());
    pass(&w, 10);
    // As format 1 wrote it: the authorization closed, nothing recorded as released.
    let wt = db.begin_write().unwrap();
    {
        let mut t = wt.open_table(PAYMENTS).unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(t.get("hub-1").unwrap().unwrap().value()).unwrap();
        v["released_minor"] = 0.into();
        v["authorizations"][0]["released_minor"] = 0.into();
        t.insert("hub-1", serde_json::to_vec(&v).unwrap().as_slice()).unwrap();
        wt.open_table(oms_service::storage::format::FORMAT_TABLE).unwrap().insert("intake", 1).unwrap();
    }
    wt.commit().unwrap();
    assert_eq!(w.money.totals(db).unwrap().payment_mismatches, 1, "the old record does not add up");
    let World { _dir: dir, intake, money, .. } = w;
    drop(intake);
    let intake = Intake::open(&dir.path().join(INTAKE_DB_FILE), Default::default()).unwrap();
    let p = money.payment(intake.db(), "hub-1").unwrap().unwrap();
    assert_eq!((p.released_minor, p.authorizations[0].released_minor, p.status()), (500, 500, "voided"));
    assert_eq!(money.totals(intake.db()).unwrap().payment_mismatches, 0);
    let copies = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("{INTAKE_DB_FILE}.v1.")));
    assert_eq!(copies.count(), 1, "the file before the migration is kept beside it");
}
