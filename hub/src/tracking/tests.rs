//! The unit tests of carrier tracking: signatures and bodies of both formats, storing, matching, states,
//! flags, frozen deliveries and the `[carriers]` check.

use super::deliveries::record_frozen;
use super::store::{DELIVER_DUE, UNMATCHED};
use super::*;
use crate::events::watch::FulfillmentSeen;
use crate::events::webhooks::signature_header;
use oms_protocol::domain::{Channel, FulfillmentState, NodeId, OrderId};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde_json::json;

const SECRET: &str = "whsec_test_carrier_secret";

fn carriers() -> CarriersConfig {
    BTreeMap::from([("ups".to_owned(), CarrierWebhook { webhook_secret: SECRET.into(), format: CarrierFormat::Oms })])
}

fn body(id: &str, tracking: &str, status: &str, at: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({"id": id, "tracking_code": tracking, "status": status, "occurred_at_ms": at,
        "description": "at the depot", "extra": {"ignored": true}}))
    .unwrap()
}

fn event(id: &str, tracking: &str, status: &str, at: u64) -> TrackingEvent {
    let b = body(id, tracking, status, at);
    let now = 1_000_000_000;
    check_request(&carriers(), "ups", Signatures::oms(Some(&signature_header(SECRET, now / 1000, &b))), &b, now)
        .unwrap()
        .unwrap()
}

fn db() -> (tempfile::TempDir, redb::Database) {
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("intake.redb")).unwrap();
    crate::events::init(&db).unwrap();
    init(&db).unwrap();
    (dir, db)
}

fn seen(fo: &str, tracking: &str) -> FulfillmentSeen {
    FulfillmentSeen {
        id: OrderId::parse(fo).unwrap(),
        parent: OrderId::parse("hub-1").unwrap(),
        channel: Channel::parse("web").unwrap(),
        site: NodeId::parse("wh-1").unwrap(),
        status: FulfillmentState::Shipped,
        shipment: Some(json!({"carrier": "ups", "tracking": tracking, "parcels": 1})),
        shipped_at_ms: Some(5),
    }
}

fn ship(db: &redb::Database, fo: &str, tracking: &str) -> bool {
    let w = db.begin_write().unwrap();
    let due = on_shipped(&w, &seen(fo, tracking)).unwrap();
    w.commit().unwrap();
    due
}

fn due(db: &redb::Database) -> Vec<String> {
    let r = db.begin_read().unwrap();
    let t = r.open_table(DELIVER_DUE).unwrap();
    t.iter().unwrap().map(|r| r.unwrap().0.value().to_owned()).collect()
}

fn kinds(db: &redb::Database) -> usize {
    let f = crate::events::TypeFilter::default();
    crate::events::page(db, 0, 100, &f, None, 1000).unwrap().events.len()
}

#[test]
fn the_signature_is_checked_before_anything_else_is_read() {
    let now = 1_000_000_000u64;
    let b = body("e1", "1Z1", "in_transit", 1);
    let good = signature_header(SECRET, now / 1000, &b);
    let code = |carrier: &str, sig: Option<&str>, body: &[u8]| {
        check_request(&carriers(), carrier, Signatures::oms(sig), body, now).map(|_| ()).unwrap_err().code
    };
    assert!(check_request(&carriers(), "ups", Signatures::oms(Some(&good)), &b, now).is_ok());
    assert_eq!(code("fedex", Some(&good), &b), "carrier_not_found");
    assert_eq!(code("ups", None, &b), "signature_missing");
    assert_eq!(code("ups", Some("v1=zz"), &b), "signature_malformed");
    let other = signature_header("another secret entirely", now / 1000, &b);
    assert_eq!(code("ups", Some(&other), &b), "signature_mismatch");
    // Tampered: the body changed after signing.
    let tampered = body("e1", "1Z1", "delivered", 1);
    assert_eq!(code("ups", Some(&good), &tampered), "signature_mismatch");
    // Stale: signed more than the replay window ago.
    let old = signature_header(SECRET, now / 1000 - REPLAY_WINDOW_S - 1, &b);
    assert_eq!(code("ups", Some(&old), &b), "signature_stale");
    // Signed but not an event.
    let sign = |b: &[u8]| signature_header(SECRET, now / 1000, b);
    for bad in [
        &b"not json"[..],
        br#"{"id":"e","tracking_code":"t","status":"lost_in_space","occurred_at_ms":1}"#,
        br#"{"id":"","tracking_code":"t","status":"delivered","occurred_at_ms":1}"#,
        br#"{"id":"e","tracking_code":"t\u0007","status":"delivered","occurred_at_ms":1}"#,
        br#"{"id":"e","status":"delivered","occurred_at_ms":1}"#,
        br#"{"id":"e","tracking_code":"t","status":"delivered","occurred_at_ms":-1}"#,
    ] {
        let p = check_request(&carriers(), "ups", Signatures::oms(Some(&sign(bad))), bad, now).map(|_| ()).unwrap_err();
        assert!(p.status == 400 || p.status == 422, "{p:?}");
    }
    let big = vec![b' '; EVENT_BODY_BYTES_MAX + 1];
    assert_eq!(code("ups", Some(&sign(&big)), &big), "body_too_large");
}

