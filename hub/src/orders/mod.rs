//! Customer orders at the hub over HTTP, and the watcher that keeps routing going.
//!
//! - `POST /v1/orders` (with `Idempotency-Key`): validate, queue for the intake's writer (`503 overloaded`
//!   when its queue is full), which routes within the hub's escrowed rights and commits concurrent orders in
//!   one transaction (see [`crate::intake`]); then write the fulfillment documents and answer `201` with the
//!   order, its `tracking_token` and `tracking_url`
//!   (a replay answers the original with `idempotent-replayed: true`). An order nothing can be placed for is
//!   `201` with status `backordered` (policy `backorder`/`hold`: it is routed again as rights arrive) or
//!   `409 cannot_fill` (policy `reject`, nothing stored). A channel key may only send orders of its own
//!   channel (`403 forbidden` otherwise, nothing stored); idempotency keys are scoped to the order's channel.
//! - `GET /v1/orders/{id}` for a hub order: status across its fulfillment orders, per-line figures and one
//!   timeline merged from every site.
//! - `GET /v1/orders/{id}/routing`: every routing decision with candidates, exclusions and scores.
//! - `POST /v1/orders/{id}/cancel` `{"reason"?}`: drops units not placed yet, asks each site to cancel its
//!   part, and says per line what was cancelled, what is being cancelled (the site confirms) and what could
//!   not be. Customer service (`service` keys) must give a reason (`403 reason_required` otherwise). With
//!   `"lines": [{"sku", "qty"}]` only those units, among the ones still waiting for stock (placed nowhere, so
//!   holding no reservation and no escrow rights): cancelled at once, the order goes on; more than wait is
//!   `409 units_not_waiting`, changing nothing. Units placed at a site are cancelled with the whole order
//!   only (a site cancels a fulfillment whole).
//! - `GET /v1/track/{token}` (open, rate limited per client IP): the customer's view of the order behind a
//!   tracking token: status, lines, a timeline and the carriers' tracking numbers, nothing internal (no
//!   sites, no routing, no address, no other order). An unknown token is `404 tracking_not_found`.
//!
//! A channel key sees only the hub orders of its own channel: any other id, a node's own orders and the
//! fulfillment orders included, is `404 order_not_found` exactly as an id that does not exist, so ids cannot
//! be probed. Creates and cancels are written to the audit trail by the intake (see [`crate::intake`]).
//!
//! The watcher wakes when a node changes a document (and once a second), at most every [`WATCH_GAP_MS`]: it
//! merges each site's escrow view into the hub's, re-routes the units of fulfillment orders a site rejected
//! or cancelled (never to that site in the same round), retries orders with units still waiting, and notes
//! the fulfillments their sites shipped ([`crate::intake::Intake::finished`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use oms_protocol::domain::{Channel, FulfillmentState, NodeId, OrderId, TEXT_BYTES_MAX, ValidationError};
use oms_protocol::escrow::EscrowCounter;
use oms_protocol::schema::{self, DocKind, HUB_ORIGIN};
use oms_protocol::shipping;
use oms_protocol::wire::DocId;
use oms_service::audit::Actor;
use oms_service::auth::{Principal, Role};
use oms_service::now_ms;
use oms_service::{Problem, RawBody};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::events::watch::StockRead;
use crate::intake::{Effects, HubOrder, IntakeError, NewFulfillment, RETRY_BATCH_MAX, SiteFacts};
use crate::server::Hub;

mod effects;
mod views;
mod watch;

use effects::replay_effects;
pub use effects::*;
pub use views::*;
use views::{FoState, fo_state, order_view, order_view_with};
use watch::settle_if_final;
pub use watch::*;

/// Most sites considered by routing.
pub const SITES_MAX: usize = 10_000;
/// Period of the watcher's retry pass.
pub const WATCH_TICK_MS: u64 = 1_000;

/// The routes of this module.
pub fn router(hub: Arc<Hub>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(search))
        .routes(routes!(routing))
        .routes(routes!(cancel))
        .routes(routes!(cancel_at_site))
        .routes(routes!(route_now))
        .routes(routes!(track))
        .with_state(hub)
}

/// The admitted caller as the audit trail names it, which [`oms_service::auth::authorize`] put on the
/// request (a route served without it, a bug, refuses rather than records nobody).
#[derive(Debug, Clone)]
pub struct Caller(pub Actor);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        parts.extensions.get::<Actor>().cloned().map(Caller).ok_or_else(|| {
            Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", "send Authorization: Bearer <token>")
        })
    }
}

/// The answer to an order a caller may not see: the same as for one that does not exist.
pub fn not_found(id: &str) -> Problem {
    IntakeError::NotFound(id.to_owned()).into()
}

