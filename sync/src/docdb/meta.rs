//! The `doc_meta` row: what [`Persisted`] says about a document's disk copy (heads, sizes, label), its
//! encoding, reading the committed rows (one read view per commit), and the one-time upgrade that writes the
//! rows of a file from before the table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::Ordering;

use oms_protocol::schema::{self, DocKind};
use oms_protocol::sync::automerge::{AutoCommit, AutomergeError};
use oms_protocol::wire::DocId;
use oms_service::lock;
use redb::{ReadableDatabase, ReadableTable};

use super::{
    ChangeHash, DOC_FULL_NEEDED, DOC_INCREMENTS, DOC_META, DOC_TOTALS, DOCS, DOCUMENTS_KEY, DocDb, DocDbError, FORMAT,
    FORMAT_KEY, META, MetaTable, OrStorage,
};

/// Heads of a document, compact: almost every document has one head.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) enum Heads {
    #[default]
    None,
    One([u8; 32]),
    Many(Box<[ChangeHash]>),
}

impl Heads {
    pub(super) fn of(heads: &[ChangeHash]) -> Heads {
        match heads {
            [] => Heads::None,
            [one] => Heads::One(one.0),
            many => Heads::Many(many.into()),
        }
    }

    pub(super) fn to_vec(&self) -> Vec<ChangeHash> {
        match self {
            Heads::None => vec![],
            Heads::One(h) => vec![ChangeHash(*h)],
            Heads::Many(hs) => hs.to_vec(),
        }
    }

    pub(super) fn is(&self, heads: &[ChangeHash]) -> bool {
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
pub(super) struct Persisted {
    /// Heads covered by the full save plus the increments.
    pub(super) heads: Heads,
    /// Sequence number of the next increment (never reused).
    pub(super) next_seq: u64,
    /// The owner's label ([`DocDb::set_label`]).
    pub(super) label: u64,
    /// Size of the last full save.
    pub(super) base_bytes: u32,
    /// Bytes and number of increments appended since the last full save.
    pub(super) increment_bytes: u32,
    pub(super) increments: u16,
    /// A full save exists (or is in a prepared batch).
    pub(super) stored: bool,
    /// The next flush must write a full save (after a failed flush or a replaced document).
    pub(super) full_needed: bool,
    /// The label changed since the `doc_meta` row was last written.
    pub(super) label_dirty: bool,
}

const META_VERSION: u8 = 1;
const META_FIXED_BYTES: usize = 1 + 1 + 4 + 4 + 2 + 8 + 8 + 2;

impl Persisted {
    /// The `doc_meta` row: version, flags, sizes, next sequence number, label, heads.
    pub(super) fn encode(&self) -> Vec<u8> {
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
    pub(super) fn label_of(b: &[u8]) -> Option<u64> {
        if b.len() < META_FIXED_BYTES || b[0] != META_VERSION {
            return None;
        }
        b.get(20..28).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes)
    }

    /// Nothing about the document waits to be written (its row on disk says what this says, once the
    /// batches in flight are committed).
    pub(super) fn settled(&self) -> bool {
        self.stored && !self.full_needed && !self.label_dirty
    }

    pub(super) fn decode(b: &[u8]) -> Option<Persisted> {
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

/// A byte count for a `doc_meta` field, saturating (a document over 4 GiB is not one redb stores).
pub(super) fn bytes_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The error of a `doc_meta` row that does not decode (it is not an error value, so it has no source).
pub(super) fn row_error(path: &Path, doc: &str) -> DocDbError {
    DocDbError::Unreadable { path: path.into(), doc: doc.to_owned(), detail: "its doc_meta row does not decode" }
}

impl DocDb {
    /// The committed `doc_meta` row of a document that is not in memory (`None` if it is not held, or is
    /// being removed). A row that cannot be read is logged and counts as absent.
    pub(super) fn stored(&self, doc: &DocId) -> Option<Persisted> {
        if self.removed.contains(doc) || self.flushing_removed.contains(doc) {
            return None;
        }
        let read = || -> Result<Option<Persisted>, DocDbError> {
            self.with_meta(|t| {
                let Some(v) = t.get(doc.as_str()).or_storage(&self.path)? else { return Ok(None) };
                Persisted::decode(v.value()).map(Some).ok_or_else(|| row_error(&self.path, doc.as_str()))
            })?
        };
        read().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read a document's row");
            None
        })
    }

    /// Whether a committed flush holds `doc`, in some version: not a document created since, nor one only in a
    /// batch not committed yet, nor one being removed (what a crash now would lose). A row that cannot be read
    /// counts as absent.
    pub fn on_disk(&self, doc: &DocId) -> bool {
        if self.removed.contains(doc) || self.flushing_removed.contains(doc) {
            return false;
        }
        self.with_meta(|t| t.get(doc.as_str()).is_ok_and(|v| v.is_some())).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read a document's row");
            false
        })
    }

