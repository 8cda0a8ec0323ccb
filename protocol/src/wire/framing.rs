//! Framing: frames to length-prefixed bytes and back ([`FrameEncoder`], [`FrameDecoder`]), with the shared
//! deflate stream of each direction (see the parent module).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use std::fmt;

use super::*;

/// The tail every sync flush ends with; left off on the wire.
const SYNC_FLUSH_TAIL: [u8; 4] = [0, 0, 0xFF, 0xFF];
/// Deflate level of compressed frames: 6 is zlib's default balance; frames are small, so the cost is in the
/// per-frame flush, not the level.
const DEFLATE_LEVEL: u32 = 6;

/// Why bytes could not be turned into a frame, or a frame into bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The announced (or encoded) body length exceeds the limit; nothing was allocated for it.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The body is not a valid postcard [`Frame`].
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The body decoded but a field breaks a length limit.
    #[error("invalid frame: {what} out of bounds")]
    Invalid {
        /// Which field.
        what: &'static str,
    },
    /// A compressed body does not inflate (the peer's deflate stream is corrupt or out of step).
    #[error("compressed frame does not inflate: {0}")]
    Inflate(String),
    /// Our own compressor failed; the stream cannot continue.
    #[error("frame compression failed: {0}")]
    Deflate(String),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the partial frame.
        buffered: usize,
    },
}

impl WireError {
    /// The code to close the connection with.
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            WireError::Malformed(_)
            | WireError::Invalid { .. }
            | WireError::Truncated { .. }
            | WireError::Inflate(_) => ErrorCode::Malformed,
            WireError::Deflate(_) => ErrorCode::Internal,
        }
    }
}

/// Encodes `frame` as length prefix + body, appending to `out`.
pub fn encode_frame_into(frame: &Frame, frame_bytes_max: usize, out: &mut Vec<u8>) -> Result<(), WireError> {
    let body = encode_body(frame, frame_bytes_max)?;
    put_prefixed(out, &body, 0, frame_bytes_max)
}

/// The plain postcard body of a valid `frame`, refused if it exceeds `frame_bytes_max`.
fn encode_body(frame: &Frame, frame_bytes_max: usize) -> Result<Vec<u8>, WireError> {
    frame.validate()?;
    let body = postcard::to_allocvec(frame).map_err(|e| WireError::Malformed(e.to_string()))?;
    if body.len() > frame_bytes_max {
        return Err(WireError::FrameTooLarge { len: body.len(), max: frame_bytes_max });
    }
    Ok(body)
}

/// Appends the length prefix of `body` (with `flags` set in it) and `body`. `body` is at most
/// `frame_bytes_max` bytes (checked by the callers); a length that does not fit the prefix is refused.
fn put_prefixed(out: &mut Vec<u8>, body: &[u8], flags: u32, frame_bytes_max: usize) -> Result<(), WireError> {
    let len = body.len();
    let prefix = u32::try_from(len).map_err(|_| WireError::FrameTooLarge { len, max: frame_bytes_max })? | flags;
    out.reserve(LENGTH_PREFIX_BYTES + len);
    out.extend_from_slice(&prefix.to_le_bytes());
    out.extend_from_slice(body);
    Ok(())
}

/// Encodes the frames of one stream direction, deflating their bodies once [`FrameEncoder::enable_deflate`]
/// was called (both peers announced [`capabilities::DEFLATE`]). Frames must be written in the order they
/// were encoded: the compressed ones share one deflate stream.
pub struct FrameEncoder {
    frame_bytes_max: usize,
    /// Compression was agreed.
    deflate_agreed: bool,
    /// Boxed: the compressor's tables are ≈ 350 KiB, allocated with the first body of at least
    /// [`DEFLATE_START_BODY_BYTES`] after compression was agreed (a hub with a hundred sessions that only
    /// acknowledge would otherwise hold 35 MB of tables for nothing).
    deflate: Option<Box<Compress>>,
    /// Reused output buffer of the compressor.
    scratch: Vec<u8>,
}

