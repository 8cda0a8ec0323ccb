//! Catalog, stock and ledger routes: `/v1/catalog[/{sku}]`, `/v1/stock[/{sku}[/ledger]]`, the stock receipts,
//! adjustments and cycle counts, the ledger check (`/v1/audit/ledger`) and the CSV imports (`/v1/import/...`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use oms_protocol::domain::{Balance, Movement, Sku, ValidationError};

use super::{AppState, PageQuery, Q, exec, qty_u32, sku_path, text};
use crate::escrow::EscrowFigures;
use crate::import::{self, Kind};
use crate::store::{Audit, CatalogItem, Store, StoreError, cmd};
use oms_service::audit::Actor;
use oms_service::{JsonBody, Problem, RawBody};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CatalogBody {
    name: String,
    bin: String,
}

#[utoipa::path(put, path = "/v1/catalog/{sku}", tag = "catalog", params(("sku" = String, Path, description = "The SKU")), request_body = CatalogBody,
    responses((status = 200, description = "The item as stored", body = CatalogItem)))]
pub(super) async fn put_catalog(
    State(st): State<AppState>,
    actor: Actor,
    Path(sku): Path<String>,
    JsonBody(b): JsonBody<CatalogBody>,
) -> Result<Response, Problem> {
    let sku = sku_path(&sku)?;
    text("name", &b.name, true)?;
    text("bin", &b.bin, false)?;
    let item = exec(&st, &actor, None, cmd::PutCatalog(CatalogItem { sku, name: b.name, bin: b.bin })).await?;
    Ok(Json(item).into_response())
}

#[utoipa::path(get, path = "/v1/catalog/{sku}", tag = "catalog", params(("sku" = String, Path, description = "The SKU")),
    responses((status = 200, description = "The item", body = CatalogItem)))]
pub(super) async fn get_catalog(State(st): State<AppState>, Path(sku): Path<String>) -> Result<Response, Problem> {
    let sku = sku_path(&sku)?;
    match st.store.catalog_item(&sku)? {
        Some(i) => Ok(Json(i).into_response()),
        None => Err(StoreError::UnknownSku(sku).into()),
    }
}

#[utoipa::path(get, path = "/v1/catalog", tag = "catalog", params(PageQuery),
    responses((status = 200, description = "A page of items by SKU", body = CatalogPage)))]
pub(super) async fn list_catalog(State(st): State<AppState>, Q(q): Q) -> Result<Response, Problem> {
    let items = st.store.catalog(q.after.as_deref(), q.limit())?;
    let next_after = items.last().map(|i| i.sku.clone());
    Ok(Json(CatalogPage { items, next_after }).into_response())
}

/// A page of the catalog.
#[derive(Serialize, ToSchema)]
struct CatalogPage {
    /// Items by SKU.
    items: Vec<CatalogItem>,
    /// `after` of the next page; null on an empty page.
    next_after: Option<Sku>,
}

/// A page of stock figures.
#[derive(Serialize, ToSchema)]
struct StockPage {
    /// Figures by SKU.
    items: Vec<StockView>,
    /// `after` of the next page; null on an empty page.
    next_after: Option<Sku>,
}

/// A page of one SKU's ledger.
#[derive(Serialize, ToSchema)]
struct LedgerPage {
    /// The SKU.
    sku: Sku,
    /// Entries by sequence.
    entries: Vec<crate::store::LedgerEntry>,
    /// `after` of the next page; null on an empty page.
    next_after: Option<u64>,
}

/// What a stock movement answers.
#[derive(Serialize, ToSchema)]
struct StockOutcome {
    /// The ledger entry written.
    entry: crate::store::LedgerEntry,
    /// The SKU's figures after it.
    stock: StockView,
}

/// Stock figures of one SKU as the API shows them.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StockView {
    /// The SKU.
    pub sku: Sku,
    /// Units in bins.
    pub on_hand: u64,
    /// Units promised to orders.
    pub reserved: u64,
    /// Units that can be promised.
    pub available: u64,
    /// Units picked and waiting to ship.
    pub staged: u64,
    /// How `available` splits between this site's own channel and the hub (escrow).
    pub escrow: Option<EscrowFigures>,
}

