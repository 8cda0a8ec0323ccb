//! The hub's screens: the network (each node's link and sync state) and network stock per SKU × site with
//! each site's freshness, filterable in the URL and exported as CSV exactly as shown, for planners; a SKU's
//! forecast drawn (history, forecast, 10–90 % band) with its replenishment figures; an order's page for
//! customer service (status in words, lines, fulfillments per site, one timeline) with a cancel that needs a
//! reason. The customer's tracking page (`/t/{token}`, no sign-in) is [`crate::selfservice`].
//!
//! Server-rendered with `oms_service::web` like the node's screens; reads go through the same functions as
//! the JSON API (`api::nodes_view`, `api::stock_rows`, `orders::hub_order`, the forecast answer).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::{Markup, PreEscaped, html};
use serde::Deserialize;
use serde_json::Value;

use oms_service::Problem;
use oms_service::audit::Actor;
use oms_service::auth::session::UiSession;
use oms_service::web::{Chrome, Form, error_box, page, query_escape, see_other};

use crate::server::Hub;

/// Rows of the stock table on one page.
const STOCK_ROWS_MAX: usize = 500;

/// The chrome of the hub's screens.
pub(crate) fn chrome(secure_cookie: bool) -> Chrome {
    Chrome {
        product: "oms hub".into(),
        nav: vec![("Network", "/ui"), ("Stock", "/ui/stock"), ("Orders", "/ui/orders"), ("Reports", "/ui/reports")],
        secure_cookie,
    }
}

#[derive(Clone)]
struct UiState {
    hub: Arc<Hub>,
    chrome: Arc<Chrome>,
}

/// The screens' routes (their roles are in `api::policy`).
pub(crate) fn routes(hub: Arc<Hub>, chrome: Arc<Chrome>) -> Router {
    Router::new()
        .route("/", get(|| async { see_other("/ui") }))
        .route("/ui", get(network))
        .route("/ui/stock", get(stock))
        .route("/ui/stock.csv", get(stock_csv))
        .route("/ui/orders", get(find_order))
        .route("/ui/orders/{id}", get(order_screen))
        .route("/ui/orders/{id}/cancel", post(cancel))
        .route("/ui/orders/{id}/notes", post(add_note))
        .route("/ui/orders/{id}/payments", post(record_payment))
        .route("/ui/orders/{id}/returns", post(create_return))
        .route("/ui/orders/{id}/cancel-lines", post(cancel_lines))
        .route("/ui/orders/{id}/fulfillments/{fulfillment}/cancel", post(cancel_at_site))
        .route("/ui/orders/{id}/route", post(route_now))
        .route("/ui/orders/{id}/routing", get(routing_screen))
        .with_state(UiState { hub: hub.clone(), chrome: chrome.clone() })
        .merge(crate::selfservice::routes(hub, chrome.secure_cookie))
}

fn ago(at_ms: u64, now_ms: u64) -> String {
    let s = now_ms.saturating_sub(at_ms) / 1_000;
    match s {
        0..60 => format!("{s} s"),
        60..3_600 => format!("{} min", s / 60),
        3_600..172_800 => format!("{} h {} min", s / 3_600, (s % 3_600) / 60),
        _ => format!("{} days", s / 86_400),
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

async fn network(State(st): State<UiState>, session: UiSession) -> Response {
    // Off the async worker: it reads the documents' and the intake's state, which sync and intake hold.
    let h = st.hub.clone();
    let v = tokio::task::spawn_blocking(move || crate::api::nodes_view(&h)).await.unwrap_or_default();
    let now = u(&v["now_ms"]);
    let empty = Vec::new();
    let nodes = v["nodes"].as_array().unwrap_or(&empty);
    page(
        &st.chrome,
        "Network",
        Some(&session),
        html! {
            h1 { "Network" }
            p { (nodes.iter().filter(|n| n["connected"] == true).count()) " of " (nodes.len()) " nodes linked now." }
            div.table-wrap { table {
                thead { tr { th { "Node" } th { "Link" } th { "Last change synced" } th.num { "Orders" }
                    th.num { "Quarantined changes" } th { "Certificate" } } }
                tbody { @for n in nodes { tr {
                    td { (s(&n["node"])) }
                    td { @if n["connected"] == true { "Linked for " (ago(u(&n["connected_at_ms"]), now)) }
                         @else { strong { "Unreachable" } @if let Some(t) = n["last_frame_at_ms"].as_u64() { ", last heard " (ago(t, now)) " ago" } } }
                    td { @if let Some(t) = n["last_change_at_ms"].as_u64() { (ago(t, now)) " ago" } @else { "—" } }
                    td.num { (u(&n["orders"])) }
                    td.num { (u(&n["changes_quarantined"])) }
                    td { @if n["certificate"]["expiring_soon"] == true { strong { "Expires soon" } }
                         @else if n["certificate"].is_object() { "valid " (u(&n["certificate"]["expires_in_s"]) / 86_400) " days" }
                         @else { "—" } }
                } } }
            } }
        },
    )
    .into_response()
}

#[derive(Deserialize, Default, Clone)]
struct StockQuery {
    sku: Option<String>,
    site: Option<String>,
    /// `1`: only rows whose site's figures are stale.
    stale: Option<String>,
    /// Column to sort by: `sku` (default), `site`, `available`, `age`.
    sort: Option<String>,
}

impl StockQuery {
    fn query(&self, sort: Option<&str>) -> String {
        let mut q = Vec::new();
        for (k, v) in [("sku", &self.sku), ("site", &self.site), ("stale", &self.stale)] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                q.push(format!("{k}={}", query_escape(v)));
            }
        }
        if let Some(s) = sort.or(self.sort.as_deref()) {
            q.push(format!("sort={}", query_escape(s)));
        }
        q.join("&")
    }
}

