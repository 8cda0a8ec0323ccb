//! Webhooks: subscriptions of a URL to event types, and their delivery from the event log.
//!
//! **Subscriptions** (table `webhooks` in `intake.redb`): made by an admin key (all events, or one channel's
//! with `channel`) or a channel key (its own orders' events only, always). The URL must be `http` or
//! `https`, at most [`URL_BYTES_MAX`] bytes, with a host and without credentials (`user:pass@`) or a
//! fragment. **Private addresses**: unless `[webhooks] allow_private_addresses` (tests, demos, a receiver on
//! the same host), a URL whose host is `localhost` or a loopback, private, link-local, unique-local,
//! unspecified, multicast or documentation address is refused at creation, and every name is resolved at
//! delivery by a resolver that drops such addresses (so a public name pointing inside fails to connect
//! rather than reaching an internal service); redirects are not followed and no proxy is used. Each
//! subscription gets a secret (`whsec_` + 64 hex digits) shown once, in the answer to its creation, and kept
//! in `intake.redb` to sign with. At most `subscriptions_max` subscriptions.
//!
//! **Delivery: a durable outbox as a cursor per subscription over the event log.** An event is in the log
//! only once its change is committed ([`crate::events::append`]), so nothing is delivered before its change
//! is durable; a subscription's cursor (the last sequence delivered or skipped, in its row) moves past an
//! event only after the receiver answered `2xx`. So delivery is **at least once**: a crash between the
//! answer and the cursor's commit delivers the event again, with the same `X-Oms-Event-Id`, which receivers
//! deduplicate by. The cursors the bursts of deliveries moved are written together every [`FLUSH_MS`] in
//! one transaction without fsync (`Durability::None`: a crash costs redeliveries, never a loss); the next
//! durable commit carries them (the intake's, or the loop's checkpoint within a second). A failed attempt
//! is recorded durably at once.
//!
//! **Order: strict per subscription** (one event at a time, in sequence order): this holds order per order
//! id as well, costs nothing to reason about for a receiver, and a receiver that fails one event fails the
//! next ones alike in practice (down, misconfigured, rejecting the signature), so per-order lanes would buy
//! little but complexity. The cost: one failing event holds back that subscription's later ones (never other
//! subscriptions', never intake).
//!
//! **Retries**: a failure (no `2xx` within `timeout_ms`, a connection error) is retried after
//! `backoff_base_ms · 2^(attempt-1)`, at most `backoff_max_ms`, plus up to 50 % random jitter; once the
//! event has been failing for `retry_for_ms` (48 h by default) the subscription turns `failing` and is no
//! longer delivered to; `GET /v1/webhooks` shows why (`last_error`, `attempts`, `failing_since_ms`). An
//! admin deletes and recreates it (with `after` to resume from a sequence still retained).
//!
//! **Bounds**: at most `concurrency_max` subscriptions deliver at once, each request within `timeout_ms`,
//! at most [`BURST_MAX`] events per subscription before others get a turn; the delivery loop only reads the
//! log and writes cursors, so a slow receiver never slows intake.
//!
//! **Signature**: `X-Oms-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//! A receiver recomputes it over the raw body, compares in constant time, and refuses a `t` more than
//! [`REPLAY_WINDOW_S`] (5 minutes) away from its clock, so a captured request cannot be replayed later;
//! within the window, deduplication by event id makes a replay harmless. [`verify_signature`] is the
//! reference implementation.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use oms_protocol::domain::Channel;
use oms_service::audit::{self, AUDIT, Actor};
use oms_service::storage::StorageError;
use oms_service::{lock, now_ms};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{Event, TypeFilter};

/// Subscription id → the JSON of a [`Subscription`].
const WEBHOOKS: TableDefinition<&str, &[u8]> = TableDefinition::new("webhooks");
/// Longest subscription URL, bytes.
pub const URL_BYTES_MAX: usize = 2_048;
/// Most events delivered to one subscription before the loop gives the others a turn.
pub const BURST_MAX: usize = 100;
/// Most log rows looked at to find a subscription's next event (a filter that matches little moves its
/// cursor this far per look).
pub const SCAN_MAX: usize = 1_000;
/// How far a signature's timestamp may be from the receiver's clock, seconds.
pub const REPLAY_WINDOW_S: u64 = 300;
/// Longest error kept for an admin to read, bytes.
const ERROR_BYTES_MAX: usize = 512;
/// How often the delivery loop looks for work, ms.
pub const POLL_MS: u64 = 10;

