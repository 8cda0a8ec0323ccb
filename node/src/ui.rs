//! The warehouse screens, served by the node on the site's LAN at `/ui` and working whether or not the hub is
//! reachable: today's work, building a pick wave, picking it line by line by scanning the bin and the item,
//! packing and shipping an order, accepting or declining the hub's assignments, looking up a SKU's stock and
//! ledger, receiving stock and counting a bin; receiving what the hub said to expect ([`receiving`]),
//! customer returns against their RMAs ([`returns`]) and dispatch: labels, slips and manifests ([`dispatch`]).
//!
//! Every action is one form post that runs the same store command as the API, with the same checks, in the
//! same transaction as its audit row (the actor is `user:<name>`), and answers with a redirect to the next
//! step (post, redirect, get), so a reload never repeats it. A refusal is shown on the screen it came from
//! as a sentence, next to the field to fix. The shared parts (sign-in, page chrome, CSRF) are
//! `oms_service::web`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use serde::Deserialize;

use oms_protocol::domain::{FulfillmentState, Movement, OrderId, Sku};
use oms_service::Problem;
use oms_service::audit::Actor;
use oms_service::auth::session::UiSession;
use oms_service::web::{Chrome, Form, error_box, page, query_escape, see_other};

use crate::api::{AppState, exec, order_path, qty_u32, text};
use crate::store::{OrderRecord, PickConfirmation, PickLine, StoreError, Wave, cmd};

mod dispatch;
mod receiving;
mod returns;

/// Orders listed per state on the today screen.
const LIST_MAX: usize = 20;
/// Ledger entries on the stock screen.
const LEDGER_ROWS: usize = 50;
/// Reasons a picker can give for a short pick (value, words).
const SHORT_REASONS: [(&str, &str); 4] = [
    ("not in the bin", "Not in the bin"),
    ("damaged", "Damaged"),
    ("wrong item in the bin", "Wrong item in the bin"),
    ("other", "Other"),
];

/// The screens' routes (their roles are in `api::policy`, under `/ui`).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { see_other("/ui") }))
        .route("/ui", get(today))
        .route("/ui/waves", post(build_wave))
        .route("/ui/waves/{id}", get(pick_screen))
        .route("/ui/waves/{id}/scan", post(scan))
        .route("/ui/waves/{id}/short", post(short_pick))
        .route("/ui/orders/{id}", get(order_screen))
        .route("/ui/orders/{id}/{action}", post(order_action))
        .route("/ui/stock", get(stock_screen))
        .route("/ui/stock/{action}", post(stock_action))
        .route("/ui/inbound", get(receiving::list))
        .route("/ui/inbound/{po}", get(receiving::po_screen))
        .route("/ui/inbound/{po}/receive", post(receiving::receive))
        .route("/ui/returns", get(returns::list))
        .route("/ui/returns/{rma}", get(returns::rma_screen))
        .route("/ui/returns/{rma}/receive", post(returns::receive))
        .route("/ui/dispatch", get(dispatch::screen_get))
        .route("/ui/dispatch/manifests", post(dispatch::close))
        .route("/ui/dispatch/{id}/slip", get(dispatch::slip))
        .route("/ui/dispatch/{id}/label", get(dispatch::label))
}

/// The chrome of the node's screens.
pub(crate) fn chrome(site: &str, secure_cookie: bool) -> Chrome {
    Chrome {
        product: format!("oms · {site}"),
        nav: vec![
            ("Today", "/ui"),
            ("Receiving", "/ui/inbound"),
            ("Returns", "/ui/returns"),
            ("Dispatch", "/ui/dispatch"),
            ("Stock", "/ui/stock"),
        ],
        secure_cookie,
    }
}

fn screen(st: &AppState, title: &str, s: &UiSession, body: Markup) -> Markup {
    page(&st.chrome, title, Some(s), body)
}

/// A refusal on the screen it came from: the page again with the problem as a sentence, and its status.
fn refused(status: StatusCode, markup: Markup) -> Response {
    (status, markup).into_response()
}

fn status_of(p: &Problem) -> StatusCode {
    StatusCode::from_u16(p.status).unwrap_or(StatusCode::BAD_REQUEST)
}