/// [`stock_selection`] on the hub's planner-read threads ([`crate::gate`]): it reads every site's stock and
/// takes the intake's and the demand cache's locks, so it must neither stall the async workers the other
/// screens share nor take the core sync needs. `503 overloaded` (a sentence on the screen) if it cannot
/// start in time.
async fn stock_selection_off(hub: &Arc<Hub>, q: &StockQuery) -> Result<(Vec<crate::api::StockRow>, bool), Problem> {
    let (h, q) = (hub.clone(), q.clone());
    hub.planner_reads.read(move || stock_selection(&h, &q)).await
}

/// The rows the stock screen shows for `q`, and whether more matched than it shows.
fn stock_selection(hub: &Hub, q: &StockQuery) -> (Vec<crate::api::StockRow>, bool) {
    let sku = q.sku.as_deref().map(str::trim).filter(|v| !v.is_empty());
    let site = q.site.as_deref().map(str::trim).filter(|v| !v.is_empty());
    let (_, mut rows) = crate::api::stock_rows(hub, sku, oms_service::now_ms());
    rows.retain(|r| site.is_none_or(|s| r.site == s) && (q.stale.as_deref() != Some("1") || r.stale));
    match q.sort.as_deref() {
        Some("site") => rows.sort_by(|a, b| (&a.site, &a.sku).cmp(&(&b.site, &b.sku))),
        Some("available") => rows.sort_by(|a, b| a.available.cmp(&b.available).then(a.sku.cmp(&b.sku))),
        Some("age") => rows.sort_by(|a, b| b.age_ms.cmp(&a.age_ms).then(a.sku.cmp(&b.sku))),
        _ => {}
    }
    let more = rows.len() > STOCK_ROWS_MAX;
    rows.truncate(STOCK_ROWS_MAX);
    (rows, more)
}

async fn stock(State(st): State<UiState>, session: UiSession, Query(q): Query<StockQuery>) -> Response {
    let (rows, more) = match stock_selection_off(&st.hub, &q).await {
        Ok(r) => r,
        Err(p) => return p.into_response(),
    };
    let sort_link = |col: &str, label: &str| html! { a href={ "/ui/stock?" (q.query(Some(col))) } { (label) } };
    page(
        &st.chrome,
        "Network stock",
        Some(&session),
        html! {
            h1 { "Network stock" }
            form.card.actions method="get" action="/ui/stock" {
                div { label for="sku" { "SKU" } input id="sku" name="sku" value=(q.sku.as_deref().unwrap_or("")); }
                div { label for="site" { "Site" } input id="site" name="site" value=(q.site.as_deref().unwrap_or("")); }
                div { label for="stale" { "Only stale sites" }
                    select id="stale" name="stale" {
                        option value="" selected[q.stale.as_deref() != Some("1")] { "No" }
                        option value="1" selected[q.stale.as_deref() == Some("1")] { "Yes" }
                    } }
                @if let Some(sort) = &q.sort { input type="hidden" name="sort" value=(sort); }
                button type="submit" { "Filter" }
            }
            p { (rows.len()) " rows" @if more { " (the first " (STOCK_ROWS_MAX) "; narrow the filter)" } ". "
                a href={ "/ui/stock.csv?" (q.query(None)) } { "Download these rows as CSV" } }
            div.table-wrap { table {
                thead { tr {
                    th { (sort_link("sku", "SKU")) } th { (sort_link("site", "Site")) }
                    th.num { "On hand" } th.num { "Reserved" } th.num { (sort_link("available", "Available")) }
                    th.num { "Hub may promise" } th.num { "Hub rights" } th.num { "Site rights" }
                    th { (sort_link("age", "Figures from")) } th { "Forecast" }
                } }
                tbody { @for r in &rows { tr {
                    td { (r.sku) } td { (r.site) }
                    td.num { (r.on_hand) } td.num { (r.reserved) } td.num { (r.available) }
                    td.num { (r.hub_promisable) } td.num { (r.hub_rights) }
                    td.num { @if let Some(v) = r.site_rights { (v) } @else { "—" } }
                    td { @if r.stale { strong { "Stale: " } } (ago(r.updated_at_ms, r.updated_at_ms + r.age_ms)) " ago" }
                    td { a href={ "/ui/forecast/" (query_escape(&r.sku)) "?site=" (query_escape(&r.site)) } { "Forecast" } }
                } } }
            } }
        },
    )
    .into_response()
}

async fn stock_csv(State(st): State<UiState>, Query(q): Query<StockQuery>) -> Response {
    match stock_selection_off(&st.hub, &q).await {
        Ok((rows, _)) => crate::api::stock_csv(&rows),
        Err(p) => p.into_response(),
    }
}

