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
//!
//! # Modules
//! - `tables`: the tables, `meta` keys and row encoding; `records`: the node's own records; `error`:
//!   [`StoreError`].
//! - `reads`: the read API of [`Store`]; `writer`: the writer thread, its batches and `Tx`, the open tables of
//!   one write transaction.
//! - The command handlers, by domain: `stock` (catalog, stock movements, import and the ledger posting every
//!   movement goes through), `orders` (local orders, hub assignments, fulfillment steps), `waves` (pick waves
//!   and pick confirmations), `returns`, `escrow` (the site's escrow counters and duties) and `freeze`
//!   (freezing finished orders).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use oms_protocol::domain::{Disposition, Movement, NodeId, OrderDraft, OrderId, Sku};
use oms_protocol::escrow::EscrowCounter;
use redb::Database;
use tokio::sync::{mpsc, oneshot};

use crate::escrow::EscrowPolicy;
use crate::metrics::Metrics;
pub use oms_protocol::records::{FulfillmentLine, OrderRecord, ReturnLine, ReturnRecord, Shipment, TimelineEntry};

mod error;
mod escrow;
mod freeze;
mod orders;
mod reads;
mod records;
mod returns;
mod stock;
mod tables;
mod waves;
mod writer;

pub use error::StoreError;
pub use escrow::rights_of;
pub use freeze::FREEZE_ORDERS_MAX;
use freeze::fill_freeze_queue;
pub use orders::IDEMPOTENCY_KEY_BYTES_MAX;
use records::IdempotencyRecord;
pub use records::{CatalogItem, FeedEntry, LedgerEntry, PickConfirmation, PickLine, Shortfall, Wave};
use tables::*;
pub use writer::IDEMPOTENCY_PRUNE_MAX;
use writer::{Job, writer_loop};

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
}

/// How long a caller waits for the writer before giving up on a request.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
