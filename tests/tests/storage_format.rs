//! Stores written by an older build still open, every record readable, with real processes.
//!
//! `tests/fixtures/storage/v0/` holds the four redb files of a hub and one linked node (`node.redb`,
//! `sync.redb`, `hub.redb`, `intake.redb`) as the build before versioned storage wrote them (format 0: no
//! `oms_format` table), and `expected.json`, what their APIs answered then. They were written by
//! `write_fixtures` (ignored; run it on the build whose format the fixtures are to capture):
//!
//! ```sh
//! OMS_WRITE_FIXTURES=1 cargo test -p oms-tests --test storage_format write_fixtures -- --ignored
//! ```
//!
//! `fixtures_open_and_every_record_reads_back` starts today's binary on copies of them and checks that every
//! record reads back as it was written (fields added to the API since may appear beside them). The stores were
//! written by `oms-it` built at `75f66b8`, the last commit before versioned storage, with this test binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oms_tests::cluster::{self, ClusterNode, free_tcp, wait_for};
use oms_tests::{get, http, post};
use serde_json::{Value, json};

const NODE: &str = "wh-fix";
const BERLIN: (f64, f64) = (52.52, 13.40);

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/storage/v0")
}

fn site_toml() -> String {
    format!("\n[site]\nname = \"fixture\"\nlat = {}\nlon = {}\n", BERLIN.0, BERLIN.1)
}

fn order(ext: &str, lines: &[(&str, u32)]) -> Value {
    json!({
        "external_ref": ext, "channel": "web",
        "lines": lines.iter().map(|(s, q)| json!({"sku": s, "qty": q, "unit_price_minor": 1250, "currency": "EUR"})).collect::<Vec<_>>(),
        "ship_to": {"name": "C", "line1": "1 Street", "city": "X", "postcode": "10115", "country": "DE", "lat": BERLIN.0, "lon": BERLIN.1}
    })
}

/// A hub and the node `wh-fix` (Berlin) in `root`, healthy.
async fn cluster(c: &reqwest::Client, root: &Path) -> (cluster::HubProc, ClusterNode) {
    cluster::hub_and_node(c, root, NODE, &site_toml()).await
}

/// What the node's and the hub's APIs answer about every record the fixture holds, without what changes
/// with time or with the link (escrow rights move on every rebalance, freshness, connection state).
async fn dump(c: &reqwest::Client, node: SocketAddr, hub: SocketAddr, hub_orders: &[String]) -> Value {
    let n = |p: &str| format!("http://{node}{p}");
    let (_, orders) = get(c, n("/v1/orders?limit=500")).await;
    let (_, catalog) = get(c, n("/v1/catalog")).await;
    let (_, mut stock) = get(c, n("/v1/stock")).await;
    strip(&mut stock, &["escrow"]);
    let mut ledgers = serde_json::Map::new();
    for sku in ["SKU-A", "SKU-B"] {
        ledgers.insert(sku.into(), get(c, n(&format!("/v1/stock/{sku}/ledger"))).await.1);
    }
    let (_, events) = get(c, n("/v1/audit/events?limit=1000")).await;
    let mut at_hub = serde_json::Map::new();
    for id in hub_orders {
        let (_, mut v) = get(c, format!("http://{hub}/v1/orders/{id}")).await;
        strip(&mut v, &["age_ms", "stale", "connected"]);
        at_hub.insert(id.clone(), v);
    }
    let (_, hub_events) = get(c, format!("http://{hub}/v1/audit/events?limit=1000")).await;
    json!({
        "node": {"orders": orders, "catalog": catalog, "stock": stock, "ledgers": ledgers, "audit": events},
        "hub": {"orders": at_hub, "audit": hub_events},
    })
}

/// Removes every member named in `keys`, at any depth.
fn strip(v: &mut Value, keys: &[&str]) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !keys.contains(&k.as_str()));
            m.values_mut().for_each(|v| strip(v, keys));
        }
        Value::Array(a) => a.iter_mut().for_each(|v| strip(v, keys)),
        _ => {}
    }
}

