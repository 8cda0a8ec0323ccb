//! Property tests: no input makes the public functions panic or produce NaN/∞, quantiles stay
//! monotone, and plans stay finite and non-negative.

use oms_forecast::ForecastError;
use oms_forecast::compound::{SizeDistribution, lead_time_pmf, quantile_of_sum};
use oms_forecast::forecast::{Forecast, ModelKind, auto, fit};
use oms_forecast::replenishment::{lead_time_risk, plan};
use proptest::prelude::*;

fn check_forecast(f: &Forecast, h: usize) {
    assert_eq!(f.mean.len(), h);
    assert!(f.mean.iter().all(|v| v.is_finite() && *v >= 0.0), "{:?}", f.mean);
    for q in &f.quantiles {
        assert_eq!(q.values.len(), h);
        assert!(q.values.iter().all(|v| v.is_finite() && *v >= 0.0), "{q:?}");
    }
    for pair in f.quantiles.windows(2) {
        if pair[0].level <= pair[1].level {
            for (a, b) in pair[0].values.iter().zip(&pair[1].values) {
                assert!(a <= b, "quantiles not monotone: {pair:?}");
            }
        }
    }
    for sl in [0.5, 0.95, 0.999] {
        let p = plan(f, 10.0, 2.0, 7, sl);
        for v in [p.lead_time_demand, p.safety_stock, p.reorder_point, p.order_up_to, p.reorder_qty] {
            assert!(v.is_finite() && v >= 0.0, "{p:?}");
        }
        assert!(p.days_of_cover.is_none_or(|d| d.is_finite() && d >= 0.0));
    }
}

/// Series mixing smooth values, zeros, negatives (adjustments), spikes and constants.
fn series() -> impl Strategy<Value = Vec<f64>> {
    prop_oneof![
        prop::collection::vec(-5.0f64..50.0, 0..40),
        prop::collection::vec(prop_oneof![Just(0.0), 1.0f64..5.0, Just(1e6)], 0..40),
        (0.0f64..100.0, 0usize..40).prop_map(|(v, n)| vec![v; n]),
        prop::collection::vec(prop_oneof![4 => Just(0.0), 1 => 1.0f64..3.0], 0..60),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn auto_never_panics_or_returns_nan(y in series(), season in 0usize..13, h in 1usize..20) {
        match auto(&y, season, h, &[0.05, 0.5, 0.95]) {
            Ok(f) => check_forecast(&f, h),
            Err(e) => prop_assert_eq!(e, ForecastError::InsufficientHistory { got: 0, needed: 1 }),
        }
    }

    #[test]
    fn every_model_is_safe(y in series(), season in 0usize..9, h in 1usize..15) {
        for kind in ModelKind::ALL {
            if matches!(kind, ModelKind::Ets | ModelKind::Combination) && y.len() > 30 {
                continue; // covered by `auto`; keeps the debug-mode test fast
            }
            match fit(kind, &y, season, h, &[0.1, 0.9]) {
                Ok(f) => check_forecast(&f, h),
                Err(ForecastError::InsufficientHistory { .. }) | Err(ForecastError::FitFailed(_)) => {}
                Err(e) => prop_assert!(false, "unexpected error {e:?}"),
            }
        }
    }

    #[test]
    fn plan_is_finite_for_any_stock(on_hand in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), -1e9f64..1e9],
                                    on_order in -10.0f64..1e6, lead in 0usize..60, sl in -1.0f64..2.0) {
        let y: Vec<f64> = (0..50).map(|t| if t % 3 == 0 { 2.0 } else { 0.0 }).collect();
        let f = auto(&y, 7, 14, &[0.5]).unwrap();
        let p = plan(&f, on_hand, on_order, lead, sl);
        for v in [p.lead_time_demand, p.safety_stock, p.reorder_point, p.order_up_to, p.reorder_qty, p.inventory_position] {
            prop_assert!(v.is_finite());
        }
    }
}

/// Whole-unit demand histories: intermittent (orders of stable size on some days), lumpy and smooth.
fn demand_history() -> impl Strategy<Value = Vec<f64>> {
    prop_oneof![
        prop::collection::vec(prop_oneof![6 => Just(0.0), 1 => (1u32..4).prop_map(f64::from)], 20..300),
        prop::collection::vec(prop_oneof![4 => Just(0.0), 1 => (1u32..200).prop_map(f64::from)], 20..300),
        prop::collection::vec((0u32..30).prop_map(f64::from), 20..200),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// Safety stock is never negative and never falls when the service level rises, for every demand pattern
    /// (the compound model for intermittent items, the distribution-free one otherwise).
    #[test]
    fn safety_stock_is_non_negative_and_monotone_in_service_level(y in demand_history(), lead in 1usize..15) {
        let f = auto(&y, 7, 28, &[]).unwrap();
        let mut last = 0.0;
        for level in [0.5, 0.7, 0.8, 0.9, 0.95, 0.975, 0.99, 0.999] {
            let risk = lead_time_risk(&f, lead, level);
            prop_assert!(risk.safety_stock.is_finite() && risk.safety_stock >= 0.0, "{risk:?}");
            prop_assert!(risk.safety_stock >= last, "{level}: {} < {last}", risk.safety_stock);
            last = risk.safety_stock;
        }
    }

    /// The compound lead-time quantile is monotone in the level and in the order probability.
    #[test]
    fn compound_quantile_is_monotone(sizes in prop::collection::vec(1u32..50, 1..40), p in 0.0f64..1.0, days in 1usize..30) {
        let history: Vec<f64> = sizes.iter().map(|s| f64::from(*s)).collect();
        let dist = SizeDistribution::empirical(&history).unwrap();
        let u = dist.undershoot_pmf();
        prop_assert!((u.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        let low = lead_time_pmf(p * 0.5, &dist, days).unwrap();
        let high = lead_time_pmf(p, &dist, days).unwrap();
        prop_assert!((high.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        let mut last = 0;
        for level in [0.5, 0.9, 0.95, 0.99] {
            let q = quantile_of_sum(&high, &u, level).unwrap();
            prop_assert!(q >= last);
            prop_assert!(quantile_of_sum(&low, &u, level).unwrap() <= q);
            last = q;
        }
    }
}

#[test]
fn invalid_parameters_are_rejected() {
    assert!(matches!(auto(&[1.0, 2.0], 1, 0, &[]), Err(ForecastError::InvalidParameter(_))));
    assert!(matches!(auto(&[1.0, 2.0], 1, 3, &[1.5]), Err(ForecastError::InvalidParameter(_))));
    assert!(matches!(auto(&[1.0, 2.0], 1, 3, &[f64::NAN]), Err(ForecastError::InvalidParameter(_))));
    assert!(matches!(auto(&[1.0, 2.0], 1, usize::MAX, &[]), Err(ForecastError::InvalidParameter(_))));
}

#[test]
fn extreme_season_and_lead_time_are_handled() {
    let y: Vec<f64> = (0..30).map(|t| (t % 5) as f64).collect();
    let f = auto(&y, usize::MAX, 5, &[0.5]).unwrap();
    check_forecast(&f, 5);
    let p = plan(&f, 3.0, 0.0, usize::MAX, 0.95);
    assert!(p.reorder_point.is_finite());
}
