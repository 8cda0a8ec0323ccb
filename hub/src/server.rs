//! The hub's QUIC side: accepts node connections, one per node, and drives a server [`SyncSession`] for each
//! over [`HubDocs`].
//!
//! Limits: at most `nodes_max` connections are served at once (a semaphore; extra handshakes are refused
//! before TLS work), a node gets one bidirectional stream (quinn's stream limit is 2, the second is never
//! accepted), each read and write has a deadline, and decoded frames queue in a bounded channel. A node
//! that reconnects replaces its older connection. A node that misbehaves loses its connection or has a
//! document quarantined; nothing it does stops the accept loop or another node's session.
//!
//! **A live session is one the hub would accept now.** [`watch_peer_certificates`] looks at the CA bundle and
//! the CRL every half `crl_check_interval_ms` (so a change is acted on within the interval); when a changed
//! bundle or CRL loads, every live connection's certificate chain is verified again against it, and a
//! connection whose certificate is now refused is closed: [`ErrorCode::Revoked`] for a revoked one,
//! [`ErrorCode::Unauthorized`] for one no CA in the bundle vouches for any more. On the same tick, a connection
//! whose certificate's `not_after` has passed is closed with [`ErrorCode::CertificateExpired`] ([`cut_expired`]).
//! The next handshake of either is refused. A connection accepted while the files change is checked once
//! more right after it is registered, so none slips between the handshake and the watch.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use oms_protocol::domain::NodeId;
use oms_protocol::sync::{Event, SessionConfig, SyncSession};
use oms_protocol::wire::{DocId, ErrorCode, Frame, FrameEncoder, PeerId, capabilities};
use oms_service::{TimedMutex, lock, now_ms};
use oms_sync::DocDbError;
use oms_sync::link::{self, LinkError};
use oms_transport::tls::{ReloadingCert, ReloadingClientVerifier, WATCH_PERIOD_MIN_MS, refusal_code};
use oms_transport::{Identity, Limits, PkiError};
use tokio::sync::Semaphore;

use crate::docs::{HubDocs, node_of};

/// Timers and limits of the QUIC side.
#[derive(Debug, Clone)]
pub struct ServerTuning {
    /// Connections served at once.
    pub nodes_max: usize,
    /// Deadline for a handshake, the first stream, and each batch of frames written.
    pub io_timeout_ms: u64,
    /// Session tick period.
    pub tick_ms: u64,
    /// Decoded frames waiting for the session, per connection.
    pub frames_queued_max: usize,
    /// Frames already queued that a session handles before one flush and one write of the answers.
    pub frames_per_flush_max: usize,
    /// A session holds its answers to a node's frames (acknowledgements, mostly) for up to this long while
    /// no document of the hub's own is ready for that node, so that one `hub.redb` flush and one write carry
    /// them with the next ones (under load a new order every millisecond or so) rather than a flush each
    /// ([`link::Linger`]). Never past `frames_per_flush_max` frames or `docs_loaded_max` documents loaded;
    /// 0 answers at once.
    pub answer_linger_ms: u64,
    /// Documents loaded at the hub (cached, and changed but not yet on disk; `docs_loaded_max` in the
    /// configuration) beyond which a session takes no
    /// further queued frame before the next flush. Every session handles at least one frame per flush, so
    /// the hub holds at most this many plus one per session, whatever the number of nodes catching up.
    pub docs_loaded_max: usize,
    /// Bytes the changes of one node message may inflate to ([`SessionConfig::changes_inflated_bytes_max`]).
    pub changes_inflated_bytes_max: usize,
}

impl Default for ServerTuning {
    fn default() -> Self {
        Self {
            nodes_max: 256,
            io_timeout_ms: 10_000,
            tick_ms: 250,
            frames_queued_max: 256,
            frames_per_flush_max: 256,
            answer_linger_ms: link::ANSWER_LINGER_MS,
            docs_loaded_max: 2 * crate::docs::DOCS_CACHED_MAX,
            changes_inflated_bytes_max: oms_protocol::sync::CHANGES_INFLATED_BYTES_MAX,
        }
    }
}

/// What the QUIC side shares with the HTTP side.
pub struct Hub {
    /// The documents.
    pub docs: TimedMutex<HubDocs>,
    /// Held from preparing a flush until its commit is done, so that sessions flush one after another while
    /// the documents' lock is free for the others and for HTTP. Holds the number of the last frame handled
    /// before the last committed flush: a session whose frames a flush of another session already covered
    /// does not flush again (with a hundred sessions, one fsync each in turn would delay every answer).
    persist: Arc<tokio::sync::Mutex<u64>>,
    /// Rounds of frames handled and marked dirty (by all sessions), numbered under the documents' lock, so
    /// that a flush prepared under that lock covers every round numbered before it.
    frames_handled: AtomicU64,
    tenant: String,
    me: PeerId,
    actor: Vec<u8>,
    tuning: ServerTuning,
    /// The current connection of each node, by a per-hub connection number.
    conns: Mutex<HashMap<String, (u64, quinn::Connection)>>,
    next_conn: AtomicU64,
    /// Per node: poked when the hub changed a document the node's session should push.
    local: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    /// Poked when a node changed a document (the intake's watcher wakes on it).
    pub node_changes: tokio::sync::Notify,
    /// Channel intake, routing and escrow.
    pub intake: crate::intake::Intake,
    /// Payments, invoices and credit notes (in the intake's database).
    pub money: crate::money::Money,
    /// Suppliers, purchase orders, ASNs and receipts (in the intake's database).
    pub purchasing: crate::purchasing::Purchasing,
    /// Return authorizations (RMAs), in the intake's database; the default policy until the caller sets
    /// `[returns]`.
    pub returns: crate::returns::Returns,
    /// `[events] stock_low_at`: `stock.low` when a SKU's available units at a site fall to this or below.
    pub stock_low_at: u64,
    /// The carriers' tracking webhooks (`[carriers]`); none until the caller sets them.
    pub tracking: crate::tracking::Tracking,
    /// The demand index and last replenishment run (the forecast routes and purchase orders made from it).
    pub demand: Arc<crate::demand::DemandCache>,
    /// How many of the planner's heavy reads run at once ([`crate::gate`]).
    pub planner_reads: crate::gate::ReadGate,
    /// The reloading parts of the QUIC side's TLS, once it listens ([`Hub::set_tls`]).
    tls: OnceLock<HubTls>,
}

