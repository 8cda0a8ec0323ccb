//! Power loss at many points of hub intake with card payments: `intake.redb` (orders, idempotency records,
//! payments and their authorization attempts, invoices and the payment outbox) on the recording backend of
//! `oms_service::storage::crash` ([`Intake::open_on`]), driven as `POST /v1/orders` drives it (authorize at
//! the test provider, then the writer's group commit), with shipments billed and captures sent through the
//! outbox, the hub holding fewer rights at its one site than the orders ask for (so some are placed there
//! and the rest wait). Afterwards the bytes a disk could hold had the power been cut after each chosen operation are
//! opened as the hub would after the power came back, and the outbox is run again against the provider as
//! it was left (it outlives the hub).
//!
//! `OMS_POWER_CUTS` sets how many cut points (default 40), each tried three ways.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use oms_protocol::domain::{Channel, NodeId, OrderDraft, Sku};
use oms_protocol::escrow::{EscrowCounter, Party};
use oms_protocol::schema::SiteInfo;
use oms_service::audit::Actor;
use oms_service::now_ms;
use oms_service::storage::crash::{CrashBackend, Cut, OpLog, image_at};
use redb::{ReadableDatabase, ReadableTable};

use super::{INTAKE_DB_FILE, Intake, IntakeLimits, SiteFacts, body_hash};
use crate::money::outbox::{Kind, OUTBOX, Row};
use crate::money::provider::{TestProvider, TestProviderConfig};
use crate::money::tax::TaxConfig;
use crate::money::{Method, Money, PaymentRequest, PaymentsConfig};

/// Rounds of the recorded run; each takes [`PER_ROUND`] orders at once (two of three paid by card), replays
/// an earlier order's request, and bills one earlier card order's shipment.
const ROUNDS: usize = 30;
const PER_ROUND: usize = 3;
/// Outbox passes a resume may take to settle everything.
const PASSES_MAX: usize = 20;
/// Units of `A` the hub holds rights to at `wh-a`: fewer than the run's orders ask for.
const HUB_RIGHTS: u64 = 120;

fn site() -> NodeId {
    NodeId::parse("wh-a").unwrap()
}

fn sku() -> Sku {
    Sku::parse("A").unwrap()
}

fn facts() -> Vec<SiteFacts> {
    let info = SiteInfo {
        name: "A".into(),
        lat: 52.0,
        lon: 13.0,
        priority: 0,
        capacity_per_day: 100_000,
        region: "de".into(),
    };
    vec![SiteFacts { id: site(), info, reachable: true, last_heard_age_ms: 0, schedule: None }]
}

fn draft(ext: &str, qty: u32) -> OrderDraft {
    serde_json::from_value(serde_json::json!({
        "external_ref": ext, "channel": "web",
        "lines": [{"sku": "A", "qty": qty, "unit_price_minor": 1_190, "currency": "EUR"}],
        "ship_to": {"name": "C", "line1": "1", "city": "B", "postcode": "1", "country": "DE", "lat": 52.0, "lon": 13.0}
    }))
    .unwrap()
}

fn actor() -> Actor {
    Actor { key: "shop".into(), role: oms_service::auth::Role::Service, method: "POST", route: "/v1/orders".into() }
}

fn money(provider: Arc<TestProvider>) -> Money {
    Money::new(PaymentsConfig::default(), TaxConfig::default()).unwrap().with_provider("test", provider)
}

fn provider(state: &Path) -> Arc<TestProvider> {
    let cfg = TestProviderConfig { state_file: Some(state.to_owned()), ..TestProviderConfig::default() };
    Arc::new(TestProvider::new(cfg, PaymentsConfig::default().call_timeout_ms).unwrap())
}

fn open(backend: CrashBackend) -> Result<Intake, super::IntakeError> {
    Intake::open_on(Path::new(INTAKE_DB_FILE), Box::new(backend), Default::default())
}

