//! A small file-based PKI for one tenant: a CA, node and hub certificates, and a CRL.
//!
//! Layout of a PKI directory: `ca.pem` / `ca.key` (the CA), `<name>.pem` / `<name>.key` per issued identity
//! (`hub` or `node-<id>`), `revoked.txt` (hex serials, one a line: the source of truth for revocations) and
//! `crl.pem` (regenerated from `revoked.txt` on every [`revoke`]), and `archive/` (the pairs [`renew`]
//! replaced). [`ca_init`] makes the directory `0700` ([`PRIVATE_DIR_MODE`]), and `archive/` is made so too.
//!
//! **Every file is written durably** ([`write_durable`]): to a temporary file in the same directory, which is
//! fsynced, renamed over the target, and then the directory is fsynced. A reader (a hub re-reading the CRL,
//! a node re-reading its certificate) sees the old or the new file, never half of one, and a crash never
//! leaves a half-written PEM. Private keys ([`FileMode::Secret`]) are created `0600` from the start, so
//! there is no moment at which a key is readable by others; certificates, the CRL and `revoked.txt` are
//! `0644`.
//!
//! An identity is carried in exactly one URI SAN: `oms://<tenant>/node/<id>` or `oms://<tenant>/hub`. It is
//! read back from the *verified* peer certificate with [`identity_from_cert_der`]; nothing a peer says in a
//! frame counts as identity. A hub certificate additionally carries DNS names, because the node verifies the
//! hub as a TLS server name.
//!
//! **HTTP server certificates** ([`issue_http`], [`renew_http`]; `http-<name>.pem` / `http-<name>.key`) are
//! for the TLS of a node's or the hub's HTTP API: DNS and IP SANs, the `serverAuth` usage only, and **no
//! URI SAN**, so such a certificate is never an oms identity: [`identity_from_cert_der`] refuses it, a hub
//! refuses it from a node (no identity, and no `clientAuth` usage), and node and hub refuse to start QUIC
//! with it. A key that serves HTTPS on a shop floor can thus never sync as a node.
//!
//! **Renewal** ([`renew`]) issues a new certificate for the identity and DNS names of the current one, with a
//! new serial and validity, and by default a **fresh key** ([`KeyChoice::Fresh`]): `oms ca` generates every
//! key on the admin host and ships certificate and key together anyway, so a fresh key costs nothing extra,
//! and renewal becomes the moment a key that may have been copied off a node stops being useful once the old
//! certificate expires or is revoked. [`KeyChoice::Reuse`] keeps the key (only the certificate changes on the
//! node), for a site where copying a key again is harder than copying a certificate. The old certificate is
//! not revoked: it stays valid until it expires, so a node keeps working until its new files arrive; revoke
//! its serial once the node uses the new one. The replaced certificate and key are **archived** first, to
//! `archive/<stem>-<serial>.pem` / `.key` ([`Archived`]; the key `0600`), and the archive keeps the last
//! [`ARCHIVE_KEEP`] replaced pairs per identity: enough to look back a few renewals, bounded on disk.
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// Longest tenant or node id, in bytes.
pub const NAME_BYTES_MAX: usize = 64;
/// A certificate with less validity left than this many days is *expiring soon*: node and hub warn and say
/// so in their metrics and status ([`expiry`]).
pub const EXPIRY_WARNING_DAYS: i64 = 30;
/// Seconds in a day, for [`EXPIRY_WARNING_DAYS`].
const DAY_SECS: i64 = 86_400;

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A warehouse node.
    Node {
        /// Tenant.
        tenant: String,
        /// Node id within the tenant.
        node_id: String,
    },
    /// The tenant's hub.
    Hub {
        /// Tenant.
        tenant: String,
    },
}

impl Identity {
    /// A node identity, checking both names.
    pub fn node(tenant: &str, node_id: &str) -> Result<Self, PkiError> {
        check_name(tenant)?;
        check_name(node_id)?;
        Ok(Identity::Node { tenant: tenant.to_owned(), node_id: node_id.to_owned() })
    }

    /// A hub identity, checking the tenant name.
    pub fn hub(tenant: &str) -> Result<Self, PkiError> {
        check_name(tenant)?;
        Ok(Identity::Hub { tenant: tenant.to_owned() })
    }

