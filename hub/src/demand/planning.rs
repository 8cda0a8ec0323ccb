//! Planning: the forecast and replenishment figures of one series ([`forecast_item`]) and the replenishment
//! run over every SKU × site ([`replenishment`]), most urgent first.
//!
//! [`forecast_item`] runs [`oms_forecast::auto`] (weekly season) on a series and [`oms_forecast::plan`] on
//! the available stock (on hand minus reserved) from the site's stock document, or the network total. Lead
//! time, service level and order cycle are resolved per item from the `[forecast]` configuration
//! ([`crate::forecast_config`]) unless the request sets them. Stock on order is what open purchase orders
//! will still bring to the site ([`Supply`], from [`crate::purchasing`]; [`ON_ORDER_SOURCE`]): it counts in
//! the inventory position, so a suggestion is smaller by exactly the units on order (while the position
//! stays below the reorder point). The cheapest supplier of a SKU names the lead time (unless the
//! configuration or the query sets one) and rounds the order up to its MOQ and order multiple (`po_qty`).

use oms_forecast::{Forecast, ForecastError};

use super::history::{Basis, DemandIndex, History, iso_date};
use super::stock::StockIndex;
use crate::forecast_config::{ForecastConfig, Override, Resolved};

/// Fewest days of history (first demand day to yesterday) a forecast needs.
pub(crate) const MIN_HISTORY_DAYS: usize = 14;
/// Most SKU × site items forecast for one replenishment run.
pub(crate) const REPLENISHMENT_ITEMS_MAX: usize = 5_000;
/// Season length used for daily demand (weekly pattern).
pub(crate) const SEASON_DAYS: usize = 7;
/// Quantile levels reported.
pub(crate) const QUANTILES: [f64; 3] = [0.1, 0.5, 0.9];
/// Horizon used for replenishment runs (the plan extends the last week beyond it).
pub(crate) const REPLENISHMENT_HORIZON: usize = 28;
/// Where stock on order comes from: the open purchase orders.
pub(crate) const ON_ORDER_SOURCE: &str = "purchase_orders";
/// Purchase orders and expected dates named per suggestion; more are counted in `on_order` all the same.
pub(crate) const ON_ORDER_LISTED_MAX: usize = 10;

/// What purchasing tells the replenishment: units on order and each SKU's supplier terms.
#[derive(Debug, Clone, Default)]
pub struct Supply {
    /// Moves with every change of suppliers or orders (the cache key).
    pub generation: u64,
    /// Open PO quantities per (SKU, site).
    pub on_order: crate::purchasing::store::OnOrderIndex,
    /// The chosen supplier's terms per SKU.
    pub offers:
        std::collections::BTreeMap<String, (crate::purchasing::model::Supplier, crate::purchasing::model::SupplierSku)>,
}

/// Why demand figures could not be produced.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum DemandError {
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

/// Replenishment parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PlanParams {
    /// Forecast horizon in days.
    pub(crate) h: usize,
    /// Supplier lead time in days.
    pub(crate) lead_time_days: usize,
    /// Cycle service level.
    pub(crate) service_level: f64,
    /// Days of demand an order covers beyond the lead time.
    pub(crate) order_cycle_days: usize,
}

