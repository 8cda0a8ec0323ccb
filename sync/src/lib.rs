//! The I/O half of node ↔ hub sync, as `quinn` is to `quinn-proto`: the sans-IO session lives in
//! `oms_protocol::sync`; this crate gives it a disk and a stream.
//!
//! - [`docdb`]: Automerge documents, per-(peer, document) sync states and counters in one redb file, with a
//!   two-phase flush so a caller can release its lock during the fsync.
//! - [`docs`]: [`SyncDocs`], the one `DocStore` over a [`DocDb`] that the node and the hub both hand to their
//!   sessions; what differs between them (who may see which document) is an [`Access`] policy.
//! - [`link`]: the framed reader task and writer of one QUIC stream, and why a connection ended.
//!
//! Node and hub both depend on this crate; it depends on neither.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs, unreachable_pub)]

pub mod docdb;
pub mod docs;
pub mod link;

pub use docdb::{DocDb, DocDbError, FlushBatch, StateHistory};
#[cfg(any(test, feature = "test-support"))]
pub use docs::Everything;
pub use docs::{Access, SyncDocs};
