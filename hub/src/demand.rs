//! Demand history and replenishment figures from the order documents the hub holds.
//!
//! **History.** Two daily series per SKU × fulfilling site and per SKU for the whole network ([`Basis`]):
//!
//! - *ordered*: the ordered quantity of each order line, bucketed by the UTC day of the order's acceptance
//!   time (`created_at_ms`). Orders not yet answered by their site (no progress) count: the customer asked
//!   for the goods.
//! - *shipped*: the units the site reports shipped per line (`Progress::lines[].shipped`), bucketed by the
//!   UTC day of the carrier hand-over, i.e. the first `shipped` entry of the order's timeline (the
//!   `delivered` entry if a node never wrote one). Shipped units without either entry are counted in
//!   [`DemandIndex::shipments_undated`] and left out.
//!
//! Orders whose node status is `cancelled` or `rejected` are left out of both (a rejected order is re-routed
//! as another order, so counting it would count the demand twice). Only complete days are used: a series
//! runs from its first day with demand to yesterday (UTC), zero-filled, at most [`HISTORY_DAYS_MAX`] days;
//! day 0 of a forecast is today.
//!
//! **Freshness.** The index is recomputed from the document store on request and cached
//! ([`DemandCache`]), keyed by a [`Fingerprint`]: the current UTC day, the number of order documents and the
//! hub's tallies of node changes applied and quarantined. Every way a synced document changes at the hub goes
//! through [`crate::docs::HubDocs::check_applied`], which bumps one of those tallies, so a change invalidates
//! the cache without any hook in the sync path (which other work owns) and without a second copy of the
//! demand that could drift from the documents after a restart or a quarantine roll-back. The cost is one full
//! scan (bounded by [`ORDERS_SCAN_MAX`]) after each batch of changes, paid by the next request only.
//!
//! **Replenishment.** [`forecast_item`] runs [`oms_forecast::auto`] (weekly season) on a series and
//! [`oms_forecast::plan`] on the available stock (on hand minus reserved) from the site's stock document, or
//! the network total. Lead time, service level and order cycle are resolved per item from the `[forecast]`
//! configuration ([`crate::forecast_config`]) unless the request sets them. The hub knows no purchase
//! orders, so stock on order is zero, and responses say so ([`ON_ORDER_SOURCE`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use oms_forecast::{Forecast, ForecastError};
use oms_protocol::domain::FulfillmentState;
use oms_protocol::schema;

use crate::docs::HubDocs;
use crate::forecast_config::{ForecastConfig, Override, Resolved};

/// One day in milliseconds.
pub const DAY_MS: u64 = 86_400_000;
/// Longest history used, in days.
pub const HISTORY_DAYS_MAX: u64 = 730;
/// Fewest days of history (first demand day to yesterday) a forecast needs.
pub const MIN_HISTORY_DAYS: usize = 14;
/// Most order documents scanned for one index.
pub const ORDERS_SCAN_MAX: usize = 2_000_000;
/// Order documents read per page while scanning.
const SCAN_PAGE: usize = 10_000;
/// Most SKU × site series kept; further pairs are dropped and the index is marked truncated.
pub const SERIES_MAX: usize = 200_000;
/// Most SKU × site items forecast for one replenishment run.
pub const REPLENISHMENT_ITEMS_MAX: usize = 5_000;
/// Season length used for daily demand (weekly pattern).
pub const SEASON_DAYS: usize = 7;
/// Quantile levels reported.
pub const QUANTILES: [f64; 3] = [0.1, 0.5, 0.9];
/// Horizon used for replenishment runs (the plan extends the last week beyond it).
pub const REPLENISHMENT_HORIZON: usize = 28;
/// Where stock on order comes from: nowhere, the hub has no purchase orders, so it is always 0.
pub const ON_ORDER_SOURCE: &str = "none";

/// Which quantities a demand history counts. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Basis {
    /// Units ordered, on the day the order was accepted.
    #[default]
    Ordered,
    /// Units shipped, on the day they were handed to the carrier.
    Shipped,
}

impl Basis {
    /// `ordered` or `shipped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::Ordered => "ordered",
            Basis::Shipped => "shipped",
        }
    }

    /// Parses `ordered` or `shipped`.
    pub fn parse(s: &str) -> Option<Basis> {
        match s {
            "ordered" => Some(Basis::Ordered),
            "shipped" => Some(Basis::Shipped),
            _ => None,
        }
    }
}

/// Why demand figures could not be produced.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DemandError {
    /// The SKU has neither demand nor stock anywhere the hub knows of.
    #[error("unknown SKU {0}")]
    UnknownSku(String),
    /// The site has neither orders nor a stock document at the hub.
    #[error("unknown site {0}")]
    UnknownSite(String),
    /// Too few days of history to forecast.
    #[error("insufficient history: {days} days of demand history, at least {needed} needed")]
    InsufficientHistory {
        /// Days available.
        days: usize,
        /// Days needed.
        needed: usize,
    },
    /// The forecasting core refused the input.
    #[error("forecast failed: {0}")]
    Forecast(#[from] ForecastError),
}

/// Sparse daily demand of one series: epoch day → units.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    days: BTreeMap<u64, f64>,
}

impl Series {
    fn add(&mut self, day: u64, qty: f64) {
        *self.days.entry(day).or_insert(0.0) += qty;
    }

    /// First epoch day with demand.
    pub fn first_day(&self) -> Option<u64> {
        self.days.keys().next().copied()
    }

    /// Zero-filled daily demand from the first demand day to `end_day` (exclusive).
    pub fn dense(&self, end_day: u64) -> Vec<f64> {
        let Some(first) = self.first_day() else { return Vec::new() };
        let mut out = vec![0.0; end_day.saturating_sub(first) as usize];
        for (&d, &q) in self.days.range(first..end_day) {
            if let Some(slot) = out.get_mut((d - first) as usize) {
                *slot += q;
            }
        }
        out
    }
}

