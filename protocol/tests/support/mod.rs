//! An in-memory hub-side [`DocStore`] and a server session factory, shared by `wire_fuzz.rs` and the
//! `sync_session` fuzz target (`fuzz/fuzz_targets/sync_session.rs` includes this file by path).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use oms_protocol::sync::automerge::transaction::Transactable;
use oms_protocol::sync::automerge::{ActorId, AutoCommit, ROOT};
use oms_protocol::sync::{DocStore, SessionConfig, StoreError, SyncSession};
use oms_protocol::wire::{DocId, Frame, Hello, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN, PeerId, capabilities};

pub fn hub_id() -> PeerId {
    PeerId::new("oms://t/hub").expect("valid peer id")
}

pub fn node_id() -> PeerId {
    PeerId::new("oms://t/node/n1").expect("valid peer id")
}

/// Document ids the generators draw from: `n1-*` and `shared-*` are the node's, `n2-*` and `hub-*` are not.
pub const DOC_NAMES: [&str; 12] =
    ["n1-a", "n1-b", "n1-c", "n1-d", "shared-a", "shared-b", "n2-a", "n2-b", "hub-a", "hub-b", "n1-e", "shared-c"];

/// Documents the store holds at the start, entitled or not.
pub const DOCS_HELD: [&str; 4] = ["n1-a", "shared-a", "n2-a", "hub-a"];

/// The hub's view: the node may hold `n1-*` and `shared-*`.
pub fn node_entitled(doc: &DocId) -> bool {
    let d = doc.as_str();
    d.starts_with("n1-") || d.starts_with("shared-")
}

/// The hub's documents in memory, with a cap on documents (a peer cannot make it hold more).
pub struct MemStore {
    pub docs: BTreeMap<DocId, AutoCommit>,
    pub states: BTreeMap<(PeerId, DocId), Vec<u8>>,
    pub docs_max: usize,
}

impl MemStore {
    /// A store holding [`DOCS_HELD`], each with one change, and room for `docs_max` documents.
    pub fn seeded(docs_max: usize) -> Self {
        let mut store = Self { docs: BTreeMap::new(), states: BTreeMap::new(), docs_max };
        for (i, name) in DOCS_HELD.iter().enumerate() {
            let id = DocId::new(*name).expect("valid doc id");
            let mut doc = AutoCommit::new().with_actor(ActorId::from(vec![0xA0; 16]));
            doc.put(ROOT, "k", i as i64).expect("put into a fresh document");
            doc.commit();
            store.docs.insert(id, doc);
        }
        store
    }

    /// Documents held that the node is entitled to.
    pub fn entitled_held(&self) -> usize {
        self.docs.keys().filter(|d| node_entitled(d)).count()
    }
}

impl DocStore for MemStore {
    fn entitled(&self, peer: &PeerId, doc: &DocId) -> bool {
        *peer == node_id() && node_entitled(doc)
    }

    fn docs_for(&self, peer: &PeerId) -> Vec<DocId> {
        self.docs.keys().filter(|d| self.entitled(peer, d)).cloned().collect()
    }

    fn doc_mut(&mut self, doc: &DocId) -> Option<&mut AutoCommit> {
        self.docs.get_mut(doc)
    }

    fn create_doc(&mut self, doc: &DocId) -> Result<&mut AutoCommit, StoreError> {
        if !self.docs.contains_key(doc) && self.docs.len() >= self.docs_max {
            return Err(StoreError { doc: doc.clone(), reason: "store full".into() });
        }
        Ok(self.docs.entry(doc.clone()).or_insert_with(|| AutoCommit::new().with_actor(ActorId::from(vec![0xA0; 16]))))
    }

    fn load_sync_state(&self, peer: &PeerId, doc: &DocId) -> Option<Vec<u8>> {
        self.states.get(&(peer.clone(), doc.clone())).cloned()
    }

    fn save_sync_state(&mut self, peer: &PeerId, doc: &DocId, state: Vec<u8>) {
        self.states.insert((peer.clone(), doc.clone()), state);
    }
}

/// Small limits, so that a short random run reaches them.
pub fn small_config() -> SessionConfig {
    SessionConfig {
        sync_msg_bytes_max: 64 * 1024,
        docs_in_flight_max: 2,
        outbound_frames_max: 8,
        manifest_docs_per_frame_max: 2,
        manifest_docs_max: 16,
        docs_tracked_max: 4,
        hello_retry_ms: 100,
        doc_stall_ms: 300,
        manifest_interval_ms: 500,
        capabilities: oms_protocol::wire::capabilities::ALL,
        ..SessionConfig::default()
    }
}

/// The Hello a well-behaved node of this build sends.
pub fn valid_hello() -> Frame {
    Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        min_version: PROTOCOL_VERSION_MIN,
        capabilities: capabilities::ALL,
        peer_id: node_id(),
        actor: vec![1; 16],
    })
}

/// A hub session for node `n1`.
pub fn server(now_ms: u64) -> SyncSession {
    SyncSession::new_server(small_config(), hub_id(), node_id(), vec![0xA0; 16], now_ms)
}
