//! The shape of the Automerge documents that nodes and the hub share, and who owns which part of them.
//!
//! Two kinds of document, named by their [`DocId`]:
//! - `order/<order-id>`: created by the node that accepted the order. The parts nobody edits after creation
//!   (the [`OrderDraft`]: lines, ship-to, channel, ...) are ONE bytes value, postcard-encoded: an order is read
//!   and written whole, and one value is ten times cheaper than nested maps (measured ~0.04 ms / ~470 bytes
//!   against ~0.4 ms / ~770 bytes). Fulfillment progress lives under [`keys::NODE`], which only the fulfilling
//!   node writes; routing and customer requests live under [`keys::HUB`], which only the hub writes.
//! - `stock/<node-id>`: one per node, written only by that node: a map SKU → postcard [`Balance`] plus
//!   `updated_at_ms`. Stock is not an Automerge counter: a site's balance is the site's ledger's business,
//!   and the hub only needs to see the latest figures.
//!
//! - `escrow/<node-id>`: one per node, written only by the hub: a map SKU → postcard [`EscrowCounter`], the
//!   hub's view of the stock rights it shares with that site. The site's view travels in its stock document
//!   (under [`keys::ESCROW`]); both sides merge the other's view by element-wise max (every cell of the
//!   counter has one writer), see `oms_protocol::escrow`.
//! - `inbound/<node-id>`: one per node, written only by the hub: a map purchase order id → postcard
//!   [`InboundPo`], what the site is to receive (the order's lines, what the hub counts as received and
//!   short-closed, and the ASNs announced). The site's receipts travel back in its stock document (under
//!   [`keys::RECEIPTS`], receipt id → postcard [`SiteReceipt`]), which the hub applies once per receipt id.
//!   The same document carries the approved returns (RMAs) the site is to receive, under [`keys::RMAS`]
//!   (RMA id → postcard [`InboundRma`]); the site's receipts against them travel back in its stock document
//!   under [`keys::RMA_RECEIPTS`] (receipt id → postcard [`SiteRmaReceipt`]).
//!   **Receipts do not pile up**: the hub acknowledges, in `inbound/<node>`, the receipts it has durably
//!   applied that are still in the site's stock document ([`keys::RECEIPTS_APPLIED`],
//!   [`keys::RMA_RECEIPTS_APPLIED`]: receipt id → when acknowledged; [`write_receipt_acks`]), and the site
//!   removes those receipts from its stock document once they are older than a grace period
//!   ([`prune_receipts`]). The hub drops an acknowledgement once the receipt is gone from the stock
//!   document, so both maps hold only receipts in flight. The hub's own table of applied receipt ids (never
//!   pruned) keeps a receipt seen again from being applied twice; a receipt the hub has not applied has no
//!   acknowledgement and is never removed.
//! - Orders the hub takes from channels are `order/hub-<seq>.<n>` documents the hub creates (origin `hub`,
//!   site = the node it assigned), one per fulfillment order; the node writes their progress as for its own.
//!
//! Every field has exactly one owner, so concurrent writers never conflict and the hub can check a change by
//! which top-level keys it touches ([`check_writer`]). The types encoded as bytes here are postcard, whose
//! layout is positional: add fields only at the end of [`Progress`], and bump [`SCHEMA_VERSION`] otherwise.
//!
//! Here: the documents' names and keys, and the helpers every part uses; `order.rs`: the order documents;
//! `state.rs`: the stock, escrow and inbound documents; `check.rs`: who may write what ([`check_writer`]).

use std::collections::BTreeSet;

use crate::domain::{Balance, Disposition, FulfillmentState, NodeId, OrderDraft, OrderId, Sku};
use crate::escrow::EscrowCounter;
use crate::wire::DocId;
use automerge::{AutoCommit, ObjType, Patch, PatchAction, Prop, ROOT, ReadDoc, transaction::Transactable};
use serde::{Deserialize, Serialize};

use crate::records::{FulfillmentLine, OrderRecord, ReturnRecord, Shipment, TimelineEntry};

