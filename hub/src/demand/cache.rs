//! The demand cache: the demand ledger and the sites' stock kept up to date from the documents that
//! changed, one demand index per day cut from the ledger, and the last replenishment run.
//!
//! Every way a synced order or stock document changes at the hub (a node's change accepted or put back, a
//! write of the hub's own, a removal) is noted by [`crate::docs::HubDocs`] (`take_order_changes`,
//! `take_stock_changes`). A request takes those notes (a short hold of the documents' lock) and reads the
//! documents again, at most [`READ_CHUNK`] per hold, so a sync session never waits for more than a chunk;
//! what it read goes into the [`Ledger`] and the per-site [`SiteStock`] outside that lock. Every order and
//! stock document is read once after a start (chunked the same way), and again only if more changes piled
//! up than are noted ([`crate::docs::CHANGED_MAX`]). The demand index for a day is cut from the ledger's
//! sums without reading any document and kept until the ledger changes or the day does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use oms_protocol::schema;
use oms_protocol::wire::DocId;
use oms_service::{TimedMutex, lock};

use super::history::{Basis, DemandIndex, ORDERS_SCAN_MAX};
use super::ledger::{Entry, Ledger};
use super::planning::{Replenishment, RunParams, Supply, replenishment};
use super::stock::{SiteStock, StockIndex};
use crate::docs::{HubDocs, STOCK_SITES_MAX};
use crate::forecast_config::{ForecastConfig, Override};

/// Documents read per hold of the documents' lock.
pub(crate) const READ_CHUNK: usize = 64;

/// What the demand cache is keyed by: the day and the versions of the ledger and of the stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    /// Epoch day.
    today: u64,
    /// [`Ledger::version`].
    demand: u64,
    /// Bumped by every change of a site's stock.
    stock: u64,
}

/// A replenishment run's key besides the configuration: data, basis, the query's overrides and the
/// purchasing generation (suppliers and orders).
type PlanKey = (Fingerprint, Basis, Option<usize>, Option<u64>, Option<usize>, u64);

/// The last replenishment run: its key, the configuration it used and the result.
type CachedRun = (PlanKey, Arc<ForecastConfig>, Arc<Replenishment>);

/// The demand side of what the readers keep between requests.
#[derive(Default)]
struct Orders {
    /// Every order document was read into the ledger (after a start, or after too many changes).
    built: bool,
    ledger: Ledger,
    /// The demand index cut for (ledger version, day).
    index: Option<((u64, u64), Arc<DemandIndex>)>,
}

/// The stock side, kept apart so that the network stock and `/v1/nodes` never wait for a read of every
/// order.
#[derive(Default)]
struct Stock {
    /// Every stock document was read.
    built: bool,
    /// Each stock document as last read.
    sites: BTreeMap<DocId, Arc<SiteStock>>,
    version: u64,
    /// The stock index of a version.
    index: Option<(u64, Arc<StockIndex>)>,
}

/// The demand ledger, the sites' stock and one cached replenishment run (the last parameters asked for).
#[derive(Default)]
pub struct DemandCache {
    /// Taken before `stock` where both are.
    orders: Mutex<Orders>,
    stock: Mutex<Stock>,
    runs: Mutex<Option<CachedRun>>,
    /// Documents read into the ledger and the stock so far.
    docs_read: AtomicU64,
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
    pub(crate) stock: Arc<StockIndex>,
    /// When.
    fingerprint: Fingerprint,
}

/// Reads order documents `ids` under one hold of the lock: each one's entry, or `None` if it is gone or
/// has no parties (a full scan lists only orders with parties, [`HubDocs::order_ids`]).
fn read_orders(docs: &HubDocs, ids: &[DocId]) -> Vec<(DocId, Option<Entry>)> {
    ids.iter()
        .map(|id| {
            let entry = docs.has_parties(id).then(|| docs.get(id).map(|d| Entry::of(&d, id))).flatten();
            (id.clone(), entry)
        })
        .collect()
}

