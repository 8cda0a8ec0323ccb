//! Money at the end of the run: goodwill refunds, then every shipped value against its capture once the
//! hub's payment outbox is empty.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::traffic::Tally;

/// Money at the end of the run: a goodwill refund on a few captured orders (credit notes through the
/// outbox), then, once the hub's payment outbox is empty, every acknowledged hub order's shipped value
/// (shipped units × tax-inclusive price) against what was captured. Returns the hub's payment summary and the
/// orders whose shipped value is not exactly captured (waits up to 60 s for the outbox and the watcher).
pub(super) async fn settle_money(
    http: &reqwest::Client,
    hub: SocketAddr,
    tally: &Tally,
    acked: &[String],
) -> (Value, u64) {
    let mut refunds = 0;
    for id in acked {
        if refunds >= 10 {
            break;
        }
        let Ok(r) = http.get(format!("https://{hub}/v1/orders/{id}")).send().await else { continue };
        tally.hub_answer(&r);
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if v["payment"]["captured_minor"].as_u64().unwrap_or(0) >= 500 {
            let body = json!({"amount_minor": 100, "reason": "goodwill: late delivery (demo)"});
            if let Ok(r) = http.post(format!("https://{hub}/v1/orders/{id}/refunds")).json(&body).send().await {
                tally.hub_answer(&r);
                refunds += u64::from(r.status().as_u16() == 201);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut summary = Value::Null;
    let mut not_captured = u64::MAX;
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("https://{hub}/v1/payments/summary")).send().await {
            tally.hub_answer(&r);
            summary = r.json().await.unwrap_or(Value::Null);
        }
        if summary["outbox_open"] == 0 {
            not_captured = 0;
            for id in acked {
                let Ok(r) = http.get(format!("https://{hub}/v1/orders/{id}")).send().await else {
                    not_captured += 1;
                    continue;
                };
                tally.hub_answer(&r);
                let v: Value = r.json().await.unwrap_or(Value::Null);
                let prices = v["order"]["lines"].as_array().cloned().unwrap_or_default();
                let shipped: u64 = v["lines"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .zip(&prices)
                    .map(|(l, p)| l["shipped"].as_u64().unwrap_or(0) * p["unit_price_minor"].as_u64().unwrap_or(0))
                    .sum();
                if shipped != v["payment"]["captured_minor"].as_u64().unwrap_or(0) {
                    not_captured += 1;
                }
            }
            if not_captured == 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    (summary, not_captured)
}

/// The hub's payment summary once its outbox is empty (at most 30 s), if it answers.
pub(super) async fn settled_summary(http: &reqwest::Client, hub: SocketAddr, tally: &Tally) -> Option<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("https://{hub}/v1/payments/summary")).send().await {
            tally.hub_answer(&r);
            let v: Value = r.json().await.unwrap_or(Value::Null);
            if v["outbox_open"] == 0 {
                return Some(v);
            }
            last = Some(v);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    last
}
