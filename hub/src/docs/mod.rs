//! The hub's documents: every node's orders and stock in one [`DocDb`] (`hub.redb`), who may see each one,
//! and the check that every change a node sends touches only what that node owns.
//!
//! Entitlement: a node sees an order document if it created the order or the order is assigned to it
//! (`origin` or `site`), and only its own stock document. A document the hub does not hold yet is entitled
//! to the node whose id numbers it (`order/<node>-<seq>`), because only that node can create it.
//!
//! Ownership: the sans-IO session applies a node's sync message to the document before the hub sees it, so
//! [`HubDocs::check_applied`] runs right after each frame, diffs the document from the heads it had before
//! ([`schema::check_writer`]), and on a violation puts the document back as it was (a fork at the old heads)
//! and quarantines the (node, document) pair: from then on the session answers `Refused` for it, while the
//! node's other documents, and every other node, carry on. Quarantines are counted, logged and persisted.
//!
//! Parties are enrolled nodes: a node gets a party number when it connects with a valid certificate
//! ([`HubDocs::enroll`]), the hub has one of its own, and nothing a node writes creates one. An order whose
//! origin or site is not enrolled is labelled as having no parties (entitled by its id alone), so the party
//! table (at most [`PARTIES_MAX`]) fills only with nodes the CA certified, and one node can take one entry.
//! Only order documents have parties: a node's stock document is its own, whatever keys it writes into it.
//!
//! Quotas: each node may cause at most `docs_max` documents to exist (those it creates: its orders and its
//! stock document) and `stored_bytes_max` bytes to be stored (what the documents it writes take on disk when
//! the hub starts, plus what each change it sent since weighed), [`NodeQuota`]. A change beyond them is
//! refused before it is applied ([`ErrorCode::QuotaExceeded`] to that node); other nodes are unaffected.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use oms_protocol::domain::NodeId;
use oms_protocol::schema::{self, DocKind, Writer};
use oms_protocol::shipping::Schedule;
use oms_protocol::sync::automerge::{AutoCommit, ChangeHash};
use oms_sync::{DocDb, DocDbError, FlushBatch, SyncDocs};

use oms_protocol::wire::DocId;

mod parties;
mod usage;

pub use parties::{Parties, node_of};
pub use usage::{NODE_DOCS_MAX, NODE_STORED_BYTES_MAX, NodeQuota, STORED_RECOUNT_MS, Usage};

use parties::{PARTY_PREFIX, is_party, split_label, unlabelled_orders};

// What the module docs and the unit tests (`use super::*`) name that this file's code no longer uses.
#[cfg(any(test, doc))]
use oms_protocol::wire::ErrorCode;
#[cfg(test)]
use {oms_protocol::wire::PeerId, parties::OTHERS_BUILT};

const QUARANTINE_PREFIX: &str = "quarantine|";
/// Documents remembered as changed by nodes (for the intake's watcher, whose pass takes them all) or by the
/// hub (for the sessions); beyond this the watcher's go to its backlog and the sessions rely on the periodic
/// manifest. Documents queued again ([`HubDocs::requeue_docs`]) fill at most half of the watcher's, so that
/// the nodes' changes always find room.
pub const CHANGED_MAX: usize = 100_000;
/// Documents for the watcher beyond [`CHANGED_MAX`] (a start's open work, a pass that could not act, a burst
/// of nodes' changes): held once each and handed out [`BACKLOG_PER_PASS`] a pass, in the order of their names
/// (a start queues the stock documents first, into the pass itself). Beyond this (two million open
/// fulfillments at a start, about 130 MB of ids) the rest are dropped and counted
/// ([`HubDocs::requeue_dropped`], logged when requeued).
pub const BACKLOG_MAX: usize = 2_000_000;
/// Documents of the backlog one watcher pass takes, so that a start with a large backlog keeps each pass, and
/// the node changes that wait for it, short.
pub const BACKLOG_PER_PASS: usize = 10_000;
/// Quarantined (node, document) pairs remembered; beyond this the node's whole session is refused.
pub const QUARANTINE_MAX: usize = 100_000;
/// Documents kept loaded in memory by default (≈ 19 KB each); the rest stay in `hub.redb` and load on access.
pub const DOCS_CACHED_MAX: usize = 2_048;
/// Node ids remembered as origin or site of order documents; an order naming a node beyond them is
/// entitled by its id alone (only the node that created it sees it).
pub const PARTIES_MAX: usize = 65_536;
/// Most SKUs read from one stock document.
pub const STOCK_SKUS_MAX: usize = 100_000;
/// Most stock documents (sites) read for one answer.
pub const STOCK_SITES_MAX: usize = 10_000;
/// (group, label) totals read at start ([`DocDb::stored_totals`]): a group is a node's orders or one
/// stock document, a label a pair of parties, so a few per party.
pub const TOTALS_READ_MAX: usize = 1 << 20;

