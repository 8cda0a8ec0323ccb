//! HTTP for purchasing (policy in [`crate::api::policy`]: planner, and admin; a `supplier` key reads,
//! confirms and announces ASNs against its own purchase orders only, another supplier's answering as an
//! unknown id ([`own_po`])):
//!
//! - `GET /v1/suppliers?after=&limit=`, `GET /v1/suppliers/{id}`, `PUT /v1/suppliers/{id}` (`200`, `201`
//!   when new; a webhook channel's signing secret is answered once, as `webhook_secret`).
//! - `POST /v1/suppliers/import` (`text/csv`, header `supplier,name,contact,currency,lead_time_days,sku,
//!   supplier_sku,cost_minor,moq,order_multiple`, one row per supplier × SKU, at most [`CSV_ROWS_MAX`] rows):
//!   every row checked first; any refused row → `422 invalid_csv` listing each row's `code`, nothing written.
//!   Each supplier in the file is replaced by its rows (its SKUs are exactly those rows); one that exists
//!   keeps its channel.
//! - `POST /v1/purchase-orders` `{"supplier", "site", "expected_date"?, "lines": [{"sku", "qty"}]}` or
//!   `{"supplier", "site", "from_replenishment": true}` (the site's suggestions for the supplier's SKUs,
//!   `po_qty` each: MOQ and multiples applied) → `201`; an `Idempotency-Key` header makes a retry answer the
//!   same order (`200`).
//! - `GET /v1/purchase-orders?state=&supplier=&after=&limit=`, `GET /v1/purchase-orders/{id}` (a supplier
//!   key: its own orders only).
//! - `POST /v1/purchase-orders/{id}/send|confirm|cancel`, `POST /v1/purchase-orders/{id}/lines/{n}/close`.
//! - `POST /v1/purchase-orders/{id}/asns` `{"asn", "lines": [{"line", "qty"}], "expected_date"?}` → `201`,
//!   a replay of the same ASN `200`.
//! - `POST /v1/asns/import` (`text/csv`, header `asn,purchase_order,line,qty,expected_date`, one row per ASN
//!   line, at most [`CSV_ROWS_MAX`] rows): every ASN recorded in one transaction, or none (`422 invalid_csv`
//!   naming the first refused row and its code); replays of recorded ASNs are counted, not recorded again.
//!   From a supplier key, every row must name one of its orders: rows naming another's are all listed as
//!   `purchase_order_not_found` and nothing is written.
//! - `GET /v1/purchasing/summary`: orders by state, units received against them and on order, and the
//!   sites' receipts in flight (`site_receipts_in_flight`: still in their stock documents, and the hub's
//!   acknowledgements of applied ones not yet pruned, [`super::sites::in_flight`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use oms_protocol::domain::{AsnId, Currency, NodeId, Sku, SupplierId};
use oms_service::auth::Principal;
use oms_service::{Problem, RawBody, now_ms};
use serde::{Deserialize, Serialize};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::PurchasingError;
use super::model::{AsnLine, ChannelSpec, PoState, PoStep, SupplierInput, SupplierSku};
use super::store::{LineInput, NewAsn, NewPo, PAGE_MAX};
use crate::forecast_api::ForecastSettings;
use crate::orders::{Caller, blocking};
use crate::server::Hub;

/// Rows of one supplier CSV import.
pub const CSV_ROWS_MAX: usize = 10_000;
/// Bytes of one supplier CSV import.
pub const CSV_BODY_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Row errors listed in a refusal.
pub const ROW_ERRORS_MAX: usize = 100;
/// Longest `Idempotency-Key`, bytes.
const KEY_BYTES_MAX: usize = 128;

/// A refused CSV row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowError {
    /// Line in the file (the header is line 1).
    pub line: u64,
    /// Stable code.
    pub code: &'static str,
    /// Why.
    pub detail: String,
}

