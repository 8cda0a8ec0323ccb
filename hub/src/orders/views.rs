//! What the order answers show: the hub order with its fulfillments, lines and merged timeline
//! ([`HubOrderView`]), a channel's listing, and the customer's tracking view ([`CustomerView`]).

use super::*;

/// A channel key's listing: the hub orders of its channel, in id order.
pub fn channel_orders(
    hub: &Hub,
    channel: &Channel,
    after: Option<&str>,
    limit: usize,
) -> Result<ChannelOrders, Problem> {
    let (orders, next_after) = hub.intake.channel_orders(channel, after, limit)?;
    let orders = orders
        .iter()
        .map(|o| ChannelOrder {
            id: o.id.clone(),
            channel: o.draft.channel.clone(),
            external_ref: o.draft.external_ref.clone(),
            created_at_ms: o.created_at_ms,
            cancel_requested_at_ms: o.cancel_requested_at_ms,
        })
        .collect();
    Ok(ChannelOrders { channel: channel.clone(), orders, next_after })
}

/// A channel key's page of `GET /v1/orders`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChannelOrders {
    /// The key's channel.
    pub channel: Channel,
    /// Its hub orders, by id.
    pub orders: Vec<ChannelOrder>,
    /// Where the next page starts (`after`), or `null` on the last page.
    pub next_after: Option<String>,
}

/// One order of a channel's page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChannelOrder {
    /// `hub-<seq>`.
    pub id: OrderId,
    /// The channel.
    pub channel: Channel,
    /// The channel's reference.
    pub external_ref: String,
    /// When taken, ms.
    pub created_at_ms: u64,
    /// When a cancellation was asked for, ms.
    pub cancel_requested_at_ms: Option<u64>,
}

/// Status and progress of one fulfillment order as last synced.
pub(super) struct FoState {
    pub(super) status: Option<FulfillmentState>,
    progress: Option<schema::Progress>,
    /// The site froze the finished fulfillment order at this time.
    frozen_at_ms: Option<u64>,
}

pub(super) fn fo_state(hub: &Hub, id: &OrderId) -> FoState {
    let view = {
        let docs = hub.docs.lock();
        schema::order_doc(id).and_then(|n| docs.get(&n).and_then(|d| schema::read_order(&d, n.as_str()).ok()))
    };
    let frozen_at_ms = view.as_ref().and_then(|v| v.frozen_at_ms);
    let mut progress = view.as_ref().and_then(|v| v.progress.clone());
    if let (Some(v), Some(p)) = (&view, progress.as_mut()) {
        frozen_delivered(hub, v, p);
    }
    FoState { status: progress.as_ref().map(|p| p.status), progress, frozen_at_ms }
}

/// When the carrier delivered a fulfillment its site had frozen as shipped (so its document cannot say so):
/// the hub's record ([`crate::tracking::frozen_delivery`]) or the hub's key that reached the document as the
/// site froze it. None for any other document.
pub(crate) fn carrier_delivered_frozen(hub: &Hub, v: &schema::OrderView) -> Option<u64> {
    let shipped = v.progress.as_ref().is_some_and(|p| p.status == FulfillmentState::Shipped);
    if v.frozen_at_ms.is_none() || !shipped {
        return None;
    }
    v.carrier_delivered_at_ms.or_else(|| {
        crate::tracking::frozen_delivery(hub.intake.db(), v.id.as_str())
            .inspect_err(|e| tracing::warn!(fulfillment = %v.id, error = %e, "cannot read a frozen delivery"))
            .ok()
            .flatten()
    })
}

/// Shows in `p` (the progress of `v`) the carrier's delivery of a fulfillment frozen as shipped: `delivered`,
/// with its timeline entry.
fn frozen_delivered(hub: &Hub, v: &schema::OrderView, p: &mut schema::Progress) {
    if let Some(at_ms) = carrier_delivered_frozen(hub, v) {
        p.status = FulfillmentState::Delivered;
        p.timeline.push(oms_protocol::records::TimelineEntry {
            at_ms,
            status: FulfillmentState::Delivered,
            note: "delivered by the carrier (after the site froze the order)".into(),
        });
    }
}

