//! Forecasting endpoints of the hub's HTTP API, on the demand history of [`crate::demand`].
//!
//! - `GET /v1/forecast/{sku}?site=&h=28&basis=ordered|shipped&service_level=&lead_time_days=&order_cycle_days=`:
//!   history summaries (ordered and shipped), chosen model, daily point forecast with 10/50/90% quantiles,
//!   safety stock, reorder point, days of cover, expected stock-out date and reorder suggestion for one SKU at
//!   one site (the network when `site` is omitted), using the available stock from the stock documents.
//!   `basis` picks the history forecast (default `ordered`).
//! - `GET /v1/replenishment?basis=&lead_time_days=&service_level=&order_cycle_days=&all=false&limit=&after=&format=json|csv`:
//!   the replenishment figures of every SKU × site with enough demand history, most urgent first (earliest
//!   stock-out, then largest shortfall); only rows with an order due unless `all=true`. Paged by `limit` (at
//!   most [`REPLENISHMENT_PAGE_MAX`]) and `after` (the `key` of the last row of the previous page).
//!
//! Service level, lead time and order cycle come from the `[forecast]` configuration per site, SKU or site
//! and SKU ([`crate::forecast_config`]); a query parameter overrides them. Every response says which value
//! was used and where it came from (`query`, `site_sku`, `sku`, `site`, `default`, `supplier`). Stock on
//! order is what open purchase orders still bring (`on_order_source: "purchase_orders"`, see
//! [`crate::purchasing`]); each row names the SKU's supplier and `po_qty`, the suggestion rounded up to its
//! MOQ and order multiple. The configuration reaches the
//! handlers as an [`axum::Extension`] ([`settings`]); without it the built-in defaults apply.
//!
//! Errors are RFC 9457 problem documents (`application/problem+json`) with a machine-readable `code`:
//! `invalid_query` (400), `unknown_sku` / `unknown_site` (404), `insufficient_history` (422),
//! `forecast_failed` (500). Query strings are parsed here rather than by axum's extractor so that a bad
//! parameter yields such a document too.

use std::collections::HashMap;
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use oms_service::now_ms;
use serde_json::{Value, json};

use crate::demand::{
    Basis, DAY_MS, DemandCache, DemandError, History, ON_ORDER_SOURCE, PlanParams, QUANTILES, forecast_item, iso_date,
    resolved_with_supplier, round3, to_csv,
};
use crate::forecast_config::{
    ForecastConfig, Override, Param, check_lead_time, check_order_cycle, check_service_level,
};
pub use crate::forecast_config::{LEAD_TIME_DAYS_MAX, SERVICE_LEVEL_MAX, SERVICE_LEVEL_MIN};
use crate::server::Hub;

/// Largest horizon of `GET /v1/forecast`.
pub const H_MAX: usize = 365;
/// Days of history `GET /v1/forecast` lists day by day (`history.recent`).
pub const RECENT_DAYS: usize = 91;
/// Largest page of `GET /v1/replenishment`.
pub const REPLENISHMENT_PAGE_MAX: usize = 1_000;

/// The `[forecast]` configuration as the handlers receive it (an [`axum::Extension`]).
#[derive(Debug, Clone)]
pub struct ForecastSettings(pub Arc<ForecastConfig>);

/// The layer that hands `config` to the forecasting routes: `router.layer(settings(cfg.forecast))`.
pub fn settings(config: ForecastConfig) -> Extension<ForecastSettings> {
    Extension(ForecastSettings(Arc::new(config)))
}

/// State of the forecasting routes.
#[derive(Clone)]
pub struct ForecastState {
    hub: Arc<Hub>,
    cache: Arc<DemandCache>,
    /// Used when no [`ForecastSettings`] extension is installed.
    defaults: Arc<ForecastConfig>,
}

impl ForecastState {
    fn config(&self, settings: Option<Extension<ForecastSettings>>) -> Arc<ForecastConfig> {
        settings.map_or_else(|| self.defaults.clone(), |Extension(ForecastSettings(c))| c)
    }
}

/// The forecasting routes, with their own demand cache.
pub fn router(hub: Arc<Hub>) -> OpenApiRouter {
    let state = ForecastState { cache: hub.demand.clone(), hub, defaults: Arc::new(ForecastConfig::default()) };
    OpenApiRouter::new()
        .routes(routes!(forecast))
        .routes(routes!(replenishment))
        // A screen: not in the OpenAPI document (`oms_service::openapi::is_screen`).
        .route("/ui/forecast/{sku}", get(forecast_screen))
        .with_state(state)
}

/// A problem document.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code.
    pub code: &'static str,
    /// Human-readable detail.
    pub detail: String,
}

/// Runs a planner read on the hub's gate ([`crate::gate`]): `503 overloaded` if it cannot start in time.
async fn gated<T: Send + 'static>(
    hub: &Hub,
    f: impl FnOnce() -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    hub.planner_reads.read(f).await.unwrap_or_else(|busy| {
        Err(Problem::new(
            StatusCode::from_u16(busy.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            busy.code,
            busy.detail,
        ))
    })
}

impl Problem {
    fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Problem {
        Problem { status, code, detail: detail.into() }
    }

    fn invalid(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "invalid_query", detail)
    }
}

