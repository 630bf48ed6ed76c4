//! The store's one error type, and the one mapping of redb's errors into it.

#[derive(Debug)]
pub enum StoreError {
    /// The database failed (I/O, lock held by another process, ...).
    Db(String),
    /// The storage failed (I/O error, disk full): the store reopens the file and
    /// retries; HTTP answers 503 naming the cause.
    Unavailable(String),
    /// A stored record cannot be read back.
    Corrupt(String),
    /// The blocking task running a store call failed.
    Task(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Db(m) => write!(f, "store: {m}"),
            StoreError::Unavailable(m) => write!(f, "store unavailable: {m}"),
            StoreError::Corrupt(m) => write!(f, "store is corrupt: {m}"),
            StoreError::Task(m) => write!(f, "store task failed: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Any redb error (transaction, table, storage, commit): storage failures (I/O,
/// "previous I/O error", closed) as [`StoreError::Unavailable`], the rest as
/// [`StoreError::Db`].
pub fn db_err(e: impl Into<redb::Error>) -> StoreError {
    let e = e.into();
    match e {
        redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Db(e.to_string()),
    }
}
