//! The customer's own page behind a tracking link (`/t/{token}`, no sign-in, phone-first; a customer without
//! the link finds it at `/t` with the order number and the e-mail address the order was placed with): the order's
//! status in words, the payment in words and amounts, the returns asked for and where they stand, and two
//! actions: *cancel* (while something is still to be sent; the same cancellation as a channel's
//! `POST /v1/orders/{id}/cancel`) and *request a return* (per shipped line, a quantity and a reason from
//! [`REASONS`], through the same checks as `POST /v1/orders/{id}/returns`: [`crate::returns::Returns::request`]).
//!
//! **The token is the capability**: it is the only thing that names the order (no order id in a form), and
//! a token that finds no order, malformed or forged, gets the same 404 page as a missing order, so the page
//! is no oracle.
//!
//! **Forms cannot be forged cross-site** (double-submit cookie): the page sets a random form token in a
//! `SameSite=Strict`, `HttpOnly` cookie (path `/t/`) and puts the same value in each form; a post is taken
//! only when the two match (and the browser does not say `Sec-Fetch-Site: cross-site`). A browser sends a
//! `Strict` cookie with same-site requests only, so a page on another site cannot post with it, and without
//! it the post is refused with a sentence and changes nothing. This needs no key and no server state (the
//! hub has no signing key for screens; a per-process key would break every open page at a restart).
//!
//! Refusals are pages with one sentence (`403` for a stale form, `409`/`422` as the API answers) and change
//! nothing; every request, taken or refused by the returns policy, has its audit row (actor `customer`).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use serde_json::Value;

use oms_service::Problem;
use oms_service::audit::Actor;
use oms_service::auth::{Principal, Role};
use oms_service::web::{Chrome, FORM_BYTES_MAX, FORM_FIELDS_MAX, error_box, page, see_other};

use crate::intake::HubOrder;
use crate::money::Payment;
use crate::returns::{RequestLine, ReturnRequest, ReturnsError, Rma, RmaState, Shipped};
use crate::server::Hub;

/// The cookie holding the page's form token.
pub const FORM_COOKIE: &str = "oms_t";
/// Bytes of randomness in a form token (hex in the cookie and the form).
const FORM_TOKEN_BYTES: usize = 16;
/// How long the form cookie lives, seconds.
const FORM_COOKIE_MAX_AGE_S: u64 = 24 * 3_600;
/// Lines the return form offers (an order with more asks service; 3 fields a line stay under
/// [`FORM_FIELDS_MAX`]).
pub const RETURN_LINES_SHOWN_MAX: usize = 20;
/// The name the audit trail records for the customer.
pub const CUSTOMER_ACTOR: &str = "customer";
/// The reasons a customer picks from: the form's value and the words stored on the RMA line.
pub const REASONS: &[(&str, &str)] = &[
    ("too_small", "Too small"),
    ("too_large", "Too large"),
    ("not_as_described", "Not as described"),
    ("damaged", "Arrived damaged"),
    ("wrong_item", "Wrong item sent"),
    ("changed_mind", "Changed my mind"),
];

const _: () = assert!(3 * RETURN_LINES_SHOWN_MAX < FORM_FIELDS_MAX);

/// The routes (open, rate limited per client IP; see `api::policy`).
pub(crate) fn routes(hub: Arc<Hub>, secure_cookie: bool) -> Router {
    Router::new()
        .route("/t", get(find_form).post(find))
        .route("/t/{token}", get(tracking))
        .route("/t/{token}/cancel", post(cancel))
        .route("/t/{token}/returns", post(request_return))
        .with_state(St { hub, secure_cookie })
}

#[derive(Clone)]
struct St {
    hub: Arc<Hub>,
    secure_cookie: bool,
}

/// ISO 4217 minor-unit exponent of `currency`: 0 (JPY, KRW, …), 3 (KWD, BHD, …), 4 (CLF, UYW), 2 otherwise.
pub fn minor_unit_exponent(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX" | "UYI" | "VND"
        | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        "CLF" | "UYW" => 4,
        _ => 2,
    }
}

/// `minor` units of `currency` in major units with the currency's own number of decimals: `12.50 EUR`,
/// `1250 JPY`, `1.250 KWD`.
pub fn format_money(minor: u64, currency: &str) -> String {
    let exp = minor_unit_exponent(currency);
    if exp == 0 {
        return format!("{minor} {currency}");
    }
    let unit = 10u64.pow(exp);
    format!("{}.{:0width$} {currency}", minor / unit, minor % unit, width = exp as usize)
}

