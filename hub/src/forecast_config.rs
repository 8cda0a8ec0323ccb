//! Planning parameters of the forecast and replenishment endpoints: the `[forecast]` section of the hub
//! configuration (see `deploy/hub.example.toml`).
//!
//! ```toml
//! [forecast]
//! service_level = 0.95        # cycle service level
//! lead_time_days = 7          # supplier lead time
//! order_cycle_days = 14       # days of demand an order covers beyond the lead time
//!
//! [forecast.sites.wh-berlin]  # per site
//! lead_time_days = 10
//!
//! [forecast.sites.wh-berlin.skus.SKU-1]  # per site and SKU
//! service_level = 0.99
//!
//! [forecast.skus.SKU-2]       # per SKU, every site
//! lead_time_days = 21
//! ```
//!
//! Each parameter is resolved on its own, first match wins: query parameter > site + SKU > SKU > site >
//! default ([`Source`]). Every value is checked when the file is read (deserialisation goes through
//! [`ForecastConfig::validate`]), so a bad value stops the hub at start-up with a [`ForecastConfigError`]
//! naming the scope, rather than at the first request.

use std::collections::BTreeMap;

use oms_protocol::domain::{NodeId, Sku};
use serde::{Deserialize, Serialize};

/// Lowest service level accepted (config and query).
pub const SERVICE_LEVEL_MIN: f64 = 0.5;
/// Highest service level accepted (config and query).
pub const SERVICE_LEVEL_MAX: f64 = 0.999;
/// Longest lead time accepted, days.
pub const LEAD_TIME_DAYS_MAX: usize = 365;
/// Longest order cycle accepted, days.
pub const ORDER_CYCLE_DAYS_MAX: usize = 365;
/// Most `[forecast.sites.*]` tables.
pub const SITE_OVERRIDES_MAX: usize = 1_000;
/// Most SKU overrides, `[forecast.skus.*]` and `[forecast.sites.*.skus.*]` together.
pub const SKU_OVERRIDES_MAX: usize = 100_000;

/// Default service level.
pub const DEFAULT_SERVICE_LEVEL: f64 = 0.95;
/// Default lead time, days.
pub const DEFAULT_LEAD_TIME_DAYS: usize = 7;
/// Default order cycle, days.
pub const DEFAULT_ORDER_CYCLE_DAYS: usize = oms_forecast::replenishment::DEFAULT_ORDER_CYCLE_DAYS;

/// Why a `[forecast]` section was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ForecastConfigError {
    /// A service level outside [`SERVICE_LEVEL_MIN`]..=[`SERVICE_LEVEL_MAX`].
    #[error("forecast {scope}: service_level {value} is not in {SERVICE_LEVEL_MIN}..={SERVICE_LEVEL_MAX}")]
    ServiceLevel {
        /// Where: `default`, `sites.<site>`, `skus.<sku>` or `sites.<site>.skus.<sku>`.
        scope: String,
        /// The value.
        value: f64,
    },
    /// A lead time outside 1..=[`LEAD_TIME_DAYS_MAX`].
    #[error("forecast {scope}: lead_time_days {value} is not in 1..={LEAD_TIME_DAYS_MAX}")]
    LeadTime {
        /// Where.
        scope: String,
        /// The value.
        value: usize,
    },
    /// An order cycle outside 1..=[`ORDER_CYCLE_DAYS_MAX`].
    #[error("forecast {scope}: order_cycle_days {value} is not in 1..={ORDER_CYCLE_DAYS_MAX}")]
    OrderCycle {
        /// Where.
        scope: String,
        /// The value.
        value: usize,
    },
    /// A site key that is not a valid node id.
    #[error("forecast sites.{site}: not a valid site id: {reason}")]
    Site {
        /// The key.
        site: String,
        /// Why.
        reason: String,
    },
    /// A SKU key that is not a valid SKU.
    #[error("forecast {scope}: not a valid SKU: {reason}")]
    Sku {
        /// Where.
        scope: String,
        /// Why.
        reason: String,
    },
    /// More overrides than the limit.
    #[error("forecast: {count} {what} overrides, at most {max}")]
    TooMany {
        /// `site` or `SKU`.
        what: &'static str,
        /// How many.
        count: usize,
        /// The limit.
        max: usize,
    },
}

/// Values that override the defaults for a site, a SKU or a site and SKU; unset ones fall through.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// Cycle service level.
    pub service_level: Option<f64>,
    /// Lead time, days.
    pub lead_time_days: Option<usize>,
    /// Order cycle, days.
    pub order_cycle_days: Option<usize>,
}

