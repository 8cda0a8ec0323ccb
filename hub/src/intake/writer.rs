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
//!
//! With an [`EffectsSink`], a second thread (`oms-intake-docs`) takes each committed batch, writes what its
//! orders created into the hub's documents (fulfillment documents, escrow views) with one call for every
//! batch waiting (at most [`DOCS_BATCHES_MAX`] batches, [`DOCS_QUEUE_MAX`] queued), and only then answers
//! the batch's callers. The writer meanwhile takes the next batch: the commit of one batch and the documents of
//! the one before run side by side, and the documents' lock, which every sync session needs, is taken once
//! per round instead of once per order. If the sink fails, the callers are answered with `written: false`
//! and write the documents themselves (and answer the error if that fails too).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use oms_protocol::domain::{OrderDraft, OrderId};
use oms_protocol::records::draft_sha256;
use oms_service::audit::Actor;
use oms_service::auth::keys::token_hash;
use oms_service::storage::StorageError;
use oms_service::{lock, now_ms};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use super::*;

/// Bounds of the intake's writer (`[intake]` in the hub's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntakeLimits {
    /// Channel orders waiting for the writer; beyond this a `POST /v1/orders` is `503 overloaded`.
    pub queue_max: usize,
    /// Channel orders taken in one write transaction.
    pub batch_max: usize,
    /// Bytes of `intake.redb` pages kept in memory (redb's cache, read and written pages alike). redb's own
    /// default is 1 GiB, which a busy hub fills: its memory grew by ≈ 7 KB per channel order until it did.
    pub cache_bytes: usize,
}

impl Default for IntakeLimits {
    fn default() -> Self {
        IntakeLimits { queue_max: 4_096, batch_max: 256, cache_bytes: Self::CACHE_BYTES_DEFAULT }
    }
}

impl IntakeLimits {
    /// Largest accepted `queue_max`.
    pub const QUEUE_MAX: usize = 1_000_000;
    /// Largest accepted `batch_max`.
    pub const BATCH_MAX: usize = 4_096;
    /// Default `cache_bytes`: as the documents' `hub.redb` and a node's files.
    pub const CACHE_BYTES_DEFAULT: usize = 64 << 20;
    /// Accepted `cache_bytes`.
    pub const CACHE_BYTES: std::ops::RangeInclusive<usize> = (1 << 20)..=(64 << 30);

    /// Why these bounds are not usable, if they are not.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=Self::QUEUE_MAX).contains(&self.queue_max) {
            return Err(format!("[intake] queue_max must be 1 ..= {}, not {}", Self::QUEUE_MAX, self.queue_max));
        }
        if !(1..=Self::BATCH_MAX).contains(&self.batch_max) {
            return Err(format!("[intake] batch_max must be 1 ..= {}, not {}", Self::BATCH_MAX, self.batch_max));
        }
        if !Self::CACHE_BYTES.contains(&self.cache_bytes) {
            return Err(format!(
                "[intake] cache_bytes must be {} ..= {}, not {}",
                Self::CACHE_BYTES.start(),
                Self::CACHE_BYTES.end(),
                self.cache_bytes
            ));
        }
        Ok(())
    }
}

/// What routing knows of every site at time `now_ms` (location, capacity, connection), asked once per
/// batch by the writer thread.
pub type SiteSource = Box<dyn FnMut(u64) -> Vec<SiteFacts> + Send>;

/// Writes what committed orders created into the hub's documents, on the intake's documents thread (see the
/// module docs), before their callers are answered. The error is logged; the callers then write themselves.
pub type EffectsSink = Box<dyn FnMut(&[&Effects]) -> Result<(), String> + Send>;

/// Committed batches waiting for the documents thread; the writer waits for room beyond this (so a slow
/// sink slows the intake down rather than queueing without bound).
pub const DOCS_QUEUE_MAX: usize = 64;
/// Committed batches the documents thread writes with one call of the sink.
pub const DOCS_BATCHES_MAX: usize = 16;

