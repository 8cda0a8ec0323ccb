//! The two-phase flush: [`DocDb::prepare_flush`] takes the dirty state into a [`FlushBatch`] (in memory,
//! deciding per document between an increment, a full save and a row alone), and [`FlushBatch::commit`]
//! writes it in one redb transaction without the `DocDb`. The [`Gate`] shared by the database and its
//! batches hands out tickets so batches commit in prepare order, and carries what failed batches held back
//! to the next prepare made while none is in flight ([`DocDb::restore`]); until a recovering batch commits,
//! later batches fail too.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use oms_protocol::wire::{DocId, PeerId};
use oms_service::lock;
use redb::Database;

use super::meta::{Heads, TotalsDelta, bytes_u32, mark_full_needed};
use super::{
    DOC_FULL_NEEDED, DOC_INCREMENTS, DOC_INDEX, DOC_META, DOCS, DocDb, DocDbError, INCREMENT_BYTES_MIN,
    INCREMENTS_PER_DOC_MAX, META, OrStorage, SYNC_STATES, state_peers,
};

/// What a failed or abandoned batch held, handed back to the next prepare.
#[derive(Debug, Default)]
struct Returned {
    docs: Vec<DocId>,
    removed: Vec<DocId>,
    states: Vec<((PeerId, DocId), Vec<u8>)>,
    meta: Vec<(String, u64)>,
    index: Vec<((u64, DocId), bool)>,
}

/// Orders the commits of prepared batches and carries their failures back to the [`DocDb`].
#[derive(Debug, Default)]
pub(super) struct Gate {
    next_ticket: u64,
    /// The ticket whose turn it is to commit.
    turn: u64,
    /// Tickets dropped before their turn.
    abandoned: BTreeSet<u64>,
    in_flight: usize,
    /// A batch failed and its contents are not yet on disk: later batches fail too until a recovering one
    /// commits.
    broken: bool,
    failed: Vec<Returned>,
}

impl Gate {
    /// No batch is in flight and none failed since the last prepare: every clean document's disk copy is
    /// committed, so it may be evicted.
    pub(super) fn idle(&self) -> bool {
        self.in_flight == 0 && self.failed.is_empty() && !self.broken
    }
}

pub(super) type SharedGate = Arc<(Mutex<Gate>, Condvar)>;

/// One document's write in a batch; each carries the document's new `doc_meta` row.
enum DocWrite {
    /// A full save; the document's increments are deleted if it may have any.
    Full { bytes: Vec<u8>, drop_increments: bool, meta: Vec<u8> },
    /// The changes since the previous write of the document.
    Append { seq: u64, bytes: Vec<u8>, meta: Vec<u8> },
    /// Only the `doc_meta` row (a new label).
    Meta { meta: Vec<u8> },
}

impl DocDb {
    /// Whether `doc` is on disk as it is in memory: committed by a flush ([`DocDb::on_disk`]) and not marked
    /// dirty since, with no batch in flight or failed (then a clean document's disk copy may not be committed
    /// yet). False whenever in doubt. A caller that must not see a batch in flight serializes with the flushes.
    pub fn written(&self, doc: &DocId) -> bool {
        lock(&self.gate.0).idle() && !self.dirty_docs.contains(doc) && self.on_disk(doc)
    }

    /// Writes every dirty document, sync state and counter in one transaction ([`DocDb::prepare_flush`] then
    /// [`FlushBatch::commit`]). On error nothing is lost from memory: the next flush retries.
    pub fn flush(&mut self) -> Result<(), DocDbError> {
        match self.prepare_flush() {
            Some(batch) => batch.commit(),
            None => Ok(()),
        }
    }

