//! The hub's HTTP API (JSON): what an operator or a channel integration asks the hub.
//!
//! - `GET /v1/nodes`: each node's connection state, last sync, lag, refusal counters (`docs_refused`,
//!   `changes_quarantined`, `quota_refusals`, `changes_too_large`, `changes_dropped`, `manifests_deferred`),
//!   what it stores against its quota (`documents`, `stored_bytes`) and the certificate it presented; the hub's own certificate (`hub_certificate`: serial, `not_after_unix_s`, `expires_in_s`,
//!   `expiring_soon` when less than `oms_transport::pki::EXPIRY_WARNING_DAYS` are left).
//! - `GET /v1/orders?flag=carrier_exception&after=&limit=`: the customer orders a carrier exception flagged
//!   for customer service (`crate::tracking`), by order id.
//! - `GET /v1/orders?site=&after=&limit=`: order ids and states as the hub sees them, with per-site counts.
//!   Follow `next_after` until it is null: a page reads at most [`ORDER_ROWS_READ_MAX`] orders, so with a site
//!   filter it may hold fewer than `limit`, even none, and still not be the last.
//! - `GET /v1/orders/{id}`: one order: status, timeline, lines, shipment, as last synced from its node.
//! - `GET /v1/stock?sku=`: balances per SKU and site from the nodes' stock documents, with each site's
//!   freshness (when the node last wrote its stock document).
//! - `GET /v1/forecast/{sku}` and `GET /v1/replenishment`: demand forecasts and reorder suggestions, see
//!   [`crate::forecast_api`].
//! - `POST /v1/orders`, `GET /v1/orders/{id}/routing`, `POST /v1/orders/{id}/cancel`, `GET /v1/track/{token}`:
//!   see [`crate::orders`].
//! - Refunds, invoices, credit notes and payments: see [`crate::money::http`].
//! - Returns (RMAs): see [`crate::returns::http`].
//! - `GET /v1/audit/events?after=&limit=`: the audit trail of creates and cancels, paged by `seq` (at most
//!   [`oms_service::audit::AUDIT_PAGE_MAX`] rows; follow `next_after` until it is null).
//! - `GET /v1/events?after=&limit=&types=&wait_ms=` and `/v1/webhooks`: the event feed and webhook
//!   subscriptions, see [`crate::events`].
//! - `GET /metrics`: OpenMetrics text: the refusals of the auth layer, nodes connected, documents held, the
//!   documents' lock's acquisitions and the seconds it was held and waited for ([`oms_service::TimedMutex`]),
//!   carrier tracking events by outcome (`oms_hub_carrier_events_total{result}`) and those in EasyPost's
//!   format (`oms_hub_carrier_events_easypost_total`),
//!   orders taken and waiting, live API keys, the intake writer's commits and the orders they held.
//!
//! Every route but `/healthz` and `/v1/track/{token}` needs an API key (`Authorization: Bearer`, see
//! [`oms_service::auth`]); [`policy`] says which roles each route admits (`admin` always):
//!
//! | route | roles |
//! |---|---|
//! | `GET /healthz`, `GET /v1/track/{token}`, `GET /t/{token}`, `POST /t/{token}/cancel\|returns` | open (rate limited per client IP; the tracking page's forms need its `SameSite=Strict` form cookie, see [`crate::selfservice`]) |
//! | `POST /v1/carriers/{carrier}/events` | open: the carrier's HMAC signature (`crate::tracking`), rate limited per client IP |
//! | `GET /v1/nodes`, `/v1/stock`, `/v1/stock/{sku}`, `/v1/forecast/{sku}`, `/v1/replenishment` | planner |
//! | `GET /v1/orders` | planner, service, channel (a channel key lists its channel's hub orders; `flag=carrier_exception` its flagged ones) |
//! | `POST /v1/orders` | channel (its own channel only) |
//! | `GET /v1/orders/{id}`, `GET /v1/orders/{id}/routing` | planner, service, channel (own channel only) |
//! | `POST /v1/orders/{id}/cancel` | channel (own channel only), service (with a reason) |
//! | `POST /v1/orders/{id}/refunds` | service (with a reason) |
//! | `POST /v1/orders/{id}/payments`, `/ui/orders/{id}/payments` | service |
//! | `POST /v1/orders/{id}/returns` | channel (own channel only), service |
//! | `GET /v1/returns[/{rma}]` | planner, service, channel (own channel only) |
//! | `POST /v1/returns/{rma}/approve\|decline\|cancel\|refund` | service |
//! | `GET /v1/returns/summary` | planner, service |
//! | `GET /v1/invoices[/{number}]`, `GET /v1/credit-notes[/{number}]` | planner, service, channel (own channel only) |
//! | `GET /v1/reports`, `/ui/reports[.csv]` | planner, service |
//! | `POST /v1/orders/{id}/notes`, `/ui/orders/{id}/notes`, `/ui/orders/{id}/returns`, `/ui/orders/{id}/cancel-lines` | service |
//! | `GET /v1/payments?status=action_required` | service |
//! | `GET /v1/payments/summary` | planner, service |
//! | `GET /v1/audit/events` | admin only |
//! | `GET /v1/events`, `GET`/`POST /v1/webhooks`, `DELETE /v1/webhooks/{id}` | channel (its own orders' events and subscriptions) |
//! | `GET /metrics` | monitor |
//! | `GET /v1/suppliers[/{id}]`, `PUT /v1/suppliers/{id}`, `POST /v1/suppliers/import` | planner |
//! | `POST /v1/purchase-orders`, `POST …/{id}/send\|cancel`, `POST …/{id}/lines/{n}/close`, `GET /v1/purchasing/summary` | planner |
//! | `GET /v1/purchase-orders`, `GET /v1/purchase-orders/{id}`, `POST …/{id}/confirm`, `POST …/{id}/asns`, `POST /v1/asns/import` | planner, supplier (its own orders only) |
//! | anything else | any key (so an unknown path is `404`, or `405`, only to a caller with a key) |
//!
//! Every handler reads documents under the hub's lock and answers from memory; lists are paged.

