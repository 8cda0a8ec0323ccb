//! Label outbox figures for BENCHMARKS.md, with the fault-injecting `test` carrier (labels written to a
//! directory, no network): the outbox's drain rate (consignments packed while the carrier was unreachable,
//! labelled once it answers again: labels/s) against the disk's raw fsync rate measured in the same run (each
//! label takes two commits: the attempt before the call, the label after it); and the latency from pack to
//! label (the consignment's `labelled_ms − created_ms`, both the node's clock) with the carrier up.
//!
//! `cargo bench -p oms-tests --bench labels` (env: `BENCH_LABELS` consignments per phase, default 300).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use oms_tests::stats::{env_u64, fsync_rate, loadavg, percentile};
use oms_tests::{NodeProc, get, http, order_body, place, post, seed};
use serde_json::{Value, json};

/// Places `n` orders of one unit, picks them on waves; answers their ids.
async fn picked(c: &reqwest::Client, node: &NodeProc, n: u64, tag: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let ext = format!("{tag}-{i}");
        let (s, o) = place(c, node, &ext, &order_body(&ext, &[("SKU-1", 1)])).await;
        assert_eq!(s, 201, "{o}");
        ids.push(o["id"].as_str().unwrap().to_owned());
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (s, _) = post(c, node.url("/v1/waves"), json!({})).await;
        if s != 201 {
            break;
        }
        assert!(Instant::now() < deadline, "waves did not drain");
    }
    for id in &ids {
        let (s, v) =
            post(c, node.url(&format!("/v1/orders/{id}/picks")), json!({"lines": [{"sku": "SKU-1", "picked": 1}]}))
                .await;
        assert_eq!(s, 200, "{v}");
    }
    ids
}

async fn pack(c: &reqwest::Client, node: &NodeProc, id: &str) {
    let parcel = json!({"weight_g": 900, "length_mm": 300, "width_mm": 200, "height_mm": 100});
    let (s, v) = post(c, node.url(&format!("/v1/orders/{id}/pack")), json!({"parcels": [parcel]})).await;
    assert_eq!(s, 200, "{v}");
}

/// Waits until every consignment of `ids` is labelled; answers them.
async fn all_labelled(c: &reqwest::Client, node: &NodeProc, ids: &[String]) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (_, v) = get(c, node.url("/v1/consignments?limit=1")).await;
        if v["counts"]["awaiting_label"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "labels not bought in time: {v}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut out = Vec::new();
    for id in ids {
        let (_, v) = get(c, node.url(&format!("/v1/consignments/C-{id}"))).await;
        assert_eq!(v["state"], "labelled", "{v}");
        out.push(v);
    }
    out
}

fn ms(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap()
}

#[tokio::main]
async fn main() {
    let n = env_u64("BENCH_LABELS", 300);
    let tmp = tempfile::tempdir().unwrap();
    let carrier = tmp.path().join("carrier");
    std::fs::create_dir_all(&carrier).unwrap();
    let dir = tmp.path().join("node");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = format!(
        "[carrier]\nkind = \"test\"\ndir = {:?}\ndefault_service = \"ground\"\nlabel_poll_ms = 10\n",
        carrier.display().to_string()
    );
    let node = NodeProc::start_with_config("bench", &dir, &cfg);
    let c = http();
    seed(&c, &node, "SKU-1", u32::try_from(2 * n).unwrap()).await;
    println!("load average at start: {}", loadavg());
    let (fsyncs, f50, f99) = fsync_rate(&dir, 2000);
    println!("raw fsync: {fsyncs:.0}/s (p50 {f50:.3} ms, p99 {f99:.3} ms)");

    // Drain: packed while the carrier is unreachable, then the carrier answers again.
    let ids = picked(&c, &node, n, "drain").await;
    std::fs::write(carrier.join("fault"), "unreachable").unwrap();
    for id in &ids {
        pack(&c, &node, id).await;
    }
    let t0 = Instant::now();
    std::fs::remove_file(carrier.join("fault")).unwrap();
    let drained = all_labelled(&c, &node, &ids).await;
    let secs = t0.elapsed().as_secs_f64();
    let first = drained.iter().map(|v| ms(v, "labelled_ms")).min().unwrap();
    let last = drained.iter().map(|v| ms(v, "labelled_ms")).max().unwrap();
    let rate = n as f64 / ((last - first).max(1) as f64 / 1000.0);
    println!(
        "drain: {n} labels in {secs:.2} s wall, {rate:.0} labels/s between the first and last label \
         ({:.3} of raw fsync/s; each label is 2 commits)",
        rate / fsyncs
    );

    // Latency: packed one after another with the carrier up.
    let ids = picked(&c, &node, n, "lat").await;
    for id in &ids {
        pack(&c, &node, id).await;
    }
    let done = all_labelled(&c, &node, &ids).await;
    let mut lat: Vec<f64> = done.iter().map(|v| (ms(v, "labelled_ms") - ms(v, "created_ms")) as f64).collect();
    lat.sort_by(f64::total_cmp);
    println!(
        "pack → label (label_poll_ms = 10): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms over {n}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0)
    );
    let (bought, twice) = oms_node::carrier::test_purchases(&carrier).unwrap();
    println!("labels bought {bought}, bought twice {twice}");
    println!("load average at end: {}", loadavg());
}
