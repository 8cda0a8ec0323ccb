//! The documents in memory: a [`Slot`] per document that is loaded or differs from its committed row,
//! loading from disk (a full save, then the increments), the resident set and its least-recently-used
//! eviction, and the calls that hand a document out ([`DocDb::get`], [`DocDb::read`], [`DocDb::get_mut`]) or
//! change which documents are held ([`DocDb::get_or_create`], [`DocDb::replace`], [`DocDb::remove`]).

use std::borrow::Cow;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use oms_protocol::sync::automerge::{AutoCommit, AutomergeError};
use oms_protocol::wire::DocId;
use oms_service::lock;
use redb::ReadableDatabase;

use super::meta::Persisted;
use super::{DOC_INCREMENTS, DOCS, DocDb, DocDbError, OrStorage};

/// One document: loaded (possibly lazily, through `&self`) or evicted to what is on disk, and what is on disk.
#[derive(Debug, Default)]
pub(super) struct Slot {
    pub(super) doc: OnceLock<Box<AutoCommit>>,
    /// When it was last accessed (a counter, wrapping), for eviction.
    pub(super) used: AtomicU32,
    pub(super) persisted: Persisted,
}

impl Slot {
    fn loaded(doc: AutoCommit) -> Slot {
        let slot = Slot::default();
        let _ = slot.doc.set(Box::new(doc));
        slot
    }
}

impl DocDb {
    /// The slot of a held document, brought into memory (without loading the document) if it was not.
    pub(super) fn slot_mut(&mut self, doc: &DocId) -> Option<&mut Slot> {
        if !self.docs.contains_key(doc) {
            let persisted = self.stored(doc)?;
            self.docs.insert(doc.clone(), Slot { persisted, ..Slot::default() });
        }
        self.docs.get_mut(doc)
    }

    /// Keeps at most `max` documents loaded: beyond it, a flush prepared while no other is in flight evicts
    /// the least recently used documents whose disk copy is current; they load again on access.
    pub fn set_cache_max(&mut self, max: usize) {
        self.cache_max = max.max(1);
    }

    /// Number of documents loaded in memory.
    pub fn loaded(&self) -> usize {
        lock(&self.resident).len()
    }

    /// Number of documents in memory, loaded or not (see the module docs).
    pub fn in_memory(&self) -> usize {
        self.docs.len()
    }

