//! The data budget: shadow records, assignments and outcomes share one total byte
//! budget (`serve --data-budget-bytes`), enforced in the write transaction that adds
//! data, oldest first by the server's arrival order.
//!
//! Tables:
//! - `data_ledger`: `(tier, seq, kind) -> (bytes, received_ms, a, b, n)`: one entry
//!   per item held. `seq` is the item's own sequence number (one store-wide sequence,
//!   `data_seq["data"]`, so it is the arrival order across kinds); `a`, `b`, `n` locate
//!   the item (a record: rollout, "", its `unix_ms`; an assignment: rollout, "",
//!   `unix_ms`; an outcome: rollout, variant, 0). `bytes` is what the item was charged.
//! - `data_totals`: `kind -> (bytes held, items held, items evicted, bytes evicted)`,
//!   updated by every write: the budget never needs a scan, and it is right after a
//!   restart.
//! - `outcome_evicted`: `(rollout, variant) -> outcomes evicted` (the experiment report
//!   says when its data was cut).
//!
//! What an item costs: the bytes of its keys and values in every table that holds it,
//! its ledger entry included ([`record_bytes`], [`assignment_bytes`],
//! [`outcome_bytes`]). redb's pages, free space and copy-on-write make the file larger
//! than the budget (about twice as large when full, more right after big deletes).
//!
//! Eviction order, and why. Tier 0 holds shadow records and assignments, tier 1 holds
//! outcomes; the oldest item of tier 0 goes first, and outcomes only once no record
//! and no assignment is left. Records are samples for a report over recent traffic;
//! an assignment matters until its outcome arrives (a late outcome of an evicted
//! assignment is counted `unknown`). Outcomes are an experiment's evidence: its
//! sequential test replays them in arrival order, so removing one changes the verdict.
//! They are therefore the last to go, and when they do go (the budget cannot hold
//! the experiments alone) each variant counts what it lost (`outcome_evicted`) and the
//! experiment report says so.
//!
//! Per-rollout count caps (`MAX_RECORDS_PER_ROLLOUT`, ...) still apply; what they trim
//! leaves the ledger too (not counted as evicted: the cap is not the budget).

use std::collections::BTreeMap;

use redb::{ReadTransaction, ReadableTable, Table, TableDefinition, WriteTransaction};

use crate::store::error::{db_err, StoreError};
use crate::store::tables::{
    read_table, ASSIGNMENTS, ASSIGNMENT_COUNTS, ASSIGNMENT_ORDER, OUTCOMES, OUTCOME_COUNTS,
    OUTCOME_ORDER, SHADOW_RECORDS, SHADOW_RECORD_COUNTS,
};

/// The budget without `--data-budget-bytes`: 1 GiB.
pub const DEFAULT_DATA_BUDGET: u64 = 1 << 30;
/// The smallest budget `serve` takes: twice the largest ingest body, so one batch
/// always fits beside the one before it.
pub const MIN_DATA_BUDGET: u64 = 8 << 20;

/// Bytes of a ledger entry besides its strings.
const LEDGER_ROW: u64 = 1 + 8 + 1 + 8 + 8 + 8;

type LedgerKey = (u8, u64, u8);
type LedgerValue<'a> = (u64, u64, &'a str, &'a str, u64);
const LEDGER: TableDefinition<LedgerKey, LedgerValue> = TableDefinition::new("data_ledger");
/// kind -> (bytes held, items held, items evicted, bytes evicted).
const TOTALS: TableDefinition<u8, (u64, u64, u64, u64)> = TableDefinition::new("data_totals");
/// (rollout, variant) -> outcomes the budget evicted.
pub(crate) const OUTCOME_EVICTED: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("outcome_evicted");

