//! The plan store: every plan version ever served, in one redb file
//! (`DIR/control.redb`).
//!
//! - Table `plan_versions`: `u64 version -> JSON record` (`Record`: the full plan with
//!   its `version` field set, time, reason, author, operation). Versions start at 1 and
//!   grow by one per change; records are never rewritten or deleted.
//! - Table `meta`: `format -> "1"`.
//!
//! Durability: each change is one redb write transaction committed with redb's
//! default `Durability::Immediate` (the commit is fsynced before it returns), and the
//! HTTP answer is sent only after the commit returned. An acknowledged version
//! therefore survives `kill -9` and power loss, and a crash mid-commit leaves the
//! previous committed state: redb's copy-on-write B-trees and checksummed commit slots
//! never expose a half-written record. The next open recovers automatically.
//!
//! Concurrency: redb runs one write transaction at a time; a change reads the latest
//! version *inside* its write transaction, so concurrent changes never lose updates and
//! `If-Match` checks are exact.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use axum::body::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use rollout_core::PlanSpec;
use serde::{Deserialize, Serialize};

use crate::util::timefmt::{now_unix_ms, rfc3339_ms};

/// File name of the database inside the data directory.
pub const FILE_NAME: &str = "control.redb";
const VERSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("plan_versions");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const FORMAT: &str = "1";
/// redb's page cache; the history is small, 1 GiB (redb's default) is far too much for a sidecar.
const CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Most records one history read returns.
pub const MAX_HISTORY: usize = 10_000;

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

/// The latest version, with the plan pre-serialized for `GET /v1/plan`.
#[derive(Debug)]
pub struct Current {
    pub record: Record,
    pub plan_json: Bytes,
}

impl Current {
    fn new(record: Record) -> Result<Self, StoreError> {
        let plan_json = serde_json::to_vec(&record.plan)
            .map_err(|e| StoreError::Corrupt(format!("cannot serialize plan: {e}")))?;
        Ok(Current {
            record,
            plan_json: Bytes::from(plan_json),
        })
    }

    pub fn version(&self) -> u64 {
        self.record.version
    }
}

