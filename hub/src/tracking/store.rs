//! The carrier events' redb tables in `intake.redb`, and storing an event, matching it to its shipment
//! (late ones too), pruning the unmatched, and the reads of events, states and flags.

use oms_protocol::domain::{Channel, OrderId};
use oms_service::storage::StorageError;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Serialize;
use serde_json::json;

use super::{
    EVENTS_PER_TRACKING_MAX, EXCEPTIONS, FINAL, FLAGS_PAGE_MAX, Flag, ID_BYTES_MAX, PRUNE_MAX, STATUSES, ShipmentRef,
    TrackingError, TrackingEvent, UNMATCHED_AGE_MS, UNMATCHED_MAX,
};
use crate::events::watch::FulfillmentSeen;
use crate::events::{EventDraft, TRACKING_UPDATED};

/// (carrier, event id) → [`TrackingEvent`] (JSON).
const EVENTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("carrier_events");
/// (tracking number, carrier, event id): the events of a tracking number.
const BY_TRACKING: TableDefinition<(&str, &str, &str), ()> = TableDefinition::new("carrier_events_by_tracking");
/// (received at ms, carrier, event id) → tracking number: events no shipment carries yet, oldest first.
pub(super) const UNMATCHED: TableDefinition<(u64, &str, &str), &str> = TableDefinition::new("carrier_events_unmatched");
/// Tracking number → [`ShipmentRef`] (JSON): which fulfillment shipped under it.
const SHIPMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("tracking_shipments");
/// Customer order → [`Flag`] (JSON): orders flagged for customer service by a carrier exception.
const FLAGS: TableDefinition<&str, &[u8]> = TableDefinition::new("orders_flagged_carrier");
/// Fulfillment → when the carrier delivered it: the outbox of [`deliver_due`].
///
/// [`deliver_due`]: super::deliver_due
pub(super) const DELIVER_DUE: TableDefinition<&str, u64> = TableDefinition::new("carrier_deliveries_due");
/// Fulfillment → when the carrier delivered it, for a fulfillment whose document its site had frozen as
/// shipped before the delivery came: the hub's own record of it ([`frozen_delivery`]), since a frozen
/// document takes no more changes.
///
/// [`frozen_delivery`]: super::frozen_delivery
pub(super) const DELIVERED_FROZEN: TableDefinition<&str, u64> = TableDefinition::new("carrier_deliveries_frozen");

/// Creates the tables, so readers find them.
pub(crate) fn init(db: &redb::Database) -> Result<(), StorageError> {
    let w = db.begin_write().map_err(redb::Error::from)?;
    w.open_table(EVENTS).map_err(redb::Error::from)?;
    w.open_table(BY_TRACKING).map_err(redb::Error::from)?;
    w.open_table(UNMATCHED).map_err(redb::Error::from)?;
    w.open_table(SHIPMENTS).map_err(redb::Error::from)?;
    w.open_table(FLAGS).map_err(redb::Error::from)?;
    w.open_table(DELIVER_DUE).map_err(redb::Error::from)?;
    w.open_table(DELIVERED_FROZEN).map_err(redb::Error::from)?;
    w.commit().map_err(redb::Error::from)?;
    Ok(())
}

/// What storing an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The event was there already: nothing changed.
    pub replayed: bool,
    /// A shipment carries its tracking number.
    pub matched: bool,
    /// It left a delivery for [`deliver_due`] to write.
    ///
    /// [`deliver_due`]: super::deliver_due
    pub delivery_due: bool,
}

fn encode<T: Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(v).map_err(|e| StorageError::encode(what, e))
}