impl Orders {
    /// Brings the ledger up to date: the orders changed since the last look, or all of them. Counts the
    /// documents read into `read`.
    fn refresh(&mut self, docs: &TimedMutex<HubDocs>, read: &AtomicU64) {
        let changed = docs.lock().take_order_changes();
        match changed {
            Some(ids) if self.built => {
                let ids: Vec<DocId> = ids.into_iter().collect();
                for chunk in ids.chunks(READ_CHUNK) {
                    let entries = read_orders(&docs.lock(), chunk);
                    read.fetch_add(entries.len() as u64, Ordering::Relaxed);
                    for (id, entry) in entries {
                        self.ledger.set(&id, entry);
                    }
                }
            }
            // The first look, or more changes than were noted: every order again. Changes made while this
            // runs are noted and read by the next look.
            _ => {
                self.ledger.clear();
                let mut after: Option<String> = None;
                for _ in 0..=ORDERS_SCAN_MAX / READ_CHUNK {
                    let entries = {
                        let d = docs.lock();
                        read_orders(&d, &d.order_ids(None, after.as_deref(), READ_CHUNK))
                    };
                    read.fetch_add(entries.len() as u64, Ordering::Relaxed);
                    let n = entries.len();
                    after = entries
                        .last()
                        .and_then(|(d, _)| d.as_str().strip_prefix(schema::ORDER_PREFIX))
                        .map(str::to_owned);
                    for (id, entry) in entries {
                        self.ledger.set(&id, entry);
                    }
                    if n < READ_CHUNK || after.is_none() {
                        break;
                    }
                }
                self.built = true;
            }
        }
    }

    fn index(&mut self, today: u64) -> Arc<DemandIndex> {
        let key = (self.ledger.version, today);
        match &self.index {
            Some((k, idx)) if *k == key => idx.clone(),
            _ => {
                let idx = Arc::new(self.ledger.index(today));
                self.index = Some((key, idx.clone()));
                idx
            }
        }
    }
}

impl Stock {
    /// Brings the sites' stock up to date: the stock documents changed since the last look, or all of
    /// them; one document per hold of the lock (a stock document may list 100,000 SKUs).
    fn refresh(&mut self, docs: &TimedMutex<HubDocs>, read: &AtomicU64) {
        let changed = docs.lock().take_stock_changes();
        let ids: Vec<DocId> = match changed {
            Some(ids) if self.built => ids.into_iter().collect(),
            _ => {
                self.sites.clear();
                self.built = true;
                docs.lock().stock_ids(STOCK_SITES_MAX)
            }
        };
        for id in ids {
            // By the document's base name, read in its current generation: a site's stock is one entry
            // whichever generations of its document changed (see `oms_protocol::generations`).
            let id = oms_protocol::generations::base(&id);
            let site = docs.lock().get(&id).and_then(|d| SiteStock::read(&d, &id));
            read.fetch_add(1, Ordering::Relaxed);
            match site {
                Some(s) if self.sites.get(&id).is_some_and(|old| **old == s) => {}
                Some(s) if self.sites.len() < STOCK_SITES_MAX || self.sites.contains_key(&id) => {
                    self.sites.insert(id, Arc::new(s));
                    self.version = self.version.wrapping_add(1);
                }
                Some(_) => {}
                None => {
                    if self.sites.remove(&id).is_some() {
                        self.version = self.version.wrapping_add(1);
                    }
                }
            }
        }
    }

    fn index(&mut self) -> Arc<StockIndex> {
        match &self.index {
            Some((v, idx)) if *v == self.version => idx.clone(),
            _ => {
                let idx = Arc::new(StockIndex::of(self.sites.values().map(|s| &**s)));
                self.index = Some((self.version, idx.clone()));
                idx
            }
        }
    }
}

impl DemandCache {
    /// The demand index and the sites' available stock, brought up to date from the documents that changed
    /// (see the module docs); the documents' lock is held for a chunk of reads at a time, never for a scan.
    pub(crate) fn snapshot(&self, docs: &TimedMutex<HubDocs>, today: u64) -> Snapshot {
        let mut orders = lock(&self.orders);
        orders.refresh(docs, &self.docs_read);
        let index = orders.index(today);
        let demand = orders.ledger.version;
        drop(orders);
        let mut stock = lock(&self.stock);
        stock.refresh(docs, &self.docs_read);
        let fingerprint = Fingerprint { today, demand, stock: stock.version };
        Snapshot { index, stock: stock.index(), fingerprint }
    }

    /// Every site's stock as last read, brought up to date from the stock documents that changed, by site.
    /// Each site's figures come from one state of its document.
    pub(crate) fn stock_sites(&self, docs: &TimedMutex<HubDocs>) -> Vec<Arc<SiteStock>> {
        let mut stock = lock(&self.stock);
        stock.refresh(docs, &self.docs_read);
        stock.sites.values().cloned().collect()
    }

    /// Reads every order and stock document once, so that the first forecast after a start does not (the
    /// hub calls this in the background at start).
    pub fn warm(&self, docs: &TimedMutex<HubDocs>) {
        lock(&self.stock).refresh(docs, &self.docs_read);
        lock(&self.orders).refresh(docs, &self.docs_read);
    }

