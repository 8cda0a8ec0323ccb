//! Sync sessions under a simulated network: one hub, two nodes, random edits, loss, duplication,
//! reordering, partitions and reconnects; then a clean network for a bounded number of rounds, after which
//! every replica must hold the same heads of every document it shares, and no node may ever have received a
//! document it is not entitled to.
//!
//! Replay: proptest prints the minimal failing action list and stores its seed in
//! `proptest-regressions/sync/tests.txt`, which is replayed first on the next run. `PROPTEST_CASES=N` changes
//! the number of cases.

use super::*;
use crate::wire::{decode_body, encode_frame};
use automerge::transaction::Transactable;
use automerge::{ActorId, ROOT};
use proptest::prelude::*;
use std::collections::HashMap;

const NODES: usize = 2;

fn hub_id() -> PeerId {
    PeerId::new("oms://t/hub").unwrap()
}

fn node_id(i: usize) -> PeerId {
    PeerId::new(format!("oms://t/node/n{i}")).unwrap()
}

fn doc(name: &str) -> DocId {
    DocId::new(name).unwrap()
}

/// Who may hold what, as the hub sees it: `shared-*` for everyone, `n<i>-*` for node i, `hub-*` for no node.
fn node_entitled(node: usize, doc: &DocId) -> bool {
    let d = doc.as_str();
    d.starts_with("shared-") || d.starts_with(&format!("n{node}-"))
}

struct MemStore {
    /// `None` for the hub, `Some(i)` for node i.
    node: Option<usize>,
    actor: u8,
    docs: BTreeMap<DocId, AutoCommit>,
    states: HashMap<(PeerId, DocId), Vec<u8>>,
    /// Every document ever created here because a peer sent it.
    received: BTreeSet<DocId>,
}

impl MemStore {
    fn new(node: Option<usize>, actor: u8) -> Self {
        Self { node, actor, docs: BTreeMap::new(), states: HashMap::new(), received: BTreeSet::new() }
    }

    fn new_doc(&self) -> AutoCommit {
        AutoCommit::new().with_actor(ActorId::from(vec![self.actor; 16]))
    }

    fn edit(&mut self, id: &DocId, key: u8, value: u8) {
        if !self.docs.contains_key(id) {
            let d = self.new_doc();
            self.docs.insert(id.clone(), d);
        }
        let d = self.docs.get_mut(id).unwrap();
        d.put(ROOT, format!("k{key}"), i64::from(value)).unwrap();
        d.commit();
    }

    fn heads(&mut self, id: &DocId) -> Option<Vec<Hash>> {
        self.docs.get_mut(id).map(|d| sorted(hashes(&d.get_heads())))
    }

    /// Whether this replica should hold `doc` when it exists anywhere.
    fn shares(&self, doc: &DocId) -> bool {
        match self.node {
            None => true,
            Some(i) => node_entitled(i, doc),
        }
    }
}

impl DocStore for MemStore {
    fn entitled(&self, peer: &PeerId, doc: &DocId) -> bool {
        match self.node {
            // Nodes trust the hub with everything they hold.
            Some(_) => true,
            None => (0..NODES).any(|i| *peer == node_id(i) && node_entitled(i, doc)),
        }
    }

    fn docs_for(&self, peer: &PeerId) -> Vec<DocId> {
        self.docs.keys().filter(|d| self.entitled(peer, d)).cloned().collect()
    }

    fn doc_mut(&mut self, doc: &DocId) -> Option<&mut AutoCommit> {
        self.docs.get_mut(doc)
    }

    fn create_doc(&mut self, doc: &DocId) -> Result<&mut AutoCommit, StoreError> {
        self.received.insert(doc.clone());
        let d = self.new_doc();
        Ok(self.docs.entry(doc.clone()).or_insert(d))
    }

    fn load_sync_state(&self, peer: &PeerId, doc: &DocId) -> Option<Vec<u8>> {
        self.states.get(&(peer.clone(), doc.clone())).cloned()
    }

    fn save_sync_state(&mut self, peer: &PeerId, doc: &DocId, state: Vec<u8>) {
        self.states.insert((peer.clone(), doc.clone()), state);
    }
}

/// One node ↔ hub connection: a session on each side and a frame queue in each direction.
struct Link {
    node: SyncSession,
    hub: SyncSession,
    to_hub: VecDeque<Frame>,
    to_node: VecDeque<Frame>,
    partitioned: bool,
}

