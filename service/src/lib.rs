//! Service plumbing that the node and the hub share and that is no business of the sync contract: RFC 9457
//! problems and the body extractors that produce them, body limits, reading an order request, the request
//! guards against browser-borne requests ([`guard`]: host allow-list, origin check, content types), the HTTP
//! server loop with its timeouts and connection limits ([`serve`]), loading a TOML config, the wall clock, a
//! poison-tolerant lock (and one that counts its waits and holds, [`timed`]), and storage errors that keep
//! redb's error as their cause.
//!
//! It exists so that the hub never depends on the node (nor the node on the hub): both depend on this crate,
//! on `oms-protocol` for the contract and on `oms-sync` for the I/O half of sync.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs, unreachable_pub)]

#[cfg(feature = "http")]
pub mod audit;
#[cfg(feature = "http")]
pub mod auth;
pub mod config;
#[cfg(feature = "http")]
pub mod guard;
#[cfg(feature = "http")]
pub mod openapi;
#[cfg(feature = "http")]
pub mod problem;
#[cfg(feature = "http")]
pub mod request;
#[cfg(feature = "http")]
pub mod serve;
pub mod storage;
pub mod timed;
#[cfg(feature = "http")]
pub mod web;

#[cfg(feature = "http")]
pub use problem::{JsonBody, Problem, RawBody, parse_json};
pub use timed::{LockTimes, TimedMutex};

use std::sync::{Mutex, MutexGuard};

/// Milliseconds since the Unix epoch: the one wall clock the node and the hub read (sessions, status pages,
/// records). 0 if the system clock is before 1970; saturates in the year 584,556,019.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Locks `m`, taking the data even if another thread panicked while holding it: every lock in oms guards data
/// that is consistent between statements (a panic cannot leave half an update behind it), and a server that
/// stopped serving after one panicked request would turn a bug into an outage.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_yields_its_data() {
        let m = std::sync::Arc::new(Mutex::new(5));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 6);
    }

    #[test]
    fn the_clock_is_after_2024() {
        assert!(now_ms() > 1_704_067_200_000);
    }
}
