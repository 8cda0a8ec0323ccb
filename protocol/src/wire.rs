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

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
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
/// The tail every sync flush ends with; left off on the wire.
const SYNC_FLUSH_TAIL: [u8; 4] = [0, 0, 0xFF, 0xFF];
/// Deflate level of compressed frames: 6 is zlib's default balance; frames are small, so the cost is in the
/// per-frame flush, not the level.
const DEFLATE_LEVEL: u32 = 6;
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

/// Why bytes could not be turned into a frame, or a frame into bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The announced (or encoded) body length exceeds the limit; nothing was allocated for it.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The body is not a valid postcard [`Frame`].
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The body decoded but a field breaks a length limit.
    #[error("invalid frame: {what} out of bounds")]
    Invalid {
        /// Which field.
        what: &'static str,
    },
    /// A compressed body does not inflate (the peer's deflate stream is corrupt or out of step).
    #[error("compressed frame does not inflate: {0}")]
    Inflate(String),
    /// Our own compressor failed; the stream cannot continue.
    #[error("frame compression failed: {0}")]
    Deflate(String),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the partial frame.
        buffered: usize,
    },
}

impl WireError {
    /// The code to close the connection with.
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            WireError::Malformed(_)
            | WireError::Invalid { .. }
            | WireError::Truncated { .. }
            | WireError::Inflate(_) => ErrorCode::Malformed,
            WireError::Deflate(_) => ErrorCode::Internal,
        }
    }
}

/// Encodes `frame` as length prefix + body, appending to `out`.
pub fn encode_frame_into(frame: &Frame, frame_bytes_max: usize, out: &mut Vec<u8>) -> Result<(), WireError> {
    let body = encode_body(frame, frame_bytes_max)?;
    put_prefixed(out, &body, 0, frame_bytes_max)
}

/// The plain postcard body of a valid `frame`, refused if it exceeds `frame_bytes_max`.
fn encode_body(frame: &Frame, frame_bytes_max: usize) -> Result<Vec<u8>, WireError> {
    frame.validate()?;
    let body = postcard::to_allocvec(frame).map_err(|e| WireError::Malformed(e.to_string()))?;
    if body.len() > frame_bytes_max {
        return Err(WireError::FrameTooLarge { len: body.len(), max: frame_bytes_max });
    }
    Ok(body)
}

/// Appends the length prefix of `body` (with `flags` set in it) and `body`. `body` is at most
/// `frame_bytes_max` bytes (checked by the callers); a length that does not fit the prefix is refused.
fn put_prefixed(out: &mut Vec<u8>, body: &[u8], flags: u32, frame_bytes_max: usize) -> Result<(), WireError> {
    let len = body.len();
    let prefix = u32::try_from(len).map_err(|_| WireError::FrameTooLarge { len, max: frame_bytes_max })? | flags;
    out.reserve(LENGTH_PREFIX_BYTES + len);
    out.extend_from_slice(&prefix.to_le_bytes());
    out.extend_from_slice(body);
    Ok(())
}

/// Encodes the frames of one stream direction, deflating their bodies once [`FrameEncoder::enable_deflate`]
/// was called (both peers announced [`capabilities::DEFLATE`]). Frames must be written in the order they
/// were encoded: the compressed ones share one deflate stream.
pub struct FrameEncoder {
    frame_bytes_max: usize,
    /// Compression was agreed.
    deflate_agreed: bool,
    /// Boxed: the compressor's tables are ≈ 350 KiB, allocated with the first body of at least
    /// [`DEFLATE_START_BODY_BYTES`] after compression was agreed (a hub with a hundred sessions that only
    /// acknowledge would otherwise hold 35 MB of tables for nothing).
    deflate: Option<Box<Compress>>,
    /// Reused output buffer of the compressor.
    scratch: Vec<u8>,
}

impl fmt::Debug for FrameEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameEncoder")
            .field("frame_bytes_max", &self.frame_bytes_max)
            .field("deflate", &self.deflate.is_some())
            .finish()
    }
}

impl FrameEncoder {
    /// An encoder of bodies of at most `frame_bytes_max` bytes (before compression), not compressing yet.
    pub fn new(frame_bytes_max: usize) -> Self {
        Self { frame_bytes_max, deflate_agreed: false, deflate: None, scratch: Vec::new() }
    }

    /// Deflates the frames encoded from now on: from the first whose body has at least
    /// [`DEFLATE_START_BODY_BYTES`], every frame. Idempotent.
    pub fn enable_deflate(&mut self) {
        self.deflate_agreed = true;
    }

