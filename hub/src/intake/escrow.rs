//! The hub's view of the escrow counters, one per (site, SKU): merging a site's view into it, the rights a
//! write transaction sees (committed, or changed and not yet committed) and the rows it writes, and the reads.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use oms_protocol::domain::{NodeId, Sku};
use oms_protocol::escrow::{EscrowCounter, Party, Rebalance, RebalanceInput, rebalance};
use oms_service::lock;

use super::*;

/// Escrow counters a write transaction changed, not yet committed: laid over [`State::escrow`] while the
/// transaction is open, merged into it once the transaction has committed.
pub(super) type Overlay = HashMap<(NodeId, Sku), EscrowCounter>;

/// The hub's rights to `key` as a write transaction sees them: what it changed, else what is committed.
pub(super) fn rights<'a>(st: &'a State, overlay: &'a Overlay, key: &(NodeId, Sku)) -> Option<&'a EscrowCounter> {
    overlay.get(key).or_else(|| st.escrow.get(key))
}

impl Intake {
    /// The hub's view of the escrow of `sku` at `site`.
    pub fn escrow(&self, site: &NodeId, sku: &Sku) -> Option<EscrowCounter> {
        lock(&self.core.state).escrow.get(&(site.clone(), sku.clone())).cloned()
    }

    /// Every escrow counter of `site` (for republishing at start).
    pub fn escrow_of_site(&self, site: &NodeId) -> Vec<EscrowCounter> {
        lock(&self.core.state).escrow.iter().filter(|((s, _), _)| s == site).map(|(_, c)| c.clone()).collect()
    }

    /// Sites the hub holds escrow with.
    pub fn escrow_sites(&self) -> BTreeSet<NodeId> {
        lock(&self.core.state).escrow.keys().map(|(s, _)| s.clone()).collect()
    }

    /// Merges a site's view of its escrow counters (from its stock document) into the hub's, then applies
    /// the hub's side of the rebalancing policy (giving rights back the site needs more than the hub).
    /// Returns the counters the hub changed by its own action, to publish.
    pub fn merge_site(
        &self,
        site: &NodeId,
        theirs: Vec<EscrowCounter>,
        now_ms: u64,
    ) -> Result<Vec<EscrowCounter>, IntakeError> {
        let mut st = lock(&self.core.state);
        let w = self.core.db.begin_write()?;
        let mut publish = Vec::new();
        let mut touched = false;
        {
            let mut t = w.open_table(ESCROW)?;
            for c in theirs {
                let key = (site.clone(), c.sku().clone());
                let mut mine = match st.escrow.get(&key) {
                    Some(m) => m.clone(),
                    None if st.escrow.len() < ESCROW_CELLS_MAX => EscrowCounter::new(c.sku().clone()),
                    None => continue,
                };
                let before = mine.clone();
                if mine.merge(&c).is_err() || mine.check().is_err() {
                    tracing::warn!(%site, sku = %c.sku(), "refusing a site's escrow view that contradicts the hub's");
                    continue;
                }
                let input = RebalanceInput {
                    site_available: mine.local(Party::Site),
                    hub_rights: mine.local(Party::Hub),
                    hub_demand_recent: mine.consumed(Party::Hub),
                    site_demand_recent: mine.consumed(Party::Site),
                };
                let mut acted = false;
                if let Rebalance::AskHubBack { units } = rebalance(&input, &self.core.rebalance) {
                    let units = units.min(mine.spendable(Party::Hub, now_ms));
                    if units > 0 && mine.transfer(Party::Hub, Party::Site, units, now_ms).is_ok() {
                        acted = true;
                    }
                }
                if mine != before {
                    t.insert(escrow_key(site, mine.sku()).as_str(), postcard_enc(&mine)?.as_slice())?;
                    touched = true;
                    if acted {
                        publish.push(mine.clone());
                    }
                    st.escrow.insert(key, mine);
                }
            }
        }
        if touched {
            w.commit()?;
        }
        Ok(publish)
    }

    /// Per (site, SKU) of `cells`: the hub's rights there now (spendable), the rights it holds, and its
    /// lease; one short hold of the intake's lock, looking up these cells only (a stock page's).
    pub fn escrow_cells(&self, cells: &[(NodeId, Sku)], now_ms: u64) -> BTreeMap<(String, String), (u64, u64, u64)> {
        let st = lock(&self.core.state);
        cells
            .iter()
            .filter_map(|key| {
                let c = st.escrow.get(key)?;
                let row = (c.spendable(Party::Hub, now_ms), c.local(Party::Hub), c.lease_until_ms(Party::Hub));
                Some(((key.0.to_string(), key.1.to_string()), row))
            })
            .collect()
    }

    /// Per (site, SKU): the hub's rights there now (spendable) and its consumption so far.
    #[cfg(test)]
    pub fn escrow_table(&self, now_ms: u64) -> BTreeMap<(String, String), (u64, u64, u64)> {
        lock(&self.core.state)
            .escrow
            .iter()
            .map(|((site, sku), c)| {
                (
                    (site.to_string(), sku.to_string()),
                    (c.spendable(Party::Hub, now_ms), c.local(Party::Hub), c.lease_until_ms(Party::Hub)),
                )
            })
            .collect()
    }
}

/// Writes the rows of the counters a transaction changed (each once, however many orders consumed from it).
pub(super) fn write_escrow_rows(w: &redb::WriteTransaction, overlay: &Overlay) -> Result<(), IntakeError> {
    if overlay.is_empty() {
        return Ok(());
    }
    let mut t = w.open_table(ESCROW)?;
    for ((site, sku), c) in overlay {
        t.insert(escrow_key(site, sku).as_str(), postcard_enc(c)?.as_slice())?;
    }
    Ok(())
}

fn escrow_key(site: &NodeId, sku: &Sku) -> String {
    format!("{site}|{sku}")
}
