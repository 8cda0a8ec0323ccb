//! Finished orders are frozen, so that their history stops growing.
//!
//! An order is **finished** when nothing more can happen to it at this site:
//! - it was cancelled, or (a hub assignment) rejected: at once;
//! - it was shipped (or delivered) and no return waits for its refund, and either every line came back in
//!   full (`returned == shipped`) or the return window has passed. The window starts when the carrier
//!   delivered the order (the first `delivered` entry of its timeline) or, if no delivery was confirmed,
//!   when it was handed to the carrier (the first `shipped` entry). A received return that is not refunded
//!   keeps the order open: a refund is owed, and a frozen order refuses the refund.
//!
//! Anything else (assigned, accepted, picking, picked, packed, backordered) is open.
//!
//! The fulfilling node **freezes** a finished order ([`crate::store::cmd::Freeze`]): in one store
//! transaction it records `frozen_at_ms`, drops the order from the freeze queue and appends the order to the
//! change feed. From then on the store refuses every change to it (`order_frozen`, 409), and the feed
//! follower writes `frozen_at_ms` into the order document as its last change and compacts the document's
//! storage to one full save (node and hub); the hub refuses any later change to the document. The store is
//! the source of truth: a crash before the commit leaves the order unfrozen for the next pass, a crash
//! after it leaves the feed entry for the follower.
//!
//! [`run`] is the periodic task: every `interval_ms` it freezes at most `batch_max` due orders, resuming
//! after the last order the previous pass looked at (a cursor kept in memory; a restart begins again from
//! the first, which only costs one pass).

use std::time::Duration;

use oms_protocol::domain::{FulfillmentState, ReturnState};

use crate::store::{Frozen, OrderRecord, Store, cmd};

/// What an order's record says about freezing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// Finished now, whatever the return window: cancelled, rejected, or every shipped unit returned.
    Now,
    /// Shipped, with units that may still come back: finished once the return window that started at this
    /// time (ms since the Unix epoch) has passed.
    WindowFrom(u64),
    /// Not finished: still in fulfillment, or a return waits for its refund.
    Open,
}

/// Where `rec` stands with respect to freezing (see the module docs).
pub(crate) fn finish(rec: &OrderRecord) -> Finish {
    match rec.status {
        FulfillmentState::Cancelled | FulfillmentState::Rejected => Finish::Now,
        FulfillmentState::Shipped | FulfillmentState::Delivered => {
            if rec.returns.iter().any(|r| r.status != ReturnState::Refunded) {
                return Finish::Open;
            }
            if rec.lines.iter().all(|l| l.returned >= l.shipped) {
                return Finish::Now;
            }
            let first = |s: FulfillmentState| rec.timeline.iter().find(|t| t.status == s).map(|t| t.at_ms);
            Finish::WindowFrom(
                first(FulfillmentState::Delivered)
                    .or_else(|| first(FulfillmentState::Shipped))
                    .unwrap_or(rec.created_at_ms),
            )
        }
        FulfillmentState::Assigned
        | FulfillmentState::Accepted
        | FulfillmentState::Picking
        | FulfillmentState::Picked
        | FulfillmentState::Packed
        | FulfillmentState::Backordered => Finish::Open,
    }
}

/// Whether `rec` is finished at `now_ms` with a return window of `window_ms`.
pub(crate) fn is_finished(rec: &OrderRecord, now_ms: u64, window_ms: u64) -> bool {
    match finish(rec) {
        Finish::Now => true,
        Finish::WindowFrom(t) => now_ms >= t.saturating_add(window_ms),
        Finish::Open => false,
    }
}

/// How the node freezes finished orders (from the `[orders]` config section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreezePolicy {
    /// The return window, ms.
    pub return_window_ms: u64,
    /// Period of the freeze pass, ms.
    pub interval_ms: u64,
    /// Orders looked at per pass, at most.
    pub batch_max: usize,
}

impl Default for FreezePolicy {
    fn default() -> Self {
        FreezePolicy { return_window_ms: 30 * 24 * 3_600_000, interval_ms: 60_000, batch_max: 256 }
    }
}

