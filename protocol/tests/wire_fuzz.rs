//! In-CI counterpart of the fuzz targets in `fuzz/`: bounded property tests of the wire decoder and of a
//! hub-side `SyncSession` fed hostile input. Each property is checked against an independent model, so a
//! change of behaviour (not only a panic) fails a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;

use oms_protocol::sync::automerge::sync::{Message, State, SyncDoc};
use oms_protocol::sync::automerge::transaction::Transactable;
use oms_protocol::sync::automerge::{ActorId, AutoCommit, ROOT};
use oms_protocol::sync::{DocStore, Event, ManifestDigest, SyncSession};
use oms_protocol::wire::{
    COMPRESSED_FLAG, Digest, DocId, ErrorCode, Frame, FrameDecoder, Hello, HelloAck, LENGTH_PREFIX_BYTES, Manifest,
    ManifestEntry, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN, PeerId, WireError, capabilities, decode_body, encode_frame,
    encode_frame_into,
};
use proptest::collection::vec;
use proptest::prelude::*;
use support::{DOC_NAMES, MemStore, node_entitled, node_id, server, small_config, valid_hello};

/// Body limit of the decoders under test: small, so that random lengths often exceed it.
const MAX: usize = 512;

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig { cases: n, failure_persistence: None, ..ProptestConfig::default() }
}

fn doc_id() -> impl Strategy<Value = DocId> {
    "[a-z0-9/-]{1,24}".prop_map(|s| DocId::new(s).unwrap())
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let peer = "[a-z/:0-9]{1,40}".prop_map(|s| PeerId::new(s).unwrap());
    let heads = vec(any::<[u8; 32]>(), 0..3);
    prop_oneof![
        (any::<u16>(), any::<u16>(), any::<u64>(), peer.clone(), vec(any::<u8>(), 0..16)).prop_map(
            |(version, min_version, capabilities, peer_id, actor)| {
                Frame::Hello(Hello { version, min_version, capabilities, peer_id, actor })
            }
        ),
        (any::<u16>(), any::<u64>(), peer, vec(any::<u8>(), 0..16)).prop_map(
            |(version, capabilities, peer_id, actor)| Frame::HelloAck(HelloAck {
                version,
                capabilities,
                peer_id,
                actor
            })
        ),
        (any::<u32>(), "[ -~]{0,40}")
            .prop_map(|(c, reason)| Frame::Refuse { code: ErrorCode::from_u32(c % 12), reason }),
        (any::<u32>(), vec((doc_id(), heads.clone()), 0..4), any::<bool>()).prop_map(|(round, docs, last)| {
            let docs = docs.into_iter().map(|(doc, heads)| ManifestEntry { doc, heads }).collect();
            Frame::Manifest(Manifest { round, docs, last })
        }),
        (doc_id(), vec(any::<u8>(), 0..300)).prop_map(|(doc, msg)| Frame::Sync { doc, msg }),
        (doc_id(), heads).prop_map(|(doc, heads)| Frame::Ack { doc, heads }),
        (doc_id(), any::<u32>()).prop_map(|(doc, c)| Frame::Refused { doc, code: ErrorCode::from_u32(c % 12) }),
        any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Frame::Pong { nonce }),
        (any::<u32>(), any::<u64>(), any::<[u8; 32]>()).prop_map(|(round, docs, hash)| Frame::Digest(Digest {
            round,
            docs,
            hash
        })),
    ]
}

/// One piece of a hostile stream.
#[derive(Debug, Clone)]
enum Seg {
    /// A well-formed frame.
    Valid(Frame),
    /// A length prefix beyond [`MAX`], then some body bytes.
    Oversize(u32, Vec<u8>),
    /// A correct length prefix in front of random body bytes.
    Garbage(Vec<u8>),
    /// Random bytes, prefix or not.
    Raw(Vec<u8>),
}

fn arb_seg() -> impl Strategy<Value = Seg> {
    prop_oneof![
        4 => arb_frame().prop_map(Seg::Valid),
        1 => ((MAX as u32 + 1)..COMPRESSED_FLAG, vec(any::<u8>(), 0..32)).prop_map(|(l, b)| Seg::Oversize(l, b)),
        2 => vec(any::<u8>(), 0..40).prop_map(Seg::Garbage),
        1 => vec(any::<u8>(), 0..24).prop_map(Seg::Raw),
    ]
}

fn stream_of(segs: &[Seg]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in segs {
        match s {
            Seg::Valid(f) => encode_frame_into(f, MAX, &mut out).unwrap(),
            Seg::Oversize(len, body) => {
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(body);
            }
            Seg::Garbage(body) => {
                out.extend_from_slice(&(body.len() as u32).to_le_bytes());
                out.extend_from_slice(body);
            }
            Seg::Raw(b) => out.extend_from_slice(b),
        }
    }
    out
}

