//! Test helpers shared by the demand tests and by the tests of [`crate::docs`] and [`crate::forecast_api`]:
//! a hub document set built from a list of orders and stock balances; and a whole hub over a directory
//! ([`hub_over`]) for the tests of the API, money, purchasing and the intake's effects.

use oms_protocol::domain::{Balance, FulfillmentState, NodeId, OrderDraft, OrderId, Sku};
use oms_protocol::records::{FulfillmentLine, OrderRecord, TimelineEntry};
use oms_protocol::schema;
use oms_protocol::wire::DocId;
use oms_sync::DocDb;

use super::history::{Basis, DAY_MS, DemandIndex};
use super::planning::{Replenishment, RunParams, replenishment};
use super::stock::StockIndex;
use crate::docs::HubDocs;
use crate::forecast_config::{ForecastConfig, Override};

/// The epoch day tests take as today (2024-10-04).
pub(crate) const TODAY: u64 = 20_000;

/// An order for [`hub_docs`]: (site, seq, day, hour, status, lines).
pub(crate) type TestOrder<'a> = (&'a str, u64, u64, u64, FulfillmentState, &'a [(&'a str, u32)]);

/// An order draft with `lines` of `(sku, qty)` at 1.00 EUR each, shipped to Berlin.
fn draft(lines: &[(&str, u32)]) -> OrderDraft {
    let lines: Vec<_> = lines
        .iter()
        .map(|(s, q)| serde_json::json!({"sku": s, "qty": q, "unit_price_minor": 100, "currency": "EUR"}))
        .collect();
    serde_json::from_value(serde_json::json!({
        "external_ref": "web-1", "channel": "web", "lines": lines,
        "ship_to": {"name": "Ada", "line1": "1 Main St", "city": "Berlin", "postcode": "10115",
                    "country": "DE", "lat": 52.5, "lon": 13.4}
    }))
    .unwrap()
}

/// Hours from acceptance to carrier hand-over of the shipped and delivered orders of [`hub_docs`].
pub(crate) const SHIP_AFTER_HOURS: u64 = 30;

/// The document and record of an order of `site` numbered `seq`, accepted at `created_at_ms` with `(sku,
/// qty)` lines and node status `status`. `shipped` says when every unit was handed over, as which timeline
/// status (`shipped` or `delivered`); with `Some((None, _))` the units shipped but the timeline has no day.
pub(crate) fn order_record(
    site: &str,
    seq: u64,
    created_at_ms: u64,
    status: FulfillmentState,
    lines: &[(&str, u32)],
    shipped: Option<(Option<FulfillmentState>, u64)>,
) -> (DocId, NodeId, OrderRecord) {
    let node = NodeId::parse(site).unwrap();
    let id = OrderId::new(&node, seq);
    let progress_lines = lines
        .iter()
        .map(|&(sku, qty)| FulfillmentLine {
            sku: Sku::parse(sku).unwrap(),
            qty,
            picked: shipped.is_some().then_some(qty),
            shipped: if shipped.is_some() { qty } else { 0 },
            returned: 0,
        })
        .collect();
    let mut timeline =
        vec![TimelineEntry { at_ms: created_at_ms, status: FulfillmentState::Accepted, note: String::new() }];
    if let Some((Some(as_status), at_ms)) = shipped {
        timeline.push(TimelineEntry { at_ms, status: as_status, note: String::new() });
    }
    let rec = OrderRecord {
        id: id.clone(),
        site: node.clone(),
        status,
        order: draft(lines),
        lines: progress_lines,
        wave: None,
        parcels: None,
        shipment: None,
        returns: vec![],
        timeline,
        created_at_ms,
    };
    (schema::order_doc(&id).unwrap(), node, rec)
}

/// A hub document set with the given orders `(site, seq, day, hour, status, lines)` and stock. Orders
/// `shipped` or `delivered` shipped every unit [`SHIP_AFTER_HOURS`] after acceptance.
pub(crate) fn hub_docs(dir: &std::path::Path, orders: &[TestOrder], stock: &[(&str, &str, u64)]) -> HubDocs {
    let mut db = DocDb::open(&dir.join("hub.redb"), vec![7; 16], 100_000).unwrap();
    for &(site, seq, day, hour, status, lines) in orders {
        let created_at_ms = day * DAY_MS + hour * 3_600_000;
        let shipped = matches!(status, FulfillmentState::Shipped | FulfillmentState::Delivered)
            .then_some((Some(FulfillmentState::Shipped), created_at_ms + SHIP_AFTER_HOURS * 3_600_000));
        let (name, node, rec) = order_record(site, seq, created_at_ms, status, lines, shipped);
        schema::write_order(db.get_or_create(&name).unwrap(), &node, &rec, 1).unwrap();
        db.mark_dirty(&name);
    }
    for &(site, sku, on_hand) in stock {
        let node = NodeId::parse(site).unwrap();
        let name = schema::stock_doc(&node).unwrap();
        let b = Balance { on_hand, reserved: 0, staged: 0 };
        schema::write_stock(db.get_or_create(&name).unwrap(), &node, &Sku::parse(sku).unwrap(), &b, 1).unwrap();
        db.mark_dirty(&name);
    }
    HubDocs::new(db).unwrap()
}