use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use oms_service::auth::{ANY_ROLE, Access, Auth, Role, authorize};

use crate::server::Hub;
use oms_service::Problem;

mod metrics;
mod nodes;
mod orders;
mod stock;

pub(crate) use nodes::nodes_view;
pub use orders::{ORDER_ROWS_READ_MAX, ORDERS_PAGE_MAX};
pub use stock::{STOCK_PAGE_MAX, SiteStock, StockRow, stock_page};
pub(crate) use stock::{stock_csv, stock_rows};

// The stock-read bounds live in `docs`, where `demand` reads stock documents too.
pub use crate::docs::{STOCK_SITES_MAX, STOCK_SKUS_MAX};

const PLANNER: &[Role] = &[Role::Planner];
const ORDER_READERS: &[Role] = &[Role::Planner, Role::Service, Role::Channel];
const CHANNEL: &[Role] = &[Role::Channel];
const CANCELLERS: &[Role] = &[Role::Channel, Role::Service];
const SERVICE: &[Role] = &[Role::Service];
const MONEY_READERS: &[Role] = &[Role::Service, Role::Planner];
const MONITOR: &[Role] = &[Role::Monitor];
const ADMIN_ONLY: &[Role] = &[];
/// Purchase orders: planners see and act on all; a supplier key only on its own ([`crate::purchasing::http`]
/// answers another supplier's order as an unknown one).
const PO_PARTIES: &[Role] = &[Role::Planner, Role::Supplier];

