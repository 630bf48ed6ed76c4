//! A/B assignments: which variant served each (sampled) correlation id, as the filter
//! posts them (`rollout_core::wire::Assignment`).
//!
//! Tables: `assignments`: correlation id -> (rollout, variant, unix_ms, seq);
//! `assignment_order`: (rollout, unix_ms, seq) -> correlation id;
//! `assignment_counts`: rollout -> n. At most [`MAX_ASSIGNMENTS_PER_ROLLOUT`] per
//! rollout; beyond it the oldest (smallest `unix_ms`) are dropped. Assignments count
//! against the store's data budget (`store::budget`). One write transaction per
//! batch, fsynced before the answer.

use std::collections::BTreeMap;

use redb::{ReadableTable, WriteTransaction};
use rollout_core::wire::Assignment;

use crate::store::budget::{self, assignment_bytes, Kind, Ledger};
use crate::store::error::{db_err, StoreError};
use crate::store::tables::{read_table, reserve_seq};
use crate::store::Store;

/// Assignments kept per rollout; the oldest go first.
pub const MAX_ASSIGNMENTS_PER_ROLLOUT: u64 = 1_000_000;
/// Entries deleted per step of a reset (keeps memory flat).
pub(crate) const RESET_CHUNK: usize = 10_000;

use crate::store::tables::{ASSIGNMENTS, ASSIGNMENT_COUNTS, ASSIGNMENT_ORDER};

/// What a batch did: `stored` (new, or repeats of the same assignment) and `refused`
/// (an id already assigned to another rollout or variant: assignments are immutable,
/// so a reused or replayed id cannot move an outcome to another arm).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AssignResult {
    pub stored: u64,
    pub refused: u64,
}

/// Stores a batch in one transaction. A correlation id already assigned to the
/// same rollout and variant is left as it is (a retried batch changes nothing); one
/// assigned elsewhere is refused and counted, never moved. Rollouts beyond
/// [`MAX_ASSIGNMENTS_PER_ROLLOUT`] lose their oldest assignments. Blocking.
pub fn store_assignments(store: &Store, batch: &[Assignment]) -> Result<AssignResult, StoreError> {
    store_assignments_capped(store, batch, MAX_ASSIGNMENTS_PER_ROLLOUT)
}

/// [`store_assignments`] with another cap per rollout (tests).
#[doc(hidden)]
pub fn store_assignments_capped(
    store: &Store,
    batch: &[Assignment],
    cap: u64,
) -> Result<AssignResult, StoreError> {
    let mut result = AssignResult::default();
    if batch.is_empty() {
        return Ok(result);
    }
    let tx = store.begin_write()?;
    {
        let now = crate::util::timefmt::now_unix_ms();
        let first = reserve_seq(&tx, batch.len() as u64)?;
        let mut ledger = Ledger::open(&tx)?;
        let mut by_id = tx.open_table(ASSIGNMENTS).map_err(db_err)?;
        let mut order = tx.open_table(ASSIGNMENT_ORDER).map_err(db_err)?;
        let mut counts = tx.open_table(ASSIGNMENT_COUNTS).map_err(db_err)?;
        // rollout -> (added, removed)
        let mut delta: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (seq, a) in (first..).zip(batch) {
            let id = a.correlation_id.as_str();
            let old = by_id.get(id).map_err(db_err)?.map(|g| {
                let (r, v, ms, s) = g.value();
                (r.to_string(), v.to_string(), ms, s)
            });
            if let Some((r, v, _, _)) = old {
                if r == a.rollout && v == a.variant {
                    result.stored += 1;
                } else {
                    result.refused += 1;
                }
                continue;
            }
            result.stored += 1;
            by_id
                .insert(id, (a.rollout.as_str(), a.variant.as_str(), a.unix_ms, seq))
                .map_err(db_err)?;
            order
                .insert((a.rollout.as_str(), a.unix_ms, seq), id)
                .map_err(db_err)?;
            let cost = assignment_bytes(id, &a.rollout, &a.variant);
            ledger.add(Kind::Assignment, seq, cost, now, &a.rollout, "", a.unix_ms)?;
            delta.entry(a.rollout.clone()).or_default().0 += 1;
        }
        for (rollout, (added, removed)) in delta {
            let r = rollout.as_str();
            let have = (counts.get(r).map_err(db_err)?.map_or(0, |g| g.value()) + added)
                .saturating_sub(removed);
            let excess = have.saturating_sub(cap);
            if excess > 0 {
                let oldest: Vec<(u64, u64, String)> = order
                    .range((r, 0u64, 0u64)..=(r, u64::MAX, u64::MAX))
                    .map_err(db_err)?
                    .take(usize::try_from(excess).unwrap_or(usize::MAX))
                    .map(|e| {
                        e.map(|(k, v)| {
                            let (_, ms, s) = k.value();
                            (ms, s, v.value().to_string())
                        })
                    })
                    .collect::<Result<_, _>>()
                    .map_err(db_err)?;
                for (ms, s, id) in oldest {
                    order.remove((r, ms, s)).map_err(db_err)?;
                    ledger.release(Kind::Assignment, s)?;
                    let points_here = by_id.get(id.as_str()).map_err(db_err)?.is_some_and(|g| {
                        let (gr, _, gms, gs) = g.value();
                        gr == r && gms == ms && gs == s
                    });
                    if points_here {
                        by_id.remove(id.as_str()).map_err(db_err)?;
                    }
                }
            }
            counts.insert(r, have.min(cap)).map_err(db_err)?;
        }
        drop((by_id, order, counts));
        ledger.finish(&tx)?;
    }
    let evicted = budget::enforce(&tx, store.data_budget())?;
    tx.commit().map_err(db_err)?;
    store.evicted(evicted);
    Ok(result)
}

