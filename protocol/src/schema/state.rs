//! The sites' state documents: stock (balances, the site's escrow view, its receipts, site info and shipping
//! schedule), the hub's escrow view per site, and the inbound document (purchase orders, ASNs, approved
//! returns and the hub's acknowledgements of receipts).

use super::*;

/// One line of a purchase order a site is to receive, as the hub publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundLine {
    /// The PO line number.
    pub line: u32,
    /// The SKU.
    pub sku: Sku,
    /// Units ordered.
    pub ordered: u64,
    /// Units the hub counts as received (from the site's receipts it applied).
    pub received: u64,
    /// Units short-closed (will never come).
    pub short_closed: u64,
}

/// An advance shipping notice as the hub publishes it: units of some lines on their way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundAsn {
    /// The ASN id.
    pub id: String,
    /// (PO line, units shipped).
    pub lines: Vec<(u32, u64)>,
    /// Expected arrival, epoch day.
    pub expected_day: u64,
}

/// A purchase order a site is to receive (hub-owned, in `inbound/<node>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundPo {
    /// The purchase order id.
    pub po: String,
    /// Its state at the hub (`sent`, `partially_received`, ...).
    pub state: String,
    /// Whether units may still be received against it.
    pub receivable: bool,
    /// Expected arrival, epoch day.
    pub expected_day: u64,
    /// Its lines.
    pub lines: Vec<InboundLine>,
    /// Its ASNs.
    pub asns: Vec<InboundAsn>,
}

/// A receipt a site booked against a purchase order (node-owned, in its stock document).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteReceipt {
    /// The receipt id (unique at the site).
    pub id: String,
    /// The purchase order.
    pub po: String,
    /// The ASN it was received under, if any.
    pub asn: Option<String>,
    /// (PO line, units received); unplanned units are not here.
    pub lines: Vec<(u32, u64)>,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
}

/// One line of a return (RMA) a site is to receive, as the hub publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundRmaLine {
    /// The SKU.
    pub sku: Sku,
    /// Units the hub approved for return.
    pub qty: u64,
    /// Units the hub counts as received (from the site's receipts it applied).
    pub received: u64,
}

/// An approved return a site is to receive (hub-owned, in `inbound/<node>` under [`keys::RMAS`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundRma {
    /// The RMA id.
    pub rma: String,
    /// The fulfillment order (at this site) whose units come back.
    pub order: String,
    /// Its state at the hub (`approved`, `partially_received`, `cancelled`, ...).
    pub state: String,
    /// Whether units may still be received against it.
    pub receivable: bool,
    /// Its lines.
    pub lines: Vec<InboundRmaLine>,
}

/// One line of a site's receipt against an RMA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteRmaLine {
    /// The SKU.
    pub sku: Sku,
    /// Units received.
    pub qty: u64,
    /// Back on the shelf or written off.
    pub disposition: Disposition,
}

/// A receipt a site booked against an RMA (node-owned, in its stock document under [`keys::RMA_RECEIPTS`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteRmaReceipt {
    /// The receipt id (unique at the site).
    pub id: String,
    /// The RMA.
    pub rma: String,
    /// The fulfillment order the units came back from.
    pub order: String,
    /// Units received per SKU and disposition.
    pub lines: Vec<SiteRmaLine>,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
}

/// What a node tells the hub about its site, for routing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteInfo {
    /// Display name.
    pub name: String,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Preference among equal plans; lower is preferred.
    pub priority: u32,
    /// Shipments a day.
    pub capacity_per_day: u32,
    /// Region.
    pub region: String,
}

/// A stock document's contents.
#[derive(Debug, Clone, PartialEq)]
pub struct StockView {
    /// The node.
    pub node: NodeId,
    /// Last write, ms since the Unix epoch.
    pub updated_at_ms: u64,
    /// Balances by SKU, sorted.
    pub skus: Vec<(Sku, Balance)>,
}