impl From<DemandError> for Problem {
    fn from(e: DemandError) -> Problem {
        let status = match e {
            DemandError::UnknownSku(_) => StatusCode::NOT_FOUND,
            DemandError::UnknownSite(_) => StatusCode::NOT_FOUND,
            DemandError::InsufficientHistory { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            DemandError::Forecast(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let code = match e {
            DemandError::UnknownSku(_) => "unknown_sku",
            DemandError::UnknownSite(_) => "unknown_site",
            DemandError::InsufficientHistory { .. } => "insufficient_history",
            DemandError::Forecast(_) => "forecast_failed",
        };
        Problem::new(status, code, e.to_string())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = json!({
            "type": format!("https://oms.dev/problems/{}", self.code.replace('_', "-")),
            "title": self.status.canonical_reason().unwrap_or("error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
        });
        (self.status, [(header::CONTENT_TYPE, "application/problem+json")], body.to_string()).into_response()
    }
}

type Params = HashMap<String, String>;

/// Purchasing's storage failed while reading what is on order.
fn supply_problem(e: crate::purchasing::PurchasingError) -> Problem {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.code(), e.to_string())
}

fn parse<T: std::str::FromStr>(q: &Params, name: &str, default: T) -> Result<T, Problem> {
    match q.get(name) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| Problem::invalid(format!("{name}: cannot parse {v:?}"))),
    }
}

fn check_known(q: &Params, known: &[&str]) -> Result<(), Problem> {
    match q.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(Problem::invalid(format!("unknown parameter {k:?}"))),
        None => Ok(()),
    }
}

fn parse_opt<T: std::str::FromStr>(q: &Params, name: &str) -> Result<Option<T>, Problem> {
    q.get(name)
        .map(|v| v.trim().parse().map_err(|_| Problem::invalid(format!("{name}: cannot parse {v:?}"))))
        .transpose()
}

/// The planning parameters a query sets (each optional; bounded like the configuration).
fn overrides(q: &Params) -> Result<Override, Problem> {
    let invalid = |e: crate::forecast_config::ForecastConfigError| Problem::invalid(e.to_string());
    Ok(Override {
        service_level: parse_opt(q, "service_level")?
            .map(|v| check_service_level("query", v))
            .transpose()
            .map_err(invalid)?,
        lead_time_days: parse_opt(q, "lead_time_days")?
            .map(|v| check_lead_time("query", v))
            .transpose()
            .map_err(invalid)?,
        order_cycle_days: parse_opt(q, "order_cycle_days")?
            .map(|v| check_order_cycle("query", v))
            .transpose()
            .map_err(invalid)?,
    })
}

fn basis(q: &Params) -> Result<Basis, Problem> {
    match q.get("basis") {
        None => Ok(Basis::Ordered),
        Some(b) => Basis::parse(b.trim())
            .ok_or_else(|| Problem::invalid(format!("basis must be ordered or shipped, got {b:?}"))),
    }
}

/// Validated query of `GET /v1/forecast/{sku}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ForecastQuery {
    /// Site, or `None` for the network.
    pub site: Option<String>,
    /// Horizon, days.
    pub h: usize,
    /// Which history to forecast.
    pub basis: Basis,
    /// Planning parameters set by the query.
    pub overrides: Override,
}

/// Parses and bounds the query of `GET /v1/forecast/{sku}`.
pub fn forecast_query(q: &Params) -> Result<ForecastQuery, Problem> {
    check_known(q, &["site", "h", "basis", "service_level", "lead_time_days", "order_cycle_days"])?;
    let h: usize = parse(q, "h", 28)?;
    if !(1..=H_MAX).contains(&h) {
        return Err(Problem::invalid(format!("h must be in 1..={H_MAX}")));
    }
    let site = q.get("site").map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    Ok(ForecastQuery { site, h, basis: basis(q)?, overrides: overrides(q)? })
}

fn span(h: &History) -> HistorySpan {
    // cannot truncate: usize has at most 64 bits (and a history at most HISTORY_DAYS_MAX days).
    HistorySpan {
        days: h.values.len(),
        start: iso_date(h.start_day),
        end: iso_date(h.start_day + h.values.len().saturating_sub(1) as u64),
        total: round3(h.values.iter().sum()),
    }
}

fn param<T: Copy>(p: &Param<T>) -> ParamView<T> {
    ParamView { value: p.value, source: p.source.as_str() }
}

/// The answer of `GET /v1/forecast/{sku}` (README, Forecast): the forecast with its intervals, the history
/// it was fitted on, the planning parameters and the reorder advice.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ForecastAnswer {
    /// The SKU.
    pub sku: String,
    /// The site, or `null` for the network.
    pub site: Option<String>,
    /// The day the forecast starts, `YYYY-MM-DD`.
    pub as_of: String,
    /// `ordered` or `shipped`.
    pub basis: &'static str,
    /// The history fitted on.
    pub history: HistoryView,
    /// The model chosen.
    pub model: &'static str,
    /// Why a simpler model was used, if one was.
    pub fallback: Option<String>,
    /// Horizon, days.
    pub h: usize,
    /// One row per day of the horizon.
    pub forecast: Vec<ForecastDay>,
    /// Lead time used, days.
    pub lead_time_days: usize,
    /// Cycle service level used.
    pub service_level: f64,
    /// Days between orders used.
    pub order_cycle_days: usize,
    /// Each parameter with where it came from.
    pub parameters: Parameters,
    /// Units available now (on hand − reserved).
    pub available: u64,
    /// Units on open purchase orders.
    pub on_order: u64,
    /// Where `on_order` comes from (`purchase_orders`).
    pub on_order_source: &'static str,
    /// The supplier chosen for the SKU, if any offers it.
    pub supplier: Option<String>,
    /// Expected demand over the lead time.
    pub lead_time_demand: f64,
    /// Safety stock.
    pub safety_stock: f64,
    /// Reorder point.
    pub reorder_point: f64,
    /// Available plus on order.
    pub inventory_position: f64,
    /// Order-up-to level.
    pub order_up_to: f64,
    /// Days the stock lasts at the forecast.
    pub days_of_cover: Option<f64>,
    /// Day of the horizon the stock runs out, from 0.
    pub stockout_day: Option<usize>,
    /// That day, `YYYY-MM-DD`.
    pub stockout_date: Option<String>,
    /// What to order now, if anything.
    pub reorder: Option<Reorder>,
    /// Whether the demand history left orders out (its limit).
    pub demand_orders_truncated: bool,
}