    /// Takes every dirty document (as the changes since what is on disk, or as a full save when compacting),
    /// sync state and counter into a batch for [`FlushBatch::commit`], which may run without `self`.
    /// `None` if there is nothing to write.
    pub fn prepare_flush(&mut self) -> Option<FlushBatch> {
        let gate = self.gate.clone();
        let mut g = lock(&gate.0);
        let mut recovers = false;
        if g.in_flight == 0 {
            // Everything prepared before is on disk, or came back in `failed`.
            self.flushing_states.clear();
            self.flushing_meta.clear();
            self.flushing_index.clear();
            self.flushing_removed.clear();
            for r in std::mem::take(&mut g.failed) {
                self.restore(r);
            }
            recovers = g.broken;
            self.evict();
        }
        drop(g);
        if !self.has_dirty() && !recovers {
            return None;
        }
        let mut writes = Vec::new();
        for id in std::mem::take(&mut self.dirty_docs) {
            let evicted = self.docs.get(&id).is_some_and(|s| s.doc.get().is_none());
            if evicted || self.get(&id).is_none() {
                // Only clean documents are evicted (their disk copy is current); a label may have changed.
                if let Some(slot) = self.docs.get_mut(&id)
                    && slot.persisted.label_dirty
                    && slot.persisted.stored
                {
                    slot.persisted.label_dirty = false;
                    writes.push((id, DocWrite::Meta { meta: slot.persisted.encode() }));
                }
                continue;
            }
            let Some(slot) = self.docs.get_mut(&id) else { continue };
            let Some(doc) = slot.doc.get_mut() else { continue };
            let p = &mut slot.persisted;
            let heads = doc.get_heads();
            if p.stored && !p.full_needed && p.heads.is(&heads) {
                if p.label_dirty {
                    p.label_dirty = false;
                    writes.push((id, DocWrite::Meta { meta: p.encode() }));
                }
                continue;
            }
            // Sizes from the row are u32; saturating where usize is narrower keeps "too big" meaning too big.
            let size = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
            let compact = !p.stored
                || p.full_needed
                || u64::from(p.increments) >= INCREMENTS_PER_DOC_MAX
                || size(p.increment_bytes) >= INCREMENT_BYTES_MIN.max(size(p.base_bytes));
            let (bytes, full, drop_increments) = if compact {
                let bytes = doc.save();
                let drop_increments = p.increments > 0 || p.full_needed;
                p.base_bytes = bytes_u32(bytes.len());
                p.increment_bytes = 0;
                p.increments = 0;
                (bytes, true, drop_increments)
            } else {
                let bytes = doc.save_after(&p.heads.to_vec());
                p.increment_bytes = p.increment_bytes.saturating_add(bytes_u32(bytes.len()));
                p.increments = p.increments.saturating_add(1);
                (bytes, false, false)
            };
            let seq = p.next_seq;
            if !full {
                p.next_seq += 1;
            }
            p.heads = Heads::of(&heads);
            p.stored = true;
            p.full_needed = false;
            p.label_dirty = false;
            let meta = p.encode();
            let write = if full {
                DocWrite::Full { bytes, drop_increments, meta }
            } else {
                DocWrite::Append { seq, bytes, meta }
            };
            writes.push((id, write));
        }
        let removed: Vec<DocId> = std::mem::take(&mut self.removed).into_iter().collect();
        self.flushing_removed.extend(removed.iter().cloned());
        let states: Vec<_> = std::mem::take(&mut self.dirty_states).into_iter().collect();
        let meta: Vec<_> = std::mem::take(&mut self.dirty_meta).into_iter().collect();
        let index: Vec<_> = std::mem::take(&mut self.dirty_index).into_iter().collect();
        if writes.is_empty()
            && removed.is_empty()
            && states.is_empty()
            && meta.is_empty()
            && index.is_empty()
            && !recovers
        {
            return None;
        }
        let mut g = lock(&gate.0);
        let ticket = g.next_ticket;
        g.next_ticket += 1;
        g.in_flight += 1;
        drop(g);
        self.flushing_states.extend(states.iter().cloned());
        self.flushing_meta.extend(meta.iter().cloned());
        self.flushing_index.extend(index.iter().cloned());
        Some(FlushBatch {
            path: self.path.clone(),
            db: self.db.clone(),
            gate,
            commits: self.commits.clone(),
            ticket,
            recovers,
            writes,
            removed,
            states,
            meta,
            index,
            finished: false,
        })
    }

    /// Takes back what a failed batch held: its documents are written whole by the next flush.
    fn restore(&mut self, r: Returned) {
        for id in r.docs {
            if let Some(slot) = self.docs.get_mut(&id) {
                slot.persisted.full_needed = true;
                self.dirty_docs.insert(id);
            }
        }
        for id in r.removed {
            if !self.docs.contains_key(&id) {
                self.removed.insert(id);
            }
        }
        for (k, v) in r.states {
            self.dirty_states.entry(k).or_insert(v);
        }
        for (k, v) in r.meta {
            self.dirty_meta.entry(k).or_insert(v);
        }
        for (k, v) in r.index {
            self.dirty_index.entry(k).or_insert(v);
        }
    }
}

