//! Carriers' webhook bodies, per format: the hub's signed event ([`check_request`], [`Signatures`]) and
//! EasyPost's `Event` ([`verify_easypost`], [`check_easypost`]), each normalized to a [`TrackingEvent`].

use axum::http::{HeaderMap, StatusCode};
use oms_service::Problem;
use serde::Deserialize;

use super::{
    CarrierFormat, CarriersConfig, DESCRIPTION_BYTES_MAX, EASYPOST_SIGNATURE_HEADER, EASYPOST_SIGNATURE_PREFIX,
    EASYPOST_TRACKER_EVENTS, EVENT_BODY_BYTES_MAX, ID_BYTES_MAX, REPLAY_WINDOW_S, SIGNATURE_HEADER, STATUSES,
    TrackingError, TrackingEvent,
};
use crate::events::webhooks::{SignatureError, verify_signature};

/// The body a carrier posts.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EventBody {
    /// The carrier's event id (idempotency key), 1 to 128 printable bytes.
    id: String,
    /// The tracking number, 1 to 128 printable bytes.
    tracking_code: String,
    /// One of `pre_transit`, `in_transit`, `out_for_delivery`, `available_for_pickup`, `failure`,
    /// `return_to_sender`, `delivered`.
    status: String,
    /// When it happened, ms since the Unix epoch.
    occurred_at_ms: u64,
    /// The carrier's words (cut to 256 bytes).
    #[serde(default)]
    description: Option<String>,
}

fn text(field: &'static str, v: &str) -> Result<String, TrackingError> {
    let v = v.trim();
    if v.is_empty() || v.len() > ID_BYTES_MAX || v.chars().any(char::is_control) {
        return Err(TrackingError::Invalid {
            field,
            detail: format!("1 to {ID_BYTES_MAX} bytes without control characters"),
        });
    }
    Ok(v.to_owned())
}

/// The signature headers of a request: `X-Oms-Signature` and EasyPost's `X-Hmac-Signature`, as sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Signatures<'a> {
    /// `X-Oms-Signature` (format `oms`).
    pub oms: Option<&'a str>,
    /// `X-Hmac-Signature` (format `easypost`).
    pub easypost: Option<&'a str>,
}

impl<'a> Signatures<'a> {
    /// Only an `X-Oms-Signature`.
    pub fn oms(v: Option<&'a str>) -> Self {
        Signatures { oms: v, easypost: None }
    }

    pub(super) fn of(headers: &'a HeaderMap) -> Self {
        let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
        Signatures { oms: get(SIGNATURE_HEADER), easypost: get(EASYPOST_SIGNATURE_HEADER) }
    }
}

/// Checks carrier `carrier`'s request: the carrier exists, the signature is good (in the carrier's
/// [`CarrierFormat`]), the body is an event. The event, with `received_at_ms` = `now_ms`; `None` for an
/// EasyPost event that carries no tracker (acknowledged, nothing stored).
pub fn check_request(
    carriers: &CarriersConfig,
    carrier: &str,
    signatures: Signatures<'_>,
    body: &[u8],
    now_ms: u64,
) -> Result<Option<TrackingEvent>, Problem> {
    let hook = carriers.get(carrier).ok_or_else(|| TrackingError::UnknownCarrier(carrier.to_owned()))?;
    if body.len() > EVENT_BODY_BYTES_MAX {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("a tracking event is at most {EVENT_BODY_BYTES_MAX} bytes"),
        ));
    }
    if hook.format == CarrierFormat::Easypost {
        let signature = signatures.easypost.ok_or(TrackingError::SignatureMissing)?;
        verify_easypost(&hook.webhook_secret, signature, body).map_err(TrackingError::Signature)?;
        return check_easypost(carrier, body, now_ms);
    }
    let signature = signatures.oms.ok_or(TrackingError::SignatureMissing)?;
    verify_signature(&hook.webhook_secret, signature, body, now_ms / 1_000, REPLAY_WINDOW_S)
        .map_err(TrackingError::Signature)?;
    let b: EventBody = oms_service::parse_json(body)?;
    let status = b.status.trim();
    if !STATUSES.contains(&status) {
        return Err(
            TrackingError::Invalid { field: "status", detail: format!("one of {}", STATUSES.join(", ")) }.into()
        );
    }
    Ok(Some(TrackingEvent {
        carrier: carrier.to_owned(),
        id: text("id", &b.id)?,
        tracking: text("tracking_code", &b.tracking_code)?,
        status: status.to_owned(),
        occurred_at_ms: b.occurred_at_ms,
        description: b.description.as_deref().and_then(description),
        received_at_ms: now_ms,
    }))
}

/// The carrier's words without control characters, trimmed, cut to [`DESCRIPTION_BYTES_MAX`] bytes; none
/// if nothing is left.
fn description(d: &str) -> Option<String> {
    let d: String = d.chars().filter(|c| !c.is_control()).collect();
    let mut cut = d.trim().to_owned();
    while cut.len() > DESCRIPTION_BYTES_MAX {
        cut.pop();
    }
    Some(cut).filter(|c| !c.is_empty())
}

