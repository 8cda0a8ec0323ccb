//! The node's system of record in redb: catalog, the append-only stock ledger with per-SKU balances, orders
//! with their fulfillment, pick waves, idempotency records and a change feed.
//!
//! # Writes: one writer, group commit
//! Every write is a [`Command`] (one type per command, in [`cmd`]) sent to a single writer thread. The writer
//! takes a batch of queued commands (at most [`Limits::batch_max`]), applies them one after another inside
//! **one** redb write transaction, commits it with `Durability::Immediate` (fsync), and only then answers each
//! caller. So an acknowledgement always means "on disk", and concurrent requests share one fsync instead of
//! queueing for one each.
//!
//! A command that is refused (bad input, not enough stock) must leave no trace in the shared transaction.
//! Each command handler therefore *reads and validates everything first, then writes*: no handler returns an
//! error after its first write. Storage errors are the exception; they abort the whole batch and every caller
//! in it gets an error, so nothing is half-applied.
//!
//! # Typed replies
//! Each command type names its answer ([`Command::Reply`]), so [`Store::execute`] returns exactly what that
//! command produces: `store.execute(cmd::Pack { .. })` is a `Result<OrderRecord, StoreError>`. Inside, every
//! queued command carries a one-shot sender of its own reply type; the writer keeps the results of a batch
//! and sends them only after the commit (or sends every caller the batch's storage error).
//!
//! # Reads
//! Readers open their own MVCC read transaction (`begin_read`) and never wait for the writer.
//!
//! # Modules
//! - `tables`: the tables, `meta` keys and row encoding; `records`: the node's own records; `error`:
//!   [`StoreError`].
//! - `reads`: the read API of [`Store`]; `writer`: the writer thread, its batches and `Tx`, the open tables of
//!   one write transaction.
//! - The commands, each type with its handler, by domain: `stock` (catalog, stock movements, import, and the
//!   ledger posting every movement goes through), `orders` (local orders, hub assignments, fulfillment steps),
//!   `waves` (pick waves and pick confirmations), `returns`, `escrow` (the site's escrow counters and duties)
//!   and `freeze` (freezing finished orders). Every handler keeps the rule above: validate, then write.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use oms_protocol::domain::NodeId;
use redb::Database;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
pub use oms_protocol::records::{FulfillmentLine, OrderRecord, ReturnLine, ReturnRecord, Shipment, TimelineEntry};
pub use oms_service::storage::StorageError;

mod consignments;
mod error;
mod escrow;
mod freeze;
mod inbound;
mod manifests;
mod orders;
mod reads;
mod records;
mod restore;
mod returns;
mod stock;
mod tables;
mod waves;
mod writer;

pub use consignments::{
    AwaitingLabel, Consignment, ConsignmentCounts, ConsignmentState, LABEL_BYTES_MAX, LabelDoc, NewConsignment,
    PARCEL_SIDE_MM_MAX, PARCEL_WEIGHT_G_MAX, PARCELS_MAX, Parcel, consignment_id,
};
pub use error::StoreError;
pub use escrow::{EscrowTicked, rights_of};
use freeze::fill_freeze_queue;
pub use freeze::{FREEZE_ORDERS_MAX, Frozen};
pub use inbound::{
    INBOUND_POS_MAX, InboundRecord, PoReceipt, RECEIPT_LINES_MAX, ReceiptLine, ReceiveAgainst, ReceiveLine, Received,
    TOLERANCE_PCT_MAX,
};
pub use manifests::{Closed, Collected, MANIFEST_CONSIGNMENTS_MAX, Manifest, VOID_REASON_BYTES_MAX};
pub use orders::{IDEMPOTENCY_KEY_BYTES_MAX, NewOrder};
use records::IdempotencyRecord;
pub use records::{CatalogItem, FeedEntry, LedgerEntry, PickConfirmation, PickLine, Shortfall, Wave};
pub use restore::RESTORE_ORDER_IDS_SKIPPED;
pub use returns::{RMAS_MAX, RmaReceipt, RmaRecord};
pub use stock::Imported;
pub use tables::NODE_FORMAT;
use tables::*;
pub use writer::Audit;
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
    /// Escrow counters one tick may change (each is rewritten into the stock document the hub merges).
    pub escrow_tick_changes_max: usize,
    /// How long an idempotency key is remembered, ms; a retry after that is a new order.
    pub idempotency_retention_ms: u64,
    /// Free space, bytes, the store keeps on its file system: below it every write is refused with
    /// [`StoreError::InsufficientStorage`] before it touches the file (reads go on), so a full disk never
    /// fails a commit halfway; writes resume as soon as space returns. 0 turns the check off.
    pub storage_reserve_bytes: u64,
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
            escrow_tick_changes_max: 1_000,
            idempotency_retention_ms: 7 * 24 * 3_600_000,
            storage_reserve_bytes: oms_service::storage::RESERVE_BYTES_DEFAULT,
        }
    }
}