/// Runs freeze passes until the runtime stops. Each pass is one bounded store command; a failed pass is
/// logged and retried at the next period.
pub(crate) async fn run(store: Store, policy: FreezePolicy) {
    let mut tick = tokio::time::interval(Duration::from_millis(policy.interval_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut after = None;
    let mut failing = false;
    loop {
        tick.tick().await;
        let cmd = cmd::Freeze {
            return_window_ms: policy.return_window_ms,
            orders_max: policy.batch_max,
            after: after.take(),
        };
        match store.execute(cmd).await {
            Ok(Frozen { frozen, next_after }) => {
                failing = false;
                if !frozen.is_empty() {
                    tracing::info!(orders = frozen.len(), "froze finished orders");
                }
                after = next_after;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "freezing finished orders failed; retrying next period");
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FulfillmentLine, ReturnLine, ReturnRecord, TimelineEntry};
    use oms_protocol::domain::{Disposition, NodeId, OrderDraft, OrderId, Sku};
    use oms_protocol::fixtures;

    const DAY: u64 = 24 * 3_600_000;

    fn rec(status: FulfillmentState, shipped: u32, returned: u32) -> OrderRecord {
        let sku = Sku::parse("A").unwrap();
        let site = NodeId::parse("wh-a").unwrap();
        OrderRecord {
            id: OrderId::new(&site, 1),
            site,
            status,
            // The draft's lines play no part in freezing: the fulfillment lines below do.
            order: OrderDraft { lines: vec![], ..fixtures::draft("x", &sku, 1) },
            lines: vec![
                FulfillmentLine { sku: sku.clone(), qty: 2, picked: Some(2), shipped, returned },
                FulfillmentLine { sku, qty: 1, picked: Some(0), shipped: 0, returned: 0 },
            ],
            wave: None,
            parcels: None,
            shipment: None,
            returns: vec![],
            timeline: vec![
                TimelineEntry { at_ms: 10, status: FulfillmentState::Accepted, note: String::new() },
                TimelineEntry { at_ms: 100, status: FulfillmentState::Shipped, note: String::new() },
            ],
            created_at_ms: 10,
        }
    }

    fn ret(status: ReturnState) -> ReturnRecord {
        ReturnRecord {
            id: 1,
            lines: vec![ReturnLine { sku: Sku::parse("A").unwrap(), qty: 1 }],
            disposition: Disposition::Restock,
            status,
            received_at_ms: 150,
        }
    }

    #[test]
    fn cancelled_and_rejected_are_finished_at_once_open_states_never() {
        for s in [FulfillmentState::Cancelled, FulfillmentState::Rejected] {
            assert_eq!(finish(&rec(s, 0, 0)), Finish::Now, "{s}");
            assert!(is_finished(&rec(s, 0, 0), 0, 30 * DAY));
        }
        for s in [
            FulfillmentState::Assigned,
            FulfillmentState::Accepted,
            FulfillmentState::Picking,
            FulfillmentState::Picked,
            FulfillmentState::Packed,
            FulfillmentState::Backordered,
        ] {
            assert_eq!(finish(&rec(s, 0, 0)), Finish::Open, "{s}");
            assert!(!is_finished(&rec(s, 0, 0), u64::MAX, 0), "{s}");
        }
    }

    #[test]
    fn shipped_orders_finish_after_the_window_from_shipment_or_delivery() {
        let shipped = rec(FulfillmentState::Shipped, 2, 0);
        assert_eq!(finish(&shipped), Finish::WindowFrom(100));
        assert!(!is_finished(&shipped, 100 + 30 * DAY - 1, 30 * DAY), "one ms before the window ends");
        assert!(is_finished(&shipped, 100 + 30 * DAY, 30 * DAY));
        assert!(!is_finished(&shipped, u64::MAX - 1, u64::MAX), "no overflow");

        let mut delivered = shipped.clone();
        delivered.status = FulfillmentState::Delivered;
        delivered.timeline.push(TimelineEntry { at_ms: 500, status: FulfillmentState::Delivered, note: String::new() });
        // A later return note carries the current status; the window still starts at the first delivery.
        delivered.timeline.push(TimelineEntry { at_ms: 900, status: FulfillmentState::Delivered, note: String::new() });
        assert_eq!(finish(&delivered), Finish::WindowFrom(500));
        assert!(!is_finished(&delivered, 100 + 1_000, 1_000));
        assert!(is_finished(&delivered, 500 + 1_000, 1_000));
    }

    #[test]
    fn returns_fully_back_finish_at_once_and_unrefunded_returns_keep_it_open() {
        // Partly returned and refunded: still the window.
        let mut partly = rec(FulfillmentState::Shipped, 2, 1);
        partly.returns.push(ret(ReturnState::Refunded));
        assert_eq!(finish(&partly), Finish::WindowFrom(100));
        // Every shipped unit back (the unshipped line counts as back) and refunded: finished now.
        let mut full = rec(FulfillmentState::Delivered, 2, 2);
        full.returns.push(ret(ReturnState::Refunded));
        assert_eq!(finish(&full), Finish::Now);
        // A return waiting for its refund: open, however long ago it shipped.
        let mut owed = rec(FulfillmentState::Shipped, 2, 2);
        owed.returns.push(ret(ReturnState::Received));
        assert_eq!(finish(&owed), Finish::Open);
        assert!(!is_finished(&owed, u64::MAX, 0));
    }
}
