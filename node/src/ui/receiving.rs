//! The receiving screen (`/ui/inbound`): the purchase orders and ASNs the hub published for this site, each
//! line expected against received, and a receipt by scanning the SKU and typing the units. It runs the same
//! store command as `POST /v1/inbound/{asn}/receipts` (`cmd::ReceiveInbound`, with the site's over-receipt
//! tolerance): a unit past the tolerance is refused as a sentence, and the screen offers "receive anyway",
//! which needs a reason. A SKU the order does not have is booked as an unplanned receipt against it.
//!
//! Each form carries a receipt id made when the page was drawn: a second press (or a reload of the post)
//! sends the same id and is answered with the first receipt, never a second one.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use oms_protocol::domain::QTY_MAX;
use oms_service::Problem;
use oms_service::audit::Actor;
use oms_service::auth::session::UiSession;
use oms_service::web::{Form, error_box, query_escape, see_other};

use super::{refused, scanned, screen, status_of};
use crate::api::{AppState, exec, text};
use crate::store::{InboundRecord, ReceiveAgainst, ReceiveLine, Received, cmd};

/// Purchase orders listed on the receiving screen (the first by id; `GET /v1/inbound` pages through all).
pub(super) const INBOUND_ROWS: usize = 100;
/// Longest receipt id a form may carry, bytes (the API's idempotency keys are longer; the screen's are 19).
const RECEIPT_ID_BYTES_MAX: usize = 64;
/// Longest ASN or purchase order id in a path or a form, bytes (as the API).
const ID_BYTES_MAX: usize = 64;

/// A fresh receipt id for a form: `ui-` and 16 random hex digits.
fn new_receipt_id() -> String {
    format!("ui-{:016x}", rand::random::<u64>())
}

fn id_ok(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic())
}

/// The receivable purchase orders among the first [`INBOUND_ROWS`], and whether more were left unread.
pub(super) fn open_inbound(st: &AppState, rows: usize) -> Result<(Vec<InboundRecord>, bool), Problem> {
    let all = st.store.inbound(None, rows)?;
    let more = all.len() >= rows.min(st.store.page_max());
    Ok((all.into_iter().filter(|r| r.hub.receivable).collect(), more))
}

/// Units a line still expects: ordered, less short-closed, less the larger of what the hub and this site counted.
fn open_units(r: &InboundRecord, line: u32) -> u64 {
    r.hub
        .lines
        .iter()
        .find(|l| l.line == line)
        .map_or(0, |l| l.ordered.saturating_sub(l.short_closed.saturating_add(r.received_here(line).max(l.received))))
}

/// An epoch day (days since 1970-01-01, UTC) as `YYYY-MM-DD`.
fn day(d: u64) -> String {
    let epoch = jiff::civil::date(1970, 1, 1);
    let span = i64::try_from(d).ok().and_then(|d| jiff::Span::new().try_days(d).ok());
    span.and_then(|s| epoch.checked_add(s).ok()).map_or_else(|| format!("day {d}"), |x| x.to_string())
}

pub(super) async fn list(State(st): State<AppState>, s: UiSession) -> Result<Response, Problem> {
    let (pos, more) = open_inbound(&st, INBOUND_ROWS)?;
    Ok(screen(
        &st,
        "Receiving",
        &s,
        html! {
            h1 { "Receiving" }
            p.hint { "What the hub told this site to expect. Pick an ASN (or the order) to receive against it." }
            @if pos.is_empty() { p { "Nothing is expected at the moment." } }
            @for r in &pos {
                section.card aria-labelledby={ "po-" (r.hub.po) } {
                    h2 id={ "po-" (r.hub.po) } { "Purchase order " (r.hub.po) }
                    p.hint { "Expected " (day(r.hub.expected_day)) " · state " (r.hub.state) }
                    (lines_table(r, None))
                    p.actions {
                        @for a in &r.hub.asns {
                            a.button href={ "/ui/inbound/" (query_escape(&r.hub.po)) "?asn=" (query_escape(&a.id)) } {
                                "Receive ASN " (a.id) " (" (day(a.expected_day)) ")"
                            }
                            " "
                        }
                        a.button.secondary href={ "/ui/inbound/" (query_escape(&r.hub.po)) } { "Receive without an ASN" }
                    }
                }
            }
            @if more { p.hint { "Only the first " (INBOUND_ROWS) " purchase orders are listed; GET /v1/inbound pages through all." } }
            p.hint { "Stock that comes with no purchase order at all: look the SKU up on " a href="/ui/stock" { "Stock" } " and receive it there." }
        },
    )
    .into_response())
}

