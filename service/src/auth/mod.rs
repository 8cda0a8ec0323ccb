//! Who may call what: API keys ([`keys`]), the roles each route admits, and per-key limits.
//!
//! [`Auth`] is the running process's view of its key file. Its middleware ([`authorize`]) runs on every
//! request, after routing (so it knows the route):
//! 1. The server's [`Policy`] says what the route needs: [`Access::Open`] (health, a customer's tracking
//!    link) or one of a set of roles (`admin` may always).
//! 2. `Authorization: Bearer <token>`: missing, malformed, unknown or revoked → `401 unauthenticated` (with
//!    `WWW-Authenticate: Bearer`). A known key whose role the route does not admit → `403 forbidden`.
//! 3. Per-key limits: a token bucket (`rate_per_s`, burst `burst`) and a cap on requests in flight; past
//!    either → `429 rate_limited` with `Retry-After`. Open routes share a bucket per client IP.
//! 4. The request carries its [`Principal`] (who) for the handler, which scopes channel keys to their
//!    channel, and an [`crate::audit::Actor`] for the audit trail.
//!
//! The key file is re-read when it changes ([`Auth::watch`]): a key created or revoked with `oms keys` takes
//! effect within `keys_check_interval_ms`, without a restart. A file that fails to parse keeps the keys in
//! force and is logged (and counted) until it is fixed.

pub mod keys;
pub mod session;
pub mod users;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

pub use keys::{KeyError, Role};
use oms_protocol::domain::Channel;

use crate::audit::Actor;
use crate::config::ConfigError;
use crate::lock;
use crate::problem::Problem;

/// Client IPs whose open-route buckets are remembered; past it the oldest idle ones are forgotten.
const OPEN_BUCKETS_MAX: usize = 4_096;

/// The `[auth]` section of the node's and the hub's configuration. Every key has a default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// How often the key file is checked for changes, ms.
    #[serde(default = "default_keys_check_interval_ms")]
    pub keys_check_interval_ms: u64,
    /// Sustained requests per second of one key (a key's own `rate_per_s` overrides it).
    #[serde(default = "default_rate_per_s")]
    pub rate_per_s: u32,
    /// Requests one key may make at once above its rate, after a quiet spell.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Requests of one key in flight at once.
    #[serde(default = "default_in_flight_per_key")]
    pub in_flight_per_key: u32,
    /// Sustained requests per second one client IP may make to open routes (health, tracking) and to the
    /// screens, signed in or not.
    #[serde(default = "default_open_rate_per_s")]
    pub open_rate_per_s: u32,
    /// A screen session ends after this long without a request, ms (default 8 hours).
    #[serde(default = "default_session_idle_ms")]
    pub session_idle_ms: u64,
    /// A screen session ends this long after sign-in whatever happens, ms (default 14 hours: a shift and a
    /// half).
    #[serde(default = "default_session_max_ms")]
    pub session_max_ms: u64,
    /// Screen sessions held at once; past it the one idle longest ends.
    #[serde(default = "default_sessions_max")]
    pub sessions_max: usize,
    /// Wrong sign-ins of one user name within `sign_in_lockout_ms` before that name is refused.
    #[serde(default = "default_sign_in_failures_max")]
    pub sign_in_failures_max: u32,
    /// The window of `sign_in_failures_max`, and how long a locked name waits, ms.
    #[serde(default = "default_sign_in_lockout_ms")]
    pub sign_in_lockout_ms: u64,
}

fn default_session_idle_ms() -> u64 {
    8 * 3_600_000
}
fn default_session_max_ms() -> u64 {
    14 * 3_600_000
}
fn default_sessions_max() -> usize {
    10_000
}
fn default_sign_in_failures_max() -> u32 {
    5
}
fn default_sign_in_lockout_ms() -> u64 {
    15 * 60_000
}

