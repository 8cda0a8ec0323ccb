//! The node's system of record in redb: catalog, the append-only stock ledger with per-SKU balances, orders
//! with their fulfillment, pick waves, idempotency records and a change feed.
//!
//! # Writes: one writer, group commit
//! Every write is a [`Command`] sent to a single writer thread. The writer takes a batch of queued commands
//! (at most [`Limits::batch_max`]), applies them one after another inside **one** redb write transaction,
//! commits it with `Durability::Immediate` (fsync), and only then answers each caller. So an acknowledgement
//! always means "on disk", and concurrent requests share one fsync instead of queueing for one each.
//!
//! A command that is refused (bad input, not enough stock) must leave no trace in the shared transaction.
//! Each command handler therefore *reads and validates everything first, then writes*: no handler returns an
//! error after its first write. Storage errors are the exception; they abort the whole batch and every caller
//! in it gets an error, so nothing is half-applied.
//!
//! # Reads
//! Readers open their own MVCC read transaction (`begin_read`) and never wait for the writer.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use oms_protocol::domain::{
    Balance, BalanceError, Disposition, FulfillmentState, Movement, NodeId, OrderDraft, OrderId, ReturnState,
    ReturnStep, Sku, Step, TransitionError, ValidationError,
};
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::sync::{mpsc, oneshot};

use crate::escrow::{self, EscrowPolicy, Rights};
use crate::freeze;
use crate::metrics::Metrics;
use oms_protocol::domain::HUB_ORDER_PREFIX;
use oms_protocol::escrow::{EscrowCounter, Party};
use oms_protocol::records::draft_sha256;
pub use oms_protocol::records::{FulfillmentLine, OrderRecord, ReturnLine, ReturnRecord, Shipment, TimelineEntry};

const CATALOG: TableDefinition<&str, &[u8]> = TableDefinition::new("catalog");
const BALANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("balances");
const LEDGER: TableDefinition<u64, &[u8]> = TableDefinition::new("ledger");
const LEDGER_BY_SKU: TableDefinition<(&str, u64), ()> = TableDefinition::new("ledger_by_sku");
const ORDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("orders");
const ORDERS_BY_STATE: TableDefinition<(u8, &str), ()> = TableDefinition::new("orders_by_state");
const WAVES: TableDefinition<u64, &[u8]> = TableDefinition::new("waves");
const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");
/// (recorded at ms, key) → (): idempotency records by age, so the writer can forget old ones.
const IDEMPOTENCY_BY_TIME: TableDefinition<(u64, &str), ()> = TableDefinition::new("idempotency_by_time");
/// Idempotency records forgotten per write transaction, at most.
pub const IDEMPOTENCY_PRUNE_MAX: usize = 64;
const FEED: TableDefinition<u64, &[u8]> = TableDefinition::new("feed");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// SKU → postcard `EscrowCounter`: the rights to the SKU's available units shared with the hub.
const ESCROW: TableDefinition<&str, &[u8]> = TableDefinition::new("escrow");
/// Order id → when it was frozen (ms since the Unix epoch): finished orders that refuse every change.
const FROZEN: TableDefinition<&str, u64> = TableDefinition::new("frozen");
/// Order id → the start of its return window (0: finished at once): orders that may be frozen once due
/// (see [`crate::freeze`]). Kept in the transaction that saves the order; frozen orders leave it.
const FREEZE_QUEUE: TableDefinition<&str, u64> = TableDefinition::new("freeze_queue");
/// Orders one freeze pass looks at, at most.
pub const FREEZE_ORDERS_MAX: usize = 10_000;
/// META flag: the freeze queue holds every order saved before it existed.
const FREEZE_QUEUE_FILLED: &str = "freeze.queue_filled";

const SEQ_LEDGER: &str = "seq.ledger";
const SEQ_ORDER: &str = "seq.order";
const SEQ_WAVE: &str = "seq.wave";
const SEQ_FEED: &str = "seq.feed";

/// Bounds on the store's queues and batches.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Commands waiting for the writer; beyond this callers get [`StoreError::Overloaded`].
    pub queue_max: usize,
    /// Commands applied in one write transaction.
    pub batch_max: usize,
    /// Orders on one pick wave.
    pub wave_orders_max: usize,
    /// Items in one page of a listing.
    pub page_max: usize,
    /// redb page cache, bytes.
    pub cache_bytes: usize,
    /// SKUs visited by one escrow tick.
    pub escrow_tick_skus_max: usize,
    /// How long an idempotency key is remembered, ms; a retry after that is a new order.
    pub idempotency_retention_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            queue_max: 8192,
            batch_max: 512,
            wave_orders_max: 100,
            page_max: 500,
            cache_bytes: 64 << 20,
            escrow_tick_skus_max: 10_000,
            idempotency_retention_ms: 7 * 24 * 3_600_000,
        }
    }
}

/// Longest idempotency key, bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;

/// A catalog item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogItem {
    /// The SKU.
    pub sku: Sku,
    /// Display name.
    pub name: String,
    /// Bin location, such as `A-01-3`; pick lists walk bins in this order.
    pub bin: String,
}

/// One entry of the stock ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Position in this node's ledger, from 1, without gaps.
    pub seq: u64,
    /// The SKU moved.
    pub sku: Sku,
    /// When it was committed, ms since the Unix epoch.
    pub at_ms: u64,
    /// What moved.
    pub movement: Movement,
    /// The SKU's balance after this movement.
    pub balance: Balance,
}

/// A pick wave: lines of several orders sorted for one walk through the aisles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    /// Wave number.
    pub id: u64,
    /// When it was built.
    pub created_at_ms: u64,
    /// Orders on it.
    pub orders: Vec<OrderId>,
    /// Pick list, sorted by bin, then SKU, then order.
    pub lines: Vec<PickLine>,
}

/// One line of a pick list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PickLine {
    /// Bin location.
    pub bin: String,
    /// The SKU.
    pub sku: Sku,
    /// The order it is for.
    pub order: OrderId,
    /// Units to pick.
    pub qty: u32,
}

/// What changed, as read by sync from [`Store::feed_after`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeedEntry {
    /// An order was created or changed.
    Order(OrderId),
    /// A SKU's balance changed.
    Stock(Sku),
    /// A catalog item was created or changed.
    Catalog(Sku),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct IdempotencyRecord {
    body_sha256: [u8; 32],
    order: OrderId,
    at_ms: u64,
}

/// A shortfall of one SKU when an order cannot be reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shortfall {
    /// The SKU.
    pub sku: Sku,
    /// Units available.
    pub available: u64,
    /// Units requested.
    pub requested: u64,
    /// Units that are physically available but escrowed to the hub for channel orders.
    pub held_for_hub: u64,
}

/// A picker's confirmation of one line.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PickConfirmation {
    /// The SKU.
    pub sku: Sku,
    /// Units actually picked (0 to the line's quantity).
    pub picked: u32,
}

