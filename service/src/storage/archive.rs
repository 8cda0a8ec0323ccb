//! The backup file: every database file of a node or the hub as of one snapshot each, and its key file
//! (`keys.json`: API keys and screen users, as hashes), with a checksum per file, written in one pass to a
//! stream (the admin socket) and checked in one pass on restore.
//!
//! ```text
//! OMSBACKUP 1\n
//! {"name":"sync.redb","kind":"docdb","version":1,"len":N}\n   N bytes of the file
//! …                                                          (one header and body per file)
//! {"end":true,"files":[{"name","kind","version","len","sha256"}…],"created_at_ms":…,"pause_ms_max":…}\n
//! ```
//!
//! Written by hand rather than as a tar: the trailer carries what a restore checks (a SHA-256 per file,
//! kinds, versions) and is known only after the files have streamed, and the format takes a dozen lines.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::format::FileSnapshot;

/// The API key file's name in a data directory (`auth::keys` reads and writes it): named here, which
/// builds without the `http` feature, so that a backup carries it whoever builds this crate.
pub const KEYS_FILE: &str = "keys.json";

/// Creates `path` readable by its owner only (a backup's key file holds token and password hashes; the
/// databases hold customers' addresses).
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)
}

const MAGIC: &str = "OMSBACKUP 1";
/// Files in one backup.
pub const BACKUP_FILES_MAX: usize = 32;
/// Bytes of one header or trailer line.
const LINE_BYTES_MAX: usize = 64 * 1024;

/// One file of a backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupFile {
    /// Its name in the data directory (`node.redb`).
    pub name: String,
    /// Its kind (`node`, `docdb`, `intake`).
    pub kind: String,
    /// Its format version.
    pub version: u64,
    /// Its length, bytes.
    pub len: u64,
    /// SHA-256 of its bytes, hex (in the trailer only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
}

/// What a backup holds, from its trailer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Always true: marks the trailer.
    pub end: bool,
    /// The files, in the order they were snapshotted (derived files first).
    pub files: Vec<BackupFile>,
    /// When the backup was taken.
    pub created_at_ms: u64,
    /// The longest any writer waited for a snapshot to begin, ms.
    pub pause_ms_max: f64,
}

/// Why a backup cannot be read or used.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The stream is not a complete backup or does not match its checksums.
    #[error("not a valid backup: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ArchiveError {
    ArchiveError::Invalid(msg.into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A small file backed up whole, as read when the backup began (the key file).
#[derive(Debug, Clone)]
pub struct PlainFile {
    /// Its name in the data directory (see [`plain_name`]).
    pub name: String,
    /// Its kind (`keys`).
    pub kind: &'static str,
    /// Its format version.
    pub version: u64,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Writes a backup of `snaps` and then `plain` to `out`; returns its manifest.
pub fn write(snaps: &[FileSnapshot], plain: &[PlainFile], out: &mut impl Write) -> Result<Manifest, ArchiveError> {
    writeln!(out, "{MAGIC}")?;
    let mut files = Vec::with_capacity(snaps.len() + plain.len());
    let mut put = |f: BackupFile, body: &dyn Fn(&mut dyn Write) -> std::io::Result<()>| -> Result<(), ArchiveError> {
        serde_json::to_writer(&mut *out, &f).map_err(std::io::Error::other)?;
        writeln!(out)?;
        let mut hashing = HashingWriter { inner: &mut *out, hash: Sha256::new() };
        body(&mut hashing)?;
        files.push(BackupFile { sha256: hex(&hashing.hash.finalize()), ..f });
        Ok(())
    };
    for s in snaps {
        let f = BackupFile {
            name: s.name.clone(),
            kind: s.kind.into(),
            version: s.version,
            len: s.len,
            sha256: String::new(),
        };
        put(f, &|w| s.copy_to(&mut WriteRef(w)))?;
    }
    for p in plain {
        let f = BackupFile {
            name: p.name.clone(),
            kind: p.kind.into(),
            version: p.version,
            len: p.bytes.len() as u64,
            sha256: String::new(),
        };
        put(f, &|w| w.write_all(&p.bytes))?;
    }
    let pause_ms_max = snaps.iter().map(|s| s.pause.as_secs_f64() * 1e3).fold(0.0, f64::max);
    let manifest = Manifest { end: true, files, created_at_ms: crate::now_ms(), pause_ms_max };
    serde_json::to_writer(&mut *out, &manifest).map_err(std::io::Error::other)?;
    writeln!(out)?;
    out.flush()?;
    Ok(manifest)
}

/// A `&mut dyn Write` as a sized `Write`, for [`FileSnapshot::copy_to`].
struct WriteRef<'a>(&'a mut dyn Write);

impl Write for WriteRef<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

struct HashingWriter<'a, W: Write + ?Sized> {
    inner: &'a mut W,
    hash: Sha256,
}

