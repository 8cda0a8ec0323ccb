//! The node's local HTTP API under `/v1` (axum, JSON). Handlers validate, hand a [`Command`] to the store and
//! answer only after the store reports the commit; every error is a [`Problem`].
//!
//! This file has the router ([`router`], the documented routes in `api`), [`policy`], [`AppState`], the shared
//! helpers (paging, paths, text, `exec`), `/healthz`, `/metrics` and `/v1/audit/events`; the handlers are in
//! `stock` (catalog, stock, ledger, CSV imports), `orders` (orders, returns, refunds, pick waves) and
//! `consignments` (pack, consignments and labels, ship, deliver).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::openapi::OpenApi;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use oms_protocol::domain::{FulfillmentState, OrderId, Sku, TEXT_BYTES_MAX, ValidationError, check_qty};

use crate::metrics::{Metrics, RequestLabels, StateLabels};
use crate::store::{Audit, Command, Store, WRITE_TIMEOUT};
use axum::http::Method;
use oms_service::Problem;
use oms_service::audit::Actor;
use oms_service::auth::{ANY_ROLE, Access, Auth, Role, authorize};
use oms_service::guard::{MediaType, method_label, require_media_type};
use oms_service::request::JSON_BODY_BYTES_MAX;

mod consignments;
mod orders;
mod stock;

pub(crate) use consignments::get_label;

/// Largest CSV upload, bytes.
pub(crate) const CSV_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Default page size of listings.
pub(crate) const PAGE_DEFAULT: usize = 50;

/// Shared state of the handlers.
#[derive(Clone)]
pub(crate) struct AppState {
    /// The store.
    pub store: Store,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// API keys, roles and per-key limits.
    pub auth: Arc<Auth>,
    /// What the screens put around each page.
    pub chrome: Arc<oms_service::web::Chrome>,
    /// `[receiving]`.
    pub receiving: crate::config::ReceivingConfig,
    /// The site's carrier, if it buys labels (`[carrier]`).
    pub carrier: Option<Arc<crate::carrier::CarrierConfig>>,
}

/// Roles that read the site's stock and catalog.
const STOCK_READERS: &[Role] = &[Role::Staff, Role::Planner];
/// Roles that read orders (a channel key only its own channel's).
const ORDER_READERS: &[Role] = &[Role::Staff, Role::Channel, Role::Service];
/// Roles that read the node's event feed (a channel key only its own channel's orders' events).
const EVENT_READERS: &[Role] = &[Role::Staff, Role::Planner, Role::Channel];
/// Admin only (`admin` is admitted everywhere; the empty list admits no other role).
const ADMIN: &[Role] = &[];

/// What each route needs (see `oms_service::auth`): `/healthz` is open; `admin` may call everything.
pub(crate) fn policy(method: &Method, route: Option<&str>) -> Access {
    let get = *method == Method::GET || *method == Method::HEAD;
    let Some(route) = route else { return Access::Roles(ANY_ROLE) };
    Access::Roles(match route {
        "/healthz" | "/openapi.json" | "/" | "/ui/sign-in" | "/ui/assets/{file}" => return Access::Open,
        "/ui/sign-out" => ANY_ROLE,
        "/ui" | "/ui/waves/{id}" | "/ui/orders/{id}" => &[Role::Staff],
        "/ui/inbound" | "/ui/inbound/{po}" | "/ui/returns" | "/ui/returns/{rma}" | "/ui/dispatch" => &[Role::Staff],
        "/ui/dispatch/{id}/slip" | "/ui/dispatch/{id}/label" => &[Role::Staff],
        "/ui/stock" => STOCK_READERS,
        "/ui/waves"
        | "/ui/waves/{id}/scan"
        | "/ui/waves/{id}/short"
        | "/ui/orders/{id}/{action}"
        | "/ui/stock/{action}"
        | "/ui/inbound/{po}/receive"
        | "/ui/returns/{rma}/receive"
        | "/ui/dispatch/manifests" => &[Role::Staff],
        "/metrics" => &[Role::Monitor],
        "/v1/catalog" | "/v1/stock" | "/v1/stock/{sku}" | "/v1/stock/{sku}/ledger" | "/v1/audit/ledger" => {
            STOCK_READERS
        }
        "/v1/catalog/{sku}" if get => STOCK_READERS,
        "/v1/catalog/{sku}" | "/v1/import/catalog" | "/v1/import/stock" | "/v1/audit/events" => ADMIN,
        "/v1/stock/receipts" | "/v1/stock/adjustments" | "/v1/stock/counts" => &[Role::Staff],
        "/v1/inbound" | "/v1/rmas" => STOCK_READERS,
        "/v1/inbound/{asn}/receipts" | "/v1/inbound/po/{po}/receipts" => &[Role::Staff],
        "/v1/events" if get => EVENT_READERS,
        "/v1/orders" if get => ORDER_READERS,
        "/v1/orders" => &[Role::Channel],
        "/v1/orders/{id}" => ORDER_READERS,
        "/v1/orders/{id}/cancel" | "/v1/orders/{id}/returns/{n}/refund" => &[Role::Channel, Role::Service],
        "/v1/orders/{id}/picks"
        | "/v1/orders/{id}/pack"
        | "/v1/orders/{id}/ship"
        | "/v1/orders/{id}/deliver"
        | "/v1/orders/{id}/accept"
        | "/v1/orders/{id}/reject"
        | "/v1/orders/{id}/returns"
        | "/v1/waves"
        | "/v1/waves/{id}"
        | "/v1/consignments"
        | "/v1/consignments/{id}"
        | "/v1/consignments/{id}/label"
        | "/v1/consignments/{id}/slip"
        | "/v1/consignments/{id}/void"
        | "/v1/manifests"
        | "/v1/manifests/{id}"
        | "/v1/manifests/{id}/collected" => &[Role::Staff],
        _ => ANY_ROLE,
    })
}

