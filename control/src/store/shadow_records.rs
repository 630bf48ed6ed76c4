//! Shadow comparison records: what the filter posts from its sampled comparisons
//! (`rollout_core::wire::ShadowRecord`), kept per rollout.
//!
//! Table `shadow_records`: `(rollout, unix_ms, seq) -> the record as JSON` (`seq`
//! from `data_seq`); `shadow_record_counts`: rollout -> records kept. At most
//! [`MAX_RECORDS_PER_ROLLOUT`] per rollout: a batch that goes beyond it drops the
//! oldest (smallest `unix_ms`) in the same transaction. Records count against the
//! store's data budget (`store::budget`), enforced in the same transaction. Each
//! batch is one write transaction, fsynced before the answer.

use std::collections::{BTreeMap, HashMap};

use redb::ReadableTable;
use rollout_core::wire::ShadowRecord;

use crate::store::budget::{self, record_bytes, Kind, Ledger};
use crate::store::error::{db_err, StoreError};
use crate::store::tables::{read_table, reserve_seq};
use crate::store::Store;

/// Records kept per rollout; the oldest go first.
pub const MAX_RECORDS_PER_ROLLOUT: u64 = 100_000;

use crate::store::tables::{SHADOW_RECORDS as RECORDS, SHADOW_RECORD_COUNTS as COUNTS};

/// Stores a batch in one transaction, trimming every touched rollout to
/// [`MAX_RECORDS_PER_ROLLOUT`]. Blocking.
pub fn store_records(store: &Store, records: &[ShadowRecord]) -> Result<u64, StoreError> {
    store_records_capped(store, records, MAX_RECORDS_PER_ROLLOUT)
}

/// [`store_records`] with another cap per rollout (tests).
#[doc(hidden)]
pub fn store_records_capped(
    store: &Store,
    records: &[ShadowRecord],
    cap: u64,
) -> Result<u64, StoreError> {
    if records.is_empty() {
        return Ok(0);
    }
    let tx = store.begin_write()?;
    {
        let now = crate::util::timefmt::now_unix_ms();
        let first = reserve_seq(&tx, records.len() as u64)?;
        let mut ledger = Ledger::open(&tx)?;
        let mut table = tx.open_table(RECORDS).map_err(db_err)?;
        let mut counts = tx.open_table(COUNTS).map_err(db_err)?;
        let mut added: BTreeMap<&str, u64> = BTreeMap::new();
        for (seq, r) in (first..).zip(records) {
            let bytes = serde_json::to_vec(r)
                .map_err(|e| StoreError::Db(format!("cannot serialize a record: {e}")))?;
            let rollout = r.rollout.as_str();
            table
                .insert((rollout, r.unix_ms, seq), bytes.as_slice())
                .map_err(db_err)?;
            let cost = record_bytes(rollout, bytes.len());
            ledger.add(Kind::ShadowRecord, seq, cost, now, rollout, "", r.unix_ms)?;
            *added.entry(rollout).or_insert(0) += 1;
        }
        for (rollout, n) in added {
            let have = counts
                .get(rollout)
                .map_err(db_err)?
                .map_or(0, |g| g.value())
                + n;
            let excess = have.saturating_sub(cap);
            if excess > 0 {
                let oldest: Vec<(u64, u64)> = table
                    .range((rollout, 0u64, 0u64)..=(rollout, u64::MAX, u64::MAX))
                    .map_err(db_err)?
                    .take(usize::try_from(excess).unwrap_or(usize::MAX))
                    .map(|e| e.map(|(k, _)| (k.value().1, k.value().2)))
                    .collect::<Result<_, _>>()
                    .map_err(db_err)?;
                for (ms, seq) in oldest {
                    table.remove((rollout, ms, seq)).map_err(db_err)?;
                    ledger.release(Kind::ShadowRecord, seq)?;
                }
            }
            counts.insert(rollout, have.min(cap)).map_err(db_err)?;
        }
        drop((table, counts));
        ledger.finish(&tx)?;
    }
    let evicted = budget::enforce(&tx, store.data_budget())?;
    tx.commit().map_err(db_err)?;
    store.evicted(evicted);
    Ok(records.len() as u64)
}

/// Calls `f` with every record of `rollout` at or after `since_ms`, oldest first,
/// in one read transaction. Blocking.
pub fn scan(
    store: &Store,
    rollout: &str,
    since_ms: Option<u64>,
    mut f: impl FnMut(ShadowRecord),
) -> Result<(), StoreError> {
    let tx = store.begin_read()?;
    let Some(table) = read_table(&tx, RECORDS)? else {
        return Ok(());
    };
    let from = since_ms.unwrap_or(0);
    for entry in table
        .range((rollout, from, 0u64)..=(rollout, u64::MAX, u64::MAX))
        .map_err(db_err)?
    {
        let (k, v) = entry.map_err(db_err)?;
        let r: ShadowRecord = serde_json::from_slice(v.value())
            .map_err(|e| StoreError::Corrupt(format!("shadow record {:?}: {e}", k.value())))?;
        f(r);
    }
    Ok(())
}

/// Counts records per rollout (for tests and diagnostics). Blocking.
pub fn record_counts(store: &Store) -> Result<HashMap<String, u64>, StoreError> {
    let tx = store.begin_read()?;
    let mut out = HashMap::new();
    if let Some(t) = read_table(&tx, COUNTS)? {
        for e in t.iter().map_err(db_err)? {
            let (k, v) = e.map_err(db_err)?;
            out.insert(k.value().to_string(), v.value());
        }
    }
    Ok(out)
}
