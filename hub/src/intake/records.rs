//! The intake's records and their encoding: the customer order ([`HubOrder`]) with its fulfillments, routing
//! decisions and site cancels, the idempotency record, what routing knows of a site and what a write produced;
//! their JSON and postcard codecs, and the units arithmetic of splits and line cancels.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use oms_protocol::domain::{NodeId, OrderDraft, OrderId, OrderLine};
use oms_protocol::escrow::EscrowCounter;
use oms_protocol::schema::SiteInfo;
use oms_service::storage::StorageError;
use serde::{Deserialize, Serialize};

use super::*;
use crate::routing::{RoutingDecision, SkuQty};

/// One site's part of a customer order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Fulfillment {
    /// The fulfillment order id (`hub-<seq>.<n>`), also its document `order/<id>`.
    pub id: OrderId,
    /// The site.
    pub site: NodeId,
    /// Units per SKU.
    pub lines: Vec<SkuQty>,
    /// When it was assigned.
    pub assigned_at_ms: u64,
    /// Set when the site rejected or cancelled it and its units went back to routing.
    pub released: Option<String>,
    /// What the site promised when it was assigned: ship-by and, per carrier service, estimated delivery.
    #[serde(default)]
    pub promise: Option<oms_protocol::shipping::SitePromise>,
    /// A cancel asked of this site alone ([`Intake::request_site_cancel`]), and what becomes of the units
    /// once the site gives them back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_cancel: Option<SiteCancel>,
}

/// What becomes of a fulfillment's units once its site confirms a cancel asked of that site alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AfterSiteCancel {
    /// They are cancelled: the customer no longer wants them (`order.lines_cancelled` when the site confirms).
    Cancel,
    /// They go back to routing, and this order is never placed at that site again.
    Reroute,
}

/// A cancel asked of one site for its fulfillment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SiteCancel {
    /// When it was asked.
    pub at_ms: u64,
    /// What becomes of the units.
    pub then: AfterSiteCancel,
    /// Why (required: service gives one, and the audit trail keeps it).
    pub reason: String,
    /// Only these units are cancelled (a line cancel); the rest of the fulfillment is placed again, the site
    /// not excluded. `None`: all of them, as `then` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<SkuQty>>,
}

/// A routing decision as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DecisionRecord {
    /// When.
    pub at_ms: u64,
    /// Why routing ran: `intake`, `retry`, or `released by <site>: <state>`.
    pub trigger: String,
    /// The decision and its explanation.
    pub decision: RoutingDecision,
}

/// A customer order taken by the hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HubOrder {
    /// `hub-<seq>`.
    pub id: OrderId,
    /// The order as the channel sent it.
    pub draft: OrderDraft,
    /// When it was taken.
    pub created_at_ms: u64,
    /// The fulfillment orders, in the order they were made.
    pub fulfillments: Vec<Fulfillment>,
    /// Units not placed at any site yet (backordered or held).
    pub unfilled: Vec<SkuQty>,
    /// Routing decisions (the first and the latest [`DECISIONS_MAX`]).
    pub decisions: Vec<DecisionRecord>,
    /// The customer asked to cancel.
    pub cancel_requested_at_ms: Option<u64>,
    /// Units dropped from `unfilled` by the cancellation.
    pub cancelled_unfilled: Vec<SkuQty>,
    /// Why it was cancelled, when the caller said (customer service must).
    #[serde(default)]
    pub cancel_reason: Option<String>,
    /// Sites this order is never placed at again: a re-route away from them was asked
    /// ([`AfterSiteCancel::Reroute`]). At most one per fulfillment the order had.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub avoid_sites: Vec<NodeId>,
    /// The customer's tracking token (`GET /v1/track/{token}`); none for orders taken before tokens existed.
    ///
    /// A random 256-bit token stored with the order, not an HMAC of its id under a hub secret: it needs no
    /// secret file to create, guard and rotate, says nothing about the order id (ids are sequential, so they
    /// would reveal volume), and one order's link can be replaced without touching any other. The lookup is
    /// by its SHA-256 (table `tracking`), so the database's key comparisons never run on the token itself,
    /// and the stored token is compared in constant time.
    #[serde(default)]
    pub tracking_token: Option<String>,
}