/// Per-node figures for `GET /v1/nodes`, kept in memory (a restarted hub starts them afresh).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct NodeStatus {
    /// A connection is up.
    pub connected: bool,
    /// When the current (or last) connection was accepted, ms since the Unix epoch.
    pub connected_at_ms: Option<u64>,
    /// When the last frame arrived.
    pub last_frame_at_ms: Option<u64>,
    /// When a document last reached the same heads on both sides.
    pub last_sync_at_ms: Option<u64>,
    /// When a change from this node was last applied.
    pub last_change_at_ms: Option<u64>,
    /// Arrival time minus the node's own write time of that change (clock skew included).
    pub last_change_lag_ms: Option<u64>,
    /// The session has documents pending or in flight.
    pub pending: bool,
    /// What the current session holds: Automerge sync states, documents in flight, documents waiting.
    #[serde(skip)]
    pub session_sizes: oms_protocol::sync::SessionSizes,
    /// Documents changed by this node since the hub started.
    pub changes_applied: u64,
    /// Changes refused because they touched what the node does not own.
    pub changes_quarantined: u64,
    /// Documents the node offered or asked for without entitlement.
    pub docs_refused: u64,
    /// Changes refused because the node's quota of documents or stored bytes was used up.
    pub quota_refusals: u64,
    /// Changes refused because they inflate beyond `changes_inflated_bytes_max`.
    pub changes_too_large: u64,
    /// Messages dropped because their changes lack dependencies beyond the session's bound.
    pub changes_dropped: u64,
    /// Manifest rounds ignored for coming faster than the session's rate.
    pub manifests_deferred: u64,
    /// What the hub's side of this node's sessions sent for anti-entropy, summed over its sessions.
    #[serde(skip)]
    pub anti_entropy: oms_protocol::sync::AntiEntropyStats,
    /// Connections accepted since the hub started.
    pub sessions: u64,
    /// The current (or last) session deflates its frames (both sides announced `capabilities::DEFLATE`).
    pub compressed: bool,
    /// The certificate the node presented on its current (or last) connection.
    pub certificate: Option<PeerCertificate>,
}

/// What `GET /v1/nodes` shows of a certificate a node presented.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerCertificate {
    /// Serial number in hex, as `oms ca` prints it.
    pub serial: String,
    /// End of validity, seconds since the Unix epoch.
    pub not_after_unix_s: i64,
}

impl From<&oms_transport::CertInfo> for PeerCertificate {
    fn from(info: &oms_transport::CertInfo) -> Self {
        PeerCertificate { serial: info.serial_hex(), not_after_unix_s: info.not_after_unix_s }
    }
}

/// One page of order ids, from [`HubDocs::order_page`].
#[derive(Debug, Default)]
pub struct OrderPage {
    /// The orders of the page, in id order.
    pub ids: Vec<DocId>,
    /// The last order row read, if rows may follow it: the next page starts after it.
    pub next_after: Option<DocId>,
}

/// The hub's document set. See the module docs.
pub struct HubDocs {
    /// The documents under the hub's access policy: what every node's session works on.
    pub sync: SyncDocs<Parties>,
    /// Status per node id.
    pub nodes: BTreeMap<String, NodeStatus>,
    /// Documents nodes changed since the intake's watcher last looked.
    changed: BTreeSet<DocId>,
    /// Documents for the watcher beyond `changed`'s bound: see [`BACKLOG_MAX`].
    backlog: BTreeSet<DocId>,
    /// Documents for the watcher that found room nowhere since the start.
    requeue_dropped: u64,
    /// The watcher's bounds: [`CHANGED_MAX`], [`BACKLOG_MAX`], [`BACKLOG_PER_PASS`] (smaller in tests).
    watch_bounds: (usize, usize, usize),
    /// Documents the hub changed, per node to tell, since that node's session last looked; each with whether
    /// it is *fresh*: a fulfillment document [`HubDocs::create_local`] made that nobody wrote to since (not the
    /// hub, not a node). What such a document holds is a function of the intake's committed record alone, and
    /// a start builds any of them that `hub.redb` lacks again, byte for byte (`orders::watch::recover`), so the
    /// site's session may send it before the flush that writes it ([`HubDocs::take_local_split`]).
    local: BTreeMap<String, BTreeMap<DocId, bool>>,
    /// What each site published about itself in its stock document, for routing: built from the documents
    /// once (none until then), then read again only for the sites in `sites_stale`, so that routing reads no
    /// document while the sites' stock documents stay as they were.
    site_infos: Option<BTreeMap<NodeId, PublishedSite>>,
    /// Sites whose stock document a node changed (or that was removed) since `site_infos` was read.
    sites_stale: BTreeSet<NodeId>,
    /// Order documents changed (by a node or the hub) or removed since the demand history last took them
    /// ([`HubDocs::take_order_changes`]); `None` once more than [`CHANGED_MAX`] piled up, and the reader
    /// then reads every order again.
    order_changes: Option<BTreeSet<DocId>>,
    /// The same for stock documents ([`HubDocs::take_stock_changes`]).
    stock_changes: Option<BTreeSet<DocId>>,
    /// The balances' SKUs the nodes' changes touched per stock document, for the `stock.low` watcher
    /// ([`HubDocs::take_stock_touched`]).
    stock_touched: Touched,
    /// The escrow counters' SKUs the same changes touched, for the watcher's merge of the sites' escrow views
    /// ([`HubDocs::take_escrow_touched`]).
    escrow_touched: Touched,
    /// Message bytes counted toward each party's stored bytes (by number) since the last flush was prepared:
    /// what a recount from the totals, which hold only flushed documents, adds back
    /// ([`HubDocs::recount_stored_bytes_if_due`]).
    bytes_since_prepare: BTreeMap<u32, u64>,
    /// When the stored bytes were last recounted, ms.
    stored_recounted_at_ms: u64,
}

