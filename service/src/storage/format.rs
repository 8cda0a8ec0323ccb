//! Versioned redb files: every database oms opens goes through [`open`], which
//!
//! - stamps a new file with its kind and format version (the `oms_format` table: one row, kind → version);
//! - refuses a file of another kind, a file whose format is newer than this build knows
//!   ([`OpenError::TooNew`], naming both versions), and a file redb finds corrupt ([`OpenError::Corrupt`]);
//! - migrates an older file in one write transaction, after copying it to `<file>.v<old>.<ms>.bak` beside it
//!   (files from before versioning count as format 0);
//! - registers the file, so that [`snapshot`] can copy every database of the process at once, whatever
//!   tables other code adds to it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redb::backends::FileBackend;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::backend::{FaultSwitch, OmsBackend, Shared};

/// The table that names a file's kind and format version.
pub const FORMAT_TABLE: TableDefinition<&str, u64> = TableDefinition::new("oms_format");

/// What a snapshot may keep of blocks overwritten while it is copied, per file; beyond it the backup fails
/// (the writer is never held up for a backup).
pub const SNAPSHOT_OVERLAY_BYTES_MAX: usize = 256 << 20;

/// One step of a file's format: what it takes an older file through, in the migration's transaction.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The version this step produces.
    pub to: u64,
    /// What it changes, for the log.
    pub what: &'static str,
    /// Applies the step.
    pub apply: fn(&redb::WriteTransaction) -> Result<(), redb::Error>,
}

/// A kind of file and the format this build writes.
#[derive(Debug, Clone, Copy)]
pub struct Format {
    /// The kind of file (`node`, `docdb`, `intake`): a file of another kind is refused.
    pub kind: &'static str,
    /// The format version this build reads and writes.
    pub version: u64,
    /// The file is derived from another one of the process (documents rebuilt from a system of record,
    /// caught up by sync): a [`snapshot`] copies it before the files it is derived from, so it is never
    /// ahead of them.
    pub derived: bool,
    /// The steps from older versions, ascending by `to`; a file is taken through every step above its version.
    pub migrations: &'static [Migration],
}

/// Why a database did not open. Each names the file; the process refuses to start with it.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file was written by a newer build.
    #[error(
        "{path}: its format is {kind} version {found}, newer than this build supports ({supported}); refusing to \
         open it. Run the build that wrote it, or restore a backup taken with this one"
    )]
    TooNew {
        /// The file.
        path: PathBuf,
        /// Its kind.
        kind: &'static str,
        /// The version it carries.
        found: u64,
        /// The newest version this build knows.
        supported: u64,
    },
    /// The file is another kind of oms database.
    #[error("{path}: this is a {found} database, not a {expected} one")]
    WrongKind {
        /// The file.
        path: PathBuf,
        /// The kind asked for.
        expected: &'static str,
        /// The kind it says it is.
        found: String,
    },
    /// redb found the file damaged (a checksum, a header or a page that does not add up).
    #[error("{path} is damaged ({source}); refusing to open it: restore it from a backup (oms restore)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What redb said.
        #[source]
        source: redb::Error,
    },
    /// Another process holds the file open.
    #[error("{path} is open in another process (is the node or hub already running on this data directory?)")]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The copy made before a migration failed; nothing was migrated.
    #[error("{path}: cannot keep a copy before migrating it from format {from}: {source}")]
    Backup {
        /// The file.
        path: PathBuf,
        /// Its version.
        from: u64,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// redb or the file system failed otherwise.
    #[error("{path}: {source}")]
    Storage {
        /// The file.
        path: PathBuf,
        /// What redb said.
        #[source]
        source: redb::Error,
    },
}

impl OpenError {
    fn storage(path: &Path, e: impl Into<redb::Error>) -> OpenError {
        let e: redb::Error = e.into();
        match e {
            redb::Error::DatabaseAlreadyOpen => OpenError::Locked { path: path.into() },
            redb::Error::Corrupted(_) => OpenError::Corrupt { path: path.into(), source: e },
            redb::Error::Io(ref io) if io.kind() == std::io::ErrorKind::InvalidData => {
                OpenError::Corrupt { path: path.into(), source: e }
            }
            e => OpenError::Storage { path: path.into(), source: e },
        }
    }
}

/// How to open a file besides its format.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// redb's page cache, bytes (redb's default when `None`).
    pub cache_bytes: Option<usize>,
    /// Faults a test injects into the file's storage.
    pub faults: Option<Arc<FaultSwitch>>,
}