/// Whether `p` may see (and act on) hub order `o`: a channel key only its own channel's.
fn visible_to(p: &Principal, o: &HubOrder) -> bool {
    p.confined_to().is_none_or(|c| &o.draft.channel == c)
}

impl From<IntakeError> for Problem {
    fn from(e: IntakeError) -> Self {
        let detail = e.to_string();
        let code = e.code();
        match e {
            IntakeError::KeyReused(_) => Problem::new(StatusCode::CONFLICT, code, detail),
            IntakeError::CannotFill(d) => Problem::new(StatusCode::CONFLICT, code, detail).with("routing", d.as_ref()),
            IntakeError::NotFound(_) => Problem::new(StatusCode::NOT_FOUND, code, detail),
            IntakeError::NotWaiting { sku, requested, waiting } => Problem::new(StatusCode::CONFLICT, code, detail)
                .with("sku", sku)
                .with("requested", requested)
                .with("waiting", waiting),
            IntakeError::FulfillmentNotFound { fulfillment, .. } => {
                Problem::new(StatusCode::NOT_FOUND, code, detail).with("fulfillment", fulfillment)
            }
            IntakeError::FulfillmentNotOpen { fulfillment, .. } => {
                Problem::new(StatusCode::CONFLICT, code, detail).with("fulfillment", fulfillment)
            }
            IntakeError::Overloaded | IntakeError::ShuttingDown => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
            }
            IntakeError::Storage(_) => {
                tracing::error!(error = %detail, "intake storage failure");
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
            }
            IntakeError::Corrupt { .. } => {
                tracing::error!(error = %detail, "intake corrupt record");
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR, code, detail)
            }
        }
    }
}

/// Runs `f` (disk I/O, document work under the hub's locks) off the async workers.
pub(crate) async fn blocking<T: Send + 'static, E: Into<Problem> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, Problem> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("intake task failed: {e}")))?
        .map_err(Into::into)
}

/// `POST /v1/orders` (mounted by [`crate::api::router`] beside the listing).
#[utoipa::path(post, path = "/v1/orders", tag = "orders",
    params(("Idempotency-Key" = String, Header, description = "Unique per order, reused on retries (1 to 128 visible ASCII characters)")),
    request_body(content = oms_protocol::domain::OrderDraft, example = oms_service::openapi::order_example),
    responses((status = 201, description = "Taken: the hub order with its routing", body = HubOrderView, example = hub_order_example),
        (status = 200, description = "A retry with the same key and body: the order it created (`idempotent-replayed: true`)", body = HubOrderView)))]
pub async fn create(
    State(hub): State<Arc<Hub>>,
    principal: Principal,
    Caller(actor): Caller,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let (key, draft) = oms_service::request::order_request(&headers, &body)?;
    if let Some(own) = principal.confined_to()
        && own != &draft.channel
    {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("key {:?} sells for channel {own}; this order is for channel {}", principal.name, draft.channel),
        )
        .with("role", principal.role));
    }
    // A payment is authorized before the order is queued: never under the intake's lock or in its
    // transaction. A decline is `402` with nothing reserved and the idempotency key not consumed.
    let payment = match hub.money.payment_request(&body)? {
        Some(req) => {
            let hash = crate::intake::body_hash(&draft)?;
            let mut prepared = hub.money.prepare(&key, &draft, &hash, &req);
            let h = hub.clone();
            let prepared =
                blocking(move || h.money.authorize(h.intake.db(), &mut prepared, now_ms()).map(|()| prepared)).await?;
            Some(prepared)
        }
        None => None,
    };
    // Queued for the intake's writer, which takes concurrent orders in one transaction; answered once the
    // transaction holding this one is committed.
    let placed = match hub.intake.submit_paid(key, draft, actor, payment.clone()).await {
        Ok(p) if !p.created && payment.is_some() => {
            // A replay: the order has its payment already; this request's authorization is settled against it.
            let (h, id) = (hub.clone(), p.order.id.to_string());
            let settled = blocking(move || match &payment {
                Some(prepared) => h.money.settle_replay(h.intake.db(), &id, prepared),
                None => Ok(()),
            })
            .await;
            if let Err(pr) = settled {
                tracing::warn!(detail = %pr.detail, "cannot settle a replay's authorization; the sweep will");
            }
            p
        }
        Ok(p) => p,
        Err(e) => {
            // The intake refused the order: its authorization goes (the sweep does it if this fails).
            if let Some(prepared) = payment {
                let h = hub.clone();
                let released = blocking(move || h.money.release(h.intake.db(), &prepared)).await;
                if let Err(p) = released {
                    tracing::warn!(detail = %p.detail, "cannot void the authorization of a refused order; the sweep will");
                }
            }
            return Err(e.into());
        }
    };
    // The intake's documents thread wrote a new order's documents before answering (`written`). For a
    // replay: the original may have been committed just before a crash that kept its documents from being
    // written; writing them again is a no-op otherwise.
    if !placed.written {
        let h = hub.clone();
        let effects = if placed.created { placed.effects } else { replay_effects(&placed.order) };
        blocking(move || apply_effects(&h, &effects)).await?;
    }
    // A new order's fulfillments were created a moment ago with no progress: its view needs no document.
    let mut view = if placed.created {
        order_view_with(&placed.order, |_| FoState::assigned())
    } else {
        order_view(&hub, &placed.order)
    };
    with_payment(&hub, &mut view, placed.order.id.as_str());
    let mut resp = (StatusCode::CREATED, Json(view)).into_response();
    if !placed.created {
        resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// A customer order the hub took (`hub-<n>`), as opposed to one of its fulfillments (`hub-<n>.<k>`) or a
/// site's own order.
pub(crate) fn is_customer_order(id: &str) -> bool {
    id.starts_with(oms_protocol::domain::HUB_ORDER_PREFIX) && !id.contains('.')
}

fn hub_order_id(id: &str) -> Result<OrderId, Problem> {
    let id = OrderId::parse(id).map_err(Problem::from)?;
    if !is_customer_order(id.as_str()) {
        return Err(Problem::new(StatusCode::NOT_FOUND, "order_not_found", format!("{id} is not a hub order")));
    }
    Ok(id)
}

#[utoipa::path(get, path = "/v1/orders/{id}/routing", tag = "orders", params(("id" = String, Path, description = "The order id")),
    responses((status = 200, description = "Why the order went where it went", body = RoutingExplained)))]
