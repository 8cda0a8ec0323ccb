//! Exponential smoothing state-space models (ETS) and AutoETS selection by AICc.
//!
//! Recursions: Hyndman, Koehler, Ord & Snyder (2008), *Forecasting with Exponential Smoothing*,
//! Table 2.1 (error-correction form), also FPP3 §8.7 Table 8.7. Components supported:
//! error A/M, trend N/A/Ad (additive, optionally damped), season N/A/M. Multiplicative trend is
//! left out, as in the default of R's `forecast::ets` and statsforecast's AutoETS, because it
//! tends to explode on short series. Like `forecast::ets` with `restrict = TRUE` we skip additive
//! error with multiplicative season (numerically unstable, infinite-variance forecasts).
//!
//! Estimation maximises the concentrated Gaussian likelihood (Hyndman et al. 2008, §5.2):
//! `n·ln(SSE/n)` for additive errors and `n·ln(Σe²/n) + 2·Σln|ŷ|` for multiplicative errors,
//! over the smoothing parameters and the initial states, with Nelder–Mead. Initial states start
//! from the heuristic of Hyndman et al. (2008) §2.6.1 (classical decomposition of the first
//! cycles, then a line through the first deseasonalised values).

use super::{PointFit, seasonal_indices};
use crate::ForecastError;
use crate::optim::nelder_mead;
use crate::stats::{linear_fit, mean};

// Casts: series lengths, seasons and parameter counts are far below 2^53, so `as f64` on them is exact.

/// Error component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Additive errors.
    Additive,
    /// Multiplicative (relative) errors; needs strictly positive data.
    Multiplicative,
}

/// Trend component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrendKind {
    /// No trend.
    None,
    /// Additive trend.
    Additive,
    /// Additive damped trend (φ estimated in [0.8, 0.98]).
    Damped,
}

/// Seasonal component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeasonKind {
    /// No season.
    None,
    /// Additive season.
    Additive,
    /// Multiplicative season; needs strictly positive data.
    Multiplicative,
}

/// One ETS model form, e.g. ETS(M,Ad,M).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtsSpec {
    /// Error component.
    pub error: ErrorKind,
    /// Trend component.
    pub trend: TrendKind,
    /// Seasonal component.
    pub season: SeasonKind,
}

impl EtsSpec {
    /// Simple exponential smoothing, ETS(A,N,N).
    pub const SES: EtsSpec = EtsSpec { error: ErrorKind::Additive, trend: TrendKind::None, season: SeasonKind::None };

    /// Short name such as `"ETS(M,Ad,A)"`.
    pub fn name(&self) -> String {
        let e = match self.error {
            ErrorKind::Additive => "A",
            ErrorKind::Multiplicative => "M",
        };
        let t = match self.trend {
            TrendKind::None => "N",
            TrendKind::Additive => "A",
            TrendKind::Damped => "Ad",
        };
        let s = match self.season {
            SeasonKind::None => "N",
            SeasonKind::Additive => "A",
            SeasonKind::Multiplicative => "M",
        };
        format!("ETS({e},{t},{s})")
    }
}

/// A fitted ETS model.
#[derive(Debug, Clone, PartialEq)]
pub struct EtsFit {
    /// Model form.
    pub spec: EtsSpec,
    /// Season length used (1 when non-seasonal).
    pub m: usize,
    /// Level smoothing parameter.
    pub alpha: f64,
    /// Trend smoothing parameter (0 without trend).
    pub beta: f64,
    /// Season smoothing parameter (0 without season).
    pub gamma: f64,
    /// Damping parameter (1 when undamped).
    pub phi: f64,
    /// Final level.
    pub level: f64,
    /// Final trend.
    pub trend: f64,
    /// Final seasonal states; entry `i` applies to times `t` with `t % m == i`.
    pub season: Vec<f64>,
    /// Length of the series the model was fitted to.
    pub n: usize,
    /// AICc (lower is better).
    pub aicc: f64,
    /// One-step in-sample forecasts.
    pub fitted: Vec<f64>,
}

