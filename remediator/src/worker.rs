//! The worker: claims queued jobs and due scheduled steps from the ledger and runs them, off
//! the request path, with per-fix concurrency limits, task locks and cooldowns.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dmsguard_pipeline::config::{Config, FixName};
use dmsguard_pipeline::reload::LiveConfig;
use serde_json::json;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;

use dmsguard_pipeline::dms_tasks::{failure_text, DmsTaskError};

use crate::fixes::{CooldownPolicy, FixContext, FixError, FixRegistry, OutcomeStatus};
use crate::ledger::{
    Job, JobOutcome, Ledger, LedgerError, ResumeObligation, ResumeState, ScheduledStep, TaskLocks,
};
use crate::metrics::{Metrics, ResumeResult};
use crate::preflight_gate::{FixGate, Verdict};
use dmsguard_pipeline::report::ErrorChain;

/// Time between two looks at the ledger when nothing wakes the worker.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often a running job or step proves its runner is alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// A running job or step whose heartbeat is older than this belonged to a dead runner.
pub const STALE_AFTER: Duration = Duration::from_secs(60);
/// How soon work whose tasks were locked by another job is tried again.
pub const LOCK_RETRY: Duration = Duration::from_secs(1);
/// Attempts of a failing step before it is marked failed.
pub const MAX_STEP_ATTEMPTS: i32 = 5;
/// Steps run at once by one worker.
const MAX_STEPS_IN_FLIGHT: usize = 4;
/// How often abandoned work is looked for.
const RECOVER_EVERY: Duration = Duration::from_secs(15);
/// How often owed resumes are looked at (each waits `resume_retry_interval` between attempts).
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Owed resumes handled per sweep.
const RESUMES_PER_SWEEP: i64 = 16;
/// DMS's `StopReason` of a failure DMS recovers from by itself
/// (<https://docs.aws.amazon.com/dms/latest/APIReference/API_ReplicationTask.html>).
const RECOVERABLE_ERROR: &str = "RECOVERABLE_ERROR";

/// How a job run ended.
#[derive(Debug, Clone)]
pub enum JobReport {
    /// The job finished with this outcome.
    Finished {
        job_id: i64,
        outcome: JobOutcome,
        summary: String,
        error: Option<String>,
        plan: Option<String>,
    },
    /// Its tasks were locked by another job; it is queued again.
    Requeued { job_id: i64 },
}

/// Runs jobs and steps. Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    /// Replaced by a reload: fix switches, cooldowns and the resume retry interval apply from
    /// the next job or sweep.
    config: LiveConfig,
    ledger: Ledger,
    fixes: FixRegistry,
    ctx: FixContext,
    metrics: Metrics,
    /// Which fixes the preflight checks let run; jobs of a pending fix wait in the queue.
    gate: FixGate,
    runner: String,
    wake: Arc<Notify>,
    limits: BTreeMap<FixName, Arc<Semaphore>>,
    steps: Arc<Semaphore>,
    sweeping: Arc<std::sync::atomic::AtomicBool>,
}

impl Worker {
    pub fn new(
        config: Arc<Config>,
        ledger: Ledger,
        fixes: FixRegistry,
        ctx: FixContext,
        metrics: Metrics,
        gate: FixGate,
    ) -> Self {
        let limits = FixName::ALL
            .into_iter()
            .map(|fix| {
                let n = config.remediator.fixes.get(fix).max_concurrency.max(1);
                (fix, Arc::new(Semaphore::new(n)))
            })
            .collect();
        let runner = format!(
            "pid{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Self {
            inner: Arc::new(Inner {
                config: LiveConfig::new(config),
                ledger,
                fixes,
                ctx: ctx.with_metrics(metrics.clone()),
                metrics,
                gate,
                runner,
                wake: Arc::new(Notify::new()),
                limits,
                steps: Arc::new(Semaphore::new(MAX_STEPS_IN_FLIGHT)),
                sweeping: Arc::default(),
            }),
        }
    }

    /// The configuration the worker reads on each job; a reload replaces it.
    pub fn live_config(&self) -> LiveConfig {
        self.inner.config.clone()
    }

    /// Which fixes the preflight checks let run.
    pub fn gate(&self) -> &FixGate {
        &self.inner.gate
    }

    /// This worker's id, recorded as `runner` on the jobs and steps it runs.
    pub fn runner(&self) -> &str {
        &self.inner.runner
    }