fn cfg() -> SessionConfig {
    SessionConfig {
        docs_in_flight_max: 3,
        outbound_frames_max: 16,
        manifest_docs_per_frame_max: 2,
        hello_retry_ms: 100,
        doc_stall_ms: 300,
        manifest_interval_ms: 500,
        ..SessionConfig::default()
    }
}

struct Sim {
    hub: MemStore,
    nodes: Vec<MemStore>,
    links: Vec<Link>,
    now_ms: u64,
    /// Frames delivered, to bound the run.
    delivered: usize,
    /// Bytes of Automerge sync messages delivered.
    sync_bytes: usize,
}

#[derive(Debug, Clone)]
enum Action {
    /// Replica `who` (0 = hub, 1.. = nodes) edits document `doc` of its choice.
    Edit {
        who: u8,
        doc: u8,
        key: u8,
        value: u8,
    },
    /// Deliver the frame at index `pick` (reordering) on link `link`, direction `to_hub`, dropping or
    /// duplicating it per `fate` (0..80 deliver, 80..90 drop, 90..100 duplicate).
    Deliver {
        link: u8,
        to_hub: bool,
        pick: u8,
        fate: u8,
    },
    Tick {
        ms: u16,
    },
    Partition {
        link: u8,
        on: bool,
    },
    /// The connection breaks: both sessions and their queues are gone; a new connection starts.
    Reconnect {
        link: u8,
    },
}

fn doc_name(who: usize, doc: u8) -> DocId {
    // The hub edits any document; a node edits shared ones and its own.
    match (who, doc % 4) {
        (_, 0) | (_, 1) => DocId::new(format!("shared-{}", doc % 2)).unwrap(),
        (0, 2) => DocId::new(format!("n{}-{}", doc % 2, doc % 3)).unwrap(),
        (0, _) => doc_name_hub(doc),
        (n, _) => DocId::new(format!("n{}-{}", n - 1, doc % 3)).unwrap(),
    }
}

fn doc_name_hub(doc: u8) -> DocId {
    DocId::new(format!("hub-{}", doc % 2)).unwrap()
}

impl Sim {
    fn new() -> Self {
        let mut hub = MemStore::new(None, 100);
        hub.edit(&doc("shared-0"), 0, 0);
        hub.edit(&doc("hub-0"), 0, 0);
        let nodes = (0..NODES).map(|i| MemStore::new(Some(i), i as u8 + 1)).collect();
        let mut sim = Sim { hub, nodes, links: Vec::new(), now_ms: 0, delivered: 0, sync_bytes: 0 };
        sim.links = (0..NODES).map(|i| sim.connect(i)).collect();
        sim
    }

    fn connect(&self, i: usize) -> Link {
        Link {
            node: SyncSession::new_client(cfg(), node_id(i), hub_id(), vec![i as u8 + 1], self.now_ms),
            hub: SyncSession::new_server(cfg(), hub_id(), node_id(i), vec![100], self.now_ms),
            to_hub: VecDeque::new(),
            to_node: VecDeque::new(),
            partitioned: false,
        }
    }

    /// Moves outbound frames of every session into the link queues, through encode + decode so the wire
    /// format is exercised too; checks entitlement on everything headed for a node.
    fn flush(&mut self) {
        for (i, link) in self.links.iter_mut().enumerate() {
            while let Some(f) = link.node.poll_transmit() {
                link.to_hub.push_back(roundtrip(&f));
            }
            while let Some(f) = link.hub.poll_transmit() {
                if let Frame::Sync { doc, .. } | Frame::Ack { doc, .. } = &f {
                    assert!(node_entitled(i, doc), "hub sent {doc} to node {i}, which is not entitled to it");
                }
                if let Frame::Manifest(m) = &f {
                    for e in &m.docs {
                        assert!(node_entitled(i, &e.doc), "hub listed {} to node {i}", e.doc);
                    }
                }
                link.to_node.push_back(roundtrip(&f));
            }
            while link.node.poll_event().is_some() {}
            while link.hub.poll_event().is_some() {}
            assert!(
                !link.node.is_closed() && !link.hub.is_closed(),
                "a session closed: {:?} / {:?}",
                link.node,
                link.hub
            );
        }
    }

