//! Wire frames of the node ↔ hub sync protocol: length-prefixed postcard.
//!
//! A frame on a stream is a `u32` little-endian body length followed by a postcard body encoding [`Frame`].
//! The length is checked against a limit ([`FRAME_BYTES_MAX`] by default) *before* any buffer for the body is
//! allocated, so a peer cannot make us reserve memory by announcing a huge frame.
//!
//! These types are the wire contract, kept apart from the domain types on purpose: a domain type may change
//! shape freely, a wire type may not. Postcard encodes enum variants by index and struct fields in order, so
//! the rules for changing this file are:
//! - never reorder, remove or retype a field or a [`Frame`] variant; only append new variants at the end;
//! - new behaviour is announced by a [`capabilities`] bit in [`Hello`], never by a silently extended struct;
//! - [`Hello`] is frozen: its bytes are pinned by a golden test so that every version can read every other
//!   version's `Hello` and refuse politely with [`ErrorCode::UnsupportedVersion`].
//!
//! [`ErrorCode`] numbers double as QUIC application close codes and are stable.
//!
//! **Compression** (capability [`capabilities::DEFLATE`]): once both peers announced it, a sender may deflate
//! frame bodies. Such a frame sets [`COMPRESSED_FLAG`], the top bit of the length prefix (bodies are far below
//! 2 GiB, so the bit is free, and a peer that never announced the capability never receives one). All
//! compressed bodies of one stream direction form ONE raw-deflate stream (RFC 1951) that is sync-flushed at
//! the end of every frame, with the flush's constant `00 00 FF FF` tail left off and put back by the receiver,
//! as WebSocket's permessage-deflate does (RFC 7692 §7.2.1). The dictionary carries over from frame to frame,
//! so what a frame repeats of earlier ones (document ids, actor ids, keys, the unchanged parts of orders)
//! costs a few bits. The prefix states the compressed length, checked against the limit before anything is
//! buffered; the inflated body is checked against the same limit while it is inflated, so a small frame
//! cannot expand into a large allocation.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Version of this wire protocol spoken by this build.
pub const PROTOCOL_VERSION: u16 = 1;
/// Oldest protocol version this build still speaks.
pub const PROTOCOL_VERSION_MIN: u16 = 1;
/// Bytes of the length prefix in front of every frame body.
pub const LENGTH_PREFIX_BYTES: usize = 4;
/// Default largest frame body we accept or send, in bytes (4 MiB). Large Automerge sync messages are split by
/// Automerge itself into several rounds, so this bounds memory, not document size.
pub const FRAME_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Longest document id, in bytes.
pub const DOC_ID_BYTES_MAX: usize = 128;
/// Longest peer id, in bytes (`oms://<tenant>/node/<id>` fits easily).
pub const PEER_ID_BYTES_MAX: usize = 256;
/// Longest human-readable reason in a [`Frame::Refuse`], in bytes.
pub const REASON_BYTES_MAX: usize = 512;
/// Top bit of a length prefix: the body is deflated (see the module docs). Not part of the length.
pub const COMPRESSED_FLAG: u32 = 1 << 31;
/// An encoder allowed to deflate starts with the first body this large; smaller frames before it go plain.
pub const DEFLATE_START_BODY_BYTES: usize = 256;
/// ALPN protocol id of this protocol on QUIC.
pub const ALPN: &[u8] = b"oms/1";

/// Capability bits carried in [`Hello::capabilities`] and [`HelloAck::capabilities`].
pub mod capabilities {
    /// The peer understands [`super::Frame::Ping`] / [`super::Frame::Pong`].
    pub const PING: u64 = 1 << 0;
    /// The peer reads frames whose bodies are deflated with [`super::COMPRESSED_FLAG`] set (module docs).
    pub const DEFLATE: u64 = 1 << 1;
    /// The peer understands [`super::Frame::Digest`]: periodic anti-entropy rounds send a digest of the
    /// manifest instead of the manifest itself (see `sync` module docs).
    pub const MANIFEST_DIGEST: u64 = 1 << 2;
    /// The peer understands [`super::Frame::Buckets`] and [`super::Frame::Scope`]: periodic rounds send one
    /// digest per bucket of documents, and a mismatch is answered with a manifest of the differing buckets
    /// only (see `sync` module docs). Used only together with [`MANIFEST_DIGEST`].
    pub const MANIFEST_BUCKETS: u64 = 1 << 3;
    /// Every capability this build implements.
    pub const ALL: u64 = PING | DEFLATE | MANIFEST_DIGEST | MANIFEST_BUCKETS;
}

