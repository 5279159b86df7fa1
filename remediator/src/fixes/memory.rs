//! F2: stop and resume, one at a time, every task on a replication instance low on memory.
//! Never reboots the instance (a reboot lost data).

use dmsguard_pipeline::config::FixName;
use serde_json::json;

use super::{Fix, FixContext, FixError, Outcome, Plan, Restart};
use crate::ledger::Job;

pub struct MemoryFix;

impl MemoryFix {
    fn instance(job: &Job) -> Result<&str, FixError> {
        job.target
            .replication_instance
            .as_deref()
            .ok_or_else(|| FixError::Input("fix `memory` needs a replication_instance".into()))
    }

    /// The configured tasks on `instance`, in config order.
    fn tasks_on(ctx: &FixContext, instance: &str) -> Result<Vec<String>, FixError> {
        let tasks: Vec<String> = ctx
            .config()
            .tasks
            .iter()
            .filter(|t| t.replication_instance == instance)
            .map(|t| t.name.clone())
            .collect();
        if tasks.is_empty() {
            return Err(FixError::Input(format!(
                "no [[tasks]] entry runs on replication instance `{instance}`"
            )));
        }
        Ok(tasks)
    }
}

#[async_trait::async_trait]
impl Fix for MemoryFix {
    fn name(&self) -> FixName {
        FixName::Memory
    }

    async fn plan(&self, ctx: &FixContext, job: &Job) -> Result<Plan, FixError> {
        let instance = Self::instance(job)?;
        let tasks = Self::tasks_on(ctx, instance)?;
        let mut plan = Plan::new(format!(
            "Free memory on replication instance {instance}: restart its running tasks one at a time (no reboot)."
        ));
        for task in &tasks {
            let state = ctx.tasks().describe(task).await?;
            plan.facts.insert(task.clone(), json!(state.status));
            if state.is_running() {
                plan.step(format!("Stop task {task} and wait until it is stopped."));
                plan.step(format!(
                    "Resume task {task} (resume-processing) and wait until it is running."
                ));
            } else {
                plan.step(format!("Leave task {task} alone: it is {}.", state.status));
            }
        }
        plan.tasks = tasks;
        Ok(plan)
    }

    async fn execute(&self, ctx: &FixContext, job: &Job, plan: &Plan) -> Result<Outcome, FixError> {
        let instance = Self::instance(job)?;
        let mut restarted = Vec::new();
        let mut left_alone = Vec::new();
        for task in &plan.tasks {
            let state = ctx.tasks().describe(task).await?;
            if !state.is_running() {
                left_alone.push(json!({ "task": task, "status": state.status }));
                continue;
            }
            // The resume is owed from the stop on (ledger); see FixContext::stop_owing_resume.
            // One task at a time: a task not running again stops the fix here.
            match ctx.restart_task(job, task).await? {
                Restart::Resumed(_) => restarted.push(task.clone()),
                other => {
                    return Ok(other.outcome(
                        task,
                        &format!("Restarting the tasks on {instance}"),
                        json!({ "restarted": restarted, "left_alone": left_alone, "failed": task }),
                    ))
                }
            }
        }
        Ok(Outcome::succeeded(
            format!(
                "Restarted {} task(s) on {instance}: {}.",
                restarted.len(),
                if restarted.is_empty() {
                    "none running".to_owned()
                } else {
                    restarted.join(", ")
                }
            ),
            json!({ "restarted": restarted, "left_alone": left_alone }),
        ))
    }
}
