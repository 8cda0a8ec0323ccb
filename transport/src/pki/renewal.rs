//! Renewal ([`renew`], [`renew_http`]) and the archive of the pairs it replaced ([`archive`]); why a fresh key
//! is the default is in the docs of [`pki`](super).
use super::files::{FileMode, http_paths, identity_paths, private_dir, read, sync_dir, write_durable};
use super::inspect::{CertInfo, cert_info_pem, server_cert_info_pem};
use super::issuing::{IssueOptions, Issued, Subject, issue_with_key};
use super::{Identity, PkiError, check_name};
use rcgen::KeyPair;
use std::path::{Path, PathBuf};
use time::Duration;

/// Which key a renewed certificate certifies (see the module docs for why [`KeyChoice::Fresh`] is the
/// default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyChoice {
    /// A new key pair, written over `<stem>.key`.
    #[default]
    Fresh,
    /// The key in `<stem>.key`, unchanged (rewritten `0600`).
    Reuse,
}

/// What [`renew`] replaced and wrote.
#[derive(Debug, Clone)]
pub struct Renewed {
    /// The certificate that was in `<stem>.pem` before; it stays valid until it expires unless revoked.
    pub old: CertInfo,
    /// Where the old certificate and key went.
    pub archived: Archived,
    /// The new certificate and key.
    pub issued: Issued,
    /// The new certificate.
    pub new: CertInfo,
}

/// Name of the directory, beside the certificates, that [`renew`] moves replaced pairs into.
pub const ARCHIVE_DIR: &str = "archive";
/// Replaced pairs kept in the archive per identity (or HTTP certificate name); renewing once more deletes
/// the oldest. Enough to go back a few renewals (a renewal shipped to the wrong node, a key that must be
/// looked at after an incident), bounded so that a renewal loop cannot fill the disk.
pub const ARCHIVE_KEEP: usize = 5;

/// A replaced certificate and key, as [`renew`] archived them: `DIR/archive/<stem>-<serial>.pem` and `.key`
/// (the key `0600`, the directory `0700`, both written durably).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    /// The old certificate.
    pub cert_path: PathBuf,
    /// The old key; `None` if there was no key file to archive.
    pub key_path: Option<PathBuf>,
    /// Archived pairs of other serials of the same stem deleted to keep [`ARCHIVE_KEEP`].
    pub pruned: Vec<PathBuf>,
}

/// Copies the pair in `cert_path` / `key_path` (certificate `old`) to `dir/archive/<stem>-<serial>.pem/.key`
/// before a renewal overwrites it, then deletes the oldest archived pairs of `stem` beyond [`ARCHIVE_KEEP`].
fn archive(dir: &Path, stem: &str, old: &CertInfo, cert_path: &Path, key_path: &Path) -> Result<Archived, PkiError> {
    let archive = dir.join(ARCHIVE_DIR);
    private_dir(&archive)?;
    let base = format!("{stem}-{}", old.serial_hex());
    let archived_cert = archive.join(format!("{base}.pem"));
    write_durable(&archived_cert, read(cert_path)?.as_bytes(), FileMode::Public)?;
    let archived_key = match std::fs::read(key_path) {
        Ok(key) => {
            let path = archive.join(format!("{base}.key"));
            write_durable(&path, &key, FileMode::Secret)?;
            Some(path)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(PkiError::Io { path: key_path.to_owned(), source }),
    };
    let pruned = prune_archive(&archive, stem, &archived_cert)?;
    Ok(Archived { cert_path: archived_cert, key_path: archived_key, pruned })
}

/// Deletes archived pairs of `stem` beyond the newest [`ARCHIVE_KEEP`] (by the time they were archived,
/// `keep` always counting as the newest). Returns the certificates deleted.
fn prune_archive(archive: &Path, stem: &str, keep: &Path) -> Result<Vec<PathBuf>, PkiError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PkiError::Io { path, source }
    };
    let prefix = format!("{stem}-");
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(archive).map_err(io(archive))? {
        let entry = entry.map_err(io(archive))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // `<stem>-<hex serial>.pem` exactly: a longer stem that starts with this one (`node-a` and
        // `node-a-b`) leaves a `-` in what must be the serial.
        let is_ours = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".pem"))
            .is_some_and(|serial| !serial.is_empty() && serial.bytes().all(|b| b.is_ascii_hexdigit()));
        if !is_ours {
            continue;
        }
        let path = entry.path();
        let newest = path == keep;
        let modified = entry.metadata().and_then(|m| m.modified()).ok();
        entries.push((newest, modified, name, path));
    }
    // Newest first: the one just archived, then by modification time (when it was archived), then by name.
    entries.sort_by(|a, b| (b.0, b.1, &b.2).cmp(&(a.0, a.1, &a.2)));
    let mut pruned = Vec::new();
    for (_, _, _, cert) in entries.into_iter().skip(ARCHIVE_KEEP) {
        for path in [cert.clone(), cert.with_extension("key")] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(PkiError::Io { path, source }),
            }
        }
        pruned.push(cert);
    }
    if !pruned.is_empty() {
        sync_dir(archive).map_err(io(archive))?;
    }
    Ok(pruned)
}

