use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::events::{self, EventDraft};
use oms_protocol::domain::{Channel, OrderId};

const DAY: u32 = 20_000;

fn db() -> (tempfile::TempDir, redb::Database) {
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("intake.redb")).unwrap();
    events::init(&db).unwrap();
    (dir, db)
}

fn append(db: &redb::Database, draft: EventDraft) {
    let w = db.begin_write().unwrap();
    events::append(&w, draft).unwrap();
    w.commit().unwrap();
}

fn period(from: u32, to: u32) -> Period {
    Period { from, to, site: None, channel: None }
}

#[test]
fn the_fold_counts_each_event_on_its_day_site_and_channel() {
    let (_d, db) = db();
    let at = u64::from(DAY) * MS_PER_DAY + 3_600_000;
    let (web, shop) = (Channel::parse("web").unwrap(), Channel::parse("shop").unwrap());
    let o = |n: u32| OrderId::parse(&format!("hub-{n}")).unwrap();
    append(
        &db,
        EventDraft::new(events::ORDER_CREATED, at)
            .order(&o(1), &web)
            .data(json!({"lines": [{"sku": "A", "qty": 3}, {"sku": "B", "qty": 2}]})),
    );
    append(
        &db,
        EventDraft::new(events::ORDER_ROUTED, at).order(&o(1), &web).data(json!({
        "trigger": "intake", "unfilled": [{"sku": "B", "qty": 2}],
        "fulfillments": [{"fulfillment_id": "hub-1.1", "site": "wh-a", "lines": [{"sku": "A", "qty": 3}]}]})),
    );
    // Routed later from the backorder: the site's figures grow, the fill at intake does not.
    append(
        &db,
        EventDraft::new(events::ORDER_ROUTED, at + MS_PER_DAY).order(&o(1), &web).data(json!({
        "trigger": "retry", "unfilled": [],
        "fulfillments": [{"fulfillment_id": "hub-1.2", "site": "wh-b", "lines": [{"sku": "B", "qty": 2}]}]})),
    );
    append(
        &db,
        EventDraft::new(events::ORDER_CREATED, at).order(&o(2), &shop).data(json!({"lines": [{"sku": "A", "qty": 1}]})),
    );
    append(&db, EventDraft::new(events::ORDER_CANCELLED, at).order(&o(2), &shop));
    // A shipment of an order the intake does not hold: counted, with no promise and no time to ship.
    append(
        &db,
        EventDraft::new(events::FULFILLMENT_SHIPPED, at).order(&o(1), &web).data(json!({
        "fulfillment_id": "hub-1.1", "site": "wh-a", "shipped_at_ms": at + MS_PER_DAY})),
    );
    append(
        &db,
        EventDraft::new(events::ORDER_DELIVERED, at + 2 * MS_PER_DAY).order(&o(1), &web).data(json!({"site": "wh-a"})),
    );
    // Events that count for nothing change nothing.
    append(&db, EventDraft::new(events::NODE_OFFLINE, at).data(json!({"node": "wh-a"})));

    let r = report(&db, &period(DAY, DAY + 2)).unwrap();
    assert_eq!(r.days.len(), 3);
    let d0 = &r.days[0].figures;
    assert_eq!((d0.orders, d0.units_ordered, d0.units_backordered_at_intake, d0.cancellations), (2, 6, 3, 1));
    assert_eq!(d0.fill_rate, Some(3.0 / 6.0));
    assert_eq!(d0.shipped, 0, "a shipment counts on the site's day of shipping");
    let d1 = &r.days[1].figures;
    assert_eq!((d1.shipped, d1.units_routed, d1.on_time_rate, d1.ship_time_p50_s), (1, 2, None, None));
    assert_eq!(r.days[2].figures.delivered, 1);
    assert_eq!((r.total.orders, r.total.shipped, r.total.delivered, r.total.units_routed), (2, 1, 1, 5));
    assert_eq!(r.total.cancellation_rate, Some(0.5));
    let names = |v: &[NamedView]| v.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&r.sites), ["wh-a", "wh-b"]);
    assert_eq!(names(&r.channels), ["shop", "web"]);
    assert_eq!(r.channels[1].figures.fill_rate, Some(3.0 / 5.0));

    // A site's report holds its fulfillments only; a channel's its orders only.
    let a = report(&db, &Period { site: Some("wh-a".into()), ..period(DAY, DAY + 2) }).unwrap();
    assert_eq!((a.total.orders, a.total.shipped, a.total.units_routed), (0, 1, 3));
    let s = report(&db, &Period { channel: Some("shop".into()), ..period(DAY, DAY + 2) }).unwrap();
    assert_eq!((s.total.orders, s.total.cancellations, s.total.shipped), (1, 1, 0));
    // Outside the period: nothing.
    assert_eq!(report(&db, &period(DAY + 3, DAY + 9)).unwrap().total, Figures::default().view());

    let csv = String::from_utf8(csv(&r).unwrap()).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + 3 + 2 + 2 + 1, "{csv}");
    assert!(lines[0].starts_with("scope,name,orders,units_ordered,fill_rate"), "{csv}");
    assert!(lines.last().unwrap().starts_with("total,,2,6,0.5000,3,1,0.5000,5,1,"), "{csv}");
}

