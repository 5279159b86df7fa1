//! The control plane in moto: the instance, endpoints and tasks in DMS, task status polling
//! (apply only while `running`; a stop and resume clears latched faults), and the CloudWatch
//! datapoints DMS publishes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use aws_sdk_databasemigration::types::{
    MigrationTypeValue, ReplicationEndpointTypeValue, ReplicationTask,
    StartReplicationTaskTypeValue,
};
use dmsguard_pipeline::aws::AwsClients;
use tokio::sync::watch;

use super::{lock, Fault, Shared, SimConfig, TaskRuntime};

/// CloudWatch namespace of DMS metrics.
pub const NAMESPACE: &str = "AWS/DMS";
/// Instance dimension name (instance metrics have only this one).
pub const INSTANCE_DIMENSION: &str = "ReplicationInstanceIdentifier";
/// Task dimension name; task metrics carry the instance dimension first, then this one.
pub const TASK_DIMENSION: &str = "ReplicationTaskIdentifier";
/// The replication instance class registered in moto.
pub const INSTANCE_CLASS: &str = "dms.t3.large";

/// Instance metric names.
pub const FREEABLE_MEMORY: &str = "FreeableMemory";
pub const AVAILABLE_MEMORY: &str = "AvailableMemory";
pub const SWAP_USAGE: &str = "SwapUsage";
/// Task metric names.
pub const CDC_LATENCY_SOURCE: &str = "CDCLatencySource";
pub const CDC_LATENCY_TARGET: &str = "CDCLatencyTarget";
pub const CDC_INCOMING_CHANGES: &str = "CDCIncomingChanges";

/// The task's resource identifier: the tail of its ARN (in moto, its name).
pub fn task_identifier(arn: &str) -> &str {
    arn.rsplit(':').next().unwrap_or(arn)
}

/// Dimensions of an instance metric.
pub fn instance_dimensions(instance: &str) -> Vec<Dimension> {
    vec![Dimension::builder()
        .name(INSTANCE_DIMENSION)
        .value(instance)
        .build()]
}

/// Dimensions of a task metric, in the order moto needs them when reading.
pub fn task_dimensions(instance: &str, task_identifier: &str) -> Vec<Dimension> {
    vec![
        Dimension::builder()
            .name(INSTANCE_DIMENSION)
            .value(instance)
            .build(),
        Dimension::builder()
            .name(TASK_DIMENSION)
            .value(task_identifier)
            .build(),
    ]
}

fn table_mappings(rt: &TaskRuntime) -> String {
    let rules: Vec<serde_json::Value> = rt
        .task
        .tables
        .iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::json!({
                "rule-type": "selection",
                "rule-id": (i + 1).to_string(),
                "rule-name": (i + 1).to_string(),
                "object-locator": {"schema-name": t.name.schema, "table-name": t.name.table},
                "rule-action": "include"
            })
        })
        .collect();
    serde_json::json!({ "rules": rules }).to_string()
}

fn task_date(t: &ReplicationTask) -> Option<f64> {
    t.replication_task_start_date().map(|d| d.as_secs_f64())
}

