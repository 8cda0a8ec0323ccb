//! The money records: configuration, errors, payments, documents, requests and views.

use super::*;

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

impl Authorization {
    /// A new, open authorization of `amount_minor` under the provider's `reference`, made at `at_ms` and good
    /// until `expires_at_ms`: nothing captured, refunded or released on it yet.
    pub fn new(reference: String, amount_minor: u64, at_ms: u64, expires_at_ms: u64) -> Authorization {
        Authorization {
            reference,
            amount_minor,
            captured_minor: 0,
            refunded_minor: 0,
            released_minor: 0,
            at_ms,
            expires_at_ms,
            closed: false,
        }
    }
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

    pub(super) fn event(&mut self, at_ms: u64, status: &str, amount_minor: u64, document: Option<&str>) {
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
pub(super) struct RecordedKey {
    /// The request's canonical hash (hex).
    pub(super) body_sha256: String,
    /// The payment it recorded.
    pub(super) id: String,
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