/// The redb files of the fixture: (file, directory under the cluster's root).
fn files() -> [(&'static str, PathBuf); 4] {
    let node = Path::new(NODE).join("data");
    let hub = PathBuf::from("hub-data");
    [("node.redb", node.clone()), ("sync.redb", node), ("hub.redb", hub.clone()), ("intake.redb", hub)]
}

/// Writes the fixtures with the build under test: a node with a catalog, stock, local orders in several
/// states, two channel orders from the hub, all synced; then both stop gracefully and their files are copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes tests/fixtures/storage/v0; run with OMS_WRITE_FIXTURES=1 on the build whose format it captures"]
async fn write_fixtures() {
    assert!(std::env::var_os("OMS_WRITE_FIXTURES").is_some(), "set OMS_WRITE_FIXTURES=1 to overwrite the fixtures");
    let c = http();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (mut hub, mut node) = cluster(&c, root).await;
    let base = format!("http://{}/v1", node.http);
    for (sku, qty) in [("SKU-A", 40), ("SKU-B", 10)] {
        let r = c.put(format!("{base}/catalog/{sku}")).json(&json!({"name": sku, "bin": "A-01"})).send().await.unwrap();
        assert!(r.status().is_success());
        let (s, _) = post(&c, format!("{base}/stock/receipts"), json!({"sku": sku, "qty": qty})).await;
        assert_eq!(s, 201);
    }
    // Local orders: one shipped, one cancelled, one open.
    let mut local = Vec::new();
    for (i, lines) in [vec![("SKU-A", 2)], vec![("SKU-B", 1)], vec![("SKU-A", 1), ("SKU-B", 2)]].iter().enumerate() {
        let id = cluster::place(&c, &node, &format!("fix-{i}"), &order(&format!("fix-{i}"), lines)).await;
        local.push(id);
    }
    let (s, _) = post(&c, format!("{base}/waves"), json!({"max_orders": 1})).await;
    assert_eq!(s, 201);
    for (step, body) in [
        ("picks", json!({"lines": [{"sku": "SKU-A", "picked": 2}]})),
        ("pack", json!({"parcels": 1})),
        ("ship", json!({"carrier": "DHL", "tracking": "T-1"})),
    ] {
        let (s, v) = post(&c, format!("{base}/orders/{}/{step}", local[0]), body).await;
        assert_eq!(s, 200, "{step}: {v}");
    }
    let (s, v) = post(&c, format!("{base}/orders/{}/cancel", local[1]), json!({"reason": "fixture"})).await;
    assert_eq!(s, 200, "cancel: {v}");
    // Channel orders at the hub, once the site granted it rights.
    let hub_http = hub.http;
    wait_for(&c, format!("http://{hub_http}/v1/stock/SKU-A"), "hub rights", |v| {
        v["sites"].as_array().is_some_and(|s| s.iter().any(|r| r["hub_promisable"].as_u64() >= Some(2)))
    })
    .await;
    let mut at_hub = Vec::new();
    for i in 0..2 {
        let r = c
            .post(format!("http://{hub_http}/v1/orders"))
            .header("idempotency-key", format!("hub-fix-{i}"))
            .json(&order(&format!("web-{i}"), &[("SKU-A", 1)]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        at_hub.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
    }
    // Everything synced: the site holds both assignments, the hub the site's orders.
    wait_for(&c, format!("{base}/orders?limit=500"), "assignments at the site", |v| {
        v["orders"].as_array().is_some_and(|a| a.len() == 5)
    })
    .await;
    for id in &at_hub {
        wait_for(&c, format!("http://{hub_http}/v1/orders/{id}"), "accepted", |v| {
            v["fulfillments"][0]["status"] == "accepted"
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let expected = dump(&c, node.http, hub_http, &at_hub).await;
    node.proc.stop();
    hub.proc.stop();
    let out = fixtures_dir();
    std::fs::create_dir_all(&out).unwrap();
    let mut docs = serde_json::Map::new();
    for (file, dir) in files() {
        std::fs::copy(root.join(&dir).join(file), out.join(file)).unwrap();
        if matches!(file, "sync.redb" | "hub.redb") {
            let ids = oms_sync::docdb::stored_doc_ids(&out.join(file)).unwrap();
            docs.insert(file.into(), json!(ids));
        }
    }
    let expected = json!({"api": expected, "hub_orders": at_hub, "documents": docs});
    std::fs::write(out.join("expected.json"), serde_json::to_string_pretty(&expected).unwrap()).unwrap();
}

/// Whether `now` holds everything `then` held: the same values, with fields a later build added to an object
/// allowed (an answer may grow, never lose or change what it said). `Err` names the first place it differs.
fn holds(now: &Value, then: &Value, at: String) -> Result<(), String> {
    match (now, then) {
        (Value::Object(n), Value::Object(t)) => {
            t.iter().try_for_each(|(k, v)| holds(n.get(k).unwrap_or(&Value::Null), v, format!("{at}.{k}")))
        }
        (Value::Array(n), Value::Array(t)) if n.len() == t.len() => {
            n.iter().zip(t).enumerate().try_for_each(|(i, (n, t))| holds(n, t, format!("{at}[{i}]")))
        }
        _ if now == then => Ok(()),
        _ => Err(if at.is_empty() { "the top".into() } else { at }),
    }
}

/// Copies the fixture files into `root` where [`cluster`] expects a hub's and `wh-fix`'s data.
fn place_fixtures(root: &Path) {
    for (file, dir) in files() {
        std::fs::create_dir_all(root.join(&dir)).unwrap();
        std::fs::copy(fixtures_dir().join(file), root.join(&dir).join(file)).unwrap();
    }
}

/// Today's binary on stores written before versioned storage: each file is migrated to the current format
/// after a copy of it is kept, and the APIs answer exactly what they answered when the files were written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_open_and_every_record_reads_back() {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures_dir().join("expected.json")).unwrap()).unwrap();
    let hub_orders: Vec<String> = serde_json::from_value(expected["hub_orders"].clone()).unwrap();
    let c = http();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    place_fixtures(root);
    let (mut hub, mut node) = cluster(&c, root).await;
    let got = dump(&c, node.http, hub.http, &hub_orders).await;
    for part in ["node", "hub"] {
        for (what, want) in expected["api"][part].as_object().unwrap() {
            if let Err(at) = holds(&got[part][what], want, String::new()) {
                panic!("{part} {what} reads back as written: differs at {at}\nnow: {}\nthen: {want}", got[part][what]);
            }
        }
    }
    assert_eq!(expected["api"]["node"]["orders"]["orders"].as_array().map(Vec::len), Some(5));
    node.proc.stop();
    hub.proc.stop();
    for (file, dir) in files() {
        let kept: Vec<String> = std::fs::read_dir(root.join(&dir))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(&format!("{file}.v0.")) && n.ends_with(".bak"))
            .collect();
        assert_eq!(kept.len(), 1, "{file}: one copy kept from before the migration: {kept:?}");
        if let Some(ids) = expected["documents"].get(file) {
            let now = oms_sync::docdb::stored_doc_ids(&root.join(&dir).join(file)).unwrap();
            for id in ids.as_array().unwrap() {
                assert!(now.iter().any(|n| n == id.as_str().unwrap()), "{file}: {id} is still there");
            }
        }
    }
}

/// Runs `oms node` on `data` (stand-alone) and returns its exit status and standard error: it must refuse to
/// start.
fn node_refuses(data: &Path) -> String {
    oms_tests::install_admin_key(data);
    let out = cluster::oms()
        .args(["node", "--node-id", NODE, "--listen", &free_tcp().to_string(), "--data"])
        .arg(data)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the node started: {stderr}");
    assert!(!stderr.contains("panicked"), "a refusal, not a panic: {stderr}");
    stderr
}

/// A file of a newer format (as a later build would leave it) and a damaged file: the node refuses to start,
/// naming both versions or the damage, and changes nothing.
#[test]
fn newer_and_damaged_files_are_refused_at_start() {
    use oms_service::storage::format::{Format, Options, open};
    let tmp = tempfile::tempdir().unwrap();
    let newer = tmp.path().join("newer");
    std::fs::create_dir_all(&newer).unwrap();
    std::fs::copy(fixtures_dir().join("node.redb"), newer.join("node.redb")).unwrap();
    let future = Format { kind: "node", version: 99, derived: false, migrations: &[] };
    drop(open(&newer.join("node.redb"), &future, &Options::default()).unwrap());
    let stderr = node_refuses(&newer);
    assert!(stderr.contains("node version 99") && stderr.contains("supports (1)"), "{stderr}");
    let again = open(&newer.join("node.redb"), &future, &Options::default()).unwrap();
    assert!(again.migrated_from.is_none(), "the newer file is still at version 99, not migrated down");

    let damaged = tmp.path().join("damaged");
    std::fs::create_dir_all(&damaged).unwrap();
    let mut bytes = std::fs::read(fixtures_dir().join("node.redb")).unwrap();
    bytes[..512].fill(0x5A);
    std::fs::write(damaged.join("node.redb"), &bytes).unwrap();
    let stderr = node_refuses(&damaged);
    assert!(stderr.contains("damaged") && stderr.contains("oms restore"), "{stderr}");
}