async fn routing(
    State(hub): State<Arc<Hub>>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let id = hub_order_id(&id)?;
    let order = hub.intake.order(id.as_str())?.filter(|o| visible_to(&principal, o));
    let order = order.ok_or_else(|| not_found(id.as_str()))?;
    Ok(Json(RoutingExplained {
        id: order.id,
        policy: hub.intake.policy().clone(),
        fulfillments: order.fulfillments,
        unfilled: order.unfilled,
        decisions: order.decisions,
    })
    .into_response())
}

/// The answer of `GET /v1/orders/{id}/routing`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RoutingExplained {
    /// The order.
    pub id: OrderId,
    /// The routing policy in force.
    pub policy: crate::routing::RoutingPolicy,
    /// Its fulfillment orders as routed.
    pub fulfillments: Vec<crate::intake::Fulfillment>,
    /// Units waiting for stock.
    pub unfilled: Vec<crate::routing::SkuQty>,
    /// Every routing decision, with candidates, exclusions and scores.
    pub decisions: Vec<crate::intake::DecisionRecord>,
}

#[utoipa::path(get, path = "/v1/orders/search", tag = "orders",
    params(("q" = String, Query, description = "An order id, an e-mail address, a phone number or a channel's order reference"),
        ("limit" = Option<u32>, Query, description = "At most this many orders (20; 1 to 50)")),
    responses((status = 200, description = "Newest first, each as `GET /v1/orders/{id}` shows it", body = FoundOrders)))]
