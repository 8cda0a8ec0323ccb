//! Revocation: `revoked.txt`, the source of truth, and `crl.pem`, made from it on every [`revoke`].
use super::PkiError;
use super::files::{FileMode, crl_path, read, write_durable};
use super::issuing::load_issuer;
use rcgen::{CertificateRevocationListParams, RevokedCertParams, SerialNumber};
use std::path::Path;
use time::{Duration, OffsetDateTime};

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

pub(super) fn write_crl(dir: &Path, serials: &[Vec<u8>]) -> Result<(), PkiError> {
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
