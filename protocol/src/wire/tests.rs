//! Tests of the wire contract: golden bytes of the frozen frames, limits, chunked and deflated streams.

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
        (doc.clone(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(doc, msg)| Frame::Sync { doc, msg }),
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
