//! The node's local HTTP API under `/v1` (axum, JSON). Handlers validate, hand a [`Command`] to the store and
//! answer only after the store reports the commit; every error is a [`Problem`].

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Path, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::openapi::OpenApi;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use oms_protocol::domain::{
    Balance, Disposition, FulfillmentState, Movement, OrderId, Sku, TEXT_BYTES_MAX, ValidationError, check_qty,
};

use crate::escrow::EscrowFigures;
use crate::import::{self, Kind};
use crate::metrics::{Metrics, RequestLabels, StateLabels};
use crate::store::{
    Audit, CatalogItem, Command, ConsignmentState, NewConsignment, OrderRecord, PARCEL_SIDE_MM_MAX,
    PARCEL_WEIGHT_G_MAX, PARCELS_MAX, Parcel, PickConfirmation, ReturnLine, Store, StoreError, WRITE_TIMEOUT, cmd,
};
use axum::http::Method;
use oms_service::audit::Actor;
use oms_service::auth::{ANY_ROLE, Access, Auth, Principal, Role, authorize};
use oms_service::guard::{MediaType, method_label, require_media_type};
use oms_service::request::{JSON_BODY_BYTES_MAX, order_request};
use oms_service::{JsonBody, Problem, RawBody};

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
        .routes(routes!(import_catalog))
        .routes(routes!(import_stock))
        .layer(DefaultBodyLimit::max(CSV_BODY_BYTES_MAX))
        .split_for_parts();
    let (json, mut doc) = OpenApiRouter::with_openapi(<Tags as utoipa::OpenApi>::openapi())
        .merge(oms_service::openapi::route())
        .routes(routes!(healthz))
        .routes(routes!(metrics))
        .routes(routes!(list_catalog))
        .routes(routes!(put_catalog, get_catalog))
        .routes(routes!(list_stock))
        .routes(routes!(receipt))
        .routes(routes!(adjustment))
        .routes(routes!(count))
        .routes(routes!(crate::receiving::list))
        .routes(routes!(crate::receiving::rmas))
        .routes(routes!(crate::receiving::receive_asn))
        .routes(routes!(crate::receiving::receive_po))
        .routes(routes!(get_stock))
        .routes(routes!(get_ledger))
        .routes(routes!(create_order, list_orders))
        .routes(routes!(get_order))
        .routes(routes!(confirm_picks))
        .routes(routes!(pack))
        .routes(routes!(ship))
        .routes(routes!(deliver))
        .routes(routes!(cancel))
        .routes(routes!(reaccept))
        .routes(routes!(reject_assignment))
        .routes(routes!(receive_return))
        .routes(routes!(refund))
        .routes(routes!(audit_ledger))
        .routes(routes!(audit_events))
        .routes(routes!(crate::events::feed))
        .routes(routes!(create_wave))
        .routes(routes!(get_wave))
        .routes(routes!(list_consignments))
        .routes(routes!(get_consignment))
        .routes(routes!(get_label))
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CatalogBody {
    name: String,
    bin: String,
}

#[utoipa::path(put, path = "/v1/catalog/{sku}", tag = "catalog", params(("sku" = String, Path, description = "The SKU")), request_body = CatalogBody,
    responses((status = 200, description = "The item as stored", body = CatalogItem)))]
async fn put_catalog(
    State(st): State<AppState>,
    actor: Actor,
    Path(sku): Path<String>,
    JsonBody(b): JsonBody<CatalogBody>,
) -> Result<Response, Problem> {
    let sku = sku_path(&sku)?;
    text("name", &b.name, true)?;
    text("bin", &b.bin, false)?;
    let item = exec(&st, &actor, None, cmd::PutCatalog(CatalogItem { sku, name: b.name, bin: b.bin })).await?;
    Ok(Json(item).into_response())
}

#[utoipa::path(get, path = "/v1/catalog/{sku}", tag = "catalog", params(("sku" = String, Path, description = "The SKU")),
    responses((status = 200, description = "The item", body = CatalogItem)))]
async fn get_catalog(State(st): State<AppState>, Path(sku): Path<String>) -> Result<Response, Problem> {
    let sku = sku_path(&sku)?;
    match st.store.catalog_item(&sku)? {
        Some(i) => Ok(Json(i).into_response()),
        None => Err(StoreError::UnknownSku(sku).into()),
    }
}

#[utoipa::path(get, path = "/v1/catalog", tag = "catalog", params(PageQuery),
    responses((status = 200, description = "A page of items by SKU", body = CatalogPage)))]
