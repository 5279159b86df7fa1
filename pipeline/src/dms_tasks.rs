//! DMS replication task operations the fixes share: resolve by name, stop, resume, wait for a state.

use std::time::Duration;

use aws_sdk_databasemigration::config::http::HttpResponse;
use aws_sdk_databasemigration::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_databasemigration::types::{Filter, StartReplicationTaskTypeValue};
use aws_sdk_databasemigration::Client;

/// The DMS task status meaning "applying changes".
pub const RUNNING: &str = "running";
/// The DMS task status meaning "stopped, resumable".
pub const STOPPED: &str = "stopped";

/// The DMS task status meaning "stopping, not yet stopped" (StopReplicationTask is asynchronous).
pub const STOPPING: &str = "stopping";
/// The DMS task status meaning "starting, not yet running".
pub const STARTING: &str = "starting";
/// The DMS task status of a task that failed; `StopReason` and `LastFailureMessage` say why.
pub const FAILED: &str = "failed";

/// Error codes AWS answers when a caller is throttled or the service is briefly unavailable:
/// worth retrying with backoff. ThrottlingException is DMS's (Common Errors,
/// <https://docs.aws.amazon.com/dms/latest/APIReference/CommonErrors.html>); the others are the
/// codes the AWS SDKs' standard retry mode treats as transient
/// (<https://docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html>).
pub const TRANSIENT_ERROR_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "ProvisionedThroughputExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
    "InternalFailure",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeoutException",
];

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
        /// Throttling, a 5xx, a timeout or a connection failure: the same call may succeed later.
        transient: bool,
    },
    #[error(
        "DMS task `{task}` did not reach `{wanted}` within {timeout:?} (last status `{last}`{})",
        last_error.as_deref().map(|e| format!("; last error: {e}")).unwrap_or_default()
    )]
    Timeout {
        task: String,
        wanted: String,
        last: String,
        timeout: Duration,
        /// The last transient error met while polling, if any.
        last_error: Option<String>,
    },
    #[error(
        "DMS task `{task}` failed while waiting for `{wanted}`: {}",
        failure_text(stop_reason.as_deref(), message.as_deref())
    )]
    Failed {
        task: String,
        wanted: String,
        stop_reason: Option<String>,
        message: Option<String>,
    },
}

/// "StopReason: LastFailureMessage", with what is missing said so.
pub fn failure_text(stop_reason: Option<&str>, message: Option<&str>) -> String {
    format!(
        "{} ({})",
        message.unwrap_or("no LastFailureMessage"),
        stop_reason.unwrap_or("no StopReason")
    )
}

impl DmsTaskError {
    /// Whether trying again later may succeed (throttling, a 5xx, a timeout, a task still
    /// `stopping`), as opposed to a task that failed, is gone, or refused the call for good.
    pub fn is_transient(&self) -> bool {
        match self {
            DmsTaskError::Api { transient, .. } => *transient,
            DmsTaskError::Timeout { .. } => true,
            DmsTaskError::NotFound(_) | DmsTaskError::Failed { .. } => false,
        }
    }
}

/// Whether an SDK error is worth retrying: throttling and server-side error codes, a 5xx,
/// timeouts and connection failures.
/// (Every AWS SDK crate re-exports the same `SdkError`, so this serves CloudWatch and Redshift
/// errors too.)
pub fn is_transient_sdk_error<E>(error: &SdkError<E, HttpResponse>) -> bool
where
    E: ProvideErrorMetadata,
{
    match error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(service) => {
            service
                .err()
                .code()
                .is_some_and(|code| TRANSIENT_ERROR_CODES.contains(&code))
                || service.raw().status().is_server_error()
        }
        _ => false,
    }
}

/// One task as `DescribeReplicationTasks` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    /// The task identifier (the `task` label).
    pub name: String,
    pub arn: String,
    /// DMS status: `running`, `stopped`, `starting`, `stopping`, `failed`, …
    pub status: String,
    /// `StopReason` (e.g. "Stop Reason FATAL_ERROR"), when DMS gives one.
    pub stop_reason: Option<String>,
    /// `LastFailureMessage`, when DMS gives one.
    pub last_failure_message: Option<String>,
}

impl TaskState {
    pub fn is_running(&self) -> bool {
        self.status == RUNNING
    }

    pub fn is_stopped(&self) -> bool {
        self.status == STOPPED
    }

    pub fn is_failed(&self) -> bool {
        self.status == FAILED
    }
}

