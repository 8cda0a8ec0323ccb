//! Money at the hub: payment authorization at intake, capture per shipment through a durable outbox,
//! invoices and credit notes, refunds. Nodes never call a provider; everything here runs at the hub, in
//! `intake.redb` beside the orders.
//!
//! **Authorization at intake** ([`Money::authorize`]): a card order is authorized for its gross total before
//! the `201`. The provider's idempotency key is derived from the order's channel-scoped idempotency key, its
//! body and the card token, so a retry after a crash or a timeout gets the same authorization, never a second
//! one. An attempt row (table `payment_attempts`) is committed before the call; the order's own transaction
//! removes it. An attempt whose order never committed (the intake refused it, or the hub died) is voided: at
//! once when the intake refuses, by the outbox's sweep after `attempt_grace_ms` otherwise. The provider is
//! never called under the intake's lock or inside its transaction.
//!
//! **Capture per shipment** ([`Money::bill_shipment`], called by the watcher when it sees a fulfillment
//! shipped): in one transaction, exactly once per fulfillment (table `shipments_billed`), the invoice for
//! exactly the shipped lines, its number (gap-free per series: the counter moves in the same transaction,
//! and every money write holds [`Money`]'s lock), and a capture row in the outbox for the invoice's total.
//! The outbox ([`outbox`]) then calls the provider with a key derived from the row (`cap-<row>-a<auth>`),
//! records the answer, and settles timeouts with `retrieve`. See [`outbox`] for the states.
//!
//! **Refunds** ([`Money::refund`], the function the returns code calls too): a credit note referencing its
//! invoice, for lines or an amount, with a reason, and a refund row in the outbox, in one transaction.
//!
//! Amounts are integer minor units (`u64` for money moved, `i64` for document lines). Tax: [`tax`].

mod documents;
pub mod http;
pub mod outbox;
pub mod provider;
pub mod render;
pub mod stripe;
pub mod tax;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use oms_protocol::domain::{Channel, Currency, OrderDraft, TEXT_BYTES_MAX};
use oms_service::audit::{self, AUDIT, Actor};
use oms_service::auth::keys::{hex, token_hash};
use oms_service::lock;
use oms_service::storage::StorageError;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use provider::{Bounded, ManualProvider, PaymentProvider, ProviderError, TestProvider, TestProviderConfig};
use tax::{Prices, TaxConfig};

pub use documents::ADJUSTMENT;

/// Order id → [`Payment`] (JSON).
pub(crate) const PAYMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("payments");
/// Provider idempotency key → [`Attempt`] (JSON): authorizations asked for orders not committed yet.
pub(crate) const ATTEMPTS: TableDefinition<&str, &[u8]> = TableDefinition::new("payment_attempts");
/// Invoice number → [`Invoice`] (JSON).
const INVOICES: TableDefinition<&str, &[u8]> = TableDefinition::new("invoices");
/// (issued at ms, number) → (): invoices by date.
const INVOICES_BY_TIME: TableDefinition<(u64, &str), ()> = TableDefinition::new("invoices_by_time");
/// Credit note number → [`CreditNote`] (JSON).
const CREDIT_NOTES: TableDefinition<&str, &[u8]> = TableDefinition::new("credit_notes");
/// (issued at ms, number) → ().
const CREDIT_NOTES_BY_TIME: TableDefinition<(u64, &str), ()> = TableDefinition::new("credit_notes_by_time");
/// Fulfillment id → the invoice number of its shipment (empty: nothing billable shipped): once per shipment.
const BILLED: TableDefinition<&str, &str> = TableDefinition::new("shipments_billed");
/// Orders whose payment needs service's action (`payment_action_required`).
const ACTION: TableDefinition<&str, ()> = TableDefinition::new("payments_action_required");
/// `<order>\u{1f}<Idempotency-Key>` → [`RecordedKey`] (JSON): recorded payments by their key (at most
/// [`RECORDED_MAX`] per order: refusals store none).
const RECORDED_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("payments_recorded_keys");
/// Order id → when it was noted: orders a change may have made final (a cancel, a line cancel, a re-route),
/// written in that change's own transaction ([`note_settle_due`]) and removed by [`Money::settle_final`] in the
/// transaction that queues the void or release (or finds it queued already). What a crash leaves here between
/// the change and the settlement, a start settles ([`crate::orders::recover`]). Holds open work only: an entry
/// leaves when its order settles.
const SETTLE_DUE: TableDefinition<&str, u64> = TableDefinition::new("payments_settle_due");
/// Counters: invoice and credit note numbers per series, outbox row ids.
const MONEY_META: TableDefinition<&str, u64> = TableDefinition::new("money_meta");

/// Events kept per payment (the customer's timeline); older ones are dropped, the first kept.
pub const EVENTS_MAX: usize = 64;
/// Documents listed per page.
pub const DOCS_PAGE_MAX: usize = 1_000;
/// Lines of a refund request.
pub const REFUND_LINES_MAX: usize = oms_protocol::domain::ORDER_LINES_MAX;
/// Longest card token, bytes.
pub const TOKEN_BYTES_MAX: usize = 256;
/// The implicit provider of terms and cash-on-delivery orders.
pub const MANUAL: &str = "manual";
/// Manual payments recorded per order ([`Money::record_manual`]); beyond it `409 too_many_payments`.
pub const RECORDED_MAX: usize = 64;
/// Longest reference of a recorded payment (a bank transfer's, a receipt number), bytes.
pub const PAYMENT_REFERENCE_BYTES_MAX: usize = 128;