fn ensure_owner(doc: &mut AutoCommit, node: &NodeId) -> Result<(), SchemaError> {
    if doc.get(ROOT, keys::V)?.is_none() {
        doc.put(ROOT, keys::V, SCHEMA_VERSION)?;
        doc.put(ROOT, keys::OWNER, node.as_str())?;
    }
    Ok(())
}

/// Writes one SKU's escrow counter under [`keys::ESCROW`]: into the node's stock document (by the node) or
/// into `escrow/<node>` (by the hub). Returns true if the document changed.
pub fn write_escrow(
    doc: &mut AutoCommit,
    node: &NodeId,
    counter: &EscrowCounter,
    now_ms: u64,
) -> Result<bool, SchemaError> {
    ensure_owner(doc, node)?;
    put_keyed(doc, node, keys::ESCROW, counter.sku().as_str(), counter, now_ms)
}

/// [`write_escrow`] of `counter` merged (element-wise max) with the counter the document holds for its SKU,
/// so that a view written late never puts an older state over a newer one. A stored counter that does not
/// decode, or names another SKU, is replaced. Returns true if the document changed.
pub fn merge_escrow(
    doc: &mut AutoCommit,
    node: &NodeId,
    counter: &EscrowCounter,
    now_ms: u64,
) -> Result<bool, SchemaError> {
    let sku = counter.sku().as_str();
    let held = match doc.get(ROOT, keys::ESCROW)? {
        Some((automerge::Value::Object(ObjType::Map), obj)) => get_bytes(doc, &obj, sku)?
            .and_then(|b| postcard::from_bytes::<EscrowCounter>(&b).ok())
            .filter(|c| c.sku().as_str() == sku),
        _ => None,
    };
    let merged = match held {
        Some(mut c) => {
            // Same SKU (checked above): the merge cannot fail.
            c.merge(counter).map_err(|e| SchemaError::Automerge(e.to_string()))?;
            c
        }
        None => counter.clone(),
    };
    write_escrow(doc, node, &merged, now_ms)
}

/// Reads the escrow counters under [`keys::ESCROW`], at most `max`. A counter that does not decode (or
/// claims another SKU than its key) is skipped and reported in the second list.
pub fn read_escrow(doc: &AutoCommit, max: usize) -> Result<(Vec<EscrowCounter>, Vec<String>), SchemaError> {
    read_keyed(doc, keys::ESCROW, max, escrow_under)
}

/// Whether counter `c` is stored under its own SKU `key`.
fn escrow_under(key: &str, c: &EscrowCounter) -> bool {
    c.sku().as_str() == key
}

/// [`read_escrow`] of the SKU keys `skus` only (those [`StockTouched::escrow`] lists); a key the document does
/// not hold is skipped, one that does not decode is in the second list.
pub fn read_escrow_of<'a>(
    doc: &AutoCommit,
    skus: impl IntoIterator<Item = &'a str>,
) -> Result<(Vec<EscrowCounter>, Vec<String>), SchemaError> {
    match doc.get(ROOT, keys::ESCROW)? {
        Some((automerge::Value::Object(ObjType::Map), obj)) => read_keys(doc, &obj, skus, escrow_under),
        _ => Ok((Vec::new(), Vec::new())),
    }
}

/// Writes one purchase order into `inbound/<node>` (hub only). Returns true if the document changed.
pub fn write_inbound(doc: &mut AutoCommit, node: &NodeId, po: &InboundPo, now_ms: u64) -> Result<bool, SchemaError> {
    ensure_owner(doc, node)?;
    put_keyed(doc, node, keys::EXPECTED, &po.po, po, now_ms)
}

/// Writes one receipt into the site's stock document (node only). Returns true if the document changed.
pub fn write_receipt(doc: &mut AutoCommit, node: &NodeId, r: &SiteReceipt, now_ms: u64) -> Result<bool, SchemaError> {
    ensure_owner(doc, node)?;
    put_keyed(doc, node, keys::RECEIPTS, &r.id, r, now_ms)
}

/// Writes one approved return into `inbound/<node>` (hub only). Returns true if the document changed.
pub fn write_inbound_rma(
    doc: &mut AutoCommit,
    node: &NodeId,
    rma: &InboundRma,
    now_ms: u64,
) -> Result<bool, SchemaError> {
    ensure_owner(doc, node)?;
    put_keyed(doc, node, keys::RMAS, &rma.rma, rma, now_ms)
}