/// Task operations over one DMS client, waiting for states by polling with a deadline.
///
/// StopReplicationTask and StartReplicationTask are asynchronous: the task goes `stopping` or
/// `starting` first and may take minutes to get where it was sent
/// (<https://docs.aws.amazon.com/dms/latest/APIReference/API_StopReplicationTask.html>,
/// <https://docs.aws.amazon.com/dms/latest/APIReference/API_ReplicationTask.html>). Waits retry
/// transient errors (throttling after the SDK's own retries, 5xx, timeouts) with exponential
/// backoff until the deadline, and end at once when the task turns `failed`.
#[derive(Debug, Clone)]
pub struct DmsTasks {
    client: Client,
    /// How long a stop or resume may take to reach its state.
    state_timeout: Duration,
    /// Time between two status polls while waiting; also the first backoff after an error.
    poll_interval: Duration,
    /// The longest backoff between two attempts after transient errors.
    max_backoff: Duration,
}

impl DmsTasks {
    pub fn new(client: Client, state_timeout: Duration) -> Self {
        Self {
            client,
            state_timeout,
            poll_interval: Duration::from_secs(2),
            max_backoff: Duration::from_secs(30),
        }
    }

    /// Polls more often (tests against a local stand-in where states change at once).
    pub fn with_poll_interval(mut self, poll_interval: Duration) -> Self {
        self.poll_interval = poll_interval;
        self.max_backoff = self.max_backoff.min(poll_interval * 16).max(poll_interval);
        self
    }

    /// Waits (and retries transient errors) at most `state_timeout`.
    pub fn with_state_timeout(mut self, state_timeout: Duration) -> Self {
        self.state_timeout = state_timeout;
        self
    }

    /// How long a stop or resume may take to reach its state.
    pub fn state_timeout(&self) -> Duration {
        self.state_timeout
    }