/// A daily demand history ready to forecast.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// Epoch day of the first value.
    pub start_day: u64,
    /// Daily units, oldest first; the last value is yesterday's.
    pub values: Vec<f64>,
}

/// Demand per SKU × site and per SKU, built from order documents. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct DemandIndex {
    /// Epoch day the index was built for ("today"); history ends the day before.
    pub today: u64,
    /// (sku, site) → series.
    pub by_site: BTreeMap<(String, String), Series>,
    /// sku → network series.
    pub network: BTreeMap<String, Series>,
    /// (sku, site) → shipped units per day.
    pub shipped_by_site: BTreeMap<(String, String), Series>,
    /// sku → shipped units per day, whole network.
    pub shipped_network: BTreeMap<String, Series>,
    /// Orders with shipped units but no shipment time in their timeline (left out of the shipped series).
    pub shipments_undated: u64,
    /// Order documents read.
    pub orders_scanned: u64,
    /// Orders left out as cancelled or rejected.
    pub orders_excluded: u64,
    /// Order documents that could not be read.
    pub orders_unreadable: u64,
    /// Some orders or series were dropped by the bounds.
    pub truncated: bool,
}

impl DemandIndex {
    /// An empty index for epoch day `today`.
    pub fn new(today: u64) -> DemandIndex {
        DemandIndex { today, ..DemandIndex::default() }
    }

    /// Adds one order: accepted at `created_at_ms` for `site`, with node status `status` (`None` if the site
    /// has not answered yet) and `(sku, qty)` lines. Returns true if it counted as demand.
    pub fn add_order<'a>(
        &mut self,
        site: &str,
        created_at_ms: u64,
        status: Option<FulfillmentState>,
        lines: impl IntoIterator<Item = (&'a str, u32)>,
    ) -> bool {
        self.orders_scanned += 1;
        if matches!(status, Some(FulfillmentState::Cancelled | FulfillmentState::Rejected)) {
            self.orders_excluded += 1;
            return false;
        }
        let day = created_at_ms / DAY_MS;
        if day >= self.today || day < self.today.saturating_sub(HISTORY_DAYS_MAX) {
            return false;
        }
        for (sku, qty) in lines {
            let key = (sku.to_owned(), site.to_owned());
            if !self.by_site.contains_key(&key) && self.by_site.len() >= SERIES_MAX {
                self.truncated = true;
                continue;
            }
            self.by_site.entry(key).or_default().add(day, f64::from(qty));
            self.network.entry(sku.to_owned()).or_default().add(day, f64::from(qty));
        }
        true
    }

    /// Adds the units an order shipped from `site` on the day of `shipped_at_ms` (call only for orders that
    /// [`DemandIndex::add_order`] counted). Returns true if the day is inside the history window.
    pub fn add_shipment<'a>(
        &mut self,
        site: &str,
        shipped_at_ms: u64,
        lines: impl IntoIterator<Item = (&'a str, u32)>,
    ) -> bool {
        let day = shipped_at_ms / DAY_MS;
        if day >= self.today || day < self.today.saturating_sub(HISTORY_DAYS_MAX) {
            return false;
        }
        for (sku, qty) in lines {
            if qty == 0 {
                continue;
            }
            let key = (sku.to_owned(), site.to_owned());
            if !self.shipped_by_site.contains_key(&key) && self.shipped_by_site.len() >= SERIES_MAX {
                self.truncated = true;
                continue;
            }
            self.shipped_by_site.entry(key).or_default().add(day, f64::from(qty));
            self.shipped_network.entry(sku.to_owned()).or_default().add(day, f64::from(qty));
        }
        true
    }

    /// Adds an order's shipped units from its progress (see the module docs for the day used).
    fn add_progress(&mut self, site: &str, progress: &schema::Progress) {
        if !progress.lines.iter().any(|l| l.shipped > 0) {
            return;
        }
        let at = |status: FulfillmentState| progress.timeline.iter().find(|e| e.status == status).map(|e| e.at_ms);
        let Some(shipped_at_ms) = at(FulfillmentState::Shipped).or_else(|| at(FulfillmentState::Delivered)) else {
            self.shipments_undated += 1;
            return;
        };
        self.add_shipment(site, shipped_at_ms, progress.lines.iter().map(|l| (l.sku.as_str(), l.shipped)));
    }

    /// Scans the hub's order documents.
    pub fn build(docs: &HubDocs, today: u64) -> DemandIndex {
        let mut index = DemandIndex::new(today);
        let mut after: Option<String> = None;
        let mut seen = 0usize;
        loop {
            let ids = docs.order_ids(None, after.as_deref(), SCAN_PAGE);
            for d in &ids {
                let Some(doc) = docs.get(d) else { continue };
                match schema::read_order(&doc, d.as_str()) {
                    Ok(view) => {
                        let status = view.progress.as_ref().map(|p| p.status);
                        let lines = view.draft.lines.iter().map(|l| (l.sku.as_str(), l.qty));
                        index.add_order(view.site.as_str(), view.created_at_ms, status, lines);
                        let excluded = matches!(status, Some(FulfillmentState::Cancelled | FulfillmentState::Rejected));
                        if let Some(progress) = view.progress.as_ref()
                            && !excluded
                        {
                            index.add_progress(view.site.as_str(), progress);
                        }
                    }
                    Err(e) => {
                        index.orders_unreadable += 1;
                        tracing::debug!(doc = %d, error = %e, "order document skipped for demand");
                    }
                }
            }
            seen += ids.len();
            if ids.len() < SCAN_PAGE {
                break;
            }
            if seen >= ORDERS_SCAN_MAX {
                index.truncated = true;
                break;
            }
            after = ids.last().and_then(|d| d.as_str().strip_prefix(schema::ORDER_PREFIX)).map(str::to_owned);
            if after.is_none() {
                break;
            }
        }
        index
    }

