//! Demand history and replenishment figures from the order documents the hub holds.
//!
//! - `history`: the demand index, two daily series per SKU × fulfilling site and per SKU for the whole
//!   network ([`Basis`]): units *ordered*, by the UTC day the order was accepted, and units *shipped*, by
//!   the UTC day of the carrier hand-over. Cancelled and rejected orders are left out; only complete days
//!   count (a series ends yesterday, day 0 of a forecast is today). Days are epoch days (since 1970-01-01, UTC).
//! - `stock`: available stock (on hand minus reserved) per SKU × site from the nodes' stock documents.
//! - `planning`: forecast and replenishment figures of one series (`forecast_item`, over
//!   [`oms_forecast`]) and of every SKU × site with enough history, most urgent first, with lead time,
//!   service level and order cycle resolved from the `[forecast]` configuration ([`crate::forecast_config`]).
//!   The hub knows no purchase orders, so stock on order is zero, and responses say so (`ON_ORDER_SOURCE`).
//! - `export`: the CSV form of a replenishment run (`to_csv`).
//! - `ledger`: what each order document adds to the demand and the integer sums per SKU × site and day,
//!   kept up to date one changed document at a time; a demand index for a day is cut from it.
//! - `cache`: the ledger and the sites' stock brought up to date from the documents the hub noted as
//!   changed, a chunk of documents per hold of the documents' lock, and the last replenishment run
//!   ([`DemandCache`]).
//!
//! Within the module the uses point one way: `stock` uses none of the others, `history` and `ledger` use
//! each other (the ledger cuts an index; the full rebuild of the tests reads entries), `planning` uses
//! `history` and `stock`, `export` uses `planning`, and `cache` uses `history`, `ledger`, `stock` and
//! `planning`. Outside it, `demand`
//! uses only [`crate::docs`] and [`crate::forecast_config`] (and the protocol and forecast crates): the HTTP
//! side ([`crate::forecast_api`]) uses it, never the reverse. [`Basis`] and [`DemandCache`] are public because
//! the public signatures of [`crate::forecast_api`] name them; everything else is for the crate only.

mod cache;
mod export;
mod history;
mod ledger;
mod planning;
mod stock;
#[cfg(test)]
pub(crate) mod test_support;

pub use cache::DemandCache;
pub(crate) use cache::READ_CHUNK;
// The header is named outside `demand` by the tests of `forecast_api` only.
#[cfg(test)]
pub(crate) use export::CSV_HEADER;
pub(crate) use export::to_csv;
pub use history::Basis;
pub(crate) use history::{DAY_MS, History, iso_date};
pub use planning::Supply;
pub(crate) use planning::{
    DemandError, MIN_HISTORY_DAYS, ON_ORDER_SOURCE, PlanParams, QUANTILES, Suggestion, forecast_item,
    resolved_with_supplier, round3,
};