/// `GET /v1/orders/search?q=&limit=`: the orders a customer may be asking about, by order id, e-mail
/// address, phone number or the channel's order reference (`crate::intake::Intake::search`), newest first,
/// each as `GET /v1/orders/{id}` shows it. For customer service.
async fn search(
    State(hub): State<Arc<Hub>>,
    principal: Principal,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Json<FoundOrders>, Problem> {
    if let Some(bad) = q.keys().find(|k| !matches!(k.as_str(), "q" | "limit")) {
        return Err(Problem::new(StatusCode::BAD_REQUEST, "invalid_query", format!("unknown parameter {bad:?}")));
    }
    let query = q.get("q").map(|v| v.trim()).unwrap_or_default().to_owned();
    if query.is_empty() || query.len() > 256 {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "q must name an order id, an e-mail address, a phone number or an order reference (1 to 256 bytes)",
        ));
    }
    let limit = match q.get("limit") {
        None => 20,
        Some(l) => l.parse::<usize>().ok().filter(|l| (1..=crate::intake::SEARCH_RESULTS_MAX).contains(l)).ok_or_else(
            || {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    format!("limit must be 1 to {}", crate::intake::SEARCH_RESULTS_MAX),
                )
            },
        )?,
    };
    let orders = tokio::task::spawn_blocking(move || -> Result<Vec<HubOrderView>, Problem> {
        let found = hub.intake.search(&query, limit)?;
        let mut out = Vec::with_capacity(found.len());
        for o in found {
            if let Some(v) = hub_order_view(&hub, o.id.as_str(), &principal)? {
                out.push(v);
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    Ok(Json(FoundOrders { orders }))
}

/// The answer of `GET /v1/orders/search`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FoundOrders {
    /// The orders found, newest first.
    pub orders: Vec<HubOrderView>,
}

/// The view of a hub order, if `id` is one that `principal` may see, as the screens read it.
pub fn hub_order(hub: &Hub, id: &str, principal: &Principal) -> Result<Option<Value>, Problem> {
    Ok(hub_order_view(hub, id, principal)?.map(|v| json!(v)))
}

/// The view of a hub order, if `id` is one that `principal` may see (`GET /v1/orders/{id}`).
pub fn hub_order_view(hub: &Hub, id: &str, principal: &Principal) -> Result<Option<HubOrderView>, Problem> {
    if !is_customer_order(id) {
        return Ok(None);
    }
    Ok(hub.intake.order(id)?.filter(|o| visible_to(principal, o)).map(|o| {
        let mut v = order_view(hub, &o);
        with_payment(hub, &mut v, id);
        crate::notes::with_notes(hub, &mut v, id, principal);
        with_returns(hub, &mut v, id);
        v
    }))
}

/// Adds the order's payment (status, amounts, documents) to its view and its events to the timeline.
fn with_payment(hub: &Hub, view: &mut HubOrderView, id: &str) {
    let p = match hub.money.payment(hub.intake.db(), id) {
        Ok(Some(p)) => p,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(order = id, error = %e, "cannot read the order's payment");
            return;
        }
    };
    view.timeline.extend(p.events.iter().map(|e| TimelineItem {
        amount_minor: Some(e.amount_minor),
        document: Some(e.document.clone()),
        ..TimelineItem::new(e.at_ms, format!("payment_{}", e.status))
    }));
    sort_timeline(&mut view.timeline);
    view.payment = Some(crate::money::payment_view(&p));
}

/// Adds the order's RMAs (state, lines, credit notes) to its view and their events to the timeline.
fn with_returns(hub: &Hub, view: &mut HubOrderView, id: &str) {
    let rmas = match hub.returns.of_order(hub.intake.db(), id) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(order = id, error = %e, "cannot read the order's returns");
            return;
        }
    };
    for r in &rmas {
        view.timeline.extend(r.events.iter().map(|e| TimelineItem {
            rma: Some(r.id.clone()),
            ..TimelineItem::at_site(
                e.at_ms,
                format!("rma_{}", e.state.as_str()),
                &r.fulfillment,
                &r.site,
                e.note.clone(),
            )
        }));
    }
    sort_timeline(&mut view.timeline);
    view.rmas = Some(
        rmas.into_iter()
            .map(|r| RmaBrief {
                id: r.id,
                state: r.state,
                fulfillment: r.fulfillment,
                site: r.site,
                lines: r.lines,
                credit_notes: r.credit_notes,
                refunded_minor: r.refunded_minor,
                refund_error: r.refund_error,
            })
            .collect(),
    );
}

/// The optional body of a cancel.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    reason: Option<String>,
    /// Only these units, among those still waiting for stock.
    lines: Option<Vec<CancelLine>>,
}

/// A line of a line-level cancel.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CancelLine {
    pub(crate) sku: String,
    pub(crate) qty: u32,
}

/// The cancel's reason: none for an empty body or a blank reason; free text of at most
/// [`TEXT_BYTES_MAX`] bytes without control characters otherwise. And its lines, if it names any: each SKU
/// once, 1 to [`oms_protocol::domain::QTY_MAX`] units, at most [`oms_protocol::domain::ORDER_LINES_MAX`].
fn cancel_body(body: &[u8]) -> Result<(Option<String>, Option<Vec<crate::routing::SkuQty>>), Problem> {
    let b: CancelBody =
        if body.iter().all(u8::is_ascii_whitespace) { CancelBody::default() } else { oms_service::parse_json(body)? };
    let lines = b.lines.map(|ls| cancel_lines(&ls)).transpose()?;
    Ok((checked_reason(b.reason)?, lines))
}

/// A cancel's reason, trimmed (none when empty), or the refusal of one too long or with control characters.
fn checked_reason(reason: Option<String>) -> Result<Option<String>, Problem> {
    let Some(reason) = reason.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty()) else { return Ok(None) };
    if reason.len() > TEXT_BYTES_MAX || reason.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "invalid_text",
            "reason",
            format!("must be at most {TEXT_BYTES_MAX} bytes without control characters"),
        )
        .into());
    }
    Ok(Some(reason))
}

