//! Why a store operation was refused ([`StoreError`]), and how redb's errors become storage failures
//! ([`oms_service::storage_errors_from_redb!`]).

use oms_protocol::domain::{BalanceError, OrderId, Sku, TransitionError, ValidationError};

use super::Shortfall;
use crate::escrow;
use oms_service::storage::StorageError;
use std::sync::Arc;

/// Why a store operation was refused. Each variant maps to one stable API code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A field failed validation.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The SKU is not in the catalog.
    #[error("SKU {0} is not in the catalog; add it with PUT /v1/catalog/{0} first")]
    UnknownSku(Sku),
    /// Not enough available stock for an order.
    #[error("not enough stock: {}", fmt_shortfalls(.0))]
    InsufficientStock(Vec<Shortfall>),
    /// An adjustment or count would take on hand below what is reserved.
    #[error("{sku}: {source}; cancel or short-pick the orders holding it first")]
    BelowReserved {
        /// The SKU.
        sku: Sku,
        /// Details.
        source: BalanceError,
    },
    /// Taking units away (a loss, a count) would eat into rights the site has escrowed to the hub.
    #[error(
        "{sku}: {requested} units would leave the site, but only {site_rights} are the site's own; the rest is \
         escrowed to the hub for channel orders (the hub gives rights back by rebalancing, or the site reclaims \
         them after the hub's lease)"
    )]
    EscrowedToHub {
        /// The SKU.
        sku: Sku,
        /// Units the site holds rights to.
        site_rights: u64,
        /// Units the movement would take.
        requested: u64,
    },
    /// The idempotency key was used before with another body.
    #[error("idempotency key {0:?} was already used for a different request body")]
    IdempotencyKeyReused(String),
    /// No such order.
    #[error("order {0} does not exist at this site")]
    OrderNotFound(OrderId),
    /// No such consignment.
    #[error("consignment {0} does not exist at this site")]
    ConsignmentNotFound(String),
    /// No such manifest.
    #[error("manifest {0} does not exist at this site")]
    ManifestNotFound(String),
    /// The consignment's state does not allow the action.
    #[error("consignment {id} is {state}: it cannot {action}")]
    ConsignmentState {
        /// The consignment.
        id: String,
        /// Its state.
        state: &'static str,
        /// What was asked.
        action: &'static str,
    },
    /// No labelled consignment (of the carrier asked for) to close into a manifest.
    #[error("no labelled consignment{} waits for a manifest", .0.as_ref().map(|c| format!(" of {c}")).unwrap_or_default())]
    NothingToManifest(Option<String>),
    /// No such wave.
    #[error("pick wave {0} does not exist")]
    WaveNotFound(u64),
    /// The order is finished and frozen: it takes no more changes.
    #[error("order {order} is finished and was frozen at {frozen_at_ms} ms; it takes no more changes")]
    OrderFrozen {
        /// The order.
        order: OrderId,
        /// When it was frozen, ms since the Unix epoch.
        frozen_at_ms: u64,
    },
    /// The order's state does not allow the step.
    #[error("order {order}: {source}")]
    Transition {
        /// The order.
        order: OrderId,
        /// The illegal transition.
        source: TransitionError,
    },
    /// A request about lines does not match the order's lines.
    #[error("order {order}: {message}")]
    LineMismatch {
        /// The order.
        order: OrderId,
        /// What does not match.
        message: String,
    },
    /// No accepted orders to put on a wave.
    #[error("no accepted orders are waiting to be picked")]
    NothingToPick,
    /// No such purchase order or ASN among what the hub published for this site.
    #[error("no {kind} {id:?} is expected at this site")]
    InboundNotFound {
        /// `purchase_order` or `asn`.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The purchase order takes no more receipts (received, closed or cancelled at the hub).
    #[error("purchase order {po} is {state}: nothing can be received against it")]
    NotReceivable {
        /// The order.
        po: String,
        /// Its state at the hub.
        state: String,
    },
    /// More units than the line expects, beyond the tolerance, without `force` and a reason.
    #[error(
        "purchase order {po} line {line}: {received} received and {requested} more exceed the {expected} expected \
         by more than {tolerance_pct} %; force with a reason to receive them"
    )]
    OverReceipt {
        /// The order.
        po: String,
        /// The line.
        line: u32,
        /// Units expected (ordered less short-closed).
        expected: u64,
        /// Units received here so far.
        received: u64,
        /// Units in this receipt.
        requested: u64,
        /// The tolerance.
        tolerance_pct: u32,
    },
    /// No such return (RMA) at this site.
    #[error("RMA {0:?} is not known at this site (the hub publishes approved returns to the site that shipped them)")]
    RmaNotFound(String),
    /// The RMA takes no units in its state (declined, cancelled, received in full, closed).
    #[error("RMA {rma} is {state}: nothing can be received against it")]
    RmaNotReceivable {
        /// The RMA.
        rma: String,
        /// Its state at the hub.
        state: String,
    },
    /// More units of a SKU than the RMA allows.
    #[error("RMA {rma}: {requested} units of {sku} would exceed the {approved} approved ({received} received before)")]
    OverReturn {
        /// The RMA.
        rma: String,
        /// The SKU.
        sku: Sku,
        /// Units approved.
        approved: u64,
        /// Units received against it so far.
        received: u64,
        /// Units in this receipt.
        requested: u64,
    },
    /// The RMA received units since the caller looked (a screen's form drawn before another receipt).
    #[error(
        "RMA {rma} has {received} units received, not the {expected} this receipt was made against: another \
         receipt was booked meanwhile (or this one was sent twice); nothing was booked"
    )]
    RmaChanged {
        /// The RMA.
        rma: String,
        /// Units received when the caller looked.
        expected: u64,
        /// Units received now.
        received: u64,
    },
    /// The writer's queue is full.
    #[error("the node is overloaded; retry shortly")]
    Overloaded,
    /// The store is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The file system holding the store has less free space than the store keeps in reserve: the write was
    /// refused before it touched the file (reads go on; writes resume when space returns).
    #[error(
        "insufficient storage: {free_bytes} bytes free, the node keeps {reserve_bytes} in reserve; nothing was \
         written. Free disk space; writes resume at once"
    )]
    InsufficientStorage {
        /// Bytes free.
        free_bytes: u64,
        /// Bytes kept in reserve (`[storage] reserve_bytes`).
        reserve_bytes: u64,
    },
    /// The disk or the database failed; nothing of the request was written. Shared (`Arc`), because every
    /// caller of a failed batch gets the same error, with redb's error as its source.
    #[error("storage failure, nothing was written: {0}")]
    Storage(#[source] Arc<StorageError>),
    /// A stored record did not decode: the database is damaged.
    #[error("corrupt record in {table}: {detail}")]
    Corrupt {
        /// Table.
        table: &'static str,
        /// Decoder message.
        detail: String,
    },
}