impl PlanParams {
    /// Horizon `h` with resolved parameters.
    pub(crate) fn from_resolved(h: usize, r: &Resolved) -> PlanParams {
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
pub(crate) struct ItemForecast {
    /// The history it was fitted on.
    pub(crate) history: History,
    /// The forecast.
    pub(crate) forecast: Forecast,
    /// The plan for the available stock.
    pub(crate) plan: oms_forecast::Plan,
    /// Available units used.
    pub(crate) available: u64,
    /// Epoch day of forecast day 0 (today).
    pub(crate) today: u64,
}

impl ItemForecast {
    /// Reorder point minus inventory position, at least zero.
    fn shortfall(&self) -> f64 {
        (self.plan.reorder_point - self.plan.inventory_position).max(0.0)
    }

    /// Units to order (rounded up), or `None` when no order is due.
    pub(crate) fn reorder_qty(&self) -> Option<u64> {
        // Rounded up to whole units. `plan` keeps the quantity finite and ≥ 0 and NaN fails `> 0.0`; a quantity
        // beyond u64::MAX would saturate there, which is the intended meaning.
        (self.plan.reorder_qty > 0.0).then(|| self.plan.reorder_qty.ceil() as u64)
    }

    /// Epoch day of the expected stock-out.
    pub(crate) fn stockout_day(&self) -> Option<u64> {
        // cannot truncate: usize has at most 64 bits, and `d` is at most MAX_COVER_DAYS.
        self.plan.stockout_day.map(|d| self.today + d as u64)
    }
}

/// Forecasts `history` and plans replenishment for `available` units. Never yields NaN.
pub(crate) fn forecast_item(
    history: History,
    available: u64,
    on_order: u64,
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
    // Exact below 2^53 units, far above any stock count; beyond it the nearest f64 is close enough to plan with.
    let plan = oms_forecast::replenishment::plan_with(
        &forecast,
        available as f64,
        on_order as f64,
        params.lead_time_days,
        params.service_level,
        &options,
    );
    Ok(ItemForecast { history, forecast, plan, available, today })
}

/// One row of `GET /v1/replenishment`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Suggestion {
    /// Paging key: `site|sku`.
    pub(crate) key: String,
    /// SKU.
    pub(crate) sku: String,
    /// Fulfilling site.
    pub(crate) site: String,
    /// Model chosen.
    pub(crate) model: String,
    /// Days of history.
    pub(crate) history_days: usize,
    /// Available units.
    pub(crate) available: u64,
    /// Mean daily demand over the horizon.
    pub(crate) mean_daily_demand: f64,
    /// Expected lead-time demand.
    pub(crate) lead_time_demand: f64,
    /// Safety stock.
    pub(crate) safety_stock: f64,
    /// Reorder point.
    pub(crate) reorder_point: f64,
    /// Reorder point minus inventory position, at least zero.
    pub(crate) shortfall: f64,
    /// Days the stock lasts.
    pub(crate) days_of_cover: Option<f64>,
    /// Day offset of the expected stock-out (0 = today).
    pub(crate) stockout_day: Option<usize>,
    /// ISO date of the expected stock-out.
    pub(crate) stockout_date: Option<String>,
    /// Units to order now (0 when none is due).
    pub(crate) reorder_qty: u64,
    /// Which history was forecast: `ordered` or `shipped`.
    pub(crate) basis: &'static str,
    /// Lead time used, days.
    pub(crate) lead_time_days: usize,
    /// Where the lead time came from (`query`, `site_sku`, `sku`, `site`, `default`).
    pub(crate) lead_time_source: &'static str,
    /// Service level used.
    pub(crate) service_level: f64,
    /// Where the service level came from.
    pub(crate) service_level_source: &'static str,
    /// Order cycle used, days.
    pub(crate) order_cycle_days: usize,
    /// Where the order cycle came from.
    pub(crate) order_cycle_source: &'static str,
    /// Units on order: open purchase orders to this site, not received or short-closed.
    pub(crate) on_order: u64,
    /// Where stock on order comes from: [`ON_ORDER_SOURCE`].
    pub(crate) on_order_source: &'static str,
    /// Expected arrival dates of what is on order (earliest first, at most [`ON_ORDER_LISTED_MAX`]).
    pub(crate) on_order_expected: Vec<String>,
    /// The purchase orders it is on (at most [`ON_ORDER_LISTED_MAX`]).
    pub(crate) on_order_pos: Vec<String>,
    /// The supplier the order would go to (the cheapest offer of the SKU), if any.
    pub(crate) supplier: Option<String>,
    /// `reorder_qty` rounded up to the supplier's MOQ and order multiple: what a PO would order.
    pub(crate) po_qty: u64,
}

/// Rounds for display; non-finite values become zero.
pub(crate) fn round3(v: f64) -> f64 {
    if v.is_finite() { (v * 1000.0).round() / 1000.0 } else { 0.0 }
}

impl Suggestion {
    fn from_item(
        sku: &str,
        site: &str,
        item: &ItemForecast,
        basis: Basis,
        params: &Resolved,
        supply: &Supply,
    ) -> Suggestion {
        let on = supply.on_order.get(&(sku.to_owned(), site.to_owned()));
        let offer = supply.offers.get(sku);
        let reorder_qty = item.reorder_qty().unwrap_or(0);
        // Exact: a horizon is at most H_MAX days, far below 2^53.
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
            reorder_qty,
            basis: basis.as_str(),
            lead_time_days: params.lead_time_days.value,
            lead_time_source: params.lead_time_days.source.as_str(),
            service_level: params.service_level.value,
            service_level_source: params.service_level.source.as_str(),
            order_cycle_days: params.order_cycle_days.value,
            order_cycle_source: params.order_cycle_days.source.as_str(),
            on_order: on.map_or(0, |o| o.qty),
            on_order_source: ON_ORDER_SOURCE,
            on_order_expected: on
                .map(|o| o.expected_days.iter().take(ON_ORDER_LISTED_MAX).map(|d| iso_date(*d)).collect())
                .unwrap_or_default(),
            on_order_pos: on.map(|o| o.pos.iter().take(ON_ORDER_LISTED_MAX).cloned().collect()).unwrap_or_default(),
            supplier: offer.map(|(s, _)| s.id.to_string()),
            po_qty: match offer {
                Some((_, t)) => crate::purchasing::model::order_qty(reorder_qty, t.moq, t.order_multiple),
                None => reorder_qty,
            },
        }
    }
}