fn default_keys_check_interval_ms() -> u64 {
    1_000
}
fn default_rate_per_s() -> u32 {
    1_000
}
fn default_burst() -> u32 {
    2_000
}
fn default_in_flight_per_key() -> u32 {
    128
}
fn default_open_rate_per_s() -> u32 {
    20
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            keys_check_interval_ms: default_keys_check_interval_ms(),
            rate_per_s: default_rate_per_s(),
            burst: default_burst(),
            in_flight_per_key: default_in_flight_per_key(),
            open_rate_per_s: default_open_rate_per_s(),
            session_idle_ms: default_session_idle_ms(),
            session_max_ms: default_session_max_ms(),
            sessions_max: default_sessions_max(),
            sign_in_failures_max: default_sign_in_failures_max(),
            sign_in_lockout_ms: default_sign_in_lockout_ms(),
        }
    }
}

impl AuthConfig {
    /// Checks the ranges serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what: &str| Err(ConfigError::Invalid(format!("auth.{what}")));
        if !(100..=60_000).contains(&self.keys_check_interval_ms) {
            return bad("keys_check_interval_ms must be 100 to 60000");
        }
        for (name, v) in [
            ("rate_per_s", self.rate_per_s),
            ("burst", self.burst),
            ("in_flight_per_key", self.in_flight_per_key),
            ("open_rate_per_s", self.open_rate_per_s),
        ] {
            if v == 0 || v > keys::RATE_PER_S_MAX {
                return bad(&format!("{name} must be 1 to {}", keys::RATE_PER_S_MAX));
            }
        }
        if !(60_000..=7 * 86_400_000).contains(&self.session_idle_ms)
            || !(self.session_idle_ms..=30 * 86_400_000).contains(&self.session_max_ms)
        {
            return bad("session_idle_ms must be 1 minute to 7 days and session_max_ms from it to 30 days");
        }
        if !(1..=1_000_000).contains(&self.sessions_max) {
            return bad("sessions_max must be 1 to 1000000");
        }
        if !(1..=1_000).contains(&self.sign_in_failures_max) || !(1_000..=86_400_000).contains(&self.sign_in_lockout_ms)
        {
            return bad("sign_in_failures_max must be 1 to 1000 and sign_in_lockout_ms 1 s to 1 day");
        }
        Ok(())
    }
}

/// Who is calling: the key's name, role and, for a channel key, its channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// The key's name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The channel a `channel` key acts for.
    pub channel: Option<Channel>,
    /// The supplier a `supplier` key acts for.
    pub supplier: Option<oms_protocol::domain::SupplierId>,
}

impl Principal {
    /// The channel this caller is confined to: `Some` for a channel key, `None` for roles that see every
    /// order.
    pub fn confined_to(&self) -> Option<&Channel> {
        if self.role == Role::Channel { self.channel.as_ref() } else { None }
    }

