//! Node configuration: a TOML file (see `deploy/node.example.toml`) whose values command-line flags override,
//! with defaults so that `oms node --data ./data --listen 127.0.0.1:8081` just runs.

use crate::escrow::EscrowPolicy;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use oms_protocol::domain::{GeoPoint, NodeId};
use oms_service::config::{default_tenant, load_toml};
use oms_service::serve::HttpConfig;
use serde::Deserialize;

pub use oms_service::config::ConfigError;

/// Everything a node needs to start.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This site's id.
    #[serde(default = "default_node_id")]
    pub node_id: NodeId,
    /// Directory holding `node.redb`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// HTTP listen address.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where the site is.
    #[serde(default)]
    pub site: SiteConfig,
    /// The hub to sync with; none means stand-alone.
    #[serde(default)]
    pub hub: Option<HubLink>,
    /// When finished orders are frozen.
    #[serde(default)]
    pub orders: OrdersConfig,
    /// Receiving against purchase orders (`[receiving]`).
    #[serde(default)]
    pub receiving: ReceivingConfig,
    /// The HTTP API's host allow-list, timeouts and connection limits (`[http]`).
    #[serde(default)]
    pub http: HttpConfig,
    /// API keys: how often the key file is re-read, per-key rates and in-flight caps (`[auth]`).
    #[serde(default)]
    pub auth: oms_service::auth::AuthConfig,
    /// Free space kept in reserve on the data directory's file system (`[storage]`).
    #[serde(default)]
    pub storage: oms_service::storage::StorageConfig,
    /// When the site's carriers collect (`[shipping]` with `[[shipping.schedules]]`), published to the hub
    /// so it can promise ship dates; none means the hub promises none for this site.
    #[serde(default)]
    pub shipping: Option<oms_protocol::shipping::ShippingSchedule>,
    /// The carrier whose labels this site buys (`[carrier]`); none means no consignments: staff ship by
    /// typing the carrier and tracking.
    #[serde(default)]
    pub carrier: Option<crate::carrier::CarrierConfig>,
}

/// The `[orders]` section: when finished orders are frozen (see [`crate::freeze`]).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct OrdersConfig {
    /// Days after delivery (or shipment, if no delivery was confirmed) during which a shipped order may
    /// still be returned; after that it is frozen.
    #[serde(default = "default_return_window_days")]
    pub return_window_days: u32,
    /// The return window in milliseconds, instead of `return_window_days` (for tests and drills).
    #[serde(default)]
    pub return_window_ms: Option<u64>,
    /// How often the node looks for orders to freeze, ms.
    #[serde(default = "default_freeze_interval_ms")]
    pub freeze_interval_ms: u64,
    /// Orders looked at per pass, at most.
    #[serde(default = "default_freeze_batch_max")]
    pub freeze_batch_max: usize,
}

/// The `[receiving]` section: receipts against purchase orders.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceivingConfig {
    /// Units a PO line may receive beyond what it expects (ordered less short-closed), percent; more is
    /// `409 over_receipt` unless forced with a reason. At most 1000.
    pub over_receipt_tolerance_pct: u32,
    /// A receipt the hub has acknowledged as applied leaves the stock document once it is this old, ms (so
    /// the document holds only receipts in flight). At most [`RECEIPT_PRUNE_GRACE_MS_MAX`] (a day).
    pub receipt_prune_grace_ms: u64,
}

/// Longest `[receiving] receipt_prune_grace_ms`.
pub const RECEIPT_PRUNE_GRACE_MS_MAX: u64 = 86_400_000;

impl Default for ReceivingConfig {
    fn default() -> Self {
        ReceivingConfig { over_receipt_tolerance_pct: 10, receipt_prune_grace_ms: 60_000 }
    }
}

/// Longest return window, days.
pub const RETURN_WINDOW_DAYS_MAX: u32 = 3_650;

fn default_return_window_days() -> u32 {
    30
}
fn default_freeze_interval_ms() -> u64 {
    60_000
}
fn default_freeze_batch_max() -> usize {
    256
}

impl Default for OrdersConfig {
    fn default() -> Self {
        OrdersConfig {
            return_window_days: default_return_window_days(),
            return_window_ms: None,
            freeze_interval_ms: default_freeze_interval_ms(),
            freeze_batch_max: default_freeze_batch_max(),
        }
    }
}