/// Typed errors a peer reports, as QUIC application close codes and in [`Frame::Refuse`] /
/// [`Frame::Refused`]. The numbers are stable: never renumber, only append.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Orderly close, nothing wrong.
    NoError = 0,
    /// A frame's announced length exceeds the receiver's limit.
    FrameTooLarge = 1,
    /// Bytes that do not decode as a frame, or a truncated frame.
    Malformed = 2,
    /// No protocol version both peers speak.
    UnsupportedVersion = 3,
    /// The peer's identity is not acceptable (wrong tenant, claims another id than its certificate).
    Unauthorized = 4,
    /// The peer asked for or offered a document it is not entitled to.
    NotEntitled = 5,
    /// Something went wrong on our side; the peer may retry later.
    Internal = 6,
    /// A well-formed frame arrived at a point where the protocol does not allow it.
    ProtocolViolation = 7,
    /// The peer sends faster than we can process, or exceeded a count limit.
    Overloaded = 8,
    /// The peer did not answer within the allotted time.
    Timeout = 9,
    /// The peer's certificate was revoked: the hub closes a live connection with this code when it reloads
    /// a CRL that names the certificate, and refuses every later handshake with it.
    Revoked = 10,
    /// The peer's quota at the receiver is used up (the hub's per-node documents or stored bytes): the
    /// document is refused ([`Frame::Refused`]) and its change not applied.
    QuotaExceeded = 11,
    /// A sync message's changes inflate (DEFLATE) beyond the receiver's bound: refused before inflating them,
    /// not applied.
    ChangeTooLarge = 12,
    /// Changes whose dependencies the receiver lacks beyond its per-session bound: dropped, not parked.
    MissingDependencies = 13,
    /// The peer asks for work (a manifest round) more often than the receiver's rate allows: deferred.
    RateLimited = 14,
    /// The peer's certificate passed its `not_after` while the connection was open: the hub closes a node's
    /// connection with this code when the node's certificate expires, and a node closes its link when the
    /// hub's does. A new handshake with the expired certificate is refused.
    CertificateExpired = 15,
    /// A code this build does not know (sent by a newer peer). Never sent by this build.
    Unknown = 0xFFFF_FFFF,
}

impl ErrorCode {
    /// The stable number of this code.
    pub fn as_u32(self) -> u32 {
        // cannot truncate: `#[repr(u32)]`, so this is the declared discriminant.
        self as u32
    }

    /// The code with this number, [`ErrorCode::Unknown`] for numbers this build does not know.
    pub fn from_u32(n: u32) -> Self {
        match n {
            0 => Self::NoError,
            1 => Self::FrameTooLarge,
            2 => Self::Malformed,
            3 => Self::UnsupportedVersion,
            4 => Self::Unauthorized,
            5 => Self::NotEntitled,
            6 => Self::Internal,
            7 => Self::ProtocolViolation,
            8 => Self::Overloaded,
            9 => Self::Timeout,
            10 => Self::Revoked,
            11 => Self::QuotaExceeded,
            12 => Self::ChangeTooLarge,
            13 => Self::MissingDependencies,
            14 => Self::RateLimited,
            15 => Self::CertificateExpired,
            _ => Self::Unknown,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}({})", self, self.as_u32())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.as_u32())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u32::deserialize(d).map(Self::from_u32)
    }
}

/// Identifies one Automerge document on the wire. At most [`DOC_ID_BYTES_MAX`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DocId(String);