/// The forecast screen (served by `forecast_api`, which holds the demand cache): history and forecast as a
/// chart, the replenishment figures beside it.
pub(crate) fn forecast_page(chrome: &Chrome, session: &UiSession, sku: &str, v: &Value) -> Markup {
    let empty = Vec::new();
    let recent: Vec<f64> =
        v["history"]["recent"].as_array().unwrap_or(&empty).iter().filter_map(Value::as_f64).collect();
    let days = v["forecast"].as_array().unwrap_or(&empty);
    let band: Vec<(f64, f64, f64)> = days
        .iter()
        .map(|d| {
            let mean = d["mean"].as_f64().unwrap_or(0.0);
            (d["p10"].as_f64().unwrap_or(mean), mean, d["p90"].as_f64().unwrap_or(mean))
        })
        .collect();
    let site = v["site"].as_str();
    page(
        chrome,
        &format!("Forecast {sku}"),
        Some(session),
        html! {
            h1 { "Forecast for " (sku) @if let Some(site) = site { " at " (site) } @else { " across the network" } }
            p { "Model " strong { (s(&v["model"])) } ", daily " (s(&v["basis"])) " units, as of " (s(&v["as_of"])) "." }
            figure.card {
                (PreEscaped(chart_svg(&recent, &band)))
                figcaption.hint { "Last " (recent.len()) " days (dark line), forecast mean (blue) and the band from the 10th to the 90th percentile (shaded), units a day." }
            }
            dl.facts.card {
                dt { "Available now" } dd { (u(&v["available"])) }
                dt { "Days of cover" } dd { @if let Some(d) = v["days_of_cover"].as_f64() { (format!("{d:.1}")) } @else { "—" } }
                dt { "Reorder point" } dd { (format!("{:.1}", v["reorder_point"].as_f64().unwrap_or(0.0))) }
                dt { "Safety stock" } dd { (format!("{:.1}", v["safety_stock"].as_f64().unwrap_or(0.0))) }
                dt { "Lead time" } dd { (u(&v["lead_time_days"])) " days" }
                dt { "Suggested order" } dd { @if v["reorder"].is_object() { (u(&v["reorder"]["qty"])) " units by " (s(&v["reorder"]["order_by"])) } @else { "none needed" } }
                dt { "Runs out" } dd { @if let Some(d) = v["stockout_date"].as_str() { (d) } @else { "not within the horizon" } }
            }
        },
    )
}

/// A line chart as SVG: `history` then the forecast's mean with its p10–p90 band, on one time axis.
/// Written by hand: one polyline, one polygon and two labelled axes are a few dozen lines, where a charting
/// crate would bring a font stack and dozens of crates for them.
fn chart_svg(history: &[f64], forecast: &[(f64, f64, f64)]) -> String {
    let (w, h, left, bottom, top) = (720.0_f64, 260.0_f64, 44.0_f64, 24.0_f64, 8.0_f64);
    let n = history.len() + forecast.len();
    if n < 2 {
        return "<p>Not enough history to draw.</p>".into();
    }
    let max = history.iter().copied().chain(forecast.iter().map(|f| f.2)).fold(1.0_f64, f64::max) * 1.1;
    let x = |i: usize| left + (w - left - 8.0) * i as f64 / (n - 1) as f64;
    let y = |v: f64| top + (h - top - bottom) * (1.0 - v.max(0.0) / max);
    let points = |it: &mut dyn Iterator<Item = (usize, f64)>| {
        it.map(|(i, v)| format!("{:.1},{:.1}", x(i), y(v))).collect::<Vec<_>>().join(" ")
    };
    let off = history.len();
    let hist = points(&mut history.iter().enumerate().map(|(i, v)| (i, *v)));
    let mean = points(&mut forecast.iter().enumerate().map(|(i, f)| (off + i, f.1)));
    let upper = forecast.iter().enumerate().map(|(i, f)| (off + i, f.2));
    let lower = forecast.iter().enumerate().rev().map(|(i, f)| (off + i, f.0));
    let band = points(&mut upper.chain(lower));
    let split = x(off.saturating_sub(1));
    format!(
        r##"<svg viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="Daily units: history and forecast" xmlns="http://www.w3.org/2000/svg" style="max-width:{w}px;font:12px system-ui,sans-serif">
<line x1="{left}" y1="{base:.1}" x2="{right:.1}" y2="{base:.1}" stroke="#4a5360"/>
<line x1="{left}" y1="{top}" x2="{left}" y2="{base:.1}" stroke="#4a5360"/>
<text x="{lx:.1}" y="{ty:.1}" text-anchor="end" fill="#1b1f24">{max:.0}</text>
<text x="{lx:.1}" y="{base:.1}" text-anchor="end" fill="#1b1f24">0</text>
<text x="{left}" y="{h}" fill="#1b1f24">{past} days ago</text>
<text x="{split:.1}" y="{h}" text-anchor="middle" fill="#1b1f24">today</text>
<text x="{right:.1}" y="{h}" text-anchor="end" fill="#1b1f24">+{ahead} days</text>
<line x1="{split:.1}" y1="{top}" x2="{split:.1}" y2="{base:.1}" stroke="#c9d1d9" stroke-dasharray="4 3"/>
<polygon points="{band}" fill="#0b5cad" fill-opacity="0.18"/>
<polyline points="{hist}" fill="none" stroke="#1b1f24" stroke-width="1.5"/>
<polyline points="{mean}" fill="none" stroke="#0b5cad" stroke-width="2"/>
</svg>"##,
        base = h - bottom,
        right = w - 8.0,
        lx = left - 4.0,
        ty = top + 10.0,
        past = history.len(),
        ahead = forecast.len(),
    )
}

#[derive(Deserialize, Default)]
struct FindQuery {
    id: Option<String>,
    q: Option<String>,
}

/// Orders shown for one search on the screen.
const FOUND_SHOWN_MAX: usize = 20;