/// Why a money operation was refused or failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MoneyError {
    /// The provider declined the authorization.
    #[error("payment declined: {0}")]
    Declined(String),
    /// The provider could not be reached or did not answer in time; nothing was reserved.
    #[error("payment provider unavailable: {0}")]
    ProviderUnavailable(String),
    /// The request's `payment` is not usable.
    #[error("{0}")]
    InvalidPayment(String),
    /// A refund request is not usable.
    #[error("{0}")]
    InvalidRefund(String),
    /// No such invoice / credit note / paid order (or not visible to the caller).
    #[error("{what} {id:?} not found")]
    NotFound {
        /// What was looked for.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// The refund is more than what can be refunded.
    #[error("{0}")]
    RefundExceeds(String),
    /// The capture of the invoice has not settled yet.
    #[error("invoice {0} is not captured yet; refund after its capture settles")]
    NotCaptured(String),
    /// A recorded payment would be more than the order owes.
    #[error("{0}")]
    Overpayment(String),
    /// Payments are recorded for terms and cash-on-delivery orders only (a card order is captured).
    #[error("order {0} is paid by card: its money moves through captures, not recorded payments")]
    NotManual(String),
    /// The order has [`RECORDED_MAX`] recorded payments already.
    #[error("order {0} has {RECORDED_MAX} recorded payments already")]
    TooManyPayments(String),
    /// The idempotency key was used for another payment of this order.
    #[error("the Idempotency-Key was used for another payment of order {0}")]
    KeyReused(String),
    /// Storage failed; nothing was written.
    #[error("storage failure, nothing was written: {0}")]
    Storage(#[source] Arc<StorageError>),
    /// A stored record does not decode.
    #[error("corrupt record in {table}: {detail}")]
    Corrupt {
        /// Table.
        table: &'static str,
        /// Why.
        detail: String,
    },
}

oms_service::storage_errors_from_redb!(MoneyError);

impl MoneyError {
    /// The stable code (problem documents, audit rows).
    pub fn code(&self) -> &'static str {
        match self {
            MoneyError::Declined(_) => "payment_declined",
            MoneyError::ProviderUnavailable(_) => "payment_provider_unavailable",
            MoneyError::InvalidPayment(_) => "invalid_payment",
            MoneyError::InvalidRefund(_) => "invalid_refund",
            MoneyError::NotFound { what: "invoice", .. } => "invoice_not_found",
            MoneyError::NotFound { what: "credit note", .. } => "credit_note_not_found",
            MoneyError::NotFound { .. } => "payment_not_found",
            MoneyError::RefundExceeds(_) => "refund_exceeds_invoice",
            MoneyError::NotCaptured(_) => "not_captured",
            MoneyError::Overpayment(_) => "overpayment",
            MoneyError::NotManual(_) => "payment_not_manual",
            MoneyError::TooManyPayments(_) => "too_many_payments",
            MoneyError::KeyReused(_) => "idempotency_key_reused",
            MoneyError::Storage(_) => "storage_unavailable",
            MoneyError::Corrupt { .. } => "corrupt_record",
        }
    }
}

/// How a provider is configured (`[payments.providers.<name>]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProviderConfig {
    /// The deterministic fault-injecting test provider, in process.
    Test(TestProviderConfig),
    /// A Stripe-compatible HTTP API ([`stripe`]).
    Stripe(stripe::StripeConfig),
}

/// `[payments]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaymentsConfig {
    /// Time budget of one provider call, ms.
    pub call_timeout_ms: u64,
    /// Failed attempts of one outbox row before it needs service's action.
    pub retries_max: u32,
    /// Wait before retrying a failed or indeterminate row, ms (doubled per attempt, at most 64×).
    pub retry_backoff_ms: u64,
    /// Provider calls in flight at once, per provider; beyond it a call is refused (`503` at intake).
    pub in_flight_max: usize,
    /// How long an authorization is good for, ms (cards: about 7 days). A capture after it re-authorizes.
    pub authorization_validity_ms: u64,
    /// An authorization attempt whose order did not commit within this is voided, ms.
    pub attempt_grace_ms: u64,
    /// Outbox rows handled per pass.
    pub outbox_batch_max: usize,
    /// Invoice number prefix (a series numbers without gaps).
    pub invoice_series: String,
    /// Credit note number prefix.
    pub credit_note_series: String,
    /// Providers by name (`manual` always exists).
    pub providers: BTreeMap<String, ProviderConfig>,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        PaymentsConfig {
            call_timeout_ms: 10_000,
            retries_max: 8,
            retry_backoff_ms: 500,
            in_flight_max: 64,
            authorization_validity_ms: 7 * 24 * 3_600_000,
            attempt_grace_ms: 600_000,
            outbox_batch_max: 256,
            invoice_series: "INV".into(),
            credit_note_series: "CN".into(),
            providers: BTreeMap::new(),
        }
    }
}

impl PaymentsConfig {
    /// Why the section is unusable, if it is.
    pub fn check(&self) -> Result<(), String> {
        let range = |name: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("[payments] {name} must be {lo} ..= {hi}, not {v}"))
            }
        };
        range("call_timeout_ms", self.call_timeout_ms, 1, 300_000)?;
        range("retries_max", u64::from(self.retries_max), 0, 1_000)?;
        range("retry_backoff_ms", self.retry_backoff_ms, 1, 3_600_000)?;
        range("in_flight_max", self.in_flight_max as u64, 1, 100_000)?;
        range("authorization_validity_ms", self.authorization_validity_ms, 1, 31 * 24 * 3_600_000)?;
        range("attempt_grace_ms", self.attempt_grace_ms, 1_000, 7 * 24 * 3_600_000)?;
        range("outbox_batch_max", self.outbox_batch_max as u64, 1, 10_000)?;
        for (what, s) in [("invoice_series", &self.invoice_series), ("credit_note_series", &self.credit_note_series)] {
            if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(format!("[payments] {what} must be 1 to 16 letters or digits, not {s:?}"));
            }
        }
        if self.invoice_series == self.credit_note_series {
            return Err("[payments] invoice_series and credit_note_series must differ".into());
        }
        if self.providers.contains_key(MANUAL) {
            return Err("[payments] the provider name \"manual\" is reserved".into());
        }
        if self.providers.len() > 64 {
            return Err("[payments] at most 64 providers".into());
        }
        Ok(())
    }
}

/// How an order is paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// A card, authorized at intake, captured per shipment.
    Card,
    /// On invoice, paid later.
    Terms,
    /// Cash on delivery.
    Cod,
}