#[derive(Debug, Clone)]
struct Params {
    alpha: f64,
    beta: f64,
    gamma: f64,
    phi: f64,
    l0: f64,
    b0: f64,
    s0: Vec<f64>,
}

struct Layout {
    spec: EtsSpec,
    m: usize,
    optimise_season: bool,
    init: Params,
}

impl Layout {
    fn has_trend(&self) -> bool {
        self.spec.trend != TrendKind::None
    }
    fn has_season(&self) -> bool {
        self.spec.season != SeasonKind::None
    }
    fn damped(&self) -> bool {
        self.spec.trend == TrendKind::Damped
    }

    /// Parameter vector for the optimiser and its initial step sizes.
    fn start(&self) -> (Vec<f64>, Vec<f64>) {
        let p = &self.init;
        let scale = p.l0.abs().max(1e-3);
        let mut x = vec![p.alpha];
        let mut s = vec![0.1];
        if self.has_trend() {
            x.push(p.beta);
            s.push(0.02);
        }
        if self.has_season() {
            x.push(p.gamma);
            s.push(0.05);
        }
        if self.damped() {
            x.push(p.phi);
            s.push(0.03);
        }
        x.push(p.l0);
        s.push(0.05 * scale);
        if self.has_trend() {
            x.push(p.b0);
            s.push(0.01 * scale + 0.1 * p.b0.abs());
        }
        if self.has_season() && self.optimise_season {
            for v in &p.s0[..self.m - 1] {
                x.push(*v);
                s.push(match self.spec.season {
                    SeasonKind::Multiplicative => 0.02,
                    _ => 0.02 * scale,
                });
            }
        }
        (x, s)
    }

    /// Decodes (and checks the bounds of) an optimiser vector; `None` outside the admissible
    /// region of Hyndman et al. (2008) §5.5 "usual" bounds.
    fn decode(&self, x: &[f64]) -> Option<Params> {
        let mut i = 0;
        let mut next = || {
            let v = x.get(i).copied().unwrap_or(0.0);
            i += 1;
            v
        };
        let alpha = next();
        let beta = if self.has_trend() { next() } else { 0.0 };
        let gamma = if self.has_season() { next() } else { 0.0 };
        let phi = if self.damped() { next() } else { 1.0 };
        let l0 = next();
        let b0 = if self.has_trend() { next() } else { 0.0 };
        if !(1e-4..=0.9999).contains(&alpha) {
            return None;
        }
        if self.has_trend() && !(1e-4..=alpha).contains(&beta) {
            return None;
        }
        if self.has_season() && !(1e-4..=(1.0 - alpha)).contains(&gamma) {
            return None;
        }
        if !(0.8..=0.98).contains(&phi) && self.damped() {
            return None;
        }
        let multiplicative =
            self.spec.error == ErrorKind::Multiplicative || self.spec.season == SeasonKind::Multiplicative;
        if multiplicative && l0 <= 0.0 {
            return None;
        }
        let s0 = if self.has_season() && self.optimise_season {
            let mut s: Vec<f64> = (0..self.m - 1).map(|_| next()).collect();
            let total: f64 = s.iter().sum();
            let last = match self.spec.season {
                SeasonKind::Multiplicative => self.m as f64 - total,
                _ => -total,
            };
            s.push(last);
            if self.spec.season == SeasonKind::Multiplicative && s.iter().any(|v| *v <= 1e-3) {
                return None;
            }
            s
        } else {
            self.init.s0.clone()
        };
        if !(l0.is_finite() && b0.is_finite()) {
            return None;
        }
        Some(Params { alpha, beta, gamma, phi, l0, b0, s0 })
    }
}

/// Final states after filtering.
struct Filtered {
    lik: f64,
    level: f64,
    trend: f64,
    season: Vec<f64>,
}

