//! Customer orders at the hub over HTTP, and the watcher that keeps routing going.
//!
//! - `POST /v1/orders` (with `Idempotency-Key`): validate, queue for the intake's writer (`503 overloaded`
//!   when its queue is full), which routes within the hub's escrowed rights and commits concurrent orders in
//!   one transaction (see [`crate::intake`]); then write the fulfillment documents and answer `201` with the
//!   order, its `tracking_token` and `tracking_url`
//!   (a replay answers the original with `idempotent-replayed: true`). An order nothing can be placed for is
//!   `201` with status `backordered` (policy `backorder`/`hold`: it is routed again as rights arrive) or
//!   `409 cannot_fill` (policy `reject`, nothing stored). A channel key may only send orders of its own
//!   channel (`403 forbidden` otherwise, nothing stored); idempotency keys are scoped to the order's channel.
//! - `GET /v1/orders/{id}` for a hub order: status across its fulfillment orders, per-line figures and one
//!   timeline merged from every site.
//! - `GET /v1/orders/{id}/routing`: every routing decision with candidates, exclusions and scores.
//! - `POST /v1/orders/{id}/cancel` `{"reason"?}`: drops units not placed yet, asks each site to cancel its
//!   part, and says per line what was cancelled, what is being cancelled (the site confirms) and what could
//!   not be. Customer service (`service` keys) must give a reason (`403 reason_required` otherwise). With
//!   `"lines": [{"sku", "qty"}]` only those units, among the ones still waiting for stock (placed nowhere, so
//!   holding no reservation and no escrow rights): cancelled at once, the order goes on; more than wait is
//!   `409 units_not_waiting`, changing nothing. Units placed at a site are cancelled with the whole order
//!   only (a site cancels a fulfillment whole).
//! - `GET /v1/track/{token}` (open, rate limited per client IP): the customer's view of the order behind a
//!   tracking token: status, lines, a timeline and the carriers' tracking numbers, nothing internal (no
//!   sites, no routing, no address, no other order). An unknown token is `404 tracking_not_found`.
//!
//! A channel key sees only the hub orders of its own channel: any other id, a node's own orders and the
//! fulfillment orders included, is `404 order_not_found` exactly as an id that does not exist, so ids cannot
//! be probed. Creates and cancels are written to the audit trail by the intake (see [`crate::intake`]).
//!
//! The watcher wakes when a node changes a document (and once a second), at most every [`WATCH_GAP_MS`]: it
//! merges each site's escrow view into the hub's, re-routes the units of fulfillment orders a site rejected
//! or cancelled (never to that site in the same round), retries orders with units still waiting, and notes
//! the fulfillments their sites shipped ([`crate::intake::Intake::finished`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use oms_protocol::domain::{Channel, FulfillmentState, NodeId, OrderId, TEXT_BYTES_MAX, ValidationError};
use oms_protocol::escrow::EscrowCounter;
use oms_protocol::schema::{self, DocKind, HUB_ORIGIN};
use oms_protocol::shipping;
use oms_protocol::wire::DocId;
use oms_service::audit::Actor;
use oms_service::auth::{Principal, Role};
use oms_service::now_ms;
use oms_service::{Problem, RawBody};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::events::watch::StockRead;
use crate::intake::{Effects, HubOrder, IntakeError, NewFulfillment, RETRY_BATCH_MAX, SiteFacts};
use crate::server::Hub;
use oms_service::lock;

/// Most sites considered by routing.
pub const SITES_MAX: usize = 10_000;
/// Period of the watcher's retry pass.
pub const WATCH_TICK_MS: u64 = 1_000;

/// The routes of this module.
pub fn router(hub: Arc<Hub>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(search))
        .routes(routes!(routing))
        .routes(routes!(cancel))
        .routes(routes!(cancel_at_site))
        .routes(routes!(route_now))
        .routes(routes!(track))
        .with_state(hub)
}

/// The admitted caller as the audit trail names it, which [`oms_service::auth::authorize`] put on the
/// request (a route served without it, a bug, refuses rather than records nobody).
#[derive(Debug, Clone)]
pub struct Caller(pub Actor);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        parts.extensions.get::<Actor>().cloned().map(Caller).ok_or_else(|| {
            Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", "send Authorization: Bearer <token>")
        })
    }
}

/// The answer to an order a caller may not see: the same as for one that does not exist.
pub fn not_found(id: &str) -> Problem {
    IntakeError::NotFound(id.to_owned()).into()
}

/// Whether `p` may see (and act on) hub order `o`: a channel key only its own channel's.
fn visible_to(p: &Principal, o: &HubOrder) -> bool {
    p.confined_to().is_none_or(|c| &o.draft.channel == c)
}

impl From<IntakeError> for Problem {
    fn from(e: IntakeError) -> Self {
        let detail = e.to_string();
        let code = e.code();
        match e {
            IntakeError::KeyReused(_) => Problem::new(StatusCode::CONFLICT, code, detail),
            IntakeError::CannotFill(d) => Problem::new(StatusCode::CONFLICT, code, detail).with("routing", d.as_ref()),
            IntakeError::NotFound(_) => Problem::new(StatusCode::NOT_FOUND, code, detail),
            IntakeError::NotWaiting { sku, requested, waiting } => Problem::new(StatusCode::CONFLICT, code, detail)
                .with("sku", sku)
                .with("requested", requested)
                .with("waiting", waiting),
            IntakeError::FulfillmentNotFound { fulfillment, .. } => {
                Problem::new(StatusCode::NOT_FOUND, code, detail).with("fulfillment", fulfillment)
            }
            IntakeError::FulfillmentNotOpen { fulfillment, .. } => {
                Problem::new(StatusCode::CONFLICT, code, detail).with("fulfillment", fulfillment)
            }
            IntakeError::Overloaded | IntakeError::ShuttingDown => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
            }
            IntakeError::Storage(_) => {
                tracing::error!(error = %detail, "intake storage failure");
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
            }
            IntakeError::Corrupt { .. } => {
                tracing::error!(error = %detail, "intake corrupt record");
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR, code, detail)
            }
        }
    }
}

/// Why the intake's decisions could not be written into the hub's documents.
#[derive(Debug, thiserror::Error)]
pub enum EffectsError {
    /// A fulfillment or escrow document could not be written.
    #[error("document {doc}: {source}")]
    Document {
        /// The document.
        doc: DocId,
        /// Why.
        source: schema::SchemaError,
    },
    /// The intake's records could not be read.
    #[error(transparent)]
    Intake(#[from] IntakeError),
}

impl From<EffectsError> for Problem {
    fn from(e: EffectsError) -> Self {
        match e {
            EffectsError::Intake(e) => e.into(),
            EffectsError::Document { .. } => {
                tracing::error!(error = %e, "cannot write a hub document");
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "document_failed", e.to_string())
            }
        }
    }
}

/// How old the sites' facts the intake's writer reuses may be, ms, when the documents' lock is busy.
pub const SITE_FACTS_REUSE_MS: u64 = 250;

/// The sites' facts for the intake's writer ([`crate::intake::SiteSource`]): read from the documents once per
/// batch when their lock is free; while a session holds it, the last facts (at most
/// [`SITE_FACTS_REUSE_MS`] old, their ages moved on) are used instead of waiting, so no batch waits for a
/// session's frame or flush preparation. A site's location, capacity and priority change when its stock
/// document does; whether it is connected, and since when it was heard from, move on a scale of seconds.
pub fn site_source(hub: std::sync::Weak<Hub>) -> crate::intake::SiteSource {
    let mut last: Option<(u64, Vec<SiteFacts>)> = None;
    Box::new(move |now| {
        let Some(hub) = hub.upgrade() else { return Vec::new() };
        if let Some((at, facts)) = &last
            && now.saturating_sub(*at) <= SITE_FACTS_REUSE_MS
            && matches!(hub.docs.try_lock(), Err(std::sync::TryLockError::WouldBlock))
        {
            let aged = now.saturating_sub(*at);
            return facts
                .iter()
                .map(|f| SiteFacts { last_heard_age_ms: f.last_heard_age_ms.saturating_add(aged), ..f.clone() })
                .collect();
        }
        let facts = site_facts(&hub, now);
        last = Some((now, facts.clone()));
        facts
    })
}

/// What routing needs about every site, from the documents and connections.
pub fn site_facts(hub: &Hub, now: u64) -> Vec<SiteFacts> {
    let mut docs = lock(&hub.docs);
    docs.sites(SITES_MAX)
        .into_iter()
        .map(|(id, site)| {
            let st = docs.nodes.get(id.as_str());
            let heard = st.and_then(|s| s.last_frame_at_ms);
            SiteFacts {
                reachable: st.is_some_and(|s| s.connected),
                last_heard_age_ms: heard.map_or(u64::MAX, |t| now.saturating_sub(t)),
                id,
                info: site.info,
                schedule: site.schedule,
            }
        })
        .collect()
}

/// Writes fulfillment documents and escrow views into the hub's documents and wakes the sites' sessions.
///
/// No flush here: what these documents say is already committed in `intake.redb` (and rebuilt from it by
/// [`recover`] after a crash), and each session flushes dirty documents before it sends a frame, so a site
/// never sees a document the hub could lose.
pub fn apply_effects(hub: &Hub, effects: &Effects) -> Result<(), EffectsError> {
    apply_all_effects(hub, &[effects])
}

