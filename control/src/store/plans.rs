//! Plan versions: every plan ever served, with why, who and when.
//!
//! Table `plan_versions`: `u64 version -> JSON record` ([`Record`]: the full plan with
//! its `version` field set, time, reason, author, operation). Versions start at 1 and
//! grow by one per change; records are never rewritten.
//!
//! Retention (`serve --history-keep N`, [`DEFAULT_HISTORY_KEEP`]): the commit that
//! stores version V deletes every version older than the N newest (`<= V - N`), with
//! its engine summary (`policy_decision_versions`), in the same transaction; opening
//! the store applies it too (N may have been lowered). The plan in force is the latest
//! version (what `GET /v1/plan` serves), always among the N newest, so it is never
//! deleted. A restore copies the old version's plan into a new version (`op:
//! restore`, `reason: restore vK`): after it the restored plan is in force as the
//! newest version and needs nothing older, so K may later be dropped while its plan
//! stays in force. A plan is also in force at a proxy that has not caught up yet: the
//! versions active proxies report running (`Store::pin_versions`) are kept while they
//! do, even when older than the N newest; the first commit after they move on deletes
//! them. Nothing else reads old versions.
//!
//! Durability: each change is one redb write transaction committed with redb's
//! default `Durability::Immediate` (the commit is fsynced before it returns), and the
//! HTTP answer is sent only after the commit returned. An acknowledged version
//! therefore survives `kill -9` and power loss, and a crash mid-commit leaves the
//! previous committed state: redb's copy-on-write B-trees and checksummed commit slots
//! never expose a half-written record.
//!
//! Concurrency: redb runs one write transaction at a time; a change reads the latest
//! version *inside* its write transaction, so concurrent changes never lose updates and
//! `If-Match` checks are exact.

use std::collections::BTreeSet;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, WriteTransaction,
};
use rollout_core::PlanSpec;
use serde::{Deserialize, Serialize};

use crate::store::error::{db_err, StoreError};
use crate::util::timefmt::{now_unix_ms, rfc3339_ms};

const VERSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("plan_versions");
/// Most records one history read returns (older ones: the next page, `?before=`).
pub const MAX_HISTORY: usize = 1_000;
/// Plan versions kept without `--history-keep`.
pub const DEFAULT_HISTORY_KEEP: u64 = 10_000;

/// What made a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Initial,
    Put,
    SetWeights,
    Switch,
    Promote,
    Rollback,
    Pause,
    Resume,
    Restore,
    /// The policy's progress state changed without a weight change (wait, hold).
    Progress,
    /// A person restarted a rollout's policy at step 0.
    Restart,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Initial => "initial",
            Op::Put => "put",
            Op::SetWeights => "set-weights",
            Op::Switch => "switch",
            Op::Promote => "promote",
            Op::Rollback => "rollback",
            Op::Pause => "pause",
            Op::Resume => "resume",
            Op::Restore => "restore",
            Op::Progress => "progress",
            Op::Restart => "restart",
        }
    }
}

/// One stored version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub version: u64,
    /// RFC 3339 UTC, millisecond precision.
    pub time: String,
    pub unix_ms: u64,
    pub reason: String,
    pub author: String,
    /// `Op::as_str` of the operation.
    pub op: String,
    /// The plan, its `version` field equal to `version`.
    pub plan: PlanSpec,
}

/// A change to commit: the next plan (its version is assigned by the store) and why.
#[derive(Debug, Clone)]
pub struct Change {
    pub plan: PlanSpec,
    pub op: Op,
    pub reason: String,
    pub author: String,
}

/// The latest version, with the plan pre-serialized for `GET /v1/plan` (carrying the
/// store's epoch) and its ETag (`"v<N>.<epoch>"`).
#[derive(Debug)]
pub struct Current {
    pub record: Record,
    pub plan_json: Bytes,
    pub etag: String,
}

impl Current {
    fn new(record: Record, epoch: &str) -> Result<Self, StoreError> {
        let mut served = record.plan.clone();
        served.epoch = Some(epoch.to_string());
        let plan_json = serde_json::to_vec(&served)
            .map_err(|e| StoreError::Corrupt(format!("cannot serialize plan: {e}")))?;
        Ok(Current {
            etag: rollout_core::wire::epoch_etag(record.version, Some(epoch)),
            record,
            plan_json: Bytes::from(plan_json),
        })
    }

