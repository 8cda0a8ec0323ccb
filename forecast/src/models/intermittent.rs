//! Models for intermittent demand and the Syntetos–Boylan demand classification.
//!
//! * Croston (1972) as corrected by Syntetos & Boylan: demand sizes `z` and inter-demand
//!   intervals `p` are smoothed separately (SES, α = 0.1, initialised with the first value) and
//!   only updated when demand occurs; forecast `z/p`.
//! * SBA — Syntetos & Boylan (2005), *IJF* 21(2): Croston's forecast times `(1 − α/2)` to remove
//!   its positive bias.
//! * TSB — Teunter, Syntetos & Babai (2011), *EJOR* 214(3): smooths the demand *probability*
//!   every period (so an item that stops selling decays towards zero) and the size on demand
//!   periods; forecast `p·z`.
//! * ADIDA — Nikolopoulos et al. (2011), *JORS* 62(3): aggregate into non-overlapping buckets of
//!   the mean inter-demand interval, forecast the bucket totals with SES (α optimised in
//!   [0.1, 0.3]), and spread the bucket forecast evenly.
//!
//! The initialisations follow statsforecast's implementations so throughput and accuracy can be
//! compared on equal terms. Demand is any value `> 0`; callers clamp returns (negatives) first.

use super::PointFit;
use crate::optim::golden_section;

// Casts: series lengths, demand counts, intervals and horizon steps are far below 2^53, so `as f64` on them is
// exact.

/// Syntetos–Boylan–Croston demand class (Syntetos, Boylan & Croston 2005, cut-offs
/// ADI = 1.32 and CV² = 0.49).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemandClass {
    /// Frequent demand with stable sizes.
    Smooth,
    /// Frequent demand with variable sizes.
    Erratic,
    /// Infrequent demand with stable sizes.
    Intermittent,
    /// Infrequent demand with variable sizes.
    Lumpy,
}

impl DemandClass {
    /// Whether Croston-type models are the appropriate family (intermittent or lumpy).
    pub fn is_intermittent(self) -> bool {
        matches!(self, DemandClass::Intermittent | DemandClass::Lumpy)
    }
}

/// Average inter-demand interval and squared coefficient of variation of the demand sizes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemandProfile {
    /// Average demand interval: periods per demand occurrence.
    pub adi: f64,
    /// Squared coefficient of variation of the non-zero demand sizes.
    pub cv2: f64,
    /// Resulting class.
    pub class: DemandClass,
}

/// Classifies a series; `None` when it has no positive demand at all.
pub fn classify(y: &[f64]) -> Option<DemandProfile> {
    let sizes: Vec<f64> = y.iter().copied().filter(|v| *v > 0.0).collect();
    if sizes.is_empty() {
        return None;
    }
    let adi = y.len() as f64 / sizes.len() as f64;
    let m = crate::stats::mean(&sizes);
    let cv2 = if m > 0.0 { crate::stats::variance(&sizes) / (m * m) } else { 0.0 };
    let class = match (adi >= 1.32, cv2 >= 0.49) {
        (false, false) => DemandClass::Smooth,
        (false, true) => DemandClass::Erratic,
        (true, false) => DemandClass::Intermittent,
        (true, true) => DemandClass::Lumpy,
    };
    Some(DemandProfile { adi, cv2, class })
}

/// Croston variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrostonVariant {
    /// Croston (1972).
    Classic,
    /// Syntetos–Boylan approximation (bias-corrected).
    Sba,
}

/// Smoothing constant used by Croston and SBA (the customary 0.1, as in statsforecast).
pub const CROSTON_ALPHA: f64 = 0.1;

fn flat(value: f64, h: usize, fitted: Vec<f64>, start: usize, alpha: f64) -> PointFit {
    PointFit { mean: vec![value; h], fitted, start, var_mult: (0..h).map(|j| 1.0 + j as f64 * alpha * alpha).collect() }
}

/// Croston / SBA forecast. All-zero series forecast zero.
pub fn croston(y: &[f64], h: usize, variant: CrostonVariant) -> PointFit {
    let alpha = CROSTON_ALPHA;
    let factor = match variant {
        CrostonVariant::Classic => 1.0,
        CrostonVariant::Sba => 1.0 - alpha / 2.0,
    };
    let mut fitted = y.to_vec();
    let mut state: Option<(f64, f64)> = None; // (size z, interval p)
    let mut since = 0usize;
    let mut start = y.len();
    for (t, &v) in y.iter().enumerate() {
        since += 1;
        if let Some((z, p)) = state {
            fitted[t] = factor * z / p;
        }
        if v > 0.0 {
            state = Some(match state {
                None => {
                    start = t + 1;
                    (v, since as f64)
                }
                Some((z, p)) => (z + alpha * (v - z), p + alpha * (since as f64 - p)),
            });
            since = 0;
        }
    }
    let value = state.map_or(0.0, |(z, p)| factor * z / p);
    flat(value, h, fitted, start.min(y.len()), alpha)
}

