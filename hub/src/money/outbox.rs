//! The payment outbox: captures, refunds, voids and releases as rows in `intake.redb`, each committed **before** its
//! provider call and settled after it.
//!
//! A row is `pending` until its call answers: `done` (the amounts move on the payment in the same
//! transaction as the row's new state), `indeterminate` (the call timed out: it may or may not have taken
//! effect), or `action_required` (declined, or failed `retries_max` times; the order shows
//! `payment_action_required` and is listed by `GET /v1/payments?status=action_required`).
//!
//! - The idempotency key of a call is the row's id and the authorization it is made on
//!   (`cap-<row>-a<n>`, `ref-<row>-a<n>`, `void-<row>-a<n>`, `rel-<row>-a<n>`), and the authorization a row
//!   uses is committed before the first call on it. So a hub killed between a call and its commit calls again
//!   with the same key after its restart and the provider answers the first call's result: captured once.
//! - An `indeterminate` row is settled with `retrieve`: the rows of one order are handled strictly one after
//!   another (a later row waits while an earlier one is open), so the provider's captured (refunded) total on
//!   the authorization either includes this row's amount over what the hub has settled (done) or equals it
//!   (the call did nothing: called again, same key).
//! - A capture whose authorization expired ([`super::PaymentsConfig::authorization_validity_ms`], or the
//!   provider says so) or does not cover it re-authorizes with the order's card token, for what is left of
//!   the order (`reauth-<row>-<n>`); a decline there, or an order without a token, needs service's action.
//! - At a provider whose authorizations take one capture ([`super::provider::PaymentProvider::captures_once`],
//!   Stripe's PaymentIntents) the authorization is closed in the transaction that settles its capture, so the
//!   next shipment's capture re-authorizes what is left (see [`super::stripe`]).
//! - Rows are retried with exponential backoff (`retry_backoff_ms`, doubled per attempt, at most 64×).
//!
//! - A release ([`Kind::Release`], queued by [`Money::settle_final`] once an order is final) comes after every
//!   capture row of its order, so by its turn the captures settled: it voids the uncaptured rest of each open
//!   authorization, one per round (none when captured in full), and every closing of an authorization books
//!   that rest as released ([`super::Payment::close_auth`]).
//!
//! The pass also voids authorization attempts whose order never committed (older than `attempt_grace_ms`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use oms_service::{lock, now_ms};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::provider::ProviderError;
use super::{
    ACTION, ATTEMPTS, Attempt, Authorization, INVOICES, Invoice, MONEY_META, Money, MoneyError, PAYMENTS, Payment, dec,
    enc, get_json,
};
use crate::server::Hub;

/// Row id → [`Row`] (JSON).
pub(crate) const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("payment_outbox");
/// `<order>\u{1f}<row id, 20 digits>` → (): rows not settled (pending or indeterminate), by order then age.
pub(crate) const OUTBOX_OPEN: TableDefinition<&str, ()> = TableDefinition::new("payment_outbox_open");
const SEQ_ROW: &str = "seq.outbox";

/// What a row does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Capture an invoice's total.
    Capture,
    /// Refund a credit note's total.
    Refund,
    /// Void every open authorization.
    Void,
    /// Release what an order that reached its final state will never capture: every open authorization's
    /// uncaptured rest, one authorization after another (a void at the provider; at Stripe, the cancel of
    /// the PaymentIntent). Its `amount_minor` is what it released so far.
    Release,
}

impl Kind {
    /// The timeline's word for a call of this kind that timed out (settled later by `retrieve`).
    pub fn indeterminate(self) -> &'static str {
        match self {
            Kind::Capture => "capture_indeterminate",
            Kind::Refund => "refund_indeterminate",
            Kind::Void => "void_indeterminate",
            Kind::Release => "release_indeterminate",
        }
    }
}

/// Where a row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowStatus {
    /// Not called yet, or to be called again.
    Pending,
    /// The call timed out; `retrieve` settles it.
    Indeterminate,
    /// Done.
    Done,
    /// Service must act.
    ActionRequired,
}