/// [`apply_effects`] for many orders under one hold of the documents' lock: each site's escrow view gets one
/// change for all of them, with each counter written once, merged (element-wise max) with what the view holds,
/// so that effects applied out of order (two batches, two orders of one, a cancel beside an intake) never put
/// an older state over a newer one: the intake's counters only ever grow.
pub fn apply_all_effects(hub: &Hub, all: &[&Effects]) -> Result<(), EffectsError> {
    if all.iter().all(|e| e.fulfillments.is_empty() && e.escrow.is_empty()) {
        return Ok(());
    }
    let now = now_ms();
    // The newest counter per site and SKU: later effects hold larger counters, and the merge keeps every cell's
    // largest value whichever comes last.
    let mut escrow: BTreeMap<(NodeId, String), EscrowCounter> = BTreeMap::new();
    for (site, c) in all.iter().flat_map(|e| &e.escrow) {
        match escrow.entry((site.clone(), c.sku().as_str().to_owned())) {
            std::collections::btree_map::Entry::Occupied(mut held) => {
                if held.get_mut().merge(c).is_err() {
                    // Same SKU by the key: cannot happen; the later counter stands.
                    held.insert(c.clone());
                }
            }
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(c.clone());
            }
        }
    }
    let mut tell = Vec::new();
    {
        let mut docs = lock(&hub.docs);
        for f in all.iter().flat_map(|e| &e.fulfillments) {
            let Some(name) = schema::order_doc(&f.id) else { continue };
            let nodes = docs
                .write_local(&name, |d| schema::create_hub_order(d, &f.id, &f.parent, &f.site, &f.draft, now))
                .map_err(|source| EffectsError::Document { doc: name.clone(), source })?;
            tell.extend(nodes);
        }
        let mut by_site: BTreeMap<&NodeId, Vec<&EscrowCounter>> = BTreeMap::new();
        for ((site, _), c) in &escrow {
            by_site.entry(site).or_default().push(c);
        }
        for (site, counters) in by_site {
            let Some(name) = schema::escrow_doc(site) else { continue };
            let nodes = docs
                .write_local(&name, |d| {
                    let mut changed = false;
                    for c in counters {
                        changed |= schema::merge_escrow(d, site, c, now)?;
                    }
                    Ok(changed)
                })
                .map_err(|source| EffectsError::Document { doc: name.clone(), source })?;
            tell.extend(nodes);
        }
    }
    tell.sort();
    tell.dedup();
    hub.poke(&tell);
    Ok(())
}

/// The intake's [`crate::intake::EffectsSink`]: writes what each committed batch of channel orders created,
/// before their callers are answered (see `intake::writer`).
pub fn effects_sink(hub: std::sync::Weak<Hub>) -> crate::intake::EffectsSink {
    Box::new(move |all| {
        let Some(hub) = hub.upgrade() else { return Err("the hub is shutting down".into()) };
        apply_all_effects(&hub, all).map_err(|e| e.to_string())
    })
}

fn replay_effects(order: &HubOrder) -> Effects {
    let fulfillments = order
        .fulfillments
        .iter()
        .map(|f| NewFulfillment {
            id: f.id.clone(),
            parent: order.id.clone(),
            site: f.site.clone(),
            draft: crate::intake::part_of(&order.draft, &f.lines),
        })
        .collect();
    Effects { fulfillments, escrow: vec![] }
}

/// Runs `f` (disk I/O, document work under the hub's locks) off the async workers.
pub(crate) async fn blocking<T: Send + 'static, E: Into<Problem> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, Problem> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("intake task failed: {e}")))?
        .map_err(Into::into)
}

/// `POST /v1/orders` (mounted by [`crate::api::router`] beside the listing).
#[utoipa::path(post, path = "/v1/orders", tag = "orders",
    params(("Idempotency-Key" = String, Header, description = "Unique per order, reused on retries (1 to 128 visible ASCII characters)")),
    request_body(content = oms_protocol::domain::OrderDraft, example = oms_service::openapi::order_example),
    responses((status = 201, description = "Taken: the hub order with its routing", body = HubOrderView, example = hub_order_example),
        (status = 200, description = "A retry with the same key and body: the order it created (`idempotent-replayed: true`)", body = HubOrderView)))]
pub async fn create(
    State(hub): State<Arc<Hub>>,
    principal: Principal,
    Caller(actor): Caller,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let (key, draft) = oms_service::request::order_request(&headers, &body)?;
    if let Some(own) = principal.confined_to()
        && own != &draft.channel
    {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("key {:?} sells for channel {own}; this order is for channel {}", principal.name, draft.channel),
        )
        .with("role", principal.role));
    }
    // A payment is authorized before the order is queued: never under the intake's lock or in its
    // transaction. A decline is `402` with nothing reserved and the idempotency key not consumed.
    let payment = match hub.money.payment_request(&body)? {
        Some(req) => {
            let hash = crate::intake::body_hash(&draft)?;
            let mut prepared = hub.money.prepare(&key, &draft, &hash, &req);
            let h = hub.clone();
            let prepared =
                blocking(move || h.money.authorize(h.intake.db(), &mut prepared, now_ms()).map(|()| prepared)).await?;
            Some(prepared)
        }
        None => None,
    };
    // Queued for the intake's writer, which takes concurrent orders in one transaction; answered once the
    // transaction holding this one is committed.
    let placed = match hub.intake.submit_paid(key, draft, actor, payment.clone()).await {
        Ok(p) if !p.created && payment.is_some() => {
            // A replay: the order has its payment already; this request's authorization is settled against it.
            let (h, id) = (hub.clone(), p.order.id.to_string());
            let settled = blocking(move || match &payment {
                Some(prepared) => h.money.settle_replay(h.intake.db(), &id, prepared),
                None => Ok(()),
            })
            .await;
            if let Err(pr) = settled {
                tracing::warn!(detail = %pr.detail, "cannot settle a replay's authorization; the sweep will");
            }
            p
        }
        Ok(p) => p,
        Err(e) => {
            // The intake refused the order: its authorization goes (the sweep does it if this fails).
            if let Some(prepared) = payment {
                let h = hub.clone();
                let released = blocking(move || h.money.release(h.intake.db(), &prepared)).await;
                if let Err(p) = released {
                    tracing::warn!(detail = %p.detail, "cannot void the authorization of a refused order; the sweep will");
                }
            }
            return Err(e.into());
        }
    };
    // The intake's documents thread wrote a new order's documents before answering (`written`). For a
    // replay: the original may have been committed just before a crash that kept its documents from being
    // written; writing them again is a no-op otherwise.
    if !placed.written {
        let h = hub.clone();
        let effects = if placed.created { placed.effects } else { replay_effects(&placed.order) };
        blocking(move || apply_effects(&h, &effects)).await?;
    }
    // A new order's fulfillments were created a moment ago with no progress: its view needs no document.
    let mut view = if placed.created {
        order_view_with(&placed.order, |_| FoState::assigned())
    } else {
        order_view(&hub, &placed.order)
    };
    with_payment(&hub, &mut view, placed.order.id.as_str());
    let mut resp = (StatusCode::CREATED, Json(view)).into_response();
    if !placed.created {
        resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// A customer order the hub took (`hub-<n>`), as opposed to one of its fulfillments (`hub-<n>.<k>`) or a
/// site's own order.
pub(crate) fn is_customer_order(id: &str) -> bool {
    id.starts_with(oms_protocol::domain::HUB_ORDER_PREFIX) && !id.contains('.')
}

fn hub_order_id(id: &str) -> Result<OrderId, Problem> {
    let id = OrderId::parse(id).map_err(Problem::from)?;
    if !is_customer_order(id.as_str()) {
        return Err(Problem::new(StatusCode::NOT_FOUND, "order_not_found", format!("{id} is not a hub order")));
    }
    Ok(id)
}

#[utoipa::path(get, path = "/v1/orders/{id}/routing", tag = "orders", params(("id" = String, Path, description = "The order id")),
    responses((status = 200, description = "Why the order went where it went", body = RoutingExplained)))]
async fn routing(
    State(hub): State<Arc<Hub>>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let id = hub_order_id(&id)?;
    let order = hub.intake.order(id.as_str())?.filter(|o| visible_to(&principal, o));
    let order = order.ok_or_else(|| not_found(id.as_str()))?;
    Ok(Json(RoutingExplained {
        id: order.id,
        policy: hub.intake.policy().clone(),
        fulfillments: order.fulfillments,
        unfilled: order.unfilled,
        decisions: order.decisions,
    })
    .into_response())
}

/// The answer of `GET /v1/orders/{id}/routing`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RoutingExplained {
    /// The order.
    pub id: OrderId,
    /// The routing policy in force.
    pub policy: crate::routing::RoutingPolicy,
    /// Its fulfillment orders as routed.
    pub fulfillments: Vec<crate::intake::Fulfillment>,
    /// Units waiting for stock.
    pub unfilled: Vec<crate::routing::SkuQty>,
    /// Every routing decision, with candidates, exclusions and scores.
    pub decisions: Vec<crate::intake::DecisionRecord>,
}

#[utoipa::path(get, path = "/v1/orders/search", tag = "orders",
    params(("q" = String, Query, description = "An order id, an e-mail address, a phone number or a channel's order reference"),
        ("limit" = Option<u32>, Query, description = "At most this many orders (20; 1 to 50)")),
    responses((status = 200, description = "Newest first, each as `GET /v1/orders/{id}` shows it", body = FoundOrders)))]
