//! The Theta method (Assimakopoulos & Nikolopoulos 2000), in the "SES with drift" form shown by
//! Hyndman & Billah (2003) and implemented in R's `forecast::thetaf`:
//!
//! 1. If the series is seasonal (|r_m| significant at 90% by the test of `thetaf`), remove the
//!    season by classical multiplicative decomposition (additive if the data are not positive).
//! 2. Fit SES (ETS(A,N,N), α and ℓ₀ by maximum likelihood) to the seasonally adjusted series.
//! 3. Forecast `ℓ_n + (b/2)·((j−1) + (1 − (1−α)^n)/α)` where `b` is the slope of the least-squares
//!    line (the θ=0 line; θ=2 line extrapolated by SES, combined with equal weights).
//! 4. Put the season back.
//!
//! [`auto_theta`] is the family of Fiorucci, Pellegrini, Louzada, Petropoulos & Koehler (2016),
//! *IJF* 32(4), "Models for optimising the Theta method and their relationship to state space
//! models": the standard (STM) and optimised (OTM, θ estimated) Theta models, each also in a
//! dynamic form (DSTM, DOTM) whose regression line is updated every period instead of fitted once
//! to the whole sample. With `t = 1..n`, Ȳ the running mean and `A`, `B` the intercept and slope
//! of the line:
//!
//! ```text
//! μ_t = ℓ_{t−1} + (1 − 1/θ)·((1 − α)^{t−1}·A_{t−1} + (1 − (1 − α)^t)/α · B_{t−1})
//! ℓ_t = α·Y_t + (1 − α)·ℓ_{t−1}
//! Ȳ_t = ((t − 1)·Ȳ_{t−1} + Y_t)/t
//! B_t = ((t − 2)·B_{t−1} + 6·(Y_t − Ȳ_{t−1})/t)/(t + 1),  A_t = Ȳ_t − (t + 1)/2·B_t   (dynamic)
//! A_t = A_n, B_t = B_n  (static: least-squares line through the whole sample)
//! ```
//!
//! Point forecasts run the same recursion with `Y = μ`. `ℓ₀`, `α ∈ [0.1, 0.99]` and, for the
//! optimised forms, `θ ≥ 1` minimise the in-sample one-step squared error (the first three
//! periods excluded, as the dynamic line needs them to settle), and the form with the lowest
//! error is kept, as in the paper and in statsforecast's `AutoTheta`. The season is handled as in
//! [`theta`].

use super::ets::{EtsSpec, fit_ets};
use super::{PointFit, seasonal_indices};
use crate::ForecastError;
use crate::optim::nelder_mead;
use crate::stats::{acf, linear_fit};

// Casts: series lengths, seasons and horizon steps are far below 2^53, so `as f64` on them is exact.

/// Whether the series shows seasonality at lag `m` (test used by `forecast::thetaf`:
/// `|r_m| > 1.645·sqrt((1 + 2·Σ_{k<m} r_k²)/n)`).
pub fn is_seasonal(y: &[f64], m: usize) -> bool {
    let n = y.len();
    if m < 2 || n < 3 * m {
        return false;
    }
    let r = acf(y, m);
    let s: f64 = r[..m - 1].iter().map(|v| v * v).sum();
    let limit = 1.644_853_6 * ((1.0 + 2.0 * s) / n as f64).sqrt();
    r[m - 1].abs() > limit
}

/// The season of a Theta model: classical decomposition indices and whether they multiply.
type Season = Option<(Vec<f64>, bool)>;

/// The seasonal indices [`theta`] and [`auto_theta`] remove (see the module docs, step 1).
fn theta_season(y: &[f64], m: usize) -> Season {
    let positive = y.iter().all(|v| *v > 0.0);
    if is_seasonal(y, m) { seasonal_indices(y, m, positive).map(|idx| (idx, positive)) } else { None }
}

fn deseasonalise(season: &Season, t: usize, v: f64) -> f64 {
    match season {
        Some((idx, true)) => v / idx[t % idx.len()],
        Some((idx, false)) => v - idx[t % idx.len()],
        None => v,
    }
}

fn reseasonalise(season: &Season, t: usize, v: f64) -> f64 {
    match season {
        Some((idx, true)) => v * idx[t % idx.len()],
        Some((idx, false)) => v + idx[t % idx.len()],
        None => v,
    }
}