/// A write command for [`Store::execute`]: each command is its own type (all of them are in [`cmd`]) and
/// names what its caller gets back once the batch holding it is committed. Sealed: only the store's commands
/// implement it.
pub trait Command: writer::Apply + fmt::Debug + Send + 'static {
    /// What a command that is applied and committed answers with.
    type Reply: fmt::Debug + Send + 'static;

    /// What the audit trail names as the command's target when its reply knows better than the request (the
    /// id of an order or a wave it created, the SKU a movement posted to).
    fn audit_target(_reply: &Self::Reply) -> Option<String> {
        None
    }
}

pub mod cmd {
    //! The write commands, one type each; [`Store::execute`] answers each with its [`Command::Reply`]:
    //! - [`PutCatalog`] → [`CatalogItem`]; [`Stock`] → [`LedgerEntry`]; [`Import`] → [`Imported`];
    //! - [`CreateOrder`] and [`AcceptAssignment`] → [`NewOrder`] (the order, and whether this call created it);
    //! - [`RejectAssignment`], [`ConfirmPicks`], [`Pack`], [`Ship`], [`Deliver`], [`Cancel`], [`Reaccept`],
    //!   [`ReceiveReturn`], [`Refund`] → the [`OrderRecord`] after the change;
    //! - [`CreateWave`] → [`Wave`]; [`EscrowSync`] → the SKUs whose escrow changed; [`EscrowTick`] →
    //!   [`EscrowTicked`]; [`Freeze`] → [`Frozen`]; [`SkipOrderIds`] → the next order number;
    //! - [`SetInbound`] → how many purchase orders were stored; [`ReceiveInbound`] → [`Received`];
    //! - [`SetRmas`] → how many returns (RMAs) were stored.
    //!
    //! [`Store::execute`]: super::Store::execute
    //! [`Command::Reply`]: super::Command::Reply
    //! [`CatalogItem`]: super::CatalogItem
    //! [`LedgerEntry`]: super::LedgerEntry
    //! [`Imported`]: super::Imported
    //! [`NewOrder`]: super::NewOrder
    //! [`OrderRecord`]: super::OrderRecord
    //! [`Wave`]: super::Wave
    //! [`EscrowTicked`]: super::EscrowTicked
    //! [`Frozen`]: super::Frozen
    //! [`Received`]: super::Received

    pub use super::consignments::{LabelAttempt, LabelFailed, LabelStored};
    pub use super::escrow::{EscrowSync, EscrowTick};
    pub use super::freeze::Freeze;
    pub use super::inbound::{ReceiveInbound, SetInbound};
    pub use super::manifests::{CloseManifest, Collect, VoidDone, VoidFailed, VoidLabel};
    pub use super::orders::{AcceptAssignment, Cancel, CreateOrder, Deliver, Pack, Reaccept, RejectAssignment, Ship};
    pub use super::restore::SkipOrderIds;
    pub use super::returns::{ReceiveReturn, Refund, SetRmas};
    pub use super::stock::{Import, PutCatalog, Stock};
    pub use super::waves::{ConfirmPicks, CreateWave};
}

