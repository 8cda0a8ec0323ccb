//! Captures per second through the payment outbox: `N` card orders of 3 units (authorized at the in-process
//! test provider), each shipping 2 once (`Money::bill_shipment`: invoice, number and capture row in one
//! durable transaction), then outbox passes until every capture settled (per row: the authorization it uses
//! committed, the provider called, the result committed with the amounts). Then each order is final with one
//! unit never to ship: `Money::settle_final` queues its release row (one commit each) and the outbox releases
//! the rest at the provider (a void per order). Real `intake.redb` on the disk of the temporary directory,
//! fsync per commit.
//!
//! `cargo bench -p oms-hub --bench payments` (env `BENCH_ORDERS`, default 2,000). Prints billing and capture
//! rates (wall clock, one thread, as the hub's outbox runs), the releases' as a ratio to the captures' of the
//! same run, and the totals' mismatch counter (must be 0).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::cast_precision_loss)]

use std::sync::Arc;
use std::time::Instant;

use oms_hub::intake::{INTAKE_DB_FILE, Intake};
use oms_hub::money::provider::{TestProvider, TestProviderConfig};
use oms_hub::money::{Method, Money, PaymentRequest, PaymentsConfig};
use oms_protocol::domain::OrderDraft;

/// Outbox passes until every row settled (at most 100): seconds taken and passes.
fn drain(money: &Money, db: &redb::Database) -> (f64, u32) {
    let t = Instant::now();
    let mut passes = 0;
    while money.totals(db).unwrap().outbox_open > 0 && passes < 100 {
        money.outbox_pass(db, oms_service::now_ms()).unwrap();
        passes += 1;
    }
    (t.elapsed().as_secs_f64(), passes)
}

fn main() {
    let n: usize = std::env::var("BENCH_ORDERS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000);
    let dir = tempfile::tempdir().unwrap();
    let intake = Intake::open(&dir.path().join(INTAKE_DB_FILE), Default::default()).unwrap();
    let cfg = PaymentsConfig { outbox_batch_max: 10_000, ..PaymentsConfig::default() };
    let provider = Arc::new(TestProvider::new(TestProviderConfig::default(), cfg.call_timeout_ms).unwrap());
    let money = Money::new(cfg, Default::default()).unwrap().with_provider("test", provider.clone());
    let draft: OrderDraft = serde_json::from_value(serde_json::json!({
        "external_ref": "b", "channel": "web",
        "lines": [{"sku": "A", "qty": 3, "unit_price_minor": 1999, "currency": "EUR"}],
        "ship_to": {"name": "C", "line1": "1", "city": "B", "postcode": "1", "country": "DE", "lat": 52.0, "lon": 13.0}
    }))
    .unwrap();
    let req = PaymentRequest { method: Method::Card, provider: Some("test".into()), token: Some("tok_bench".into()) };
    let now = oms_service::now_ms();
    let db = intake.db();
    let t0 = Instant::now();
    for i in 0..n {
        let order = format!("hub-{i}");
        let mut p = money.prepare(&order, &draft, &[1; 32], &req);
        money.authorize(db, &mut p, now).unwrap();
        money.record_payment(db, &order, p).unwrap();
    }
    let auth_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for i in 0..n {
        let order = format!("hub-{i}");
        money.bill_shipment(db, &format!("{order}.1"), &order, "wh", &[("A".into(), 2)], now).unwrap();
    }
    let bill_s = t1.elapsed().as_secs_f64();
    let (cap_s, passes) = drain(&money, db);
    let t = money.totals(db).unwrap();
    assert_eq!(provider.count("capture"), n as u64);
    let t3 = Instant::now();
    for i in 0..n {
        let order = format!("hub-{i}");
        assert!(money.settle_final(db, &order, &[&format!("{order}.1")], now).unwrap());
    }
    let queue_s = t3.elapsed().as_secs_f64();
    let (rel_s, release_passes) = drain(&money, db);
    let r = money.totals(db).unwrap();
    assert_eq!(provider.count("void"), n as u64);
    println!("machine: {} cores", std::thread::available_parallelism().map_or(0, |p| p.get()));
    println!("{n} card orders: authorize + record {:.0}/s ({auth_s:.2} s)", n as f64 / auth_s);
    println!("bill (invoice + number + capture row, one commit each): {:.0}/s ({bill_s:.2} s)", n as f64 / bill_s);
    println!(
        "captures through the outbox: {:.0}/s ({cap_s:.2} s, {passes} passes); captured {} of {} invoiced, mismatches {}",
        n as f64 / cap_s,
        t.captured_minor,
        t.invoiced_minor,
        t.payment_mismatches
    );
    println!("release rows queued (settle_final, one commit each): {:.0}/s ({queue_s:.2} s)", n as f64 / queue_s);
    println!(
        "releases through the outbox: {:.0}/s ({rel_s:.2} s, {release_passes} passes), {:.2}× the capture rate; released {}, still held {}, authorized {} = captured + released + held: {}; mismatches {}",
        n as f64 / rel_s,
        cap_s / rel_s,
        r.released_minor,
        r.held_minor,
        r.authorized_minor,
        r.authorized_minor == r.captured_minor + r.released_minor + r.held_minor,
        r.payment_mismatches
    );
}
