//! The store: one redb file (`DIR/control.redb`) holding every table of the
//! sidecar, one file of this module per table family:
//!
//! | file | tables | what |
//! |---|---|---|
//! | [`plans`] | `plan_versions` | every plan version with reason, author, time, operation |
//! | [`shadow_records`] | `shadow_records`, `shadow_record_counts` | the filter's sampled shadow comparisons |
//! | [`assignments`] | `assignments`, `assignment_order`, `assignment_counts` | which variant served a correlation id (A/B) |
//! | [`outcomes`] | `outcomes`, `outcome_order`, `outcome_counts` | rewards joined with assignments (A/B) |
//! | [`decisions`] | `policy_decisions`, `policy_decision_versions` | the policy engine's decisions |
//! | [`tables`] | `data_seq` | store-wide sequence numbers of the data tables |
//! | here | `meta` | `format -> "1"` |
//!
//! Plus [`proxies`], the in-memory table of polling proxies (not in redb).
//!
//! Every error is a [`StoreError`] (one mapping of redb's errors: [`error::db_err`]);
//! async code runs store calls through [`blocking::blocking`]. Opening checks the
//! integrity of every page and recovers from an unclean shutdown; the file is locked
//! (a second process on the same directory fails to open it).

pub mod assignments;
pub mod blocking;
pub mod decisions;
pub mod error;
pub mod experiment_reset;
pub mod outcomes;
pub mod plans;
pub mod proxies;
pub mod shadow_records;
pub mod tables;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};

pub use error::StoreError;
pub use plans::{Change, Current, Op, Record};

use error::db_err;
use plans::Plans;

/// File name of the database inside the data directory.
pub const FILE_NAME: &str = "control.redb";
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const FORMAT: &str = "1";
/// redb's page cache; the history is small, 1 GiB (redb's default) is far too much for a sidecar.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

pub struct Store {
    db: Database,
    path: PathBuf,
    plans: Plans,
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
            Plans::create(&tx)?;
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
        let plans = Plans::load(&db)?;
        Ok(Store { db, path, plans })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A read transaction (every table family reads through one).
    pub fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        self.db.begin_read().map_err(db_err)
    }

    /// A write transaction (committed by the caller; dropped: nothing is stored).
    pub fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        self.db.begin_write().map_err(db_err)
    }

    /// The latest plan version (cached; updated by every commit).
    pub fn current(&self) -> Option<Arc<Current>> {
        self.plans.current()
    }

    /// Commits a new plan version. `f` sees the latest version as of this write
    /// transaction and returns the change (or an error, which aborts the transaction
    /// and is returned as is). Blocking: call from a blocking thread.
    pub fn commit<E: From<StoreError>>(
        &self,
        f: impl FnOnce(Option<&Current>) -> Result<Change, E>,
    ) -> Result<Arc<Current>, E> {
        self.plans.commit(&self.db, f)
    }

    /// One plan version's record.
    pub fn get(&self, version: u64) -> Result<Option<Record>, StoreError> {
        plans::get(&self.db, version)
    }

    /// Up to `limit` (at most [`plans::MAX_HISTORY`]) plan records, newest first.
    pub fn history(&self, limit: usize) -> Result<Vec<Record>, StoreError> {
        plans::history(&self.db, limit)
    }

    /// Readiness: a read transaction opens and the latest record decodes.
    /// Returns the number of stored versions.
    pub fn check_readable(&self) -> Result<u64, StoreError> {
        plans::check_readable(&self.db)
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
    use rollout_core::PlanSpec;

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
