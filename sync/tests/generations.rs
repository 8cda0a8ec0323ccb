//! Generations of state documents through real sessions and real files: a site overwrites its stock
//! document and the hub its escrow view for long enough that each starts new generations; the other side
//! takes every new generation, drops the older one, never merges an old one back, and the history each side
//! holds stays bounded while the values are the last written.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_wrap)]

use std::collections::VecDeque;

use oms_protocol::generations::{self, HISTORY_OPS_MIN};
use oms_protocol::sync::automerge::transaction::Transactable;
use oms_protocol::sync::automerge::{ROOT, ReadDoc};
use oms_protocol::sync::{Event, SessionConfig, SyncSession};
use oms_protocol::wire::{DocId, Frame, PeerId};
use oms_sync::{DocDb, DocDbError, Everything, SyncDocs};

fn id(s: &str) -> DocId {
    DocId::new(s).unwrap()
}

fn value(db: &DocDb, d: &DocId, key: &str) -> Option<i64> {
    let doc = db.read(d)?;
    let (v, _) = doc.get(ROOT, key).ok()??;
    v.as_i64()
}

/// Writes `round` into keys `k0..k3` of the current generation of `base`, then lets it rotate.
fn write(docs: &mut SyncDocs<Everything>, session: &mut SyncSession, base: &DocId, round: i64) {
    let current = docs.db.current(base);
    let d = docs.db.get_or_create(&current).unwrap();
    for k in 0..4 {
        d.put(ROOT, format!("k{k}"), round).unwrap();
    }
    d.commit();
    docs.db.mark_dirty(&current);
    let told = match docs.db.rotate_if_due(base).unwrap() {
        Some(next) => next,
        None => current,
    };
    session.local_change(docs, &told);
}

fn drain(s: &mut SyncSession, db: &mut DocDb, refused: &mut usize) {
    while let Some(ev) = s.poll_event() {
        match ev {
            Event::DocChanged { doc } => db.mark_dirty(&doc),
            Event::Closed { code, reason, .. } => panic!("session closed: {code} {reason}"),
            // A message about an older generation crossing its replacement on the wire: refused, harmless.
            Event::PeerRefused { .. } => *refused += 1,
            Event::DocFailed { doc, code } => panic!("{doc}: {code}"),
            _ => {}
        }
    }
}

/// Exchanges frames (each side flushing before it sends, as the node and hub do) until both are idle.
fn settle(
    node: &mut SyncDocs<Everything>,
    hub: &mut SyncDocs<Everything>,
    ns: &mut SyncSession,
    hs: &mut SyncSession,
    now: &mut u64,
    refused: &mut usize,
) {
    let mut to_hub: VecDeque<Frame> = VecDeque::new();
    let mut to_node: VecDeque<Frame> = VecDeque::new();
    for _ in 0..200 {
        *now += 10;
        while let Some(f) = to_node.pop_front() {
            ns.handle_frame(node, f);
        }
        ns.tick(node, *now);
        drain(ns, &mut node.db, refused);
        node.db.flush().unwrap();
        to_hub.extend(std::iter::from_fn(|| ns.poll_transmit()));
        while let Some(f) = to_hub.pop_front() {
            hs.handle_frame(hub, f);
        }
        hs.tick(hub, *now);
        drain(hs, &mut hub.db, refused);
        hub.db.flush().unwrap();
        to_node.extend(std::iter::from_fn(|| hs.poll_transmit()));
        if to_node.is_empty() && ns.is_idle() && hs.is_idle() {
            return;
        }
    }
    panic!("the sessions did not settle in 200 exchanges: node {:?}, hub {:?}", ns.sizes(), hs.sizes());
}

