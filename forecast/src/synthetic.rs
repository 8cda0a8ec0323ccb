//! A seeded synthetic SKU panel and an inventory simulation on it.
//!
//! Real SKU-level data with intermittent demand is not shipped with oms, so the intermittent
//! models and the replenishment logic are checked on a reproducible panel: smooth (Poisson around
//! a weekly-seasonal level with drift), erratic (frequent, log-normal sizes), intermittent
//! (infrequent, stable sizes) and lumpy (infrequent, log-normal sizes) daily demand, and a share
//! of items that stop selling part-way through. The generator uses SplitMix64 (Steele, Lea &
//! Flood 2014): a 64-bit state, one multiply-xorshift per draw, good statistical quality for
//! simulation, and hand-written in a dozen lines so the panel is identical on every platform and
//! crate version with no dependency.
//!
//! [`simulate_inventory`] replays the last part of a series day by day under a continuous-review
//! (s, S) policy driven by [`crate::forecast`] and [`crate::replenishment`]: it re-forecasts
//! every `refit_every_days`, orders up to S when the inventory position falls to the reorder
//! point s, backorders unmet demand, and measures the cycle service level, the fill rate and the
//! average stock on hand.
//!
//! **Cycle service level.** A replenishment cycle runs from one receipt to the next (Silver, Pyke
//! & Thomas 2017 §7.2: the share of replenishment cycles without a stock-out); every stock-out day
//! belongs to exactly one cycle, the one the next receipt ends. Cycles start at the first receipt
//! (the initial stock is not a real receipt) and the last, unfinished one is not counted. An
//! earlier version counted, per order, the `lead_time_days` after it was placed. With erratic
//! demand a large day can trigger a second order while the first is still in transit; the days
//! before the first one arrives then belonged to both windows, and a stock-out there (which the
//! second order cannot prevent: it arrives later) was counted twice. On the panel (seed 42, 120
//! erratic items) those overlapping orders were 6% of the windows with a realised CSL of 61%,
//! against 96% for the others, while the lead-time error quantile itself was exceeded in 5.3% of
//! all 7-day windows. Both figures are reported ([`InventoryOutcome::order_window_service_level`]).

use std::io::Write;

use crate::forecast::{self, AutoConfig, Forecast, ModelKind};
use crate::models::simple::seasonal_naive;
use crate::replenishment::{LeadTimeRisk, PlanOptions, lead_time_risk, plan_with_risk};
use crate::stats::{mean, seasonal_naive_mse};

// Casts: series lengths, days, ids and outcome counters are far below 2^53, so `as f64` on them is exact.

/// SplitMix64 pseudo-random generator.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// Generator with the given seed.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        // Exact: both are at most 2^53.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Poisson draw (Knuth's product method below 30, rounded normal approximation above).
    pub fn poisson(&mut self, lambda: f64) -> f64 {
        if lambda <= 0.0 || !lambda.is_finite() {
            return 0.0;
        }
        if lambda > 30.0 {
            return (lambda + lambda.sqrt() * self.normal()).round().max(0.0);
        }
        let limit = (-lambda).exp();
        let mut k = 0.0;
        let mut p = self.uniform();
        while p > limit {
            k += 1.0;
            p *= self.uniform();
        }
        k
    }
}

/// Demand pattern of a synthetic series (the generator's truth, not an estimate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pattern {
    /// Daily Poisson demand around a weekly-seasonal level.
    Smooth,
    /// Frequent demand with highly variable sizes.
    Erratic,
    /// Infrequent demand with stable sizes.
    Intermittent,
    /// Infrequent demand with highly variable sizes.
    Lumpy,
}

impl Pattern {
    /// Whether the pattern is intermittent or lumpy.
    pub fn is_intermittent(self) -> bool {
        matches!(self, Pattern::Intermittent | Pattern::Lumpy)
    }

    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Smooth => "smooth",
            Pattern::Erratic => "erratic",
            Pattern::Intermittent => "intermittent",
            Pattern::Lumpy => "lumpy",
        }
    }
}