/// `resolved` with the supplier's lead time where nothing more specific than the default set one.
pub(crate) fn resolved_with_supplier(
    mut resolved: Resolved,
    offer: Option<&(crate::purchasing::model::Supplier, crate::purchasing::model::SupplierSku)>,
) -> Resolved {
    if let Some((s, _)) = offer
        && resolved.lead_time_days.source == crate::forecast_config::Source::Default
    {
        resolved.lead_time_days = crate::forecast_config::Param {
            value: usize::try_from(s.lead_time_days).unwrap_or(usize::MAX),
            source: crate::forecast_config::Source::Supplier,
        };
    }
    resolved
}

/// Most urgent first: earliest stock-out (none last), then largest shortfall, then key.
fn rank(rows: &mut [Suggestion]) {
    rows.sort_by(|a, b| {
        let sa = a.stockout_day.unwrap_or(usize::MAX);
        let sb = b.stockout_day.unwrap_or(usize::MAX);
        sa.cmp(&sb).then(b.shortfall.total_cmp(&a.shortfall)).then_with(|| a.key.cmp(&b.key))
    });
}

/// The result of a replenishment run.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Replenishment {
    /// Every SKU × site with enough history, most urgent first.
    pub(crate) rows: Vec<Suggestion>,
    /// Series skipped for too short a history.
    pub(crate) skipped_insufficient_history: usize,
    /// Series skipped because the forecast failed.
    pub(crate) skipped_failed: usize,
    /// More than [`REPLENISHMENT_ITEMS_MAX`] series, or the index was truncated.
    pub(crate) truncated: bool,
}

/// What a replenishment run is asked for besides the data: which history, the configured planning
/// parameters and the request's overrides of them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunParams<'a> {
    /// Which history to forecast.
    pub(crate) basis: Basis,
    /// Defaults and per-site/SKU overrides.
    pub(crate) config: &'a ForecastConfig,
    /// The request's values, which take precedence.
    pub(crate) query: &'a Override,
    /// Units on order and supplier terms.
    pub(crate) supply: &'a Supply,
}