/// The `[webhooks]` section of the hub's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// How long an event is retried before the subscription turns `failing`, ms (48 h).
    pub retry_for_ms: u64,
    /// First retry delay, ms; doubles per attempt.
    pub backoff_base_ms: u64,
    /// Longest retry delay, ms.
    pub backoff_max_ms: u64,
    /// Time budget of one delivery (connect, send, answer), ms.
    pub timeout_ms: u64,
    /// Subscriptions delivering at once.
    pub concurrency_max: usize,
    /// Subscriptions held.
    pub subscriptions_max: usize,
    /// Whether URLs may point at loopback and private addresses (tests, demos, a receiver on this host).
    pub allow_private_addresses: bool,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            retry_for_ms: 48 * 3_600_000,
            backoff_base_ms: 1_000,
            backoff_max_ms: 3_600_000,
            timeout_ms: 10_000,
            concurrency_max: 16,
            subscriptions_max: 1_000,
            allow_private_addresses: false,
        }
    }
}

impl WebhooksConfig {
    /// Why these values are not usable, if they are not.
    pub fn check(&self) -> Result<(), String> {
        let bad = |what: &str| Err(format!("[webhooks] {what}"));
        if self.backoff_base_ms == 0 || self.backoff_max_ms < self.backoff_base_ms {
            return bad("backoff_base_ms must be at least 1 and backoff_max_ms at least backoff_base_ms");
        }
        if !(100..=120_000).contains(&self.timeout_ms) {
            return bad("timeout_ms must be within 100 ..= 120000");
        }
        if !(1..=256).contains(&self.concurrency_max) {
            return bad("concurrency_max must be within 1 ..= 256");
        }
        if !(1..=100_000).contains(&self.subscriptions_max) {
            return bad("subscriptions_max must be within 1 ..= 100000");
        }
        Ok(())
    }

    /// The delay before retry number `attempt` (from 1), without jitter.
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        let doubled = self.backoff_base_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(40));
        doubled.min(self.backoff_max_ms)
    }
}

/// Whether a subscription is being delivered to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Delivered to (perhaps retrying).
    Active,
    /// Gave up after `retry_for_ms` of failures; not delivered to.
    Failing,
}

/// A subscription as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Subscription {
    /// `wh_` + 16 hex digits.
    pub id: String,
    /// Where events are posted.
    pub url: String,
    /// Which types (empty: all).
    pub types: TypeFilter,
    /// Only this channel's orders' events (always set for a channel key's subscription).
    pub channel: Option<String>,
    /// The signing secret, never shown after creation.
    secret: String,
    /// When it was made.
    pub created_at_ms: u64,
    /// The key that made it.
    pub created_by: String,
    /// The last sequence delivered or skipped.
    pub cursor: u64,
    /// Active or failing.
    pub status: Status,
    /// Failed attempts of the event after the cursor.
    pub attempts: u32,
    /// Since when that event fails.
    pub failing_since_ms: Option<u64>,
    /// Not delivered to before this time (a retry's backoff).
    pub next_attempt_at_ms: u64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Events delivered.
    pub delivered: u64,
}

/// A subscription as the API shows it ([`Subscription::view`]): everything but the secret, which only the
/// answer to its creation carries.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SubscriptionView {
    /// `wh_` + 16 hex digits.
    pub id: String,
    /// Where events are posted.
    pub url: String,
    /// Which types or families (empty: all).
    pub types: Vec<String>,
    /// Only this channel's orders' events.
    pub channel: Option<String>,
    /// When it was made, ms.
    pub created_at_ms: u64,
    /// The key that made it.
    pub created_by: String,
    /// The last sequence delivered or skipped.
    pub cursor: u64,
    /// Active or failing.
    pub status: Status,
    /// Failed attempts of the event after the cursor.
    pub attempts: u32,
    /// Since when that event fails.
    pub failing_since_ms: Option<u64>,
    /// Not delivered to before this time (a retry's backoff).
    pub next_attempt_at_ms: u64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Events delivered.
    pub delivered: u64,
    /// The signing secret: in the answer to `POST /v1/webhooks` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl Subscription {
    /// What a caller may see of it (everything but the secret).
    pub fn view(&self) -> SubscriptionView {
        SubscriptionView {
            id: self.id.clone(),
            url: self.url.clone(),
            types: self.types.0.clone(),
            channel: self.channel.clone(),
            created_at_ms: self.created_at_ms,
            created_by: self.created_by.clone(),
            cursor: self.cursor,
            status: self.status,
            attempts: self.attempts,
            failing_since_ms: self.failing_since_ms,
            next_attempt_at_ms: self.next_attempt_at_ms,
            last_error: self.last_error.clone(),
            delivered: self.delivered,
            secret: None,
        }
    }

    fn confined(&self) -> Option<Channel> {
        self.channel.as_deref().and_then(|c| Channel::parse(c).ok())
    }
}

pub(super) fn init(w: &redb::WriteTransaction) -> Result<(), StorageError> {
    w.open_table(WEBHOOKS).map_err(redb::Error::from)?;
    Ok(())
}