/// Standard Theta forecast for steps `1..=h`.
pub fn theta(y: &[f64], m: usize, h: usize) -> Result<PointFit, ForecastError> {
    let n = y.len();
    if n < 3 {
        return Err(ForecastError::InsufficientHistory { got: n, needed: 3 });
    }
    let season = theta_season(y, m);
    let adjust = |t: usize, v: f64| deseasonalise(&season, t, v);
    let restore = |t: usize, v: f64| reseasonalise(&season, t, v);
    let x: Vec<f64> = y.iter().enumerate().map(|(t, v)| adjust(t, *v)).collect();
    let ses = fit_ets(&x, 1, EtsSpec::SES).ok_or(ForecastError::FitFailed("Theta"))?;
    let alpha = ses.alpha;
    let drift = linear_fit(&x).1 / 2.0;
    // `powi` takes an i32: the exponent saturates at i32::MAX, where (1 − α)^n is already 0 for α ≥ 1e-4 (the
    // SES bound), so a longer series gives the same value instead of a wrapped, negative exponent.
    let tail = (1.0 - (1.0 - alpha).powi(i32::try_from(n).unwrap_or(i32::MAX))) / alpha;
    let mean: Vec<f64> = (0..h).map(|j| restore(n + j, ses.level + drift * (j as f64 + tail))).collect();
    // In-sample: SES one-step forecasts plus the drift accumulated so far.
    let fitted: Vec<f64> = ses
        .fitted
        .iter()
        .enumerate()
        .map(|(t, f)| {
            // Saturates like the exponent of `tail` above.
            let tail_t = (1.0 - (1.0 - alpha).powi(i32::try_from(t).unwrap_or(i32::MAX))) / alpha;
            restore(t, f + drift * tail_t)
        })
        .collect();
    Ok(PointFit { mean, fitted, start: 1.min(n), var_mult: (0..h).map(|j| 1.0 + j as f64 * alpha * alpha).collect() })
}

/// One model of the family of [`auto_theta`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThetaForm {
    /// Standard Theta model: θ = 2, static line.
    Standard,
    /// Optimised Theta model: θ estimated, static line.
    Optimised,
    /// Dynamic standard Theta model: θ = 2, line updated every period.
    DynamicStandard,
    /// Dynamic optimised Theta model: θ estimated, line updated every period.
    DynamicOptimised,
}

impl ThetaForm {
    /// The four forms, in the order [`auto_theta`] tries them.
    pub const ALL: [ThetaForm; 4] =
        [ThetaForm::Standard, ThetaForm::Optimised, ThetaForm::DynamicStandard, ThetaForm::DynamicOptimised];

    fn dynamic(self) -> bool {
        matches!(self, ThetaForm::DynamicStandard | ThetaForm::DynamicOptimised)
    }

    fn optimised(self) -> bool {
        matches!(self, ThetaForm::Optimised | ThetaForm::DynamicOptimised)
    }
}

/// Bounds of the smoothing parameter and of θ (Fiorucci et al. 2016 §3; θ's upper bound only keeps
/// the simplex finite: (1 − 1/θ) is within 1e-4 of its limit there).
const THETA_ALPHA: (f64, f64) = (0.1, 0.99);
const THETA_MAX: f64 = 1e4;
/// Periods at the start whose errors the objective leaves out.
const THETA_BURN_IN: usize = 3;

/// State of the recursion of a Theta model after period `t` (1-based count in `t`).
#[derive(Debug, Clone, Copy)]
struct ThetaState {
    level: f64,
    mean: f64,
    a: f64,
    b: f64,
    /// Periods seen.
    t: usize,
    /// (1 − α)^t.
    decay: f64,
}

#[derive(Debug, Clone, Copy)]
struct ThetaParams {
    form: ThetaForm,
    level0: f64,
    alpha: f64,
    theta: f64,
    /// Least-squares line of the whole sample (static forms), intercept at t = 0.
    line: (f64, f64),
}

impl ThetaParams {
    /// One-step forecast μ from the state after `state.t` periods.
    fn mu(&self, s: &ThetaState) -> f64 {
        let weight = 1.0 - 1.0 / self.theta;
        let next_decay = s.decay * (1.0 - self.alpha);
        s.level + weight * (s.decay * s.a + (1.0 - next_decay) / self.alpha * s.b)
    }

    /// Takes in the value of period `state.t + 1`.
    fn update(&self, s: &mut ThetaState, y: f64) {
        let t = s.t as f64 + 1.0; // the period y belongs to, 1-based
        s.level = self.alpha * y + (1.0 - self.alpha) * s.level;
        if self.form.dynamic() {
            let previous_mean = s.mean;
            s.mean = ((t - 1.0) * s.mean + y) / t;
            s.b = ((t - 2.0) * s.b + 6.0 * (y - previous_mean) / t) / (t + 1.0);
            s.a = s.mean - (t + 1.0) / 2.0 * s.b;
        }
        s.t += 1;
        s.decay *= 1.0 - self.alpha;
    }

    /// State after the first period (Fiorucci et al. 2016: the dynamic line starts flat at Y₁).
    fn start(&self, y0: f64) -> ThetaState {
        let (a, b) = if self.form.dynamic() { (y0, 0.0) } else { self.line };
        ThetaState {
            level: self.alpha * y0 + (1.0 - self.alpha) * self.level0,
            mean: y0,
            a,
            b,
            t: 1,
            decay: 1.0 - self.alpha,
        }
    }

