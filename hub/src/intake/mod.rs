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
//! the fulfillments a site has not finished with (`fulfillments_live`, [`Intake::live_ids`]), both
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
//!
//! The files: `mod.rs`, the tables, the error, the shared state, opening and loading, and the reads;
//! `records.rs`, the records and their encoding; `search.rs`, the idempotency and channel keys, the contact
//! search and the tracking tokens; `escrow.rs`, the hub's escrow counters; `route.rs`, routing an order and
//! recording it; `writer.rs`, the writer thread (group commit); `reroute.rs`, what changes an order after its
//! intake (re-routing, cancellations); `tests.rs` and `power_loss.rs`, the tests.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use oms_protocol::domain::{Channel, NodeId, OrderDraft, OrderId, Sku};
use oms_protocol::escrow::{EscrowCounter, RebalancePolicy};
use oms_service::audit::{self, AUDIT, Actor, AuditEvent};
use oms_service::auth::keys::{self, token_hash};
use oms_service::lock;
use oms_service::storage::StorageError;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::routing::{Outcome, RoutingDecision, RoutingPolicy, SkuQty};

mod escrow;
mod records;
mod reroute;
mod route;
mod search;
mod writer;

use escrow::{Overlay, rights, write_escrow_rows};
pub use records::{
    AfterSiteCancel, DecisionRecord, Effects, Fulfillment, HubOrder, NewFulfillment, Placed, SiteCancel, SiteFacts,
    part_of,
};
use records::{IdemRecord, add_units, decode_idem, decode_order, enc_json, minus_units, postcard_enc, take_units};
use route::Seen;
pub(crate) use search::search_keys;
pub use search::tracking_token_well_formed;
use search::{channel_key, index_contacts_once, new_tracking_token, scoped_key, search_terms};
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

struct State {
    escrow: HashMap<(NodeId, Sku), EscrowCounter>,
    /// Customer orders with units waiting to be placed.
    open: BTreeSet<String>,
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
    /// Order records read by [`Intake::open`] and [`Intake::fulfillments_of`]: what a start costs, which
    /// tests hold to the open work ([`Intake::start_reads`]).
    start_reads: std::sync::atomic::AtomicU64,
}

/// The intake. See the module docs.
pub struct Intake {
    core: Arc<Core>,
    /// The writer's queue, once [`Intake::start`] has started it.
    queue: OnceLock<writer::Queue>,
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
        Ok(order.filter(|o| o.tracking_token.as_deref().is_some_and(|t| keys::ct_eq(t.as_bytes(), token.as_bytes()))))
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

    /// The fulfillments a site has not finished with (table `fulfillments_live`): the documents of some may be
    /// missing after a crash (between the intake's commit and the documents' flush), and the others may hold a
    /// site's answer the watcher has not acted on yet. Reads those fulfillments' orders only, each once, however
    /// many orders were ever taken. A start reads only the missing ones' orders ([`Intake::live_ids`], then
    /// [`Intake::fulfillments_of`]).
    pub fn live_fulfillments(&self) -> Result<Vec<NewFulfillment>, IntakeError> {
        let live = self.live_ids()?;
        self.fulfillments_of(&live)
    }

    /// The ids of the fulfillments a site has not finished with, each with its customer order's id: one row
    /// each of `fulfillments_live`, no order read (a start with a million of them holds ids, not drafts).
    pub fn live_ids(&self) -> Result<Vec<(OrderId, String)>, IntakeError> {
        let r = self.core.db.begin_read()?;
        let mut out = Vec::new();
        for item in r.open_table(LIVE)?.range::<&str>(..)? {
            let (f, parent) = item?;
            match OrderId::parse(f.value()) {
                Ok(id) => out.push((id, parent.value().to_owned())),
                Err(e) => tracing::warn!(fulfillment = f.value(), error = %e, "a live fulfillment's id does not parse"),
            }
        }
        Ok(out)
    }

    /// The documents' inputs of fulfillments `ids` (each with its customer order's id, as [`Intake::live_ids`]
    /// gives them), reading each of their orders once; one whose order no longer holds it is left out.
    pub fn fulfillments_of(&self, ids: &[(OrderId, String)]) -> Result<Vec<NewFulfillment>, IntakeError> {
        let mut wanted: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (f, parent) in ids {
            wanted.entry(parent.as_str()).or_default().insert(f.as_str());
        }
        let r = self.core.db.begin_read()?;
        let orders = r.open_table(ORDERS)?;
        let mut out = Vec::new();
        for (parent, ids) in wanted {
            self.core.start_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(o) = get_order(&orders, parent)? else { continue };
            for f in o.fulfillments.iter().filter(|f| ids.contains(f.id.as_str())) {
                out.push(NewFulfillment::of(&o, f));
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

    /// Order records a start read so far ([`Intake::open`] and [`Intake::fulfillments_of`]): the open
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

#[cfg(test)]
mod power_loss;

#[cfg(test)]
mod tests;
