//! Purchasing at the hub: suppliers, purchase orders, sending them to suppliers through an outbox, advance
//! shipping notices, the receipts the sites send back, and what is on order for the replenishment.
//!
//! Everything is kept in `intake.redb` ([`store`]); the pure rules (states, order quantities) are in
//! [`model`]; sending is [`channel`]; the routes are [`http`].
//!
//! **Lifecycle** ([`model::PurchaseOrder::step`], [`model::PurchaseOrder::settle`]): `draft → sent →
//! confirmed → partially_received → received`, `closed` when every line is settled and some were
//! short-closed, `cancelled` from `draft`, `sent` or `confirmed` before any receipt. Receipts are taken from
//! `sent` on (a supplier may deliver before confirming).
//!
//! **On order** ([`Purchasing::on_order`]): per SKU × site, the units of open orders (`draft` to
//! `partially_received`) neither received nor short-closed, with their expected days. The replenishment
//! subtracts it ([`crate::demand`]).

pub mod channel;
pub mod http;
pub mod model;
pub mod sites;
pub mod store;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use oms_protocol::domain::ValidationError;
use oms_service::storage::StorageError;
use serde::{Deserialize, Serialize};

pub use model::{PoState, PoStep};

/// `[purchasing]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PurchasingConfig {
    /// Where the folder channel writes orders (`<po>.json`, `<po>.csv`); `DATA_DIR/purchase-orders` unless set.
    pub folder: Option<PathBuf>,
    /// Failed sendings of one order before it is `failed`.
    pub retries_max: u32,
    /// Wait before retrying a sending, ms (doubled per attempt, at most 64×).
    pub retry_backoff_ms: u64,
    /// Time budget of one webhook call, ms.
    pub call_timeout_ms: u64,
    /// Whether supplier webhook URLs may point at loopback and private addresses (tests, demos).
    pub allow_private_addresses: bool,
}

impl Default for PurchasingConfig {
    fn default() -> Self {
        PurchasingConfig {
            folder: None,
            retries_max: 8,
            retry_backoff_ms: 500,
            call_timeout_ms: 10_000,
            allow_private_addresses: false,
        }
    }
}

impl PurchasingConfig {
    /// Why the section is unusable, if it is.
    pub fn check(&self) -> Result<(), String> {
        if self.retries_max > 1_000 {
            return Err("[purchasing] retries_max must be at most 1000".into());
        }
        if !(1..=3_600_000).contains(&self.retry_backoff_ms) {
            return Err("[purchasing] retry_backoff_ms must be 1 ..= 3600000".into());
        }
        if !(100..=120_000).contains(&self.call_timeout_ms) {
            return Err("[purchasing] call_timeout_ms must be 100 ..= 120000".into());
        }
        Ok(())
    }
}

