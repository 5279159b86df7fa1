//! The replication frontier: which source rows DMS must have applied by now, derived from
//! replication progress (the task's target latency), never from the target table's own ids.
//!
//! A quiet table whose newest rows DMS dropped has a newest target id below them; a frontier
//! taken from that id would call those rows "in flight" for ever. Progress instead says: every
//! source change committed before instant `P` has been applied in Redshift. Ids are monotonic,
//! so when the source's newest id was `m` at instant `t`, and `P` has passed `t` plus a margin
//! (for write transactions still open at `t`), every id up to `m` is settled: absent in the
//! target means missing, not late.
//!
//! `P` comes from CloudWatch's `CDCLatencyTarget` for the table's task (AWS DMS User Guide,
//! "Monitoring AWS DMS tasks", replication task metrics: the gap in seconds between the oldest
//! change waiting to be committed on the target and the replication instance's clock). The
//! documentation does not say how the value is sampled within a period, so a datapoint is read
//! with the `Maximum` statistic and bounds progress from below at the start of its period:
//! `P >= period_start - max_latency`. When no datapoint is known (no task, CloudWatch down,
//! task stopped: DMS publishes task metrics only while it runs), `fallback_latency` applies.
//! Both the margin and the fallback are configurable because no AWS document fixes them.
//!
//! Right after a task (re)starts, its latency is not evidence of progress: the documentation
//! does not say what DMS publishes before the backlog built while the task was stopped
//! reaches the target (nothing is then "waiting to be committed on the target", so a low
//! value is plausible while DMS is minutes behind). A datapoint therefore counts only when
//! all of it predates the task's latest `ReplicationTaskStartDate` (DescribeReplicationTasks,
//! read after the datapoint was fetched, so a restart cannot slip in between) or its period
//! starts `restart_settle` after the task ran again. Progress then stays where it was before
//! the stop until the restarted task's latency means something again.
//!
//! When the task ran again is not the start date: `StartReplicationTask` leaves the task
//! `starting` for minutes (`Status` in
//! <https://docs.aws.amazon.com/dms/latest/APIReference/API_ReplicationTask.html>), and the
//! reference calls `ReplicationTaskStartDate` only "the date the replication task is scheduled
//! to start". DMS publishes task metrics only while the task runs, so the first latency period
//! after the start date that holds a datapoint is when it ran again
//! ([`FrontierConfig::running_since`]); the settle time counts from there.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use aws_sdk_cloudwatch::primitives::DateTime as AwsDateTime;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat, ScanBy};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::aws::AwsClients;
use crate::config::TaskConfig;

/// CloudWatch namespace of DMS metrics.
pub const NAMESPACE: &str = "AWS/DMS";
/// Dimension naming the replication instance (first, as DMS publishes it).
pub const INSTANCE_DIMENSION: &str = "ReplicationInstanceIdentifier";
/// Dimension naming the task by its resource id (the tail of its ARN).
pub const TASK_DIMENSION: &str = "ReplicationTaskIdentifier";
/// The task metric progress is read from.
pub const CDC_LATENCY_TARGET: &str = "CDCLatencyTarget";
/// The statistic progress is read with (see the module docs).
pub const LATENCY_STATISTIC: &str = "Maximum";

/// `[frontier]`: how dmsguard decides that a source row must have reached Redshift.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontierConfig {
    /// The longest a write transaction on a replicated table stays open: an id allocated
    /// before an instant may commit this much later. Rows are judged only once replication
    /// has passed the instant they were seen plus this margin.
    #[serde(default = "default_margin", with = "humantime_serde")]
    pub margin: Duration,
    /// Replication latency assumed for a table whose task has no `CDCLatencyTarget` datapoint
    /// (no `task` configured, CloudWatch unreachable, or the task not running).
    #[serde(default = "default_fallback_latency", with = "humantime_serde")]
    pub fallback_latency: Duration,
    /// How long the `missing_rows` fix waits for replication to pass the moment it read the
    /// source before it gives up (the job fails and names the progress it saw).
    #[serde(default = "default_wait", with = "humantime_serde")]
    pub wait: Duration,
    /// Aggregation period of the CloudWatch queries (DMS metrics are standard resolution:
    /// a multiple of 60 s on AWS).
    #[serde(default = "default_period", with = "humantime_serde")]
    pub cloudwatch_period: Duration,
    /// After a task (re)starts, how long its `CDCLatencyTarget` says nothing about progress
    /// (see the module docs): datapoints of periods starting earlier are ignored.
    #[serde(default = "default_restart_settle", with = "humantime_serde")]
    pub restart_settle: Duration,
}

