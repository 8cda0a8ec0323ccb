//! Durable files ([`write_durable`]), the private directory ([`private_dir`]) and the paths of the files in a
//! PKI directory; the layout is in the docs of [`pki`](super).
use super::{Identity, PkiError};
use std::io::Write;
use std::path::{Path, PathBuf};

pub(super) fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io { path: path.to_owned(), source })
}

/// Who may read a file the PKI writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileMode {
    /// Certificates, the CRL, `revoked.txt`: `0644`.
    Public,
    /// Private keys: `0600`, from the moment the file is created.
    Secret,
}

impl FileMode {
    /// The Unix permission bits.
    pub fn bits(self) -> u32 {
        match self {
            FileMode::Public => 0o644,
            FileMode::Secret => 0o600,
        }
    }
}

/// Writes `contents` to `path` durably: a temporary file in the same directory (created with `mode`), written
/// and fsynced, renamed over `path`, then the directory fsynced. Readers see the old or the new file, never
/// half of one, and after a crash the file is the old one or the new one. A temporary file a crash leaves
/// behind is named `.<name>.<random>.tmp` and may be deleted.
pub fn write_durable(path: &Path, contents: &[u8], mode: FileMode) -> Result<(), PkiError> {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
        move |source| PkiError::Io { path: path.to_owned(), source }
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode.bits());
    }
    #[cfg(not(unix))]
    let _ = mode;
    let written = opts.open(&tmp).and_then(|mut f| {
        f.write_all(contents)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(&tmp)(e));
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(path)(e));
    }
    sync_dir(dir).map_err(io(dir))
}

/// Makes a rename in `dir` durable.
#[cfg(unix)]
pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Windows cannot open a directory as a file; its renames are made durable by NTFS's journal.
#[cfg(not(unix))]
pub(super) fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Permission bits of a directory that holds private keys (the PKI directory, its `archive/`).
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `dir` (and its parents) if needed and sets it to [`PRIVATE_DIR_MODE`] on Unix, whatever it was:
/// an existing directory that others could read is tightened. Parents keep their modes.
pub fn private_dir(dir: &Path) -> Result<(), PkiError> {
    let io = |source| PkiError::Io { path: dir.to_owned(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE)).map_err(io)?;
    }
    Ok(())
}

/// Paths of the CA files in `dir`.
pub fn ca_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.pem"), dir.join("ca.key"))
}

/// Path of the CRL in `dir`.
pub fn crl_path(dir: &Path) -> PathBuf {
    dir.join("crl.pem")
}

/// Paths of the HTTP server certificate `name` and its key in `dir`: `http-<name>.pem`, `http-<name>.key`.
pub fn http_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("http-{name}.pem")), dir.join(format!("http-{name}.key")))
}

/// Paths of `identity`'s certificate and key in `dir`: `<stem>.pem`, `<stem>.key`.
pub fn identity_paths(dir: &Path, identity: &Identity) -> (PathBuf, PathBuf) {
    let stem = identity.file_stem();
    (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")))
}
