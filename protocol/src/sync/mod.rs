//! Sans-IO sync session between a node and the hub.
//!
//! A [`SyncSession`] is one side of one connection. It is fed frames ([`SyncSession::handle_frame`]), local
//! edits ([`SyncSession::local_change`]) and the time ([`SyncSession::tick`]); it answers with frames to
//! send ([`SyncSession::poll_transmit`]) and events for its driver ([`SyncSession::poll_event`]). It never
//! touches a socket, a clock or the disk, so the same code runs under tokio + quinn in production and under a
//! seeded, lossy, simulated network in the tests of this module.
//!
//! Documents live in a [`DocStore`], passed into every call rather than owned, so that the hub can run one
//! session per node over one store. The store also answers the entitlement question
//! ([`DocStore::entitled`]): a document the peer is not entitled to is never listed, never sent, and a peer
//! that offers or asks for one gets [`Frame::Refused`] and nothing else.
//!
//! Protocol, after `Hello` / `HelloAck`: both sides send a [`Manifest`] (document ids and heads, chunked), and
//! only documents whose heads differ run Automerge's sync loop ([`Frame::Sync`]). A side with nothing more to
//! send for a document answers [`Frame::Ack`] with its heads, which lets the other side notice that it is
//! done, or that it must resend. The QUIC stream underneath is reliable, but the session does not rely on it
//! for liveness: Hello is retried, the manifest is resent every `manifest_interval_ms` (anti-entropy), and a
//! document in flight with no progress for `doc_stall_ms` has its Automerge sync state reset to the persisted
//! part (shared heads) and restarts. That is what makes the session converge under loss, duplication and
//! reordering in the simulation, and what makes a reconnect resume rather than start over.
//!
//! Periodic rounds after the first manifest send a digest, or one digest per bucket of documents, when both
//! sides announced the capability: the `manifest` module holds them, this module the documents' flight.
//!
//! Bounds: at most `docs_in_flight_max` documents that this side initiated are in flight, no new document
//! is started while `outbound_frames_max` frames wait to be sent, a manifest chunk carries at most
//! `manifest_docs_per_frame_max` entries, a peer manifest round is refused beyond `manifest_docs_max`, and at
//! most `docs_tracked_max` Automerge sync states are held, whatever the peer starts (beyond it, a document
//! waits as after a lost frame).

use crate::wire::{
    BUCKET_HASH_BYTES, BUCKETS_MAX, BucketDigest, Buckets, Digest, DocId, ErrorCode, Frame, Hash, Hello, HelloAck,
    Manifest, ManifestEntry, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN, PeerId, REASON_BYTES_MAX, Scope, capabilities,
};
use automerge::sync::{BloomFilter, Capability, ChunkList, Have, Message, State, SyncDoc};
use automerge::{AutoCommit, ChangeHash};
use sha2::Digest as _;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The Automerge version this protocol speaks, re-exported so drivers and stores use the same one.
pub use automerge;

pub mod chunks;
mod manifest;
mod receive;

pub use manifest::{
    BUCKET_DOCS_TARGET, ManifestDigest, bucket_of, buckets_for, manifest_buckets_of, manifest_digest_of,
};
use manifest::{PeerManifest, PeerScope};
#[cfg(test)]
mod tests;

/// Default of [`SessionConfig::changes_inflated_bytes_max`]: 64 MiB, sixteen times the frame limit (an order
/// or stock document inflates a few times over; a DEFLATE bomb a thousand times).
pub const CHANGES_INFLATED_BYTES_MAX: usize = 64 << 20;

/// Refusals ([`Frame::Refused`]) that may wait to be sent, as a multiple of `outbound_frames_max`.
pub const REFUSALS_QUEUED_PER_OUTBOUND_MAX: usize = 4;

/// Limits and timers of a session. Times are milliseconds of the caller's clock.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Largest encoded Automerge message we put in one frame.
    pub sync_msg_bytes_max: usize,
    /// Most documents this side syncs at once on its own initiative.
    pub docs_in_flight_max: usize,
    /// No new document is started while this many frames wait in the outbound queue.
    pub outbound_frames_max: usize,
    /// Most entries in one manifest chunk.
    pub manifest_docs_per_frame_max: usize,
    /// Most entries accepted in one peer manifest round; beyond it the session closes with `Overloaded`.
    pub manifest_docs_max: usize,
    /// Most documents with an Automerge sync state in memory. Both sides' documents in flight count, so keep
    /// it well above twice `docs_in_flight_max`. At the limit, states of documents not in flight are dropped
    /// (the persisted ones stay), and past that a new document waits: a peer's message for it is ignored
    /// (the peer restarts it after `doc_stall_ms`) and ours stays pending. This side starts documents of
    /// its own only while fewer than half the states are held.
    pub docs_tracked_max: usize,
    /// A client resends `Hello` when no `HelloAck` arrived within this time.
    pub hello_retry_ms: u64,
    /// A document in flight without progress for this long is reset and restarted.
    pub doc_stall_ms: u64,
    /// The manifest is resent this often (anti-entropy).
    pub manifest_interval_ms: u64,
    /// Capabilities this side announces and accepts ([`capabilities::ALL`] unless some are turned off).
    pub capabilities: u64,
    /// Most bytes the changes of one peer sync message may inflate to (DEFLATE columns and compressed
    /// changes), measured before Automerge inflates them ([`chunks::inspect`]); beyond it the document is
    /// refused with [`ErrorCode::ChangeTooLarge`] and the message not applied.
    pub changes_inflated_bytes_max: usize,
    /// Most changes whose dependencies this side lacks that a session hands to Automerge, which parks them in
    /// memory until the dependencies arrive; past it (or past `parked_bytes_max`) such a message is dropped
    /// like a lost frame ([`ErrorCode::MissingDependencies`] in [`Event::Limited`]).
    pub parked_changes_max: usize,
    /// Most inflated bytes of such changes per session.
    pub parked_bytes_max: usize,
    /// Most peer manifest rounds started within one `manifest_interval_ms`; a round beyond it is ignored
    /// ([`ErrorCode::RateLimited`] in [`Event::Limited`]) and the peer's next one taken, so a peer cannot make
    /// this side pass over its documents as often as it likes.
    pub peer_manifests_per_interval_max: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            sync_msg_bytes_max: crate::wire::FRAME_BYTES_MAX - 1024,
            docs_in_flight_max: 32,
            outbound_frames_max: 256,
            manifest_docs_per_frame_max: 1024,
            manifest_docs_max: 1_000_000,
            docs_tracked_max: 4_096,
            hello_retry_ms: 5_000,
            doc_stall_ms: 10_000,
            manifest_interval_ms: 60_000,
            capabilities: capabilities::ALL,
            changes_inflated_bytes_max: CHANGES_INFLATED_BYTES_MAX,
            parked_changes_max: 1_024,
            parked_bytes_max: 16 << 20,
            peer_manifests_per_interval_max: 4,
        }
    }
}