async fn list_catalog(State(st): State<AppState>, Q(q): Q) -> Result<Response, Problem> {
    let items = st.store.catalog(q.after.as_deref(), q.limit())?;
    let next_after = items.last().map(|i| i.sku.clone());
    Ok(Json(CatalogPage { items, next_after }).into_response())
}

/// A page of the catalog.
#[derive(Serialize, ToSchema)]
struct CatalogPage {
    /// Items by SKU.
    items: Vec<CatalogItem>,
    /// `after` of the next page; null on an empty page.
    next_after: Option<Sku>,
}

/// A page of stock figures.
#[derive(Serialize, ToSchema)]
struct StockPage {
    /// Figures by SKU.
    items: Vec<StockView>,
    /// `after` of the next page; null on an empty page.
    next_after: Option<Sku>,
}

/// A page of one SKU's ledger.
#[derive(Serialize, ToSchema)]
struct LedgerPage {
    /// The SKU.
    sku: Sku,
    /// Entries by sequence.
    entries: Vec<crate::store::LedgerEntry>,
    /// `after` of the next page; null on an empty page.
    next_after: Option<u64>,
}

/// What a stock movement answers.
#[derive(Serialize, ToSchema)]
struct StockOutcome {
    /// The ledger entry written.
    entry: crate::store::LedgerEntry,
    /// The SKU's figures after it.
    stock: StockView,
}

/// A page of orders.
#[derive(Serialize, ToSchema)]
struct OrdersPage {
    /// Orders by id (a channel key's only its channel's).
    orders: Vec<OrderRecord>,
    /// `after` of the next page; null when this page was the last.
    next_after: Option<OrderId>,
}

/// What the ledger check found.
#[derive(Serialize, ToSchema)]
struct LedgerAudit {
    /// Every balance equals the replay of its ledger.
    consistent: bool,
    /// The SKUs whose balance does not.
    mismatched_skus: Vec<Sku>,
}

/// Stock figures of one SKU as the API shows them.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StockView {
    /// The SKU.
    pub sku: Sku,
    /// Units in bins.
    pub on_hand: u64,
    /// Units promised to orders.
    pub reserved: u64,
    /// Units that can be promised.
    pub available: u64,
    /// Units picked and waiting to ship.
    pub staged: u64,
    /// How `available` splits between this site's own channel and the hub (escrow).
    pub escrow: Option<EscrowFigures>,
}

impl StockView {
    fn new(store: &Store, sku: Sku, b: Balance) -> Result<Self, StoreError> {
        let escrow = store.escrow(&sku)?.as_ref().map(crate::escrow::figures);
        Ok(StockView {
            sku,
            on_hand: b.on_hand,
            reserved: b.reserved,
            available: b.available(),
            staged: b.staged,
            escrow,
        })
    }
}

#[utoipa::path(get, path = "/v1/stock/{sku}", tag = "stock", params(("sku" = String, Path, description = "The SKU")),
    responses((status = 200, description = "The SKU's figures", body = StockView)))]
async fn get_stock(State(st): State<AppState>, Path(sku): Path<String>) -> Result<Response, Problem> {
    let sku = sku_path(&sku)?;
    match st.store.balance(&sku)? {
        Some(b) => Ok(Json(StockView::new(&st.store, sku, b)?).into_response()),
        None => Err(StoreError::UnknownSku(sku).into()),
    }
}

#[utoipa::path(get, path = "/v1/stock", tag = "stock", params(PageQuery),
    responses((status = 200, description = "A page of balances by SKU", body = StockPage)))]
async fn list_stock(State(st): State<AppState>, Q(q): Q) -> Result<Response, Problem> {
    let items = st
        .store
        .balances(q.after.as_deref(), q.limit())?
        .into_iter()
        .map(|(s, b)| StockView::new(&st.store, s, b))
        .collect::<Result<Vec<StockView>, StoreError>>()?;
    let next_after = items.last().map(|i| i.sku.clone());
    Ok(Json(StockPage { items, next_after }).into_response())
}

#[utoipa::path(get, path = "/v1/stock/{sku}/ledger", tag = "stock", params(("sku" = String, Path, description = "The SKU"), PageQuery),
    responses((status = 200, description = "The SKU's ledger entries after `after`", body = LedgerPage)))]