/// Why a store operation was refused. Each variant maps to one stable API code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A field failed validation.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The SKU is not in the catalog.
    #[error("SKU {0} is not in the catalog; add it with PUT /v1/catalog/{0} first")]
    UnknownSku(Sku),
    /// Not enough available stock for an order.
    #[error("not enough stock: {}", fmt_shortfalls(.0))]
    InsufficientStock(Vec<Shortfall>),
    /// An adjustment or count would take on hand below what is reserved.
    #[error("{sku}: {source}; cancel or short-pick the orders holding it first")]
    BelowReserved {
        /// The SKU.
        sku: Sku,
        /// Details.
        source: BalanceError,
    },
    /// Taking units away (a loss, a count) would eat into rights the site has escrowed to the hub.
    #[error(
        "{sku}: {requested} units would leave the site, but only {site_rights} are the site's own; the rest is \
         escrowed to the hub for channel orders (the hub gives rights back by rebalancing, or the site reclaims \
         them after the hub's lease)"
    )]
    EscrowedToHub {
        /// The SKU.
        sku: Sku,
        /// Units the site holds rights to.
        site_rights: u64,
        /// Units the movement would take.
        requested: u64,
    },
    /// The idempotency key was used before with another body.
    #[error("idempotency key {0:?} was already used for a different request body")]
    IdempotencyKeyReused(String),
    /// No such order.
    #[error("order {0} does not exist at this site")]
    OrderNotFound(OrderId),
    /// No such wave.
    #[error("pick wave {0} does not exist")]
    WaveNotFound(u64),
    /// The order is finished and frozen: it takes no more changes.
    #[error("order {order} is finished and was frozen at {frozen_at_ms} ms; it takes no more changes")]
    OrderFrozen {
        /// The order.
        order: OrderId,
        /// When it was frozen, ms since the Unix epoch.
        frozen_at_ms: u64,
    },
    /// The order's state does not allow the step.
    #[error("order {order}: {source}")]
    Transition {
        /// The order.
        order: OrderId,
        /// The illegal transition.
        source: TransitionError,
    },
    /// A request about lines does not match the order's lines.
    #[error("order {order}: {message}")]
    LineMismatch {
        /// The order.
        order: OrderId,
        /// What does not match.
        message: String,
    },
    /// No accepted orders to put on a wave.
    #[error("no accepted orders are waiting to be picked")]
    NothingToPick,
    /// The writer's queue is full.
    #[error("the node is overloaded; retry shortly")]
    Overloaded,
    /// The store is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The disk or the database failed; nothing of the request was written.
    #[error("storage failure, nothing was written: {0}")]
    Storage(String),
    /// A stored record did not decode: the database is damaged.
    #[error("corrupt record in {table}: {detail}")]
    Corrupt {
        /// Table.
        table: &'static str,
        /// Decoder message.
        detail: String,
    },
}

fn fmt_shortfalls(s: &[Shortfall]) -> String {
    s.iter()
        .map(|s| format!("{} has {} available, {} requested", s.sku, s.available, s.requested))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Implements `From<redb::…Error>` for an error type with a `Storage(String)` variant, for every redb error
/// type a transaction can return: a storage failure means nothing of the request was written.
#[macro_export]
macro_rules! redb_errors_as_storage {
    ($err:ident) => {
        $crate::redb_errors_as_storage!(@each $err: redb::Error, redb::DatabaseError, redb::TransactionError,
            redb::TableError, redb::StorageError, redb::CommitError);
    };
    (@each $err:ident: $($t:ty),*) => {$(
        impl From<$t> for $err {
            fn from(e: $t) -> Self {
                $err::Storage(e.to_string())
            }
        }
    )*};
}
redb_errors_as_storage!(StoreError);

/// A write request for the writer thread.
#[derive(Debug)]
pub enum Command {
    /// Create or update a catalog item.
    PutCatalog(CatalogItem),
    /// Record a stock movement that is not tied to an order (receipt, adjustment, count).
    Stock {
        /// The SKU.
        sku: Sku,
        /// Receipt, Adjustment or CycleCount (its `delta` is computed here).
        movement: Movement,
    },
    /// Accept a local order and reserve its stock.
    CreateOrder {
        /// Idempotency key.
        key: String,
        /// The order (boxed: it is much larger than the other commands).
        draft: Box<OrderDraft>,
    },
    /// Build a pick wave from accepted orders.
    CreateWave {
        /// Most orders on the wave.
        orders_max: usize,
    },
    /// Confirm picks for some or all lines of an order.
    ConfirmPicks {
        /// The order.
        order: OrderId,
        /// Per-line confirmations.
        lines: Vec<PickConfirmation>,
    },
    /// Pack.
    Pack {
        /// The order.
        order: OrderId,
        /// Parcels.
        parcels: u32,
    },
    /// Hand to the carrier.
    Ship {
        /// The order.
        order: OrderId,
        /// Carrier.
        carrier: String,
        /// Tracking number.
        tracking: String,
    },
    /// Carrier confirmed delivery.
    Deliver {
        /// The order.
        order: OrderId,
    },
    /// Cancel before shipment.
    Cancel {
        /// The order.
        order: OrderId,
        /// Why.
        reason: String,
    },
    /// Reserve stock again for a backordered order.
    Reaccept {
        /// The order.
        order: OrderId,
    },
    /// Receive a customer return.
    ReceiveReturn {
        /// The order.
        order: OrderId,
        /// What came back.
        lines: Vec<ReturnLine>,
        /// Restock or scrap.
        disposition: Disposition,
    },
    /// Refund a received return.
    Refund {
        /// The order.
        order: OrderId,
        /// The return's number.
        return_id: u32,
    },
    /// Import catalog rows and stock receipts in one transaction (rows already validated).
    Import {
        /// Catalog items.
        catalog: Vec<CatalogItem>,
        /// Opening stock: counts per SKU.
        counts: Vec<(Sku, u64)>,
    },
    /// Take an order the hub assigned to this site and reserve its units, paid for by the rights the hub
    /// consumed when it assigned. Idempotent by order id: a second call returns the order as it is.
    AcceptAssignment {
        /// The fulfillment order id the hub chose (`hub-…`).
        id: OrderId,
        /// The lines and ship-to of this site's part.
        draft: Box<OrderDraft>,
        /// When the hub assigned it.
        assigned_at_ms: u64,
        /// Accept at once; otherwise the order waits in `assigned` (units reserved) for staff.
        auto_accept: bool,
    },
    /// Staff decline a hub assignment still in `assigned`: its units go back to the hub.
    RejectAssignment {
        /// The order.
        order: OrderId,
        /// Why.
        reason: String,
    },
    /// Merge the hub's view of the escrow counters, then do the site's duties (acknowledge, lease, grant).
    EscrowSync {
        /// The hub's counters, one per SKU.
        hub: Vec<EscrowCounter>,
        /// The site's escrow settings.
        policy: EscrowPolicy,
    },
    /// Periodic escrow duties over at most `skus_max` SKUs after `after` (the caller passes back the
    /// returned cursor, so a large catalog is covered over several ticks): with the hub reachable, renew
    /// leases and grant by the rebalancing policy; without it, reclaim rights whose lease has run out.
    EscrowTick {
        /// The hub was heard from recently.
        hub_reachable: bool,
        /// The site's escrow settings.
        policy: EscrowPolicy,
        /// Most SKUs looked at.
        skus_max: usize,
        /// Start after this SKU (`None`: from the first).
        after: Option<Sku>,
    },
    /// Freezes finished orders (see [`crate::freeze`]): looks at most `orders_max` queued orders after
    /// `after` (the caller passes back the returned cursor) and freezes those finished with a return window
    /// of `return_window_ms`.
    Freeze {
        /// The return window, ms.
        return_window_ms: u64,
        /// Most orders looked at.
        orders_max: usize,
        /// Start after this order id (`None`: from the first).
        after: Option<String>,
    },
}

/// What a successful command produced.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A catalog item.
    Catalog(CatalogItem),
    /// A ledger entry.
    Ledger(LedgerEntry),
    /// An order; `created` is false when an idempotent replay returned the original.
    Order {
        /// The order.
        record: Box<OrderRecord>,
        /// Whether this call created it.
        created: bool,
    },
    /// A wave.
    Wave(Wave),
    /// SKUs whose escrow changed.
    Escrow(Vec<Sku>),
    /// SKUs whose escrow changed, and where the next tick starts (`None`: from the first SKU again).
    EscrowTicked {
        /// Changed SKUs.
        changed: Vec<Sku>,
        /// The cursor for the next tick.
        next_after: Option<Sku>,
    },
    /// Orders frozen, and where the next pass starts (`None`: from the first queued order again).
    Frozen {
        /// The orders frozen by this pass.
        frozen: Vec<OrderId>,
        /// The cursor for the next pass.
        next_after: Option<String>,
    },
    /// Rows imported.
    Imported {
        /// Catalog items written.
        catalog: usize,
        /// Stock counts written.
        counts: usize,
    },
}

