//! The returns screen (`/ui/returns`): the returns (RMAs) the hub approved for this site that still take
//! units, each SKU approved against received here, and a receipt per line by scanning the SKU, with the
//! units and what becomes of them (restock or scrap). It runs the same store command as
//! `POST /v1/orders/{id}/returns` with `"rma"` (`cmd::ReceiveReturn`), so a unit past what the RMA approved,
//! an RMA no longer open or a SKU it does not list is refused as a sentence and changes nothing.
//!
//! A return receipt has no idempotency key in the store; the form carries the units the RMA had received when
//! the page was drawn, and the store command (`expect_received`) refuses, in its transaction, a receipt that
//! finds another number (a second press, another device) instead of booking it again.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use oms_protocol::domain::{Disposition, QTY_MAX};
use oms_service::Problem;
use oms_service::audit::Actor;
use oms_service::auth::session::UiSession;
use oms_service::web::{Form, error_box, query_escape, see_other};

use super::{refused, scanned, screen, status_of};
use crate::api::{AppState, exec, order_path};
use crate::store::{ReturnLine, RmaRecord, cmd};

/// Returns (RMAs) listed on the returns screen (the first by id; `GET /v1/rmas` pages through all).
pub(super) const RMA_ROWS: usize = 100;
/// Longest RMA id in a path, bytes (as the API).
const RMA_BYTES_MAX: usize = 64;
/// What can become of a returned unit (value, words).
const DISPOSITIONS: [(&str, &str); 2] = [("restock", "Restock: back on the shelf"), ("scrap", "Scrap: write it off")];

/// The RMAs that still take units among the first `rows`, and whether more were left unread.
pub(super) fn open_rmas(st: &AppState, rows: usize) -> Result<(Vec<RmaRecord>, bool), Problem> {
    let all = st.store.rmas(None, rows)?;
    let more = all.len() >= rows.min(st.store.page_max());
    Ok((all.into_iter().filter(|r| r.hub.receivable).collect(), more))
}

/// Units received here against the RMA, all SKUs.
fn received_total(r: &RmaRecord) -> u64 {
    r.received.iter().map(|(_, q)| *q).sum()
}

fn lines_table(r: &RmaRecord) -> Markup {
    html! {
        div.table-wrap tabindex="0" role="region" aria-label={ "Lines of return " (r.hub.rma) } { table {
            thead { tr { th { "SKU" } th.num { "Approved" } th.num { "Received here" } th.num { "Still to come" } } }
            tbody { @for l in &r.hub.lines {
                @let here = r.received_here(&l.sku);
                tr {
                    td { (l.sku) } td.num { (l.qty) } td.num { (here) }
                    td.num { (l.qty.saturating_sub(here.max(l.received))) }
                }
            } }
        } }
    }
}

pub(super) async fn list(State(st): State<AppState>, s: UiSession) -> Result<Response, Problem> {
    let (rmas, more) = open_rmas(&st, RMA_ROWS)?;
    Ok(screen(
        &st,
        "Returns",
        &s,
        html! {
            h1 { "Returns" }
            p.hint { "Returns the hub approved for this site that still take units." }
            @if rmas.is_empty() { p { "No returns are expected." } }
            @for r in &rmas {
                section.card aria-labelledby={ "rma-" (r.hub.rma) } {
                    h2 id={ "rma-" (r.hub.rma) } { "Return " (r.hub.rma) }
                    p.hint { "Order " (r.hub.order) " · state " (r.hub.state) }
                    (lines_table(r))
                    p { a.button href={ "/ui/returns/" (query_escape(&r.hub.rma)) } { "Receive return " (r.hub.rma) } }
                }
            }
            @if more { p.hint { "Only the first " (RMA_ROWS) " returns are listed; GET /v1/rmas pages through all." } }
        },
    )
    .into_response())
}

fn rma_of(st: &AppState, rma: &str) -> Result<RmaRecord, Problem> {
    let not_found = || {
        Problem::new(StatusCode::NOT_FOUND, "rma_not_found", format!("Return {rma:?} is not expected at this site."))
    };
    if rma.is_empty() || rma.len() > RMA_BYTES_MAX || !rma.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(not_found());
    }
    st.store.rma(rma)?.ok_or_else(not_found)
}

#[derive(Deserialize, Default)]
pub(super) struct DoneQuery {
    done: Option<String>,
}

pub(super) async fn rma_screen(
    State(st): State<AppState>,
    s: UiSession,
    Path(rma): Path<String>,
    Query(q): Query<DoneQuery>,
) -> Result<Response, Problem> {
    let r = rma_of(&st, &rma)?;
    Ok(rma_page(&st, &s, &r, q.done.as_deref(), None, ("", "1", "restock"))?.into_response())
}