/// Handle to the node's database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    tx: mpsc::Sender<Job>,
    site: NodeId,
    limits: Limits,
    writer: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
    committed: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Store {
    /// Opens (or creates) the database at `path` and starts the writer thread. A file of a newer format, or
    /// one redb finds damaged, is refused ([`oms_service::storage::OpenError`]); an older one is migrated
    /// after a copy (see `oms_service::storage::format`).
    pub fn open(path: &Path, site: NodeId, limits: Limits, metrics: Arc<Metrics>) -> Result<Store, StoreError> {
        let options = oms_service::storage::Options { cache_bytes: Some(limits.cache_bytes), faults: None };
        let opened = oms_service::storage::format::open(path, &NODE_FORMAT, &options)?;
        Self::start(path, opened, site, limits, metrics)
    }

    /// [`Store::open`] on another storage than the file at `path`, which then only names it (the power-loss
    /// tests run a store on `oms_service::storage::crash::CrashBackend`).
    pub fn open_on(
        path: &Path,
        backend: Box<dyn redb::StorageBackend>,
        site: NodeId,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> Result<Store, StoreError> {
        let options = oms_service::storage::Options { cache_bytes: Some(limits.cache_bytes), faults: None };
        let opened = oms_service::storage::format::open_on(path, backend, &NODE_FORMAT, &options)?;
        Self::start(path, opened, site, limits, metrics)
    }

    fn start(
        path: &Path,
        opened: oms_service::storage::Opened,
        site: NodeId,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> Result<Store, StoreError> {
        let db = opened.db;
        {
            let w = db.begin_write()?;
            for t in [
                CATALOG,
                BALANCES,
                ORDERS,
                IDEMPOTENCY,
                ESCROW,
                INBOUND,
                PO_RECEIPTS,
                RMAS,
                RMA_RECEIPTS,
                CONSIGNMENTS,
                LABELS,
                MANIFESTS,
            ] {
                w.open_table(t)?;
            }
            w.open_table(FROZEN)?;
            fill_freeze_queue(&w)?;
            w.open_table(LEDGER)?;
            w.open_table(LEDGER_BY_SKU)?;
            w.open_table(ORDERS_BY_STATE)?;
            w.open_table(CONSIGNMENTS_BY_STATE)?;
            w.open_table(IDEMPOTENCY_BY_TIME)?;
            w.open_table(WAVES)?;
            w.open_table(FEED)?;
            w.open_table(META)?;
            w.open_table(oms_service::audit::AUDIT)?;
            w.commit()?;
        }
        let (tx, rx) = mpsc::channel(limits.queue_max);
        let writer_db = db.clone();
        let data_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let writer_site = site.clone();
        let committed = Arc::new(tokio::sync::watch::Sender::new(0));
        let writer_committed = committed.clone();
        let writer = std::thread::Builder::new()
            .name("oms-writer".into())
            .spawn(move || writer_loop(writer_db, writer_site, rx, limits, metrics, writer_committed, data_dir))
            .map_err(|source| StorageError::Io { what: "starting the writer thread", source })?;
        let writer = Arc::new(std::sync::Mutex::new(Some(writer)));
        Ok(Store { db, tx, site, limits, writer, committed })
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

    /// The count of committed write batches, for any number of followers (the sync's feed follower, the
    /// event feed's long-polls), so they wake up promptly instead of polling: subscribe before reading, then
    /// `changed()` wakes at the first commit after the read, and no commit is missed.
    pub fn commit_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// This node's site id.
    pub fn site(&self) -> &NodeId {
        &self.site
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Sends `cmd` to the writer and waits until it is committed (or refused); answers with the command's
    /// own reply.
    pub async fn execute<C: Command>(&self, cmd: C) -> Result<C::Reply, StoreError> {
        self.execute_with(cmd, None).await
    }

    /// As [`Store::execute`], for a command an API caller asked for: its row in the audit trail (who, what,
    /// when, outcome) is committed in the same transaction as the change, or refused with it.
    pub async fn execute_audited<C: Command>(&self, cmd: C, audit: Audit) -> Result<C::Reply, StoreError> {
        self.execute_with(cmd, Some(audit)).await
    }

    /// [`Store::execute_audited`] with an audit row, [`Store::execute`] without.
    pub async fn execute_with<C: Command>(&self, cmd: C, audit: Option<Audit>) -> Result<C::Reply, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(writer::job(cmd, audit, reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => StoreError::ShuttingDown,
        })?;
        rx.await.map_err(|_| StoreError::ShuttingDown)?
    }
}

/// How long a caller waits for the writer before giving up on a request.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
