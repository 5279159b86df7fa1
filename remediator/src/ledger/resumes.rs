//! Resume obligations: a task a fix stopped is owed a resume from the moment the stop is sent
//! until it runs again (`resumed`) or a human is told (`needs_human`, which also becomes the
//! job's outcome). The fixes resume their tasks themselves when they can; the worker's sweeper
//! (`crate::worker`) carries out whatever is still owed, after timeouts, throttling and
//! restarts.

use chrono::{DateTime, Utc};
use dmsguard_pipeline::config::FixName;
use tokio_postgres::Row;

use super::{fix_from, Ledger, LedgerError};

/// Where an obligation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResumeState {
    /// The task was (or is being) stopped and has not run since.
    Owed,
    /// The task runs again.
    Resumed,
    /// Given up: the job's outcome is `needs_human` with the reason.
    NeedsHuman,
}

impl ResumeState {
    pub fn as_str(self) -> &'static str {
        match self {
            ResumeState::Owed => "owed",
            ResumeState::Resumed => "resumed",
            ResumeState::NeedsHuman => "needs_human",
        }
    }
}

/// One owed resume.
#[derive(Debug, Clone)]
pub struct ResumeObligation {
    pub id: i64,
    pub job_id: i64,
    pub fix: FixName,
    pub task: String,
    pub not_before: DateTime<Utc>,
    pub give_up_at: DateTime<Utc>,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
}

/// One line of the obligations listing (the status page, `GET /jobs`, `dmsguard-remediator jobs`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ResumeSummary {
    pub id: i64,
    pub job_id: i64,
    pub fix: String,
    pub task: String,
    pub state: String,
    pub attempts: i32,
    pub last_status: Option<String>,
    pub last_error: Option<String>,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub settled_at: Option<DateTime<Utc>>,
}

/// The columns `summary_from_row` reads, from the obligations table.
const SUMMARY_SELECT: &str = "SELECT id, job_id, fix, task, state, attempts, last_status, \
     last_error, reason, created_at, settled_at FROM dmsguard.resume_obligations";

fn summary_from_row(r: &Row) -> ResumeSummary {
    ResumeSummary {
        id: r.get(0),
        job_id: r.get(1),
        fix: r.get(2),
        task: r.get(3),
        state: r.get(4),
        attempts: r.get(5),
        last_status: r.get(6),
        last_error: r.get(7),
        reason: r.get(8),
        created_at: r.get(9),
        settled_at: r.get(10),
    }
}

const COLUMNS: &str = "id, job_id, fix, task, not_before, give_up_at, attempts, created_at";

fn obligation_from_row(row: &Row) -> Result<ResumeObligation, LedgerError> {
    Ok(ResumeObligation {
        id: row.get(0),
        job_id: row.get(1),
        fix: fix_from(row.get(2))?,
        task: row.get(3),
        not_before: row.get(4),
        give_up_at: row.get(5),
        attempts: row.get(6),
        created_at: row.get(7),
    })
}

impl Ledger {
    /// Records that `task`, about to be stopped by `job_id`'s fix, is owed a resume: not before
    /// `not_before`, and a human is told if it still is at `give_up_at`. Call it before sending
    /// the stop, so no crash can lose the obligation.
    pub async fn owe_resume(
        &self,
        job_id: i64,
        fix: FixName,
        task: &str,
        not_before: DateTime<Utc>,
        give_up_at: DateTime<Utc>,
    ) -> Result<i64, LedgerError> {
        let row = self
            .client()
            .await?
            .query_one(
                "INSERT INTO dmsguard.resume_obligations (job_id, fix, task, not_before, give_up_at)
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
                &[&job_id, &fix.as_str(), &task, &not_before, &give_up_at],
            )
            .await
            .map_err(LedgerError::query("recording an owed resume"))?;
        Ok(row.get(0))
    }

    /// Owed resumes due now (not before passed), oldest first.
    pub async fn due_resumes(&self, limit: i64) -> Result<Vec<ResumeObligation>, LedgerError> {
        self.due_resumes_of(None, limit).await
    }