/// The page of one RMA; `posted` is (SKU, units, disposition) to fill the form with again after a refusal.
fn rma_page(
    st: &AppState,
    s: &UiSession,
    r: &RmaRecord,
    done: Option<&str>,
    error: Option<&str>,
    posted: (&str, &str, &str),
) -> Result<Markup, Problem> {
    let rma = &r.hub.rma;
    let title = format!("Receive return {rma}");
    Ok(screen(
        st,
        &title,
        s,
        html! {
            h1 { (title) }
            p.hint { "Order " (r.hub.order) " · state " (r.hub.state) }
            @if let Some(d) = done { p.done role="status" { (d) } }
            @if let Some(e) = error { (error_box(e)) }
            @if r.hub.receivable {
                form.card method="post" action={ "/ui/returns/" (query_escape(rma)) "/receive" } {
                    input type="hidden" name="csrf" value=(s.csrf);
                    input type="hidden" name="seen" value=(received_total(r));
                    h2 { "Receive a line" }
                    fieldset {
                        legend { "What happens to the units" }
                        @for (v, words) in DISPOSITIONS {
                            label.choice {
                                input type="radio" name="disposition" value=(v) checked[posted.2 == v];
                                " " (words)
                            }
                        }
                    }
                    label for="qty" { "Units" }
                    input id="qty" name="qty" type="number" inputmode="numeric" min="1" max=(QTY_MAX) value=(posted.1);
                    label for="scan" { "Scan the item" span.hint { "Or type the SKU and press Enter." } }
                    input.scan id="scan" name="sku" autocomplete="off" autocapitalize="characters" required autofocus
                        value=(posted.0);
                    button type="submit" { "Receive" }
                }
            } @else {
                (error_box(&format!("Return {rma} is {}: nothing more can be received against it.", r.hub.state)))
            }
            h2 { "Lines" }
            (lines_table(r))
            p { a href="/ui/returns" { "Back to returns" } }
        },
    ))
}

pub(super) async fn receive(
    State(st): State<AppState>,
    actor: Actor,
    Path(rma): Path<String>,
    f: Form,
) -> Result<Response, Problem> {
    let r = rma_of(&st, &rma)?;
    let (sku_text, qty_text) = (f.get("sku").unwrap_or(""), f.get("qty").unwrap_or(""));
    let disposition_text = f.get("disposition").unwrap_or("");
    let again = |status: StatusCode, e: &str| -> Result<Response, Problem> {
        let posted = (sku_text, qty_text, disposition_text);
        Ok(refused(status, rma_page(&st, &f.session, &r, None, Some(e), posted)?))
    };
    let Some(seen) = f.get("seen").and_then(|v| v.parse::<u64>().ok()) else {
        return again(StatusCode::BAD_REQUEST, "This form has no count of the units received; open the page again.");
    };
    let disposition = match disposition_text {
        "restock" => Disposition::Restock,
        "scrap" => Disposition::Scrap,
        _ => return again(StatusCode::BAD_REQUEST, "Choose restock or scrap."),
    };
    let (sku, qty) = match scanned(sku_text, qty_text) {
        Ok(v) => v,
        Err((status, e)) => return again(status, &e),
    };
    if !r.hub.lines.iter().any(|l| l.sku == sku) {
        let e = format!("Return {rma} does not list {sku}; receive only what it approved.");
        return again(StatusCode::UNPROCESSABLE_ENTITY, &e);
    }
    let order = order_path(&r.hub.order)?;
    let c = cmd::ReceiveReturn {
        order: order.clone(),
        lines: vec![(ReturnLine { sku: sku.clone(), qty }, disposition)],
        rma: Some(r.hub.rma.clone()),
        expect_received: Some(seen),
    };
    match exec(&st, &actor, Some(order.to_string()), c).await {
        Ok(_) => {
            let what = if disposition == Disposition::Restock { "restocked" } else { "scrapped" };
            let done = format!("Received {qty} × {sku} against return {rma}, {what}.");
            Ok(see_other(&format!("/ui/returns/{}?done={}", query_escape(&rma), query_escape(&done))))
        }
        Err(p) if p.code == "rma_changed" => {
            let e = "This return changed since the page was drawn (a receipt was booked, here or on another \
                     device, or this form was sent twice): check the lines and receive again.";
            again(status_of(&p), e)
        }
        Err(p) => again(status_of(&p), &p.detail),
    }
}
