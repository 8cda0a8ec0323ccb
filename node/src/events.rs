//! `GET /v1/events?after=&limit=&wait_ms=`: the node's own events, for local integrations (a label
//! printer, a conveyor, a local ERP), served from the store's change feed, so it works whether or not the
//! hub is reachable.
//!
//! Each entry of the change feed (an order, a SKU's balance or a catalog item changed, committed with that
//! change) is one event: `seq` is the feed's sequence, `id` is `nevt_<seq>` (unique on this node), `type` is
//! `order.changed`, `stock.changed` or `catalog.changed`, and `data` is the record **as it is now** (so
//! two events of one order may show the same latest state; the sequence says the order of the changes). A
//! channel key sees only its own channel's orders' events; staff, planners and admin see all. `next_after`
//! is where to continue; with `wait_ms` (at most [`WAIT_MS_MAX`]) an empty answer waits that long for one,
//! and is answered as soon as the store's writer commits it ([`crate::store::Store::commit_watch`]).

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
    let entries = wait_for(st.store.commit_watch(), deadline, || st.store.feed_after(after, limit)).await?;
    let next_after = entries.last().map_or(after, |(seq, _)| *seq);
    let mut events = Vec::with_capacity(entries.len());
    for (seq, entry) in entries {
        if let Some(e) = event(&st, seq, entry, confined.as_ref())? {
            events.push(e);
        }
    }
    Ok(Json(EventsPage { events, next_after }).into_response())
}

/// Reads with `read` until it finds something or `deadline` passes, reading again only after a commit
/// (`commits` was subscribed before the first read, so a commit between a read and the wait still wakes it):
/// a long-poll answers as soon as its event is committed and costs no reads while nothing is.
async fn wait_for<T, E>(
    mut commits: tokio::sync::watch::Receiver<u64>,
    deadline: Instant,
    mut read: impl FnMut() -> Result<Vec<T>, E>,
) -> Result<Vec<T>, E> {
    loop {
        commits.borrow_and_update();
        let found = read()?;
        if !found.is_empty() || Instant::now() >= deadline {
            return Ok(found);
        }
        match tokio::time::timeout_at(deadline.into(), commits.changed()).await {
            Ok(Ok(())) => {}
            // The deadline passed, or the writer is gone (the node is stopping): one last read answers.
            Ok(Err(_)) | Err(_) => return read(),
        }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use super::wait_for;

    /// A long-poll with nothing to find reads once, waits out its deadline without reading, and reads once
    /// more: it does not poll the store while nothing is committed.
    #[tokio::test]
    async fn a_long_poll_reads_only_after_a_commit_or_at_its_deadline() {
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        let reads = AtomicUsize::new(0);
        let started = Instant::now();
        let got: Result<Vec<u8>, ()> = wait_for(rx, started + Duration::from_millis(300), || {
            reads.fetch_add(1, Ordering::SeqCst);
            Ok(Vec::new())
        })
        .await;
        assert_eq!(got, Ok(Vec::new()));
        assert!(started.elapsed() >= Duration::from_millis(300), "it waited its deadline");
        assert_eq!(reads.load(Ordering::SeqCst), 2, "one read before the wait, one at the deadline");
        drop(tx);
    }

    /// A commit wakes the long-poll, which reads again and answers with what it finds, long before its
    /// deadline; a commit that finds nothing new sends it back to waiting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_wakes_a_long_poll_which_answers_what_it_finds() {
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        let found = std::sync::Arc::new(AtomicUsize::new(0));
        let reads = std::sync::Arc::new(AtomicUsize::new(0));
        let (f, r) = (found.clone(), reads.clone());
        let poll = tokio::spawn(async move {
            wait_for(rx, Instant::now() + Duration::from_secs(30), move || {
                // Counted after the read, so a count the test sees is of a finished read.
                let page = vec![7u8; f.load(Ordering::SeqCst)];
                r.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(page)
            })
            .await
        });
        // A commit with nothing for this reader, then one with an event.
        for _ in 0..200 {
            if reads.load(Ordering::SeqCst) >= 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tx.send_modify(|n| *n += 1);
        for _ in 0..200 {
            if reads.load(Ordering::SeqCst) >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(reads.load(Ordering::SeqCst), 2, "the empty commit was read once");
        assert!(!poll.is_finished(), "an empty commit does not end the wait");
        found.store(1, Ordering::SeqCst);
        tx.send_modify(|n| *n += 1);
        let got = tokio::time::timeout(Duration::from_secs(10), poll).await.expect("woken by the commit").unwrap();
        assert_eq!(got, Ok(vec![7u8]));
        assert_eq!(reads.load(Ordering::SeqCst), 3);
    }
}
