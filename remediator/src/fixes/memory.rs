//! F2: stop and resume, one at a time, every task on a replication instance low on memory.
//! Never reboots the instance (a reboot lost data). The fix reads the instance's freeable
//! memory again and acts only below `remediator.memory_threshold_bytes`, the threshold the
//! alert rule reads too (the exporter exports it): an alert that outlived the leak, or a
//! threshold changed since, restarts nothing.

use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::primitives::DateTime as AwsDateTime;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat, ScanBy};
use dmsguard_pipeline::config::FixName;
use dmsguard_pipeline::frontier::{INSTANCE_DIMENSION, NAMESPACE};
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

    /// The instance's latest `FreeableMemory` (CloudWatch, `Minimum` over the frontier's
    /// period, within the last 15 minutes), if CloudWatch has a datapoint.
    async fn freeable_memory(ctx: &FixContext, instance: &str) -> Result<Option<f64>, FixError> {
        let now = SystemTime::now();
        let metric = Metric::builder()
            .namespace(NAMESPACE)
            .metric_name("FreeableMemory")
            .dimensions(
                Dimension::builder()
                    .name(INSTANCE_DIMENSION)
                    .value(instance)
                    .build(),
            )
            .build();
        let out = ctx
            .aws()
            .cloudwatch
            .get_metric_data()
            .start_time(AwsDateTime::from(now - Duration::from_secs(15 * 60)))
            .end_time(AwsDateTime::from(now + Duration::from_secs(60)))
            .scan_by(ScanBy::TimestampDescending)
            .metric_data_queries(
                MetricDataQuery::builder()
                    .id("freeable")
                    .metric_stat(
                        MetricStat::builder()
                            .metric(metric)
                            .period(ctx.config().frontier.period_seconds())
                            .stat("Minimum")
                            .build(),
                    )
                    .return_data(true)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                FixError::Input(format!(
                    "GetMetricData for FreeableMemory of {instance} failed: {}",
                    dmsguard_pipeline::report::error_chain(&e)
                ))
            })?;
        Ok(out
            .metric_data_results()
            .iter()
            .flat_map(|r| r.timestamps().iter().zip(r.values()))
            .max_by_key(|(t, _)| (t.secs(), t.subsec_nanos()))
            .map(|(_, v)| *v))
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
        let threshold = ctx.config().remediator.memory_threshold_bytes as f64;
        let freeable = Self::freeable_memory(ctx, instance).await?;
        if let Some(freeable) = freeable.filter(|f| *f >= threshold) {
            return Ok(Outcome::succeeded(
                format!(
                    "Freeable memory on {instance} is {freeable:.0} B, not below the threshold {threshold:.0} B: nothing restarted."
                ),
                json!({ "restarted": [], "freeable_bytes": freeable, "threshold_bytes": threshold }),
            ));
        }
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
            json!({
                "restarted": restarted,
                "left_alone": left_alone,
                "freeable_bytes": freeable,
                "threshold_bytes": threshold,
            }),
        ))
    }
}
