//! The durable job ledger in PostgreSQL (schema `dmsguard`): jobs, scheduled steps, task locks.

pub mod locks;
pub mod migrations;
pub mod repairs;
pub mod resumes;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dmsguard_pipeline::config::{DatabaseConfig, FixName};
use dmsguard_pipeline::db::{self, ConnectError};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

pub use locks::TaskLocks;
pub use resumes::{ResumeObligation, ResumeState, ResumeSummary};

use crate::routing::JobTarget;

/// Why a ledger operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot connect to the ledger: {0}")]
    Connect(#[from] ConnectError),
    #[error("ledger query failed while {what}: {source}")]
    Query {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("ledger holds an invalid row: {0}")]
    Decode(String),
}

impl LedgerError {
    fn query(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| Self::Query { what, source }
    }
}

/// A job's life: queued -> running -> succeeded | failed | needs_human | skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    NeedsHuman,
    Skipped,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::NeedsHuman => "needs_human",
            JobState::Skipped => "skipped",
        }
    }
}

/// How a finished job ended (the `outcome` column and metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobOutcome {
    Succeeded,
    Failed,
    NeedsHuman,
    /// The same fix acted on the same target within its cooldown.
    SkippedCooldown,
    /// The fix is in dry-run mode: the plan was recorded, nothing changed.
    DryRun,
    /// The fix is disabled in the config; recorded so operators see the alert arrived.
    Disabled,
    /// The preflight checks the fix needs fail: nothing ran; the summary names the failed
    /// checks and their fixes. A repeat of the alert once the fix is enabled again queues it.
    Refused,
}

impl JobOutcome {
    pub const COUNTED: [JobOutcome; 5] = [
        JobOutcome::Succeeded,
        JobOutcome::Failed,
        JobOutcome::NeedsHuman,
        JobOutcome::SkippedCooldown,
        JobOutcome::DryRun,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Succeeded => "succeeded",
            JobOutcome::Failed => "failed",
            JobOutcome::NeedsHuman => "needs_human",
            JobOutcome::SkippedCooldown => "skipped_cooldown",
            JobOutcome::DryRun => "dry_run",
            JobOutcome::Disabled => "disabled",
            JobOutcome::Refused => "refused",
        }
    }

    /// The final job state this outcome puts a job in.
    pub fn state(self) -> JobState {
        match self {
            JobOutcome::Succeeded => JobState::Succeeded,
            JobOutcome::Failed => JobState::Failed,
            JobOutcome::NeedsHuman => JobState::NeedsHuman,
            JobOutcome::SkippedCooldown
            | JobOutcome::DryRun
            | JobOutcome::Disabled
            | JobOutcome::Refused => JobState::Skipped,
        }
    }
}

/// The alert a job came from.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRef {
    pub fingerprint: String,
    pub starts_at: DateTime<Utc>,
    pub alertname: String,
}

/// How a new job enters the ledger.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Waits for a worker.
    Queued,
    /// Already claimed by `runner` (a hand run from the CLI).
    Running { runner: String },
    /// Recorded as skipped: its fix is disabled.
    Disabled,
    /// Recorded as skipped with outcome `refused`: the preflight checks its fix needs fail.
    Refused {
        summary: String,
        details: serde_json::Value,
    },
}

/// A job to record.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub alert: Option<AlertRef>,
    pub fix: FixName,
    pub target: JobTarget,
    pub labels: serde_json::Value,
    pub dry_run: bool,
    pub manual: bool,
    pub admission: Admission,
}

/// A job as a worker runs it.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub fix: FixName,
    pub alert: Option<AlertRef>,
    pub target: JobTarget,
    pub labels: serde_json::Value,
    /// Plan only, change nothing.
    pub dry_run: bool,
    /// Run by hand from the CLI (cooldowns do not apply).
    pub manual: bool,
}

/// A step a fix scheduled for later (e.g. "resume these tasks at T").
#[derive(Debug, Clone)]
pub struct ScheduledStep {
    pub id: i64,
    pub job_id: i64,
    pub fix: FixName,
    pub run_at: DateTime<Utc>,
    pub description: String,
    /// Tasks the step acts on; each is locked while it runs.
    pub tasks: Vec<String>,
    /// What to do, in the scheduling fix's own format.
    pub action: serde_json::Value,
    pub attempts: i32,
}