/// The reloading parts of the hub's TLS configuration, which the hub watches and reports on.
#[derive(Debug, Clone)]
pub struct HubTls {
    /// The hub's own certificate and key.
    pub own: Arc<ReloadingCert>,
    /// The client verifier with the CRL.
    pub clients: Arc<ReloadingClientVerifier>,
}

impl Hub {
    /// A hub for `tenant` over `docs`. `actor` is this process's fresh Automerge actor id.
    pub fn new(
        docs: HubDocs,
        intake: crate::intake::Intake,
        money: crate::money::Money,
        purchasing: crate::purchasing::Purchasing,
        tenant: &str,
        actor: Vec<u8>,
        tuning: ServerTuning,
    ) -> Result<Hub, PkiError> {
        let me = Identity::hub(tenant)?;
        // A valid tenant name is at most 64 bytes, so the URI fits a peer id.
        let me = PeerId::new(me.uri()).ok_or_else(|| PkiError::BadIdentity { uri: me.uri() })?;
        Ok(Hub {
            docs: TimedMutex::new(docs),
            persist: Arc::new(tokio::sync::Mutex::new(0)),
            frames_handled: AtomicU64::new(0),
            tenant: tenant.to_owned(),
            me,
            actor,
            tuning,
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            local: Mutex::new(HashMap::new()),
            node_changes: tokio::sync::Notify::new(),
            intake,
            money,
            purchasing,
            returns: crate::returns::Returns::default(),
            stock_low_at: crate::events::EventsConfig::default().stock_low_at,
            tracking: crate::tracking::Tracking::default(),
            demand: Arc::default(),
            planner_reads: crate::gate::ReadGate::for_this_machine(),
            tls: OnceLock::new(),
        })
    }

    /// Hands the hub the reloading parts of its TLS configuration (once; later calls change nothing), so that
    /// connections are checked against each new CRL and `GET /v1/nodes` shows the hub's own certificate.
    pub fn set_tls(&self, tls: HubTls) {
        let _ = self.tls.set(tls);
    }

    /// The reloading parts of the TLS configuration, once set.
    pub fn tls(&self) -> Option<&HubTls> {
        self.tls.get()
    }

    /// The signal that `node`'s session has hub-made changes to push.
    pub fn local_signal(&self, node: &str) -> Arc<tokio::sync::Notify> {
        lock(&self.local).entry(node.to_owned()).or_default().clone()
    }

    /// Wakes the sessions of `nodes` to push what the hub changed.
    pub fn poke(&self, nodes: &[String]) {
        for n in nodes {
            self.local_signal(n).notify_one();
        }
    }
}

/// The session limits the hub uses.
pub fn session_config(tuning: &ServerTuning) -> SessionConfig {
    SessionConfig {
        manifest_interval_ms: 15_000,
        docs_in_flight_max: 256,
        changes_inflated_bytes_max: tuning.changes_inflated_bytes_max,
        ..SessionConfig::default()
    }
}

/// Accepts connections until the endpoint is closed.
pub async fn accept_loop(hub: Arc<Hub>, endpoint: quinn::Endpoint) {
    let slots = Arc::new(Semaphore::new(hub.tuning.nodes_max.max(1)));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(remote = %incoming.remote_address(), "refusing a connection: node limit reached");
            incoming.refuse();
            continue;
        };
        let hub = hub.clone();
        tokio::spawn(async move {
            serve(&hub, incoming).await;
            drop(permit);
        });
    }
}

async fn serve(hub: &Hub, incoming: quinn::Incoming) {
    let io_timeout = Duration::from_millis(hub.tuning.io_timeout_ms);
    let remote = incoming.remote_address();
    let conn = match tokio::time::timeout(io_timeout, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return tracing::info!(%remote, error = %e, "handshake failed"),
        Err(_) => return tracing::info!(%remote, "handshake timed out"),
    };
    let node = match oms_transport::peer_identity(&conn) {
        Ok(Identity::Node { tenant, node_id })
            if tenant == hub.tenant && node_id != oms_protocol::schema::HUB_ORIGIN =>
        {
            NodeId::parse(&node_id).ok()
        }
        Ok(other) => {
            tracing::warn!(%remote, identity = %other, "refusing a peer that is not a node of this tenant");
            None
        }
        Err(e) => {
            tracing::warn!(%remote, error = %e, "refusing a peer without a usable identity");
            None
        }
    };
    let Some(node) = node else {
        return oms_transport::close(&conn, ErrorCode::Unauthorized, "not a node of this tenant");
    };
    let conn_id = hub.next_conn.fetch_add(1, Ordering::Relaxed);
    if let Some((_, old)) = lock(&hub.conns).insert(node.as_str().to_owned(), (conn_id, conn.clone())) {
        oms_transport::close(&old, ErrorCode::NoError, "replaced by a newer connection of the same node");
    }
    let cert = oms_transport::peer_cert_info(&conn).ok();
    {
        let mut docs = hub.docs.lock();
        if !docs.enroll(&node) {
            tracing::warn!(%node, "party table full: orders naming this node reach it by their id alone");
        }
        let st = docs.status(&node);
        st.connected = true;
        st.connected_at_ms = Some(now_ms());
        st.sessions += 1;
        st.certificate = cert.as_ref().map(crate::docs::PeerCertificate::from);
    }
    tracing::info!(%node, %remote, serial = %cert.as_ref().map(|c| c.serial_hex()).unwrap_or_default(),
        "node connected");
    // The CA bundle or CRL may have changed between this handshake and the registration above, after the
    // watch looked at the registered connections: check this one against what is in force now.
    if let Some(tls) = hub.tls()
        && let Some(code) = refused(&tls.clients, &conn)
    {
        tracing::warn!(%node, %code, "node's certificate was refused by a CA bundle or CRL loaded while it connected; closing");
        oms_transport::close(&conn, code, "certificate refused");
    }
    let result = drive(hub, &conn, &node).await;
    match &result {
        Ok(()) => tracing::info!(%node, "node session ended"),
        Err(e) => tracing::info!(%node, error = %e, "node session failed"),
    }
    let mut conns = lock(&hub.conns);
    if conns.get(node.as_str()).is_some_and(|(id, _)| *id == conn_id) {
        conns.remove(node.as_str());
        hub.docs.lock().status(&node).connected = false;
    }
}

