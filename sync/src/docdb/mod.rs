//! Automerge documents and per-(peer, document) sync states persisted in a redb file of their own.
//!
//! Both sides of sync keep their documents here: the node in `sync.redb` beside `node.redb` (so the sync
//! task never writes through the store's single writer), the hub in `hub.redb`. Documents are held in memory
//! for the sync session. A flush writes each dirty document *incrementally*: the changes since what is
//! already on disk (`save_after` the persisted heads) are appended under `(doc, seq)` in `doc_increments`;
//! once a document's appended bytes exceed [`INCREMENT_BYTES_MIN`] or its last full save (whichever is
//! larger), or it has [`INCREMENTS_PER_DOC_MAX`] increments, the flush compacts it into one full `save()` in
//! `docs` and deletes its increments. Loading is the full save plus the increments in order. Sync states and
//! counters of the same step go into the same transaction: after a crash a document, its sync state and the
//! feed cursor that produced it are all old or all new.
//!
//! A flush is two steps so that a caller can release its own lock during disk I/O:
//! [`DocDb::prepare_flush`] (in memory, needs `&mut DocDb`) takes the dirty state into a [`FlushBatch`], and
//! [`FlushBatch::commit`] writes it in one redb transaction (fsync) without touching the `DocDb`. Batches
//! commit in the order they were prepared. If a batch fails (or is dropped uncommitted), its contents come
//! back as dirty (documents as full saves) at the next prepare made while no batch is in flight, and every
//! batch committed before that recovery fails too, so a caller that got `Ok` from `commit` knows that
//! everything prepared up to its batch is on disk. [`DocDb::flush`] does both steps at once.
//!
//! **Memory does not grow with the number of documents.** A document's heads, sizes and label live in its
//! `doc_meta` row; in memory are only the documents loaded (at most the cache size, beyond which clean ones
//! are evicted after a flush) and the rows of documents whose state differs from what is committed (dirty,
//! relabelled, or in a batch not yet committed). Anything else is read from redb when asked (through redb's
//! page cache). A per-document index in memory cost ≈ 230 B per document at the hub (≈ 230 MB at a million
//! orders) and, built while documents were loaded and evicted, fragmented the heap besides.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use oms_protocol::sync::automerge::{self, ActorId, AutoCommit};
use oms_protocol::wire::{DocId, PeerId};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

const DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("docs");
const DOC_INCREMENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("doc_increments");
const SYNC_STATES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("sync_states");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Per document: what [`Persisted`] says about its disk copy (heads, sizes, label), so that opening the file
/// reads no document.
const DOC_META: TableDefinition<&str, &[u8]> = TableDefinition::new("doc_meta");
type MetaTable = redb::ReadOnlyTable<&'static str, &'static [u8]>;
/// Key in `meta` of the file's format: 2 = every stored document has its `doc_meta` row.
const FORMAT_KEY: &str = "docdb.format";
const FORMAT: u64 = 2;

/// A document's appended increments may grow to this many bytes (or to the size of its last full save, if
/// larger) before a flush compacts them into a full save.
pub const INCREMENT_BYTES_MIN: usize = 16 * 1024;
/// Increments kept per document before a flush compacts them into a full save.
pub const INCREMENTS_PER_DOC_MAX: u64 = 256;
/// redb's page cache for the file (redb's default is 1 GiB; evicted documents are read back through it).
pub const DB_CACHE_BYTES: usize = 64 << 20;
/// Documents kept loaded unless the owner says otherwise ([`DocDb::set_cache_max`]); a loaded order document
/// takes ≈ 24 KB against ≈ 450 B on disk.
pub const DOCS_CACHED_DEFAULT: usize = 1_024;

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

/// Heads of a document, compact: almost every document has one head.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
enum Heads {
    #[default]
    None,
    One([u8; 32]),
    Many(Box<[ChangeHash]>),
}

impl Heads {
    fn of(heads: &[ChangeHash]) -> Heads {
        match heads {
            [] => Heads::None,
            [one] => Heads::One(one.0),
            many => Heads::Many(many.into()),
        }
    }

    fn to_vec(&self) -> Vec<ChangeHash> {
        match self {
            Heads::None => vec![],
            Heads::One(h) => vec![ChangeHash(*h)],
            Heads::Many(hs) => hs.to_vec(),
        }
    }

    fn is(&self, heads: &[ChangeHash]) -> bool {
        match (self, heads) {
            (Heads::None, []) => true,
            (Heads::One(h), [one]) => *h == one.0,
            (Heads::Many(hs), _) => **hs == *heads,
            _ => false,
        }
    }

    fn len(&self) -> usize {
        match self {
            Heads::None => 0,
            Heads::One(_) => 1,
            Heads::Many(hs) => hs.len(),
        }
    }
}

/// What is on disk for one document, as of the last prepared flush (also the document's `doc_meta` row).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Persisted {
    /// Heads covered by the full save plus the increments.
    heads: Heads,
    /// Sequence number of the next increment (never reused).
    next_seq: u64,
    /// The owner's label ([`DocDb::set_label`]).
    label: u64,
    /// Size of the last full save.
    base_bytes: u32,
    /// Bytes and number of increments appended since the last full save.
    increment_bytes: u32,
    increments: u16,
    /// A full save exists (or is in a prepared batch).
    stored: bool,
    /// The next flush must write a full save (after a failed flush or a replaced document).
    full_needed: bool,
    /// The label changed since the `doc_meta` row was last written.
    label_dirty: bool,
}

const META_VERSION: u8 = 1;
const META_FIXED_BYTES: usize = 1 + 1 + 4 + 4 + 2 + 8 + 8 + 2;