/// Finds an order by its number, the customer's e-mail address or phone number, or the channel's order
/// reference: one match opens it, several are listed newest first, none says so.
async fn find_order(State(st): State<UiState>, session: UiSession, Query(q): Query<FindQuery>) -> Response {
    if let Some(id) = q.id.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        return see_other(&format!("/ui/orders/{}", query_escape(id)));
    }
    let query =
        q.q.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(|v| v.chars().take(256).collect::<String>());
    let mut found: Vec<Value> = Vec::new();
    let mut error = None;
    if let Some(query) = &query {
        let principal = session.principal();
        let hub = st.hub.clone();
        let query = query.clone();
        let r = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, Problem> {
            let mut out = Vec::new();
            for o in hub.intake.search(&query, FOUND_SHOWN_MAX)? {
                out.extend(crate::orders::hub_order(&hub, o.id.as_str(), &principal)?);
            }
            Ok(out)
        })
        .await;
        match r {
            Ok(Ok(v)) => found = v,
            Ok(Err(p)) => error = Some(p.detail),
            Err(e) => error = Some(e.to_string()),
        }
        if found.len() == 1 && error.is_none() {
            return see_other(&format!("/ui/orders/{}", query_escape(s(&found[0]["id"]))));
        }
    }
    let now = oms_service::now_ms();
    // The orders a carrier exception flagged for service, first ones by order id.
    let hub = st.hub.clone();
    let flagged = tokio::task::spawn_blocking(move || {
        crate::tracking::flagged(hub.intake.db(), None, FOUND_SHOWN_MAX, None).map(|(f, _)| f)
    })
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or_default();
    page(
        &st.chrome,
        "Find an order",
        Some(&session),
        html! {
            h1 { "Find an order" }
            form.card method="get" action="/ui/orders" role="search" {
                label for="q" { "Order number, e-mail, phone or order reference"
                    span.hint { "As the customer gives it: hub-12, ann@example.com, +49 30 1234567 or the shop's order number." } }
                input.scan id="q" name="q" autofocus required autocomplete="off" value=[query.as_deref()];
                button type="submit" { "Find" }
            }
            @if let Some(e) = &error { (error_box(e)) }
            @if let Some(query) = &query {
                @if found.is_empty() && error.is_none() {
                    p role="status" { "No order matches “" (query) "”. Check the spelling, or ask for the order number on the confirmation." }
                } @else if !found.is_empty() {
                    p role="status" { (found.len()) " orders match “" (query) "”, newest first." }
                    div.table-wrap { table {
                        thead { tr { th { "Order" } th { "Placed" } th { "Customer" } th { "Reference" } th { "Status" } } }
                        tbody { @for v in &found { tr {
                            td { a href={ "/ui/orders/" (s(&v["id"])) } { (s(&v["id"])) } }
                            td { (ago(u(&v["created_at_ms"]), now)) " ago" }
                            td { (s(&v["order"]["ship_to"]["name"])) }
                            td { (s(&v["channel"])) " " (s(&v["external_ref"])) }
                            td { (status_words(s(&v["status"]))) }
                        } } }
                    } }
                }
            }
            @if !flagged.is_empty() {
                h2 { "Carrier exceptions" }
                p.hint { "Parcels a carrier could not deliver or is sending back; all of them: GET /v1/orders?flag=carrier_exception." }
                ul { @for f in &flagged {
                    li { a href={ "/ui/orders/" (f.order) } { (f.order) } ": " (f.carrier) " " code { (f.tracking) } " — " (f.status)
                        @if let Some(d) = &f.description { " (" (d) ")" } }
                } }
            }
        },
    )
    .into_response()
}

/// A quantity field per line (`sku.<i>`, `qty.<i>`, up to its units, `hint` under the SKU) and the required
/// `reason`, for the order page's forms; `ids` keeps two forms' element ids apart.
fn line_fields(ids: &str, lines: &[(&str, u64)], hint: impl Fn(u64) -> String, reason_hint: &str) -> Markup {
    html! {
        @for (i, (sku, n)) in lines.iter().enumerate() {
            input type="hidden" name={ "sku." (i) } value=(sku);
            label for={ (ids) "qty-" (i) } { (sku) span.hint { (hint(*n)) } }
            input id={ (ids) "qty-" (i) } name={ "qty." (i) } type="number" min="0" max=(n) value="0";
        }
        label for={ (ids) "reason" } { "Reason" span.hint { (reason_hint) } }
        input id={ (ids) "reason" } name="reason" required maxlength=(oms_protocol::domain::TEXT_BYTES_MAX);
    }
}

/// The order page again with `error`, or the redirect to it: the answer of the order page's forms.
fn after_form(st: &UiState, f: &Form, v: &Value, id: &str, done: Result<(), Problem>) -> Response {
    match done {
        Ok(()) => see_other(&format!("/ui/orders/{}", query_escape(id))),
        Err(p) => {
            let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::BAD_REQUEST);
            (status, order_page(st, &f.session, v, Some(&p.detail))).into_response()
        }
    }
}

/// An order page form's required `reason` and its lines (`sku.<i>`, `qty.<i>`), or the sentence saying what
/// is missing.
fn reason_and_lines(f: &Form, no_reason: &str) -> Result<(String, Vec<crate::returns::RequestLine>), String> {
    let reason = f.get("reason").unwrap_or("").to_owned();
    if reason.is_empty() {
        return Err(no_reason.to_owned());
    }
    let lines = crate::selfservice::chosen_lines(|k| f.get(k), |_| Ok(reason.clone()))?;
    Ok((reason, lines))
}

/// The order page again with `words` (`422`): a form that cannot be taken as sent.
fn unreadable(st: &UiState, f: &Form, v: &Value, words: &str) -> Response {
    (StatusCode::UNPROCESSABLE_ENTITY, order_page(st, &f.session, v, Some(words))).into_response()
}

/// Service creates a return on the order page: the lines and their quantities, one reason for all of them
/// (required), approved at once if asked. The request and the approval are each audited in their own
/// transaction, as over the API.
async fn create_return(
    State(st): State<UiState>,
    actor: Actor,
    Path(id): Path<String>,
    f: Form,
) -> Result<Response, Problem> {
    let v = order_of(&st, &f.session, &id).await?;
    let lines = match reason_and_lines(&f, "Give a reason for the return.") {
        Ok((_, lines)) => lines,
        Err(words) => return Ok(unreadable(&st, &f, &v, &words)),
    };
    let approve = f.get("approve") == Some("1");
    let (h, key) = (st.hub.clone(), id.clone());
    let done = crate::orders::blocking(move || -> Result<crate::returns::Rma, crate::returns::ReturnsError> {
        let order = h.intake.order(&key)?.ok_or_else(|| crate::returns::ReturnsError::OrderNotFound(key.clone()))?;
        let shipped = crate::returns::http::shipped_of(&h, &order);
        let req = crate::returns::ReturnRequest { lines, fulfillment: None };
        let (db, now) = (h.intake.db(), oms_service::now_ms());
        let rma = h.returns.request(db, &key, &order.draft.channel, &shipped, &req, &actor, now)?;
        if approve { h.returns.step(db, &rma.id, "approve", None, &actor, now) } else { Ok(rma) }
    })
    .await;
    if let Ok(rma) = &done {
        crate::returns::sites::publish(&st.hub, rma);
    }
    Ok(after_form(&st, &f, &v, &id, done.map(|_| ())))
}