pub(super) fn order_view(hub: &Hub, o: &HubOrder) -> HubOrderView {
    let mut v = order_view_with(o, |id| fo_state(hub, id));
    crate::tracking::with_tracking(hub, &mut v);
    v
}

impl FoState {
    /// A fulfillment order its site has not answered yet.
    pub(super) fn assigned() -> FoState {
        FoState { status: None, progress: None, frozen_at_ms: None }
    }
}

/// The view of `o`, with each fulfillment order's state from `state`.
pub(super) fn order_view_with(o: &HubOrder, state: impl Fn(&OrderId) -> FoState) -> HubOrderView {
    let mut fos = Vec::new();
    let mut timeline = Vec::new();
    let (mut shipped_units, mut placed_units, mut open_fos, mut delivered_all) = (0u64, 0u64, 0usize, true);
    let mut frozen_all = !o.fulfillments.is_empty();
    let mut per_sku: BTreeMap<String, (u64, u64)> = BTreeMap::new(); // placed, shipped
    // Units of fulfillments a line cancel may still ask of their sites (open, no cancel asked yet).
    let mut open_units: BTreeMap<String, u64> = BTreeMap::new();
    // The order ships when its last live fulfillment does.
    let mut promised_ship_by_ms: Option<u64> = None;
    for f in &o.fulfillments {
        let st = state(&f.id);
        if f.released.is_none()
            && let Some(p) = &f.promise
        {
            promised_ship_by_ms = promised_ship_by_ms.max(Some(p.ship_by_ms));
        }
        let (fid, site) = (f.id.as_str(), f.site.as_str());
        timeline.push(TimelineItem::at_site(f.assigned_at_ms, "assigned", fid, site, format!("routed to {}", f.site)));
        if let Some(p) = &st.progress {
            for t in &p.timeline {
                timeline.push(TimelineItem::at_site(t.at_ms, t.status.as_str(), fid, site, t.note.clone()));
            }
        }
        frozen_all &= st.frozen_at_ms.is_some();
        let live = f.released.is_none();
        if live {
            for l in &f.lines {
                let e = per_sku.entry(l.sku.to_string()).or_default();
                e.0 += u64::from(l.qty);
                placed_units += u64::from(l.qty);
            }
            if let Some(p) = &st.progress {
                for l in &p.lines {
                    per_sku.entry(l.sku.to_string()).or_default().1 += u64::from(l.shipped);
                    shipped_units += u64::from(l.shipped);
                }
            }
            if !matches!(st.status, Some(FulfillmentState::Delivered)) {
                delivered_all = false;
            }
            if !matches!(
                st.status,
                Some(
                    FulfillmentState::Shipped
                        | FulfillmentState::Delivered
                        | FulfillmentState::Cancelled
                        | FulfillmentState::Rejected
                )
            ) {
                open_fos += 1;
                if f.site_cancel.is_none() {
                    for l in &f.lines {
                        *open_units.entry(l.sku.to_string()).or_default() += u64::from(l.qty);
                    }
                }
            }
        }
        fos.push(FulfillmentView {
            id: f.id.clone(),
            site: f.site.clone(),
            lines: f.lines.clone(),
            assigned_at_ms: f.assigned_at_ms,
            status: st.status.map_or("assigned", |s| s.as_str()),
            shipment: st.progress.as_ref().and_then(|p| p.shipment.clone()),
            released: f.released.clone(),
            site_cancel: f.site_cancel.as_ref().map(|c| SiteCancelView {
                at_ms: c.at_ms,
                then: c.then,
                reason: c.reason.clone(),
            }),
            frozen_at_ms: st.frozen_at_ms,
            promised_ship_by_ms: f.promise.as_ref().map(|p| p.ship_by_ms),
            promised_ship_by: f.promise.as_ref().and_then(|p| shipping::rfc3339(p.ship_by_ms)),
            services: f.promise.as_ref().map(|p| p.services.clone()).unwrap_or_default(),
            tracking_status: None,
            tracking: None,
        });
    }
    sort_timeline(&mut timeline);
    let unfilled: u64 = o.unfilled.iter().map(|l| u64::from(l.qty)).sum();
    let status = if o.cancel_requested_at_ms.is_some() {
        if open_fos == 0 && shipped_units == 0 {
            "cancelled"
        } else if open_fos == 0 {
            "partially_cancelled"
        } else {
            "cancel_requested"
        }
    } else if placed_units == 0 {
        "backordered"
    } else if delivered_all && unfilled == 0 {
        "delivered"
    } else if open_fos == 0 && unfilled == 0 && shipped_units > 0 {
        "shipped"
    } else if shipped_units > 0 {
        "partially_shipped"
    } else if unfilled > 0 {
        "partially_backordered"
    } else {
        "in_fulfillment"
    };
    let lines = o
        .draft
        .lines
        .iter()
        .map(|l| {
            let (placed, shipped) = per_sku.get(l.sku.as_str()).copied().unwrap_or_default();
            let waiting = o.unfilled.iter().filter(|u| u.sku == l.sku).map(|u| u64::from(u.qty)).sum::<u64>();
            let at_sites = open_units.get(l.sku.as_str()).copied().unwrap_or(0);
            let cancellable = if o.cancel_requested_at_ms.is_some() { 0 } else { waiting + at_sites };
            HubLineView { sku: l.sku.clone(), qty: l.qty, placed, shipped, unfilled: waiting, cancellable }
        })
        .collect();
    HubOrderView {
        id: o.id.clone(),
        origin: HUB_ORIGIN,
        channel: o.draft.channel.clone(),
        external_ref: o.draft.external_ref.clone(),
        created_at_ms: o.created_at_ms,
        status,
        lines,
        order: o.draft.clone(),
        fulfillments: fos,
        unfilled: o.unfilled.clone(),
        cancel_requested_at_ms: o.cancel_requested_at_ms,
        cancelled_unfilled: o.cancelled_unfilled.clone(),
        avoid_sites: o.avoid_sites.clone(),
        timeline,
        cancel_reason: o.cancel_reason.clone(),
        tracking_token: o.tracking_token.clone(),
        tracking_url: o.tracking_token.as_ref().map(|t| format!("/v1/track/{t}")),
        promised_ship_by_ms,
        promised_ship_by: promised_ship_by_ms.and_then(shipping::rfc3339),
        // Every fulfillment is finished and frozen at its site, and nothing waits for a site: the order's
        // history does not change any more.
        frozen: frozen_all && o.unfilled.is_empty(),
        carrier_exception: None,
        payment: None,
        rmas: None,
    }
}

