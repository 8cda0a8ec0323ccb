//! `oms-forecast`: the demand-forecasting core of oms.
//!
//! Everything here is a pure function of its inputs (no clock, no disk, no global state) except
//! [`eval::eval_command`] and [`synthetic::panel_command`], which read CSV files or write a report.
//!
//! * [`models`] — the individual statistical models (naive, seasonal naive, moving average, ETS with
//!   AutoETS selection by AICc, Theta, Croston/SBA/TSB/ADIDA) and the Syntetos–Boylan classification.
//! * [`forecast`] — one entry point per model plus [`forecast::auto`], which picks a model (or a
//!   combination) per series by rolling-origin backtest, and produces point forecasts and quantiles.
//! * [`compound`] — the lead-time demand of intermittent items as a compound Bernoulli distribution.
//! * [`replenishment`] — safety stock, reorder point, days of cover, stock-out day and order quantity.
//! * [`eval`] — the rolling-origin evaluation on a directory of real series (`oms forecast eval`).
//! * [`synthetic`] — a seeded synthetic SKU panel and an inventory simulation on it.
#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod compound;
pub mod error;
pub mod eval;
pub mod forecast;
pub mod models;
pub mod optim;
pub mod replenishment;
pub mod stats;
pub mod synthetic;

pub use error::ForecastError;
pub use eval::{EvalError, EvalSummary, eval_command};
pub use forecast::{Forecast, ModelKind, QuantileSeries, auto};
pub use replenishment::{Plan, plan};
pub use synthetic::{panel_command, simulate_inventory, synthetic_panel};
