//! The demo's reports pass: the hub's report for the last 14 days (`GET /v1/reports`, all of the demo, whose
//! data is fresh), its CSV, and the planner's `/ui/reports` screen. The report is a fold over the event log
//! made in each event's own transaction, so its counts must equal the events in the feed: orders =
//! `order.created`, shipped = `fulfillment.shipped`, delivered = `order.delivered`, cancellations =
//! `order.cancelled`; every difference counts in `report_mismatches` (must be 0), as does a report with fewer
//! orders than the hub acknowledged or a CSV that does not end with its total. `stock.low`: every (site, SKU)
//! at or below the threshold in the hub's `GET /v1/stock` must have had its event (the hub reads only the SKUs
//! each change touched, so a fall its bookkeeping missed would show here): `stock_low_missed` (must be 0),
//! asked again for at most [`LOW_SETTLE_MS`] while the hub's watcher catches up with the last changes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use anyhow::Context;
use serde_json::{Value, json};

/// Most pages of the feed read (1,000 events each).
const FEED_PAGES_MAX: usize = 1_000;
/// The hub's `[events] stock_low_at` in the demo.
pub(super) const STOCK_LOW_AT: u64 = 45;
/// How long the pass waits for the `stock.low` of a pair low in the hub's stock view, ms.
const LOW_SETTLE_MS: u64 = 10_000;
/// Between two looks, ms.
const LOW_POLL_MS: u64 = 250;

/// What the pass found.
#[derive(Debug, Default)]
pub(super) struct ReportFigures {
    total: Value,
    sites: usize,
    mismatches: u64,
    screen_ok: bool,
    /// `stock.low` events in the feed, and those whose own figures contradict them (available above the
    /// threshold they name; must be 0).
    stock_low: u64,
    stock_low_mismatches: u64,
    /// (site, SKU) pairs at or below the threshold in the hub's stock view without a `stock.low` (must be 0),
    /// and the pairs low.
    stock_low_missed: u64,
    stock_low_pairs: u64,
}

impl ReportFigures {
    pub(super) fn json(&self) -> Value {
        json!({
            "report": {
                "orders": self.total["orders"], "shipped": self.total["shipped"],
                "fill_rate": self.total["fill_rate"], "on_time_rate": self.total["on_time_rate"],
                "ship_time_p50_s": self.total["ship_time_p50_s"], "ship_time_p90_s": self.total["ship_time_p90_s"],
                "cancellations": self.total["cancellations"], "delivered": self.total["delivered"], "sites": self.sites,
            },
            "report_mismatches": self.mismatches,
            "stock_low_events": self.stock_low,
            "stock_low_mismatches": self.stock_low_mismatches,
            "stock_low_pairs": self.stock_low_pairs,
            "stock_low_missed": self.stock_low_missed,
        })
    }

    pub(super) fn ok(&self) -> bool {
        self.mismatches == 0 && self.stock_low_mismatches == 0 && self.stock_low_missed == 0
    }

    pub(super) fn line(&self) -> String {
        let t = &self.total;
        format!(
            "reports: {} orders, fill rate at intake {}, {} shipped from {} sites, on time {}, order to ship p50 {} s / p90 {} s, {} cancelled, {} delivered; report screen {}; report mismatches {} (must be 0); stock.low events {} ({} contradict their figures, must be 0); {} (site, SKU) pairs low now, {} without their event (must be 0)",
            t["orders"],
            t["fill_rate"],
            t["shipped"],
            self.sites,
            t["on_time_rate"],
            t["ship_time_p50_s"],
            t["ship_time_p90_s"],
            t["cancellations"],
            t["delivered"],
            if self.screen_ok { "rendered" } else { "FAILED" },
            self.mismatches,
            self.stock_low,
            self.stock_low_mismatches,
            self.stock_low_pairs,
            self.stock_low_missed
        )
    }
}

