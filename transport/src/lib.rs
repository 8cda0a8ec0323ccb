//! QUIC transport of oms sync: the tenant PKI, mutually-authenticated quinn endpoints, framed streams, a
//! reconnect backoff and a fault-injecting UDP relay for tests.
//!
//! This crate moves bytes and checks identities; it knows nothing about documents. The sync logic is the
//! sans-IO `oms_protocol::sync::SyncSession`, which a driver (node or hub) feeds with frames read here.
//! Identity comes only from the verified certificate ([`endpoint::peer_identity`]), never from a frame.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs, unreachable_pub)]

pub mod backoff;
pub mod endpoint;
pub mod pki;
pub mod relay;
pub mod tls;

pub use endpoint::{
    EndpointError, FrameIoError, FramedStream, Limits, accept_bi, client_endpoint, client_endpoint_with, close,
    close_code, connect, open_bi, peer_cert_info, peer_certificates, peer_identity, server_endpoint,
    server_endpoint_with,
};
pub use pki::{CertInfo, Identity, IssueOptions, Issued, PkiError};
