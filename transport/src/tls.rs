//! rustls configurations for the hub (server) and nodes (clients): TLS 1.3 only, mutual authentication
//! against the tenant CA, ALPN `oms/1`, no 0-RTT.
//!
//! The hub verifies client certificates with webpki and the CA's CRL. The CRL is **reloaded when its file
//! changes**: [`ReloadingClientVerifier`] wraps a `WebPkiClientVerifier` behind an `RwLock` and, on a
//! handshake, looks at the file's modification time, length and inode at most once per
//! `crl_check_interval_ms` (0 = on every handshake, which costs one `stat`). We chose the check-on-handshake
//! design over a file watcher because it needs no extra thread, and a revocation takes effect on the very
//! next handshake after the interval. A CRL that fails to load (half-copied by hand, say) keeps the previous
//! verifier in force and is loaded once it changes again (the failure is logged once per version of the
//! file): a bad file must not lock every node out, and it
//! cannot un-revoke anything because `pki::revoke` only ever adds serials. Live connections are checked by
//! the hub, which calls [`ReloadingClientVerifier::refresh`] on the same interval and closes the connection
//! of every node whose certificate the new CRL revokes (see `oms_hub::server`).
//!
//! Node and hub also **reload their own certificate** without a restart: [`ReloadingCert`] resolves the
//! certificate and key each handshake presents, re-reading both files when one of them changed, checked the
//! same way (at most once per `cert_check_interval_ms` on a handshake, and by [`watch_own_certificate`] on a
//! timer, which also keeps the figures of the certificate's validity current and warns when it expires within
//! `pki::EXPIRY_WARNING_DAYS`). New connections present the new certificate; live ones keep theirs. A pair
//! that does not load, or whose key does not match the certificate (files copied one after the other), keeps
//! the previous pair in force and is loaded once the files change again.
//!
//! The HTTP API of node and hub may be served over TLS too ([`http_server_tls`]): TLS 1.2 and 1.3, ALPN
//! `http/1.1`, no client certificates, and the same [`ReloadingCert`] as its certificate resolver, in the mode
//! that takes any server certificate ([`ReloadingCert::new_server`]: an operator's, or one from
//! `oms ca issue --http`, which carries no oms identity). `oms_service::serve` runs the handshakes; this
//! crate only builds the configuration, so `oms-service` needs no QUIC.
//!
//! Session resumption is disabled on the hub, so every connection is verified against the current CRL.
//! webpki refuses a leaf certificate that claims to be a CA (`CaUsedAsEndEntity`); a test pins that.

use oms_protocol::wire::ALPN;
use rustls::client::ResolvesClientCert;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::pki::{self, CertInfo, PkiError};

/// Default of `crl_check_interval_ms` and `cert_check_interval_ms`: how often at most a changed CRL or
/// certificate file is noticed, in milliseconds.
pub const FILE_CHECK_INTERVAL_MS: u64 = 5_000;
/// A certificate that expires soon is warned about at most this often (and again whenever it changes).
pub const EXPIRY_WARNING_REPEAT_MS: u64 = 24 * 3_600 * 1_000;
/// Shortest period of [`watch_own_certificate`] and of the hub's CRL watch, in milliseconds, whatever the
/// configured interval (0 means "on every handshake", not "spin").
pub const WATCH_PERIOD_MIN_MS: u64 = 50;

/// Errors building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds no usable item.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built (e.g. a bad CRL).
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A certificate and key do not form a usable pair (unparseable key, or a key that is not the
    /// certificate's).
    #[error("{cert} with {key}: {reason}")]
    KeyPair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The certificate carries no usable identity or validity.
    #[error("{path}: {source}")]
    Cert {
        /// The certificate file.
        path: PathBuf,
        /// Why.
        source: PkiError,
    },
}

/// The crypto provider used everywhere: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem { path: path.to_owned(), reason: e.to_string() }
}

