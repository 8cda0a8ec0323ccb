//! The `easypost` carrier: a real HTTP adapter for an EasyPost-style label API (shipments with rates, buy,
//! refund; the label as a URL to fetch). The label outbox ([`crate::labels`]) is its only caller, and every
//! call is bounded: one time budget per HTTP call (`label_timeout_ms`), and every body read with a ceiling
//! before it is kept ([`JSON_BYTES_MAX`], [`crate::store::LABEL_BYTES_MAX`]).
//!
//! The API shape, under `base_url` (HTTP basic auth, the API key as the user name, as EasyPost does):
//! - `GET  /shipments?reference=R` → `{"shipments": [Shipment]}`: the shipments made under a reference;
//! - `POST /shipments` `{"shipment": {"reference", "service", "parcels": [...]}}` → `Shipment` with `rates`;
//! - `POST /shipments/{id}/buy` `{"rate": {"id"}}` → `Shipment` with `tracking_code` and `postage_label`;
//! - `POST /shipments/{id}/refund` → `Shipment` with `refund_status` (the label is voided);
//! - `GET  postage_label.label_url` → the label document (ZPL or PDF).
//!
//! Why the adapter never buys twice: the consignment id is the shipment's `reference` and the POSTs'
//! `Idempotency-Key`; and before it creates or buys anything, [`EasyPost::buy_label`] looks the reference up.
//! A shipment already bought (not refunded) is answered as found; one created but not bought is bought,
//! not created again. So a purchase whose answer was lost (a timeout, a 500 after the carrier committed, the
//! node killed mid-call) is found by the retry, whatever the carrier does with idempotency keys.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::carrier::{BoughtLabel, Carrier, CarrierError, LabelRequest};
use crate::store::{LABEL_BYTES_MAX, LabelDoc};

/// Largest JSON answer read from the carrier, bytes.
pub const JSON_BYTES_MAX: usize = 256 * 1024;
/// Shipments read per reference lookup, at most (a reference names one consignment: a handful at most).
const LOOKUP_MAX: usize = 20;
/// Longest API key accepted from the file or the environment, bytes.
const API_KEY_BYTES_MAX: usize = 512;

/// The `easypost` adapter: a client with its time budget, the API's base URL and key.
#[derive(Clone)]
pub struct EasyPost {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl std::fmt::Debug for EasyPost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("EasyPost").field("base", &self.base).finish_non_exhaustive()
    }
}

