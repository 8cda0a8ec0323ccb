//! HTTP for money (policy in [`crate::api::policy`]):
//!
//! - `POST /v1/orders/{id}/refunds` `{"lines": [{"sku", "qty"}] | "amount_minor", "reason", "invoice"?}`:
//!   a credit note referencing its invoice and a refund through the outbox (service, admin) → `201`.
//! - `POST /v1/orders/{id}/payments` `{"amount_minor", "method", "reference", "reason"}` with an
//!   `Idempotency-Key`: money received for a terms or COD order, at most what it owes (service) → `201`.
//! - `GET /v1/invoices?from=&to=&limit=&format=json|csv`, `GET /v1/invoices/{number}?format=json|html` (or
//!   `Accept: text/html`): invoices by issue time (ms, `[from, to)`); a channel key sees its channel's only.
//! - `GET /v1/credit-notes…`: the same for credit notes.
//! - `GET /v1/payments?status=action_required&limit=`: payments service must act on.
//! - `GET /v1/payments/summary`: totals over every payment and the mismatch counter (must be 0).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use oms_service::auth::Principal;
use oms_service::{Problem, RawBody, now_ms};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use oms_protocol::domain::Channel;
use redb::Database;

use super::{CreditNote, Invoice, Money, MoneyError, RefundRequest, render};
use crate::orders::{Caller, blocking};
use crate::server::Hub;

impl From<MoneyError> for Problem {
    fn from(e: MoneyError) -> Problem {
        problem(e)
    }
}

/// The problem document of a money error.
fn problem(e: MoneyError) -> Problem {
    let code = e.code();
    let detail = e.to_string();
    match e {
        MoneyError::Declined(reason) => Problem::new(StatusCode::PAYMENT_REQUIRED, code, detail).with("reason", reason),
        MoneyError::ProviderUnavailable(_) => Problem::new(StatusCode::SERVICE_UNAVAILABLE, code, detail),
        MoneyError::InvalidPayment(_) | MoneyError::InvalidRefund(_) => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
        }
        MoneyError::NotFound { .. } => Problem::new(StatusCode::NOT_FOUND, code, detail),
        MoneyError::RefundExceeds(_)
        | MoneyError::NotCaptured(_)
        | MoneyError::Overpayment(_)
        | MoneyError::NotManual(_)
        | MoneyError::TooManyPayments(_)
        | MoneyError::KeyReused(_) => Problem::new(StatusCode::CONFLICT, code, detail),
        MoneyError::Storage(_) => {
            tracing::error!(error = %detail, "money storage failure");
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
        }
        MoneyError::Corrupt { .. } => {
            tracing::error!(error = %detail, "money corrupt record");
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, code, detail)
        }
    }
}

/// The routes of this module.
pub fn router(hub: Arc<Hub>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(refund))
        .routes(routes!(record_payment))
        .routes(routes!(invoices))
        .routes(routes!(invoice))
        .routes(routes!(credit_notes))
        .routes(routes!(credit_note))
        .routes(routes!(payments))
        .routes(routes!(summary))
        .with_state(hub)
}

// One named handler a route (its annotation names its path); the work is the generic `list` and `one`.

/// Invoices issued in `[from, to)` (ms), JSON or CSV; a channel key's: its own.
#[utoipa::path(get, path = "/v1/invoices", tag = "money", params(("from" = Option<u64>, Query, description = "From, ms since the Unix epoch (default 0)"), ("to" = Option<u64>, Query, description = "To, exclusive"), ("limit" = Option<u64>, Query, description = "Page size (capped)"), ("format" = Option<String>, Query, description = "json (default) or csv")),
    responses((status = 200, description = "`{\"invoices\": [...]}`; the same as csv", content((Invoices = "application/json"), (String = "text/csv")))))]
async fn invoices(
    st: State<Arc<Hub>>,
    p: Principal,
    h: HeaderMap,
    q: Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    list::<Invoice>(st, p, h, q).await
}