/// A scanned SKU and the units typed with it, or the status and the sentence that refuse them.
fn scanned(sku: &str, qty: &str) -> Result<(Sku, u32), (StatusCode, String)> {
    let sku = match Sku::parse(sku) {
        Ok(k) => k,
        Err(_) if sku.is_empty() => return Err((StatusCode::BAD_REQUEST, "Scan the item first.".into())),
        Err(_) => {
            let e = format!("{sku:?} is not a SKU; scan the item's barcode.");
            return Err((StatusCode::UNPROCESSABLE_ENTITY, e));
        }
    };
    match qty.parse::<u32>() {
        Ok(q) if (1..=oms_protocol::domain::QTY_MAX).contains(&q) => Ok((sku, q)),
        _ => {
            let e = format!("Units must be a whole number from 1 to {}.", oms_protocol::domain::QTY_MAX);
            Err((StatusCode::UNPROCESSABLE_ENTITY, e))
        }
    }
}

/// An order's state in the words of the floor.
fn state_words(s: FulfillmentState) -> &'static str {
    match s {
        FulfillmentState::Assigned => "Waiting for this site to accept",
        FulfillmentState::Accepted => "To pick",
        FulfillmentState::Rejected => "Declined",
        FulfillmentState::Picking => "Being picked",
        FulfillmentState::Picked => "To pack",
        FulfillmentState::Packed => "To ship",
        FulfillmentState::Shipped => "Shipped",
        FulfillmentState::Delivered => "Delivered",
        FulfillmentState::Cancelled => "Cancelled",
        FulfillmentState::Backordered => "Waiting for stock",
    }
}

/// "3 min", "2 h 5 min": how long ago `since_ms` was.
fn ago(since_ms: u64, now_ms: u64) -> String {
    let s = now_ms.saturating_sub(since_ms) / 1_000;
    match s {
        0..60 => format!("{s} s"),
        60..3_600 => format!("{} min", s / 60),
        _ => format!("{} h {} min", s / 3_600, (s % 3_600) / 60),
    }
}

fn link_banner(st: &AppState) -> Markup {
    let link = &st.metrics.hub_link;
    let now = oms_service::now_ms();
    let up = link.up_since_ms.load(Ordering::Relaxed);
    let down = link.down_since_ms.load(Ordering::Relaxed);
    html! {
        @if !link.configured.load(Ordering::Relaxed) {
            p.banner.online role="status" { "This site runs on its own (no hub configured)." }
        } @else if up > 0 {
            p.banner.online role="status" { "Linked to the hub for " (ago(up, now)) "." }
        } @else {
            p.banner.offline role="status" {
                strong { "Hub unreachable" } @if down > 0 { " for " (ago(down, now)) } ". "
                "You can keep picking, packing and shipping; orders sync when the link returns."
            }
        }
    }
}

fn orders_list(orders: &[OrderRecord], empty: &str) -> Markup {
    html! {
        @if orders.is_empty() { p.hint { (empty) } } @else {
            div.table-wrap { table {
                thead { tr { th { "Order" } th { "Customer ref" } th.num { "Units" } th { "Since" } } }
                tbody { @for o in orders { tr {
                    td { a href={ "/ui/orders/" (o.id) } { (o.id) } }
                    td { (o.order.external_ref) }
                    td.num { (o.lines.iter().map(|l| u64::from(l.qty)).sum::<u64>()) }
                    td { (o.timeline.last().map(|t| ago(t.at_ms, oms_service::now_ms())).unwrap_or_default()) " ago" }
                } } }
            } }
        }
    }
}

async fn today(State(st): State<AppState>, s: UiSession) -> Result<Response, Problem> {
    Ok(today_page(&st, &s, None)?.into_response())
}

