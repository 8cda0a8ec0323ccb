//! HTTP for events: the pull feed and the webhook subscriptions.
//!
//! - `GET /v1/events?after=&limit=&types=&wait_ms=`: events after sequence `after` (default 0), at most
//!   `limit` (default 100, at most [`super::PAGE_MAX`]), of the comma-separated `types` (names or `family.*`;
//!   default all), in sequence order, with the same ids as the webhooks. `next_after` is where to continue
//!   (the last sequence looked at, which a type filter or a channel may have skipped). With `wait_ms` (at
//!   most [`WAIT_MS_MAX`]) an empty answer waits that long for a new event (long-poll). A channel key sees
//!   its own orders' events only; an admin key sees all.
//! - `POST /v1/webhooks` `{"url", "types"?, "channel"?, "after"?}` → `201` with the subscription and its
//!   `secret` (shown this once); `GET /v1/webhooks` (the caller's: a channel key's own, an admin's all,
//!   with their state and last error); `DELETE /v1/webhooks/{id}` → `204`. See [`super::webhooks`].
//!
//! Creates and deletes are written to the audit trail in the same transaction.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use oms_service::auth::Principal;
use oms_service::{Problem, RawBody};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::webhooks::{self, WebhookError, WebhooksConfig};
use super::{PAGE_MAX, TypeFilter};
use crate::orders::Caller;
use crate::server::Hub;

/// Longest long-poll of `GET /v1/events`, ms (below the server's default request timeout).
pub const WAIT_MS_MAX: u64 = 20_000;
/// How often a long-poll looks for new events, ms.
const WAIT_POLL_MS: u64 = 20;
/// Most log rows one feed request looks at (a narrow filter over a long log answers short pages).
pub const FEED_SCAN_MAX: usize = 10_000;

/// The routes of this module. The `[webhooks]` settings come as an [`Extension`] (the defaults without it).
pub fn router(hub: Arc<Hub>) -> OpenApiRouter {
    OpenApiRouter::new().routes(routes!(feed)).routes(routes!(list, create)).routes(routes!(remove)).with_state(hub)
}

/// The settings the routes use, for the router's `layer`.
pub fn settings(cfg: WebhooksConfig) -> Extension<WebhooksConfig> {
    Extension(cfg)
}

type St = State<Arc<Hub>>;

/// A page of `GET /v1/events`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventsPage {
    /// The events, in sequence order.
    pub events: Vec<super::Event>,
    /// Where the next page starts (`after`): the last sequence looked at.
    pub next_after: u64,
}

/// The answer of `GET /v1/webhooks`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Webhooks {
    /// The caller's subscriptions.
    pub webhooks: Vec<webhooks::SubscriptionView>,
}
type Cfg = Option<Extension<WebhooksConfig>>;

fn bad_query(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "invalid_query", detail)
}

fn number(q: &HashMap<String, String>, name: &str) -> Result<Option<u64>, Problem> {
    q.get(name).map(|v| v.parse::<u64>().map_err(|_| bad_query(format!("{name} must be a whole number")))).transpose()
}

fn storage(e: impl std::fmt::Display) -> Problem {
    tracing::error!(error = %e, "events storage failure");
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", e.to_string())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Problem> + Send + 'static) -> Result<T, Problem> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("task failed: {e}")))?
}

#[utoipa::path(get, path = "/v1/events", tag = "events", params(
        ("after" = Option<u64>, Query, description = "Events after this sequence (default 0)"),
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 1000, description = "Page size (default 100)"),
        ("types" = Option<String>, Query, description = "Comma-separated types or families (`order.*`)"),
        ("wait_ms" = Option<u64>, Query, maximum = 20000, description = "Long-poll this long when there is none yet")),
    responses((status = 200, description = "A page of events, with the webhooks' event ids", body = EventsPage)))]