/// Creates (or finds) the instance, the two endpoints and the tasks in moto, and starts the
/// tasks that are not running when `config.start_tasks`.
pub(crate) async fn register(
    aws: &AwsClients,
    config: &SimConfig,
    tasks: &[Arc<TaskRuntime>],
) -> anyhow::Result<()> {
    let instances = aws
        .dms
        .describe_replication_instances()
        .send()
        .await
        .context("DescribeReplicationInstances")?;
    let existing = instances
        .replication_instances()
        .iter()
        .find(|i| i.replication_instance_identifier() == Some(config.instance.as_str()))
        .and_then(|i| i.replication_instance_arn().map(str::to_owned));
    let instance_arn = match existing {
        Some(arn) => arn,
        None => aws
            .dms
            .create_replication_instance()
            .replication_instance_identifier(&config.instance)
            .replication_instance_class(INSTANCE_CLASS)
            .send()
            .await
            .context("CreateReplicationInstance")?
            .replication_instance()
            .and_then(|i| i.replication_instance_arn())
            .context("CreateReplicationInstance returned no ARN")?
            .to_owned(),
    };
    let endpoints = aws
        .dms
        .describe_endpoints()
        .send()
        .await
        .map(|o| o.endpoints().to_vec())
        .unwrap_or_default();
    let mut arns = Vec::new();
    for (suffix, kind, engine) in [
        ("source", ReplicationEndpointTypeValue::Source, "postgres"),
        ("target", ReplicationEndpointTypeValue::Target, "redshift"),
    ] {
        let id = format!("{}-{suffix}", config.instance);
        let arn = match endpoints
            .iter()
            .find(|e| e.endpoint_identifier() == Some(id.as_str()))
            .and_then(|e| e.endpoint_arn())
        {
            Some(arn) => arn.to_owned(),
            None => aws
                .dms
                .create_endpoint()
                .endpoint_identifier(&id)
                .endpoint_type(kind)
                .engine_name(engine)
                .send()
                .await
                .context("CreateEndpoint")?
                .endpoint()
                .and_then(|e| e.endpoint_arn())
                .context("CreateEndpoint returned no ARN")?
                .to_owned(),
        };
        arns.push(arn);
    }
    let known = aws
        .dms
        .describe_replication_tasks()
        .send()
        .await
        .map(|o| o.replication_tasks().to_vec())
        .unwrap_or_default();
    for rt in tasks {
        let task = match known
            .iter()
            .find(|t| t.replication_task_identifier() == Some(rt.task.name.as_str()))
        {
            Some(t) => t.clone(),
            None => aws
                .dms
                .create_replication_task()
                .replication_task_identifier(&rt.task.name)
                .source_endpoint_arn(&arns[0])
                .target_endpoint_arn(&arns[1])
                .replication_instance_arn(&instance_arn)
                .migration_type(MigrationTypeValue::Cdc)
                .table_mappings(table_mappings(rt))
                .send()
                .await
                .context("CreateReplicationTask")?
                .replication_task()
                .cloned()
                .context("CreateReplicationTask returned no task")?,
        };
        let arn = task
            .replication_task_arn()
            .context("task without an ARN")?
            .to_owned();
        let mut status = task.status().unwrap_or("unknown").to_owned();
        let mut start_date = task_date(&task);
        if config.start_tasks && status != "running" {
            let kind = if start_date.is_none() {
                StartReplicationTaskTypeValue::StartReplication
            } else {
                StartReplicationTaskTypeValue::ResumeProcessing
            };
            let started = aws
                .dms
                .start_replication_task()
                .replication_task_arn(&arn)
                .start_replication_task_type(kind)
                .send()
                .await
                .context("StartReplicationTask")?;
            if let Some(t) = started.replication_task() {
                status = t.status().unwrap_or("running").to_owned();
                start_date = task_date(t);
            }
        }
        tracing::info!(task = %rt.task.name, %arn, %status, "Task registered in DMS.");
        *lock(&rt.arn) = Some(arn);
        *lock(&rt.seen_running) = status == "running";
        *lock(&rt.status) = status;
        *lock(&rt.start_date) = start_date;
    }
    Ok(())
}

/// Follows task status and pushes CloudWatch datapoints until `stopped`.
pub(crate) async fn run(
    shared: Arc<Shared>,
    aws: AwsClients,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut poll = tokio::time::interval(shared.config.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut push = tokio::time::interval(shared.config.metrics_interval);
    push.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_push = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stopped.changed() => return Ok(()),
            _ = poll.tick() => {
                if let Err(e) = poll_status(&shared, &aws).await {
                    tracing::warn!(error = %format!("{e:#}"), "Reading task status from DMS failed.");
                }
            }
            _ = push.tick() => {
                let dt = last_push.elapsed();
                last_push = tokio::time::Instant::now();
                leak(&shared, dt);
                if let Err(e) = push_metrics(&shared, &aws).await {
                    tracing::warn!(error = %format!("{e:#}"), "Pushing CloudWatch datapoints failed.");
                }
            }
        }
        if *stopped.borrow() {
            return Ok(());
        }
    }
}

async fn poll_status(shared: &Shared, aws: &AwsClients) -> anyhow::Result<()> {
    let out = aws
        .dms
        .describe_replication_tasks()
        .send()
        .await
        .context("DescribeReplicationTasks")?;
    for t in out.replication_tasks() {
        let Some(rt) = shared.tasks.iter().find(|rt| {
            lock(&rt.arn).as_deref() == t.replication_task_arn()
                || Some(rt.task.name.as_str()) == t.replication_task_identifier()
        }) else {
            continue;
        };
        let status = t.status().unwrap_or("unknown").to_owned();
        let start_date = task_date(t);
        let (was, was_started) = (lock(&rt.status).clone(), *lock(&rt.start_date));
        let first_run = status == "running" && !*lock(&rt.seen_running);
        if status == "running" {
            *lock(&rt.seen_running) = true;
        }
        // A task seen running again after another status (stopping, stopped, starting,
        // failed, …), or with a new start date, was stopped and resumed; the first time a task
        // that was starting runs is its start, not a restart.
        if status == "running" && !first_run && (was != "running" || was_started != start_date) {
            tracing::info!(task = %rt.task.name, "Task resumed in DMS.");
            rt.restarted();
        } else if status != was {
            tracing::info!(task = %rt.task.name, %status, "Task status changed in DMS.");
        }
        *lock(&rt.status) = status;
        *lock(&rt.start_date) = start_date;
    }
    Ok(())
}

