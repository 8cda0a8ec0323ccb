//! The records of an order's fulfillment that a site keeps and shares with the hub: the order as accepted,
//! its lines, timeline, shipment and returns. The node stores them in `node.redb`; the order document
//! ([`crate::schema`]) carries the parts the hub reads. Both sides decode the same types, so they live here.
//!
//! postcard encodes these positionally: add fields only at the end of a record, and migrate stores otherwise.

use serde::{Deserialize, Serialize};

use crate::domain::{Channel, Disposition, FulfillmentState, NodeId, OrderDraft, OrderId, ReturnState, Sku};

/// Longest idempotency key, bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;
/// Expired idempotency records a write transaction forgets at most (node and hub), so that pruning never
/// makes one commit slow.
pub const IDEMPOTENCY_PRUNE_MAX: usize = 64;

/// True if `key` can be an idempotency key: 1 to [`IDEMPOTENCY_KEY_BYTES_MAX`] visible ASCII characters.
pub fn idempotency_key_valid(key: &str) -> bool {
    !key.is_empty() && key.len() <= IDEMPOTENCY_KEY_BYTES_MAX && key.bytes().all(|b| b.is_ascii_graphic())
}

/// The key an idempotency record is stored under: the order's channel, a unit separator (which neither a
/// channel nor a key may contain) and the client's key. Two channels sending the same key get two orders, and
/// a channel can never replay another's. Records written before keys were scoped are stored under the bare
/// key; node and hub still honour those (same body hash) so that an upgrade loses no idempotency.
pub fn scoped_idempotency_key(channel: &Channel, key: &str) -> String {
    format!("{}\u{1f}{key}", channel.as_str())
}

/// Hash of the canonical (postcard) encoding of an order, so that the same order sent with other whitespace
/// or key order is still "the same body" for idempotency. Node and hub compare requests by it.
pub fn draft_sha256(draft: &OrderDraft) -> Result<[u8; 32], postcard::Error> {
    use sha2::Digest;
    Ok(sha2::Sha256::digest(postcard::to_allocvec(draft)?).into())
}

/// One line of a fulfillment order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FulfillmentLine {
    /// The SKU.
    pub sku: Sku,
    /// Units ordered.
    pub qty: u32,
    /// Units confirmed picked; `None` until the picker confirms the line.
    pub picked: Option<u32>,
    /// Units shipped.
    pub shipped: u32,
    /// Units returned so far.
    pub returned: u32,
}

/// A moment in an order's life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TimelineEntry {
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// The state entered.
    pub status: FulfillmentState,
    /// What happened, for people.
    pub note: String,
}

/// The carrier hand-over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Shipment {
    /// Carrier name.
    pub carrier: String,
    /// Tracking number.
    pub tracking: String,
    /// Parcels handed over.
    pub parcels: u32,
}

/// A customer return received at this site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReturnRecord {
    /// Number of the return within the order, from 1.
    pub id: u32,
    /// Units per SKU.
    pub lines: Vec<ReturnLine>,
    /// Restocked or scrapped.
    pub disposition: Disposition,
    /// Where the return stands.
    pub status: ReturnState,
    /// When it was received.
    pub received_at_ms: u64,
}

/// A returned SKU and quantity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReturnLine {
    /// The SKU.
    pub sku: Sku,
    /// Units.
    pub qty: u32,
}

/// An order at this site together with its fulfillment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderRecord {
    /// The order id.
    pub id: OrderId,
    /// The site fulfilling it.
    pub site: NodeId,
    /// The fulfillment state.
    pub status: FulfillmentState,
    /// The order as submitted.
    pub order: OrderDraft,
    /// Fulfillment progress per line.
    pub lines: Vec<FulfillmentLine>,
    /// The pick wave it is on, if any.
    pub wave: Option<u64>,
    /// Parcels packed.
    pub parcels: Option<u32>,
    /// Carrier hand-over.
    pub shipment: Option<Shipment>,
    /// Returns received.
    pub returns: Vec<ReturnRecord>,
    /// Every state change.
    pub timeline: Vec<TimelineEntry>,
    /// When the order was accepted, ms since the Unix epoch.
    pub created_at_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_keys_cannot_collide_across_channels() {
        let web = Channel::parse("web").unwrap();
        let pos = Channel::parse("pos-3").unwrap();
        assert_ne!(scoped_idempotency_key(&web, "k1"), scoped_idempotency_key(&pos, "k1"));
        assert_ne!(scoped_idempotency_key(&web, "k1"), "k1");
        assert!(!idempotency_key_valid(&scoped_idempotency_key(&web, "k1")), "never a bare key");
    }
}
