//! Automerge documents and per-(peer, document) sync states persisted in a redb file of their own.
//!
//! Both sides of sync keep their documents here: the node in `sync.redb` beside `node.redb` (so the sync
//! task never writes through the store's single writer), the hub in `hub.redb`. Documents are held in memory
//! for the sync session and written back whole (`AutoCommit::save`, a few hundred bytes for an order) by
//! [`DocDb::flush`], together with the sync states and counters of the same step, in one transaction: after
//! a crash a document, its sync state and the feed cursor that produced it are all old or all new.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use oms_protocol::sync::automerge::{self, ActorId, AutoCommit};
use oms_protocol::wire::{DocId, PeerId};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("docs");
const SYNC_STATES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("sync_states");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Errors of the document database.
#[derive(Debug, thiserror::Error)]
pub enum DocDbError {
    /// redb failed (disk full, I/O error, file locked by another process).
    #[error("{path}: {detail}")]
    Storage {
        /// The database file.
        path: PathBuf,
        /// What redb said.
        detail: String,
    },
    /// A stored document does not load.
    #[error("{path}: document {doc} does not load: {detail}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// The document.
        doc: String,
        /// What Automerge said.
        detail: String,
    },
    /// Creating one more document would exceed the limit.
    #[error("{path}: {max} documents held; refusing to create {doc}")]
    Full {
        /// The database file.
        path: PathBuf,
        /// The limit.
        max: usize,
        /// The document refused.
        doc: String,
    },
}

/// The documents of one side of sync. See the module docs.
pub struct DocDb {
    path: PathBuf,
    db: Database,
    actor: ActorId,
    docs_max: usize,
    docs: BTreeMap<DocId, AutoCommit>,
    dirty_docs: BTreeSet<DocId>,
    dirty_states: BTreeMap<(PeerId, DocId), Vec<u8>>,
    dirty_meta: BTreeMap<String, u64>,
    removed: BTreeSet<DocId>,
}

impl std::fmt::Debug for DocDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocDb").field("path", &self.path).field("docs", &self.docs.len()).finish()
    }
}

impl DocDb {
    /// Opens (or creates) the file and loads every document, giving each this process's `actor` (fresh per
    /// process start, so two incarnations never reuse an actor's sequence numbers). At most `docs_max`
    /// documents are held.
    pub fn open(path: &Path, actor: Vec<u8>, docs_max: usize) -> Result<DocDb, DocDbError> {
        let storage = |e: &dyn std::fmt::Display| DocDbError::Storage { path: path.into(), detail: e.to_string() };
        let db = Database::create(path).map_err(|e| storage(&e))?;
        let w = db.begin_write().map_err(|e| storage(&e))?;
        w.open_table(DOCS).map_err(|e| storage(&e))?;
        w.open_table(SYNC_STATES).map_err(|e| storage(&e))?;
        w.open_table(META).map_err(|e| storage(&e))?;
        w.commit().map_err(|e| storage(&e))?;
        let actor = ActorId::from(actor);
        let mut docs = BTreeMap::new();
        {
            let r = db.begin_read().map_err(|e| storage(&e))?;
            let t = r.open_table(DOCS).map_err(|e| storage(&e))?;
            for item in t.iter().map_err(|e| storage(&e))? {
                let (k, v) = item.map_err(|e| storage(&e))?;
                let name = k.value().to_owned();
                let Some(id) = DocId::new(name.clone()) else { continue };
                let doc = AutoCommit::load(v.value()).map_err(|e| DocDbError::Corrupt {
                    path: path.into(),
                    doc: name,
                    detail: e.to_string(),
                })?;
                docs.insert(id, doc.with_actor(actor.clone()));
            }
        }
        Ok(DocDb {
            path: path.into(),
            db,
            actor,
            docs_max,
            docs,
            dirty_docs: BTreeSet::new(),
            dirty_states: BTreeMap::new(),
            dirty_meta: BTreeMap::new(),
            removed: BTreeSet::new(),
        })
    }

    fn storage(&self, e: &dyn std::fmt::Display) -> DocDbError {
        DocDbError::Storage { path: self.path.clone(), detail: e.to_string() }
    }

    /// Number of documents held.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// True if no document is held.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// Ids of the documents held, in order.
    pub fn ids(&self) -> impl Iterator<Item = &DocId> {
        self.docs.keys()
    }