/// The documented routes: the CSV imports and the JSON API, each with its body limit, and the OpenAPI
/// document they make (`#[utoipa::path]` on each handler names its method and path; `routes!` registers it
/// there, so the two cannot differ).
fn api() -> (Router<AppState>, Router<AppState>, OpenApi) {
    let (csv, csv_doc) = OpenApiRouter::new()
        .routes(routes!(stock::import_catalog))
        .routes(routes!(stock::import_stock))
        .layer(DefaultBodyLimit::max(CSV_BODY_BYTES_MAX))
        .split_for_parts();
    let (json, mut doc) = OpenApiRouter::with_openapi(<Tags as utoipa::OpenApi>::openapi())
        .merge(oms_service::openapi::route())
        .routes(routes!(healthz))
        .routes(routes!(metrics))
        .routes(routes!(stock::list_catalog))
        .routes(routes!(stock::put_catalog, stock::get_catalog))
        .routes(routes!(stock::list_stock))
        .routes(routes!(stock::receipt))
        .routes(routes!(stock::adjustment))
        .routes(routes!(stock::count))
        .routes(routes!(crate::receiving::list))
        .routes(routes!(crate::receiving::rmas))
        .routes(routes!(crate::receiving::receive_asn))
        .routes(routes!(crate::receiving::receive_po))
        .routes(routes!(stock::get_stock))
        .routes(routes!(stock::get_ledger))
        .routes(routes!(orders::create_order, orders::list_orders))
        .routes(routes!(orders::get_order))
        .routes(routes!(orders::confirm_picks))
        .routes(routes!(consignments::pack))
        .routes(routes!(consignments::ship))
        .routes(routes!(consignments::deliver))
        .routes(routes!(orders::cancel))
        .routes(routes!(orders::reaccept))
        .routes(routes!(orders::reject_assignment))
        .routes(routes!(orders::receive_return))
        .routes(routes!(orders::refund))
        .routes(routes!(stock::audit_ledger))
        .routes(routes!(audit_events))
        .routes(routes!(crate::events::feed))
        .routes(routes!(orders::create_wave))
        .routes(routes!(orders::get_wave))
        .routes(routes!(consignments::list_consignments))
        .routes(routes!(consignments::get_consignment))
        .routes(routes!(consignments::get_label))
        .routes(routes!(crate::dispatch::slip))
        .routes(routes!(crate::dispatch::void))
        .routes(routes!(crate::dispatch::close))
        .routes(routes!(crate::dispatch::get))
        .routes(routes!(crate::dispatch::collected))
        .layer(DefaultBodyLimit::max(JSON_BODY_BYTES_MAX))
        .split_for_parts();
    doc.merge(csv_doc);
    let doc = oms_service::openapi::finish(
        doc,
        "oms node",
        "A site's local API: catalog, stock ledger, orders, pick waves, returns and its event feed. See README.md.",
        policy,
    );
    (json, csv, doc)
}

/// The tags of the node's document.
#[derive(utoipa::OpenApi)]
#[openapi(tags(
    (name = "meta", description = "Health, metrics and this document"),
    (name = "catalog", description = "What the site stocks and where"),
    (name = "stock", description = "Balances and the append-only stock ledger"),
    (name = "inbound", description = "Purchase orders and advance shipping notices expected here, and their receipts"),
    (name = "orders", description = "Orders and their fulfillment at this site"),
    (name = "waves", description = "Pick waves"),
    (name = "consignments", description = "Parcels packed for a carrier, their labels and the label outbox"),
    (name = "audit", description = "The audit trail and the ledger check"),
    (name = "events", description = "This node's event feed"),
    (name = "import", description = "CSV imports"),
))]
struct Tags;

