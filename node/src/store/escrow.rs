//! The store's side of escrow (the rights logic is in [`crate::escrow`]): each SKU's counter as stored, merging
//! the hub's view, and the periodic duties.

use oms_protocol::domain::{Balance, HUB_ORDER_PREFIX, OrderId, Sku};
use oms_protocol::escrow::EscrowCounter;
use redb::ReadableTable;

use super::error::escrow_corrupt;
use super::tables::*;
use super::writer::{Apply, Tx};
use super::{Command, FeedEntry, Limits, StoreError};
use crate::escrow::{self, EscrowPolicy, Rights};

/// Orders the hub assigned (`hub-…`) spend and return the hub's rights; every other order the site's.
pub fn rights_of(order: &OrderId) -> Rights {
    if order.as_str().starts_with(HUB_ORDER_PREFIX) { Rights::Hub } else { Rights::Site }
}

/// Merge the hub's view of the escrow counters, then do the site's duties (acknowledge, lease, grant).
#[derive(Debug, Clone)]
pub struct EscrowSync {
    /// The hub's counters, one per SKU.
    pub hub: Vec<EscrowCounter>,
    /// The site's escrow settings.
    pub policy: EscrowPolicy,
}

impl Command for EscrowSync {
    /// The SKUs whose escrow changed.
    type Reply = Vec<Sku>;
}

impl Apply for EscrowSync {
    fn apply(self, tx: &mut Tx<'_>, _: &Limits) -> Result<Vec<Sku>, StoreError> {
        tx.escrow_sync(self.hub, &self.policy)
    }
}

/// Periodic escrow duties over at most `skus_max` SKUs after `after` (the caller passes back the returned
/// cursor, so a large catalog is covered over several ticks): with the hub reachable, renew leases and grant
/// by the rebalancing policy; without it, reclaim rights whose lease has run out.
///
/// A tick also stops once it has changed `changes_max` counters: each changed counter is rewritten into the
/// stock document the hub merges, so a catalog whose counters all fall due at once (every SKU's first lease
/// and grant when a site starts, the renewals half a lease later) reaches the hub as a few bounded changes a
/// tick, not one change of every SKU; and the renewals, spread once, stay spread (each falls due half a lease
/// after its own last one).
#[derive(Debug, Clone)]
pub struct EscrowTick {
    /// The hub was heard from recently.
    pub hub_reachable: bool,
    /// The site's escrow settings.
    pub policy: EscrowPolicy,
    /// Most SKUs looked at (at most [`Limits::escrow_tick_skus_max`]).
    pub skus_max: usize,
    /// Most counters changed (at most [`Limits::escrow_tick_changes_max`]).
    pub changes_max: usize,
    /// Start after this SKU (`None`: from the first).
    pub after: Option<Sku>,
}

/// What an [`EscrowTick`] did: SKUs whose escrow changed, and where the next tick starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscrowTicked {
    /// Changed SKUs.
    pub changed: Vec<Sku>,
    /// The cursor for the next tick (`None`: from the first SKU again).
    pub next_after: Option<Sku>,
}

impl Command for EscrowTick {
    type Reply = EscrowTicked;
}

impl Apply for EscrowTick {
    fn apply(self, tx: &mut Tx<'_>, limits: &Limits) -> Result<EscrowTicked, StoreError> {
        let skus_max = self.skus_max.clamp(1, limits.escrow_tick_skus_max);
        let changes_max = self.changes_max.clamp(1, limits.escrow_tick_changes_max);
        tx.escrow_tick(self.hub_reachable, &self.policy, skus_max, changes_max, self.after)
    }
}

impl Tx<'_> {
    /// The SKU's escrow counter; a SKU without one gets the site holding rights to all of `balance`.
    pub(super) fn escrow_of(&self, sku: &Sku, balance: &Balance) -> Result<EscrowCounter, StoreError> {
        match self.escrow.get(sku.as_str())? {
            Some(v) => dec("escrow", v.value()),
            None => escrow::fresh(sku, balance).map_err(escrow_corrupt),
        }
    }

    fn put_escrow(&mut self, c: &EscrowCounter) -> Result<(), StoreError> {
        self.escrow.insert(c.sku().as_str(), enc(c)?.as_slice())?;
        self.feed_push(FeedEntry::Stock(c.sku().clone()))
    }

    fn escrow_sync(&mut self, hub: Vec<EscrowCounter>, policy: &EscrowPolicy) -> Result<Vec<Sku>, StoreError> {
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
        Ok(changed)
    }

    fn escrow_tick(
        &mut self,
        hub_reachable: bool,
        policy: &EscrowPolicy,
        skus_max: usize,
        changes_max: usize,
        after: Option<Sku>,
    ) -> Result<EscrowTicked, StoreError> {
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
            if changed.len() >= changes_max {
                // The rest of the walk is the next tick's: it starts after this SKU.
                return Ok(EscrowTicked { changed, next_after: last });
            }
        }
        let next_after = if visited == skus_max { last } else { None };
        Ok(EscrowTicked { changed, next_after })
    }
}