/// One row of the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// Id (also the idempotency key's stem).
    pub id: u64,
    /// The hub order.
    pub order: String,
    /// What it does.
    pub kind: Kind,
    /// Amount, minor units (0 for a void).
    pub amount_minor: u64,
    /// The invoice (capture) or credit note (refund).
    pub document: Option<String>,
    /// The authorization it is made on (index into the payment's), fixed before the first call on it.
    pub auth: Option<usize>,
    /// Where it is.
    pub status: RowStatus,
    /// Calls that failed.
    pub attempts: u32,
    /// Not before this, ms.
    pub next_at_ms: u64,
    /// When it was written.
    pub created_at_ms: u64,
    /// When it settled.
    pub settled_at_ms: Option<u64>,
    /// The last failure.
    pub last_error: Option<String>,
}

fn open_key(order: &str, id: u64) -> String {
    format!("{order}\u{1f}{id:020}")
}

/// Writes a new pending row in `w` and returns its id.
pub(crate) fn push(
    w: &redb::WriteTransaction,
    order: &str,
    kind: Kind,
    amount_minor: u64,
    document: Option<&str>,
    auth: Option<usize>,
    now_ms: u64,
) -> Result<u64, MoneyError> {
    let id = {
        let mut meta = w.open_table(MONEY_META)?;
        let id = meta.get(SEQ_ROW)?.map_or(0, |v| v.value()) + 1;
        meta.insert(SEQ_ROW, id)?;
        id
    };
    let row = Row {
        id,
        order: order.to_owned(),
        kind,
        amount_minor,
        document: document.map(str::to_owned),
        auth,
        status: RowStatus::Pending,
        attempts: 0,
        next_at_ms: 0,
        created_at_ms: now_ms,
        settled_at_ms: None,
        last_error: None,
    };
    w.open_table(OUTBOX)?.insert(id, enc(&row)?.as_slice())?;
    w.open_table(OUTBOX_OPEN)?.insert(open_key(order, id).as_str(), ())?;
    Ok(id)
}

/// Orders with rows not settled.
pub(crate) fn open_orders(r: &redb::ReadTransaction) -> Result<BTreeSet<String>, MoneyError> {
    let mut out = BTreeSet::new();
    for item in r.open_table(OUTBOX_OPEN)?.range::<&str>(..)? {
        let (k, _) = item?;
        if let Some((order, _)) = k.value().split_once('\u{1f}') {
            out.insert(order.to_owned());
        }
    }
    Ok(out)
}

/// Whether a provider's refusal says the authorization is closed (expired, voided, captured once).
fn closed_reason(r: &str) -> bool {
    matches!(r, "authorization_expired" | "authorization_voided" | "authorization_closed")
}

/// One row's outcome, to commit.
enum Outcome {
    /// Settled: the amount moved.
    Done,
    /// Timed out.
    Indeterminate(String),
    /// Failed; retry later (or give up past the retries).
    Retry(String),
    /// Service must act.
    Action(String),
    /// The authorization is closed (expired or voided): choose another next time.
    AuthClosed(String),
    /// The call did nothing: call again now (after a retrieve that found nothing).
    Again,
}

impl Money {
    /// One pass of the outbox: the first open row of each order that is due, at most `outbox_batch_max`,
    /// each called and settled; then the sweep of stale authorization attempts. Returns the rows handled.
    pub fn outbox_pass(&self, db: &Database, now: u64) -> Result<usize, MoneyError> {
        let due: Vec<Row> = {
            let r = db.begin_read()?;
            let rows = r.open_table(OUTBOX)?;
            let mut seen = BTreeSet::new();
            let mut due = Vec::new();
            for item in r.open_table(OUTBOX_OPEN)?.range::<&str>(..)? {
                let (k, _) = item?;
                let Some((order, id)) = k.value().split_once('\u{1f}') else { continue };
                if !seen.insert(order.to_owned()) {
                    continue;
                }
                let Ok(id) = id.parse::<u64>() else { continue };
                let Some(v) = rows.get(id)? else { continue };
                let row: Row = dec("payment_outbox", v.value())?;
                if row.next_at_ms <= now {
                    due.push(row);
                }
                if due.len() >= self.cfg.outbox_batch_max {
                    break;
                }
            }
            due
        };
        let n = due.len();
        for row in due {
            self.handle(db, row)?;
        }
        self.sweep_attempts(db, now)?;
        Ok(n)
    }

