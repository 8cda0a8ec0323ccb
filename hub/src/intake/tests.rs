//! The intake's unit tests: placing, waiting units, keys, tracking tokens, search, bounded starts.

use super::*;
use oms_protocol::escrow::{EscrowCounter, Party};
use oms_protocol::schema::SiteInfo;

fn draft(ext: &str) -> OrderDraft {
    draft_of(ext, "web")
}

fn draft_of(ext: &str, channel: &str) -> OrderDraft {
    serde_json::from_value(serde_json::json!({
        "external_ref": ext, "channel": channel,
        "lines": [{"sku": "A", "qty": 1, "unit_price_minor": 100, "currency": "EUR"}],
        "ship_to": {"name": "C", "line1": "1", "city": "B", "postcode": "1", "country": "DE", "lat": 52.0, "lon": 13.0}
    }))
    .unwrap()
}

fn actor() -> Actor {
    Actor { key: "ops".into(), role: oms_service::auth::Role::Admin, method: "POST", route: "/v1/orders".into() }
}

#[test]
fn unplaceable_orders_wait_and_keys_expire_after_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let intake = Intake::open(&dir.path().join(INTAKE_DB_FILE), RoutingPolicy::default()).unwrap();
    // No site holds rights: the order is taken and waits (backorder policy), nothing assigned.
    let t0 = 1_000_000;
    let first = intake.place("k", draft("a"), &[], &actor(), t0).unwrap();
    assert!(first.created && first.order.fulfillments.is_empty());
    assert_eq!(first.order.unfilled.len(), 1);
    assert_eq!(intake.open_orders(10), vec![first.order.id.to_string()]);
    // Same key: replay; another body: refused.
    assert!(!intake.place("k", draft("a"), &[], &actor(), t0 + 1).unwrap().created);
    assert!(matches!(intake.place("k", draft("b"), &[], &actor(), t0 + 2), Err(IntakeError::KeyReused(_))));
    // After the retention, a later write forgets the key; the same key is a new order.
    let later = t0 + IDEMPOTENCY_RETENTION_MS + 10;
    intake.place("other", draft("x"), &[], &actor(), later).unwrap();
    let again = intake.place("k", draft("b"), &[], &actor(), later + 1).unwrap();
    assert!(again.created);
    assert_ne!(again.order.id, first.order.id);
}

/// A line cancel of an order no site holds takes units from those waiting for stock: more is refused and
/// changes nothing but the audit row; what it takes is never routed later (the order leaves the open work
/// when none wait).
#[test]
fn a_line_cancel_takes_waiting_units_and_they_are_never_routed() {
    let dir = tempfile::tempdir().unwrap();
    let intake = Intake::open(&dir.path().join(INTAKE_DB_FILE), RoutingPolicy::default()).unwrap();
    let mut d = draft("a");
    d.lines[0].qty = 3;
    let placed = intake.place("k", d, &[], &actor(), 1_000).unwrap().order;
    let id = placed.id.to_string();
    let a = |qty: u32| vec![SkuQty { sku: oms_protocol::domain::Sku::parse("A").unwrap(), qty }];
    let none = BTreeSet::new();
    let e = intake.cancel_units(&id, None, &a(4), Some("x"), &none, &actor(), 1_001).unwrap_err();
    assert!(matches!(e, IntakeError::NotWaiting { requested: 4, waiting: 3, .. }), "{e:?}");
    assert_eq!(intake.order(&id).unwrap().unwrap(), placed, "a refusal changes nothing");
    let other = Channel::parse("shop").unwrap();
    let e = intake.cancel_units(&id, Some(&other), &a(1), None, &none, &actor(), 1_002).unwrap_err();
    assert!(matches!(e, IntakeError::NotFound(_)), "another channel's order is not found");
    let (o, asked) = intake.cancel_units(&id, None, &a(2), Some("x"), &none, &actor(), 1_003).unwrap();
    assert!(asked.is_empty(), "no site holds any of it");
    assert_eq!((o.unfilled.clone(), o.cancelled_unfilled.clone(), o.cancel_requested_at_ms), (a(1), a(2), None));
    assert_eq!(intake.open_orders(10), vec![id.clone()], "one unit still waits");
    let (o, _) = intake.cancel_units(&id, None, &a(1), Some("x"), &none, &actor(), 1_004).unwrap();
    assert!(o.unfilled.is_empty() && o.cancelled_unfilled == a(3));
    assert!(intake.open_orders(10).is_empty(), "nothing waits: never routed again");
    drop(intake);
    let intake = Intake::open(&dir.path().join(INTAKE_DB_FILE), RoutingPolicy::default()).unwrap();
    assert!(intake.open_orders(10).is_empty(), "nor after a start");
    let outcomes: Vec<String> = intake.audit_page(0, 100).unwrap().0.into_iter().map(|e| e.outcome).collect();
    assert_eq!(outcomes[1..], ["units_not_waiting", "order_not_found", "ok", "ok"], "{outcomes:?}");
}

