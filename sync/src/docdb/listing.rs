//! Listings without loading a document and without an index in memory: the committed `doc_meta` rows are
//! read in chunks ([`DocDb::committed_chunk`]) and the documents in memory, which are newer, are laid over
//! each chunk ([`Chunk::lay_over`]); documents being removed are left out. [`DocDb::labels`] and the id
//! listings iterate chunk by chunk ([`Labels`]); [`DocDb::entries`] adds each document's heads.

use std::ops::Bound;

use oms_protocol::wire::DocId;

use super::meta::{Persisted, stored_bytes};
use super::{ChangeHash, DocDb, OrStorage};

/// Committed rows read per redb transaction by [`Labels`].
pub(super) const LABELS_CHUNK: usize = 1_024;

impl DocDb {
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
        let read = self.with_meta(|t| {
            let lo = after.map_or(Bound::Included(prefix), Bound::Excluded);
            let mut out = Vec::new();
            for item in t.range::<&str>((lo, Bound::Unbounded)).or_storage(&self.path)? {
                let (k, v) = item.or_storage(&self.path)?;
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
            Ok(r) => {
                let n = u64::try_from(r.0.len()).unwrap_or(u64::MAX);
                self.rows_read.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                r
            }
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
            for (id, slot) in self.docs.range_mut((chunk.lo.clone(), Bound::Unbounded)) {
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
}

impl DocDb {
    /// Calls `f` with every document whose id starts with `prefix`, its label and the bytes its disk copy
    /// takes (last full save plus increments, as of the last prepared flush: 0 for a document not flushed
    /// yet), in id order, without loading any. Reads every row with the prefix: for checks of the figures
    /// kept with the rows ([`DocDb::stored_totals`]), not for a start.
    pub fn for_each_stored(&self, prefix: &str, mut f: impl FnMut(&DocId, u64, u64)) {
        let bytes = stored_bytes;
        let mut after: Option<String> = None;
        loop {
            let chunk = self.committed_chunk(prefix, after.as_deref(), LABELS_CHUNK, |v| {
                let p = Persisted::decode(v).unwrap_or_default();
                (p.label, bytes(&p))
            });
            let in_memory: Vec<(DocId, (u64, u64))> = self
                .docs
                .range((chunk.lo.clone(), Bound::Unbounded))
                .take_while(|(id, _)| chunk.covers(id))
                .map(|(id, slot)| (id.clone(), (slot.persisted.label, bytes(&slot.persisted))))
                .collect();
            let upper = chunk.upper.clone();
            for (id, (label, n)) in chunk.lay_over(in_memory) {
                f(&id, label, n);
            }
            match upper {
                Some(u) => after = Some(u),
                None => break,
            }
        }
    }
}

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
            .range((chunk.lo.clone(), Bound::Unbounded))
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

/// What [`DocDb::committed_chunk`] read, and the ids it covers: those with `prefix` from `lo` up to `upper`
/// (included), or all the rest when `upper` is `None`.
struct Chunk<T> {
    rows: Vec<(DocId, T)>,
    prefix: String,
    lo: Bound<DocId>,
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use oms_protocol::sync::automerge::{ROOT, ReadDoc, transaction::Transactable};

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
}