#[test]
fn a_replay_changes_nothing_and_an_event_before_its_shipment_is_matched_later() {
    let (_d, db) = db();
    let e = event("e1", "1Z1", "in_transit", 10);
    let s = store(&db, &e).unwrap();
    assert_eq!((s.replayed, s.matched), (false, false), "no shipment yet: waits");
    assert_eq!(kinds(&db), 0, "nothing to report before the match");
    let s = store(&db, &e).unwrap();
    assert!(s.replayed);
    assert_eq!(events_of(&db, "1Z1").unwrap().len(), 1);
    // A delivered before the shipment too; then the shipment arrives and both match, in order.
    store(&db, &event("e2", "1Z1", "delivered", 20)).unwrap();
    assert!(due(&db).is_empty());
    assert!(ship(&db, "hub-1.1", "1Z1"), "the waiting delivery is due now");
    assert_eq!(due(&db), ["hub-1.1"]);
    assert_eq!(kinds(&db), 2, "one tracking.updated per event");
    // Matched events do not match again (a second report of the shipment).
    assert!(!ship(&db, "hub-1.1", "1Z1"));
    assert_eq!(kinds(&db), 2);
    // A replay after the match changes nothing either.
    assert!(store(&db, &event("e2", "1Z1", "delivered", 20)).unwrap().replayed);
    assert_eq!(kinds(&db), 2);
    let r = db.begin_read().unwrap();
    assert_eq!(r.open_table(UNMATCHED).unwrap().len().unwrap(), 0);
}

#[test]
fn a_late_in_transit_does_not_undo_a_delivery_and_exceptions_flag_the_order() {
    let (_d, db) = db();
    ship(&db, "hub-1.1", "1Z9");
    assert!(store(&db, &event("a", "1Z9", "in_transit", 10)).unwrap().matched);
    store(&db, &event("b", "1Z9", "failure", 20)).unwrap();
    let flag = flag_of(&db, "hub-1").unwrap().unwrap();
    assert_eq!((flag.status.as_str(), flag.fulfillment.as_str()), ("failure", "hub-1.1"));
    assert_eq!(flagged(&db, None, 10, None).unwrap().0.len(), 1);
    assert!(flagged(&db, None, 10, Some("marketplace")).unwrap().0.is_empty());
    store(&db, &event("c", "1Z9", "delivered", 30)).unwrap();
    assert!(flag_of(&db, "hub-1").unwrap().is_none(), "delivered clears the flag");
    // Out of order: an in_transit the carrier stamped after the delivery.
    store(&db, &event("d", "1Z9", "in_transit", 40)).unwrap();
    let evs = events_of(&db, "1Z9").unwrap();
    assert_eq!(evs.len(), 4);
    assert_eq!(current_state(&evs), Some("delivered"));
    assert_eq!(due(&db), ["hub-1.1"], "one delivery due, whatever came after");
    assert_eq!(current_state(&[]), None);
}