/// A store failed to create a document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store cannot create document {doc}: {reason}")]
pub struct StoreError {
    /// The document.
    pub doc: DocId,
    /// Why, for a person.
    pub reason: String,
}

/// Where a session finds documents, entitlements and per-peer sync state.
///
/// Implementations persist what they are given: a changed document is announced by [`Event::DocChanged`],
/// sync states arrive through [`DocStore::save_sync_state`]. A node typically entitles the hub to all its
/// documents; the hub entitles each node to its own documents and the shared ones.
pub trait DocStore {
    /// May `peer` receive and send `doc`?
    fn entitled(&self, peer: &PeerId, doc: &DocId) -> bool;
    /// The documents held locally that `peer` is entitled to (re-checked with [`DocStore::entitled`]).
    fn docs_for(&self, peer: &PeerId) -> Vec<DocId>;
    /// The document, if held locally.
    fn doc_mut(&mut self, doc: &DocId) -> Option<&mut AutoCommit>;
    /// The heads of the document, if held locally (a store that evicts documents can answer without loading).
    fn heads(&mut self, doc: &DocId) -> Option<Vec<ChangeHash>> {
        self.doc_mut(doc).map(|d| d.get_heads())
    }
    /// The documents held locally that `peer` is entitled to, with their heads: what a manifest or digest
    /// lists (not re-checked). The default asks [`DocStore::docs_for`], [`DocStore::entitled`] and
    /// [`DocStore::heads`] per document; a store that keeps heads on disk reads them in one pass instead.
    fn manifest_heads(&mut self, peer: &PeerId) -> Vec<(DocId, Vec<ChangeHash>)> {
        let mut ids = self.docs_for(peer);
        ids.retain(|d| self.entitled(peer, d));
        ids.into_iter()
            .filter_map(|d| {
                let heads = self.heads(&d)?;
                Some((d, heads))
            })
            .collect()
    }
    /// The digest of what [`DocStore::manifest_heads`] lists for `peer` ([`manifest_digest_of`]). A store may
    /// answer from a cache, provided it recomputes after any change to any document it holds.
    fn manifest_digest(&mut self, peer: &PeerId) -> ManifestDigest {
        manifest_digest_of(self, peer)
    }
    /// The digest of each bucket of what [`DocStore::manifest_heads`] lists for `peer`
    /// ([`manifest_buckets_of`]): `buckets` of them, or as many as [`buckets_for`] the number of documents
    /// when `None`. A store may answer from a cache, as for [`DocStore::manifest_digest`].
    fn manifest_buckets(&mut self, peer: &PeerId, buckets: Option<u32>) -> Vec<ManifestDigest> {
        manifest_buckets_of(self, peer, buckets)
    }
    /// Creates an empty document that a peer is sending us (only called for entitled documents). The store
    /// chooses the actor id.
    fn create_doc(&mut self, doc: &DocId) -> Result<&mut AutoCommit, StoreError>;
    /// The persisted `automerge::sync::State::encode()` of (peer, doc), if any.
    fn load_sync_state(&self, peer: &PeerId, doc: &DocId) -> Option<Vec<u8>>;
    /// Persists the encoded sync state of (peer, doc) so a reconnect resumes.
    fn save_sync_state(&mut self, peer: &PeerId, doc: &DocId, state: Vec<u8>);
    /// May changes of `bytes` (as sent) from `peer` be applied to `doc`, which `creates` if it is not held
    /// yet? Asked before a message with changes is applied; an `Err` refuses the document to the peer with
    /// that code ([`ErrorCode::QuotaExceeded`] for the hub's per-node quotas) and applies nothing. The
    /// default admits everything.
    fn admit_changes(&mut self, peer: &PeerId, doc: &DocId, creates: bool, bytes: usize) -> Result<(), ErrorCode> {
        let _ = (peer, doc, creates, bytes);
        Ok(())
    }
}

