//! Automerge documents and per-(peer, document) sync states persisted in a redb file of their own.
//!
//! Both sides of sync keep their documents here: the node in `sync.redb` beside `node.redb` (so the sync
//! task never writes through the store's single writer), the hub in `hub.redb`. Documents are held in memory
//! for the sync session. A flush writes each dirty document *incrementally*: the changes since what is
//! already on disk (`save_after` the persisted heads) are appended under `(doc, seq)` in `doc_increments`;
//! once a document's appended bytes exceed `INCREMENT_BYTES_MIN` (16 KiB) or its last full save (whichever
//! is larger), or it has `INCREMENTS_PER_DOC_MAX` (256) increments, the flush compacts it into one full
//! `save()` in `docs` and deletes its increments. Loading is the full save plus the increments in order. Sync
//! states and counters of the same step go into the same transaction: after a crash a document, its sync
//! state and the feed cursor that produced it are all old or all new.
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
//!
//! **Opening does not grow with the number of documents either.** What the rows add up to is kept beside
//! them and written by every flush in the transaction that writes the rows, from the rows it replaces or
//! removes: the document count, per (group, label) the documents and their stored bytes
//! ([`DocDb::stored_totals`]), and the documents due a full save; so is the owner's index
//! ([`DocDb::index_insert`]). An open reads those, not the rows ([`DocDb::rows_read`]). A file from before
//! them is totalled by one walk of its rows, once (format version 2).
//!
//! # Layout
//!
//! One file per concern, each with the tests of what it does. The [`DocDb`] struct keeps every field here,
//! so the whole state is read in one place; the other files add methods to it.
//!
//! - this file: the tables and the file format, [`DocDbError`], [`DocDb::open`], and the small accessors
//!   (heads, labels, dirty marks, counters, sync states) and the two readers of a closed file.
//! - `meta.rs`: the `doc_meta` row (`Persisted`) and its encoding, reading committed rows through one read
//!   view per commit, and the one-time upgrade that writes the rows of a file from before the table.
//! - `cache.rs`: the documents in memory: loading, the resident set and its eviction, [`DocDb::get`],
//!   [`DocDb::read`], [`DocDb::get_mut`], and creating, replacing and removing documents.
//! - `listing.rs`: ids, labels and entries, read in chunks of committed rows with the documents in memory
//!   laid over them.
//! - `flush.rs`: [`DocDb::prepare_flush`], [`FlushBatch`] and its commit, and the gate that orders batches and
//!   brings failed ones back.
//!
//! The dependencies run one way: listing and flush use the cache and the rows; the cache uses the rows and
//! asks the gate one question (is anything in flight?); `meta.rs` uses none of the others.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex};

use oms_protocol::sync::automerge::{self, ActorId};
use oms_protocol::wire::{DocId, PeerId};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

mod cache;
mod flush;
mod generations;
mod listing;
mod meta;

/// Re-exported so callers name the same Automerge.
pub use automerge::ChangeHash;
pub use flush::FlushBatch;
pub use generations::StateHistory;
pub use meta::Totals;

use cache::Slot;
use flush::SharedGate;
use meta::{Persisted, row_error};

const DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("docs");
const DOC_INCREMENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("doc_increments");
const SYNC_STATES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("sync_states");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Per document: what `Persisted` says about its disk copy (heads, sizes, label), so that opening the file
/// reads no document.
const DOC_META: TableDefinition<&str, &[u8]> = TableDefinition::new("doc_meta");
/// (group, label) → (documents, stored bytes): what the `doc_meta` rows add up to per group of ids
/// (`meta::group_of`) and label, written in the transaction that writes the rows ([`DocDb::stored_totals`]).
const DOC_TOTALS: TableDefinition<(&str, u64), (u64, u64)> = TableDefinition::new("doc_totals");
/// Documents whose `doc_meta` row asks for a full save, kept with the rows so that a start finds them
/// without reading every row.
const DOC_FULL_NEEDED: TableDefinition<&str, ()> = TableDefinition::new("doc_full_needed");
/// (key, document) → (): the owner's index of documents by a number of its own ([`DocDb::index_insert`]),
/// written in the transaction that writes the labels it derives from.
const DOC_INDEX: TableDefinition<(u64, &str), ()> = TableDefinition::new("doc_index");
/// Key in `meta` of the number of `doc_meta` rows.
const DOCUMENTS_KEY: &str = "docdb.documents";
type MetaTable = redb::ReadOnlyTable<&'static str, &'static [u8]>;
/// The format of `sync.redb` and `hub.redb` (see `oms_service::storage::format`): 1 is the first versioned
/// one, the same tables as the unversioned files before it, whose own upgrade (`doc_meta` rows, below) still
/// runs at open. Derived: its documents are rebuilt from the process's system of record and caught up by
/// sync, so a backup copies it before that.
///
/// - 2: the figures the `doc_meta` rows add up to are kept beside them (`meta`'s document count,
///   `doc_totals`, `doc_full_needed`) and the owner's `doc_index`, all written with the rows; built by one
///   walk of the rows. A build that does not keep them refuses the file (it would let them go stale).
pub const DOCDB_FORMAT: oms_service::storage::Format = oms_service::storage::Format {
    kind: "docdb",
    version: 2,
    derived: true,
    migrations: &[oms_service::storage::format::Migration {
        to: 2,
        what: "documents: their count, totals per group and label, and those due a full save, kept with their rows",
        apply: meta::migrate_totals,
    }],
};
/// Key in `meta` of the file's format: 2 = every stored document has its `doc_meta` row; 3 = and the figures
/// they add up to are kept ([`meta::build_totals`]).
const FORMAT_KEY: &str = "docdb.format";
const FORMAT: u64 = 3;

/// A document's appended increments may grow to this many bytes (or to the size of its last full save, if
/// larger) before a flush compacts them into a full save.
pub(crate) const INCREMENT_BYTES_MIN: usize = 16 * 1024;
/// Increments kept per document before a flush compacts them into a full save.
pub(crate) const INCREMENTS_PER_DOC_MAX: u64 = 256;
/// redb's page cache for the file (redb's default is 1 GiB; evicted documents are read back through it).
pub(crate) const DB_CACHE_BYTES: usize = 64 << 20;
/// Documents kept loaded unless the owner says otherwise ([`DocDb::set_cache_max`]); a loaded order document
/// takes ≈ 24 KB against ≈ 450 B on disk.
pub(crate) const DOCS_CACHED_DEFAULT: usize = 1_024;