struct Job {
    cmd: Command,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

/// Handle to the node's database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    tx: mpsc::Sender<Job>,
    site: NodeId,
    limits: Limits,
    writer: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
    commits: Arc<tokio::sync::Notify>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(v).map_err(|e| StoreError::Storage(format!("encode: {e}")))
}

fn dec<T: DeserializeOwned>(table: &'static str, b: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(b).map_err(|e| StoreError::Corrupt { table, detail: e.to_string() })
}

impl Store {
    /// Opens (or creates) the database at `path` and starts the writer thread.
    pub fn open(path: &Path, site: NodeId, limits: Limits, metrics: Arc<Metrics>) -> Result<Store, StoreError> {
        let db = Database::builder().set_cache_size(limits.cache_bytes).create(path)?;
        {
            let w = db.begin_write()?;
            for t in [CATALOG, BALANCES, ORDERS, IDEMPOTENCY, ESCROW] {
                w.open_table(t)?;
            }
            w.open_table(FROZEN)?;
            fill_freeze_queue(&w)?;
            w.open_table(LEDGER)?;
            w.open_table(LEDGER_BY_SKU)?;
            w.open_table(ORDERS_BY_STATE)?;
            w.open_table(IDEMPOTENCY_BY_TIME)?;
            w.open_table(WAVES)?;
            w.open_table(FEED)?;
            w.open_table(META)?;
            w.commit()?;
        }
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel(limits.queue_max);
        let writer_db = db.clone();
        let writer_site = site.clone();
        let commits = Arc::new(tokio::sync::Notify::new());
        let writer_commits = commits.clone();
        let writer = std::thread::Builder::new()
            .name("oms-writer".into())
            .spawn(move || writer_loop(writer_db, writer_site, rx, limits, metrics, writer_commits))
            .map_err(|e| StoreError::Storage(format!("cannot start writer thread: {e}")))?;
        Ok(Store { db, tx, site, limits, writer: Arc::new(std::sync::Mutex::new(Some(writer))), commits })
    }

    /// Stops accepting writes, lets the writer finish what is queued, and waits for it, so that the database
    /// file is closed when this returns (if this was the last handle). Other clones keep working until they
    /// are dropped; their writes then fail with [`StoreError::ShuttingDown`].
    pub fn close(self) {
        let Store { db, tx, writer, .. } = self;
        drop(tx);
        drop(db);
        let handle = writer.lock().ok().and_then(|mut h| if Arc::strong_count(&writer) == 1 { h.take() } else { None });
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Poked after every committed write batch, so followers of the change feed (sync) wake up promptly
    /// instead of polling. `notify_one` keeps a permit when nobody waits, so no commit is missed.
    pub fn commit_notify(&self) -> Arc<tokio::sync::Notify> {
        self.commits.clone()
    }

    /// This node's site id.
    pub fn site(&self) -> &NodeId {
        &self.site
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Sends `cmd` to the writer and waits until it is committed (or refused).
    pub async fn execute(&self, cmd: Command) -> Result<Outcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(Job { cmd, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => StoreError::ShuttingDown,
        })?;
        rx.await.map_err(|_| StoreError::ShuttingDown)?
    }

    fn read(&self) -> Result<ReadTransaction, StoreError> {
        Ok(self.db.begin_read()?)
    }

    /// One catalog item.
    pub fn catalog_item(&self, sku: &Sku) -> Result<Option<CatalogItem>, StoreError> {
        let t = self.read()?.open_table(CATALOG)?;
        t.get(sku.as_str())?.map(|v| dec("catalog", v.value())).transpose()
    }

    /// A page of the catalog, SKUs after `after`.
    pub fn catalog(&self, after: Option<&str>, limit: usize) -> Result<Vec<CatalogItem>, StoreError> {
        let t = self.read()?.open_table(CATALOG)?;
        page(&t, after, limit.min(self.limits.page_max), "catalog")
    }

    /// One SKU's balance, if the SKU is in the catalog.
    pub fn balance(&self, sku: &Sku) -> Result<Option<Balance>, StoreError> {
        let r = self.read()?;
        if r.open_table(CATALOG)?.get(sku.as_str())?.is_none() {
            return Ok(None);
        }
        let t = r.open_table(BALANCES)?;
        Ok(Some(t.get(sku.as_str())?.map(|v| dec("balances", v.value())).transpose()?.unwrap_or_default()))
    }

    /// The escrow counter of `sku` (as the site sees it), `None` if the SKU is not in the catalog.
    pub fn escrow(&self, sku: &Sku) -> Result<Option<EscrowCounter>, StoreError> {
        let Some(b) = self.balance(sku)? else { return Ok(None) };
        let r = self.read()?;
        let t = r.open_table(ESCROW)?;
        if let Some(v) = t.get(sku.as_str())? {
            return Ok(Some(dec("escrow", v.value())?));
        }
        Ok(Some(escrow::fresh(sku, &b).map_err(escrow_corrupt)?))
    }

    /// A page of balances (SKUs with any movement), after `after`.
    pub fn balances(&self, after: Option<&str>, limit: usize) -> Result<Vec<(Sku, Balance)>, StoreError> {
        let t = self.read()?.open_table(BALANCES)?;
        let mut out = Vec::new();
        let range = match after {
            Some(a) => t.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))?,
            None => t.range::<&str>(..)?,
        };
        for item in range.take(limit.min(self.limits.page_max)) {
            let (k, v) = item?;
            let sku =
                Sku::parse(k.value()).map_err(|e| StoreError::Corrupt { table: "balances", detail: e.to_string() })?;
            out.push((sku, dec("balances", v.value())?));
        }
        Ok(out)
    }

    /// A page of one SKU's ledger, entries with `seq > after`.
    pub fn ledger(&self, sku: &Sku, after: u64, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        let r = self.read()?;
        let idx = r.open_table(LEDGER_BY_SKU)?;
        let led = r.open_table(LEDGER)?;
        let mut out = Vec::new();
        let start = after.saturating_add(1);
        for item in idx.range((sku.as_str(), start)..=(sku.as_str(), u64::MAX))?.take(limit.min(self.limits.page_max)) {
            let (k, _) = item?;
            let seq = k.value().1;
            let v =
                led.get(seq)?.ok_or(StoreError::Corrupt { table: "ledger", detail: format!("missing entry {seq}") })?;
            out.push(dec("ledger", v.value())?);
        }
        Ok(out)
    }

    /// The whole ledger in order: for audits and for checking that balances equal their replay.
    pub fn ledger_all(&self, after: u64, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        let t = self.read()?.open_table(LEDGER)?;
        let mut out = Vec::new();
        for item in t.range(after.saturating_add(1)..)?.take(limit) {
            out.push(dec("ledger", item?.1.value())?);
        }
        Ok(out)
    }

    /// Replays the whole ledger and compares with the stored balances. Returns the SKUs that differ.
    pub fn verify_ledger(&self) -> Result<Vec<Sku>, StoreError> {
        let r = self.read()?;
        let led = r.open_table(LEDGER)?;
        let mut replay: BTreeMap<String, Balance> = BTreeMap::new();
        for item in led.iter()? {
            let e: LedgerEntry = dec("ledger", item?.1.value())?;
            let b = replay.entry(e.sku.as_str().to_owned()).or_default();
            *b = b.apply(&e.movement).map_err(|err| StoreError::Corrupt {
                table: "ledger",
                detail: format!("entry {} does not replay: {err}", e.seq),
            })?;
        }
        let bal = r.open_table(BALANCES)?;
        let mut bad = Vec::new();
        let mut stored = 0usize;
        for item in bal.iter()? {
            let (k, v) = item?;
            stored += 1;
            let b: Balance = dec("balances", v.value())?;
            if replay.get(k.value()) != Some(&b) {
                bad.push(
                    Sku::parse(k.value())
                        .map_err(|e| StoreError::Corrupt { table: "balances", detail: e.to_string() })?,
                );
            }
        }
        if stored != replay.len() {
            for k in replay.keys() {
                if bal.get(k.as_str())?.is_none() {
                    bad.push(
                        Sku::parse(k).map_err(|e| StoreError::Corrupt { table: "ledger", detail: e.to_string() })?,
                    );
                }
            }
        }
        Ok(bad)
    }

    /// One order.
    pub fn order(&self, id: &OrderId) -> Result<Option<OrderRecord>, StoreError> {
        let t = self.read()?.open_table(ORDERS)?;
        t.get(id.as_str())?.map(|v| dec("orders", v.value())).transpose()
    }

    /// When the order was frozen, if it was ([`crate::freeze`]).
    pub fn frozen_at(&self, id: &OrderId) -> Result<Option<u64>, StoreError> {
        let t = self.read()?.open_table(FROZEN)?;
        Ok(t.get(id.as_str())?.map(|v| v.value()))
    }

    /// One order and when it was frozen, read from the same snapshot (so a frozen order always comes with
    /// its final record).
    pub fn order_and_frozen_at(&self, id: &OrderId) -> Result<Option<(OrderRecord, Option<u64>)>, StoreError> {
        let r = self.read()?;
        let Some(rec) = r.open_table(ORDERS)?.get(id.as_str())?.map(|v| dec("orders", v.value())).transpose()? else {
            return Ok(None);
        };
        let frozen = r.open_table(FROZEN)?.get(id.as_str())?.map(|v| v.value());
        Ok(Some((rec, frozen)))
    }

    /// Orders waiting to be frozen once finished, with the start of their return window (0: at once), after
    /// `after`, at most `limit`.
    pub fn freeze_queue(&self, after: Option<&str>, limit: usize) -> Result<Vec<(String, u64)>, StoreError> {
        let t = self.read()?.open_table(FREEZE_QUEUE)?;
        let range = match after {
            Some(a) => t.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))?,
            None => t.range::<&str>(..)?,
        };
        let mut out = Vec::new();
        for item in range.take(limit.min(self.limits.page_max)) {
            let (k, v) = item?;
            out.push((k.value().to_owned(), v.value()));
        }
        Ok(out)
    }

    /// A page of orders, optionally in one state, with ids after `after`.
    pub fn orders(
        &self,
        status: Option<FulfillmentState>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        let limit = limit.min(self.limits.page_max);
        let r = self.read()?;
        let orders = r.open_table(ORDERS)?;
        match status {
            None => page(&orders, after, limit, "orders"),
            Some(s) => {
                let idx = r.open_table(ORDERS_BY_STATE)?;
                let tag = s.tag();
                let range = match after {
                    Some(a) => idx.range((tag, a)..(tag.saturating_add(1), ""))?,
                    None => idx.range((tag, "")..(tag.saturating_add(1), ""))?,
                };
                let mut out = Vec::new();
                for item in range {
                    let (k, _) = item?;
                    let id = k.value().1;
                    if Some(id) == after {
                        continue;
                    }
                    if out.len() >= limit {
                        break;
                    }
                    let v = orders.get(id)?.ok_or(StoreError::Corrupt {
                        table: "orders_by_state",
                        detail: format!("index names missing order {id}"),
                    })?;
                    out.push(dec("orders", v.value())?);
                }
                Ok(out)
            }
        }
    }

    /// Orders per state, read from counters kept in the same transactions as the orders.
    pub fn order_counts(&self) -> Result<Vec<(FulfillmentState, u64)>, StoreError> {
        let t = self.read()?.open_table(META)?;
        let mut out = Vec::new();
        for s in FulfillmentState::ALL {
            let n = t.get(state_counter(s).as_str())?.map(|v| v.value()).unwrap_or(0);
            out.push((s, n));
        }
        Ok(out)
    }

    /// One wave.
    pub fn wave(&self, id: u64) -> Result<Option<Wave>, StoreError> {
        let t = self.read()?.open_table(WAVES)?;
        t.get(id)?.map(|v| dec("waves", v.value())).transpose()
    }

    /// Change-feed entries with `seq > cursor`, for sync.
    pub fn feed_after(&self, cursor: u64, limit: usize) -> Result<Vec<(u64, FeedEntry)>, StoreError> {
        let t = self.read()?.open_table(FEED)?;
        let mut out = Vec::new();
        for item in t.range(cursor.saturating_add(1)..)?.take(limit) {
            let (k, v) = item?;
            out.push((k.value(), dec("feed", v.value())?));
        }
        Ok(out)
    }

    /// Number of orders stored.
    pub fn order_total(&self) -> Result<u64, StoreError> {
        Ok(self.read()?.open_table(ORDERS)?.len()?)
    }
}