#[derive(Debug)]
pub enum StoreError {
    /// The database failed (I/O, lock held by another process, ...).
    Db(String),
    /// A stored record cannot be read back.
    Corrupt(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Db(m) => write!(f, "store: {m}"),
            StoreError::Corrupt(m) => write!(f, "store is corrupt: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(e.into().to_string())
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

pub struct Store {
    db: Database,
    path: PathBuf,
    current: RwLock<Option<Arc<Current>>>,
}

impl Store {
    /// Opens (creating if needed) `dir/control.redb`. After a crash redb repairs the
    /// file on open; the integrity of every page is checked on each open.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Db(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(FILE_NAME);
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .set_check_integrity_on_open(true)
            .create(&path)
            .map_err(|e| StoreError::Db(format!("cannot open {}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(db_err)?;
        {
            tx.open_table(VERSIONS).map_err(db_err)?;
            let mut meta = tx.open_table(META).map_err(db_err)?;
            let format = meta
                .get("format")
                .map_err(db_err)?
                .map(|g| g.value().to_string());
            match format.as_deref() {
                None => {
                    meta.insert("format", FORMAT).map_err(db_err)?;
                }
                Some(FORMAT) => {}
                Some(other) => {
                    return Err(StoreError::Corrupt(format!(
                        "{} has store format {other:?}; this build reads {FORMAT:?}",
                        path.display()
                    )))
                }
            }
        }
        tx.commit().map_err(db_err)?;
        let store = Store {
            db,
            path,
            current: RwLock::new(None),
        };
        let latest = store.read_latest()?.map(Current::new).transpose()?;
        *store
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = latest.map(Arc::new);
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database itself, for modules that keep their own tables in the same file
    /// (`records`: shadow records; `experiments`: assignments and outcomes; `policy`:
    /// decisions). They never touch `plan_versions` or `meta`.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The latest version (cached; updated by every commit).
    pub fn current(&self) -> Option<Arc<Current>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn read_latest(&self) -> Result<Option<Record>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(VERSIONS).map_err(db_err)?;
        let latest = match table.last().map_err(db_err)? {
            None => None,
            Some((k, v)) => Some(decode(k.value(), v.value())?),
        };
        Ok(latest)
    }

    /// Commits a new version. `f` sees the latest version as of this write
    /// transaction and returns the change (or an error, which aborts the transaction
    /// and is returned as is). Blocking: call from a blocking thread.
    pub fn commit<E: From<StoreError>>(
        &self,
        f: impl FnOnce(Option<&Current>) -> Result<Change, E>,
    ) -> Result<Arc<Current>, E> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let current = {
            let mut table = tx.open_table(VERSIONS).map_err(db_err)?;
            let latest = match table.last().map_err(db_err)? {
                None => None,
                Some((k, v)) => Some(Current::new(decode(k.value(), v.value())?)?),
            };
            let change = f(latest.as_ref())?;
            let version = latest.as_ref().map_or(0, Current::version) + 1;
            let unix_ms = now_unix_ms();
            let mut plan = change.plan;
            plan.version = version;
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
            Current::new(record)?
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

    /// One version's record.
    pub fn get(&self, version: u64) -> Result<Option<Record>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(VERSIONS).map_err(db_err)?;
        let value = table.get(version).map_err(db_err)?;
        value.map(|v| decode(version, v.value())).transpose()
    }

    /// Up to `limit` (at most `MAX_HISTORY`) records, newest first.
    pub fn history(&self, limit: usize) -> Result<Vec<Record>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(VERSIONS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table
            .iter()
            .map_err(db_err)?
            .rev()
            .take(limit.min(MAX_HISTORY))
        {
            let (k, v) = entry.map_err(db_err)?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Readiness: a read transaction opens and the latest record decodes.
    /// Returns the number of stored versions.
    pub fn check_readable(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(VERSIONS).map_err(db_err)?;
        if let Some((k, v)) = table.last().map_err(db_err)? {
            decode(k.value(), v.value())?;
        }
        table.len().map_err(db_err)
    }

    /// Closes the database, reporting any error (dropping also closes it).
    pub fn close(self) -> Result<(), StoreError> {
        self.db.close().map_err(db_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn plan(weight: f64) -> PlanSpec {
        rollout_core::parse_plan(
            format!(
                r#"{{"version":99,"rollouts":[{{"name":"r","salt":"s","variants":[
                {{"name":"a","weight":{}}},{{"name":"b","weight":{weight}}}]}}]}}"#,
                100.0 - weight
            )
            .as_bytes(),
        )
        .unwrap()
        .0
    }

    fn change(weight: f64) -> Change {
        Change {
            plan: plan(weight),
            op: Op::Put,
            reason: format!("w={weight}"),
            author: "test".into(),
        }
    }

    #[test]
    fn versions_grow_and_survive_reopen() {
        let dir = TempDir::new("store");
        let store = Store::open(dir.path()).unwrap();
        assert!(store.current().is_none());
        assert_eq!(store.check_readable().unwrap(), 0);
        for i in 1..=5u32 {
            let c = store
                .commit(|_| Ok::<_, StoreError>(change(f64::from(i))))
                .unwrap();
            assert_eq!(c.version(), u64::from(i));
            assert_eq!(c.record.plan.version, u64::from(i));
        }
        store.close().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let cur = store.current().unwrap();
        assert_eq!(cur.version(), 5);
        assert_eq!(cur.record.reason, "w=5");
        let body: PlanSpec = serde_json::from_slice(&cur.plan_json).unwrap();
        assert_eq!(body, cur.record.plan);
        let h = store.history(3).unwrap();
        assert_eq!(
            h.iter().map(|r| r.version).collect::<Vec<_>>(),
            vec![5, 4, 3]
        );
        assert_eq!(store.get(2).unwrap().unwrap().plan, {
            let mut p = plan(2.0);
            p.version = 2;
            p
        });
        assert!(store.get(6).unwrap().is_none());
        assert_eq!(store.check_readable().unwrap(), 5);
    }

    #[test]
    fn a_failed_change_stores_nothing() {
        let dir = TempDir::new("store-fail");
        let store = Store::open(dir.path()).unwrap();
        store.commit(|_| Ok::<_, StoreError>(change(1.0))).unwrap();
        let r = store.commit(|cur| {
            assert_eq!(cur.unwrap().version(), 1);
            Err::<Change, _>(StoreError::Db("refused".into()))
        });
        assert!(r.is_err());
        assert_eq!(store.current().unwrap().version(), 1);
        assert_eq!(store.history(10).unwrap().len(), 1);
        let c = store.commit(|_| Ok::<_, StoreError>(change(2.0))).unwrap();
        assert_eq!(c.version(), 2);
    }

    #[test]
    fn second_process_handle_is_refused() {
        let dir = TempDir::new("store-lock");
        let _store = Store::open(dir.path()).unwrap();
        assert!(Store::open(dir.path()).is_err());
    }
}
