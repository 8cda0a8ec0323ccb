//! What the receiving, returns and dispatch screens cost: server render time of each node screen over `BENCH_N`
//! requests, timed alternately with `GET /healthz` in the same run (the baseline: the cheapest answer the
//! same server gives over the same connection), p50 and p99 and their ratios. The site is
//! `oms_tests::floor::Floor`: a real hub and node with one purchase order (ASN-1), one approved return and a
//! shipped order; a signed-in staff session.
//!
//! `cargo bench -p oms-tests --bench floor_screens` (env: `BENCH_N` requests per screen, default 400). Every
//! loop is bounded by count or time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use oms_tests::browser::Browser;
use oms_tests::stats::{env_u64, loadavg, percentile};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_u64("BENCH_N", 400);
    println!("node floor screens bench: {n} requests per screen; load {}", loadavg());
    // The screens share the per-IP rate of the open routes (20/s by default); the bench is one IP.
    let f = oms_tests::floor::Floor::start_with("open_rate_per_s = 1000000").await;
    let mut b = Browser::new(f.node.http);
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.sign_in("ana", "4711").await.status != 303 {
        assert!(Instant::now() < deadline, "ana never signed in");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let screens = [
        ("today's work", "/ui".to_owned()),
        ("receiving (list)", "/ui/inbound".to_owned()),
        ("receiving an ASN", format!("/ui/inbound/{}?asn=ASN-1", f.po)),
        ("returns (list)", "/ui/returns".to_owned()),
        ("receiving a return", format!("/ui/returns/{}", f.rma)),
        ("dispatch", "/ui/dispatch".to_owned()),
    ];
    println!(
        "| screen | path | screen p50 | screen p99 | /healthz p50 | /healthz p99 | ratio p50 | ratio p99 | bytes |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, path) in &screens {
        let (ui, hz, bytes) = b.alternate_with_healthz(path, n).await;
        let (u50, u99, h50, h99) =
            (percentile(&ui, 0.5), percentile(&ui, 0.99), percentile(&hz, 0.5), percentile(&hz, 0.99));
        println!(
            "| {name} | `{}` | {u50:.2} ms | {u99:.2} ms | {h50:.2} ms | {h99:.2} ms | {:.2} | {:.2} | {bytes} |",
            path.split('?').next().unwrap_or(path),
            u50 / h50,
            u99 / h99
        );
    }
    println!("load after: {}", loadavg());
}