    /// The URI SAN: `oms://<tenant>/node/<id>` or `oms://<tenant>/hub`.
    pub fn uri(&self) -> String {
        match self {
            Identity::Node { tenant, node_id } => format!("oms://{tenant}/node/{node_id}"),
            Identity::Hub { tenant } => format!("oms://{tenant}/hub"),
        }
    }

    /// Parses a URI SAN back.
    pub fn from_uri(uri: &str) -> Result<Self, PkiError> {
        let bad = || PkiError::BadIdentity { uri: uri.chars().take(128).collect() };
        let rest = uri.strip_prefix("oms://").ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [tenant, "hub"] => Identity::hub(tenant).map_err(|_| bad()),
            [tenant, "node", id] => Identity::node(tenant, id).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        match self {
            Identity::Node { tenant, .. } | Identity::Hub { tenant } => tenant,
        }
    }

    /// Base file name of this identity's certificate and key in a PKI directory.
    pub fn file_stem(&self) -> String {
        match self {
            Identity::Node { node_id, .. } => format!("node-{node_id}"),
            Identity::Hub { .. } => "hub".to_owned(),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

fn check_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.');
    if ok { Ok(()) } else { Err(PkiError::BadName { name: name.chars().take(NAME_BYTES_MAX + 8).collect() }) }
}

/// Errors of PKI operations.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A tenant or node id outside `[a-z0-9._-]{1,64}`.
    #[error("invalid name {name:?}: use 1 to 64 of a-z, 0-9, '.', '_', '-'")]
    BadName {
        /// The name.
        name: String,
    },
    /// A certificate whose identity is not exactly one `oms://` URI SAN.
    #[error("certificate identity {uri:?} is not oms://<tenant>/node/<id> or oms://<tenant>/hub")]
    BadIdentity {
        /// What was found.
        uri: String,
    },
    /// Reading or writing a PKI file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `ca_init` would overwrite an existing CA.
    #[error("{path} exists; refusing to overwrite a CA")]
    CaExists {
        /// The existing file.
        path: PathBuf,
    },
    /// Certificate generation or parsing failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// A certificate could not be parsed.
    #[error("cannot parse certificate: {0}")]
    Parse(String),
    /// A serial in `revoked.txt` or given to `revoke` is not hex.
    #[error("invalid serial {serial:?}: expected hex")]
    BadSerial {
        /// The serial.
        serial: String,
    },
    /// The certificate to renew names another identity than the one asked for.
    #[error("{path} is the certificate of {found}, not of {wanted}")]
    WrongIdentity {
        /// The certificate file.
        path: PathBuf,
        /// The identity asked for.
        wanted: String,
        /// The identity in the file.
        found: String,
    },
    /// The certificate to renew as an HTTP server certificate carries an oms identity (or the reverse).
    #[error("{path} is not an HTTP server certificate (it carries the identity {found})")]
    NotHttp {
        /// The certificate file.
        path: PathBuf,
        /// The identity in the file.
        found: String,
    },
}

fn read(path: &Path) -> Result<String, PkiError> {
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
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Windows cannot open a directory as a file; its renames are made durable by NTFS's journal.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
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

/// Creates a CA for `tenant` in `dir` (`ca.pem`, `ca.key`) and an empty `crl.pem`, valid for `validity`.
/// The directory is created, or tightened, to `0700` on Unix ([`private_dir`]): it holds the CA key and every
/// key `oms ca` issues, so nobody else may even list it.
pub fn ca_init(dir: &Path, tenant: &str, validity: Duration) -> Result<(), PkiError> {
    check_name(tenant)?;
    private_dir(dir)?;
    let (cert_path, key_path) = ca_paths(dir);
    if cert_path.exists() {
        return Err(PkiError::CaExists { path: cert_path });
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    // A name of its own per CA, not per tenant: during a rollover two CAs of one tenant are trusted side by
    // side, and webpki picks the CRL for a certificate by its issuer's name, so two CAs of the same name would
    // have each other's CRL checked against their certificates (and refused as badly signed).
    params.distinguished_name = dn(&format!("oms {tenant} CA {:08x}", rand::random::<u32>()));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + validity;
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key)?;
    write_durable(&key_path, key.serialize_pem().as_bytes(), FileMode::Secret)?;
    write_durable(&cert_path, cert.pem().as_bytes(), FileMode::Public)?;
    write_crl(dir, &[])
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and without a leading zero byte, so its DER encoding is exactly these 16 bytes.
    bytes[0] = (bytes[0] & 0x7F) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let (cert_path, key_path) = ca_paths(dir);
    let key = KeyPair::from_pem(&read(&key_path)?)?;
    Ok(Issuer::from_ca_cert_pem(&read(&cert_path)?, key)?)
}

/// How to issue a certificate.
#[derive(Debug, Clone)]
pub struct IssueOptions {
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// DNS names the holder serves as (a hub's server names, an HTTP server's names; empty for nodes).
    pub dns_names: Vec<String>,
    /// IP addresses the holder serves as (HTTP server certificates only; ignored for identities).
    pub ip_addresses: Vec<IpAddr>,
    /// Marks the leaf as a CA. Only for testing that the hub refuses such a leaf.
    pub claim_ca: bool,
}

impl IssueOptions {
    /// Valid from a few minutes ago for `validity`, no DNS names.
    pub fn valid_for(validity: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::minutes(5),
            not_after: now + validity,
            dns_names: vec![],
            ip_addresses: vec![],
            claim_ca: false,
        }
    }
}

/// What [`issue`] wrote.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Serial number, big-endian bytes (pass to [`revoke`]).
    pub serial: Vec<u8>,
    /// The certificate (PEM).
    pub cert_path: PathBuf,
    /// The private key (PEM, PKCS#8).
    pub key_path: PathBuf,
}