/// The example hub order of the document's `POST /v1/orders` and `GET /v1/orders/{id}` answers: the
/// example order body taken, routed to one site, not shipped yet.
pub fn hub_order_example() -> Value {
    json!({
        "id": "hub-42", "origin": "hub", "channel": "web", "external_ref": "web-100234",
        "created_at_ms": 1_767_225_600_000u64, "status": "in_fulfillment",
        "lines": [{"sku": "TSHIRT-RED-M", "qty": 2, "placed": 2, "shipped": 0, "unfilled": 0}],
        "order": oms_service::openapi::order_example(),
        "fulfillments": [{"id": "hub-42.1", "site": "wh-berlin", "lines": [{"sku": "TSHIRT-RED-M", "qty": 2}],
            "assigned_at_ms": 1_767_225_600_010u64, "status": "accepted", "shipment": null, "released": null,
            "frozen_at_ms": null, "promised_ship_by_ms": 1_767_283_200_000u64,
            "promised_ship_by": "2026-01-01T16:00:00Z",
            "services": [{"carrier": "dhl", "service": "parcel", "ship_by_ms": 1_767_283_200_000u64,
                "estimated_delivery": "2026-01-02"}]}],
        "unfilled": [], "cancel_requested_at_ms": null, "cancelled_unfilled": [],
        "timeline": [
            {"at_ms": 1_767_225_600_010u64, "fulfillment": "hub-42.1", "site": "wh-berlin", "status": "assigned",
             "note": "routed to wh-berlin"},
            {"at_ms": 1_767_225_601_000u64, "fulfillment": "hub-42.1", "site": "wh-berlin", "status": "accepted",
             "note": "accepted"}],
        "cancel_reason": null, "tracking_token": "trk_4f9c2a7d1e8b", "tracking_url": "/v1/track/trk_4f9c2a7d1e8b",
        "promised_ship_by_ms": 1_767_283_200_000u64, "promised_ship_by": "2026-01-01T16:00:00Z", "frozen": false,
        "carrier_exception": null
    })
}