    /// Calls and settles one row (at most a few calls: a retrieve, a re-authorization, the call itself).
    fn handle(&self, db: &Database, mut row: Row) -> Result<(), MoneyError> {
        for _ in 0..4 {
            let Some(p) = self.payment(db, &row.order)? else {
                return self.finish(db, &row, Outcome::Action("the order has no payment".into()));
            };
            let Some(provider) = self.provider(&p.provider).cloned() else {
                return self.finish(db, &row, Outcome::Action(format!("provider {:?} is not configured", p.provider)));
            };
            let now = now_ms();
            // The authorization this row is made on, fixed (committed) before the first call on it.
            let auth = match row.auth {
                Some(i) if p.authorizations.get(i).is_some_and(|a| !a.closed) || row.kind == Kind::Void => i,
                _ => match self.choose_auth(&p, &row, now) {
                    Some(i) => {
                        row.auth = Some(i);
                        self.save_row(db, &row)?;
                        i
                    }
                    None if row.kind == Kind::Capture => match self.reauthorize(db, &p, &row, now)? {
                        Some(i) => {
                            row.auth = Some(i);
                            self.save_row(db, &row)?;
                            continue;
                        }
                        None => return Ok(()),
                    },
                    None if matches!(row.kind, Kind::Void | Kind::Release) => {
                        // Nothing open to void or release.
                        return self.finish(db, &row, Outcome::Done);
                    }
                    None => {
                        return self.finish(db, &row, Outcome::Action("no authorization covers the refund".into()));
                    }
                },
            };
            let Some(a) = p.authorizations.get(auth).cloned() else {
                return self.finish(db, &row, Outcome::Action("unknown authorization".into()));
            };
            let key = format!(
                "{}-{}-a{auth}",
                match row.kind {
                    Kind::Capture => "cap",
                    Kind::Refund => "ref",
                    Kind::Void => "void",
                    Kind::Release => "rel",
                },
                row.id
            );
            let outcome = if row.kind == Kind::Release && a.captured_minor >= a.amount_minor {
                // Captured in full: nothing held to release, no call.
                Outcome::Done
            } else if row.status == RowStatus::Indeterminate {
                match provider.retrieve(&a.reference) {
                    // A void or release is done once the authorization is closed; otherwise it did nothing.
                    Ok(s) if matches!(row.kind, Kind::Void | Kind::Release) => {
                        if s.closed {
                            Outcome::Done
                        } else {
                            Outcome::Again
                        }
                    }
                    Ok(s) => {
                        let (theirs, ours) = match row.kind {
                            Kind::Refund => (s.refunded_minor, a.refunded_minor),
                            _ => (s.captured_minor, a.captured_minor),
                        };
                        if theirs >= ours.saturating_add(row.amount_minor) {
                            Outcome::Done
                        } else if theirs == ours {
                            Outcome::Again
                        } else {
                            Outcome::Action(format!(
                                "the provider holds {theirs}, the hub expected {ours} or {}",
                                ours + row.amount_minor
                            ))
                        }
                    }
                    Err(e) => Outcome::Indeterminate(e.to_string()),
                }
            } else {
                let answer = match row.kind {
                    Kind::Capture => provider.capture(&a.reference, row.amount_minor, &key),
                    Kind::Refund => provider.refund(&a.reference, row.amount_minor, &key),
                    Kind::Void | Kind::Release => provider.void(&a.reference, &key),
                };
                match answer {
                    Ok(_) => Outcome::Done,
                    Err(ProviderError::Timeout) => Outcome::Indeterminate("timeout".into()),
                    Err(e @ (ProviderError::Unavailable(_) | ProviderError::Busy)) => Outcome::Retry(e.to_string()),
                    Err(ProviderError::Declined(r)) if row.kind == Kind::Capture && closed_reason(&r) => {
                        Outcome::AuthClosed(r)
                    }
                    // Closed at the provider already: nothing is held there any more.
                    Err(ProviderError::Declined(r)) if row.kind == Kind::Release && closed_reason(&r) => Outcome::Done,
                    Err(ProviderError::Declined(r)) => Outcome::Action(format!("declined: {r}")),
                }
            };
            match outcome {
                Outcome::Again => {
                    row.status = RowStatus::Pending;
                    self.save_row(db, &row)?;
                }
                Outcome::AuthClosed(r) => {
                    self.close_auth(db, &row.order, auth, &r)?;
                    row.auth = None;
                    self.save_row(db, &row)?;
                }
                o => return self.finish(db, &row, o),
            }
            // A void goes over every open authorization, one per round.
            if row.kind == Kind::Void {
                row.auth = None;
            }
        }
        Ok(())
    }

