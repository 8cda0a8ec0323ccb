//! Carrier adapters behind the [`Carrier`] trait: `manual` (the site prints its own slip; staff enter the
//! carrier's tracking at ship) and `test`, a fault-injecting carrier for tests and the demo that keeps its
//! labels in a directory outside the node, so they survive the node being killed. The label outbox
//! ([`crate::labels`]) is the only caller.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::{LabelDoc, Parcel};

/// The `[carrier]` section: which adapter buys this site's labels.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CarrierConfig {
    /// The adapter.
    pub kind: CarrierKind,
    /// The test carrier's directory (`kind = "test"` only; see [`TestCarrier`]).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// The label API's base URL (`kind = "easypost"` only), e.g. `https://api.easypost.com/v2`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// A file whose first line is the label API's key (`kind = "easypost"`; wins over `api_key_env`).
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// The environment variable holding the label API's key (`kind = "easypost"`).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The service used when staff name none at pack.
    pub default_service: String,
    /// The services staff may choose; empty means only `default_service`.
    #[serde(default)]
    pub services: Vec<String>,
    /// Time budget of one label call (lookup and purchase), ms; with `easypost`, also of each HTTP call.
    #[serde(default = "default_label_timeout_ms")]
    pub label_timeout_ms: u64,
    /// How often the label outbox looks for consignments due, ms.
    #[serde(default = "default_label_poll_ms")]
    pub label_poll_ms: u64,
}

fn default_label_timeout_ms() -> u64 {
    10_000
}
fn default_label_poll_ms() -> u64 {
    200
}

/// The adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CarrierKind {
    /// No carrier API: the node makes a plain label naming the consignment; staff enter the tracking at ship.
    Manual,
    /// The fault-injecting test carrier keeping its labels in `dir` (see [`TestCarrier`]).
    Test,
    /// An EasyPost-style label API over HTTP at `base_url` (see [`crate::easypost`]).
    Easypost,
}

impl CarrierConfig {
    /// The carrier's name on consignments.
    pub fn name(&self) -> &'static str {
        match self.kind {
            CarrierKind::Manual => "manual",
            CarrierKind::Test => "test",
            CarrierKind::Easypost => "easypost",
        }
    }

    /// Whether staff may choose `service`.
    pub fn offers(&self, service: &str) -> bool {
        service == self.default_service || self.services.iter().any(|s| s == service)
    }
}

/// What a label purchase names.
#[derive(Debug, Clone)]
pub struct LabelRequest {
    /// The consignment id: the carrier's reference and idempotency key.
    pub reference: String,
    /// The service.
    pub service: String,
    /// The parcels.
    pub parcels: Vec<Parcel>,
}

/// A label the carrier answered.
#[derive(Debug, Clone)]
pub struct BoughtLabel {
    /// Tracking number.
    pub tracking: String,
    /// The document.
    pub doc: LabelDoc,
}

/// Why a carrier call failed.
#[derive(Debug, thiserror::Error)]
pub enum CarrierError {
    /// The carrier could not be reached or did not answer (retry later; the label may have been bought).
    #[error("carrier unreachable: {0}")]
    Unreachable(String),
    /// The carrier refused the consignment; retrying will not help.
    #[error("carrier refused the consignment: {0}")]
    Rejected(String),
}

/// A carrier's label API. Every implementation must let [`Carrier::find_label`] find a label bought with the
/// same reference, so a purchase whose answer was lost is found instead of bought again.
pub trait Carrier: Send + Sync + 'static {
    /// The label bought earlier under `reference`, if any.
    fn find_label(&self, reference: &str) -> impl Future<Output = Result<Option<BoughtLabel>, CarrierError>> + Send;
    /// Buys a label.
    fn buy_label(&self, req: &LabelRequest) -> impl Future<Output = Result<BoughtLabel, CarrierError>> + Send;
    /// Voids (refunds) the label bought under `reference`; voiding one already void, or none, is no error.
    fn void_label(&self, reference: &str) -> impl Future<Output = Result<(), CarrierError>> + Send;
}

/// The `manual` carrier: a plain-text label naming the consignment; no call leaves the site.
#[derive(Debug, Clone, Copy, Default)]
pub struct Manual;

impl Carrier for Manual {
    async fn find_label(&self, _: &str) -> Result<Option<BoughtLabel>, CarrierError> {
        Ok(None)
    }

    async fn buy_label(&self, req: &LabelRequest) -> Result<BoughtLabel, CarrierError> {
        let body = format!("CONSIGNMENT {}\nSERVICE {}\nPARCELS {}\n", req.reference, req.service, req.parcels.len());
        Ok(BoughtLabel {
            tracking: req.reference.clone(),
            doc: LabelDoc { content_type: "text/plain".into(), body: body.into_bytes() },
        })
    }

    async fn void_label(&self, _: &str) -> Result<(), CarrierError> {
        Ok(())
    }
}

/// The fault-injecting test carrier. Its directory holds `labels/<reference>` (the labels it sold),
/// `purchases.log` (one line `<reference> <tracking>` per purchase, so a second purchase of one reference is
/// visible), `voids.log` (one line `<reference>` per void) and optionally `fault`, read at every call:
/// - `unreachable`: every call fails as if the network were down;
/// - `timeout_after_buy`: a purchase is made, then the answer is lost (the call fails);
/// - `hang_after_buy`: a purchase is made, then the call never answers (the node may be killed meanwhile);
/// - `hang`: every call hangs before doing anything;
/// - `reject`: purchases are refused for good.
#[derive(Debug, Clone)]
pub struct TestCarrier {
    dir: PathBuf,
}