/// A hub order as `GET /v1/orders/{id}` (and `POST /v1/orders`, the search) shows it: status across its
/// fulfillment orders, per-line figures, one timeline merged from every site, and (as far as they were read)
/// its carriers' tracking, payment and returns.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HubOrderView {
    /// `hub-<seq>`.
    pub id: OrderId,
    /// Always `hub`.
    pub origin: &'static str,
    /// The channel.
    pub channel: Channel,
    /// The channel's own reference.
    pub external_ref: String,
    /// When taken, ms.
    pub created_at_ms: u64,
    /// `in_fulfillment`, `partially_shipped`, `shipped`, `delivered`, `backordered`, `partially_backordered`,
    /// `cancel_requested`, `partially_cancelled` or `cancelled`.
    pub status: &'static str,
    /// Per line: ordered, placed at sites, shipped and waiting for stock.
    pub lines: Vec<HubLineView>,
    /// The order as taken.
    pub order: oms_protocol::domain::OrderDraft,
    /// Its fulfillment orders, one per site part.
    pub fulfillments: Vec<FulfillmentView>,
    /// Units waiting for stock.
    pub unfilled: Vec<crate::routing::SkuQty>,
    /// When a cancellation was asked for, ms.
    pub cancel_requested_at_ms: Option<u64>,
    /// Units cancelled: before any site had them, or by a line cancel a site confirmed.
    pub cancelled_unfilled: Vec<crate::routing::SkuQty>,
    /// Sites this order is never placed at again (service moved it away from them).
    pub avoid_sites: Vec<oms_protocol::domain::NodeId>,
    /// What happened, oldest first: routing, each site's steps, carriers, payment, notes and returns.
    pub timeline: Vec<TimelineItem>,
    /// Why it was cancelled.
    pub cancel_reason: Option<String>,
    /// The customer's tracking token.
    pub tracking_token: Option<String>,
    /// The customer's tracking page, `/v1/track/<token>`.
    pub tracking_url: Option<String>,
    /// When the last live fulfillment promised to ship, ms.
    pub promised_ship_by_ms: Option<u64>,
    /// The same, RFC 3339.
    pub promised_ship_by: Option<String>,
    /// Every fulfillment is finished and frozen at its site and nothing waits: its history does not change.
    pub frozen: bool,
    /// A carrier's failure or return to sender, when its flag could be read (`null`: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carrier_exception: Option<Option<crate::tracking::Flag>>,
    /// Its payment, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment: Option<crate::money::PaymentView>,
    /// Its returns (RMAs), when they could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rmas: Option<Vec<RmaBrief>>,
}

/// One line of a hub order.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HubLineView {
    /// SKU.
    pub sku: oms_protocol::domain::Sku,
    /// Units ordered.
    pub qty: u32,
    /// Units placed at live fulfillments.
    pub placed: u64,
    /// Units shipped.
    pub shipped: u64,
    /// Units waiting for stock.
    pub unfilled: u64,
    /// Units a line cancel may still take: waiting for stock, or at a site that has not shipped them and was
    /// asked for no cancel (0 once the order is being cancelled).
    pub cancellable: u64,
}

/// A cancel asked of one site for its fulfillment, as the order view shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SiteCancelView {
    /// When it was asked, ms.
    pub at_ms: u64,
    /// What becomes of the units once the site confirms.
    pub then: crate::intake::AfterSiteCancel,
    /// Why.
    pub reason: String,
}