/// Service cancels units on the order page: quantities per line and a required reason; waiting units at
/// once, units at a site asked of it (`Intake::cancel_units`), the change and its audit row in one transaction.
async fn cancel_lines(
    State(st): State<UiState>,
    actor: Actor,
    Path(id): Path<String>,
    f: Form,
) -> Result<Response, Problem> {
    let v = order_of(&st, &f.session, &id).await?;
    let (reason, chosen) = match reason_and_lines(&f, "Give a reason for the cancellation.") {
        Ok(r) => r,
        Err(words) => return Ok(unreadable(&st, &f, &v, &words)),
    };
    let asked: Vec<crate::orders::CancelLine> = chosen
        .into_iter()
        .map(|l| crate::orders::CancelLine { sku: l.sku, qty: u32::try_from(l.qty).unwrap_or(u32::MAX) })
        .collect();
    let done = match crate::orders::cancel_lines(&asked) {
        Ok(lines) => {
            let principal = f.session.principal();
            crate::orders::cancel_order_lines(&st.hub, &principal, actor, &id, lines, Some(reason)).await.map(|_| ())
        }
        Err(p) => Err(p),
    };
    Ok(after_form(&st, &f, &v, &id, done))
}

/// Service asks for the order's waiting units to be routed now (audited); the order page again, saying so
/// when no site can take any of them.
async fn route_now(
    State(st): State<UiState>,
    actor: Actor,
    Path(id): Path<String>,
    f: Form,
) -> Result<Response, Problem> {
    let v = order_of(&st, &f.session, &id).await?;
    let done = match crate::orders::route_waiting_now(&st.hub, actor, &id).await {
        Ok(a) if !a.routed => Err(Problem::new(
            StatusCode::CONFLICT,
            "nothing_placeable",
            "No site can take any of the waiting units now; routing keeps trying every second.",
        )),
        Ok(_) => Ok(()),
        Err(p) => Err(p),
    };
    Ok(after_form(&st, &f, &v, &id, done))
}

/// A serde enum's word (`partial`, `no_capacity_today`) for people: underscores as spaces.
fn word<T: serde::Serialize>(t: &T) -> String {
    serde_json::to_value(t).ok().and_then(|v| v.as_str().map(|w| w.replace('_', " "))).unwrap_or_default()
}

/// A promise's time for people (RFC 3339 in UTC), or a dash.
fn when(ms: Option<u64>) -> String {
    ms.and_then(oms_protocol::shipping::rfc3339).unwrap_or_else(|| "—".into())
}

