//! Reading requests the same way on the node and the hub: body limits and the order intake request.

use axum::http::{HeaderMap, StatusCode};
use oms_protocol::domain::OrderDraft;
use oms_protocol::records::{IDEMPOTENCY_KEY_BYTES_MAX, idempotency_key_valid};

use crate::problem::{Problem, media_type, parse_json};

/// Largest JSON body, bytes (node and hub routes that take JSON).
pub const JSON_BODY_BYTES_MAX: usize = 256 * 1024;

/// Reads an order request the way every order intake does (node and hub): the `Idempotency-Key` header,
/// a JSON content type, the body parsed with typed errors, then validated ([`OrderDraft::validate`]).
pub fn order_request(headers: &HeaderMap, body: &[u8]) -> Result<(String, OrderDraft), Problem> {
    let key = idempotency_key(headers)?;
    if media_type(headers) != "application/json" {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the order as application/json",
        ));
    }
    let draft: OrderDraft = parse_json(body)?;
    draft.validate()?;
    Ok((key, draft))
}

/// The request's `Idempotency-Key` header: required, 1 to [`IDEMPOTENCY_KEY_BYTES_MAX`] visible ASCII
/// characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<String, Problem> {
    let key = headers
        .get("idempotency-key")
        .ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "idempotency_key_required",
                "send an Idempotency-Key header (a unique string per request, reused on retries)",
            )
        })?
        .to_str()
        .ok()
        .filter(|k| idempotency_key_valid(k))
        .ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                format!("the Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} visible ASCII characters"),
            )
        })?
        .to_owned();
    Ok(key)
}
