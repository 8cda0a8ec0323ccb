//! The demand cache: one demand index and one replenishment run, kept until the documents change.
//!
//! The index is recomputed from the document store on request and cached ([`DemandCache`]), keyed by a
//! [`Fingerprint`]: the current UTC day, the number of order documents and the hub's tallies of node changes
//! applied and quarantined. Every way a synced document changes at the hub goes through
//! [`crate::docs::HubDocs::check_applied`], which bumps one of those tallies, so a change invalidates the
//! cache without any hook in the sync path (which other work owns) and without a second copy of the demand
//! that could drift from the documents after a restart or a quarantine roll-back. The cost is one full scan
//! (bounded by [`ORDERS_SCAN_MAX`](super::history::ORDERS_SCAN_MAX)) after each batch of changes, paid by
//! the next request only.

use std::sync::{Arc, Mutex};

use oms_service::lock;

use super::history::{Basis, DemandIndex};
use super::planning::{Replenishment, RunParams, Supply, replenishment};
use super::stock::StockIndex;
use crate::docs::HubDocs;
use crate::forecast_config::{ForecastConfig, Override};

/// What the demand cache is keyed by. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    /// Epoch day.
    today: u64,
    /// Order documents held.
    orders: u64,
    /// Node changes applied since the hub started.
    changes_applied: u64,
    /// Node changes quarantined (rolled back) since the hub started.
    changes_quarantined: u64,
}

impl Fingerprint {
    /// The fingerprint of `docs` on epoch day `today`.
    fn of(docs: &HubDocs, today: u64) -> Fingerprint {
        Fingerprint {
            today,
            orders: docs.order_counts().values().sum(),
            changes_applied: docs.nodes.values().map(|s| s.changes_applied).sum(),
            changes_quarantined: docs.nodes.values().map(|s| s.changes_quarantined).sum(),
        }
    }
}

/// A replenishment run's key besides the configuration: data, basis, the query's overrides and the
/// purchasing generation (suppliers and orders).
type PlanKey = (Fingerprint, Basis, Option<usize>, Option<u64>, Option<usize>, u64);

/// The last replenishment run: its key, the configuration it used and the result.
type CachedRun = (PlanKey, Arc<ForecastConfig>, Arc<Replenishment>);

/// One cached demand index and one cached replenishment run (the last parameters asked for).
#[derive(Default)]
pub struct DemandCache {
    index: Mutex<Option<(Fingerprint, Arc<DemandIndex>)>>,
    runs: Mutex<Option<CachedRun>>,
}

impl std::fmt::Debug for DemandCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemandCache").finish_non_exhaustive()
    }
}

/// What a request needs: the demand index, the stock and the fingerprint they were read at.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    /// Demand.
    pub(crate) index: Arc<DemandIndex>,
    /// Available stock.
    pub(crate) stock: StockIndex,
    /// When.
    fingerprint: Fingerprint,
}

impl DemandCache {
    /// The demand index (rebuilt if documents changed) and the current stock, read under the hub's lock.
    pub(crate) fn snapshot(&self, docs: &HubDocs, today: u64) -> Snapshot {
        let fingerprint = Fingerprint::of(docs, today);
        let mut slot = lock(&self.index);
        let index = match slot.as_ref() {
            Some((f, idx)) if *f == fingerprint => idx.clone(),
            _ => {
                let idx = Arc::new(DemandIndex::build(docs, today));
                *slot = Some((fingerprint, idx.clone()));
                idx
            }
        };
        Snapshot { index, stock: StockIndex::build(docs), fingerprint }
    }

    /// The replenishment run for `snap` and the parameters, cached until the documents, the basis, the
    /// query's overrides or the configuration change.
    pub(crate) fn replenishment(
        &self,
        snap: &Snapshot,
        basis: Basis,
        config: &Arc<ForecastConfig>,
        query: &Override,
        supply: &Supply,
    ) -> Arc<Replenishment> {
        let key = (
            snap.fingerprint,
            basis,
            query.lead_time_days,
            query.service_level.map(f64::to_bits),
            query.order_cycle_days,
            supply.generation,
        );
        if let Some((k, cfg, run)) = lock(&self.runs).as_ref()
            && *k == key
            && (Arc::ptr_eq(cfg, config) || **cfg == **config)
        {
            return run.clone();
        }
        // Computed without holding the cache lock; two concurrent misses both compute, the last one stays.
        let params = RunParams { basis, config, query, supply };
        let run = Arc::new(replenishment(&snap.index, &snap.stock, &params));
        *lock(&self.runs) = Some((key, config.clone(), run.clone()));
        run
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demand::test_support::{TODAY, hub_docs};
    use oms_protocol::domain::{FulfillmentState, NodeId};

    #[test]
    fn cache_rebuilds_when_documents_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut docs = hub_docs(dir.path(), &[("wh1", 1, TODAY - 1, 0, FulfillmentState::Accepted, &[("A", 1)])], &[]);
        let cache = DemandCache::default();
        let a = cache.snapshot(&docs, TODAY);
        let b = cache.snapshot(&docs, TODAY);
        assert!(Arc::ptr_eq(&a.index, &b.index));
        docs.status(&NodeId::parse("wh1").unwrap()).changes_applied += 1;
        let c = cache.snapshot(&docs, TODAY);
        assert!(!Arc::ptr_eq(&a.index, &c.index));
        let d = cache.snapshot(&docs, TODAY + 1);
        assert_eq!(d.index.today, TODAY + 1);
    }
}