fn today_page(st: &AppState, s: &UiSession, error: Option<&str>) -> Result<Markup, Problem> {
    let counts: HashMap<FulfillmentState, u64> = st.store.order_counts()?.into_iter().collect();
    let n = |s: FulfillmentState| counts.get(&s).copied().unwrap_or(0);
    let list = |s: FulfillmentState| st.store.orders(Some(s), None, LIST_MAX);
    let assigned = list(FulfillmentState::Assigned)?;
    let to_pack = list(FulfillmentState::Picked)?;
    let to_ship = list(FulfillmentState::Packed)?;
    let mut waves: Vec<u64> = list(FulfillmentState::Picking)?.iter().filter_map(|o| o.wave).collect();
    waves.sort_unstable();
    waves.dedup();
    let tiles = [
        (FulfillmentState::Accepted, "To pick"),
        (FulfillmentState::Picking, "Being picked"),
        (FulfillmentState::Picked, "To pack"),
        (FulfillmentState::Packed, "To ship"),
        (FulfillmentState::Assigned, "To accept"),
        (FulfillmentState::Backordered, "Waiting for stock"),
    ];
    Ok(screen(
        st,
        "Today",
        s,
        html! {
            h1 { "Today at " (st.store.site()) }
            (link_banner(st))
            @if let Some(e) = error { (error_box(e)) }
            div.tiles { @for (state, label) in tiles {
                div.tile { span.n { (n(state)) } span.l { (label) } }
            } }
            (elsewhere(st)?)
            form.card method="post" action="/ui/waves" {
                input type="hidden" name="csrf" value=(s.csrf);
                h2 { "Pick" }
                @if n(FulfillmentState::Accepted) == 0 { p.hint { "No orders wait to be picked." } }
                label for="max_orders" { "Orders on the wave" span.hint { "The oldest orders first, at most "
                    (st.store.limits().wave_orders_max) "." } }
                input id="max_orders" name="max_orders" type="number" inputmode="numeric" min="1"
                    max=(st.store.limits().wave_orders_max) value="20";
                button type="submit" { "Build a pick wave" }
            }
            @if !waves.is_empty() {
                h2 { "Waves being picked" }
                p { @for w in &waves { a.button.secondary href={ "/ui/waves/" (w) } { "Continue wave " (w) } " " } }
            }
            h2 { "To pack" } (orders_list(&to_pack, "Nothing to pack."))
            h2 { "To ship" } (orders_list(&to_ship, "Nothing to ship."))
            h2 { "Assigned by the hub, waiting for you" } (orders_list(&assigned, "No assignments wait."))
        },
    ))
}

/// Rows read to count what waits on the receiving and returns screens; beyond it the count shows as "n+".
const COUNT_SCAN_MAX: usize = 500;

/// The links from today's work to receiving, returns and dispatch, each with what waits there.
fn elsewhere(st: &AppState) -> Result<Markup, Problem> {
    let (pos, more_pos) = receiving::open_inbound(st, COUNT_SCAN_MAX)?;
    let (rmas, more_rmas) = returns::open_rmas(st, COUNT_SCAN_MAX)?;
    let (labels, oldest) = dispatch::awaiting(st)?;
    let now = oms_service::now_ms();
    let count = |n: usize, more: bool| if more { format!("{n}+") } else { n.to_string() };
    Ok(html! {
        nav.tiles aria-label="Other work" {
            a.tile href="/ui/inbound" { span.n { (count(pos.len(), more_pos)) } span.l { "Purchase orders to receive" } }
            a.tile href="/ui/returns" { span.n { (count(rmas.len(), more_rmas)) } span.l { "Returns to receive" } }
            a.tile href="/ui/dispatch" {
                span.n { (labels) }
                span.l { "Awaiting a label" @if let Some(t) = oldest { ", oldest " (ago(t, now)) } }
            }
        }
    })
}

async fn build_wave(State(st): State<AppState>, actor: Actor, f: Form) -> Result<Response, Problem> {
    let max = st.store.limits().wave_orders_max;
    let orders_max = match f.get("max_orders").filter(|v| !v.is_empty()).map(str::parse::<usize>) {
        None => max,
        Some(Ok(n)) if (1..=max).contains(&n) => n,
        Some(_) => {
            let e = format!("Orders on the wave must be a whole number from 1 to {max}.");
            return Ok(refused(StatusCode::UNPROCESSABLE_ENTITY, today_page(&st, &f.session, Some(&e))?));
        }
    };
    match exec(&st, &actor, None, cmd::CreateWave { orders_max }).await {
        Ok(w) => Ok(see_other(&format!("/ui/waves/{}", w.id))),
        Err(p) => Ok(refused(status_of(&p), today_page(&st, &f.session, Some(&p.detail))?)),
    }
}

fn wave_of(st: &AppState, id: &str) -> Result<Wave, Problem> {
    let n = id.parse::<u64>().map_err(|_| {
        Problem::new(StatusCode::NOT_FOUND, "wave_not_found", format!("pick wave {id:?} does not exist"))
    })?;
    st.store.wave(n)?.ok_or_else(|| StoreError::WaveNotFound(n).into())
}

