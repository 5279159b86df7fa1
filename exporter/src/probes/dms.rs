//! Reads task and instance state from the DMS API: the task status state set, start time,
//! stop reason and last failure message, and each replication instance's status.

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_databasemigration::types::{ReplicationInstance, ReplicationTask};
use dmsguard_pipeline::config::Config;

use super::{Probe, ProbeError};
use crate::metrics::{
    DmsMetrics, InstanceStatusLabels, ProbeName, TaskLabels, TaskStatus, TaskStatusLabels,
    TaskStopLabels,
};

/// Records per describe page.
const PAGE_RECORDS: i32 = 100;
/// Longest stop reason / failure message kept as a label value.
const MAX_MESSAGE_CHARS: usize = 200;

/// The resource id of a DMS ARN: its last `:`-separated part (what CloudWatch dimensions use).
pub fn resource_id(arn: &str) -> &str {
    arn.rsplit(':').next().unwrap_or(arn)
}

/// Every replication task (all pages), without their settings documents.
pub async fn describe_tasks(
    dms: &aws_sdk_databasemigration::Client,
) -> Result<Vec<ReplicationTask>, ProbeError> {
    let mut tasks = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let out = dms
            .describe_replication_tasks()
            .without_settings(true)
            .max_records(PAGE_RECORDS)
            .set_marker(marker.take())
            .send()
            .await
            .map_err(|e| ProbeError::aws("DescribeReplicationTasks", e))?;
        tasks.extend(out.replication_tasks().iter().cloned());
        match out.marker() {
            Some(m) if !m.is_empty() => marker = Some(m.to_owned()),
            _ => return Ok(tasks),
        }
    }
}

/// Every replication instance (all pages).
pub async fn describe_instances(
    dms: &aws_sdk_databasemigration::Client,
) -> Result<Vec<ReplicationInstance>, ProbeError> {
    let mut instances = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let out = dms
            .describe_replication_instances()
            .max_records(PAGE_RECORDS)
            .set_marker(marker.take())
            .send()
            .await
            .map_err(|e| ProbeError::aws("DescribeReplicationInstances", e))?;
        instances.extend(out.replication_instances().iter().cloned());
        match out.marker() {
            Some(m) if !m.is_empty() => marker = Some(m.to_owned()),
            _ => return Ok(instances),
        }
    }
}

/// The DMS probe and the info label sets it last exported (to remove them when they change).
pub struct DmsProbe {
    config: Arc<Config>,
    dms: aws_sdk_databasemigration::Client,
    stop_info: HashMap<String, TaskStopLabels>,
    instance_info: HashMap<String, InstanceStatusLabels>,
    metrics: DmsMetrics,
}

impl DmsProbe {
    pub fn new(
        config: Arc<Config>,
        dms: aws_sdk_databasemigration::Client,
        metrics: DmsMetrics,
    ) -> Self {
        Self {
            config,
            dms,
            stop_info: HashMap::new(),
            instance_info: HashMap::new(),
            metrics,
        }
    }

    fn export_task(&mut self, name: &str, task: Option<&ReplicationTask>) {
        let raw = task.and_then(|t| t.status()).unwrap_or("");
        let status = TaskStatus::parse(raw);
        if status.is_none() && task.is_some() {
            tracing::debug!(task = name, status = raw, "Unknown DMS task status.");
        }
        for s in TaskStatus::ALL {
            self.metrics
                .task_status
                .get_or_create(&TaskStatusLabels {
                    task: name.to_owned(),
                    status: s,
                })
                .set(i64::from(status == Some(s)));
        }
        let labels = TaskLabels {
            task: name.to_owned(),
        };
        match task.and_then(|t| t.replication_task_start_date()) {
            Some(t) => {
                self.metrics
                    .task_start_time
                    .get_or_create(&labels)
                    .set(t.secs() as f64 + f64::from(t.subsec_nanos()) / 1e9);
            }
            None => {
                self.metrics.task_start_time.remove(&labels);
            }
        }
        let info = task.and_then(|t| {
            let stop = t.stop_reason().unwrap_or("");
            let failure = t.last_failure_message().unwrap_or("");
            (!stop.is_empty() || !failure.is_empty()).then(|| TaskStopLabels {
                task: name.to_owned(),
                stop_reason: clip(stop),
                last_failure_message: clip(failure),
            })
        });
        let previous = self.stop_info.get(name);
        if previous != info.as_ref() {
            if let Some(old) = previous {
                self.metrics.task_stop_info.remove(old);
            }
            match info {
                Some(new) => {
                    self.metrics.task_stop_info.get_or_create(&new).set(1);
                    self.stop_info.insert(name.to_owned(), new);
                }
                None => {
                    self.stop_info.remove(name);
                }
            }
        }
    }

    fn export_instance(&mut self, name: &str, instance: Option<&ReplicationInstance>) {
        let info = instance.map(|i| InstanceStatusLabels {
            replication_instance: name.to_owned(),
            status: clip(i.replication_instance_status().unwrap_or("unknown")),
        });
        let previous = self.instance_info.get(name);
        if previous != info.as_ref() {
            if let Some(old) = previous {
                self.metrics.instance_status.remove(old);
            }
            match info {
                Some(new) => {
                    self.metrics.instance_status.get_or_create(&new).set(1);
                    self.instance_info.insert(name.to_owned(), new);
                }
                None => {
                    self.instance_info.remove(name);
                }
            }
        }
    }
}

impl Probe for DmsProbe {
    fn name(&self) -> ProbeName {
        ProbeName::Dms
    }

    async fn refresh(&mut self) -> Result<(), ProbeError> {
        let tasks = describe_tasks(&self.dms).await?;
        let instances = describe_instances(&self.dms).await?;
        let config = self.config.clone();
        for task in &config.tasks {
            let found = tasks
                .iter()
                .find(|t| t.replication_task_identifier() == Some(task.name.as_str()));
            self.export_task(&task.name, found);
        }
        let mut names: Vec<&str> = config
            .tasks
            .iter()
            .map(|t| t.replication_instance.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let found = instances
                .iter()
                .find(|i| i.replication_instance_identifier() == Some(name));
            self.export_instance(name, found);
        }
        Ok(())
    }
}

fn clip(s: &str) -> String {
    s.chars().take(MAX_MESSAGE_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_id_is_the_arn_tail() {
        assert_eq!(
            resource_id("arn:aws:dms:us-east-1:123456789012:task:ABCDEFG123"),
            "ABCDEFG123"
        );
        assert_eq!(resource_id("plain"), "plain");
    }
}