    /// The authorization a row can be made on: for a capture, the first open one not expired that covers
    /// it; for a refund, the first with that much captured and not refunded; for a void, the first open one.
    fn choose_auth(&self, p: &Payment, row: &Row, now: u64) -> Option<usize> {
        p.authorizations.iter().position(|a| match row.kind {
            Kind::Capture => {
                !a.closed && now < a.expires_at_ms && a.amount_minor - a.captured_minor >= row.amount_minor
            }
            Kind::Refund => a.captured_minor - a.refunded_minor >= row.amount_minor,
            Kind::Void | Kind::Release => !a.closed,
        })
    }

    /// Re-authorizes what is left of the order for a capture no open authorization covers. Returns the new
    /// authorization's index, or none when the row now needs action or a retry (already recorded).
    fn reauthorize(&self, db: &Database, p: &Payment, row: &Row, now: u64) -> Result<Option<usize>, MoneyError> {
        let (Some(token), Some(provider)) = (p.token.as_deref(), self.provider(&p.provider)) else {
            self.finish(
                db,
                row,
                Outcome::Action("the authorization expired and there is no card to re-authorize".into()),
            )?;
            return Ok(None);
        };
        let n = p.authorizations.len();
        let left = p.total_minor.saturating_sub(p.captured_minor).max(row.amount_minor);
        let key = format!("reauth-{}-{n}", row.id);
        match provider.authorize(&key, token, left, p.currency.as_str()) {
            Ok(a) => {
                let _g = lock(&self.write);
                let w = db.begin_write()?;
                let Some(mut p) = get_json::<Payment>(&w.open_table(PAYMENTS)?, "payments", &row.order)? else {
                    return Ok(None);
                };
                // Expired authorizations are closed for captures from now on.
                let expired: Vec<usize> =
                    (0..p.authorizations.len()).filter(|&i| now >= p.authorizations[i].expires_at_ms).collect();
                for i in expired {
                    p.close_auth(i);
                }
                let i = match p.authorizations.iter().position(|x| x.reference == a.reference) {
                    Some(i) => i,
                    None => {
                        let expires = now.saturating_add(self.cfg.authorization_validity_ms);
                        p.authorizations.push(Authorization::new(a.reference, a.amount_minor, now, expires));
                        p.event(now, "reauthorized", left, None);
                        p.authorizations.len() - 1
                    }
                };
                w.open_table(PAYMENTS)?.insert(row.order.as_str(), enc(&p)?.as_slice())?;
                w.commit()?;
                Ok(Some(i))
            }
            Err(ProviderError::Declined(r)) => {
                self.finish(db, row, Outcome::Action(format!("re-authorization declined: {r}")))?;
                Ok(None)
            }
            Err(e) => {
                self.finish(db, row, Outcome::Retry(format!("re-authorization: {e}")))?;
                Ok(None)
            }
        }
    }

    fn close_auth(&self, db: &Database, order: &str, auth: usize, why: &str) -> Result<(), MoneyError> {
        let _g = lock(&self.write);
        let w = db.begin_write()?;
        if let Some(mut p) = get_json::<Payment>(&w.open_table(PAYMENTS)?, "payments", order)? {
            p.close_auth(auth);
            tracing::info!(order, auth, why, "authorization closed");
            w.open_table(PAYMENTS)?.insert(order, enc(&p)?.as_slice())?;
        }
        w.commit()?;
        Ok(())
    }

