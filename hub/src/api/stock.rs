//! `GET /v1/stock` and `GET /v1/stock/{sku}`: balances per SKU and site, with each site's freshness, as JSON
//! or CSV; the rows the stock screen reads too.

use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::IntoParams;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use oms_protocol::domain::{NodeId, Sku};
use oms_service::now_ms;
use serde::{Deserialize, Serialize};

use super::problem;
use crate::server::Hub;
use oms_service::Problem;
use oms_service::problem::QueryParams;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct StockQuery {
    /// Only this SKU.
    sku: Option<String>,
    /// `json` (default) or `csv`.
    format: Option<String>,
    /// Continue after this row, `<sku>|<site>` (the previous page's `next_after`).
    after: Option<String>,
    /// Rows per page (default and most: 10,000).
    limit: Option<usize>,
}

/// One SKU at one site, as the planner sees it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct StockRow {
    pub(crate) sku: String,
    pub(crate) site: String,
    pub(crate) on_hand: u64,
    pub(crate) reserved: u64,
    pub(crate) staged: u64,
    pub(crate) available: u64,
    /// Units the hub may promise there right now (its rights, within lease and budget).
    pub(crate) hub_promisable: u64,
    /// Rights the hub holds there (its view).
    pub(crate) hub_rights: u64,
    /// Rights the site keeps for its own channel (the site's last published view).
    pub(crate) site_rights: Option<u64>,
    pub(crate) hub_lease_until_ms: u64,
    pub(crate) updated_at_ms: u64,
    pub(crate) age_ms: u64,
    pub(crate) stale: bool,
}

/// Most rows of one `GET /v1/stock` page.
pub const STOCK_PAGE_MAX: usize = 10_000;

/// Per site the freshness of its stock document, and the rows (every SKU, or `sku`), by SKU then site.
pub(crate) fn stock_rows(hub: &Hub, sku: Option<&str>, now: u64) -> (Vec<SiteStock>, Vec<StockRow>) {
    let (sites, rows, _) = stock_page(hub, sku, None, usize::MAX, now);
    (sites, rows)
}

/// One page of [`stock_rows`]: at most `limit` rows after `after` (sku, site), and where the next page
/// starts. Read from the sites' stock as the demand cache keeps it ([`crate::demand::DemandCache::stock_sites`]:
/// the documents' lock is held for one changed stock document at a time, never for the listing), each row
/// from one state of its site's document, with the hub's rights looked up for the page's rows only.
pub fn stock_page(
    hub: &Hub,
    sku: Option<&str>,
    after: Option<(&str, &str)>,
    limit: usize,
    now: u64,
) -> (Vec<SiteStock>, Vec<StockRow>, Option<String>) {
    let stale_after = hub.intake.policy().stale_after_ms;
    let stock = hub.demand.stock_sites(&hub.docs);
    let sites = stock
        .iter()
        .map(|s| {
            let age_ms = now.saturating_sub(s.updated_at_ms);
            SiteStock {
                site: s.site.clone(),
                updated_at_ms: s.updated_at_ms,
                age_ms,
                stale: age_ms > stale_after,
                skus: s.skus.len(),
            }
        })
        .collect();
    // (sku, site) of every wanted row after `after`, then the page of them in that order.
    let mut keys: Vec<(&str, &str, usize, usize)> = Vec::new();
    for (i, s) in stock.iter().enumerate() {
        for (j, (k, _)) in s.skus.iter().enumerate() {
            let key = (k.as_str(), s.site.as_str());
            if sku.is_some_and(|q| q != key.0) || after.is_some_and(|a| key <= a) {
                continue;
            }
            keys.push((key.0, key.1, i, j));
        }
    }
    keys.sort_unstable();
    let next_after =
        (keys.len() > limit).then(|| keys.get(limit.saturating_sub(1)).map(|k| format!("{}|{}", k.0, k.1)));
    keys.truncate(limit);
    let cells: Vec<(NodeId, Sku)> =
        keys.iter().filter_map(|(k, site, _, _)| Some((NodeId::parse(site).ok()?, Sku::parse(k).ok()?))).collect();
    let escrow = hub.intake.escrow_cells(&cells, now);
    let rows = keys
        .iter()
        .filter_map(|&(k, site, i, j)| {
            let s = stock.get(i)?;
            let (_, b) = s.skus.get(j)?;
            let age_ms = now.saturating_sub(s.updated_at_ms);
            let (hub_promisable, hub_rights, hub_lease_until_ms) =
                escrow.get(&(site.to_owned(), k.to_owned())).copied().unwrap_or_default();
            Some(StockRow {
                site_rights: s.site_rights.get(k).copied(),
                sku: k.to_owned(),
                site: site.to_owned(),
                on_hand: b.on_hand,
                reserved: b.reserved,
                staged: b.staged,
                available: b.available(),
                hub_promisable,
                hub_rights,
                hub_lease_until_ms,
                updated_at_ms: s.updated_at_ms,
                age_ms,
                stale: age_ms > stale_after,
            })
        })
        .collect();
    (sites, rows, next_after.flatten())
}