/// Which side of the connection this session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The node: sends `Hello`.
    Client,
    /// The hub: answers `Hello`.
    Server,
}

/// What the driver of a session must know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Handshake done.
    Established {
        /// Agreed version.
        version: u16,
        /// Agreed capabilities.
        capabilities: u64,
    },
    /// Remote changes were applied to `doc`: persist it.
    DocChanged {
        /// The document.
        doc: DocId,
    },
    /// Both sides hold the same heads of `doc`.
    DocInSync {
        /// The document.
        doc: DocId,
        /// The shared heads.
        heads: Vec<Hash>,
    },
    /// The peer refused to sync `doc`.
    PeerRefused {
        /// The document.
        doc: DocId,
        /// Why.
        code: ErrorCode,
    },
    /// A document could not be synced on this session (e.g. its sync message exceeds the frame limit).
    DocFailed {
        /// The document.
        doc: DocId,
        /// Why.
        code: ErrorCode,
    },
    /// A bound of this session refused or dropped something of the peer's, the session goes on: `doc` refused
    /// with `code` ([`ErrorCode::QuotaExceeded`], [`ErrorCode::ChangeTooLarge`]; the peer got
    /// [`Frame::Refused`]), a message with changes lacking dependencies dropped
    /// ([`ErrorCode::MissingDependencies`]), or a manifest round ignored (`doc` is `None`,
    /// [`ErrorCode::RateLimited`]). For counters.
    Limited {
        /// The document, if the bound is about one.
        doc: Option<DocId>,
        /// Which bound.
        code: ErrorCode,
    },
    /// The session is over. Send the remaining frames, then close the connection with `code`.
    Closed {
        /// Why.
        code: ErrorCode,
        /// For a person.
        reason: String,
        /// True if the peer refused us, false if we refused the peer.
        by_peer: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingHelloAck { hello_sent_ms: u64 },
    AwaitingHello,
    Established { version: u16, capabilities: u64 },
    Closed,
}

struct DocSync {
    state: State,
    last_progress_ms: u64,
}

/// What a [`SyncSession`] holds at one moment ([`SyncSession::sizes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionSizes {
    /// Frames waiting for [`SyncSession::poll_transmit`].
    pub outbound: usize,
    /// Events waiting for [`SyncSession::poll_event`].
    pub events: usize,
    /// Documents waiting to be started.
    pub pending: usize,
    /// Documents in flight.
    pub in_flight: usize,
    /// Automerge sync states held in memory.
    pub doc_states: usize,
    /// Documents the peer refused in this session.
    pub refused_by_peer: usize,
    /// Times a document waited because `docs_tracked_max` sync states were held (since the session began).
    pub docs_deferred: u64,
}

/// What this side's anti-entropy rounds cost so far in the session ([`SyncSession::anti_entropy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AntiEntropyStats {
    /// Manifest rounds sent that listed every document shared with the peer.
    pub full_manifests: u64,
    /// Manifest rounds sent that listed only the documents of some buckets ([`Frame::Scope`]).
    pub partial_manifests: u64,
    /// Documents listed in the manifest rounds sent, full and partial.
    pub entries_sent: u64,
    /// Digest rounds sent ([`Frame::Digest`] or [`Frame::Buckets`]).
    pub digests_sent: u64,
    /// Buckets of peer [`Frame::Buckets`] found to differ from ours.
    pub buckets_differing: u64,
}

impl AntiEntropyStats {
    /// Adds what `now` counts beyond `before` (two readings of one session, `before` the earlier): for a
    /// total over sessions.
    pub fn add_since(&mut self, before: &AntiEntropyStats, now: &AntiEntropyStats) {
        self.full_manifests += now.full_manifests.saturating_sub(before.full_manifests);
        self.partial_manifests += now.partial_manifests.saturating_sub(before.partial_manifests);
        self.entries_sent += now.entries_sent.saturating_sub(before.entries_sent);
        self.digests_sent += now.digests_sent.saturating_sub(before.digests_sent);
        self.buckets_differing += now.buckets_differing.saturating_sub(before.buckets_differing);
    }
}

/// One side of one sync connection. See the module docs.
pub struct SyncSession {
    cfg: SessionConfig,
    role: Role,
    local: PeerId,
    peer: PeerId,
    actor: Vec<u8>,
    phase: Phase,
    now_ms: u64,
    outbound: VecDeque<Frame>,
    events: VecDeque<Event>,
    docs: BTreeMap<DocId, DocSync>,
    pending: VecDeque<DocId>,
    pending_set: BTreeSet<DocId>,
    in_flight: BTreeSet<DocId>,
    refused_by_peer: BTreeSet<DocId>,
    /// See [`SessionSizes::docs_deferred`].
    docs_deferred: u64,
    manifest_round: u32,
    /// When the last anti-entropy round happened: our manifest or digest, or a peer digest that matched ours.
    last_manifest_ms: u64,
    /// When we last sent a full manifest; answers to digests wait `manifest_interval_ms` after it.
    last_full_manifest_ms: u64,
    /// When we last compared a peer digest with ours; others within half an interval are not compared.
    peer_digest_checked_ms: Option<u64>,
    peer_manifest: Option<PeerManifest>,
    /// The last [`Frame::Scope`] received, for the manifest round it names.
    peer_scope: Option<PeerScope>,
    /// Anti-entropy counters, see [`AntiEntropyStats`].
    anti_entropy: AntiEntropyStats,
    /// Changes lacking dependencies handed to Automerge in this session, and their inflated bytes.
    parked_changes: usize,
    parked_bytes: usize,
    /// When each of the last `peer_manifests_per_interval_max` peer manifest rounds began.
    peer_rounds_at: VecDeque<u64>,
    /// The last peer round ignored for the rate: its later chunks are ignored too.
    ignored_round: Option<u32>,
}

