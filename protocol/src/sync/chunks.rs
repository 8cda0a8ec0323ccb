//! What the changes of a peer's sync message would cost once inflated, and which of them Automerge would
//! park for want of their dependencies: read from the chunks themselves, *before* Automerge sees them.
//!
//! Automerge 0.12 inflates every DEFLATE-compressed part of a chunk into a `Vec` with `read_to_end` and no
//! limit, so a 4 MiB frame of compressed zeros becomes gigabytes inside the receiver. It also keeps a
//! change whose dependencies it lacks in an in-memory queue for as long as the document lives. Neither has
//! an option to bound it, so [`inspect`] walks the chunk format itself:
//!
//! - every chunk starts with a header: the magic bytes `85 6f 4a 83`, a 4-byte checksum, a chunk type byte
//!   and the data length (unsigned LEB128), followed by that many bytes of data;
//! - type 0, a document: actors, heads, the change and op column metadata (count, then per column a spec and
//!   a length, each LEB128), the column data, a suffix. A column whose spec has bit 3 set is DEFLATE;
//! - type 1, a change: its dependencies (count, then 32-byte hashes), then actor, sequence number and the rest;
//!   Automerge refuses deflated columns here;
//! - type 2, a compressed change: the data of a type-1 change, DEFLATE as a whole. Its hash is that of the
//!   inflated change;
//! - type 3, a bundle: external dependencies, actors, change and op column metadata and data, as a document.
//!
//! Every DEFLATE part is inflated through a counting reader that stops one byte past what is left of the
//! budget, into no buffer (a compressed change, once under the bound, is inflated a second time into a buffer
//! of its exact size to read its dependencies and hash), so refusing a bomb costs the decoder's window and no
//! more. A chunk this module cannot read is refused as malformed: what it cannot measure is not handed on.

use std::io::Read;

use automerge::ChangeHash;
use sha2::Digest as _;

/// The magic bytes every chunk starts with.
const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const DOCUMENT: u8 = 0;
const CHANGE: u8 = 1;
const COMPRESSED: u8 = 2;
const BUNDLE: u8 = 3;
/// Bit of a column spec that marks the column as DEFLATE.
const COLUMN_DEFLATE: u64 = 0b1000;
/// Bytes of a change hash.
const HASH_BYTES: usize = 32;

/// Why a message's changes were not handed to Automerge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The changes inflate beyond the bound.
    #[error("changes inflate beyond {max} bytes")]
    TooLarge {
        /// The bound, bytes.
        max: usize,
    },
    /// A chunk that does not parse (or a DEFLATE stream that does not inflate).
    #[error("malformed change chunk: {0}")]
    Malformed(&'static str),
}

/// What [`inspect`] found in a message's changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChunkReport {
    /// Bytes of the chunks as sent.
    pub raw_bytes: usize,
    /// Bytes once every DEFLATE part is inflated (the raw bytes of the other parts included).
    pub inflated_bytes: usize,
    /// Changes (and bundles) with a dependency neither the document nor an earlier chunk of the message has:
    /// Automerge would park them.
    pub missing_deps: usize,
    /// Their inflated bytes.
    pub missing_deps_bytes: usize,
}