impl Persisted {
    /// The `doc_meta` row: version, flags, sizes, next sequence number, label, heads.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(META_FIXED_BYTES + 32 * self.heads.len());
        out.push(META_VERSION);
        out.push(u8::from(self.stored) | (u8::from(self.full_needed) << 1));
        out.extend_from_slice(&self.base_bytes.to_le_bytes());
        out.extend_from_slice(&self.increment_bytes.to_le_bytes());
        out.extend_from_slice(&self.increments.to_le_bytes());
        out.extend_from_slice(&self.next_seq.to_le_bytes());
        out.extend_from_slice(&self.label.to_le_bytes());
        let heads = self.heads.to_vec();
        out.extend_from_slice(&u16::try_from(heads.len()).unwrap_or(u16::MAX).to_le_bytes());
        for h in heads.iter().take(usize::from(u16::MAX)) {
            out.extend_from_slice(&h.0);
        }
        out
    }

    /// The label of an encoded row, without decoding the rest.
    fn label_of(b: &[u8]) -> Option<u64> {
        if b.len() < META_FIXED_BYTES || b[0] != META_VERSION {
            return None;
        }
        b.get(20..28).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes)
    }

    /// Nothing about the document waits to be written (its row on disk says what this says, once the
    /// batches in flight are committed).
    fn settled(&self) -> bool {
        self.stored && !self.full_needed && !self.label_dirty
    }

    fn decode(b: &[u8]) -> Option<Persisted> {
        if b.len() < META_FIXED_BYTES || b[0] != META_VERSION {
            return None;
        }
        let u16_at = |i: usize| b.get(i..i + 2).and_then(|s| s.try_into().ok()).map(u16::from_le_bytes);
        let u32_at = |i: usize| b.get(i..i + 4).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes);
        let u64_at = |i: usize| b.get(i..i + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes);
        let n = usize::from(u16_at(28)?);
        let hashes = b.get(META_FIXED_BYTES..)?;
        if hashes.len() != 32 * n {
            return None;
        }
        let heads: Vec<ChangeHash> =
            hashes.chunks_exact(32).filter_map(|c| c.try_into().ok().map(ChangeHash)).collect();
        Some(Persisted {
            heads: Heads::of(&heads),
            stored: b[1] & 1 != 0,
            full_needed: b[1] & 2 != 0,
            base_bytes: u32_at(2)?,
            increment_bytes: u32_at(6)?,
            increments: u16_at(10)?,
            next_seq: u64_at(12)?,
            label: u64_at(20)?,
            label_dirty: false,
        })
    }
}

fn bytes_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// What a failed or abandoned batch held, handed back to the next prepare.
#[derive(Debug, Default)]
struct Returned {
    docs: Vec<DocId>,
    removed: Vec<DocId>,
    states: Vec<((PeerId, DocId), Vec<u8>)>,
    meta: Vec<(String, u64)>,
}

/// Orders the commits of prepared batches and carries their failures back to the [`DocDb`].
#[derive(Debug, Default)]
struct Gate {
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

type SharedGate = Arc<(Mutex<Gate>, Condvar)>;

/// One document: loaded (possibly lazily, through `&self`) or evicted to what is on disk, and what is on disk.
#[derive(Debug, Default)]
struct Slot {
    doc: OnceLock<Box<AutoCommit>>,
    /// When it was last accessed (a counter, wrapping), for eviction.
    used: AtomicU32,
    persisted: Persisted,
}

impl Slot {
    fn loaded(doc: AutoCommit) -> Slot {
        let slot = Slot::default();
        let _ = slot.doc.set(Box::new(doc));
        slot
    }
}

fn lock_gate(m: &Mutex<Gate>) -> MutexGuard<'_, Gate> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The documents of one side of sync. See the module docs.
pub struct DocDb {
    path: PathBuf,
    db: Arc<Database>,
    gate: SharedGate,
    /// Batches committed so far (bumped by [`FlushBatch::commit`]).
    commits: Arc<AtomicU64>,
    /// `doc_meta` as of a commit count, reused by reads until the next commit: a read transaction per
    /// row read cost more than the read (a hub listing a node's documents reads ten thousand rows).
    meta_view: Mutex<Option<(u64, MetaTable)>>,
    actor: ActorId,
    docs_max: usize,
    /// The documents in memory: those loaded, and those whose state differs from their committed `doc_meta`
    /// row (dirty, relabelled, or in a batch not yet committed). A document held but not here is known by its
    /// committed row alone (see the module docs).
    docs: BTreeMap<DocId, Slot>,
    /// Documents held, in memory or only on disk.
    count: usize,
    /// Bumped by every call that may change a document or its label ([`DocDb::generation`]).
    generation: u64,
    /// Documents loaded in memory; beyond `cache_max`, clean ones are evicted by the next prepare.
    resident: Mutex<BTreeSet<DocId>>,
    cache_max: usize,
    clock: AtomicU32,
    dirty_docs: BTreeSet<DocId>,
    dirty_states: BTreeMap<(PeerId, DocId), Vec<u8>>,
    dirty_meta: BTreeMap<String, u64>,
    removed: BTreeSet<DocId>,
    /// Removals in batches prepared but maybe not yet committed: their rows may still be on disk.
    flushing_removed: BTreeSet<DocId>,
    /// Sync states and counters of batches prepared but maybe not yet committed, for readers.
    flushing_states: BTreeMap<(PeerId, DocId), Vec<u8>>,
    flushing_meta: BTreeMap<String, u64>,
}

impl std::fmt::Debug for DocDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocDb").field("path", &self.path).field("docs", &self.count).finish()
    }
}