    /// Runs `f` over the committed `doc_meta` table, opened once per commit. Holding it until the next
    /// commit pins at most the pages that commit frees.
    pub(super) fn with_meta<T>(&self, f: impl FnOnce(&MetaTable) -> T) -> Result<T, DocDbError> {
        let commits = self.commits.load(Ordering::Acquire);
        let mut view = lock(&self.meta_view);
        let table = match view.take() {
            Some((at, t)) if at == commits => t,
            old => {
                // The old view goes before the new one is opened.
                drop(old);
                let r = self.db.begin_read().or_storage(&self.path)?;
                r.open_table(DOC_META).or_storage(&self.path)?
            }
        };
        let (_, t) = view.insert((commits, table));
        Ok(f(t))
    }
}

/// Writes the `doc_meta` row of every stored document of a file from before that table (see [`DocDb::open`]),
/// loading one document at a time.
pub(super) fn upgrade(path: &Path, w: &redb::WriteTransaction) -> Result<(), DocDbError> {
    let corrupt =
        |doc: &str, e: AutomergeError| DocDbError::Corrupt { path: path.into(), doc: doc.to_owned(), source: e.into() };
    let docs = w.open_table(DOCS).or_storage(path)?;
    let incs = w.open_table(DOC_INCREMENTS).or_storage(path)?;
    let mut metas = w.open_table(DOC_META).or_storage(path)?;
    let mut names = BTreeSet::new();
    for item in docs.iter().or_storage(path)? {
        names.insert(item.or_storage(path)?.0.value().to_owned());
    }
    for item in incs.iter().or_storage(path)? {
        names.insert(item.or_storage(path)?.0.value().0.to_owned());
    }
    let mut upgraded = 0usize;
    for name in &names {
        let name = name.as_str();
        let mut p = Persisted::default();
        let mut doc = match docs.get(name).or_storage(path)? {
            Some(v) => {
                p.stored = true;
                p.base_bytes = bytes_u32(v.value().len());
                AutoCommit::load(v.value()).map_err(|e| corrupt(name, e))?
            }
            None => {
                p.full_needed = true;
                AutoCommit::new()
            }
        };
        for item in incs.range((name, 0)..=(name, u64::MAX)).or_storage(path)? {
            let (k, v) = item.or_storage(path)?;
            doc.load_incremental(v.value()).map_err(|e| corrupt(name, e))?;
            p.increments = p.increments.saturating_add(1);
            p.increment_bytes = p.increment_bytes.saturating_add(bytes_u32(v.value().len()));
            p.next_seq = p.next_seq.max(k.value().1.saturating_add(1));
        }
        p.heads = Heads::of(&doc.get_heads());
        metas.insert(name, &p.encode()[..]).or_storage(path)?;
        upgraded += 1;
    }
    tracing::info!(path = %path.display(), documents = upgraded, "recorded the heads of every stored document");
    Ok(())
}

/// The group a document is totalled under in `doc_totals`: who its id names, as the protocol lays ids out
/// (`oms_protocol::schema::DocKind`): `order/<origin>` for an order (`order/` for one whose id names no
/// origin), the whole id for a node's stock, escrow or inbound document, `""` for any other id. The same for
/// every file and every process, so totals written by one start are read by the next.
pub(super) fn group_of(name: &str) -> String {
    let Some(id) = DocId::new(name) else { return String::new() };
    match DocKind::of(&id) {
        Some(DocKind::Order(order)) => match schema::order_origin(&order) {
            Some(origin) => format!("{}{origin}", schema::ORDER_PREFIX),
            None => schema::ORDER_PREFIX.to_owned(),
        },
        Some(DocKind::Stock(_) | DocKind::Escrow(_) | DocKind::Inbound(_)) => name.to_owned(),
        None => String::new(),
    }
}