    fn save_row(&self, db: &Database, row: &Row) -> Result<(), MoneyError> {
        let _g = lock(&self.write);
        let w = db.begin_write()?;
        w.open_table(OUTBOX)?.insert(row.id, enc(row)?.as_slice())?;
        w.commit()?;
        Ok(())
    }

    /// Commits a row's outcome, with the amounts it moved on the payment and its document.
    fn finish(&self, db: &Database, row: &Row, outcome: Outcome) -> Result<(), MoneyError> {
        let now = now_ms();
        let _g = lock(&self.write);
        let w = db.begin_write()?;
        let mut row = row.clone();
        let Some(mut p) = get_json::<Payment>(&w.open_table(PAYMENTS)?, "payments", &row.order)? else {
            return Ok(());
        };
        let backoff = |attempts: u32| self.cfg.retry_backoff_ms.saturating_mul(1u64 << attempts.min(6));
        let mut more = false;
        match outcome {
            Outcome::Done => {
                row.status = RowStatus::Done;
                row.settled_at_ms = Some(now);
                let auth = row.auth.filter(|&i| i < p.authorizations.len());
                let a = auth.and_then(|i| p.authorizations.get_mut(i));
                match row.kind {
                    Kind::Capture => {
                        let once = self.provider(&p.provider).is_some_and(|x| x.captures_once());
                        if let Some(a) = a {
                            a.captured_minor += row.amount_minor;
                        }
                        // One capture per authorization at this provider: the rest is released.
                        if let Some(i) = auth.filter(|_| once) {
                            p.close_auth(i);
                        }
                        p.captured_minor += row.amount_minor;
                        p.event(now, "captured", row.amount_minor, row.document.as_deref());
                        if let Some(n) = &row.document {
                            let mut invoices = w.open_table(INVOICES)?;
                            if let Some(mut inv) = get_json::<Invoice>(&invoices, "invoices", n)? {
                                inv.captured = true;
                                invoices.insert(n.as_str(), enc(&inv)?.as_slice())?;
                            }
                        }
                    }
                    Kind::Refund => {
                        if let Some(a) = a {
                            a.refunded_minor += row.amount_minor;
                        }
                        p.refunded_minor += row.amount_minor;
                        p.event(now, "refunded", row.amount_minor, row.document.as_deref());
                    }
                    Kind::Void => {
                        let released: u64 = (0..p.authorizations.len()).map(|i| p.close_auth(i)).sum();
                        p.voided = true;
                        p.event(now, "voided", released, None);
                    }
                    Kind::Release => {
                        row.amount_minor += auth.map_or(0, |i| p.close_auth(i));
                        if p.authorizations.iter().any(|a| !a.closed) {
                            // The next open authorization, in the next round.
                            row.status = RowStatus::Pending;
                            row.settled_at_ms = None;
                            row.auth = None;
                            more = true;
                        } else if row.amount_minor > 0 {
                            p.event(now, "released", row.amount_minor, None);
                        }
                    }
                }
            }
            Outcome::Indeterminate(e) => {
                row.status = RowStatus::Indeterminate;
                row.attempts += 1;
                row.next_at_ms = now + backoff(row.attempts);
                if row.attempts == 1 {
                    p.event(now, row.kind.indeterminate(), row.amount_minor, row.document.as_deref());
                }
                row.last_error = Some(e);
            }
            Outcome::Retry(e) if row.attempts < self.cfg.retries_max => {
                row.attempts += 1;
                row.next_at_ms = now + backoff(row.attempts);
                row.last_error = Some(e);
            }
            Outcome::Retry(e) | Outcome::Action(e) => {
                row.status = RowStatus::ActionRequired;
                row.settled_at_ms = Some(now);
                p.event(now, "action_required", row.amount_minor, row.document.as_deref());
                p.action_required = Some(e.clone());
                row.last_error = Some(e);
                w.open_table(ACTION)?.insert(row.order.as_str(), ())?;
            }
            Outcome::Again | Outcome::AuthClosed(_) => {}
        }
        if matches!(row.status, RowStatus::Done | RowStatus::ActionRequired) {
            w.open_table(OUTBOX_OPEN)?.remove(open_key(&row.order, row.id).as_str())?;
            // `payment.*` for the feed and the webhooks, in the transaction that settles the row.
            let kind = match (row.status, row.kind) {
                (RowStatus::ActionRequired, _) => Some(crate::events::PAYMENT_FAILED),
                (_, Kind::Capture) => Some(crate::events::PAYMENT_CAPTURED),
                (_, Kind::Refund) => Some(crate::events::PAYMENT_REFUNDED),
                (_, Kind::Void) => Some(crate::events::PAYMENT_VOIDED),
                // A release that found nothing held (everything captured) reports nothing.
                (_, Kind::Release) if row.amount_minor == 0 => None,
                (_, Kind::Release) => Some(crate::events::PAYMENT_RELEASED),
            };
            if let Some(kind) = kind {
                super::payment_event(
                    &w,
                    kind,
                    &p,
                    row.amount_minor,
                    row.document.as_deref(),
                    row.last_error.as_deref(),
                )?;
            }
        }
        w.open_table(OUTBOX)?.insert(row.id, enc(&row)?.as_slice())?;
        w.open_table(PAYMENTS)?.insert(row.order.as_str(), enc(&p)?.as_slice())?;
        w.commit()?;
        if more {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Voids authorizations asked at intake whose order never committed (older than `attempt_grace_ms`):
    /// the same key answers the same authorization, which is then voided.
    fn sweep_attempts(&self, db: &Database, now: u64) -> Result<(), MoneyError> {
        let stale: Vec<(String, Attempt)> = {
            let r = db.begin_read()?;
            let mut out = Vec::new();
            for item in r.open_table(ATTEMPTS)?.range::<&str>(..)?.take(self.cfg.outbox_batch_max) {
                let (k, v) = item?;
                let a: Attempt = dec("payment_attempts", v.value())?;
                if now.saturating_sub(a.at_ms) >= self.cfg.attempt_grace_ms {
                    out.push((k.value().to_owned(), a));
                }
            }
            out
        };
        for (key, a) in stale {
            let Some(provider) = self.provider(&a.provider) else { continue };
            let gone = match provider.authorize(&key, &a.token, a.amount_minor, a.currency.as_str()) {
                Ok(ans) => provider.void(&ans.reference, &format!("void-{key}")).is_ok(),
                Err(ProviderError::Declined(_)) => true,
                Err(_) => false,
            };
            if gone {
                let _g = lock(&self.write);
                let w = db.begin_write()?;
                w.open_table(ATTEMPTS)?.remove(key.as_str())?;
                w.commit()?;
            }
        }
        Ok(())
    }

    /// Outbox rows of an order, oldest first (tests, and service's view of a payment).
    pub fn rows(&self, db: &Database, order: &str, limit: usize) -> Result<Vec<Row>, MoneyError> {
        let r = db.begin_read()?;
        let mut out = Vec::new();
        for item in r.open_table(OUTBOX)?.range::<u64>(..)? {
            let (_, v) = item?;
            let row: Row = dec("payment_outbox", v.value())?;
            if row.order == order {
                out.push(row);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// Least time between two passes when nothing wakes the outbox, ms.
pub const OUTBOX_TICK_MS: u64 = 250;

/// Runs the outbox until the runtime stops: a pass whenever a row is written, and every [`OUTBOX_TICK_MS`].
pub async fn run(hub: Arc<Hub>) {
    loop {
        tokio::select! {
            () = hub.money.wake.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(OUTBOX_TICK_MS)) => {}
        }
        let h = hub.clone();
        match tokio::task::spawn_blocking(move || h.money.outbox_pass(h.intake.db(), now_ms())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "payment outbox pass failed; retrying"),
            Err(e) => tracing::error!(error = %e, "payment outbox pass panicked; continuing"),
        }
    }
}
