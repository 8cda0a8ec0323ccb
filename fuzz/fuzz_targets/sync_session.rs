//! A hub-side `SyncSession` fed a valid Hello, then frames decoded from arbitrary bytes or built from
//! arbitrary choices (documents of the store, real Automerge sync messages), ticks and local changes, against
//! the in-memory `DocStore` of `protocol/tests/support`. No panic; a session closed by us queued a `Refuse`
//! with a typed code; a closed session stays silent; the queues and per-document tables stay bounded by the
//! limits and the documents the store holds; nothing leaves for a document the node is not entitled to.
#![no_main]

#[path = "../../protocol/tests/support/mod.rs"]
mod support;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use oms_protocol::sync::automerge::sync::{Message, State, SyncDoc};
use oms_protocol::sync::automerge::transaction::Transactable;
use oms_protocol::sync::automerge::{ActorId, AutoCommit, ROOT};
use oms_protocol::sync::{DocStore, Event, SyncSession};
use oms_protocol::wire::{
    Digest, DocId, ErrorCode, Frame, Hello, HelloAck, Manifest, ManifestEntry, PeerId, decode_body, encode_frame,
};
use std::collections::BTreeMap;
use support::{DOC_NAMES, MemStore, node_entitled, node_id, server, small_config, valid_hello};

/// Steps per input, so one input cannot run for long.
const STEPS_MAX: usize = 64;

fn doc(u: &mut Unstructured<'_>) -> Result<DocId> {
    let i = u.choose_index(DOC_NAMES.len())?;
    Ok(DocId::new(DOC_NAMES[i]).expect("valid doc id"))
}

fn heads(u: &mut Unstructured<'_>, store: &mut MemStore, d: &DocId) -> Result<Vec<[u8; 32]>> {
    Ok(match u.int_in_range(0u8..=2)? {
        0 => vec![],
        1 => (0..u.int_in_range(1u8..=2)?).map(|_| u.arbitrary()).collect::<Result<_>>()?,
        _ => store.docs.get_mut(d).map(|x| x.get_heads().iter().map(|h| h.0).collect()).unwrap_or_default(),
    })
}