/// What a correct decoder yields from the bytes received so far: the complete frames in order, ending at
/// the first error; an oversized length is an error as soon as its four bytes are there. Also returns the
/// bytes of the incomplete frame at the end (0 after an error). The model stops predicting at a complete
/// prefix flagged as deflated with a length within the limit (`None` for the partial bytes): what random
/// bytes inflate to is the unit tests' and the fuzz target's business, not this framing model's.
fn model(bytes: &[u8], max: usize) -> (Vec<Result<Frame, WireError>>, Option<usize>) {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let rest = &bytes[pos..];
        if rest.len() < LENGTH_PREFIX_BYTES {
            return (out, Some(rest.len()));
        }
        let raw = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let len = (raw & !COMPRESSED_FLAG) as usize;
        if len > max {
            out.push(Err(WireError::FrameTooLarge { len, max }));
            return (out, Some(0));
        }
        if raw & COMPRESSED_FLAG != 0 {
            return (out, None);
        }
        if rest.len() < LENGTH_PREFIX_BYTES + len {
            return (out, Some(rest.len()));
        }
        match decode_body(&rest[LENGTH_PREFIX_BYTES..LENGTH_PREFIX_BYTES + len]) {
            Ok(f) => out.push(Ok(f)),
            Err(e) => {
                out.push(Err(e));
                return (out, Some(0));
            }
        }
        pos += LENGTH_PREFIX_BYTES + len;
    }
}

/// The code a decoding error must carry.
fn expected_code(e: &WireError) -> ErrorCode {
    match e {
        WireError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
        WireError::Malformed(_) | WireError::Invalid { .. } | WireError::Truncated { .. } | WireError::Inflate(_) => {
            ErrorCode::Malformed
        }
        WireError::Deflate(_) => ErrorCode::Internal,
    }
}

/// Splits `bytes` into chunks whose sizes cycle through `cuts` (0 allowed: an empty push).
fn chunks<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut i = 0;
    // Bounded: every second chunk at the latest is non-empty (`cuts` has a non-zero entry or is all zeros).
    while !rest.is_empty() && out.len() < 4 * bytes.len() + 8 {
        let n = if cuts.iter().all(|c| *c == 0) { rest.len() } else { cuts[i % cuts.len()].min(rest.len()) };
        out.push(&rest[..n]);
        rest = &rest[n..];
        i += 1;
    }
    out
}

