//! rustls configurations for the hub (server) and nodes (clients): TLS 1.3 only, mutual authentication
//! against the tenant CA, ALPN `oms/1`, no 0-RTT.
//!
//! The hub verifies client certificates with webpki, the CA bundle (`ca.pem`) and the CA's CRL (`crl.pem`).
//! **Both files are reloaded when they change**: [`ReloadingClientVerifier`] keeps a `WebPkiClientVerifier`
//! behind an `RwLock` and, on a handshake, looks at the files' modification time, length and inode at most
//! once per `crl_check_interval_ms` (0 = on every handshake, which costs two `stat`s). A changed bundle is how
//! a CA rollover reaches a running hub: `ca.pem` holding the old and the new CA (and `crl.pem` a CRL of each,
//! since a certificate whose CA has no CRL in the file has an unknown revocation status, which is refused)
//! lets nodes of both CAs in; dropping the old CA later shuts its nodes out. We chose the check-on-handshake
//! design over a file watcher because it needs no extra thread, and a change takes effect on the very next
//! handshake after the interval. A pair that fails to load (a half-copied file, say) keeps the previous
//! verifier in force and is loaded once it changes again (the failure is logged once per version of the
//! files): a bad file must not lock every node out, and it cannot un-revoke anything because `pki::revoke`
//! only ever adds serials. Live connections are checked by the hub, which calls
//! [`ReloadingClientVerifier::refresh`] on the same interval and, after every change, verifies each live
//! connection's certificate again ([`ReloadingClientVerifier::verify_now`]), closing those now refused with
//! the code [`refusal_code`] names (see `oms_hub::server`).
//!
//! A node verifies the hub the same way ([`ReloadingServerVerifier`]): its `ca.pem`, and `crl.pem` in the
//! same directory **if the file is there** (so the CRL is distributed to nodes like `ca.pem`), both reloaded
//! when they change, checked at most every `crl_check_interval_ms` of the node's `[hub]` section. A revoked
//! hub certificate is refused at the handshake, and a node's link re-checks the hub's certificate after every
//! change. Once a CRL was loaded, a deleted `crl.pem` keeps it in force: deleting a file must not un-revoke.
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
//! Session resumption is disabled on both sides, so every connection is verified against the current CA
//! bundle and CRL.
//! webpki refuses a leaf certificate that claims to be a CA (`CaUsedAsEndEntity`); a test pins that.

use oms_protocol::wire::ALPN;
use rustls::client::ResolvesClientCert;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime};
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
    /// CA certificate(s) that the hub's certificate must chain to, reloaded when the file changes.
    pub ca: PathBuf,
    /// The CA's CRL, checked against the hub's certificate if the file is there, reloaded when it changes.
    pub crl: PathBuf,
    /// How often at most `ca` and `crl` are checked for changes, in milliseconds (0: every handshake).
    pub crl_check_interval_ms: u64,
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