/// Why a subscription URL is refused.
pub fn validate_url(raw: &str, allow_private: bool) -> Result<url::Url, String> {
    if raw.len() > URL_BYTES_MAX {
        return Err(format!("at most {URL_BYTES_MAX} bytes"));
    }
    let u = url::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!("scheme must be http or https, not {:?}", u.scheme()));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("must not hold credentials (user:password@); authenticate the hub by the signature".into());
    }
    if u.fragment().is_some() {
        return Err("must not have a fragment".into());
    }
    let host = match u.host() {
        Some(h) => h,
        None => return Err("must name a host".into()),
    };
    if !allow_private {
        let private = match host {
            url::Host::Domain(d) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                d == "localhost" || d.ends_with(".localhost")
            }
            url::Host::Ipv4(ip) => private_ip(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => private_ip(IpAddr::V6(ip)),
        };
        if private {
            return Err("points at a loopback or private address ([webhooks] allow_private_addresses is off)".into());
        }
    }
    Ok(u)
}

/// Whether `ip` is not a public unicast address: loopback, private, link-local, unique-local,
/// unspecified, multicast, broadcast, documentation, shared (CGN), or an IPv4-mapped one of those.
pub fn private_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return private_ip(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}

/// A fresh subscription secret.
fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("whsec_{}", oms_service::auth::keys::hex(&bytes))
}

/// `X-Oms-Signature` of `body` sent at `t` (unix seconds) under `secret`.
pub fn signature_header(secret: &str, t: u64, body: &[u8]) -> String {
    format!("t={t},v1={}", oms_service::auth::keys::hex(&mac(secret, t, body).finalize().into_bytes()))
}

fn mac(secret: &str, t: u64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// Why a receiver refuses a delivery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header is missing a part or is not `t=<digits>,v1=<hex>`.
    #[error("malformed X-Oms-Signature")]
    Malformed,
    /// The timestamp is outside the replay window.
    #[error("timestamp outside the replay window")]
    Stale,
    /// The signature does not match the body (tampered, or another secret).
    #[error("signature mismatch")]
    Mismatch,
}

/// The reference check of a delivery: `header` (`X-Oms-Signature`) over the raw `body` under `secret`, with
/// the timestamp within `window_s` of `now_s`. Receivers should also deduplicate by `X-Oms-Event-Id`.
pub fn verify_signature(
    secret: &str,
    header: &str,
    body: &[u8],
    now_s: u64,
    window_s: u64,
) -> Result<(), SignatureError> {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<u64>().map_err(|_| SignatureError::Malformed)?),
            Some(("v1", v)) => v1.push(unhex(v).ok_or(SignatureError::Malformed)?),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    if v1.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now_s.abs_diff(t) > window_s {
        return Err(SignatureError::Stale);
    }
    // `verify_slice` compares in constant time. Several v1 values are allowed (a secret being rotated).
    if v1.iter().any(|sig| mac(secret, t, body).verify_slice(sig).is_ok()) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Why a subscription call was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A field is invalid.
    #[error("{field}: {detail}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// Why.
        detail: String,
    },
    /// `subscriptions_max` reached.
    #[error("at most {0} subscriptions")]
    TooMany(usize),
    /// No such subscription (or not the caller's).
    #[error("no webhook {0}")]
    NotFound(String),
    /// Storage failed; nothing was written.
    #[error("storage failure, nothing was written: {0}")]
    Storage(StorageError),
}

oms_service::storage_errors_from_redb!(WebhookError);

fn decode(bytes: &[u8]) -> Result<Subscription, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::encode("reading a webhook", e))
}

fn encode(s: &Subscription) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(s).map_err(|e| StorageError::encode("a webhook", e))
}

/// What a caller asks for in `POST /v1/webhooks`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSubscription {
    /// Where to post.
    pub url: String,
    /// Which types (empty or missing: all).
    #[serde(default)]
    pub types: Vec<String>,
    /// An admin may confine a subscription to one channel's orders.
    #[serde(default)]
    pub channel: Option<String>,
    /// Deliver events after this sequence (default: those committed from now on). Events older than the
    /// retention are gone.
    #[serde(default)]
    pub after: Option<u64>,
}