/// The assignment of a correlation id: (rollout, variant, unix_ms). Blocking.
pub fn assignment_of(store: &Store, id: &str) -> Result<Option<(String, String, u64)>, StoreError> {
    let tx = store.begin_read()?;
    let Some(t) = read_table(&tx, ASSIGNMENTS)? else {
        return Ok(None);
    };
    let found = t.get(id).map_err(db_err)?.map(|g| {
        let (r, v, ms, _) = g.value();
        (r.to_string(), v.to_string(), ms)
    });
    Ok(found)
}

/// Assignments kept for a rollout. Blocking.
pub fn assignment_count(store: &Store, rollout: &str) -> Result<u64, StoreError> {
    let tx = store.begin_read()?;
    let Some(t) = read_table(&tx, ASSIGNMENT_COUNTS)? else {
        return Ok(0);
    };
    let n = t.get(rollout).map_err(db_err)?.map_or(0, |g| g.value());
    Ok(n)
}

/// Deletes every assignment of a rollout in `tx` (released from `ledger`); returns
/// how many. Blocking.
pub(crate) fn delete_rollout(
    tx: &WriteTransaction,
    ledger: &mut Ledger<'_>,
    rollout: &str,
) -> Result<u64, StoreError> {
    let mut deleted = 0;
    let mut by_id = tx.open_table(ASSIGNMENTS).map_err(db_err)?;
    let mut order = tx.open_table(ASSIGNMENT_ORDER).map_err(db_err)?;
    loop {
        let chunk: Vec<(u64, u64, String)> = order
            .range((rollout, 0u64, 0u64)..=(rollout, u64::MAX, u64::MAX))
            .map_err(db_err)?
            .take(RESET_CHUNK)
            .map(|e| {
                e.map(|(k, v)| {
                    let (_, ms, s) = k.value();
                    (ms, s, v.value().to_string())
                })
            })
            .collect::<Result<_, _>>()
            .map_err(db_err)?;
        if chunk.is_empty() {
            break;
        }
        for (ms, s, id) in chunk {
            order.remove((rollout, ms, s)).map_err(db_err)?;
            ledger.release(Kind::Assignment, s)?;
            let here = by_id
                .get(id.as_str())
                .map_err(db_err)?
                .is_some_and(|g| g.value().0 == rollout);
            if here {
                by_id.remove(id.as_str()).map_err(db_err)?;
            }
            deleted += 1;
        }
    }
    tx.open_table(ASSIGNMENT_COUNTS)
        .map_err(db_err)?
        .remove(rollout)
        .map_err(db_err)?;
    Ok(deleted)
}
