//! F5: restart (stop, then resume) a task that says running but applies nothing; a second
//! stall within the cooldown goes to a human instead of looping. The resume is owed in the
//! ledger from the moment the stop is sent; a task that failed (DMS `failed`, with its
//! `StopReason` and `LastFailureMessage`) is left to a human.

use dmsguard_pipeline::config::FixName;
use dmsguard_pipeline::dms_tasks::failure_text;
use serde_json::json;

use super::{
    configured_task, job_task, CooldownPolicy, Fix, FixContext, FixError, Outcome, Plan, Restart,
};
use crate::ledger::Job;

pub struct StalledTaskFix;

#[async_trait::async_trait]
impl Fix for StalledTaskFix {
    fn name(&self) -> FixName {
        FixName::StalledTask
    }

    fn on_cooldown(&self) -> CooldownPolicy {
        CooldownPolicy::Escalate
    }

    async fn plan(&self, ctx: &FixContext, job: &Job) -> Result<Plan, FixError> {
        let task = job_task(job)?;
        configured_task(ctx.config(), task)?;
        let state = ctx.tasks().describe(task).await?;
        let mut plan = Plan::new(format!("Restart stalled DMS task {task}."));
        plan.tasks.push(task.to_owned());
        plan.facts.insert("status".into(), json!(state.status));
        if state.is_running() {
            plan.step(format!("Stop task {task} and wait until it is stopped."));
            plan.step(format!(
                "Resume task {task} (resume-processing) and wait until it is running."
            ));
        } else if state.is_failed() {
            plan.summary = format!(
                "Task {task} failed: {}; not restarted, a human should look.",
                failure_text(
                    state.stop_reason.as_deref(),
                    state.last_failure_message.as_deref()
                )
            );
        } else {
            plan.summary = format!(
                "Task {task} is {}, not running: nothing to restart; a human should look.",
                state.status
            );
        }
        Ok(plan)
    }

    async fn execute(
        &self,
        ctx: &FixContext,
        job: &Job,
        _plan: &Plan,
    ) -> Result<Outcome, FixError> {
        let task = job_task(job)?;
        // Re-read under the lock: the plan may be stale.
        let state = ctx.tasks().describe(task).await?;
        if state.is_failed() {
            // A failed task does not apply: DMS says why (StopReason, LastFailureMessage,
            // https://docs.aws.amazon.com/dms/latest/APIReference/API_ReplicationTask.html).
            // A restart would not fix what failed it; a human must look, told the reason.
            return Ok(Outcome::needs_human(
                format!(
                    "Task {task} failed: {}; not restarted, left as it is.",
                    failure_text(
                        state.stop_reason.as_deref(),
                        state.last_failure_message.as_deref()
                    )
                ),
                json!({
                    "task": task,
                    "status": state.status,
                    "stop_reason": state.stop_reason,
                    "last_failure_message": state.last_failure_message,
                }),
            ));
        }
        if !state.is_running() {
            return Ok(Outcome::needs_human(
                format!(
                    "Task {task} is {}, not running; left as it is.",
                    state.status
                ),
                json!({ "task": task, "status": state.status }),
            ));
        }
        // The resume is owed from the stop on (ledger); see FixContext::stop_owing_resume.
        match ctx.restart_task(job, task).await? {
            Restart::Resumed(resumed) => Ok(Outcome::succeeded(
                format!("Restarted task {task}."),
                json!({ "task": task, "restarted": true, "status": resumed.status }),
            )),
            other => Ok(other.outcome(task, "Restart", json!({ "task": task }))),
        }
    }
}