/// Whether `id` has the shape of a subscription id (checked before any lookup).
pub fn id_well_formed(id: &str) -> bool {
    id.len() == 3 + 16
        && id.starts_with("wh_")
        && id[3..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Makes a subscription for `actor` (`confined_to` for a channel key), with its audit row in the same
/// transaction; returns it with its secret. A refusal writes nothing.
pub fn create(
    db: &redb::Database,
    cfg: &WebhooksConfig,
    new: NewSubscription,
    actor: &Actor,
    confined_to: Option<&Channel>,
    now: u64,
) -> Result<(Subscription, String), WebhookError> {
    let by = actor.key.as_str();
    let invalid = |field, detail: String| WebhookError::Invalid { field, detail };
    let url = validate_url(new.url.trim(), cfg.allow_private_addresses).map_err(|d| invalid("url", d))?;
    let types = TypeFilter::parse(&new.types).map_err(|d| invalid("types", d))?;
    let channel = match (confined_to, new.channel.as_deref()) {
        (Some(own), Some(asked)) if asked != own.as_str() => {
            return Err(invalid("channel", format!("a key of channel {own} subscribes to its own orders only")));
        }
        (Some(own), _) => Some(own.as_str().to_owned()),
        (None, Some(asked)) => {
            Some(Channel::parse(asked).map_err(|e| invalid("channel", e.to_string()))?.as_str().to_owned())
        }
        (None, None) => None,
    };
    let w = db.begin_write()?;
    let last = {
        // The log's last sequence as this transaction sees it: `after` defaults to now.
        let t = w.open_table(super::EVENTS)?;
        t.last()?.map(|(k, _)| k.value()).unwrap_or(0)
    };
    let cursor = new.after.map_or(last, |a| a.min(last));
    let secret = new_secret();
    let id = format!("wh_{}", oms_service::auth::keys::hex(&rand::random::<[u8; 8]>()));
    let sub = Subscription {
        id: id.clone(),
        url: url.to_string(),
        types,
        channel,
        secret: secret.clone(),
        created_at_ms: now,
        created_by: by.to_owned(),
        cursor,
        status: Status::Active,
        attempts: 0,
        failing_since_ms: None,
        next_attempt_at_ms: 0,
        last_error: None,
        delivered: 0,
    };
    {
        let mut t = w.open_table(WEBHOOKS)?;
        if usize::try_from(redb::ReadableTableMetadata::len(&t)?).unwrap_or(usize::MAX) >= cfg.subscriptions_max {
            return Err(WebhookError::TooMany(cfg.subscriptions_max));
        }
        t.insert(id.as_str(), encode(&sub)?.as_slice())?;
    }
    audit::append(&mut w.open_table(AUDIT)?, actor, Some(&id), now, "ok")?;
    w.commit()?;
    Ok((sub, secret))
}

/// The subscriptions a caller may see (a channel key: its channel's), at most `subscriptions_max`.
pub fn list(db: &redb::Database, confined_to: Option<&Channel>, max: usize) -> Result<Vec<Subscription>, StorageError> {
    let r = db.begin_read().map_err(redb::Error::from)?;
    let Some(t) = super::read_table(&r, WEBHOOKS)? else { return Ok(vec![]) };
    let mut out = Vec::new();
    for row in t.range::<&str>(..).map_err(redb::Error::from)?.take(max) {
        let (_, v) = row.map_err(redb::Error::from)?;
        let s = decode(v.value())?;
        if confined_to.is_none_or(|c| s.channel.as_deref() == Some(c.as_str())) {
            out.push(s);
        }
    }
    Ok(out)
}

/// Deletes subscription `id` if the caller may see it, with its audit row in the same transaction.
pub fn delete(
    db: &redb::Database,
    id: &str,
    confined_to: Option<&Channel>,
    actor: &Actor,
    now: u64,
) -> Result<(), WebhookError> {
    let w = db.begin_write()?;
    {
        let mut t = w.open_table(WEBHOOKS)?;
        let found = t.get(id)?.map(|v| decode(v.value())).transpose()?;
        match found {
            Some(s) if confined_to.is_none_or(|c| s.channel.as_deref() == Some(c.as_str())) => {}
            _ => return Err(WebhookError::NotFound(id.to_owned())),
        }
        t.remove(id)?;
    }
    audit::append(&mut w.open_table(AUDIT)?, actor, Some(id), now, "ok")?;
    w.commit()?;
    Ok(())
}

/// Changes subscription `id` with `f` in a transaction of its own (durable or not); `None` if it is gone.
fn update(
    db: &redb::Database,
    id: &str,
    durable: bool,
    f: impl FnOnce(&mut Subscription),
) -> Result<Option<Subscription>, StorageError> {
    let mut w = db.begin_write().map_err(redb::Error::from)?;
    if !durable {
        w.set_durability(redb::Durability::None).map_err(redb::Error::from)?;
    }
    let sub = {
        let mut t = w.open_table(WEBHOOKS).map_err(redb::Error::from)?;
        let found = t.get(id).map_err(redb::Error::from)?.map(|v| decode(v.value())).transpose()?;
        let Some(mut s) = found else { return Ok(None) };
        f(&mut s);
        t.insert(id, encode(&s)?.as_slice()).map_err(redb::Error::from)?;
        s
    };
    w.commit().map_err(redb::Error::from)?;
    Ok(Some(sub))
}

/// A resolver that drops loopback and private addresses (unless allowed), so a public name that resolves
/// inside is not connected to.
struct GuardedResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.filter(|a| allow || !private_ip(a.ip())).collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Deliveries so far, for `/metrics` and the tests.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Events a receiver acknowledged.
    pub delivered: std::sync::atomic::AtomicU64,
    /// Attempts that failed.
    pub failed: std::sync::atomic::AtomicU64,
}

/// The delivery loop: runs until the runtime stops. Also prunes the log every second.
pub async fn run(db: Arc<dyn DbSource>, cfg: WebhooksConfig, events: super::EventsConfig, stats: Arc<DeliveryStats>) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_millis(cfg.timeout_ms))
        .connect_timeout(Duration::from_millis(cfg.timeout_ms))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver { allow_private: cfg.allow_private_addresses }))
        .user_agent(concat!("oms-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhooks' HTTP client; no webhook is delivered");
            return;
        }
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(cfg.concurrency_max));
    let busy: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut tick = tokio::time::interval(Duration::from_millis(POLL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune = 0u64;
    // The subscriptions are listed (decoded) only when there may be work: the log grew, a burst ended or
    // left some waiting, a retry falls due, or a second passed (a new subscription with an `after`).
    let rescan = Arc::new(std::sync::atomic::AtomicBool::new(true));
    // Deliveries acknowledged and not written yet; written together every FLUSH_MS without fsync, and
    // durably by the checkpoint within a second (or by any durable commit of the intake before it).
    let pending: Pending = Arc::default();
    let (mut dirty, mut flushed_at) = (false, 0u64);
    let (mut seen_last, mut listed_at, mut wake_at) = (0u64, 0u64, u64::MAX);
    loop {
        tick.tick().await;
        let now = now_ms();
        let d = db.clone();
        let prune = now.saturating_sub(last_prune) >= 1_000;
        if prune {
            last_prune = now;
        }
        let persist = prune && dirty;
        let write = now.saturating_sub(flushed_at) >= FLUSH_MS;
        if write {
            flushed_at = now;
        }
        let forced = rescan.swap(false, std::sync::atomic::Ordering::Relaxed)
            || now >= wake_at
            || now.saturating_sub(listed_at) >= 1_000;
        // A subscription busy before the listing reads may have moved on since; one idle then cannot have
        // (only this loop starts its bursts), so what the listing reads of it is current.
        let busy_before: HashSet<String> = lock(&busy).clone();
        type Found = (bool, u64, Option<Vec<Subscription>>);
        let p = pending.clone();
        let found = tokio::task::spawn_blocking(move || -> Result<Found, StorageError> {
            let db = d.db();
            // Written before the listing below reads, so a listing never misses a cursor taken out of `p`.
            let wrote = write && flush(db, &p)?;
            if persist {
                checkpoint(db, now)?;
            }
            if prune {
                let cutoff = now.saturating_sub(events.retention_ms);
                super::prune(db, cutoff, events.retained_max)?;
            }
            let last = super::last_seq(db)?;
            if last == seen_last && !forced {
                return Ok((wrote, last, None));
            }
            let mut subs = list(db, None, cfg.subscriptions_max)?;
            let waiting = lock(&p);
            for s in &mut subs {
                if let Some((cursor, _)) = waiting.get(&s.id) {
                    s.cursor = s.cursor.max(*cursor);
                }
            }
            drop(waiting);
            subs.retain(|s| s.status == Status::Active && s.cursor < last);
            Ok((wrote, last, Some(subs)))
        })
        .await;
        let (wrote, last, subs) = match found {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "webhooks: cannot read the subscriptions");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "webhooks: the look for work failed");
                continue;
            }
        };
        if persist {
            dirty = false;
        }
        dirty |= wrote;
        seen_last = last;
        let Some(subs) = subs else { continue };
        listed_at = now;
        wake_at = subs.iter().map(|s| s.next_attempt_at_ms).filter(|t| *t > now).min().unwrap_or(u64::MAX);
        for sub in subs.into_iter().filter(|s| s.next_attempt_at_ms <= now) {
            if busy_before.contains(&sub.id) || lock(&busy).contains(&sub.id) {
                continue;
            }
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                rescan.store(true, std::sync::atomic::Ordering::Relaxed);
                break;
            };
            lock(&busy).insert(sub.id.clone());
            let (db, client, busy, stats, rescan, pending) =
                (db.clone(), client.clone(), busy.clone(), stats.clone(), rescan.clone(), pending.clone());
            tokio::spawn(async move {
                let id = sub.id.clone();
                burst(&db, &client, &cfg, sub, &stats, &pending).await;
                lock(&busy).remove(&id);
                drop(permit);
                rescan.store(true, std::sync::atomic::Ordering::Relaxed);
            });
        }
    }
}