/// Memory leaked by running tasks while `memory_leak` is set.
fn leak(shared: &Shared, dt: Duration) {
    if let Fault::MemoryLeak { bytes_per_second } = shared.fault() {
        for t in &shared.tasks {
            if *lock(&t.status) == "running" {
                *lock(&t.leaked_bytes) += bytes_per_second as f64 * dt.as_secs_f64();
            }
        }
    }
}

/// The instance's memory now: (freeable, available, swap) in bytes.
pub(crate) fn memory(shared: &Shared) -> (f64, f64, f64) {
    let m = shared.config.memory;
    let leaked: f64 = shared.tasks.iter().map(|t| *lock(&t.leaked_bytes)).sum();
    let freeable = (m.freeable_bytes - leaked).max(m.floor_bytes);
    let available = (m.available_bytes - leaked).max(m.floor_bytes);
    let swap = (leaked - (m.freeable_bytes - m.floor_bytes)).max(0.0);
    (freeable, available, swap)
}

fn datum(name: &str, dims: Vec<Dimension>, value: f64, unit: StandardUnit) -> MetricDatum {
    MetricDatum::builder()
        .metric_name(name)
        .set_dimensions(Some(dims))
        .value(value)
        .unit(unit)
        .timestamp(SystemTime::now().into())
        .build()
}

async fn push_metrics(shared: &Shared, aws: &AwsClients) -> anyhow::Result<()> {
    let instance = &shared.config.instance;
    let (freeable, available, swap) = memory(shared);
    let mut data = vec![
        datum(
            FREEABLE_MEMORY,
            instance_dimensions(instance),
            freeable,
            StandardUnit::Bytes,
        ),
        datum(
            AVAILABLE_MEMORY,
            instance_dimensions(instance),
            available,
            StandardUnit::Bytes,
        ),
        datum(
            SWAP_USAGE,
            instance_dimensions(instance),
            swap,
            StandardUnit::Bytes,
        ),
    ];
    let now = chrono::Utc::now();
    for t in &shared.tasks {
        // DMS publishes task metrics only while the task runs.
        if *lock(&t.status) != "running" {
            continue;
        }
        let Some(arn) = lock(&t.arn).clone() else {
            continue;
        };
        let dims = || task_dimensions(instance, task_identifier(&arn));
        let mut lag = lock(&t.lag).clone();
        let mut target_latency = match lag.oldest_pending {
            Some(oldest) if lag.pending > 0 => {
                (now - oldest).num_milliseconds().max(0) as f64 / 1000.0
            }
            // Nothing read and waiting: the oldest change not applied was committed after the
            // last batch was asked for (the slot is read again every `min_interval`, later
            // under load), so its age is at most the time since.
            _ => match lag.applied_through {
                Some(at) => (now - at).num_milliseconds().max(0) as f64 / 1000.0,
                None => lag.last_batch_latency,
            },
        };
        let blind = shared.config.latency_blind_after_resume;
        if lock(&t.resumed_at).is_some_and(|at| at.elapsed() < blind) {
            target_latency = 0.0;
            lag.source_latency = 0.0;
        }
        data.push(datum(
            CDC_LATENCY_SOURCE,
            dims(),
            lag.source_latency,
            StandardUnit::Seconds,
        ));
        data.push(datum(
            CDC_LATENCY_TARGET,
            dims(),
            target_latency,
            StandardUnit::Seconds,
        ));
        data.push(datum(
            CDC_INCOMING_CHANGES,
            dims(),
            lag.pending as f64,
            StandardUnit::Count,
        ));
    }
    aws.cloudwatch
        .put_metric_data()
        .namespace(NAMESPACE)
        .set_metric_data(Some(data))
        .send()
        .await
        .context("PutMetricData")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_identifier_is_the_arn_tail() {
        assert_eq!(
            task_identifier("arn:aws:dms:us-east-1:123456789012:task:lab-task"),
            "lab-task"
        );
        assert_eq!(task_identifier("plain"), "plain");
    }

    #[test]
    fn task_dimensions_put_the_instance_first() {
        let d = task_dimensions("i", "t");
        assert_eq!(d[0].name(), Some(INSTANCE_DIMENSION));
        assert_eq!(d[1].name(), Some(TASK_DIMENSION));
    }
}
