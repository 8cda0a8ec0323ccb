//! Reading certificates back: identity, names, serial, validity, and how long they have left.
use super::crl::hex;
use super::{DAY_SECS, EXPIRY_WARNING_DAYS, Identity, PkiError};
use std::net::IpAddr;

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

pub(super) fn first_cert_der(pem: &str) -> Result<rustls::pki_types::CertificateDer<'static>, PkiError> {
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
