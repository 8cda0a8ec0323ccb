//! Events: what happened to orders, fulfillments and nodes, as a durable log in `intake.redb` that pull
//! consumers read (`GET /v1/events`, [`api`]) and webhooks deliver ([`webhooks`]) with the same ids.
//!
//! **One function writes the log: [`append`]**, called by whatever hub code makes the change, inside the
//! write transaction of that change (a transaction that appends many, as the intake's batches do, opens a
//! [`Log`] once and appends through it; `append` is a `Log` of one event). So an event exists exactly when
//! its change is committed: a consumer never hears of a change that a crash then undoes, and a committed
//! change is never left unreported. Any hub module (intake, the watcher, payments and invoices later) reports
//! through it:
//!
//! ```ignore
//! let w = db.begin_write()?;
//! // … the change …
//! events::append(&w, EventDraft::new("order.cancelled", now_ms).order(&order.id, &order.draft.channel)
//!     .data(json!({"reason": reason})))?;
//! w.commit()?;
//! ```
//!
//! Each event has a global sequence (`seq`, from 1, gap-free in append order; the order of commits), a stable
//! id (`evt_` + this log's random 64-bit id + the sequence, both in hex: unique across hubs and reinstalls,
//! so a receiver may deduplicate by it), a type ([`TYPES`]), the customer order it concerns (if any) and
//! that order's channel (what a channel key may see), a JSON payload and the commit's time.
//!
//! Sources: `order.created` and `order.routed` (the intake's writer and re-routing), `order.cancelled`
//! (the cancel), `fulfillment.accepted`, `fulfillment.shipped`, `order.delivered` (the watcher, from the
//! sites' documents, remembering per fulfillment what it reported: [`watch`]), `tracking.updated` (a
//! carrier's event matched to its shipment, `crate::tracking`), `node.offline` /
//! `node.online` (the hub's connections, debounced: [`watch`]), `return.requested`, `.approved`,
//! `.declined`, `.cancelled`, `.received`, `.refunded`, `.closed` (the RMA's own transaction in
//! [`crate::returns`]).
//!
//! **Retention** ([`EventsConfig`]): events older than `retention_ms` or beyond the newest `retained_max` are
//! pruned, at most [`PRUNE_BATCH_MAX`] per transaction, by the delivery loop. A webhook still retrying an
//! event that is pruned skips it (its cursor moves past it); `retention_ms` is at least the webhooks'
//! retry period, so that happens only past `retained_max`.

pub mod api;
pub mod receiver;
pub mod watch;
pub mod webhooks;

use oms_protocol::domain::{Channel, OrderId};
use oms_service::storage::StorageError;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::intake::{Fulfillment, HubOrder};
use crate::routing::SkuQty;

/// seq → the JSON of an [`Event`]. Append-only but for pruning from the front.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// The log's own values: [`LOG_ID`].
const EVENTS_META: TableDefinition<&str, u64> = TableDefinition::new("events_meta");
/// This log's random id, part of every event id (set by the first append).
const LOG_ID: &str = "log_id";

