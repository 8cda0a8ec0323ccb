//! Dispatch routes: pack (a parcel count, or the parcels of a consignment for the site's carrier), the
//! consignments and their labels (`/v1/consignments[/{id}[/label]]`), ship and deliver.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use oms_protocol::domain::ValidationError;

use super::orders::order_response;
use super::{AppState, PAGE_DEFAULT, exec, optional_body, order_path, text};
use crate::store::{
    ConsignmentState, NewConsignment, OrderRecord, PARCEL_SIDE_MM_MAX, PARCEL_WEIGHT_G_MAX, PARCELS_MAX, Parcel,
    StoreError, cmd,
};
use oms_service::audit::Actor;
use oms_service::{JsonBody, Problem, RawBody};

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct PackBody {
    parcels: Option<PackParcels>,
    service: Option<String>,
}

/// `parcels` of a pack: a count (no consignment; staff ship by hand) or the parcels themselves (a
/// consignment for the site's carrier).
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
enum PackParcels {
    Count(u32),
    List(Vec<Parcel>),
}

/// The consignment a pack with a list of parcels asks for, checked against the limits and the carrier.
fn new_consignment(
    carrier: Option<&crate::carrier::CarrierConfig>,
    parcels: Vec<Parcel>,
    service: Option<String>,
) -> Result<NewConsignment, Problem> {
    let Some(carrier) = carrier else {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "no_carrier",
            "this site has no [carrier] configured: pack with a parcel count and ship with the carrier's tracking",
        ));
    };
    if parcels.is_empty() || parcels.len() > PARCELS_MAX {
        return Err(ValidationError::new(
            "invalid_parcels",
            "parcels",
            format!("must list 1 to {PARCELS_MAX} parcels"),
        )
        .into());
    }
    for (i, p) in parcels.iter().enumerate() {
        if !(1..=PARCEL_WEIGHT_G_MAX).contains(&p.weight_g) {
            let msg = format!("parcel {i}: weight_g must be 1 to {PARCEL_WEIGHT_G_MAX}");
            return Err(ValidationError::new("invalid_parcels", "parcels", msg).into());
        }
        if [p.length_mm, p.width_mm, p.height_mm].iter().any(|d| !(1..=PARCEL_SIDE_MM_MAX).contains(d)) {
            let msg = format!("parcel {i}: length_mm, width_mm and height_mm must be 1 to {PARCEL_SIDE_MM_MAX}");
            return Err(ValidationError::new("invalid_parcels", "parcels", msg).into());
        }
    }
    let service = service.unwrap_or_else(|| carrier.default_service.clone());
    if !carrier.offers(&service) {
        return Err(ValidationError::new(
            "unknown_service",
            "service",
            format!("{} does not offer {service:?} at this site", carrier.name()),
        )
        .into());
    }
    Ok(NewConsignment { carrier: carrier.name().to_owned(), service, parcels })
}

#[utoipa::path(post, path = "/v1/orders/{id}/pack", tag = "orders", params(("id" = String, Path, description = "The order id")),
    request_body = Option<PackBody>,
    responses((status = 200, description = "The order after the change", body = OrderRecord)))]