    /// Runs the recursion over `x`; returns the sum of squared one-step errors after the burn-in and
    /// the final state; writes the one-step forecasts into `fitted` if given.
    fn run(&self, x: &[f64], mut fitted: Option<&mut Vec<f64>>) -> (f64, ThetaState) {
        let Some(&y0) = x.first() else {
            return (f64::INFINITY, self.start(0.0));
        };
        let mut s = self.start(y0);
        if let Some(f) = fitted.as_deref_mut() {
            // The first forecast: the line's value at t = 1 pulled towards ℓ₀ (the dynamic line is Y₁ there).
            let first = if self.form.dynamic() {
                y0
            } else {
                self.level0 + (1.0 - 1.0 / self.theta) * (self.line.0 + self.line.1)
            };
            f.push(first);
        }
        let mut sse = 0.0;
        for (i, &y) in x.iter().enumerate().skip(1) {
            let mu = self.mu(&s);
            if let Some(f) = fitted.as_deref_mut() {
                f.push(mu);
            }
            if i >= THETA_BURN_IN {
                sse += (y - mu) * (y - mu);
            }
            self.update(&mut s, y);
        }
        (if sse.is_finite() { sse } else { f64::INFINITY }, s)
    }
}

/// A fitted model of the family of [`auto_theta`] (on the seasonally adjusted series).
#[derive(Debug, Clone, Copy)]
pub struct ThetaFit {
    /// Form.
    pub form: ThetaForm,
    /// Smoothing parameter.
    pub alpha: f64,
    /// θ (2 for the standard forms).
    pub theta: f64,
    /// Mean squared one-step error after the burn-in.
    pub mse: f64,
    params: ThetaParams,
}

/// Fits one form to a (seasonally adjusted) series by least squares; `None` when no finite fit.
pub fn fit_theta_form(x: &[f64], form: ThetaForm) -> Option<ThetaFit> {
    let n = x.len();
    if n <= THETA_BURN_IN {
        return None;
    }
    let (intercept0, slope) = linear_fit(x);
    // `linear_fit` puts the intercept at index 0, that is t = 1; the model's line is in t = 1..n.
    let line = (intercept0 - slope, slope);
    let scale = x.iter().map(|v| v.abs()).sum::<f64>() / n as f64;
    let decode = |p: &[f64]| -> Option<ThetaParams> {
        let level0 = p.first().copied()?;
        let alpha = p.get(1).copied()?;
        let theta = if form.optimised() { p.get(2).copied()? } else { 2.0 };
        let ok = level0.is_finite()
            && (THETA_ALPHA.0..=THETA_ALPHA.1).contains(&alpha)
            && (1.0..=THETA_MAX).contains(&theta);
        ok.then_some(ThetaParams { form, level0, alpha, theta, line })
    };
    let objective = |p: &[f64]| decode(p).map_or(f64::INFINITY, |params| params.run(x, None).0);
    let mut x0 = vec![x[0], 0.5];
    let mut step = vec![0.1 * scale.max(1e-6), 0.1];
    if form.optimised() {
        x0.push(2.0);
        step.push(0.5);
    }
    let mut best = nelder_mead(objective, &x0, &step, 400 * x0.len(), 1e-8);
    if best.value.is_finite() {
        let again = nelder_mead(objective, &best.x.clone(), &step, 200 * x0.len(), 1e-8);
        if again.value < best.value {
            best = again;
        }
    }
    let params = decode(&best.x)?;
    best.value.is_finite().then(|| ThetaFit {
        form,
        alpha: params.alpha,
        theta: params.theta,
        mse: best.value / (n - THETA_BURN_IN) as f64,
        params,
    })
}

impl ThetaFit {
    /// Point forecasts for steps `1..=h` and the one-step in-sample forecasts of `x`.
    fn forecast(&self, x: &[f64], h: usize) -> (Vec<f64>, Vec<f64>) {
        let mut fitted = Vec::with_capacity(x.len());
        let (_, mut s) = self.params.run(x, Some(&mut fitted));
        let mean = (0..h)
            .map(|_| {
                let mu = self.params.mu(&s);
                self.params.update(&mut s, mu);
                mu
            })
            .collect();
        (mean, fitted)
    }
}