#[test]
fn periods_are_checked() {
    let today = parse_day("2026-12-05").unwrap();
    assert_eq!(format_day(today), "2026-12-05");
    let p = Period::parse(None, None, Some(String::new()), None, today).unwrap();
    assert_eq!((p.from, p.to, p.site), (today - 13, today, None));
    let p = Period::parse(Some("2026-01-01"), Some("2026-12-31"), None, Some("web".into()), today).unwrap();
    assert_eq!((p.to - p.from, p.channel.as_deref()), (364, Some("web")));
    for (from, to) in [
        ("2026-12-05", "2026-12-01"),
        ("2025-01-01", "2026-12-31"),
        ("yesterday", "2026-12-01"),
        ("2026-02-30", "2026-03-01"),
        ("1969-12-31", "1970-01-02"),
    ] {
        assert!(
            matches!(Period::parse(Some(from), Some(to), None, None, today), Err(ReportError::Invalid(_))),
            "{from}..{to}"
        );
    }
}

proptest! {
    /// A percentile read from the histogram is within 9.1 % of the exact (nearest-rank) one, for times from a
    /// second to 30 days.
    #[test]
    fn histogram_percentiles_are_within_nine_percent(
        times in proptest::collection::vec(1_000u64..30 * MS_PER_DAY, 1..200),
        q in 0.01f64..1.0,
    ) {
        let mut h = BTreeMap::new();
        for t in &times {
            *h.entry(bucket(*t)).or_insert(0u64) += 1;
        }
        let mut sorted = times.clone();
        sorted.sort_unstable();
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        let exact = sorted[rank - 1] as f64;
        let got = percentile(&h, q).unwrap() as f64;
        prop_assert!((got / exact - 1.0).abs() <= 0.091, "{got} vs {exact}");
    }
}

#[test]
fn return_received_events_count_one_return_per_rma_and_every_unit_at_their_site() {
    let (_d, db) = db();
    let at = u64::from(DAY) * MS_PER_DAY + 3_600_000;
    let web = Channel::parse("web").unwrap();
    let o = OrderId::parse("hub-1").unwrap();
    let received = |site: &str, units: u64, first: bool, when: u64| {
        EventDraft::new(events::RETURN_RECEIVED, when)
            .order(&o, &web)
            .data(json!({"rma": "RMA-1", "site": site, "units": units, "first": first}))
    };
    append(&db, received("wh-a", 2, true, at));
    append(&db, received("wh-a", 1, false, at + MS_PER_DAY));
    append(&db, received("wh-b", 1, true, at + MS_PER_DAY));
    // The other return events count for nothing in the reports.
    for kind in [events::RETURN_REQUESTED, events::RETURN_APPROVED, events::RETURN_REFUNDED, events::RETURN_CLOSED] {
        append(&db, EventDraft::new(kind, at).order(&o, &web).data(json!({"rma": "RMA-1", "site": "wh-a"})));
    }
    append(
        &db,
        EventDraft::new(events::FULFILLMENT_SHIPPED, at).order(&o, &web).data(json!({
        "fulfillment_id": "hub-1.1", "site": "wh-a", "shipped_at_ms": at})),
    );
    let r = report(&db, &period(DAY, DAY + 1)).unwrap();
    assert_eq!((r.total.returns, r.total.units_returned), (2, 4));
    assert_eq!((r.days[0].figures.returns, r.days[0].figures.units_returned), (1, 2));
    assert_eq!((r.days[1].figures.returns, r.days[1].figures.units_returned), (1, 2));
    let a = report(&db, &Period { site: Some("wh-a".into()), ..period(DAY, DAY + 1) }).unwrap();
    assert_eq!((a.total.returns, a.total.units_returned, a.total.returns_rate), (1, 3, Some(1.0)));
}

