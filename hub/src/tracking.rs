//! Carrier tracking at the hub (issue 15, item 6): carriers post tracking events to
//! `POST /v1/carriers/{carrier}/events`; they are stored, merged into the order's view and the customer's
//! tracking page, flag exceptions for customer service, and a `delivered` completes the fulfillment through
//! its site.
//!
//! **Request.** One event per request, JSON (normalized, EasyPost's tracker states):
//! `{"id": "<carrier's event id>", "tracking_code": "…", "status": "in_transit", "occurred_at_ms": …,
//! "description": "…"}` (other fields are ignored). `status` is one of [`STATUSES`]. Signed like the hub's own
//! webhooks (`crate::events::webhooks`): `X-Oms-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
//! "<t>.<raw body>")>` with the carrier's `[carriers.<name>] webhook_secret`, compared in constant time, `t`
//! within [`REPLAY_WINDOW_S`] of the hub's clock. Several `v1` values may be sent (a secret being rotated).
//! The route has no API key (a carrier has none): the signature is its authentication, and the per-IP rate
//! limit of open routes applies. Unknown carrier `404 carrier_not_found`; a missing, malformed, stale or
//! wrong signature `401`; a body over [`EVENT_BODY_BYTES_MAX`] `413`; a bad field `422`. Nothing is stored for
//! a refused request.
//!
//! **A carrier's own format.** A carrier with `format = "easypost"` ([`CarrierFormat`]) posts EasyPost's
//! `Event` with a `Tracker` as its `result`, signed `X-Hmac-Signature: hmac-sha256-hex=<hex HMAC-SHA256(secret,
//! raw body)>` ([`verify_easypost`]; EasyPost signs no timestamp, so the event id is the replay guard).
//! [`check_easypost`] normalizes it to the same [`TrackingEvent`] (the event's id, the tracker's code and
//! status, the latest tracking detail's time and words), which goes through the same [`store`]. A status
//! outside [`STATUSES`] (EasyPost's `unknown`, `cancelled`, `error`) is stored and listed, and changes no
//! state: no event, flag, delivery or tracking state. Another EasyPost event answers `200 {"ignored": true}`.
//! No polling fallback: a webhook that never comes leaves the parcel as it was.
//!
//! **Idempotent by the carrier's event id.** The event is keyed by (carrier, event id) in `intake.redb`; a
//! replay answers `200` with `"replayed": true` and changes nothing. A new event answers `200` (`"replayed":
//! false`) once committed, with `"matched"` saying whether a shipment carries its tracking number.
//!
//! **Matching.** A fulfillment's shipment (carrier and tracking number as its site shipped it) is recorded in
//! `tracking_shipments` by the watcher in the transaction that reports its `fulfillment.shipped`
//! ([`on_shipped`]). An event whose tracking number no shipment carries yet (the site's shipment may not have
//! synced) is kept in `carrier_events_unmatched` and matched when the shipment arrives; at most
//! [`UNMATCHED_MAX`] wait, none older than [`UNMATCHED_AGE_MS`] (the oldest are forgotten first, at most
//! [`PRUNE_MAX`] per transaction).
//!
//! **What a matched event does**, in the transaction that matches it: appends `tracking.updated`
//! ([`crate::events::TRACKING_UPDATED`]); `failure` and `return_to_sender` flag the customer order for
//! customer service (`carrier_exceptions`, `GET /v1/orders?flag=carrier_exception`, the console's order page);
//! a later `delivered` of the same fulfillment clears its flag; `delivered` writes a row in
//! `carrier_deliveries_due`, the outbox of [`deliver_due`], which writes `hub.carrier_delivered_at_ms` into the
//! fulfillment's document (a hub-owned key, [`oms_protocol::schema::request_delivered`]), flushes the
//! documents and only then deletes the row. The site's sync applies its own `Deliver` to a shipped order that
//! carries the key, so a manual deliver and the carrier's reach `delivered` once, and the watcher's
//! `order.delivered` fires once.
//!
//! **Frozen documents.** A site freezes a shipped fulfillment once its return window has passed, and a frozen
//! document takes no more changes. A `delivered` that comes later is recorded by the hub itself:
//! [`deliver_due`] finds the document frozen as shipped and, in the transaction that deletes the outbox row,
//! writes `carrier_deliveries_frozen` ([`frozen_delivery`]) and reports the fulfillment's `order.delivered`
//! (once, like the watcher). The order's view reads that row (`crate::orders`), so its status, timeline and
//! the customer's page say `delivered`; the site keeps its frozen order `shipped`.
//!
//! **State.** A fulfillment's tracking state is derived from its events, never overwritten: `delivered` and
//! `return_to_sender` are final (a late `in_transit` does not regress them); otherwise the latest by the
//! carrier's `occurred_at_ms` (ties by the order of [`STATUSES`]). At most [`EVENTS_PER_TRACKING_MAX`] events
//! are kept per tracking number (`409 too_many_events` beyond).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use oms_protocol::domain::{Channel, FulfillmentState, OrderId};
use oms_protocol::schema;
use oms_service::storage::StorageError;
use oms_service::{Problem, RawBody, now_ms};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::events::watch::FulfillmentSeen;
use crate::events::webhooks::{SignatureError, verify_signature};
use crate::events::{EventDraft, TRACKING_UPDATED};
use crate::server::Hub;

/// (carrier, event id) → [`TrackingEvent`] (JSON).
const EVENTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("carrier_events");
/// (tracking number, carrier, event id): the events of a tracking number.
const BY_TRACKING: TableDefinition<(&str, &str, &str), ()> = TableDefinition::new("carrier_events_by_tracking");
/// (received at ms, carrier, event id) → tracking number: events no shipment carries yet, oldest first.
const UNMATCHED: TableDefinition<(u64, &str, &str), &str> = TableDefinition::new("carrier_events_unmatched");
/// Tracking number → [`ShipmentRef`] (JSON): which fulfillment shipped under it.
const SHIPMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("tracking_shipments");
/// Customer order → [`Flag`] (JSON): orders flagged for customer service by a carrier exception.
const FLAGS: TableDefinition<&str, &[u8]> = TableDefinition::new("orders_flagged_carrier");
/// Fulfillment → when the carrier delivered it: the outbox of [`deliver_due`].
const DELIVER_DUE: TableDefinition<&str, u64> = TableDefinition::new("carrier_deliveries_due");
/// Fulfillment → when the carrier delivered it, for a fulfillment whose document its site had frozen as
/// shipped before the delivery came: the hub's own record of it ([`frozen_delivery`]), since a frozen
/// document takes no more changes.
const DELIVERED_FROZEN: TableDefinition<&str, u64> = TableDefinition::new("carrier_deliveries_frozen");

/// Largest request body, bytes (one event; EasyPost's tracker events are a few KiB).
pub const EVENT_BODY_BYTES_MAX: usize = 16 * 1024;
/// Longest carrier event id, tracking number, bytes.
pub const ID_BYTES_MAX: usize = 128;
/// Longest event description kept, bytes.
pub const DESCRIPTION_BYTES_MAX: usize = 256;
/// Most events kept per tracking number.
pub const EVENTS_PER_TRACKING_MAX: usize = 100;
/// Most events waiting for their shipment.
pub const UNMATCHED_MAX: u64 = 10_000;
/// Longest an event waits for its shipment, ms (14 days).
pub const UNMATCHED_AGE_MS: u64 = 14 * 24 * 3_600_000;
/// Most waiting events forgotten in one transaction.
pub const PRUNE_MAX: usize = 100;
/// Most deliveries one pass of [`deliver_due`] writes.
pub const DELIVER_BATCH_MAX: usize = 256;
/// Most carriers configured.
pub const CARRIERS_MAX: usize = 32;
/// Shortest webhook secret, bytes.
pub const SECRET_BYTES_MIN: usize = 16;
/// Largest page of flagged orders.
pub const FLAGS_PAGE_MAX: usize = 1_000;
/// How far the signature's timestamp may be from the hub's clock, seconds.
pub const REPLAY_WINDOW_S: u64 = crate::events::webhooks::REPLAY_WINDOW_S;
/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-oms-signature";