/// Every routing decision of an order drawn for people (planner and service): per decision its trigger and
/// outcome, what each chosen site ships, and the candidates with what decided between them, in the order the
/// router compares plans; the sites left out and why. The same data as `GET /v1/orders/{id}/routing`.
async fn routing_screen(
    State(st): State<UiState>,
    session: UiSession,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let (hub, key, principal) = (st.hub.clone(), id.clone(), session.principal());
    let order = crate::orders::blocking(move || hub.intake.order(&key))
        .await?
        .filter(|o| principal.confined_to().is_none_or(|c| &o.draft.channel == c))
        .ok_or_else(|| crate::orders::not_found(&id))?;
    let now = oms_service::now_ms();
    let body = html! {
        h1 { "Routing of order " (order.id) }
        p { a href={ "/ui/orders/" (order.id) } { "Back to the order" } }
        p.hint { "Plans are compared on, in this order: units left unfilled, then the number of shipments, then stale sites \
            shipping, then the day the last shipment leaves (from each site's cut-offs), then the sites' priorities, then \
            units × distance. The first difference decides." }
        @if !order.avoid_sites.is_empty() {
            p { "Never placed at again (moved away by service): " (order.avoid_sites.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")) }
        }
        @for d in order.decisions.iter().rev() {
            section.card {
                h2 { (ago(d.at_ms, now)) " ago — " (word(&d.decision.outcome)) }
                p { "Why routing ran: " (d.trigger) ". " (d.decision.explanation.sets_evaluated) " site sets scored." }
                @if d.decision.assignments.is_empty() { p { strong { "No site was chosen." } } }
                ul { @for a in &d.decision.assignments {
                    li { strong { (a.site) } " ships "
                        (a.lines.iter().map(|l| format!("{} × {}", l.qty, l.sku)).collect::<Vec<_>>().join(", "))
                        " (" (format!("{:.0}", a.distance_km)) " km)"
                        @if let Some(p) = &a.promise { ", ships by " (when(Some(p.ship_by_ms))) } }
                } }
                @if !d.decision.unfilled.is_empty() {
                    p { "Left waiting for stock: " (d.decision.unfilled.iter().map(|l| format!("{} × {}", l.qty, l.sku)).collect::<Vec<_>>().join(", ")) }
                }
                @if d.decision.explanation.candidates.is_empty() { p { "No site could be considered: none is known, or every one was left out." } }
                @else { div.table-wrap { table {
                    caption { "Sites considered, nearest first" }
                    thead { tr { th { "Site" } th.num { "Distance (km)" } th.num { "Units it could ship" } th { "Ships by" }
                        th.num { "Priority" } th { "Fresh" } th.num { "Alone: unfilled" } th { "Chosen" } } }
                    tbody { @for c in &d.decision.explanation.candidates { tr {
                        td { (c.site) } td.num { (format!("{:.0}", c.distance_km)) } td.num { (c.promisable_units) }
                        td { (when(c.promised_ship_by_ms)) } td.num { (c.priority) }
                        td { @if c.stale { "stale" } @else { "yes" } } td.num { (c.alone.unfilled_units) }
                        td { @if d.decision.assignments.iter().any(|a| a.site == c.site) { strong { "chosen" } } @else { "—" } }
                    } } }
                } } }
                @if !d.decision.explanation.excluded.is_empty() {
                    p { "Left out: " (d.decision.explanation.excluded.iter().map(|e| format!("{} ({})", e.site, word(&e.reason))).collect::<Vec<_>>().join(", ")) }
                }
            }
        }
        @if order.decisions.is_empty() { p { "No routing decision recorded." } }
    };
    Ok(page(&st.chrome, &format!("Routing of {}", order.id), Some(&session), body).into_response())
}

/// Whether a fulfillment in `status` (its site's state) can still be cancelled at its site.
fn site_may_cancel(status: &str) -> bool {
    !matches!(status, "shipped" | "delivered" | "cancelled" | "rejected")
}

/// Service asks one site to cancel its fulfillment on the order page, with a required reason: the units are
/// cancelled, or go back to routing away from that site (`then`), once the site confirms.
async fn cancel_at_site(
    State(st): State<UiState>,
    actor: Actor,
    Path((id, fulfillment)): Path<(String, String)>,
    f: Form,
) -> Result<Response, Problem> {
    let v = order_of(&st, &f.session, &id).await?;
    let reason = f.get("reason").unwrap_or("").trim().to_owned();
    if reason.is_empty() {
        return Ok(unreadable(&st, &f, &v, "Give a reason for cancelling at this site."));
    }
    let then = match f.get("then") {
        Some("reroute") => crate::intake::AfterSiteCancel::Reroute,
        Some("cancel") => crate::intake::AfterSiteCancel::Cancel,
        _ => return Ok(unreadable(&st, &f, &v, "Choose to move the units to another site or to cancel them.")),
    };
    let principal = f.session.principal();
    let done = crate::orders::site_cancel(&st.hub, &principal, actor, &id, &fulfillment, then, reason).await;
    Ok(after_form(&st, &f, &v, &id, done.map(|_| ())))
}

/// The customer's order status in plain words.
pub(crate) fn status_words(status: &str) -> &'static str {
    match status {
        "in_fulfillment" => "Being prepared",
        "partially_backordered" => "Partly waiting for stock",
        "backordered" => "Waiting for stock",
        "partially_shipped" => "Partly on its way",
        "shipped" => "On its way",
        "delivered" => "Delivered",
        "cancel_requested" => "Cancellation requested",
        "partially_cancelled" => "Partly cancelled",
        "cancelled" => "Cancelled",
        "received" => "Order received",
        "carrier_pre_transit" => "Label created, waiting for the carrier",
        "carrier_in_transit" => "With the carrier, on its way",
        "carrier_out_for_delivery" => "Out for delivery",
        "carrier_available_for_pickup" => "Ready for pickup at the carrier's point",
        "carrier_delivered" => "Delivered (reported by the carrier)",
        "carrier_return_to_sender" => "Being returned to us by the carrier",
        "carrier_failure" => "The carrier reports a problem; we are looking into it",
        "accepted" | "picking" | "picked" | "packed" => "Being prepared",
        _ => "In progress",
    }
}

/// The order view of `id` as `session` may see it (a read of intake.redb and the documents: off the async
/// worker, so a busy intake never stalls the other screens).
async fn order_of(st: &UiState, session: &UiSession, id: &str) -> Result<Value, Problem> {
    let (hub, principal, key) = (st.hub.clone(), session.principal(), id.to_owned());
    crate::orders::blocking(move || crate::orders::hub_order(&hub, &key, &principal))
        .await?
        .ok_or_else(|| crate::orders::not_found(id))
}

async fn order_screen(
    State(st): State<UiState>,
    session: UiSession,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let v = order_of(&st, &session, &id).await?;
    Ok(order_page(&st, &session, &v, None).into_response())
}

fn order_page(st: &UiState, session: &UiSession, v: &Value, error: Option<&str>) -> Markup {
    let empty = Vec::new();
    let now = oms_service::now_ms();
    let can_cancel = matches!(session.role, oms_service::auth::Role::Service | oms_service::auth::Role::Admin)
        && v["cancel_requested_at_ms"].is_null();
    // Per line, the units a figure (`shipped`: what a return may take back; `unfilled`: what a line cancel
    // may take) holds, for the lines that have some, at most as many as the forms read.
    let having = |field: &str| -> Vec<(&str, u64)> {
        v["lines"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .filter(|l| u(&l[field]) > 0)
            .map(|l| (s(&l["sku"]), u(&l[field])))
            .take(crate::selfservice::RETURN_LINES_SHOWN_MAX)
            .collect()
    };
    let (shipped, cancellable) = (having("shipped"), having("cancellable"));
    page(
        &st.chrome,
        &format!("Order {}", s(&v["id"])),
        Some(session),
        html! {
            h1 { "Order " (s(&v["id"])) }
            p { strong { (status_words(s(&v["status"]))) } " · " (s(&v["channel"])) " order " (s(&v["external_ref"]))
                span.hint { "State: " code { (s(&v["status"])) } } }
            @if let Some(e) = error { (error_box(e)) }
            @if v["carrier_exception"].is_object() {
                (error_box(&format!("Carrier exception: {} reports {} for {} ({}). {}", s(&v["carrier_exception"]["carrier"]),
                    s(&v["carrier_exception"]["status"]), s(&v["carrier_exception"]["tracking"]),
                    s(&v["carrier_exception"]["fulfillment"]), s(&v["carrier_exception"]["description"]))))
            }
            div.table-wrap { table {
                thead { tr { th { "SKU" } th.num { "Ordered" } th.num { "Placed at sites" } th.num { "Shipped" } th.num { "Waiting for stock" } } }
                tbody { @for l in v["lines"].as_array().unwrap_or(&empty) { tr {
                    td { (s(&l["sku"])) } td.num { (u(&l["qty"])) } td.num { (u(&l["placed"])) }
                    td.num { (u(&l["shipped"])) } td.num { (u(&l["unfilled"])) }
                } } }
            } }
            h2 { "Fulfillments" }
            p { a href={ "/ui/orders/" (s(&v["id"])) "/routing" } { "How it was routed" } }
            ul { @for f in v["fulfillments"].as_array().unwrap_or(&empty) {
                li { (s(&f["id"])) " from " strong { (s(&f["site"])) } ": " (status_words(s(&f["status"]))) " (" code { (s(&f["status"])) } ")"
                    @if f["shipment"].is_object() { ", " (s(&f["shipment"]["carrier"])) " " code { (s(&f["shipment"]["tracking"])) } }
                    @if let Some(t) = f["tracking_status"].as_str() { " — carrier: " code { (t) } }
                    @if f["site_cancel"].is_object() {
                        " — " strong { @if f["site_cancel"]["then"] == "reroute" { "moving to another site" } @else { "cancel asked of the site" } }
                        " (" (s(&f["site_cancel"]["reason"])) ")"
                    }
                    @if can_cancel && f["site_cancel"].is_null() && f["released"].is_null() && site_may_cancel(s(&f["status"])) {
                        form.card method="post" action={ "/ui/orders/" (s(&v["id"])) "/fulfillments/" (s(&f["id"])) "/cancel" } {
                            input type="hidden" name="csrf" value=(session.csrf);
                            label for={ "sc-reason-" (s(&f["id"])) } { "Reason" span.hint { "Recorded in the audit trail." } }
                            input id={ "sc-reason-" (s(&f["id"])) } name="reason" required maxlength=(oms_protocol::domain::TEXT_BYTES_MAX);
                            button.secondary type="submit" name="then" value="reroute" { "Move to another site" }
                            " "
                            button.danger type="submit" name="then" value="cancel" { "Cancel at this site" }
                        }
                    }
                }
            } }
            h2 { "Timeline" }
            ol { @for t in v["timeline"].as_array().unwrap_or(&empty) {
                li { (ago(u(&t["at_ms"]), now)) " ago — "
                    @if t["status"] == "note" { "Note by " (s(&t["by"])) ": " } @else { (s(&t["site"])) ": " }
                    (s(&t["note"])) }
            } }
            @if let Some(r) = v["cancel_reason"].as_str() { p { "Cancelled because: " (r) } }
            @let pay = &v["payment"];
            @if pay.is_object() {
                p { "Payment: " strong { (s(&pay["method"])) } " · " code { (s(&pay["status"])) }
                    " · captured " (u(&pay["captured_minor"])) ", released " (u(&pay["released_minor"]))
                    @if pay["method"] != "card" { ", paid " (u(&pay["paid_minor"])) ", owed " strong { (u(&pay["outstanding_minor"])) } }
                    " " (s(&pay["currency"])) " (minor units)" }
            }
            @if session.role == oms_service::auth::Role::Service && pay.is_object() && pay["method"] != "card" {
                form.card method="post" action={ "/ui/orders/" (s(&v["id"])) "/payments" } {
                    input type="hidden" name="csrf" value=(session.csrf);
                    // The same form sent twice records once: its key is fixed when the page is drawn.
                    input type="hidden" name="key" value=(payment_form_key(session, pay));
                    label for="amount" { "Record a payment received" span.hint { "Amount in minor units (cents); at most what is owed." } }
                    input id="amount" name="amount_minor" type="number" min="1" max=(u(&pay["outstanding_minor"])) required;
                    label for="method" { "How" }
                    select id="method" name="method" {
                        option value="cash" { "Cash" } option value="bank_transfer" { "Bank transfer" }
                        option value="cheque" { "Cheque" } option value="card_terminal" { "Card terminal" }
                        option value="other" { "Other" }
                    }
                    label for="reference" { "Reference" span.hint { "The receipt or bank reference." } }
                    input id="reference" name="reference" maxlength=(crate::money::PAYMENT_REFERENCE_BYTES_MAX) required;
                    label for="pay-reason" { "Note" }
                    input id="pay-reason" name="reason" required;
                    button.secondary type="submit" { "Record the payment" }
                }
            }
            @if session.role == oms_service::auth::Role::Service {
                form.card method="post" action={ "/ui/orders/" (s(&v["id"])) "/notes" } {
                    input type="hidden" name="csrf" value=(session.csrf);
                    label for="note" { "Add a note" span.hint { "For service and planners only; the customer never sees it." } }
                    textarea id="note" name="text" rows="3" maxlength=(crate::notes::NOTE_BYTES_MAX) required {}
                    button.secondary type="submit" { "Add the note" }
                }
            }
            @if !v["rmas"].as_array().unwrap_or(&empty).is_empty() {
                h2 { "Returns" }
                ul { @for r in v["rmas"].as_array().unwrap_or(&empty) {
                    li { strong { (s(&r["id"])) } " from " (s(&r["site"])) ": " code { (s(&r["state"])) } " — "
                        (r["lines"].as_array().unwrap_or(&empty).iter().map(|l| format!("{} × {} ({})", u(&l["qty"]), s(&l["sku"]), s(&l["reason"]))).collect::<Vec<_>>().join(", ")) }
                } }
            }
            @if session.role == oms_service::auth::Role::Service && !shipped.is_empty() {
                form.card method="post" action={ "/ui/orders/" (s(&v["id"])) "/returns" } {
                    input type="hidden" name="csrf" value=(session.csrf);
                    h2 { "Create a return" }
                    p.hint { "Units shipped by one site per return; the returns policy (window, SKUs, what is left to return) applies." }
                    (line_fields("r", &shipped, |n| format!("Units to take back (shipped {n})"), "Recorded on the return and in the audit trail."))
                    label { input type="checkbox" name="approve" value="1"; " Approve it now" }
                    button.secondary type="submit" { "Create the return" }
                }
            }
            @if can_cancel && v["unfilled"].as_array().is_some_and(|a| !a.is_empty()) {
                form.card method="post" action={ "/ui/orders/" (s(&v["id"])) "/route" } {
                    input type="hidden" name="csrf" value=(session.csrf);
                    h2 { "Route the waiting units now" }
                    p.hint { "Routing tries them by itself every second; this asks at once and records who asked." }
                    button.secondary type="submit" { "Route now" }
                }
            }
            @if can_cancel && !cancellable.is_empty() {
                form.card method="post" action={ "/ui/orders/" (s(&v["id"])) "/cancel-lines" } {
                    input type="hidden" name="csrf" value=(session.csrf);
                    h2 { "Cancel units" }
                    p.hint { "Units waiting for stock go at once. Units at a site that has not shipped them are asked of the site; the rest of its part is placed again. The rest of the order goes on." }
                    (line_fields("c", &cancellable, |n| format!("Units to cancel ({n} can be)"), "Recorded in the audit trail."))
                    button.danger type="submit" { "Cancel these units" }
                }
            }
            @if can_cancel {
                form.card method="post" action={ "/ui/orders/" (s(&v["id"])) "/cancel" } {
                    input type="hidden" name="csrf" value=(session.csrf);
                    h2 { "Cancel the order" }
                    p.hint { "Units not shipped yet are cancelled; sites confirm when they sync." }
                    label for="reason" { "Reason" span.hint { "Recorded in the audit trail." } }
                    input id="reason" name="reason" required;
                    button.danger type="submit" { "Cancel the order" }
                }
            }
        },
    )
}

async fn cancel(State(st): State<UiState>, actor: Actor, Path(id): Path<String>, f: Form) -> Result<Response, Problem> {
    let v = order_of(&st, &f.session, &id).await?;
    let reason = f.get("reason").unwrap_or("").to_owned();
    if reason.is_empty() {
        let e = "Give a reason for the cancellation.";
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, order_page(&st, &f.session, &v, Some(e))).into_response());
    }
    let done = crate::orders::cancel_order(&st.hub, &f.session.principal(), actor, &id, Some(reason)).await;
    Ok(after_form(&st, &f, &v, &id, done.map(|_| ())))
}