impl From<PurchasingError> for Problem {
    fn from(e: PurchasingError) -> Problem {
        let code = e.code();
        let detail = e.to_string();
        let status = match &e {
            PurchasingError::Invalid(_) | PurchasingError::NothingToOrder | PurchasingError::Csv(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            PurchasingError::Limit(..) => StatusCode::UNPROCESSABLE_ENTITY,
            PurchasingError::SupplierNotFound(_)
            | PurchasingError::PoNotFound(_)
            | PurchasingError::LineNotFound(_) => StatusCode::NOT_FOUND,
            PurchasingError::Transition(_)
            | PurchasingError::NotReceivable { .. }
            | PurchasingError::LineSettled(_)
            | PurchasingError::KeyReused
            | PurchasingError::AsnConflict(_) => StatusCode::CONFLICT,
            PurchasingError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
            PurchasingError::Corrupt { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut p = Problem::new(status, code, detail);
        match e {
            PurchasingError::Invalid(v) => p = p.with("field", v.field),
            PurchasingError::Csv(rows) => p = p.with("rows", rows),
            PurchasingError::Transition(t) => p = p.with("state", t.state.as_str()),
            _ => {}
        }
        p
    }
}

/// The JSON routes (mounted under the JSON media type) and the CSV import (its own media type and body limit).
pub fn routers(hub: Arc<Hub>) -> (OpenApiRouter, OpenApiRouter) {
    let json = OpenApiRouter::new()
        .routes(routes!(suppliers))
        .routes(routes!(supplier, put_supplier))
        .routes(routes!(pos, create_po))
        .routes(routes!(po))
        .routes(routes!(send))
        .routes(routes!(confirm))
        .routes(routes!(cancel))
        .routes(routes!(close_line))
        .routes(routes!(record_asn))
        .routes(routes!(summary))
        .with_state(hub.clone());
    let csv = OpenApiRouter::new()
        .routes(routes!(import))
        .routes(routes!(import_asns))
        .with_state(hub)
        .layer(axum::extract::DefaultBodyLimit::max(CSV_BODY_BYTES_MAX));
    (json, csv)
}

fn bad_query(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "invalid_query", detail)
}

/// `after` and `limit` of a listing; other parameters but `allowed` refused.
fn page(q: &HashMap<String, String>, allowed: &[&str]) -> Result<(String, usize), Problem> {
    if let Some(bad) = q.keys().find(|k| !matches!(k.as_str(), "after" | "limit") && !allowed.contains(&k.as_str())) {
        return Err(bad_query(format!("unknown parameter {bad:?}")));
    }
    let limit = match q.get("limit") {
        None => PAGE_MAX,
        Some(v) => v.parse::<usize>().map_err(|_| bad_query("limit must be a whole number"))?.clamp(1, PAGE_MAX),
    };
    Ok((q.get("after").cloned().unwrap_or_default(), limit))
}

/// Whether `p` may see purchase order `po`: a supplier key only its own supplier's.
fn visible_to(p: &Principal, po: &super::model::PurchaseOrder) -> bool {
    p.supplier_scope().is_none_or(|s| &po.supplier == s)
}

/// Refuses a supplier key's request about purchase order `id` unless the order is its supplier's, with the
/// answer an unknown id gets (`404 purchase_order_not_found`), so ids of other suppliers' orders cannot be
/// probed. Other callers pass. An order's supplier never changes, so the check holds for the write after it.
async fn own_po(hub: &Arc<Hub>, p: &Principal, id: &str) -> Result<(), Problem> {
    let Some(scope) = p.supplier_scope().cloned() else { return Ok(()) };
    let h = hub.clone();
    let i = id.to_owned();
    let found = blocking(move || h.purchasing.po(h.intake.db(), &i)).await?;
    match found {
        Some(po) if po.supplier == scope => Ok(()),
        _ => Err(PurchasingError::PoNotFound(id.to_owned()).into()),
    }
}

fn supplier_id(id: &str) -> Result<SupplierId, Problem> {
    SupplierId::parse(id).map_err(Problem::from)
}

#[utoipa::path(get, path = "/v1/suppliers", tag = "purchasing", params(("after" = Option<String>, Query, description = "Continue after this supplier id"), ("limit" = Option<u32>, Query, description = "Page size")),
    responses((status = 200, description = "A page of suppliers", body = SupplierPage)))]
