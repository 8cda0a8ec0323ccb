//! Pick waves: building one from accepted orders, and confirming what was picked for an order.

use oms_protocol::domain::{FulfillmentState, Movement, OrderId, Step, TransitionError};
use redb::ReadableTable;

use super::tables::*;
use super::writer::{Apply, Tx};
use super::{CatalogItem, Command, Limits, OrderRecord, PickConfirmation, PickLine, StoreError, Wave};

/// Build a pick wave from accepted orders.
#[derive(Debug, Clone)]
pub struct CreateWave {
    /// Most orders on the wave (at most [`Limits::wave_orders_max`]).
    pub orders_max: usize,
}

impl Command for CreateWave {
    type Reply = Wave;

    fn audit_target(reply: &Wave) -> Option<String> {
        Some(format!("wave-{}", reply.id))
    }
}

impl Apply for CreateWave {
    fn apply(self, tx: &mut Tx<'_>, limits: &Limits) -> Result<Wave, StoreError> {
        tx.create_wave(self.orders_max.clamp(1, limits.wave_orders_max))
    }
}

/// Confirm picks for some or all lines of an order.
#[derive(Debug, Clone)]
pub struct ConfirmPicks {
    /// The order.
    pub order: OrderId,
    /// Per-line confirmations.
    pub lines: Vec<PickConfirmation>,
    /// Why fewer units than asked were picked (damaged, not in the bin, ...), for the order's timeline.
    pub reason: Option<String>,
}

impl Command for ConfirmPicks {
    /// The order after the change.
    type Reply = OrderRecord;
}

impl Apply for ConfirmPicks {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<OrderRecord, StoreError> {
        tx.confirm_picks(self.order, self.lines, self.reason)
    }
}

impl Tx<'_> {
    fn create_wave(&mut self, orders_max: usize) -> Result<Wave, StoreError> {
        let tag = FulfillmentState::Accepted.tag();
        let mut ids = Vec::new();
        for item in self.by_state.range((tag, "")..(tag + 1, ""))?.take(orders_max) {
            let (k, _) = item?;
            ids.push(
                OrderId::parse(k.value().1)
                    .map_err(|e| StoreError::Corrupt { table: "orders_by_state", detail: e.to_string() })?,
            );
        }
        if ids.is_empty() {
            return Err(StoreError::NothingToPick);
        }
        let id = self.bump(SEQ_WAVE, 1)?;
        let mut lines = Vec::new();
        for oid in &ids {
            let mut rec = self.order(oid)?;
            let to = self.step(&rec, Step::StartPicking)?;
            for l in &rec.lines {
                let bin = match self.catalog.get(l.sku.as_str())? {
                    Some(v) => dec::<CatalogItem>("catalog", v.value())?.bin,
                    None => String::new(),
                };
                lines.push(PickLine { bin, sku: l.sku.clone(), order: oid.clone(), qty: l.qty });
            }
            rec.wave = Some(id);
            self.transition(&mut rec, to, format!("on pick wave {id}"));
            self.save_order(&rec, Some(FulfillmentState::Accepted))?;
        }
        lines.sort_by(|a, b| (&a.bin, &a.sku, &a.order).cmp(&(&b.bin, &b.sku, &b.order)));
        let wave = Wave { id, created_at_ms: self.now_ms, orders: ids, lines };
        self.waves.insert(id, enc(&wave)?.as_slice())?;
        Ok(wave)
    }

    fn confirm_picks(
        &mut self,
        order: OrderId,
        confirms: Vec<PickConfirmation>,
        reason: Option<String>,
    ) -> Result<OrderRecord, StoreError> {
        let mut rec = self.order_to_change(&order)?;
        if rec.status != FulfillmentState::Picking {
            return Err(StoreError::Transition {
                order,
                source: TransitionError { from: rec.status, step: Step::ConfirmPicks },
            });
        }
        if confirms.is_empty() {
            return Err(StoreError::LineMismatch { order, message: "no lines to confirm".into() });
        }
        // Validate all confirmations first.
        let mut idx = Vec::with_capacity(confirms.len());
        for c in &confirms {
            let i = rec.lines.iter().position(|l| l.sku == c.sku).ok_or_else(|| StoreError::LineMismatch {
                order: order.clone(),
                message: format!("has no line for SKU {}", c.sku),
            })?;
            let line = &rec.lines[i];
            if line.picked.is_some() || idx.contains(&i) {
                return Err(StoreError::LineMismatch {
                    order: order.clone(),
                    message: format!("line {} is already confirmed", c.sku),
                });
            }
            if c.picked > line.qty {
                return Err(StoreError::LineMismatch {
                    order: order.clone(),
                    message: format!("picked {} of {} but the line asks for {}", c.picked, c.sku, line.qty),
                });
            }
            idx.push(i);
        }
        for (c, i) in confirms.iter().zip(idx) {
            let qty = rec.lines[i].qty;
            if c.picked > 0 {
                self.post(&c.sku, Movement::Pick { qty: c.picked, order: order.clone() })?;
            }
            if c.picked < qty {
                self.post(&c.sku, Movement::Release { qty: qty - c.picked, order: order.clone() })?;
            }
            rec.lines[i].picked = Some(c.picked);
        }
        if rec.lines.iter().all(|l| l.picked.is_some()) {
            let picked: u64 = rec.lines.iter().map(|l| u64::from(l.picked.unwrap_or(0))).sum();
            let ordered: u64 = rec.lines.iter().map(|l| u64::from(l.qty)).sum();
            let why = reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
            let (step, note) = if picked == 0 {
                (Step::ShortPickAll, format!("nothing found in the bins{why}; backordered, reservation released"))
            } else if picked < ordered {
                (Step::ConfirmPicks, format!("short pick: {picked} of {ordered} units{why}; the rest is released"))
            } else {
                (Step::ConfirmPicks, "all lines picked".to_owned())
            };
            let to = self.step(&rec, step)?;
            if picked == 0 {
                // Nothing was picked: the lines go back to unconfirmed so the order can be re-accepted later.
                for l in &mut rec.lines {
                    l.picked = None;
                }
            }
            self.transition(&mut rec, to, note);
            self.save_order(&rec, Some(FulfillmentState::Picking))?;
        } else {
            self.save_order(&rec, Some(FulfillmentState::Picking))?;
        }
        Ok(rec)
    }
}