/// `GET /v1/orders/search?q=&limit=`: the orders a customer may be asking about, by order id, e-mail
/// address, phone number or the channel's order reference (`crate::intake::Intake::search`), newest first,
/// each as `GET /v1/orders/{id}` shows it. For customer service.
async fn search(
    State(hub): State<Arc<Hub>>,
    principal: Principal,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Json<FoundOrders>, Problem> {
    if let Some(bad) = q.keys().find(|k| !matches!(k.as_str(), "q" | "limit")) {
        return Err(Problem::new(StatusCode::BAD_REQUEST, "invalid_query", format!("unknown parameter {bad:?}")));
    }
    let query = q.get("q").map(|v| v.trim()).unwrap_or_default().to_owned();
    if query.is_empty() || query.len() > 256 {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "q must name an order id, an e-mail address, a phone number or an order reference (1 to 256 bytes)",
        ));
    }
    let limit = match q.get("limit") {
        None => 20,
        Some(l) => l.parse::<usize>().ok().filter(|l| (1..=crate::intake::SEARCH_RESULTS_MAX).contains(l)).ok_or_else(
            || {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    format!("limit must be 1 to {}", crate::intake::SEARCH_RESULTS_MAX),
                )
            },
        )?,
    };
    let orders = tokio::task::spawn_blocking(move || -> Result<Vec<HubOrderView>, Problem> {
        let found = hub.intake.search(&query, limit)?;
        let mut out = Vec::with_capacity(found.len());
        for o in found {
            if let Some(v) = hub_order_view(&hub, o.id.as_str(), &principal)? {
                out.push(v);
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    Ok(Json(FoundOrders { orders }))
}

/// The answer of `GET /v1/orders/search`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FoundOrders {
    /// The orders found, newest first.
    pub orders: Vec<HubOrderView>,
}

/// The view of a hub order, if `id` is one that `principal` may see, as the screens read it.
pub fn hub_order(hub: &Hub, id: &str, principal: &Principal) -> Result<Option<Value>, Problem> {
    Ok(hub_order_view(hub, id, principal)?.map(|v| json!(v)))
}

/// The view of a hub order, if `id` is one that `principal` may see (`GET /v1/orders/{id}`).
pub fn hub_order_view(hub: &Hub, id: &str, principal: &Principal) -> Result<Option<HubOrderView>, Problem> {
    if !is_customer_order(id) {
        return Ok(None);
    }
    Ok(hub.intake.order(id)?.filter(|o| visible_to(principal, o)).map(|o| {
        let mut v = order_view(hub, &o);
        with_payment(hub, &mut v, id);
        crate::notes::with_notes(hub, &mut v, id, principal);
        with_returns(hub, &mut v, id);
        v
    }))
}

/// Adds the order's payment (status, amounts, documents) to its view and its events to the timeline.
fn with_payment(hub: &Hub, view: &mut HubOrderView, id: &str) {
    let p = match hub.money.payment(hub.intake.db(), id) {
        Ok(Some(p)) => p,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(order = id, error = %e, "cannot read the order's payment");
            return;
        }
    };
    view.timeline.extend(p.events.iter().map(|e| TimelineItem {
        amount_minor: Some(e.amount_minor),
        document: Some(e.document.clone()),
        ..TimelineItem::new(e.at_ms, format!("payment_{}", e.status))
    }));
    sort_timeline(&mut view.timeline);
    view.payment = Some(crate::money::payment_view(&p));
}

/// Adds the order's RMAs (state, lines, credit notes) to its view and their events to the timeline.
fn with_returns(hub: &Hub, view: &mut HubOrderView, id: &str) {
    let rmas = match hub.returns.of_order(hub.intake.db(), id) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(order = id, error = %e, "cannot read the order's returns");
            return;
        }
    };
    for r in &rmas {
        view.timeline.extend(r.events.iter().map(|e| TimelineItem {
            rma: Some(r.id.clone()),
            ..TimelineItem::at_site(
                e.at_ms,
                format!("rma_{}", e.state.as_str()),
                &r.fulfillment,
                &r.site,
                e.note.clone(),
            )
        }));
    }
    sort_timeline(&mut view.timeline);
    view.rmas = Some(
        rmas.into_iter()
            .map(|r| RmaBrief {
                id: r.id,
                state: r.state,
                fulfillment: r.fulfillment,
                site: r.site,
                lines: r.lines,
                credit_notes: r.credit_notes,
                refunded_minor: r.refunded_minor,
                refund_error: r.refund_error,
            })
            .collect(),
    );
}

/// A channel key's listing: the hub orders of its channel, in id order.
pub fn channel_orders(
    hub: &Hub,
    channel: &Channel,
    after: Option<&str>,
    limit: usize,
) -> Result<ChannelOrders, Problem> {
    let (orders, next_after) = hub.intake.channel_orders(channel, after, limit)?;
    let orders = orders
        .iter()
        .map(|o| ChannelOrder {
            id: o.id.clone(),
            channel: o.draft.channel.clone(),
            external_ref: o.draft.external_ref.clone(),
            created_at_ms: o.created_at_ms,
            cancel_requested_at_ms: o.cancel_requested_at_ms,
        })
        .collect();
    Ok(ChannelOrders { channel: channel.clone(), orders, next_after })
}

/// A channel key's page of `GET /v1/orders`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChannelOrders {
    /// The key's channel.
    pub channel: Channel,
    /// Its hub orders, by id.
    pub orders: Vec<ChannelOrder>,
    /// Where the next page starts (`after`), or `null` on the last page.
    pub next_after: Option<String>,
}

/// One order of a channel's page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChannelOrder {
    /// `hub-<seq>`.
    pub id: OrderId,
    /// The channel.
    pub channel: Channel,
    /// The channel's reference.
    pub external_ref: String,
    /// When taken, ms.
    pub created_at_ms: u64,
    /// When a cancellation was asked for, ms.
    pub cancel_requested_at_ms: Option<u64>,
}

/// Status and progress of one fulfillment order as last synced.
struct FoState {
    status: Option<FulfillmentState>,
    progress: Option<schema::Progress>,
    /// The site froze the finished fulfillment order at this time.
    frozen_at_ms: Option<u64>,
}

fn fo_state(hub: &Hub, id: &OrderId) -> FoState {
    let view = {
        let docs = lock(&hub.docs);
        schema::order_doc(id).and_then(|n| docs.get(&n).and_then(|d| schema::read_order(&d, n.as_str()).ok()))
    };
    let frozen_at_ms = view.as_ref().and_then(|v| v.frozen_at_ms);
    let mut progress = view.as_ref().and_then(|v| v.progress.clone());
    if let (Some(v), Some(p)) = (&view, progress.as_mut()) {
        frozen_delivered(hub, v, p);
    }
    FoState { status: progress.as_ref().map(|p| p.status), progress, frozen_at_ms }
}

/// When the carrier delivered a fulfillment its site had frozen as shipped (so its document cannot say so):
/// the hub's record ([`crate::tracking::frozen_delivery`]) or the hub's key that reached the document as the
/// site froze it. None for any other document.
pub(crate) fn carrier_delivered_frozen(hub: &Hub, v: &schema::OrderView) -> Option<u64> {
    let shipped = v.progress.as_ref().is_some_and(|p| p.status == FulfillmentState::Shipped);
    if v.frozen_at_ms.is_none() || !shipped {
        return None;
    }
    v.carrier_delivered_at_ms.or_else(|| {
        crate::tracking::frozen_delivery(hub.intake.db(), v.id.as_str())
            .inspect_err(|e| tracing::warn!(fulfillment = %v.id, error = %e, "cannot read a frozen delivery"))
            .ok()
            .flatten()
    })
}

/// Shows in `p` (the progress of `v`) the carrier's delivery of a fulfillment frozen as shipped: `delivered`,
/// with its timeline entry.
fn frozen_delivered(hub: &Hub, v: &schema::OrderView, p: &mut schema::Progress) {
    if let Some(at_ms) = carrier_delivered_frozen(hub, v) {
        p.status = FulfillmentState::Delivered;
        p.timeline.push(oms_protocol::records::TimelineEntry {
            at_ms,
            status: FulfillmentState::Delivered,
            note: "delivered by the carrier (after the site froze the order)".into(),
        });
    }
}

fn order_view(hub: &Hub, o: &HubOrder) -> HubOrderView {
    let mut v = order_view_with(o, |id| fo_state(hub, id));
    crate::tracking::with_tracking(hub, &mut v);
    v
}

impl FoState {
    /// A fulfillment order its site has not answered yet.
    fn assigned() -> FoState {
        FoState { status: None, progress: None, frozen_at_ms: None }
    }
}