/// Issues a certificate for `identity`, signed by the CA in `ca_dir`, with a fresh key, written to
/// `out_dir/<stem>.pem` and `out_dir/<stem>.key`.
pub fn issue(ca_dir: &Path, out_dir: &Path, identity: &Identity, opts: &IssueOptions) -> Result<Issued, PkiError> {
    issue_with_key(ca_dir, out_dir, Subject::Identity(identity), opts, KeyPair::generate()?)
}

/// Issues an HTTP server certificate `name` (see the module docs: DNS and IP SANs from `opts`, `serverAuth`
/// only, no identity), signed by the CA in `ca_dir`, with a fresh key, written to `out_dir/http-<name>.pem`
/// and `out_dir/http-<name>.key`.
pub fn issue_http(ca_dir: &Path, out_dir: &Path, name: &str, opts: &IssueOptions) -> Result<Issued, PkiError> {
    check_name(name)?;
    issue_with_key(ca_dir, out_dir, Subject::Http(name), opts, KeyPair::generate()?)
}

/// What a certificate is issued for.
#[derive(Debug, Clone, Copy)]
enum Subject<'a> {
    /// A node or the hub: the identity in one URI SAN.
    Identity(&'a Identity),
    /// An HTTP server: names and addresses, no identity.
    Http(&'a str),
}

impl Subject<'_> {
    fn paths(self, dir: &Path) -> (PathBuf, PathBuf) {
        match self {
            Subject::Identity(identity) => identity_paths(dir, identity),
            Subject::Http(name) => http_paths(dir, name),
        }
    }
}