pub(crate) fn stock_csv(rows: &[StockRow]) -> Response {
    let mut out = String::from(
        "sku,site,on_hand,reserved,staged,available,hub_promisable,hub_rights,site_rights,updated_at_ms,age_ms,stale\n",
    );
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}\n",
            r.sku,
            r.site,
            r.on_hand,
            r.reserved,
            r.staged,
            r.available,
            r.hub_promisable,
            r.hub_rights,
            r.site_rights.map(|v| v.to_string()).unwrap_or_default(),
            r.updated_at_ms,
            r.age_ms,
            r.stale
        ));
    }
    ([(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response()
}

fn stock_json(now: u64, sites: Vec<SiteStock>, rows: Vec<StockRow>) -> StockPage {
    let mut by_sku: BTreeMap<String, Vec<StockRow>> = BTreeMap::new();
    for r in rows {
        by_sku.entry(r.sku.clone()).or_default().push(r);
    }
    let skus = by_sku
        .into_iter()
        .map(|(sku, rows)| {
            let sum = |f: fn(&StockRow) -> u64| rows.iter().map(f).sum::<u64>();
            SkuStock {
                sku,
                on_hand: sum(|r| r.on_hand),
                reserved: sum(|r| r.reserved),
                available: sum(|r| r.available),
                hub_promisable: sum(|r| r.hub_promisable),
                sites: rows,
            }
        })
        .collect();
    StockPage { now_ms: now, sites, skus, next_after: None }
}

/// The JSON answer of `GET /v1/stock`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct StockPage {
    /// The hub's clock, ms.
    now_ms: u64,
    /// Each site that published stock, with its age.
    sites: Vec<SiteStock>,
    /// Per SKU: the network's figures and each site's row.
    skus: Vec<SkuStock>,
    /// Where the next page starts (`<sku>|<site>`), or `null` on the last page.
    next_after: Option<String>,
}

/// One SKU across the sites (`GET /v1/stock/{sku}`, and each SKU of `GET /v1/stock`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SkuStock {
    /// The SKU.
    sku: String,
    /// On hand over the sites.
    on_hand: u64,
    /// Reserved over the sites.
    reserved: u64,
    /// Available (on hand − reserved) over the sites.
    available: u64,
    /// What the hub may promise now over the sites.
    hub_promisable: u64,
    /// Each site's row.
    sites: Vec<StockRow>,
}

/// A site that published its stock.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SiteStock {
    /// The site.
    site: String,
    /// When it last wrote its stock, ms.
    updated_at_ms: u64,
    /// How long ago, ms.
    age_ms: u64,
    /// Older than the routing policy's `stale_after_ms`: routing leaves it out.
    stale: bool,
    /// SKUs it holds.
    skus: usize,
}

/// `Some(true)` for CSV, `Some(false)` for JSON, `None` for anything else.
fn csv_wanted(format: Option<&str>) -> Option<bool> {
    match format {
        None | Some("json") => Some(false),
        Some("csv") => Some(true),
        Some(_) => None,
    }
}

fn bad_format() -> Response {
    problem(StatusCode::BAD_REQUEST, "invalid_query", "format must be json or csv")
}

#[utoipa::path(get, path = "/v1/stock", tag = "stock", params(StockQuery),
    responses((status = 200, description = "Stock per SKU and site; the same as csv (`format=csv`)", content((StockPage = "application/json"), (String = "text/csv")))))]