/// A step to schedule.
#[derive(Debug, Clone)]
pub struct NewStep {
    pub run_at: DateTime<Utc>,
    pub description: String,
    pub tasks: Vec<String>,
    pub action: serde_json::Value,
}

/// One line of the recent-jobs listing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobSummary {
    pub id: i64,
    pub alertname: Option<String>,
    pub fix: String,
    pub target: String,
    pub state: String,
    pub outcome: Option<String>,
    pub summary: Option<String>,
    pub error: Option<String>,
    pub dry_run: bool,
    pub manual: bool,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub acting_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub runner: Option<String>,
}

impl JobSummary {
    /// Time from start to finish, when both are known.
    pub fn duration(&self) -> Option<chrono::Duration> {
        Some(self.finished_at? - self.started_at?)
    }
}

/// One line of the steps listing.
#[derive(Debug, Clone)]
pub struct StepSummary {
    pub id: i64,
    pub job_id: i64,
    pub fix: String,
    pub run_at: DateTime<Utc>,
    pub description: String,
    pub state: String,
    pub attempts: i32,
    pub runner: Option<String>,
    pub error: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
}

const JOB_COLUMNS: &str = "id, fix, alert_fingerprint, alert_starts_at, alertname, task, \
     table_name, replication_instance, target, labels, dry_run, manual";

const STEP_COLUMNS: &str = "id, job_id, fix, run_at, description, tasks, action, attempts";

const SUMMARY_COLUMNS: &str = "id, alertname, fix, target, state, outcome, summary, error, \
     dry_run, manual, created_at, started_at, acting_at, finished_at, resolved_at, runner";

/// Connections the ledger spreads its queries over (task locks use their own).
const POOL_SIZE: usize = 4;

/// A ledger connection with the statements prepared on it, so each query is one round trip.
struct Conn {
    client: Client,
    statements: std::sync::Mutex<std::collections::HashMap<String, Statement>>,
}

impl Conn {
    async fn statement(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.cache().get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        self.cache().insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Statement>> {
        self.statements
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let statement = self.statement(sql).await?;
        self.client.query(&statement, params).await
    }

    async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, tokio_postgres::Error> {
        let statement = self.statement(sql).await?;
        self.client.query_one(&statement, params).await
    }

    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        let statement = self.statement(sql).await?;
        self.client.query_opt(&statement, params).await
    }

    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.statement(sql).await?;
        self.client.execute(&statement, params).await
    }
}

/// The job ledger. Cheap to clone; a few shared connections, each reopened when it breaks,
/// plus a dedicated connection per set of task locks.
#[derive(Clone)]
pub struct Ledger {
    config: Arc<DatabaseConfig>,
    pool: Arc<Vec<tokio::sync::Mutex<Option<Arc<Conn>>>>>,
    next: Arc<std::sync::atomic::AtomicUsize>,
}

impl Ledger {
    /// Connects and applies pending migrations.
    pub async fn open(config: &DatabaseConfig) -> Result<Self, LedgerError> {
        let mut migrator = db::connect(config).await?;
        migrations::apply(&mut migrator).await?;
        drop(migrator);
        let ledger = Self {
            config: Arc::new(config.clone()),
            pool: Arc::new((0..POOL_SIZE).map(|_| Default::default()).collect()),
            next: Arc::default(),
        };
        ledger.client().await?;
        Ok(ledger)
    }

