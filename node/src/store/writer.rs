//! The writer thread: it takes queued commands in batches, applies each batch inside one write transaction
//! ([`Tx`], the open tables plus counters cached for the transaction), commits it, and only then answers the
//! callers. A storage error refuses the whole batch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use oms_service::now_ms;

use oms_protocol::domain::NodeId;
use redb::{Database, ReadableTable};
use tokio::sync::{mpsc, oneshot};

use super::tables::*;
use super::{Command, FeedEntry, Limits, StoreError};
use crate::metrics::Metrics;

/// Idempotency records forgotten per write transaction, at most.
pub use oms_protocol::records::IDEMPOTENCY_PRUNE_MAX;

/// How a command changes the store inside its batch's transaction: the handler behind every [`Command`].
/// Nominally public so that [`Command`] can require it; nothing outside the store can name it, so the store's
/// commands are the only ones.
pub trait Apply {
    /// Applies the command in `tx`. Validates everything before its first write: a refusal leaves no trace in
    /// the shared transaction. A [`StoreError::Storage`] aborts the whole batch.
    fn apply(self, tx: &mut Tx<'_>, limits: &Limits) -> Result<<Self as Command>::Reply, StoreError>
    where
        Self: Command;
}

/// A command in the writer's queue, with the sender its caller waits on.
pub(super) type Job = Box<dyn Queued>;

/// Queues `cmd`; its caller waits on `reply`. With `audit`, the command's row in the audit trail is appended
/// in the same transaction, whatever its outcome (a storage error aborts both).
pub(super) fn job<C: Command>(
    cmd: C,
    audit: Option<Audit>,
    reply: oneshot::Sender<Result<C::Reply, StoreError>>,
) -> Job {
    Box::new(Pending { cmd, audit, reply })
}

/// Who asked for a command over the API, and what it targets as far as the request says (an order id from
/// the path); the command's reply may name the target instead ([`Command::audit_target`]).
#[derive(Debug, Clone)]
pub struct Audit {
    /// The admitted caller and route.
    pub actor: oms_service::audit::Actor,
    /// The target named by the request, if any.
    pub target: Option<String>,
}

/// A queued command, whatever its type: applied in its batch, or refused with the batch before its turn.
pub(super) trait Queued: Send {
    /// Applies the command in `tx`; its result waits in the returned [`Answer`] until the batch is decided.
    fn apply(self: Box<Self>, tx: &mut Tx<'_>, limits: &Limits) -> Box<dyn Answer>;
    /// Answers `e` without applying the command: its batch failed before the command's turn.
    fn refuse(self: Box<Self>, e: StoreError);
}

/// The result of an applied command, held until its batch commits or fails.
pub(super) trait Answer: Send {
    /// The storage error the command hit, if any: it aborts the batch.
    fn storage_error(&self) -> Option<StoreError>;
    /// Answers the caller: the command's result once the batch committed, the batch's error if it failed.
    fn send(self: Box<Self>, batch: Result<(), &StoreError>);
}

struct Pending<C: Command> {
    cmd: C,
    audit: Option<Audit>,
    reply: oneshot::Sender<Result<C::Reply, StoreError>>,
}

impl<C: Command> Queued for Pending<C> {
    fn apply(self: Box<Self>, tx: &mut Tx<'_>, limits: &Limits) -> Box<dyn Answer> {
        let Pending { cmd, audit, reply } = *self;
        let mut result = cmd.apply(tx, limits);
        if let Some(a) = audit
            && !matches!(result, Err(StoreError::Storage(_)))
        {
            let target = result.as_ref().ok().and_then(C::audit_target).or(a.target);
            let outcome = match &result {
                Ok(_) => "ok",
                Err(e) => e.code(),
            };
            if let Err(e) = oms_service::audit::append(&mut tx.audit, &a.actor, target.as_deref(), tx.now_ms, outcome) {
                // The row could not be written: the batch fails, and with it the change the row records.
                result = Err(StoreError::from(e));
            }
        }
        Box::new(Done { result, reply })
    }