fn issue_with_key(
    ca_dir: &Path,
    out_dir: &Path,
    subject: Subject<'_>,
    opts: &IssueOptions,
    key: KeyPair,
) -> Result<Issued, PkiError> {
    let issuer = load_issuer(ca_dir)?;
    let mut params = CertificateParams::default();
    match subject {
        Subject::Identity(identity) => {
            params.distinguished_name = dn(&identity.uri());
            params.subject_alt_names = vec![SanType::URI(identity.uri().try_into()?)];
            params.extended_key_usages = match identity {
                Identity::Hub { .. } => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
                Identity::Node { .. } => vec![ExtendedKeyUsagePurpose::ClientAuth],
            };
        }
        Subject::Http(name) => {
            params.distinguished_name = dn(&format!("oms http {name}"));
            // Server authentication only: never a client certificate, never an identity (no URI SAN).
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params.subject_alt_names = opts.ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)).collect();
        }
    }
    for name in &opts.dns_names {
        params.subject_alt_names.push(SanType::DnsName(name.clone().try_into()?));
    }
    params.is_ca = if opts.claim_ca { IsCa::Ca(BasicConstraints::Unconstrained) } else { IsCa::ExplicitNoCa };
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = opts.not_before;
    params.not_after = opts.not_after;
    let serial = random_serial();
    params.serial_number = Some(serial.clone());
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer)?;
    std::fs::create_dir_all(out_dir).map_err(|source| PkiError::Io { path: out_dir.to_owned(), source })?;
    let (cert_path, key_path) = subject.paths(out_dir);
    // The key first: a reader that sees the new certificate finds its key already there (a reloading node
    // or hub also checks that the two match and retries otherwise).
    write_durable(&key_path, key.serialize_pem().as_bytes(), FileMode::Secret)?;
    write_durable(&cert_path, cert.pem().as_bytes(), FileMode::Public)?;
    Ok(Issued { serial: serial.to_bytes(), cert_path, key_path })
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

/// What node and hub need to know of a certificate besides its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The identity in its URI SAN; always there for what [`cert_info`] accepts, `None` for an HTTP server
    /// certificate ([`server_cert_info`]).
    pub identity: Option<Identity>,
    /// Its DNS SANs (a hub's server names).
    pub dns_names: Vec<String>,
    /// Its IP address SANs (an HTTP server certificate's).
    pub ip_addresses: Vec<IpAddr>,
    /// Serial number, big-endian bytes as encoded.
    pub serial: Vec<u8>,
    /// Start of validity, seconds since the Unix epoch.
    pub not_before_unix_s: i64,
    /// End of validity, seconds since the Unix epoch.
    pub not_after_unix_s: i64,
}

impl CertInfo {
    /// The serial in hex, as `oms ca` prints it and `oms ca revoke` takes it.
    pub fn serial_hex(&self) -> String {
        hex(&self.serial)
    }

    /// How long it has left at `now_unix_s`.
    pub fn expiry(&self, now_unix_s: i64) -> Expiry {
        expiry(self.not_after_unix_s, now_unix_s)
    }

    /// The identity's URI, or `none` (an HTTP server certificate), for logs.
    pub fn identity_label(&self) -> String {
        self.identity.as_ref().map_or_else(|| "none".to_owned(), Identity::uri)
    }
}

/// Parses a DER certificate of an oms identity: identity (exactly one `oms://` URI SAN), DNS names, serial,
/// validity.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, PkiError> {
    let identity = identity_from_cert_der(der)?;
    Ok(CertInfo { identity: Some(identity), ..server_cert_info(der)? })
}

/// Parses any DER certificate a TLS server may present (an HTTP server certificate from `oms ca issue --http`
/// or an operator's): DNS and IP names, serial, validity, and the oms identity if it carries one.
pub fn server_cert_info(der: &[u8]) -> Result<CertInfo, PkiError> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let san = cert.subject_alternative_name().map_err(|e| PkiError::Parse(e.to_string()))?;
    let names = san.map(|ext| ext.value.general_names.as_slice()).unwrap_or_default();
    let dns_names = names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
        .collect();
    let ip_addresses = names
        .iter()
        .filter_map(|n| match n {
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let validity = cert.validity();
    Ok(CertInfo {
        identity: identity_from_cert_der(der).ok(),
        dns_names,
        ip_addresses,
        serial: cert.raw_serial().to_vec(),
        not_before_unix_s: validity.not_before.timestamp(),
        not_after_unix_s: validity.not_after.timestamp(),
    })
}

/// [`cert_info`] of the first certificate in PEM text.
pub fn cert_info_pem(pem: &str) -> Result<CertInfo, PkiError> {
    cert_info(&first_cert_der(pem)?)
}

/// [`server_cert_info`] of the first certificate in PEM text.
pub fn server_cert_info_pem(pem: &str) -> Result<CertInfo, PkiError> {
    server_cert_info(&first_cert_der(pem)?)
}

fn first_cert_der(pem: &str) -> Result<rustls::pki_types::CertificateDer<'static>, PkiError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::Parse(e.to_string()))
}