/// A hub over `dir` with no session (tenant `acme`): its documents `docs` (e.g. [`hub_docs`]), `intake.redb`
/// and purchasing in `dir`, `money` ([`money`] for the defaults) and `tuning`.
pub(crate) fn hub_over(
    dir: &std::path::Path,
    docs: HubDocs,
    money: crate::money::Money,
    tuning: crate::server::ServerTuning,
) -> crate::server::Hub {
    let intake = crate::intake::Intake::open(&dir.join(crate::intake::INTAKE_DB_FILE), Default::default()).unwrap();
    let purchasing = crate::purchasing::Purchasing::new(Default::default(), dir, intake.db()).unwrap();
    crate::server::Hub::new(docs, intake, money, purchasing, "acme", vec![9; 16], tuning).unwrap()
}

/// `draft` placed by `hub`'s intake (idempotency key `key`, at `now_ms`) with `site` in Berlin the only
/// reachable site, where the hub first holds rights to `rights` units of each `(sku, units)` (the site holds
/// as many again).
pub(crate) fn place_at(
    hub: &crate::server::Hub,
    site: &NodeId,
    rights: &[(&str, u64)],
    key: &str,
    draft: OrderDraft,
    now_ms: u64,
) -> crate::intake::Placed {
    use oms_protocol::escrow::{EscrowCounter, Party};
    let counters = rights.iter().map(|&(sku, units)| {
        let mut c = EscrowCounter::new(Sku::parse(sku).unwrap());
        c.add(Party::Site, 2 * units).unwrap();
        c.grant_lease(Party::Site, Party::Hub, u64::MAX / 2, 100).unwrap();
        c.transfer(Party::Site, Party::Hub, units, 0).unwrap();
        c
    });
    hub.intake.merge_site(site, counters.collect(), 1).unwrap();
    let info = schema::SiteInfo {
        name: "A".into(),
        lat: 52.0,
        lon: 13.0,
        priority: 0,
        capacity_per_day: 1_000,
        region: "de".into(),
    };
    let facts =
        [crate::intake::SiteFacts { id: site.clone(), info, reachable: true, last_heard_age_ms: 0, schedule: None }];
    let actor = oms_service::audit::Actor {
        key: "shop".into(),
        role: oms_service::auth::Role::Service,
        method: "POST",
        route: "/v1/orders".into(),
    };
    hub.intake.place(key, draft, &facts, &actor, now_ms).unwrap()
}

/// The record a site writes into fulfillment `f`'s document once it shipped every unit (at 7 ms).
pub(crate) fn shipped(f: &crate::intake::NewFulfillment) -> OrderRecord {
    let lines = f.draft.lines.iter().map(|l| FulfillmentLine {
        sku: l.sku.clone(),
        qty: l.qty,
        picked: Some(l.qty),
        shipped: l.qty,
        returned: 0,
    });
    OrderRecord {
        id: f.id.clone(),
        site: f.site.clone(),
        status: FulfillmentState::Shipped,
        order: f.draft.clone(),
        lines: lines.collect(),
        wave: None,
        parcels: None,
        shipment: None,
        returns: vec![],
        timeline: vec![TimelineEntry { at_ms: 7, status: FulfillmentState::Shipped, note: String::new() }],
        created_at_ms: f.assigned_at_ms,
    }
}

/// Money with the default payments and tax configuration (no provider).
pub(crate) fn money() -> crate::money::Money {
    crate::money::Money::new(Default::default(), Default::default()).unwrap()
}

/// The replenishment run of `idx` and `stock` on the ordered basis with the default configuration.
pub(crate) fn run_default(idx: &DemandIndex, stock: &StockIndex) -> Replenishment {
    let config = ForecastConfig::default();
    replenishment(
        idx,
        stock,
        &RunParams {
            basis: Basis::Ordered,
            config: &config,
            query: &Override::default(),
            supply: &crate::demand::planning::Supply::default(),
        },
    )
}