/// Where a wave stands: the next line to pick (with its place in the list) and the wave's orders as they are.
struct Progress {
    next: Option<(usize, PickLine)>,
    orders: Vec<OrderRecord>,
}

fn progress(st: &AppState, w: &Wave) -> Result<Progress, Problem> {
    let mut orders: HashMap<OrderId, OrderRecord> = HashMap::new();
    for id in &w.orders {
        if let Some(o) = st.store.order(id)? {
            orders.insert(id.clone(), o);
        }
    }
    let open = |l: &PickLine| {
        orders.get(&l.order).is_some_and(|o| {
            o.status == FulfillmentState::Picking && o.lines.iter().any(|x| x.sku == l.sku && x.picked.is_none())
        })
    };
    let next = w.lines.iter().enumerate().find(|(_, l)| open(l)).map(|(i, l)| (i, l.clone()));
    let mut list: Vec<OrderRecord> = w.orders.iter().filter_map(|id| orders.remove(id)).collect();
    list.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Progress { next, orders: list })
}

#[derive(Deserialize, Default)]
struct PickQuery {
    /// The bin the picker stands at (scanned).
    bin: Option<String>,
    /// What was just picked, to confirm it on the next screen.
    last: Option<String>,
}

async fn pick_screen(
    State(st): State<AppState>,
    s: UiSession,
    Path(id): Path<String>,
    Query(q): Query<PickQuery>,
) -> Result<Response, Problem> {
    let w = wave_of(&st, &id)?;
    Ok(pick_page(&st, &s, &w, q.bin.as_deref(), q.last.as_deref(), None)?.into_response())
}

fn pick_page(
    st: &AppState,
    s: &UiSession,
    w: &Wave,
    at_bin: Option<&str>,
    last: Option<&str>,
    error: Option<&str>,
) -> Result<Markup, Problem> {
    let p = progress(st, w)?;
    let title = format!("Pick wave {}", w.id);
    let Some((i, line)) = p.next else {
        return Ok(screen(
            st,
            &title,
            s,
            html! {
                h1 { "Wave " (w.id) " is picked" }
                @if let Some(l) = last { p.done role="status" { "Picked " (l) "." } }
                p { "Take the orders to packing." }
                div.table-wrap { table {
                    thead { tr { th { "Order" } th { "Now" } } }
                    tbody { @for o in &p.orders { tr {
                        td { a href={ "/ui/orders/" (o.id) } { (o.id) } }
                        td { (state_words(o.status)) }
                    } } }
                } }
                p { a.button href="/ui" { "Back to today's work" } }
            },
        ));
    };
    let item = st.store.catalog_item(&line.sku)?.map(|c| c.name).unwrap_or_default();
    let bin_done = line.bin.is_empty() || at_bin.is_some_and(|b| b == line.bin);
    let total = w.lines.len();
    Ok(screen(
        st,
        &title,
        s,
        html! {
            h1 { "Pick wave " (w.id) }
            p.step { "Line " (i + 1) " of " (total) }
            @if let Some(l) = last { p.done role="status" { "Picked " (l) "." } }
            @if let Some(e) = error { (error_box(e)) }
            div.card {
                @if !bin_done {
                    p { "Go to bin" }
                    p.big { (line.bin) }
                } @else {
                    p { "Pick from bin " strong { (if line.bin.is_empty() { "(no bin)" } else { line.bin.as_str() }) } }
                    p.big { (line.qty) " × " (line.sku) }
                }
                dl.facts {
                    dt { "Item" } dd { (line.sku) @if !item.is_empty() { " — " (item) } }
                    dt { "Units" } dd { (line.qty) }
                    dt { "For order" } dd { (line.order) }
                }
                form method="post" action={ "/ui/waves/" (w.id) "/scan" } {
                    input type="hidden" name="csrf" value=(s.csrf);
                    input type="hidden" name="order" value=(line.order);
                    input type="hidden" name="sku" value=(line.sku);
                    @if !bin_done {
                        input type="hidden" name="step" value="bin";
                        label for="scan" { "Scan the bin label" span.hint { "Or type it and press Enter." } }
                        input.scan id="scan" name="scan" autocomplete="off" autocapitalize="characters" autofocus required;
                        button type="submit" { "Confirm bin" }
                    } @else {
                        input type="hidden" name="step" value="sku";
                        input type="hidden" name="bin" value=(line.bin);
                        label for="scan" { "Scan the item" span.hint { "Or type the SKU and press Enter." } }
                        input.scan id="scan" name="scan" autocomplete="off" autocapitalize="characters" autofocus required;
                        label for="qty" { "Units picked" }
                        input id="qty" name="qty" type="number" inputmode="numeric" min="1" max=(line.qty) value=(line.qty);
                        button type="submit" { "Confirm pick" }
                    }
                }
            }
            details.card {
                summary { "Can't pick all " (line.qty) "?" }
                form method="post" action={ "/ui/waves/" (w.id) "/short" } {
                    input type="hidden" name="csrf" value=(s.csrf);
                    input type="hidden" name="order" value=(line.order);
                    input type="hidden" name="sku" value=(line.sku);
                    input type="hidden" name="bin" value=(line.bin);
                    label for="picked" { "Units found" }
                    input id="picked" name="picked" type="number" inputmode="numeric" min="0" max=(line.qty.saturating_sub(1)) value="0" required;
                    label for="reason" { "Why" }
                    select id="reason" name="reason" {
                        @for (v, words) in SHORT_REASONS { option value=(v) { (words) } }
                    }
                    button.danger type="submit" { "Confirm short pick" }
                }
            }
        },
    ))
}

