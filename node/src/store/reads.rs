//! The read API of [`Store`]: every read opens its own MVCC read transaction and never waits for the writer.

use std::collections::BTreeMap;

use oms_protocol::domain::{Balance, FulfillmentState, OrderId, Sku};
use oms_protocol::escrow::EscrowCounter;
use redb::{ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::de::DeserializeOwned;

use super::error::escrow_corrupt;
use super::tables::*;
use super::{
    CatalogItem, FeedEntry, InboundRecord, LedgerEntry, OrderRecord, PoReceipt, RmaReceipt, RmaRecord, Store,
    StoreError, Wave,
};
use crate::escrow;

impl Store {
    fn read(&self) -> Result<ReadTransaction, StoreError> {
        Ok(self.db.begin_read()?)
    }

    /// One catalog item.
    pub fn catalog_item(&self, sku: &Sku) -> Result<Option<CatalogItem>, StoreError> {
        let t = self.read()?.open_table(CATALOG)?;
        t.get(sku.as_str())?.map(|v| dec("catalog", v.value())).transpose()
    }

    /// A page of the catalog, SKUs after `after`.
    pub fn catalog(&self, after: Option<&str>, limit: usize) -> Result<Vec<CatalogItem>, StoreError> {
        let t = self.read()?.open_table(CATALOG)?;
        page(&t, after, limit.min(self.limits.page_max), "catalog")
    }

    /// A receipt against a purchase order.
    pub fn po_receipt(&self, id: &str) -> Result<Option<PoReceipt>, StoreError> {
        let t = self.read()?.open_table(PO_RECEIPTS)?;
        t.get(id)?.map(|v| dec("po_receipts", v.value())).transpose()
    }

    /// A receipt against a return (RMA).
    pub fn rma_receipt(&self, id: &str) -> Result<Option<RmaReceipt>, StoreError> {
        let t = self.read()?.open_table(RMA_RECEIPTS)?;
        t.get(id)?.map(|v| dec("rma_receipts", v.value())).transpose()
    }

    /// One return (RMA) the site is to receive.
    pub fn rma(&self, rma: &str) -> Result<Option<RmaRecord>, StoreError> {
        let t = self.read()?.open_table(RMAS)?;
        t.get(rma)?.map(|v| dec("rmas", v.value())).transpose()
    }

    /// A page of the returns (RMAs) the site is to receive, ids after `after`.
    pub fn rmas(&self, after: Option<&str>, limit: usize) -> Result<Vec<RmaRecord>, StoreError> {
        let t = self.read()?.open_table(RMAS)?;
        page(&t, after, limit.min(self.limits.page_max), "rmas")
    }

    /// One purchase order the site is to receive.
    pub fn inbound_po(&self, po: &str) -> Result<Option<InboundRecord>, StoreError> {
        let t = self.read()?.open_table(INBOUND)?;
        t.get(po)?.map(|v| dec("inbound", v.value())).transpose()
    }

    /// A page of the purchase orders the site is to receive, ids after `after`.
    pub fn inbound(&self, after: Option<&str>, limit: usize) -> Result<Vec<InboundRecord>, StoreError> {
        let t = self.read()?.open_table(INBOUND)?;
        page(&t, after, limit.min(self.limits.page_max), "inbound")
    }

    /// One SKU's balance, if the SKU is in the catalog.
    pub fn balance(&self, sku: &Sku) -> Result<Option<Balance>, StoreError> {
        let r = self.read()?;
        if r.open_table(CATALOG)?.get(sku.as_str())?.is_none() {
            return Ok(None);
        }
        let t = r.open_table(BALANCES)?;
        Ok(Some(t.get(sku.as_str())?.map(|v| dec("balances", v.value())).transpose()?.unwrap_or_default()))
    }

    /// The escrow counter of `sku` (as the site sees it), `None` if the SKU is not in the catalog.
    pub fn escrow(&self, sku: &Sku) -> Result<Option<EscrowCounter>, StoreError> {
        let Some(b) = self.balance(sku)? else { return Ok(None) };
        let r = self.read()?;
        let t = r.open_table(ESCROW)?;
        if let Some(v) = t.get(sku.as_str())? {
            return Ok(Some(dec("escrow", v.value())?));
        }
        Ok(Some(escrow::fresh(sku, &b).map_err(escrow_corrupt)?))
    }

    /// A page of balances (SKUs with any movement), after `after`.
    pub fn balances(&self, after: Option<&str>, limit: usize) -> Result<Vec<(Sku, Balance)>, StoreError> {
        let t = self.read()?.open_table(BALANCES)?;
        let mut out = Vec::new();
        let range = match after {
            Some(a) => t.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))?,
            None => t.range::<&str>(..)?,
        };
        for item in range.take(limit.min(self.limits.page_max)) {
            let (k, v) = item?;
            let sku =
                Sku::parse(k.value()).map_err(|e| StoreError::Corrupt { table: "balances", detail: e.to_string() })?;
            out.push((sku, dec("balances", v.value())?));
        }
        Ok(out)
    }

    /// A page of one SKU's ledger, entries with `seq > after`.
    pub fn ledger(&self, sku: &Sku, after: u64, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        let r = self.read()?;
        let idx = r.open_table(LEDGER_BY_SKU)?;
        let led = r.open_table(LEDGER)?;
        let mut out = Vec::new();
        let start = after.saturating_add(1);
        for item in idx.range((sku.as_str(), start)..=(sku.as_str(), u64::MAX))?.take(limit.min(self.limits.page_max)) {
            let (k, _) = item?;
            let seq = k.value().1;
            let v =
                led.get(seq)?.ok_or(StoreError::Corrupt { table: "ledger", detail: format!("missing entry {seq}") })?;
            out.push(dec("ledger", v.value())?);
        }
        Ok(out)
    }

    /// The whole ledger in order: for audits and for checking that balances equal their replay.
    pub fn ledger_all(&self, after: u64, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        let t = self.read()?.open_table(LEDGER)?;
        let mut out = Vec::new();
        for item in t.range(after.saturating_add(1)..)?.take(limit) {
            out.push(dec("ledger", item?.1.value())?);
        }
        Ok(out)
    }

    /// Rows of the audit trail after `after`, at most `limit`, and where to continue if more may follow.
    pub fn audit_events(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<oms_service::audit::AuditEvent>, Option<u64>), StoreError> {
        Ok(oms_service::audit::page(&self.db, after, limit)?)
    }

    /// Replays the whole ledger and compares with the stored balances. Returns the SKUs that differ.
    pub fn verify_ledger(&self) -> Result<Vec<Sku>, StoreError> {
        let r = self.read()?;
        let led = r.open_table(LEDGER)?;
        let mut replay: BTreeMap<String, Balance> = BTreeMap::new();
        for item in led.iter()? {
            let e: LedgerEntry = dec("ledger", item?.1.value())?;
            let b = replay.entry(e.sku.as_str().to_owned()).or_default();
            *b = b.apply(&e.movement).map_err(|err| StoreError::Corrupt {
                table: "ledger",
                detail: format!("entry {} does not replay: {err}", e.seq),
            })?;
        }
        let bal = r.open_table(BALANCES)?;
        let mut bad = Vec::new();
        let mut stored = 0usize;
        for item in bal.iter()? {
            let (k, v) = item?;
            stored += 1;
            let b: Balance = dec("balances", v.value())?;
            if replay.get(k.value()) != Some(&b) {
                bad.push(
                    Sku::parse(k.value())
                        .map_err(|e| StoreError::Corrupt { table: "balances", detail: e.to_string() })?,
                );
            }
        }
        if stored != replay.len() {
            for k in replay.keys() {
                if bal.get(k.as_str())?.is_none() {
                    bad.push(
                        Sku::parse(k).map_err(|e| StoreError::Corrupt { table: "ledger", detail: e.to_string() })?,
                    );
                }
            }
        }
        Ok(bad)
    }

    /// One order.
    pub fn order(&self, id: &OrderId) -> Result<Option<OrderRecord>, StoreError> {
        let t = self.read()?.open_table(ORDERS)?;
        t.get(id.as_str())?.map(|v| dec("orders", v.value())).transpose()
    }

    /// When the order was frozen, if it was ([`crate::freeze`]).
    pub fn frozen_at(&self, id: &OrderId) -> Result<Option<u64>, StoreError> {
        let t = self.read()?.open_table(FROZEN)?;
        Ok(t.get(id.as_str())?.map(|v| v.value()))
    }

    /// One order and when it was frozen, read from the same snapshot (so a frozen order always comes with
    /// its final record).
    pub fn order_and_frozen_at(&self, id: &OrderId) -> Result<Option<(OrderRecord, Option<u64>)>, StoreError> {
        let r = self.read()?;
        let Some(rec) = r.open_table(ORDERS)?.get(id.as_str())?.map(|v| dec("orders", v.value())).transpose()? else {
            return Ok(None);
        };
        let frozen = r.open_table(FROZEN)?.get(id.as_str())?.map(|v| v.value());
        Ok(Some((rec, frozen)))
    }

    /// Orders waiting to be frozen once finished, with the start of their return window (0: at once), after
    /// `after`, at most `limit`.
    pub fn freeze_queue(&self, after: Option<&str>, limit: usize) -> Result<Vec<(String, u64)>, StoreError> {
        let t = self.read()?.open_table(FREEZE_QUEUE)?;
        let range = match after {
            Some(a) => t.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))?,
            None => t.range::<&str>(..)?,
        };
        let mut out = Vec::new();
        for item in range.take(limit.min(self.limits.page_max)) {
            let (k, v) = item?;
            out.push((k.value().to_owned(), v.value()));
        }
        Ok(out)
    }

    /// A page of orders, optionally in one state, with ids after `after`.
    pub fn orders(
        &self,
        status: Option<FulfillmentState>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>, StoreError> {
        let limit = limit.min(self.limits.page_max);
        let r = self.read()?;
        let orders = r.open_table(ORDERS)?;
        match status {
            None => page(&orders, after, limit, "orders"),
            Some(s) => {
                let idx = r.open_table(ORDERS_BY_STATE)?;
                state_page(&idx, &orders, s.tag(), after, limit, ("orders_by_state", "orders"))
            }
        }
    }

    /// Orders per state, read from counters kept in the same transactions as the orders.
    pub fn order_counts(&self) -> Result<Vec<(FulfillmentState, u64)>, StoreError> {
        let t = self.read()?.open_table(META)?;
        let mut out = Vec::new();
        for s in FulfillmentState::ALL {
            let n = t.get(state_counter(s).as_str())?.map(|v| v.value()).unwrap_or(0);
            out.push((s, n));
        }
        Ok(out)
    }

    /// One wave.
    pub fn wave(&self, id: u64) -> Result<Option<Wave>, StoreError> {
        let t = self.read()?.open_table(WAVES)?;
        t.get(id)?.map(|v| dec("waves", v.value())).transpose()
    }

    /// Change-feed entries with `seq > cursor`, for sync.
    pub fn feed_after(&self, cursor: u64, limit: usize) -> Result<Vec<(u64, FeedEntry)>, StoreError> {
        let t = self.read()?.open_table(FEED)?;
        let mut out = Vec::new();
        for item in t.range(cursor.saturating_add(1)..)?.take(limit) {
            let (k, v) = item?;
            out.push((k.value(), dec("feed", v.value())?));
        }
        Ok(out)
    }

    /// Number of orders stored.
    pub fn order_total(&self) -> Result<u64, StoreError> {
        Ok(self.read()?.open_table(ORDERS)?.len()?)
    }
}