/// Which keys of one map of the stock documents the nodes' changes touched since a reader last asked, so
/// that the reader reads those and not the whole map after every change.
#[derive(Default)]
struct Touched {
    /// Stock documents the reader read whole since the start and whose touched keys are noted since, at most
    /// [`STOCK_SITES_MAX`], by base name with the generation read (a new generation is read whole).
    tracked: BTreeMap<DocId, u32>,
    /// Per tracked document: the keys touched since the reader last took them (at most
    /// [`schema::STOCK_TOUCHED_MAX`] each; past it the document is read whole again).
    keys: BTreeMap<DocId, BTreeSet<String>>,
}

impl Touched {
    /// Whether `doc`'s generation is the one tracked; its base name.
    fn tracking(&self, doc: &DocId) -> (bool, DocId) {
        let base = oms_protocol::generations::base(doc);
        let g = oms_protocol::generations::of(doc);
        (self.tracked.get(&base) == Some(&g), base)
    }

    /// `Some(keys)` touched since the last call, or `None`: read the whole map (the first time since the
    /// start, for each new generation, and whenever more were touched than are listed).
    fn take(&mut self, doc: &DocId) -> Option<BTreeSet<String>> {
        let (tracked, base) = self.tracking(doc);
        if tracked {
            return Some(self.keys.remove(&base).unwrap_or_default());
        }
        self.keys.remove(&base);
        if self.tracked.len() < STOCK_SITES_MAX || self.tracked.contains_key(&base) {
            self.tracked.insert(base, oms_protocol::generations::of(doc));
        }
        None
    }

    /// The next [`Touched::take`] of `doc` answers `None`.
    fn reread(&mut self, doc: &DocId) {
        let base = oms_protocol::generations::base(doc);
        self.tracked.remove(&base);
        self.keys.remove(&base);
    }

    /// Notes the keys an accepted change of `doc` touched (`None`: cannot tell).
    fn note(&mut self, doc: &DocId, touched: Option<BTreeSet<String>>) {
        let (tracked, base) = self.tracking(doc);
        if !tracked {
            return;
        }
        let listed = touched.is_some_and(|t| {
            let all = self.keys.entry(base).or_default();
            all.extend(t);
            all.len() <= schema::STOCK_TOUCHED_MAX
        });
        if !listed {
            self.reread(doc);
        }
    }
}

impl HubDocs {
    /// Reads the parties and quarantines, and what each party stores and the orders per site from the totals
    /// `hub.redb` keeps ([`DocDb::stored_totals`]): no document is loaded and no row is read per order, except
    /// once for a file from before labels or from before the parties index, and for unlabelled orders.
    pub fn new(mut db: DocDb) -> Result<HubDocs, DocDbError> {
        db.set_cache_max(DOCS_CACHED_MAX);
        // What the caller created before handing the database over is in the totals read below.
        db.flush()?;
        let mut party_names = Vec::new();
        let mut party_numbers = BTreeMap::new();
        let mut numbered: Vec<(u64, String)> = db
            .meta_with_prefix(PARTY_PREFIX, PARTIES_MAX)?
            .into_iter()
            .map(|(k, n)| (n, k[PARTY_PREFIX.len()..].to_owned()))
            .collect();
        numbered.sort();
        for (n, name) in numbered {
            // Numbers are handed out densely from 1 and fit a u32; anything else is not from this code. (The
            // `as u64` cannot truncate: usize has at most 64 bits.)
            if n != party_names.len() as u64 + 1 {
                break;
            }
            let Ok(n) = u32::try_from(n) else { break };
            party_numbers.insert(name.clone(), n);
            party_names.push(name);
        }
        let mut quarantined = BTreeSet::new();
        for (key, _) in db.meta_with_prefix(QUARANTINE_PREFIX, QUARANTINE_MAX)? {
            let rest = &key[QUARANTINE_PREFIX.len()..];
            if let Some((node, doc)) = rest.split_once('|')
                && let Some(doc) = DocId::new(doc)
            {
                quarantined.insert((node.to_owned(), doc));
            }
        }
        let parties = Parties {
            party_names,
            party_numbers,
            site_counts: BTreeMap::new(),
            quarantined,
            usage: BTreeMap::new(),
            quota: NodeQuota::default(),
        };
        let mut docs = HubDocs {
            sync: SyncDocs::new(db, parties),
            nodes: BTreeMap::new(),
            changed: BTreeSet::new(),
            backlog: BTreeSet::new(),
            requeue_dropped: 0,
            watch_bounds: (CHANGED_MAX, BACKLOG_MAX, BACKLOG_PER_PASS),
            local: BTreeMap::new(),
            site_infos: None,
            sites_stale: BTreeSet::new(),
            order_changes: Some(BTreeSet::new()),
            stock_changes: Some(BTreeSet::new()),
            stock_touched: Touched::default(),
            escrow_touched: Touched::default(),
            bytes_since_prepare: BTreeMap::new(),
            stored_recounted_at_ms: oms_service::now_ms(),
        };
        let totals = docs.sync.db.stored_totals(TOTALS_READ_MAX)?;
        docs.label_unlabelled(&totals)?;
        // The hub's own orders are labelled with its party number.
        docs.assign_number(schema::HUB_ORIGIN);
        docs.build_others_index()?;
        // Labelling changed the totals only if there was something to label.
        let totals = if totals.iter().any(|t| unlabelled_orders(t).is_some()) {
            docs.sync.db.stored_totals(TOTALS_READ_MAX)?
        } else {
            totals
        };
        docs.count_usage(&totals);
        Ok(docs)
    }