/// Stores `e` in one transaction of `db` (idempotent by carrier and event id), matching it to its shipment if
/// one is known.
pub fn store(db: &redb::Database, e: &TrackingEvent) -> Result<Stored, TrackingError> {
    let w = db.begin_write().map_err(redb::Error::from)?;
    let stored = {
        let mut events = w.open_table(EVENTS)?;
        if events.get((e.carrier.as_str(), e.id.as_str()))?.is_some() {
            return Ok(Stored { replayed: true, matched: false, delivery_due: false });
        }
        let mut by = w.open_table(BY_TRACKING)?;
        let held = by
            .range((e.tracking.as_str(), "", "")..)?
            .take_while(|r| r.as_ref().is_ok_and(|(k, _)| k.value().0 == e.tracking))
            .take(EVENTS_PER_TRACKING_MAX)
            .count();
        if held >= EVENTS_PER_TRACKING_MAX {
            return Err(TrackingError::TooMany(e.tracking.clone()));
        }
        events.insert((e.carrier.as_str(), e.id.as_str()), encode("a tracking event", e)?.as_slice())?;
        by.insert((e.tracking.as_str(), e.carrier.as_str(), e.id.as_str()), ())?;
        drop((events, by));
        let shipment = shipment_of(&w, &e.tracking)?;
        let mut s = Stored { replayed: false, matched: shipment.is_some(), delivery_due: false };
        match shipment {
            Some(sh) => s.delivery_due = apply_matched(&w, &sh, e)?,
            None => {
                prune_unmatched(&w, e.received_at_ms)?;
                let mut u = w.open_table(UNMATCHED)?;
                u.insert((e.received_at_ms, e.carrier.as_str(), e.id.as_str()), e.tracking.as_str())?;
            }
        }
        s
    };
    w.commit().map_err(redb::Error::from)?;
    Ok(stored)
}

fn shipment_of(w: &redb::WriteTransaction, tracking: &str) -> Result<Option<ShipmentRef>, TrackingError> {
    let t = w.open_table(SHIPMENTS)?;
    let found = t.get(tracking)?.map(|v| serde_json::from_slice::<ShipmentRef>(v.value()));
    match found {
        Some(Ok(s)) => Ok(Some(s)),
        Some(Err(err)) => {
            tracing::warn!(tracking, error = %err, "a tracking shipment row cannot be read; left unmatched");
            Ok(None)
        }
        None => Ok(None),
    }
}

/// Forgets waiting events older than [`UNMATCHED_AGE_MS`], and the oldest beyond [`UNMATCHED_MAX`] - 1, at
/// most [`PRUNE_MAX`].
fn prune_unmatched(w: &redb::WriteTransaction, now_ms: u64) -> Result<(), TrackingError> {
    let mut u = w.open_table(UNMATCHED)?;
    let mut gone: Vec<(u64, String, String, String)> = Vec::new();
    let mut over = u.len()?.saturating_sub(UNMATCHED_MAX.saturating_sub(1));
    for row in u.iter()?.take(PRUNE_MAX) {
        let (k, v) = row?;
        let (at, carrier, id) = k.value();
        if over == 0 && now_ms.saturating_sub(at) <= UNMATCHED_AGE_MS {
            break;
        }
        over = over.saturating_sub(1);
        gone.push((at, carrier.to_owned(), id.to_owned(), v.value().to_owned()));
    }
    let mut events = w.open_table(EVENTS)?;
    let mut by = w.open_table(BY_TRACKING)?;
    for (at, carrier, id, tracking) in &gone {
        u.remove((*at, carrier.as_str(), id.as_str()))?;
        events.remove((carrier.as_str(), id.as_str()))?;
        by.remove((tracking.as_str(), carrier.as_str(), id.as_str()))?;
    }
    Ok(())
}