async fn feed(
    State(hub): St,
    principal: Principal,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    if let Some(bad) = q.keys().find(|k| !matches!(k.as_str(), "after" | "limit" | "types" | "wait_ms")) {
        return Err(bad_query(format!("unknown parameter {bad:?}")));
    }
    let after = number(&q, "after")?.unwrap_or(0);
    let limit = usize::try_from(number(&q, "limit")?.unwrap_or(100)).unwrap_or(usize::MAX);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(bad_query(format!("limit must be within 1 ..= {PAGE_MAX}")));
    }
    let wait_ms = number(&q, "wait_ms")?.unwrap_or(0);
    if wait_ms > WAIT_MS_MAX {
        return Err(bad_query(format!("wait_ms must be at most {WAIT_MS_MAX}")));
    }
    let types: Vec<&str> = q.get("types").map(|t| t.split(',').filter(|s| !s.is_empty()).collect()).unwrap_or_default();
    let types = TypeFilter::parse(&types).map_err(bad_query)?;
    let channel = principal.confined_to().cloned();
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    loop {
        let (h, t, c) = (hub.clone(), types.clone(), channel.clone());
        let page =
            blocking(move || super::page(h.intake.db(), after, limit, &t, c.as_ref(), FEED_SCAN_MAX).map_err(storage))
                .await?;
        if !page.events.is_empty() || page.last_seq > after || Instant::now() >= deadline {
            return Ok(Json(EventsPage { events: page.events, next_after: page.last_seq }).into_response());
        }
        tokio::time::sleep(Duration::from_millis(WAIT_POLL_MS)).await;
    }
}

impl From<WebhookError> for Problem {
    fn from(e: WebhookError) -> Self {
        let detail = e.to_string();
        match e {
            WebhookError::Invalid { field, .. } => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_webhook", detail).with("field", field)
            }
            WebhookError::TooMany(_) => Problem::new(StatusCode::CONFLICT, "too_many_webhooks", detail),
            WebhookError::NotFound(_) => Problem::new(StatusCode::NOT_FOUND, "webhook_not_found", detail),
            WebhookError::Storage(e) => storage(e),
        }
    }
}

#[utoipa::path(post, path = "/v1/webhooks", tag = "events", request_body = webhooks::NewSubscription,
    responses((status = 201, description = "The subscription and its signing `secret` (shown this once)", body = webhooks::SubscriptionView)))]
async fn create(
    State(hub): St,
    cfg: Cfg,
    principal: Principal,
    Caller(actor): Caller,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let new: webhooks::NewSubscription = oms_service::parse_json(&body)?;
    let cfg = cfg.map(|c| c.0).unwrap_or_default();
    let channel = principal.confined_to().cloned();
    let (sub, secret) = blocking(move || {
        webhooks::create(hub.intake.db(), &cfg, new, &actor, channel.as_ref(), oms_service::now_ms())
            .map_err(Problem::from)
    })
    .await?;
    let view = webhooks::SubscriptionView { secret: Some(secret), ..sub.view() };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[utoipa::path(get, path = "/v1/webhooks", tag = "events",
    responses((status = 200, description = "The caller's subscriptions with their state and last error", body = Webhooks)))]
async fn list(State(hub): St, cfg: Cfg, principal: Principal) -> Result<Response, Problem> {
    let cfg = cfg.map(|c| c.0).unwrap_or_default();
    let channel = principal.confined_to().cloned();
    let subs =
        blocking(move || webhooks::list(hub.intake.db(), channel.as_ref(), cfg.subscriptions_max).map_err(storage))
            .await?;
    Ok(Json(Webhooks { webhooks: subs.iter().map(webhooks::Subscription::view).collect() }).into_response())
}

#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "events", params(("id" = String, Path, description = "The subscription id")),
    responses((status = 204, description = "Deleted")))]
async fn remove(
    State(hub): St,
    principal: Principal,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    if !webhooks::id_well_formed(&id) {
        return Err(WebhookError::NotFound(id).into());
    }
    let channel = principal.confined_to().cloned();
    blocking(move || {
        webhooks::delete(hub.intake.db(), &id, channel.as_ref(), &actor, oms_service::now_ms()).map_err(Problem::from)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
