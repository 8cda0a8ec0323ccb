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
//!
//! [`store`]: fn@store

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use oms_service::storage::StorageError;
use oms_service::{Problem, RawBody, now_ms};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::events::webhooks::SignatureError;
use crate::server::Hub;

mod carriers;
mod deliveries;
mod store;
#[cfg(test)]
mod tests;

pub use carriers::{EventBody, Signatures, check_easypost, check_request, easypost_signature, verify_easypost};
pub(crate) use deliveries::with_tracking;
pub use deliveries::{deliver_due, frozen_delivery};
pub use store::{Stored, current_state, events_of, flag_of, flagged, store};
pub(crate) use store::{init, on_shipped};

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
