//! A power-loss harness for redb: [`CrashBackend`] keeps a database in memory and records every write, length
//! change and sync in order, so a test can run real work on it and afterwards rebuild the bytes a disk could
//! hold had the power been cut after any operation ([`image_at`]): everything synced, plus none, some or a
//! torn part of what was written since the last sync. Opening such an image must give the last committed
//! state (or a typed error), never a panic or half a transaction.
//!
//! The kernel's page cache survives `kill -9`, so killed processes cannot show this; a recorded run can be
//! cut at hundreds of points in a fraction of a second each.

use std::io;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use redb::{BackendError, StorageBackend};

/// One operation on the storage, as redb issued it.
#[derive(Debug, Clone)]
pub enum Op {
    /// `data` written at `offset`.
    Write {
        /// Where.
        offset: u64,
        /// What.
        data: Vec<u8>,
    },
    /// The length set.
    SetLen(u64),
    /// Everything before is durable.
    Sync,
}

/// The operations of a run, shared between the backend and the test.
pub type OpLog = Arc<Mutex<Vec<Op>>>;

/// An in-memory storage that records what redb does to it (see the module docs).
#[derive(Debug)]
pub struct CrashBackend {
    bytes: Mutex<Vec<u8>>,
    log: Option<OpLog>,
}

impl CrashBackend {
    /// An empty storage recording into `log`.
    pub fn recording(log: OpLog) -> CrashBackend {
        CrashBackend { bytes: Mutex::new(Vec::new()), log: Some(log) }
    }

    /// A storage holding `image` (what [`image_at`] rebuilt), recording nothing.
    pub fn from_image(image: Vec<u8>) -> CrashBackend {
        CrashBackend { bytes: Mutex::new(image), log: None }
    }

    fn record(&self, op: Op) {
        if let Some(log) = &self.log {
            crate::lock(log).push(op);
        }
    }
}

impl StorageBackend for CrashBackend {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(crate::lock(&self.bytes).len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let bytes = crate::lock(&self.bytes);
        let end = offset as usize + out.len();
        let src = bytes.get(offset as usize..end).ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        crate::lock(&self.bytes).resize(len as usize, 0);
        self.record(Op::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.record(Op::Sync);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut bytes = crate::lock(&self.bytes);
        apply_write(&mut bytes, offset, data);
        self.record(Op::Write { offset, data: data.to_vec() });
        Ok(())
    }

    fn try_lock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<bool, BackendError> {
        Ok(true)
    }

    fn try_lock_shared_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<bool, BackendError> {
        Ok(true)
    }

    fn lock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<(), BackendError> {
        Ok(())
    }

    fn lock_shared_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<(), BackendError> {
        Ok(())
    }

    fn unlock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<(), BackendError> {
        Ok(())
    }

    fn query_lock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<bool, BackendError> {
        Ok(false)
    }
}

fn apply_write(bytes: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if bytes.len() < end {
        bytes.resize(end, 0);
    }
    bytes[offset as usize..end].copy_from_slice(data);
}

/// What survives of the operations after the last sync before the cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// None of them: only what was synced.
    DropUnsynced,
    /// Each write (and length change) independently kept or lost, chosen by the seed.
    KeepSome(u64),
    /// As `KeepSome`, and one kept write torn: only its first sectors (512 bytes each) reached the disk.
    TearPage(u64),
}

/// The bytes a disk could hold had the power been cut after the first `cut` operations of `ops`.
pub fn image_at(ops: &[Op], cut: usize, how: Cut) -> Vec<u8> {
    let ops = &ops[..cut.min(ops.len())];
    let synced = ops.iter().rposition(|o| matches!(o, Op::Sync)).map_or(0, |i| i + 1);
    let mut bytes = Vec::new();
    for op in &ops[..synced] {
        apply(&mut bytes, op);
    }
    let (seed, tear) = match how {
        Cut::DropUnsynced => return bytes,
        Cut::KeepSome(seed) => (seed, false),
        Cut::TearPage(seed) => (seed, true),
    };
    let mut rng = SplitMix(seed);
    let pending = &ops[synced..];
    let torn = if tear && !pending.is_empty() { Some(rng.next() as usize % pending.len()) } else { None };
    for (i, op) in pending.iter().enumerate() {
        if Some(i) == torn {
            if let Op::Write { offset, data } = op {
                let sectors = data.len().div_ceil(512).max(1);
                let keep = (rng.next() as usize % sectors) * 512;
                apply_write(&mut bytes, *offset, &data[..keep.min(data.len())]);
            }
        } else if rng.next().is_multiple_of(2) {
            apply(&mut bytes, op);
        }
    }
    bytes
}

fn apply(bytes: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write { offset, data } => apply_write(bytes, *offset, data),
        Op::SetLen(len) => bytes.resize(*len as usize, 0),
        Op::Sync => {}
    }
}

/// SplitMix64: a seed-replayable choice of what survives a cut, without a dependency for eight lines.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::format::{Format, Options, open_on};
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");
    const F: Format = Format { kind: "t", version: 1, derived: false, migrations: &[] };

    /// Every committed transaction survives every cut after its commit; nothing of a later one shows half.
    #[test]
    fn every_cut_recovers_the_last_commit() {
        let log = OpLog::default();
        let path = std::path::Path::new("mem.redb");
        let db = open_on(path, Box::new(CrashBackend::recording(log.clone())), &F, &Options::default()).unwrap().db;
        // Transaction n writes rows 0..=n with value n: a reader sees one n for all rows, or a torn commit.
        let mut committed_at = Vec::new();
        for n in 1..=20u64 {
            let w = db.begin_write().unwrap();
            {
                let mut t = w.open_table(T).unwrap();
                for k in 0..=n * 10 {
                    t.insert(k, n).unwrap();
                }
            }
            w.commit().unwrap();
            committed_at.push((n, crate::lock(&log).len()));
        }
        drop(db);
        let ops = crate::lock(&log).clone();
        for cut in (0..=ops.len()).step_by((ops.len() / 150).max(1)) {
            for how in [Cut::DropUnsynced, Cut::KeepSome(cut as u64), Cut::TearPage(cut as u64)] {
                let image = image_at(&ops, cut, how);
                let want = committed_at.iter().filter(|(_, at)| *at <= cut).map(|(n, _)| *n).max();
                let opened = open_on(path, Box::new(CrashBackend::from_image(image)), &F, &Options::default());
                let Ok(o) = opened else {
                    assert!(want.is_none(), "cut {cut} {how:?}: nothing committed may be lost: {opened:?}");
                    continue;
                };
                let r = o.db.begin_read().unwrap();
                let got = match r.open_table(T) {
                    Ok(t) => {
                        let vals: Vec<(u64, u64)> =
                            t.iter().unwrap().map(|e| e.map(|(k, v)| (k.value(), v.value())).unwrap()).collect();
                        let n = vals.first().map(|(_, v)| *v);
                        assert!(vals.iter().all(|(_, v)| Some(*v) == n), "cut {cut} {how:?}: half a transaction");
                        assert_eq!(vals.len() as u64, n.map_or(0, |n| n * 10 + 1), "cut {cut} {how:?}");
                        n
                    }
                    Err(_) => None,
                };
                assert!(got >= want, "cut {cut} {how:?}: commit {want:?} lost (found {got:?})");
            }
        }
    }
}