/// What the page shows, read in one go off the async workers.
struct Seen {
    order: HubOrder,
    view: Value,
    payment: Option<Payment>,
    rmas: Vec<Rma>,
    /// Per SKU: units that may still be returned (shipped less what RMAs cover).
    returnable: Vec<(String, u64)>,
    non_returnable: Vec<String>,
}

/// Units per SKU that may still be returned, over every shipped fulfillment.
fn returnable(shipped: &[Shipped], rmas: &[Rma]) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for f in shipped {
        for sku in f.units.keys() {
            let left = crate::returns::returnable(f, sku, rmas);
            match out.iter_mut().find(|(s, _)| s == sku) {
                Some((_, n)) => *n += left,
                None => out.push((sku.clone(), left)),
            }
        }
    }
    out
}

fn load(hub: &Hub, token: &str) -> Result<Option<Seen>, Problem> {
    let Some(order) = hub.intake.order_by_tracking_token(token)? else { return Ok(None) };
    let id = order.id.to_string();
    let view = crate::orders::tracking_view(hub, &order);
    let payment = hub.money.payment(hub.intake.db(), &id).map_err(Problem::from)?;
    let rmas = hub.returns.of_order(hub.intake.db(), &id).map_err(Problem::from)?;
    let shipped = crate::returns::http::shipped_of(hub, &order);
    let returnable = returnable(&shipped, &rmas);
    let non_returnable = hub.returns.config().non_returnable_skus.clone();
    Ok(Some(Seen { order, view, payment, rmas, returnable, non_returnable }))
}

async fn load_async(hub: &Arc<Hub>, token: &str) -> Result<Option<Seen>, Problem> {
    let (h, t) = (hub.clone(), token.to_owned());
    crate::orders::blocking(move || load(&h, &t)).await
}

fn plain() -> Chrome {
    Chrome { product: "Order status".into(), nav: Vec::new(), secure_cookie: false }
}

/// The page for a link that finds no order: the same whatever the token.
fn not_found() -> Response {
    let body = html! { h1 { "We can't find this order" } p { "Check the link in your confirmation email; it may have been cut short." } };
    (StatusCode::NOT_FOUND, page(&plain(), "Not found", None, body)).into_response()
}

/// The form that finds an order by its number and the e-mail address it was placed with (for a customer
/// without the link): `GET /t`.
fn find_page(status: StatusCode, words: Option<&str>) -> Response {
    let body = html! {
        h1 { "Find your order" }
        @if let Some(w) = words { (error_box(w)) }
        form.card method="post" action="/t" {
            label for="order" { "Order number" span.hint { "As in your confirmation, e.g. hub-0000000123." } }
            input id="order" name="order" required maxlength="64" autocomplete="off";
            label for="email" { "E-mail address" span.hint { "The one you ordered with." } }
            input id="email" name="email" type="email" required maxlength="254" autocomplete="email";
            button type="submit" { "Show my order" }
        }
    };
    (status, page(&plain(), "Find your order", None, body)).into_response()
}

async fn find_form() -> Response {
    find_page(StatusCode::OK, None)
}

/// `POST /t`: the order whose number and e-mail address (any case) both match, by a redirect to its tracking
/// page; anything else (no such order, another address, an order without one, a malformed form) gets the
/// same page and status, so the form tells nothing about which part was wrong. Reads only.
async fn find(State(st): State<St>, body: Bytes) -> Response {
    let fields: Vec<(String, String)> =
        if body.len() <= FORM_BYTES_MAX { serde_urlencoded::from_bytes(&body).unwrap_or_default() } else { Vec::new() };
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.trim().to_owned()).unwrap_or_default();
    let (order, email) = (get("order"), get("email"));
    let miss = || {
        find_page(
            StatusCode::NOT_FOUND,
            Some("No order has this number and e-mail address. Check both in your confirmation."),
        )
    };
    if order.is_empty() || order.len() > 64 || email.is_empty() || email.len() > 254 {
        return miss();
    }
    let h = st.hub.clone();
    let found = crate::orders::blocking(move || h.intake.order(&order)).await;
    let token = found.ok().flatten().and_then(|o| {
        let matches = o.draft.contact.email.as_deref().is_some_and(|e| e.trim().eq_ignore_ascii_case(&email));
        o.tracking_token.filter(|_| matches)
    });
    match token {
        Some(t) => see_other(&format!("/t/{t}")),
        None => miss(),
    }
}