/// The posted line, if it is still the wave's next one; otherwise the screen again with what happened.
fn posted_line(st: &AppState, f: &Form, w: &Wave) -> Result<Result<PickLine, Response>, Problem> {
    let p = progress(st, w)?;
    let (order, sku) = (f.get("order").unwrap_or(""), f.get("sku").unwrap_or(""));
    match p.next {
        Some((_, l)) if l.order.as_str() == order && l.sku.as_str() == sku => Ok(Ok(l)),
        _ => {
            let e = "That line was already confirmed (on another device, or by a second press); here is the next one.";
            Ok(Err(refused(StatusCode::CONFLICT, pick_page(st, &f.session, w, f.get("bin"), None, Some(e))?)))
        }
    }
}

fn confirm_and_next(w: &Wave, line: &PickLine, picked: u32) -> Response {
    let last = format!("{picked} × {} for {}", line.sku, line.order);
    see_other(&format!("/ui/waves/{}?bin={}&last={}", w.id, query_escape(&line.bin), query_escape(&last)))
}

async fn scan(State(st): State<AppState>, actor: Actor, Path(id): Path<String>, f: Form) -> Result<Response, Problem> {
    let w = wave_of(&st, &id)?;
    let line = match posted_line(&st, &f, &w)? {
        Ok(l) => l,
        Err(resp) => return Ok(resp),
    };
    let scanned = f.get("scan").unwrap_or("");
    let again = |bin: Option<&str>, e: String| -> Result<Response, Problem> {
        Ok(refused(StatusCode::UNPROCESSABLE_ENTITY, pick_page(&st, &f.session, &w, bin, None, Some(&e))?))
    };
    if f.get("step") == Some("bin") {
        if !scanned.eq_ignore_ascii_case(&line.bin) {
            return again(
                None,
                format!("You scanned {scanned:?}, which is not bin {}. Scan the label of bin {}.", line.bin, line.bin),
            );
        }
        return Ok(see_other(&format!("/ui/waves/{}?bin={}", w.id, query_escape(&line.bin))));
    }
    let at = Some(line.bin.as_str());
    if !scanned.eq_ignore_ascii_case(line.sku.as_str()) {
        return again(at, format!("You scanned {scanned:?}, which is not {}. Scan the item's barcode.", line.sku));
    }
    let qty = match f.get("qty").map(str::parse::<u32>) {
        None => line.qty,
        Some(Ok(q)) if (1..=line.qty).contains(&q) => q,
        Some(_) => return again(at, format!("Units picked must be a whole number from 1 to {}.", line.qty)),
    };
    if qty < line.qty {
        return again(at, format!("{qty} of {} is a short pick: use \"Can't pick all\" below and say why.", line.qty));
    }
    pick(&st, &actor, &f, &w, &line, qty, None).await
}