/// Writes one receipt against an RMA into the site's stock document (node only). Returns true if the
/// document changed.
pub fn write_rma_receipt(
    doc: &mut AutoCommit,
    node: &NodeId,
    r: &SiteRmaReceipt,
    now_ms: u64,
) -> Result<bool, SchemaError> {
    ensure_owner(doc, node)?;
    put_keyed(doc, node, keys::RMA_RECEIPTS, &r.id, r, now_ms)
}

/// The returns of an inbound document, at most `max`; keys that do not decode are the second list.
pub fn read_inbound_rmas(doc: &AutoCommit, max: usize) -> Result<(Vec<InboundRma>, Vec<String>), SchemaError> {
    read_keyed(doc, keys::RMAS, max, |k, v: &InboundRma| v.rma == k)
}

/// The receipts against RMAs of a stock document, at most `max`; keys that do not decode are the second list.
pub fn read_rma_receipts(doc: &AutoCommit, max: usize) -> Result<(Vec<SiteRmaReceipt>, Vec<String>), SchemaError> {
    read_keyed(doc, keys::RMA_RECEIPTS, max, |k, v: &SiteRmaReceipt| v.id == k)
}

/// Puts `v` at `map[key]` unless it is there already; stamps `updated_at_ms` when it writes.
fn put_keyed<T: Serialize>(
    doc: &mut AutoCommit,
    node: &NodeId,
    map: &str,
    key: &str,
    v: &T,
    now_ms: u64,
) -> Result<bool, SchemaError> {
    let obj = map_obj(doc, &ROOT, map)?;
    let bytes = enc(v, node.as_str(), key)?;
    if get_bytes(doc, &obj, key)?.as_deref() == Some(&bytes[..]) {
        return Ok(false);
    }
    doc.put(&obj, key, bytes)?;
    doc.put(ROOT, keys::UPDATED_AT_MS, now_ms)?;
    Ok(true)
}

/// Reads the values of `map`, at most `max`, keeping those `ok` accepts for their key; the keys of values
/// that do not decode (or that `ok` refuses) are the second list.
fn read_keyed<T: for<'de> Deserialize<'de>>(
    doc: &AutoCommit,
    map: &str,
    max: usize,
    ok: impl Fn(&str, &T) -> bool,
) -> Result<(Vec<T>, Vec<String>), SchemaError> {
    match doc.get(ROOT, map)? {
        Some((automerge::Value::Object(ObjType::Map), obj)) => read_keys(doc, &obj, doc.keys(&obj).take(max), ok),
        _ => Ok((Vec::new(), Vec::new())),
    }
}

/// The values under `keys` of map `obj` (a key it does not hold is skipped), keeping those `ok` accepts for
/// their key; the keys of values that do not decode (or that `ok` refuses) are the second list.
fn read_keys<T: for<'de> Deserialize<'de>, K: AsRef<str>>(
    doc: &AutoCommit,
    obj: &automerge::ObjId,
    keys: impl IntoIterator<Item = K>,
    ok: impl Fn(&str, &T) -> bool,
) -> Result<(Vec<T>, Vec<String>), SchemaError> {
    let (mut out, mut bad) = (Vec::new(), Vec::new());
    for key in keys {
        let key = key.as_ref();
        let Some(b) = get_bytes(doc, obj, key)? else { continue };
        match postcard::from_bytes::<T>(&b) {
            Ok(v) if ok(key, &v) => out.push(v),
            _ => bad.push(key.to_owned()),
        }
    }
    Ok((out, bad))
}

/// The purchase orders of an inbound document, at most `max`; keys that do not decode are the second list.
pub fn read_inbound(doc: &AutoCommit, max: usize) -> Result<(Vec<InboundPo>, Vec<String>), SchemaError> {
    read_keyed(doc, keys::EXPECTED, max, |k, v: &InboundPo| v.po == k)
}

