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
use oms_sync::{Access, DocDb, DocDbError, FlushBatch, SyncDocs};

use oms_protocol::wire::{DocId, ErrorCode, PeerId};
use oms_transport::Identity;

const QUARANTINE_PREFIX: &str = "quarantine|";
/// Documents remembered as changed by nodes (for the intake's watcher) or by the hub (for the sessions);
/// beyond this the watcher rescans and the sessions rely on the periodic manifest.
pub const CHANGED_MAX: usize = 100_000;
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
const PARTY_PREFIX: &str = "party|";
/// Label of an order document without parties (looked at, nothing found), so a start does not look again.
const LABEL_NO_PARTIES: u64 = u64::MAX;
/// Order documents labelled at start between two flushes (a file from before labels), bounding what is
/// loaded at once.
const LABEL_PASS_DOCS: usize = 1_024;
/// Set in the documents' `meta` once the parties index in `hub.redb` ([`DocDb::indexed`], see [`Parties`])
/// holds every order document (a file from before it is indexed once, at its first start).
const OTHERS_BUILT: &str = "index.others";
/// Entries of the parties index written per flush while it is built (bounds what is held in memory).
const OTHERS_PASS_ENTRIES: usize = 65_536;
/// (group, label) totals read at start ([`DocDb::stored_totals`]): a group is a node's orders or one
/// stock document, a label a pair of parties, so a few per party.
pub const TOTALS_READ_MAX: usize = 1 << 20;

/// What one node may cause the hub to store ([`HubDocs::set_quota`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeQuota {
    /// Documents the node creates (its orders and its stock document).
    pub docs_max: u64,
    /// Bytes of the documents the node writes (its own, and the hub orders it fulfils).
    pub stored_bytes_max: u64,
}

/// Default of [`NodeQuota::docs_max`]: five million orders, a busy site's years.
pub const NODE_DOCS_MAX: u64 = 5_000_000;
/// Default of [`NodeQuota::stored_bytes_max`]: 16 GiB (an order takes about 0.5–2 KB on disk).
pub const NODE_STORED_BYTES_MAX: u64 = 16 << 30;

impl Default for NodeQuota {
    fn default() -> Self {
        NodeQuota { docs_max: NODE_DOCS_MAX, stored_bytes_max: NODE_STORED_BYTES_MAX }
    }
}

/// What a node causes the hub to store, as counted against its [`NodeQuota`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Usage {
    /// Documents the node created.
    pub documents: u64,
    /// Bytes of the documents it writes: on disk at start plus what its accepted changes weighed since.
    pub stored_bytes: u64,
}

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
    /// Documents the hub changed, per node to tell, since that node's session last looked.
    local: BTreeMap<String, BTreeSet<DocId>>,
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
}

/// Which keys of one map of the stock documents the nodes' changes touched since a reader last asked, so
/// that the reader reads those and not the whole map after every change.
#[derive(Default)]
struct Touched {
    /// Stock documents the reader read whole since the start and whose touched keys are noted since, at most
    /// [`STOCK_SITES_MAX`].
    tracked: BTreeSet<DocId>,
    /// Per tracked document: the keys touched since the reader last took them (at most
    /// [`schema::STOCK_TOUCHED_MAX`] each; past it the document is read whole again).
    keys: BTreeMap<DocId, BTreeSet<String>>,
}

impl Touched {
    /// `Some(keys)` touched since the last call, or `None`: read the whole map (the first time since the
    /// start, and whenever more were touched than are listed).
    fn take(&mut self, doc: &DocId) -> Option<BTreeSet<String>> {
        if self.tracked.contains(doc) {
            return Some(self.keys.remove(doc).unwrap_or_default());
        }
        self.keys.remove(doc);
        if self.tracked.len() < STOCK_SITES_MAX {
            self.tracked.insert(doc.clone());
        }
        None
    }

    /// The next [`Touched::take`] of `doc` answers `None`.
    fn reread(&mut self, doc: &DocId) {
        self.tracked.remove(doc);
        self.keys.remove(doc);
    }

    /// Notes the keys an accepted change of `doc` touched (`None`: cannot tell).
    fn note(&mut self, doc: &DocId, touched: Option<BTreeSet<String>>) {
        if !self.tracked.contains(doc) {
            return;
        }
        let listed = touched.is_some_and(|t| {
            let all = self.keys.entry(doc.clone()).or_default();
            all.extend(t);
            all.len() <= schema::STOCK_TOUCHED_MAX
        });
        if !listed {
            self.reread(doc);
        }
    }
}

/// Who may see which of the hub's documents: the parties of every order and the quarantined pairs.
///
/// Who may see an order document, (origin, site), is kept as the document's label in the [`DocDb`] (two node
/// numbers, persisted with its heads), so that neither a start nor a manifest loads documents and a million
/// orders cost a few bytes each here.
pub struct Parties {
    /// Node ids by number (number − 1), and numbers by id; persisted in `meta` as `party|<node>`.
    party_names: Vec<String>,
    party_numbers: BTreeMap<String, u32>,
    /// Order documents per fulfilling site (by number): read at start from the totals `hub.redb` keeps with
    /// the labels ([`DocDb::stored_totals`]), kept up here since.
    site_counts: BTreeMap<u32, u64>,
    // The documents where a node is a party but not the origin named by the order's id (e.g. the site of a
    // hub order) are in `hub.redb`'s index under the node's number ([`DocDb::indexed`]), written with each
    // label: with the id prefix `order/<node>-` they find a node's documents without scanning all of them,
    // and neither a start nor memory grows with them.
    quarantined: BTreeSet<(String, DocId)>,
    /// What each party (by number) causes the hub to store, and the quota it is held to.
    usage: BTreeMap<u32, Usage>,
    quota: NodeQuota,
}

/// (origin, site) numbers of a label; `None` for no label or no parties.
fn split_label(label: u64) -> Option<(u32, u32)> {
    if label == 0 || label == LABEL_NO_PARTIES {
        return None;
    }
    let origin = u32::try_from(label >> 32).ok()?;
    let site = u32::try_from(label & u64::from(u32::MAX)).ok()?;
    (origin != 0 && site != 0).then_some((origin, site))
}

/// The id prefix of the order documents a (group, label) total counts, if it counts unlabelled ones
/// ([`DocDb::stored_totals`]: the group of an order is `order/<origin>`, `order/` for an id naming none).
fn unlabelled_orders((group, label, documents, _): &(String, u64, u64, u64)) -> Option<String> {
    let origin = group.strip_prefix(schema::ORDER_PREFIX)?;
    if *label != 0 || *documents == 0 {
        return None;
    }
    Some(if origin.is_empty() { group.clone() } else { format!("{group}-") })
}

/// True if `label` names party number `n` as the origin or the fulfilling site of an order.
fn is_party(label: u64, n: u32) -> bool {
    split_label(label).is_some_and(|(o, s)| o == n || s == n)
}