proptest! {
    #![proptest_config(cases(256))]

    /// Any stream of valid, oversized, garbage and raw pieces, in any chunking, decodes exactly as the model
    /// says, the decoder never holds more than one frame plus one chunk, and after an error it refuses input.
    #[test]
    fn decoder_matches_model_on_hostile_streams(
        segs in vec(arb_seg(), 0..8),
        cuts in vec(0usize..80, 1..16),
    ) {
        let bytes = stream_of(&segs);
        let mut d = FrameDecoder::new(MAX);
        let mut got: Vec<Result<Frame, WireError>> = Vec::new();
        let mut pushed = 0;
        for chunk in chunks(&bytes, &cuts) {
            let failed = got.last().is_some_and(Result::is_err);
            d.push(chunk);
            pushed += chunk.len();
            if failed {
                prop_assert_eq!(d.buffered_bytes(), 0, "a failed decoder buffers nothing");
            }
            prop_assert!(d.buffered_bytes() <= LENGTH_PREFIX_BYTES + MAX + chunk.len());
            // Drain (bounded: each frame takes at least a length prefix).
            for _ in 0..=bytes.len() / LENGTH_PREFIX_BYTES + 1 {
                match d.next_frame() {
                    Ok(Some(f)) => got.push(Ok(f)),
                    Ok(None) => break,
                    Err(e) => {
                        if !failed {
                            got.push(Err(e.clone()));
                        }
                        prop_assert_eq!(e.code(), expected_code(&e));
                        prop_assert_eq!(Some(&Err(e)), got.last(), "the same error every time");
                        break;
                    }
                }
            }
            let (want, partial) = model(&bytes[..pushed], MAX);
            match partial {
                Some(partial) => {
                    prop_assert_eq!(&got, &want);
                    prop_assert_eq!(d.buffered_bytes(), partial);
                }
                None => prop_assert!(got.starts_with(&want), "the decoder agrees up to the deflated frame"),
            }
            prop_assert!(d.buffered_bytes() < LENGTH_PREFIX_BYTES + MAX, "at most one partial frame");
        }
        let (want, partial) = model(&bytes, MAX);
        let Some(partial) = partial else {
            // Beyond the model: whatever the end of stream says, it says it without panicking.
            let _ = d.finish();
            return Ok(());
        };
        match want.last() {
            Some(Err(e)) => {
                prop_assert_eq!(d.finish(), Err(e.clone()));
                d.push(&[0; 64]);
                prop_assert_eq!(d.buffered_bytes(), 0);
                prop_assert_eq!(d.next_frame(), Err(e.clone()));
            }
            _ if partial > 0 => prop_assert_eq!(d.finish(), Err(WireError::Truncated { buffered: partial })),
            _ => prop_assert_eq!(d.finish(), Ok(())),
        }
    }

    /// A frame cut anywhere is incomplete, never a frame: the decoder waits and `finish` reports it as
    /// truncated with the bytes held; a body cut short or extended does not decode.
    #[test]
    fn truncated_frames_are_reported(frame in arb_frame(), cuts in vec(1usize..16, 1..8)) {
        let bytes = encode_frame(&frame).unwrap();
        for cut in 0..bytes.len() {
            let mut d = FrameDecoder::new(MAX);
            for c in chunks(&bytes[..cut], &cuts) {
                d.push(c);
                prop_assert_eq!(d.next_frame(), Ok(None));
            }
            let expected = if cut == 0 { Ok(()) } else { Err(WireError::Truncated { buffered: cut }) };
            prop_assert_eq!(d.finish(), expected.clone());
            prop_assert_eq!(d.finish().map_err(|e| e.code()), expected.map_err(|_| ErrorCode::Malformed));
        }
        let body = &bytes[LENGTH_PREFIX_BYTES..];
        for cut in 0..body.len() {
            let e = decode_body(&body[..cut]).unwrap_err();
            prop_assert_eq!(e.code(), ErrorCode::Malformed);
        }
        let mut longer = body.to_vec();
        longer.push(0);
        prop_assert!(matches!(decode_body(&longer), Err(WireError::Malformed(_))));
        prop_assert_eq!(decode_body(body), Ok(frame));
    }

    /// An announced length beyond the limit is refused the moment its fourth byte arrives, however the
    /// prefix is split, before any body byte is buffered; nothing pushed later is kept.
    #[test]
    fn oversized_frames_are_refused_before_their_body(
        len in (MAX as u32 + 1)..COMPRESSED_FLAG,
        deflated in any::<bool>(),
        split in vec(1usize..4, 1..4),
        tail in vec(any::<u8>(), 0..2048),
    ) {
        // The deflate flag is not part of the length: an oversized deflated frame is refused the same way.
        let prefix = (len | if deflated { COMPRESSED_FLAG } else { 0 }).to_le_bytes();
        let mut d = FrameDecoder::new(MAX);
        let mut pushed = 0;
        for c in chunks(&prefix, &split) {
            prop_assert_eq!(d.next_frame(), Ok(None));
            d.push(c);
            pushed += c.len();
        }
        prop_assert_eq!(pushed, LENGTH_PREFIX_BYTES);
        prop_assert_eq!(d.buffered_bytes(), 0);
        let e = WireError::FrameTooLarge { len: len as usize, max: MAX };
        prop_assert_eq!(d.next_frame(), Err(e.clone()));
        prop_assert_eq!(e.code(), ErrorCode::FrameTooLarge);
        d.push(&tail);
        prop_assert_eq!(d.buffered_bytes(), 0);
        prop_assert_eq!(d.finish(), Err(e));
    }

    /// A frame followed in the same read by an oversized length prefix: taking the frame out already refuses
    /// the next one, so a caller that pushes again before asking for the next frame buffers nothing of it.
    #[test]
    fn an_oversized_prefix_behind_a_frame_is_refused_when_the_frame_is_taken(
        frame in arb_frame(),
        len in (MAX as u32 + 1)..COMPRESSED_FLAG,
        tail in vec(any::<u8>(), 1..2048),
    ) {
        let mut bytes = Vec::new();
        encode_frame_into(&frame, MAX, &mut bytes).unwrap();
        bytes.extend_from_slice(&len.to_le_bytes());
        let mut d = FrameDecoder::new(MAX);
        d.push(&bytes);
        prop_assert_eq!(d.next_frame(), Ok(Some(frame)));
        d.push(&tail);
        prop_assert_eq!(d.buffered_bytes(), 0);
        prop_assert_eq!(d.next_frame(), Err(WireError::FrameTooLarge { len: len as usize, max: MAX }));
    }

    /// The sender refuses to encode a frame beyond its limit and leaves the output as it was.
    #[test]
    fn oversized_frames_are_not_encoded(msg in vec(any::<u8>(), 0..1200), before in vec(any::<u8>(), 0..8)) {
        let frame = Frame::Sync { doc: DocId::new("d").unwrap(), msg };
        let mut out = before.clone();
        let body_len = encode_frame(&frame).unwrap().len() - LENGTH_PREFIX_BYTES;
        let result = encode_frame_into(&frame, MAX, &mut out);
        if body_len > MAX {
            prop_assert_eq!(result, Err(WireError::FrameTooLarge { len: body_len, max: MAX }));
            prop_assert_eq!(out, before);
        } else {
            prop_assert_eq!(result, Ok(()));
            prop_assert_eq!(out.len(), before.len() + LENGTH_PREFIX_BYTES + body_len);
        }
    }

    /// A Hello from any version range, arriving as bytes in any chunking: the hub establishes the newest
    /// version both speak, or refuses with `UnsupportedVersion` and ignores everything after.
    #[test]
    fn hello_version_negotiation(
        version in prop_oneof![Just(0u16), Just(PROTOCOL_VERSION), Just(PROTOCOL_VERSION + 1), any::<u16>()],
        min_version in prop_oneof![Just(0u16), Just(PROTOCOL_VERSION_MIN), Just(PROTOCOL_VERSION + 1), any::<u16>()],
        caps in any::<u64>(),
        cuts in vec(1usize..8, 1..4),
    ) {
        let hello = Frame::Hello(Hello { version, min_version, capabilities: caps, peer_id: node_id(), actor: vec![7] });
        let bytes = encode_frame(&hello).unwrap();
        let mut d = FrameDecoder::default();
        let mut frames = Vec::new();
        for c in chunks(&bytes, &cuts) {
            d.push(c);
            while let Some(f) = d.next_frame().unwrap() {
                frames.push(f);
            }
        }
        prop_assert_eq!(&frames, &vec![hello]);
        let mut store = MemStore::seeded(8);
        let mut s = server(0);
        s.handle_frame(&mut store, frames.remove(0));
        let out = drain_out(&mut s);
        let events = drain_events(&mut s);
        // The versions both speak: [max(mins), min(versions)].
        let (lo, hi) = (min_version.max(PROTOCOL_VERSION_MIN), version.min(PROTOCOL_VERSION));
        if lo <= hi {
            prop_assert!(s.is_established());
            prop_assert_eq!(
                &out[0],
                &Frame::HelloAck(HelloAck {
                    version: hi,
                    capabilities: caps & capabilities::ALL,
                    peer_id: support::hub_id(),
                    actor: vec![0xA0; 16],
                })
            );
            prop_assert_eq!(&events[0], &Event::Established { version: hi, capabilities: caps & capabilities::ALL });
        } else {
            prop_assert!(s.is_closed());
            prop_assert!(matches!(&out[..], [Frame::Refuse { code: ErrorCode::UnsupportedVersion, .. }]), "{:?}", out);
            prop_assert!(matches!(
                &events[..],
                [Event::Closed { code: ErrorCode::UnsupportedVersion, by_peer: false, .. }]
            ), "{:?}", events);
            s.handle_frame(&mut store, valid_hello());
            s.tick(&mut store, 10_000);
            prop_assert!(drain_out(&mut s).is_empty() && drain_events(&mut s).is_empty());
        }
    }
}

