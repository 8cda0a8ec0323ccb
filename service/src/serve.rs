//! The HTTP server loop of the node and the hub, with a limit on everything a client can hold:
//!
//! - **Connections**: at most `connections_max` are served at once. The accept loop takes a slot before it
//!   accepts, so excess connections **wait** in the kernel's listen backlog (their TCP handshake completes, no
//!   byte is read) until a served connection closes; a client's own connect or request timeout bounds the
//!   wait. Past the backlog the kernel refuses them.
//! - **Headers**: a connection that has not sent a complete request head within `header_read_timeout_ms`,
//!   idle keep-alive connections included, is closed (hyper's HTTP/1 header-read timeout, which
//!   `axum::serve` does not expose). A client sending its headers a byte a second holds a slot no longer.
//! - **Answers**: a response write that makes no progress for `send_timeout_ms` (a client that does not read
//!   what it asked for, once the socket buffers are full) closes the connection, as nginx's `send_timeout`.
//! - **Requests**: at most `requests_in_flight_max` are handled at once; beyond that a request is refused at
//!   once with `503 overloaded` (and `Retry-After`), so a burst queues nowhere. A request not answered within
//!   `request_timeout_ms` (reading its body included) is cut off: `408 request_timeout` (and the connection
//!   closed) if its body was still arriving, `503 processing_timeout` otherwise. Work a handler had handed on
//!   may still complete, as with any timeout (the node's writes: retry with the same idempotency key).
//! - **Host and origin**: [`crate::guard::check_host_and_origin`] over every request, before the limits.
//! - **Shutdown**: once `shutdown` resolves no connection is accepted; requests in flight finish (idle
//!   connections close at once) for at most `request_timeout_ms`, after which the rest are dropped.
//!
//! **TLS.** Given a rustls configuration (the node and the hub build it from `tls_cert` / `tls_key` with
//! `oms_transport::tls::http_server_tls`, whose certificate resolver re-reads the files at most every
//! `tls_check_interval_ms` when they change, so a renewed pair is presented from the next handshake on;
//! this crate knows nothing of certificates), every connection is TLS: the handshake runs in the
//! connection's own task, never in the accept loop, and must complete within `header_read_timeout_ms` (the
//! request head then has its own `header_read_timeout_ms`), so a client that opens a socket and stalls
//! holds its slot no longer than a slow plain-HTTP client. A failed handshake (a plain-HTTP request on the
//! TLS port, an untrusting client) is a debug log: no answer is ever written in clear.
//!
//! **Plain HTTP** is served only on a loopback address, or where the config says `insecure_http = true`
//! (behind a TLS-terminating proxy, say), and then with a warning at start; [`serve`] refuses to start
//! otherwise ([`HttpConfig::scheme`]), whatever the caller checked before.
//!
//! HTTP/1.1 only, as before (`axum` is built without HTTP/2; over TLS, ALPN `http/1.1`).

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::config::ConfigError;
use crate::guard::{self, AllowedHosts, HostError};
use crate::problem::Problem;

/// Longest accepted `header_read_timeout_ms`.
pub const HEADER_READ_TIMEOUT_MS_MAX: u64 = 300_000;
/// Longest accepted `send_timeout_ms`.
pub const SEND_TIMEOUT_MS_MAX: u64 = 300_000;
/// Longest accepted `request_timeout_ms`.
pub const REQUEST_TIMEOUT_MS_MAX: u64 = 3_600_000;
/// Shortest accepted timeout, ms.
pub const TIMEOUT_MS_MIN: u64 = 100;
/// Largest accepted `connections_max` and `requests_in_flight_max`.
pub const SLOTS_MAX: usize = 65_536;
/// Default of `tls_check_interval_ms`: how often at most the certificate and key files are looked at for a
/// change, on a handshake and on a timer, ms.
pub const TLS_CHECK_INTERVAL_MS_DEFAULT: u64 = 5_000;
/// Longest accepted `tls_check_interval_ms` (0 means on every handshake, which costs two `stat`s).
pub const TLS_CHECK_INTERVAL_MS_MAX: u64 = 3_600_000;
/// How long the accept loop pauses after an error that is not one connection's (out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(500);

