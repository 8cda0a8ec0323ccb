//! `decode_body` on arbitrary bytes: no panic, a typed `Malformed` error, and what decodes re-encodes to a
//! canonical form that decodes to the same frame and encodes to the same bytes again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oms_protocol::wire::{ErrorCode, LENGTH_PREFIX_BYTES, decode_body, encode_frame};

fuzz_target!(|data: &[u8]| {
    match decode_body(data) {
        Ok(frame) => {
            let bytes = encode_frame(&frame).expect("a decoded frame encodes");
            let body = &bytes[LENGTH_PREFIX_BYTES..];
            let again = decode_body(body).expect("an encoded frame decodes");
            assert_eq!(again, frame);
            assert_eq!(encode_frame(&again).expect("encodes"), bytes, "encoding is canonical");
        }
        Err(e) => assert_eq!(e.code(), ErrorCode::Malformed, "{e}"),
    }
});
