//! Helpers shared by the node's store-level integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use oms_node::metrics::Metrics;
use oms_node::store::{CatalogItem, Limits, Store, cmd};
use oms_protocol::domain::{Movement, NodeId, Sku};

/// A store for site `wh-a` in `dir` with each (SKU, units) in the catalog and received.
pub async fn store_with_stock(dir: &Path, limits: Limits, stock: &[(&str, u32)]) -> Store {
    let site = NodeId::parse("wh-a").unwrap();
    let store = Store::open(&dir.join("node.redb"), site, limits, Arc::new(Metrics::new())).unwrap();
    for (sku, qty) in stock {
        let sku = Sku::parse(sku).unwrap();
        let item = CatalogItem { sku: sku.clone(), name: sku.to_string(), bin: "A-1".into() };
        store.execute(cmd::PutCatalog(item)).await.unwrap();
        let m = Movement::Receipt { qty: *qty, note: None };
        store.execute(cmd::Stock { sku, movement: m }).await.unwrap();
    }
    store
}
