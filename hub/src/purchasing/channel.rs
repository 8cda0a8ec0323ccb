//! Sending purchase orders to suppliers: the outbox pass and the [`SupplierChannel`]s.
//!
//! `POST /v1/purchase-orders/{id}/send` commits the order's new state and an outbox row (table
//! `purchase_order_sends`) with the idempotency key `po-send-<po>` in one transaction, **before** any call.
//! The pass ([`run`]) takes the due open rows, renders each order ([`PoDocument`]), hands it to the
//! supplier's channel with the row's key, and commits the outcome: `delivered`, or a retry after
//! `retry_backoff_ms` doubled per attempt (at most 64×), or `failed` after `retries_max` attempts (the
//! order's `send_status` shows it). A hub that dies between a call and its commit calls again with the
//! same key; the receiver deduplicates on it (the folder channel rewrites the same files). An order cancelled
//! before its sending went out is `withdrawn`, never sent.
//!
//! - [`FolderChannel`]: the email/EDI stand-in. Writes `<po>.json` and `<po>.csv` into the configured
//!   folder, each through a temporary file, fsync and rename, so a reader never sees half a file.
//! - [`WebhookChannel`]: `POST`s the JSON to the supplier's URL with `Idempotency-Key` and
//!   `X-Oms-Signature` (HMAC-SHA256 of `t.body` under the supplier's secret, the same scheme as the event
//!   webhooks, [`crate::events::webhooks::signature_header`]); a 2xx is delivered, anything else is retried.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use oms_service::now_ms;
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::Serialize;

use super::model::{ChannelSpec, PurchaseOrder, Supplier};
use super::store::{PO_SENDS, PO_SENDS_OPEN, SendRow};
use super::{Purchasing, PurchasingError};
use crate::server::Hub;

/// The outcome of a row whose order was cancelled before it went out.
const WITHDRAWN: &str = "withdrawn";
/// Rows handled per pass.
pub const SENDS_PER_PASS_MAX: usize = 64;
/// How often the pass looks for work, ms.
pub const POLL_MS: u64 = 200;

/// What a supplier receives: the order, its supplier's codes and the amounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoDocument {
    /// The order.
    pub purchase_order: String,
    /// The idempotency key of this sending (the same on every attempt).
    pub idempotency_key: String,
    /// Supplier id and name.
    pub supplier: String,
    /// Supplier name.
    pub supplier_name: String,
    /// Ship to.
    pub site: String,
    /// Currency.
    pub currency: String,
    /// Expected arrival.
    pub expected_date: String,
    /// Lines.
    pub lines: Vec<DocLine>,
    /// Sum of the lines, minor units.
    pub total_minor: u64,
}

/// One line of a [`PoDocument`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DocLine {
    /// Line number.
    pub line: u32,
    /// Our SKU.
    pub sku: String,
    /// The supplier's code.
    pub supplier_sku: String,
    /// Units.
    pub qty: u64,
    /// Unit cost, minor units.
    pub cost_minor: u64,
    /// `qty × cost_minor`.
    pub amount_minor: u64,
}

impl PoDocument {
    /// The document of `po` to `supplier`, sent with `key`.
    pub fn of(po: &PurchaseOrder, supplier: &Supplier, key: &str) -> PoDocument {
        PoDocument {
            purchase_order: po.id.to_string(),
            idempotency_key: key.to_owned(),
            supplier: supplier.id.to_string(),
            supplier_name: supplier.name.clone(),
            site: po.site.to_string(),
            currency: po.currency.to_string(),
            expected_date: crate::demand::iso_date(po.expected_day),
            lines: po
                .lines
                .iter()
                .map(|l| DocLine {
                    line: l.line,
                    sku: l.sku.to_string(),
                    supplier_sku: l.supplier_sku.clone(),
                    qty: l.ordered,
                    cost_minor: l.cost_minor,
                    amount_minor: l.ordered.saturating_mul(l.cost_minor),
                })
                .collect(),
            total_minor: po.total_minor(),
        }
    }