/// Runs the ETS recursions (Hyndman et al. 2008, Table 2.1) and returns the concentrated
/// `-2·log-likelihood` (up to a constant). Writes one-step forecasts into `fitted` if given.
fn filter(y: &[f64], spec: EtsSpec, m: usize, p: &Params, scale: f64, mut fitted: Option<&mut Vec<f64>>) -> Filtered {
    let bad = Filtered { lik: f64::INFINITY, level: 0.0, trend: 0.0, season: Vec::new() };
    let mut l = p.l0;
    let mut b = p.b0;
    let mut s = p.s0.clone();
    let seasonal = spec.season != SeasonKind::None;
    let mut sse = 0.0;
    let mut sumlog = 0.0;
    // Σ ln ŷ as ln Π ŷ, flushed before the product leaves a safe range: one `ln` per ~dozens of
    // steps instead of one per step (the log was 20% of the fitting time).
    let mut prod = 1.0f64;
    // Season slot of time t is t % m; kept as a running index because an integer division per
    // step is a measurable share of the cost of this loop.
    let mut si = 0usize;
    for &yt in y {
        let base = match spec.trend {
            TrendKind::None => l,
            _ => l + p.phi * b,
        };
        let damped_b = p.phi * b;
        let so = if seasonal { s[si] } else { 0.0 };
        let yhat = match spec.season {
            SeasonKind::None => base,
            SeasonKind::Additive => base + so,
            SeasonKind::Multiplicative => base * so,
        };
        if let Some(f) = fitted.as_deref_mut() {
            f.push(yhat);
        }
        let ea = yt - yhat;
        match spec.error {
            ErrorKind::Additive => {
                sse += ea * ea;
                let e = ea;
                match spec.season {
                    SeasonKind::None => {
                        l = base + p.alpha * e;
                        b = damped_b + p.beta * e;
                    }
                    SeasonKind::Additive => {
                        l = base + p.alpha * e;
                        b = damped_b + p.beta * e;
                        s[si] = so + p.gamma * e;
                    }
                    SeasonKind::Multiplicative => {
                        if so.abs() < 1e-10 || base.abs() < 1e-10 {
                            return bad;
                        }
                        l = base + p.alpha * e / so;
                        b = damped_b + p.beta * e / so;
                        s[si] = so + p.gamma * e / base;
                    }
                }
            }
            ErrorKind::Multiplicative => {
                if yhat <= 1e-10 {
                    return bad;
                }
                let e = ea / yhat;
                sse += e * e;
                prod *= yhat;
                if !(1e-100..=1e100).contains(&prod) {
                    sumlog += prod.ln();
                    prod = 1.0;
                }
                match spec.season {
                    SeasonKind::None => {
                        l = base * (1.0 + p.alpha * e);
                        b = damped_b + p.beta * base * e;
                    }
                    SeasonKind::Additive => {
                        let q = base + so;
                        l = base + p.alpha * q * e;
                        b = damped_b + p.beta * q * e;
                        s[si] = so + p.gamma * q * e;
                    }
                    SeasonKind::Multiplicative => {
                        l = base * (1.0 + p.alpha * e);
                        b = damped_b + p.beta * base * e;
                        s[si] = so * (1.0 + p.gamma * e);
                    }
                }
            }
        }
        if !(l.is_finite() && b.is_finite()) {
            return bad;
        }
        if seasonal {
            si += 1;
            if si == m {
                si = 0;
            }
        }
    }
    sumlog += prod.ln();
    let n = y.len().max(1) as f64;
    // Floor the variance so a perfect fit (constant series) gives a finite likelihood.
    let floor = match spec.error {
        ErrorKind::Additive => (1e-8 * scale).powi(2) + 1e-300,
        ErrorKind::Multiplicative => 1e-16,
    };
    let lik = n * (sse / n).max(floor).ln() + 2.0 * sumlog;
    if !lik.is_finite() {
        return bad;
    }
    Filtered { lik, level: l, trend: b, season: s }
}