    /// Documents read into the ledger and the stock so far.
    pub fn docs_read(&self) -> u64 {
        self.docs_read.load(Ordering::Relaxed)
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
    use crate::demand::test_support::{TODAY, hub_docs, order_record};
    use oms_protocol::domain::{Balance, FulfillmentState, NodeId, Sku};
    use proptest::prelude::*;

    /// Writes an order as its site would (through the hub's own write path, which notes the change alike).
    fn write(docs: &TimedMutex<HubDocs>, order: (DocId, NodeId, oms_protocol::records::OrderRecord)) {
        let (name, node, rec) = order;
        docs.lock().write_local(&name, |d| schema::write_order(d, &node, &rec, 2)).unwrap();
    }

    #[test]
    fn a_change_reads_the_changed_document_only() {
        use FulfillmentState::*;
        let dir = tempfile::tempdir().unwrap();
        let orders: Vec<_> = (1..=200).map(|n| ("wh1", n, TODAY - 1 - n % 20, 1, Accepted, &[("A", 1)][..])).collect();
        let docs = TimedMutex::new(hub_docs(dir.path(), &orders, &[("wh1", "A", 5)]));
        docs.lock().enroll(&NodeId::parse("wh1").unwrap());
        let cache = DemandCache::default();
        let a = cache.snapshot(&docs, TODAY);
        assert_eq!(cache.docs_read(), 201, "the first look reads every order and stock document once");
        let b = cache.snapshot(&docs, TODAY);
        assert!(Arc::ptr_eq(&a.index, &b.index));
        assert_eq!(cache.docs_read(), 201, "nothing changed, nothing read");
        write(&docs, order_record("wh1", 7, (TODAY - 2) * crate::demand::DAY_MS, Cancelled, &[("A", 1)], None));
        let c = cache.snapshot(&docs, TODAY);
        assert_eq!(cache.docs_read(), 202, "one order changed, one document read");
        assert!(!Arc::ptr_eq(&a.index, &c.index));
        assert_eq!(*c.index, DemandIndex::build(&docs.lock(), TODAY));
        assert!(Arc::ptr_eq(&a.stock, &c.stock), "the stock did not change");
        // A new day cuts the history again from the ledger: no document is read.
        let d = cache.snapshot(&docs, TODAY + 1);
        assert_eq!(d.index.today, TODAY + 1);
        assert_eq!(cache.docs_read(), 202);
        assert_eq!(*d.index, DemandIndex::build(&docs.lock(), TODAY + 1));
    }

    #[test]
    fn too_many_changes_read_everything_again() {
        let dir = tempfile::tempdir().unwrap();
        let docs = TimedMutex::new(hub_docs(dir.path(), &[], &[]));
        docs.lock().enroll(&NodeId::parse("wh1").unwrap());
        let cache = DemandCache::default();
        cache.snapshot(&docs, TODAY);
        // Fake an overflow of the notes: the next look reads every order.
        for n in 0..3 {
            write(
                &docs,
                order_record(
                    "wh1",
                    n,
                    (TODAY - 1) * crate::demand::DAY_MS,
                    FulfillmentState::Accepted,
                    &[("A", 2)],
                    None,
                ),
            );
        }
        assert!(docs.lock().take_order_changes().is_some_and(|s| s.len() == 3));
        let snap = cache.snapshot(&docs, TODAY);
        assert!(snap.index.history_of(Basis::Ordered, "A", None).is_none(), "the notes were taken above");
        docs.lock().overflow_order_changes();
        let snap = cache.snapshot(&docs, TODAY);
        assert_eq!(*snap.index, DemandIndex::build(&docs.lock(), TODAY));
        assert_eq!(snap.index.history_of(Basis::Ordered, "A", None).unwrap().values, vec![6.0]);
    }

    const STATUSES: [FulfillmentState; 6] = [
        FulfillmentState::Accepted,
        FulfillmentState::Picking,
        FulfillmentState::Shipped,
        FulfillmentState::Delivered,
        FulfillmentState::Cancelled,
        FulfillmentState::Rejected,
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// The incremental ledger equals a full rebuild over the same documents, after any sequence of
        /// order changes (new orders, progress, shipments dated or not, cancellations), looked at in between
        /// or not, and on a later day without reading anything.
        #[test]
        fn the_ledger_equals_a_full_rebuild_after_random_changes(
            ops in proptest::collection::vec((0usize..3, 0u64..10, 0u64..40, 0usize..6, 1u32..5, 0u8..3, any::<bool>()), 1..50),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let docs = TimedMutex::new(hub_docs(dir.path(), &[], &[]));
            for s in ["wh1", "wh2", "wh3"] {
                docs.lock().enroll(&NodeId::parse(s).unwrap());
            }
            let cache = DemandCache::default();
            for (site, seq, age, status, qty, ship, look) in ops {
                let site = ["wh1", "wh2", "wh3"][site];
                let status = STATUSES[status];
                // Some orders are today's (not history yet).
                let created = (TODAY - age.min(TODAY) + u64::from(age == 0)) * crate::demand::DAY_MS - 3_600_000;
                let lines = [("A", qty), ("B", qty + 1)];
                let lines = if seq % 2 == 0 { &lines[..1] } else { &lines[..] };
                let shipped = matches!(status, FulfillmentState::Shipped | FulfillmentState::Delivered).then(|| match ship {
                    0 => (Some(FulfillmentState::Shipped), created + crate::demand::DAY_MS),
                    1 => (Some(FulfillmentState::Delivered), created + 2 * crate::demand::DAY_MS),
                    _ => (None, 0),
                });
                write(&docs, order_record(site, seq, created, status, lines, shipped));
                if look {
                    cache.snapshot(&docs, TODAY);
                }
            }
            let snap = cache.snapshot(&docs, TODAY);
            prop_assert_eq!(&*snap.index, &DemandIndex::build(&docs.lock(), TODAY));
            let read = cache.docs_read();
            let later = cache.snapshot(&docs, TODAY + 3);
            prop_assert_eq!(&*later.index, &DemandIndex::build(&docs.lock(), TODAY + 3));
            prop_assert_eq!(cache.docs_read(), read);
        }
    }

    /// Reads while a site's stock document changes under heavy writing: every figure a read returns is
    /// from one commit of the document. Each commit sets SKUs A and B to the same count, so a read that
    /// mixed two commits would see them differ.
    #[test]
    fn stock_reads_during_writes_never_mix_two_commits() {
        let dir = tempfile::tempdir().unwrap();
        let docs = Arc::new(TimedMutex::new(hub_docs(dir.path(), &[], &[("wh1", "A", 0), ("wh1", "B", 0)])));
        let cache = Arc::new(DemandCache::default());
        let node = NodeId::parse("wh1").unwrap();
        let name = schema::stock_doc(&node).unwrap();
        let writer = {
            let docs = docs.clone();
            std::thread::spawn(move || {
                for n in 1..=400u64 {
                    let b = Balance { on_hand: n, reserved: 0, staged: 0 };
                    docs.lock()
                        .write_local(&name, |d| {
                            schema::write_stock(d, &node, &Sku::parse("A").unwrap(), &b, n)?;
                            schema::write_stock(d, &node, &Sku::parse("B").unwrap(), &b, n)?;
                            Ok(true)
                        })
                        .unwrap();
                }
            })
        };
        let readers: Vec<_> = (0..4)
            .map(|r| {
                let (docs, cache) = (docs.clone(), cache.clone());
                std::thread::spawn(move || {
                    let mut seen = 0u64;
                    for _ in 0..300 {
                        let (a, b) = if r % 2 == 0 {
                            let snap = cache.snapshot(&docs, TODAY);
                            (snap.stock.available("A", Some("wh1")), snap.stock.available("B", Some("wh1")))
                        } else {
                            let sites = cache.stock_sites(&docs);
                            let s = &sites[0];
                            (s.skus[0].1.on_hand, s.skus[1].1.on_hand)
                        };
                        assert_eq!(a, b, "a read mixed two commits");
                        assert!(a >= seen, "a read went back in time");
                        seen = a;
                    }
                    seen
                })
            })
            .collect();
        writer.join().unwrap();
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(cache.snapshot(&docs, TODAY).stock.available("A", Some("wh1")), 400);
    }

    /// A site whose stock document continues in new generations stays one site, with the newest figures:
    /// the stock is kept by the document's base name, whichever generation changed.
    #[test]
    fn a_site_whose_stock_document_starts_new_generations_stays_one_site() {
        let dir = tempfile::tempdir().unwrap();
        let docs = TimedMutex::new(hub_docs(dir.path(), &[], &[("wh1", "A", 0)]));
        docs.lock().sync.db.set_history_ops_min(100);
        let cache = DemandCache::default();
        let node = NodeId::parse("wh1").unwrap();
        let name = schema::stock_doc(&node).unwrap();
        for n in 1..=300u64 {
            let b = Balance { on_hand: n, reserved: 0, staged: 0 };
            docs.lock()
                .write_local(&name, |d| schema::write_stock(d, &node, &Sku::parse("A").unwrap(), &b, n))
                .unwrap();
            // Read now and then, so that the cache holds the older generations as they go.
            if n % 7 == 0 {
                let sites = cache.stock_sites(&docs);
                assert_eq!(sites.len(), 1, "one site after {n} writes");
                assert_eq!(sites[0].skus[0].1.on_hand, n);
            }
        }
        assert!(oms_protocol::generations::of(&docs.lock().db().current(&name)) >= 2, "generations started");
        assert_eq!(cache.stock_sites(&docs).len(), 1);
        assert_eq!(cache.snapshot(&docs, TODAY).stock.available("A", Some("wh1")), 300);
    }
}