#[test]
fn waiting_events_are_bounded_per_tracking_number() {
    let (_d, db) = db();
    for i in 0..EVENTS_PER_TRACKING_MAX {
        store(&db, &event(&format!("e{i}"), "T", "in_transit", i as u64)).unwrap();
    }
    assert!(matches!(store(&db, &event("one-more", "T", "in_transit", 1)), Err(TrackingError::TooMany(_))));
    // The waiting ones older than the age bound are forgotten by the next store.
    let mut late = event("late", "U", "in_transit", 1);
    late.received_at_ms += UNMATCHED_AGE_MS + 1;
    store(&db, &late).unwrap();
    let r = db.begin_read().unwrap();
    let left = r.open_table(UNMATCHED).unwrap().len().unwrap();
    assert_eq!(left, (EVENTS_PER_TRACKING_MAX - PRUNE_MAX.min(EVENTS_PER_TRACKING_MAX)) as u64 + 1);
}

const EP_SECRET: &str = "easypost_webhook_secret_0123";

fn ep_carriers() -> CarriersConfig {
    let hook = CarrierWebhook { webhook_secret: EP_SECRET.into(), format: CarrierFormat::Easypost };
    BTreeMap::from([("easypost".to_owned(), hook)])
}

/// An EasyPost `Event` with a `Tracker`, as EasyPost posts it.
fn ep_body(id: &str, tracking: &str, status: &str, at: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"id": id, "object": "Event", "description": "tracker.updated", "mode": "test",
    "created_at": "2026-12-01T00:00:00Z", "previous_attributes": {"status": "unknown"},
    "result": {"id": "trk_1", "object": "Tracker", "mode": "test", "tracking_code": tracking,
        "status": status, "status_detail": "arrived_at_facility", "carrier": "USPS",
        "updated_at": "2026-12-01T00:00:00Z",
        "tracking_details": [
            {"object": "TrackingDetail", "message": "Pre-Shipment Info Sent", "status": "pre_transit",
             "datetime": "2026-11-30T10:00:00Z"},
            {"object": "TrackingDetail", "message": format!("{status} at the facility"), "status": status,
             "datetime": at, "tracking_location": {"city": "Berlin", "country": "DE"}}
        ]}}))
    .unwrap()
}

fn ep_check(body: &[u8], sig: Option<&str>) -> Result<Option<TrackingEvent>, Problem> {
    let sigs = Signatures { oms: None, easypost: sig };
    check_request(&ep_carriers(), "easypost", sigs, body, 1_000_000_000)
}

fn ep_event(id: &str, tracking: &str, status: &str, at: &str) -> TrackingEvent {
    let b = ep_body(id, tracking, status, at);
    ep_check(&b, Some(&easypost_signature(EP_SECRET, &b))).unwrap().unwrap()
}

#[test]
fn easypost_events_are_normalized_and_move_the_fulfillment() {
    let e = ep_event("evt_1", "EZ1", "in_transit", "2026-12-01T12:00:00Z");
    assert_eq!((e.carrier.as_str(), e.id.as_str(), e.tracking.as_str()), ("easypost", "evt_1", "EZ1"));
    assert_eq!(e.status, "in_transit");
    assert_eq!(e.occurred_at_ms, 1_796_126_400_000, "the latest tracking detail's datetime");
    assert_eq!(e.description.as_deref(), Some("in_transit at the facility"));
    let (_d, db) = db();
    ship(&db, "hub-1.1", "EZ1");
    assert!(store(&db, &e).unwrap().matched);
    assert_eq!(current_state(&events_of(&db, "EZ1").unwrap()), Some("in_transit"));
    let d = ep_event("evt_2", "EZ1", "delivered", "2026-12-02T09:30:00Z");
    let s = store(&db, &d).unwrap();
    assert!(s.delivery_due && !s.replayed);
    assert_eq!(current_state(&events_of(&db, "EZ1").unwrap()), Some("delivered"));
    assert_eq!(due(&db), ["hub-1.1"]);
    assert_eq!(kinds(&db), 2);
    // A replay (EasyPost retries with the same event id) changes nothing.
    assert!(store(&db, &d).unwrap().replayed);
    assert_eq!(kinds(&db), 2);
    // Unknown statuses are stored and change no state: no event, no flag, no delivery, no regression.
    for (i, st) in ["unknown", "cancelled", "error", "something_new"].iter().enumerate() {
        let u = ep_event(&format!("evt_u{i}"), "EZ1", st, "2026-12-03T09:30:00Z");
        let s = store(&db, &u).unwrap();
        assert!(s.matched && !s.replayed && !s.delivery_due);
    }
    let evs = events_of(&db, "EZ1").unwrap();
    assert_eq!(evs.len(), 6);
    assert_eq!(current_state(&evs), Some("delivered"));
    assert_eq!(kinds(&db), 2, "no tracking.updated for an unknown status");
    assert!(flag_of(&db, "hub-1").unwrap().is_none());
    // An unknown status alone is no state either; exceptions flag as in the hub's own format.
    ship(&db, "hub-2.1", "EZ2");
    store(&db, &ep_event("evt_3", "EZ2", "unknown", "2026-12-01T12:00:00Z")).unwrap();
    assert_eq!(current_state(&events_of(&db, "EZ2").unwrap()), None);
    store(&db, &ep_event("evt_4", "EZ2", "return_to_sender", "2026-12-01T13:00:00Z")).unwrap();
    assert_eq!(flag_of(&db, "hub-1").unwrap().map(|f| f.status), Some("return_to_sender".to_owned()));
}