/// Every event type the hub emits (payments and invoices add theirs as they land). A subscription or a feed
/// filter names types from here, or a family with `.*` (`order.*`).
pub const TYPES: &[&str] = &[
    ORDER_CREATED,
    ORDER_ROUTED,
    ORDER_CANCELLED,
    ORDER_LINES_CANCELLED,
    FULFILLMENT_ACCEPTED,
    FULFILLMENT_SHIPPED,
    ORDER_DELIVERED,
    NODE_OFFLINE,
    NODE_ONLINE,
    PAYMENT_AUTHORIZED,
    PAYMENT_CAPTURED,
    PAYMENT_REFUNDED,
    PAYMENT_VOIDED,
    PAYMENT_RELEASED,
    PAYMENT_RECORDED,
    PAYMENT_FAILED,
    "invoice.created",
    STOCK_LOW,
    RETURN_REQUESTED,
    RETURN_APPROVED,
    RETURN_DECLINED,
    RETURN_CANCELLED,
    RETURN_RECEIVED,
    RETURN_REFUNDED,
    RETURN_CLOSED,
    TRACKING_UPDATED,
];
/// A carrier's tracking event for a shipped fulfillment (`crate::tracking`): `status` one of
/// `crate::tracking::STATUSES`, with the carrier, tracking number, the carrier's event id and time.
pub const TRACKING_UPDATED: &str = "tracking.updated";
/// A return (RMA) was asked for (by the customer on the tracking page, a channel or service).
pub const RETURN_REQUESTED: &str = "return.requested";
/// An RMA was approved (by policy or service): its site may receive against it.
pub const RETURN_APPROVED: &str = "return.approved";
/// Service declined an RMA (`reason`).
pub const RETURN_DECLINED: &str = "return.declined";
/// An RMA was withdrawn before anything arrived.
pub const RETURN_CANCELLED: &str = "return.cancelled";
/// A site's receipt against an RMA was applied (`units` in it; `first` on the RMA's first receipt). One per
/// receipt; the reports count `first` as one return and `units` as units returned.
pub const RETURN_RECEIVED: &str = "return.received";
/// An RMA's credit note was issued and its refund queued (`amount_minor`, `credit_note`).
pub const RETURN_REFUNDED: &str = "return.refunded";
/// An RMA is finished: its refund settled, or there was nothing to refund.
pub const RETURN_CLOSED: &str = "return.closed";
/// A card order was authorized for its total (in the order's own transaction).
pub const PAYMENT_AUTHORIZED: &str = "payment.authorized";
/// A capture settled at the provider (per shipment; `document` is the invoice).
pub const PAYMENT_CAPTURED: &str = "payment.captured";
/// A refund settled at the provider (`document` is the credit note).
pub const PAYMENT_REFUNDED: &str = "payment.refunded";
/// The authorization was voided (an order cancelled before anything was captured).
pub const PAYMENT_VOIDED: &str = "payment.voided";
/// What an order that reached its final state will never capture was released at the provider (short
/// shipment, cancelled lines, a cancel after a partial shipment; `amount_minor` is what was released).
pub const PAYMENT_RELEASED: &str = "payment.released";
/// Service recorded money received for a terms or cash-on-delivery order (`document` is its reference).
pub const PAYMENT_RECORDED: &str = "payment.recorded";
/// A capture, refund or void needs a person (`reason`); the order is flagged `payment_action_required`.
pub const PAYMENT_FAILED: &str = "payment.failed";
/// A channel's order was taken.
pub const ORDER_CREATED: &str = "order.created";
/// Units of an order were assigned to sites (at intake, or later from the backorder or a re-route).
pub const ORDER_ROUTED: &str = "order.routed";
/// The customer's cancellation was recorded.
pub const ORDER_CANCELLED: &str = "order.cancelled";
/// Units of an order still waiting for stock were cancelled (`lines`, `reason`); the order goes on.
pub const ORDER_LINES_CANCELLED: &str = "order.lines_cancelled";
/// A site accepted its part of an order.
pub const FULFILLMENT_ACCEPTED: &str = "fulfillment.accepted";
/// A site handed its part to the carrier.
pub const FULFILLMENT_SHIPPED: &str = "fulfillment.shipped";
/// The carrier delivered a site's part (one event per fulfillment: a split order has several parcels).
pub const ORDER_DELIVERED: &str = "order.delivered";
/// A SKU's available units at a site fell to `[events] stock_low_at` or below (once per fall).
pub const STOCK_LOW: &str = "stock.low";
/// A node's connection has been down for the debounce period.
pub const NODE_OFFLINE: &str = "node.offline";
/// A node's connection has been up for the debounce period (after being reported offline, or first seen).
pub const NODE_ONLINE: &str = "node.online";

