//! Storage failures that keep their cause: redb's error (disk full, I/O error, a file locked by another
//! process), an encoding failure or an I/O error, each with its source, so a log line or a problem's detail
//! shows the whole chain and code can still tell a full disk from a bug.
//!
//! Every redb file of oms is opened through [`format::open`]: versioned (a newer format is refused, an older
//! one migrated after a copy), on a storage backend that lets a running process copy it as of one commit
//! ([`format::snapshot`], written out by [`archive`], requested through the [`admin`] socket).

#[cfg(all(unix, feature = "http"))]
pub mod admin;
pub mod archive;
mod backend;
pub mod crash;
pub mod format;
#[cfg(feature = "http")]
pub mod reserve;

pub use backend::FaultSwitch;
pub use format::{Format, Migration, OpenError, Opened, Options};

/// The storage under a store failed. Nothing of the failed transaction was committed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// redb failed.
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    /// A value could not be encoded for storage.
    #[error("encoding {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's error (postcard, serde_json).
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The file did not open: a newer format, another kind, damage, a lock (see [`OpenError`]).
    #[error(transparent)]
    Open(#[from] OpenError),
    /// An operating-system call around the store failed (such as starting the writer thread).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

impl StorageError {
    /// True if the disk is full: redb or the OS said `ENOSPC`.
    pub fn is_disk_full(&self) -> bool {
        let io = match self {
            StorageError::Redb(redb::Error::Io(e)) | StorageError::Io { source: e, .. } => e,
            _ => return false,
        };
        io.kind() == std::io::ErrorKind::StorageFull
    }

    /// An encoding failure of `what`.
    pub fn encode(what: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        StorageError::Encode { what, source: Box::new(source) }
    }
}

/// Implements `From<redb::…Error>` and `From<StorageError>` for an error enum with a `Storage(S)` variant,
/// where `S` is [`StorageError`] or anything it converts into (`Arc<StorageError>` for an error that must be
/// `Clone`), so `?` on any redb call keeps redb's error as the cause.
#[macro_export]
macro_rules! storage_errors_from_redb {
    ($err:ident) => {
        $crate::storage_errors_from_redb!(@each $err: redb::DatabaseError, redb::TransactionError,
            redb::TableError, redb::StorageError, redb::CommitError);
        impl From<redb::Error> for $err {
            fn from(e: redb::Error) -> Self {
                $err::Storage($crate::storage::StorageError::Redb(e).into())
            }
        }
        impl From<$crate::storage::OpenError> for $err {
            fn from(e: $crate::storage::OpenError) -> Self {
                $err::Storage($crate::storage::StorageError::Open(e).into())
            }
        }
        impl From<$crate::storage::StorageError> for $err {
            fn from(e: $crate::storage::StorageError) -> Self {
                $err::Storage(e.into())
            }
        }
    };
    (@each $err:ident: $($t:ty),*) => {$(
        impl From<$t> for $err {
            fn from(e: $t) -> Self {
                $err::Storage($crate::storage::StorageError::Redb(e.into()).into())
            }
        }
    )*};
}

/// The `[storage]` section of the node's and the hub's config.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Free space, bytes, kept on the data directory's file system: below it writes are refused with `507
    /// insufficient_storage` before they touch a file (reads go on), and resume when space returns. 0 turns
    /// the check off. Default 64 MiB.
    #[serde(default = "default_reserve_bytes")]
    pub reserve_bytes: u64,
}

/// Default of [`StorageConfig::reserve_bytes`].
pub const RESERVE_BYTES_DEFAULT: u64 = 64 << 20;

fn default_reserve_bytes() -> u64 {
    RESERVE_BYTES_DEFAULT
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig { reserve_bytes: RESERVE_BYTES_DEFAULT }
    }
}

/// Bytes the file system holding `dir` has free for this process (what `df` shows as available).
pub fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[derive(Debug, thiserror::Error)]
    enum Sample {
        #[error(transparent)]
        Storage(StorageError),
    }
    crate::storage_errors_from_redb!(Sample);

    #[test]
    fn a_redb_error_stays_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.redb");
        let _db = redb::Database::create(&path).unwrap();
        // A second open of the same file fails while the first holds it.
        let e: Sample = redb::Database::create(&path).map(|_| ()).unwrap_err().into();
        let Sample::Storage(StorageError::Redb(inner)) = &e else { panic!("{e:?}") };
        assert!(matches!(inner, redb::Error::DatabaseAlreadyOpen), "{inner:?}");
        assert!(e.source().is_some(), "the chain goes on to redb's error");
    }
}