/// `s` cut to at most [`ERROR_BYTES_MAX`] bytes (on a character boundary): an error kept for an admin to read
/// (a delivery's, or a supplier channel's, [`crate::purchasing::channel`]).
pub(crate) fn cut_error(mut s: String) -> String {
    if s.len() > ERROR_BYTES_MAX {
        let mut end = ERROR_BYTES_MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Where the delivery loop finds `intake.redb` (the hub, or a test's database).
pub trait DbSource: Send + Sync + 'static {
    /// The database holding the log and the subscriptions.
    fn db(&self) -> &redb::Database;
}

/// Runs `f` on the database off the async workers; `None` if the task failed (logged).
async fn on_db<T: Send + 'static>(
    db: &Arc<dyn DbSource>,
    f: impl FnOnce(&redb::Database) -> T + Send + 'static,
) -> Option<T> {
    let db = db.clone();
    match tokio::task::spawn_blocking(move || f(db.db())).await {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(error = %e, "webhooks: a database task failed");
            None
        }
    }
}

/// What a burst did, written to the subscription's row in one transaction at its end.
#[derive(Debug)]
struct Outcome {
    /// The last sequence delivered or looked past.
    cursor: u64,
    /// Events delivered.
    delivered: u64,
    /// Why the event after `cursor` failed, if it did.
    failure: Option<String>,
}

