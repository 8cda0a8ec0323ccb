//! Storage failures that keep their cause: redb's error (disk full, I/O error, a file locked by another
//! process), an encoding failure or an I/O error, each with its source, so a log line or a problem's detail
//! shows the whole chain and code can still tell a full disk from a bug.

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
