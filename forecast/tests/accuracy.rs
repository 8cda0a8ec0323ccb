//! Accuracy on a small synthetic set whose answer is known: trended, seasonal series with a little
//! noise, where the noiseless signal is the best possible forecast. Generated here (tests never read
//! the shared data set).

use oms_forecast::forecast::{ModelKind, auto, fit};
use oms_forecast::synthetic::SplitMix64;

/// `(series, noiseless continuation, season)`: monthly and quarterly, additive or multiplicative
/// season, up or down trends, noise 2% of the level.
fn known_set(h: usize) -> Vec<(Vec<f64>, Vec<f64>, usize)> {
    let mut rng = SplitMix64::new(2024);
    (0..12)
        .map(|i| {
            let m = if i % 2 == 0 { 12 } else { 4 };
            let n = if m == 12 { 96 } else { 48 };
            let level = rng.range(50.0, 500.0);
            let slope = rng.range(-0.004, 0.01) * level;
            let amplitude = rng.range(0.1, 0.3);
            let multiplicative = i % 3 != 0;
            let signal = |t: usize| {
                let base = level + slope * t as f64;
                let s = amplitude * (std::f64::consts::TAU * (t % m) as f64 / m as f64).sin();
                if multiplicative { base * (1.0 + s) } else { base + level * s }
            };
            let y: Vec<f64> = (0..n).map(|t| signal(t) + 0.02 * level * rng.normal()).collect();
            let truth: Vec<f64> = (n..n + h).map(signal).collect();
            (y, truth, m)
        })
        .collect()
}

fn mean_abs(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64
}

#[test]
fn automatic_choice_finds_the_signal_of_a_known_set() {
    let h = 8;
    let mut relative = Vec::new();
    let mut snaive_relative = Vec::new();
    for (y, truth, m) in known_set(h) {
        let level = y.iter().sum::<f64>() / y.len() as f64;
        let f = auto(&y, m, h, &[0.1, 0.9]).unwrap();
        assert_eq!(f.model, ModelKind::Combination);
        relative.push(mean_abs(&f.mean, &truth) / level);
        let s = fit(ModelKind::SeasonalNaive, &y, m, h, &[]).unwrap();
        snaive_relative.push(mean_abs(&s.mean, &truth) / level);
    }
    let ours = relative.iter().sum::<f64>() / relative.len() as f64;
    let snaive = snaive_relative.iter().sum::<f64>() / snaive_relative.len() as f64;
    // Noise is 2% of the level; the signal is recovered to within well under that (measured 0.9% mean,
    // 1.3% worst), and about four times as well as seasonal naive (4.1%: it carries one season's noise
    // and misses the trend).
    assert!(ours < 0.015, "mean relative error against the signal {ours:.4} ({relative:?})");
    assert!(ours < 0.35 * snaive, "ours {ours:.4} vs seasonal naive {snaive:.4}");
    assert!(relative.iter().all(|r| *r < 0.025), "{relative:?}");
}

#[test]
fn combination_is_the_mean_of_auto_ets_and_auto_theta() {
    let (y, _, m) = known_set(6).swap_remove(1);
    let c = fit(ModelKind::Combination, &y, m, 6, &[]).unwrap();
    let e = fit(ModelKind::Ets, &y, m, 6, &[]).unwrap();
    let t = fit(ModelKind::AutoTheta, &y, m, 6, &[]).unwrap();
    for j in 0..6 {
        assert!((c.mean[j] - (e.mean[j] + t.mean[j]) / 2.0).abs() < 1e-9 * c.mean[j].abs().max(1.0));
    }
}