/// Deliveries acknowledged and not yet written, per subscription: (cursor, events delivered).
type Pending = Arc<Mutex<std::collections::HashMap<String, (u64, u64)>>>;
/// How often the loop writes what bursts delivered, ms.
pub const FLUSH_MS: u64 = 100;

/// Writes `pending` in one transaction without fsync; whether there was anything.
fn flush(db: &redb::Database, pending: &Pending) -> Result<bool, StorageError> {
    let taken = std::mem::take(&mut *lock(pending));
    if taken.is_empty() {
        return Ok(false);
    }
    let mut w = db.begin_write().map_err(redb::Error::from)?;
    w.set_durability(redb::Durability::None).map_err(redb::Error::from)?;
    {
        let mut t = w.open_table(WEBHOOKS).map_err(redb::Error::from)?;
        for (id, (cursor, delivered)) in taken {
            let found = t.get(id.as_str()).map_err(redb::Error::from)?.map(|v| decode(v.value())).transpose()?;
            // A subscription deleted meanwhile: nothing to keep.
            let Some(mut s) = found else { continue };
            s.cursor = s.cursor.max(cursor);
            s.delivered += delivered;
            t.insert(id.as_str(), encode(&s)?.as_slice()).map_err(redb::Error::from)?;
        }
    }
    w.commit().map_err(redb::Error::from)?;
    Ok(true)
}

/// Delivers up to [`BURST_MAX`] events to `sub` (one read of the log), in order, stopping at the first
/// failure. What went well waits in `pending` for the loop's next write (a crash before it costs
/// redeliveries, never a loss); a failure, or the first success after failures, is written at once (a
/// failure durably: its backoff must survive a restart), with what was pending for the subscription.
async fn burst(
    db: &Arc<dyn DbSource>,
    client: &reqwest::Client,
    cfg: &WebhooksConfig,
    sub: Subscription,
    stats: &DeliveryStats,
    pending: &Pending,
) {
    let out = deliver_some(db, client, &sub, stats).await;
    if out.failure.is_none() && sub.attempts == 0 {
        if out.cursor > sub.cursor || out.delivered > 0 {
            let mut p = lock(pending);
            let e = p.entry(sub.id.clone()).or_insert((0, 0));
            e.0 = e.0.max(out.cursor);
            e.1 += out.delivered;
        }
        return;
    }
    let folded = lock(pending).remove(&sub.id);
    let (id, cfg, now) = (sub.id.clone(), *cfg, now_ms());
    let durable = out.failure.is_some();
    let r = on_db(db, move |d| {
        update(d, &id, durable, |s| {
            if let Some((cursor, delivered)) = folded {
                s.cursor = s.cursor.max(cursor);
                s.delivered += delivered;
            }
            s.cursor = s.cursor.max(out.cursor);
            if out.delivered > 0 {
                s.delivered += out.delivered;
                s.attempts = 0;
                s.failing_since_ms = None;
                s.next_attempt_at_ms = 0;
                s.last_error = None;
            }
            if let Some(why) = out.failure {
                s.attempts = s.attempts.saturating_add(1);
                let since = *s.failing_since_ms.get_or_insert(now);
                let delay = cfg.backoff_ms(s.attempts);
                let jitter = rand::random_range(0..=delay / 2);
                s.next_attempt_at_ms = now.saturating_add(delay).saturating_add(jitter);
                if now.saturating_sub(since) >= cfg.retry_for_ms {
                    s.status = Status::Failing;
                    tracing::warn!(webhook = %s.id, url = %s.url, error = %why,
                        "webhook failing: retried for retry_for_ms; not delivered to any more");
                }
                s.last_error = Some(why);
            }
        })
    })
    .await;
    if let Some(Err(e)) = r {
        tracing::warn!(webhook = %sub.id, error = %e, "webhooks: cannot record deliveries; they will be sent again");
    }
}