/// The `payment` of a `POST /v1/orders`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    /// `card`, `terms` or `cod`.
    pub method: Method,
    /// The provider (cards).
    #[serde(default)]
    pub provider: Option<String>,
    /// The provider's payment method token (cards).
    #[serde(default)]
    pub token: Option<String>,
}

/// One authorization of an order (a re-authorization adds one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorization {
    /// The provider's reference.
    pub reference: String,
    /// Authorized, minor units.
    pub amount_minor: u64,
    /// Captured on it (settled).
    pub captured_minor: u64,
    /// Refunded on it (settled).
    pub refunded_minor: u64,
    /// Released: what was not captured when it closed (voided, released at the order's end, expired, or
    /// given up by a provider whose authorizations take one capture). `amount = captured + released` once
    /// closed; 0 while open.
    #[serde(default)]
    pub released_minor: u64,
    /// When.
    pub at_ms: u64,
    /// Good until (the hub's view; [`PaymentsConfig::authorization_validity_ms`]).
    pub expires_at_ms: u64,
    /// Voided or expired: nothing more is captured on it.
    pub closed: bool,
}

/// A priced line of an order, as its payment keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricedLine {
    /// SKU.
    pub sku: String,
    /// Units ordered.
    pub qty: u64,
    /// Price of one unit.
    pub unit_price_minor: i64,
}

/// Something that happened to a payment (the customer's timeline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentEvent {
    /// When.
    pub at_ms: u64,
    /// `authorized`, `invoiced`, `captured`, `credit_noted`, `refunded`, `voided`, `released`, `recorded`,
    /// `reauthorized`, `action_required`, and `<capture|refund|void|release>_indeterminate` (a call timed out;
    /// `retrieve` settles it).
    pub status: String,
    /// Amount, minor units.
    pub amount_minor: u64,
    /// The invoice or credit note, if any.
    pub document: Option<String>,
}

/// The payment of one hub order: what was authorized, captured, invoiced, credited and refunded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// The hub order.
    pub order: String,
    /// Its channel.
    pub channel: Channel,
    /// How it is paid.
    pub method: Method,
    /// The provider (`manual` for terms and COD).
    pub provider: String,
    /// The payment method token (re-authorizations use it).
    pub token: Option<String>,
    /// Currency of every amount.
    pub currency: Currency,
    /// Tax rate of the destination at intake, basis points.
    pub tax_bp: u32,
    /// Whether prices included tax at intake.
    pub prices: Prices,
    /// The order's lines and prices.
    pub lines: Vec<PricedLine>,
    /// The order's gross total.
    pub total_minor: u64,
    /// Authorizations, first the one at intake.
    pub authorizations: Vec<Authorization>,
    /// Captured (settled).
    pub captured_minor: u64,
    /// Refunded (settled).
    pub refunded_minor: u64,
    /// Units invoiced per SKU.
    pub invoiced: BTreeMap<String, u64>,
    /// Invoiced, gross.
    pub invoiced_minor: u64,
    /// Credited, gross.
    pub credit_noted_minor: u64,
    /// Invoice numbers.
    pub invoices: Vec<String>,
    /// Credit note numbers.
    pub credit_notes: Vec<String>,
    /// A void was queued (the order was cancelled before anything shipped).
    pub void_requested: bool,
    /// Every authorization was voided.
    pub voided: bool,
    /// The release of what the order will never capture was queued (the order reached its final state with
    /// something shipped: short-shipped, lines cancelled, cancelled after a partial shipment).
    #[serde(default)]
    pub release_requested: bool,
    /// Released over all authorizations (see [`Authorization::released_minor`]).
    #[serde(default)]
    pub released_minor: u64,
    /// Recorded by service as received (terms and COD), minor units.
    #[serde(default)]
    pub paid_minor: u64,
    /// The payments service recorded (at most [`RECORDED_MAX`]).
    #[serde(default)]
    pub recorded: Vec<RecordedPayment>,
    /// Why service must act, if it must.
    pub action_required: Option<String>,
    /// What happened (at most [`EVENTS_MAX`]).
    pub events: Vec<PaymentEvent>,
}

impl Payment {
    /// Authorized over all authorizations.
    pub fn authorized_minor(&self) -> u64 {
        self.authorizations.iter().map(|a| a.amount_minor).sum()
    }

    /// Still held: authorized on open authorizations and not captured.
    pub fn held_minor(&self) -> u64 {
        self.authorizations.iter().filter(|a| !a.closed).map(|a| a.amount_minor.saturating_sub(a.captured_minor)).sum()
    }

    /// Closes authorization `i` (if open): what it did not capture is released. Returns that amount.
    pub(crate) fn close_auth(&mut self, i: usize) -> u64 {
        let Some(a) = self.authorizations.get_mut(i).filter(|a| !a.closed) else { return 0 };
        a.closed = true;
        a.released_minor = a.amount_minor.saturating_sub(a.captured_minor);
        self.released_minor = self.released_minor.saturating_add(a.released_minor);
        a.released_minor
    }

    /// What is owed on a terms or COD order: invoiced, less credited, less recorded as paid.
    pub fn outstanding_minor(&self) -> u64 {
        self.invoiced_minor.saturating_sub(self.credit_noted_minor).saturating_sub(self.paid_minor)
    }

    /// The customer-facing status.
    pub fn status(&self) -> &'static str {
        if self.action_required.is_some() {
            "action_required"
        } else if self.refunded_minor > 0 && self.refunded_minor >= self.captured_minor {
            "refunded"
        } else if self.refunded_minor > 0 {
            "partially_refunded"
        } else if self.captured_minor > 0
            && (self.captured_minor >= self.total_minor || (self.release_requested && self.held_minor() == 0))
        {
            // Everything the order will ever capture is captured (a short shipment's rest was released).
            "captured"
        } else if self.captured_minor > 0 {
            "partially_captured"
        } else if self.voided {
            "voided"
        } else {
            "authorized"
        }
    }

    fn event(&mut self, at_ms: u64, status: &str, amount_minor: u64, document: Option<&str>) {
        if self.events.len() >= EVENTS_MAX {
            self.events.remove(1);
        }
        self.events.push(PaymentEvent {
            at_ms,
            status: status.to_owned(),
            amount_minor,
            document: document.map(str::to_owned),
        });
    }
}