#[test]
fn keys_are_scoped_to_the_channel_and_a_legacy_key_still_replays() {
    let dir = tempfile::tempdir().unwrap();
    let intake = Intake::open(&dir.path().join(INTAKE_DB_FILE), RoutingPolicy::default()).unwrap();
    let a = intake.place("k", draft_of("a", "web"), &[], &actor(), 1).unwrap();
    // The same key from another channel is that channel's own: a second order, not a replay or a 409.
    let b = intake.place("k", draft_of("a", "marketplace"), &[], &actor(), 2).unwrap();
    assert!(a.created && b.created);
    assert_ne!(a.order.id, b.order.id);
    let again = intake.place("k", draft_of("a", "web"), &[], &actor(), 3).unwrap();
    assert_eq!((again.created, &again.order.id), (false, &a.order.id));
    assert!(matches!(intake.place("k", draft_of("z", "web"), &[], &actor(), 4), Err(IntakeError::KeyReused(_))));

    // A record from before the scoping: the bare key. Move `old`'s record there, as an upgrade finds it.
    let old = intake.place("old", draft_of("o", "web"), &[], &actor(), 5).unwrap();
    let w = intake.core.db.begin_write().unwrap();
    {
        let mut idem = w.open_table(IDEM).unwrap();
        let scoped = scoped_key(&old.order.draft.channel, "old");
        let rec = idem.remove(scoped.as_str()).unwrap().unwrap().value().to_vec();
        idem.insert("old", rec.as_slice()).unwrap();
    }
    w.commit().unwrap();
    let replay = intake.place("old", draft_of("o", "web"), &[], &actor(), 6).unwrap();
    assert_eq!((replay.created, &replay.order.id), (false, &old.order.id), "the upgrade lost no idempotency");
    assert!(matches!(intake.place("old", draft_of("p", "web"), &[], &actor(), 7), Err(IntakeError::KeyReused(_))));
    let other = intake.place("old", draft_of("p", "marketplace"), &[], &actor(), 8).unwrap();
    assert!(other.created, "another channel's legacy key does not bind this one");

    // Each channel lists its own orders only.
    let web = Channel::parse("web").unwrap();
    let (list, next) = intake.channel_orders(&web, None, 10).unwrap();
    assert_eq!(list.iter().map(|o| o.id.clone()).collect::<Vec<_>>(), vec![a.order.id.clone(), old.order.id.clone()]);
    assert!(next.is_none());
    let (page, next) = intake.channel_orders(&web, None, 1).unwrap();
    assert_eq!((page.len(), next.as_deref()), (1, Some(a.order.id.as_str())));
    let (rest, _) = intake.channel_orders(&web, next.as_deref(), 10).unwrap();
    assert_eq!(rest.iter().map(|o| o.id.clone()).collect::<Vec<_>>(), vec![old.order.id.clone()]);

    // Audit: every call the intake handled, refusals with their code.
    let (rows, _) = intake.audit_page(0, 100).unwrap();
    let outcomes: Vec<&str> = rows.iter().map(|e| e.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        ["ok", "ok", "ok", "idempotency_key_reused", "ok", "ok", "idempotency_key_reused", "ok"],
        "{rows:?}"
    );
    assert_eq!(rows[0].target.as_deref(), Some(a.order.id.as_str()));
    assert_eq!(rows[0].key, "ops");
}

