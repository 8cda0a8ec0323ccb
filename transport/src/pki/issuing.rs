//! The CA ([`ca_init`]) and issuing ([`issue`], [`issue_http`]); what an HTTP server certificate is, is in
//! the docs of [`pki`](super).
#[cfg(doc)]
use super::crl::revoke;
use super::crl::write_crl;
use super::files::{FileMode, ca_paths, http_paths, identity_paths, private_dir, read, write_durable};
use super::{Identity, PkiError, check_name};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

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

pub(super) fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, PkiError> {
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
pub(super) enum Subject<'a> {
    /// A node or the hub: the identity in one URI SAN.
    Identity(&'a Identity),
    /// An HTTP server: names and addresses, no identity.
    Http(&'a str),
}

impl Subject<'_> {
    pub(super) fn paths(self, dir: &Path) -> (PathBuf, PathBuf) {
        match self {
            Subject::Identity(identity) => identity_paths(dir, identity),
            Subject::Http(name) => http_paths(dir, name),
        }
    }
}

pub(super) fn issue_with_key(
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