/// How money recorded by service was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReceivedBy {
    /// Cash (a courier's cash on delivery, a counter).
    Cash,
    /// A bank transfer.
    BankTransfer,
    /// A cheque.
    Cheque,
    /// A card taken outside oms (a terminal at the door).
    CardTerminal,
    /// Anything else (say what in the reason).
    Other,
}

/// A payment service recorded for a terms or COD order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecordedPayment {
    /// `<order>-P<n>`, n from 1 per order.
    pub id: String,
    /// Amount received, minor units.
    pub amount_minor: u64,
    /// How.
    pub method: ReceivedBy,
    /// The payer's or bank's reference.
    pub reference: String,
    /// Why (a note for the books).
    pub reason: String,
    /// Who recorded it (the API key's name).
    pub recorded_by: String,
    /// When.
    pub at_ms: u64,
}

/// The body of `POST /v1/orders/{id}/payments`: money service received for a terms or COD order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ManualPaymentRequest {
    /// Received, minor units (positive; at most what the order owes).
    pub amount_minor: u64,
    /// How.
    pub method: ReceivedBy,
    /// The payer's or bank's reference: 1 to [`PAYMENT_REFERENCE_BYTES_MAX`] bytes.
    pub reference: String,
    /// Why / a note for the books: 1 to `TEXT_BYTES_MAX` bytes.
    pub reason: String,
}

/// What an idempotency key of a recorded payment stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RecordedKey {
    /// The request's canonical hash (hex).
    body_sha256: String,
    /// The payment it recorded.
    id: String,
}

/// An authorization asked at intake for an order not committed yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Attempt {
    provider: String,
    token: String,
    amount_minor: u64,
    currency: Currency,
    at_ms: u64,
}

/// One line of an invoice or credit note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DocLine {
    /// SKU (`adjustment` for an amount credited without lines).
    pub sku: String,
    /// Units.
    pub qty: u64,
    /// Price of one unit.
    pub unit_price_minor: i64,
    /// Units of the same line on earlier documents of its kind (how its tax was rounded, see [`tax`]).
    pub before: u64,
    /// Net.
    pub net_minor: i64,
    /// Rate, basis points.
    pub tax_bp: u32,
    /// Tax.
    pub tax_minor: i64,
    /// Gross.
    pub gross_minor: i64,
}

/// An invoice: one per shipment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Invoice {
    /// `<series>-<seq>`, gap-free per series.
    pub number: String,
    /// The hub order.
    pub order: String,
    /// Its channel.
    pub channel: Channel,
    /// The fulfillment shipped.
    pub fulfillment: String,
    /// The site that shipped it.
    pub site: String,
    /// When.
    pub issued_at_ms: u64,
    /// Currency.
    pub currency: Currency,
    /// Whether prices include tax.
    pub prices: Prices,
    /// Lines.
    pub lines: Vec<DocLine>,
    /// Net total.
    pub net_minor: i64,
    /// Tax total.
    pub tax_minor: i64,
    /// Gross total (what is captured).
    pub total_minor: i64,
    /// The capture's outbox row.
    pub capture_row: Option<u64>,
    /// Captured (the capture settled).
    pub captured: bool,
    /// Credited so far, gross.
    pub credited_minor: i64,
    /// Units credited so far per SKU.
    pub credited: BTreeMap<String, u64>,
    /// Credit notes referencing it.
    pub credit_notes: Vec<String>,
}

/// A credit note: one per refund.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreditNote {
    /// `<series>-<seq>`.
    pub number: String,
    /// The invoice it credits.
    pub invoice: String,
    /// The hub order.
    pub order: String,
    /// Its channel.
    pub channel: Channel,
    /// When.
    pub issued_at_ms: u64,
    /// Why.
    pub reason: String,
    /// Who (the API key's name).
    pub issued_by: String,
    /// Currency.
    pub currency: Currency,
    /// Lines.
    pub lines: Vec<DocLine>,
    /// Net total.
    pub net_minor: i64,
    /// Tax total.
    pub tax_minor: i64,
    /// Gross total (what is refunded).
    pub total_minor: i64,
    /// The refund's outbox row.
    pub refund_row: Option<u64>,
}

/// What to refund ([`Money::refund`]): lines of one invoice, or an amount, with a reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    /// The invoice to credit; by default the first of the order that covers the refund.
    #[serde(default)]
    pub invoice: Option<String>,
    /// Units per SKU to credit.
    #[serde(default)]
    pub lines: Option<Vec<RefundLine>>,
    /// An amount (gross, minor units) to credit, e.g. goodwill.
    #[serde(default)]
    pub amount_minor: Option<u64>,
    /// Why (required).
    #[serde(default)]
    pub reason: String,
}

/// Units of a SKU to credit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundLine {
    /// SKU.
    pub sku: String,
    /// Units.
    pub qty: u64,
}

/// Totals over every payment (the demo's summary).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct MoneyTotals {
    /// Paid orders.
    pub payments: u64,
    /// Authorized.
    pub authorized_minor: u64,
    /// Captured.
    pub captured_minor: u64,
    /// Invoiced.
    pub invoiced_minor: u64,
    /// Credited.
    pub credit_noted_minor: u64,
    /// Refunded.
    pub refunded_minor: u64,
    /// Released: authorized and never to be captured (voids, the rest of final orders, expired or closed
    /// authorizations). `authorized = captured + released + held`.
    pub released_minor: u64,
    /// Still held on open authorizations.
    pub held_minor: u64,
    /// Recorded by service as received for terms and COD orders.
    pub paid_minor: u64,
    /// Manual payments recorded (`POST /v1/orders/{id}/payments`).
    pub payments_recorded: u64,
    /// Invoices issued.
    pub invoices: u64,
    /// Credit notes issued.
    pub credit_notes: u64,
    /// Outbox rows not settled (pending or indeterminate).
    pub outbox_open: u64,
    /// Orders needing service's action.
    pub action_required: u64,
    /// Captures above authorizations, invoices ≠ captures and credit notes ≠ refunds once the outbox is
    /// empty, authorized ≠ captured + released + held, a final order still holding money once its release
    /// settled, recorded payments above what is owed (orders counted once per kind of mismatch).
    pub payment_mismatches: u64,
}