impl DocId {
    /// A document id, or `None` if it is empty or longer than [`DOC_ID_BYTES_MAX`] bytes.
    pub fn new(id: impl Into<String>) -> Option<Self> {
        let id = id.into();
        (!id.is_empty() && id.len() <= DOC_ID_BYTES_MAX).then_some(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn is_valid(&self) -> bool {
        !self.0.is_empty() && self.0.len() <= DOC_ID_BYTES_MAX
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifies a peer: the URI from its certificate, e.g. `oms://acme/node/berlin-1` or `oms://acme/hub`.
/// At most [`PEER_ID_BYTES_MAX`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerId(String);

impl PeerId {
    /// A peer id, or `None` if it is empty or longer than [`PEER_ID_BYTES_MAX`] bytes.
    pub fn new(id: impl Into<String>) -> Option<Self> {
        let id = id.into();
        (!id.is_empty() && id.len() <= PEER_ID_BYTES_MAX).then_some(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn is_valid(&self) -> bool {
        !self.0.is_empty() && self.0.len() <= PEER_ID_BYTES_MAX
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An Automerge change hash (SHA-256), as raw bytes.
pub type Hash = [u8; 32];

/// First frame a connecting node sends. Frozen layout (see module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Newest protocol version the sender speaks.
    pub version: u16,
    /// Oldest protocol version the sender speaks.
    pub min_version: u16,
    /// Bitset of [`capabilities`].
    pub capabilities: u64,
    /// Who the sender says it is; must match its certificate.
    pub peer_id: PeerId,
    /// The sender's Automerge actor id for this process (informational, for logs and debugging).
    pub actor: Vec<u8>,
}

/// The hub's answer to an acceptable [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAck {
    /// The version both peers will speak from now on.
    pub version: u16,
    /// Capabilities both peers have (intersection).
    pub capabilities: u64,
    /// Who the hub is.
    pub peer_id: PeerId,
    /// The hub's Automerge actor id for this process.
    pub actor: Vec<u8>,
}

/// One document in a [`Manifest`]: its id and the sender's current heads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// The document.
    pub doc: DocId,
    /// The sender's heads of that document.
    pub heads: Vec<Hash>,
}

/// The documents the sender holds and shares with the receiver, with their heads. A manifest longer than the
/// per-frame limit is sent as several chunks; `last` marks the final chunk of one manifest round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Round number, increasing per sender and session, so chunks of an older round can be told apart.
    pub round: u32,
    /// Documents in this chunk.
    pub docs: Vec<ManifestEntry>,
    /// True on the final chunk of this round.
    pub last: bool,
}

/// A digest of the manifest the sender would send now (capability [`capabilities::MANIFEST_DIGEST`]): the
/// number of documents it would list and one hash over their ids and heads (`sync::ManifestDigest` defines
/// it). A receiver whose own digest differs answers with its full [`Manifest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// Round number, from the same counter as [`Manifest::round`].
    pub round: u32,
    /// How many documents the sender's manifest would list.
    pub docs: u64,
    /// The combined hash of those documents' ids and heads.
    pub hash: Hash,
}

/// Most buckets in one [`Buckets`] frame (a power of two): 4,096 bucket digests are about 74 KB.
pub const BUCKETS_MAX: u32 = 4096;

/// Bytes of a bucket's combined hash on the wire: the first half of its `sync::ManifestDigest` hash.
pub const BUCKET_HASH_BYTES: usize = 16;

/// One bucket of a [`Buckets`] frame: how many of the sender's documents fall in it and the first
/// [`BUCKET_HASH_BYTES`] bytes of their combined hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketDigest {
    /// Documents of the sender's manifest in this bucket.
    pub docs: u64,
    /// Their combined hash, truncated.
    pub hash: [u8; BUCKET_HASH_BYTES],
}

/// The sender's manifest split into buckets by document id, one digest per bucket (capability
/// [`capabilities::MANIFEST_BUCKETS`]); `sync::bucket_of` says which document falls in which bucket. Sent
/// instead of a [`Digest`] in periodic rounds. A receiver whose own digest of some bucket differs answers with
/// a [`Scope`] naming those buckets and a manifest of its documents in them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buckets {
    /// Round number, from the same counter as [`Manifest::round`].
    pub round: u32,
    /// One digest per bucket; their number is a power of two, at most [`BUCKETS_MAX`].
    pub buckets: Vec<BucketDigest>,
}

/// Announces that the sender's manifest round `round`, whose chunks follow, lists only its documents in the
/// `covered` buckets of `buckets` (capability [`capabilities::MANIFEST_BUCKETS`]): a document of those
/// buckets that the manifest does not name, the sender lacks; of other buckets it says nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// The manifest round this scope belongs to.
    pub round: u32,
    /// How many buckets the documents were split into: a power of two, at most [`BUCKETS_MAX`].
    pub buckets: u32,
    /// The buckets listed, ascending, each below `buckets`.
    pub covered: Vec<u32>,
}

