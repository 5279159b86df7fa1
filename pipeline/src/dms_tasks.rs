//! DMS replication task operations the fixes share: resolve by name, stop, resume, wait for a state.

use std::time::Duration;

use aws_sdk_databasemigration::error::DisplayErrorContext;
use aws_sdk_databasemigration::types::{Filter, StartReplicationTaskTypeValue};
use aws_sdk_databasemigration::Client;

/// The DMS task status meaning "applying changes".
pub const RUNNING: &str = "running";
/// The DMS task status meaning "stopped, resumable".
pub const STOPPED: &str = "stopped";

/// Why a task operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DmsTaskError {
    #[error("DMS task `{0}` not found")]
    NotFound(String),
    #[error("DMS {operation} for task `{task}` failed: {message}")]
    Api {
        operation: &'static str,
        task: String,
        message: String,
    },
    #[error(
        "DMS task `{task}` did not reach `{wanted}` within {timeout:?} (last status `{last}`)"
    )]
    Timeout {
        task: String,
        wanted: String,
        last: String,
        timeout: Duration,
    },
}

/// One task as `DescribeReplicationTasks` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    /// The task identifier (the `task` label).
    pub name: String,
    pub arn: String,
    /// DMS status: `running`, `stopped`, `starting`, `stopping`, `failed`, …
    pub status: String,
}

impl TaskState {
    pub fn is_running(&self) -> bool {
        self.status == RUNNING
    }

    pub fn is_stopped(&self) -> bool {
        self.status == STOPPED
    }
}

/// Task operations over one DMS client, waiting for states by polling with a deadline.
#[derive(Debug, Clone)]
pub struct DmsTasks {
    client: Client,
    /// How long a stop or resume may take to reach its state.
    state_timeout: Duration,
    /// Time between two status polls while waiting.
    poll_interval: Duration,
}

impl DmsTasks {
    pub fn new(client: Client, state_timeout: Duration) -> Self {
        Self {
            client,
            state_timeout,
            poll_interval: Duration::from_secs(2),
        }
    }

    /// Polls more often (tests against a local stand-in where states change at once).
    pub fn with_poll_interval(mut self, poll_interval: Duration) -> Self {
        self.poll_interval = poll_interval;
        self
    }

    /// Describes the task whose identifier is `name`.
    pub async fn describe(&self, name: &str) -> Result<TaskState, DmsTaskError> {
        let filter = Filter::builder()
            .name("replication-task-id")
            .values(name)
            .build()
            .map_err(|e| self.api_error("DescribeReplicationTasks", name, e.to_string()))?;
        let out = self
            .client
            .describe_replication_tasks()
            .filters(filter)
            .without_settings(true)
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                // AWS answers ResourceNotFoundFault when the filter matches nothing.
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_fault())
                {
                    return Err(DmsTaskError::NotFound(name.to_owned()));
                }
                return Err(self.api_error(
                    "DescribeReplicationTasks",
                    name,
                    DisplayErrorContext(&e).to_string(),
                ));
            }
        };
        out.replication_tasks()
            .iter()
            .find(|t| t.replication_task_identifier() == Some(name))
            .map(|t| TaskState {
                name: name.to_owned(),
                arn: t.replication_task_arn().unwrap_or_default().to_owned(),
                status: t.status().unwrap_or_default().to_owned(),
            })
            .ok_or_else(|| DmsTaskError::NotFound(name.to_owned()))
    }

    /// Stops a running task and waits until it is `stopped`.
    pub async fn stop(&self, name: &str) -> Result<TaskState, DmsTaskError> {
        let task = self.describe(name).await?;
        tracing::info!(task = name, status = %task.status, "Stopping DMS task.");
        self.client
            .stop_replication_task()
            .replication_task_arn(&task.arn)
            .send()
            .await
            .map_err(|e| {
                self.api_error(
                    "StopReplicationTask",
                    name,
                    DisplayErrorContext(&e).to_string(),
                )
            })?;
        self.wait_for(name, STOPPED).await
    }

    /// Resumes a stopped task with `resume-processing` and waits until it is `running`.
    pub async fn resume(&self, name: &str) -> Result<TaskState, DmsTaskError> {
        let task = self.describe(name).await?;
        tracing::info!(task = name, status = %task.status, "Resuming DMS task.");
        self.client
            .start_replication_task()
            .replication_task_arn(&task.arn)
            .start_replication_task_type(StartReplicationTaskTypeValue::ResumeProcessing)
            .send()
            .await
            .map_err(|e| {
                self.api_error(
                    "StartReplicationTask",
                    name,
                    DisplayErrorContext(&e).to_string(),
                )
            })?;
        self.wait_for(name, RUNNING).await
    }

    /// Polls the task until its status is `wanted`, or fails after the state timeout.
    pub async fn wait_for(&self, name: &str, wanted: &str) -> Result<TaskState, DmsTaskError> {
        let deadline = tokio::time::Instant::now() + self.state_timeout;
        loop {
            let task = self.describe(name).await?;
            if task.status == wanted {
                return Ok(task);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DmsTaskError::Timeout {
                    task: name.to_owned(),
                    wanted: wanted.to_owned(),
                    last: task.status,
                    timeout: self.state_timeout,
                });
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }

    fn api_error(&self, operation: &'static str, task: &str, message: String) -> DmsTaskError {
        DmsTaskError::Api {
            operation,
            task: task.to_owned(),
            message,
        }
    }
}
