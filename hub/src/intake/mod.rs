//! Channel intake: customer orders taken by the hub, routed within the stock rights the hub holds at each
//! site (escrow), split into fulfillment orders that travel to the sites as `order/hub-<seq>.<n>` documents.
//!
//! State, in `intake.redb` beside `hub.redb`:
//! - customer orders (`hub-<seq>`): the draft, its fulfillment orders, the units not yet placed, every
//!   routing decision with its explanation, the cancellation request;
//! - idempotency records (the order's channel and the key → canonical body hash, order id): a key is the
//!   channel's own, so two channels using the same key get two orders and neither can replay the other's; a
//!   record from before keys were scoped (the bare key) still answers a replay of its own body;
//! - each order's customer tracking token (by its SHA-256) and the orders of each channel (an index);
//! - the audit trail ([`oms_service::audit::AUDIT`]): one row per admitted create or cancel, in the same
//!   transaction as the change (for a call the intake refused, the row is all that call writes);
//! - the hub's view of every (site, SKU) escrow counter;
//! - shipments assigned per site and day (capacity).
//!
//! **Group commit.** Channel orders go through one writer thread (`writer`, started by [`Intake::start`],
//! fed by [`Intake::submit`]): it takes the queued orders in batches (bounded queue and batch,
//! [`IntakeLimits`]; a full queue is [`IntakeError::Overloaded`]) and takes each batch in **one** write
//! transaction, deciding the orders in queue order, each against what the ones before it wrote: the
//! idempotency records, the capacity and the rights (escrow counters changed by the transaction lie over the
//! committed ones until it commits). Every order is read and decided before it writes, so a refusal leaves
//! only its audit row; a storage error fails the whole batch and every caller in it. The sites' views come
//! once per batch. [`Intake::place`] is the same code for one order in a transaction of its own.
//!
//! One intake transaction holds each order, its idempotency record, the rights it consumed and the capacity
//! it used, and is committed (fsync) before the fulfillment documents are written into `hub.redb` and the
//! channel gets its `201`. If the hub dies between the two commits, the next start recreates the missing
//! documents from the committed orders (creation is idempotent: a document that exists is left alone), so an
//! acknowledged order is never lost and never assigned twice.
//!
//! **A start reads the open work, not the history**: the orders waiting for units (table `orders_open`) and
//! the fulfillments a site has not finished with (`fulfillments_live`, [`Intake::live_fulfillments`]), both
//! kept in the transactions that change them; the watcher drops a fulfillment from the second once its site
//! shipped it ([`Intake::finished`]) or it was re-routed. A file from before these tables is indexed once.
//!
//! Every write (a batch, a re-route, a cancel, a merge of a site's escrow view) holds the intake's state lock
//! from its first read until after its commit, so none routes against rights another consumed but has not
//! committed, and the in-memory counters only ever hold committed states.
//!
//! Rights: the hub assigns a unit of a SKU to a site only by consuming a right to it
//! (`EscrowCounter::consume(Hub, …)`, refused beyond the hub's rights, after its lease or beyond its
//! unacknowledged budget). Rights come back only through the site (it transfers them when an assignment is
//! rejected or cancelled), and arrive here by merging the site's view from its stock document.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use oms_protocol::domain::{Channel, GeoPoint, NodeId, OrderDraft, OrderId, OrderLine, Sku};
use oms_protocol::escrow::{EscrowCounter, Party, Rebalance, RebalanceInput, RebalancePolicy, rebalance};
use oms_protocol::schema::SiteInfo;
use oms_service::audit::{self, AUDIT, Actor, AuditEvent};
use oms_service::auth::keys::{hex, token_hash};
use oms_service::lock;
use oms_service::storage::StorageError;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::routing::{self, Outcome, RouteLine, RouteRequest, RoutingDecision, RoutingPolicy, SiteView, SkuQty};

mod reroute;
mod writer;

pub use writer::{BatchCounts, DOCS_BATCHES_MAX, DOCS_QUEUE_MAX, EffectsSink, IntakeLimits, SiteSource, body_hash};

/// The format of `intake.redb` (see `oms_service::storage::format`): 1 is the first versioned one, the same
/// tables as the unversioned files before it, whose one-time index builds still run at open. Every table in
/// the file, whoever adds it, is covered by the version and by backups; a change to a table's layout takes
/// the next version and a migration.
///
/// - 2: payments record what each closed authorization released ([`crate::money::migrate_released`]).
pub const INTAKE_FORMAT: oms_service::storage::Format = oms_service::storage::Format {
    kind: "intake",
    version: 2,
    derived: false,
    migrations: &[oms_service::storage::format::Migration {
        to: 2,
        what: "payments: the released amount of authorizations closed before it was recorded",
        apply: crate::money::migrate_released,
    }],
};
const ORDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("orders");
const IDEM: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");
/// (recorded at ms, key) → (): idempotency records by age, pruned like the node's.
const IDEM_BY_TIME: TableDefinition<(u64, &str), ()> = TableDefinition::new("idempotency_by_time");
/// How long an idempotency key is remembered, ms (the node's default too).
pub const IDEMPOTENCY_RETENTION_MS: u64 = 7 * 24 * 3_600_000;
const ESCROW: TableDefinition<&str, &[u8]> = TableDefinition::new("escrow");
const CAPACITY: TableDefinition<&str, u64> = TableDefinition::new("capacity");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SEQ_ORDER: &str = "seq.order";
/// SHA-256 of a tracking token → the order's id.
const TRACKING: TableDefinition<&[u8], &str> = TableDefinition::new("tracking");
/// `<channel>\u{1f}<order id>` → (): each channel's orders, for a channel key's listing.
const BY_CHANNEL: TableDefinition<&str, ()> = TableDefinition::new("orders_by_channel");
/// Set in `meta` once [`BY_CHANNEL`] holds every order (orders taken before it existed are added at open).
const BY_CHANNEL_BUILT: &str = "index.by_channel";
/// `<kind>:<value>\u{1f}<order id>` → (): the orders by what a customer tells service (e-mail, phone, the
/// channel's order reference), see [`search_keys`].
const BY_CONTACT: TableDefinition<&str, ()> = TableDefinition::new("orders_by_contact");
/// Set in `meta` once [`BY_CONTACT`] holds every order.
const BY_CONTACT_BUILT: &str = "index.by_contact";
/// Most orders one search answers.
pub const SEARCH_RESULTS_MAX: usize = 50;
/// Customer orders with units waiting to be placed (`HubOrder::wants_routing`), kept with every write of an
/// order: what a start loads instead of reading every order.
const OPEN: TableDefinition<&str, ()> = TableDefinition::new("orders_open");
/// Fulfillment id → its customer order: fulfillments whose site has not finished with them (not shipped,
/// delivered, rejected or cancelled as far as the watcher has seen). A start recreates the missing documents
/// of these and looks at the others again, and nothing else: its work is the open work.
const LIVE: TableDefinition<&str, &str> = TableDefinition::new("fulfillments_live");
/// Set in `meta` once [`OPEN`] and [`LIVE`] are complete (files from before them are indexed at open).
const OPEN_LIVE_BUILT: &str = "index.open_live";
/// Separates the channel from the rest of a key: neither a channel (`- _ . : /`, letters, digits) nor an
/// idempotency key (visible ASCII) may contain it, so `(channel, key)` pairs never collide.
const SCOPE_SEP: char = '\u{1f}';
/// Hex digits of a tracking token (32 random bytes).
pub const TRACKING_TOKEN_HEX_LEN: usize = 64;
/// Largest page of a channel's order listing.
pub const CHANNEL_PAGE_MAX: usize = 1_000;