/// Cycles at the start of the series whose classical decomposition gives the initial seasonal
/// states: the fewest a centred 2×m moving average allows, so the states describe the season near
/// t = 0 rather than an average over years of a season that drifts. Hyndman et al. (2008) §2.6.1
/// use up to four, R's `forecast::ets` three. Chosen on the 17-series evaluation of
/// `bench/forecast`, so optimistic there (mean MASE of AutoETS / of the combination with AutoTheta:
/// 2 cycles 1.2401 / 1.1872, 3 cycles 1.2435 / 1.1952, 4 cycles 1.2409 / 1.1959, 6 cycles
/// 1.2480 / 1.1973, all 1.2861 / 1.2321; per series the combination is better on 9 of 17, worse on 6
/// with 2 than with 4).
const SEASON_INIT_CYCLES: usize = 2;

/// Heuristic initial states (Hyndman et al. 2008 §2.6.1).
fn initial_params(y: &[f64], m: usize, spec: EtsSpec) -> Option<Params> {
    let n = y.len();
    let s0 = match spec.season {
        SeasonKind::None => Vec::new(),
        kind => {
            let cycles = (n / m).clamp(2, SEASON_INIT_CYCLES);
            seasonal_indices(&y[..cycles * m], m, kind == SeasonKind::Multiplicative)?
        }
    };
    let sa: Vec<f64> = y
        .iter()
        .enumerate()
        .map(|(t, v)| match spec.season {
            SeasonKind::None => *v,
            SeasonKind::Additive => v - s0[t % m],
            SeasonKind::Multiplicative => v / s0[t % m],
        })
        .collect();
    let maxn = n.min(10.max(2 * m));
    let (l0, b0) = match spec.trend {
        TrendKind::None => (mean(&sa[..maxn]), 0.0),
        _ => {
            let (a, b) = linear_fit(&sa[..maxn]);
            (a - b, b)
        }
    };
    let positive = spec.error == ErrorKind::Multiplicative || spec.season == SeasonKind::Multiplicative;
    let l0 = if positive && l0 <= 0.0 { mean(&sa[..maxn]).max(1e-3) } else { l0 };
    Some(Params { alpha: 0.2, beta: 0.02, gamma: 0.05, phi: 0.95, l0, b0, s0 })
}

/// Whether Nelder–Mead also optimises the m−1 free initial seasonal states (as
/// `forecast::ets` does). Measured on the fpp2/fpp3 evaluation set: keeping the decomposition
/// estimates instead gave a *lower* AutoETS MASE (1.259 vs 1.266) at 6× the speed, because the
/// 10–17-dimensional simplex search rarely converges within budget.
const OPTIMISE_SEASONAL_STATES: bool = false;

/// Evaluation budget of one Nelder–Mead run (plus a restart with half of it).
fn eval_budget(dim: usize) -> usize {
    (60 * dim).clamp(200, 2000)
}

/// Number of estimated parameters (smoothing parameters, initial states and σ²).
fn n_params(spec: EtsSpec, m: usize) -> usize {
    let mut k = 2; // alpha, l0
    if spec.trend != TrendKind::None {
        k += 2;
    }
    if spec.trend == TrendKind::Damped {
        k += 1;
    }
    if spec.season != SeasonKind::None {
        k += m; // gamma + (m-1) free initial states
    }
    k + 1 // sigma^2
}