    /// Wakes the worker now (a job was queued) instead of at the next poll.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Claims and runs work until `shutdown` turns true, then waits for work in flight.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(runner = %self.inner.runner, "Worker started.");
        let mut running = JoinSet::new();
        let mut last_recover: Option<Instant> = None;
        let mut last_count: Option<Instant> = None;
        let mut last_sweep: Option<Instant> = None;
        loop {
            while let Some(done) = running.try_join_next() {
                if let Err(error) = done {
                    tracing::error!(error = %ErrorChain(&error), "A job or step task ended abnormally.");
                }
            }
            if last_recover.is_none_or(|t| t.elapsed() >= RECOVER_EVERY) {
                last_recover = Some(Instant::now());
                self.recover().await;
            }
            self.claim(&mut running).await;
            if last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_EVERY)
                && !self
                    .inner
                    .sweeping
                    .swap(true, std::sync::atomic::Ordering::AcqRel)
            {
                last_sweep = Some(Instant::now());
                let worker = self.clone();
                running.spawn(async move {
                    if let Err(error) = worker.sweep_resumes().await {
                        tracing::warn!(%error, "Cannot look at owed resumes.");
                    }
                    worker
                        .inner
                        .sweeping
                        .store(false, std::sync::atomic::Ordering::Release);
                });
            }
            // Wakes come with every queued job; count at most once per poll interval.
            if last_count.is_none_or(|t| t.elapsed() >= POLL_INTERVAL) {
                last_count = Some(Instant::now());
                match self.inner.ledger.pending_step_count().await {
                    Ok(n) => self.inner.metrics.set_steps_pending(n),
                    Err(error) => {
                        tracing::warn!(error = %ErrorChain(&error), "Cannot count pending steps.")
                    }
                }
            }
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
        }
        if !running.is_empty() {
            tracing::info!(
                in_flight = running.len(),
                "Worker stopping: waiting for work in flight."
            );
        }
        while let Some(done) = running.join_next().await {
            if let Err(error) = done {
                tracing::error!(error = %ErrorChain(&error), "A job or step task ended abnormally.");
            }
        }
        tracing::info!("Worker stopped.");
    }

    async fn recover(&self) {
        match self.inner.ledger.recover_abandoned(STALE_AFTER).await {
            Ok((0, 0)) => {}
            Ok((jobs, steps)) => tracing::warn!(
                jobs,
                steps,
                "Recovered work abandoned by a stopped remediator."
            ),
            Err(error) => {
                tracing::warn!(error = %ErrorChain(&error), "Cannot look for abandoned work.")
            }
        }
    }

    async fn claim(&self, running: &mut JoinSet<()>) {
        for (&fix, limit) in &self.inner.limits {
            // Until the first checks finish, a fix's jobs wait; a refused fix's are claimed
            // and recorded as refused.
            if self.inner.gate.verdict(fix) == Verdict::Pending {
                continue;
            }
            while let Ok(permit) = limit.clone().try_acquire_owned() {
                match self.inner.ledger.claim_job(fix, &self.inner.runner).await {
                    Ok(Some(job)) => {
                        let worker = self.clone();
                        running.spawn(async move {
                            let _permit = permit;
                            if let Err(error) = worker.run_job(job, Duration::ZERO).await {
                                tracing::error!(error = %ErrorChain(&error), "Ledger failed while running a job.");
                            }
                        });
                    }
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(error = %ErrorChain(&error), fix = %fix, "Cannot claim jobs.");
                        return;
                    }
                }
            }
        }
        while let Ok(permit) = self.inner.steps.clone().try_acquire_owned() {
            match self.inner.ledger.claim_due_step(&self.inner.runner).await {
                Ok(Some(step)) => {
                    let worker = self.clone();
                    running.spawn(async move {
                        let _permit = permit;
                        if let Err(error) = worker.run_step(step).await {
                            tracing::error!(error = %ErrorChain(&error), "Ledger failed while running a step.");
                        }
                    });
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(error = %ErrorChain(&error), "Cannot claim scheduled steps.");
                    return;
                }
            }
        }
    }

    /// Runs a claimed job to its end: plan, (dry run stops here), lock its tasks, check the
    /// cooldown under the lock, execute, record. Waits up to `lock_wait` for locked tasks,
    /// then puts the job back in the queue.
    pub async fn run_job(&self, job: Job, lock_wait: Duration) -> Result<JobReport, LedgerError> {
        let inner = &self.inner;
        let started = Instant::now();
        let _in_flight = inner.metrics.in_flight(job.fix);
        let _heartbeat = self.heartbeat(Some(job.id), None);
        let fix = inner.fixes.get(job.fix);
        let config = inner.config.current();
        let settings = config.remediator.fixes.get(job.fix);
        tracing::info!(job = job.id, fix = %job.fix, target = %job.target.key, "Running job.");
        // A job queued before a recheck disabled its fix; hand runs decide for themselves.
        if let (false, Verdict::Refused(failed)) = (job.manual, inner.gate.verdict(job.fix)) {
            let (summary, details) = crate::preflight_gate::refusal(job.fix, &failed);
            inner.gate.count_refused(job.fix);
            return self
                .finish(
                    &job,
                    started,
                    JobOutcome::Refused,
                    &summary,
                    None,
                    None,
                    details,
                )
                .await;
        }

        let plan = match fix.plan(&inner.ctx, &job).await {
            Ok(plan) => plan,
            Err(error) => {
                return self
                    .finish(
                        &job,
                        started,
                        JobOutcome::Failed,
                        "Planning failed.",
                        Some(&error),
                        None,
                        json!({}),
                    )
                    .await;
            }
        };
        let plan_text = plan.render();
        let plan_json = serde_json::to_value(&plan).unwrap_or_else(|_| json!({}));
        inner
            .ledger
            .set_plan(job.id, &plan_text, &plan_json)
            .await?;
        if job.dry_run {
            tracing::info!(job = job.id, plan = %plan_text, "Dry run: planned, changed nothing.");
            return self
                .finish(
                    &job,
                    started,
                    JobOutcome::DryRun,
                    &format!("Dry run: {}", plan.summary),
                    None,
                    Some(plan_text),
                    json!({}),
                )
                .await;
        }

        let Some(locks) = self.lock(&plan.tasks, lock_wait).await? else {
            tracing::info!(job = job.id, tasks = ?plan.tasks, "Tasks are locked by another job; job requeued.");
            inner.ledger.requeue(job.id, LOCK_RETRY).await?;
            return Ok(JobReport::Requeued { job_id: job.id });
        };
        if !job.manual {
            if let Some(previous) = inner.ledger.acted_within(&job, settings.cooldown).await? {
                let (outcome, summary) = match fix.on_cooldown() {
                    CooldownPolicy::Skip => (
                        JobOutcome::SkippedCooldown,
                        format!("Skipped: job {previous} acted on {} within the cooldown.", job.target.key),
                    ),
                    CooldownPolicy::Escalate => (
                        JobOutcome::NeedsHuman,
                        format!(
                            "Needs a human: job {previous} already acted on {} within the cooldown; not acting again.",
                            job.target.key
                        ),
                    ),
                };
                // Record before releasing: the ledger's times then never overlap on a task.
                let report = self
                    .finish(
                        &job,
                        started,
                        outcome,
                        &summary,
                        None,
                        Some(plan_text),
                        json!({ "previous_job": previous }),
                    )
                    .await;
                locks.release().await;
                return report;
            }
        }
        inner.ledger.mark_acting(job.id).await?;
        let result = fix.execute(&inner.ctx, &job, &plan).await;
        // Record before releasing: the ledger's times then never overlap on a task.
        let report = match result {
            Ok(outcome) => {
                let job_outcome = match outcome.status {
                    OutcomeStatus::Succeeded => JobOutcome::Succeeded,
                    OutcomeStatus::Failed => JobOutcome::Failed,
                    OutcomeStatus::NeedsHuman => JobOutcome::NeedsHuman,
                };
                self.finish(
                    &job,
                    started,
                    job_outcome,
                    &outcome.summary,
                    None,
                    Some(plan_text),
                    outcome.details,
                )
                .await
            }
            Err(error) => {
                self.finish(
                    &job,
                    started,
                    JobOutcome::Failed,
                    "Execution failed.",
                    Some(&error),
                    Some(plan_text),
                    json!({}),
                )
                .await
            }
        };
        locks.release().await;
        report
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        job: &Job,
        started: Instant,
        outcome: JobOutcome,
        summary: &str,
        error: Option<&FixError>,
        plan: Option<String>,
        details: serde_json::Value,
    ) -> Result<JobReport, LedgerError> {
        let error = error.map(|e| dmsguard_pipeline::report::error_chain(e));
        self.inner
            .ledger
            .finish_job(job.id, outcome, summary, error.as_deref(), &details)
            .await?;
        let seconds = started.elapsed().as_secs_f64();
        self.inner.metrics.job_finished(job.fix, outcome, seconds);
        match outcome {
            JobOutcome::Failed | JobOutcome::NeedsHuman | JobOutcome::Refused => tracing::warn!(
                job = job.id,
                fix = %job.fix,
                target = %job.target.key,
                outcome = outcome.as_str(),
                summary,
                error = %error.as_deref().unwrap_or(""),
                seconds,
                "Job finished."
            ),
            _ => tracing::info!(
                job = job.id,
                fix = %job.fix,
                target = %job.target.key,
                outcome = outcome.as_str(),
                summary,
                seconds,
                "Job finished."
            ),
        }
        Ok(JobReport::Finished {
            job_id: job.id,
            outcome,
            summary: summary.to_owned(),
            error,
            plan,
        })
    }

    /// Runs a claimed scheduled step through its fix; retries failures with a growing delay.
    pub async fn run_step(&self, step: ScheduledStep) -> Result<(), LedgerError> {
        let inner = &self.inner;
        let _heartbeat = self.heartbeat(None, Some(step.id));
        let Some(locks) = self.lock(&step.tasks, Duration::ZERO).await? else {
            inner.ledger.retry_step(step.id, LOCK_RETRY, None).await?;
            return Ok(());
        };
        tracing::info!(step = step.id, job = step.job_id, description = %step.description, "Running scheduled step.");
        let result = inner.fixes.get(step.fix).run_step(&inner.ctx, &step).await;
        let recorded = match result {
            Ok(summary) => {
                tracing::info!(step = step.id, job = step.job_id, result = %summary, "Scheduled step done.");
                inner.ledger.finish_step(step.id, Ok(&summary)).await
            }
            Err(error) if step.attempts >= MAX_STEP_ATTEMPTS => {
                tracing::error!(step = step.id, job = step.job_id, error = %ErrorChain(&error), attempts = step.attempts, "Scheduled step failed for good.");
                inner
                    .ledger
                    .finish_step(
                        step.id,
                        Err(&dmsguard_pipeline::report::error_chain(&error)),
                    )
                    .await
            }
            Err(error) => {
                let delay = Duration::from_secs(10 * step.attempts.max(1) as u64);
                tracing::warn!(step = step.id, job = step.job_id, error = %ErrorChain(&error), retry_in = ?delay, "Scheduled step failed; will retry.");
                inner
                    .ledger
                    .retry_step(
                        step.id,
                        delay,
                        Some(&dmsguard_pipeline::report::error_chain(&error)),
                    )
                    .await
            }
        };
        locks.release().await;
        recorded
    }

    /// Carries out owed resumes that are due: a task a fix stopped is resumed once it is
    /// `stopped`, confirmed once `running`, and handed to a human once it `failed` (not
    /// recoverably), vanished, or is still owed at its give-up time. A task locked by a job is
    /// left to that job. Returns how many obligations were looked at.
    pub async fn sweep_resumes(&self) -> Result<usize, LedgerError> {
        self.sweep_resumes_of(None).await
    }

    /// [`Worker::sweep_resumes`] for the obligations of job `job_id` only, when given (what a
    /// hand run does for the tasks its job stopped before it exits).
    pub async fn sweep_resumes_of(&self, job_id: Option<i64>) -> Result<usize, LedgerError> {
        let inner = &self.inner;
        let due = inner
            .ledger
            .due_resumes_of(job_id, RESUMES_PER_SWEEP)
            .await?;
        let n = due.len();
        for obligation in due {
            let Some(locks) = inner
                .ledger
                .lock_tasks(std::slice::from_ref(&obligation.task))
                .await?
            else {
                continue;
            };
            let result = self.carry_out(&obligation).await;
            locks.release().await;
            result?;
        }
        inner
            .metrics
            .set_resumes_owed(inner.ledger.owed_resume_count().await?);
        Ok(n)
    }

    /// One attempt at an owed resume, holding its task's lock.
    async fn carry_out(&self, o: &ResumeObligation) -> Result<(), LedgerError> {
        let inner = &self.inner;
        let retry = inner.config.current().remediator.resume_retry_interval;
        let tasks = inner
            .ctx
            .tasks()
            .clone()
            .with_state_timeout(retry.min(inner.ctx.tasks().state_timeout()));
        let give_up = chrono::Utc::now() >= o.give_up_at;
        let since = o.created_at.format("%Y-%m-%d %H:%M:%S UTC");
        let state = match tasks.describe(&o.task).await {
            Ok(state) => state,
            Err(error @ DmsTaskError::NotFound(_)) => {
                return self
                    .settle(o, ResumeState::NeedsHuman, &format!("{error}"))
                    .await
            }
            Err(error) if give_up => {
                return self
                    .settle(
                        o,
                        ResumeState::NeedsHuman,
                        &format!("resume owed since {since}, still failing: {error}"),
                    )
                    .await
            }
            Err(error) => {
                tracing::warn!(obligation = o.id, task = %o.task, %error, "Owed resume: cannot read the task; will retry.");
                return inner
                    .ledger
                    .note_resume_attempt(o.id, None, Some(&error.to_string()), retry)
                    .await;
            }
        };
        if state.is_running() {
            return self.settle(o, ResumeState::Resumed, "running again").await;
        }
        if state.is_failed() {
            let why = failure_text(
                state.stop_reason.as_deref(),
                state.last_failure_message.as_deref(),
            );
            let recoverable = state
                .stop_reason
                .as_deref()
                .is_some_and(|r| r.contains(RECOVERABLE_ERROR));
            if !recoverable || give_up {
                return self
                    .settle(
                        o,
                        ResumeState::NeedsHuman,
                        &format!("the task failed: {why}"),
                    )
                    .await;
            }
            // DMS retries recoverable errors itself; wait for it (until the give-up time).
            return inner
                .ledger
                .note_resume_attempt(o.id, Some(&state.status), Some(&why), retry)
                .await;
        }
        if state.is_stopped() {
            tracing::info!(obligation = o.id, job = o.job_id, task = %o.task, "Owed resume: the task is stopped; resuming it.");
            let (status, error) = match tasks.send_resume(&o.task).await {
                Ok(sent) => (sent.status, None),
                Err(error) => (state.status.clone(), Some(error.to_string())),
            };
            if give_up && error.is_some() {
                return self
                    .settle(
                        o,
                        ResumeState::NeedsHuman,
                        &format!(
                            "resume owed since {since}; the resume failed: {}",
                            error.unwrap_or_default()
                        ),
                    )
                    .await;
            }
            // Confirmed `running` at a later look.
            return inner
                .ledger
                .note_resume_attempt(o.id, Some(&status), error.as_deref(), retry)
                .await;
        }
        if give_up {
            return self
                .settle(
                    o,
                    ResumeState::NeedsHuman,
                    &format!(
                        "resume owed since {since}; the task is still `{}`",
                        state.status
                    ),
                )
                .await;
        }
        // stopping, starting, modifying, …: look again later.
        inner
            .ledger
            .note_resume_attempt(o.id, Some(&state.status), None, retry)
            .await
    }

    async fn settle(
        &self,
        o: &ResumeObligation,
        state: ResumeState,
        reason: &str,
    ) -> Result<(), LedgerError> {
        let inner = &self.inner;
        if !inner
            .ledger
            .settle_resume(o.id, state, reason, &inner.runner)
            .await?
        {
            return Ok(());
        }
        match state {
            ResumeState::Resumed => {
                tracing::info!(obligation = o.id, job = o.job_id, task = %o.task, reason, "Owed resume done: the task runs again.");
                inner.metrics.resume_settled(o.fix, ResumeResult::Resumed);
            }
            _ => {
                tracing::error!(obligation = o.id, job = o.job_id, task = %o.task, reason, "Owed resume given up: a human must resume the task.");
                inner
                    .metrics
                    .resume_settled(o.fix, ResumeResult::NeedsHuman);
            }
        }
        Ok(())
    }

    /// Takes the locks of `tasks`, retrying each second for up to `wait`.
    async fn lock(
        &self,
        tasks: &[String],
        wait: Duration,
    ) -> Result<Option<TaskLocks>, LedgerError> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(locks) = self.inner.ledger.lock_tasks(tasks).await? {
                return Ok(Some(locks));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(LOCK_RETRY).await;
        }
    }

    /// Keeps the heartbeat of a job or step fresh until the guard drops.
    fn heartbeat(&self, job: Option<i64>, step: Option<i64>) -> AbortOnDrop {
        let ledger = self.inner.ledger.clone();
        let runner = self.inner.runner.clone();
        let jobs: Vec<i64> = job.into_iter().collect();
        let steps: Vec<i64> = step.into_iter().collect();
        AbortOnDrop(tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
            loop {
                tick.tick().await;
                if let Err(error) = ledger.heartbeat(&runner, &jobs, &steps).await {
                    tracing::warn!(error = %ErrorChain(&error), "Cannot record a heartbeat.");
                }
            }
        }))
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
