//! The demo's processes: the sites, their PKI and API keys, each node's and the hub's configuration, starting
//! them and waiting until they answer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use oms_service::auth::keys;
use oms_service::auth::users::{self, NewUser};
use tokio::process::{Child, Command};

use serde_json::json;

use super::{SKUS, flash_sale, post, purchasing, reports, sku, tracking};

pub(super) struct Site {
    pub(super) id: &'static str,
    pub(super) lat: f64,
    pub(super) lon: f64,
    pub(super) addr: SocketAddr,
    pub(super) dir: PathBuf,
}

pub(super) fn free_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

pub(super) async fn spawn_node(site: &Site) -> anyhow::Result<Child> {
    let exe = std::env::current_exe()?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(site.dir.join("node.log"))?;
    let child = Command::new(exe)
        .args(["node", "--node-id", site.id, "--listen", &site.addr.to_string(), "--data"])
        .arg(&site.dir)
        .arg("--config")
        .arg(site.dir.join("node.toml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start a node process")?;
    Ok(child)
}

/// Waits until `base` (`http://addr` or `https://addr`) answers `/healthz`, for at most 20 s.
pub(super) async fn wait_healthy(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        match http.get(format!("{base}/healthz")).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = r.status().to_string(),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{base} did not become healthy within 20 s ({last})")
}

/// The demo's tenant.
pub(super) const TENANT: &str = "demo";

/// A CA, the hub's certificate and one per site in `dir`, valid for 90 days: a demo run is short, but a
/// validity under 30 days would make every process warn that its certificate expires soon.
pub(super) fn make_pki(dir: &std::path::Path, sites: &[Site]) -> anyhow::Result<()> {
    use oms_transport::pki::{self, Identity, IssueOptions};
    let day = time::Duration::days(90);
    pki::ca_init(dir, TENANT, day)?;
    let mut hub = IssueOptions::valid_for(day);
    hub.dns_names = vec!["localhost".into()];
    pki::issue(dir, dir, &Identity::hub(TENANT)?, &hub)?;
    // The hub's HTTP API: `oms ca issue --http hub` (localhost and 127.0.0.1, no identity).
    hub.ip_addresses = vec![[127, 0, 0, 1].into()];
    pki::issue_http(dir, dir, "hub", &hub)?;
    for s in sites {
        pki::issue(dir, dir, &Identity::node(TENANT, s.id)?, &IssueOptions::valid_for(day))?;
    }
    Ok(())
}

/// The demo's API keys: one token per role, provisioned to every site (as a secret store would), each
/// process holding only its hash.
pub(super) struct DemoKeys {
    /// Seeds stock, reads orders and the audit trail for the report.
    pub(super) admin: String,
    /// The staff loops: waves, picks, pack, ship, deliver, returns.
    pub(super) staff: String,
    /// Each site's till (channel `pos`).
    pub(super) pos: String,
    /// Customer service at the sites: the odd cancellation after pick.
    pub(super) service: String,
    /// The hub's `web` channel.
    pub(super) web: String,
    /// The hub's `marketplace` channel.
    pub(super) marketplace: String,
    /// The demo supplier's key at the hub (role `supplier`, its own purchase orders only).
    pub(super) supplier: String,
    /// The PIN of the `picker` user of every site's screens.
    pub(super) picker_pin: String,
    /// The password of the hub's `planner` user (its screens: network, stock, forecasts, reports).
    pub(super) planner_password: String,
}

impl DemoKeys {
    pub(super) fn new() -> Self {
        let token = keys::new_token;
        DemoKeys {
            admin: token(),
            staff: token(),
            pos: token(),
            service: token(),
            web: token(),
            marketplace: token(),
            supplier: token(),
            picker_pin: crate::keys::made_up_secret(true),
            planner_password: crate::keys::made_up_secret(false),
        }
    }

    /// Records the keys in a node's data directory; returns how many.
    pub(super) fn provision_node(&self, dir: &std::path::Path) -> anyhow::Result<u64> {
        add_key(dir, &self.admin, "demo-admin", keys::Role::Admin, None)?;
        add_key(dir, &self.staff, "demo-staff", keys::Role::Staff, None)?;
        add_key(dir, &self.pos, "demo-pos", keys::Role::Channel, Some("pos"))?;
        add_key(dir, &self.service, "demo-service", keys::Role::Service, None)?;
        let picker =
            NewUser { name: "picker".into(), role: keys::Role::Staff, secret: self.picker_pin.clone(), pin: true };
        users::create(dir, picker, oms_service::now_ms())?;
        Ok(4)
    }

    /// Records the hub's keys (admin for the report, one per channel) in its data directory; returns how many.
    pub(super) fn provision_hub(&self, dir: &std::path::Path) -> anyhow::Result<u64> {
        add_key(dir, &self.admin, "demo-admin", keys::Role::Admin, None)?;
        add_key(dir, &self.web, "demo-web", keys::Role::Channel, Some("web"))?;
        add_key(dir, &self.marketplace, "demo-marketplace", keys::Role::Channel, Some("marketplace"))?;
        let supplier = keys::NewKey {
            name: "demo-supplier-portal".into(),
            role: keys::Role::Supplier,
            channel: None,
            supplier: Some(oms_protocol::domain::SupplierId::parse(purchasing::SUPPLIER)?),
            rate_per_s: Some(100_000),
        };
        keys::add_token(dir, &self.supplier, supplier, oms_service::now_ms())?;
        let planner = NewUser {
            name: "planner".into(),
            role: keys::Role::Planner,
            secret: self.planner_password.clone(),
            pin: false,
        };
        users::create(dir, planner, oms_service::now_ms())?;
        Ok(4)
    }
}

/// Records `token` as a key in the data directory `dir`.
pub(super) fn add_key(
    dir: &std::path::Path,
    token: &str,
    name: &str,
    role: keys::Role,
    channel: Option<&str>,
) -> anyhow::Result<()> {
    let channel = channel.map(oms_protocol::domain::Channel::parse).transpose()?;
    // The demo drives hundreds of requests a second through each key.
    let new = keys::NewKey { name: name.into(), role, channel, supplier: None, rate_per_s: Some(100_000) };
    keys::add_token(dir, token, new, oms_service::now_ms())?;
    Ok(())
}

/// An HTTP client that authenticates with `token` (none: anonymous): plain HTTP to the nodes, HTTPS to the hub
/// trusting only the demo's CA (`ca`, PEM), reporting the certificate each answer came with.
pub(super) fn client(token: Option<&str>, ca: &[u8]) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse()?);
    }
    Ok(reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca)?)
        .tls_info(true)
        .timeout(Duration::from_secs(15))
        .default_headers(headers)
        .build()?)
}

