//! Helpers every table family shares: opening a table that may never have been
//! written, and the store-wide sequence numbers (table `data_seq`).

use redb::{ReadTransaction, ReadableTable, TableDefinition, TableError, WriteTransaction};

use crate::store::error::{db_err, StoreError};

/// Store-wide sequence numbers of the data tables: `shadow`, `assignment`, `outcome`.
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

/// Reserves `n` sequence numbers of `kind`; returns the first.
pub fn reserve_seq(tx: &WriteTransaction, kind: &str, n: u64) -> Result<u64, StoreError> {
    let mut t = tx.open_table(SEQ).map_err(db_err)?;
    let first = t.get(kind).map_err(db_err)?.map_or(0, |g| g.value());
    t.insert(kind, first.saturating_add(n)).map_err(db_err)?;
    Ok(first)
}