/// Version of the document layout, stored in every document under [`keys::V`].
pub const SCHEMA_VERSION: u64 = 1;
/// Prefix of order document ids.
pub const ORDER_PREFIX: &str = "order/";
/// Prefix of stock document ids.
pub const STOCK_PREFIX: &str = "stock/";
/// Prefix of the hub's escrow document ids.
pub const ESCROW_PREFIX: &str = "escrow/";
/// Prefix of the hub's inbound (expected receipts) document ids.
pub const INBOUND_PREFIX: &str = "inbound/";
/// The origin of orders the hub creates (one name with [`crate::domain::HUB_ORDER_PREFIX`]).
pub use crate::domain::HUB_ORIGIN;

mod check;
mod order;
mod state;
#[cfg(test)]
mod tests;

pub use check::*;
pub use order::*;
pub use state::*;

/// Keys of the documents.
pub mod keys {
    /// Layout version (root, written at creation).
    pub const V: &str = "v";
    /// Order id (root of an order document, written at creation).
    pub const ID: &str = "id";
    /// The node that accepted the order (written at creation).
    pub const ORIGIN: &str = "origin";
    /// The node fulfilling the order (written at creation).
    pub const SITE: &str = "site";
    /// When the order was accepted, ms since the Unix epoch (written at creation).
    pub const CREATED_AT_MS: &str = "created_at_ms";
    /// postcard of the `OrderDraft` (written at creation).
    pub const DRAFT: &str = "draft";
    /// Map owned by the fulfilling node.
    pub const NODE: &str = "node";
    /// Map owned by the hub.
    pub const HUB: &str = "hub";
    /// Fulfillment state as text (in [`NODE`]).
    pub const STATUS: &str = "status";
    /// postcard of `Progress` (in [`NODE`]).
    pub const PROGRESS: &str = "progress";
    /// Last write by the owner, ms since the Unix epoch.
    pub const UPDATED_AT_MS: &str = "updated_at_ms";
    /// The owning node of a stock document (root, written at creation).
    pub const OWNER: &str = "node";
    /// Map SKU → postcard `Balance` in a stock document.
    pub const SKUS: &str = "skus";
    /// The hub asks the node to cancel, ms since the Unix epoch (in [`HUB`]).
    pub const CANCEL_REQUESTED_AT_MS: &str = "cancel_requested_at_ms";
    /// The customer order a hub-created fulfillment order belongs to (in [`HUB`]).
    pub const PARENT: &str = "parent";
    /// The carrier reported the shipment delivered, ms since the Unix epoch (in [`HUB`]); the fulfilling
    /// node applies its own `Deliver` step to a shipped order that carries it.
    pub const CARRIER_DELIVERED_AT_MS: &str = "carrier_delivered_at_ms";
    /// Map SKU → postcard `EscrowCounter` (in a stock document: the site's view; in an escrow document: the
    /// hub's view).
    pub const ESCROW: &str = "escrow";
    /// postcard `SiteInfo` in a stock document: where the site is and what it can take.
    pub const SITE_INFO: &str = "site_info";
    /// postcard `ShippingSchedule` in a stock document: when the site's carriers collect. Absent when the site
    /// has no schedule (a separate key, so a hub reads `SITE_INFO` of sites from before schedules unchanged).
    pub const SHIPPING: &str = "shipping";
    /// The fulfilling node froze the finished order at this time, ms since the Unix epoch (in [`NODE`]). The
    /// change that sets it is the document's last: nobody may change a frozen order document.
    pub const FROZEN_AT_MS: &str = "frozen_at_ms";
    /// Map purchase order id → postcard `InboundPo` (in an inbound document).
    pub const EXPECTED: &str = "expected";
    /// Map receipt id → postcard `SiteReceipt` (in a stock document).
    pub const RECEIPTS: &str = "receipts";
    /// Map RMA id → postcard `InboundRma` (in an inbound document).
    pub const RMAS: &str = "rmas";
    /// Map receipt id → postcard `SiteRmaReceipt` (in a stock document).
    pub const RMA_RECEIPTS: &str = "rma_receipts";
    /// Map receipt id → ms the hub acknowledged it (in an inbound document): receipts under [`RECEIPTS`] of
    /// the site's stock document that the hub has applied, which the site may remove.
    pub const RECEIPTS_APPLIED: &str = "receipts_applied";
    /// The same for [`RMA_RECEIPTS`].
    pub const RMA_RECEIPTS_APPLIED: &str = "rma_receipts_applied";
}