    /// The ordered series of `sku` at `site`, or for the network when `site` is `None`.
    pub fn series(&self, sku: &str, site: Option<&str>) -> Option<&Series> {
        self.series_of(Basis::Ordered, sku, site)
    }

    /// The series of `sku` at `site` (network when `None`) on `basis`.
    pub fn series_of(&self, basis: Basis, sku: &str, site: Option<&str>) -> Option<&Series> {
        let (by_site, network) = match basis {
            Basis::Ordered => (&self.by_site, &self.network),
            Basis::Shipped => (&self.shipped_by_site, &self.shipped_network),
        };
        match site {
            Some(site) => by_site.get(&(sku.to_owned(), site.to_owned())),
            None => network.get(sku),
        }
    }

    /// The dense ordered history of `sku` at `site` (network when `None`).
    pub fn history(&self, sku: &str, site: Option<&str>) -> Option<History> {
        self.history_of(Basis::Ordered, sku, site)
    }

    /// The dense history of `sku` at `site` (network when `None`) on `basis`.
    pub fn history_of(&self, basis: Basis, sku: &str, site: Option<&str>) -> Option<History> {
        let s = self.series_of(basis, sku, site)?;
        Some(History { start_day: s.first_day()?, values: s.dense(self.today) })
    }

    /// The (sku, site) pairs with a history on `basis`.
    pub fn pairs(&self, basis: Basis) -> impl Iterator<Item = &(String, String)> {
        match basis {
            Basis::Ordered => self.by_site.keys(),
            Basis::Shipped => self.shipped_by_site.keys(),
        }
    }

    /// True if some order was fulfilled by `site`.
    pub fn has_site(&self, site: &str) -> bool {
        self.by_site.keys().chain(self.shipped_by_site.keys()).any(|(_, s)| s == site)
    }
}

/// Available stock (on hand minus reserved) per (sku, site), from the nodes' stock documents.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StockIndex {
    /// (sku, site) → available units.
    pub available: BTreeMap<(String, String), u64>,
    /// Sites with a stock document.
    pub sites: Vec<String>,
}

impl StockIndex {
    /// Reads every stock document (bounded as `GET /v1/stock`).
    pub fn build(docs: &HubDocs) -> StockIndex {
        let mut out = StockIndex::default();
        for d in docs.stock_ids(crate::docs::STOCK_SITES_MAX) {
            let Some(doc) = docs.get(&d) else { continue };
            let Ok(view) = schema::read_stock(&doc, d.as_str(), crate::docs::STOCK_SKUS_MAX) else { continue };
            let site = view.node.as_str().to_owned();
            for (sku, b) in view.skus {
                out.available.insert((sku.as_str().to_owned(), site.clone()), b.available());
            }
            out.sites.push(site);
        }
        out
    }

    /// Available units of `sku` at `site`, or in the whole network when `site` is `None`.
    pub fn available(&self, sku: &str, site: Option<&str>) -> u64 {
        match site {
            Some(site) => self.available.get(&(sku.to_owned(), site.to_owned())).copied().unwrap_or(0),
            None => self.available.iter().filter(|((s, _), _)| s == sku).map(|(_, v)| *v).sum(),
        }
    }

    /// True if any stock document lists `sku`.
    pub fn has_sku(&self, sku: &str) -> bool {
        self.available.keys().any(|(s, _)| s == sku)
    }
}

/// Replenishment parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanParams {
    /// Forecast horizon in days.
    pub h: usize,
    /// Supplier lead time in days.
    pub lead_time_days: usize,
    /// Cycle service level.
    pub service_level: f64,
    /// Days of demand an order covers beyond the lead time.
    pub order_cycle_days: usize,
}

impl PlanParams {
    /// Horizon `h` with resolved parameters.
    pub fn from_resolved(h: usize, r: &Resolved) -> PlanParams {
        PlanParams {
            h,
            lead_time_days: r.lead_time_days.value,
            service_level: r.service_level.value,
            order_cycle_days: r.order_cycle_days.value,
        }
    }
}

/// Forecast and replenishment figures of one series.
#[derive(Debug, Clone)]
pub struct ItemForecast {
    /// The history it was fitted on.
    pub history: History,
    /// The forecast.
    pub forecast: Forecast,
    /// The plan for the available stock.
    pub plan: oms_forecast::Plan,
    /// Available units used.
    pub available: u64,
    /// Epoch day of forecast day 0 (today).
    pub today: u64,
}

impl ItemForecast {
    /// Reorder point minus inventory position, at least zero.
    pub fn shortfall(&self) -> f64 {
        (self.plan.reorder_point - self.plan.inventory_position).max(0.0)
    }

    /// Units to order (rounded up), or `None` when no order is due.
    pub fn reorder_qty(&self) -> Option<u64> {
        (self.plan.reorder_qty > 0.0).then(|| self.plan.reorder_qty.ceil() as u64)
    }

    /// Epoch day of the expected stock-out.
    pub fn stockout_day(&self) -> Option<u64> {
        self.plan.stockout_day.map(|d| self.today + d as u64)
    }
}