#[test]
fn tracking_tokens_find_their_order_only_and_cancel_is_confined_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let intake = Intake::open(&dir.path().join(INTAKE_DB_FILE), RoutingPolicy::default()).unwrap();
    let a = intake.place("k", draft_of("a", "web"), &[], &actor(), 1).unwrap().order;
    let b = intake.place("k", draft_of("b", "marketplace"), &[], &actor(), 2).unwrap().order;
    let (ta, tb) = (a.tracking_token.clone().unwrap(), b.tracking_token.clone().unwrap());
    assert!(tracking_token_well_formed(&ta) && ta != tb);
    assert_eq!(intake.order_by_tracking_token(&ta).unwrap().unwrap().id, a.id);
    assert_eq!(intake.order_by_tracking_token(&tb).unwrap().unwrap().id, b.id);
    let mut guess = ta.clone().into_bytes();
    guess[0] = if guess[0] == b'0' { b'1' } else { b'0' };
    assert!(intake.order_by_tracking_token(std::str::from_utf8(&guess).unwrap()).unwrap().is_none());
    assert!(intake.order_by_tracking_token(a.id.as_str()).unwrap().is_none());
    assert!(intake.order_by_tracking_token("").unwrap().is_none());

    let web = Channel::parse("web").unwrap();
    let before = intake.audit_page(0, 100).unwrap().0.len();
    let e = intake.request_cancel(b.id.as_str(), Some(&web), None, &actor(), 3).unwrap_err();
    assert!(matches!(e, IntakeError::NotFound(_)));
    assert!(intake.order(b.id.as_str()).unwrap().unwrap().cancel_requested_at_ms.is_none(), "untouched");
    let done = intake.request_cancel(a.id.as_str(), Some(&web), Some("changed mind"), &actor(), 4).unwrap();
    assert_eq!((done.cancel_requested_at_ms, done.cancel_reason.as_deref()), (Some(4), Some("changed mind")));
    let rows = intake.audit_page(before as u64, 100).unwrap().0;
    let got: Vec<(Option<&str>, &str)> = rows.iter().map(|e| (e.target.as_deref(), e.outcome.as_str())).collect();
    assert_eq!(got, [(Some(b.id.as_str()), "order_not_found"), (Some(a.id.as_str()), "ok")]);
}

