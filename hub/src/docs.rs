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

use std::collections::{BTreeMap, BTreeSet};

use oms_node::sync::docdb::{DocDb, DocDbError, FlushBatch};
use oms_node::sync::schema::{self, DocKind, Writer};
use oms_protocol::domain::NodeId;
use oms_protocol::sync::DocStore;
use oms_protocol::sync::StoreError;
use oms_protocol::sync::automerge::{AutoCommit, ChangeHash};
use oms_protocol::wire::{DocId, PeerId};
use oms_transport::Identity;

const QUARANTINE_PREFIX: &str = "quarantine|";
/// Documents remembered as changed by nodes (for the intake's watcher) or by the hub (for the sessions);
/// beyond this the watcher rescans and the sessions rely on the periodic manifest.
pub const CHANGED_MAX: usize = 100_000;
/// Quarantined (node, document) pairs remembered; beyond this the node's whole session is refused.
pub const QUARANTINE_MAX: usize = 100_000;
/// Documents kept loaded in memory (≈ 24 KB each); the rest stay in `hub.redb` and load on access.
pub const DOCS_CACHED_MAX: usize = 4_096;

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
    /// Documents changed by this node since the hub started.
    pub changes_applied: u64,
    /// Changes refused because they touched what the node does not own.
    pub changes_quarantined: u64,
    /// Documents the node offered or asked for without entitlement.
    pub docs_refused: u64,
    /// Connections accepted since the hub started.
    pub sessions: u64,
    /// The current (or last) session deflates its frames (both sides announced `capabilities::DEFLATE`).
    pub compressed: bool,
}

/// The hub's document set. See the module docs.
pub struct HubDocs {
    db: DocDb,
    /// (origin, site) of each order document, for entitlement without reading documents.
    parties: BTreeMap<DocId, (String, String)>,
    quarantined: BTreeSet<(String, DocId)>,
    /// Status per node id.
    pub nodes: BTreeMap<String, NodeStatus>,
    /// Documents nodes changed since the intake's watcher last looked.
    changed: BTreeSet<DocId>,
    /// Documents the hub changed, per node to tell, since that node's session last looked.
    local: BTreeMap<String, BTreeSet<DocId>>,
}

/// The node id of a peer, if the peer is a node of some tenant.
pub fn node_of(peer: &PeerId) -> Option<NodeId> {
    match Identity::from_uri(peer.as_str()) {
        Ok(Identity::Node { node_id, .. }) => NodeId::parse(&node_id).ok(),
        _ => None,
    }
}