fn default_margin() -> Duration {
    Duration::from_secs(60)
}
fn default_fallback_latency() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_wait() -> Duration {
    Duration::from_secs(10 * 60)
}
fn default_period() -> Duration {
    Duration::from_secs(60)
}
fn default_restart_settle() -> Duration {
    Duration::from_secs(5 * 60)
}

impl Default for FrontierConfig {
    fn default() -> Self {
        Self {
            margin: default_margin(),
            fallback_latency: default_fallback_latency(),
            wait: default_wait(),
            cloudwatch_period: default_period(),
            restart_settle: default_restart_settle(),
        }
    }
}

impl FrontierConfig {
    /// The CloudWatch period in whole seconds (at least 1).
    pub fn period_seconds(&self) -> i32 {
        i32::try_from(self.cloudwatch_period.as_secs().max(1)).unwrap_or(60)
    }

    /// Progress when only the fallback is known: `now - fallback_latency`.
    pub fn fallback_progress(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - chrono::Duration::from_std(self.fallback_latency).unwrap_or(chrono::Duration::MAX)
    }

    /// Whether a latency datapoint of the period starting at `period_start`, fetched at
    /// `fetched_at`, is evidence of progress for a task whose latest (re)start is `started`
    /// (as DescribeReplicationTasks reported it after the fetch) and which published again
    /// from `running_since` ([`FrontierConfig::running_since`]; None: not known yet): all of
    /// it before that start, or its period starting `restart_settle` after the task ran again.
    pub fn trusted(
        &self,
        period_start: DateTime<Utc>,
        fetched_at: DateTime<Utc>,
        started: Option<DateTime<Utc>>,
        running_since: Option<DateTime<Utc>>,
    ) -> bool {
        let Some(started) = started else {
            return true;
        };
        let last_sample = (period_start + self.period()).min(fetched_at);
        if last_sample <= started {
            return true;
        }
        // Unknown: this datapoint is the first after the start, so the task runs from it.
        let ran_again = running_since.unwrap_or(period_start).max(started);
        let settle =
            chrono::Duration::from_std(self.restart_settle).unwrap_or(chrono::Duration::MAX);
        ran_again
            .checked_add_signed(settle)
            .is_some_and(|settled| period_start >= settled)
    }

    /// When a task started at `started` ran again: the earliest of `period_starts` (latency
    /// datapoints' periods) that ends after `started`. DMS publishes task metrics only while
    /// the task runs, and a start takes a while (`starting`), so this may be well after
    /// `started`.
    pub fn running_since(
        &self,
        started: DateTime<Utc>,
        period_starts: impl IntoIterator<Item = DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        period_starts
            .into_iter()
            .filter(|p| *p + self.period() > started)
            .min()
    }

    fn period(&self) -> chrono::Duration {
        chrono::Duration::seconds(i64::from(self.period_seconds()))
    }

    /// Whether a source read at `seen` is settled once replication reached `progress`.
    pub fn settled(&self, seen: DateTime<Utc>, progress: DateTime<Utc>) -> bool {
        let margin = chrono::Duration::from_std(self.margin).unwrap_or(chrono::Duration::MAX);
        seen.checked_add_signed(margin)
            .is_some_and(|needed| needed <= progress)
    }
}