/// One fulfillment order of a hub order.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FulfillmentView {
    /// `hub-<seq>.<n>`.
    pub id: OrderId,
    /// The site.
    pub site: oms_protocol::domain::NodeId,
    /// Units per SKU.
    pub lines: Vec<crate::routing::SkuQty>,
    /// When assigned, ms.
    pub assigned_at_ms: u64,
    /// `assigned` until the site answers, then its state.
    pub status: &'static str,
    /// The carrier hand-over, once shipped.
    pub shipment: Option<oms_protocol::records::Shipment>,
    /// Why its units went back to routing (the site rejected or cancelled it).
    pub released: Option<String>,
    /// A cancel asked of its site alone (service's), if any.
    pub site_cancel: Option<SiteCancelView>,
    /// When the site froze it, ms.
    pub frozen_at_ms: Option<u64>,
    /// The site's promised cut-off, ms.
    pub promised_ship_by_ms: Option<u64>,
    /// The same, RFC 3339.
    pub promised_ship_by: Option<String>,
    /// Per carrier service: cut-off and estimated delivery.
    pub services: Vec<oms_protocol::shipping::ServicePromise>,
    /// The carrier's current state of the shipment (`null`: no event yet); with a tracked shipment only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking_status: Option<Option<String>>,
    /// The carrier's events; with a tracked shipment only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking: Option<Vec<crate::tracking::TrackingEvent>>,
}

/// One entry of an order's timeline. `at_ms` and `status` always; the rest as the kind of entry has them:
/// a site's step (`fulfillment`, `site`, `note`), a carrier's event (`carrier_<status>`: the carrier as
/// `site`), a payment's (`payment_<status>`: `amount_minor`, `document`), a note (`by`), an RMA's
/// (`rma_<state>`: `rma`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TimelineItem {
    /// When, ms.
    pub at_ms: u64,
    /// What happened.
    pub status: String,
    /// The fulfillment order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fulfillment: Option<String>,
    /// The site (or the carrier).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// What happened, for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Who wrote a note.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The RMA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rma: Option<String>,
    /// A payment step's amount, minor units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount_minor: Option<u64>,
    /// A payment step's invoice or credit note (`null`: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<Option<String>>,
}

impl TimelineItem {
    /// An entry with `at_ms` and `status` only.
    pub fn new(at_ms: u64, status: impl Into<String>) -> TimelineItem {
        TimelineItem {
            at_ms,
            status: status.into(),
            fulfillment: None,
            site: None,
            note: None,
            by: None,
            rma: None,
            amount_minor: None,
            document: None,
        }
    }

    /// An entry of fulfillment `fulfillment` at `site` with a `note`.
    pub fn at_site(at_ms: u64, status: impl Into<String>, fulfillment: &str, site: &str, note: String) -> TimelineItem {
        TimelineItem {
            fulfillment: Some(fulfillment.to_owned()),
            site: Some(site.to_owned()),
            note: Some(note),
            ..TimelineItem::new(at_ms, status)
        }
    }
}

/// An RMA of an order, as its view shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RmaBrief {
    /// `RMA-<seq>`.
    pub id: String,
    /// Where it stands.
    pub state: crate::returns::RmaState,
    /// The fulfillment whose units come back.
    pub fulfillment: String,
    /// The site that receives them.
    pub site: String,
    /// Lines.
    pub lines: Vec<crate::returns::RmaLine>,
    /// Its credit notes.
    pub credit_notes: Vec<String>,
    /// Refunded, minor units.
    pub refunded_minor: u64,
    /// Why the refund failed, if it did.
    pub refund_error: Option<String>,
}

/// Sorts a timeline by time, keeping the order of entries at the same time.
pub(crate) fn sort_timeline(t: &mut [TimelineItem]) {
    t.sort_by_key(|t| t.at_ms);
}

/// What a customer may see of their order, as the tracking page reads it ([`customer_view`]).
pub(crate) fn tracking_view(hub: &Hub, o: &HubOrder) -> Value {
    json!(customer_view(hub, o))
}