    pub fn version(&self) -> u64 {
        self.record.version
    }
}

fn decode(version: u64, bytes: &[u8]) -> Result<Record, StoreError> {
    let record: Record = serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("version {version}: {e}")))?;
    if record.version != version || record.plan.version != version {
        return Err(StoreError::Corrupt(format!(
            "version {version} holds a record of version {} (plan version {})",
            record.version, record.plan.version
        )));
    }
    Ok(record)
}

/// The plan versions of a database, with the latest one cached (updated by every
/// commit).
pub struct Plans {
    current: RwLock<Option<Arc<Current>>>,
    epoch: String,
    /// Versions kept (`--history-keep`); at least 1.
    keep: u64,
}

impl Plans {
    /// Creates the table in `tx` if needed (part of opening the store).
    pub fn create(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
        tx.open_table(VERSIONS).map_err(db_err)?;
        Ok(())
    }

    /// Applies the retention to the stored history (part of opening the store).
    pub fn prune_at_open(tx: &WriteTransaction, keep: u64) -> Result<u64, StoreError> {
        let mut table = tx.open_table(VERSIONS).map_err(db_err)?;
        let latest = table.last().map_err(db_err)?.map(|(k, _)| k.value());
        match latest {
            Some(v) => prune(tx, &mut table, v, keep, &BTreeSet::new()),
            None => Ok(0),
        }
    }

    /// Reads the latest version into the cache.
    pub fn load(db: &Database, epoch: &str, keep: u64) -> Result<Plans, StoreError> {
        let latest = read_latest(db)?
            .map(|r| Current::new(r, epoch))
            .transpose()?;
        Ok(Plans {
            current: RwLock::new(latest.map(Arc::new)),
            epoch: epoch.to_string(),
            keep: keep.max(1),
        })
    }

    /// Versions kept (`--history-keep`).
    pub fn keep(&self) -> u64 {
        self.keep
    }

    /// Reads the latest version into the cache again (after the file was reopened).
    pub fn reload(&self, db: &Database) -> Result<(), StoreError> {
        let latest = read_latest(db)?
            .map(|r| Current::new(r, &self.epoch))
            .transpose()?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = latest.map(Arc::new);
        Ok(())
    }

    /// The latest version (cached).
    pub fn current(&self) -> Option<Arc<Current>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Commits a new version. `f` sees the latest version as of this write
    /// transaction and returns the change (or an error, which aborts the transaction
    /// and is returned as is). Blocking.
    /// `pinned`: versions kept beyond the retention (in force at a proxy).
    pub fn commit<E: From<StoreError>>(
        &self,
        tx: WriteTransaction,
        pinned: &BTreeSet<u64>,
        f: impl FnOnce(Option<&Current>) -> Result<Change, E>,
    ) -> Result<Arc<Current>, E> {
        let current = {
            let mut table = tx.open_table(VERSIONS).map_err(db_err)?;
            let latest = match table.last().map_err(db_err)? {
                None => None,
                Some((k, v)) => Some(Current::new(decode(k.value(), v.value())?, &self.epoch)?),
            };
            let change = f(latest.as_ref())?;
            let version = latest.as_ref().map_or(0, Current::version) + 1;
            let unix_ms = now_unix_ms();
            let mut plan = change.plan;
            plan.version = version;
            // The epoch is the serving store's, added when served: never stored.
            plan.epoch = None;
            let record = Record {
                version,
                time: rfc3339_ms(unix_ms),
                unix_ms,
                reason: change.reason,
                author: change.author,
                op: change.op.as_str().to_string(),
                plan,
            };
            let bytes = serde_json::to_vec(&record)
                .map_err(|e| StoreError::Db(format!("cannot serialize record: {e}")))?;
            table.insert(version, bytes.as_slice()).map_err(db_err)?;
            prune(&tx, &mut table, version, self.keep, pinned)?;
            Current::new(record, &self.epoch)?
        };
        tx.commit().map_err(db_err)?;
        let current = Arc::new(current);
        let mut slot = self.current.write().unwrap_or_else(PoisonError::into_inner);
        // Commits are serialized by redb, but two committers may reach this line in
        // either order: never replace a newer version by an older one.
        if slot
            .as_ref()
            .is_none_or(|c| c.version() < current.version())
        {
            *slot = Some(Arc::clone(&current));
        }
        Ok(current)
    }
}