impl OrdersConfig {
    /// The freeze policy this section describes.
    pub fn freeze_policy(&self) -> crate::freeze::FreezePolicy {
        crate::freeze::FreezePolicy {
            return_window_ms: self
                .return_window_ms
                .unwrap_or_else(|| u64::from(self.return_window_days).saturating_mul(24 * 3_600_000)),
            interval_ms: self.freeze_interval_ms,
            batch_max: self.freeze_batch_max,
        }
    }
}

/// The site's location and name.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Latitude.
    #[serde(default)]
    pub lat: f64,
    /// Longitude.
    #[serde(default)]
    pub lon: f64,
    /// Preference among otherwise equal routing plans; lower is preferred (published to the hub).
    #[serde(default = "default_priority")]
    pub priority: u32,
    /// Shipments a day the hub may route here.
    #[serde(default = "default_capacity")]
    pub capacity_per_day: u32,
    /// Region, such as `eu-central` (the hub may restrict orders to their region).
    #[serde(default)]
    pub region: String,
}

fn default_priority() -> u32 {
    100
}
fn default_capacity() -> u32 {
    10_000
}

impl Default for SiteConfig {
    fn default() -> Self {
        SiteConfig {
            name: String::new(),
            lat: 0.0,
            lon: 0.0,
            priority: default_priority(),
            capacity_per_day: default_capacity(),
            region: String::new(),
        }
    }
}

/// How to reach the hub.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HubLink {
    /// The hub's QUIC address.
    pub addr: SocketAddr,
    /// Directory with `ca.pem` and this node's certificate and key.
    pub certs_dir: PathBuf,
    // --- added for sync (issue 3) ---
    /// The tenant of this node's certificate (`oms://<tenant>/node/<id>`).
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// The name the hub's certificate is checked against (one of its DNS names).
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// Accept hub assignments at once (otherwise they wait in `assigned` for staff to accept or reject).
    #[serde(default = "default_true")]
    pub auto_accept: bool,
    /// Escrow of stock rights with the hub: lease, unacknowledged budget, rebalancing.
    #[serde(default)]
    pub escrow: EscrowPolicy,
    /// Deflate sync frames when the hub reads them too (`capabilities::DEFLATE`); off only to compare.
    #[serde(default = "default_true")]
    pub compress: bool,
    /// How often this node's certificate and key files are checked for changes, ms: a renewed pair copied
    /// into `certs_dir` is presented from the next connection on, without a restart.
    #[serde(default = "default_cert_check_interval_ms")]
    pub cert_check_interval_ms: u64,
    /// How often `ca.pem` and `crl.pem` in `certs_dir` are checked for changes, ms: a replaced CA bundle is
    /// used from the next connection on, and a CRL that revokes the hub's certificate refuses it and cuts the
    /// live link, within this interval, without a restart.
    #[serde(default = "default_cert_check_interval_ms")]
    pub crl_check_interval_ms: u64,
    /// Operations of history the stock document may keep beyond twice what it shows before it continues in a
    /// new generation (see `oms_protocol::generations`); at least 100. The default suits production; the
    /// demo sets it low so that generations happen while it runs.
    #[serde(default = "default_state_history_ops_min")]
    pub state_history_ops_min: u64,
    /// After the hub sent an order document, the answers to it wait up to this long (ms) for the site's
    /// progress on it, so that one flush and one write carry both; 0 answers at once. At most
    /// `oms_sync::link::ANSWER_LINGER_MS_MAX`.
    #[serde(default = "default_answer_linger_ms")]
    pub answer_linger_ms: u64,
}

fn default_answer_linger_ms() -> u64 {
    oms_sync::link::ANSWER_LINGER_MS
}

fn default_state_history_ops_min() -> u64 {
    oms_protocol::generations::HISTORY_OPS_MIN
}

fn default_cert_check_interval_ms() -> u64 {
    oms_transport::tls::FILE_CHECK_INTERVAL_MS
}

fn default_true() -> bool {
    true
}

fn default_server_name() -> String {
    "localhost".to_owned()
}

