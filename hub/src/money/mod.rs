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
mod records;
pub mod render;
mod service;
mod store;
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
use records::RecordedKey;
pub use records::{
    Authorization, CreditNote, DOCS_PAGE_MAX, DocLine, EVENTS_MAX, Invoice, MANUAL, ManualPaymentRequest, Method,
    MoneyError, MoneyTotals, PAYMENT_REFERENCE_BYTES_MAX, Payment, PaymentEvent, PaymentRequest, PaymentView,
    PaymentsConfig, PricedLine, ProviderConfig, RECORDED_MAX, REFUND_LINES_MAX, ReceivedBy, RecordedPayment,
    RefundLine, RefundRequest, TOKEN_BYTES_MAX, payment_view,
};
pub use service::{Money, Prepared};
pub use store::create_tables;
use store::{
    ACTION, BILLED, CREDIT_NOTES, CREDIT_NOTES_BY_TIME, INVOICES, INVOICES_BY_TIME, MONEY_META, RECORDED_KEYS,
    SETTLE_DUE, storage_enc,
};
pub(crate) use store::{
    ATTEMPTS, Attempt, NewPayments, PAYMENTS, dec, enc, get_json, migrate_released, note_settle_due, payment_event,
};

#[cfg(test)]
mod tests;