async fn get_ledger(State(st): State<AppState>, Path(sku): Path<String>, Q(q): Q) -> Result<Response, Problem> {
    let sku = sku_path(&sku)?;
    if st.store.catalog_item(&sku)?.is_none() {
        return Err(StoreError::UnknownSku(sku).into());
    }
    let after = match q.after.as_deref() {
        None => 0,
        Some(a) => a.parse::<u64>().map_err(|_| {
            Problem::new(StatusCode::BAD_REQUEST, "invalid_query", "after must be a ledger sequence number")
        })?,
    };
    let entries = st.store.ledger(&sku, after, q.limit())?;
    let next_after = entries.last().map(|e| e.seq);
    Ok(Json(LedgerPage { sku, entries, next_after }).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ReceiptBody {
    sku: Sku,
    qty: i64,
    note: Option<String>,
}

pub(crate) fn qty_u32(field: &str, q: i64) -> Result<u32, Problem> {
    let v = u32::try_from(q).unwrap_or(0);
    check_qty(field, v).map_err(Problem::from)?;
    Ok(v)
}

async fn stock_outcome(st: &AppState, actor: &Actor, cmd: cmd::Stock) -> Result<Response, Problem> {
    let e = exec(st, actor, None, cmd).await?;
    let view = StockView::new(&st.store, e.sku.clone(), e.balance)?;
    Ok((StatusCode::CREATED, Json(StockOutcome { entry: e, stock: view })).into_response())
}

#[utoipa::path(post, path = "/v1/stock/receipts", tag = "stock", request_body(content = ReceiptBody,
    example = json!({"sku": "TSHIRT-RED-M", "qty": 40, "note": "delivery note 8812"})),
    responses((status = 201, description = "The ledger entry and the SKU's figures after it", body = StockOutcome)))]
async fn receipt(
    State(st): State<AppState>,
    actor: Actor,
    JsonBody(b): JsonBody<ReceiptBody>,
) -> Result<Response, Problem> {
    let qty = qty_u32("qty", b.qty)?;
    if let Some(n) = &b.note {
        text("note", n, false)?;
    }
    stock_outcome(&st, &actor, cmd::Stock { sku: b.sku, movement: Movement::Receipt { qty, note: b.note } }).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AdjustBody {
    sku: Sku,
    delta: i64,
    reason: String,
}

#[utoipa::path(post, path = "/v1/stock/adjustments", tag = "stock", request_body = AdjustBody,
    responses((status = 201, description = "The ledger entry and the SKU's figures after it", body = StockOutcome)))]
async fn adjustment(
    State(st): State<AppState>,
    actor: Actor,
    JsonBody(b): JsonBody<AdjustBody>,
) -> Result<Response, Problem> {
    if b.delta == 0 || b.delta.unsigned_abs() > u64::from(oms_protocol::domain::QTY_MAX) {
        return Err(ValidationError::new(
            "invalid_quantity",
            "delta",
            format!("must be a non-zero whole number within ±{}", oms_protocol::domain::QTY_MAX),
        )
        .into());
    }
    text("reason", &b.reason, true)?;
    stock_outcome(
        &st,
        &actor,
        cmd::Stock { sku: b.sku, movement: Movement::Adjustment { delta: b.delta, reason: b.reason } },
    )
    .await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CountBody {
    sku: Sku,
    counted: i64,
}

#[utoipa::path(post, path = "/v1/stock/counts", tag = "stock", request_body = CountBody,
    responses((status = 201, description = "The ledger entry and the SKU's figures after it", body = StockOutcome)))]
async fn count(
    State(st): State<AppState>,
    actor: Actor,
    JsonBody(b): JsonBody<CountBody>,
) -> Result<Response, Problem> {
    let counted = u64::try_from(b.counted).ok().filter(|c| *c <= 1_000_000_000).ok_or_else(|| {
        Problem::from(ValidationError::new("invalid_quantity", "counted", "must be a whole number from 0"))
    })?;
    stock_outcome(&st, &actor, cmd::Stock { sku: b.sku, movement: Movement::CycleCount { counted, delta: 0 } }).await
}