/// Fits one ETS model form. `m` is the season length (ignored unless the spec is seasonal).
/// Returns `None` when the data do not support the form (non-positive data for multiplicative
/// components, fewer than two seasons, or no finite likelihood).
pub fn fit_ets(y: &[f64], m: usize, spec: EtsSpec) -> Option<EtsFit> {
    let n = y.len();
    let seasonal = spec.season != SeasonKind::None;
    if seasonal && (m < 2 || n < 2 * m) {
        return None;
    }
    let m = if seasonal { m } else { 1 };
    if n < 3 {
        return None;
    }
    let needs_positive = spec.error == ErrorKind::Multiplicative || spec.season == SeasonKind::Multiplicative;
    if needs_positive && y.iter().any(|v| *v <= 0.0) {
        return None;
    }
    let init = initial_params(y, m, spec)?;
    let optimise_season = seasonal && OPTIMISE_SEASONAL_STATES;
    let layout = Layout { spec, m, optimise_season, init };
    let (x0, step) = layout.start();
    let dim = x0.len();
    let max_evals = eval_budget(dim);
    let scale = y.iter().map(|v| v.abs()).sum::<f64>() / n as f64;
    let objective = |x: &[f64]| match layout.decode(x) {
        Some(p) => filter(y, spec, m, &p, scale, None).lik,
        None => f64::INFINITY,
    };
    // Relative tolerance on −2·log L: differences below 1e-6 of it do not change the forecast
    // (measured: tighter tolerances cost 2× the time for no accuracy gain).
    let tol = 1e-6;
    let mut best = nelder_mead(objective, &x0, &step, max_evals, tol);
    // One restart from the optimum: Nelder–Mead often stalls on the first run.
    if best.value.is_finite() {
        let again = nelder_mead(objective, &best.x.clone(), &step, max_evals / 2, tol);
        if again.value < best.value {
            best = again;
        }
    }
    let params = layout.decode(&best.x)?;
    let mut fitted = Vec::with_capacity(n);
    let f = filter(y, spec, m, &params, scale, Some(&mut fitted));
    if !f.lik.is_finite() {
        return None;
    }
    let k = n_params(spec, m) as f64;
    let nf = n as f64;
    let aicc = if nf - k - 1.0 > 0.0 { f.lik + 2.0 * k + 2.0 * k * (k + 1.0) / (nf - k - 1.0) } else { f64::INFINITY };
    Some(EtsFit {
        spec,
        m,
        alpha: params.alpha,
        beta: params.beta,
        gamma: params.gamma,
        phi: params.phi,
        level: f.level,
        trend: f.trend,
        season: f.season,
        n,
        aicc,
        fitted,
    })
}

/// AutoETS: fits every admissible form and keeps the lowest AICc (Hyndman et al. 2008 §7.2;
/// same candidate set as `forecast::ets(model = "ZZZ")` without multiplicative trend).
/// Forms whose AICc is infinite (too many parameters for the data) are skipped; if none is
/// left, the simplest form that fitted is returned.
pub fn auto_ets(y: &[f64], m: usize) -> Result<EtsFit, ForecastError> {
    auto_ets_with(y, m, true)
}

/// [`auto_ets`] with the option to leave out damped trends (used by combinations).
pub fn auto_ets_with(y: &[f64], m: usize, allow_damped: bool) -> Result<EtsFit, ForecastError> {
    let positive = y.iter().all(|v| *v > 0.0);
    let seasonal_ok = m >= 2 && y.len() >= 2 * m;
    let mut best: Option<EtsFit> = None;
    let mut fallback: Option<EtsFit> = None;
    for error in [ErrorKind::Additive, ErrorKind::Multiplicative] {
        if error == ErrorKind::Multiplicative && !positive {
            continue;
        }
        for trend in [TrendKind::None, TrendKind::Additive, TrendKind::Damped] {
            if trend == TrendKind::Damped && !allow_damped {
                continue;
            }
            for season in [SeasonKind::None, SeasonKind::Additive, SeasonKind::Multiplicative] {
                if season != SeasonKind::None && !seasonal_ok {
                    continue;
                }
                if season == SeasonKind::Multiplicative && (!positive || error == ErrorKind::Additive) {
                    continue;
                }
                let spec = EtsSpec { error, trend, season };
                let Some(fit) = fit_ets(y, m, spec) else { continue };
                if fit.aicc.is_finite() {
                    if best.as_ref().is_none_or(|b| fit.aicc < b.aicc) {
                        best = Some(fit);
                    }
                } else if fallback.is_none() {
                    fallback = Some(fit);
                }
            }
        }
    }
    best.or(fallback).ok_or(ForecastError::FitFailed("ETS"))
}

