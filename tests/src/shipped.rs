//! A card order shipped from one site, for the tests of what follows a shipment (returns, the customer's
//! tracking page): a hub with a test payment provider and a `[returns]` policy, one site holding stock, the
//! order placed, picked, packed and shipped, and its capture awaited. Every wait is bounded.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::cluster::{self, ClusterNode, free_tcp, free_udp, pki, seed_sku, wait_for};
use crate::post;

/// Longest wait for a process to answer `/healthz`.
pub const HEALTHY: Duration = Duration::from_secs(30);
/// Where the site and the customers are.
pub const BERLIN: (f64, f64) = (52.52, 13.40);

/// The hub's configuration: the test payment provider writing `state`, German VAT, `returns` as `[returns]`.
pub fn hub_toml(state: &Path, returns: &str) -> String {
    format!(
        "[payments]\ncall_timeout_ms = 30000\nretry_backoff_ms = 50\n\
         [payments.providers.test]\nkind = \"test\"\nstate_file = {:?}\n\
         [tax]\nprices = \"inclusive\"\n[tax.rates]\nDE = 1900\n\
         [returns]\n{returns}\n",
        state.display().to_string()
    )
}

/// The test provider's call counts, from its state file.
pub fn counts(state: &Path) -> Value {
    std::fs::read(state)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .map(|v| v["counts"].clone())
        .unwrap_or(Value::Null)
}

/// A card order of the `web` channel to Berlin.
pub fn order(ext: &str, lines: &[(&str, u32, i64)]) -> Value {
    json!({
        "external_ref": ext, "channel": "web",
        "lines": lines.iter().map(|(s, q, p)| json!({"sku": s, "qty": q, "unit_price_minor": p, "currency": "EUR"})).collect::<Vec<_>>(),
        "ship_to": {"name": "C", "line1": "1 Street", "city": "X", "postcode": "10115", "country": "DE", "lat": BERLIN.0, "lon": BERLIN.1},
        "payment": {"method": "card", "provider": "test", "token": "tok_ok"},
    })
}

/// `POST /v1/orders` with `Idempotency-Key: key`: status and body.
pub async fn hub_post(c: &reqwest::Client, hub: SocketAddr, key: &str, body: &Value) -> (u16, Value) {
    let r = c.post(format!("http://{hub}/v1/orders")).header("idempotency-key", key).json(body).send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// Starts a hub with `returns` as its `[returns]` section and one site holding 50 of each SKU; places a card
/// order for `lines` and ships it; returns the processes, the order and its fulfillment, once captured.
pub async fn shipped_order(
    c: &reqwest::Client,
    root: &Path,
    returns: &str,
    lines: &[(&str, u32, i64)],
) -> (cluster::HubProc, ClusterNode, SocketAddr, String, String) {
    let state = root.join("provider.json");
    let certs = pki(root, &["wh-berlin"]);
    let (quic, hub) = (free_udp(), free_tcp());
    let hub_proc = cluster::spawn_hub_with(root, &certs, quic, hub, "info", &hub_toml(&state, returns));
    let toml = format!("\n[site]\nname = \"Berlin\"\nlat = {}\nlon = {}\n", BERLIN.0, BERLIN.1);
    let (config, node_http, dir) = cluster::node_config_with(root, &certs, "wh-berlin", quic, &toml);
    let berlin = cluster::spawn_node_with("wh-berlin", &config, node_http, &dir, "info");
    cluster::wait_healthy(c, berlin.http, HEALTHY).await;
    cluster::wait_healthy(c, hub, HEALTHY).await;
    for (sku, _, _) in lines {
        seed_sku(c, &berlin, sku, 50).await;
        wait_for(c, format!("http://{hub}/v1/stock/{sku}"), "hub rights", |v| {
            v["sites"]
                .as_array()
                .and_then(|a| a.iter().find(|r| r["site"] == "wh-berlin"))
                .and_then(|r| r["hub_promisable"].as_u64())
                .is_some_and(|n| n >= 5)
        })
        .await;
    }
    let (s, placed) = hub_post(c, hub, "k-1", &order("web-1", lines)).await;
    assert_eq!(s, 201, "{placed}");
    let id = placed["id"].as_str().unwrap().to_owned();
    let fo = placed["fulfillments"][0]["id"].as_str().unwrap().to_owned();
    let base = format!("http://{}/v1", berlin.http);
    wait_for(c, format!("{base}/orders/{fo}"), "accepted at the site", |v| v["status"] == "accepted").await;
    let (s, w) = post(c, format!("{base}/waves"), json!({"max_orders": 50})).await;
    assert_eq!(s, 201, "wave: {w}");
    let picks: Vec<Value> = lines.iter().map(|(s, q, _)| json!({"sku": s, "picked": q})).collect();
    let (s, v) = post(c, format!("{base}/orders/{fo}/picks"), json!({"lines": picks})).await;
    assert_eq!(s, 200, "picks: {v}");
    let (s, v) = post(c, format!("{base}/orders/{fo}/pack"), json!({"parcels": 1})).await;
    assert_eq!(s, 200, "pack: {v}");
    let (s, v) = post(c, format!("{base}/orders/{fo}/ship"), json!({"carrier": "DHL", "tracking": "T1"})).await;
    assert_eq!(s, 200, "ship: {v}");
    wait_for(c, format!("http://{hub}/v1/orders/{id}"), "captured", |v| v["payment"]["status"] == "captured").await;
    (hub_proc, berlin, hub, id, fo)
}
