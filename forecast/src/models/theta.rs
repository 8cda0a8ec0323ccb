//! The Theta method (Assimakopoulos & Nikolopoulos 2000), in the "SES with drift" form shown by
//! Hyndman & Billah (2003) and implemented in R's `forecast::thetaf`:
//!
//! 1. If the series is seasonal (|r_m| significant at 90% by the test of `thetaf`), remove the
//!    season by classical multiplicative decomposition (additive if the data are not positive).
//! 2. Fit SES (ETS(A,N,N), α and ℓ₀ by maximum likelihood) to the seasonally adjusted series.
//! 3. Forecast `ℓ_n + (b/2)·((j−1) + (1 − (1−α)^n)/α)` where `b` is the slope of the least-squares
//!    line (the θ=0 line; θ=2 line extrapolated by SES, combined with equal weights).
//! 4. Put the season back.

use super::ets::{EtsSpec, fit_ets};
use super::{PointFit, seasonal_indices};
use crate::ForecastError;
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

/// Standard Theta forecast for steps `1..=h`.
pub fn theta(y: &[f64], m: usize, h: usize) -> Result<PointFit, ForecastError> {
    let n = y.len();
    if n < 3 {
        return Err(ForecastError::InsufficientHistory { got: n, needed: 3 });
    }
    let positive = y.iter().all(|v| *v > 0.0);
    let season = if is_seasonal(y, m) { seasonal_indices(y, m, positive).map(|idx| (idx, positive)) } else { None };
    let adjust = |t: usize, v: f64| match &season {
        Some((idx, true)) => v / idx[t % idx.len()],
        Some((idx, false)) => v - idx[t % idx.len()],
        None => v,
    };
    let restore = |t: usize, v: f64| match &season {
        Some((idx, true)) => v * idx[t % idx.len()],
        Some((idx, false)) => v + idx[t % idx.len()],
        None => v,
    };
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
}
