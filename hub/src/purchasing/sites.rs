//! Receiving at the sites, the hub's half. Every purchase order past `draft` is published to its site in the
//! hub-owned `inbound/<site>` document (lines with what the hub counts as received and short-closed, and the
//! ASNs), after each change of the order and again at every start. The sites' receipts come back in their
//! own stock documents (`schema::keys::RECEIPTS`); the watcher hands each to
//! [`Purchasing::apply_receipt`] under the id `<site>/<receipt>`, which applies it once however often the
//! document is read again, and only against an order for that site.
//!
//! After each pass the hub acknowledges, in the inbound document, the receipts of the stock document it has
//! applied (committed) ([`acknowledge`], `schema::keys::RECEIPTS_APPLIED`); the site removes them from its
//! stock document after a grace period, and the next pass, not finding them, drops their acknowledgement.
//! The table of applied ids is never pruned, so a receipt seen again (a site's document rebuilt) changes
//! nothing; a receipt refused (an unknown order, another site's) is not acknowledged and stays.

use std::collections::BTreeSet;

use oms_protocol::domain::NodeId;
use oms_protocol::schema::{self, InboundAsn, InboundLine, InboundPo};
use oms_protocol::wire::DocId;
use oms_service::now_ms;
use redb::Database;

use super::model::PurchaseOrder;
use super::store::POS_OPEN_MAX;
use super::{PoState, Purchasing, PurchasingError};
use crate::server::Hub;

/// Receipts read from one stock document per pass.
pub const RECEIPTS_READ_MAX: usize = 10_000;

impl Purchasing {
    /// What the site sees of `po`.
    pub fn inbound_of(&self, db: &Database, po: &PurchaseOrder) -> Result<InboundPo, PurchasingError> {
        let mut asns = Vec::with_capacity(po.asns.len());
        for id in &po.asns {
            if let Some(a) = self.asn(db, id.as_str())? {
                let lines = a.lines.iter().map(|l| (l.line, l.qty)).collect();
                asns.push(InboundAsn { id: a.id.to_string(), lines, expected_day: a.expected_day });
            }
        }
        let lines = po
            .lines
            .iter()
            .map(|l| InboundLine {
                line: l.line,
                sku: l.sku.clone(),
                ordered: l.ordered,
                received: l.received,
                short_closed: l.short_closed,
            })
            .collect();
        Ok(InboundPo {
            po: po.id.to_string(),
            state: po.state.as_str().to_owned(),
            receivable: po.state.receivable(),
            expected_day: po.expected_day,
            lines,
            asns,
        })
    }
}

/// Writes `po` into its site's inbound document and tells the site's session. An order never sent (a
/// draft, or one cancelled as a draft) is not the site's business. A failure is logged: the next change of
/// the order, or the next start, publishes it again.
pub fn publish(hub: &Hub, po: &PurchaseOrder) {
    if po.state == PoState::Draft || po.send_key.is_none() {
        return;
    }
    let inbound = match hub.purchasing.inbound_of(hub.intake.db(), po) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(po = %po.id, error = %e, "purchasing: cannot read the order to publish it");
            return;
        }
    };
    let Some(name) = schema::inbound_doc(&po.site) else { return };
    let tell = hub.docs.lock().write_local(&name, |d| schema::write_inbound(d, &po.site, &inbound, now_ms()));
    match tell {
        Ok(nodes) => hub.poke(&nodes),
        Err(e) => tracing::warn!(po = %po.id, error = %e, "purchasing: cannot publish the order to its site"),
    }
}

/// Publishes every open order (at start: a crash may have come between an order's commit and its
/// publication).
pub fn publish_open(hub: &Hub) -> Result<(), PurchasingError> {
    // POS_OPEN_MAX bounds the open orders; the conversion cannot fail on the targets we build for.
    let limit = usize::try_from(POS_OPEN_MAX).unwrap_or(usize::MAX);
    for po in hub.purchasing.open_pos(hub.intake.db(), limit)? {
        publish(hub, &po);
    }
    Ok(())
}