    fn refuse(self: Box<Self>, e: StoreError) {
        let _ = self.reply.send(Err(e));
    }
}

struct Done<R> {
    result: Result<R, StoreError>,
    reply: oneshot::Sender<Result<R, StoreError>>,
}

impl<R: Send + 'static> Answer for Done<R> {
    fn storage_error(&self) -> Option<StoreError> {
        match &self.result {
            Err(e @ StoreError::Storage(_)) => Some(e.clone()),
            _ => None,
        }
    }

    fn send(self: Box<Self>, batch: Result<(), &StoreError>) {
        let _ = self.reply.send(match batch {
            Ok(()) => self.result,
            Err(e) => Err(e.clone()),
        });
    }
}

/// The writer thread: takes up to `batch_max` queued commands, applies them in one transaction, commits, and
/// then answers every caller (each its command's result, or all of them the batch's storage error).
pub(super) fn writer_loop(
    db: Arc<Database>,
    site: NodeId,
    mut rx: mpsc::Receiver<Job>,
    limits: Limits,
    metrics: Arc<Metrics>,
    committed: Arc<tokio::sync::watch::Sender<u64>>,
    data_dir: std::path::PathBuf,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(limits.batch_max);
    let mut full = false;
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < limits.batch_max {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let jobs = batch.len();
        let started = Instant::now();
        let (answers, outcome) = match space_left(&data_dir, limits.storage_reserve_bytes) {
            Ok(()) => apply_batch(&db, &site, &limits, &mut batch),
            Err(e) => {
                for job in batch.drain(..) {
                    job.refuse(e.clone());
                }
                (Vec::new(), Err(e))
            }
        };
        metrics.observe_commit(started.elapsed(), jobs);
        match &outcome {
            Ok(()) => committed.send_modify(|n| *n = n.wrapping_add(1)),
            // Logged when the disk fills and when it has room again, not at every refused batch.
            Err(e @ StoreError::InsufficientStorage { .. }) => {
                if !full {
                    tracing::error!(error = %e, "disk nearly full: writes are refused until space returns");
                }
            }
            Err(e) => tracing::error!(error = %e, jobs, "write transaction failed; batch refused"),
        }
        let now_full = matches!(outcome, Err(StoreError::InsufficientStorage { .. }));
        if full && !now_full {
            tracing::warn!("disk space is back above the reserve: writes resume");
        }
        full = now_full;
        for answer in answers {
            answer.send(outcome.as_ref().copied());
        }
    }
    tracing::debug!("writer stopped");
}

/// Refuses a batch before it touches the file when the file system has less than `reserve` bytes free.
fn space_left(dir: &std::path::Path, reserve: u64) -> Result<(), StoreError> {
    if reserve == 0 {
        return Ok(());
    }
    match oms_service::storage::free_bytes(dir) {
        Ok(free) if free < reserve => Err(StoreError::InsufficientStorage { free_bytes: free, reserve_bytes: reserve }),
        // A file system that cannot say leaves the check to the write itself.
        _ => Ok(()),
    }
}

/// Applies the commands of `batch` (emptying it) in one write transaction and commits it. Returns the answers of
/// the commands applied and how the batch ended. The first storage error ends it: nothing is committed, the
/// commands not yet applied are refused here with that error, and the caller sends it to the others.
fn apply_batch(
    db: &Database,
    site: &NodeId,
    limits: &Limits,
    batch: &mut Vec<Job>,
) -> (Vec<Box<dyn Answer>>, Result<(), StoreError>) {
    let mut answers = Vec::with_capacity(batch.len());
    let mut queued = batch.drain(..);
    let outcome = commit_batch(db, site, limits, &mut queued, &mut answers);
    if let Err(e) = &outcome {
        for job in queued {
            job.refuse(e.clone());
        }
    }
    (answers, outcome)
}

fn commit_batch(
    db: &Database,
    site: &NodeId,
    limits: &Limits,
    queued: &mut impl Iterator<Item = Job>,
    answers: &mut Vec<Box<dyn Answer>>,
) -> Result<(), StoreError> {
    let w = db.begin_write()?;
    {
        let mut tx = Tx::open(&w, site, now_ms())?;
        for job in queued {
            let answer = job.apply(&mut tx, limits);
            let failed = answer.storage_error();
            answers.push(answer);
            if let Some(e) = failed {
                return Err(e);
            }
        }
        tx.prune_idempotency(limits.idempotency_retention_ms)?;
        tx.flush_counters()?;
    }
    w.commit()?;
    Ok(())
}

/// The open tables of one write transaction, plus counters cached for its duration. Nominally public because
/// [`Apply`] names it; nothing outside the store can.
pub struct Tx<'w> {
    pub(super) site: &'w NodeId,
    pub(super) now_ms: u64,
    pub(super) catalog: redb::Table<'w, &'static str, &'static [u8]>,
    pub(super) balances: redb::Table<'w, &'static str, &'static [u8]>,
    pub(super) ledger: redb::Table<'w, u64, &'static [u8]>,
    pub(super) ledger_by_sku: redb::Table<'w, (&'static str, u64), ()>,
    pub(super) orders: redb::Table<'w, &'static str, &'static [u8]>,
    pub(super) by_state: redb::Table<'w, (u8, &'static str), ()>,
    pub(super) waves: redb::Table<'w, u64, &'static [u8]>,
    pub(super) idem: redb::Table<'w, &'static str, &'static [u8]>,
    pub(super) idem_by_time: redb::Table<'w, (u64, &'static str), ()>,
    pub(super) feed: redb::Table<'w, u64, &'static [u8]>,
    pub(super) meta: redb::Table<'w, &'static str, u64>,
    pub(super) escrow: redb::Table<'w, &'static str, &'static [u8]>,
    pub(super) frozen: redb::Table<'w, &'static str, u64>,
    pub(super) freeze_queue: redb::Table<'w, &'static str, u64>,
    pub(super) audit: redb::Table<'w, u64, &'static [u8]>,
    pub(super) inbound: redb::Table<'w, &'static str, &'static [u8]>,
    pub(super) po_receipts: redb::Table<'w, &'static str, &'static [u8]>,
    pub(super) rmas: redb::Table<'w, &'static str, &'static [u8]>,
    pub(super) rma_receipts: redb::Table<'w, &'static str, &'static [u8]>,
    pub(super) consignments: redb::Table<'w, &'static str, &'static [u8]>,
    pub(super) consignments_by_state: redb::Table<'w, (u8, &'static str), ()>,
    pub(super) labels: redb::Table<'w, &'static str, &'static [u8]>,
    pub(super) manifests: redb::Table<'w, &'static str, &'static [u8]>,
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
            audit: w.open_table(oms_service::audit::AUDIT)?,
            inbound: w.open_table(INBOUND)?,
            po_receipts: w.open_table(PO_RECEIPTS)?,
            rmas: w.open_table(RMAS)?,
            rma_receipts: w.open_table(RMA_RECEIPTS)?,
            consignments: w.open_table(CONSIGNMENTS)?,
            consignments_by_state: w.open_table(CONSIGNMENTS_BY_STATE)?,
            labels: w.open_table(LABELS)?,
            manifests: w.open_table(MANIFESTS)?,
            counters: BTreeMap::new(),
        })
    }

    pub(super) fn counter(&mut self, name: &str) -> Result<u64, StoreError> {
        if let Some(v) = self.counters.get(name) {
            return Ok(*v);
        }
        let v = self.meta.get(name)?.map(|v| v.value()).unwrap_or(0);
        self.counters.insert(name.to_owned(), v);
        Ok(v)
    }

    pub(super) fn bump(&mut self, name: &str, delta: i64) -> Result<u64, StoreError> {
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

    pub(super) fn feed_push(&mut self, e: FeedEntry) -> Result<(), StoreError> {
        let seq = self.bump(SEQ_FEED, 1)?;
        self.feed.insert(seq, enc(&e)?.as_slice())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc as std_mpsc;

    use oms_protocol::domain::{Movement, Sku};

    use super::*;
    use crate::store::{CatalogItem, StorageError, Store, cmd};
    use crate::test_support::store_with_catalog;

    /// Holds the writer inside its batch until released, so that the commands queued meanwhile share the
    /// next batch.
    #[derive(Debug)]
    struct Gate {
        entered: oneshot::Sender<()>,
        release: std_mpsc::Receiver<()>,
    }

    impl Command for Gate {
        type Reply = ();
    }

    impl Apply for Gate {
        fn apply(self, _: &mut Tx<'_>, _: &Limits) -> Result<(), StoreError> {
            let _ = self.entered.send(());
            let _ = self.release.recv();
            Ok(())
        }
    }

    /// Writes a catalog item, then fails the way a disk does.
    #[derive(Debug)]
    struct DiskFails(CatalogItem);

    impl Command for DiskFails {
        type Reply = ();
    }

    impl Apply for DiskFails {
        fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<(), StoreError> {
            tx.catalog.insert(self.0.sku.as_str(), enc(&self.0)?.as_slice())?;
            Err(StorageError::Io { what: "writing", source: std::io::Error::other("disk on fire") }.into())
        }
    }

    fn item(sku: &str) -> CatalogItem {
        CatalogItem { sku: Sku::parse(sku).unwrap(), name: sku.into(), bin: "A-1".into() }
    }

    /// Holds the writer (see [`Gate`]); send on the returned channel to let it go.
    async fn hold(store: &Store) -> std_mpsc::Sender<()> {
        let (entered, inside) = oneshot::channel();
        let (go, release) = std_mpsc::channel();
        let s = store.clone();
        tokio::spawn(async move { s.execute(Gate { entered, release }).await.unwrap() });
        inside.await.unwrap();
        go
    }

    /// Waits until `n` commands are queued behind the held writer.
    async fn queued(store: &Store, n: usize) {
        while store.limits.queue_max - store.tx.capacity() < n {
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn a_refusal_leaves_its_batch_alone_and_a_storage_error_refuses_all_of_it() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = store_with_catalog(dir.path(), &[]).await;
            let put = |sku: &str| {
                let s = store.clone();
                let item = item(sku);
                tokio::spawn(async move { s.execute(cmd::PutCatalog(item)).await })
            };

            // One batch: two catalog items and a receipt for a SKU not in the catalog.
            let go = hold(&store).await;
            let (b, c) = (put("B"), put("C"));
            let s = store.clone();
            let unknown = Movement::Receipt { qty: 1, note: None };
            let z = tokio::spawn(async move {
                s.execute(cmd::Stock { sku: Sku::parse("Z").unwrap(), movement: unknown }).await
            });
            queued(&store, 3).await;
            go.send(()).unwrap();
            assert_eq!(b.await.unwrap().unwrap(), item("B"));
            assert_eq!(c.await.unwrap().unwrap(), item("C"));
            assert!(matches!(z.await.unwrap(), Err(StoreError::UnknownSku(_))));
            assert!(store.catalog_item(&item("B").sku).unwrap().is_some());
            assert!(store.catalog_item(&item("C").sku).unwrap().is_some());

            // One batch: two catalog items and a command that hits a storage error after a write.
            let go = hold(&store).await;
            let (d, e) = (put("D"), put("E"));
            let s = store.clone();
            let x = tokio::spawn(async move { s.execute(DiskFails(item("X"))).await });
            queued(&store, 3).await;
            go.send(()).unwrap();
            for r in [d.await.unwrap().map(|_| ()), e.await.unwrap().map(|_| ()), x.await.unwrap()] {
                assert!(matches!(&r, Err(StoreError::Storage(e)) if e.to_string().contains("disk on fire")), "{r:?}");
            }
            for sku in ["D", "E", "X"] {
                assert_eq!(store.catalog_item(&item(sku).sku).unwrap(), None, "{sku} was not committed");
            }
            // The writer goes on.
            assert_eq!(put("F").await.unwrap().unwrap(), item("F"));
            store.close();
        });
    }
}