/// Reads the chunks of one sync message (each element of Automerge's `ChunkList` may hold several chunks
/// back to back). `inflated_max` bounds the inflated size of all of them together; `known` says whether
/// the document already has a change.
pub fn inspect<'a>(
    parts: impl IntoIterator<Item = &'a [u8]>,
    inflated_max: usize,
    mut known: impl FnMut(&ChangeHash) -> bool,
) -> Result<ChunkReport, ChunkError> {
    let mut report = ChunkReport::default();
    // Hashes of the changes earlier in the message, which later ones may depend on. A document or a bundle
    // stands for changes whose hashes are not read here: a message with one is checked against what its
    // heads name, and anything else counts as missing (the safe side of the bound).
    let mut seen: Vec<ChangeHash> = Vec::new();
    for part in parts {
        let mut rest = part;
        // Each pass consumes a header and its data, so this ends within `part.len() / 9` passes.
        while !rest.is_empty() {
            let (kind, data, after) = header(rest)?;
            rest = after;
            let budget = inflated_max.saturating_sub(report.inflated_bytes);
            report.raw_bytes = report.raw_bytes.saturating_add(data.len());
            let (inflated, deps) = match kind {
                CHANGE => {
                    add_bytes(&mut report, data.len(), inflated_max)?;
                    seen.push(change_hash(data));
                    (data.len(), deps(data)?)
                }
                COMPRESSED => {
                    let n = inflated_len(data, budget, inflated_max)?;
                    add_bytes(&mut report, n, inflated_max)?;
                    let mut change = Vec::with_capacity(n);
                    flate2::read::DeflateDecoder::new(data)
                        .take(n as u64)
                        .read_to_end(&mut change)
                        .map_err(|_| ChunkError::Malformed("a compressed change does not inflate"))?;
                    seen.push(change_hash(&change));
                    let deps = deps(&change)?;
                    (n, deps)
                }
                DOCUMENT => {
                    let (n, heads) = columns_chunk(data, budget, inflated_max, false)?;
                    add_bytes(&mut report, n, inflated_max)?;
                    seen.extend(heads);
                    (n, vec![])
                }
                BUNDLE => {
                    let (n, deps) = columns_chunk(data, budget, inflated_max, true)?;
                    add_bytes(&mut report, n, inflated_max)?;
                    (n, deps)
                }
                _ => return Err(ChunkError::Malformed("unknown chunk type")),
            };
            if deps.iter().any(|d| !seen.contains(d) && !known(d)) {
                report.missing_deps += 1;
                report.missing_deps_bytes = report.missing_deps_bytes.saturating_add(inflated);
            }
        }
    }
    Ok(report)
}

fn add_bytes(report: &mut ChunkReport, n: usize, max: usize) -> Result<(), ChunkError> {
    report.inflated_bytes = report.inflated_bytes.saturating_add(n);
    if report.inflated_bytes > max { Err(ChunkError::TooLarge { max }) } else { Ok(()) }
}

/// The type, data and what follows of the chunk at the start of `b`.
fn header(b: &[u8]) -> Result<(u8, &[u8], &[u8]), ChunkError> {
    let (magic, b) = take(b, 4)?;
    if magic != MAGIC {
        return Err(ChunkError::Malformed("bad magic bytes"));
    }
    let (_checksum, b) = take(b, 4)?;
    let (kind, b) = take(b, 1)?;
    let (len, b) = uleb(b)?;
    let len = usize::try_from(len).map_err(|_| ChunkError::Malformed("chunk length"))?;
    let (data, rest) = take(b, len)?;
    Ok((kind[0], data, rest))
}

fn take(b: &[u8], n: usize) -> Result<(&[u8], &[u8]), ChunkError> {
    if b.len() < n { Err(ChunkError::Malformed("truncated chunk")) } else { Ok(b.split_at(n)) }
}

/// An unsigned LEB128 of at most 64 bits.
fn uleb(b: &[u8]) -> Result<(u64, &[u8]), ChunkError> {
    let mut value = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        let bits = u64::from(byte & 0x7f);
        let shift = 7 * u32::try_from(i).map_err(|_| ChunkError::Malformed("leb128"))?;
        if shift == 63 && bits > 1 {
            return Err(ChunkError::Malformed("leb128 overflows 64 bits"));
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Ok((value, &b[i + 1..]));
        }
    }
    Err(ChunkError::Malformed("leb128"))
}

fn uleb_usize(b: &[u8]) -> Result<(usize, &[u8]), ChunkError> {
    let (v, rest) = uleb(b)?;
    Ok((usize::try_from(v).map_err(|_| ChunkError::Malformed("length"))?, rest))
}

/// `count` hashes of 32 bytes, after their count.
fn hashes(b: &[u8]) -> Result<(Vec<ChangeHash>, &[u8]), ChunkError> {
    let (count, b) = uleb_usize(b)?;
    let (all, rest) = take(b, count.checked_mul(HASH_BYTES).ok_or(ChunkError::Malformed("hash count"))?)?;
    let hashes = all.chunks_exact(HASH_BYTES).filter_map(|h| h.try_into().ok().map(ChangeHash)).collect();
    Ok((hashes, rest))
}

/// Skips a length-prefixed list of length-prefixed byte strings (actor ids).
fn skip_actors(b: &[u8]) -> Result<&[u8], ChunkError> {
    let (count, mut b) = uleb(b)?;
    // Each actor takes at least its length byte, so more actors than bytes is malformed; this also bounds
    // the loop by the chunk's size.
    if count > b.len() as u64 {
        return Err(ChunkError::Malformed("actor count"));
    }
    for _ in 0..count {
        let (len, rest) = uleb_usize(b)?;
        b = take(rest, len)?.1;
    }
    Ok(b)
}