/// Errors of the document database. Each keeps its cause as its [`source`](std::error::Error::source) where
/// the cause is an error value (redb's, Automerge's, the flush task's), and names the database file.
#[derive(Debug, thiserror::Error)]
pub enum DocDbError {
    /// redb failed (disk full, I/O error, file locked by another process).
    #[error("{path}: {source}")]
    Storage {
        /// The database file.
        path: PathBuf,
        /// What redb said.
        #[source]
        source: redb::Error,
    },
    /// A stored document does not load: Automerge refused its full save or an increment.
    #[error("{path}: document {doc} does not load: {source}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// The document.
        doc: String,
        /// What Automerge said: an `automerge::AutomergeError` (`downcast_ref` on the source finds it), boxed
        /// because it alone is larger than any other variant.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stored document cannot be read for a reason that is not an error value: its `doc_meta` row does not
    /// decode, or it did not load when asked for (the cause was logged then).
    #[error("{path}: document {doc} does not load: {detail}")]
    Unreadable {
        /// The database file.
        path: PathBuf,
        /// The document.
        doc: String,
        /// Why.
        detail: &'static str,
    },
    /// The file did not open: a newer format, another kind of file, damage, or a lock held by another
    /// process (the process refuses to start with it).
    #[error(transparent)]
    Open(#[from] oms_service::storage::OpenError),
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
    /// A generation of a state document older than the one held: it is not created again (see
    /// `oms_protocol::generations`).
    #[error("{path}: {doc} is an older generation than the one held")]
    Superseded {
        /// The database file.
        path: PathBuf,
        /// The document refused.
        doc: String,
    },
    /// A batch prepared before this one failed (or was dropped uncommitted), so this one is not written
    /// either: the next flush writes the contents of both.
    #[error("{path}: an earlier flush failed; its contents are retried by the next flush")]
    EarlierFlushFailed {
        /// The database file.
        path: PathBuf,
    },
    /// The task committing a batch panicked or was cancelled; the batch counts as failed (its contents are
    /// retried by the next flush).
    #[error("{path}: flush task: {source}")]
    FlushTask {
        /// The database file.
        path: PathBuf,
        /// Why the task ended.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// `.or_storage(path)?` on a redb call: a [`DocDbError::Storage`] that keeps redb's error (every one of
/// redb's error types converts into [`redb::Error`]).
trait OrStorage<T> {
    fn or_storage(self, path: &Path) -> Result<T, DocDbError>;
}

impl<T, E: Into<redb::Error>> OrStorage<T> for Result<T, E> {
    fn or_storage(self, path: &Path) -> Result<T, DocDbError> {
        self.map_err(|e| DocDbError::Storage { path: path.into(), source: e.into() })
    }
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
    /// Index entries to write (true) or delete (false) with the next flush ([`DocDb::index_insert`]), and
    /// those of batches prepared but maybe not yet committed, for readers.
    dirty_index: BTreeMap<(u64, DocId), bool>,
    flushing_index: BTreeMap<(u64, DocId), bool>,
    /// `doc_meta` rows read since the open, by the open itself and by listings ([`DocDb::rows_read`]).
    rows_read: AtomicU64,
    /// The newest generation held of each state document, by base name (see `generations`).
    generations: BTreeMap<DocId, u32>,
    /// Per state document, the history size (operations) past which [`DocDb::rotate_if_due`] looks again.
    rotation_checks: BTreeMap<DocId, u64>,
    /// See [`DocDb::set_history_ops_min`].
    history_ops_min: u64,
    /// See [`DocDb::generations_started`].
    generations_started: u64,
    /// Sync states of superseded generations the open deleted ([`DocDb::superseded_states_dropped`]).
    superseded_states_dropped: u64,
}

impl std::fmt::Debug for DocDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocDb").field("path", &self.path).field("docs", &self.count).finish()
    }
}

impl DocDb {
    /// Opens (or creates) the file, reading what is on disk about each document (heads, sizes, label) but no
    /// document: they load on access. Each document gets this process's `actor` (fresh per process start, so
    /// two incarnations never reuse an actor's sequence numbers). At most `docs_max` documents are held, and
    /// at most 1,024 loaded unless [`DocDb::set_cache_max`] says otherwise.
    ///
    /// A file written before `doc_meta` existed is upgraded once: every document is loaded (one at a time)
    /// to learn its heads, and the rows are written before this returns. A file written before the totals
    /// kept with the rows ([`DocDb::stored_totals`]) gets them from one walk of the rows, once. After that an
    /// open reads the count and the rows of documents due a full save, not a row per document.
    pub fn open(path: &Path, actor: Vec<u8>, docs_max: usize) -> Result<DocDb, DocDbError> {
        Self::open_with(path, actor, docs_max, None)
    }

    /// [`DocDb::open`] with faults a test injects into the file's storage.
    fn open_with(
        path: &Path,
        actor: Vec<u8>,
        docs_max: usize,
        faults: Option<Arc<oms_service::storage::FaultSwitch>>,
    ) -> Result<DocDb, DocDbError> {
        let options = oms_service::storage::Options { cache_bytes: Some(DB_CACHE_BYTES), faults };
        let opened = oms_service::storage::format::open(path, &DOCDB_FORMAT, &options)?;
        Self::start(path, opened.db, actor, docs_max)
    }

    /// [`DocDb::open`] on another storage than the file at `path`, which then only names it (the power-loss
    /// tests run on `oms_service::storage::crash::CrashBackend`).
    pub fn open_on(
        path: &Path,
        backend: Box<dyn redb::StorageBackend>,
        actor: Vec<u8>,
        docs_max: usize,
    ) -> Result<DocDb, DocDbError> {
        let options = oms_service::storage::Options { cache_bytes: Some(DB_CACHE_BYTES), faults: None };
        let opened = oms_service::storage::format::open_on(path, backend, &DOCDB_FORMAT, &options)?;
        Self::start(path, opened.db, actor, docs_max)
    }