/// The view of `o`, with each fulfillment order's state from `state`.
fn order_view_with(o: &HubOrder, state: impl Fn(&OrderId) -> FoState) -> HubOrderView {
    let mut fos = Vec::new();
    let mut timeline = Vec::new();
    let (mut shipped_units, mut placed_units, mut open_fos, mut delivered_all) = (0u64, 0u64, 0usize, true);
    let mut frozen_all = !o.fulfillments.is_empty();
    let mut per_sku: BTreeMap<String, (u64, u64)> = BTreeMap::new(); // placed, shipped
    // Units of fulfillments a line cancel may still ask of their sites (open, no cancel asked yet).
    let mut open_units: BTreeMap<String, u64> = BTreeMap::new();
    // The order ships when its last live fulfillment does.
    let mut promised_ship_by_ms: Option<u64> = None;
    for f in &o.fulfillments {
        let st = state(&f.id);
        if f.released.is_none()
            && let Some(p) = &f.promise
        {
            promised_ship_by_ms = promised_ship_by_ms.max(Some(p.ship_by_ms));
        }
        let (fid, site) = (f.id.as_str(), f.site.as_str());
        timeline.push(TimelineItem::at_site(f.assigned_at_ms, "assigned", fid, site, format!("routed to {}", f.site)));
        if let Some(p) = &st.progress {
            for t in &p.timeline {
                timeline.push(TimelineItem::at_site(t.at_ms, t.status.as_str(), fid, site, t.note.clone()));
            }
        }
        frozen_all &= st.frozen_at_ms.is_some();
        let live = f.released.is_none();
        if live {
            for l in &f.lines {
                let e = per_sku.entry(l.sku.to_string()).or_default();
                e.0 += u64::from(l.qty);
                placed_units += u64::from(l.qty);
            }
            if let Some(p) = &st.progress {
                for l in &p.lines {
                    per_sku.entry(l.sku.to_string()).or_default().1 += u64::from(l.shipped);
                    shipped_units += u64::from(l.shipped);
                }
            }
            if !matches!(st.status, Some(FulfillmentState::Delivered)) {
                delivered_all = false;
            }
            if !matches!(
                st.status,
                Some(
                    FulfillmentState::Shipped
                        | FulfillmentState::Delivered
                        | FulfillmentState::Cancelled
                        | FulfillmentState::Rejected
                )
            ) {
                open_fos += 1;
                if f.site_cancel.is_none() {
                    for l in &f.lines {
                        *open_units.entry(l.sku.to_string()).or_default() += u64::from(l.qty);
                    }
                }
            }
        }
        fos.push(FulfillmentView {
            id: f.id.clone(),
            site: f.site.clone(),
            lines: f.lines.clone(),
            assigned_at_ms: f.assigned_at_ms,
            status: st.status.map_or("assigned", |s| s.as_str()),
            shipment: st.progress.as_ref().and_then(|p| p.shipment.clone()),
            released: f.released.clone(),
            site_cancel: f.site_cancel.as_ref().map(|c| SiteCancelView {
                at_ms: c.at_ms,
                then: c.then,
                reason: c.reason.clone(),
            }),
            frozen_at_ms: st.frozen_at_ms,
            promised_ship_by_ms: f.promise.as_ref().map(|p| p.ship_by_ms),
            promised_ship_by: f.promise.as_ref().and_then(|p| shipping::rfc3339(p.ship_by_ms)),
            services: f.promise.as_ref().map(|p| p.services.clone()).unwrap_or_default(),
            tracking_status: None,
            tracking: None,
        });
    }
    sort_timeline(&mut timeline);
    let unfilled: u64 = o.unfilled.iter().map(|l| u64::from(l.qty)).sum();
    let status = if o.cancel_requested_at_ms.is_some() {
        if open_fos == 0 && shipped_units == 0 {
            "cancelled"
        } else if open_fos == 0 {
            "partially_cancelled"
        } else {
            "cancel_requested"
        }
    } else if placed_units == 0 {
        "backordered"
    } else if delivered_all && unfilled == 0 {
        "delivered"
    } else if open_fos == 0 && unfilled == 0 && shipped_units > 0 {
        "shipped"
    } else if shipped_units > 0 {
        "partially_shipped"
    } else if unfilled > 0 {
        "partially_backordered"
    } else {
        "in_fulfillment"
    };
    let lines = o
        .draft
        .lines
        .iter()
        .map(|l| {
            let (placed, shipped) = per_sku.get(l.sku.as_str()).copied().unwrap_or_default();
            let waiting = o.unfilled.iter().filter(|u| u.sku == l.sku).map(|u| u64::from(u.qty)).sum::<u64>();
            let at_sites = open_units.get(l.sku.as_str()).copied().unwrap_or(0);
            let cancellable = if o.cancel_requested_at_ms.is_some() { 0 } else { waiting + at_sites };
            HubLineView { sku: l.sku.clone(), qty: l.qty, placed, shipped, unfilled: waiting, cancellable }
        })
        .collect();
    HubOrderView {
        id: o.id.clone(),
        origin: HUB_ORIGIN,
        channel: o.draft.channel.clone(),
        external_ref: o.draft.external_ref.clone(),
        created_at_ms: o.created_at_ms,
        status,
        lines,
        order: o.draft.clone(),
        fulfillments: fos,
        unfilled: o.unfilled.clone(),
        cancel_requested_at_ms: o.cancel_requested_at_ms,
        cancelled_unfilled: o.cancelled_unfilled.clone(),
        avoid_sites: o.avoid_sites.clone(),
        timeline,
        cancel_reason: o.cancel_reason.clone(),
        tracking_token: o.tracking_token.clone(),
        tracking_url: o.tracking_token.as_ref().map(|t| format!("/v1/track/{t}")),
        promised_ship_by_ms,
        promised_ship_by: promised_ship_by_ms.and_then(shipping::rfc3339),
        // Every fulfillment is finished and frozen at its site, and nothing waits for a site: the order's
        // history does not change any more.
        frozen: frozen_all && o.unfilled.is_empty(),
        carrier_exception: None,
        payment: None,
        rmas: None,
    }
}

/// The example hub order of the document's `POST /v1/orders` and `GET /v1/orders/{id}` answers: the
/// example order body taken, routed to one site, not shipped yet.
pub fn hub_order_example() -> Value {
    json!({
        "id": "hub-42", "origin": "hub", "channel": "web", "external_ref": "web-100234",
        "created_at_ms": 1_767_225_600_000u64, "status": "in_fulfillment",
        "lines": [{"sku": "TSHIRT-RED-M", "qty": 2, "placed": 2, "shipped": 0, "unfilled": 0}],
        "order": oms_service::openapi::order_example(),
        "fulfillments": [{"id": "hub-42.1", "site": "wh-berlin", "lines": [{"sku": "TSHIRT-RED-M", "qty": 2}],
            "assigned_at_ms": 1_767_225_600_010u64, "status": "accepted", "shipment": null, "released": null,
            "frozen_at_ms": null, "promised_ship_by_ms": 1_767_283_200_000u64,
            "promised_ship_by": "2026-01-01T16:00:00Z",
            "services": [{"carrier": "dhl", "service": "parcel", "ship_by_ms": 1_767_283_200_000u64,
                "estimated_delivery": "2026-01-02"}]}],
        "unfilled": [], "cancel_requested_at_ms": null, "cancelled_unfilled": [],
        "timeline": [
            {"at_ms": 1_767_225_600_010u64, "fulfillment": "hub-42.1", "site": "wh-berlin", "status": "assigned",
             "note": "routed to wh-berlin"},
            {"at_ms": 1_767_225_601_000u64, "fulfillment": "hub-42.1", "site": "wh-berlin", "status": "accepted",
             "note": "accepted"}],
        "cancel_reason": null, "tracking_token": "trk_4f9c2a7d1e8b", "tracking_url": "/v1/track/trk_4f9c2a7d1e8b",
        "promised_ship_by_ms": 1_767_283_200_000u64, "promised_ship_by": "2026-01-01T16:00:00Z", "frozen": false,
        "carrier_exception": null
    })
}

/// A hub order as `GET /v1/orders/{id}` (and `POST /v1/orders`, the search) shows it: status across its
/// fulfillment orders, per-line figures, one timeline merged from every site, and (as far as they were read)
/// its carriers' tracking, payment and returns.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HubOrderView {
    /// `hub-<seq>`.
    pub id: OrderId,
    /// Always `hub`.
    pub origin: &'static str,
    /// The channel.
    pub channel: Channel,
    /// The channel's own reference.
    pub external_ref: String,
    /// When taken, ms.
    pub created_at_ms: u64,
    /// `in_fulfillment`, `partially_shipped`, `shipped`, `delivered`, `backordered`, `partially_backordered`,
    /// `cancel_requested`, `partially_cancelled` or `cancelled`.
    pub status: &'static str,
    /// Per line: ordered, placed at sites, shipped and waiting for stock.
    pub lines: Vec<HubLineView>,
    /// The order as taken.
    pub order: oms_protocol::domain::OrderDraft,
    /// Its fulfillment orders, one per site part.
    pub fulfillments: Vec<FulfillmentView>,
    /// Units waiting for stock.
    pub unfilled: Vec<crate::routing::SkuQty>,
    /// When a cancellation was asked for, ms.
    pub cancel_requested_at_ms: Option<u64>,
    /// Units cancelled: before any site had them, or by a line cancel a site confirmed.
    pub cancelled_unfilled: Vec<crate::routing::SkuQty>,
    /// Sites this order is never placed at again (service moved it away from them).
    pub avoid_sites: Vec<oms_protocol::domain::NodeId>,
    /// What happened, oldest first: routing, each site's steps, carriers, payment, notes and returns.
    pub timeline: Vec<TimelineItem>,
    /// Why it was cancelled.
    pub cancel_reason: Option<String>,
    /// The customer's tracking token.
    pub tracking_token: Option<String>,
    /// The customer's tracking page, `/v1/track/<token>`.
    pub tracking_url: Option<String>,
    /// When the last live fulfillment promised to ship, ms.
    pub promised_ship_by_ms: Option<u64>,
    /// The same, RFC 3339.
    pub promised_ship_by: Option<String>,
    /// Every fulfillment is finished and frozen at its site and nothing waits: its history does not change.
    pub frozen: bool,
    /// A carrier's failure or return to sender, when its flag could be read (`null`: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carrier_exception: Option<Option<crate::tracking::Flag>>,
    /// Its payment, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment: Option<crate::money::PaymentView>,
    /// Its returns (RMAs), when they could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rmas: Option<Vec<RmaBrief>>,
}

/// One line of a hub order.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HubLineView {
    /// SKU.
    pub sku: oms_protocol::domain::Sku,
    /// Units ordered.
    pub qty: u32,
    /// Units placed at live fulfillments.
    pub placed: u64,
    /// Units shipped.
    pub shipped: u64,
    /// Units waiting for stock.
    pub unfilled: u64,
    /// Units a line cancel may still take: waiting for stock, or at a site that has not shipped them and was
    /// asked for no cancel (0 once the order is being cancelled).
    pub cancellable: u64,
}

/// A cancel asked of one site for its fulfillment, as the order view shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SiteCancelView {
    /// When it was asked, ms.
    pub at_ms: u64,
    /// What becomes of the units once the site confirms.
    pub then: crate::intake::AfterSiteCancel,
    /// Why.
    pub reason: String,
}