    fn deliver(&mut self, link: usize, to_hub: bool, pick: usize, fate: u8) {
        let l = &mut self.links[link];
        let queue = if to_hub { &mut l.to_hub } else { &mut l.to_node };
        if queue.is_empty() {
            return;
        }
        let idx = pick % queue.len();
        let frame = queue.remove(idx).unwrap();
        if l.partitioned || (80..90).contains(&fate) {
            return;
        }
        let copies = if fate >= 90 { 2 } else { 1 };
        for _ in 0..copies {
            self.delivered += 1;
            if let Frame::Sync { msg, .. } = &frame {
                self.sync_bytes += msg.len();
            }
            let l = &mut self.links[link];
            if to_hub {
                l.hub.handle_frame(&mut self.hub, frame.clone());
            } else {
                l.node.handle_frame(&mut self.nodes[link], frame.clone());
            }
        }
        self.flush();
    }

    fn tick(&mut self, ms: u64) {
        self.now_ms += ms;
        for (i, link) in self.links.iter_mut().enumerate() {
            link.node.tick(&mut self.nodes[i], self.now_ms);
            link.hub.tick(&mut self.hub, self.now_ms);
        }
        self.flush();
    }

    fn apply(&mut self, action: &Action) {
        match *action {
            Action::Edit { who, doc, key, value } => {
                let who = who as usize % (NODES + 1);
                let id = doc_name(who, doc);
                if who == 0 {
                    self.hub.edit(&id, key, value);
                    for link in &mut self.links {
                        link.hub.local_change(&mut self.hub, &id);
                    }
                } else {
                    self.nodes[who - 1].edit(&id, key, value);
                    self.links[who - 1].node.local_change(&mut self.nodes[who - 1], &id);
                }
                self.flush();
            }
            Action::Deliver { link, to_hub, pick, fate } => {
                self.deliver(link as usize % NODES, to_hub, pick as usize, fate % 100)
            }
            Action::Tick { ms } => self.tick(u64::from(ms)),
            Action::Partition { link, on } => self.links[link as usize % NODES].partitioned = on,
            Action::Reconnect { link } => {
                let i = link as usize % NODES;
                self.links[i] = self.connect(i);
                self.flush();
            }
        }
    }

    /// Clean network: every frame delivered in order. Returns the number of rounds until convergence.
    fn heal(&mut self, rounds_max: usize) -> Result<usize, String> {
        for link in &mut self.links {
            link.partitioned = false;
        }
        for round in 0..rounds_max {
            self.tick(1_000);
            let mut steps = 0;
            while self.links.iter().any(|l| !l.to_hub.is_empty() || !l.to_node.is_empty()) {
                steps += 1;
                assert!(steps < 100_000, "no quiescence after {steps} deliveries");
                for i in 0..NODES {
                    self.deliver(i, true, 0, 0);
                    self.deliver(i, false, 0, 0);
                }
            }
            if self.converged().is_ok() {
                return Ok(round);
            }
        }
        self.converged().map(|()| rounds_max)
    }

    fn converged(&mut self) -> Result<(), String> {
        let mut all: BTreeSet<DocId> = self.hub.docs.keys().cloned().collect();
        for n in &self.nodes {
            all.extend(n.docs.keys().cloned());
        }
        for id in &all {
            let hub_heads = self.hub.heads(id);
            if hub_heads.is_none() {
                return Err(format!("hub lacks {id}"));
            }
            for (i, n) in self.nodes.iter_mut().enumerate() {
                if n.shares(id) && n.heads(id) != hub_heads {
                    return Err(format!("node {i} has {id} at {:?}, hub at {:?}", n.heads(id), hub_heads));
                }
            }
        }
        Ok(())
    }

    fn check_entitlement(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            for id in n.docs.keys() {
                assert!(node_entitled(i, id), "node {i} holds {id}, which it is not entitled to");
            }
        }
    }
}

fn roundtrip(f: &Frame) -> Frame {
    let bytes = encode_frame(f).unwrap();
    decode_body(&bytes[crate::wire::LENGTH_PREFIX_BYTES..]).unwrap()
}

fn arb_action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(who, doc, key, value)| Action::Edit { who, doc, key, value }),
        10 => (any::<u8>(), any::<bool>(), 0u8..4, any::<u8>())
            .prop_map(|(link, to_hub, pick, fate)| Action::Deliver { link, to_hub, pick, fate }),
        2 => (0u16..400).prop_map(|ms| Action::Tick { ms }),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(link, on)| Action::Partition { link, on }),
        1 => any::<u8>().prop_map(|link| Action::Reconnect { link }),
    ]
}