/// The three kinds of data under the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    ShadowRecord = 0,
    Assignment = 1,
    Outcome = 2,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::ShadowRecord, Kind::Assignment, Kind::Outcome];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ShadowRecord => "shadow_records",
            Kind::Assignment => "assignments",
            Kind::Outcome => "outcomes",
        }
    }

    fn from_u8(k: u8) -> Option<Kind> {
        match k {
            0 => Some(Kind::ShadowRecord),
            1 => Some(Kind::Assignment),
            2 => Some(Kind::Outcome),
            _ => None,
        }
    }

    /// Eviction tier: outcomes go last.
    fn tier(self) -> u8 {
        match self {
            Kind::Outcome => 1,
            Kind::ShadowRecord | Kind::Assignment => 0,
        }
    }

    fn key(self, seq: u64) -> LedgerKey {
        (self.tier(), seq, self as u8)
    }
}

/// A shadow record's cost: its row (key and JSON) and its ledger entry.
pub fn record_bytes(rollout: &str, json_len: usize) -> u64 {
    json_len as u64 + 2 * rollout.len() as u64 + 16 + LEDGER_ROW
}

/// An assignment's cost: its rows in `assignments` and `assignment_order`, and its
/// ledger entry.
pub fn assignment_bytes(id: &str, rollout: &str, variant: &str) -> u64 {
    2 * id.len() as u64 + 3 * rollout.len() as u64 + variant.len() as u64 + 32 + LEDGER_ROW
}

/// An outcome's cost: its rows in `outcomes` and `outcome_order`, and its ledger entry.
pub fn outcome_bytes(id: &str, rollout: &str, variant: &str) -> u64 {
    2 * id.len() as u64 + 3 * (rollout.len() + variant.len()) as u64 + 32 + LEDGER_ROW
}

/// One kind's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub bytes: u64,
    pub items: u64,
    pub evicted_items: u64,
    pub evicted_bytes: u64,
}

/// The budget's state: each kind's figures, and the server time the oldest item
/// still held arrived (`None` when nothing is held).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub budget: u64,
    pub kinds: Vec<(Kind, Totals)>,
    pub oldest_received_ms: Option<u64>,
}

impl Usage {
    pub fn bytes(&self) -> u64 {
        self.kinds.iter().map(|(_, t)| t.bytes).sum()
    }
}

/// The ledger of a write transaction: add and remove items, then [`Ledger::finish`]
/// writes the totals (dropped without it: the transaction must not commit).
pub(crate) struct Ledger<'t> {
    entries: Table<'t, LedgerKey, LedgerValue<'static>>,
    totals: [Totals; 3],
}

impl<'t> Ledger<'t> {
    pub(crate) fn open(tx: &'t WriteTransaction) -> Result<Ledger<'t>, StoreError> {
        let entries = tx.open_table(LEDGER).map_err(db_err)?;
        let mut totals = [Totals::default(); 3];
        let t = tx.open_table(TOTALS).map_err(db_err)?;
        for k in Kind::ALL {
            if let Some(g) = t.get(k as u8).map_err(db_err)? {
                let (bytes, items, evicted_items, evicted_bytes) = g.value();
                totals[k as usize] = Totals {
                    bytes,
                    items,
                    evicted_items,
                    evicted_bytes,
                };
            }
        }
        Ok(Ledger { entries, totals })
    }

    /// Charges a new item (`locator`: see the module's table).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add(
        &mut self,
        kind: Kind,
        seq: u64,
        bytes: u64,
        received_ms: u64,
        a: &str,
        b: &str,
        n: u64,
    ) -> Result<(), StoreError> {
        self.entries
            .insert(kind.key(seq), (bytes, received_ms, a, b, n))
            .map_err(db_err)?;
        let t = &mut self.totals[kind as usize];
        t.bytes = t.bytes.saturating_add(bytes);
        t.items = t.items.saturating_add(1);
        Ok(())
    }