/// The bytes a row says its document takes on disk: the last full save plus the increments since.
pub(super) fn stored_bytes(p: &Persisted) -> u64 {
    u64::from(p.base_bytes).saturating_add(u64::from(p.increment_bytes))
}

/// What the `doc_meta` rows add up to, kept beside them (`meta`'s document count, `doc_totals`,
/// `doc_full_needed`) so that a start reads these instead of every row: the count of documents, per (group,
/// label) the documents and their stored bytes, and the documents whose next flush must write a full save.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    /// Documents with a `doc_meta` row.
    pub documents: u64,
    /// Per (group, label): documents and stored bytes (see [`DocDb::stored_totals`]).
    pub by_group: BTreeMap<(String, u64), (u64, u64)>,
    /// Documents whose row asks for a full save.
    pub full_needed: BTreeSet<String>,
}

/// Changes to [`Totals`] in one write transaction: rows taken away and rows added, applied at the end.
#[derive(Debug, Default)]
pub(super) struct TotalsDelta {
    documents: i64,
    by_group: BTreeMap<(String, u64), (i64, i64)>,
}

impl TotalsDelta {
    /// A row added (`sign` 1) or taken away (`sign` -1); returns whether it asks for a full save. A row that
    /// does not decode counts as a document with label 0 and no bytes (this code writes none such).
    pub(super) fn row(&mut self, name: &str, row: &[u8], sign: i64) -> bool {
        let p = Persisted::decode(row).unwrap_or_default();
        self.documents += sign;
        let e = self.by_group.entry((group_of(name), p.label)).or_default();
        e.0 += sign;
        e.1 = e.1.saturating_add(sign.saturating_mul(i64::try_from(stored_bytes(&p)).unwrap_or(i64::MAX)));
        p.full_needed
    }

    /// Adds the changes to what the file holds.
    pub(super) fn apply(self, w: &redb::WriteTransaction) -> Result<(), redb::Error> {
        let add = |v: u64, d: i64| u64::try_from(i128::from(v) + i128::from(d)).unwrap_or(0);
        let mut totals = w.open_table(DOC_TOTALS)?;
        for ((group, label), (n, bytes)) in self.by_group {
            if n == 0 && bytes == 0 {
                continue;
            }
            let (old_n, old_bytes) = totals.get((group.as_str(), label))?.map(|v| v.value()).unwrap_or_default();
            let (n, bytes) = (add(old_n, n), add(old_bytes, bytes));
            if n == 0 {
                totals.remove((group.as_str(), label))?;
            } else {
                totals.insert((group.as_str(), label), (n, bytes))?;
            }
        }
        if self.documents != 0 {
            let mut meta = w.open_table(META)?;
            let old = meta.get(DOCUMENTS_KEY)?.map(|v| v.value()).unwrap_or(0);
            meta.insert(DOCUMENTS_KEY, add(old, self.documents))?;
        }
        Ok(())
    }
}

/// Keeps `doc_full_needed` in step with a row replaced or removed: whether the old row (if any) and the new
/// one (if any) ask for a full save. Touches the table only when that changes (almost never: a flush writes
/// rows that do not).
pub(super) fn mark_full_needed(
    t: &mut redb::Table<'_, &'static str, ()>,
    name: &str,
    was: bool,
    now: bool,
) -> Result<(), redb::Error> {
    match (was, now) {
        (false, true) => t.insert(name, ()).map(|_| ()),
        (true, false) => t.remove(name).map(|_| ()),
        _ => Ok(()),
    }
    .map_err(Into::into)
}

