//! In-CI fuzzing of the CSV imports (`oms_node::import`, behind `POST /v1/import/catalog` and `/stock` and
//! `oms node import`), as bounded property tests on a real store: arbitrary bytes, and valid files with
//! bytes flipped, rows cut or junk spliced in. No panic; every row is accounted for (accepted + rejected);
//! what was imported reads back; the ledger still replays to the balances. (cargo-fuzz needs libFuzzer
//! crates this CI cannot fetch; proptest runs the same inputs inside `cargo test`.)

mod common;

use oms_node::import::{Kind, import};
use oms_node::store::Limits;
use oms_protocol::domain::Sku;
use proptest::collection::vec;
use proptest::prelude::*;

const CATALOG: &str = "sku,name,bin\nSKU-1,Mug,A-01\nSKU-2,Plate,A-02\nSKU-3,\"Bowl, large\",B-01\n";
const STOCK: &str = "sku,on_hand\nSKU-1,10\nSKU-2,0\nSKU-3,7\n";

fn damaged(base: &str, edits: &[(prop::sample::Index, u8, u8)]) -> Vec<u8> {
    let mut b = base.as_bytes().to_vec();
    for (at, byte, how) in edits {
        if b.is_empty() {
            break;
        }
        let i = at.index(b.len());
        match how {
            0 => b[i] = *byte,
            1 => b.insert(i, *byte),
            _ => {
                b.remove(i);
            }
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 120, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn hostile_csv_is_refused_row_by_row_and_leaves_the_store_consistent(
        raw in vec(any::<u8>(), 0..400),
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..10),
        which in 0u8..4,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = common::store_with_stock(dir.path(), Limits::default(), &[("SKU-1", 5)]).await;
            let (kind, input) = match which {
                0 => (Kind::Catalog, raw.clone()),
                1 => (Kind::Stock, raw.clone()),
                2 => (Kind::Catalog, damaged(CATALOG, &edits)),
                _ => (Kind::Stock, damaged(STOCK, &edits)),
            };
            // CSV ends a record at \n, \r or \r\n: at most one row per terminator, plus the last.
            let lines = input.iter().filter(|b| matches!(**b, b'\n' | b'\r')).count() as u64 + 1;
            let report = import(&store, kind, &input[..], None, |_| {}).await.unwrap();
            assert!(report.accepted + report.rejected <= lines, "{report:?} for {lines} lines");
            assert_eq!(store.verify_ledger().unwrap(), Vec::<Sku>::new(), "ledger ≠ balances");
            let sku1 = store.balance(&Sku::parse("SKU-1").unwrap()).unwrap().unwrap();
            assert!(sku1.reserved <= sku1.on_hand);
            store.close();
        });
    }
}