pub(super) async fn stock(State(hub): State<Arc<Hub>>, QueryParams(q): QueryParams<StockQuery>) -> Response {
    let Some(csv) = csv_wanted(q.format.as_deref()) else { return bad_format() };
    let limit = q.limit.unwrap_or(STOCK_PAGE_MAX);
    if !(1..=STOCK_PAGE_MAX).contains(&limit) {
        return problem(StatusCode::BAD_REQUEST, "invalid_query", format!("limit must be in 1..={STOCK_PAGE_MAX}"));
    }
    let after = match q.after.as_deref().map(|a| a.split_once('|')) {
        None => None,
        Some(Some(pair)) => Some(pair),
        Some(None) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "after must be <sku>|<site>, a page's next_after",
            );
        }
    };
    let now = now_ms();
    let h = hub.clone();
    let (after, sku) = (after.map(|(a, b)| (a.to_owned(), b.to_owned())), q.sku.clone());
    let page = hub
        .planner_reads
        .read(move || {
            let after = after.as_ref().map(|(a, b)| (a.as_str(), b.as_str()));
            stock_page(&h, sku.as_deref(), after, limit, now)
        })
        .await;
    let (sites, rows, next_after) = match page {
        Ok(page) => page,
        Err(busy) => return busy.into_response(),
    };
    if csv {
        let mut resp = stock_csv(&rows);
        if let Some(next) = next_after.and_then(|n| HeaderValue::from_str(&n).ok()) {
            resp.headers_mut().insert("x-next-after", next);
        }
        return resp;
    }
    Json(StockPage { next_after, ..stock_json(now, sites, rows) }).into_response()
}

#[utoipa::path(get, path = "/v1/stock/{sku}", tag = "stock", params(("sku" = String, Path, description = "The SKU"), StockQuery),
    responses((status = 200, description = "One SKU's stock per site; the same as csv (`format=csv`)", content((SkuStock = "application/json"), (String = "text/csv")))))]
pub(super) async fn stock_one(
    State(hub): State<Arc<Hub>>,
    Path(sku): Path<String>,
    QueryParams(q): QueryParams<StockQuery>,
) -> Response {
    if let Err(e) = oms_protocol::domain::Sku::parse(&sku) {
        return Problem::from(e).into_response();
    }
    let Some(csv) = csv_wanted(q.format.as_deref()) else { return bad_format() };
    let now = now_ms();
    let h = hub.clone();
    let s = sku.clone();
    let Ok((_, rows)) = tokio::task::spawn_blocking(move || stock_rows(&h, Some(&s), now)).await else {
        return problem(StatusCode::INTERNAL_SERVER_ERROR, "internal", "stock read failed");
    };
    if rows.is_empty() {
        return problem(StatusCode::NOT_FOUND, "unknown_sku", format!("no site reports stock of {sku}"));
    }
    if csv {
        return stock_csv(&rows);
    }
    match stock_json(now, vec![], rows).skus.into_iter().next() {
        Some(one) => Json(one).into_response(),
        None => problem(StatusCode::NOT_FOUND, "unknown_sku", format!("no site reports stock of {sku}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demand::test_support::{hub_docs, hub_over, money};
    use crate::server::ServerTuning;

    fn hub(dir: &std::path::Path, stock: &[(&str, &str, u64)]) -> Hub {
        hub_over(dir, hub_docs(dir, &[], stock), money(), ServerTuning::default())
    }

    #[test]
    fn stock_pages_hold_exactly_the_rows_of_one_read_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let stock: Vec<(&str, &str, u64)> = ["wh1", "wh2", "wh3"]
            .iter()
            .flat_map(|site| ["A", "B", "C", "D"].iter().map(move |sku| (*site, *sku, 5)))
            .collect();
        let hub = hub(dir.path(), &stock);
        let (_, whole) = stock_rows(&hub, None, 1);
        assert_eq!(whole.len(), 12);
        let key = |r: &StockRow| (r.sku.clone(), r.site.clone());
        let mut paged = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let a = after.as_deref().and_then(|a| a.split_once('|'));
            let (_, rows, next) = stock_page(&hub, None, a, 5, 1);
            pages += 1;
            assert!(rows.len() <= 5);
            paged.extend(rows.iter().map(key));
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
            assert!(pages < 10, "the walk ends");
        }
        assert_eq!(pages, 3);
        assert_eq!(paged, whole.iter().map(key).collect::<Vec<_>>());
        let mut sorted = paged.clone();
        sorted.sort();
        assert_eq!(paged, sorted, "by SKU, then site");
        // One SKU, after a row of it.
        let (_, rows, next) = stock_page(&hub, Some("B"), Some(("B", "wh1")), 5, 1);
        assert_eq!(
            rows.iter().map(key).collect::<Vec<_>>(),
            vec![("B".into(), "wh2".into()), ("B".into(), "wh3".into())]
        );
        assert!(next.is_none());
    }
}