/// The receipts of a stock document, at most `max`; keys that do not decode are the second list.
pub fn read_receipts(doc: &AutoCommit, max: usize) -> Result<(Vec<SiteReceipt>, Vec<String>), SchemaError> {
    read_keyed(doc, keys::RECEIPTS, max, |k, v: &SiteReceipt| v.id == k)
}

/// Sets the hub's acknowledgements under `map` ([`keys::RECEIPTS_APPLIED`] or [`keys::RMA_RECEIPTS_APPLIED`])
/// of `inbound/<node>` to exactly `applied` (hub only): the receipts of the site's stock document it has
/// applied durably. Ids there already keep their time; ids not in `applied` (their receipt left the stock
/// document) are removed. Returns true if the document changed.
pub fn write_receipt_acks(
    doc: &mut AutoCommit,
    node: &NodeId,
    map: &str,
    applied: &std::collections::BTreeSet<String>,
    now_ms: u64,
) -> Result<bool, SchemaError> {
    let exists = matches!(doc.get(ROOT, map)?, Some((automerge::Value::Object(ObjType::Map), _)));
    if !exists && applied.is_empty() {
        return Ok(false);
    }
    ensure_owner(doc, node)?;
    let obj = map_obj(doc, &ROOT, map)?;
    let held: Vec<String> = doc.keys(&obj).collect();
    let mut changed = !exists;
    for k in held.iter().filter(|k| !applied.contains(k.as_str())) {
        doc.delete(&obj, k.as_str())?;
        changed = true;
    }
    for id in applied.iter().filter(|id| !held.contains(id)) {
        doc.put(&obj, id.as_str(), now_ms)?;
        changed = true;
    }
    if changed {
        doc.put(ROOT, keys::UPDATED_AT_MS, now_ms)?;
    }
    Ok(changed)
}

/// The receipts the hub acknowledged in an inbound document: (purchase order receipts, RMA receipts), at
/// most `max` of each.
pub fn read_receipt_acks(doc: &AutoCommit, max: usize) -> Result<ReceiptAcks, SchemaError> {
    let ids = |map: &str| -> Result<std::collections::BTreeSet<String>, SchemaError> {
        match doc.get(ROOT, map)? {
            Some((automerge::Value::Object(ObjType::Map), obj)) => Ok(doc.keys(&obj).take(max).collect()),
            _ => Ok(Default::default()),
        }
    };
    Ok(ReceiptAcks { po: ids(keys::RECEIPTS_APPLIED)?, rma: ids(keys::RMA_RECEIPTS_APPLIED)? })
}

/// Receipt ids the hub acknowledged ([`read_receipt_acks`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiptAcks {
    /// Under [`keys::RECEIPTS_APPLIED`].
    pub po: std::collections::BTreeSet<String>,
    /// Under [`keys::RMA_RECEIPTS_APPLIED`].
    pub rma: std::collections::BTreeSet<String>,
}

/// What [`prune_receipts`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Purchase order receipts removed.
    pub receipts: usize,
    /// RMA receipts removed.
    pub rma_receipts: usize,
    /// The earliest time an acknowledged receipt kept for its grace period may go, ms.
    pub next_at_ms: Option<u64>,
}

/// Removes from the site's stock document (node only) the receipts the hub acknowledged (`acks`) that were
/// booked at least `grace_ms` before `now_ms`, at most `max` in all. A receipt without an acknowledgement is
/// never removed. Returns what it removed and when the next acknowledged one is due.
pub fn prune_receipts(
    doc: &mut AutoCommit,
    acks: &ReceiptAcks,
    now_ms: u64,
    grace_ms: u64,
    max: usize,
) -> Result<Pruned, SchemaError> {
    let cutoff = now_ms.saturating_sub(grace_ms);
    let mut out = Pruned::default();
    let (n, next) = prune_keyed(doc, keys::RECEIPTS, &acks.po, cutoff, max, |r: &SiteReceipt| r.at_ms)?;
    out.receipts = n;
    out.next_at_ms = next;
    let (n, next) =
        prune_keyed(doc, keys::RMA_RECEIPTS, &acks.rma, cutoff, max.saturating_sub(n), |r: &SiteRmaReceipt| r.at_ms)?;
    out.rma_receipts = n;
    out.next_at_ms = match (out.next_at_ms, next) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
    .map(|at| at.saturating_add(grace_ms));
    if out.receipts + out.rma_receipts > 0 {
        doc.put(ROOT, keys::UPDATED_AT_MS, now_ms)?;
    }
    Ok(out)
}

