//! Order commands: a local order (idempotent by key), a hub assignment (idempotent by order id) and its
//! rejection, and the steps of fulfillment (pack, ship, deliver, cancel, accept again). Also how an order is
//! read for a change (refused once frozen) and saved (state index, counters, freeze queue, change feed).

use std::collections::BTreeMap;

use oms_protocol::domain::{FulfillmentState, Movement, OrderDraft, OrderId, Sku, Step};
use oms_protocol::records::{draft_sha256, scoped_idempotency_key};
use oms_service::storage::StorageError;
use redb::ReadableTable;

use super::escrow::rights_of;
use super::freeze::queue_value;
use super::tables::*;
use super::writer::{Apply, Tx};
use super::{
    Command, FeedEntry, FulfillmentLine, IdempotencyRecord, Limits, OrderRecord, Shipment, StoreError, TimelineEntry,
};
use crate::escrow::Rights;

/// Longest idempotency key, bytes.
pub use oms_protocol::records::IDEMPOTENCY_KEY_BYTES_MAX;

/// Timeline note of an order whose stock was reserved on acceptance.
const ACCEPTED_NOTE: &str = "accepted and stock reserved";

/// What a command that creates an order answers with ([`CreateOrder`], [`AcceptAssignment`]).
#[derive(Debug, Clone)]
pub struct NewOrder {
    /// The order.
    pub record: OrderRecord,
    /// Whether this call created it: false when it existed already (an idempotent replay).
    pub created: bool,
}

/// Accept a local order and reserve its stock. Idempotent by key for [`Limits::idempotency_retention_ms`]: the
/// same key with the same order answers the order it created; with another order it is refused
/// ([`StoreError::IdempotencyKeyReused`]).
#[derive(Debug, Clone)]
pub struct CreateOrder {
    /// Idempotency key.
    pub key: String,
    /// The order.
    pub draft: OrderDraft,
}

impl Command for CreateOrder {
    type Reply = NewOrder;

    fn audit_target(reply: &NewOrder) -> Option<String> {
        Some(reply.record.id.to_string())
    }
}

impl Apply for CreateOrder {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<NewOrder, StoreError> {
        tx.create_order(self.key, self.draft)
    }
}

/// Take an order the hub assigned to this site and reserve its units, paid for by the rights the hub
/// consumed when it assigned. Idempotent by order id: a second call returns the order as it is.
#[derive(Debug, Clone)]
pub struct AcceptAssignment {
    /// The fulfillment order id the hub chose (`hub-…`).
    pub id: OrderId,
    /// The lines and ship-to of this site's part.
    pub draft: OrderDraft,
    /// When the hub assigned it.
    pub assigned_at_ms: u64,
    /// Accept at once; otherwise the order waits in `assigned` (units reserved) for staff.
    pub auto_accept: bool,
}

impl Command for AcceptAssignment {
    type Reply = NewOrder;
}

impl Apply for AcceptAssignment {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<NewOrder, StoreError> {
        tx.accept_assignment(self.id, self.draft, self.assigned_at_ms, self.auto_accept)
    }
}

/// Staff decline a hub assignment still in `assigned`: its units go back to the hub.
#[derive(Debug, Clone)]
pub struct RejectAssignment {
    /// The order.
    pub order: OrderId,
    /// Why.
    pub reason: String,
}

impl Command for RejectAssignment {
    /// The order after the change.
    type Reply = OrderRecord;
}

impl Apply for RejectAssignment {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<OrderRecord, StoreError> {
        tx.reject_assignment(self.order, self.reason)
    }
}

/// Pack.
#[derive(Debug, Clone)]
pub struct Pack {
    /// The order.
    pub order: OrderId,
    /// Parcels.
    pub parcels: u32,
    /// The consignment to create for the carrier, if the parcels were described.
    pub consignment: Option<super::NewConsignment>,
}

impl Command for Pack {
    /// The order after the change.
    type Reply = OrderRecord;
}

impl Apply for Pack {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<OrderRecord, StoreError> {
        tx.pack(self.order, self.parcels, self.consignment)
    }
}

/// Hand to the carrier.
#[derive(Debug, Clone)]
pub struct Ship {
    /// The order.
    pub order: OrderId,
    /// Carrier.
    pub carrier: String,
    /// Tracking number.
    pub tracking: String,
}

impl Command for Ship {
    /// The order after the change.
    type Reply = OrderRecord;
}

impl Apply for Ship {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<OrderRecord, StoreError> {
        tx.ship(self.order, self.carrier, self.tracking)
    }
}

/// Carrier confirmed delivery.
#[derive(Debug, Clone)]
pub struct Deliver {
    /// The order.
    pub order: OrderId,
}