impl EtsFit {
    /// Point forecasts for steps `1..=h` (Hyndman et al. 2008, Table 2.1 forecast column).
    pub fn forecast(&self, h: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(h);
        let mut phi_sum = 0.0;
        let mut phi_pow = 1.0;
        for j in 1..=h {
            phi_pow *= self.phi;
            phi_sum += phi_pow;
            let base = match self.spec.trend {
                TrendKind::None => self.level,
                _ => self.level + phi_sum * self.trend,
            };
            let s = if self.season.is_empty() { 0.0 } else { self.season[(self.n + j - 1) % self.m] };
            out.push(match self.spec.season {
                SeasonKind::None => base,
                SeasonKind::Additive => base + s,
                SeasonKind::Multiplicative => base * s,
            });
        }
        out
    }

    /// Variance of the h-step error relative to the one-step error, from the class-1 formula
    /// of Hyndman et al. (2008) Table 6.1: `1 + Σ_{i<j} c_i²` with `c_i = α + β·φ_i + γ·[i mod m = 0]`.
    /// Used as an approximation for the multiplicative forms too.
    pub fn var_mult(&self, h: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(h);
        let mut acc = 1.0;
        let mut phi_sum = 0.0;
        let mut phi_pow = 1.0;
        for j in 1..=h {
            out.push(acc);
            phi_pow *= self.phi;
            phi_sum += phi_pow;
            let seasonal_hit = self.m > 1 && !self.season.is_empty() && j % self.m == 0;
            let c = self.alpha + self.beta * phi_sum + if seasonal_hit { self.gamma } else { 0.0 };
            acc += c * c;
        }
        out
    }

    /// Packs the fit into a [`PointFit`].
    pub fn point_fit(&self, h: usize) -> PointFit {
        PointFit { mean: self.forecast(h), fitted: self.fitted.clone(), start: 0, var_mult: self.var_mult(h) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ses_on_constant_series_forecasts_the_constant() {
        let y = vec![7.0; 30];
        let f = fit_ets(&y, 1, EtsSpec::SES).unwrap();
        for v in f.forecast(5) {
            assert!((v - 7.0).abs() < 1e-6, "{v}");
        }
    }

    #[test]
    fn recovers_planted_level_trend_and_season() {
        // y = 100 + 2t + season, season = [10, -5, 0, -5], small deterministic noise.
        let season = [10.0, -5.0, 0.0, -5.0];
        let y: Vec<f64> =
            (0..48).map(|t| 100.0 + 2.0 * t as f64 + season[t % 4] + ((t * 7919) % 11) as f64 * 0.1 - 0.5).collect();
        let fit = auto_ets(&y, 4).unwrap();
        assert_ne!(fit.spec.season, SeasonKind::None, "{:?}", fit.spec);
        assert_ne!(fit.spec.trend, TrendKind::None, "{:?}", fit.spec);
        let fc = fit.forecast(8);
        for (j, v) in fc.iter().enumerate() {
            let t = 48 + j;
            let truth = 100.0 + 2.0 * t as f64 + season[t % 4];
            assert!((v - truth).abs() < 4.0, "step {j}: {v} vs {truth}");
        }
    }

    #[test]
    fn multiplicative_forms_reject_non_positive_data() {
        let y: Vec<f64> = (0..24).map(|t| (t % 4) as f64).collect();
        let spec = EtsSpec { error: ErrorKind::Multiplicative, trend: TrendKind::None, season: SeasonKind::None };
        assert!(fit_ets(&y, 4, spec).is_none());
        assert!(auto_ets(&y, 4).is_ok());
    }
}
