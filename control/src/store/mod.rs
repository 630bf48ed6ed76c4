//! The store: one redb file (`DIR/control.redb`) holding every table of the
//! sidecar, one file of this module per table family:
//!
//! | file | tables | what |
//! |---|---|---|
//! | [`plans`] | `plan_versions` | the plan versions (the newest `--history-keep`) with reason, author, time, operation |
//! | [`shadow_records`] | `shadow_records`, `shadow_record_counts` | the filter's sampled shadow comparisons |
//! | [`assignments`] | `assignments`, `assignment_order`, `assignment_counts` | which variant served a correlation id (A/B) |
//! | [`outcomes`] | `outcomes`, `outcome_order`, `outcome_counts` | rewards joined with assignments (A/B) |
//! | [`decisions`] | `policy_decisions`, `policy_decision_versions` | the policy engine's decisions |
//! | [`budget`] | `data_ledger`, `data_totals`, `outcome_evicted` | the data budget shared by records, assignments and outcomes: every item's cost and arrival order, totals per kind |
//! | [`tables`] | `data_seq` | store-wide sequence numbers of the data tables; the definitions of the tables several families write |
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
pub mod budget;
pub mod decisions;
pub mod epoch;
pub mod error;
pub mod experiment_reset;
pub mod open;
pub mod outcomes;
pub mod plans;
pub mod proxies;
pub mod shadow_records;
pub mod tables;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TransactionError,
    WriteTransaction,
};

pub use error::StoreError;
pub use open::{OpenOptions, Opener};
pub use plans::{Change, Current, Op, Record};

use error::db_err;
use plans::Plans;

/// File name of the database inside the data directory.
pub const FILE_NAME: &str = "control.redb";
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const FORMAT: &str = "1";

/// The plan versions in force at proxies (`Store::pin_versions`).
pub type Pins = Arc<dyn Fn() -> BTreeSet<u64> + Send + Sync>;

pub struct Store {
    /// The open database; `None` while a reopen after an I/O error failed. Callers
    /// clone the `Arc` and release the lock before blocking on redb.
    db: RwLock<Option<Arc<Database>>>,
    /// Opens the file again after an I/O error (the file backend, or a test's).
    opener: Opener,
    path: PathBuf,
    plans: Plans,
    epoch: String,
    /// Why the last write failed, until a write succeeds again.
    failure: Mutex<Option<String>>,
    reopens: AtomicU64,
    write_failures: AtomicU64,
    /// Bytes records, assignments and outcomes may hold together (`store::budget`).
    data_budget: u64,
    /// Versions the history retention keeps beyond `--history-keep`.
    pins: RwLock<Option<Pins>>,
    /// Items the data budget evicted since the last line on stderr, and when that was.
    evicted_unlogged: AtomicU64,
    evicted_logged_ms: AtomicU64,
}

/// At most one stderr line about the data budget's evictions per this many ms.
const EVICTION_LOG_EVERY_MS: u64 = 60_000;

