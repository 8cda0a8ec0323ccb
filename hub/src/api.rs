//! The hub's HTTP API (JSON): what an operator or a channel integration asks the hub.
//!
//! - `GET /v1/nodes`: each node's connection state, last sync, lag, refusal counters (`docs_refused`,
//!   `changes_quarantined`, `quota_refusals`, `changes_too_large`, `changes_dropped`, `manifests_deferred`),
//!   what it stores against its quota (`documents`, `stored_bytes`) and the certificate it presented; the hub's own certificate (`hub_certificate`: serial, `not_after_unix_s`, `expires_in_s`,
//!   `expiring_soon` when less than `oms_transport::pki::EXPIRY_WARNING_DAYS` are left).
//! - `GET /v1/orders?flag=carrier_exception&after=&limit=`: the customer orders a carrier exception flagged
//!   for customer service (`crate::tracking`), by order id.
//! - `GET /v1/orders?site=&after=&limit=`: order ids and states as the hub sees them, with per-site counts.
//!   Follow `next_after` until it is null: a page reads at most [`ORDER_ROWS_READ_MAX`] orders, so with a site
//!   filter it may hold fewer than `limit`, even none, and still not be the last.
//! - `GET /v1/orders/{id}`: one order: status, timeline, lines, shipment, as last synced from its node.
//! - `GET /v1/stock?sku=`: balances per SKU and site from the nodes' stock documents, with each site's
//!   freshness (when the node last wrote its stock document).
//! - `GET /v1/forecast/{sku}` and `GET /v1/replenishment`: demand forecasts and reorder suggestions, see
//!   [`crate::forecast_api`].
//! - `POST /v1/orders`, `GET /v1/orders/{id}/routing`, `POST /v1/orders/{id}/cancel`, `GET /v1/track/{token}`:
//!   see [`crate::orders`].
//! - Refunds, invoices, credit notes and payments: see [`crate::money::http`].
//! - Returns (RMAs): see [`crate::returns::http`].
//! - `GET /v1/audit/events?after=&limit=`: the audit trail of creates and cancels, paged by `seq` (at most
//!   [`oms_service::audit::AUDIT_PAGE_MAX`] rows; follow `next_after` until it is null).
//! - `GET /v1/events?after=&limit=&types=&wait_ms=` and `/v1/webhooks`: the event feed and webhook
//!   subscriptions, see [`crate::events`].
//! - `GET /metrics`: OpenMetrics text: the refusals of the auth layer, nodes connected, documents held, the
//!   documents' lock's acquisitions and the seconds it was held and waited for ([`oms_service::TimedMutex`]),
//!   carrier tracking events by outcome (`oms_hub_carrier_events_total{result}`) and those in EasyPost's
//!   format (`oms_hub_carrier_events_easypost_total`),
//!   orders taken and waiting, live API keys, the intake writer's commits and the orders they held.
//!
//! Every route but `/healthz` and `/v1/track/{token}` needs an API key (`Authorization: Bearer`, see
//! [`oms_service::auth`]); [`policy`] says which roles each route admits (`admin` always):
//!
//! | route | roles |
//! |---|---|
//! | `GET /healthz`, `GET /v1/track/{token}`, `GET /t/{token}`, `POST /t/{token}/cancel\|returns` | open (rate limited per client IP; the tracking page's forms need its `SameSite=Strict` form cookie, see [`crate::selfservice`]) |
//! | `POST /v1/carriers/{carrier}/events` | open: the carrier's HMAC signature (`crate::tracking`), rate limited per client IP |
//! | `GET /v1/nodes`, `/v1/stock`, `/v1/stock/{sku}`, `/v1/forecast/{sku}`, `/v1/replenishment` | planner |
//! | `GET /v1/orders` | planner, service, channel (a channel key lists its channel's hub orders; `flag=carrier_exception` its flagged ones) |
//! | `POST /v1/orders` | channel (its own channel only) |
//! | `GET /v1/orders/{id}`, `GET /v1/orders/{id}/routing` | planner, service, channel (own channel only) |
//! | `POST /v1/orders/{id}/cancel` | channel (own channel only), service (with a reason) |
//! | `POST /v1/orders/{id}/refunds` | service (with a reason) |
//! | `POST /v1/orders/{id}/payments`, `/ui/orders/{id}/payments` | service |
//! | `POST /v1/orders/{id}/returns` | channel (own channel only), service |
//! | `GET /v1/returns[/{rma}]` | planner, service, channel (own channel only) |
//! | `POST /v1/returns/{rma}/approve\|decline\|cancel\|refund` | service |
//! | `GET /v1/returns/summary` | planner, service |
//! | `GET /v1/invoices[/{number}]`, `GET /v1/credit-notes[/{number}]` | planner, service, channel (own channel only) |
//! | `GET /v1/reports`, `/ui/reports[.csv]` | planner, service |
//! | `POST /v1/orders/{id}/notes`, `/ui/orders/{id}/notes`, `/ui/orders/{id}/returns`, `/ui/orders/{id}/cancel-lines` | service |
//! | `GET /v1/payments?status=action_required` | service |
//! | `GET /v1/payments/summary` | planner, service |
//! | `GET /v1/audit/events` | admin only |
//! | `GET /v1/events`, `GET`/`POST /v1/webhooks`, `DELETE /v1/webhooks/{id}` | channel (its own orders' events and subscriptions) |
//! | `GET /metrics` | monitor |
//! | `GET /v1/suppliers[/{id}]`, `PUT /v1/suppliers/{id}`, `POST /v1/suppliers/import` | planner |
//! | `POST /v1/purchase-orders`, `POST …/{id}/send\|cancel`, `POST …/{id}/lines/{n}/close`, `GET /v1/purchasing/summary` | planner |
//! | `GET /v1/purchase-orders`, `GET /v1/purchase-orders/{id}`, `POST …/{id}/confirm`, `POST …/{id}/asns`, `POST /v1/asns/import` | planner, supplier (its own orders only) |
//! | anything else | any key (so an unknown path is `404`, or `405`, only to a caller with a key) |
//!
//! Every handler reads documents under the hub's lock and answers from memory; lists are paged.

use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use oms_protocol::domain::{NodeId, OrderId, Sku};
use oms_protocol::schema;
use oms_service::auth::{ANY_ROLE, Access, Auth, Principal, Role, authorize};
use oms_service::now_ms;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::server::Hub;
use oms_service::Problem;
use oms_service::problem::QueryParams;

/// Largest page of orders.
pub const ORDERS_PAGE_MAX: usize = 1_000;
/// Most order rows one `GET /v1/orders` reads (under the documents' lock, which every sync session needs):
/// tens of milliseconds, where a scan of a million rows took about a second. A site filter that matches few
/// of many orders returns short pages.
pub const ORDER_ROWS_READ_MAX: usize = 20_000;
/// State documents of each kind (stock, escrow, inbound) whose history `/metrics` measures, under the
/// documents' lock: the first this many by id.
const STATE_DOCS_MEASURED_MAX: usize = 256;
// The stock-read bounds live in `docs`, where `demand` reads stock documents too.
pub use crate::docs::{STOCK_SITES_MAX, STOCK_SKUS_MAX};

