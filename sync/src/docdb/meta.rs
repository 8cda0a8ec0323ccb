//! The `doc_meta` row: what [`Persisted`] says about a document's disk copy (heads, sizes, label), its
//! encoding, reading the committed rows (one read view per commit), and the one-time upgrade that writes the
//! rows of a file from before the table.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::Ordering;

use oms_protocol::sync::automerge::{AutoCommit, AutomergeError};
use oms_protocol::wire::DocId;
use oms_service::lock;
use redb::{ReadableDatabase, ReadableTable};

use super::{ChangeHash, DOC_INCREMENTS, DOC_META, DOCS, DocDb, DocDbError, MetaTable, OrStorage};

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

#[cfg(test)]
mod tests {
    use super::super::{FORMAT, FORMAT_KEY};
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
}