/// The body of `POST /v1/orders/{id}/fulfillments/{fulfillment}/cancel`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SiteCancelBody {
    /// Why (required, at most 2,000 bytes): kept with the fulfillment and in the audit trail.
    reason: Option<String>,
    /// What becomes of the units once the site confirms: `cancel` (the default) or `reroute` (back to
    /// routing, never to that site again for this order).
    #[serde(default = "cancel_then")]
    then: crate::intake::AfterSiteCancel,
}

fn cancel_then() -> crate::intake::AfterSiteCancel {
    crate::intake::AfterSiteCancel::Cancel
}

/// What a cancel asked of one site answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SiteCancelAnswer {
    /// The order.
    pub id: String,
    /// The fulfillment.
    pub fulfillment: String,
    /// Its site.
    pub site: String,
    /// What becomes of its units once the site confirms.
    pub then: crate::intake::AfterSiteCancel,
    /// `cancel_requested`: the site confirms when it syncs.
    pub result: &'static str,
}

#[utoipa::path(post, path = "/v1/orders/{id}/fulfillments/{fulfillment}/cancel", tag = "orders",
    params(("id" = String, Path, description = "The order id"), ("fulfillment" = String, Path, description = "One of its fulfillments")),
    request_body = SiteCancelBody,
    responses((status = 202, description = "The cancel is asked of that site alone; its units are cancelled or re-routed when it confirms", body = SiteCancelAnswer)))]
async fn cancel_at_site(
    State(hub): State<Arc<Hub>>,
    principal: Principal,
    Caller(actor): Caller,
    Path((id, fulfillment)): Path<(String, String)>,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let b: SiteCancelBody = oms_service::parse_json(&body)?;
    let answer = site_cancel(&hub, &principal, actor, &id, &fulfillment, b.then, b.reason.unwrap_or_default()).await?;
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// Asks the site of `fulfillment` of hub order `id` to cancel it (service's console and
/// `POST /v1/orders/{id}/fulfillments/{fulfillment}/cancel`): a fulfillment the site shipped or gave back is
/// `409 fulfillment_not_cancellable`; otherwise the request is recorded with its audit row
/// ([`crate::intake::Intake::request_site_cancel`]), written into the fulfillment's document (durable before
/// the answer) and the site told.
pub(crate) async fn site_cancel(
    hub: &Arc<Hub>,
    principal: &Principal,
    actor: Actor,
    id: &str,
    fulfillment: &str,
    then: crate::intake::AfterSiteCancel,
    reason: String,
) -> Result<SiteCancelAnswer, Problem> {
    let id = hub_order_id(id)?.to_string();
    let reason = checked_reason(Some(reason))?
        .ok_or_else(|| Problem::from(ValidationError::new("reason_required", "reason", "say why: it is audited")))?;
    let (h, key, confined) = (hub.clone(), id.clone(), principal.confined_to().cloned());
    let order = blocking(move || h.intake.order(&key))
        .await?
        .filter(|o| confined.as_ref().is_none_or(|c| &o.draft.channel == c));
    // The site's state is read only for a fulfillment of an order the caller may see.
    let state = order
        .as_ref()
        .and_then(|o| o.fulfillments.iter().find(|f| f.id.as_str() == fulfillment))
        .map(|f| fo_state(hub, &f.id).status);
    if let Some(Some(st)) = state {
        let why = match st {
            FulfillmentState::Shipped | FulfillmentState::Delivered => Some("its site shipped it already"),
            FulfillmentState::Cancelled | FulfillmentState::Rejected => Some("its site gave it back already"),
            _ => None,
        };
        if let Some(why) = why {
            return Err(IntakeError::FulfillmentNotOpen { fulfillment: fulfillment.to_owned(), why }.into());
        }
    }
    let (h, key, fid, confined) = (hub.clone(), id.clone(), fulfillment.to_owned(), principal.confined_to().cloned());
    let order =
        blocking(move || h.intake.request_site_cancel(&key, &fid, confined.as_ref(), then, &reason, &actor, now_ms()))
            .await?;
    let Some(f) = order.fulfillments.iter().find(|f| f.id.as_str() == fulfillment) else {
        return Err(crate::orders::not_found(&id));
    };
    let mut tell = Vec::new();
    ask_site_to_cancel(hub, &f.id, now_ms(), &mut tell)?;
    flush_and_tell(hub, tell).await?;
    Ok(SiteCancelAnswer {
        id,
        fulfillment: f.id.to_string(),
        site: f.site.to_string(),
        then,
        result: "cancel_requested",
    })
}

/// Checks the lines of a line-level cancel.
pub(crate) fn cancel_lines(ls: &[CancelLine]) -> Result<Vec<crate::routing::SkuQty>, Problem> {
    use oms_protocol::domain::{ORDER_LINES_MAX, QTY_MAX, Sku};
    if ls.is_empty() || ls.len() > ORDER_LINES_MAX {
        return Err(ValidationError::new("invalid_lines", "lines", format!("1 ..= {ORDER_LINES_MAX} lines")).into());
    }
    let mut out: Vec<crate::routing::SkuQty> = Vec::with_capacity(ls.len());
    for (i, l) in ls.iter().enumerate() {
        let sku = Sku::parse(&l.sku)
            .map_err(|_| ValidationError::new("invalid_sku", format!("lines[{i}].sku"), "not a SKU"))?;
        if l.qty == 0 || l.qty > QTY_MAX {
            return Err(ValidationError::new(
                "invalid_quantity",
                format!("lines[{i}].qty"),
                format!("1 ..= {QTY_MAX}"),
            )
            .into());
        }
        if out.iter().any(|o| o.sku == sku) {
            return Err(ValidationError::new("duplicate_sku", format!("lines[{i}].sku"), "each SKU once").into());
        }
        out.push(crate::routing::SkuQty { sku, qty: l.qty });
    }
    Ok(out)
}

/// Customer service cancels `what` with a reason only (`403 reason_required` otherwise).
fn reason_given(principal: &Principal, reason: Option<&str>, what: &str) -> Result<(), Problem> {
    if principal.role == Role::Service && reason.is_none() {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "reason_required",
            format!("customer service cancels {what} with a reason: send {{\"reason\": \"…\"}}"),
        )
        .with("role", principal.role));
    }
    Ok(())
}

