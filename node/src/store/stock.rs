//! Catalog and stock commands ([`PutCatalog`], [`Stock`], [`Import`]), and the ledger posting every movement
//! of stock goes through ([`Tx::post`]): one ledger entry, the new balance and the SKU's escrow counter, in the
//! command's transaction.

use oms_protocol::domain::{Balance, BalanceError, Movement, Sku, ValidationError};
use oms_protocol::escrow::Party;
use redb::ReadableTable;

use super::error::escrow_corrupt;
use super::escrow::rights_of;
use super::tables::*;
use super::writer::{Apply, Tx};
use super::{CatalogItem, Command, FeedEntry, LedgerEntry, Limits, Shortfall, StoreError};
use crate::escrow::{self, Rights};

/// Create or update a catalog item.
#[derive(Debug, Clone)]
pub struct PutCatalog(pub CatalogItem);

impl Command for PutCatalog {
    /// The item as stored.
    type Reply = CatalogItem;

    fn audit_target(reply: &CatalogItem) -> Option<String> {
        Some(reply.sku.to_string())
    }
}

impl Apply for PutCatalog {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<CatalogItem, StoreError> {
        tx.put_catalog(self.0)
    }
}

/// Record a stock movement that is not tied to an order (receipt, adjustment, count).
#[derive(Debug, Clone)]
pub struct Stock {
    /// The SKU.
    pub sku: Sku,
    /// Receipt, Adjustment or CycleCount (its `delta` is computed here).
    pub movement: Movement,
}

impl Command for Stock {
    /// The ledger entry written, with the SKU's balance after it.
    type Reply = LedgerEntry;

    fn audit_target(reply: &LedgerEntry) -> Option<String> {
        Some(reply.sku.to_string())
    }
}

impl Apply for Stock {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<LedgerEntry, StoreError> {
        tx.stock(self.sku, self.movement)
    }
}

/// Import catalog rows and stock receipts in one transaction (rows already validated).
#[derive(Debug, Clone)]
pub struct Import {
    /// Catalog items.
    pub catalog: Vec<CatalogItem>,
    /// Opening stock: counts per SKU.
    pub counts: Vec<(Sku, u64)>,
}

/// What an [`Import`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// Catalog items written.
    pub catalog: usize,
    /// Stock counts written.
    pub counts: usize,
}

impl Command for Import {
    type Reply = Imported;
}

impl Apply for Import {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<Imported, StoreError> {
        tx.import(self.catalog, self.counts)
    }
}