/// One synthetic SKU.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSeries {
    /// Index in the panel.
    pub id: usize,
    /// Generating pattern.
    pub pattern: Pattern,
    /// Day from which the item no longer sells, if it stops.
    pub stops_at_day: Option<usize>,
    /// Daily demand (non-negative integers).
    pub values: Vec<f64>,
}

/// Generates `n_series` daily series of `n_days` days. The mix is 30% smooth, 20% erratic, 30%
/// intermittent, 20% lumpy; 10% of items stop selling between 50% and 95% of the way through.
/// The same `(seed, id)` always gives the same series, whatever `n_series` is.
pub fn synthetic_panel(seed: u64, n_series: usize, n_days: usize) -> Vec<SyntheticSeries> {
    (0..n_series)
        .map(|id| {
            // cannot truncate: usize has at most 64 bits.
            let mut rng = SplitMix64::new(seed ^ (id as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
            // Decorrelate neighbouring seeds.
            rng.next_u64();
            let u = rng.uniform();
            let pattern = if u < 0.3 {
                Pattern::Smooth
            } else if u < 0.5 {
                Pattern::Erratic
            } else if u < 0.8 {
                Pattern::Intermittent
            } else {
                Pattern::Lumpy
            };
            // Truncated towards zero to a whole day in [n_days/2, n_days): finite, non-negative, below n_days.
            let stops_at_day = (rng.uniform() < 0.1).then(|| (n_days as f64 * rng.range(0.5, 0.95)) as usize);
            let mut week = [0.0; 7];
            for w in week.iter_mut() {
                *w = rng.range(0.75, 1.25);
            }
            let wm = week.iter().sum::<f64>() / 7.0;
            week.iter_mut().for_each(|w| *w /= wm);
            let drift = rng.range(-0.5, 0.8); // relative change of the level over the series
            let values = match pattern {
                Pattern::Smooth => {
                    let level = rng.range(5f64.ln(), 60f64.ln()).exp();
                    (0..n_days)
                        .map(|t| {
                            let trend = 1.0 + drift * t as f64 / n_days.max(1) as f64;
                            rng.poisson(level * week[t % 7] * trend)
                        })
                        .collect::<Vec<_>>()
                }
                Pattern::Erratic => {
                    let median = rng.range(3.0, 15.0);
                    let sigma = rng.range(0.9, 1.3);
                    (0..n_days)
                        .map(|t| {
                            if rng.uniform() < 0.9 * week[t % 7].min(1.1) {
                                (median * (sigma * rng.normal()).exp()).round().max(1.0)
                            } else {
                                0.0
                            }
                        })
                        .collect()
                }
                Pattern::Intermittent | Pattern::Lumpy => {
                    let p = rng.range(0.04, 0.5);
                    let lumpy = pattern == Pattern::Lumpy;
                    let lambda = rng.range(0.3, 3.0);
                    let median = rng.range(2.0, 10.0);
                    let sigma = rng.range(0.9, 1.4);
                    (0..n_days)
                        .map(|t| {
                            let trend = (1.0 + 0.5 * drift * t as f64 / n_days.max(1) as f64).max(0.1);
                            if rng.uniform() < (p * trend * week[t % 7]).min(1.0) {
                                if lumpy {
                                    (median * (sigma * rng.normal()).exp()).round().max(1.0)
                                } else {
                                    1.0 + rng.poisson(lambda)
                                }
                            } else {
                                0.0
                            }
                        })
                        .collect()
                }
            };
            let mut values = values;
            if let Some(stop) = stops_at_day {
                values.iter_mut().skip(stop).for_each(|v| *v = 0.0);
            }
            SyntheticSeries { id, pattern, stops_at_day, values }
        })
        .collect()
}

/// Settings of [`simulate_inventory`].
#[derive(Debug, Clone, PartialEq)]
pub struct InventoryConfig {
    /// Replenishment lead time.
    pub lead_time_days: usize,
    /// Target cycle service level.
    pub service_level: f64,
    /// Demand an order covers beyond the lead time.
    pub order_cycle_days: usize,
    /// Days simulated at the end of the series (the rest is initial history).
    pub simulated_days: usize,
    /// Re-estimate the forecast this often.
    pub refit_every_days: usize,
    /// Re-run the automatic model choice this often (a multiple of `refit_every_days`; in
    /// between the chosen model is only re-estimated).
    pub reselect_every_days: usize,
    /// Only the most recent this-many days of history are used for fitting.
    pub history_window_days: usize,
    /// Season length of the data (7 for daily).
    pub season: usize,
}

/// Defaults: 7-day lead time, 95% target, 14-day order cycle, one simulated year, quarterly
/// re-estimation and yearly model choice on the last two years. Measured on the panel (seed 42,
/// 100 items): a two-year window gave a realised CSL of 0.939 against 0.930 with one year and
/// monthly refits, at a third of the cost (the safety-stock quantile needs many error windows).
impl Default for InventoryConfig {
    fn default() -> Self {
        InventoryConfig {
            lead_time_days: 7,
            service_level: 0.95,
            order_cycle_days: 14,
            simulated_days: 364,
            refit_every_days: 91,
            reselect_every_days: 364,
            history_window_days: 730,
            season: 7,
        }
    }
}

/// Outcome of [`simulate_inventory`] (additive over items via [`InventoryOutcome::merge`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InventoryOutcome {
    /// Complete replenishment cycles (receipt to next receipt) inside the simulation.
    pub cycles: usize,
    /// Of those, cycles in which all demand was served from stock.
    pub cycles_without_stockout: usize,
    /// Orders whose whole lead time fell inside the simulation (the earlier, per-order measure).
    pub order_windows: usize,
    /// Of those, orders whose lead time passed without unmet demand.
    pub order_windows_without_stockout: usize,
    /// Total demand.
    pub demand: f64,
    /// Demand served from stock on the day it occurred.
    pub filled: f64,
    /// Sum over days of end-of-day stock on hand.
    pub on_hand_days: f64,
    /// Days simulated.
    pub days: usize,
}

impl InventoryOutcome {
    /// Realised cycle service level (1 when no cycle was observed).
    pub fn cycle_service_level(&self) -> f64 {
        if self.cycles == 0 { 1.0 } else { self.cycles_without_stockout as f64 / self.cycles as f64 }
    }

    /// Share of orders whose `lead_time_days` after placement passed without a stock-out (1 when
    /// none was observed). Counts a stock-out in every order window it falls in; see the module docs.
    pub fn order_window_service_level(&self) -> f64 {
        if self.order_windows == 0 {
            1.0
        } else {
            self.order_windows_without_stockout as f64 / self.order_windows as f64
        }
    }

    /// Fill rate (1 when there was no demand).
    pub fn fill_rate(&self) -> f64 {
        if self.demand <= 0.0 { 1.0 } else { self.filled / self.demand }
    }

    /// Average stock on hand per day.
    pub fn average_on_hand(&self) -> f64 {
        if self.days == 0 { 0.0 } else { self.on_hand_days / self.days as f64 }
    }

    /// Adds another item's outcome.
    pub fn merge(&mut self, other: &InventoryOutcome) {
        self.cycles += other.cycles;
        self.cycles_without_stockout += other.cycles_without_stockout;
        self.order_windows += other.order_windows;
        self.order_windows_without_stockout += other.order_windows_without_stockout;
        self.demand += other.demand;
        self.filled += other.filled;
        self.on_hand_days += other.on_hand_days;
        self.days += other.days;
    }
}

fn refit(
    history: &[f64],
    config: &InventoryConfig,
    h: usize,
    chosen: &mut Option<ModelKind>,
    reselect: bool,
) -> Option<Forecast> {
    let window = &history[history.len().saturating_sub(config.history_window_days)..];
    if !reselect
        && let Some(kind) = *chosen
        && let Ok(f) = forecast::fit(kind, window, config.season, h, &[])
    {
        return Some(f);
    }
    let f = forecast::auto_with(window, config.season, h, &[], &AutoConfig::default()).ok()?;
    *chosen = if f.fallback.is_none() { Some(f.model) } else { None };
    Some(f)
}

/// Simulates the last `config.simulated_days` of `demand` under the forecast-driven (s, S)
/// policy described in the module docs. Orders placed at the end of day `t` arrive at the start
/// of day `t + lead_time_days + 1`, so each order's risk window is the `lead_time_days` days
/// after it. Starts with stock at the order-up-to level.
pub fn simulate_inventory(demand: &[f64], config: &InventoryConfig) -> InventoryOutcome {
    let n = demand.len();
    let l = config.lead_time_days;
    let start = n.saturating_sub(config.simulated_days).max(1);
    let mut out = InventoryOutcome::default();
    if start >= n {
        return out;
    }
    let refit_every = config.refit_every_days.max(1);
    let h = refit_every + l + config.order_cycle_days + 1;
    let options = |offset: usize| PlanOptions { order_cycle_days: config.order_cycle_days, start_offset_days: offset };
    let mut chosen = None;
    let risk_of = |f: &Option<Forecast>| -> Option<LeadTimeRisk> {
        f.as_ref().map(|f| lead_time_risk(f, l, config.service_level))
    };
    let mut fc = refit(&demand[..start], config, h, &mut chosen, true);
    let mut risk = risk_of(&fc);
    let mut fitted_at = start;
    let mut net = match (&fc, &risk) {
        (Some(f), Some(r)) => plan_with_risk(f, r, 0.0, 0.0, &options(0)).order_up_to.ceil(),
        _ => 0.0,
    };
    let mut arrivals: Vec<(usize, f64)> = Vec::new(); // (arrival day, quantity)
    let mut open: Vec<(usize, usize, bool)> = Vec::new(); // (first risk day, last risk day, stocked out)
    // The current replenishment cycle: stocked out yet? `None` before the first receipt.
    let mut cycle: Option<bool> = None;
    for t in start..n {
        if t > start && (t - start).is_multiple_of(refit_every) {
            let reselect = (t - start).is_multiple_of(config.reselect_every_days.max(refit_every));
            fc = refit(&demand[..t], config, h, &mut chosen, reselect);
            risk = risk_of(&fc);
            fitted_at = t;
        }
        // Receive; a receipt ends the current cycle and starts the next.
        let before = arrivals.len();
        arrivals.retain(|&(day, qty)| {
            if day <= t {
                net += qty;
                false
            } else {
                true
            }
        });
        if arrivals.len() < before {
            if let Some(stocked_out) = cycle {
                out.cycles += 1;
                if !stocked_out {
                    out.cycles_without_stockout += 1;
                }
            }
            cycle = Some(false);
        }
        // Serve (backorders are netted in `net`).
        let d = demand[t].max(0.0);
        let filled = d.min(net.max(0.0));
        net -= d;
        out.demand += d;
        out.filled += filled;
        if filled < d {
            for c in open.iter_mut().filter(|c| c.0 <= t && t <= c.1) {
                c.2 = true;
            }
            if let Some(stocked_out) = cycle.as_mut() {
                *stocked_out = true;
            }
        }
        // Close order windows whose lead time ended.
        open.retain(|c| {
            if c.1 <= t {
                out.order_windows += 1;
                if !c.2 {
                    out.order_windows_without_stockout += 1;
                }
                false
            } else {
                true
            }
        });
        out.on_hand_days += net.max(0.0);
        out.days += 1;
        // Review at the end of the day.
        if let (Some(f), Some(r)) = (&fc, &risk) {
            let on_order: f64 = arrivals.iter().map(|a| a.1).sum();
            let p = plan_with_risk(f, r, net, on_order, &options(t + 1 - fitted_at));
            if p.reorder_qty > 0.0 {
                let qty = p.reorder_qty.ceil();
                arrivals.push((t + l + 1, qty));
                if t + l < n && l > 0 {
                    open.push((t + 1, t + l, false));
                }
            }
        }
    }
    out
}

/// Summary printed by [`panel_command`].
#[derive(Debug, Clone, PartialEq)]
pub struct PanelSummary {
    /// Intermittent or lumpy series evaluated.
    pub intermittent_series: usize,
    /// Mean RMSSE of the automatic choice on them (h = 28, origins n−3h, n−2h, n−h).
    pub auto_rmsse: f64,
    /// Mean RMSSE of seasonal naive (period 7) on them.
    pub seasonal_naive_rmsse: f64,
    /// Inventory simulation over all series.
    pub inventory: InventoryOutcome,
}

fn rmsse(train: &[f64], test: &[f64], fc: &[f64]) -> f64 {
    let scale = seasonal_naive_mse(train, 7);
    let scale = if scale > 0.0 { scale } else { 1.0 };
    let mse = test.iter().zip(fc).map(|(a, f)| (a - f).powi(2)).sum::<f64>() / test.len().max(1) as f64;
    (mse / scale).sqrt()
}

/// Panel length used by [`panel_command`] (the M5 competition's 1,941 days).
pub const PANEL_DAYS: usize = 1941;

/// Generates a panel of `n` series of [`PANEL_DAYS`] days with `seed`, reports the mean RMSSE
/// of the automatic choice vs seasonal naive on its intermittent and lumpy series, and runs the
/// inventory simulation (default [`InventoryConfig`], 95% target) over all series on up to two
/// threads.
pub fn panel_command(out: &mut dyn Write, seed: u64, n: usize) -> std::io::Result<PanelSummary> {
    let panel = synthetic_panel(seed, n, PANEL_DAYS);
    let h = 28;
    let mut auto_scores = Vec::new();
    let mut snaive_scores = Vec::new();
    for s in panel.iter().filter(|s| s.pattern.is_intermittent()) {
        let len = s.values.len();
        for k in (1..=3).rev() {
            let Some(origin) = len.checked_sub(k * h) else { continue };
            if origin < 2 * h {
                continue;
            }
            let train = &s.values[..origin];
            let test = &s.values[origin..origin + h];
            let auto_fc = forecast::auto(train, 7, h, &[]).map(|f| f.mean).unwrap_or_else(|_| vec![0.0; h]);
            auto_scores.push(rmsse(train, test, &auto_fc));
            snaive_scores.push(rmsse(train, test, &seasonal_naive(train, 7, h).mean));
        }
    }
    let config = InventoryConfig::default();
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get()).clamp(1, 2);
    let chunk = panel.len().div_ceil(threads).max(1);
    let mut per_pattern: Vec<(Pattern, InventoryOutcome)> = Vec::new();
    std::thread::scope(|scope| {
        let handles: Vec<_> = panel
            .chunks(chunk)
            .map(|part| {
                let config = &config;
                scope.spawn(move || {
                    part.iter().map(|s| (s.pattern, simulate_inventory(&s.values, config))).collect::<Vec<_>>()
                })
            })
            .collect();
        for handle in handles {
            if let Ok(v) = handle.join() {
                per_pattern.extend(v);
            }
        }
    });
    let mut total = InventoryOutcome::default();
    for (_, o) in &per_pattern {
        total.merge(o);
    }
    let summary = PanelSummary {
        intermittent_series: panel.iter().filter(|s| s.pattern.is_intermittent()).count(),
        auto_rmsse: mean(&auto_scores),
        seasonal_naive_rmsse: mean(&snaive_scores),
        inventory: total,
    };
    writeln!(
        out,
        "synthetic panel: seed {seed}, {n} series x {PANEL_DAYS} days, {} intermittent/lumpy",
        summary.intermittent_series
    )?;
    writeln!(
        out,
        "intermittent RMSSE (h=28, 3 origins): auto {:.4}  seasonal naive {:.4}  reduction {:.1}%",
        summary.auto_rmsse,
        summary.seasonal_naive_rmsse,
        100.0 * (1.0 - summary.auto_rmsse / summary.seasonal_naive_rmsse.max(1e-12))
    )?;
    for pattern in [Pattern::Smooth, Pattern::Erratic, Pattern::Intermittent, Pattern::Lumpy] {
        let mut o = InventoryOutcome::default();
        for (_, x) in per_pattern.iter().filter(|(p, _)| *p == pattern) {
            o.merge(x);
        }
        writeln!(
            out,
            "inventory {:<12} CSL {:.3}  fill rate {:.3}  avg on hand {:.2}  cycles {}  (per-order window CSL {:.3} over {})",
            pattern.name(),
            o.cycle_service_level(),
            o.fill_rate(),
            o.average_on_hand(),
            o.cycles,
            o.order_window_service_level(),
            o.order_windows
        )?;
    }
    let t = &summary.inventory;
    writeln!(
        out,
        "inventory (target CSL {:.2}, lead time {} days): realised CSL {:.4}  fill rate {:.4}  avg on hand {:.2} units/item/day  (per-order window CSL {:.4})",
        config.service_level,
        config.lead_time_days,
        t.cycle_service_level(),
        t.fill_rate(),
        t.average_on_hand(),
        t.order_window_service_level()
    )?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::intermittent::{DemandClass, classify};

    #[test]
    fn panel_is_reproducible_and_covers_all_patterns() {
        let a = synthetic_panel(7, 60, 400);
        let b = synthetic_panel(7, 60, 400);
        assert_eq!(a, b);
        assert_ne!(a, synthetic_panel(8, 60, 400));
        let mut classes = std::collections::HashSet::new();
        for s in &a {
            assert!(s.values.iter().all(|v| *v >= 0.0 && v.is_finite()));
            if let Some(p) = classify(&s.values) {
                classes.insert(format!("{:?}", p.class));
            }
        }
        for c in [DemandClass::Smooth, DemandClass::Erratic, DemandClass::Intermittent, DemandClass::Lumpy] {
            assert!(classes.contains(&format!("{c:?}")), "{classes:?}");
        }
        assert!(a.iter().any(|s| s.stops_at_day.is_some()));
    }

    #[test]
    fn simulation_meets_service_level_roughly() {
        // Stationary Poisson demand: the realised CSL should be near the 95% target.
        let mut rng = SplitMix64::new(1);
        let demand: Vec<f64> = (0..500).map(|_| rng.poisson(6.0)).collect();
        let config = InventoryConfig {
            simulated_days: 300,
            refit_every_days: 100,
            reselect_every_days: 300,
            history_window_days: 200,
            ..InventoryConfig::default()
        };
        let o = simulate_inventory(&demand, &config);
        assert!(o.cycles > 10 && o.order_windows > 10);
        assert!(o.cycle_service_level() > 0.8, "{o:?}");
        assert!(o.order_window_service_level() > 0.8, "{o:?}");
        assert!(o.fill_rate() > 0.9, "{o:?}");
        assert!(o.average_on_hand() > 0.0);
    }

    #[test]
    fn a_stockout_counts_once_per_replenishment_cycle() {
        // Steady demand of 10 a day, then one day of 100 while an order is in transit: it triggers a
        // second order whose window overlaps the first one's. The per-order measure charges the
        // stock-out to both orders, the receipt-to-receipt measure to the one cycle it fell in.
        let mut demand = vec![10.0; 400];
        demand[330] = 100.0;
        let config = InventoryConfig {
            simulated_days: 100,
            refit_every_days: 100,
            reselect_every_days: 100,
            history_window_days: 300,
            ..InventoryConfig::default()
        };
        let o = simulate_inventory(&demand, &config);
        assert!(o.cycles >= 3, "{o:?}");
        assert_eq!(o.cycles - o.cycles_without_stockout, 1, "{o:?}");
        assert_eq!(o.order_windows - o.order_windows_without_stockout, 2, "{o:?}");
    }
}