/// Cancels `lines` of hub order `id` for `principal` (a channel only its own orders; service with a reason):
/// `POST /v1/orders/{id}/cancel` with `lines`, and the console's form. Units waiting for stock go at once;
/// the rest are asked of the sites holding them, not shipped ([`crate::intake::Intake::cancel_units`]): each
/// such request is written into its fulfillment's document (durable before the answer) and the site told.
pub(crate) async fn cancel_order_lines(
    hub: &Arc<Hub>,
    principal: &Principal,
    actor: Actor,
    id: &str,
    lines: Vec<crate::routing::SkuQty>,
    reason: Option<String>,
) -> Result<Cancelled, Problem> {
    let id = hub_order_id(id)?;
    reason_given(principal, reason.as_deref(), "units")?;
    // The fulfillments their sites shipped or gave back (read before the intake's lock: it is never held
    // with the documents').
    let (h, key) = (hub.clone(), id.to_string());
    let current = blocking(move || h.intake.order(&key)).await?;
    let closed: BTreeSet<OrderId> = current
        .iter()
        .flat_map(|o| &o.fulfillments)
        .filter(|f| {
            matches!(
                fo_state(hub, &f.id).status,
                Some(
                    FulfillmentState::Shipped
                        | FulfillmentState::Delivered
                        | FulfillmentState::Cancelled
                        | FulfillmentState::Rejected
                )
            )
        })
        .map(|f| f.id.clone())
        .collect();
    let (h, key, confined) = (hub.clone(), id.to_string(), principal.confined_to().cloned());
    let asked_lines = lines.clone();
    let (order, asked) = blocking(move || {
        h.intake.cancel_units(&key, confined.as_ref(), &asked_lines, reason.as_deref(), &closed, &actor, now_ms())
    })
    .await?;
    let mut done = Vec::new();
    let mut tell = Vec::new();
    let now = now_ms();
    for fid in &asked {
        let Some(f) = order.fulfillments.iter().find(|f| &f.id == fid) else { continue };
        ask_site_to_cancel(hub, fid, now, &mut tell)?;
        for l in f.site_cancel.as_ref().and_then(|c| c.lines.as_ref()).into_iter().flatten() {
            done.push(CancelledLine {
                fulfillment: Some(f.id.clone()),
                site: Some(f.site.clone()),
                sku: l.sku.clone(),
                qty: l.qty,
                result: "cancel_requested",
                reason: "asked of the site; the rest of its part is placed again",
            });
        }
    }
    // What the sites were not asked for came from the units waiting for stock.
    for l in &lines {
        let at_sites: u32 = done.iter().filter(|d| d.sku == l.sku).map(|d| d.qty).sum();
        let waiting = l.qty.saturating_sub(at_sites);
        if waiting > 0 {
            done.push(CancelledLine::unplaced(&crate::routing::SkuQty { sku: l.sku.clone(), qty: waiting }));
        }
    }
    if !asked.is_empty() {
        flush_and_tell(hub, tell).await?;
    }
    // The last waiting units cancelled may leave the order final (everything else shipped): its payment is
    // settled as after any other change that can end an order. An intake commit (fsync): off this worker.
    let (h, o) = (hub.clone(), order.clone());
    blocking(move || {
        settle_if_final(&h, &o, now_ms());
        Ok::<(), IntakeError>(())
    })
    .await?;
    Ok(Cancelled {
        id: order.id,
        cancel_requested_at_ms: order.cancel_requested_at_ms,
        lines: done,
        unfilled: Some(order.unfilled),
    })
}