/// Most events one page of the feed returns.
pub const PAGE_MAX: usize = 1_000;
/// Most events pruned in one transaction.
pub const PRUNE_BATCH_MAX: usize = 1_000;
/// Longest event [`append`] stores, bytes of JSON; a larger one keeps its type and order but its `data` is
/// replaced by `{"truncated": true, "bytes": n}` (events carry ids and small facts; an order of 200 lines
/// stays well below).
pub const PAYLOAD_BYTES_MAX: usize = 64 * 1024;
/// Most types one filter names.
pub const FILTER_TYPES_MAX: usize = 32;

/// The `[events]` section of the hub's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// How long events are kept, ms (default 7 days; at least the webhooks' `retry_for_ms`).
    pub retention_ms: u64,
    /// Most events kept (default 10 million); the oldest beyond are pruned.
    pub retained_max: u64,
    /// How long a node's connection must stay down (up) before `node.offline` (`node.online`), ms.
    pub node_debounce_ms: u64,
    /// `stock.low` when a SKU's available units at a site (on hand − reserved) fall to this or below
    /// (default 0: when it runs out).
    pub stock_low_at: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            retention_ms: 7 * 24 * 3_600_000,
            retained_max: 10_000_000,
            node_debounce_ms: 10_000,
            stock_low_at: 0,
        }
    }
}

impl EventsConfig {
    /// Why these values are not usable, if they are not.
    pub fn check(&self, webhooks: &webhooks::WebhooksConfig) -> Result<(), String> {
        if self.retention_ms < webhooks.retry_for_ms {
            return Err(format!(
                "[events] retention_ms ({}) must be at least [webhooks] retry_for_ms ({})",
                self.retention_ms, webhooks.retry_for_ms
            ));
        }
        if self.retained_max == 0 {
            return Err("[events] retained_max must be at least 1".into());
        }
        if self.node_debounce_ms > 3_600_000 {
            return Err("[events] node_debounce_ms must be at most one hour".into());
        }
        Ok(())
    }
}

/// An event as stored, served by the feed and posted to webhooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// Stable, unique id (`evt_…`): the same in the feed and in every delivery of it.
    pub id: String,
    /// Position in the log, from 1.
    pub seq: u64,
    /// The type, one of [`TYPES`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The customer order it concerns.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub order_id: Option<String>,
    /// That order's channel.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub channel: Option<String>,
    /// When the change was made, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// What the change was.
    #[schema(value_type = Object)]
    pub data: Value,
}

impl Event {
    /// Whether a caller confined to `channel` (a channel key) may see this event: only its own orders'.
    pub fn visible_to(&self, confined_to: Option<&Channel>) -> bool {
        confined_to.is_none_or(|c| self.channel.as_deref() == Some(c.as_str()))
    }
}

/// An event to append: its type, order and payload.
#[derive(Debug, Clone)]
pub struct EventDraft {
    kind: &'static str,
    at_ms: u64,
    order: Option<(String, String)>,
    data: Value,
}

impl EventDraft {
    /// An event of type `kind` (one of [`TYPES`]) for a change made at `at_ms`.
    pub fn new(kind: &'static str, at_ms: u64) -> Self {
        EventDraft { kind, at_ms, order: None, data: Value::Object(Default::default()) }
    }

    /// The customer order it concerns, and that order's channel.
    pub fn order(mut self, id: &OrderId, channel: &Channel) -> Self {
        self.order = Some((id.to_string(), channel.as_str().to_owned()));
        self
    }

    /// Its payload (a JSON object).
    pub fn data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }
}

/// The intake's events, built here so the intake only calls them.
impl EventDraft {
    /// `order.created` for a channel order just taken.
    pub fn created(o: &HubOrder, at_ms: u64) -> Self {
        let lines: Vec<Value> = o.draft.lines.iter().map(|l| json!({"sku": l.sku, "qty": l.qty})).collect();
        EventDraft::new(ORDER_CREATED, at_ms)
            .order(&o.id, &o.draft.channel)
            .data(json!({"external_ref": o.draft.external_ref, "lines": lines}))
    }

