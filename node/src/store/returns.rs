//! Customer returns: receiving one (each line restocked or scrapped), optionally against a return the hub
//! approved (an RMA, [`SetRmas`] from the hub's `inbound/<site>` document), and refunding it.
//!
//! A receipt against an RMA is checked against what the RMA allows (per SKU, approved less what this site
//! received against it before) and its state (only `approved` and `partially_received` take units); a
//! refusal changes nothing. The receipt row (`rma_receipts`, id `<order>/<return number>`), the RMA's
//! per-SKU count, the ledger movements, the order's returns and the feed entry commit together; the sync
//! follower writes the receipt into the site's stock document, where the hub applies it once by its id.

use oms_protocol::domain::{Disposition, FulfillmentState, Movement, OrderId, ReturnState, ReturnStep, Sku};
use oms_protocol::schema::{InboundRma, SiteRmaLine, SiteRmaReceipt};
use redb::{ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use super::tables::{dec, enc};
use super::writer::{Apply, Tx};
use super::{Command, FeedEntry, Limits, OrderRecord, ReturnLine, ReturnRecord, StoreError, TimelineEntry};

/// Returns (RMAs) the site keeps from the hub; beyond it the hub's further ones wait (logged).
pub const RMAS_MAX: u64 = 100_000;

/// A receipt against an RMA as the site keeps it (the same shape the hub reads).
pub type RmaReceipt = SiteRmaReceipt;

/// An RMA as the site keeps it: the hub's view and what the site received per SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RmaRecord {
    /// What the hub published.
    pub hub: InboundRma,
    /// (SKU, units received here), from the site's own receipts.
    pub received: Vec<(Sku, u64)>,
}

impl RmaRecord {
    /// Units of `sku` received here.
    pub fn received_here(&self, sku: &Sku) -> u64 {
        self.received.iter().find(|(s, _)| s == sku).map_or(0, |(_, q)| *q)
    }
}

/// Store the returns the hub approved for this site (replacing the hub's part, keeping what the site
/// received). Replies with how many were stored.
#[derive(Debug, Clone)]
pub struct SetRmas(pub Vec<InboundRma>);

impl Command for SetRmas {
    type Reply = usize;
}

impl Apply for SetRmas {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<usize, StoreError> {
        let mut n = 0;
        for rma in self.0 {
            let old: Option<RmaRecord> = tx.rmas.get(rma.rma.as_str())?.map(|v| dec("rmas", v.value())).transpose()?;
            if old.is_none() && tx.rmas.len()? >= RMAS_MAX {
                tracing::warn!(rma = %rma.rma, "returns: the site keeps {RMAS_MAX} RMAs; this one waits");
                continue;
            }
            let rec = RmaRecord { received: old.map(|o| o.received).unwrap_or_default(), hub: rma };
            tx.rmas.insert(rec.hub.rma.as_str(), enc(&rec)?.as_slice())?;
            n += 1;
        }
        Ok(n)
    }
}

/// Receive a customer return, optionally against an RMA.
#[derive(Debug, Clone)]
pub struct ReceiveReturn {
    /// The order.
    pub order: OrderId,
    /// What came back, each line restocked or scrapped.
    pub lines: Vec<(ReturnLine, Disposition)>,
    /// The RMA it is received against.
    pub rma: Option<String>,
    /// With an RMA: the units it had received here (all SKUs) when the caller looked, as a screen's form
    /// carries them; another number now refuses the receipt (`rma_changed`), so a form sent twice books once.
    pub expect_received: Option<u64>,
}

impl Command for ReceiveReturn {
    /// The order after the change, the return last in its `returns`.
    type Reply = OrderRecord;
}

impl Apply for ReceiveReturn {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<OrderRecord, StoreError> {
        if let (Some(rma), Some(expected)) = (&self.rma, self.expect_received) {
            let rec: Option<RmaRecord> = tx.rmas.get(rma.as_str())?.map(|v| dec("rmas", v.value())).transpose()?;
            let now: u64 = rec.map_or(0, |r| r.received.iter().map(|(_, q)| *q).sum());
            if now != expected {
                return Err(StoreError::RmaChanged { rma: rma.clone(), expected, received: now });
            }
        }
        tx.receive_return(self.order, self.lines, self.rma)
    }
}

/// Refund a received return.
#[derive(Debug, Clone)]
pub struct Refund {
    /// The order.
    pub order: OrderId,
    /// The return's number.
    pub return_id: u32,
}

impl Command for Refund {
    /// The order after the change.
    type Reply = OrderRecord;
}

impl Apply for Refund {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<OrderRecord, StoreError> {
        tx.refund(self.order, self.return_id)
    }
}