/// How long a certificate has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// Seconds until `not_after`; zero or negative once expired.
    pub expires_in_s: i64,
    /// Less than [`EXPIRY_WARNING_DAYS`] left (or expired): time to renew.
    pub expiring_soon: bool,
}

/// The one rule for when a certificate is about to expire: less than [`EXPIRY_WARNING_DAYS`] between
/// `now_unix_s` and `not_after_unix_s`.
pub fn expiry(not_after_unix_s: i64, now_unix_s: i64) -> Expiry {
    let expires_in_s = not_after_unix_s.saturating_sub(now_unix_s);
    Expiry { expires_in_s, expiring_soon: expires_in_s < EXPIRY_WARNING_DAYS * DAY_SECS }
}

/// Bytes as lower-case hex, the form `oms ca` prints serials in.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>, PkiError> {
    let bad = || PkiError::BadSerial { serial: s.chars().take(80).collect() };
    if s.is_empty() || !s.len().is_multiple_of(2) || s.len() > 40 {
        return Err(bad());
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| bad())).collect()
}

/// Serials listed in `dir/revoked.txt`.
pub fn revoked_serials(dir: &Path) -> Result<Vec<Vec<u8>>, PkiError> {
    let path = dir.join("revoked.txt");
    if !path.exists() {
        return Ok(vec![]);
    }
    read(&path)?.lines().map(str::trim).filter(|l| !l.is_empty()).map(unhex).collect()
}

/// Revokes `serial`: adds it to `revoked.txt` and rewrites `crl.pem`, signed by the CA in `dir`.
pub fn revoke(dir: &Path, serial: &[u8]) -> Result<(), PkiError> {
    let mut serials = revoked_serials(dir)?;
    if !serials.iter().any(|s| s == serial) {
        serials.push(serial.to_vec());
    }
    let text: String = serials.iter().map(|s| hex(s) + "\n").collect();
    write_durable(&dir.join("revoked.txt"), text.as_bytes(), FileMode::Public)?;
    write_crl(dir, &serials)
}

fn write_crl(dir: &Path, serials: &[Vec<u8>]) -> Result<(), PkiError> {
    let issuer = load_issuer(dir)?;
    let now = OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now - Duration::minutes(5),
        next_update: now + Duration::days(30),
        // Increases with every rewrite; seconds since the epoch are enough for a file rewritten by hand.
        crl_number: SerialNumber::from(u64::try_from(now.unix_timestamp()).unwrap_or(0)),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from_slice(s),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&issuer)?;
    write_durable(&crl_path(dir), crl.pem()?.as_bytes(), FileMode::Public)
}