/// AutoTheta (module docs): the form of lowest in-sample squared error among [`ThetaForm::ALL`], on the
/// seasonally adjusted series, season put back.
pub fn auto_theta(y: &[f64], m: usize, h: usize) -> Result<PointFit, ForecastError> {
    let n = y.len();
    if n <= THETA_BURN_IN {
        return Err(ForecastError::InsufficientHistory { got: n, needed: THETA_BURN_IN + 1 });
    }
    let season = theta_season(y, m);
    let x: Vec<f64> = y.iter().enumerate().map(|(t, v)| deseasonalise(&season, t, *v)).collect();
    let best = ThetaForm::ALL
        .iter()
        .filter_map(|form| fit_theta_form(&x, *form))
        .min_by(|a, b| a.mse.total_cmp(&b.mse))
        .ok_or(ForecastError::FitFailed("AutoTheta"))?;
    let (mean, fitted) = best.forecast(&x, h);
    let alpha = best.alpha;
    Ok(PointFit {
        mean: mean.iter().enumerate().map(|(j, v)| reseasonalise(&season, n + j, *v)).collect(),
        fitted: fitted.iter().enumerate().map(|(t, v)| reseasonalise(&season, t, *v)).collect(),
        start: THETA_BURN_IN,
        // As for SES (which the Theta models extend with a drift): 1 + (j − 1)·α².
        var_mult: (0..h).map(|j| 1.0 + j as f64 * alpha * alpha).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn theta_follows_a_linear_trend() {
        let y: Vec<f64> = (0..40).map(|t| 10.0 + 0.5 * t as f64).collect();
        let f = theta(&y, 1, 5).unwrap();
        // Theta halves the trend in the long run but starts near the line.
        assert!(f.mean[0] > 29.0 && f.mean[0] < 31.0, "{:?}", f.mean);
        assert!(f.mean.windows(2).all(|w| w[1] > w[0]));
    }

    #[test]
    fn detects_strong_season() {
        let y: Vec<f64> = (0..48).map(|t| 50.0 + [9.0, -3.0, -3.0, -3.0][t % 4]).collect();
        assert!(is_seasonal(&y, 4));
        let f = theta(&y, 4, 4).unwrap();
        assert!(f.mean[0] > f.mean[1] + 5.0, "{:?}", f.mean);
        assert!((f.mean[0] - 59.0).abs() < 1.0, "{:?}", f.mean);
    }

    #[test]
    fn dynamic_line_is_the_running_least_squares_line() {
        // The dynamic recursion for A and B must equal the least-squares line through the first t values.
        let x: Vec<f64> = (0..30).map(|t| 5.0 + 0.7 * t as f64 + [1.0, -2.0, 0.5][t % 3]).collect();
        let params =
            ThetaParams { form: ThetaForm::DynamicOptimised, level0: 5.0, alpha: 0.4, theta: 3.0, line: (0.0, 0.0) };
        let mut s = params.start(x[0]);
        for (i, &y) in x.iter().enumerate().skip(1) {
            params.update(&mut s, y);
            let (intercept0, slope) = linear_fit(&x[..=i]);
            assert!((s.b - slope).abs() < 1e-9, "t = {}: {} vs {slope}", i + 1, s.b);
            assert!((s.a - (intercept0 - slope)).abs() < 1e-9, "t = {}: {} vs {}", i + 1, s.a, intercept0 - slope);
        }
    }

    #[test]
    fn auto_theta_follows_a_noisy_line_and_a_season() {
        // y = (100 + 2t)·season + small noise: forecasts within 3% of the noiseless truth.
        let season = [1.2, 0.9, 0.8, 1.1];
        let truth = |t: usize| (100.0 + 2.0 * t as f64) * season[t % 4];
        let y: Vec<f64> = (0..60).map(|t| truth(t) + ((t * 7919) % 7) as f64 - 3.0).collect();
        let f = auto_theta(&y, 4, 8).unwrap();
        for (j, v) in f.mean.iter().enumerate() {
            let want = truth(60 + j);
            assert!((v - want).abs() < 0.03 * want, "step {j}: {v} vs {want}");
        }
        // A flat series with noise: a flat forecast near its mean.
        let flat: Vec<f64> = (0..50).map(|t| 40.0 + ((t * 31) % 5) as f64 - 2.0).collect();
        let g = auto_theta(&flat, 1, 5).unwrap();
        assert!(g.mean.iter().all(|v| (v - 40.0).abs() < 1.5), "{:?}", g.mean);
        assert!(auto_theta(&[1.0, 2.0, 3.0], 1, 2).is_err());
    }

    #[test]
    fn optimised_forms_fit_at_least_as_well_as_the_standard_ones() {
        // θ = 2 is inside the optimised forms' search space, so their in-sample error is never worse.
        let y: Vec<f64> = (0..80).map(|t| 50.0 + 0.3 * t as f64 + ((t * 13) % 9) as f64).collect();
        let fit = |form| fit_theta_form(&y, form).unwrap().mse;
        assert!(fit(ThetaForm::Optimised) <= fit(ThetaForm::Standard) * (1.0 + 1e-6));
        assert!(fit(ThetaForm::DynamicOptimised) <= fit(ThetaForm::DynamicStandard) * (1.0 + 1e-6));
    }
}