/// The answer of `POST /v1/orders/{id}/cancel`: what became of each line.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Cancelled {
    /// The order.
    pub id: OrderId,
    /// When the cancellation was asked for (none for a line cancel that leaves the order going), ms.
    pub cancel_requested_at_ms: Option<u64>,
    /// Per fulfillment line (and units placed nowhere): the result.
    pub lines: Vec<CancelledLine>,
    /// A line cancel's answer only: the units still waiting for stock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unfilled: Option<Vec<crate::routing::SkuQty>>,
}

/// What became of one line of a cancellation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CancelledLine {
    /// The fulfillment order (`null`: units placed at no site).
    pub fulfillment: Option<OrderId>,
    /// Its site.
    pub site: Option<oms_protocol::domain::NodeId>,
    /// SKU.
    pub sku: oms_protocol::domain::Sku,
    /// Units.
    pub qty: u32,
    /// `cancelled`, `cancel_requested` (the site confirms when it syncs; for a line cancel, only these units
    /// are cancelled and the rest of its part is placed again) or `not_cancellable`.
    pub result: &'static str,
    /// Why.
    pub reason: &'static str,
}

impl CancelledLine {
    /// Units that were placed at no site: cancelled at once.
    fn unplaced(l: &crate::routing::SkuQty) -> CancelledLine {
        CancelledLine {
            fulfillment: None,
            site: None,
            sku: l.sku.clone(),
            qty: l.qty,
            result: "cancelled",
            reason: "not yet placed at any site",
        }
    }
}

#[utoipa::path(post, path = "/v1/orders/{id}/cancel", tag = "orders", params(("id" = String, Path, description = "The order id")),
    request_body(content = Option<Object>, description = "Optional `{\"reason\"}`; with `\"lines\": [{\"sku\", \"qty\"}]` only those units: waiting ones at once, the rest asked of the sites holding them and not shipped (the rest of such a site's part is placed again); more than can be cancelled is `409 units_not_waiting`"),
    responses((status = 202, description = "Cancellation requested, line by line (with `lines`: those units cancelled at once)", body = Cancelled)))]
async fn cancel(
    State(hub): State<Arc<Hub>>,
    principal: Principal,
    Caller(actor): Caller,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let (reason, lines) = cancel_body(&body)?;
    let v = match lines {
        Some(lines) => cancel_order_lines(&hub, &principal, actor, &id, lines, reason).await?,
        None => cancel_order(&hub, &principal, actor, &id, reason).await?,
    };
    Ok((StatusCode::ACCEPTED, Json(v)).into_response())
}

/// Cancels hub order `id` for `principal` (a channel only its own; service with a reason), writes the
/// cancellation requests into the open fulfillments' documents and tells their sites; the answer of
/// `POST /v1/orders/{id}/cancel`, line by line. The cancel screen calls it too.
pub(crate) async fn cancel_order(
    hub: &Arc<Hub>,
    principal: &Principal,
    actor: Actor,
    id: &str,
    reason: Option<String>,
) -> Result<Cancelled, Problem> {
    let id = hub_order_id(id)?;
    reason_given(principal, reason.as_deref(), "an order")?;
    let h = hub.clone();
    let key = id.to_string();
    let confined = principal.confined_to().cloned();
    let order =
        blocking(move || h.intake.request_cancel(&key, confined.as_ref(), reason.as_deref(), &actor, now_ms())).await?;
    let now = now_ms();
    let mut lines = Vec::new();
    let mut tell = Vec::new();
    for f in &order.fulfillments {
        if f.released.is_some() {
            continue;
        }
        let st = fo_state(hub, &f.id).status;
        let (result, reason) = match st {
            Some(FulfillmentState::Shipped | FulfillmentState::Delivered) => ("not_cancellable", "already shipped"),
            Some(FulfillmentState::Cancelled | FulfillmentState::Rejected) => ("cancelled", "cancelled at the site"),
            _ => ("cancel_requested", "the site confirms the cancellation when it syncs"),
        };
        if result == "cancel_requested" {
            ask_site_to_cancel(hub, &f.id, now, &mut tell)?;
        }
        for l in &f.lines {
            lines.push(CancelledLine {
                fulfillment: Some(f.id.clone()),
                site: Some(f.site.clone()),
                sku: l.sku.clone(),
                qty: l.qty,
                result,
                reason,
            });
        }
    }
    // The void is an intake commit (fsync): on a blocking thread, not on this async worker.
    let (h, o) = (hub.clone(), order.clone());
    blocking(move || {
        settle_if_final(&h, &o, now);
        Ok::<(), IntakeError>(())
    })
    .await?;
    lines.extend(order.cancelled_unfilled.iter().map(CancelledLine::unplaced));
    flush_and_tell(hub, tell).await?;
    Ok(Cancelled { id: order.id, cancel_requested_at_ms: order.cancel_requested_at_ms, lines, unfilled: None })
}

