//! Typed errors of the forecasting functions.

use thiserror::Error;

/// Why a forecast could not be produced.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ForecastError {
    /// The series is shorter than the model (or any fallback) needs.
    #[error("insufficient history: {got} observations, at least {needed} needed")]
    InsufficientHistory {
        /// Observations the caller supplied.
        got: usize,
        /// Observations needed.
        needed: usize,
    },
    /// The series contains NaN or an infinity at `index`.
    #[error("non-finite value at index {index}")]
    NonFinite {
        /// Position of the first offending value.
        index: usize,
    },
    /// A parameter is out of its domain (horizon zero, quantile outside (0, 1), ...).
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// The optimiser found no finite fit (e.g. a multiplicative model on data with zeros).
    #[error("model {0} could not be fitted")]
    FitFailed(&'static str),
}