impl Tx<'_> {
    /// The RMA `rma` for `order`, checked to take `lines`: known here, receivable, for this order, and not
    /// past what it approved per SKU. Reads only.
    fn rma_for(
        &self,
        rma: &str,
        order: &OrderId,
        lines: &[(ReturnLine, Disposition)],
    ) -> Result<RmaRecord, StoreError> {
        let rec: RmaRecord = self
            .rmas
            .get(rma)?
            .map(|v| dec("rmas", v.value()))
            .transpose()?
            .ok_or_else(|| StoreError::RmaNotFound(rma.to_owned()))?;
        if !rec.hub.receivable {
            return Err(StoreError::RmaNotReceivable { rma: rma.to_owned(), state: rec.hub.state.clone() });
        }
        if rec.hub.order != order.as_str() {
            return Err(StoreError::Invalid(oms_protocol::domain::ValidationError::new(
                "rma_order_mismatch",
                "rma",
                format!("RMA {rma} is for order {}, not {order}", rec.hub.order),
            )));
        }
        for (r, _) in lines {
            let approved = rec.hub.lines.iter().filter(|l| l.sku == r.sku).map(|l| l.qty).sum::<u64>();
            let requested: u64 = lines.iter().filter(|(o, _)| o.sku == r.sku).map(|(o, _)| u64::from(o.qty)).sum();
            let received = rec.received_here(&r.sku);
            if received.saturating_add(requested) > approved {
                return Err(StoreError::OverReturn {
                    rma: rma.to_owned(),
                    sku: r.sku.clone(),
                    approved,
                    received,
                    requested,
                });
            }
        }
        Ok(rec)
    }

    fn receive_return(
        &mut self,
        order: OrderId,
        lines: Vec<(ReturnLine, Disposition)>,
        rma: Option<String>,
    ) -> Result<OrderRecord, StoreError> {
        let mut rec = self.order_to_change(&order)?;
        if !matches!(rec.status, FulfillmentState::Shipped | FulfillmentState::Delivered) {
            return Err(StoreError::LineMismatch {
                order,
                message: format!("is {}; only shipped or delivered orders can be returned", rec.status),
            });
        }
        if lines.is_empty() {
            return Err(StoreError::LineMismatch { order, message: "a return needs at least one line".into() });
        }
        let mut idx = Vec::new();
        for (r, _) in &lines {
            let i = rec.lines.iter().position(|l| l.sku == r.sku).ok_or_else(|| StoreError::LineMismatch {
                order: order.clone(),
                message: format!("has no line for SKU {}", r.sku),
            })?;
            let l = &rec.lines[i];
            let already: u32 = lines.iter().filter(|(o, _)| o.sku == r.sku).map(|(o, _)| o.qty).sum();
            if u64::from(l.returned) + u64::from(already) > u64::from(l.shipped) {
                return Err(StoreError::LineMismatch {
                    order: order.clone(),
                    message: format!(
                        "{} units of {} returned would exceed the {} shipped ({} returned before)",
                        already, r.sku, l.shipped, l.returned
                    ),
                });
            }
            idx.push(i);
        }
        let mut rma_rec = match &rma {
            Some(id) => Some(self.rma_for(id, &order, &lines)?),
            None => None,
        };
        // Then write: the movements, one return per disposition, the RMA's counts and receipt, the feed entry.
        for ((r, disposition), i) in lines.iter().zip(idx) {
            self.post(&r.sku, Movement::Return { qty: r.qty, order: order.clone(), disposition: *disposition })?;
            rec.lines[i].returned += r.qty;
        }
        let first = u32::try_from(rec.returns.len()).unwrap_or(u32::MAX).saturating_add(1);
        let status = rec.status;
        let against = rma.as_ref().map(|r| format!(" against {r}")).unwrap_or_default();
        for disposition in [Disposition::Restock, Disposition::Scrap] {
            let part: Vec<ReturnLine> =
                lines.iter().filter(|(_, d)| *d == disposition).map(|(l, _)| l.clone()).collect();
            if part.is_empty() {
                continue;
            }
            let id = u32::try_from(rec.returns.len()).unwrap_or(u32::MAX).saturating_add(1);
            rec.returns.push(ReturnRecord {
                id,
                lines: part,
                disposition,
                status: ReturnState::Requested.next(ReturnStep::Receive).unwrap_or(ReturnState::Received),
                received_at_ms: self.now_ms,
            });
            let what = match disposition {
                Disposition::Restock => "restocked",
                Disposition::Scrap => "scrapped",
            };
            rec.timeline.push(TimelineEntry {
                at_ms: self.now_ms,
                status,
                note: format!("return {id} received{against} and {what}"),
            });
        }
        if let (Some(rma), Some(mut r)) = (rma, rma_rec.take()) {
            for (l, _) in &lines {
                match r.received.iter_mut().find(|(s, _)| s == &l.sku) {
                    Some((_, q)) => *q = q.saturating_add(u64::from(l.qty)),
                    None => r.received.push((l.sku.clone(), u64::from(l.qty))),
                }
            }
            self.rmas.insert(rma.as_str(), enc(&r)?.as_slice())?;
            let receipt = RmaReceipt {
                id: format!("{order}/{first}"),
                rma,
                order: order.to_string(),
                lines: lines
                    .iter()
                    .map(|(l, d)| SiteRmaLine { sku: l.sku.clone(), qty: u64::from(l.qty), disposition: *d })
                    .collect(),
                at_ms: self.now_ms,
            };
            self.rma_receipts.insert(receipt.id.as_str(), enc(&receipt)?.as_slice())?;
            self.feed_push(FeedEntry::RmaReceipt(receipt.id))?;
        }
        self.save_order(&rec, Some(status))?;
        Ok(rec)
    }

    fn refund(&mut self, order: OrderId, return_id: u32) -> Result<OrderRecord, StoreError> {
        let mut rec = self.order_to_change(&order)?;
        let ret = rec.returns.iter_mut().find(|r| r.id == return_id).ok_or_else(|| StoreError::LineMismatch {
            order: order.clone(),
            message: format!("has no return number {return_id}"),
        })?;
        ret.status = ret
            .status
            .next(ReturnStep::Refund)
            .map_err(|e| StoreError::LineMismatch { order: order.clone(), message: e.to_string() })?;
        let status = rec.status;
        rec.timeline.push(TimelineEntry { at_ms: self.now_ms, status, note: format!("return {return_id} refunded") });
        self.save_order(&rec, Some(status))?;
        Ok(rec)
    }
}
