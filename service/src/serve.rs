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
//! HTTP/1.1 only, as before (`axum` is built without HTTP/2).

use std::future::Future;
use std::io;
use std::net::IpAddr;
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
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

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
/// How long the accept loop pauses after an error that is not one connection's (out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(500);

/// The `[http]` section of the node's and the hub's configuration: who may address the server and how much a
/// client may hold. Every key has a default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            allowed_hosts: None,
            header_read_timeout_ms: default_header_read_timeout_ms(),
            send_timeout_ms: default_send_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            connections_max: default_connections_max(),
            requests_in_flight_max: default_requests_in_flight_max(),
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
        Ok(())
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

/// Serves `app` on `listener` with the guards and limits of `cfg` (see the module docs) until `shutdown`
/// resolves, then lets requests in flight finish for at most `request_timeout_ms`.
pub async fn serve<F>(listener: TcpListener, app: Router, cfg: &HttpConfig, shutdown: F) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send,
{
    let addr = listener.local_addr().map_err(ServeError::Listener)?;
    let app = guarded(app, cfg, addr.ip())?;
    let slots = Arc::new(Semaphore::new(cfg.connections_max));
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(TokioTimer::new()).header_read_timeout(cfg.header_read_timeout()).keep_alive(true);
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
        let io = TokioIo::new(SendTimeout::new(stream, cfg.send_timeout()));
        // Each request carries its peer's address (the open routes' per-IP rate limit reads it).
        let svc =
            tower::ServiceExt::map_request(app.clone(), move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(crate::auth::PeerAddr(peer));
                req
            });
        let conn = http1.serve_connection(io, TowerToHyperService::new(svc));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
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
}
