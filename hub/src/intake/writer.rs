//! The intake's writer: one thread takes the channel orders queued by [`Intake::submit`] in batches (at most
//! [`IntakeLimits::batch_max`] from a queue of at most [`IntakeLimits::queue_max`]; a caller past that gets
//! [`IntakeError::Overloaded`]), takes them in **one** `intake.redb` write transaction, commits it
//! (`Durability::Immediate`, one fsync), and only then answers each caller, as the node's store writer does.
//!
//! Within a batch every order is decided in queue order against what the orders before it did in the same
//! transaction: the idempotency records they wrote, the capacity they used, and the rights they consumed
//! (an overlay of changed escrow counters over the committed ones). So a batch decides exactly what the
//! same orders taken one by one would, and no unit is promised twice, within a batch or across batches
//! (the writer holds the intake's state lock from its first read to after the commit, as every other
//! intake write does).
//!
//! An order is read and decided before anything of it is written: a refusal (key reused, `cannot_fill`
//! under `reject`, a replay whose order is missing) writes only its audit row, and takes no order number. A
//! storage error, or a corrupt record met while writing, fails the whole batch: nothing is committed and
//! every caller in it gets the error.
//!
//! The sites' views are built once per batch ([`SiteSource`]), not once per order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use oms_protocol::domain::{OrderDraft, OrderId};
use oms_protocol::records::draft_sha256;
use oms_service::audit::{self, AUDIT, Actor};
use oms_service::auth::keys::token_hash;
use oms_service::storage::StorageError;
use oms_service::{lock, now_ms};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use super::*;

/// Bounds of the intake's writer (`[intake]` in the hub's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntakeLimits {
    /// Channel orders waiting for the writer; beyond this a `POST /v1/orders` is `503 overloaded`.
    pub queue_max: usize,
    /// Channel orders taken in one write transaction.
    pub batch_max: usize,
}

impl Default for IntakeLimits {
    fn default() -> Self {
        IntakeLimits { queue_max: 4_096, batch_max: 256 }
    }
}

impl IntakeLimits {
    /// Largest accepted `queue_max`.
    pub const QUEUE_MAX: usize = 1_000_000;
    /// Largest accepted `batch_max`.
    pub const BATCH_MAX: usize = 4_096;

    /// Why these bounds are not usable, if they are not.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=Self::QUEUE_MAX).contains(&self.queue_max) {
            return Err(format!("[intake] queue_max must be 1 ..= {}, not {}", Self::QUEUE_MAX, self.queue_max));
        }
        if !(1..=Self::BATCH_MAX).contains(&self.batch_max) {
            return Err(format!("[intake] batch_max must be 1 ..= {}, not {}", Self::BATCH_MAX, self.batch_max));
        }
        Ok(())
    }
}

/// What routing knows of every site at time `now_ms` (location, capacity, connection), asked once per
/// batch by the writer thread.
pub type SiteSource = Box<dyn Fn(u64) -> Vec<SiteFacts> + Send>;

/// One channel order for the writer: the caller's key, the validated order, its canonical hash, the caller.
pub(super) struct Create {
    key: String,
    draft: OrderDraft,
    hash: [u8; 32],
    actor: Actor,
}

impl Create {
    pub(super) fn new(key: String, draft: OrderDraft, actor: Actor) -> Result<Create, IntakeError> {
        let hash =
            draft_sha256(&draft).map_err(|e| IntakeError::Storage(Arc::new(StorageError::encode("an order", e))))?;
        Ok(Create { key, draft, hash, actor })
    }
}

struct Job {
    create: Create,
    reply: oneshot::Sender<Result<Placed, IntakeError>>,
}

/// The sending side of the writer's queue.
pub(super) struct Queue {
    tx: mpsc::Sender<Job>,
}

/// Write transactions of channel orders and the orders they held, for `/metrics` and the tests.
#[derive(Debug, Default)]
pub(super) struct BatchStats {
    commits: AtomicU64,
    orders: AtomicU64,
    largest: AtomicU64,
}

/// A snapshot of the writer's batches ([`Intake::batch_counts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchCounts {
    /// Write transactions of channel orders committed.
    pub commits: u64,
    /// Channel orders (created, replayed or refused) those transactions held.
    pub orders: u64,
    /// Most orders one of them held.
    pub largest: u64,
}

