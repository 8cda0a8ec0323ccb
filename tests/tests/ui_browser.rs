//! The warehouse screens in a real browser: Debian's Chromium, driven by Playwright (`tests/ui/pick.mjs`,
//! by label and role as a person would), against a real node on loopback. A picker on a phone viewport signs
//! in, picks a wave by typing bins and SKUs into the focused field, packs and ships; axe-core finds no
//! serious or critical violation on any screen. Screenshots land in `target/tmp/ui-screenshots/`.
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
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    let mut child = Command::new("node")
        .arg(ui_dir().join("pick.mjs"))
        .current_dir(ui_dir())
        .env("OMS_URL", format!("http://{}", n.addr))
        .env("OMS_USER", "ana")
        .env("OMS_PIN", "4711")
        .env("OMS_SHOTS", &shots)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run node");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > BUDGET {
            let _ = child.kill();
            panic!("the browser run took more than {BUDGET:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(status.success(), "the browser run failed: {stdout}");
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    eprintln!("browser run: {report}");
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
