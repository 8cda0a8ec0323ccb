//! Order routes: create, read and list (`/v1/orders[/{id}]`, a channel key seeing only its own channel's),
//! picks, cancel, reject and re-accept, returns and refunds; and the pick waves (`/v1/waves[/{id}]`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use oms_protocol::domain::{Disposition, FulfillmentState, OrderId, Sku, ValidationError};

use super::{AppState, PageQuery, Q, exec, optional_body, order_path, qty_u32, text};
use crate::store::{OrderRecord, PickConfirmation, ReturnLine, StoreError, cmd};
use oms_service::audit::Actor;
use oms_service::auth::Principal;
use oms_service::request::order_request;
use oms_service::{JsonBody, Problem, RawBody};

/// An order as the answer to a write; `replayed` adds `idempotent-replayed: true`.
pub(super) fn order_response(record: OrderRecord, status: StatusCode, replayed: bool) -> Result<Response, Problem> {
    let mut resp = (status, Json(record)).into_response();
    if replayed {
        resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

#[utoipa::path(post, path = "/v1/orders", tag = "orders",
    params(("Idempotency-Key" = String, Header, description = "Unique per order, reused on retries (1 to 128 visible ASCII characters)")),
    request_body(content = oms_protocol::domain::OrderDraft, example = oms_service::openapi::order_example),
    responses((status = 201, description = "Accepted and reserved", body = OrderRecord, example = order_example),
        (status = 200, description = "A retry with the same key and body: the order it created (`idempotent-replayed: true`)", body = OrderRecord)))]
pub(super) async fn create_order(
    State(st): State<AppState>,
    actor: Actor,
    caller: Principal,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let (key, draft) = order_request(&headers, &body)?;
    if let Some(own) = caller.confined_to()
        && *own != draft.channel
    {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("key {:?} sells for channel {own}; it may not create orders for {}", caller.name, draft.channel),
        ));
    }
    let new = exec(&st, &actor, None, cmd::CreateOrder { key, draft }).await?;
    order_response(new.record, StatusCode::CREATED, !new.created)
}

/// Whether `caller` may see `order`: a channel key only its own channel's orders.
fn visible_to(caller: &Principal, order: &OrderRecord) -> bool {
    caller.confined_to().is_none_or(|own| *own == order.order.channel)
}

/// Refuses an order a channel key may not touch as if it did not exist, so ids of other channels' orders
/// cannot be probed.
fn check_visible(st: &AppState, caller: &Principal, id: &OrderId) -> Result<(), Problem> {
    if caller.confined_to().is_none() {
        return Ok(());
    }
    match st.store.order(id)? {
        Some(o) if visible_to(caller, &o) => Ok(()),
        _ => Err(StoreError::OrderNotFound(id.clone()).into()),
    }
}

/// One order; a frozen one also shows `frozen_at_ms` (it takes no more changes).
#[utoipa::path(get, path = "/v1/orders/{id}", tag = "orders", params(("id" = String, Path, description = "The order id")),
    responses((status = 200, description = "The order (with `frozen_at_ms` once the site froze it)", body = OrderView, example = order_example)))]
pub(super) async fn get_order(
    State(st): State<AppState>,
    caller: Principal,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let id = order_path(&id)?;
    let found = st.store.order_and_frozen_at(&id)?.filter(|(r, _)| visible_to(&caller, r));
    match found {
        Some((record, frozen_at_ms)) => Ok(Json(OrderView { record, frozen_at_ms }).into_response()),
        None => Err(StoreError::OrderNotFound(id).into()),
    }
}

/// `GET /v1/orders/{id}`: the order, and when the site froze it once it did.
#[derive(Serialize, ToSchema)]
struct OrderView {
    /// The order.
    #[serde(flatten)]
    record: OrderRecord,
    /// When the finished order was frozen (it takes no more changes), ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    frozen_at_ms: Option<u64>,
}

/// The example answer of the document's `POST /v1/orders` and `GET /v1/orders/{id}`: the example order
/// body, accepted and reserved.
fn order_example() -> serde_json::Value {
    serde_json::json!({
        "id": "wh-berlin-17", "site": "wh-berlin", "status": "accepted",
        "order": oms_service::openapi::order_example(),
        "lines": [{"sku": "TSHIRT-RED-M", "qty": 2, "picked": null, "shipped": 0, "returned": 0}],
        "wave": null, "parcels": null, "shipment": null, "returns": [],
        "timeline": [{"at_ms": 1_767_225_600_000u64, "status": "accepted", "note": "accepted and reserved"}],
        "created_at_ms": 1_767_225_600_000u64
    })
}

