//! Hub configuration: a TOML file (see `deploy/hub.example.toml`) whose values command-line flags override.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Everything the hub needs to start.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// The tenant: only certificates `oms://<tenant>/node/<id>` are served.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Directory holding `hub.redb`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// QUIC (sync) listen address.
    #[serde(default = "default_listen_quic")]
    pub listen_quic: SocketAddr,
    /// HTTP (status, orders, stock) listen address.
    #[serde(default = "default_listen_http")]
    pub listen_http: SocketAddr,
    /// PKI directory with `ca.pem`, `crl.pem`, `hub.pem`, `hub.key` (see `oms ca`).
    #[serde(default = "default_certs_dir")]
    pub certs_dir: PathBuf,
    /// Nodes connected at once; further connections are refused.
    #[serde(default = "default_nodes_max")]
    pub nodes_max: usize,
    /// Documents held.
    #[serde(default = "default_docs_max")]
    pub docs_max: usize,
    /// Documents kept loaded once written to disk (an order document costs about 19 KB loaded, 230 B not).
    #[serde(default = "default_docs_cached_max")]
    pub docs_cached_max: usize,
    /// Documents loaded at once, cached or changed and not yet on disk; beyond it sessions flush before
    /// taking more frames. At least `docs_cached_max`.
    #[serde(default = "default_docs_loaded_max")]
    pub docs_loaded_max: usize,
    /// Documents one node may create (its orders and stock document); beyond it its changes creating more
    /// are refused with `QuotaExceeded`. 1 ..= `docs_max`.
    #[serde(default = "default_node_docs_max")]
    pub node_docs_max: u64,
    /// Bytes the documents one node writes may take; beyond it its changes are refused with
    /// `QuotaExceeded`. 1 MiB ..= 1 TiB.
    #[serde(default = "default_node_stored_bytes_max")]
    pub node_stored_bytes_max: u64,
    /// Operations of history the hub's escrow and inbound documents for a site may keep beyond twice what they
    /// show before they continue in a new generation (see `oms_protocol::generations`); at least 100.
    #[serde(default = "default_state_history_ops_min")]
    pub state_history_ops_min: u64,
    /// Bytes the changes of one sync message may inflate to; beyond it they are refused with
    /// `ChangeTooLarge` before anything is inflated. 4 MiB (a frame) ..= 1 GiB.
    #[serde(default = "default_changes_inflated_bytes_max")]
    pub changes_inflated_bytes_max: usize,
    /// A session holds its answers to a node's documents up to this long (ms) while no document of the
    /// hub's own is ready for that node, so that one flush and one write carry them with the next; 0 answers
    /// at once. At most `oms_sync::link::ANSWER_LINGER_MS_MAX`.
    #[serde(default = "default_answer_linger_ms")]
    pub answer_linger_ms: u64,
    /// How often the CRL file is checked for changes, ms. A revoked node's live connection is closed within
    /// this interval, and its next handshake refused.
    #[serde(default = "default_crl_check_interval_ms")]
    pub crl_check_interval_ms: u64,
    /// How often the hub's own certificate and key files are checked for changes, ms: a renewed certificate
    /// copied over `hub.pem` / `hub.key` is presented from the next handshake on, without a restart.
    #[serde(default = "default_cert_check_interval_ms")]
    pub cert_check_interval_ms: u64,
    /// How channel orders are routed (`[routing]`: nearest_k, max_split, split_lines, stale_after_ms,
    /// on_shortfall = "backorder" | "hold" | "reject", region_must_match).
    #[serde(default)]
    pub routing: crate::routing::RoutingPolicy,
    /// Planning parameters of the forecast and replenishment endpoints (`[forecast]`), validated on load.
    #[serde(default)]
    pub forecast: crate::forecast_config::ForecastConfig,
    /// The HTTP API's host allow-list, timeouts and connection limits (`[http]`).
    #[serde(default)]
    pub http: oms_service::serve::HttpConfig,
    /// Free space kept in reserve on the data directory's file system (`[storage]`): below it, every API
    /// call that may write is refused with `507 insufficient_storage`; reads go on.
    #[serde(default)]
    pub storage: oms_service::storage::StorageConfig,
    /// API keys (`DATA_DIR/keys.json`, made with `oms keys`): how often the file is re-read and the
    /// per-key and per-IP rates (`[auth]`).
    #[serde(default)]
    pub auth: oms_service::auth::AuthConfig,
    /// The intake writer's queue and batch bounds (`[intake]`: `queue_max`, `batch_max`).
    #[serde(default)]
    pub intake: crate::intake::IntakeLimits,
    /// Payment providers and the outbox's limits (`[payments]`, see [`crate::money::PaymentsConfig`]).
    #[serde(default)]
    pub payments: crate::money::PaymentsConfig,
    /// Tax rates per destination and whether prices include tax (`[tax]`, see [`crate::money::tax`]).
    #[serde(default)]
    pub tax: crate::money::tax::TaxConfig,
    /// The event log's retention and the nodes' debounce (`[events]`).
    #[serde(default)]
    pub events: crate::events::EventsConfig,
    /// Webhook delivery: retries, timeouts, concurrency, private addresses (`[webhooks]`).
    #[serde(default)]
    pub webhooks: crate::events::webhooks::WebhooksConfig,
    /// Sending purchase orders to suppliers: the folder, retries, timeouts (`[purchasing]`).
    #[serde(default)]
    pub purchasing: crate::purchasing::PurchasingConfig,
    /// The returns policy: window, non-returnable SKUs, auto-approval, refund at receipt or held (`[returns]`).
    #[serde(default)]
    pub returns: crate::returns::ReturnsConfig,
    /// Carriers that post tracking events to `POST /v1/carriers/{carrier}/events`, by name (`[carriers.<name>]`
    /// with its `webhook_secret`, at least 16 bytes; see `crate::tracking`). None by default.
    #[serde(default)]
    pub carriers: crate::tracking::CarriersConfig,
}

