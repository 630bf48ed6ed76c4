//! The store's epoch id: 16 random hex digits created with the store (meta table key
//! `epoch`) and never changed. Plans carry it and the ETag includes it, so a proxy can
//! tell a restored backup or a new store (another epoch, possibly lower versions)
//! from an old answer of the same store.

use crate::store::error::StoreError;

/// A new random epoch id (64 bits from the OS, hex).
pub fn new_epoch() -> Result<String, StoreError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| StoreError::Db(format!("cannot draw a random epoch id: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
