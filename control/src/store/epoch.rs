//! The store's epoch id: 16 random hex digits drawn each time the store opens and
//! written to the file (meta table key `epoch`). Plans served by `GET /v1/plan` carry
//! it and their ETag includes it (`"v12.<epoch>"`), so a proxy takes a plan of
//! another epoch even when its version is lower: a restored backup or a new store
//! starts its versions over. Drawn per open, not per file, because a backup copied
//! back is byte for byte the file it was when taken: only the sidecar that opens it
//! can tell the proxies "this is another incarnation". A restart of the same store
//! costs each proxy one full plan answer (same version, new epoch) instead of a 304.

use crate::store::error::StoreError;

/// A new random epoch id (64 bits from the OS, hex).
pub fn new_epoch() -> Result<String, StoreError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| StoreError::Db(format!("cannot draw a random epoch id: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