async fn suppliers(State(hub): State<Arc<Hub>>, Query(q): Query<HashMap<String, String>>) -> Result<Response, Problem> {
    let (after, limit) = page(&q, &[])?;
    let h = hub.clone();
    let list = blocking(move || h.purchasing.suppliers(h.intake.db(), &after, limit)).await?;
    let next_after = (list.len() == limit).then(|| list.last().map(|s| s.id.to_string())).flatten();
    Ok(Json(SupplierPage { suppliers: list.iter().map(|s| s.view()).collect(), next_after }).into_response())
}

#[utoipa::path(get, path = "/v1/suppliers/{id}", tag = "purchasing", params(("id" = String, Path, description = "The supplier id")),
    responses((status = 200, description = "The supplier with its SKUs and terms", body = super::model::Supplier)))]
async fn supplier(State(hub): State<Arc<Hub>>, Path(id): Path<String>) -> Result<Response, Problem> {
    let id = supplier_id(&id)?;
    let h = hub.clone();
    let i = id.clone();
    let found = blocking(move || h.purchasing.supplier(h.intake.db(), i.as_str())).await?;
    let s = found.ok_or_else(|| Problem::from(PurchasingError::SupplierNotFound(id.to_string())))?;
    Ok(Json(s.view()).into_response())
}

#[utoipa::path(put, path = "/v1/suppliers/{id}", tag = "purchasing", params(("id" = String, Path, description = "The supplier id")),
    request_body(content = Object, description = "Name, contact, currency, lead time, channel and per-SKU terms (README, Purchasing)"),
    responses((status = 200, description = "Saved", body = super::model::Supplier), (status = 201, description = "Created (a webhook channel's secret is shown once)", body = super::model::Supplier)))]
async fn put_supplier(
    State(hub): State<Arc<Hub>>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let id = supplier_id(&id)?;
    let input: SupplierInput = oms_service::parse_json(&body)?;
    let h = hub.clone();
    let out = blocking(move || h.purchasing.put_supplier(h.intake.db(), &id, input, &actor, now_ms())).await?;
    let v = super::model::Supplier { webhook_secret: out.new_secret, ..out.supplier.view() };
    let status = if out.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(v)).into_response())
}

/// One row of the supplier CSV.
#[derive(Debug, Deserialize)]
struct CsvRow {
    supplier: String,
    name: String,
    #[serde(default)]
    contact: String,
    currency: String,
    lead_time_days: String,
    sku: String,
    supplier_sku: String,
    cost_minor: String,
    #[serde(default)]
    moq: String,
    #[serde(default)]
    order_multiple: String,
}

/// A refused row's code and why.
type RowRefusal = (&'static str, String);

/// Reads the rows of a CSV file (header first, at most [`CSV_ROWS_MAX`] rows) into `take`, which is given each
/// row with its line in the file and refuses it with a code. Every refused row is listed (the first
/// [`ROW_ERRORS_MAX`]); any refusal, or no row at all, is `invalid_csv`.
fn read_rows<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    mut take: impl FnMut(u64, T) -> Result<(), RowRefusal>,
) -> Result<(), PurchasingError> {
    let mut rd = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(bytes);
    let mut errors = Vec::new();
    let push = |errors: &mut Vec<RowError>, line: u64, (code, detail): RowRefusal| {
        if errors.len() < ROW_ERRORS_MAX {
            errors.push(RowError { line, code, detail });
        }
    };
    let mut rows = 0usize;
    for (i, rec) in rd.deserialize::<T>().enumerate() {
        let line = i as u64 + 2;
        if i >= CSV_ROWS_MAX {
            push(&mut errors, line, ("too_many_rows", format!("at most {CSV_ROWS_MAX} rows")));
            break;
        }
        rows += 1;
        if let Err(refusal) = rec.map_err(|e| ("malformed_row", e.to_string())).and_then(|row| take(line, row)) {
            push(&mut errors, line, refusal);
        }
    }
    if rows == 0 {
        push(&mut errors, 1, ("empty_file", "no rows".into()));
    }
    if errors.is_empty() { Ok(()) } else { Err(PurchasingError::Csv(errors)) }
}

/// A whole number of a CSV field, or `default` when the field is empty and there is one.
fn number<T: std::str::FromStr>(field: &str, v: &str, default: Option<T>) -> Result<T, RowRefusal> {
    match default {
        Some(d) if v.is_empty() => Ok(d),
        _ => v.parse::<T>().map_err(|_| ("invalid_number", format!("{field} must be a whole number, got {v:?}"))),
    }
}