impl StockView {
    fn new(store: &Store, sku: Sku, b: Balance) -> Result<Self, StoreError> {
        let escrow = store.escrow(&sku)?.as_ref().map(crate::escrow::figures);
        Ok(StockView {
            sku,
            on_hand: b.on_hand,
            reserved: b.reserved,
            available: b.available(),
            staged: b.staged,
            escrow,
        })
    }
}

#[utoipa::path(get, path = "/v1/stock/{sku}", tag = "stock", params(("sku" = String, Path, description = "The SKU")),
    responses((status = 200, description = "The SKU's figures", body = StockView)))]
pub(super) async fn get_stock(State(st): State<AppState>, Path(sku): Path<String>) -> Result<Response, Problem> {
    let sku = sku_path(&sku)?;
    match st.store.balance(&sku)? {
        Some(b) => Ok(Json(StockView::new(&st.store, sku, b)?).into_response()),
        None => Err(StoreError::UnknownSku(sku).into()),
    }
}

#[utoipa::path(get, path = "/v1/stock", tag = "stock", params(PageQuery),
    responses((status = 200, description = "A page of balances by SKU", body = StockPage)))]
pub(super) async fn list_stock(State(st): State<AppState>, Q(q): Q) -> Result<Response, Problem> {
    let items = st
        .store
        .balances(q.after.as_deref(), q.limit())?
        .into_iter()
        .map(|(s, b)| StockView::new(&st.store, s, b))
        .collect::<Result<Vec<StockView>, StoreError>>()?;
    let next_after = items.last().map(|i| i.sku.clone());
    Ok(Json(StockPage { items, next_after }).into_response())
}

#[utoipa::path(get, path = "/v1/stock/{sku}/ledger", tag = "stock", params(("sku" = String, Path, description = "The SKU"), PageQuery),
    responses((status = 200, description = "The SKU's ledger entries after `after`", body = LedgerPage)))]
pub(super) async fn get_ledger(
    State(st): State<AppState>,
    Path(sku): Path<String>,
    Q(q): Q,
) -> Result<Response, Problem> {
    let sku = sku_path(&sku)?;
    if st.store.catalog_item(&sku)?.is_none() {
        return Err(StoreError::UnknownSku(sku).into());
    }
    let after = match q.after.as_deref() {
        None => 0,
        Some(a) => a.parse::<u64>().map_err(|_| {
            Problem::new(StatusCode::BAD_REQUEST, "invalid_query", "after must be a ledger sequence number")
        })?,
    };
    let entries = st.store.ledger(&sku, after, q.limit())?;
    let next_after = entries.last().map(|e| e.seq);
    Ok(Json(LedgerPage { sku, entries, next_after }).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReceiptBody {
    sku: Sku,
    qty: i64,
    note: Option<String>,
}

async fn stock_outcome(st: &AppState, actor: &Actor, cmd: cmd::Stock) -> Result<Response, Problem> {
    let e = exec(st, actor, None, cmd).await?;
    let view = StockView::new(&st.store, e.sku.clone(), e.balance)?;
    Ok((StatusCode::CREATED, Json(StockOutcome { entry: e, stock: view })).into_response())
}

#[utoipa::path(post, path = "/v1/stock/receipts", tag = "stock", request_body(content = ReceiptBody,
    example = json!({"sku": "TSHIRT-RED-M", "qty": 40, "note": "delivery note 8812"})),
    responses((status = 201, description = "The ledger entry and the SKU's figures after it", body = StockOutcome)))]