    /// True once frames are deflated.
    pub fn deflating(&self) -> bool {
        self.deflate.is_some()
    }

    /// Encodes `frame` as length prefix + (possibly deflated) body, appending to `out`. On error `out` is
    /// unchanged; after a [`WireError::Deflate`] the stream cannot continue.
    pub fn encode_into(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), WireError> {
        let body = encode_body(frame, self.frame_bytes_max)?;
        if self.deflate_agreed && self.deflate.is_none() && body.len() >= DEFLATE_START_BODY_BYTES {
            self.deflate = Some(Box::new(Compress::new(Compression::new(DEFLATE_LEVEL), false)));
        }
        let Some(z) = self.deflate.as_deref_mut() else {
            return put_prefixed(out, &body, 0, self.frame_bytes_max);
        };
        deflate_sync(z, &body, &mut self.scratch)?;
        let len = self.scratch.len();
        if len > self.frame_bytes_max {
            // The deflate stream already holds this body: the stream is out of step with what was sent.
            self.deflate = None;
            self.deflate_agreed = false;
            let too_large = WireError::FrameTooLarge { len, max: self.frame_bytes_max };
            return Err(WireError::Deflate(too_large.to_string()));
        }
        put_prefixed(out, &self.scratch, COMPRESSED_FLAG, self.frame_bytes_max)
    }
}

/// Deflates `body` into `out` (cleared first) with a sync flush and drops the flush's constant tail.
fn deflate_sync(z: &mut Compress, body: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
    out.clear();
    // Deflate never grows data by more than 5 bytes per 16 KiB stored block; the flush adds a few more.
    out.reserve(body.len() + body.len() / 1024 + 64);
    let start_in = z.total_in();
    // Bounded: every round either consumes input or fills the spare capacity, which then grows by at least
    // 64 bytes; the output of a sync flush is bounded by the bound above, so a handful of rounds suffice.
    for _ in 0..64 {
        let consumed = usize::try_from(z.total_in() - start_in).unwrap_or(usize::MAX).min(body.len());
        z.compress_vec(&body[consumed..], out, FlushCompress::Sync).map_err(|e| WireError::Deflate(e.to_string()))?;
        let consumed = usize::try_from(z.total_in() - start_in).unwrap_or(usize::MAX);
        if consumed >= body.len() && out.len() < out.capacity() {
            return match out.strip_suffix(&SYNC_FLUSH_TAIL) {
                Some(kept) => {
                    let kept = kept.len();
                    out.truncate(kept);
                    Ok(())
                }
                None => Err(WireError::Deflate("sync flush did not end with its tail".into())),
            };
        }
        out.reserve(out.capacity().max(64));
    }
    Err(WireError::Deflate("compressor made no progress".into()))
}

/// Inflates one compressed body with the stream's decompressor, refusing output beyond `max` bytes.
fn inflate_sync(z: &mut Decompress, body: &[u8], max: usize) -> Result<Vec<u8>, WireError> {
    let mut input = Vec::with_capacity(body.len() + SYNC_FLUSH_TAIL.len());
    input.extend_from_slice(body);
    input.extend_from_slice(&SYNC_FLUSH_TAIL);
    // At least 64 bytes to start with, never more than `max` + 1 (a limit below 63 bytes is allowed: `clamp`
    // would panic there; found by the `frame_decoder` fuzz target in CI).
    let mut out: Vec<u8> = Vec::with_capacity(body.len().saturating_mul(4).max(64).min(max.saturating_add(1)));
    let start_in = z.total_in();
    let mut consumed = 0usize;
    // Bounded: each round consumes input or fills the output, which grows until it passes `max`.
    for _ in 0..4096 {
        let before = (z.total_in(), z.total_out());
        let status = z
            .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
            .map_err(|e| WireError::Inflate(e.to_string()))?;
        consumed = usize::try_from(z.total_in() - start_in).unwrap_or(usize::MAX).min(input.len());
        if out.len() > max {
            return Err(WireError::FrameTooLarge { len: out.len(), max });
        }
        if status == flate2::Status::StreamEnd {
            return Err(WireError::Inflate("the deflate stream ended; frames never end it".into()));
        }
        if consumed >= input.len() && out.len() < out.capacity() {
            return Ok(out);
        }
        if out.len() == out.capacity() {
            let grow = out.capacity().min(max.saturating_add(1).saturating_sub(out.capacity())).max(1);
            out.reserve_exact(grow);
        } else if before == (z.total_in(), z.total_out()) {
            return Err(WireError::Inflate("no progress: truncated or corrupt deflate data".into()));
        }
    }
    Err(WireError::Inflate("body inflates in too many rounds".into()))
}