/// Root keys of an order document that are written once, when the node creates it.
const ORDER_CREATION_KEYS: [&str; 6] = [keys::V, keys::ID, keys::ORIGIN, keys::SITE, keys::CREATED_AT_MS, keys::DRAFT];

/// A document's contents do not follow this layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// A key is missing or has the wrong type.
    #[error("document {doc}: key {key:?} is missing or not a {expected}")]
    BadField {
        /// The document.
        doc: String,
        /// The key.
        key: &'static str,
        /// The type expected.
        expected: &'static str,
    },
    /// A bytes value does not decode.
    #[error("document {doc}: {key:?} does not decode: {detail}")]
    Decode {
        /// The document.
        doc: String,
        /// The key.
        key: String,
        /// Why.
        detail: String,
    },
    /// Automerge refused an operation.
    #[error("automerge: {0}")]
    Automerge(String),
}

impl From<automerge::AutomergeError> for SchemaError {
    fn from(e: automerge::AutomergeError) -> Self {
        SchemaError::Automerge(e.to_string())
    }
}

/// What a document id names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocKind {
    /// `order/<id>`.
    Order(OrderId),
    /// `stock/<node>`, or a later generation of it (`stock/<node>#<n>`, see [`crate::generations`]).
    Stock(NodeId),
    /// `escrow/<node>` (hub-owned), or a later generation of it.
    Escrow(NodeId),
    /// `inbound/<node>` (hub-owned), or a later generation of it.
    Inbound(NodeId),
}

impl DocKind {
    /// Parses a document id; `None` for ids outside this layout.
    pub fn of(doc: &DocId) -> Option<DocKind> {
        let s = doc.as_str();
        if let Some(id) = s.strip_prefix(ORDER_PREFIX) {
            return OrderId::parse(id).ok().map(DocKind::Order);
        }
        // A site's state documents come in generations (`stock/<node>#<n>`, see [`crate::generations`]).
        let (s, _) = crate::generations::split(s)?;
        if let Some(node) = s.strip_prefix(STOCK_PREFIX) {
            return NodeId::parse(node).ok().map(DocKind::Stock);
        }
        if let Some(node) = s.strip_prefix(ESCROW_PREFIX) {
            return NodeId::parse(node).ok().map(DocKind::Escrow);
        }
        if let Some(node) = s.strip_prefix(INBOUND_PREFIX) {
            return NodeId::parse(node).ok().map(DocKind::Inbound);
        }
        None
    }
}

/// `order/<id>`. Order ids are at most 64 bytes, so this is always a valid [`DocId`]; `None` is unreachable
/// but kept as a value rather than a panic.
pub fn order_doc(id: &OrderId) -> Option<DocId> {
    DocId::new(format!("{ORDER_PREFIX}{id}"))
}

/// `stock/<node>`.
pub fn stock_doc(node: &NodeId) -> Option<DocId> {
    DocId::new(format!("{STOCK_PREFIX}{node}"))
}

/// `escrow/<node>`.
pub fn escrow_doc(node: &NodeId) -> Option<DocId> {
    DocId::new(format!("{ESCROW_PREFIX}{node}"))
}

/// `inbound/<node>`.
pub fn inbound_doc(node: &NodeId) -> Option<DocId> {
    DocId::new(format!("{INBOUND_PREFIX}{node}"))
}

/// The site that numbered `id` (`wh-north` for `wh-north-0000000042`): the node that created the order.
pub fn order_origin(id: &OrderId) -> Option<&str> {
    id.as_str().rsplit_once('-').map(|(site, _)| site)
}