/// The close code if `conn`'s certificate chain is refused by `verifier` now ([`refusal_code`]), else `None`.
fn refused(verifier: &ReloadingClientVerifier, conn: &quinn::Connection) -> Option<ErrorCode> {
    let chain = oms_transport::peer_certificates(conn).ok()?;
    verifier.verify_now(&chain).err().map(|e| refusal_code(&e))
}

/// The live connections, by node.
fn live(hub: &Hub) -> Vec<(String, quinn::Connection)> {
    lock(&hub.conns).iter().map(|(node, (_, conn))| (node.clone(), conn.clone())).collect()
}

/// Closes every live connection whose certificate `verifier` now refuses (a CRL that revokes it, a CA bundle
/// that no longer vouches for it), with the code [`refusal_code`] names. Returns the nodes cut, with the code.
pub fn cut_refused(hub: &Hub, verifier: &ReloadingClientVerifier) -> Vec<(String, ErrorCode)> {
    let mut cut = Vec::new();
    for (node, conn) in live(hub) {
        let Some(code) = refused(verifier, &conn) else { continue };
        match code {
            ErrorCode::Revoked => {
                tracing::warn!(%node, "node's certificate is revoked by the new CRL; closing its connection");
            }
            _ => tracing::warn!(%node, %code,
                "node's certificate is refused by the new CA bundle or CRL; closing its connection"),
        }
        oms_transport::close(&conn, code, "certificate refused");
        cut.push((node, code));
    }
    cut
}

/// Closes, with [`ErrorCode::CertificateExpired`], every live connection whose certificate's `not_after` is
/// before `now_unix_s` (webpki's rule: valid through its `not_after` second). Returns the nodes cut.
pub fn cut_expired(hub: &Hub, now_unix_s: i64) -> Vec<String> {
    let mut cut = Vec::new();
    for (node, conn) in live(hub) {
        let Ok(info) = oms_transport::peer_cert_info(&conn) else { continue };
        if info.not_after_unix_s < now_unix_s {
            tracing::warn!(%node, serial = %info.serial_hex(), not_after_unix_s = info.not_after_unix_s,
                "node's certificate expired while connected; closing its connection (it needs a renewed one: \
                 oms ca renew)");
            oms_transport::close(&conn, ErrorCode::CertificateExpired, "certificate expired");
            cut.push(node);
        }
    }
    cut
}

/// Watches the peers' certificates for as long as the runtime runs: every half `crl_check_interval_ms` (at
/// least [`WATCH_PERIOD_MIN_MS`]) it re-reads a changed CA bundle or CRL and cuts the sessions it refuses
/// ([`cut_refused`]), and cuts the sessions whose certificate expired ([`cut_expired`]), so that a revoked,
/// untrusted or expired node is disconnected within the interval even when no handshake happens.
pub async fn watch_peer_certificates(
    hub: Arc<Hub>,
    verifier: Arc<ReloadingClientVerifier>,
    crl_check_interval_ms: u64,
) {
    let period = Duration::from_millis((crl_check_interval_ms / 2).max(WATCH_PERIOD_MIN_MS));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = verifier.generation();
    loop {
        tick.tick().await;
        verifier.refresh();
        // A handshake may have loaded the change first: act on every generation not yet acted on.
        let now = verifier.generation();
        if now != seen {
            seen = now;
            cut_refused(&hub, &verifier);
        }
        cut_expired(&hub, i64::try_from(now_ms() / 1_000).unwrap_or(i64::MAX));
    }
}

/// The frames that start the sync of `fresh` fulfillment documents (see `HubDocs::take_local_split`), to be
/// written before the next flush: each holds only what the intake committed, which a start would build again
/// byte for byte if `hub.redb` lost it, so the site may have it first. Saves a channel order's way to its
/// site the wait for that flush (under load, one in progress and then its own): 8 clients, 1.15× the orders
/// a second, POST → `accepted` p50 0.88× (BENCHMARKS.md). Any other frame the session has queued goes to
/// `out`, for after the flush, and so does a fresh document's if `out` already holds one of that document
/// (frames of a document keep their order).
fn early_frames(
    session: &mut SyncSession,
    docs: &mut crate::docs::HubDocs,
    node: &NodeId,
    fresh: &BTreeSet<DocId>,
    out: &mut Vec<Frame>,
) -> Vec<Frame> {
    if fresh.is_empty() {
        return Vec::new();
    }
    take_transmit(session, docs, node, out);
    for doc in fresh {
        session.local_change(&mut docs.sync, doc);
    }
    let mut taken = Vec::new();
    take_transmit(session, docs, node, &mut taken);
    let queued: BTreeSet<&DocId> = out.iter().filter_map(frame_doc).collect();
    let (early, later): (Vec<Frame>, Vec<Frame>) =
        taken.into_iter().partition(|f| frame_doc(f).is_some_and(|doc| fresh.contains(doc) && !queued.contains(doc)));
    out.extend(later);
    early
}

/// Moves the frames `session` has queued to `out`, counting each document the hub refuses `node` in its
/// status (`docs_refused`).
fn take_transmit(session: &mut SyncSession, docs: &mut crate::docs::HubDocs, node: &NodeId, out: &mut Vec<Frame>) {
    while let Some(f) = session.poll_transmit() {
        if matches!(f, Frame::Refused { code: ErrorCode::NotEntitled, .. }) {
            docs.status(node).docs_refused += 1;
        }
        out.push(f);
    }
}

/// The document a frame is about: a sync message's, an acknowledgement's or a refusal's.
fn frame_doc(f: &Frame) -> Option<&DocId> {
    match f {
        Frame::Sync { doc, .. } | Frame::Ack { doc, .. } | Frame::Refused { doc, .. } => Some(doc),
        _ => None,
    }
}