/// All certificates in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e))?;
    if certs.is_empty() {
        return Err(pem_err(path, "no certificate"));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_err(path, e))
}

/// All CRLs in a PEM file.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| pem_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e))
}

fn roots(ca_path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca_path)? {
        roots.add(cert)?;
    }
    Ok(Arc::new(roots))
}

/// Files a hub needs.
#[derive(Debug, Clone)]
pub struct ServerTlsFiles {
    /// CA certificate(s) that client certificates must chain to.
    pub ca: PathBuf,
    /// The hub's certificate chain, reloaded when it changes.
    pub cert: PathBuf,
    /// The hub's private key, reloaded with the certificate.
    pub key: PathBuf,
    /// The CA's CRL, reloaded when it changes.
    pub crl: PathBuf,
    /// How often at most the CRL file is checked for changes, in milliseconds (0: every handshake).
    pub crl_check_interval_ms: u64,
    /// How often at most the certificate and key files are checked for changes, in milliseconds (0: every
    /// handshake).
    pub cert_check_interval_ms: u64,
}

/// Files a node needs.
#[derive(Debug, Clone)]
pub struct ClientTlsFiles {
    /// CA certificate(s) that the hub's certificate must chain to.
    pub ca: PathBuf,
    /// The node's certificate chain, reloaded when it changes.
    pub cert: PathBuf,
    /// The node's private key, reloaded with the certificate.
    pub key: PathBuf,
    /// How often at most the certificate and key files are checked for changes, in milliseconds (0: every
    /// handshake).
    pub cert_check_interval_ms: u64,
}

/// The hub's TLS: the rustls configuration and the reloading parts inside it, which the hub watches.
#[derive(Debug)]
pub struct ServerTls {
    /// The configuration for the QUIC endpoint.
    pub config: rustls::ServerConfig,
    /// The hub's own certificate and key.
    pub own: Arc<ReloadingCert>,
    /// The client verifier with the CRL.
    pub clients: Arc<ReloadingClientVerifier>,
}

/// A node's TLS: the rustls configuration and its reloading certificate.
#[derive(Debug)]
pub struct ClientTls {
    /// The configuration for the QUIC endpoint.
    pub config: rustls::ClientConfig,
    /// The node's own certificate and key.
    pub own: Arc<ReloadingCert>,
}

/// The TLS of an HTTP API: the rustls configuration to hand to `oms_service::serve::serve`, and its
/// reloading certificate, for [`watch_own_certificate`].
#[derive(Debug)]
pub struct HttpTls {
    /// TLS 1.2 and 1.3, ALPN `http/1.1`, no client certificates.
    pub config: Arc<rustls::ServerConfig>,
    /// The server's certificate and key, reloaded when the files change.
    pub own: Arc<ReloadingCert>,
}

/// The ALPN protocol of the HTTP API: HTTP/1.1 only (the server speaks nothing else).
pub const HTTP_ALPN: &[u8] = b"http/1.1";

/// The rustls configuration of an HTTP API served over TLS with the certificate chain in `cert` and the key
/// in `key` (PEM), re-read at most every `check_interval_ms` when either file changed (see the module docs).
/// Fails if the pair does not load at start.
pub fn http_server_tls(cert: &Path, key: &Path, check_interval_ms: u64) -> Result<HttpTls, TlsError> {
    let own = Arc::new(ReloadingCert::new_server(cert, key, check_interval_ms)?);
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(own.clone());
    cfg.alpn_protocols = vec![HTTP_ALPN.to_vec()];
    // No 0-RTT: early data can be replayed, and a POST may write.
    cfg.max_early_data_size = 0;
    Ok(HttpTls { config: Arc::new(cfg), own })
}