/// Documents, sync states and counters taken from a [`DocDb`] by [`DocDb::prepare_flush`], to be written by
/// [`FlushBatch::commit`]. Dropping it uncommitted counts as a failed commit (its contents are written again
/// by a later flush).
pub struct FlushBatch {
    path: PathBuf,
    db: Arc<Database>,
    gate: SharedGate,
    commits: Arc<AtomicU64>,
    ticket: u64,
    recovers: bool,
    writes: Vec<(DocId, DocWrite)>,
    removed: Vec<DocId>,
    states: Vec<((PeerId, DocId), Vec<u8>)>,
    meta: Vec<(String, u64)>,
    /// Entries of the owner's index to write (true) or delete (false).
    index: Vec<((u64, DocId), bool)>,
    finished: bool,
}

impl std::fmt::Debug for FlushBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlushBatch")
            .field("ticket", &self.ticket)
            .field("docs", &self.writes.len())
            .field("states", &self.states.len())
            .finish()
    }
}

impl FlushBatch {
    /// Number of documents written.
    pub fn docs(&self) -> usize {
        self.writes.len()
    }

    /// Writes the batch in one redb transaction (fsync), after every batch prepared before it. `Ok` means
    /// this batch and everything prepared before it are on disk. Blocks on disk I/O.
    pub fn commit(mut self) -> Result<(), DocDbError> {
        let gate = self.gate.clone();
        let (m, cv) = &*gate;
        let mut g = lock(m);
        while g.turn != self.ticket {
            // Poison-tolerant like `oms_service::lock`, which covers `lock()` but not a condvar's wait.
            g = cv.wait(g).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        let result = if g.broken && !self.recovers {
            Err(DocDbError::EarlierFlushFailed { path: self.path.clone() })
        } else {
            drop(g);
            let r = self.write();
            if r.is_ok() {
                self.commits.fetch_add(1, Ordering::AcqRel);
            }
            g = lock(m);
            r
        };
        self.finish(&mut g, result.is_ok());
        cv.notify_all();
        result
    }

    fn write(&self) -> Result<(), DocDbError> {
        let path = &self.path;
        let w = self.db.begin_write().or_storage(path)?;
        {
            let mut docs = w.open_table(DOCS).or_storage(path)?;
            let mut incs = w.open_table(DOC_INCREMENTS).or_storage(path)?;
            let mut metas = w.open_table(DOC_META).or_storage(path)?;
            let mut full_needed = w.open_table(DOC_FULL_NEEDED).or_storage(path)?;
            // What the rows add up to follows each row replaced or removed, in this transaction.
            let mut totals = TotalsDelta::default();
            // Removals first: a document removed and created again in the same batch keeps its new copy.
            for id in &self.removed {
                let name = id.as_str();
                docs.remove(name).or_storage(path)?;
                let was = match metas.remove(name).or_storage(path)? {
                    Some(old) => totals.row(name, old.value(), -1),
                    None => false,
                };
                mark_full_needed(&mut full_needed, name, was, false).or_storage(path)?;
                incs.retain_in((name, 0)..=(name, u64::MAX), |_, _| false).or_storage(path)?;
            }
            for (id, write) in &self.writes {
                let name = id.as_str();
                let meta = match write {
                    DocWrite::Full { bytes, drop_increments, meta } => {
                        docs.insert(name, &bytes[..]).or_storage(path)?;
                        if *drop_increments {
                            incs.retain_in((name, 0)..=(name, u64::MAX), |_, _| false).or_storage(path)?;
                        }
                        meta
                    }
                    DocWrite::Append { seq, bytes, meta } => {
                        incs.insert((name, *seq), &bytes[..]).or_storage(path)?;
                        meta
                    }
                    DocWrite::Meta { meta } => meta,
                };
                let was = match metas.insert(name, &meta[..]).or_storage(path)? {
                    Some(old) => totals.row(name, old.value(), -1),
                    None => false,
                };
                let now = totals.row(name, meta, 1);
                mark_full_needed(&mut full_needed, name, was, now).or_storage(path)?;
            }
            drop((docs, incs, metas, full_needed));
            totals.apply(&w).or_storage(path)?;
            let mut index = w.open_table(DOC_INDEX).or_storage(path)?;
            for ((key, doc), present) in &self.index {
                if *present {
                    index.insert((*key, doc.as_str()), ()).or_storage(path)?;
                } else {
                    index.remove((*key, doc.as_str())).or_storage(path)?;
                }
            }
            let mut states = w.open_table(SYNC_STATES).or_storage(path)?;
            // A removed document's sync states go with it, before this batch's own states are written (a
            // document removed and created again keeps the states it has since).
            if !self.removed.is_empty() {
                for peer in state_peers(&states).or_storage(path)? {
                    for id in &self.removed {
                        states.remove((peer.as_str(), id.as_str())).or_storage(path)?;
                    }
                }
            }
            for ((peer, doc), s) in &self.states {
                states.insert((peer.as_str(), doc.as_str()), &s[..]).or_storage(path)?;
            }
            let mut meta = w.open_table(META).or_storage(path)?;
            for (k, v) in &self.meta {
                meta.insert(k.as_str(), *v).or_storage(path)?;
            }
        }
        w.commit().or_storage(path)
    }

    /// Records the outcome in the gate (locked by the caller) and passes the turn on.
    fn finish(&mut self, g: &mut Gate, ok: bool) {
        if ok {
            // A recovering batch wrote everything failed before it; one prepared after it and dropped since
            // (in `failed` again) is not written, so later batches keep failing until a recovery of that one.
            if self.recovers && g.failed.is_empty() {
                g.broken = false;
            }
        } else {
            g.broken = true;
            g.failed.push(Returned {
                docs: self.writes.drain(..).map(|(id, _)| id).collect(),
                removed: std::mem::take(&mut self.removed),
                states: std::mem::take(&mut self.states),
                meta: std::mem::take(&mut self.meta),
                index: std::mem::take(&mut self.index),
            });
        }
        g.in_flight = g.in_flight.saturating_sub(1);
        if g.turn == self.ticket {
            g.turn += 1;
            while g.abandoned.remove(&g.turn) {
                g.turn += 1;
            }
        } else {
            g.abandoned.insert(self.ticket);
        }
        self.finished = true;
    }
}

impl Drop for FlushBatch {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let gate = self.gate.clone();
        let mut g = lock(&gate.0);
        self.finish(&mut g, false);
        gate.1.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use oms_protocol::sync::automerge::{AutoCommit, ROOT, transaction::Transactable};
    use redb::{ReadableDatabase, ReadableTable};

