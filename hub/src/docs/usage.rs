//! Quotas and usage: what each node may cause the hub to store ([`NodeQuota`]) and what it stores ([`Usage`]),
//! counted from the totals `hub.redb` keeps.

use std::collections::BTreeMap;

use oms_protocol::schema;

use super::parties::split_label;
use super::{HubDocs, Parties, TOTALS_READ_MAX};

/// How often the nodes' stored bytes are recounted from the totals ([`HubDocs::recount_stored_bytes_if_due`]),
/// ms: a read of a few rows per party.
pub const STORED_RECOUNT_MS: u64 = 10_000;

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
    /// Bytes of the documents it writes: on disk at start or at the last recount
    /// ([`HubDocs::recount_stored_bytes_if_due`]), plus what its accepted changes weighed since.
    pub stored_bytes: u64,
}

impl HubDocs {
    /// Sets the quota every node is held to.
    pub fn set_quota(&mut self, quota: NodeQuota) {
        self.sync.access.quota = quota;
    }

    /// What `node` causes the hub to store.
    pub fn usage(&self, node: &str) -> Usage {
        let p = &self.sync.access;
        p.party_numbers.get(node).and_then(|n| p.usage.get(n)).copied().unwrap_or_default()
    }

    /// Counts what each party stores ([`Usage`]) and the orders per site from the totals `hub.redb` keeps:
    /// no row read, no document loaded.
    pub(super) fn count_usage(&mut self, totals: &[(String, u64, u64, u64)]) {
        if totals.len() >= TOTALS_READ_MAX {
            tracing::warn!(max = TOTALS_READ_MAX, "more (origin, parties) totals than are read: usage counted short");
        }
        let (usage, site_counts) = self.sync.access.count(totals);
        let p = &mut self.sync.access;
        p.usage = usage;
        p.site_counts = site_counts;
    }

    /// Sets each party's stored bytes to what the totals `hub.redb` keeps say it stores, plus the message
    /// bytes counted since the last flush was prepared, at most every [`STORED_RECOUNT_MS`]; call after a
    /// flush's commit. Between recounts the figure grows by the size of each message a node's change came in,
    /// which is more than the change stores, and nothing takes off what compactions, full saves of frozen
    /// orders and new generations of stock documents free: without this a node's figure would only grow
    /// until a restart, until its byte quota refused its changes though the hub stored far less. A read of
    /// the totals cut short at [`TOTALS_READ_MAX`] rows leaves the figures as they are.
    pub fn recount_stored_bytes_if_due(&mut self, now_ms: u64) {
        self.recount_stored_bytes_reading(now_ms, TOTALS_READ_MAX);
    }

    /// [`HubDocs::recount_stored_bytes_if_due`] reading at most `read_max` totals. A read cut short at
    /// `read_max` leaves the figures as they are: recounting from part of the totals would lower every figure
    /// the missing rows add to, and a node's quota would then let it store more than it may. The start
    /// ([`HubDocs::count_usage`]) warns that it counted short; the figures then only grow until a restart.
    pub(super) fn recount_stored_bytes_reading(&mut self, now_ms: u64, read_max: usize) {
        if now_ms.saturating_sub(self.stored_recounted_at_ms) < STORED_RECOUNT_MS {
            return;
        }
        self.stored_recounted_at_ms = now_ms;
        match self.sync.db.stored_totals(read_max) {
            Ok(totals) if totals.len() >= read_max => {
                tracing::debug!(max = read_max, "more totals than are read: the nodes' stored bytes stay as counted")
            }
            Ok(totals) => self.recount_stored_bytes(&totals),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the stored totals; the nodes' stored bytes stay as counted")
            }
        }
    }

    fn recount_stored_bytes(&mut self, totals: &[(String, u64, u64, u64)]) {
        let (counted, _) = self.sync.access.count(totals);
        let usage = &mut self.sync.access.usage;
        for n in counted.keys().chain(self.bytes_since_prepare.keys()) {
            usage.entry(*n).or_default();
        }
        for (n, u) in usage.iter_mut() {
            let stored = counted.get(n).map_or(0, |c| c.stored_bytes);
            u.stored_bytes = stored.saturating_add(self.bytes_since_prepare.get(n).copied().unwrap_or(0));
        }
    }
}

impl Parties {
    /// What each party stores and the orders per site, from the totals `hub.redb` keeps.
    pub(super) fn count(&self, totals: &[(String, u64, u64, u64)]) -> (BTreeMap<u32, Usage>, BTreeMap<u32, u64>) {
        let mut usage: BTreeMap<u32, Usage> = BTreeMap::new();
        let mut site_counts: BTreeMap<u32, u64> = BTreeMap::new();
        for (group, label, documents, bytes) in totals {
            // Who created them: the origin an order's id names, a stock document's owner.
            let (creator, order) = match group.strip_prefix(schema::ORDER_PREFIX) {
                Some(origin) => (self.party_numbers.get(origin).copied(), true),
                None => {
                    // A stock document's group is its id, which may name a generation (`stock/<node>#<n>`).
                    let owner = group.strip_prefix(schema::STOCK_PREFIX).and_then(oms_protocol::generations::split);
                    (owner.and_then(|(n, _)| self.party_numbers.get(n)).copied(), false)
                }
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
        (usage, site_counts)
    }
}