/// One channel order for the writer: the caller's key, the validated order, its canonical hash, the caller.
pub(super) struct Create {
    key: String,
    draft: OrderDraft,
    hash: [u8; 32],
    actor: Actor,
    /// The order's payment, authorized before it was queued (see [`crate::money`]).
    payment: Option<crate::money::Prepared>,
}

impl Create {
    pub(super) fn new(key: String, draft: OrderDraft, actor: Actor) -> Result<Create, IntakeError> {
        let hash = body_hash(&draft)?;
        Ok(Create { key, draft, hash, actor, payment: None })
    }
}

/// The canonical hash of an order body, as idempotency compares bodies.
pub fn body_hash(draft: &OrderDraft) -> Result<[u8; 32], IntakeError> {
    draft_sha256(draft).map_err(|e| IntakeError::Storage(Arc::new(StorageError::encode("an order", e))))
}

/// The hash idempotency compares for an order with a `payment`: the order's own hash and the payment's
/// method, provider and token, so the same key with another payment (another card, terms instead of COD, or
/// none) is `409 idempotency_key_reused`, as a changed order is. An order without a payment keeps the
/// order's hash alone, so keys stored before payments existed still replay.
pub(super) fn paid_body_hash(order_hash: &[u8; 32], p: &crate::money::Payment) -> [u8; 32] {
    let payment = serde_json::json!([p.method, p.provider, p.token]);
    token_hash(&format!("{}\u{1f}payment\u{1f}{payment}", oms_service::auth::keys::hex(order_hash)))
}

/// Where a queued order's answer arrives.
type Answer = oneshot::Receiver<Result<Placed, IntakeError>>;

struct Job {
    create: Create,
    reply: Reply,
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
    /// Rounds of the documents thread that wrote documents, the created orders they wrote, and the orders
    /// whose callers had to write (the sink failed).
    doc_rounds: AtomicU64,
    doc_orders: AtomicU64,
    doc_fallbacks: AtomicU64,
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
    /// Rounds of the intake's documents thread that wrote the documents of created orders.
    pub document_rounds: u64,
    /// Created orders whose documents those rounds wrote.
    pub document_orders: u64,
    /// Created orders whose documents the round could not write, left to their callers (0 unless a document
    /// write failed).
    pub document_fallbacks: u64,
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
    /// Starts the writer thread, which asks `sites` for the sites' views once per batch, and with `effects`
    /// the documents thread (see the module docs). Later calls change nothing. Bounds outside
    /// [`IntakeLimits::check`]'s ranges are clamped into them (the configuration is checked when it is read).
    pub fn start(
        &self,
        limits: IntakeLimits,
        sites: SiteSource,
        effects: Option<EffectsSink>,
    ) -> Result<(), IntakeError> {
        let limits = IntakeLimits {
            queue_max: limits.queue_max.clamp(1, IntakeLimits::QUEUE_MAX),
            batch_max: limits.batch_max.clamp(1, IntakeLimits::BATCH_MAX),
            ..limits
        };
        if self.queue.get().is_some() {
            return Ok(());
        }
        let (tx, rx) = mpsc::channel(limits.queue_max);
        let core = self.core.clone();
        let spawn_failed =
            |source| IntakeError::Storage(Arc::new(StorageError::Io { what: "starting the intake's writer", source }));
        let answers = match effects {
            Some(sink) => {
                let (done_tx, done_rx) = std::sync::mpsc::sync_channel(DOCS_QUEUE_MAX);
                let docs_core = self.core.clone();
                std::thread::Builder::new()
                    .name("oms-intake-docs".into())
                    .spawn(move || docs_loop(&docs_core.stats, &done_rx, sink))
                    .map_err(spawn_failed)?;
                Answers::Docs(done_tx)
            }
            None => Answers::Direct,
        };
        std::thread::Builder::new()
            .name("oms-intake".into())
            .spawn(move || writer_loop(&core, rx, limits.batch_max, sites, &answers))
            .map_err(spawn_failed)?;
        let _ = self.queue.set(Queue { tx });
        Ok(())
    }

    /// Takes a channel order for `actor` through the writer (see the module docs of `writer`): answered once
    /// the batch that holds it is committed, with what [`Intake::place`] would answer.
    pub async fn submit(&self, key: String, draft: OrderDraft, actor: Actor) -> Result<Placed, IntakeError> {
        self.submit_paid(key, draft, actor, None).await
    }