/// Encodes `frame` as length prefix + body with the default [`FRAME_BYTES_MAX`].
pub fn encode_frame(frame: &Frame) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    encode_frame_into(frame, FRAME_BYTES_MAX, &mut out)?;
    Ok(out)
}

/// Decodes one frame body (without length prefix).
pub fn decode_body(body: &[u8]) -> Result<Frame, WireError> {
    let (frame, rest) = postcard::take_from_bytes::<Frame>(body).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Malformed(format!("{} trailing bytes after frame", rest.len())));
    }
    frame.validate()?;
    Ok(frame)
}

/// Reads the body length from a length prefix, refusing it if it exceeds `frame_bytes_max`. A prefix with
/// [`COMPRESSED_FLAG`] reads as a length above any limit: use [`decode_prefix`] where compression is allowed.
pub fn decode_length(prefix: [u8; LENGTH_PREFIX_BYTES], frame_bytes_max: usize) -> Result<usize, WireError> {
    // cannot truncate: usize has at least 32 bits (asserted below).
    let len = u32::from_le_bytes(prefix) as usize;
    if len > frame_bytes_max {
        return Err(WireError::FrameTooLarge { len, max: frame_bytes_max });
    }
    Ok(len)
}

/// Reads a length prefix: the body length (checked against `frame_bytes_max`) and whether it is deflated.
pub fn decode_prefix(prefix: [u8; LENGTH_PREFIX_BYTES], frame_bytes_max: usize) -> Result<(usize, bool), WireError> {
    let raw = u32::from_le_bytes(prefix);
    let compressed = raw & COMPRESSED_FLAG != 0;
    // cannot truncate: usize has at least 32 bits (asserted below).
    let len = (raw & !COMPRESSED_FLAG) as usize;
    if len > frame_bytes_max {
        return Err(WireError::FrameTooLarge { len, max: frame_bytes_max });
    }
    Ok((len, compressed))
}

// The `u32 as usize` length casts above rely on this.
const _: () = assert!(usize::BITS >= 32);

/// Incremental decoder: feed it byte chunks of any size, take complete frames out. Deflated frames
/// ([`COMPRESSED_FLAG`]) are inflated with one decompressor per decoder, i.e. per stream direction.
///
/// Memory stays bounded by the largest accepted frame plus one pushed chunk: the length prefix is checked as
/// soon as it is complete, an inflated body may not exceed the same limit, and after an error the decoder
/// drops its buffer and refuses further input.
pub struct FrameDecoder {
    buf: Vec<u8>,
    frame_bytes_max: usize,
    failed: Option<WireError>,
    /// Created at the first deflated frame.
    inflate: Option<Box<Decompress>>,
}

impl fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("buffered", &self.buf.len())
            .field("frame_bytes_max", &self.frame_bytes_max)
            .field("failed", &self.failed)
            .field("inflate", &self.inflate.is_some())
            .finish()
    }
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(FRAME_BYTES_MAX)
    }
}

impl FrameDecoder {
    /// A decoder accepting bodies of at most `frame_bytes_max` bytes.
    pub fn new(frame_bytes_max: usize) -> Self {
        Self { buf: Vec::new(), frame_bytes_max, failed: None, inflate: None }
    }