/// EasyPost's signature: `hmac-sha256-hex=<hex HMAC-SHA256(secret, raw body)>`, compared in constant time.
/// EasyPost signs no timestamp: a replay is caught by the event id ([`store`] is idempotent by it).
///
/// [`store`]: fn@super::store
pub fn verify_easypost(secret: &str, header: &str, body: &[u8]) -> Result<(), SignatureError> {
    use hmac::{KeyInit, Mac};
    let hex = header.trim().strip_prefix(EASYPOST_SIGNATURE_PREFIX).ok_or(SignatureError::Malformed)?;
    let sig = crate::events::webhooks::unhex(hex).filter(|s| s.len() == 32).ok_or(SignatureError::Malformed)?;
    let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .map_err(|_| SignatureError::Mismatch)?;
    m.update(body);
    m.verify_slice(&sig).map_err(|_| SignatureError::Mismatch)
}

/// The `X-Hmac-Signature` value EasyPost sends for `body` under `secret` (for tests and the demo).
pub fn easypost_signature(secret: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    m.update(body);
    format!("{EASYPOST_SIGNATURE_PREFIX}{}", oms_service::auth::keys::hex(&m.finalize().into_bytes()))
}

/// EasyPost's `Event` (the fields read; others are ignored).
#[derive(Debug, Deserialize)]
struct EasypostEvent {
    id: String,
    object: String,
    description: String,
    #[serde(default)]
    created_at: Option<String>,
    /// Read as a [`EasypostTracker`] only for a tracker event.
    #[serde(default)]
    result: Option<serde_json::Value>,
}

/// EasyPost's `Tracker` (the fields read).
#[derive(Debug, Deserialize)]
struct EasypostTracker {
    object: String,
    tracking_code: String,
    status: String,
    #[serde(default)]
    status_detail: Option<String>,
    #[serde(default)]
    updated_at: Option<String>,
    #[serde(default)]
    tracking_details: Vec<EasypostDetail>,
}

/// One of a tracker's `tracking_details`.
#[derive(Debug, Deserialize)]
struct EasypostDetail {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    datetime: Option<String>,
}

/// An RFC 3339 time as ms since the Unix epoch (none before the epoch or unreadable).
fn rfc3339_ms(s: &str) -> Option<u64> {
    s.parse::<jiff::Timestamp>().ok().and_then(|t| u64::try_from(t.as_millisecond()).ok())
}

/// Normalizes an EasyPost `Event` (signature already checked): a `tracker.created`/`tracker.updated` gives
/// the tracker's state as a [`TrackingEvent`] keyed by the event's id; its time is the latest tracking
/// detail's `datetime` (else the tracker's `updated_at`, the event's `created_at`, the hub's clock); its
/// words the latest detail's `message` (else `status_detail`). A status outside [`STATUSES`] (`unknown`,
/// `cancelled`, `error`, or one EasyPost adds) is kept as sent and changes no state ([`store`]). Another
/// event gives `None`.
///
/// [`store`]: fn@super::store
pub fn check_easypost(carrier: &str, body: &[u8], now_ms: u64) -> Result<Option<TrackingEvent>, Problem> {
    let e: EasypostEvent = oms_service::parse_json(body)?;
    let invalid = |field: &'static str, detail: &str| -> Problem {
        TrackingError::Invalid { field, detail: detail.to_owned() }.into()
    };
    if e.object != "Event" {
        return Err(invalid("object", "an EasyPost Event"));
    }
    let id = text("id", &e.id)?;
    if !EASYPOST_TRACKER_EVENTS.contains(&e.description.as_str()) {
        return Ok(None);
    }
    let t: EasypostTracker = match e.result.map(serde_json::from_value) {
        Some(Ok(t)) => t,
        Some(Err(err)) => return Err(invalid("result", &format!("a Tracker: {err}"))),
        None => return Err(invalid("result", "a Tracker")),
    };
    if t.object != "Tracker" {
        return Err(invalid("result.object", "a Tracker"));
    }
    // The latest detail is the last; the body limit bounds how many there are.
    let latest = t.tracking_details.last();
    let occurred_at_ms = latest
        .and_then(|d| d.datetime.as_deref())
        .or(t.updated_at.as_deref())
        .or(e.created_at.as_deref())
        .and_then(rfc3339_ms)
        .unwrap_or(now_ms);
    let words = latest.and_then(|d| d.message.as_deref()).or(t.status_detail.as_deref());
    Ok(Some(TrackingEvent {
        carrier: carrier.to_owned(),
        id,
        tracking: text("result.tracking_code", &t.tracking_code)?,
        status: text("result.status", &t.status)?,
        occurred_at_ms,
        description: words.and_then(description),
        received_at_ms: now_ms,
    }))
}