impl Store {
    /// Opens (creating if needed) `dir/control.redb` with the file backend. After a
    /// crash redb repairs the file on open; the integrity of every page is checked on
    /// each open. An empty or damaged file is refused ([`OpenOptions::start_fresh`]).
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, OpenOptions::default())
    }

    /// [`Store::open`] with options (start fresh, another storage backend).
    pub fn open_with(dir: &Path, opts: OpenOptions) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Db(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(FILE_NAME);
        let db = open::open_file(&path, &opts)?;
        let epoch = init_meta(&db, &path, &opts)?;
        let plans = Plans::load(&db, &epoch, opts.history_keep)?;
        Ok(Store {
            db: RwLock::new(Some(Arc::new(db))),
            opener: opts.opener,
            path,
            plans,
            epoch,
            failure: Mutex::new(None),
            reopens: AtomicU64::new(0),
            write_failures: AtomicU64::new(0),
            data_budget: opts.data_budget,
            pins: RwLock::new(None),
            evicted_unlogged: AtomicU64::new(0),
            evicted_logged_ms: AtomicU64::new(0),
        })
    }

    /// Notes items the data budget evicted in a committed write; says so on stderr at
    /// most once a minute (the metrics count every one).
    pub(crate) fn evicted(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.evicted_unlogged.fetch_add(n, Ordering::Relaxed);
        let now = crate::util::timefmt::now_unix_ms();
        let last = self.evicted_logged_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < EVICTION_LOG_EVERY_MS
            || self
                .evicted_logged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let n = self.evicted_unlogged.swap(0, Ordering::Relaxed);
        let reach = self
            .data_usage()
            .ok()
            .and_then(|u| u.oldest_received_ms)
            .map_or(String::new(), |ms| {
                format!(
                    "; the oldest item kept is {} s old",
                    now.saturating_sub(ms) / 1000
                )
            });
        eprintln!(
            "rollout-control: the data budget ({} bytes, --data-budget-bytes) evicted {n} \
             items, oldest first{reach} (rollout_control_data_evicted_total)",
            self.data_budget
        );
    }

    /// Tells the history retention which versions are in force at proxies (asked at
    /// every commit; the HTTP state wires its proxies table here): they are kept even
    /// when older than the `--history-keep` newest.
    pub fn pin_versions(&self, pins: Pins) {
        *self.pins.write().unwrap_or_else(PoisonError::into_inner) = Some(pins);
    }

    fn pinned(&self) -> BTreeSet<u64> {
        let pins = self
            .pins
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        pins.map(|f| f()).unwrap_or_default()
    }

    /// Bytes records, assignments and outcomes may hold together.
    pub fn data_budget(&self) -> u64 {
        self.data_budget
    }

    /// The data budget's figures (`store::budget`): bytes and items held and evicted
    /// per kind, the oldest item's arrival. One small read transaction.
    pub fn data_usage(&self) -> Result<budget::Usage, StoreError> {
        budget::usage(&self.begin_read()?, self.data_budget)
    }

    /// Outcomes of a variant the data budget evicted.
    pub fn outcomes_evicted(&self, rollout: &str, variant: &str) -> Result<u64, StoreError> {
        budget::outcomes_evicted(&self.begin_read()?, rollout, variant)
    }

    /// Plan versions kept (the newest; `--history-keep`).
    pub fn history_keep(&self) -> u64 {
        self.plans.keep()
    }

    /// The oldest plan version still stored (older ones were dropped by the history
    /// retention); `None` before any plan.
    pub fn oldest_version(&self) -> Result<Option<u64>, StoreError> {
        plans::oldest(&self.begin_read()?)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The store's epoch id: random, drawn when the store opens and kept in the file
    /// (`meta.epoch`) for as long as it is open. A restored backup, a new store, a
    /// restart all serve under a new one.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = self
            .db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(Arc::clone);
        match db {
            Some(db) => f(&db),
            None => Err(StoreError::Unavailable(self.unavailable_reason())),
        }
    }

    fn unavailable_reason(&self) -> String {
        let cause = self
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| "an I/O error".into());
        format!("{} is closed after {cause}; reopening", self.path.display())
    }

    /// A read transaction (every table family reads through one).
    pub fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        self.with_db(|db| db.begin_read().map_err(db_err))
    }

    /// A write transaction (committed by the caller; dropped: nothing is stored).
    /// After an I/O error redb refuses every write until the file is reopened: this
    /// reopens it (and proves a write works) first, so writes recover by themselves
    /// once the disk does.
    pub fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        match self.with_db(|db| Ok(db.begin_write())) {
            Ok(Ok(tx)) => Ok(tx),
            Ok(Err(TransactionError::Storage(redb::StorageError::PreviousIo))) | Err(_) => {
                self.recover()?;
                self.with_db(|db| db.begin_write().map_err(db_err))
            }
            Ok(Err(e)) => Err(db_err(e)),
        }
    }

    /// Whether writes work: `Ok` unless the last write hit an I/O error and the store
    /// could not recover since (then this retries the recovery once). Never waits for
    /// a running write.
    pub fn check_writable(&self) -> Result<(), StoreError> {
        let state = self.with_db(|db| match db.try_begin_write() {
            Ok(_) | Err(TransactionError::WouldBlock) => Ok(true),
            Err(TransactionError::Storage(redb::StorageError::PreviousIo)) => Ok(false),
            Err(e) => Err(db_err(e)),
        });
        match state {
            Ok(true) => Ok(()),
            Ok(false) | Err(StoreError::Unavailable(_)) => self.recover(),
            Err(e) => Err(e),
        }
    }

    /// Closes the database, opens the file again (redb repairs it to the last
    /// committed transaction) and commits a small probe write. On failure the cause is
    /// kept for [`Store::check_writable`] and the error is [`StoreError::Unavailable`].
    pub fn recover(&self) -> Result<(), StoreError> {
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        // Another thread may have recovered while this one waited for the lock.
        if let Some(db) = slot.as_ref() {
            match db.try_begin_write() {
                Ok(_) | Err(TransactionError::WouldBlock) => return Ok(()),
                Err(_) => {}
            }
        }
        self.write_failures.fetch_add(1, Ordering::Relaxed);
        // Drop the failed handle first: it holds the file's lock.
        drop(slot.take());
        let result = (|| -> Result<Database, StoreError> {
            let db = (self.opener)(&self.path).map_err(|e| {
                StoreError::Unavailable(format!("cannot reopen {}: {e}", self.path.display()))
            })?;
            probe(&db).map_err(|e| {
                StoreError::Unavailable(format!(
                    "{} reopened but writes still fail: {e}",
                    self.path.display()
                ))
            })?;
            Ok(db)
        })();
        match result {
            Ok(db) => {
                self.reopens.fetch_add(1, Ordering::Relaxed);
                self.plans.reload(&db)?;
                *slot = Some(Arc::new(db));
                *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = None;
                Ok(())
            }
            Err(e) => {
                *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Times the store reopened its file after an I/O error.
    pub fn reopens(&self) -> u64 {
        self.reopens.load(Ordering::Relaxed)
    }

    /// Recoveries attempted after an I/O error (successful or not).
    pub fn write_failures(&self) -> u64 {
        self.write_failures.load(Ordering::Relaxed)
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
        let pinned = self.pinned();
        let tx = self.begin_write()?;
        self.plans.commit(tx, &pinned, f)
    }

    /// One plan version's record.
    pub fn get(&self, version: u64) -> Result<Option<Record>, StoreError> {
        plans::get(&self.begin_read()?, version)
    }

    /// Up to `limit` (at most [`plans::MAX_HISTORY`]) plan records, newest first.
    pub fn history(&self, limit: usize) -> Result<Vec<Record>, StoreError> {
        plans::history(&self.begin_read()?, limit)
    }

    /// Up to `limit` plan records older than `before`, newest first, each mapped by
    /// `f` as it is read (a page of the history without holding every plan).
    pub fn history_map<T>(
        &self,
        limit: usize,
        before: Option<u64>,
        f: impl FnMut(Record) -> T,
    ) -> Result<Vec<T>, StoreError> {
        plans::history_map(&self.begin_read()?, limit, before, f)
    }

    /// Readiness: a read transaction opens and the latest record decodes.
    /// Returns the number of stored versions.
    pub fn check_readable(&self) -> Result<u64, StoreError> {
        plans::check_readable(&self.begin_read()?)
    }

    /// Closes the database, reporting any error (dropping also closes it).
    pub fn close(self) -> Result<(), StoreError> {
        match self
            .db
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .map(Arc::try_unwrap)
        {
            Some(Ok(db)) => db.close().map_err(db_err),
            // Still in use by a blocked caller: dropping closes it.
            Some(Err(_)) | None => Ok(()),
        }
    }
}

/// Creates the tables, checks the format, stores a new epoch id, applies the history
/// retention and the data budget; returns the epoch.
fn init_meta(db: &Database, path: &Path, opts: &OpenOptions) -> Result<String, StoreError> {
    let tx = db.begin_write().map_err(db_err)?;
    let epoch = {
        Plans::create(&tx)?;
        Plans::prune_at_open(&tx, opts.history_keep)?;
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
        // A new epoch at every open: a backup copied back is the same file as when
        // it was taken, so only a new id tells the proxies its lower versions are
        // meant (see epoch.rs).
        let e = epoch::new_epoch()?;
        meta.insert("epoch", e.as_str()).map_err(db_err)?;
        budget::open(&tx, &mut meta, opts.data_budget)?;
        e
    };
    tx.commit().map_err(db_err)?;
    Ok(epoch)
}

/// A small durable write: proves the reopened file takes writes again.
fn probe(db: &Database) -> Result<(), StoreError> {
    let tx = db.begin_write().map_err(db_err)?;
    {
        let mut meta = tx.open_table(META).map_err(db_err)?;
        let now = crate::util::timefmt::now_unix_ms().to_string();
        meta.insert("last_recovery_ms", now.as_str())
            .map_err(db_err)?;
    }
    tx.commit().map_err(db_err)
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
        let mut body: PlanSpec = serde_json::from_slice(&cur.plan_json).unwrap();
        // Served with the store's epoch, stored without.
        assert_eq!(body.epoch.as_deref(), Some(store.epoch()));
        assert_eq!(cur.etag, format!("\"v5.{}\"", store.epoch()));
        body.epoch = None;
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
    fn history_pages_with_a_cursor() {
        let dir = TempDir::new("store-pages");
        let store = Store::open(dir.path()).unwrap();
        for i in 1..=7u32 {
            store
                .commit(|_| Ok::<_, StoreError>(change(f64::from(i))))
                .unwrap();
        }
        let page = |before| store.history_map(3, before, |r| r.version).unwrap();
        assert_eq!(page(None), vec![7, 6, 5]);
        assert_eq!(page(Some(5)), vec![4, 3, 2]);
        assert_eq!(page(Some(2)), vec![1]);
        assert!(page(Some(1)).is_empty());
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