/// [`http_server_tls`] with [`watch_own_certificate`] spawned on the current runtime for it (`role` names it
/// in the log): what node and hub run for `[http] tls_cert` / `tls_key`. Must be called within a runtime.
pub fn watched_http_server_tls(
    cert: &Path,
    key: &Path,
    check_interval_ms: u64,
    role: &'static str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let tls = http_server_tls(cert, key, check_interval_ms)?;
    tokio::spawn(watch_own_certificate(tls.own, role, check_interval_ms, |_| {}));
    Ok(tls.config)
}

/// The hub's rustls configuration.
pub fn server_config(files: &ServerTlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    Ok(server_tls(files)?.config)
}

/// The hub's rustls configuration with handles on its reloading certificate and CRL.
pub fn server_tls(files: &ServerTlsFiles) -> Result<ServerTls, TlsError> {
    let clients = Arc::new(ReloadingClientVerifier::new(&files.ca, &files.crl, files.crl_check_interval_ms)?);
    let own = Arc::new(ReloadingCert::new(&files.cert, &files.key, files.cert_check_interval_ms)?);
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(clients.clone())
        .with_cert_resolver(own.clone());
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    // No 0-RTT: early data can be replayed, and every sync frame may write.
    cfg.max_early_data_size = 0;
    cfg.send_half_rtt_data = false;
    // No session resumption: a resumed session skips client-certificate verification, so a node revoked
    // after its first handshake could come back on its old session. A full handshake per connection is cheap
    // at our connection rate.
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(ServerTls { config: cfg, own, clients })
}

/// A node's rustls configuration.
pub fn client_config(files: &ClientTlsFiles) -> Result<rustls::ClientConfig, TlsError> {
    Ok(client_tls(files)?.config)
}

/// A node's rustls configuration with a handle on its reloading certificate.
pub fn client_tls(files: &ClientTlsFiles) -> Result<ClientTls, TlsError> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(&files.ca)?, provider())
        .build()
        .map_err(TlsError::Verifier)?;
    let own = Arc::new(ReloadingCert::new(&files.cert, &files.key, files.cert_check_interval_ms)?);
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier)
        .with_client_cert_resolver(own.clone());
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.enable_early_data = false;
    Ok(ClientTls { config: cfg, own })
}

/// What tells a changed file: modification time, length and (on Unix) inode, since a file replaced by rename
/// (as `oms ca` writes) is a new inode even where the clock is coarse and the length the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(FileStamp { modified: meta.modified().ok(), len: meta.len(), inode })
}

#[derive(Debug)]
struct Current {
    verifier: Arc<dyn ClientCertVerifier>,
    stamp: Option<FileStamp>,
    checked_at: Instant,
    /// The stamp of the last file that failed to load (`Some(None)`: it was missing), reported once.
    failed: Option<Option<FileStamp>>,
}

/// A client-certificate verifier that requires a certificate chained to the CA, checks the CRL, and
/// rebuilds itself when the CRL file changes. See the module docs.
#[derive(Debug)]
pub struct ReloadingClientVerifier {
    roots: Arc<RootCertStore>,
    crl_path: PathBuf,
    check_interval: Duration,
    hints: Vec<DistinguishedName>,
    algorithms: WebPkiSupportedAlgorithms,
    current: RwLock<Current>,
    /// Bumped whenever a changed CRL was loaded.
    generation: AtomicU64,
}

impl ReloadingClientVerifier {
    /// Loads the CA and the CRL; fails if either is unusable at start.
    pub fn new(ca_path: &Path, crl_path: &Path, crl_check_interval_ms: u64) -> Result<Self, TlsError> {
        let roots = roots(ca_path)?;
        let stamp = stamp(crl_path);
        let verifier = build_client_verifier(&roots, crl_path)?;
        let hints = roots.subjects();
        Ok(Self {
            roots,
            crl_path: crl_path.to_owned(),
            check_interval: Duration::from_millis(crl_check_interval_ms),
            hints,
            algorithms: provider().signature_verification_algorithms,
            current: RwLock::new(Current { verifier, stamp, checked_at: Instant::now(), failed: None }),
            generation: AtomicU64::new(0),
        })
    }