pub(super) fn page<T: DeserializeOwned>(
    t: &redb::ReadOnlyTable<&str, &[u8]>,
    after: Option<&str>,
    limit: usize,
    name: &'static str,
) -> Result<Vec<T>, StoreError> {
    let range = match after {
        Some(a) => t.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))?,
        None => t.range::<&str>(..)?,
    };
    let mut out = Vec::new();
    for item in range.take(limit) {
        out.push(dec(name, item?.1.value())?);
    }
    Ok(out)
}

/// A page of the rows of `rows` listed under `tag` in the state index `idx` ((tag, id) → ()), ids after
/// `after`; `names` are (index, rows) for errors.
pub(super) fn state_page<T: DeserializeOwned>(
    idx: &redb::ReadOnlyTable<(u8, &str), ()>,
    rows: &redb::ReadOnlyTable<&str, &[u8]>,
    tag: u8,
    after: Option<&str>,
    limit: usize,
    names: (&'static str, &'static str),
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for item in idx.range((tag, after.unwrap_or(""))..(tag.saturating_add(1), ""))? {
        let (k, _) = item?;
        let id = k.value().1;
        if Some(id) == after {
            continue;
        }
        if out.len() >= limit {
            break;
        }
        let v = rows
            .get(id)?
            .ok_or(StoreError::Corrupt { table: names.0, detail: format!("index names missing row {id}") })?;
        out.push(dec(names.1, v.value())?);
    }
    Ok(out)
}
