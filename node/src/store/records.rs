//! The node's own records (those shared with the hub are in [`oms_protocol::records`]): catalog items, ledger
//! entries, pick waves, change-feed entries, idempotency records, and the shapes of a shortfall and a pick
//! confirmation. They are stored with postcard, so a field's type and position are part of the file format.

use oms_protocol::domain::{Balance, Movement, OrderId, Sku};
use serde::{Deserialize, Serialize};

/// A catalog item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CatalogItem {
    /// The SKU.
    pub sku: Sku,
    /// Display name.
    pub name: String,
    /// Bin location, such as `A-01-3`; pick lists walk bins in this order.
    pub bin: String,
}

/// One entry of the stock ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LedgerEntry {
    /// Position in this node's ledger, from 1, without gaps.
    pub seq: u64,
    /// The SKU moved.
    pub sku: Sku,
    /// When it was committed, ms since the Unix epoch.
    pub at_ms: u64,
    /// What moved.
    pub movement: Movement,
    /// The SKU's balance after this movement.
    pub balance: Balance,
}

/// A pick wave: lines of several orders sorted for one walk through the aisles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Wave {
    /// Wave number.
    pub id: u64,
    /// When it was built.
    pub created_at_ms: u64,
    /// Orders on it.
    pub orders: Vec<OrderId>,
    /// Pick list, sorted by bin, then SKU, then order.
    pub lines: Vec<PickLine>,
}

/// One line of a pick list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PickLine {
    /// Bin location.
    pub bin: String,
    /// The SKU.
    pub sku: Sku,
    /// The order it is for.
    pub order: OrderId,
    /// Units to pick.
    pub qty: u32,
}

/// What changed, as read by sync from [`Store::feed_after`](super::Store::feed_after).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeedEntry {
    /// An order was created or changed.
    Order(OrderId),
    /// A SKU's balance changed.
    Stock(Sku),
    /// A catalog item was created or changed.
    Catalog(Sku),
    /// A receipt against a purchase order was booked (its id).
    Receipt(String),
    /// A receipt against a return (RMA) was booked (its id).
    RmaReceipt(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct IdempotencyRecord {
    pub(super) body_sha256: [u8; 32],
    pub(super) order: OrderId,
    pub(super) at_ms: u64,
}

/// A shortfall of one SKU when an order cannot be reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shortfall {
    /// The SKU.
    pub sku: Sku,
    /// Units available.
    pub available: u64,
    /// Units requested.
    pub requested: u64,
    /// Units that are physically available but escrowed to the hub for channel orders.
    pub held_for_hub: u64,
}

/// A picker's confirmation of one line.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
pub struct PickConfirmation {
    /// The SKU.
    pub sku: Sku,
    /// Units actually picked (0 to the line's quantity).
    pub picked: u32,
}
