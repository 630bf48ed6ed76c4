//! Store calls block (redb reads and fsynced commits): async code runs them on
//! tokio's blocking pool through [`blocking`].

use crate::store::error::StoreError;

/// Runs a store call on the blocking pool; a failed task is a [`StoreError::Task`].
pub async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => Err(StoreError::Task(e.to_string()).into()),
    }
}