impl Totals {
    /// What a walk of every `doc_meta` row adds up to (the upgrade, and the check of the kept figures).
    pub(super) fn walk(t: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Totals, redb::Error> {
        let mut out = Totals::default();
        for item in t.iter()? {
            let (k, v) = item?;
            let name = k.value();
            let p = Persisted::decode(v.value())
                .ok_or_else(|| redb::Error::Corrupted(format!("document {name}: its doc_meta row does not decode")))?;
            out.documents += 1;
            let e = out.by_group.entry((group_of(name), p.label)).or_default();
            e.0 += 1;
            e.1 = e.1.saturating_add(stored_bytes(&p));
            if p.full_needed {
                out.full_needed.insert(name.to_owned());
            }
        }
        Ok(out)
    }

    /// The figures the file keeps, as a start reads them.
    pub(super) fn read(r: &redb::ReadTransaction) -> Result<Totals, redb::Error> {
        let documents = r.open_table(META)?.get(DOCUMENTS_KEY)?.map(|v| v.value()).unwrap_or(0);
        let mut out = Totals { documents, ..Totals::default() };
        for item in r.open_table(DOC_TOTALS)?.iter()? {
            let (k, v) = item?;
            let (group, label) = k.value();
            out.by_group.insert((group.to_owned(), label), v.value());
        }
        for item in r.open_table(DOC_FULL_NEEDED)?.iter()? {
            out.full_needed.insert(item?.0.value().to_owned());
        }
        Ok(out)
    }
}

/// Writes the figures kept beside the `doc_meta` rows ([`Totals`]) from one walk of the rows, replacing what
/// was there, and records the format that has them: the one-time upgrade of a file from before them (as a
/// migration of [`super::DOCDB_FORMAT`], and at open for a file from before versions), in the caller's
/// transaction.
pub(super) fn build_totals(w: &redb::WriteTransaction) -> Result<(), redb::Error> {
    let walked = Totals::walk(&w.open_table(DOC_META)?)?;
    let mut totals = w.open_table(DOC_TOTALS)?;
    totals.retain(|_, _| false)?;
    for ((group, label), v) in &walked.by_group {
        totals.insert((group.as_str(), *label), *v)?;
    }
    let mut full = w.open_table(DOC_FULL_NEEDED)?;
    full.retain(|_, _| false)?;
    for name in &walked.full_needed {
        full.insert(name.as_str(), ())?;
    }
    let mut meta = w.open_table(META)?;
    meta.insert(DOCUMENTS_KEY, walked.documents)?;
    meta.insert(FORMAT_KEY, FORMAT)?;
    tracing::info!(documents = walked.documents, groups = walked.by_group.len(), "totalled every stored document");
    Ok(())
}

/// [`build_totals`] as a step of [`super::DOCDB_FORMAT`]: a file of version 1 has every `doc_meta` row
/// (written at its first open) but not the figures.
pub(super) fn migrate_totals(w: &redb::WriteTransaction) -> Result<(), redb::Error> {
    let format = w.open_table(META)?.get(FORMAT_KEY)?.map(|v| v.value());
    // A version-1 file whose rows were never written (the process stopped within its first open) is
    // upgraded whole at open, totals included.
    if format.is_some_and(|f| f >= 2) { build_totals(w) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oms_protocol::sync::automerge::{ROOT, ReadDoc, transaction::Transactable};
    use proptest::prelude::*;
    use redb::Database;

    #[test]
    fn the_row_encoding_is_fixed() {
        let p = Persisted {
            heads: Heads::One([0xab; 32]),
            next_seq: 5,
            label: 7,
            base_bytes: 300,
            increment_bytes: 40,
            increments: 2,
            stored: true,
            full_needed: false,
            label_dirty: true,
        };
        // Version, flags, base bytes, increment bytes, increments, next seq, label, number of heads, heads.
        let mut row = vec![1u8, 0b01, 0x2c, 0x01, 0, 0, 40, 0, 0, 0, 2, 0];
        row.extend([5, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        row.extend([0xab; 32]);
        assert_eq!(p.encode(), row, "the doc_meta row of files already written must not change");
        assert_eq!(Persisted::decode(&row), Some(Persisted { label_dirty: false, ..p }));
        assert_eq!(Persisted::label_of(&row), Some(7));
        assert_eq!(Persisted::decode(&row[..row.len() - 1]), None);
        let mut other_version = row.clone();
        other_version[0] = 2;
        assert_eq!(Persisted::decode(&other_version), None);
        assert_eq!(Persisted::label_of(&other_version), None);
    }

    proptest! {
        #[test]
        fn rows_decode_to_what_was_encoded(
            heads in proptest::collection::vec(any::<[u8; 32]>(), 0..4),
            next_seq: u64, label: u64, base_bytes: u32, increment_bytes: u32, increments: u16,
            stored: bool, full_needed: bool,
        ) {
            let heads: Vec<ChangeHash> = heads.into_iter().map(ChangeHash).collect();
            let p = Persisted {
                heads: Heads::of(&heads),
                next_seq, label, base_bytes, increment_bytes, increments, stored, full_needed,
                label_dirty: false,
            };
            let row = p.encode();
            prop_assert_eq!(Persisted::label_of(&row), Some(label));
            prop_assert_eq!(Persisted::decode(&row), Some(p));
        }

        #[test]
        fn any_bytes_decode_or_not_without_panicking(b in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = Persisted::decode(&b);
            let _ = Persisted::label_of(&b);
        }
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
        let (kept, walked) = db.audit_totals().unwrap();
        assert_eq!((kept.documents, db.len()), (1, 1));
        assert_eq!(kept, walked, "the totals are built with the rows");
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

    /// A file written before the totals (docdb format version 1, rows of format 2) gets them from one walk
    /// at its first open, in the migration's transaction; the next open reads them and walks nothing.
    #[test]
    fn a_file_from_before_the_totals_is_upgraded_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        let due = DocId::new("order/wh1-0003").unwrap();
        {
            let mut db = DocDb::open(&path, vec![1; 16], 100).unwrap();
            for i in 0..10u64 {
                let id = DocId::new(format!("order/wh{}-{i:04}", i % 2)).unwrap();
                db.get_or_create(&id).unwrap().put(ROOT, "k", i).unwrap();
                db.mark_dirty(&id);
                db.set_label(&id, i % 3);
            }
            let stock = DocId::new("stock/wh1").unwrap();
            db.get_or_create(&stock).unwrap().put(ROOT, "k", 1).unwrap();
            db.mark_dirty(&stock);
            db.flush().unwrap();
        }
        {
            // What the code before the totals left: no totals, no count, format 2, version 1; and one row due a
            // full save (as the upgrade from before `doc_meta` leaves a document with increments only).
            let db = Database::open(&path).unwrap();
            let w = db.begin_write().unwrap();
            assert!(w.delete_table(DOC_TOTALS).unwrap() && w.delete_table(DOC_FULL_NEEDED).unwrap());
            {
                let mut meta = w.open_table(META).unwrap();
                meta.remove(DOCUMENTS_KEY).unwrap();
                meta.insert(FORMAT_KEY, 2).unwrap();
                let mut rows = w.open_table(DOC_META).unwrap();
                let mut p = Persisted::decode(rows.get(due.as_str()).unwrap().unwrap().value()).unwrap();
                p.full_needed = true;
                rows.insert(due.as_str(), &p.encode()[..]).unwrap();
            }
            w.open_table(oms_service::storage::format::FORMAT_TABLE).unwrap().insert("docdb", 1).unwrap();
            w.commit().unwrap();
        }
        let db = DocDb::open(&path, vec![2; 16], 100).unwrap();
        let (kept, walked) = db.audit_totals().unwrap();
        assert_eq!(kept, walked);
        assert_eq!((kept.documents, db.len()), (11, 11));
        assert_eq!(kept.full_needed, BTreeSet::from([due.as_str().to_owned()]));
        assert_eq!(kept.by_group[&("order/wh1".to_owned(), 1)].0, 2, "wh1's orders 1 and 7");
        assert_eq!(db.meta(FORMAT_KEY).unwrap(), Some(FORMAT));
        assert_eq!(db.rows_read(), 1, "the open read the row due a full save, no other");
        drop(db);
        {
            // A figure planted in the file: an open that walked the rows would drop it.
            let db = Database::open(&path).unwrap();
            let w = db.begin_write().unwrap();
            w.open_table(DOC_TOTALS).unwrap().insert(("planted", 9), (1, 1)).unwrap();
            w.commit().unwrap();
        }
        let db = DocDb::open(&path, vec![3; 16], 100).unwrap();
        assert!(db.stored_totals(100).unwrap().contains(&("planted".to_owned(), 9, 1, 1)), "the second open walked");
        assert_eq!(db.rows_read(), 1);
        assert_eq!(db.len(), 11);
    }
}