/// Writes what the sessions changed to `hub.redb` without holding the documents' lock during disk I/O. `Ok`
/// means everything the calling session applied and marked before it took `needed` (from
/// [`Hub::frames_handled`], under the documents' lock) is on disk.
/// The flushes' turn goes with the batch to the blocking thread and is given back only once the commit
/// returned, even if this future is dropped (an HTTP handler's request timing out while the disk stalls): a
/// turn taken meanwhile never sees a batch in flight, so it never takes "nothing to write" for "all written".
async fn persist(hub: &Hub, needed: u64) -> Result<(), DocDbError> {
    let mut committed = hub.persist.clone().lock_owned().await;
    if *committed >= needed {
        return Ok(());
    }
    let Some((batch, upto)) = prepare_persist(hub, &mut committed) else { return Ok(()) };
    // In a tuple, so that a closure dropped unrun drops the batch (failed, for the next flush) before the turn.
    let job = (batch, committed);
    match tokio::task::spawn_blocking(move || {
        let (batch, committed) = job;
        (batch.commit(), committed)
    })
    .await
    {
        Ok((result, mut committed)) => finish_persist(hub, &mut committed, upto, result),
        // The batch was dropped uncommitted (and the turn given back); the next flush writes its contents.
        Err(e) => Err(DocDbError::FlushTask { path: "hub.redb".into(), source: e }),
    }
}

/// The first half of a flush, under the documents' lock: the batch and the frames it covers, or `None` (and
/// `committed` moved up) if nothing is dirty.
fn prepare_persist(hub: &Hub, committed: &mut u64) -> Option<(oms_sync::docdb::FlushBatch, u64)> {
    let (batch, upto) = {
        let mut docs = hub.docs.lock();
        (docs.prepare_flush(), hub.frames_handled.load(Ordering::Acquire))
    };
    if batch.is_none() {
        *committed = upto;
        // Nothing to write, but sessions may have loaded documents to send them: drop what exceeds the cache.
        hub.docs.lock().evict_idle();
    }
    batch.map(|b| (b, upto))
}

/// The second half, once the batch's commit returned.
fn finish_persist(hub: &Hub, committed: &mut u64, upto: u64, result: Result<(), DocDbError>) -> Result<(), DocDbError> {
    result?;
    *committed = upto;
    // What the batch held is on disk: documents beyond the cache need not wait for the next flush, which after
    // a burst may not come for a long time.
    let mut docs = hub.docs.lock();
    docs.evict_idle();
    docs.recount_stored_bytes_if_due(now_ms());
    Ok(())
}

/// Writes what the hub changed in its documents so far to `hub.redb`, as the sessions' flushes do: prepared
/// under the documents' lock, committed (fsync) on a blocking thread without it. For an HTTP handler that
/// must answer only once its writes are durable.
pub async fn flush_docs(hub: &Hub) -> Result<(), DocDbError> {
    persist(hub, flush_ticket(hub)).await
}

/// What a flush must cover for a caller outside the sessions: every frame handled and every document marked
/// before now (taken under the documents' lock, as a session takes its own).
fn flush_ticket(hub: &Hub) -> u64 {
    let _docs = hub.docs.lock();
    hub.frames_handled.fetch_add(1, Ordering::AcqRel) + 1
}

/// With `docs_loaded_max` documents or more loaded, [`flush_docs_blocking`], so the clean ones can be evicted.
/// A failed flush is logged: what it held stays dirty in memory for the next flush, which retries it.
pub fn flush_docs_if_full(hub: &Hub) {
    if hub.docs.lock().db().loaded() < hub.tuning.docs_loaded_max {
        return;
    }
    if let Err(e) = flush_docs_blocking(hub) {
        tracing::warn!(error = %e, "flushing the hub's documents failed; the next flush retries");
    }
}

/// [`flush_docs`] for a thread outside the async runtime (the intake's documents thread, the watcher), which
/// may block: it waits for a flush in progress, then commits on the calling thread.
pub(crate) fn flush_docs_blocking(hub: &Hub) -> Result<(), DocDbError> {
    flush_blocking_unless(hub, || false)
}

/// [`flush_docs_blocking`], unless a flush covered the caller's ticket or `done` says, in the flushes' turn
/// (no batch in flight), that nothing is left to write for the caller.
fn flush_blocking_unless(hub: &Hub, done: impl Fn() -> bool) -> Result<(), DocDbError> {
    let needed = flush_ticket(hub);
    let mut committed = hub.persist.blocking_lock();
    if *committed >= needed || done() {
        return Ok(());
    }
    let Some((batch, upto)) = prepare_persist(hub, &mut committed) else { return Ok(()) };
    finish_persist(hub, &mut committed, upto, batch.commit())
}

/// Documents checked per hold of the documents' lock by [`flush_docs_unless_written`].
const WRITTEN_CHECKED_PER_HOLD: usize = 1_024;

/// [`flush_docs_blocking`] unless every one of `docs` is already on disk as it is in memory
/// ([`oms_sync::DocDb::written`]), checked in slices of [`WRITTEN_CHECKED_PER_HOLD`] per hold of the
/// documents' lock: first without the flushes' turn (no wait when they are), then, if one is not (dirty, not
/// on disk, or a batch in flight), in that turn (so none is in flight) before flushing. A document that
/// changes after its check changed after what the caller read of it, which the check covered.
pub(crate) fn flush_docs_unless_written(hub: &Hub, docs: &[DocId]) -> Result<(), DocDbError> {
    let written = || {
        docs.chunks(WRITTEN_CHECKED_PER_HOLD).all(|slice| {
            let d = hub.docs.lock();
            slice.iter().all(|doc| d.db().written(doc))
        })
    };
    if written() {
        return Ok(());
    }
    flush_blocking_unless(hub, written)
}