/// Reads the supplier CSV into suppliers (rows of one supplier must agree on its name, contact, currency
/// and lead time), or every refused row.
pub fn parse_csv(bytes: &[u8]) -> Result<Vec<(SupplierId, SupplierInput)>, PurchasingError> {
    let mut out: std::collections::BTreeMap<SupplierId, SupplierInput> = std::collections::BTreeMap::new();
    let take = |_: u64, row: CsvRow| -> Result<(), RowRefusal> {
        let id = SupplierId::parse(&row.supplier).map_err(|e| (e.code, e.message))?;
        let currency = Currency::parse(&row.currency).map_err(|e| (e.code, e.message))?;
        let lead: u32 = number("lead_time_days", &row.lead_time_days, None)?;
        let sku = Sku::parse(&row.sku).map_err(|e| (e.code, e.message))?;
        let terms = SupplierSku {
            supplier_sku: row.supplier_sku,
            cost_minor: number("cost_minor", &row.cost_minor, None)?,
            moq: number("moq", &row.moq, Some(1))?,
            order_multiple: number("order_multiple", &row.order_multiple, Some(1))?,
        };
        terms.validate("row").map_err(|e| (e.code, e.message))?;
        let input = SupplierInput {
            name: row.name,
            contact: row.contact,
            currency,
            lead_time_days: lead,
            skus: Default::default(),
            channel: ChannelSpec::Folder,
        };
        let entry = out.entry(id.clone()).or_insert_with(|| input.clone());
        if (&entry.name, &entry.contact, entry.currency, entry.lead_time_days)
            != (&input.name, &input.contact, input.currency, input.lead_time_days)
        {
            return Err(("inconsistent_supplier", format!("{id}: name, contact, currency or lead time differ")));
        }
        match entry.skus.insert(sku.clone(), terms) {
            Some(_) => Err(("duplicate_row", format!("{id} lists {sku} twice"))),
            None => Ok(()),
        }
    };
    read_rows(bytes, take)?;
    // Each supplier as a whole (the number of its SKUs, say), once every row is in: line 0.
    let invalid: Vec<RowRefusal> = out
        .iter()
        .filter_map(|(id, input)| input.validate().err().map(|e| (e.code, format!("{id}: {}", e.message))))
        .collect();
    if !invalid.is_empty() {
        let rows = invalid.into_iter().take(ROW_ERRORS_MAX).map(|(code, detail)| RowError { line: 0, code, detail });
        return Err(PurchasingError::Csv(rows.collect()));
    }
    Ok(out.into_iter().collect())
}

#[utoipa::path(post, path = "/v1/suppliers/import", tag = "purchasing", request_body(content = String, content_type = "text/csv"),
    responses((status = 200, description = "What was imported (every row checked first; one bad row imports nothing)", body = SuppliersImported)))]
async fn import(
    State(hub): State<Arc<Hub>>,
    Caller(actor): Caller,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let h = hub.clone();
    let out = blocking(move || {
        let suppliers = parse_csv(&body)?;
        h.purchasing.put_suppliers(h.intake.db(), suppliers, true, &actor, now_ms())
    })
    .await?;
    let skus: usize = out.iter().map(|o| o.supplier.skus.len()).sum();
    let created = out.iter().filter(|o| o.created).count();
    Ok(Json(SuppliersImported { suppliers: out.len(), created, skus }).into_response())
}

/// A page of `GET /v1/suppliers`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SupplierPage {
    /// The suppliers, by id.
    pub suppliers: Vec<super::model::Supplier>,
    /// The id to continue after, or `null` on the last page.
    pub next_after: Option<String>,
}

/// What `POST /v1/suppliers/import` imported.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SuppliersImported {
    /// Suppliers saved.
    pub suppliers: usize,
    /// Of those, new.
    pub created: usize,
    /// SKU terms saved.
    pub skus: usize,
}

/// One row of the ASN CSV.
#[derive(Debug, Deserialize)]
struct AsnRow {
    asn: String,
    purchase_order: String,
    line: String,
    qty: String,
    #[serde(default)]
    expected_date: String,
}