/// An order as the answer to a write; `replayed` adds `idempotent-replayed: true`.
fn order_response(record: OrderRecord, status: StatusCode, replayed: bool) -> Result<Response, Problem> {
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
async fn create_order(
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
async fn get_order(State(st): State<AppState>, caller: Principal, Path(id): Path<String>) -> Result<Response, Problem> {
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

/// Orders by id; a channel key sees only its own channel's, so its pages may be short (even empty) and still
/// not be the last: follow `next_after` until it is null.
#[utoipa::path(get, path = "/v1/orders", tag = "orders", params(PageQuery),
    responses((status = 200, description = "A page of orders by id", body = OrdersPage)))]
async fn list_orders(State(st): State<AppState>, caller: Principal, Q(q): Q) -> Result<Response, Problem> {
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
struct PicksBody {
    lines: Vec<PickConfirmation>,
    /// Why a line was picked short, for the timeline.
    reason: Option<String>,
}

#[utoipa::path(post, path = "/v1/orders/{id}/picks", tag = "orders", params(("id" = String, Path, description = "The order id")),
    request_body = PicksBody,
    responses((status = 200, description = "The order after the change", body = OrderRecord)))]
async fn confirm_picks(
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

/// Parses an optional JSON body: an empty body means the defaults.
fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T, Problem> {
    if body.iter().all(u8::is_ascii_whitespace) { Ok(T::default()) } else { oms_service::parse_json(body) }
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
async fn pack(
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
async fn list_consignments(State(st): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, Problem> {
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
async fn get_consignment(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response, Problem> {
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
struct ShipBody {
    carrier: String,
    tracking: String,
}

#[utoipa::path(post, path = "/v1/orders/{id}/ship", tag = "orders", params(("id" = String, Path, description = "The order id")),
    request_body(content = ShipBody, example = json!({"carrier": "DHL", "tracking": "JD014600006281234567"})),
    responses((status = 200, description = "The order, shipped", body = OrderRecord)))]
async fn ship(
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
async fn deliver(State(st): State<AppState>, actor: Actor, Path(id): Path<String>) -> Result<Response, Problem> {
    let order = order_path(&id)?;
    order_response(exec(&st, &actor, Some(order.to_string()), cmd::Deliver { order }).await?, StatusCode::OK, false)
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
async fn cancel(
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
async fn reject_assignment(
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
async fn reaccept(State(st): State<AppState>, actor: Actor, Path(id): Path<String>) -> Result<Response, Problem> {
    let order = order_path(&id)?;
    order_response(exec(&st, &actor, Some(order.to_string()), cmd::Reaccept { order }).await?, StatusCode::OK, false)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ReturnBody {
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
async fn receive_return(
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
async fn refund(
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
async fn create_wave(State(st): State<AppState>, actor: Actor, RawBody(body): RawBody) -> Result<Response, Problem> {
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
async fn get_wave(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response, Problem> {
    let id = id.parse::<u64>().map_err(|_| {
        Problem::new(StatusCode::NOT_FOUND, "wave_not_found", format!("pick wave {id:?} does not exist"))
    })?;
    match st.store.wave(id)? {
        Some(w) => Ok(Json(w).into_response()),
        None => Err(StoreError::WaveNotFound(id).into()),
    }
}

/// Replays the whole ledger and compares it with the stored balances: an operator's audit (O(ledger)).
#[utoipa::path(get, path = "/v1/audit/ledger", tag = "audit",
    responses((status = 200, description = "Whether every balance matches its ledger", body = LedgerAudit)))]
async fn audit_ledger(State(st): State<AppState>) -> Result<Response, Problem> {
    let store = st.store.clone();
    let bad = tokio::task::spawn_blocking(move || store.verify_ledger()).await.map_err(|e| {
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("the audit task failed: {e}"))
    })??;
    Ok(Json(LedgerAudit { consistent: bad.is_empty(), mismatched_skus: bad }).into_response())
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

#[utoipa::path(post, path = "/v1/import/catalog", tag = "import", request_body(content = String, content_type = "text/csv"),
    responses((status = 200, description = "What was imported", body = import::Report)))]
async fn import_catalog(State(st): State<AppState>, actor: Actor, RawBody(body): RawBody) -> Result<Response, Problem> {
    let audit = Some(Audit { actor, target: None });
    let report = import::import(&st.store, Kind::Catalog, body.as_ref(), audit, |_| {}).await?;
    Ok(Json(report).into_response())
}

#[utoipa::path(post, path = "/v1/import/stock", tag = "import", request_body(content = String, content_type = "text/csv"),
    responses((status = 200, description = "What was imported", body = import::Report)))]
async fn import_stock(State(st): State<AppState>, actor: Actor, RawBody(body): RawBody) -> Result<Response, Problem> {
    let audit = Some(Audit { actor, target: None });
    let report = import::import(&st.store, Kind::Stock, body.as_ref(), audit, |_| {}).await?;
    Ok(Json(report).into_response())
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
