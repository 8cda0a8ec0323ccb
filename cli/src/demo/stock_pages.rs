//! The demo's check of the hub's paged network stock and its demand reads (issue 17): the whole of
//! `GET /v1/stock` walked in pages of [`PAGE`] rows (following `next_after`) must hold exactly the rows of
//! one unpaged read, in the same order (`stock_page_mismatches`, must be 0, with nothing syncing meanwhile
//! the figures are equal too), and the hub's `/metrics` says how many documents its demand ledger read
//! (`demand_documents_read`: each order once after the start and again only when it changed, not every order
//! per forecast).

use std::net::SocketAddr;

use serde_json::{Value, json};

/// Rows per page of the walk.
const PAGE: usize = 7;
/// Most pages walked.
const PAGES_MAX: usize = 10_000;

/// What the check found.
#[derive(Debug, Default)]
pub(super) struct StockPages {
    rows: usize,
    pages: usize,
    mismatches: u64,
    demand_documents_read: u64,
    /// The hub's intake documents thread (`/metrics`): rounds, orders written, orders left to their callers.
    document_rounds: u64,
    document_orders: u64,
    document_fallbacks: u64,
    /// The sites' state documents (`/metrics`): new generations started or taken by the hub, the longest
    /// history among the current ones, and those over twice the bound (0).
    state_doc_generations: u64,
    state_doc_history_ops_max: u64,
    state_docs_over_history_bound: u64,
    /// The hub's anti-entropy (`/metrics`): sessions, periodic digest rounds, manifests listing everything
    /// (one a session; beyond that an excess, which must be 0) and only the buckets that differed, and the
    /// documents they listed.
    sync_sessions: u64,
    anti_entropy_digests: u64,
    anti_entropy_full_manifests: u64,
    anti_entropy_partial_manifests: u64,
    anti_entropy_entries: u64,
}

impl StockPages {
    /// Full manifests beyond one a session: rounds that listed every document when bucket rounds would do.
    fn full_manifest_excess(&self) -> u64 {
        self.anti_entropy_full_manifests.saturating_sub(self.sync_sessions)
    }
}

impl StockPages {
    pub(super) fn json(&self) -> Value {
        json!({
            "stock_rows": self.rows,
            "stock_pages": self.pages,
            "stock_page_mismatches": self.mismatches,
            "demand_documents_read": self.demand_documents_read,
            "hub_intake_document_rounds": self.document_rounds,
            "hub_intake_document_orders": self.document_orders,
            "hub_intake_document_fallbacks": self.document_fallbacks,
            "state_doc_generations": self.state_doc_generations,
            "state_doc_history_ops_max": self.state_doc_history_ops_max,
            "state_docs_over_history_bound": self.state_docs_over_history_bound,
            "sync_sessions": self.sync_sessions,
            "anti_entropy_digest_rounds": self.anti_entropy_digests,
            "anti_entropy_full_manifests": self.anti_entropy_full_manifests,
            "anti_entropy_partial_manifests": self.anti_entropy_partial_manifests,
            "anti_entropy_entries_listed": self.anti_entropy_entries,
            "anti_entropy_full_manifest_excess": self.full_manifest_excess(),
        })
    }

    /// True when the pages held exactly what one unpaged read held (and there was something to page), and
    /// the hub's intake documents thread wrote every created order's documents itself.
    pub(super) fn ok(&self) -> bool {
        self.mismatches == 0
            && self.rows > 0
            && self.document_fallbacks == 0
            && self.state_docs_over_history_bound == 0
            && self.full_manifest_excess() == 0
    }

    pub(super) fn line(&self) -> String {
        format!(
            "network stock: {} rows read in {} pages of {PAGE}, page mismatches {} (must be 0); the demand ledger read {} documents; \
             the intake's documents thread wrote {} orders in {} rounds, {} left to their requests (must be 0); \
             state documents: {} new generations, longest history {} operations, {} over the bound (must be 0); \
             anti-entropy: {} sessions, {} digest rounds, {} full manifests ({} beyond one a session, must be 0), \
             {} of differing buckets only, {} documents listed",
            self.rows,
            self.pages,
            self.mismatches,
            self.demand_documents_read,
            self.document_orders,
            self.document_rounds,
            self.document_fallbacks,
            self.state_doc_generations,
            self.state_doc_history_ops_max,
            self.state_docs_over_history_bound,
            self.sync_sessions,
            self.anti_entropy_digests,
            self.anti_entropy_full_manifests,
            self.full_manifest_excess(),
            self.anti_entropy_partial_manifests,
            self.anti_entropy_entries
        )
    }
}

/// (sku, site, on_hand, available) of every row of a `GET /v1/stock` answer, in order.
fn rows(v: &Value) -> Vec<(String, String, u64, u64)> {
    let mut out = Vec::new();
    for s in v["skus"].as_array().into_iter().flatten() {
        for r in s["sites"].as_array().into_iter().flatten() {
            out.push((
                r["sku"].as_str().unwrap_or_default().to_owned(),
                r["site"].as_str().unwrap_or_default().to_owned(),
                r["on_hand"].as_u64().unwrap_or(0),
                r["available"].as_u64().unwrap_or(0),
            ));
        }
    }
    out
}

async fn get(admin: &reqwest::Client, url: String) -> anyhow::Result<Value> {
    Ok(admin.get(url).send().await?.error_for_status()?.json().await?)
}

/// Runs the check against the hub at `hub`.
pub(super) async fn check(admin: &reqwest::Client, hub: SocketAddr) -> anyhow::Result<StockPages> {
    let mut out = StockPages::default();
    let whole = rows(&get(admin, format!("https://{hub}/v1/stock")).await?);
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..PAGES_MAX {
        let mut url = format!("https://{hub}/v1/stock?limit={PAGE}");
        if let Some(a) = &after {
            url.push_str(&format!("&after={}", a.replace('|', "%7C")));
        }
        let page = get(admin, url).await?;
        out.pages += 1;
        paged.extend(rows(&page));
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    out.rows = paged.len();
    out.mismatches = whole.len().abs_diff(paged.len()) as u64
        + whole.iter().zip(&paged).filter(|(a, b)| (&a.0, &a.1) != (&b.0, &b.1)).count() as u64;
    let metrics = admin.get(format!("https://{hub}/metrics")).send().await?.text().await?;
    let counter = |name: &str| -> u64 {
        metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0)
    };
    out.demand_documents_read = counter("oms_hub_demand_documents_read_total");
    out.document_rounds = counter("oms_hub_intake_document_rounds_total");
    out.document_orders = counter("oms_hub_intake_document_orders_total");
    out.document_fallbacks = counter("oms_hub_intake_document_fallbacks_total");
    out.state_doc_generations = counter("oms_hub_state_doc_generations_total");
    out.state_doc_history_ops_max = counter("oms_hub_state_doc_history_ops_max");
    out.state_docs_over_history_bound = counter("oms_hub_state_docs_over_history_bound");
    out.sync_sessions = counter("oms_hub_sync_sessions_total");
    out.anti_entropy_digests = counter("oms_hub_anti_entropy_digests_total");
    out.anti_entropy_full_manifests = counter("oms_hub_anti_entropy_full_manifests_total");
    out.anti_entropy_partial_manifests = counter("oms_hub_anti_entropy_partial_manifests_total");
    out.anti_entropy_entries = counter("oms_hub_anti_entropy_entries_total");
    Ok(out)
}
