//! The order request parser: arbitrary bytes as the body of `POST /v1/orders` (`OrderDraft` from JSON, then
//! `validate`). No panic; a draft that validates survives the trips it takes through the system unchanged: JSON
//! (the API, the event log) and postcard (the `draft` key of an order document), and validates again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oms_protocol::domain::OrderDraft;

fuzz_target!(|data: &[u8]| {
    let Ok(draft) = serde_json::from_slice::<OrderDraft>(data) else { return };
    if draft.validate().is_err() {
        return;
    }
    let json = serde_json::to_vec(&draft).expect("a valid draft serializes");
    let again: OrderDraft = serde_json::from_slice(&json).expect("its JSON parses");
    assert_eq!(again, draft, "JSON round trip");
    assert!(again.validate().is_ok(), "validates again after JSON");
    let bytes = postcard::to_allocvec(&draft).expect("a valid draft encodes");
    let stored: OrderDraft = postcard::from_bytes(&bytes).expect("its postcard decodes");
    assert_eq!(stored, draft, "postcard round trip");
    assert!(stored.validate().is_ok(), "validates again after postcard");
});