/// Feeds one frame from `node` to its session, with the ownership check of what it changed.
fn handle_frame(hub: &Hub, node: &NodeId, session: &mut SyncSession, frame: Frame, out: &mut Vec<Frame>) {
    let mut docs = hub.docs.lock();
    let now = now_ms();
    docs.status(node).last_frame_at_ms = Some(now);
    let target = match &frame {
        Frame::Sync { doc, msg } => Some((doc.clone(), docs.heads(doc), msg.len())),
        _ => None,
    };
    session.handle_frame(&mut docs.sync, frame);
    if let Some((doc, before, msg_bytes)) = target
        && !docs.check_applied(node, &doc, &before, msg_bytes, now)
    {
        // Tell the node now: the session itself only refuses the document's next frame.
        out.push(Frame::Refused { doc, code: ErrorCode::NotEntitled });
        if docs.quarantine_full() {
            session.refuse(ErrorCode::NotEntitled, "too many refused changes");
        }
    }
}

async fn drive(hub: &Hub, conn: &quinn::Connection, node: &NodeId) -> Result<(), LinkError> {
    let io_timeout = Duration::from_millis(hub.tuning.io_timeout_ms);
    let frame_max = Limits::default().frame_bytes_max;
    let (mut send, recv) = oms_transport::accept_bi(conn, io_timeout).await?;
    let mut frames = link::spawn_reader(recv, frame_max, hub.tuning.frames_queued_max);
    // The node id came from a verified certificate of this tenant, so the URI is valid and short.
    let uri = format!("oms://{}/node/{node}", hub.tenant);
    let Some(peer) = PeerId::new(uri.clone()) else {
        return Err(LinkError::WrongPeer { seen: uri, expected: "a node id of at most 256 bytes".into() });
    };
    debug_assert!(node_of(&peer).as_ref() == Some(node));
    let mut session =
        SyncSession::new_server(session_config(&hub.tuning), hub.me.clone(), peer, hub.actor.clone(), now_ms());
    let mut encoder = FrameEncoder::new(frame_max);
    let mut tick = tokio::time::interval(Duration::from_millis(hub.tuning.tick_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let local = hub.local_signal(node.as_str());
    // The manifest exchange covers what the hub changed before this connection.
    hub.docs.lock().take_local(node.as_str());
    let mut out: Vec<Frame> = Vec::new();
    // What this session's anti-entropy had sent when last added to the node's status.
    let mut anti_entropy_noted = oms_protocol::sync::AntiEntropyStats::default();
    // Answers to a node's documents wait for the hub's next documents for it (a handshake, a manifest or a
    // ping is answered at once).
    let mut linger = link::Linger::new(hub.tuning.answer_linger_ms, hub.tuning.frames_per_flush_max);
    loop {
        let mut closed = None;
        let needed;
        let loaded_full;
        {
            let mut docs = hub.docs.lock();
            take_transmit(&mut session, &mut docs, node, &mut out);
            while let Some(ev) = session.poll_event() {
                match ev {
                    Event::DocChanged { doc } => {
                        docs.mark_dirty(&doc);
                        hub.node_changes.notify_one();
                    }
                    Event::DocInSync { .. } => docs.status(node).last_sync_at_ms = Some(now_ms()),
                    Event::Closed { code, reason, by_peer } => closed = Some((code, reason, by_peer)),
                    // An older generation of a state document crossing its replacement on the wire: expected.
                    Event::PeerRefused { doc, code } if docs.db().is_superseded(&doc) => {
                        tracing::debug!(%node, %doc, %code, "node refused an older generation")
                    }
                    Event::PeerRefused { doc, code } => tracing::warn!(%node, %doc, %code, "node refused a document"),
                    Event::DocFailed { doc, code } => tracing::warn!(%node, %doc, %code, "document failed"),
                    Event::Limited { doc, code } => {
                        tracing::warn!(%node, doc = ?doc.as_ref().map(|d| d.as_str()), %code, "a bound refused what the node sent");
                        let st = docs.status(node);
                        match code {
                            ErrorCode::QuotaExceeded => st.quota_refusals += 1,
                            ErrorCode::ChangeTooLarge => st.changes_too_large += 1,
                            ErrorCode::MissingDependencies => st.changes_dropped += 1,
                            ErrorCode::RateLimited => st.manifests_deferred += 1,
                            _ => {}
                        }
                    }
                    // Frames from here on (the HelloAck and manifest included) may be deflated: the node
                    // announced it reads them.
                    Event::Established { capabilities, .. } => {
                        let deflate = capabilities & capabilities::DEFLATE != 0;
                        if deflate {
                            encoder.enable_deflate();
                        }
                        docs.status(node).compressed = deflate;
                    }
                }
            }
            let st = docs.status(node);
            st.pending = !session.is_idle();
            st.session_sizes = session.sizes();
            let sent = session.anti_entropy();
            st.anti_entropy.add_since(&anti_entropy_noted, &sent);
            anti_entropy_noted = sent;
            needed = hub.frames_handled.fetch_add(1, Ordering::AcqRel) + 1;
            loaded_full = docs.db().loaded() >= hub.tuning.docs_loaded_max;
        }
        let full = closed.is_some() || loaded_full;
        if !linger.holds(tokio::time::Instant::now(), linger.documents_handled(), full) {
            // Persist before answering: what the node believes the hub has, the hub has on disk (new fulfillment
            // documents went before, `early_frames`: a start rebuilds them the same). One flush covers every
            // frame handled since the last one, of this session and of the others.
            persist(hub, needed).await?;
            link::write_frames(&mut send, &out, &mut encoder, io_timeout).await?;
            out.clear();
        }
        if let Some((code, reason, by_peer)) = closed {
            oms_transport::close(conn, code, &reason);
            return Err(LinkError::Closed { code, reason, by_peer });
        }
        tokio::select! {
            frame = frames.recv() => match frame {
                Some(Ok(frame)) => {
                    linger.handled(&frame);
                    handle_frame(hub, node, &mut session, frame, &mut out);
                    // Take what else is already queued (bounded) before the next flush and write.
                    while linger.has_room() {
                        // A hundred nodes catching up at once would otherwise keep 100 × `frames_per_flush_max`
                        // documents loaded and dirty between two flushes (about 19 KB each).
                        if hub.docs.lock().db().loaded() >= hub.tuning.docs_loaded_max {
                            break;
                        }
                        match frames.try_recv() {
                            Ok(Ok(frame)) => {
                                linger.handled(&frame);
                                handle_frame(hub, node, &mut session, frame, &mut out);
                            }
                            Ok(Err(e)) => {
                                oms_transport::close(conn, e.code(), &e.to_string());
                                return Err(e.into());
                            }
                            Err(_) => break,
                        }
                    }
                }
                Some(Err(e)) => {
                    oms_transport::close(conn, e.code(), &e.to_string());
                    return Err(e.into());
                }
                None => return Ok(()),
            },
            _ = tick.tick() => session.tick(&mut hub.docs.lock().sync, now_ms()),
            () = linger.expired() => {}
            () = local.notified() => {
                // Documents of the hub's own for this node go now, with any answers held for them.
                linger.release();
                let early = {
                    let mut docs = hub.docs.lock();
                    let (fresh, rest) = docs.take_local_split(node.as_str());
                    let early = early_frames(&mut session, &mut docs, node, &fresh, &mut out);
                    for doc in rest {
                        session.local_change(&mut docs.sync, &doc);
                    }
                    early
                };
                if !early.is_empty() {
                    link::write_frames(&mut send, &early, &mut encoder, io_timeout).await?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docs::HubDocs;
    use oms_protocol::domain::{OrderId, Sku};
    use oms_protocol::schema;
    use oms_sync::docdb::DocDb;

    /// A hub session with `node`, past its handshake.
    fn established(docs: &mut HubDocs, node: &str) -> SyncSession {
        let (hub, peer) =
            (PeerId::new("oms://acme/hub").unwrap(), PeerId::new(format!("oms://acme/node/{node}")).unwrap());
        let cfg = SessionConfig::default();
        let mut s = SyncSession::new_server(cfg.clone(), hub.clone(), peer.clone(), vec![1; 16], 0);
        let hello = SyncSession::new_client(cfg, peer, hub, vec![2; 16], 0).poll_transmit().unwrap();
        s.handle_frame(&mut docs.sync, hello);
        while s.poll_transmit().is_some() {}
        s
    }

    /// Fulfillment `n` of `wh-a`, created as the documents thread creates it; returns its document.
    fn create(docs: &mut HubDocs, n: u64) -> DocId {
        let (site, parent) = (NodeId::parse("wh-a").unwrap(), OrderId::parse(&format!("hub-{n:010}")).unwrap());
        let id = OrderId::parse(&format!("{parent}.1")).unwrap();
        let draft = oms_protocol::fixtures::draft("r", &Sku::parse("SKU-1").unwrap(), 1);
        let d = schema::new_hub_order(&vec![7u8; 16].into(), &id, &parent, &site, &draft, 5).unwrap();
        let name = schema::order_doc(&id).unwrap();
        assert!(docs.create_local(&name, d).unwrap().is_some());
        name
    }

    /// A node's session with `hub`'s server session `s` (as [`drive`] runs it, frames from the node through
    /// [`handle_frame`]), each side's frames handed to the other until neither has any; returns the frames the
    /// hub sent. Bounded: at most 200 rounds.
    fn exchange(
        hub: &Hub,
        node: &NodeId,
        s: &mut SyncSession,
        c: &mut SyncSession,
        node_docs: &mut oms_sync::SyncDocs<oms_sync::Everything>,
    ) -> Vec<Frame> {
        let mut sent = Vec::new();
        for _ in 0..200 {
            let mut out = Vec::new();
            let mut moved = false;
            while let Some(f) = c.poll_transmit() {
                handle_frame(hub, node, s, f, &mut out);
                moved = true;
            }
            take_transmit(s, &mut hub.docs.lock(), node, &mut out);
            for f in out {
                sent.push(f.clone());
                c.handle_frame(node_docs, f);
                moved = true;
            }
            while c.poll_event().is_some() {}
            while s.poll_event().is_some() {}
            if !moved {
                return sent;
            }
        }
        panic!("the sessions did not settle in 200 rounds");
    }

    /// Site `wh-a`'s document store, in its own directory.
    struct Site {
        node: NodeId,
        docs: oms_sync::SyncDocs<oms_sync::Everything>,
        _dir: tempfile::TempDir,
    }

    fn site() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let db = DocDb::open(&dir.path().join("node.redb"), vec![3; 16], 1_000).unwrap();
        Site {
            node: NodeId::parse("wh-a").unwrap(),
            docs: oms_sync::SyncDocs::new(db, oms_sync::Everything),
            _dir: dir,
        }
    }

    /// A new session between `hub` and site `wh-a`: the hub's side and the site's.
    fn sessions(hub: &Hub) -> (SyncSession, SyncSession) {
        let (hub_peer, node_peer) =
            (PeerId::new("oms://acme/hub").unwrap(), PeerId::new("oms://acme/node/wh-a").unwrap());
        let cfg = SessionConfig::default();
        let s = SyncSession::new_server(cfg.clone(), hub_peer.clone(), node_peer.clone(), hub.actor.clone(), 0);
        (s, SyncSession::new_client(cfg, node_peer, hub_peer, vec![3; 16], 0))
    }

    /// A hub over `dir` whose process writes as Automerge actor `[actor; 16]`.
    fn hub_at(dir: &std::path::Path, actor: u8) -> Hub {
        hub_tuned(dir, actor, ServerTuning::default())
    }

    /// [`hub_at`] with `tuning`.
    fn hub_tuned(dir: &std::path::Path, actor: u8, tuning: ServerTuning) -> Hub {
        let docs = HubDocs::new(DocDb::open(&dir.join("hub.redb"), vec![actor; 16], 1_000).unwrap()).unwrap();
        let money = crate::demand::test_support::money();
        crate::demand::test_support::hub_over(dir, docs, money, tuning)
    }

    /// Hands what `hub` changed for `node` to its server session `s`, as [`drive`] does.
    fn push_local(hub: &Hub, node: &NodeId, s: &mut SyncSession) {
        let mut docs = hub.docs.lock();
        for d in docs.take_local(node.as_str()) {
            s.local_change(&mut docs.sync, &d);
        }
    }

    /// A site's change reaches the hub's documents before the session's pass flushes it (or takes its event,
    /// which the harness here never does): from the moment it is applied the hub does not take the document
    /// for written, so the watcher flushes before it acts on the shipment it reads there. Fails if only the
    /// session's event marked the document dirty.
    #[test]
    fn a_sites_change_is_not_taken_for_written_before_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let mut site = site();
        let hub = hub_at(dir.path(), 1);
        assert!(hub.docs.lock().enroll(&site.node));
        let (mut s, mut c) = sessions(&hub);
        exchange(&hub, &site.node, &mut s, &mut c, &mut site.docs);
        let draft = oms_protocol::fixtures::draft("r", &Sku::parse("A").unwrap(), 1);
        let placed = crate::demand::test_support::place_at(&hub, &site.node, &[("A", 5)], "k1", draft, 5);
        crate::orders::apply_effects(&hub, &placed.effects).unwrap();
        let f = &placed.effects.fulfillments[0];
        let name = schema::order_doc(&f.id).unwrap();
        flush_docs_blocking(&hub).unwrap();
        push_local(&hub, &site.node, &mut s);
        exchange(&hub, &site.node, &mut s, &mut c, &mut site.docs);
        // The site ships: its change, as its feed follower writes it, to its session.
        let d = site.docs.db.get_mut(&name).expect("the site holds the document");
        assert!(schema::write_order(d, &site.node, &crate::demand::test_support::shipped(f), 7).unwrap());
        d.commit();
        site.docs.db.mark_dirty(&name);
        c.local_change(&mut site.docs, &name);
        exchange(&hub, &site.node, &mut s, &mut c, &mut site.docs);
        let status = schema::read_order(&hub.docs.lock().get(&name).unwrap(), name.as_str()).unwrap().progress;
        assert_eq!(status.map(|p| p.status), Some(oms_protocol::domain::FulfillmentState::Shipped));
        assert!(!hub.docs.lock().db().written(&name), "the site's change is in memory only");
        crate::orders::watch_once(&hub, false);
        assert!(hub.intake.live_fulfillments().unwrap().is_empty(), "the shipment was not acted on");
        assert!(hub.docs.lock().db().written(&name), "acted on a shipment a crash would lose");
    }

    /// A start that re-creates many documents (a `hub.redb` lost, or restored from an older copy) writes them as
    /// it goes once `docs_loaded_max` are loaded, as the sessions' flushes do, rather than holding every one in
    /// memory, dirty, until the first session flushes. Fails if `recover` never flushes.
    #[test]
    fn a_start_that_recreates_many_documents_writes_them_as_it_goes() {
        let dir = tempfile::tempdir().unwrap();
        let site = site();
        let names: Vec<DocId> = {
            let hub = hub_at(dir.path(), 1);
            assert!(hub.docs.lock().enroll(&site.node));
            flush_docs_blocking(&hub).unwrap();
            (0..24)
                .map(|i| {
                    let draft = oms_protocol::fixtures::draft(&format!("r{i}"), &Sku::parse("A").unwrap(), 1);
                    let key = format!("k{i}");
                    let placed = crate::demand::test_support::place_at(&hub, &site.node, &[("A", 100)], &key, draft, i);
                    // The intake committed; the hub dies before it builds the document.
                    schema::order_doc(&placed.effects.fulfillments[0].id).unwrap()
                })
                .collect()
        };
        let hub = hub_tuned(dir.path(), 2, ServerTuning { docs_loaded_max: 4, ..ServerTuning::default() });
        hub.docs.lock().set_cache_max(2);
        crate::orders::recover_in_slices(&hub, 5).unwrap();
        let docs = hub.docs.lock();
        assert!(docs.db().loaded() <= 4 + 5, "{} documents loaded after the start", docs.db().loaded());
        let unwritten: Vec<_> = names.iter().filter(|n| !docs.db().on_disk(n)).collect();
        assert!(unwritten.is_empty(), "each slice reached the bound, so each was written: {unwritten:?}");
    }

    /// The start that follows a crash between a new fulfillment document's early send and the flush that would
    /// have written it: the site holds the document, `hub.redb` does not. The start rebuilds it from
    /// `intake.redb` alone (`recover`, through the stored order and `NewFulfillment::of`, not the effects the
    /// intake handed over) hash for hash, so the site's next session finds both copies in sync: nothing refused,
    /// nothing quarantined, one change. It reads that order alone, not an earlier one whose document is there.
    /// A rebuild that differed in anything (its actor, its time, its part of the draft) would make the site's
    /// copy conflict with it.
    #[test]
    fn a_document_a_crash_lost_after_its_early_send_is_rebuilt_as_the_site_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let Site { node, docs: mut node_docs, _dir } = site();
        let hub_in = |actor: u8| hub_at(dir.path(), actor);
        let (name, held, earlier) = {
            let hub = hub_in(1);
            assert!(hub.docs.lock().enroll(&node));
            let (mut s, mut c) = sessions(&hub);
            exchange(&hub, &node, &mut s, &mut c, &mut node_docs);
            // An earlier order, its document on disk and at the site, as long before a crash.
            let earlier = oms_protocol::fixtures::draft("r", &Sku::parse("A").unwrap(), 1);
            let placed = crate::demand::test_support::place_at(&hub, &node, &[("A", 5)], "k0", earlier, 1_000);
            crate::orders::apply_effects(&hub, &placed.effects).unwrap();
            let earlier = schema::order_doc(&placed.effects.fulfillments[0].id).unwrap();
            flush_docs_blocking(&hub).unwrap();
            push_local(&hub, &node, &mut s);
            exchange(&hub, &node, &mut s, &mut c, &mut node_docs);
            let draft: oms_protocol::domain::OrderDraft = serde_json::from_value(serde_json::json!({
                "external_ref": "shop-7", "channel": "web",
                "lines": [{"sku": "A", "qty": 2, "unit_price_minor": 1_190, "currency": "EUR"},
                          {"sku": "Z", "qty": 1, "unit_price_minor": 5, "currency": "EUR"}],
                "ship_to": {"name": "Ann", "line1": "1 Main St", "city": "Berlin", "postcode": "10115",
                            "country": "DE", "lat": 52.520_008, "lon": 13.404_954},
                "contact": {"email": "ann@example.com", "phone": "+49 30 1234567"}
            }))
            .unwrap();
            let placed = crate::demand::test_support::place_at(&hub, &node, &[("A", 5)], "k1", draft, 1_234);
            // Z is nowhere: the site's part is A alone, a draft of its own.
            assert_eq!((placed.effects.fulfillments.len(), placed.order.unfilled.len()), (1, 1), "{placed:?}");
            crate::orders::apply_effects(&hub, &placed.effects).unwrap();
            let name = schema::order_doc(&placed.effects.fulfillments[0].id).unwrap();
            let mut docs = hub.docs.lock();
            let (fresh, rest) = docs.take_local_split(node.as_str());
            // The escrow view the order changed waits for the flush, as everything but a new document does.
            assert_eq!(
                (fresh, rest),
                (BTreeSet::from([name.clone()]), BTreeSet::from([schema::escrow_doc(&node).unwrap()]))
            );
            let early = early_frames(&mut s, &mut docs, &node, &BTreeSet::from([name.clone()]), &mut Vec::new());
            assert_eq!(docs_of(&early), BTreeSet::from([name.clone()]));
            drop(docs);
            for f in early {
                c.handle_frame(&mut node_docs, f);
            }
            let held = node_docs.db.heads(&name).expect("the site holds the document sent early");
            assert_eq!(held, hub.docs.lock().heads(&name));
            // The hub dies here: the flush that would have written the document never runs.
            (name, held, earlier)
        };
        let hub = hub_in(2);
        assert!(!hub.docs.lock().db().contains(&name), "the crash lost the document: nothing to test otherwise");
        let reads = hub.intake.start_reads();
        crate::orders::recover(&hub).unwrap();
        assert_eq!(hub.docs.lock().heads(&name), held, "rebuilt as another change than the site holds");
        assert_eq!(hub.intake.live_ids().unwrap().len(), 2);
        assert_eq!(hub.intake.start_reads() - reads, 1, "the start read the missing document's order alone");
        assert!(hub.docs.lock().take_changed().contains(&earlier), "the present one queued for the watcher");
        let (mut s, mut c) = sessions(&hub);
        let sent = exchange(&hub, &node, &mut s, &mut c, &mut node_docs);
        assert!(!sent.iter().any(|f| matches!(f, Frame::Refused { .. })), "{sent:?}");
        let mut docs = hub.docs.lock();
        assert_eq!(docs.status(&node).docs_refused, 0);
        assert_eq!((docs.heads(&name), node_docs.db.heads(&name)), (held.clone(), Some(held)));
        assert_eq!(docs.get(&name).unwrap().into_owned().get_changes(&[]).len(), 1, "one change, the record's");
    }

    /// A flush whose caller is dropped mid-commit (an HTTP handler's request timing out while the disk stalls)
    /// keeps the flushes' turn until its commit returns: a turn taken meanwhile would see its batch in flight
    /// and could take "nothing to write" for "all written". The stall here: a batch prepared earlier and not
    /// committed, whose turn the flush's commit waits for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_flush_keeps_the_turn_until_its_commit_returns() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub_at(dir.path(), 1);
        let first = create(&mut hub.docs.lock(), 1);
        let stalled = hub.docs.lock().prepare_flush().expect("a document to write");
        let second = create(&mut hub.docs.lock(), 2);
        let dropped = tokio::time::timeout(Duration::from_millis(100), flush_docs(&hub)).await;
        assert!(dropped.is_err(), "the flush's commit waits for the earlier batch");
        assert!(hub.persist.try_lock().is_err(), "the turn was given back with its commit in flight");
        std::thread::spawn(move || stalled.commit()).join().unwrap().unwrap();
        let mut waited = 0;
        while hub.persist.try_lock().is_err() {
            waited += 1;
            assert!(waited < 500, "the turn never came back");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let docs = hub.docs.lock();
        assert!(docs.db().written(&first) && docs.db().written(&second), "both batches committed");
    }

    fn docs_of(frames: &[Frame]) -> BTreeSet<DocId> {
        frames.iter().filter_map(frame_doc).cloned().collect()
    }

    /// Only fresh fulfillment documents go before the flush: one the hub wrote to after creating it waits for
    /// the flush with everything else, and so does a fresh one of which a frame is already queued (a
    /// document's frames keep their order).
    #[test]
    fn only_fresh_documents_go_before_the_flush() {
        let dir = tempfile::tempdir().unwrap();
        let mut docs = HubDocs::new(DocDb::open(&dir.path().join("hub.redb"), vec![9; 16], 1_000).unwrap()).unwrap();
        let node = NodeId::parse("wh-a").unwrap();
        assert!(docs.enroll(&node));
        let mut s = established(&mut docs, "wh-a");
        let (fresh, written) = (create(&mut docs, 1), create(&mut docs, 2));
        docs.write_local(&written, |d| schema::request_cancel(d, 9)).unwrap();
        let (early_docs, rest) = docs.take_local_split("wh-a");
        assert_eq!((early_docs.clone(), rest.clone()), (BTreeSet::from([fresh.clone()]), BTreeSet::from([written])));
        let mut out = Vec::new();
        let early = early_frames(&mut s, &mut docs, &node, &early_docs, &mut out);
        assert!(!early.is_empty() && docs_of(&early) == early_docs, "{early:?}");
        assert!(out.is_empty(), "{out:?}");

        // A fresh document with a frame of its own already queued goes after the flush, behind that frame.
        let queued = create(&mut docs, 3);
        let (early_docs, _) = docs.take_local_split("wh-a");
        let mut out = vec![Frame::Ack { doc: queued.clone(), heads: vec![] }];
        let early = early_frames(&mut s, &mut docs, &node, &early_docs, &mut out);
        assert!(early.is_empty(), "{early:?}");
        assert!(out.len() > 1 && out.iter().all(|f| frame_doc(f) == Some(&queued)), "{out:?}");
    }
}
