//! Tax (`[tax]` in the hub's configuration) and the arithmetic of document lines, in integer minor units.
//!
//! **Rounding, per line, half-even (banker's rounding)**: a line's tax is computed from the line's amount
//! (unit price × quantity) and rounded once, half to even. When a line is invoiced in parts (one invoice per
//! shipment) or credited in parts, each part's tax is the tax of the quantity invoiced so far *including*
//! this part minus the tax of the quantity invoiced before it, so the parts of a line always add up to the tax
//! of the whole line, and the invoices of an order to its authorized total, to the minor unit.
//!
//! Prices are tax-inclusive (`prices = "inclusive"`, the default: the gross is the price, the net is derived)
//! or tax-exclusive (`"exclusive"`: the net is the price, tax is added). Rates are basis points (1900 = 19 %)
//! per destination country (ISO 3166-1 alpha-2) or region (`DE-BY`, matched before the country), with a
//! default.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Largest rate, basis points (100 %).
pub const RATE_BP_MAX: u32 = 10_000;
/// Most entries in `[tax.rates]`.
pub const RATES_MAX: usize = 1_000;

/// Whether prices include tax.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Prices {
    /// The price is the gross; tax is part of it.
    #[default]
    Inclusive,
    /// The price is the net; tax is added.
    Exclusive,
}

/// `[tax]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaxConfig {
    /// Whether prices include tax.
    pub prices: Prices,
    /// Rate where no entry of `rates` matches, basis points.
    pub default_bp: u32,
    /// Rate per country (`DE`) or region (`DE-BY`), basis points.
    pub rates: BTreeMap<String, u32>,
}

impl TaxConfig {
    /// Why the table is unusable, if it is.
    pub fn check(&self) -> Result<(), String> {
        if self.rates.len() > RATES_MAX {
            return Err(format!("[tax] rates: at most {RATES_MAX} entries"));
        }
        for (k, v) in self.rates.iter().map(|(k, v)| (k.as_str(), *v)).chain([("default_bp", self.default_bp)]) {
            if v > RATE_BP_MAX {
                return Err(format!("[tax] {k}: a rate is 0 ..= {RATE_BP_MAX} basis points, not {v}"));
            }
        }
        Ok(())
    }

    /// The rate for a destination: its region (when given) first, then its country, then the default.
    pub fn rate_bp(&self, country: &str, region: Option<&str>) -> u32 {
        region
            .and_then(|r| self.rates.get(&format!("{country}-{r}")))
            .or_else(|| self.rates.get(country))
            .copied()
            .unwrap_or(self.default_bp)
    }
}

/// `n / d` rounded half to even (`d > 0`).
pub fn div_half_even(n: i128, d: i128) -> i128 {
    let q = n.div_euclid(d);
    let r = n.rem_euclid(d);
    match (2 * r).cmp(&d) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q & 1),
    }
}

/// The tax in a line amount `amount` (minor units) at `bp` basis points, rounded half-even.
pub fn line_tax(amount: i128, bp: u32, prices: Prices) -> i128 {
    let bp = i128::from(bp);
    match prices {
        Prices::Exclusive => div_half_even(amount * bp, 10_000),
        Prices::Inclusive => amount - div_half_even(amount * 10_000, 10_000 + bp),
    }
}

/// Net, tax and gross of a part of a line: `qty` units at `unit_price` after `before` units of the same line
/// were already on earlier documents (see the module docs).
pub fn part(unit_price: i64, before: u64, qty: u64, bp: u32, prices: Prices) -> (i64, i64, i64) {
    let price = i128::from(unit_price);
    let upto = |n: u64| -> (i128, i128) {
        let amount = price * i128::from(n);
        (amount, line_tax(amount, bp, prices))
    };
    let (a0, t0) = upto(before);
    let (a1, t1) = upto(before.saturating_add(qty));
    let (amount, tax) = (a1 - a0, t1 - t0);
    let (net, gross) = match prices {
        Prices::Exclusive => (amount, amount + tax),
        Prices::Inclusive => (amount - tax, amount),
    };
    // Within i64: prices, quantities and lines are bounded by `OrderDraft::validate` (≤ 2·10^17 per order).
    let c = |v: i128| i64::try_from(v).unwrap_or(i64::MAX);
    (c(net), c(tax), c(gross))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn half_even_and_both_price_bases() {
        assert_eq!((div_half_even(5, 2), div_half_even(7, 2), div_half_even(-5, 2)), (2, 4, -2));
        // 19 % on 1.05 net: 0.1995 → 0.20.
        assert_eq!(part(105, 0, 1, 1900, Prices::Exclusive), (105, 20, 125));
        // 1.19 gross at 19 %: net 1.00, tax 0.19.
        assert_eq!(part(119, 0, 1, 1900, Prices::Inclusive), (100, 19, 119));
        let cfg = TaxConfig { rates: [("DE".into(), 1900), ("DE-BY".into(), 700)].into(), ..TaxConfig::default() };
        assert_eq!((cfg.rate_bp("DE", None), cfg.rate_bp("DE", Some("BY")), cfg.rate_bp("FR", None)), (1900, 700, 0));
        assert!(TaxConfig { default_bp: 10_001, ..TaxConfig::default() }.check().is_err());
    }

    proptest! {
        /// However a line is split over documents, the parts add up to the whole line, net + tax = gross on
        /// every part, and the tax of a part is never negative.
        #[test]
        fn parts_add_up_to_the_line(
            price in 0..1_000_000_000i64,
            splits in prop::collection::vec(1..1_000u64, 1..8),
            bp in 0..=10_000u32,
            inclusive in any::<bool>(),
        ) {
            let prices = if inclusive { Prices::Inclusive } else { Prices::Exclusive };
            let total: u64 = splits.iter().sum();
            let whole = part(price, 0, total, bp, prices);
            let mut before = 0;
            let mut sum = (0i64, 0i64, 0i64);
            for q in &splits {
                let p = part(price, before, *q, bp, prices);
                prop_assert_eq!(p.0 + p.1, p.2);
                prop_assert!(p.1 >= 0 && p.0 >= 0);
                sum = (sum.0 + p.0, sum.1 + p.1, sum.2 + p.2);
                before += q;
            }
            prop_assert_eq!(sum, whole);
        }
    }
}