/// The hub's intake database file, in the data directory.
pub const INTAKE_DB_FILE: &str = "intake.redb";
/// Routing decisions kept per order (the first and the latest ones).
pub const DECISIONS_MAX: usize = 16;
/// Fulfillment orders per customer order (re-routing stops there and the rest stays unfilled).
pub const FULFILLMENTS_MAX: usize = 32;
/// Orders with unplaced units re-routed per pass.
pub const RETRY_BATCH_MAX: usize = 256;
/// (site, SKU) escrow counters held.
pub const ESCROW_CELLS_MAX: usize = 5_000_000;

/// The node id under which the hub numbers its orders.
pub fn hub_node() -> NodeId {
    NodeId::parse(oms_protocol::schema::HUB_ORIGIN).unwrap_or_else(|_| unreachable!("\"hub\" is a valid id"))
}

/// Why the intake refused or failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IntakeError {
    /// The idempotency key was used for another body.
    #[error("idempotency key {0:?} was already used for a different request body")]
    KeyReused(String),
    /// Nothing could be placed and the policy rejects such orders.
    #[error("no site holds stock the hub may promise for this order")]
    CannotFill(Box<RoutingDecision>),
    /// No such order.
    #[error("order {0} is not a hub order")]
    NotFound(String),
    /// A line cancel asked for more units than can be cancelled, or the order is being cancelled already.
    #[error(
        "{requested} units of {sku} asked to cancel, {waiting} can be (waiting for stock, or at a site and not shipped)"
    )]
    NotWaiting {
        /// The SKU.
        sku: String,
        /// Units asked for.
        requested: u64,
        /// Units that can still be cancelled: waiting for stock, or in a fulfillment its site has not shipped
        /// or given back and no cancel was asked of.
        waiting: u64,
    },
    /// The order has no such fulfillment.
    #[error("order {order} has no fulfillment {fulfillment}")]
    FulfillmentNotFound {
        /// The order.
        order: String,
        /// The fulfillment asked for.
        fulfillment: String,
    },
    /// The fulfillment cannot be cancelled at its site: given back already, a cancel asked already, or the
    /// whole order being cancelled.
    #[error("fulfillment {fulfillment} cannot be cancelled at its site: {why}")]
    FulfillmentNotOpen {
        /// The fulfillment.
        fulfillment: String,
        /// Why, in words.
        why: &'static str,
    },
    /// The writer's queue is full ([`IntakeLimits::queue_max`]); nothing was written.
    #[error("the hub's intake is overloaded; retry shortly")]
    Overloaded,
    /// The writer is not running (not started yet, or stopped); nothing was written.
    #[error("the hub's intake is not taking orders")]
    ShuttingDown,
    /// The database failed; nothing was written. Shared, because every caller of a failed batch gets it.
    #[error("storage failure, nothing was written: {0}")]
    Storage(#[source] Arc<StorageError>),
    /// A stored record does not decode.
    #[error("corrupt record in {table}: {detail}")]
    Corrupt {
        /// Table.
        table: &'static str,
        /// Why.
        detail: String,
    },
}

oms_service::storage_errors_from_redb!(IntakeError);

impl From<crate::money::MoneyError> for IntakeError {
    fn from(e: crate::money::MoneyError) -> Self {
        match e {
            crate::money::MoneyError::Storage(s) => IntakeError::Storage(s),
            other => IntakeError::Corrupt { table: "payments", detail: other.to_string() },
        }
    }
}