/// The `[http]` section of the node's and the hub's configuration: who may address the server and how much a
/// client may hold. Every key has a default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Host names (any port) requests may address (`Host`) and state-changing requests may come from
    /// (`Origin`). Default: `localhost`, `127.0.0.1`, `[::1]` and the listen address's IP unless it is
    /// unspecified. A list replaces the default entirely.
    #[serde(default)]
    pub allowed_hosts: Option<Vec<String>>,
    /// A connection must send a complete request head within this long (also the keep-alive idle limit), ms.
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// A response write that makes no progress for this long closes the connection, ms.
    #[serde(default = "default_send_timeout_ms")]
    pub send_timeout_ms: u64,
    /// A request must be read and answered within this long, ms.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Connections served at once; more wait in the listen backlog.
    #[serde(default = "default_connections_max")]
    pub connections_max: usize,
    /// Requests handled at once; more are refused with `503 overloaded`.
    #[serde(default = "default_requests_in_flight_max")]
    pub requests_in_flight_max: usize,
    /// The server's certificate chain (PEM): with `tls_key`, the API is served over TLS only. A relative
    /// path is relative to the working directory, as `data_dir` and `certs_dir` are.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (behind a TLS-terminating proxy, say). Without TLS and
    /// without this, such an address is refused at start.
    #[serde(default)]
    pub insecure_http: bool,
    /// How often at most `tls_cert` and `tls_key` are looked at for a change, ms (0: on every handshake).
    #[serde(default = "default_tls_check_interval_ms")]
    pub tls_check_interval_ms: u64,
}

/// How a server speaks on its listen address, by [`HttpConfig::scheme`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpScheme {
    /// HTTPS: `tls_cert` and `tls_key` are set.
    Tls,
    /// Plain HTTP on a loopback address: only this machine can reach it.
    PlainLoopback,
    /// Plain HTTP on a reachable address because `insecure_http = true`: worth a warning.
    PlainInsecure,
}

fn default_header_read_timeout_ms() -> u64 {
    10_000
}
fn default_send_timeout_ms() -> u64 {
    30_000
}
fn default_request_timeout_ms() -> u64 {
    30_000
}
fn default_connections_max() -> usize {
    512
}
fn default_requests_in_flight_max() -> usize {
    256
}
fn default_tls_check_interval_ms() -> u64 {
    TLS_CHECK_INTERVAL_MS_DEFAULT
}

/// Whether `ip` reaches only this machine (an IPv4-mapped loopback address included).
fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            allowed_hosts: None,
            header_read_timeout_ms: default_header_read_timeout_ms(),
            send_timeout_ms: default_send_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            connections_max: default_connections_max(),
            requests_in_flight_max: default_requests_in_flight_max(),
            tls_cert: None,
            tls_key: None,
            insecure_http: false,
            tls_check_interval_ms: default_tls_check_interval_ms(),
        }
    }
}

