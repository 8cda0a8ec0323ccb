//! `FrameDecoder` fed arbitrary bytes in arbitrary chunks: no panic, only typed errors with the right code,
//! at most one frame plus one chunk buffered, and after an error nothing is buffered and the error repeats.
#![no_main]

use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use oms_protocol::wire::{
    ErrorCode, FRAME_BYTES_MAX, FrameDecoder, LENGTH_PREFIX_BYTES, WireError, decode_body, encode_frame_into,
};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    // A small limit so that announced lengths often exceed it; chunk sizes from the input.
    let max = usize::from(u.int_in_range(0u16..=2048).unwrap_or(256));
    let cuts: Vec<u8> = (0..u.int_in_range(1u8..=16).unwrap_or(1)).map(|_| u.arbitrary().unwrap_or(1)).collect();
    let bytes = u.take_rest();
    let mut d = FrameDecoder::new(max);
    let mut failed: Option<WireError> = None;
    let (mut rest, mut i) = (bytes, 0usize);
    while !rest.is_empty() {
        let cut = usize::from(cuts[i % cuts.len()]);
        i += 1;
        if cut == 0 {
            d.push(&[]); // An empty read changes nothing; then one byte, so that the loop ends.
        }
        let n = cut.clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        d.push(chunk);
        if failed.is_some() {
            assert_eq!(d.buffered_bytes(), 0, "a failed decoder buffers nothing");
        }
        assert!(d.buffered_bytes() <= LENGTH_PREFIX_BYTES + max + chunk.len(), "buffer beyond limit + chunk");
        loop {
            match d.next_frame() {
                Ok(Some(frame)) => {
                    assert!(failed.is_none(), "a frame after an error");
                    // What decodes re-encodes (within the default limit: unknown error codes grow) and
                    // decodes to the same frame.
                    let mut out = Vec::new();
                    encode_frame_into(&frame, FRAME_BYTES_MAX, &mut out).expect("a decoded frame encodes");
                    assert_eq!(decode_body(&out[LENGTH_PREFIX_BYTES..]).as_ref(), Ok(&frame));
                }
                Ok(None) => break,
                Err(e) => {
                    let code = match &e {
                        WireError::FrameTooLarge { len, max: m } => {
                            assert!(*len > max && *m == max, "{e}");
                            ErrorCode::FrameTooLarge
                        }
                        WireError::Malformed(_) | WireError::Invalid { .. } | WireError::Inflate(_) => {
                            ErrorCode::Malformed
                        }
                        WireError::Deflate(_) => panic!("a decoder never deflates"),
                        WireError::Truncated { .. } => panic!("truncation is reported only by finish"),
                    };
                    assert_eq!(e.code(), code);
                    if let Some(first) = &failed {
                        assert_eq!(first, &e, "the same error every time");
                    }
                    assert_eq!(d.buffered_bytes(), 0);
                    failed = Some(e);
                    break;
                }
            }
        }
        if failed.is_none() {
            assert!(d.buffered_bytes() < LENGTH_PREFIX_BYTES + max, "more than one partial frame held");
        }
    }
    match (&failed, d.finish()) {
        (Some(e), Err(f)) => assert_eq!(e, &f),
        (None, Ok(())) => assert_eq!(d.buffered_bytes(), 0),
        (None, Err(WireError::Truncated { buffered })) => assert_eq!(buffered, d.buffered_bytes()),
        (f, r) => panic!("finish after {f:?}: {r:?}"),
    }
});