/// What each hub route needs (the table in the module docs), by method and matched route.
pub fn policy(method: &Method, route: Option<&str>) -> Access {
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    match route {
        Some(
            "/healthz" | "/openapi.json" | "/v1/track/{token}" | "/t" | "/t/{token}" | "/" | "/ui/sign-in"
            | "/ui/assets/{file}",
        ) if get => Access::Open,
        Some("/ui/sign-in" | "/t" | "/t/{token}/cancel" | "/t/{token}/returns") if post => Access::Open,
        // A carrier has no API key: the per-carrier signature authenticates it (`crate::tracking`).
        Some("/v1/carriers/{carrier}/events") if post => Access::Open,
        Some("/ui/sign-out") if post => Access::Roles(ANY_ROLE),
        Some("/ui/stock" | "/ui/stock.csv" | "/ui/forecast/{sku}") if get => Access::Roles(PLANNER),
        Some("/v1/reports" | "/ui/reports" | "/ui/reports.csv") if get => Access::Roles(MONEY_READERS),
        Some("/ui" | "/ui/orders" | "/ui/orders/{id}" | "/ui/orders/{id}/routing") if get => {
            Access::Roles(&[Role::Planner, Role::Service])
        }
        Some(
            "/ui/orders/{id}/cancel"
            | "/ui/orders/{id}/cancel-lines"
            | "/ui/orders/{id}/notes"
            | "/ui/orders/{id}/payments"
            | "/ui/orders/{id}/returns"
            | "/ui/orders/{id}/fulfillments/{fulfillment}/cancel"
            | "/ui/orders/{id}/route",
        ) if post => Access::Roles(&[Role::Service]),
        Some("/v1/nodes" | "/v1/stock" | "/v1/stock/{sku}" | "/v1/forecast/{sku}" | "/v1/replenishment") if get => {
            Access::Roles(PLANNER)
        }
        Some("/v1/orders/search") if get => Access::Roles(SERVICE),
        Some("/v1/orders" | "/v1/orders/{id}" | "/v1/orders/{id}/routing") if get => Access::Roles(ORDER_READERS),
        Some("/v1/orders") if post => Access::Roles(CHANNEL),
        Some("/v1/orders/{id}/cancel") if post => Access::Roles(CANCELLERS),
        Some(
            "/v1/orders/{id}/refunds"
            | "/v1/orders/{id}/notes"
            | "/v1/orders/{id}/payments"
            | "/v1/orders/{id}/fulfillments/{fulfillment}/cancel"
            | "/v1/orders/{id}/route",
        ) if post => Access::Roles(SERVICE),
        Some("/v1/orders/{id}/returns") if post => Access::Roles(CANCELLERS),
        Some("/v1/returns" | "/v1/returns/{rma}") if get => Access::Roles(ORDER_READERS),
        Some("/v1/returns/summary") if get => Access::Roles(MONEY_READERS),
        Some(
            "/v1/returns/{rma}/approve"
            | "/v1/returns/{rma}/decline"
            | "/v1/returns/{rma}/cancel"
            | "/v1/returns/{rma}/refund",
        ) if post => Access::Roles(SERVICE),
        Some("/v1/invoices" | "/v1/invoices/{number}" | "/v1/credit-notes" | "/v1/credit-notes/{number}") if get => {
            Access::Roles(ORDER_READERS)
        }
        Some("/v1/payments") if get => Access::Roles(SERVICE),
        Some("/v1/payments/summary") if get => Access::Roles(MONEY_READERS),
        Some("/v1/audit/events") if get => Access::Roles(ADMIN_ONLY),
        Some("/v1/events") if get => Access::Roles(CHANNEL),
        Some("/v1/webhooks") if get || post => Access::Roles(CHANNEL),
        Some("/v1/webhooks/{id}") if method == Method::DELETE => Access::Roles(CHANNEL),
        Some("/metrics") if get => Access::Roles(MONITOR),
        Some("/v1/purchase-orders" | "/v1/purchase-orders/{id}") if get => Access::Roles(PO_PARTIES),
        Some("/v1/suppliers" | "/v1/suppliers/{id}" | "/v1/purchasing/summary") if get => Access::Roles(PLANNER),
        Some("/v1/suppliers/{id}") if method == Method::PUT => Access::Roles(PLANNER),
        Some("/v1/asns/import" | "/v1/purchase-orders/{id}/confirm" | "/v1/purchase-orders/{id}/asns") if post => {
            Access::Roles(PO_PARTIES)
        }
        Some(
            "/v1/suppliers/import"
            | "/v1/purchase-orders"
            | "/v1/purchase-orders/{id}/send"
            | "/v1/purchase-orders/{id}/cancel"
            | "/v1/purchase-orders/{id}/lines/{n}/close",
        ) if post => Access::Roles(PLANNER),
        _ => Access::Roles(ANY_ROLE),
    }
}

/// The router, behind `auth` ([`policy`]; the middleware is added last, so it runs first and sees the matched
/// route). Every POST (orders, cancel) names `application/json` as its content type, the body-less cancel
/// too (`oms_service::guard::require_media_type`).
pub fn router(hub: Arc<Hub>, auth: Arc<Auth>) -> Router {
    router_with(hub, auth, false)
}