#[test]
fn easypost_signatures_and_bodies_are_checked() {
    let b = ep_body("evt_1", "EZ1", "delivered", "2026-12-01T12:00:00Z");
    let good = easypost_signature(EP_SECRET, &b);
    let code = |body: &[u8], sig: Option<&str>| ep_check(body, sig).map(|_| ()).unwrap_err().code;
    assert!(ep_check(&b, Some(&good)).unwrap().is_some());
    assert!(ep_check(&b, Some(&format!("  {good} "))).is_ok(), "surrounding blanks are tolerated");
    assert_eq!(code(&b, None), "signature_missing");
    // The hub's own header does not authenticate an EasyPost carrier.
    let oms = signature_header(EP_SECRET, 1_000_000, &b);
    let p = check_request(&ep_carriers(), "easypost", Signatures::oms(Some(&oms)), &b, 1_000_000_000);
    assert_eq!(p.map(|_| ()).unwrap_err().code, "signature_missing");
    assert_eq!(code(&b, Some("sha256=00")), "signature_malformed");
    assert_eq!(code(&b, Some("hmac-sha256-hex=zz")), "signature_malformed");
    assert_eq!(code(&b, Some("hmac-sha256-hex=abcd")), "signature_malformed");
    assert_eq!(code(&b, Some(&easypost_signature("another secret entirely", &b))), "signature_mismatch");
    let tampered = ep_body("evt_1", "EZ1", "in_transit", "2026-12-01T12:00:00Z");
    assert_eq!(code(&tampered, Some(&good)), "signature_mismatch");
    // Signed but malformed: typed problems.
    let tracker = |id: &str, object: &str, code: &str, status: &str| {
        json!({"id": id, "object": "Event", "description": "tracker.updated",
            "result": {"object": object, "tracking_code": code, "status": status}})
    };
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (json!({"id": "evt_1", "object": "Batch", "description": "tracker.updated"}), "invalid_event"),
        (json!({"id": "evt_1", "object": "Event", "description": "tracker.updated"}), "invalid_event"),
        (tracker("", "Tracker", "EZ1", "delivered"), "invalid_event"),
        (tracker("evt_1", "Shipment", "EZ1", "delivered"), "invalid_event"),
        (tracker("evt_1", "Tracker", "EZ\u{7}", "delivered"), "invalid_event"),
        (tracker("evt_1", "Tracker", "EZ1", ""), "invalid_event"),
    ];
    for (v, want) in cases {
        let body = serde_json::to_vec(&v).unwrap();
        let p = ep_check(&body, Some(&easypost_signature(EP_SECRET, &body))).map(|_| ()).unwrap_err();
        assert_eq!((p.status, p.code), (422, want), "{v}");
    }
    for bad in [&b"{not json"[..], br#"{"object":"Event","description":"tracker.updated"}"#, br#"[]"#] {
        let p = ep_check(bad, Some(&easypost_signature(EP_SECRET, bad))).map(|_| ()).unwrap_err();
        assert!(p.status == 400 || p.status == 422, "{p:?}");
    }
    // Another kind of event: acknowledged, nothing to store.
    let batch = serde_json::to_vec(&json!({"id": "evt_9", "object": "Event", "description": "batch.updated",
        "result": {"object": "Batch"}}))
    .unwrap();
    assert!(ep_check(&batch, Some(&easypost_signature(EP_SECRET, &batch))).unwrap().is_none());
    // A tracker without details: its updated_at, then the status detail's words.
    let bare = serde_json::to_vec(&json!({"id": "evt_8", "object": "Event", "description": "tracker.created",
        "result": {"object": "Tracker", "tracking_code": "EZ8", "status": "pre_transit",
            "status_detail": "label_created", "updated_at": "2026-12-01T12:00:00Z"}}))
    .unwrap();
    let e = ep_check(&bare, Some(&easypost_signature(EP_SECRET, &bare))).unwrap().unwrap();
    assert_eq!((e.occurred_at_ms, e.description.as_deref()), (1_796_126_400_000, Some("label_created")));
}

