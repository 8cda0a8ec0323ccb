//! The money tables in `intake.redb` and the helpers that read and write them.

use super::*;

/// Order id → [`Payment`] (JSON).
pub(crate) const PAYMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("payments");
/// Provider idempotency key → [`Attempt`] (JSON): authorizations asked for orders not committed yet.
pub(crate) const ATTEMPTS: TableDefinition<&str, &[u8]> = TableDefinition::new("payment_attempts");
/// Invoice number → [`Invoice`] (JSON).
pub(super) const INVOICES: TableDefinition<&str, &[u8]> = TableDefinition::new("invoices");
/// (issued at ms, number) → (): invoices by date.
pub(super) const INVOICES_BY_TIME: TableDefinition<(u64, &str), ()> = TableDefinition::new("invoices_by_time");
/// Credit note number → [`CreditNote`] (JSON).
pub(super) const CREDIT_NOTES: TableDefinition<&str, &[u8]> = TableDefinition::new("credit_notes");
/// (issued at ms, number) → ().
pub(super) const CREDIT_NOTES_BY_TIME: TableDefinition<(u64, &str), ()> = TableDefinition::new("credit_notes_by_time");
/// Fulfillment id → the invoice number of its shipment (empty: nothing billable shipped): once per shipment.
pub(super) const BILLED: TableDefinition<&str, &str> = TableDefinition::new("shipments_billed");
/// Orders whose payment needs service's action (`payment_action_required`).
pub(super) const ACTION: TableDefinition<&str, ()> = TableDefinition::new("payments_action_required");
/// `<order>\u{1f}<Idempotency-Key>` → [`RecordedKey`] (JSON): recorded payments by their key (at most
/// [`RECORDED_MAX`] per order: refusals store none).
pub(super) const RECORDED_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("payments_recorded_keys");
/// Order id → when it was noted: orders a change may have made final (a cancel, a line cancel, a re-route),
/// written in that change's own transaction ([`note_settle_due`]) and removed by [`Money::settle_final`] in the
/// transaction that queues the void or release (or finds it queued already). What a crash leaves here between
/// the change and the settlement, a start settles ([`crate::orders::recover`]). Holds open work only: an entry
/// leaves when its order settles.
pub(super) const SETTLE_DUE: TableDefinition<&str, u64> = TableDefinition::new("payments_settle_due");
/// Counters: invoice and credit note numbers per series, outbox row ids.
pub(super) const MONEY_META: TableDefinition<&str, u64> = TableDefinition::new("money_meta");

/// An authorization asked at intake for an order not committed yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Attempt {
    pub(super) provider: String,
    pub(super) token: String,
    pub(super) amount_minor: u64,
    pub(super) currency: Currency,
    pub(super) at_ms: u64,
}

pub(super) fn storage_enc(what: &'static str, e: serde_json::Error) -> MoneyError {
    MoneyError::Storage(Arc::new(StorageError::encode(what, e)))
}

pub(crate) fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, MoneyError> {
    serde_json::to_vec(v).map_err(|e| storage_enc("a money record", e))
}

pub(crate) fn dec<T: for<'de> Deserialize<'de>>(table: &'static str, b: &[u8]) -> Result<T, MoneyError> {
    serde_json::from_slice(b).map_err(|e| MoneyError::Corrupt { table, detail: e.to_string() })
}

pub(crate) fn get_json<T: for<'de> Deserialize<'de>>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    table: &'static str,
    key: &str,
) -> Result<Option<T>, MoneyError> {
    match t.get(key)? {
        Some(v) => Ok(Some(dec(table, v.value())?)),
        None => Ok(None),
    }
}

/// Creates the money tables (at the intake's open).
pub fn create_tables(db: &Database) -> Result<(), MoneyError> {
    let w = db.begin_write()?;
    w.open_table(PAYMENTS)?;
    w.open_table(ATTEMPTS)?;
    w.open_table(INVOICES)?;
    w.open_table(INVOICES_BY_TIME)?;
    w.open_table(CREDIT_NOTES)?;
    w.open_table(CREDIT_NOTES_BY_TIME)?;
    w.open_table(BILLED)?;
    w.open_table(ACTION)?;
    w.open_table(MONEY_META)?;
    w.open_table(SETTLE_DUE)?;
    w.open_table(RECORDED_KEYS)?;
    w.open_table(outbox::OUTBOX)?;
    w.open_table(outbox::OUTBOX_OPEN)?;
    w.commit()?;
    Ok(())
}

/// Notes, in the transaction of a change that may have made `order` final (a cancel, a line cancel, a
/// re-route), that its payment is to be settled: if the hub dies before [`Money::settle_final`] commits, a
/// start finds the note and settles it. Orders without a payment are not noted.
pub(crate) fn note_settle_due(w: &redb::WriteTransaction, order: &str, now_ms: u64) -> Result<(), MoneyError> {
    if w.open_table(PAYMENTS)?.get(order)?.is_some() {
        w.open_table(SETTLE_DUE)?.insert(order, now_ms)?;
    }
    Ok(())
}