impl std::fmt::Debug for SyncSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncSession")
            .field("role", &self.role)
            .field("local", &self.local)
            .field("peer", &self.peer)
            .field("phase", &self.phase)
            .field("in_flight", &self.in_flight.len())
            .field("pending", &self.pending.len())
            .field("outbound", &self.outbound.len())
            .finish()
    }
}

fn hashes(heads: &[ChangeHash]) -> Vec<Hash> {
    heads.iter().map(|h| h.0).collect()
}

fn sorted(mut heads: Vec<Hash>) -> Vec<Hash> {
    heads.sort_unstable();
    heads.dedup();
    heads
}

/// The sync state of a document never synced with this peer: assume the peer has none of it, so the first
/// message carries the document (one compressed save, as both sides speak Automerge's v2 messages) instead of
/// first exchanging heads and Bloom filters. If the peer does hold some of it, it merely receives changes it
/// has, and answers with its heads as usual.
fn fresh_state() -> State {
    let mut state = State::new();
    state.their_heads = Some(vec![]);
    state.their_need = Some(vec![]);
    state.their_have = Some(vec![Have { last_sync: vec![], bloom: BloomFilter::default() }]);
    state.their_capabilities = Some(vec![Capability::MessageV1, Capability::MessageV2]);
    state
}

/// A persisted sync state taken up again (after a reconnect, or after the session dropped the state of a
/// document in sync): assume the peer still has exactly the shared heads, so the first message carries the
/// changes since them. The peer answers with its own heads if it has more.
fn resumed_state(persisted: State) -> State {
    let shared = persisted.shared_heads;
    let mut state = fresh_state();
    state.their_heads = Some(shared.clone());
    state.their_have = Some(vec![Have { last_sync: shared.clone(), bloom: BloomFilter::default() }]);
    state.shared_heads = shared;
    state
}

/// Keeps only the persisted part of a sync state (shared heads), dropping what a lost message left behind.
fn reset_state(state: &State) -> State {
    State::decode(&state.encode()).unwrap_or_default()
}

impl SyncSession {
    /// A node's session to `hub`, whose identity the transport has verified. Queues `Hello`. `actor` is this
    /// process's Automerge actor id, reported to the peer for debugging.
    pub fn new_client(cfg: SessionConfig, local: PeerId, hub: PeerId, actor: Vec<u8>, now_ms: u64) -> Self {
        let mut s = Self::new(cfg, Role::Client, local, hub, actor, now_ms);
        s.phase = Phase::AwaitingHelloAck { hello_sent_ms: now_ms };
        s.outbound.push_back(s.hello());
        s
    }

    /// The hub's session for `node`, whose identity the transport has verified from its certificate.
    pub fn new_server(cfg: SessionConfig, local: PeerId, node: PeerId, actor: Vec<u8>, now_ms: u64) -> Self {
        Self::new(cfg, Role::Server, local, node, actor, now_ms)
    }

    fn new(cfg: SessionConfig, role: Role, local: PeerId, peer: PeerId, actor: Vec<u8>, now_ms: u64) -> Self {
        Self {
            cfg,
            role,
            local,
            peer,
            actor,
            phase: Phase::AwaitingHello,
            now_ms,
            outbound: VecDeque::new(),
            events: VecDeque::new(),
            docs: BTreeMap::new(),
            pending: VecDeque::new(),
            pending_set: BTreeSet::new(),
            in_flight: BTreeSet::new(),
            refused_by_peer: BTreeSet::new(),
            docs_deferred: 0,
            manifest_round: 0,
            last_manifest_ms: now_ms,
            last_full_manifest_ms: now_ms,
            peer_digest_checked_ms: None,
            peer_manifest: None,
            peer_scope: None,
            anti_entropy: AntiEntropyStats::default(),
            parked_changes: 0,
            parked_bytes: 0,
            peer_rounds_at: VecDeque::new(),
            ignored_round: None,
        }
    }