    /// Describes the task whose identifier is `name` (one call, no retry).
    pub async fn describe(&self, name: &str) -> Result<TaskState, DmsTaskError> {
        let filter = Filter::builder()
            .name("replication-task-id")
            .values(name)
            .build()
            .map_err(|e| self.api_error("DescribeReplicationTasks", name, e.to_string(), false))?;
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
                    is_transient_sdk_error(&e),
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
                stop_reason: t.stop_reason().map(str::to_owned),
                last_failure_message: t.last_failure_message().map(str::to_owned),
            })
            .ok_or_else(|| DmsTaskError::NotFound(name.to_owned()))
    }

    /// Describes the task, retrying transient errors with backoff until `deadline`.
    pub async fn describe_patiently(
        &self,
        name: &str,
        deadline: tokio::time::Instant,
    ) -> Result<TaskState, DmsTaskError> {
        self.retrying(deadline, || self.describe(name)).await
    }

    /// Runs `call` until it succeeds, fails for good, or `deadline` passes; transient errors
    /// wait `poll_interval`, then twice that, … up to `max_backoff`.
    async fn retrying<T, F, Fut>(
        &self,
        deadline: tokio::time::Instant,
        mut call: F,
    ) -> Result<T, DmsTaskError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, DmsTaskError>>,
    {
        let mut backoff = self.poll_interval;
        loop {
            match call().await {
                Err(
                    error @ DmsTaskError::Api {
                        transient: true, ..
                    },
                ) if tokio::time::Instant::now() + backoff < deadline => {
                    tracing::warn!(%error, retry_in = ?backoff, "Transient DMS error; retrying.");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.max_backoff);
                }
                other => return other,
            }
        }
    }

    /// Sends StopReplicationTask (retrying transient errors), without waiting for `stopped`.
    /// Returns the state DMS answered with (normally `stopping`).
    pub async fn send_stop(&self, name: &str) -> Result<TaskState, DmsTaskError> {
        let deadline = tokio::time::Instant::now() + self.state_timeout;
        let task = self.describe_patiently(name, deadline).await?;
        tracing::info!(task = name, status = %task.status, "Stopping DMS task.");
        self.retrying(deadline, || async {
            let out = self
                .client
                .stop_replication_task()
                .replication_task_arn(&task.arn)
                .send()
                .await
                .map_err(|e| {
                    self.api_error(
                        "StopReplicationTask",
                        name,
                        DisplayErrorContext(&e).to_string(),
                        is_transient_sdk_error(&e),
                    )
                })?;
            Ok(TaskState {
                status: out
                    .replication_task()
                    .and_then(|t| t.status())
                    .unwrap_or(STOPPING)
                    .to_owned(),
                ..task.clone()
            })
        })
        .await
    }

    /// Sends StartReplicationTask with `resume-processing` (retrying transient errors), without
    /// waiting for `running`. DMS accepts it only from `stopped` or `failed`
    /// (InvalidResourceStateFault otherwise).
    pub async fn send_resume(&self, name: &str) -> Result<TaskState, DmsTaskError> {
        let deadline = tokio::time::Instant::now() + self.state_timeout;
        let task = self.describe_patiently(name, deadline).await?;
        tracing::info!(task = name, status = %task.status, "Resuming DMS task.");
        self.retrying(deadline, || async {
            let out = self
                .client
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
                        is_transient_sdk_error(&e),
                    )
                })?;
            Ok(TaskState {
                status: out
                    .replication_task()
                    .and_then(|t| t.status())
                    .unwrap_or(STARTING)
                    .to_owned(),
                ..task.clone()
            })
        })
        .await
    }

    /// Stops a running task and waits until it is `stopped`.
    pub async fn stop(&self, name: &str) -> Result<TaskState, DmsTaskError> {
        self.send_stop(name).await?;
        self.wait_for(name, STOPPED).await
    }

    /// Resumes a stopped task with `resume-processing` and waits until it is `running`.
    pub async fn resume(&self, name: &str) -> Result<TaskState, DmsTaskError> {
        self.send_resume(name).await?;
        self.wait_for(name, RUNNING).await
    }

    /// Polls the task until its status is `wanted`. Transient errors are retried with backoff;
    /// `failed` ends the wait at once (with `StopReason` and `LastFailureMessage`); the state
    /// timeout ends it with the last status seen.
    pub async fn wait_for(&self, name: &str, wanted: &str) -> Result<TaskState, DmsTaskError> {
        let deadline = tokio::time::Instant::now() + self.state_timeout;
        let mut last = "unknown".to_owned();
        let mut last_error: Option<String> = None;
        let mut backoff = self.poll_interval;
        loop {
            match self.describe(name).await {
                Ok(task) if task.status == wanted => return Ok(task),
                Ok(task) if task.is_failed() => {
                    return Err(DmsTaskError::Failed {
                        task: name.to_owned(),
                        wanted: wanted.to_owned(),
                        stop_reason: task.stop_reason,
                        message: task.last_failure_message,
                    })
                }
                Ok(task) => {
                    last = task.status;
                    backoff = self.poll_interval;
                }
                Err(error) if error.is_transient() => {
                    tracing::warn!(task = name, %error, retry_in = ?backoff, "Transient DMS error while waiting; retrying.");
                    last_error = Some(error.to_string());
                    backoff = (backoff * 2).min(self.max_backoff);
                }
                Err(error) => return Err(error),
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(DmsTaskError::Timeout {
                    task: name.to_owned(),
                    wanted: wanted.to_owned(),
                    last,
                    timeout: self.state_timeout,
                    last_error,
                });
            }
            let pause = if last_error.is_some() {
                backoff / 2
            } else {
                self.poll_interval
            };
            tokio::time::sleep(pause.min(deadline - now)).await;
        }
    }

    fn api_error(
        &self,
        operation: &'static str,
        task: &str,
        message: String,
        transient: bool,
    ) -> DmsTaskError {
        DmsTaskError::Api {
            operation,
            task: task.to_owned(),
            message,
            transient,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_and_timeouts_read_well() {
        let failed = DmsTaskError::Failed {
            task: "t1".into(),
            wanted: STOPPED.into(),
            stop_reason: Some("Stop Reason FATAL_ERROR".into()),
            message: Some("Last Error Replication task out of memory.".into()),
        };
        assert_eq!(
            failed.to_string(),
            "DMS task `t1` failed while waiting for `stopped`: Last Error Replication task out of memory. (Stop Reason FATAL_ERROR)"
        );
        assert!(!failed.is_transient());
        let timeout = DmsTaskError::Timeout {
            task: "t1".into(),
            wanted: STOPPED.into(),
            last: STOPPING.into(),
            timeout: Duration::from_secs(5),
            last_error: Some("Rate exceeded".into()),
        };
        assert!(timeout
            .to_string()
            .contains("last status `stopping`; last error: Rate exceeded"));
        assert!(timeout.is_transient());
    }
}