const PLANNER: &[Role] = &[Role::Planner];
const ORDER_READERS: &[Role] = &[Role::Planner, Role::Service, Role::Channel];
const CHANNEL: &[Role] = &[Role::Channel];
const CANCELLERS: &[Role] = &[Role::Channel, Role::Service];
const SERVICE: &[Role] = &[Role::Service];
const MONEY_READERS: &[Role] = &[Role::Service, Role::Planner];
const MONITOR: &[Role] = &[Role::Monitor];
const ADMIN_ONLY: &[Role] = &[];
/// Purchase orders: planners see and act on all; a supplier key only on its own ([`crate::purchasing::http`]
/// answers another supplier's order as an unknown one).
const PO_PARTIES: &[Role] = &[Role::Planner, Role::Supplier];

/// What each hub route needs (the table in the module docs), by method and matched route.
pub fn policy(method: &Method, route: Option<&str>) -> Access {
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    match route {
        Some(
            "/healthz" | "/openapi.json" | "/v1/track/{token}" | "/t" | "/t/{token}" | "/" | "/ui/sign-in"
            | "/ui/assets/{file}",
        ) if get => Access::Open,
        Some("/ui/sign-in" | "/t" | "/t/{token}/cancel" | "/t/{token}/returns") if post => Access::Open,
        // A carrier has no API key: the per-carrier signature authenticates it (`crate::tracking`).
        Some("/v1/carriers/{carrier}/events") if post => Access::Open,
        Some("/ui/sign-out") if post => Access::Roles(ANY_ROLE),
        Some("/ui/stock" | "/ui/stock.csv" | "/ui/forecast/{sku}") if get => Access::Roles(PLANNER),
        Some("/v1/reports" | "/ui/reports" | "/ui/reports.csv") if get => Access::Roles(MONEY_READERS),
        Some("/ui" | "/ui/orders" | "/ui/orders/{id}" | "/ui/orders/{id}/routing") if get => {
            Access::Roles(&[Role::Planner, Role::Service])
        }
        Some(
            "/ui/orders/{id}/cancel"
            | "/ui/orders/{id}/cancel-lines"
            | "/ui/orders/{id}/notes"
            | "/ui/orders/{id}/payments"
            | "/ui/orders/{id}/returns"
            | "/ui/orders/{id}/fulfillments/{fulfillment}/cancel"
            | "/ui/orders/{id}/route",
        ) if post => Access::Roles(&[Role::Service]),
        Some("/v1/nodes" | "/v1/stock" | "/v1/stock/{sku}" | "/v1/forecast/{sku}" | "/v1/replenishment") if get => {
            Access::Roles(PLANNER)
        }
        Some("/v1/orders/search") if get => Access::Roles(SERVICE),
        Some("/v1/orders" | "/v1/orders/{id}" | "/v1/orders/{id}/routing") if get => Access::Roles(ORDER_READERS),
        Some("/v1/orders") if post => Access::Roles(CHANNEL),
        Some("/v1/orders/{id}/cancel") if post => Access::Roles(CANCELLERS),
        Some(
            "/v1/orders/{id}/refunds"
            | "/v1/orders/{id}/notes"
            | "/v1/orders/{id}/payments"
            | "/v1/orders/{id}/fulfillments/{fulfillment}/cancel"
            | "/v1/orders/{id}/route",
        ) if post => Access::Roles(SERVICE),
        Some("/v1/orders/{id}/returns") if post => Access::Roles(CANCELLERS),
        Some("/v1/returns" | "/v1/returns/{rma}") if get => Access::Roles(ORDER_READERS),
        Some("/v1/returns/summary") if get => Access::Roles(MONEY_READERS),
        Some(
            "/v1/returns/{rma}/approve"
            | "/v1/returns/{rma}/decline"
            | "/v1/returns/{rma}/cancel"
            | "/v1/returns/{rma}/refund",
        ) if post => Access::Roles(SERVICE),
        Some("/v1/invoices" | "/v1/invoices/{number}" | "/v1/credit-notes" | "/v1/credit-notes/{number}") if get => {
            Access::Roles(ORDER_READERS)
        }
        Some("/v1/payments") if get => Access::Roles(SERVICE),
        Some("/v1/payments/summary") if get => Access::Roles(MONEY_READERS),
        Some("/v1/audit/events") if get => Access::Roles(ADMIN_ONLY),
        Some("/v1/events") if get => Access::Roles(CHANNEL),
        Some("/v1/webhooks") if get || post => Access::Roles(CHANNEL),
        Some("/v1/webhooks/{id}") if method == Method::DELETE => Access::Roles(CHANNEL),
        Some("/metrics") if get => Access::Roles(MONITOR),
        Some("/v1/purchase-orders" | "/v1/purchase-orders/{id}") if get => Access::Roles(PO_PARTIES),
        Some("/v1/suppliers" | "/v1/suppliers/{id}" | "/v1/purchasing/summary") if get => Access::Roles(PLANNER),
        Some("/v1/suppliers/{id}") if method == Method::PUT => Access::Roles(PLANNER),
        Some("/v1/asns/import" | "/v1/purchase-orders/{id}/confirm" | "/v1/purchase-orders/{id}/asns") if post => {
            Access::Roles(PO_PARTIES)
        }
        Some(
            "/v1/suppliers/import"
            | "/v1/purchase-orders"
            | "/v1/purchase-orders/{id}/send"
            | "/v1/purchase-orders/{id}/cancel"
            | "/v1/purchase-orders/{id}/lines/{n}/close",
        ) if post => Access::Roles(PLANNER),
        _ => Access::Roles(ANY_ROLE),
    }
}

/// The router, behind `auth` ([`policy`]; the middleware is added last, so it runs first and sees the matched
/// route). Every POST (orders, cancel) names `application/json` as its content type, the body-less cancel
/// too (`oms_service::guard::require_media_type`).
pub fn router(hub: Arc<Hub>, auth: Arc<Auth>) -> Router {
    router_with(hub, auth, false)
}