    /// The supplier this caller is confined to: `Some` for a supplier key (its own purchase orders only),
    /// `None` for roles that see every supplier's.
    pub fn supplier_scope(&self) -> Option<&oms_protocol::domain::SupplierId> {
        if self.role == Role::Supplier { self.supplier.as_ref() } else { None }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Problem;

    /// The caller [`authorize`] admitted; a route served without it (a bug) refuses rather than guesses.
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        parts.extensions.get::<Principal>().cloned().ok_or_else(unauthenticated)
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Nothing: anyone may call it (rate limited per client IP).
    Open,
    /// A key with one of these roles (or `admin`).
    Roles(&'static [Role]),
}

/// Every role but `supplier`: routes any key may call (an unknown path answers 404 only to a known key). A
/// supplier key, which acts for someone outside the business, is admitted only by routes that name its role.
pub const ANY_ROLE: &[Role] = &[Role::Channel, Role::Staff, Role::Planner, Role::Service, Role::Monitor, Role::Admin];

/// A server's map from (method, matched route) to what the route needs; `None` is a path no route matched.
pub type Policy = fn(&Method, Option<&str>) -> Access;

/// The peer a connection came from, which the server loop puts on each request.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// A token bucket in thousandths of a request, so rates are exact in integers.
#[derive(Debug)]
struct Bucket {
    milli: u64,
    at: Instant,
}

impl Bucket {
    fn full(burst: u32) -> Self {
        Bucket { milli: u64::from(burst) * 1_000, at: Instant::now() }
    }

    /// Takes one request's worth; `Err(wait)` when the bucket is empty, with how long until it is not.
    fn take(&mut self, rate_per_s: u32, burst: u32, now: Instant) -> Result<(), Duration> {
        let elapsed_ms = u64::try_from(now.saturating_duration_since(self.at).as_millis()).unwrap_or(u64::MAX);
        // `rate_per_s` requests a second is `rate_per_s` thousandths a millisecond.
        let refill = elapsed_ms.saturating_mul(u64::from(rate_per_s));
        self.milli = self.milli.saturating_add(refill).min(u64::from(burst) * 1_000);
        self.at = now;
        if self.milli >= 1_000 {
            self.milli -= 1_000;
            Ok(())
        } else {
            let missing = 1_000 - self.milli;
            Err(Duration::from_millis(missing.div_ceil(u64::from(rate_per_s.max(1)))))
        }
    }
}

/// A live key as the process holds it: who it is, and its limits' state (kept across reloads of the file).
#[derive(Debug)]
struct Live {
    principal: Principal,
    rate_per_s: Option<u32>,
    bucket: Mutex<Bucket>,
    in_flight: AtomicU32,
}

/// Refused requests, by reason (and reloads that failed), for the metrics.
#[derive(Debug, Default)]
pub struct AuthStats {
    /// `401`: no token, a malformed one, an unknown or revoked one.
    pub unauthenticated: AtomicU64,
    /// `403`: a known key whose role the route does not admit.
    pub forbidden: AtomicU64,
    /// `429`: past a key's (or an IP's) rate.
    pub rate_limited: AtomicU64,
    /// `429`: past a key's requests in flight.
    pub in_flight_refused: AtomicU64,
    /// Reloads of the key file that failed (the previous keys stayed in force).
    pub reload_errors: AtomicU64,
    /// Reads of the key file that took effect: the one at start and one after each change of the file.
    pub reloads: AtomicU64,
    /// Screen sign-ins refused for a wrong name or secret.
    pub sign_in_failures: AtomicU64,
}

impl AuthStats {
    /// The counters as OpenMetrics lines (without `# EOF`), each name prefixed with `prefix`.
    pub fn openmetrics(&self, prefix: &str) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "# HELP {prefix}_auth_refusals Requests refused by authentication, authorization or rate limits.\n\
             # TYPE {prefix}_auth_refusals counter\n"
        ));
        for (reason, c) in [
            ("unauthenticated", &self.unauthenticated),
            ("forbidden", &self.forbidden),
            ("rate_limited", &self.rate_limited),
            ("in_flight", &self.in_flight_refused),
            ("sign_in", &self.sign_in_failures),
        ] {
            out.push_str(&format!(
                "{prefix}_auth_refusals_total{{reason=\"{reason}\"}} {}\n",
                c.load(Ordering::Relaxed)
            ));
        }
        out.push_str(&format!(
            "# HELP {prefix}_auth_key_reload_errors Reloads of the key file that failed.\n\
             # TYPE {prefix}_auth_key_reload_errors counter\n\
             {prefix}_auth_key_reload_errors_total {}\n\
             # HELP {prefix}_auth_key_reloads Reads of the key file that took effect.\n\
             # TYPE {prefix}_auth_key_reloads counter\n\
             {prefix}_auth_key_reloads_total {}\n",
            self.reload_errors.load(Ordering::Relaxed),
            self.reloads.load(Ordering::Relaxed)
        ));
        out
    }
}

/// What identifies a version of the key file: a change to any of these means "read it again".
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        #[cfg(unix)]
        inode: std::os::unix::fs::MetadataExt::ino(&m),
    })
}

type KeySet = HashMap<[u8; 32], Arc<Live>>;