/// The normalized tracking states, in the order a parcel goes through them (ties of time are broken by it).
pub const STATUSES: &[&str] = &[
    "pre_transit",
    "in_transit",
    "out_for_delivery",
    "available_for_pickup",
    "failure",
    "return_to_sender",
    "delivered",
];
/// States that flag the order for customer service.
pub const EXCEPTIONS: &[&str] = &["failure", "return_to_sender"];
/// States nothing later replaces.
const FINAL: &[&str] = &["delivered", "return_to_sender"];

/// The header EasyPost signs its events in.
pub const EASYPOST_SIGNATURE_HEADER: &str = "x-hmac-signature";
/// The prefix of EasyPost's signature value.
pub const EASYPOST_SIGNATURE_PREFIX: &str = "hmac-sha256-hex=";
/// The EasyPost events that carry a tracker; other events are acknowledged and ignored.
pub const EASYPOST_TRACKER_EVENTS: &[&str] = &["tracker.created", "tracker.updated"];

/// How a carrier posts its events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CarrierFormat {
    /// The hub's normalized event ([`EventBody`]) signed with `X-Oms-Signature`.
    #[default]
    Oms,
    /// EasyPost's `Event` with a `Tracker` as its `result`, signed with `X-Hmac-Signature:
    /// hmac-sha256-hex=<hex HMAC-SHA256(secret, raw body)>` (see [`check_easypost`]).
    Easypost,
}

/// One carrier's webhook (`[carriers.<name>]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CarrierWebhook {
    /// The shared secret the carrier signs its events with (at least 16 bytes; ASCII for `easypost`).
    pub webhook_secret: String,
    /// The format of its events and signature (`oms`, the default, or `easypost`).
    #[serde(default)]
    pub format: CarrierFormat,
}

/// The `[carriers]` section: carrier name (`a-z`, `0-9`, `-`, `_`, at most 32 bytes) → its webhook.
pub type CarriersConfig = BTreeMap<String, CarrierWebhook>;

/// Why `[carriers]` is not usable, if it is not.
pub fn check_config(c: &CarriersConfig) -> Result<(), String> {
    if c.len() > CARRIERS_MAX {
        return Err(format!("[carriers] names at most {CARRIERS_MAX} carriers"));
    }
    for (name, w) in c {
        if !valid_name(name) {
            return Err(format!("[carriers.{name}]: a carrier's name is 1 to 32 of a-z, 0-9, - and _"));
        }
        if w.webhook_secret.len() < SECRET_BYTES_MIN {
            return Err(format!("[carriers.{name}] webhook_secret must be at least {SECRET_BYTES_MIN} bytes"));
        }
        // EasyPost keys its HMAC with the secret in Unicode NFKD form; an ASCII secret is its own NFKD form.
        if w.format == CarrierFormat::Easypost && !w.webhook_secret.is_ascii() {
            return Err(format!("[carriers.{name}] an easypost webhook_secret must be ASCII"));
        }
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The carriers and what their webhooks did since the start.
#[derive(Debug, Default)]
pub struct Tracking {
    carriers: CarriersConfig,
    /// Events stored.
    pub accepted: AtomicU64,
    /// Replays answered without a change.
    pub replayed: AtomicU64,
    /// Requests refused (signature, body, unknown carrier).
    pub refused: AtomicU64,
    /// Events accepted or replayed from carriers of format `easypost`.
    pub easypost: AtomicU64,
}

fn hook_format(carriers: &CarriersConfig, carrier: &str) -> CarrierFormat {
    carriers.get(carrier).map(|h| h.format).unwrap_or_default()
}

impl Tracking {
    /// The carriers of `[carriers]`.
    pub fn new(carriers: CarriersConfig) -> Self {
        Tracking { carriers, ..Tracking::default() }
    }
}

/// A carrier's tracking event as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrackingEvent {
    /// The carrier (as configured).
    pub carrier: String,
    /// The carrier's event id.
    pub id: String,
    /// The tracking number.
    pub tracking: String,
    /// One of [`STATUSES`].
    pub status: String,
    /// When it happened, by the carrier's clock, ms since the Unix epoch.
    pub occurred_at_ms: u64,
    /// The carrier's words, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// When the hub received it.
    pub received_at_ms: u64,
}

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

/// The fulfillment a tracking number belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentRef {
    /// The fulfillment order.
    pub fulfillment: String,
    /// Its customer order.
    pub order: String,
    /// That order's channel.
    pub channel: String,
    /// The carrier as the site shipped it.
    pub carrier: String,
}

/// Why an order is flagged for customer service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Flag {
    /// The customer order.
    pub order: String,
    /// Its channel.
    pub channel: String,
    /// The fulfillment.
    pub fulfillment: String,
    /// The carrier.
    pub carrier: String,
    /// The tracking number.
    pub tracking: String,
    /// `failure` or `return_to_sender`.
    pub status: String,
    /// The carrier's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// When it happened.
    pub at_ms: u64,
}

/// Why an event was refused.
#[derive(Debug, thiserror::Error)]
pub enum TrackingError {
    /// No such carrier in `[carriers]`.
    #[error("no carrier {0:?} is configured")]
    UnknownCarrier(String),
    /// No `X-Oms-Signature` header.
    #[error("the X-Oms-Signature header is missing")]
    SignatureMissing,
    /// The signature check failed.
    #[error("signature refused: {0}")]
    Signature(SignatureError),
    /// A field is invalid.
    #[error("{field}: {detail}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// Why.
        detail: String,
    },
    /// [`EVENTS_PER_TRACKING_MAX`] events for this tracking number already.
    #[error("tracking number {0} already has {EVENTS_PER_TRACKING_MAX} events")]
    TooMany(String),
    /// The store failed.
    #[error(transparent)]
    Storage(StorageError),
}

oms_service::storage_errors_from_redb!(TrackingError);

impl From<TrackingError> for Problem {
    fn from(e: TrackingError) -> Problem {
        let (status, code) = match &e {
            TrackingError::UnknownCarrier(_) => (StatusCode::NOT_FOUND, "carrier_not_found"),
            TrackingError::SignatureMissing => (StatusCode::UNAUTHORIZED, "signature_missing"),
            TrackingError::Signature(SignatureError::Malformed) => (StatusCode::UNAUTHORIZED, "signature_malformed"),
            TrackingError::Signature(SignatureError::Stale) => (StatusCode::UNAUTHORIZED, "signature_stale"),
            TrackingError::Signature(SignatureError::Mismatch) => (StatusCode::UNAUTHORIZED, "signature_mismatch"),
            TrackingError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_event"),
            TrackingError::TooMany(_) => (StatusCode::CONFLICT, "too_many_events"),
            TrackingError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
        };
        let p = Problem::new(status, code, e.to_string());
        match e {
            TrackingError::Invalid { field, .. } => p.with("field", field),
            _ => p,
        }
    }
}