/// Applies the receipts in `site`'s stock document `doc` that were not applied yet, each once, and publishes
/// the orders they advanced. A receipt against another site's order is refused (logged).
pub fn apply_site_receipts(hub: &Hub, site: &NodeId, doc: &DocId) {
    let receipts = {
        let docs = hub.docs.lock();
        docs.get(doc).and_then(|d| schema::read_receipts(&d, RECEIPTS_READ_MAX).ok()).map(|(r, _)| r)
    };
    let Some(receipts) = receipts else { return };
    let db = hub.intake.db();
    let mut applied = BTreeSet::new();
    for r in receipts {
        let id = format!("{site}/{}", r.id);
        let outcome = hub.purchasing.receipt_applied(db, &id).and_then(|done| {
            if done {
                return Ok(None);
            }
            let Some(po) = hub.purchasing.po(db, &r.po)? else { return Err(PurchasingError::PoNotFound(r.po.clone())) };
            if &po.site != site {
                return Err(PurchasingError::PoNotFound(r.po.clone()));
            }
            hub.purchasing.apply_receipt(db, &id, &r.po, &r.lines, now_ms())?;
            hub.purchasing.po(db, &r.po)
        });
        match outcome {
            Ok(po) => {
                if let Some(po) = po {
                    publish(hub, &po);
                }
                applied.insert(r.id);
            }
            Err(e) => tracing::warn!(%site, receipt = %r.id, error = %e, "purchasing: a site's receipt not applied"),
        }
    }
    acknowledge(hub, site, schema::keys::RECEIPTS_APPLIED, &applied);
}

/// Sets the acknowledgements under `map` of `site`'s inbound document to `applied`, the receipt ids of its
/// stock document that the hub has applied (durably), and tells the site. A failure is logged: the next pass
/// writes them again, and until then the site keeps the receipts.
pub(crate) fn acknowledge(hub: &Hub, site: &NodeId, map: &str, applied: &BTreeSet<String>) {
    let Some(name) = schema::inbound_doc(site) else { return };
    let tell = hub.docs.lock().write_local(&name, |d| schema::write_receipt_acks(d, site, map, applied, now_ms()));
    match tell {
        Ok(nodes) => hub.poke(&nodes),
        Err(e) => tracing::warn!(%site, error = %e, "cannot acknowledge a site's applied receipts"),
    }
}

/// Receipts in flight across the sites: those still in the stock documents (purchase order receipts, RMA
/// receipts, at most [`RECEIPTS_READ_MAX`] of each per site) and the hub's acknowledgements still in the
/// inbound documents. With every site connected and its grace period past, the receipts left are only the
/// ones the hub has not applied (refused, or just booked).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct InFlight {
    /// Receipts against purchase orders in the sites' stock documents.
    pub po_receipts: u64,
    /// Receipts against RMAs in the sites' stock documents.
    pub rma_receipts: u64,
    /// The hub's acknowledgements (both kinds) in the inbound documents.
    pub acknowledged: u64,
}

/// Counts [`InFlight`] over at most [`crate::docs::STOCK_SITES_MAX`] sites.
pub fn in_flight(hub: &Hub) -> InFlight {
    let docs = hub.docs.lock();
    let mut out = InFlight::default();
    for id in docs.stock_ids(crate::docs::STOCK_SITES_MAX) {
        let Some(schema::DocKind::Stock(site)) = schema::DocKind::of(&id) else { continue };
        if let Some(d) = docs.get(&id) {
            let n = schema::read_receipts(&d, RECEIPTS_READ_MAX).map_or(0, |(r, _)| r.len());
            let m = schema::read_rma_receipts(&d, RECEIPTS_READ_MAX).map_or(0, |(r, _)| r.len());
            out.po_receipts += n as u64;
            out.rma_receipts += m as u64;
        }
        if let Some(d) = schema::inbound_doc(&site).and_then(|i| docs.get(&i))
            && let Ok(acks) = schema::read_receipt_acks(&d, RECEIPTS_READ_MAX)
        {
            out.acknowledged += (acks.po.len() + acks.rma.len()) as u64;
        }
    }
    out
}