fn default_tenant() -> String {
    oms_service::config::default_tenant()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./hub-data")
}
fn default_listen_quic() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7443))
}
fn default_listen_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_certs_dir() -> PathBuf {
    PathBuf::from("./certs")
}
fn default_nodes_max() -> usize {
    256
}
fn default_docs_max() -> usize {
    10_000_000
}
fn default_docs_cached_max() -> usize {
    crate::docs::DOCS_CACHED_MAX
}
fn default_docs_loaded_max() -> usize {
    2 * crate::docs::DOCS_CACHED_MAX
}
fn default_node_docs_max() -> u64 {
    crate::docs::NODE_DOCS_MAX
}
fn default_state_history_ops_min() -> u64 {
    oms_protocol::generations::HISTORY_OPS_MIN
}
fn default_node_stored_bytes_max() -> u64 {
    crate::docs::NODE_STORED_BYTES_MAX
}
fn default_changes_inflated_bytes_max() -> usize {
    oms_protocol::sync::CHANGES_INFLATED_BYTES_MAX
}
fn default_answer_linger_ms() -> u64 {
    oms_sync::link::ANSWER_LINGER_MS
}
fn default_crl_check_interval_ms() -> u64 {
    oms_transport::tls::FILE_CHECK_INTERVAL_MS
}
fn default_cert_check_interval_ms() -> u64 {
    oms_transport::tls::FILE_CHECK_INTERVAL_MS
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            tenant: default_tenant(),
            data_dir: default_data_dir(),
            listen_quic: default_listen_quic(),
            listen_http: default_listen_http(),
            certs_dir: default_certs_dir(),
            nodes_max: default_nodes_max(),
            docs_max: default_docs_max(),
            docs_cached_max: default_docs_cached_max(),
            docs_loaded_max: default_docs_loaded_max(),
            node_docs_max: default_node_docs_max(),
            node_stored_bytes_max: default_node_stored_bytes_max(),
            state_history_ops_min: default_state_history_ops_min(),
            changes_inflated_bytes_max: default_changes_inflated_bytes_max(),
            answer_linger_ms: default_answer_linger_ms(),
            crl_check_interval_ms: default_crl_check_interval_ms(),
            cert_check_interval_ms: default_cert_check_interval_ms(),
            routing: crate::routing::RoutingPolicy::default(),
            forecast: crate::forecast_config::ForecastConfig::default(),
            http: oms_service::serve::HttpConfig::default(),
            storage: oms_service::storage::StorageConfig::default(),
            auth: oms_service::auth::AuthConfig::default(),
            intake: crate::intake::IntakeLimits::default(),
            payments: crate::money::PaymentsConfig::default(),
            tax: crate::money::tax::TaxConfig::default(),
            events: crate::events::EventsConfig::default(),
            webhooks: crate::events::webhooks::WebhooksConfig::default(),
            purchasing: crate::purchasing::PurchasingConfig::default(),
            returns: crate::returns::ReturnsConfig::default(),
            carriers: crate::tracking::CarriersConfig::default(),
        }
    }
}

