//! Freezing finished orders in the store (the rules are in [`crate::freeze`]): the freeze queue, filled once
//! at open for orders saved before it existed and kept by every order save, and the bounded freeze pass.

use oms_protocol::domain::{FulfillmentState, OrderId};
use redb::ReadableTable;

use super::tables::*;
use super::writer::{Apply, Tx};
use super::{Command, FeedEntry, Limits, OrderRecord, StoreError};
use crate::freeze;

/// Orders one freeze pass looks at, at most.
pub const FREEZE_ORDERS_MAX: usize = 10_000;

/// Freezes finished orders (see [`crate::freeze`]): looks at most `orders_max` queued orders after `after`
/// (the caller passes back the returned cursor) and freezes those finished with a return window of
/// `return_window_ms`.
#[derive(Debug, Clone)]
pub struct Freeze {
    /// The return window, ms.
    pub return_window_ms: u64,
    /// Most orders looked at (at most [`FREEZE_ORDERS_MAX`]).
    pub orders_max: usize,
    /// Start after this order id (`None`: from the first).
    pub after: Option<String>,
}

/// What a [`Freeze`] pass did: the orders it froze, and where the next pass starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frozen {
    /// The orders frozen by this pass.
    pub frozen: Vec<OrderId>,
    /// The cursor for the next pass (`None`: from the first queued order again).
    pub next_after: Option<String>,
}

impl Command for Freeze {
    type Reply = Frozen;
}

impl Apply for Freeze {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<Frozen, StoreError> {
        tx.freeze(self.return_window_ms, self.orders_max.clamp(1, FREEZE_ORDERS_MAX), self.after)
    }
}

/// Puts every order that may be frozen into the freeze queue, once: orders saved before the queue existed
/// (an upgraded database). Runs at open, over the finished states' index only.
pub(super) fn fill_freeze_queue(w: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut meta = w.open_table(META)?;
    let mut queue = w.open_table(FREEZE_QUEUE)?;
    if meta.get(FREEZE_QUEUE_FILLED)?.is_some() {
        return Ok(());
    }
    let orders = w.open_table(ORDERS)?;
    let by_state = w.open_table(ORDERS_BY_STATE)?;
    let frozen = w.open_table(FROZEN)?;
    for s in [
        FulfillmentState::Rejected,
        FulfillmentState::Shipped,
        FulfillmentState::Delivered,
        FulfillmentState::Cancelled,
    ] {
        let tag = s.tag();
        for item in by_state.range((tag, "")..(tag.saturating_add(1), ""))? {
            let (k, _) = item?;
            let id = k.value().1;
            if frozen.get(id)?.is_some() {
                continue;
            }
            let Some(v) = orders.get(id)? else { continue };
            let rec: OrderRecord = dec("orders", v.value())?;
            if let Some(start) = queue_value(&rec) {
                queue.insert(id, start)?;
            }
        }
    }
    meta.insert(FREEZE_QUEUE_FILLED, 1)?;
    Ok(())
}

/// The freeze queue's value for `rec`: the start of its return window, 0 if finished at once, `None` if it
/// is not waiting to be frozen.
pub(super) fn queue_value(rec: &OrderRecord) -> Option<u64> {
    match freeze::finish(rec) {
        freeze::Finish::Now => Some(0),
        freeze::Finish::WindowFrom(t) => Some(t),
        freeze::Finish::Open => None,
    }
}

impl Tx<'_> {
    fn freeze(
        &mut self,
        return_window_ms: u64,
        orders_max: usize,
        after: Option<String>,
    ) -> Result<Frozen, StoreError> {
        let mut queued = Vec::new();
        let range = match &after {
            Some(a) => {
                self.freeze_queue.range::<&str>((std::ops::Bound::Excluded(a.as_str()), std::ops::Bound::Unbounded))?
            }
            None => self.freeze_queue.range::<&str>(..)?,
        };
        for item in range.take(orders_max) {
            let (k, v) = item?;
            queued.push((k.value().to_owned(), v.value()));
        }
        let visited = queued.len();
        let next_after = if visited == orders_max { queued.last().map(|(id, _)| id.clone()) } else { None };
        let mut frozen = Vec::new();
        for (id, start) in queued {
            if start != 0 && self.now_ms < start.saturating_add(return_window_ms) {
                continue;
            }
            let oid = OrderId::parse(&id)
                .map_err(|e| StoreError::Corrupt { table: "freeze_queue", detail: e.to_string() })?;
            // The record decides; the queue only saves reading records that cannot be due.
            let rec = self.order(&oid)?;
            if self.frozen.get(id.as_str())?.is_some() || !freeze::is_finished(&rec, self.now_ms, return_window_ms) {
                continue;
            }
            self.frozen.insert(id.as_str(), self.now_ms)?;
            self.freeze_queue.remove(id.as_str())?;
            self.feed_push(FeedEntry::Order(oid.clone()))?;
            frozen.push(oid);
        }
        Ok(Frozen { frozen, next_after })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use oms_protocol::domain::{Movement, Sku};
    use oms_protocol::fixtures;
    use redb::Database;

    use super::*;
    use crate::metrics::Metrics;
    use crate::store::{Limits, Store, cmd};
    use crate::test_support::{movement, site, store_with_catalog};

    #[test]
    fn orders_saved_before_the_freeze_queue_existed_are_queued_once_at_open() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("node.redb");
            let store = store_with_catalog(dir.path(), &["A"]).await;
            movement(&store, "A", Movement::Receipt { qty: 5, note: None }).await;
            let draft = fixtures::draft("x", &Sku::parse("A").unwrap(), 1);
            let mut ids = Vec::new();
            for key in ["cancelled", "open"] {
                let created = store.execute(cmd::CreateOrder { key: key.into(), draft: draft.clone() }).await;
                ids.push(created.expect("not created").record.id);
            }
            store.execute(cmd::Cancel { order: ids[0].clone(), reason: "x".into() }).await.unwrap();
            assert_eq!(store.freeze_queue(None, 10).unwrap(), vec![(ids[0].to_string(), 0)]);
            store.close();
            // The database as an older version left it: no queue, no flag.
            {
                let db = Database::create(&path).unwrap();
                let w = db.begin_write().unwrap();
                w.delete_table(FREEZE_QUEUE).unwrap();
                w.open_table(META).unwrap().remove(FREEZE_QUEUE_FILLED).unwrap();
                w.commit().unwrap();
            }
            let store = Store::open(&path, site(), Limits::default(), Arc::new(Metrics::new())).unwrap();
            assert_eq!(store.freeze_queue(None, 10).unwrap(), vec![(ids[0].to_string(), 0)], "queued at open");
            store.close();
        });
    }
}