/// A page of orders.
#[derive(Serialize, ToSchema)]
struct OrdersPage {
    /// Orders by id (a channel key's only its channel's).
    orders: Vec<OrderRecord>,
    /// `after` of the next page; null when this page was the last.
    next_after: Option<OrderId>,
}

/// Orders by id; a channel key sees only its own channel's, so its pages may be short (even empty) and still
/// not be the last: follow `next_after` until it is null.
#[utoipa::path(get, path = "/v1/orders", tag = "orders", params(PageQuery),
    responses((status = 200, description = "A page of orders by id", body = OrdersPage)))]
pub(super) async fn list_orders(State(st): State<AppState>, caller: Principal, Q(q): Q) -> Result<Response, Problem> {
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(FulfillmentState::parse(s).ok_or_else(|| {
            let all: Vec<&str> = FulfillmentState::ALL.iter().map(|s| s.as_str()).collect();
            Problem::new(StatusCode::BAD_REQUEST, "invalid_query", format!("status must be one of {}", all.join(", ")))
        })?),
    };
    let mut orders = st.store.orders(status, q.after.as_deref(), q.limit())?;
    let next_after = orders.last().map(|o| o.id.clone());
    orders.retain(|o| visible_to(&caller, o));
    Ok(Json(OrdersPage { orders, next_after }).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PicksBody {
    lines: Vec<PickConfirmation>,
    /// Why a line was picked short, for the timeline.
    reason: Option<String>,
}

#[utoipa::path(post, path = "/v1/orders/{id}/picks", tag = "orders", params(("id" = String, Path, description = "The order id")),
    request_body = PicksBody,
    responses((status = 200, description = "The order after the change", body = OrderRecord)))]
pub(super) async fn confirm_picks(
    State(st): State<AppState>,
    actor: Actor,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<PicksBody>,
) -> Result<Response, Problem> {
    let order = order_path(&id)?;
    if b.lines.len() > oms_protocol::domain::ORDER_LINES_MAX {
        return Err(ValidationError::new("too_many_lines", "lines", "too many lines").into());
    }
    if let Some(r) = &b.reason {
        text("reason", r, false)?;
    }
    order_response(
        exec(&st, &actor, Some(order.to_string()), cmd::ConfirmPicks { order, lines: b.lines, reason: b.reason })
            .await?,
        StatusCode::OK,
        false,
    )
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    reason: Option<String>,
}

/// The optional `{"reason"}` body of cancel and reject, checked as free text; `default` when absent.
fn reason_body(body: &Bytes, default: &str) -> Result<String, Problem> {
    let b: CancelBody = optional_body(body)?;
    let reason = b.reason.unwrap_or_else(|| default.into());
    text("reason", &reason, false)?;
    Ok(reason)
}

#[utoipa::path(post, path = "/v1/orders/{id}/cancel", tag = "orders", params(("id" = String, Path, description = "The order id")),
    request_body = Option<CancelBody>,
    responses((status = 200, description = "The order after the change", body = OrderRecord)))]
pub(super) async fn cancel(
    State(st): State<AppState>,
    actor: Actor,
    caller: Principal,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let order = order_path(&id)?;
    check_visible(&st, &caller, &order)?;
    let reason = reason_body(&body, "requested at the site")?;
    order_response(
        exec(&st, &actor, Some(order.to_string()), cmd::Cancel { order, reason }).await?,
        StatusCode::OK,
        false,
    )
}

#[utoipa::path(post, path = "/v1/orders/{id}/reject", tag = "orders", params(("id" = String, Path, description = "The order id")),
    request_body = Option<CancelBody>,
    responses((status = 200, description = "The order after the change", body = OrderRecord)))]
pub(super) async fn reject_assignment(
    State(st): State<AppState>,
    actor: Actor,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let order = order_path(&id)?;
    let reason = reason_body(&body, "declined at the site")?;
    order_response(
        exec(&st, &actor, Some(order.to_string()), cmd::RejectAssignment { order, reason }).await?,
        StatusCode::OK,
        false,
    )
}

#[utoipa::path(post, path = "/v1/orders/{id}/accept", tag = "orders", params(("id" = String, Path, description = "The order id")),
    responses((status = 200, description = "The order after the change", body = OrderRecord)))]