/// Creates the tables, so readers find them.
pub(crate) fn init(db: &redb::Database) -> Result<(), StorageError> {
    let w = db.begin_write().map_err(redb::Error::from)?;
    w.open_table(EVENTS).map_err(redb::Error::from)?;
    w.open_table(BY_TRACKING).map_err(redb::Error::from)?;
    w.open_table(UNMATCHED).map_err(redb::Error::from)?;
    w.open_table(SHIPMENTS).map_err(redb::Error::from)?;
    w.open_table(FLAGS).map_err(redb::Error::from)?;
    w.open_table(DELIVER_DUE).map_err(redb::Error::from)?;
    w.open_table(DELIVERED_FROZEN).map_err(redb::Error::from)?;
    w.commit().map_err(redb::Error::from)?;
    Ok(())
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

    fn of(headers: &'a HeaderMap) -> Self {
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

/// What storing an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The event was there already: nothing changed.
    pub replayed: bool,
    /// A shipment carries its tracking number.
    pub matched: bool,
    /// It left a delivery for [`deliver_due`] to write.
    pub delivery_due: bool,
}

fn encode<T: Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(v).map_err(|e| StorageError::encode(what, e))
}

/// Stores `e` in one transaction of `db` (idempotent by carrier and event id), matching it to its shipment if
/// one is known.
pub fn store(db: &redb::Database, e: &TrackingEvent) -> Result<Stored, TrackingError> {
    let w = db.begin_write().map_err(redb::Error::from)?;
    let stored = {
        let mut events = w.open_table(EVENTS)?;
        if events.get((e.carrier.as_str(), e.id.as_str()))?.is_some() {
            return Ok(Stored { replayed: true, matched: false, delivery_due: false });
        }
        let mut by = w.open_table(BY_TRACKING)?;
        let held = by
            .range((e.tracking.as_str(), "", "")..)?
            .take_while(|r| r.as_ref().is_ok_and(|(k, _)| k.value().0 == e.tracking))
            .take(EVENTS_PER_TRACKING_MAX)
            .count();
        if held >= EVENTS_PER_TRACKING_MAX {
            return Err(TrackingError::TooMany(e.tracking.clone()));
        }
        events.insert((e.carrier.as_str(), e.id.as_str()), encode("a tracking event", e)?.as_slice())?;
        by.insert((e.tracking.as_str(), e.carrier.as_str(), e.id.as_str()), ())?;
        drop((events, by));
        let shipment = shipment_of(&w, &e.tracking)?;
        let mut s = Stored { replayed: false, matched: shipment.is_some(), delivery_due: false };
        match shipment {
            Some(sh) => s.delivery_due = apply_matched(&w, &sh, e)?,
            None => {
                prune_unmatched(&w, e.received_at_ms)?;
                let mut u = w.open_table(UNMATCHED)?;
                u.insert((e.received_at_ms, e.carrier.as_str(), e.id.as_str()), e.tracking.as_str())?;
            }
        }
        s
    };
    w.commit().map_err(redb::Error::from)?;
    Ok(stored)
}

fn shipment_of(w: &redb::WriteTransaction, tracking: &str) -> Result<Option<ShipmentRef>, TrackingError> {
    let t = w.open_table(SHIPMENTS)?;
    let found = t.get(tracking)?.map(|v| serde_json::from_slice::<ShipmentRef>(v.value()));
    match found {
        Some(Ok(s)) => Ok(Some(s)),
        Some(Err(err)) => {
            tracing::warn!(tracking, error = %err, "a tracking shipment row cannot be read; left unmatched");
            Ok(None)
        }
        None => Ok(None),
    }
}

/// Forgets waiting events older than [`UNMATCHED_AGE_MS`], and the oldest beyond [`UNMATCHED_MAX`] - 1, at
/// most [`PRUNE_MAX`].
fn prune_unmatched(w: &redb::WriteTransaction, now_ms: u64) -> Result<(), TrackingError> {
    let mut u = w.open_table(UNMATCHED)?;
    let mut gone: Vec<(u64, String, String, String)> = Vec::new();
    let mut over = u.len()?.saturating_sub(UNMATCHED_MAX.saturating_sub(1));
    for row in u.iter()?.take(PRUNE_MAX) {
        let (k, v) = row?;
        let (at, carrier, id) = k.value();
        if over == 0 && now_ms.saturating_sub(at) <= UNMATCHED_AGE_MS {
            break;
        }
        over = over.saturating_sub(1);
        gone.push((at, carrier.to_owned(), id.to_owned(), v.value().to_owned()));
    }
    let mut events = w.open_table(EVENTS)?;
    let mut by = w.open_table(BY_TRACKING)?;
    for (at, carrier, id, tracking) in &gone {
        u.remove((*at, carrier.as_str(), id.as_str()))?;
        events.remove((carrier.as_str(), id.as_str()))?;
        by.remove((tracking.as_str(), carrier.as_str(), id.as_str()))?;
    }
    Ok(())
}

/// What a matched event does (in `w`): its `tracking.updated`, its flag, its delivery. True when it left a
/// delivery due.
fn apply_matched(w: &redb::WriteTransaction, sh: &ShipmentRef, e: &TrackingEvent) -> Result<bool, TrackingError> {
    let (Ok(order), Ok(channel)) = (OrderId::parse(&sh.order), Channel::parse(&sh.channel)) else {
        return Ok(false);
    };
    // A status the hub does not know (EasyPost's `unknown`, `cancelled`, `error`) is kept and does nothing.
    if !STATUSES.contains(&e.status.as_str()) {
        return Ok(false);
    }
    let data = json!({"fulfillment_id": sh.fulfillment, "carrier": e.carrier, "tracking": e.tracking,
        "status": e.status, "event_id": e.id, "occurred_at_ms": e.occurred_at_ms, "description": e.description});
    crate::events::append(w, EventDraft::new(TRACKING_UPDATED, e.received_at_ms).order(&order, &channel).data(data))?;
    let mut flags = w.open_table(FLAGS)?;
    if EXCEPTIONS.contains(&e.status.as_str()) {
        let f = Flag {
            order: sh.order.clone(),
            channel: sh.channel.clone(),
            fulfillment: sh.fulfillment.clone(),
            carrier: e.carrier.clone(),
            tracking: e.tracking.clone(),
            status: e.status.clone(),
            description: e.description.clone(),
            at_ms: e.occurred_at_ms,
        };
        flags.insert(sh.order.as_str(), encode("a carrier flag", &f)?.as_slice())?;
    }
    if e.status == "delivered" {
        let clears = flags
            .get(sh.order.as_str())?
            .and_then(|v| serde_json::from_slice::<Flag>(v.value()).ok())
            .is_some_and(|f| f.fulfillment == sh.fulfillment);
        if clears {
            flags.remove(sh.order.as_str())?;
        }
        let mut due = w.open_table(DELIVER_DUE)?;
        if due.get(sh.fulfillment.as_str())?.is_none() {
            due.insert(sh.fulfillment.as_str(), e.occurred_at_ms.min(e.received_at_ms))?;
        }
        return Ok(true);
    }
    Ok(false)
}

