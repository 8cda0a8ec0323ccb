//! In-CI fuzzing of the order request parser both intakes share (`oms_service::request::order_request`),
//! as bounded property tests: arbitrary bytes, and valid orders with bytes flipped, cut or spliced in, under
//! arbitrary headers. No panic; a refusal is a 4xx problem with a stable code from a known set; an accepted
//! body is an order that validates. (cargo-fuzz needs libFuzzer and its crates, which this CI cannot fetch
//! beyond the registry's crates; proptest runs the same inputs inside `cargo test`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::http::{HeaderMap, HeaderValue};
use oms_service::request::order_request;
use proptest::collection::vec;
use proptest::prelude::*;

const VALID: &str = r#"{"external_ref":"web-1","channel":"web","lines":[{"sku":"SKU-1","qty":2,"unit_price_minor":1250,"currency":"EUR"}],"ship_to":{"name":"Ada","line1":"1 Main St","city":"Berlin","postcode":"10115","country":"DE","lat":52.52,"lon":13.4}}"#;

/// Every code the parser may refuse with (validation codes included).
const CODES: &[&str] = &[
    "idempotency_key_required",
    "invalid_idempotency_key",
    "unsupported_media_type",
    "malformed_json",
    "invalid_body",
    "body_too_large",
    "unknown_currency",
    "invalid_price",
    "mixed_currency",
    "duplicate_sku",
    "no_lines",
    "too_many_lines",
    "invalid_geo",
    "invalid_country",
    "missing_field",
    "field_too_long",
    "invalid_text",
    "invalid_sku",
    "invalid_quantity",
    "invalid_channel",
    "invalid_node_id",
    "invalid_order_id",
    "unreadable_body",
];

fn headers(key: Option<Vec<u8>>, json: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(k) = key.and_then(|k| HeaderValue::from_bytes(&k).ok()) {
        h.insert("idempotency-key", k);
    }
    h.insert("content-type", HeaderValue::from_static(if json { "application/json" } else { "text/plain" }));
    h
}

fn check(h: &HeaderMap, body: &[u8]) -> Result<(), TestCaseError> {
    match order_request(h, body) {
        Ok((key, draft)) => {
            prop_assert!(!key.is_empty());
            prop_assert!(draft.validate().is_ok(), "accepted an order that does not validate");
        }
        Err(p) => {
            prop_assert!((400..500).contains(&p.status), "{} {}", p.status, p.code);
            prop_assert!(CODES.contains(&p.code), "unknown code {}", p.code);
        }
    }
    Ok(())
}

fn cases() -> ProptestConfig {
    ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn arbitrary_bytes_are_refused_with_a_typed_problem(
        body in vec(any::<u8>(), 0..600),
        key in proptest::option::of(vec(any::<u8>(), 0..80)),
        json in any::<bool>(),
    ) {
        check(&headers(key, json), &body)?;
    }

    #[test]
    fn damaged_valid_orders_never_panic(
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
        splice in "[\\[\\]{}\",:0-9a-zA-Z\\\\ -]{0,12}",
        cut in any::<prop::sample::Index>(),
    ) {
        let mut body = VALID.as_bytes().to_vec();
        for (at, byte, how) in edits {
            let i = at.index(body.len());
            match how {
                0 => body[i] = byte,
                1 => body.insert(i, byte),
                _ => { body.remove(i); }
            }
            if body.is_empty() { break; }
        }
        let mut spliced = body.clone();
        let at = cut.index(spliced.len() + 1);
        spliced.splice(at..at, splice.bytes());
        let h = headers(Some(b"k-1".to_vec()), true);
        check(&h, &body)?;
        check(&h, &spliced)?;
        check(&h, &body[..cut.index(body.len() + 1)])?;
    }
}

#[test]
fn the_valid_order_is_accepted() {
    let (key, draft) = order_request(&headers(Some(b"k-1".to_vec()), true), VALID.as_bytes()).unwrap();
    assert_eq!((key.as_str(), draft.external_ref.as_str()), ("k-1", "web-1"));
}
