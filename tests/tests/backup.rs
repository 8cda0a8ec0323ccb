//! Online backup and restore with real processes: `oms backup` of a node taking orders, `oms restore` into a
//! new directory (checked before use), a node started on it; a damaged backup or an occupied directory is
//! refused; a node restored from a backup older than what the hub holds rejoins without losing or
//! duplicating an order and without reusing an order id the hub knows.
//!
//! Every wait is a bounded loop with a deadline; processes are killed when their guard drops.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oms_tests::cluster::{self, get_json, wait_for};
use oms_tests::{NodeProc, get, http, oms_bin, order_body, place, run_oms, seed};
use serde_json::{Value, json};

/// Runs `oms <args>`; returns (success, stdout, stderr).
fn oms(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(oms_bin()).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// The ids of every order the node at `base` holds, following pages.
async fn order_ids(c: &reqwest::Client, base: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut after = String::new();
    for _ in 0..1_000 {
        let (s, v) = get(c, format!("{base}/v1/orders?limit=500&after={after}")).await;
        assert_eq!(s, 200, "{v}");
        for o in v["orders"].as_array().unwrap() {
            ids.insert(o["id"].as_str().unwrap().to_owned());
        }
        match v["next_after"].as_str() {
            Some(n) => after = n.to_owned(),
            None => return ids,
        }
    }
    panic!("more pages than expected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_backup_of_a_node_taking_orders_restores_and_checks_out() {
    let c = http();
    let tmp = tempfile::tempdir().unwrap();
    let node = NodeProc::start("wh-bk", &tmp.path().join("data"));
    seed(&c, &node, "SKU-1", 1_000_000).await;

    // Four clients place orders until told to stop; each acknowledged order is recorded with when.
    let acked: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for w in 0..4 {
        let (c, acked, stop, url) = (c.clone(), acked.clone(), stop.clone(), node.url("/v1/orders"));
        clients.push(tokio::spawn(async move {
            for i in 0..100_000 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let key = format!("bk-{w}-{i}");
                let r = c.post(&url).header("idempotency-key", &key).json(&order_body(&key, &[("SKU-1", 1)]));
                let r = r.send().await.unwrap();
                assert_eq!(r.status().as_u16(), 201, "intake goes on during the backup");
                let v: Value = r.json().await.unwrap();
                acked.lock().unwrap().push((v["id"].as_str().unwrap().to_owned(), Instant::now()));
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before_backup = Instant::now();
    let backup = tmp.path().join("node.backup");
    let (data, out) = (node.dir.clone(), backup.clone());
    let report = tokio::task::spawn_blocking(move || {
        run_oms(&["backup", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()])
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in clients {
        t.await.unwrap();
    }
    let report: Value = serde_json::from_str(&report).unwrap();
    let names: Vec<&str> = report["files"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["node.redb", "keys.json"], "the databases, then the key file: {report}");
    assert!(report["bytes"].as_u64().unwrap() > 0 && report["pause_ms_max"].is_number(), "{report}");
    let acked = acked.lock().unwrap().clone();
    let before: BTreeSet<String> =
        acked.iter().filter(|(_, at)| *at < before_backup).map(|(id, _)| id.clone()).collect();
    let all_at_node = order_ids(&c, &node.url("")).await;
    assert!(before.len() > 10 && all_at_node.len() > before.len(), "orders before and during the backup");

    // Restore into a new directory: checked (checksums, integrity, ledger replay) before use.
    let restored = tmp.path().join("restored");
    let out = run_oms(&["restore", "--from", backup.to_str().unwrap(), "--data", restored.to_str().unwrap()]);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["ledger_mismatches"], json!([]), "{r}");
    assert!(r["keys"].as_u64() >= Some(1), "the API keys come back with the data: {r}");
    assert_eq!(
        std::fs::read(restored.join("keys.json")).unwrap(),
        serde_json::to_vec_pretty(&oms_service::auth::keys::read(&node.dir).unwrap()).unwrap(),
        "the key file as it was"
    );
    let restored_orders = r["orders"].as_u64().unwrap();

    // A node on the restored data holds every order acknowledged before the backup began, and nothing the
    // original never had; its ledger replays; it takes orders again.
    let again = NodeProc::start("wh-bk", &restored);
    let ids = order_ids(&c, &again.url("")).await;
    assert_eq!(ids.len() as u64, restored_orders);
    assert!(before.is_subset(&ids), "every order acknowledged before the backup is in it");
    assert!(ids.is_subset(&all_at_node), "nothing the node never had");
    let (s, audit) = get(&c, again.url("/v1/audit/ledger")).await;
    assert_eq!((s, audit["consistent"].as_bool()), (200, Some(true)), "{audit}");
    let (s, v) = place(&c, &again, "after-restore", &order_body("after-restore", &[("SKU-1", 1)])).await;
    assert_eq!(s, 201, "{v}");
    assert!(!all_at_node.contains(v["id"].as_str().unwrap()), "a new id, never one the old node gave out: {v}");

    // Restoring over existing data, or a damaged backup, is refused and leaves nothing behind.
    let (ok, _, err) = oms(&["restore", "--from", backup.to_str().unwrap(), "--data", restored.to_str().unwrap()]);
    assert!(!ok && err.contains("exists already"), "{err}");
    let mut bytes = std::fs::read(&backup).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    let damaged = tmp.path().join("damaged.backup");
    std::fs::write(&damaged, &bytes).unwrap();
    let empty = tmp.path().join("empty");
    let (ok, _, err) = oms(&["restore", "--from", damaged.to_str().unwrap(), "--data", empty.to_str().unwrap()]);
    assert!(!ok && err.contains("checksum"), "{err}");
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0, "nothing restored from a damaged backup");
    // No process on a directory: no backup, and a clear word why.
    let (ok, _, err) =
        oms(&["backup", "--data", empty.to_str().unwrap(), "--out", tmp.path().join("x").to_str().unwrap()]);
    assert!(!ok && err.contains("no node or hub is running"), "{err}");
}

/// The ids of the node's orders the hub holds.
async fn hub_site_orders(c: &reqwest::Client, hub: std::net::SocketAddr, site: &str) -> Vec<String> {
    let v = get_json(c, format!("http://{hub}/v1/orders?site={site}&limit=1000")).await.unwrap_or(Value::Null);
    v["orders"]
        .as_array()
        .map(|a| a.iter().filter_map(|o| o["id"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// A node backed up while linked, then lost after taking more orders, and restored from that older backup:
/// it rejoins the hub; the hub keeps every order it held, none twice; the node's new orders never reuse
/// an id the hub holds; the hub's copy of the hub and node documents converges again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restored_from_an_older_backup_rejoins_without_losing_or_duplicating_orders() {
    let c = http();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (hub, mut node) = cluster::hub_and_node(&c, root, "wh-a", "").await;
    let hub_http = hub.http;
    cluster::seed(&c, &node, 1, 10_000).await;
    let body = |k: &str| order_body(k, &[("SKU-0", 1)]);
    for i in 0..10 {
        cluster::place(&c, &node, &format!("pre-{i}"), &body(&format!("pre-{i}"))).await;
    }
    wait_for(&c, format!("http://{hub_http}/v1/orders?site=wh-a&limit=1000"), "10 at the hub", |v| {
        v["orders"].as_array().is_some_and(|a| a.len() == 10)
    })
    .await;
    let data = node.dir.join("data");
    let backup = root.join("wh-a.backup");
    let out = run_oms(&["backup", "--data", data.to_str().unwrap(), "--out", backup.to_str().unwrap()]);
    let report: Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = report["files"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["sync.redb", "node.redb", "keys.json"], "the derived file first: {report}");

    // Five more orders after the backup reach the hub; then the node's disk is lost.
    let mut lost = BTreeSet::new();
    for i in 0..5 {
        lost.insert(cluster::place(&c, &node, &format!("post-{i}"), &body(&format!("post-{i}"))).await);
    }
    wait_for(&c, format!("http://{hub_http}/v1/orders?site=wh-a&limit=1000"), "15 at the hub", |v| {
        v["orders"].as_array().is_some_and(|a| a.len() == 15)
    })
    .await;
    node.proc.kill9();
    std::fs::remove_dir_all(&data).unwrap();
    let out = run_oms(&["restore", "--from", backup.to_str().unwrap(), "--data", data.to_str().unwrap()]);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((r["orders"].as_u64(), &r["ledger_mismatches"]), (Some(10), &json!([])), "{r}");
    assert!(r["notes"].to_string().contains("hub"), "the restore says what it cannot recover: {r}");

    // The restored node rejoins and takes orders again.
    node.restart();
    cluster::wait_healthy(&c, node.http, cluster::WAIT_FOR_MAX).await;
    let mut fresh = BTreeSet::new();
    for i in 0..3 {
        fresh.insert(cluster::place(&c, &node, &format!("new-{i}"), &body(&format!("new-{i}"))).await);
    }
    assert!(fresh.is_disjoint(&lost), "no new order takes the id of one the hub holds: {fresh:?} {lost:?}");
    let held = wait_for(&c, format!("http://{hub_http}/v1/orders?site=wh-a&limit=1000"), "18 at the hub", |v| {
        v["orders"].as_array().is_some_and(|a| a.len() == 18)
    })
    .await;
    let ids = hub_site_orders(&c, hub_http, "wh-a").await;
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no order twice at the hub: {held}");
    assert!(lost.iter().chain(&fresh).all(|id| ids.contains(id)), "the hub keeps every order: {ids:?}");
    // Each new order at the hub is the one the node took.
    for id in &fresh {
        let v = wait_for(&c, format!("http://{hub_http}/v1/orders/{id}"), "the new order at the hub", |v| {
            v.to_string().contains("new-")
        })
        .await;
        assert!(v.to_string().contains("SKU-0"), "{v}");
    }
    // The hub backs up online as well: its documents first, then the intake they are derived from.
    let hub_backup = root.join("hub.backup");
    let hub_data = cluster::hub_data(root);
    let out = run_oms(&["backup", "--data", hub_data.to_str().unwrap(), "--out", hub_backup.to_str().unwrap()]);
    let report: Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = report["files"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["hub.redb", "intake.redb", "keys.json"], "{report}");
    let restored = root.join("hub-restored");
    let out = run_oms(&["restore", "--from", hub_backup.to_str().unwrap(), "--data", restored.to_str().unwrap()]);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert!(r["documents"].as_u64() >= Some(18) && r["intake_open_orders"].is_u64(), "{r}");
}
