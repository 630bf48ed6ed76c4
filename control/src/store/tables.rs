//! Helpers every table family shares: opening a table that may never have been
//! written, the store-wide sequence numbers (table `data_seq`), and the definitions of
//! the tables more than one family writes (the data tables, which the data budget
//! evicts from; the engine's version summaries, which the history retention deletes):
//! kept here so the families import this file, not each other.

use redb::{ReadTransaction, ReadableTable, TableDefinition, TableError, WriteTransaction};

use crate::store::error::{db_err, StoreError};

/// Shadow records (`store::shadow_records`): `(rollout, unix_ms, seq) -> JSON`.
pub(crate) const SHADOW_RECORDS: TableDefinition<(&str, u64, u64), &[u8]> =
    TableDefinition::new("shadow_records");
/// rollout -> shadow records kept.
pub(crate) const SHADOW_RECORD_COUNTS: TableDefinition<&str, u64> =
    TableDefinition::new("shadow_record_counts");
/// Assignments (`store::assignments`): correlation id -> (rollout, variant, unix_ms, seq).
pub(crate) const ASSIGNMENTS: TableDefinition<&str, (&str, &str, u64, u64)> =
    TableDefinition::new("assignments");
/// (rollout, unix_ms, seq) -> correlation id.
pub(crate) const ASSIGNMENT_ORDER: TableDefinition<(&str, u64, u64), &str> =
    TableDefinition::new("assignment_order");
/// rollout -> assignments kept.
pub(crate) const ASSIGNMENT_COUNTS: TableDefinition<&str, u64> =
    TableDefinition::new("assignment_counts");
/// Outcomes (`store::outcomes`): correlation id -> (rollout, variant, seq, reward).
pub(crate) const OUTCOMES: TableDefinition<&str, (&str, &str, u64, f64)> =
    TableDefinition::new("outcomes");
/// (rollout, variant, seq) -> (correlation id, reward).
pub(crate) const OUTCOME_ORDER: TableDefinition<(&str, &str, u64), (&str, f64)> =
    TableDefinition::new("outcome_order");
/// (rollout, variant) -> outcomes kept.
pub(crate) const OUTCOME_COUNTS: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("outcome_counts");
/// The engine's summary per plan version (`store::decisions`).
pub(crate) const DECISION_VERSIONS: TableDefinition<u64, &[u8]> =
    TableDefinition::new("policy_decision_versions");

/// Store-wide sequence numbers of the data tables: `data`, shared by shadow records,
/// assignments and outcomes (their arrival order across kinds, which the data budget
/// evicts by); stores written before the budget also hold `shadow`, `assignment`,
/// `outcome` (no longer advanced).
const SEQ: TableDefinition<&str, u64> = TableDefinition::new("data_seq");

/// Opens a table for reading; `None` when it was never written.
pub fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &ReadTransaction,
    def: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
    match tx.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(db_err(e)),
    }
}

/// The shared sequence of the data tables.
const DATA: &str = "data";

/// Reserves `n` numbers of the shared data sequence; returns the first.
pub fn reserve_seq(tx: &WriteTransaction, n: u64) -> Result<u64, StoreError> {
    let mut t = tx.open_table(SEQ).map_err(db_err)?;
    let first = t.get(DATA).map_err(db_err)?.map_or(0, |g| g.value());
    t.insert(DATA, first.saturating_add(n)).map_err(db_err)?;
    Ok(first)
}

/// Starts the shared sequence above every number handed out before it existed
/// (`at_least`, and each kind's own old sequence).
pub(crate) fn start_shared_seq(tx: &WriteTransaction, at_least: u64) -> Result<(), StoreError> {
    let mut t = tx.open_table(SEQ).map_err(db_err)?;
    let mut next = at_least;
    for kind in [DATA, "shadow", "assignment", "outcome"] {
        next = next.max(t.get(kind).map_err(db_err)?.map_or(0, |g| g.value()));
    }
    t.insert(DATA, next).map_err(db_err)?;
    Ok(())
}
