//! Receiving against purchase orders over HTTP: `GET /v1/inbound` (what the hub says the site is to receive,
//! with what was received), `POST /v1/inbound/{asn}/receipts` and `POST /v1/inbound/po/{po}/receipts`
//! (quantities per line; `Idempotency-Key` is the receipt's id). The checks and the ledger are the store's
//! (`cmd::ReceiveInbound`); this is parsing and views. Works with the hub unreachable.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use oms_protocol::domain::{Sku, ValidationError};
use oms_service::audit::Actor;
use oms_service::{JsonBody, Problem};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{AppState, Q, exec, qty_u32, text};
use crate::store::{InboundRecord, RECEIPT_LINES_MAX, ReceiveAgainst, ReceiveLine, Received, cmd};

/// Longest ASN or purchase order id in a path, bytes.
const ID_BYTES_MAX: usize = 64;

fn view(r: &InboundRecord) -> Value {
    let lines: Vec<Value> = r
        .hub
        .lines
        .iter()
        .map(|l| {
            let here = r.received_here(l.line);
            json!({
                "line": l.line,
                "sku": l.sku,
                "ordered": l.ordered,
                "short_closed": l.short_closed,
                "received_at_hub": l.received,
                "received_here": here,
                "open": l.ordered.saturating_sub(l.short_closed.saturating_add(here.max(l.received))),
            })
        })
        .collect();
    let asns: Vec<Value> = r
        .hub
        .asns
        .iter()
        .map(|a| {
            let lines: Vec<Value> = a.lines.iter().map(|(line, qty)| json!({"line": line, "qty": qty})).collect();
            json!({"asn": a.id, "expected_day": a.expected_day, "lines": lines})
        })
        .collect();
    json!({
        "purchase_order": r.hub.po,
        "state": r.hub.state,
        "receivable": r.hub.receivable,
        "expected_day": r.hub.expected_day,
        "lines": lines,
        "asns": asns,
    })
}

/// `GET /v1/inbound`: a page of the purchase orders the site is to receive (`after`, `limit`).
#[utoipa::path(get, path = "/v1/inbound", tag = "inbound", params(crate::api::PageQuery),
    responses((status = 200, description = "`{\"items\": [...], \"next_after\"}`: each purchase order with its lines, ASNs and what was received", body = Object)))]
pub(crate) async fn list(State(st): State<AppState>, Q(q): Q) -> Result<Response, Problem> {
    let rows = st.store.inbound(q.after.as_deref(), q.limit())?;
    let next = if rows.len() >= q.limit() { rows.last().map(|r| r.hub.po.clone()) } else { None };
    let items: Vec<Value> = rows.iter().map(view).collect();
    Ok(Json(json!({"items": items, "next_after": next})).into_response())
}

/// `GET /v1/rmas`: a page of the returns (RMAs) the hub approved for this site (`after`, `limit`), each with
/// what the hub approved and what the site received against it. Units come back against one through
/// `POST /v1/orders/{id}/returns` with `"rma"`.
#[utoipa::path(get, path = "/v1/rmas", tag = "inbound", params(crate::api::PageQuery),
    responses((status = 200, description = "`{\"items\": [...], \"next_after\"}`: each RMA with its lines and what was received here", body = Object)))]
