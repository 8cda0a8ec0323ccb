//! quinn endpoints for the hub and nodes, and the small helpers every driver needs: connect and open streams
//! with a deadline, read and write [`Frame`]s with the size limit, close a connection with a typed
//! [`ErrorCode`], and read the peer's verified [`Identity`].
//!
//! Every wait has a deadline: quinn's `open_bi()` waits for stream credit forever, and a peer that stops
//! reading would otherwise hold a task forever too.

use crate::pki::{CertInfo, Identity, PkiError, cert_info, identity_from_cert_der};
use crate::tls::{ClientTlsFiles, ServerTlsFiles, TlsError, client_config, server_config};
use oms_protocol::wire::{self, ErrorCode, Frame, LENGTH_PREFIX_BYTES, WireError};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, IdleTimeout, RecvStream, SendStream, TransportConfig, VarInt};
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Transport limits, applied to both sides.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Keep-alive ping interval, in milliseconds.
    pub keep_alive_interval_ms: u64,
    /// Idle time after which a connection is dropped, in milliseconds.
    pub max_idle_timeout_ms: u64,
    /// Concurrent bidirectional streams the peer may open.
    pub bidi_streams_max: u32,
    /// Bytes the peer may send on one stream before we read them.
    pub stream_receive_window_bytes: u32,
    /// Bytes the peer may send on the whole connection before we read them.
    pub receive_window_bytes: u32,
    /// Bytes we buffer for sending across all streams.
    pub send_window_bytes: u64,
    /// Largest frame body read or written.
    pub frame_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            keep_alive_interval_ms: 5_000,
            max_idle_timeout_ms: 30_000,
            bidi_streams_max: 16,
            // Per connection, what a peer may have in flight is what the hub may hold for it: with 8 / 16 MiB
            // windows, 100 nodes catching up kept the hub ≈ 225 MB larger at 320,000 documents than with these
            // (quinn holds received datagrams' buffers until the stream is read). 1 MiB per stream still
            // allows 10 MB/s per node at 100 ms round trip, far more than order sync needs.
            stream_receive_window_bytes: 1024 * 1024,
            receive_window_bytes: 2 * 1024 * 1024,
            send_window_bytes: 2 * 1024 * 1024,
            frame_bytes_max: wire::FRAME_BYTES_MAX,
        }
    }
}

/// Errors of endpoint setup and connection establishment.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// quinn refused the TLS configuration (e.g. not TLS 1.3 capable).
    #[error("quic crypto config: {0}")]
    Crypto(String),
    /// Binding the UDP socket failed.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The connection attempt could not start.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The handshake failed (including every certificate refusal).
    #[error("handshake: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// A wait exceeded its deadline.
    #[error("timed out after {ms} ms while {what}")]
    Timeout {
        /// What we were waiting for.
        what: &'static str,
        /// The deadline.
        ms: u64,
    },
    /// The peer's certificate carries no acceptable identity.
    #[error("peer identity: {0}")]
    Identity(#[from] PkiError),
    /// The connection has no peer certificate (cannot happen with our configs).
    #[error("peer presented no certificate")]
    NoPeerCertificate,
}

/// The quinn transport configuration built from `limits`.
pub fn transport_config(limits: &Limits) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_millis(limits.keep_alive_interval_ms)));
    // IdleTimeout only refuses values beyond 2^62 ms; fall back to 30 s rather than fail.
    let idle = IdleTimeout::try_from(Duration::from_millis(limits.max_idle_timeout_ms))
        .unwrap_or_else(|_| IdleTimeout::from(VarInt::from_u32(30_000)));
    t.max_idle_timeout(Some(idle));
    t.max_concurrent_bidi_streams(VarInt::from_u32(limits.bidi_streams_max));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.stream_receive_window(VarInt::from_u32(limits.stream_receive_window_bytes));
    t.receive_window(VarInt::from_u32(limits.receive_window_bytes));
    t.send_window(limits.send_window_bytes);
    t
}