/// One fulfillment order of a hub order.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FulfillmentView {
    /// `hub-<seq>.<n>`.
    pub id: OrderId,
    /// The site.
    pub site: oms_protocol::domain::NodeId,
    /// Units per SKU.
    pub lines: Vec<crate::routing::SkuQty>,
    /// When assigned, ms.
    pub assigned_at_ms: u64,
    /// `assigned` until the site answers, then its state.
    pub status: &'static str,
    /// The carrier hand-over, once shipped.
    pub shipment: Option<oms_protocol::records::Shipment>,
    /// Why its units went back to routing (the site rejected or cancelled it).
    pub released: Option<String>,
    /// A cancel asked of its site alone (service's), if any.
    pub site_cancel: Option<SiteCancelView>,
    /// When the site froze it, ms.
    pub frozen_at_ms: Option<u64>,
    /// The site's promised cut-off, ms.
    pub promised_ship_by_ms: Option<u64>,
    /// The same, RFC 3339.
    pub promised_ship_by: Option<String>,
    /// Per carrier service: cut-off and estimated delivery.
    pub services: Vec<oms_protocol::shipping::ServicePromise>,
    /// The carrier's current state of the shipment (`null`: no event yet); with a tracked shipment only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking_status: Option<Option<String>>,
    /// The carrier's events; with a tracked shipment only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking: Option<Vec<crate::tracking::TrackingEvent>>,
}

/// One entry of an order's timeline. `at_ms` and `status` always; the rest as the kind of entry has them:
/// a site's step (`fulfillment`, `site`, `note`), a carrier's event (`carrier_<status>`: the carrier as
/// `site`), a payment's (`payment_<status>`: `amount_minor`, `document`), a note (`by`), an RMA's
/// (`rma_<state>`: `rma`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TimelineItem {
    /// When, ms.
    pub at_ms: u64,
    /// What happened.
    pub status: String,
    /// The fulfillment order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fulfillment: Option<String>,
    /// The site (or the carrier).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// What happened, for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Who wrote a note.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The RMA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rma: Option<String>,
    /// A payment step's amount, minor units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount_minor: Option<u64>,
    /// A payment step's invoice or credit note (`null`: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<Option<String>>,
}

impl TimelineItem {
    /// An entry with `at_ms` and `status` only.
    pub fn new(at_ms: u64, status: impl Into<String>) -> TimelineItem {
        TimelineItem {
            at_ms,
            status: status.into(),
            fulfillment: None,
            site: None,
            note: None,
            by: None,
            rma: None,
            amount_minor: None,
            document: None,
        }
    }

    /// An entry of fulfillment `fulfillment` at `site` with a `note`.
    pub fn at_site(at_ms: u64, status: impl Into<String>, fulfillment: &str, site: &str, note: String) -> TimelineItem {
        TimelineItem {
            fulfillment: Some(fulfillment.to_owned()),
            site: Some(site.to_owned()),
            note: Some(note),
            ..TimelineItem::new(at_ms, status)
        }
    }
}

/// An RMA of an order, as its view shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RmaBrief {
    /// `RMA-<seq>`.
    pub id: String,
    /// Where it stands.
    pub state: crate::returns::RmaState,
    /// The fulfillment whose units come back.
    pub fulfillment: String,
    /// The site that receives them.
    pub site: String,
    /// Lines.
    pub lines: Vec<crate::returns::RmaLine>,
    /// Its credit notes.
    pub credit_notes: Vec<String>,
    /// Refunded, minor units.
    pub refunded_minor: u64,
    /// Why the refund failed, if it did.
    pub refund_error: Option<String>,
}

/// Sorts a timeline by time, keeping the order of entries at the same time.
pub(crate) fn sort_timeline(t: &mut [TimelineItem]) {
    t.sort_by_key(|t| t.at_ms);
}

/// The optional body of a cancel.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    reason: Option<String>,
    /// Only these units, among those still waiting for stock.
    lines: Option<Vec<CancelLine>>,
}

/// A line of a line-level cancel.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CancelLine {
    pub(crate) sku: String,
    pub(crate) qty: u32,
}

/// The cancel's reason: none for an empty body or a blank reason; free text of at most
/// [`TEXT_BYTES_MAX`] bytes without control characters otherwise. And its lines, if it names any: each SKU
/// once, 1 to [`oms_protocol::domain::QTY_MAX`] units, at most [`oms_protocol::domain::ORDER_LINES_MAX`].
fn cancel_body(body: &[u8]) -> Result<(Option<String>, Option<Vec<crate::routing::SkuQty>>), Problem> {
    let b: CancelBody =
        if body.iter().all(u8::is_ascii_whitespace) { CancelBody::default() } else { oms_service::parse_json(body)? };
    let lines = b.lines.map(|ls| cancel_lines(&ls)).transpose()?;
    Ok((checked_reason(b.reason)?, lines))
}

/// A cancel's reason, trimmed (none when empty), or the refusal of one too long or with control characters.
fn checked_reason(reason: Option<String>) -> Result<Option<String>, Problem> {
    let Some(reason) = reason.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty()) else { return Ok(None) };
    if reason.len() > TEXT_BYTES_MAX || reason.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "invalid_text",
            "reason",
            format!("must be at most {TEXT_BYTES_MAX} bytes without control characters"),
        )
        .into());
    }
    Ok(Some(reason))
}

/// The body of `POST /v1/orders/{id}/fulfillments/{fulfillment}/cancel`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SiteCancelBody {
    /// Why (required, at most 2,000 bytes): kept with the fulfillment and in the audit trail.
    reason: Option<String>,
    /// What becomes of the units once the site confirms: `cancel` (the default) or `reroute` (back to
    /// routing, never to that site again for this order).
    #[serde(default = "cancel_then")]
    then: crate::intake::AfterSiteCancel,
}

fn cancel_then() -> crate::intake::AfterSiteCancel {
    crate::intake::AfterSiteCancel::Cancel
}

/// What a cancel asked of one site answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SiteCancelAnswer {
    /// The order.
    pub id: String,
    /// The fulfillment.
    pub fulfillment: String,
    /// Its site.
    pub site: String,
    /// What becomes of its units once the site confirms.
    pub then: crate::intake::AfterSiteCancel,
    /// `cancel_requested`: the site confirms when it syncs.
    pub result: &'static str,
}

#[utoipa::path(post, path = "/v1/orders/{id}/fulfillments/{fulfillment}/cancel", tag = "orders",
    params(("id" = String, Path, description = "The order id"), ("fulfillment" = String, Path, description = "One of its fulfillments")),
    request_body = SiteCancelBody,
    responses((status = 202, description = "The cancel is asked of that site alone; its units are cancelled or re-routed when it confirms", body = SiteCancelAnswer)))]
async fn cancel_at_site(
    State(hub): State<Arc<Hub>>,
    principal: Principal,
    Caller(actor): Caller,
    Path((id, fulfillment)): Path<(String, String)>,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let b: SiteCancelBody = oms_service::parse_json(&body)?;
    let answer = site_cancel(&hub, &principal, actor, &id, &fulfillment, b.then, b.reason.unwrap_or_default()).await?;
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// Asks the site of `fulfillment` of hub order `id` to cancel it (service's console and
/// `POST /v1/orders/{id}/fulfillments/{fulfillment}/cancel`): a fulfillment the site shipped or gave back is
/// `409 fulfillment_not_cancellable`; otherwise the request is recorded with its audit row
/// ([`crate::intake::Intake::request_site_cancel`]), written into the fulfillment's document (durable before
/// the answer) and the site told.
pub(crate) async fn site_cancel(
    hub: &Arc<Hub>,
    principal: &Principal,
    actor: Actor,
    id: &str,
    fulfillment: &str,
    then: crate::intake::AfterSiteCancel,
    reason: String,
) -> Result<SiteCancelAnswer, Problem> {
    let id = hub_order_id(id)?.to_string();
    let reason = checked_reason(Some(reason))?
        .ok_or_else(|| Problem::from(ValidationError::new("reason_required", "reason", "say why: it is audited")))?;
    let (h, key, confined) = (hub.clone(), id.clone(), principal.confined_to().cloned());
    let order = blocking(move || h.intake.order(&key))
        .await?
        .filter(|o| confined.as_ref().is_none_or(|c| &o.draft.channel == c));
    // The site's state is read only for a fulfillment of an order the caller may see.
    let state = order
        .as_ref()
        .and_then(|o| o.fulfillments.iter().find(|f| f.id.as_str() == fulfillment))
        .map(|f| fo_state(hub, &f.id).status);
    if let Some(Some(st)) = state {
        let why = match st {
            FulfillmentState::Shipped | FulfillmentState::Delivered => Some("its site shipped it already"),
            FulfillmentState::Cancelled | FulfillmentState::Rejected => Some("its site gave it back already"),
            _ => None,
        };
        if let Some(why) = why {
            return Err(IntakeError::FulfillmentNotOpen { fulfillment: fulfillment.to_owned(), why }.into());
        }
    }
    let (h, key, fid, confined) = (hub.clone(), id.clone(), fulfillment.to_owned(), principal.confined_to().cloned());
    let order =
        blocking(move || h.intake.request_site_cancel(&key, &fid, confined.as_ref(), then, &reason, &actor, now_ms()))
            .await?;
    let Some(f) = order.fulfillments.iter().find(|f| f.id.as_str() == fulfillment) else {
        return Err(crate::orders::not_found(&id));
    };
    let mut tell = Vec::new();
    ask_site_to_cancel(hub, &f.id, now_ms(), &mut tell)?;
    flush_and_tell(hub, tell).await?;
    Ok(SiteCancelAnswer {
        id,
        fulfillment: f.id.to_string(),
        site: f.site.to_string(),
        then,
        result: "cancel_requested",
    })
}

/// Checks the lines of a line-level cancel.
pub(crate) fn cancel_lines(ls: &[CancelLine]) -> Result<Vec<crate::routing::SkuQty>, Problem> {
    use oms_protocol::domain::{ORDER_LINES_MAX, QTY_MAX, Sku};
    if ls.is_empty() || ls.len() > ORDER_LINES_MAX {
        return Err(ValidationError::new("invalid_lines", "lines", format!("1 ..= {ORDER_LINES_MAX} lines")).into());
    }
    let mut out: Vec<crate::routing::SkuQty> = Vec::with_capacity(ls.len());
    for (i, l) in ls.iter().enumerate() {
        let sku = Sku::parse(&l.sku)
            .map_err(|_| ValidationError::new("invalid_sku", format!("lines[{i}].sku"), "not a SKU"))?;
        if l.qty == 0 || l.qty > QTY_MAX {
            return Err(ValidationError::new(
                "invalid_quantity",
                format!("lines[{i}].qty"),
                format!("1 ..= {QTY_MAX}"),
            )
            .into());
        }
        if out.iter().any(|o| o.sku == sku) {
            return Err(ValidationError::new("duplicate_sku", format!("lines[{i}].sku"), "each SKU once").into());
        }
        out.push(crate::routing::SkuQty { sku, qty: l.qty });
    }
    Ok(out)
}

/// Customer service cancels `what` with a reason only (`403 reason_required` otherwise).
fn reason_given(principal: &Principal, reason: Option<&str>, what: &str) -> Result<(), Problem> {
    if principal.role == Role::Service && reason.is_none() {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "reason_required",
            format!("customer service cancels {what} with a reason: send {{\"reason\": \"…\"}}"),
        )
        .with("role", principal.role));
    }
    Ok(())
}