/// The process's keys, policy and limits. Share it as `Arc<Auth>`.
#[derive(Debug)]
pub struct Auth {
    dir: Option<PathBuf>,
    cfg: AuthConfig,
    policy: Policy,
    keys: RwLock<Arc<KeySet>>,
    /// The key file as last read: `None` before the first read, `Some(None)` when it was missing.
    seen: Mutex<Option<Option<Stamp>>>,
    open: Mutex<HashMap<IpAddr, Bucket>>,
    users: RwLock<Arc<HashMap<String, session::UserLive>>>,
    sessions: Mutex<HashMap<[u8; 32], session::Session>>,
    /// Wrong sign-ins per user name: how many, since when (ms).
    failures: Mutex<HashMap<String, (u32, u64)>>,
    /// Refusals by reason.
    pub stats: AuthStats,
}

impl Auth {
    /// Loads the key file of the data directory `dir` (none yet: no keys, and a warning that says how to
    /// create one).
    pub fn load(dir: &Path, cfg: AuthConfig, policy: Policy) -> Result<Auth, KeyError> {
        let auth = Auth::new(Some(dir.to_owned()), cfg, policy, HashMap::new());
        auth.reload()?;
        if auth.live_keys() == 0 {
            tracing::warn!(
                data = %dir.display(),
                "no API keys: every request but /healthz is refused; create one with \
                 `oms keys create --data {} --role admin --name admin`",
                dir.display()
            );
        }
        Ok(auth)
    }

    /// Keys held in memory only, for tests and benchmarks: `(token, principal, rate)`.
    pub fn in_memory(keys: Vec<(String, Principal, Option<u32>)>, cfg: AuthConfig, policy: Policy) -> Auth {
        let set = keys
            .into_iter()
            .map(|(token, principal, rate_per_s)| {
                let live = Live {
                    principal,
                    rate_per_s,
                    bucket: Mutex::new(Bucket::full(burst_of(&cfg, rate_per_s))),
                    in_flight: AtomicU32::new(0),
                };
                (keys::token_hash(&token), Arc::new(live))
            })
            .collect();
        Auth::new(None, cfg, policy, set)
    }

    fn new(dir: Option<PathBuf>, cfg: AuthConfig, policy: Policy, keys: KeySet) -> Auth {
        Auth {
            dir,
            cfg,
            policy,
            keys: RwLock::new(Arc::new(keys)),
            seen: Mutex::new(None),
            open: Mutex::new(HashMap::new()),
            users: RwLock::new(Arc::new(HashMap::new())),
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            stats: AuthStats::default(),
        }
    }

    /// Live keys in force.
    pub fn live_keys(&self) -> usize {
        self.keys.read().map(|k| k.len()).unwrap_or_else(|p| p.into_inner().len())
    }

    /// Re-reads the key file if it changed since the last read. Returns whether it did; on an error the keys
    /// in force stay.
    pub fn reload(&self) -> Result<bool, KeyError> {
        let Some(dir) = &self.dir else { return Ok(false) };
        let now = stamp(&keys::keys_path(dir));
        if lock(&self.seen).as_ref() == Some(&now) {
            return Ok(false);
        }
        let file = keys::read(dir)?;
        let old = self.current();
        let set: KeySet = file
            .live_keys()
            .map(|(hash, k)| {
                // A key that stays keeps its bucket and its in-flight count.
                let same = old.get(&hash).filter(|l| l.principal.name == k.name && l.principal.role == k.role);
                let live = match same {
                    Some(l)
                        if l.rate_per_s == k.rate_per_s
                            && l.principal.channel == k.channel
                            && l.principal.supplier == k.supplier =>
                    {
                        l.clone()
                    }
                    _ => Arc::new(Live {
                        principal: Principal {
                            name: k.name.clone(),
                            role: k.role,
                            channel: k.channel.clone(),
                            supplier: k.supplier.clone(),
                        },
                        rate_per_s: k.rate_per_s,
                        bucket: Mutex::new(Bucket::full(burst_of(&self.cfg, k.rate_per_s))),
                        in_flight: AtomicU32::new(0),
                    }),
                };
                (hash, live)
            })
            .collect();
        let n = set.len();
        let people: HashMap<String, session::UserLive> = file
            .users
            .iter()
            .filter(|u| u.live())
            .map(|u| (u.name.clone(), session::UserLive { role: u.role, hash: u.password_hash.clone() }))
            .collect();
        let m = people.len();
        *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(set);
        *self.users.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(people);
        *lock(&self.seen) = Some(now);
        self.stats.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(keys = n, users = m, "API keys and users loaded");
        Ok(true)
    }