impl Command for Deliver {
    /// The order after the change.
    type Reply = OrderRecord;
}

impl Apply for Deliver {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<OrderRecord, StoreError> {
        tx.deliver(self.order)
    }
}

/// Cancel before shipment.
#[derive(Debug, Clone)]
pub struct Cancel {
    /// The order.
    pub order: OrderId,
    /// Why.
    pub reason: String,
}

impl Command for Cancel {
    /// The order after the change.
    type Reply = OrderRecord;
}

impl Apply for Cancel {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<OrderRecord, StoreError> {
        tx.cancel(self.order, self.reason)
    }
}

/// Reserve stock again for a backordered order (or accept a hub assignment waiting in `assigned`).
#[derive(Debug, Clone)]
pub struct Reaccept {
    /// The order.
    pub order: OrderId,
}

impl Command for Reaccept {
    /// The order after the change.
    type Reply = OrderRecord;
}

impl Apply for Reaccept {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<OrderRecord, StoreError> {
        tx.reaccept(self.order)
    }
}

impl Tx<'_> {
    pub(super) fn order(&self, id: &OrderId) -> Result<OrderRecord, StoreError> {
        self.orders
            .get(id.as_str())?
            .map(|v| dec("orders", v.value()))
            .transpose()?
            .ok_or_else(|| StoreError::OrderNotFound(id.clone()))
    }

    /// An order about to be changed: refused with [`StoreError::OrderFrozen`] once it is frozen. Every
    /// command that changes an existing order reads it through here, before anything else.
    pub(super) fn order_to_change(&self, id: &OrderId) -> Result<OrderRecord, StoreError> {
        let rec = self.order(id)?;
        if let Some(at) = self.frozen.get(id.as_str())? {
            return Err(StoreError::OrderFrozen { order: id.clone(), frozen_at_ms: at.value() });
        }
        Ok(rec)
    }

    pub(super) fn save_order(&mut self, rec: &OrderRecord, prev: Option<FulfillmentState>) -> Result<(), StoreError> {
        if let Some(p) = prev
            && p != rec.status
        {
            self.by_state.remove((p.tag(), rec.id.as_str()))?;
            self.bump(&state_counter(p), -1)?;
        }
        if prev != Some(rec.status) {
            self.by_state.insert((rec.status.tag(), rec.id.as_str()), ())?;
            self.bump(&state_counter(rec.status), 1)?;
        }
        self.orders.insert(rec.id.as_str(), enc(rec)?.as_slice())?;
        match queue_value(rec) {
            Some(start) => self.freeze_queue.insert(rec.id.as_str(), start)?,
            None => self.freeze_queue.remove(rec.id.as_str())?,
        };
        self.feed_push(FeedEntry::Order(rec.id.clone()))
    }

    pub(super) fn step(&self, rec: &OrderRecord, step: Step) -> Result<FulfillmentState, StoreError> {
        rec.status.next(step).map_err(|source| StoreError::Transition { order: rec.id.clone(), source })
    }

    pub(super) fn transition(&self, rec: &mut OrderRecord, to: FulfillmentState, note: String) {
        rec.status = to;
        rec.timeline.push(TimelineEntry { at_ms: self.now_ms, status: to, note });
    }

    fn create_order(&mut self, key: String, draft: OrderDraft) -> Result<NewOrder, StoreError> {
        let hash = draft_sha256(&draft).map_err(|e| StoreError::from(StorageError::encode("an order", e)))?;
        let scoped = scoped_idempotency_key(&draft.channel, &key);
        if let Some(v) = self.idem.get(scoped.as_str())? {
            let rec: IdempotencyRecord = dec("idempotency", v.value())?;
            if rec.body_sha256 != hash {
                return Err(StoreError::IdempotencyKeyReused(key));
            }
            return Ok(NewOrder { record: self.order(&rec.order)?, created: false });
        }
        // A record from before keys were scoped by channel: the same body (channel included) is a replay.
        if let Some(v) = self.idem.get(key.as_str())? {
            let rec: IdempotencyRecord = dec("idempotency", v.value())?;
            if rec.body_sha256 == hash {
                return Ok(NewOrder { record: self.order(&rec.order)?, created: false });
            }
        }
        // Validate every line before writing anything.
        let mut shortfalls = Vec::new();
        for (i, (sku, qty)) in draft.demand().enumerate() {
            if !self.in_catalog(sku)? {
                return Err(StoreError::UnknownSku(sku.clone()));
            }
            let _ = i;
            if let Some(s) = self.site_shortfall(sku, u64::from(qty))? {
                shortfalls.push(s);
            }
        }
        if !shortfalls.is_empty() {
            return Err(StoreError::InsufficientStock(shortfalls));
        }
        let seq = self.bump(SEQ_ORDER, 1)?;
        let id = OrderId::new(self.site, seq);
        for (sku, qty) in draft.demand() {
            self.post(sku, Movement::Reserve { qty, order: id.clone() })?;
        }
        let timeline =
            vec![TimelineEntry { at_ms: self.now_ms, status: FulfillmentState::Accepted, note: ACCEPTED_NOTE.into() }];
        let rec = self.new_record(id.clone(), draft, FulfillmentState::Accepted, timeline);
        self.save_order(&rec, None)?;
        let idem = IdempotencyRecord { body_sha256: hash, order: id, at_ms: self.now_ms };
        self.idem.insert(scoped.as_str(), enc(&idem)?.as_slice())?;
        self.idem_by_time.insert((self.now_ms, scoped.as_str()), ())?;
        Ok(NewOrder { record: rec, created: true })
    }

    /// A new order at this site: one unpicked fulfillment line per line of `draft`.
    fn new_record(
        &self,
        id: OrderId,
        draft: OrderDraft,
        status: FulfillmentState,
        timeline: Vec<TimelineEntry>,
    ) -> OrderRecord {
        let lines = draft
            .lines
            .iter()
            .map(|l| FulfillmentLine { sku: l.sku.clone(), qty: l.qty, picked: None, shipped: 0, returned: 0 })
            .collect();
        OrderRecord {
            id,
            site: self.site.clone(),
            status,
            order: draft,
            lines,
            wave: None,
            parcels: None,
            shipment: None,
            returns: Vec::new(),
            timeline,
            created_at_ms: self.now_ms,
        }
    }

    fn accept_assignment(
        &mut self,
        id: OrderId,
        draft: OrderDraft,
        assigned_at_ms: u64,
        auto_accept: bool,
    ) -> Result<NewOrder, StoreError> {
        if let Some(v) = self.orders.get(id.as_str())? {
            return Ok(NewOrder { record: dec("orders", v.value())?, created: false });
        }
        if rights_of(&id) != Rights::Hub {
            return Err(StoreError::LineMismatch { order: id, message: "is not a hub order id".into() });
        }
        for l in &draft.lines {
            if !self.in_catalog(&l.sku)? {
                return Err(StoreError::UnknownSku(l.sku.clone()));
            }
        }
        // The hub assigned within the rights it holds, so by the escrow invariant the units are here. If they
        // are not (the invariant was broken: a restore from an old backup, a hub that overspent), the order is
        // rejected without giving rights back, since those rights stand for units that do not exist.
        let mut shortfalls = Vec::new();
        for (sku, qty) in draft.demand() {
            let b = self.balance(sku)?;
            if b.available() < u64::from(qty) {
                shortfalls.push(format!("{sku}: {} available, {qty} assigned", b.available()));
            }
        }
        let mut timeline = vec![TimelineEntry {
            at_ms: assigned_at_ms.min(self.now_ms),
            status: FulfillmentState::Assigned,
            note: "assigned by the hub".into(),
        }];
        let status = if !shortfalls.is_empty() {
            tracing::error!(order = %id, shortfalls = ?shortfalls, "a hub assignment exceeds available stock; rejected");
            timeline.push(TimelineEntry {
                at_ms: self.now_ms,
                status: FulfillmentState::Rejected,
                note: format!("rejected: stock is not here ({})", shortfalls.join("; ")),
            });
            FulfillmentState::Rejected
        } else {
            for (sku, qty) in draft.demand() {
                self.post_as(sku, Movement::Reserve { qty, order: id.clone() }, Rights::Hub)?;
            }
            if auto_accept {
                timeline.push(TimelineEntry {
                    at_ms: self.now_ms,
                    status: FulfillmentState::Accepted,
                    note: ACCEPTED_NOTE.into(),
                });
                FulfillmentState::Accepted
            } else {
                FulfillmentState::Assigned
            }
        };
        let rec = self.new_record(id, draft, status, timeline);
        self.save_order(&rec, None)?;
        Ok(NewOrder { record: rec, created: true })
    }

    pub(super) fn ship(
        &mut self,
        order: OrderId,
        carrier: String,
        tracking: String,
    ) -> Result<OrderRecord, StoreError> {
        let mut rec = self.order_to_change(&order)?;
        let to = self.step(&rec, Step::Ship)?;
        let prev = rec.status;
        for i in 0..rec.lines.len() {
            let picked = rec.lines[i].picked.unwrap_or(0);
            if picked > 0 {
                let sku = rec.lines[i].sku.clone();
                self.post(&sku, Movement::Ship { qty: picked, order: order.clone() })?;
            }
            rec.lines[i].shipped = picked;
        }
        let parcels = rec.parcels.unwrap_or(1);
        let note = format!("shipped with {carrier}, tracking {tracking}");
        rec.shipment = Some(Shipment { carrier, tracking, parcels });
        self.transition(&mut rec, to, note);
        self.save_order(&rec, Some(prev))?;
        Ok(rec)
    }

    fn cancel(&mut self, order: OrderId, reason: String) -> Result<OrderRecord, StoreError> {
        let mut rec = self.order_to_change(&order)?;
        let to = self.step(&rec, Step::Cancel)?;
        let prev = rec.status;
        for i in 0..rec.lines.len() {
            let (sku, qty, picked) = (rec.lines[i].sku.clone(), rec.lines[i].qty, rec.lines[i].picked);
            match (prev, picked) {
                // Still reserved: release it.
                (FulfillmentState::Assigned | FulfillmentState::Accepted | FulfillmentState::Picking, None) => {
                    self.post(&sku, Movement::Release { qty, order: order.clone() })?;
                }
                // Picked and staged: put it back in the bin.
                (FulfillmentState::Picking | FulfillmentState::Picked | FulfillmentState::Packed, Some(p)) if p > 0 => {
                    self.post(&sku, Movement::Putaway { qty: p, order: order.clone() })?;
                }
                _ => {}
            }
        }
        self.transition(&mut rec, to, format!("cancelled: {reason}"));
        self.save_order(&rec, Some(prev))?;
        Ok(rec)
    }

    fn reaccept(&mut self, order: OrderId) -> Result<OrderRecord, StoreError> {
        let mut rec = self.order_to_change(&order)?;
        let to = self.step(&rec, Step::Accept)?;
        let prev = rec.status;
        let mut shortfalls = Vec::new();
        if rec.status == FulfillmentState::Assigned {
            // A hub assignment waiting for staff: its units are already reserved.
            self.transition(&mut rec, to, "assignment accepted by staff".into());
            self.save_order(&rec, Some(prev))?;
            return Ok(rec);
        }
        let mut demand: BTreeMap<&Sku, u64> = BTreeMap::new();
        for l in &rec.lines {
            *demand.entry(&l.sku).or_insert(0) += u64::from(l.qty);
        }
        for (sku, qty) in demand {
            if let Some(s) = self.site_shortfall(sku, qty)? {
                shortfalls.push(s);
            }
        }
        if !shortfalls.is_empty() {
            return Err(StoreError::InsufficientStock(shortfalls));
        }
        for i in 0..rec.lines.len() {
            let (sku, qty) = (rec.lines[i].sku.clone(), rec.lines[i].qty);
            self.post(&sku, Movement::Reserve { qty, order: order.clone() })?;
        }
        rec.wave = None;
        self.transition(&mut rec, to, "stock reserved again".into());
        self.save_order(&rec, Some(prev))?;
        Ok(rec)
    }

    fn pack(
        &mut self,
        order: OrderId,
        parcels: u32,
        consignment: Option<super::NewConsignment>,
    ) -> Result<OrderRecord, StoreError> {
        let mut rec = self.order_to_change(&order)?;
        let to = self.step(&rec, Step::Pack)?;
        let prev = rec.status;
        rec.parcels = Some(parcels);
        let note = match &consignment {
            Some(c) => format!("packed into {parcels} parcel(s) for {} {}", c.carrier, c.service),
            None => format!("packed into {parcels} parcel(s)"),
        };
        self.transition(&mut rec, to, note);
        self.save_order(&rec, Some(prev))?;
        if let Some(c) = consignment {
            self.create_consignment(&order, c)?;
        }
        Ok(rec)
    }

    fn deliver(&mut self, order: OrderId) -> Result<OrderRecord, StoreError> {
        let mut rec = self.order_to_change(&order)?;
        let to = self.step(&rec, Step::Deliver)?;
        let prev = rec.status;
        self.transition(&mut rec, to, "delivered".into());
        self.save_order(&rec, Some(prev))?;
        Ok(rec)
    }

    fn reject_assignment(&mut self, order: OrderId, reason: String) -> Result<OrderRecord, StoreError> {
        let mut rec = self.order_to_change(&order)?;
        let to = self.step(&rec, Step::Reject)?;
        let prev = rec.status;
        for i in 0..rec.lines.len() {
            let (sku, qty) = (rec.lines[i].sku.clone(), rec.lines[i].qty);
            self.post_as(&sku, Movement::Release { qty, order: order.clone() }, Rights::Hub)?;
        }
        self.transition(&mut rec, to, format!("assignment rejected: {reason}"));
        self.save_order(&rec, Some(prev))?;
        Ok(rec)
    }
}