    /// Ids starting with `prefix`, after `after`, at most `limit`.
    pub fn ids_with_prefix(&self, prefix: &str, after: Option<&str>, limit: usize) -> Vec<DocId> {
        use std::ops::Bound;
        let lo = match (after.and_then(|a| DocId::new(format!("{prefix}{a}"))), DocId::new(prefix)) {
            (Some(d), _) => Bound::Excluded(d),
            (None, Some(d)) => Bound::Included(d),
            (None, None) => Bound::Unbounded,
        };
        self.docs
            .range((lo, Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.as_str().starts_with(prefix))
            .take(limit)
            .cloned()
            .collect()
    }

    /// A document.
    pub fn get(&self, doc: &DocId) -> Option<&AutoCommit> {
        self.docs.get(doc)
    }

    /// A document to change; call [`DocDb::mark_dirty`] after changing it.
    pub fn get_mut(&mut self, doc: &DocId) -> Option<&mut AutoCommit> {
        self.docs.get_mut(doc)
    }

    /// A document, created empty (with this process's actor) if absent.
    pub fn get_or_create(&mut self, doc: &DocId) -> Result<&mut AutoCommit, DocDbError> {
        if !self.docs.contains_key(doc) && self.docs.len() >= self.docs_max {
            return Err(DocDbError::Full { path: self.path.clone(), max: self.docs_max, doc: doc.to_string() });
        }
        let actor = self.actor.clone();
        Ok(self.docs.entry(doc.clone()).or_insert_with(|| AutoCommit::new().with_actor(actor)))
    }

    /// Replaces a document (e.g. with a fork taken before a refused change).
    pub fn replace(&mut self, doc: &DocId, mut value: AutoCommit) {
        value.set_actor(self.actor.clone());
        self.docs.insert(doc.clone(), value);
        self.dirty_docs.insert(doc.clone());
    }

    /// Forgets a document (e.g. one whose only changes were refused); deleted from disk by the next flush.
    pub fn remove(&mut self, doc: &DocId) {
        self.docs.remove(doc);
        self.dirty_docs.remove(doc);
        self.removed.insert(doc.clone());
    }

    /// Marks a document for the next [`DocDb::flush`].
    pub fn mark_dirty(&mut self, doc: &DocId) {
        if self.docs.contains_key(doc) {
            self.dirty_docs.insert(doc.clone());
        }
    }

    /// True if something waits for [`DocDb::flush`].
    pub fn has_dirty(&self) -> bool {
        !(self.dirty_docs.is_empty()
            && self.dirty_states.is_empty()
            && self.dirty_meta.is_empty()
            && self.removed.is_empty())
    }

    /// A counter or cursor, including a value not yet flushed.
    pub fn meta(&self, key: &str) -> Result<Option<u64>, DocDbError> {
        if let Some(v) = self.dirty_meta.get(key) {
            return Ok(Some(*v));
        }
        let r = self.db.begin_read().map_err(|e| self.storage(&e))?;
        let t = r.open_table(META).map_err(|e| self.storage(&e))?;
        Ok(t.get(key).map_err(|e| self.storage(&e))?.map(|v| v.value()))
    }

    /// Flushed counters whose key starts with `prefix`, at most `limit`.
    pub fn meta_with_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<(String, u64)>, DocDbError> {
        let r = self.db.begin_read().map_err(|e| self.storage(&e))?;
        let t = r.open_table(META).map_err(|e| self.storage(&e))?;
        let mut out = Vec::new();
        for item in t.range(prefix..).map_err(|e| self.storage(&e))? {
            let (k, v) = item.map_err(|e| self.storage(&e))?;
            if !k.value().starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.value().to_owned(), v.value()));
        }
        Ok(out)
    }

    /// Sets a counter or cursor, written by the next [`DocDb::flush`].
    pub fn set_meta(&mut self, key: &str, value: u64) {
        self.dirty_meta.insert(key.to_owned(), value);
    }

    /// The persisted sync state of (peer, doc), including one not yet flushed.
    pub fn sync_state(&self, peer: &PeerId, doc: &DocId) -> Option<Vec<u8>> {
        if let Some(s) = self.dirty_states.get(&(peer.clone(), doc.clone())) {
            return Some(s.clone());
        }
        let r = self.db.begin_read().ok()?;
        let t = r.open_table(SYNC_STATES).ok()?;
        t.get((peer.as_str(), doc.as_str())).ok().flatten().map(|v| v.value().to_vec())
    }

    /// Records the sync state of (peer, doc) for the next [`DocDb::flush`].
    pub fn set_sync_state(&mut self, peer: &PeerId, doc: &DocId, state: Vec<u8>) {
        self.dirty_states.insert((peer.clone(), doc.clone()), state);
    }

    /// Writes every dirty document, sync state and counter in one transaction. On error nothing is lost from
    /// memory: the dirty sets are kept and the next flush retries.
    pub fn flush(&mut self) -> Result<(), DocDbError> {
        if !self.has_dirty() {
            return Ok(());
        }
        let w = self.db.begin_write().map_err(|e| self.storage(&e))?;
        {
            let mut docs = w.open_table(DOCS).map_err(|e| self.storage(&e))?;
            for id in &self.dirty_docs {
                if let Some(doc) = self.docs.get_mut(id) {
                    let bytes = doc.save();
                    docs.insert(id.as_str(), &bytes[..])
                        .map_err(|e| DocDbError::Storage { path: self.path.clone(), detail: e.to_string() })?;
                }
            }
            for id in &self.removed {
                docs.remove(id.as_str()).map_err(|e| self.storage(&e))?;
            }
            let mut states = w.open_table(SYNC_STATES).map_err(|e| self.storage(&e))?;
            for ((peer, doc), s) in &self.dirty_states {
                states.insert((peer.as_str(), doc.as_str()), &s[..]).map_err(|e| self.storage(&e))?;
            }
            let mut meta = w.open_table(META).map_err(|e| self.storage(&e))?;
            for (k, v) in &self.dirty_meta {
                meta.insert(k.as_str(), *v).map_err(|e| self.storage(&e))?;
            }
        }
        w.commit().map_err(|e| self.storage(&e))?;
        self.dirty_docs.clear();
        self.dirty_states.clear();
        self.dirty_meta.clear();
        self.removed.clear();
        Ok(())
    }
}

