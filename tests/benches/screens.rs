//! What the warehouse screens cost: server render time of the pick screen and of today's work against the
//! JSON reads of the same data (the baseline, measured alternately in the same run, as ratios), idle and
//! while 8 clients place orders; and, when Chromium and the npm packages of `tests/ui` are there, the time
//! from a scan's Enter until the pick screen accepts the next scan, and each screen's bytes on first load.
//!
//! `cargo bench -p oms-tests --bench screens` (env: `BENCH_N` requests per kind and phase, default 400).
//! Every loop is bounded by count or time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::cast_precision_loss)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use oms_tests::browser::Browser;
use oms_tests::stats::{env_u64, loadavg, percentile};
use oms_tests::{NodeProc, http, order_body, place, seed};

/// Orders of two lines in the wave picked in Chromium (env `BENCH_SCAN_ORDERS`, default 20, the wave form's default: about 42 scans, a bin scan when the bin changes and a SKU scan per line).
static SCAN_ORDERS: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| env_u64("BENCH_SCAN_ORDERS", 20));

/// The staff user `ana` (PIN 4711), made before the node starts so it is there at once.
fn user(dir: &Path) {
    let new = oms_service::auth::users::NewUser {
        name: "ana".into(),
        role: oms_service::auth::Role::Staff,
        secret: "4711".into(),
        pin: true,
    };
    oms_service::auth::users::create(dir, new, 1).unwrap();
}