/// Forecasts `history` and plans replenishment for `available` units. Never yields NaN.
pub fn forecast_item(
    history: History,
    available: u64,
    today: u64,
    params: &PlanParams,
) -> Result<ItemForecast, DemandError> {
    if history.values.len() < MIN_HISTORY_DAYS {
        return Err(DemandError::InsufficientHistory { days: history.values.len(), needed: MIN_HISTORY_DAYS });
    }
    let forecast = oms_forecast::auto(&history.values, SEASON_DAYS, params.h, &QUANTILES).map_err(|e| match e {
        ForecastError::InsufficientHistory { got, needed } => {
            DemandError::InsufficientHistory { days: got, needed: needed.max(MIN_HISTORY_DAYS) }
        }
        e => DemandError::Forecast(e),
    })?;
    let options =
        oms_forecast::replenishment::PlanOptions { order_cycle_days: params.order_cycle_days, start_offset_days: 0 };
    let plan = oms_forecast::replenishment::plan_with(
        &forecast,
        available as f64,
        0.0,
        params.lead_time_days,
        params.service_level,
        &options,
    );
    Ok(ItemForecast { history, forecast, plan, available, today })
}

/// One row of `GET /v1/replenishment`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Suggestion {
    /// Paging key: `site|sku`.
    pub key: String,
    /// SKU.
    pub sku: String,
    /// Fulfilling site.
    pub site: String,
    /// Model chosen.
    pub model: String,
    /// Days of history.
    pub history_days: usize,
    /// Available units.
    pub available: u64,
    /// Mean daily demand over the horizon.
    pub mean_daily_demand: f64,
    /// Expected lead-time demand.
    pub lead_time_demand: f64,
    /// Safety stock.
    pub safety_stock: f64,
    /// Reorder point.
    pub reorder_point: f64,
    /// Reorder point minus inventory position, at least zero.
    pub shortfall: f64,
    /// Days the stock lasts.
    pub days_of_cover: Option<f64>,
    /// Day offset of the expected stock-out (0 = today).
    pub stockout_day: Option<usize>,
    /// ISO date of the expected stock-out.
    pub stockout_date: Option<String>,
    /// Units to order now (0 when none is due).
    pub reorder_qty: u64,
    /// Which history was forecast: `ordered` or `shipped`.
    pub basis: &'static str,
    /// Lead time used, days.
    pub lead_time_days: usize,
    /// Where the lead time came from (`query`, `site_sku`, `sku`, `site`, `default`).
    pub lead_time_source: &'static str,
    /// Service level used.
    pub service_level: f64,
    /// Where the service level came from.
    pub service_level_source: &'static str,
    /// Order cycle used, days.
    pub order_cycle_days: usize,
    /// Where the order cycle came from.
    pub order_cycle_source: &'static str,
    /// Stock on order: always 0, the hub has no purchase orders.
    pub on_order: u64,
    /// Where stock on order comes from: [`ON_ORDER_SOURCE`].
    pub on_order_source: &'static str,
}

/// Rounds for display; non-finite values become zero.
pub fn round3(v: f64) -> f64 {
    if v.is_finite() { (v * 1000.0).round() / 1000.0 } else { 0.0 }
}

impl Suggestion {
    fn from_item(sku: &str, site: &str, item: &ItemForecast, basis: Basis, params: &Resolved) -> Suggestion {
        let h = item.forecast.mean.len().max(1);
        Suggestion {
            key: format!("{site}|{sku}"),
            sku: sku.to_owned(),
            site: site.to_owned(),
            model: item.forecast.model.name().to_owned(),
            history_days: item.history.values.len(),
            available: item.available,
            mean_daily_demand: round3(item.forecast.mean.iter().sum::<f64>() / h as f64),
            lead_time_demand: round3(item.plan.lead_time_demand),
            safety_stock: round3(item.plan.safety_stock),
            reorder_point: round3(item.plan.reorder_point),
            shortfall: round3(item.shortfall()),
            days_of_cover: item.plan.days_of_cover.map(round3),
            stockout_day: item.plan.stockout_day,
            stockout_date: item.stockout_day().map(iso_date),
            reorder_qty: item.reorder_qty().unwrap_or(0),
            basis: basis.as_str(),
            lead_time_days: params.lead_time_days.value,
            lead_time_source: params.lead_time_days.source.as_str(),
            service_level: params.service_level.value,
            service_level_source: params.service_level.source.as_str(),
            order_cycle_days: params.order_cycle_days.value,
            order_cycle_source: params.order_cycle_days.source.as_str(),
            on_order: 0,
            on_order_source: ON_ORDER_SOURCE,
        }
    }
}

/// Most urgent first: earliest stock-out (none last), then largest shortfall, then key.
pub fn rank(rows: &mut [Suggestion]) {
    rows.sort_by(|a, b| {
        let sa = a.stockout_day.unwrap_or(usize::MAX);
        let sb = b.stockout_day.unwrap_or(usize::MAX);
        sa.cmp(&sb).then(b.shortfall.total_cmp(&a.shortfall)).then_with(|| a.key.cmp(&b.key))
    });
}

/// The result of a replenishment run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replenishment {
    /// Every SKU × site with enough history, most urgent first.
    pub rows: Vec<Suggestion>,
    /// Series skipped for too short a history.
    pub skipped_insufficient_history: usize,
    /// Series skipped because the forecast failed.
    pub skipped_failed: usize,
    /// More than [`REPLENISHMENT_ITEMS_MAX`] series, or the index was truncated.
    pub truncated: bool,
}

/// What a replenishment run is asked for besides the data: which history, the configured planning
/// parameters and the request's overrides of them.
#[derive(Debug, Clone, Copy)]
pub struct RunParams<'a> {
    /// Which history to forecast.
    pub basis: Basis,
    /// Defaults and per-site/SKU overrides.
    pub config: &'a ForecastConfig,
    /// The request's values, which take precedence.
    pub query: &'a Override,
}

