//! The I/O half of one sync connection, shared by the node and the hub: a reader task that turns a QUIC
//! receive stream into frames, and a frame writer with a deadline.
//!
//! Reading lives in its own task because a driver must wait for a frame, a local change and a timer at the
//! same time, and a half-read frame must not be lost when another branch of a `select!` wins: the reader
//! keeps its partial frame in a [`FrameDecoder`] across reads. The channel to the driver is bounded, so a
//! slow driver stops the reader, which stops QUIC flow credit, which stops the peer.

use std::time::Duration;

use oms_protocol::wire::{ErrorCode, Frame, FrameDecoder, FrameEncoder};
use oms_transport::{EndpointError, FrameIoError};

use crate::docdb::DocDbError;

/// Why one sync connection ended. The driver logs it and (on the node) reconnects after a backoff.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Connecting, opening or accepting the stream failed.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// Reading or writing frames failed, or the peer sent bytes that are not a frame.
    #[error(transparent)]
    Frames(#[from] FrameIoError),
    /// Persisting documents or sync states failed.
    #[error(transparent)]
    Db(#[from] DocDbError),
    /// The peer's verified certificate names someone else.
    #[error("peer is {seen}, expected {expected}")]
    WrongPeer {
        /// Who the certificate says.
        seen: String,
        /// Who we wanted.
        expected: String,
    },
    /// Nothing arrived from the hub for this long although we pinged it: the path is probably down, and a
    /// fresh connection (whose handshake is retried from scratch) finds it again sooner than a QUIC
    /// connection whose retransmission timer has backed off.
    #[error("no frame from the hub for {silent_ms} ms")]
    Silent {
        /// How long.
        silent_ms: u64,
    },
    /// The session was refused, by the peer or by us.
    #[error("session closed with {code} (by peer: {by_peer}): {reason}")]
    Closed {
        /// The code.
        code: ErrorCode,
        /// For a person.
        reason: String,
        /// True if the peer closed it.
        by_peer: bool,
    },
}
use quinn::{RecvStream, SendStream};
use tokio::sync::mpsc;

/// Bytes asked from QUIC per read.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Spawns the reader of `recv`. The receiver yields frames, then at most one error; it ends (`None`) when
/// the peer finished the stream cleanly. At most `frames_queued_max` decoded frames wait for the driver.
pub fn spawn_reader(
    mut recv: RecvStream,
    frame_bytes_max: usize,
    frames_queued_max: usize,
) -> mpsc::Receiver<Result<Frame, FrameIoError>> {
    let (tx, rx) = mpsc::channel(frames_queued_max.max(1));
    tokio::spawn(async move {
        let mut decoder = FrameDecoder::new(frame_bytes_max);
        loop {
            let chunk = match recv.read_chunk(READ_CHUNK_BYTES, true).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => {
                    if let Err(e) = decoder.finish() {
                        let _ = tx.send(Err(e.into())).await;
                    }
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            };
            decoder.push(&chunk.bytes);
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => {
                        if tx.send(Ok(frame)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Writes `frames` in order, as one write, within `timeout`. `encoder` is this stream's: it deflates once
/// both sides agreed to (`capabilities::DEFLATE`), and its dictionary follows the stream.
pub async fn write_frames(
    send: &mut SendStream,
    frames: &[Frame],
    encoder: &mut FrameEncoder,
    timeout: Duration,
) -> Result<(), FrameIoError> {
    if frames.is_empty() {
        return Ok(());
    }
    let mut bytes = Vec::new();
    for f in frames {
        encoder.encode_into(f, &mut bytes)?;
    }
    let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    tokio::time::timeout(timeout, send.write_all(&bytes))
        .await
        .map_err(|_| FrameIoError::Timeout { what: "writing frames", ms })??;
    Ok(())
}