/// [`router`] with the screens' session cookie `Secure` when `secure_cookie` (the API speaks TLS).
pub fn router_with(hub: Arc<Hub>, auth: Arc<Auth>, secure_cookie: bool) -> Router {
    let chrome = Arc::new(crate::ui::chrome(secure_cookie));
    let screens =
        crate::ui::routes(hub.clone(), chrome.clone()).merge(oms_service::web::routes(auth.clone(), chrome.clone()));
    // Every route is registered by `routes!` from its handler's `#[utoipa::path]`, so the OpenAPI document
    // (GET /openapi.json) lists exactly what is served; the screens (HTML) are left out of it.
    let (purchasing, purchasing_csv) = crate::purchasing::http::routers(hub.clone());
    let (purchasing_csv, csv_doc) = purchasing_csv.split_for_parts();
    let (routes, mut doc) = OpenApiRouter::with_openapi(<Tags as utoipa::OpenApi>::openapi())
        .merge(oms_service::openapi::route())
        .routes(routes!(healthz))
        .routes(routes!(nodes))
        .routes(routes!(orders, crate::orders::create))
        .routes(routes!(order))
        .routes(routes!(stock))
        .routes(routes!(stock_one))
        .routes(routes!(audit_events))
        .with_state(hub.clone())
        .merge(OpenApiRouter::new().routes(routes!(metrics)).with_state((hub.clone(), auth.clone())))
        .merge(crate::orders::router(hub.clone()))
        .merge(crate::money::http::router(hub.clone()))
        .merge(crate::returns::http::router(hub.clone()))
        .merge(crate::events::api::router(hub.clone()))
        .merge(crate::reports::screen::router(hub.clone()))
        .merge(crate::notes::router(hub.clone()))
        .merge(crate::tracking::router(hub.clone()))
        .merge(crate::forecast_api::router(hub))
        .merge(purchasing)
        .layer(axum::extract::DefaultBodyLimit::max(oms_service::request::JSON_BODY_BYTES_MAX))
        .split_for_parts();
    doc.merge(csv_doc);
    let doc = oms_service::openapi::finish(
        doc,
        "oms hub",
        "The hub: channel intake and routing across sites, the network's stock, money (payments, invoices, \
         credit notes, refunds), forecasting, the event feed and webhooks. See README.md.",
        policy,
    );
    let routes = oms_service::openapi::serve(routes, &doc);
    oms_service::guard::require_media_type(routes, oms_service::guard::MediaType::Json)
        .merge(oms_service::guard::require_media_type(purchasing_csv, oms_service::guard::MediaType::Csv))
        .merge(screens)
        // After the caller is known (a refused key is a 401 whatever the disk), before any handler writes.
        .layer(axum::middleware::from_fn(oms_service::storage::reserve::refuse_writes_below_reserve))
        .layer(axum::middleware::from_fn_with_state(auth, authorize))
        // Outermost: a problem answered to a screen, whoever refused it, is shown as a page.
        .layer(axum::middleware::from_fn(oms_service::web::html_problems))
        .layer(axum::Extension(chrome))
}

/// The tags of the hub's document.
#[derive(utoipa::OpenApi)]
#[openapi(tags(
    (name = "meta", description = "Health, metrics and this document"),
    (name = "purchasing", description = "Suppliers, purchase orders, advance shipping notices"),
    (name = "network", description = "The sites and their sync state"),
    (name = "orders", description = "Customer orders: intake, routing, cancellation, tracking"),
    (name = "stock", description = "The network's stock as the sites last reported it"),
    (name = "money", description = "Payments, invoices, credit notes and refunds"),
    (name = "returns", description = "Return authorizations (RMAs): request, approval, receipt at the site, refund"),
    (name = "forecast", description = "Demand forecasts and replenishment"),
    (name = "reports", description = "Orders, fill, on-time shipping, time to ship, cancellations and returns per period"),
    (name = "events", description = "The event feed and webhook subscriptions"),
    (name = "audit", description = "The audit trail"),
))]
struct Tags;

/// Whether the hub is up.
#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "Up", content_type = "text/plain", body = String, example = "ok")))]
async fn healthz() -> &'static str {
    "ok"
}

/// Parses `after` / `limit` of a paged query into a problem document when they are not numbers.
fn query_u64(q: &std::collections::HashMap<String, String>, name: &str) -> Result<Option<u64>, Problem> {
    q.get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                Problem::new(StatusCode::BAD_REQUEST, "invalid_query", format!("{name} must be a whole number"))
            })
        })
        .transpose()
}

/// `GET /v1/audit/events?after=&limit=`.
#[utoipa::path(get, path = "/v1/audit/events", tag = "audit", params(("after" = Option<u64>, Query, description = "Rows after this sequence (default 0)"), ("limit" = Option<u64>, Query, description = "Page size (capped)")),
    responses((status = 200, description = "A page of the audit trail", body = oms_service::audit::AuditPage)))]
async fn audit_events(
    State(hub): State<Arc<Hub>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<oms_service::audit::AuditPage>, Problem> {
    if let Some(bad) = q.keys().find(|k| !matches!(k.as_str(), "after" | "limit")) {
        return Err(Problem::new(StatusCode::BAD_REQUEST, "invalid_query", format!("unknown parameter {bad:?}")));
    }
    let after = query_u64(&q, "after")?.unwrap_or(0);
    let limit = query_u64(&q, "limit")?.unwrap_or(100);
    let limit = usize::try_from(limit).unwrap_or(usize::MAX).clamp(1, oms_service::audit::AUDIT_PAGE_MAX);
    let h = hub.clone();
    let (events, next_after) = tokio::task::spawn_blocking(move || h.intake.audit_page(after, limit))
        .await
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("audit read failed: {e}")))?
        .map_err(Problem::from)?;
    Ok(Json(oms_service::audit::AuditPage { events, next_after }))
}

/// `GET /metrics`: OpenMetrics text.
#[utoipa::path(get, path = "/metrics", tag = "meta", responses((status = 200, description = "OpenMetrics text",
    content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String)))]
