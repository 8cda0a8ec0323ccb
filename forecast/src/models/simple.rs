//! Benchmark models: naive, seasonal naive and moving average (FPP3 §5.2). They need no
//! estimation, so they also serve as fallbacks for very short series.

use super::PointFit;

// Casts: series lengths, windows, seasons and horizon steps are far below 2^53, so `as f64` on them is exact.

/// Naive: every future value equals the last observation. Error variance grows linearly
/// with the horizon (random walk, FPP3 Table 5.2).
pub fn naive(y: &[f64], h: usize) -> PointFit {
    let last = y.last().copied().unwrap_or(0.0);
    let mut fitted = y.to_vec();
    if y.len() > 1 {
        fitted[1..].copy_from_slice(&y[..y.len() - 1]);
    }
    PointFit { mean: vec![last; h], fitted, start: 1.min(y.len()), var_mult: (1..=h).map(|j| j as f64).collect() }
}

/// Seasonal naive with period `m`: repeats the last observed season. Falls back to
/// [`naive`] when `m <= 1` or the series is shorter than one season. Variance grows with the
/// number of completed seasons in the horizon (FPP3 Table 5.2).
pub fn seasonal_naive(y: &[f64], m: usize, h: usize) -> PointFit {
    let n = y.len();
    if m <= 1 || n < m {
        return naive(y, h);
    }
    let mut fitted = y.to_vec();
    fitted[m..n].copy_from_slice(&y[..n - m]);
    PointFit {
        mean: (0..h).map(|j| y[n - m + j % m]).collect(),
        fitted,
        start: m.min(n),
        var_mult: (0..h).map(|j| (j / m + 1) as f64).collect(),
    }
}

/// Moving average of the last `window` observations (window clamped to the series length).
/// The forecast error variance is (1 + 1/k)·σ² for every step.
pub fn moving_average(y: &[f64], window: usize, h: usize) -> PointFit {
    let n = y.len();
    let k = window.clamp(1, n.max(1));
    let mut fitted = y.to_vec();
    let mut sum = 0.0;
    for t in 0..n {
        if t >= k {
            fitted[t] = sum / k as f64;
            sum -= y[t - k];
        }
        sum += y[t];
    }
    let last = if n == 0 { 0.0 } else { y[n - k..].iter().sum::<f64>() / k as f64 };
    PointFit { mean: vec![last; h], fitted, start: k.min(n), var_mult: vec![1.0 + 1.0 / k as f64; h] }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seasonal_naive_repeats_last_season() {
        let y = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
        let f = seasonal_naive(&y, 3, 7);
        assert_eq!(f.mean, vec![5.0, 6.0, 7.0, 5.0, 6.0, 7.0, 5.0]);
        assert_eq!(f.fitted[3], 1.0);
    }

    #[test]
    fn naive_repeats_last_value() {
        let f = naive(&[3.0, 9.0], 3);
        assert_eq!(f.mean, vec![9.0; 3]);
    }

    #[test]
    fn moving_average_of_last_window() {
        let f = moving_average(&[1.0, 2.0, 3.0, 4.0], 2, 2);
        assert_eq!(f.mean, vec![3.5, 3.5]);
        assert_eq!(f.fitted[3], 2.5);
    }
}
