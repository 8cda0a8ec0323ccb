//! Lead-time demand of intermittent items as a discrete compound distribution.
//!
//! The distribution-free safety stock of [`crate::replenishment`] reads a quantile of past
//! lead-time error sums. For slow movers that over-protects: their lead-time demand has large
//! atoms (0, one order, two orders …) and an empirical quantile with a finite-sample correction
//! jumps to the next atom (realised cycle service level 0.975 for a 0.95 target on the synthetic
//! panel's intermittent items). Here the daily demand of an item in whole units is modelled as
//! compound Bernoulli: on each day an order arrives with probability `p`, its size drawn from the
//! empirical distribution of past order sizes (Syntetos, Babai & Altay 2012 review this family;
//! Babai, Jemai & Dallery 2011 use it for spare parts). The lead-time demand `D_L` is the sum of
//! `L` independent days, computed exactly by convolution on the whole numbers. The undershoot of
//! the reorder point in whole units, `⌊U⌋`, has the equilibrium distribution of the size, `P(⌊U⌋ =
//! k) = P(S > k) / E[S]` (renewal theory, the discrete form of the uniform share of a size-biased
//! order in [`crate::replenishment`]). The reorder point is the smallest whole `s` with
//! `P(D_L + ⌊U⌋ ≤ s) ≥` the service level.
//!
//! Every computation is bounded: supports are truncated at [`SUPPORT_MAX`] units and the
//! convolution work at [`WORK_MAX`] multiply–adds; past either the caller falls back to the
//! distribution-free method (`None`).

// Casts: supports, counts and sizes are at most SUPPORT_MAX (2^16), far below 2^53, so `as f64` is exact.

/// Largest number of units the distributions are computed for.
pub const SUPPORT_MAX: usize = 1 << 16;
/// Largest number of multiply–adds one lead-time distribution may cost.
pub const WORK_MAX: usize = 20_000_000;

/// Distribution of the size of one order, in whole units.
#[derive(Debug, Clone, PartialEq)]
pub struct SizeDistribution {
    /// `(size, probability)` for each distinct size ≥ 1, ascending; probabilities sum to 1.
    pub atoms: Vec<(usize, f64)>,
}

impl SizeDistribution {
    /// Empirical distribution of the positive values of `demands`; `None` if there are none, any is not a
    /// whole number, or one exceeds [`SUPPORT_MAX`].
    pub fn empirical(demands: &[f64]) -> Option<SizeDistribution> {
        let mut sizes: Vec<usize> = Vec::new();
        for &d in demands.iter().filter(|d| **d > 0.0) {
            if d.fract() != 0.0 || d > SUPPORT_MAX as f64 {
                return None;
            }
            // Whole, positive and at most SUPPORT_MAX: the cast is exact.
            sizes.push(d as usize);
        }
        if sizes.is_empty() {
            return None;
        }
        sizes.sort_unstable();
        let total = sizes.len() as f64;
        let mut atoms: Vec<(usize, f64)> = Vec::new();
        for s in sizes {
            match atoms.last_mut() {
                Some((last, p)) if *last == s => *p += 1.0 / total,
                _ => atoms.push((s, 1.0 / total)),
            }
        }
        Some(SizeDistribution { atoms })
    }

    /// Mean size.
    pub fn mean(&self) -> f64 {
        self.atoms.iter().map(|(s, p)| *s as f64 * p).sum()
    }

    fn max(&self) -> usize {
        self.atoms.last().map_or(0, |a| a.0)
    }

    /// `P(⌊U⌋ = k)` for `k = 0..max size`: the equilibrium distribution `P(S > k) / E[S]`.
    pub fn undershoot_pmf(&self) -> Vec<f64> {
        let mean = self.mean();
        if mean <= 0.0 {
            return vec![1.0];
        }
        let mut pmf = vec![0.0; self.max().max(1)];
        let mut above = 1.0; // P(S > k), k from 0
        let mut next = 0; // first atom with size > k
        for (k, slot) in pmf.iter_mut().enumerate() {
            while next < self.atoms.len() && self.atoms[next].0 <= k {
                above -= self.atoms[next].1;
                next += 1;
            }
            *slot = above.max(0.0) / mean;
        }
        pmf
    }
}

/// Probability mass function of the sum of `days` independent days, each with an order of a size drawn from
/// `sizes` with probability `p` (else nothing). `None` past the bounds of the module docs.
pub fn lead_time_pmf(p: f64, sizes: &SizeDistribution, days: usize) -> Option<Vec<f64>> {
    let p = if p.is_finite() { p.clamp(0.0, 1.0) } else { return None };
    let support = days.checked_mul(sizes.max())?.checked_add(1)?;
    if support > SUPPORT_MAX {
        return None;
    }
    // Work: each day convolves the current support with every atom.
    if days.checked_mul(support)?.checked_mul(sizes.atoms.len() + 1)? > WORK_MAX {
        return None;
    }
    let mut pmf = vec![0.0; support];
    pmf[0] = 1.0;
    let mut reach = 0; // highest index with mass so far
    let mut next = vec![0.0; support];
    for _ in 0..days {
        next[..=reach + sizes.max()].iter_mut().for_each(|v| *v = 0.0);
        for (k, &mass) in pmf[..=reach].iter().enumerate() {
            if mass == 0.0 {
                continue;
            }
            next[k] += (1.0 - p) * mass;
            for &(s, q) in &sizes.atoms {
                next[k + s] += p * q * mass;
            }
        }
        reach += sizes.max();
        std::mem::swap(&mut pmf, &mut next);
    }
    Some(pmf)
}

