//! F3: before Redshift maintenance, stop every running task and schedule their resume at stop
//! time + `maintenance_hold` in the ledger; resume exactly the tasks stopped here, leaving tasks
//! someone else had stopped alone. The resume survives restarts (it is a ledger step).

use chrono::Utc;
use dmsguard_pipeline::config::FixName;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Fix, FixContext, FixError, Outcome, Plan};
use crate::ledger::{Job, NewStep, ScheduledStep};

pub struct MaintenanceFix;

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
        let hold = ctx.config().remediator.maintenance_hold;
        let mut plan = Plan::new(format!(
            "Stop every running task before Redshift maintenance; resume them {} after the stop.",
            humanize(hold)
        ));
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
                "Schedule in the ledger: at stop time + {}, resume {} (resume-processing).",
                humanize(hold),
                to_stop.join(", ")
            ));
        }
        plan.tasks = ctx.config().tasks.iter().map(|t| t.name.clone()).collect();
        Ok(plan)
    }

    async fn execute(&self, ctx: &FixContext, job: &Job, plan: &Plan) -> Result<Outcome, FixError> {
        let mut stopped = Vec::new();
        let mut left_alone = Vec::new();
        let mut failure = None;
        for task in &plan.tasks {
            let state = match ctx.tasks().describe(task).await {
                Ok(state) => state,
                Err(error) => {
                    failure = Some((task.clone(), error));
                    break;
                }
            };
            if !state.is_running() {
                left_alone.push(json!({ "task": task, "status": state.status }));
                continue;
            }
            match ctx.tasks().stop(task).await {
                Ok(_) => stopped.push(task.clone()),
                Err(error) => {
                    failure = Some((task.clone(), error));
                    break;
                }
            }
        }
        // Whatever happened, the tasks stopped here must come back: schedule their resume.
        let resume_at = Utc::now()
            + chrono::Duration::from_std(ctx.config().remediator.maintenance_hold)
                .unwrap_or(chrono::Duration::MAX);
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
            "left_alone": left_alone,
            "resume_at": step.map(|_| resume_at),
            "resume_step": step,
        });
        if let Some((task, error)) = failure {
            let error = dmsguard_pipeline::report::error_chain(&error);
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
        let mut resumed = Vec::new();
        let mut already = Vec::new();
        for task in &action.resume {
            let state = ctx.tasks().describe(task).await?;
            if state.is_running() {
                // Someone (or an earlier attempt of this step) resumed it already.
                already.push(task.clone());
                continue;
            }
            ctx.tasks().resume(task).await?;
            resumed.push(task.clone());
        }
        Ok(format!(
            "Resumed {}{}.",
            if resumed.is_empty() {
                "none".to_owned()
            } else {
                resumed.join(", ")
            },
            if already.is_empty() {
                String::new()
            } else {
                format!("; already running: {}", already.join(", "))
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