impl IntakeError {
    /// The stable code of the error, as the HTTP problem and the audit row's outcome name it.
    pub fn code(&self) -> &'static str {
        match self {
            IntakeError::KeyReused(_) => "idempotency_key_reused",
            IntakeError::CannotFill(_) => "cannot_fill",
            IntakeError::NotFound(_) => "order_not_found",
            IntakeError::NotWaiting { .. } => "units_not_waiting",
            IntakeError::FulfillmentNotFound { .. } => "fulfillment_not_found",
            IntakeError::FulfillmentNotOpen { .. } => "fulfillment_not_cancellable",
            IntakeError::Overloaded => "overloaded",
            IntakeError::ShuttingDown => "shutting_down",
            IntakeError::Storage(_) => "storage_unavailable",
            IntakeError::Corrupt { .. } => "corrupt_record",
        }
    }
}

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
struct IdemRecord {
    body_sha256: [u8; 32],
    order: String,
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

struct State {
    escrow: HashMap<(NodeId, Sku), EscrowCounter>,
    /// Customer orders with units waiting to be placed.
    open: BTreeSet<String>,
}

/// Escrow counters a write transaction changed, not yet committed: laid over [`State::escrow`] while the
/// transaction is open, merged into it once the transaction has committed.
type Overlay = HashMap<(NodeId, Sku), EscrowCounter>;

/// The hub's rights to `key` as a write transaction sees them: what it changed, else what is committed.
fn rights<'a>(st: &'a State, overlay: &'a Overlay, key: &(NodeId, Sku)) -> Option<&'a EscrowCounter> {
    overlay.get(key).or_else(|| st.escrow.get(key))
}

/// The database and the in-memory state that the intake's writer thread and the other writes share.
struct Core {
    db: Arc<Database>,
    /// Taken by every write from before it reads until after it committed (the writer holds it for a whole
    /// batch), so no write routes against rights another one has consumed but not yet recorded here.
    state: Mutex<State>,
    policy: RoutingPolicy,
    rebalance: RebalancePolicy,
    stats: writer::BatchStats,
    /// Order records read by [`Intake::open`] and [`Intake::live_fulfillments`]: what a start costs, which
    /// tests hold to the open work ([`Intake::start_reads`]).
    start_reads: std::sync::atomic::AtomicU64,
}

/// The intake. See the module docs.
pub struct Intake {
    core: Arc<Core>,
    /// The writer's queue, once [`Intake::start`] has started it.
    queue: OnceLock<writer::Queue>,
}

fn enc_json<T: Serialize>(v: &T) -> Result<Vec<u8>, IntakeError> {
    serde_json::to_vec(v).map_err(|e| IntakeError::Storage(Arc::new(StorageError::encode("a JSON record", e))))
}

/// The idempotency record's key: the order's channel, [`SCOPE_SEP`], the caller's key.
fn scoped_key(channel: &Channel, key: &str) -> String {
    format!("{}{SCOPE_SEP}{key}", channel.as_str())
}

/// The index key of order `id` of `channel`.
fn channel_key(channel: &Channel, id: &str) -> String {
    format!("{}{SCOPE_SEP}{id}", channel.as_str())
}

/// What a search for `query` looks up: an e-mail address (lower case), a phone number (its digits, at least
/// five) or a channel's order reference (as given), each as `<kind>:<value>`.
fn search_terms(query: &str) -> Vec<String> {
    let q = query.trim();
    if q.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    if q.contains('@') {
        terms.push(email_term(q));
    }
    if q.chars().all(|c| c.is_ascii_digit() || " +-./()".contains(c)) {
        terms.extend(phone_term(q));
    }
    terms.push(ref_term(q));
    terms
}

/// The e-mail address as indexed and searched: trimmed, lower case.
fn email_term(email: &str) -> String {
    format!("email:{}", email.trim().to_lowercase())
}

/// The phone number as indexed and searched: its digits, if there are at least five.
fn phone_term(phone: &str) -> Option<String> {
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    (digits.len() >= 5).then(|| format!("phone:{digits}"))
}

/// The channel's order reference as indexed and searched: trimmed.
fn ref_term(external_ref: &str) -> String {
    format!("ref:{}", external_ref.trim())
}

/// The index keys of `draft`: its e-mail address, its phone number and its channel reference.
pub(crate) fn search_keys(draft: &oms_protocol::domain::OrderDraft, id: &str) -> Vec<String> {
    let email = draft.contact.email.as_deref().filter(|e| !e.trim().is_empty()).map(email_term);
    let phone = draft.contact.phone.as_deref().and_then(phone_term);
    email
        .into_iter()
        .chain(phone)
        .chain([ref_term(&draft.external_ref)])
        .map(|v| format!("{v}{SCOPE_SEP}{id}"))
        .collect()
}

/// Adds the orders of a file from before [`BY_CONTACT`] to it, once (one pass over every order).
fn index_contacts_once(db: &Database) -> Result<(), IntakeError> {
    let r = db.begin_read()?;
    if r.open_table(META)?.get(BY_CONTACT_BUILT)?.is_some() {
        return Ok(());
    }
    let mut keys = Vec::new();
    for item in r.open_table(ORDERS)?.range::<&str>(..)? {
        let (k, v) = item?;
        keys.extend(search_keys(&decode_order(v.value())?.draft, k.value()));
    }
    drop(r);
    let w = db.begin_write()?;
    {
        let mut t = w.open_table(BY_CONTACT)?;
        for k in &keys {
            t.insert(k.as_str(), ())?;
        }
        w.open_table(META)?.insert(BY_CONTACT_BUILT, 1)?;
    }
    w.commit()?;
    Ok(())
}

/// A fresh tracking token: 32 bytes from the operating system's generator, in hex.
fn new_tracking_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex(&bytes)
}