/// The history a forecast was fitted on.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct HistoryView {
    /// `ordered` or `shipped`.
    pub basis: &'static str,
    /// Its span.
    #[serde(flatten)]
    pub span: HistorySpan,
    /// The last days, oldest first, for charts.
    pub recent: Vec<f64>,
    /// The ordered history's span, if there is one.
    pub ordered: Option<HistorySpan>,
    /// The shipped history's span, if there is one.
    pub shipped: Option<HistorySpan>,
}

/// The span of one history.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct HistorySpan {
    /// Days.
    pub days: usize,
    /// First day, `YYYY-MM-DD`.
    pub start: String,
    /// Last day.
    pub end: String,
    /// Units.
    pub total: f64,
}

/// One day of a forecast: the mean and the 10/50/90 % quantiles.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ForecastDay {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// Mean units.
    pub mean: f64,
    /// 10 % quantile.
    pub p10: Option<f64>,
    /// Median.
    pub p50: Option<f64>,
    /// 90 % quantile.
    pub p90: Option<f64>,
}

/// The planning parameters with their sources.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Parameters {
    /// Cycle service level.
    pub service_level: ParamView<f64>,
    /// Lead time, days.
    pub lead_time_days: ParamView<usize>,
    /// Days between orders.
    pub order_cycle_days: ParamView<usize>,
}

/// A parameter's value and where it came from.
#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub struct ParamView<T> {
    /// The value used.
    pub value: T,
    /// Where it came from.
    pub source: &'static str,
}

/// What to order now.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Reorder {
    /// Units.
    pub qty: u64,
    /// Order by this day, `YYYY-MM-DD`.
    pub order_by: String,
}

/// `GET /v1/forecast/{sku}` on already-read state, at epoch day `today`, with the planning parameters of
/// `config` (for tests and the handler).
pub fn forecast_answer(
    cache: &DemandCache,
    hub: &Hub,
    config: &ForecastConfig,
    sku: &str,
    q: &Params,
    today: u64,
) -> Result<Value, Problem> {
    forecast_typed(cache, hub, config, sku, q, today).map(|a| json!(a))
}

