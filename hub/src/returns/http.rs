//! HTTP for returns (policy in [`crate::api::policy`]):
//!
//! - `POST /v1/orders/{id}/returns` `{"lines": [{"sku", "qty", "reason"}], "fulfillment"?}` → `201` the RMA
//!   (channel for its own orders, service for any).
//! - `GET /v1/returns?state=&after=&limit=`, `GET /v1/returns/{rma}`: RMAs (a channel key sees its own).
//! - `POST /v1/returns/{rma}/approve | decline | cancel | refund` (service; `decline` needs `{"reason"}`,
//!   `cancel` takes one): the RMA after the step. `refund` refunds a held RMA (or what a partly received one
//!   received).
//! - `GET /v1/returns/summary`: RMAs per state, units, refunds and the mismatch counter (must be 0).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use oms_protocol::domain::{FulfillmentState, OrderId};
use oms_protocol::schema;
use oms_service::auth::Principal;
use oms_service::{Problem, RawBody, now_ms};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ReturnRequest, ReturnsError, Rma, RmaState, Shipped};
use crate::orders::{Caller, blocking};
use crate::server::Hub;

impl From<ReturnsError> for Problem {
    fn from(e: ReturnsError) -> Problem {
        let code = e.code();
        let detail = e.to_string();
        match e {
            ReturnsError::Invalid(v) => v.into(),
            ReturnsError::OrderNotFound(_) | ReturnsError::RmaNotFound(_) => {
                Problem::new(StatusCode::NOT_FOUND, code, detail)
            }
            ReturnsError::NotReturnable(sku) => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail).with("sku", sku)
            }
            ReturnsError::SpansFulfillments => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail),
            ReturnsError::OverReturn { sku, requested, returnable } => Problem::new(StatusCode::CONFLICT, code, detail)
                .with("sku", sku)
                .with("requested", requested)
                .with("returnable", returnable),
            ReturnsError::WindowClosed { closed_at_ms, .. } => {
                Problem::new(StatusCode::CONFLICT, code, detail).with("closed_at_ms", closed_at_ms)
            }
            ReturnsError::WrongState { state, .. } => {
                Problem::new(StatusCode::CONFLICT, code, detail).with("state", state.as_str())
            }
            ReturnsError::Limit(_) => Problem::new(StatusCode::CONFLICT, code, detail),
            ReturnsError::Money(m) => m.into(),
            ReturnsError::Storage(_) => {
                tracing::error!(error = %detail, "returns storage failure");
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
            }
            ReturnsError::Corrupt { .. } => {
                tracing::error!(error = %detail, "returns corrupt record");
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR, code, detail)
            }
        }
    }
}

/// The routes of this module.
pub fn router(hub: Arc<Hub>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(request))
        .routes(routes!(list))
        .routes(routes!(summary))
        .routes(routes!(one))
        .routes(routes!(approve))
        .routes(routes!(decline))
        .routes(routes!(cancel))
        .routes(routes!(refund))
        .with_state(hub)
}

/// What the order's live fulfillments shipped, as their sites last reported it.
pub fn shipped_of(hub: &Hub, order: &crate::intake::HubOrder) -> Vec<Shipped> {
    let docs = hub.docs.lock();
    let mut out = Vec::new();
    for f in order.fulfillments.iter().filter(|f| f.released.is_none()) {
        let view =
            schema::order_doc(&f.id).and_then(|n| docs.get(&n).and_then(|d| schema::read_order(&d, n.as_str()).ok()));
        let Some(p) = view.and_then(|v| v.progress) else { continue };
        if !matches!(p.status, FulfillmentState::Shipped | FulfillmentState::Delivered) {
            continue;
        }
        let (mut units, mut returned) = (BTreeMap::new(), BTreeMap::new());
        for l in &p.lines {
            *units.entry(l.sku.to_string()).or_insert(0) += u64::from(l.shipped);
            *returned.entry(l.sku.to_string()).or_insert(0) += u64::from(l.returned);
        }
        let at = |s: FulfillmentState| p.timeline.iter().find(|t| t.status == s).map(|t| t.at_ms);
        out.push(Shipped {
            id: f.id.to_string(),
            site: f.site.to_string(),
            units,
            returned,
            shipped_at_ms: at(FulfillmentState::Shipped),
            delivered_at_ms: at(FulfillmentState::Delivered),
        });
    }
    out
}

#[utoipa::path(post, path = "/v1/orders/{id}/returns", tag = "returns", params(("id" = String, Path, description = "The hub order id")),
    request_body = ReturnRequest,
    responses((status = 201, description = "The RMA (`requested`, or `approved` under `[returns] auto_approve`)", body = Rma)))]
async fn request(
    State(hub): State<Arc<Hub>>,
    principal: Principal,
    Caller(actor): Caller,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let id = OrderId::parse(&id).map_err(Problem::from)?;
    let req: ReturnRequest = oms_service::parse_json(&body)?;
    let confined = principal.confined_to().cloned();
    let h = hub.clone();
    let rma = blocking(move || -> Result<Rma, ReturnsError> {
        let order = h
            .intake
            .order(id.as_str())?
            .filter(|o| confined.as_ref().is_none_or(|c| &o.draft.channel == c))
            .ok_or_else(|| ReturnsError::OrderNotFound(id.to_string()))?;
        let shipped = shipped_of(&h, &order);
        h.returns.request(h.intake.db(), id.as_str(), &order.draft.channel, &shipped, &req, &actor, now_ms())
    })
    .await?;
    super::sites::publish(&hub, &rma);
    Ok((StatusCode::CREATED, Json(rma)).into_response())
}

