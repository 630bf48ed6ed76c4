//! The policy engine's decisions: every evaluation (or start) of a rollout, with its
//! checks, window and series, and for each plan version the engine wrote, a summary
//! of the decision behind it.
//!
//! Tables: `policy_decisions`: `(rollout, unix_ms) -> Decision JSON`, at most
//! [`DECISIONS_PER_ROLLOUT`] per rollout (the oldest go); `policy_decision_versions`:
//! `plan version -> summary` (shown as `analysis` in `GET /v1/history`). A batch that
//! holds a transition is committed with `Durability::Immediate`; the others with
//! `Durability::None` (made durable by the next immediate commit), so a crash may
//! lose the last seconds of "stay" decisions, never a transition.

use std::collections::HashMap;

use redb::{Durability, ReadableTable, TableDefinition};

use crate::api::analysis::Decision;
use crate::api::history::VersionAnalysis;
use crate::store::error::{db_err, StoreError};
use crate::store::tables::read_table;
use crate::store::Store;

/// Decisions kept per rollout.
pub const DECISIONS_PER_ROLLOUT: usize = 300;

const DECISIONS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("policy_decisions");
use crate::store::tables::DECISION_VERSIONS;

/// Stores decisions (and, for transitions, the version summary) in one write
/// transaction. Blocking.
pub fn write_decisions(
    store: &Store,
    decisions: &[Decision],
    durable: bool,
) -> Result<(), StoreError> {
    if decisions.is_empty() {
        return Ok(());
    }
    let mut tx = store.begin_write()?;
    if !durable {
        tx.set_durability(Durability::None)
            .map_err(|e| StoreError::Db(e.to_string()))?;
    }
    {
        let mut table = tx.open_table(DECISIONS).map_err(db_err)?;
        let mut versions = tx.open_table(DECISION_VERSIONS).map_err(db_err)?;
        for d in decisions {
            let mut at = d.unix_ms;
            // one key per (rollout, ms)
            while table
                .get((d.rollout.as_str(), at))
                .map_err(db_err)?
                .is_some()
            {
                at += 1;
            }
            let bytes = serde_json::to_vec(d)
                .map_err(|e| StoreError::Db(format!("cannot serialize a decision: {e}")))?;
            table
                .insert((d.rollout.as_str(), at), bytes.as_slice())
                .map_err(db_err)?;
            if let Some(v) = d.plan_version {
                let summary = VersionAnalysis {
                    rollout: d.rollout.clone(),
                    action: d.action.clone(),
                    decision_ms: at,
                    verdict: d.verdict,
                    streak: d.streak,
                    checks: d.checks.clone(),
                    href: format!("/v1/rollouts/{}/analysis?version={v}", d.rollout),
                };
                let bytes = serde_json::to_vec(&summary)
                    .map_err(|e| StoreError::Db(format!("cannot serialize a summary: {e}")))?;
                versions.insert(v, bytes.as_slice()).map_err(db_err)?;
            }
            // bound per rollout: drop the oldest
            let range = (d.rollout.as_str(), 0u64)..=(d.rollout.as_str(), u64::MAX);
            let n = table.range(range.clone()).map_err(db_err)?.count();
            if n > DECISIONS_PER_ROLLOUT {
                let old: Vec<u64> = table
                    .range(range)
                    .map_err(db_err)?
                    .take(n - DECISIONS_PER_ROLLOUT)
                    .filter_map(|e| e.ok().map(|(k, _)| k.value().1))
                    .collect();
                for t in old {
                    table.remove((d.rollout.as_str(), t)).map_err(db_err)?;
                }
            }
        }
    }
    tx.commit().map_err(db_err)
}

/// The newest `limit` decisions of a rollout (only those that wrote `version`, when
/// given), newest first. Blocking.
pub fn read_decisions(
    store: &Store,
    rollout: &str,
    limit: usize,
    version: Option<u64>,
) -> Result<Vec<Decision>, StoreError> {
    let tx = store.begin_read()?;
    let Some(table) = read_table(&tx, DECISIONS)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in table
        .range((rollout, 0u64)..=(rollout, u64::MAX))
        .map_err(db_err)?
        .rev()
    {
        if out.len() >= limit {
            break;
        }
        let (_, v) = e.map_err(db_err)?;
        let d: Decision = serde_json::from_slice(v.value())
            .map_err(|e| StoreError::Corrupt(format!("a decision of {rollout}: {e}")))?;
        if version.is_none() || d.plan_version == version {
            out.push(d);
        }
    }
    Ok(out)
}

/// The summaries of the decisions that wrote these versions. Blocking.
pub fn version_analyses(
    store: &Store,
    versions: &[u64],
) -> Result<HashMap<u64, VersionAnalysis>, StoreError> {
    let tx = store.begin_read()?;
    let Some(table) = read_table(&tx, DECISION_VERSIONS)? else {
        return Ok(HashMap::new());
    };
    let mut out = HashMap::new();
    for v in versions {
        if let Some(g) = table.get(*v).map_err(db_err)? {
            if let Ok(a) = serde_json::from_slice::<VersionAnalysis>(g.value()) {
                out.insert(*v, a);
            }
        }
    }
    Ok(out)
}