async fn metrics(State((hub, auth)): State<(Arc<Hub>, Arc<Auth>)>) -> Response {
    let mut out = auth.stats.openmetrics("oms_hub");
    let now = now_ms();
    let (connected, held, per_node, anti_entropy, sessions) = {
        let docs = hub.docs.lock();
        // One series per node that ever connected (bounded by `nodes_max` and the hub's parties).
        let per_node: Vec<(String, bool, Option<u64>, u64)> = docs
            .nodes
            .iter()
            .map(|(name, st)| {
                let age_s = st.last_frame_at_ms.or(st.connected_at_ms).map(|t| now.saturating_sub(t) / 1_000);
                (name.clone(), st.connected, age_s, st.changes_quarantined)
            })
            .collect();
        // What the hub's side of every node's sessions sent for anti-entropy, and the sessions.
        let mut anti_entropy = oms_protocol::sync::AntiEntropyStats::default();
        for st in docs.nodes.values() {
            anti_entropy.add_since(&oms_protocol::sync::AntiEntropyStats::default(), &st.anti_entropy);
        }
        let sessions = docs.nodes.values().map(|st| st.sessions).sum::<u64>();
        (docs.nodes.values().filter(|n| n.connected).count(), docs.db().len(), per_node, anti_entropy, sessions)
    };
    let history = hub.docs.lock().db().state_history(STATE_DOCS_MEASURED_MAX);
    let h = hub.clone();
    let taken = tokio::task::spawn_blocking(move || h.intake.orders_taken()).await.ok().and_then(Result::ok);
    let gauge = |out: &mut String, name: &str, help: &str, v: String| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"));
    };
    // A counter's family is named without its `_total` sample suffix (OpenMetrics).
    let counter = |out: &mut String, name: &str, help: &str, v: String| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n{name}_total {v}\n"));
    };
    gauge(&mut out, "oms_hub_nodes_connected", "Nodes with a live sync session.", connected.to_string());
    gauge(&mut out, "oms_hub_documents_held", "Documents the hub holds.", held.to_string());
    let lock = hub.docs.times();
    let secs = |ns: u64| format!("{:.6}", ns as f64 / 1e9);
    counter(
        &mut out,
        "oms_hub_documents_lock_acquisitions",
        "Times the documents' lock was taken (by every sync session, the intake's documents thread, the watcher \
         and the reads of documents).",
        lock.acquisitions.to_string(),
    );
    counter(
        &mut out,
        "oms_hub_documents_lock_held_seconds",
        "Time the documents' lock was held. Its rate is the share of the time it is busy: near 1, everything that \
         needs the documents waits in line.",
        secs(lock.held_ns),
    );
    counter(
        &mut out,
        "oms_hub_documents_lock_waited_seconds",
        "Time callers waited for the documents' lock, all together.",
        secs(lock.waited_ns),
    );
    gauge(
        &mut out,
        "oms_hub_orders_waiting",
        "Customer orders with units not placed yet.",
        hub.intake.open_count().to_string(),
    );
    gauge(&mut out, "oms_hub_api_keys_live", "API keys in force.", auth.live_keys().to_string());
    // Per node: whether it is linked, how long since its last frame (past the escrow lease, 60 s by default,
    // and its margin the site reclaims the rights the hub holds there), and the changes quarantined.
    let mut connected_lines = String::new();
    let mut age_lines = String::new();
    let mut quarantined_lines = String::new();
    for (name, up, age_s, quarantined) in &per_node {
        connected_lines.push_str(&format!("oms_hub_node_connected{{node=\"{name}\"}} {}\n", u8::from(*up)));
        if let Some(age) = age_s {
            age_lines.push_str(&format!("oms_hub_node_last_frame_age_seconds{{node=\"{name}\"}} {age}\n"));
        }
        quarantined_lines.push_str(&format!("oms_hub_changes_quarantined_total{{node=\"{name}\"}} {quarantined}\n"));
    }
    out.push_str(&format!(
        "# HELP oms_hub_node_connected 1 while the node has a live sync session.\n# TYPE oms_hub_node_connected gauge\n\
         {connected_lines}# HELP oms_hub_node_last_frame_age_seconds Seconds since the node's last sync frame.\n\
         # TYPE oms_hub_node_last_frame_age_seconds gauge\n{age_lines}\
         # HELP oms_hub_changes_quarantined Changes from the node to keys it does not own, rolled back.\n\
         # TYPE oms_hub_changes_quarantined counter\n{quarantined_lines}"
    ));
    let b = hub.intake.batch_counts();
    for (name, help, v) in [
        ("oms_hub_intake_commits", "Write transactions of the intake's writer (channel orders).", b.commits),
        (
            "oms_hub_intake_orders",
            "Channel orders those transactions held (orders per commit: this over commits).",
            b.orders,
        ),
        (
            "oms_hub_intake_document_rounds",
            "Rounds of the intake's documents thread (the documents of one or more committed batches written under \
             one hold of the documents' lock).",
            b.document_rounds,
        ),
        ("oms_hub_intake_document_orders", "Created orders whose documents those rounds wrote.", b.document_orders),
        (
            "oms_hub_intake_document_fallbacks",
            "Created orders whose documents a round could not write (their requests wrote them).",
            b.document_fallbacks,
        ),
    ] {
        counter(&mut out, name, help, v.to_string());
    }
    gauge(
        &mut out,
        "oms_hub_intake_batch_orders_max",
        "Most channel orders one transaction held.",
        b.largest.to_string(),
    );
    for (name, help, v) in [
        ("oms_hub_sync_sessions", "Sync sessions nodes opened since the hub started.", sessions),
        (
            "oms_hub_anti_entropy_digests",
            "Periodic anti-entropy rounds the hub sent (a digest of its manifest, whole or per bucket).",
            anti_entropy.digests_sent,
        ),
        (
            "oms_hub_anti_entropy_full_manifests",
            "Manifests the hub sent listing every document a node shares (one per session is expected; beyond it, \
             a node without bucket rounds).",
            anti_entropy.full_manifests,
        ),
        (
            "oms_hub_anti_entropy_partial_manifests",
            "Manifests the hub sent listing only the buckets of documents whose digests differed.",
            anti_entropy.partial_manifests,
        ),
        ("oms_hub_anti_entropy_entries", "Documents listed in the manifests the hub sent.", anti_entropy.entries_sent),
        (
            "oms_hub_state_doc_generations",
            "New generations of the sites' state documents (stock, escrow, inbound) the hub started or took since \
             it started.",
            history.generations_started,
        ),
    ] {
        counter(&mut out, name, help, v.to_string());
    }
    gauge(
        &mut out,
        "oms_hub_state_doc_history_ops_max",
        "The longest history (Automerge operations) among the current generations of the state documents.",
        history.history_ops_max.to_string(),
    );
    gauge(
        &mut out,
        "oms_hub_state_docs_over_history_bound",
        "State documents whose history is over twice the bound at which a new generation starts (0).",
        history.over_bound.to_string(),
    );
    counter(
        &mut out,
        "oms_hub_demand_documents_read",
        "Order and stock documents the demand history and the network stock read (each once after a start, then \
         only those that changed).",
        hub.demand.docs_read().to_string(),
    );
    let t = &hub.tracking;
    out.push_str(&format!(
        "# HELP oms_hub_carrier_events Carrier tracking events by outcome: stored, replays answered without a \
         change, refused (carrier, signature, body).\n# TYPE oms_hub_carrier_events counter\n\
         oms_hub_carrier_events_total{{result=\"stored\"}} {}\noms_hub_carrier_events_total{{result=\"replayed\"}} {}\n\
         oms_hub_carrier_events_total{{result=\"refused\"}} {}\n",
        t.accepted.load(std::sync::atomic::Ordering::Relaxed),
        t.replayed.load(std::sync::atomic::Ordering::Relaxed),
        t.refused.load(std::sync::atomic::Ordering::Relaxed),
    ));
    counter(
        &mut out,
        "oms_hub_carrier_events_easypost",
        "Carrier tracking events stored or replayed from carriers that post in EasyPost's format.",
        t.easypost.load(std::sync::atomic::Ordering::Relaxed).to_string(),
    );
    if let Some(n) = taken {
        counter(&mut out, "oms_hub_orders_taken", "Customer orders the hub took.", n.to_string());
    }
    out.push_str("# EOF\n");
    let mut resp = out.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

fn problem(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Response {
    Problem::new(status, code, detail).into_response()
}

#[utoipa::path(get, path = "/v1/nodes", tag = "network", responses((status = 200,
    description = "Each known site's link, sync and storage figures and certificate", body = NodesView)))]
async fn nodes(State(hub): State<Arc<Hub>>) -> Response {
    // It may read a changed stock document: on a blocking thread, not on this async worker.
    match tokio::task::spawn_blocking(move || nodes_typed(&hub)).await {
        Ok(v) => Json(v).into_response(),
        Err(_) => problem(StatusCode::INTERNAL_SERVER_ERROR, "internal", "node listing failed"),
    }
}

/// What `GET /v1/nodes` answers, as the network screen reads it.
pub(crate) fn nodes_view(hub: &Hub) -> Value {
    json!(nodes_typed(hub))
}