impl<W: Write + ?Sized> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn read_line(input: &mut impl BufRead) -> Result<String, ArchiveError> {
    let mut line = Vec::new();
    (&mut *input).take(LINE_BYTES_MAX as u64 + 1).read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(invalid("truncated (a header line is missing or too long)"));
    }
    line.pop();
    String::from_utf8(line).map_err(|_| invalid("a header line is not UTF-8"))
}

/// A file name a backup may carry: `[a-z0-9_-]+.redb` or the key file, nothing that could leave the data
/// directory.
fn plain_name(name: &str) -> bool {
    name == KEYS_FILE
        || name.strip_suffix(".redb").is_some_and(|stem| {
            !stem.is_empty()
                && stem.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        })
}

/// Reads a whole backup from `input` and checks every file against its length and SHA-256, writing nothing.
pub fn verify(input: &mut impl BufRead) -> Result<Manifest, ArchiveError> {
    read(input, None).map(|(m, _)| m)
}

/// Reads a backup from `input` into `dir` (which must hold none of its files), checking every file against
/// its length and SHA-256 before it gets its name: a file that does not match is never left under a
/// database's name. Returns the manifest and the files written.
pub fn unpack(input: &mut impl BufRead, dir: &Path) -> Result<(Manifest, Vec<PathBuf>), ArchiveError> {
    read(input, Some(dir))
}