/// Smallest whole `s` with `P(X + Y ≤ s) ≥ level` for independent `X ~ a`, `Y ~ b` (pmfs on 0, 1, …); `None`
/// if the level is not reached within the supports (mass lost to rounding) or the work is past [`WORK_MAX`].
pub fn quantile_of_sum(a: &[f64], b: &[f64], level: f64) -> Option<usize> {
    if a.is_empty() || b.is_empty() || a.len().checked_mul(b.len())? > WORK_MAX {
        return None;
    }
    let mut cdf = 0.0;
    for s in 0..a.len() + b.len() {
        // P(X + Y = s)
        let lo = s.saturating_sub(b.len() - 1);
        let hi = s.min(a.len() - 1);
        if lo <= hi {
            cdf += (lo..=hi).map(|i| a[i] * b[s - i]).sum::<f64>();
        }
        if cdf >= level - 1e-12 {
            return Some(s);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::SplitMix64;

    #[test]
    fn empirical_sizes_and_their_undershoot() {
        let s = SizeDistribution::empirical(&[0.0, 2.0, 0.0, 4.0, 2.0, 0.0]).unwrap();
        assert_eq!(s.atoms.len(), 2);
        assert!((s.atoms[0].1 - 2.0 / 3.0).abs() < 1e-12 && s.atoms[0].0 == 2);
        assert!((s.mean() - 8.0 / 3.0).abs() < 1e-12);
        // P(S > k) / E[S]: k = 0, 1 → 1 / (8/3); k = 2, 3 → (1/3) / (8/3).
        let u = s.undershoot_pmf();
        let want = [3.0 / 8.0, 3.0 / 8.0, 1.0 / 8.0, 1.0 / 8.0];
        assert_eq!(u.len(), 4);
        for (a, b) in u.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{u:?}");
        }
        assert!(SizeDistribution::empirical(&[0.0, 1.5]).is_none());
        assert!(SizeDistribution::empirical(&[0.0, 0.0]).is_none());
        assert!(SizeDistribution::empirical(&[1e9]).is_none());
    }

    #[test]
    fn lead_time_pmf_of_unit_orders_is_binomial() {
        let s = SizeDistribution::empirical(&[1.0]).unwrap();
        let pmf = lead_time_pmf(0.3, &s, 5).unwrap();
        let binom = |k: i32| {
            let c = [1.0, 5.0, 10.0, 10.0, 5.0, 1.0][k as usize];
            c * 0.3f64.powi(k) * 0.7f64.powi(5 - k)
        };
        for k in 0..=5 {
            assert!((pmf[k as usize] - binom(k)).abs() < 1e-12, "{pmf:?}");
        }
        assert!((pmf.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn quantile_matches_monte_carlo() {
        // Orders on 20% of days, sizes 1, 3 or 8; 7-day lead time plus the undershoot.
        let history: Vec<f64> = [1.0, 1.0, 3.0, 3.0, 3.0, 8.0].to_vec();
        let sizes = SizeDistribution::empirical(&history).unwrap();
        let p = 0.2;
        let lt = lead_time_pmf(p, &sizes, 7).unwrap();
        let u = sizes.undershoot_pmf();
        let mut rng = SplitMix64::new(9);
        let draws = 200_000;
        let mut samples: Vec<usize> = (0..draws)
            .map(|_| {
                let mut d = 0;
                for _ in 0..7 {
                    if rng.uniform() < p {
                        d += sizes_pick(&history, &mut rng);
                    }
                }
                // Undershoot: a size-biased order, then a uniform whole share below it.
                let biased = size_biased_pick(&history, &mut rng);
                // Uniform on 0..biased; `uniform() < 1` so the index is below `biased`.
                d + (rng.uniform() * biased as f64) as usize
            })
            .collect();
        samples.sort_unstable();
        for level in [0.5, 0.8, 0.9, 0.95, 0.99] {
            let exact = quantile_of_sum(&lt, &u, level).unwrap();
            // Monte Carlo: the smallest s whose empirical CDF reaches the level, within ±0.3 percentage points.
            let at = |q: f64| samples[((q * draws as f64) as usize).min(draws - 1)];
            assert!(at(level - 0.003) <= exact && exact <= at(level + 0.003), "{level}: {exact} vs {}", at(level));
        }
    }

    fn sizes_pick(history: &[f64], rng: &mut SplitMix64) -> usize {
        let i = ((rng.uniform() * history.len() as f64) as usize).min(history.len() - 1);
        history[i] as usize
    }

    fn size_biased_pick(history: &[f64], rng: &mut SplitMix64) -> usize {
        let total: f64 = history.iter().sum();
        let mut target = rng.uniform() * total;
        for &s in history {
            if target < s {
                return s as usize;
            }
            target -= s;
        }
        history[history.len() - 1] as usize
    }

    #[test]
    fn bounds_fall_back_instead_of_working_forever() {
        let big = SizeDistribution::empirical(&[60_000.0]).unwrap();
        assert!(lead_time_pmf(0.5, &big, 7).is_none());
        let s = SizeDistribution::empirical(&[2.0]).unwrap();
        assert!(lead_time_pmf(f64::NAN, &s, 7).is_none());
        assert_eq!(lead_time_pmf(0.5, &s, 0).unwrap(), vec![1.0]);
    }
}