/// What `GET /v1/nodes` answers.
pub(crate) fn nodes_typed(hub: &Hub) -> NodesView {
    // When each site last wrote its stock, from the stock the demand cache keeps (re-read per changed
    // document), not from a read of every stock document under the documents' lock.
    let stock_updated: BTreeMap<String, u64> =
        hub.demand.stock_sites(&hub.docs).iter().map(|s| (s.site.clone(), s.updated_at_ms)).collect();
    let docs = hub.docs.lock();
    let now = now_ms();
    let counts = docs.order_counts();
    let mut out = Vec::new();
    // Connected or known nodes and sites that hold orders, each once, in order: linear in both (a `Vec` and
    // `contains` made this quadratic in the number of parties).
    let names: std::collections::BTreeSet<&String> = docs.nodes.keys().chain(counts.keys()).collect();
    let default = crate::docs::NodeStatus::default();
    for name in names {
        let st = docs.nodes.get(name).unwrap_or(&default);
        let usage = docs.usage(name);
        out.push(NodeView {
            node: name.clone(),
            connected: st.connected,
            connected_at_ms: st.connected_at_ms,
            last_frame_at_ms: st.last_frame_at_ms,
            last_sync_at_ms: st.last_sync_at_ms,
            last_change_at_ms: st.last_change_at_ms,
            since_last_change_ms: st.last_change_at_ms.map(|t| now.saturating_sub(t)),
            last_change_lag_ms: st.last_change_lag_ms,
            pending: st.pending,
            session: SessionView {
                doc_states: st.session_sizes.doc_states,
                in_flight: st.session_sizes.in_flight,
                pending: st.session_sizes.pending,
                outbound: st.session_sizes.outbound,
            },
            compressed: st.compressed,
            changes_applied: st.changes_applied,
            changes_quarantined: st.changes_quarantined,
            docs_refused: st.docs_refused,
            quota_refusals: st.quota_refusals,
            changes_too_large: st.changes_too_large,
            changes_dropped: st.changes_dropped,
            manifests_deferred: st.manifests_deferred,
            documents: usage.documents,
            stored_bytes: usage.stored_bytes,
            sessions: st.sessions,
            orders: counts.get(name).copied().unwrap_or(0),
            stock_updated_at_ms: stock_updated.get(name).copied(),
            certificate: st.certificate.as_ref().map(|c| certificate_view(&c.serial, c.not_after_unix_s, now)),
        });
    }
    let documents = DocumentsHeld { held: docs.db().len(), loaded: docs.db().loaded() };
    let own = hub.tls().map(|tls| tls.own.info());
    let hub_certificate = own.map(|c| certificate_view(&c.serial_hex(), c.not_after_unix_s, now));
    NodesView { now_ms: now, nodes: out, documents, hub_certificate }
}

/// The answer of `GET /v1/nodes`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct NodesView {
    /// The hub's clock, ms.
    now_ms: u64,
    /// Each connected or known node and each site that holds orders, by name.
    nodes: Vec<NodeView>,
    /// The documents the hub holds.
    documents: DocumentsHeld,
    /// The hub's own certificate, when it serves QUIC with one.
    hub_certificate: Option<CertificateView>,
}

/// One site's link, sync and storage figures.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct NodeView {
    /// The node.
    node: String,
    /// Whether a session is up now.
    connected: bool,
    /// When the current or last session came up, ms.
    connected_at_ms: Option<u64>,
    /// When the last frame came, ms.
    last_frame_at_ms: Option<u64>,
    /// When both sides last had the same heads, ms.
    last_sync_at_ms: Option<u64>,
    /// When a change of the node was last applied, ms.
    last_change_at_ms: Option<u64>,
    /// How long ago that was, ms.
    since_last_change_ms: Option<u64>,
    /// From the node's write to the hub's apply of that change, ms.
    last_change_lag_ms: Option<u64>,
    /// Whether changes wait to be sent.
    pending: bool,
    /// The session's queue sizes.
    session: SessionView,
    /// Whether the session compresses.
    compressed: bool,
    /// Changes applied.
    changes_applied: u64,
    /// Changes put back (touched what the node does not own).
    changes_quarantined: u64,
    /// Documents refused.
    docs_refused: u64,
    /// Changes refused for the node's quota.
    quota_refusals: u64,
    /// Changes refused for their size.
    changes_too_large: u64,
    /// Changes dropped.
    changes_dropped: u64,
    /// Manifests deferred.
    manifests_deferred: u64,
    /// Documents the node caused to exist.
    documents: u64,
    /// Bytes stored for it.
    stored_bytes: u64,
    /// Sessions since the start.
    sessions: u64,
    /// Orders it holds.
    orders: u64,
    /// When it last wrote its stock, ms.
    stock_updated_at_ms: Option<u64>,
    /// Its certificate, if it connected with one.
    certificate: Option<CertificateView>,
}

/// A session's queue sizes.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SessionView {
    /// Documents with sync state.
    doc_states: usize,
    /// Messages sent and not acknowledged.
    in_flight: usize,
    /// Documents with changes to send.
    pending: usize,
    /// Frames queued out.
    outbound: usize,
}

/// The documents the hub holds.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct DocumentsHeld {
    /// Stored.
    held: usize,
    /// Of those, loaded in memory.
    loaded: usize,
}

/// A certificate's serial and remaining validity.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CertificateView {
    /// Serial, hex.
    serial: String,
    /// End of validity, Unix seconds.
    not_after_unix_s: i64,
    /// Seconds left (zero or negative once expired).
    expires_in_s: i64,
    /// Time to renew.
    expiring_soon: bool,
}

/// A certificate's serial and remaining validity at `now_ms`.
fn certificate_view(serial: &str, not_after_unix_s: i64, now_ms: u64) -> CertificateView {
    let now_s = i64::try_from(now_ms / 1_000).unwrap_or(i64::MAX);
    let e = oms_transport::pki::expiry(not_after_unix_s, now_s);
    CertificateView {
        serial: serial.to_owned(),
        not_after_unix_s,
        expires_in_s: e.expires_in_s,
        expiring_soon: e.expiring_soon,
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct OrdersQuery {
    /// Only the orders of this site (not for a channel key).
    site: Option<String>,
    /// Continue after this order id (the previous page's `next_after`).
    after: Option<String>,
    /// Page size (capped).
    limit: Option<usize>,
    /// Only the customer orders flagged so: `carrier_exception` (a carrier's failure or return to sender).
    flag: Option<String>,
}

#[utoipa::path(get, path = "/v1/orders", tag = "orders", params(OrdersQuery),
    responses((status = 200, description = "A page of orders: every site's with the counts per site; a channel key's own hub orders; or the flagged customer orders (`flag`)", body = OrdersAnswer)))]
async fn orders(
    State(hub): State<Arc<Hub>>,
    principal: Principal,
    // A query that does not parse (`limit=-1`) is a problem like every refusal, not axum's plain text (found
    // by schemathesis).
    QueryParams(q): QueryParams<OrdersQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(ORDERS_PAGE_MAX).min(ORDERS_PAGE_MAX);
    if let Some(flag) = q.flag.as_deref() {
        return flagged_orders(&hub, &principal, flag, q.site.is_some(), q.after, limit).await;
    }
    if let Some(channel) = principal.confined_to() {
        if q.site.is_some() {
            return problem(StatusCode::BAD_REQUEST, "invalid_query", "a channel key lists its orders without site");
        }
        return match crate::orders::channel_orders(&hub, channel, q.after.as_deref(), limit.max(1)) {
            Ok(v) => Json(OrdersAnswer::Channel(v)).into_response(),
            Err(p) => p.into_response(),
        };
    }
    let h = hub.clone();
    let listed =
        tokio::task::spawn_blocking(move || order_list(&h, q.site.as_deref(), q.after.as_deref(), limit)).await;
    let Ok((list, next_after, total, counts)) = listed else {
        return problem(StatusCode::INTERNAL_SERVER_ERROR, "internal", "order listing failed");
    };
    Json(OrdersAnswer::Sites(OrderPage { total, by_site: counts, orders: list, next_after })).into_response()
}