fn enc<T: Serialize>(v: &T, doc: &str, key: &str) -> Result<Vec<u8>, SchemaError> {
    postcard::to_allocvec(v).map_err(|e| SchemaError::Decode {
        doc: doc.into(),
        key: key.into(),
        detail: e.to_string(),
    })
}

fn map_obj(doc: &mut AutoCommit, parent: &automerge::ObjId, key: &str) -> Result<automerge::ObjId, SchemaError> {
    match doc.get(parent, key)? {
        Some((automerge::Value::Object(ObjType::Map), id)) => Ok(id),
        _ => Ok(doc.put_object(parent, key, ObjType::Map)?),
    }
}

fn get_bytes(doc: &AutoCommit, obj: &automerge::ObjId, key: &str) -> Result<Option<Vec<u8>>, SchemaError> {
    Ok(doc.get(obj, key)?.and_then(|(v, _)| v.as_bytes().map(<[u8]>::to_vec)))
}

fn get_str(doc: &AutoCommit, obj: &automerge::ObjId, key: &str) -> Result<Option<String>, SchemaError> {
    Ok(doc.get(obj, key)?.and_then(|(v, _)| v.as_str().map(str::to_owned)))
}

fn get_u64(doc: &AutoCommit, obj: &automerge::ObjId, key: &str) -> Result<Option<u64>, SchemaError> {
    Ok(doc.get(obj, key)?.and_then(|(v, _)| v.as_u64()))
}

/// Most keys [`MapValues`] keeps of one map: an order's maps hold a handful; a map with more (a writer that
/// broke the layout) is read no further, and what a reader then misses reads as absent.
const MAP_VALUES_MAX: usize = 64;

/// The values of a map's keys, read in one pass over the map ([`ReadDoc::map_range`]), for a reader of many
/// keys of one map. Each `get` seeks its key through the document's operation columns (≈ 1 µs in an order
/// document; reading an order took fifteen), and one pass costs about as much as four. The values are the
/// ones `get` answers: the winner of concurrent writes, a counter with its increments.
struct MapValues(Vec<(String, automerge::Value<'static>, automerge::ObjId)>);

impl MapValues {
    fn read(doc: &AutoCommit, obj: &automerge::ObjId) -> MapValues {
        MapValues(
            doc.map_range(obj, ..)
                .take(MAP_VALUES_MAX)
                .map(|item| {
                    let id = item.id();
                    (item.key.into_owned(), item.value.into_value(), id)
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&automerge::Value<'static>> {
        self.0.iter().find(|(k, _, _)| k == key).map(|(_, v, _)| v)
    }

    fn str(&self, key: &str) -> Option<String> {
        self.get(key).and_then(|v| v.as_str().map(str::to_owned))
    }

    fn u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(automerge::Value::as_u64)
    }

    fn bytes(&self, key: &str) -> Option<&[u8]> {
        self.get(key).and_then(|v| v.as_bytes())
    }

    /// The map under `key`, if the value there is a map.
    fn map(&self, key: &str) -> Option<&automerge::ObjId> {
        self.0
            .iter()
            .find(|(k, v, _)| k == key && matches!(v, automerge::Value::Object(ObjType::Map)))
            .map(|(_, _, id)| id)
    }
}

/// The root key a patch touches, or `None` if it is not a map key of the root (which no layout allows).
fn root_key(p: &Patch) -> Option<String> {
    if let Some((obj, prop)) = p.path.first() {
        return match (obj == &ROOT, prop) {
            (true, Prop::Map(k)) => Some(k.clone()),
            _ => None,
        };
    }
    if p.obj != ROOT {
        return None;
    }
    match &p.action {
        PatchAction::PutMap { key, .. } | PatchAction::DeleteMap { key } => Some(key.clone()),
        PatchAction::Increment { prop: Prop::Map(k), .. } | PatchAction::Conflict { prop: Prop::Map(k) } => {
            Some(k.clone())
        }
        _ => None,
    }
}