impl Tx<'_> {
    pub(super) fn in_catalog(&self, sku: &Sku) -> Result<bool, StoreError> {
        Ok(self.catalog.get(sku.as_str())?.is_some())
    }

    pub(super) fn balance(&self, sku: &Sku) -> Result<Balance, StoreError> {
        Ok(self.balances.get(sku.as_str())?.map(|v| dec("balances", v.value())).transpose()?.unwrap_or_default())
    }

    /// Appends `m` to the ledger and stores the new balance. The caller has validated `m` against the current
    /// balance; a refusal here means the caller's check was wrong, which is a bug, so it is reported as corrupt.
    pub(super) fn post(&mut self, sku: &Sku, m: Movement) -> Result<LedgerEntry, StoreError> {
        let rights = match &m {
            Movement::Release { order, .. } | Movement::Putaway { order, .. } => rights_of(order),
            _ => Rights::Site,
        };
        self.post_as(sku, m, rights)
    }

    /// [`Tx::post`], with the escrow side chosen by the caller (see [`crate::escrow`]).
    pub(super) fn post_as(&mut self, sku: &Sku, m: Movement, rights: Rights) -> Result<LedgerEntry, StoreError> {
        let before = self.balance(sku)?;
        let after = before.apply(&m).map_err(|e| StoreError::Corrupt {
            table: "balances",
            detail: format!("validated movement refused for {sku}: {e}"),
        })?;
        assert!(after.reserved <= after.on_hand, "reserved exceeds on hand for {sku}");
        let seq = self.bump(SEQ_LEDGER, 1)?;
        let entry = LedgerEntry { seq, sku: sku.clone(), at_ms: self.now_ms, movement: m, balance: after };
        self.ledger.insert(seq, enc(&entry)?.as_slice())?;
        self.ledger_by_sku.insert((sku.as_str(), seq), ())?;
        self.balances.insert(sku.as_str(), enc(&after)?.as_slice())?;
        let mut esc = self.escrow_of(sku, &before)?;
        escrow::on_movement(&mut esc, &before, &after, rights, self.now_ms).map_err(escrow_corrupt)?;
        self.escrow.insert(sku.as_str(), enc(&esc)?.as_slice())?;
        self.feed_push(FeedEntry::Stock(sku.clone()))?;
        Ok(entry)
    }

    /// Units the site's own channel may still promise.
    pub(super) fn site_rights(&self, sku: &Sku) -> Result<u64, StoreError> {
        let b = self.balance(sku)?;
        Ok(self.escrow_of(sku, &b)?.local(Party::Site).min(b.available()))
    }

    /// A shortfall of `sku` for `qty` units at the site's own channel, if any.
    pub(super) fn site_shortfall(&self, sku: &Sku, qty: u64) -> Result<Option<Shortfall>, StoreError> {
        let b = self.balance(sku)?;
        let own = self.site_rights(sku)?;
        Ok((own < qty).then(|| Shortfall {
            sku: sku.clone(),
            available: own,
            requested: qty,
            held_for_hub: b.available().saturating_sub(own),
        }))
    }

    /// Refuses taking `units` away from `sku` beyond the site's own rights.
    pub(super) fn check_site_decrease(&self, sku: &Sku, units: u64) -> Result<(), StoreError> {
        let own = self.site_rights(sku)?;
        if units > own {
            return Err(StoreError::EscrowedToHub { sku: sku.clone(), site_rights: own, requested: units });
        }
        Ok(())
    }

    fn stock(&mut self, sku: Sku, movement: Movement) -> Result<LedgerEntry, StoreError> {
        if !self.in_catalog(&sku)? {
            return Err(StoreError::UnknownSku(sku));
        }
        let b = self.balance(&sku)?;
        let movement = match movement {
            Movement::CycleCount { counted, .. } => Movement::CycleCount {
                counted,
                delta: i64::try_from(i128::from(counted) - i128::from(b.on_hand)).unwrap_or(i64::MAX),
            },
            m => m,
        };
        let after = b.apply(&movement).map_err(|source| match source {
            BalanceError::Overflow => {
                StoreError::Invalid(ValidationError::new("invalid_quantity", "qty", "stock figure would overflow"))
            }
            source => StoreError::BelowReserved { sku: sku.clone(), source },
        })?;
        self.check_site_decrease(&sku, b.available().saturating_sub(after.available()))?;
        self.post(&sku, movement)
    }

    fn put_catalog(&mut self, item: CatalogItem) -> Result<CatalogItem, StoreError> {
        self.catalog.insert(item.sku.as_str(), enc(&item)?.as_slice())?;
        self.feed_push(FeedEntry::Catalog(item.sku.clone()))?;
        Ok(item)
    }

    fn import(&mut self, catalog: Vec<CatalogItem>, counts: Vec<(Sku, u64)>) -> Result<Imported, StoreError> {
        for (sku, _) in &counts {
            if !self.in_catalog(sku)? && !catalog.iter().any(|c| &c.sku == sku) {
                return Err(StoreError::UnknownSku(sku.clone()));
            }
        }
        // Validate every count against reservations before writing anything.
        for (sku, counted) in &counts {
            let b = self.balance(sku)?;
            let after = b
                .apply(&Movement::CycleCount { counted: *counted, delta: 0 })
                .map_err(|source| StoreError::BelowReserved { sku: sku.clone(), source })?;
            self.check_site_decrease(sku, b.available().saturating_sub(after.available()))?;
        }
        let (nc, ns) = (catalog.len(), counts.len());
        for item in catalog {
            self.catalog.insert(item.sku.as_str(), enc(&item)?.as_slice())?;
            self.feed_push(FeedEntry::Catalog(item.sku.clone()))?;
        }
        for (sku, counted) in counts {
            let b = self.balance(&sku)?;
            let delta = i64::try_from(i128::from(counted) - i128::from(b.on_hand)).unwrap_or(i64::MAX);
            if delta != 0 || b == Balance::default() {
                self.post(&sku, Movement::CycleCount { counted, delta })?;
            }
        }
        Ok(Imported { catalog: nc, counts: ns })
    }
}
