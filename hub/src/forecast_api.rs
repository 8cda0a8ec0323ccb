//! Forecasting endpoints of the hub's HTTP API, on the demand history of [`crate::demand`].
//!
//! - `GET /v1/forecast/{sku}?site=&h=28&service_level=0.95&lead_time_days=7`: history length, chosen model,
//!   daily point forecast with 10/50/90% quantiles, safety stock, reorder point, days of cover, expected
//!   stock-out date and reorder suggestion for one SKU at one site (the network when `site` is omitted), using
//!   the available stock from the stock documents.
//! - `GET /v1/replenishment?lead_time_days=7&service_level=0.95&all=false&limit=&after=&format=json|csv`:
//!   the replenishment figures of every SKU × site with enough demand history, most urgent first (earliest
//!   stock-out, then largest shortfall); only rows with an order due unless `all=true`. Paged by `limit` (at
//!   most [`REPLENISHMENT_PAGE_MAX`]) and `after` (the `key` of the last row of the previous page).
//!
//! Errors are RFC 9457 problem documents (`application/problem+json`) with a machine-readable `code`:
//! `invalid_query` (400), `unknown_sku` / `unknown_site` (404), `insufficient_history` (422),
//! `forecast_failed` (500). Query strings are parsed here rather than by axum's extractor so that a bad
//! parameter yields such a document too.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use oms_node::sync::link::now_ms;
use serde_json::{Value, json};

use crate::demand::{DAY_MS, DemandCache, DemandError, PlanParams, QUANTILES, forecast_item, iso_date, round3, to_csv};
use crate::server::{Hub, lock};

/// Largest horizon of `GET /v1/forecast`.
pub const H_MAX: usize = 365;
/// Longest lead time accepted.
pub const LEAD_TIME_DAYS_MAX: usize = 365;
/// Lowest service level accepted.
pub const SERVICE_LEVEL_MIN: f64 = 0.5;
/// Highest service level accepted.
pub const SERVICE_LEVEL_MAX: f64 = 0.999;
/// Largest page of `GET /v1/replenishment`.
pub const REPLENISHMENT_PAGE_MAX: usize = 1_000;

/// State of the forecasting routes.
#[derive(Clone)]
pub struct ForecastState {
    hub: Arc<Hub>,
    cache: Arc<DemandCache>,
}

/// The forecasting routes, with their own demand cache.
pub fn router(hub: Arc<Hub>) -> Router {
    let state = ForecastState { hub, cache: Arc::new(DemandCache::default()) };
    Router::new()
        .route("/v1/forecast/{sku}", get(forecast))
        .route("/v1/replenishment", get(replenishment))
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

fn lead_and_level(q: &Params) -> Result<(usize, f64), Problem> {
    let lead: usize = parse(q, "lead_time_days", 7)?;
    if !(1..=LEAD_TIME_DAYS_MAX).contains(&lead) {
        return Err(Problem::invalid(format!("lead_time_days must be in 1..={LEAD_TIME_DAYS_MAX}")));
    }
    let level: f64 = parse(q, "service_level", 0.95)?;
    if !(SERVICE_LEVEL_MIN..=SERVICE_LEVEL_MAX).contains(&level) {
        return Err(Problem::invalid(format!("service_level must be in {SERVICE_LEVEL_MIN}..={SERVICE_LEVEL_MAX}")));
    }
    Ok((lead, level))
}

/// Validated query of `GET /v1/forecast/{sku}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ForecastQuery {
    /// Site, or `None` for the network.
    pub site: Option<String>,
    /// Plan parameters.
    pub params: PlanParams,
}

/// Parses and bounds the query of `GET /v1/forecast/{sku}`.
pub fn forecast_query(q: &Params) -> Result<ForecastQuery, Problem> {
    check_known(q, &["site", "h", "service_level", "lead_time_days"])?;
    let h: usize = parse(q, "h", 28)?;
    if !(1..=H_MAX).contains(&h) {
        return Err(Problem::invalid(format!("h must be in 1..={H_MAX}")));
    }
    let (lead_time_days, service_level) = lead_and_level(q)?;
    let site = q.get("site").map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    Ok(ForecastQuery { site, params: PlanParams { h, lead_time_days, service_level } })
}