impl fmt::Debug for FrameEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameEncoder")
            .field("frame_bytes_max", &self.frame_bytes_max)
            .field("deflate", &self.deflate.is_some())
            .finish()
    }
}

impl FrameEncoder {
    /// An encoder of bodies of at most `frame_bytes_max` bytes (before compression), not compressing yet.
    pub fn new(frame_bytes_max: usize) -> Self {
        Self { frame_bytes_max, deflate_agreed: false, deflate: None, scratch: Vec::new() }
    }

    /// Deflates the frames encoded from now on: from the first whose body has at least
    /// [`DEFLATE_START_BODY_BYTES`], every frame. Idempotent.
    pub fn enable_deflate(&mut self) {
        self.deflate_agreed = true;
    }

    /// True once frames are deflated.
    pub fn deflating(&self) -> bool {
        self.deflate.is_some()
    }

    /// Encodes `frame` as length prefix + (possibly deflated) body, appending to `out`. On error `out` is
    /// unchanged; after a [`WireError::Deflate`] the stream cannot continue.
    pub fn encode_into(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), WireError> {
        let body = encode_body(frame, self.frame_bytes_max)?;
        if self.deflate_agreed && self.deflate.is_none() && body.len() >= DEFLATE_START_BODY_BYTES {
            self.deflate = Some(Box::new(Compress::new(Compression::new(DEFLATE_LEVEL), false)));
        }
        let Some(z) = self.deflate.as_deref_mut() else {
            return put_prefixed(out, &body, 0, self.frame_bytes_max);
        };
        deflate_sync(z, &body, &mut self.scratch)?;
        let len = self.scratch.len();
        if len > self.frame_bytes_max {
            // The deflate stream already holds this body: the stream is out of step with what was sent.
            self.deflate = None;
            self.deflate_agreed = false;
            let too_large = WireError::FrameTooLarge { len, max: self.frame_bytes_max };
            return Err(WireError::Deflate(too_large.to_string()));
        }
        put_prefixed(out, &self.scratch, COMPRESSED_FLAG, self.frame_bytes_max)
    }
}

/// Deflates `body` into `out` (cleared first) with a sync flush and drops the flush's constant tail.
fn deflate_sync(z: &mut Compress, body: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
    out.clear();
    // Deflate never grows data by more than 5 bytes per 16 KiB stored block; the flush adds a few more.
    out.reserve(body.len() + body.len() / 1024 + 64);
    let start_in = z.total_in();
    // Bounded: every round either consumes input or fills the spare capacity, which then grows by at least
    // 64 bytes; the output of a sync flush is bounded by the bound above, so a handful of rounds suffice.
    for _ in 0..64 {
        let consumed = usize::try_from(z.total_in() - start_in).unwrap_or(usize::MAX).min(body.len());
        z.compress_vec(&body[consumed..], out, FlushCompress::Sync).map_err(|e| WireError::Deflate(e.to_string()))?;
        let consumed = usize::try_from(z.total_in() - start_in).unwrap_or(usize::MAX);
        if consumed >= body.len() && out.len() < out.capacity() {
            return match out.strip_suffix(&SYNC_FLUSH_TAIL) {
                Some(kept) => {
                    let kept = kept.len();
                    out.truncate(kept);
                    Ok(())
                }
                None => Err(WireError::Deflate("sync flush did not end with its tail".into())),
            };
        }
        out.reserve(out.capacity().max(64));
    }
    Err(WireError::Deflate("compressor made no progress".into()))
}