/// A `Hello` of a future version (the layout is frozen) still decodes, and the hub refuses it politely.
#[test]
fn future_hello_bytes_are_refused_as_unsupported_version() {
    // Variant 0, version 7, min_version 5 (varints), capabilities, peer id, actor.
    let mut body = vec![0, 7, 5, 0xFF, 0x01];
    body.push(node_id().as_str().len() as u8);
    body.extend_from_slice(node_id().as_str().as_bytes());
    body.extend_from_slice(&[1, 9]);
    let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&body);
    let mut d = FrameDecoder::default();
    d.push(&bytes);
    let frame = d.next_frame().unwrap().unwrap();
    assert!(matches!(&frame, Frame::Hello(h) if h.version == 7 && h.min_version == 5));
    let mut store = MemStore::seeded(8);
    let mut s = server(0);
    s.handle_frame(&mut store, frame);
    assert!(matches!(drain_out(&mut s)[..], [Frame::Refuse { code: ErrorCode::UnsupportedVersion, .. }]));
    assert!(s.is_closed());
}

fn drain_out(s: &mut SyncSession) -> Vec<Frame> {
    std::iter::from_fn(|| s.poll_transmit()).take(100_000).collect()
}

fn drain_events(s: &mut SyncSession) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).take(100_000).collect()
}

/// What the hostile node does next.
#[derive(Debug, Clone)]
enum Op {
    /// Sends a frame, with its heads and sync message resolved against the hub's documents.
    Send(FrameSpec),
    /// Time passes.
    Tick(u64),
    /// The hub changes one of its documents.
    LocalChange(usize),
}

/// Heads of a document, as the node claims them.
#[derive(Debug, Clone)]
enum HeadsSpec {
    Empty,
    Random(Vec<[u8; 32]>),
    /// Exactly the hub's current heads.
    Hubs,
}

/// A sync message, random bytes or one that carries real changes to a document.
#[derive(Debug, Clone)]
enum MsgSpec {
    Random(Vec<u8>),
    Edits(u8),
}

#[derive(Debug, Clone)]
enum FrameSpec {
    Hello {
        other_peer: bool,
        version: u16,
        min_version: u16,
    },
    HelloAck,
    Refuse(u32),
    Manifest {
        round: u32,
        docs: Vec<(usize, HeadsSpec)>,
        last: bool,
    },
    Sync(usize, MsgSpec),
    Ack(usize, HeadsSpec),
    Refused(usize, u32),
    Ping(u64),
    Pong(u64),
    /// A digest of the node's manifest: equal to the hub's own for the node, or not.
    Digest {
        round: u32,
        matching: bool,
    },
}