impl BatchStats {
    fn observe(&self, orders: usize) {
        let n = orders as u64;
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.orders.fetch_add(n, Ordering::Relaxed);
        self.largest.fetch_max(n, Ordering::Relaxed);
    }
}

impl Intake {
    /// Starts the writer thread, which asks `sites` for the sites' views once per batch. Later calls change
    /// nothing.
    pub fn start(&self, limits: IntakeLimits, sites: SiteSource) -> Result<(), IntakeError> {
        limits.check().map_err(|detail| IntakeError::Corrupt { table: "config", detail })?;
        if self.queue.get().is_some() {
            return Ok(());
        }
        let (tx, rx) = mpsc::channel(limits.queue_max);
        let core = self.core.clone();
        std::thread::Builder::new()
            .name("oms-intake".into())
            .spawn(move || writer_loop(&core, rx, limits.batch_max, &sites))
            .map_err(|source| {
                IntakeError::Storage(Arc::new(StorageError::Io { what: "starting the intake's writer", source }))
            })?;
        let _ = self.queue.set(Queue { tx });
        Ok(())
    }

    /// Takes a channel order for `actor` through the writer (see the module docs of `writer`): answered once
    /// the batch that holds it is committed, with what [`Intake::place`] would answer.
    pub async fn submit(&self, key: String, draft: OrderDraft, actor: Actor) -> Result<Placed, IntakeError> {
        let create = Create::new(key, draft, actor)?;
        let queue = self.queue.get().ok_or(IntakeError::ShuttingDown)?;
        let (reply, answer) = oneshot::channel();
        queue.tx.try_send(Job { create, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => IntakeError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => IntakeError::ShuttingDown,
        })?;
        answer.await.map_err(|_| IntakeError::ShuttingDown)?
    }

    /// The writer's batches so far.
    pub fn batch_counts(&self) -> BatchCounts {
        let s = &self.core.stats;
        BatchCounts {
            commits: s.commits.load(Ordering::Relaxed),
            orders: s.orders.load(Ordering::Relaxed),
            largest: s.largest.load(Ordering::Relaxed),
        }
    }
}