fn page<T: DeserializeOwned>(
    t: &redb::ReadOnlyTable<&str, &[u8]>,
    after: Option<&str>,
    limit: usize,
    name: &'static str,
) -> Result<Vec<T>, StoreError> {
    let range = match after {
        Some(a) => t.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))?,
        None => t.range::<&str>(..)?,
    };
    let mut out = Vec::new();
    for item in range.take(limit) {
        out.push(dec(name, item?.1.value())?);
    }
    Ok(out)
}

/// Puts every order that may be frozen into the freeze queue, once: orders saved before the queue existed
/// (an upgraded database). Runs at open, over the finished states' index only.
fn fill_freeze_queue(w: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut meta = w.open_table(META)?;
    let mut queue = w.open_table(FREEZE_QUEUE)?;
    if meta.get(FREEZE_QUEUE_FILLED)?.is_some() {
        return Ok(());
    }
    let orders = w.open_table(ORDERS)?;
    let by_state = w.open_table(ORDERS_BY_STATE)?;
    let frozen = w.open_table(FROZEN)?;
    for s in [
        FulfillmentState::Rejected,
        FulfillmentState::Shipped,
        FulfillmentState::Delivered,
        FulfillmentState::Cancelled,
    ] {
        let tag = s.tag();
        for item in by_state.range((tag, "")..(tag.saturating_add(1), ""))? {
            let (k, _) = item?;
            let id = k.value().1;
            if frozen.get(id)?.is_some() {
                continue;
            }
            let Some(v) = orders.get(id)? else { continue };
            let rec: OrderRecord = dec("orders", v.value())?;
            if let Some(start) = queue_value(&rec) {
                queue.insert(id, start)?;
            }
        }
    }
    meta.insert(FREEZE_QUEUE_FILLED, 1)?;
    Ok(())
}

/// The freeze queue's value for `rec`: the start of its return window, 0 if finished at once, `None` if it
/// is not waiting to be frozen.
fn queue_value(rec: &OrderRecord) -> Option<u64> {
    match freeze::finish(rec) {
        freeze::Finish::Now => Some(0),
        freeze::Finish::WindowFrom(t) => Some(t),
        freeze::Finish::Open => None,
    }
}

fn state_counter(s: FulfillmentState) -> String {
    format!("orders.{}", s.as_str())
}

