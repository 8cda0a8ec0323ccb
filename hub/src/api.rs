//! The hub's HTTP API (JSON): what an operator or a channel integration asks the hub.
//!
//! - `GET /v1/nodes`: each node's connection state, last sync, lag and refusal counters.
//! - `GET /v1/orders?site=&after=&limit=`: order ids and states as the hub sees them, with per-site counts.
//! - `GET /v1/orders/{id}`: one order: status, timeline, lines, shipment, as last synced from its node.
//! - `GET /v1/stock?sku=`: balances per SKU and site from the nodes' stock documents, with each site's
//!   freshness (when the node last wrote its stock document).
//! - `GET /v1/forecast/{sku}` and `GET /v1/replenishment`: demand forecasts and reorder suggestions, see
//!   [`crate::forecast_api`].
//!
//! Every handler reads documents under the hub's lock and answers from memory; lists are paged.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use oms_node::sync::link::now_ms;
use oms_node::sync::schema;
use oms_protocol::domain::OrderId;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::server::{Hub, lock};

/// Largest page of orders.
pub const ORDERS_PAGE_MAX: usize = 1_000;
/// Most SKUs read from one stock document.
pub const STOCK_SKUS_MAX: usize = 100_000;
/// Most stock documents (sites) read for one answer.
pub const STOCK_SITES_MAX: usize = 10_000;

/// The router.
pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/nodes", get(nodes))
        .route("/v1/orders", get(orders))
        .route("/v1/orders/{id}", get(order))
        .route("/v1/stock", get(stock))
        .with_state(hub.clone())
        .merge(crate::forecast_api::router(hub))
}

fn problem(status: StatusCode, detail: impl Into<String>) -> Response {
    (status, Json(json!({"status": status.as_u16(), "detail": detail.into()}))).into_response()
}

async fn nodes(State(hub): State<Arc<Hub>>) -> Json<Value> {
    let docs = lock(&hub.docs);
    let now = now_ms();
    let counts = docs.order_counts();
    let mut out = Vec::new();
    let mut names: Vec<String> = docs.nodes.keys().cloned().collect();
    for site in counts.keys() {
        if !names.contains(site) {
            names.push(site.clone());
        }
    }
    names.sort();
    for name in names {
        let st = docs.nodes.get(&name).cloned().unwrap_or_default();
        let stock_updated_at_ms = oms_protocol::domain::NodeId::parse(&name)
            .ok()
            .and_then(|n| schema::stock_doc(&n))
            .and_then(|d| docs.get(&d).and_then(schema::owner_updated_at_ms));
        out.push(json!({
            "node": name,
            "connected": st.connected,
            "connected_at_ms": st.connected_at_ms,
            "last_frame_at_ms": st.last_frame_at_ms,
            "last_sync_at_ms": st.last_sync_at_ms,
            "last_change_at_ms": st.last_change_at_ms,
            "since_last_change_ms": st.last_change_at_ms.map(|t| now.saturating_sub(t)),
            "last_change_lag_ms": st.last_change_lag_ms,
            "pending": st.pending,
            "changes_applied": st.changes_applied,
            "changes_quarantined": st.changes_quarantined,
            "docs_refused": st.docs_refused,
            "sessions": st.sessions,
            "orders": counts.get(&name).copied().unwrap_or(0),
            "stock_updated_at_ms": stock_updated_at_ms,
        }));
    }
    Json(json!({"now_ms": now, "nodes": out}))
}