/// Inflates one compressed body with the stream's decompressor, refusing output beyond `max` bytes.
fn inflate_sync(z: &mut Decompress, body: &[u8], max: usize) -> Result<Vec<u8>, WireError> {
    let mut input = Vec::with_capacity(body.len() + SYNC_FLUSH_TAIL.len());
    input.extend_from_slice(body);
    input.extend_from_slice(&SYNC_FLUSH_TAIL);
    // At least 64 bytes to start with, never more than `max` + 1 (a limit below 63 bytes is allowed: `clamp`
    // would panic there; found by the `frame_decoder` fuzz target in CI).
    let mut out: Vec<u8> = Vec::with_capacity(body.len().saturating_mul(4).max(64).min(max.saturating_add(1)));
    let start_in = z.total_in();
    let mut consumed = 0usize;
    // Bounded: each round consumes input or fills the output, which grows until it passes `max`.
    for _ in 0..4096 {
        let before = (z.total_in(), z.total_out());
        let status = z
            .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
            .map_err(|e| WireError::Inflate(e.to_string()))?;
        consumed = usize::try_from(z.total_in() - start_in).unwrap_or(usize::MAX).min(input.len());
        if out.len() > max {
            return Err(WireError::FrameTooLarge { len: out.len(), max });
        }
        if status == flate2::Status::StreamEnd {
            return Err(WireError::Inflate("the deflate stream ended; frames never end it".into()));
        }
        if consumed >= input.len() && out.len() < out.capacity() {
            return Ok(out);
        }
        if out.len() == out.capacity() {
            let grow = out.capacity().min(max.saturating_add(1).saturating_sub(out.capacity())).max(1);
            out.reserve_exact(grow);
        } else if before == (z.total_in(), z.total_out()) {
            return Err(WireError::Inflate("no progress: truncated or corrupt deflate data".into()));
        }
    }
    Err(WireError::Inflate("body inflates in too many rounds".into()))
}

/// Encodes `frame` as length prefix + body with the default [`FRAME_BYTES_MAX`].
pub fn encode_frame(frame: &Frame) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    encode_frame_into(frame, FRAME_BYTES_MAX, &mut out)?;
    Ok(out)
}

/// Decodes one frame body (without length prefix).
pub fn decode_body(body: &[u8]) -> Result<Frame, WireError> {
    let (frame, rest) = postcard::take_from_bytes::<Frame>(body).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Malformed(format!("{} trailing bytes after frame", rest.len())));
    }
    frame.validate()?;
    Ok(frame)
}

/// Reads the body length from a length prefix, refusing it if it exceeds `frame_bytes_max`. A prefix with
/// [`COMPRESSED_FLAG`] reads as a length above any limit: use [`decode_prefix`] where compression is allowed.
pub fn decode_length(prefix: [u8; LENGTH_PREFIX_BYTES], frame_bytes_max: usize) -> Result<usize, WireError> {
    // cannot truncate: usize has at least 32 bits (asserted below).
    let len = u32::from_le_bytes(prefix) as usize;
    if len > frame_bytes_max {
        return Err(WireError::FrameTooLarge { len, max: frame_bytes_max });
    }
    Ok(len)
}

/// Reads a length prefix: the body length (checked against `frame_bytes_max`) and whether it is deflated.
pub fn decode_prefix(prefix: [u8; LENGTH_PREFIX_BYTES], frame_bytes_max: usize) -> Result<(usize, bool), WireError> {
    let raw = u32::from_le_bytes(prefix);
    let compressed = raw & COMPRESSED_FLAG != 0;
    // cannot truncate: usize has at least 32 bits (asserted below).
    let len = (raw & !COMPRESSED_FLAG) as usize;
    if len > frame_bytes_max {
        return Err(WireError::FrameTooLarge { len, max: frame_bytes_max });
    }
    Ok((len, compressed))
}

// The `u32 as usize` length casts above rely on this.
const _: () = assert!(usize::BITS >= 32);

/// Incremental decoder: feed it byte chunks of any size, take complete frames out. Deflated frames
/// ([`COMPRESSED_FLAG`]) are inflated with one decompressor per decoder, i.e. per stream direction.
///
/// Memory stays bounded by the largest accepted frame plus one pushed chunk: the length prefix is checked as
/// soon as it is complete, an inflated body may not exceed the same limit, and after an error the decoder
/// drops its buffer and refuses further input.
pub struct FrameDecoder {
    buf: Vec<u8>,
    frame_bytes_max: usize,
    failed: Option<WireError>,
    /// Created at the first deflated frame.
    inflate: Option<Box<Decompress>>,
}