impl HubOrder {
    /// Units still waiting to be placed, unless the order is being cancelled.
    pub fn wants_routing(&self) -> bool {
        self.cancel_requested_at_ms.is_none() && !self.unfilled.is_empty() && self.fulfillments.len() < FULFILLMENTS_MAX
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct IdemRecord {
    pub(super) body_sha256: [u8; 32],
    pub(super) order: String,
}

/// What routing needs to know about a site, gathered from its stock document and connection.
#[derive(Debug, Clone)]
pub struct SiteFacts {
    /// The site.
    pub id: NodeId,
    /// What it published.
    pub info: SiteInfo,
    /// Connected now.
    pub reachable: bool,
    /// Since the hub last heard from it.
    pub last_heard_age_ms: u64,
    /// Its shipping schedule, compiled; none when it published none.
    pub schedule: Option<Arc<oms_protocol::shipping::Schedule>>,
}

/// A new fulfillment document to write.
#[derive(Debug, Clone)]
pub struct NewFulfillment {
    /// Its id.
    pub id: OrderId,
    /// The customer order.
    pub parent: OrderId,
    /// The site.
    pub site: NodeId,
    /// The site's part of the order.
    pub draft: OrderDraft,
    /// When it was assigned (its record's `assigned_at_ms`): the document's `created_at_ms`, so that the
    /// document is a function of the committed record alone and a start builds it again byte for byte.
    pub assigned_at_ms: u64,
}

impl NewFulfillment {
    /// The document of fulfillment `f` of `order`: what its placement writes, a start rebuilds and a replayed
    /// request writes again. The one place a record becomes a document's input, so that a rebuild is the
    /// site's copy hash for hash (see `orders::effects::build_orders`).
    pub fn of(order: &HubOrder, f: &Fulfillment) -> NewFulfillment {
        NewFulfillment {
            id: f.id.clone(),
            parent: order.id.clone(),
            site: f.site.clone(),
            draft: part_of(&order.draft, &f.lines),
            assigned_at_ms: f.assigned_at_ms,
        }
    }
}

/// What a write produced, for the documents.
#[derive(Debug, Default)]
pub struct Effects {
    /// Fulfillment documents to create.
    pub fulfillments: Vec<NewFulfillment>,
    /// Escrow counters the hub changed, to publish in `escrow/<site>`.
    pub escrow: Vec<(NodeId, EscrowCounter)>,
}

/// The result of [`Intake::place`].
#[derive(Debug)]
pub struct Placed {
    /// The order.
    pub order: HubOrder,
    /// False when an idempotent replay returned the original.
    pub created: bool,
    /// What to write into documents.
    pub effects: Effects,
    /// True once `effects` are written into the hub's documents by the writer's [`EffectsSink`] (see
    /// [`Intake::start`]); false leaves that to the caller.
    pub written: bool,
}

pub(super) fn enc_json<T: Serialize>(v: &T) -> Result<Vec<u8>, IntakeError> {
    serde_json::to_vec(v).map_err(|e| IntakeError::Storage(Arc::new(StorageError::encode("a JSON record", e))))
}

pub(super) fn decode_order(bytes: &[u8]) -> Result<HubOrder, IntakeError> {
    serde_json::from_slice(bytes).map_err(|e| IntakeError::Corrupt { table: "orders", detail: e.to_string() })
}

pub(super) fn decode_idem(bytes: &[u8]) -> Result<IdemRecord, IntakeError> {
    postcard::from_bytes(bytes).map_err(|e| IntakeError::Corrupt { table: "idempotency", detail: e.to_string() })
}

pub(super) fn postcard_enc<T: Serialize>(v: &T) -> Result<Vec<u8>, IntakeError> {
    postcard::to_allocvec(v).map_err(|e| IntakeError::Storage(Arc::new(StorageError::encode("a record", e))))
}

/// The draft of one site's part: the customer's draft with only the assigned units.
pub fn part_of(draft: &OrderDraft, lines: &[SkuQty]) -> OrderDraft {
    let mut part = draft.clone();
    part.lines = lines
        .iter()
        .filter_map(|l| {
            let first = draft.lines.iter().find(|o| o.sku == l.sku)?;
            Some(OrderLine { sku: l.sku.clone(), qty: l.qty, ..first.clone() })
        })
        .collect();
    part
}

/// `lines` less `part`, per SKU (none below zero), without the SKUs left at zero.
pub(super) fn minus_units(lines: &[SkuQty], part: &[SkuQty]) -> Vec<SkuQty> {
    let mut out: Vec<SkuQty> = lines.to_vec();
    for p in part {
        if let Some(u) = out.iter_mut().find(|u| u.sku == p.sku) {
            u.qty = u.qty.saturating_sub(p.qty);
        }
    }
    out.retain(|u| u.qty > 0);
    out
}

pub(super) fn add_units(into: &mut Vec<SkuQty>, lines: &[SkuQty]) {
    for l in lines {
        match into.iter_mut().find(|u| u.sku == l.sku) {
            Some(u) => u.qty = u.qty.saturating_add(l.qty),
            None => into.push(l.clone()),
        }
    }
}

/// A line cancel decided: the order with its waiting units taken, those units, and per fulfillment the units
/// to ask of its site.
type TakenUnits = (HubOrder, Vec<SkuQty>, BTreeMap<OrderId, Vec<SkuQty>>);

/// Decides a line cancel ([`Intake::cancel_units`]) on `order`: the units taken from `unfilled` (moved to
/// `cancelled_unfilled` in the returned order) and, per open fulfillment not in `closed`, the units to ask of
/// its site; or [`IntakeError::NotWaiting`] naming the first line that cannot be cancelled in full.
pub(super) fn take_units(
    mut order: HubOrder,
    lines: &[SkuQty],
    closed: &BTreeSet<OrderId>,
) -> Result<TakenUnits, IntakeError> {
    let cancelling = order.cancel_requested_at_ms.is_some();
    let mut waiting_taken = Vec::new();
    let mut asks: BTreeMap<OrderId, Vec<SkuQty>> = BTreeMap::new();
    for l in lines {
        let waiting = if cancelling { 0 } else { order.unfilled.iter().find(|u| u.sku == l.sku).map_or(0, |u| u.qty) };
        let from_waiting = waiting.min(l.qty);
        let mut rest = l.qty - from_waiting;
        let mut at_sites = 0u64;
        for f in order
            .fulfillments
            .iter()
            .filter(|f| !cancelling && f.released.is_none() && f.site_cancel.is_none() && !closed.contains(&f.id))
        {
            let held = f.lines.iter().filter(|x| x.sku == l.sku).map(|x| x.qty).sum::<u32>();
            let asked_already: u32 =
                asks.get(&f.id).map_or(0, |a| a.iter().filter(|x| x.sku == l.sku).map(|x| x.qty).sum());
            let free = held.saturating_sub(asked_already);
            at_sites += u64::from(free);
            let take = free.min(rest);
            if take > 0 {
                add_units(asks.entry(f.id.clone()).or_default(), &[SkuQty { sku: l.sku.clone(), qty: take }]);
                rest -= take;
            }
        }
        if rest > 0 {
            return Err(IntakeError::NotWaiting {
                sku: l.sku.to_string(),
                requested: u64::from(l.qty),
                waiting: u64::from(from_waiting) + at_sites,
            });
        }
        if from_waiting > 0 {
            if let Some(u) = order.unfilled.iter_mut().find(|u| u.sku == l.sku) {
                u.qty -= from_waiting;
            }
            add_units(&mut waiting_taken, &[SkuQty { sku: l.sku.clone(), qty: from_waiting }]);
        }
    }
    order.unfilled.retain(|u| u.qty > 0);
    add_units(&mut order.cancelled_unfilled, &waiting_taken);
    Ok((order, waiting_taken, asks))
}