fn default_node_id() -> NodeId {
    NodeId::parse("node-1").unwrap_or_else(|_| unreachable!("literal id is valid"))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8081))
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: default_node_id(),
            data_dir: default_data_dir(),
            listen: default_listen(),
            site: SiteConfig::default(),
            hub: None,
            orders: OrdersConfig::default(),
            receiving: ReceivingConfig::default(),
            http: HttpConfig::default(),
            auth: oms_service::auth::AuthConfig::default(),
            storage: oms_service::storage::StorageConfig::default(),
            shipping: None,
            carrier: None,
        }
    }
}

impl NodeConfig {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let cfg: NodeConfig = load_toml(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        GeoPoint::new(self.site.lat, self.site.lon).map_err(|e| ConfigError::Invalid(format!("site.{e}")))?;
        if self.node_id.as_str() == "hub" {
            return Err(ConfigError::Invalid("node_id \"hub\" is reserved for the hub's own orders".into()));
        }
        let o = &self.orders;
        let window_days_max_ms = u64::from(RETURN_WINDOW_DAYS_MAX) * 24 * 3_600_000;
        if o.return_window_days > RETURN_WINDOW_DAYS_MAX
            || o.return_window_ms.is_some_and(|ms| ms > window_days_max_ms)
            || !(10..=86_400_000).contains(&o.freeze_interval_ms)
            || !(1..=crate::store::FREEZE_ORDERS_MAX).contains(&o.freeze_batch_max)
        {
            return Err(ConfigError::Invalid(format!(
                "orders: return_window_days must be at most {RETURN_WINDOW_DAYS_MAX} (return_window_ms likewise), \
                 freeze_interval_ms 10 to 86400000, freeze_batch_max 1 to {}",
                crate::store::FREEZE_ORDERS_MAX
            )));
        }
        if self.receiving.over_receipt_tolerance_pct > crate::store::TOLERANCE_PCT_MAX
            || self.receiving.receipt_prune_grace_ms > RECEIPT_PRUNE_GRACE_MS_MAX
        {
            return Err(ConfigError::Invalid(format!(
                "receiving: over_receipt_tolerance_pct must be at most {}, receipt_prune_grace_ms at most \
                 {RECEIPT_PRUNE_GRACE_MS_MAX}",
                crate::store::TOLERANCE_PCT_MAX
            )));
        }
        if let Some(s) = &self.shipping {
            s.compile().map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        self.http.validate()?;
        self.auth.validate()?;
        self.http.scheme(self.listen.ip())?;
        if let Some(h) = &self.hub {
            if h.answer_linger_ms > oms_sync::link::ANSWER_LINGER_MS_MAX {
                return Err(ConfigError::Invalid(format!(
                    "hub.answer_linger_ms must be at most {}, got {}",
                    oms_sync::link::ANSWER_LINGER_MS_MAX,
                    h.answer_linger_ms
                )));
            }
            if h.state_history_ops_min < oms_protocol::generations::HISTORY_OPS_MIN_LEAST {
                return Err(ConfigError::Invalid(format!(
                    "hub.state_history_ops_min must be at least {}",
                    oms_protocol::generations::HISTORY_OPS_MIN_LEAST
                )));
            }
            let e = &h.escrow;
            if e.lease_ms < 1_000 || e.margin_ms == 0 || e.rebalance.hub_share_min_bp > e.rebalance.hub_share_max_bp {
                return Err(ConfigError::Invalid(
                    "hub.escrow: lease_ms must be ≥ 1000, margin_ms > 0, hub_share_min_bp ≤ hub_share_max_bp".into(),
                ));
            }
        }
        Ok(())
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("node.redb")
    }

    /// The store's limits under this config.
    pub fn store_limits(&self) -> crate::store::Limits {
        crate::store::Limits { storage_reserve_bytes: self.storage.reserve_bytes, ..crate::store::Limits::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../deploy/node.example.toml");
        let cfg: NodeConfig = toml::from_str(text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.node_id.as_str(), "wh-north");
        assert_eq!(cfg.listen.port(), 8081);
        assert!((cfg.site.lat - 53.55).abs() < 1e-9);
    }

    #[test]
    fn defaults_and_bad_values() {
        let cfg: NodeConfig = toml::from_str("").unwrap();
        assert_eq!(cfg.node_id.as_str(), "node-1");
        assert!(toml::from_str::<NodeConfig>("node_id = \"bad id\"").is_err());
        assert!(toml::from_str::<NodeConfig>("unknown_key = 1").is_err());
        let cfg: NodeConfig = toml::from_str("[site]\nlat = 100.0").unwrap();
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn the_hubs_answer_linger_defaults_to_two_ms_and_is_bounded() {
        let hub = "[hub]\naddr = \"127.0.0.1:7443\"\ncerts_dir = \"certs\"\n";
        let cfg: NodeConfig = toml::from_str(hub).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.hub.as_ref().map(|h| h.answer_linger_ms), Some(oms_sync::link::ANSWER_LINGER_MS));
        let most = format!("{hub}answer_linger_ms = {}", oms_sync::link::ANSWER_LINGER_MS_MAX);
        toml::from_str::<NodeConfig>(&most).unwrap().validate().unwrap();
        let over = format!("{hub}answer_linger_ms = {}", oms_sync::link::ANSWER_LINGER_MS_MAX + 1);
        let e = toml::from_str::<NodeConfig>(&over).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("hub.answer_linger_ms") && e.contains("got 10001"), "{e}");
    }

    #[test]
    fn receipt_prune_grace_defaults_to_a_minute_and_is_bounded() {
        let cfg: NodeConfig = toml::from_str("").unwrap();
        assert_eq!(cfg.receiving.receipt_prune_grace_ms, 60_000);
        let cfg: NodeConfig = toml::from_str("[receiving]\nreceipt_prune_grace_ms = 0").unwrap();
        cfg.validate().unwrap();
        let over = format!("[receiving]\nreceipt_prune_grace_ms = {}", RECEIPT_PRUNE_GRACE_MS_MAX + 1);
        assert!(toml::from_str::<NodeConfig>(&over).unwrap().validate().is_err());
    }

    #[test]
    fn orders_section_defaults_overrides_and_limits() {
        let cfg: NodeConfig = toml::from_str("").unwrap();
        let p = cfg.orders.freeze_policy();
        assert_eq!(p.return_window_ms, 30 * 24 * 3_600_000, "30 days by default");
        assert_eq!((p.interval_ms, p.batch_max), (60_000, 256));
        let cfg: NodeConfig = toml::from_str("[orders]\nreturn_window_days = 14").unwrap();
        assert_eq!(cfg.orders.freeze_policy().return_window_ms, 14 * 24 * 3_600_000);
        let cfg: NodeConfig =
            toml::from_str("[orders]\nreturn_window_days = 14\nreturn_window_ms = 1500\nfreeze_interval_ms = 100")
                .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.orders.freeze_policy().return_window_ms, 1500, "ms wins over days");
        for bad in ["return_window_days = 4000", "freeze_batch_max = 0", "freeze_interval_ms = 0"] {
            let cfg: NodeConfig = toml::from_str(&format!("[orders]\n{bad}")).unwrap();
            assert!(cfg.validate().is_err(), "{bad}");
        }
        assert!(toml::from_str::<NodeConfig>("[orders]\nreturn_window = 3").is_err(), "unknown key");
    }

    #[test]
    fn shipping_section_parses_and_is_checked() {
        let text = "[shipping]\ntime_zone = \"Europe/Berlin\"\nhandling_minutes = 45\nclosures = [\"2026-12-25\"]\n\
                    [[shipping.schedules]]\ncarrier = \"dhl\"\nservice = \"parcel\"\n\
                    pickup_days = [\"mon\", \"fri\"]\ncutoff = \"16:30\"\n";
        let cfg: NodeConfig = toml::from_str(text).unwrap();
        cfg.validate().unwrap();
        let s = cfg.shipping.as_ref().unwrap();
        assert_eq!((s.handling_minutes, s.schedules[0].transit_days), (45, 2));
        let bad: NodeConfig = toml::from_str(&text.replace("Europe/Berlin", "Europe/Nowhere")).unwrap();
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("shipping.time_zone"), "{e}");
        assert!(toml::from_str::<NodeConfig>(&text.replace("\"fri\"", "\"friday\"")).is_err(), "bad weekday");
        assert!(toml::from_str::<NodeConfig>(&format!("{text}speed = 1\n")).is_err(), "unknown key");
    }
}
