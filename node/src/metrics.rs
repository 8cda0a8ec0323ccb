//! Prometheus metrics of a node: requests by route and status, commit latency and batch size, orders by
//! state (read from counters the store keeps transactionally, so the figure is exact at scrape time).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Matched route, such as `/v1/orders/{id}`.
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// Response status code.
    pub status: u16,
}

/// Labels of the orders-by-state gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// Fulfillment state.
    pub state: String,
}

/// The node's metrics.
pub struct Metrics {
    registry: Registry,
    /// Requests served.
    pub requests: Family<RequestLabels, Counter>,
    commit_seconds: Histogram,
    batch_size: Histogram,
    /// Orders per fulfillment state.
    pub orders: Family<StateLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("oms_node");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests served", requests.clone());
        let commit_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register("commit_seconds", "Time to apply and commit one write batch", commit_seconds.clone());
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        registry.register("commit_batch_size", "Commands per write transaction (group commit)", batch_size.clone());
        let orders = Family::<StateLabels, Gauge>::default();
        registry.register("orders", "Orders by fulfillment state", orders.clone());
        Metrics { registry, requests, commit_seconds, batch_size, orders }
    }

    /// Records one write batch.
    pub fn observe_commit(&self, took: Duration, commands: usize) {
        self.commit_seconds.observe(took.as_secs_f64());
        // Exact: a batch holds far fewer than 2^53 commands.
        self.batch_size.observe(commands as f64);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