/// [`forecast_answer`] as the handler answers it.
pub fn forecast_typed(
    cache: &DemandCache,
    hub: &Hub,
    config: &ForecastConfig,
    sku: &str,
    q: &Params,
    today: u64,
) -> Result<ForecastAnswer, Problem> {
    let fq = forecast_query(q)?;
    let snap = cache.snapshot(&hub.docs, today);
    let site = fq.site.as_deref();
    if let Some(site) = site
        && !snap.index.has_site(site)
        && !snap.stock.sites.iter().any(|s| s == site)
    {
        return Err(DemandError::UnknownSite(site.to_owned()).into());
    }
    if snap.index.series(sku, None).is_none() && !snap.stock.has_sku(sku) {
        return Err(DemandError::UnknownSku(sku.to_owned()).into());
    }
    let ordered = snap.index.history_of(Basis::Ordered, sku, site);
    let shipped = snap.index.history_of(Basis::Shipped, sku, site);
    let history = match fq.basis {
        Basis::Ordered => ordered.clone(),
        Basis::Shipped => shipped.clone(),
    }
    .ok_or(DemandError::InsufficientHistory { days: 0, needed: crate::demand::MIN_HISTORY_DAYS })?;
    let supply = hub.purchasing.supply(hub.intake.db()).map_err(supply_problem)?;
    let resolved = resolved_with_supplier(config.resolve(sku, site, &fq.overrides), supply.offers.get(sku));
    let params = PlanParams::from_resolved(fq.h, &resolved);
    let available = snap.stock.available(sku, site);
    // At a site, what its open orders bring; for the network, every site's.
    let on_order: u64 = supply
        .on_order
        .iter()
        .filter(|((k, s), _)| k == sku && site.is_none_or(|site| site == s))
        .map(|(_, o)| o.qty)
        .fold(0, u64::saturating_add);
    let item = forecast_item(history, available, on_order, snap.index.today, &params)?;
    let f = &item.forecast;
    let quantile = |level: f64, j: usize| {
        f.quantiles.iter().find(|s| s.level == level).and_then(|s| s.values.get(j)).copied().map(round3)
    };
    // cannot truncate (`as u64` here and for the history's end below): usize has at most 64 bits, and both are
    // bounded by a horizon of at most H_MAX and a history of at most HISTORY_DAYS_MAX days.
    let days: Vec<ForecastDay> = (0..f.mean.len())
        .map(|j| ForecastDay {
            date: iso_date(item.today + j as u64),
            mean: round3(f.mean[j]),
            p10: quantile(QUANTILES[0], j),
            p50: quantile(QUANTILES[1], j),
            p90: quantile(QUANTILES[2], j),
        })
        .collect();
    let p = &item.plan;
    let hist = &item.history;
    Ok(ForecastAnswer {
        sku: sku.to_owned(),
        site: site.map(str::to_owned),
        as_of: iso_date(item.today),
        basis: fq.basis.as_str(),
        history: HistoryView {
            basis: fq.basis.as_str(),
            span: span(hist),
            // The last RECENT_DAYS days, oldest first, for charts.
            recent: hist.values[hist.values.len().saturating_sub(RECENT_DAYS)..].iter().map(|v| round3(*v)).collect(),
            ordered: ordered.as_ref().map(span),
            shipped: shipped.as_ref().map(span),
        },
        model: f.model.name(),
        fallback: f.fallback.map(|fb| format!("{fb:?}")),
        h: f.mean.len(),
        forecast: days,
        lead_time_days: params.lead_time_days,
        service_level: params.service_level,
        order_cycle_days: params.order_cycle_days,
        parameters: Parameters {
            service_level: param(&resolved.service_level),
            lead_time_days: param(&resolved.lead_time_days),
            order_cycle_days: param(&resolved.order_cycle_days),
        },
        available,
        on_order,
        on_order_source: ON_ORDER_SOURCE,
        supplier: supply.offers.get(sku).map(|(s, _)| s.id.to_string()),
        lead_time_demand: round3(p.lead_time_demand),
        safety_stock: round3(p.safety_stock),
        reorder_point: round3(p.reorder_point),
        inventory_position: round3(p.inventory_position),
        order_up_to: round3(p.order_up_to),
        days_of_cover: p.days_of_cover.map(round3),
        stockout_day: p.stockout_day,
        stockout_date: item.stockout_day().map(iso_date),
        reorder: item.reorder_qty().map(|qty| Reorder { qty, order_by: iso_date(item.today) }),
        demand_orders_truncated: snap.index.truncated,
    })
}

#[utoipa::path(get, path = "/v1/forecast/{sku}", tag = "forecast", params(("sku" = String, Path, description = "The SKU"),
        ("site" = Option<String>, Query, description = "One site (default: the network)"),
        ("h" = Option<u32>, Query, description = "Horizon in days (default 28)"),
        ("basis" = Option<String>, Query, description = "Which history: orders or shipments"),
        ("service_level" = Option<f64>, Query, description = "Target service level, 0 to 1"),
        ("lead_time_days" = Option<u32>, Query, description = "Supplier lead time"),
        ("order_cycle_days" = Option<u32>, Query, description = "Days between orders")),
    responses((status = 200, description = "Forecast, its intervals and the reorder advice", body = ForecastAnswer)))]
async fn forecast(
    State(st): State<ForecastState>,
    settings: Option<Extension<ForecastSettings>>,
    Path(sku): Path<String>,
    Query(q): Query<Params>,
) -> Response {
    let today = now_ms() / DAY_MS;
    let config = st.config(settings);
    // Model fitting is CPU-bound: on the planner-read threads, off the async workers.
    let hub = st.hub.clone();
    match gated(&hub, move || forecast_typed(&st.cache, &st.hub, &config, &sku, &q, today)).await {
        Ok(v) => Json(v).into_response(),
        Err(p) => p.into_response(),
    }
}

/// The planner's forecast screen: the same answer as `GET /v1/forecast/{sku}`, drawn.
async fn forecast_screen(
    State(st): State<ForecastState>,
    settings: Option<Extension<ForecastSettings>>,
    session: oms_service::auth::session::UiSession,
    chrome: Extension<Arc<oms_service::web::Chrome>>,
    Path(sku): Path<String>,
    Query(q): Query<Params>,
) -> Response {
    let today = now_ms() / DAY_MS;
    let config = st.config(settings);
    let s = sku.clone();
    let hub = st.hub.clone();
    match gated(&hub, move || forecast_answer(&st.cache, &st.hub, &config, &s, &q, today)).await {
        Ok(v) => crate::ui::forecast_page(&chrome, &session, &sku, &v).into_response(),
        Err(p) => p.into_response(),
    }
}

