//! A reference webhook receiver: what an integrator's endpoint does, and what the demo and the tests run on
//! loopback. It checks every delivery's signature and timestamp ([`super::webhooks::verify_signature`])
//! against the subscription's secret, refuses a bad one with `401`, deduplicates by `X-Oms-Event-Id`, and
//! can be told to fail its first deliveries (`500`) or to answer slowly, to exercise retries and
//! back-pressure.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use oms_service::{lock, now_ms};

use super::Event;
use super::webhooks::{REPLAY_WINDOW_S, verify_signature};

/// One accepted delivery.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event as posted.
    pub event: Event,
    /// When it arrived, ms since the Unix epoch.
    pub at_ms: u64,
}

#[derive(Debug, Default)]
struct Inner {
    secret: Option<String>,
    /// Deliveries still to fail with `500`.
    fail_next: usize,
    delay_ms: u64,
    accepted: Vec<Delivery>,
    ids: HashSet<String>,
    duplicates: u64,
    refused_signature: u64,
    failed_on_purpose: u64,
}

/// A running receiver; stops when dropped.
#[derive(Debug)]
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a receiver saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Distinct events accepted (after deduplication by id).
    pub unique: u64,
    /// Deliveries of an event already accepted (at-least-once at work).
    pub duplicates: u64,
    /// Deliveries refused for their signature or timestamp.
    pub refused_signature: u64,
    /// Deliveries answered `500` on purpose.
    pub failed_on_purpose: u64,
}

impl Receiver {
    /// Listens on `127.0.0.1` (a free port) at path `/hook`.
    pub async fn start() -> std::io::Result<Receiver> {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Listens on `addr` at path `/hook`.
    pub async fn start_at(addr: SocketAddr) -> std::io::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let inner: Arc<Mutex<Inner>> = Arc::default();
        let app = Router::new().route("/hook", post(receive)).with_state(inner.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "webhook receiver stopped");
            }
        });
        Ok(Receiver { addr, inner, task })
    }

    /// The URL to subscribe.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The subscription's secret (from the answer to its creation): deliveries are checked against it.
    pub fn set_secret(&self, secret: &str) {
        lock(&self.inner).secret = Some(secret.to_owned());
    }

    /// Answers the next `n` deliveries with `500`.
    pub fn fail_next(&self, n: usize) {
        lock(&self.inner).fail_next = n;
    }

    /// Waits `ms` before answering each delivery.
    pub fn set_delay_ms(&self, ms: u64) {
        lock(&self.inner).delay_ms = ms;
    }

    /// The distinct events accepted, in arrival order.
    pub fn events(&self) -> Vec<Delivery> {
        lock(&self.inner).accepted.clone()
    }

    /// The counts so far.
    pub fn tally(&self) -> Tally {
        let i = lock(&self.inner);
        Tally {
            unique: i.accepted.len() as u64,
            duplicates: i.duplicates,
            refused_signature: i.refused_signature,
            failed_on_purpose: i.failed_on_purpose,
        }
    }
}

async fn receive(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let delay = lock(&inner).delay_ms;
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut i = lock(&inner);
    let Some(secret) = i.secret.clone() else { return StatusCode::SERVICE_UNAVAILABLE };
    let sig = headers.get("x-oms-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
    if verify_signature(&secret, sig, &body, now_ms() / 1_000, REPLAY_WINDOW_S).is_err() {
        i.refused_signature += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(event) = serde_json::from_slice::<Event>(&body) else { return StatusCode::BAD_REQUEST };
    let header_id = headers.get("x-oms-event-id").and_then(|v| v.to_str().ok());
    if header_id != Some(event.id.as_str()) {
        return StatusCode::BAD_REQUEST;
    }
    if i.fail_next > 0 {
        i.fail_next -= 1;
        i.failed_on_purpose += 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    if !i.ids.insert(event.id.clone()) {
        i.duplicates += 1;
        return StatusCode::OK;
    }
    i.accepted.push(Delivery { event, at_ms: now_ms() });
    StatusCode::OK
}