/// Whether `token` has the shape of a tracking token (checked before any lookup).
pub fn tracking_token_well_formed(token: &str) -> bool {
    token.len() == TRACKING_TOKEN_HEX_LEN && token.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Equality of two byte strings in time that depends on their lengths only.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn decode_order(bytes: &[u8]) -> Result<HubOrder, IntakeError> {
    serde_json::from_slice(bytes).map_err(|e| IntakeError::Corrupt { table: "orders", detail: e.to_string() })
}

/// A line cancel decided: the order with its waiting units taken, those units, and per fulfillment the units
/// to ask of its site.
type TakenUnits = (HubOrder, Vec<SkuQty>, BTreeMap<OrderId, Vec<SkuQty>>);

/// Decides a line cancel ([`Intake::cancel_units`]) on `order`: the units taken from `unfilled` (moved to
/// `cancelled_unfilled` in the returned order) and, per open fulfillment not in `closed`, the units to ask of
/// its site; or [`IntakeError::NotWaiting`] naming the first line that cannot be cancelled in full.
fn take_units(mut order: HubOrder, lines: &[SkuQty], closed: &BTreeSet<OrderId>) -> Result<TakenUnits, IntakeError> {
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

/// A refused call on order `id`: commits `w` with only the audit row naming `e`'s code, and returns `e`.
fn refuse<T>(
    w: redb::WriteTransaction,
    actor: &Actor,
    id: &str,
    now_ms: u64,
    e: IntakeError,
) -> Result<T, IntakeError> {
    audit::append(&mut w.open_table(AUDIT)?, actor, Some(id), now_ms, e.code())?;
    w.commit()?;
    Err(e)
}

fn get_order(t: &impl ReadableTable<&'static str, &'static [u8]>, id: &str) -> Result<Option<HubOrder>, IntakeError> {
    match t.get(id)? {
        Some(v) => Ok(Some(decode_order(v.value())?)),
        None => Ok(None),
    }
}

/// When order `order` was taken and what ship-by its fulfillment `fulfillment` was promised, read in `w` (for
/// the reports' fold); nones when either is unknown.
pub(crate) fn promise_of(
    w: &redb::WriteTransaction,
    order: &str,
    fulfillment: &str,
) -> Result<(Option<u64>, Option<u64>), StorageError> {
    promise_in(&w.open_table(ORDERS).map_err(redb::Error::from)?, order, fulfillment)
}

/// [`promise_of`] read in the orders' table `t`.
fn promise_in(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    order: &str,
    fulfillment: &str,
) -> Result<(Option<u64>, Option<u64>), StorageError> {
    let Some(o) = t.get(order).map_err(redb::Error::from)?.and_then(|v| decode_order(v.value()).ok()) else {
        return Ok((None, None));
    };
    let promise = o.fulfillments.iter().find(|f| f.id.as_str() == fulfillment).and_then(|f| f.promise.as_ref());
    Ok((Some(o.created_at_ms), promise.map(|p| p.ship_by_ms)))
}

/// The tables an order is written through, opened once in a write transaction: the orders, the open ones,
/// the sites' capacity used, the live fulfillments, the audit trail and the event log. redb looks a table up
/// in the transaction's table tree at each open and writes its root back at each close: once per insert, that
/// was a tenth of the intake writer's work. While they are open nothing else in the transaction may open one
/// of them (redb refuses a table opened twice), so every path that writes an order takes these, and
/// [`Tables::finish`] must come before the commit (it writes the reports' figures of the events).
pub(crate) struct Tables<'t> {
    orders: redb::Table<'t, &'static str, &'static [u8]>,
    open: redb::Table<'t, &'static str, ()>,
    capacity: redb::Table<'t, &'static str, u64>,
    live: redb::Table<'t, &'static str, &'static str>,
    audit: redb::Table<'t, u64, &'static [u8]>,
    log: crate::events::Log<'t>,
}

impl<'t> Tables<'t> {
    fn open(w: &'t redb::WriteTransaction) -> Result<Tables<'t>, IntakeError> {
        Ok(Tables {
            orders: w.open_table(ORDERS)?,
            open: w.open_table(OPEN)?,
            capacity: w.open_table(CAPACITY)?,
            live: w.open_table(LIVE)?,
            audit: w.open_table(AUDIT)?,
            log: crate::events::Log::open(w)?,
        })
    }

    /// Appends `draft` to the event log.
    fn event(&mut self, draft: crate::events::EventDraft) -> Result<(), IntakeError> {
        let orders = &self.orders;
        self.log.append(draft, &mut |order, fulfillment| promise_in(orders, order, fulfillment))?;
        Ok(())
    }

    /// Appends the audit row of `actor`'s call on `target`.
    fn audit(&mut self, actor: &Actor, target: Option<&str>, now_ms: u64, outcome: &str) -> Result<(), IntakeError> {
        audit::append(&mut self.audit, actor, target, now_ms, outcome)?;
        Ok(())
    }

    /// Writes what is kept until the end (the reports' figures) and closes the tables.
    fn finish(self) -> Result<(), IntakeError> {
        self.log.finish()?;
        Ok(())
    }
}

fn decode_idem(bytes: &[u8]) -> Result<IdemRecord, IntakeError> {
    postcard::from_bytes(bytes).map_err(|e| IntakeError::Corrupt { table: "idempotency", detail: e.to_string() })
}

/// What an idempotency key says about a create.
enum Seen {
    /// Never used (or forgotten): a new order.
    New,
    /// Used for this very body: the original order.
    Replay(String),
    /// Used by this channel for another body: refused.
    Reused(String),
}

fn escrow_key(site: &NodeId, sku: &Sku) -> String {
    format!("{site}|{sku}")
}

fn utc_day(ms: u64) -> u64 {
    ms / 86_400_000
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
fn minus_units(lines: &[SkuQty], part: &[SkuQty]) -> Vec<SkuQty> {
    let mut out: Vec<SkuQty> = lines.to_vec();
    for p in part {
        if let Some(u) = out.iter_mut().find(|u| u.sku == p.sku) {
            u.qty = u.qty.saturating_sub(p.qty);
        }
    }
    out.retain(|u| u.qty > 0);
    out
}

fn add_units(into: &mut Vec<SkuQty>, lines: &[SkuQty]) {
    for l in lines {
        match into.iter_mut().find(|u| u.sku == l.sku) {
            Some(u) => u.qty = u.qty.saturating_add(l.qty),
            None => into.push(l.clone()),
        }
    }
}

/// How `intake.redb` is opened: with a page cache of `cache_bytes`, not redb's default of 1 GiB.
fn cached(cache_bytes: usize) -> oms_service::storage::Options {
    oms_service::storage::Options { cache_bytes: Some(cache_bytes), faults: None }
}

impl Intake {
    /// Opens (or creates) `intake.redb` and loads the escrow view and the open orders, with the default cache
    /// ([`IntakeLimits::CACHE_BYTES_DEFAULT`]).
    pub fn open(path: &Path, policy: RoutingPolicy) -> Result<Intake, IntakeError> {
        Self::open_cached(path, policy, IntakeLimits::CACHE_BYTES_DEFAULT)
    }

    /// [`Intake::open`] keeping at most `cache_bytes` of the file's pages in memory ([`IntakeLimits::cache_bytes`]).
    pub fn open_cached(path: &Path, policy: RoutingPolicy, cache_bytes: usize) -> Result<Intake, IntakeError> {
        let opened = oms_service::storage::format::open(path, &INTAKE_FORMAT, &cached(cache_bytes))?;
        Self::load(opened.db, policy)
    }

    /// [`Intake::open`] on another storage than the file at `path`, which then only names it (the power-loss
    /// tests run the intake, its payments and outbox on `oms_service::storage::crash::CrashBackend`).
    pub fn open_on(
        path: &Path,
        backend: Box<dyn redb::StorageBackend>,
        policy: RoutingPolicy,
    ) -> Result<Intake, IntakeError> {
        let options = cached(IntakeLimits::CACHE_BYTES_DEFAULT);
        let opened = oms_service::storage::format::open_on(path, backend, &INTAKE_FORMAT, &options)?;
        Self::load(opened.db, policy)
    }

    fn load(db: Arc<Database>, policy: RoutingPolicy) -> Result<Intake, IntakeError> {
        let w = db.begin_write()?;
        w.open_table(ORDERS)?;
        w.open_table(IDEM)?;
        w.open_table(IDEM_BY_TIME)?;
        w.open_table(ESCROW)?;
        w.open_table(CAPACITY)?;
        w.open_table(META)?;
        w.open_table(TRACKING)?;
        w.open_table(BY_CHANNEL)?;
        w.open_table(BY_CONTACT)?;
        w.open_table(OPEN)?;
        w.open_table(LIVE)?;
        w.open_table(AUDIT)?;
        w.commit()?;
        crate::money::create_tables(&db).map_err(IntakeError::from)?;
        crate::returns::create_tables(&db)
            .map_err(|e| IntakeError::Corrupt { table: "rmas", detail: e.to_string() })?;
        let mut escrow = HashMap::new();
        let mut open = BTreeSet::new();
        let mut unindexed = Vec::new();
        let mut start_reads = 0u64;
        {
            let r = db.begin_read()?;
            for item in r.open_table(ESCROW)?.range::<&str>(..)?.take(ESCROW_CELLS_MAX) {
                let (k, v) = item?;
                let c: EscrowCounter = postcard::from_bytes(v.value())
                    .map_err(|e| IntakeError::Corrupt { table: "escrow", detail: e.to_string() })?;
                let site = k.value().split_once('|').and_then(|(s, _)| NodeId::parse(s).ok());
                if let Some(site) = site {
                    escrow.insert((site, c.sku().clone()), c);
                }
            }
            let meta = r.open_table(META)?;
            let indexed = meta.get(BY_CHANNEL_BUILT)?.is_some();
            let tracked = meta.get(OPEN_LIVE_BUILT)?.is_some();
            if indexed && tracked {
                // Only the open work: the orders waiting for units, not every order ever taken.
                for item in r.open_table(OPEN)?.range::<&str>(..)? {
                    open.insert(item?.0.value().to_owned());
                }
            } else {
                // A file from before the indexes: one pass over every order builds them, then never again.
                let mut live = Vec::new();
                for item in r.open_table(ORDERS)?.range::<&str>(..)? {
                    let (k, v) = item?;
                    let o = decode_order(v.value())?;
                    start_reads += 1;
                    if o.wants_routing() {
                        open.insert(k.value().to_owned());
                    }
                    unindexed.push(channel_key(&o.draft.channel, o.id.as_str()));
                    live.extend(
                        o.fulfillments
                            .iter()
                            .filter(|f| f.released.is_none())
                            .map(|f| (f.id.to_string(), o.id.to_string())),
                    );
                }
                let w = db.begin_write()?;
                {
                    let mut t = w.open_table(BY_CHANNEL)?;
                    for k in &unindexed {
                        t.insert(k.as_str(), ())?;
                    }
                    let mut t = w.open_table(OPEN)?;
                    for id in &open {
                        t.insert(id.as_str(), ())?;
                    }
                    let mut t = w.open_table(LIVE)?;
                    for (f, parent) in &live {
                        t.insert(f.as_str(), parent.as_str())?;
                    }
                    let mut meta = w.open_table(META)?;
                    meta.insert(BY_CHANNEL_BUILT, 1)?;
                    meta.insert(OPEN_LIVE_BUILT, 1)?;
                }
                w.commit()?;
            }
        }
        index_contacts_once(&db)?;
        let core = Core {
            db,
            state: Mutex::new(State { escrow, open }),
            policy,
            rebalance: RebalancePolicy::default(),
            stats: writer::BatchStats::default(),
            start_reads: start_reads.into(),
        };
        Ok(Intake { core: Arc::new(core), queue: OnceLock::new() })
    }

    /// The database (`intake.redb`), which the payments ([`crate::money`]) share, and the event log and
    /// the webhooks ([`crate::events`]), which live in it so that an event commits with its change.
    pub fn db(&self) -> &Database {
        &self.core.db
    }

    /// The routing policy in force.
    pub fn policy(&self) -> &RoutingPolicy {
        &self.core.policy
    }

    /// A customer order.
    pub fn order(&self, id: &str) -> Result<Option<HubOrder>, IntakeError> {
        let r = self.core.db.begin_read()?;
        get_order(&r.open_table(ORDERS)?, id)
    }

    /// The order whose tracking token is `token`, if any (a malformed token is none, without a lookup).
    pub fn order_by_tracking_token(&self, token: &str) -> Result<Option<HubOrder>, IntakeError> {
        if !tracking_token_well_formed(token) {
            return Ok(None);
        }
        let r = self.core.db.begin_read()?;
        let id = r.open_table(TRACKING)?.get(token_hash(token).as_slice())?.map(|v| v.value().to_owned());
        let Some(id) = id else { return Ok(None) };
        let order = get_order(&r.open_table(ORDERS)?, &id)?;
        Ok(order.filter(|o| o.tracking_token.as_deref().is_some_and(|t| ct_eq(t.as_bytes(), token.as_bytes()))))
    }

    /// The orders of `channel` after the id `after` (exclusive), at most `limit` (capped at
    /// [`CHANNEL_PAGE_MAX`]), in id order, and the id to continue after if more may follow.
    pub fn channel_orders(
        &self,
        channel: &Channel,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<HubOrder>, Option<String>), IntakeError> {
        use std::ops::Bound;
        let limit = limit.clamp(1, CHANNEL_PAGE_MAX);
        let lo = match after {
            Some(a) => Bound::Excluded(channel_key(channel, a)),
            None => Bound::Excluded(format!("{}{SCOPE_SEP}", channel.as_str())),
        };
        // The character after the separator: the end of this channel's keys.
        let hi = Bound::Excluded(format!("{}\u{20}", channel.as_str()));
        let r = self.core.db.begin_read()?;
        let index = r.open_table(BY_CHANNEL)?;
        let orders = r.open_table(ORDERS)?;
        let bounds = (lo.as_ref().map(String::as_str), hi.as_ref().map(String::as_str));
        let mut out = Vec::new();
        for item in index.range::<&str>(bounds)? {
            let (k, _) = item?;
            let Some((_, id)) = k.value().split_once(SCOPE_SEP) else { continue };
            if let Some(o) = get_order(&orders, id)? {
                out.push(o);
            }
            if out.len() == limit {
                break;
            }
        }
        let next = if out.len() == limit { out.last().map(|o| o.id.to_string()) } else { None };
        Ok((out, next))
    }

    /// The orders a customer may be asking about: by an order id, an e-mail address, a phone number or the
    /// channel's order reference (see [`search_terms`]), at most `limit` (capped at [`SEARCH_RESULTS_MAX`]),
    /// newest first.
    pub fn search(&self, query: &str, limit: usize) -> Result<Vec<HubOrder>, IntakeError> {
        let limit = limit.clamp(1, SEARCH_RESULTS_MAX);
        let r = self.core.db.begin_read()?;
        let orders = r.open_table(ORDERS)?;
        let index = r.open_table(BY_CONTACT)?;
        let mut out: Vec<HubOrder> = Vec::new();
        if let Some(o) = get_order(&orders, query.trim())? {
            out.push(o);
        }
        for term in search_terms(query) {
            let lo = format!("{term}{SCOPE_SEP}");
            let hi = format!("{term}\u{20}");
            for item in index.range::<&str>(lo.as_str()..hi.as_str())?.rev() {
                if out.len() >= limit {
                    break;
                }
                let (k, _) = item?;
                let Some((_, id)) = k.value().split_once(SCOPE_SEP) else { continue };
                if out.iter().any(|o| o.id.as_str() == id) {
                    continue;
                }
                if let Some(o) = get_order(&orders, id)? {
                    out.push(o);
                }
            }
        }
        out.truncate(limit);
        out.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then_with(|| b.id.as_str().cmp(a.id.as_str())));
        Ok(out)
    }

    /// Rows of the audit trail after `after`, at most `limit` (see [`oms_service::audit::page`]).
    pub fn audit_page(&self, after: u64, limit: usize) -> Result<(Vec<AuditEvent>, Option<u64>), IntakeError> {
        Ok(audit::page(&self.core.db, after, limit)?)
    }

    /// Customer orders taken so far (the order sequence).
    pub fn orders_taken(&self) -> Result<u64, IntakeError> {
        let r = self.core.db.begin_read()?;
        Ok(r.open_table(META)?.get(SEQ_ORDER)?.map(|v| v.value()).unwrap_or(0))
    }

    /// Customer orders with units waiting to be placed.
    pub fn open_count(&self) -> usize {
        lock(&self.core.state).open.len()
    }

    /// The hub's view of the escrow of `sku` at `site`.
    pub fn escrow(&self, site: &NodeId, sku: &Sku) -> Option<EscrowCounter> {
        lock(&self.core.state).escrow.get(&(site.clone(), sku.clone())).cloned()
    }

    /// Every escrow counter of `site` (for republishing at start).
    pub fn escrow_of_site(&self, site: &NodeId) -> Vec<EscrowCounter> {
        lock(&self.core.state).escrow.iter().filter(|((s, _), _)| s == site).map(|(_, c)| c.clone()).collect()
    }

    /// Sites the hub holds escrow with.
    pub fn escrow_sites(&self) -> BTreeSet<NodeId> {
        lock(&self.core.state).escrow.keys().map(|(s, _)| s.clone()).collect()
    }

    /// The fulfillments a site has not finished with (table `fulfillments_live`), for a start: the documents of some may be
    /// missing (lost by a crash between the intake's commit and the documents' flush), and the others may
    /// hold a site's answer the watcher has not acted on yet. Reads those fulfillments' orders only, each
    /// once, however many orders were ever taken.
    pub fn live_fulfillments(&self) -> Result<Vec<NewFulfillment>, IntakeError> {
        let r = self.core.db.begin_read()?;
        let orders = r.open_table(ORDERS)?;
        let mut wanted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for item in r.open_table(LIVE)?.range::<&str>(..)? {
            let (f, parent) = item?;
            wanted.entry(parent.value().to_owned()).or_default().insert(f.value().to_owned());
        }
        let mut out = Vec::new();
        for (parent, ids) in wanted {
            self.core.start_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(o) = get_order(&orders, &parent)? else { continue };
            for f in o.fulfillments.iter().filter(|f| ids.contains(f.id.as_str())) {
                out.push(NewFulfillment {
                    id: f.id.clone(),
                    parent: o.id.clone(),
                    site: f.site.clone(),
                    draft: part_of(&o.draft, &f.lines),
                });
            }
        }
        Ok(out)
    }

    /// Notes that the sites are done with fulfillments `ids` (shipped or delivered; rejected and cancelled
    /// ones leave when they are re-routed): a start no longer looks at them.
    pub fn finished(&self, ids: &[OrderId]) -> Result<(), IntakeError> {
        if ids.is_empty() {
            return Ok(());
        }
        let w = self.core.db.begin_write()?;
        {
            let mut live = w.open_table(LIVE)?;
            for id in ids {
                live.remove(id.as_str())?;
            }
        }
        w.commit()?;
        Ok(())
    }

    /// Order records a start read so far ([`Intake::open`] and [`Intake::live_fulfillments`]): the open
    /// work's, not every order's, once the indexes exist.
    pub fn start_reads(&self) -> u64 {
        self.core.start_reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Customer orders with units waiting to be placed, at most `max`.
    pub fn open_orders(&self, max: usize) -> Vec<String> {
        lock(&self.core.state).open.iter().take(max).cloned().collect()
    }

    /// Takes a channel order for `actor` at once, in a transaction of its own with `sites` as the sites'
    /// views: the same code as a batch of the writer ([`Intake::submit`]), for one order. Idempotency
    /// (scoped to the order's channel), routing within the hub's rights, a tracking token, the audit row,
    /// one durable transaction. A replay answers the original and leaves a row too (it is a call); a refusal
    /// (key reused, nothing placeable under `reject`) leaves a row with its code and nothing else.
    pub fn place(
        &self,
        key: &str,
        draft: OrderDraft,
        sites: &[SiteFacts],
        actor: &Actor,
        now_ms: u64,
    ) -> Result<Placed, IntakeError> {
        let job = writer::Create::new(key.to_owned(), draft, actor.clone())?;
        let mut out = self.core.place_batch(vec![job], sites, now_ms)?;
        out.pop().unwrap_or(Err(IntakeError::ShuttingDown))
    }

    /// Merges a site's view of its escrow counters (from its stock document) into the hub's, then applies
    /// the hub's side of the rebalancing policy (giving rights back the site needs more than the hub).
    /// Returns the counters the hub changed by its own action, to publish.
    pub fn merge_site(
        &self,
        site: &NodeId,
        theirs: Vec<EscrowCounter>,
        now_ms: u64,
    ) -> Result<Vec<EscrowCounter>, IntakeError> {
        let mut st = lock(&self.core.state);
        let w = self.core.db.begin_write()?;
        let mut publish = Vec::new();
        let mut touched = false;
        {
            let mut t = w.open_table(ESCROW)?;
            for c in theirs {
                let key = (site.clone(), c.sku().clone());
                let mut mine = match st.escrow.get(&key) {
                    Some(m) => m.clone(),
                    None if st.escrow.len() < ESCROW_CELLS_MAX => EscrowCounter::new(c.sku().clone()),
                    None => continue,
                };
                let before = mine.clone();
                if mine.merge(&c).is_err() || mine.check().is_err() {
                    tracing::warn!(%site, sku = %c.sku(), "refusing a site's escrow view that contradicts the hub's");
                    continue;
                }
                let input = RebalanceInput {
                    site_available: mine.local(Party::Site),
                    hub_rights: mine.local(Party::Hub),
                    hub_demand_recent: mine.consumed(Party::Hub),
                    site_demand_recent: mine.consumed(Party::Site),
                };
                let mut acted = false;
                if let Rebalance::AskHubBack { units } = rebalance(&input, &self.core.rebalance) {
                    let units = units.min(mine.spendable(Party::Hub, now_ms));
                    if units > 0 && mine.transfer(Party::Hub, Party::Site, units, now_ms).is_ok() {
                        acted = true;
                    }
                }
                if mine != before {
                    t.insert(escrow_key(site, mine.sku()).as_str(), postcard_enc(&mine)?.as_slice())?;
                    touched = true;
                    if acted {
                        publish.push(mine.clone());
                    }
                    st.escrow.insert(key, mine);
                }
            }
        }
        if touched {
            w.commit()?;
        }
        Ok(publish)
    }

    /// Per (site, SKU) of `cells`: the hub's rights there now (spendable), the rights it holds, and its
    /// lease; one short hold of the intake's lock, looking up these cells only (a stock page's).
    pub fn escrow_cells(&self, cells: &[(NodeId, Sku)], now_ms: u64) -> BTreeMap<(String, String), (u64, u64, u64)> {
        let st = lock(&self.core.state);
        cells
            .iter()
            .filter_map(|key| {
                let c = st.escrow.get(key)?;
                let row = (c.spendable(Party::Hub, now_ms), c.local(Party::Hub), c.lease_until_ms(Party::Hub));
                Some(((key.0.to_string(), key.1.to_string()), row))
            })
            .collect()
    }

    /// Per (site, SKU): the hub's rights there now (spendable) and its consumption so far.
    #[cfg(test)]
    pub fn escrow_table(&self, now_ms: u64) -> BTreeMap<(String, String), (u64, u64, u64)> {
        lock(&self.core.state)
            .escrow
            .iter()
            .map(|((site, sku), c)| {
                (
                    (site.to_string(), sku.to_string()),
                    (c.spendable(Party::Hub, now_ms), c.local(Party::Hub), c.lease_until_ms(Party::Hub)),
                )
            })
            .collect()
    }
}

/// Routing and its records, shared by the writer's batches and the other writes.
impl Core {
    /// What the idempotency records say of `key` for a body of `channel` hashing to `hash`.
    fn seen(
        idem: &impl ReadableTable<&'static str, &'static [u8]>,
        orders: &impl ReadableTable<&'static str, &'static [u8]>,
        channel: &Channel,
        key: &str,
        hash: &[u8; 32],
    ) -> Result<Seen, IntakeError> {
        if let Some(v) = idem.get(scoped_key(channel, key).as_str())? {
            let rec = decode_idem(v.value())?;
            return Ok(if rec.body_sha256 == *hash { Seen::Replay(rec.order) } else { Seen::Reused(rec.order) });
        }
        // A record from before keys were scoped to the channel. The same body (which names its channel) is a
        // replay of that order; another body is a reuse only if that order is of this channel, otherwise the
        // key is this channel's to use.
        let Some(v) = idem.get(key)? else { return Ok(Seen::New) };
        let rec = decode_idem(v.value())?;
        if rec.body_sha256 == *hash {
            return Ok(Seen::Replay(rec.order));
        }
        let theirs = get_order(orders, &rec.order)?;
        Ok(if theirs.is_some_and(|o| &o.draft.channel == channel) { Seen::Reused(rec.order) } else { Seen::New })
    }

    /// The sites' views for routing `skus` as the transaction sees them: capacity used today from `cap`,
    /// the hub's spendable rights from the counters this transaction changed (`overlay`) over the committed
    /// ones.
    #[allow(clippy::too_many_arguments)]
    fn site_views(
        st: &State,
        overlay: &Overlay,
        cap: &impl ReadableTable<&'static str, u64>,
        sites: &[SiteFacts],
        skus: &[Sku],
        exclude: &BTreeSet<NodeId>,
        now_ms: u64,
    ) -> Result<Vec<SiteView>, IntakeError> {
        let mut out = Vec::with_capacity(sites.len());
        for s in sites {
            if exclude.contains(&s.id) {
                continue;
            }
            let Ok(location) = GeoPoint::new(s.info.lat, s.info.lon) else { continue };
            let used = cap.get(format!("{}|{}", s.id, utc_day(now_ms)).as_str())?.map(|v| v.value()).unwrap_or(0);
            let mut promisable = HashMap::new();
            for sku in skus {
                if let Some(c) = rights(st, overlay, &(s.id.clone(), sku.clone())) {
                    let n = u32::try_from(c.spendable(Party::Hub, now_ms)).unwrap_or(u32::MAX);
                    if n > 0 {
                        promisable.insert(sku.clone(), n);
                    }
                }
            }
            // Open work: the shipments the hub routed there today, this batch's included.
            let open = oms_protocol::shipping::OpenWork { shipments: used };
            // Cached per schedule: the same answer as `site_promise`, computed once per day and cut-off.
            let promise = s.schedule.as_ref().and_then(|c| c.promise(now_ms, open));
            out.push(SiteView {
                id: s.id.clone(),
                location,
                priority: s.info.priority,
                capacity_left_shipments: u32::try_from(u64::from(s.info.capacity_per_day).saturating_sub(used))
                    .unwrap_or(0),
                region: s.info.region.clone(),
                reachable: s.reachable,
                last_heard_age_ms: s.last_heard_age_ms,
                promisable,
                promise,
            });
        }
        Ok(out)
    }

    /// Routing's decision for the unfilled units of `order`, reading only: nothing is written, so a decision
    /// that is refused leaves no trace in a shared transaction.
    #[allow(clippy::too_many_arguments)]
    fn plan(
        &self,
        st: &State,
        overlay: &Overlay,
        t: &Tables<'_>,
        order: &HubOrder,
        sites: &[SiteFacts],
        exclude: &BTreeSet<NodeId>,
        now_ms: u64,
    ) -> Result<RoutingDecision, IntakeError> {
        let lines: Vec<RouteLine> =
            order.unfilled.iter().map(|l| RouteLine { sku: l.sku.clone(), qty: l.qty }).collect();
        let skus: Vec<Sku> = lines.iter().map(|l| l.sku.clone()).collect();
        let views = Self::site_views(st, overlay, &t.capacity, sites, &skus, exclude, now_ms)?;
        let ship_to = GeoPoint { lat: order.draft.ship_to.lat, lon: order.draft.ship_to.lon };
        let req = RouteRequest { lines, ship_to, region: None };
        Ok(routing::route(&req, &views, &self.policy))
    }

    /// Records `decision` for `order`: consumes the hub's rights for each assignment in `overlay` (copied
    /// from `st` on first use), counts the site's shipment for the day in `t`, adds the fulfillments to the
    /// order and to `effects` (with each counter consumed, after consumption), and the decision to the
    /// order's record. The counters' rows are written by [`write_escrow_rows`] once per transaction.
    #[allow(clippy::too_many_arguments)]
    fn record(
        st: &State,
        overlay: &mut Overlay,
        t: &mut Tables<'_>,
        order: &mut HubOrder,
        decision: RoutingDecision,
        trigger: String,
        now_ms: u64,
        effects: &mut Effects,
    ) -> Result<(), IntakeError> {
        if !decision.assignments.is_empty() {
            let mut touched = BTreeSet::new();
            for a in &decision.assignments {
                for l in &a.lines {
                    let key = (a.site.clone(), l.sku.clone());
                    let c = match overlay.entry(key) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => {
                            let held = st.escrow.get(e.key()).cloned().ok_or_else(|| IntakeError::Corrupt {
                                table: "escrow",
                                detail: format!(
                                    "routing used rights of {} at {} that the hub does not hold",
                                    l.sku, a.site
                                ),
                            })?;
                            e.insert(held)
                        }
                    };
                    c.consume(Party::Hub, u64::from(l.qty), now_ms).map_err(|e| IntakeError::Corrupt {
                        table: "escrow",
                        detail: format!("routing promised more than the hub may spend: {e}"),
                    })?;
                    touched.insert((a.site.clone(), l.sku.clone()));
                }
                let n = order.fulfillments.len() + 1;
                let id = OrderId::parse(&format!("{}.{n}", order.id))
                    .map_err(|e| IntakeError::Corrupt { table: "orders", detail: format!("fulfillment id: {e}") })?;
                let day_key = format!("{}|{}", a.site, utc_day(now_ms));
                let used = t.capacity.get(day_key.as_str())?.map(|v| v.value()).unwrap_or(0);
                t.capacity.insert(day_key.as_str(), used + 1)?;
                t.live.insert(id.as_str(), order.id.as_str())?;
                effects.fulfillments.push(NewFulfillment {
                    id: id.clone(),
                    parent: order.id.clone(),
                    site: a.site.clone(),
                    draft: part_of(&order.draft, &a.lines),
                });
                order.fulfillments.push(Fulfillment {
                    id,
                    site: a.site.clone(),
                    lines: a.lines.clone(),
                    assigned_at_ms: now_ms,
                    released: None,
                    promise: a.promise.clone(),
                    site_cancel: None,
                });
            }
            for key in touched {
                if let Some(c) = overlay.get(&key) {
                    effects.escrow.push((key.0, c.clone()));
                }
            }
            let placed = &order.fulfillments[order.fulfillments.len() - decision.assignments.len()..];
            t.event(crate::events::EventDraft::routed(order, placed, &decision.unfilled, &trigger, now_ms))?;
        }
        order.unfilled = decision.unfilled.clone();
        let record = DecisionRecord { at_ms: now_ms, trigger, decision };
        if order.decisions.len() >= DECISIONS_MAX {
            order.decisions.remove(1);
        }
        order.decisions.push(record);
        Ok(())
    }

    /// Writes `o` and keeps [`OPEN`] in step with it.
    fn put_order(t: &mut Tables<'_>, o: &HubOrder) -> Result<(), IntakeError> {
        t.orders.insert(o.id.as_str(), enc_json(o)?.as_slice())?;
        if o.wants_routing() {
            t.open.insert(o.id.as_str(), ())?;
        } else {
            t.open.remove(o.id.as_str())?;
        }
        Ok(())
    }
}

/// Writes the rows of the counters a transaction changed (each once, however many orders consumed from it).
fn write_escrow_rows(w: &redb::WriteTransaction, overlay: &Overlay) -> Result<(), IntakeError> {
    if overlay.is_empty() {
        return Ok(());
    }
    let mut t = w.open_table(ESCROW)?;
    for ((site, sku), c) in overlay {
        t.insert(escrow_key(site, sku).as_str(), postcard_enc(c)?.as_slice())?;
    }
    Ok(())
}

/// Forgets at most [`oms_protocol::records::IDEMPOTENCY_PRUNE_MAX`] idempotency records older than `cutoff_ms`
/// from the records (`idem`) and their index by age (`by_time`).
fn prune_idempotency(
    idem: &mut redb::Table<'_, &'static str, &'static [u8]>,
    by_time: &mut redb::Table<'_, (u64, &'static str), ()>,
    cutoff_ms: u64,
) -> Result<(), IntakeError> {
    let mut old = Vec::new();
    for item in by_time.range((0u64, "")..(cutoff_ms, ""))?.take(oms_protocol::records::IDEMPOTENCY_PRUNE_MAX) {
        let (k, _) = item?;
        let (at, key) = k.value();
        old.push((at, key.to_owned()));
    }
    for (at, key) in old {
        by_time.remove((at, key.as_str()))?;
        idem.remove(key.as_str())?;
    }
    Ok(())
}

fn postcard_enc<T: Serialize>(v: &T) -> Result<Vec<u8>, IntakeError> {
    postcard::to_allocvec(v).map_err(|e| IntakeError::Storage(Arc::new(StorageError::encode("a record", e))))
}

#[cfg(test)]
mod power_loss;

#[cfg(test)]
mod tests;