/// `GET /v1/replenishment` on already-read state with the planning parameters of `config`: a JSON value,
/// or CSV text when `format=csv`.
pub fn replenishment_answer(
    cache: &DemandCache,
    hub: &Hub,
    config: &Arc<ForecastConfig>,
    q: &Params,
    today: u64,
) -> Result<Response, Problem> {
    check_known(
        q,
        &["basis", "lead_time_days", "service_level", "order_cycle_days", "format", "limit", "after", "all"],
    )?;
    let query = overrides(q)?;
    let basis = basis(q)?;
    let csv = match q.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => return Err(Problem::invalid(format!("format must be json or csv, got {other:?}"))),
    };
    let all: bool = parse(q, "all", false)?;
    let limit: usize = parse(q, "limit", REPLENISHMENT_PAGE_MAX)?;
    if !(1..=REPLENISHMENT_PAGE_MAX).contains(&limit) {
        return Err(Problem::invalid(format!("limit must be in 1..={REPLENISHMENT_PAGE_MAX}")));
    }
    let snap = cache.snapshot(&hub.docs, today);
    let supply = hub.purchasing.supply(hub.intake.db()).map_err(supply_problem)?;
    let run = cache.replenishment(&snap, basis, config, &query, &supply);
    let rows: Vec<_> = run.rows.iter().filter(|r| all || r.reorder_qty > 0).collect();
    let start = match q.get("after") {
        None => 0,
        Some(after) => match rows.iter().position(|r| &r.key == after) {
            Some(i) => i + 1,
            None => return Err(Problem::invalid(format!("after: no row {after:?} (the data may have changed)"))),
        },
    };
    let page: Vec<_> = rows.iter().skip(start).take(limit).map(|r| (*r).clone()).collect();
    let next_after = (start + page.len() < rows.len()).then(|| page.last().map(|r| r.key.clone())).flatten();
    if csv {
        let mut resp =
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/csv; charset=utf-8")], to_csv(&page)).into_response();
        if let Some(next) = next_after.and_then(|n| header::HeaderValue::from_str(&n).ok()) {
            resp.headers_mut().insert("x-next-after", next);
        }
        return Ok(resp);
    }
    Ok(Json(ReplenishmentAnswer {
        as_of: iso_date(today),
        basis: basis.as_str(),
        query: Override {
            service_level: query.service_level,
            lead_time_days: query.lead_time_days,
            order_cycle_days: query.order_cycle_days,
        },
        defaults: Defaults {
            lead_time_days: config.lead_time_days,
            order_cycle_days: config.order_cycle_days,
            service_level: config.service_level,
        },
        on_order_source: ON_ORDER_SOURCE,
        total: rows.len(),
        rows: page,
        next_after,
        skipped_insufficient_history: run.skipped_insufficient_history,
        skipped_failed: run.skipped_failed,
        truncated: run.truncated,
    })
    .into_response())
}

/// The JSON answer of `GET /v1/replenishment`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ReplenishmentAnswer {
    /// The day planned from, `YYYY-MM-DD`.
    as_of: String,
    /// `ordered` or `shipped`.
    basis: &'static str,
    /// The parameters the query set.
    query: Override,
    /// The configured defaults.
    defaults: Defaults,
    /// Where `on_order` comes from (`purchase_orders`).
    on_order_source: &'static str,
    /// Rows in all (every page).
    total: usize,
    /// This page, most urgent first.
    rows: Vec<crate::demand::Suggestion>,
    /// The row key to continue after, or `null` on the last page.
    next_after: Option<String>,
    /// Series skipped for too short a history.
    skipped_insufficient_history: usize,
    /// Series skipped because the forecast failed.
    skipped_failed: usize,
    /// More series than are planned, or the demand history was truncated.
    truncated: bool,
}

/// The configured planning defaults.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Defaults {
    /// Lead time, days.
    lead_time_days: usize,
    /// Days between orders.
    order_cycle_days: usize,
    /// Cycle service level.
    service_level: f64,
}

#[utoipa::path(get, path = "/v1/replenishment", tag = "forecast",
    params(("basis" = Option<String>, Query, description = "Which history: orders or shipments"),
        ("service_level" = Option<f64>, Query, description = "Target service level, 0 to 1"),
        ("lead_time_days" = Option<u32>, Query, description = "Supplier lead time"),
        ("order_cycle_days" = Option<u32>, Query, description = "Days between orders"),
        ("format" = Option<String>, Query, description = "json (default) or csv"),
        ("all" = Option<bool>, Query, description = "Every SKU, not only those to reorder"),
        ("after" = Option<String>, Query, description = "Continue after this SKU"),
        ("limit" = Option<u64>, Query, description = "Page size (capped)")),
    responses((status = 200, description = "What to reorder, SKU by SKU; the same as csv", content((ReplenishmentAnswer = "application/json"), (String = "text/csv")))))]