/// A shipment as the API answers it (fields the adapter reads; the rest is ignored).
#[derive(Debug, Clone, Deserialize)]
struct Shipment {
    id: String,
    #[serde(default)]
    reference: Option<String>,
    #[serde(default)]
    rates: Vec<Rate>,
    #[serde(default)]
    tracking_code: Option<String>,
    #[serde(default)]
    postage_label: Option<PostageLabel>,
    #[serde(default)]
    refund_status: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Rate {
    id: String,
    service: String,
}

#[derive(Debug, Clone, Deserialize)]
struct PostageLabel {
    label_url: String,
    #[serde(default)]
    label_file_type: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ShipmentList {
    #[serde(default)]
    shipments: Vec<Shipment>,
}

impl Shipment {
    fn bought(&self) -> bool {
        self.tracking_code.is_some() && self.postage_label.is_some() && self.refund_status.is_none()
    }
}

/// Reads the API key: the first line of `file`, else the environment variable `env`.
pub fn read_api_key(file: Option<&std::path::Path>, env: Option<&str>) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let key = match (file, env) {
        (Some(f), _) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the carrier's API key file {}", f.display()))?,
        (None, Some(v)) => std::env::var(v).with_context(|| format!("the environment has no {v} (carrier API key)"))?,
        (None, None) => anyhow::bail!("[carrier] kind = \"easypost\" needs api_key_file or api_key_env"),
    };
    let key = key.lines().next().unwrap_or_default().trim().to_owned();
    anyhow::ensure!(!key.is_empty(), "the carrier's API key is empty");
    anyhow::ensure!(key.len() <= API_KEY_BYTES_MAX, "the carrier's API key is longer than {API_KEY_BYTES_MAX} bytes");
    Ok(key)
}

impl EasyPost {
    /// The adapter for the API at `base_url` (`http` or `https`), each HTTP call within `timeout`.
    pub fn new(base_url: &str, key: String, timeout: Duration) -> anyhow::Result<Self> {
        let url = url::Url::parse(base_url).map_err(|e| anyhow::anyhow!("[carrier] base_url {base_url:?}: {e}"))?;
        anyhow::ensure!(
            matches!(url.scheme(), "http" | "https"),
            "[carrier] base_url {base_url:?} must be http or https"
        );
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("oms-node/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(EasyPost { http, base: base_url.trim_end_matches('/').to_owned(), key })
    }

    /// Sends `req` and reads the answer's body, at most `max` bytes. A transport failure, a timeout, a 5xx,
    /// a 429 or an auth refusal is `Unreachable` (retry later); another 4xx is `Rejected`.
    async fn send(&self, req: reqwest::RequestBuilder, max: usize) -> Result<(Option<String>, Vec<u8>), CarrierError> {
        let mut resp = req
            .basic_auth(&self.key, Some(""))
            .send()
            .await
            .map_err(|e| CarrierError::Unreachable(format!("easypost: {e}")))?;
        let status = resp.status();
        let ct = resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(CarrierError::Rejected(format!("easypost: an answer larger than {max} bytes")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| CarrierError::Unreachable(format!("easypost: {e}")))? {
            if body.len() + chunk.len() > max {
                return Err(CarrierError::Rejected(format!("easypost: an answer larger than {max} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return Ok((ct, body));
        }
        let detail = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        let msg = format!("easypost: HTTP {status}: {detail}");
        if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 401 || status.as_u16() == 403 {
            Err(CarrierError::Unreachable(msg))
        } else {
            Err(CarrierError::Rejected(msg))
        }
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T, CarrierError> {
        let (_, body) = self.send(req, JSON_BYTES_MAX).await?;
        serde_json::from_slice(&body)
            .map_err(|e| CarrierError::Unreachable(format!("easypost: unreadable answer: {e}")))
    }

    /// The shipments made under `reference`, the newest last as the API lists them.
    async fn shipments(&self, reference: &str) -> Result<Vec<Shipment>, CarrierError> {
        let req = self.http.get(format!("{}/shipments", self.base)).query(&[("reference", reference)]);
        let mut list: ShipmentList = self.json(req).await?;
        list.shipments.retain(|s| s.reference.as_deref() == Some(reference));
        list.shipments.truncate(LOOKUP_MAX);
        Ok(list.shipments)
    }

    /// The label of a bought shipment: its document fetched from `label_url`.
    async fn label(&self, s: &Shipment) -> Result<BoughtLabel, CarrierError> {
        let (Some(tracking), Some(pl)) = (&s.tracking_code, &s.postage_label) else {
            return Err(CarrierError::Unreachable(format!("easypost: shipment {} has no label yet", s.id)));
        };
        let (ct, body) = self.send(self.http.get(&pl.label_url), LABEL_BYTES_MAX).await?;
        let content_type = match pl.label_file_type.as_deref().or(ct.as_deref()) {
            Some(t) if t.eq_ignore_ascii_case("zpl") => "application/zpl".to_owned(),
            Some(t) if t.eq_ignore_ascii_case("pdf") => "application/pdf".to_owned(),
            Some(t) if t.contains('/') && t.len() <= 100 => t.to_owned(),
            _ => "application/octet-stream".to_owned(),
        };
        Ok(BoughtLabel { tracking: tracking.clone(), doc: LabelDoc { content_type, body } })
    }
}

impl Carrier for EasyPost {
    async fn find_label(&self, reference: &str) -> Result<Option<BoughtLabel>, CarrierError> {
        let found = self.shipments(reference).await?.into_iter().find(Shipment::bought);
        match found {
            Some(s) => self.label(&s).await.map(Some),
            None => Ok(None),
        }
    }

    async fn buy_label(&self, req: &LabelRequest) -> Result<BoughtLabel, CarrierError> {
        let existing = self.shipments(&req.reference).await?;
        if let Some(s) = existing.iter().find(|s| s.bought()) {
            return self.label(s).await;
        }
        // A shipment created earlier and not bought (nor refunded) is bought; otherwise one is created.
        let shipment = match existing.into_iter().find(|s| s.refund_status.is_none()) {
            Some(s) => s,
            None => {
                let parcels: Vec<_> = req
                    .parcels
                    .iter()
                    .map(|p| {
                        json!({"weight_g": p.weight_g, "length_mm": p.length_mm, "width_mm": p.width_mm,
                               "height_mm": p.height_mm})
                    })
                    .collect();
                let body = json!({"shipment": {"reference": req.reference, "service": req.service,
                                               "parcels": parcels, "options": {"label_format": "ZPL"}}});
                let r = self
                    .http
                    .post(format!("{}/shipments", self.base))
                    .header("Idempotency-Key", &req.reference)
                    .json(&body);
                self.json(r).await?
            }
        };
        let Some(rate) = shipment.rates.iter().find(|r| r.service == req.service) else {
            return Err(CarrierError::Rejected(format!("easypost: no rate for service {:?}", req.service)));
        };
        let r = self
            .http
            .post(format!("{}/shipments/{}/buy", self.base, shipment.id))
            .header("Idempotency-Key", format!("{}:buy", req.reference))
            .json(&json!({"rate": {"id": rate.id}}));
        let bought: Shipment = self.json(r).await?;
        self.label(&bought).await
    }

    async fn void_label(&self, reference: &str) -> Result<(), CarrierError> {
        for s in self.shipments(reference).await?.iter().filter(|s| s.bought()) {
            let r = self
                .http
                .post(format!("{}/shipments/{}/refund", self.base, s.id))
                .header("Idempotency-Key", format!("{reference}:refund"));
            let _: Shipment = self.json(r).await?;
        }
        Ok(())
    }
}