    /// The CSV rendering: one row per line.
    pub fn csv(&self) -> Result<Vec<u8>, String> {
        let mut w = csv::Writer::from_writer(Vec::new());
        let header = [
            "purchase_order",
            "supplier",
            "site",
            "currency",
            "expected_date",
            "line",
            "sku",
            "supplier_sku",
            "qty",
            "cost_minor",
            "amount_minor",
        ];
        w.write_record(header).map_err(|e| e.to_string())?;
        for l in &self.lines {
            w.write_record([
                self.purchase_order.as_str(),
                self.supplier.as_str(),
                self.site.as_str(),
                self.currency.as_str(),
                self.expected_date.as_str(),
                &l.line.to_string(),
                &l.sku,
                &l.supplier_sku,
                &l.qty.to_string(),
                &l.cost_minor.to_string(),
                &l.amount_minor.to_string(),
            ])
            .map_err(|e| e.to_string())?;
        }
        w.into_inner().map_err(|e| e.to_string())
    }
}

/// A boxed future of a channel's answer.
pub type Sending<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// How a purchase order reaches a supplier. Every call carries the row's idempotency key and must be safe to
/// repeat with it.
pub trait SupplierChannel: Send + Sync {
    /// Delivers `doc`; `Err` is retried later with the same key.
    fn send<'a>(&'a self, doc: &'a PoDocument, key: &'a str) -> Sending<'a>;
}

/// The email/EDI stand-in: `<po>.json` and `<po>.csv` in a folder.
#[derive(Debug, Clone)]
pub struct FolderChannel {
    /// The folder.
    pub dir: PathBuf,
}

/// Writes `bytes` to `path` durably: a temporary file beside it, fsync, rename, fsync of the folder.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

impl SupplierChannel for FolderChannel {
    fn send<'a>(&'a self, doc: &'a PoDocument, _key: &'a str) -> Sending<'a> {
        Box::pin(async move {
            let json = serde_json::to_vec_pretty(doc).map_err(|e| e.to_string())?;
            let csv = doc.csv()?;
            let (dir, po) = (self.dir.clone(), doc.purchase_order.clone());
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                write_durably(&dir.join(format!("{po}.json")), &json)?;
                write_durably(&dir.join(format!("{po}.csv")), &csv)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot write the order into the folder: {e}"))
        })
    }
}

/// A signed `POST` to the supplier's URL.
#[derive(Debug, Clone)]
pub struct WebhookChannel {
    /// The client (timeouts, no redirects).
    pub client: reqwest::Client,
    /// Where.
    pub url: String,
    /// The signing secret.
    pub secret: String,
}

impl SupplierChannel for WebhookChannel {
    fn send<'a>(&'a self, doc: &'a PoDocument, key: &'a str) -> Sending<'a> {
        Box::pin(async move {
            let body = serde_json::to_vec(doc).map_err(|e| e.to_string())?;
            let t = now_ms() / 1_000;
            let signature = crate::events::webhooks::signature_header(&self.secret, t, &body);
            let resp = self
                .client
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("Idempotency-Key", key)
                .header("X-Oms-Signature", signature)
                .body(body)
                .send()
                .await
                .map_err(|e| format!("supplier webhook unreachable: {e}"))?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(format!("supplier webhook answered {}", resp.status()))
            }
        })
    }
}

/// The channel of `supplier` under `cfg`.
fn channel_of(supplier: &Supplier, folder: &Path, client: &reqwest::Client) -> Box<dyn SupplierChannel> {
    match (&supplier.channel, &supplier.webhook_secret) {
        (ChannelSpec::Webhook { url }, Some(secret)) => {
            Box::new(WebhookChannel { client: client.clone(), url: url.clone(), secret: secret.clone() })
        }
        _ => Box::new(FolderChannel { dir: folder.to_path_buf() }),
    }
}