/// Removes the values of `map` whose keys are in `acked` and whose time (`at`) is at or before `cutoff`, at
/// most `max`. Returns how many it removed and the earliest time of those it kept for being too recent (or
/// for `max`). A value that does not decode is left alone.
fn prune_keyed<T: for<'de> Deserialize<'de>>(
    doc: &mut AutoCommit,
    map: &str,
    acked: &std::collections::BTreeSet<String>,
    cutoff: u64,
    max: usize,
    at: impl Fn(&T) -> u64,
) -> Result<(usize, Option<u64>), SchemaError> {
    let Some((automerge::Value::Object(ObjType::Map), obj)) = doc.get(ROOT, map)? else { return Ok((0, None)) };
    let (mut removed, mut next) = (0usize, None::<u64>);
    for id in acked {
        let Some(b) = get_bytes(doc, &obj, id)? else { continue };
        let Ok(v) = postcard::from_bytes::<T>(&b) else { continue };
        let t = at(&v);
        if t <= cutoff && removed < max {
            doc.delete(&obj, id.as_str())?;
            removed += 1;
        } else {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
    }
    Ok((removed, next))
}

/// Writes the site's routing facts into its stock document. Returns true if the document changed.
pub fn write_site_info(doc: &mut AutoCommit, node: &NodeId, info: &SiteInfo, now_ms: u64) -> Result<bool, SchemaError> {
    ensure_owner(doc, node)?;
    let bytes = enc(info, node.as_str(), keys::SITE_INFO)?;
    if get_bytes(doc, &ROOT, keys::SITE_INFO)?.as_deref() == Some(&bytes[..]) {
        return Ok(false);
    }
    doc.put(ROOT, keys::SITE_INFO, bytes)?;
    doc.put(ROOT, keys::UPDATED_AT_MS, now_ms)?;
    Ok(true)
}

/// The site's routing facts from its stock document, if it published them.
pub fn read_site_info(doc: &AutoCommit) -> Option<SiteInfo> {
    get_bytes(doc, &ROOT, keys::SITE_INFO).ok().flatten().and_then(|b| postcard::from_bytes(&b).ok())
}

/// Writes the site's shipping schedule into its stock document, or removes it for `None`. Returns true if the
/// document changed.
pub fn write_shipping(
    doc: &mut AutoCommit,
    node: &NodeId,
    schedule: Option<&crate::shipping::ShippingSchedule>,
    now_ms: u64,
) -> Result<bool, SchemaError> {
    ensure_owner(doc, node)?;
    let current = get_bytes(doc, &ROOT, keys::SHIPPING)?;
    match schedule {
        Some(s) => {
            let bytes = enc(s, node.as_str(), keys::SHIPPING)?;
            if current.as_deref() == Some(&bytes[..]) {
                return Ok(false);
            }
            doc.put(ROOT, keys::SHIPPING, bytes)?;
        }
        None if current.is_some() => doc.delete(ROOT, keys::SHIPPING)?,
        None => return Ok(false),
    }
    doc.put(ROOT, keys::UPDATED_AT_MS, now_ms)?;
    Ok(true)
}

/// The site's shipping schedule from its stock document, if it published one that decodes.
pub fn read_shipping(doc: &AutoCommit) -> Option<crate::shipping::ShippingSchedule> {
    get_bytes(doc, &ROOT, keys::SHIPPING).ok().flatten().and_then(|b| postcard::from_bytes(&b).ok())
}

/// Writes one SKU's balance into the node's stock document. Returns true if the document changed.
pub fn write_stock(
    doc: &mut AutoCommit,
    node: &NodeId,
    sku: &Sku,
    balance: &Balance,
    now_ms: u64,
) -> Result<bool, SchemaError> {
    if doc.get(ROOT, keys::V)?.is_none() {
        doc.put(ROOT, keys::V, SCHEMA_VERSION)?;
        doc.put(ROOT, keys::OWNER, node.as_str())?;
    }
    let skus = map_obj(doc, &ROOT, keys::SKUS)?;
    let bytes = enc(balance, node.as_str(), sku.as_str())?;
    if get_bytes(doc, &skus, sku.as_str())?.as_deref() == Some(&bytes[..]) {
        return Ok(false);
    }
    doc.put(&skus, sku.as_str(), bytes)?;
    doc.put(ROOT, keys::UPDATED_AT_MS, now_ms)?;
    Ok(true)
}

/// Reads a stock document, at most `skus_max` SKUs (in key order).
pub fn read_stock(doc: &AutoCommit, name: &str, skus_max: usize) -> Result<StockView, SchemaError> {
    let bad = |key, expected| SchemaError::BadField { doc: name.into(), key, expected };
    let node = get_str(doc, &ROOT, keys::OWNER)?.ok_or_else(|| bad(keys::OWNER, "string"))?;
    let node = NodeId::parse(&node).map_err(|e| SchemaError::Decode {
        doc: name.into(),
        key: keys::OWNER.into(),
        detail: e.to_string(),
    })?;
    let updated_at_ms = get_u64(doc, &ROOT, keys::UPDATED_AT_MS)?.unwrap_or(0);
    let mut skus = Vec::new();
    if let Some((automerge::Value::Object(ObjType::Map), obj)) = doc.get(ROOT, keys::SKUS)? {
        for key in doc.keys(&obj).take(skus_max) {
            let Ok(sku) = Sku::parse(&key) else { continue };
            let Some(balance) = stock_balance(doc, name, &obj, &key)? else { continue };
            skus.push((sku, balance));
        }
    }
    Ok(StockView { node, updated_at_ms, skus })
}

/// One SKU's balance from the `skus` map `obj` of stock document `name`, if it has one.
fn stock_balance(
    doc: &AutoCommit,
    name: &str,
    obj: &automerge::ObjId,
    key: &str,
) -> Result<Option<Balance>, SchemaError> {
    let Some(b) = get_bytes(doc, obj, key)? else { return Ok(None) };
    postcard::from_bytes(&b).map(Some).map_err(|e| SchemaError::Decode {
        doc: name.into(),
        key: key.to_owned(),
        detail: e.to_string(),
    })
}

/// Reads the balances of the SKUs `keys` only (`None`: not in the document; keys that are no SKU are
/// skipped): what [`read_stock`] reads of them, at a cost proportional to the keys asked for rather than to
/// the document's SKUs.
pub fn read_stock_skus<'a>(
    doc: &AutoCommit,
    name: &str,
    keys: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<(Sku, Option<Balance>)>, SchemaError> {
    let obj = match doc.get(ROOT, keys::SKUS)? {
        Some((automerge::Value::Object(ObjType::Map), obj)) => Some(obj),
        _ => None,
    };
    let mut out = Vec::new();
    for key in keys {
        let Ok(sku) = Sku::parse(key) else { continue };
        let balance = match &obj {
            Some(obj) => stock_balance(doc, name, obj, key)?,
            None => None,
        };
        out.push((sku, balance));
    }
    Ok(out)
}

/// Most keys of one map [`keys_touched_since`] lists; past it the answer is "too many to list" (read the
/// whole map).
pub const STOCK_TOUCHED_MAX: usize = 10_000;

/// Most operations [`keys_touched_since`] decodes; past it the answer is "too many to list": reading the maps
/// whole costs less than decoding more.
pub const TOUCHED_OPS_MAX: usize = 4 * STOCK_TOUCHED_MAX;

/// For each of `maps` (keys of the root map), the keys that the changes `doc` holds beyond `before` touch: what
/// a diff from `before` to the heads shows of those maps, read from the operations of those changes instead.
/// Automerge's `diff` visits every operation of the document, and a stock document or an escrow view carries
/// thousands between two generations: the diff cost a node about a tenth of its CPU at 16 clients (its escrow
/// view diffed on every wake-up of the inbound task), and the hub as much per stock document received. The
/// changes since `before` are a few, and Automerge finds them by counter ranges. Written here because
/// Automerge offers the diff or the raw changes, nothing between.
///
/// A key is listed when an operation of those changes is on it, visible or not, so the answer holds every
/// key the diff shows and may hold more (a key put and deleted since `before`): a caller reads those keys
/// again, which is harmless. `None` for a map whose keys cannot be listed: the map itself was put or deleted
/// (created or replaced: any key may differ), or more than [`STOCK_TOUCHED_MAX`] keys; `None` for all when
/// `before` is empty (every map was created since), when an operation is on an object below one of the root's
/// maps (this layout has none) or on one the root no longer holds, or past [`TOUCHED_OPS_MAX`] operations.
pub fn keys_touched_since<const N: usize>(
    doc: &mut AutoCommit,
    before: &[automerge::ChangeHash],
    maps: [&str; N],
) -> [Option<BTreeSet<String>>; N] {
    use automerge::legacy::{Key, ObjectId, OpId};
    /// A legacy operation id of an object: how a decoded change names the object an operation is on.
    fn op_id(id: &automerge::ObjId) -> Option<OpId> {
        match id {
            automerge::ObjId::Id(counter, actor, _) => Some(OpId(*counter, actor.clone())),
            automerge::ObjId::Root => None,
        }
    }
    let unlisted = || std::array::from_fn(|_| None);
    // From nothing, every map was created since (and a diff would put each whole).
    if before.is_empty() {
        return unlisted();
    }
    // Counted from the changes' metadata before any change is built.
    let ops: u64 = doc.get_changes_meta(before).iter().map(|c| c.max_op.saturating_sub(c.start_op) + 1).sum();
    if ops > TOUCHED_OPS_MAX as u64 {
        return unlisted();
    }
    let mut out: [Option<BTreeSet<String>>; N] = std::array::from_fn(|_| Some(BTreeSet::new()));
    // The objects under the root's keys: one of `maps` (listed by key), or another (ignored).
    let mut objects: Vec<(OpId, Option<usize>)> = Vec::new();
    for (key, value, id) in MapValues::read(doc, &ROOT).0 {
        if let (automerge::Value::Object(_), Some(id)) = (value, op_id(&id)) {
            objects.push((id, maps.iter().position(|m| *m == key)));
        }
    }
    for change in &doc.get_changes(before) {
        for op in change.decode().operations {
            match (&op.obj, &op.key) {
                (ObjectId::Root, Key::Map(k)) => {
                    if let Some(i) = maps.iter().position(|m| *m == k.as_str()) {
                        out[i] = None;
                        if out.iter().all(Option::is_none) {
                            return out;
                        }
                    }
                }
                (ObjectId::Root, Key::Seq(_)) => return unlisted(),
                (ObjectId::Id(id), key) => match objects.iter().find(|(o, _)| o == id) {
                    Some((_, None)) => {}
                    Some((_, Some(i))) => {
                        if let Some(set) = &mut out[*i] {
                            match key {
                                Key::Map(k) if set.len() < STOCK_TOUCHED_MAX || set.contains(k.as_str()) => {
                                    set.insert(k.to_string());
                                }
                                _ => out[*i] = None,
                            }
                        }
                    }
                    // An object below one of the maps, or one the root no longer holds.
                    None => return unlisted(),
                },
            }
        }
    }
    out
}

/// What the accepted changes of a stock document touched, per map read by SKU key ([`keys_touched_since`]):
/// `None` for a map whose touched keys cannot be listed (read it whole). Both are `Some` of nothing for other
/// documents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StockTouched {
    /// SKU keys of the `skus` map (balances).
    pub skus: Option<BTreeSet<String>>,
    /// SKU keys of the `escrow` map (the site's escrow counters).
    pub escrow: Option<BTreeSet<String>>,
}