fn storage_enc(what: &'static str, e: serde_json::Error) -> MoneyError {
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

/// A prepared payment for a new order: the record to write with it and the provider key of its attempt.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The record (its order id is set by the intake).
    pub payment: Payment,
    /// The provider's idempotency key of the authorization (cards).
    pub attempt_key: Option<String>,
}

/// Money at the hub: configuration, providers and the lock every money write holds.
pub struct Money {
    cfg: PaymentsConfig,
    tax: TaxConfig,
    providers: BTreeMap<String, Arc<dyn PaymentProvider>>,
    /// Held by every money write transaction (billing, outbox results, refunds), so invoice numbers are
    /// allocated one transaction after another and a read-modify-write of a payment sees the last one.
    write: Mutex<()>,
    /// Wakes the outbox.
    pub(crate) wake: tokio::sync::Notify,
}

impl Money {
    /// Money with `cfg` and `tax` (both checked), its providers built.
    pub fn new(cfg: PaymentsConfig, tax: TaxConfig) -> Result<Money, String> {
        cfg.check()?;
        tax.check()?;
        let mut providers: BTreeMap<String, Arc<dyn PaymentProvider>> = BTreeMap::new();
        providers.insert(MANUAL.into(), Arc::new(ManualProvider));
        for (name, p) in &cfg.providers {
            let inner: Arc<dyn PaymentProvider> = match p {
                ProviderConfig::Test(t) => Arc::new(TestProvider::new(t.clone(), cfg.call_timeout_ms)?),
                ProviderConfig::Stripe(s) => Arc::new(
                    stripe::StripeProvider::new(s, cfg.call_timeout_ms)
                        .map_err(|e| format!("[payments.providers.{name}] {e}"))?,
                ),
            };
            providers.insert(name.clone(), Arc::new(Bounded::new(inner, cfg.in_flight_max)));
        }
        Ok(Money { cfg, tax, providers, write: Mutex::new(()), wake: tokio::sync::Notify::new() })
    }

    /// Adds (or replaces) a provider under `name` (tests and the demo hand in their own instance).
    pub fn with_provider(mut self, name: &str, p: Arc<dyn PaymentProvider>) -> Money {
        let bounded: Arc<dyn PaymentProvider> = Arc::new(Bounded::new(p, self.cfg.in_flight_max));
        self.providers.insert(name.to_owned(), bounded);
        self
    }

    /// The configuration in force.
    pub fn config(&self) -> &PaymentsConfig {
        &self.cfg
    }

    pub(crate) fn provider(&self, name: &str) -> Option<&Arc<dyn PaymentProvider>> {
        self.providers.get(name)
    }