/// An open database and what opening it did.
#[derive(Debug)]
pub struct Opened {
    /// The database.
    pub db: Arc<Database>,
    /// The version the file had before this open migrated it, and where its copy from before is.
    pub migrated_from: Option<(u64, PathBuf)>,
}

struct Registered {
    path: PathBuf,
    format: Format,
    db: Weak<Database>,
    shared: Arc<Shared>,
}

/// Every database opened through [`open`] in this process, while it is open.
static REGISTRY: Mutex<Vec<Registered>> = Mutex::new(Vec::new());

/// Opens (or creates) the database at `path` as a file of `format` (see the module docs).
pub fn open(path: &Path, format: &Format, options: &Options) -> Result<Opened, OpenError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| OpenError::Storage { path: path.into(), source: e.into() })?;
    let backend = FileBackend::new(file).map_err(|e| OpenError::storage(path, e))?;
    open_on(path, Box::new(backend), format, options)
}

/// [`open`] on another storage than the file at `path` (which then only names it, and where a migration
/// keeps its copy): the power-loss tests run stores on a [`super::crash::CrashBackend`].
pub fn open_on(
    path: &Path,
    backend: Box<dyn redb::StorageBackend>,
    format: &Format,
    options: &Options,
) -> Result<Opened, OpenError> {
    let shared = Shared::new(backend, options.faults.clone().unwrap_or_default());
    let mut builder = Database::builder();
    if let Some(bytes) = options.cache_bytes {
        builder.set_cache_size(bytes);
    }
    let db = builder.create_with_backend(OmsBackend(shared.clone())).map_err(|e| OpenError::storage(path, e))?;
    let found = stored_version(&db, path, format.kind)?;
    if let Some(found) = found
        && found > format.version
    {
        return Err(OpenError::TooNew { path: path.into(), kind: format.kind, found, supported: format.version });
    }
    let mut migrated_from = None;
    if found != Some(format.version) {
        if let Some(from) = found {
            let copy = keep_copy(&db, &shared, path, from).map_err(|source| OpenError::Backup {
                path: path.into(),
                from,
                source,
            })?;
            tracing::warn!(file = %path.display(), from, to = format.version, copy = %copy.display(),
                "migrating to the current storage format; the file as it was is kept");
            migrated_from = Some((from, copy));
        }
        let w = db.begin_write().map_err(|e| OpenError::storage(path, e))?;
        for m in format.migrations.iter().filter(|m| found.is_some_and(|f| m.to > f) && m.to <= format.version) {
            (m.apply)(&w).map_err(|e| OpenError::storage(path, e))?;
        }
        w.open_table(FORMAT_TABLE)
            .and_then(|mut t| t.insert(format.kind, format.version).map(|_| ()).map_err(Into::into))
            .map_err(|e| OpenError::storage(path, e))?;
        w.commit().map_err(|e| OpenError::storage(path, e))?;
    }
    let db = Arc::new(db);
    let mut registry = crate::lock(&REGISTRY);
    registry.retain(|r| r.db.strong_count() > 0);
    registry.push(Registered { path: path.into(), format: *format, db: Arc::downgrade(&db), shared });
    Ok(Opened { db, migrated_from })
}

/// The version a file carries: `None` for a new, empty file; 0 for a file from before versioning.
fn stored_version(db: &Database, path: &Path, kind: &'static str) -> Result<Option<u64>, OpenError> {
    let r = db.begin_read().map_err(|e| OpenError::storage(path, e))?;
    match r.open_table(FORMAT_TABLE) {
        Ok(t) => {
            let mut version = None;
            for row in t.iter().map_err(|e| OpenError::storage(path, e))? {
                let (k, v) = row.map_err(|e| OpenError::storage(path, e))?;
                if k.value() != kind {
                    return Err(OpenError::WrongKind { path: path.into(), expected: kind, found: k.value().into() });
                }
                version = Some(v.value());
            }
            Ok(Some(version.unwrap_or(0)))
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {
            let empty = r.list_tables().map_err(|e| OpenError::storage(path, e))?.next().is_none()
                && r.list_multimap_tables().map_err(|e| OpenError::storage(path, e))?.next().is_none();
            Ok(if empty { None } else { Some(0) })
        }
        Err(e) => Err(OpenError::storage(path, e)),
    }
}

/// Copies the file as it is (no write transaction is open: it was just opened) to
/// `<file>.v<from>.<ms>.bak`, durably, and returns the copy's path.
fn keep_copy(db: &Database, shared: &Arc<Shared>, path: &Path, from: u64) -> std::io::Result<PathBuf> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let copy = path.with_file_name(format!("{name}.v{from}.{}.bak", crate::now_ms()));
    let snap = FileSnapshot::begin(db, shared, path, "", from)?;
    let mut out = std::fs::File::create(&copy)?;
    snap.copy_to(&mut out)?;
    out.sync_all()?;
    if let Some(dir) = copy.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(copy)
}