    /// Looks at the CRL file now, whatever the interval, and loads it if it changed. A handshake may load a
    /// changed CRL too, so a caller that must act on every new CRL compares [`Self::generation`] instead.
    pub fn refresh(&self) {
        let mut c = match self.current.write() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.reload(&mut c);
    }

    /// How many changed CRLs were loaded since start.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether the CRL in force revokes `chain` (leaf first; a chain already verified at its handshake).
    /// The same webpki check as a handshake's, so the CRL's signature is checked too.
    pub fn revokes(&self, chain: &[CertificateDer<'_>]) -> bool {
        let Some((leaf, intermediates)) = chain.split_first() else { return false };
        let verifier = match self.current.read() {
            Ok(c) => c.verifier.clone(),
            Err(poisoned) => poisoned.into_inner().verifier.clone(),
        };
        matches!(
            verifier.verify_client_cert(leaf, intermediates, UnixTime::now()),
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked))
        )
    }

    fn reload(&self, c: &mut Current) {
        c.checked_at = Instant::now();
        let now = stamp(&self.crl_path);
        if now == c.stamp || Some(now) == c.failed {
            return;
        }
        match build_client_verifier(&self.roots, &self.crl_path) {
            Ok(v) => {
                tracing::info!(crl = %self.crl_path.display(), "CRL changed; client verifier reloaded");
                c.verifier = v;
                c.stamp = now;
                c.failed = None;
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            Err(e) => {
                tracing::warn!(crl = %self.crl_path.display(), error = %e, "CRL reload failed; keeping the previous one");
                c.failed = Some(now);
            }
        }
    }

    fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        let (verifier, due) = match self.current.read() {
            Ok(c) => (c.verifier.clone(), c.checked_at.elapsed() >= self.check_interval),
            Err(poisoned) => (poisoned.into_inner().verifier.clone(), true),
        };
        if !due {
            return verifier;
        }
        let mut c = match self.current.write() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Another handshake may have checked while we waited for the lock.
        if c.checked_at.elapsed() >= self.check_interval {
            self.reload(&mut c);
        }
        c.verifier.clone()
    }
}

/// The certificate and key a node or hub presents, reloaded when either file changes (see the module docs).
/// It is the rustls certificate resolver of both sides, so every handshake presents the current pair.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    check_interval: Duration,
    /// Whether the certificate must carry an oms identity (QUIC), or may be any server certificate (HTTP).
    identity_required: bool,
    current: RwLock<OwnCurrent>,
    /// Bumped whenever a changed pair was loaded.
    generation: AtomicU64,
}

#[derive(Debug)]
struct OwnCurrent {
    key: Arc<CertifiedKey>,
    info: CertInfo,
    stamps: (Option<FileStamp>, Option<FileStamp>),
    checked_at: Instant,
    /// The stamps of the last pair that failed to load, reported once.
    failed: Option<(Option<FileStamp>, Option<FileStamp>)>,
}

/// What [`ReloadingCert::refresh`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// Neither file changed (or they changed into a pair that already failed to load).
    Unchanged,
    /// A changed pair was loaded; new handshakes present it.
    Reloaded(CertInfo),
    /// The files changed but do not form a usable pair; the previous one stays in force.
    Failed(String),
}

impl ReloadingCert {
    /// Loads the certificate of an oms identity (a node's or the hub's, for QUIC) and its key; fails if they
    /// are unusable at start. A later pair without an identity is refused like any other that does not load.
    pub fn new(cert_path: &Path, key_path: &Path, cert_check_interval_ms: u64) -> Result<Self, TlsError> {
        Self::load(cert_path, key_path, cert_check_interval_ms, true)
    }

    /// Loads any server certificate (the HTTP API's: no oms identity needed) and its key; fails if they are
    /// unusable at start.
    pub fn new_server(cert_path: &Path, key_path: &Path, cert_check_interval_ms: u64) -> Result<Self, TlsError> {
        Self::load(cert_path, key_path, cert_check_interval_ms, false)
    }