/// The writer thread: takes up to `batch_max` queued orders, takes them in one transaction, commits, then
/// answers every caller (each its own result, or all of them the batch's error). Ends when every sender is
/// gone.
fn writer_loop(core: &Core, mut rx: mpsc::Receiver<Job>, batch_max: usize, sites: &SiteSource) {
    let mut batch: Vec<Job> = Vec::with_capacity(batch_max);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let now = now_ms();
        let facts = sites(now);
        let (creates, replies): (Vec<Create>, Vec<_>) = batch.drain(..).map(|j| (j.create, j.reply)).unzip();
        let n = creates.len();
        match core.place_batch(creates, &facts, now) {
            Ok(results) => {
                for (reply, r) in replies.into_iter().zip(results) {
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, orders = n, "intake write transaction failed; batch refused");
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
    tracing::debug!("intake writer stopped");
}

/// Whether `e`, met while deciding an order, fails its whole batch (the database failed) rather than only
/// that order.
fn fails_batch(e: &IntakeError) -> bool {
    matches!(e, IntakeError::Storage(_))
}

/// An order's own refusal, or its batch's failure, from an error met while deciding it (before it wrote).
fn own(e: IntakeError) -> Result<Result<Placed, IntakeError>, IntakeError> {
    if fails_batch(&e) { Err(e) } else { Ok(Err(e)) }
}

impl Core {
    /// Takes `jobs` in one write transaction, in order, each against what those before it wrote (see the
    /// module docs), and commits. The outer error is the batch's (nothing committed); otherwise one result
    /// per job, in order.
    pub(super) fn place_batch(
        &self,
        jobs: Vec<Create>,
        sites: &[SiteFacts],
        now_ms: u64,
    ) -> Result<Vec<Result<Placed, IntakeError>>, IntakeError> {
        let n = jobs.len();
        let mut st = lock(&self.state);
        let w = self.db.begin_write()?;
        let mut overlay = Overlay::new();
        let seq0 = w.open_table(META)?.get(SEQ_ORDER)?.map(|v| v.value()).unwrap_or(0);
        let mut seq = seq0;
        let mut out = Vec::with_capacity(n);
        for job in jobs {
            out.push(self.take(&st, &mut overlay, &w, &mut seq, job, sites, now_ms)?);
        }
        if seq != seq0 {
            w.open_table(META)?.insert(SEQ_ORDER, seq)?;
        }
        write_escrow_rows(&w, &overlay)?;
        prune_idempotency(&w, now_ms.saturating_sub(IDEMPOTENCY_RETENTION_MS))?;
        w.commit()?;
        st.escrow.extend(overlay);
        for p in out.iter().flatten() {
            if p.created && p.order.wants_routing() {
                st.open.insert(p.order.id.to_string());
            }
        }
        drop(st);
        self.stats.observe(n);
        Ok(out)
    }

    /// Decides one order of a batch, then writes it. `seq` is the last order number taken in `w`.
    #[allow(clippy::too_many_arguments)]
    fn take(
        &self,
        st: &State,
        overlay: &mut Overlay,
        w: &redb::WriteTransaction,
        seq: &mut u64,
        job: Create,
        sites: &[SiteFacts],
        now_ms: u64,
    ) -> Result<Result<Placed, IntakeError>, IntakeError> {
        let Create { key, draft, hash, actor } = job;
        let seen = match Self::seen(w, &draft.channel, &key, &hash) {
            Ok(s) => s,
            Err(e) => return own(e),
        };
        match seen {
            Seen::New => {}
            Seen::Replay(id) => {
                let order = match get_order(&w.open_table(ORDERS)?, &id) {
                    Ok(Some(o)) => o,
                    Ok(None) => return Ok(Err(IntakeError::NotFound(id))),
                    Err(e) => return own(e),
                };
                audit::append(&mut w.open_table(AUDIT)?, &actor, Some(order.id.as_str()), now_ms, "ok")?;
                return Ok(Ok(Placed { order, created: false, effects: Effects::default() }));
            }
            Seen::Reused(id) => {
                let e = IntakeError::KeyReused(key);
                audit::append(&mut w.open_table(AUDIT)?, &actor, Some(&id), now_ms, e.code())?;
                return Ok(Err(e));
            }
        }
        let id = OrderId::new(&hub_node(), *seq + 1);
        let mut unfilled = Vec::new();
        add_units(
            &mut unfilled,
            &draft.lines.iter().map(|l| SkuQty { sku: l.sku.clone(), qty: l.qty }).collect::<Vec<_>>(),
        );
        let token = new_tracking_token();
        let mut order = HubOrder {
            id,
            draft,
            created_at_ms: now_ms,
            fulfillments: Vec::new(),
            unfilled,
            decisions: Vec::new(),
            cancel_requested_at_ms: None,
            cancelled_unfilled: Vec::new(),
            cancel_reason: None,
            tracking_token: Some(token.clone()),
        };
        let decision = match self.plan(st, overlay, w, &order, sites, &BTreeSet::new(), now_ms) {
            Ok(d) => d,
            Err(e) => return own(e),
        };
        if decision.outcome == Outcome::Rejected {
            // Nothing of the order is written and its number is not taken; only the attempt is recorded.
            let e = IntakeError::CannotFill(Box::new(decision));
            audit::append(&mut w.open_table(AUDIT)?, &actor, None, now_ms, e.code())?;
            return Ok(Err(e));
        }
        // From here on the order writes: any error fails the batch, so nothing of it is half-written.
        *seq += 1;
        let mut effects = Effects::default();
        Self::record(st, overlay, w, &mut order, decision, "intake".into(), now_ms, &mut effects)?;
        Self::put_order(w, &order)?;
        let scoped = scoped_key(&order.draft.channel, &key);
        let idem = IdemRecord { body_sha256: hash, order: order.id.to_string() };
        w.open_table(IDEM)?.insert(scoped.as_str(), postcard_enc(&idem)?.as_slice())?;
        w.open_table(IDEM_BY_TIME)?.insert((now_ms, scoped.as_str()), ())?;
        w.open_table(TRACKING)?.insert(token_hash(&token).as_slice(), order.id.as_str())?;
        w.open_table(BY_CHANNEL)?.insert(channel_key(&order.draft.channel, order.id.as_str()).as_str(), ())?;
        audit::append(&mut w.open_table(AUDIT)?, &actor, Some(order.id.as_str()), now_ms, "ok")?;
        Ok(Ok(Placed { order, created: true, effects }))
    }
}