async fn pick(
    st: &AppState,
    actor: &Actor,
    f: &Form,
    w: &Wave,
    line: &PickLine,
    picked: u32,
    reason: Option<String>,
) -> Result<Response, Problem> {
    let c = cmd::ConfirmPicks {
        order: line.order.clone(),
        lines: vec![PickConfirmation { sku: line.sku.clone(), picked }],
        reason,
    };
    match exec(st, actor, Some(line.order.to_string()), c).await {
        Ok(_) => Ok(confirm_and_next(w, line, picked)),
        Err(p) => Ok(refused(status_of(&p), pick_page(st, &f.session, w, Some(&line.bin), None, Some(&p.detail))?)),
    }
}

async fn short_pick(
    State(st): State<AppState>,
    actor: Actor,
    Path(id): Path<String>,
    f: Form,
) -> Result<Response, Problem> {
    let w = wave_of(&st, &id)?;
    let line = match posted_line(&st, &f, &w)? {
        Ok(l) => l,
        Err(resp) => return Ok(resp),
    };
    let at = Some(line.bin.as_str());
    let picked = match f.get("picked").map(str::parse::<u32>) {
        Some(Ok(n)) if n < line.qty => n,
        _ => {
            let e = format!("Units found must be a whole number from 0 to {}.", line.qty.saturating_sub(1));
            return Ok(refused(StatusCode::UNPROCESSABLE_ENTITY, pick_page(&st, &f.session, &w, at, None, Some(&e))?));
        }
    };
    let reason = f.get("reason").filter(|r| SHORT_REASONS.iter().any(|(v, _)| v == r)).unwrap_or("other");
    pick(&st, &actor, &f, &w, &line, picked, Some(reason.to_owned())).await
}

fn order_of(st: &AppState, id: &str) -> Result<OrderRecord, Problem> {
    let oid = order_path(id)?;
    st.store.order(&oid)?.ok_or_else(|| StoreError::OrderNotFound(oid).into())
}

async fn order_screen(State(st): State<AppState>, s: UiSession, Path(id): Path<String>) -> Result<Response, Problem> {
    let o = order_of(&st, &id)?;
    Ok(order_page(&st, &s, &o, None)?.into_response())
}

fn order_page(st: &AppState, s: &UiSession, o: &OrderRecord, error: Option<&str>) -> Result<Markup, Problem> {
    let action = |a: &str| format!("/ui/orders/{}/{a}", o.id);
    Ok(screen(
        st,
        &format!("Order {}", o.id),
        s,
        html! {
            h1 { "Order " (o.id) }
            p { strong { (state_words(o.status)) } span.hint { "State: " code { (o.status.as_str()) } } }
            @if let Some(e) = error { (error_box(e)) }
            div.table-wrap { table {
                thead { tr { th { "SKU" } th.num { "Ordered" } th.num { "Picked" } th.num { "Shipped" } } }
                tbody { @for l in &o.lines { tr {
                    td { (l.sku) } td.num { (l.qty) }
                    td.num { @if let Some(p) = l.picked { (p) } @else { "—" } }
                    td.num { (l.shipped) }
                } } }
            } }
            @match o.status {
                FulfillmentState::Picked => {
                    form.card method="post" action=(action("pack")) {
                        input type="hidden" name="csrf" value=(s.csrf);
                        h2 { "Pack" }
                        label for="parcels" { "Parcels" }
                        input id="parcels" name="parcels" type="number" inputmode="numeric" min="1" max="1000" value="1" autofocus;
                        button type="submit" { "Packed" }
                    }
                }
                FulfillmentState::Packed => {
                    form.card method="post" action=(action("ship")) {
                        input type="hidden" name="csrf" value=(s.csrf);
                        h2 { "Ship" }
                        label for="carrier" { "Carrier" }
                        input id="carrier" name="carrier" required autofocus;
                        label for="tracking" { "Tracking number" span.hint { "Scan the label's barcode." } }
                        input.scan id="tracking" name="tracking" required autocomplete="off";
                        button type="submit" { "Handed to the carrier" }
                    }
                }
                FulfillmentState::Assigned => {
                    div.card.actions {
                        form method="post" action=(action("accept")) {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button type="submit" { "Accept" }
                        }
                        form method="post" action=(action("reject")) {
                            input type="hidden" name="csrf" value=(s.csrf);
                            label for="reason" { "Reason to decline" }
                            input id="reason" name="reason" required;
                            button.danger type="submit" { "Decline" }
                        }
                    }
                }
                _ => {}
            }
            @if let Some(sh) = &o.shipment { p { "Shipped with " (sh.carrier) ", tracking " code { (sh.tracking) } "." } }
            h2 { "History" }
            ol { @for t in &o.timeline { li { (state_words(t.status)) " — " (t.note) " (" (ago(t.at_ms, oms_service::now_ms())) " ago)" } } }
            p { a href="/ui" { "Back to today's work" } }
        },
    ))
}