/// Records a fulfillment's shipment under its tracking number and matches the events that waited for it, in
/// the watcher's transaction `w` that reports the fulfillment shipped. True when a delivery is now due.
pub(crate) fn on_shipped(w: &redb::WriteTransaction, f: &FulfillmentSeen) -> Result<bool, StorageError> {
    let Some(sh) = &f.shipment else { return Ok(false) };
    let (Some(tracking), Some(carrier)) = (sh["tracking"].as_str(), sh["carrier"].as_str()) else {
        return Ok(false);
    };
    let tracking = tracking.trim();
    if tracking.is_empty() || tracking.len() > ID_BYTES_MAX {
        return Ok(false);
    }
    let r = ShipmentRef {
        fulfillment: f.id.to_string(),
        order: f.parent.to_string(),
        channel: f.channel.as_str().to_owned(),
        carrier: carrier.to_owned(),
    };
    let run = || -> Result<bool, TrackingError> {
        w.open_table(SHIPMENTS)?.insert(tracking, encode("a tracking shipment", &r)?.as_slice())?;
        let keys: Vec<(String, String)> = {
            let by = w.open_table(BY_TRACKING)?;
            let mut keys = Vec::new();
            for row in by.range((tracking, "", "")..)?.take(EVENTS_PER_TRACKING_MAX) {
                let (k, _) = row?;
                let (t, c, id) = k.value();
                if t != tracking {
                    break;
                }
                keys.push((c.to_owned(), id.to_owned()));
            }
            keys
        };
        let mut due = false;
        let mut waiting: Vec<TrackingEvent> = Vec::new();
        {
            let events = w.open_table(EVENTS)?;
            for (c, id) in &keys {
                if let Some(v) = events.get((c.as_str(), id.as_str()))?
                    && let Ok(e) = serde_json::from_slice::<TrackingEvent>(v.value())
                {
                    waiting.push(e);
                }
            }
        }
        waiting.sort_by_key(|e| (e.occurred_at_ms, rank(&e.status)));
        for e in &waiting {
            let removed =
                w.open_table(UNMATCHED)?.remove((e.received_at_ms, e.carrier.as_str(), e.id.as_str()))?.is_some();
            if removed {
                due |= apply_matched(w, &r, e)?;
            }
        }
        Ok(due)
    };
    run().map_err(|e| match e {
        TrackingError::Storage(s) => s,
        other => StorageError::encode("matching tracking events", other),
    })
}

fn rank(status: &str) -> usize {
    STATUSES.iter().position(|s| *s == status).unwrap_or(0)
}

/// The tracking state of a shipment from its events: a final state stays; else the latest (ties by rank).
/// Events of a status outside [`STATUSES`] do not count.
pub fn current_state(events: &[TrackingEvent]) -> Option<&str> {
    events
        .iter()
        .filter(|e| STATUSES.contains(&e.status.as_str()))
        .max_by_key(|e| (FINAL.contains(&e.status.as_str()), e.occurred_at_ms, rank(&e.status)))
        .map(|e| e.status.as_str())
}

/// The events of tracking number `tracking`, oldest first (by the carrier's time), at most
/// [`EVENTS_PER_TRACKING_MAX`].
pub fn events_of(db: &redb::Database, tracking: &str) -> Result<Vec<TrackingEvent>, StorageError> {
    let r = db.begin_read().map_err(redb::Error::from)?;
    let (Some(by), Some(events)) =
        (crate::events::read_table(&r, BY_TRACKING)?, crate::events::read_table(&r, EVENTS)?)
    else {
        return Ok(vec![]);
    };
    let mut out = Vec::new();
    for row in by.range((tracking, "", "")..).map_err(redb::Error::from)?.take(EVENTS_PER_TRACKING_MAX) {
        let (k, _) = row.map_err(redb::Error::from)?;
        let (t, c, id) = k.value();
        if t != tracking {
            break;
        }
        if let Some(v) = events.get((c, id)).map_err(redb::Error::from)?
            && let Ok(e) = serde_json::from_slice::<TrackingEvent>(v.value())
        {
            out.push(e);
        }
    }
    out.sort_by_key(|e| (e.occurred_at_ms, rank(&e.status)));
    Ok(out)
}

/// The flag on `order`, if a carrier exception flagged it.
pub fn flag_of(db: &redb::Database, order: &str) -> Result<Option<Flag>, StorageError> {
    let r = db.begin_read().map_err(redb::Error::from)?;
    let Some(t) = crate::events::read_table(&r, FLAGS)? else { return Ok(None) };
    Ok(t.get(order).map_err(redb::Error::from)?.and_then(|v| serde_json::from_slice(v.value()).ok()))
}

/// Flagged orders after `after` (by order id), at most `limit`, those of `channel` only if given; and where
/// the next page starts.
pub fn flagged(
    db: &redb::Database,
    after: Option<&str>,
    limit: usize,
    channel: Option<&str>,
) -> Result<(Vec<Flag>, Option<String>), StorageError> {
    let r = db.begin_read().map_err(redb::Error::from)?;
    let Some(t) = crate::events::read_table(&r, FLAGS)? else { return Ok((vec![], None)) };
    let mut out = Vec::new();
    let mut last = None;
    let range = match after {
        Some(a) => t.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
        None => t.range::<&str>(..),
    }
    .map_err(redb::Error::from)?;
    // Bounded: at most FLAGS_PAGE_MAX rows looked at beyond the page (other channels').
    for row in range.take(limit.saturating_add(FLAGS_PAGE_MAX)) {
        let (k, v) = row.map_err(redb::Error::from)?;
        last = Some(k.value().to_owned());
        if let Ok(f) = serde_json::from_slice::<Flag>(v.value())
            && channel.is_none_or(|c| c == f.channel)
        {
            out.push(f);
            if out.len() >= limit {
                break;
            }
        }
    }
    let more = match &last {
        Some(l) => t
            .range::<&str>((std::ops::Bound::Excluded(l.as_str()), std::ops::Bound::Unbounded))
            .map_err(redb::Error::from)?
            .next()
            .is_some(),
        None => false,
    };
    Ok((out, if more { last } else { None }))
}

/// Adds each shipped fulfillment's carrier events (`tracking`, `tracking_status`) to an order's view, the
/// events to its timeline (`carrier_<status>`, with the carrier as `site` and its words as `note`), and the
/// order's carrier flag (`carrier_exception`).
pub(crate) fn with_tracking(hub: &Hub, view: &mut crate::orders::HubOrderView) {
    let db = hub.intake.db();
    let mut timeline = Vec::new();
    for f in &mut view.fulfillments {
        let Some(tracking) = f.shipment.as_ref().map(|s| s.tracking.clone()) else { continue };
        let events = match events_of(db, &tracking) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(%tracking, error = %e, "cannot read the carrier's events");
                continue;
            }
        };
        // Unknown statuses are kept with the events but say nothing in the customer's timeline.
        for e in events.iter().filter(|e| STATUSES.contains(&e.status.as_str())) {
            timeline.push(crate::orders::TimelineItem::at_site(
                e.occurred_at_ms,
                format!("carrier_{}", e.status),
                f.id.as_str(),
                &e.carrier,
                e.description.clone().unwrap_or_default(),
            ));
        }
        f.tracking_status = Some(current_state(&events).map(str::to_owned));
        f.tracking = Some(events);
    }
    view.timeline.extend(timeline);
    crate::orders::sort_timeline(&mut view.timeline);
    match flag_of(db, view.id.as_str()) {
        Ok(flag) => view.carrier_exception = Some(flag),
        Err(e) => tracing::warn!(order = %view.id, error = %e, "cannot read the order's carrier flag"),
    }
}