fn lines_table(r: &InboundRecord, asn: Option<&str>) -> Markup {
    let on_asn = |line: u32| -> Option<u64> {
        let a = r.hub.asns.iter().find(|a| Some(a.id.as_str()) == asn)?;
        Some(a.lines.iter().filter(|(l, _)| *l == line).map(|(_, q)| *q).sum())
    };
    html! {
        div.table-wrap tabindex="0" role="region" aria-label={ "Lines of purchase order " (r.hub.po) } { table {
            thead { tr {
                th.num { "Line" } th { "SKU" }
                @if asn.is_some() { th.num { "On the ASN" } }
                th.num { "Expected" } th.num { "Received" } th.num { "Still open" }
            } }
            tbody { @for l in &r.hub.lines { tr {
                td.num { (l.line) } td { (l.sku) }
                @if asn.is_some() { td.num { (on_asn(l.line).unwrap_or(0)) } }
                td.num { (l.ordered.saturating_sub(l.short_closed)) }
                td.num { (r.received_here(l.line).max(l.received)) }
                td.num { (open_units(r, l.line)) }
            } } }
        } }
    }
}

#[derive(Deserialize, Default)]
pub(super) struct PoQuery {
    asn: Option<String>,
    /// The receipt just booked (its id): the screen says what it booked, read from the store, so the
    /// sentence is never text from the address (a crafted link cannot make the screen say anything).
    done: Option<String>,
    /// The receipt had been booked before (a double press or a resent form).
    #[serde(default)]
    again: Option<String>,
}

fn po_of(st: &AppState, po: &str) -> Result<InboundRecord, Problem> {
    let not_found = || {
        Problem::new(
            StatusCode::NOT_FOUND,
            "purchase_order_not_found",
            format!("Purchase order {po:?} is not expected at this site."),
        )
    };
    if !id_ok(po, ID_BYTES_MAX) {
        return Err(not_found());
    }
    st.store.inbound_po(po)?.ok_or_else(not_found)
}

/// What the form posted, kept to draw the page again after a refusal.
#[derive(Default)]
struct Posted<'a> {
    sku: &'a str,
    qty: &'a str,
    receipt: Option<&'a str>,
    /// The refusal was an over-receipt: offer "receive anyway".
    over: bool,
}

pub(super) async fn po_screen(
    State(st): State<AppState>,
    s: UiSession,
    Path(po): Path<String>,
    Query(q): Query<PoQuery>,
) -> Result<Response, Problem> {
    let r = po_of(&st, &po)?;
    let asn = q.asn.as_deref().filter(|a| !a.is_empty());
    // Only a receipt of this purchase order, as the store holds it.
    let done = match q.done.as_deref().filter(|d| !d.is_empty() && d.len() <= RECEIPT_ID_BYTES_MAX) {
        Some(id) => {
            st.store.po_receipt(id)?.filter(|rc| rc.po == r.hub.po).map(|rc| receipt_words(&rc, q.again.is_some()))
        }
        None => None,
    };
    Ok(po_page(&st, &s, &r, asn, done.as_deref(), None, &Posted::default())?.into_response())
}

fn po_page(
    st: &AppState,
    s: &UiSession,
    r: &InboundRecord,
    asn: Option<&str>,
    done: Option<&str>,
    error: Option<&str>,
    posted: &Posted<'_>,
) -> Result<Markup, Problem> {
    let po = &r.hub.po;
    let asn_known = asn.is_none_or(|a| r.hub.asns.iter().any(|x| x.id == a));
    let action = format!("/ui/inbound/{}/receive", query_escape(po));
    let receipt = posted.receipt.map_or_else(new_receipt_id, str::to_owned);
    let title = match asn {
        Some(a) => format!("Receive ASN {a}"),
        None => format!("Receive purchase order {po}"),
    };
    let hidden = html! {
        input type="hidden" name="csrf" value=(s.csrf);
        input type="hidden" name="receipt" value=(receipt);
        @if let Some(a) = asn { input type="hidden" name="asn" value=(a); }
    };
    Ok(screen(
        st,
        &title,
        s,
        html! {
            h1 { (title) }
            p.hint { "Purchase order " (po) " · expected " (day(r.hub.expected_day)) " · tolerance "
                (st.receiving.over_receipt_tolerance_pct) " % over what a line expects" }
            @if let Some(d) = done { p.done role="status" { (d) } }
            @if let Some(e) = error { (error_box(e)) }
            @if !asn_known { (error_box(&format!("ASN {:?} is not on purchase order {po}.", asn.unwrap_or("")))) }
            @if !r.hub.receivable {
                (error_box(&format!("Purchase order {po} is {}: nothing more can be received against it.", r.hub.state)))
            }
            @if posted.over {
                form.card method="post" action=(action) {
                    (hidden)
                    input type="hidden" name="sku" value=(posted.sku);
                    input type="hidden" name="qty" value=(posted.qty);
                    input type="hidden" name="force" value="1";
                    h2 { "Receive anyway?" }
                    p { "Book " strong { (posted.qty) " × " (posted.sku) } " past the tolerance. The reason goes into the audit trail." }
                    label for="reason" { "Reason" span.hint { "For example: extra units on the pallet, supplier agreed." } }
                    input id="reason" name="reason" required autofocus autocomplete="off";
                    button.danger type="submit" { "Receive anyway" }
                }
            }
            @if r.hub.receivable && asn_known {
                form.card method="post" action=(action) {
                    (hidden)
                    h2 { "Receive a line" }
                    label for="qty" { "Units" span.hint { "Set it first when more than one; then scan." } }
                    input id="qty" name="qty" type="number" inputmode="numeric" min="1" max=(QTY_MAX)
                        value=(if posted.qty.is_empty() { "1" } else { posted.qty });
                    label for="scan" { "Scan the item" span.hint { "Or type the SKU and press Enter. A SKU not on the order is booked as unplanned." } }
                    input.scan id="scan" name="sku" autocomplete="off" autocapitalize="characters" required
                        autofocus[!posted.over] value=(if posted.over { "" } else { posted.sku });
                    button type="submit" { "Receive" }
                }
            }
            h2 { "Lines" }
            (lines_table(r, asn))
            p { a href="/ui/inbound" { "Back to receiving" } }
        },
    ))
}

