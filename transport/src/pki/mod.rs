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
//!
//! The code, by what it does:
//! - `files`: durable writes ([`write_durable`], [`FileMode`]), the private directory and the paths of the
//!   files in a PKI directory;
//! - `issuing`: the CA ([`ca_init`]) and the certificates it issues ([`issue`], [`issue_http`], [`IssueOptions`]);
//! - `renewal`: [`renew`], [`renew_http`] ([`KeyChoice`]) and the archive of the replaced pairs ([`Archived`]);
//! - `inspect`: reading certificates back ([`cert_info`], [`identity_from_cert_der`]) and their [`expiry`];
//! - `crl`: revocation ([`revoke`], `revoked.txt`) and the CRL;
//! - here: [`Identity`], [`PkiError`] and the limits on names and expiry.
use std::fmt;
use std::path::PathBuf;

mod crl;
mod files;
mod inspect;
mod issuing;
mod renewal;
#[cfg(test)]
mod tests;

pub use crl::{hex, revoke, revoked_serials};
pub use files::{
    FileMode, PRIVATE_DIR_MODE, ca_paths, crl_path, http_paths, identity_paths, private_dir, write_durable,
};
pub use inspect::{
    CertInfo, Expiry, cert_info, cert_info_pem, expiry, identity_from_cert_der, server_cert_info, server_cert_info_pem,
};
pub use issuing::{IssueOptions, Issued, ca_init, issue, issue_http};
pub use renewal::{ARCHIVE_DIR, ARCHIVE_KEEP, Archived, KeyChoice, Renewed, renew, renew_http};

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