/// One database file as it was at one commit, readable while the process goes on writing it. Ends when
/// dropped.
pub struct FileSnapshot {
    /// The file's name (`node.redb`).
    pub name: String,
    /// Its kind.
    pub kind: &'static str,
    /// Its format version.
    pub version: u64,
    /// Its length, bytes.
    pub len: u64,
    /// How long the file's writer waited for the snapshot to begin (the commit in progress, if any, is not
    /// counted: it ran as usual).
    pub pause: Duration,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FileSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSnapshot").field("name", &self.name).field("len", &self.len).finish()
    }
}

impl FileSnapshot {
    fn begin(
        db: &Database,
        shared: &Arc<Shared>,
        path: &Path,
        kind: &'static str,
        version: u64,
    ) -> std::io::Result<Self> {
        // Holding a write transaction: no commit is in progress, and none starts until it ends.
        let w = db.begin_write().map_err(std::io::Error::other)?;
        let t = Instant::now();
        let len = shared.begin_snapshot(SNAPSHOT_OVERLAY_BYTES_MAX);
        // Nothing was written in it: abort, so redb does not warn of a dropped transaction.
        let _ = w.abort();
        let pause = t.elapsed();
        let Some(len) = len? else {
            return Err(std::io::Error::other(format!("{}: a snapshot is already being taken", path.display())));
        };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(FileSnapshot { name, kind, version, len, pause, shared: shared.clone() })
    }

    /// Reads `out.len()` bytes at `offset` (within [`FileSnapshot::len`]).
    pub fn read_at(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.shared.read_snapshot(offset, out)
    }

    /// Writes the whole snapshot to `out`.
    pub fn copy_to(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < self.len {
            let n = (self.len - at).min(buf.len() as u64) as usize;
            self.read_at(at, &mut buf[..n])?;
            out.write_all(&buf[..n])?;
            at += n as u64;
        }
        Ok(())
    }
}

impl Drop for FileSnapshot {
    fn drop(&mut self) {
        self.shared.end_snapshot();
    }
}

