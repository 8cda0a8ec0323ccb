//! Parties: node numbers, the labels of order documents, the parties index and entitlement (the hub's
//! [`Access`] policy, [`Parties`]).

use std::collections::{BTreeMap, BTreeSet};

use oms_protocol::domain::NodeId;
use oms_protocol::schema::{self, DocKind};
use oms_protocol::sync::automerge::ChangeHash;
use oms_sync::{Access, DocDb, DocDbError};

use oms_protocol::wire::{DocId, ErrorCode, PeerId};
use oms_transport::Identity;

use super::{HubDocs, NodeQuota, PARTIES_MAX, Usage};

pub(super) const PARTY_PREFIX: &str = "party|";
/// Label of an order document without parties (looked at, nothing found), so a start does not look again.
const LABEL_NO_PARTIES: u64 = u64::MAX;
/// Order documents labelled at start between two flushes (a file from before labels), bounding what is
/// loaded at once.
const LABEL_PASS_DOCS: usize = 1_024;
/// Set in the documents' `meta` once the parties index in `hub.redb` ([`DocDb::indexed`], see [`Parties`])
/// holds every order document (a file from before it is indexed once, at its first start).
pub(super) const OTHERS_BUILT: &str = "index.others";
/// Entries of the parties index written per flush while it is built (bounds what is held in memory).
const OTHERS_PASS_ENTRIES: usize = 65_536;

/// Who may see which of the hub's documents: the parties of every order and the quarantined pairs.
///
/// Who may see an order document, (origin, site), is kept as the document's label in the [`DocDb`] (two node
/// numbers, persisted with its heads), so that neither a start nor a manifest loads documents and a million
/// orders cost a few bytes each here.
pub struct Parties {
    /// Node ids by number (number − 1), and numbers by id; persisted in `meta` as `party|<node>`.
    pub(super) party_names: Vec<String>,
    pub(super) party_numbers: BTreeMap<String, u32>,
    /// Order documents per fulfilling site (by number): read at start from the totals `hub.redb` keeps with
    /// the labels ([`DocDb::stored_totals`]), kept up here since.
    pub(super) site_counts: BTreeMap<u32, u64>,
    // The documents where a node is a party but not the origin named by the order's id (e.g. the site of a
    // hub order) are in `hub.redb`'s index under the node's number ([`DocDb::indexed`]), written with each
    // label: with the id prefix `order/<node>-` they find a node's documents without scanning all of them,
    // and neither a start nor memory grows with them.
    pub(super) quarantined: BTreeSet<(String, DocId)>,
    /// What each party (by number) causes the hub to store, and the quota it is held to.
    pub(super) usage: BTreeMap<u32, Usage>,
    pub(super) quota: NodeQuota,
}

/// (origin, site) numbers of a label; `None` for no label or no parties.
pub(super) fn split_label(label: u64) -> Option<(u32, u32)> {
    if label == 0 || label == LABEL_NO_PARTIES {
        return None;
    }
    let origin = u32::try_from(label >> 32).ok()?;
    let site = u32::try_from(label & u64::from(u32::MAX)).ok()?;
    (origin != 0 && site != 0).then_some((origin, site))
}

/// The id prefix of the order documents a (group, label) total counts, if it counts unlabelled ones
/// ([`DocDb::stored_totals`]: the group of an order is `order/<origin>`, `order/` for an id naming none).
pub(super) fn unlabelled_orders((group, label, documents, _): &(String, u64, u64, u64)) -> Option<String> {
    let origin = group.strip_prefix(schema::ORDER_PREFIX)?;
    if *label != 0 || *documents == 0 {
        return None;
    }
    Some(if origin.is_empty() { group.clone() } else { format!("{group}-") })
}

/// True if `label` names party number `n` as the origin or the fulfilling site of an order.
pub(super) fn is_party(label: u64, n: u32) -> bool {
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
    /// Labels order documents that have no label yet (a file written before labels, or an order a node sent
    /// without parties): loads each once, flushing every [`LABEL_PASS_DOCS`] so that evicted documents leave
    /// memory. Reads only the rows of the origins whose totals count unlabelled orders.
    pub(super) fn label_unlabelled(&mut self, totals: &[(String, u64, u64, u64)]) -> Result<(), DocDbError> {
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
    pub(super) fn build_others_index(&mut self) -> Result<(), DocDbError> {
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

    /// Enrolls `node`, which connected with a valid certificate: it gets a party number (persisted with the
    /// next flush) if it has none, so orders naming it are entitled to it. False if the party table is full.
    pub fn enroll(&mut self, node: &NodeId) -> bool {
        self.assign_number(node.as_str()).is_some()
    }

    /// The number of an enrolled node id (or the hub's).
    pub(super) fn number(&self, name: &str) -> Option<u32> {
        self.sync.access.party_numbers.get(name).copied()
    }

    /// The number of a node id, handed out (and persisted with the next flush) if it has none yet. Only for
    /// enrolment and for files from before labels: nothing a node writes hands out a number.
    pub(super) fn assign_number(&mut self, name: &str) -> Option<u32> {
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
    pub(super) fn set_parties(&mut self, doc: &DocId, origin: &str, site: &str) {
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

    pub(super) fn unindex(&mut self, doc: &DocId, label: u64) {
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

    pub(super) fn party_name(&self, n: u32) -> Option<&str> {
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
        let own = [schema::stock_doc(node), schema::escrow_doc(node), schema::inbound_doc(node)]
            .into_iter()
            .flatten()
            .map(|base| db.current(&base));
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
    fn admit_changes(
        &self,
        _: &DocDb,
        peer: &PeerId,
        doc: &DocId,
        creates: bool,
        bytes: usize,
    ) -> Result<(), ErrorCode> {
        // A new generation of a state document replaces the one held (see `oms_protocol::generations`): not one
        // more document, so a site at its quota still starts it.
        let creates = creates && oms_protocol::generations::of(doc) == 0;
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