/// The answer of `GET /v1/orders`, by who asks and what.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(crate) enum OrdersAnswer {
    /// An admin's or service's page: every site's orders.
    Sites(OrderPage),
    /// A channel key's page: its channel's hub orders.
    Channel(crate::orders::ChannelOrders),
    /// `flag=carrier_exception`: the flagged customer orders.
    Flagged(FlaggedOrders),
}

/// A page of every site's orders.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct OrderPage {
    /// Orders in all (of the site asked for, or of every site).
    total: u64,
    /// Orders per site.
    by_site: BTreeMap<String, u64>,
    /// The page, by document id.
    orders: Vec<OrderRow>,
    /// Where the next page starts (`after`), or `null` on the last page.
    next_after: Option<String>,
}

/// One order of a page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct OrderRow {
    /// The order id.
    id: String,
    /// The node that took it (`hub` for the hub's fulfillment orders).
    origin: String,
    /// The site that fulfills it.
    site: String,
    /// Its state as its site last wrote it, if it did.
    status: Option<String>,
}

/// A page of flagged customer orders.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct FlaggedOrders {
    /// The flag asked for: `carrier_exception`.
    flag: String,
    /// The flags, by order.
    orders: Vec<crate::tracking::Flag>,
    /// Where the next page starts (`after`), or `null` on the last page.
    next_after: Option<String>,
}

/// `GET /v1/orders?flag=carrier_exception`: a page of the flagged customer orders (a channel key's own).
async fn flagged_orders(
    hub: &Arc<Hub>,
    principal: &Principal,
    flag: &str,
    with_site: bool,
    after: Option<String>,
    limit: usize,
) -> Response {
    if flag != "carrier_exception" || with_site {
        return problem(StatusCode::BAD_REQUEST, "invalid_query", "flag must be carrier_exception, without site");
    }
    let limit = limit.clamp(1, crate::tracking::FLAGS_PAGE_MAX);
    let channel = principal.confined_to().map(|c| c.as_str().to_owned());
    let h = hub.clone();
    let read = tokio::task::spawn_blocking(move || {
        crate::tracking::flagged(h.intake.db(), after.as_deref(), limit, channel.as_deref())
    })
    .await;
    match read {
        Ok(Ok((orders, next_after))) => {
            Json(OrdersAnswer::Flagged(FlaggedOrders { flag: flag.to_owned(), orders, next_after })).into_response()
        }
        Ok(Err(e)) => problem(StatusCode::INTERNAL_SERVER_ERROR, "storage", e.to_string()),
        Err(_) => problem(StatusCode::INTERNAL_SERVER_ERROR, "internal", "flag listing failed"),
    }
}

/// One page of `GET /v1/orders`: the rows, where the next page starts, the total and the counts per site.
/// The page's ids come from one short hold of the documents' lock (at most [`ORDER_ROWS_READ_MAX`] label
/// rows); its documents are read [`crate::demand::READ_CHUNK`] per hold, each whole under one hold.
fn order_list(
    hub: &Hub,
    site: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> (Vec<OrderRow>, Option<String>, u64, BTreeMap<String, u64>) {
    let (page, counts) = {
        let docs = hub.docs.lock();
        (docs.order_page(site, after, limit, ORDER_ROWS_READ_MAX), docs.order_counts())
    };
    let mut list = Vec::with_capacity(page.ids.len());
    for chunk in page.ids.chunks(crate::demand::READ_CHUNK) {
        let docs = hub.docs.lock();
        list.extend(chunk.iter().filter_map(|d| {
            let doc = docs.get(d)?;
            let (origin, site) = schema::order_parties(&doc)?;
            let id = d.as_str().strip_prefix(schema::ORDER_PREFIX)?;
            Some(OrderRow { id: id.to_owned(), origin, site, status: schema::order_status(&doc) })
        }));
    }
    let next_after =
        page.next_after.as_ref().and_then(|d| d.as_str().strip_prefix(schema::ORDER_PREFIX)).map(str::to_owned);
    let total: u64 = match site {
        Some(s) => counts.get(s).copied().unwrap_or(0),
        None => counts.values().sum(),
    };
    (list, next_after, total, counts)
}

#[utoipa::path(get, path = "/v1/orders/{id}", tag = "orders", params(("id" = String, Path, description = "The order id")),
    responses((status = 200, description = "A hub order with its fulfillments, merged from every site; or a site's own order as it synced", body = OrderAnswer, example = crate::orders::hub_order_example)))]
async fn order(State(hub): State<Arc<Hub>>, principal: Principal, Path(id): Path<String>) -> Response {
    let Ok(id) = OrderId::parse(&id) else {
        return problem(StatusCode::BAD_REQUEST, "invalid_order_id", "invalid order id");
    };
    match crate::orders::hub_order_view(&hub, id.as_str(), &principal) {
        Ok(Some(v)) => return Json(OrderAnswer::Hub(Box::new(v))).into_response(),
        // A channel key sees its channel's hub orders and nothing else, each refusal alike.
        Ok(None) if principal.confined_to().is_some() => {
            return crate::orders::not_found(id.as_str()).into_response();
        }
        Ok(None) => {}
        Err(p) => return p.into_response(),
    }
    let Some(name) = schema::order_doc(&id) else {
        return problem(StatusCode::BAD_REQUEST, "invalid_order_id", "invalid order id");
    };
    let docs = hub.docs.lock();
    let Some(doc) = docs.get(&name) else {
        return problem(StatusCode::NOT_FOUND, "order_not_found", format!("order {id} has not reached the hub"));
    };
    let view = match schema::read_order(&doc, name.as_str()) {
        Ok(v) => v,
        Err(e) => {
            return problem(
                StatusCode::NOT_FOUND,
                "order_not_found",
                format!("order {id} is incomplete at the hub: {e}"),
            );
        }
    };
    let progress = view.progress;
    Json(OrderAnswer::Site(Box::new(SiteOrderView {
        id: view.id,
        origin: view.origin,
        site: view.site,
        created_at_ms: view.created_at_ms,
        status: progress.as_ref().map(|p| p.status),
        order: view.draft,
        wave: progress.as_ref().and_then(|p| p.wave),
        parcels: progress.as_ref().and_then(|p| p.parcels),
        shipment: progress.as_ref().and_then(|p| p.shipment.clone()),
        lines: progress.as_ref().map(|p| p.lines.clone()),
        returns: progress.as_ref().map(|p| p.returns.clone()),
        timeline: progress.map(|p| p.timeline),
        node_updated_at_ms: view.node_updated_at_ms,
        cancel_requested_at_ms: view.cancel_requested_at_ms,
        frozen_at_ms: view.frozen_at_ms,
    })))
    .into_response()
}