async fn deliver_some(
    db: &Arc<dyn DbSource>,
    client: &reqwest::Client,
    sub: &Subscription,
    stats: &DeliveryStats,
) -> Outcome {
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = Outcome { cursor: sub.cursor, delivered: 0, failure: None };
    let (cursor, types, ch) = (sub.cursor, sub.types.clone(), sub.confined());
    let page = match on_db(db, move |d| super::page(d, cursor, BURST_MAX, &types, ch.as_ref(), SCAN_MAX)).await {
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            tracing::warn!(webhook = %sub.id, error = %e, "webhooks: cannot read the log");
            return out;
        }
        None => return out,
    };
    let mut attempt = sub.attempts.saturating_add(1);
    for event in &page.events {
        match post(client, sub, attempt, event).await {
            Ok(()) => {
                stats.delivered.fetch_add(1, Relaxed);
                out.cursor = event.seq;
                out.delivered += 1;
                attempt = 1;
            }
            Err(why) => {
                stats.failed.fetch_add(1, Relaxed);
                out.failure = Some(why);
                return out;
            }
        }
    }
    // Everything the page looked at is delivered or not for this subscription.
    out.cursor = out.cursor.max(page.last_seq);
    out
}

/// A durable commit that carries the cursor moves committed without fsync before it.
fn checkpoint(db: &redb::Database, now: u64) -> Result<(), StorageError> {
    let w = db.begin_write().map_err(redb::Error::from)?;
    w.open_table(super::EVENTS_META)
        .map_err(redb::Error::from)?
        .insert("webhooks.checkpoint_ms", now)
        .map_err(redb::Error::from)?;
    w.commit().map_err(redb::Error::from)?;
    Ok(())
}