/// Snapshots of every database this process has open under `dir`, derived files first (see
/// [`Format::derived`]), each taken while no write transaction of its own is open: the writer of each waits
/// for at most its snapshot to begin, never for the copy. A derived file is therefore never ahead of the
/// files it is derived from.
pub fn snapshot(dir: &Path) -> std::io::Result<Vec<FileSnapshot>> {
    let mut files: Vec<(PathBuf, Format, Arc<Database>, Arc<Shared>)> = crate::lock(&REGISTRY)
        .iter()
        .filter(|r| r.path.starts_with(dir))
        .filter_map(|r| Some((r.path.clone(), r.format, r.db.upgrade()?, r.shared.clone())))
        .collect();
    files.sort_by(|a, b| (!a.1.derived, &a.0).cmp(&(!b.1.derived, &b.0)));
    files
        .iter()
        .map(|(path, format, db, shared)| FileSnapshot::begin(db, shared, path, format.kind, format.version))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");
    const V1: Format = Format { kind: "test", version: 1, derived: false, migrations: &[] };
    fn double(w: &redb::WriteTransaction) -> Result<(), redb::Error> {
        let mut t = w.open_table(T)?;
        let rows: Vec<(u64, u64)> =
            t.iter()?.map(|r| r.map(|(k, v)| (k.value(), v.value()))).collect::<Result<_, _>>()?;
        for (k, v) in rows {
            t.insert(k, v * 2)?;
        }
        Ok(())
    }
    const V2: Format = Format {
        kind: "test",
        version: 2,
        derived: false,
        migrations: &[Migration { to: 2, what: "double", apply: double }],
    };

    fn put(db: &Database, rows: &[(u64, u64)]) {
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(T).unwrap();
            for (k, v) in rows {
                t.insert(k, v).unwrap();
            }
        }
        w.commit().unwrap();
    }

    fn get(db: &Database, k: u64) -> Option<u64> {
        db.begin_read().unwrap().open_table(T).unwrap().get(k).unwrap().map(|v| v.value())
    }

    #[test]
    fn new_files_are_stamped_older_ones_migrated_after_a_copy_newer_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.redb");
        let o = open(&path, &V1, &Options::default()).unwrap();
        assert!(o.migrated_from.is_none());
        put(&o.db, &[(1, 10), (2, 20)]);
        drop(o);
        // Reopening at the same version changes nothing.
        let o = open(&path, &V1, &Options::default()).unwrap();
        assert!(o.migrated_from.is_none());
        drop(o);
        // A newer build migrates, keeping a copy of the old file that still reads as before.
        let o = open(&path, &V2, &Options::default()).unwrap();
        let (from, copy) = o.migrated_from.clone().unwrap();
        assert_eq!(from, 1);
        assert_eq!((get(&o.db, 1), get(&o.db, 2)), (Some(20), Some(40)));
        drop(o);
        let old = open(&copy, &V1, &Options::default()).unwrap();
        assert_eq!(get(&old.db, 2), Some(20), "the copy is the file before the migration");
        drop(old);
        // The older build refuses the migrated file, naming both versions.
        let e = open(&path, &V1, &Options::default()).unwrap_err();
        assert!(matches!(e, OpenError::TooNew { found: 2, supported: 1, .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("version 2") && msg.contains("supports (1)"), "{msg}");
        // Another kind is refused too.
        let other = Format { kind: "other", ..V2 };
        assert!(matches!(open(&path, &other, &Options::default()), Err(OpenError::WrongKind { .. })));
    }

    #[test]
    fn files_from_before_versioning_are_format_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.redb");
        put(&Database::create(&path).unwrap(), &[(1, 5)]);
        let o = open(&path, &V2, &Options::default()).unwrap();
        assert_eq!(o.migrated_from.as_ref().map(|m| m.0), Some(0));
        assert_eq!(get(&o.db, 1), Some(10), "every step above 0 ran");
    }

    #[test]
    fn a_damaged_file_is_a_typed_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.redb");
        put(&open(&path, &V1, &Options::default()).unwrap().db, &[(1, 1)]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[..64].fill(0xA5);
        std::fs::write(&path, &bytes).unwrap();
        let e = open(&path, &V1, &Options::default()).unwrap_err();
        assert!(matches!(e, OpenError::Corrupt { .. }), "{e:?}");
        assert!(e.to_string().contains("oms restore"), "{e}");
    }

    #[test]
    fn a_snapshot_is_the_file_at_one_commit_while_writes_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.redb");
        let o = open(&path, &V1, &Options::default()).unwrap();
        put(&o.db, &(0..2_000).map(|k| (k, k)).collect::<Vec<_>>());
        let snaps = snapshot(dir.path()).unwrap();
        assert_eq!(snaps.len(), 1);
        assert!(snapshot(dir.path()).is_err(), "one snapshot at a time");
        // Writes after the snapshot: new rows, changed rows, deleted rows.
        for round in 0..20u64 {
            put(&o.db, &(0..2_000).map(|k| (k, k + round + 1)).collect::<Vec<_>>());
        }
        let copy = dir.path().join("copy").join("x.redb");
        std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
        snaps[0].copy_to(&mut std::fs::File::create(&copy).unwrap()).unwrap();
        drop(snaps);
        let c = open(&copy, &V1, &Options::default()).unwrap();
        for k in [0, 999, 1_999] {
            assert_eq!(get(&c.db, k), Some(k), "the copy holds the rows as of the snapshot");
        }
        assert_eq!(get(&o.db, 5), Some(25), "the live file went on");
    }

    #[test]
    fn a_full_disk_is_a_typed_error_and_nothing_is_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.redb");
        let faults = Arc::new(FaultSwitch::default());
        let o = open(&path, &V1, &Options { faults: Some(faults.clone()), ..Options::default() }).unwrap();
        put(&o.db, &[(1, 1)]);
        faults.set_disk_full(true);
        let write = || -> Result<(), redb::Error> {
            let w = o.db.begin_write()?;
            {
                let mut t = w.open_table(T)?;
                for k in 0..10_000u64 {
                    t.insert(k, k)?;
                }
            }
            Ok(w.commit()?)
        };
        let e = write().unwrap_err();
        assert!(matches!(&e, redb::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull), "{e:?}");
        drop(o);
        faults.set_disk_full(false);
        let o = open(&path, &V1, &Options::default()).unwrap();
        assert_eq!((get(&o.db, 1), get(&o.db, 5_000)), (Some(1), None), "the failed commit left nothing");
    }
}
