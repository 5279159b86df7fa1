//! F3: before Redshift maintenance, stop every running task and schedule their resume at stop
//! time + `maintenance_hold` in the ledger; resume exactly the tasks stopped here, leaving tasks
//! someone else had stopped alone. The resume survives restarts (it is a ledger step), and each
//! stopped task is also owed a resume in the ledger from the moment its stop is sent (a task
//! still `stopping` at the timeout included), which the worker's sweeper carries out if the
//! step cannot.

use chrono::Utc;
use dmsguard_pipeline::config::FixName;
use serde::{Deserialize, Serialize};
use serde_json::json;

use dmsguard_pipeline::dms_tasks::{DmsTaskError, RUNNING, STARTING, STOPPED, STOPPING};
use dmsguard_pipeline::maintenance;

use super::{Fix, FixContext, FixError, Outcome, Plan};
use crate::ledger::{Job, NewStep, ScheduledStep};

pub struct MaintenanceFix;

/// How long the tasks stay stopped.
#[derive(Debug)]
enum Hold {
    /// `maintenance_hold` from the stop: the cluster's schedule is not known (a configured
    /// window, no `cluster_identifier`, or `DescribeClusters` failed).
    Fixed(std::time::Duration),
    /// Until the maintenance's end (start + the window's length) plus `maintenance_margin`.
    Until(chrono::DateTime<Utc>),
    /// Nothing to hold for: the next maintenance is not imminent (e.g. deferred).
    NotImminent(String),
    /// Redshift Serverless: no maintenance window.
    Serverless,
}

/// Works out the hold from the cluster's schedule (`DescribeClusters`) when it is known.
async fn hold(ctx: &FixContext) -> Hold {
    let config = ctx.config();
    if config.redshift.serverless {
        return Hold::Serverless;
    }
    let fixed = Hold::Fixed(config.remediator.maintenance_hold);
    let (Some(cluster), None) = (
        config.redshift.cluster_identifier.as_deref(),
        config.redshift.maintenance_window.as_deref(),
    ) else {
        return fixed;
    };
    let schedule = match maintenance::describe_schedule(&ctx.aws().redshift, cluster).await {
        Ok(schedule) => schedule,
        Err(error) => {
            tracing::warn!(%error, "Cannot read the cluster's maintenance schedule; holding for maintenance_hold.");
            return fixed;
        }
    };
    let margin = chrono::Duration::from_std(config.remediator.maintenance_margin)
        .unwrap_or(chrono::Duration::zero());
    let now = Utc::now();
    if let Some(active) = schedule.active(now) {
        return Hold::Until(active.end + margin);
    }
    // The alert fires `maintenance_stop_before` ahead; allow as much again for delivery.
    let lead = chrono::Duration::from_std(config.remediator.maintenance_stop_before * 2)
        .unwrap_or(chrono::Duration::MAX);
    match schedule.next(now) {
        Some(next) if next.start - now <= lead => Hold::Until(next.end + margin),
        next => {
            let weekly = now
                + chrono::Duration::seconds(maintenance::seconds_until_next_start(
                    &schedule.window,
                    now,
                ));
            let deferred = schedule
                .deferral_at(schedule.next_start.unwrap_or(weekly))
                .or_else(|| schedule.deferral_at(weekly))
                .map(|d| format!(" (maintenance deferred by `{}` until {})", d.id, d.end))
                .unwrap_or_default();
            Hold::NotImminent(match next {
                Some(next) => format!(
                    "the next maintenance of cluster {cluster} starts at {}{deferred}",
                    next.start
                ),
                None => format!("no maintenance of cluster {cluster} is ahead{deferred}"),
            })
        }
    }
}

/// The scheduled resume: exactly the tasks this fix stopped.
#[derive(Debug, Serialize, Deserialize)]
struct ResumeAction {
    resume: Vec<String>,
}

#[async_trait::async_trait]
impl Fix for MaintenanceFix {
    fn name(&self) -> FixName {
        FixName::Maintenance
    }