#[test]
fn orders_from_before_the_channel_index_are_indexed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(INTAKE_DB_FILE);
    let id = {
        let intake = Intake::open(&path, RoutingPolicy::default()).unwrap();
        let id = intake.place("k", draft_of("a", "web"), &[], &actor(), 1).unwrap().order.id;
        // As an older hub left it: no index, no mark.
        let w = intake.core.db.begin_write().unwrap();
        w.delete_table(BY_CHANNEL).unwrap();
        w.open_table(META).unwrap().remove(BY_CHANNEL_BUILT).unwrap();
        w.commit().unwrap();
        id
    };
    let intake = Intake::open(&path, RoutingPolicy::default()).unwrap();
    let (list, _) = intake.channel_orders(&Channel::parse("web").unwrap(), None, 10).unwrap();
    assert_eq!(list.iter().map(|o| o.id.clone()).collect::<Vec<_>>(), vec![id]);
}
#[test]
fn service_finds_orders_by_email_phone_reference_and_id_also_in_files_from_before_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(INTAKE_DB_FILE);
    let with_contact = |ext: &str, email: &str, phone: &str| {
        let mut d = draft_of(ext, "web");
        d.contact.email = Some(email.into());
        d.contact.phone = Some(phone.into());
        d
    };
    let (a, b, c) = {
        let intake = Intake::open(&path, RoutingPolicy::default()).unwrap();
        let a = intake.place("k1", with_contact("SHOP-1", "Ann@Example.com", "+49 30 1234567"), &[], &actor(), 1);
        let b = intake.place("k2", with_contact("SHOP-2", "ann@example.com", "030/123-4567"), &[], &actor(), 2);
        let c = intake.place("k3", with_contact("SHOP-3", "bob@example.com", "12"), &[], &actor(), 3);
        let a = a.unwrap().order.id;
        // As an older hub left the file: no contact index, no mark.
        let w = intake.core.db.begin_write().unwrap();
        w.delete_table(BY_CONTACT).unwrap();
        w.open_table(META).unwrap().remove(BY_CONTACT_BUILT).unwrap();
        w.commit().unwrap();
        (a, b.unwrap().order.id, c.unwrap().order.id)
    };
    let intake = Intake::open(&path, RoutingPolicy::default()).unwrap();
    let ids = |q: &str| intake.search(q, 10).unwrap().into_iter().map(|o| o.id.to_string()).collect::<Vec<_>>();
    assert_eq!(ids(" ANN@example.COM "), [b.to_string(), a.to_string()], "any case, newest first");
    assert_eq!(ids("+49 30 1234567"), [a.to_string()]);
    assert_eq!(ids("0301234567"), [b.to_string()], "digits only, whatever the punctuation");
    assert_eq!(ids("SHOP-3"), [c.to_string()]);
    assert_eq!(ids(c.as_str()), [c.to_string()]);
    assert!(ids("12").is_empty(), "too few digits for a phone number, and no such reference");
    assert!(ids("nobody@example.com").is_empty());
    assert!(ids("").is_empty());
    assert_eq!(intake.search("ann@example.com", 1).unwrap().len(), 1, "the limit holds");
}

/// One reachable site in Berlin shipping `capacity_per_day`.
fn one_site(site: &NodeId, capacity_per_day: u32) -> Vec<SiteFacts> {
    vec![SiteFacts {
        id: site.clone(),
        info: SiteInfo { name: "s".into(), lat: 52.0, lon: 13.0, priority: 0, capacity_per_day, region: "de".into() },
        reachable: true,
        last_heard_age_ms: 0,
        schedule: None,
    }]
}

/// Service's "route now": with no rights anywhere it places nothing and says so in the audit trail; once
/// the hub holds rights it places the waiting units at once (before the watcher's next pass), audited;
/// an unknown order is refused and audited.
#[test]
fn routing_waiting_units_at_a_persons_asking_is_audited_either_way() {
    let dir = tempfile::tempdir().unwrap();
    let intake = Intake::open(&dir.path().join(INTAKE_DB_FILE), RoutingPolicy::default()).unwrap();
    let site = NodeId::parse("wh-1").unwrap();
    let facts = one_site(&site, 1_000);
    let waiting = intake.place("w", draft("w"), &facts, &actor(), 1).unwrap().order;
    assert!(waiting.fulfillments.is_empty(), "no rights yet: it waits");
    assert!(intake.reroute_by(waiting.id.as_str(), &facts, &actor(), 2).unwrap().is_none());
    let mut c = EscrowCounter::new(Sku::parse("A").unwrap());
    c.add(Party::Site, 5).unwrap();
    c.grant_lease(Party::Site, Party::Hub, u64::MAX / 2, 100).unwrap();
    c.transfer(Party::Site, Party::Hub, 5, 0).unwrap();
    lock(&intake.core.state).escrow.insert((site.clone(), c.sku().clone()), c);
    let (o, effects) = intake.reroute_by(waiting.id.as_str(), &facts, &actor(), 3).unwrap().unwrap();
    assert_eq!((o.fulfillments.len(), o.unfilled.len(), effects.fulfillments.len()), (1, 0, 1));
    assert!(o.decisions.last().is_some_and(|d| d.trigger.starts_with("asked by ")), "{:?}", o.decisions);
    let e = intake.reroute_by("hub-0000009999", &facts, &actor(), 4).unwrap_err();
    assert!(matches!(e, IntakeError::NotFound(_)), "{e:?}");
    let outcomes: Vec<String> = intake.audit_page(0, 100).unwrap().0.into_iter().map(|e| e.outcome).collect();
    assert_eq!(outcomes[1..], ["nothing_placeable", "ok", "order_not_found"], "{outcomes:?}");
}