/// Rounds of clean network allowed for convergence after the chaos.
const HEAL_ROUNDS_MAX: usize = 10;

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge_after_chaos(actions in proptest::collection::vec(arb_action(), 0..150)) {
        let mut sim = Sim::new();
        sim.flush();
        for a in &actions {
            sim.apply(a);
            sim.check_entitlement();
        }
        let rounds = sim.heal(HEAL_ROUNDS_MAX);
        sim.check_entitlement();
        prop_assert!(rounds.is_ok(), "no convergence after {} clean rounds: {:?}", HEAL_ROUNDS_MAX, rounds);
    }
}

#[test]
fn clean_network_converges_in_one_round() {
    let mut sim = Sim::new();
    sim.nodes[0].edit(&doc("n0-1"), 1, 1);
    sim.nodes[1].edit(&doc("shared-0"), 2, 2);
    sim.flush();
    assert_eq!(sim.heal(3), Ok(0));
    assert!(!sim.nodes[1].docs.contains_key(&doc("n0-1")), "node 1 received node 0's document");
    assert!(sim.nodes[0].docs.contains_key(&doc("shared-0")));
    assert!(!sim.nodes[0].docs.contains_key(&doc("hub-0")));
}

/// A session keeps no per-document state once in sync, and none for documents only the peer holds (the peer
/// sends them): a hub with a million documents would otherwise hold a sync state per document per node.
#[test]
fn documents_only_the_peer_holds_keep_no_state() {
    let mut hub = MemStore::new(None, 100);
    let mut s = SyncSession::new_server(cfg(), hub_id(), node_id(0), vec![100], 0);
    s.handle_frame(
        &mut hub,
        Frame::Hello(Hello { version: 1, min_version: 1, capabilities: 0, peer_id: node_id(0), actor: vec![] }),
    );
    while s.poll_transmit().is_some() {}
    let docs = (0..50u8).map(|k| ManifestEntry { doc: doc(&format!("n0-{k}")), heads: vec![[k; 32]] }).collect();
    s.handle_frame(&mut hub, Frame::Manifest(Manifest { round: 1, docs, last: true }));
    s.tick(&mut hub, 100);
    assert_eq!(s.docs_tracked(), 0);
    assert!(s.is_idle(), "{s:?}");

    let mut sim = Sim::new();
    for k in 0..6 {
        sim.nodes[0].edit(&doc(&format!("n0-{k}")), 1, k);
        sim.nodes[1].edit(&doc(&format!("shared-{}", k % 2)), 2, k);
    }
    sim.flush();
    sim.heal(5).unwrap();
    for l in &sim.links {
        assert_eq!((l.hub.docs_tracked(), l.node.docs_tracked()), (0, 0));
    }
}

/// Bytes of sync messages needed to bring node 0 up to date after a reconnect, following one small edit to a
/// document of 300 changes that both sides held in sync before.
fn resync_bytes(keep_sync_state: bool) -> usize {
    let mut sim = Sim::new();
    for k in 0..300u16 {
        sim.hub.edit(&doc("shared-0"), (k % 256) as u8, 1);
    }
    sim.flush();
    sim.heal(3).unwrap();
    let saved = sim.hub.load_sync_state(&node_id(0), &doc("shared-0")).expect("sync state persisted");
    let shared = State::decode(&saved).unwrap().shared_heads;
    assert_eq!(Some(sorted(hashes(&shared))), sim.hub.heads(&doc("shared-0")));
    if !keep_sync_state {
        sim.hub.states.clear();
        sim.nodes[0].states.clear();
    }
    sim.links[0] = sim.connect(0);
    sim.nodes[0].edit(&doc("shared-0"), 1, 99);
    sim.flush();
    sim.sync_bytes = 0;
    sim.heal(3).unwrap();
    sim.sync_bytes
}

/// Reconnecting resumes from the persisted sync state: the peers exchange only what is new since their shared
/// heads, instead of Bloom filters over the whole history.
#[test]
fn reconnect_resumes_from_persisted_state() {
    let resumed = resync_bytes(true);
    let fresh = resync_bytes(false);
    assert!(resumed * 2 < fresh, "resumed resync sent {resumed} bytes, a fresh one {fresh}");
}