/// The lower bound on progress a latency datapoint gives: every change committed before
/// `period_start - max_latency` was applied by the end of the period.
pub fn progress_from_datapoint(
    period_start: DateTime<Utc>,
    max_latency_seconds: f64,
) -> DateTime<Utc> {
    let millis = (max_latency_seconds.max(0.0) * 1000.0).ceil();
    let latency = if millis.is_finite() && millis < i64::MAX as f64 {
        chrono::Duration::milliseconds(millis as i64)
    } else {
        chrono::Duration::MAX
    };
    period_start
        .checked_sub_signed(latency)
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Replication progress per task, shared by the probe that reads it and those that use it.
#[derive(Debug, Default, Clone)]
pub struct ProgressBoard {
    inner: std::sync::Arc<std::sync::Mutex<HashMap<String, DateTime<Utc>>>>,
}

impl ProgressBoard {
    /// Records `progress` for `task`; progress never goes back.
    pub fn record(&self, task: &str, progress: DateTime<Utc>) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(task.to_owned()).or_insert(progress);
        if progress > *entry {
            *entry = progress;
        }
    }

    /// The latest progress known for `task`.
    pub fn get(&self, task: &str) -> Option<DateTime<Utc>> {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.get(task).copied()
    }
}

/// The source's newest id as sampled over time, for one table: the frontier is the newest
/// sample that replication has passed.
#[derive(Debug, Default, Clone)]
pub struct IdSamples {
    samples: VecDeque<(DateTime<Utc>, i64)>,
}

/// Samples kept per table; older ones are merged away (the newest settled sample is kept).
const MAX_SAMPLES: usize = 4096;

impl IdSamples {
    /// Records that the source's newest id was `max_id` at `at`.
    pub fn record(&mut self, at: DateTime<Utc>, max_id: i64) {
        if self.samples.back().is_some_and(|(_, m)| *m == max_id) {
            // The same id seen later says nothing new: keep the earliest sighting.
            return;
        }
        self.samples.push_back((at, max_id));
        if self.samples.len() > MAX_SAMPLES {
            self.samples.remove(MAX_SAMPLES / 2);
        }
    }

    /// The newest id settled once replication reached `progress`: the id of the newest
    /// sample `config.settled` accepts. Older samples are dropped.
    pub fn frontier(&mut self, config: &FrontierConfig, progress: DateTime<Utc>) -> Option<i64> {
        let settled = self
            .samples
            .iter()
            .rposition(|(seen, _)| config.settled(*seen, progress))?;
        self.samples.drain(..settled);
        self.samples.front().map(|(_, id)| *id)
    }
}

/// Errors reading progress from the AWS APIs.
#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    #[error("{call} failed: {cause}")]
    Aws { call: &'static str, cause: String },
    #[error("task `{0}` is not known to DMS")]
    UnknownTask(String),
}

fn aws_error<E: std::error::Error + 'static>(call: &'static str, err: E) -> ProgressError {
    let mut cause = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        cause.push_str(": ");
        cause.push_str(&s.to_string());
        source = s.source();
    }
    ProgressError::Aws { call, cause }
}

/// The task's resource id (the tail of its ARN), the `ReplicationTaskIdentifier` dimension
/// CloudWatch publishes task metrics under.
pub async fn task_resource_id(aws: &AwsClients, task: &str) -> Result<String, ProgressError> {
    let (resource, _) = describe_task(aws, task).await?;
    Ok(resource)
}

/// The task's resource id and its latest `ReplicationTaskStartDate`.
async fn describe_task(
    aws: &AwsClients,
    task: &str,
) -> Result<(String, Option<DateTime<Utc>>), ProgressError> {
    let out = aws
        .dms
        .describe_replication_tasks()
        .filters(
            aws_sdk_databasemigration::types::Filter::builder()
                .name("replication-task-id")
                .values(task)
                .build()
                .map_err(|e| aws_error("DescribeReplicationTasks", e))?,
        )
        .send()
        .await
        .map_err(|e| aws_error("DescribeReplicationTasks", e))?;
    let found = out
        .replication_tasks()
        .iter()
        .find(|t| t.replication_task_identifier() == Some(task));
    let resource = found
        .and_then(|t| t.replication_task_arn())
        .and_then(|arn| arn.rsplit(':').next())
        .map(str::to_owned)
        .ok_or_else(|| ProgressError::UnknownTask(task.to_owned()))?;
    let started = found
        .and_then(|t| t.replication_task_start_date())
        .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos()));
    Ok((resource, started))
}

