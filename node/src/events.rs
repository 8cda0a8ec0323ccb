//! `GET /v1/events?after=&limit=&wait_ms=`: the node's own events, for local integrations (a label
//! printer, a conveyor, a local ERP), served from the store's change feed, so it works whether or not the
//! hub is reachable.
//!
//! Each entry of the change feed (an order, a SKU's balance or a catalog item changed, committed with that
//! change) is one event: `seq` is the feed's sequence, `id` is `nevt_<seq>` (unique on this node), `type` is
//! `order.changed`, `stock.changed` or `catalog.changed`, and `data` is the record **as it is now** (so
//! two events of one order may show the same latest state; the sequence says the order of the changes). A
//! channel key sees only its own channel's orders' events; staff, planners and admin see all. `next_after`
//! is where to continue; with `wait_ms` (at most [`WAIT_MS_MAX`]) an empty answer waits that long for one.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use oms_service::Problem;
use oms_service::auth::Principal;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::store::FeedEntry;

/// Largest page.
pub(crate) const PAGE_MAX: usize = 1_000;
/// Longest long-poll, ms (below the server's default request timeout).
pub(crate) const WAIT_MS_MAX: u64 = 20_000;
const WAIT_POLL_MS: u64 = 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    after: Option<u64>,
    limit: Option<usize>,
    wait_ms: Option<u64>,
}

fn bad(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "invalid_query", detail)
}

pub(crate) async fn feed(
    State(st): State<AppState>,
    principal: Principal,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = q.map_err(|e| bad(format!("bad query string: {e}")))?;
    let after = q.after.unwrap_or(0);
    let limit = q.limit.unwrap_or(100);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(bad(format!("limit must be within 1 ..= {PAGE_MAX}")));
    }
    let wait_ms = q.wait_ms.unwrap_or(0);
    if wait_ms > WAIT_MS_MAX {
        return Err(bad(format!("wait_ms must be at most {WAIT_MS_MAX}")));
    }
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    let confined = principal.confined_to().cloned();
    loop {
        let entries = st.store.feed_after(after, limit)?;
        if !entries.is_empty() || Instant::now() >= deadline {
            let next_after = entries.last().map_or(after, |(seq, _)| *seq);
            let mut events = Vec::with_capacity(entries.len());
            for (seq, entry) in entries {
                if let Some(e) = event(&st, seq, entry, confined.as_ref())? {
                    events.push(e);
                }
            }
            return Ok(Json(json!({"events": events, "next_after": next_after})).into_response());
        }
        tokio::time::sleep(Duration::from_millis(WAIT_POLL_MS)).await;
    }
}

/// The event of feed entry `seq`, if the caller may see it.
fn event(
    st: &AppState,
    seq: u64,
    entry: FeedEntry,
    confined: Option<&oms_protocol::domain::Channel>,
) -> Result<Option<Value>, Problem> {
    let (kind, subject, data) = match entry {
        FeedEntry::Order(id) => {
            let Some(o) = st.store.order(&id)? else { return Ok(None) };
            if confined.is_some_and(|c| &o.order.channel != c) {
                return Ok(None);
            }
            let data = json!({"status": o.status, "site": o.site, "channel": o.order.channel,
                "external_ref": o.order.external_ref, "lines": o.lines, "shipment": o.shipment});
            ("order.changed", json!({"order_id": id}), data)
        }
        _ if confined.is_some() => return Ok(None),
        FeedEntry::Stock(sku) => {
            let balance = st.store.balance(&sku)?;
            ("stock.changed", json!({"sku": sku}), json!({"balance": balance}))
        }
        FeedEntry::Catalog(sku) => {
            let item = st.store.catalog_item(&sku)?;
            ("catalog.changed", json!({"sku": sku}), json!({"item": item}))
        }
    };
    let mut e = json!({"id": format!("nevt_{seq}"), "seq": seq, "type": kind, "data": data});
    if let (Some(obj), Value::Object(s)) = (e.as_object_mut(), subject) {
        obj.extend(s);
    }
    Ok(Some(e))
}
