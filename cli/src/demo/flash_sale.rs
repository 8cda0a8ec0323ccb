//! The demo's flash sale: one SKU ([`FLASH_SKU`]) stocked at two sites only, then [`ORDERS`] one-unit channel
//! orders for it, [`CLIENTS`] at a time, as fast as the hub takes them, with the sites' default escrow budget
//! (50 units per SKU the hub may spend unacknowledged). Each site writes its acknowledgement of the hub's
//! spending into its stock document once a quarter of that budget is used up (at most every 31 ms, not at the
//! end of its 250 ms stock period), so the hub's budget refills while the sale runs and the orders are placed
//! rather than backordered.
//!
//! The orders pay by card at the test provider and join the run's other channel orders: they are picked,
//! shipped and billed, and every end-of-run check (oversold units, orders missing at the hub, payments)
//! covers them. The summary adds `flash_sale_orders` (acknowledged `201`s), `flash_sale_placed` (placed at a
//! site at once), `flash_sale_backordered` (a figure: taken, waiting for rights), `flash_sale_orders_per_s`,
//! and `flash_sale_errors` (orders the hub never acknowledged: must be 0).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The SKU on sale.
pub(super) const FLASH_SKU: &str = "SKU-FLASH";
/// Units of it at each of the two sites that stock it.
pub(super) const UNITS_PER_SITE: u64 = 2_000;
/// Orders in the sale.
const ORDERS: u64 = 400;
/// Orders in flight at once.
const CLIENTS: u64 = 16;
/// Longest wait for the sites' first grants of the SKU to reach the hub.
const GRANT_WAIT: Duration = Duration::from_secs(60);
/// Attempts per order (same idempotency key) before it counts as an error.
const ATTEMPTS_MAX: usize = 20;

/// What the sale did.
#[derive(Debug, Default)]
pub(super) struct FlashSale {
    /// Hub order ids acknowledged (`201`).
    pub(super) ids: Vec<String>,
    placed: u64,
    backordered: u64,
    errors: u64,
    secs: f64,
}

impl FlashSale {
    pub(super) fn json(&self) -> Value {
        json!({
            "flash_sale_orders": self.ids.len(),
            "flash_sale_placed": self.placed,
            "flash_sale_backordered": self.backordered,
            "flash_sale_orders_per_s": self.rate().round(),
            "flash_sale_errors": self.errors,
        })
    }

    /// Orders taken but placed at no site yet (waiting for rights).
    pub(super) fn backordered(&self) -> u64 {
        self.backordered
    }

    fn rate(&self) -> f64 {
        if self.secs > 0.0 { self.ids.len() as f64 / self.secs } else { 0.0 }
    }

    /// True when the hub acknowledged every order of the sale.
    pub(super) fn ok(&self) -> bool {
        self.errors == 0 && self.ids.len() as u64 == ORDERS
    }

    pub(super) fn line(&self) -> String {
        format!(
            "flash sale of {FLASH_SKU} (default escrow budget): {} orders taken by the hub in {:.2} s ({:.0}/s), {} placed \
             at a site at once, {} backordered; not acknowledged {} (must be 0)",
            self.ids.len(),
            self.secs,
            self.rate(),
            self.placed,
            self.backordered,
            self.errors
        )
    }
}

/// Waits until the hub holds rights to [`FLASH_SKU`] at `sites` sites (the sites' first grants synced).
async fn wait_for_grants(admin: &reqwest::Client, hub: SocketAddr, sites: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + GRANT_WAIT;
    loop {
        let v: Value = admin
            .get(format!("https://{hub}/v1/stock?sku={FLASH_SKU}"))
            .send()
            .await?
            .json()
            .await
            .unwrap_or(Value::Null);
        let granted = v["skus"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["sites"].as_array().into_iter().flatten())
            .filter(|r| r["hub_promisable"].as_u64().unwrap_or(0) > 0)
            .count();
        if granted >= sites {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("the hub holds no rights to {FLASH_SKU} at {sites} sites after {GRANT_WAIT:?}: {v}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the sale: `channel` posts the orders to the hub at `hub`, to customers at `near` (one place near
/// each stocking site, alternating). `admin` reads the hub's stock.
pub(super) async fn run(
    admin: &reqwest::Client,
    channel: &reqwest::Client,
    hub: SocketAddr,
    near: &[(f64, f64)],
) -> anyhow::Result<FlashSale> {
    wait_for_grants(admin, hub, near.len()).await?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..CLIENTS {
        let (http, near) = (channel.clone(), near.to_vec());
        tasks.spawn(async move {
            let mut out = FlashSale::default();
            let mut n = k;
            while n < ORDERS {
                let (lat, lon) = near[(n as usize) % near.len().max(1)];
                let body = json!({
                    "external_ref": format!("flash-{n}"), "channel": "web",
                    "lines": [{"sku": FLASH_SKU, "qty": 1, "unit_price_minor": 4999, "currency": "EUR"}],
                    "ship_to": {"name": "Demo Customer", "line1": format!("{n} Sale Street"), "city": "Demo", "postcode": "10115", "country": "DE", "lat": lat, "lon": lon},
                    "payment": {"method": "card", "provider": "test", "token": "tok_demo"}
                });
                let mut taken = false;
                for _ in 0..ATTEMPTS_MAX {
                    let r = http
                        .post(format!("https://{hub}/v1/orders"))
                        .header("idempotency-key", format!("flash-{n}"))
                        .json(&body)
                        .send()
                        .await;
                    if let Ok(r) = r
                        && r.status().as_u16() == 201
                    {
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        if let Some(id) = v["id"].as_str() {
                            out.ids.push(id.to_owned());
                        }
                        if v["status"] == "backordered" {
                            out.backordered += 1;
                        } else {
                            out.placed += 1;
                        }
                        taken = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if !taken {
                    out.errors += 1;
                }
                n += CLIENTS;
            }
            out
        });
    }
    let mut sale = FlashSale::default();
    while let Some(done) = tasks.join_next().await {
        let part = done?;
        sale.ids.extend(part.ids);
        sale.placed += part.placed;
        sale.backordered += part.backordered;
        sale.errors += part.errors;
    }
    sale.secs = started.elapsed().as_secs_f64();
    Ok(sale)
}