/// Cancels `lines` of hub order `id` for `principal` (a channel only its own orders; service with a reason):
/// `POST /v1/orders/{id}/cancel` with `lines`, and the console's form. Units waiting for stock go at once;
/// the rest are asked of the sites holding them, not shipped ([`crate::intake::Intake::cancel_units`]): each
/// such request is written into its fulfillment's document (durable before the answer) and the site told.
pub(crate) async fn cancel_order_lines(
    hub: &Arc<Hub>,
    principal: &Principal,
    actor: Actor,
    id: &str,
    lines: Vec<crate::routing::SkuQty>,
    reason: Option<String>,
) -> Result<Cancelled, Problem> {
    let id = hub_order_id(id)?;
    reason_given(principal, reason.as_deref(), "units")?;
    // The fulfillments their sites shipped or gave back (read before the intake's lock: it is never held
    // with the documents').
    let (h, key) = (hub.clone(), id.to_string());
    let current = blocking(move || h.intake.order(&key)).await?;
    let closed: BTreeSet<OrderId> = current
        .iter()
        .flat_map(|o| &o.fulfillments)
        .filter(|f| {
            matches!(
                fo_state(hub, &f.id).status,
                Some(
                    FulfillmentState::Shipped
                        | FulfillmentState::Delivered
                        | FulfillmentState::Cancelled
                        | FulfillmentState::Rejected
                )
            )
        })
        .map(|f| f.id.clone())
        .collect();
    let (h, key, confined) = (hub.clone(), id.to_string(), principal.confined_to().cloned());
    let asked_lines = lines.clone();
    let (order, asked) = blocking(move || {
        h.intake.cancel_units(&key, confined.as_ref(), &asked_lines, reason.as_deref(), &closed, &actor, now_ms())
    })
    .await?;
    let mut done = Vec::new();
    let mut tell = Vec::new();
    let now = now_ms();
    for fid in &asked {
        let Some(f) = order.fulfillments.iter().find(|f| &f.id == fid) else { continue };
        ask_site_to_cancel(hub, fid, now, &mut tell)?;
        for l in f.site_cancel.as_ref().and_then(|c| c.lines.as_ref()).into_iter().flatten() {
            done.push(CancelledLine {
                fulfillment: Some(f.id.clone()),
                site: Some(f.site.clone()),
                sku: l.sku.clone(),
                qty: l.qty,
                result: "cancel_requested",
                reason: "asked of the site; the rest of its part is placed again",
            });
        }
    }
    // What the sites were not asked for came from the units waiting for stock.
    for l in &lines {
        let at_sites: u32 = done.iter().filter(|d| d.sku == l.sku).map(|d| d.qty).sum();
        let waiting = l.qty.saturating_sub(at_sites);
        if waiting > 0 {
            done.push(CancelledLine::unplaced(&crate::routing::SkuQty { sku: l.sku.clone(), qty: waiting }));
        }
    }
    if !asked.is_empty() {
        flush_and_tell(hub, tell).await?;
    }
    // The last waiting units cancelled may leave the order final (everything else shipped): its payment is
    // settled as after any other change that can end an order. An intake commit (fsync): off this worker.
    let (h, o) = (hub.clone(), order.clone());
    blocking(move || {
        settle_if_final(&h, &o, now_ms());
        Ok::<(), IntakeError>(())
    })
    .await?;
    Ok(Cancelled {
        id: order.id,
        cancel_requested_at_ms: order.cancel_requested_at_ms,
        lines: done,
        unfilled: Some(order.unfilled),
    })
}

/// The answer of `POST /v1/orders/{id}/cancel`: what became of each line.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Cancelled {
    /// The order.
    pub id: OrderId,
    /// When the cancellation was asked for (none for a line cancel that leaves the order going), ms.
    pub cancel_requested_at_ms: Option<u64>,
    /// Per fulfillment line (and units placed nowhere): the result.
    pub lines: Vec<CancelledLine>,
    /// A line cancel's answer only: the units still waiting for stock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unfilled: Option<Vec<crate::routing::SkuQty>>,
}

/// What became of one line of a cancellation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CancelledLine {
    /// The fulfillment order (`null`: units placed at no site).
    pub fulfillment: Option<OrderId>,
    /// Its site.
    pub site: Option<oms_protocol::domain::NodeId>,
    /// SKU.
    pub sku: oms_protocol::domain::Sku,
    /// Units.
    pub qty: u32,
    /// `cancelled`, `cancel_requested` (the site confirms when it syncs; for a line cancel, only these units
    /// are cancelled and the rest of its part is placed again) or `not_cancellable`.
    pub result: &'static str,
    /// Why.
    pub reason: &'static str,
}

impl CancelledLine {
    /// Units that were placed at no site: cancelled at once.
    fn unplaced(l: &crate::routing::SkuQty) -> CancelledLine {
        CancelledLine {
            fulfillment: None,
            site: None,
            sku: l.sku.clone(),
            qty: l.qty,
            result: "cancelled",
            reason: "not yet placed at any site",
        }
    }
}

#[utoipa::path(post, path = "/v1/orders/{id}/cancel", tag = "orders", params(("id" = String, Path, description = "The order id")),
    request_body(content = Option<Object>, description = "Optional `{\"reason\"}`; with `\"lines\": [{\"sku\", \"qty\"}]` only those units: waiting ones at once, the rest asked of the sites holding them and not shipped (the rest of such a site's part is placed again); more than can be cancelled is `409 units_not_waiting`"),
    responses((status = 202, description = "Cancellation requested, line by line (with `lines`: those units cancelled at once)", body = Cancelled)))]
async fn cancel(
    State(hub): State<Arc<Hub>>,
    principal: Principal,
    Caller(actor): Caller,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let (reason, lines) = cancel_body(&body)?;
    let v = match lines {
        Some(lines) => cancel_order_lines(&hub, &principal, actor, &id, lines, reason).await?,
        None => cancel_order(&hub, &principal, actor, &id, reason).await?,
    };
    Ok((StatusCode::ACCEPTED, Json(v)).into_response())
}

/// Cancels hub order `id` for `principal` (a channel only its own; service with a reason), writes the
/// cancellation requests into the open fulfillments' documents and tells their sites; the answer of
/// `POST /v1/orders/{id}/cancel`, line by line. The cancel screen calls it too.
pub(crate) async fn cancel_order(
    hub: &Arc<Hub>,
    principal: &Principal,
    actor: Actor,
    id: &str,
    reason: Option<String>,
) -> Result<Cancelled, Problem> {
    let id = hub_order_id(id)?;
    reason_given(principal, reason.as_deref(), "an order")?;
    let h = hub.clone();
    let key = id.to_string();
    let confined = principal.confined_to().cloned();
    let order =
        blocking(move || h.intake.request_cancel(&key, confined.as_ref(), reason.as_deref(), &actor, now_ms())).await?;
    let now = now_ms();
    let mut lines = Vec::new();
    let mut tell = Vec::new();
    for f in &order.fulfillments {
        if f.released.is_some() {
            continue;
        }
        let st = fo_state(hub, &f.id).status;
        let (result, reason) = match st {
            Some(FulfillmentState::Shipped | FulfillmentState::Delivered) => ("not_cancellable", "already shipped"),
            Some(FulfillmentState::Cancelled | FulfillmentState::Rejected) => ("cancelled", "cancelled at the site"),
            _ => ("cancel_requested", "the site confirms the cancellation when it syncs"),
        };
        if result == "cancel_requested" {
            ask_site_to_cancel(hub, &f.id, now, &mut tell)?;
        }
        for l in &f.lines {
            lines.push(CancelledLine {
                fulfillment: Some(f.id.clone()),
                site: Some(f.site.clone()),
                sku: l.sku.clone(),
                qty: l.qty,
                result,
                reason,
            });
        }
    }
    // The void is an intake commit (fsync): on a blocking thread, not on this async worker.
    let (h, o) = (hub.clone(), order.clone());
    blocking(move || {
        settle_if_final(&h, &o, now);
        Ok::<(), IntakeError>(())
    })
    .await?;
    lines.extend(order.cancelled_unfilled.iter().map(CancelledLine::unplaced));
    flush_and_tell(hub, tell).await?;
    Ok(Cancelled { id: order.id, cancel_requested_at_ms: order.cancel_requested_at_ms, lines, unfilled: None })
}