/// A frame built from choices, so that document ids, heads and sync messages are meaningful.
fn built_frame(
    u: &mut Unstructured<'_>,
    store: &mut MemStore,
    node: &mut BTreeMap<DocId, AutoCommit>,
) -> Result<Frame> {
    Ok(match u.int_in_range(0u8..=9)? {
        0 => Frame::Hello(Hello {
            version: u.int_in_range(0..=3)?,
            min_version: u.int_in_range(0..=3)?,
            capabilities: u.arbitrary()?,
            peer_id: if u.arbitrary()? { node_id() } else { PeerId::new("oms://t/node/n2").expect("valid") },
            actor: vec![],
        }),
        1 => Frame::HelloAck(HelloAck { version: 1, capabilities: 0, peer_id: node_id(), actor: vec![] }),
        2 => Frame::Refuse { code: ErrorCode::from_u32(u.arbitrary()?), reason: String::new() },
        3 => {
            let mut docs = Vec::new();
            for _ in 0..u.int_in_range(0u8..=20)? {
                let d = doc(u)?;
                docs.push(ManifestEntry { heads: heads(u, store, &d)?, doc: d });
            }
            Frame::Manifest(Manifest { round: u.int_in_range(0..=3)?, docs, last: u.arbitrary()? })
        }
        4 => {
            let d = doc(u)?;
            let n = node.entry(d.clone()).or_insert_with(|| AutoCommit::new().with_actor(ActorId::from(vec![1; 16])));
            for k in 0..u.int_in_range(0u8..=3)? {
                n.put(ROOT, format!("k{k}"), i64::from(u.arbitrary::<u8>()?)).expect("put");
                n.commit();
            }
            let msg = n.sync().generate_sync_message(&mut State::new()).map(Message::encode).unwrap_or_default();
            Frame::Sync { doc: d, msg }
        }
        5 => {
            let d = doc(u)?;
            Frame::Ack { heads: heads(u, store, &d)?, doc: d }
        }
        6 => Frame::Refused { doc: doc(u)?, code: ErrorCode::from_u32(u.arbitrary()?) },
        7 => Frame::Ping { nonce: u.arbitrary()? },
        8 => Frame::Pong { nonce: u.arbitrary()? },
        _ => Frame::Digest(Digest { round: u.arbitrary()?, docs: u.int_in_range(0..=8)?, hash: u.arbitrary()? }),
    })
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let cfg = small_config();
    let mut store = MemStore::seeded(8);
    let mut node: BTreeMap<DocId, AutoCommit> = BTreeMap::new();
    let mut now = 0u64;
    let mut s: SyncSession = server(now);
    s.handle_frame(&mut store, valid_hello());
    assert!(s.is_established());
    let mut closed = false;
    for _ in 0..STEPS_MAX {
        if u.is_empty() {
            break;
        }
        let mut fed = None;
        match u.int_in_range(0u8..=9)? {
            // Raw bytes: whatever decodes is fed, the rest is what the decoder would have refused.
            0..=2 => {
                let len = usize::from(u.int_in_range(0u16..=512)?);
                if let Ok(frame) = decode_body(u.bytes(len.min(u.len()))?) {
                    fed = Some(frame);
                }
            }
            3..=7 => fed = Some(built_frame(u, &mut store, &mut node)?),
            8 => {
                now += u64::from(u.int_in_range(0u16..=1000)?);
                s.tick(&mut store, now);
            }
            _ => {
                let d = doc(u)?;
                if let Ok(x) = store.create_doc(&d) {
                    x.put(ROOT, "hub", now as i64).expect("put");
                    x.commit();
                    s.local_change(&mut store, &d);
                }
            }
        }
        if let Some(frame) = &fed {
            s.handle_frame(&mut store, frame.clone());
        }
        let out: Vec<Frame> = std::iter::from_fn(|| s.poll_transmit()).take(100_000).collect();
        let events: Vec<Event> = std::iter::from_fn(|| s.poll_event()).take(100_000).collect();
        if closed {
            assert!(out.is_empty() && events.is_empty(), "a closed session spoke: {out:?} {events:?}");
            continue;
        }
        for e in &events {
            if let Event::Closed { code, by_peer, .. } = e {
                closed = true;
                assert!(s.is_closed());
                if *by_peer {
                    assert!(matches!(fed, Some(Frame::Refuse { code: c, .. }) if c == *code));
                } else {
                    assert!(!matches!(code, ErrorCode::NoError | ErrorCode::Unknown), "untyped close {code}");
                    assert!(matches!(out.last(), Some(Frame::Refuse { code: c, .. }) if c == code), "{out:?}");
                }
            }
        }
        for f in &out {
            if let Frame::Sync { doc, .. } | Frame::Ack { doc, .. } = f {
                assert!(node_entitled(doc), "sent {doc}");
            }
            if let Frame::Manifest(m) = f {
                assert!(m.docs.iter().all(|e| node_entitled(&e.doc)));
                assert!(m.docs.len() <= cfg.manifest_docs_per_frame_max);
            }
            encode_frame(f).expect("every frame sent encodes");
        }
        if closed {
            continue;
        }
        let entries = match &fed {
            Some(Frame::Manifest(m)) => m.docs.len(),
            _ => 0,
        };
        let held = store.entitled_held();
        let chunks = held / cfg.manifest_docs_per_frame_max + 1;
        assert!(out.len() <= 2 + entries + cfg.outbound_frames_max + held + chunks, "{} frames out", out.len());
        let sizes = s.sizes();
        assert_eq!((sizes.outbound, sizes.events), (0, 0));
        assert!(sizes.in_flight <= held, "{sizes:?} with {held} held");
        assert!(sizes.pending <= held, "{sizes:?} with {held} held");
        assert!(sizes.doc_states <= held, "{sizes:?} with {held} held");
        assert!(sizes.refused_by_peer <= held, "{sizes:?} with {held} held");
        assert!(store.docs.len() <= store.docs_max);
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