/// When the carrier delivered fulfillment `fulfillment` after its site froze it as shipped, if it did: the
/// hub's record ([`deliver_due`]).
pub fn frozen_delivery(db: &redb::Database, fulfillment: &str) -> Result<Option<u64>, StorageError> {
    let r = db.begin_read().map_err(redb::Error::from)?;
    let Some(t) = crate::events::read_table(&r, DELIVERED_FROZEN)? else { return Ok(None) };
    Ok(t.get(fulfillment).map_err(redb::Error::from)?.map(|v| v.value()))
}

/// What the outbox does with one due delivery, from the fulfillment's document.
enum DueDelivery {
    /// Written into the document (or nothing to write): the row goes.
    Done,
    /// The document is frozen as shipped: the hub records the delivery itself and reports `order.delivered`.
    Frozen(FulfillmentSeen, u64),
    /// Not written (the document refused it): the row stays for the next pass.
    Retry,
}

/// Records in `w` a carrier's delivery of a fulfillment whose document is frozen as shipped (`f`, with the
/// status `delivered`): the [`DELIVERED_FROZEN`] row and, once, its `order.delivered`; removes the due row.
pub(crate) fn record_frozen(
    w: &redb::WriteTransaction,
    f: &FulfillmentSeen,
    at_ms: u64,
    now_ms: u64,
) -> Result<(), StorageError> {
    {
        let mut t = w.open_table(DELIVERED_FROZEN).map_err(redb::Error::from)?;
        if t.get(f.id.as_str()).map_err(redb::Error::from)?.is_none() {
            t.insert(f.id.as_str(), at_ms).map_err(redb::Error::from)?;
        }
        w.open_table(DELIVER_DUE).map_err(redb::Error::from)?.remove(f.id.as_str()).map_err(redb::Error::from)?;
    }
    crate::events::watch::report_in(w, f, now_ms)?;
    Ok(())
}

/// The outbox pass: writes each due delivery into its fulfillment's document (`hub.carrier_delivered_at_ms`),
/// flushes the documents, then deletes the rows and tells the sites. A fulfillment whose document its site
/// already froze as shipped cannot take the key: the hub records the delivery in its own store instead
/// ([`DELIVERED_FROZEN`], read by the order's view) and reports its `order.delivered`, in the transaction
/// that deletes the row. At most [`DELIVER_BATCH_MAX`] a pass; a row whose write failed stays for the next
/// pass.
pub async fn deliver_due(hub: &Arc<Hub>) {
    let h = hub.clone();
    let due = tokio::task::spawn_blocking(move || -> Result<Vec<(String, u64)>, StorageError> {
        let r = h.intake.db().begin_read().map_err(redb::Error::from)?;
        let Some(t) = crate::events::read_table(&r, DELIVER_DUE)? else { return Ok(vec![]) };
        let mut out = Vec::new();
        for row in t.iter().map_err(redb::Error::from)?.take(DELIVER_BATCH_MAX) {
            let (k, v) = row.map_err(redb::Error::from)?;
            out.push((k.value().to_owned(), v.value()));
        }
        Ok(out)
    })
    .await;
    let due = match due {
        Ok(Ok(d)) if !d.is_empty() => d,
        Ok(Ok(_)) => return,
        Ok(Err(e)) => return tracing::warn!(error = %e, "cannot read the carrier deliveries due"),
        Err(e) => return tracing::warn!(error = %e, "the carrier deliveries' read failed"),
    };
    let mut done = Vec::new();
    let mut frozen = Vec::new();
    let mut tell = Vec::new();
    {
        let mut docs = hub.docs.lock();
        for (fulfillment, at) in &due {
            match deliver_one(&mut docs, fulfillment, *at, &mut tell) {
                DueDelivery::Done => done.push(fulfillment.clone()),
                DueDelivery::Frozen(f, at) => frozen.push((f, at)),
                DueDelivery::Retry => {}
            }
        }
    }
    if let Err(e) = crate::server::flush_docs(hub).await {
        return tracing::warn!(error = %e, "cannot flush the carrier's deliveries; retrying");
    }
    let h = hub.clone();
    let removed = tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
        let w = h.intake.db().begin_write().map_err(redb::Error::from)?;
        {
            let mut t = w.open_table(DELIVER_DUE).map_err(redb::Error::from)?;
            for f in &done {
                t.remove(f.as_str()).map_err(redb::Error::from)?;
            }
        }
        let now = now_ms();
        for (f, at) in &frozen {
            record_frozen(&w, f, *at, now)?;
        }
        w.commit().map_err(redb::Error::from)?;
        Ok(())
    })
    .await;
    if !matches!(removed, Ok(Ok(()))) {
        tracing::warn!("cannot clear the carrier deliveries written; they are written again (no change)");
    }
    tell.sort();
    tell.dedup();
    hub.poke(&tell);
}

/// One due delivery against its fulfillment's document (under the documents' lock).
fn deliver_one(docs: &mut crate::docs::HubDocs, fulfillment: &str, at: u64, tell: &mut Vec<String>) -> DueDelivery {
    let Some(name) = OrderId::parse(fulfillment).ok().as_ref().and_then(schema::order_doc) else {
        return DueDelivery::Done;
    };
    if !docs.db().contains(&name) {
        tracing::warn!(%fulfillment, "a carrier delivery for a fulfillment whose document is not here");
        return DueDelivery::Done;
    }
    let view = docs.get(&name).and_then(|d| schema::read_order(&d, name.as_str()).ok());
    if let Some(v) = view.filter(|v| v.frozen_at_ms.is_some()) {
        // Frozen: the document takes no more changes. Shipped, the delivery is the hub's to record.
        let Some(p) = v.progress.as_ref().filter(|p| p.status == FulfillmentState::Shipped) else {
            return DueDelivery::Done;
        };
        return match FulfillmentSeen::of(&v.id, v.parent.as_deref(), &v.site, &v.draft.channel, p) {
            Some(mut f) => {
                f.status = FulfillmentState::Delivered;
                DueDelivery::Frozen(f, at)
            }
            None => DueDelivery::Done,
        };
    }
    match docs.write_local(&name, |d| schema::request_delivered(d, at)) {
        Ok(nodes) => {
            tell.extend(nodes);
            DueDelivery::Done
        }
        Err(e) => {
            tracing::warn!(%fulfillment, error = %e, "cannot write the carrier's delivery; retrying");
            DueDelivery::Retry
        }
    }
}

#[utoipa::path(post, path = "/v1/carriers/{carrier}/events", tag = "orders",
    params(("carrier" = String, Path, description = "The carrier, as named in `[carriers]`"),
        ("X-Oms-Signature" = Option<String>, Header, description = "Format `oms`: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, \"<t>.<body>\")>`"),
        ("X-Hmac-Signature" = Option<String>, Header, description = "Format `easypost`: `hmac-sha256-hex=<hex HMAC-SHA256(secret, body)>`")),
    request_body(content = EventBody, description = "One tracking event: the hub's normalized event (format `oms`) or EasyPost's `Event` with a `Tracker` (format `easypost`)"),
    responses((status = 200, description = "Stored (or a replay: `replayed`), with whether a shipment carries its tracking number; `ignored` for an EasyPost event that carries no tracker", body = EventAnswer),
        (status = 401, description = "`signature_missing`, `signature_malformed`, `signature_stale`, `signature_mismatch`"),
        (status = 404, description = "`carrier_not_found`"),
        (status = 409, description = "`too_many_events`"),
        (status = 413, description = "`body_too_large`"),
        (status = 422, description = "`invalid_event`, `invalid_body`")))]
