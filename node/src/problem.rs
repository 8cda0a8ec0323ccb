//! How the store's errors show over HTTP: each [`StoreError`] becomes an RFC 9457 problem with a stable code
//! (the problem type itself and the body extractors live in `oms_service::problem`).

use axum::http::StatusCode;
use oms_service::Problem;

use crate::store::StoreError;

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        use StatusCode as S;
        let detail = e.to_string();
        let code = e.code();
        match e {
            StoreError::Invalid(v) => v.into(),
            StoreError::UnknownSku(sku) => Problem::new(S::UNPROCESSABLE_ENTITY, code, detail).with("sku", sku),
            StoreError::InsufficientStock(s) => Problem::new(S::CONFLICT, code, detail).with("shortfalls", s),
            StoreError::BelowReserved { sku, .. } => Problem::new(S::CONFLICT, code, detail).with("sku", sku),
            StoreError::EscrowedToHub { sku, site_rights, requested } => Problem::new(S::CONFLICT, code, detail)
                .with("sku", sku)
                .with("site_rights", site_rights)
                .with("requested", requested),
            StoreError::IdempotencyKeyReused(_) => Problem::new(S::CONFLICT, code, detail),
            StoreError::OrderNotFound(_) => Problem::new(S::NOT_FOUND, code, detail),
            StoreError::OrderFrozen { order, frozen_at_ms } => {
                Problem::new(S::CONFLICT, code, detail).with("order", order).with("frozen_at_ms", frozen_at_ms)
            }
            StoreError::ConsignmentState { state, .. } => Problem::new(S::CONFLICT, code, detail).with("state", state),
            StoreError::NothingToManifest(_) => Problem::new(S::CONFLICT, code, detail),
            StoreError::WaveNotFound(_) | StoreError::ConsignmentNotFound(_) | StoreError::ManifestNotFound(_) => {
                Problem::new(S::NOT_FOUND, code, detail)
            }
            StoreError::Transition { source, .. } => {
                Problem::new(S::CONFLICT, code, detail).with("state", source.from).with("step", source.step)
            }
            StoreError::LineMismatch { .. } => Problem::new(S::UNPROCESSABLE_ENTITY, code, detail),
            StoreError::NothingToPick => Problem::new(S::CONFLICT, code, detail),
            StoreError::InboundNotFound { .. } => Problem::new(S::NOT_FOUND, code, detail),
            StoreError::NotReceivable { po, state } => {
                Problem::new(S::CONFLICT, code, detail).with("purchase_order", po).with("state", state)
            }
            StoreError::OverReceipt { po, line, expected, received, requested, tolerance_pct } => {
                Problem::new(S::CONFLICT, code, detail)
                    .with("purchase_order", po)
                    .with("line", line)
                    .with("expected", expected)
                    .with("received", received)
                    .with("requested", requested)
                    .with("tolerance_pct", tolerance_pct)
            }
            StoreError::RmaNotFound(rma) => Problem::new(S::NOT_FOUND, code, detail).with("rma", rma),
            StoreError::RmaNotReceivable { rma, state } => {
                Problem::new(S::CONFLICT, code, detail).with("rma", rma).with("state", state)
            }
            StoreError::OverReturn { rma, sku, approved, received, requested } => {
                Problem::new(S::CONFLICT, code, detail)
                    .with("rma", rma)
                    .with("sku", sku)
                    .with("approved", approved)
                    .with("received", received)
                    .with("requested", requested)
            }
            StoreError::RmaChanged { rma, expected, received } => Problem::new(S::CONFLICT, code, detail)
                .with("rma", rma)
                .with("expected_received", expected)
                .with("received", received),
            StoreError::Overloaded => Problem::new(S::SERVICE_UNAVAILABLE, code, detail),
            StoreError::ShuttingDown => Problem::new(S::SERVICE_UNAVAILABLE, code, detail),
            StoreError::InsufficientStorage { free_bytes, reserve_bytes } => {
                Problem::new(S::INSUFFICIENT_STORAGE, code, detail)
                    .with("free_bytes", free_bytes)
                    .with("reserve_bytes", reserve_bytes)
            }
            StoreError::Storage(e) if e.is_disk_full() => {
                tracing::error!(error = %detail, "disk full");
                Problem::new(S::INSUFFICIENT_STORAGE, code, detail)
            }
            StoreError::Storage(_) => {
                tracing::error!(error = %detail, "storage failure");
                Problem::new(S::SERVICE_UNAVAILABLE, code, detail)
            }
            StoreError::Corrupt { .. } => {
                tracing::error!(error = %detail, "corrupt record");
                Problem::new(S::INTERNAL_SERVER_ERROR, code, detail)
            }
        }
    }
}