/// What a customer may see of their order: status, lines, shipments with the carrier's tracking number and
/// a timeline of customer-facing steps. No site, fulfillment id, routing, address, price or other order.
pub(crate) fn customer_view(hub: &Hub, o: &HubOrder) -> CustomerView {
    let full = order_view(hub, o);
    let lines =
        full.lines.iter().map(|l| CustomerLine { sku: l.sku.clone(), qty: l.qty, shipped: l.shipped }).collect();
    let shipments = full
        .fulfillments
        .iter()
        .filter_map(|f| {
            let s = f.shipment.as_ref()?;
            Some(CustomerShipment {
                carrier: s.carrier.clone(),
                tracking: s.tracking.clone(),
                parcels: s.parcels,
                status: f.status,
                tracking_status: f.tracking_status.clone().flatten(),
            })
        })
        .collect();
    // Routing steps (`assigned`, a site's `rejected`) are the hub's business, not the customer's.
    let mut timeline = vec![CustomerStep { at_ms: o.created_at_ms, status: "received".into() }];
    timeline.extend(
        full.timeline
            .iter()
            .filter(|t| !matches!(t.status.as_str(), "assigned" | "rejected"))
            .map(|t| CustomerStep { at_ms: t.at_ms, status: t.status.clone() }),
    );
    if let Some(at) = o.cancel_requested_at_ms {
        timeline.push(CustomerStep { at_ms: at, status: "cancel_requested".into() });
    }
    timeline.sort_by_key(|t| t.at_ms);
    // Per carrier service of each live fulfillment: when it leaves and when it should arrive.
    let deliveries = o
        .fulfillments
        .iter()
        .filter(|f| f.released.is_none())
        .filter_map(|f| f.promise.as_ref())
        .flat_map(|p| p.services.iter())
        .map(|s| CustomerDelivery {
            carrier: s.carrier.clone(),
            service: s.service.clone(),
            ship_by: shipping::rfc3339(s.ship_by_ms),
            estimated_delivery: s.estimated_delivery.clone(),
        })
        .collect();
    CustomerView {
        external_ref: o.draft.external_ref.clone(),
        created_at_ms: o.created_at_ms,
        status: full.status,
        lines,
        shipments,
        timeline,
        promised_ship_by: full.promised_ship_by,
        deliveries,
    }
}

/// What `GET /v1/track/{token}` shows a customer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerView {
    /// The channel's reference of the order.
    pub external_ref: String,
    /// When taken, ms.
    pub created_at_ms: u64,
    /// The order's status, as `GET /v1/orders/{id}` says it.
    pub status: &'static str,
    /// Units ordered and shipped per line.
    pub lines: Vec<CustomerLine>,
    /// Each shipment with its carrier's tracking number.
    pub shipments: Vec<CustomerShipment>,
    /// The customer-facing steps, oldest first.
    pub timeline: Vec<CustomerStep>,
    /// When the order should ship, RFC 3339.
    pub promised_ship_by: Option<String>,
    /// Per carrier service: when it leaves and should arrive.
    pub deliveries: Vec<CustomerDelivery>,
}

/// One line of a customer's order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerLine {
    /// SKU.
    pub sku: oms_protocol::domain::Sku,
    /// Units ordered.
    pub qty: u32,
    /// Units shipped.
    pub shipped: u64,
}

/// One shipment of a customer's order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerShipment {
    /// The carrier.
    pub carrier: String,
    /// Its tracking number.
    pub tracking: String,
    /// Parcels.
    pub parcels: u32,
    /// The part's status.
    pub status: &'static str,
    /// The carrier's last word on it.
    pub tracking_status: Option<String>,
}

/// One customer-facing step.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerStep {
    /// When, ms.
    pub at_ms: u64,
    /// What happened.
    pub status: String,
}

/// When a carrier service leaves and should arrive.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerDelivery {
    /// The carrier.
    pub carrier: String,
    /// Its service.
    pub service: String,
    /// The cut-off, RFC 3339.
    pub ship_by: Option<String>,
    /// The estimated delivery date, `YYYY-MM-DD`.
    pub estimated_delivery: String,
}
