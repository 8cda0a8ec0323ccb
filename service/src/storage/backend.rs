//! The file under every redb database of oms: redb's own `FileBackend` (or, in tests, any backend), wrapped
//! so that
//!
//! - a running process can copy a database as it was at one commit without stopping its writer for more
//!   than that commit (a copy-on-write snapshot: while a snapshot is open, the old contents of every block
//!   redb overwrites are kept first, and the copy reads them instead of the new ones), and
//! - a test can make every write fail as on a full disk ([`FaultSwitch`]).
//!
//! redb offers no online backup, and its tables cannot be read without their key and value types, so a
//! logical copy would need code for every table of every file; a copy of the file's bytes as of one commit
//! needs none, covers every table anyone adds, and is a file redb opens like one after a crash right after
//! that commit (it recovers its allocator state on open).

use std::collections::HashMap;
use std::io;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use redb::{BackendError, StorageBackend};

/// Granularity of what a snapshot keeps: redb's page size.
const BLOCK: u64 = 4096;

/// Shared between the [`redb::Database`] (through [`OmsBackend`]) and whoever takes snapshots or injects
/// faults.
#[derive(Debug)]
pub(crate) struct Shared {
    file: Box<dyn StorageBackend>,
    /// The open snapshot, if any. Every write and every snapshot read takes this lock, so a snapshot read
    /// never sees half a write.
    cow: Mutex<Option<Cow>>,
    faults: Arc<FaultSwitch>,
}

/// Old contents of the blocks overwritten since a snapshot began.
#[derive(Debug)]
struct Cow {
    /// The file's length when the snapshot began: the snapshot's length.
    len: u64,
    saved: HashMap<u64, Box<[u8]>>,
    bytes: usize,
    bytes_max: usize,
    /// More than `bytes_max` was overwritten: the snapshot is lost (the writer is never held up for it).
    overflowed: bool,
}

impl Cow {
    /// Keeps the old contents of every block of `[start, end)` not kept yet.
    fn preserve(&mut self, file: &dyn StorageBackend, start: u64, end: u64) -> io::Result<()> {
        if self.overflowed {
            return Ok(());
        }
        let end = end.min(self.len);
        let mut block = start / BLOCK;
        while block * BLOCK < end {
            if !self.saved.contains_key(&block) {
                let at = block * BLOCK;
                let mut old = vec![0u8; (self.len - at).min(BLOCK) as usize];
                file.read(at, &mut old)?;
                self.bytes += old.len();
                if self.bytes > self.bytes_max {
                    self.overflowed = true;
                    self.saved = HashMap::new();
                    return Ok(());
                }
                self.saved.insert(block, old.into_boxed_slice());
            }
            block += 1;
        }
        Ok(())
    }
}

/// Switches a test flips to make a database's storage fail.
#[derive(Debug, Default)]
pub struct FaultSwitch {
    disk_full: AtomicBool,
}

impl FaultSwitch {
    /// While `full`, every write and every growth of the file fails with `ENOSPC`
    /// ([`io::ErrorKind::StorageFull`]), as on a full disk.
    pub fn set_disk_full(&self, full: bool) {
        self.disk_full.store(full, Ordering::SeqCst);
    }

    fn check(&self) -> io::Result<()> {
        if self.disk_full.load(Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "no space left on device (injected)"));
        }
        Ok(())
    }
}

impl Shared {
    pub(crate) fn new(file: Box<dyn StorageBackend>, faults: Arc<FaultSwitch>) -> Arc<Shared> {
        Arc::new(Shared { file, cow: Mutex::new(None), faults })
    }

    /// Starts a snapshot of the file as it is now; `false` if one is open already. The caller makes sure no
    /// write transaction is open (it holds one itself).
    pub(crate) fn begin_snapshot(&self, bytes_max: usize) -> io::Result<Option<u64>> {
        let mut cow = crate::lock(&self.cow);
        if cow.is_some() {
            return Ok(None);
        }
        let len = self.file.len()?;
        *cow = Some(Cow { len, saved: HashMap::new(), bytes: 0, bytes_max, overflowed: false });
        Ok(Some(len))
    }

    pub(crate) fn end_snapshot(&self) {
        *crate::lock(&self.cow) = None;
    }

    /// Reads `out.len()` bytes of the snapshot at `offset` (within its length).
    pub(crate) fn read_snapshot(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let cow = crate::lock(&self.cow);
        let Some(cow) = cow.as_ref() else {
            return Err(io::Error::other("no snapshot is open"));
        };
        if cow.overflowed {
            return Err(io::Error::other(format!(
                "the snapshot was given up: more than {} bytes were overwritten while it was read",
                cow.bytes_max
            )));
        }
        let end = offset + out.len() as u64;
        if end > cow.len {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the snapshot"));
        }
        self.file.read(offset, out)?;
        let mut block = offset / BLOCK;
        while block * BLOCK < end {
            if let Some(old) = cow.saved.get(&block) {
                let at = block * BLOCK;
                let (from, to) = (offset.max(at), end.min(at + old.len() as u64));
                if from < to {
                    out[(from - offset) as usize..(to - offset) as usize]
                        .copy_from_slice(&old[(from - at) as usize..(to - at) as usize]);
                }
            }
            block += 1;
        }
        Ok(())
    }
}

/// The [`StorageBackend`] every oms database is opened with (see the module docs).
#[derive(Debug)]
pub(crate) struct OmsBackend(pub(crate) Arc<Shared>);

impl StorageBackend for OmsBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.0.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.0.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut cow = crate::lock(&self.0.cow);
        if len > self.0.file.len()? {
            self.0.faults.check()?;
        }
        if let Some(c) = cow.as_mut() {
            c.preserve(self.0.file.as_ref(), len, c.len)?;
        }
        self.0.file.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.0.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.0.faults.check()?;
        let mut cow = crate::lock(&self.0.cow);
        if let Some(c) = cow.as_mut() {
            c.preserve(self.0.file.as_ref(), offset, offset + data.len() as u64)?;
        }
        self.0.file.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.0.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.file.query_lock_range(start, end)
    }
}