/// Renews `identity`'s certificate in `out_dir` (`<stem>.pem`, which must exist): same identity and DNS
/// names, a new serial, validity from now for `validity`, the key `key` says, signed by the CA in `ca_dir`.
/// The old certificate is not revoked; it and its key are archived first ([`Archived`], the last
/// [`ARCHIVE_KEEP`] per identity kept).
pub fn renew(
    ca_dir: &Path,
    out_dir: &Path,
    identity: &Identity,
    validity: Duration,
    key: KeyChoice,
) -> Result<Renewed, PkiError> {
    let (cert_path, _) = identity_paths(out_dir, identity);
    let old = cert_info_pem(&read(&cert_path)?)?;
    if old.identity.as_ref() != Some(identity) {
        let found = old.identity.as_ref().map_or_else(|| "none".to_owned(), Identity::uri);
        return Err(PkiError::WrongIdentity { path: cert_path, wanted: identity.uri(), found });
    }
    renew_subject(ca_dir, out_dir, Subject::Identity(identity), &old, validity, key)
}

/// Renews the HTTP server certificate `name` in `out_dir` (`http-<name>.pem`, which must exist): same DNS
/// names and IP addresses, a new serial, validity from now for `validity`, the key `key` says. Refuses a file
/// that carries an oms identity.
pub fn renew_http(
    ca_dir: &Path,
    out_dir: &Path,
    name: &str,
    validity: Duration,
    key: KeyChoice,
) -> Result<Renewed, PkiError> {
    check_name(name)?;
    let (cert_path, _) = http_paths(out_dir, name);
    let old = server_cert_info_pem(&read(&cert_path)?)?;
    if let Some(identity) = &old.identity {
        return Err(PkiError::NotHttp { path: cert_path, found: identity.uri() });
    }
    renew_subject(ca_dir, out_dir, Subject::Http(name), &old, validity, key)
}

fn renew_subject(
    ca_dir: &Path,
    out_dir: &Path,
    subject: Subject<'_>,
    old: &CertInfo,
    validity: Duration,
    key: KeyChoice,
) -> Result<Renewed, PkiError> {
    let (cert_path, key_path) = subject.paths(out_dir);
    let stem = cert_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let key = match key {
        KeyChoice::Fresh => KeyPair::generate()?,
        KeyChoice::Reuse => KeyPair::from_pem(&read(&key_path)?)?,
    };
    let opts = IssueOptions {
        dns_names: old.dns_names.clone(),
        ip_addresses: old.ip_addresses.clone(),
        ..IssueOptions::valid_for(validity)
    };
    // Archive before anything is overwritten: a renewal that fails half-way leaves the old pair in place
    // and a copy of it in the archive, never neither.
    let archived = archive(out_dir, &stem, old, &cert_path, &key_path)?;
    let issued = issue_with_key(ca_dir, out_dir, subject, &opts, key)?;
    let new = server_cert_info_pem(&read(&issued.cert_path)?)?;
    Ok(Renewed { old: old.clone(), archived, issued, new })
}