async fn order_action(
    State(st): State<AppState>,
    actor: Actor,
    Path((id, action)): Path<(String, String)>,
    f: Form,
) -> Result<Response, Problem> {
    let o = order_of(&st, &id)?;
    let order = o.id.clone();
    let target = Some(order.to_string());
    let checked = |field: &str, label: &str| -> Result<String, Problem> {
        let v = f.require(field, label)?;
        text(field, v, true)?;
        Ok(v.to_owned())
    };
    let result: Result<OrderRecord, Problem> = match action.as_str() {
        "pack" => match f.get("parcels").unwrap_or("1").parse::<u32>() {
            Ok(parcels) if (1..=1000).contains(&parcels) => {
                exec(&st, &actor, target, cmd::Pack { order, parcels, consignment: None }).await
            }
            _ => Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_quantity",
                "Parcels must be a whole number from 1 to 1000.",
            )),
        },
        "ship" => match (checked("carrier", "The carrier"), checked("tracking", "The tracking number")) {
            (Ok(carrier), Ok(tracking)) => exec(&st, &actor, target, cmd::Ship { order, carrier, tracking }).await,
            (Err(p), _) | (_, Err(p)) => Err(p),
        },
        "accept" => exec(&st, &actor, target, cmd::Reaccept { order }).await,
        "reject" => match checked("reason", "The reason") {
            Ok(reason) => exec(&st, &actor, target, cmd::RejectAssignment { order, reason }).await,
            Err(p) => Err(p),
        },
        _ => return Err(Problem::new(StatusCode::NOT_FOUND, "not_found", "no such action")),
    };
    match result {
        Ok(done) => Ok(see_other(&format!("/ui/orders/{}", done.id))),
        Err(p) => Ok(refused(status_of(&p), order_page(&st, &f.session, &o, Some(&p.detail))?)),
    }
}

#[derive(Deserialize, Default)]
struct StockQuery {
    sku: Option<String>,
    after: Option<u64>,
    done: Option<String>,
}

async fn stock_screen(
    State(st): State<AppState>,
    s: UiSession,
    Query(q): Query<StockQuery>,
) -> Result<Response, Problem> {
    let sku = q.sku.as_deref().map(str::trim).filter(|v| !v.is_empty());
    Ok(stock_page(&st, &s, sku, q.after.unwrap_or(0), q.done.as_deref(), None)?.into_response())
}

fn stock_page(
    st: &AppState,
    s: &UiSession,
    sku: Option<&str>,
    after: u64,
    done: Option<&str>,
    error: Option<&str>,
) -> Result<Markup, Problem> {
    let found = match sku.map(Sku::parse) {
        Some(Ok(k)) => match (st.store.catalog_item(&k)?, st.store.balance(&k)?) {
            (Some(item), Some(b)) => Some((k.clone(), item, b, st.store.ledger(&k, after, LEDGER_ROWS)?)),
            _ => None,
        },
        _ => None,
    };
    let staff = matches!(s.role, oms_service::auth::Role::Staff | oms_service::auth::Role::Admin);
    Ok(screen(
        st,
        "Stock",
        s,
        html! {
            h1 { "Stock" }
            @if let Some(d) = done { p.done role="status" { (d) } }
            @if let Some(e) = error { (error_box(e)) }
            form.card method="get" action="/ui/stock" {
                label for="sku" { "SKU" span.hint { "Scan or type it and press Enter." } }
                input.scan id="sku" name="sku" value=(sku.unwrap_or("")) autocomplete="off" autofocus[found.is_none()];
                button type="submit" { "Look up" }
            }
            @if let (Some(k), None) = (sku, &found) { (error_box(&format!("No SKU {k:?} at this site."))) }
            @if let Some((k, item, b, ledger)) = &found {
                h2 { (k) " — " (item.name) }
                dl.facts {
                    dt { "Bin" } dd { (if item.bin.is_empty() { "—" } else { item.bin.as_str() }) }
                    dt { "On hand" } dd { (b.on_hand) } dt { "Reserved" } dd { (b.reserved) }
                    dt { "Available" } dd { (b.available()) } dt { "Picked, waiting to ship" } dd { (b.staged) }
                }
                @if staff {
                    div.actions {
                        form.card method="post" action="/ui/stock/receipts" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            input type="hidden" name="sku" value=(k);
                            h2 { "Receive" }
                            label for="qty" { "Units received" }
                            input id="qty" name="qty" type="number" inputmode="numeric" min="1" required;
                            label for="note" { "Note" span.hint { "Delivery note or supplier, optional." } }
                            input id="note" name="note";
                            button type="submit" { "Receive" }
                        }
                        form.card method="post" action="/ui/stock/counts" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            input type="hidden" name="sku" value=(k);
                            h2 { "Count" }
                            label for="counted" { "Units counted in the bin" }
                            input id="counted" name="counted" type="number" inputmode="numeric" min="0" required;
                            button type="submit" { "Record count" }
                        }
                    }
                }
                h2 { "Ledger" }
                div.table-wrap { table {
                    thead { tr { th.num { "#" } th { "Movement" } th.num { "On hand after" } th.num { "Available after" } } }
                    tbody { @for e in ledger { tr {
                        td.num { (e.seq) } td { (movement_words(&e.movement)) }
                        td.num { (e.balance.on_hand) } td.num { (e.balance.available()) }
                    } } }
                } }
                @if ledger.len() == LEDGER_ROWS {
                    @if let Some(last) = ledger.last() {
                        p { a href={ "/ui/stock?sku=" (query_escape(k.as_str())) "&after=" (last.seq) } { "Later movements" } }
                    }
                }
            }
        },
    ))
}