pub(super) async fn reaccept(
    State(st): State<AppState>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let order = order_path(&id)?;
    order_response(exec(&st, &actor, Some(order.to_string()), cmd::Reaccept { order }).await?, StatusCode::OK, false)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReturnBody {
    lines: Vec<ReturnLineBody>,
    /// Restock or scrap, for every line that does not say.
    #[serde(default)]
    disposition: Option<Disposition>,
    /// The return (RMA) the hub approved, if the units come back against one.
    #[serde(default)]
    rma: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ReturnLineBody {
    sku: Sku,
    qty: i64,
    /// Restock or scrap this line (default: the body's `disposition`).
    #[serde(default)]
    disposition: Option<Disposition>,
}

#[utoipa::path(post, path = "/v1/orders/{id}/returns", tag = "orders", params(("id" = String, Path, description = "The order id")),
    request_body = ReturnBody,
    responses((status = 201, description = "The order after the change", body = OrderRecord)))]
pub(super) async fn receive_return(
    State(st): State<AppState>,
    actor: Actor,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<ReturnBody>,
) -> Result<Response, Problem> {
    let order = order_path(&id)?;
    if b.lines.len() > oms_protocol::domain::ORDER_LINES_MAX {
        return Err(ValidationError::new("too_many_lines", "lines", "too many lines").into());
    }
    let mut lines = Vec::with_capacity(b.lines.len());
    for (i, l) in b.lines.into_iter().enumerate() {
        let disposition = l.disposition.or(b.disposition).ok_or_else(|| {
            ValidationError::new(
                "missing_field",
                format!("lines[{i}].disposition"),
                "restock or scrap, per line or for all",
            )
        })?;
        lines.push((ReturnLine { sku: l.sku, qty: qty_u32(&format!("lines[{i}].qty"), l.qty)? }, disposition));
    }
    if let Some(r) = &b.rma
        && (r.is_empty() || r.len() > 64 || r.chars().any(|c| c.is_control() || c.is_whitespace()))
    {
        return Err(ValidationError::new("invalid_rma", "rma", "an RMA id: 1 to 64 bytes, no spaces").into());
    }
    let record = exec(
        &st,
        &actor,
        Some(order.to_string()),
        cmd::ReceiveReturn { order, lines, rma: b.rma, expect_received: None },
    )
    .await?;
    // A return receipt takes no idempotency key, so it is never a replay (before the store's typed replies it
    // was answered with `idempotent-replayed: true` by mistake).
    order_response(record, StatusCode::CREATED, false)
}

#[utoipa::path(post, path = "/v1/orders/{id}/returns/{n}/refund", tag = "orders", params(("id" = String, Path, description = "The order id"), ("n" = u32, Path, description = "The return number")),
    responses((status = 200, description = "The order after the change", body = OrderRecord)))]
pub(super) async fn refund(
    State(st): State<AppState>,
    actor: Actor,
    caller: Principal,
    Path((id, n)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let order = order_path(&id)?;
    check_visible(&st, &caller, &order)?;
    let return_id = n
        .parse::<u32>()
        .map_err(|_| Problem::new(StatusCode::NOT_FOUND, "return_not_found", format!("return {n:?} does not exist")))?;
    order_response(
        exec(&st, &actor, Some(order.to_string()), cmd::Refund { order, return_id }).await?,
        StatusCode::OK,
        false,
    )
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct WaveBody {
    max_orders: Option<usize>,
}

#[utoipa::path(post, path = "/v1/waves", tag = "waves", request_body = Option<WaveBody>,
    responses((status = 201, description = "The wave", body = crate::store::Wave)))]
pub(super) async fn create_wave(
    State(st): State<AppState>,
    actor: Actor,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let b: WaveBody = optional_body(&body)?;
    let orders_max = b.max_orders.unwrap_or(st.store.limits().wave_orders_max);
    if orders_max == 0 || orders_max > st.store.limits().wave_orders_max {
        return Err(ValidationError::new(
            "invalid_quantity",
            "max_orders",
            format!("must be 1 to {}", st.store.limits().wave_orders_max),
        )
        .into());
    }
    let w = exec(&st, &actor, None, cmd::CreateWave { orders_max }).await?;
    Ok((StatusCode::CREATED, Json(w)).into_response())
}

#[utoipa::path(get, path = "/v1/waves/{id}", tag = "waves", params(("id" = u64, Path, description = "The wave number")),
    responses((status = 200, description = "The wave", body = crate::store::Wave)))]
pub(super) async fn get_wave(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response, Problem> {
    let id = id.parse::<u64>().map_err(|_| {
        Problem::new(StatusCode::NOT_FOUND, "wave_not_found", format!("pick wave {id:?} does not exist"))
    })?;
    match st.store.wave(id)? {
        Some(w) => Ok(Json(w).into_response()),
        None => Err(StoreError::WaveNotFound(id).into()),
    }
}