/// A site's overrides and its per-SKU overrides.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SiteOverride {
    /// Cycle service level at this site.
    pub service_level: Option<f64>,
    /// Lead time to this site, days.
    pub lead_time_days: Option<usize>,
    /// Order cycle at this site, days.
    pub order_cycle_days: Option<usize>,
    /// Per SKU at this site.
    #[serde(default)]
    pub skus: BTreeMap<String, Override>,
}

impl SiteOverride {
    fn own(&self) -> Override {
        Override {
            service_level: self.service_level,
            lead_time_days: self.lead_time_days,
            order_cycle_days: self.order_cycle_days,
        }
    }
}

/// The `[forecast]` section as written; [`ForecastConfig`] is this after [`ForecastConfig::validate`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForecastConfig {
    #[serde(default = "default_service_level")]
    service_level: f64,
    #[serde(default = "default_lead_time_days")]
    lead_time_days: usize,
    #[serde(default = "default_order_cycle_days")]
    order_cycle_days: usize,
    #[serde(default)]
    sites: BTreeMap<String, SiteOverride>,
    #[serde(default)]
    skus: BTreeMap<String, Override>,
}

fn default_service_level() -> f64 {
    DEFAULT_SERVICE_LEVEL
}
fn default_lead_time_days() -> usize {
    DEFAULT_LEAD_TIME_DAYS
}
fn default_order_cycle_days() -> usize {
    DEFAULT_ORDER_CYCLE_DAYS
}

/// Planning parameters: defaults and overrides per site, per SKU and per site and SKU. See the module docs.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "RawForecastConfig")]
pub struct ForecastConfig {
    /// Default cycle service level.
    pub service_level: f64,
    /// Default lead time, days.
    pub lead_time_days: usize,
    /// Default order cycle (days of demand an order covers beyond the lead time).
    pub order_cycle_days: usize,
    /// Per site (node id), with optional per-SKU overrides inside.
    pub sites: BTreeMap<String, SiteOverride>,
    /// Per SKU, at every site.
    pub skus: BTreeMap<String, Override>,
}

impl Default for ForecastConfig {
    fn default() -> Self {
        ForecastConfig {
            service_level: DEFAULT_SERVICE_LEVEL,
            lead_time_days: DEFAULT_LEAD_TIME_DAYS,
            order_cycle_days: DEFAULT_ORDER_CYCLE_DAYS,
            sites: BTreeMap::new(),
            skus: BTreeMap::new(),
        }
    }
}

impl TryFrom<RawForecastConfig> for ForecastConfig {
    type Error = ForecastConfigError;