    async fn plan(&self, ctx: &FixContext, _job: &Job) -> Result<Plan, FixError> {
        let hold = hold(ctx).await;
        let resume = match &hold {
            Hold::Fixed(d) => format!("{} after the stop", humanize(*d)),
            Hold::Until(t) => format!("at {t} (the window's end plus the margin)"),
            Hold::NotImminent(why) => {
                let mut plan = Plan::new(format!("Stop nothing: {why}."));
                plan.step("Leave every task running.");
                return Ok(plan);
            }
            Hold::Serverless => {
                let mut plan =
                    Plan::new("Stop nothing: Redshift Serverless has no maintenance window.");
                plan.step("Leave every task running.");
                return Ok(plan);
            }
        };
        let mut plan = Plan::new(format!(
            "Stop every running task before Redshift maintenance; resume them {resume}."
        ));
        plan.facts.insert("hold".into(), json!(format!("{hold:?}")));
        let mut to_stop = Vec::new();
        for task in &ctx.config().tasks {
            let state = ctx.tasks().describe(&task.name).await?;
            plan.facts.insert(task.name.clone(), json!(state.status));
            if state.is_running() {
                plan.step(format!(
                    "Stop task {} and wait until it is stopped.",
                    task.name
                ));
                to_stop.push(task.name.clone());
            } else if state.status == STARTING {
                plan.step(format!(
                    "Wait until task {} runs (it is starting), stop it and wait until it is stopped.",
                    task.name
                ));
                to_stop.push(task.name.clone());
            } else {
                plan.step(format!(
                    "Leave task {} alone: it is {} (not stopped by dmsguard, not resumed by it).",
                    task.name, state.status
                ));
            }
        }
        if to_stop.is_empty() {
            plan.step("Schedule nothing: no task is running.");
        } else {
            plan.step(format!(
                "Schedule in the ledger: {resume}, resume {} (resume-processing).",
                to_stop.join(", ")
            ));
        }
        plan.tasks = ctx.config().tasks.iter().map(|t| t.name.clone()).collect();
        Ok(plan)
    }

    async fn execute(&self, ctx: &FixContext, job: &Job, plan: &Plan) -> Result<Outcome, FixError> {
        // The hold counts from the stop, or lasts until the window's end plus the margin when
        // the cluster's schedule is known; every task's resume is owed from the moment its stop
        // is sent (ledger), due a retry interval after the scheduled resume (which normally
        // does it).
        let resume_at = match hold(ctx).await {
            Hold::Fixed(d) => {
                Utc::now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
            }
            Hold::Until(t) => t,
            Hold::NotImminent(why) => {
                return Ok(Outcome::succeeded(
                    format!("Nothing stopped: {why}."),
                    json!({ "stopped": [], "not_imminent": why }),
                ))
            }
            Hold::Serverless => {
                return Ok(Outcome::succeeded(
                    "Nothing stopped: Redshift Serverless has no maintenance window.",
                    json!({ "stopped": [], "serverless": true }),
                ))
            }
        };
        let safety_net = resume_at
            + chrono::Duration::from_std(ctx.config().remediator.resume_retry_interval)
                .unwrap_or(chrono::Duration::zero());
        let mut sent = Vec::new();
        let mut left_alone = Vec::new();
        let mut failure = None;
        let deadline = tokio::time::Instant::now() + ctx.tasks().state_timeout();
        for task in &plan.tasks {
            let mut state = match ctx.tasks().describe_patiently(task, deadline).await {
                Ok(state) => state,
                Err(error) => {
                    failure = Some((task.clone(), dmsguard_pipeline::report::error_chain(&error)));
                    break;
                }
            };
            if state.status == STARTING {
                // About to run through the maintenance: stop it once it runs (DMS refuses to
                // stop a task that is not running).
                match ctx.tasks().wait_for(task, RUNNING).await {
                    Ok(running) => state = running,
                    Err(error) => {
                        failure =
                            Some((task.clone(), dmsguard_pipeline::report::error_chain(&error)));
                        break;
                    }
                }
            }
            if !state.is_running() {
                left_alone.push(json!({ "task": task, "status": state.status }));
                continue;
            }
            // Stops are sent to every task first, then awaited: DMS stops them in parallel.
            match ctx.stop_owing_resume(job, task, safety_net).await {
                Ok(obligation) => sent.push((task.clone(), obligation)),
                Err(error) => {
                    // The obligation is recorded before the stop: the sweeper sorts it out.
                    failure = Some((task.clone(), dmsguard_pipeline::report::error_chain(&error)));
                    break;
                }
            }
        }
        let mut stopped = Vec::new();
        let mut still_stopping = Vec::new();
        let mut failed_tasks = Vec::new();
        for (task, obligation) in &sent {
            match ctx.tasks().wait_for(task, STOPPED).await {
                Ok(_) => stopped.push(task.clone()),
                Err(error @ (DmsTaskError::Failed { .. } | DmsTaskError::NotFound(_))) => {
                    ctx.settle_restart(job, task, *obligation, Err(error))
                        .await
                        .map(|r| {
                            if let super::Restart::NeedsHuman { error, .. } = r {
                                failed_tasks
                                    .push(json!({ "task": task, "error": error.to_string() }));
                            }
                        })?;
                }
                Err(error) => {
                    // Still `stopping` (or throttled) at the timeout: the resume is owed all the
                    // same, so it is scheduled with the others.
                    tracing::warn!(job = job.id, task, %error, "Task not stopped yet; its resume is scheduled anyway.");
                    still_stopping.push(json!({ "task": task, "error": error.to_string() }));
                    stopped.push(task.clone());
                }
            }
        }
        // Whatever happened, the tasks whose stop was sent must come back: schedule their resume.
        let step = if stopped.is_empty() {
            None
        } else {
            Some(
                ctx.schedule(
                    job,
                    NewStep {
                        run_at: resume_at,
                        description: format!(
                            "Resume {} after Redshift maintenance",
                            stopped.join(", ")
                        ),
                        tasks: stopped.clone(),
                        action: serde_json::to_value(ResumeAction {
                            resume: stopped.clone(),
                        })
                        .expect("a list of names serialises"),
                    },
                )
                .await?,
            )
        };
        let details = json!({
            "stopped": stopped,
            "still_stopping": still_stopping,
            "failed": failed_tasks,
            "left_alone": left_alone,
            "resume_at": step.map(|_| resume_at),
            "resume_step": step,
            "obligations": sent.iter().map(|(_, o)| *o).collect::<Vec<_>>(),
        });
        if !failed_tasks.is_empty() {
            return Ok(Outcome::needs_human(
                format!(
                    "A task failed while stopping before Redshift maintenance: {}; the others resume at {resume_at}.",
                    failed_tasks.iter().map(|f| f["error"].as_str().unwrap_or_default()).collect::<Vec<_>>().join("; ")
                ),
                details,
            ));
        }
        if let Some((task, error)) = failure {
            return Ok(Outcome::failed(
                format!("Stopping task {task} failed: {error}; the tasks stopped so far resume at {resume_at}."),
                details,
            ));
        }
        Ok(Outcome::succeeded(
            if stopped.is_empty() {
                "No task was running; nothing stopped.".to_owned()
            } else {
                format!(
                    "Stopped {}; resume scheduled at {resume_at}.",
                    stopped.join(", ")
                )
            },
            details,
        ))
    }