/// Reads the ASN CSV into ASNs, each with the line of its first row (rows of one ASN name the same order
/// and date), or every refused row.
pub fn parse_asn_csv(bytes: &[u8]) -> Result<Vec<(u64, NewAsn)>, PurchasingError> {
    let mut out: Vec<(u64, NewAsn)> = Vec::new();
    let take = |line: u64, r: AsnRow| -> Result<(), RowRefusal> {
        let id = AsnId::parse(&r.asn).map_err(|e| (e.code, e.message))?;
        let l = AsnLine { line: number("line", &r.line, None)?, qty: number("qty", &r.qty, None)? };
        let day = match r.expected_date.as_str() {
            "" => None,
            d => Some(super::model::parse_iso_date(d).ok_or(("invalid_date", format!("{d:?} is not YYYY-MM-DD")))?),
        };
        match out.iter_mut().find(|(_, a)| a.id == id) {
            Some((_, a)) if a.po != r.purchase_order || a.expected_day != day => {
                Err(("inconsistent_asn", format!("{id}: order or date differ")))
            }
            Some((_, a)) => {
                a.lines.push(l);
                Ok(())
            }
            None => {
                out.push((line, NewAsn { po: r.purchase_order, id, lines: vec![l], expected_day: day }));
                Ok(())
            }
        }
    };
    read_rows(bytes, take)?;
    Ok(out)
}

#[utoipa::path(post, path = "/v1/asns/import", tag = "purchasing", request_body(content = String, content_type = "text/csv"),
    responses((status = 200, description = "The ASNs recorded, all in one transaction or none", body = AsnsImported)))]
async fn import_asns(
    State(hub): State<Arc<Hub>>,
    principal: Principal,
    Caller(actor): Caller,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let h = hub.clone();
    let scope = principal.supplier_scope().cloned();
    let out = blocking(move || {
        let asns = parse_asn_csv(&body)?;
        if let Some(scope) = &scope {
            foreign_rows(&h, scope, &asns)?;
        }
        h.purchasing.record_asns(h.intake.db(), asns, &actor, now_ms())
    })
    .await?;
    for (asn, _) in &out {
        if let Ok(Some(po)) = hub.purchasing.po(hub.intake.db(), asn.po.as_str()) {
            super::sites::publish(&hub, &po);
        }
    }
    let replayed = out.iter().filter(|(_, r)| *r).count();
    Ok(Json(AsnsImported { asns: out.len() - replayed, replayed }).into_response())
}

/// What `POST /v1/asns/import` recorded.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AsnsImported {
    /// ASNs recorded.
    pub asns: usize,
    /// ASNs recorded before (the same again): nothing changed.
    pub replayed: usize,
}

/// Refuses an ASN file from supplier `scope` if any ASN names an order that is not the supplier's (another
/// supplier's, or none): every such row listed (the first [`ROW_ERRORS_MAX`]) with the code an unknown order
/// gets, nothing written.
fn foreign_rows(hub: &Hub, scope: &SupplierId, asns: &[(u64, NewAsn)]) -> Result<(), PurchasingError> {
    let mut rows = Vec::new();
    for (line, asn) in asns {
        let own = hub.purchasing.po(hub.intake.db(), &asn.po)?.is_some_and(|po| &po.supplier == scope);
        if !own && rows.len() < ROW_ERRORS_MAX {
            let e = PurchasingError::PoNotFound(asn.po.clone());
            rows.push(RowError { line: *line, code: e.code(), detail: e.to_string() });
        }
    }
    if rows.is_empty() { Ok(()) } else { Err(PurchasingError::Csv(rows)) }
}

/// The body of `POST /v1/purchase-orders`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    supplier: SupplierId,
    site: NodeId,
    #[serde(default)]
    expected_date: Option<String>,
    #[serde(default)]
    lines: Option<Vec<LineInput>>,
    #[serde(default)]
    from_replenishment: bool,
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    let k = v.to_str().ok().filter(|k| !k.is_empty() && k.len() <= KEY_BYTES_MAX && k.is_ascii());
    k.map(|k| Some(k.to_owned())).ok_or_else(|| {
        Problem::new(StatusCode::BAD_REQUEST, "invalid_idempotency_key", format!("1 to {KEY_BYTES_MAX} ASCII bytes"))
    })
}