/// Smallest `node_stored_bytes_max`: 1 MiB.
pub const NODE_STORED_BYTES_MIN: u64 = 1 << 20;
/// Largest `node_stored_bytes_max`: 1 TiB.
pub const NODE_STORED_BYTES_MAX_MAX: u64 = 1 << 40;
/// Largest `changes_inflated_bytes_max`: 1 GiB.
pub const CHANGES_INFLATED_BYTES_MAX_MAX: usize = 1 << 30;

/// Why a configuration was refused (the node's files are read the same way).
pub use oms_service::config::ConfigError;
use oms_service::config::load_toml;

impl HubConfig {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<HubConfig, ConfigError> {
        let cfg: HubConfig = load_toml(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the values that parse but make no sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.http.validate()?;
        self.auth.validate()?;
        self.intake.check().map_err(ConfigError::Invalid)?;
        self.payments.check().map_err(ConfigError::Invalid)?;
        self.tax.check().map_err(ConfigError::Invalid)?;
        self.webhooks.check().map_err(ConfigError::Invalid)?;
        self.purchasing.check().map_err(ConfigError::Invalid)?;
        self.returns.check().map_err(ConfigError::Invalid)?;
        crate::tracking::check_config(&self.carriers).map_err(ConfigError::Invalid)?;
        self.events.check(&self.webhooks).map_err(ConfigError::Invalid)?;
        self.http.scheme(self.listen_http.ip())?;
        if self.docs_cached_max == 0 || self.docs_loaded_max < self.docs_cached_max {
            return Err(ConfigError::Invalid(format!(
                "docs_cached_max must be at least 1 and docs_loaded_max at least docs_cached_max (got {} and {})",
                self.docs_cached_max, self.docs_loaded_max
            )));
        }
        if self.answer_linger_ms > oms_sync::link::ANSWER_LINGER_MS_MAX {
            return Err(ConfigError::Invalid(format!(
                "answer_linger_ms must be at most {}, got {}",
                oms_sync::link::ANSWER_LINGER_MS_MAX,
                self.answer_linger_ms
            )));
        }
        if self.state_history_ops_min < oms_protocol::generations::HISTORY_OPS_MIN_LEAST {
            return Err(ConfigError::Invalid(format!(
                "state_history_ops_min must be at least {}, got {}",
                oms_protocol::generations::HISTORY_OPS_MIN_LEAST,
                self.state_history_ops_min
            )));
        }
        let docs_max = u64::try_from(self.docs_max).unwrap_or(u64::MAX);
        if !(1..=docs_max).contains(&self.node_docs_max) {
            return Err(ConfigError::Invalid(format!(
                "node_docs_max must be within 1..=docs_max ({docs_max}), got {}",
                self.node_docs_max
            )));
        }
        if !(NODE_STORED_BYTES_MIN..=NODE_STORED_BYTES_MAX_MAX).contains(&self.node_stored_bytes_max) {
            return Err(ConfigError::Invalid(format!(
                "node_stored_bytes_max must be within {NODE_STORED_BYTES_MIN}..={NODE_STORED_BYTES_MAX_MAX}, got {}",
                self.node_stored_bytes_max
            )));
        }
        let inflated = oms_protocol::wire::FRAME_BYTES_MAX..=CHANGES_INFLATED_BYTES_MAX_MAX;
        if !inflated.contains(&self.changes_inflated_bytes_max) {
            return Err(ConfigError::Invalid(format!(
                "changes_inflated_bytes_max must be within {}..={}, got {}",
                inflated.start(),
                inflated.end(),
                self.changes_inflated_bytes_max
            )));
        }
        Ok(())
    }

    /// The per-node quota these values set.
    pub fn node_quota(&self) -> crate::docs::NodeQuota {
        crate::docs::NodeQuota { docs_max: self.node_docs_max, stored_bytes_max: self.node_stored_bytes_max }
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("hub.redb")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/hub.example.toml");
        let cfg = HubConfig::load(&path).unwrap();
        assert_eq!(cfg.tenant, "acme");
        assert!(cfg.nodes_max > 0);
        assert!(cfg.docs_loaded_max >= cfg.docs_cached_max);
    }