/// An order answered `201`: its id, external reference, whether it is paid by card, and the operations that
/// had reached the storage by then.
struct Acked {
    id: String,
    ext: String,
    card: bool,
    at: usize,
}

/// A shipment billed: fulfillment, invoice number, operations by then.
struct Billed {
    fulfillment: String,
    number: String,
    at: usize,
}

fn invoice_seq(number: &str) -> u64 {
    number.strip_prefix("INV-").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("invoice number {number}"))
}

#[test]
fn every_201_survives_a_power_cut_once_with_gap_free_invoices_and_one_capture_each() {
    let cuts: usize = std::env::var("OMS_POWER_CUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("provider.json");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let log = OpLog::default();
    let (acked, billed, replays, batches) = rt.block_on(async {
        let intake = Arc::new(open(CrashBackend::recording(log.clone())).unwrap());
        let mut rights = EscrowCounter::new(sku());
        rights.add(Party::Site, 1_000).unwrap();
        rights.grant_lease(Party::Site, Party::Hub, u64::MAX / 2, 1_000).unwrap();
        rights.transfer(Party::Site, Party::Hub, HUB_RIGHTS, 0).unwrap();
        intake.merge_site(&site(), vec![rights], now_ms()).unwrap();
        intake.start(IntakeLimits::default(), Box::new(|_| facts()), None).unwrap();
        let money = Arc::new(money(provider(&state)));
        let mut acked: Vec<Acked> = Vec::new();
        let mut billed: Vec<Billed> = Vec::new();
        let mut replays = 0usize;
        for round in 0..ROUNDS {
            // Authorized first (each its attempt row, committed before the call), then the three submitted
            // from spawned tasks, so they are queued together and the writer commits them in one batch.
            let tasks: Vec<_> = (0..PER_ROUND)
                .map(|i| {
                    let (key, ext, card) = (format!("k-{round}-{i}"), format!("o-{round}-{i}"), i != 0);
                    let d = draft(&ext, 1 + i as u32);
                    let payment = card.then(|| {
                        let req = PaymentRequest {
                            method: Method::Card,
                            provider: Some("test".into()),
                            token: Some("tok_ok".into()),
                        };
                        let mut p = money.prepare(&key, &d, &body_hash(&d).unwrap(), &req);
                        money.authorize(intake.db(), &mut p, now_ms()).unwrap();
                        p
                    });
                    let (intake, log) = (intake.clone(), log.clone());
                    tokio::spawn(async move {
                        let placed = intake.submit_paid(key, d, actor(), payment).await.unwrap();
                        assert!(placed.created);
                        let at = log.lock().unwrap().len();
                        Acked { id: placed.order.id.to_string(), ext, card, at }
                    })
                })
                .collect();
            for t in tasks {
                acked.push(t.await.unwrap());
            }
            // A retry of an earlier order without payment: the original, nothing new.
            let earlier = round / 2;
            let again = intake.submit(format!("k-{earlier}-0"), draft(&format!("o-{earlier}-0"), 1), actor()).await;
            let again = again.unwrap();
            assert!(!again.created && again.order.id.as_str() == acked[earlier * PER_ROUND].id);
            replays += 1;
            // An earlier card order ships: its invoice and capture row in one transaction, then the outbox.
            if round >= 2 {
                let o = &acked[(round - 2) * PER_ROUND + 1 + round % 2];
                let f = format!("{}.1", o.id);
                let qty = 1 + (1 + round % 2) as u64;
                let n = money.bill_shipment(intake.db(), &f, &o.id, "wh-a", &[("A".into(), qty)], now_ms()).unwrap();
                let at = log.lock().unwrap().len();
                billed.push(Billed { fulfillment: f, number: n.unwrap(), at });
            }
            if round % 3 == 2 {
                money.outbox_pass(intake.db(), now_ms()).unwrap();
            }
        }
        for _ in 0..PASSES_MAX {
            if money.outbox_pass(intake.db(), now_ms()).unwrap() == 0 {
                break;
            }
        }
        let t = money.totals(intake.db()).unwrap();
        assert_eq!((t.payment_mismatches, t.outbox_open, t.invoices), (0, 0, billed.len() as u64));
        let placed = acked.iter().filter(|a| !intake.order(&a.id).unwrap().unwrap().fulfillments.is_empty()).count();
        assert!(
            placed > 0 && placed < acked.len(),
            "{placed} of {} orders placed: the rights must run out",
            acked.len()
        );
        (acked, billed, replays, intake.batch_counts())
    });
    let ops = log.lock().unwrap().clone();
    let captures = billed.len() as u64;
    assert_eq!(provider(&state).count("capture"), captures, "the run captured each invoice once");
    let numbers: BTreeMap<&str, &str> = billed.iter().map(|b| (b.fulfillment.as_str(), b.number.as_str())).collect();
    let web = Channel::parse("web").unwrap();
    let (mut points, mut refused, mut resumed) = (0usize, 0usize, 0usize);
    let (mut orders_checked, mut invoices_checked) = (0usize, 0usize);
    for cut in (0..=ops.len()).step_by((ops.len() / cuts).max(1)) {
        points += 1;
        let must: Vec<&Acked> = acked.iter().filter(|a| a.at <= cut).collect();
        let must_bill: Vec<&Billed> = billed.iter().filter(|b| b.at <= cut).collect();
        for how in [Cut::DropUnsynced, Cut::KeepSome(cut as u64), Cut::TearPage(cut as u64)] {
            let intake = match open(CrashBackend::from_image(image_at(&ops, cut, how))) {
                Ok(i) => i,
                Err(e) => {
                    assert!(must.is_empty(), "cut {cut} {how:?}: does not open ({e}) though orders were answered 201");
                    refused += 1;
                    continue;
                }
            };
            // Every order answered 201 is there exactly once; nothing else but orders of the run.
            let (all, next) = intake.channel_orders(&web, None, 1_000).unwrap();
            assert!(next.is_none());
            let mut by_ext: BTreeMap<&str, usize> = BTreeMap::new();
            for o in &all {
                *by_ext.entry(o.draft.external_ref.as_str()).or_default() += 1;
                assert!(acked.iter().any(|a| a.id == o.id.as_str()), "cut {cut} {how:?}: {} never taken", o.id);
            }
            assert!(by_ext.values().all(|n| *n == 1), "cut {cut} {how:?}: an order twice: {by_ext:?}");
            assert_eq!(intake.orders_taken().unwrap(), all.len() as u64, "cut {cut} {how:?}: sequence ≠ orders");
            // Units placed at the site are exactly what the hub's rights there were spent on (none promised
            // twice, none spent for an order the cut lost), and a start sees every fulfillment as open work
            // (to recreate its document if the cut came before it was written).
            let fulfillments = || all.iter().flat_map(|o| &o.fulfillments);
            let placed: u64 = fulfillments().flat_map(|f| &f.lines).map(|l| u64::from(l.qty)).sum();
            let spent = intake.escrow(&site(), &sku()).map_or(0, |c| c.consumed(Party::Hub));
            assert_eq!(spent, placed, "cut {cut} {how:?}: rights spent ≠ units placed");
            assert!(placed <= HUB_RIGHTS, "cut {cut} {how:?}: {placed} units placed on {HUB_RIGHTS} rights");
            let live: BTreeSet<String> = intake.live_fulfillments().unwrap().iter().map(|f| f.id.to_string()).collect();
            assert_eq!(live, fulfillments().map(|f| f.id.to_string()).collect(), "cut {cut} {how:?}: open work");
            let money = money(provider(&dir.path().join("unused.json")));
            let db = intake.db();
            for a in &must {
                let o = intake.order(&a.id).unwrap().unwrap_or_else(|| panic!("cut {cut} {how:?}: {} lost", a.id));
                assert_eq!(o.draft.external_ref.as_str(), a.ext);
                assert_eq!(
                    money.payment(db, &a.id).unwrap().is_some(),
                    a.card,
                    "cut {cut} {how:?}: {}'s payment",
                    a.id
                );
            }
            // Invoices: numbered 1..n without a gap, each the run's own number for its shipment, every one
            // billed before the cut among them; exactly one capture row per invoice.
            let invoices = money.invoices(db, 0, u64::MAX, 1_000, None).unwrap();
            let mut seqs: Vec<u64> = invoices.iter().map(|i| invoice_seq(&i.number)).collect();
            seqs.sort_unstable();
            assert_eq!(seqs, (1..=invoices.len() as u64).collect::<Vec<_>>(), "cut {cut} {how:?}: a gap");
            for i in &invoices {
                assert_eq!(numbers.get(i.fulfillment.as_str()), Some(&i.number.as_str()), "cut {cut} {how:?}");
            }
            for b in &must_bill {
                assert!(invoices.iter().any(|i| i.number == b.number), "cut {cut} {how:?}: {} lost", b.number);
            }
            let r = db.begin_read().unwrap();
            let mut capture_rows: BTreeMap<String, usize> = BTreeMap::new();
            for item in r.open_table(OUTBOX).unwrap().iter().unwrap() {
                let row: Row = serde_json::from_slice(item.unwrap().1.value()).unwrap();
                assert_eq!(row.kind, Kind::Capture, "cut {cut} {how:?}: {row:?}");
                *capture_rows.entry(row.document.clone().unwrap_or_default()).or_default() += 1;
            }
            drop(r);
            let expected: BTreeMap<String, usize> = invoices.iter().map(|i| (i.number.clone(), 1)).collect();
            assert_eq!(capture_rows, expected, "cut {cut} {how:?}: capture rows ≠ invoices");
            orders_checked += must.len();
            invoices_checked += invoices.len();
            // The hub comes back: the outbox settles what the cut left open against the provider as the run
            // left it (a copy per cut), which answers a key it saw with its first answer and never captures
            // twice; attempts of orders the cut lost are voided, never an acknowledged order's authorization.
            if how == Cut::DropUnsynced || points % 4 == 0 {
                let copy = dir.path().join(format!("provider-{cut}.json"));
                std::fs::copy(&state, &copy).unwrap();
                let p = provider(&copy);
                let money = self::money(p.clone());
                let later = now_ms() + 3_600_000;
                let passes = (0..PASSES_MAX).take_while(|_| money.outbox_pass(db, later).unwrap() > 0).count();
                assert!(passes < PASSES_MAX, "cut {cut} {how:?}: the outbox did not settle");
                let t = money.totals(db).unwrap();
                assert_eq!((t.payment_mismatches, t.outbox_open), (0, 0), "cut {cut} {how:?}: {t:?}");
                assert_eq!(p.count("capture"), captures, "cut {cut} {how:?}: captured twice");
                for a in must.iter().filter(|a| a.card) {
                    let pay = money.payment(db, &a.id).unwrap().unwrap();
                    assert!(!pay.voided, "cut {cut} {how:?}: {}'s authorization voided", a.id);
                }
                let captured: u64 = invoices.iter().map(|i| i.total_minor as u64).sum();
                assert_eq!(t.captured_minor, captured, "cut {cut} {how:?}: captured ≠ invoiced");
                std::fs::remove_file(&copy).unwrap();
                resumed += 1;
            }
        }
    }
    assert!(points >= cuts.min(ops.len()) / 2, "{points} points");
    eprintln!(
        "intake.redb power cuts: {points} points × 3 ways over {} operations ({refused} refused to open, before any \
         201); {} orders ({replays} replays) in {} commits of the writer (at most {} in one), {} invoices in the run; {orders_checked} acknowledged orders and {invoices_checked} invoices checked, \
         {resumed} resumed outboxes settled; {:.1} s",
        ops.len(),
        acked.len(),
        batches.commits,
        batches.largest,
        billed.len(),
        started.elapsed().as_secs_f64()
    );
}