    /// `order.routed` for the fulfillments `placed` just made, with the units still waiting.
    /// `trigger` says what routed them (`intake`, `backorder`, a re-route's reason).
    pub fn routed(o: &HubOrder, placed: &[Fulfillment], unfilled: &[SkuQty], trigger: &str, at_ms: u64) -> Self {
        let fulfillments: Vec<Value> =
            placed.iter().map(|f| json!({"fulfillment_id": f.id, "site": f.site, "lines": f.lines})).collect();
        EventDraft::new(ORDER_ROUTED, at_ms)
            .order(&o.id, &o.draft.channel)
            .data(json!({"external_ref": o.draft.external_ref, "fulfillments": fulfillments, "unfilled": unfilled,
                "trigger": trigger}))
    }

    /// `order.cancelled` for a cancellation just recorded.
    pub fn cancelled(o: &HubOrder, at_ms: u64) -> Self {
        EventDraft::new(ORDER_CANCELLED, at_ms).order(&o.id, &o.draft.channel).data(json!({
            "external_ref": o.draft.external_ref, "reason": o.cancel_reason,
            "cancelled_unfilled": o.cancelled_unfilled,
            "fulfillments_asked": o.fulfillments.iter().filter(|f| f.released.is_none()).map(|f| &f.id).collect::<Vec<_>>(),
        }))
    }
}

/// The returns' events, built here so the returns module only calls them.
impl EventDraft {
    /// A `return.*` event of `kind` for `rma` (its order, channel, site and units), with `extra` merged into
    /// the payload.
    pub fn rma(kind: &'static str, rma: &crate::returns::Rma, at_ms: u64, extra: Value) -> Self {
        let lines: Vec<Value> =
            rma.lines.iter().map(|l| json!({"sku": l.sku, "qty": l.qty, "received": l.received})).collect();
        let mut data = json!({"rma": rma.id, "state": rma.state, "fulfillment_id": rma.fulfillment,
            "site": rma.site, "lines": lines});
        if let (Some(d), Value::Object(more)) = (data.as_object_mut(), extra) {
            d.extend(more);
        }
        let mut draft = EventDraft::new(kind, at_ms).data(data);
        draft.order = Some((rma.order.clone(), rma.channel.as_str().to_owned()));
        draft
    }
}

impl EventDraft {
    /// `order.lines_cancelled` for units of `o` waiting for stock that were just cancelled.
    pub fn lines_cancelled(o: &HubOrder, lines: &[SkuQty], reason: Option<&str>, at_ms: u64) -> Self {
        EventDraft::new(ORDER_LINES_CANCELLED, at_ms).order(&o.id, &o.draft.channel).data(json!({
            "external_ref": o.draft.external_ref, "lines": lines, "reason": reason, "unfilled": o.unfilled,
        }))
    }
}

/// The id of an appended event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventId {
    /// Its sequence.
    pub seq: u64,
    /// Its id.
    pub id: String,
}

/// Appends `draft` to the log in `w`, the write transaction of the change it reports: it is committed (and
/// seen by the feed and the webhooks) with that change, or not at all. Returns its sequence and id.
///
/// A transaction that appends many events (the intake's batches) opens a [`Log`] once instead.
pub fn append(w: &redb::WriteTransaction, draft: EventDraft) -> Result<EventId, StorageError> {
    let mut log = Log::open(w)?;
    let id = log.append(draft, &mut |order, fulfillment| crate::intake::promise_of(w, order, fulfillment))?;
    log.finish()?;
    Ok(id)
}

/// When an order was taken and what ship-by one of its fulfillments was promised (order id, fulfillment id →
/// nones when unknown), for the reports' fold of a shipment.
pub type Promises<'a> = dyn FnMut(&str, &str) -> Result<(Option<u64>, Option<u64>), StorageError> + 'a;