fn writer_loop(
    db: Arc<Database>,
    site: NodeId,
    mut rx: mpsc::Receiver<Job>,
    limits: Limits,
    metrics: Arc<Metrics>,
    commits: Arc<tokio::sync::Notify>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(limits.batch_max);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < limits.batch_max {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let results = apply_batch(&db, &site, &limits, &mut batch);
        metrics.observe_commit(started.elapsed(), batch.len());
        match results {
            Ok(results) => {
                commits.notify_one();
                for (job, res) in batch.drain(..).zip(results) {
                    let _ = job.reply.send(res);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, jobs = batch.len(), "write transaction failed; batch refused");
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
    tracing::debug!("writer stopped");
}

fn apply_batch(
    db: &Database,
    site: &NodeId,
    limits: &Limits,
    batch: &mut [Job],
) -> Result<Vec<Result<Outcome, StoreError>>, StoreError> {
    let w = db.begin_write()?;
    let mut results = Vec::with_capacity(batch.len());
    {
        let mut tx = Tx::open(&w, site, now_ms())?;
        for job in batch.iter_mut() {
            // Take the command out; a placeholder stays behind (the job is answered from `results`).
            let cmd = std::mem::replace(&mut job.cmd, Command::CreateWave { orders_max: 0 });
            let res = tx.apply(cmd, limits);
            if let Err(StoreError::Storage(e)) = &res {
                return Err(StoreError::Storage(e.clone()));
            }
            results.push(res);
        }
        tx.prune_idempotency(limits.idempotency_retention_ms)?;
        tx.flush_counters()?;
    }
    w.commit()?;
    Ok(results)
}

/// The open tables of one write transaction, plus counters cached for its duration.
struct Tx<'w> {
    site: &'w NodeId,
    now_ms: u64,
    catalog: redb::Table<'w, &'static str, &'static [u8]>,
    balances: redb::Table<'w, &'static str, &'static [u8]>,
    ledger: redb::Table<'w, u64, &'static [u8]>,
    ledger_by_sku: redb::Table<'w, (&'static str, u64), ()>,
    orders: redb::Table<'w, &'static str, &'static [u8]>,
    by_state: redb::Table<'w, (u8, &'static str), ()>,
    waves: redb::Table<'w, u64, &'static [u8]>,
    idem: redb::Table<'w, &'static str, &'static [u8]>,
    idem_by_time: redb::Table<'w, (u64, &'static str), ()>,
    feed: redb::Table<'w, u64, &'static [u8]>,
    meta: redb::Table<'w, &'static str, u64>,
    escrow: redb::Table<'w, &'static str, &'static [u8]>,
    frozen: redb::Table<'w, &'static str, u64>,
    freeze_queue: redb::Table<'w, &'static str, u64>,
    counters: BTreeMap<String, u64>,
}

impl<'w> Tx<'w> {
    fn open(w: &'w redb::WriteTransaction, site: &'w NodeId, now_ms: u64) -> Result<Self, StoreError> {
        Ok(Tx {
            site,
            now_ms,
            catalog: w.open_table(CATALOG)?,
            balances: w.open_table(BALANCES)?,
            ledger: w.open_table(LEDGER)?,
            ledger_by_sku: w.open_table(LEDGER_BY_SKU)?,
            orders: w.open_table(ORDERS)?,
            by_state: w.open_table(ORDERS_BY_STATE)?,
            waves: w.open_table(WAVES)?,
            idem: w.open_table(IDEMPOTENCY)?,
            idem_by_time: w.open_table(IDEMPOTENCY_BY_TIME)?,
            feed: w.open_table(FEED)?,
            meta: w.open_table(META)?,
            escrow: w.open_table(ESCROW)?,
            frozen: w.open_table(FROZEN)?,
            freeze_queue: w.open_table(FREEZE_QUEUE)?,
            counters: BTreeMap::new(),
        })
    }

    fn counter(&mut self, name: &str) -> Result<u64, StoreError> {
        if let Some(v) = self.counters.get(name) {
            return Ok(*v);
        }
        let v = self.meta.get(name)?.map(|v| v.value()).unwrap_or(0);
        self.counters.insert(name.to_owned(), v);
        Ok(v)
    }

    fn bump(&mut self, name: &str, delta: i64) -> Result<u64, StoreError> {
        let v = self.counter(name)?;
        let nv = v.checked_add_signed(delta).ok_or_else(|| StoreError::Corrupt {
            table: "meta",
            detail: format!("counter {name} would leave u64 range"),
        })?;
        self.counters.insert(name.to_owned(), nv);
        Ok(nv)
    }

    /// Forgets at most [`IDEMPOTENCY_PRUNE_MAX`] idempotency records older than `retention_ms` (records
    /// written before this index existed are kept).
    fn prune_idempotency(&mut self, retention_ms: u64) -> Result<(), StoreError> {
        let cutoff = self.now_ms.saturating_sub(retention_ms);
        let mut old = Vec::new();
        for item in self.idem_by_time.range((0u64, "")..(cutoff, ""))?.take(IDEMPOTENCY_PRUNE_MAX) {
            let (k, _) = item?;
            let (at, key) = k.value();
            old.push((at, key.to_owned()));
        }
        for (at, key) in old {
            self.idem_by_time.remove((at, key.as_str()))?;
            self.idem.remove(key.as_str())?;
        }
        Ok(())
    }

    fn flush_counters(&mut self) -> Result<(), StoreError> {
        for (k, v) in std::mem::take(&mut self.counters) {
            self.meta.insert(k.as_str(), v)?;
        }
        Ok(())
    }

    fn feed_push(&mut self, e: FeedEntry) -> Result<(), StoreError> {
        let seq = self.bump(SEQ_FEED, 1)?;
        self.feed.insert(seq, enc(&e)?.as_slice())?;
        Ok(())
    }

    fn in_catalog(&self, sku: &Sku) -> Result<bool, StoreError> {
        Ok(self.catalog.get(sku.as_str())?.is_some())
    }

    fn balance(&self, sku: &Sku) -> Result<Balance, StoreError> {
        Ok(self.balances.get(sku.as_str())?.map(|v| dec("balances", v.value())).transpose()?.unwrap_or_default())
    }

    fn order(&self, id: &OrderId) -> Result<OrderRecord, StoreError> {
        self.orders
            .get(id.as_str())?
            .map(|v| dec("orders", v.value()))
            .transpose()?
            .ok_or_else(|| StoreError::OrderNotFound(id.clone()))
    }

    /// An order about to be changed: refused with [`StoreError::OrderFrozen`] once it is frozen. Every
    /// command that changes an existing order reads it through here, before anything else.
    fn order_to_change(&self, id: &OrderId) -> Result<OrderRecord, StoreError> {
        let rec = self.order(id)?;
        if let Some(at) = self.frozen.get(id.as_str())? {
            return Err(StoreError::OrderFrozen { order: id.clone(), frozen_at_ms: at.value() });
        }
        Ok(rec)
    }

    /// Appends `m` to the ledger and stores the new balance. The caller has validated `m` against the current
    /// balance; a refusal here means the caller's check was wrong, which is a bug, so it is reported as corrupt.
    fn post(&mut self, sku: &Sku, m: Movement) -> Result<LedgerEntry, StoreError> {
        let rights = match &m {
            Movement::Release { order, .. } | Movement::Putaway { order, .. } => rights_of(order),
            _ => Rights::Site,
        };
        self.post_as(sku, m, rights)
    }

    /// [`Tx::post`], with the escrow side chosen by the caller (see [`crate::escrow`]).
    fn post_as(&mut self, sku: &Sku, m: Movement, rights: Rights) -> Result<LedgerEntry, StoreError> {
        let before = self.balance(sku)?;
        let after = before.apply(&m).map_err(|e| StoreError::Corrupt {
            table: "balances",
            detail: format!("validated movement refused for {sku}: {e}"),
        })?;
        assert!(after.reserved <= after.on_hand, "reserved exceeds on hand for {sku}");
        let seq = self.bump(SEQ_LEDGER, 1)?;
        let entry = LedgerEntry { seq, sku: sku.clone(), at_ms: self.now_ms, movement: m, balance: after };
        self.ledger.insert(seq, enc(&entry)?.as_slice())?;
        self.ledger_by_sku.insert((sku.as_str(), seq), ())?;
        self.balances.insert(sku.as_str(), enc(&after)?.as_slice())?;
        let mut esc = self.escrow_of(sku, &before)?;
        escrow::on_movement(&mut esc, &before, &after, rights, self.now_ms).map_err(escrow_corrupt)?;
        self.escrow.insert(sku.as_str(), enc(&esc)?.as_slice())?;
        self.feed_push(FeedEntry::Stock(sku.clone()))?;
        Ok(entry)
    }