async fn replenishment(
    State(st): State<ForecastState>,
    settings: Option<Extension<ForecastSettings>>,
    Query(q): Query<Params>,
) -> Response {
    let today = now_ms() / DAY_MS;
    let config = st.config(settings);
    let hub = st.hub.clone();
    match gated(&hub, move || replenishment_answer(&st.cache, &st.hub, &config, &q, today)).await {
        Ok(r) => r,
        Err(p) => p.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demand::test_support::{TODAY, TestOrder, hub_docs};
    use crate::server::ServerTuning;
    use oms_protocol::domain::FulfillmentState;

    fn hub(dir: &std::path::Path, stock: &[(&str, &str, u64)]) -> Hub {
        let mut orders: Vec<TestOrder> = Vec::new();
        // 60 days of steady demand for A at wh1 and wh2; B only for three days at wh1.
        for d in 0..60u64 {
            let lines: &[(&str, u32)] = if d % 2 == 0 { &[("A", 9)] } else { &[("A", 11)] };
            orders.push(("wh1", d + 1, TODAY - 60 + d, 10, FulfillmentState::Shipped, lines));
            orders.push(("wh2", d + 1, TODAY - 60 + d, 10, FulfillmentState::Accepted, &[("A", 5)]));
        }
        for d in 0..3u64 {
            orders.push(("wh1", 100 + d, TODAY - 3 + d, 10, FulfillmentState::Accepted, &[("B", 1)]));
        }
        let docs = hub_docs(dir, &orders, stock);
        let intake = crate::intake::Intake::open(&dir.join("intake.redb"), Default::default()).unwrap();
        let purchasing = crate::purchasing::Purchasing::new(Default::default(), dir, intake.db()).unwrap();
        Hub::new(
            docs,
            intake,
            crate::money::Money::new(Default::default(), Default::default()).unwrap(),
            purchasing,
            "acme",
            vec![9; 16],
            ServerTuning::default(),
        )
        .unwrap()
    }

    fn cfg() -> Arc<ForecastConfig> {
        Arc::new(ForecastConfig::default())
    }

    fn q(pairs: &[(&str, &str)]) -> Params {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn forecast_endpoint_reorders_when_stock_is_low() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path(), &[("wh1", "A", 15), ("wh2", "A", 5_000)]);
        let cache = DemandCache::default();
        let v = forecast_answer(&cache, &hub, &cfg(), "A", &q(&[("site", "wh1"), ("h", "14")]), TODAY).unwrap();
        assert_eq!(v["history"]["days"], 60);
        assert_eq!(v["forecast"].as_array().unwrap().len(), 14);
        assert!(v["forecast"][0]["p90"].as_f64().unwrap() >= v["forecast"][0]["p10"].as_f64().unwrap());
        assert!(v["reorder"]["qty"].as_u64().unwrap() > 0, "{v}");
        assert_eq!(v["stockout_date"], iso_date(TODAY + 1));
        assert!(v["safety_stock"].as_f64().unwrap() > 0.0);

        let v = forecast_answer(&cache, &hub, &cfg(), "A", &q(&[("site", "wh2")]), TODAY).unwrap();
        assert!(v["reorder"].is_null(), "{v}");
        assert_eq!(v["available"], 5_000);
        // Network: 15 + 5000 units against 15 a day.
        let v = forecast_answer(&cache, &hub, &cfg(), "A", &q(&[]), TODAY).unwrap();
        assert_eq!(v["available"], 5_015);
        assert!(v["reorder"].is_null());
    }

    #[test]
    fn forecast_endpoint_errors() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path(), &[("wh1", "A", 15)]);
        let cache = DemandCache::default();
        let code =
            |sku: &str, p: &[(&str, &str)]| forecast_answer(&cache, &hub, &cfg(), sku, &q(p), TODAY).unwrap_err().code;
        assert_eq!(code("ZZZ", &[]), "unknown_sku");
        assert_eq!(code("A", &[("site", "nowhere")]), "unknown_site");
        assert_eq!(code("B", &[]), "insufficient_history");
        assert_eq!(code("B", &[("site", "wh2")]), "insufficient_history");
        for bad in [
            ("h", "0"),
            ("h", "366"),
            ("h", "x"),
            ("service_level", "0.9999"),
            ("service_level", "0.4"),
            ("order_cycle_days", "0"),
            ("basis", "returned"),
        ] {
            assert_eq!(code("A", &[bad]), "invalid_query", "{bad:?}");
        }
        assert_eq!(code("A", &[("lead_time_days", "0")]), "invalid_query");
        assert_eq!(code("A", &[("bogus", "1")]), "invalid_query");
        let p = forecast_answer(&cache, &hub, &cfg(), "B", &q(&[]), TODAY).unwrap_err();
        assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY);
        let resp = p.into_response();
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/problem+json");
    }

    #[tokio::test]
    async fn replenishment_json_csv_and_paging() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path(), &[("wh1", "A", 15), ("wh2", "A", 30)]);
        let cache = DemandCache::default();
        let body = |r: Response| async move {
            let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
            String::from_utf8(b.to_vec()).unwrap()
        };
        let r = replenishment_answer(&cache, &hub, &cfg(), &q(&[]), TODAY).unwrap();
        let v: Value = serde_json::from_str(&body(r).await).unwrap();
        assert_eq!(v["total"], 2);
        assert_eq!(v["skipped_insufficient_history"], 1);
        // wh1 runs out tomorrow, wh2 (30 units at 5 a day) later.
        assert_eq!(v["rows"][0]["key"], "wh1|A");
        assert_eq!(v["rows"][1]["key"], "wh2|A");

        let r = replenishment_answer(&cache, &hub, &cfg(), &q(&[("limit", "1")]), TODAY).unwrap();
        let v: Value = serde_json::from_str(&body(r).await).unwrap();
        assert_eq!(v["next_after"], "wh1|A");
        let r = replenishment_answer(&cache, &hub, &cfg(), &q(&[("limit", "1"), ("after", "wh1|A")]), TODAY).unwrap();
        let v: Value = serde_json::from_str(&body(r).await).unwrap();
        assert_eq!(v["rows"][0]["key"], "wh2|A");
        assert!(v["next_after"].is_null());

        let r = replenishment_answer(&cache, &hub, &cfg(), &q(&[("format", "csv")]), TODAY).unwrap();
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/csv; charset=utf-8");
        let csv = body(r).await;
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], crate::demand::CSV_HEADER);
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("A,wh1,"));
        for bad in [("format", "xml"), ("limit", "0"), ("after", "nope"), ("service_level", "1"), ("basis", "x")] {
            let p = replenishment_answer(&cache, &hub, &cfg(), &q(&[bad]), TODAY).unwrap_err();
            assert_eq!(p.code, "invalid_query", "{bad:?}");
        }
    }

    #[test]
    fn forecast_on_shipped_basis_and_both_summaries() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path(), &[("wh1", "A", 15)]);
        let cache = DemandCache::default();
        // wh1's orders are all shipped, 30 h after acceptance: the shipped series starts a day later and its
        // last order (accepted yesterday) ships today, which is not a complete day yet.
        let v = forecast_answer(&cache, &hub, &cfg(), "A", &q(&[("site", "wh1")]), TODAY).unwrap();
        assert_eq!(v["basis"], "ordered");
        assert_eq!(v["history"]["basis"], "ordered");
        assert_eq!(v["history"]["ordered"]["days"], 60);
        assert_eq!(v["history"]["ordered"]["total"], 600.0);
        assert_eq!(v["history"]["shipped"]["days"], 59);
        assert_eq!(v["history"]["shipped"]["total"], 589.0);
        assert_eq!(v["history"]["shipped"]["start"], iso_date(TODAY - 59));
        let s =
            forecast_answer(&cache, &hub, &cfg(), "A", &q(&[("site", "wh1"), ("basis", "shipped")]), TODAY).unwrap();
        assert_eq!(s["basis"], "shipped");
        assert_eq!(s["history"]["days"], 59);
        assert_eq!(s["history"]["total"], 589.0);
        // wh2 never shipped: the shipped summary is null and forecasting on it is a 422.
        let v = forecast_answer(&cache, &hub, &cfg(), "A", &q(&[("site", "wh2")]), TODAY).unwrap();
        assert!(v["history"]["shipped"].is_null(), "{v}");
        let p = forecast_answer(&cache, &hub, &cfg(), "A", &q(&[("site", "wh2"), ("basis", "shipped")]), TODAY)
            .unwrap_err();
        assert_eq!(p.code, "insufficient_history");
    }

    #[test]
    fn parameters_come_from_config_with_sources_and_query_wins() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path(), &[("wh1", "A", 15), ("wh2", "A", 5_000)]);
        let cache = DemandCache::default();
        let config: ForecastConfig =
            toml::from_str("service_level = 0.9\n[sites.wh1]\nlead_time_days = 12\n[skus.A]\nservice_level = 0.98")
                .unwrap();
        let v = forecast_answer(&cache, &hub, &config, "A", &q(&[("site", "wh1")]), TODAY).unwrap();
        assert_eq!(v["parameters"]["lead_time_days"], json!({"value": 12, "source": "site"}));
        assert_eq!(v["parameters"]["service_level"], json!({"value": 0.98, "source": "sku"}));
        assert_eq!(v["parameters"]["order_cycle_days"], json!({"value": 14, "source": "default"}));
        assert_eq!(v["lead_time_days"], 12);
        assert_eq!((v["on_order"].clone(), v["on_order_source"].clone()), (json!(0), json!("purchase_orders")));
        // About 10 a day over 12 days.
        assert!((v["lead_time_demand"].as_f64().unwrap() - 120.0).abs() < 15.0, "{v}");
        let v = forecast_answer(&cache, &hub, &config, "A", &q(&[("site", "wh1"), ("lead_time_days", "3")]), TODAY)
            .unwrap();
        assert_eq!(v["parameters"]["lead_time_days"], json!({"value": 3, "source": "query"}));
        // The network: site overrides do not apply.
        let v = forecast_answer(&cache, &hub, &config, "A", &q(&[]), TODAY).unwrap();
        assert_eq!(v["parameters"]["lead_time_days"], json!({"value": 7, "source": "default"}));
    }

    #[tokio::test]
    async fn replenishment_rows_carry_parameters_and_cache_follows_config() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path(), &[("wh1", "A", 15), ("wh2", "A", 30)]);
        let cache = DemandCache::default();
        let json_of = |r: Response| async move {
            let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
            serde_json::from_slice::<Value>(&b).unwrap()
        };
        let a = cfg();
        let v = json_of(replenishment_answer(&cache, &hub, &a, &q(&[("all", "true")]), TODAY).unwrap()).await;
        assert_eq!(v["rows"][0]["lead_time_source"], "default");
        assert_eq!(v["on_order_source"], "purchase_orders");
        assert_eq!(v["defaults"]["lead_time_days"], 7);
        let b: Arc<ForecastConfig> = Arc::new(toml::from_str("[sites.wh2]\nlead_time_days = 30").unwrap());
        let v = json_of(replenishment_answer(&cache, &hub, &b, &q(&[("all", "true")]), TODAY).unwrap()).await;
        let wh2 = v["rows"].as_array().unwrap().iter().find(|r| r["site"] == "wh2").unwrap().clone();
        assert_eq!((wh2["lead_time_days"].clone(), wh2["lead_time_source"].clone()), (json!(30), json!("site")));
        let v = json_of(
            replenishment_answer(&cache, &hub, &b, &q(&[("all", "true"), ("basis", "shipped")]), TODAY).unwrap(),
        )
        .await;
        assert_eq!(v["basis"], "shipped");
        assert_eq!(v["total"], 1, "only wh1 shipped: {v}");
        assert_eq!(v["rows"][0]["basis"], "shipped");
    }

    /// An admin key held in memory, for driving the router directly.
    const ADMIN_TOKEN: &str = "oms_00000000000000000000000000000000000000000000000000000000000000aa";

    fn admin_auth() -> Arc<oms_service::auth::Auth> {
        use oms_service::auth::{Auth, AuthConfig, Principal, Role};
        let admin = Principal { name: "test-admin".into(), role: Role::Admin, channel: None, supplier: None };
        Arc::new(Auth::in_memory(vec![(ADMIN_TOKEN.into(), admin, None)], AuthConfig::default(), crate::api::policy))
    }

    /// The served `GET /openapi.json` lists every route the hub serves (but the screens), and the reverse; a
    /// route added with plain `.route()` is named. Here, beside the other whole-router test, for its hub.
    #[tokio::test]
    async fn openapi_document_lists_every_route() {
        use tower::ServiceExt as _;
        let dir = tempfile::tempdir().unwrap();
        let app = crate::api::router(Arc::new(hub(dir.path(), &[])), admin_auth());
        let req = axum::http::Request::get("/openapi.json").body(axum::body::Body::empty()).unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "open: no key sent");
        let body = axum::body::to_bytes(resp.into_body(), 4 << 20).await.unwrap();
        let doc: utoipa::openapi::OpenApi = serde_json::from_slice(&body).unwrap();
        if let Err(e) = oms_service::openapi::check_complete(&app, &doc) {
            panic!("{e}");
        }
        let mut v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["openapi"], "3.1.0");
        // Every 2xx answer has a real schema; a bare object is named.
        assert_eq!(oms_service::openapi::untyped_responses(&v), Vec::<String>::new());
        let order = &v["paths"]["/v1/orders/{id}"]["get"]["responses"]["200"]["content"]["application/json"];
        assert_eq!(order["example"]["id"], "hub-42", "{order}");
        assert!(order["schema"]["$ref"].is_string() || order["schema"]["oneOf"].is_array(), "{order}");
        let mut bare = v.clone();
        bare["paths"]["/v1/orders/{id}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] =
            serde_json::json!({"type": "object"});
        assert_eq!(oms_service::openapi::untyped_responses(&bare), ["GET /v1/orders/{id} 200 application/json"]);
        v["paths"]["/openapi.json"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] =
            serde_json::json!({"type": "object"});
        assert!(oms_service::openapi::untyped_responses(&v).is_empty(), "the document describes itself");
        assert_eq!(
            v["paths"]["/v1/orders"]["post"]["requestBody"]["content"]["application/json"]["example"]["channel"],
            "web"
        );
        // An answer in two media types keeps both (two entries of one status would keep only the last).
        let invoice = &v["paths"]["/v1/invoices/{number}"]["get"]["responses"]["200"]["content"];
        assert!(invoice["application/json"].is_object() && invoice["text/html"].is_object(), "{invoice}");
        let roles = v["paths"]["/v1/orders/{id}/refunds"]["post"]["description"].as_str().unwrap();
        assert!(roles.ends_with("Roles: service, admin."), "{roles}");
        // Found by schemathesis: a listing query that does not parse was refused in plain text.
        for uri in ["/v1/orders?limit=-1", "/v1/stock?limit=-1", "/v1/stock/S1?limit=-1"] {
            let req = axum::http::Request::get(uri)
                .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
                .body(axum::body::Body::empty())
                .unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{uri}");
            assert_eq!(resp.headers()["content-type"], "application/problem+json", "{uri}");
        }
        let extra = app.route("/v1/secret", axum::routing::get(|| async { "x" }));
        let err = oms_service::openapi::check_complete(&extra, &doc).unwrap_err();
        assert_eq!(err.lines().collect::<Vec<_>>().len(), 1, "{err}");
        assert!(err.starts_with("route /v1/secret is served but not in the OpenAPI document"), "{err}");
    }

    #[tokio::test]
    async fn routes_are_mounted() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let dir = tempfile::tempdir().unwrap();
        let app = crate::api::router(Arc::new(hub(dir.path(), &[])), admin_auth());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let r = get("/v1/forecast/ZZZ").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        assert!(r.contains("application/problem+json") && r.contains("unknown_sku"), "{r}");
        let r = get("/v1/forecast/A?h=abc").await;
        assert!(r.starts_with("HTTP/1.1 400") && r.contains("invalid_query"), "{r}");
        let r = get("/v1/replenishment?format=csv").await;
        assert!(r.starts_with("HTTP/1.1 200") && r.contains("sku,site,model"), "{r}");
        assert!(get("/v1/stock").await.starts_with("HTTP/1.1 200"));
        server.abort();
        // Without a key: refused before the handler.
        let app = crate::api::router(Arc::new(hub(tempfile::tempdir().unwrap().path(), &[])), admin_auth());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bare = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let mut s = tokio::net::TcpStream::connect(bare).await.unwrap();
        s.write_all(b"GET /v1/replenishment HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 401") && out.contains("unauthenticated"), "{out}");
        server.abort();

        // With the configuration installed as the hub does it (the fixtures' days are long past, so only the
        // echoed defaults show it).
        let config: ForecastConfig = toml::from_str("lead_time_days = 9\n[sites.wh1]\nlead_time_days = 12").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let app =
            crate::api::router(Arc::new(hub(dir.path(), &[("wh1", "A", 15)])), admin_auth()).layer(settings(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET /v1/replenishment HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.contains(r#""defaults":{"lead_time_days":9,"#), "{out}");
        server.abort();
    }
}