/// The answer of `GET /v1/orders/{id}`: a hub order, or a site's own order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(crate) enum OrderAnswer {
    /// A customer order the hub took.
    Hub(Box<crate::orders::HubOrderView>),
    /// An order a site took, as it synced to the hub.
    Site(Box<SiteOrderView>),
}

/// A site's own order as the hub holds it; the progress fields are `null` until the site wrote some.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SiteOrderView {
    /// The order id.
    id: OrderId,
    /// The node that took it.
    origin: oms_protocol::domain::NodeId,
    /// The site that fulfills it.
    site: oms_protocol::domain::NodeId,
    /// When taken, ms.
    created_at_ms: u64,
    /// Its state.
    status: Option<oms_protocol::domain::FulfillmentState>,
    /// The order as taken.
    order: oms_protocol::domain::OrderDraft,
    /// Per line: picked and shipped.
    lines: Option<Vec<oms_protocol::records::FulfillmentLine>>,
    /// Its pick wave.
    wave: Option<u64>,
    /// Parcels packed.
    parcels: Option<u32>,
    /// The carrier hand-over.
    shipment: Option<oms_protocol::records::Shipment>,
    /// Returns received.
    returns: Option<Vec<oms_protocol::records::ReturnRecord>>,
    /// The site's steps.
    timeline: Option<Vec<oms_protocol::records::TimelineEntry>>,
    /// When the site last wrote it, ms.
    node_updated_at_ms: u64,
    /// When a cancellation was asked for, ms.
    cancel_requested_at_ms: Option<u64>,
    /// When the site froze it, ms.
    frozen_at_ms: Option<u64>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StockQuery {
    /// Only this SKU.
    sku: Option<String>,
    /// `json` (default) or `csv`.
    format: Option<String>,
    /// Continue after this row, `<sku>|<site>` (the previous page's `next_after`).
    after: Option<String>,
    /// Rows per page (default and most: 10,000).
    limit: Option<usize>,
}

/// One SKU at one site, as the planner sees it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct StockRow {
    pub(crate) sku: String,
    pub(crate) site: String,
    pub(crate) on_hand: u64,
    pub(crate) reserved: u64,
    pub(crate) staged: u64,
    pub(crate) available: u64,
    /// Units the hub may promise there right now (its rights, within lease and budget).
    pub(crate) hub_promisable: u64,
    /// Rights the hub holds there (its view).
    pub(crate) hub_rights: u64,
    /// Rights the site keeps for its own channel (the site's last published view).
    pub(crate) site_rights: Option<u64>,
    pub(crate) hub_lease_until_ms: u64,
    pub(crate) updated_at_ms: u64,
    pub(crate) age_ms: u64,
    pub(crate) stale: bool,
}

/// Most rows of one `GET /v1/stock` page.
pub const STOCK_PAGE_MAX: usize = 10_000;

/// Per site the freshness of its stock document, and the rows (every SKU, or `sku`), by SKU then site.
pub(crate) fn stock_rows(hub: &Hub, sku: Option<&str>, now: u64) -> (Vec<SiteStock>, Vec<StockRow>) {
    let (sites, rows, _) = stock_page(hub, sku, None, usize::MAX, now);
    (sites, rows)
}

/// One page of [`stock_rows`]: at most `limit` rows after `after` (sku, site), and where the next page
/// starts. Read from the sites' stock as the demand cache keeps it ([`crate::demand::DemandCache::stock_sites`]:
/// the documents' lock is held for one changed stock document at a time, never for the listing), each row
/// from one state of its site's document, with the hub's rights looked up for the page's rows only.
pub fn stock_page(
    hub: &Hub,
    sku: Option<&str>,
    after: Option<(&str, &str)>,
    limit: usize,
    now: u64,
) -> (Vec<SiteStock>, Vec<StockRow>, Option<String>) {
    let stale_after = hub.intake.policy().stale_after_ms;
    let stock = hub.demand.stock_sites(&hub.docs);
    let sites = stock
        .iter()
        .map(|s| {
            let age_ms = now.saturating_sub(s.updated_at_ms);
            SiteStock {
                site: s.site.clone(),
                updated_at_ms: s.updated_at_ms,
                age_ms,
                stale: age_ms > stale_after,
                skus: s.skus.len(),
            }
        })
        .collect();
    // (sku, site) of every wanted row after `after`, then the page of them in that order.
    let mut keys: Vec<(&str, &str, usize, usize)> = Vec::new();
    for (i, s) in stock.iter().enumerate() {
        for (j, (k, _)) in s.skus.iter().enumerate() {
            let key = (k.as_str(), s.site.as_str());
            if sku.is_some_and(|q| q != key.0) || after.is_some_and(|a| key <= a) {
                continue;
            }
            keys.push((key.0, key.1, i, j));
        }
    }
    keys.sort_unstable();
    let next_after =
        (keys.len() > limit).then(|| keys.get(limit.saturating_sub(1)).map(|k| format!("{}|{}", k.0, k.1)));
    keys.truncate(limit);
    let cells: Vec<(NodeId, Sku)> =
        keys.iter().filter_map(|(k, site, _, _)| Some((NodeId::parse(site).ok()?, Sku::parse(k).ok()?))).collect();
    let escrow = hub.intake.escrow_cells(&cells, now);
    let rows = keys
        .iter()
        .filter_map(|&(k, site, i, j)| {
            let s = stock.get(i)?;
            let (_, b) = s.skus.get(j)?;
            let age_ms = now.saturating_sub(s.updated_at_ms);
            let (hub_promisable, hub_rights, hub_lease_until_ms) =
                escrow.get(&(site.to_owned(), k.to_owned())).copied().unwrap_or_default();
            Some(StockRow {
                site_rights: s.site_rights.get(k).copied(),
                sku: k.to_owned(),
                site: site.to_owned(),
                on_hand: b.on_hand,
                reserved: b.reserved,
                staged: b.staged,
                available: b.available(),
                hub_promisable,
                hub_rights,
                hub_lease_until_ms,
                updated_at_ms: s.updated_at_ms,
                age_ms,
                stale: age_ms > stale_after,
            })
        })
        .collect();
    (sites, rows, next_after.flatten())
}