pub(crate) async fn rmas(State(st): State<AppState>, Q(q): Q) -> Result<Response, Problem> {
    let rows = st.store.rmas(q.after.as_deref(), q.limit())?;
    let next = if rows.len() >= q.limit() { rows.last().map(|r| r.hub.rma.clone()) } else { None };
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            let lines: Vec<Value> = r
                .hub
                .lines
                .iter()
                .map(|l| {
                    json!({"sku": l.sku, "approved": l.qty, "received_at_hub": l.received,
                                "received_here": r.received_here(&l.sku)})
                })
                .collect();
            json!({"rma": r.hub.rma, "order": r.hub.order, "state": r.hub.state, "receivable": r.hub.receivable,
                   "lines": lines})
        })
        .collect();
    Ok(Json(json!({"items": items, "next_after": next})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LineBody {
    #[serde(default)]
    line: Option<u32>,
    sku: Sku,
    qty: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReceiptBody {
    lines: Vec<LineBody>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    reason: Option<String>,
}

fn path_id(field: &str, s: &str) -> Result<String, Problem> {
    if s.is_empty() || s.len() > ID_BYTES_MAX || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            ValidationError::new("invalid_id", field, format!("1 to {ID_BYTES_MAX} visible ASCII characters")).into()
        );
    }
    Ok(s.to_owned())
}

async fn receive(
    st: &AppState,
    actor: &Actor,
    headers: &HeaderMap,
    against: ReceiveAgainst,
    b: ReceiptBody,
) -> Result<Response, Problem> {
    let id = oms_service::request::idempotency_key(headers)?;
    if b.lines.is_empty() || b.lines.len() > RECEIPT_LINES_MAX {
        return Err(ValidationError::new("invalid_lines", "lines", format!("1 to {RECEIPT_LINES_MAX} lines")).into());
    }
    let mut lines = Vec::with_capacity(b.lines.len());
    for (i, l) in b.lines.into_iter().enumerate() {
        lines.push(ReceiveLine { line: l.line, sku: l.sku, qty: qty_u32(&format!("lines[{i}].qty"), l.qty)? });
    }
    let force_reason = match (b.force, b.reason) {
        (true, Some(r)) => {
            text("reason", &r, true)?;
            Some(r)
        }
        (true, None) => {
            return Err(ValidationError::new("reason_required", "reason", "a forced receipt needs a reason").into());
        }
        (false, Some(_)) => {
            return Err(ValidationError::new("invalid_field", "reason", "a reason goes with force: true").into());
        }
        (false, None) => None,
    };
    let tolerance_pct = st.receiving.over_receipt_tolerance_pct;
    let cmd = cmd::ReceiveInbound { id: id.clone(), against, lines, force_reason, tolerance_pct };
    let Received { receipt, replayed } = exec(st, actor, Some(id), cmd).await?;
    let status = if replayed { StatusCode::OK } else { StatusCode::CREATED };
    let po = st.store.inbound_po(&receipt.po)?;
    Ok((status, Json(json!({"receipt": receipt, "replayed": replayed, "purchase_order": po.as_ref().map(view)})))
        .into_response())
}

/// `POST /v1/inbound/{asn}/receipts`.
#[utoipa::path(post, path = "/v1/inbound/{asn}/receipts", tag = "inbound",
    params(("asn" = String, Path, description = "The advance shipping notice"),
        ("Idempotency-Key" = String, Header, description = "The receipt's id: a replay answers the receipt it made")),
    request_body(content = Object, description = "`{\"lines\": [{\"line\", \"sku\", \"qty\"}], \"force\", \"reason\"}`"),
    responses((status = 201, description = "Received: the receipt and the purchase order", body = Object),
        (status = 200, description = "A replay: the receipt it made", body = Object)))]
pub(crate) async fn receive_asn(
    State(st): State<AppState>,
    actor: Actor,
    headers: HeaderMap,
    Path(asn): Path<String>,
    JsonBody(b): JsonBody<ReceiptBody>,
) -> Result<Response, Problem> {
    let asn = path_id("asn", &asn)?;
    receive(&st, &actor, &headers, ReceiveAgainst::Asn(asn), b).await
}

/// `POST /v1/inbound/po/{po}/receipts`: against a purchase order without an ASN.
#[utoipa::path(post, path = "/v1/inbound/po/{po}/receipts", tag = "inbound",
    params(("po" = String, Path, description = "The purchase order"),
        ("Idempotency-Key" = String, Header, description = "The receipt's id: a replay answers the receipt it made")),
    request_body(content = Object, description = "`{\"lines\": [{\"line\", \"sku\", \"qty\"}], \"force\", \"reason\"}`"),
    responses((status = 201, description = "Received: the receipt and the purchase order", body = Object),
        (status = 200, description = "A replay: the receipt it made", body = Object)))]
pub(crate) async fn receive_po(
    State(st): State<AppState>,
    actor: Actor,
    headers: HeaderMap,
    Path(po): Path<String>,
    JsonBody(b): JsonBody<ReceiptBody>,
) -> Result<Response, Problem> {
    let po = path_id("po", &po)?;
    receive(&st, &actor, &headers, ReceiveAgainst::Po(po), b).await
}