    /// Notes that `doc` changed or went: if it is a stock document, its site's view is read again before
    /// routing next uses it.
    fn site_changed(&mut self, doc: &DocId) {
        if let Some(DocKind::Stock(n)) = DocKind::of(doc) {
            if self.sites_stale.len() < STOCK_SITES_MAX {
                self.sites_stale.insert(n);
            } else {
                self.site_infos = None;
            }
        }
    }

    /// Notes for the readers ([`crate::demand`]) that order or stock document `doc` changed or went.
    fn note_change(&mut self, doc: &DocId) {
        let set = match DocKind::of(doc) {
            Some(DocKind::Order(_)) => &mut self.order_changes,
            Some(DocKind::Stock(_)) => &mut self.stock_changes,
            _ => return,
        };
        if let Some(s) = set {
            if s.len() < CHANGED_MAX {
                s.insert(doc.clone());
            } else {
                *set = None;
            }
        }
    }

    /// The order documents changed or removed since the last call, or `None` if more changed than are
    /// remembered (read them all). Cheap: the caller reads the documents later, a few per hold of the lock.
    pub fn take_order_changes(&mut self) -> Option<BTreeSet<DocId>> {
        self.order_changes.replace(BTreeSet::new())
    }

    /// Forgets the order changes noted as if more had piled up than are remembered (for tests).
    #[cfg(test)]
    pub(crate) fn overflow_order_changes(&mut self) {
        self.order_changes = None;
    }

    /// The stock documents changed or removed since the last call, as [`HubDocs::take_order_changes`].
    pub fn take_stock_changes(&mut self) -> Option<BTreeSet<DocId>> {
        self.stock_changes.replace(BTreeSet::new())
    }

    /// What the `stock.low` watcher reads of stock document `doc` after a change: `Some(keys)`, the SKUs its
    /// node's changes touched since the watcher last asked (the diffs [`HubDocs::check_applied`] makes anyway),
    /// or `None`: the whole document, the first time since the start (what changed while the hub was down is
    /// not known) and whenever more were touched than are listed. Call it and read the document under one hold
    /// of the lock, so that no change falls between the two.
    pub fn take_stock_touched(&mut self, doc: &DocId) -> Option<BTreeSet<String>> {
        self.stock_touched.take(doc)
    }

    /// Makes the watcher's next read of stock document `doc` a whole one (it could not report all it read).
    pub fn reread_stock(&mut self, doc: &DocId) {
        self.stock_touched.reread(doc);
    }

    /// What the watcher's merge of a site's escrow view reads of stock document `doc` after a change:
    /// `Some(keys)`, the SKUs whose escrow counters its node's changes touched since the watcher last asked, or
    /// `None`: every counter (the first time since the start, and whenever more were touched than are listed).
    /// As [`HubDocs::take_stock_touched`], call it and read the document under one hold of the lock.
    pub fn take_escrow_touched(&mut self, doc: &DocId) -> Option<BTreeSet<String>> {
        self.escrow_touched.take(doc)
    }

    /// Makes the watcher's next read of the escrow counters of stock document `doc` a whole one (it could not
    /// merge what it read).
    pub fn reread_escrow(&mut self, doc: &DocId) {
        self.escrow_touched.reread(doc);
    }

