//! What the hub's screens cost: server render time of the planner's, service's and customer's screens over
//! `BENCH_N` requests each, timed alternately with the hub's `GET /healthz` in the same run (the baseline: the
//! cheapest answer of the same server over the same connection), p50 and p99 and their ratios; first idle,
//! then while `BENCH_CLIENTS` channel clients place orders at the hub as fast as it takes them (the demo's
//! kind of load: intake, routing, sync to the site, events). The data is `oms_tests::floor::Floor`: a real hub
//! and node, a shipped card order with a return, a purchase order with an ASN. The forecast screen is not in
//! the list: it needs 14 days of demand history, which this data does not have (it answers `422
//! insufficient_history`).
//!
//! `cargo bench -p oms-tests --bench hub_screens` (env: `BENCH_N` requests per screen and phase, default
//! 200; `BENCH_CLIENTS`, default 8). Every loop is bounded by count or time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use oms_tests::browser::Browser;
use oms_tests::stats::{env_u64, loadavg, percentile};
use serde_json::json;

/// Longest the load phase's clients run, whatever `BENCH_N` is.
const LOAD_MAX: Duration = Duration::from_secs(600);

async fn signed_in(hub: std::net::SocketAddr, name: &str) -> Browser {
    let mut b = Browser::new(hub);
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.sign_in(name, "a long password").await.status != 303 {
        assert!(Instant::now() < deadline, "{name} never signed in");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_u64("BENCH_N", 200);
    let clients = env_u64("BENCH_CLIENTS", 8);
    println!(
        "hub screens bench: {n} requests per screen and phase, {clients} clients in the load phase; load {}",
        loadavg()
    );
    let f = oms_tests::floor::Floor::start_with("open_rate_per_s = 1000000").await;
    let hub = f.hub_http;
    let admin = oms_tests::http();
    let order = f.fulfillment.rsplit_once('.').map(|(o, _)| o.to_owned()).unwrap();
    let (_, v) = oms_tests::get(&admin, format!("http://{hub}/v1/orders/{order}")).await;
    let token = v["tracking_token"].as_str().unwrap().to_owned();
    let (mut per, mut sam, mut customer) =
        (signed_in(hub, "per").await, signed_in(hub, "sam").await, Browser::new(hub));
    let screens: Vec<(&str, &str, String)> = vec![
        ("planner", "network", "/ui".into()),
        ("planner", "stock", "/ui/stock".into()),
        ("planner", "stock CSV", "/ui/stock.csv".into()),
        ("planner", "reports", "/ui/reports".into()),
        ("service", "order search", "/ui/orders?q=C".into()),
        ("service", "order", format!("/ui/orders/{order}")),
        ("customer", "tracking page", format!("/t/{token}")),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let placed = Arc::new(AtomicU64::new(0));
    for phase in ["idle", "under load"] {
        let mut load = Vec::new();
        if phase == "under load" {
            stop.store(false, Ordering::Relaxed);
            for c in 0..clients {
                let (stop, placed) = (stop.clone(), placed.clone());
                load.push(tokio::spawn(async move {
                    let http = oms_tests::http();
                    let started = Instant::now();
                    for i in 0u64.. {
                        if stop.load(Ordering::Relaxed) || started.elapsed() > LOAD_MAX {
                            break;
                        }
                        let body = json!({
                            "external_ref": format!("load-{c}-{i}"), "channel": "web",
                            "lines": [{"sku": "SKU-B", "qty": 1, "unit_price_minor": 500, "currency": "EUR"}],
                            "ship_to": {"name": "C", "line1": "1 Street", "city": "X", "postcode": "10115",
                                "country": "DE", "lat": 52.52, "lon": 13.40},
                        });
                        let r = http
                            .post(format!("http://{hub}/v1/orders"))
                            .header("idempotency-key", format!("load-{c}-{i}"))
                            .json(&body)
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status().as_u16() == 201 => {
                                placed.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) if i == 0 => {
                                println!("load client {c}: {} {}", r.status(), r.text().await.unwrap_or_default())
                            }
                            Err(e) if i == 0 => println!("load client {c}: {e}"),
                            _ => {}
                        }
                    }
                }));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        println!("\n{phase} (load {}):\n", loadavg());
        println!(
            "| who | screen | path | screen p50 | screen p99 | /healthz p50 | /healthz p99 | ÷ p50 | ÷ p99 | bytes |"
        );
        println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
        for (who, name, path) in &screens {
            let b = match *who {
                "planner" => &mut per,
                "service" => &mut sam,
                _ => &mut customer,
            };
            let (ui, hz, bytes) = b.alternate_with_healthz(path, n).await;
            let (u50, u99, h50, h99) =
                (percentile(&ui, 0.5), percentile(&ui, 0.99), percentile(&hz, 0.5), percentile(&hz, 0.99));
            println!(
                "| {who} | {name} | `{}` | {u50:.2} ms | {u99:.2} ms | {h50:.2} ms | {h99:.2} ms | {:.2} | {:.2} | {bytes} |",
                path.split('?').next().unwrap_or(path),
                u50 / h50,
                u99 / h99
            );
        }
        stop.store(true, Ordering::Relaxed);
        for l in load {
            l.await.unwrap();
        }
    }
    println!("\norders placed during the load phase: {}; load after: {}", placed.load(Ordering::Relaxed), loadavg());
}