/// The log open in one write transaction, for appending several events: its tables are opened, and its id
/// and next sequence read, once; the reports' figures of all its events are read and written once per
/// (day, site, channel) row at [`Log::finish`] (see [`crate::reports::Days`]). While it is open no other
/// code may append in the same transaction (redb refuses to open a table twice in one), and it must be
/// finished before the transaction commits, or the figures of its events are not counted.
pub struct Log<'t> {
    log: u64,
    next: u64,
    events: redb::Table<'t, u64, &'static [u8]>,
    days: crate::reports::Days<'t>,
}

impl<'t> Log<'t> {
    /// Opens the log in `w`, giving it its random id on the first append ever.
    pub fn open(w: &'t redb::WriteTransaction) -> Result<Log<'t>, StorageError> {
        let mut meta = w.open_table(EVENTS_META).map_err(redb::Error::from)?;
        let found = meta.get(LOG_ID).map_err(redb::Error::from)?.map(|v| v.value());
        let log = match found {
            Some(v) => v,
            None => {
                let id: u64 = rand::random();
                meta.insert(LOG_ID, id).map_err(redb::Error::from)?;
                id
            }
        };
        let events = w.open_table(EVENTS).map_err(redb::Error::from)?;
        // After pruning the front, the last row still holds the highest sequence; an empty log starts after the
        // highest ever pruned (kept in meta) so a sequence is never reused.
        let last = events.last().map_err(redb::Error::from)?.map(|(k, _)| k.value());
        let floor = meta.get(PRUNED_THROUGH).map_err(redb::Error::from)?.map(|v| v.value()).unwrap_or(0);
        Ok(Log { log, next: last.unwrap_or(0).max(floor) + 1, events, days: crate::reports::Days::open(w) })
    }

    /// Appends `draft` (see [`append`]); `promises` answers the reports' fold of a shipment.
    pub fn append(&mut self, draft: EventDraft, promises: &mut Promises<'_>) -> Result<EventId, StorageError> {
        let seq = self.next;
        let (order_id, channel) = match draft.order {
            Some((o, c)) => (Some(o), Some(c)),
            None => (None, None),
        };
        let mut event = Event {
            id: format!("evt_{:016x}{seq:016x}", self.log),
            seq,
            kind: draft.kind.to_owned(),
            order_id,
            channel,
            created_at_ms: draft.at_ms,
            data: draft.data,
        };
        // The reports count it in the same transaction: exactly when the change commits.
        self.days.fold(&event, promises)?;
        let mut bytes = serde_json::to_vec(&event).map_err(|e| StorageError::encode("an event", e))?;
        if bytes.len() > PAYLOAD_BYTES_MAX {
            // Never fail the change for its event: say what was left out instead (the order itself is there).
            event.data = json!({"truncated": true, "bytes": bytes.len()});
            bytes = serde_json::to_vec(&event).map_err(|e| StorageError::encode("an event", e))?;
        }
        self.events.insert(seq, bytes.as_slice()).map_err(redb::Error::from)?;
        self.next = seq + 1;
        Ok(EventId { seq, id: event.id })
    }

    /// Writes the reports' figures of the events appended (before the transaction commits).
    pub fn finish(self) -> Result<(), StorageError> {
        self.days.finish()
    }
}

/// The highest sequence pruned so far (in [`EVENTS_META`]).
const PRUNED_THROUGH: &str = "pruned_through";

/// Creates the log's tables, so readers find them.
pub fn init(db: &redb::Database) -> Result<(), StorageError> {
    let w = db.begin_write().map_err(redb::Error::from)?;
    w.open_table(EVENTS).map_err(redb::Error::from)?;
    w.open_table(EVENTS_META).map_err(redb::Error::from)?;
    watch::init(&w)?;
    webhooks::init(&w)?;
    crate::reports::init(&w, oms_service::now_ms())?;
    w.commit().map_err(redb::Error::from)?;
    Ok(())
}

/// `table` opened for reading in `r`; `None` while no write has created it (a file from before events).
pub(crate) fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    r: &redb::ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StorageError> {
    match r.open_table(table) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(redb::Error::from(e).into()),
    }
}