fn heads_spec() -> impl Strategy<Value = HeadsSpec> {
    prop_oneof![Just(HeadsSpec::Empty), vec(any::<[u8; 32]>(), 1..3).prop_map(HeadsSpec::Random), Just(HeadsSpec::Hubs)]
}

fn name_index() -> impl Strategy<Value = usize> {
    0..DOC_NAMES.len()
}

fn frame_spec() -> impl Strategy<Value = FrameSpec> {
    prop_oneof![
        1 => (any::<bool>(), 0u16..4, 0u16..4).prop_map(|(other_peer, version, min_version)| FrameSpec::Hello {
            other_peer,
            version,
            min_version
        }),
        1 => Just(FrameSpec::HelloAck),
        1 => any::<u32>().prop_map(FrameSpec::Refuse),
        6 => (0u32..4, vec((name_index(), heads_spec()), 0..20), any::<bool>())
            .prop_map(|(round, docs, last)| FrameSpec::Manifest { round, docs, last }),
        6 => (name_index(), prop_oneof![
            vec(any::<u8>(), 0..64).prop_map(MsgSpec::Random),
            (1u8..4).prop_map(MsgSpec::Edits),
        ]).prop_map(|(i, m)| FrameSpec::Sync(i, m)),
        4 => (name_index(), heads_spec()).prop_map(|(i, h)| FrameSpec::Ack(i, h)),
        2 => (name_index(), any::<u32>()).prop_map(|(i, c)| FrameSpec::Refused(i, c)),
        2 => any::<u64>().prop_map(FrameSpec::Ping),
        1 => any::<u64>().prop_map(FrameSpec::Pong),
        2 => (any::<u32>(), any::<bool>()).prop_map(|(round, matching)| FrameSpec::Digest { round, matching }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => frame_spec().prop_map(Op::Send),
        2 => (0u64..700).prop_map(Op::Tick),
        1 => name_index().prop_map(Op::LocalChange),
    ]
}

fn doc(i: usize) -> DocId {
    DocId::new(DOC_NAMES[i]).unwrap()
}

/// The node's side: its own copy of each document it edits, to build real sync messages.
#[derive(Default)]
struct NodeDocs {
    docs: BTreeMap<usize, AutoCommit>,
}

impl NodeDocs {
    fn message(&mut self, i: usize, edits: u8) -> Vec<u8> {
        let d = self.docs.entry(i).or_insert_with(|| AutoCommit::new().with_actor(ActorId::from(vec![1; 16])));
        for e in 0..edits {
            d.put(ROOT, format!("n{e}"), i64::from(e)).unwrap();
            d.commit();
        }
        let mut state = State::new();
        d.sync().generate_sync_message(&mut state).map(Message::encode).unwrap_or_default()
    }
}

fn resolve(heads: &HeadsSpec, store: &mut MemStore, i: usize) -> Vec<[u8; 32]> {
    match heads {
        HeadsSpec::Empty => vec![],
        HeadsSpec::Random(h) => h.clone(),
        HeadsSpec::Hubs => {
            store.docs.get_mut(&doc(i)).map(|d| d.get_heads().iter().map(|h| h.0).collect()).unwrap_or_default()
        }
    }
}

fn build(spec: &FrameSpec, store: &mut MemStore, node: &mut NodeDocs) -> Frame {
    match spec {
        FrameSpec::Hello { other_peer, version, min_version } => Frame::Hello(Hello {
            version: *version,
            min_version: *min_version,
            capabilities: u64::MAX,
            peer_id: if *other_peer { PeerId::new("oms://t/node/n2").unwrap() } else { node_id() },
            actor: vec![],
        }),
        FrameSpec::HelloAck => {
            Frame::HelloAck(HelloAck { version: PROTOCOL_VERSION, capabilities: 0, peer_id: node_id(), actor: vec![] })
        }
        FrameSpec::Refuse(c) => Frame::Refuse { code: ErrorCode::from_u32(*c % 12), reason: "bye".into() },
        FrameSpec::Manifest { round, docs, last } => Frame::Manifest(Manifest {
            round: *round,
            docs: docs.iter().map(|(i, h)| ManifestEntry { doc: doc(*i), heads: resolve(h, store, *i) }).collect(),
            last: *last,
        }),
        FrameSpec::Sync(i, MsgSpec::Random(msg)) => Frame::Sync { doc: doc(*i), msg: msg.clone() },
        FrameSpec::Sync(i, MsgSpec::Edits(n)) => Frame::Sync { doc: doc(*i), msg: node.message(*i, *n) },
        FrameSpec::Ack(i, h) => Frame::Ack { doc: doc(*i), heads: resolve(h, store, *i) },
        FrameSpec::Refused(i, c) => Frame::Refused { doc: doc(*i), code: ErrorCode::from_u32(*c % 12) },
        FrameSpec::Ping(n) => Frame::Ping { nonce: *n },
        FrameSpec::Pong(n) => Frame::Pong { nonce: *n },
        FrameSpec::Digest { round, matching } => {
            let mut digest = ManifestDigest::default();
            for d in store.docs_for(&node_id()) {
                if let Some(heads) = store.heads(&d) {
                    let mut heads: Vec<[u8; 32]> = heads.iter().map(|h| h.0).collect();
                    heads.sort_unstable();
                    digest.add(&d, &heads);
                }
            }
            let docs = if *matching { digest.docs() } else { digest.docs() + 1 };
            Frame::Digest(Digest { round: *round, docs, hash: digest.hash() })
        }
    }
}

/// What the hub must do with a frame on an open session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Stay open.
    Open,
    /// Close with this code (`by_peer` for the peer's `Refuse`).
    Close(ErrorCode, bool),
    /// A sync message that decodes but may not apply: stay open, or close as `Malformed`.
    OpenOrMalformed,
}