/// The node id of a peer, if the peer is a node of some tenant.
pub fn node_of(peer: &PeerId) -> Option<NodeId> {
    match Identity::from_uri(peer.as_str()) {
        Ok(Identity::Node { node_id, .. }) => NodeId::parse(&node_id).ok(),
        _ => None,
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
            local: BTreeMap::new(),
            site_infos: None,
            sites_stale: BTreeSet::new(),
            order_changes: Some(BTreeSet::new()),
            stock_changes: Some(BTreeSet::new()),
            stock_touched: Touched::default(),
            escrow_touched: Touched::default(),
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

    /// Labels order documents that have no label yet (a file written before labels, or an order a node sent
    /// without parties): loads each once, flushing every [`LABEL_PASS_DOCS`] so that evicted documents leave
    /// memory. Reads only the rows of the origins whose totals count unlabelled orders.
    fn label_unlabelled(&mut self, totals: &[(String, u64, u64, u64)]) -> Result<(), DocDbError> {
        let mut todo = BTreeSet::new();
        for prefix in totals.iter().filter_map(unlabelled_orders) {
            todo.extend(self.sync.db.labels(&prefix).filter(|(_, l)| *l == 0).map(|(d, _)| d));
        }
        let todo: Vec<DocId> = todo.into_iter().collect();
        for chunk in todo.chunks(LABEL_PASS_DOCS) {
            for id in chunk {
                let parties = self.sync.db.get(id).and_then(schema::order_parties);
                // Files from before labels: their orders were accepted by the ownership check then, and their
                // parties get numbers as before.
                let label = match parties {
                    Some((origin, site)) => match (self.assign_number(&origin), self.assign_number(&site)) {
                        (Some(o), Some(s)) => (u64::from(o) << 32) | u64::from(s),
                        _ => LABEL_NO_PARTIES,
                    },
                    None => LABEL_NO_PARTIES,
                };
                self.sync.db.set_label(id, label);
                self.index_others(id, label);
            }
            self.sync.db.flush()?;
        }
        Ok(())
    }

    /// Builds the parties index of a file from before it: one walk of the order rows, at the first start
    /// with this code, flushing every [`OTHERS_PASS_ENTRIES`] entries; the mark that it is complete goes with
    /// the last of them (a start that stops half way walks again, writing the same entries).
    fn build_others_index(&mut self) -> Result<(), DocDbError> {
        if self.sync.db.meta(OTHERS_BUILT)?.is_some() {
            return Ok(());
        }
        let mut pending = 0usize;
        let mut after: Option<DocId> = None;
        // Bounded by the rows: each round starts after the last row of the one before.
        loop {
            let rows: Vec<(DocId, u64)> = match &after {
                Some(a) => self
                    .sync
                    .db
                    .labels_after(a)
                    .take_while(|(d, _)| d.as_str().starts_with(schema::ORDER_PREFIX))
                    .take(OTHERS_PASS_ENTRIES)
                    .collect(),
                None => self.sync.db.labels(schema::ORDER_PREFIX).take(OTHERS_PASS_ENTRIES).collect(),
            };
            let Some((last, _)) = rows.last().cloned() else { break };
            for (doc, label) in &rows {
                pending += self.index_others(doc, *label);
            }
            if pending >= OTHERS_PASS_ENTRIES {
                self.sync.db.flush()?;
                pending = 0;
            }
            after = Some(last);
        }
        self.sync.db.set_meta(OTHERS_BUILT, 1);
        self.sync.db.flush()
    }

    /// Counts what each party stores ([`Usage`]) and the orders per site from the totals `hub.redb` keeps:
    /// no row read, no document loaded.
    fn count_usage(&mut self, totals: &[(String, u64, u64, u64)]) {
        if totals.len() >= TOTALS_READ_MAX {
            tracing::warn!(max = TOTALS_READ_MAX, "more (origin, parties) totals than are read: usage counted short");
        }
        let p = &mut self.sync.access;
        let mut usage: BTreeMap<u32, Usage> = BTreeMap::new();
        let mut site_counts: BTreeMap<u32, u64> = BTreeMap::new();
        for (group, label, documents, bytes) in totals {
            // Who created them: the origin an order's id names, a stock document's owner.
            let (creator, order) = match group.strip_prefix(schema::ORDER_PREFIX) {
                Some(origin) => (p.party_numbers.get(origin).copied(), true),
                None => (group.strip_prefix(schema::STOCK_PREFIX).and_then(|n| p.party_numbers.get(n)).copied(), false),
            };
            // The bytes go to the writer: an order's fulfilling site, a stock document's owner.
            let site = split_label(*label).map(|(_, s)| s).filter(|_| order);
            let writer = site.or(creator);
            if let Some(c) = creator {
                let u = usage.entry(c).or_default();
                u.documents = u.documents.saturating_add(*documents);
            }
            if let Some(w) = writer {
                let u = usage.entry(w).or_default();
                u.stored_bytes = u.stored_bytes.saturating_add(*bytes);
            }
            if let Some(s) = site {
                *site_counts.entry(s).or_insert(0) += documents;
            }
        }
        p.usage = usage;
        p.site_counts = site_counts;
    }

    /// Sets the quota every node is held to.
    pub fn set_quota(&mut self, quota: NodeQuota) {
        self.sync.access.quota = quota;
    }

    /// What `node` causes the hub to store.
    pub fn usage(&self, node: &str) -> Usage {
        let p = &self.sync.access;
        p.party_numbers.get(node).and_then(|n| p.usage.get(n)).copied().unwrap_or_default()
    }

    /// Enrolls `node`, which connected with a valid certificate: it gets a party number (persisted with the
    /// next flush) if it has none, so orders naming it are entitled to it. False if the party table is full.
    pub fn enroll(&mut self, node: &NodeId) -> bool {
        self.assign_number(node.as_str()).is_some()
    }

    /// The number of an enrolled node id (or the hub's).
    fn number(&self, name: &str) -> Option<u32> {
        self.sync.access.party_numbers.get(name).copied()
    }

    /// The number of a node id, handed out (and persisted with the next flush) if it has none yet. Only for
    /// enrolment and for files from before labels: nothing a node writes hands out a number.
    fn assign_number(&mut self, name: &str) -> Option<u32> {
        if let Some(n) = self.sync.access.party_numbers.get(name) {
            return Some(*n);
        }
        if self.sync.access.party_names.len() >= PARTIES_MAX {
            tracing::warn!(
                node = name,
                max = PARTIES_MAX,
                "party table full; orders naming this node are entitled by id"
            );
            return None;
        }
        self.sync.access.party_names.push(name.to_owned());
        let n = u32::try_from(self.sync.access.party_names.len()).ok()?;
        self.sync.access.party_numbers.insert(name.to_owned(), n);
        self.sync.db.set_meta(&format!("{PARTY_PREFIX}{name}"), u64::from(n));
        Some(n)
    }

    /// The label of an order between `origin` and `site`: no parties unless both are enrolled.
    fn label_of(&self, origin: &str, site: &str) -> u64 {
        match (self.number(origin), self.number(site)) {
            (Some(o), Some(s)) => (u64::from(o) << 32) | u64::from(s),
            _ => LABEL_NO_PARTIES,
        }
    }

    /// Records the (origin, site) of an order document.
    fn set_parties(&mut self, doc: &DocId, origin: &str, site: &str) {
        let label = self.label_of(origin, site);
        let Some(old) = self.sync.db.set_label(doc, label) else { return };
        if old != label {
            self.unindex(doc, old);
            self.index(doc, label);
        }
    }

    fn index(&mut self, doc: &DocId, label: u64) {
        if let Some((_, s)) = split_label(label) {
            *self.sync.access.site_counts.entry(s).or_insert(0) += 1;
        }
        self.index_others(doc, label);
    }

    fn unindex(&mut self, doc: &DocId, label: u64) {
        if let Some((_, s)) = split_label(label)
            && let Some(c) = self.sync.access.site_counts.get_mut(&s)
        {
            *c = c.saturating_sub(1);
        }
        for n in self.sync.access.foreign_parties(doc, label).collect::<Vec<_>>() {
            self.sync.db.index_remove(u64::from(n), doc);
        }
    }

    /// Puts `doc` in the parties index under each party of `label` that its id does not name (written with
    /// the label by the next flush). Returns how many entries that is.
    fn index_others(&mut self, doc: &DocId, label: u64) -> usize {
        let parties: Vec<u32> = self.sync.access.foreign_parties(doc, label).collect();
        for n in &parties {
            self.sync.db.index_insert(u64::from(*n), doc);
        }
        parties.len()
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
        self.sync.db.flush()
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
        self.sync.db.prepare_flush()
    }

    /// Marks a document changed by a session for the next flush.
    pub fn mark_dirty(&mut self, doc: &DocId) {
        self.sync.db.mark_dirty(doc);
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
        let Some(d) = self.sync.db.get_mut(doc) else { return true };
        match schema::check_writer_touched(d, doc, before, Writer::Node(node)) {
            Ok(touched) => {
                let parties = schema::order_parties(d);
                let written = schema::owner_updated_at_ms(d);
                let frozen = schema::frozen_at_ms(d).is_some();
                // Only orders have parties: keys named `origin` and `site` in a node's stock document are
                // the node's business and name nobody.
                if let (Some(DocKind::Order(_)), Some((origin, site))) = (DocKind::of(doc), parties) {
                    self.set_parties(doc, &origin, &site);
                }
                if let Some(n) = self.number(node.as_str()) {
                    let u = self.sync.access.usage.entry(n).or_default();
                    if before.is_empty() {
                        u.documents += 1;
                    }
                    u.stored_bytes = u.stored_bytes.saturating_add(msg_bytes as u64);
                }
                // A frozen order's document takes no more changes: store it as one full save.
                if frozen {
                    self.sync.db.compact(doc);
                }
                if self.changed.len() < CHANGED_MAX {
                    self.changed.insert(doc.clone());
                }
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
    /// document for the watcher (after a start), at most [`CHANGED_MAX`] in all.
    pub fn requeue(&mut self, orders: impl IntoIterator<Item = DocId>) {
        let stock: Vec<DocId> = self.sync.db.labels(schema::STOCK_PREFIX).map(|(d, _)| d).take(CHANGED_MAX).collect();
        for d in stock.into_iter().chain(orders) {
            if self.changed.len() >= CHANGED_MAX {
                break;
            }
            self.changed.insert(d);
        }
    }

    /// Documents nodes changed since the last call.
    pub fn take_changed(&mut self) -> BTreeSet<DocId> {
        std::mem::take(&mut self.changed)
    }

    /// Documents the hub changed that `node`'s session should push, since the last call.
    pub fn take_local(&mut self, node: &str) -> BTreeSet<DocId> {
        self.local.remove(node).unwrap_or_default()
    }

    /// Changes a document as the hub (`f` returns whether it wrote anything), commits the change and marks
    /// it for the next flush and for the sessions of the nodes entitled to it. Returns those nodes.
    pub fn write_local(
        &mut self,
        doc: &DocId,
        f: impl FnOnce(&mut AutoCommit) -> Result<bool, schema::SchemaError>,
    ) -> Result<Vec<String>, schema::SchemaError> {
        let d = self.sync.db.get_or_create(doc).map_err(|e| schema::SchemaError::Automerge(e.to_string()))?;
        if !f(d)? {
            return Ok(vec![]);
        }
        d.commit();
        let parties = schema::order_parties(d);
        self.sync.db.mark_dirty(doc);
        self.note_change(doc);
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
            let set = self.local.entry(n.clone()).or_default();
            if set.len() < CHANGED_MAX {
                set.insert(doc.clone());
            }
        }
        Ok(tell)
    }

    /// Sites that published a stock document, with what they published about themselves, at most `max`.
    /// Kept between calls: only the stock documents nodes changed since the last call are read again.
    pub fn sites(&mut self, max: usize) -> Vec<(NodeId, PublishedSite)> {
        let infos = match self.site_infos.take() {
            Some(mut infos) => {
                for n in std::mem::take(&mut self.sites_stale) {
                    let info =
                        schema::stock_doc(&n).and_then(|d| self.sync.db.read(&d).and_then(|doc| published(&n, &doc)));
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
        self.sync.db.read(doc)
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

impl Parties {
    /// Parties of an order document (by label) that are not the origin its id names.
    fn foreign_parties(&self, doc: &DocId, label: u64) -> impl Iterator<Item = u32> + use<> {
        let by_id = doc
            .as_str()
            .strip_prefix(schema::ORDER_PREFIX)
            .and_then(|id| id.rsplit_once('-'))
            .and_then(|(origin, _)| self.party_numbers.get(origin).copied());
        let parties = split_label(label).map(|(o, s)| if o == s { [Some(o), None] } else { [Some(o), Some(s)] });
        parties.into_iter().flatten().flatten().filter(move |n| Some(*n) != by_id)
    }

    /// (origin, site) of an order document, as names.
    fn parties<'a>(&'a self, db: &DocDb, doc: &DocId) -> Option<(&'a str, &'a str)> {
        let (o, s) = split_label(db.label(doc)?)?;
        Some((self.party_name(o)?, self.party_name(s)?))
    }

    fn party_name(&self, n: u32) -> Option<&str> {
        // cannot truncate: usize has at least 32 bits on the targets we build for.
        self.party_names.get((n as usize).checked_sub(1)?).map(String::as_str)
    }

    fn is_quarantined(&self, node: &NodeId, doc: &DocId) -> bool {
        !self.quarantined.is_empty() && self.quarantined.contains(&(node.as_str().to_owned(), doc.clone()))
    }

    /// What `node` may see besides the orders its id prefixes: orders where it is a party otherwise, and its
    /// stock and escrow documents (whether held or not), each checked with [`Parties::node_entitled`].
    fn other_docs_for(&self, db: &DocDb, node: &NodeId) -> Vec<DocId> {
        let others = self.party_numbers.get(node.as_str()).map(|n| db.indexed(u64::from(*n))).unwrap_or_default();
        let own = [schema::stock_doc(node), schema::escrow_doc(node), schema::inbound_doc(node)].into_iter().flatten();
        others.into_iter().chain(own).filter(|d| self.node_entitled(db, node, d)).collect()
    }

    fn node_entitled(&self, db: &DocDb, node: &NodeId, doc: &DocId) -> bool {
        if self.is_quarantined(node, doc) {
            return false;
        }
        match DocKind::of(doc) {
            Some(DocKind::Stock(owner) | DocKind::Escrow(owner) | DocKind::Inbound(owner)) => &owner == node,
            Some(DocKind::Order(id)) => match self.parties(db, doc) {
                Some((origin, site)) => origin == node.as_str() || site == node.as_str(),
                None => schema::order_origin(&id) == Some(node.as_str()),
            },
            None => false,
        }
    }
}

impl Access for Parties {
    fn admit_changes(&self, _: &DocDb, peer: &PeerId, _: &DocId, creates: bool, bytes: usize) -> Result<(), ErrorCode> {
        let Some(n) = node_of(peer).and_then(|node| self.party_numbers.get(node.as_str()).copied()) else {
            // Not enrolled (the party table is full): its documents could be counted against nothing.
            return if creates { Err(ErrorCode::QuotaExceeded) } else { Ok(()) };
        };
        let u = self.usage.get(&n).copied().unwrap_or_default();
        if creates && u.documents >= self.quota.docs_max {
            return Err(ErrorCode::QuotaExceeded);
        }
        if u.stored_bytes.saturating_add(bytes as u64) > self.quota.stored_bytes_max {
            return Err(ErrorCode::QuotaExceeded);
        }
        Ok(())
    }

    fn entitled(&self, db: &DocDb, peer: &PeerId, doc: &DocId) -> bool {
        node_of(peer).is_some_and(|n| self.node_entitled(db, &n, doc))
    }
    fn docs_for(&self, db: &DocDb, peer: &PeerId) -> Vec<DocId> {
        let Some(node) = node_of(peer) else { return vec![] };
        let mut out: Vec<DocId> = match self.party_numbers.get(node.as_str()) {
            // Orders whose id names the node as origin and whose label names it as a party (checked here, so
            // not again row by row), then those where it is a party otherwise.
            Some(&n) => {
                let prefix = format!("{}{node}-", schema::ORDER_PREFIX);
                let own = db.labels(&prefix).filter(|(_, l)| is_party(*l, n)).map(|(d, _)| d);
                own.filter(|d| !self.is_quarantined(&node, d)).collect()
            }
            None => vec![],
        };
        out.extend(self.other_docs_for(db, &node).into_iter().filter(|d| db.contains(d)));
        out
    }
    fn manifest_heads(&self, db: &mut DocDb, peer: &PeerId) -> Vec<(DocId, Vec<ChangeHash>)> {
        let Some(node) = node_of(peer) else { return vec![] };
        let mut out = Vec::new();
        if let Some(&n) = self.party_numbers.get(node.as_str()) {
            // One pass over the node's rows: ids, labels and heads, no document loaded.
            let prefix = format!("{}{node}-", schema::ORDER_PREFIX);
            for (doc, label, heads) in db.entries(&prefix, usize::MAX) {
                if is_party(label, n) && !self.is_quarantined(&node, &doc) {
                    out.push((doc, heads));
                }
            }
        }
        for doc in self.other_docs_for(db, &node) {
            if let Some(heads) = db.heads(&doc) {
                out.push((doc, heads));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demand::test_support::{TODAY, hub_docs};
    use oms_protocol::domain::FulfillmentState;
    use oms_protocol::sync::DocStore;
    use oms_protocol::sync::SyncSession;
    use oms_protocol::sync::automerge::{ROOT, transaction::Transactable};
    use oms_protocol::sync::manifest_digest_of;
    use oms_protocol::wire::Frame;

    #[test]
    fn a_cached_digest_is_recomputed_after_any_change() {
        let dir = tempfile::tempdir().unwrap();
        let orders: &[crate::demand::test_support::TestOrder] = &[
            ("wh1", 1, TODAY - 2, 1, FulfillmentState::Accepted, &[("A", 2)]),
            ("wh1", 2, TODAY - 1, 1, FulfillmentState::Accepted, &[("A", 3)]),
            ("wh2", 1, TODAY - 1, 1, FulfillmentState::Accepted, &[("A", 1)]),
        ];
        let mut docs = hub_docs(dir.path(), orders, &[]);
        docs.flush().unwrap();
        let wh1 = PeerId::new("oms://acme/node/wh1").unwrap();
        let wh2 = PeerId::new("oms://acme/node/wh2").unwrap();
        let first = docs.sync.manifest_digest(&wh1);
        assert_eq!(first, manifest_digest_of(&mut docs.sync, &wh1));
        assert_eq!(first.docs(), 2, "wh1's two orders");
        assert_eq!(docs.sync.manifest_digest(&wh2).docs(), 1);
        // Unchanged: the cached digest, computed at the current generation.
        assert_eq!(docs.sync.manifest_digest(&wh1), first);
        assert_eq!(docs.sync.digest_cached_at(&wh1), Some(docs.sync.db.generation()));
        // A change to one of wh1's documents, not yet flushed: a new digest, equal to one computed afresh.
        let doc = DocId::new("order/wh1-0000000002").unwrap();
        docs.sync.doc_mut(&doc).unwrap().put(ROOT, "k", 1).unwrap();
        let second = docs.sync.manifest_digest(&wh1);
        assert_ne!(second, first);
        assert_eq!(second, manifest_digest_of(&mut docs.sync, &wh1));
        // Removing a document is a change too.
        docs.remove_doc(&doc);
        let third = docs.sync.manifest_digest(&wh1);
        assert_eq!(third.docs(), 1);
        assert_eq!(third, manifest_digest_of(&mut docs.sync, &wh1));
    }

    /// Routing's view of the sites is kept between calls and follows every change a node makes to its stock
    /// document (a new site, a moved one), without reading the documents of the others.
    #[test]
    fn the_sites_view_follows_stock_document_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut docs = HubDocs::new(DocDb::open(&dir.path().join("hub.redb"), vec![9; 16], 1_000).unwrap()).unwrap();
        let info = |lat: f64| schema::SiteInfo {
            name: "s".into(),
            lat,
            lon: 13.0,
            priority: 0,
            capacity_per_day: 10,
            region: "de".into(),
        };
        let publish = |docs: &mut HubDocs, node: &NodeId, lat: f64| {
            let stock = schema::stock_doc(node).unwrap();
            let before = docs.heads(&stock);
            let d = match docs.sync.doc_mut(&stock) {
                Some(d) => d,
                None => docs.sync.create_doc(&stock).unwrap(),
            };
            schema::write_site_info(d, node, &info(lat), 1).unwrap();
            d.commit();
            assert!(docs.check_applied(node, &stock, &before, 64, TODAY));
        };
        let (a, b) = (NodeId::parse("wh-a").unwrap(), NodeId::parse("wh-b").unwrap());
        publish(&mut docs, &a, 50.0);
        let lats = |docs: &mut HubDocs| -> Vec<(String, f64)> {
            docs.sites(10).into_iter().map(|(n, i)| (n.to_string(), i.info.lat)).collect()
        };
        assert_eq!(lats(&mut docs), [("wh-a".to_owned(), 50.0)]);
        publish(&mut docs, &a, 51.0);
        publish(&mut docs, &b, 48.0);
        assert_eq!(lats(&mut docs), [("wh-a".to_owned(), 51.0), ("wh-b".to_owned(), 48.0)]);
        assert!(docs.sites_stale.is_empty(), "read again once");
        docs.remove_doc(&schema::stock_doc(&a).unwrap());
        assert_eq!(lats(&mut docs), [("wh-b".to_owned(), 48.0)]);
    }

    /// Writes `skus` (SKU, on hand) into `node`'s stock document as the node would, in one change the hub
    /// then checks as it checks each applied frame.
    fn write_skus(docs: &mut HubDocs, node: &NodeId, skus: &[(String, u64)]) {
        use oms_protocol::domain::{Balance, Sku};
        node_writes_stock(docs, node, |d| {
            for (sku, on_hand) in skus {
                let b = Balance { on_hand: *on_hand, reserved: 0, staged: 0 };
                schema::write_stock(d, node, &Sku::parse(sku).unwrap(), &b, 1).unwrap();
            }
        });
    }

    /// `node` changes its stock document by `write`, in one change the hub then checks as it checks each
    /// applied frame.
    fn node_writes_stock(docs: &mut HubDocs, node: &NodeId, write: impl FnOnce(&mut AutoCommit)) {
        let stock = schema::stock_doc(node).unwrap();
        let before = docs.heads(&stock);
        let d = match docs.sync.doc_mut(&stock) {
            Some(d) => d,
            None => docs.sync.create_doc(&stock).unwrap(),
        };
        write(d);
        d.commit();
        // As the session does for every applied message: stored at the next flush.
        docs.mark_dirty(&stock);
        assert!(docs.check_applied(node, &stock, &before, 64, TODAY));
    }

    /// What the `stock.low` watcher reads of `node`'s stock document now (as `orders::watch_once` does).
    fn stock_read(docs: &mut HubDocs, node: &NodeId) -> crate::events::watch::StockRead {
        let stock = schema::stock_doc(node).unwrap();
        let touched = docs.take_stock_touched(&stock);
        let d = docs.get(&stock).unwrap();
        crate::events::watch::read_stock_change(&d, &stock, touched).unwrap()
    }

    fn skus_of(n: usize) -> Vec<(String, u64)> {
        (0..n).map(|i| (format!("SKU-{i:05}"), 10)).collect()
    }

    #[test]
    fn a_stock_change_reads_only_the_skus_it_touched() {
        use crate::events::watch::{StockRead, report_stock_skus};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        let mut docs = HubDocs::new(DocDb::open(&path, vec![9; 16], 1_000).unwrap()).unwrap();
        let n = NodeId::parse("wh-a").unwrap();
        write_skus(&mut docs, &n, &skus_of(20_000));
        // The first read since the start is the whole document: what changed before is not known.
        match stock_read(&mut docs, &n) {
            StockRead::Whole(s) => assert_eq!(s.len(), 20_000),
            r => panic!("{r:?}"),
        }
        // One SKU of 20,000 changes: that SKU is what is read, and nothing else.
        write_skus(&mut docs, &n, &[("SKU-00007".into(), 1)]);
        let touched = |r: StockRead| -> Vec<(String, Option<u64>)> {
            match r {
                StockRead::Touched(s) => s.into_iter().map(|(k, b)| (k.to_string(), b.map(|b| b.on_hand))).collect(),
                r => panic!("{r:?}"),
            }
        };
        let read: Vec<(String, Option<u64>)> = touched(stock_read(&mut docs, &n));
        assert_eq!(read, [("SKU-00007".to_owned(), Some(1))]);
        assert_eq!(touched(stock_read(&mut docs, &n)), Vec::<(String, Option<u64>)>::new(), "nothing changed since");
        // Two changes before the watcher looks (each frame diffed on its own): both SKUs, once each.
        write_skus(&mut docs, &n, &[("SKU-00001".into(), 2)]);
        write_skus(&mut docs, &n, &[("SKU-00002".into(), 3), ("SKU-00001".into(), 4)]);
        let read = touched(stock_read(&mut docs, &n));
        assert_eq!(read, [("SKU-00001".to_owned(), Some(4)), ("SKU-00002".to_owned(), Some(3))]);
        // What the watcher reports from a touched read: the one SKU that fell, from its own row.
        let events = tempfile::tempdir().unwrap();
        let db = redb::Database::create(events.path().join("e.redb")).unwrap();
        crate::events::init(&db).unwrap();
        write_skus(&mut docs, &n, &[("SKU-00009".into(), 0)]);
        let StockRead::Touched(skus) = stock_read(&mut docs, &n) else { panic!("a touched read") };
        assert_eq!(report_stock_skus(&db, "wh-a", &skus, 2, 5).unwrap(), 1);
        assert_eq!(report_stock_skus(&db, "wh-a", &skus, 2, 6).unwrap(), 0, "reported once");
        // More SKUs touched than are listed: the next read is the whole document again.
        write_skus(
            &mut docs,
            &n,
            &skus_of(schema::STOCK_TOUCHED_MAX + 1).iter().map(|(s, _)| (s.clone(), 5)).collect::<Vec<_>>(),
        );
        assert!(matches!(stock_read(&mut docs, &n), StockRead::Whole(s) if s.len() == 20_000));
        // A restart knows nothing of what changed: whole again, then touched.
        docs.flush().unwrap();
        drop(docs);
        let mut docs = HubDocs::new(DocDb::open(&path, vec![9; 16], 1_000).unwrap()).unwrap();
        assert!(matches!(stock_read(&mut docs, &n), StockRead::Whole(s) if s.len() == 20_000));
        write_skus(&mut docs, &n, &[("SKU-00003".into(), 1)]);
        assert_eq!(touched(stock_read(&mut docs, &n)), [("SKU-00003".to_owned(), Some(1))]);
    }

    /// Writes escrow counters (SKU, units created at the site) into `node`'s stock document as the node would,
    /// in one change the hub checks.
    fn write_counters(docs: &mut HubDocs, node: &NodeId, skus: &[(String, u64)]) {
        use oms_protocol::domain::Sku;
        use oms_protocol::escrow::{EscrowCounter, Party};
        node_writes_stock(docs, node, |d| {
            for (sku, units) in skus {
                let mut c = EscrowCounter::new(Sku::parse(sku).unwrap());
                c.add(Party::Site, *units).unwrap();
                schema::write_escrow(d, node, &c, 1).unwrap();
            }
        });
    }

    /// The counters the watcher's escrow merge reads of `node`'s stock document now (as `orders::watch_once`
    /// does): `(whole read, [(SKU, units at the site)])`.
    fn escrow_read(docs: &mut HubDocs, node: &NodeId) -> (bool, Vec<(String, u64)>) {
        use oms_protocol::escrow::Party;
        let stock = schema::stock_doc(node).unwrap();
        let touched = docs.take_escrow_touched(&stock);
        let d = docs.get(&stock).unwrap();
        let (read, bad) = match &touched {
            Some(skus) => schema::read_escrow_of(&d, skus.iter().map(String::as_str)).unwrap(),
            None => schema::read_escrow(&d, usize::MAX).unwrap(),
        };
        assert!(bad.is_empty(), "{bad:?}");
        (touched.is_none(), read.iter().map(|c| (c.sku().to_string(), c.local(Party::Site))).collect())
    }

    #[test]
    fn a_stock_change_reads_only_the_escrow_counters_it_touched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        let mut docs = HubDocs::new(DocDb::open(&path, vec![9; 16], 1_000).unwrap()).unwrap();
        let n = NodeId::parse("wh-a").unwrap();
        write_counters(&mut docs, &n, &skus_of(12_000));
        // The first read since the start takes every counter: what changed before is not known.
        let (whole, read) = escrow_read(&mut docs, &n);
        assert!(whole);
        assert_eq!(read.len(), 12_000);
        // Two counters of 12,000 change, in two frames: those two are read, with their new values.
        write_counters(&mut docs, &n, &[("SKU-00007".into(), 30)]);
        write_counters(&mut docs, &n, &[("SKU-00011".into(), 40)]);
        assert_eq!(escrow_read(&mut docs, &n), (false, vec![("SKU-00007".into(), 30), ("SKU-00011".into(), 40)]));
        assert_eq!(escrow_read(&mut docs, &n), (false, vec![]), "nothing changed since");
        // A balance changes and no counter does: no counter is read (the balances' reader gets the SKU).
        write_skus(&mut docs, &n, &[("SKU-00003".into(), 1)]);
        assert_eq!(escrow_read(&mut docs, &n), (false, vec![]));
        // More counters touched than are listed: every counter is read again.
        write_counters(
            &mut docs,
            &n,
            &skus_of(schema::STOCK_TOUCHED_MAX + 1).iter().map(|(s, _)| (s.clone(), 5)).collect::<Vec<_>>(),
        );
        assert!(escrow_read(&mut docs, &n).0);
        // The watcher could not merge what it read: the next read is whole too.
        write_counters(&mut docs, &n, &[("SKU-00001".into(), 9)]);
        docs.reread_escrow(&schema::stock_doc(&n).unwrap());
        let (whole, read) = escrow_read(&mut docs, &n);
        assert!(whole && read.len() == 12_000 && read.contains(&("SKU-00001".into(), 9)));
        // A restart knows nothing of what changed: whole, then touched.
        docs.flush().unwrap();
        drop(docs);
        let mut docs = HubDocs::new(DocDb::open(&path, vec![9; 16], 1_000).unwrap()).unwrap();
        assert!(escrow_read(&mut docs, &n).0);
        write_counters(&mut docs, &n, &[("SKU-00002".into(), 7)]);
        assert_eq!(escrow_read(&mut docs, &n), (false, vec![("SKU-00002".into(), 7)]));
    }

    /// The change-to-event cost of `stock.low` (BENCHMARKS.md): one SKU of a site of 1 and of 20,000 SKUs
    /// changes; timed from the hub's check of the applied change to the event appended, against reading
    /// the whole document as before. `cargo test -p oms-hub --lib stock_low_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement; run by hand"]
    fn stock_low_cost() {
        use crate::events::watch::{StockRead, report_stock, report_stock_skus};
        const ROUNDS: usize = 50;
        for size in [1usize, 20_000] {
            let dir = tempfile::tempdir().unwrap();
            let mut docs =
                HubDocs::new(DocDb::open(&dir.path().join("hub.redb"), vec![9; 16], 1_000).unwrap()).unwrap();
            // Each way its own event log, so that each appends (and commits) the events it finds.
            let db = redb::Database::create(dir.path().join("e.redb")).unwrap();
            let db_whole = redb::Database::create(dir.path().join("e-whole.redb")).unwrap();
            crate::events::init(&db).unwrap();
            crate::events::init(&db_whole).unwrap();
            let n = NodeId::parse("wh-a").unwrap();
            write_skus(&mut docs, &n, &skus_of(size));
            let _ = stock_read(&mut docs, &n);
            let (mut check, mut touched, mut whole) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..ROUNDS {
                // Down to 0 (reported) and back to 10 (forgotten): an event every other round.
                let units = if i % 2 == 0 { 0 } else { 10 };
                let t = std::time::Instant::now();
                write_skus(&mut docs, &n, &[("SKU-00000".into(), units)]);
                check.push(t.elapsed());
                let t = std::time::Instant::now();
                let StockRead::Touched(skus) = stock_read(&mut docs, &n) else { panic!("a touched read") };
                report_stock_skus(&db, "wh-a", &skus, 2, i as u64).unwrap();
                touched.push(t.elapsed());
                // As before: the whole document read and the site's rows compared.
                let t = std::time::Instant::now();
                let stock = schema::stock_doc(&n).unwrap();
                let d = docs.get(&stock).unwrap();
                let all = schema::read_stock(&d, stock.as_str(), STOCK_SKUS_MAX).unwrap();
                report_stock(&db_whole, "wh-a", &all.skus, 2, i as u64).unwrap();
                whole.push(t.elapsed());
            }
            for v in [&mut check, &mut touched, &mut whole] {
                v.sort();
            }
            println!(
                "stock_low_cost skus={size} write_and_check_p50_us={} touched_read_report_p50_us={} \
                 whole_read_report_p50_us={}",
                check[ROUNDS / 2].as_micros(),
                touched[ROUNDS / 2].as_micros(),
                whole[ROUNDS / 2].as_micros()
            );
        }
    }

    /// The watcher's merge of a site's escrow view after one counter of 1 or 20,000 changes (BENCHMARKS.md):
    /// the touched counters read and merged into the intake (`Intake::merge_site`, one commit), against every
    /// counter read and merged, as before, into an intake of its own. Run by hand:
    /// `cargo test --release -p oms-hub --lib escrow_merge_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement; run by hand"]
    fn escrow_merge_cost() {
        use crate::intake::{INTAKE_DB_FILE, Intake};
        const ROUNDS: usize = 50;
        for size in [1usize, 20_000] {
            let dir = tempfile::tempdir().unwrap();
            let mut docs =
                HubDocs::new(DocDb::open(&dir.path().join("hub.redb"), vec![9; 16], 1_000).unwrap()).unwrap();
            let intake = Intake::open(&dir.path().join(INTAKE_DB_FILE), Default::default()).unwrap();
            let whole_dir = dir.path().join("whole");
            std::fs::create_dir_all(&whole_dir).unwrap();
            let intake_whole = Intake::open(&whole_dir.join(INTAKE_DB_FILE), Default::default()).unwrap();
            let n = NodeId::parse("wh-a").unwrap();
            let stock = schema::stock_doc(&n).unwrap();
            write_counters(&mut docs, &n, &skus_of(size));
            let (all, _) = {
                let d = docs.get(&stock).unwrap();
                schema::read_escrow(&d, usize::MAX).unwrap()
            };
            let _ = docs.take_escrow_touched(&stock);
            intake.merge_site(&n, all.clone(), TODAY).unwrap();
            intake_whole.merge_site(&n, all, TODAY).unwrap();
            let (mut touched, mut whole) = (Vec::new(), Vec::new());
            for i in 0..ROUNDS {
                write_counters(&mut docs, &n, &[("SKU-00000".into(), 20 + i as u64)]);
                let t = std::time::Instant::now();
                let keys = docs.take_escrow_touched(&stock).expect("tracked");
                let (read, _) = {
                    let d = docs.get(&stock).unwrap();
                    schema::read_escrow_of(&d, keys.iter().map(String::as_str)).unwrap()
                };
                assert_eq!(read.len(), 1);
                intake.merge_site(&n, read, TODAY).unwrap();
                touched.push(t.elapsed());
                let t = std::time::Instant::now();
                let (read, _) = {
                    let d = docs.get(&stock).unwrap();
                    schema::read_escrow(&d, usize::MAX).unwrap()
                };
                assert_eq!(read.len(), size);
                intake_whole.merge_site(&n, read, TODAY).unwrap();
                whole.push(t.elapsed());
            }
            touched.sort();
            whole.sort();
            println!(
                "escrow_merge_cost skus={size} touched_read_merge_p50_us={} whole_read_merge_p50_us={} \
                 touched_p99_us={} whole_p99_us={}",
                touched[ROUNDS / 2].as_micros(),
                whole[ROUNDS / 2].as_micros(),
                touched[ROUNDS * 99 / 100].as_micros(),
                whole[ROUNDS * 99 / 100].as_micros()
            );
        }
    }

    fn peer(node: &str) -> PeerId {
        PeerId::new(format!("oms://acme/node/{node}")).unwrap()
    }

    /// Issue 12, item 6: a node with a valid certificate named 65,536 invented sites (before the fix, keys
    /// `origin` and `site` in its own stock document each took a party number, filling the table), so hub
    /// orders for a node enrolled afterwards were labelled "no parties" and reached nobody. Now nothing a node
    /// writes takes a number: the table holds the hub, the rogue and the new node, and the new node's hub
    /// order reaches it.
    #[test]
    fn invented_sites_do_not_fill_the_party_table_and_a_new_node_gets_its_hub_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut docs =
            HubDocs::new(DocDb::open(&dir.path().join("hub.redb"), vec![9; 16], 1_000_000).unwrap()).unwrap();
        let rogue = NodeId::parse("wh-rogue").unwrap();
        assert!(docs.enroll(&rogue));
        let stock = schema::stock_doc(&rogue).unwrap();
        let started = std::time::Instant::now();
        // Each change names two new sites. (The hub's copy starts afresh each time, as if the rogue's stock
        // document were created anew, so that the test's cost does not grow with one document's history.)
        for i in 0..PARTIES_MAX / 2 {
            let d = docs.sync.create_doc(&stock).unwrap();
            d.put(ROOT, schema::keys::OWNER, rogue.as_str()).unwrap();
            d.put(ROOT, schema::keys::ORIGIN, format!("x{i}-a")).unwrap();
            d.put(ROOT, schema::keys::SITE, format!("x{i}-b")).unwrap();
            d.commit();
            assert!(docs.check_applied(&rogue, &stock, &[], 64, TODAY), "the stock document is the rogue's");
            docs.remove_doc(&stock);
        }
        eprintln!("{} changes naming invented sites in {:?}", PARTIES_MAX / 2, started.elapsed());
        // An order of its own naming another site is refused outright (as before).
        let own = DocId::new("order/wh-rogue-0000000001").unwrap();
        let record = oms_protocol::fixtures::accepted(
            oms_protocol::domain::OrderId::parse("wh-rogue-0000000001").unwrap(),
            &NodeId::parse("wh-invented").unwrap(),
            &oms_protocol::domain::Sku::parse("SKU-0").unwrap(),
            1,
        );
        let d = docs.sync.create_doc(&own).unwrap();
        schema::write_order(d, &rogue, &record, 1).unwrap();
        d.commit();
        assert!(!docs.check_applied(&rogue, &own, &[], 64, TODAY));
        docs.flush().unwrap();
        let mut parties = docs.sync.access.party_names.clone();
        parties.sort();
        assert_eq!(parties, ["hub", "wh-rogue"], "no invented party");
        assert!(docs.order_counts().is_empty(), "{:?}", docs.order_counts());

        // A real node enrolls (connects) afterwards, and the hub assigns it an order.
        let new = NodeId::parse("wh-new").unwrap();
        assert!(docs.enroll(&new));
        let id = oms_protocol::domain::OrderId::new(&crate::intake::hub_node(), 1);
        let name = schema::order_doc(&id).unwrap();
        let draft = oms_protocol::fixtures::draft("web-1", &oms_protocol::domain::Sku::parse("SKU-0").unwrap(), 1);
        let told = docs.write_local(&name, |d| schema::create_hub_order(d, &id, &id, &new, &draft, 1)).unwrap();
        assert_eq!(told, vec!["wh-new".to_owned()]);
        assert!(docs.sync.entitled(&peer("wh-new"), &name), "the new node may have its order");
        assert!(docs.sync.docs_for(&peer("wh-new")).contains(&name), "and is sent it");
        assert!(!docs.sync.entitled(&peer("wh-rogue"), &name));
        // The same after a restart, from what is on disk.
        docs.flush().unwrap();
        drop(docs);
        let docs = HubDocs::new(DocDb::open(&dir.path().join("hub.redb"), vec![9; 16], 1_000_000).unwrap()).unwrap();
        assert!(docs.sync.entitled(&peer("wh-new"), &name));
        assert_eq!(docs.sync.access.party_names.len(), 3);
    }

    /// A v2 sync message carrying `changes`.
    fn message_with(changes: Vec<u8>) -> Vec<u8> {
        use oms_protocol::sync::automerge::sync::{ChunkList, MessageVersion, State, SyncDoc};
        let mut state = State::new();
        let mut msg = AutoCommit::new().sync().generate_sync_message(&mut state).unwrap();
        msg.changes = ChunkList::from(changes);
        msg.version = MessageVersion::V2;
        msg.encode()
    }

    /// Sends node `node`'s order `seq` (one full save) through a hub session as a sync message, with the
    /// ownership check the server runs; returns the refusals the session answered with.
    fn send_order(docs: &mut HubDocs, s: &mut SyncSession, node: &NodeId, seq: u64) -> Vec<Frame> {
        let id = oms_protocol::domain::OrderId::new(node, seq);
        let name = schema::order_doc(&id).unwrap();
        let record = oms_protocol::fixtures::accepted(id, node, &oms_protocol::domain::Sku::parse("A").unwrap(), 1);
        let mut d = AutoCommit::new();
        schema::write_order(&mut d, node, &record, 1).unwrap();
        let msg = message_with(d.save());
        let (before, len) = (docs.heads(&name), msg.len());
        s.handle_frame(&mut docs.sync, Frame::Sync { doc: name.clone(), msg });
        assert!(docs.check_applied(node, &name, &before, len, TODAY));
        std::iter::from_fn(|| s.poll_transmit()).filter(|f| matches!(f, Frame::Refused { .. })).collect()
    }

    fn session(docs: &mut HubDocs, node: &str) -> SyncSession {
        let hub = PeerId::new("oms://acme/hub").unwrap();
        let cfg = oms_protocol::sync::SessionConfig::default();
        let mut s = SyncSession::new_server(cfg.clone(), hub.clone(), peer(node), vec![1; 16], 0);
        let hello = SyncSession::new_client(cfg, peer(node), hub, vec![2; 16], 0).poll_transmit().unwrap();
        s.handle_frame(&mut docs.sync, hello);
        while s.poll_transmit().is_some() {}
        s
    }

    /// Issue 12, item 6: a node past its quota of documents, then of stored bytes, gets `QuotaExceeded` for
    /// the change and nothing is stored; another node keeps syncing; the usage is counted from disk after a
    /// restart.
    #[test]
    fn a_node_past_its_quota_is_refused_and_another_carries_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        let mut docs = HubDocs::new(DocDb::open(&path, vec![9; 16], 1_000).unwrap()).unwrap();
        docs.set_quota(NodeQuota { docs_max: 2, stored_bytes_max: 1 << 20 });
        let (a, b) = (NodeId::parse("wh-a").unwrap(), NodeId::parse("wh-b").unwrap());
        assert!(docs.enroll(&a) && docs.enroll(&b));
        let (mut sa, mut sb) = (session(&mut docs, "wh-a"), session(&mut docs, "wh-b"));
        for seq in 1..=2 {
            assert_eq!(send_order(&mut docs, &mut sa, &a, seq), vec![], "order {seq} within the quota");
        }
        let third = schema::order_doc(&oms_protocol::domain::OrderId::new(&a, 3)).unwrap();
        assert_eq!(
            send_order(&mut docs, &mut sa, &a, 3),
            vec![Frame::Refused { doc: third.clone(), code: ErrorCode::QuotaExceeded }]
        );
        assert!(!docs.db().contains(&third), "the refused document was not created");
        assert!(!sa.is_closed(), "the node's session goes on");
        let limited: Vec<_> = std::iter::from_fn(|| sa.poll_event())
            .filter(|e| matches!(e, oms_protocol::sync::Event::Limited { code: ErrorCode::QuotaExceeded, .. }))
            .collect();
        assert_eq!(limited.len(), 1);
        let used = docs.usage("wh-a");
        assert_eq!(used.documents, 2);
        assert!(used.stored_bytes > 0);
        // Another node is held to its own quota, not wh-a's.
        for seq in 1..=2 {
            assert_eq!(send_order(&mut docs, &mut sb, &b, seq), vec![]);
        }
        // Stored bytes: a quota just above what wh-b stores refuses its next change.
        docs.flush().unwrap();
        drop((sa, sb));
        drop(docs);
        let mut docs = HubDocs::new(DocDb::open(&path, vec![9; 16], 1_000).unwrap()).unwrap();
        let after = docs.usage("wh-a");
        assert_eq!(after.documents, 2, "counted again from disk");
        assert!(after.stored_bytes > 0 && after.stored_bytes <= used.stored_bytes, "{after:?} vs {used:?}");
        let stored = docs.usage("wh-b").stored_bytes;
        docs.set_quota(NodeQuota { docs_max: 100, stored_bytes_max: stored + 10 });
        let mut sb = session(&mut docs, "wh-b");
        let refused = send_order(&mut docs, &mut sb, &b, 3);
        assert!(matches!(refused.as_slice(), [Frame::Refused { code: ErrorCode::QuotaExceeded, .. }]), "{refused:?}");
        // wh-a, below its own byte quota, still syncs.
        let mut sa = session(&mut docs, "wh-a");
        let used_a = docs.usage("wh-a").stored_bytes;
        docs.set_quota(NodeQuota { docs_max: 100, stored_bytes_max: stored.max(used_a) + 100_000 });
        assert_eq!(send_order(&mut docs, &mut sa, &a, 3), vec![]);
    }

    /// Pages `site`'s orders `limit` at a time, reading at most `rows_max` rows per page; returns the ids and
    /// the number of pages.
    fn all_pages(docs: &HubDocs, site: &str, limit: usize, rows_max: usize) -> (Vec<String>, usize) {
        let (mut ids, mut after, mut pages) = (Vec::new(), None::<String>, 0);
        for _ in 0..1_000 {
            let page = docs.order_page(Some(site), after.as_deref(), limit, rows_max);
            pages += 1;
            assert!(page.ids.len() <= limit, "{page:?}");
            ids.extend(page.ids.iter().map(|d| d.as_str().to_owned()));
            match page.next_after {
                Some(d) => after = Some(d.as_str().strip_prefix(schema::ORDER_PREFIX).unwrap().to_owned()),
                None => return (ids, pages),
            }
        }
        panic!("no last page after 1,000 pages");
    }

    #[test]
    fn a_site_page_reads_a_bounded_number_of_rows_and_paging_finds_every_order_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut orders: Vec<crate::demand::test_support::TestOrder> = Vec::new();
        for seq in 1..=40 {
            orders.push(("wh1", seq, TODAY - 1, 1, FulfillmentState::Accepted, &[("A", 1)]));
        }
        for seq in 1..=3 {
            orders.push(("wh2", seq, TODAY - 1, 1, FulfillmentState::Accepted, &[("A", 1)]));
        }
        let mut docs = hub_docs(dir.path(), &orders, &[]);
        let wh2: Vec<String> = (1..=3).map(|n| format!("order/wh2-{n:010}")).collect();
        for flushed in [false, true] {
            // wh1's 40 orders sort first: the first page reads 5 of them, finds none of wh2's and says
            // where to go on.
            let first = docs.order_page(Some("wh2"), None, 2, 5);
            assert!(first.ids.is_empty(), "{first:?}");
            assert_eq!(first.next_after.as_ref().map(DocId::as_str), Some("order/wh1-0000000005"));
            let (ids, pages) = all_pages(&docs, "wh2", 2, 5);
            assert_eq!(ids, wh2, "flushed: {flushed}");
            assert!(pages >= 43 / 5, "{pages} pages for 43 rows at 5 a page");
            // Without a bound on rows, the first page holds the first `limit` orders of the site.
            let unbounded = docs.order_page(Some("wh2"), None, 2, usize::MAX);
            assert_eq!(unbounded.ids.iter().map(DocId::as_str).collect::<Vec<_>>(), wh2[..2].to_vec());
            assert_eq!(unbounded.next_after.as_ref().map(DocId::as_str), Some(wh2[1].as_str()));
            // Every order of wh1, in pages that end on `limit`.
            let (ids, _) = all_pages(&docs, "wh1", 7, 1_000);
            assert_eq!(ids.len(), 40);
            // A site the hub has not heard of: one empty, last page.
            let unknown = docs.order_page(Some("wh9"), None, 2, 5);
            assert!(unknown.ids.is_empty() && unknown.next_after.is_none());
            docs.flush().unwrap();
        }
    }

    /// What a start computes from the totals and the parties index (orders per site, each node's usage, the
    /// documents each node is sent), and the same computed by walking every row as the hub did before.
    type Figures = (BTreeMap<String, u64>, Vec<(String, Usage)>, Vec<Vec<DocId>>);

    fn start_figures(docs: &HubDocs) -> Figures {
        let nodes = ["hub", "wh1", "wh2"];
        let usage = nodes.iter().map(|n| (n.to_string(), docs.usage(n))).collect();
        let sent = nodes[1..].iter().map(|n| docs.sync.docs_for(&peer(n))).collect();
        (docs.order_counts(), usage, sent)
    }

    fn walked_figures(docs: &HubDocs) -> (BTreeMap<String, u64>, Vec<(String, Usage)>) {
        let p = &docs.sync.access;
        let name = |n: u32| p.party_name(n).unwrap().to_owned();
        let mut counts = BTreeMap::new();
        let mut usage: BTreeMap<String, Usage> = BTreeMap::new();
        for prefix in [schema::ORDER_PREFIX, schema::STOCK_PREFIX] {
            docs.db().for_each_stored(prefix, |doc, label, bytes| {
                let creator = match DocKind::of(doc) {
                    Some(DocKind::Order(id)) => schema::order_origin(&id).map(str::to_owned),
                    Some(DocKind::Stock(n)) => Some(n.as_str().to_owned()),
                    _ => None,
                };
                if let Some((_, s)) = split_label(label) {
                    *counts.entry(name(s)).or_insert(0) += 1;
                }
                let writer = split_label(label).map(|(_, s)| name(s)).or(creator.clone());
                if let Some(c) = creator {
                    usage.entry(c).or_default().documents += 1;
                }
                if let Some(w) = writer {
                    usage.entry(w).or_default().stored_bytes += bytes;
                }
            });
        }
        let usage = ["hub", "wh1", "wh2"].iter().map(|n| (n.to_string(), usage.get(*n).copied().unwrap_or_default()));
        (counts, usage.collect())
    }

    /// Issue 17, item 4: a start reads no `doc_meta` row per order stored (the per-site counts, each node's
    /// usage and the parties index are kept in `hub.redb` with the labels), and what it knows equals what a
    /// walk of every row computes, before and after the restart.
    #[test]
    fn a_start_reads_no_row_per_stored_order_and_knows_what_a_walk_knows() {
        let mut reads = Vec::new();
        for n in [20u64, 400] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("hub.redb");
            let orders: Vec<crate::demand::test_support::TestOrder> = (1..=n)
                .map(|i| {
                    let site = if i % 2 == 0 { "wh1" } else { "wh2" };
                    (site, i, TODAY - 1 - i % 30, 1, FulfillmentState::Delivered, &[("A", 1)][..])
                })
                .collect();
            // The first start labels the orders (written unlabelled, as before labels) and indexes them.
            let mut docs = hub_docs(dir.path(), &orders, &[("wh1", "A", 5), ("wh2", "A", 7)]);
            let wh2 = NodeId::parse("wh2").unwrap();
            assert!(docs.enroll(&wh2));
            let draft = oms_protocol::fixtures::draft("web-1", &oms_protocol::domain::Sku::parse("A").unwrap(), 1);
            let mut hub_orders = Vec::new();
            for i in 1..=n / 10 {
                let id = oms_protocol::domain::OrderId::new(&crate::intake::hub_node(), i);
                let name = schema::order_doc(&id).unwrap();
                docs.write_local(&name, |d| schema::create_hub_order(d, &id, &id, &wh2, &draft, 1)).unwrap();
                hub_orders.push(name);
            }
            // One hub order removed (quarantined as it was created), one of wh1's too.
            docs.remove_doc(&hub_orders.pop().unwrap());
            docs.remove_doc(&DocId::new("order/wh1-0000000002").unwrap());
            let before = start_figures(&docs);
            docs.flush().unwrap();
            assert_eq!(walked_figures(&docs).0, before.0);
            assert!(before.2[1].iter().any(|d| hub_orders.contains(d)), "wh2 is sent the hub's orders");
            assert_eq!(before.2[1].iter().filter(|d| hub_orders.contains(d)).count(), hub_orders.len());
            assert!(!before.2[0].iter().any(|d| hub_orders.contains(d)), "wh1 is not");
            drop(docs);

            let docs = HubDocs::new(DocDb::open(&path, vec![9; 16], 100_000).unwrap()).unwrap();
            reads.push(docs.db().rows_read());
            let after = start_figures(&docs);
            // (Usage is counted from disk at a start and only grows with accepted changes until the next.)
            assert_eq!((&after.0, &after.2), (&before.0, &before.2), "{n} orders: the start knows what the hub knew");
            assert_eq!(walked_figures(&docs), (after.0.clone(), after.1.clone()));
            assert_eq!(after.1[0].1.documents, hub_orders.len() as u64, "the hub created its orders");
            assert_eq!(after.0.get("wh2"), Some(&(n / 2 + hub_orders.len() as u64)));
            let (kept, walked) = docs.db().audit_totals().unwrap();
            assert_eq!(kept, walked);
        }
        assert_eq!(reads, [0, 0], "doc_meta rows read by a start, with 20 and 400 orders stored");
    }

    /// A file from before the parties index gets it at its first start (one walk), not at the next.
    #[test]
    fn the_parties_index_is_built_once_for_a_file_from_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        let mut docs = hub_docs(dir.path(), &[("wh1", 1, TODAY - 1, 1, FulfillmentState::Delivered, &[("A", 1)])], &[]);
        let wh2 = NodeId::parse("wh2").unwrap();
        assert!(docs.enroll(&wh2));
        let draft = oms_protocol::fixtures::draft("web-1", &oms_protocol::domain::Sku::parse("A").unwrap(), 1);
        let id = oms_protocol::domain::OrderId::new(&crate::intake::hub_node(), 1);
        let name = schema::order_doc(&id).unwrap();
        docs.write_local(&name, |d| schema::create_hub_order(d, &id, &id, &wh2, &draft, 1)).unwrap();
        let n = u64::from(docs.number("wh2").unwrap());
        // The file as the code before the index left it: no entries, no mark.
        docs.sync.db.index_remove(n, &name);
        docs.flush().unwrap();
        drop(docs);
        {
            let db = redb::Database::open(&path).unwrap();
            let w = db.begin_write().unwrap();
            w.open_table(redb::TableDefinition::<&str, u64>::new("meta")).unwrap().remove(OTHERS_BUILT).unwrap();
            w.commit().unwrap();
        }
        let docs = HubDocs::new(DocDb::open(&path, vec![9; 16], 100).unwrap()).unwrap();
        assert!(docs.db().rows_read() >= 2, "the first start walks the order rows");
        assert_eq!(docs.db().indexed(n), vec![name.clone()]);
        assert!(docs.sync.docs_for(&peer("wh2")).contains(&name));
        drop(docs);
        let docs = HubDocs::new(DocDb::open(&path, vec![9; 16], 100).unwrap()).unwrap();
        assert_eq!(docs.db().rows_read(), 0, "the second does not");
        assert!(docs.sync.docs_for(&peer("wh2")).contains(&name));
    }
}