/// A column's spec and data length, as the metadata lists them.
type ColumnMeta = (u64, usize);

/// Column metadata: (spec, length) per column.
fn column_meta(b: &[u8]) -> Result<(Vec<ColumnMeta>, &[u8]), ChunkError> {
    let (count, mut b) = uleb(b)?;
    if count > b.len() as u64 {
        return Err(ChunkError::Malformed("column count"));
    }
    let mut cols = Vec::new();
    for _ in 0..count {
        let (spec, rest) = uleb(b)?;
        let (len, rest) = uleb_usize(rest)?;
        cols.push((spec, len));
        b = rest;
    }
    Ok((cols, b))
}

/// The bytes `cols` take once inflated; their data follows in `b`. Returns what follows them.
fn columns_inflated<'b>(
    cols: &[ColumnMeta],
    mut b: &'b [u8],
    budget: usize,
    max: usize,
) -> Result<(usize, &'b [u8]), ChunkError> {
    let mut total = 0usize;
    for &(spec, len) in cols {
        let (data, rest) = take(b, len)?;
        b = rest;
        let n = if spec & COLUMN_DEFLATE != 0 {
            inflated_len(data, budget.saturating_sub(total), max)?
        } else {
            data.len()
        };
        total = total.saturating_add(n);
        if total > budget {
            return Err(ChunkError::TooLarge { max });
        }
    }
    Ok((total, b))
}

/// A document (`bundle` false: returns its heads) or a bundle (true: returns its external dependencies),
/// with its inflated size.
fn columns_chunk(data: &[u8], budget: usize, max: usize, bundle: bool) -> Result<(usize, Vec<ChangeHash>), ChunkError> {
    let (prefix_hashes, b) = if bundle {
        let (deps, b) = hashes(data)?;
        (deps, skip_actors(b)?)
    } else {
        let b = skip_actors(data)?;
        hashes(b)?
    };
    // A document lists both column sets' metadata before their data; a bundle each set's before its data.
    let (change_cols, b) = column_meta(b)?;
    let (ops_cols, b) = if bundle {
        (None, b)
    } else {
        let (cols, b) = column_meta(b)?;
        (Some(cols), b)
    };
    let (changes, b) = columns_inflated(&change_cols, b, budget, max)?;
    let (ops_cols, b) = match ops_cols {
        Some(cols) => (cols, b),
        None => column_meta(b)?,
    };
    let (ops, _suffix) = columns_inflated(&ops_cols, b, budget.saturating_sub(changes), max)?;
    // The raw bytes count too (prefix, metadata, suffix), so a chunk never counts less than it weighs.
    Ok((changes.saturating_add(ops).max(data.len()), prefix_hashes))
}

/// How many bytes a raw DEFLATE stream inflates to, reading at most `budget + 1` of them into no buffer.
fn inflated_len(data: &[u8], budget: usize, max: usize) -> Result<usize, ChunkError> {
    let limit = u64::try_from(budget).unwrap_or(u64::MAX).saturating_add(1);
    let mut reader = flate2::read::DeflateDecoder::new(data).take(limit);
    let n = std::io::copy(&mut reader, &mut std::io::sink()).map_err(|_| ChunkError::Malformed("bad DEFLATE"))?;
    let n = usize::try_from(n).map_err(|_| ChunkError::TooLarge { max })?;
    if n > budget { Err(ChunkError::TooLarge { max }) } else { Ok(n) }
}

/// The dependencies at the start of a change's data.
fn deps(change: &[u8]) -> Result<Vec<ChangeHash>, ChunkError> {
    hashes(change).map(|(deps, _)| deps)
}