    /// The SKU's escrow counter; a SKU without one gets the site holding rights to all of `balance`.
    fn escrow_of(&self, sku: &Sku, balance: &Balance) -> Result<EscrowCounter, StoreError> {
        match self.escrow.get(sku.as_str())? {
            Some(v) => dec("escrow", v.value()),
            None => escrow::fresh(sku, balance).map_err(escrow_corrupt),
        }
    }

    /// Units the site's own channel may still promise.
    fn site_rights(&self, sku: &Sku) -> Result<u64, StoreError> {
        let b = self.balance(sku)?;
        Ok(self.escrow_of(sku, &b)?.local(Party::Site).min(b.available()))
    }

    /// A shortfall of `sku` for `qty` units at the site's own channel, if any.
    fn site_shortfall(&self, sku: &Sku, qty: u64) -> Result<Option<Shortfall>, StoreError> {
        let b = self.balance(sku)?;
        let own = self.site_rights(sku)?;
        Ok((own < qty).then(|| Shortfall {
            sku: sku.clone(),
            available: own,
            requested: qty,
            held_for_hub: b.available().saturating_sub(own),
        }))
    }

    /// Refuses taking `units` away from `sku` beyond the site's own rights.
    fn check_site_decrease(&self, sku: &Sku, units: u64) -> Result<(), StoreError> {
        let own = self.site_rights(sku)?;
        if units > own {
            return Err(StoreError::EscrowedToHub { sku: sku.clone(), site_rights: own, requested: units });
        }
        Ok(())
    }