impl HttpConfig {
    /// Checks the values the types cannot: the allowed hosts are host names, every limit is in range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.allowed_hosts(IpAddr::from([127, 0, 0, 1])).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let timeouts = [
            ("header_read_timeout_ms", self.header_read_timeout_ms, HEADER_READ_TIMEOUT_MS_MAX),
            ("send_timeout_ms", self.send_timeout_ms, SEND_TIMEOUT_MS_MAX),
            ("request_timeout_ms", self.request_timeout_ms, REQUEST_TIMEOUT_MS_MAX),
        ];
        for (key, v, max) in timeouts {
            if !(TIMEOUT_MS_MIN..=max).contains(&v) {
                return Err(ConfigError::Invalid(format!("http.{key} must be {TIMEOUT_MS_MIN} to {max} (got {v})")));
            }
        }
        for (key, v) in
            [("connections_max", self.connections_max), ("requests_in_flight_max", self.requests_in_flight_max)]
        {
            if !(1..=SLOTS_MAX).contains(&v) {
                return Err(ConfigError::Invalid(format!("http.{key} must be 1 to {SLOTS_MAX} (got {v})")));
            }
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(ConfigError::Invalid("http.tls_cert is set without http.tls_key".into())),
            (None, Some(_)) => return Err(ConfigError::Invalid("http.tls_key is set without http.tls_cert".into())),
            _ => {}
        }
        if self.tls_check_interval_ms > TLS_CHECK_INTERVAL_MS_MAX {
            return Err(ConfigError::Invalid(format!(
                "http.tls_check_interval_ms must be 0 to {TLS_CHECK_INTERVAL_MS_MAX} (got {})",
                self.tls_check_interval_ms
            )));
        }
        Ok(())
    }

    /// The certificate and key files, if the API is served over TLS.
    pub fn tls_files(&self) -> Option<(&Path, &Path)> {
        Some((self.tls_cert.as_deref()?, self.tls_key.as_deref()?))
    }

    /// How a server listening on `listen` speaks: over TLS if configured, else plain HTTP on a loopback
    /// address or with `insecure_http = true`; any other address is refused with what to set.
    pub fn scheme(&self, listen: IpAddr) -> Result<HttpScheme, ConfigError> {
        if self.tls_files().is_some() {
            Ok(HttpScheme::Tls)
        } else if is_loopback(listen) {
            Ok(HttpScheme::PlainLoopback)
        } else if self.insecure_http {
            Ok(HttpScheme::PlainInsecure)
        } else {
            Err(ConfigError::Invalid(format!(
                "the HTTP listen address {listen} is not loopback and [http] has no TLS: set http.tls_cert and \
                 http.tls_key (PEM files, e.g. from `oms ca issue --dir certs --http NAME`), or set \
                 http.insecure_http = true to serve plain HTTP there anyway (behind a TLS-terminating proxy)"
            )))
        }
    }

    /// The host allow-list for a server listening on `listen`.
    pub fn allowed_hosts(&self, listen: IpAddr) -> Result<AllowedHosts, HostError> {
        AllowedHosts::new(self.allowed_hosts.as_deref(), listen)
    }

    /// `header_read_timeout_ms` as a duration.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    /// `send_timeout_ms` as a duration.
    pub fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.send_timeout_ms)
    }

    /// `request_timeout_ms` as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listener's own address could not be read.
    #[error("cannot read the HTTP listener's address: {0}")]
    Listener(#[source] io::Error),
    /// The configured allow-list is not valid.
    #[error(transparent)]
    Hosts(#[from] HostError),
    /// Plain HTTP on a non-loopback address without `insecure_http = true`.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The config names TLS files but the caller handed no TLS configuration built from them.
    #[error("http.tls_cert and http.tls_key are set but no TLS configuration was loaded from them")]
    TlsNotLoaded,
}

/// The per-request limits, shared by every connection.
struct RequestLimits {
    in_flight: Semaphore,
    in_flight_max: usize,
    timeout: Duration,
}

/// How far a request's body has been read.
const BODY_UNREAD: u8 = 0;
const BODY_READING: u8 = 1;
const BODY_DONE: u8 = 2;

/// A request body that records how far it has been read, so that a timeout can tell a client that was still
/// sending (408) from a handler that was still working (503).
struct Watched {
    inner: Body,
    progress: Arc<AtomicU8>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let _ = this.progress.compare_exchange(BODY_UNREAD, BODY_READING, Ordering::Relaxed, Ordering::Relaxed);
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) || this.inner.is_end_stream() {
            this.progress.store(BODY_DONE, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's socket whose writes fail with `TimedOut` once they have made no progress for `limit`: a
/// client that does not read its answers cannot hold a connection slot for ever.
struct SendTimeout<T> {
    io: T,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> SendTimeout<T> {
    fn new(io: T, limit: Duration) -> Self {
        SendTimeout { io, limit, stalled: None }
    }

    /// Passes on a write's outcome; a write pending for `limit` since the last progress becomes an error.
    fn watch<R>(&mut self, polled: Poll<io::Result<R>>, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        match polled {
            Poll::Pending => {
                let limit = self.limit;
                let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match stalled.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the client read nothing for {} ms", limit.as_millis()),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SendTimeout<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendTimeout<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(polled, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.watch(polled, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.watch(polled, cx)
    }
}

/// Middleware: the in-flight limit and the whole-request timeout.
async fn limit_request(State(limits): State<Arc<RequestLimits>>, req: Request, next: Next) -> Response {
    let Ok(_slot) = limits.in_flight.try_acquire() else {
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!("the server is handling its limit of {} requests; retry shortly", limits.in_flight_max),
        )
        .into_response();
    };
    let start = if req.body().is_end_stream() { BODY_DONE } else { BODY_UNREAD };
    let progress = Arc::new(AtomicU8::new(start));
    let watched = progress.clone();
    let req = req.map(|inner| Body::new(Watched { inner, progress: watched }));
    match tokio::time::timeout(limits.timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) if progress.load(Ordering::Relaxed) == BODY_READING => {
            let mut resp = Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the request body did not arrive within {} ms", limits.timeout.as_millis()),
            )
            .into_response();
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        }
        Err(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "processing_timeout",
            format!(
                "the request was not answered within {} ms; a write may still complete, check before retrying \
                 (or retry with the same idempotency key)",
                limits.timeout.as_millis()
            ),
        )
        .into_response(),
    }
}

/// `app` with the host and origin check and the request limits of `cfg`, for a server listening on `listen`:
/// what [`serve`] serves. Exposed so tests can drive the same stack without a socket.
pub fn guarded(app: Router, cfg: &HttpConfig, listen: IpAddr) -> Result<Router, HostError> {
    let allowed = Arc::new(cfg.allowed_hosts(listen)?);
    let limits = Arc::new(RequestLimits {
        in_flight: Semaphore::new(cfg.requests_in_flight_max),
        in_flight_max: cfg.requests_in_flight_max,
        timeout: cfg.request_timeout(),
    });
    // The last layer added runs first: a foreign host is refused before it takes a request slot.
    Ok(app
        .layer(middleware::from_fn_with_state(limits, limit_request))
        .layer(middleware::from_fn_with_state(allowed, guard::check_host_and_origin)))
}

/// Whether an accept error concerns only the connection being accepted.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// Serves one accepted connection (plain or TLS) until it closes or the graceful shutdown closes it.
async fn serve_connection<I>(
    io: I,
    http1: &hyper::server::conn::http1::Builder,
    app: Router,
    peer: std::net::SocketAddr,
    watcher: Watcher,
    send_timeout: Duration,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(SendTimeout::new(io, send_timeout));
    // Each request carries its peer's address (the open routes' per-IP rate limit reads it).
    let svc = tower::ServiceExt::map_request(app, move |mut req: axum::http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(crate::auth::PeerAddr(peer));
        req
    });
    let conn = http1.serve_connection(io, TowerToHyperService::new(svc));
    watcher.watch(conn).await
}

/// Serves `app` on `listener` with the guards and limits of `cfg` (see the module docs) until `shutdown`
/// resolves, then lets requests in flight finish for at most `request_timeout_ms`. With `tls`, every
/// connection is TLS with that configuration; without, plain HTTP, which `cfg` must allow on the listener's
/// address ([`HttpConfig::scheme`]).
pub async fn serve<F>(
    listener: TcpListener,
    app: Router,
    cfg: &HttpConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send,
{
    let addr = listener.local_addr().map_err(ServeError::Listener)?;
    let acceptor = match tls {
        Some(tls) => {
            tracing::info!(%addr, "HTTP API served over TLS");
            Some(TlsAcceptor::from(tls))
        }
        None => {
            match cfg.scheme(addr.ip())? {
                HttpScheme::Tls => return Err(ServeError::TlsNotLoaded),
                HttpScheme::PlainInsecure => tracing::warn!(%addr,
                    "HTTP API served in plain HTTP on a non-loopback address (http.insecure_http = true): requests \
                     and answers travel unencrypted; set http.tls_cert and http.tls_key unless a TLS proxy \
                     fronts this address"),
                HttpScheme::PlainLoopback => tracing::debug!(%addr, "HTTP API served in plain HTTP on loopback"),
            }
            None
        }
    };
    let app = guarded(app, cfg, addr.ip())?;
    let slots = Arc::new(Semaphore::new(cfg.connections_max));
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(TokioTimer::new()).header_read_timeout(cfg.header_read_timeout()).keep_alive(true);
    let (handshake_timeout, send_timeout) = (cfg.header_read_timeout(), cfg.send_timeout());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept an HTTP connection; pausing");
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            () = &mut shutdown => break,
        };
        // Answers go out as soon as they are written (one write per response, no Nagle delay).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        // Taken here, before a shutdown can be signalled: a connection still in its TLS handshake when the
        // server stops is closed once the handshake ends (within `header_read_timeout_ms`).
        let watcher = graceful.watcher();
        let (http1, app, acceptor) = (http1.clone(), app.clone(), acceptor.clone());
        tokio::spawn(async move {
            let served = match acceptor {
                None => serve_connection(stream, &http1, app, peer, watcher, send_timeout).await,
                Some(acceptor) => match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => serve_connection(tls, &http1, app, peer, watcher, send_timeout).await,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        Ok(())
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake not complete within header_read_timeout_ms; closed");
                        Ok(())
                    }
                },
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    let open = graceful.count();
    if tokio::time::timeout(cfg.request_timeout(), graceful.shutdown()).await.is_err() {
        tracing::warn!(open, "HTTP connections still open after the drain period; dropping them");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_limits() {
        let cfg: HttpConfig = toml::from_str("").unwrap();
        assert_eq!(cfg, HttpConfig::default());
        assert_eq!((cfg.header_read_timeout_ms, cfg.send_timeout_ms, cfg.request_timeout_ms), (10_000, 30_000, 30_000));
        assert_eq!((cfg.connections_max, cfg.requests_in_flight_max), (512, 256));
        cfg.validate().unwrap();
        let cfg: HttpConfig = toml::from_str("allowed_hosts = [\"wh.example\"]\nconnections_max = 8").unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.allowed_hosts(IpAddr::from([10, 0, 0, 1])).unwrap().names(), ["wh.example"]);
        for bad in [
            "header_read_timeout_ms = 0",
            "header_read_timeout_ms = 300001",
            "request_timeout_ms = 99",
            "send_timeout_ms = 300001",
            "connections_max = 0",
            "requests_in_flight_max = 65537",
            "allowed_hosts = []",
            "allowed_hosts = [\"localhost:8081\"]",
        ] {
            let cfg: HttpConfig = toml::from_str(bad).unwrap();
            assert!(matches!(cfg.validate(), Err(ConfigError::Invalid(_))), "{bad}");
        }
        assert!(toml::from_str::<HttpConfig>("header_timeout_ms = 5").is_err(), "unknown key");
    }

    #[test]
    fn tls_keys_come_in_pairs_within_bounds() {
        let cfg: HttpConfig = toml::from_str("").unwrap();
        assert_eq!((cfg.tls_files(), cfg.insecure_http, cfg.tls_check_interval_ms), (None, false, 5_000));
        let cfg: HttpConfig = toml::from_str(
            "tls_cert = \"certs/http-wh1.pem\"\ntls_key = \"certs/http-wh1.key\"\ntls_check_interval_ms = 0",
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.tls_files(), Some((Path::new("certs/http-wh1.pem"), Path::new("certs/http-wh1.key"))));
        for (bad, names) in [
            ("tls_cert = \"a.pem\"", "tls_key"),
            ("tls_key = \"a.key\"", "tls_cert"),
            ("tls_check_interval_ms = 3600001", "tls_check_interval_ms"),
        ] {
            let cfg: HttpConfig = toml::from_str(bad).unwrap();
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(names), "{bad}: {e}");
        }
    }

    #[test]
    fn plain_http_beyond_loopback_needs_insecure_http() {
        let plain = HttpConfig::default();
        for ip in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(plain.scheme(ip.parse().unwrap()).unwrap(), HttpScheme::PlainLoopback, "{ip}");
        }
        for ip in ["0.0.0.0", "::", "10.1.2.3", "192.168.1.10", "2001:db8::1"] {
            let e = plain.scheme(ip.parse().unwrap()).unwrap_err().to_string();
            assert!(e.contains("tls_cert") && e.contains("insecure_http = true") && e.contains(ip), "{ip}: {e}");
        }
        let insecure = HttpConfig { insecure_http: true, ..HttpConfig::default() };
        assert_eq!(insecure.scheme(IpAddr::from([0, 0, 0, 0])).unwrap(), HttpScheme::PlainInsecure);
        assert_eq!(insecure.scheme(IpAddr::from([127, 0, 0, 1])).unwrap(), HttpScheme::PlainLoopback);
        let tls = HttpConfig { tls_cert: Some("c.pem".into()), tls_key: Some("c.key".into()), ..HttpConfig::default() };
        for ip in ["0.0.0.0", "127.0.0.1"] {
            assert_eq!(tls.scheme(ip.parse().unwrap()).unwrap(), HttpScheme::Tls, "{ip}");
        }
    }

    #[tokio::test]
    async fn serve_refuses_plain_http_on_a_reachable_address_and_tls_files_it_was_not_given() {
        let any = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let refused = serve(any, Router::new(), &HttpConfig::default(), None, std::future::pending()).await;
        assert!(
            matches!(refused, Err(ServeError::Config(ConfigError::Invalid(ref m))) if m.contains("insecure_http")),
            "{refused:?}"
        );
        let local = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tls = HttpConfig { tls_cert: Some("c.pem".into()), tls_key: Some("c.key".into()), ..HttpConfig::default() };
        let refused = serve(local, Router::new(), &tls, None, std::future::pending()).await;
        assert!(matches!(refused, Err(ServeError::TlsNotLoaded)), "{refused:?}");
        // Allowed explicitly: it serves (and stops when told).
        let any = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let insecure = HttpConfig { insecure_http: true, ..HttpConfig::default() };
        serve(any, Router::new(), &insecure, None, async {}).await.unwrap();
    }
}