/// Reads the identity out of a certificate that TLS has already verified: exactly one `oms://` URI SAN.
pub fn identity_from_cert_der(der: &[u8]) -> Result<Identity, PkiError> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let san = cert.subject_alternative_name().map_err(|e| PkiError::Parse(e.to_string()))?;
    let uris: Vec<&str> = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match uris.as_slice() {
        [uri] => Identity::from_uri(uri),
        _ => Err(PkiError::BadIdentity { uri: format!("{} URI SANs", uris.len()) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_uri_roundtrip() {
        for id in [Identity::node("acme", "berlin-1").unwrap(), Identity::hub("acme").unwrap()] {
            assert_eq!(Identity::from_uri(&id.uri()).unwrap(), id);
        }
        for bad in ["oms://acme/node/a/b", "http://acme/hub", "oms://ACME/hub", "oms:///hub", "oms://a/node/"] {
            assert!(Identity::from_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn issued_cert_carries_identity_and_revocation_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        ca_init(dir.path(), "acme", Duration::days(1)).unwrap();
        assert!(matches!(ca_init(dir.path(), "acme", Duration::days(1)), Err(PkiError::CaExists { .. })));
        let id = Identity::node("acme", "n1").unwrap();
        let issued = issue(dir.path(), dir.path(), &id, &IssueOptions::valid_for(Duration::days(1))).unwrap();
        let pem = std::fs::read_to_string(&issued.cert_path).unwrap();
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(identity_from_cert_der(&der).unwrap(), id);
        revoke(dir.path(), &issued.serial).unwrap();
        revoke(dir.path(), &issued.serial).unwrap();
        assert_eq!(revoked_serials(dir.path()).unwrap(), vec![issued.serial]);
    }

    /// Permission bits of `path`.
    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[cfg(unix)]
    #[test]
    fn private_keys_are_written_0600_and_certificates_0644() {
        let dir = tempfile::tempdir().unwrap();
        ca_init(dir.path(), "acme", Duration::days(1)).unwrap();
        let node = issue(
            dir.path(),
            dir.path(),
            &Identity::node("acme", "n1").unwrap(),
            &IssueOptions::valid_for(Duration::days(1)),
        )
        .unwrap();
        let hub =
            issue(dir.path(), dir.path(), &Identity::hub("acme").unwrap(), &IssueOptions::valid_for(Duration::days(1)))
                .unwrap();
        for key in [dir.path().join("ca.key"), node.key_path.clone(), hub.key_path.clone()] {
            assert_eq!(mode(&key), 0o600, "{}", key.display());
        }
        // Certificates may be read by anyone (the umask may take more away, never add).
        for cert in [dir.path().join("ca.pem"), crl_path(dir.path()), node.cert_path.clone()] {
            assert_eq!(mode(&cert) & !0o644, 0, "{}", cert.display());
        }
        // A key renewed over a key that an older version left world-readable is 0600 again.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&node.key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let id = Identity::node("acme", "n1").unwrap();
        renew(dir.path(), dir.path(), &id, Duration::days(2), KeyChoice::Reuse).unwrap();
        assert_eq!(mode(&node.key_path), 0o600);
    }

    #[cfg(unix)]
    #[test]
    fn ca_init_makes_the_pki_directory_0700_and_tightens_an_existing_one() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let fresh = tmp.path().join("new").join("pki");
        ca_init(&fresh, "acme", Duration::days(1)).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        let existing = tmp.path().join("open");
        std::fs::create_dir(&existing).unwrap();
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o755)).unwrap();
        ca_init(&existing, "acme", Duration::days(1)).unwrap();
        assert_eq!(mode(&existing), 0o700);
    }

    #[test]
    fn renew_archives_the_replaced_pair_and_keeps_the_last_few() {
        let dir = tempfile::tempdir().unwrap();
        ca_init(dir.path(), "acme", Duration::days(365)).unwrap();
        let id = Identity::node("acme", "n1").unwrap();
        // A node whose id extends n1's: its archive entries are not n1's.
        let other = Identity::node("acme", "n1-b").unwrap();
        let first = issue(dir.path(), dir.path(), &id, &IssueOptions::valid_for(Duration::days(10))).unwrap();
        issue(dir.path(), dir.path(), &other, &IssueOptions::valid_for(Duration::days(10))).unwrap();
        renew(dir.path(), dir.path(), &other, Duration::days(10), KeyChoice::Fresh).unwrap();
        let (cert_before, key_before) =
            (std::fs::read(&first.cert_path).unwrap(), std::fs::read(&first.key_path).unwrap());
        let renewed = renew(dir.path(), dir.path(), &id, Duration::days(20), KeyChoice::Fresh).unwrap();
        let archive = dir.path().join(ARCHIVE_DIR);
        let base = format!("node-n1-{}", hex(&first.serial));
        assert_eq!(renewed.archived.cert_path, archive.join(format!("{base}.pem")));
        assert_eq!(renewed.archived.key_path, Some(archive.join(format!("{base}.key"))));
        assert_eq!(std::fs::read(&renewed.archived.cert_path).unwrap(), cert_before);
        assert_eq!(std::fs::read(archive.join(format!("{base}.key"))).unwrap(), key_before);
        #[cfg(unix)]
        {
            assert_eq!(mode(&archive.join(format!("{base}.key"))), 0o600);
            assert_eq!(mode(&archive), 0o700);
        }
        // Renew again and again: the archive keeps the newest ARCHIVE_KEEP replaced pairs of n1.
        let mut replaced = vec![first.serial.clone()];
        let mut current = renewed.new.serial.clone();
        for _ in 0..ARCHIVE_KEEP + 1 {
            let r = renew(dir.path(), dir.path(), &id, Duration::days(20), KeyChoice::Fresh).unwrap();
            assert_eq!(r.old.serial, current);
            replaced.push(current);
            current = r.new.serial;
        }
        let mut names: Vec<String> = std::fs::read_dir(&archive)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let ours = |ext: &str| {
            names
                .iter()
                .filter(|n| n.starts_with("node-n1-") && !n.starts_with("node-n1-b-") && n.ends_with(ext))
                .count()
        };
        assert_eq!((ours(".pem"), ours(".key")), (ARCHIVE_KEEP, ARCHIVE_KEEP), "{names:?}");
        for (i, serial) in replaced.iter().enumerate() {
            let kept = archive.join(format!("node-n1-{}.pem", hex(serial))).exists();
            assert_eq!(kept, i >= replaced.len() - ARCHIVE_KEEP, "replaced #{i}: {names:?}");
        }
        assert!(names.iter().any(|n| n.starts_with("node-n1-b-")), "the other node's archive was pruned: {names:?}");
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn files_are_replaced_by_rename_and_no_temporary_file_stays() {
        let dir = tempfile::tempdir().unwrap();
        ca_init(dir.path(), "acme", Duration::days(1)).unwrap();
        let issued = issue(
            dir.path(),
            dir.path(),
            &Identity::node("acme", "n1").unwrap(),
            &IssueOptions::valid_for(Duration::days(1)),
        )
        .unwrap();
        // A reader holding the old CRL open (here: a second link to it) keeps reading the whole old file.
        let before = std::fs::read(crl_path(dir.path())).unwrap();
        let held = dir.path().join("held-crl");
        std::fs::hard_link(crl_path(dir.path()), &held).unwrap();
        revoke(dir.path(), &issued.serial).unwrap();
        assert_eq!(std::fs::read(&held).unwrap(), before, "the CRL was rewritten in place");
        assert_ne!(std::fs::read(crl_path(dir.path())).unwrap(), before);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn a_certificate_with_less_than_30_days_left_is_expiring_soon() {
        // The rule itself, at its boundary.
        let day = 86_400;
        assert!(!expiry(1_000 + 30 * day, 1_000).expiring_soon);
        assert!(expiry(1_000 + 30 * day - 1, 1_000).expiring_soon);
        assert_eq!(expiry(1_000, 1_500), Expiry { expires_in_s: -500, expiring_soon: true });
        // On real certificates: one issued for 10 days is expiring soon, one for 90 is not.
        let dir = tempfile::tempdir().unwrap();
        ca_init(dir.path(), "acme", Duration::days(365)).unwrap();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        for (days, soon) in [(10, true), (90, false)] {
            let id = Identity::node("acme", &format!("n{days}")).unwrap();
            let issued = issue(dir.path(), dir.path(), &id, &IssueOptions::valid_for(Duration::days(days))).unwrap();
            let info = cert_info_pem(&std::fs::read_to_string(&issued.cert_path).unwrap()).unwrap();
            let e = info.expiry(now);
            assert_eq!(e.expiring_soon, soon, "{days} days: {e:?}");
            assert!((e.expires_in_s - days * day).abs() <= 60, "{days} days: {e:?}");
        }
    }

    #[test]
    fn an_http_certificate_names_its_server_and_is_no_identity() {
        let dir = tempfile::tempdir().unwrap();
        ca_init(dir.path(), "acme", Duration::days(365)).unwrap();
        let opts = IssueOptions {
            dns_names: vec!["localhost".into(), "wh1.example".into()],
            ip_addresses: vec![IpAddr::from([127, 0, 0, 1]), "::1".parse().unwrap()],
            ..IssueOptions::valid_for(Duration::days(90))
        };
        let issued = issue_http(dir.path(), dir.path(), "node-wh1", &opts).unwrap();
        assert_eq!(issued.cert_path, dir.path().join("http-node-wh1.pem"));
        assert_eq!(issued.key_path, dir.path().join("http-node-wh1.key"));
        let pem = std::fs::read_to_string(&issued.cert_path).unwrap();
        let info = server_cert_info_pem(&pem).unwrap();
        assert_eq!(info.identity, None);
        assert_eq!(info.dns_names, ["localhost", "wh1.example"]);
        assert_eq!(info.ip_addresses, opts.ip_addresses);
        assert_eq!(info.serial, issued.serial);
        // Not an oms identity, whichever way it is read.
        assert!(matches!(cert_info_pem(&pem), Err(PkiError::BadIdentity { .. })));
        let der = first_cert_der(&pem).unwrap();
        assert!(identity_from_cert_der(&der).is_err());
        // Server authentication only: no client certificate for mutual TLS.
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth, "{eku:?}");
        assert!(issue_http(dir.path(), dir.path(), "Bad/Name", &opts).is_err());

        // Renewal keeps names and addresses, with a new serial; an identity's file is not renewed as HTTP.
        let renewed = renew_http(dir.path(), dir.path(), "node-wh1", Duration::days(30), KeyChoice::Fresh).unwrap();
        assert_eq!(renewed.old.serial, issued.serial);
        assert_ne!(renewed.new.serial, issued.serial);
        assert_eq!(
            (renewed.new.dns_names.clone(), renewed.new.ip_addresses.clone()),
            (info.dns_names, info.ip_addresses)
        );
        assert_eq!(renewed.new.identity, None);
        issue(dir.path(), dir.path(), &Identity::hub("acme").unwrap(), &IssueOptions::valid_for(Duration::days(1)))
            .unwrap();
        std::fs::copy(dir.path().join("hub.pem"), dir.path().join("http-hub.pem")).unwrap();
        assert!(matches!(
            renew_http(dir.path(), dir.path(), "hub", Duration::days(1), KeyChoice::Fresh),
            Err(PkiError::NotHttp { .. })
        ));
        // And an HTTP certificate under an identity's name is not renewed as that identity.
        std::fs::copy(&issued.cert_path, dir.path().join("node-n1.pem")).unwrap();
        let n1 = Identity::node("acme", "n1").unwrap();
        assert!(renew(dir.path(), dir.path(), &n1, Duration::days(1), KeyChoice::Fresh).is_err());
    }

    #[test]
    fn renewal_keeps_identity_and_names_with_a_new_serial_and_validity() {
        let dir = tempfile::tempdir().unwrap();
        ca_init(dir.path(), "acme", Duration::days(365)).unwrap();
        let hub = Identity::hub("acme").unwrap();
        let opts = IssueOptions {
            dns_names: vec!["hub.acme.test".into(), "localhost".into()],
            ..IssueOptions::valid_for(Duration::days(10))
        };
        let issued = issue(dir.path(), dir.path(), &hub, &opts).unwrap();
        let key_before = std::fs::read(&issued.key_path).unwrap();

        let fresh = renew(dir.path(), dir.path(), &hub, Duration::days(90), KeyChoice::Fresh).unwrap();
        assert_eq!(fresh.old.serial, issued.serial);
        assert_ne!(fresh.new.serial, fresh.old.serial);
        assert_eq!(fresh.new.identity, Some(hub.clone()));
        assert_eq!(fresh.new.dns_names, vec!["hub.acme.test".to_owned(), "localhost".to_owned()]);
        assert!(fresh.new.not_after_unix_s > fresh.old.not_after_unix_s + 79 * 86_400);
        let key_fresh = std::fs::read(&issued.key_path).unwrap();
        assert_ne!(key_fresh, key_before, "a fresh key was asked for");

        let reused = renew(dir.path(), dir.path(), &hub, Duration::days(91), KeyChoice::Reuse).unwrap();
        assert_eq!(std::fs::read(&issued.key_path).unwrap(), key_fresh, "the key was to be kept");
        assert_ne!(reused.new.serial, fresh.new.serial);

        // Renewing a certificate file under another identity's name is refused.
        std::fs::copy(&issued.cert_path, dir.path().join("node-n1.pem")).unwrap();
        let n1 = Identity::node("acme", "n1").unwrap();
        assert!(matches!(
            renew(dir.path(), dir.path(), &n1, Duration::days(1), KeyChoice::Fresh),
            Err(PkiError::WrongIdentity { .. })
        ));
        // Nothing to renew.
        let n2 = Identity::node("acme", "n2").unwrap();
        assert!(matches!(
            renew(dir.path(), dir.path(), &n2, Duration::days(1), KeyChoice::Fresh),
            Err(PkiError::Io { .. })
        ));
    }
}