fn movement_words(m: &Movement) -> String {
    match serde_json::to_value(m) {
        Ok(serde_json::Value::Object(o)) => o
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::Object(f) => {
                    let fields: Vec<String> =
                        f.iter().map(|(a, b)| format!("{a} {}", b.to_string().trim_matches('"'))).collect();
                    format!("{k}: {}", fields.join(", "))
                }
                other => format!("{k} {other}"),
            })
            .collect::<Vec<_>>()
            .join("; "),
        Ok(other) => other.to_string().trim_matches('"').to_owned(),
        Err(_) => String::new(),
    }
}

async fn stock_action(
    State(st): State<AppState>,
    actor: Actor,
    Path(action): Path<String>,
    f: Form,
) -> Result<Response, Problem> {
    let sku_text = f.get("sku").unwrap_or("").to_owned();
    let again = |p: Problem| -> Result<Response, Problem> {
        Ok(refused(status_of(&p), stock_page(&st, &f.session, Some(&sku_text), 0, None, Some(&p.detail))?))
    };
    let sku = match Sku::parse(&sku_text) {
        Ok(s) => s,
        Err(e) => return again(e.into()),
    };
    let number = |field: &str, label: &str| -> Result<i64, Problem> {
        f.require(field, label)?.parse::<i64>().map_err(|_| {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_quantity",
                format!("{label} must be a whole number."),
            )
        })
    };
    let (movement, done) = match action.as_str() {
        "receipts" => {
            let qty = match number("qty", "Units received").and_then(|q| qty_u32("qty", q)) {
                Ok(q) => q,
                Err(p) => return again(p),
            };
            let note = f.get("note").filter(|n| !n.is_empty()).map(str::to_owned);
            if let Some(n) = &note
                && let Err(p) = text("note", n, false)
            {
                return again(p);
            }
            (Movement::Receipt { qty, note }, format!("Received {qty} × {sku}."))
        }
        "counts" => match number("counted", "Units counted") {
            Ok(c) if (0..=1_000_000_000).contains(&c) => {
                let counted = c.unsigned_abs();
                (Movement::CycleCount { counted, delta: 0 }, format!("Counted {counted} × {sku}."))
            }
            Ok(_) => {
                return again(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_quantity",
                    "Units counted must be 0 or more.",
                ));
            }
            Err(p) => return again(p),
        },
        _ => return Err(Problem::new(StatusCode::NOT_FOUND, "not_found", "no such action")),
    };
    match exec(&st, &actor, None, cmd::Stock { sku: sku.clone(), movement }).await {
        Ok(_) => Ok(see_other(&format!("/ui/stock?sku={}&done={}", query_escape(sku.as_str()), query_escape(&done)))),
        Err(p) => again(p),
    }
}