/// Builds the router.
pub(crate) fn router(state: AppState) -> Router {
    let (json, csv, doc) = api();
    // Every POST and PUT names its media type, the body-less ones (cancel, pack, deliver, waves, ...) too:
    // a cross-site page cannot send JSON or CSV without a preflight these routes never grant.
    let csv = require_media_type(csv, MediaType::Csv);
    let screens = crate::ui::routes().merge(oms_service::web::routes(state.auth.clone(), state.chrome.clone()));
    oms_service::openapi::serve(require_media_type(json, MediaType::Json), &doc)
        .merge(csv)
        .merge(screens)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // After routing, so it knows the route; inside `track`, so refusals are counted by route and status.
        .layer(middleware::from_fn_with_state(state.auth.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        // Outermost: a problem answered to a screen, whoever refused it, is shown as a page.
        .layer(middleware::from_fn(oms_service::web::html_problems))
        .layer(axum::Extension(state.chrome.clone()))
        .with_state(state)
}

async fn track(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "other".into());
    // Both labels come from fixed sets: unmatched paths are `other`, and so are invented methods.
    let method = method_label(req.method()).to_owned();
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    st.metrics.requests.get_or_create(&RequestLabels { route: route.clone(), method: method.clone(), status }).inc();
    // Saturates: a request taking more than u64::MAX µs (584,000 years) logs as u64::MAX.
    let took_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    tracing::debug!(%method, %route, status, took_us, "request");
    resp
}

async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint; see the README for the API")
}

async fn method_not_allowed() -> Problem {
    Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not take that method")
}

/// The answer of `GET /healthz`.
#[derive(Serialize, ToSchema)]
struct Health {
    /// Always `ok`.
    status: &'static str,
    /// This site.
    site: oms_protocol::domain::NodeId,
    /// Orders held.
    orders: u64,
}

/// Whether the node is up, its site and how many orders it holds.
#[utoipa::path(get, path = "/healthz", tag = "meta", responses((status = 200, description = "Up", body = Health)))]
async fn healthz(State(st): State<AppState>) -> Response {
    match st.store.order_total() {
        Ok(orders) => Json(Health { status: "ok", site: st.store.site().clone(), orders }).into_response(),
        Err(e) => Problem::from(e).into_response(),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "meta", responses((status = 200, description = "OpenMetrics text",
    content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String)))]
async fn metrics(State(st): State<AppState>) -> Response {
    if let Ok(counts) = st.store.order_counts() {
        for (s, n) in counts {
            // The gauge is an i64: a count beyond i64::MAX saturates rather than showing as negative.
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            st.metrics.orders.get_or_create(&StateLabels { state: s.as_str().to_owned() }).set(n);
        }
    }
    let mut text = st.metrics.render();
    // The refusal counters of the auth layer, before OpenMetrics' closing `# EOF`.
    let body_end = text.rfind("# EOF").unwrap_or(text.len());
    text.insert_str(body_end, &st.auth.stats.openmetrics("oms_node"));
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

/// Query parameters of listings; errors become problems.
#[derive(Debug, Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    /// Continue after this key (the previous page's `next_after`).
    pub(crate) after: Option<String>,
    /// Page size (default 50, capped by the node's page limit).
    limit: Option<usize>,
    /// Only orders in this state (`GET /v1/orders`).
    #[param(value_type = Option<FulfillmentState>)]
    status: Option<String>,
}

pub(crate) struct Q(pub(crate) PageQuery);

impl<S: Send + Sync> FromRequestParts<S> for Q {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        let q = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(q)
            .map(Q)
            .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "invalid_query", format!("bad query string: {e}")))
    }
}

impl PageQuery {
    pub(crate) fn limit(&self) -> usize {
        self.limit.unwrap_or(PAGE_DEFAULT).max(1)
    }
}

fn sku_path(s: &str) -> Result<Sku, Problem> {
    Sku::parse(s).map_err(Problem::from)
}

pub(crate) fn order_path(s: &str) -> Result<OrderId, Problem> {
    OrderId::parse(s).map_err(|_| {
        Problem::new(StatusCode::NOT_FOUND, "order_not_found", format!("order {s:?} does not exist at this site"))
    })
}