/// The faults of [`TestCarrier`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Unreachable,
    TimeoutAfterBuy,
    HangAfterBuy,
    Hang,
    Reject,
}

/// How long a hanging test call sleeps: longer than any label time budget.
const HANG: Duration = Duration::from_secs(3_600);

impl TestCarrier {
    /// The test carrier keeping its state in `dir` (created if missing).
    pub fn new(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join("labels"))?;
        Ok(TestCarrier { dir })
    }

    async fn fault(&self) -> Fault {
        match tokio::fs::read_to_string(self.dir.join("fault")).await.as_deref().map(str::trim) {
            Ok("unreachable") => Fault::Unreachable,
            Ok("timeout_after_buy") => Fault::TimeoutAfterBuy,
            Ok("hang_after_buy") => Fault::HangAfterBuy,
            Ok("hang") => Fault::Hang,
            Ok("reject") => Fault::Reject,
            _ => Fault::None,
        }
    }

    fn label_path(&self, reference: &str) -> Result<PathBuf, CarrierError> {
        let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.';
        if reference.is_empty() || reference.starts_with('.') || !reference.bytes().all(plain) {
            return Err(CarrierError::Rejected(format!("reference {reference:?} is not a plain name")));
        }
        Ok(self.dir.join("labels").join(reference))
    }

    async fn before_call(&self) -> Result<Fault, CarrierError> {
        let f = self.fault().await;
        match f {
            Fault::Unreachable => Err(CarrierError::Unreachable("test carrier: fault unreachable".into())),
            Fault::Hang => {
                tokio::time::sleep(HANG).await;
                Err(CarrierError::Unreachable("test carrier: hung".into()))
            }
            _ => Ok(f),
        }
    }
}

fn io(e: std::io::Error) -> CarrierError {
    CarrierError::Unreachable(format!("test carrier: {e}"))
}

impl Carrier for TestCarrier {
    async fn find_label(&self, reference: &str) -> Result<Option<BoughtLabel>, CarrierError> {
        self.before_call().await?;
        let path = self.label_path(reference)?;
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => {
                let tracking = text.lines().next().unwrap_or_default().to_owned();
                Ok(Some(BoughtLabel {
                    tracking,
                    doc: LabelDoc { content_type: "application/zpl".into(), body: text.into_bytes() },
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    async fn buy_label(&self, req: &LabelRequest) -> Result<BoughtLabel, CarrierError> {
        let fault = self.before_call().await?;
        if fault == Fault::Reject {
            return Err(CarrierError::Rejected("test carrier: fault reject".into()));
        }
        let path = self.label_path(&req.reference)?;
        let log_path = self.dir.join("purchases.log");
        let earlier = match tokio::fs::read_to_string(&log_path).await {
            Ok(log) => log.lines().filter(|l| l.split(' ').next() == Some(req.reference.as_str())).count(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io(e)),
        };
        let tracking = format!("TST-{}-{}", req.reference, earlier + 1);
        let text = format!(
            "{tracking}\n^XA^FO50,50^FD{} {} {} parcel(s)^FS^XZ\n",
            req.reference,
            req.service,
            req.parcels.len()
        );
        let tmp = path.with_extension("tmp");
        tokio::fs::write(&tmp, &text).await.map_err(io)?;
        tokio::fs::rename(&tmp, &path).await.map_err(io)?;
        let mut log = tokio::fs::OpenOptions::new().create(true).append(true).open(&log_path).await.map_err(io)?;
        tokio::io::AsyncWriteExt::write_all(&mut log, format!("{} {tracking}\n", req.reference).as_bytes())
            .await
            .map_err(io)?;
        match fault {
            Fault::TimeoutAfterBuy => Err(CarrierError::Unreachable("test carrier: answer lost after purchase".into())),
            Fault::HangAfterBuy => {
                tokio::time::sleep(HANG).await;
                Err(CarrierError::Unreachable("test carrier: hung after purchase".into()))
            }
            _ => Ok(BoughtLabel {
                tracking,
                doc: LabelDoc { content_type: "application/zpl".into(), body: text.into_bytes() },
            }),
        }
    }

    async fn void_label(&self, reference: &str) -> Result<(), CarrierError> {
        self.before_call().await?;
        self.label_path(reference)?;
        let mut log = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("voids.log"))
            .await
            .map_err(io)?;
        tokio::io::AsyncWriteExt::write_all(&mut log, format!("{reference}\n").as_bytes()).await.map_err(io)
    }
}

/// Purchases per reference in a test carrier's `purchases.log` in `dir`: (labels bought, references bought
/// more than once). For tests and the demo's summary.
pub fn test_purchases(dir: &std::path::Path) -> std::io::Result<(u64, u64)> {
    let log = match std::fs::read_to_string(dir.join("purchases.log")) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(e),
    };
    let mut per: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for l in log.lines() {
        *per.entry(l.split(' ').next().unwrap_or_default()).or_default() += 1;
    }
    Ok((per.values().sum(), per.values().filter(|n| **n > 1).count() as u64))
}
