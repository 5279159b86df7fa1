//! The `Fix` trait every fix implements, the context fixes act through, and the registry.
//!
//! A fix first plans (what it would do, with the SQL it would send: that is what dry-run
//! prints and what the ledger records), then executes the plan. The worker takes the advisory
//! locks of every task in `Plan::tasks` before `execute` and holds them until it returns.

mod divergent_rows;
mod maintenance;
mod memory;
mod missing_rows;
mod one_by_one;
mod stalled_task;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use dmsguard_pipeline::aws::AwsClients;
use dmsguard_pipeline::config::{Config, FixName};
use dmsguard_pipeline::db::{self, ConnectError};
use dmsguard_pipeline::dms_tasks::{DmsTaskError, DmsTasks, TaskState, STOPPED};
use serde::{Deserialize, Serialize};

pub use divergent_rows::DivergentRowsFix;
pub use maintenance::MaintenanceFix;
pub use memory::MemoryFix;
pub use missing_rows::MissingRowsFix;
pub use one_by_one::OneByOneFix;
pub use stalled_task::StalledTaskFix;

use crate::ledger::{Job, Ledger, LedgerError, NewStep, ResumeState, ScheduledStep};
use crate::metrics::{Metrics, ResumeResult};
use crate::progress::{LogProgress, Progress};