/// The peer manifest round being assembled, as the protocol defines it: a newer round replaces an older
/// one, chunks of an older round are ignored, a round may not list more than `manifest_docs_max`, and at
/// most `peer_manifests_per_interval_max` rounds may begin within one `manifest_interval_ms` (a round past
/// that is ignored whole, its later chunks too; a chunk of an older round still counts as a beginning).
#[derive(Default)]
struct ManifestModel {
    round: Option<u32>,
    seen: std::collections::BTreeSet<DocId>,
    /// When each recent round began.
    began_at: std::collections::VecDeque<u64>,
    /// The last round ignored for beginning too soon.
    ignored: Option<u32>,
}

impl ManifestModel {
    /// Whether a chunk of `round` may be looked at `now` under the rate of round beginnings.
    fn admit(&mut self, round: u32, now: u64) -> bool {
        if self.round == Some(round) {
            return true;
        }
        if self.ignored == Some(round) {
            return false;
        }
        let cfg = small_config();
        while self.began_at.front().is_some_and(|t| now.saturating_sub(*t) >= cfg.manifest_interval_ms) {
            self.began_at.pop_front();
        }
        if self.began_at.len() >= cfg.peer_manifests_per_interval_max.max(1) {
            self.ignored = Some(round);
            return false;
        }
        self.began_at.push_back(now);
        true
    }

    /// Whether the chunk is taken (admitted and not stale), and whether it overflows the round.
    fn take(&mut self, m: &Manifest, now: u64) -> (bool, bool) {
        if !self.admit(m.round, now) {
            return (false, false);
        }
        match self.round {
            Some(r) if r != m.round && m.round.wrapping_sub(r) >= u32::MAX / 2 => return (false, false),
            Some(r) if r == m.round => {}
            _ => {
                self.round = Some(m.round);
                self.seen.clear();
            }
        }
        if self.seen.len() + m.docs.len() > small_config().manifest_docs_max {
            return (true, true);
        }
        self.seen.extend(m.docs.iter().filter(|e| node_entitled(&e.doc)).map(|e| e.doc.clone()));
        if m.last {
            self.round = None;
            self.seen.clear();
        }
        (true, false)
    }
}

/// How the hub must react to `frame` on an open session.
fn expect(frame: &Frame) -> Expect {
    match frame {
        Frame::Refuse { code, .. } => Expect::Close(*code, true),
        Frame::HelloAck(_) => Expect::Close(ErrorCode::ProtocolViolation, false),
        Frame::Hello(h) if h.peer_id != node_id() => Expect::Close(ErrorCode::Unauthorized, false),
        Frame::Hello(h) if h.min_version.max(PROTOCOL_VERSION_MIN) > h.version.min(PROTOCOL_VERSION) => {
            Expect::Close(ErrorCode::UnsupportedVersion, false)
        }
        Frame::Sync { doc, msg } if node_entitled(doc) => match Message::decode(msg) {
            Err(_) => Expect::Close(ErrorCode::Malformed, false),
            Ok(_) => Expect::OpenOrMalformed,
        },
        _ => Expect::Open,
    }
}