/// Credit notes issued in `[from, to)` (ms), JSON or CSV; a channel key's: its own.
#[utoipa::path(get, path = "/v1/credit-notes", tag = "money", params(("from" = Option<u64>, Query, description = "From, ms since the Unix epoch (default 0)"), ("to" = Option<u64>, Query, description = "To, exclusive"), ("limit" = Option<u64>, Query, description = "Page size (capped)"), ("format" = Option<String>, Query, description = "json (default) or csv")),
    responses((status = 200, description = "`{\"credit_notes\": [...]}`; the same as csv", content((CreditNotes = "application/json"), (String = "text/csv")))))]
async fn credit_notes(
    st: State<Arc<Hub>>,
    p: Principal,
    h: HeaderMap,
    q: Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    list::<CreditNote>(st, p, h, q).await
}

/// One invoice, JSON or printable HTML (`format=html`).
#[utoipa::path(get, path = "/v1/invoices/{number}", tag = "money", params(("number" = String, Path, description = "The invoice number"), ("format" = Option<String>, Query, description = "json (default) or html")),
    responses((status = 200, description = "The invoice; printable", content((Invoice = "application/json"), (String = "text/html")))))]
async fn invoice(
    st: State<Arc<Hub>>,
    p: Principal,
    h: HeaderMap,
    n: Path<String>,
    q: Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    one::<Invoice>(st, p, h, n, q).await
}

/// One credit note, JSON or printable HTML (`format=html`).
#[utoipa::path(get, path = "/v1/credit-notes/{number}", tag = "money", params(("number" = String, Path, description = "The credit note number"), ("format" = Option<String>, Query, description = "json (default) or html")),
    responses((status = 200, description = "The credit note; printable", content((CreditNote = "application/json"), (String = "text/html")))))]
async fn credit_note(
    st: State<Arc<Hub>>,
    p: Principal,
    h: HeaderMap,
    n: Path<String>,
    q: Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    one::<CreditNote>(st, p, h, n, q).await
}

fn bad_query(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "invalid_query", detail)
}

/// Checks a query's parameters against `allowed` and reads a number.
fn query(q: &HashMap<String, String>, allowed: &[&str]) -> Result<(), Problem> {
    match q.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(bad) => Err(bad_query(format!("unknown parameter {bad:?}"))),
        None => Ok(()),
    }
}

fn number(q: &HashMap<String, String>, name: &str, default: u64) -> Result<u64, Problem> {
    q.get(name).map_or(Ok(default), |v| v.parse().map_err(|_| bad_query(format!("{name} must be a whole number"))))
}

/// What rendering a request asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
    Html,
}

fn format(q: &HashMap<String, String>, headers: &HeaderMap, allowed: &[Format]) -> Result<Format, Problem> {
    let f = match q.get("format").map(String::as_str) {
        None if headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html")) => {
            Format::Html
        }
        None | Some("json") => Format::Json,
        Some("csv") => Format::Csv,
        Some("html") => Format::Html,
        Some(_) => return Err(bad_query("format must be json, csv or html")),
    };
    if allowed.contains(&f) { Ok(f) } else { Err(bad_query("this format is not offered here")) }
}

/// `[from, to)` and `limit` of a listing.
fn window(q: &HashMap<String, String>) -> Result<(u64, u64, usize), Problem> {
    query(q, &["from", "to", "limit", "format"])?;
    let from = number(q, "from", 0)?;
    let to = number(q, "to", u64::MAX)?;
    if to <= from {
        return Err(bad_query("to must be after from"));
    }
    let limit = usize::try_from(number(q, "limit", super::DOCS_PAGE_MAX as u64)?).unwrap_or(usize::MAX);
    Ok((from, to, limit.clamp(1, super::DOCS_PAGE_MAX)))
}

#[utoipa::path(post, path = "/v1/orders/{id}/refunds", tag = "money", params(("id" = String, Path, description = "The order id")),
    request_body = RefundRequest, responses((status = 201, description = "The credit note; the refund goes out through the outbox", body = CreditNote)))]