/// A page with one sentence and a way back.
fn sentence(status: StatusCode, token: &str, title: &str, words: &str) -> Response {
    let body = html! { h1 { (title) } (error_box(words)) p { a href={ "/t/" (token) } { "Back to your order" } } };
    (status, page(&plain(), title, None, body)).into_response()
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(FORM_COOKIE).and_then(|r| r.strip_prefix('=')))
        .find(|v| v.len() == 2 * FORM_TOKEN_BYTES && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
}

/// A posted form of this page, its form token checked against the cookie.
struct Posted(Vec<(String, String)>);

impl Posted {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim())
    }
}

/// Reads a post: `None` (a stale or forged form) unless its `form` field equals the cookie's token and the
/// browser does not call it cross-site; a body that is too large or unreadable is also refused.
fn posted(headers: &HeaderMap, body: &[u8]) -> Option<Posted> {
    if headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes() == b"cross-site") || body.len() > FORM_BYTES_MAX {
        return None;
    }
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(body).ok()?;
    if fields.len() > FORM_FIELDS_MAX {
        return None;
    }
    let form = Posted(fields);
    let cookie = cookie_token(headers)?;
    oms_service::auth::keys::ct_eq(cookie.as_bytes(), form.get("form")?.as_bytes()).then_some(form)
}

fn stale_form(token: &str) -> Response {
    let words = "This form has expired or did not come from this page. Open your order again and send it from there.";
    sentence(StatusCode::FORBIDDEN, token, "Not sent", words)
}

/// The status in which a customer may still cancel: something is still to be sent and no cancellation was
/// asked for.
fn cancellable(status: &str) -> bool {
    matches!(status, "received" | "in_fulfillment" | "backordered" | "partially_backordered" | "partially_shipped")
}

/// The RMA's state in plain words.
fn rma_words(state: RmaState) -> &'static str {
    match state {
        RmaState::Requested => "Requested: we will confirm it shortly",
        RmaState::Approved => "Approved: please send the items back",
        RmaState::Declined => "Declined",
        RmaState::PartiallyReceived => "Partly received",
        RmaState::Received => "Received",
        RmaState::Refunded => "Refunded",
        RmaState::Closed => "Completed",
        RmaState::Cancelled => "Cancelled",
    }
}

/// The payment in words (amounts with the currency's own decimals).
fn payment_words(p: &Payment) -> String {
    let c = p.currency.as_str();
    let (total, paid, back) =
        (format_money(p.total_minor, c), format_money(p.captured_minor, c), format_money(p.refunded_minor, c));
    match p.status() {
        "action_required" => "We are checking your payment; nothing is needed from you.".into(),
        "refunded" => format!("Refunded {back}."),
        "partially_refunded" => format!("Paid {paid}, of which {back} refunded."),
        "captured" => format!("Paid {paid}."),
        "partially_captured" => format!("Paid {paid} of {total}; the rest when the other items are sent."),
        "voided" => "Payment cancelled; nothing was charged.".into(),
        _ => format!("Authorized {}; you are charged as items are sent.", format_money(p.authorized_minor(), c)),
    }
}

