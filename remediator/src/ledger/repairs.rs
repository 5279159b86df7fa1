//! Progress of repairs that insert rows, so that a repair killed or failed midway continues
//! where it stopped: after each batch is committed in the target, the highest id of the
//! window handled so far is recorded here; the next run of the same repair (same fix, table
//! and window) searches only the ids after it. The target commit and this record are not one
//! transaction: a crash between them makes the next run handle that batch again, and the
//! insert path inserts only ids still absent, so no row is ever written twice.

use dmsguard_pipeline::config::FixName;

use super::{Ledger, LedgerError};

/// Which repair: a fix, a table and the window it repairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairKey {
    pub fix: FixName,
    /// The table as configured (`[[tables]] source`).
    pub table: String,
    /// The window as the job asked for it (`UTC day 2026-12-02`, `ids 1..=200000`, …).
    pub window: String,
}

/// How far an unfinished repair got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairProgress {
    /// The window's ids when the repair began.
    pub range_lo: i64,
    pub range_hi: i64,
    /// Every id of the window up to this one is handled.
    pub done_through: i64,
    /// Rows inserted so far by the runs of this repair.
    pub inserted: i64,
    pub job_id: Option<i64>,
}

impl Ledger {
    /// The progress of an unfinished repair, if one is recorded.
    pub async fn repair_progress(
        &self,
        key: &RepairKey,
    ) -> Result<Option<RepairProgress>, LedgerError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT range_lo, range_hi, done_through, inserted, job_id
                 FROM dmsguard.repair_progress
                 WHERE fix = $1 AND table_name = $2 AND window_key = $3",
                &[&key.fix.as_str(), &key.table, &key.window],
            )
            .await
            .map_err(LedgerError::query("reading repair progress"))?;
        Ok(row.map(|r| RepairProgress {
            range_lo: r.get(0),
            range_hi: r.get(1),
            done_through: r.get(2),
            inserted: r.get(3),
            job_id: r.get(4),
        }))
    }

    /// Records that `job` has handled every id of the repair's window up to `done_through`.
    pub async fn record_repair_progress(
        &self,
        key: &RepairKey,
        job_id: Option<i64>,
        progress: &RepairProgress,
    ) -> Result<(), LedgerError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO dmsguard.repair_progress
                     (fix, table_name, window_key, range_lo, range_hi, done_through, inserted, job_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (fix, table_name, window_key) DO UPDATE
                 SET range_lo = EXCLUDED.range_lo, range_hi = EXCLUDED.range_hi,
                     done_through = EXCLUDED.done_through, inserted = EXCLUDED.inserted,
                     job_id = EXCLUDED.job_id, updated_at = now()",
                &[
                    &key.fix.as_str(),
                    &key.table,
                    &key.window,
                    &progress.range_lo,
                    &progress.range_hi,
                    &progress.done_through,
                    &progress.inserted,
                    &job_id,
                ],
            )
            .await
            .map_err(LedgerError::query("recording repair progress"))?;
        Ok(())
    }

    /// Forgets the progress of a repair that finished: its next run searches the whole window.
    pub async fn clear_repair_progress(&self, key: &RepairKey) -> Result<(), LedgerError> {
        self.client()
            .await?
            .execute(
                "DELETE FROM dmsguard.repair_progress
                 WHERE fix = $1 AND table_name = $2 AND window_key = $3",
                &[&key.fix.as_str(), &key.table, &key.window],
            )
            .await
            .map_err(LedgerError::query("clearing repair progress"))?;
        Ok(())
    }
}