fn decode(bytes: &[u8]) -> Result<Event, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::encode("reading an event", e))
}

/// A filter on event types: exact names, or families (`order.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeFilter(pub Vec<String>);

impl TypeFilter {
    /// Parses and checks a list of types: each one of [`TYPES`] or a family of them (`payment.*`); empty means
    /// every type. At most [`FILTER_TYPES_MAX`].
    pub fn parse<S: AsRef<str>>(types: &[S]) -> Result<TypeFilter, String> {
        if types.len() > FILTER_TYPES_MAX {
            return Err(format!("at most {FILTER_TYPES_MAX} types"));
        }
        let mut out = Vec::new();
        for t in types {
            let t = t.as_ref().trim();
            let known = match t.strip_suffix(".*") {
                Some(family) => TYPES.iter().any(|k| k.split_once('.').is_some_and(|(f, _)| f == family)),
                None => TYPES.contains(&t),
            };
            if !known {
                return Err(format!("unknown event type {t:?}; known: {}", TYPES.join(", ")));
            }
            if !out.iter().any(|o| o == t) {
                out.push(t.to_owned());
            }
        }
        Ok(TypeFilter(out))
    }

    /// Whether `kind` passes.
    pub fn admits(&self, kind: &str) -> bool {
        self.0.is_empty()
            || self.0.iter().any(|t| match t.strip_suffix(".*") {
                Some(family) => kind.split_once('.').is_some_and(|(f, _)| f == family),
                None => t == kind,
            })
    }
}

/// A page of the log read by [`page`].
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The events that passed the filters, in sequence order.
    pub events: Vec<Event>,
    /// The last sequence looked at (passed or not): where the next page starts. Equals `after` when nothing
    /// newer is committed.
    pub last_seq: u64,
}

/// Events after `after` (exclusive) that `types` admits and a caller confined to `channel` may see: at most
/// `limit` (capped at [`PAGE_MAX`]), looking at most `scan_max` rows.
pub fn page(
    db: &redb::Database,
    after: u64,
    limit: usize,
    types: &TypeFilter,
    channel: Option<&Channel>,
    scan_max: usize,
) -> Result<Page, StorageError> {
    let limit = limit.clamp(1, PAGE_MAX);
    let r = db.begin_read().map_err(redb::Error::from)?;
    let Some(t) = read_table(&r, EVENTS)? else { return Ok(Page { events: vec![], last_seq: after }) };
    let mut out = Page { events: Vec::new(), last_seq: after };
    for row in t.range(after.saturating_add(1)..).map_err(redb::Error::from)?.take(scan_max.max(1)) {
        let (k, v) = row.map_err(redb::Error::from)?;
        out.last_seq = k.value();
        let e = decode(v.value())?;
        if types.admits(&e.kind) && e.visible_to(channel) {
            out.events.push(e);
            if out.events.len() == limit {
                break;
            }
        }
    }
    Ok(out)
}

/// The highest sequence committed (0 for an empty log).
pub fn last_seq(db: &redb::Database) -> Result<u64, StorageError> {
    let r = db.begin_read().map_err(redb::Error::from)?;
    let Some(t) = read_table(&r, EVENTS)? else { return Ok(0) };
    Ok(t.last().map_err(redb::Error::from)?.map(|(k, _)| k.value()).unwrap_or(0))
}