/// What `POST /v1/orders/{id}/route` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RouteNowAnswer {
    /// The order.
    pub id: String,
    /// Whether this round placed any unit (`false`: no site can take any of them now; the watcher keeps
    /// trying every second).
    pub routed: bool,
    /// Units still waiting for stock after it.
    pub unfilled: Vec<crate::routing::SkuQty>,
}

#[utoipa::path(post, path = "/v1/orders/{id}/route", tag = "orders", params(("id" = String, Path, description = "The order id")),
    request_body(content = Option<Object>, description = "Empty, or `{}`: nothing is read"),
    responses((status = 200, description = "The order's waiting units routed now (audited); `routed: false` when no site can take any of them", body = RouteNowAnswer)))]
async fn route_now(
    State(hub): State<Arc<Hub>>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    Ok(Json(route_waiting_now(&hub, actor, &id).await?).into_response())
}

/// Routes hub order `id`'s units waiting for stock now, for `actor` (customer service), rather than at the
/// watcher's next pass ([`crate::intake::Intake::reroute_by`], audited): new fulfillments are written like the
/// watcher's, and the payment settled if that left the order final.
pub(crate) async fn route_waiting_now(hub: &Arc<Hub>, actor: Actor, id: &str) -> Result<RouteNowAnswer, Problem> {
    let id = hub_order_id(id)?.to_string();
    let (h, key) = (hub.clone(), id.clone());
    let routed = blocking(move || {
        let now = now_ms();
        let sites = site_facts(&h, now);
        let r = h.intake.reroute_by(&key, &sites, &actor, now)?;
        if let Some((order, effects)) = &r {
            // The intake's commit is the record: a start re-creates documents a failure here did not write.
            if let Err(e) = apply_effects(&h, effects) {
                tracing::warn!(order = %key, error = %e, "cannot write re-routed fulfillments");
            }
            settle_if_final(&h, order, now);
        }
        Ok::<bool, IntakeError>(r.is_some())
    })
    .await?;
    let (h, key) = (hub.clone(), id.clone());
    let order = blocking(move || h.intake.order(&key)).await?.ok_or_else(|| not_found(&id))?;
    Ok(RouteNowAnswer { id, routed, unfilled: order.unfilled })
}

/// Writes a cancellation request into fulfillment `id`'s document (the site cancels what it has not shipped
/// when it syncs), adding to `tell` the nodes to wake. Made durable by [`flush_and_tell`].
fn ask_site_to_cancel(hub: &Hub, id: &OrderId, now: u64, tell: &mut Vec<String>) -> Result<(), EffectsError> {
    let Some(name) = schema::order_doc(id) else { return Ok(()) };
    let nodes = lock(&hub.docs)
        .write_local(&name, |d| schema::request_cancel(d, now))
        .map_err(|source| EffectsError::Document { doc: name.clone(), source })?;
    tell.extend(nodes);
    Ok(())
}

/// Makes the documents' writes durable before an answer (the fsync without the documents' lock and off this
/// worker), then wakes the sessions of `tell`.
async fn flush_and_tell(hub: &Arc<Hub>, mut tell: Vec<String>) -> Result<(), Problem> {
    crate::server::flush_docs(hub)
        .await
        .map_err(|e| Problem::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", e.to_string()))?;
    tell.sort();
    tell.dedup();
    hub.poke(&tell);
    Ok(())
}

/// `GET /v1/track/{token}`: the customer's view behind a tracking token.
#[utoipa::path(get, path = "/v1/track/{token}", tag = "orders", params(("token" = String, Path, description = "The order's tracking token")),
    responses((status = 200, description = "What the customer may see of the order", body = CustomerView)))]
async fn track(State(hub): State<Arc<Hub>>, Path(token): Path<String>) -> Result<Response, Problem> {
    let h = hub.clone();
    let view = blocking(move || -> Result<_, Problem> {
        Ok(h.intake.order_by_tracking_token(&token)?.map(|o| customer_view(&h, &o)))
    })
    .await?;
    let view = view
        .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "tracking_not_found", "no order has this tracking link"))?;
    Ok(Json(view).into_response())
}

/// What a customer may see of their order, as the tracking page reads it ([`customer_view`]).
pub(crate) fn tracking_view(hub: &Hub, o: &HubOrder) -> Value {
    json!(customer_view(hub, o))
}

/// What a customer may see of their order: status, lines, shipments with the carrier's tracking number and
/// a timeline of customer-facing steps. No site, fulfillment id, routing, address, price or other order.
pub(crate) fn customer_view(hub: &Hub, o: &HubOrder) -> CustomerView {
    let full = order_view(hub, o);
    let lines =
        full.lines.iter().map(|l| CustomerLine { sku: l.sku.clone(), qty: l.qty, shipped: l.shipped }).collect();
    let shipments = full
        .fulfillments
        .iter()
        .filter_map(|f| {
            let s = f.shipment.as_ref()?;
            Some(CustomerShipment {
                carrier: s.carrier.clone(),
                tracking: s.tracking.clone(),
                parcels: s.parcels,
                status: f.status,
                tracking_status: f.tracking_status.clone().flatten(),
            })
        })
        .collect();
    // Routing steps (`assigned`, a site's `rejected`) are the hub's business, not the customer's.
    let mut timeline = vec![CustomerStep { at_ms: o.created_at_ms, status: "received".into() }];
    timeline.extend(
        full.timeline
            .iter()
            .filter(|t| !matches!(t.status.as_str(), "assigned" | "rejected"))
            .map(|t| CustomerStep { at_ms: t.at_ms, status: t.status.clone() }),
    );
    if let Some(at) = o.cancel_requested_at_ms {
        timeline.push(CustomerStep { at_ms: at, status: "cancel_requested".into() });
    }
    timeline.sort_by_key(|t| t.at_ms);
    // Per carrier service of each live fulfillment: when it leaves and when it should arrive.
    let deliveries = o
        .fulfillments
        .iter()
        .filter(|f| f.released.is_none())
        .filter_map(|f| f.promise.as_ref())
        .flat_map(|p| p.services.iter())
        .map(|s| CustomerDelivery {
            carrier: s.carrier.clone(),
            service: s.service.clone(),
            ship_by: shipping::rfc3339(s.ship_by_ms),
            estimated_delivery: s.estimated_delivery.clone(),
        })
        .collect();
    CustomerView {
        external_ref: o.draft.external_ref.clone(),
        created_at_ms: o.created_at_ms,
        status: full.status,
        lines,
        shipments,
        timeline,
        promised_ship_by: full.promised_ship_by,
        deliveries,
    }
}

/// What `GET /v1/track/{token}` shows a customer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerView {
    /// The channel's reference of the order.
    pub external_ref: String,
    /// When taken, ms.
    pub created_at_ms: u64,
    /// The order's status, as `GET /v1/orders/{id}` says it.
    pub status: &'static str,
    /// Units ordered and shipped per line.
    pub lines: Vec<CustomerLine>,
    /// Each shipment with its carrier's tracking number.
    pub shipments: Vec<CustomerShipment>,
    /// The customer-facing steps, oldest first.
    pub timeline: Vec<CustomerStep>,
    /// When the order should ship, RFC 3339.
    pub promised_ship_by: Option<String>,
    /// Per carrier service: when it leaves and should arrive.
    pub deliveries: Vec<CustomerDelivery>,
}

/// One line of a customer's order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerLine {
    /// SKU.
    pub sku: oms_protocol::domain::Sku,
    /// Units ordered.
    pub qty: u32,
    /// Units shipped.
    pub shipped: u64,
}

/// One shipment of a customer's order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerShipment {
    /// The carrier.
    pub carrier: String,
    /// Its tracking number.
    pub tracking: String,
    /// Parcels.
    pub parcels: u32,
    /// The part's status.
    pub status: &'static str,
    /// The carrier's last word on it.
    pub tracking_status: Option<String>,
}

/// One customer-facing step.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerStep {
    /// When, ms.
    pub at_ms: u64,
    /// What happened.
    pub status: String,
}

/// When a carrier service leaves and should arrive.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerDelivery {
    /// The carrier.
    pub carrier: String,
    /// Its service.
    pub service: String,
    /// The cut-off, RFC 3339.
    pub ship_by: Option<String>,
    /// The estimated delivery date, `YYYY-MM-DD`.
    pub estimated_delivery: String,
}