async fn add_note(
    State(st): State<UiState>,
    actor: Actor,
    Path(id): Path<String>,
    f: Form,
) -> Result<Response, Problem> {
    let v = order_of(&st, &f.session, &id).await?;
    let done = crate::notes::note(&st.hub, actor, &id, f.get("text").unwrap_or("")).await;
    Ok(after_form(&st, &f, &v, &id, done.map(|_| ())))
}

/// The idempotency key of the payment form: the session's and the payments recorded so far, so a form sent
/// twice records once and the next one drawn records the next payment.
fn payment_form_key(session: &UiSession, pay: &Value) -> String {
    let n = pay["recorded"].as_array().map_or(0, Vec::len);
    let session_part = oms_service::auth::keys::hex(&oms_service::auth::keys::token_hash(&session.csrf));
    format!("ui-{}-{n}", &session_part[..16])
}

async fn record_payment(
    State(st): State<UiState>,
    actor: Actor,
    Path(id): Path<String>,
    f: Form,
) -> Result<Response, Problem> {
    let v = order_of(&st, &f.session, &id).await?;
    let method = serde_json::from_value(Value::String(f.get("method").unwrap_or("").to_owned()));
    let (Some(amount), Ok(method)) = (f.get("amount_minor").and_then(|a| a.parse::<u64>().ok()), method) else {
        let e = "Give the amount as a whole number of minor units and choose how it was paid.";
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, order_page(&st, &f.session, &v, Some(e))).into_response());
    };
    let req = crate::money::ManualPaymentRequest {
        amount_minor: amount,
        method,
        reference: f.get("reference").unwrap_or("").to_owned(),
        reason: f.get("reason").unwrap_or("").to_owned(),
    };
    let done = crate::money::http::record(&st.hub, actor, &id, f.get("key").unwrap_or(""), req).await;
    Ok(after_form(&st, &f, &v, &id, done.map(|_| ())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_draws_history_forecast_and_band_inside_its_box() {
        let svg = chart_svg(&[1.0, 3.0, 2.0], &[(1.0, 2.0, 4.0), (0.5, 2.0, 5.0)]);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<polygon").count(), 1);
        assert!(svg.contains("3 days ago") && svg.contains("+2 days"), "{svg}");
        // Every point lies in the 720 × 260 box.
        let points = svg.split("points=\"").skip(1).flat_map(|p| p.split('"').next().unwrap_or("").split(' '));
        for p in points {
            let (x, y) = p.split_once(',').unwrap();
            let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
            assert!((0.0..=720.0).contains(&x) && (0.0..=260.0).contains(&y), "{p}");
        }
        assert!(chart_svg(&[1.0], &[]).contains("Not enough history"));
        assert_eq!(status_words("partially_shipped"), "Partly on its way");
    }
}
