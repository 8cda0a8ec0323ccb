//! The label outbox: buys the label of every consignment in `awaiting_label` through the site's
//! [`Carrier`], one at a time.
//!
//! The outbox row is the consignment itself, committed by pack before any call. Each attempt is committed
//! ([`cmd::LabelAttempt`]) before the carrier is called; an attempt after an earlier one first looks the
//! label up by the consignment id (the carrier's reference), so a purchase whose answer was lost — a timeout,
//! the node killed mid-call — is found, not bought again. A carrier that cannot be reached leaves the
//! consignment waiting (backoff doubling from 250 ms up to 30 s); packing goes on
//! meanwhile. A refusal marks it `label_failed`.
//!
//! Voids go the same way: `POST /v1/consignments/{id}/void` commits `void_pending` (the outbox row), and
//! each pass voids the due ones at the carrier ([`cmd::VoidDone`], or [`cmd::VoidFailed`] to retry later).
//! A void is idempotent at every carrier, so a retry after a lost answer is harmless.

use std::sync::Arc;
use std::time::Duration;

use crate::carrier::{Carrier, CarrierConfig, CarrierError, LabelRequest};
use crate::metrics::Metrics;
use crate::store::{ConsignmentState, LABEL_BYTES_MAX, Store, StoreError, cmd};

/// Consignments looked at per pass, at most (the rest wait for the next pass).
const PASS_MAX: usize = 256;

/// Runs the outbox until the process ends.
pub(crate) async fn run<C: Carrier>(store: Store, carrier: C, cfg: CarrierConfig, metrics: Arc<Metrics>) {
    let poll = Duration::from_millis(cfg.label_poll_ms.max(10));
    let budget = Duration::from_millis(cfg.label_timeout_ms.max(1));
    loop {
        if let Err(e) = pass(&store, &carrier, cfg.name(), budget).await {
            tracing::warn!(error = %e, "label outbox pass failed; retrying");
        }
        if let Err(e) = void_pass(&store, &carrier, cfg.name(), budget).await {
            tracing::warn!(error = %e, "label void pass failed; retrying");
        }
        match store.awaiting_label(PASS_MAX) {
            Ok(w) => metrics.set_awaiting_label(w, oms_service::now_ms()),
            Err(e) => tracing::warn!(error = %e, "cannot read the consignments awaiting a label"),
        }
        tokio::time::sleep(poll).await;
    }
}

/// The ids of this carrier's consignments in `state` whose next attempt is due (at most [`PASS_MAX`]).
fn due(store: &Store, state: ConsignmentState, carrier: &str) -> Result<Vec<String>, StoreError> {
    let now = oms_service::now_ms();
    Ok(store
        .consignments(Some(state), None, PASS_MAX)?
        .into_iter()
        .filter(|c| c.next_attempt_ms <= now && c.carrier == carrier)
        .map(|c| c.id)
        .collect())
}

/// One pass over the consignments due; answers how many labels it stored.
async fn pass<C: Carrier>(store: &Store, carrier: &C, name: &str, budget: Duration) -> Result<usize, StoreError> {
    let due = due(store, ConsignmentState::AwaitingLabel, name)?;
    let mut stored = 0;
    for id in due {
        let Some(c) = store.execute(cmd::LabelAttempt { id }).await? else { continue };
        let req = LabelRequest { reference: c.id.clone(), service: c.service.clone(), parcels: c.parcels.clone() };
        let call = async {
            if c.label_attempts > 1
                && let Some(l) = carrier.find_label(&req.reference).await?
            {
                return Ok((l, true));
            }
            carrier.buy_label(&req).await.map(|l| (l, false))
        };
        let outcome = match tokio::time::timeout(budget, call).await {
            Ok(r) => r,
            Err(_) => Err(CarrierError::Unreachable(format!("no answer within {} ms", budget.as_millis()))),
        };
        let done = match outcome {
            Ok((l, _)) if l.doc.body.len() > LABEL_BYTES_MAX => cmd::LabelFailed {
                id: c.id,
                error: format!("the label is larger than {LABEL_BYTES_MAX} bytes"),
                permanent: true,
            },
            Ok((l, found)) => {
                store.execute(cmd::LabelStored { id: c.id, tracking: l.tracking, label: l.doc, found }).await?;
                stored += 1;
                continue;
            }
            Err(e) => {
                tracing::info!(consignment = %c.id, error = %e, attempts = c.label_attempts, "label not bought yet");
                cmd::LabelFailed { id: c.id, error: e.to_string(), permanent: matches!(e, CarrierError::Rejected(_)) }
            }
        };
        store.execute(done).await?;
    }
    Ok(stored)
}

/// One pass over the voids due; answers how many labels it voided.
async fn void_pass<C: Carrier>(store: &Store, carrier: &C, name: &str, budget: Duration) -> Result<usize, StoreError> {
    let due = due(store, ConsignmentState::VoidPending, name)?;
    let mut voided = 0;
    for id in due {
        let outcome = match tokio::time::timeout(budget, carrier.void_label(&id)).await {
            Ok(r) => r,
            Err(_) => Err(CarrierError::Unreachable(format!("no answer within {} ms", budget.as_millis()))),
        };
        match outcome {
            Ok(()) => {
                store.execute(cmd::VoidDone { id }).await?;
                voided += 1;
            }
            Err(e) => {
                tracing::info!(consignment = %id, error = %e, "label not voided yet");
                let permanent = matches!(e, CarrierError::Rejected(_));
                store.execute(cmd::VoidFailed { id, error: e.to_string(), permanent }).await?;
            }
        }
    }
    Ok(voided)
}