/// Deletes the versions older than the `keep` newest (`latest` is the newest; it is
/// never deleted) but the `pinned` ones, and their engine summaries. Reads only the
/// versions it deletes and the pinned ones. Returns how many were deleted.
fn prune(
    tx: &WriteTransaction,
    table: &mut redb::Table<'_, u64, &[u8]>,
    latest: u64,
    keep: u64,
    pinned: &BTreeSet<u64>,
) -> Result<u64, StoreError> {
    let first_kept = latest.saturating_sub(keep.max(1)).saturating_add(1);
    let expired: Vec<u64> = table
        .range(..first_kept.min(latest))
        .map_err(db_err)?
        .map(|e| e.map(|(k, _)| k.value()))
        .filter(|v| v.as_ref().map_or(true, |v| !pinned.contains(v)))
        .collect::<Result<_, _>>()
        .map_err(db_err)?;
    if expired.is_empty() {
        return Ok(0);
    }
    let mut summaries = tx
        .open_table(crate::store::tables::DECISION_VERSIONS)
        .map_err(db_err)?;
    for v in &expired {
        table.remove(*v).map_err(db_err)?;
        summaries.remove(*v).map_err(db_err)?;
    }
    Ok(expired.len() as u64)
}

/// The oldest version still stored (`None` before any plan).
pub fn oldest(tx: &ReadTransaction) -> Result<Option<u64>, StoreError> {
    let table = tx.open_table(VERSIONS).map_err(db_err)?;
    let first = table.first().map_err(db_err)?.map(|(k, _)| k.value());
    Ok(first)
}

fn read_latest(db: &Database) -> Result<Option<Record>, StoreError> {
    let tx = db.begin_read().map_err(db_err)?;
    let table = tx.open_table(VERSIONS).map_err(db_err)?;
    let latest = match table.last().map_err(db_err)? {
        None => None,
        Some((k, v)) => Some(decode(k.value(), v.value())?),
    };
    Ok(latest)
}

/// One version's record.
pub fn get(tx: &ReadTransaction, version: u64) -> Result<Option<Record>, StoreError> {
    let table = tx.open_table(VERSIONS).map_err(db_err)?;
    let value = table.get(version).map_err(db_err)?;
    value.map(|v| decode(version, v.value())).transpose()
}

/// Up to `limit` (at most [`MAX_HISTORY`]) records, newest first.
pub fn history(tx: &ReadTransaction, limit: usize) -> Result<Vec<Record>, StoreError> {
    history_map(tx, limit, None, |r| r)
}

/// Up to `limit` (at most [`MAX_HISTORY`]) records older than `before` (all when
/// `None`), newest first, each mapped by `f` as it is read: only the mapped values
/// are held, never `limit` full plans.
pub fn history_map<T>(
    tx: &ReadTransaction,
    limit: usize,
    before: Option<u64>,
    mut f: impl FnMut(Record) -> T,
) -> Result<Vec<T>, StoreError> {
    let table = tx.open_table(VERSIONS).map_err(db_err)?;
    let mut out = Vec::new();
    for entry in table
        .range(..before.unwrap_or(u64::MAX))
        .map_err(db_err)?
        .rev()
        .take(limit.min(MAX_HISTORY))
    {
        let (k, v) = entry.map_err(db_err)?;
        out.push(f(decode(k.value(), v.value())?));
    }
    Ok(out)
}

/// Readiness: a read transaction opens and the latest record decodes. Returns the
/// number of stored versions.
pub fn check_readable(tx: &ReadTransaction) -> Result<u64, StoreError> {
    let table = tx.open_table(VERSIONS).map_err(db_err)?;
    if let Some((k, v)) = table.last().map_err(db_err)? {
        decode(k.value(), v.value())?;
    }
    table.len().map_err(db_err)
}