pub(super) async fn receipt(
    State(st): State<AppState>,
    actor: Actor,
    JsonBody(b): JsonBody<ReceiptBody>,
) -> Result<Response, Problem> {
    let qty = qty_u32("qty", b.qty)?;
    if let Some(n) = &b.note {
        text("note", n, false)?;
    }
    stock_outcome(&st, &actor, cmd::Stock { sku: b.sku, movement: Movement::Receipt { qty, note: b.note } }).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AdjustBody {
    sku: Sku,
    delta: i64,
    reason: String,
}

#[utoipa::path(post, path = "/v1/stock/adjustments", tag = "stock", request_body = AdjustBody,
    responses((status = 201, description = "The ledger entry and the SKU's figures after it", body = StockOutcome)))]
pub(super) async fn adjustment(
    State(st): State<AppState>,
    actor: Actor,
    JsonBody(b): JsonBody<AdjustBody>,
) -> Result<Response, Problem> {
    if b.delta == 0 || b.delta.unsigned_abs() > u64::from(oms_protocol::domain::QTY_MAX) {
        return Err(ValidationError::new(
            "invalid_quantity",
            "delta",
            format!("must be a non-zero whole number within ±{}", oms_protocol::domain::QTY_MAX),
        )
        .into());
    }
    text("reason", &b.reason, true)?;
    stock_outcome(
        &st,
        &actor,
        cmd::Stock { sku: b.sku, movement: Movement::Adjustment { delta: b.delta, reason: b.reason } },
    )
    .await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CountBody {
    sku: Sku,
    counted: i64,
}

#[utoipa::path(post, path = "/v1/stock/counts", tag = "stock", request_body = CountBody,
    responses((status = 201, description = "The ledger entry and the SKU's figures after it", body = StockOutcome)))]
pub(super) async fn count(
    State(st): State<AppState>,
    actor: Actor,
    JsonBody(b): JsonBody<CountBody>,
) -> Result<Response, Problem> {
    let counted = u64::try_from(b.counted).ok().filter(|c| *c <= 1_000_000_000).ok_or_else(|| {
        Problem::from(ValidationError::new("invalid_quantity", "counted", "must be a whole number from 0"))
    })?;
    stock_outcome(&st, &actor, cmd::Stock { sku: b.sku, movement: Movement::CycleCount { counted, delta: 0 } }).await
}

/// What the ledger check found.
#[derive(Serialize, ToSchema)]
struct LedgerAudit {
    /// Every balance equals the replay of its ledger.
    consistent: bool,
    /// The SKUs whose balance does not.
    mismatched_skus: Vec<Sku>,
}

/// Replays the whole ledger and compares it with the stored balances: an operator's audit (O(ledger)).
#[utoipa::path(get, path = "/v1/audit/ledger", tag = "audit",
    responses((status = 200, description = "Whether every balance matches its ledger", body = LedgerAudit)))]
pub(super) async fn audit_ledger(State(st): State<AppState>) -> Result<Response, Problem> {
    let store = st.store.clone();
    let bad = tokio::task::spawn_blocking(move || store.verify_ledger()).await.map_err(|e| {
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("the audit task failed: {e}"))
    })??;
    Ok(Json(LedgerAudit { consistent: bad.is_empty(), mismatched_skus: bad }).into_response())
}

#[utoipa::path(post, path = "/v1/import/catalog", tag = "import", request_body(content = String, content_type = "text/csv"),
    responses((status = 200, description = "What was imported", body = import::Report)))]
pub(super) async fn import_catalog(
    State(st): State<AppState>,
    actor: Actor,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let audit = Some(Audit { actor, target: None });
    let report = import::import(&st.store, Kind::Catalog, body.as_ref(), audit, |_| {}).await?;
    Ok(Json(report).into_response())
}

#[utoipa::path(post, path = "/v1/import/stock", tag = "import", request_body(content = String, content_type = "text/csv"),
    responses((status = 200, description = "What was imported", body = import::Report)))]
pub(super) async fn import_stock(
    State(st): State<AppState>,
    actor: Actor,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let audit = Some(Audit { actor, target: None });
    let report = import::import(&st.store, Kind::Stock, body.as_ref(), audit, |_| {}).await?;
    Ok(Json(report).into_response())
}