/// Every site's shipping schedule: a daily parcel service and a weekday express one, each collecting
/// late in the evening in Berlin's time, so the hub promises each channel order a ship date and an estimated
/// delivery per service.
pub(super) const DEMO_SHIPPING: &str = "[shipping]\ntime_zone = \"Europe/Berlin\"\nhandling_minutes = 30\n\n\
    [[shipping.schedules]]\ncarrier = \"dhl\"\nservice = \"parcel\"\n\
    pickup_days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\ncutoff = \"23:30\"\ntransit_days = 2\n\n\
    [[shipping.schedules]]\ncarrier = \"ups\"\nservice = \"express\"\n\
    pickup_days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]\ncutoff = \"22:00\"\ntransit_days = 1\n";

/// How long a receipt the hub applied stays in a site's stock document (the default is a minute; the demo
/// watches them go).
pub(super) const DEMO_RECEIPT_PRUNE_GRACE_MS: u64 = 1_000;

/// Operations of history the sites' state documents keep beyond twice what they show before a new generation
/// starts (`state_history_ops_min`; production's default is 5,000): low, so that the demo's traffic takes the
/// stock documents and escrow views through several generations.
pub(super) const DEMO_STATE_HISTORY_OPS_MIN: u64 = 200;

/// The test carrier's directory in each site's data directory: the labels it sold and its purchase log.
pub(super) const DEMO_CARRIER_DIR: &str = "carrier";

/// Links a site to the hub through its `node.toml`, with [`DEMO_SHIPPING`] and the fault-injecting test
/// carrier (cut off with the site: it is unreachable while the site is).
pub(super) fn write_node_config(site: &Site, hub: SocketAddr, certs: &std::path::Path) -> anyhow::Result<()> {
    let certs = serde_json::to_string(&certs.display().to_string())?;
    let text = format!(
        "[site]\nname = \"{}\"\nlat = {}\nlon = {}\n\n{DEMO_SHIPPING}\n[hub]\naddr = \"{hub}\"\ncerts_dir = {certs}\ntenant = \"{TENANT}\"\n\
         state_history_ops_min = {DEMO_STATE_HISTORY_OPS_MIN}\n\n\
         [carrier]\nkind = \"test\"\ndir = {}\ndefault_service = \"ground\"\nlabel_poll_ms = 100\n\n\
         [receiving]\nreceipt_prune_grace_ms = {DEMO_RECEIPT_PRUNE_GRACE_MS}\n",
        site.id,
        site.lat,
        site.lon,
        serde_json::to_string(&site.dir.join(DEMO_CARRIER_DIR).display().to_string())?
    );
    std::fs::write(site.dir.join("node.toml"), text)?;
    Ok(())
}