    /// [`Intake::submit`] for an order whose `payment` was authorized: the payment record is written in the
    /// order's transaction (and its authorization attempt forgotten there), only if the order is created.
    pub async fn submit_paid(
        &self,
        key: String,
        draft: OrderDraft,
        actor: Actor,
        payment: Option<crate::money::Prepared>,
    ) -> Result<Placed, IntakeError> {
        let mut create = Create::new(key, draft, actor)?;
        if let Some(p) = &payment {
            create.hash = paid_body_hash(&create.hash, &p.payment);
        }
        create.payment = payment;
        let answer = self.enqueue_create(create)?;
        answer.await.map_err(|_| IntakeError::ShuttingDown)?
    }

    /// Queues a channel order for the writer without waiting: the answer arrives on the returned receiver.
    /// Orders queued one after another are taken in that order.
    #[cfg(test)]
    fn enqueue(&self, key: String, draft: OrderDraft, actor: Actor) -> Result<Answer, IntakeError> {
        self.enqueue_create(Create::new(key, draft, actor)?)
    }

    fn enqueue_create(&self, create: Create) -> Result<Answer, IntakeError> {
        let queue = self.queue.get().ok_or(IntakeError::ShuttingDown)?;
        let (reply, answer) = oneshot::channel();
        queue.tx.try_send(Job { create, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => IntakeError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => IntakeError::ShuttingDown,
        })?;
        Ok(answer)
    }

    /// The writer's batches so far.
    pub fn batch_counts(&self) -> BatchCounts {
        let s = &self.core.stats;
        BatchCounts {
            commits: s.commits.load(Ordering::Relaxed),
            orders: s.orders.load(Ordering::Relaxed),
            largest: s.largest.load(Ordering::Relaxed),
            document_rounds: s.doc_rounds.load(Ordering::Relaxed),
            document_orders: s.doc_orders.load(Ordering::Relaxed),
            document_fallbacks: s.doc_fallbacks.load(Ordering::Relaxed),
        }
    }
}

/// One caller's answer channel.
type Reply = oneshot::Sender<Result<Placed, IntakeError>>;

/// A committed batch on its way to the documents thread: each caller's result and answer channel.
type Committed = Vec<(Result<Placed, IntakeError>, Reply)>;

/// Where the writer sends a committed batch's results.
enum Answers {
    /// Straight to the callers (no sink).
    Direct,
    /// Through the documents thread.
    Docs(std::sync::mpsc::SyncSender<Committed>),
}

impl Answers {
    fn send(&self, committed: Committed) {
        match self {
            Answers::Direct => answer(committed),
            Answers::Docs(tx) => {
                if let Err(std::sync::mpsc::SendError(committed)) = tx.send(committed) {
                    // The documents thread is gone (it only ends with the process): the callers write.
                    answer(committed);
                }
            }
        }
    }
}

fn answer(committed: Committed) {
    for (r, reply) in committed {
        let _ = reply.send(r);
    }
}

/// The documents thread: takes every committed batch waiting (at most [`DOCS_BATCHES_MAX`]), writes what
/// their orders created with one call of `sink`, then answers their callers. Ends when the writer is gone.
fn docs_loop(stats: &BatchStats, rx: &std::sync::mpsc::Receiver<Committed>, mut sink: EffectsSink) {
    while let Ok(first) = rx.recv() {
        let mut round = vec![first];
        while round.len() < DOCS_BATCHES_MAX {
            match rx.try_recv() {
                Ok(c) => round.push(c),
                Err(_) => break,
            }
        }
        let created: Vec<&Effects> = round
            .iter()
            .flatten()
            .filter_map(|(r, _)| r.as_ref().ok().filter(|p| p.created))
            .map(|p| &p.effects)
            .collect();
        let n = created.len() as u64;
        let written = created.is_empty() || write_round(stats, &mut sink, &created, n);
        for committed in round {
            answer(
                committed
                    .into_iter()
                    .map(|(r, reply)| {
                        let r = r.map(|mut p| {
                            p.written = written && p.created;
                            p
                        });
                        (r, reply)
                    })
                    .collect(),
            );
        }
    }
    tracing::debug!("intake documents thread stopped");
}