    /// Forgets a document and its parties.
    fn remove_doc(&mut self, doc: &DocId) {
        self.site_changed(doc);
        self.reread_stock(doc);
        self.reread_escrow(doc);
        self.note_change(doc);
        if let Some(label) = self.sync.db.label(doc) {
            self.unindex(doc, label);
        }
        self.sync.db.remove(doc);
    }

    /// The database.
    pub fn db(&self) -> &DocDb {
        &self.sync.db
    }

    /// Flushes documents and sync states to disk.
    pub fn flush(&mut self) -> Result<(), DocDbError> {
        self.sync.db.flush()?;
        self.bytes_since_prepare.clear();
        Ok(())
    }

    /// Documents kept loaded once clean (default [`DOCS_CACHED_MAX`]).
    pub fn set_cache_max(&mut self, max: usize) {
        self.sync.db.set_cache_max(max);
    }

    /// Evicts clean documents beyond the cache now ([`DocDb::evict_idle`]); call after a commit.
    pub fn evict_idle(&mut self) -> usize {
        self.sync.db.evict_idle()
    }

    /// Takes what is dirty into a batch that the caller commits ([`FlushBatch::commit`]) after releasing the
    /// lock on these documents.
    pub fn prepare_flush(&mut self) -> Option<FlushBatch> {
        // What was counted so far is in this batch: a recount after its commit finds it in the totals.
        self.bytes_since_prepare.clear();
        self.sync.db.prepare_flush()
    }

    /// Marks a document changed by a session for the next flush.
    pub fn mark_dirty(&mut self, doc: &DocId) {
        self.sync.db.mark_dirty(doc);
        // A node's change: the document is no longer the hub's record alone.
        self.unfresh(doc);
    }

    /// `doc`, if pending for a session as fresh, is no longer (see `local`).
    fn unfresh(&mut self, doc: &DocId) {
        // Only fulfillment documents are ever fresh (the stock and escrow documents change far more often).
        if !matches!(DocKind::of(doc), Some(DocKind::Order(_))) {
            return;
        }
        for pending in self.local.values_mut() {
            if let Some(fresh) = pending.get_mut(doc) {
                *fresh = false;
            }
        }
    }

    /// The status entry of `node`.
    pub fn status(&mut self, node: &NodeId) -> &mut NodeStatus {
        self.nodes.entry(node.as_str().to_owned()).or_default()
    }

    /// Heads of `doc`, empty if not held; taken before a frame is applied.
    pub fn heads(&mut self, doc: &DocId) -> Vec<ChangeHash> {
        self.sync.db.get_mut(doc).map(|d| d.get_heads()).unwrap_or_default()
    }

    /// Checks what the last frame from `node` changed in `doc` (whose heads were `before`). Returns true if the
    /// change was accepted, false if it was refused and the document put back.
    /// `msg_bytes`, the size of the message that carried the change, counts toward the node's stored bytes.
    pub fn check_applied(
        &mut self,
        node: &NodeId,
        doc: &DocId,
        before: &[ChangeHash],
        msg_bytes: usize,
        now_ms: u64,
    ) -> bool {
        let Some(d) = self.sync.db.get_mut(doc) else { return true };
        if d.get_heads() == before {
            return true;
        }
        if matches!(DocKind::of(doc), Some(DocKind::Stock(_))) {
            self.site_changed(doc);
        }
        // Accepted or put back, the readers look again (a put-back document reads as before).
        self.note_change(doc);
        // Dirty from now, not only once the session's pass takes its event: the watcher may read the change
        // before that, and must not take the document for written (`DocDb::written`).
        self.mark_dirty(doc);
        let Some(d) = self.sync.db.get_mut(doc) else { return true };
        match schema::check_writer_touched(d, doc, before, Writer::Node(node)) {
            Ok(schema::Accepted { touched, order }) => {
                // An order the node wrote was read whole by the check: its facts come from there.
                let (parties, written, frozen) = match order {
                    Some(v) => (
                        Some((v.origin.to_string(), v.site.to_string())),
                        (v.node_updated_at_ms > 0).then_some(v.node_updated_at_ms),
                        v.frozen_at_ms.is_some(),
                    ),
                    None => {
                        (schema::order_parties(d), schema::owner_updated_at_ms(d), schema::frozen_at_ms(d).is_some())
                    }
                };
                // Only orders have parties: keys named `origin` and `site` in a node's stock document are
                // the node's business and name nobody.
                if let (Some(DocKind::Order(_)), Some((origin, site))) = (DocKind::of(doc), parties) {
                    self.set_parties(doc, &origin, &site);
                }
                if let Some(n) = self.number(node.as_str()) {
                    let u = self.sync.access.usage.entry(n).or_default();
                    // A new generation of its stock document replaces the one it held.
                    if before.is_empty() && oms_protocol::generations::of(doc) == 0 {
                        u.documents += 1;
                    }
                    u.stored_bytes = u.stored_bytes.saturating_add(msg_bytes as u64);
                    let since = self.bytes_since_prepare.entry(n).or_insert(0);
                    *since = since.saturating_add(msg_bytes as u64);
                }
                // A frozen order's document takes no more changes: store it as one full save.
                if frozen {
                    self.sync.db.compact(doc);
                }
                self.note_for_watcher(doc.clone(), self.watch_bounds.0);
                if matches!(DocKind::of(doc), Some(DocKind::Stock(_))) {
                    self.stock_touched.note(doc, touched.skus);
                    self.escrow_touched.note(doc, touched.escrow);
                }
                let st = self.status(node);
                st.changes_applied += 1;
                st.last_change_at_ms = Some(now_ms);
                st.last_change_lag_ms = written.map(|w| now_ms.saturating_sub(w));
                true
            }
            Err(v) => {
                tracing::warn!(%node, %doc, violation = %v, "quarantined a change that touches what the node does not own");
                if before.is_empty() {
                    self.remove_doc(doc);
                } else {
                    match d.fork_at(before) {
                        Ok(old) => self.sync.db.replace(doc, old),
                        Err(e) => {
                            // Cannot happen for heads the document had a moment ago; drop it from memory so
                            // that the stored copy (the last accepted state) is what a restart loads.
                            tracing::error!(%doc, error = %e, "cannot fork at the previous heads");
                            self.remove_doc(doc);
                        }
                    }
                }
                if self.sync.access.quarantined.len() < QUARANTINE_MAX {
                    self.sync.access.quarantined.insert((node.as_str().to_owned(), doc.clone()));
                    // What the node is entitled to changed without a document changing.
                    self.sync.forget_digests();
                    self.sync.db.set_meta(&format!("{QUARANTINE_PREFIX}{node}|{doc}"), now_ms);
                }
                self.status(node).changes_quarantined += 1;
                false
            }
        }
    }

