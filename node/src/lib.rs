//! The oms warehouse node: a complete local system of record for one site. Orders, an append-only stock
//! ledger with balances, pick waves and idempotency records live in redb ([`store`]); a local HTTP API
//! ([`api`]) serves staff screens, scripts and local sales channels. It needs no network beyond its own
//! listener, so the site keeps working when the link to the hub is down.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs, unreachable_pub)]

mod api;
pub mod carrier;
pub mod config;
mod dispatch;
pub mod easypost;
pub mod escrow;
mod events;
mod freeze;
pub mod import;
mod labels;
pub mod metrics;
mod problem;
mod receiving;
pub mod store;
mod sync;
#[cfg(test)]
mod test_support;
mod ui;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

pub use config::NodeConfig;

pub use sync::SYNC_DB_FILE;

/// Opens the store and serves the HTTP API until `shutdown` resolves. Binds before returning from the
/// listener setup so callers (and tests) can rely on the port once "listening" is logged.
pub async fn run(
    cfg: NodeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;
    let metrics = Arc::new(metrics::Metrics::new());
    let store = store::Store::open(&cfg.db_path(), cfg.node_id.clone(), cfg.store_limits(), metrics.clone())
        .with_context(|| format!("cannot open the database {}; the node does not start", cfg.db_path().display()))?;
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(node = %cfg.node_id, %addr, data = %cfg.data_dir.display(), "node listening");
    // Sync with the hub, if configured. It runs beside the API and never blocks it.
    if let Some(link) = &cfg.hub {
        let site = oms_protocol::schema::SiteInfo {
            name: cfg.site.name.clone(),
            lat: cfg.site.lat,
            lon: cfg.site.lon,
            priority: cfg.site.priority,
            capacity_per_day: cfg.site.capacity_per_day,
            region: cfg.site.region.clone(),
        };
        sync::spawn(
            link,
            store.clone(),
            &cfg.data_dir,
            &site,
            cfg.shipping.as_ref(),
            sync::SyncTuning {
                receipt_prune_grace_ms: cfg.receiving.receipt_prune_grace_ms,
                answer_linger_ms: link.answer_linger_ms,
                ..sync::SyncTuning::default()
            },
            metrics.clone(),
        )
        .with_context(|| format!("cannot start sync with the hub at {}", link.addr))?;
    }
    // Buy the labels of packed consignments, with or without a link to the carrier.
    if let Some(c) = &cfg.carrier {
        match c.kind {
            carrier::CarrierKind::Manual => {
                tokio::spawn(labels::run(store.clone(), carrier::Manual, c.clone(), metrics.clone()));
            }
            carrier::CarrierKind::Test => {
                let dir = c.dir.as_ref().context("[carrier] kind = \"test\" needs dir")?;
                let test = carrier::TestCarrier::new(dir.clone())
                    .with_context(|| format!("cannot use the test carrier's directory {}", dir.display()))?;
                tokio::spawn(labels::run(store.clone(), test, c.clone(), metrics.clone()));
            }
            carrier::CarrierKind::Easypost => {
                let base = c.base_url.as_deref().context("[carrier] kind = \"easypost\" needs base_url")?;
                let key = easypost::read_api_key(c.api_key_file.as_deref(), c.api_key_env.as_deref())?;
                let api = easypost::EasyPost::new(base, key, Duration::from_millis(c.label_timeout_ms.max(1)))?;
                tokio::spawn(labels::run(store.clone(), api, c.clone(), metrics.clone()));
            }
        }
    }
    // Freeze finished orders, with or without a hub.
    tokio::spawn(freeze::run(store.clone(), cfg.orders.freeze_policy()));
    // API keys from the data directory, re-read when `oms keys` changes them.
    let auth = Arc::new(
        oms_service::auth::Auth::load(&cfg.data_dir, cfg.auth.clone(), api::policy)
            .with_context(|| format!("cannot load the API keys in {}", cfg.data_dir.display()))?,
    );
    let keys_watch = tokio::spawn(auth.clone().watch());
    // `oms backup --data DIR` reaches the running node here (see `oms_service::storage::admin`).
    // Without it (a path too long for a Unix socket, say) the process still serves; only online backups
    // are unavailable, and the log says so.
    let _admin = oms_service::storage::admin::serve(&cfg.data_dir)
        .inspect_err(|e| {
            tracing::warn!(error = %e, data = %cfg.data_dir.display(), "no admin socket: oms backup cannot reach this process")
        })
        .ok();
    let chrome = Arc::new(ui::chrome(cfg.node_id.as_str(), cfg.http.tls_files().is_some()));
    let app = api::router(api::AppState {
        store,
        metrics,
        auth,
        chrome,
        receiving: cfg.receiving,
        carrier: cfg.carrier.clone().map(Arc::new),
    });
    // TLS on the API if `[http]` names a certificate, re-read when its files change.
    let tls =
        oms_transport::tls::watched_http_server_tls(cfg.http.tls_files(), cfg.http.tls_check_interval_ms, "node-http")
            .context("cannot load the HTTP API's certificate (http.tls_cert, http.tls_key)")?;
    // Host allow-list, origin check, timeouts and connection limits of `[http]` (see `oms_service::serve`).
    oms_service::serve::serve(listener, app, &cfg.http, tls, shutdown).await?;
    keys_watch.abort();
    Ok(())
}