    /// Releases an item deleted by something else than the budget (a count cap, a
    /// reset). Returns its bytes (0 if it was not charged).
    pub(crate) fn release(&mut self, kind: Kind, seq: u64) -> Result<u64, StoreError> {
        let bytes = self
            .entries
            .remove(kind.key(seq))
            .map_err(db_err)?
            .map_or(0, |g| g.value().0);
        if bytes > 0 {
            let t = &mut self.totals[kind as usize];
            t.bytes = t.bytes.saturating_sub(bytes);
            t.items = t.items.saturating_sub(1);
        }
        Ok(bytes)
    }

    fn held(&self) -> u64 {
        self.totals.iter().map(|t| t.bytes).sum()
    }

    /// Writes the totals.
    pub(crate) fn finish(self, tx: &WriteTransaction) -> Result<(), StoreError> {
        let mut t = tx.open_table(TOTALS).map_err(db_err)?;
        for k in Kind::ALL {
            let x = self.totals[k as usize];
            t.insert(
                k as u8,
                (x.bytes, x.items, x.evicted_items, x.evicted_bytes),
            )
            .map_err(db_err)?;
        }
        Ok(())
    }
}

/// One item the budget evicts.
struct Victim {
    kind: Kind,
    seq: u64,
    a: String,
    b: String,
    n: u64,
}

/// Evicts the oldest items (tier 0 first, then outcomes) until the data held is
/// within `budget`. Runs in the write transaction that added data, after its
/// tables are closed; costs O(items evicted). Returns the items evicted.
pub(crate) fn enforce(tx: &WriteTransaction, budget: u64) -> Result<u64, StoreError> {
    let mut ledger = Ledger::open(tx)?;
    if ledger.held() <= budget {
        return Ok(0);
    }
    let mut evicted = 0u64;
    let mut records = tx.open_table(SHADOW_RECORDS).map_err(db_err)?;
    let mut a_by_id = tx.open_table(ASSIGNMENTS).map_err(db_err)?;
    let mut a_order = tx.open_table(ASSIGNMENT_ORDER).map_err(db_err)?;
    let mut o_by_id = tx.open_table(OUTCOMES).map_err(db_err)?;
    let mut o_order = tx.open_table(OUTCOME_ORDER).map_err(db_err)?;
    let mut o_lost = tx.open_table(OUTCOME_EVICTED).map_err(db_err)?;
    // Count tables are updated once per rollout (or variant) at the end.
    let mut record_counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut assignment_counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut outcome_counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    while ledger.held() > budget {
        let Some((key, value)) = ledger.entries.pop_first().map_err(db_err)? else {
            break;
        };
        let (_, seq, kind) = key.value();
        let (bytes, _, a, b, n) = value.value();
        let (a, b) = (a.to_string(), b.to_string());
        drop((key, value));
        let Some(kind) = Kind::from_u8(kind) else {
            return Err(StoreError::Corrupt(format!(
                "data_ledger entry {seq} has kind {kind}"
            )));
        };
        let v = Victim { kind, seq, a, b, n };
        match v.kind {
            Kind::ShadowRecord => {
                if records
                    .remove((v.a.as_str(), v.n, v.seq))
                    .map_err(db_err)?
                    .is_some()
                {
                    *record_counts.entry(v.a.clone()).or_insert(0) += 1;
                }
            }
            Kind::Assignment => {
                let id = a_order
                    .remove((v.a.as_str(), v.n, v.seq))
                    .map_err(db_err)?
                    .map(|g| g.value().to_string());
                if let Some(id) = id {
                    *assignment_counts.entry(v.a.clone()).or_insert(0) += 1;
                    let here = a_by_id.get(id.as_str()).map_err(db_err)?.is_some_and(|g| {
                        let (r, _, ms, s) = g.value();
                        r == v.a && ms == v.n && s == v.seq
                    });
                    if here {
                        a_by_id.remove(id.as_str()).map_err(db_err)?;
                    }
                }
            }
            Kind::Outcome => {
                let id = o_order
                    .remove((v.a.as_str(), v.b.as_str(), v.seq))
                    .map_err(db_err)?
                    .map(|g| g.value().0.to_string());
                if let Some(id) = id {
                    *outcome_counts
                        .entry((v.a.clone(), v.b.clone()))
                        .or_insert(0) += 1;
                    let here = o_by_id
                        .get(id.as_str())
                        .map_err(db_err)?
                        .is_some_and(|g| g.value().2 == v.seq);
                    if here {
                        o_by_id.remove(id.as_str()).map_err(db_err)?;
                    }
                }
            }
        }
        let t = &mut ledger.totals[v.kind as usize];
        t.bytes = t.bytes.saturating_sub(bytes);
        t.items = t.items.saturating_sub(1);
        t.evicted_items = t.evicted_items.saturating_add(1);
        t.evicted_bytes = t.evicted_bytes.saturating_add(bytes);
        evicted += 1;
    }
    {
        let mut c = tx.open_table(SHADOW_RECORD_COUNTS).map_err(db_err)?;
        for (r, n) in record_counts {
            let have = c.get(r.as_str()).map_err(db_err)?.map_or(0, |g| g.value());
            c.insert(r.as_str(), have.saturating_sub(n))
                .map_err(db_err)?;
        }
        let mut c = tx.open_table(ASSIGNMENT_COUNTS).map_err(db_err)?;
        for (r, n) in assignment_counts {
            let have = c.get(r.as_str()).map_err(db_err)?.map_or(0, |g| g.value());
            c.insert(r.as_str(), have.saturating_sub(n))
                .map_err(db_err)?;
        }
        let mut c = tx.open_table(OUTCOME_COUNTS).map_err(db_err)?;
        for ((r, v), n) in outcome_counts {
            let key = (r.as_str(), v.as_str());
            let have = c.get(key).map_err(db_err)?.map_or(0, |g| g.value());
            c.insert(key, have.saturating_sub(n)).map_err(db_err)?;
            let lost = o_lost.get(key).map_err(db_err)?.map_or(0, |g| g.value());
            o_lost.insert(key, lost.saturating_add(n)).map_err(db_err)?;
        }
    }
    drop((records, a_by_id, a_order, o_by_id, o_order, o_lost));
    ledger.finish(tx)?;
    Ok(evicted)
}