async fn refund(
    State(hub): State<Arc<Hub>>,
    principal: Principal,
    Caller(actor): Caller,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let id = oms_protocol::domain::OrderId::parse(&id).map_err(Problem::from)?;
    let req: RefundRequest = oms_service::parse_json(&body)?;
    let confined = principal.confined_to().cloned();
    let h = hub.clone();
    let note =
        blocking(move || h.money.refund(h.intake.db(), id.as_str(), confined.as_ref(), &req, &actor, now_ms())).await?;
    Ok((StatusCode::CREATED, Json(note)).into_response())
}

#[utoipa::path(post, path = "/v1/orders/{id}/payments", tag = "money", params(("id" = String, Path, description = "The order id"), ("Idempotency-Key" = String, Header, description = "Required; the same key and body answer the first record")),
    request_body = super::ManualPaymentRequest, responses((status = 201, description = "The recorded payment (header `idempotent-replayed: true` on a replay)", body = super::RecordedPayment)))]
async fn record_payment(
    State(hub): State<Arc<Hub>>,
    Caller(actor): Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let key = oms_service::request::idempotency_key(&headers)?;
    let req: super::ManualPaymentRequest = oms_service::parse_json(&body)?;
    record(&hub, actor, &id, &key, req).await
}

/// Records a manual payment for `actor` (the route and the console's form): `201` with the record.
pub(crate) async fn record(
    hub: &Arc<Hub>,
    actor: oms_service::audit::Actor,
    id: &str,
    key: &str,
    req: super::ManualPaymentRequest,
) -> Result<Response, Problem> {
    let id = oms_protocol::domain::OrderId::parse(id).map_err(Problem::from)?;
    if !oms_protocol::records::idempotency_key_valid(key) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            "the payment's key is not usable",
        ));
    }
    let (h, key) = (hub.clone(), key.to_owned());
    let (rec, replayed) =
        blocking(move || h.money.record_manual(h.intake.db(), id.as_str(), &key, &req, &actor, now_ms())).await?;
    let mut resp = (StatusCode::CREATED, Json(rec)).into_response();
    if replayed {
        resp.headers_mut().insert("idempotent-replayed", axum::http::HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// An invoice or a credit note, as the listing and document routes serve it.
trait Listed: serde::Serialize + Send + Sized + 'static {
    /// The JSON answer of the listing.
    type Page: Serialize;
    /// The listing's answer.
    fn page(list: Vec<Self>) -> Self::Page;
    /// What a missing one is called.
    const WHAT: &'static str;
    fn channel(&self) -> &Channel;
    fn doc(&self) -> render::Doc<'_>;
    fn list(m: &Money, db: &Database, window: (u64, u64, usize), c: Option<&Channel>) -> Result<Vec<Self>, MoneyError>;
    fn one(m: &Money, db: &Database, number: &str) -> Result<Option<Self>, MoneyError>;
}

impl Listed for Invoice {
    type Page = Invoices;
    fn page(invoices: Vec<Self>) -> Invoices {
        Invoices { invoices }
    }
    const WHAT: &'static str = "invoice";
    fn channel(&self) -> &Channel {
        &self.channel
    }
    fn doc(&self) -> render::Doc<'_> {
        render::Doc::Invoice(self)
    }
    fn list(
        m: &Money,
        db: &Database,
        (f, t, l): (u64, u64, usize),
        c: Option<&Channel>,
    ) -> Result<Vec<Self>, MoneyError> {
        m.invoices(db, f, t, l, c)
    }
    fn one(m: &Money, db: &Database, number: &str) -> Result<Option<Self>, MoneyError> {
        m.invoice(db, number)
    }
}

impl Listed for CreditNote {
    type Page = CreditNotes;
    fn page(credit_notes: Vec<Self>) -> CreditNotes {
        CreditNotes { credit_notes }
    }
    const WHAT: &'static str = "credit note";
    fn channel(&self) -> &Channel {
        &self.channel
    }
    fn doc(&self) -> render::Doc<'_> {
        render::Doc::CreditNote(self)
    }
    fn list(
        m: &Money,
        db: &Database,
        (f, t, l): (u64, u64, usize),
        c: Option<&Channel>,
    ) -> Result<Vec<Self>, MoneyError> {
        m.credit_notes(db, f, t, l, c)
    }
    fn one(m: &Money, db: &Database, number: &str) -> Result<Option<Self>, MoneyError> {
        m.credit_note(db, number)
    }
}