impl HubDocs {
    /// Loads the documents and quarantines.
    pub fn new(mut db: DocDb) -> Result<HubDocs, DocDbError> {
        db.set_cache_max(DOCS_CACHED_MAX);
        let mut parties = BTreeMap::new();
        for id in db.ids() {
            if let Some(p) = db.get(id).and_then(schema::order_parties) {
                parties.insert(id.clone(), p);
            }
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
        Ok(HubDocs {
            db,
            parties,
            quarantined,
            nodes: BTreeMap::new(),
            changed: BTreeSet::new(),
            local: BTreeMap::new(),
        })
    }

    /// The database.
    pub fn db(&self) -> &DocDb {
        &self.db
    }

    /// Flushes documents and sync states to disk.
    pub fn flush(&mut self) -> Result<(), DocDbError> {
        self.db.flush()
    }

    /// Takes what is dirty into a batch that the caller commits ([`FlushBatch::commit`]) after releasing the
    /// lock on these documents.
    pub fn prepare_flush(&mut self) -> Option<FlushBatch> {
        self.db.prepare_flush()
    }

    /// Marks a document changed by a session for the next flush.
    pub fn mark_dirty(&mut self, doc: &DocId) {
        self.db.mark_dirty(doc);
    }

    /// The status entry of `node`.
    pub fn status(&mut self, node: &NodeId) -> &mut NodeStatus {
        self.nodes.entry(node.as_str().to_owned()).or_default()
    }

    /// Heads of `doc`, empty if not held; taken before a frame is applied.
    pub fn heads(&mut self, doc: &DocId) -> Vec<ChangeHash> {
        self.db.get_mut(doc).map(|d| d.get_heads()).unwrap_or_default()
    }

    /// Checks what the last frame from `node` changed in `doc` (whose heads were `before`). Returns true if the
    /// change was accepted, false if it was refused and the document put back.
    pub fn check_applied(&mut self, node: &NodeId, doc: &DocId, before: &[ChangeHash], now_ms: u64) -> bool {
        let Some(d) = self.db.get_mut(doc) else { return true };
        if d.get_heads() == before {
            return true;
        }
        match schema::check_writer(d, doc, before, Writer::Node(node)) {
            Ok(()) => {
                if let Some(p) = schema::order_parties(d) {
                    self.parties.insert(doc.clone(), p);
                }
                let written = schema::owner_updated_at_ms(d);
                // A frozen order's document takes no more changes: store it as one full save.
                if schema::frozen_at_ms(d).is_some() {
                    self.db.compact(doc);
                }
                if self.changed.len() < CHANGED_MAX {
                    self.changed.insert(doc.clone());
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
                    self.db.remove(doc);
                    self.parties.remove(doc);
                } else {
                    match d.fork_at(before) {
                        Ok(old) => self.db.replace(doc, old),
                        Err(e) => {
                            // Cannot happen for heads the document had a moment ago; drop it from memory so
                            // that the stored copy (the last accepted state) is what a restart loads.
                            tracing::error!(%doc, error = %e, "cannot fork at the previous heads");
                            self.db.remove(doc);
                        }
                    }
                }
                if self.quarantined.len() < QUARANTINE_MAX {
                    self.quarantined.insert((node.as_str().to_owned(), doc.clone()));
                    self.db.set_meta(&format!("{QUARANTINE_PREFIX}{node}|{doc}"), now_ms);
                }
                self.status(node).changes_quarantined += 1;
                false
            }
        }
    }

    /// True if the number of quarantined pairs reached its limit (the hub then refuses sessions that
    /// misbehave further rather than remember more).
    pub fn quarantine_full(&self) -> bool {
        self.quarantined.len() >= QUARANTINE_MAX
    }

    /// Order documents (with content), optionally of one site, after `after` (an order id), at most `limit`.
    pub fn order_ids(&self, site: Option<&str>, after: Option<&str>, limit: usize) -> Vec<DocId> {
        let lo = after.and_then(|a| DocId::new(format!("{}{a}", schema::ORDER_PREFIX)));
        let range = match lo {
            Some(lo) => self.parties.range((std::ops::Bound::Excluded(lo), std::ops::Bound::Unbounded)),
            None => self.parties.range::<DocId, _>(..),
        };
        range
            .filter(|(d, (o, s))| {
                d.as_str().starts_with(schema::ORDER_PREFIX) && site.is_none_or(|site| o == site || s == site)
            })
            .map(|(d, _)| d.clone())
            .take(limit)
            .collect()
    }

    /// Number of order documents per fulfilling site.
    pub fn order_counts(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (_, site) in self.parties.values() {
            *out.entry(site.clone()).or_insert(0) += 1;
        }
        out
    }

    /// Queues every hub-made order document and every stock document for the watcher (after a start).
    pub fn requeue_all(&mut self) {
        let hub_prefix = format!("{}{}-", schema::ORDER_PREFIX, schema::HUB_ORIGIN);
        let ids: Vec<DocId> = self
            .db
            .ids()
            .filter(|d| d.as_str().starts_with(&hub_prefix) || d.as_str().starts_with(schema::STOCK_PREFIX))
            .take(CHANGED_MAX)
            .cloned()
            .collect();
        self.changed.extend(ids);
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
        let d = self.db.get_or_create(doc).map_err(|e| schema::SchemaError::Automerge(e.to_string()))?;
        if !f(d)? {
            return Ok(vec![]);
        }
        d.commit();
        let parties = schema::order_parties(d);
        self.db.mark_dirty(doc);
        let mut tell = Vec::new();
        match DocKind::of(doc) {
            Some(DocKind::Order(_)) => {
                if let Some((origin, site)) = parties {
                    if origin != schema::HUB_ORIGIN {
                        tell.push(origin.clone());
                    }
                    if !tell.contains(&site) {
                        tell.push(site.clone());
                    }
                    self.parties.insert(doc.clone(), (origin, site));
                }
            }
            Some(DocKind::Escrow(n) | DocKind::Stock(n)) => tell.push(n.as_str().to_owned()),
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

    /// Sites that published a stock document, with what they published about themselves.
    pub fn sites(&self, max: usize) -> Vec<(NodeId, schema::SiteInfo)> {
        self.stock_ids(max)
            .iter()
            .filter_map(|d| {
                let DocKind::Stock(n) = DocKind::of(d)? else { return None };
                Some((n, schema::read_site_info(self.db.get(d)?)?))
            })
            .collect()
    }

    /// A document, read-only.
    pub fn get(&self, doc: &DocId) -> Option<&AutoCommit> {
        self.db.get(doc)
    }

    /// Stock documents.
    pub fn stock_ids(&self, limit: usize) -> Vec<DocId> {
        self.db.ids_with_prefix(schema::STOCK_PREFIX, None, limit)
    }

    fn node_entitled(&self, node: &NodeId, doc: &DocId) -> bool {
        if self.quarantined.contains(&(node.as_str().to_owned(), doc.clone())) {
            return false;
        }
        match DocKind::of(doc) {
            Some(DocKind::Stock(owner) | DocKind::Escrow(owner)) => &owner == node,
            Some(DocKind::Order(id)) => match self.parties.get(doc) {
                Some((origin, site)) => origin == node.as_str() || site == node.as_str(),
                None => schema::order_origin(&id) == Some(node.as_str()),
            },
            None => false,
        }
    }
}

impl DocStore for HubDocs {
    fn entitled(&self, peer: &PeerId, doc: &DocId) -> bool {
        node_of(peer).is_some_and(|n| self.node_entitled(&n, doc))
    }
    fn docs_for(&self, peer: &PeerId) -> Vec<DocId> {
        let Some(node) = node_of(peer) else { return vec![] };
        let mut out: Vec<DocId> = self
            .parties
            .iter()
            .filter(|(_, (o, s))| o == node.as_str() || s == node.as_str())
            .map(|(d, _)| d.clone())
            .collect();
        for own in [schema::stock_doc(&node), schema::escrow_doc(&node)].into_iter().flatten() {
            if self.db.get(&own).is_some() {
                out.push(own);
            }
        }
        out.retain(|d| self.node_entitled(&node, d));
        out
    }
    fn doc_mut(&mut self, doc: &DocId) -> Option<&mut AutoCommit> {
        self.db.get_mut(doc)
    }
    fn heads(&mut self, doc: &DocId) -> Option<Vec<ChangeHash>> {
        self.db.heads(doc)
    }
    fn create_doc(&mut self, doc: &DocId) -> Result<&mut AutoCommit, StoreError> {
        self.db.get_or_create(doc).map_err(|e| StoreError { doc: doc.clone(), reason: e.to_string() })
    }
    fn load_sync_state(&self, peer: &PeerId, doc: &DocId) -> Option<Vec<u8>> {
        self.db.sync_state(peer, doc)
    }
    fn save_sync_state(&mut self, peer: &PeerId, doc: &DocId, state: Vec<u8>) {
        self.db.set_sync_state(peer, doc, state);
    }
}