    fn increments(path: &Path) -> usize {
        let db = Database::open(path).unwrap();
        let r = db.begin_read().unwrap();
        r.open_table(DOC_INCREMENTS).unwrap().iter().unwrap().count()
    }

    #[test]
    fn incremental_flushes_survive_reopen_and_compact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync.redb");
        let a = DocId::new("stock/a").unwrap();
        let heads = {
            let mut db = DocDb::open(&path, vec![1; 16], 10).unwrap();
            db.get_or_create(&a).unwrap().put(ROOT, "k0", 0).unwrap();
            db.mark_dirty(&a);
            db.flush().unwrap();
            // A flush with nothing changed writes nothing.
            db.mark_dirty(&a);
            assert!(db.prepare_flush().is_none());
            for i in 1..5 {
                db.get_mut(&a).unwrap().put(ROOT, format!("k{i}"), i).unwrap();
                db.mark_dirty(&a);
                db.flush().unwrap();
            }
            db.get_mut(&a).unwrap().get_heads()
        };
        assert_eq!(increments(&path), 4, "one full save, then one increment per flush");
        let heads = {
            let mut db = DocDb::open(&path, vec![2; 16], 10).unwrap();
            assert_eq!(db.get_mut(&a).unwrap().get_heads(), heads, "full save + increments load to the same heads");
            // Past the per-document limit the next flush compacts.
            for i in 0..INCREMENTS_PER_DOC_MAX {
                db.get_mut(&a).unwrap().put(ROOT, "n", i).unwrap();
                db.mark_dirty(&a);
                db.flush().unwrap();
            }
            db.get_mut(&a).unwrap().get_heads()
        };
        let n = increments(&path);
        assert!(n < INCREMENTS_PER_DOC_MAX as usize, "compacted: {n} increments left");
        let mut db = DocDb::open(&path, vec![3; 16], 10).unwrap();
        assert_eq!(db.get_mut(&a).unwrap().get_heads(), heads);
        // Big changes compact by bytes.
        db.get_mut(&a).unwrap().put(ROOT, "big", vec![7u8; INCREMENT_BYTES_MIN + 1]).unwrap();
        db.mark_dirty(&a);
        db.flush().unwrap();
        db.get_mut(&a).unwrap().put(ROOT, "after", 1).unwrap();
        db.mark_dirty(&a);
        db.flush().unwrap();
        let heads = db.get_mut(&a).unwrap().get_heads();
        drop(db);
        assert_eq!(increments(&path), 0, "the increment over the byte limit triggered a full save");
        let mut db = DocDb::open(&path, vec![4; 16], 10).unwrap();
        assert_eq!(db.get_mut(&a).unwrap().get_heads(), heads);
    }