/// Outcomes of a variant the budget evicted.
pub fn outcomes_evicted(
    tx: &ReadTransaction,
    rollout: &str,
    variant: &str,
) -> Result<u64, StoreError> {
    let Some(t) = read_table(tx, OUTCOME_EVICTED)? else {
        return Ok(0);
    };
    let n = t
        .get((rollout, variant))
        .map_err(db_err)?
        .map_or(0, |g| g.value());
    Ok(n)
}

/// Forgets the evicted-outcome counts of a rollout (its experiment is reset).
pub(crate) fn reset_rollout(tx: &WriteTransaction, rollout: &str) -> Result<(), StoreError> {
    let upper = format!("{rollout}\0");
    let mut t = tx.open_table(OUTCOME_EVICTED).map_err(db_err)?;
    let keys: Vec<String> = t
        .range((rollout, "")..(upper.as_str(), ""))
        .map_err(db_err)?
        .map(|e| e.map(|(k, _)| k.value().1.to_string()))
        .collect::<Result<_, _>>()
        .map_err(db_err)?;
    for v in keys {
        t.remove((rollout, v.as_str())).map_err(db_err)?;
    }
    Ok(())
}

/// The budget's figures (three rows and two ledger ends).
pub fn usage(tx: &ReadTransaction, budget: u64) -> Result<Usage, StoreError> {
    let mut kinds: Vec<(Kind, Totals)> =
        Kind::ALL.iter().map(|k| (*k, Totals::default())).collect();
    if let Some(t) = read_table(tx, TOTALS)? {
        for (k, slot) in &mut kinds {
            if let Some(g) = t.get(*k as u8).map_err(db_err)? {
                let (bytes, items, evicted_items, evicted_bytes) = g.value();
                *slot = Totals {
                    bytes,
                    items,
                    evicted_items,
                    evicted_bytes,
                };
            }
        }
    }
    let mut oldest: Option<u64> = None;
    if let Some(t) = read_table(tx, LEDGER)? {
        // The first entry of each tier is its oldest.
        for tier in [0u8, 1] {
            let first = t
                .range((tier, 0u64, 0u8)..=(tier, u64::MAX, u8::MAX))
                .map_err(db_err)?
                .next()
                .transpose()
                .map_err(db_err)?
                .map(|(_, v)| v.value().1);
            if let Some(ms) = first {
                oldest = Some(oldest.map_or(ms, |o| o.min(ms)));
            }
        }
    }
    Ok(Usage {
        budget,
        kinds,
        oldest_received_ms: oldest,
    })
}