/// One generated event: kind (created, routed at intake, routed later, cancelled, shipped, delivered,
/// returned, a payment that counts for nothing), day offset, site, channel, units.
type Ev = (usize, u32, usize, usize, u64);

fn draft_of((kind, day, site, channel, units): Ev, n: usize) -> EventDraft {
    let at = u64::from(DAY + day) * MS_PER_DAY + 1_000 * n as u64;
    let site = ["wh-a", "wh-b"][site];
    let channel = Channel::parse(["web", "shop"][channel]).unwrap();
    let o = OrderId::parse(&format!("hub-{n}")).unwrap();
    let lines = json!([{"sku": "A", "qty": units}]);
    let routed = |trigger: &str| {
        json!({"trigger": trigger, "unfilled": [],
               "fulfillments": [{"fulfillment_id": format!("hub-{n}.1"), "site": site, "lines": lines}]})
    };
    let (kind, data) = match kind {
        0 => (events::ORDER_CREATED, json!({"lines": lines})),
        1 => (events::ORDER_ROUTED, routed("intake")),
        2 => (events::ORDER_ROUTED, routed("retry")),
        3 => (events::ORDER_CANCELLED, json!({})),
        4 => (
            events::FULFILLMENT_SHIPPED,
            json!({"fulfillment_id": format!("hub-{n}.1"), "site": site, "shipped_at_ms": at + units * 3_600_000}),
        ),
        5 => (events::ORDER_DELIVERED, json!({"site": site})),
        6 => (events::RETURN_RECEIVED, json!({"rma": "RMA-1", "site": site, "units": units, "first": units % 2 == 0})),
        _ => (events::PAYMENT_CAPTURED, json!({"amount_minor": units})),
    };
    EventDraft::new(kind, at).order(&o, &channel).data(data)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Events appended through one [`events::Log`] per transaction (their figures added to each row once, at
    /// `finish`) report exactly what the same events appended one transaction each report, with the same
    /// sequences: whatever the kinds, rows and transaction boundaries.
    #[test]
    fn a_log_of_many_events_reports_as_one_event_per_transaction(
        evs in proptest::collection::vec((0..8usize, 0..3u32, 0..2usize, 0..2usize, 1..5u64), 1..40),
        cuts in proptest::collection::vec(any::<bool>(), 40),
    ) {
        let (_a, one_by_one) = db();
        let (_b, batched) = db();
        let mut want = Vec::new();
        for (n, e) in evs.iter().enumerate() {
            let w = one_by_one.begin_write().unwrap();
            want.push(events::append(&w, draft_of(*e, n)).unwrap());
            w.commit().unwrap();
        }
        let mut got = Vec::new();
        let mut w = batched.begin_write().unwrap();
        let mut log = events::Log::open(&w).unwrap();
        for (n, e) in evs.iter().enumerate() {
            got.push(log.append(draft_of(*e, n), &mut |_, _| Ok((None, None))).unwrap());
            if cuts[n] {
                log.finish().unwrap();
                w.commit().unwrap();
                w = batched.begin_write().unwrap();
                log = events::Log::open(&w).unwrap();
            }
        }
        log.finish().unwrap();
        w.commit().unwrap();
        prop_assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), want.iter().map(|e| e.seq).collect::<Vec<_>>());
        let p = period(DAY, DAY + 3);
        prop_assert_eq!(report(&batched, &p).unwrap(), report(&one_by_one, &p).unwrap());
        for site in ["wh-a", "wh-b"] {
            let p = Period { site: Some(site.into()), ..period(DAY, DAY + 3) };
            prop_assert_eq!(report(&batched, &p).unwrap(), report(&one_by_one, &p).unwrap());
        }
    }
}