/// What a matched event does (in `w`): its `tracking.updated`, its flag, its delivery. True when it left a
/// delivery due.
fn apply_matched(w: &redb::WriteTransaction, sh: &ShipmentRef, e: &TrackingEvent) -> Result<bool, TrackingError> {
    let (Ok(order), Ok(channel)) = (OrderId::parse(&sh.order), Channel::parse(&sh.channel)) else {
        return Ok(false);
    };
    // A status the hub does not know (EasyPost's `unknown`, `cancelled`, `error`) is kept and does nothing.
    if !STATUSES.contains(&e.status.as_str()) {
        return Ok(false);
    }
    let data = json!({"fulfillment_id": sh.fulfillment, "carrier": e.carrier, "tracking": e.tracking,
        "status": e.status, "event_id": e.id, "occurred_at_ms": e.occurred_at_ms, "description": e.description});
    crate::events::append(w, EventDraft::new(TRACKING_UPDATED, e.received_at_ms).order(&order, &channel).data(data))?;
    let mut flags = w.open_table(FLAGS)?;
    if EXCEPTIONS.contains(&e.status.as_str()) {
        let f = Flag {
            order: sh.order.clone(),
            channel: sh.channel.clone(),
            fulfillment: sh.fulfillment.clone(),
            carrier: e.carrier.clone(),
            tracking: e.tracking.clone(),
            status: e.status.clone(),
            description: e.description.clone(),
            at_ms: e.occurred_at_ms,
        };
        flags.insert(sh.order.as_str(), encode("a carrier flag", &f)?.as_slice())?;
    }
    if e.status == "delivered" {
        let clears = flags
            .get(sh.order.as_str())?
            .and_then(|v| serde_json::from_slice::<Flag>(v.value()).ok())
            .is_some_and(|f| f.fulfillment == sh.fulfillment);
        if clears {
            flags.remove(sh.order.as_str())?;
        }
        let mut due = w.open_table(DELIVER_DUE)?;
        if due.get(sh.fulfillment.as_str())?.is_none() {
            due.insert(sh.fulfillment.as_str(), e.occurred_at_ms.min(e.received_at_ms))?;
        }
        return Ok(true);
    }
    Ok(false)
}

/// Records a fulfillment's shipment under its tracking number and matches the events that waited for it, in
/// the watcher's transaction `w` that reports the fulfillment shipped. True when a delivery is now due.
pub(crate) fn on_shipped(w: &redb::WriteTransaction, f: &FulfillmentSeen) -> Result<bool, StorageError> {
    let Some(sh) = &f.shipment else { return Ok(false) };
    let (Some(tracking), Some(carrier)) = (sh["tracking"].as_str(), sh["carrier"].as_str()) else {
        return Ok(false);
    };
    let tracking = tracking.trim();
    if tracking.is_empty() || tracking.len() > ID_BYTES_MAX {
        return Ok(false);
    }
    let r = ShipmentRef {
        fulfillment: f.id.to_string(),
        order: f.parent.to_string(),
        channel: f.channel.as_str().to_owned(),
        carrier: carrier.to_owned(),
    };
    let run = || -> Result<bool, TrackingError> {
        w.open_table(SHIPMENTS)?.insert(tracking, encode("a tracking shipment", &r)?.as_slice())?;
        let keys: Vec<(String, String)> = {
            let by = w.open_table(BY_TRACKING)?;
            let mut keys = Vec::new();
            for row in by.range((tracking, "", "")..)?.take(EVENTS_PER_TRACKING_MAX) {
                let (k, _) = row?;
                let (t, c, id) = k.value();
                if t != tracking {
                    break;
                }
                keys.push((c.to_owned(), id.to_owned()));
            }
            keys
        };
        let mut due = false;
        let mut waiting: Vec<TrackingEvent> = Vec::new();
        {
            let events = w.open_table(EVENTS)?;
            for (c, id) in &keys {
                if let Some(v) = events.get((c.as_str(), id.as_str()))?
                    && let Ok(e) = serde_json::from_slice::<TrackingEvent>(v.value())
                {
                    waiting.push(e);
                }
            }
        }
        waiting.sort_by_key(|e| (e.occurred_at_ms, rank(&e.status)));
        for e in &waiting {
            let removed =
                w.open_table(UNMATCHED)?.remove((e.received_at_ms, e.carrier.as_str(), e.id.as_str()))?.is_some();
            if removed {
                due |= apply_matched(w, &r, e)?;
            }
        }
        Ok(due)
    };
    run().map_err(|e| match e {
        TrackingError::Storage(s) => s,
        other => StorageError::encode("matching tracking events", other),
    })
}

