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
use serde::{Deserialize, Serialize};

use crate::api::{AppState, Q, exec, qty_u32, text};
use crate::store::{InboundRecord, RECEIPT_LINES_MAX, ReceiveAgainst, ReceiveLine, Received, cmd};

/// Longest ASN or purchase order id in a path, bytes.
const ID_BYTES_MAX: usize = 64;

fn view(r: &InboundRecord) -> InboundView {
    let lines = r
        .hub
        .lines
        .iter()
        .map(|l| {
            let here = r.received_here(l.line);
            InboundLineView {
                line: l.line,
                sku: l.sku.clone(),
                ordered: l.ordered,
                short_closed: l.short_closed,
                received_at_hub: l.received,
                received_here: here,
                open: l.ordered.saturating_sub(l.short_closed.saturating_add(here.max(l.received))),
            }
        })
        .collect();
    let asns = r
        .hub
        .asns
        .iter()
        .map(|a| AsnView {
            asn: a.id.clone(),
            expected_day: a.expected_day,
            lines: a.lines.iter().map(|(line, qty)| AsnLineView { line: *line, qty: *qty }).collect(),
        })
        .collect();
    InboundView {
        purchase_order: r.hub.po.clone(),
        state: r.hub.state.clone(),
        receivable: r.hub.receivable,
        expected_day: r.hub.expected_day,
        lines,
        asns,
    }
}

/// A purchase order the site is to receive, with what was received.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct InboundView {
    /// The purchase order id.
    purchase_order: String,
    /// Its state at the hub (`sent`, `partially_received`, ...).
    state: String,
    /// Whether units may still be received against it.
    receivable: bool,
    /// Expected arrival, epoch day.
    expected_day: u64,
    /// Its lines.
    lines: Vec<InboundLineView>,
    /// Its ASNs.
    asns: Vec<AsnView>,
}

/// One line of an inbound purchase order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct InboundLineView {
    /// The PO line number.
    line: u32,
    /// The SKU.
    sku: Sku,
    /// Units ordered.
    ordered: u64,
    /// Units short-closed (will never come).
    short_closed: u64,
    /// Units the hub counts as received.
    received_at_hub: u64,
    /// Units this site received.
    received_here: u64,
    /// Units still expected.
    open: u64,
}

/// An advance shipping notice of an inbound purchase order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AsnView {
    /// The ASN id.
    asn: String,
    /// Expected arrival, epoch day.
    expected_day: u64,
    /// Units shipped per PO line.
    lines: Vec<AsnLineView>,
}

/// Units of one PO line on an ASN.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AsnLineView {
    /// The PO line number.
    line: u32,
    /// Units.
    qty: u64,
}

/// A page of `GET /v1/inbound` or `GET /v1/rmas`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Page<T> {
    /// The page.
    items: Vec<T>,
    /// The id to continue after, or `null` on the last page.
    next_after: Option<String>,
}

/// A return (RMA) the site is to receive, with what was received here.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RmaView {
    /// The RMA id.
    rma: String,
    /// The fulfillment order whose units come back.
    order: String,
    /// Its state at the hub.
    state: String,
    /// Whether units may still be received against it.
    receivable: bool,
    /// Its lines.
    lines: Vec<RmaLineView>,
}

/// One line of an RMA.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RmaLineView {
    /// The SKU.
    sku: Sku,
    /// Units the hub approved for return.
    approved: u64,
    /// Units the hub counts as received.
    received_at_hub: u64,
    /// Units this site received.
    received_here: u64,
}

/// The answer to a receipt.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ReceiptAnswer {
    /// The receipt as booked.
    receipt: crate::store::PoReceipt,
    /// True when the id was received before and nothing changed.
    replayed: bool,
    /// The purchase order now, if the site still has it.
    purchase_order: Option<InboundView>,
}

/// `GET /v1/inbound`: a page of the purchase orders the site is to receive (`after`, `limit`).
#[utoipa::path(get, path = "/v1/inbound", tag = "inbound", params(crate::api::PageQuery),
    responses((status = 200, description = "Each purchase order with its lines, ASNs and what was received", body = Page<InboundView>)))]
pub(crate) async fn list(State(st): State<AppState>, Q(q): Q) -> Result<Response, Problem> {
    let rows = st.store.inbound(q.after.as_deref(), q.limit())?;
    let next = if rows.len() >= q.limit() { rows.last().map(|r| r.hub.po.clone()) } else { None };
    Ok(Json(Page { items: rows.iter().map(view).collect(), next_after: next }).into_response())
}

/// `GET /v1/rmas`: a page of the returns (RMAs) the hub approved for this site (`after`, `limit`), each with
/// what the hub approved and what the site received against it. Units come back against one through
/// `POST /v1/orders/{id}/returns` with `"rma"`.
#[utoipa::path(get, path = "/v1/rmas", tag = "inbound", params(crate::api::PageQuery),
    responses((status = 200, description = "Each RMA with its lines and what was received here", body = Page<RmaView>)))]
pub(crate) async fn rmas(State(st): State<AppState>, Q(q): Q) -> Result<Response, Problem> {
    let rows = st.store.rmas(q.after.as_deref(), q.limit())?;
    let next = if rows.len() >= q.limit() { rows.last().map(|r| r.hub.rma.clone()) } else { None };
    let items = rows
        .iter()
        .map(|r| RmaView {
            rma: r.hub.rma.clone(),
            order: r.hub.order.clone(),
            state: r.hub.state.clone(),
            receivable: r.hub.receivable,
            lines: r
                .hub
                .lines
                .iter()
                .map(|l| RmaLineView {
                    sku: l.sku.clone(),
                    approved: l.qty,
                    received_at_hub: l.received,
                    received_here: r.received_here(&l.sku),
                })
                .collect(),
        })
        .collect();
    Ok(Json(Page { items, next_after: next }).into_response())
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
    Ok((status, Json(ReceiptAnswer { receipt, replayed, purchase_order: po.as_ref().map(view) })).into_response())
}

/// `POST /v1/inbound/{asn}/receipts`.
#[utoipa::path(post, path = "/v1/inbound/{asn}/receipts", tag = "inbound",
    params(("asn" = String, Path, description = "The advance shipping notice"),
        ("Idempotency-Key" = String, Header, description = "The receipt's id: a replay answers the receipt it made")),
    request_body(content = Object, description = "`{\"lines\": [{\"line\", \"sku\", \"qty\"}], \"force\", \"reason\"}`"),
    responses((status = 201, description = "Received: the receipt and the purchase order", body = ReceiptAnswer),
        (status = 200, description = "A replay: the receipt it made", body = ReceiptAnswer)))]
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
    responses((status = 201, description = "Received: the receipt and the purchase order", body = ReceiptAnswer),
        (status = 200, description = "A replay: the receipt it made", body = ReceiptAnswer)))]
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