    fn load(
        cert_path: &Path,
        key_path: &Path,
        cert_check_interval_ms: u64,
        identity_required: bool,
    ) -> Result<Self, TlsError> {
        let stamps = (stamp(cert_path), stamp(key_path));
        let (key, info) = load_pair(cert_path, key_path, identity_required)?;
        Ok(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            check_interval: Duration::from_millis(cert_check_interval_ms),
            identity_required,
            current: RwLock::new(OwnCurrent { key, info, stamps, checked_at: Instant::now(), failed: None }),
            generation: AtomicU64::new(0),
        })
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// Identity, serial and validity of the certificate presented now.
    pub fn info(&self) -> CertInfo {
        match self.current.read() {
            Ok(c) => c.info.clone(),
            Err(poisoned) => poisoned.into_inner().info.clone(),
        }
    }

    /// How many changed pairs were loaded since start.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Looks at both files now, whatever the interval, and loads them if either changed.
    pub fn refresh(&self) -> Reload {
        let mut c = match self.current.write() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.reload(&mut c)
    }

    fn reload(&self, c: &mut OwnCurrent) -> Reload {
        c.checked_at = Instant::now();
        let now = (stamp(&self.cert_path), stamp(&self.key_path));
        if now == c.stamps || Some(now) == c.failed {
            return Reload::Unchanged;
        }
        match load_pair(&self.cert_path, &self.key_path, self.identity_required) {
            Ok((key, info)) => {
                tracing::info!(cert = %self.cert_path.display(), serial = %info.serial_hex(),
                    not_after_unix_s = info.not_after_unix_s, "own certificate changed; reloaded");
                c.key = key;
                c.info = info.clone();
                c.stamps = now;
                c.failed = None;
                self.generation.fetch_add(1, Ordering::AcqRel);
                Reload::Reloaded(info)
            }
            Err(e) => {
                tracing::warn!(cert = %self.cert_path.display(), error = %e,
                    "own certificate changed but does not load; keeping the previous one");
                c.failed = Some(now);
                Reload::Failed(e.to_string())
            }
        }
    }

    /// The pair to present, after a check of the files if `cert_check_interval_ms` has passed.
    fn key(&self) -> Arc<CertifiedKey> {
        let (key, due) = match self.current.read() {
            Ok(c) => (c.key.clone(), c.checked_at.elapsed() >= self.check_interval),
            Err(poisoned) => (poisoned.into_inner().key.clone(), true),
        };
        if !due {
            return key;
        }
        let mut c = match self.current.write() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if c.checked_at.elapsed() >= self.check_interval {
            self.reload(&mut c);
        }
        c.key.clone()
    }
}

/// Loads a certificate chain and its key, checking that the key is the certificate's (and, if
/// `identity_required`, that the certificate carries an oms identity).
fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    identity_required: bool,
) -> Result<(Arc<CertifiedKey>, CertInfo), TlsError> {
    let certs = load_certs(cert_path)?;
    let key = load_key(key_path)?;
    let leaf = certs.first().ok_or_else(|| pem_err(cert_path, "no certificate"))?;
    let info = if identity_required { pki::cert_info(leaf) } else { pki::server_cert_info(leaf) }
        .map_err(|source| TlsError::Cert { path: cert_path.to_owned(), source })?;
    let pair_err = |reason: String| TlsError::KeyPair { cert: cert_path.to_owned(), key: key_path.to_owned(), reason };
    let certified = CertifiedKey::from_der(certs, key, &provider()).map_err(|e| pair_err(e.to_string()))?;
    // `from_der` lets a pair pass whose consistency it cannot tell; ours always can.
    certified.keys_match().map_err(|e| pair_err(e.to_string()))?;
    Ok((Arc::new(certified), info))
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }
}