fn bad_query(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "invalid_query", detail)
}

#[utoipa::path(get, path = "/v1/returns", tag = "returns",
    params(("state" = Option<String>, Query, description = "Only RMAs in this state"), ("after" = Option<String>, Query, description = "RMA id to continue after"), ("limit" = Option<u64>, Query, description = "Page size (capped)")),
    responses((status = 200, description = "A page of RMAs", body = RmaPage)))]
async fn list(
    State(hub): State<Arc<Hub>>,
    principal: Principal,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    if let Some(bad) = q.keys().find(|k| !["state", "after", "limit"].contains(&k.as_str())) {
        return Err(bad_query(format!("unknown parameter {bad:?}")));
    }
    let state = match q.get("state") {
        Some(s) => Some(RmaState::parse(s).ok_or_else(|| bad_query(format!("unknown state {s:?}")))?),
        None => None,
    };
    let limit = match q.get("limit") {
        Some(l) => l.parse::<usize>().map_err(|_| bad_query("limit must be a whole number"))?,
        None => super::RMAS_PAGE_MAX,
    };
    let after = q.get("after").cloned();
    let confined = principal.confined_to().cloned();
    let h = hub.clone();
    let (rmas, next) =
        blocking(move || h.returns.list(h.intake.db(), state, confined.as_ref(), after.as_deref(), limit)).await?;
    Ok(Json(RmaPage { rmas, next_after: next }).into_response())
}

/// A page of `GET /v1/returns`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RmaPage {
    /// The RMAs, by id.
    pub rmas: Vec<super::Rma>,
    /// The id to continue after, or `null` on the last page.
    pub next_after: Option<String>,
}

#[utoipa::path(get, path = "/v1/returns/summary", tag = "returns",
    responses((status = 200, description = "RMAs per state, units and refunds", body = super::ReturnsSummary)))]
async fn summary(State(hub): State<Arc<Hub>>) -> Result<Response, Problem> {
    let h = hub.clone();
    let s = blocking(move || h.returns.summary(&h.money, h.intake.db())).await?;
    Ok(Json(s).into_response())
}

/// The RMA `id` if `principal` may see it.
async fn visible(hub: &Arc<Hub>, principal: &Principal, id: String) -> Result<Rma, Problem> {
    let h = hub.clone();
    let n = id.clone();
    let found = blocking(move || h.returns.rma(h.intake.db(), &n)).await?;
    found
        .filter(|r| principal.confined_to().is_none_or(|c| c == &r.channel))
        .ok_or_else(|| ReturnsError::RmaNotFound(id).into())
}

#[utoipa::path(get, path = "/v1/returns/{rma}", tag = "returns", params(("rma" = String, Path, description = "The RMA id")),
    responses((status = 200, description = "The RMA", body = Rma)))]
async fn one(State(hub): State<Arc<Hub>>, principal: Principal, Path(id): Path<String>) -> Result<Response, Problem> {
    Ok(Json(visible(&hub, &principal, id).await?).into_response())
}

/// The optional `{"reason"}` of a step.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepBody {
    reason: Option<String>,
}

async fn step(
    hub: Arc<Hub>,
    actor: oms_service::audit::Actor,
    id: String,
    action: &'static str,
    body: &[u8],
) -> Result<Response, Problem> {
    let b: StepBody =
        if body.iter().all(u8::is_ascii_whitespace) { StepBody::default() } else { oms_service::parse_json(body)? };
    let h = hub.clone();
    let rma = blocking(move || h.returns.step(h.intake.db(), &id, action, b.reason, &actor, now_ms())).await?;
    super::sites::publish(&hub, &rma);
    Ok(Json(rma).into_response())
}

#[utoipa::path(post, path = "/v1/returns/{rma}/approve", tag = "returns", params(("rma" = String, Path, description = "The RMA id")),
    responses((status = 200, description = "The RMA, approved; published to its site", body = Rma)))]
async fn approve(
    State(hub): State<Arc<Hub>>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    RawBody(b): RawBody,
) -> Result<Response, Problem> {
    step(hub, actor, id, "approve", &b).await
}

#[utoipa::path(post, path = "/v1/returns/{rma}/decline", tag = "returns", params(("rma" = String, Path, description = "The RMA id")),
    request_body(content = Object, description = "`{\"reason\"}` (required)"),
    responses((status = 200, description = "The RMA, declined", body = Rma)))]
async fn decline(
    State(hub): State<Arc<Hub>>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    RawBody(b): RawBody,
) -> Result<Response, Problem> {
    step(hub, actor, id, "decline", &b).await
}

#[utoipa::path(post, path = "/v1/returns/{rma}/cancel", tag = "returns", params(("rma" = String, Path, description = "The RMA id")),
    request_body(content = Option<Object>, description = "Optional `{\"reason\"}`"),
    responses((status = 200, description = "The RMA, cancelled (only while nothing arrived)", body = Rma)))]
async fn cancel(
    State(hub): State<Arc<Hub>>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    RawBody(b): RawBody,
) -> Result<Response, Problem> {
    step(hub, actor, id, "cancel", &b).await
}

#[utoipa::path(post, path = "/v1/returns/{rma}/refund", tag = "returns", params(("rma" = String, Path, description = "The RMA id")),
    responses((status = 200, description = "The RMA, refunded: a credit note for the units received, the refund through the outbox", body = Rma)))]
async fn refund(
    State(hub): State<Arc<Hub>>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let h = hub.clone();
    let rma = blocking(move || h.returns.refund(&h.money, h.intake.db(), &id, true, &actor, now_ms())).await?;
    super::sites::publish(&hub, &rma);
    Ok(Json(rma).into_response())
}
