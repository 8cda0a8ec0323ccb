//! Who may write what: the check of a writer's changes by the top-level keys they touch.

use super::*;

/// Who wrote a set of changes.
#[derive(Debug, Clone, Copy)]
pub enum Writer<'a> {
    /// A node, identified by its verified certificate.
    Node(&'a NodeId),
    /// The hub.
    Hub,
}

/// Why a change was refused: it touches what its writer does not own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{writer} may not write {what} of {doc}")]
pub struct Violation {
    /// The writer.
    pub writer: String,
    /// The document.
    pub doc: String,
    /// What was touched.
    pub what: String,
}

/// Checks that the changes between `before` and the current heads of `doc` touch only what `writer` owns:
/// a node writes the creation fields of its own order once, its `node` map, and its own stock document; the
/// hub writes the `hub` map of orders and nothing else. Nobody changes an order document that was frozen at
/// `before` ([`keys::FROZEN_AT_MS`]). `doc` must have been checked against the layout by id ([`DocKind::of`]).
pub fn check_writer(
    doc: &mut AutoCommit,
    name: &DocId,
    before: &[automerge::ChangeHash],
    writer: Writer<'_>,
) -> Result<(), Violation> {
    let patches = order_patches(doc, name, before);
    check_patches(doc, name, before, &patches, writer).map(drop)
}

/// The diff from `before` to the current heads for an order document, which [`check_patches`] checks key by
/// key; nothing for the others, whose check reads no patch (the diff visits every operation of a document: a
/// stock document carries thousands).
fn order_patches(doc: &mut AutoCommit, name: &DocId, before: &[automerge::ChangeHash]) -> Vec<Patch> {
    if !matches!(DocKind::of(name), Some(DocKind::Order(_))) {
        return Vec::new();
    }
    let after = doc.get_heads();
    doc.diff(before, &after)
}

/// What [`check_writer_touched`] read of changes it accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// For a stock document, the SKUs its changes touched ([`StockTouched`]).
    pub touched: StockTouched,
    /// For an order document a node wrote, the order as the check read it after the changes (origin, site,
    /// the node's last write, whether it is frozen), so the caller need not read it again.
    pub order: Option<OrderView>,
}

/// [`check_writer`], answering also what it read of the accepted changes ([`Accepted`]): for a stock
/// document which SKUs of its balances and of its escrow counters the changes touched
/// ([`keys_touched_since`]), for an order a node wrote the order.
pub fn check_writer_touched(
    doc: &mut AutoCommit,
    name: &DocId,
    before: &[automerge::ChangeHash],
    writer: Writer<'_>,
) -> Result<Accepted, Violation> {
    let patches = order_patches(doc, name, before);
    let order = check_patches(doc, name, before, &patches, writer)?;
    let touched = match DocKind::of(name) {
        Some(DocKind::Stock(_)) => {
            let [skus, escrow] = keys_touched_since(doc, before, [keys::SKUS, keys::ESCROW]);
            StockTouched { skus, escrow }
        }
        _ => StockTouched { skus: Some(BTreeSet::new()), escrow: Some(BTreeSet::new()) },
    };
    Ok(Accepted { touched, order })
}

/// [`check_writer`] over `patches`, the diff from `before` to the current heads. Answers the order a node
/// wrote, as read for the check.
fn check_patches(
    doc: &mut AutoCommit,
    name: &DocId,
    before: &[automerge::ChangeHash],
    patches: &[Patch],
    writer: Writer<'_>,
) -> Result<Option<OrderView>, Violation> {
    let who = match writer {
        Writer::Node(n) => format!("node {n}"),
        Writer::Hub => "the hub".to_owned(),
    };
    let violation = |what: String| Violation { writer: who.clone(), doc: name.to_string(), what };
    let kind = DocKind::of(name).ok_or_else(|| violation("a document outside the layout".into()))?;
    match (kind, writer) {
        (DocKind::Stock(owner), Writer::Node(n)) if &owner == n => {
            // The whole document is the node's; it must still name its owner.
            match get_str(doc, &ROOT, keys::OWNER) {
                Ok(Some(o)) if o == owner.as_str() => Ok(None),
                _ => Err(violation(format!("key {:?}", keys::OWNER))),
            }
        }
        (DocKind::Stock(_), _) => Err(violation("another site's stock".into())),
        (DocKind::Escrow(owner) | DocKind::Inbound(owner), Writer::Hub) => match get_str(doc, &ROOT, keys::OWNER) {
            Ok(Some(o)) if o == owner.as_str() => Ok(None),
            _ => Err(violation(format!("key {:?}", keys::OWNER))),
        },
        (DocKind::Escrow(_), Writer::Node(_)) => Err(violation("the hub's escrow view".into())),
        (DocKind::Inbound(_), Writer::Node(_)) => Err(violation("the hub's expected receipts".into())),
        (DocKind::Order(id), writer) => {
            if frozen_at(doc, before) {
                return Err(violation(format!("order {id}, which is frozen")));
            }
            let created_before = !before.is_empty() && doc.get_at(ROOT, keys::V, before).ok().flatten().is_some();
            for p in patches {
                let key = root_key(p).ok_or_else(|| violation("a non-map root".into()))?;
                let allowed = match writer {
                    Writer::Hub => {
                        key == keys::HUB
                            || (!created_before
                                && order_origin(&id) == Some(HUB_ORIGIN)
                                && ORDER_CREATION_KEYS.contains(&key.as_str()))
                    }
                    Writer::Node(_) => {
                        key == keys::NODE || (!created_before && ORDER_CREATION_KEYS.contains(&key.as_str()))
                    }
                };
                if !allowed {
                    return Err(violation(format!("key {key:?}")));
                }
            }
            if let Writer::Node(n) = writer {
                // What the node created must be its own order, under the right id, numbered by its origin.
                let view = read_order(doc, name.as_str()).map_err(|e| violation(format!("malformed order: {e}")))?;
                if !created_before && view.origin.as_str() == HUB_ORIGIN {
                    return Err(violation("creation of a hub order".into()));
                }
                // The creation writes the layout version with the other creation keys, so that from the next
                // change on they are fixed: a document without it would count as "being created" for ever
                // and let its creator rewrite its site.
                if doc.get(ROOT, keys::V).ok().flatten().is_none() {
                    return Err(violation(format!("an order without {:?}", keys::V)));
                }
                let numbered_by_origin = order_origin(&view.id) == Some(view.origin.as_str());
                if view.id != id || !numbered_by_origin {
                    return Err(violation(format!("order {} of {}", view.id, view.origin)));
                }
                // A node creates only its own orders, fulfilled by itself (the hub creates the orders it
                // assigns); afterwards only the fulfilling site writes the document's progress.
                let own = if created_before { &view.site == n } else { &view.origin == n && &view.site == n };
                if !own {
                    return Err(violation(format!("order {} of {} for site {}", view.id, view.origin, view.site)));
                }
                return Ok(Some(view));
            }
            Ok(None)
        }
    }
}