    fn current(&self) -> Arc<KeySet> {
        self.keys.read().map(|k| k.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Re-reads the key file every `keys_check_interval_ms` until the task is dropped.
    pub async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.keys_check_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let me = self.clone();
            // File I/O off the async threads.
            match tokio::task::spawn_blocking(move || me.reload()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    self.stats.reload_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "cannot reload the API keys; the previous keys stay in force");
                }
                Err(e) => tracing::error!(error = %e, "the key reload task failed"),
            }
        }
    }

    /// The key behind `headers`' bearer token, if any.
    fn authenticate(&self, headers: &HeaderMap) -> Option<Arc<Live>> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.trim().split_once(' ')?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || !keys::token_well_formed(token) {
            return None;
        }
        self.current().get(&keys::token_hash(token)).cloned()
    }

    /// One request's worth from the open routes' bucket of `ip`.
    fn take_open(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let rate = self.cfg.open_rate_per_s;
        let burst = rate.saturating_mul(2);
        let mut open = lock(&self.open);
        if open.len() >= OPEN_BUCKETS_MAX && !open.contains_key(&ip) {
            // Forget the buckets that have refilled (they hold no state worth keeping), then, if the table is
            // still full, the one idle longest.
            let full_after = Duration::from_millis(u64::from(burst) * 1_000 / u64::from(rate.max(1)) + 1);
            open.retain(|_, b| now.saturating_duration_since(b.at) < full_after);
            if open.len() >= OPEN_BUCKETS_MAX
                && let Some(oldest) = open.iter().min_by_key(|(_, b)| b.at).map(|(ip, _)| *ip)
            {
                open.remove(&oldest);
            }
        }
        open.entry(ip).or_insert_with(|| Bucket::full(burst)).take(rate, burst, now)
    }
}

fn burst_of(cfg: &AuthConfig, rate_per_s: Option<u32>) -> u32 {
    rate_per_s.map_or(cfg.burst, |r| r.saturating_mul(2))
}

/// The `401` of a request without a live key.
pub fn unauthenticated() -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "send Authorization: Bearer <token> with a live API key (create one with `oms keys create`)",
    )
}

fn too_many(code: &'static str, detail: String, wait: Duration) -> Response {
    let secs = wait.as_millis().div_ceil(1_000).max(1);
    let mut resp =
        Problem::new(StatusCode::TOO_MANY_REQUESTS, code, detail).with("retry_after_s", secs).into_response();
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// Decrements a key's in-flight count when its request ends, however it ends.
struct InFlight(Arc<Live>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Middleware: authentication, the route's roles and the per-key limits (see the module docs). Add it with
/// `Router::layer` so it runs after routing and sees the matched route.
pub async fn authorize(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let now = Instant::now();
    let roles = match (auth.policy)(req.method(), route.as_deref()) {
        Access::Open => {
            let ip = req.extensions().get::<PeerAddr>().map_or(IpAddr::from([0, 0, 0, 0]), |p| p.0.ip());
            if let Err(wait) = auth.take_open(ip, now) {
                auth.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                return too_many(
                    "rate_limited",
                    format!("more than {} requests a second from {ip}; slow down", auth.cfg.open_rate_per_s),
                    wait,
                );
            }
            return next.run(req).await;
        }
        Access::Roles(roles) => roles,
    };
    if route.as_deref().is_some_and(is_screen_route) && !req.headers().contains_key(header::AUTHORIZATION) {
        return screen_request(&auth, roles, route.unwrap_or_default(), req, next, now).await;
    }
    let Some(key) = auth.authenticate(req.headers()) else {
        auth.stats.unauthenticated.fetch_add(1, Ordering::Relaxed);
        let mut resp = unauthenticated().into_response();
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    };
    let p = &key.principal;
    if p.role != Role::Admin && !roles.contains(&p.role) {
        auth.stats.forbidden.fetch_add(1, Ordering::Relaxed);
        let admitted: Vec<&str> = roles.iter().map(|r| r.as_str()).chain(["admin"]).collect();
        return Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "key {:?} has role {}; {} {} needs one of: {}",
                p.name,
                p.role,
                req.method(),
                route.as_deref().unwrap_or("this path"),
                admitted.join(", ")
            ),
        )
        .with("role", p.role)
        .into_response();
    }
    let rate = key.rate_per_s.unwrap_or(auth.cfg.rate_per_s);
    let taken = lock(&key.bucket).take(rate, burst_of(&auth.cfg, key.rate_per_s), now);
    if let Err(wait) = taken {
        auth.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
        return too_many("rate_limited", format!("key {:?} is past its {rate} requests a second", p.name), wait);
    }
    let max = auth.cfg.in_flight_per_key;
    if key.in_flight.fetch_add(1, Ordering::Relaxed) >= max {
        key.in_flight.fetch_sub(1, Ordering::Relaxed);
        auth.stats.in_flight_refused.fetch_add(1, Ordering::Relaxed);
        return too_many(
            "too_many_in_flight",
            format!("key {:?} already has {max} requests in flight; wait for answers", p.name),
            Duration::from_secs(1),
        );
    }
    let _in_flight = InFlight(key.clone());
    let actor = Actor {
        key: p.name.clone(),
        role: p.role,
        method: crate::guard::method_label(req.method()),
        route: route.unwrap_or_else(|| "other".to_owned()),
    };
    req.extensions_mut().insert(p.clone());
    req.extensions_mut().insert(actor);
    next.run(req).await
}