/// Lists the document ids stored in a `sync.redb` / `hub.redb` file that no process holds open (for tests
/// and for operators checking what a node was given).
pub fn stored_doc_ids(path: &Path) -> Result<Vec<String>, DocDbError> {
    let storage = |e: &dyn std::fmt::Display| DocDbError::Storage { path: path.into(), detail: e.to_string() };
    let db = Database::open(path).map_err(|e| storage(&e))?;
    let r = db.begin_read().map_err(|e| storage(&e))?;
    let t = r.open_table(DOCS).map_err(|e| storage(&e))?;
    let mut out = Vec::new();
    for item in t.iter().map_err(|e| storage(&e))? {
        out.push(item.map_err(|e| storage(&e))?.0.value().to_owned());
    }
    Ok(out)
}

/// Re-exported so callers name the same Automerge.
pub use automerge::ChangeHash;

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::{ROOT, transaction::Transactable};

    #[test]
    fn documents_states_and_counters_survive_reopen_and_removal_sticks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync.redb");
        let (a, b) = (DocId::new("order/a-1").unwrap(), DocId::new("order/b-1").unwrap());
        let peer = PeerId::new("oms://t/hub").unwrap();
        let heads = {
            let mut db = DocDb::open(&path, vec![1; 16], 10).unwrap();
            for id in [&a, &b] {
                db.get_or_create(id).unwrap().put(ROOT, "k", id.as_str()).unwrap();
                db.mark_dirty(id);
            }
            db.set_sync_state(&peer, &a, vec![9, 9]);
            db.set_meta("feed.cursor", 42);
            db.flush().unwrap();
            db.remove(&b);
            db.flush().unwrap();
            db.get_mut(&a).unwrap().get_heads()
        };
        let mut db = DocDb::open(&path, vec![2; 16], 10).unwrap();
        assert_eq!(db.ids().cloned().collect::<Vec<_>>(), vec![a.clone()]);
        assert_eq!(db.get_mut(&a).unwrap().get_heads(), heads);
        assert_eq!(db.sync_state(&peer, &a), Some(vec![9, 9]));
        assert_eq!(db.meta("feed.cursor").unwrap(), Some(42));
        assert_eq!(stored_doc_ids(&path).err().map(|_| ()), Some(()), "the file is locked while open");
        drop(db);
        assert_eq!(stored_doc_ids(&path).unwrap(), vec!["order/a-1".to_owned()]);
    }

    #[test]
    fn document_limit_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = DocDb::open(&dir.path().join("s.redb"), vec![1; 16], 1).unwrap();
        db.get_or_create(&DocId::new("a").unwrap()).unwrap();
        assert!(matches!(db.get_or_create(&DocId::new("b").unwrap()), Err(DocDbError::Full { max: 1, .. })));
        assert!(db.get_or_create(&DocId::new("a").unwrap()).is_ok(), "an existing document is not a new one");
    }
}