impl fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("buffered", &self.buf.len())
            .field("frame_bytes_max", &self.frame_bytes_max)
            .field("failed", &self.failed)
            .field("inflate", &self.inflate.is_some())
            .finish()
    }
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(FRAME_BYTES_MAX)
    }
}

impl FrameDecoder {
    /// A decoder accepting bodies of at most `frame_bytes_max` bytes.
    pub fn new(frame_bytes_max: usize) -> Self {
        Self { buf: Vec::new(), frame_bytes_max, failed: None, inflate: None }
    }

    /// Appends received bytes. Ignored once the decoder has failed.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        // Check the prefix of the frame being assembled before buffering its body.
        if self.buf.len() < LENGTH_PREFIX_BYTES {
            let need = LENGTH_PREFIX_BYTES - self.buf.len();
            let (head, tail) = bytes.split_at(need.min(bytes.len()));
            self.buf.extend_from_slice(head);
            if self.buf.len() == LENGTH_PREFIX_BYTES
                && let Err(e) = self.prefix_len()
            {
                self.fail(e);
                return;
            }
            if !tail.is_empty() {
                self.buf.extend_from_slice(tail);
            }
        } else {
            self.buf.extend_from_slice(bytes);
        }
    }

    fn prefix_len(&self) -> Result<(usize, bool), WireError> {
        let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
        prefix.copy_from_slice(&self.buf[..LENGTH_PREFIX_BYTES]);
        decode_prefix(prefix, self.frame_bytes_max)
    }

    fn fail(&mut self, e: WireError) {
        self.buf = Vec::new();
        self.failed = Some(e);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed. After an error every call returns it.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.len() < LENGTH_PREFIX_BYTES {
            return Ok(None);
        }
        let (len, compressed) = match self.prefix_len() {
            Ok(prefix) => prefix,
            Err(e) => {
                self.fail(e.clone());
                return Err(e);
            }
        };
        let end = LENGTH_PREFIX_BYTES + len;
        if self.buf.len() < end {
            return Ok(None);
        }
        let body = &self.buf[LENGTH_PREFIX_BYTES..end];
        let result = if compressed {
            let z = self.inflate.get_or_insert_with(|| Box::new(Decompress::new(false)));
            inflate_sync(z, body, self.frame_bytes_max).and_then(|plain| decode_body(&plain))
        } else {
            decode_body(body)
        };
        self.buf.drain(..end);
        // A following frame's prefix may already be complete: check it now so an oversized one is refused
        // before its body is buffered by the next push.
        if self.buf.len() >= LENGTH_PREFIX_BYTES
            && let Err(e) = self.prefix_len()
        {
            self.fail(e);
        }
        match result {
            Ok(frame) => Ok(Some(frame)),
            Err(e) => {
                self.fail(e.clone());
                Err(e)
            }
        }
    }

    /// Call at end of stream: an error if a partial frame is buffered.
    pub fn finish(&self) -> Result<(), WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.is_empty() { Ok(()) } else { Err(WireError::Truncated { buffered: self.buf.len() }) }
    }

    /// Bytes buffered and not yet returned as a frame.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `frame_decoder` fuzz target: a compressed body under a limit below 63 bytes panicked
    /// (`clamp` with min > max) instead of refusing the frame as too large.
    #[test]
    fn a_compressed_body_under_a_tiny_limit_is_refused_not_a_panic() {
        let mut z = Compress::new(Compression::new(DEFLATE_LEVEL), false);
        let mut body = Vec::with_capacity(64);
        deflate_sync(&mut z, &[7u8; 200], &mut body).unwrap();
        for max in [0, 1, 62, 63] {
            let got = inflate_sync(&mut Decompress::new(false), &body, max);
            assert!(matches!(got, Err(WireError::FrameTooLarge { max: m, .. }) if m == max), "{max}: {got:?}");
        }
        assert_eq!(inflate_sync(&mut Decompress::new(false), &body, 200).unwrap(), vec![7u8; 200]);
    }
}
