//! Deleting a rollout's experiment data, to run a new experiment under the same name:
//! its assignments and its outcomes, in one transaction.

use crate::api::experiment::ResetResult;
use crate::store::budget::Ledger;
use crate::store::error::{db_err, StoreError};
use crate::store::{assignments, outcomes, Store};

/// Deletes every assignment and outcome of a rollout. Blocking.
pub fn reset(store: &Store, rollout: &str) -> Result<ResetResult, StoreError> {
    let tx = store.begin_write()?;
    let mut ledger = Ledger::open(&tx)?;
    let result = ResetResult {
        assignments_deleted: assignments::delete_rollout(&tx, &mut ledger, rollout)?,
        outcomes_deleted: outcomes::delete_rollout(&tx, &mut ledger, rollout)?,
    };
    ledger.finish(&tx)?;
    tx.commit().map_err(db_err)?;
    Ok(result)
}
