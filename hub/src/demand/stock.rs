//! The stock index: available stock per SKU × site from the nodes' stock documents, read as `GET /v1/stock`
//! reads them.

use std::collections::BTreeMap;

use oms_protocol::domain::{Balance, Sku};
use oms_protocol::escrow::Party;
use oms_protocol::schema;
use oms_protocol::sync::automerge::AutoCommit;
use oms_protocol::wire::DocId;

use crate::docs::STOCK_SKUS_MAX;
#[cfg(test)]
use crate::docs::{HubDocs, STOCK_SITES_MAX};

/// Available stock (on hand minus reserved) per (sku, site), from the nodes' stock documents.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct StockIndex {
    /// (sku, site) → available units.
    pub(crate) available: BTreeMap<(String, String), u64>,
    /// Sites with a stock document.
    pub(crate) sites: Vec<String>,
}

/// One site's stock document as read at one point: every figure of it comes from the same document state
/// (one read under the documents' lock), so no figure mixes two commits.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SiteStock {
    /// The site.
    pub(crate) site: String,
    /// The site's last write, ms.
    pub(crate) updated_at_ms: u64,
    /// Balances by SKU, sorted.
    pub(crate) skus: Vec<(Sku, Balance)>,
    /// Rights the site keeps for its own channel, by SKU (its last published escrow view).
    pub(crate) site_rights: BTreeMap<String, u64>,
}

impl SiteStock {
    /// Reads stock document `id` (bounded as `GET /v1/stock`); `None` if it does not read.
    pub(crate) fn read(doc: &AutoCommit, id: &DocId) -> Option<SiteStock> {
        let view = match schema::read_stock(doc, id.as_str(), STOCK_SKUS_MAX) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(doc = %id, error = %e, "unreadable stock document");
                return None;
            }
        };
        let site_rights = schema::read_escrow(doc, STOCK_SKUS_MAX)
            .map(|(c, _)| c.into_iter().map(|c| (c.sku().to_string(), c.local(Party::Site))).collect())
            .unwrap_or_default();
        Some(SiteStock {
            site: view.node.as_str().to_owned(),
            updated_at_ms: view.updated_at_ms,
            skus: view.skus,
            site_rights,
        })
    }
}

impl StockIndex {
    /// Reads every stock document (bounded as `GET /v1/stock`), holding the documents' lock: for tests.
    #[cfg(test)]
    pub(crate) fn build(docs: &HubDocs) -> StockIndex {
        let sites: Vec<SiteStock> =
            docs.stock_ids(STOCK_SITES_MAX).iter().filter_map(|d| SiteStock::read(&*docs.get(d)?, d)).collect();
        StockIndex::of(sites.iter())
    }

    /// The available stock of `sites`.
    pub(crate) fn of<'a>(sites: impl Iterator<Item = &'a SiteStock>) -> StockIndex {
        let mut out = StockIndex::default();
        for s in sites {
            for (sku, b) in &s.skus {
                out.available.insert((sku.as_str().to_owned(), s.site.clone()), b.available());
            }
            out.sites.push(s.site.clone());
        }
        out
    }

    /// Available units of `sku` at `site`, or in the whole network when `site` is `None`.
    pub(crate) fn available(&self, sku: &str, site: Option<&str>) -> u64 {
        match site {
            Some(site) => self.available.get(&(sku.to_owned(), site.to_owned())).copied().unwrap_or(0),
            None => self.available.iter().filter(|((s, _), _)| s == sku).map(|(_, v)| *v).sum(),
        }
    }

    /// True if any stock document lists `sku`.
    pub(crate) fn has_sku(&self, sku: &str) -> bool {
        self.available.keys().any(|(s, _)| s == sku)
    }
}