async fn carrier_event(
    State(hub): State<Arc<Hub>>,
    Path(carrier): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let checked = check_request(&hub.tracking.carriers, &carrier, Signatures::of(&headers), &body, now_ms())
        .inspect_err(|_| {
            hub.tracking.refused.fetch_add(1, Ordering::Relaxed);
        })?;
    let Some(event) = checked else {
        // An EasyPost event without a tracker (a batch, a refund…): acknowledged so the carrier does not retry.
        return Ok(Json(EventIgnored { carrier, ignored: true }).into_response());
    };
    let h = hub.clone();
    let e = event.clone();
    let stored = crate::orders::blocking(move || store(h.intake.db(), &e)).await?;
    if stored.replayed {
        hub.tracking.replayed.fetch_add(1, Ordering::Relaxed);
    } else {
        hub.tracking.accepted.fetch_add(1, Ordering::Relaxed);
    }
    if hook_format(&hub.tracking.carriers, &carrier) == CarrierFormat::Easypost {
        hub.tracking.easypost.fetch_add(1, Ordering::Relaxed);
    }
    if stored.delivery_due {
        deliver_due(&hub).await;
    }
    Ok(Json(EventStored {
        carrier: event.carrier,
        id: event.id,
        tracking: event.tracking,
        status: event.status,
        replayed: stored.replayed,
        matched: stored.matched,
    })
    .into_response())
}

/// The answer to a carrier's tracking event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventStored {
    /// The carrier.
    pub carrier: String,
    /// The carrier's event id.
    pub id: String,
    /// The tracking number.
    pub tracking: String,
    /// The status it reports.
    pub status: String,
    /// The same event was stored before: nothing changed.
    pub replayed: bool,
    /// Whether a shipment carries its tracking number.
    pub matched: bool,
}

/// The answer to an EasyPost event that carries no tracker (a batch, a refund…): acknowledged, stored nowhere.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventIgnored {
    /// The carrier.
    pub carrier: String,
    /// Always `true`.
    pub ignored: bool,
}

/// What `POST /v1/carriers/{carrier}/events` answers: the event stored (or replayed), or ignored.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum EventAnswer {
    /// A tracking event, stored or replayed.
    Stored(EventStored),
    /// An EasyPost event without a tracker.
    Ignored(EventIgnored),
}