/// Forecasts every SKU × site of `index` on `run.basis` with `stock` and ranks the results.
pub(crate) fn replenishment(index: &DemandIndex, stock: &StockIndex, run: &RunParams<'_>) -> Replenishment {
    let mut out = Replenishment { truncated: index.truncated, ..Replenishment::default() };
    for (n, (sku, site)) in index.pairs(run.basis).enumerate() {
        if n >= REPLENISHMENT_ITEMS_MAX {
            out.truncated = true;
            break;
        }
        let Some(history) = index.history_of(run.basis, sku, Some(site)) else { continue };
        let resolved =
            resolved_with_supplier(run.config.resolve(sku, Some(site), run.query), run.supply.offers.get(sku));
        let params = PlanParams::from_resolved(REPLENISHMENT_HORIZON, &resolved);
        let on_order = run.supply.on_order.get(&(sku.to_owned(), site.to_owned())).map_or(0, |o| o.qty);
        match forecast_item(history, stock.available(sku, Some(site)), on_order, index.today, &params) {
            Ok(item) => out.rows.push(Suggestion::from_item(sku, site, &item, run.basis, &resolved, run.supply)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demand::history::DAY_MS;
    use crate::demand::test_support::{TODAY, run_default};

    fn steady(days: usize) -> History {
        // Steady demand around 10 a day with a small weekly wiggle.
        let values = (0..days).map(|i| [9.0, 11.0, 10.0, 10.0, 12.0, 8.0, 10.0][i % 7]).collect();
        History { start_day: TODAY - days as u64, values }
    }

    const PARAMS: PlanParams = PlanParams { h: 28, lead_time_days: 7, service_level: 0.95, order_cycle_days: 14 };

    #[test]
    fn low_stock_gets_a_reorder_high_stock_none() {
        let low = forecast_item(steady(120), 20, 0, TODAY, &PARAMS).unwrap();
        let qty = low.reorder_qty().unwrap();
        assert!(qty >= 70, "order covers lead time and cycle, got {qty}");
        assert!(low.plan.stockout_day.unwrap() <= 3);
        assert!(low.plan.safety_stock.is_finite() && low.plan.safety_stock > 0.0);
        assert_eq!(low.forecast.quantiles.len(), 3);
        let high = forecast_item(steady(120), 10_000, 0, TODAY, &PARAMS).unwrap();
        assert_eq!(high.reorder_qty(), None);
        assert!(high.plan.days_of_cover.unwrap() > 500.0);
    }

    #[test]
    fn short_history_is_a_typed_error() {
        let err = forecast_item(steady(5), 20, 0, TODAY, &PARAMS).unwrap_err();
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
        let run = replenishment(
            &idx,
            &stock,
            &RunParams { basis: Basis::Ordered, config: &config, query: &none, supply: &Supply::default() },
        );
        let row = |sku: &str| run.rows.iter().find(|r| r.sku == sku).unwrap().clone();
        let (a, b) = (row("A"), row("B"));
        assert_eq!((a.lead_time_days, a.lead_time_source), (14, "site"));
        assert_eq!((a.service_level, a.service_level_source), (0.95, "default"));
        assert_eq!((b.service_level, b.service_level_source), (0.99, "sku"));
        assert_eq!((b.order_cycle_days, b.order_cycle_source), (7, "sku"));
        // 14 days of lead time at 10 a day.
        assert!((a.lead_time_demand - 140.0).abs() < 15.0, "{a:?}");
        let q = Override { lead_time_days: Some(2), ..Override::default() };
        let run = replenishment(
            &idx,
            &stock,
            &RunParams { basis: Basis::Ordered, config: &config, query: &q, supply: &Supply::default() },
        );
        assert!(run.rows.iter().all(|r| r.lead_time_days == 2 && r.lead_time_source == "query"));
        // Nothing shipped yet: no rows on the shipped basis.
        let run = replenishment(
            &idx,
            &stock,
            &RunParams { basis: Basis::Shipped, config: &config, query: &none, supply: &Supply::default() },
        );
        assert!(run.rows.is_empty());
    }

    /// Units on order reduce a suggestion by exactly that many; the supplier's lead time and MOQ/multiple
    /// apply; the row names the supplier, the order and its expected date.
    #[test]
    fn units_on_order_reduce_the_suggestion_exactly() {
        use crate::purchasing::model::{ChannelSpec, Supplier, SupplierSku};
        use crate::purchasing::store::OnOrder;
        use oms_protocol::domain::{Currency, Sku, SupplierId};
        let mut idx = DemandIndex::new(TODAY);
        for d in 0..90u64 {
            idx.add_order("wh1", (TODAY - 90 + d) * DAY_MS, None, [("A", 10)]);
        }
        let mut stock = StockIndex::default();
        stock.available.insert(("A".into(), "wh1".into()), 5);
        let config = ForecastConfig::default();
        let none = Override::default();
        let terms = SupplierSku { supplier_sku: "a-1".into(), cost_minor: 250, moq: 100, order_multiple: 12 };
        let supplier = Supplier {
            id: SupplierId::parse("acme").unwrap(),
            name: "Acme".into(),
            contact: String::new(),
            currency: Currency::parse("EUR").unwrap(),
            lead_time_days: 7,
            skus: [(Sku::parse("A").unwrap(), terms.clone())].into(),
            channel: ChannelSpec::Folder,
            webhook_secret: None,
            updated_at_ms: 0,
        };
        let mut supply = Supply::default();
        supply.offers.insert("A".into(), (supplier, terms));
        let run = |supply: &Supply| {
            let p = RunParams { basis: Basis::Ordered, config: &config, query: &none, supply };
            replenishment(&idx, &stock, &p).rows.into_iter().find(|r| r.key == "wh1|A").unwrap()
        };
        let before = run(&supply);
        assert!(before.reorder_qty > 40, "{before:?}");
        assert_eq!((before.lead_time_days, before.lead_time_source), (7, "supplier"));
        assert_eq!(before.supplier.as_deref(), Some("acme"));
        assert_eq!(before.po_qty, crate::purchasing::model::order_qty(before.reorder_qty, 100, 12));
        assert!(before.po_qty >= 100 && before.po_qty % 12 == 0);
        let on = 30;
        supply.on_order.insert(
            ("A".into(), "wh1".into()),
            OnOrder { qty: on, expected_days: [TODAY + 3].into(), pos: ["PO-000001".to_owned()].into() },
        );
        let after = run(&supply);
        assert_eq!(after.reorder_qty, before.reorder_qty - on, "less by exactly what is on order");
        assert_eq!(after.on_order, on);
        assert_eq!(after.on_order_expected, [iso_date(TODAY + 3)]);
        assert_eq!(after.on_order_pos, ["PO-000001"]);
    }
}
