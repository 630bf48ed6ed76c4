//! A/B outcomes: the reward an application reports for a correlation id, joined with
//! the id's assignment when it arrives.
//!
//! Tables: `outcomes`: correlation id -> (rollout, variant, seq, reward);
//! `outcome_order`: (rollout, variant, seq) -> (correlation id, reward);
//! `outcome_counts`: (rollout, variant) -> n. `seq` is the arrival order (from
//! `data_seq`). At most [`MAX_OUTCOMES_PER_VARIANT`] per variant; later ones are
//! `dropped` (they could never enter a supported analysis). Outcomes stay when their
//! assignment is dropped. A second outcome for an id replaces the first in place.
//! Outcomes count against the store's data budget, and are the last data it evicts
//! (`store::budget`: each variant counts what it lost, `outcome_evicted`).

use std::collections::HashMap;

use redb::{ReadableTable, WriteTransaction};
use rollout_core::abtest::Summary;
use rollout_core::experiment::ExperimentMetric;
use rollout_core::ConfigError;

use crate::api::experiment::{FeedbackResult, Outcome};
use crate::store::assignments::RESET_CHUNK;
use crate::store::budget::{self, outcome_bytes, Kind, Ledger};
use crate::store::error::{db_err, StoreError};
use crate::store::tables::ASSIGNMENTS;
use crate::store::tables::{read_table, reserve_seq};
use crate::store::Store;

/// Outcomes kept per variant; later ones are dropped. A `samples_per_variant`
/// above this can never complete.
pub const MAX_OUTCOMES_PER_VARIANT: u64 = 1_000_000;

use crate::store::tables::{OUTCOMES, OUTCOME_COUNTS, OUTCOME_ORDER};

/// A reward is a finite number, and 0 or 1 for a conversion experiment (`metric`: the
/// experiment of the rollout it belongs to, when known). `field` names it in the error.
pub fn check_reward(
    field: impl FnOnce() -> String,
    reward: f64,
    metric: Option<ExperimentMetric>,
) -> Result<(), ConfigError> {
    if !reward.is_finite() {
        return Err(ConfigError::new(field(), "must be a finite number"));
    }
    if metric == Some(ExperimentMetric::Conversion) && reward != 0.0 && reward != 1.0 {
        return Err(ConfigError::new(
            field(),
            format!("{reward} is not 0 or 1 (this experiment's metric is conversion)"),
        ));
    }
    Ok(())
}

