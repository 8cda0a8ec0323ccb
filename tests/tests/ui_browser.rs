//! The warehouse screens in a real browser: Debian's Chromium, driven by Playwright (`tests/ui/pick.mjs`,
//! by label and role as a person would), against a real node on loopback. A picker on a phone viewport signs
//! in, picks a wave by typing bins and SKUs into the focused field, packs and ships; axe-core finds no
//! serious or critical violation on any screen. Staff on a phone at a site a real hub sent a purchase order
//! and a return receive an ASN line and a return unit by scanning (`tests/ui/floor.mjs`) and open dispatch.
//! Screenshots land in `target/tmp/ui-screenshots/`.
//!
//! `.ci/run` installs Chromium and the npm packages and sets `OMS_REQUIRE_BROWSER=1`, so in CI a missing
//! browser fails this test; elsewhere it says what is missing and passes without running.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oms_tests::{NodeProc, get, http, order_body, place, seed};

/// The whole browser run, at most.
const BUDGET: Duration = Duration::from_secs(180);

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ui")
}

/// What is missing to run a browser here, if anything.
fn missing() -> Option<String> {
    let chromium = std::env::var("OMS_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!("no Chromium at {chromium} (apt-get install chromium)"));
    }
    if !ui_dir().join("node_modules/playwright-core").exists() {
        return Some("no tests/ui/node_modules (npm ci --prefix tests/ui)".into());
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("no node".into());
    }
    None
}

fn shots_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots")
}