    /// Reads the optional `payment` member of an order body: none when absent.
    pub fn payment_request(&self, body: &[u8]) -> Result<Option<PaymentRequest>, MoneyError> {
        #[derive(Deserialize)]
        struct Body {
            #[serde(default)]
            payment: Option<serde_json::Value>,
        }
        let Ok(Body { payment }) = serde_json::from_slice::<Body>(body) else { return Ok(None) };
        let Some(v) = payment else { return Ok(None) };
        let req: PaymentRequest =
            serde_json::from_value(v).map_err(|e| MoneyError::InvalidPayment(format!("payment: {e}")))?;
        match req.method {
            Method::Card => {
                let provider = req.provider.as_deref().unwrap_or_default();
                if provider == MANUAL || !self.providers.contains_key(provider) {
                    return Err(MoneyError::InvalidPayment(format!(
                        "payment.provider: no card provider {provider:?} is configured"
                    )));
                }
                let token = req.token.as_deref().unwrap_or_default();
                if token.is_empty() || token.len() > TOKEN_BYTES_MAX || !token.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(MoneyError::InvalidPayment(format!(
                        "payment.token must be 1 to {TOKEN_BYTES_MAX} visible ASCII characters"
                    )));
                }
            }
            Method::Terms | Method::Cod => {
                if req.provider.is_some() || req.token.is_some() {
                    return Err(MoneyError::InvalidPayment("payment: terms and cod take no provider or token".into()));
                }
            }
        }
        Ok(Some(req))
    }

    /// The payment record of a new order of `draft` (tax, totals), and the provider key its authorization
    /// uses: derived from the channel-scoped idempotency key, the body's hash and the token, so a retry of the
    /// same request gets the same authorization and a new body or card a new one.
    pub fn prepare(&self, key: &str, draft: &OrderDraft, body_sha256: &[u8; 32], req: &PaymentRequest) -> Prepared {
        let tax_bp = self.tax.rate_bp(&draft.ship_to.country, None);
        let prices = self.tax.prices;
        let lines: Vec<PricedLine> = draft
            .lines
            .iter()
            .map(|l| PricedLine { sku: l.sku.to_string(), qty: u64::from(l.qty), unit_price_minor: l.unit_price_minor })
            .collect();
        let total: i64 = lines.iter().map(|l| tax::part(l.unit_price_minor, 0, l.qty, tax_bp, prices).2).sum();
        let (provider, token) = match req.method {
            Method::Card => (req.provider.clone().unwrap_or_default(), req.token.clone()),
            Method::Terms | Method::Cod => (MANUAL.to_owned(), None),
        };
        let attempt_key = token.as_ref().map(|t| {
            let material = format!("{}\u{1f}{key}\u{1f}{}\u{1f}{t}", draft.channel, hex(body_sha256));
            format!("auth-{}", &hex(&token_hash(&material))[..40])
        });
        let payment = Payment {
            order: String::new(),
            channel: draft.channel.clone(),
            method: req.method,
            provider,
            token,
            currency: draft
                .lines
                .first()
                .map_or_else(|| Currency::parse("EUR").unwrap_or_else(|_| unreachable!()), |l| l.currency),
            tax_bp,
            prices,
            lines,
            total_minor: u64::try_from(total).unwrap_or(0),
            authorizations: Vec::new(),
            captured_minor: 0,
            refunded_minor: 0,
            invoiced: BTreeMap::new(),
            invoiced_minor: 0,
            credit_noted_minor: 0,
            invoices: Vec::new(),
            credit_notes: Vec::new(),
            void_requested: false,
            voided: false,
            release_requested: false,
            released_minor: 0,
            paid_minor: 0,
            recorded: Vec::new(),
            action_required: None,
            events: Vec::new(),
        };
        Prepared { payment, attempt_key }
    }

    /// Authorizes `prepared` for its total (blocking): commits the attempt row, calls the provider, and fills
    /// in the authorization. A decline is [`MoneyError::Declined`] and leaves nothing (the attempt row goes).
    /// Terms and COD are recorded without a call.
    pub fn authorize(&self, db: &Database, prepared: &mut Prepared, now_ms: u64) -> Result<(), MoneyError> {
        let p = &mut prepared.payment;
        let expires = now_ms.saturating_add(self.cfg.authorization_validity_ms);
        let (Some(key), Some(token)) = (prepared.attempt_key.as_deref(), p.token.clone()) else {
            p.authorizations.push(Authorization {
                reference: MANUAL.into(),
                amount_minor: p.total_minor,
                captured_minor: 0,
                refunded_minor: 0,
                released_minor: 0,
                at_ms: now_ms,
                expires_at_ms: u64::MAX,
                closed: false,
            });
            p.event(now_ms, "authorized", p.total_minor, None);
            return Ok(());
        };
        let provider = self
            .provider(&p.provider)
            .ok_or_else(|| MoneyError::InvalidPayment(format!("no provider {:?}", p.provider)))?
            .clone();
        let attempt = Attempt {
            provider: p.provider.clone(),
            token: token.clone(),
            amount_minor: p.total_minor,
            currency: p.currency,
            at_ms: now_ms,
        };
        {
            let w = db.begin_write()?;
            w.open_table(ATTEMPTS)?.insert(key, enc(&attempt)?.as_slice())?;
            w.commit()?;
        }
        match provider.authorize(key, &token, p.total_minor, p.currency.as_str()) {
            Ok(a) => {
                p.authorizations.push(Authorization {
                    reference: a.reference,
                    amount_minor: a.amount_minor,
                    captured_minor: 0,
                    refunded_minor: 0,
                    released_minor: 0,
                    at_ms: now_ms,
                    expires_at_ms: expires,
                    closed: false,
                });
                p.event(now_ms, "authorized", p.total_minor, None);
                Ok(())
            }
            Err(ProviderError::Declined(reason)) => {
                let w = db.begin_write()?;
                w.open_table(ATTEMPTS)?.remove(key)?;
                w.commit()?;
                Err(MoneyError::Declined(reason))
            }
            // The attempt row stays: the sweep voids whatever the provider may have authorized.
            Err(e) => Err(MoneyError::ProviderUnavailable(e.to_string())),
        }
    }

    /// Voids the authorization of an order the intake refused (blocking) and forgets its attempt. A failure
    /// leaves the attempt for the sweep.
    pub fn release(&self, db: &Database, prepared: &Prepared) -> Result<(), MoneyError> {
        let Some(key) = prepared.attempt_key.as_deref() else { return Ok(()) };
        let p = &prepared.payment;
        if let (Some(provider), Some(a)) = (self.provider(&p.provider), p.authorizations.first()) {
            provider
                .void(&a.reference, &format!("void-{key}"))
                .map_err(|e| MoneyError::ProviderUnavailable(e.to_string()))?;
        }
        let w = db.begin_write()?;
        w.open_table(ATTEMPTS)?.remove(key)?;
        w.commit()?;
        Ok(())
    }

    /// After the intake answered a replay (the key was used: the order exists) for a request that authorized
    /// `prepared`: the same request got the same authorization as the order (the same provider key), so only
    /// the attempt row goes; another card's authorization is voided. Never voids the order's own.
    pub fn settle_replay(&self, db: &Database, order: &str, prepared: &Prepared) -> Result<(), MoneyError> {
        let Some(key) = prepared.attempt_key.as_deref() else { return Ok(()) };
        let theirs = self.payment(db, order)?;
        let ours = prepared.payment.authorizations.first().map(|a| a.reference.as_str());
        let same = theirs.as_ref().is_some_and(|p| p.authorizations.iter().any(|a| Some(a.reference.as_str()) == ours));
        if !same {
            return self.release(db, prepared);
        }
        let w = db.begin_write()?;
        w.open_table(ATTEMPTS)?.remove(key)?;
        w.commit()?;
        Ok(())
    }

    /// Records `prepared` as the payment of `order` in a transaction of its own (the intake writes it in the
    /// order's own transaction instead; this is for tooling, tests and benches that hold orders apart).
    pub fn record_payment(&self, db: &Database, order: &str, prepared: Prepared) -> Result<(), MoneyError> {
        let w = db.begin_write()?;
        let authorized = NewPayments::open(&w)?.write(order, prepared.payment, prepared.attempt_key.as_deref())?;
        if let Some(event) = authorized {
            crate::events::append(&w, event).map_err(|e| MoneyError::Storage(Arc::new(e)))?;
        }
        w.commit()?;
        Ok(())
    }

    /// The payment of hub order `order`, if it has one.
    pub fn payment(&self, db: &Database, order: &str) -> Result<Option<Payment>, MoneyError> {
        let r = db.begin_read()?;
        get_json(&r.open_table(PAYMENTS)?, "payments", order)
    }

    /// Whether `order` has outbox rows (captures, refunds, voids) not settled yet.
    pub fn unsettled(&self, db: &Database, order: &str) -> Result<bool, MoneyError> {
        Ok(outbox::open_orders(&db.begin_read()?)?.contains(order))
    }

    /// Settles the authorization of an order that reached its final state (every fulfillment shipped or given
    /// back, nothing left to place): once, in one transaction, queues the void of an order nothing was invoiced
    /// for, or the release of what it will never capture (short-shipped, lines cancelled, cancelled after a
    /// partial shipment). `shipped` are the fulfillments that shipped: until each is billed (its invoice and
    /// capture row committed) nothing is queued, so the release row comes after every capture row of the
    /// order and the outbox (rows of an order strictly in order) releases only what no capture takes. Returns
    /// whether it queued.
    pub fn settle_final(&self, db: &Database, order: &str, shipped: &[&str], now_ms: u64) -> Result<bool, MoneyError> {
        let _g = lock(&self.write);
        let w = db.begin_write()?;
        let found = get_json::<Payment>(&w.open_table(PAYMENTS)?, "payments", order)?;
        let Some(mut p) = found.filter(|p| !p.void_requested && !p.release_requested) else {
            // Nothing to settle, or settled already: the note (if any) is done with.
            if w.open_table(SETTLE_DUE)?.remove(order)?.is_some() {
                w.commit()?;
            }
            return Ok(false);
        };
        {
            let billed = w.open_table(BILLED)?;
            for f in shipped {
                if billed.get(*f)?.is_none() {
                    // Settled when that shipment is billed (the watcher bills, then asks again).
                    return Ok(false);
                }
            }
        }
        w.open_table(SETTLE_DUE)?.remove(order)?;
        let kind = if p.invoices.is_empty() {
            p.void_requested = true;
            outbox::Kind::Void
        } else {
            p.release_requested = true;
            outbox::Kind::Release
        };
        // With one open authorization, the row is made on it from the start (one commit less per release).
        let mut open = p.authorizations.iter().enumerate().filter(|(_, a)| !a.closed).map(|(i, _)| i);
        let auth = match (open.next(), open.next()) {
            (Some(i), None) => Some(i),
            _ => None,
        };
        outbox::push(&w, order, kind, 0, None, auth, now_ms)?;
        w.open_table(PAYMENTS)?.insert(order, enc(&p)?.as_slice())?;
        w.commit()?;
        self.wake.notify_one();
        Ok(true)
    }

    /// Orders noted as due to be settled ([`note_settle_due`]) and not settled yet, at most `max`, oldest
    /// first by id: what a start hands to [`crate::orders::recover`].
    pub fn settle_due(&self, db: &Database, max: usize) -> Result<Vec<String>, MoneyError> {
        let r = db.begin_read()?;
        let t = r.open_table(SETTLE_DUE)?;
        let mut out = Vec::new();
        for row in t.range::<&str>(..)?.take(max) {
            out.push(row?.0.value().to_owned());
        }
        Ok(out)
    }

    /// Records money service received for a terms or COD order (`POST /v1/orders/{id}/payments`): in one
    /// transaction the payment on the order (at most [`RECORDED_MAX`], never more than it owes: invoiced less
    /// credited less recorded), a `payment.recorded` event, the audit row and the idempotency key. The same
    /// key with the same request answers the first record (`true`: replayed); with another request,
    /// [`MoneyError::KeyReused`]. A refusal writes the audit row only.
    #[allow(clippy::too_many_arguments)]
    pub fn record_manual(
        &self,
        db: &Database,
        order: &str,
        key: &str,
        req: &ManualPaymentRequest,
        actor: &Actor,
        now_ms: u64,
    ) -> Result<(RecordedPayment, bool), MoneyError> {
        let hash = hex(&token_hash(&serde_json::to_string(req).map_err(|e| storage_enc("a payment", e))?));
        let _g = lock(&self.write);
        let w = db.begin_write()?;
        let slot = format!("{order}\u{1f}{key}");
        let decided = self.decide_manual(&w, order, &slot, &hash, req);
        let mut p = match decided {
            Ok(Ok(p)) => p,
            Ok(Err(replayed)) => return Ok((replayed, true)),
            Err(e) => {
                if !matches!(e, MoneyError::Storage(_)) {
                    audit::append(&mut w.open_table(AUDIT)?, actor, Some(order), now_ms, e.code())?;
                    w.commit()?;
                }
                return Err(e);
            }
        };
        let rec = RecordedPayment {
            id: format!("{order}-P{}", p.recorded.len() + 1),
            amount_minor: req.amount_minor,
            method: req.method,
            reference: req.reference.trim().to_owned(),
            reason: req.reason.trim().to_owned(),
            recorded_by: actor.key.clone(),
            at_ms: now_ms,
        };
        p.paid_minor += rec.amount_minor;
        p.recorded.push(rec.clone());
        p.event(now_ms, "recorded", rec.amount_minor, Some(&rec.id));
        let k = RecordedKey { body_sha256: hash, id: rec.id.clone() };
        w.open_table(RECORDED_KEYS)?.insert(slot.as_str(), enc(&k)?.as_slice())?;
        w.open_table(PAYMENTS)?.insert(order, enc(&p)?.as_slice())?;
        payment_event(&w, crate::events::PAYMENT_RECORDED, &p, rec.amount_minor, Some(&rec.id), None)?;
        audit::append(&mut w.open_table(AUDIT)?, actor, Some(order), now_ms, "ok")?;
        w.commit()?;
        Ok((rec, false))
    }

    /// Reads and checks a recorded payment: the payment to add it to, or the record a replay answers with.
    fn decide_manual(
        &self,
        w: &redb::WriteTransaction,
        order: &str,
        slot: &str,
        hash: &str,
        req: &ManualPaymentRequest,
    ) -> Result<Result<Payment, RecordedPayment>, MoneyError> {
        let not_found = || MoneyError::NotFound { what: "paid order", id: order.to_owned() };
        let p: Payment = get_json(&w.open_table(PAYMENTS)?, "payments", order)?.ok_or_else(not_found)?;
        if let Some(k) = get_json::<RecordedKey>(&w.open_table(RECORDED_KEYS)?, "payments_recorded_keys", slot)? {
            if k.body_sha256 != hash {
                return Err(MoneyError::KeyReused(order.to_owned()));
            }
            return match p.recorded.iter().find(|r| r.id == k.id) {
                Some(r) => Ok(Err(r.clone())),
                None => Err(MoneyError::Corrupt { table: "payments", detail: format!("{} is missing", k.id) }),
            };
        }
        let text = |what: &str, v: &str, max: usize| {
            let v = v.trim();
            if v.is_empty() || v.len() > max || v.chars().any(char::is_control) {
                Err(MoneyError::InvalidPayment(format!(
                    "{what} is required: 1 to {max} bytes without control characters"
                )))
            } else {
                Ok(())
            }
        };
        text("reference", &req.reference, PAYMENT_REFERENCE_BYTES_MAX)?;
        text("reason", &req.reason, TEXT_BYTES_MAX)?;
        if req.amount_minor == 0 {
            return Err(MoneyError::InvalidPayment("amount_minor must be positive".into()));
        }
        if p.method == Method::Card {
            return Err(MoneyError::NotManual(order.to_owned()));
        }
        if p.recorded.len() >= RECORDED_MAX {
            return Err(MoneyError::TooManyPayments(order.to_owned()));
        }
        let owed = p.outstanding_minor();
        if req.amount_minor > owed {
            return Err(MoneyError::Overpayment(format!(
                "order {order} owes {owed} {} (invoiced {}, credited {}, paid {}), not {}",
                p.currency, p.invoiced_minor, p.credit_noted_minor, p.paid_minor, req.amount_minor
            )));
        }
        Ok(Ok(p))
    }

    /// The documents, payments and outbox figures over every order (bounded by the number of paid orders the
    /// hub holds; the demo and `/v1/payments/summary` use it).
    pub fn totals(&self, db: &Database) -> Result<MoneyTotals, MoneyError> {
        let r = db.begin_read()?;
        let mut t = MoneyTotals::default();
        let open = outbox::open_orders(&r)?;
        for item in r.open_table(PAYMENTS)?.range::<&str>(..)? {
            let (k, v) = item?;
            let p: Payment = dec("payments", v.value())?;
            t.payments += 1;
            t.authorized_minor += p.authorized_minor();
            t.captured_minor += p.captured_minor;
            t.invoiced_minor += p.invoiced_minor;
            t.credit_noted_minor += p.credit_noted_minor;
            t.refunded_minor += p.refunded_minor;
            t.released_minor += p.released_minor;
            t.held_minor += p.held_minor();
            t.paid_minor += p.paid_minor;
            t.payments_recorded += p.recorded.len() as u64;
            t.invoices += p.invoices.len() as u64;
            t.credit_notes += p.credit_notes.len() as u64;
            let settled = !open.contains(k.value());
            if p.captured_minor > p.authorized_minor() {
                t.payment_mismatches += 1;
            }
            if settled && p.invoiced_minor != p.captured_minor {
                t.payment_mismatches += 1;
            }
            if settled && p.credit_noted_minor != p.refunded_minor {
                t.payment_mismatches += 1;
            }
            // Authorized = captured + released + still held, per authorization and over the payment.
            let per_auth = p.authorizations.iter().any(|a| {
                a.captured_minor > a.amount_minor
                    || (a.closed && a.captured_minor + a.released_minor != a.amount_minor)
                    || (!a.closed && a.released_minor != 0)
            });
            if per_auth || p.authorized_minor() != p.captured_minor + p.released_minor + p.held_minor() {
                t.payment_mismatches += 1;
            }
            // A final order holds nothing once its release settled; recorded payments never exceed what is owed.
            if settled && (p.release_requested || p.voided) && p.held_minor() != 0 {
                t.payment_mismatches += 1;
            }
            if p.paid_minor > p.invoiced_minor.saturating_sub(p.credit_noted_minor)
                || p.paid_minor != p.recorded.iter().map(|r| r.amount_minor).sum::<u64>()
            {
                t.payment_mismatches += 1;
            }
        }
        t.outbox_open = r.open_table(outbox::OUTBOX_OPEN)?.len()?;
        t.action_required = r.open_table(ACTION)?.len()?;
        Ok(t)
    }
}