/// One pass of the watcher: merge escrow views, re-route released fulfillments, retry waiting orders.
pub fn watch_once(hub: &Hub, retry: bool) {
    let changed = lock(&hub.docs).take_changed();
    let now = now_ms();
    let mut released: BTreeMap<String, Vec<(OrderId, String)>> = BTreeMap::new();
    // (fulfillment, its customer order, site, units shipped per SKU)
    type Shipped = (OrderId, Option<String>, String, Vec<(String, u64)>);
    let mut shipped: Vec<Shipped> = Vec::new();
    let mut seen = Vec::new();
    for doc in changed {
        match DocKind::of(&doc) {
            Some(DocKind::Stock(site)) => {
                let (counters, stock) = {
                    let mut docs = lock(&hub.docs);
                    // The SKUs the changes touched, taken under the same hold of the lock as the read.
                    let touched = docs.take_stock_touched(&doc);
                    let d = docs.get(&doc);
                    (
                        d.as_ref().and_then(|d| schema::read_escrow(d, usize::MAX).ok()).map(|(c, _)| c),
                        d.as_ref().and_then(|d| crate::events::watch::read_stock_change(d, &doc, touched)),
                    )
                };
                let (db, at, low_at) = (hub.intake.db(), site.as_str(), hub.stock_low_at);
                let reported = match &stock {
                    Some(StockRead::Whole(skus)) => crate::events::watch::report_stock(db, at, skus, low_at, now),
                    Some(StockRead::Touched(skus)) => {
                        crate::events::watch::report_stock_skus(db, at, skus, low_at, now)
                    }
                    None => Ok(0),
                };
                match reported {
                    // Capped: the rest are found by the next change's whole read.
                    Ok(n) if n >= crate::events::watch::STOCK_LOW_EVENTS_MAX => lock(&hub.docs).reread_stock(&doc),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(%site, error = %e, "cannot record the site's stock.low events");
                        lock(&hub.docs).reread_stock(&doc);
                    }
                }
                crate::purchasing::sites::apply_site_receipts(hub, &site, &doc);
                crate::returns::sites::apply_site_receipts(hub, &site, &doc);
                let Some(counters) = counters else { continue };
                match hub.intake.merge_site(&site, counters, now) {
                    Ok(publish) if !publish.is_empty() => {
                        let effects = Effects {
                            fulfillments: vec![],
                            escrow: publish.into_iter().map(|c| (site.clone(), c)).collect(),
                        };
                        if let Err(e) = apply_effects(hub, &effects) {
                            tracing::warn!(%site, error = %e, "cannot publish escrow");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(%site, error = %e, "cannot merge a site's escrow view"),
                }
            }
            Some(DocKind::Order(id)) if schema::order_origin(&id) == Some(HUB_ORIGIN) => {
                let docs = lock(&hub.docs);
                let Some(view) = docs.get(&doc).and_then(|d| schema::read_order(&d, doc.as_str()).ok()) else {
                    continue;
                };
                let delivered_frozen = carrier_delivered_frozen(hub, &view).is_some();
                let Some(p) = view.progress else { continue };
                seen.extend(
                    crate::events::watch::FulfillmentSeen::of(
                        &view.id,
                        view.parent.as_deref(),
                        &view.site,
                        &view.draft.channel,
                        &p,
                    )
                    .map(|mut f| {
                        // A carrier delivery the site could not apply (frozen as shipped) is reported once too.
                        if delivered_frozen {
                            f.status = FulfillmentState::Delivered;
                        }
                        f
                    }),
                );
                if matches!(p.status, FulfillmentState::Shipped | FulfillmentState::Delivered) {
                    let lines = p.lines.iter().map(|l| (l.sku.to_string(), u64::from(l.shipped))).collect();
                    shipped.push((view.id.clone(), view.parent.clone(), view.site.to_string(), lines));
                }
                if matches!(p.status, FulfillmentState::Rejected | FulfillmentState::Cancelled)
                    && let Some(parent) = view.parent
                {
                    released.entry(parent).or_default().push((view.id, p.status.as_str().to_owned()));
                }
            }
            _ => {}
        }
    }
    // Each shipment is billed (invoice and capture row, once) before the fulfillment stops being live, so a
    // crash in between bills it at the next start.
    let mut finished = Vec::new();
    let mut parents = BTreeSet::new();
    for (id, parent, site, lines) in shipped {
        let billed = match &parent {
            Some(parent) => {
                hub.money.bill_shipment(hub.intake.db(), id.as_str(), parent, &site, &lines, now).map(|_| ())
            }
            None => Ok(()),
        };
        match billed {
            Ok(()) => {
                finished.push(id);
                parents.extend(parent);
            }
            Err(e) => tracing::warn!(fulfillment = %id, error = %e, "cannot bill a shipment; a start will try again"),
        }
    }
    // An order whose last shipment this was is final: the rest of its authorization is released, still before
    // its fulfillments stop being live (a crash in between releases it at the next start).
    for parent in parents {
        match hub.intake.order(&parent) {
            Ok(Some(o)) => settle_if_final(hub, &o, now),
            Ok(None) => {}
            Err(e) => tracing::warn!(order = %parent, error = %e, "cannot read an order to settle its payment"),
        }
    }
    // Their events before they leave the open work, so a failure here leaves them for a start to read again.
    if let Err(e) = crate::events::watch::report_fulfillments(hub.intake.db(), &seen, now) {
        tracing::warn!(error = %e, "cannot record the fulfillments' events; reading their documents again");
        lock(&hub.docs).requeue(seen.iter().filter_map(|f| schema::order_doc(&f.id)));
        finished.clear();
    }
    if let Err(e) = hub.intake.finished(&finished) {
        tracing::warn!(error = %e, "cannot note finished fulfillments; a start will look at them again");
    }
    if retry {
        crate::returns::sites::tick(hub);
    }
    let mut ids: Vec<String> = released.keys().cloned().collect();
    if retry {
        for id in hub.intake.open_orders(RETRY_BATCH_MAX) {
            if !released.contains_key(&id) {
                ids.push(id);
            }
        }
    }
    if ids.is_empty() {
        return;
    }
    let sites = site_facts(hub, now);
    for id in ids {
        let rel = released.remove(&id).unwrap_or_default();
        match hub.intake.reroute(&id, &rel, &sites, now) {
            Ok(Some((order, effects))) => {
                if let Err(e) = apply_effects(hub, &effects) {
                    tracing::warn!(order = %id, error = %e, "cannot write re-routed fulfillments");
                }
                settle_if_final(hub, &order, now);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(order = %id, error = %e, "re-routing failed"),
        }
    }
}

/// Settles the payment of an order that reached its final state: nothing left to place (or cancelled) and
/// every fulfillment shipped or given back. An order nothing was invoiced for is voided (cancelled before
/// anything shipped; a site that ships before it sees the cancellation gets its shipment captured
/// instead); otherwise what it will never capture is released ([`crate::money::Money::settle_final`]).
fn settle_if_final(hub: &Hub, order: &HubOrder, now: u64) {
    if !order.unfilled.is_empty() {
        return;
    }
    let mut shipped = Vec::new();
    for f in order.fulfillments.iter().filter(|f| f.released.is_none()) {
        match fo_state(hub, &f.id).status {
            Some(FulfillmentState::Shipped | FulfillmentState::Delivered) => shipped.push(f.id.as_str()),
            // Still at its site, or given back and not re-routed yet: not final.
            _ => return,
        }
    }
    if let Err(e) = hub.money.settle_final(hub.intake.db(), order.id.as_str(), &shipped, now) {
        tracing::warn!(order = %order.id, error = %e, "cannot queue the void or release of a final order");
    }
}

/// At start: re-creates the fulfillment documents committed before a crash but not written, republishes
/// the escrow views, and queues for the watcher the other fulfillments a site has not finished with and every
/// stock document. Reads the open work only ([`crate::intake::Intake::live_fulfillments`]), not every order.
pub fn recover(hub: &Hub) -> Result<(), EffectsError> {
    let live = hub.intake.live_fulfillments()?;
    // Only documents that are missing: recreating one that exists would be a no-op, but would load it.
    let (missing, present): (Vec<NewFulfillment>, Vec<NewFulfillment>) = {
        let docs = lock(&hub.docs);
        live.into_iter().partition(|f| schema::order_doc(&f.id).is_some_and(|d| !docs.db().contains(&d)))
    };
    let mut escrow = Vec::new();
    for site in hub.intake.escrow_sites() {
        for c in hub.intake.escrow_of_site(&site) {
            escrow.push((site.clone(), c));
        }
    }
    apply_effects(hub, &Effects { fulfillments: missing, escrow })?;
    // And the shipped ones whose delivery is still to be reported (the intake no longer tracks them).
    let unfinished = crate::events::watch::unfinished(hub.intake.db()).map_err(|e| EffectsError::Intake(e.into()))?;
    lock(&hub.docs).requeue(present.iter().map(|f| &f.id).chain(&unfinished).filter_map(schema::order_doc));
    // Requeued above, the stock documents bring back any site receipt not applied yet.
    if let Err(e) = crate::purchasing::sites::publish_open(hub) {
        tracing::warn!(error = %e, "purchasing: cannot publish the open orders to their sites");
    }
    if let Err(e) = crate::returns::sites::publish_open(hub) {
        tracing::warn!(error = %e, "returns: cannot publish the open RMAs to their sites");
    }
    settle_due(hub);
    Ok(())
}

/// Orders settled per start at most (each is one read and at most one commit); the rest wait for the next
/// start, or settle on their own when their last shipment is billed.
pub const SETTLE_DUE_AT_START_MAX: usize = 100_000;

/// Settles the payments a crash left due: a cancel, line cancel or re-route made the order final and committed,
/// and the hub died before [`crate::money::Money::settle_final`] did (the change noted it in its transaction).
/// An order that is not final yet keeps its note until its last shipment settles it.
fn settle_due(hub: &Hub) {
    let due = match hub.money.settle_due(hub.intake.db(), SETTLE_DUE_AT_START_MAX) {
        Ok(d) => d,
        Err(e) => return tracing::warn!(error = %e, "cannot read the payments due to be settled"),
    };
    let now = now_ms();
    for id in due {
        match hub.intake.order(&id) {
            Ok(Some(o)) => settle_if_final(hub, &o, now),
            Ok(None) => {}
            Err(e) => tracing::warn!(order = %id, error = %e, "cannot read an order to settle its payment"),
        }
    }
}

/// Least time between two passes of the watcher, ms: the changes nodes make meanwhile are taken together,
/// so a busy hub merges each site's escrow view (an intake commit, under the intake's lock) a few dozen
/// times a second rather than once per change a node sends.
pub const WATCH_GAP_MS: u64 = 25;

/// Runs the watcher until the runtime stops.
pub async fn watch(hub: Arc<Hub>) {
    let mut tick = tokio::time::interval(Duration::from_millis(WATCH_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let retry = tokio::select! {
            () = hub.node_changes.notified() => false,
            _ = tick.tick() => true,
        };
        tokio::time::sleep(Duration::from_millis(WATCH_GAP_MS)).await;
        let h = hub.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || watch_once(&h, retry)).await {
            tracing::error!(error = %e, "the routing watcher failed; continuing");
        }
        // The carriers' deliveries the watcher (a shipment matched late) or a webhook left due.
        crate::tracking::deliver_due(&hub).await;
    }
}
