//! The returns rules over a real `redb` file: what may be returned, the policy's refusals (each writing
//! nothing but its audit row), the service steps, and receipts applied once.

use std::collections::BTreeMap;

use oms_protocol::domain::{Channel, Disposition, Sku};
use oms_protocol::schema::{SiteRmaLine, SiteRmaReceipt};
use oms_service::audit::Actor;
use oms_service::auth::Role;

use super::*;

const DAY: u64 = 86_400_000;
const NOW: u64 = 100 * DAY;

fn actor() -> Actor {
    Actor { key: "svc".into(), role: Role::Service, method: "POST", route: "/v1/orders/{id}/returns".into() }
}

fn db(dir: &std::path::Path) -> Database {
    let db = Database::create(dir.join("t.redb")).unwrap();
    create_tables(&db).unwrap();
    db
}

fn shipped(id: &str, site: &str, units: &[(&str, u64)], delivered: Option<u64>) -> Shipped {
    Shipped {
        id: id.into(),
        site: site.into(),
        units: units.iter().map(|(s, q)| ((*s).to_owned(), *q)).collect::<BTreeMap<_, _>>(),
        returned: BTreeMap::new(),
        shipped_at_ms: Some(NOW - 10 * DAY),
        delivered_at_ms: delivered,
    }
}

fn req(lines: &[(&str, u64)], fulfillment: Option<&str>) -> ReturnRequest {
    ReturnRequest {
        lines: lines
            .iter()
            .map(|(s, q)| RequestLine { sku: (*s).into(), qty: *q, reason: "too small".into() })
            .collect(),
        fulfillment: fulfillment.map(str::to_owned),
    }
}

fn all(db: &Database, r: &Returns) -> Vec<Rma> {
    r.list(db, None, None, None, 1_000).unwrap().0
}

/// Over-return (counting other RMAs), non-returnable SKUs, a closed window (from delivery, or from shipment
/// when no delivery is known) and a return spanning two sites are refused and store nothing; a good request
/// is `requested`, or `approved` under auto-approval.
#[test]
fn refusals_store_nothing_and_requests_count_against_what_shipped() {
    let dir = tempfile::tempdir().unwrap();
    let db = db(dir.path());
    let cfg = ReturnsConfig { window_days: 30, non_returnable_skus: vec!["GIFT".into()], ..Default::default() };
    let r = Returns::new(cfg);
    let web = Channel::parse("web").unwrap();
    let fos = [
        shipped("hub-1.1", "wh-a", &[("A", 2), ("GIFT", 1)], Some(NOW - 5 * DAY)),
        shipped("hub-1.2", "wh-b", &[("B", 1)], None),
    ];
    let ask = |rq: &ReturnRequest, now: u64| r.request(&db, "hub-1", &web, &fos, rq, &actor(), now);

    assert!(matches!(ask(&req(&[("A", 3)], None), NOW), Err(ReturnsError::OverReturn { returnable: 2, .. })));
    assert!(matches!(ask(&req(&[("GIFT", 1)], None), NOW), Err(ReturnsError::NotReturnable(_))));
    assert!(matches!(ask(&req(&[("A", 1), ("B", 1)], None), NOW), Err(ReturnsError::SpansFulfillments)));
    assert!(matches!(ask(&req(&[("C", 1)], None), NOW), Err(ReturnsError::OverReturn { returnable: 0, .. })));
    assert!(matches!(ask(&req(&[], None), NOW), Err(ReturnsError::Invalid(_))));
    // 30 days from delivery (NOW - 5 days) and from shipment (NOW - 10 days) where none is known.
    let late = NOW + 26 * DAY;
    assert!(matches!(ask(&req(&[("A", 1)], None), late), Err(ReturnsError::WindowClosed { from: "delivery", .. })));
    let late = NOW + 21 * DAY;
    assert!(matches!(ask(&req(&[("B", 1)], None), late), Err(ReturnsError::WindowClosed { from: "shipment", .. })));
    assert!(all(&db, &r).is_empty(), "every refusal stored nothing");

    let first = ask(&req(&[("A", 1)], None), NOW).unwrap();
    assert_eq!(
        (first.state, first.fulfillment.as_str(), first.site.as_str()),
        (RmaState::Requested, "hub-1.1", "wh-a")
    );
    // One unit of A is covered by the first RMA: two more are over-return, one fits.
    assert!(matches!(ask(&req(&[("A", 2)], None), NOW), Err(ReturnsError::OverReturn { returnable: 1, .. })));
    let declined = r.step(&db, &first.id, "decline", Some("worn".into()), &actor(), NOW).unwrap();
    assert_eq!(declined.state, RmaState::Declined);
    // A declined RMA covers nothing any more.
    let again = ask(&req(&[("A", 2)], Some("hub-1.1")), NOW).unwrap();
    assert_eq!(again.units(), 2);
    assert_eq!(r.of_order(&db, "hub-1").unwrap().len(), 2);

    let auto = Returns::new(ReturnsConfig { auto_approve: true, ..Default::default() });
    let b = auto.request(&db, "hub-1", &web, &fos, &req(&[("B", 1)], None), &actor(), NOW).unwrap();
    assert_eq!((b.state, b.site.as_str()), (RmaState::Approved, "wh-b"));
}