fn lock_set(m: &Mutex<BTreeSet<DocId>>) -> MutexGuard<'_, BTreeSet<DocId>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl DocDb {
    /// Opens (or creates) the file, reading what is on disk about each document (heads, sizes, label) but no
    /// document: they load on access. Each document gets this process's `actor` (fresh per process start, so
    /// two incarnations never reuse an actor's sequence numbers). At most `docs_max` documents are held, and
    /// at most [`DOCS_CACHED_DEFAULT`] loaded ([`DocDb::set_cache_max`]).
    ///
    /// A file written before `doc_meta` existed is upgraded once: every document is loaded (one at a time)
    /// to learn its heads, and the rows are written before this returns.
    pub fn open(path: &Path, actor: Vec<u8>, docs_max: usize) -> Result<DocDb, DocDbError> {
        let storage = |e: &dyn std::fmt::Display| DocDbError::Storage { path: path.into(), detail: e.to_string() };
        let db = Database::builder().set_cache_size(DB_CACHE_BYTES).create(path).map_err(|e| storage(&e))?;
        let w = db.begin_write().map_err(|e| storage(&e))?;
        {
            let docs = w.open_table(DOCS).map_err(|e| storage(&e))?;
            let incs = w.open_table(DOC_INCREMENTS).map_err(|e| storage(&e))?;
            w.open_table(SYNC_STATES).map_err(|e| storage(&e))?;
            w.open_table(DOC_META).map_err(|e| storage(&e))?;
            let mut meta = w.open_table(META).map_err(|e| storage(&e))?;
            let format = meta.get(FORMAT_KEY).map_err(|e| storage(&e))?.map(|v| v.value());
            if format.is_none_or(|f| f < FORMAT) {
                let empty = docs.is_empty().map_err(|e| storage(&e))? && incs.is_empty().map_err(|e| storage(&e))?;
                drop((docs, incs));
                if !empty {
                    upgrade(path, &w)?;
                }
                meta.insert(FORMAT_KEY, FORMAT).map_err(|e| storage(&e))?;
            }
        }
        w.commit().map_err(|e| storage(&e))?;
        let actor = ActorId::from(actor);
        // Every row is checked, but only those of documents that need a full save stay in memory.
        let mut count = 0usize;
        let mut docs = BTreeMap::new();
        {
            let r = db.begin_read().map_err(|e| storage(&e))?;
            let t = r.open_table(DOC_META).map_err(|e| storage(&e))?;
            for item in t.iter().map_err(|e| storage(&e))? {
                let (k, v) = item.map_err(|e| storage(&e))?;
                let name = k.value();
                let Some(id) = DocId::new(name) else { continue };
                let persisted = Persisted::decode(v.value()).ok_or_else(|| DocDbError::Corrupt {
                    path: path.into(),
                    doc: name.to_owned(),
                    detail: "its doc_meta row does not decode".into(),
                })?;
                count += 1;
                if persisted.full_needed {
                    docs.insert(id, Slot { persisted, ..Slot::default() });
                }
            }
        }
        // Documents with increments but no full save (not written by this code) get one at the next flush.
        let dirty_docs = docs.keys().cloned().collect();
        Ok(DocDb {
            path: path.into(),
            db: Arc::new(db),
            gate: Arc::default(),
            commits: Arc::default(),
            meta_view: Mutex::new(None),
            actor,
            docs_max,
            docs,
            count,
            generation: 0,
            resident: Mutex::new(BTreeSet::new()),
            cache_max: DOCS_CACHED_DEFAULT,
            clock: AtomicU32::new(0),
            dirty_docs,
            dirty_states: BTreeMap::new(),
            dirty_meta: BTreeMap::new(),
            removed: BTreeSet::new(),
            flushing_removed: BTreeSet::new(),
            flushing_states: BTreeMap::new(),
            flushing_meta: BTreeMap::new(),
        })
    }

    fn storage(&self, e: &dyn std::fmt::Display) -> DocDbError {
        DocDbError::Storage { path: self.path.clone(), detail: e.to_string() }
    }

    /// A number that changes whenever a document or a label may have changed (a mutable borrow, a creation,
    /// a replacement, a removal, a new label, a mark): what is derived from the documents and cached (a
    /// manifest digest) is current while this stays the same.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of documents held.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True if no document is held.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The committed `doc_meta` row of a document that is not in memory (`None` if it is not held, or is
    /// being removed). A row that cannot be read is logged and counts as absent.
    fn stored(&self, doc: &DocId) -> Option<Persisted> {
        if self.removed.contains(doc) || self.flushing_removed.contains(doc) {
            return None;
        }
        let read = || -> Result<Option<Persisted>, DocDbError> {
            self.with_meta(|t| {
                let Some(v) = t.get(doc.as_str()).map_err(|e| self.storage(&e))? else { return Ok(None) };
                Persisted::decode(v.value()).map(Some).ok_or_else(|| DocDbError::Corrupt {
                    path: self.path.clone(),
                    doc: doc.to_string(),
                    detail: "its doc_meta row does not decode".into(),
                })
            })?
        };
        read().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read a document's row");
            None
        })
    }

    /// Runs `f` over the committed `doc_meta` table, opened once per commit. Holding it until the next
    /// commit pins at most the pages that commit frees.
    fn with_meta<T>(&self, f: impl FnOnce(&MetaTable) -> T) -> Result<T, DocDbError> {
        let commits = self.commits.load(Ordering::Acquire);
        let mut view = self.meta_view.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if view.as_ref().is_none_or(|(at, _)| *at != commits) {
            *view = None;
            let r = self.db.begin_read().map_err(|e| self.storage(&e))?;
            *view = Some((commits, r.open_table(DOC_META).map_err(|e| self.storage(&e))?));
        }
        match view.as_ref() {
            Some((_, t)) => Ok(f(t)),
            None => Err(self.storage(&"doc_meta is not open")),
        }
    }

    /// The slot of a held document, brought into memory (without loading the document) if it was not.
    fn slot_mut(&mut self, doc: &DocId) -> Option<&mut Slot> {
        if !self.docs.contains_key(doc) {
            let persisted = self.stored(doc)?;
            self.docs.insert(doc.clone(), Slot { persisted, ..Slot::default() });
        }
        self.docs.get_mut(doc)
    }

    /// Whether `doc` is held (loaded or not), without loading it.
    pub fn contains(&self, doc: &DocId) -> bool {
        self.docs.contains_key(doc) || self.stored(doc).is_some()
    }

    /// Ids of the documents held, in order.
    pub fn ids(&self) -> impl Iterator<Item = DocId> + '_ {
        self.labels("").map(|(id, _)| id)
    }

    /// Ids starting with `prefix`, after `after`, at most `limit`.
    pub fn ids_with_prefix(&self, prefix: &str, after: Option<&str>, limit: usize) -> Vec<DocId> {
        let iter = match after.and_then(|a| DocId::new(format!("{prefix}{a}"))) {
            Some(after) => Labels::new(self, prefix, Some(after.as_str().to_owned())),
            None => Labels::new(self, prefix, None),
        };
        iter.take(limit).map(|(id, _)| id).collect()
    }

    /// Keeps at most `max` documents loaded: beyond it, a flush prepared while no other is in flight evicts
    /// the least recently used documents whose disk copy is current; they load again on access.
    pub fn set_cache_max(&mut self, max: usize) {
        self.cache_max = max.max(1);
    }

    /// Number of documents loaded in memory.
    pub fn loaded(&self) -> usize {
        lock_set(&self.resident).len()
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
                        lock_set(&self.resident).insert(doc.clone());
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

    /// Heads of a document without loading it if it is evicted (then its disk copy is current).
    pub fn heads(&mut self, doc: &DocId) -> Option<Vec<ChangeHash>> {
        match self.docs.get_mut(doc) {
            Some(slot) => match slot.doc.get_mut() {
                Some(d) => Some(d.get_heads()),
                None => Some(slot.persisted.heads.to_vec()),
            },
            None => self.stored(doc).map(|p| p.heads.to_vec()),
        }
    }

    /// The label of a document (0 until [`DocDb::set_label`]), without loading it.
    pub fn label(&self, doc: &DocId) -> Option<u64> {
        match self.docs.get(doc) {
            Some(s) => Some(s.persisted.label),
            None => self.stored(doc).map(|p| p.label),
        }
    }

    /// Sets a number the owner keeps with a document (the hub: who may see it), stored in the same row as
    /// the document's heads so that it is known without loading the document. Written by the next flush.
    /// Returns the previous label.
    pub fn set_label(&mut self, doc: &DocId, label: u64) -> Option<u64> {
        self.generation = self.generation.wrapping_add(1);
        let p = &mut self.slot_mut(doc)?.persisted;
        let old = p.label;
        if old != label {
            p.label = label;
            p.label_dirty = true;
            self.dirty_docs.insert(doc.clone());
        }
        Some(old)
    }

    /// Documents whose id starts with `prefix` (all with `""`), with their labels, in order. Reads the
    /// committed rows in chunks and lays what is in memory over them.
    pub fn labels<'a>(&'a self, prefix: &str) -> impl Iterator<Item = (DocId, u64)> + 'a {
        Labels::new(self, prefix, None)
    }

    /// Documents after `after` (excluded), with their labels, in order.
    pub fn labels_after<'a>(&'a self, after: &DocId) -> impl Iterator<Item = (DocId, u64)> + 'a {
        Labels::new(self, "", Some(after.as_str().to_owned()))
    }

    /// One chunk of a listing ([`DocDb::labels`], [`DocDb::entries`]): up to `limit` committed rows with
    /// `prefix` after `after` (or from `prefix` on), each as `f` reads it, without the documents in memory
    /// (the caller lays those over them: they are newer) and without documents being removed. A row that
    /// cannot be read ends the listing (logged).
    fn committed_chunk<T>(&self, prefix: &str, after: Option<&str>, limit: usize, f: impl Fn(&[u8]) -> T) -> Chunk<T> {
        use std::ops::Bound;
        let read = self.with_meta(|t| {
            let lo = after.map_or(Bound::Included(prefix), Bound::Excluded);
            let mut out = Vec::new();
            for item in t.range::<&str>((lo, Bound::Unbounded)).map_err(|e| self.storage(&e))? {
                let (k, v) = item.map_err(|e| self.storage(&e))?;
                let name = k.value();
                if !name.starts_with(prefix) {
                    return Ok((out, false));
                }
                if out.len() >= limit {
                    return Ok((out, true));
                }
                out.push((name.to_owned(), f(v.value())));
            }
            Ok((out, false))
        });
        let (rows, more) = match read.and_then(|r| r) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot list documents");
                (Vec::new(), false)
            }
        };
        // The ids this chunk covers: up to its last row, or all the rest when none follow.
        let upper = if more { rows.last().map(|(k, _)| k.clone()) } else { None };
        let rows = rows
            .into_iter()
            .filter_map(|(k, v)| Some((DocId::new(k)?, v)))
            .filter(|(id, _)| {
                !self.docs.contains_key(id) && !self.removed.contains(id) && !self.flushing_removed.contains(id)
            })
            .collect();
        let lo = match after {
            Some(a) => DocId::new(a).map_or(Bound::Unbounded, Bound::Excluded),
            None => DocId::new(prefix).map_or(Bound::Unbounded, Bound::Included),
        };
        Chunk { rows, prefix: prefix.to_owned(), lo, upper }
    }

    /// Every document whose id starts with `prefix`, with its label and heads, in order, without loading
    /// any: committed rows read in chunks, with what is in memory laid over them. At most `limit`.
    pub fn entries(&mut self, prefix: &str, limit: usize) -> Vec<(DocId, u64, Vec<ChangeHash>)> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let want = LABELS_CHUNK.min(limit.saturating_sub(out.len()));
            let chunk = self.committed_chunk(prefix, after.as_deref(), want, |v| {
                let p = Persisted::decode(v).unwrap_or_default();
                (p.label, p.heads.to_vec())
            });
            let mut in_memory = Vec::new();
            for (id, slot) in self.docs.range_mut((chunk.lo.clone(), std::ops::Bound::Unbounded)) {
                if !chunk.covers(id) {
                    break;
                }
                let heads = match slot.doc.get_mut() {
                    Some(d) => d.get_heads(),
                    None => slot.persisted.heads.to_vec(),
                };
                in_memory.push((id.clone(), (slot.persisted.label, heads)));
            }
            let upper = chunk.upper.clone();
            out.extend(chunk.lay_over(in_memory).into_iter().map(|(id, (label, heads))| (id, label, heads)));
            match upper {
                Some(u) if out.len() < limit => after = Some(u),
                _ => break,
            }
        }
        out.truncate(limit);
        out
    }

    /// Reads an evicted document from disk: its full save, then its increments.
    fn load(&self, id: &DocId) -> Result<AutoCommit, DocDbError> {
        let corrupt = |e: &dyn std::fmt::Display| DocDbError::Corrupt {
            path: self.path.clone(),
            doc: id.to_string(),
            detail: e.to_string(),
        };
        let name = id.as_str();
        let r = self.db.begin_read().map_err(|e| self.storage(&e))?;
        let t = r.open_table(DOCS).map_err(|e| self.storage(&e))?;
        let mut doc = match t.get(name).map_err(|e| self.storage(&e))? {
            Some(v) => AutoCommit::load(v.value()).map_err(|e| corrupt(&e))?,
            None => AutoCommit::new(),
        };
        let t = r.open_table(DOC_INCREMENTS).map_err(|e| self.storage(&e))?;
        for item in t.range((name, 0)..=(name, u64::MAX)).map_err(|e| self.storage(&e))? {
            let (_, v) = item.map_err(|e| self.storage(&e))?;
            doc.load_incremental(v.value()).map_err(|e| corrupt(&e))?;
        }
        doc.set_actor(self.actor.clone());
        Ok(doc)
    }

    /// Evicts clean documents, least recently used first, down to three quarters of `cache_max`. Only
    /// called while no batch is in flight and after failed batches came back, so a clean document's
    /// disk copy is committed. Looks only at the loaded documents.
    fn evict(&mut self) {
        // Every batch is committed: removals are off the disk, and settled rows on it.
        self.flushing_removed.clear();
        let dirty = &self.dirty_docs;
        self.docs.retain(|id, s| s.doc.get().is_some() || !s.persisted.settled() || dirty.contains(id));
        let resident = self.resident.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
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
        let g = lock_gate(&gate.0);
        // Failed batches must come back (`prepare_flush` restores them) before anything counts as clean.
        if g.in_flight == 0 && g.failed.is_empty() && !g.broken {
            self.evict();
        }
        drop(g);
        self.loaded()
    }

    /// A document, created empty (with this process's actor) if absent.
    pub fn get_or_create(&mut self, doc: &DocId) -> Result<&mut AutoCommit, DocDbError> {
        self.generation = self.generation.wrapping_add(1);
        if !self.contains(doc) {
            if self.count >= self.docs_max {
                return Err(DocDbError::Full { path: self.path.clone(), max: self.docs_max, doc: doc.to_string() });
            }
            self.docs.insert(doc.clone(), Slot::loaded(AutoCommit::new().with_actor(self.actor.clone())));
            self.count += 1;
            lock_set(&self.resident).insert(doc.clone());
        }
        let path = self.path.clone();
        self.get_mut(doc).ok_or_else(|| DocDbError::Corrupt {
            path,
            doc: doc.to_string(),
            detail: "evicted and does not load".into(),
        })
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
        lock_set(&self.resident).insert(doc.clone());
        self.dirty_docs.insert(doc.clone());
    }

    /// Forgets a document (e.g. one whose only changes were refused); deleted from disk by the next flush.
    pub fn remove(&mut self, doc: &DocId) {
        self.generation = self.generation.wrapping_add(1);
        if self.docs.remove(doc).is_some() || self.stored(doc).is_some() {
            self.count = self.count.saturating_sub(1);
        }
        lock_set(&self.resident).remove(doc);
        self.dirty_docs.remove(doc);
        self.removed.insert(doc.clone());
    }

    /// Makes the next flush write `doc` as one full save and delete its increments (e.g. a frozen order
    /// document, which will not change again).
    pub fn compact(&mut self, doc: &DocId) {
        if let Some(slot) = self.slot_mut(doc) {
            slot.persisted.full_needed = true;
        }
        self.mark_dirty(doc);
    }

    /// Marks a document for the next [`DocDb::flush`].
    pub fn mark_dirty(&mut self, doc: &DocId) {
        self.generation = self.generation.wrapping_add(1);
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
        if let Some(v) = self.dirty_meta.get(key).or_else(|| self.flushing_meta.get(key)) {
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
        let key = (peer.clone(), doc.clone());
        if let Some(s) = self.dirty_states.get(&key).or_else(|| self.flushing_states.get(&key)) {
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
        let mut g = lock_gate(&gate.0);
        let mut recovers = false;
        if g.in_flight == 0 {
            // Everything prepared before is on disk, or came back in `failed`.
            self.flushing_states.clear();
            self.flushing_meta.clear();
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
            let compact = !p.stored
                || p.full_needed
                || u64::from(p.increments) >= INCREMENTS_PER_DOC_MAX
                || p.increment_bytes as usize >= INCREMENT_BYTES_MIN.max(p.base_bytes as usize);
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
        if writes.is_empty() && removed.is_empty() && states.is_empty() && meta.is_empty() && !recovers {
            return None;
        }
        let mut g = lock_gate(&gate.0);
        let ticket = g.next_ticket;
        g.next_ticket += 1;
        g.in_flight += 1;
        drop(g);
        self.flushing_states.extend(states.iter().cloned());
        self.flushing_meta.extend(meta.iter().cloned());
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
    }
}

/// Committed rows read per redb transaction by [`Labels`].
const LABELS_CHUNK: usize = 1_024;

/// [`DocDb::labels`]: the committed rows with a prefix, read in chunks of [`LABELS_CHUNK`], with the rows in
/// memory laid over them (they are newer) and documents being removed left out.
struct Labels<'a> {
    db: &'a DocDb,
    prefix: String,
    /// Ids up to this one (excluded lower bound) were read; from `prefix` on if `None`.
    after: Option<String>,
    buf: std::vec::IntoIter<(DocId, u64)>,
    done: bool,
}

impl<'a> Labels<'a> {
    fn new(db: &'a DocDb, prefix: &str, after: Option<String>) -> Labels<'a> {
        Labels { db, prefix: prefix.to_owned(), after, buf: Vec::new().into_iter(), done: false }
    }

    fn refill(&mut self) {
        let db = self.db;
        let chunk = db.committed_chunk(&self.prefix, self.after.as_deref(), LABELS_CHUNK, |v| {
            Persisted::label_of(v).unwrap_or(0)
        });
        let in_memory: Vec<(DocId, u64)> = db
            .docs
            .range((chunk.lo.clone(), std::ops::Bound::Unbounded))
            .take_while(|(id, _)| chunk.covers(id))
            .map(|(id, slot)| (id.clone(), slot.persisted.label))
            .collect();
        match &chunk.upper {
            Some(u) => self.after = Some(u.clone()),
            None => self.done = true,
        }
        self.buf = chunk.lay_over(in_memory).into_iter();
    }
}

/// What [`DocDb::committed_chunk`] read, and the ids it covers: those with `prefix` from `lo` up to `upper`
/// (included), or all the rest when `upper` is `None`.
struct Chunk<T> {
    rows: Vec<(DocId, T)>,
    prefix: String,
    lo: std::ops::Bound<DocId>,
    upper: Option<String>,
}

impl<T> Chunk<T> {
    /// Whether an id at or after `lo` falls in this chunk (ids are visited in order).
    fn covers(&self, id: &DocId) -> bool {
        let name = id.as_str();
        name.starts_with(&self.prefix) && self.upper.as_deref().is_none_or(|u| name <= u)
    }

    /// The rows with the in-memory documents of the chunk (none of which is among the rows), in id order.
    fn lay_over(self, in_memory: Vec<(DocId, T)>) -> Vec<(DocId, T)> {
        let mut rows = self.rows;
        if !in_memory.is_empty() {
            rows.extend(in_memory);
            rows.sort_by(|a, b| a.0.cmp(&b.0));
        }
        rows
    }
}

impl Iterator for Labels<'_> {
    type Item = (DocId, u64);

    fn next(&mut self) -> Option<(DocId, u64)> {
        loop {
            if let Some(item) = self.buf.next() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            self.refill();
        }
    }
}

/// One document's write in a batch; each carries the document's new `doc_meta` row.
enum DocWrite {
    /// A full save; the document's increments are deleted if it may have any.
    Full { bytes: Vec<u8>, drop_increments: bool, meta: Vec<u8> },
    /// The changes since the previous write of the document.
    Append { seq: u64, bytes: Vec<u8>, meta: Vec<u8> },
    /// Only the `doc_meta` row (a new label).
    Meta { meta: Vec<u8> },
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
        let mut g = lock_gate(m);
        while g.turn != self.ticket {
            g = cv.wait(g).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        let result = if g.broken && !self.recovers {
            Err(DocDbError::Storage {
                path: self.path.clone(),
                detail: "an earlier flush failed; its contents are retried by the next flush".into(),
            })
        } else {
            drop(g);
            let r = self.write();
            if r.is_ok() {
                self.commits.fetch_add(1, Ordering::AcqRel);
            }
            g = lock_gate(m);
            r
        };
        self.finish(&mut g, result.is_ok());
        cv.notify_all();
        result
    }

    fn write(&self) -> Result<(), DocDbError> {
        let storage =
            |e: &dyn std::fmt::Display| DocDbError::Storage { path: self.path.clone(), detail: e.to_string() };
        let w = self.db.begin_write().map_err(|e| storage(&e))?;
        {
            let mut docs = w.open_table(DOCS).map_err(|e| storage(&e))?;
            let mut incs = w.open_table(DOC_INCREMENTS).map_err(|e| storage(&e))?;
            let mut metas = w.open_table(DOC_META).map_err(|e| storage(&e))?;
            // Removals first: a document removed and created again in the same batch keeps its new copy.
            for id in &self.removed {
                let name = id.as_str();
                docs.remove(name).map_err(|e| storage(&e))?;
                metas.remove(name).map_err(|e| storage(&e))?;
                incs.retain_in((name, 0)..=(name, u64::MAX), |_, _| false).map_err(|e| storage(&e))?;
            }
            for (id, write) in &self.writes {
                let name = id.as_str();
                let meta = match write {
                    DocWrite::Full { bytes, drop_increments, meta } => {
                        docs.insert(name, &bytes[..]).map_err(|e| storage(&e))?;
                        if *drop_increments {
                            incs.retain_in((name, 0)..=(name, u64::MAX), |_, _| false).map_err(|e| storage(&e))?;
                        }
                        meta
                    }
                    DocWrite::Append { seq, bytes, meta } => {
                        incs.insert((name, *seq), &bytes[..]).map_err(|e| storage(&e))?;
                        meta
                    }
                    DocWrite::Meta { meta } => meta,
                };
                metas.insert(name, &meta[..]).map_err(|e| storage(&e))?;
            }
            let mut states = w.open_table(SYNC_STATES).map_err(|e| storage(&e))?;
            for ((peer, doc), s) in &self.states {
                states.insert((peer.as_str(), doc.as_str()), &s[..]).map_err(|e| storage(&e))?;
            }
            let mut meta = w.open_table(META).map_err(|e| storage(&e))?;
            for (k, v) in &self.meta {
                meta.insert(k.as_str(), *v).map_err(|e| storage(&e))?;
            }
        }
        w.commit().map_err(|e| storage(&e))
    }

    /// Records the outcome in the gate (locked by the caller) and passes the turn on.
    fn finish(&mut self, g: &mut Gate, ok: bool) {
        if ok {
            if self.recovers {
                g.broken = false;
            }
        } else {
            g.broken = true;
            g.failed.push(Returned {
                docs: self.writes.drain(..).map(|(id, _)| id).collect(),
                removed: std::mem::take(&mut self.removed),
                states: std::mem::take(&mut self.states),
                meta: std::mem::take(&mut self.meta),
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
        let mut g = lock_gate(&gate.0);
        self.finish(&mut g, false);
        gate.1.notify_all();
    }
}

/// Writes the `doc_meta` row of every stored document of a file from before that table (see [`DocDb::open`]),
/// loading one document at a time.
fn upgrade(path: &Path, w: &redb::WriteTransaction) -> Result<(), DocDbError> {
    let storage = |e: &dyn std::fmt::Display| DocDbError::Storage { path: path.into(), detail: e.to_string() };
    let corrupt = |doc: &str, e: &dyn std::fmt::Display| DocDbError::Corrupt {
        path: path.into(),
        doc: doc.to_owned(),
        detail: e.to_string(),
    };
    let docs = w.open_table(DOCS).map_err(|e| storage(&e))?;
    let incs = w.open_table(DOC_INCREMENTS).map_err(|e| storage(&e))?;
    let mut metas = w.open_table(DOC_META).map_err(|e| storage(&e))?;
    let mut names = BTreeSet::new();
    for item in docs.iter().map_err(|e| storage(&e))? {
        names.insert(item.map_err(|e| storage(&e))?.0.value().to_owned());
    }
    for item in incs.iter().map_err(|e| storage(&e))? {
        names.insert(item.map_err(|e| storage(&e))?.0.value().0.to_owned());
    }
    let mut upgraded = 0usize;
    for name in &names {
        let name = name.as_str();
        let mut p = Persisted::default();
        let mut doc = match docs.get(name).map_err(|e| storage(&e))? {
            Some(v) => {
                p.stored = true;
                p.base_bytes = bytes_u32(v.value().len());
                AutoCommit::load(v.value()).map_err(|e| corrupt(name, &e))?
            }
            None => {
                p.full_needed = true;
                AutoCommit::new()
            }
        };
        for item in incs.range((name, 0)..=(name, u64::MAX)).map_err(|e| storage(&e))? {
            let (k, v) = item.map_err(|e| storage(&e))?;
            doc.load_incremental(v.value()).map_err(|e| corrupt(name, &e))?;
            p.increments = p.increments.saturating_add(1);
            p.increment_bytes = p.increment_bytes.saturating_add(bytes_u32(v.value().len()));
            p.next_seq = p.next_seq.max(k.value().1.saturating_add(1));
        }
        p.heads = Heads::of(&doc.get_heads());
        metas.insert(name, &p.encode()[..]).map_err(|e| storage(&e))?;
        upgraded += 1;
    }
    tracing::info!(path = %path.display(), documents = upgraded, "recorded the heads of every stored document");
    Ok(())
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

/// What a `sync.redb` / `hub.redb` file that no process holds open stores for `doc`: the size of its full
/// save (`None` if it has none) and the number of increments appended after it (for tests and operators).
pub fn stored_doc_parts(path: &Path, doc: &str) -> Result<(Option<usize>, usize), DocDbError> {
    let storage = |e: &dyn std::fmt::Display| DocDbError::Storage { path: path.into(), detail: e.to_string() };
    let db = Database::open(path).map_err(|e| storage(&e))?;
    let r = db.begin_read().map_err(|e| storage(&e))?;
    let full = r.open_table(DOCS).map_err(|e| storage(&e))?.get(doc).map_err(|e| storage(&e))?.map(|v| v.value().len());
    let incs = r.open_table(DOC_INCREMENTS).map_err(|e| storage(&e))?;
    let increments = incs.range((doc, 0)..=(doc, u64::MAX)).map_err(|e| storage(&e))?.count();
    Ok((full, increments))
}

/// Re-exported so callers name the same Automerge.
pub use automerge::ChangeHash;

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::{ROOT, ReadDoc, transaction::Transactable};

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
        assert_eq!(db.ids().collect::<Vec<_>>(), vec![a.clone()]);
        assert_eq!(db.get_mut(&a).unwrap().get_heads(), heads);
        assert_eq!(db.sync_state(&peer, &a), Some(vec![9, 9]));
        assert_eq!(db.meta("feed.cursor").unwrap(), Some(42));
        assert_eq!(stored_doc_ids(&path).err().map(|_| ()), Some(()), "the file is locked while open");
        drop(db);
        assert_eq!(stored_doc_ids(&path).unwrap(), vec!["order/a-1".to_owned()]);
    }

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
            assert!(later.commit().is_err(), "a batch after a failed one must not report success");
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

    /// What `labels` must list: every held document with its label, in id order.
    fn listing(db: &DocDb, prefix: &str) -> Vec<(String, u64)> {
        db.labels(prefix).map(|(id, l)| (id.as_str().to_owned(), l)).collect()
    }

    #[test]
    fn settled_documents_leave_memory_and_listings_merge_disk_and_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        let name = |i: usize| format!("order/a-{i:05}");
        let id = |i: usize| DocId::new(name(i)).unwrap();
        // More than two chunks of committed rows, so listings cross chunk boundaries.
        let n = 2 * LABELS_CHUNK + 452;
        let mut model: BTreeMap<String, u64> = BTreeMap::new();
        let mut db = DocDb::open(&path, vec![1; 16], 10_000).unwrap();
        db.set_cache_max(8);
        for i in 0..n {
            db.get_or_create(&id(i)).unwrap().put(ROOT, "k", i as u64).unwrap();
            db.mark_dirty(&id(i));
            db.set_label(&id(i), i as u64);
            model.insert(name(i), i as u64);
            if i % 500 == 499 {
                db.flush().unwrap();
            }
        }
        db.flush().unwrap();
        db.evict_idle();
        assert!(db.in_memory() <= 8, "{} documents in memory after the flush", db.in_memory());
        assert_eq!(db.len(), n);
        let expected: Vec<(String, u64)> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(listing(&db, "order/"), expected);
        assert!(listing(&db, "stock/").is_empty());

        // Changes not yet written: a relabelled evicted document, two removals (one evicted, one loaded), a new
        // document between committed ones, and one past the last.
        db.set_label(&id(1500), 9_999);
        model.insert(name(1500), 9_999);
        db.remove(&id(10));
        db.remove(&id(n - 1));
        model.remove(&name(10));
        model.remove(&name(n - 1));
        let mid = DocId::new("order/a-01234a").unwrap();
        let end = DocId::new("order/b-1").unwrap();
        for (d, label) in [(&mid, 77), (&end, 78)] {
            db.get_or_create(d).unwrap().put(ROOT, "k", 1).unwrap();
            db.mark_dirty(d);
            db.set_label(d, label);
            model.insert(d.as_str().to_owned(), label);
        }
        let expected: Vec<(String, u64)> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(listing(&db, "order/"), expected, "before the flush");
        assert_eq!(db.len(), n);
        // The same while the batch is in flight (rows of removed documents are still on disk), and after.
        let batch = db.prepare_flush().unwrap();
        assert_eq!(listing(&db, "order/"), expected, "batch in flight");
        assert!(!db.contains(&id(10)) && db.contains(&mid) && db.label(&id(1500)) == Some(9_999));
        batch.commit().unwrap();
        db.evict_idle();
        assert_eq!(listing(&db, "order/"), expected, "after the commit");
        // Heads in the same pass: from disk for evicted documents, from memory for loaded ones.
        let entries = db.entries("order/", usize::MAX);
        assert_eq!(entries.iter().map(|(d, l, _)| (d.as_str().to_owned(), *l)).collect::<Vec<_>>(), expected);
        for (d, _, h) in entries.iter().step_by(97).chain(entries.iter().filter(|(d, _, _)| *d == mid)) {
            assert_eq!(&db.heads(d).unwrap(), h, "{d}");
        }
        assert_eq!(db.entries("order/", 5).len(), 5);
        assert!(db.in_memory() <= 8, "{} documents in memory after the commit", db.in_memory());
        assert_eq!(db.ids_with_prefix("order/a-", Some("01499"), 3), vec![id(1500), id(1501), id(1502)]);
        assert_eq!(db.ids_with_prefix("order/a-", Some("01234"), 1), vec![mid.clone()]);
        let after: Vec<String> = db.labels_after(&id(n - 3)).map(|(d, _)| d.as_str().to_owned()).collect();
        assert_eq!(after, vec![name(n - 2), end.as_str().to_owned()]);
        // A removed document created again is held again, with what it got since.
        db.get_or_create(&id(10)).unwrap().put(ROOT, "k", 10_000).unwrap();
        db.mark_dirty(&id(10));
        db.flush().unwrap();
        model.insert(name(10), 0);
        drop(db);

        let mut db = DocDb::open(&path, vec![2; 16], 10_000).unwrap();
        assert_eq!(db.in_memory(), 0, "opening keeps no document in memory");
        assert_eq!(db.len(), model.len());
        let expected: Vec<(String, u64)> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(listing(&db, ""), expected, "after a reopen");
        let k = |db: &mut DocDb, d: &DocId| db.get(d).unwrap().get(ROOT, "k").unwrap().map(|(v, _)| v.as_u64());
        assert_eq!(k(&mut db, &id(10)), Some(Some(10_000)));
        assert_eq!(k(&mut db, &id(1500)), Some(Some(1500)));
        assert!(db.get(&id(n - 1)).is_none() && db.read(&id(n - 1)).is_none() && !db.contains(&id(n - 1)));
    }

    #[test]
    fn a_file_without_doc_meta_is_upgraded_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync.redb");
        let id = DocId::new("order/a-1").unwrap();
        let mut doc = AutoCommit::new();
        doc.put(ROOT, "k", 1).unwrap();
        let full = doc.save();
        doc.put(ROOT, "k", 2).unwrap();
        let inc = doc.save_incremental();
        let heads = doc.get_heads();
        {
            // What the code before `doc_meta` wrote: a full save and an increment, no rows, no format.
            let db = Database::create(&path).unwrap();
            let w = db.begin_write().unwrap();
            w.open_table(DOCS).unwrap().insert(id.as_str(), &full[..]).unwrap();
            w.open_table(DOC_INCREMENTS).unwrap().insert((id.as_str(), 0), &inc[..]).unwrap();
            w.commit().unwrap();
        }
        let mut db = DocDb::open(&path, vec![1; 16], 10).unwrap();
        assert_eq!(db.loaded(), 0);
        assert_eq!(db.heads(&id), Some(heads.clone()));
        assert_eq!(db.meta(FORMAT_KEY).unwrap(), Some(FORMAT));
        // Increments continue after the upgraded ones and load in order.
        db.get_mut(&id).unwrap().put(ROOT, "k", 3).unwrap();
        db.mark_dirty(&id);
        db.flush().unwrap();
        let heads = db.heads(&id).unwrap();
        drop(db);
        let mut db = DocDb::open(&path, vec![2; 16], 10).unwrap();
        assert_eq!(db.get_mut(&id).unwrap().get(ROOT, "k").unwrap().map(|(v, _)| v.as_i64()), Some(Some(3)));
        assert_eq!(db.heads(&id), Some(heads));
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