    fn hello(&self) -> Frame {
        Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            min_version: PROTOCOL_VERSION_MIN,
            capabilities: self.cfg.capabilities & capabilities::ALL,
            peer_id: self.local.clone(),
            actor: self.actor.clone(),
        })
    }

    /// The peer this session talks to.
    pub fn peer(&self) -> &PeerId {
        &self.peer
    }

    /// True once the handshake is done and until the session closes.
    pub fn is_established(&self) -> bool {
        matches!(self.phase, Phase::Established { .. })
    }

    /// True once the session has closed; it then ignores all input.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Documents this session keeps an Automerge sync state for (those being synced; one in sync is dropped).
    pub fn docs_tracked(&self) -> usize {
        self.docs.len()
    }

    /// True when nothing is pending, in flight or queued.
    pub fn is_idle(&self) -> bool {
        self.outbound.is_empty() && self.pending.is_empty() && self.in_flight.is_empty()
    }

    /// How much the session holds right now (queues and per-document tables), for tests and metrics.
    pub fn sizes(&self) -> SessionSizes {
        SessionSizes {
            outbound: self.outbound.len(),
            events: self.events.len(),
            pending: self.pending.len(),
            in_flight: self.in_flight.len(),
            doc_states: self.docs.len(),
            refused_by_peer: self.refused_by_peer.len(),
            docs_deferred: self.docs_deferred,
        }
    }

    /// What this side's anti-entropy rounds sent so far, for tests and metrics.
    pub fn anti_entropy(&self) -> AntiEntropyStats {
        self.anti_entropy
    }

    /// The next frame to send.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        self.outbound.pop_front()
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Refuses the whole session with `code`: queues [`Frame::Refuse`] and closes.
    pub fn refuse(&mut self, code: ErrorCode, reason: impl Into<String>) {
        if self.phase == Phase::Closed {
            return;
        }
        let mut reason = reason.into();
        if reason.len() > REASON_BYTES_MAX {
            let mut cut = REASON_BYTES_MAX;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        self.outbound.push_back(Frame::Refuse { code, reason: reason.clone() });
        self.phase = Phase::Closed;
        self.events.push_back(Event::Closed { code, reason, by_peer: false });
    }

    /// Feeds one frame received from the peer.
    pub fn handle_frame<S: DocStore + ?Sized>(&mut self, store: &mut S, frame: Frame) {
        match (self.phase, frame) {
            (Phase::Closed, _) => {}
            (_, Frame::Refuse { code, reason }) => {
                self.phase = Phase::Closed;
                self.events.push_back(Event::Closed { code, reason, by_peer: true });
            }
            (_, Frame::Hello(hello)) if self.role == Role::Server => self.on_hello(store, hello),
            (Phase::AwaitingHelloAck { .. }, Frame::HelloAck(ack)) => self.on_hello_ack(store, ack),
            // A duplicate HelloAck.
            (Phase::Established { .. }, Frame::HelloAck(_)) if self.role == Role::Client => {}
            // A client may see hub frames overtake the HelloAck on a reordering network; the hub resends.
            (Phase::AwaitingHelloAck { .. }, _) => {}
            (Phase::AwaitingHello, other) => {
                self.refuse(ErrorCode::ProtocolViolation, format!("expected Hello, got {}", frame_name(&other)));
            }
            (Phase::Established { .. }, frame) => self.on_established_frame(store, frame),
        }
        self.start_pending(store);
    }

    fn on_hello<S: DocStore + ?Sized>(&mut self, store: &mut S, hello: Hello) {
        if hello.peer_id != self.peer {
            return self.refuse(
                ErrorCode::Unauthorized,
                format!("hello claims {} but the certificate says {}", hello.peer_id, self.peer),
            );
        }
        let version = hello.version.min(PROTOCOL_VERSION);
        if version < hello.min_version.max(PROTOCOL_VERSION_MIN) {
            return self.refuse(
                ErrorCode::UnsupportedVersion,
                format!(
                    "peer speaks {}..={}, we speak {}..={}",
                    hello.min_version, hello.version, PROTOCOL_VERSION_MIN, PROTOCOL_VERSION
                ),
            );
        }
        let capabilities = hello.capabilities & self.cfg.capabilities & capabilities::ALL;
        self.outbound.push_back(Frame::HelloAck(HelloAck {
            version,
            capabilities,
            peer_id: self.local.clone(),
            actor: self.actor.clone(),
        }));
        // A repeated Hello (its HelloAck was lost) only gets the HelloAck again.
        if self.phase == Phase::AwaitingHello {
            self.establish(store, version, capabilities);
        }
    }

    fn on_hello_ack<S: DocStore + ?Sized>(&mut self, store: &mut S, ack: HelloAck) {
        if ack.peer_id != self.peer {
            return self.refuse(
                ErrorCode::Unauthorized,
                format!("hello-ack claims {} but the certificate says {}", ack.peer_id, self.peer),
            );
        }
        if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&ack.version) {
            return self.refuse(ErrorCode::UnsupportedVersion, format!("hub chose version {}", ack.version));
        }
        self.establish(store, ack.version, ack.capabilities & self.cfg.capabilities & capabilities::ALL);
    }

    fn establish<S: DocStore + ?Sized>(&mut self, store: &mut S, version: u16, capabilities: u64) {
        self.phase = Phase::Established { version, capabilities };
        self.events.push_back(Event::Established { version, capabilities });
        self.send_manifest(store);
    }

    fn on_established_frame<S: DocStore + ?Sized>(&mut self, store: &mut S, frame: Frame) {
        match frame {
            Frame::Manifest(m) => self.on_manifest(store, m),
            Frame::Digest(d) => self.on_digest(store, &d),
            Frame::Buckets(b) => self.on_buckets(store, &b),
            Frame::Scope(s) => self.on_scope(s),
            Frame::Sync { doc, msg } => self.on_sync(store, doc, &msg),
            Frame::Ack { doc, heads } => self.on_ack(store, doc, heads),
            Frame::Refused { doc, code } => {
                self.in_flight.remove(&doc);
                self.docs.remove(&doc);
                // Remembered only for a document we may send (entitled and held): a peer cannot grow the set
                // by refusing names.
                if store.entitled(&self.peer, &doc) && store.heads(&doc).is_some() {
                    self.refused_by_peer.insert(doc.clone());
                }
                self.events.push_back(Event::PeerRefused { doc, code });
            }
            Frame::Ping { nonce } => self.outbound.push_back(Frame::Pong { nonce }),
            Frame::Pong { .. } => {}
            Frame::Hello(_) | Frame::HelloAck(_) | Frame::Refuse { .. } => {
                self.refuse(ErrorCode::ProtocolViolation, format!("unexpected {}", frame_name(&frame)));
            }
        }
    }

    /// Tells the peer it may not have `doc`. One manifest frame can name thousands of documents, each worth
    /// a `Refused`: past [`REFUSALS_QUEUED_PER_OUTBOUND_MAX`] × `outbound_frames_max` refusals waiting to be
    /// sent, the session closes with `Overloaded` instead of queueing more (a node that behaves never names
    /// documents that are not its own).
    fn refused(&mut self, doc: DocId) {
        if self.phase == Phase::Closed {
            return;
        }
        if self.outbound.len() >= self.cfg.outbound_frames_max.saturating_mul(REFUSALS_QUEUED_PER_OUTBOUND_MAX) {
            return self.refuse(ErrorCode::Overloaded, "the peer names more documents it may not have than we queue");
        }
        self.outbound.push_back(Frame::Refused { doc, code: ErrorCode::NotEntitled });
    }

    /// The sync state of `doc`, loaded (or fresh) if not in memory; `None` if `docs_tracked_max` states are
    /// held and none can be dropped.
    fn doc_sync<S: DocStore + ?Sized>(&mut self, store: &S, doc: &DocId) -> Option<&mut DocSync> {
        if !self.docs.contains_key(doc) && !self.room_for_doc_state(self.cfg.docs_tracked_max) {
            self.docs_deferred += 1;
            return None;
        }
        let now_ms = self.now_ms;
        let peer = &self.peer;
        Some(self.docs.entry(doc.clone()).or_insert_with(|| {
            let state = store
                .load_sync_state(peer, doc)
                .and_then(|b| State::decode(&b).ok())
                .map_or_else(fresh_state, resumed_state);
            DocSync { state, last_progress_ms: now_ms }
        }))
    }

    /// True if one more sync state fits under `max`, after dropping those of documents not in flight if need
    /// be: nothing waits on them, and their next exchange starts from the persisted state.
    fn room_for_doc_state(&mut self, max: usize) -> bool {
        let max = max.max(1);
        if self.docs.len() >= max {
            let in_flight = &self.in_flight;
            self.docs.retain(|d, _| in_flight.contains(d));
        }
        self.docs.len() < max
    }

    fn on_sync<S: DocStore + ?Sized>(&mut self, store: &mut S, doc: DocId, msg: &[u8]) {
        if !store.entitled(&self.peer, &doc) {
            return self.refused(doc);
        }
        let msg = match Message::decode(msg) {
            Ok(msg) => msg,
            Err(e) => {
                return self.refuse(ErrorCode::Malformed, format!("sync message for {doc}: {e}"));
            }
        };
        if !msg.changes.is_empty() && !self.admit(store, &doc, &msg.changes) {
            return;
        }
        // At the limit of sync states the message is dropped: the peer restarts the document after its stall
        // timeout, as after a lost frame.
        if self.doc_sync(store, &doc).is_none() {
            return;
        }
        let Some(entry) = self.docs.get_mut(&doc) else {
            return;
        };
        let automerge_doc = match store.doc_mut(&doc) {
            Some(d) => d,
            None => match store.create_doc(&doc) {
                Ok(d) => d,
                Err(e) => {
                    self.docs.remove(&doc);
                    self.events.push_back(Event::DocFailed { doc, code: ErrorCode::Internal });
                    drop(e);
                    return;
                }
            },
        };
        let before = automerge_doc.get_heads();
        // Changes the peer still needs that our state says we sent never arrived (a message the peer dropped
        // at its limit of sync states, see `docs_tracked_max`). Automerge assumes no message is lost and would
        // not send them again, and the exchange, never idle, would not stall and restart either.
        if !msg.need.is_empty() {
            entry.state.sent_hashes.retain(|h| !msg.need.contains(h));
        }
        if let Err(e) = receive::receive_sync_message(automerge_doc, &mut entry.state, msg) {
            return self.refuse(ErrorCode::Malformed, format!("sync message for {doc} does not apply: {e}"));
        }
        entry.last_progress_ms = self.now_ms;
        let changed = automerge_doc.get_heads() != before;
        let encoded = entry.state.encode();
        store.save_sync_state(&self.peer, &doc, encoded);
        if changed {
            self.events.push_back(Event::DocChanged { doc: doc.clone() });
        }
        self.pump(store, &doc, true);
    }

    /// Whether the changes of a message for `doc` may go to Automerge: measured before anything is inflated
    /// ([`chunks::inspect`]) against `changes_inflated_bytes_max`, the budget of changes lacking
    /// dependencies, and the store's admission ([`DocStore::admit_changes`]). Refuses or drops them if not.
    fn admit<S: DocStore + ?Sized>(&mut self, store: &mut S, doc: &DocId, changes: &ChunkList) -> bool {
        let max = self.cfg.changes_inflated_bytes_max;
        let mut held = store.doc_mut(doc);
        let creates = held.is_none();
        let inspected = chunks::inspect(changes.iter(), max, |h| {
            held.as_deref_mut().is_some_and(|d| d.get_change_meta_by_hash(h).is_some())
        });
        let report = match inspected {
            Ok(r) => r,
            Err(chunks::ChunkError::TooLarge { .. }) => {
                self.refuse_doc(doc.clone(), ErrorCode::ChangeTooLarge);
                return false;
            }
            Err(e @ chunks::ChunkError::Malformed(_)) => {
                self.refuse(ErrorCode::Malformed, format!("sync message for {doc}: {e}"));
                return false;
            }
        };
        if report.missing_deps > 0 {
            let changes = self.parked_changes.saturating_add(report.missing_deps);
            let bytes = self.parked_bytes.saturating_add(report.missing_deps_bytes);
            if changes > self.cfg.parked_changes_max || bytes > self.cfg.parked_bytes_max {
                // As if the frame were lost: the peer's stall timer or our next message's needs bring the
                // changes again, with their dependencies.
                self.events.push_back(Event::Limited { doc: Some(doc.clone()), code: ErrorCode::MissingDependencies });
                return false;
            }
            (self.parked_changes, self.parked_bytes) = (changes, bytes);
        }
        if let Err(code) = store.admit_changes(&self.peer, doc, creates, report.raw_bytes) {
            self.refuse_doc(doc.clone(), code);
            return false;
        }
        true
    }

    /// Refuses `doc` to the peer with `code` for a bound of ours (the session goes on), forgetting its state.
    fn refuse_doc(&mut self, doc: DocId, code: ErrorCode) {
        self.in_flight.remove(&doc);
        self.docs.remove(&doc);
        self.events.push_back(Event::Limited { doc: Some(doc.clone()), code });
        if self.outbound.len() >= self.cfg.outbound_frames_max.saturating_mul(REFUSALS_QUEUED_PER_OUTBOUND_MAX) {
            return self.refuse(ErrorCode::Overloaded, "the peer sends more refused changes than we queue");
        }
        self.outbound.push_back(Frame::Refused { doc, code });
    }

    fn on_ack<S: DocStore + ?Sized>(&mut self, store: &mut S, doc: DocId, heads: Vec<Hash>) {
        if !store.entitled(&self.peer, &doc) {
            return;
        }
        let theirs = sorted(heads);
        let current = store.doc_mut(&doc).map(|d| d.get_heads());
        let ours = current.as_ref().map(|h| sorted(hashes(h)));
        if ours.as_ref() == Some(&theirs) {
            // The peer has exactly our heads: remember that, so the next change sends only what is new.
            if let (Some(entry), Some(current)) = (self.docs.get_mut(&doc), current) {
                entry.state.shared_heads.clone_from(&current);
                entry.state.their_need = Some(vec![]);
                entry.state.their_have = Some(vec![Have { last_sync: current.clone(), bloom: BloomFilter::default() }]);
                entry.state.their_heads = Some(current);
                entry.state.in_flight = false;
                store.save_sync_state(&self.peer, &doc, entry.state.encode());
            }
            self.finish(doc, theirs);
        } else if ours.is_some() {
            // The peer has nothing more for us but lacks something of ours: our sync state believes it sent
            // that already (a message was lost, or crossed), so restart from the persisted state.
            if let Some(entry) = self.docs.get_mut(&doc) {
                entry.state = reset_state(&entry.state);
            }
            self.in_flight.insert(doc.clone());
            self.pump(store, &doc, false);
        }
    }

    fn finish(&mut self, doc: DocId, heads: Vec<Hash>) {
        self.in_flight.remove(&doc);
        // In sync: the persisted state (shared heads) is enough to take it up again, so a long session does not
        // keep a sync state per document it ever synced.
        self.docs.remove(&doc);
        self.events.push_back(Event::DocInSync { doc, heads });
    }

    /// Generates the next sync message for `doc`. `answering` is true right after receiving a message: if we
    /// have nothing to say we then `Ack`, so the peer learns we are done.
    fn pump<S: DocStore + ?Sized>(&mut self, store: &mut S, doc: &DocId, answering: bool) {
        if store.doc_mut(doc).is_none() {
            // We do not hold it: the peer does and will send it. No sync state is kept for it.
            self.in_flight.remove(doc);
            self.docs.remove(doc);
            return;
        }
        if self.doc_sync(store, doc).is_none() {
            // No room for its state: it waits its turn (start_pending starts none while there is no room).
            self.in_flight.remove(doc);
            self.schedule(doc.clone());
            return;
        }
        let Some(entry) = self.docs.get_mut(doc) else {
            return;
        };
        let Some(automerge_doc) = store.doc_mut(doc) else {
            self.in_flight.remove(doc);
            self.docs.remove(doc);
            return;
        };
        let generated = automerge_doc.sync().generate_sync_message(&mut entry.state);
        match generated {
            Some(msg) if answering && msg.changes == ChunkList::empty() && msg.need.is_empty() => {
                let heads = sorted(hashes(&automerge_doc.get_heads()));
                let their = entry.state.their_heads.as_deref().map(|h| sorted(hashes(h)));
                if their.as_ref() == Some(&heads) {
                    // Nothing to send or ask for, and the peer has exactly our heads: an Ack says so in fewer
                    // bytes and ends the exchange on both sides.
                    self.outbound.push_back(Frame::Ack { doc: doc.clone(), heads: heads.clone() });
                    self.finish(doc.clone(), heads);
                    return;
                }
                self.send_sync(doc, msg.encode());
            }
            Some(msg) => self.send_sync(doc, msg.encode()),
            None if answering => {
                let heads = sorted(hashes(&automerge_doc.get_heads()));
                let their = entry.state.their_heads.as_deref().map(|h| sorted(hashes(h)));
                self.outbound.push_back(Frame::Ack { doc: doc.clone(), heads: heads.clone() });
                if their.as_ref() == Some(&heads) {
                    self.finish(doc.clone(), heads);
                }
            }
            None => {}
        }
    }

    /// Queues an encoded sync message for `doc`, or fails the document if it exceeds the frame limit.
    fn send_sync(&mut self, doc: &DocId, msg: Vec<u8>) {
        let Some(entry) = self.docs.get_mut(doc) else {
            return;
        };
        if msg.len() > self.cfg.sync_msg_bytes_max {
            entry.state = reset_state(&entry.state);
            self.in_flight.remove(doc);
            self.events.push_back(Event::DocFailed { doc: doc.clone(), code: ErrorCode::FrameTooLarge });
            return;
        }
        entry.last_progress_ms = self.now_ms;
        self.in_flight.insert(doc.clone());
        self.outbound.push_back(Frame::Sync { doc: doc.clone(), msg });
    }

    fn schedule(&mut self, doc: DocId) {
        if self.refused_by_peer.contains(&doc) || self.in_flight.contains(&doc) {
            return;
        }
        if self.pending_set.insert(doc.clone()) {
            self.pending.push_back(doc);
        }
    }

    fn start_pending<S: DocStore + ?Sized>(&mut self, store: &mut S) {
        if !self.is_established() {
            return;
        }
        while self.in_flight.len() < self.cfg.docs_in_flight_max
            && self.outbound.len() < self.cfg.outbound_frames_max
            // Our own new documents take at most half the states: the peer's always find room for theirs to
            // finish, so two sides at their limits cannot wait on each other for ever.
            && self.room_for_doc_state(self.cfg.docs_tracked_max / 2)
        {
            let Some(doc) = self.pending.pop_front() else {
                break;
            };
            self.pending_set.remove(&doc);
            if self.in_flight.contains(&doc) {
                continue;
            }
            self.pump(store, &doc, false);
        }
    }

    /// Tells the session that `doc` changed locally.
    pub fn local_change<S: DocStore + ?Sized>(&mut self, store: &mut S, doc: &DocId) {
        if !self.is_established() || !store.entitled(&self.peer, doc) {
            return;
        }
        if self.in_flight.contains(doc) {
            // Heads changed, so Automerge sends even while a message is in flight.
            self.pump(store, doc, false);
        } else {
            self.schedule(doc.clone());
            self.start_pending(store);
        }
    }

    /// Advances the session's notion of time: retries Hello, restarts stalled documents, resends the manifest.
    pub fn tick<S: DocStore + ?Sized>(&mut self, store: &mut S, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        match self.phase {
            Phase::AwaitingHelloAck { hello_sent_ms } if self.now_ms - hello_sent_ms >= self.cfg.hello_retry_ms => {
                self.phase = Phase::AwaitingHelloAck { hello_sent_ms: self.now_ms };
                self.outbound.push_back(self.hello());
            }
            Phase::Established { .. } => {
                // A document no longer ours to sync (an older generation a newer one replaced, a quarantine)
                // leaves the flight: no answer about it is coming, and none is owed.
                let gone: Vec<DocId> =
                    self.in_flight.iter().filter(|d| !store.entitled(&self.peer, d)).cloned().collect();
                for doc in gone {
                    self.in_flight.remove(&doc);
                    self.docs.remove(&doc);
                }
                let stalled: Vec<DocId> = self
                    .in_flight
                    .iter()
                    .filter(|d| {
                        self.docs.get(*d).is_none_or(|e| self.now_ms - e.last_progress_ms >= self.cfg.doc_stall_ms)
                    })
                    .cloned()
                    .collect();
                for doc in stalled {
                    if let Some(entry) = self.docs.get_mut(&doc) {
                        entry.state = reset_state(&entry.state);
                        entry.last_progress_ms = self.now_ms;
                    }
                    self.in_flight.remove(&doc);
                    self.pump(store, &doc, false);
                }
                if self.now_ms - self.last_manifest_ms >= self.cfg.manifest_interval_ms {
                    // The first manifest after the handshake is always full (`establish`); later rounds only
                    // need to find out whether anything differs.
                    if self.bucket_rounds() {
                        self.send_buckets(store);
                    } else if self.digest_rounds() {
                        self.send_digest(store);
                    } else {
                        self.send_manifest(store);
                    }
                }
                self.start_pending(store);
            }
            _ => {}
        }
    }
}

fn frame_name(frame: &Frame) -> &'static str {
    match frame {
        Frame::Hello(_) => "Hello",
        Frame::HelloAck(_) => "HelloAck",
        Frame::Refuse { .. } => "Refuse",
        Frame::Manifest(_) => "Manifest",
        Frame::Sync { .. } => "Sync",
        Frame::Ack { .. } => "Ack",
        Frame::Refused { .. } => "Refused",
        Frame::Ping { .. } => "Ping",
        Frame::Pong { .. } => "Pong",
        Frame::Digest(_) => "Digest",
        Frame::Buckets(_) => "Buckets",
        Frame::Scope(_) => "Scope",
    }
}