    fn start(path: &Path, db: Arc<Database>, actor: Vec<u8>, docs_max: usize) -> Result<DocDb, DocDbError> {
        let w = db.begin_write().or_storage(path)?;
        {
            let docs = w.open_table(DOCS).or_storage(path)?;
            let incs = w.open_table(DOC_INCREMENTS).or_storage(path)?;
            w.open_table(SYNC_STATES).or_storage(path)?;
            w.open_table(DOC_META).or_storage(path)?;
            w.open_table(DOC_TOTALS).or_storage(path)?;
            w.open_table(DOC_FULL_NEEDED).or_storage(path)?;
            w.open_table(DOC_INDEX).or_storage(path)?;
            let meta = w.open_table(META).or_storage(path)?;
            let format = meta.get(FORMAT_KEY).or_storage(path)?.map(|v| v.value());
            drop(meta);
            if format.is_none_or(|f| f < FORMAT) {
                let empty = docs.is_empty().or_storage(path)? && incs.is_empty().or_storage(path)?;
                drop((docs, incs));
                if !empty && format.is_none_or(|f| f < 2) {
                    meta::upgrade(path, &w)?;
                }
                // One walk of the rows, once: later opens read the figures it leaves.
                meta::build_totals(&w).or_storage(path)?;
            }
        }
        w.commit().or_storage(path)?;
        let actor = ActorId::from(actor);
        // The count is kept; of the rows only those of documents that need a full save are read, and stay in
        // memory.
        let mut docs = BTreeMap::new();
        let rows_read = AtomicU64::new(0);
        let count = {
            let r = db.begin_read().or_storage(path)?;
            let meta = r.open_table(META).or_storage(path)?;
            let count = meta.get(DOCUMENTS_KEY).or_storage(path)?.map_or(0, |v| v.value());
            let rows = r.open_table(DOC_META).or_storage(path)?;
            let full = r.open_table(DOC_FULL_NEEDED).or_storage(path)?;
            for item in full.iter().or_storage(path)? {
                let (k, _) = item.or_storage(path)?;
                let name = k.value();
                let Some(id) = DocId::new(name) else { continue };
                let Some(v) = rows.get(name).or_storage(path)? else { continue };
                rows_read.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let persisted = Persisted::decode(v.value()).ok_or_else(|| row_error(path, name))?;
                if persisted.full_needed {
                    docs.insert(id, Slot { persisted, ..Slot::default() });
                }
            }
            usize::try_from(count).unwrap_or(usize::MAX)
        };
        // Documents with increments but no full save (not written by this code) get one at the next flush.
        let dirty_docs = docs.keys().cloned().collect();
        let mut db = DocDb {
            path: path.into(),
            db,
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
            dirty_index: BTreeMap::new(),
            flushing_index: BTreeMap::new(),
            rows_read,
            generations: BTreeMap::new(),
            rotation_checks: BTreeMap::new(),
            history_ops_min: oms_protocol::generations::HISTORY_OPS_MIN,
            generations_started: 0,
            superseded_states_dropped: 0,
        };
        db.load_generations()?;
        db.superseded_states_dropped = db.drop_superseded_states()?;
        Ok(db)
    }

    /// Sync states of superseded generations that the open found and deleted: rows an older build left, or
    /// that a flush should have deleted with their documents (0 for a file this build wrote).
    pub fn superseded_states_dropped(&self) -> u64 {
        self.superseded_states_dropped
    }