/// Whether `route` is one of the screens (`/ui`, `/ui/…`), which take a session cookie instead of a key.
pub fn is_screen_route(route: &str) -> bool {
    route == "/ui" || route.starts_with("/ui/")
}

/// Where the sign-in page is; it sends the user back to `next` (a local path) once signed in.
pub const SIGN_IN_PATH: &str = "/ui/sign-in";

/// A screen request without an API key: the session cookie's user, the route's roles, and the per-IP rate of
/// the open routes (people click far below it). No session → the sign-in page, with the way back.
async fn screen_request(
    auth: &Auth,
    roles: &[Role],
    route: String,
    mut req: Request,
    next: Next,
    now: Instant,
) -> Response {
    let ip = req.extensions().get::<PeerAddr>().map_or(IpAddr::from([0, 0, 0, 0]), |p| p.0.ip());
    if let Err(wait) = auth.take_open(ip, now) {
        auth.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
        return too_many(
            "rate_limited",
            format!("more than {} requests a second from {ip}; slow down", auth.cfg.open_rate_per_s),
            wait,
        );
    }
    let found = session::cookie(req.headers(), session::SESSION_COOKIE).and_then(|t| auth.session(t, crate::now_ms()));
    let Some(s) = found else {
        auth.stats.unauthenticated.fetch_add(1, Ordering::Relaxed);
        // Back to the page asked for after sign-in; a form post goes back to its page's GET instead.
        let back =
            if req.method() == Method::GET { req.uri().path_and_query().map_or("/ui", |p| p.as_str()) } else { "/ui" };
        let to = format!("{SIGN_IN_PATH}?next={}", crate::web::query_escape(back));
        return crate::web::see_other(&to);
    };
    if s.role != Role::Admin && !roles.contains(&s.role) {
        auth.stats.forbidden.fetch_add(1, Ordering::Relaxed);
        let mut resp = Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} is signed in as {}; this screen is for {}",
                s.user,
                s.role,
                roles.iter().map(|r| r.as_str()).chain(["admin"]).collect::<Vec<_>>().join(", ")
            ),
        )
        .into_response();
        // The page around the refusal shows who is signed in (see `web::html_problems`).
        resp.extensions_mut().insert(s);
        return resp;
    }
    let p = s.principal();
    let actor = Actor { key: p.name.clone(), role: p.role, method: crate::guard::method_label(req.method()), route };
    req.extensions_mut().insert(p);
    req.extensions_mut().insert(actor);
    req.extensions_mut().insert(s.clone());
    let mut resp = next.run(req).await;
    resp.extensions_mut().insert(s);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(name: &str, role: Role) -> Principal {
        Principal { name: name.into(), role, channel: None, supplier: None }
    }

    fn request(token: Option<&str>, path: &str) -> Request {
        let mut b = axum::http::Request::builder().uri(path);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    /// `/slow` waits until the test lets it go; `/admin` is admin only; `/open` needs nothing.
    fn app(auth: Arc<Auth>, gate: Arc<tokio::sync::Semaphore>) -> axum::Router {
        use axum::routing::get;
        axum::Router::new()
            .route(
                "/slow",
                get(move || {
                    let gate = gate.clone();
                    async move {
                        let _ = gate.acquire().await;
                        "done"
                    }
                }),
            )
            .route("/admin", get(|p: Principal| async move { p.name }))
            .route("/open", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(auth, authorize))
    }

    fn policy(_: &Method, route: Option<&str>) -> Access {
        match route {
            Some("/open") => Access::Open,
            Some("/admin") => Access::Roles(&[]),
            _ => Access::Roles(ANY_ROLE),
        }
    }

    const T1: &str = "oms_1111111111111111111111111111111111111111111111111111111111111111";
    const T2: &str = "oms_2222222222222222222222222222222222222222222222222222222222222222";

    #[tokio::test]
    async fn in_flight_past_the_cap_is_429_and_frees_when_answers_go_out() {
        use tower::ServiceExt;
        let cfg = AuthConfig { in_flight_per_key: 2, ..AuthConfig::default() };
        let keys = vec![
            (T1.to_owned(), principal("a", Role::Staff), None),
            (T2.to_owned(), principal("b", Role::Staff), None),
        ];
        let auth = Arc::new(Auth::in_memory(keys, cfg, policy));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let app = app(auth.clone(), gate.clone());
        let held: Vec<_> = (0..2).map(|_| tokio::spawn(app.clone().oneshot(request(Some(T1), "/slow")))).collect();
        // Wait (bounded) until both are in flight.
        for _ in 0..200 {
            if auth.current().get(&keys::token_hash(T1)).unwrap().in_flight.load(Ordering::Relaxed) == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let third = app.clone().oneshot(request(Some(T1), "/slow")).await.unwrap();
        assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(third.headers()[header::RETRY_AFTER], "1");
        assert_eq!(auth.stats.in_flight_refused.load(Ordering::Relaxed), 1);
        // Another key is not held up by the first one's cap.
        gate.add_permits(1);
        assert_eq!(app.clone().oneshot(request(Some(T2), "/slow")).await.unwrap().status(), StatusCode::OK);
        gate.add_permits(2);
        for h in held {
            assert_eq!(h.await.unwrap().unwrap().status(), StatusCode::OK);
        }
        assert_eq!(auth.current().get(&keys::token_hash(T1)).unwrap().in_flight.load(Ordering::Relaxed), 0);
        gate.add_permits(1);
        assert_eq!(app.oneshot(request(Some(T1), "/slow")).await.unwrap().status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn roles_tokens_and_open_routes() {
        use tower::ServiceExt;
        let keys = vec![
            (T1.to_owned(), principal("s", Role::Staff), None),
            (T2.to_owned(), principal("root", Role::Admin), None),
        ];
        let cfg = AuthConfig { open_rate_per_s: 1, ..AuthConfig::default() };
        let auth = Arc::new(Auth::in_memory(keys, cfg, policy));
        let app = app(auth.clone(), Arc::new(tokio::sync::Semaphore::new(0)));
        let status = |r: Response| r.status();
        assert_eq!(status(app.clone().oneshot(request(None, "/admin")).await.unwrap()), StatusCode::UNAUTHORIZED);
        assert_eq!(status(app.clone().oneshot(request(Some(T1), "/admin")).await.unwrap()), StatusCode::FORBIDDEN);
        let r = app.clone().oneshot(request(Some(T2), "/admin")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"root", "the handler sees the principal");
        // Open: no token needed, but 1 a second (burst 2) per IP.
        let codes: Vec<u16> = open_calls(&app, 3).await.into_iter().map(|r| r.status().as_u16()).collect();
        assert_eq!(codes, [200, 200, 429]);
        assert_eq!(auth.stats.unauthenticated.load(Ordering::Relaxed), 1);
        assert_eq!(auth.stats.forbidden.load(Ordering::Relaxed), 1);
        assert_eq!(auth.stats.rate_limited.load(Ordering::Relaxed), 1);
    }

    async fn open_calls(app: &axum::Router, n: usize) -> Vec<Response> {
        use tower::ServiceExt;
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(app.clone().oneshot(request(None, "/open")).await.unwrap());
        }
        out
    }

    #[test]
    fn buckets_refill_at_their_rate_and_never_past_the_burst() {
        let t0 = Instant::now();
        let mut b = Bucket { milli: 3_000, at: t0 };
        for _ in 0..3 {
            b.take(10, 3, t0).unwrap();
        }
        let wait = b.take(10, 3, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100), "10 a second: one every 100 ms");
        assert!(b.take(10, 3, t0 + Duration::from_millis(99)).is_err());
        b.take(10, 3, t0 + Duration::from_millis(200)).unwrap();
        // An hour idle refills to the burst, not to 36,000.
        let later = t0 + Duration::from_secs(3_600);
        for _ in 0..3 {
            b.take(10, 3, later).unwrap();
        }
        assert!(b.take(10, 3, later).is_err());
    }

    #[test]
    fn config_defaults_and_bounds() {
        let c: AuthConfig = toml::from_str("").unwrap();
        assert_eq!(c, AuthConfig::default());
        c.validate().unwrap();
        for bad in ["rate_per_s = 0", "burst = 2000000", "keys_check_interval_ms = 10", "in_flight_per_key = 0"] {
            let c: AuthConfig = toml::from_str(bad).unwrap();
            assert!(c.validate().is_err(), "{bad}");
        }
        assert!(toml::from_str::<AuthConfig>("rate = 5").is_err());
    }

    #[test]
    fn the_open_bucket_table_stays_bounded() {
        let auth = Auth::in_memory(vec![], AuthConfig::default(), |_, _| Access::Open);
        let now = Instant::now();
        for i in 0..(OPEN_BUCKETS_MAX as u32 + 100) {
            auth.take_open(IpAddr::from(i.to_be_bytes()), now).unwrap();
        }
        assert!(lock(&auth.open).len() <= OPEN_BUCKETS_MAX);
    }

    #[test]
    fn a_reload_picks_up_new_and_revoked_keys_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::load(dir.path(), AuthConfig::default(), |_, _| Access::Roles(ANY_ROLE)).unwrap();
        assert_eq!(auth.live_keys(), 0);
        assert!(!auth.reload().unwrap(), "still no file: nothing to read again");
        let new = |name: &str| keys::NewKey {
            name: name.into(),
            role: Role::Staff,
            channel: None,
            supplier: None,
            rate_per_s: None,
        };
        let a = keys::create(dir.path(), new("a"), 1).unwrap();
        assert!(auth.reload().unwrap());
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, format!("Bearer {a}").parse().unwrap());
        let live = auth.authenticate(&h).unwrap();
        assert_eq!(live.principal.name, "a");
        keys::create(dir.path(), new("b"), 2).unwrap();
        assert!(auth.reload().unwrap());
        assert!(Arc::ptr_eq(&live, &auth.authenticate(&h).unwrap()), "a kept its state across the reload");
        assert!(!auth.reload().unwrap(), "unchanged file: no reload");
        keys::revoke(dir.path(), "a", 3).unwrap();
        auth.reload().unwrap();
        assert!(auth.authenticate(&h).is_none(), "revoked");
        // A broken file keeps the keys in force.
        std::fs::write(keys::keys_path(dir.path()), b"garbage").unwrap();
        assert!(auth.reload().is_err());
        assert_eq!(auth.live_keys(), 1);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(auth.authenticate(&h).is_none());
    }
}