/// `GET /v1/invoices`, `GET /v1/credit-notes`: JSON or CSV.
async fn list<T: Listed>(
    State(hub): State<Arc<Hub>>,
    principal: Principal,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let w = window(&q)?;
    let f = format(&q, &headers, &[Format::Json, Format::Csv])?;
    let confined = principal.confined_to().cloned();
    let h = hub.clone();
    let list = blocking(move || T::list(&h.money, h.intake.db(), w, confined.as_ref())).await?;
    Ok(match f {
        Format::Csv => render::csv(&list.iter().map(T::doc).collect::<Vec<_>>()),
        _ => Json(T::page(list)).into_response(),
    })
}

/// `GET /v1/invoices/{number}`, `GET /v1/credit-notes/{number}`: JSON or printable HTML; another channel's
/// is not found.
async fn one<T: Listed>(
    State(hub): State<Arc<Hub>>,
    principal: Principal,
    headers: HeaderMap,
    Path(number): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    query(&q, &["format"])?;
    let f = format(&q, &headers, &[Format::Json, Format::Html])?;
    let h = hub.clone();
    let n = number.clone();
    let found = blocking(move || T::one(&h.money, h.intake.db(), &n)).await?;
    let d = found
        .filter(|d| principal.confined_to().is_none_or(|c| c == d.channel()))
        .ok_or_else(|| problem(MoneyError::NotFound { what: T::WHAT, id: number }))?;
    Ok(match f {
        Format::Html => render::html(&d.doc()),
        _ => Json(d).into_response(),
    })
}

#[utoipa::path(get, path = "/v1/payments", tag = "money",
    params(("status" = String, Query, description = "Must be action_required"), ("limit" = Option<u64>, Query, description = "Page size (capped)")),
    responses((status = 200, description = "Payments that need a person", body = ActionRequired)))]
async fn payments(State(hub): State<Arc<Hub>>, Query(q): Query<HashMap<String, String>>) -> Result<Response, Problem> {
    query(&q, &["status", "limit"])?;
    if q.get("status").map(String::as_str) != Some("action_required") {
        return Err(bad_query("status must be action_required"));
    }
    let limit = usize::try_from(number(&q, "limit", super::DOCS_PAGE_MAX as u64)?).unwrap_or(usize::MAX);
    let h = hub.clone();
    let list = blocking(move || h.money.action_required(h.intake.db(), limit)).await?;
    let payments = list
        .iter()
        .map(|p| NeedsAction {
            order: p.order.clone(),
            channel: p.channel.clone(),
            reason: p.action_required.clone(),
            payment: super::payment_view(p),
        })
        .collect();
    Ok(Json(ActionRequired { payments }).into_response())
}

/// The JSON answer of `GET /v1/invoices`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Invoices {
    /// The invoices, oldest first.
    pub invoices: Vec<Invoice>,
}

/// The JSON answer of `GET /v1/credit-notes`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreditNotes {
    /// The credit notes, oldest first.
    pub credit_notes: Vec<CreditNote>,
}

/// The answer of `GET /v1/payments?status=action_required`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ActionRequired {
    /// The payments that need a person, by order.
    pub payments: Vec<NeedsAction>,
}

/// One payment that needs a person.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NeedsAction {
    /// The hub order.
    pub order: String,
    /// Its channel.
    pub channel: Channel,
    /// Why service must act.
    pub reason: Option<String>,
    /// The payment.
    pub payment: super::PaymentView,
}

#[utoipa::path(get, path = "/v1/payments/summary", tag = "money",
    responses((status = 200, description = "Money totals", body = super::MoneyTotals)))]
async fn summary(State(hub): State<Arc<Hub>>) -> Result<Response, Problem> {
    let h = hub.clone();
    let t = blocking(move || h.money.totals(h.intake.db())).await?;
    Ok(Json(t).into_response())
}
