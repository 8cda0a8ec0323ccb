//! Shipping schedules end to end over real processes: two sites publish their carriers' pickup days and
//! cut-offs in `[shipping]`, the hub routes a channel order to the one that makes the earlier truck when stock
//! and distance tie (shown in the routing explanation), and the `201`, the order view and the customer's
//! tracking view carry `promised_ship_by` and each service's estimated delivery.
//!
//! Every wait is a bounded loop with a deadline; processes are killed when their guard drops.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oms_tests::cluster::{self, free_tcp, free_udp, pki, seed_sku, wait_for};
use oms_tests::{get, http, http_anonymous};
use serde_json::{Value, json};

const HEALTHY: Duration = Duration::from_secs(30);
const BERLIN: (f64, f64) = (52.52, 13.40);
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A site in Berlin whose one service collects on `days` at 23:59 UTC.
fn site_toml(days: &[&str]) -> String {
    let days: Vec<String> = days.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        "\n[site]\nname = \"site\"\nlat = {}\nlon = {}\n\n[shipping]\ntime_zone = \"UTC\"\n\n\
         [[shipping.schedules]]\ncarrier = \"dhl\"\nservice = \"parcel\"\npickup_days = [{}]\ncutoff = \"23:59\"\n\
         transit_days = 2\n",
        BERLIN.0,
        BERLIN.1,
        days.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_site_that_makes_the_earlier_truck_wins_and_the_customer_sees_the_promise() {
    let c = http();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let certs = pki(root, &["wh-a", "wh-b"]);
    let (quic, hub_http) = (free_udp(), free_tcp());
    let _hub = cluster::spawn_hub(root, &certs, quic, hub_http, "info");
    // Same place, same stock, same priority: without schedules `wh-a` wins on its id. It collects only two
    // days from now (UTC); `wh-b` collects every day, so it ships today (tomorrow in the last minute of a day).
    let today = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() / 86_400;
    let later = DAYS[usize::try_from((today + 2 + 3) % 7).unwrap()]; // 1970-01-01 was a Thursday
    let spawn = |id: &str, days: &[&str]| {
        let (config, http, dir) = cluster::node_config_with(root, &certs, id, quic, &site_toml(days));
        cluster::spawn_node_with(id, &config, http, &dir, "info")
    };
    let a = spawn("wh-a", &[later]);
    let b = spawn("wh-b", &DAYS);
    for n in [&a, &b] {
        cluster::wait_healthy(&c, n.http, HEALTHY).await;
        seed_sku(&c, n, "SKU-1", 50).await;
    }
    cluster::wait_healthy(&c, hub_http, HEALTHY).await;
    for site in ["wh-a", "wh-b"] {
        wait_for(&c, format!("http://{hub_http}/v1/stock/SKU-1"), &format!("hub rights at {site}"), |v| {
            v["sites"].as_array().is_some_and(|rows| {
                rows.iter().any(|r| r["site"] == site && r["hub_promisable"].as_u64().is_some_and(|n| n >= 2))
            })
        })
        .await;
    }

    let body = json!({
        "external_ref": "ship-1", "channel": "web",
        "lines": [{"sku": "SKU-1", "qty": 2, "unit_price_minor": 1250, "currency": "EUR"}],
        "ship_to": {"name": "C", "line1": "1 Street", "city": "Berlin", "postcode": "10115", "country": "DE",
                    "lat": BERLIN.0, "lon": BERLIN.1}
    });
    let r = c.post(format!("http://{hub_http}/v1/orders")).header("idempotency-key", "ship-1").json(&body).send();
    let r = r.await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let placed: Value = r.json().await.unwrap();
    let fo = &placed["fulfillments"][0];
    assert_eq!(fo["site"], "wh-b", "the earlier truck wins the tie: {placed}");
    let ship_by = placed["promised_ship_by_ms"].as_u64().expect("a promise in the 201");
    assert_eq!(fo["promised_ship_by_ms"].as_u64(), Some(ship_by));
    assert!(placed["promised_ship_by"].as_str().is_some_and(|s| s.ends_with(":59:00Z")), "{placed}");
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(ship_by > now_ms - 60_000 && ship_by <= now_ms + 2 * 86_400_000, "{ship_by} vs now {now_ms}");
    let service = &fo["services"][0];
    assert_eq!((service["carrier"].as_str(), service["service"].as_str()), (Some("dhl"), Some("parcel")));
    assert!(service["estimated_delivery"].as_str().is_some_and(|d| d.len() == 10), "{service}");

    // The explanation shows each candidate's promise and the chosen plan's ship day before distance.
    let id = placed["id"].as_str().unwrap();
    let (s, routing) = get(&c, format!("http://{hub_http}/v1/orders/{id}/routing")).await;
    assert_eq!(s, 200);
    let e = &routing["decisions"][0]["decision"]["explanation"];
    let cand = |site: &str| e["candidates"].as_array().unwrap().iter().find(|c| c["site"] == site).unwrap().clone();
    let (ca, cb) = (cand("wh-a"), cand("wh-b"));
    assert_eq!(ca["distance_km"], cb["distance_km"], "distance ties: {e}");
    assert!(ca["promised_ship_by_ms"].as_u64().unwrap() > cb["promised_ship_by_ms"].as_u64().unwrap(), "{e}");
    assert!(ca["alone"]["ship_day"].as_u64().unwrap() > cb["alone"]["ship_day"].as_u64().unwrap(), "{e}");
    assert_eq!(e["chosen"]["ship_day"], cb["alone"]["ship_day"], "{e}");

    // The customer sees the promise and the estimated delivery, without the site.
    let token_url = placed["tracking_url"].as_str().unwrap();
    let (s, t) = get(&http_anonymous(), format!("http://{hub_http}{token_url}")).await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["promised_ship_by"], placed["promised_ship_by"], "{t}");
    assert_eq!(t["deliveries"][0]["estimated_delivery"], service["estimated_delivery"], "{t}");
    assert!(!t.to_string().contains("wh-b"), "no site in the customer's view: {t}");
}
