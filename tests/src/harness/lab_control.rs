//! Typed client of the lab-only control endpoint `tests/lab/moto_launcher.py` puts in front of
//! moto (`/dmsguard-lab/…`): how long DMS stops and starts take, tasks that fail, throttled
//! operations, the Redshift maintenance schedule, and Redshift Serverless workgroups with the
//! `GetCredentials` logins handed out for them. See `tests/lab/README.md`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `StopReason` of a task that failed for good (a documented value of `ReplicationTask.StopReason`,
/// <https://docs.aws.amazon.com/dms/latest/APIReference/API_ReplicationTask.html>).
pub const STOP_REASON_FATAL: &str = "Stop Reason FATAL_ERROR";
/// `StopReason` of a task DMS may recover by itself.
pub const STOP_REASON_RECOVERABLE: &str = "Stop Reason RECOVERABLE_ERROR";

/// The operations the lab can throttle with the names AWS gives them.
pub const DESCRIBE_REPLICATION_TASKS: &str = "DescribeReplicationTasks";
pub const GET_METRIC_DATA: &str = "GetMetricData";
pub const DESCRIBE_CLUSTERS: &str = "DescribeClusters";

/// When a task fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailWhen {
    /// At once, whatever it is doing.
    Now,
    /// At the end of its next stop (`stopping` then `failed` instead of `stopped`).
    OnStop,
}

/// How long a throttling burst lasts: a number of calls, a time, or whichever ends first.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Burst {
    pub calls: Option<u32>,
    pub duration: Option<Duration>,
}

/// One deferred maintenance window of a cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct DeferredWindow {
    pub id: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// What the control endpoint reports.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct LabControlState {
    pub stop_seconds: f64,
    pub start_seconds: f64,
    /// Calls answered with a throttling error, by operation.
    #[serde(default)]
    pub throttled: BTreeMap<String, u64>,
    /// Task status by identifier, as DescribeReplicationTasks would report it now.
    #[serde(default)]
    pub tasks: BTreeMap<String, String>,
}

/// One Redshift Serverless `GetCredentials` answer the lab gave.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerlessLogin {
    pub workgroup_name: String,
    /// The `dbName` the caller asked for, if any.
    pub db_name: Option<String>,
    pub db_user: String,
    pub db_password: String,
    /// Epoch seconds.
    pub expiration: f64,
}

/// The control endpoint of one moto (`Moto::url()`).
#[derive(Debug, Clone)]
pub struct LabControl {
    base: String,
    http: reqwest::Client,
}

impl LabControl {
    /// The controls of the moto at `moto_url` (started by `tests/lab/moto_launcher.py`).
    pub fn new(moto_url: &str) -> Self {
        Self {
            base: format!("{}/dmsguard-lab", moto_url.trim_end_matches('/')),
            http: reqwest::Client::new(),
        }
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}/{path}", self.base);
        let response = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status();
        let answer: serde_json::Value = response
            .json()
            .await
            .with_context(|| format!("POST {url}"))?;
        anyhow::ensure!(status.is_success(), "POST {url}: {status}: {answer}");
        Ok(answer)
    }

    /// How long StopReplicationTask stays `stopping` and StartReplicationTask `starting`
    /// (zero: at once, moto's own behaviour and the default).
    pub async fn set_dms_timing(&self, stop: Duration, start: Duration) -> anyhow::Result<()> {
        self.post(
            "dms/timing",
            serde_json::json!({ "stop_seconds": stop.as_secs_f64(), "start_seconds": start.as_secs_f64() }),
        )
        .await?;
        Ok(())
    }

    /// Makes task `task` (its identifier) fail: status `failed` with `stop_reason` and
    /// `message` as `StopReason` and `LastFailureMessage`.
    pub async fn fail_task(
        &self,
        task: &str,
        when: FailWhen,
        stop_reason: &str,
        message: &str,
    ) -> anyhow::Result<()> {
        let when = match when {
            FailWhen::Now => "now",
            FailWhen::OnStop => "on_stop",
        };
        self.post(
            "dms/fail",
            serde_json::json!({ "task": task, "when": when, "stop_reason": stop_reason, "message": message }),
        )
        .await?;
        Ok(())
    }

    /// Answers `operations` with HTTP 400 `ThrottlingException` "Rate exceeded" for `burst`.
    pub async fn throttle(&self, operations: &[&str], burst: Burst) -> anyhow::Result<()> {
        self.post(
            "throttle",
            serde_json::json!({
                "operations": operations,
                "calls": burst.calls,
                "seconds": burst.duration.map(|d| d.as_secs_f64()),
            }),
        )
        .await?;
        Ok(())
    }

    /// Sets what DescribeClusters reports for `cluster`: `next_start` as
    /// `NextMaintenanceWindowStartTime` (`None`: the field is absent) and `deferred` as
    /// `DeferredMaintenanceWindows`. Without this call a cluster reports the next start of its
    /// preferred window and no deferred window.
    pub async fn set_maintenance(
        &self,
        cluster: &str,
        next_start: Option<DateTime<Utc>>,
        deferred: &[DeferredWindow],
    ) -> anyhow::Result<()> {
        let deferred: Vec<serde_json::Value> = deferred
            .iter()
            .map(|d| {
                serde_json::json!({ "id": d.id, "start": d.start.to_rfc3339(), "end": d.end.to_rfc3339() })
            })
            .collect();
        self.post(
            "redshift/maintenance",
            serde_json::json!({
                "cluster": cluster,
                "next_start": next_start.map(|t| t.to_rfc3339()),
                "deferred": deferred,
            }),
        )
        .await?;
        Ok(())
    }

    /// Creates the Redshift Serverless workgroup `name`: `GetCredentials` answers for it (moto
    /// has no Redshift Serverless; the launcher serves that one call).
    pub async fn create_workgroup(&self, name: &str) -> anyhow::Result<()> {
        self.post(
            "redshift-serverless/workgroup",
            serde_json::json!({ "name": name }),
        )
        .await?;
        Ok(())
    }

    /// Every `GetCredentials` answer so far, oldest first.
    pub async fn serverless_logins(&self) -> anyhow::Result<Vec<ServerlessLogin>> {
        #[derive(Deserialize)]
        struct Answer {
            credentials: Vec<ServerlessLogin>,
        }
        let url = format!("{}/redshift-serverless/credentials", self.base);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?
            .error_for_status()?;
        Ok(response.json::<Answer>().await?.credentials)
    }

    /// Back to moto's instant behaviour: no delays, failures, throttling or schedules.
    pub async fn reset(&self) -> anyhow::Result<()> {
        self.post("reset", serde_json::json!({})).await?;
        Ok(())
    }

    /// The current settings, throttled-call counts and task statuses.
    pub async fn state(&self) -> anyhow::Result<LabControlState> {
        let url = format!("{}/state", self.base);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?
            .error_for_status()?;
        Ok(response.json().await?)
    }
}