/// The route (open in `api::policy`: the signature authenticates the carrier).
pub fn router(hub: Arc<Hub>) -> OpenApiRouter {
    OpenApiRouter::new().routes(routes!(carrier_event)).with_state(hub)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::webhooks::signature_header;
    use oms_protocol::domain::{FulfillmentState, NodeId};

    const SECRET: &str = "whsec_test_carrier_secret";

    fn carriers() -> CarriersConfig {
        BTreeMap::from([(
            "ups".to_owned(),
            CarrierWebhook { webhook_secret: SECRET.into(), format: CarrierFormat::Oms },
        )])
    }

    fn body(id: &str, tracking: &str, status: &str, at: u64) -> Vec<u8> {
        serde_json::to_vec(&json!({"id": id, "tracking_code": tracking, "status": status, "occurred_at_ms": at,
            "description": "at the depot", "extra": {"ignored": true}}))
        .unwrap()
    }

    fn event(id: &str, tracking: &str, status: &str, at: u64) -> TrackingEvent {
        let b = body(id, tracking, status, at);
        let now = 1_000_000_000;
        check_request(&carriers(), "ups", Signatures::oms(Some(&signature_header(SECRET, now / 1000, &b))), &b, now)
            .unwrap()
            .unwrap()
    }

    fn db() -> (tempfile::TempDir, redb::Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("intake.redb")).unwrap();
        crate::events::init(&db).unwrap();
        init(&db).unwrap();
        (dir, db)
    }

    fn seen(fo: &str, tracking: &str) -> FulfillmentSeen {
        FulfillmentSeen {
            id: OrderId::parse(fo).unwrap(),
            parent: OrderId::parse("hub-1").unwrap(),
            channel: Channel::parse("web").unwrap(),
            site: NodeId::parse("wh-1").unwrap(),
            status: FulfillmentState::Shipped,
            shipment: Some(json!({"carrier": "ups", "tracking": tracking, "parcels": 1})),
            shipped_at_ms: Some(5),
        }
    }

    fn ship(db: &redb::Database, fo: &str, tracking: &str) -> bool {
        let w = db.begin_write().unwrap();
        let due = on_shipped(&w, &seen(fo, tracking)).unwrap();
        w.commit().unwrap();
        due
    }

    fn due(db: &redb::Database) -> Vec<String> {
        let r = db.begin_read().unwrap();
        let t = r.open_table(DELIVER_DUE).unwrap();
        t.iter().unwrap().map(|r| r.unwrap().0.value().to_owned()).collect()
    }

    fn kinds(db: &redb::Database) -> usize {
        let f = crate::events::TypeFilter::default();
        crate::events::page(db, 0, 100, &f, None, 1000).unwrap().events.len()
    }

    #[test]
    fn the_signature_is_checked_before_anything_else_is_read() {
        let now = 1_000_000_000u64;
        let b = body("e1", "1Z1", "in_transit", 1);
        let good = signature_header(SECRET, now / 1000, &b);
        let code = |carrier: &str, sig: Option<&str>, body: &[u8]| {
            check_request(&carriers(), carrier, Signatures::oms(sig), body, now).map(|_| ()).unwrap_err().code
        };
        assert!(check_request(&carriers(), "ups", Signatures::oms(Some(&good)), &b, now).is_ok());
        assert_eq!(code("fedex", Some(&good), &b), "carrier_not_found");
        assert_eq!(code("ups", None, &b), "signature_missing");
        assert_eq!(code("ups", Some("v1=zz"), &b), "signature_malformed");
        let other = signature_header("another secret entirely", now / 1000, &b);
        assert_eq!(code("ups", Some(&other), &b), "signature_mismatch");
        // Tampered: the body changed after signing.
        let tampered = body("e1", "1Z1", "delivered", 1);
        assert_eq!(code("ups", Some(&good), &tampered), "signature_mismatch");
        // Stale: signed more than the replay window ago.
        let old = signature_header(SECRET, now / 1000 - REPLAY_WINDOW_S - 1, &b);
        assert_eq!(code("ups", Some(&old), &b), "signature_stale");
        // Signed but not an event.
        let sign = |b: &[u8]| signature_header(SECRET, now / 1000, b);
        for bad in [
            &b"not json"[..],
            br#"{"id":"e","tracking_code":"t","status":"lost_in_space","occurred_at_ms":1}"#,
            br#"{"id":"","tracking_code":"t","status":"delivered","occurred_at_ms":1}"#,
            br#"{"id":"e","tracking_code":"t\u0007","status":"delivered","occurred_at_ms":1}"#,
            br#"{"id":"e","status":"delivered","occurred_at_ms":1}"#,
            br#"{"id":"e","tracking_code":"t","status":"delivered","occurred_at_ms":-1}"#,
        ] {
            let p =
                check_request(&carriers(), "ups", Signatures::oms(Some(&sign(bad))), bad, now).map(|_| ()).unwrap_err();
            assert!(p.status == 400 || p.status == 422, "{p:?}");
        }
        let big = vec![b' '; EVENT_BODY_BYTES_MAX + 1];
        assert_eq!(code("ups", Some(&sign(&big)), &big), "body_too_large");
    }

    #[test]
    fn a_replay_changes_nothing_and_an_event_before_its_shipment_is_matched_later() {
        let (_d, db) = db();
        let e = event("e1", "1Z1", "in_transit", 10);
        let s = store(&db, &e).unwrap();
        assert_eq!((s.replayed, s.matched), (false, false), "no shipment yet: waits");
        assert_eq!(kinds(&db), 0, "nothing to report before the match");
        let s = store(&db, &e).unwrap();
        assert!(s.replayed);
        assert_eq!(events_of(&db, "1Z1").unwrap().len(), 1);
        // A delivered before the shipment too; then the shipment arrives and both match, in order.
        store(&db, &event("e2", "1Z1", "delivered", 20)).unwrap();
        assert!(due(&db).is_empty());
        assert!(ship(&db, "hub-1.1", "1Z1"), "the waiting delivery is due now");
        assert_eq!(due(&db), ["hub-1.1"]);
        assert_eq!(kinds(&db), 2, "one tracking.updated per event");
        // Matched events do not match again (a second report of the shipment).
        assert!(!ship(&db, "hub-1.1", "1Z1"));
        assert_eq!(kinds(&db), 2);
        // A replay after the match changes nothing either.
        assert!(store(&db, &event("e2", "1Z1", "delivered", 20)).unwrap().replayed);
        assert_eq!(kinds(&db), 2);
        let r = db.begin_read().unwrap();
        assert_eq!(r.open_table(UNMATCHED).unwrap().len().unwrap(), 0);
    }

    #[test]
    fn a_late_in_transit_does_not_undo_a_delivery_and_exceptions_flag_the_order() {
        let (_d, db) = db();
        ship(&db, "hub-1.1", "1Z9");
        assert!(store(&db, &event("a", "1Z9", "in_transit", 10)).unwrap().matched);
        store(&db, &event("b", "1Z9", "failure", 20)).unwrap();
        let flag = flag_of(&db, "hub-1").unwrap().unwrap();
        assert_eq!((flag.status.as_str(), flag.fulfillment.as_str()), ("failure", "hub-1.1"));
        assert_eq!(flagged(&db, None, 10, None).unwrap().0.len(), 1);
        assert!(flagged(&db, None, 10, Some("marketplace")).unwrap().0.is_empty());
        store(&db, &event("c", "1Z9", "delivered", 30)).unwrap();
        assert!(flag_of(&db, "hub-1").unwrap().is_none(), "delivered clears the flag");
        // Out of order: an in_transit the carrier stamped after the delivery.
        store(&db, &event("d", "1Z9", "in_transit", 40)).unwrap();
        let evs = events_of(&db, "1Z9").unwrap();
        assert_eq!(evs.len(), 4);
        assert_eq!(current_state(&evs), Some("delivered"));
        assert_eq!(due(&db), ["hub-1.1"], "one delivery due, whatever came after");
        assert_eq!(current_state(&[]), None);
    }

    #[test]
    fn waiting_events_are_bounded_per_tracking_number() {
        let (_d, db) = db();
        for i in 0..EVENTS_PER_TRACKING_MAX {
            store(&db, &event(&format!("e{i}"), "T", "in_transit", i as u64)).unwrap();
        }
        assert!(matches!(store(&db, &event("one-more", "T", "in_transit", 1)), Err(TrackingError::TooMany(_))));
        // The waiting ones older than the age bound are forgotten by the next store.
        let mut late = event("late", "U", "in_transit", 1);
        late.received_at_ms += UNMATCHED_AGE_MS + 1;
        store(&db, &late).unwrap();
        let r = db.begin_read().unwrap();
        let left = r.open_table(UNMATCHED).unwrap().len().unwrap();
        assert_eq!(left, (EVENTS_PER_TRACKING_MAX - PRUNE_MAX.min(EVENTS_PER_TRACKING_MAX)) as u64 + 1);
    }

    const EP_SECRET: &str = "easypost_webhook_secret_0123";

    fn ep_carriers() -> CarriersConfig {
        let hook = CarrierWebhook { webhook_secret: EP_SECRET.into(), format: CarrierFormat::Easypost };
        BTreeMap::from([("easypost".to_owned(), hook)])
    }

    /// An EasyPost `Event` with a `Tracker`, as EasyPost posts it.
    fn ep_body(id: &str, tracking: &str, status: &str, at: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({"id": id, "object": "Event", "description": "tracker.updated", "mode": "test",
        "created_at": "2026-12-01T00:00:00Z", "previous_attributes": {"status": "unknown"},
        "result": {"id": "trk_1", "object": "Tracker", "mode": "test", "tracking_code": tracking,
            "status": status, "status_detail": "arrived_at_facility", "carrier": "USPS",
            "updated_at": "2026-12-01T00:00:00Z",
            "tracking_details": [
                {"object": "TrackingDetail", "message": "Pre-Shipment Info Sent", "status": "pre_transit",
                 "datetime": "2026-11-30T10:00:00Z"},
                {"object": "TrackingDetail", "message": format!("{status} at the facility"), "status": status,
                 "datetime": at, "tracking_location": {"city": "Berlin", "country": "DE"}}
            ]}}))
        .unwrap()
    }

    fn ep_check(body: &[u8], sig: Option<&str>) -> Result<Option<TrackingEvent>, Problem> {
        let sigs = Signatures { oms: None, easypost: sig };
        check_request(&ep_carriers(), "easypost", sigs, body, 1_000_000_000)
    }

    fn ep_event(id: &str, tracking: &str, status: &str, at: &str) -> TrackingEvent {
        let b = ep_body(id, tracking, status, at);
        ep_check(&b, Some(&easypost_signature(EP_SECRET, &b))).unwrap().unwrap()
    }

    #[test]
    fn easypost_events_are_normalized_and_move_the_fulfillment() {
        let e = ep_event("evt_1", "EZ1", "in_transit", "2026-12-01T12:00:00Z");
        assert_eq!((e.carrier.as_str(), e.id.as_str(), e.tracking.as_str()), ("easypost", "evt_1", "EZ1"));
        assert_eq!(e.status, "in_transit");
        assert_eq!(e.occurred_at_ms, 1_796_126_400_000, "the latest tracking detail's datetime");
        assert_eq!(e.description.as_deref(), Some("in_transit at the facility"));
        let (_d, db) = db();
        ship(&db, "hub-1.1", "EZ1");
        assert!(store(&db, &e).unwrap().matched);
        assert_eq!(current_state(&events_of(&db, "EZ1").unwrap()), Some("in_transit"));
        let d = ep_event("evt_2", "EZ1", "delivered", "2026-12-02T09:30:00Z");
        let s = store(&db, &d).unwrap();
        assert!(s.delivery_due && !s.replayed);
        assert_eq!(current_state(&events_of(&db, "EZ1").unwrap()), Some("delivered"));
        assert_eq!(due(&db), ["hub-1.1"]);
        assert_eq!(kinds(&db), 2);
        // A replay (EasyPost retries with the same event id) changes nothing.
        assert!(store(&db, &d).unwrap().replayed);
        assert_eq!(kinds(&db), 2);
        // Unknown statuses are stored and change no state: no event, no flag, no delivery, no regression.
        for (i, st) in ["unknown", "cancelled", "error", "something_new"].iter().enumerate() {
            let u = ep_event(&format!("evt_u{i}"), "EZ1", st, "2026-12-03T09:30:00Z");
            let s = store(&db, &u).unwrap();
            assert!(s.matched && !s.replayed && !s.delivery_due);
        }
        let evs = events_of(&db, "EZ1").unwrap();
        assert_eq!(evs.len(), 6);
        assert_eq!(current_state(&evs), Some("delivered"));
        assert_eq!(kinds(&db), 2, "no tracking.updated for an unknown status");
        assert!(flag_of(&db, "hub-1").unwrap().is_none());
        // An unknown status alone is no state either; exceptions flag as in the hub's own format.
        ship(&db, "hub-2.1", "EZ2");
        store(&db, &ep_event("evt_3", "EZ2", "unknown", "2026-12-01T12:00:00Z")).unwrap();
        assert_eq!(current_state(&events_of(&db, "EZ2").unwrap()), None);
        store(&db, &ep_event("evt_4", "EZ2", "return_to_sender", "2026-12-01T13:00:00Z")).unwrap();
        assert_eq!(flag_of(&db, "hub-1").unwrap().map(|f| f.status), Some("return_to_sender".to_owned()));
    }

    #[test]
    fn easypost_signatures_and_bodies_are_checked() {
        let b = ep_body("evt_1", "EZ1", "delivered", "2026-12-01T12:00:00Z");
        let good = easypost_signature(EP_SECRET, &b);
        let code = |body: &[u8], sig: Option<&str>| ep_check(body, sig).map(|_| ()).unwrap_err().code;
        assert!(ep_check(&b, Some(&good)).unwrap().is_some());
        assert!(ep_check(&b, Some(&format!("  {good} "))).is_ok(), "surrounding blanks are tolerated");
        assert_eq!(code(&b, None), "signature_missing");
        // The hub's own header does not authenticate an EasyPost carrier.
        let oms = signature_header(EP_SECRET, 1_000_000, &b);
        let p = check_request(&ep_carriers(), "easypost", Signatures::oms(Some(&oms)), &b, 1_000_000_000);
        assert_eq!(p.map(|_| ()).unwrap_err().code, "signature_missing");
        assert_eq!(code(&b, Some("sha256=00")), "signature_malformed");
        assert_eq!(code(&b, Some("hmac-sha256-hex=zz")), "signature_malformed");
        assert_eq!(code(&b, Some("hmac-sha256-hex=abcd")), "signature_malformed");
        assert_eq!(code(&b, Some(&easypost_signature("another secret entirely", &b))), "signature_mismatch");
        let tampered = ep_body("evt_1", "EZ1", "in_transit", "2026-12-01T12:00:00Z");
        assert_eq!(code(&tampered, Some(&good)), "signature_mismatch");
        // Signed but malformed: typed problems.
        let tracker = |id: &str, object: &str, code: &str, status: &str| {
            json!({"id": id, "object": "Event", "description": "tracker.updated",
                "result": {"object": object, "tracking_code": code, "status": status}})
        };
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (json!({"id": "evt_1", "object": "Batch", "description": "tracker.updated"}), "invalid_event"),
            (json!({"id": "evt_1", "object": "Event", "description": "tracker.updated"}), "invalid_event"),
            (tracker("", "Tracker", "EZ1", "delivered"), "invalid_event"),
            (tracker("evt_1", "Shipment", "EZ1", "delivered"), "invalid_event"),
            (tracker("evt_1", "Tracker", "EZ\u{7}", "delivered"), "invalid_event"),
            (tracker("evt_1", "Tracker", "EZ1", ""), "invalid_event"),
        ];
        for (v, want) in cases {
            let body = serde_json::to_vec(&v).unwrap();
            let p = ep_check(&body, Some(&easypost_signature(EP_SECRET, &body))).map(|_| ()).unwrap_err();
            assert_eq!((p.status, p.code), (422, want), "{v}");
        }
        for bad in [&b"{not json"[..], br#"{"object":"Event","description":"tracker.updated"}"#, br#"[]"#] {
            let p = ep_check(bad, Some(&easypost_signature(EP_SECRET, bad))).map(|_| ()).unwrap_err();
            assert!(p.status == 400 || p.status == 422, "{p:?}");
        }
        // Another kind of event: acknowledged, nothing to store.
        let batch = serde_json::to_vec(&json!({"id": "evt_9", "object": "Event", "description": "batch.updated",
            "result": {"object": "Batch"}}))
        .unwrap();
        assert!(ep_check(&batch, Some(&easypost_signature(EP_SECRET, &batch))).unwrap().is_none());
        // A tracker without details: its updated_at, then the status detail's words.
        let bare = serde_json::to_vec(&json!({"id": "evt_8", "object": "Event", "description": "tracker.created",
            "result": {"object": "Tracker", "tracking_code": "EZ8", "status": "pre_transit",
                "status_detail": "label_created", "updated_at": "2026-12-01T12:00:00Z"}}))
        .unwrap();
        let e = ep_check(&bare, Some(&easypost_signature(EP_SECRET, &bare))).unwrap().unwrap();
        assert_eq!((e.occurred_at_ms, e.description.as_deref()), (1_796_126_400_000, Some("label_created")));
    }

    #[test]
    fn a_delivery_for_a_frozen_document_is_recorded_and_reported_once() {
        let (_d, db) = db();
        ship(&db, "hub-1.1", "1Z7");
        let w = db.begin_write().unwrap();
        crate::events::watch::report_in(&w, &seen("hub-1.1", "1Z7"), 6).unwrap();
        w.commit().unwrap();
        store(&db, &event("d", "1Z7", "delivered", 40)).unwrap();
        assert_eq!(due(&db), ["hub-1.1"]);
        let delivered = |db: &redb::Database| {
            let f = crate::events::TypeFilter::default();
            let page = crate::events::page(db, 0, 100, &f, None, 1000).unwrap();
            page.events.iter().filter(|e| e.kind == crate::events::ORDER_DELIVERED).count()
        };
        assert_eq!(delivered(&db), 0);
        let mut f = seen("hub-1.1", "1Z7");
        f.status = FulfillmentState::Delivered;
        for _ in 0..2 {
            let w = db.begin_write().unwrap();
            record_frozen(&w, &f, 40, 50).unwrap();
            w.commit().unwrap();
        }
        assert_eq!(frozen_delivery(&db, "hub-1.1").unwrap(), Some(40));
        assert_eq!(frozen_delivery(&db, "hub-1.2").unwrap(), None);
        assert!(due(&db).is_empty(), "the outbox row goes with the record");
        assert_eq!(delivered(&db), 1, "order.delivered once");
        assert!(crate::events::watch::unfinished(&db).unwrap().is_empty(), "no longer in transit");
    }

    #[test]
    fn the_config_is_checked() {
        assert!(check_config(&carriers()).is_ok());
        let short = BTreeMap::from([(
            "ups".to_owned(),
            CarrierWebhook { webhook_secret: "short".into(), format: CarrierFormat::Oms },
        )]);
        assert!(check_config(&short).is_err());
        let bad = BTreeMap::from([(
            "UPS!".to_owned(),
            CarrierWebhook { webhook_secret: SECRET.into(), format: CarrierFormat::Oms },
        )]);
        assert!(check_config(&bad).is_err());
        assert!(check_config(&ep_carriers()).is_ok());
        let hook = CarrierWebhook { webhook_secret: "ünïcödé_secret_0123".into(), format: CarrierFormat::Easypost };
        assert!(check_config(&BTreeMap::from([("ep".to_owned(), hook)])).is_err(), "easypost secrets are ASCII");
        let toml: CarriersConfig =
            toml::from_str("[ep]\nwebhook_secret = \"0123456789abcdef\"\nformat = \"easypost\"\n").unwrap();
        assert_eq!(toml["ep"].format, CarrierFormat::Easypost);
        assert!(
            toml::from_str::<CarriersConfig>("[ep]\nwebhook_secret = \"0123456789abcdef\"\nformat = \"x\"\n").is_err()
        );
    }
}