impl Scope {
    /// True if the bucket count is a power of two within [`BUCKETS_MAX`] and `covered` ascends below it.
    pub fn is_valid(&self) -> bool {
        buckets_count_valid(self.buckets)
            && self.covered.windows(2).all(|w| w[0] < w[1])
            && self.covered.last().is_none_or(|&b| b < self.buckets)
    }
}

/// True if `n` buckets may travel: a power of two no greater than [`BUCKETS_MAX`].
pub fn buckets_count_valid(n: u32) -> bool {
    n.is_power_of_two() && n <= BUCKETS_MAX
}

/// Everything that travels on a sync stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Node → hub, first frame.
    Hello(Hello),
    /// Hub → node, accepts the [`Hello`].
    HelloAck(HelloAck),
    /// Refuses the whole session; the sender closes the connection with the same code.
    Refuse {
        /// Why.
        code: ErrorCode,
        /// For a person, at most [`REASON_BYTES_MAX`] bytes.
        reason: String,
    },
    /// A chunk of the sender's manifest.
    Manifest(Manifest),
    /// One Automerge sync message (`automerge::sync::Message::encode`) for one document.
    Sync {
        /// The document.
        doc: DocId,
        /// Encoded `automerge::sync::Message`.
        msg: Vec<u8>,
    },
    /// The sender has nothing more to send for `doc` and these are its heads.
    Ack {
        /// The document.
        doc: DocId,
        /// The sender's heads.
        heads: Vec<Hash>,
    },
    /// The sender will not sync `doc` with the receiver.
    Refused {
        /// The document.
        doc: DocId,
        /// Why, usually [`ErrorCode::NotEntitled`].
        code: ErrorCode,
    },
    /// Liveness probe (capability [`capabilities::PING`]).
    Ping {
        /// Echoed in the [`Frame::Pong`].
        nonce: u64,
    },
    /// Answer to [`Frame::Ping`].
    Pong {
        /// The nonce of the ping.
        nonce: u64,
    },
    /// A digest of the sender's manifest, sent instead of it in periodic rounds (capability
    /// [`capabilities::MANIFEST_DIGEST`]). Appended last so that the variants before it keep their tags.
    Digest(Digest),
    /// The sender's manifest digest per bucket, sent instead of a [`Frame::Digest`] in periodic rounds
    /// (capability [`capabilities::MANIFEST_BUCKETS`]). Appended after `Digest`.
    Buckets(Buckets),
    /// The buckets the manifest round that follows covers (capability [`capabilities::MANIFEST_BUCKETS`]).
    Scope(Scope),
}

impl Frame {
    /// Checks the length limits that serde cannot express (ids, reasons).
    fn validate(&self) -> Result<(), WireError> {
        let bad = |what: &'static str| Err(WireError::Invalid { what });
        match self {
            Frame::Hello(h) if !h.peer_id.is_valid() => bad("hello peer id"),
            Frame::HelloAck(h) if !h.peer_id.is_valid() => bad("hello-ack peer id"),
            Frame::Refuse { reason, .. } if reason.len() > REASON_BYTES_MAX => bad("refuse reason"),
            Frame::Manifest(m) if m.docs.iter().any(|e| !e.doc.is_valid()) => bad("manifest doc id"),
            Frame::Sync { doc, .. } | Frame::Ack { doc, .. } | Frame::Refused { doc, .. } if !doc.is_valid() => {
                bad("doc id")
            }
            // Fixed-size fields only: postcard has checked everything there is to check.
            Frame::Digest(_) => Ok(()),
            Frame::Buckets(b) if !u32::try_from(b.buckets.len()).is_ok_and(buckets_count_valid) => bad("bucket count"),
            Frame::Scope(s) if !s.is_valid() => bad("scope buckets"),
            _ => Ok(()),
        }
    }
}

mod framing;
pub use framing::*;

#[cfg(test)]
mod tests;
