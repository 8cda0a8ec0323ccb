//! The hub: the tenant's meeting point for its warehouse nodes and its sales channels.
//!
//! - [`docs`]: every order, stock and escrow document the nodes sync to it, in `hub.redb` (over
//!   `oms_sync::SyncDocs`), with the hub's access policy (a node sees only its own work) and the ownership
//!   check that quarantines a change a node makes to what it does not own.
//! - [`server`]: the QUIC server, one mutual-TLS connection and one sync session per node.
//! - [`intake`] and [`orders`]: channel orders taken with idempotency in `intake.redb` (one writer thread,
//!   concurrent orders committed together: group commit), routed by [`routing`]
//!   to the nearest sites that can ship them within the hub's escrowed stock rights, written out as
//!   fulfillment documents, re-routed when a site rejects, cancelled across sites.
//! - [`money`]: payment authorization at intake, capture per shipment through an outbox, invoices, credit
//!   notes and refunds, in `intake.redb`.
//! - [`purchasing`]: suppliers, purchase orders sent through an outbox ([`purchasing::channel`]), ASNs and
//!   the sites' receipts; what is on order counts in the replenishment.
//! - [`returns`]: return authorizations (RMAs) requested by channels or service, approved by policy or by
//!   service, published to the site that shipped the units, received there and refunded through [`money`].
//! - [`tracking`]: carriers' signed tracking webhooks, matched to shipments by tracking number, merged into
//!   the order's view, exceptions flagged for service, a carrier's delivery completing the fulfillment at its
//!   site.
//! - [`events`]: the durable event log (appended in the transaction of each change it reports), the pull
//!   feed `GET /v1/events` and signed webhooks delivered from it at least once.
//! - [`demand`], [`forecast_api`], [`forecast_config`]: demand history from the order documents, forecasts and
//!   replenishment suggestions.
//! - [`api`]: HTTP for operators, channels and customers (nodes, orders, stock, forecasts, the audit trail,
//!   metrics, tracking links), behind API keys with roles (`DATA_DIR/keys.json`, [`oms_service::auth`]): the
//!   route policy is [`api::policy`]; creates and cancels are written to the audit trail in `intake.redb`
//!   in the same transaction as the change.
//!
//! The hub is never on a node's critical path: nodes accept and ship orders on their own and sync when they
//! can. Each field of a document has one owner; the hub never writes a node's stock. The hub depends on the
//! contract (`oms-protocol`) and the shared lower crates, never on `oms-node`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs, unreachable_pub)]

pub mod api;
pub mod config;
pub mod demand;
pub mod docs;
pub mod events;
pub mod forecast_api;
pub mod forecast_config;
pub mod gate;
pub mod intake;
pub mod money;
pub mod notes;
pub mod orders;
pub mod purchasing;
pub mod reports;
pub mod returns;
pub mod routing;
pub mod selfservice;
pub mod server;
pub mod tracking;
mod ui;

use std::sync::Arc;

use anyhow::Context;
use oms_sync::DocDb;
use oms_transport::Limits;
use oms_transport::tls::ServerTlsFiles;

pub use config::HubConfig;

