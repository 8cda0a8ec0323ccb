//! The disk reserve over HTTP: a request that may write (any method but GET, HEAD and OPTIONS) is refused
//! with `507 insufficient_storage` while the data directory's file system has less than
//! `[storage] reserve_bytes` free, before it reaches a handler; reads go on. The node checks the same reserve
//! in its writer thread (every write goes through it); the hub writes from many handlers, so it checks here,
//! once per request: one `statvfs`, a few microseconds.

use std::path::PathBuf;

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::problem::Problem;

/// Where the data lives and how much free space to keep there. Added to a router as an
/// `axum::Extension`; without it [`refuse_writes_below_reserve`] lets everything through.
#[derive(Debug, Clone)]
pub struct DiskReserve {
    /// The data directory.
    pub dir: PathBuf,
    /// Bytes kept free; 0 turns the check off.
    pub reserve_bytes: u64,
}

impl DiskReserve {
    /// The refusal, if the file system holding [`DiskReserve::dir`] has less than the reserve free. A
    /// failing `statvfs` refuses nothing: the write itself then meets whatever the disk does.
    pub fn check(&self) -> Result<(), Problem> {
        if self.reserve_bytes == 0 {
            return Ok(());
        }
        match super::free_bytes(&self.dir) {
            Ok(free) if free < self.reserve_bytes => Err(Problem::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                format!(
                    "insufficient storage: {free} bytes free, {} kept in reserve; nothing was written. Reads \
                     go on, and writes resume once space is freed",
                    self.reserve_bytes
                ),
            )
            .with("free_bytes", free)
            .with("reserve_bytes", self.reserve_bytes)),
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, dir = %self.dir.display(), "cannot read the free space of the data directory");
                Ok(())
            }
        }
    }
}

/// Middleware: refuses a request that may write while the disk is below its reserve (see the module).
pub async fn refuse_writes_below_reserve(req: Request, next: Next) -> Response {
    let reads = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !reads
        && let Some(reserve) = req.extensions().get::<DiskReserve>()
        && let Err(p) = reserve.check()
    {
        tracing::warn!(path = %req.uri().path(), "write refused: the disk is below its reserve");
        return p.into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_above_the_free_space_refuses_and_zero_turns_it_off() {
        let dir = tempfile::tempdir().unwrap();
        let free = super::super::free_bytes(dir.path()).unwrap();
        let short = DiskReserve { dir: dir.path().to_owned(), reserve_bytes: free.saturating_mul(2).max(1 << 40) };
        let p = short.check().unwrap_err();
        assert_eq!(p.status, 507);
        assert_eq!(p.code, "insufficient_storage");
        assert!(DiskReserve { dir: dir.path().to_owned(), reserve_bytes: 0 }.check().is_ok());
        assert!(DiskReserve { dir: dir.path().to_owned(), reserve_bytes: 1 }.check().is_ok());
    }
}
