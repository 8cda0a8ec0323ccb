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
use oms_protocol::domain::{OrderId, Sku};
use oms_service::Problem;
use oms_service::auth::Principal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::AppState;
use crate::store::FeedEntry;

/// Largest page.
pub(crate) const PAGE_MAX: usize = 1_000;
/// Longest long-poll, ms (below the server's default request timeout).
pub(crate) const WAIT_MS_MAX: u64 = 20_000;
const WAIT_POLL_MS: u64 = 20;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// Events after this sequence (default 0).
    after: Option<u64>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Wait up to this long for an event when there is none yet (long-poll), at most 20000.
    #[param(maximum = 20000)]
    wait_ms: Option<u64>,
}

/// A page of the node's events.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct EventsPage {
    /// Events by sequence.
    events: Vec<NodeEvent>,
    /// `after` of the next page.
    next_after: u64,
}

/// One event of the node's feed (see the module's doc).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct NodeEvent {
    /// `nevt_<seq>`, unique on this node.
    id: String,
    /// Position in the feed.
    seq: u64,
    /// `order.changed`, `stock.changed` or `catalog.changed`.
    #[serde(rename = "type")]
    kind: &'static str,
    /// The order of an `order.changed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    order_id: Option<OrderId>,
    /// The SKU of a `stock.changed` or `catalog.changed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    sku: Option<Sku>,
    /// The record as it is now: an order's status, site, channel, external_ref, lines and shipment; a SKU's
    /// `balance`; a catalog `item`.
    #[schema(value_type = Object)]
    data: Value,
}

fn bad(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "invalid_query", detail)
}

/// The node's own events after `after` (long-poll with `wait_ms`).
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery),
    responses((status = 200, description = "A page of events", body = EventsPage)))]
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
            return Ok(Json(EventsPage { events, next_after }).into_response());
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
) -> Result<Option<NodeEvent>, Problem> {
    let (kind, order_id, sku, data) = match entry {
        FeedEntry::Order(id) => {
            let Some(o) = st.store.order(&id)? else { return Ok(None) };
            if confined.is_some_and(|c| &o.order.channel != c) {
                return Ok(None);
            }
            let data = json!({"status": o.status, "site": o.site, "channel": o.order.channel,
                "external_ref": o.order.external_ref, "lines": o.lines, "shipment": o.shipment});
            ("order.changed", Some(id), None, data)
        }
        _ if confined.is_some() => return Ok(None),
        FeedEntry::Stock(sku) => {
            let balance = st.store.balance(&sku)?;
            ("stock.changed", None, Some(sku), json!({"balance": balance}))
        }
        FeedEntry::Catalog(sku) => {
            let item = st.store.catalog_item(&sku)?;
            ("catalog.changed", None, Some(sku), json!({"item": item}))
        }
        FeedEntry::Receipt(id) => {
            let receipt = st.store.po_receipt(&id)?;
            ("receipt.booked", None, None, json!({"receipt_id": id, "receipt": receipt}))
        }
        FeedEntry::RmaReceipt(id) => {
            let r = st.store.rma_receipt(&id)?;
            let data = json!({"receipt_id": id, "rma": r.as_ref().map(|r| &r.rma),
                              "lines": r.as_ref().map(|r| r.lines.iter().map(|l| json!({"sku": l.sku, "qty": l.qty, "disposition": l.disposition})).collect::<Vec<_>>())});
            ("return.received", None, None, data)
        }
    };
    Ok(Some(NodeEvent { id: format!("nevt_{seq}"), seq, kind, order_id, sku, data }))
}
