//! rustls configurations for the hub (server) and nodes (clients): TLS 1.3 only, mutual authentication
//! against the tenant CA, ALPN `oms/1`, no 0-RTT.
//!
//! The hub verifies client certificates with webpki and the CA's CRL. The CRL is **reloaded when its file
//! changes**: [`ReloadingClientVerifier`] wraps a `WebPkiClientVerifier` behind an `RwLock` and, on a
//! handshake, looks at the file's modification time and length at most once per `crl_check_interval_ms`
//! (0 = on every handshake, which costs one `stat`). We chose the check-on-handshake design over a
//! watcher task because it needs no runtime, no extra thread, and a revocation takes effect on the very next
//! handshake after the interval. A CRL that fails to load (half-copied by hand, say) keeps the previous
//! verifier in force and is retried on the next check: a bad file must not lock every node out, and it
//! cannot un-revoke anything because `pki::revoke` only ever adds serials. Existing connections are not
//! cut by a revocation; the hub drops them by policy if it wants to.
//!
//! Session resumption is disabled on the hub, so every connection is verified against the current CRL.
//! webpki refuses a leaf certificate that claims to be a CA (`CaUsedAsEndEntity`); a test pins that.

use oms_protocol::wire::ALPN;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

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
    /// The hub's certificate chain.
    pub cert: PathBuf,
    /// The hub's private key.
    pub key: PathBuf,
    /// The CA's CRL, reloaded when it changes.
    pub crl: PathBuf,
    /// How often at most the CRL file is checked for changes, in milliseconds (0: every handshake).
    pub crl_check_interval_ms: u64,
}

/// Files a node needs.
#[derive(Debug, Clone)]
pub struct ClientTlsFiles {
    /// CA certificate(s) that the hub's certificate must chain to.
    pub ca: PathBuf,
    /// The node's certificate chain.
    pub cert: PathBuf,
    /// The node's private key.
    pub key: PathBuf,
}

/// The hub's rustls configuration.
pub fn server_config(files: &ServerTlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    let verifier = ReloadingClientVerifier::new(&files.ca, &files.crl, files.crl_check_interval_ms)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    // No 0-RTT: early data can be replayed, and every sync frame may write.
    cfg.max_early_data_size = 0;
    cfg.send_half_rtt_data = false;
    // No session resumption: a resumed session skips client-certificate verification, so a node revoked
    // after its first handshake could come back on its old session. A full handshake per connection is cheap
    // at our connection rate.
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(cfg)
}

/// A node's rustls configuration.
pub fn client_config(files: &ClientTlsFiles) -> Result<rustls::ClientConfig, TlsError> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(&files.ca)?, provider())
        .build()
        .map_err(TlsError::Verifier)?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(load_certs(&files.cert)?, load_key(&files.key)?)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.enable_early_data = false;
    Ok(cfg)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp { modified: meta.modified().ok(), len: meta.len() })
}

#[derive(Debug)]
struct Current {
    verifier: Arc<dyn ClientCertVerifier>,
    stamp: Option<FileStamp>,
    checked_at: Instant,
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
            current: RwLock::new(Current { verifier, stamp, checked_at: Instant::now() }),
        })
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
        c.checked_at = Instant::now();
        let now = stamp(&self.crl_path);
        if now != c.stamp {
            match build_client_verifier(&self.roots, &self.crl_path) {
                Ok(v) => {
                    tracing::info!(crl = %self.crl_path.display(), "CRL changed; client verifier reloaded");
                    c.verifier = v;
                    c.stamp = now;
                }
                Err(e) => {
                    tracing::warn!(crl = %self.crl_path.display(), error = %e, "CRL reload failed; keeping the previous one");
                }
            }
        }
        c.verifier.clone()
    }
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