/// Joins outcomes with their assignments in one transaction. `metrics`: the
/// experiment metric of each rollout in the current plan (rewards of conversion
/// experiments must be 0 or 1; [`check_reward`]); `reward_field(i)` names the `i`th
/// reward in an error. Any invalid outcome stores nothing. Blocking.
pub fn store_outcomes<E: From<StoreError> + From<ConfigError>>(
    store: &Store,
    outcomes: &[Outcome],
    reward_field: &dyn Fn(usize) -> String,
    metrics: &HashMap<String, ExperimentMetric>,
) -> Result<FeedbackResult, E> {
    let mut result = FeedbackResult::default();
    if outcomes.is_empty() {
        return Ok(result);
    }
    let tx = store.begin_write()?;
    {
        let now = crate::util::timefmt::now_unix_ms();
        let mut next = reserve_seq(&tx, outcomes.len() as u64)?;
        let mut ledger = Ledger::open(&tx)?;
        let assignments = tx.open_table(ASSIGNMENTS).map_err(db_err)?;
        let mut by_id = tx.open_table(OUTCOMES).map_err(db_err)?;
        let mut order = tx.open_table(OUTCOME_ORDER).map_err(db_err)?;
        let mut counts = tx.open_table(OUTCOME_COUNTS).map_err(db_err)?;
        for (i, o) in outcomes.iter().enumerate() {
            let id = o.correlation_id.as_str();
            let known = by_id.get(id).map_err(db_err)?.map(|g| {
                let (r, v, s, reward) = g.value();
                (r.to_string(), v.to_string(), s, reward)
            });
            if let Some((r, v, s, old)) = known {
                // A repeat or a correction: same place in the arrival order.
                check_reward(|| reward_field(i), o.reward, metrics.get(&r).copied())?;
                if old.to_bits() != o.reward.to_bits() {
                    by_id
                        .insert(id, (r.as_str(), v.as_str(), s, o.reward))
                        .map_err(db_err)?;
                    order
                        .insert((r.as_str(), v.as_str(), s), (id, o.reward))
                        .map_err(db_err)?;
                }
                result.accepted += 1;
                continue;
            }
            let assigned = assignments.get(id).map_err(db_err)?.map(|g| {
                let (r, v, _, _) = g.value();
                (r.to_string(), v.to_string())
            });
            let Some((r, v)) = assigned else {
                check_reward(|| reward_field(i), o.reward, None)?;
                result.unknown += 1;
                continue;
            };
            check_reward(|| reward_field(i), o.reward, metrics.get(&r).copied())?;
            let key = (r.as_str(), v.as_str());
            let have = counts.get(key).map_err(db_err)?.map_or(0, |g| g.value());
            if have >= MAX_OUTCOMES_PER_VARIANT {
                result.dropped += 1;
                continue;
            }
            let seq = next;
            next += 1;
            by_id
                .insert(id, (r.as_str(), v.as_str(), seq, o.reward))
                .map_err(db_err)?;
            order
                .insert((r.as_str(), v.as_str(), seq), (id, o.reward))
                .map_err(db_err)?;
            counts.insert(key, have + 1).map_err(db_err)?;
            let cost = outcome_bytes(id, &r, &v);
            ledger.add(Kind::Outcome, seq, cost, now, &r, &v, 0)?;
            result.accepted += 1;
        }
        drop((assignments, by_id, order, counts));
        ledger.finish(&tx)?;
    }
    let evicted = budget::enforce(&tx, store.data_budget())?;
    tx.commit().map_err(db_err)?;
    store.evicted(evicted);
    Ok(result)
}

/// For each of `variants` of `rollout`, read in one transaction: the outcomes joined
/// and the first `limit` rewards in arrival order, added up. Blocking (reads at most
/// `limit` outcomes per variant).
pub fn variant_outcomes(
    store: &Store,
    rollout: &str,
    variants: &[&str],
    limit: u64,
) -> Result<Vec<(u64, Summary)>, StoreError> {
    let tx = store.begin_read()?;
    variants
        .iter()
        .map(|v| variant_data(&tx, rollout, v, limit))
        .collect()
}

/// The first `limit` rewards of a variant, in arrival order, and the count joined.
fn variant_data(
    tx: &redb::ReadTransaction,
    rollout: &str,
    variant: &str,
    limit: u64,
) -> Result<(u64, Summary), StoreError> {
    let count = match read_table(tx, OUTCOME_COUNTS)? {
        Some(t) => t
            .get((rollout, variant))
            .map_err(db_err)?
            .map_or(0, |g| g.value()),
        None => 0,
    };
    let mut s = Summary::new();
    if let Some(t) = read_table(tx, OUTCOME_ORDER)? {
        for e in t
            .range((rollout, variant, 0u64)..=(rollout, variant, u64::MAX))
            .map_err(db_err)?
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
        {
            let (_, v) = e.map_err(db_err)?;
            s.add(v.value().1);
        }
    }
    Ok((count, s))
}

/// One entry of `outcome_order`, as a range yields it.
type OrderEntry<'a> = redb::Result<(
    redb::AccessGuard<'a, (&'static str, &'static str, u64)>,
    redb::AccessGuard<'a, (&'static str, f64)>,
)>;

/// The next `(seq, reward)` of an `outcome_order` range.
fn next_entry<'a>(
    it: &mut impl Iterator<Item = OrderEntry<'a>>,
) -> Result<Option<(u64, f64)>, StoreError> {
    match it.next() {
        None => Ok(None),
        Some(e) => {
            let (k, v) = e.map_err(db_err)?;
            Ok(Some((k.value().2, v.value().1)))
        }
    }
}