proptest! {
    #![proptest_config(cases(96))]

    /// A hub session fed a valid Hello and then random frames, ticks and local changes: every frame is
    /// answered as the protocol says (Pong, Refused, HelloAck), every bad frame closes the session with its
    /// typed code and a `Refuse` carrying it, a closed session stays silent, and what the session holds stays
    /// within its limits and the documents the store holds.
    #[test]
    fn server_session_survives_random_frames(ops in vec(op(), 1..40)) {
        let cfg = small_config();
        let mut store = MemStore::seeded(8);
        let mut node = NodeDocs::default();
        let mut now = 0u64;
        let mut s = server(now);
        s.handle_frame(&mut store, valid_hello());
        prop_assert!(s.is_established());
        drain_out(&mut s);
        drain_events(&mut s);
        let mut closed = false;
        let mut manifest = ManifestModel::default();
        // With digest rounds agreed, every full manifest after the first answers a digest or a manifest, and
        // those answers are at least an interval apart however the node behaves.
        let mut full_manifest_ms = now;
        for op in &ops {
            let (out, events, frame) = match op {
                Op::Send(spec) => {
                    let frame = build(spec, &mut store, &mut node);
                    s.handle_frame(&mut store, frame.clone());
                    (drain_out(&mut s), drain_events(&mut s), Some(frame))
                }
                Op::Tick(ms) => {
                    now += ms;
                    s.tick(&mut store, now);
                    (drain_out(&mut s), drain_events(&mut s), None)
                }
                Op::LocalChange(i) => {
                    let id = doc(*i);
                    if let Ok(d) = store.create_doc(&id) {
                        d.put(ROOT, "hub", now as i64).unwrap();
                        d.commit();
                        s.local_change(&mut store, &id);
                    }
                    (drain_out(&mut s), drain_events(&mut s), None)
                }
            };
            if closed {
                prop_assert!(out.is_empty() && events.is_empty(), "a closed session is silent: {:?} {:?}", out, events);
                continue;
            }
            let before_manifest = (manifest.round, manifest.seen.len());
            let taken = match &frame {
                Some(Frame::Manifest(m)) => Some(manifest.take(m, now)),
                _ => None,
            };
            let manifest_taken = taken.is_some_and(|(taken, _)| taken);
            let expected = match (&frame, taken) {
                (_, Some((_, true))) => Expect::Close(ErrorCode::Overloaded, false),
                (Some(f), _) => expect(f),
                (None, _) => Expect::Open,
            };
            let closes: Vec<_> = events.iter().filter_map(|e| match e {
                Event::Closed { code, by_peer, .. } => Some((*code, *by_peer)),
                _ => None,
            }).collect();
            prop_assert!(closes.len() <= 1);
            let closed_with = match (expected, closes.first().copied()) {
                (Expect::Open, None) | (Expect::OpenOrMalformed, None) => None,
                (Expect::OpenOrMalformed, Some((ErrorCode::Malformed, false))) => Some((ErrorCode::Malformed, false)),
                (Expect::Close(code, by_peer), Some(got)) if got == (code, by_peer) => Some(got),
                (e, got) => {
                    return Err(TestCaseError::fail(format!(
                        "frame {frame:?}: expected {e:?}, closed with {got:?} (manifest before {before_manifest:?})"
                    )));
                }
            };
            if let Some((code, by_peer)) = closed_with {
                closed = true;
                prop_assert!(s.is_closed());
                if by_peer {
                    prop_assert!(out.is_empty());
                } else {
                    prop_assert!(matches!(out.last(), Some(Frame::Refuse { code: c, .. }) if *c == code), "{:?}", out);
                    prop_assert!(!matches!(code, ErrorCode::NoError | ErrorCode::Unknown));
                }
                continue;
            }
            match &frame {
                Some(Frame::Ping { nonce }) => prop_assert!(out.contains(&Frame::Pong { nonce: *nonce }), "{:?}", out),
                Some(Frame::Hello(_)) => prop_assert!(matches!(out.first(), Some(Frame::HelloAck(_)))),
                Some(Frame::Sync { doc, .. }) if !node_entitled(doc) => {
                    prop_assert!(out.contains(&Frame::Refused { doc: doc.clone(), code: ErrorCode::NotEntitled }), "{:?}", out);
                }
                Some(Frame::Manifest(m)) if manifest_taken => {
                    for e in m.docs.iter().filter(|e| !node_entitled(&e.doc)) {
                        prop_assert!(out.contains(&Frame::Refused { doc: e.doc.clone(), code: ErrorCode::NotEntitled }), "{:?}", out);
                    }
                }
                _ => {}
            }
            for f in &out {
                if let Frame::Manifest(m) = f && m.last {
                    prop_assert!(now - full_manifest_ms >= cfg.manifest_interval_ms, "manifest at {} after {}", now, full_manifest_ms);
                    full_manifest_ms = now;
                }
            }
            // Never a document the node is not entitled to, and never a frame that does not encode.
            for f in &out {
                if let Frame::Sync { doc, .. } | Frame::Ack { doc, .. } = f {
                    prop_assert!(node_entitled(doc), "sent {}", doc);
                }
                prop_assert!(encode_frame(f).is_ok());
            }
            let entries = match &frame { Some(Frame::Manifest(m)) => m.docs.len(), _ => 0 };
            let held = store.entitled_held();
            let chunks = held / cfg.manifest_docs_per_frame_max + 1;
            prop_assert!(out.len() <= 2 + entries + cfg.outbound_frames_max + held + chunks, "{} frames out", out.len());
            let sizes = s.sizes();
            prop_assert_eq!((sizes.outbound, sizes.events), (0, 0));
            prop_assert!(sizes.in_flight <= held, "{:?} with {} held", sizes, held);
            prop_assert!(sizes.pending <= held, "{:?} with {} held", sizes, held);
            prop_assert!(sizes.doc_states <= held, "{:?} with {} held", sizes, held);
            prop_assert!(sizes.doc_states <= cfg.docs_tracked_max, "{:?}", sizes);
            prop_assert!(sizes.refused_by_peer <= held, "{:?} with {} held", sizes, held);
            prop_assert!(store.docs.len() <= store.docs_max);
        }
    }
}

