//! The I/O half of one sync connection, shared by the node and the hub: a reader task that turns a QUIC
//! receive stream into frames, a frame writer with a deadline, and the [`Linger`] that lets a driver hold
//! its answers briefly so that one flush and one write carry them with what it sends next.
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
use tokio::time::Instant;

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

/// Most a driver may hold its answers (`answer_linger_ms` in the node's and the hub's configuration): a few
/// milliseconds serve; more only delays acknowledgements.
pub const ANSWER_LINGER_MS_MAX: u64 = 10_000;
/// Default of `answer_linger_ms`: about a site's store commit, or the time between two orders under load.
pub const ANSWER_LINGER_MS: u64 = 2;

/// A frame about one document (Automerge's sync messages and their acknowledgements), whose answers may be
/// held ([`Linger`]); any other (a handshake, a manifest, a ping, a refusal) is answered at once.
pub fn may_hold_answer(frame: &Frame) -> bool {
    matches!(frame, Frame::Sync { .. } | Frame::Ack { .. })
}

/// Whether a driver writes its answers now or holds them a little, and the bookkeeping of the frames it
/// handled since its last flush and write.
///
/// Every pass of a driver flushes its documents (an fsync) before it writes what its session produced:
/// durable before acknowledged. A pass that only answers the peer (acknowledgements, heads) is worth holding
/// when something of this side's own will follow shortly and can share the flush and the write: at a site, the
/// progress it writes into an assignment it just received (the store's commit, a millisecond or two later); at
/// the hub, the next documents it sends (under load a new order every millisecond or so). Nothing is sent
/// before it is durable either way (the hub's one exception, a new fulfillment document that a start rebuilds
/// the same, goes around this: `oms_hub::server::early_frames`); holding only delays an answer, by at most
/// `hold_ms`, and never past `frames_max` frames handled, a frame that is not a document's
/// ([`may_hold_answer`]), or the driver's own bound (`full`). `hold_ms` 0 answers at once.
///
/// The driver's part: [`Linger::handled`] for each frame it hands its session, [`Linger::answer_now`] for a
/// frame of its own that must not wait (a ping), [`Linger::holds`] once per pass, [`Linger::release`] when
/// its own changes are ready, and [`Linger::expired`] as a branch of its `select!`.
///
/// Sans-clock: the driver passes the time, so the tests run without a runtime.
#[derive(Debug, Clone)]
pub struct Linger {
    hold_ms: u64,
    frames_max: usize,
    until: Option<Instant>,
    /// Frames handled since the last flush and write.
    unanswered: usize,
    /// A document's frame was handled since the last pass.
    documents: bool,
    /// Something handled or queued since the last pass must go at once.
    urgent: bool,
}

impl Linger {
    /// A linger of at most `hold_ms` per held answer, ended by `frames_max` (at least 1) frames handled.
    pub fn new(hold_ms: u64, frames_max: usize) -> Self {
        Self { hold_ms, frames_max: frames_max.max(1), until: None, unanswered: 0, documents: false, urgent: false }
    }

    /// The driver hands `frame` to its session. A document's frame may wait for its answer; any other (a
    /// handshake, a manifest, a ping, a refusal) is answered by the next pass.
    pub fn handled(&mut self, frame: &Frame) {
        self.unanswered += 1;
        if may_hold_answer(frame) {
            self.documents = true;
        } else {
            self.urgent = true;
        }
    }

    /// Whether the next pass has room for one more frame before it must flush and write.
    pub fn has_room(&self) -> bool {
        self.unanswered < self.frames_max
    }

    /// The driver queued a frame of its own that must not wait (its ping): the next pass writes.
    pub fn answer_now(&mut self) {
        self.urgent = true;
    }

    /// Whether a document's frame was handled since the last pass: the hub's reason to start a hold.
    pub fn documents_handled(&self) -> bool {
        self.documents
    }

    /// Called once per pass, before the flush and write: true if they are to wait. `starts` says that this
    /// pass has answers worth holding (it starts a hold unless one is running; a running hold is not
    /// extended); `full` that the driver's own bound is reached, which ends any hold, as do `frames_max`
    /// frames handled, an urgent frame, the deadline and [`Linger::release`]. When it returns false the
    /// driver flushes and writes, and the count of frames handled starts again.
    pub fn holds(&mut self, now: Instant, starts: bool, full: bool) -> bool {
        let full = full || std::mem::take(&mut self.urgent) || self.unanswered >= self.frames_max;
        self.documents = false;
        let hold = self.hold_ms != 0 && !full && {
            if starts && self.until.is_none() {
                self.until = Some(now + Duration::from_millis(self.hold_ms));
            }
            self.until.is_some_and(|t| now < t)
        };
        if !hold {
            self.until = None;
            self.unanswered = 0;
        }
        hold
    }

    /// Something of this side's own is ready to go: end the hold, so that the next pass flushes and writes.
    pub fn release(&mut self) {
        self.until = None;
    }

