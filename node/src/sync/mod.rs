//! Node ↔ hub sync, node side: turns the store's change feed into Automerge documents and keeps one QUIC
//! connection to the hub that syncs them.
//!
//! Two tasks share a [`NodeDocs`] (the documents in `sync.redb`, beside `node.redb`):
//! - the *feed follower* wakes when the store's writer commits ([`Store::commit_watch`]; a slow
//!   [`SyncTuning::feed_poll_ms`] tick is only a safety net) and reads [`Store::feed_after`], writes each changed
//!   order and balance into its document ([`schema`]), and commits documents and the feed cursor in one
//!   transaction. It runs whether or not the hub is reachable, so the node never waits for the network and
//!   a restart resumes from the cursor without losing or repeating a change.
//! - the *link* connects to the hub (mutual TLS; the hub must present `oms://<tenant>/hub`), runs the
//!   sans-IO [`SyncSession`] over one bidirectional stream, tells it about documents the follower changed,
//!   and on any failure reconnects with exponential backoff and jitter ([`Backoff`]). After a reconnect the
//!   manifest exchange finds every document that differs, so nothing depends on remembering what was sent.

pub(crate) mod inbound;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oms_protocol::domain::{NodeId, Sku};
use oms_protocol::escrow::Party;
use oms_protocol::sync::automerge::{AutoCommit, ChangeHash};
use oms_protocol::sync::{Event, SessionConfig, SyncSession};
use oms_protocol::wire::{DocId, ErrorCode, FrameEncoder, PeerId, capabilities};
use oms_transport::backoff::Backoff;
use oms_transport::tls::{ClientTlsFiles, ReloadingServerVerifier, refusal_code};
use oms_transport::{Identity, Limits};
use tokio::sync::Notify;

use crate::config::HubLink;
use crate::metrics::Metrics;
use crate::store::{FeedEntry, Store};
use oms_protocol::schema::{self, DocKind};
use oms_service::{lock, now_ms};
use oms_sync::link::{self, LinkError};
use oms_sync::{Access, DocDb, DocDbError, SyncDocs};

/// File of the node's sync documents, in the data directory.
pub const SYNC_DB_FILE: &str = "sync.redb";
const FEED_CURSOR: &str = "feed.cursor";

/// Timers and limits of the node's sync.
#[derive(Debug, Clone)]
pub(crate) struct SyncTuning {
    /// Change-feed poll period.
    pub feed_poll_ms: u64,
    /// Feed entries applied per transaction.
    pub feed_batch_max: usize,
    /// Documents held in `sync.redb`.
    pub docs_max: usize,
    /// Documents remembered as changed while connected, before falling back to the periodic manifest.
    pub dirty_docs_max: usize,
    /// Reconnect backoff: first delay and cap.
    pub backoff_base_ms: u64,
    /// Reconnect backoff cap. Short, because a reconnect attempt costs one handshake, and the time from a
    /// healed path to the first synced order is at most about one `connect_timeout_ms` plus one backoff.
    pub backoff_cap_ms: u64,
    /// A handshake that has not completed in this time is abandoned and retried after the backoff: QUIC's
    /// own retransmission of the first packet backs off too, so waiting longer on an unreachable hub only
    /// delays noticing that it is back.
    pub connect_timeout_ms: u64,
    /// Deadline for connecting, opening the stream and writing a batch of frames.
    pub io_timeout_ms: u64,
    /// Session tick period (Hello retry, stall detection, anti-entropy manifest).
    pub tick_ms: u64,
    /// Decoded frames waiting for the session.
    pub frames_queued_max: usize,
    /// Ping the hub after this long without a frame from it.
    pub ping_after_ms: u64,
    /// Reconnect after this long without a UDP datagram from the hub although we pinged it: the path is
    /// down. A hub that is merely busy still acknowledges our pings at the QUIC level.
    pub silent_max_ms: u64,
    /// Reconnect after this long without a sync frame from the hub although its QUIC stack answers: the
    /// hub's session is stuck. Much longer than `silent_max_ms`, since a hub loaded by a hundred nodes
    /// catching up may take seconds to answer, and reconnecting would only add a manifest round to its load.
    pub stalled_max_ms: u64,
    /// Frames already queued that the link handles before one flush and one write of the answers.
    pub frames_per_flush_max: usize,
    /// After the hub sent an order document, the session holds its answers (flush and write) for up to this
    /// long, until the site's progress on it (`accepted`, written by the feed follower after the store's
    /// commit) is ready to go with them: one `sync.redb` flush and one write for both, and at the hub one
    /// pass for both ([`link::Linger`]). Never past `frames_per_flush_max` frames; 0 answers at once.
    pub answer_linger_ms: u64,
    /// Changed balances are written into the stock document at most this often (one Automerge change for all
    /// SKUs changed in the period, rather than one per feed batch), unless an acknowledgement of the hub's
    /// spending presses (see `ack_pressing`).
    pub stock_coalesce_ms: u64,
    /// SKUs waiting for the stock document; at this many they are written at once.
    pub stock_pending_max: usize,
    /// A receipt the hub acknowledged leaves the stock document once it is this old (`[receiving]
    /// receipt_prune_grace_ms`).
    pub receipt_prune_grace_ms: u64,
}

/// Receipts (PO and RMA together) removed from the stock document per feed pass; the rest go in the next.
pub(crate) const RECEIPTS_PRUNED_PER_PASS_MAX: usize = 1_000;
/// Acknowledgements read from the inbound document per pass (each kind).
const RECEIPT_ACKS_READ_MAX: usize = 20_000;

impl Default for SyncTuning {
    fn default() -> Self {
        Self {
            feed_poll_ms: 1_000,
            feed_batch_max: 256,
            docs_max: 1_000_000,
            dirty_docs_max: 100_000,
            backoff_base_ms: 200,
            backoff_cap_ms: 2_000,
            connect_timeout_ms: 2_000,
            io_timeout_ms: 10_000,
            tick_ms: 250,
            frames_queued_max: 256,
            ping_after_ms: 1_000,
            silent_max_ms: 3_000,
            stalled_max_ms: 60_000,
            frames_per_flush_max: 256,
            answer_linger_ms: link::ANSWER_LINGER_MS,
            stock_coalesce_ms: 250,
            stock_pending_max: 10_000,
            receipt_prune_grace_ms: 60_000,
        }
    }
}