impl ResolvesClientCert for ReloadingCert {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Keeps `cert` current and its validity known, every `cert_check_interval_ms` (at least
/// [`WATCH_PERIOD_MIN_MS`]) until the runtime stops: re-reads the files if they changed, hands the
/// certificate's figures to `observe` (for metrics), and logs a warning naming the certificate when it
/// expires within `pki::EXPIRY_WARNING_DAYS` — at once, again every [`EXPIRY_WARNING_REPEAT_MS`], and
/// whenever the certificate changes. `role` names the holder in the log (`node`, `hub`, `node-http`,
/// `hub-http`).
pub async fn watch_own_certificate(
    cert: Arc<ReloadingCert>,
    role: &'static str,
    cert_check_interval_ms: u64,
    mut observe: impl FnMut(&CertInfo) + Send,
) {
    let period = Duration::from_millis(cert_check_interval_ms.max(WATCH_PERIOD_MIN_MS));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned: Option<(Vec<u8>, Instant)> = None;
    loop {
        tick.tick().await;
        cert.refresh();
        let info = cert.info();
        observe(&info);
        let now_s = time::OffsetDateTime::now_utc().unix_timestamp();
        let expiry = info.expiry(now_s);
        if expiry_warning_due(&expiry, &info.serial, warned.as_ref()) {
            tracing::warn!(role, cert = %cert.cert_path().display(), identity = %info.identity_label(),
                serial = %info.serial_hex(), expires_in_s = expiry.expires_in_s,
                not_after_unix_s = info.not_after_unix_s,
                "own certificate expires within {} days; renew it with `oms ca renew`", pki::EXPIRY_WARNING_DAYS);
            warned = Some((info.serial.clone(), Instant::now()));
        }
    }
}

/// Whether to warn about `expiry` now, given the serial and time of the last warning.
fn expiry_warning_due(expiry: &pki::Expiry, serial: &[u8], last: Option<&(Vec<u8>, Instant)>) -> bool {
    expiry.expiring_soon
        && last.is_none_or(|(s, at)| s != serial || at.elapsed() >= Duration::from_millis(EXPIRY_WARNING_REPEAT_MS))
}

fn build_client_verifier(roots: &Arc<RootCertStore>, crl_path: &Path) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let crls = load_crls(crl_path)?;
    Ok(WebPkiClientVerifier::builder_with_provider(roots.clone(), provider()).with_crls(crls).build()?)
}

impl ClientCertVerifier for ReloadingClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verifier().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn offer_client_auth(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::IssueOptions;

    #[test]
    fn an_http_certificate_serves_https_but_is_refused_as_an_identity() {
        let dir = tempfile::tempdir().unwrap();
        pki::ca_init(dir.path(), "acme", time::Duration::days(365)).unwrap();
        let opts =
            IssueOptions { dns_names: vec!["localhost".into()], ..IssueOptions::valid_for(time::Duration::days(90)) };
        let http = pki::issue_http(dir.path(), dir.path(), "hub", &opts).unwrap();
        // QUIC (node or hub): no identity, no start.
        let refused = ReloadingCert::new(&http.cert_path, &http.key_path, 0);
        assert!(matches!(refused, Err(TlsError::Cert { source: PkiError::BadIdentity { .. }, .. })), "{refused:?}");
        let node_files = ClientTlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: http.cert_path.clone(),
            key: http.key_path.clone(),
            cert_check_interval_ms: 0,
        };
        assert!(client_tls(&node_files).is_err(), "a node refuses to sync with an HTTP certificate");
        // HTTP: served, with its serial known, ALPN http/1.1 and both TLS versions.
        let tls = http_server_tls(&http.cert_path, &http.key_path, 0).unwrap();
        assert_eq!(tls.own.info().serial, http.serial);
        assert_eq!(tls.own.info().identity, None);
        assert_eq!(tls.config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert_eq!(tls.config.max_early_data_size, 0);
    }
}