/// Service steps only from the states that allow them; a receipt is applied once, never past what was
/// approved, and moves the RMA to partially received, then received.
#[test]
fn steps_follow_the_lifecycle_and_receipts_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = db(dir.path());
    let r = Returns::new(ReturnsConfig::default());
    let web = Channel::parse("web").unwrap();
    let fos = [shipped("hub-2.1", "wh-a", &[("A", 3)], Some(NOW))];
    let rma = r.request(&db, "hub-2", &web, &fos, &req(&[("A", 3)], None), &actor(), NOW).unwrap();
    assert!(matches!(r.step(&db, &rma.id, "decline", None, &actor(), NOW), Err(ReturnsError::Invalid(_))));
    let rma = r.step(&db, &rma.id, "approve", None, &actor(), NOW).unwrap();
    assert_eq!(rma.state, RmaState::Approved);
    assert!(matches!(
        r.step(&db, &rma.id, "approve", None, &actor(), NOW),
        Err(ReturnsError::WrongState { state: RmaState::Approved, .. })
    ));

    let receipt = |id: &str, qty: u64, d: Disposition| SiteRmaReceipt {
        id: id.into(),
        rma: rma.id.clone(),
        order: "hub-2.1".into(),
        lines: vec![SiteRmaLine { sku: Sku::parse("A").unwrap(), qty, disposition: d }],
        at_ms: NOW,
    };
    // Another site's receipt is refused.
    assert!(matches!(
        r.apply_receipt(&db, "wh-b", "wh-b/x", &receipt("x", 1, Disposition::Restock), NOW),
        Err(ReturnsError::RmaNotFound(_))
    ));
    let one = r.apply_receipt(&db, "wh-a", "wh-a/hub-2.1/1", &receipt("hub-2.1/1", 1, Disposition::Scrap), NOW);
    assert_eq!(one.unwrap().unwrap().state, RmaState::PartiallyReceived);
    assert!(
        r.apply_receipt(&db, "wh-a", "wh-a/hub-2.1/1", &receipt("hub-2.1/1", 1, Disposition::Scrap), NOW)
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        r.step(&db, &rma.id, "cancel", None, &actor(), NOW),
        Err(ReturnsError::WrongState { state: RmaState::PartiallyReceived, .. })
    ));
    let two = r.apply_receipt(&db, "wh-a", "wh-a/hub-2.1/2", &receipt("hub-2.1/2", 5, Disposition::Restock), NOW);
    let two = two.unwrap().unwrap();
    assert_eq!(
        (two.state, two.received(), two.lines[0].restocked, two.lines[0].scrapped),
        (RmaState::Received, 3, 2, 1)
    );
    assert_eq!(two.receipts.len(), 2);
    assert!(r.open(&db, 10).unwrap().iter().any(|o| o.id == rma.id), "received is still open (refund to come)");

    let s = Returns::new(ReturnsConfig::default());
    let other = s.request(&db, "hub-2", &web, &fos, &req(&[("A", 1)], None), &actor(), NOW);
    assert!(matches!(other, Err(ReturnsError::OverReturn { returnable: 0, .. })), "all three are covered");
}