/// Forecasts every SKU × site of `index` on `run.basis` with `stock` and ranks the results.
pub fn replenishment(index: &DemandIndex, stock: &StockIndex, run: &RunParams<'_>) -> Replenishment {
    let mut out = Replenishment { truncated: index.truncated, ..Replenishment::default() };
    for (n, (sku, site)) in index.pairs(run.basis).enumerate() {
        if n >= REPLENISHMENT_ITEMS_MAX {
            out.truncated = true;
            break;
        }
        let Some(history) = index.history_of(run.basis, sku, Some(site)) else { continue };
        let resolved = run.config.resolve(sku, Some(site), run.query);
        let params = PlanParams::from_resolved(REPLENISHMENT_HORIZON, &resolved);
        match forecast_item(history, stock.available(sku, Some(site)), index.today, &params) {
            Ok(item) => out.rows.push(Suggestion::from_item(sku, site, &item, run.basis, &resolved)),
            Err(DemandError::InsufficientHistory { .. }) => out.skipped_insufficient_history += 1,
            Err(e) => {
                tracing::debug!(%sku, %site, error = %e, "no replenishment figures");
                out.skipped_failed += 1;
            }
        }
    }
    rank(&mut out.rows);
    out
}

/// Header of the CSV export.
pub const CSV_HEADER: &str = "sku,site,model,history_days,available,mean_daily_demand,lead_time_demand,\
safety_stock,reorder_point,shortfall,days_of_cover,stockout_day,stockout_date,reorder_qty,basis,lead_time_days,\
lead_time_source,service_level,service_level_source,order_cycle_days,order_cycle_source,on_order,on_order_source";

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

/// The rows as CSV: [`CSV_HEADER`] then one line per row.
pub fn to_csv(rows: &[Suggestion]) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    let opt = |v: Option<String>| v.unwrap_or_default();
    for r in rows {
        let fields = [
            csv_field(&r.sku),
            csv_field(&r.site),
            csv_field(&r.model),
            r.history_days.to_string(),
            r.available.to_string(),
            r.mean_daily_demand.to_string(),
            r.lead_time_demand.to_string(),
            r.safety_stock.to_string(),
            r.reorder_point.to_string(),
            r.shortfall.to_string(),
            opt(r.days_of_cover.map(|v| v.to_string())),
            opt(r.stockout_day.map(|v| v.to_string())),
            opt(r.stockout_date.clone()),
            r.reorder_qty.to_string(),
            r.basis.to_owned(),
            r.lead_time_days.to_string(),
            r.lead_time_source.to_owned(),
            r.service_level.to_string(),
            r.service_level_source.to_owned(),
            r.order_cycle_days.to_string(),
            r.order_cycle_source.to_owned(),
            r.on_order.to_string(),
            r.on_order_source.to_owned(),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// ISO 8601 date (`YYYY-MM-DD`) of an epoch day (days since 1970-01-01, UTC).
pub fn iso_date(day: u64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = day as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// What the demand cache is keyed by. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    /// Epoch day.
    pub today: u64,
    /// Order documents held.
    pub orders: u64,
    /// Node changes applied since the hub started.
    pub changes_applied: u64,
    /// Node changes quarantined (rolled back) since the hub started.
    pub changes_quarantined: u64,
}

impl Fingerprint {
    /// The fingerprint of `docs` on epoch day `today`.
    pub fn of(docs: &HubDocs, today: u64) -> Fingerprint {
        Fingerprint {
            today,
            orders: docs.order_counts().values().sum(),
            changes_applied: docs.nodes.values().map(|s| s.changes_applied).sum(),
            changes_quarantined: docs.nodes.values().map(|s| s.changes_quarantined).sum(),
        }
    }
}

/// A replenishment run's key besides the configuration: data, basis and the query's overrides.
type PlanKey = (Fingerprint, Basis, Option<usize>, Option<u64>, Option<usize>);

/// The last replenishment run: its key, the configuration it used and the result.
type CachedRun = (PlanKey, Arc<ForecastConfig>, Arc<Replenishment>);

/// One cached demand index and one cached replenishment run (the last parameters asked for).
#[derive(Default)]
pub struct DemandCache {
    index: Mutex<Option<(Fingerprint, Arc<DemandIndex>)>>,
    runs: Mutex<Option<CachedRun>>,
}

impl std::fmt::Debug for DemandCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemandCache").finish_non_exhaustive()
    }
}

/// What a request needs: the demand index, the stock and the fingerprint they were read at.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Demand.
    pub index: Arc<DemandIndex>,
    /// Available stock.
    pub stock: StockIndex,
    /// When.
    pub fingerprint: Fingerprint,
}

impl DemandCache {
    /// The demand index (rebuilt if documents changed) and the current stock, read under the hub's lock.
    pub fn snapshot(&self, docs: &HubDocs, today: u64) -> Snapshot {
        let fingerprint = Fingerprint::of(docs, today);
        let mut slot = lock(&self.index);
        let index = match slot.as_ref() {
            Some((f, idx)) if *f == fingerprint => idx.clone(),
            _ => {
                let idx = Arc::new(DemandIndex::build(docs, today));
                *slot = Some((fingerprint, idx.clone()));
                idx
            }
        };
        Snapshot { index, stock: StockIndex::build(docs), fingerprint }
    }

    /// The replenishment run for `snap` and the parameters, cached until the documents, the basis, the
    /// query's overrides or the configuration change.
    pub fn replenishment(
        &self,
        snap: &Snapshot,
        basis: Basis,
        config: &Arc<ForecastConfig>,
        query: &Override,
    ) -> Arc<Replenishment> {
        let key = (
            snap.fingerprint,
            basis,
            query.lead_time_days,
            query.service_level.map(f64::to_bits),
            query.order_cycle_days,
        );
        if let Some((k, cfg, run)) = lock(&self.runs).as_ref()
            && *k == key
            && (Arc::ptr_eq(cfg, config) || **cfg == **config)
        {
            return run.clone();
        }
        // Computed without holding the cache lock; two concurrent misses both compute, the last one stays.
        let params = RunParams { basis, config, query };
        let run = Arc::new(replenishment(&snap.index, &snap.stock, &params));
        *lock(&self.runs) = Some((key, config.clone(), run.clone()));
        run
    }
}