    /// Appends received bytes. Ignored once the decoder has failed.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        // Check the prefix of the frame being assembled before buffering its body.
        if self.buf.len() < LENGTH_PREFIX_BYTES {
            let need = LENGTH_PREFIX_BYTES - self.buf.len();
            let (head, tail) = bytes.split_at(need.min(bytes.len()));
            self.buf.extend_from_slice(head);
            if self.buf.len() == LENGTH_PREFIX_BYTES
                && let Err(e) = self.prefix_len()
            {
                self.fail(e);
                return;
            }
            if !tail.is_empty() {
                self.buf.extend_from_slice(tail);
            }
        } else {
            self.buf.extend_from_slice(bytes);
        }
    }

    fn prefix_len(&self) -> Result<(usize, bool), WireError> {
        let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
        prefix.copy_from_slice(&self.buf[..LENGTH_PREFIX_BYTES]);
        decode_prefix(prefix, self.frame_bytes_max)
    }

    fn fail(&mut self, e: WireError) {
        self.buf = Vec::new();
        self.failed = Some(e);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed. After an error every call returns it.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.len() < LENGTH_PREFIX_BYTES {
            return Ok(None);
        }
        let (len, compressed) = match self.prefix_len() {
            Ok(prefix) => prefix,
            Err(e) => {
                self.fail(e.clone());
                return Err(e);
            }
        };
        let end = LENGTH_PREFIX_BYTES + len;
        if self.buf.len() < end {
            return Ok(None);
        }
        let body = &self.buf[LENGTH_PREFIX_BYTES..end];
        let result = if compressed {
            let z = self.inflate.get_or_insert_with(|| Box::new(Decompress::new(false)));
            inflate_sync(z, body, self.frame_bytes_max).and_then(|plain| decode_body(&plain))
        } else {
            decode_body(body)
        };
        self.buf.drain(..end);
        // A following frame's prefix may already be complete: check it now so an oversized one is refused
        // before its body is buffered by the next push.
        if self.buf.len() >= LENGTH_PREFIX_BYTES
            && let Err(e) = self.prefix_len()
        {
            self.fail(e);
        }
        match result {
            Ok(frame) => Ok(Some(frame)),
            Err(e) => {
                self.fail(e.clone());
                Err(e)
            }
        }
    }

    /// Call at end of stream: an error if a partial frame is buffered.
    pub fn finish(&self) -> Result<(), WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.is_empty() { Ok(()) } else { Err(WireError::Truncated { buffered: self.buf.len() }) }
    }

    /// Bytes buffered and not yet returned as a frame.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hello() -> Frame {
        Frame::Hello(Hello {
            version: 1,
            min_version: 1,
            capabilities: capabilities::PING,
            peer_id: PeerId::new("oms://acme/node/n1").unwrap(),
            actor: vec![0xAB, 0xCD],
        })
    }

    /// Found by the `frame_decoder` fuzz target: a compressed body under a limit below 63 bytes panicked
    /// (`clamp` with min > max) instead of refusing the frame as too large.
    #[test]
    fn a_compressed_body_under_a_tiny_limit_is_refused_not_a_panic() {
        let mut z = Compress::new(Compression::new(DEFLATE_LEVEL), false);
        let mut body = Vec::with_capacity(64);
        deflate_sync(&mut z, &[7u8; 200], &mut body).unwrap();
        for max in [0, 1, 62, 63] {
            let got = inflate_sync(&mut Decompress::new(false), &body, max);
            assert!(matches!(got, Err(WireError::FrameTooLarge { max: m, .. }) if m == max), "{max}: {got:?}");
        }
        assert_eq!(inflate_sync(&mut Decompress::new(false), &body, 200).unwrap(), vec![7u8; 200]);
    }

    /// Pins the bytes of `Hello` v1: if this test fails, old nodes can no longer talk to this hub.
    #[test]
    fn golden_hello_v1() {
        let bytes = encode_frame(&hello()).unwrap();
        let mut expected = vec![26, 0, 0, 0]; // body length
        expected.extend_from_slice(&[0, 1, 1, 1, 18]); // variant 0, version, min_version, caps, id len
        expected.extend_from_slice(b"oms://acme/node/n1");
        expected.extend_from_slice(&[2, 0xAB, 0xCD]);
        assert_eq!(bytes, expected);
    }

    /// Pins the bytes of `Manifest` v1.
    #[test]
    fn golden_manifest_v1() {
        let frame = Frame::Manifest(Manifest {
            round: 7,
            docs: vec![ManifestEntry { doc: DocId::new("d1").unwrap(), heads: vec![[0x11; 32]] }],
            last: true,
        });
        let bytes = encode_frame(&frame).unwrap();
        let mut expected = vec![3, 7, 1, 2, b'd', b'1', 1];
        expected.extend_from_slice(&[0x11; 32]);
        expected.push(1);
        let mut prefixed = (expected.len() as u32).to_le_bytes().to_vec();
        prefixed.extend_from_slice(&expected);
        assert_eq!(bytes, prefixed);
    }

    /// Pins the bytes of `Digest`: the variant is appended after `Pong` (tag 9), so every earlier variant
    /// keeps its tag and an old peer, which never announces the capability, never receives one.
    #[test]
    fn golden_digest_v1() {
        let frame = Frame::Digest(Digest { round: 300, docs: 2, hash: [0x22; 32] });
        let bytes = encode_frame(&frame).unwrap();
        let mut expected = vec![9, 0xAC, 0x02, 2]; // variant 9, round 300 and docs 2 as varints
        expected.extend_from_slice(&[0x22; 32]);
        let mut prefixed = (expected.len() as u32).to_le_bytes().to_vec();
        prefixed.extend_from_slice(&expected);
        assert_eq!(bytes, prefixed);
        assert_eq!(decode_body(&bytes[LENGTH_PREFIX_BYTES..]), Ok(frame));
    }

    #[test]
    fn digest_round_trips_and_truncated_digest_is_malformed() {
        let frame = Frame::Digest(Digest { round: u32::MAX, docs: u64::MAX, hash: [0xFE; 32] });
        let mut enc = FrameEncoder::new(FRAME_BYTES_MAX);
        enc.enable_deflate();
        let mut bytes = Vec::new();
        enc.encode_into(&frame, &mut bytes).unwrap();
        let mut d = FrameDecoder::default();
        d.push(&bytes);
        assert_eq!(decode_all(&mut d), vec![frame.clone()]);
        // A digest whose hash is cut short does not decode, and neither does one with bytes after it.
        let body = postcard::to_allocvec(&frame).unwrap();
        assert!(matches!(decode_body(&body[..body.len() - 1]), Err(WireError::Malformed(_))));
        let mut longer = body.clone();
        longer.push(0);
        assert!(matches!(decode_body(&longer), Err(WireError::Malformed(_))));
        const { assert!(capabilities::ALL & capabilities::MANIFEST_DIGEST != 0) };
        const { assert!(capabilities::MANIFEST_DIGEST & (capabilities::PING | capabilities::DEFLATE) == 0) };
    }

    /// Pins the bytes of `Buckets` and `Scope`: appended after `Digest` (tags 10 and 11).
    #[test]
    fn golden_buckets_and_scope_v1() {
        let frame = Frame::Buckets(Buckets { round: 2, buckets: vec![BucketDigest { docs: 3, hash: [0x33; 16] }] });
        let bytes = encode_frame(&frame).unwrap();
        let mut expected = vec![10, 2, 1, 3]; // variant 10, round 2, one bucket, docs 3
        expected.extend_from_slice(&[0x33; 16]);
        let mut prefixed = (expected.len() as u32).to_le_bytes().to_vec();
        prefixed.extend_from_slice(&expected);
        assert_eq!(bytes, prefixed);
        assert_eq!(decode_body(&bytes[LENGTH_PREFIX_BYTES..]), Ok(frame));

        let frame = Frame::Scope(Scope { round: 4, buckets: 256, covered: vec![1, 200] });
        let bytes = encode_frame(&frame).unwrap();
        // variant 11, round 4, 256 buckets and 200 as varints, two covered
        let expected = vec![11, 4, 0x80, 0x02, 2, 1, 0xC8, 0x01];
        let mut prefixed = (expected.len() as u32).to_le_bytes().to_vec();
        prefixed.extend_from_slice(&expected);
        assert_eq!(bytes, prefixed);
        assert_eq!(decode_body(&bytes[LENGTH_PREFIX_BYTES..]), Ok(frame));
    }

    /// A bucket count that is not a power of two within `BUCKETS_MAX`, or a scope whose buckets do not ascend
    /// below its count, is refused as invalid before any session sees it.
    #[test]
    fn malformed_buckets_and_scopes_are_invalid() {
        let bucket = BucketDigest { docs: 1, hash: [0; 16] };
        for n in [0usize, 3, 4097, 8192] {
            let body = postcard::to_allocvec(&Frame::Buckets(Buckets { round: 1, buckets: vec![bucket; n] })).unwrap();
            assert!(matches!(decode_body(&body), Err(WireError::Invalid { .. })), "{n} buckets");
        }
        for n in [1usize, 2, 4096] {
            let body = postcard::to_allocvec(&Frame::Buckets(Buckets { round: 1, buckets: vec![bucket; n] })).unwrap();
            assert!(decode_body(&body).is_ok(), "{n} buckets");
        }
        for (buckets, covered) in [(3, vec![0]), (8, vec![8]), (8, vec![2, 2]), (8, vec![3, 1]), (0, vec![])] {
            let body = postcard::to_allocvec(&Frame::Scope(Scope { round: 1, buckets, covered })).unwrap();
            assert!(matches!(decode_body(&body), Err(WireError::Invalid { .. })), "{body:?}");
        }
        const { assert!(capabilities::ALL & capabilities::MANIFEST_BUCKETS != 0) };
        const { assert!(capabilities::MANIFEST_BUCKETS & (capabilities::ALL & !capabilities::MANIFEST_BUCKETS) == 0) };
    }

    #[test]
    fn error_codes_are_stable() {
        assert_eq!(ErrorCode::FrameTooLarge.as_u32(), 1);
        assert_eq!(ErrorCode::Malformed.as_u32(), 2);
        assert_eq!(ErrorCode::UnsupportedVersion.as_u32(), 3);
        assert_eq!(ErrorCode::Unauthorized.as_u32(), 4);
        assert_eq!(ErrorCode::NotEntitled.as_u32(), 5);
        assert_eq!(ErrorCode::Internal.as_u32(), 6);
        assert_eq!(ErrorCode::ProtocolViolation.as_u32(), 7);
        assert_eq!(ErrorCode::Overloaded.as_u32(), 8);
        assert_eq!(ErrorCode::Timeout.as_u32(), 9);
        assert_eq!(ErrorCode::Revoked.as_u32(), 10);
        assert_eq!(ErrorCode::from_u32(10), ErrorCode::Revoked);
        assert_eq!(ErrorCode::QuotaExceeded.as_u32(), 11);
        assert_eq!(ErrorCode::ChangeTooLarge.as_u32(), 12);
        assert_eq!(ErrorCode::MissingDependencies.as_u32(), 13);
        assert_eq!(ErrorCode::RateLimited.as_u32(), 14);
        assert_eq!(ErrorCode::CertificateExpired.as_u32(), 15);
        assert_eq!(ErrorCode::from_u32(15), ErrorCode::CertificateExpired);
        for n in 0..16 {
            assert_eq!(ErrorCode::from_u32(n).as_u32(), n);
        }
        assert_eq!(ErrorCode::from_u32(4242), ErrorCode::Unknown);
    }

    #[test]
    fn oversized_prefix_is_refused_before_body_arrives() {
        let mut d = FrameDecoder::new(16);
        d.push(&17u32.to_le_bytes());
        assert_eq!(d.next_frame(), Err(WireError::FrameTooLarge { len: 17, max: 16 }));
        assert_eq!(d.buffered_bytes(), 0);
        d.push(&[0; 100]);
        assert_eq!(d.buffered_bytes(), 0, "a failed decoder must not buffer");
    }

    #[test]
    fn truncated_frame_is_reported_at_finish() {
        let bytes = encode_frame(&hello()).unwrap();
        let mut d = FrameDecoder::default();
        d.push(&bytes[..bytes.len() - 1]);
        assert_eq!(d.next_frame(), Ok(None));
        assert!(matches!(d.finish(), Err(WireError::Truncated { .. })));
    }

    #[test]
    fn garbage_is_malformed() {
        let mut d = FrameDecoder::default();
        d.push(&[3, 0, 0, 0, 0xFF, 0xFF, 0xFF]);
        assert_eq!(d.next_frame().map_err(|e| e.code()), Err(ErrorCode::Malformed));
    }

    #[test]
    fn encode_refuses_oversized_frame() {
        let frame = Frame::Sync { doc: DocId::new("d").unwrap(), msg: vec![0; 100] };
        let mut out = vec![9];
        assert!(matches!(encode_frame_into(&frame, 50, &mut out), Err(WireError::FrameTooLarge { .. })));
        assert_eq!(out, vec![9], "a failed encode leaves the buffer as it was");
    }

    #[test]
    fn invalid_ids_are_refused() {
        let long = "x".repeat(DOC_ID_BYTES_MAX + 1);
        assert!(DocId::new(long.clone()).is_none());
        // A frame built by a hostile peer with an over-long id does not decode.
        let body = postcard::to_allocvec(&Frame::Ack { doc: DocId(long), heads: vec![] }).unwrap();
        assert!(matches!(decode_body(&body), Err(WireError::Invalid { .. })));
    }

    fn sync_frame(doc: &str, msg: Vec<u8>) -> Frame {
        Frame::Sync { doc: DocId::new(doc).unwrap(), msg }
    }

    fn decode_all(d: &mut FrameDecoder) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = d.next_frame().unwrap() {
            out.push(f);
        }
        out
    }

    /// Feeds `bytes` to a decoder in chunks of the sizes in `cuts` (cycled), taking frames out after each.
    fn decode_in_chunks(bytes: &[u8], cuts: &[usize]) -> Vec<Frame> {
        let mut d = FrameDecoder::default();
        let mut out = Vec::new();
        for (i, chunk) in chunks_cycled(bytes, cuts).enumerate() {
            assert!(i <= bytes.len(), "every chunk has at least one byte");
            d.push(chunk);
            out.extend(decode_all(&mut d));
        }
        d.finish().unwrap();
        out
    }

    fn chunks_cycled<'a>(mut rest: &'a [u8], cuts: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut i = 0;
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let n = cuts[i % cuts.len()].clamp(1, rest.len());
            let (head, tail) = rest.split_at(n);
            rest = tail;
            i += 1;
            Some(head)
        })
    }

    #[test]
    fn deflated_frames_share_one_dictionary() {
        let mut enc = FrameEncoder::new(FRAME_BYTES_MAX);
        let mut plain = Vec::new();
        let msg: Vec<u8> = (0..400u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        enc.encode_into(&sync_frame("order/wh-east-1", msg.clone()), &mut plain).unwrap();
        assert_eq!(
            plain.len(),
            LENGTH_PREFIX_BYTES + postcard::to_allocvec(&sync_frame("order/wh-east-1", msg.clone())).unwrap().len()
        );
        enc.enable_deflate();
        let mut first = Vec::new();
        enc.encode_into(&sync_frame("order/wh-east-2", msg.clone()), &mut first).unwrap();
        let mut second = Vec::new();
        enc.encode_into(&sync_frame("order/wh-east-3", msg.clone()), &mut second).unwrap();
        assert_ne!(u32::from_le_bytes(first[..4].try_into().unwrap()) & COMPRESSED_FLAG, 0);
        // The second frame repeats the first but for one byte: it costs a few bytes, not 400.
        assert!(second.len() < 40, "second deflated frame is {} bytes", second.len());
        let mut d = FrameDecoder::default();
        d.push(&plain);
        d.push(&first);
        d.push(&second);
        let frames = decode_all(&mut d);
        assert_eq!(
            frames,
            vec![
                sync_frame("order/wh-east-1", msg.clone()),
                sync_frame("order/wh-east-2", msg.clone()),
                sync_frame("order/wh-east-3", msg)
            ]
        );
        d.finish().unwrap();
    }

    #[test]
    fn the_compressor_starts_with_the_first_large_body() {
        let mut enc = FrameEncoder::new(FRAME_BYTES_MAX);
        enc.enable_deflate();
        let small = Frame::Ping { nonce: 7 };
        let large = sync_frame("order/wh-east-1", vec![5; DEFLATE_START_BODY_BYTES]);
        let mut bytes = Vec::new();
        enc.encode_into(&small, &mut bytes).unwrap();
        assert!(!enc.deflating(), "a small frame allocates no compressor");
        assert_eq!(u32::from_le_bytes(bytes[..4].try_into().unwrap()) & COMPRESSED_FLAG, 0);
        let at = bytes.len();
        enc.encode_into(&large, &mut bytes).unwrap();
        assert!(enc.deflating());
        assert_ne!(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) & COMPRESSED_FLAG, 0);
        let at = bytes.len();
        enc.encode_into(&small, &mut bytes).unwrap();
        assert_ne!(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) & COMPRESSED_FLAG, 0, "then every frame");
        let mut d = FrameDecoder::default();
        d.push(&bytes);
        assert_eq!(decode_all(&mut d), vec![small.clone(), large, small]);
        d.finish().unwrap();
    }

    #[test]
    fn deflated_frame_may_not_inflate_past_the_limit() {
        // 4 KiB of zeros deflate to a few bytes: a small frame that would expand past a 1 KiB limit.
        let mut enc = FrameEncoder::new(FRAME_BYTES_MAX);
        enc.enable_deflate();
        let mut bytes = Vec::new();
        enc.encode_into(&sync_frame("d", vec![0; 4096]), &mut bytes).unwrap();
        assert!(bytes.len() < 100);
        let mut d = FrameDecoder::new(1024);
        d.push(&bytes);
        assert!(matches!(d.next_frame(), Err(WireError::FrameTooLarge { max: 1024, .. })));
        assert_eq!(d.buffered_bytes(), 0);
        // And a deflated frame larger than the limit on the wire is refused at its prefix.
        let mut d = FrameDecoder::new(16);
        d.push(&(17u32 | COMPRESSED_FLAG).to_le_bytes());
        assert_eq!(d.next_frame(), Err(WireError::FrameTooLarge { len: 17, max: 16 }));
    }

    #[test]
    fn corrupt_or_out_of_step_deflate_is_malformed() {
        let mut enc = FrameEncoder::new(FRAME_BYTES_MAX);
        enc.enable_deflate();
        let mut a = Vec::new();
        enc.encode_into(&sync_frame("order/x", vec![7; 300]), &mut a).unwrap();
        let mut b = Vec::new();
        enc.encode_into(&sync_frame("order/x", vec![7; 300]), &mut b).unwrap();
        // The second frame alone refers back to the first: a decoder that missed the first cannot read it.
        let mut d = FrameDecoder::default();
        d.push(&b);
        assert_eq!(d.next_frame().map_err(|e| e.code()), Err(ErrorCode::Malformed));
        // Garbage flagged as deflated.
        let mut d = FrameDecoder::default();
        d.push(&(3u32 | COMPRESSED_FLAG).to_le_bytes());
        d.push(&[0xFF, 0xFF, 0xFF]);
        assert_eq!(d.next_frame().map_err(|e| e.code()), Err(ErrorCode::Malformed));
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let doc = "[a-z0-9-]{1,20}".prop_map(|s| DocId::new(s).unwrap());
        prop_oneof![
            (any::<u16>(), any::<u16>(), any::<u64>(), "[a-z/:]{1,30}", proptest::collection::vec(any::<u8>(), 0..16))
                .prop_map(|(version, min_version, capabilities, p, actor)| {
                    Frame::Hello(Hello { version, min_version, capabilities, peer_id: PeerId::new(p).unwrap(), actor })
                }),
            (doc.clone(), proptest::collection::vec(any::<u8>(), 0..300))
                .prop_map(|(doc, msg)| Frame::Sync { doc, msg }),
            (doc.clone(), proptest::collection::vec(any::<[u8; 32]>(), 0..3))
                .prop_map(|(doc, heads)| Frame::Ack { doc, heads }),
            (doc, any::<u32>()).prop_map(|(doc, c)| Frame::Refused { doc, code: ErrorCode::from_u32(c % 11) }),
            any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
            (any::<u32>(), any::<u64>(), any::<[u8; 32]>()).prop_map(|(round, docs, hash)| Frame::Digest(Digest {
                round,
                docs,
                hash
            })),
            (any::<u32>(), 0u32..4, any::<u64>(), any::<[u8; 16]>()).prop_map(|(round, log, docs, hash)| {
                Frame::Buckets(Buckets { round, buckets: vec![BucketDigest { docs, hash }; 1 << log] })
            }),
            (any::<u32>(), proptest::collection::btree_set(0u32..64, 0..5)).prop_map(|(round, covered)| Frame::Scope(
                Scope { round, buckets: 64, covered: covered.into_iter().collect() }
            )),
        ]
    }

    proptest! {
        /// Any chunking of a stream of frames decodes to the same frames.
        #[test]
        fn decoder_handles_any_chunking(frames in proptest::collection::vec(arb_frame(), 1..8), cuts in proptest::collection::vec(1usize..64, 1..50)) {
            let mut bytes = Vec::new();
            for f in &frames {
                encode_frame_into(f, FRAME_BYTES_MAX, &mut bytes).unwrap();
            }
            prop_assert_eq!(decode_in_chunks(&bytes, &cuts), frames);
        }

        /// Deflated and plain frames, in any chunking, decode to what was encoded.
        #[test]
        fn deflated_stream_round_trips(frames in proptest::collection::vec(arb_frame(), 1..12), switch_at in 0usize..12, cuts in proptest::collection::vec(1usize..64, 1..50)) {
            let mut enc = FrameEncoder::new(FRAME_BYTES_MAX);
            let mut bytes = Vec::new();
            for (i, f) in frames.iter().enumerate() {
                if i == switch_at {
                    enc.enable_deflate();
                }
                enc.encode_into(f, &mut bytes).unwrap();
            }
            prop_assert_eq!(decode_in_chunks(&bytes, &cuts), frames);
        }

        /// Random bytes never panic the decoder and never make it buffer beyond the limit plus one chunk.
        #[test]
        fn decoder_survives_garbage(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..20)) {
            let mut d = FrameDecoder::new(256);
            for c in &chunks {
                d.push(c);
                prop_assert!(d.buffered_bytes() <= LENGTH_PREFIX_BYTES + 256 + 64);
                while let Ok(Some(_)) = d.next_frame() {}
            }
        }
    }
}
