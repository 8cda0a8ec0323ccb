//! Dispatch over HTTP: voiding a label (`POST /v1/consignments/{id}/void`), the end-of-day manifest
//! (`POST /v1/manifests`, `GET /v1/manifests/{id}`), collection (`POST /v1/manifests/{id}/collected`) and the
//! printable packing slip (`GET /v1/consignments/{id}/slip`). The state changes are the store's
//! (`cmd::VoidLabel`, `cmd::CloseManifest`, `cmd::Collect`); the carrier is called only by the label outbox.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, html};
use oms_service::audit::Actor;
use oms_service::{JsonBody, Problem, RawBody};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::api::{AppState, exec, text};
use crate::store::{Closed, Collected, Manifest, StoreError, VOID_REASON_BYTES_MAX, cmd};

/// Longest consignment or manifest id in a path, bytes.
const ID_BYTES_MAX: usize = 80;

fn id_path(field: &str, id: &str) -> Result<(), Problem> {
    if id.is_empty() || id.len() > ID_BYTES_MAX || !id.bytes().all(|b| b.is_ascii_graphic()) {
        let msg = format!("must be 1 to {ID_BYTES_MAX} printable ASCII bytes");
        return Err(oms_protocol::domain::ValidationError::new("invalid_id", field, msg).into());
    }
    Ok(())
}

/// The body of a void.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct VoidBody {
    /// Why the label is voided (wrong parcel, order cancelled, ...).
    reason: String,
}

/// `POST /v1/consignments/{id}/void`: voids a labelled consignment's label. Committed as `void_pending`
/// before the answer; the label outbox voids it at the carrier (`voided`). Voiding again answers the same.
#[utoipa::path(post, path = "/v1/consignments/{id}/void", tag = "consignments",
    params(("id" = String, Path, description = "The consignment id")),
    request_body(content = VoidBody, example = json!({"reason": "wrong parcel size"})),
    responses((status = 202, description = "The consignment, `void_pending` (or already `voided`)", body = crate::store::Consignment)))]
pub(crate) async fn void(
    State(st): State<AppState>,
    actor: Actor,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<VoidBody>,
) -> Result<Response, Problem> {
    id_path("id", &id)?;
    text("reason", &b.reason, true)?;
    if b.reason.len() > VOID_REASON_BYTES_MAX {
        let msg = format!("must be at most {VOID_REASON_BYTES_MAX} bytes");
        return Err(oms_protocol::domain::ValidationError::new("invalid_text", "reason", msg).into());
    }
    let c = exec(&st, &actor, Some(id.clone()), cmd::VoidLabel { id, reason: b.reason }).await?;
    Ok((StatusCode::ACCEPTED, Json(c)).into_response())
}

/// The body of a manifest close.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ManifestBody {
    /// Only this carrier's consignments (default: every carrier, one manifest each).
    carrier: Option<String>,
}

/// `POST /v1/manifests`: closes the labelled consignments into one manifest per carrier (`manifested`).
/// Only labelled consignments are taken; none is `409 nothing_to_manifest`.
#[utoipa::path(post, path = "/v1/manifests", tag = "consignments",
    request_body = Option<ManifestBody>,
    responses((status = 201, description = "The manifests closed, and whether labelled consignments were left for the next close", body = Closed)))]
pub(crate) async fn close(
    State(st): State<AppState>,
    actor: Actor,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let b: ManifestBody = if body.iter().all(u8::is_ascii_whitespace) {
        ManifestBody::default()
    } else {
        oms_service::parse_json(&body)?
    };
    if let Some(c) = &b.carrier {
        text("carrier", c, true)?;
    }
    let closed = exec(&st, &actor, None, cmd::CloseManifest { carrier: b.carrier }).await?;
    Ok((StatusCode::CREATED, Json(closed)).into_response())
}

/// `GET /v1/manifests/{id}`.
#[utoipa::path(get, path = "/v1/manifests/{id}", tag = "consignments",
    params(("id" = String, Path, description = "The manifest id (`M-<n>`)")),
    responses((status = 200, description = "The manifest", body = Manifest)))]
pub(crate) async fn get(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response, Problem> {
    id_path("id", &id)?;
    let m = st.store.manifest(&id)?.ok_or(StoreError::ManifestNotFound(id))?;
    Ok(Json(m).into_response())
}

/// `POST /v1/manifests/{id}/collected`: the carrier collected the manifest. Its consignments become
/// `collected` and their packed orders `shipped` with the consignment's tracking. Again: no change.
#[utoipa::path(post, path = "/v1/manifests/{id}/collected", tag = "consignments",
    params(("id" = String, Path, description = "The manifest id")),
    responses((status = 200, description = "The manifest and the orders this collection shipped", body = Collected)))]
pub(crate) async fn collected(
    State(st): State<AppState>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    id_path("id", &id)?;
    let done = exec(&st, &actor, Some(id.clone()), cmd::Collect { manifest: id }).await?;
    Ok(Json(done).into_response())
}

/// `GET /v1/consignments/{id}/slip`: the packing slip, a printable HTML page (ship-to, lines, parcels,
/// service and tracking).
#[utoipa::path(get, path = "/v1/consignments/{id}/slip", tag = "consignments",
    params(("id" = String, Path, description = "The consignment id")),
    responses((status = 200, description = "The packing slip (HTML, printable)", content_type = "text/html", body = String)))]
pub(crate) async fn slip(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response, Problem> {
    id_path("id", &id)?;
    let c = st.store.consignment(&id)?.ok_or_else(|| StoreError::ConsignmentNotFound(id.clone()))?;
    let o = st.store.order(&c.order)?.ok_or_else(|| StoreError::OrderNotFound(c.order.clone()))?;
    let to = &o.order.ship_to;
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Packing slip " (c.id) }
                style { "body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse;width:100%}\
                         th,td{border:1px solid #444;padding:4px 8px;text-align:left}\
                         @media print{@page{margin:1cm}}" }
            }
            body {
                h1 { "Packing slip" }
                p { "Order " strong { (o.id) } " · reference " (o.order.external_ref) " · consignment " (c.id) }
                h2 { "Ship to" }
                address {
                    (to.name) br; (to.line1) br;
                    @if let Some(l2) = &to.line2 { (l2) br; }
                    (to.postcode) " " (to.city) br; (to.country)
                }
                h2 { "Contents" }
                table {
                    thead { tr { th { "SKU" } th { "Ordered" } th { "Packed" } } }
                    tbody {
                        @for l in &o.lines {
                            tr { td { (l.sku) } td { (l.qty) } td { (l.picked.unwrap_or(0)) } }
                        }
                    }
                }
                h2 { "Parcels" }
                table {
                    thead { tr { th { "#" } th { "Weight (g)" } th { "L × W × H (mm)" } } }
                    tbody {
                        @for (i, p) in c.parcels.iter().enumerate() {
                            tr { td { (i + 1) } td { (p.weight_g) }
                                 td { (p.length_mm) " × " (p.width_mm) " × " (p.height_mm) } }
                        }
                    }
                }
                p { "Carrier " (c.carrier) " · service " (c.service) " · state " (c.state.as_str())
                    @if let Some(t) = &c.tracking { " · tracking " strong { (t) } } }
            }
        }
    };
    Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page.into_string()).into_response())
}