    async fn client(&self) -> Result<Arc<Conn>, LedgerError> {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % POOL_SIZE;
        let mut slot = self.pool[i].lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(conn.clone());
        }
        let conn = Arc::new(Conn {
            client: db::connect(&self.config).await?,
            statements: Default::default(),
        });
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Records a job unless the same alert (fingerprint and startsAt) already has one.
    /// Returns the job, or `None` for a duplicate. An alert whose job was refused (its fix's
    /// preflight checks failed) is not a duplicate: its job takes the new admission (queued
    /// once the fix is enabled again, or refused again with the current failures).
    pub async fn insert_job(&self, job: &NewJob) -> Result<Option<Job>, LedgerError> {
        let none = serde_json::Value::Null;
        let (state, runner, outcome, summary, details): (
            &str,
            Option<&str>,
            Option<&str>,
            Option<&str>,
            &serde_json::Value,
        ) = match &job.admission {
            Admission::Queued => ("queued", None, None, None, &none),
            Admission::Running { runner } => ("running", Some(runner.as_str()), None, None, &none),
            Admission::Disabled => (
                "skipped",
                None,
                Some(JobOutcome::Disabled.as_str()),
                Some("fix is disabled in the config"),
                &none,
            ),
            Admission::Refused { summary, details } => (
                "skipped",
                None,
                Some(JobOutcome::Refused.as_str()),
                Some(summary.as_str()),
                details,
            ),
        };
        let details = (!details.is_null()).then_some(details);
        let alert = job.alert.as_ref();
        let sql = format!(
            "INSERT INTO dmsguard.jobs (alert_fingerprint, alert_starts_at, alertname, fix, task,
                 table_name, replication_instance, target, labels, dry_run, manual, state, runner,
                 outcome, started_at, finished_at, heartbeat_at, summary, details)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                 CASE WHEN $12 = 'running' THEN now() END,
                 CASE WHEN $12 = 'skipped' THEN now() END,
                 CASE WHEN $12 = 'running' THEN now() END,
                 $15, $16)
             ON CONFLICT ON CONSTRAINT jobs_one_per_alert DO UPDATE SET
                 state = EXCLUDED.state, outcome = EXCLUDED.outcome, summary = EXCLUDED.summary,
                 details = coalesce(EXCLUDED.details, '{{}}'::jsonb)
                     || jsonb_build_object('refused_earlier', dmsguard.jobs.summary),
                 labels = EXCLUDED.labels, dry_run = EXCLUDED.dry_run,
                 finished_at = EXCLUDED.finished_at, not_before = now(), error = NULL
             WHERE dmsguard.jobs.outcome = 'refused'
             RETURNING {JOB_COLUMNS}"
        );
        let rows = self
            .client()
            .await?
            .query(
                &sql,
                &[
                    &alert.map(|a| a.fingerprint.as_str()),
                    &alert.map(|a| a.starts_at),
                    &alert.map(|a| a.alertname.as_str()),
                    &job.fix.as_str(),
                    &job.target.task,
                    &job.target.table,
                    &job.target.replication_instance,
                    &job.target.key,
                    &job.labels,
                    &job.dry_run,
                    &job.manual,
                    &state,
                    &runner,
                    &outcome,
                    &summary,
                    &details,
                ],
            )
            .await
            .map_err(LedgerError::query("inserting a job"))?;
        rows.first().map(job_from_row).transpose()
    }

    /// Records that an alert resolved, and marks its job (if any).
    pub async fn record_resolution(
        &self,
        alert: &AlertRef,
        ends_at: Option<DateTime<Utc>>,
        labels: &serde_json::Value,
    ) -> Result<(), LedgerError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO dmsguard.alert_resolutions (fingerprint, starts_at, ends_at, alertname, labels)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[&alert.fingerprint, &alert.starts_at, &ends_at, &alert.alertname, labels],
            )
            .await
            .map_err(LedgerError::query("recording a resolution"))?;
        client
            .execute(
                "UPDATE dmsguard.jobs SET resolved_at = coalesce($3, now())
                 WHERE alert_fingerprint = $1 AND alert_starts_at = $2 AND resolved_at IS NULL",
                &[&alert.fingerprint, &alert.starts_at, &ends_at],
            )
            .await
            .map_err(LedgerError::query("marking a job resolved"))?;
        Ok(())
    }

    /// Claims the oldest due queued job of `fix` for `runner`, skipping rows others hold.
    pub async fn claim_job(&self, fix: FixName, runner: &str) -> Result<Option<Job>, LedgerError> {
        let sql = format!(
            "UPDATE dmsguard.jobs SET state = 'running', runner = $2, started_at = now(),
                 heartbeat_at = now(), attempts = attempts + 1
             WHERE id = (
                 SELECT id FROM dmsguard.jobs
                 WHERE state = 'queued' AND fix = $1 AND not_before <= now()
                 ORDER BY not_before, id
                 FOR UPDATE SKIP LOCKED
                 LIMIT 1)
             RETURNING {JOB_COLUMNS}"
        );
        let rows = self
            .client()
            .await?
            .query(&sql, &[&fix.as_str(), &runner])
            .await
            .map_err(LedgerError::query("claiming a job"))?;
        rows.first().map(job_from_row).transpose()
    }

    /// Puts a claimed job back in the queue, due again after `delay` (its task was locked).
    pub async fn requeue(&self, job_id: i64, delay: Duration) -> Result<(), LedgerError> {
        self.client()
            .await?
            .execute(
                "UPDATE dmsguard.jobs SET state = 'queued', runner = NULL, started_at = NULL,
                     heartbeat_at = NULL, not_before = now() + make_interval(secs => $2)
                 WHERE id = $1 AND state = 'running'",
                &[&job_id, &delay.as_secs_f64()],
            )
            .await
            .map_err(LedgerError::query("requeueing a job"))?;
        Ok(())
    }

    /// Records a job's plan.
    pub async fn set_plan(
        &self,
        job_id: i64,
        text: &str,
        plan: &serde_json::Value,
    ) -> Result<(), LedgerError> {
        self.client()
            .await?
            .execute(
                "UPDATE dmsguard.jobs SET plan_text = $2, plan = $3 WHERE id = $1",
                &[&job_id, &text, plan],
            )
            .await
            .map_err(LedgerError::query("recording a plan"))?;
        Ok(())
    }

    /// The latest other job of the same fix and target that acted within `cooldown`.
    pub async fn acted_within(
        &self,
        job: &Job,
        cooldown: Duration,
    ) -> Result<Option<i64>, LedgerError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT id FROM dmsguard.jobs
                 WHERE fix = $1 AND target = $2 AND id <> $3 AND NOT dry_run
                   AND acting_at > now() - make_interval(secs => $4)
                 ORDER BY acting_at DESC LIMIT 1",
                &[
                    &job.fix.as_str(),
                    &job.target.key,
                    &job.id,
                    &cooldown.as_secs_f64(),
                ],
            )
            .await
            .map_err(LedgerError::query("checking the cooldown"))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Marks the moment a job starts changing things (what cooldowns count from).
    pub async fn mark_acting(&self, job_id: i64) -> Result<(), LedgerError> {
        self.client()
            .await?
            .execute(
                "UPDATE dmsguard.jobs SET acting_at = now() WHERE id = $1",
                &[&job_id],
            )
            .await
            .map_err(LedgerError::query("marking a job acting"))?;
        Ok(())
    }

    /// Records how a job ended.
    pub async fn finish_job(
        &self,
        job_id: i64,
        outcome: JobOutcome,
        summary: &str,
        error: Option<&str>,
        details: &serde_json::Value,
    ) -> Result<(), LedgerError> {
        self.client()
            .await?
            .execute(
                "UPDATE dmsguard.jobs SET state = $2, outcome = $3, summary = $4, error = $5,
                     details = CASE WHEN details ? 'refused_earlier' AND jsonb_typeof($6) = 'object'
                         THEN $6 || jsonb_build_object('refused_earlier', details -> 'refused_earlier')
                         ELSE $6 END,
                     finished_at = now()
                 WHERE id = $1",
                &[
                    &job_id,
                    &outcome.state().as_str(),
                    &outcome.as_str(),
                    &summary,
                    &error,
                    details,
                ],
            )
            .await
            .map_err(LedgerError::query("finishing a job"))?;
        Ok(())
    }

    /// Marks jobs and steps `runner` is working on as alive.
    pub async fn heartbeat(
        &self,
        runner: &str,
        jobs: &[i64],
        steps: &[i64],
    ) -> Result<(), LedgerError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE dmsguard.jobs SET heartbeat_at = now()
                 WHERE id = ANY($1) AND runner = $2 AND state = 'running'",
                &[&jobs, &runner],
            )
            .await
            .map_err(LedgerError::query("heartbeating jobs"))?;
        client
            .execute(
                "UPDATE dmsguard.scheduled_steps SET heartbeat_at = now()
                 WHERE id = ANY($1) AND runner = $2 AND state = 'running'",
                &[&steps, &runner],
            )
            .await
            .map_err(LedgerError::query("heartbeating steps"))?;
        Ok(())
    }

    /// Recovers work whose runner died: running jobs silent for `stale_after` fail (a fix may
    /// have half-acted; a human should look), running steps go back to pending (steps are
    /// idempotent). Returns (jobs failed, steps released).
    pub async fn recover_abandoned(
        &self,
        stale_after: Duration,
    ) -> Result<(u64, u64), LedgerError> {
        let client = self.client().await?;
        let secs = stale_after.as_secs_f64();
        let jobs = client
            .execute(
                "UPDATE dmsguard.jobs SET state = 'failed', outcome = 'failed', finished_at = now(),
                     error = 'abandoned: the remediator running it stopped before it finished'
                 WHERE state = 'running' AND heartbeat_at < now() - make_interval(secs => $1)",
                &[&secs],
            )
            .await
            .map_err(LedgerError::query("failing abandoned jobs"))?;
        let steps = client
            .execute(
                "UPDATE dmsguard.scheduled_steps SET state = 'pending', runner = NULL,
                     error = 'released: the remediator running it stopped before it finished'
                 WHERE state = 'running' AND heartbeat_at < now() - make_interval(secs => $1)",
                &[&secs],
            )
            .await
            .map_err(LedgerError::query("releasing abandoned steps"))?;
        Ok((jobs, steps))
    }

    /// Schedules a step of `job` for later.
    pub async fn schedule_step(
        &self,
        job_id: i64,
        fix: FixName,
        step: &NewStep,
    ) -> Result<i64, LedgerError> {
        let row = self
            .client()
            .await?
            .query_one(
                "INSERT INTO dmsguard.scheduled_steps (job_id, fix, run_at, description, tasks, action)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[
                    &job_id,
                    &fix.as_str(),
                    &step.run_at,
                    &step.description,
                    &step.tasks,
                    &step.action,
                ],
            )
            .await
            .map_err(LedgerError::query("scheduling a step"))?;
        Ok(row.get(0))
    }

    /// Claims the earliest due pending step for `runner`.
    pub async fn claim_due_step(&self, runner: &str) -> Result<Option<ScheduledStep>, LedgerError> {
        let sql = format!(
            "UPDATE dmsguard.scheduled_steps SET state = 'running', runner = $1,
                 heartbeat_at = now(), attempts = attempts + 1
             WHERE id = (
                 SELECT id FROM dmsguard.scheduled_steps
                 WHERE state = 'pending' AND run_at <= now()
                 ORDER BY run_at, id
                 FOR UPDATE SKIP LOCKED
                 LIMIT 1)
             RETURNING {STEP_COLUMNS}"
        );
        let rows = self
            .client()
            .await?
            .query(&sql, &[&runner])
            .await
            .map_err(LedgerError::query("claiming a step"))?;
        rows.first().map(step_from_row).transpose()
    }

    /// Puts a claimed step back, due again after `delay`; `error` is why it failed, `None`
    /// when it did not run (its tasks were locked), which does not count as an attempt.
    pub async fn retry_step(
        &self,
        step_id: i64,
        delay: Duration,
        error: Option<&str>,
    ) -> Result<(), LedgerError> {
        self.client()
            .await?
            .execute(
                "UPDATE dmsguard.scheduled_steps SET state = 'pending', runner = NULL,
                     run_at = now() + make_interval(secs => $2), error = coalesce($3, error),
                     attempts = attempts - CASE WHEN $3 IS NULL THEN 1 ELSE 0 END
                 WHERE id = $1",
                &[&step_id, &delay.as_secs_f64(), &error],
            )
            .await
            .map_err(LedgerError::query("retrying a step"))?;
        Ok(())
    }

    /// Records how a step ended (`done` with a result, or `failed` with an error).
    pub async fn finish_step(
        &self,
        step_id: i64,
        result: Result<&str, &str>,
    ) -> Result<(), LedgerError> {
        let (state, result, error) = match result {
            Ok(r) => ("done", Some(r), None),
            Err(e) => ("failed", None, Some(e)),
        };
        self.client()
            .await?
            .execute(
                "UPDATE dmsguard.scheduled_steps SET state = $2, result = $3,
                     error = coalesce($4, error), finished_at = now()
                 WHERE id = $1",
                &[&step_id, &state, &result, &error],
            )
            .await
            .map_err(LedgerError::query("finishing a step"))?;
        Ok(())
    }

    /// How many steps wait to run (due or not).
    pub async fn pending_step_count(&self) -> Result<i64, LedgerError> {
        Ok(self
            .client()
            .await?
            .query_one(
                "SELECT count(*) FROM dmsguard.scheduled_steps WHERE state IN ('pending', 'running')",
                &[],
            )
            .await
            .map_err(LedgerError::query("counting pending steps"))?
            .get(0))
    }

    /// The most recent jobs, newest first.
    pub async fn recent_jobs(&self, limit: i64) -> Result<Vec<JobSummary>, LedgerError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT {SUMMARY_COLUMNS} FROM dmsguard.jobs ORDER BY id DESC LIMIT $1"),
                &[&limit],
            )
            .await
            .map_err(LedgerError::query("listing jobs"))?;
        Ok(rows.iter().map(summary_from_row).collect())
    }

    /// One job's summary.
    pub async fn job(&self, id: i64) -> Result<Option<JobSummary>, LedgerError> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!("SELECT {SUMMARY_COLUMNS} FROM dmsguard.jobs WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(LedgerError::query("reading a job"))?;
        Ok(row.as_ref().map(summary_from_row))
    }

    /// Steps not yet done (pending or running), earliest first; with `all`, every step.
    pub async fn steps(&self, all: bool, limit: i64) -> Result<Vec<StepSummary>, LedgerError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, job_id, fix, run_at, description, state, attempts, runner, error, finished_at
                 FROM dmsguard.scheduled_steps
                 WHERE $1 OR state IN ('pending', 'running')
                 ORDER BY run_at, id LIMIT $2",
                &[&all, &limit],
            )
            .await
            .map_err(LedgerError::query("listing steps"))?;
        Ok(rows
            .iter()
            .map(|r| StepSummary {
                id: r.get(0),
                job_id: r.get(1),
                fix: r.get(2),
                run_at: r.get(3),
                description: r.get(4),
                state: r.get(5),
                attempts: r.get(6),
                runner: r.get(7),
                error: r.get(8),
                finished_at: r.get(9),
            })
            .collect())
    }

    /// Locks `tasks` on a dedicated connection (all or none); `None` if one is held elsewhere.
    pub async fn lock_tasks(&self, tasks: &[String]) -> Result<Option<TaskLocks>, LedgerError> {
        if tasks.is_empty() {
            return Ok(Some(TaskLocks::none()));
        }
        let client = db::connect(&self.config).await?;
        TaskLocks::try_acquire(client, tasks).await
    }
}

