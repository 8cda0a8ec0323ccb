//! Small numeric helpers shared by the models: means, quantiles, the normal inverse CDF, a
//! least-squares line and the autocorrelation function.

// Casts: slice lengths and indices are far below 2^53, so `as f64` on them is exact.

/// Arithmetic mean; 0 for an empty slice (callers never want NaN).
pub fn mean(x: &[f64]) -> f64 {
    if x.is_empty() { 0.0 } else { x.iter().sum::<f64>() / x.len() as f64 }
}

/// Population variance; 0 for fewer than two values.
pub fn variance(x: &[f64]) -> f64 {
    if x.len() < 2 {
        return 0.0;
    }
    let m = mean(x);
    x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / x.len() as f64
}

/// Empirical quantile (type 7, linear interpolation) of an already **sorted** slice.
/// Returns 0 for an empty slice.
pub fn quantile_sorted(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            // `pos` is in [0, n − 1] (callers pass levels validated to (0, 1)), so `floor() as usize` is an index in
            // range; a NaN `p` would give index 0 and a NaN result, never a panic.
            let pos = p.clamp(0.0, 1.0) * (n - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            let frac = pos - lo as f64;
            sorted[lo] + (sorted[hi] - sorted[lo]) * frac
        }
    }
}

/// Type-7 quantile of an unsorted slice in expected linear time (reorders `x`).
/// Returns 0 for an empty slice.
pub fn quantile_unsorted(x: &mut [f64], p: f64) -> f64 {
    let n = x.len();
    if n == 0 {
        return 0.0;
    }
    // As in `quantile_sorted`: `pos` is in [0, n − 1], `floor() as usize` rounds down to an index in range.
    let pos = p.clamp(0.0, 1.0) * (n - 1) as f64;
    let lo = (pos.floor() as usize).min(n - 1);
    let (_, &mut lo_value, upper) = x.select_nth_unstable_by(lo, |a, b| a.total_cmp(b));
    let hi_value = upper.iter().copied().min_by(|a, b| a.total_cmp(b)).unwrap_or(lo_value);
    lo_value + (hi_value - lo_value) * (pos - lo as f64)
}

/// Sorts a copy of `x` (NaN-free input assumed; NaN would sort last) and returns it.
pub fn sorted(x: &[f64]) -> Vec<f64> {
    let mut v = x.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// Inverse of the standard normal CDF (Acklam's rational approximation, relative error
/// < 1.2e-9). `p` is clamped to (1e-12, 1 - 1e-12) so the result is always finite.
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] =
        [7.784_695_709_041_462e-3, 3.224_671_290_700_398e-1, 2.445_134_137_142_996, 3.754_408_661_907_416];
    let p = if p.is_nan() { 0.5 } else { p.clamp(1e-12, 1.0 - 1e-12) };
    let plow = 0.02425;
    if p < plow {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - plow {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    }
}

/// Least-squares line through `(i, x[i])`: returns `(intercept, slope)`; slope 0 for < 2 points.
pub fn linear_fit(x: &[f64]) -> (f64, f64) {
    let n = x.len();
    if n < 2 {
        return (x.first().copied().unwrap_or(0.0), 0.0);
    }
    let tm = (n - 1) as f64 / 2.0;
    let ym = mean(x);
    let mut sxy = 0.0;
    let mut sxx = 0.0;
    for (i, v) in x.iter().enumerate() {
        let dt = i as f64 - tm;
        sxy += dt * (v - ym);
        sxx += dt * dt;
    }
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (ym - slope * tm, slope)
}

/// Sample autocorrelations at lags `1..=max_lag` (0 when the series has no variance).
pub fn acf(x: &[f64], max_lag: usize) -> Vec<f64> {
    let n = x.len();
    let m = mean(x);
    let denom: f64 = x.iter().map(|v| (v - m) * (v - m)).sum();
    (1..=max_lag)
        .map(|k| {
            if denom <= 0.0 || k >= n { 0.0 } else { (k..n).map(|t| (x[t] - m) * (x[t - k] - m)).sum::<f64>() / denom }
        })
        .collect()
}

/// In-sample mean absolute error of the seasonal naive method with period `m` (naive when
/// `m <= 1` or the series is shorter than `m + 1`). This is the MASE scale.
pub fn seasonal_naive_mae(y: &[f64], m: usize) -> f64 {
    let m = if m >= 1 && y.len() > m { m } else { 1 };
    if y.len() <= m {
        return 0.0;
    }
    mean(&(m..y.len()).map(|t| (y[t] - y[t - m]).abs()).collect::<Vec<_>>())
}

/// In-sample mean squared error of the seasonal naive method (the RMSSE scale, squared).
pub fn seasonal_naive_mse(y: &[f64], m: usize) -> f64 {
    let m = if m >= 1 && y.len() > m { m } else { 1 };
    if y.len() <= m {
        return 0.0;
    }
    mean(&(m..y.len()).map(|t| (y[t] - y[t - m]).powi(2)).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantile_known_values() {
        assert!((normal_quantile(0.975) - 1.959_964).abs() < 1e-5);
        assert!((normal_quantile(0.5)).abs() < 1e-12);
        assert!((normal_quantile(0.05) + 1.644_854).abs() < 1e-5);
        assert!(normal_quantile(0.0).is_finite() && normal_quantile(1.0).is_finite());
    }

    #[test]
    fn quantile_interpolates() {
        let s = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile_sorted(&s, 0.0), 1.0);
        assert_eq!(quantile_sorted(&s, 1.0), 4.0);
        assert!((quantile_sorted(&s, 0.5) - 2.5).abs() < 1e-12);
    }

    #[test]
    fn unsorted_quantile_matches_sorted() {
        let mut x = vec![5.0, 1.0, 4.0, 2.0, 3.0, 9.0, 0.5];
        let s = sorted(&x);
        for p in [0.0, 0.1, 0.5, 0.77, 0.95, 1.0] {
            assert!((quantile_unsorted(&mut x, p) - quantile_sorted(&s, p)).abs() < 1e-12, "{p}");
        }
    }

    #[test]
    fn linear_fit_recovers_line() {
        let x: Vec<f64> = (0..10).map(|i| 3.0 + 2.0 * i as f64).collect();
        let (a, b) = linear_fit(&x);
        assert!((a - 3.0).abs() < 1e-9 && (b - 2.0).abs() < 1e-9);
    }
}
