//! Power loss at hundreds of points of node intake: the store runs on a recording backend
//! (`oms_service::storage::crash`), and afterwards the bytes a disk could hold had the power been cut after
//! each chosen operation are rebuilt (only what was synced; some of what was written since; a torn page)
//! and opened as the node would after the power came back. Every order acknowledged before the cut must be
//! there exactly once, nothing else half there, and the ledger must replay to the balances.
//!
//! `OMS_POWER_CUTS` sets how many cut points (default 300), each tried three ways.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use oms_node::metrics::Metrics;
use oms_node::store::{CatalogItem, Limits, Store, cmd};
use oms_protocol::domain::{Movement, NodeId, Sku};
use oms_protocol::fixtures;
use oms_service::storage::crash::{CrashBackend, Cut, OpLog, image_at};

fn limits() -> Limits {
    Limits { storage_reserve_bytes: 0, cache_bytes: 4 << 20, ..Limits::default() }
}

fn open(backend: CrashBackend) -> Result<Store, oms_node::store::StoreError> {
    let site = NodeId::parse("wh-a").unwrap();
    Store::open_on(Path::new("node.redb"), Box::new(backend), site, limits(), Arc::new(Metrics::new()))
}

#[test]
fn every_acknowledged_order_survives_a_power_cut_at_any_point_exactly_once() {
    let cuts: usize = std::env::var("OMS_POWER_CUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let sku = Sku::parse("A").unwrap();
    let log = OpLog::default();
    // The run: a catalog, stock, then orders three at a time (so batches share a commit) and the odd cancel.
    // Each acknowledged order is noted with how many operations had reached the storage by then.
    let acked: Vec<(String, String, usize)> = rt.block_on(async {
        let store = open(CrashBackend::recording(log.clone())).unwrap();
        let item = CatalogItem { sku: sku.clone(), name: "A".into(), bin: "A-1".into() };
        store.execute(cmd::PutCatalog(item)).await.unwrap();
        store
            .execute(cmd::Stock { sku: sku.clone(), movement: Movement::Receipt { qty: 10_000, note: None } })
            .await
            .unwrap();
        let mut acked = Vec::new();
        for round in 0..40 {
            // Spawned, so the three are queued together and the writer commits them in one batch.
            let orders: Vec<_> = (0..3)
                .map(|i| {
                    let (store, ext) = (store.clone(), format!("o-{round}-{i}"));
                    let draft = fixtures::draft(&ext, &sku, 1 + i);
                    tokio::spawn(async move { store.execute(cmd::CreateOrder { key: ext, draft }).await })
                })
                .collect();
            for (i, t) in orders.into_iter().enumerate() {
                let record = t.await.unwrap().unwrap().record;
                let at = log.lock().unwrap().len();
                acked.push((record.id.to_string(), format!("o-{round}-{i}"), at));
                if round % 7 == 3 && i == 2 {
                    store.execute(cmd::Cancel { order: record.id, reason: "cut".into() }).await.unwrap();
                }
            }
        }
        store.close();
        acked
    });
    let ops = log.lock().unwrap().clone();
    let step = (ops.len() / cuts).max(1);
    let mut checked = 0usize;
    let mut points = 0usize;
    for cut in (0..=ops.len()).step_by(step) {
        points += 1;
        for how in [Cut::DropUnsynced, Cut::KeepSome(cut as u64), Cut::TearPage(cut as u64)] {
            let must: Vec<&(String, String, usize)> = acked.iter().filter(|(_, _, at)| *at <= cut).collect();
            let store = match open(CrashBackend::from_image(image_at(&ops, cut, how))) {
                Ok(s) => s,
                // Before the first commit there may be no database at all.
                Err(e) => {
                    assert!(
                        must.is_empty(),
                        "cut {cut} {how:?}: the store does not open ({e}) though orders were acknowledged"
                    );
                    continue;
                }
            };
            let all = store.orders(None, None, 10_000).unwrap();
            let mut by_ref: BTreeMap<String, usize> = BTreeMap::new();
            for o in &all {
                *by_ref.entry(o.order.external_ref.to_string()).or_default() += 1;
            }
            assert!(by_ref.values().all(|n| *n == 1), "cut {cut} {how:?}: an order twice: {by_ref:?}");
            for (id, ext, _) in &must {
                assert!(
                    all.iter().any(|o| o.id.as_str() == id && o.order.external_ref.as_str() == ext),
                    "cut {cut} {how:?}: {id} lost"
                );
            }
            assert!(
                all.iter().all(|o| acked.iter().any(|(id, _, _)| o.id.as_str() == id)),
                "cut {cut} {how:?}: an order never taken"
            );
            assert_eq!(store.verify_ledger().unwrap(), Vec::<Sku>::new(), "cut {cut} {how:?}: ledger ≠ balances");
            checked += must.len();
            store.close();
        }
    }
    assert!(points >= cuts.min(ops.len()) / 2, "{points} points");
    eprintln!(
        "power cuts: {points} points × 3 ways over {} operations, {checked} acknowledged orders checked",
        ops.len()
    );
}