fn form_cookie(token: &str, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    let c =
        format!("{FORM_COOKIE}={token}; Path=/t/; Max-Age={FORM_COOKIE_MAX_AGE_S}; HttpOnly; SameSite=Strict{secure}");
    HeaderValue::from_str(&c).ok()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The page: status, payment, items, returns with their forms, and the cancel while possible.
fn tracking_page(seen: &Seen, token: &str, form: &str, error: Option<&str>) -> Markup {
    let v = &seen.view;
    let empty = Vec::new();
    let status = s(&v["status"]);
    let mut steps: Vec<&str> =
        v["timeline"].as_array().unwrap_or(&empty).iter().map(|t| crate::ui::status_words(s(&t["status"]))).collect();
    steps.dedup();
    let currency = seen.payment.as_ref().map(|p| p.currency.as_str().to_owned());
    let offer: Vec<&(String, u64)> = seen
        .returnable
        .iter()
        .filter(|(sku, n)| *n > 0 && !seen.non_returnable.contains(sku))
        .take(RETURN_LINES_SHOWN_MAX)
        .collect();
    let not_returnable: Vec<&String> =
        seen.returnable.iter().map(|(sku, _)| sku).filter(|sku| seen.non_returnable.contains(sku)).collect();
    page(
        &plain(),
        "Your order",
        None,
        html! {
            h1 { (crate::ui::status_words(status)) }
            p { "Order " (s(&v["external_ref"])) }
            @if let Some(e) = error { (error_box(e)) }
            @for sh in v["shipments"].as_array().unwrap_or(&empty) {
                p.done { "Shipped with " (s(&sh["carrier"])) ", tracking number " strong { (s(&sh["tracking"])) } }
            }
            @if let Some(p) = &seen.payment {
                h2 { "Payment" }
                dl.facts {
                    dt { "Status" } dd { (payment_words(p)) }
                    dt { "Order total" } dd { (format_money(p.total_minor, p.currency.as_str())) }
                    @if p.refunded_minor > 0 { dt { "Refunded" } dd { (format_money(p.refunded_minor, p.currency.as_str())) } }
                }
            }
            h2 { "Items" }
            ul { @for l in v["lines"].as_array().unwrap_or(&empty) {
                li { (u(&l["qty"])) " × " (s(&l["sku"])) @if u(&l["shipped"]) > 0 { " — " (u(&l["shipped"])) " shipped" } }
            } }
            @if !seen.rmas.is_empty() {
                h2 id="returns" { "Your returns" }
                ul { @for r in &seen.rmas {
                    li { strong { "Return " (r.id) } ": "
                        (r.lines.iter().map(|l| format!("{} × {}", l.qty, l.sku)).collect::<Vec<_>>().join(", "))
                        " — " span.rma-state { (rma_words(r.state)) }
                        @if let (true, Some(c)) = (r.refunded_minor > 0, &currency) { " (" (format_money(r.refunded_minor, c)) ")" } }
                } }
            }
            @if !offer.is_empty() {
                form.card method="post" action={ "/t/" (token) "/returns" } {
                    h2 { "Return items" }
                    p.hint { "Choose how many of each item you send back and why. We confirm the return here." }
                    input type="hidden" name="form" value=(form);
                    @for (i, (sku, n)) in offer.iter().enumerate() {
                        fieldset {
                            legend { (sku) }
                            input type="hidden" name={ "sku." (i) } value=(sku);
                            label for={ "qty-" (i) } { "How many (up to " (n) ")" }
                            input id={ "qty-" (i) } name={ "qty." (i) } type="number" inputmode="numeric" min="0" max=(n) value="0";
                            label for={ "reason-" (i) } { "Why" }
                            select id={ "reason-" (i) } name={ "reason." (i) } {
                                @for (key, words) in REASONS { option value=(key) { (words) } }
                            }
                        }
                    }
                    button type="submit" { "Request the return" }
                }
            }
            @if !not_returnable.is_empty() {
                p.hint { "These items cannot be returned: " (not_returnable.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")) "." }
            }
            @if cancellable(status) {
                form.card method="post" action={ "/t/" (token) "/cancel" } {
                    h2 { "Cancel the order" }
                    p.hint { @if status == "partially_shipped" { "Items already sent cannot be cancelled; you can return them once they arrive." }
                             @else { "Nothing has been sent yet." } }
                    input type="hidden" name="form" value=(form);
                    button.danger type="submit" { "Cancel what has not been sent" }
                }
            }
            h2 { "What happened" }
            ol { @for words in steps { li { (words) } } }
        },
    )
}

/// The page with a fresh (or the current) form token in its cookie.
fn answer(st: &St, status: StatusCode, seen: &Seen, token: &str, headers: &HeaderMap, error: Option<&str>) -> Response {
    let form = cookie_token(headers)
        .unwrap_or_else(|| oms_service::auth::keys::hex(&rand::random::<[u8; FORM_TOKEN_BYTES]>()));
    let mut resp = (status, tracking_page(seen, token, &form, error)).into_response();
    if let Some(c) = form_cookie(&form, st.secure_cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `GET /t/{token}`.
async fn tracking(State(st): State<St>, Path(token): Path<String>, headers: HeaderMap) -> Response {
    match load_async(&st.hub, &token).await {
        Ok(Some(seen)) => answer(&st, StatusCode::OK, &seen, &token, &headers, None),
        Ok(None) => not_found(),
        Err(p) => p.into_response(),
    }
}

fn customer(route: &str) -> Actor {
    Actor { key: CUSTOMER_ACTOR.into(), role: Role::Channel, method: "POST", route: route.into() }
}

/// `POST /t/{token}/cancel`: the channel's cancellation, for the customer.
async fn cancel(State(st): State<St>, Path(token): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let seen = match load_async(&st.hub, &token).await {
        Ok(Some(seen)) => seen,
        Ok(None) => return not_found(),
        Err(p) => return p.into_response(),
    };
    if posted(&headers, &body).is_none() {
        return stale_form(&token);
    }
    let status = s(&seen.view["status"]).to_owned();
    if !cancellable(&status) {
        let words = match status.as_str() {
            "cancel_requested" | "cancelled" | "partially_cancelled" => "This order is already cancelled.",
            _ => {
                "Everything in this order has been sent, so it can no longer be cancelled. You can return it here once it arrives."
            }
        };
        return answer(&st, StatusCode::CONFLICT, &seen, &token, &headers, Some(words));
    }
    let o = &seen.order;
    let principal = Principal {
        name: CUSTOMER_ACTOR.into(),
        role: Role::Channel,
        channel: Some(o.draft.channel.clone()),
        supplier: None,
    };
    let reason = Some("cancelled by the customer on the tracking page".to_owned());
    match crate::orders::cancel_order(&st.hub, &principal, customer("/t/{token}/cancel"), o.id.as_str(), reason).await {
        Ok(_) => see_other(&format!("/t/{token}")),
        Err(p) => {
            let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::BAD_REQUEST);
            answer(
                &st,
                status,
                &seen,
                &token,
                &headers,
                Some("We could not cancel the order just now; try again in a minute."),
            )
        }
    }
}

/// The lines of a return form (`sku.<i>`, `qty.<i>` for `i` below [`RETURN_LINES_SHOWN_MAX`]; a blank or
/// zero quantity is no line), each with the reason `reason(i)` gives, or the sentence saying why the form
/// cannot be read. The customer's page and the service console read their forms with it.
pub(crate) fn chosen_lines<'a>(
    get: impl Fn(&str) -> Option<&'a str>,
    reason: impl Fn(usize) -> Result<String, String>,
) -> Result<Vec<RequestLine>, String> {
    let mut lines = Vec::new();
    for i in 0..RETURN_LINES_SHOWN_MAX {
        let Some(qty) = get(&format!("qty.{i}")) else { continue };
        let qty: u64 = match qty {
            "" => 0,
            q => q.parse().map_err(|_| "Enter how many items as a whole number.".to_owned())?,
        };
        if qty == 0 {
            continue;
        }
        let sku = get(&format!("sku.{i}")).unwrap_or("").to_owned();
        lines.push(RequestLine { sku, qty, reason: reason(i)? });
    }
    if lines.is_empty() {
        return Err("Choose how many of an item you want to send back.".into());
    }
    Ok(lines)
}

/// The customer's return asked for in the form: a reason from [`REASONS`] on each line.
fn return_lines(form: &Posted) -> Result<Vec<RequestLine>, String> {
    chosen_lines(
        |k| form.get(k),
        |i| {
            let reason = form.get(&format!("reason.{i}")).unwrap_or("");
            REASONS
                .iter()
                .find(|(k, _)| *k == reason)
                .map(|(_, words)| (*words).to_owned())
                .ok_or_else(|| "Choose a reason from the list for each item you return.".to_owned())
        },
    )
}

/// Why a return was refused, in words for the customer.
fn refusal(e: &ReturnsError) -> String {
    match e {
        ReturnsError::WindowClosed { closed_at_ms, .. } => {
            let day = oms_protocol::shipping::rfc3339(*closed_at_ms).map(|d| d.chars().take(10).collect::<String>());
            format!("The time to return this order ended on {}.", day.unwrap_or_default())
        }
        ReturnsError::NotReturnable(sku) => format!("{sku} cannot be returned."),
        ReturnsError::OverReturn { sku, returnable: 0, .. } => format!("There is nothing left of {sku} to return."),
        ReturnsError::OverReturn { sku, returnable, .. } => {
            format!("At most {returnable} of {sku} can still be returned.")
        }
        ReturnsError::SpansFulfillments => {
            "These items came in separate parcels: please send one request per parcel.".into()
        }
        ReturnsError::Limit(_) => "This order cannot take more returns here; please contact us.".into(),
        ReturnsError::Invalid(v) => format!("This request cannot be taken: {}.", v.message),
        _ => "We could not record your request just now; try again in a minute.".into(),
    }
}

/// `POST /t/{token}/returns`: the customer's return request.
async fn request_return(State(st): State<St>, Path(token): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let seen = match load_async(&st.hub, &token).await {
        Ok(Some(seen)) => seen,
        Ok(None) => return not_found(),
        Err(p) => return p.into_response(),
    };
    let Some(form) = posted(&headers, &body) else { return stale_form(&token) };
    let lines = match return_lines(&form) {
        Ok(l) => l,
        Err(words) => return answer(&st, StatusCode::UNPROCESSABLE_ENTITY, &seen, &token, &headers, Some(&words)),
    };
    let (h, o) = (st.hub.clone(), seen.order.clone());
    let asked = crate::orders::blocking(move || -> Result<Result<Rma, ReturnsError>, Problem> {
        let shipped = crate::returns::http::shipped_of(&h, &o);
        let req = ReturnRequest { lines, fulfillment: None };
        let actor = customer("/t/{token}/returns");
        let now = oms_service::now_ms();
        match h.returns.request(h.intake.db(), o.id.as_str(), &o.draft.channel, &shipped, &req, &actor, now) {
            Err(ReturnsError::Storage(e)) => Err(ReturnsError::Storage(e).into()),
            r => Ok(r),
        }
    })
    .await;
    match asked {
        Ok(Ok(rma)) => {
            crate::returns::sites::publish(&st.hub, &rma);
            see_other(&format!("/t/{token}#returns"))
        }
        Ok(Err(e)) => {
            let status = StatusCode::from_u16(Problem::from(e.clone()).status).unwrap_or(StatusCode::CONFLICT);
            answer(&st, status, &seen, &token, &headers, Some(&refusal(&e)))
        }
        Err(p) => p.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_use_the_currency_s_own_decimals() {
        assert_eq!(format_money(1_250, "EUR"), "12.50 EUR");
        assert_eq!(format_money(5, "EUR"), "0.05 EUR");
        assert_eq!(format_money(1_250, "JPY"), "1250 JPY");
        assert_eq!(format_money(1_250, "KWD"), "1.250 KWD");
        assert_eq!(format_money(7, "BHD"), "0.007 BHD");
        assert_eq!(format_money(0, "USD"), "0.00 USD");
        assert_eq!(format_money(u64::MAX, "CLF"), format!("{}.{} CLF", u64::MAX / 10_000, u64::MAX % 10_000));
    }

    #[test]
    fn a_form_is_taken_only_with_its_cookie() {
        let token = "ab".repeat(FORM_TOKEN_BYTES);
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(&format!("x=1; {FORM_COOKIE}={token}")).unwrap());
        let body = format!("form={token}&qty.0=1");
        assert_eq!(posted(&h, body.as_bytes()).and_then(|f| f.get("qty.0").map(str::to_owned)).as_deref(), Some("1"));
        assert!(posted(&h, b"form=cdcd&qty.0=1").is_none(), "another token");
        assert!(posted(&h, b"qty.0=1").is_none(), "no token in the form");
        assert!(posted(&HeaderMap::new(), body.as_bytes()).is_none(), "no cookie (a cross-site post)");
        let mut cross = h.clone();
        cross.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(posted(&cross, body.as_bytes()).is_none());
        let big = format!("{body}&x={}", "y".repeat(FORM_BYTES_MAX));
        assert!(posted(&h, big.as_bytes()).is_none());
    }

    #[test]
    fn return_lines_need_a_listed_reason_and_a_quantity() {
        let f = |pairs: &[(&str, &str)]| Posted(pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect());
        let ok = return_lines(&f(&[("sku.0", "A"), ("qty.0", "2"), ("reason.0", "damaged"), ("qty.1", "0")]));
        assert_eq!(ok.unwrap(), vec![RequestLine { sku: "A".into(), qty: 2, reason: "Arrived damaged".into() }]);
        assert!(return_lines(&f(&[("sku.0", "A"), ("qty.0", "0")])).is_err(), "nothing chosen");
        assert!(return_lines(&f(&[("sku.0", "A"), ("qty.0", "two"), ("reason.0", "damaged")])).is_err());
        assert!(return_lines(&f(&[("sku.0", "A"), ("qty.0", "1"), ("reason.0", "<script>")])).is_err());
    }
}
