//! Opening the store file: the redb settings, the storage backend (the file, or a
//! test's), and the refusal of an empty or damaged file unless the operator asked to
//! start fresh (`serve --start-fresh`), which moves the refused file aside.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, DatabaseError};

use crate::store::error::StoreError;
use crate::util::timefmt::now_unix_ms;

/// redb's page cache; the history is small, 1 GiB (redb's default) is far too much for a sidecar.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Opens (creating if missing or empty) the database at a path; called again to
/// reopen the file after an I/O error.
pub type Opener = Arc<dyn Fn(&Path) -> Result<Database, DatabaseError> + Send + Sync>;

#[derive(Clone)]
pub struct OpenOptions {
    /// Move an empty or damaged store file aside and start a new, empty store.
    pub start_fresh: bool,
    pub opener: Opener,
    /// Bytes records, assignments and outcomes may hold together (`store::budget`).
    pub data_budget: u64,
    /// Plan versions kept (the newest; at least 1).
    pub history_keep: u64,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            start_fresh: false,
            opener: Arc::new(|path: &Path| builder().create(path)),
            data_budget: crate::store::budget::DEFAULT_DATA_BUDGET,
            history_keep: crate::store::plans::DEFAULT_HISTORY_KEEP,
        }
    }
}

/// redb's settings for the store: a small page cache, every page checked on open.
pub fn builder() -> redb::Builder {
    let mut b = Database::builder();
    b.set_cache_size(CACHE_BYTES)
        .set_check_integrity_on_open(true);
    b
}

/// Opens `path`. A zero-length file (not a new store: something truncated it) and a
/// file redb cannot open are refused naming the file, unless `start_fresh`, which
/// renames the file to `<path>.refused-<unix_ms>` and creates a new store.
pub fn open_file(path: &Path, opts: &OpenOptions) -> Result<Database, StoreError> {
    let empty = std::fs::metadata(path).is_ok_and(|m| m.len() == 0);
    if empty {
        if !opts.start_fresh {
            return Err(StoreError::Corrupt(format!(
                "{} is empty (0 bytes): refusing to start a new store over it (a truncated \
                 store loses every version); pass --start-fresh to move it aside and start \
                 an empty store",
                path.display()
            )));
        }
        let aside = move_aside(path)?;
        eprintln!(
            "rollout-control: {} is empty; --start-fresh moved it to {}",
            path.display(),
            aside.display()
        );
    }
    match (opts.opener)(path) {
        Ok(db) => Ok(db),
        Err(DatabaseError::DatabaseAlreadyOpen) => Err(StoreError::Db(format!(
            "cannot open {}: another process has it open",
            path.display()
        ))),
        Err(e) if opts.start_fresh && !empty => {
            let aside = move_aside(path)?;
            eprintln!(
                "rollout-control: {} cannot be opened ({e}); --start-fresh moved it to {}",
                path.display(),
                aside.display()
            );
            (opts.opener)(path)
                .map_err(|e| StoreError::Db(format!("cannot create {}: {e}", path.display())))
        }
        Err(e) => Err(StoreError::Corrupt(format!(
            "cannot open {}: {e}; pass --start-fresh to move it aside and start an empty store",
            path.display()
        ))),
    }
}

fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".refused-{}", now_unix_ms()));
    let aside = PathBuf::from(aside);
    std::fs::rename(path, &aside).map_err(|e| {
        StoreError::Db(format!(
            "cannot move {} aside to {}: {e}",
            path.display(),
            aside.display()
        ))
    })?;
    Ok(aside)
}