fn fix_from(value: &str) -> Result<FixName, LedgerError> {
    value.parse().map_err(LedgerError::Decode)
}

fn job_from_row(row: &Row) -> Result<Job, LedgerError> {
    let fingerprint: Option<String> = row.get(2);
    let starts_at: Option<DateTime<Utc>> = row.get(3);
    let alertname: Option<String> = row.get(4);
    let alert = match (fingerprint, starts_at) {
        (Some(fingerprint), Some(starts_at)) => Some(AlertRef {
            fingerprint,
            starts_at,
            alertname: alertname.unwrap_or_default(),
        }),
        _ => None,
    };
    Ok(Job {
        id: row.get(0),
        fix: fix_from(row.get(1))?,
        alert,
        target: JobTarget {
            task: row.get(5),
            table: row.get(6),
            replication_instance: row.get(7),
            key: row.get(8),
        },
        labels: row.get(9),
        dry_run: row.get(10),
        manual: row.get(11),
    })
}

fn step_from_row(row: &Row) -> Result<ScheduledStep, LedgerError> {
    Ok(ScheduledStep {
        id: row.get(0),
        job_id: row.get(1),
        fix: fix_from(row.get(2))?,
        run_at: row.get(3),
        description: row.get(4),
        tasks: row.get(5),
        action: row.get(6),
        attempts: row.get(7),
    })
}

fn summary_from_row(r: &Row) -> JobSummary {
    JobSummary {
        id: r.get(0),
        alertname: r.get(1),
        fix: r.get(2),
        target: r.get(3),
        state: r.get(4),
        outcome: r.get(5),
        summary: r.get(6),
        error: r.get(7),
        dry_run: r.get(8),
        manual: r.get(9),
        created_at: r.get(10),
        started_at: r.get(11),
        acting_at: r.get(12),
        finished_at: r.get(13),
        resolved_at: r.get(14),
        runner: r.get(15),
    }
}
