//! The stock index: available stock per SKU × site from the nodes' stock documents, read as `GET /v1/stock`
//! reads them.

use std::collections::BTreeMap;

use oms_protocol::schema;

use crate::docs::{HubDocs, STOCK_SITES_MAX, STOCK_SKUS_MAX};

/// Available stock (on hand minus reserved) per (sku, site), from the nodes' stock documents.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct StockIndex {
    /// (sku, site) → available units.
    pub(crate) available: BTreeMap<(String, String), u64>,
    /// Sites with a stock document.
    pub(crate) sites: Vec<String>,
}

impl StockIndex {
    /// Reads every stock document (bounded as `GET /v1/stock`).
    pub(crate) fn build(docs: &HubDocs) -> StockIndex {
        let mut out = StockIndex::default();
        for d in docs.stock_ids(STOCK_SITES_MAX) {
            let Some(doc) = docs.get(&d) else { continue };
            let Ok(view) = schema::read_stock(&doc, d.as_str(), STOCK_SKUS_MAX) else { continue };
            let site = view.node.as_str().to_owned();
            for (sku, b) in view.skus {
                out.available.insert((sku.as_str().to_owned(), site.clone()), b.available());
            }
            out.sites.push(site);
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