impl StoreError {
    /// The stable code of the error, as the API's problem and the audit trail name it.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Invalid(v) => v.code,
            StoreError::UnknownSku(_) => "unknown_sku",
            StoreError::InsufficientStock(_) => "insufficient_stock",
            StoreError::BelowReserved { .. } => "below_reserved",
            StoreError::EscrowedToHub { .. } => "escrowed_to_hub",
            StoreError::IdempotencyKeyReused(_) => "idempotency_key_reused",
            StoreError::OrderNotFound(_) => "order_not_found",
            StoreError::OrderFrozen { .. } => "order_frozen",
            StoreError::WaveNotFound(_) => "wave_not_found",
            StoreError::ConsignmentNotFound(_) => "consignment_not_found",
            StoreError::ManifestNotFound(_) => "manifest_not_found",
            StoreError::ConsignmentState { .. } => "illegal_consignment_state",
            StoreError::NothingToManifest(_) => "nothing_to_manifest",
            StoreError::Transition { .. } => "illegal_transition",
            StoreError::LineMismatch { .. } => "line_mismatch",
            StoreError::NothingToPick => "nothing_to_pick",
            StoreError::InboundNotFound { kind: "asn", .. } => "asn_not_found",
            StoreError::InboundNotFound { .. } => "purchase_order_not_found",
            StoreError::NotReceivable { .. } => "not_receivable",
            StoreError::OverReceipt { .. } => "over_receipt",
            StoreError::RmaNotFound(_) => "rma_not_found",
            StoreError::RmaNotReceivable { .. } => "rma_not_receivable",
            StoreError::OverReturn { .. } => "over_return",
            StoreError::RmaChanged { .. } => "rma_changed",
            StoreError::Overloaded => "overloaded",
            StoreError::ShuttingDown => "shutting_down",
            StoreError::InsufficientStorage { .. } => "insufficient_storage",
            StoreError::Storage(e) if e.is_disk_full() => "insufficient_storage",
            StoreError::Storage(_) => "storage_unavailable",
            StoreError::Corrupt { .. } => "corrupt_record",
        }
    }
}

fn fmt_shortfalls(s: &[Shortfall]) -> String {
    s.iter()
        .map(|s| format!("{} has {} available, {} requested", s.sku, s.available, s.requested))
        .collect::<Vec<_>>()
        .join("; ")
}

oms_service::storage_errors_from_redb!(StoreError);

pub(super) fn escrow_corrupt(e: escrow::EscrowFault) -> StoreError {
    StoreError::Corrupt { table: "escrow", detail: e.to_string() }
}