/// Regression for the model above (the session was right): the fifth manifest round begun within one
/// interval is ignored whole, so a foreign document it names is not refused and the session stays open;
/// once the interval has passed, a new round is taken again and the foreign document is refused.
#[test]
fn a_round_begun_too_soon_is_ignored_then_rounds_are_taken_again() {
    let cfg = small_config();
    let mut store = MemStore::seeded(8);
    let mut s = server(0);
    s.handle_frame(&mut store, valid_hello());
    drain_out(&mut s);
    drain_events(&mut s);
    let foreign = DocId::new("n2-foreign").unwrap();
    let manifest = |round: u32, docs: Vec<DocId>| {
        Frame::Manifest(Manifest {
            round,
            docs: docs.into_iter().map(|doc| ManifestEntry { doc, heads: vec![[1; 32]] }).collect(),
            last: true,
        })
    };
    for round in 0..cfg.peer_manifests_per_interval_max as u32 {
        s.handle_frame(&mut store, manifest(round, vec![]));
    }
    drain_out(&mut s);
    drain_events(&mut s);
    let mut model = ManifestModel::default();
    for round in 0..cfg.peer_manifests_per_interval_max as u32 {
        assert_eq!(model.take(&Manifest { round, docs: vec![], last: true }, 0), (true, false));
    }
    let too_soon =
        Manifest { round: 0, docs: vec![ManifestEntry { doc: foreign.clone(), heads: vec![[1; 32]] }], last: true };
    assert_eq!(model.take(&too_soon, 0), (false, false));
    s.handle_frame(&mut store, Frame::Manifest(too_soon));
    let out = drain_out(&mut s);
    assert!(!out.iter().any(|f| matches!(f, Frame::Refused { .. })), "{out:?}");
    assert!(
        drain_events(&mut s).iter().any(|e| matches!(e, Event::Limited { doc: None, code: ErrorCode::RateLimited }))
    );
    assert!(s.is_established());
    s.tick(&mut store, cfg.manifest_interval_ms);
    drain_out(&mut s);
    s.handle_frame(&mut store, manifest(7, vec![foreign.clone()]));
    let out = drain_out(&mut s);
    assert!(out.contains(&Frame::Refused { doc: foreign, code: ErrorCode::NotEntitled }), "{out:?}");
}

/// Regression: a node announcing, round after round, documents the hub does not hold (and is entitled to,
/// as a node is to any new order of its own) made the hub keep a sync state per name for the rest of the
/// session, and a node refusing made-up documents grew the session's refused set: both without bound.
#[test]
fn a_manifest_of_foreign_documents_cannot_flood_the_outbound_queue() {
    // Manifests may be long here, so that the refusals, not the manifest's length, reach a limit first.
    let cfg = oms_protocol::sync::SessionConfig { manifest_docs_max: 100_000, ..small_config() };
    let cap = cfg.outbound_frames_max * oms_protocol::sync::REFUSALS_QUEUED_PER_OUTBOUND_MAX;
    let mut store = MemStore::seeded(8);
    let mut s = SyncSession::new_server(cfg, support::hub_id(), node_id(), vec![0xA0; 16], 0);
    s.handle_frame(&mut store, valid_hello());
    drain_out(&mut s);
    let docs = (0..cap * 10)
        .map(|i| ManifestEntry { doc: DocId::new(format!("n2-foreign-{i}")).unwrap(), heads: vec![[1; 32]] })
        .collect();
    s.handle_frame(&mut store, Frame::Manifest(Manifest { round: 1, docs, last: true }));
    let sizes = s.sizes();
    assert!(sizes.outbound <= cap + 1, "{sizes:?}");
    assert!(s.is_closed());
    let out = drain_out(&mut s);
    assert!(matches!(out.last(), Some(Frame::Refuse { code: ErrorCode::Overloaded, .. })), "{:?}", out.last());
}

#[test]
fn announced_and_refused_names_do_not_accumulate() {
    let mut store = MemStore::seeded(8);
    let mut s = server(0);
    s.handle_frame(&mut store, valid_hello());
    let held = store.entitled_held();
    for round in 0..50u32 {
        let docs = (0..10)
            .map(|i| ManifestEntry { doc: DocId::new(format!("n1-new-{round}-{i}")).unwrap(), heads: vec![[1; 32]] })
            .collect();
        s.handle_frame(&mut store, Frame::Manifest(Manifest { round, docs, last: true }));
        s.handle_frame(
            &mut store,
            Frame::Refused { doc: DocId::new(format!("n1-gone-{round}")).unwrap(), code: ErrorCode::NotEntitled },
        );
        drain_out(&mut s);
        drain_events(&mut s);
        let sizes = s.sizes();
        assert!(sizes.doc_states <= held && sizes.pending <= held, "round {round}: {sizes:?}");
        assert!(sizes.refused_by_peer <= held, "round {round}: {sizes:?}");
    }
    assert!(!s.is_closed());
}