/// `GET /v1/forecast/{sku}` on already-read state, at epoch day `today` (for tests and the handler).
pub fn forecast_answer(cache: &DemandCache, hub: &Hub, sku: &str, q: &Params, today: u64) -> Result<Value, Problem> {
    let fq = forecast_query(q)?;
    let snap = {
        let docs = lock(&hub.docs);
        cache.snapshot(&docs, today)
    };
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
    let history = snap
        .index
        .history(sku, site)
        .ok_or(DemandError::InsufficientHistory { days: 0, needed: crate::demand::MIN_HISTORY_DAYS })?;
    let available = snap.stock.available(sku, site);
    let item = forecast_item(history, available, snap.index.today, &fq.params)?;
    let f = &item.forecast;
    let quantile = |level: f64, j: usize| {
        f.quantiles.iter().find(|s| s.level == level).and_then(|s| s.values.get(j)).copied().map(round3)
    };
    let days: Vec<Value> = (0..f.mean.len())
        .map(|j| {
            json!({
                "date": iso_date(item.today + j as u64),
                "mean": round3(f.mean[j]),
                "p10": quantile(QUANTILES[0], j),
                "p50": quantile(QUANTILES[1], j),
                "p90": quantile(QUANTILES[2], j),
            })
        })
        .collect();
    let p = &item.plan;
    let hist = &item.history;
    Ok(json!({
        "sku": sku,
        "site": site,
        "as_of": iso_date(item.today),
        "history": {
            "days": hist.values.len(),
            "start": iso_date(hist.start_day),
            "end": iso_date(hist.start_day + hist.values.len().saturating_sub(1) as u64),
            "total": round3(hist.values.iter().sum()),
        },
        "model": f.model.name(),
        "fallback": f.fallback.map(|fb| format!("{fb:?}")),
        "h": f.mean.len(),
        "forecast": days,
        "lead_time_days": fq.params.lead_time_days,
        "service_level": fq.params.service_level,
        "available": available,
        "on_order": 0,
        "lead_time_demand": round3(p.lead_time_demand),
        "safety_stock": round3(p.safety_stock),
        "reorder_point": round3(p.reorder_point),
        "inventory_position": round3(p.inventory_position),
        "order_up_to": round3(p.order_up_to),
        "days_of_cover": p.days_of_cover.map(round3),
        "stockout_day": p.stockout_day,
        "stockout_date": item.stockout_day().map(iso_date),
        "reorder": item.reorder_qty().map(|qty| json!({"qty": qty, "order_by": iso_date(item.today)})),
        "demand_orders_truncated": snap.index.truncated,
    }))
}

async fn forecast(State(st): State<ForecastState>, Path(sku): Path<String>, Query(q): Query<Params>) -> Response {
    let today = now_ms() / DAY_MS;
    // Model fitting is CPU-bound: keep it off the async workers.
    let res = tokio::task::spawn_blocking(move || forecast_answer(&st.cache, &st.hub, &sku, &q, today)).await;
    match res {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(p)) => p.into_response(),
        Err(e) => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "forecast_failed", e.to_string()).into_response(),
    }
}

/// `GET /v1/replenishment` on already-read state: a JSON value, or CSV text when `format=csv`.
pub fn replenishment_answer(cache: &DemandCache, hub: &Hub, q: &Params, today: u64) -> Result<Response, Problem> {
    check_known(q, &["lead_time_days", "service_level", "format", "limit", "after", "all"])?;
    let (lead, level) = lead_and_level(q)?;
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
    let snap = {
        let docs = lock(&hub.docs);
        cache.snapshot(&docs, today)
    };
    let run = cache.replenishment(&snap, lead, level);
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
    Ok(Json(json!({
        "as_of": iso_date(today),
        "lead_time_days": lead,
        "service_level": level,
        "total": rows.len(),
        "rows": page,
        "next_after": next_after,
        "skipped_insufficient_history": run.skipped_insufficient_history,
        "skipped_failed": run.skipped_failed,
        "truncated": run.truncated,
    }))
    .into_response())
}