    /// `doc_meta` rows read since the open: by the open (only the rows of documents due a full save) and by
    /// the listings. What a start costs, for tests: it does not grow with the documents stored.
    pub fn rows_read(&self) -> u64 {
        self.rows_read.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Per (group, label), the documents committed and the bytes they take on disk (last full save plus
    /// increments), at most `limit` pairs, without reading a `doc_meta` row: the figures written with the rows.
    /// The group is who a document's id names (`order/<origin>` for an order, the whole id for a node's stock,
    /// escrow or inbound document, `""` otherwise); labels are the owner's. Documents created, changed or
    /// removed since the last commit are not in them.
    pub fn stored_totals(&self, limit: usize) -> Result<Vec<(String, u64, u64, u64)>, DocDbError> {
        let r = self.db.begin_read().or_storage(&self.path)?;
        let t = r.open_table(DOC_TOTALS).or_storage(&self.path)?;
        let mut out = Vec::new();
        for item in t.iter().or_storage(&self.path)?.take(limit) {
            let (k, v) = item.or_storage(&self.path)?;
            let ((group, label), (n, bytes)) = (k.value(), v.value());
            out.push((group.to_owned(), label, n, bytes));
        }
        Ok(out)
    }

    /// The figures kept beside the `doc_meta` rows and what a walk of every row adds up to, in one read
    /// view: equal unless the file is damaged (for tests and operators; reads every row).
    pub fn audit_totals(&self) -> Result<(Totals, Totals), DocDbError> {
        let r = self.db.begin_read().or_storage(&self.path)?;
        let kept = Totals::read(&r).or_storage(&self.path)?;
        let walked = Totals::walk(&r.open_table(DOC_META).or_storage(&self.path)?).or_storage(&self.path)?;
        Ok((kept, walked))
    }

    /// Adds `doc` under `key` in the owner's index, written by the next flush (in the transaction that writes
    /// the labels of the same step). The index is the owner's: removing a document leaves its entries.
    pub fn index_insert(&mut self, key: u64, doc: &DocId) {
        self.dirty_index.insert((key, doc.clone()), true);
    }

    /// Takes `doc` out from under `key` in the owner's index, with the next flush.
    pub fn index_remove(&mut self, key: u64, doc: &DocId) {
        self.dirty_index.insert((key, doc.clone()), false);
    }

    /// The documents under `key` in the owner's index, in id order: the committed entries with those not yet
    /// written laid over them.
    pub fn indexed(&self, key: u64) -> Vec<DocId> {
        let read = || -> Result<BTreeSet<DocId>, DocDbError> {
            let r = self.db.begin_read().or_storage(&self.path)?;
            let t = r.open_table(DOC_INDEX).or_storage(&self.path)?;
            let mut out = BTreeSet::new();
            for item in t.range((key, "")..).or_storage(&self.path)? {
                let (k, _) = item.or_storage(&self.path)?;
                let (at, name) = k.value();
                if at != key {
                    break;
                }
                out.extend(DocId::new(name));
            }
            Ok(out)
        };
        let mut out = read().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the documents' index");
            BTreeSet::new()
        });
        // The least id there is ("\0"), so the range starts at the key's first entry.
        let Some(first) = DocId::new("\u{0}") else { return out.into_iter().collect() };
        for pending in [&self.flushing_index, &self.dirty_index] {
            for ((k, doc), present) in pending.range((key, first.clone())..) {
                if *k != key {
                    break;
                }
                if *present {
                    out.insert(doc.clone());
                } else {
                    out.remove(doc);
                }
            }
        }
        out.into_iter().collect()
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

    /// Whether `doc` is held (loaded or not), without loading it.
    pub fn contains(&self, doc: &DocId) -> bool {
        self.docs.contains_key(doc) || self.stored(doc).is_some()
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
    pub(crate) fn has_dirty(&self) -> bool {
        !(self.dirty_docs.is_empty()
            && self.dirty_states.is_empty()
            && self.dirty_meta.is_empty()
            && self.dirty_index.is_empty()
            && self.removed.is_empty())
    }

    /// How many documents are marked dirty (changed since the last prepared flush).
    pub fn dirty_docs(&self) -> usize {
        self.dirty_docs.len()
    }

    /// A counter or cursor, including a value not yet flushed.
    pub fn meta(&self, key: &str) -> Result<Option<u64>, DocDbError> {
        if let Some(v) = self.dirty_meta.get(key).or_else(|| self.flushing_meta.get(key)) {
            return Ok(Some(*v));
        }
        let r = self.db.begin_read().or_storage(&self.path)?;
        let t = r.open_table(META).or_storage(&self.path)?;
        Ok(t.get(key).or_storage(&self.path)?.map(|v| v.value()))
    }

    /// Flushed counters whose key starts with `prefix`, at most `limit`.
    pub fn meta_with_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<(String, u64)>, DocDbError> {
        let r = self.db.begin_read().or_storage(&self.path)?;
        let t = r.open_table(META).or_storage(&self.path)?;
        let mut out = Vec::new();
        for item in t.range(prefix..).or_storage(&self.path)? {
            let (k, v) = item.or_storage(&self.path)?;
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
        // A superseded generation was removed with its states: none is written for it again.
        if self.is_superseded(doc) {
            return;
        }
        self.dirty_states.insert((peer.clone(), doc.clone()), state);
    }
}

/// The peers with sync states in `states`, one seek each (rows sort by peer first), not a walk of every
/// (peer, document) row: what deleting a removed document's states for every peer reads.
fn state_peers(
    states: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
) -> Result<Vec<String>, redb::StorageError> {
    let mut peers = Vec::new();
    let mut from = String::new();
    loop {
        let peer = match states.range::<(&str, &str)>((from.as_str(), "")..)?.next() {
            Some(item) => item?.0.value().0.to_owned(),
            None => return Ok(peers),
        };
        // The least name after `peer`: every row of `peer` sorts before (peer + NUL, "").
        from = format!("{peer}\0");
        peers.push(peer);
    }
}

/// Lists the document ids stored in a `sync.redb` / `hub.redb` file that no process holds open (for tests
/// and for operators checking what a node was given).
pub fn stored_doc_ids(path: &Path) -> Result<Vec<String>, DocDbError> {
    let db = Database::open(path).or_storage(path)?;
    let r = db.begin_read().or_storage(path)?;
    let t = r.open_table(DOCS).or_storage(path)?;
    let mut out = Vec::new();
    for item in t.iter().or_storage(path)? {
        out.push(item.or_storage(path)?.0.value().to_owned());
    }
    Ok(out)
}

/// What a `sync.redb` / `hub.redb` file that no process holds open stores for `doc`: the size of its full
/// save (`None` if it has none) and the number of increments appended after it (for tests and operators).
pub fn stored_doc_parts(path: &Path, doc: &str) -> Result<(Option<usize>, usize), DocDbError> {
    let db = Database::open(path).or_storage(path)?;
    let r = db.begin_read().or_storage(path)?;
    let full = r.open_table(DOCS).or_storage(path)?.get(doc).or_storage(path)?.map(|v| v.value().len());
    let incs = r.open_table(DOC_INCREMENTS).or_storage(path)?;
    let increments = incs.range((doc, 0)..=(doc, u64::MAX)).or_storage(path)?.count();
    Ok((full, increments))
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::{ROOT, transaction::Transactable};
    use std::error::Error as _;

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

    #[test]
    fn a_removed_documents_sync_states_go_with_it_for_every_peer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        let doc = |s: &str| DocId::new(s).unwrap();
        let (a, b, c) = (doc("stock/wh-a"), doc("stock/wh-b"), doc("order/wh-a-1"));
        // Peers that sort around each other and around the documents' names.
        let peers: Vec<PeerId> = ["oms://t/a", "oms://t/a/b", "oms://t/ab", "oms://t/hub"]
            .iter()
            .map(|p| PeerId::new(*p).unwrap())
            .collect();
        {
            let mut db = DocDb::open(&path, vec![1; 16], 10).unwrap();
            for id in [&a, &b, &c] {
                db.get_or_create(id).unwrap().put(ROOT, "k", id.as_str()).unwrap();
                db.mark_dirty(id);
                for (i, p) in peers.iter().enumerate() {
                    db.set_sync_state(p, id, vec![i as u8]);
                }
            }
            db.flush().unwrap();
            db.remove(&b);
            // A state recorded but not yet written when its document is removed is not written either.
            let d = doc("stock/wh-d");
            db.get_or_create(&d).unwrap().put(ROOT, "k", 1u64).unwrap();
            db.mark_dirty(&d);
            db.set_sync_state(&peers[0], &d, vec![7]);
            db.remove(&d);
            db.flush().unwrap();
            for p in &peers {
                assert_eq!(db.sync_state(p, &b), None, "{p}");
                assert_eq!(db.sync_state(p, &d), None, "{p}");
            }
        }
        let db = DocDb::open(&path, vec![2; 16], 10).unwrap();
        for (i, p) in peers.iter().enumerate() {
            assert_eq!(db.sync_state(p, &b), None, "{p}");
            assert_eq!(db.sync_state(p, &a), Some(vec![i as u8]), "{p}: other documents keep theirs");
            assert_eq!(db.sync_state(p, &c), Some(vec![i as u8]), "{p}");
        }
        let r = db.db.begin_read().unwrap();
        assert_eq!(r.open_table(SYNC_STATES).unwrap().len().unwrap(), 8, "two documents, four peers");
    }

    #[test]
    fn an_open_deletes_the_sync_states_of_superseded_generations_a_file_still_holds() {
        use oms_protocol::generations::name;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        let (hub, other) = (PeerId::new("oms://t/hub").unwrap(), PeerId::new("oms://t/wh-b").unwrap());
        let base = DocId::new("escrow/wh-a").unwrap();
        let (g1, g2) = (name(&base, 1).unwrap(), name(&base, 2).unwrap());
        let order = DocId::new("order/wh-a-1").unwrap();
        {
            let mut db = DocDb::open(&path, vec![1; 16], 10).unwrap();
            for id in [&base, &g1, &g2, &order] {
                db.get_or_create(id).unwrap().put(ROOT, "k", 1u64).unwrap();
                db.mark_dirty(id);
            }
            db.set_sync_state(&hub, &g2, vec![2]);
            db.set_sync_state(&hub, &order, vec![3]);
            db.flush().unwrap();
            assert_eq!(db.current(&base), g2);
        }
        // What an older build left: the states of the generations it removed.
        let mut stale = vec![(hub.clone(), base.clone()), (hub.clone(), g1.clone()), (other.clone(), g1.clone())];
        {
            let raw = Database::open(&path).unwrap();
            let w = raw.begin_write().unwrap();
            {
                let mut t = w.open_table(SYNC_STATES).unwrap();
                for (p, d) in &stale {
                    t.insert((p.as_str(), d.as_str()), &[9u8][..]).unwrap();
                }
                // Another peer's state of a current generation, and of a document of another kind.
                t.insert((other.as_str(), g2.as_str()), &[4u8][..]).unwrap();
                t.insert((other.as_str(), "inbound/wh-a"), &[5u8][..]).unwrap();
            }
            w.commit().unwrap();
        }
        let mut db = DocDb::open(&path, vec![2; 16], 10).unwrap();
        for (p, d) in stale.drain(..) {
            assert_eq!(db.sync_state(&p, &d), None, "{p} {d}");
        }
        // Nor is one written again for a superseded generation (a session that still tracked it).
        db.set_sync_state(&hub, &g1, vec![6]);
        db.flush().unwrap();
        assert_eq!(db.sync_state(&hub, &g1), None);
        assert_eq!(db.sync_state(&hub, &g2), Some(vec![2]));
        assert_eq!(db.sync_state(&other, &g2), Some(vec![4]));
        assert_eq!(db.sync_state(&hub, &order), Some(vec![3]));
        assert_eq!(db.sync_state(&other, &DocId::new("inbound/wh-a").unwrap()), Some(vec![5]));
        let r = db.db.begin_read().unwrap();
        assert_eq!(r.open_table(SYNC_STATES).unwrap().len().unwrap(), 4);
    }

    #[test]
    fn superseded_states_are_deleted_a_bounded_batch_at_a_time_until_none_is_left() {
        use oms_protocol::generations::name;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        let base = DocId::new("stock/wh-a").unwrap();
        let g3 = name(&base, 3).unwrap();
        let mut db = DocDb::open(&path, vec![1; 16], 10).unwrap();
        db.get_or_create(&g3).unwrap().put(ROOT, "k", 1u64).unwrap();
        db.mark_dirty(&g3);
        db.flush().unwrap();
        let peers: Vec<String> = (0..9).map(|i| format!("oms://t/wh-{i}")).collect();
        let w = db.db.begin_write().unwrap();
        {
            let mut t = w.open_table(SYNC_STATES).unwrap();
            for p in &peers {
                for g in 0..3 {
                    t.insert((p.as_str(), name(&base, g).unwrap().as_str()), &[9u8][..]).unwrap();
                }
                t.insert((p.as_str(), g3.as_str()), &[3u8][..]).unwrap();
            }
        }
        w.commit().unwrap();
        assert_eq!(db.drop_superseded_states_by(4).unwrap(), 27, "nine peers, three older generations each");
        assert_eq!(db.drop_superseded_states_by(4).unwrap(), 0);
        let r = db.db.begin_read().unwrap();
        assert_eq!(r.open_table(SYNC_STATES).unwrap().len().unwrap(), 9, "the current generation's, one a peer");
    }

    #[test]
    fn a_storage_failure_keeps_redbs_error_as_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync.redb");
        let _held = DocDb::open(&path, vec![1; 16], 10).unwrap();
        // redb refuses a second open of a file this process holds: opening says so in its own words...
        let e = DocDb::open(&path, vec![2; 16], 10).unwrap_err();
        assert!(
            matches!(&e, DocDbError::Open(oms_service::storage::OpenError::Locked { path: p }) if *p == path),
            "{e:?}"
        );
        // ...and a reader of the closed file keeps redb's error as its source.
        let e = stored_doc_ids(&path).unwrap_err();
        assert!(matches!(&e, DocDbError::Storage { path: p, .. } if *p == path), "{e:?}");
        let source = e.source().unwrap();
        let redb = source.downcast_ref::<redb::Error>();
        assert!(matches!(redb, Some(redb::Error::DatabaseAlreadyOpen)), "{source:?}");
        assert_eq!(e.to_string(), format!("{}: {source}", path.display()));
    }
}
