//! `GET /v1/orders` (every site's orders, a channel's own, or the flagged ones) and `GET /v1/orders/{id}`.

use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::IntoParams;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use oms_protocol::domain::OrderId;
use oms_protocol::schema;
use oms_service::auth::Principal;
use serde::{Deserialize, Serialize};

use super::problem;
use crate::server::Hub;
use oms_service::problem::QueryParams;

/// Largest page of orders.
pub const ORDERS_PAGE_MAX: usize = 1_000;
/// Most order rows one `GET /v1/orders` reads (under the documents' lock, which every sync session needs):
/// tens of milliseconds, where a scan of a million rows took about a second. A site filter that matches few
/// of many orders returns short pages.
pub const ORDER_ROWS_READ_MAX: usize = 20_000;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct OrdersQuery {
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
pub(super) async fn orders(
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
pub(super) async fn order(State(hub): State<Arc<Hub>>, principal: Principal, Path(id): Path<String>) -> Response {
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