/// One round's call of the sink, counted; true if it wrote.
fn write_round(stats: &BatchStats, sink: &mut EffectsSink, created: &[&Effects], n: u64) -> bool {
    match sink(created) {
        Ok(()) => {
            stats.doc_rounds.fetch_add(1, Ordering::Relaxed);
            stats.doc_orders.fetch_add(n, Ordering::Relaxed);
            true
        }
        Err(e) => {
            stats.doc_fallbacks.fetch_add(n, Ordering::Relaxed);
            tracing::error!(error = %e, orders = n, "cannot write the documents of committed orders; their callers will");
            false
        }
    }
}

/// The writer thread: takes up to `batch_max` queued orders, takes them in one transaction, commits, then
/// answers every caller (each its own result, or all of them the batch's error), through the documents
/// thread if there is one. Ends when every sender is gone.
fn writer_loop(core: &Core, mut rx: mpsc::Receiver<Job>, batch_max: usize, mut sites: SiteSource, answers: &Answers) {
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
            Ok(results) => answers.send(results.into_iter().zip(replies).collect()),
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
        {
            let mut t = Tables::open(&w)?;
            let mut ix = Indexes::open(&w)?;
            for job in jobs {
                out.push(self.take(&st, &mut overlay, &mut t, &mut ix, &mut seq, job, sites, now_ms)?);
            }
            prune_idempotency(&mut ix.idem, &mut ix.idem_by_time, now_ms.saturating_sub(IDEMPOTENCY_RETENTION_MS))?;
            t.finish()?;
        }
        if seq != seq0 {
            w.open_table(META)?.insert(SEQ_ORDER, seq)?;
        }
        write_escrow_rows(&w, &overlay)?;
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

    /// Decides one order of a batch, then writes it. `seq` is the last order number taken in the transaction.
    #[allow(clippy::too_many_arguments)]
    fn take(
        &self,
        st: &State,
        overlay: &mut Overlay,
        t: &mut Tables<'_>,
        ix: &mut Indexes<'_>,
        seq: &mut u64,
        job: Create,
        sites: &[SiteFacts],
        now_ms: u64,
    ) -> Result<Result<Placed, IntakeError>, IntakeError> {
        let Create { key, draft, hash, actor, payment } = job;
        let seen = match Self::seen(&ix.idem, &t.orders, &draft.channel, &key, &hash) {
            Ok(s) => s,
            Err(e) => return own(e),
        };
        match seen {
            Seen::New => {}
            Seen::Replay(id) => {
                let order = match get_order(&t.orders, &id) {
                    Ok(Some(o)) => o,
                    Ok(None) => return Ok(Err(IntakeError::NotFound(id))),
                    Err(e) => return own(e),
                };
                t.audit(&actor, Some(order.id.as_str()), now_ms, "ok")?;
                return Ok(Ok(Placed { order, created: false, effects: Effects::default(), written: false }));
            }
            Seen::Reused(id) => {
                let e = IntakeError::KeyReused(key);
                t.audit(&actor, Some(&id), now_ms, e.code())?;
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
            avoid_sites: Vec::new(),
            tracking_token: Some(token.clone()),
        };
        let decision = match self.plan(st, overlay, t, &order, sites, &BTreeSet::new(), now_ms) {
            Ok(d) => d,
            Err(e) => return own(e),
        };
        if decision.outcome == Outcome::Rejected {
            // Nothing of the order is written and its number is not taken; only the attempt is recorded.
            let e = IntakeError::CannotFill(Box::new(decision));
            t.audit(&actor, None, now_ms, e.code())?;
            return Ok(Err(e));
        }
        // From here on the order writes: any error fails the batch, so nothing of it is half-written.
        *seq += 1;
        let mut effects = Effects::default();
        // `order.created` before the `order.routed` its routing appends.
        t.event(crate::events::EventDraft::created(&order, now_ms))?;
        Self::record(st, overlay, t, &mut order, decision, "intake".into(), now_ms, &mut effects)?;
        Self::put_order(t, &order)?;
        let scoped = scoped_key(&order.draft.channel, &key);
        let idem = IdemRecord { body_sha256: hash, order: order.id.to_string() };
        ix.idem.insert(scoped.as_str(), postcard_enc(&idem)?.as_slice())?;
        ix.idem_by_time.insert((now_ms, scoped.as_str()), ())?;
        ix.tracking.insert(token_hash(&token).as_slice(), order.id.as_str())?;
        ix.by_channel.insert(channel_key(&order.draft.channel, order.id.as_str()).as_str(), ())?;
        for k in search_keys(&order.draft, order.id.as_str()) {
            ix.by_contact.insert(k.as_str(), ())?;
        }
        if let Some(p) = payment {
            let authorized = ix.payments.write(order.id.as_str(), p.payment, p.attempt_key.as_deref())?;
            if let Some(event) = authorized {
                t.event(event)?;
            }
        }
        t.audit(&actor, Some(order.id.as_str()), now_ms, "ok")?;
        Ok(Ok(Placed { order, created: true, effects, written: false }))
    }
}

/// The tables only a new channel order writes (its idempotency record, tracking token and indexes), opened
/// once per batch as [`Tables`] are, with its payment's ([`crate::money::NewPayments`]).
pub(super) struct Indexes<'t> {
    idem: redb::Table<'t, &'static str, &'static [u8]>,
    idem_by_time: redb::Table<'t, (u64, &'static str), ()>,
    tracking: redb::Table<'t, &'static [u8], &'static str>,
    by_channel: redb::Table<'t, &'static str, ()>,
    by_contact: redb::Table<'t, &'static str, ()>,
    payments: crate::money::NewPayments<'t>,
}

