//! Customer returns: receiving one (restocked or scrapped) and refunding it.

use oms_protocol::domain::{Disposition, FulfillmentState, Movement, OrderId, ReturnState, ReturnStep};

use super::writer::{Apply, Tx};
use super::{Command, Limits, OrderRecord, ReturnLine, ReturnRecord, StoreError, TimelineEntry};

/// Receive a customer return.
#[derive(Debug, Clone)]
pub struct ReceiveReturn {
    /// The order.
    pub order: OrderId,
    /// What came back.
    pub lines: Vec<ReturnLine>,
    /// Restock or scrap.
    pub disposition: Disposition,
}

impl Command for ReceiveReturn {
    /// The order after the change, the return last in its `returns`.
    type Reply = OrderRecord;
}

impl Apply for ReceiveReturn {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<OrderRecord, StoreError> {
        tx.receive_return(self.order, self.lines, self.disposition)
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
    fn receive_return(
        &mut self,
        order: OrderId,
        lines: Vec<ReturnLine>,
        disposition: Disposition,
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
        for r in &lines {
            let i = rec.lines.iter().position(|l| l.sku == r.sku).ok_or_else(|| StoreError::LineMismatch {
                order: order.clone(),
                message: format!("has no line for SKU {}", r.sku),
            })?;
            let l = &rec.lines[i];
            let already: u32 = lines.iter().filter(|o| o.sku == r.sku).map(|o| o.qty).sum();
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
        for (r, i) in lines.iter().zip(idx) {
            self.post(&r.sku, Movement::Return { qty: r.qty, order: order.clone(), disposition })?;
            rec.lines[i].returned += r.qty;
        }
        let id = u32::try_from(rec.returns.len()).unwrap_or(u32::MAX).saturating_add(1);
        rec.returns.push(ReturnRecord {
            id,
            lines,
            disposition,
            status: ReturnState::Requested.next(ReturnStep::Receive).unwrap_or(ReturnState::Received),
            received_at_ms: self.now_ms,
        });
        let status = rec.status;
        let what = match disposition {
            Disposition::Restock => "restocked",
            Disposition::Scrap => "scrapped",
        };
        rec.timeline.push(TimelineEntry {
            at_ms: self.now_ms,
            status,
            note: format!("return {id} received and {what}"),
        });
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