    fn try_from(raw: RawForecastConfig) -> Result<Self, Self::Error> {
        let cfg = ForecastConfig {
            service_level: raw.service_level,
            lead_time_days: raw.lead_time_days,
            order_cycle_days: raw.order_cycle_days,
            sites: raw.sites,
            skus: raw.skus,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Checks a service level (also used for query parameters).
pub fn check_service_level(scope: &str, value: f64) -> Result<f64, ForecastConfigError> {
    if (SERVICE_LEVEL_MIN..=SERVICE_LEVEL_MAX).contains(&value) {
        Ok(value)
    } else {
        Err(ForecastConfigError::ServiceLevel { scope: scope.to_owned(), value })
    }
}

/// Checks a lead time (also used for query parameters).
pub fn check_lead_time(scope: &str, value: usize) -> Result<usize, ForecastConfigError> {
    if (1..=LEAD_TIME_DAYS_MAX).contains(&value) {
        Ok(value)
    } else {
        Err(ForecastConfigError::LeadTime { scope: scope.to_owned(), value })
    }
}

/// Checks an order cycle (also used for query parameters).
pub fn check_order_cycle(scope: &str, value: usize) -> Result<usize, ForecastConfigError> {
    if (1..=ORDER_CYCLE_DAYS_MAX).contains(&value) {
        Ok(value)
    } else {
        Err(ForecastConfigError::OrderCycle { scope: scope.to_owned(), value })
    }
}

fn check_override(scope: &str, o: &Override) -> Result<(), ForecastConfigError> {
    if let Some(v) = o.service_level {
        check_service_level(scope, v)?;
    }
    if let Some(v) = o.lead_time_days {
        check_lead_time(scope, v)?;
    }
    if let Some(v) = o.order_cycle_days {
        check_order_cycle(scope, v)?;
    }
    Ok(())
}

fn check_sku(scope: &str, sku: &str) -> Result<(), ForecastConfigError> {
    Sku::parse(sku).map(|_| ()).map_err(|e| ForecastConfigError::Sku { scope: scope.to_owned(), reason: e.to_string() })
}

impl ForecastConfig {
    /// Checks every value, key and count. See [`ForecastConfigError`].
    pub fn validate(&self) -> Result<(), ForecastConfigError> {
        check_override(
            "default",
            &Override {
                service_level: Some(self.service_level),
                lead_time_days: Some(self.lead_time_days),
                order_cycle_days: Some(self.order_cycle_days),
            },
        )?;
        if self.sites.len() > SITE_OVERRIDES_MAX {
            return Err(ForecastConfigError::TooMany {
                what: "site",
                count: self.sites.len(),
                max: SITE_OVERRIDES_MAX,
            });
        }
        let skus = self.skus.len() + self.sites.values().map(|s| s.skus.len()).sum::<usize>();
        if skus > SKU_OVERRIDES_MAX {
            return Err(ForecastConfigError::TooMany { what: "SKU", count: skus, max: SKU_OVERRIDES_MAX });
        }
        for (site, o) in &self.sites {
            NodeId::parse(site).map_err(|e| ForecastConfigError::Site { site: site.clone(), reason: e.to_string() })?;
            check_override(&format!("sites.{site}"), &o.own())?;
            for (sku, so) in &o.skus {
                let scope = format!("sites.{site}.skus.{sku}");
                check_sku(&scope, sku)?;
                check_override(&scope, so)?;
            }
        }
        for (sku, o) in &self.skus {
            let scope = format!("skus.{sku}");
            check_sku(&scope, sku)?;
            check_override(&scope, o)?;
        }
        Ok(())
    }

    /// The parameters for `sku` at `site` (the network when `None`, where only SKU overrides and defaults
    /// apply), with `query` taking precedence over everything.
    pub fn resolve(&self, sku: &str, site: Option<&str>, query: &Override) -> Resolved {
        let site_cfg = site.and_then(|s| self.sites.get(s));
        let site_sku = site_cfg.and_then(|s| s.skus.get(sku));
        let sku_cfg = self.skus.get(sku);
        let site_own = site_cfg.map(SiteOverride::own);
        let layers: [(Source, Option<&Override>); 4] = [
            (Source::Query, Some(query)),
            (Source::SiteSku, site_sku),
            (Source::Sku, sku_cfg),
            (Source::Site, site_own.as_ref()),
        ];
        fn pick<T: Copy>(
            layers: &[(Source, Option<&Override>)],
            get: impl Fn(&Override) -> Option<T>,
            default: T,
        ) -> Param<T> {
            layers
                .iter()
                .find_map(|(src, o)| o.and_then(&get).map(|value| Param { value, source: *src }))
                .unwrap_or(Param { value: default, source: Source::Default })
        }
        Resolved {
            service_level: pick(&layers, |o| o.service_level, self.service_level),
            lead_time_days: pick(&layers, |o| o.lead_time_days, self.lead_time_days),
            order_cycle_days: pick(&layers, |o| o.order_cycle_days, self.order_cycle_days),
        }
    }
}

/// Where a parameter's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The request's query string.
    Query,
    /// `[forecast.sites.<site>.skus.<sku>]`.
    SiteSku,
    /// `[forecast.skus.<sku>]`.
    Sku,
    /// `[forecast.sites.<site>]`.
    Site,
    /// `[forecast]` (or the built-in default).
    Default,
    /// The lead time of the SKU's supplier (where nothing more specific than the default is set).
    Supplier,
}

impl Source {
    /// The name used in responses and CSV.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Query => "query",
            Source::SiteSku => "site_sku",
            Source::Sku => "sku",
            Source::Site => "site",
            Source::Default => "default",
            Source::Supplier => "supplier",
        }
    }
}

/// A parameter's value and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Param<T> {
    /// The value used.
    pub value: T,
    /// Where it came from.
    pub source: Source,
}

/// The planning parameters used for one SKU at one site.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Resolved {
    /// Cycle service level.
    pub service_level: Param<f64>,
    /// Lead time, days.
    pub lead_time_days: Param<usize>,
    /// Order cycle, days.
    pub order_cycle_days: Param<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Wrapper {
        #[serde(default)]
        forecast: ForecastConfig,
    }

    fn parse(text: &str) -> Result<ForecastConfig, String> {
        toml::from_str::<Wrapper>(text).map(|w| w.forecast).map_err(|e| e.to_string())
    }

    const EXAMPLE: &str = r#"
[forecast]
service_level = 0.9
lead_time_days = 5

[forecast.sites.wh1]
lead_time_days = 10
order_cycle_days = 7

[forecast.sites.wh1.skus.A]
service_level = 0.99

[forecast.skus.A]
lead_time_days = 21
service_level = 0.97

