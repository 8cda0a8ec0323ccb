//! Setup shared by the node's unit tests: a store for one site with a catalog, and stock movements in it.
//! (The integration tests in `node/tests` cannot see this module; `node/tests/common` is theirs.)

use std::path::Path;
use std::sync::Arc;

use oms_protocol::domain::{Movement, NodeId, OrderDraft, OrderId, Sku};
use oms_protocol::schema::{self, HUB_ORIGIN};
use oms_protocol::wire::DocId;
use oms_service::now_ms;
use oms_sync::DocDb;

use crate::metrics::Metrics;
use crate::store::{CatalogItem, Limits, Store, cmd};

/// The site the unit tests' stores belong to.
pub(crate) fn site() -> NodeId {
    NodeId::parse("wh-a").unwrap()
}

/// A store for [`site`] in `dir/node.redb` with each of `skus` in the catalog (named as the SKU, bin `A-1`)
/// and no stock yet.
pub(crate) async fn store_with_catalog(dir: &Path, skus: &[&str]) -> Store {
    let store = Store::open(&dir.join("node.redb"), site(), Limits::default(), Arc::new(Metrics::new())).unwrap();
    for s in skus {
        let item = CatalogItem { sku: Sku::parse(s).unwrap(), name: (*s).into(), bin: "A-1".into() };
        store.execute(cmd::PutCatalog(item)).await.unwrap();
    }
    store
}

/// Records `movement` of SKU `sku` at `store`.
pub(crate) async fn movement(store: &Store, sku: &str, movement: Movement) {
    store.execute(cmd::Stock { sku: Sku::parse(sku).unwrap(), movement }).await.unwrap();
}

/// Writes into `db` the hub's assignment `hub-<n>.1` of `draft` to [`site`], as the hub's intake creates it;
/// returns the fulfillment's id and its document's name.
pub(crate) fn hub_assignment(db: &mut DocDb, n: u64, draft: &OrderDraft) -> (OrderId, DocId) {
    let parent = OrderId::new(&NodeId::parse(HUB_ORIGIN).unwrap(), n);
    let id = OrderId::parse(&format!("{parent}.1")).unwrap();
    let name = schema::order_doc(&id).unwrap();
    schema::create_hub_order(db.get_or_create(&name).unwrap(), &id, &parent, &site(), draft, now_ms()).unwrap();
    (id, name)
}