/// Meta key set once the ledger covers every item.
const LEDGER_MARKER: &str = "data_ledger";

/// At open: charges the items of a store written before the budget existed (once:
/// a full scan, never on the write path), moves the per-kind sequences to the shared
/// one, then enforces `budget` (it may have been lowered since the last start).
pub(crate) fn open(
    tx: &WriteTransaction,
    meta: &mut Table<'_, &str, &str>,
    budget: u64,
) -> Result<(), StoreError> {
    if meta.get(LEDGER_MARKER).map_err(db_err)?.is_none() {
        charge_existing(tx)?;
        meta.insert(LEDGER_MARKER, "1").map_err(db_err)?;
    }
    enforce(tx, budget)?;
    Ok(())
}

fn charge_existing(tx: &WriteTransaction) -> Result<(), StoreError> {
    use crate::util::timefmt::now_unix_ms;
    let now = now_unix_ms();
    let mut ledger = Ledger::open(tx)?;
    let mut max_seq = 0u64;
    {
        let t = tx.open_table(SHADOW_RECORDS).map_err(db_err)?;
        for e in t.iter().map_err(db_err)? {
            let (k, v) = e.map_err(db_err)?;
            let (r, ms, seq) = k.value();
            max_seq = max_seq.max(seq.saturating_add(1));
            let bytes = record_bytes(r, v.value().len());
            ledger.add(Kind::ShadowRecord, seq, bytes, ms.min(now), r, "", ms)?;
        }
    }
    {
        let by_id = tx.open_table(ASSIGNMENTS).map_err(db_err)?;
        let order = tx.open_table(ASSIGNMENT_ORDER).map_err(db_err)?;
        for e in order.iter().map_err(db_err)? {
            let (k, v) = e.map_err(db_err)?;
            let (r, ms, seq) = k.value();
            max_seq = max_seq.max(seq.saturating_add(1));
            let id = v.value();
            let variant = by_id
                .get(id)
                .map_err(db_err)?
                .map(|g| g.value().1.to_string())
                .unwrap_or_default();
            let bytes = assignment_bytes(id, r, &variant);
            ledger.add(Kind::Assignment, seq, bytes, ms.min(now), r, "", ms)?;
        }
    }
    {
        let order = tx.open_table(OUTCOME_ORDER).map_err(db_err)?;
        for e in order.iter().map_err(db_err)? {
            let (k, v) = e.map_err(db_err)?;
            let (r, variant, seq) = k.value();
            max_seq = max_seq.max(seq.saturating_add(1));
            let bytes = outcome_bytes(v.value().0, r, variant);
            // No arrival time was kept: "now" (outcomes go last anyway).
            ledger.add(Kind::Outcome, seq, bytes, now, r, variant, 0)?;
        }
    }
    ledger.finish(tx)?;
    crate::store::tables::start_shared_seq(tx, max_seq)?;
    Ok(())
}