    /// When the running hold ends (`None`: no hold); the drivers wait on [`Linger::expired`].
    #[cfg(test)]
    fn deadline(&self) -> Option<Instant> {
        self.until
    }

    /// For the driver's `select!`: completes at the running hold's deadline, never if there is none. It
    /// borrows nothing, so the branch's handler may use the linger.
    pub fn expired(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let until = self.until;
        async move {
            match until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn sync_frame() -> Frame {
        Frame::Sync { doc: oms_protocol::wire::DocId::new("order/wh-a-1").unwrap(), msg: Vec::new() }
    }

    #[test]
    fn a_hold_lasts_until_its_deadline_and_is_not_extended() {
        let t0 = Instant::now();
        let mut l = Linger::new(2, 100);
        assert!(!l.holds(t0, false, false), "nothing answered: no hold");
        assert!(l.holds(t0, true, false), "an answer starts a hold");
        assert_eq!(l.deadline(), Some(t0 + 2 * MS));
        // More answers while holding do not push the deadline on.
        assert!(l.holds(t0 + MS, true, false));
        assert_eq!(l.deadline(), Some(t0 + 2 * MS));
        assert!(!l.holds(t0 + 2 * MS, true, false), "the deadline ends it");
        assert_eq!(l.deadline(), None);
        // The next answer starts a new one.
        assert!(l.holds(t0 + 3 * MS, true, false));
        assert_eq!(l.deadline(), Some(t0 + 5 * MS));
    }

    #[test]
    fn only_a_documents_frames_may_wait_for_their_answers() {
        let doc = oms_protocol::wire::DocId::new("order/wh-a-1").unwrap();
        assert!(may_hold_answer(&Frame::Sync { doc: doc.clone(), msg: Vec::new() }));
        assert!(may_hold_answer(&Frame::Ack { doc: doc.clone(), heads: Vec::new() }));
        assert!(!may_hold_answer(&Frame::Refused { doc, code: ErrorCode::NotEntitled }));
        assert!(!may_hold_answer(&Frame::Ping { nonce: 1 }));
        assert!(!may_hold_answer(&Frame::Pong { nonce: 1 }));
    }

    #[test]
    fn a_hold_ends_when_released_or_full_and_zero_never_holds() {
        let t0 = Instant::now();
        let mut l = Linger::new(5, 100);
        assert!(l.holds(t0, true, false));
        l.release();
        assert_eq!(l.deadline(), None);
        assert!(!l.holds(t0 + MS, false, false), "released: the pass flushes and writes");
        assert!(l.holds(t0 + MS, true, false));
        assert!(!l.holds(t0 + 2 * MS, true, true), "the driver's bound ends it");
        assert_eq!(l.deadline(), None);
        let mut never = Linger::new(0, 100);
        never.handled(&sync_frame());
        assert!(!never.holds(t0, true, false));
        assert_eq!(never.deadline(), None);
    }

    #[test]
    fn documents_frames_may_wait_other_frames_and_own_pings_go_at_once() {
        let t0 = Instant::now();
        let mut l = Linger::new(5, 100);
        l.handled(&sync_frame());
        assert!(l.documents_handled());
        assert!(l.holds(t0, l.documents_handled(), false), "a document's answer waits");
        assert!(!l.documents_handled(), "noted per pass");
        l.handled(&Frame::Ping { nonce: 1 });
        assert!(!l.documents_handled());
        assert!(!l.holds(t0 + MS, true, false), "a ping from the peer is answered at once");
        assert_eq!(l.deadline(), None);
        assert!(l.holds(t0 + MS, true, false), "urgency lasts one pass");
        l.answer_now();
        assert!(!l.holds(t0 + 2 * MS, true, false), "our own ping is written at once");
        assert!(l.holds(t0 + 2 * MS, true, false));
    }

    #[test]
    fn frames_max_frames_handled_end_a_hold_and_a_write_starts_the_count_again() {
        let t0 = Instant::now();
        let mut l = Linger::new(5, 3);
        assert!(l.has_room());
        l.handled(&sync_frame());
        l.handled(&sync_frame());
        assert!(l.holds(t0, true, false), "two frames of three: hold");
        l.handled(&sync_frame());
        assert!(!l.has_room(), "the third fills the pass");
        assert!(!l.holds(t0 + MS, true, false), "three frames: flush and write");
        assert!(l.has_room(), "counting again after the write");
        l.handled(&sync_frame());
        l.handled(&sync_frame());
        assert!(l.holds(t0 + MS, true, false), "the count started again");
        assert!(Linger::new(5, 0).has_room(), "frames_max is at least 1");
    }

    #[tokio::test(start_paused = true)]
    async fn expired_completes_at_the_deadline_and_never_without_a_hold() {
        let mut l = Linger::new(5, 100);
        let idle = l.expired();
        let t0 = Instant::now();
        assert!(l.holds(t0, true, false));
        let hold = l.expired();
        l.release();
        hold.await;
        assert_eq!(Instant::now(), t0 + 5 * MS, "at the deadline taken when the future was made");
        tokio::select! {
            () = idle => panic!("no hold: never completes"),
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
}