#[test]
fn a_start_reads_the_open_work_not_every_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(INTAKE_DB_FILE);
    let site = NodeId::parse("wh-1").unwrap();
    let facts = one_site(&site, 1_000);
    let (shipped, placed, waiting) = {
        let intake = Intake::open(&path, RoutingPolicy::default()).unwrap();
        let mut c = EscrowCounter::new(Sku::parse("A").unwrap());
        c.add(Party::Site, 2).unwrap();
        c.grant_lease(Party::Site, Party::Hub, u64::MAX / 2, 100).unwrap();
        c.transfer(Party::Site, Party::Hub, 2, 0).unwrap();
        lock(&intake.core.state).escrow.insert((site.clone(), c.sku().clone()), c);
        let place = |k: &str| intake.place(k, draft(k), &facts, &actor(), 1).unwrap().order;
        let (shipped, placed, waiting) = (place("a"), place("b"), place("c"));
        assert_eq!((shipped.fulfillments.len(), placed.fulfillments.len(), waiting.fulfillments.len()), (1, 1, 0));
        intake.finished(&[shipped.fulfillments[0].id.clone()]).unwrap();
        // The shipped order's record is unreadable now: a start that read every order would fail on it.
        let w = intake.core.db.begin_write().unwrap();
        w.open_table(ORDERS).unwrap().insert(shipped.id.as_str(), b"not json".as_slice()).unwrap();
        w.commit().unwrap();
        (shipped, placed, waiting)
    };
    let intake = Intake::open(&path, RoutingPolicy::default()).unwrap();
    assert_eq!(intake.open_orders(10), vec![waiting.id.to_string()]);
    let live: Vec<OrderId> = intake.live_fulfillments().unwrap().into_iter().map(|f| f.id).collect();
    assert_eq!(live, vec![placed.fulfillments[0].id.clone()]);
    assert!(intake.order(shipped.id.as_str()).is_err(), "the record was damaged, and never read at start");
}

#[test]
fn a_start_with_many_finished_orders_reads_only_the_open_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(INTAKE_DB_FILE);
    let site = NodeId::parse("wh-1").unwrap();
    let facts = one_site(&site, 100_000);
    const FINISHED: usize = 500;
    {
        let intake = Intake::open(&path, RoutingPolicy::default()).unwrap();
        let mut c = EscrowCounter::new(Sku::parse("A").unwrap());
        c.add(Party::Site, 10_000).unwrap();
        c.grant_lease(Party::Site, Party::Hub, u64::MAX / 2, 100_000).unwrap();
        c.transfer(Party::Site, Party::Hub, 10_000, 0).unwrap();
        lock(&intake.core.state).escrow.insert((site.clone(), c.sku().clone()), c);
        let mut done = Vec::new();
        for n in 0..FINISHED + 3 {
            let o = intake.place(&format!("k{n}"), draft(&format!("k{n}")), &facts, &actor(), 1).unwrap().order;
            if n < FINISHED {
                done.push(o.fulfillments[0].id.clone());
            }
        }
        intake.finished(&done).unwrap();
    }
    let intake = Intake::open(&path, RoutingPolicy::default()).unwrap();
    assert_eq!(intake.start_reads(), 0, "opening read no order record");
    assert_eq!(intake.live_fulfillments().unwrap().len(), 3);
    assert_eq!(intake.start_reads(), 3, "only the three open orders were read, not the {FINISHED} finished ones");
}