pub(super) fn spawn_hub(
    data: &std::path::Path,
    certs: &std::path::Path,
    quic: SocketAddr,
    http: SocketAddr,
    stripe_url: Option<&str>,
) -> anyhow::Result<Child> {
    std::fs::create_dir_all(data)?;
    let log = std::fs::File::create(data.join("hub.log"))?;
    // HTTPS on the hub's API with the certificate `make_pki` issued for it.
    let (cert, key) = oms_transport::pki::http_paths(certs, "hub");
    let config = data.join("hub.toml");
    let (cert, key) =
        (serde_json::to_string(&cert.display().to_string())?, serde_json::to_string(&key.display().to_string())?);
    // Card payments go to the deterministic test provider inside the hub (no other process); prices are
    // tax-inclusive at 19 % for German addresses. Webhooks to the demo's receiver on loopback, retried quickly.
    // `stock.low` at 45 available units or fewer: the demo seeds 40 to 99 of each SKU per site, so some start
    // low and more fall there as orders flow.
    let hooks = format!(
        "[webhooks]\nallow_private_addresses = true\nbackoff_base_ms = 200\nbackoff_max_ms = 2000\n[events]\nstock_low_at = {}\n",
        reports::STOCK_LOW_AT
    );
    // With `--stripe-url`, a Stripe-compatible provider too, its (test) secret key in a file beside the config.
    let stripe = match stripe_url {
        Some(url) => {
            let secret = data.join("stripe.key");
            std::fs::write(&secret, "sk_test_oms_demo\n")?;
            format!(
                "[payments.providers.stripe]\nkind = \"stripe\"\nbase_url = {}\nsecret_key_file = {}\n",
                serde_json::to_string(url)?,
                serde_json::to_string(&secret.display().to_string())?
            )
        }
        None => String::new(),
    };
    std::fs::write(
        &config,
        format!(
            "state_history_ops_min = {DEMO_STATE_HISTORY_OPS_MIN}\n[http]\ntls_cert = {cert}\ntls_key = {key}\n[payments]\nretry_backoff_ms = 100\n\
             [payments.providers.test]\nkind = \"test\"\n{stripe}[tax]\nprices = \"inclusive\"\n[tax.rates]\nDE = 1900\n{hooks}{}",
            tracking::hub_toml()
        ),
    )?;
    Command::new(std::env::current_exe()?)
        .args(["hub", "--tenant", TENANT, "--listen-quic", &quic.to_string(), "--listen-http", &http.to_string()])
        .arg("--config")
        .arg(&config)
        .arg("--data")
        .arg(data)
        .arg("--certs")
        .arg(certs)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the hub process")
}

/// Seeds every site's catalog with [`SKUS`] SKUs and opening stock (40 to 99 units each), and the flash
/// sale's SKU at the first two sites.
pub(super) async fn seed(admin: &reqwest::Client, sites: &[Site]) -> anyhow::Result<()> {
    for (si, s) in sites.iter().enumerate() {
        let base = format!("http://{}/v1", s.addr);
        for i in 0..SKUS {
            let r = admin
                .put(format!("{base}/catalog/{}", sku(i)))
                .json(&json!({"name": format!("Item {i}"), "bin": format!("{}-{:02}", ["A", "B", "C"][i % 3], i)}))
                .send()
                .await?;
            if !r.status().is_success() {
                bail!("seeding catalog failed: {}", r.status());
            }
            // cannot truncate: the remainder is below 60.
            let qty = 40 + ((i * 7 + si * 13) % 60) as u64;
            let (st, _) = post(
                admin,
                format!("{base}/stock/receipts"),
                json!({"sku": sku(i), "qty": qty, "note": "opening stock"}),
            )
            .await?;
            if st != 201 {
                bail!("seeding stock failed: {st}");
            }
        }
    }
    // The flash sale's SKU, at the first two sites only (see `flash_sale`).
    for s in &sites[..2] {
        let base = format!("http://{}/v1", s.addr);
        let r = admin
            .put(format!("{base}/catalog/{}", flash_sale::FLASH_SKU))
            .json(&json!({"name": "Flash sale item", "bin": "F-01"}))
            .send()
            .await?;
        let (st, _) = post(
            admin,
            format!("{base}/stock/receipts"),
            json!({"sku": flash_sale::FLASH_SKU, "qty": flash_sale::UNITS_PER_SITE, "note": "opening stock"}),
        )
        .await?;
        if !r.status().is_success() || st != 201 {
            bail!("seeding the flash sale's SKU failed: {} {st}", r.status());
        }
    }
    Ok(())
}