/// Which arm of a pair an outcome belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    Control,
    Treatment,
}

/// The first `limit` rewards of `control` and of `treatment` (of `rollout`), merged in
/// arrival order: `f` sees every outcome of either arm as it arrived (what a
/// sequential test reads). One read transaction; nothing is held in memory.
/// Blocking.
pub fn replay_pair(
    store: &Store,
    rollout: &str,
    control: &str,
    treatment: &str,
    limit: u64,
    f: &mut dyn FnMut(Arm, f64),
) -> Result<(), StoreError> {
    let tx = store.begin_read()?;
    let Some(t) = read_table(&tx, OUTCOME_ORDER)? else {
        return Ok(());
    };
    let take = usize::try_from(limit).unwrap_or(usize::MAX);
    let arm = |v: &str| {
        t.range((rollout, v, 0u64)..=(rollout, v, u64::MAX))
            .map(|r| r.take(take))
    };
    let mut a = arm(control).map_err(db_err)?;
    let mut b = arm(treatment).map_err(db_err)?;
    let (mut ha, mut hb) = (next_entry(&mut a)?, next_entry(&mut b)?);
    loop {
        match (ha, hb) {
            (Some((sa, ra)), Some((sb, _))) if sa <= sb => {
                f(Arm::Control, ra);
                ha = next_entry(&mut a)?;
            }
            (_, Some((_, rb))) => {
                f(Arm::Treatment, rb);
                hb = next_entry(&mut b)?;
            }
            (Some((_, ra)), None) => {
                f(Arm::Control, ra);
                ha = next_entry(&mut a)?;
            }
            (None, None) => return Ok(()),
        }
    }
}

/// Deletes every outcome of a rollout in `tx` (released from `ledger`); returns how
/// many. Blocking.
pub(crate) fn delete_rollout(
    tx: &WriteTransaction,
    ledger: &mut Ledger<'_>,
    rollout: &str,
) -> Result<u64, StoreError> {
    let mut deleted = 0;
    let upper = format!("{rollout}\0");
    let mut outcomes = tx.open_table(OUTCOMES).map_err(db_err)?;
    let mut order = tx.open_table(OUTCOME_ORDER).map_err(db_err)?;
    loop {
        let chunk: Vec<(String, u64, String)> = order
            .range((rollout, "", 0u64)..(upper.as_str(), "", 0u64))
            .map_err(db_err)?
            .take(RESET_CHUNK)
            .map(|e| {
                e.map(|(k, v)| {
                    let (_, variant, s) = k.value();
                    (variant.to_string(), s, v.value().0.to_string())
                })
            })
            .collect::<Result<_, _>>()
            .map_err(db_err)?;
        if chunk.is_empty() {
            break;
        }
        for (variant, s, id) in chunk {
            order
                .remove((rollout, variant.as_str(), s))
                .map_err(db_err)?;
            ledger.release(Kind::Outcome, s)?;
            let here = outcomes
                .get(id.as_str())
                .map_err(db_err)?
                .is_some_and(|g| g.value().0 == rollout);
            if here {
                outcomes.remove(id.as_str()).map_err(db_err)?;
            }
            deleted += 1;
        }
    }
    let mut counts = tx.open_table(OUTCOME_COUNTS).map_err(db_err)?;
    let keys: Vec<String> = counts
        .range((rollout, "")..(upper.as_str(), ""))
        .map_err(db_err)?
        .map(|e| e.map(|(k, _)| k.value().1.to_string()))
        .collect::<Result<_, _>>()
        .map_err(db_err)?;
    for variant in keys {
        counts.remove((rollout, variant.as_str())).map_err(db_err)?;
    }
    budget::reset_rollout(tx, rollout)?;
    Ok(deleted)
}