/// Runs `tests/ui/<script>` with `env` (and OMS_SHOTS) within [`BUDGET`]; its last line of output, as JSON.
async fn run_script(script: &str, env: &[(&str, String)]) -> serde_json::Value {
    let mut cmd = Command::new("node");
    cmd.arg(ui_dir().join(script)).current_dir(ui_dir()).env("OMS_SHOTS", shots_dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("run node");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > BUDGET {
            let _ = child.kill();
            panic!("{script} took more than {BUDGET:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(status.success(), "{script} failed: {stdout}");
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    eprintln!("{script}: {report}");
    report
}

#[tokio::test]
async fn a_picker_on_a_phone_picks_packs_and_ships_in_chromium() {
    if let Some(what) = missing() {
        assert!(std::env::var("OMS_REQUIRE_BROWSER").is_err(), "OMS_REQUIRE_BROWSER is set but {what}");
        eprintln!("skipped: {what}");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let n = NodeProc::start("wh1", d.path());
    let new = oms_service::auth::users::NewUser {
        name: "ana".into(),
        role: oms_service::auth::Role::Staff,
        secret: "4711".into(),
        pin: true,
    };
    oms_service::auth::users::create(&n.dir, new, 1).unwrap();
    let admin = http();
    seed(&admin, &n, "A", 10).await;
    seed(&admin, &n, "B", 10).await;
    for (k, lines) in [("k1", vec![("A", 2), ("B", 1)]), ("k2", vec![("A", 1)])] {
        let (s, v) = place(&admin, &n, k, &order_body(k, &lines)).await;
        assert_eq!(s, 201, "{v}");
    }
    let shots = shots_dir();
    let report = run_script(
        "pick.mjs",
        &[("OMS_URL", format!("http://{}", n.addr)), ("OMS_USER", "ana".into()), ("OMS_PIN", "4711".into())],
    )
    .await;
    assert_eq!(report["axe_violations"], 0);
    assert_eq!(report["scans"], 5, "two bins (the second line is in the first bin) and three items: {report}");
    // What the browser did is what the node stored.
    let order = report["order"].as_str().unwrap();
    let (s, v) = get(&admin, n.url(&format!("/v1/orders/{order}"))).await;
    assert_eq!(s, 200);
    assert_eq!(v["status"], "shipped", "{v}");
    assert_eq!(v["shipment"]["tracking"], "JD0001");
    for screen in ["sign-in", "today", "pick", "ship", "stock"] {
        assert!(shots.join(format!("{screen}.png")).exists(), "{screen} screenshot");
        let bytes = report["screens"][screen]["first_load_bytes"].as_u64().unwrap();
        assert!(bytes < 150_000, "{screen} weighs {bytes} bytes on first load");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_cancels_with_a_reason_and_the_customer_follows_on_a_phone_in_chromium() {
    use oms_service::auth::{keys, users};
    use oms_tests::cluster::{self, free_tcp, free_udp, hub_data, pki};
    if let Some(what) = missing() {
        assert!(std::env::var("OMS_REQUIRE_BROWSER").is_err(), "OMS_REQUIRE_BROWSER is set but {what}");
        eprintln!("skipped: {what}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let certs = pki(root, &[] as &[&str]);
    let channel = oms_protocol::domain::Channel::parse("web").unwrap();
    let web = keys::NewKey {
        name: "web".into(),
        role: keys::Role::Channel,
        channel: Some(channel),
        supplier: None,
        rate_per_s: None,
    };
    let web = keys::create(&hub_data(root), web, 1).unwrap();
    for (name, role) in [("per", keys::Role::Planner), ("sam", keys::Role::Service)] {
        let u = users::NewUser { name: name.into(), role, secret: "a long password".into(), pin: false };
        users::create(&hub_data(root), u, 1).unwrap();
    }
    let http = free_tcp();
    let _hub = cluster::spawn_hub_with(root, &certs, free_udp(), http, "warn", "");
    cluster::wait_healthy(&oms_tests::http_anonymous(), http, Duration::from_secs(30)).await;
    let body = serde_json::json!({
        "external_ref": "web-1", "channel": "web",
        "lines": [{"sku": "SKU-1", "qty": 2, "unit_price_minor": 1250, "currency": "EUR"}],
        "ship_to": {"name": "Ada Customer", "line1": "1 Secret Street", "city": "X", "postcode": "10115",
            "country": "DE", "lat": 52.52, "lon": 13.40},
        "contact": {"email": "ada@example.com"}
    });
    let r = oms_tests::http_as(&web)
        .post(format!("http://{http}/v1/orders"))
        .header("idempotency-key", "o1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let order: serde_json::Value = r.json().await.unwrap();
    let id = order["id"].as_str().unwrap().to_owned();
    let track = format!("/t/{}", order["tracking_token"].as_str().unwrap());
    let report = run_script(
        "hub.mjs",
        &[
            ("OMS_URL", format!("http://{http}")),
            ("OMS_ORDER", id.clone()),
            ("OMS_EMAIL", "ADA@example.com".into()),
            ("OMS_TRACK", track),
        ],
    )
    .await;
    assert_eq!(report["axe_violations"], 0);
    // The agent's line cancel and whole cancel are in the audit trail under the person's name.
    let (_, audit) = get(&oms_tests::http(), format!("http://{http}/v1/audit/events?limit=100")).await;
    let rows: Vec<(&str, &str, &str)> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["route"].as_str().is_some_and(|r| r.starts_with("/ui/orders/{id}/cancel")))
        .map(|e| (e["route"].as_str().unwrap(), e["key"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        rows,
        [("/ui/orders/{id}/cancel-lines", "user:sam", "ok"), ("/ui/orders/{id}/cancel", "user:sam", "ok")],
        "{audit}"
    );
    let (s, v) = get(&oms_tests::http(), format!("http://{http}/v1/orders/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(
        (v["status"].as_str(), v["cancel_reason"].as_str()),
        (Some("cancelled"), Some("customer called to cancel"))
    );
    for screen in
        ["hub-network", "hub-stock", "hub-reports", "hub-order", "hub-routing", "customer-tracking", "customer-find"]
    {
        let bytes = report["screens"][screen]["first_load_bytes"].as_u64().unwrap();
        assert!(bytes < 150_000, "{screen} weighs {bytes} bytes on first load");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_on_a_phone_receive_an_asn_and_a_return_by_scanning_in_chromium() {
    if let Some(what) = missing() {
        assert!(std::env::var("OMS_REQUIRE_BROWSER").is_err(), "OMS_REQUIRE_BROWSER is set but {what}");
        eprintln!("skipped: {what}");
        return;
    }
    let f = oms_tests::floor::Floor::start().await;
    let base = format!("http://{}/v1", f.node.http);
    let admin = http();
    let on_hand = |admin: reqwest::Client, url: String| async move {
        let (s, v) = get(&admin, url).await;
        assert_eq!(s, 200, "{v}");
        v["balance"]["on_hand"].as_u64().or_else(|| v["on_hand"].as_u64()).unwrap()
    };
    let before = on_hand(admin.clone(), format!("{base}/stock/SKU-A")).await;
    let report = run_script(
        "floor.mjs",
        &[("OMS_URL", format!("http://{}", f.node.http)), ("OMS_USER", "ana".into()), ("OMS_PIN", "4711".into())],
    )
    .await;
    assert_eq!(report["axe_violations"], 0);
    assert_eq!((report["received_units"].as_u64(), report["returned_units"].as_u64()), (Some(4), Some(1)));
    // What the browser did is what the node booked: 4 received against the PO line, 1 restocked.
    assert_eq!(on_hand(admin.clone(), format!("{base}/stock/SKU-A")).await, before + 5);
    let (_, inbound) = get(&admin, format!("{base}/inbound")).await;
    assert_eq!(inbound["items"][0]["lines"][0]["received_here"], 4, "{inbound}");
    let (_, rmas) = get(&admin, format!("{base}/rmas")).await;
    assert_eq!(rmas["items"][0]["lines"][0]["received_here"], 1, "{rmas}");
    // A planner watching the hub's network stock table sees the site's receipt arrive after sync.
    let expect = before + 5;
    let planner = run_script(
        "planner.mjs",
        &[
            ("OMS_URL", format!("http://{}", f.hub_http)),
            ("OMS_SKU", "SKU-A".into()),
            ("OMS_SITE", "wh-berlin".into()),
            ("OMS_EXPECT", expect.to_string()),
        ],
    )
    .await;
    assert_eq!(
        (planner["axe_violations"].as_u64(), planner["last_seen"].as_u64()),
        (Some(0), Some(expect)),
        "{planner}"
    );
    for screen in ["node-inbound", "node-returns", "node-dispatch"] {
        assert!(shots_dir().join(format!("{screen}.png")).exists(), "{screen} screenshot");
        let bytes = report["screens"][screen]["first_load_bytes"].as_u64().unwrap();
        assert!(bytes < 150_000, "{screen} weighs {bytes} bytes on first load");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_requests_a_return_on_the_tracking_page_on_a_phone_in_chromium() {
    use oms_tests::shipped::shipped_order;
    if let Some(what) = missing() {
        assert!(std::env::var("OMS_REQUIRE_BROWSER").is_err(), "OMS_REQUIRE_BROWSER is set but {what}");
        eprintln!("skipped: {what}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let admin = http();
    let (_hub, _site, hub, id, _) = shipped_order(&admin, tmp.path(), "", &[("SKU-A", 2, 1_190)]).await;
    let (_, v) = get(&admin, format!("http://{hub}/v1/orders/{id}")).await;
    let track = format!("/t/{}", v["tracking_token"].as_str().unwrap());
    let report = run_script("hub.mjs", &[("OMS_URL", format!("http://{hub}")), ("OMS_RETURN_TRACK", track)]).await;
    assert_eq!(report["axe_violations"], 0, "{report}");
    let (_, v) = get(&admin, format!("http://{hub}/v1/orders/{id}")).await;
    let rma = &v["rmas"][0];
    assert_eq!(
        (rma["state"].as_str(), rma["lines"][0]["qty"].as_u64(), rma["lines"][0]["reason"].as_str()),
        (Some("requested"), Some(1), Some("Arrived damaged")),
        "{v}"
    );
    for screen in ["hub-tracking", "hub-tracking-return"] {
        let bytes = report["screens"][screen]["first_load_bytes"].as_u64().unwrap();
        assert!(bytes < 150_000, "{screen} weighs {bytes} bytes on first load");
    }
}