/// Why sync could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SyncError {
    /// `sync.redb` could not be opened.
    #[error(transparent)]
    Db(#[from] DocDbError),
    /// The node id or tenant is not a valid certificate name.
    #[error("identity: {0}")]
    Identity(#[from] oms_transport::PkiError),
    /// The QUIC endpoint could not be created (certificate files missing or invalid).
    #[error("endpoint: {0}")]
    Endpoint(#[from] oms_transport::EndpointError),
    /// A peer id is out of bounds.
    #[error("peer id {0:?} is not valid")]
    PeerId(String),
}

/// Why the change feed could not be turned into documents (retried on the next poll).
#[derive(Debug, thiserror::Error)]
pub(crate) enum IngestError {
    /// Reading the store failed.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// Reading or writing `sync.redb` failed.
    #[error(transparent)]
    Db(#[from] DocDbError),
    /// A record could not be written into its document.
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
}

/// The node's documents, as the sync session sees them, and the balances waiting for the stock document.
pub(crate) struct NodeDocs {
    /// The documents in `sync.redb`, under this site's access policy.
    pub sync: SyncDocs<SiteAccess>,
    /// SKUs whose balance changed in the feed but is not yet in the stock document (bounded by
    /// `stock_pending_max`). Only in memory: after a restart [`repair_stock`] rewrites every balance.
    stock_pending: BTreeSet<Sku>,
    stock_written_ms: u64,
    /// Per SKU, how much of the hub's spending the stock document acknowledges (as last written), to tell
    /// when the ledger's acknowledgement ran far enough ahead that it must not wait for the period's end (see
    /// [`ack_pressing`]). At most [`ACKS_TRACKED_MAX`] SKUs; only in memory (a SKU not listed counts as 0,
    /// which at worst writes its balance early once).
    acks_written: HashMap<Sku, u64>,
    /// An acknowledgement pressed ([`ack_pressing`]) since the stock document was last written: the pending
    /// balances are written an eighth of the period after the last write, not at its end.
    ack_pressed: bool,
    /// When the next pruning of acknowledged receipts is due, ms: set when the hub's inbound document
    /// changes (new acknowledgements) and to the end of the grace of an acknowledged receipt kept for it;
    /// `None` when nothing is waiting. The stock document is pruned as well whenever it is written.
    prune_at_ms: Option<u64>,
}

impl NodeDocs {
    fn new(db: DocDb, node: NodeId) -> NodeDocs {
        NodeDocs {
            sync: SyncDocs::new(db, SiteAccess { node }),
            stock_pending: BTreeSet::new(),
            stock_written_ms: 0,
            acks_written: HashMap::new(),
            ack_pressed: false,
            // Once at start: acknowledgements may have arrived before a stop.
            prune_at_ms: Some(0),
        }
    }

    /// Asks the next feed pass to prune the stock document's acknowledged receipts (the inbound document
    /// changed).
    pub(crate) fn prune_soon(&mut self) {
        self.prune_at_ms = Some(0);
    }

    fn node(&self) -> &NodeId {
        &self.sync.access.node
    }

    /// The current generation of this site's stock document (see `oms_protocol::generations`).
    fn stock_name(&self) -> Option<DocId> {
        schema::stock_doc(self.node()).map(|base| self.sync.db.current(&base))
    }
}

/// What the hub may see of a site's documents: every order document (the hub's part travels back), and only
/// this site's stock and escrow documents.
pub(crate) struct SiteAccess {
    node: NodeId,
}

impl Access for SiteAccess {
    fn entitled(&self, _db: &DocDb, _hub: &PeerId, doc: &DocId) -> bool {
        match DocKind::of(doc) {
            Some(DocKind::Order(_)) => true,
            Some(DocKind::Stock(n) | DocKind::Escrow(n) | DocKind::Inbound(n)) => n == self.node,
            None => false,
        }
    }
    fn docs_for(&self, db: &DocDb, peer: &PeerId) -> Vec<DocId> {
        db.ids().filter(|d| self.entitled(db, peer, d)).collect()
    }
    fn manifest_heads(&self, db: &mut DocDb, peer: &PeerId) -> Vec<(DocId, Vec<ChangeHash>)> {
        let all = db.entries("", usize::MAX);
        all.into_iter().filter(|(d, _, _)| self.entitled(db, peer, d)).map(|(d, _, h)| (d, h)).collect()
    }
}

struct Shared {
    docs: Mutex<NodeDocs>,
    /// Documents the hub changed, for [`inbound`]; bounded by `dirty_docs_max`.
    inbound: Mutex<BTreeSet<DocId>>,
    inbound_changed: Notify,
    /// The hub's escrow view as the site last merged it whole or in part ([`inbound`]): the next merge reads
    /// only the counters that changed since.
    escrow_merged: Mutex<Option<inbound::EscrowMerged>>,
    /// When the last frame from the hub arrived, ms since the Unix epoch (0: never).
    last_hub_frame_ms: std::sync::atomic::AtomicU64,
    /// Documents the follower changed since the link last looked; bounded by `dirty_docs_max`.
    dirty: Mutex<BTreeSet<DocId>>,
    changed: Notify,
    tuning: SyncTuning,
    /// Up or down since when, for the screens.
    link: Arc<crate::metrics::HubLinkState>,
    /// Held by [`persist`] from prepare to commit.
    flush_turn: tokio::sync::Mutex<()>,
}

/// Starts the feed follower and the hub link for `store`, keeping documents in `data_dir/sync.redb`, and the
/// watch of the node's own certificate (reloaded when its files change; its remaining validity in `metrics`,
/// a warning in the log within 30 days of its end). The tasks run until the runtime shuts down.
pub(crate) fn spawn(
    link: &HubLink,
    store: Store,
    data_dir: &Path,
    site: &schema::SiteInfo,
    shipping: Option<&oms_protocol::shipping::ShippingSchedule>,
    tuning: SyncTuning,
    metrics: Arc<Metrics>,
) -> Result<(), SyncError> {
    let node = store.site().clone();
    let actor: [u8; 16] = rand::random();
    let mut db = DocDb::open(&data_dir.join(SYNC_DB_FILE), actor.to_vec(), tuning.docs_max)?;
    db.set_history_ops_min(link.state_history_ops_min);
    let me = Identity::node(&link.tenant, node.as_str())?;
    let hub = Identity::hub(&link.tenant)?;
    let files = ClientTlsFiles {
        ca: link.certs_dir.join("ca.pem"),
        crl: oms_transport::pki::crl_path(&link.certs_dir),
        crl_check_interval_ms: link.crl_check_interval_ms,
        cert: link.certs_dir.join(format!("{}.pem", me.file_stem())),
        key: link.certs_dir.join(format!("{}.key", me.file_stem())),
        cert_check_interval_ms: link.cert_check_interval_ms,
    };
    let bind: SocketAddr = if link.addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let tls = oms_transport::tls::client_tls(&files).map_err(oms_transport::EndpointError::from)?;
    let own = tls.own.clone();
    let trust = tls.hub.clone();
    let endpoint = oms_transport::client_endpoint_with(bind, tls.config, &Limits::default())?;
    let info = own.info();
    let link_state = metrics.hub_link.clone();
    link_state.configured.store(true, std::sync::atomic::Ordering::Relaxed);
    link_state.down(now_ms());
    metrics.set_certificate(&info.serial_hex(), info.not_after_unix_s);
    tokio::spawn(oms_transport::tls::watch_own_certificate(own, "node", link.cert_check_interval_ms, move |c| {
        metrics.set_certificate(&c.serial_hex(), c.not_after_unix_s)
    }));
    let mut docs = NodeDocs::new(db, node);
    publish_site(&mut docs, site, shipping)?;
    let shared = Arc::new(Shared { link: link_state, ..Shared::new(docs, tuning) });
    tokio::spawn(inbound::run(shared.clone(), store.clone(), link.clone()));
    tokio::spawn(follow_feed(shared.clone(), store));
    let peers = (
        PeerId::new(me.uri()).ok_or_else(|| SyncError::PeerId(me.uri()))?,
        PeerId::new(hub.uri()).ok_or_else(|| SyncError::PeerId(hub.uri()))?,
    );
    let hub = HubTrust { identity: hub, verifier: trust };
    tokio::spawn(keep_linked(shared, endpoint, link.clone(), hub, peers, actor.to_vec()));
    Ok(())
}

/// Writes the site's routing facts and shipping schedule into its stock document (durably) if they changed.
fn publish_site(
    docs: &mut NodeDocs,
    site: &schema::SiteInfo,
    shipping: Option<&oms_protocol::shipping::ShippingSchedule>,
) -> Result<(), SyncError> {
    let node = docs.node().clone();
    let Some(name) = docs.stock_name() else { return Ok(()) };
    let doc = docs.sync.db.get_or_create(&name)?;
    let now = now_ms();
    let info =
        schema::write_site_info(doc, &node, site, now).map_err(|e| SyncError::PeerId(format!("site info: {e}")))?;
    let schedule = schema::write_shipping(doc, &node, shipping, now)
        .map_err(|e| SyncError::PeerId(format!("shipping schedule: {e}")))?;
    let changed = info || schedule;
    if changed {
        doc.commit();
        docs.sync.db.mark_dirty(&name);
        docs.sync.db.flush()?;
    }
    Ok(())
}

/// The least gap between two stock writes an acknowledgement presses for ([`ack_pressing`]), ms.
fn ack_gap_ms(tuning: &SyncTuning) -> u64 {
    tuning.stock_coalesce_ms / 8
}

/// SKUs whose written acknowledgement [`NodeDocs::acks_written`] remembers.
const ACKS_TRACKED_MAX: usize = 100_000;

/// Writes one SKU's balance and its escrow counter (the site's view of the rights it shares with the hub)
/// into the stock document, noting the acknowledgement written in `acks`. Returns true if the document
/// changed.
fn write_sku(
    doc: &mut AutoCommit,
    acks: &mut HashMap<Sku, u64>,
    node: &NodeId,
    store: &Store,
    sku: &oms_protocol::domain::Sku,
    balance: &oms_protocol::domain::Balance,
    now: u64,
) -> Result<bool, IngestError> {
    let mut changed = schema::write_stock(doc, node, sku, balance, now)?;
    if let Some(c) = store.escrow(sku)? {
        changed |= schema::write_escrow(doc, node, &c, now)?;
        if acks.len() >= ACKS_TRACKED_MAX && !acks.contains_key(sku) {
            acks.clear();
        }
        acks.insert(sku.clone(), c.acked_spent(Party::Hub));
    }
    Ok(changed)
}

/// Whether the site acknowledged at least a quarter of the hub's unacknowledged budget on `sku` more than the
/// stock document says. The hub's budget refills only when it reads the acknowledgement there, so a hub
/// selling one SKU fast would run dry and backorder while the balance waited for the end of the coalescing
/// period: then the pending balances are written an eighth of the period after the last write ([`ack_gap_ms`];
/// one change for all of them, as at a period's end).
fn ack_pressing(docs: &NodeDocs, store: &Store, sku: &Sku) -> Result<bool, IngestError> {
    let Some(c) = store.escrow(sku)? else { return Ok(false) };
    let written = docs.acks_written.get(sku).copied().unwrap_or(0);
    Ok(c.acked_spent(Party::Hub).saturating_sub(written) >= (c.unacked_max(Party::Hub) / 4).max(1))
}

/// Pages of balances [`repair_stock`] reads, of [`STOCK_REPAIR_PAGE`] SKUs each.
const STOCK_REPAIR_PAGES_MAX: usize = 10_000;
const STOCK_REPAIR_PAGE: usize = 1_024;

/// Writes every balance into the stock document (a no-op for those already there). Run at start, because
/// balances waiting in [`NodeDocs::stock_pending`] when the process stopped are behind the feed cursor.
fn repair_stock(docs: &mut NodeDocs, store: &Store) -> Result<Vec<DocId>, IngestError> {
    let node = docs.node().clone();
    let Some(name) = docs.stock_name() else { return Ok(vec![]) };
    let now = now_ms();
    let mut changed = false;
    let mut after: Option<String> = None;
    for _ in 0..STOCK_REPAIR_PAGES_MAX {
        let page = store.balances(after.as_deref(), STOCK_REPAIR_PAGE)?;
        for (sku, balance) in &page {
            let doc = docs.sync.db.get_or_create(&name)?;
            changed |= write_sku(doc, &mut docs.acks_written, &node, store, sku, balance, now)?;
        }
        match page.last() {
            Some((sku, _)) if page.len() >= STOCK_REPAIR_PAGE => after = Some(sku.as_str().to_owned()),
            _ => break,
        }
    }
    if !changed {
        return Ok(vec![]);
    }
    if let Some(doc) = docs.sync.db.get_mut(&name) {
        doc.commit();
    }
    docs.sync.db.mark_dirty(&name);
    docs.sync.db.flush()?;
    Ok(vec![name])
}

/// One pass of the feed follower ([`ingest_pass`]) and its flush, at once.
#[cfg(test)]
fn ingest(docs: &mut NodeDocs, store: &Store, tuning: &SyncTuning) -> Result<Option<Vec<DocId>>, IngestError> {
    let changed = ingest_pass(docs, store, tuning)?;
    if changed.is_some() {
        docs.sync.db.flush()?;
    }
    Ok(changed)
}

/// Applies feed entries after the cursor to the documents, and writes the balances pending for the stock
/// document if `stock_coalesce_ms` passed (or an acknowledgement presses, [`ack_pressing`]). The documents
/// and the moved feed cursor are left dirty in `docs` for one flush to write together (after a crash, a
/// document and the cursor that produced it are both old or both new, and the feed is read again from the
/// old one). Returns the documents changed, or `None` if there was nothing to do.
fn ingest_pass(docs: &mut NodeDocs, store: &Store, tuning: &SyncTuning) -> Result<Option<Vec<DocId>>, IngestError> {
    let cursor = docs.sync.db.meta(FEED_CURSOR)?.unwrap_or(0);
    let entries = store.feed_after(cursor, tuning.feed_batch_max)?;
    let last = entries.last().map(|(seq, _)| *seq);
    let now = now_ms();
    let node = docs.node().clone();
    let stock_name = docs.stock_name();
    let mut changed = BTreeSet::new();
    let mut frozen = Vec::new();
    let mut pending_full = false;
    for (_, entry) in entries {
        match entry {
            FeedEntry::Order(id) => {
                // The record and its freeze from one snapshot: a frozen order's document gets its final
                // progress and `frozen_at_ms` in the same change, its last.
                let Some((rec, frozen_at)) = store.order_and_frozen_at(&id)? else { continue };
                let Some(name) = schema::order_doc(&id) else { continue };
                let doc = docs.sync.db.get_or_create(&name)?;
                let mut wrote = schema::write_order(doc, &node, &rec, now)?;
                if let Some(at) = frozen_at
                    && schema::write_frozen(doc, at)?
                {
                    wrote = true;
                    frozen.push(name.clone());
                }
                if wrote {
                    changed.insert(name);
                }
            }
            FeedEntry::Stock(sku) => {
                if !docs.ack_pressed && ack_pressing(docs, store, &sku)? {
                    docs.ack_pressed = true;
                }
                if docs.stock_pending.len() < tuning.stock_pending_max {
                    docs.stock_pending.insert(sku);
                } else {
                    pending_full = true;
                    if let Some(balance) = store.balance(&sku)?
                        && let Some(name) = stock_name.clone()
                        && write_sku(
                            docs.sync.db.get_or_create(&name)?,
                            &mut docs.acks_written,
                            &node,
                            store,
                            &sku,
                            &balance,
                            now,
                        )?
                    {
                        changed.insert(name);
                    }
                }
            }
            FeedEntry::Catalog(_) => {}
            FeedEntry::Receipt(id) => {
                // The hub applies each receipt once, by its id; unplanned lines are the site's alone.
                let Some(r) = store.po_receipt(&id)? else { continue };
                let lines = r.lines.iter().filter_map(|l| Some((l.line?, u64::from(l.qty)))).collect();
                let site = schema::SiteReceipt { id: r.id, po: r.po, asn: r.asn, lines, at_ms: r.at_ms };
                if let Some(name) = stock_name.clone()
                    && schema::write_receipt(docs.sync.db.get_or_create(&name)?, &node, &site, now)?
                {
                    changed.insert(name);
                }
            }
            FeedEntry::RmaReceipt(id) => {
                // The hub applies each receipt against an RMA once, by its id.
                let Some(r) = store.rma_receipt(&id)? else { continue };
                if let Some(name) = stock_name.clone()
                    && schema::write_rma_receipt(docs.sync.db.get_or_create(&name)?, &node, &r, now)?
                {
                    changed.insert(name);
                }
            }
        }
    }
    let since = now.saturating_sub(docs.stock_written_ms);
    // A pressing acknowledgement waits at most an eighth of the period, and no more often than that: a hub
    // selling fast gets its budget back within ~30 ms, and the stock document (whose every change the hub
    // checks and merges) changes at most eight times a period for it.
    let due = since >= tuning.stock_coalesce_ms || pending_full || (docs.ack_pressed && since >= ack_gap_ms(tuning));
    if due && !docs.stock_pending.is_empty() {
        if let Some(name) = stock_name.clone() {
            for sku in &docs.stock_pending {
                let Some(balance) = store.balance(sku)? else { continue };
                let doc = docs.sync.db.get_or_create(&name)?;
                if write_sku(doc, &mut docs.acks_written, &node, store, sku, &balance, now)? {
                    changed.insert(name.clone());
                }
            }
        }
        docs.stock_pending.clear();
        docs.stock_written_ms = now;
        docs.ack_pressed = false;
    }
    if let Some(name) = stock_name.clone()
        && (changed.contains(&name) || docs.prune_at_ms.is_some_and(|at| at <= now))
        && prune(docs, &name, tuning, now)?
    {
        changed.insert(name);
    }
    if last.is_none() && changed.is_empty() {
        return Ok(None);
    }
    for name in &changed {
        if let Some(doc) = docs.sync.db.get_mut(name) {
            doc.commit();
        }
        docs.sync.db.mark_dirty(name);
    }
    // A stock document whose history grew long starts its next generation, written with this flush.
    if let Some(name) = &stock_name
        && changed.contains(name)
        && let Some(base) = schema::stock_doc(&node)
        && let Some(next) = docs.sync.db.rotate_if_due(&base)?
    {
        changed.remove(name);
        changed.insert(next);
    }
    // A frozen order's document does not change any more: store it as one full save.
    for name in &frozen {
        docs.sync.db.compact(name);
    }
    if let Some(last) = last {
        docs.sync.db.set_meta(FEED_CURSOR, last);
    }
    Ok(Some(changed.into_iter().collect()))
}

/// Removes from the stock document `name` the receipts the hub acknowledged as applied in its inbound
/// document that are past the grace period, at most [`RECEIPTS_PRUNED_PER_PASS_MAX`]; schedules the next
/// pass for those kept for their grace (or for the bound). Receipts the hub has not acknowledged (a site cut
/// off keeps all it books) are never removed. Returns true if the document changed (not yet committed).
fn prune(docs: &mut NodeDocs, name: &DocId, tuning: &SyncTuning, now: u64) -> Result<bool, IngestError> {
    docs.prune_at_ms = None;
    let Some(inbound) = schema::inbound_doc(docs.node()).map(|base| docs.sync.db.current(&base)) else {
        return Ok(false);
    };
    let acks = match docs.sync.db.read(&inbound) {
        Some(d) => schema::read_receipt_acks(&d, RECEIPT_ACKS_READ_MAX)?,
        None => return Ok(false),
    };
    if acks.po.is_empty() && acks.rma.is_empty() {
        return Ok(false);
    }
    let Some(doc) = docs.sync.db.get_mut(name) else { return Ok(false) };
    let grace = tuning.receipt_prune_grace_ms;
    let pruned = schema::prune_receipts(doc, &acks, now, grace, RECEIPTS_PRUNED_PER_PASS_MAX)?;
    let removed = pruned.receipts + pruned.rma_receipts;
    // At the bound, the rest in the next pass; otherwise when the first one kept for its grace is due.
    docs.prune_at_ms = if removed >= RECEIPTS_PRUNED_PER_PASS_MAX { Some(now) } else { pruned.next_at_ms };
    if removed > 0 {
        tracing::debug!(
            receipts = pruned.receipts,
            rma_receipts = pruned.rma_receipts,
            "sync: pruned receipts the hub applied"
        );
    }
    Ok(removed > 0)
}

async fn follow_feed(shared: Arc<Shared>, store: Store) {
    let mut tick = tokio::time::interval(Duration::from_millis(shared.tuning.feed_poll_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let coalesce = Duration::from_millis(shared.tuning.stock_coalesce_ms.max(1));
    let mut failing = false;
    let mut repaired = false;
    let mut commits = store.commit_watch();
    // Whatever was committed before this follower started is read at once.
    commits.mark_changed();
    loop {
        if !repaired {
            match repair_stock(&mut lock(&shared.docs), &store) {
                Ok(changed) => {
                    repaired = true;
                    lock(&shared.dirty).extend(changed);
                    shared.changed.notify_one();
                }
                Err(e) => {
                    if !failing {
                        tracing::error!(error = %e, "sync: cannot write balances into the stock document; retrying");
                    }
                    failing = true;
                }
            }
        }
        let (stock_pending, pressed) = {
            let docs = lock(&shared.docs);
            (!docs.stock_pending.is_empty(), docs.ack_pressed)
        };
        // Wake on the store's commit signal, or when pending balances are due (sooner if an acknowledgement
        // presses); the tick is only a safety net.
        let wait = if pressed { Duration::from_millis(ack_gap_ms(&shared.tuning).max(1)) } else { coalesce };
        tokio::select! {
            // The sender lives as long as the store does, which this task holds: `changed` does not fail.
            _ = commits.changed() => {}
            () = tokio::time::sleep(wait), if stock_pending => {}
            _ = tick.tick() => {}
        }
        // Drain what is there in bounded batches, then wait for the next tick.
        for _ in 0..64 {
            let (result, waiting) = {
                let mut docs = lock(&shared.docs);
                let result = ingest_pass(&mut docs, &store, &shared.tuning);
                (result, docs.sync.db.dirty_docs())
            };
            // While a session is up it writes what a pass changed with its own flush, which it makes before it
            // sends anything (`persist`): one `sync.redb` commit a round rather than two. Without one (or with
            // more waiting than a round should carry) the follower flushes itself, as the session does: the
            // fsync off the documents' lock and off this async worker.
            let flush_here = matches!(result, Ok(Some(_))) && (!linked(&shared) || waiting > FOLLOWER_DIRTY_MAX);
            let result =
                if flush_here { persist(&shared).await.map_err(IngestError::from).and(result) } else { result };
            match result {
                Ok(None) => {
                    failing = false;
                    break;
                }
                Ok(Some(changed)) => {
                    failing = false;
                    let mut dirty = lock(&shared.dirty);
                    for d in changed {
                        if dirty.len() >= shared.tuning.dirty_docs_max {
                            break; // The periodic round (digest, then manifest) finds the rest.
                        }
                        dirty.insert(d);
                    }
                    drop(dirty);
                    shared.changed.notify_one();
                }
                Err(e) => {
                    if !failing {
                        tracing::error!(error = %e, "sync: cannot follow the change feed; retrying");
                    }
                    failing = true;
                    break;
                }
            }
        }
    }
}

/// Who the hub must be, and the verifier of its certificate (CA bundle and CRL, reloaded).
struct HubTrust {
    identity: Identity,
    verifier: Arc<ReloadingServerVerifier>,
}

async fn keep_linked(
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    link: HubLink,
    hub: HubTrust,
    peers: (PeerId, PeerId),
    actor: Vec<u8>,
) {
    let mut backoff = Backoff::new(shared.tuning.backoff_base_ms, shared.tuning.backoff_cap_ms, rand::random());
    loop {
        let ended = run_session(&shared, &endpoint, &link, &hub, &peers, &actor, &mut backoff).await;
        shared.link.down(now_ms());
        match ended {
            Ok(()) => tracing::info!(hub = %link.addr, "sync: session ended"),
            Err(e @ LinkError::Closed { code: ErrorCode::Revoked, .. }) => tracing::error!(hub = %link.addr,
                error = %e, "sync: link down: the hub says this node's certificate is revoked; it needs a new one \
                (oms ca renew), copied into its certs_dir"),
            Err(e @ LinkError::Closed { code: ErrorCode::CertificateExpired, by_peer: true, .. }) => {
                tracing::error!(hub = %link.addr, error = %e, "sync: link down: the hub says this node's \
                    certificate expired; it needs a new one (oms ca renew), copied into its certs_dir")
            }
            Err(e) => tracing::warn!(hub = %link.addr, error = %e, attempt = backoff.attempts(), "sync: link down"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// One connection's life. Resets `backoff` once the hub accepted us.
async fn run_session(
    shared: &Shared,
    endpoint: &quinn::Endpoint,
    link: &HubLink,
    hub: &HubTrust,
    (me, hub_peer): &(PeerId, PeerId),
    actor: &[u8],
    backoff: &mut Backoff,
) -> Result<(), LinkError> {
    let io_timeout = Duration::from_millis(shared.tuning.io_timeout_ms);
    let frame_max = Limits::default().frame_bytes_max;
    let connect_timeout = Duration::from_millis(shared.tuning.connect_timeout_ms);
    let conn = oms_transport::connect(endpoint, link.addr, &link.server_name, connect_timeout).await?;
    let seen = oms_transport::peer_identity(&conn)?;
    if seen != hub.identity {
        oms_transport::close(&conn, ErrorCode::Unauthorized, "not our hub");
        return Err(LinkError::WrongPeer { seen: seen.to_string(), expected: hub.identity.to_string() });
    }
    let mut hub_cert = HubCert::of(&conn, &hub.verifier);
    let (mut send, recv) = oms_transport::open_bi(&conn, io_timeout).await?;
    let mut frames = link::spawn_reader(recv, frame_max, shared.tuning.frames_queued_max);
    let mut config = session_config();
    if !link.compress {
        config.capabilities &= !capabilities::DEFLATE;
    }
    let mut session = SyncSession::new_client(config, me.clone(), hub_peer.clone(), actor.to_vec(), now_ms());
    let mut encoder = FrameEncoder::new(frame_max);
    // The manifest exchange covers everything changed so far.
    lock(&shared.dirty).clear();
    let mut tick = tokio::time::interval(Duration::from_millis(shared.tuning.tick_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut out = Vec::new();
    let connected_at = now_ms();
    let mut last_ping = 0u64;
    let mut datagrams = (conn.stats().udp_rx.datagrams, connected_at);
    let mut linger = link::Linger::new(shared.tuning.answer_linger_ms, shared.tuning.frames_per_flush_max);
    loop {
        while let Some(f) = session.poll_transmit() {
            out.push(f);
        }
        let mut closed = None;
        // The hub sent an order document (an assignment, or a change to one): its progress follows.
        let mut assigned = false;
        {
            let mut docs = lock(&shared.docs);
            while let Some(ev) = session.poll_event() {
                match ev {
                    Event::Established { capabilities, .. } => {
                        if capabilities & capabilities::DEFLATE != 0 {
                            encoder.enable_deflate();
                        }
                        backoff.reset();
                        shared.link.up(now_ms());
                        tracing::info!(hub = %link.addr, "sync: connected");
                    }
                    Event::DocChanged { doc } => {
                        docs.sync.db.mark_dirty(&doc);
                        // A change that reached a frozen order anyway (the hub's, concurrent with the freeze):
                        // keep the document one full save.
                        if docs.sync.db.get(&doc).and_then(schema::frozen_at_ms).is_some() {
                            docs.sync.db.compact(&doc);
                        }
                        assigned |= matches!(DocKind::of(&doc), Some(DocKind::Order(_)));
                        let mut inbound = lock(&shared.inbound);
                        if inbound.len() < shared.tuning.dirty_docs_max {
                            inbound.insert(doc);
                        }
                        drop(inbound);
                        shared.inbound_changed.notify_one();
                    }
                    // An older generation of a state document crossing its replacement on the wire: expected.
                    Event::PeerRefused { doc, code } if docs.sync.db.is_superseded(&doc) => {
                        tracing::debug!(%doc, %code, "sync: hub refused an older generation")
                    }
                    Event::PeerRefused { doc, code } => tracing::warn!(%doc, %code, "sync: hub refused a document"),
                    Event::DocFailed { doc, code } => tracing::warn!(%doc, %code, "sync: document failed"),
                    Event::DocInSync { .. } => {}
                    Event::Limited { doc, code } => {
                        tracing::warn!(doc = ?doc.as_ref().map(DocId::as_str), %code, "sync: a bound refused what the hub sent");
                    }
                    Event::Closed { code, reason, by_peer } => closed = Some((code, reason, by_peer)),
                }
            }
        }
        if !linger.holds(tokio::time::Instant::now(), assigned, closed.is_some()) {
            // Persist what the hub sent before answering it; one flush covers every frame handled since the last.
            persist(shared).await?;
            link::write_frames(&mut send, &out, &mut encoder, io_timeout).await?;
            out.clear();
        }
        if let Some((code, reason, by_peer)) = closed {
            while let Some(f) = session.poll_transmit() {
                out.push(f);
            }
            let _ = link::write_frames(&mut send, &out, &mut encoder, io_timeout).await;
            oms_transport::close(&conn, code, &reason);
            return Err(LinkError::Closed { code, reason, by_peer });
        }
        tokio::select! {
            frame = frames.recv() => match frame {
                Some(Ok(frame)) => {
                    shared.last_hub_frame_ms.store(now_ms(), std::sync::atomic::Ordering::Relaxed);
                    let mut docs = lock(&shared.docs);
                    linger.handled(&frame);
                    session.handle_frame(&mut docs.sync, frame);
                    // Take what else is already queued (bounded) before the next flush and write.
                    while linger.has_room() {
                        match frames.try_recv() {
                            Ok(Ok(frame)) => {
                                linger.handled(&frame);
                                session.handle_frame(&mut docs.sync, frame);
                            }
                            Ok(Err(e)) => {
                                oms_transport::close(&conn, e.code(), &e.to_string());
                                return Err(e.into());
                            }
                            Err(_) => break,
                        }
                    }
                }
                Some(Err(e)) => {
                    let err = read_failed(&conn, e);
                    if let LinkError::Frames(e) = &err {
                        oms_transport::close(&conn, e.code(), &e.to_string());
                    }
                    return Err(err);
                }
                None => return Ok(()),
            },
            () = linger.expired() => {}
            () = shared.changed.notified() => {
                // The site's own changes (its progress on what it was sent, among others) go now, with any
                // answers held for them.
                linger.release();
                let changed = std::mem::take(&mut *lock(&shared.dirty));
                let mut docs = lock(&shared.docs);
                for doc in &changed {
                    session.local_change(&mut docs.sync, doc);
                }
            }
            _ = tick.tick() => {
                let now = now_ms();
                if let Some((code, reason)) = hub_cert.refused(&hub.verifier, &link.server_name, now) {
                    tracing::error!(hub = %link.addr, %code, serial = %hub_cert.serial_hex,
                        not_after_unix_s = hub_cert.not_after_unix_s, "sync: closing the link: {reason}");
                    oms_transport::close(&conn, code, reason);
                    return Err(LinkError::Closed { code, reason: reason.to_owned(), by_peer: false });
                }
                session.tick(&mut lock(&shared.docs).sync, now);
                // Liveness: ping a quiet hub, and give up on a path that stays silent or a session that stalls.
                let heard = shared.last_hub_frame_ms.load(std::sync::atomic::Ordering::Relaxed).max(connected_at);
                let silent_ms = now.saturating_sub(heard);
                let rx = conn.stats().udp_rx.datagrams;
                if rx != datagrams.0 {
                    datagrams = (rx, now);
                }
                if session.is_established()
                    && let Some(e) = liveness(now, heard, datagrams.1, &shared.tuning)
                {
                    oms_transport::close(&conn, ErrorCode::NoError, "the hub went silent; reconnecting");
                    return Err(e);
                }
                if session.is_established()
                    && silent_ms >= shared.tuning.ping_after_ms
                    && now.saturating_sub(last_ping) >= shared.tuning.ping_after_ms
                {
                    out.push(oms_protocol::wire::Frame::Ping { nonce: now });
                    last_ping = now;
                    linger.answer_now();
                }
            }
        }
    }
}

/// The hub's certificate on a live link, held to the node's trust as it changes: its `not_after`, and the
/// verifier generation it was last verified against.
struct HubCert {
    chain: Vec<quinn::rustls::pki_types::CertificateDer<'static>>,
    serial_hex: String,
    not_after_unix_s: i64,
    generation: u64,
}

impl HubCert {
    fn of(conn: &quinn::Connection, verifier: &ReloadingServerVerifier) -> HubCert {
        let info = oms_transport::peer_cert_info(conn).ok();
        HubCert {
            chain: oms_transport::peer_certificates(conn).unwrap_or_default(),
            serial_hex: info.as_ref().map(|i| i.serial_hex()).unwrap_or_default(),
            // Verified at the handshake, so it parses; if it did not, the expiry check leaves it to re-checks.
            not_after_unix_s: info.map_or(i64::MAX, |i| i.not_after_unix_s),
            generation: verifier.generation(),
        }
    }

    /// Why the link must close now, if it must: the hub's certificate passed its `not_after` (valid through
    /// that second, as webpki counts), or a CA bundle or CRL loaded since the last look refuses it. Looks at
    /// the files if `crl_check_interval_ms` has passed.
    fn refused(
        &mut self,
        verifier: &ReloadingServerVerifier,
        server_name: &str,
        now_ms: u64,
    ) -> Option<(ErrorCode, &'static str)> {
        let now_s = i64::try_from(now_ms / 1_000).unwrap_or(i64::MAX);
        if self.not_after_unix_s < now_s {
            return Some((ErrorCode::CertificateExpired, "the hub's certificate expired"));
        }
        verifier.check();
        let generation = verifier.generation();
        if generation == self.generation {
            return None;
        }
        self.generation = generation;
        let e = verifier.verify_now(&self.chain, server_name).err()?;
        Some(match refusal_code(&e) {
            ErrorCode::Revoked => (ErrorCode::Revoked, "the hub's certificate is revoked by the node's crl.pem"),
            ErrorCode::CertificateExpired => (ErrorCode::CertificateExpired, "the hub's certificate expired"),
            code => (code, "the hub's certificate is refused by the node's changed ca.pem or crl.pem"),
        })
    }
}

/// Why reading from the hub failed: the hub's close code and reason when it closed the connection (such as
/// [`ErrorCode::Revoked`]), else the read error itself.
fn read_failed(conn: &quinn::Connection, e: oms_transport::FrameIoError) -> LinkError {
    let Some(closed) = conn.close_reason() else { return e.into() };
    match (oms_transport::close_code(&closed), &closed) {
        (Some(code), quinn::ConnectionError::ApplicationClosed(close)) => {
            LinkError::Closed { code, reason: String::from_utf8_lossy(&close.reason).into_owned(), by_peer: true }
        }
        _ => e.into(),
    }
}

/// Whether a connection is dead: nothing at all from the hub for `silent_max_ms` (the path is down; a
/// fresh connection finds it again sooner than QUIC's backed-off retransmissions), or datagrams but no
/// sync frame for `stalled_max_ms` (the hub's session is stuck). `heard_ms` is the last sync frame's time,
/// `datagram_ms` the last time the QUIC connection received a datagram (both at least the connection's).
fn liveness(now_ms: u64, heard_ms: u64, datagram_ms: u64, tuning: &SyncTuning) -> Option<LinkError> {
    let silent_ms = now_ms.saturating_sub(heard_ms);
    let quiet_ms = now_ms.saturating_sub(datagram_ms.max(heard_ms));
    if quiet_ms >= tuning.silent_max_ms || silent_ms >= tuning.stalled_max_ms {
        Some(LinkError::Silent { silent_ms })
    } else {
        None
    }
}

impl Shared {
    /// Nothing changed, nothing heard from the hub yet.
    fn new(docs: NodeDocs, tuning: SyncTuning) -> Shared {
        Shared {
            docs: Mutex::new(docs),
            inbound: Mutex::new(BTreeSet::new()),
            inbound_changed: Notify::new(),
            escrow_merged: Mutex::new(None),
            last_hub_frame_ms: std::sync::atomic::AtomicU64::new(0),
            dirty: Mutex::new(BTreeSet::new()),
            changed: Notify::new(),
            tuning,
            link: Arc::new(crate::metrics::HubLinkState::default()),
            flush_turn: tokio::sync::Mutex::new(()),
        }
    }
}

/// Most documents the feed follower leaves for the session's flush; beyond it, it flushes them itself.
const FOLLOWER_DIRTY_MAX: usize = 1_024;

/// True while a sync session with the hub is established (it flushes before it sends).
fn linked(shared: &Shared) -> bool {
    shared.link.up_since_ms.load(std::sync::atomic::Ordering::Relaxed) != 0
}

/// Writes what the session or the feed follower changed to `sync.redb`, with the disk I/O outside the
/// documents' lock. One at a time (`flush_turn`): a caller whose prepare finds nothing new still waits for a
/// batch another caller prepared to commit, so what it is about to send is on disk when it returns.
async fn persist(shared: &Shared) -> Result<(), DocDbError> {
    let _turn = shared.flush_turn.lock().await;
    let Some(batch) = lock(&shared.docs).sync.db.prepare_flush() else { return Ok(()) };
    match tokio::task::spawn_blocking(move || batch.commit()).await {
        Ok(result) => result,
        // The batch was dropped uncommitted; the next flush writes its contents.
        Err(e) => Err(DocDbError::FlushTask { path: SYNC_DB_FILE.into(), source: e }),
    }
}

/// The session limits a node uses: the defaults, with an anti-entropy round every 15 s (a manifest digest
/// where the hub reads them, answered with full manifests only if it differs) so that a document missed by
/// the dirty set (which is bounded) still syncs promptly, and up to 256 documents in flight so that a
/// catch-up fills each flush and each write.
pub(crate) fn session_config() -> SessionConfig {
    SessionConfig { manifest_interval_ms: 15_000, docs_in_flight_max: 256, ..SessionConfig::default() }
}

#[cfg(test)]
mod freeze_tests {
    use super::tests::{drain, open_docs};
    use super::*;
    use crate::store::{PickConfirmation, cmd};
    use crate::test_support::{movement, store_with_catalog};
    use oms_protocol::domain::{FulfillmentState, Movement, OrderId};
    use oms_protocol::fixtures;

    #[test]
    fn the_follower_writes_the_freeze_last_and_compacts_the_document() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = store_with_catalog(dir.path(), &["A"]).await;
            movement(&store, "A", Movement::Receipt { qty: 5, note: None }).await;
            let sku = Sku::parse("A").unwrap();
            let cmd = cmd::CreateOrder { key: "k".into(), draft: fixtures::draft("w", &sku, 1) };
            let id: OrderId = store.execute(cmd).await.unwrap().record.id;
            let name = schema::order_doc(&id).unwrap();
            let path = dir.path().join(SYNC_DB_FILE);

            // Each step written by its own follower pass: one full save, then increments.
            let mut docs = open_docs(&path, 1);
            drain(&mut docs, &store);
            store.execute(cmd::CreateWave { orders_max: 1 }).await.unwrap();
            drain(&mut docs, &store);
            let lines = vec![PickConfirmation { sku: sku.clone(), picked: 1 }];
            store.execute(cmd::ConfirmPicks { order: id.clone(), lines, reason: None }).await.unwrap();
            drain(&mut docs, &store);
            store.execute(cmd::Pack { order: id.clone(), parcels: 1, consignment: None }).await.unwrap();
            drain(&mut docs, &store);
            store.execute(cmd::Ship { order: id.clone(), carrier: "DHL".into(), tracking: "T".into() }).await.unwrap();
            drain(&mut docs, &store);
            drop(docs);
            let (full, increments) = oms_sync::docdb::stored_doc_parts(&path, name.as_str()).unwrap();
            assert!(full.is_some() && increments >= 3, "{full:?} {increments}");

            // Frozen in the store: the follower writes it into the document and compacts its storage.
            let cmd = cmd::Freeze { return_window_ms: 0, orders_max: 10, after: None };
            let frozen = store.execute(cmd).await.unwrap().frozen;
            assert_eq!(frozen, vec![id.clone()]);
            let at = store.frozen_at(&id).unwrap().unwrap();
            let mut docs = open_docs(&path, 1);
            drain(&mut docs, &store);
            let doc = docs.sync.db.get(&name).unwrap();
            assert_eq!(schema::frozen_at_ms(doc), Some(at));
            let view = schema::read_order(doc, name.as_str()).unwrap();
            assert_eq!(view.progress.unwrap().status, FulfillmentState::Shipped);
            let heads = docs.sync.db.get_mut(&name).unwrap().get_heads();
            drop(docs);
            assert_eq!(
                oms_sync::docdb::stored_doc_parts(&path, name.as_str()).unwrap().1,
                0,
                "one full save, no increments"
            );

            // Replaying the whole feed (a crash before the cursor moved) adds no change.
            let mut docs = open_docs(&path, 1);
            docs.sync.db.set_meta(FEED_CURSOR, 0);
            drain(&mut docs, &store);
            assert_eq!(docs.sync.db.get_mut(&name).unwrap().get_heads(), heads);
            drop(docs);
            assert_eq!(oms_sync::docdb::stored_doc_parts(&path, name.as_str()).unwrap().1, 0);
            store.close();
        });
    }
}

#[cfg(test)]
mod liveness_tests {
    use super::*;

    #[test]
    fn a_busy_hub_that_acknowledges_datagrams_is_not_dropped_a_silent_path_is() {
        let t = SyncTuning { silent_max_ms: 3_000, stalled_max_ms: 60_000, ..SyncTuning::default() };
        // No sync frame for 10 s, but datagrams (QUIC acknowledgements of our pings) a moment ago: busy, alive.
        assert!(liveness(20_000, 10_000, 19_500, &t).is_none());
        // Nothing at all for 3 s: the path is down.
        assert!(matches!(liveness(13_000, 10_000, 10_000, &t), Some(LinkError::Silent { silent_ms: 3_000 })));
        assert!(liveness(12_999, 10_000, 10_000, &t).is_none());
        // A sync frame counts as a datagram too.
        assert!(liveness(12_000, 11_000, 0, &t).is_none());
        // Datagrams keep coming but no sync frame for a minute: the hub's session is stuck.
        assert!(matches!(liveness(70_000, 10_000, 69_900, &t), Some(LinkError::Silent { silent_ms: 60_000 })));
    }
}