/// A node's TLS: the rustls configuration and its reloading parts.
#[derive(Debug)]
pub struct ClientTls {
    /// The configuration for the QUIC endpoint.
    pub config: rustls::ClientConfig,
    /// The node's own certificate and key.
    pub own: Arc<ReloadingCert>,
    /// The verifier of the hub's certificate, with the CA bundle and the CRL.
    pub hub: Arc<ReloadingServerVerifier>,
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

/// [`http_server_tls`] for the `(cert, key)` pair of `files`, with [`watch_own_certificate`] spawned on the
/// current runtime for it (`role` names it in the log): what node and hub run for `[http] tls_cert` /
/// `tls_key`. `None` when no pair is configured (plain HTTP). Must be called within a runtime.
pub fn watched_http_server_tls(
    files: Option<(&Path, &Path)>,
    check_interval_ms: u64,
    role: &'static str,
) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
    let Some((cert, key)) = files else { return Ok(None) };
    let tls = http_server_tls(cert, key, check_interval_ms)?;
    tokio::spawn(watch_own_certificate(tls.own, role, check_interval_ms, |_| {}));
    Ok(Some(tls.config))
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

/// A node's rustls configuration with handles on its reloading certificate and its verifier of the hub.
pub fn client_tls(files: &ClientTlsFiles) -> Result<ClientTls, TlsError> {
    let hub = Arc::new(ReloadingServerVerifier::new(&files.ca, &files.crl, files.crl_check_interval_ms)?);
    let own = Arc::new(ReloadingCert::new(&files.cert, &files.key, files.cert_check_interval_ms)?);
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(hub.clone())
        .with_client_cert_resolver(own.clone());
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.enable_early_data = false;
    // No session resumption: a resumed session is not verified again, so a hub certificate revoked (or a CA
    // dropped from the bundle) after the first handshake could be trusted on its old session.
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(ClientTls { config: cfg, own, hub })
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

/// What [`ReloadingTrust`] has in force.
#[derive(Debug)]
struct Trust<V: ?Sized> {
    verifier: Arc<V>,
    /// Stamps of the CA bundle and the CRL the verifier was built from.
    stamps: (Option<FileStamp>, Option<FileStamp>),
    checked_at: Instant,
    /// The stamps of the last pair of files that failed to load, reported once.
    failed: Option<(Option<FileStamp>, Option<FileStamp>)>,
    /// Whether a CRL file was loaded: from then on a missing CRL is a failure, not "no CRL".
    crl_loaded: bool,
}

/// Builds a verifier from the roots and CRLs in force.
type BuildVerifier<V> = fn(Arc<RootCertStore>, Vec<CertificateRevocationListDer<'static>>) -> Result<Arc<V>, TlsError>;

/// A verifier built from a CA bundle and a CRL, rebuilt when either file changes (see the module docs). The
/// hub's client verifier and a node's verifier of the hub are both one of these.
#[derive(Debug)]
struct ReloadingTrust<V: ?Sized> {
    ca_path: PathBuf,
    crl_path: PathBuf,
    /// The hub's CRL must be there; a node's is optional until it had one.
    crl_required: bool,
    check_interval: Duration,
    build: BuildVerifier<V>,
    /// Names the verifier in the log.
    role: &'static str,
    current: RwLock<Trust<V>>,
    /// Bumped whenever a changed CA bundle or CRL was loaded.
    generation: AtomicU64,
}

impl<V: ?Sized> ReloadingTrust<V> {
    fn new(
        ca_path: &Path,
        crl_path: &Path,
        crl_required: bool,
        check_interval_ms: u64,
        build: BuildVerifier<V>,
        role: &'static str,
    ) -> Result<Self, TlsError> {
        let stamps = (stamp(ca_path), stamp(crl_path));
        let (verifier, crl_loaded) = load_trust(ca_path, crl_path, crl_required, build)?;
        Ok(Self {
            ca_path: ca_path.to_owned(),
            crl_path: crl_path.to_owned(),
            crl_required,
            check_interval: Duration::from_millis(check_interval_ms),
            build,
            role,
            current: RwLock::new(Trust { verifier, stamps, checked_at: Instant::now(), failed: None, crl_loaded }),
            generation: AtomicU64::new(0),
        })
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Trust<V>> {
        match self.current.write() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Looks at both files now and loads them if either changed; whether a changed pair was loaded.
    fn refresh(&self) -> bool {
        self.reload(&mut self.write())
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The verifier in force, without looking at the files.
    fn in_force(&self) -> Arc<V> {
        match self.current.read() {
            Ok(c) => c.verifier.clone(),
            Err(poisoned) => poisoned.into_inner().verifier.clone(),
        }
    }

    fn reload(&self, c: &mut Trust<V>) -> bool {
        c.checked_at = Instant::now();
        let now = (stamp(&self.ca_path), stamp(&self.crl_path));
        if now == c.stamps || Some(now) == c.failed {
            return false;
        }
        match load_trust(&self.ca_path, &self.crl_path, self.crl_required || c.crl_loaded, self.build) {
            Ok((verifier, crl_loaded)) => {
                tracing::info!(verifier = self.role, ca = %self.ca_path.display(), crl = %self.crl_path.display(),
                    crl_loaded, "CA bundle or CRL changed; verifier reloaded");
                c.verifier = verifier;
                c.stamps = now;
                c.failed = None;
                c.crl_loaded = crl_loaded;
                self.generation.fetch_add(1, Ordering::AcqRel);
                true
            }
            Err(e) => {
                tracing::warn!(verifier = self.role, error = %e,
                    "CA bundle or CRL changed but does not load; keeping the previous ones");
                c.failed = Some(now);
                false
            }
        }
    }

    /// The verifier in force, after a look at the files if the check interval has passed.
    fn current(&self) -> Arc<V> {
        let (verifier, due) = match self.current.read() {
            Ok(c) => (c.verifier.clone(), c.checked_at.elapsed() >= self.check_interval),
            Err(poisoned) => (poisoned.into_inner().verifier.clone(), true),
        };
        if !due {
            return verifier;
        }
        let mut c = self.write();
        // Another handshake may have checked while we waited for the lock.
        if c.checked_at.elapsed() >= self.check_interval {
            self.reload(&mut c);
        }
        c.verifier.clone()
    }
}

/// Loads the CA bundle and, if it is there or `crl_required`, the CRL, and builds a verifier; also says
/// whether a CRL file was loaded.
fn load_trust<V: ?Sized>(
    ca_path: &Path,
    crl_path: &Path,
    crl_required: bool,
    build: BuildVerifier<V>,
) -> Result<(Arc<V>, bool), TlsError> {
    let roots = roots(ca_path)?;
    let crl_there = crl_required || crl_path.exists();
    let crls = if crl_there { load_crls(crl_path)? } else { vec![] };
    Ok((build(roots, crls)?, crl_there))
}

fn build_client_verifier(
    roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    Ok(WebPkiClientVerifier::builder_with_provider(roots, provider()).with_crls(crls).build()?)
}

fn build_server_verifier(
    roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    Ok(WebPkiServerVerifier::builder_with_provider(roots, provider()).with_crls(crls).build()?)
}

/// A client-certificate verifier that requires a certificate chained to a CA in the bundle, checks the CRL,
/// and rebuilds itself when the CA bundle or the CRL file changes. See the module docs.
#[derive(Debug)]
pub struct ReloadingClientVerifier {
    trust: ReloadingTrust<dyn ClientCertVerifier>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ReloadingClientVerifier {
    /// Loads the CA bundle and the CRL; fails if either is unusable at start. Both files are checked for
    /// changes at most every `crl_check_interval_ms` on a handshake, and by [`Self::refresh`].
    pub fn new(ca_path: &Path, crl_path: &Path, crl_check_interval_ms: u64) -> Result<Self, TlsError> {
        Ok(Self {
            trust: ReloadingTrust::new(
                ca_path,
                crl_path,
                true,
                crl_check_interval_ms,
                build_client_verifier,
                "client",
            )?,
            algorithms: provider().signature_verification_algorithms,
        })
    }

    /// Looks at the CA bundle and the CRL now, whatever the interval, and loads them if either changed. A
    /// handshake may load a change too, so a caller that must act on every change compares
    /// [`Self::generation`] instead.
    pub fn refresh(&self) {
        self.trust.refresh();
    }

    /// How many changed CA bundles or CRLs were loaded since start.
    pub fn generation(&self) -> u64 {
        self.trust.generation()
    }

    /// Verifies `chain` (leaf first) again, now, against the CA bundle and CRL in force: the same webpki
    /// check as a handshake's, so a live connection can be held to a CRL or bundle that changed since.
    pub fn verify_now(&self, chain: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
        let (leaf, intermediates) = chain.split_first().ok_or(rustls::Error::NoCertificatesPresented)?;
        self.trust.in_force().verify_client_cert(leaf, intermediates, UnixTime::now()).map(|_| ())
    }

    /// Whether the CRL in force revokes `chain` (leaf first; a chain already verified at its handshake).
    pub fn revokes(&self, chain: &[CertificateDer<'_>]) -> bool {
        matches!(self.verify_now(chain), Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)))
    }
}

impl ClientCertVerifier for ReloadingClientVerifier {
    /// None: the bundle may change under a running hub, and hints borrowed from it could not follow. Our
    /// nodes present their one certificate whatever the hints.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.trust.current().verify_client_cert(end_entity, intermediates, now)
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

/// A node's verifier of the hub's certificate: chained to a CA in the bundle (`ca.pem`), for the server name,
/// not revoked by the CRL (`crl.pem` beside it, if there), rebuilt when either file changes. A CRL once loaded
/// must stay: a deleted `crl.pem` keeps the last one in force rather than un-revoking the hub. See the module
/// docs.
#[derive(Debug)]
pub struct ReloadingServerVerifier {
    trust: ReloadingTrust<WebPkiServerVerifier>,
}

impl ReloadingServerVerifier {
    /// Loads the CA bundle and, if the file is there, the CRL; fails if either is unusable at start. Both
    /// files are checked for changes at most every `check_interval_ms` on a handshake, and by
    /// [`Self::check`] and [`Self::refresh`].
    pub fn new(ca_path: &Path, crl_path: &Path, check_interval_ms: u64) -> Result<Self, TlsError> {
        Ok(Self {
            trust: ReloadingTrust::new(ca_path, crl_path, false, check_interval_ms, build_server_verifier, "hub")?,
        })
    }

    /// Looks at both files now, whatever the interval, and loads them if either changed.
    pub fn refresh(&self) {
        self.trust.refresh();
    }

    /// Looks at both files if the check interval has passed since the last look.
    pub fn check(&self) {
        self.trust.current();
    }

    /// How many changed CA bundles or CRLs were loaded since start.
    pub fn generation(&self) -> u64 {
        self.trust.generation()
    }

    /// Verifies the hub's `chain` (leaf first) for `server_name` again, now, against the CA bundle and CRL in
    /// force, so a live link can be held to a CRL or bundle that changed since its handshake.
    pub fn verify_now(&self, chain: &[CertificateDer<'_>], server_name: &str) -> Result<(), rustls::Error> {
        let (leaf, intermediates) = chain.split_first().ok_or(rustls::Error::NoCertificatesPresented)?;
        let name = ServerName::try_from(server_name)
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))?;
        self.trust.in_force().verify_server_cert(leaf, intermediates, &name, &[], UnixTime::now()).map(|_| ())
    }
}

impl ServerCertVerifier for ReloadingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.trust.current().verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.trust.in_force().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.trust.in_force().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust.in_force().supported_verify_schemes()
    }
}

/// The close code for a peer certificate that a verification *now* refuses: `Revoked`, `CertificateExpired`,
/// or `Unauthorized` for anything else (no longer chained to a CA in the bundle, say).
pub fn refusal_code(error: &rustls::Error) -> oms_protocol::wire::ErrorCode {
    use oms_protocol::wire::ErrorCode;
    use rustls::CertificateError as E;
    match error {
        rustls::Error::InvalidCertificate(E::Revoked) => ErrorCode::Revoked,
        rustls::Error::InvalidCertificate(E::Expired | E::ExpiredContext { .. }) => ErrorCode::CertificateExpired,
        _ => ErrorCode::Unauthorized,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Identity, IssueOptions};

    /// A CA for `acme` in `dir` with one certificate issued for `identity` (hub certificates for
    /// `localhost`); returns the chain of that certificate.
    fn ca_with(dir: &Path, identity: &Identity) -> Vec<CertificateDer<'static>> {
        pki::ca_init(dir, "acme", time::Duration::days(365)).unwrap();
        let opts =
            IssueOptions { dns_names: vec!["localhost".into()], ..IssueOptions::valid_for(time::Duration::days(30)) };
        let issued = pki::issue(dir, dir, identity, &opts).unwrap();
        load_certs(&issued.cert_path).unwrap()
    }

    /// `parts` concatenated into `to`, written durably (as an operator's `cat a b > tmp && mv tmp to`).
    fn bundle(to: &Path, parts: &[PathBuf]) {
        let text: String = parts.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
        pki::write_durable(to, text.as_bytes(), pki::FileMode::Public).unwrap();
    }

    #[test]
    fn the_hubs_client_verifier_picks_up_a_replaced_ca_bundle_and_keeps_it_when_a_new_one_is_broken() {
        let (old, new) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let n1 = ca_with(old.path(), &Identity::node("acme", "n1").unwrap());
        let n2 = ca_with(new.path(), &Identity::node("acme", "n2").unwrap());
        let (ca, crl) = (old.path().join("ca.pem"), old.path().join("crl.pem"));
        // Interval 0: every handshake looks at the files, as a handshake would.
        let v = ReloadingClientVerifier::new(&ca, &crl, 0).unwrap();
        let handshake = |chain: &[CertificateDer<'static>]| v.verify_client_cert(&chain[0], &[], UnixTime::now());
        assert!(handshake(&n1).is_ok());
        assert!(handshake(&n2).is_err(), "a certificate of another CA");

        // The new CA in the bundle but no CRL of it: its certificates' revocation status is unknown, refused.
        bundle(&ca, &[old.path().join("ca.pem"), new.path().join("ca.pem")]);
        let refused = handshake(&n2).unwrap_err();
        assert!(
            matches!(refused, rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownRevocationStatus)),
            "{refused:?}"
        );
        // With a CRL of each CA: both CAs' certificates are in, without a new verifier.
        bundle(&crl, &[old.path().join("crl.pem"), new.path().join("crl.pem")]);
        assert!(handshake(&n2).is_ok());
        assert!(handshake(&n1).is_ok());
        assert_eq!(v.generation(), 2);

        // A broken bundle keeps the roots in force.
        pki::write_durable(&ca, b"-----BEGIN CERTIFICATE-----\nnot base64\n", pki::FileMode::Public).unwrap();
        assert!(handshake(&n2).is_ok() && handshake(&n1).is_ok());
        assert_eq!(v.generation(), 2);
        // Rollover done: only the new CA. The old CA's live sessions are refused on a check now.
        bundle(&ca, &[new.path().join("ca.pem")]);
        v.refresh();
        assert!(v.verify_now(&n2).is_ok());
        let e = v.verify_now(&n1).unwrap_err();
        assert_eq!(refusal_code(&e), oms_protocol::wire::ErrorCode::Unauthorized, "{e:?}");
    }

    #[test]
    fn a_nodes_verifier_of_the_hub_reloads_its_ca_bundle_and_checks_a_crl_once_there() {
        let (old, new, node) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        ca_with(old.path(), &Identity::hub("acme").unwrap());
        let hub = ca_with(new.path(), &Identity::hub("acme").unwrap());
        let (ca, crl) = (node.path().join("ca.pem"), node.path().join("crl.pem"));
        std::fs::copy(old.path().join("ca.pem"), &ca).unwrap();
        // No crl.pem: no revocation check, as before.
        let v = ReloadingServerVerifier::new(&ca, &crl, 3_600_000).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let handshake = |v: &ReloadingServerVerifier| v.verify_server_cert(&hub[0], &[], &name, &[], UnixTime::now());
        assert!(handshake(&v).is_err(), "a hub of another CA");
        bundle(&ca, &[old.path().join("ca.pem"), new.path().join("ca.pem")]);
        // Within the interval a handshake does not look; `check` does not either; `refresh` does.
        v.check();
        assert!(handshake(&v).is_err());
        v.refresh();
        assert!(handshake(&v).is_ok(), "the hub of the new CA, after the bundle changed");

        // The hub's serial revoked by its CA and the CRL copied to the node: refused, live links too.
        let serial = pki::cert_info(&hub[0]).unwrap().serial;
        pki::revoke(new.path(), &serial).unwrap();
        bundle(&crl, &[old.path().join("crl.pem"), new.path().join("crl.pem")]);
        v.refresh();
        let e = handshake(&v).unwrap_err();
        assert!(matches!(e, rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)), "{e:?}");
        assert_eq!(refusal_code(&v.verify_now(&hub, "localhost").unwrap_err()), oms_protocol::wire::ErrorCode::Revoked);
        // Deleting the CRL does not un-revoke.
        std::fs::remove_file(&crl).unwrap();
        v.refresh();
        assert!(handshake(&v).is_err(), "a deleted CRL un-revoked the hub");
        // A node started with that CRL refuses the hub from its first handshake.
        bundle(&crl, &[old.path().join("crl.pem"), new.path().join("crl.pem")]);
        let fresh = ReloadingServerVerifier::new(&ca, &crl, 0).unwrap();
        assert!(handshake(&fresh).is_err());
    }

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
            crl: dir.path().join("crl.pem"),
            crl_check_interval_ms: 0,
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