pub(super) async fn pack(
    State(st): State<AppState>,
    actor: Actor,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let order = order_path(&id)?;
    let b: PackBody = optional_body(&body)?;
    let (parcels, consignment) = match b.parcels {
        Some(PackParcels::List(list)) => {
            let c = new_consignment(st.carrier.as_deref(), list, b.service)?;
            (u32::try_from(c.parcels.len()).unwrap_or(u32::MAX), Some(c))
        }
        Some(PackParcels::Count(n)) if b.service.is_none() => (n, None),
        None if b.service.is_none() => (1, None),
        _ => {
            return Err(ValidationError::new("invalid_parcels", "parcels", "a service needs the parcels listed").into());
        }
    };
    if !(1..=1000).contains(&parcels) {
        return Err(ValidationError::new("invalid_quantity", "parcels", "must be 1 to 1000").into());
    }
    order_response(
        exec(&st, &actor, Some(order.to_string()), cmd::Pack { order, parcels, consignment }).await?,
        StatusCode::OK,
        false,
    )
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConsignmentQuery {
    state: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/consignments?state=&after=&limit=`: a page of consignments, and how many await a label and
/// since when.
#[utoipa::path(get, path = "/v1/consignments", tag = "consignments",
    params(("state" = Option<String>, Query, description = "awaiting_label, labelled, manifested, collected, label_failed, void_pending or voided"),
        ("after" = Option<String>, Query, description = "Continue after this consignment id"),
        ("limit" = Option<u32>, Query, description = "Page size")),
    responses((status = 200, description = "A page of consignments, those awaiting a label, counts by state and of labels", body = ConsignmentPage)))]
pub(super) async fn list_consignments(State(st): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, Problem> {
    let q: ConsignmentQuery = serde_urlencoded::from_str(q.as_deref().unwrap_or(""))
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "invalid_query", format!("bad query string: {e}")))?;
    let state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(ConsignmentState::parse(s).ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("state {s:?} is not one of awaiting_label, labelled, manifested, collected, label_failed, void_pending, voided"),
            )
        })?),
    };
    let limit = q.limit.unwrap_or(PAGE_DEFAULT).max(1);
    let items = st.store.consignments(state, q.after.as_deref(), limit)?;
    let next = if items.len() >= limit.min(st.store.page_max()) { items.last().map(|c| c.id.clone()) } else { None };
    let awaiting = st.store.awaiting_label(st.store.page_max())?;
    let all = st.store.consignment_counts()?;
    let (labels_stored, labels_found) = (all.labels_stored, all.labels_found);
    let counts = all.by_state.into_iter().map(|(s, n)| (s.as_str(), n)).collect();
    Ok(Json(ConsignmentPage { items, next, awaiting_label: awaiting, counts, labels_stored, labels_found })
        .into_response())
}

/// A page of `GET /v1/consignments`.
#[derive(Serialize, ToSchema)]
struct ConsignmentPage {
    /// The consignments, by id.
    items: Vec<crate::store::Consignment>,
    /// The id to continue after, or `null` on the last page.
    next: Option<String>,
    /// How many await a label, and since when the oldest.
    awaiting_label: crate::store::AwaitingLabel,
    /// Consignments per state.
    counts: std::collections::BTreeMap<&'static str, u64>,
    /// Labels stored.
    labels_stored: u64,
    /// Of those, found by a lookup rather than bought.
    labels_found: u64,
}

/// `GET /v1/consignments/{id}`.
#[utoipa::path(get, path = "/v1/consignments/{id}", tag = "consignments", params(("id" = String, Path, description = "The consignment id (`C-<order>`)")),
    responses((status = 200, description = "The consignment: parcels, service, state, label attempts", body = crate::store::Consignment)))]
pub(super) async fn get_consignment(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response, Problem> {
    let c = st.store.consignment(&id)?.ok_or(StoreError::ConsignmentNotFound(id))?;
    Ok(Json(c).into_response())
}

/// `GET /v1/consignments/{id}/label`: the label document as the carrier returned it.
#[utoipa::path(get, path = "/v1/consignments/{id}/label", tag = "consignments", params(("id" = String, Path, description = "The consignment id")),
    responses((status = 200, description = "The label (PDF, ZPL or text, as the carrier returned it)", content_type = "application/octet-stream", body = String)))]
pub(crate) async fn get_label(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response, Problem> {
    let c = st.store.consignment(&id)?.ok_or_else(|| StoreError::ConsignmentNotFound(id.clone()))?;
    let Some(doc) = st.store.label(&id)? else {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "label_not_ready",
            format!("consignment {id} is {}; its label is not bought yet", c.state.as_str()),
        )
        .with("state", c.state.as_str()));
    };
    let ct = HeaderValue::from_str(&doc.content_type).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    Ok(([(header::CONTENT_TYPE, ct)], doc.body).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ShipBody {
    carrier: String,
    tracking: String,
}

#[utoipa::path(post, path = "/v1/orders/{id}/ship", tag = "orders", params(("id" = String, Path, description = "The order id")),
    request_body(content = ShipBody, example = json!({"carrier": "DHL", "tracking": "JD014600006281234567"})),
    responses((status = 200, description = "The order, shipped", body = OrderRecord)))]
pub(super) async fn ship(
    State(st): State<AppState>,
    actor: Actor,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<ShipBody>,
) -> Result<Response, Problem> {
    let order = order_path(&id)?;
    text("carrier", &b.carrier, true)?;
    text("tracking", &b.tracking, true)?;
    let record =
        exec(&st, &actor, Some(order.to_string()), cmd::Ship { order, carrier: b.carrier, tracking: b.tracking })
            .await?;
    order_response(record, StatusCode::OK, false)
}

#[utoipa::path(post, path = "/v1/orders/{id}/deliver", tag = "orders", params(("id" = String, Path, description = "The order id")),
    responses((status = 200, description = "The order after the change", body = OrderRecord)))]
pub(super) async fn deliver(
    State(st): State<AppState>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let order = order_path(&id)?;
    order_response(exec(&st, &actor, Some(order.to_string()), cmd::Deliver { order }).await?, StatusCode::OK, false)
}