[forecast.skus.B]
order_cycle_days = 28
"#;

    #[test]
    fn defaults_when_absent() {
        let cfg = parse("").unwrap();
        assert_eq!(cfg, ForecastConfig::default());
        let r = cfg.resolve("A", Some("wh1"), &Override::default());
        assert_eq!(r.service_level, Param { value: 0.95, source: Source::Default });
        assert_eq!(r.lead_time_days, Param { value: 7, source: Source::Default });
        assert_eq!(r.order_cycle_days, Param { value: 14, source: Source::Default });
    }

    #[test]
    fn precedence_query_site_sku_sku_site_default() {
        let cfg = parse(EXAMPLE).unwrap();
        let none = Override::default();
        // A at wh1: service level from site+SKU, lead time from SKU (beats site), cycle from site.
        let r = cfg.resolve("A", Some("wh1"), &none);
        assert_eq!(r.service_level, Param { value: 0.99, source: Source::SiteSku });
        assert_eq!(r.lead_time_days, Param { value: 21, source: Source::Sku });
        assert_eq!(r.order_cycle_days, Param { value: 7, source: Source::Site });
        // B at wh1: cycle from SKU beats site, lead time from site, level default.
        let r = cfg.resolve("B", Some("wh1"), &none);
        assert_eq!(r.order_cycle_days, Param { value: 28, source: Source::Sku });
        assert_eq!(r.lead_time_days, Param { value: 10, source: Source::Site });
        assert_eq!(r.service_level, Param { value: 0.9, source: Source::Default });
        // A at another site and for the network: SKU overrides only.
        for site in [Some("wh2"), None] {
            let r = cfg.resolve("A", site, &none);
            assert_eq!(r.service_level, Param { value: 0.97, source: Source::Sku });
            assert_eq!(r.lead_time_days, Param { value: 21, source: Source::Sku });
            assert_eq!(r.order_cycle_days, Param { value: 14, source: Source::Default });
        }
        // The query beats everything, parameter by parameter.
        let q = Override { lead_time_days: Some(3), ..Override::default() };
        let r = cfg.resolve("A", Some("wh1"), &q);
        assert_eq!(r.lead_time_days, Param { value: 3, source: Source::Query });
        assert_eq!(r.service_level.source, Source::SiteSku);
    }

    #[test]
    fn bad_values_are_typed_errors_naming_the_scope() {
        let bad =
            |text: &str| ForecastConfig::try_from(toml::from_str::<RawForecastConfig>(text).unwrap()).unwrap_err();
        assert_eq!(
            bad("service_level = 1.0"),
            ForecastConfigError::ServiceLevel { scope: "default".into(), value: 1.0 }
        );
        assert_eq!(bad("lead_time_days = 0"), ForecastConfigError::LeadTime { scope: "default".into(), value: 0 });
        assert_eq!(
            bad("[sites.wh1]\norder_cycle_days = 400"),
            ForecastConfigError::OrderCycle { scope: "sites.wh1".into(), value: 400 }
        );
        assert_eq!(
            bad("[sites.wh1.skus.A]\nservice_level = 0.2"),
            ForecastConfigError::ServiceLevel { scope: "sites.wh1.skus.A".into(), value: 0.2 }
        );
        assert_eq!(
            bad("[skus.A]\nlead_time_days = 366"),
            ForecastConfigError::LeadTime { scope: "skus.A".into(), value: 366 }
        );
        assert!(matches!(bad("[sites.\"no such site!\"]\nlead_time_days = 3"), ForecastConfigError::Site { .. }));
        assert!(matches!(bad("[skus.\"\"]\nlead_time_days = 3"), ForecastConfigError::Sku { .. }));
        // Through the hub config loader: the message names the problem; unknown keys are refused.
        let e = parse("[forecast]\nservice_level = 2").unwrap_err();
        assert!(e.contains("service_level 2 is not in"), "{e}");
        let e = parse("[forecast]\nlead_time = 2").unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        let e = parse("[forecast.sites.wh1]\nbogus = 2").unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn hub_config_loads_and_refuses_the_section() {
        let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/hub.example.toml");
        let cfg = crate::HubConfig::load(&example).unwrap();
        assert_eq!(cfg.forecast, ForecastConfig::default());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, "tenant = \"acme\"\n[forecast.skus.A]\nlead_time_days = 0\n").unwrap();
        let e = crate::HubConfig::load(&path).unwrap_err().to_string();
        let source = std::error::Error::source(&crate::HubConfig::load(&path).unwrap_err()).map(|s| s.to_string());
        let all = format!("{e} {source:?}");
        assert!(all.contains("forecast skus.A: lead_time_days 0 is not in 1..=365"), "{all}");
    }

    #[test]
    fn too_many_overrides_are_refused() {
        let mut cfg = ForecastConfig::default();
        for i in 0..=SITE_OVERRIDES_MAX {
            cfg.sites.insert(format!("wh{i}"), SiteOverride::default());
        }
        assert!(matches!(cfg.validate(), Err(ForecastConfigError::TooMany { what: "site", .. })));
    }
}
