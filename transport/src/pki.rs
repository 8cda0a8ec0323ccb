//! A small file-based PKI for one tenant: a CA, node and hub certificates, and a CRL.
//!
//! Layout of a PKI directory: `ca.pem` / `ca.key` (the CA), `<name>.pem` / `<name>.key` per issued identity
//! (`hub` or `node-<id>`), `revoked.txt` (hex serials, one a line: the source of truth for revocations) and
//! `crl.pem` (regenerated from `revoked.txt` on every [`revoke`], written atomically by rename so a hub that
//! reloads it never reads half a file).
//!
//! An identity is carried in exactly one URI SAN: `oms://<tenant>/node/<id>` or `oms://<tenant>/hub`. It is
//! read back from the *verified* peer certificate with [`identity_from_cert_der`]; nothing a peer says in a
//! frame counts as identity. A hub certificate additionally carries DNS names, because the node verifies the
//! hub as a TLS server name.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use std::fmt;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// Longest tenant or node id, in bytes.
pub const NAME_BYTES_MAX: usize = 64;

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
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io { path: path.to_owned(), source })
}

/// Writes via a temporary file and rename, so readers see the old or the new file, never half of one.
fn write_atomic(path: &Path, contents: &str) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(|source| PkiError::Io { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, path).map_err(|source| PkiError::Io { path: path.to_owned(), source })
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
pub fn ca_init(dir: &Path, tenant: &str, validity: Duration) -> Result<(), PkiError> {
    check_name(tenant)?;
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io { path: dir.to_owned(), source })?;
    let (cert_path, key_path) = ca_paths(dir);
    if cert_path.exists() {
        return Err(PkiError::CaExists { path: cert_path });
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&format!("oms {tenant} CA"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + validity;
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key)?;
    write_atomic(&key_path, &key.serialize_pem())?;
    write_atomic(&cert_path, &cert.pem())?;
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
    /// DNS names the holder serves as (a hub's server names; empty for nodes).
    pub dns_names: Vec<String>,
    /// Marks the leaf as a CA. Only for testing that the hub refuses such a leaf.
    pub claim_ca: bool,
}

impl IssueOptions {
    /// Valid from a few minutes ago for `validity`, no DNS names.
    pub fn valid_for(validity: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        Self { not_before: now - Duration::minutes(5), not_after: now + validity, dns_names: vec![], claim_ca: false }
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

/// Issues a certificate for `identity`, signed by the CA in `ca_dir`, written to
/// `out_dir/<stem>.pem` and `out_dir/<stem>.key`.
pub fn issue(ca_dir: &Path, out_dir: &Path, identity: &Identity, opts: &IssueOptions) -> Result<Issued, PkiError> {
    let issuer = load_issuer(ca_dir)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&identity.uri());
    let uri = identity.uri().try_into()?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    for name in &opts.dns_names {
        params.subject_alt_names.push(SanType::DnsName(name.clone().try_into()?));
    }
    params.is_ca = if opts.claim_ca { IsCa::Ca(BasicConstraints::Unconstrained) } else { IsCa::ExplicitNoCa };
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match identity {
        Identity::Hub { .. } => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        Identity::Node { .. } => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.not_before = opts.not_before;
    params.not_after = opts.not_after;
    let serial = random_serial();
    params.serial_number = Some(serial.clone());
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer)?;
    std::fs::create_dir_all(out_dir).map_err(|source| PkiError::Io { path: out_dir.to_owned(), source })?;
    let stem = identity.file_stem();
    let cert_path = out_dir.join(format!("{stem}.pem"));
    let key_path = out_dir.join(format!("{stem}.key"));
    write_atomic(&key_path, &key.serialize_pem())?;
    write_atomic(&cert_path, &cert.pem())?;
    Ok(Issued { serial: serial.to_bytes(), cert_path, key_path })
}

fn hex(bytes: &[u8]) -> String {
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
    write_atomic(&dir.join("revoked.txt"), &text)?;
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
    write_atomic(&crl_path(dir), &crl.pem()?)
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
}