/// Intake format 2 ([`crate::intake::INTAKE_FORMAT`]): payments written before releases were recorded have
/// `released_minor` 0 on authorizations already closed (voided at a cancel, expired, or given up after one
/// capture), so `authorized = captured + released + held` would not add up. Closing an authorization has
/// always released its uncaptured rest, so each such authorization gets `amount − captured`, and the payment
/// their sum, as [`Payment::close_auth`] records it today. A record that does not decode is left as it is
/// (the totals report it; the migration does not guess). Runs once, in the migration's transaction.
pub(crate) fn migrate_released(w: &redb::WriteTransaction) -> Result<(), redb::Error> {
    let mut t = w.open_table(PAYMENTS)?;
    let mut fixed = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        let Ok(mut p) = serde_json::from_slice::<Payment>(v.value()) else {
            tracing::warn!(order = k.value(), "migration: a payment record does not decode; left as it is");
            continue;
        };
        let mut changed = false;
        for a in p.authorizations.iter_mut().filter(|a| a.closed && a.released_minor == 0) {
            a.released_minor = a.amount_minor.saturating_sub(a.captured_minor);
            changed |= a.released_minor > 0;
        }
        if changed {
            p.released_minor = p.authorizations.iter().map(|a| a.released_minor).sum();
            if let Ok(bytes) = enc(&p) {
                fixed.push((k.value().to_owned(), bytes));
            }
        }
    }
    for (k, bytes) in &fixed {
        t.insert(k.as_str(), bytes.as_slice())?;
    }
    tracing::info!(payments = fixed.len(), "migration: released amounts recorded");
    Ok(())
}

/// The tables a new order's payment is written to, open in the order's own write transaction: the intake's
/// writer opens them once for its whole batch (as it does the order's tables), [`Money::record_payment`]
/// for one order.
pub(crate) struct NewPayments<'t> {
    payments: redb::Table<'t, &'static str, &'static [u8]>,
    attempts: redb::Table<'t, &'static str, &'static [u8]>,
}

impl<'t> NewPayments<'t> {
    /// Opens the payment tables in `w`.
    pub(crate) fn open(w: &'t redb::WriteTransaction) -> Result<NewPayments<'t>, MoneyError> {
        Ok(NewPayments { payments: w.open_table(PAYMENTS)?, attempts: w.open_table(ATTEMPTS)? })
    }

    /// Writes the payment of new order `order` and forgets its authorization attempt `key`: from now on the
    /// order owns the authorization. Returns the `payment.authorized` event of a card payment, for the
    /// caller to append in the same transaction.
    pub(crate) fn write(
        &mut self,
        order: &str,
        mut p: Payment,
        key: Option<&str>,
    ) -> Result<Option<crate::events::EventDraft>, MoneyError> {
        p.order = order.to_owned();
        self.payments.insert(order, enc(&p)?.as_slice())?;
        if let Some(k) = key {
            self.attempts.remove(k)?;
        }
        if p.method == Method::Card {
            return Ok(payment_draft(crate::events::PAYMENT_AUTHORIZED, &p, p.authorized_minor(), None, None));
        }
        Ok(None)
    }
}

/// Appends a `payment.*` event about `p` in `w`, the transaction of the change it reports: `amount_minor`
/// moved, with the document (invoice or credit note) it moved for and, for a failure, why.
pub(crate) fn payment_event(
    w: &redb::WriteTransaction,
    kind: &'static str,
    p: &Payment,
    amount_minor: u64,
    document: Option<&str>,
    reason: Option<&str>,
) -> Result<(), MoneyError> {
    if let Some(draft) = payment_draft(kind, p, amount_minor, document, reason) {
        crate::events::append(w, draft).map_err(|e| MoneyError::Storage(Arc::new(e)))?;
    }
    Ok(())
}

/// The `payment.*` event [`payment_event`] appends; none for a payment whose order id does not parse.
fn payment_draft(
    kind: &'static str,
    p: &Payment,
    amount_minor: u64,
    document: Option<&str>,
    reason: Option<&str>,
) -> Option<crate::events::EventDraft> {
    let id = oms_protocol::domain::OrderId::parse(&p.order).ok()?;
    let data = serde_json::json!({
        "amount_minor": amount_minor, "currency": p.currency, "method": p.method, "provider": p.provider,
        "document": document, "reason": reason,
        "authorized_minor": p.authorized_minor(), "captured_minor": p.captured_minor, "refunded_minor": p.refunded_minor,
    });
    Some(crate::events::EventDraft::new(kind, oms_service::now_ms()).order(&id, &p.channel).data(data))
}