/// Opens `hub.redb`, listens on QUIC and HTTP, and serves until `shutdown` resolves.
pub async fn run(
    cfg: HubConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;
    // A fresh Automerge actor per process start, so two incarnations never reuse sequence numbers.
    let actor: [u8; 16] = rand::random();
    let mut db = DocDb::open(&cfg.db_path(), actor.to_vec(), cfg.docs_max)
        .with_context(|| format!("cannot open {}; the hub does not start", cfg.db_path().display()))?;
    cfg.validate()?;
    db.set_history_ops_min(cfg.state_history_ops_min);
    let mut docs = docs::HubDocs::new(db)?;
    tracing::info!(documents = docs.db().len(), rows_read = docs.db().rows_read(), "hub documents opened");
    docs.set_cache_max(cfg.docs_cached_max);
    docs.set_quota(cfg.node_quota());
    let tuning = server::ServerTuning {
        nodes_max: cfg.nodes_max,
        docs_loaded_max: cfg.docs_loaded_max,
        changes_inflated_bytes_max: cfg.changes_inflated_bytes_max,
        answer_linger_ms: cfg.answer_linger_ms,
        ..server::ServerTuning::default()
    };
    let intake = intake::Intake::open_cached(
        &cfg.data_dir.join(intake::INTAKE_DB_FILE),
        cfg.routing.clone(),
        cfg.intake.cache_bytes,
    )
    .with_context(|| {
        format!("cannot open {}; the hub does not start", cfg.data_dir.join(intake::INTAKE_DB_FILE).display())
    })?;
    let money = money::Money::new(cfg.payments.clone(), cfg.tax.clone())
        .map_err(|e| anyhow::anyhow!("cannot set up payments: {e}"))?;
    events::init(intake.db()).context("cannot create the event log's tables")?;
    notes::init(intake.db()).context("cannot create the notes' table")?;
    tracking::init(intake.db()).context("cannot create the carrier tracking tables")?;
    let purchasing = purchasing::Purchasing::new(cfg.purchasing.clone(), &cfg.data_dir, intake.db())
        .map_err(|e| anyhow::anyhow!("cannot set up purchasing: {e}"))?;
    let mut hub = server::Hub::new(docs, intake, money, purchasing, &cfg.tenant, actor.to_vec(), tuning)?;
    hub.returns = returns::Returns::new(cfg.returns.clone());
    hub.stock_low_at = cfg.events.stock_low_at;
    hub.tracking = tracking::Tracking::new(cfg.carriers.clone());
    let hub = Arc::new(hub);
    // On a blocking thread: recovery may commit the documents it re-creates (`orders::recover`).
    let h = hub.clone();
    tokio::task::spawn_blocking(move || orders::recover(&h))
        .await
        .map_err(|e| anyhow::anyhow!("the recovery of the intake's documents stopped: {e}"))?
        .map_err(|e| anyhow::anyhow!("cannot recover the intake's documents: {e}"))?;
    // The writer asks for the sites' views once per batch; a weak handle, so the hub is not kept alive by
    // its own writer thread.
    let sites = orders::site_source(Arc::downgrade(&hub));
    let effects = orders::effects_sink(Arc::downgrade(&hub));
    hub.intake
        .start(cfg.intake, sites, Some(effects))
        .map_err(|e| anyhow::anyhow!("cannot start the intake's writer: {e}"))?;
    // The demand ledger and the sites' stock read once in the background (a chunk of documents per hold of
    // their lock), so that the first forecast does not wait for it; the hub is healthy meanwhile.
    let warm = {
        let h = hub.clone();
        tokio::task::spawn_blocking(move || h.demand.warm(&h.docs))
    };
    let watcher = tokio::spawn(orders::watch(hub.clone()));
    let payments = tokio::spawn(money::outbox::run(hub.clone()));
    let po_sends = tokio::spawn(purchasing::channel::run(hub.clone()));
    let deliveries = tokio::spawn(events::webhooks::run(
        hub.clone(),
        cfg.webhooks,
        cfg.events,
        Arc::new(events::webhooks::DeliveryStats::default()),
    ));
    let node_events = tokio::spawn(events::watch::nodes(hub.clone(), cfg.events.node_debounce_ms));
    let files = ServerTlsFiles {
        ca: cfg.certs_dir.join("ca.pem"),
        cert: cfg.certs_dir.join("hub.pem"),
        key: cfg.certs_dir.join("hub.key"),
        crl: oms_transport::pki::crl_path(&cfg.certs_dir),
        crl_check_interval_ms: cfg.crl_check_interval_ms,
        cert_check_interval_ms: cfg.cert_check_interval_ms,
    };
    let tls = oms_transport::tls::server_tls(&files)
        .with_context(|| format!("cannot load the hub's TLS files from {}", cfg.certs_dir.display()))?;
    hub.set_tls(server::HubTls { own: tls.own.clone(), clients: tls.clients.clone() });
    // One stream per node is all sync needs; a second is allowed by quinn but never accepted.
    let limits = Limits { bidi_streams_max: 2, ..Limits::default() };
    let endpoint = oms_transport::server_endpoint_with(cfg.listen_quic, tls.config, &limits)
        .with_context(|| format!("cannot listen for nodes on {}", cfg.listen_quic))?;
    let revocations =
        tokio::spawn(server::watch_peer_certificates(hub.clone(), tls.clients.clone(), cfg.crl_check_interval_ms));
    let own_cert =
        tokio::spawn(oms_transport::tls::watch_own_certificate(tls.own, "hub", cfg.cert_check_interval_ms, |_| {}));
    let listener = tokio::net::TcpListener::bind(cfg.listen_http)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen_http))?;
    tracing::info!(quic = %endpoint.local_addr()?, http = %listener.local_addr()?, tenant = %cfg.tenant,
        data = %cfg.data_dir.display(), "hub listening");
    let accept = tokio::spawn(server::accept_loop(hub.clone(), endpoint.clone()));
    let auth = Arc::new(
        oms_service::auth::Auth::load(&cfg.data_dir, cfg.auth.clone(), api::policy)
            .with_context(|| format!("cannot read the API keys in {}", cfg.data_dir.display()))?,
    );
    let keys = tokio::spawn(auth.clone().watch());
    // `oms backup --data DIR` reaches the running hub here (see `oms_service::storage::admin`).
    // Without it (a path too long for a Unix socket, say) the process still serves; only online backups
    // are unavailable, and the log says so.
    let _admin = oms_service::storage::admin::serve(&cfg.data_dir)
        .inspect_err(|e| {
            tracing::warn!(error = %e, data = %cfg.data_dir.display(), "no admin socket: oms backup cannot reach this process")
        })
        .ok();
    let app = api::router_with(hub.clone(), auth, cfg.http.tls_files().is_some())
        .layer(forecast_api::settings(cfg.forecast.clone()))
        .layer(events::api::settings(cfg.webhooks))
        .layer(axum::Extension(oms_service::storage::reserve::DiskReserve {
            dir: cfg.data_dir.clone(),
            reserve_bytes: cfg.storage.reserve_bytes,
        }));
    // TLS on the API if `[http]` names a certificate, re-read when its files change.
    let tls =
        oms_transport::tls::watched_http_server_tls(cfg.http.tls_files(), cfg.http.tls_check_interval_ms, "hub-http")
            .context("cannot load the HTTP API's certificate (http.tls_cert, http.tls_key)")?;
    // Host allow-list, origin check, timeouts and connection limits of `[http]` (see `oms_service::serve`).
    oms_service::serve::serve(listener, app, &cfg.http, tls, shutdown).await?;
    endpoint.close(0u32.into(), b"hub shutting down");
    accept.abort();
    watcher.abort();
    payments.abort();
    po_sends.abort();
    deliveries.abort();
    node_events.abort();
    revocations.abort();
    own_cert.abort();
    keys.abort();
    warm.abort();
    hub.docs.lock().flush()?;
    Ok(())
}
