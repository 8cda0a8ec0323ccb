//! The store's side of escrow (the rights logic is in [`crate::escrow`]): each SKU's counter as stored, merging
//! the hub's view, and the periodic duties.

use oms_protocol::domain::{Balance, HUB_ORDER_PREFIX, OrderId, Sku};
use oms_protocol::escrow::EscrowCounter;
use redb::ReadableTable;

use super::error::escrow_corrupt;
use super::tables::*;
use super::writer::Tx;
use super::{FeedEntry, Outcome, StoreError};
use crate::escrow::{self, EscrowPolicy, Rights};

/// Orders the hub assigned (`hub-…`) spend and return the hub's rights; every other order the site's.
pub fn rights_of(order: &OrderId) -> Rights {
    if order.as_str().starts_with(HUB_ORDER_PREFIX) { Rights::Hub } else { Rights::Site }
}

impl Tx<'_> {
    /// The SKU's escrow counter; a SKU without one gets the site holding rights to all of `balance`.
    pub(super) fn escrow_of(&self, sku: &Sku, balance: &Balance) -> Result<EscrowCounter, StoreError> {
        match self.escrow.get(sku.as_str())? {
            Some(v) => dec("escrow", v.value()),
            None => escrow::fresh(sku, balance).map_err(escrow_corrupt),
        }
    }

    pub(super) fn put_escrow(&mut self, c: &EscrowCounter) -> Result<(), StoreError> {
        self.escrow.insert(c.sku().as_str(), enc(c)?.as_slice())?;
        self.feed_push(FeedEntry::Stock(c.sku().clone()))
    }

    pub(super) fn escrow_sync(
        &mut self,
        hub: Vec<EscrowCounter>,
        policy: &EscrowPolicy,
    ) -> Result<Outcome, StoreError> {
        let mut changed = Vec::new();
        for theirs in hub {
            let sku = theirs.sku().clone();
            if !self.in_catalog(&sku)? {
                continue;
            }
            let b = self.balance(&sku)?;
            let mut c = self.escrow_of(&sku, &b)?;
            let before = c.clone();
            c.merge(&theirs)
                .map_err(|e| escrow_corrupt(escrow::EscrowFault { sku: sku.clone(), detail: e.to_string() }))?;
            if c.check().is_err() || escrow::check_site_invariant(&c, &b).is_err() {
                // The hub's view contradicts ours (it would leave a party below zero): keep ours.
                tracing::error!(%sku, "refusing the hub's escrow state: it contradicts the site's");
                continue;
            }
            escrow::maintain(&mut c, policy, true, self.now_ms).map_err(escrow_corrupt)?;
            if c != before {
                self.put_escrow(&c)?;
                changed.push(sku);
            }
        }
        Ok(Outcome::Escrow(changed))
    }

    pub(super) fn escrow_tick(
        &mut self,
        hub_reachable: bool,
        policy: &EscrowPolicy,
        skus_max: usize,
        after: Option<Sku>,
    ) -> Result<Outcome, StoreError> {
        let mut skus = Vec::new();
        let range = match &after {
            Some(a) => {
                self.balances.range::<&str>((std::ops::Bound::Excluded(a.as_str()), std::ops::Bound::Unbounded))?
            }
            None => self.balances.range::<&str>(..)?,
        };
        for item in range.take(skus_max) {
            let (k, v) = item?;
            let sku =
                Sku::parse(k.value()).map_err(|e| StoreError::Corrupt { table: "balances", detail: e.to_string() })?;
            skus.push((sku, dec::<Balance>("balances", v.value())?));
        }
        let mut changed = Vec::new();
        let visited = skus.len();
        let mut last = None;
        for (sku, b) in skus {
            let fresh = self.escrow.get(sku.as_str())?.is_none();
            let mut c = self.escrow_of(&sku, &b)?;
            let m = escrow::maintain(&mut c, policy, hub_reachable, self.now_ms).map_err(escrow_corrupt)?;
            if m.changed() || fresh {
                self.put_escrow(&c)?;
                changed.push(sku.clone());
            }
            last = Some(sku);
        }
        let next_after = if visited == skus_max { last } else { None };
        Ok(Outcome::EscrowTicked { changed, next_after })
    }
}