fn date(field: &str, v: Option<&str>) -> Result<Option<u64>, Problem> {
    v.map(|d| {
        super::model::parse_iso_date(d).ok_or_else(|| {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_date", format!("{field} must be YYYY-MM-DD"))
                .with("field", field)
        })
    })
    .transpose()
}

/// The lines a replenishment pass suggests for `site` from `supplier`'s SKUs: `po_qty` of every row with an
/// order due whose chosen supplier is this one.
pub(crate) fn suggested_lines(
    hub: &Hub,
    config: &Arc<crate::forecast_config::ForecastConfig>,
    supplier: &str,
    site: &str,
) -> Result<Vec<LineInput>, Problem> {
    let today = now_ms() / crate::demand::DAY_MS;
    let snap = hub.demand.snapshot(&hub.docs, today);
    let supply = hub.purchasing.supply(hub.intake.db())?;
    let run = hub.demand.replenishment(
        &snap,
        crate::demand::Basis::Ordered,
        config,
        &crate::forecast_config::Override::default(),
        &supply,
    );
    let mut lines = Vec::new();
    for r in run.rows.iter().filter(|r| r.site == site && r.po_qty > 0 && r.supplier.as_deref() == Some(supplier)) {
        if lines.len() >= super::model::PO_LINES_MAX {
            break;
        }
        let sku = Sku::parse(&r.sku).map_err(Problem::from)?;
        lines.push(LineInput { sku, qty: r.po_qty.min(super::model::QTY_MAX) });
    }
    Ok(lines)
}

#[utoipa::path(post, path = "/v1/purchase-orders", tag = "purchasing",
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry answer the order it created")),
    request_body(content = Object, description = "Explicit `lines`, or `from_replenishment` for a site and a supplier"),
    responses((status = 201, description = "The purchase order (draft)", body = PoView), (status = 200, description = "A replay", body = PoView)))]
async fn create_po(
    State(hub): State<Arc<Hub>>,
    settings: Option<Extension<ForecastSettings>>,
    Caller(actor): Caller,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let key = idempotency_key(&headers)?;
    let req: CreateBody = oms_service::parse_json(&body)?;
    let expected_day = date("expected_date", req.expected_date.as_deref())?;
    let known = {
        let mut docs = hub.docs.lock();
        docs.sites(crate::docs::STOCK_SITES_MAX).iter().any(|(s, _)| s == &req.site)
    };
    if !known {
        return Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_site", format!("no site {}", req.site))
            .with("field", "site"));
    }
    let config = settings.map_or_else(|| Arc::new(Default::default()), |Extension(ForecastSettings(c))| c);
    let h = hub.clone();
    let (po, replayed) = blocking(move || -> Result<_, Problem> {
        let (lines, origin, strict) = match (req.lines, req.from_replenishment) {
            (Some(lines), false) => (lines, "lines", true),
            // A replay answers the first order whatever the suggestions are now: the key is looked up first.
            (None, true) => {
                (suggested_lines(&h, &config, req.supplier.as_str(), req.site.as_str())?, "replenishment", false)
            }
            _ => {
                return Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_body",
                    "send either lines or from_replenishment: true",
                ));
            }
        };
        let new = NewPo { supplier: req.supplier, site: req.site, expected_day, lines, origin, strict_terms: strict };
        let k = key.as_deref().map(|k| (k, body.as_ref()));
        Ok(h.purchasing.create_po(h.intake.db(), new, k, &actor, now_ms())?)
    })
    .await?;
    let status = if replayed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(view(&po))).into_response())
}

/// A purchase order as the API shows it: the record, its total and its dates as ISO dates.
pub fn view(po: &super::model::PurchaseOrder) -> PoView {
    PoView {
        po: po.clone(),
        expected_date: crate::demand::iso_date(po.expected_day),
        total_minor: po.total_minor(),
        open_qty: po.lines.iter().map(|l| l.open_qty()).sum::<u64>(),
    }
}

/// A purchase order as the API shows it ([`view`]).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PoView {
    /// The record.
    #[serde(flatten)]
    pub po: super::model::PurchaseOrder,
    /// Expected arrival, `YYYY-MM-DD`.
    pub expected_date: String,
    /// The total, minor units of its currency.
    pub total_minor: u64,
    /// Units still expected over its lines.
    pub open_qty: u64,
}

