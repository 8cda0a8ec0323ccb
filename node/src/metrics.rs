//! Prometheus metrics of a node: requests by route and status, commit latency and batch size, orders by
//! state (read from counters the store keeps transactionally, so the figure is exact at scrape time), and
//! the remaining validity of the node's own certificate (`oms_node_certificate_expires_in_seconds`, labelled
//! with the serial; computed at scrape time, absent on a node without a hub link).

use std::sync::Mutex;
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

/// Labels of the certificate gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    /// The certificate's serial, in hex as `oms ca` prints it.
    pub serial: String,
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
    certificate_expires_in_seconds: Family<CertificateLabels, Gauge>,
    /// The serial (hex) and `not_after` (seconds since the Unix epoch) of the certificate the node presents.
    certificate: Mutex<Option<(String, i64)>>,
    /// The link to the hub, as the screens show it.
    pub hub_link: std::sync::Arc<HubLinkState>,
    awaiting_label: Gauge,
    awaiting_label_oldest_seconds: Gauge,
}

/// Whether the node is linked to its hub and since when (ms since the Unix epoch; 0: not so).
#[derive(Debug, Default)]
pub struct HubLinkState {
    /// Whether the node has a hub at all.
    pub configured: std::sync::atomic::AtomicBool,
    /// Since when the current session is established.
    pub up_since_ms: std::sync::atomic::AtomicU64,
    /// Since when the hub is unreachable (the first failure after the last session, or the start).
    pub down_since_ms: std::sync::atomic::AtomicU64,
}

impl HubLinkState {
    /// The link went up now.
    pub fn up(&self, now_ms: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.up_since_ms.store(now_ms, Relaxed);
        self.down_since_ms.store(0, Relaxed);
    }

    /// The link is down now: keeps the first moment of an outage.
    pub fn down(&self, now_ms: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.up_since_ms.store(0, Relaxed);
        let _ = self.down_since_ms.compare_exchange(0, now_ms, Relaxed, Relaxed);
    }
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
        let certificate_expires_in_seconds = Family::<CertificateLabels, Gauge>::default();
        registry.register(
            "certificate_expires_in_seconds",
            "Seconds until this node's own certificate expires (renew within 30 days: `oms ca renew`)",
            certificate_expires_in_seconds.clone(),
        );
        let awaiting_label = Gauge::default();
        registry.register(
            "consignments_awaiting_label",
            "Packed consignments whose label is not bought yet (the carrier may be unreachable)",
            awaiting_label.clone(),
        );
        let awaiting_label_oldest_seconds = Gauge::default();
        registry.register(
            "consignments_awaiting_label_oldest_seconds",
            "How long the oldest consignment awaiting a label has waited",
            awaiting_label_oldest_seconds.clone(),
        );
        Metrics {
            awaiting_label,
            awaiting_label_oldest_seconds,
            registry,
            requests,
            commit_seconds,
            batch_size,
            orders,
            certificate_expires_in_seconds,
            certificate: Mutex::new(None),
            hub_link: std::sync::Arc::new(HubLinkState::default()),
        }
    }

    /// Records the certificate the node presents (at start and whenever it is reloaded).
    pub fn set_certificate(&self, serial_hex: &str, not_after_unix_s: i64) {
        *oms_service::lock(&self.certificate) = Some((serial_hex.to_owned(), not_after_unix_s));
    }

    /// Records the consignments waiting for a label (see [`crate::labels`]).
    pub fn set_awaiting_label(&self, w: crate::store::AwaitingLabel, now_ms: u64) {
        self.awaiting_label.set(i64::try_from(w.count).unwrap_or(i64::MAX));
        let age_s = w.oldest_since_ms.map_or(0, |t| now_ms.saturating_sub(t) / 1_000);
        self.awaiting_label_oldest_seconds.set(i64::try_from(age_s).unwrap_or(i64::MAX));
    }

    /// Records one write batch.
    pub fn observe_commit(&self, took: Duration, commands: usize) {
        self.commit_seconds.observe(took.as_secs_f64());
        // Exact: a batch holds far fewer than 2^53 commands.
        self.batch_size.observe(commands as f64);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        if let Some((serial, not_after)) = oms_service::lock(&self.certificate).clone() {
            let now_s = i64::try_from(oms_service::now_ms() / 1_000).unwrap_or(i64::MAX);
            // One series: the certificate presented now (a renewed one replaces the old serial's).
            self.certificate_expires_in_seconds.clear();
            self.certificate_expires_in_seconds
                .get_or_create(&CertificateLabels { serial })
                .set(not_after.saturating_sub(now_s));
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_gauge_shows_the_remaining_validity_of_the_current_certificate() {
        let m = Metrics::new();
        assert!(!m.render().contains("oms_node_certificate_expires_in_seconds{"), "no sample before a certificate");
        let now_s = i64::try_from(oms_service::now_ms() / 1_000).unwrap();
        m.set_certificate("4a01", now_s + 10 * 86_400);
        let text = m.render();
        let line = text.lines().find(|l| l.starts_with("oms_node_certificate_expires_in_seconds{")).unwrap();
        assert!(line.contains("serial=\"4a01\""), "{line}");
        let value: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((10 * 86_400 - 5..=10 * 86_400).contains(&value), "{line}");
        // A renewed certificate replaces the series.
        m.set_certificate("4b02", now_s + 90 * 86_400);
        let text = m.render();
        assert!(!text.contains("4a01") && text.contains("serial=\"4b02\""), "{text}");
    }
}