/// Prunes at most [`PRUNE_BATCH_MAX`] of the oldest events that are older than `cutoff_ms` or beyond the
/// newest `retained_max`; returns how many. Call again while it returns the full batch.
pub fn prune(db: &redb::Database, cutoff_ms: u64, retained_max: u64) -> Result<usize, StorageError> {
    // A read first: most calls find nothing to prune and should not wait for the intake's writer.
    {
        let r = db.begin_read().map_err(redb::Error::from)?;
        let Some(t) = read_table(&r, EVENTS)? else { return Ok(0) };
        let held = t.len().map_err(redb::Error::from)?;
        let first = t.first().map_err(redb::Error::from)?;
        let old = first.is_some_and(|(_, v)| decode(v.value()).map_or(true, |e| e.created_at_ms < cutoff_ms));
        if !old && held <= retained_max {
            return Ok(0);
        }
    }
    let w = db.begin_write().map_err(redb::Error::from)?;
    let mut gone = Vec::new();
    {
        let t = w.open_table(EVENTS).map_err(redb::Error::from)?;
        let mut held = t.len().map_err(redb::Error::from)?;
        for row in t.range(0u64..).map_err(redb::Error::from)?.take(PRUNE_BATCH_MAX) {
            let (k, v) = row.map_err(redb::Error::from)?;
            // A row that does not decode is pruned by age like any other (it cannot be served anyway).
            let old = decode(v.value()).map_or(true, |e| e.created_at_ms < cutoff_ms);
            if !old && held <= retained_max {
                break;
            }
            gone.push(k.value());
            held = held.saturating_sub(1);
        }
    }
    if gone.is_empty() {
        return Ok(0);
    }
    {
        let mut t = w.open_table(EVENTS).map_err(redb::Error::from)?;
        for seq in &gone {
            t.remove(*seq).map_err(redb::Error::from)?;
        }
        let mut meta = w.open_table(EVENTS_META).map_err(redb::Error::from)?;
        let through = gone.iter().copied().max().unwrap_or(0);
        let before = meta.get(PRUNED_THROUGH).map_err(redb::Error::from)?.map(|v| v.value()).unwrap_or(0);
        meta.insert(PRUNED_THROUGH, through.max(before)).map_err(redb::Error::from)?;
    }
    w.commit().map_err(redb::Error::from)?;
    Ok(gone.len())
}

