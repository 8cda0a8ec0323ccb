//! The individual forecasting models. Each `fit_*`/model function takes a clean series
//! (finite values; the [`crate::forecast`] layer validates and cleans inputs) and returns a
//! [`PointFit`]: the point forecast, in-sample one-step fitted values and, per horizon step, the
//! factor by which the one-step error variance grows (used for quantiles).

// Casts: series lengths, seasons and per-position counts are far below 2^53, so `as f64` on them is exact.

pub mod ets;
pub mod intermittent;
pub mod simple;
pub mod theta;

/// Point forecast of one model plus what is needed to build prediction quantiles.
#[derive(Debug, Clone, PartialEq)]
pub struct PointFit {
    /// Point forecast for steps `1..=h`.
    pub mean: Vec<f64>,
    /// One-step-ahead in-sample forecasts, same length as the series; only `fitted[start..]`
    /// are genuine forecasts (earlier entries are copies of the data, residual 0).
    pub fitted: Vec<f64>,
    /// First index of `fitted` that is a genuine one-step forecast.
    pub start: usize,
    /// `var_mult[j]`: variance of the `(j+1)`-step error relative to the one-step error.
    pub var_mult: Vec<f64>,
}

impl PointFit {
    /// In-sample one-step residuals `y[t] - fitted[t]` for `t >= start`.
    pub fn residuals(&self, y: &[f64]) -> Vec<f64> {
        y.iter().zip(&self.fitted).skip(self.start).map(|(a, f)| a - f).collect()
    }
}

/// Classical decomposition seasonal indices (Hyndman & Athanasopoulos, FPP3 §3.4): a centred
/// moving average of order `m` (2×m when `m` is even) estimates the trend; the detrended values
/// are averaged per season position and normalised (to mean 1 if `multiplicative`, else mean 0).
/// Index `i` applies to times `t` with `t % m == i`. `None` when fewer than two full cycles or
/// when a multiplicative decomposition meets a non-positive trend.
pub fn seasonal_indices(y: &[f64], m: usize, multiplicative: bool) -> Option<Vec<f64>> {
    let n = y.len();
    if m < 2 || n < 2 * m {
        return None;
    }
    let half = m / 2;
    let mut sums = vec![0.0; m];
    let mut counts = vec![0usize; m];
    for t in half..n.saturating_sub(half) {
        let trend = if m.is_multiple_of(2) {
            if t + half >= n {
                continue;
            }
            let inner: f64 = y[t + 1 - half..t + half].iter().sum();
            (0.5 * y[t - half] + inner + 0.5 * y[t + half]) / m as f64
        } else {
            y[t - half..=t + half].iter().sum::<f64>() / m as f64
        };
        let d = if multiplicative {
            if trend <= 0.0 {
                return None;
            }
            y[t] / trend
        } else {
            y[t] - trend
        };
        sums[t % m] += d;
        counts[t % m] += 1;
    }
    if counts.contains(&0) {
        return None;
    }
    let mut idx: Vec<f64> = sums.iter().zip(&counts).map(|(s, c)| s / *c as f64).collect();
    let avg = crate::stats::mean(&idx);
    if multiplicative {
        if avg <= 0.0 || idx.iter().any(|v| *v <= 0.0) {
            return None;
        }
        idx.iter_mut().for_each(|v| *v /= avg);
    } else {
        idx.iter_mut().for_each(|v| *v -= avg);
    }
    Some(idx)
}