/// A page of `GET /v1/purchase-orders`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PoPage {
    /// The purchase orders, by id.
    pub purchase_orders: Vec<PoView>,
    /// The id to continue after, or `null` on the last page.
    pub next_after: Option<String>,
}

/// An ASN as the API shows it: the record and its date as an ISO date.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AsnView {
    /// The record.
    #[serde(flatten)]
    pub asn: super::model::Asn,
    /// Expected arrival, `YYYY-MM-DD`.
    pub expected_date: String,
}

/// `GET /v1/purchasing/summary`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PurchasingSummary {
    /// Purchase orders per state.
    pub purchase_orders: BTreeMap<&'static str, u64>,
    /// Units received against purchase orders, ever.
    pub units_received_against_po: u64,
    /// Units on open purchase orders.
    pub units_on_order: u64,
    /// Receipts and acknowledgements still in the sites' documents (pruned once applied and acknowledged).
    pub site_receipts_in_flight: super::sites::InFlight,
}

#[utoipa::path(get, path = "/v1/purchase-orders", tag = "purchasing", params(("after" = Option<String>, Query, description = "Continue after this id"), ("limit" = Option<u32>, Query, description = "Page size"), ("state" = Option<String>, Query, description = "Only orders in this state"), ("supplier" = Option<String>, Query, description = "Only this supplier's orders")),
    responses((status = 200, description = "A page of purchase orders", body = PoPage)))]
async fn pos(
    State(hub): State<Arc<Hub>>,
    principal: Principal,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let (after, limit) = page(&q, &["state", "supplier"])?;
    let state = match q.get("state") {
        None => None,
        Some(s) => Some(
            PoState::ALL.into_iter().find(|x| x.as_str() == s).ok_or_else(|| bad_query(format!("no state {s:?}")))?,
        ),
    };
    let asked = q.get("supplier").map(|s| supplier_id(s)).transpose()?;
    // A supplier key sees its own orders: asking for another supplier's finds none.
    let supplier = match (principal.supplier_scope(), asked) {
        (Some(own), Some(asked)) if &asked != own => {
            return Ok(Json(PoPage { purchase_orders: Vec::new(), next_after: None }).into_response());
        }
        (Some(own), _) => Some(own.clone()),
        (None, asked) => asked,
    };
    let h = hub.clone();
    let list = blocking(move || h.purchasing.pos(h.intake.db(), state, supplier.as_ref(), &after, limit)).await?;
    let next_after = (list.len() == limit).then(|| list.last().map(|p| p.id.to_string())).flatten();
    Ok(Json(PoPage { purchase_orders: list.iter().map(view).collect(), next_after }).into_response())
}

#[utoipa::path(get, path = "/v1/purchase-orders/{id}", tag = "purchasing", params(("id" = String, Path, description = "The purchase order")),
    responses((status = 200, description = "The purchase order with its lines, ASNs and receipts", body = PoView)))]
async fn po(State(hub): State<Arc<Hub>>, principal: Principal, Path(id): Path<String>) -> Result<Response, Problem> {
    let h = hub.clone();
    let i = id.clone();
    let found = blocking(move || h.purchasing.po(h.intake.db(), &i)).await?;
    let po =
        found.filter(|po| visible_to(&principal, po)).ok_or_else(|| Problem::from(PurchasingError::PoNotFound(id)))?;
    Ok(Json(view(&po)).into_response())
}

#[utoipa::path(post, path = "/v1/purchase-orders/{id}/send", tag = "purchasing", params(("id" = String, Path, description = "The purchase order")),
    responses((status = 200, description = "Sent: queued in the outbox to the supplier's channel", body = PoView)))]
async fn send(hub: State<Arc<Hub>>, caller: Caller, id: Path<String>) -> Result<Response, Problem> {
    step(hub, caller, id, PoStep::Send).await
}

#[utoipa::path(post, path = "/v1/purchase-orders/{id}/confirm", tag = "purchasing", params(("id" = String, Path, description = "The purchase order")),
    responses((status = 200, description = "Confirmed by the supplier", body = PoView)))]
