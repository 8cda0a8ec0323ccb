//! Derivative-free optimisers for model parameters.
//!
//! Hand-written rather than pulled from a crate: the likelihoods of ETS and friends are cheap,
//! non-smooth at the parameter bounds (we return a large penalty outside them) and low-dimensional,
//! which is exactly Nelder–Mead's niche (it is also what R's `forecast::ets` uses). The whole
//! optimiser is ~80 lines, has no allocation in the inner loop beyond the simplex, and keeps the
//! dependency tree of this crate to `thiserror`.

// Casts: the dimension and evaluation counts are far below 2^53, so `as f64` on them is exact.

/// Result of a minimisation.
#[derive(Debug, Clone)]
pub struct Minimum {
    /// Best point found.
    pub x: Vec<f64>,
    /// Objective at `x` (may be `f64::INFINITY` if no finite point was found).
    pub value: f64,
}

fn sanitize(v: f64) -> f64 {
    if v.is_nan() { f64::INFINITY } else { v }
}

/// Nelder–Mead simplex minimisation (Nelder & Mead 1965, standard coefficients 1, 2, 0.5, 0.5).
///
/// `step[i]` is the initial simplex edge along coordinate `i`. Stops after `max_evals`
/// evaluations or when the spread of objective values falls below `tol` (relative).
/// NaN objective values are treated as +∞, so a bad region never poisons the simplex.
pub fn nelder_mead<F: FnMut(&[f64]) -> f64>(mut f: F, x0: &[f64], step: &[f64], max_evals: usize, tol: f64) -> Minimum {
    let n = x0.len();
    if n == 0 {
        return Minimum { x: Vec::new(), value: sanitize(f(x0)) };
    }
    let mut simplex: Vec<Vec<f64>> = Vec::with_capacity(n + 1);
    simplex.push(x0.to_vec());
    for i in 0..n {
        let mut p = x0.to_vec();
        p[i] += step.get(i).copied().unwrap_or(0.1);
        simplex.push(p);
    }
    let mut values: Vec<f64> = simplex.iter().map(|p| sanitize(f(p))).collect();
    let mut evals = n + 1;
    let mut centroid = vec![0.0; n];
    let mut trial = vec![0.0; n];
    let mut trial2 = vec![0.0; n];
    while evals < max_evals {
        // Order: best first.
        let mut idx: Vec<usize> = (0..=n).collect();
        idx.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
        simplex = idx.iter().map(|&i| simplex[i].clone()).collect();
        values = idx.iter().map(|&i| values[i]).collect();
        let best = values[0];
        let worst = values[n];
        if worst.is_finite() && (worst - best).abs() <= tol * (best.abs() + tol) {
            break;
        }
        centroid.iter_mut().for_each(|c| *c = 0.0);
        for p in &simplex[..n] {
            for (c, v) in centroid.iter_mut().zip(p) {
                *c += v / n as f64;
            }
        }
        // Reflection.
        for i in 0..n {
            trial[i] = centroid[i] + (centroid[i] - simplex[n][i]);
        }
        let fr = sanitize(f(&trial));
        evals += 1;
        if fr < values[0] {
            // Expansion.
            for i in 0..n {
                trial2[i] = centroid[i] + 2.0 * (trial[i] - centroid[i]);
            }
            let fe = sanitize(f(&trial2));
            evals += 1;
            if fe < fr {
                simplex[n].copy_from_slice(&trial2);
                values[n] = fe;
            } else {
                simplex[n].copy_from_slice(&trial);
                values[n] = fr;
            }
        } else if fr < values[n - 1] {
            simplex[n].copy_from_slice(&trial);
            values[n] = fr;
        } else {
            // Contraction (outside if the reflection improved on the worst, inside otherwise).
            let outside = fr < values[n];
            for i in 0..n {
                trial2[i] = if outside {
                    centroid[i] + 0.5 * (trial[i] - centroid[i])
                } else {
                    centroid[i] + 0.5 * (simplex[n][i] - centroid[i])
                };
            }
            let fc = sanitize(f(&trial2));
            evals += 1;
            if fc < fr.min(values[n]) {
                simplex[n].copy_from_slice(&trial2);
                values[n] = fc;
            } else {
                // Shrink towards the best vertex.
                let (best, rest) = simplex.split_at_mut(1);
                for (vertex, value) in rest.iter_mut().zip(values.iter_mut().skip(1)) {
                    for (v, b) in vertex.iter_mut().zip(&best[0]) {
                        *v = b + 0.5 * (*v - b);
                    }
                    *value = sanitize(f(vertex));
                    evals += 1;
                }
            }
        }
    }
    let mut best = 0;
    for i in 1..values.len() {
        if values[i] < values[best] {
            best = i;
        }
    }
    Minimum { x: simplex[best].clone(), value: values[best] }
}

/// Golden-section search for the minimum of a unimodal `f` on `[lo, hi]`.
/// Returns `(argmin, min)`; used for one-parameter smoothing constants.
pub fn golden_section<F: FnMut(f64) -> f64>(mut f: F, lo: f64, hi: f64, iters: usize) -> (f64, f64) {
    const INV_PHI: f64 = 0.618_033_988_749_895;
    let (mut a, mut b) = (lo, hi);
    let mut c = b - INV_PHI * (b - a);
    let mut d = a + INV_PHI * (b - a);
    let mut fc = sanitize(f(c));
    let mut fd = sanitize(f(d));
    for _ in 0..iters {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - INV_PHI * (b - a);
            fc = sanitize(f(c));
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + INV_PHI * (b - a);
            fd = sanitize(f(d));
        }
    }
    if fc < fd { (c, fc) } else { (d, fd) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nelder_mead_finds_rosenbrock_minimum() {
        let m = nelder_mead(
            |x| (1.0 - x[0]).powi(2) + 100.0 * (x[1] - x[0] * x[0]).powi(2),
            &[-1.2, 1.0],
            &[0.5, 0.5],
            5000,
            1e-14,
        );
        assert!((m.x[0] - 1.0).abs() < 1e-3 && (m.x[1] - 1.0).abs() < 1e-3, "{:?}", m);
    }

    #[test]
    fn golden_section_finds_parabola_minimum() {
        let (x, _) = golden_section(|a| (a - 0.3).powi(2), 0.0, 1.0, 60);
        assert!((x - 0.3).abs() < 1e-6);
    }
}