fn rank(status: &str) -> usize {
    STATUSES.iter().position(|s| *s == status).unwrap_or(0)
}

/// The tracking state of a shipment from its events: a final state stays; else the latest (ties by rank).
/// Events of a status outside [`STATUSES`] do not count.
pub fn current_state(events: &[TrackingEvent]) -> Option<&str> {
    events
        .iter()
        .filter(|e| STATUSES.contains(&e.status.as_str()))
        .max_by_key(|e| (FINAL.contains(&e.status.as_str()), e.occurred_at_ms, rank(&e.status)))
        .map(|e| e.status.as_str())
}

/// The events of tracking number `tracking`, oldest first (by the carrier's time), at most
/// [`EVENTS_PER_TRACKING_MAX`].
pub fn events_of(db: &redb::Database, tracking: &str) -> Result<Vec<TrackingEvent>, StorageError> {
    let r = db.begin_read().map_err(redb::Error::from)?;
    let (Some(by), Some(events)) =
        (crate::events::read_table(&r, BY_TRACKING)?, crate::events::read_table(&r, EVENTS)?)
    else {
        return Ok(vec![]);
    };
    let mut out = Vec::new();
    for row in by.range((tracking, "", "")..).map_err(redb::Error::from)?.take(EVENTS_PER_TRACKING_MAX) {
        let (k, _) = row.map_err(redb::Error::from)?;
        let (t, c, id) = k.value();
        if t != tracking {
            break;
        }
        if let Some(v) = events.get((c, id)).map_err(redb::Error::from)?
            && let Ok(e) = serde_json::from_slice::<TrackingEvent>(v.value())
        {
            out.push(e);
        }
    }
    out.sort_by_key(|e| (e.occurred_at_ms, rank(&e.status)));
    Ok(out)
}

/// The flag on `order`, if a carrier exception flagged it.
pub fn flag_of(db: &redb::Database, order: &str) -> Result<Option<Flag>, StorageError> {
    let r = db.begin_read().map_err(redb::Error::from)?;
    let Some(t) = crate::events::read_table(&r, FLAGS)? else { return Ok(None) };
    Ok(t.get(order).map_err(redb::Error::from)?.and_then(|v| serde_json::from_slice(v.value()).ok()))
}

/// Flagged orders after `after` (by order id), at most `limit`, those of `channel` only if given; and where
/// the next page starts.
pub fn flagged(
    db: &redb::Database,
    after: Option<&str>,
    limit: usize,
    channel: Option<&str>,
) -> Result<(Vec<Flag>, Option<String>), StorageError> {
    let r = db.begin_read().map_err(redb::Error::from)?;
    let Some(t) = crate::events::read_table(&r, FLAGS)? else { return Ok((vec![], None)) };
    let mut out = Vec::new();
    let mut last = None;
    let range = match after {
        Some(a) => t.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
        None => t.range::<&str>(..),
    }
    .map_err(redb::Error::from)?;
    // Bounded: at most FLAGS_PAGE_MAX rows looked at beyond the page (other channels').
    for row in range.take(limit.saturating_add(FLAGS_PAGE_MAX)) {
        let (k, v) = row.map_err(redb::Error::from)?;
        last = Some(k.value().to_owned());
        if let Ok(f) = serde_json::from_slice::<Flag>(v.value())
            && channel.is_none_or(|c| c == f.channel)
        {
            out.push(f);
            if out.len() >= limit {
                break;
            }
        }
    }
    let more = match &last {
        Some(l) => t
            .range::<&str>((std::ops::Bound::Excluded(l.as_str()), std::ops::Bound::Unbounded))
            .map_err(redb::Error::from)?
            .next()
            .is_some(),
        None => false,
    };
    Ok((out, if more { last } else { None }))
}
