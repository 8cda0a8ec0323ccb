//! The one [`DocStore`] over a [`DocDb`]: what the sans-IO session asks of a document store, answered from
//! the database, with each peer's manifest digest cached until anything changes. The node and the hub differ
//! only in who may see which document and how to list a peer's documents without loading them; that is their
//! [`Access`] policy.

use std::collections::BTreeMap;

use oms_protocol::sync::automerge::{AutoCommit, ChangeHash};
use oms_protocol::sync::{DocStore, ManifestDigest, StoreError, buckets_for, manifest_buckets_of, manifest_digest_of};
use oms_protocol::wire::{DocId, ErrorCode, PeerId};

use crate::docdb::DocDb;

/// Peers whose manifest digest is cached (beyond it the cache starts over).
const DIGESTS_CACHED_MAX: usize = 4_096;

/// Most peers whose bucket digests are cached: each holds up to `BUCKETS_MAX` digests (160 KB).
const BUCKET_DIGESTS_CACHED_MAX: usize = 128;

/// Who may see which document, and how a peer's documents are listed: the part of a document store that
/// differs between the node (its own site's documents, one peer) and the hub (every node's, by party).
pub trait Access {
    /// May `peer` receive and send `doc`?
    fn entitled(&self, db: &DocDb, peer: &PeerId, doc: &DocId) -> bool;
    /// The documents held that `peer` is entitled to.
    fn docs_for(&self, db: &DocDb, peer: &PeerId) -> Vec<DocId>;
    /// The documents held that `peer` is entitled to, with their heads, read from `doc_meta` rows without
    /// loading a document.
    fn manifest_heads(&self, db: &mut DocDb, peer: &PeerId) -> Vec<(DocId, Vec<ChangeHash>)>;
    /// May changes of `bytes` from `peer` be applied to `doc` (`creates`: not held yet)? See
    /// [`DocStore::admit_changes`]; the default admits everything.
    fn admit_changes(
        &self,
        db: &DocDb,
        peer: &PeerId,
        doc: &DocId,
        creates: bool,
        bytes: usize,
    ) -> Result<(), ErrorCode> {
        let _ = (db, peer, doc, creates, bytes);
        Ok(())
    }
}

/// Every peer sees every document: the policy of tests of sync itself, this crate's and the hub's (feature
/// `test-support`; the node's and the hub's own policies are tested with them). Unbounded listings: not for a
/// store in production.
#[cfg(any(test, feature = "test-support"))]
#[derive(Debug, Clone, Copy, Default)]
pub struct Everything;

#[cfg(any(test, feature = "test-support"))]
impl Access for Everything {
    fn entitled(&self, _: &DocDb, _: &PeerId, _: &DocId) -> bool {
        true
    }
    fn docs_for(&self, db: &DocDb, _: &PeerId) -> Vec<DocId> {
        db.ids().collect()
    }
    fn manifest_heads(&self, db: &mut DocDb, _: &PeerId) -> Vec<(DocId, Vec<ChangeHash>)> {
        let ids: Vec<DocId> = db.ids().collect();
        ids.into_iter().filter_map(|d| db.heads(&d).map(|h| (d, h))).collect()
    }
}

/// A [`DocDb`] with an [`Access`] policy: the document store a sync session works on.
pub struct SyncDocs<A> {
    /// The documents.
    pub db: DocDb,
    /// Who may see which.
    pub access: A,
    /// Manifest digest per peer with the [`DocDb::generation`] it was computed at: an idle hub answers a
    /// hundred nodes' digest rounds without reading their rows again. At most [`DIGESTS_CACHED_MAX`].
    digests: BTreeMap<PeerId, (u64, ManifestDigest)>,
    /// Bucket digests per peer with the generation they were computed at, as `digests`. At most
    /// [`BUCKET_DIGESTS_CACHED_MAX`].
    buckets: BTreeMap<PeerId, (u64, Vec<ManifestDigest>)>,
}

impl<A> std::fmt::Debug for SyncDocs<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncDocs").field("docs", &self.db.len()).field("digests", &self.digests.len()).finish()
    }
}

impl<A: Access> SyncDocs<A> {
    /// `db` under the policy `access`.
    pub fn new(db: DocDb, access: A) -> Self {
        SyncDocs { db, access, digests: BTreeMap::new(), buckets: BTreeMap::new() }
    }

    /// Forgets every cached digest. Call it when entitlement changes without a document or label changing
    /// (a quarantine, say); a change to a document or label moves [`DocDb::generation`] by itself.
    pub fn forget_digests(&mut self) {
        self.digests.clear();
        self.buckets.clear();
    }

    /// The generation the digest of `peer` was cached at, if one is cached.
    pub fn digest_cached_at(&self, peer: &PeerId) -> Option<u64> {
        self.digests.get(peer).map(|(at, _)| *at)
    }
}

impl<A: Access> DocStore for SyncDocs<A> {
    fn entitled(&self, peer: &PeerId, doc: &DocId) -> bool {
        // An older generation of a state document is never merged back (see `oms_protocol::generations`).
        !self.db.is_superseded(doc) && self.access.entitled(&self.db, peer, doc)
    }
    fn docs_for(&self, peer: &PeerId) -> Vec<DocId> {
        self.access.docs_for(&self.db, peer)
    }
    fn manifest_heads(&mut self, peer: &PeerId) -> Vec<(DocId, Vec<ChangeHash>)> {
        self.access.manifest_heads(&mut self.db, peer)
    }
    fn manifest_digest(&mut self, peer: &PeerId) -> ManifestDigest {
        // Any change to any document (or label) moves the generation, so a cached digest is never stale.
        let generation = self.db.generation();
        if let Some((at, digest)) = self.digests.get(peer)
            && *at == generation
        {
            return *digest;
        }
        let digest = manifest_digest_of(self, peer);
        if self.digests.len() >= DIGESTS_CACHED_MAX {
            self.digests.clear();
        }
        self.digests.insert(peer.clone(), (generation, digest));
        digest
    }
    fn manifest_buckets(&mut self, peer: &PeerId, buckets: Option<u32>) -> Vec<ManifestDigest> {
        let generation = self.db.generation();
        if let Some((at, cached)) = self.buckets.get(peer)
            && *at == generation
        {
            let docs: u64 = cached.iter().map(ManifestDigest::docs).sum();
            let wanted = buckets.unwrap_or_else(|| buckets_for(usize::try_from(docs).unwrap_or(usize::MAX)));
            if cached.len() == wanted as usize {
                return cached.clone();
            }
        }
        let computed = manifest_buckets_of(self, peer, buckets);
        if self.buckets.len() >= BUCKET_DIGESTS_CACHED_MAX {
            self.buckets.clear();
        }
        self.buckets.insert(peer.clone(), (generation, computed.clone()));
        computed
    }
    fn doc_mut(&mut self, doc: &DocId) -> Option<&mut AutoCommit> {
        self.db.get_mut(doc)
    }
    fn heads(&mut self, doc: &DocId) -> Option<Vec<ChangeHash>> {
        // From what is on disk for an evicted document: a manifest loads none.
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
    fn admit_changes(&mut self, peer: &PeerId, doc: &DocId, creates: bool, bytes: usize) -> Result<(), ErrorCode> {
        self.access.admit_changes(&self.db, peer, doc, creates, bytes)
    }
}