/// Posts `event` to `sub`; `Err` says why it did not count as delivered.
async fn post(client: &reqwest::Client, sub: &Subscription, attempt: u32, event: &Event) -> Result<(), String> {
    let body = serde_json::to_vec(event).map_err(|e| format!("encoding: {e}"))?;
    let t = now_ms() / 1_000;
    let r = client
        .post(&sub.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("x-oms-event-id", &event.id)
        .header("x-oms-event-type", &event.kind)
        .header("x-oms-webhook-id", &sub.id)
        .header("x-oms-signature", signature_header(&sub.secret, t, &body))
        .header("x-oms-delivery-attempt", attempt.to_string())
        .body(body)
        .send()
        .await;
    let cut = cut_error;
    match r {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => Err(cut(format!("receiver answered {}", resp.status()))),
        Err(e) => {
            // reqwest's error chain holds the cause (timeout, refused, DNS).
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            Err(cut(msg))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_tampering_or_staleness_is_refused() {
        let secret = new_secret();
        let body = br#"{"id":"evt_1","type":"order.created"}"#;
        let h = signature_header(&secret, 1_000, body);
        assert!(h.starts_with("t=1000,v1="));
        assert_eq!(verify_signature(&secret, &h, body, 1_000, REPLAY_WINDOW_S), Ok(()));
        assert_eq!(verify_signature(&secret, &h, body, 1_000 + REPLAY_WINDOW_S, REPLAY_WINDOW_S), Ok(()));
        let tampered = br#"{"id":"evt_1","type":"order.cancelled"}"#;
        assert_eq!(verify_signature(&secret, &h, tampered, 1_000, REPLAY_WINDOW_S), Err(SignatureError::Mismatch));
        assert_eq!(verify_signature("whsec_other", &h, body, 1_000, REPLAY_WINDOW_S), Err(SignatureError::Mismatch));
        assert_eq!(
            verify_signature(&secret, &h, body, 1_000 + REPLAY_WINDOW_S + 1, REPLAY_WINDOW_S),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_signature(&secret, &h, body, 1_000 - REPLAY_WINDOW_S - 1, REPLAY_WINDOW_S),
            Err(SignatureError::Stale)
        );
        // Another timestamp in the header with the same MAC: the MAC covers the timestamp.
        let moved = h.replacen("t=1000", "t=1001", 1);
        assert_eq!(verify_signature(&secret, &moved, body, 1_000, REPLAY_WINDOW_S), Err(SignatureError::Mismatch));
        for bad in ["", "t=1000", "v1=00", "t=x,v1=00", "t=1000,v1=zz", "t=1000,v1=0"] {
            assert_eq!(
                verify_signature(&secret, bad, body, 1_000, REPLAY_WINDOW_S),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn urls_are_validated() {
        for ok in ["https://example.com/hook", "http://example.com:8080/a?b=c", "https://203.0.114.1/x"] {
            assert!(validate_url(ok, false).is_ok(), "{ok}");
        }
        for bad in [
            "ftp://example.com/x",
            "https://user:pw@example.com/x",
            "https://user@example.com/x",
            "https://example.com/x#frag",
            "not a url",
            "file:///etc/passwd",
            "http://localhost:8080/x",
            "http://127.0.0.1/x",
            "http://10.1.2.3/x",
            "http://192.168.0.1/x",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/x",
            "http://[fd00::1]/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://0.0.0.0/x",
        ] {
            assert!(validate_url(bad, false).is_err(), "{bad}");
        }
        let long = format!("https://example.com/{}", "a".repeat(URL_BYTES_MAX));
        assert!(validate_url(&long, false).is_err());
        // Loopback when allowed (tests, demos), never credentials or another scheme.
        assert!(validate_url("http://127.0.0.1:9/x", true).is_ok());
        assert!(validate_url("http://u:p@127.0.0.1:9/x", true).is_err());
        assert!(validate_url("gopher://127.0.0.1:9/x", true).is_err());
    }

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        let cfg = WebhooksConfig { backoff_base_ms: 100, backoff_max_ms: 1_000, ..WebhooksConfig::default() };
        let delays: Vec<u64> = (1..=6).map(|a| cfg.backoff_ms(a)).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(cfg.backoff_ms(u32::MAX), 1_000);
        assert!(WebhooksConfig::default().check().is_ok());
        assert!(WebhooksConfig { concurrency_max: 0, ..WebhooksConfig::default() }.check().is_err());
    }

    #[test]
    fn channel_keys_subscribe_to_their_own_orders_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("e.redb")).unwrap();
        crate::events::init(&db).unwrap();
        let cfg = WebhooksConfig { subscriptions_max: 2, ..WebhooksConfig::default() };
        let web = Channel::parse("web").unwrap();
        let new = |url: &str, channel: Option<&str>| NewSubscription {
            url: url.into(),
            types: vec!["order.*".into()],
            channel: channel.map(str::to_owned),
            after: None,
        };
        let k = Actor {
            key: "k".into(),
            role: oms_service::auth::Role::Channel,
            method: "POST",
            route: "/v1/webhooks".into(),
        };
        let admin = Actor { key: "admin".into(), role: oms_service::auth::Role::Admin, ..k.clone() };
        let e = create(&db, &cfg, new("https://example.com/h", Some("shop")), &k, Some(&web), 1).unwrap_err();
        assert!(matches!(e, WebhookError::Invalid { field: "channel", .. }));
        let e = create(&db, &cfg, new("http://127.0.0.1/h", None), &k, Some(&web), 1).unwrap_err();
        assert!(matches!(e, WebhookError::Invalid { field: "url", .. }));
        assert!(list(&db, None, 10).unwrap().is_empty(), "refusals write nothing");
        let (mine, secret) = create(&db, &cfg, new("https://example.com/h", None), &k, Some(&web), 1).unwrap();
        assert_eq!(mine.channel.as_deref(), Some("web"));
        assert!(secret.starts_with("whsec_") && secret.len() == 6 + 64);
        assert!(!serde_json::to_string(&mine.view()).unwrap().contains(&secret), "the secret is never shown again");
        let (all, _) = create(&db, &cfg, new("https://example.com/a", None), &admin, None, 1).unwrap();
        assert!(matches!(
            create(&db, &cfg, new("https://example.com/b", None), &admin, None, 1),
            Err(WebhookError::TooMany(2))
        ));
        let shop = Channel::parse("shop").unwrap();
        assert_eq!(list(&db, Some(&web), 10).unwrap().len(), 1);
        assert!(list(&db, Some(&shop), 10).unwrap().is_empty());
        assert!(matches!(delete(&db, &all.id, Some(&web), &k, 2), Err(WebhookError::NotFound(_))), "not its own");
        delete(&db, &all.id, None, &admin, 2).unwrap();
        assert!(id_well_formed(&all.id) && !id_well_formed("wh_x") && !id_well_formed("../etc"));
        let rows = audit::page(&db, 0, 10).unwrap().0;
        assert_eq!(
            rows.iter().map(|r| r.target.clone().unwrap()).collect::<Vec<_>>(),
            [mine.id.clone(), all.id.clone(), all.id.clone()]
        );
        assert_eq!(list(&db, None, 10).unwrap().len(), 1);
    }
}