async fn replenishment(State(st): State<ForecastState>, Query(q): Query<Params>) -> Response {
    let today = now_ms() / DAY_MS;
    let res = tokio::task::spawn_blocking(move || replenishment_answer(&st.cache, &st.hub, &q, today)).await;
    match res {
        Ok(Ok(r)) => r,
        Ok(Err(p)) => p.into_response(),
        Err(e) => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "forecast_failed", e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demand::tests::{TODAY, TestOrder, hub_docs};
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
        Hub::new(docs, intake, "acme", vec![9; 16], ServerTuning::default()).unwrap()
    }

    fn q(pairs: &[(&str, &str)]) -> Params {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn forecast_endpoint_reorders_when_stock_is_low() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path(), &[("wh1", "A", 15), ("wh2", "A", 5_000)]);
        let cache = DemandCache::default();
        let v = forecast_answer(&cache, &hub, "A", &q(&[("site", "wh1"), ("h", "14")]), TODAY).unwrap();
        assert_eq!(v["history"]["days"], 60);
        assert_eq!(v["forecast"].as_array().unwrap().len(), 14);
        assert!(v["forecast"][0]["p90"].as_f64().unwrap() >= v["forecast"][0]["p10"].as_f64().unwrap());
        assert!(v["reorder"]["qty"].as_u64().unwrap() > 0, "{v}");
        assert_eq!(v["stockout_date"], iso_date(TODAY + 1));
        assert!(v["safety_stock"].as_f64().unwrap() > 0.0);

        let v = forecast_answer(&cache, &hub, "A", &q(&[("site", "wh2")]), TODAY).unwrap();
        assert!(v["reorder"].is_null(), "{v}");
        assert_eq!(v["available"], 5_000);
        // Network: 15 + 5000 units against 15 a day.
        let v = forecast_answer(&cache, &hub, "A", &q(&[]), TODAY).unwrap();
        assert_eq!(v["available"], 5_015);
        assert!(v["reorder"].is_null());
    }

    #[test]
    fn forecast_endpoint_errors() {
        let dir = tempfile::tempdir().unwrap();
        let hub = hub(dir.path(), &[("wh1", "A", 15)]);
        let cache = DemandCache::default();
        let code = |sku: &str, p: &[(&str, &str)]| forecast_answer(&cache, &hub, sku, &q(p), TODAY).unwrap_err().code;
        assert_eq!(code("ZZZ", &[]), "unknown_sku");
        assert_eq!(code("A", &[("site", "nowhere")]), "unknown_site");
        assert_eq!(code("B", &[]), "insufficient_history");
        assert_eq!(code("B", &[("site", "wh2")]), "insufficient_history");
        for bad in [("h", "0"), ("h", "366"), ("h", "x"), ("service_level", "0.9999"), ("service_level", "0.4")] {
            assert_eq!(code("A", &[bad]), "invalid_query", "{bad:?}");
        }
        assert_eq!(code("A", &[("lead_time_days", "0")]), "invalid_query");
        assert_eq!(code("A", &[("bogus", "1")]), "invalid_query");
        let p = forecast_answer(&cache, &hub, "B", &q(&[]), TODAY).unwrap_err();
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
        let r = replenishment_answer(&cache, &hub, &q(&[]), TODAY).unwrap();
        let v: Value = serde_json::from_str(&body(r).await).unwrap();
        assert_eq!(v["total"], 2);
        assert_eq!(v["skipped_insufficient_history"], 1);
        // wh1 runs out tomorrow, wh2 (30 units at 5 a day) later.
        assert_eq!(v["rows"][0]["key"], "wh1|A");
        assert_eq!(v["rows"][1]["key"], "wh2|A");

        let r = replenishment_answer(&cache, &hub, &q(&[("limit", "1")]), TODAY).unwrap();
        let v: Value = serde_json::from_str(&body(r).await).unwrap();
        assert_eq!(v["next_after"], "wh1|A");
        let r = replenishment_answer(&cache, &hub, &q(&[("limit", "1"), ("after", "wh1|A")]), TODAY).unwrap();
        let v: Value = serde_json::from_str(&body(r).await).unwrap();
        assert_eq!(v["rows"][0]["key"], "wh2|A");
        assert!(v["next_after"].is_null());

        let r = replenishment_answer(&cache, &hub, &q(&[("format", "csv")]), TODAY).unwrap();
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/csv; charset=utf-8");
        let csv = body(r).await;
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], crate::demand::CSV_HEADER);
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("A,wh1,"));
        for bad in [("format", "xml"), ("limit", "0"), ("after", "nope"), ("service_level", "1")] {
            let p = replenishment_answer(&cache, &hub, &q(&[bad]), TODAY).unwrap_err();
            assert_eq!(p.code, "invalid_query", "{bad:?}");
        }
    }

    #[tokio::test]
    async fn routes_are_mounted() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let dir = tempfile::tempdir().unwrap();
        let app = crate::api::router(Arc::new(hub(dir.path(), &[])));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n");
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
    }
}