/// Why a purchasing request was refused or failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PurchasingError {
    /// A field is not usable (its code names why).
    #[error("{}: {}", .0.field, .0.message)]
    Invalid(ValidationError),
    /// A bound was reached.
    #[error("{1}")]
    Limit(&'static str, String),
    /// No such supplier.
    #[error("supplier {0:?} not found")]
    SupplierNotFound(String),
    /// No such purchase order.
    #[error("purchase order {0:?} not found")]
    PoNotFound(String),
    /// No such line.
    #[error("the purchase order has no line {0}")]
    LineNotFound(u32),
    /// The line has nothing open.
    #[error("line {0} is settled already")]
    LineSettled(u32),
    /// The state does not allow the step.
    #[error("{0}")]
    Transition(model::TransitionError),
    /// Units cannot arrive against the order in its state.
    #[error("purchase order {po} is {}: nothing can be received or announced against it", .state.as_str())]
    NotReceivable {
        /// The order.
        po: String,
        /// Its state.
        state: PoState,
    },
    /// Nothing to order (no lines, or no suggestion for the supplier's SKUs at the site).
    #[error("nothing to order")]
    NothingToOrder,
    /// The idempotency key was used with another body.
    #[error("the Idempotency-Key was used for another purchase order body")]
    KeyReused,
    /// The ASN id was recorded with other lines or for another order.
    #[error("ASN {0:?} was recorded with other lines or for another order")]
    AsnConflict(String),
    /// CSV rows refused (nothing was written).
    #[error("{} rows refused, nothing imported", .0.len())]
    Csv(Vec<http::RowError>),
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

oms_service::storage_errors_from_redb!(PurchasingError);

impl PurchasingError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            PurchasingError::Invalid(v) => v.code,
            PurchasingError::Limit(code, _) => code,
            PurchasingError::SupplierNotFound(_) => "supplier_not_found",
            PurchasingError::PoNotFound(_) => "purchase_order_not_found",
            PurchasingError::LineNotFound(_) => "line_not_found",
            PurchasingError::LineSettled(_) => "line_settled",
            PurchasingError::Transition(_) => "invalid_transition",
            PurchasingError::NotReceivable { .. } => "not_receivable",
            PurchasingError::NothingToOrder => "nothing_to_order",
            PurchasingError::KeyReused => "idempotency_key_reused",
            PurchasingError::AsnConflict(_) => "asn_conflict",
            PurchasingError::Csv(_) => "invalid_csv",
            PurchasingError::Storage(_) => "storage_unavailable",
            PurchasingError::Corrupt { .. } => "corrupt_record",
        }
    }
}

/// Purchasing's handle: its configuration and a generation that moves with every change of an order (the
/// replenishment's cache key).
#[derive(Debug, Clone)]
pub struct Purchasing {
    cfg: Arc<PurchasingConfig>,
    generation: Arc<AtomicU64>,
    /// The last [`Purchasing::supply`], kept until the generation moves.
    supply: Arc<std::sync::Mutex<Option<Arc<crate::demand::Supply>>>>,
}

impl Purchasing {
    /// Purchasing over `cfg`, its folder resolved against `data_dir`; creates its tables in `db`.
    pub fn new(
        mut cfg: PurchasingConfig,
        data_dir: &std::path::Path,
        db: &redb::Database,
    ) -> Result<Self, PurchasingError> {
        cfg.folder = Some(cfg.folder.take().unwrap_or_else(|| data_dir.join("purchase-orders")));
        store::init(db)?;
        Ok(Purchasing { cfg: Arc::new(cfg), generation: Arc::new(AtomicU64::new(1)), supply: Arc::default() })
    }

    /// What the replenishment needs of purchasing (on order, supplier terms), read again only after a change.
    pub fn supply(&self, db: &redb::Database) -> Result<Arc<crate::demand::Supply>, PurchasingError> {
        let generation = self.generation();
        if let Some(s) = oms_service::lock(&self.supply).as_ref()
            && s.generation == generation
        {
            return Ok(s.clone());
        }
        let s = Arc::new(crate::demand::Supply { generation, on_order: self.on_order(db)?, offers: self.offers(db)? });
        *oms_service::lock(&self.supply) = Some(s.clone());
        Ok(s)
    }

    /// The configuration in force.
    pub fn config(&self) -> &PurchasingConfig {
        &self.cfg
    }

    /// Moves with every committed change of an order.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The folder channel's folder.
    pub fn folder(&self) -> PathBuf {
        self.cfg.folder.clone().unwrap_or_else(|| PathBuf::from("purchase-orders"))
    }

    /// The HTTP client of the webhook channel: the call's time budget, no redirects, no proxy.
    fn client(&self) -> reqwest::Result<reqwest::Client> {
        reqwest::Client::builder()
            .timeout(Duration::from_millis(self.cfg.call_timeout_ms))
            .connect_timeout(Duration::from_millis(self.cfg.call_timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("oms-purchasing/", env!("CARGO_PKG_VERSION")))
            .build()
    }
}