    /// Owed resumes due now, of job `job_id` only when given, oldest first.
    pub async fn due_resumes_of(
        &self,
        job_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<ResumeObligation>, LedgerError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM dmsguard.resume_obligations
                     WHERE state = 'owed' AND not_before <= now()
                       AND ($2::bigint IS NULL OR job_id = $2)
                     ORDER BY not_before, id LIMIT $1"
                ),
                &[&limit, &job_id],
            )
            .await
            .map_err(LedgerError::query("listing due resumes"))?;
        rows.iter().map(obligation_from_row).collect()
    }

    /// Records an attempt that did not settle the obligation; tries again after `retry_in`.
    pub async fn note_resume_attempt(
        &self,
        id: i64,
        status: Option<&str>,
        error: Option<&str>,
        retry_in: std::time::Duration,
    ) -> Result<(), LedgerError> {
        self.client()
            .await?
            .execute(
                "UPDATE dmsguard.resume_obligations SET attempts = attempts + 1,
                     last_status = coalesce($2, last_status), last_error = $3,
                     not_before = greatest(not_before, now() + make_interval(secs => $4))
                 WHERE id = $1 AND state = 'owed'",
                &[&id, &status, &error, &retry_in.as_secs_f64()],
            )
            .await
            .map_err(LedgerError::query("recording a resume attempt"))?;
        Ok(())
    }

    /// Settles an owed resume as `resumed` or `needs_human` (by `runner`, with `reason`).
    /// `needs_human` also becomes the job's outcome, with the reason in its summary; a job
    /// that failed only because its resume was owed succeeds once every resume it owed is done.
    /// Returns false if the obligation was already settled.
    pub async fn settle_resume(
        &self,
        id: i64,
        state: ResumeState,
        reason: &str,
        runner: &str,
    ) -> Result<bool, LedgerError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "UPDATE dmsguard.resume_obligations SET state = $2, reason = $3, settled_at = now(),
                     settled_by = $4
                 WHERE id = $1 AND state = 'owed'
                 RETURNING job_id, task",
                &[&id, &state.as_str(), &reason, &runner],
            )
            .await
            .map_err(LedgerError::query("settling a resume"))?;
        let Some(row) = row else {
            return Ok(false);
        };
        let job_id: i64 = row.get(0);
        let task: String = row.get(1);
        match state {
            ResumeState::NeedsHuman => {
                client
                    .execute(
                        "UPDATE dmsguard.jobs SET state = 'needs_human', outcome = 'needs_human',
                             summary = concat_ws(' ', summary, $2::text),
                             finished_at = coalesce(finished_at, now())
                         WHERE id = $1 AND state <> 'running'",
                        &[
                            &job_id,
                            &format!(
                                "Needs a human: task {task} was stopped and not resumed: {reason}"
                            ),
                        ],
                    )
                    .await
                    .map_err(LedgerError::query("marking a job needs_human"))?;
            }
            ResumeState::Resumed => {
                client
                    .execute(
                        "UPDATE dmsguard.jobs SET
                             state = CASE WHEN outcome = 'failed' AND details ? 'resume_owed'
                                     AND NOT EXISTS (SELECT 1 FROM dmsguard.resume_obligations o
                                                     WHERE o.job_id = $1 AND o.state <> 'resumed')
                                     THEN 'succeeded' ELSE state END,
                             outcome = CASE WHEN outcome = 'failed' AND details ? 'resume_owed'
                                     AND NOT EXISTS (SELECT 1 FROM dmsguard.resume_obligations o
                                                     WHERE o.job_id = $1 AND o.state <> 'resumed')
                                     THEN 'succeeded' ELSE outcome END,
                             details = coalesce(details, '{}'::jsonb)
                                 || jsonb_build_object('resumed_later',
                                        coalesce(details -> 'resumed_later', '[]'::jsonb)
                                        || jsonb_build_array($2::text))
                         WHERE id = $1 AND state <> 'running'",
                        &[&job_id, &task],
                    )
                    .await
                    .map_err(LedgerError::query("recording a late resume on its job"))?;
            }
            ResumeState::Owed => {}
        }
        Ok(true)
    }

    /// Settles every owed resume of `job_id` on `task` (the fix or its scheduled step resumed
    /// the task itself). Returns how many.
    pub async fn settle_job_resumes(
        &self,
        job_id: i64,
        task: &str,
        reason: &str,
        runner: &str,
    ) -> Result<u64, LedgerError> {
        self.client()
            .await?
            .execute(
                "UPDATE dmsguard.resume_obligations SET state = 'resumed', reason = $3,
                     settled_at = now(), settled_by = $4
                 WHERE job_id = $1 AND task = $2 AND state = 'owed'",
                &[&job_id, &task, &reason, &runner],
            )
            .await
            .map_err(LedgerError::query("settling a job's resumes"))
    }

    /// How many resumes are owed now.
    pub async fn owed_resume_count(&self) -> Result<i64, LedgerError> {
        Ok(self
            .client()
            .await?
            .query_one(
                "SELECT count(*) FROM dmsguard.resume_obligations WHERE state = 'owed'",
                &[],
            )
            .await
            .map_err(LedgerError::query("counting owed resumes"))?
            .get(0))
    }

    /// The obligations of jobs `job_ids`, oldest first.
    pub async fn resumes_of_jobs(
        &self,
        job_ids: &[i64],
    ) -> Result<Vec<ResumeSummary>, LedgerError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!("{SUMMARY_SELECT} WHERE job_id = ANY($1) ORDER BY id"),
                &[&job_ids],
            )
            .await
            .map_err(LedgerError::query("listing a job's resumes"))?;
        Ok(rows.iter().map(summary_from_row).collect())
    }

    /// Obligations, newest first; with `owed_only`, only those still owed.
    pub async fn resumes(
        &self,
        owed_only: bool,
        limit: i64,
    ) -> Result<Vec<ResumeSummary>, LedgerError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "{SUMMARY_SELECT} WHERE NOT $1 OR state = 'owed' ORDER BY id DESC LIMIT $2"
                ),
                &[&owed_only, &limit],
            )
            .await
            .map_err(LedgerError::query("listing resumes"))?;
        Ok(rows.iter().map(summary_from_row).collect())
    }
}