/// Why a fix could not plan or execute.
#[derive(Debug, thiserror::Error)]
pub enum FixError {
    #[error("{0}")]
    Dms(#[from] DmsTaskError),
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("{0}")]
    Ledger(#[from] LedgerError),
    #[error("query failed while {what}: {source}")]
    Query {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// The job lacks something the fix needs (a task, a configured table, …).
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Gap(#[from] dmsguard_pipeline::gap_finder::GapError),
    #[error("{0}")]
    Catalogue(#[from] dmsguard_pipeline::catalogue::CatalogueError),
    #[error("{0}")]
    Translate(#[from] dmsguard_pipeline::type_translator::TranslateError),
    #[error("{0}")]
    Fetch(#[from] dmsguard_pipeline::type_translator::FetchError),
    #[error("{0}")]
    Insert(#[from] dmsguard_pipeline::type_translator::InsertError),
    #[error("{0}")]
    Content(#[from] dmsguard_pipeline::content::ContentError),
    #[error("{0}")]
    Rewrite(#[from] dmsguard_pipeline::rewrite::RewriteError),
    #[error("{0}")]
    SystemView(#[from] dmsguard_pipeline::system_views::SystemViewError),
    #[error("{0}")]
    Progress(#[from] dmsguard_pipeline::frontier::ProgressError),
    #[error("{0}")]
    Replica(#[from] dmsguard_pipeline::replica::ReplicaError),
    /// Replication did not reach the point a fix must wait for.
    #[error("{0}")]
    NotSettled(String),
    #[error("fix `{0}` schedules no steps, yet one was due: {1}")]
    UnknownStep(FixName, String),
}

/// One step of a plan, as dry-run prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanStep {
    /// What the step does, in a sentence.
    pub action: String,
    /// The SQL it sends, if any (values as `$n` placeholders, never inlined).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sql: Option<String>,
}

/// What a fix will do for a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// One line for the status page and logs.
    pub summary: String,
    /// Tasks the job acts on; the worker holds an advisory lock on each while it executes.
    pub tasks: Vec<String>,
    pub steps: Vec<PlanStep>,
    /// Facts the plan was made from (task states, ids, …), for the ledger.
    #[serde(default)]
    pub facts: BTreeMap<String, serde_json::Value>,
}

impl Plan {
    pub fn new(summary: impl Into<String>) -> Self {
        Self {
            summary: summary.into(),
            tasks: Vec::new(),
            steps: Vec::new(),
            facts: BTreeMap::new(),
        }
    }

    /// Adds a step without SQL.
    pub fn step(&mut self, action: impl Into<String>) -> &mut Self {
        self.steps.push(PlanStep {
            action: action.into(),
            sql: None,
        });
        self
    }

    /// Adds a step that sends `sql`.
    pub fn sql_step(&mut self, action: impl Into<String>, sql: impl Into<String>) -> &mut Self {
        self.steps.push(PlanStep {
            action: action.into(),
            sql: Some(sql.into()),
        });
        self
    }

    /// The plan as text: what dry-run prints and the ledger's `plan_text`.
    pub fn render(&self) -> String {
        let mut out = format!("{}\n", self.summary);
        if !self.tasks.is_empty() {
            out.push_str(&format!("tasks locked: {}\n", self.tasks.join(", ")));
        }
        for (i, step) in self.steps.iter().enumerate() {
            out.push_str(&format!("{}. {}\n", i + 1, step.action));
            if let Some(sql) = &step.sql {
                for line in sql.lines() {
                    out.push_str(&format!("     {line}\n"));
                }
            }
        }
        out
    }
}

/// How an executed job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeStatus {
    Succeeded,
    Failed,
    /// The fix will not loop: a human must look (e.g. a task stalled again within cooldown).
    NeedsHuman,
}

/// The result of `Fix::execute`.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: OutcomeStatus,
    /// One line for the status page and logs.
    pub summary: String,
    /// What was done, for the ledger (tasks stopped, rows inserted, …).
    pub details: serde_json::Value,
}

impl Outcome {
    pub fn succeeded(summary: impl Into<String>, details: serde_json::Value) -> Self {
        Self {
            status: OutcomeStatus::Succeeded,
            summary: summary.into(),
            details,
        }
    }

    pub fn failed(summary: impl Into<String>, details: serde_json::Value) -> Self {
        Self {
            status: OutcomeStatus::Failed,
            summary: summary.into(),
            details,
        }
    }

    pub fn needs_human(summary: impl Into<String>, details: serde_json::Value) -> Self {
        Self {
            status: OutcomeStatus::NeedsHuman,
            summary: summary.into(),
            details,
        }
    }
}

/// What a fix does when the same fix already acted on the same target within its cooldown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CooldownPolicy {
    /// Skip the job (outcome `skipped_cooldown`).
    Skip,
    /// Do not act again: the job needs a human (outcome `needs_human`).
    Escalate,
}

/// Everything a fix acts through: config, AWS clients, databases, the ledger's scheduler.
#[derive(Clone)]
pub struct FixContext {
    config: Arc<Config>,
    aws: AwsClients,
    tasks: DmsTasks,
    ledger: Ledger,
    progress: Arc<dyn Progress>,
    metrics: Option<Metrics>,
}

impl FixContext {
    pub fn new(config: Arc<Config>, aws: AwsClients, ledger: Ledger) -> Self {
        let tasks = DmsTasks::new(aws.dms.clone(), config.remediator.task_state_timeout);
        Self {
            config,
            aws,
            tasks,
            ledger,
            progress: Arc::new(LogProgress::default()),
            metrics: None,
        }
    }

    /// Replaces where row-by-row repairs report progress (a terminal bar for CLI runs).
    pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = progress;
        self
    }

    /// Where row-by-row repairs report progress.
    pub fn progress(&self) -> &dyn Progress {
        self.progress.as_ref()
    }

    /// Counts settled resumes in `metrics` (the worker's).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The worker's metrics (none for a CLI run).
    pub fn metrics(&self) -> Option<&Metrics> {
        self.metrics.as_ref()
    }

    fn count_resume(&self, fix: FixName, result: ResumeResult) {
        if let Some(metrics) = &self.metrics {
            metrics.resume_settled(fix, result);
        }
    }

    /// Replaces the DMS task operations (e.g. a faster poll interval in tests).
    pub fn with_tasks(mut self, tasks: DmsTasks) -> Self {
        self.tasks = tasks;
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn aws(&self) -> &AwsClients {
        &self.aws
    }

    /// Stop, resume and wait for DMS tasks by name.
    pub fn tasks(&self) -> &DmsTasks {
        &self.tasks
    }

    /// A new connection for reading the source: `[source.replica]` when configured, else
    /// `[source]` (fixes only read the source).
    pub async fn connect_source(&self) -> Result<tokio_postgres::Client, ConnectError> {
        db::connect(self.config.source_reads()).await
    }

    /// A new connection to the source primary (`[source]`), for reads that must see what DMS
    /// has already captured (F1 inserts rows DMS failed to update moments ago; a lagging
    /// replica may not have replayed them yet).
    pub async fn connect_source_primary(&self) -> Result<tokio_postgres::Client, ConnectError> {
        db::connect(&self.config.source).await
    }

    /// A new connection to Redshift (`[redshift]`).
    pub async fn connect_redshift(&self) -> Result<tokio_postgres::Client, ConnectError> {
        db::connect(&self.config.redshift.database()).await
    }

    /// Records a step of `job` in the ledger to run at `step.run_at`; a worker of any replica
    /// runs it then, after restarts too, through `Fix::run_step` of the job's fix.
    pub async fn schedule(&self, job: &Job, step: NewStep) -> Result<i64, FixError> {
        let id = self.ledger.schedule_step(job.id, job.fix, &step).await?;
        tracing::info!(
            job = job.id,
            step = id,
            run_at = %step.run_at,
            description = %step.description,
            "Scheduled a step."
        );
        Ok(id)
    }

    /// The current time, as the ledger records it.
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    /// The job ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Stops `task` durably: first records in the ledger that it is owed a resume (not before
    /// `resume_not_before`; a human is told if it is still owed `resume_give_up_after` later),
    /// then sends StopReplicationTask without waiting. Returns the obligation's id. Whatever
    /// happens next (a timeout, throttling, a crash), the worker's sweeper resumes the task
    /// once it is stopped, or marks the job `needs_human`.
    pub async fn stop_owing_resume(
        &self,
        job: &Job,
        task: &str,
        resume_not_before: DateTime<Utc>,
    ) -> Result<i64, FixError> {
        let give_up = resume_not_before
            + chrono::Duration::from_std(self.config.remediator.resume_give_up_after)
                .unwrap_or(chrono::Duration::MAX);
        let obligation = self
            .ledger
            .owe_resume(job.id, job.fix, task, resume_not_before, give_up)
            .await?;
        tracing::info!(
            job = job.id,
            task,
            obligation,
            "Resume owed (recorded before the stop)."
        );
        self.tasks.send_stop(task).await?;
        Ok(obligation)
    }

    /// Stops `task` (durably, see `stop_owing_resume`) and resumes it: what F1, F2 and F5 do.
    pub async fn restart_task(&self, job: &Job, task: &str) -> Result<Restart, FixError> {
        let obligation = self.stop_owing_resume(job, task, self.now()).await?;
        let result = async {
            self.tasks.wait_for(task, STOPPED).await?;
            self.tasks.resume(task).await
        }
        .await;
        self.settle_restart(job, task, obligation, result).await
    }

    /// Settles obligation `obligation` of `job` on `task` from how its resume ended.
    pub async fn settle_restart(
        &self,
        job: &Job,
        task: &str,
        obligation: i64,
        result: Result<TaskState, DmsTaskError>,
    ) -> Result<Restart, FixError> {
        let by = format!("job {}", job.id);
        match result {
            Ok(state) => {
                self.ledger
                    .settle_resume(obligation, ResumeState::Resumed, "resumed by the fix", &by)
                    .await?;
                self.count_resume(job.fix, ResumeResult::Resumed);
                Ok(Restart::Resumed(state))
            }
            Err(error @ (DmsTaskError::Failed { .. } | DmsTaskError::NotFound(_))) => {
                self.ledger
                    .settle_resume(obligation, ResumeState::NeedsHuman, &error.to_string(), &by)
                    .await?;
                self.count_resume(job.fix, ResumeResult::NeedsHuman);
                Ok(Restart::NeedsHuman { obligation, error })
            }
            Err(error) => {
                tracing::warn!(job = job.id, task, obligation, %error, "Task not running again yet; its resume stays owed.");
                Ok(Restart::Owed { obligation, error })
            }
        }
    }
}

/// How a durable restart ended.
#[derive(Debug)]
pub enum Restart {
    /// The task runs again.
    Resumed(TaskState),
    /// Not running yet (still `stopping`, throttled, …): the resume stays owed in the ledger
    /// and the sweeper carries it out.
    Owed {
        obligation: i64,
        error: DmsTaskError,
    },
    /// The task failed (or vanished): a human must look; `error` carries DMS's `StopReason`
    /// and `LastFailureMessage`.
    NeedsHuman {
        obligation: i64,
        error: DmsTaskError,
    },
}

impl Restart {
    /// The outcome of a fix whose work ended with this restart: `done` describes what the fix
    /// did before it (e.g. "Restarted task t1"), `details` what the ledger records.
    pub fn outcome(self, task: &str, done: &str, mut details: serde_json::Value) -> Outcome {
        let merge = |details: &mut serde_json::Value, extra: serde_json::Value| {
            if let (Some(d), serde_json::Value::Object(extra)) = (details.as_object_mut(), extra) {
                d.extend(extra);
            }
        };
        match self {
            Restart::Resumed(state) => {
                merge(
                    &mut details,
                    serde_json::json!({ "restarted": true, "status": state.status }),
                );
                Outcome::succeeded(format!("{done}: task {task} stopped and resumed."), details)
            }
            Restart::Owed { obligation, error } => {
                merge(
                    &mut details,
                    serde_json::json!({
                        "restarted": false,
                        "resume_owed": [task],
                        "obligation": obligation,
                        "error": error.to_string(),
                    }),
                );
                Outcome::failed(
                    format!("{done}: task {task} stopped but not running yet ({error}); its resume is owed (obligation {obligation}) and the remediator resumes it once it is stopped."),
                    details,
                )
            }
            Restart::NeedsHuman { obligation, error } => {
                merge(
                    &mut details,
                    serde_json::json!({
                        "restarted": false,
                        "obligation": obligation,
                        "error": error.to_string(),
                    }),
                );
                Outcome::needs_human(
                    format!("{done}: task {task} was stopped and cannot be resumed by dmsguard: {error}"),
                    details,
                )
            }
        }
    }
}

/// One automated procedure, planned then executed.
#[async_trait::async_trait]
pub trait Fix: Send + Sync {
    fn name(&self) -> FixName;

    /// Works out what to do for `job`, changing nothing. Dry-run stops here.
    async fn plan(&self, ctx: &FixContext, job: &Job) -> Result<Plan, FixError>;

    /// Carries out `plan`; runs holding the locks of `plan.tasks`, never on a request path.
    async fn execute(&self, ctx: &FixContext, job: &Job, plan: &Plan) -> Result<Outcome, FixError>;

    /// What to do when this fix already acted on the job's target within the cooldown.
    fn on_cooldown(&self) -> CooldownPolicy {
        CooldownPolicy::Skip
    }

    /// Runs a step this fix scheduled with `FixContext::schedule`; returns a one-line result.
    /// Runs holding the locks of `step.tasks`; must be idempotent (a step may run again after
    /// a crash).
    async fn run_step(&self, ctx: &FixContext, step: &ScheduledStep) -> Result<String, FixError> {
        let _ = ctx;
        Err(FixError::UnknownStep(self.name(), step.description.clone()))
    }
}

/// The fixes by name.
#[derive(Clone)]
pub struct FixRegistry {
    fixes: BTreeMap<FixName, Arc<dyn Fix>>,
}

impl FixRegistry {
    /// Every fix.
    pub fn standard() -> Self {
        Self {
            fixes: FixName::ALL
                .into_iter()
                .map(|name| (name, standard_fix(name)))
                .collect(),
        }
    }

    /// Adds or replaces the fix of `fix.name()`.
    pub fn register(&mut self, fix: Arc<dyn Fix>) {
        self.fixes.insert(fix.name(), fix);
    }

    pub fn get(&self, name: FixName) -> Arc<dyn Fix> {
        self.fixes
            .get(&name)
            .cloned()
            .unwrap_or_else(|| standard_fix(name))
    }
}

/// The fix of `name`; the match makes a new fix name fail to compile until it has a fix.
fn standard_fix(name: FixName) -> Arc<dyn Fix> {
    match name {
        FixName::Memory => Arc::new(MemoryFix),
        FixName::Maintenance => Arc::new(MaintenanceFix),
        FixName::StalledTask => Arc::new(StalledTaskFix),
        FixName::OneByOne => Arc::new(OneByOneFix),
        FixName::MissingRows => Arc::new(MissingRowsFix),
        FixName::DivergentRows => Arc::new(DivergentRowsFix),
    }
}

/// The configured task named `name`, or an input error naming it.
pub(crate) fn configured_task<'c>(
    config: &'c Config,
    name: &str,
) -> Result<&'c dmsguard_pipeline::config::TaskConfig, FixError> {
    config
        .task(name)
        .ok_or_else(|| FixError::Input(format!("task `{name}` is not in [[tasks]]")))
}

/// The job's task label, or an input error.
pub(crate) fn job_task(job: &Job) -> Result<&str, FixError> {
    job.target
        .task
        .as_deref()
        .ok_or_else(|| FixError::Input(format!("fix `{}` needs a task", job.fix)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_renders_steps_and_sql() {
        let mut plan = Plan::new("Restart task t1.");
        plan.tasks.push("t1".into());
        plan.step("Stop t1.")
            .sql_step("Insert missing rows.", "INSERT INTO \"a\".\"b\"\nSELECT $1");
        let text = plan.render();
        assert_eq!(
            text,
            "Restart task t1.\ntasks locked: t1\n1. Stop t1.\n2. Insert missing rows.\n     INSERT INTO \"a\".\"b\"\n     SELECT $1\n"
        );
        let json = serde_json::to_value(&plan).unwrap();
        assert_eq!(serde_json::from_value::<Plan>(json).unwrap(), plan);
    }

    #[test]
    fn registry_has_every_fix() {
        let registry = FixRegistry::standard();
        for fix in FixName::ALL {
            assert_eq!(registry.get(fix).name(), fix);
        }
    }
}