pub(crate) fn stock_csv(rows: &[StockRow]) -> Response {
    let mut out = String::from(
        "sku,site,on_hand,reserved,staged,available,hub_promisable,hub_rights,site_rights,updated_at_ms,age_ms,stale\n",
    );
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}\n",
            r.sku,
            r.site,
            r.on_hand,
            r.reserved,
            r.staged,
            r.available,
            r.hub_promisable,
            r.hub_rights,
            r.site_rights.map(|v| v.to_string()).unwrap_or_default(),
            r.updated_at_ms,
            r.age_ms,
            r.stale
        ));
    }
    ([(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response()
}

fn stock_json(now: u64, sites: Vec<SiteStock>, rows: Vec<StockRow>) -> StockPage {
    let mut by_sku: BTreeMap<String, Vec<StockRow>> = BTreeMap::new();
    for r in rows {
        by_sku.entry(r.sku.clone()).or_default().push(r);
    }
    let skus = by_sku
        .into_iter()
        .map(|(sku, rows)| {
            let sum = |f: fn(&StockRow) -> u64| rows.iter().map(f).sum::<u64>();
            SkuStock {
                sku,
                on_hand: sum(|r| r.on_hand),
                reserved: sum(|r| r.reserved),
                available: sum(|r| r.available),
                hub_promisable: sum(|r| r.hub_promisable),
                sites: rows,
            }
        })
        .collect();
    StockPage { now_ms: now, sites, skus, next_after: None }
}

/// The JSON answer of `GET /v1/stock`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct StockPage {
    /// The hub's clock, ms.
    now_ms: u64,
    /// Each site that published stock, with its age.
    sites: Vec<SiteStock>,
    /// Per SKU: the network's figures and each site's row.
    skus: Vec<SkuStock>,
    /// Where the next page starts (`<sku>|<site>`), or `null` on the last page.
    next_after: Option<String>,
}

/// One SKU across the sites (`GET /v1/stock/{sku}`, and each SKU of `GET /v1/stock`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SkuStock {
    /// The SKU.
    sku: String,
    /// On hand over the sites.
    on_hand: u64,
    /// Reserved over the sites.
    reserved: u64,
    /// Available (on hand − reserved) over the sites.
    available: u64,
    /// What the hub may promise now over the sites.
    hub_promisable: u64,
    /// Each site's row.
    sites: Vec<StockRow>,
}

/// A site that published its stock.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SiteStock {
    /// The site.
    site: String,
    /// When it last wrote its stock, ms.
    updated_at_ms: u64,
    /// How long ago, ms.
    age_ms: u64,
    /// Older than the routing policy's `stale_after_ms`: routing leaves it out.
    stale: bool,
    /// SKUs it holds.
    skus: usize,
}

/// `Some(true)` for CSV, `Some(false)` for JSON, `None` for anything else.
fn csv_wanted(format: Option<&str>) -> Option<bool> {
    match format {
        None | Some("json") => Some(false),
        Some("csv") => Some(true),
        Some(_) => None,
    }
}

fn bad_format() -> Response {
    problem(StatusCode::BAD_REQUEST, "invalid_query", "format must be json or csv")
}

#[utoipa::path(get, path = "/v1/stock", tag = "stock", params(StockQuery),
    responses((status = 200, description = "Stock per SKU and site; the same as csv (`format=csv`)", content((StockPage = "application/json"), (String = "text/csv")))))]
async fn stock(State(hub): State<Arc<Hub>>, QueryParams(q): QueryParams<StockQuery>) -> Response {
    let Some(csv) = csv_wanted(q.format.as_deref()) else { return bad_format() };
    let limit = q.limit.unwrap_or(STOCK_PAGE_MAX);
    if !(1..=STOCK_PAGE_MAX).contains(&limit) {
        return problem(StatusCode::BAD_REQUEST, "invalid_query", format!("limit must be in 1..={STOCK_PAGE_MAX}"));
    }
    let after = match q.after.as_deref().map(|a| a.split_once('|')) {
        None => None,
        Some(Some(pair)) => Some(pair),
        Some(None) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "after must be <sku>|<site>, a page's next_after",
            );
        }
    };
    let now = now_ms();
    let h = hub.clone();
    let (after, sku) = (after.map(|(a, b)| (a.to_owned(), b.to_owned())), q.sku.clone());
    let page = hub
        .planner_reads
        .read(move || {
            let after = after.as_ref().map(|(a, b)| (a.as_str(), b.as_str()));
            stock_page(&h, sku.as_deref(), after, limit, now)
        })
        .await;
    let (sites, rows, next_after) = match page {
        Ok(page) => page,
        Err(busy) => return busy.into_response(),
    };
    if csv {
        let mut resp = stock_csv(&rows);
        if let Some(next) = next_after.and_then(|n| HeaderValue::from_str(&n).ok()) {
            resp.headers_mut().insert("x-next-after", next);
        }
        return resp;
    }
    Json(StockPage { next_after, ..stock_json(now, sites, rows) }).into_response()
}

#[utoipa::path(get, path = "/v1/stock/{sku}", tag = "stock", params(("sku" = String, Path, description = "The SKU"), StockQuery),
    responses((status = 200, description = "One SKU's stock per site; the same as csv (`format=csv`)", content((SkuStock = "application/json"), (String = "text/csv")))))]
async fn stock_one(
    State(hub): State<Arc<Hub>>,
    Path(sku): Path<String>,
    QueryParams(q): QueryParams<StockQuery>,
) -> Response {
    if let Err(e) = oms_protocol::domain::Sku::parse(&sku) {
        return Problem::from(e).into_response();
    }
    let Some(csv) = csv_wanted(q.format.as_deref()) else { return bad_format() };
    let now = now_ms();
    let h = hub.clone();
    let s = sku.clone();
    let Ok((_, rows)) = tokio::task::spawn_blocking(move || stock_rows(&h, Some(&s), now)).await else {
        return problem(StatusCode::INTERNAL_SERVER_ERROR, "internal", "stock read failed");
    };
    if rows.is_empty() {
        return problem(StatusCode::NOT_FOUND, "unknown_sku", format!("no site reports stock of {sku}"));
    }
    if csv {
        return stock_csv(&rows);
    }
    match stock_json(now, vec![], rows).skus.into_iter().next() {
        Some(one) => Json(one).into_response(),
        None => problem(StatusCode::NOT_FOUND, "unknown_sku", format!("no site reports stock of {sku}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demand::test_support::{hub_docs, hub_over, money};
    use crate::server::ServerTuning;

    fn hub(dir: &std::path::Path, stock: &[(&str, &str, u64)]) -> Hub {
        hub_over(dir, hub_docs(dir, &[], stock), money(), ServerTuning::default())
    }

    #[test]
    fn stock_pages_hold_exactly_the_rows_of_one_read_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let stock: Vec<(&str, &str, u64)> = ["wh1", "wh2", "wh3"]
            .iter()
            .flat_map(|site| ["A", "B", "C", "D"].iter().map(move |sku| (*site, *sku, 5)))
            .collect();
        let hub = hub(dir.path(), &stock);
        let (_, whole) = stock_rows(&hub, None, 1);
        assert_eq!(whole.len(), 12);
        let key = |r: &StockRow| (r.sku.clone(), r.site.clone());
        let mut paged = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let a = after.as_deref().and_then(|a| a.split_once('|'));
            let (_, rows, next) = stock_page(&hub, None, a, 5, 1);
            pages += 1;
            assert!(rows.len() <= 5);
            paged.extend(rows.iter().map(key));
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
            assert!(pages < 10, "the walk ends");
        }
        assert_eq!(pages, 3);
        assert_eq!(paged, whole.iter().map(key).collect::<Vec<_>>());
        let mut sorted = paged.clone();
        sorted.sort();
        assert_eq!(paged, sorted, "by SKU, then site");
        // One SKU, after a row of it.
        let (_, rows, next) = stock_page(&hub, Some("B"), Some(("B", "wh1")), 5, 1);
        assert_eq!(
            rows.iter().map(key).collect::<Vec<_>>(),
            vec![("B".into(), "wh2".into()), ("B".into(), "wh3".into())]
        );
        assert!(next.is_none());
    }
}