impl webhooks::DbSource for crate::server::Hub {
    fn db(&self) -> &redb::Database {
        self.intake.db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, redb::Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("e.redb")).unwrap();
        init(&db).unwrap();
        (dir, db)
    }

    fn order(n: u64) -> OrderId {
        OrderId::parse(&format!("hub-{n}")).unwrap()
    }

    #[test]
    fn events_exist_only_once_their_transaction_commits() {
        let (_d, db) = db();
        let web = Channel::parse("web").unwrap();
        let w = db.begin_write().unwrap();
        let a = append(&w, EventDraft::new(ORDER_CREATED, 5).order(&order(1), &web)).unwrap();
        assert_eq!(page(&db, 0, 10, &TypeFilter::default(), None, 100).unwrap().events, vec![], "not committed");
        w.commit().unwrap();
        let got = page(&db, 0, 10, &TypeFilter::default(), None, 100).unwrap();
        assert_eq!(got.events.len(), 1);
        assert_eq!((got.events[0].seq, &got.events[0].id), (a.seq, &a.id));
        // An aborted transaction leaves no event and no gap.
        let w = db.begin_write().unwrap();
        append(&w, EventDraft::new(ORDER_CANCELLED, 6).order(&order(1), &web)).unwrap();
        w.abort().unwrap();
        let w = db.begin_write().unwrap();
        let b = append(&w, EventDraft::new(ORDER_CANCELLED, 7).order(&order(1), &web)).unwrap();
        w.commit().unwrap();
        assert_eq!(b.seq, a.seq + 1);
        assert_ne!(a.id, b.id);
        assert_eq!(last_seq(&db).unwrap(), b.seq);
    }

    #[test]
    fn filters_and_channels_confine_a_page() {
        let (_d, db) = db();
        let (web, shop) = (Channel::parse("web").unwrap(), Channel::parse("shop").unwrap());
        let w = db.begin_write().unwrap();
        append(&w, EventDraft::new(ORDER_CREATED, 1).order(&order(1), &web)).unwrap();
        append(&w, EventDraft::new(ORDER_CREATED, 1).order(&order(2), &shop)).unwrap();
        append(&w, EventDraft::new(ORDER_ROUTED, 1).order(&order(1), &web)).unwrap();
        append(&w, EventDraft::new(NODE_OFFLINE, 1)).unwrap();
        w.commit().unwrap();
        let all = TypeFilter::default();
        assert_eq!(page(&db, 0, 10, &all, None, 100).unwrap().events.len(), 4);
        let mine = page(&db, 0, 10, &all, Some(&web), 100).unwrap();
        assert_eq!(mine.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 3], "no other channel, no node");
        let orders = TypeFilter::parse(&["order.*"]).unwrap();
        assert_eq!(page(&db, 0, 10, &orders, None, 100).unwrap().events.len(), 3);
        let routed = TypeFilter::parse(&["order.routed"]).unwrap();
        let p = page(&db, 0, 10, &routed, None, 2).unwrap();
        assert_eq!((p.events.len(), p.last_seq), (0, 2), "the scan bound holds and says where it stopped");
        assert!(TypeFilter::parse(&["order.shipped"]).is_err());
        assert!(TypeFilter::parse(&["nope.*"]).is_err());
        assert!(TypeFilter::parse(&vec!["order.created"; FILTER_TYPES_MAX + 1]).is_err());
        assert!(TypeFilter::parse(&["payment.*"]).unwrap().admits("payment.captured"));
    }

    #[test]
    fn an_oversized_payload_is_cut_not_failed() {
        let (_d, db) = db();
        let w = db.begin_write().unwrap();
        let big = json!({"blob": "x".repeat(PAYLOAD_BYTES_MAX)});
        append(&w, EventDraft::new(ORDER_CREATED, 1).order(&order(1), &Channel::parse("web").unwrap()).data(big))
            .unwrap();
        w.commit().unwrap();
        let e = &page(&db, 0, 10, &TypeFilter::default(), None, 100).unwrap().events[0];
        assert_eq!((e.kind.as_str(), e.order_id.as_deref()), (ORDER_CREATED, Some("hub-1")));
        assert_eq!(e.data["truncated"], true);
    }

    #[test]
    fn pruning_is_bounded_and_never_reuses_a_sequence() {
        let (_d, db) = db();
        let w = db.begin_write().unwrap();
        for i in 0..(PRUNE_BATCH_MAX as u64 + 10) {
            append(&w, EventDraft::new(NODE_ONLINE, i)).unwrap();
        }
        w.commit().unwrap();
        // Everything is older than the cutoff: one batch at a time.
        assert_eq!(prune(&db, u64::MAX, u64::MAX).unwrap(), PRUNE_BATCH_MAX);
        assert_eq!(prune(&db, u64::MAX, u64::MAX).unwrap(), 10);
        assert_eq!(prune(&db, u64::MAX, u64::MAX).unwrap(), 0);
        let w = db.begin_write().unwrap();
        let next = append(&w, EventDraft::new(NODE_ONLINE, 1)).unwrap();
        w.commit().unwrap();
        assert_eq!(next.seq, PRUNE_BATCH_MAX as u64 + 11, "a sequence is never reused after pruning");
        // By count: keep the newest 2.
        let w = db.begin_write().unwrap();
        for _ in 0..4 {
            append(&w, EventDraft::new(NODE_ONLINE, 100)).unwrap();
        }
        w.commit().unwrap();
        assert_eq!(prune(&db, 0, 2).unwrap(), 3);
        let left = page(&db, 0, 10, &TypeFilter::default(), None, 100).unwrap().events;
        assert_eq!(left.iter().map(|e| e.seq).collect::<Vec<_>>(), [next.seq + 3, next.seq + 4]);
    }
}