    async fn run_step(&self, ctx: &FixContext, step: &ScheduledStep) -> Result<String, FixError> {
        let action: ResumeAction = serde_json::from_value(step.action.clone()).map_err(|e| {
            FixError::UnknownStep(self.name(), format!("{}: {e}", step.description))
        })?;
        let by = format!("step {}", step.id);
        let mut resumed = Vec::new();
        let mut already = Vec::new();
        let mut failed = Vec::new();
        for task in &action.resume {
            let deadline = tokio::time::Instant::now() + ctx.tasks().state_timeout();
            let mut state = ctx.tasks().describe_patiently(task, deadline).await?;
            if state.is_running() {
                // Someone (or an earlier attempt of this step, or the sweeper) resumed it already.
                ctx.ledger()
                    .settle_job_resumes(step.job_id, task, "running again", &by)
                    .await?;
                already.push(task.clone());
                continue;
            }
            if state.status == STOPPING {
                state = ctx.tasks().wait_for(task, STOPPED).await?;
            }
            if state.is_failed() {
                // Not resumed blindly: the owed resume hands it to a human with DMS's reason.
                failed.push(task.clone());
                continue;
            }
            ctx.tasks().resume(task).await?;
            ctx.ledger()
                .settle_job_resumes(step.job_id, task, "resumed by the scheduled step", &by)
                .await?;
            resumed.push(task.clone());
        }
        Ok(format!(
            "Resumed {}{}{}.",
            if resumed.is_empty() {
                "none".to_owned()
            } else {
                resumed.join(", ")
            },
            if already.is_empty() {
                String::new()
            } else {
                format!("; already running: {}", already.join(", "))
            },
            if failed.is_empty() {
                String::new()
            } else {
                format!("; failed, left to a human: {}", failed.join(", "))
            }
        ))
    }
}

fn humanize(d: std::time::Duration) -> String {
    humantime_like(d.as_secs())
}

fn humantime_like(secs: u64) -> String {
    match (secs / 3600, secs % 3600 / 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m {s}s"),
        (h, m, _) => format!("{h}h {m}m"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_well() {
        assert_eq!(super::humantime_like(35 * 60), "35m");
        assert_eq!(super::humantime_like(3), "3s");
        assert_eq!(super::humantime_like(3725), "1h 2m");
    }
}