#[derive(Deserialize)]
struct OrdersQuery {
    site: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

async fn orders(State(hub): State<Arc<Hub>>, Query(q): Query<OrdersQuery>) -> Json<Value> {
    let docs = lock(&hub.docs);
    let limit = q.limit.unwrap_or(ORDERS_PAGE_MAX).min(ORDERS_PAGE_MAX);
    let ids = docs.order_ids(q.site.as_deref(), q.after.as_deref(), limit);
    let list: Vec<Value> = ids
        .iter()
        .filter_map(|d| {
            let doc = docs.get(d)?;
            let (origin, site) = schema::order_parties(doc)?;
            let id = d.as_str().strip_prefix(schema::ORDER_PREFIX)?;
            Some(json!({"id": id, "origin": origin, "site": site, "status": schema::order_status(doc)}))
        })
        .collect();
    let next_after = if ids.len() == limit {
        ids.last().and_then(|d| d.as_str().strip_prefix(schema::ORDER_PREFIX)).map(str::to_owned)
    } else {
        None
    };
    let counts = docs.order_counts();
    let total: u64 = match &q.site {
        Some(s) => counts.get(s).copied().unwrap_or(0),
        None => counts.values().sum(),
    };
    Json(json!({"total": total, "by_site": counts, "orders": list, "next_after": next_after}))
}

async fn order(State(hub): State<Arc<Hub>>, Path(id): Path<String>) -> Response {
    let Ok(id) = OrderId::parse(&id) else {
        return problem(StatusCode::BAD_REQUEST, "invalid order id");
    };
    let Some(name) = schema::order_doc(&id) else {
        return problem(StatusCode::BAD_REQUEST, "invalid order id");
    };
    let docs = lock(&hub.docs);
    let Some(doc) = docs.get(&name) else {
        return problem(StatusCode::NOT_FOUND, format!("order {id} has not reached the hub"));
    };
    let view = match schema::read_order(doc, name.as_str()) {
        Ok(v) => v,
        Err(e) => return problem(StatusCode::NOT_FOUND, format!("order {id} is incomplete at the hub: {e}")),
    };
    let progress = view.progress.as_ref();
    Json(json!({
        "id": view.id,
        "origin": view.origin,
        "site": view.site,
        "created_at_ms": view.created_at_ms,
        "status": progress.map(|p| p.status),
        "order": view.draft,
        "lines": progress.map(|p| &p.lines),
        "wave": progress.and_then(|p| p.wave),
        "parcels": progress.and_then(|p| p.parcels),
        "shipment": progress.and_then(|p| p.shipment.as_ref()),
        "returns": progress.map(|p| &p.returns),
        "timeline": progress.map(|p| &p.timeline),
        "node_updated_at_ms": view.node_updated_at_ms,
        "cancel_requested_at_ms": view.cancel_requested_at_ms,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct StockQuery {
    sku: Option<String>,
}

async fn stock(State(hub): State<Arc<Hub>>, Query(q): Query<StockQuery>) -> Json<Value> {
    let docs = lock(&hub.docs);
    let now = now_ms();
    let mut sites = Vec::new();
    let mut by_sku: BTreeMap<String, (u64, u64, Vec<Value>)> = BTreeMap::new();
    for d in docs.stock_ids(STOCK_SITES_MAX) {
        let Some(doc) = docs.get(&d) else { continue };
        let view = match schema::read_stock(doc, d.as_str(), STOCK_SKUS_MAX) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(doc = %d, error = %e, "unreadable stock document");
                continue;
            }
        };
        sites.push(json!({
            "site": view.node,
            "updated_at_ms": view.updated_at_ms,
            "age_ms": now.saturating_sub(view.updated_at_ms),
            "skus": view.skus.len(),
        }));
        for (sku, b) in view.skus {
            if q.sku.as_deref().is_some_and(|s| s != sku.as_str()) {
                continue;
            }
            let e = by_sku.entry(sku.as_str().to_owned()).or_default();
            e.0 += b.on_hand;
            e.1 += b.available();
            e.2.push(json!({
                "site": view.node, "on_hand": b.on_hand, "reserved": b.reserved, "staged": b.staged,
                "available": b.available(), "updated_at_ms": view.updated_at_ms,
            }));
        }
    }
    let skus: Vec<Value> = by_sku
        .into_iter()
        .map(|(sku, (on_hand, available, sites))| {
            json!({"sku": sku, "on_hand": on_hand, "available": available, "sites": sites})
        })
        .collect();
    Json(json!({"now_ms": now, "sites": sites, "skus": skus}))
}