    fn save_order(&mut self, rec: &OrderRecord, prev: Option<FulfillmentState>) -> Result<(), StoreError> {
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

    fn freeze(
        &mut self,
        return_window_ms: u64,
        orders_max: usize,
        after: Option<String>,
    ) -> Result<Outcome, StoreError> {
        let mut queued = Vec::new();
        let range = match &after {
            Some(a) => {
                self.freeze_queue.range::<&str>((std::ops::Bound::Excluded(a.as_str()), std::ops::Bound::Unbounded))?
            }
            None => self.freeze_queue.range::<&str>(..)?,
        };
        for item in range.take(orders_max) {
            let (k, v) = item?;
            queued.push((k.value().to_owned(), v.value()));
        }
        let visited = queued.len();
        let next_after = if visited == orders_max { queued.last().map(|(id, _)| id.clone()) } else { None };
        let mut frozen = Vec::new();
        for (id, start) in queued {
            if start != 0 && self.now_ms < start.saturating_add(return_window_ms) {
                continue;
            }
            let oid = OrderId::parse(&id)
                .map_err(|e| StoreError::Corrupt { table: "freeze_queue", detail: e.to_string() })?;
            // The record decides; the queue only saves reading records that cannot be due.
            let rec = self.order(&oid)?;
            if self.frozen.get(id.as_str())?.is_some() || !freeze::is_finished(&rec, self.now_ms, return_window_ms) {
                continue;
            }
            self.frozen.insert(id.as_str(), self.now_ms)?;
            self.freeze_queue.remove(id.as_str())?;
            self.feed_push(FeedEntry::Order(oid.clone()))?;
            frozen.push(oid);
        }
        Ok(Outcome::Frozen { frozen, next_after })
    }

    fn step(&self, rec: &OrderRecord, step: Step) -> Result<FulfillmentState, StoreError> {
        rec.status.next(step).map_err(|source| StoreError::Transition { order: rec.id.clone(), source })
    }

    fn apply(&mut self, cmd: Command, limits: &Limits) -> Result<Outcome, StoreError> {
        match cmd {
            Command::PutCatalog(item) => {
                self.catalog.insert(item.sku.as_str(), enc(&item)?.as_slice())?;
                self.feed_push(FeedEntry::Catalog(item.sku.clone()))?;
                Ok(Outcome::Catalog(item))
            }
            Command::Stock { sku, movement } => self.stock(sku, movement),
            Command::CreateOrder { key, draft } => self.create_order(key, *draft),
            Command::CreateWave { orders_max } => self.create_wave(orders_max.clamp(1, limits.wave_orders_max)),
            Command::ConfirmPicks { order, lines } => self.confirm_picks(order, lines),
            Command::Pack { order, parcels } => {
                let mut rec = self.order_to_change(&order)?;
                let to = self.step(&rec, Step::Pack)?;
                let prev = rec.status;
                rec.parcels = Some(parcels);
                self.transition(&mut rec, to, format!("packed into {parcels} parcel(s)"));
                self.save_order(&rec, Some(prev))?;
                Ok(order_outcome(rec, false))
            }
            Command::Ship { order, carrier, tracking } => self.ship(order, carrier, tracking),
            Command::Deliver { order } => {
                let mut rec = self.order_to_change(&order)?;
                let to = self.step(&rec, Step::Deliver)?;
                let prev = rec.status;
                self.transition(&mut rec, to, "delivered".into());
                self.save_order(&rec, Some(prev))?;
                Ok(order_outcome(rec, false))
            }
            Command::Cancel { order, reason } => self.cancel(order, reason),
            Command::Reaccept { order } => self.reaccept(order),
            Command::ReceiveReturn { order, lines, disposition } => self.receive_return(order, lines, disposition),
            Command::Refund { order, return_id } => {
                let mut rec = self.order_to_change(&order)?;
                let ret =
                    rec.returns.iter_mut().find(|r| r.id == return_id).ok_or_else(|| StoreError::LineMismatch {
                        order: order.clone(),
                        message: format!("has no return number {return_id}"),
                    })?;
                ret.status = ret
                    .status
                    .next(ReturnStep::Refund)
                    .map_err(|e| StoreError::LineMismatch { order: order.clone(), message: e.to_string() })?;
                let status = rec.status;
                rec.timeline.push(TimelineEntry {
                    at_ms: self.now_ms,
                    status,
                    note: format!("return {return_id} refunded"),
                });
                self.save_order(&rec, Some(status))?;
                Ok(order_outcome(rec, false))
            }
            Command::AcceptAssignment { id, draft, assigned_at_ms, auto_accept } => {
                self.accept_assignment(id, *draft, assigned_at_ms, auto_accept)
            }
            Command::RejectAssignment { order, reason } => {
                let mut rec = self.order_to_change(&order)?;
                let to = self.step(&rec, Step::Reject)?;
                let prev = rec.status;
                for i in 0..rec.lines.len() {
                    let (sku, qty) = (rec.lines[i].sku.clone(), rec.lines[i].qty);
                    self.post_as(&sku, Movement::Release { qty, order: order.clone() }, Rights::Hub)?;
                }
                self.transition(&mut rec, to, format!("assignment rejected: {reason}"));
                self.save_order(&rec, Some(prev))?;
                Ok(order_outcome(rec, false))
            }
            Command::EscrowSync { hub, policy } => self.escrow_sync(hub, &policy),
            Command::EscrowTick { hub_reachable, policy, skus_max, after } => {
                self.escrow_tick(hub_reachable, &policy, skus_max.clamp(1, limits.escrow_tick_skus_max), after)
            }
            Command::Freeze { return_window_ms, orders_max, after } => {
                self.freeze(return_window_ms, orders_max.clamp(1, FREEZE_ORDERS_MAX), after)
            }
            Command::Import { catalog, counts } => {
                for (sku, _) in &counts {
                    if !self.in_catalog(sku)? && !catalog.iter().any(|c| &c.sku == sku) {
                        return Err(StoreError::UnknownSku(sku.clone()));
                    }
                }
                // Validate every count against reservations before writing anything.
                for (sku, counted) in &counts {
                    let b = self.balance(sku)?;
                    let after = b
                        .apply(&Movement::CycleCount { counted: *counted, delta: 0 })
                        .map_err(|source| StoreError::BelowReserved { sku: sku.clone(), source })?;
                    self.check_site_decrease(sku, b.available().saturating_sub(after.available()))?;
                }
                let (nc, ns) = (catalog.len(), counts.len());
                for item in catalog {
                    self.catalog.insert(item.sku.as_str(), enc(&item)?.as_slice())?;
                    self.feed_push(FeedEntry::Catalog(item.sku.clone()))?;
                }
                for (sku, counted) in counts {
                    let b = self.balance(&sku)?;
                    let delta = i64::try_from(i128::from(counted) - i128::from(b.on_hand)).unwrap_or(i64::MAX);
                    if delta != 0 || b == Balance::default() {
                        self.post(&sku, Movement::CycleCount { counted, delta })?;
                    }
                }
                Ok(Outcome::Imported { catalog: nc, counts: ns })
            }
        }
    }

    fn transition(&self, rec: &mut OrderRecord, to: FulfillmentState, note: String) {
        rec.status = to;
        rec.timeline.push(TimelineEntry { at_ms: self.now_ms, status: to, note });
    }

    fn stock(&mut self, sku: Sku, movement: Movement) -> Result<Outcome, StoreError> {
        if !self.in_catalog(&sku)? {
            return Err(StoreError::UnknownSku(sku));
        }
        let b = self.balance(&sku)?;
        let movement = match movement {
            Movement::CycleCount { counted, .. } => Movement::CycleCount {
                counted,
                delta: i64::try_from(i128::from(counted) - i128::from(b.on_hand)).unwrap_or(i64::MAX),
            },
            m => m,
        };
        let after = b.apply(&movement).map_err(|source| match source {
            BalanceError::Overflow => {
                StoreError::Invalid(ValidationError::new("invalid_quantity", "qty", "stock figure would overflow"))
            }
            source => StoreError::BelowReserved { sku: sku.clone(), source },
        })?;
        self.check_site_decrease(&sku, b.available().saturating_sub(after.available()))?;
        Ok(Outcome::Ledger(self.post(&sku, movement)?))
    }

    fn create_order(&mut self, key: String, draft: OrderDraft) -> Result<Outcome, StoreError> {
        let hash = draft_sha256(&draft).map_err(|e| StoreError::Storage(format!("encode: {e}")))?;
        if let Some(v) = self.idem.get(key.as_str())? {
            let rec: IdempotencyRecord = dec("idempotency", v.value())?;
            if rec.body_sha256 != hash {
                return Err(StoreError::IdempotencyKeyReused(key));
            }
            return Ok(order_outcome(self.order(&rec.order)?, false));
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
        self.idem.insert(key.as_str(), enc(&idem)?.as_slice())?;
        self.idem_by_time.insert((self.now_ms, key.as_str()), ())?;
        Ok(order_outcome(rec, true))
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
    ) -> Result<Outcome, StoreError> {
        if let Some(v) = self.orders.get(id.as_str())? {
            return Ok(order_outcome(dec("orders", v.value())?, false));
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
        Ok(order_outcome(rec, true))
    }

    fn put_escrow(&mut self, c: &EscrowCounter) -> Result<(), StoreError> {
        self.escrow.insert(c.sku().as_str(), enc(c)?.as_slice())?;
        self.feed_push(FeedEntry::Stock(c.sku().clone()))
    }

    fn escrow_sync(&mut self, hub: Vec<EscrowCounter>, policy: &EscrowPolicy) -> Result<Outcome, StoreError> {
        let mut changed = Vec::new();
        for theirs in hub {
            let sku = theirs.sku().clone();
            if !self.in_catalog(&sku)? {
                continue;
            }
            let b = self.balance(&sku)?;
            let mut c = self.escrow_of(&sku, &b)?;
            let before = c.clone();
            c.merge(&theirs)
                .map_err(|e| escrow_corrupt(escrow::EscrowFault { sku: sku.clone(), detail: e.to_string() }))?;
            if c.check().is_err() || escrow::check_site_invariant(&c, &b).is_err() {
                // The hub's view contradicts ours (it would leave a party below zero): keep ours.
                tracing::error!(%sku, "refusing the hub's escrow state: it contradicts the site's");
                continue;
            }
            escrow::maintain(&mut c, policy, true, self.now_ms).map_err(escrow_corrupt)?;
            if c != before {
                self.put_escrow(&c)?;
                changed.push(sku);
            }
        }
        Ok(Outcome::Escrow(changed))
    }

    fn escrow_tick(
        &mut self,
        hub_reachable: bool,
        policy: &EscrowPolicy,
        skus_max: usize,
        after: Option<Sku>,
    ) -> Result<Outcome, StoreError> {
        let mut skus = Vec::new();
        let range = match &after {
            Some(a) => {
                self.balances.range::<&str>((std::ops::Bound::Excluded(a.as_str()), std::ops::Bound::Unbounded))?
            }
            None => self.balances.range::<&str>(..)?,
        };
        for item in range.take(skus_max) {
            let (k, v) = item?;
            let sku =
                Sku::parse(k.value()).map_err(|e| StoreError::Corrupt { table: "balances", detail: e.to_string() })?;
            skus.push((sku, dec::<Balance>("balances", v.value())?));
        }
        let mut changed = Vec::new();
        let visited = skus.len();
        let mut last = None;
        for (sku, b) in skus {
            let fresh = self.escrow.get(sku.as_str())?.is_none();
            let mut c = self.escrow_of(&sku, &b)?;
            let m = escrow::maintain(&mut c, policy, hub_reachable, self.now_ms).map_err(escrow_corrupt)?;
            if m.changed() || fresh {
                self.put_escrow(&c)?;
                changed.push(sku.clone());
            }
            last = Some(sku);
        }
        let next_after = if visited == skus_max { last } else { None };
        Ok(Outcome::EscrowTicked { changed, next_after })
    }

    fn create_wave(&mut self, orders_max: usize) -> Result<Outcome, StoreError> {
        let tag = FulfillmentState::Accepted.tag();
        let mut ids = Vec::new();
        for item in self.by_state.range((tag, "")..(tag + 1, ""))?.take(orders_max) {
            let (k, _) = item?;
            ids.push(
                OrderId::parse(k.value().1)
                    .map_err(|e| StoreError::Corrupt { table: "orders_by_state", detail: e.to_string() })?,
            );
        }
        if ids.is_empty() {
            return Err(StoreError::NothingToPick);
        }
        let id = self.bump(SEQ_WAVE, 1)?;
        let mut lines = Vec::new();
        for oid in &ids {
            let mut rec = self.order(oid)?;
            let to = self.step(&rec, Step::StartPicking)?;
            for l in &rec.lines {
                let bin = match self.catalog.get(l.sku.as_str())? {
                    Some(v) => dec::<CatalogItem>("catalog", v.value())?.bin,
                    None => String::new(),
                };
                lines.push(PickLine { bin, sku: l.sku.clone(), order: oid.clone(), qty: l.qty });
            }
            rec.wave = Some(id);
            self.transition(&mut rec, to, format!("on pick wave {id}"));
            self.save_order(&rec, Some(FulfillmentState::Accepted))?;
        }
        lines.sort_by(|a, b| (&a.bin, &a.sku, &a.order).cmp(&(&b.bin, &b.sku, &b.order)));
        let wave = Wave { id, created_at_ms: self.now_ms, orders: ids, lines };
        self.waves.insert(id, enc(&wave)?.as_slice())?;
        Ok(Outcome::Wave(wave))
    }

    fn confirm_picks(&mut self, order: OrderId, confirms: Vec<PickConfirmation>) -> Result<Outcome, StoreError> {
        let mut rec = self.order_to_change(&order)?;
        if rec.status != FulfillmentState::Picking {
            return Err(StoreError::Transition {
                order,
                source: TransitionError { from: rec.status, step: Step::ConfirmPicks },
            });
        }
        if confirms.is_empty() {
            return Err(StoreError::LineMismatch { order, message: "no lines to confirm".into() });
        }
        // Validate all confirmations first.
        let mut idx = Vec::with_capacity(confirms.len());
        for c in &confirms {
            let i = rec.lines.iter().position(|l| l.sku == c.sku).ok_or_else(|| StoreError::LineMismatch {
                order: order.clone(),
                message: format!("has no line for SKU {}", c.sku),
            })?;
            let line = &rec.lines[i];
            if line.picked.is_some() || idx.contains(&i) {
                return Err(StoreError::LineMismatch {
                    order: order.clone(),
                    message: format!("line {} is already confirmed", c.sku),
                });
            }
            if c.picked > line.qty {
                return Err(StoreError::LineMismatch {
                    order: order.clone(),
                    message: format!("picked {} of {} but the line asks for {}", c.picked, c.sku, line.qty),
                });
            }
            idx.push(i);
        }
        for (c, i) in confirms.iter().zip(idx) {
            let qty = rec.lines[i].qty;
            if c.picked > 0 {
                self.post(&c.sku, Movement::Pick { qty: c.picked, order: order.clone() })?;
            }
            if c.picked < qty {
                self.post(&c.sku, Movement::Release { qty: qty - c.picked, order: order.clone() })?;
            }
            rec.lines[i].picked = Some(c.picked);
        }
        if rec.lines.iter().all(|l| l.picked.is_some()) {
            let picked: u64 = rec.lines.iter().map(|l| u64::from(l.picked.unwrap_or(0))).sum();
            let ordered: u64 = rec.lines.iter().map(|l| u64::from(l.qty)).sum();
            let (step, note) = if picked == 0 {
                (Step::ShortPickAll, "nothing found in the bins; backordered, reservation released".to_owned())
            } else if picked < ordered {
                (Step::ConfirmPicks, format!("short pick: {picked} of {ordered} units; the rest is released"))
            } else {
                (Step::ConfirmPicks, "all lines picked".to_owned())
            };
            let to = self.step(&rec, step)?;
            if picked == 0 {
                // Nothing was picked: the lines go back to unconfirmed so the order can be re-accepted later.
                for l in &mut rec.lines {
                    l.picked = None;
                }
            }
            self.transition(&mut rec, to, note);
            self.save_order(&rec, Some(FulfillmentState::Picking))?;
        } else {
            self.save_order(&rec, Some(FulfillmentState::Picking))?;
        }
        Ok(order_outcome(rec, false))
    }

    fn ship(&mut self, order: OrderId, carrier: String, tracking: String) -> Result<Outcome, StoreError> {
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
        Ok(order_outcome(rec, false))
    }

    fn cancel(&mut self, order: OrderId, reason: String) -> Result<Outcome, StoreError> {
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
        Ok(order_outcome(rec, false))
    }

    fn reaccept(&mut self, order: OrderId) -> Result<Outcome, StoreError> {
        let mut rec = self.order_to_change(&order)?;
        let to = self.step(&rec, Step::Accept)?;
        let prev = rec.status;
        let mut shortfalls = Vec::new();
        if rec.status == FulfillmentState::Assigned {
            // A hub assignment waiting for staff: its units are already reserved.
            self.transition(&mut rec, to, "assignment accepted by staff".into());
            self.save_order(&rec, Some(prev))?;
            return Ok(order_outcome(rec, false));
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
        Ok(order_outcome(rec, false))
    }

    fn receive_return(
        &mut self,
        order: OrderId,
        lines: Vec<ReturnLine>,
        disposition: Disposition,
    ) -> Result<Outcome, StoreError> {
        let mut rec = self.order_to_change(&order)?;
        if !matches!(rec.status, FulfillmentState::Shipped | FulfillmentState::Delivered) {
            return Err(StoreError::LineMismatch {
                order,
                message: format!("is {}; only shipped or delivered orders can be returned", rec.status),
            });
        }
        if lines.is_empty() {
            return Err(StoreError::LineMismatch { order, message: "a return needs at least one line".into() });
        }
        let mut idx = Vec::new();
        for r in &lines {
            let i = rec.lines.iter().position(|l| l.sku == r.sku).ok_or_else(|| StoreError::LineMismatch {
                order: order.clone(),
                message: format!("has no line for SKU {}", r.sku),
            })?;
            let l = &rec.lines[i];
            let already: u32 = lines.iter().filter(|o| o.sku == r.sku).map(|o| o.qty).sum();
            if u64::from(l.returned) + u64::from(already) > u64::from(l.shipped) {
                return Err(StoreError::LineMismatch {
                    order: order.clone(),
                    message: format!(
                        "{} units of {} returned would exceed the {} shipped ({} returned before)",
                        already, r.sku, l.shipped, l.returned
                    ),
                });
            }
            idx.push(i);
        }
        for (r, i) in lines.iter().zip(idx) {
            self.post(&r.sku, Movement::Return { qty: r.qty, order: order.clone(), disposition })?;
            rec.lines[i].returned += r.qty;
        }
        let id = u32::try_from(rec.returns.len()).unwrap_or(u32::MAX).saturating_add(1);
        rec.returns.push(ReturnRecord {
            id,
            lines,
            disposition,
            status: ReturnState::Requested.next(ReturnStep::Receive).unwrap_or(ReturnState::Received),
            received_at_ms: self.now_ms,
        });
        let status = rec.status;
        let what = match disposition {
            Disposition::Restock => "restocked",
            Disposition::Scrap => "scrapped",
        };
        rec.timeline.push(TimelineEntry {
            at_ms: self.now_ms,
            status,
            note: format!("return {id} received and {what}"),
        });
        self.save_order(&rec, Some(status))?;
        Ok(order_outcome(rec, false))
    }
}

/// Orders the hub assigned (`hub-…`) spend and return the hub's rights; every other order the site's.
pub fn rights_of(order: &OrderId) -> Rights {
    if order.as_str().starts_with(HUB_ORDER_PREFIX) { Rights::Hub } else { Rights::Site }
}

/// Timeline note of an order whose stock was reserved on acceptance.
const ACCEPTED_NOTE: &str = "accepted and stock reserved";

fn escrow_corrupt(e: escrow::EscrowFault) -> StoreError {
    StoreError::Corrupt { table: "escrow", detail: e.to_string() }
}

fn order_outcome(rec: OrderRecord, created: bool) -> Outcome {
    Outcome::Order { record: Box::new(rec), created }
}

/// How long a caller waits for the writer before giving up on a request.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{movement, site, store_with_catalog};
    use oms_protocol::fixtures;

    #[test]
    fn orders_saved_before_the_freeze_queue_existed_are_queued_once_at_open() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("node.redb");
            let store = store_with_catalog(dir.path(), &["A"]).await;
            movement(&store, "A", Movement::Receipt { qty: 5, note: None }).await;
            let draft = fixtures::draft("x", &Sku::parse("A").unwrap(), 1);
            let mut ids = Vec::new();
            for key in ["cancelled", "open"] {
                let cmd = Command::CreateOrder { key: key.into(), draft: Box::new(draft.clone()) };
                let Ok(Outcome::Order { record, .. }) = store.execute(cmd).await else { panic!("not created") };
                ids.push(record.id);
            }
            store.execute(Command::Cancel { order: ids[0].clone(), reason: "x".into() }).await.unwrap();
            assert_eq!(store.freeze_queue(None, 10).unwrap(), vec![(ids[0].to_string(), 0)]);
            store.close();
            // The database as an older version left it: no queue, no flag.
            {
                let db = Database::create(&path).unwrap();
                let w = db.begin_write().unwrap();
                w.delete_table(FREEZE_QUEUE).unwrap();
                w.open_table(META).unwrap().remove(FREEZE_QUEUE_FILLED).unwrap();
                w.commit().unwrap();
            }
            let store = Store::open(&path, site(), Limits::default(), Arc::new(Metrics::new())).unwrap();
            assert_eq!(store.freeze_queue(None, 10).unwrap(), vec![(ids[0].to_string(), 0)], "queued at open");
            store.close();
        });
    }
}