impl Purchasing {
    /// The due open rows, oldest first, at most [`SENDS_PER_PASS_MAX`], with their orders and suppliers.
    fn due(&self, db: &Database, now: u64) -> Result<Vec<(SendRow, PurchaseOrder, Option<Supplier>)>, PurchasingError> {
        let r = db.begin_read()?;
        let rows = r.open_table(PO_SENDS)?;
        let mut out = Vec::new();
        for item in r.open_table(PO_SENDS_OPEN)?.iter()? {
            if out.len() >= SENDS_PER_PASS_MAX {
                break;
            }
            let id = item?.0.value();
            let Some(v) = rows.get(id)? else { continue };
            let row: SendRow = serde_json::from_slice(v.value())
                .map_err(|e| PurchasingError::Corrupt { table: "purchase_order_sends", detail: e.to_string() })?;
            if row.next_at_ms > now {
                continue;
            }
            let Some(po) = self.po(db, row.po.as_str())? else { continue };
            let supplier = self.supplier(db, po.supplier.as_str())?;
            out.push((row, po, supplier));
        }
        Ok(out)
    }

    /// Commits what a call did to `row` (and its order's `send_status`).
    fn settle_send(
        &self,
        db: &Database,
        mut row: SendRow,
        outcome: Result<(), String>,
        now: u64,
    ) -> Result<(), PurchasingError> {
        match outcome {
            Ok(()) => {
                row.status = "delivered".into();
                row.last_error = None;
            }
            Err(e) if e == WITHDRAWN => row.status = WITHDRAWN.into(),
            Err(e) => {
                row.attempts += 1;
                row.last_error = Some(crate::events::webhooks::cut_error(e));
                if row.attempts > self.cfg.retries_max {
                    row.status = "failed".into();
                } else {
                    let backoff = self.cfg.retry_backoff_ms.saturating_mul(1u64 << row.attempts.min(6));
                    row.next_at_ms = now.saturating_add(backoff);
                }
            }
        }
        let w = db.begin_write()?;
        w.open_table(PO_SENDS)?.insert(row.id, super::store::enc(&row)?.as_slice())?;
        if row.status != "pending" {
            w.open_table(PO_SENDS_OPEN)?.remove(row.id)?;
            self.set_send_status(&w, row.po.as_str(), &row.status)?;
        }
        w.commit()?;
        Ok(())
    }

    /// One pass: every due row called once and its outcome committed. Returns the rows handled.
    pub async fn send_pass(&self, db: Arc<dyn crate::events::webhooks::DbSource>, client: &reqwest::Client) -> usize {
        let now = now_ms();
        let d = db.clone();
        let this = self.clone();
        let due = match tokio::task::spawn_blocking(move || this.due(d.db(), now)).await {
            Ok(Ok(due)) => due,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "purchase orders: cannot read the outbox");
                return 0;
            }
            Err(e) => {
                tracing::error!(error = %e, "purchase orders: the outbox read failed");
                return 0;
            }
        };
        let n = due.len();
        for (row, po, supplier) in due {
            let outcome = match &supplier {
                // Cancelled before it went out: withdrawn, never sent.
                _ if po.state == super::model::PoState::Cancelled => Err(WITHDRAWN.to_owned()),
                Some(s) => {
                    let doc = PoDocument::of(&po, s, &row.key);
                    channel_of(s, &self.folder(), client).send(&doc, &row.key).await
                }
                None => Err(format!("supplier {} is gone", po.supplier)),
            };
            if let Err(e) = &outcome
                && e != WITHDRAWN
            {
                tracing::warn!(po = %po.id, error = %e, "purchase order not delivered; retried");
            }
            let (d, this) = (db.clone(), self.clone());
            let r = tokio::task::spawn_blocking(move || this.settle_send(d.db(), row, outcome, now_ms())).await;
            if !matches!(r, Ok(Ok(()))) {
                tracing::warn!("purchase orders: cannot record a sending's outcome; it is sent again");
            }
        }
        n
    }
}

/// The outbox loop of a running hub.
pub async fn run(hub: Arc<Hub>) {
    let p = hub.purchasing.clone();
    let client = match p.client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the suppliers' HTTP client; purchase orders are not sent");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(POLL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let db: Arc<dyn crate::events::webhooks::DbSource> = hub;
    loop {
        tick.tick().await;
        p.send_pass(db.clone(), &client).await;
    }
}
