//! The writer thread: it takes queued commands in batches, applies each batch inside one write transaction
//! ([`Tx`], the open tables plus counters cached for the transaction), commits it, and only then answers the
//! callers. A storage error refuses the whole batch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use oms_protocol::domain::NodeId;
use redb::{Database, ReadableTable};
use tokio::sync::{mpsc, oneshot};

use super::freeze::FREEZE_ORDERS_MAX;
use super::tables::*;
use super::{Command, FeedEntry, Limits, Outcome, StoreError};
use crate::metrics::Metrics;

/// Idempotency records forgotten per write transaction, at most.
pub const IDEMPOTENCY_PRUNE_MAX: usize = 64;

/// A queued command and the channel its caller waits on.
pub(super) struct Job {
    pub(super) cmd: Command,
    pub(super) reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The writer thread: takes up to `batch_max` queued jobs, applies them in one transaction, commits, answers.
pub(super) fn writer_loop(
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
pub(super) struct Tx<'w> {
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

    pub(super) fn apply(&mut self, cmd: Command, limits: &Limits) -> Result<Outcome, StoreError> {
        match cmd {
            Command::PutCatalog(item) => self.put_catalog(item),
            Command::Stock { sku, movement } => self.stock(sku, movement),
            Command::CreateOrder { key, draft } => self.create_order(key, *draft),
            Command::CreateWave { orders_max } => self.create_wave(orders_max.clamp(1, limits.wave_orders_max)),
            Command::ConfirmPicks { order, lines } => self.confirm_picks(order, lines),
            Command::Pack { order, parcels } => self.pack(order, parcels),
            Command::Ship { order, carrier, tracking } => self.ship(order, carrier, tracking),
            Command::Deliver { order } => self.deliver(order),
            Command::Cancel { order, reason } => self.cancel(order, reason),
            Command::Reaccept { order } => self.reaccept(order),
            Command::ReceiveReturn { order, lines, disposition } => self.receive_return(order, lines, disposition),
            Command::Refund { order, return_id } => self.refund(order, return_id),
            Command::AcceptAssignment { id, draft, assigned_at_ms, auto_accept } => {
                self.accept_assignment(id, *draft, assigned_at_ms, auto_accept)
            }
            Command::RejectAssignment { order, reason } => self.reject_assignment(order, reason),
            Command::EscrowSync { hub, policy } => self.escrow_sync(hub, &policy),
            Command::EscrowTick { hub_reachable, policy, skus_max, after } => {
                self.escrow_tick(hub_reachable, &policy, skus_max.clamp(1, limits.escrow_tick_skus_max), after)
            }
            Command::Freeze { return_window_ms, orders_max, after } => {
                self.freeze(return_window_ms, orders_max.clamp(1, FREEZE_ORDERS_MAX), after)
            }
            Command::Import { catalog, counts } => self.import(catalog, counts),
        }
    }
}
