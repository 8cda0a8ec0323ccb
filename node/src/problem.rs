//! How the store's errors show over HTTP: each [`StoreError`] becomes an RFC 9457 problem with a stable code
//! (the problem type itself and the body extractors live in `oms_service::problem`).

use axum::http::StatusCode;
use oms_service::Problem;

use crate::store::StoreError;

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        use StatusCode as S;
        let detail = e.to_string();
        match e {
            StoreError::Invalid(v) => v.into(),
            StoreError::UnknownSku(sku) => {
                Problem::new(S::UNPROCESSABLE_ENTITY, "unknown_sku", detail).with("sku", sku)
            }
            StoreError::InsufficientStock(s) => {
                Problem::new(S::CONFLICT, "insufficient_stock", detail).with("shortfalls", s)
            }
            StoreError::BelowReserved { sku, .. } => {
                Problem::new(S::CONFLICT, "below_reserved", detail).with("sku", sku)
            }
            StoreError::EscrowedToHub { sku, site_rights, requested } => {
                Problem::new(S::CONFLICT, "escrowed_to_hub", detail)
                    .with("sku", sku)
                    .with("site_rights", site_rights)
                    .with("requested", requested)
            }
            StoreError::IdempotencyKeyReused(_) => Problem::new(S::CONFLICT, "idempotency_key_reused", detail),
            StoreError::OrderNotFound(_) => Problem::new(S::NOT_FOUND, "order_not_found", detail),
            StoreError::OrderFrozen { order, frozen_at_ms } => Problem::new(S::CONFLICT, "order_frozen", detail)
                .with("order", order)
                .with("frozen_at_ms", frozen_at_ms),
            StoreError::WaveNotFound(_) => Problem::new(S::NOT_FOUND, "wave_not_found", detail),
            StoreError::Transition { source, .. } => Problem::new(S::CONFLICT, "illegal_transition", detail)
                .with("state", source.from)
                .with("step", source.step),
            StoreError::LineMismatch { .. } => Problem::new(S::UNPROCESSABLE_ENTITY, "line_mismatch", detail),
            StoreError::NothingToPick => Problem::new(S::CONFLICT, "nothing_to_pick", detail),
            StoreError::Overloaded => Problem::new(S::SERVICE_UNAVAILABLE, "overloaded", detail),
            StoreError::ShuttingDown => Problem::new(S::SERVICE_UNAVAILABLE, "shutting_down", detail),
            StoreError::Storage(_) => {
                tracing::error!(error = %detail, "storage failure");
                Problem::new(S::SERVICE_UNAVAILABLE, "storage_unavailable", detail)
            }
            StoreError::Corrupt { .. } => {
                tracing::error!(error = %detail, "corrupt record");
                Problem::new(S::INTERNAL_SERVER_ERROR, "corrupt_record", detail)
            }
        }
    }
}