#[test]
fn state_documents_rotate_through_sync_and_old_generations_never_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let (node_path, hub_path) = (dir.path().join("sync.redb"), dir.path().join("hub.redb"));
    let (n, h) = (PeerId::new("oms://t/node/wh-a").unwrap(), PeerId::new("oms://t/hub").unwrap());
    let cfg = SessionConfig { manifest_interval_ms: 1_000, ..SessionConfig::default() };
    let mut node = SyncDocs::new(DocDb::open(&node_path, vec![1; 16], 1_000).unwrap(), Everything);
    let mut hub = SyncDocs::new(DocDb::open(&hub_path, vec![2; 16], 1_000).unwrap(), Everything);
    let mut now = 1_000;
    let mut ns = SyncSession::new_client(cfg.clone(), n.clone(), h.clone(), vec![1; 16], now);
    let mut hs = SyncSession::new_server(cfg.clone(), h.clone(), n.clone(), vec![2; 16], now);
    let mut refused = 0;
    settle(&mut node, &mut hub, &mut ns, &mut hs, &mut now, &mut refused);
    let (stock, escrow) = (id("stock/wh-a"), id("escrow/wh-a"));
    // 4 operations a round: 3,000 rounds are 12,000 operations, over two generations' worth of history.
    let rounds = 3_000i64;
    let mut generations_seen = (0u32, 0u32);
    let mut history_max = 0u64;
    for round in 1..=rounds {
        write(&mut node, &mut ns, &stock, round);
        write(&mut hub, &mut hs, &escrow, -round);
        if round % 250 == 0 {
            settle(&mut node, &mut hub, &mut ns, &mut hs, &mut now, &mut refused);
            for (db, base) in [(&node.db, &stock), (&hub.db, &stock), (&node.db, &escrow), (&hub.db, &escrow)] {
                // Both sides hold exactly one generation of each, the same one, with the last value.
                let current = db.current(base);
                assert!(db.contains(&current), "{current} held");
                for older in 0..generations::of(&current) {
                    let name = generations::name(base, older).unwrap();
                    assert!(!db.contains(&name), "{name} still held beside {current}");
                }
                let want = if base == &stock { round } else { -round };
                assert_eq!(value(db, &current, "k3"), Some(want), "{current} after round {round}");
                let ops = db.read(&current).unwrap().stats().num_ops;
                history_max = history_max.max(ops);
            }
            assert_eq!(node.db.current(&stock), hub.db.current(&stock));
            assert_eq!(node.db.current(&escrow), hub.db.current(&escrow));
            generations_seen = (generations::of(&node.db.current(&stock)), generations::of(&hub.db.current(&escrow)));
        }
    }
    // Rotated (more than once) and bounded: without generations each would hold 12,000 operations.
    assert!(generations_seen.0 >= 2 && generations_seen.1 >= 2, "generations {generations_seen:?}");
    assert!(history_max <= HISTORY_OPS_MIN + 4 + 2 * 8, "history reached {history_max} operations");

    // An older generation is refused, by the store and by the session: it is never created or merged again.
    let old = generations::name(&stock, 1).unwrap();
    assert!(hub.db.is_superseded(&old) && node.db.is_superseded(&old));
    assert!(matches!(hub.db.get_or_create(&old), Err(DocDbError::Superseded { .. })));
    assert!(!oms_protocol::sync::DocStore::entitled(&hub, &n, &old));
    let mut stale = oms_protocol::sync::automerge::AutoCommit::new();
    stale.put(ROOT, "k0", 7i64).unwrap();
    stale.commit();
    let mut state = oms_protocol::sync::automerge::sync::State::new();
    let msg = oms_protocol::sync::automerge::sync::SyncDoc::generate_sync_message(&stale.sync(), &mut state).unwrap();
    hs.handle_frame(&mut hub, Frame::Sync { doc: old.clone(), msg: msg.encode() });
    assert!(!hub.db.contains(&old), "an older generation was created again from a peer's message");

    // Reopened, each side still knows which generation is current.
    let (node_current, hub_current) = (node.db.current(&stock), hub.db.current(&escrow));
    drop((node, hub));
    let node = DocDb::open(&node_path, vec![3; 16], 1_000).unwrap();
    let hub = DocDb::open(&hub_path, vec![4; 16], 1_000).unwrap();
    assert_eq!(node.current(&stock), node_current);
    assert_eq!(hub.current(&escrow), hub_current);
    assert!(hub.is_superseded(&old));
    assert_eq!(value(&hub, &hub.current(&stock), "k0"), Some(rounds));
    assert_eq!(value(&node, &node.current(&escrow), "k0"), Some(-rounds));
}