/// The payment as the order's view shows it: status, amounts, documents.
pub fn payment_view(p: &Payment) -> PaymentView {
    PaymentView {
        method: p.method,
        provider: p.provider.clone(),
        status: p.status(),
        currency: p.currency,
        total_minor: p.total_minor,
        authorized_minor: p.authorized_minor(),
        captured_minor: p.captured_minor,
        refunded_minor: p.refunded_minor,
        released_minor: p.released_minor,
        held_minor: p.held_minor(),
        paid_minor: p.paid_minor,
        outstanding_minor: if p.method == Method::Card { 0 } else { p.outstanding_minor() },
        recorded: p.recorded.clone(),
        invoiced_minor: p.invoiced_minor,
        credit_noted_minor: p.credit_noted_minor,
        invoices: p.invoices.clone(),
        credit_notes: p.credit_notes.clone(),
        action_required: p.action_required.clone(),
    }
}

/// A payment as the API shows it ([`payment_view`]): the order view's `payment` and `GET /v1/payments`'s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PaymentView {
    /// How it is paid.
    pub method: Method,
    /// The provider (`manual` for terms and COD).
    pub provider: String,
    /// The customer-facing status ([`Payment::status`]).
    pub status: &'static str,
    /// Currency of every amount.
    pub currency: Currency,
    /// The order's gross total, minor units.
    pub total_minor: u64,
    /// Authorized over all authorizations.
    pub authorized_minor: u64,
    /// Captured (settled).
    pub captured_minor: u64,
    /// Refunded (settled).
    pub refunded_minor: u64,
    /// Released over all authorizations.
    pub released_minor: u64,
    /// Authorized and neither captured nor released.
    pub held_minor: u64,
    /// Recorded by service as received (terms and COD).
    pub paid_minor: u64,
    /// Owed on a terms or COD order (0 for a card).
    pub outstanding_minor: u64,
    /// The payments service recorded.
    pub recorded: Vec<RecordedPayment>,
    /// Invoiced, gross.
    pub invoiced_minor: u64,
    /// Credited, gross.
    pub credit_noted_minor: u64,
    /// Invoice numbers.
    pub invoices: Vec<String>,
    /// Credit note numbers.
    pub credit_notes: Vec<String>,
    /// Why service must act, if it must.
    pub action_required: Option<String>,
}

#[cfg(test)]
mod tests;