/// A hub endpoint listening on `addr` (use port 0 in tests; `Endpoint::local_addr` tells the port).
pub fn server_endpoint(addr: SocketAddr, tls: &ServerTlsFiles, limits: &Limits) -> Result<Endpoint, EndpointError> {
    server_endpoint_with(addr, server_config(tls)?, limits)
}

/// A hub endpoint with a rustls configuration already built (by `tls::server_tls`, whose reloading parts
/// the caller keeps).
pub fn server_endpoint_with(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    limits: &Limits,
) -> Result<Endpoint, EndpointError> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| EndpointError::Crypto(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport_config(limits)));
    Endpoint::server(cfg, addr).map_err(|source| EndpointError::Bind { addr, source })
}

/// A node endpoint bound to `addr` (usually `0.0.0.0:0` or `127.0.0.1:0`).
pub fn client_endpoint(addr: SocketAddr, tls: &ClientTlsFiles, limits: &Limits) -> Result<Endpoint, EndpointError> {
    client_endpoint_with(addr, client_config(tls)?, limits)
}

/// A node endpoint with a rustls configuration already built (by `tls::client_tls`, whose reloading
/// certificate the caller keeps).
pub fn client_endpoint_with(
    addr: SocketAddr,
    tls: rustls::ClientConfig,
    limits: &Limits,
) -> Result<Endpoint, EndpointError> {
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| EndpointError::Crypto(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport_config(limits)));
    let mut endpoint = Endpoint::client(addr).map_err(|source| EndpointError::Bind { addr, source })?;
    endpoint.set_default_client_config(cfg);
    Ok(endpoint)
}

/// Connects to the hub at `addr`, verifying it as `server_name`, within `timeout`.
pub async fn connect(
    endpoint: &Endpoint,
    addr: SocketAddr,
    server_name: &str,
    timeout: Duration,
) -> Result<Connection, EndpointError> {
    let connecting = endpoint.connect(addr, server_name)?;
    with_timeout(timeout, "connecting", async { Ok(connecting.await?) }).await
}

async fn with_timeout<T>(
    timeout: Duration,
    what: &'static str,
    fut: impl Future<Output = Result<T, EndpointError>>,
) -> Result<T, EndpointError> {
    let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    tokio::time::timeout(timeout, fut).await.map_err(|_| EndpointError::Timeout { what, ms })?
}

/// The peer's verified certificate chain, leaf first.
pub fn peer_certificates(conn: &Connection) -> Result<Vec<CertificateDer<'static>>, EndpointError> {
    let any = conn.peer_identity().ok_or(EndpointError::NoPeerCertificate)?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().map_err(|_| EndpointError::NoPeerCertificate)?;
    if certs.is_empty() {
        return Err(EndpointError::NoPeerCertificate);
    }
    Ok(*certs)
}

/// The identity in the peer's verified certificate.
pub fn peer_identity(conn: &Connection) -> Result<Identity, EndpointError> {
    let certs = peer_certificates(conn)?;
    let leaf = certs.first().ok_or(EndpointError::NoPeerCertificate)?;
    Ok(identity_from_cert_der(leaf)?)
}

/// Identity, serial and validity of the peer's verified certificate.
pub fn peer_cert_info(conn: &Connection) -> Result<CertInfo, EndpointError> {
    let certs = peer_certificates(conn)?;
    let leaf = certs.first().ok_or(EndpointError::NoPeerCertificate)?;
    Ok(cert_info(leaf)?)
}

/// Opens a bidirectional stream, giving up after `timeout` (e.g. when the peer grants no stream credit).
pub async fn open_bi(conn: &Connection, timeout: Duration) -> Result<(SendStream, RecvStream), EndpointError> {
    with_timeout(timeout, "opening a stream", async { Ok(conn.open_bi().await?) }).await
}

/// Accepts the peer's next bidirectional stream within `timeout`.
pub async fn accept_bi(conn: &Connection, timeout: Duration) -> Result<(SendStream, RecvStream), EndpointError> {
    with_timeout(timeout, "accepting a stream", async { Ok(conn.accept_bi().await?) }).await
}