pub(super) async fn receive(
    State(st): State<AppState>,
    actor: Actor,
    Path(po): Path<String>,
    f: Form,
) -> Result<Response, Problem> {
    let r = po_of(&st, &po)?;
    let asn = f.get("asn").filter(|a| !a.is_empty());
    let (sku_text, qty_text) = (f.get("sku").unwrap_or(""), f.get("qty").unwrap_or(""));
    let receipt = f.get("receipt").filter(|id| id_ok(id, RECEIPT_ID_BYTES_MAX));
    let again = |status: StatusCode, e: &str, over: bool| -> Result<Response, Problem> {
        let posted = Posted { sku: sku_text, qty: qty_text, receipt: over.then_some(receipt).flatten(), over };
        Ok(refused(status, po_page(&st, &f.session, &r, asn, None, Some(e), &posted)?))
    };
    let Some(receipt) = receipt else {
        return again(StatusCode::BAD_REQUEST, "This form has no receipt number; open the page again.", false);
    };
    if let Some(a) = asn
        && !r.hub.asns.iter().any(|x| x.id == a)
    {
        return again(StatusCode::NOT_FOUND, &format!("ASN {a:?} is not on purchase order {po}."), false);
    }
    let (sku, qty) = match scanned(sku_text, qty_text) {
        Ok(v) => v,
        Err((status, e)) => return again(status, &e, false),
    };
    let force_reason = match (f.get("force") == Some("1"), f.get("reason").filter(|r| !r.is_empty())) {
        (true, Some(reason)) => {
            if let Err(p) = text("reason", reason, true) {
                return again(status_of(&p), &p.detail, true);
            }
            Some(reason.to_owned())
        }
        (true, None) => return again(StatusCode::BAD_REQUEST, "Say why the extra units are received.", true),
        (false, _) => None,
    };
    let against = match asn {
        Some(a) => ReceiveAgainst::Asn(a.to_owned()),
        None => ReceiveAgainst::Po(r.hub.po.clone()),
    };
    let c = cmd::ReceiveInbound {
        id: receipt.to_owned(),
        against,
        lines: vec![ReceiveLine { line: None, sku, qty }],
        force_reason,
        tolerance_pct: st.receiving.over_receipt_tolerance_pct,
    };
    match exec(&st, &actor, Some(receipt.to_owned()), c).await {
        Ok(Received { receipt, replayed }) => {
            let mut to = format!("/ui/inbound/{}?done={}", query_escape(&r.hub.po), query_escape(&receipt.id));
            if replayed {
                to.push_str("&again=1");
            }
            if let Some(a) = asn {
                to.push_str(&format!("&asn={}", query_escape(a)));
            }
            Ok(see_other(&to))
        }
        Err(p) => {
            let over = p.code == "over_receipt";
            let detail = match p.code {
                "over_receipt" => format!("{} Count again, or receive anyway with a reason.", p.detail),
                "idempotency_key_reused" => {
                    "This form already booked a different receipt; here is the page again for the next one.".into()
                }
                _ => p.detail.clone(),
            };
            again(status_of(&p), &detail, over)
        }
    }
}

fn receipt_words(r: &crate::store::PoReceipt, replayed: bool) -> String {
    let lines: Vec<String> = r
        .lines
        .iter()
        .map(|l| match l.line {
            Some(n) => format!("{} × {} (line {n})", l.qty, l.sku),
            None => format!("{} × {} (unplanned: not on the order)", l.qty, l.sku),
        })
        .collect();
    let forced = r.forced_reason.as_ref().map(|why| format!(", past the tolerance because: {why}")).unwrap_or_default();
    if replayed {
        format!("Receipt {} was already booked: {}{forced}. Nothing was booked twice.", r.id, lines.join(", "))
    } else {
        format!("Received {}{forced} (receipt {}).", lines.join(", "), r.id)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn days_are_calendar_dates() {
        assert_eq!(super::day(0), "1970-01-01");
        assert_eq!(super::day(20_000), "2024-10-04");
        assert_eq!(super::day(19_782), "2024-02-29");
        assert_eq!(super::day(u64::MAX), format!("day {}", u64::MAX), "out of the calendar: said, not a panic");
    }
}