pub(crate) fn text(field: &str, s: &str, required: bool) -> Result<(), Problem> {
    if required && s.trim().is_empty() {
        return Err(ValidationError::new("missing_field", field, "must not be empty").into());
    }
    if s.len() > TEXT_BYTES_MAX || s.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "invalid_text",
            field,
            format!("must be at most {TEXT_BYTES_MAX} bytes without control characters"),
        )
        .into());
    }
    Ok(())
}

/// Runs `cmd` for the admitted caller `actor`: the change and its audit row commit together.
pub(crate) async fn exec<C: Command>(
    st: &AppState,
    actor: &Actor,
    target: Option<String>,
    cmd: C,
) -> Result<C::Reply, Problem> {
    let audit = Audit { actor: actor.clone(), target };
    match tokio::time::timeout(WRITE_TIMEOUT, st.store.execute_audited(cmd, audit)).await {
        Ok(r) => r.map_err(Problem::from),
        Err(_) => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the write did not complete in time; it may still commit, retry with the same idempotency key",
        )),
    }
}

pub(crate) fn qty_u32(field: &str, q: i64) -> Result<u32, Problem> {
    let v = u32::try_from(q).unwrap_or(0);
    check_qty(field, v).map_err(Problem::from)?;
    Ok(v)
}

/// Parses an optional JSON body: an empty body means the defaults.
fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T, Problem> {
    if body.iter().all(u8::is_ascii_whitespace) { Ok(T::default()) } else { oms_service::parse_json(body) }
}

/// The audit trail, oldest first: `?after=<seq>&limit=` (at most `oms_service::audit::AUDIT_PAGE_MAX`).
#[utoipa::path(get, path = "/v1/audit/events", tag = "audit", params(PageQuery),
    responses((status = 200, description = "A page of the audit trail", body = oms_service::audit::AuditPage)))]
async fn audit_events(State(st): State<AppState>, Q(q): Q) -> Result<Response, Problem> {
    let after = match q.after.as_deref() {
        None | Some("") => 0,
        Some(a) => a.parse::<u64>().map_err(|_| {
            Problem::new(StatusCode::BAD_REQUEST, "invalid_query", "after must be an audit sequence number")
        })?,
    };
    let (events, next_after) = st.store.audit_events(after, q.limit())?;
    Ok(Json(oms_service::audit::AuditPage { events, next_after }).into_response())
}

#[cfg(test)]
mod openapi_tests {
    use super::*;

    async fn app(dir: &std::path::Path) -> Router {
        let store = crate::test_support::store_with_catalog(dir, &[]).await;
        let auth = Arc::new(Auth::in_memory(Vec::new(), Default::default(), policy));
        let chrome = Arc::new(crate::ui::chrome("t", false));
        router(AppState {
            store,
            metrics: Arc::new(Metrics::new()),
            auth,
            chrome,
            receiving: Default::default(),
            carrier: None,
        })
    }

    /// Every route the node serves (but the screens) is in its OpenAPI document, and the reverse.
    #[tokio::test]
    async fn document_lists_every_route() {
        let dir = tempfile::tempdir().unwrap();
        let doc = api().2;
        if let Err(e) = oms_service::openapi::check_complete(&app(dir.path()).await, &doc) {
            panic!("{e}");
        }
        // Spot checks that the registry is the real one: the main calls, their examples, who may call them.
        let create = doc.paths.paths["/v1/orders"].post.as_ref().unwrap();
        let json = serde_json::to_value(create).unwrap();
        assert_eq!(json["requestBody"]["content"]["application/json"]["example"]["channel"], "web");
        assert!(json["description"].as_str().unwrap().contains("Roles: channel, admin."), "{json}");
        assert!(json["responses"]["4XX"].is_object(), "{json}");
        let health = serde_json::to_value(doc.paths.paths["/healthz"].get.as_ref().unwrap()).unwrap();
        assert_eq!(health["security"], serde_json::json!([{}]), "open route");
        // Every 2xx answer has a real schema (the hub's test shows a bare object is named).
        let whole = serde_json::to_value(&doc).unwrap();
        assert_eq!(oms_service::openapi::untyped_responses(&whole), Vec::<String>::new());
        let created = &json["responses"]["201"]["content"]["application/json"];
        assert_eq!(created["example"]["order"]["channel"], "web", "{created}");
    }

    /// A route added with plain `.route()` is named by the check.
    #[tokio::test]
    async fn an_undocumented_route_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let extra = app(dir.path()).await.route("/v1/secret", axum::routing::get(|| async { "x" }));
        let err = oms_service::openapi::check_complete(&extra, &api().2).unwrap_err();
        assert!(err.contains("route /v1/secret is served but not in the OpenAPI document"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}