/// A node that asks for a document it is not entitled to gets `Refused` and nothing else.
#[test]
fn request_for_unentitled_doc_is_refused() {
    let mut hub = MemStore::new(None, 100);
    hub.edit(&doc("hub-0"), 1, 1);
    hub.edit(&doc("n1-0"), 1, 1);
    let mut s = SyncSession::new_server(cfg(), hub_id(), node_id(0), vec![100], 0);
    s.handle_frame(
        &mut hub,
        Frame::Hello(match SyncSession::new_client(cfg(), node_id(0), hub_id(), vec![1], 0).poll_transmit() {
            Some(Frame::Hello(h)) => h,
            other => panic!("expected Hello, got {other:?}"),
        }),
    );
    while s.poll_transmit().is_some() {}
    let mut empty = AutoCommit::new();
    let mut state = State::new();
    let ask = empty.sync().generate_sync_message(&mut state).unwrap().encode();
    for name in ["hub-0", "n1-0"] {
        s.handle_frame(&mut hub, Frame::Sync { doc: doc(name), msg: ask.clone() });
        assert_eq!(s.poll_transmit(), Some(Frame::Refused { doc: doc(name), code: ErrorCode::NotEntitled }));
        assert_eq!(s.poll_transmit(), None);
    }
    // Offering one in a manifest is refused the same way and it is never scheduled.
    s.handle_frame(
        &mut hub,
        Frame::Manifest(Manifest {
            round: 1,
            docs: vec![ManifestEntry { doc: doc("hub-0"), heads: vec![] }],
            last: true,
        }),
    );
    assert_eq!(s.poll_transmit(), Some(Frame::Refused { doc: doc("hub-0"), code: ErrorCode::NotEntitled }));
    assert_eq!(s.poll_transmit(), None);
    assert!(!s.is_closed());
}

#[test]
fn hello_with_wrong_identity_or_version_is_refused() {
    let mut hub = MemStore::new(None, 100);
    let hello = |peer: PeerId, version, min_version| {
        Frame::Hello(Hello { version, min_version, capabilities: 0, peer_id: peer, actor: vec![] })
    };
    let mut s = SyncSession::new_server(cfg(), hub_id(), node_id(0), vec![100], 0);
    s.handle_frame(&mut hub, hello(node_id(1), PROTOCOL_VERSION, PROTOCOL_VERSION_MIN));
    assert!(matches!(s.poll_transmit(), Some(Frame::Refuse { code: ErrorCode::Unauthorized, .. })));
    assert!(s.is_closed());

    let mut s = SyncSession::new_server(cfg(), hub_id(), node_id(0), vec![100], 0);
    s.handle_frame(&mut hub, hello(node_id(0), PROTOCOL_VERSION + 5, PROTOCOL_VERSION + 1));
    assert!(matches!(s.poll_transmit(), Some(Frame::Refuse { code: ErrorCode::UnsupportedVersion, .. })));

    // A newer node that still speaks our version is accepted at our version.
    let mut s = SyncSession::new_server(cfg(), hub_id(), node_id(0), vec![100], 0);
    s.handle_frame(&mut hub, hello(node_id(0), PROTOCOL_VERSION + 5, PROTOCOL_VERSION));
    assert!(matches!(s.poll_transmit(), Some(Frame::HelloAck(HelloAck { version: PROTOCOL_VERSION, .. }))));

    // Anything but Hello first is a protocol violation.
    let mut s = SyncSession::new_server(cfg(), hub_id(), node_id(0), vec![100], 0);
    s.handle_frame(&mut hub, Frame::Ping { nonce: 1 });
    assert!(matches!(s.poll_transmit(), Some(Frame::Refuse { code: ErrorCode::ProtocolViolation, .. })));
}

#[test]
fn manifest_is_chunked_and_bounded() {
    let mut hub = MemStore::new(None, 100);
    for k in 0..5 {
        hub.edit(&doc(&format!("shared-{k}")), 1, 1);
    }
    let mut s = SyncSession::new_server(cfg(), hub_id(), node_id(0), vec![100], 0);
    s.handle_frame(
        &mut hub,
        Frame::Hello(Hello { version: 1, min_version: 1, capabilities: 0, peer_id: node_id(0), actor: vec![] }),
    );
    assert!(matches!(s.poll_transmit(), Some(Frame::HelloAck(_))));
    let mut chunks = Vec::new();
    while let Some(Frame::Manifest(m)) = s.poll_transmit() {
        assert!(m.docs.len() <= cfg().manifest_docs_per_frame_max);
        chunks.push(m);
    }
    assert_eq!(chunks.len(), 3);
    assert!(chunks.iter().rev().skip(1).all(|m| !m.last) && chunks.last().unwrap().last);
}