/// Each RMA change appends its `return.*` event in its own transaction, in order; a refusal appends none;
/// the reports count the RMA once (on its first units) and every unit received.
#[test]
fn return_events_follow_the_rma_and_feed_the_reports() {
    let dir = tempfile::tempdir().unwrap();
    let db = db(dir.path());
    crate::events::init(&db).unwrap();
    let r = Returns::new(ReturnsConfig::default());
    let web = Channel::parse("web").unwrap();
    let fos = [shipped("hub-3.1", "wh-a", &[("A", 3)], Some(NOW))];
    let rma = r.request(&db, "hub-3", &web, &fos, &req(&[("A", 3)], None), &actor(), NOW).unwrap();
    assert!(r.request(&db, "hub-3", &web, &fos, &req(&[("A", 1)], None), &actor(), NOW).is_err());
    r.step(&db, &rma.id, "approve", None, &actor(), NOW).unwrap();
    let receipt = |id: &str, qty: u64| SiteRmaReceipt {
        id: id.into(),
        rma: rma.id.clone(),
        order: "hub-3.1".into(),
        lines: vec![SiteRmaLine { sku: Sku::parse("A").unwrap(), qty, disposition: Disposition::Restock }],
        at_ms: NOW,
    };
    r.apply_receipt(&db, "wh-a", "wh-a/1", &receipt("1", 1), NOW).unwrap().unwrap();
    r.apply_receipt(&db, "wh-a", "wh-a/2", &receipt("2", 2), NOW + DAY).unwrap().unwrap();
    // A second RMA declined, a third cancelled: events, but no return in the reports.
    let fos2 = [shipped("hub-4.1", "wh-b", &[("B", 2)], Some(NOW))];
    let d = r.request(&db, "hub-4", &web, &fos2, &req(&[("B", 1)], None), &actor(), NOW).unwrap();
    r.step(&db, &d.id, "decline", Some("worn".into()), &actor(), NOW).unwrap();
    let c = r.request(&db, "hub-4", &web, &fos2, &req(&[("B", 1)], None), &actor(), NOW).unwrap();
    r.step(&db, &c.id, "cancel", None, &actor(), NOW).unwrap();

    let all = crate::events::TypeFilter::parse(&["return.*"]).unwrap();
    let got = crate::events::page(&db, 0, 100, &all, None, 1_000).unwrap().events;
    let kinds: Vec<(&str, &str)> =
        got.iter().map(|e| (e.kind.as_str(), e.data["rma"].as_str().unwrap_or(""))).collect();
    let (a, b, cc) = (rma.id.as_str(), d.id.as_str(), c.id.as_str());
    assert_eq!(
        kinds,
        [
            ("return.requested", a),
            ("return.approved", a),
            ("return.received", a),
            ("return.received", a),
            ("return.requested", b),
            ("return.declined", b),
            ("return.requested", cc),
            ("return.cancelled", cc),
        ]
    );
    assert!(got.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!((got[2].data["units"].as_u64(), got[2].data["first"].as_bool()), (Some(1), Some(true)));
    assert_eq!((got[3].data["units"].as_u64(), got[3].data["first"].as_bool()), (Some(2), Some(false)));
    assert_eq!((got[0].order_id.as_deref(), got[0].channel.as_deref()), (Some("hub-3"), Some("web")));
    assert_eq!(got[5].data["reason"], "worn");

    let day = crate::reports::day_of(NOW);
    let p = crate::reports::Period { from: day, to: day + 1, site: None, channel: None };
    let rep = crate::reports::report(&db, &p).unwrap();
    assert_eq!((rep.total.returns, rep.total.units_returned), (1, 3), "one RMA, three units");
    assert_eq!((rep.days[0].figures.returns, rep.days[0].figures.units_returned), (1, 1));
    assert_eq!((rep.days[1].figures.returns, rep.days[1].figures.units_returned), (0, 2));
    assert_eq!(rep.sites.iter().map(|s| (s.name.as_str(), s.figures.returns)).collect::<Vec<_>>(), [("wh-a", 1)]);
}

/// Units the site took back without an RMA are not returnable again; units received against an RMA are not
/// counted twice (once as covered, once as returned at the site).
#[test]
fn returns_taken_at_the_site_without_an_rma_count_against_what_may_be_returned() {
    let dir = tempfile::tempdir().unwrap();
    let db = db(dir.path());
    let r = Returns::new(ReturnsConfig { auto_approve: true, ..Default::default() });
    let web = Channel::parse("web").unwrap();
    let mut f = shipped("hub-5.1", "wh-a", &[("A", 3)], Some(NOW));
    f.returned.insert("A".into(), 1);
    assert_eq!(returnable(&f, "A", &[]), 2);
    let fos = [f.clone()];
    assert!(matches!(
        r.request(&db, "hub-5", &web, &fos, &req(&[("A", 3)], None), &actor(), NOW),
        Err(ReturnsError::OverReturn { returnable: 2, .. })
    ));
    let rma = r.request(&db, "hub-5", &web, &fos, &req(&[("A", 1)], None), &actor(), NOW).unwrap();
    let receipt = SiteRmaReceipt {
        id: "1".into(),
        rma: rma.id.clone(),
        order: "hub-5.1".into(),
        lines: vec![SiteRmaLine { sku: Sku::parse("A").unwrap(), qty: 1, disposition: Disposition::Restock }],
        at_ms: NOW,
    };
    let rma = r.apply_receipt(&db, "wh-a", "wh-a/1", &receipt, NOW).unwrap().unwrap();
    // The site now counts 2 returned: 1 without an RMA, 1 against it.
    f.returned.insert("A".into(), 2);
    assert_eq!(returnable(&f, "A", std::slice::from_ref(&rma)), 1);
}