/// Times `n` alternating GETs of `page` (with the session cookie) and `json` (with the admin key), ms.
async fn alternate(b: &mut Browser, node: &NodeProc, page: &str, json: &str, n: u64) -> (Vec<f64>, Vec<f64>) {
    let admin = http();
    let (mut ui, mut api) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        let p = b.get(page).await;
        assert_eq!(p.status, 200);
        ui.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let r = admin.get(node.url(json)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.unwrap();
        api.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ui.sort_by(f64::total_cmp);
    api.sort_by(f64::total_cmp);
    (ui, api)
}

fn report(what: &str, ui: &[f64], api: &[f64]) {
    let (u50, u99, a50, a99) = (percentile(ui, 0.5), percentile(ui, 0.99), percentile(api, 0.5), percentile(api, 0.99));
    println!(
        "{what:<34} screen p50 {u50:6.2} ms p99 {u99:6.2} ms | JSON p50 {a50:6.2} ms p99 {a99:6.2} ms | ratio p50 {:.2} p99 {:.2}",
        u50 / a50,
        u99 / a99
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_u64("BENCH_N", 400);
    println!("screens bench: {n} requests per kind and phase; load {}", loadavg());
    let d = tempfile::tempdir().unwrap();
    user(d.path());
    // The screens share the per-IP rate of the open routes (20/s by default); the bench is one IP.
    let node = NodeProc::start_with_config("wh1", d.path(), "[auth]\nopen_rate_per_s = 1000000\n");
    let admin = http();
    for i in 0..20 {
        seed(&admin, &node, &format!("S{i:02}"), 100_000).await;
    }
    for i in 0..200 {
        let lines = [(format!("S{:02}", i % 20), 1), (format!("S{:02}", (i + 7) % 20), 2)];
        let lines: Vec<(&str, u32)> = lines.iter().map(|(s, q)| (s.as_str(), *q)).collect();
        let (s, _) = place(&admin, &node, &format!("w{i}"), &order_body(&format!("w{i}"), &lines)).await;
        assert_eq!(s, 201);
    }
    let r = admin.post(node.url("/v1/waves")).json(&serde_json::json!({"max_orders": 100})).send().await.unwrap();
    let wave: serde_json::Value = r.json().await.unwrap();
    let wave = wave["id"].as_u64().unwrap();
    let mut b = Browser::new(node.addr);
    assert_eq!(b.sign_in("ana", "4711").await.status, 303);
    let pick = format!("/ui/waves/{wave}");
    let wave_json = format!("/v1/waves/{wave}");

    let (ui, api) = alternate(&mut b, &node, &pick, &wave_json, n).await;
    report("pick screen (100-order wave), idle", &ui, &api);
    let (ui, api) = alternate(&mut b, &node, "/ui", "/v1/orders?status=accepted&limit=20", n).await;
    report("today's work, idle", &ui, &api);

    // The same while 8 clients place orders as fast as the node takes them.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for c in 0..8 {
        let (stop, url) = (stop.clone(), node.url("/v1/orders"));
        load.push(tokio::spawn(async move {
            let http = http();
            let deadline = Instant::now() + Duration::from_secs(600);
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let body = order_body(&format!("l{c}-{k}"), &[("S01", 1)]);
                let _ = http.post(&url).header("idempotency-key", format!("l{c}-{k}")).json(&body).send().await;
                k += 1;
            }
            k
        }));
    }
    let (ui, api) = alternate(&mut b, &node, &pick, &wave_json, n).await;
    report("pick screen, 8 clients placing", &ui, &api);
    let (ui, api) = alternate(&mut b, &node, "/ui", "/v1/orders?status=accepted&limit=20", n).await;
    report("today's work, 8 clients placing", &ui, &api);
    stop.store(true, Ordering::Relaxed);
    let mut placed = 0;
    for l in load {
        placed += l.await.unwrap();
    }
    println!("orders placed meanwhile: {placed}");

    // Scan to ready, in Chromium, if it is here.
    let ui_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
    if !Path::new("/usr/bin/chromium").exists() || !ui_dir.join("node_modules/playwright-core").exists() {
        println!("no Chromium or tests/ui/node_modules: scan-to-ready not measured");
        return;
    }
    let d2 = tempfile::tempdir().unwrap();
    user(d2.path());
    let small = NodeProc::start("wh2", d2.path());
    seed(&admin, &small, "A", 100).await;
    seed(&admin, &small, "B", 100).await;
    // A wave of SCAN_ORDERS orders of two lines (A and B, one bin each).
    for i in 0..*SCAN_ORDERS {
        let k = format!("k{i}");
        assert_eq!(place(&admin, &small, &k, &order_body(&k, &[("A", 1), ("B", 1)])).await.0, 201);
    }
    let shots = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("node")
        .arg(ui_dir.join("pick.mjs"))
        .current_dir(&ui_dir)
        .env("OMS_URL", format!("http://{}", small.addr))
        .env("OMS_USER", "ana")
        .env("OMS_PIN", "4711")
        .env("OMS_SHOTS", shots.path())
        .env("OMS_STEPS_MAX", (*SCAN_ORDERS * 4 + 8).to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let sorted = |key: &str| {
        let mut xs: Vec<f64> = v[key].as_array().unwrap().iter().filter_map(|x| x.as_f64()).collect();
        xs.sort_by(f64::total_cmp);
        xs
    };
    let (scans, in_page, reload) =
        (sorted("scan_to_ready_ms"), sorted("scan_to_ready_in_page_ms"), sorted("reload_to_ready_in_page_ms"));
    println!(
        "scan to ready (Chromium, loopback), wall clock from Playwright: {} scans, median {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        scans.len(),
        percentile(&scans, 0.5),
        percentile(&scans, 0.99),
        scans.last().copied().unwrap_or(0.0),
    );
    println!(
        "scan to ready, the browser's clock (navigation start to the scan field focused): {} scans, median {:.1} ms, p99 {:.1} ms; \
         baseline, a reload of the same screen: {} reloads, median {:.1} ms, p99 {:.1} ms; scan ÷ reload at the median {:.2}",
        in_page.len(),
        percentile(&in_page, 0.5),
        percentile(&in_page, 0.99),
        reload.len(),
        percentile(&reload, 0.5),
        percentile(&reload, 0.99),
        percentile(&in_page, 0.5) / percentile(&reload, 0.5).max(f64::MIN_POSITIVE),
    );
    for (screen, s) in v["screens"].as_object().unwrap() {
        println!("first load {screen:<14} {:>6} bytes", s["first_load_bytes"]);
    }
}
