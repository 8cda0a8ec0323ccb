//! Helpers shared by the node's store-level integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use oms_node::metrics::Metrics;
use oms_node::store::{CatalogItem, Command, Limits, Store};
use oms_protocol::domain::{Address, Channel, Contact, Currency, Movement, NodeId, OrderDraft, OrderLine, Sku};

/// A one-line order of `qty` × `sku` with reference `ext`, shipped to Berlin.
pub fn draft(ext: &str, sku: &Sku, qty: u32) -> OrderDraft {
    OrderDraft {
        external_ref: ext.into(),
        channel: Channel::parse("web").unwrap(),
        lines: vec![OrderLine {
            sku: sku.clone(),
            qty,
            unit_price_minor: 100,
            currency: Currency::parse("EUR").unwrap(),
        }],
        ship_to: Address {
            name: "A".into(),
            line1: "1".into(),
            line2: None,
            city: "B".into(),
            postcode: "1".into(),
            country: "DE".into(),
            lat: 52.0,
            lon: 13.0,
        },
        contact: Contact::default(),
    }
}

/// A store for site `wh-a` in `dir` with each (SKU, units) in the catalog and received.
pub async fn store_with_stock(dir: &Path, limits: Limits, stock: &[(&str, u32)]) -> Store {
    let site = NodeId::parse("wh-a").unwrap();
    let store = Store::open(&dir.join("node.redb"), site, limits, Arc::new(Metrics::new())).unwrap();
    for (sku, qty) in stock {
        let sku = Sku::parse(sku).unwrap();
        let item = CatalogItem { sku: sku.clone(), name: sku.to_string(), bin: "A-1".into() };
        store.execute(Command::PutCatalog(item)).await.unwrap();
        let m = Movement::Receipt { qty: *qty, note: None };
        store.execute(Command::Stock { sku, movement: m }).await.unwrap();
    }
    store
}
