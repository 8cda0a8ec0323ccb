//! The demo's webhook receiver: the `web` channel subscribes the reference receiver
//! ([`oms_hub::events::receiver`], axum on loopback in this process, checking every signature and
//! deduplicating by event id) to its orders' events before the orders flow. After the run it checks that
//! every event the hub's feed holds for the channel arrived exactly once after deduplication (the feed and
//! the webhooks share ids), that the hub never reported one fact twice under two ids, that every `web`
//! order the hub lists has its `order.created`, and counts the events of the site cut off by the partition,
//! which reach the hub (and so the receiver) only after the heal.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use oms_hub::events::receiver::Receiver;
use serde_json::{Value, json};

/// The receiver and its subscription.
pub(super) struct DemoWebhooks {
    rx: Receiver,
}

/// What the check found.
#[derive(Debug, Default)]
pub(super) struct WebhookFigures {
    /// Distinct events received.
    pub(super) delivered: u64,
    /// Deliveries of an event already received (at-least-once; deduplicated by id).
    pub(super) redelivered: u64,
    /// Facts (type, order, fulfillment) received under more than one event id: must be 0.
    pub(super) duplicates_after_dedup: u64,
    /// Events of the feed never received, plus `web` orders without their `order.created`: must be 0.
    pub(super) missing: u64,
    /// Events about the cut-off site's fulfillments received.
    pub(super) from_cut_site: u64,
    /// Deliveries refused for their signature: must be 0.
    pub(super) bad_signatures: u64,
}

impl WebhookFigures {
    pub(super) fn json(&self) -> Value {
        json!({
            "webhooks_delivered": self.delivered,
            "webhooks_redelivered": self.redelivered,
            "webhooks_duplicates_after_dedup": self.duplicates_after_dedup,
            "webhooks_missing": self.missing,
            "webhooks_from_cut_site": self.from_cut_site,
            "webhooks_bad_signatures": self.bad_signatures,
        })
    }

    /// Whether every figure that must be 0 is.
    pub(super) fn ok(&self) -> bool {
        self.duplicates_after_dedup == 0 && self.missing == 0 && self.bad_signatures == 0 && self.delivered > 0
    }
}

/// Starts the receiver and subscribes it with the `web` channel's key (`web`) at the hub.
pub(super) async fn subscribe(web: &reqwest::Client, hub: SocketAddr) -> anyhow::Result<DemoWebhooks> {
    let rx = Receiver::start().await.context("cannot start the webhook receiver")?;
    let r = web.post(format!("https://{hub}/v1/webhooks")).json(&json!({"url": rx.url(), "after": 0})).send().await?;
    if r.status().as_u16() != 201 {
        bail!("webhook subscription refused: {} {}", r.status(), r.text().await.unwrap_or_default());
    }
    let v: Value = r.json().await?;
    rx.set_secret(v["secret"].as_str().context("no secret in the subscription")?);
    Ok(DemoWebhooks { rx })
}

/// Every event the channel's feed holds, by id.
async fn feed(web: &reqwest::Client, hub: SocketAddr) -> anyhow::Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    let mut after = 0u64;
    for _ in 0..100_000 {
        let v: Value =
            web.get(format!("https://{hub}/v1/events?after={after}&limit=1000")).send().await?.json().await?;
        for e in v["events"].as_array().into_iter().flatten() {
            out.insert(e["id"].as_str().unwrap_or_default().to_owned(), e.clone());
        }
        let next = v["next_after"].as_u64().context("no next_after")?;
        if next == after {
            return Ok(out);
        }
        after = next;
    }
    bail!("the event feed did not end")
}

/// The `web` orders the hub lists.
async fn web_orders(web: &reqwest::Client, hub: SocketAddr) -> anyhow::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let mut after: Option<String> = None;
    for _ in 0..100_000 {
        let mut url = format!("https://{hub}/v1/orders?limit=1000");
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let v: Value = web.get(url).send().await?.json().await?;
        out.extend(v["orders"].as_array().into_iter().flatten().filter_map(|o| o["id"].as_str()).map(String::from));
        match v["next_after"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => return Ok(out),
        }
    }
    bail!("the order listing did not end")
}

/// What makes two events the same fact: type, order, and the fulfillments it is about.
fn fact(e: &oms_hub::events::Event) -> String {
    let fos: Vec<&str> = match e.data.get("fulfillments").and_then(Value::as_array) {
        Some(list) => list.iter().filter_map(|f| f["fulfillment_id"].as_str()).collect(),
        None => e.data.get("fulfillment_id").and_then(Value::as_str).into_iter().collect(),
    };
    format!("{} {} {}", e.kind, e.order_id.as_deref().unwrap_or("-"), fos.join(","))
}

impl DemoWebhooks {
    /// Waits (at most 60 s) until every event of the channel's feed has arrived, then counts.
    pub(super) async fn check(
        &self,
        web: &reqwest::Client,
        hub: SocketAddr,
        cut_site: &str,
    ) -> anyhow::Result<WebhookFigures> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let (expected, received) = loop {
            let expected = feed(web, hub).await?;
            let received: BTreeSet<String> = self.rx.events().into_iter().map(|d| d.event.id).collect();
            if expected.keys().all(|id| received.contains(id)) || Instant::now() >= deadline {
                break (expected, received);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let events = self.rx.events();
        let mut facts: BTreeMap<String, u64> = BTreeMap::new();
        for d in &events {
            *facts.entry(fact(&d.event)).or_default() += 1;
        }
        let created: BTreeSet<String> = events
            .iter()
            .filter(|d| d.event.kind == oms_hub::events::ORDER_CREATED)
            .filter_map(|d| d.event.order_id.clone())
            .collect();
        let orders = web_orders(web, hub).await?;
        let tally = self.rx.tally();
        Ok(WebhookFigures {
            delivered: tally.unique,
            redelivered: tally.duplicates,
            duplicates_after_dedup: facts.values().map(|n| n - 1).sum(),
            missing: expected.keys().filter(|id| !received.contains(*id)).count() as u64
                + orders.iter().filter(|id| !created.contains(*id)).count() as u64,
            from_cut_site: events
                .iter()
                .filter(|d| d.event.data.get("site").and_then(Value::as_str) == Some(cut_site))
                .count() as u64,
            bad_signatures: tally.refused_signature,
        })
    }
}