    /// True if the number of quarantined pairs reached its limit (the hub then refuses sessions that
    /// misbehave further rather than remember more).
    pub fn quarantine_full(&self) -> bool {
        self.sync.access.quarantined.len() >= QUARANTINE_MAX
    }

    /// True if order document `doc` is held and has parties (as the listings of [`HubDocs::order_ids`] want).
    pub fn has_parties(&self, doc: &DocId) -> bool {
        self.sync.db.label(doc).and_then(split_label).is_some()
    }

    /// Order documents (with content), optionally of one site, after `after` (an order id), at most `limit`.
    /// Reads every order row after `after` if it must: for a scan of all orders, not for a request.
    pub fn order_ids(&self, site: Option<&str>, after: Option<&str>, limit: usize) -> Vec<DocId> {
        self.order_page(site, after, limit, usize::MAX).ids
    }

    /// One page of [`Self::order_ids`] that reads at most `rows_max` order rows (at least one), so that a
    /// site with few orders among many does not hold the documents' lock for a scan of them all. Its
    /// `next_after` is where the next page starts; a page may hold fewer than `limit` ids, even none, and
    /// still have one.
    pub fn order_page(&self, site: Option<&str>, after: Option<&str>, limit: usize, rows_max: usize) -> OrderPage {
        let site = match site {
            Some(name) => match self.sync.access.party_numbers.get(name) {
                Some(n) => Some(*n),
                None => return OrderPage::default(),
            },
            None => None,
        };
        if limit == 0 {
            return OrderPage::default();
        }
        let wanted = |label: u64| site.map_or(split_label(label).is_some(), |n| is_party(label, n));
        let lo = after.and_then(|a| DocId::new(format!("{}{a}", schema::ORDER_PREFIX)));
        let rows: Box<dyn Iterator<Item = (DocId, u64)> + '_> = match lo {
            Some(lo) => Box::new(
                self.sync.db.labels_after(&lo).take_while(|(d, _)| d.as_str().starts_with(schema::ORDER_PREFIX)),
            ),
            None => Box::new(self.sync.db.labels(schema::ORDER_PREFIX)),
        };
        let mut page = OrderPage::default();
        for (read, (d, l)) in rows.enumerate() {
            let last = read + 1 >= rows_max.max(1);
            if wanted(l) {
                page.ids.push(d.clone());
            }
            if page.ids.len() >= limit || last {
                page.next_after = Some(d);
                break;
            }
        }
        page
    }

    /// Number of order documents per fulfilling site.
    pub fn order_counts(&self) -> BTreeMap<String, u64> {
        self.sync
            .access
            .site_counts
            .iter()
            .filter(|(_, c)| **c > 0)
            .filter_map(|(s, c)| Some((self.sync.access.party_name(*s)?.to_owned(), *c)))
            .collect()
    }

    /// Queues `orders` (the hub's fulfillment documents a site has not finished with) and every stock
    /// document for the watcher (after a start): see [`HubDocs::requeue_docs`].
    pub fn requeue(&mut self, orders: impl IntoIterator<Item = DocId>) {
        let stock: Vec<DocId> = self.sync.db.labels(schema::STOCK_PREFIX).map(|(d, _)| d).take(CHANGED_MAX).collect();
        self.requeue_docs(stock.into_iter().chain(orders));
    }

    /// Queues `docs` for the watcher again (ones it could not act on, a start's open work): for its next pass
    /// within half of [`CHANGED_MAX`] (the nodes' changes keep the other half), the rest in the backlog that
    /// later passes take [`BACKLOG_PER_PASS`] at a time. Past [`BACKLOG_MAX`] they are dropped, counted
    /// ([`HubDocs::requeue_dropped`]) and logged: such a document is looked at again at its next change.
    pub fn requeue_docs(&mut self, docs: impl IntoIterator<Item = DocId>) {
        let before = self.requeue_dropped;
        for d in docs {
            self.note_for_watcher(d, self.watch_bounds.0 / 2);
        }
        if self.requeue_dropped > before {
            let dropped = self.requeue_dropped - before;
            tracing::warn!(dropped, backlog = self.watch_bounds.1, "more documents for the watcher than it holds");
        }
    }

    /// Notes `doc` for the watcher's next pass if fewer than `room` are noted, else for its backlog, else counts
    /// it dropped.
    fn note_for_watcher(&mut self, doc: DocId, room: usize) {
        let (_, backlog_max, _) = self.watch_bounds;
        if self.changed.len() < room || self.changed.contains(&doc) {
            self.changed.insert(doc);
        } else if self.backlog.len() < backlog_max || self.backlog.contains(&doc) {
            self.backlog.insert(doc);
        } else {
            self.requeue_dropped = self.requeue_dropped.saturating_add(1);
        }
    }

    /// Sets the watcher's bounds ([`CHANGED_MAX`], [`BACKLOG_MAX`], [`BACKLOG_PER_PASS`]) for a test.
    #[cfg(test)]
    pub(crate) fn set_watch_bounds(&mut self, changed_max: usize, backlog_max: usize, per_pass: usize) {
        self.watch_bounds = (changed_max, backlog_max, per_pass);
    }

    /// Documents for the watcher dropped since the start (past [`BACKLOG_MAX`]).
    pub fn requeue_dropped(&self) -> u64 {
        self.requeue_dropped
    }

    /// Documents waiting in the watcher's backlog.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// Documents nodes changed since the last call, and up to [`BACKLOG_PER_PASS`] of the backlog (one that is
    /// also among the changes counts once).
    pub fn take_changed(&mut self) -> BTreeSet<DocId> {
        let mut out = std::mem::take(&mut self.changed);
        for _ in 0..self.watch_bounds.2 {
            let Some(d) = self.backlog.pop_first() else { break };
            out.insert(d);
        }
        out
    }

    /// Documents the hub changed that `node`'s session should push, since the last call.
    pub fn take_local(&mut self, node: &str) -> BTreeSet<DocId> {
        self.local.remove(node).unwrap_or_default().into_keys().collect()
    }

    /// [`HubDocs::take_local`], split: first the fresh fulfillment documents (see `local`), which `node`'s
    /// session may send before they are flushed, then the others, which go out after a flush.
    pub fn take_local_split(&mut self, node: &str) -> (BTreeSet<DocId>, BTreeSet<DocId>) {
        let (fresh, rest): (BTreeMap<DocId, bool>, BTreeMap<DocId, bool>) =
            self.local.remove(node).unwrap_or_default().into_iter().partition(|(_, fresh)| *fresh);
        (fresh.into_keys().collect(), rest.into_keys().collect())
    }

    /// Changes a document as the hub (`f` returns whether it wrote anything), commits the change and marks
    /// it for the next flush and for the sessions of the nodes entitled to it. Returns those nodes.
    pub fn write_local(
        &mut self,
        doc: &DocId,
        f: impl FnOnce(&mut AutoCommit) -> Result<bool, schema::SchemaError>,
    ) -> Result<Vec<String>, schema::SchemaError> {
        // A state document is written in its current generation; one whose history grew long starts the next
        // (see `oms_protocol::generations`).
        let base = doc;
        let current = self.sync.db.current(base);
        let doc = &current;
        let d = self.sync.db.get_or_create(doc).map_err(|e| schema::SchemaError::Automerge(e.to_string()))?;
        if !f(d)? {
            return Ok(vec![]);
        }
        d.commit();
        let parties = schema::order_parties(d);
        // Whoever it is told to below, it is no longer the record alone.
        self.unfresh(doc);
        self.sync.db.mark_dirty(doc);
        self.note_change(doc);
        let rotated = self.sync.db.rotate_if_due(base).map_err(|e| schema::SchemaError::Automerge(e.to_string()))?;
        let doc = rotated.as_ref().unwrap_or(doc);
        if let Some(next) = &rotated {
            self.note_change(next);
        }
        Ok(self.tell_local(doc, parties, false))
    }

    /// Holds `value`, an order document the hub built and committed away from the documents' lock (see
    /// `orders::effects`), as the new document `doc`, and does what [`HubDocs::write_local`] does after a
    /// change. `Ok(None)`, and nothing held, if `doc` is not an order document or is already held: the
    /// caller then writes through [`HubDocs::write_local`].
    pub fn create_local(&mut self, doc: &DocId, value: AutoCommit) -> Result<Option<Vec<String>>, schema::SchemaError> {
        if !matches!(DocKind::of(doc), Some(DocKind::Order(_))) {
            return Ok(None);
        }
        let parties = schema::order_parties(&value);
        if !self.sync.db.create(doc, value).map_err(|e| schema::SchemaError::Automerge(e.to_string()))? {
            return Ok(None);
        }
        self.sync.db.mark_dirty(doc);
        self.note_change(doc);
        Ok(Some(self.tell_local(doc, parties, true)))
    }

    /// After the hub changed `doc` (whose origin and site are `parties`, for an order): the nodes to tell,
    /// each of which gets it among the documents its session pushes; `fresh` if the hub just made it (see
    /// `local`).
    fn tell_local(&mut self, doc: &DocId, parties: Option<(String, String)>, fresh: bool) -> Vec<String> {
        let mut tell = Vec::new();
        match DocKind::of(doc) {
            Some(DocKind::Order(_)) => {
                if let Some((origin, site)) = parties {
                    self.set_parties(doc, &origin, &site);
                    if origin != schema::HUB_ORIGIN {
                        tell.push(origin);
                    }
                    if !tell.contains(&site) {
                        tell.push(site);
                    }
                }
            }
            Some(DocKind::Escrow(n) | DocKind::Stock(n) | DocKind::Inbound(n)) => tell.push(n.as_str().to_owned()),
            None => {}
        }
        for n in &tell {
            // One already pending keeps its mark (a write by the hub has cleared it: `unfresh`).
            let set = self.local.entry(n.clone()).or_default();
            if set.len() < CHANGED_MAX && !set.contains_key(doc) {
                set.insert(doc.clone(), fresh);
            }
        }
        tell
    }

    /// Sites that published a stock document, with what they published about themselves, at most `max`.
    /// Kept between calls: only the stock documents nodes changed since the last call are read again.
    pub fn sites(&mut self, max: usize) -> Vec<(NodeId, PublishedSite)> {
        let infos = match self.site_infos.take() {
            Some(mut infos) => {
                for n in std::mem::take(&mut self.sites_stale) {
                    let info = schema::stock_doc(&n).and_then(|d| self.get(&d).and_then(|doc| published(&n, &doc)));
                    // The same schedule published again keeps its compiled form, and its promise cache.
                    let info = info.map(|mut i| {
                        if let (Some(new), Some(old)) = (&i.schedule, infos.get(&n).and_then(|o| o.schedule.as_ref()))
                            && new.source() == old.source()
                        {
                            i.schedule = Some(old.clone());
                        }
                        i
                    });
                    match info {
                        Some(i) => infos.insert(n, i),
                        None => infos.remove(&n),
                    };
                }
                infos
            }
            None => {
                self.sites_stale.clear();
                self.stock_ids(STOCK_SITES_MAX)
                    .iter()
                    .filter_map(|d| {
                        let DocKind::Stock(n) = DocKind::of(d)? else { return None };
                        let site = published(&n, &*self.sync.db.read(d)?)?;
                        Some((n, site))
                    })
                    .collect()
            }
        };
        let out = infos.iter().take(max).map(|(n, i)| (n.clone(), i.clone())).collect();
        self.site_infos = Some(infos);
        out
    }

    /// A document, read-only, without keeping it loaded if it was not ([`DocDb::read`]): readers may scan
    /// many documents.
    pub fn get(&self, doc: &DocId) -> Option<Cow<'_, AutoCommit>> {
        // A state document's base name reads its current generation.
        self.sync.db.read(&self.sync.db.current(doc))
    }

    /// Stock documents.
    pub fn stock_ids(&self, limit: usize) -> Vec<DocId> {
        self.sync.db.ids_with_prefix(schema::STOCK_PREFIX, None, limit)
    }
}

/// What a site published about itself in its stock document, for routing.
#[derive(Debug, Clone)]
pub struct PublishedSite {
    /// Location, priority, capacity, region.
    pub info: schema::SiteInfo,
    /// Its shipping schedule, compiled; none when it published none, or one that does not compile (logged).
    pub schedule: Option<Arc<Schedule>>,
}

/// The site facts of `node`'s stock document `doc`, if it published them; its schedule is compiled once here,
/// not per routing decision.
fn published(node: &NodeId, doc: &AutoCommit) -> Option<PublishedSite> {
    let info = schema::read_site_info(doc)?;
    let schedule = schema::read_shipping(doc).and_then(|s| {
        s.compile()
            .inspect_err(|e| tracing::warn!(node = %node, error = %e, "the site's shipping schedule is ignored"))
            .ok()
            .map(Arc::new)
    });
    Some(PublishedSite { info, schedule })
}

#[cfg(test)]
mod tests;