/// Counts the feed's events by type; also the `stock.low` events whose available units exceed the threshold
/// they name.
async fn feed_counts(admin: &reqwest::Client, hub: SocketAddr) -> anyhow::Result<FeedCounts> {
    let mut counts = BTreeMap::new();
    let mut low_contradicted = 0;
    let mut reported = BTreeSet::new();
    let mut after = 0u64;
    for _ in 0..FEED_PAGES_MAX {
        let url = format!("https://{hub}/v1/events?after={after}&limit=1000");
        let v: Value = admin.get(url).send().await.context("hub unreachable")?.json().await?;
        let events = v["events"].as_array().cloned().unwrap_or_default();
        for e in &events {
            *counts.entry(e["type"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
            let low = (e["data"]["available"].as_u64(), e["data"]["low_at"].as_u64());
            if e["type"] == "stock.low" && !matches!(low, (Some(a), Some(at)) if a <= at) {
                low_contradicted += 1;
            }
            if e["type"] == "stock.low" {
                let pair = (e["data"]["site"].as_str(), e["data"]["sku"].as_str());
                reported.insert((pair.0.unwrap_or_default().to_owned(), pair.1.unwrap_or_default().to_owned()));
            }
        }
        let next = v["next_after"].as_u64().unwrap_or(after);
        if events.is_empty() || next <= after {
            break;
        }
        after = next;
    }
    Ok((counts, low_contradicted, reported))
}

/// The feed's events by type, the `stock.low` that contradict their figures, and the (site, SKU) pairs
/// reported low.
type FeedCounts = (BTreeMap<String, u64>, u64, BTreeSet<(String, String)>);

/// The (site, SKU) pairs at or below [`STOCK_LOW_AT`] in the hub's stock view (one page: the demo's few rows).
async fn low_pairs(admin: &reqwest::Client, hub: SocketAddr) -> anyhow::Result<BTreeSet<(String, String)>> {
    let url = format!("https://{hub}/v1/stock?limit=10000");
    let v: Value = admin.get(url).send().await.context("hub unreachable")?.json().await?;
    let mut out = BTreeSet::new();
    for sku in v["skus"].as_array().into_iter().flatten() {
        for row in sku["sites"].as_array().into_iter().flatten() {
            if row["available"].as_u64().is_some_and(|a| a <= STOCK_LOW_AT) {
                let (site, sku) = (row["site"].as_str().unwrap_or_default(), row["sku"].as_str().unwrap_or_default());
                out.insert((site.to_owned(), sku.to_owned()));
            }
        }
    }
    Ok(out)
}

/// `stock.low` against the stock view: (pairs low now, of those without an event), asked again while some miss,
/// for at most [`LOW_SETTLE_MS`].
async fn low_missed(admin: &reqwest::Client, hub: SocketAddr) -> anyhow::Result<(u64, u64)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(LOW_SETTLE_MS);
    loop {
        let (_, _, reported) = feed_counts(admin, hub).await?;
        let low = low_pairs(admin, hub).await?;
        let missed = low.iter().filter(|p| !reported.contains(*p)).count() as u64;
        if missed == 0 || std::time::Instant::now() >= deadline {
            for p in low.iter().filter(|p| !reported.contains(*p)) {
                eprintln!("stock.low: {} has {} low at the hub and no event", p.0, p.1);
            }
            return Ok((low.len() as u64, missed));
        }
        tokio::time::sleep(std::time::Duration::from_millis(LOW_POLL_MS)).await;
    }
}

/// The hub's planner, signing in to the screens like a person: an anonymous client that follows no redirect.
pub(super) struct Planner<'a> {
    /// Trusts the demo's CA, no key, no redirects.
    pub browser: &'a reqwest::Client,
    /// The `planner` user's password.
    pub password: &'a str,
}

impl Planner<'_> {
    /// Signs in; the session cookie (`name=value`).
    async fn sign_in(&self, hub: SocketAddr) -> Option<String> {
        let form = [("name", "planner"), ("password", self.password), ("next", "/ui/reports")];
        let r = self.browser.post(format!("https://{hub}/ui/sign-in")).form(&form).send().await.ok()?;
        if r.status() != 303 {
            return None;
        }
        let cookie = r.headers().get("set-cookie")?.to_str().ok()?;
        cookie.split(';').next().map(str::to_owned)
    }
}

/// Runs the pass; `acknowledged` is how many channel orders the hub answered `201`.
pub(super) async fn pass(
    admin: &reqwest::Client,
    hub: SocketAddr,
    acknowledged: u64,
    planner: &Planner<'_>,
) -> anyhow::Result<ReportFigures> {
    let r: Value =
        admin.get(format!("https://{hub}/v1/reports")).send().await.context("hub unreachable")?.json().await?;
    let (counts, stock_low_mismatches, _) = feed_counts(admin, hub).await?;
    let (stock_low_pairs, stock_low_missed) = low_missed(admin, hub).await?;
    let t = r["total"].clone();
    let mut f = ReportFigures {
        sites: r["sites"].as_array().map_or(0, Vec::len),
        stock_low: counts.get("stock.low").copied().unwrap_or(0),
        stock_low_mismatches,
        stock_low_pairs,
        stock_low_missed,
        ..ReportFigures::default()
    };
    for (field, kind) in [
        ("orders", "order.created"),
        ("shipped", "fulfillment.shipped"),
        ("delivered", "order.delivered"),
        ("cancellations", "order.cancelled"),
    ] {
        let (report, feed) = (t[field].as_u64().unwrap_or(0), counts.get(kind).copied().unwrap_or(0));
        if report != feed {
            eprintln!("report {field} {report} but the feed has {feed} {kind} events");
            f.mismatches += report.abs_diff(feed);
        }
    }
    if t["orders"].as_u64().unwrap_or(0) < acknowledged {
        eprintln!("the report counts fewer orders than the hub acknowledged ({acknowledged})");
        f.mismatches += 1;
    }
    let csv = admin.get(format!("https://{hub}/v1/reports?format=csv")).send().await?.text().await?;
    if !csv.lines().last().is_some_and(|l| l.starts_with(&format!("total,,{},", t["orders"]))) {
        eprintln!("the report's CSV does not end with its total");
        f.mismatches += 1;
    }
    f.screen_ok = match planner.sign_in(hub).await {
        Some(cookie) => {
            let screen =
                planner.browser.get(format!("https://{hub}/ui/reports")).header("cookie", cookie).send().await?;
            screen.status().is_success() && screen.text().await?.contains("Orders per day")
        }
        None => false,
    };
    if !f.screen_ok {
        f.mismatches += 1;
    }
    f.total = t;
    Ok(f)
}