/// [`router`] with the screens' session cookie `Secure` when `secure_cookie` (the API speaks TLS).
pub fn router_with(hub: Arc<Hub>, auth: Arc<Auth>, secure_cookie: bool) -> Router {
    let chrome = Arc::new(crate::ui::chrome(secure_cookie));
    let screens =
        crate::ui::routes(hub.clone(), chrome.clone()).merge(oms_service::web::routes(auth.clone(), chrome.clone()));
    // Every route is registered by `routes!` from its handler's `#[utoipa::path]`, so the OpenAPI document
    // (GET /openapi.json) lists exactly what is served; the screens (HTML) are left out of it.
    let (purchasing, purchasing_csv) = crate::purchasing::http::routers(hub.clone());
    let (purchasing_csv, csv_doc) = purchasing_csv.split_for_parts();
    let (routes, mut doc) = OpenApiRouter::with_openapi(<Tags as utoipa::OpenApi>::openapi())
        .merge(oms_service::openapi::route())
        .routes(routes!(healthz))
        .routes(routes!(nodes::nodes))
        .routes(routes!(orders::orders, crate::orders::create))
        .routes(routes!(orders::order))
        .routes(routes!(stock::stock))
        .routes(routes!(stock::stock_one))
        .routes(routes!(audit_events))
        .with_state(hub.clone())
        .merge(OpenApiRouter::new().routes(routes!(metrics::metrics)).with_state((hub.clone(), auth.clone())))
        .merge(crate::orders::router(hub.clone()))
        .merge(crate::money::http::router(hub.clone()))
        .merge(crate::returns::http::router(hub.clone()))
        .merge(crate::events::api::router(hub.clone()))
        .merge(crate::reports::screen::router(hub.clone()))
        .merge(crate::notes::router(hub.clone()))
        .merge(crate::tracking::router(hub.clone()))
        .merge(crate::forecast_api::router(hub))
        .merge(purchasing)
        .layer(axum::extract::DefaultBodyLimit::max(oms_service::request::JSON_BODY_BYTES_MAX))
        .split_for_parts();
    doc.merge(csv_doc);
    let doc = oms_service::openapi::finish(
        doc,
        "oms hub",
        "The hub: channel intake and routing across sites, the network's stock, money (payments, invoices, \
         credit notes, refunds), forecasting, the event feed and webhooks. See README.md.",
        policy,
    );
    let routes = oms_service::openapi::serve(routes, &doc);
    oms_service::guard::require_media_type(routes, oms_service::guard::MediaType::Json)
        .merge(oms_service::guard::require_media_type(purchasing_csv, oms_service::guard::MediaType::Csv))
        .merge(screens)
        // After the caller is known (a refused key is a 401 whatever the disk), before any handler writes.
        .layer(axum::middleware::from_fn(oms_service::storage::reserve::refuse_writes_below_reserve))
        .layer(axum::middleware::from_fn_with_state(auth, authorize))
        // Outermost: a problem answered to a screen, whoever refused it, is shown as a page.
        .layer(axum::middleware::from_fn(oms_service::web::html_problems))
        .layer(axum::Extension(chrome))
}

/// The tags of the hub's document.
#[derive(utoipa::OpenApi)]
#[openapi(tags(
    (name = "meta", description = "Health, metrics and this document"),
    (name = "purchasing", description = "Suppliers, purchase orders, advance shipping notices"),
    (name = "network", description = "The sites and their sync state"),
    (name = "orders", description = "Customer orders: intake, routing, cancellation, tracking"),
    (name = "stock", description = "The network's stock as the sites last reported it"),
    (name = "money", description = "Payments, invoices, credit notes and refunds"),
    (name = "returns", description = "Return authorizations (RMAs): request, approval, receipt at the site, refund"),
    (name = "forecast", description = "Demand forecasts and replenishment"),
    (name = "reports", description = "Orders, fill, on-time shipping, time to ship, cancellations and returns per period"),
    (name = "events", description = "The event feed and webhook subscriptions"),
    (name = "audit", description = "The audit trail"),
))]
struct Tags;

/// Whether the hub is up.
#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "Up", content_type = "text/plain", body = String, example = "ok")))]
async fn healthz() -> &'static str {
    "ok"
}

/// Parses `after` / `limit` of a paged query into a problem document when they are not numbers.
fn query_u64(q: &std::collections::HashMap<String, String>, name: &str) -> Result<Option<u64>, Problem> {
    q.get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                Problem::new(StatusCode::BAD_REQUEST, "invalid_query", format!("{name} must be a whole number"))
            })
        })
        .transpose()
}

/// `GET /v1/audit/events?after=&limit=`.
#[utoipa::path(get, path = "/v1/audit/events", tag = "audit", params(("after" = Option<u64>, Query, description = "Rows after this sequence (default 0)"), ("limit" = Option<u64>, Query, description = "Page size (capped)")),
    responses((status = 200, description = "A page of the audit trail", body = oms_service::audit::AuditPage)))]
async fn audit_events(
    State(hub): State<Arc<Hub>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<oms_service::audit::AuditPage>, Problem> {
    if let Some(bad) = q.keys().find(|k| !matches!(k.as_str(), "after" | "limit")) {
        return Err(Problem::new(StatusCode::BAD_REQUEST, "invalid_query", format!("unknown parameter {bad:?}")));
    }
    let after = query_u64(&q, "after")?.unwrap_or(0);
    let limit = query_u64(&q, "limit")?.unwrap_or(100);
    let limit = usize::try_from(limit).unwrap_or(usize::MAX).clamp(1, oms_service::audit::AUDIT_PAGE_MAX);
    let h = hub.clone();
    let (events, next_after) = tokio::task::spawn_blocking(move || h.intake.audit_page(after, limit))
        .await
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("audit read failed: {e}")))?
        .map_err(Problem::from)?;
    Ok(Json(oms_service::audit::AuditPage { events, next_after }))
}

fn problem(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Response {
    Problem::new(status, code, detail).into_response()
}