    /// A document, loaded from disk (and kept loaded until an eviction) if it was evicted (`None` if it is not
    /// held or does not load; logged).
    pub fn get(&mut self, doc: &DocId) -> Option<&AutoCommit> {
        self.slot_mut(doc)?;
        let slot = self.docs.get(doc)?;
        slot.used.store(self.clock.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        if slot.doc.get().is_none() {
            match self.load(doc) {
                Ok(loaded) => {
                    if slot.doc.set(Box::new(loaded)).is_ok() {
                        lock(&self.resident).insert(doc.clone());
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot load an evicted document");
                    return None;
                }
            }
        }
        slot.doc.get().map(|d| &**d)
    }

    /// A document to read without keeping it loaded: borrowed if it is loaded, otherwise loaded for this
    /// read only and dropped with the returned value. Read paths that may visit many documents (listings,
    /// demand scans) use this, so they cannot fill memory: [`DocDb::get`] keeps what it loads until the next
    /// eviction, which only runs after a flush, and an idle hub may not flush for hours.
    pub fn read(&self, doc: &DocId) -> Option<Cow<'_, AutoCommit>> {
        if let Some(slot) = self.docs.get(doc) {
            slot.used.store(self.clock.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
            if let Some(d) = slot.doc.get() {
                return Some(Cow::Borrowed(&**d));
            }
        } else {
            self.stored(doc)?;
        }
        match self.load(doc) {
            Ok(d) => Some(Cow::Owned(d)),
            Err(e) => {
                tracing::error!(error = %e, "cannot load an evicted document");
                None
            }
        }
    }

    /// A document to change; call [`DocDb::mark_dirty`] after changing it.
    pub fn get_mut(&mut self, doc: &DocId) -> Option<&mut AutoCommit> {
        self.get(doc)?;
        self.generation = self.generation.wrapping_add(1);
        self.docs.get_mut(doc)?.doc.get_mut().map(|d| &mut **d)
    }

    /// Reads an evicted document from disk: its full save, then its increments.
    pub(super) fn load(&self, id: &DocId) -> Result<AutoCommit, DocDbError> {
        let corrupt =
            |e: AutomergeError| DocDbError::Corrupt { path: self.path.clone(), doc: id.to_string(), source: e.into() };
        let name = id.as_str();
        let r = self.db.begin_read().or_storage(&self.path)?;
        let t = r.open_table(DOCS).or_storage(&self.path)?;
        let mut doc = match t.get(name).or_storage(&self.path)? {
            Some(v) => AutoCommit::load(v.value()).map_err(corrupt)?,
            None => AutoCommit::new(),
        };
        let t = r.open_table(DOC_INCREMENTS).or_storage(&self.path)?;
        for item in t.range((name, 0)..=(name, u64::MAX)).or_storage(&self.path)? {
            let (_, v) = item.or_storage(&self.path)?;
            doc.load_incremental(v.value()).map_err(corrupt)?;
        }
        doc.set_actor(self.actor.clone());
        Ok(doc)
    }

    /// Evicts clean documents, least recently used first, down to three quarters of `cache_max`. Only
    /// called while no batch is in flight and after failed batches came back, so a clean document's
    /// disk copy is committed. Looks only at the loaded documents.
    pub(super) fn evict(&mut self) {
        // Every batch is committed: removals are off the disk, and settled rows on it.
        self.flushing_removed.clear();
        // `get_mut` takes no lock (`&mut self` is proof enough), so `oms_service::lock` has no part here; a
        // poisoned set is taken as it is, as `lock` would.
        let resident = self.resident.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Slots of documents not loaded, once settled, go; with no more slots than loaded documents there are
        // none, and the walk over every slot (after each flush) is skipped.
        if self.docs.len() > resident.len() {
            let dirty = &self.dirty_docs;
            self.docs.retain(|id, s| s.doc.get().is_some() || !s.persisted.settled() || dirty.contains(id));
        }
        if resident.len() <= self.cache_max {
            return;
        }
        let mut excess = resident.len() - self.cache_max / 4 * 3;
        let now = self.clock.load(Ordering::Relaxed);
        let mut candidates: Vec<(u32, DocId)> = Vec::with_capacity(resident.len());
        resident.retain(|id| match self.docs.get(id) {
            Some(s) if s.doc.get().is_some() => {
                if !self.dirty_docs.contains(id) {
                    // Age rather than the raw counter, so that a wrapped counter still sorts oldest first.
                    candidates.push((now.wrapping_sub(s.used.load(Ordering::Relaxed)), id.clone()));
                }
                true
            }
            _ => false,
        });
        candidates.sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
        for (_, id) in candidates {
            if excess == 0 {
                break;
            }
            let Some(slot) = self.docs.get_mut(&id) else { continue };
            let p = &slot.persisted;
            let clean = p.settled() && slot.doc.get_mut().is_some_and(|d| p.heads.is(&d.get_heads()));
            if clean {
                // Its row is current: nothing about it stays in memory.
                self.docs.remove(&id);
                resident.remove(&id);
                excess -= 1;
            }
        }
    }

    /// Evicts clean documents beyond `cache_max` now, if no batch is in flight (otherwise the next prepare
    /// does). Call it after a commit: the documents a burst loaded then stay loaded only until their batch
    /// is on disk, not until the next flush, which may not come for a long time once the burst is over.
    /// Returns how many documents are loaded afterwards.
    pub fn evict_idle(&mut self) -> usize {
        let gate = self.gate.clone();
        let g = lock(&gate.0);
        // Failed batches must come back (`prepare_flush` restores them) before anything counts as clean.
        if g.idle() {
            self.evict();
        }
        drop(g);
        self.loaded()
    }

    /// A document, created empty (with this process's actor) if absent.
    pub fn get_or_create(&mut self, doc: &DocId) -> Result<&mut AutoCommit, DocDbError> {
        self.generation = self.generation.wrapping_add(1);
        if !self.contains(doc) {
            self.hold_new(doc, AutoCommit::new())?;
        }
        let path = self.path.clone();
        // `get` logged why it did not load (the error value is gone by now).
        self.get_mut(doc).ok_or_else(|| DocDbError::Unreadable {
            path,
            doc: doc.to_string(),
            detail: "evicted and does not load",
        })
    }

    /// Holds `value`, built elsewhere (e.g. away from a lock this database sits behind), as the new document
    /// `doc`, with this process's actor for its later changes. `Ok(false)`, and nothing held, if `doc` is
    /// already held. Call [`DocDb::mark_dirty`] afterwards, as after a change.
    pub fn create(&mut self, doc: &DocId, value: AutoCommit) -> Result<bool, DocDbError> {
        self.generation = self.generation.wrapping_add(1);
        if self.contains(doc) {
            return Ok(false);
        }
        self.hold_new(doc, value)?;
        Ok(true)
    }

    /// Holds `value` as `doc`, which is not held, within `docs_max`.
    fn hold_new(&mut self, doc: &DocId, mut value: AutoCommit) -> Result<(), DocDbError> {
        self.before_create(doc)?;
        if self.count >= self.docs_max {
            return Err(DocDbError::Full { path: self.path.clone(), max: self.docs_max, doc: doc.to_string() });
        }
        value.set_actor(self.actor.clone());
        self.docs.insert(doc.clone(), Slot::loaded(value));
        self.count += 1;
        lock(&self.resident).insert(doc.clone());
        Ok(())
    }

    /// Replaces a document (e.g. with a fork taken before a refused change).
    pub fn replace(&mut self, doc: &DocId, mut value: AutoCommit) {
        value.set_actor(self.actor.clone());
        self.generation = self.generation.wrapping_add(1);
        if self.slot_mut(doc).is_none() {
            self.count += 1;
        }
        let slot = self.docs.entry(doc.clone()).or_default();
        slot.doc = OnceLock::from(Box::new(value));
        // What is on disk may hold changes the replacement lacks: rewrite it whole.
        if slot.persisted.stored {
            slot.persisted.full_needed = true;
        }
        lock(&self.resident).insert(doc.clone());
        self.dirty_docs.insert(doc.clone());
    }

    /// Forgets a document (e.g. one whose only changes were refused); deleted from disk by the next flush,
    /// with its sync states for every peer.
    pub fn remove(&mut self, doc: &DocId) {
        self.generation = self.generation.wrapping_add(1);
        if self.docs.remove(doc).is_some() || self.stored(doc).is_some() {
            self.count = self.count.saturating_sub(1);
        }
        lock(&self.resident).remove(doc);
        self.dirty_docs.remove(doc);
        self.dirty_states.retain(|(_, d), _| d != doc);
        self.removed.insert(doc.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oms_protocol::sync::automerge::{ROOT, ReadDoc, transaction::Transactable};
    use redb::Database;
    use std::error::Error as _;

    #[test]
    fn clean_documents_are_evicted_and_load_again_on_access() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        let ids: Vec<DocId> = (0..20).map(|i| DocId::new(format!("order/a-{i}")).unwrap()).collect();
        let heads = {
            let mut db = DocDb::open(&path, vec![1; 16], 100).unwrap();
            db.set_cache_max(4);
            for (i, id) in ids.iter().enumerate() {
                db.get_or_create(id).unwrap().put(ROOT, "k", i as u64).unwrap();
                db.mark_dirty(id);
                db.flush().unwrap();
            }
            // Dirty documents are never evicted; clean ones are, at the next prepare.
            db.get_mut(&ids[0]).unwrap().put(ROOT, "k", 100).unwrap();
            db.mark_dirty(&ids[0]);
            db.flush().unwrap();
            db.get_mut(&ids[1]).unwrap().put(ROOT, "k", 101).unwrap();
            db.mark_dirty(&ids[1]);
            db.flush().unwrap();
            assert!(db.loaded() <= 4, "{} loaded", db.loaded());
            // A burst loads more than the cache holds; once its batch is committed, `evict_idle` brings
            // them back under the cap without waiting for another flush.
            for (i, id) in ids.iter().enumerate().take(12) {
                db.get_mut(id).unwrap().put(ROOT, "burst", i as u64).unwrap();
                db.mark_dirty(id);
            }
            let batch = db.prepare_flush().unwrap();
            assert!(db.evict_idle() >= 12, "nothing is evicted while its batch is in flight");
            batch.commit().unwrap();
            assert!(db.evict_idle() <= 4, "{} loaded after the commit", db.loaded());
            assert_eq!(db.len(), 20);
            let expected =
                |db: &mut DocDb, id: &DocId| db.get(id).unwrap().get(ROOT, "k").unwrap().map(|(v, _)| v.as_u64());
            assert_eq!(expected(&mut db, &ids[0]), Some(Some(100)), "evicted, loads with every change");
            assert_eq!(expected(&mut db, &ids[7]), Some(Some(7)));
            // Heads of an evicted document come from what is on disk, without loading it.
            let before = db.loaded();
            let h = db.heads(&ids[12]).unwrap();
            assert_eq!(db.loaded(), before);
            assert_eq!(db.get_mut(&ids[12]).unwrap().get_heads(), h);
            // `read` of an evicted document loads it for that read only; of a loaded one, borrows it.
            let before = db.loaded();
            for (i, id) in ids.iter().enumerate().skip(13) {
                let doc = db.read(id).unwrap();
                assert!(matches!(doc, Cow::Owned(_)), "{id} was evicted");
                assert_eq!(doc.get(ROOT, "k").unwrap().map(|(v, _)| v.as_u64()), Some(Some(i as u64)));
            }
            assert_eq!(db.loaded(), before, "reads keep nothing loaded");
            assert!(matches!(db.read(&ids[12]).unwrap(), Cow::Borrowed(_)));
            assert!(db.read(&DocId::new("order/absent").unwrap()).is_none());
            // A reloaded document changed and flushed again survives a reopen.
            db.get_mut(&ids[7]).unwrap().put(ROOT, "k", 107).unwrap();
            db.mark_dirty(&ids[7]);
            db.flush().unwrap();
            db.flush().unwrap();
            ids.iter().map(|id| db.get_mut(id).unwrap().get_heads()).collect::<Vec<_>>()
        };
        let mut db = DocDb::open(&path, vec![2; 16], 100).unwrap();
        assert_eq!(ids.iter().map(|id| db.get_mut(id).unwrap().get_heads()).collect::<Vec<_>>(), heads);
    }

    #[test]
    fn a_document_built_elsewhere_is_held_once_and_never_over_one_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        let (a, b) = (DocId::new("order/a-1").unwrap(), DocId::new("order/a-2").unwrap());
        let built = |v: u64| {
            let mut d = AutoCommit::new().with_actor(vec![9; 16].into());
            d.put(ROOT, "k", v).unwrap();
            d.commit();
            d
        };
        let heads = {
            let mut db = DocDb::open(&path, vec![1; 16], 1).unwrap();
            assert!(db.create(&a, built(1)).unwrap());
            db.mark_dirty(&a);
            assert_eq!((db.len(), db.loaded()), (1, 1));
            // Its later changes are this process's.
            assert_eq!(db.get_mut(&a).unwrap().get_actor(), &vec![1u8; 16].into());
            db.flush().unwrap();
            // Held already (loaded, or only on disk after an eviction): not replaced, nothing changes.
            let before = db.get_mut(&a).unwrap().get_heads();
            assert!(!db.create(&a, built(2)).unwrap());
            db.set_cache_max(1);
            db.evict();
            assert!(!db.create(&a, built(3)).unwrap());
            assert_eq!(db.get_mut(&a).unwrap().get_heads(), before);
            // Within `docs_max`, as `get_or_create`.
            assert!(matches!(db.create(&b, built(4)), Err(DocDbError::Full { .. })));
            assert!(!db.contains(&b));
            before
        };
        let mut db = DocDb::open(&path, vec![2; 16], 10).unwrap();
        let d = db.get_mut(&a).unwrap();
        assert_eq!(d.get_heads(), heads);
        assert_eq!(d.get(ROOT, "k").unwrap().map(|(v, _)| v.as_u64()), Some(Some(1)));
    }

    #[test]
    fn opening_loads_no_document_and_keeps_heads_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        let ids: Vec<DocId> = (0..5).map(|i| DocId::new(format!("order/a-{i}")).unwrap()).collect();
        let heads = {
            let mut db = DocDb::open(&path, vec![1; 16], 100).unwrap();
            for (i, id) in ids.iter().enumerate() {
                db.get_or_create(id).unwrap().put(ROOT, "k", i as u64).unwrap();
                db.mark_dirty(id);
                db.set_label(id, 7 + i as u64);
            }
            db.flush().unwrap();
            // A label changed on an evicted document alone is written too.
            db.set_cache_max(1);
            db.get_mut(&ids[0]).unwrap().put(ROOT, "k", 9).unwrap();
            db.mark_dirty(&ids[0]);
            db.flush().unwrap();
            db.flush().unwrap();
            assert!(db.get(&ids[4]).is_some());
            db.set_label(&ids[3], 42);
            db.flush().unwrap();
            ids.iter().map(|id| db.heads(id).unwrap()).collect::<Vec<_>>()
        };
        let mut db = DocDb::open(&path, vec![2; 16], 100).unwrap();
        assert_eq!(db.loaded(), 0, "opening loads no document");
        assert_eq!(ids.iter().map(|id| db.heads(id).unwrap()).collect::<Vec<_>>(), heads);
        assert_eq!(db.loaded(), 0, "heads come from doc_meta");
        let labels: Vec<u64> = ids.iter().map(|id| db.label(id).unwrap()).collect();
        assert_eq!(labels, vec![7, 8, 9, 42, 11]);
        assert_eq!(db.get_mut(&ids[2]).unwrap().get_heads(), heads[2]);
        assert_eq!(db.loaded(), 1);
    }

    #[test]
    fn document_limit_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = DocDb::open(&dir.path().join("s.redb"), vec![1; 16], 1).unwrap();
        db.get_or_create(&DocId::new("a").unwrap()).unwrap();
        assert!(matches!(db.get_or_create(&DocId::new("b").unwrap()), Err(DocDbError::Full { max: 1, .. })));
        assert!(db.get_or_create(&DocId::new("a").unwrap()).is_ok(), "an existing document is not a new one");
    }

    #[test]
    fn a_document_that_does_not_load_keeps_automerges_error_as_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync.redb");
        let id = DocId::new("order/a-1").unwrap();
        {
            let mut db = DocDb::open(&path, vec![1; 16], 10).unwrap();
            db.get_or_create(&id).unwrap().put(ROOT, "k", 1).unwrap();
            db.mark_dirty(&id);
            db.flush().unwrap();
        }
        {
            // The full save is damaged behind the database's back; its row still says it is there.
            let db = Database::create(&path).unwrap();
            let w = db.begin_write().unwrap();
            w.open_table(DOCS).unwrap().insert(id.as_str(), &b"not automerge"[..]).unwrap();
            w.commit().unwrap();
        }
        let db = DocDb::open(&path, vec![2; 16], 10).unwrap();
        assert!(db.read(&id).is_none(), "logged, and not handed out");
        let e = db.load(&id).unwrap_err();
        assert!(matches!(&e, DocDbError::Corrupt { doc, .. } if doc == id.as_str()), "{e:?}");
        let source = e.source().unwrap();
        assert!(source.downcast_ref::<AutomergeError>().is_some(), "{source:?}");
        assert!(e.to_string().ends_with(&source.to_string()), "{e}");
    }
}