/// TSB forecast with smoothing constants `alpha_d` (size) and `alpha_p` (probability).
pub fn tsb(y: &[f64], h: usize, alpha_d: f64, alpha_p: f64) -> PointFit {
    let mut fitted = y.to_vec();
    let mut z: Option<f64> = None;
    let mut p: Option<f64> = None;
    let mut start = y.len();
    for (t, &v) in y.iter().enumerate() {
        let occ = if v > 0.0 { 1.0 } else { 0.0 };
        if let (Some(zz), Some(pp)) = (z, p) {
            fitted[t] = zz * pp;
            if start == y.len() {
                start = t;
            }
        }
        p = Some(p.map_or(occ, |pp| pp + alpha_p * (occ - pp)));
        if v > 0.0 {
            z = Some(z.map_or(v, |zz| zz + alpha_d * (v - zz)));
        }
    }
    let value = match (z, p) {
        (Some(zz), Some(pp)) => zz * pp,
        _ => 0.0,
    };
    flat(value, h, fitted, start, alpha_d.max(alpha_p))
}

/// SES with level initialised to the first value; returns the final level and the one-step
/// forecasts (level before each observation) — statsforecast's `_ses_fcst_mse`.
fn ses_levels(x: &[f64], alpha: f64) -> (f64, Vec<f64>) {
    let mut level = x.first().copied().unwrap_or(0.0);
    let mut fitted = Vec::with_capacity(x.len());
    for &v in x {
        fitted.push(level);
        level += alpha * (v - level);
    }
    (level, fitted)
}

/// ADIDA forecast (temporal aggregation to the mean inter-demand interval).
pub fn adida(y: &[f64], h: usize) -> PointFit {
    let n = y.len();
    let occurrences = y.iter().filter(|v| **v > 0.0).count();
    if occurrences == 0 {
        return flat(0.0, h, y.to_vec(), n, 0.1);
    }
    // Mean interval between demands (first interval counted from the start), rounded.
    let last_idx = y.iter().rposition(|v| *v > 0.0).unwrap_or(0);
    let mean_interval = (last_idx + 1) as f64 / occurrences as f64;
    // Rounded to the nearest whole interval; `mean_interval` is finite and in [1, n] (occurrences ≤ last_idx + 1),
    // so the cast is exact.
    let k = (mean_interval.round() as usize).max(1);
    let offset = n % k;
    let sums: Vec<f64> = y[offset..].chunks(k).map(|c| c.iter().sum()).collect();
    let sse = |a: f64| {
        let (_, f) = ses_levels(&sums, a);
        f.iter().zip(&sums).map(|(f, v)| (v - f) * (v - f)).sum::<f64>()
    };
    let (alpha, _) = golden_section(sse, 0.1, 0.3, 25);
    let (level, agg_fitted) = ses_levels(&sums, alpha);
    let mut fitted = y.to_vec();
    for (b, f) in agg_fitted.iter().enumerate() {
        for i in 0..k {
            let t = offset + b * k + i;
            if t < n {
                fitted[t] = f / k as f64;
            }
        }
    }
    flat(level / k as f64, h, fitted, (offset + k).min(n), alpha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn croston_matches_hand_computation() {
        // Demands 3, 5, 2 at t = 1, 4, 6: intervals 2 (counted from the start), 3, 2.
        // z: 3 -> 3.2 -> 3.08; p: 2 -> 2.1 -> 2.09; forecast 3.08 / 2.09.
        let y = [0.0, 3.0, 0.0, 0.0, 5.0, 0.0, 2.0];
        let c = croston(&y, 3, CrostonVariant::Classic);
        assert!((c.mean[0] - 3.08 / 2.09).abs() < 1e-12, "{:?}", c.mean);
        let s = croston(&y, 3, CrostonVariant::Sba);
        assert!((s.mean[0] - 0.95 * 3.08 / 2.09).abs() < 1e-12);
        // Before the second demand the forecast is 3 / 2.
        assert!((c.fitted[3] - 1.5).abs() < 1e-12);
    }

    #[test]
    fn tsb_decays_after_demand_stops() {
        let mut y = vec![2.0; 20];
        y.extend(vec![0.0; 40]);
        let f = tsb(&y, 1, 0.1, 0.1);
        assert!(f.mean[0] < 2.0 * 0.9f64.powi(39), "{:?}", f.mean);
        assert!(f.mean[0] > 0.0);
    }

    #[test]
    fn adida_on_regular_series() {
        // One unit every 4 periods: buckets of 4 each sum to 1 -> 0.25 per period.
        let y: Vec<f64> = (0..40).map(|t| if t % 4 == 3 { 1.0 } else { 0.0 }).collect();
        let f = adida(&y, 2);
        assert!((f.mean[0] - 0.25).abs() < 1e-9, "{:?}", f.mean);
    }

    #[test]
    fn classification_cut_offs() {
        let smooth: Vec<f64> = (0..50).map(|t| 10.0 + (t % 3) as f64).collect();
        assert_eq!(classify(&smooth).unwrap().class, DemandClass::Smooth);
        let lumpy: Vec<f64> = (0..50).map(|t| if t % 5 == 0 { (t * t) as f64 + 1.0 } else { 0.0 }).collect();
        assert_eq!(classify(&lumpy).unwrap().class, DemandClass::Lumpy);
        let inter: Vec<f64> = (0..50).map(|t| if t % 3 == 0 { 4.0 } else { 0.0 }).collect();
        assert_eq!(classify(&inter).unwrap().class, DemandClass::Intermittent);
        assert!(classify(&[0.0; 5]).is_none());
    }
}
