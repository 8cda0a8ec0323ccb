//! The tables of `node.redb`, the keys of its `meta` table, and how rows are encoded (postcard). Table names,
//! key types and row layouts here are the file format.

use oms_protocol::domain::FulfillmentState;
use redb::TableDefinition;
use serde::{Serialize, de::DeserializeOwned};

use super::{StorageError, StoreError};

/// The format of `node.redb` (see `oms_service::storage::format`): 1 is the first versioned one, the same
/// tables as the unversioned files before it (format 0), whose own one-time upgrades (the freeze queue)
/// still run at open. A change to a table's name, key or row layout takes the next version and a migration.
pub const NODE_FORMAT: oms_service::storage::Format =
    oms_service::storage::Format { kind: "node", version: 1, derived: false, migrations: &[] };

pub(super) const CATALOG: TableDefinition<&str, &[u8]> = TableDefinition::new("catalog");
pub(super) const BALANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("balances");
pub(super) const LEDGER: TableDefinition<u64, &[u8]> = TableDefinition::new("ledger");
pub(super) const LEDGER_BY_SKU: TableDefinition<(&str, u64), ()> = TableDefinition::new("ledger_by_sku");
pub(super) const ORDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("orders");
pub(super) const ORDERS_BY_STATE: TableDefinition<(u8, &str), ()> = TableDefinition::new("orders_by_state");
pub(super) const WAVES: TableDefinition<u64, &[u8]> = TableDefinition::new("waves");
pub(super) const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");
/// (recorded at ms, key) → (): idempotency records by age, so the writer can forget old ones.
pub(super) const IDEMPOTENCY_BY_TIME: TableDefinition<(u64, &str), ()> = TableDefinition::new("idempotency_by_time");
pub(super) const FEED: TableDefinition<u64, &[u8]> = TableDefinition::new("feed");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// SKU → postcard `EscrowCounter`: the rights to the SKU's available units shared with the hub.
pub(super) const ESCROW: TableDefinition<&str, &[u8]> = TableDefinition::new("escrow");
/// Purchase order id → `InboundRecord`: what the hub says the site is to receive and what it received.
pub(super) const INBOUND: TableDefinition<&str, &[u8]> = TableDefinition::new("inbound");
/// Receipt id → `PoReceipt`: the site's receipts against purchase orders.
pub(super) const PO_RECEIPTS: TableDefinition<&str, &[u8]> = TableDefinition::new("po_receipts");
/// RMA id → `RmaRecord`: the returns the hub approved for this site and what the site received against them.
pub(super) const RMAS: TableDefinition<&str, &[u8]> = TableDefinition::new("rmas");
/// Receipt id → `RmaReceipt`: the site's receipts against RMAs.
pub(super) const RMA_RECEIPTS: TableDefinition<&str, &[u8]> = TableDefinition::new("rma_receipts");
/// Order id → when it was frozen (ms since the Unix epoch): finished orders that refuse every change.
pub(super) const FROZEN: TableDefinition<&str, u64> = TableDefinition::new("frozen");
/// Order id → the start of its return window (0: finished at once): orders that may be frozen once due
/// (see [`crate::freeze`]). Kept in the transaction that saves the order; frozen orders leave it.
pub(super) const FREEZE_QUEUE: TableDefinition<&str, u64> = TableDefinition::new("freeze_queue");
/// META flag: the freeze queue holds every order saved before it existed.
/// Consignment id → postcard `Consignment` (see `consignments`): also the label outbox.
pub(super) const CONSIGNMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("consignments");
/// (state tag, consignment id) → (): consignments by state.
pub(super) const CONSIGNMENTS_BY_STATE: TableDefinition<(u8, &str), ()> = TableDefinition::new("consignments_by_state");
/// Consignment id → postcard `LabelDoc`: the label documents bought.
pub(super) const LABELS: TableDefinition<&str, &[u8]> = TableDefinition::new("labels");
/// Manifest id → postcard `Manifest` (see `manifests`): the closed manifests.
pub(super) const MANIFESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("manifests");
pub(super) const FREEZE_QUEUE_FILLED: &str = "freeze.queue_filled";

pub(super) const SEQ_LEDGER: &str = "seq.ledger";
pub(super) const SEQ_ORDER: &str = "seq.order";
pub(super) const SEQ_WAVE: &str = "seq.wave";
pub(super) const SEQ_FEED: &str = "seq.feed";

pub(super) fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(v).map_err(|e| StorageError::encode("a record", e).into())
}

pub(super) fn dec<T: DeserializeOwned>(table: &'static str, b: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(b).map_err(|e| StoreError::Corrupt { table, detail: e.to_string() })
}

pub(super) fn state_counter(s: FulfillmentState) -> String {
    format!("orders.{}", s.as_str())
}