/// The hash of a change: SHA-256 over its type, its data length (LEB128) and its data.
fn change_hash(data: &[u8]) -> ChangeHash {
    let mut h = sha2::Sha256::new();
    h.update([CHANGE]);
    let mut len = data.len() as u64;
    loop {
        // cannot truncate: the value is masked to 7 bits.
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            h.update([byte]);
            break;
        }
        h.update([byte | 0x80]);
    }
    h.update(data);
    ChangeHash(h.finalize().into())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT};
    use std::io::Write;

    fn chunk(kind: u8, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend([0, 0, 0, 0, kind]);
        let mut len = data.len() as u64;
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
        out.extend(data);
        out
    }

    /// A compressed-change chunk (type 2) whose data inflates to `n` zero bytes.
    pub(crate) fn bomb(n: usize) -> Vec<u8> {
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 16];
        let mut left = n;
        while left > 0 {
            let k = left.min(zeros.len());
            enc.write_all(&zeros[..k]).unwrap();
            left -= k;
        }
        chunk(COMPRESSED, &enc.finish().unwrap())
    }

    fn doc_with(n: usize) -> AutoCommit {
        let mut d = AutoCommit::new();
        for i in 0..n {
            d.put(ROOT, format!("k{i}"), "some text that repeats and repeats and repeats").unwrap();
            d.commit();
        }
        d
    }

    #[test]
    fn automerges_own_chunks_are_measured_and_their_hashes_match() {
        let mut d = doc_with(50);
        let save = d.save();
        let r = inspect([save.as_slice()], usize::MAX, |_| false).unwrap();
        assert!(r.raw_bytes > 0 && r.raw_bytes < save.len(), "{r:?}");
        assert!(r.inflated_bytes >= r.raw_bytes, "{r:?}");
        assert_eq!(r.missing_deps, 0, "a document has no missing dependencies");
        // Changes as a sync message carries them: back to back, each depending on the one before.
        let changes = d.get_changes(&[]);
        let joined: Vec<u8> = changes.iter().flat_map(|c| c.raw_bytes().to_vec()).collect();
        let r = inspect([joined.as_slice()], usize::MAX, |_| false).unwrap();
        assert_eq!(r.missing_deps, 0, "each change depends on one earlier in the message: {r:?}");
        // Without the first change, the second misses its dependency unless the document has it.
        let first = changes[0].hash();
        let tail: Vec<u8> = changes[1..].iter().flat_map(|c| c.raw_bytes().to_vec()).collect();
        assert_eq!(inspect([tail.as_slice()], usize::MAX, |_| false).unwrap().missing_deps, 1);
        assert_eq!(inspect([tail.as_slice()], usize::MAX, |h| *h == first).unwrap().missing_deps, 0);
    }

    #[test]
    fn a_large_change_is_compressed_by_automerge_and_its_hash_is_that_of_the_inflated_change() {
        let mut d = AutoCommit::new();
        let text: String = (0..4_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        d.put(ROOT, "big", text).unwrap();
        d.commit();
        d.put(ROOT, "next", 1).unwrap();
        d.commit();
        // `Change::bytes` is the compressed form (type 2) of a change above 256 bytes.
        let mut changes = d.get_changes(&[]);
        let raw: Vec<u8> = changes.iter_mut().flat_map(|c| c.bytes().to_vec()).collect();
        assert_eq!(raw[8], COMPRESSED, "the first change is compressed");
        let r = inspect([raw.as_slice()], usize::MAX, |_| false).unwrap();
        assert_eq!(r.missing_deps, 0, "{r:?}");
        // The bound counts what the change inflates to.
        assert!(matches!(inspect([raw.as_slice()], r.inflated_bytes - 1, |_| false), Err(ChunkError::TooLarge { .. })));
    }

    #[test]
    fn a_bomb_is_refused_past_the_bound_without_inflating_it_into_memory() {
        let b = bomb(64 << 20);
        assert!(b.len() < 128 << 10, "{} bytes", b.len());
        assert_eq!(inspect([b.as_slice()], 1 << 20, |_| false), Err(ChunkError::TooLarge { max: 1 << 20 }));
        // Two halves of the bound each fit, together they do not.
        let half = bomb(600 << 10);
        let two = [half.as_slice(), half.as_slice()];
        assert_eq!(inspect(two, 1 << 20, |_| false), Err(ChunkError::TooLarge { max: 1 << 20 }));
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(inspect([&b"\x85\x6f\x4a"[..]], 1 << 20, |_| false), Err(ChunkError::Malformed(_))));
        assert!(matches!(inspect([&[1u8; 20][..]], 1 << 20, |_| false), Err(ChunkError::Malformed(_))));
        assert!(matches!(inspect([chunk(9, b"xx").as_slice()], 1 << 20, |_| false), Err(ChunkError::Malformed(_))));
        assert!(matches!(
            inspect([chunk(COMPRESSED, b"\xff\xff").as_slice()], 1 << 20, |_| false),
            Err(ChunkError::Malformed(_))
        ));
    }
}