/// The task's progress from its `CDCLatencyTarget` datapoints within `window`, if any: the
/// furthest any datapoint [`FrontierConfig::trusted`] accepts proves.
pub async fn task_progress(
    aws: &AwsClients,
    config: &FrontierConfig,
    task: &TaskConfig,
    window: Duration,
) -> Result<Option<DateTime<Utc>>, ProgressError> {
    let resource = task_resource_id(aws, &task.name).await?;
    let now = std::time::SystemTime::now();
    let dim = |name: &str, value: &str| Dimension::builder().name(name).value(value).build();
    let metric = Metric::builder()
        .namespace(NAMESPACE)
        .metric_name(CDC_LATENCY_TARGET)
        .dimensions(dim(INSTANCE_DIMENSION, &task.replication_instance))
        .dimensions(dim(TASK_DIMENSION, &resource))
        .build();
    let out = aws
        .cloudwatch
        .get_metric_data()
        .start_time(AwsDateTime::from(now - window))
        .end_time(AwsDateTime::from(now + Duration::from_secs(60)))
        .scan_by(ScanBy::TimestampDescending)
        .metric_data_queries(
            MetricDataQuery::builder()
                .id("progress")
                .metric_stat(
                    MetricStat::builder()
                        .metric(metric)
                        .period(config.period_seconds())
                        .stat(LATENCY_STATISTIC)
                        .build(),
                )
                .return_data(true)
                .build(),
        )
        .send()
        .await
        .map_err(|e| aws_error("GetMetricData", e))?;
    let fetched_at = Utc::now();
    // The start date read after the fetch: a restart before it is known.
    let (_, started) = describe_task(aws, &task.name).await?;
    let points: Vec<(DateTime<Utc>, f64)> = out
        .metric_data_results()
        .iter()
        .flat_map(|r| r.timestamps().iter().zip(r.values()))
        .filter_map(|(t, v)| {
            Some((
                DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos())?,
                *v,
            ))
        })
        .collect();
    let running_since =
        started.and_then(|s| config.running_since(s, points.iter().map(|(p, _)| *p)));
    let progress = points
        .iter()
        .filter(|(start, _)| config.trusted(*start, fetched_at, started, running_since))
        .map(|(start, v)| progress_from_datapoint(*start, *v))
        .max();
    Ok(progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + s, 0).expect("a valid instant")
    }

    fn config(margin: u64) -> FrontierConfig {
        FrontierConfig {
            margin: Duration::from_secs(margin),
            ..FrontierConfig::default()
        }
    }

    #[test]
    fn a_datapoint_bounds_progress_at_its_period_start() {
        assert_eq!(progress_from_datapoint(at(100), 7.0), at(93));
        assert_eq!(progress_from_datapoint(at(100), 0.0), at(100));
        // Sub-second latencies round up: progress is a lower bound.
        assert_eq!(
            progress_from_datapoint(at(100), 0.0011),
            at(100) - chrono::Duration::milliseconds(2)
        );
        assert_eq!(progress_from_datapoint(at(100), -3.0), at(100));
        assert_eq!(
            progress_from_datapoint(at(100), f64::INFINITY),
            DateTime::<Utc>::MIN_UTC
        );
    }

    #[test]
    fn no_sample_is_settled_before_progress_passes_it_plus_the_margin() {
        let mut s = IdSamples::default();
        s.record(at(0), 10);
        s.record(at(10), 20);
        s.record(at(20), 30);
        let c = config(5);
        assert_eq!(s.frontier(&c, at(4)), None);
        assert_eq!(s.frontier(&c, at(5)), Some(10));
        assert_eq!(s.frontier(&c, at(14)), Some(10));
        assert_eq!(s.frontier(&c, at(15)), Some(20));
        assert_eq!(s.frontier(&c, at(1000)), Some(30));
        // Progress read from another datapoint may be older: the frontier never goes back
        // below the samples kept, and the newest settled one stays.
        assert_eq!(s.frontier(&c, at(1000)), Some(30));
    }

    #[test]
    fn a_quiet_table_settles_on_its_last_id() {
        // The last rows were written, then nothing: the newest sample stays the frontier even
        // though the target may never hold that id (DMS dropped it).
        let mut s = IdSamples::default();
        s.record(at(0), 500);
        for t in 1..100 {
            s.record(at(t), 500);
        }
        assert_eq!(s.frontier(&config(60), at(59)), None);
        assert_eq!(s.frontier(&config(60), at(60)), Some(500));
    }

    #[test]
    fn samples_stay_bounded() {
        let mut s = IdSamples::default();
        for t in 0..(3 * MAX_SAMPLES as i64) {
            s.record(at(t), t);
        }
        assert!(s.samples.len() <= MAX_SAMPLES);
        let newest = 3 * MAX_SAMPLES as i64 - 1;
        assert_eq!(s.frontier(&config(0), at(newest)), Some(newest));
    }

    #[test]
    fn progress_only_moves_forward() {
        let b = ProgressBoard::default();
        assert_eq!(b.get("t"), None);
        b.record("t", at(10));
        b.record("t", at(5));
        assert_eq!(b.get("t"), Some(at(10)));
        b.record("t", at(11));
        assert_eq!(b.get("t"), Some(at(11)));
    }

    #[test]
    fn a_restart_hides_latency_until_it_settles() {
        let c = FrontierConfig {
            cloudwatch_period: Duration::from_secs(60),
            restart_settle: Duration::from_secs(300),
            ..FrontierConfig::default()
        };
        let started = Some(at(1000));
        let running = Some(at(1000));
        // No start known: every datapoint counts.
        assert!(c.trusted(at(990), at(2000), None, None));
        // Wholly before the restart (period ended, or fetched, by then).
        assert!(c.trusted(at(940), at(2000), started, running));
        assert!(c.trusted(at(990), at(1000), started, running));
        // Straddling the restart or within the settle time after it.
        assert!(!c.trusted(at(941), at(2000), started, running));
        assert!(!c.trusted(at(1000), at(2000), started, running));
        assert!(!c.trusted(at(1299), at(2000), started, running));
        // Once settled.
        assert!(c.trusted(at(1300), at(2000), started, running));
        // The first datapoint after a start is never trusted by itself.
        assert!(!c.trusted(at(5000), at(6000), started, None));
    }

    #[test]
    fn the_settle_time_counts_from_when_a_slow_start_ran() {
        // Asked to start at 1000, `starting` for 10 minutes: the first datapoint after the
        // start date is the period at 1560 (DMS publishes only while the task runs).
        let c = FrontierConfig {
            cloudwatch_period: Duration::from_secs(60),
            restart_settle: Duration::from_secs(300),
            ..FrontierConfig::default()
        };
        let started = at(1000);
        let periods = [at(880), at(940), at(1560), at(1620), at(1860)];
        // The period at 940 ended at 1000: before the start.
        assert_eq!(c.running_since(started, periods), Some(at(1560)));
        assert_eq!(c.running_since(started, [at(880), at(940)]), None);
        let running = c.running_since(started, periods);
        // 300 s after the start date is still within the settle time of the task's run.
        assert!(!c.trusted(at(1300), at(3000), Some(started), running));
        assert!(!c.trusted(at(1620), at(3000), Some(started), running));
        assert!(!c.trusted(at(1859), at(3000), Some(started), running));
        assert!(c.trusted(at(1860), at(3000), Some(started), running));
        // Before the start, as before.
        assert!(c.trusted(at(880), at(3000), Some(started), running));
    }

    #[test]
    fn settled_needs_the_margin() {
        let c = config(30);
        assert!(!c.settled(at(0), at(29)));
        assert!(c.settled(at(0), at(30)));
        assert_eq!(c.fallback_progress(at(10_000)), at(10_000 - 900));
    }
}