impl<'t> Indexes<'t> {
    fn open(w: &'t redb::WriteTransaction) -> Result<Indexes<'t>, IntakeError> {
        Ok(Indexes {
            idem: w.open_table(IDEM)?,
            idem_by_time: w.open_table(IDEM_BY_TIME)?,
            tracking: w.open_table(TRACKING)?,
            by_channel: w.open_table(BY_CHANNEL)?,
            by_contact: w.open_table(BY_CONTACT)?,
            payments: crate::money::NewPayments::open(w)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use oms_protocol::escrow::{EscrowCounter, Party};
    use oms_protocol::schema::SiteInfo;
    use proptest::prelude::*;

    use super::*;
    use crate::routing::ShortfallPolicy;

    fn actor() -> Actor {
        Actor { key: "ops".into(), role: oms_service::auth::Role::Admin, method: "POST", route: "/v1/orders".into() }
    }

    /// An order of `channel` with `lines` (SKU, units) to `to`; `ext` tells bodies apart.
    fn draft(ext: &str, channel: &str, lines: &[(&str, u32)], to: (f64, f64)) -> OrderDraft {
        serde_json::from_value(serde_json::json!({
            "external_ref": ext, "channel": channel,
            "lines": lines.iter().map(|(s, q)| serde_json::json!({"sku": s, "qty": q, "unit_price_minor": 100, "currency": "EUR"})).collect::<Vec<_>>(),
            "ship_to": {"name": "C", "line1": "1", "city": "B", "postcode": "1", "country": "DE", "lat": to.0, "lon": to.1}
        }))
        .unwrap()
    }

    const PLACES: [(f64, f64); 3] = [(52.52, 13.40), (48.14, 11.58), (53.55, 9.99)];

    fn site(n: usize, capacity_per_day: u32) -> SiteFacts {
        let (lat, lon) = PLACES[n];
        SiteFacts {
            id: NodeId::parse(&format!("wh-{n}")).unwrap(),
            info: SiteInfo { name: format!("site {n}"), lat, lon, priority: 0, capacity_per_day, region: "de".into() },
            reachable: true,
            last_heard_age_ms: 0,
            schedule: None,
        }
    }

    /// The rights the hub holds of `sku` at `site`: the site has `stock` units, granted the hub `hub` of them
    /// with a lease (live or long gone) and an unacknowledged budget of `unacked`.
    fn grant(intake: &Intake, site: &NodeId, sku: &str, (stock, hub, live, unacked): (u64, u64, bool, u64)) {
        let mut c = EscrowCounter::new(Sku::parse(sku).unwrap());
        c.add(Party::Site, stock).unwrap();
        c.grant_lease(Party::Site, Party::Hub, if live { u64::MAX / 2 } else { 0 }, unacked).unwrap();
        c.transfer(Party::Site, Party::Hub, hub.min(stock), 0).unwrap();
        lock(&intake.core.state).escrow.insert((site.clone(), c.sku().clone()), c);
    }

    /// What a caller learns of its order, without what is random (tracking tokens) or timed.
    fn outcome(r: &Result<Placed, IntakeError>) -> String {
        match r {
            Ok(p) => format!(
                "{} {} {:?} {:?}",
                if p.created { "created" } else { "replayed" },
                p.order.id,
                p.order.fulfillments.iter().map(|f| (f.site.to_string(), f.lines.clone())).collect::<Vec<_>>(),
                p.order.unfilled
            ),
            Err(e) => e.code().to_owned(),
        }
    }

    /// Ten callers (`k0`..`k9`, one unit of A each) queued while the writer waits for the state, as it does
    /// while another write runs; their answers.
    fn ten_queued(intake: &Intake) -> Vec<Answer> {
        let held = lock(&intake.core.state);
        let answers = (0..10)
            .map(|i| intake.enqueue(format!("k{i}"), draft(&format!("o{i}"), "web", &[("A", 1)], PLACES[0]), actor()))
            .collect::<Result<_, _>>()
            .unwrap();
        drop(held);
        answers
    }

    #[test]
    fn concurrent_orders_share_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let intake = Intake::open(&dir.path().join(INTAKE_DB_FILE), RoutingPolicy::default()).unwrap();
        let sites = vec![site(0, 1_000)];
        grant(&intake, &sites[0].id, "A", (100, 100, true, 100));
        let facts = sites.clone();
        intake
            .start(
                IntakeLimits { queue_max: 64, batch_max: 64, ..Default::default() },
                Box::new(move |_| facts.clone()),
                None,
            )
            .unwrap();
        for a in ten_queued(&intake) {
            let placed = a.blocking_recv().unwrap().unwrap();
            assert_eq!(placed.order.fulfillments.len(), 1);
        }
        let b = intake.batch_counts();
        assert_eq!(b.orders, 10);
        assert!(b.commits <= 2 && b.largest >= 5, "ten queued orders took {b:?}");
        assert_eq!(intake.escrow(&sites[0].id, &Sku::parse("A").unwrap()).unwrap().consumed(Party::Hub), 10);
        assert_eq!(intake.orders_taken().unwrap(), 10);
    }

    #[test]
    fn the_documents_thread_writes_each_created_order_once_before_its_caller_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let intake = Intake::open(&dir.path().join(INTAKE_DB_FILE), RoutingPolicy::default()).unwrap();
        let sites = vec![site(0, 1_000)];
        grant(&intake, &sites[0].id, "A", (100, 100, true, 100));
        let facts = sites.clone();
        // The sink records what it was given, and fails its first call: those callers write themselves.
        let seen: Arc<std::sync::Mutex<Vec<Vec<String>>>> = Arc::default();
        let log = seen.clone();
        let sink: EffectsSink = Box::new(move |all: &[&Effects]| {
            let mut log = log.lock().unwrap();
            log.push(all.iter().flat_map(|e| e.fulfillments.iter().map(|f| f.parent.to_string())).collect());
            if log.len() == 1 { Err("refused".into()) } else { Ok(()) }
        });
        intake
            .start(
                IntakeLimits { queue_max: 64, batch_max: 4, ..Default::default() },
                Box::new(move |_| facts.clone()),
                Some(sink),
            )
            .unwrap();
        // Batches of at most four.
        let placed: Vec<Placed> =
            ten_queued(&intake).into_iter().map(|a| a.blocking_recv().unwrap().unwrap()).collect();
        // Every caller is answered after the sink's call that held its order: each order was given once.
        let calls = seen.lock().unwrap().clone();
        let given: Vec<&String> = calls.iter().flatten().collect();
        let mut unique = given.clone();
        unique.sort();
        unique.dedup();
        assert_eq!((given.len(), unique.len()), (10, 10), "{calls:?}");
        let failed: BTreeSet<&String> = calls.first().into_iter().flatten().collect();
        for p in &placed {
            assert!(p.created);
            // `written` says whether the sink took it: false exactly for the orders of the failed call.
            assert_eq!(p.written, !failed.contains(&p.order.id.to_string()), "{}", p.order.id);
        }
        // Batches of at most four: at least three commits, and never more sink calls than commits.
        let b = intake.batch_counts();
        assert!(b.commits >= 3 && calls.len() as u64 <= b.commits, "{b:?} {calls:?}");
        let fell_back = failed.len() as u64;
        assert_eq!((b.document_orders, b.document_fallbacks), (10 - fell_back, fell_back), "{b:?}");
        assert_eq!(b.document_rounds, calls.len() as u64 - 1, "{b:?}");
        // A replay creates nothing: it is not given to the sink, and its caller writes (a no-op, or what a crash
        // kept from being written).
        let before = seen.lock().unwrap().len();
        let again = intake.enqueue("k0".into(), draft("o0", "web", &[("A", 1)], PLACES[0]), actor()).unwrap();
        let replay = again.blocking_recv().unwrap().unwrap();
        assert!(!replay.created && !replay.written);
        assert_eq!(seen.lock().unwrap().len(), before);
    }

    #[test]
    fn a_full_queue_is_overloaded_and_an_unstarted_writer_takes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let intake = Intake::open(&dir.path().join(INTAKE_DB_FILE), RoutingPolicy::default()).unwrap();
        let d = || draft("o", "web", &[("A", 1)], PLACES[0]);
        assert!(matches!(intake.enqueue("k".into(), d(), actor()), Err(IntakeError::ShuttingDown)));
        intake
            .start(IntakeLimits { queue_max: 2, batch_max: 1, ..Default::default() }, Box::new(|_| Vec::new()), None)
            .unwrap();
        let held = lock(&intake.core.state);
        // The writer takes at most one and waits; the queue holds two more; the next is refused.
        let mut answers = Vec::new();
        let mut refused = 0;
        for i in 0..4 {
            match intake.enqueue(format!("k{i}"), d(), actor()) {
                Ok(a) => answers.push(a),
                Err(IntakeError::Overloaded) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        drop(held);
        assert!(refused >= 1, "a queue of two took four");
        for a in answers {
            assert!(a.blocking_recv().unwrap().unwrap().created);
        }
        assert_eq!(intake.orders_taken().unwrap(), 4 - refused);
    }

    /// One generated order: idempotency key (of a few), channel, lines (SKU index, units), destination,
    /// body variant.
    type Job = (usize, usize, Vec<(usize, u32)>, usize, usize);

    fn jobs() -> impl Strategy<Value = Vec<Job>> {
        prop::collection::vec(
            (0..5usize, 0..2usize, prop::collection::vec((0..2usize, 1..4u32), 1..3), 0..3usize, 0..2usize),
            1..14,
        )
    }

    fn rights() -> impl Strategy<Value = (u64, u64, bool, u64)> {
        (0..7u64, 0..7u64, prop::bool::weighted(0.8), 0..7u64)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Orders queued together and taken in batches decide exactly what the same orders taken one by one
        /// decide (the sequential model), so the rights a batch consumed are never promised again within
        /// it or by a later batch; and no site gets more units of a SKU than the hub could spend there.
        #[test]
        fn batches_decide_as_one_by_one_and_never_promise_a_unit_twice(
            cells in prop::collection::vec(rights(), 6),
            caps in prop::collection::vec(1..5u32, 3),
            reject in any::<bool>(),
            split_lines in any::<bool>(),
            batch_max in 1..6usize,
            jobs in jobs(),
        ) {
            let policy = RoutingPolicy {
                on_shortfall: if reject { ShortfallPolicy::Reject } else { ShortfallPolicy::Backorder },
                split_lines,
                ..RoutingPolicy::default()
            };
            let sites: Vec<SiteFacts> = (0..3).map(|n| site(n, caps[n])).collect();
            let skus = ["A", "B"];
            let dir = tempfile::tempdir().unwrap();
            let batched = Intake::open(&dir.path().join("batched.redb"), policy.clone()).unwrap();
            let model = Intake::open(&dir.path().join("model.redb"), policy).unwrap();
            let mut spendable = BTreeMap::new();
            for (i, cell) in cells.iter().enumerate() {
                let (s, sku) = (&sites[i / 2].id, skus[i % 2]);
                grant(&batched, s, sku, *cell);
                grant(&model, s, sku, *cell);
                let c = batched.escrow(s, &Sku::parse(sku).unwrap()).unwrap();
                spendable.insert((s.to_string(), sku.to_owned()), c.spendable(Party::Hub, now_ms()));
            }
            let bodies: Vec<(String, OrderDraft)> = jobs
                .iter()
                .map(|(key, ch, lines, to, variant)| {
                    let lines: Vec<(&str, u32)> = lines.iter().map(|(s, q)| (skus[*s], *q)).collect();
                    let channel = ["web", "shop"][*ch];
                    (format!("k{key}"), draft(&format!("ext-{variant}"), channel, &lines, PLACES[*to]))
                })
                .collect();

            let facts = sites.clone();
            batched.start(IntakeLimits { queue_max: 64, batch_max, ..Default::default() }, Box::new(move |_| facts.clone()), None).unwrap();
            let held = lock(&batched.core.state);
            let answers: Vec<Answer> =
                bodies.iter().map(|(k, d)| batched.enqueue(k.clone(), d.clone(), actor()).unwrap()).collect();
            drop(held);
            let got: Vec<Result<Placed, IntakeError>> =
                answers.into_iter().map(|a| a.blocking_recv().unwrap()).collect();
            let want: Vec<Result<Placed, IntakeError>> =
                bodies.iter().map(|(k, d)| model.place(k, d.clone(), &sites, &actor(), now_ms())).collect();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                prop_assert_eq!(outcome(g), outcome(w), "order {} of {:?}", i, bodies);
            }
            // Units assigned per (site, SKU) by created orders: within what the hub could spend there.
            let mut assigned: BTreeMap<(String, String), u64> = BTreeMap::new();
            for p in got.iter().flatten().filter(|p| p.created) {
                for f in &p.order.fulfillments {
                    for l in &f.lines {
                        *assigned.entry((f.site.to_string(), l.sku.to_string())).or_default() += u64::from(l.qty);
                    }
                }
            }
            for (cell, units) in &assigned {
                prop_assert!(*units <= spendable[cell], "{cell:?}: {units} assigned, {} spendable", spendable[cell]);
                let c = batched.escrow(&NodeId::parse(&cell.0).unwrap(), &Sku::parse(&cell.1).unwrap()).unwrap();
                prop_assert_eq!(c.consumed(Party::Hub), *units);
            }
            prop_assert_eq!(batched.escrow_table(0), model.escrow_table(0));
            prop_assert_eq!(batched.orders_taken().unwrap(), model.orders_taken().unwrap());
            // The same audit trail: one row per call, refusals with their code.
            let rows = |i: &Intake| -> Vec<(Option<String>, String)> {
                i.audit_page(0, 100).unwrap().0.into_iter().map(|e| (e.target, e.outcome)).collect()
            };
            prop_assert_eq!(rows(&batched), rows(&model));
            // The same figures, counted from the events of every order the batches created (their tables are
            // written once per batch).
            let today = crate::reports::day_of(now_ms());
            let period = crate::reports::Period { from: today.saturating_sub(1), to: today, site: None, channel: None };
            let figures = |i: &Intake| crate::reports::report(i.db(), &period).unwrap();
            let (b, m) = (figures(&batched), figures(&model));
            prop_assert_eq!(b.total.orders, batched.orders_taken().unwrap());
            prop_assert_eq!(b.total, m.total);
            prop_assert_eq!(b.sites, m.sites);
            prop_assert_eq!(b.channels, m.channels);
        }
    }
}