    #[test]
    fn a_batch_dropped_uncommitted_is_written_by_the_next_flush_and_fails_later_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync.redb");
        let (a, b) = (DocId::new("order/a-1").unwrap(), DocId::new("order/b-1").unwrap());
        let peer = PeerId::new("oms://t/hub").unwrap();
        let heads = {
            let mut db = DocDb::open(&path, vec![1; 16], 10).unwrap();
            db.get_or_create(&a).unwrap().put(ROOT, "k", 1).unwrap();
            db.mark_dirty(&a);
            db.flush().unwrap();
            db.get_mut(&a).unwrap().put(ROOT, "k", 2).unwrap();
            db.mark_dirty(&a);
            db.set_sync_state(&peer, &a, vec![1]);
            db.set_meta("c", 7);
            let lost = db.prepare_flush().unwrap();
            assert_eq!(db.sync_state(&peer, &a), Some(vec![1]), "readable while in flight");
            assert_eq!(db.meta("c").unwrap(), Some(7));
            db.get_or_create(&b).unwrap().put(ROOT, "k", 3).unwrap();
            db.mark_dirty(&b);
            let later = db.prepare_flush().unwrap();
            drop(lost);
            let e = later.commit().unwrap_err();
            assert!(
                matches!(e, DocDbError::EarlierFlushFailed { .. }),
                "a batch after a failed one must not report success: {e}"
            );
            assert_eq!(db.sync_state(&peer, &a), Some(vec![1]));
            db.flush().unwrap();
            db.get_mut(&a).unwrap().put(ROOT, "k", 4).unwrap();
            db.mark_dirty(&a);
            db.flush().unwrap();
            [db.get_mut(&a).unwrap().get_heads(), db.get_mut(&b).unwrap().get_heads()]
        };
        let mut db = DocDb::open(&path, vec![2; 16], 10).unwrap();
        assert_eq!([db.get_mut(&a).unwrap().get_heads(), db.get_mut(&b).unwrap().get_heads()], heads);
        assert_eq!(db.sync_state(&peer, &a), Some(vec![1]));
        assert_eq!(db.meta("c").unwrap(), Some(7));
    }

    /// `written` says a document's disk copy is what memory holds, and nothing short of it: not while it is
    /// only created, dirty, in a batch not committed yet, after a batch was dropped (until a recovering one
    /// commits), or while it is being removed. Each case here is one a caller would act on too early.
    #[test]
    fn written_means_on_disk_as_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = DocDb::open(&dir.path().join("sync.redb"), vec![1; 16], 10).unwrap();
        let (a, b) = (DocId::new("order/a-1").unwrap(), DocId::new("order/b-1").unwrap());
        db.get_or_create(&a).unwrap().put(ROOT, "k", 1).unwrap();
        db.mark_dirty(&a);
        assert!(!db.written(&a) && !db.on_disk(&a), "created only");
        let batch = db.prepare_flush().unwrap();
        assert!(!db.written(&a) && !db.on_disk(&a), "in a batch not committed yet");
        batch.commit().unwrap();
        assert!(db.written(&a) && db.on_disk(&a));
        db.get_mut(&a).unwrap().put(ROOT, "k", 2).unwrap();
        db.mark_dirty(&a);
        assert!(!db.written(&a) && db.on_disk(&a), "changed since: on disk, not as in memory");
        let in_flight = db.prepare_flush().unwrap();
        assert!(!db.written(&a), "its change in flight");
        // Its change in a dropped batch: not written until the recovering flush.
        drop(in_flight);
        assert!(!db.written(&a), "its change in a dropped batch");
        db.flush().unwrap();
        assert!(db.written(&a));
        // A clean, committed document is not taken for written while a batch is in flight either (the gate:
        // its copy on disk is what memory holds, but the caller cannot tell a batch's documents apart).
        db.get_or_create(&b).unwrap().put(ROOT, "k", 1).unwrap();
        db.mark_dirty(&b);
        db.flush().unwrap();
        db.get_mut(&a).unwrap().put(ROOT, "k", 3).unwrap();
        db.mark_dirty(&a);
        let in_flight = db.prepare_flush().unwrap();
        assert!(!db.written(&b), "a batch in flight");
        in_flight.commit().unwrap();
        assert!(db.written(&a) && db.written(&b), "both on disk as in memory");
        db.remove(&b);
        assert!(!db.written(&b) && !db.on_disk(&b), "being removed");
    }

    /// A batch prepared while a recovering one is in flight and dropped before its turn is not written: the
    /// recovering batch's success does not clear that, and a later batch fails rather than claim everything
    /// before it is on disk.
    #[test]
    fn a_batch_dropped_behind_a_recovering_one_fails_the_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = DocDb::open(&dir.path().join("sync.redb"), vec![1; 16], 10).unwrap();
        let doc = |n: &str| DocId::new(format!("order/{n}-1")).unwrap();
        let dirty = |db: &mut DocDb, n: &str| {
            db.get_or_create(&doc(n)).unwrap().put(ROOT, "k", 1).unwrap();
            db.mark_dirty(&doc(n));
        };
        dirty(&mut db, "a");
        drop(db.prepare_flush().unwrap());
        dirty(&mut db, "b");
        let recovering = db.prepare_flush().unwrap();
        dirty(&mut db, "c");
        let dropped = db.prepare_flush().unwrap();
        dirty(&mut db, "d");
        let later = db.prepare_flush().unwrap();
        drop(dropped);
        recovering.commit().unwrap();
        let e = later.commit().unwrap_err();
        assert!(matches!(e, DocDbError::EarlierFlushFailed { .. }), "{e}");
        db.flush().unwrap();
        assert!(["a", "b", "c", "d"].iter().all(|n| db.written(&doc(n))));
    }

    #[test]
    fn batches_commit_in_prepare_order_across_threads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync.redb");
        let a = DocId::new("stock/a").unwrap();
        let heads = {
            let mut db = DocDb::open(&path, vec![1; 16], 10).unwrap();
            let mut batches = Vec::new();
            for i in 0..20 {
                db.get_or_create(&a).unwrap().put(ROOT, "k", i).unwrap();
                db.mark_dirty(&a);
                batches.push(db.prepare_flush().unwrap());
            }
            // Committed from threads in reverse order: each waits for its turn.
            let handles: Vec<_> = batches.into_iter().rev().map(|b| std::thread::spawn(move || b.commit())).collect();
            for h in handles {
                h.join().unwrap().unwrap();
            }
            db.get_mut(&a).unwrap().get_heads()
        };
        let mut db = DocDb::open(&path, vec![2; 16], 10).unwrap();
        assert_eq!(db.get_mut(&a).unwrap().get_heads(), heads);
    }

    /// The figures kept with the `doc_meta` rows (count, totals per group and label, documents due a full
    /// save) and the owner's index stay what a walk of the rows (and a model) says through a deterministic
    /// random run of creations, changes, relabels, removals, replacements, compactions, evictions, flushes,
    /// batches dropped uncommitted, commits failing on a full disk, and reopens.
    #[test]
    fn kept_totals_and_the_index_match_a_walk_through_random_changes_failures_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        let names: Vec<DocId> = (0..24)
            .map(|i| match i % 8 {
                6 => format!("stock/wh{}", i % 3),
                7 => format!("misc/{i}"),
                _ => format!("order/wh{}-{i:04}", i % 3),
            })
            .map(|n| DocId::new(n).unwrap())
            .collect();
        let labels = [0u64, 1, (1 << 32) | 2, (2 << 32) | 2, u64::MAX];
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let faults = Arc::new(oms_service::storage::FaultSwitch::default());
        let open = |actor: u8| DocDb::open_with(&path, vec![actor; 16], 1_000, Some(faults.clone())).unwrap();
        let mut db = open(1);
        db.set_cache_max(4);
        let mut held: BTreeSet<DocId> = BTreeSet::new();
        let mut index: BTreeSet<(u64, DocId)> = BTreeSet::new();
        let (mut flushes, mut failures, mut reopens) = (0, 0, 0);
        let check = |db: &DocDb, held: &BTreeSet<DocId>, index: &BTreeSet<(u64, DocId)>, step: usize| {
            assert_eq!(db.len(), held.len(), "step {step}: documents held");
            for key in 1..4 {
                let want: Vec<DocId> = index.iter().filter(|(k, _)| *k == key).map(|(_, d)| d.clone()).collect();
                assert_eq!(db.indexed(key), want, "step {step}: index key {key}");
            }
        };
        for step in 0..600 {
            let id = names[usize::try_from(next(names.len() as u64)).unwrap()].clone();
            match next(12) {
                0..=2 => {
                    db.get_or_create(&id).unwrap().put(ROOT, "k", step as u64).unwrap();
                    db.mark_dirty(&id);
                    held.insert(id);
                }
                3 => {
                    if held.contains(&id) {
                        db.set_label(&id, labels[usize::try_from(next(5)).unwrap()]);
                    }
                }
                4 => {
                    db.remove(&id);
                    held.remove(&id);
                }
                5 => {
                    let mut d = AutoCommit::new();
                    d.put(ROOT, "replaced", step as u64).unwrap();
                    db.replace(&id, d);
                    held.insert(id);
                }
                6 => db.compact(&id),
                7 => {
                    let key = 1 + next(3);
                    if next(2) == 0 {
                        db.index_insert(key, &id);
                        index.insert((key, id));
                    } else {
                        db.index_remove(key, &id);
                        index.remove(&(key, id));
                    }
                }
                8 => {
                    db.flush().unwrap();
                    db.evict_idle();
                    flushes += 1;
                    let (kept, walked) = db.audit_totals().unwrap();
                    assert_eq!(kept, walked, "step {step}: after a flush");
                    assert_eq!(kept.documents, held.len() as u64, "step {step}");
                }
                9 => {
                    // A batch dropped uncommitted, or one whose commit finds the disk full: nothing of it is
                    // written, and the next flush writes it all.
                    if let Some(batch) = db.prepare_flush() {
                        if next(2) == 0 {
                            drop(batch);
                        } else {
                            // redb answers nothing more after an I/O error until reopened: what was not
                            // written is lost with the process, and the model is what is on disk.
                            faults.set_disk_full(true);
                            assert!(batch.commit().is_err());
                            faults.set_disk_full(false);
                            drop(db);
                            db = open(2 + (step % 200) as u8);
                            db.set_cache_max(4);
                            held = db.ids().collect();
                            index = (1..4).flat_map(|k| db.indexed(k).into_iter().map(move |d| (k, d))).collect();
                        }
                        failures += 1;
                        let (kept, walked) = db.audit_totals().unwrap();
                        assert_eq!(kept, walked, "step {step}: after a failed flush");
                    }
                }
                10 => {
                    db.flush().unwrap();
                    drop(db);
                    db = open(2 + (step % 200) as u8);
                    db.set_cache_max(4);
                    reopens += 1;
                    let (kept, walked) = db.audit_totals().unwrap();
                    assert_eq!(kept, walked, "step {step}: after a reopen");
                    assert_eq!(
                        db.rows_read(),
                        kept.full_needed.len() as u64,
                        "a start reads only rows due a full save"
                    );
                }
                _ => {
                    if let Some(d) = db.get_mut(&id) {
                        d.put(ROOT, "n", step as u64).unwrap();
                        db.mark_dirty(&id);
                    }
                }
            }
            check(&db, &held, &index, step);
        }
        db.flush().unwrap();
        let (kept, walked) = db.audit_totals().unwrap();
        assert_eq!(kept, walked);
        assert!(
            flushes > 20 && failures > 10 && reopens > 20,
            "{flushes} flushes, {failures} failures, {reopens} reopens"
        );
        let order_labels: BTreeSet<u64> =
            kept.by_group.keys().filter(|(g, _)| g.starts_with("order/wh")).map(|(_, l)| *l).collect();
        assert!(order_labels.len() >= 3, "{kept:?}");
        assert!(kept.by_group.keys().any(|(g, _)| g == "stock/wh0"), "{kept:?}");
        assert!(kept.by_group.keys().any(|(g, _)| g.is_empty()), "{kept:?}");
        drop(db);
        let db = open(250);
        check(&db, &held, &index, 600);
        assert_eq!(db.audit_totals().unwrap().0, kept);
    }
}