/// Closes `conn` with `code` as the QUIC application error code.
pub fn close(conn: &Connection, code: ErrorCode, reason: &str) {
    let reason = reason.as_bytes();
    conn.close(VarInt::from_u32(code.as_u32()), &reason[..reason.len().min(wire::REASON_BYTES_MAX)]);
}

/// The typed code a connection was closed with by the peer, if it was an application close.
pub fn close_code(err: &quinn::ConnectionError) -> Option<ErrorCode> {
    match err {
        quinn::ConnectionError::ApplicationClosed(close) => {
            Some(ErrorCode::from_u32(u32::try_from(close.error_code.into_inner()).unwrap_or(u32::MAX)))
        }
        _ => None,
    }
}

/// Errors reading or writing frames on a stream.
#[derive(Debug, thiserror::Error)]
pub enum FrameIoError {
    /// The bytes are not a valid frame (too large, malformed, truncated).
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Reading failed (connection lost, stream reset).
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    /// Writing failed (connection lost, stream stopped).
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// The wait exceeded the stream's I/O timeout.
    #[error("timed out after {ms} ms while {what}")]
    Timeout {
        /// What we were waiting for.
        what: &'static str,
        /// The deadline.
        ms: u64,
    },
}

impl FrameIoError {
    /// The code to close the connection with.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameIoError::Wire(e) => e.code(),
            FrameIoError::Timeout { .. } => ErrorCode::Timeout,
            FrameIoError::Read(_) | FrameIoError::Write(_) => ErrorCode::Internal,
        }
    }
}

/// A bidirectional stream carrying [`Frame`]s, with a size limit and a deadline on every read and write.
#[derive(Debug)]
pub struct FramedStream {
    /// Sending half.
    pub send: SendStream,
    /// Receiving half.
    pub recv: RecvStream,
    frame_bytes_max: usize,
    io_timeout: Duration,
}

impl FramedStream {
    /// Wraps a stream.
    pub fn new(send: SendStream, recv: RecvStream, frame_bytes_max: usize, io_timeout: Duration) -> Self {
        Self { send, recv, frame_bytes_max, io_timeout }
    }

    fn timeout_ms(&self) -> u64 {
        u64::try_from(self.io_timeout.as_millis()).unwrap_or(u64::MAX)
    }

    /// Writes one frame.
    pub async fn write_frame(&mut self, frame: &Frame) -> Result<(), FrameIoError> {
        let mut bytes = Vec::new();
        wire::encode_frame_into(frame, self.frame_bytes_max, &mut bytes)?;
        let ms = self.timeout_ms();
        tokio::time::timeout(self.io_timeout, self.send.write_all(&bytes))
            .await
            .map_err(|_| FrameIoError::Timeout { what: "writing a frame", ms })??;
        Ok(())
    }

    /// Reads one frame; `Ok(None)` when the peer finished the stream cleanly between frames. The length
    /// prefix is checked against the limit before the body buffer is allocated.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, FrameIoError> {
        let ms = self.timeout_ms();
        let timeout = |what| move |_| FrameIoError::Timeout { what, ms };
        let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
        let mut got = 0;
        while got < LENGTH_PREFIX_BYTES {
            match tokio::time::timeout(self.io_timeout, self.recv.read(&mut prefix[got..]))
                .await
                .map_err(timeout("reading a frame length"))??
            {
                Some(n) => got += n,
                None if got == 0 => return Ok(None),
                None => return Err(WireError::Truncated { buffered: got }.into()),
            }
        }
        let len = wire::decode_length(prefix, self.frame_bytes_max)?;
        let mut body = vec![0u8; len];
        match tokio::time::timeout(self.io_timeout, self.recv.read_exact(&mut body))
            .await
            .map_err(timeout("reading a frame body"))?
        {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(n)) => {
                return Err(WireError::Truncated { buffered: LENGTH_PREFIX_BYTES + n }.into());
            }
            Err(quinn::ReadExactError::ReadError(e)) => return Err(e.into()),
        }
        Ok(Some(wire::decode_body(&body)?))
    }

    /// Finishes the sending half (the peer reads `Ok(None)` after the last frame).
    pub fn finish(&mut self) {
        // Already finished or reset: nothing left to do.
        let _ = self.send.finish();
    }
}
