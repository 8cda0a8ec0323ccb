//! Returns at the sites, the hub's half. Every RMA past `requested` is published to the site that shipped it
//! in the hub-owned `inbound/<site>` document (under `rmas`: its lines with what the hub counts as received,
//! its state and whether it takes units), after each change and again at every start. The sites' receipts
//! come back in their stock documents (`rma_receipts`); the watcher hands each to
//! [`super::Returns::apply_receipt`] under the id `<site>/<receipt>`, which applies it once however often the
//! document is read again, and only against an RMA of that site; the applied ones are acknowledged for the
//! site to prune (as for purchase orders, `crate::purchasing::sites::acknowledge`). The periodic pass ([`tick`]) refunds
//! received RMAs under `refund = "auto"` whose invoice is captured, and closes refunded ones once settled.

use oms_protocol::domain::{NodeId, Sku};
use oms_protocol::schema::{self, InboundRma, InboundRmaLine};
use oms_protocol::wire::DocId;
use oms_service::audit::Actor;
use oms_service::now_ms;

use super::{OPEN_PER_PASS_MAX, RefundPolicy, Rma, RmaState};
use crate::server::Hub;

/// Receipts read from one stock document per pass.
pub const RMA_RECEIPTS_READ_MAX: usize = 10_000;

/// The actor the hub's own refunds are audited as.
fn system() -> Actor {
    // The role of the hub acting on service's policy (`[returns] refund = "auto"`).
    Actor {
        key: "hub:returns".into(),
        role: oms_service::auth::Role::Service,
        method: "POST",
        route: "/v1/returns/{rma}/refund".into(),
    }
}

/// What the site sees of `rma`.
pub fn inbound_of(rma: &Rma) -> InboundRma {
    InboundRma {
        rma: rma.id.clone(),
        order: rma.fulfillment.clone(),
        state: rma.state.as_str().to_owned(),
        receivable: rma.state.receivable(),
        lines: rma
            .lines
            .iter()
            .filter_map(|l| Some(InboundRmaLine { sku: Sku::parse(&l.sku).ok()?, qty: l.qty, received: l.received }))
            .collect(),
    }
}

/// Writes `rma` into its site's inbound document and tells the site's session. A request not yet approved is
/// not the site's business. A failure is logged: the next change of the RMA, or the next start, publishes it
/// again.
pub fn publish(hub: &Hub, rma: &Rma) {
    if rma.state == RmaState::Requested {
        return;
    }
    let Ok(site) = NodeId::parse(&rma.site) else { return };
    let Some(name) = schema::inbound_doc(&site) else { return };
    let inbound = inbound_of(rma);
    let tell = hub.docs.lock().write_local(&name, |d| schema::write_inbound_rma(d, &site, &inbound, now_ms()));
    match tell {
        Ok(nodes) => hub.poke(&nodes),
        Err(e) => tracing::warn!(rma = %rma.id, error = %e, "returns: cannot publish the RMA to its site"),
    }
}

/// Publishes every open RMA (at start: a crash may have come between an RMA's commit and its publication).
pub fn publish_open(hub: &Hub) -> Result<(), super::ReturnsError> {
    for rma in hub.returns.open(hub.intake.db(), OPEN_PER_PASS_MAX)? {
        publish(hub, &rma);
    }
    Ok(())
}

/// Applies the receipts against RMAs in `site`'s stock document `doc` that were not applied yet, each once,
/// publishes the RMAs they advanced and refunds those received in full under `refund = "auto"`.
pub fn apply_site_receipts(hub: &Hub, site: &NodeId, doc: &DocId) {
    let receipts = {
        let docs = hub.docs.lock();
        docs.get(doc).and_then(|d| schema::read_rma_receipts(&d, RMA_RECEIPTS_READ_MAX).ok()).map(|(r, _)| r)
    };
    let Some(receipts) = receipts else { return };
    let db = hub.intake.db();
    let mut applied = std::collections::BTreeSet::new();
    for r in receipts {
        let id = format!("{site}/{}", r.id);
        match hub.returns.apply_receipt(db, site.as_str(), &id, &r, now_ms()) {
            Ok(rma) => {
                // `None`: applied before. Either way it is committed: acknowledged, the site may prune it.
                if let Some(rma) = rma {
                    publish(hub, &rma);
                    refund_if_due(hub, &rma);
                }
                applied.insert(r.id);
            }
            Err(e) => tracing::warn!(%site, receipt = %r.id, error = %e, "returns: a site's receipt not applied"),
        }
    }
    crate::purchasing::sites::acknowledge(hub, site, schema::keys::RMA_RECEIPTS_APPLIED, &applied);
}

/// Refunds `rma` if it is received in full under `refund = "auto"` and its invoice's capture settled (a
/// refund before would be refused; the next pass tries again).
fn refund_if_due(hub: &Hub, rma: &Rma) {
    // One that money refused for another reason than a capture to come waits for service (its
    // `refund_error` says why), so the pass does not retry it every second.
    if rma.state != RmaState::Received
        || rma.refund != RefundPolicy::Auto
        || !rma.credit_notes.is_empty()
        || rma.refund_error.is_some()
    {
        return;
    }
    let db = hub.intake.db();
    let captured = match hub.money.invoice_of_fulfillment(db, &rma.fulfillment) {
        Ok(Some(n)) => hub.money.invoice(db, &n).ok().flatten().is_some_and(|i| i.captured),
        // No invoice: an order without payment, which the refund closes.
        Ok(None) => true,
        Err(_) => false,
    };
    if !captured {
        return;
    }
    match hub.returns.refund(&hub.money, db, &rma.id, false, &system(), now_ms()) {
        Ok(done) => publish(hub, &done),
        Err(e) => tracing::warn!(rma = %rma.id, error = %e, "returns: automatic refund not issued; retrying"),
    }
}

/// The periodic pass: automatic refunds that waited for a capture, and refunded RMAs whose refund settled.
pub fn tick(hub: &Hub) {
    let open = match hub.returns.open(hub.intake.db(), OPEN_PER_PASS_MAX) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "returns: cannot read the open RMAs");
            return;
        }
    };
    for rma in open {
        match rma.state {
            RmaState::Received => refund_if_due(hub, &rma),
            RmaState::Refunded => match hub.returns.close_if_settled(&hub.money, hub.intake.db(), &rma.id, now_ms()) {
                Ok(true) => {
                    if let Ok(Some(r)) = hub.returns.rma(hub.intake.db(), &rma.id) {
                        publish(hub, &r);
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(rma = %rma.id, error = %e, "returns: cannot close a refunded RMA"),
            },
            _ => {}
        }
    }
}
