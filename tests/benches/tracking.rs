//! Carrier tracking webhooks at the hub (issue 15, item 6): how many signed tracking events per second a real
//! hub (the `oms-it` binary, HTTP on loopback) accepts durably (`200` from `POST /v1/carriers/{carrier}/events`:
//! the event, its index row and its waiting row committed with fsync in `intake.redb`), at 1 and 16
//! concurrent clients; and, in the same run as the baseline, the same requests with a signature made with
//! another secret (`401 signature_mismatch`: the route, the body read and the HMAC check, nothing written).
//! Each event has its own id and tracking number (no shipment carries them, so each waits to be matched).
//!
//! `cargo bench -p oms-tests --bench tracking` (env: `BENCH_SECS` per level, default 5). Every loop is
//! bounded by time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::cast_precision_loss)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use oms_hub::events::webhooks::signature_header;
use oms_tests::cluster::{self, free_tcp, free_udp, pki};
use oms_tests::stats::{env_u64, fsync_rate, loadavg};
use serde_json::json;

const SECRET: &str = "whsec_bench_carrier_secret_0123";

/// `clients` clients post events for `secs` seconds, signed with `secret`; (answers with `expect`, others, s).
async fn level(hub: SocketAddr, clients: u64, secs: u64, secret: &'static str, expect: u16) -> (u64, u64, f64) {
    let c = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let stop = started + Duration::from_secs(secs);
    let run: u64 = rand_id();
    let mut tasks = Vec::new();
    for k in 0..clients {
        let (c, ok, bad) = (c.clone(), ok.clone(), bad.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < stop {
                n += 1;
                let body = serde_json::to_vec(&json!({"id": format!("e-{run}-{k}-{n}"),
                    "tracking_code": format!("T-{run}-{k}-{n}"), "status": "in_transit",
                    "occurred_at_ms": oms_service::now_ms(), "description": "arrived at the hub"}))
                .unwrap();
                let sig = signature_header(secret, oms_service::now_ms() / 1_000, &body);
                let r = c
                    .post(format!("http://{hub}/v1/carriers/bench/events"))
                    .header("content-type", "application/json")
                    .header("x-oms-signature", sig)
                    .body(body)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().as_u16() == expect => ok.fetch_add(1, Ordering::Relaxed),
                    _ => bad.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (ok.load(Ordering::Relaxed), bad.load(Ordering::Relaxed), started.elapsed().as_secs_f64())
}

fn rand_id() -> u64 {
    oms_service::now_ms()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs = env_u64("BENCH_SECS", 5);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let certs = pki(root, &["wh-1"]);
    let (quic, http) = (free_udp(), free_tcp());
    let toml = format!("[carriers.bench]\nwebhook_secret = \"{SECRET}\"\n[auth]\nopen_rate_per_s = 1000000\n");
    let _hub = cluster::spawn_hub_with(root, &certs, quic, http, "warn", &toml);
    let c = reqwest::Client::new();
    cluster::wait_healthy(&c, http, Duration::from_secs(30)).await;
    let (fsyncs, _, _) = fsync_rate(root, 200);
    println!(
        "machine: {} cores, loadavg {}; raw fsync {fsyncs:.0}/s",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    println!("| clients | accepted (200)/s | signature refused (401)/s, baseline | ratio | errors |");
    println!("|---|---|---|---|---|");
    for clients in [1u64, 16] {
        let (ok, bad, s) = level(http, clients, secs, SECRET, 200).await;
        let (base, base_bad, bs) = level(http, clients, secs, "whsec_not_the_carriers_secret", 401).await;
        let (rate, base_rate) = (ok as f64 / s, base as f64 / bs);
        println!("| {clients} | {rate:.0} | {base_rate:.0} | {:.2} | {} |", rate / base_rate, bad + base_bad);
    }
}