/// What `POST /v1/orders/{id}/route` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RouteNowAnswer {
    /// The order.
    pub id: String,
    /// Whether this round placed any unit (`false`: no site can take any of them now; the watcher keeps
    /// trying every second).
    pub routed: bool,
    /// Units still waiting for stock after it.
    pub unfilled: Vec<crate::routing::SkuQty>,
}

#[utoipa::path(post, path = "/v1/orders/{id}/route", tag = "orders", params(("id" = String, Path, description = "The order id")),
    request_body(content = Option<Object>, description = "Empty, or `{}`: nothing is read"),
    responses((status = 200, description = "The order's waiting units routed now (audited); `routed: false` when no site can take any of them", body = RouteNowAnswer)))]
async fn route_now(
    State(hub): State<Arc<Hub>>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    Ok(Json(route_waiting_now(&hub, actor, &id).await?).into_response())
}

/// Routes hub order `id`'s units waiting for stock now, for `actor` (customer service), rather than at the
/// watcher's next pass ([`crate::intake::Intake::reroute_by`], audited): new fulfillments are written like the
/// watcher's, and the payment settled if that left the order final.
pub(crate) async fn route_waiting_now(hub: &Arc<Hub>, actor: Actor, id: &str) -> Result<RouteNowAnswer, Problem> {
    let id = hub_order_id(id)?.to_string();
    let (h, key) = (hub.clone(), id.clone());
    let routed = blocking(move || {
        let now = now_ms();
        let sites = site_facts(&h, now);
        let r = h.intake.reroute_by(&key, &sites, &actor, now)?;
        if let Some((order, effects)) = &r {
            // The intake's commit is the record: a start re-creates documents a failure here did not write.
            if let Err(e) = apply_effects(&h, effects) {
                tracing::warn!(order = %key, error = %e, "cannot write re-routed fulfillments");
            }
            settle_if_final(&h, order, now);
        }
        Ok::<bool, IntakeError>(r.is_some())
    })
    .await?;
    let (h, key) = (hub.clone(), id.clone());
    let order = blocking(move || h.intake.order(&key)).await?.ok_or_else(|| not_found(&id))?;
    Ok(RouteNowAnswer { id, routed, unfilled: order.unfilled })
}

/// Writes a cancellation request into fulfillment `id`'s document (the site cancels what it has not shipped
/// when it syncs), adding to `tell` the nodes to wake. Made durable by [`flush_and_tell`].
fn ask_site_to_cancel(hub: &Hub, id: &OrderId, now: u64, tell: &mut Vec<String>) -> Result<(), EffectsError> {
    let Some(name) = schema::order_doc(id) else { return Ok(()) };
    let nodes = hub
        .docs
        .lock()
        .write_local(&name, |d| schema::request_cancel(d, now))
        .map_err(|source| EffectsError::Document { doc: name.clone(), source })?;
    tell.extend(nodes);
    Ok(())
}

/// Makes the documents' writes durable before an answer (the fsync without the documents' lock and off this
/// worker), then wakes the sessions of `tell`.
async fn flush_and_tell(hub: &Arc<Hub>, mut tell: Vec<String>) -> Result<(), Problem> {
    crate::server::flush_docs(hub)
        .await
        .map_err(|e| Problem::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", e.to_string()))?;
    tell.sort();
    tell.dedup();
    hub.poke(&tell);
    Ok(())
}

/// `GET /v1/track/{token}`: the customer's view behind a tracking token.
#[utoipa::path(get, path = "/v1/track/{token}", tag = "orders", params(("token" = String, Path, description = "The order's tracking token")),
    responses((status = 200, description = "What the customer may see of the order", body = CustomerView)))]
async fn track(State(hub): State<Arc<Hub>>, Path(token): Path<String>) -> Result<Response, Problem> {
    let h = hub.clone();
    let view = blocking(move || -> Result<_, Problem> {
        Ok(h.intake.order_by_tracking_token(&token)?.map(|o| customer_view(&h, &o)))
    })
    .await?;
    let view = view
        .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "tracking_not_found", "no order has this tracking link"))?;
    Ok(Json(view).into_response())
}