/// Locks `m`; a lock poisoned by a panic elsewhere is taken as it is, since every value the cache stores is
/// whole whenever its lock is released.
// A local copy of `crate::server::lock`, so that `demand` does not depend on `server`. To be replaced by the
// shared `lock` helper once it moves into the shared crate.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use oms_node::sync::docdb::DocDb;
    use oms_protocol::domain::{Balance, NodeId, OrderDraft, OrderId, Sku};
    use oms_protocol::records::{FulfillmentLine, OrderRecord, TimelineEntry};

    pub(crate) const TODAY: u64 = 20_000;

    /// An order for [`hub_docs`]: (site, seq, day, hour, status, lines).
    pub(crate) type TestOrder<'a> = (&'a str, u64, u64, u64, FulfillmentState, &'a [(&'a str, u32)]);

    pub(crate) fn draft(lines: &[(&str, u32)]) -> OrderDraft {
        let lines: Vec<_> = lines
            .iter()
            .map(|(s, q)| serde_json::json!({"sku": s, "qty": q, "unit_price_minor": 100, "currency": "EUR"}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "external_ref": "web-1", "channel": "web", "lines": lines,
            "ship_to": {"name": "Ada", "line1": "1 Main St", "city": "Berlin", "postcode": "10115",
                        "country": "DE", "lat": 52.5, "lon": 13.4}
        }))
        .unwrap()
    }

    /// Hours from acceptance to carrier hand-over of the shipped and delivered orders of [`hub_docs`].
    pub(crate) const SHIP_AFTER_HOURS: u64 = 30;

    /// A hub document set with the given orders `(site, seq, day, hour, status, lines)` and stock. Orders
    /// `shipped` or `delivered` shipped every unit [`SHIP_AFTER_HOURS`] after acceptance.
    pub(crate) fn hub_docs(dir: &std::path::Path, orders: &[TestOrder], stock: &[(&str, &str, u64)]) -> HubDocs {
        let mut db = DocDb::open(&dir.join("hub.redb"), vec![7; 16], 100_000).unwrap();
        for &(site, seq, day, hour, status, lines) in orders {
            let node = NodeId::parse(site).unwrap();
            let id = OrderId::new(&node, seq);
            let created_at_ms = day * DAY_MS + hour * 3_600_000;
            let shipped = matches!(status, FulfillmentState::Shipped | FulfillmentState::Delivered);
            let progress_lines = lines
                .iter()
                .map(|&(sku, qty)| FulfillmentLine {
                    sku: Sku::parse(sku).unwrap(),
                    qty,
                    picked: shipped.then_some(qty),
                    shipped: if shipped { qty } else { 0 },
                    returned: 0,
                })
                .collect();
            let mut timeline =
                vec![TimelineEntry { at_ms: created_at_ms, status: FulfillmentState::Accepted, note: String::new() }];
            if shipped {
                let at_ms = created_at_ms + SHIP_AFTER_HOURS * 3_600_000;
                timeline.push(TimelineEntry { at_ms, status: FulfillmentState::Shipped, note: String::new() });
            }
            let rec = OrderRecord {
                id: id.clone(),
                site: node.clone(),
                status,
                order: draft(lines),
                lines: progress_lines,
                wave: None,
                parcels: None,
                shipment: None,
                returns: vec![],
                timeline,
                created_at_ms,
            };
            let name = schema::order_doc(&id).unwrap();
            schema::write_order(db.get_or_create(&name).unwrap(), &node, &rec, 1).unwrap();
            db.mark_dirty(&name);
        }
        for &(site, sku, on_hand) in stock {
            let node = NodeId::parse(site).unwrap();
            let name = schema::stock_doc(&node).unwrap();
            let b = Balance { on_hand, reserved: 0, staged: 0 };
            schema::write_stock(db.get_or_create(&name).unwrap(), &node, &Sku::parse(sku).unwrap(), &b, 1).unwrap();
            db.mark_dirty(&name);
        }
        HubDocs::new(db).unwrap()
    }

    #[test]
    fn history_sums_per_day_and_excludes_cancelled_and_rejected() {
        use FulfillmentState::*;
        let dir = tempfile::tempdir().unwrap();
        let orders: &[TestOrder] = &[
            ("wh1", 1, TODAY - 3, 1, Accepted, &[("A", 2), ("B", 1)]),
            ("wh1", 2, TODAY - 3, 23, Shipped, &[("A", 3)]),
            ("wh1", 3, TODAY - 2, 5, Cancelled, &[("A", 100)]),
            ("wh1", 4, TODAY - 1, 5, Rejected, &[("A", 100)]),
            ("wh1", 5, TODAY - 1, 6, Delivered, &[("A", 4)]),
            ("wh2", 1, TODAY - 2, 6, Picking, &[("A", 7)]),
            // Today's orders are not part of the (complete-day) history.
            ("wh1", 6, TODAY, 1, Accepted, &[("A", 50)]),
        ];
        let docs = hub_docs(dir.path(), orders, &[]);
        let idx = DemandIndex::build(&docs, TODAY);
        assert_eq!(idx.orders_scanned, 7);
        assert_eq!(idx.orders_excluded, 2);
        let h = idx.history("A", Some("wh1")).unwrap();
        assert_eq!(h.start_day, TODAY - 3);
        assert_eq!(h.values, vec![5.0, 0.0, 4.0]);
        assert_eq!(idx.history("B", Some("wh1")).unwrap().values, vec![1.0, 0.0, 0.0]);
        assert_eq!(idx.history("A", Some("wh2")).unwrap().values, vec![7.0, 0.0]);
        assert_eq!(idx.history("A", None).unwrap().values, vec![5.0, 7.0, 4.0]);
        assert!(idx.history("C", None).is_none());
        // Shipped: order 2 (3 A, accepted day −3 at 23:00) shipped 30 h later, on day −1; order 5 (delivered,
        // 4 A, day −1 at 06:00) on day 0, which is not complete yet. The cancelled and rejected orders ship nothing.
        let s = idx.history_of(Basis::Shipped, "A", Some("wh1")).unwrap();
        assert_eq!((s.start_day, s.values.clone()), (TODAY - 1, vec![3.0]));
        assert!(idx.history_of(Basis::Shipped, "B", Some("wh1")).is_none());
        assert!(idx.history_of(Basis::Shipped, "A", Some("wh2")).is_none());
        assert_eq!(idx.history_of(Basis::Shipped, "A", None).unwrap().values, vec![3.0]);
        assert_eq!(idx.shipments_undated, 0);
    }

    #[test]
    fn a_scan_keeps_no_document_loaded() {
        use FulfillmentState::*;
        let dir = tempfile::tempdir().unwrap();
        let orders: &[TestOrder] =
            &[("wh1", 1, TODAY - 2, 1, Accepted, &[("A", 2)]), ("wh1", 2, TODAY - 1, 1, Picking, &[("A", 3)])];
        let mut docs = hub_docs(dir.path(), orders, &[("wh1", "A", 9)]);
        docs.flush().unwrap();
        drop(docs);
        // A hub opened over a million documents loads none of them; a demand scan must not load them all.
        let docs = HubDocs::new(DocDb::open(&dir.path().join("hub.redb"), vec![8; 16], 100_000).unwrap()).unwrap();
        assert_eq!(docs.db().loaded(), 0);
        let idx = DemandIndex::build(&docs, TODAY);
        assert_eq!(idx.history("A", Some("wh1")).unwrap().values, vec![2.0, 3.0]);
        assert_eq!(StockIndex::build(&docs).available("A", Some("wh1")), 9);
        assert_eq!(docs.db().loaded(), 0, "the scan left documents loaded");
    }

    #[test]
    fn shipped_units_follow_the_timeline_not_the_order() {
        use oms_protocol::schema::Progress;
        let line = |sku: &str, qty, shipped| FulfillmentLine {
            sku: Sku::parse(sku).unwrap(),
            qty,
            picked: Some(shipped),
            shipped,
            returned: 0,
        };
        let entry = |day: u64, status| TimelineEntry { at_ms: day * DAY_MS + 1, status, note: String::new() };
        let progress = |lines, timeline| Progress {
            status: FulfillmentState::Shipped,
            lines,
            wave: None,
            parcels: None,
            shipment: None,
            returns: vec![],
            timeline,
        };
        let mut idx = DemandIndex::new(TODAY);
        // Short-shipped: 10 ordered, 7 shipped two days later.
        idx.add_progress(
            "wh1",
            &progress(
                vec![line("A", 10, 7)],
                vec![entry(TODAY - 5, FulfillmentState::Accepted), entry(TODAY - 3, FulfillmentState::Shipped)],
            ),
        );
        // No `shipped` entry, only `delivered`: the delivery day stands in.
        idx.add_progress("wh1", &progress(vec![line("A", 2, 2)], vec![entry(TODAY - 2, FulfillmentState::Delivered)]));
        // No date at all: counted as undated, not guessed.
        idx.add_progress("wh1", &progress(vec![line("A", 5, 5)], vec![]));
        // Nothing shipped: nothing to date.
        idx.add_progress("wh1", &progress(vec![line("A", 5, 0)], vec![]));
        let s = idx.history_of(Basis::Shipped, "A", Some("wh1")).unwrap();
        assert_eq!((s.start_day, s.values), (TODAY - 3, vec![7.0, 2.0, 0.0]));
        assert_eq!(idx.shipments_undated, 1);
        assert!(idx.history("A", Some("wh1")).is_none(), "ordered units come from add_order only");
    }

    #[test]
    fn history_is_bounded_to_the_window() {
        let mut idx = DemandIndex::new(TODAY);
        assert!(!idx.add_order("wh1", (TODAY - HISTORY_DAYS_MAX - 1) * DAY_MS, None, [("A", 1)]));
        assert!(idx.add_order("wh1", (TODAY - HISTORY_DAYS_MAX) * DAY_MS, None, [("A", 1)]));
        assert_eq!(idx.history("A", None).unwrap().values.len(), HISTORY_DAYS_MAX as usize);
    }

    fn steady(days: usize) -> History {
        // Steady demand around 10 a day with a small weekly wiggle.
        let values = (0..days).map(|i| [9.0, 11.0, 10.0, 10.0, 12.0, 8.0, 10.0][i % 7]).collect();
        History { start_day: TODAY - days as u64, values }
    }

    const PARAMS: PlanParams = PlanParams { h: 28, lead_time_days: 7, service_level: 0.95, order_cycle_days: 14 };

    fn run_default(idx: &DemandIndex, stock: &StockIndex) -> Replenishment {
        let config = ForecastConfig::default();
        replenishment(idx, stock, &RunParams { basis: Basis::Ordered, config: &config, query: &Override::default() })
    }

    #[test]
    fn low_stock_gets_a_reorder_high_stock_none() {
        let low = forecast_item(steady(120), 20, TODAY, &PARAMS).unwrap();
        let qty = low.reorder_qty().unwrap();
        assert!(qty >= 70, "order covers lead time and cycle, got {qty}");
        assert!(low.plan.stockout_day.unwrap() <= 3);
        assert!(low.plan.safety_stock.is_finite() && low.plan.safety_stock > 0.0);
        assert_eq!(low.forecast.quantiles.len(), 3);
        let high = forecast_item(steady(120), 10_000, TODAY, &PARAMS).unwrap();
        assert_eq!(high.reorder_qty(), None);
        assert!(high.plan.days_of_cover.unwrap() > 500.0);
    }

    #[test]
    fn short_history_is_a_typed_error() {
        let err = forecast_item(steady(5), 20, TODAY, &PARAMS).unwrap_err();
        assert_eq!(err, DemandError::InsufficientHistory { days: 5, needed: MIN_HISTORY_DAYS });
    }

    #[test]
    fn replenishment_is_most_urgent_first() {
        let mut idx = DemandIndex::new(TODAY);
        for d in 0..90u64 {
            let day = TODAY - 90 + d;
            idx.add_order("wh1", day * DAY_MS, None, [("A", 10), ("B", 10), ("C", 10)]);
            idx.add_order("wh2", day * DAY_MS, None, [("A", 10)]);
        }
        // Only a few days of history for D: skipped.
        idx.add_order("wh1", (TODAY - 2) * DAY_MS, None, [("D", 1)]);
        let mut stock = StockIndex::default();
        for (sku, site, n) in [("A", "wh1", 5), ("B", "wh1", 40), ("C", "wh1", 10_000), ("A", "wh2", 40)] {
            stock.available.insert((sku.into(), site.into()), n);
        }
        let run = run_default(&idx, &stock);
        let keys: Vec<&str> = run.rows.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(run.skipped_insufficient_history, 1);
        // A@wh1 runs out first; B@wh1 and A@wh2 tie on the stock-out day and are ordered by key; C last.
        assert_eq!(keys, ["wh1|A", "wh1|B", "wh2|A", "wh1|C"]);
        assert!(run.rows[0].reorder_qty > 0 && run.rows[3].reorder_qty == 0);
        assert_eq!(run.rows[0].stockout_date.as_deref(), Some(iso_date(TODAY).as_str()));

        let mut rows = vec![run.rows[1].clone(), run.rows[2].clone()];
        rows[0].shortfall = 1.0;
        rows[1].shortfall = 2.0;
        rank(&mut rows);
        assert_eq!(rows[0].key, "wh2|A", "larger shortfall first on the same stock-out day");
        assert!(run.rows.iter().all(|r| r.on_order == 0 && r.on_order_source == ON_ORDER_SOURCE));
        assert!(run.rows.iter().all(|r| r.lead_time_source == "default" && r.lead_time_days == 7));
    }

    #[test]
    fn replenishment_uses_per_site_and_sku_parameters() {
        let mut idx = DemandIndex::new(TODAY);
        for d in 0..90u64 {
            idx.add_order("wh1", (TODAY - 90 + d) * DAY_MS, None, [("A", 10), ("B", 10)]);
        }
        let stock = StockIndex::default();
        let config: ForecastConfig = toml::from_str(
            "lead_time_days = 3\n[sites.wh1]\nlead_time_days = 14\n[skus.B]\nservice_level = 0.99\norder_cycle_days = 7",
        )
        .unwrap();
        let none = Override::default();
        let run = replenishment(&idx, &stock, &RunParams { basis: Basis::Ordered, config: &config, query: &none });
        let row = |sku: &str| run.rows.iter().find(|r| r.sku == sku).unwrap().clone();
        let (a, b) = (row("A"), row("B"));
        assert_eq!((a.lead_time_days, a.lead_time_source), (14, "site"));
        assert_eq!((a.service_level, a.service_level_source), (0.95, "default"));
        assert_eq!((b.service_level, b.service_level_source), (0.99, "sku"));
        assert_eq!((b.order_cycle_days, b.order_cycle_source), (7, "sku"));
        // 14 days of lead time at 10 a day.
        assert!((a.lead_time_demand - 140.0).abs() < 15.0, "{a:?}");
        let q = Override { lead_time_days: Some(2), ..Override::default() };
        let run = replenishment(&idx, &stock, &RunParams { basis: Basis::Ordered, config: &config, query: &q });
        assert!(run.rows.iter().all(|r| r.lead_time_days == 2 && r.lead_time_source == "query"));
        // Nothing shipped yet: no rows on the shipped basis.
        let run = replenishment(&idx, &stock, &RunParams { basis: Basis::Shipped, config: &config, query: &none });
        assert!(run.rows.is_empty());
    }

    #[test]
    fn csv_has_header_and_rows() {
        let mut idx = DemandIndex::new(TODAY);
        for d in 0..30u64 {
            idx.add_order("wh1", (TODAY - 30 + d) * DAY_MS, None, [("A", 3)]);
        }
        let run = run_default(&idx, &StockIndex::default());
        let csv = to_csv(&run.rows);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], CSV_HEADER);
        assert!(lines[1].starts_with("A,wh1,"), "{}", lines[1]);
        assert_eq!(lines[1].split(',').count(), CSV_HEADER.split(',').count());
        assert_eq!(csv_field("a,\"b"), "\"a,\"\"b\"");
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso_date(0), "1970-01-01");
        assert_eq!(iso_date(20_000), "2024-10-04");
        assert_eq!(iso_date(19_782), "2024-02-29");
        assert_eq!(iso_date(10_957), "2000-01-01");
    }

    #[test]
    fn cache_rebuilds_when_documents_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut docs = hub_docs(dir.path(), &[("wh1", 1, TODAY - 1, 0, FulfillmentState::Accepted, &[("A", 1)])], &[]);
        let cache = DemandCache::default();
        let a = cache.snapshot(&docs, TODAY);
        let b = cache.snapshot(&docs, TODAY);
        assert!(Arc::ptr_eq(&a.index, &b.index));
        docs.status(&NodeId::parse("wh1").unwrap()).changes_applied += 1;
        let c = cache.snapshot(&docs, TODAY);
        assert!(!Arc::ptr_eq(&a.index, &c.index));
        let d = cache.snapshot(&docs, TODAY + 1);
        assert_eq!(d.index.today, TODAY + 1);
    }
}