#[test]
fn a_delivery_for_a_frozen_document_is_recorded_and_reported_once() {
    let (_d, db) = db();
    ship(&db, "hub-1.1", "1Z7");
    let w = db.begin_write().unwrap();
    crate::events::watch::report_in(&w, &seen("hub-1.1", "1Z7"), 6).unwrap();
    w.commit().unwrap();
    store(&db, &event("d", "1Z7", "delivered", 40)).unwrap();
    assert_eq!(due(&db), ["hub-1.1"]);
    let delivered = |db: &redb::Database| {
        let f = crate::events::TypeFilter::default();
        let page = crate::events::page(db, 0, 100, &f, None, 1000).unwrap();
        page.events.iter().filter(|e| e.kind == crate::events::ORDER_DELIVERED).count()
    };
    assert_eq!(delivered(&db), 0);
    let mut f = seen("hub-1.1", "1Z7");
    f.status = FulfillmentState::Delivered;
    for _ in 0..2 {
        let w = db.begin_write().unwrap();
        record_frozen(&w, &f, 40, 50).unwrap();
        w.commit().unwrap();
    }
    assert_eq!(frozen_delivery(&db, "hub-1.1").unwrap(), Some(40));
    assert_eq!(frozen_delivery(&db, "hub-1.2").unwrap(), None);
    assert!(due(&db).is_empty(), "the outbox row goes with the record");
    assert_eq!(delivered(&db), 1, "order.delivered once");
    assert!(crate::events::watch::unfinished(&db).unwrap().is_empty(), "no longer in transit");
}

#[test]
fn the_config_is_checked() {
    assert!(check_config(&carriers()).is_ok());
    let short = BTreeMap::from([(
        "ups".to_owned(),
        CarrierWebhook { webhook_secret: "short".into(), format: CarrierFormat::Oms },
    )]);
    assert!(check_config(&short).is_err());
    let bad = BTreeMap::from([(
        "UPS!".to_owned(),
        CarrierWebhook { webhook_secret: SECRET.into(), format: CarrierFormat::Oms },
    )]);
    assert!(check_config(&bad).is_err());
    assert!(check_config(&ep_carriers()).is_ok());
    let hook = CarrierWebhook { webhook_secret: "ünïcödé_secret_0123".into(), format: CarrierFormat::Easypost };
    assert!(check_config(&BTreeMap::from([("ep".to_owned(), hook)])).is_err(), "easypost secrets are ASCII");
    let toml: CarriersConfig =
        toml::from_str("[ep]\nwebhook_secret = \"0123456789abcdef\"\nformat = \"easypost\"\n").unwrap();
    assert_eq!(toml["ep"].format, CarrierFormat::Easypost);
    assert!(toml::from_str::<CarriersConfig>("[ep]\nwebhook_secret = \"0123456789abcdef\"\nformat = \"x\"\n").is_err());
}
