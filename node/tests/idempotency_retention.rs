//! Idempotency keys are remembered for `Limits::idempotency_retention_ms`, then forgotten by the writer (a
//! bounded number per transaction), so the table does not grow for ever.

mod common;

use std::time::Duration;

use oms_node::store::{Limits, NewOrder, Store, StoreError, cmd};
use oms_protocol::domain::Sku;
use oms_protocol::fixtures;

async fn open(dir: &std::path::Path, retention_ms: u64) -> Store {
    let limits = Limits { idempotency_retention_ms: retention_ms, ..Limits::default() };
    common::store_with_stock(dir, limits, &[("A", 100)]).await
}

fn create(key: &str, ext: &str) -> cmd::CreateOrder {
    cmd::CreateOrder { key: key.into(), draft: fixtures::draft(ext, &Sku::parse("A").unwrap(), 1) }
}

#[test]
fn keys_are_kept_for_the_retention_then_forgotten() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // Default retention (7 days): another body under the same key is refused.
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), Limits::default().idempotency_retention_ms).await;
        store.execute(create("k", "first")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        store.execute(create("other", "x")).await.unwrap();
        let e = store.execute(create("k", "second")).await.unwrap_err();
        assert!(matches!(e, StoreError::IdempotencyKeyReused(_)), "{e:?}");
        store.close();

        // Retention 1 ms: once a later write ran, the key is forgotten and the same key makes a new order.
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 1).await;
        let first = store.execute(create("k", "first")).await.unwrap().record;
        tokio::time::sleep(Duration::from_millis(5)).await;
        store.execute(create("other", "x")).await.unwrap();
        let NewOrder { record: second, created } = store.execute(create("k", "second")).await.unwrap();
        assert!(created, "a forgotten key creates a new order");
        assert_ne!(first.id, second.id);
        store.close();
    });
}