async fn confirm(
    hub: State<Arc<Hub>>,
    principal: Principal,
    caller: Caller,
    id: Path<String>,
) -> Result<Response, Problem> {
    own_po(&hub.0, &principal, &id.0).await?;
    step(hub, caller, id, PoStep::Confirm).await
}

#[utoipa::path(post, path = "/v1/purchase-orders/{id}/cancel", tag = "purchasing", params(("id" = String, Path, description = "The purchase order")),
    responses((status = 200, description = "Cancelled (before any receipt)", body = PoView)))]
async fn cancel(hub: State<Arc<Hub>>, caller: Caller, id: Path<String>) -> Result<Response, Problem> {
    step(hub, caller, id, PoStep::Cancel).await
}

async fn step(
    State(hub): State<Arc<Hub>>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    s: PoStep,
) -> Result<Response, Problem> {
    let h = hub.clone();
    let po = blocking(move || h.purchasing.step(h.intake.db(), &id, s, &actor, now_ms())).await?;
    super::sites::publish(&hub, &po);
    Ok(Json(view(&po)).into_response())
}

#[utoipa::path(post, path = "/v1/purchase-orders/{id}/lines/{n}/close", tag = "purchasing", params(("id" = String, Path, description = "The purchase order"), ("n" = u32, Path, description = "The line number, from 1")),
    request_body(content = Option<Object>, description = "Optional `{\"reason\"}`"),
    responses((status = 200, description = "The line short-closed: what was not received will not come", body = PoView)))]
async fn close_line(
    State(hub): State<Arc<Hub>>,
    Caller(actor): Caller,
    Path((id, n)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let n: u32 = n.parse().map_err(|_| Problem::from(PurchasingError::LineNotFound(0)))?;
    let h = hub.clone();
    let po = blocking(move || h.purchasing.close_line(h.intake.db(), &id, n, &actor, now_ms())).await?;
    super::sites::publish(&hub, &po);
    Ok(Json(view(&po)).into_response())
}

/// The body of `POST /v1/purchase-orders/{id}/asns`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AsnBody {
    asn: AsnId,
    lines: Vec<AsnLine>,
    #[serde(default)]
    expected_date: Option<String>,
}

#[utoipa::path(post, path = "/v1/purchase-orders/{id}/asns", tag = "purchasing", params(("id" = String, Path, description = "The purchase order")),
    request_body(content = Object, description = "`{\"asn\", \"lines\": [{\"line\", \"qty\"}], \"expected_date\"}`"),
    responses((status = 201, description = "Recorded and published to the destination site", body = AsnView), (status = 200, description = "The same ASN again", body = AsnView)))]
async fn record_asn(
    State(hub): State<Arc<Hub>>,
    principal: Principal,
    Caller(actor): Caller,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    own_po(&hub, &principal, &id).await?;
    let req: AsnBody = oms_service::parse_json(&body)?;
    let expected_day = date("expected_date", req.expected_date.as_deref())?;
    let h = hub.clone();
    let (asn, po, replayed) = blocking(move || {
        let new = NewAsn { po: id, id: req.asn, lines: req.lines, expected_day };
        h.purchasing.record_asn(h.intake.db(), new, &actor, now_ms())
    })
    .await?;
    super::sites::publish(&hub, &po);
    let status = if replayed { StatusCode::OK } else { StatusCode::CREATED };
    let expected_date = crate::demand::iso_date(asn.expected_day);
    Ok((status, Json(AsnView { asn, expected_date })).into_response())
}

#[utoipa::path(get, path = "/v1/purchasing/summary", tag = "purchasing",
    responses((status = 200, description = "Purchase orders by state, units received and units on order", body = PurchasingSummary)))]
async fn summary(State(hub): State<Arc<Hub>>) -> Result<Response, Problem> {
    let h = hub.clone();
    let (counts, received, open) = blocking(move || -> Result<_, PurchasingError> {
        let db = h.intake.db();
        let counts = h.purchasing.counts(db)?;
        let (received, open) = h.purchasing.units(db)?;
        Ok((counts, received, open))
    })
    .await?;
    let in_flight = super::sites::in_flight(&hub);
    Ok(Json(PurchasingSummary {
        purchase_orders: counts,
        units_received_against_po: received,
        units_on_order: open,
        site_receipts_in_flight: in_flight,
    })
    .into_response())
}