    #[test]
    fn the_auth_section_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, "[auth]\nrate_per_s = 50\nopen_rate_per_s = 5\n").unwrap();
        let cfg = HubConfig::load(&path).unwrap();
        assert_eq!((cfg.auth.rate_per_s, cfg.auth.open_rate_per_s), (50, 5));
        std::fs::write(&path, "[auth]\nrate_per_s = 0\n").unwrap();
        assert!(matches!(HubConfig::load(&path), Err(ConfigError::Invalid(m)) if m.contains("auth.rate_per_s")));
        std::fs::write(&path, "[auth]\nrate = 5\n").unwrap();
        assert!(HubConfig::load(&path).is_err(), "unknown keys are refused");
    }

    #[test]
    fn the_answer_linger_defaults_to_two_ms_and_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        assert_eq!(HubConfig::default().answer_linger_ms, oms_sync::link::ANSWER_LINGER_MS);
        std::fs::write(&path, format!("answer_linger_ms = {}\n", oms_sync::link::ANSWER_LINGER_MS_MAX)).unwrap();
        assert_eq!(HubConfig::load(&path).unwrap().answer_linger_ms, oms_sync::link::ANSWER_LINGER_MS_MAX);
        std::fs::write(&path, "answer_linger_ms = 0\n").unwrap();
        assert_eq!(HubConfig::load(&path).unwrap().answer_linger_ms, 0, "0 answers at once");
        std::fs::write(&path, format!("answer_linger_ms = {}\n", oms_sync::link::ANSWER_LINGER_MS_MAX + 1)).unwrap();
        let Err(ConfigError::Invalid(m)) = HubConfig::load(&path) else { panic!("over the most must be refused") };
        assert!(m.contains("answer_linger_ms") && m.ends_with("got 10001"), "{m}");
    }

    #[test]
    fn a_loaded_bound_below_the_cache_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, "docs_cached_max = 100\ndocs_loaded_max = 99\n").unwrap();
        assert!(matches!(HubConfig::load(&path), Err(ConfigError::Invalid(m)) if m.contains("docs_loaded_max")));
        std::fs::write(&path, "docs_cached_max = 0\n").unwrap();
        assert!(matches!(HubConfig::load(&path), Err(ConfigError::Invalid(_))));
        std::fs::write(&path, "docs_cached_max = 10\ndocs_loaded_max = 10\n").unwrap();
        assert_eq!(HubConfig::load(&path).unwrap().docs_loaded_max, 10);
    }

    #[test]
    fn quotas_and_the_inflation_bound_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        for bad in [
            "node_docs_max = 0\n",
            "docs_max = 10\nnode_docs_max = 11\n",
            "node_stored_bytes_max = 1000\n",
            "node_stored_bytes_max = 2199023255552\n",
            "changes_inflated_bytes_max = 1024\n",
            "changes_inflated_bytes_max = 2147483648\n",
            "[intake]\nqueue_max = 0\n",
            "[intake]\nbatch_max = 0\n",
            "[intake]\nbatch_max = 100000\n",
            "[intake]\ncache_bytes = 4096\n",
            "[webhooks]\nconcurrency_max = 0\n",
            "[webhooks]\ntimeout_ms = 1\n",
            "[webhooks]\nretry_for_ms = 1000\n[events]\nretention_ms = 999\n",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(matches!(HubConfig::load(&path), Err(ConfigError::Invalid(_))), "{bad}");
        }
        std::fs::write(&path, "[webhooks]\nallow_private = true\n").unwrap();
        assert!(HubConfig::load(&path).is_err(), "unknown keys are refused");
        std::fs::write(&path, "[webhooks]\nallow_private_addresses = true\n[events]\nretention_ms = 172800000\n")
            .unwrap();
        assert!(HubConfig::load(&path).unwrap().webhooks.allow_private_addresses);
        std::fs::write(&path, "node_docs_max = 10\nnode_stored_bytes_max = 1048576\n").unwrap();
        let cfg = HubConfig::load(&path).unwrap();
        assert_eq!(cfg.node_quota(), crate::docs::NodeQuota { docs_max: 10, stored_bytes_max: 1 << 20 });
        assert_eq!(HubConfig::default().node_quota(), crate::docs::NodeQuota::default());
        assert!(HubConfig::default().validate().is_ok());
        std::fs::write(&path, "[intake]\nqueue_max = 100\nbatch_max = 10\ncache_bytes = 8388608\n").unwrap();
        let intake = HubConfig::load(&path).unwrap().intake;
        assert_eq!((intake.queue_max, intake.batch_max, intake.cache_bytes), (100, 10, 8 << 20));
        assert_eq!(HubConfig::default().intake.cache_bytes, 64 << 20, "not redb's 1 GiB");
    }
}