fn read(input: &mut impl BufRead, dir: Option<&Path>) -> Result<(Manifest, Vec<PathBuf>), ArchiveError> {
    if read_line(input)? != MAGIC {
        return Err(invalid("it does not start with the oms backup header"));
    }
    let mut seen: Vec<(BackupFile, Option<PathBuf>)> = Vec::new();
    let result = (|| loop {
        let line = read_line(input)?;
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| invalid(format!("header: {e}")))?;
        if v.get("end").and_then(|e| e.as_bool()) == Some(true) {
            let m: Manifest = serde_json::from_value(v).map_err(|e| invalid(format!("trailer: {e}")))?;
            let listed: Vec<BackupFile> = seen.iter().map(|(f, _)| f.clone()).collect();
            if m.files != listed {
                return Err(invalid("a file does not match its checksum, or the trailer lists other files"));
            }
            return Ok(m);
        }
        let mut f: BackupFile = serde_json::from_value(v).map_err(|e| invalid(format!("header: {e}")))?;
        if !plain_name(&f.name) || seen.iter().any(|(s, _)| s.name == f.name) || seen.len() >= BACKUP_FILES_MAX {
            return Err(invalid(format!("unexpected file {:?}", f.name)));
        }
        let partial = match dir {
            Some(dir) => {
                let dest = dir.join(&f.name);
                if dest.exists() {
                    return Err(invalid(format!("{} exists already; restore into an empty directory", dest.display())));
                }
                Some(dir.join(format!("{}.partial", f.name)))
            }
            None => None,
        };
        // Listed before it is written, so a failure removes it.
        seen.push((f.clone(), partial.clone()));
        let mut out: Box<dyn Write> = match &partial {
            Some(p) => Box::new(create_private(p)?),
            None => Box::new(std::io::sink()),
        };
        let mut hashing = HashingWriter { inner: &mut out, hash: Sha256::new() };
        let copied = std::io::copy(&mut (&mut *input).take(f.len), &mut hashing)?;
        f.sha256 = hex(&hashing.hash.finalize());
        out.flush()?;
        drop(out);
        if let Some(p) = &partial {
            std::fs::File::open(p)?.sync_all()?;
        }
        if let Some(last) = seen.last_mut() {
            last.0 = f.clone();
        }
        if copied != f.len {
            return Err(invalid(format!("{} is truncated ({copied} of {} bytes)", f.name, f.len)));
        }
    })();
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            for partial in seen.iter().filter_map(|(_, p)| p.as_ref()) {
                let _ = std::fs::remove_file(partial);
            }
            return Err(e);
        }
    };
    let mut written = Vec::new();
    if let Some(dir) = dir {
        for (f, partial) in seen {
            if let Some(partial) = partial {
                let dest = dir.join(&f.name);
                std::fs::rename(&partial, &dest)?;
                written.push(dest);
            }
        }
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok((manifest, written))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_leave_the_directory_are_refused() {
        for ok in ["node.redb", "sync.redb", "intake-2.redb", "keys.json"] {
            assert!(plain_name(ok), "{ok}");
        }
        for bad in [
            "../node.redb",
            "/etc/x.redb",
            ".redb",
            "a/b.redb",
            "node.redb.bak",
            "NODE.redb",
            "",
            "other.json",
            "../keys.json",
        ] {
            assert!(!plain_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_damaged_or_truncated_backup_leaves_nothing_behind() {
        use crate::storage::format::{Format, Options, open, snapshot};
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        const F: Format = Format { kind: "t", version: 1, derived: false, migrations: &[] };
        let _db = open(&data.join("a.redb"), &F, &Options::default()).unwrap();
        let mut backup = Vec::new();
        let m = write(&snapshot(&data).unwrap(), &[], &mut backup).unwrap();
        assert_eq!(m.files.len(), 1);
        // Intact: unpacks, with the same checksum.
        let good = dir.path().join("good");
        std::fs::create_dir_all(&good).unwrap();
        assert_eq!(verify(&mut &backup[..]).unwrap().files, m.files);
        let (m2, files) = unpack(&mut &backup[..], &good).unwrap();
        assert_eq!(m2.files, m.files);
        assert_eq!(files, vec![good.join("a.redb")]);
        // A flipped byte in the file's body: the trailer's checksum no longer matches.
        for damage in [Damage::Flip, Damage::Truncate] {
            let mut b = backup.clone();
            match damage {
                Damage::Flip => b[MAGIC.len() + 4096] ^= 1,
                Damage::Truncate => b.truncate(b.len() / 2),
            }
            let out = dir.path().join(format!("{damage:?}"));
            std::fs::create_dir_all(&out).unwrap();
            assert!(matches!(verify(&mut &b[..]), Err(ArchiveError::Invalid(_))), "{damage:?}");
            assert!(matches!(unpack(&mut &b[..], &out), Err(ArchiveError::Invalid(_))), "{damage:?}");
            assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "{damage:?}: nothing left behind");
        }
    }

    #[test]
    fn the_key_file_travels_with_the_databases_and_is_restored_private() {
        use crate::storage::format::{Format, Options, open, snapshot};
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        const F: Format = Format { kind: "t", version: 1, derived: false, migrations: &[] };
        let _db = open(&data.join("a.redb"), &F, &Options::default()).unwrap();
        let keys = PlainFile { name: KEYS_FILE.into(), kind: "keys", version: 1, bytes: b"{\"version\":1}".to_vec() };
        let mut backup = Vec::new();
        let m = write(&snapshot(&data).unwrap(), std::slice::from_ref(&keys), &mut backup).unwrap();
        let names: Vec<&str> = m.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a.redb", "keys.json"]);
        assert_eq!((m.files[1].kind.as_str(), m.files[1].len), ("keys", keys.bytes.len() as u64));
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        unpack(&mut &backup[..], &out).unwrap();
        assert_eq!(std::fs::read(out.join("keys.json")).unwrap(), keys.bytes);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(out.join("keys.json")).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "restored readable by its owner only");
        }
        // Its checksum is checked like a database's.
        let mut b = backup.clone();
        let body = b.windows(keys.bytes.len()).rposition(|w| w == keys.bytes.as_slice()).unwrap();
        b[body + 2] ^= 1;
        assert!(matches!(verify(&mut &b[..]), Err(ArchiveError::Invalid(_))));
    }

    #[derive(Debug, Clone, Copy)]
    enum Damage {
        Flip,
        Truncate,
    }
}
