//! Reads instance memory and task CDC metrics from CloudWatch with one batched GetMetricData
//! per refresh, and exports each latest value with its datapoint's age.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat, ScanBy};
use dmsguard_pipeline::config::Config;
use dmsguard_pipeline::frontier::{progress_from_datapoint, ProgressBoard, LATENCY_STATISTIC};

use super::dms::{describe_tasks, resource_id};
use super::{Probe, ProbeError};
use crate::metrics::{
    CloudWatchMetric, CloudWatchMetrics, DatapointLabels, InstanceLabels, ProbeName, TaskLabels,
};

/// The DMS namespace and dimensions, shared with the frontier's progress reads.
pub use dmsguard_pipeline::frontier::{INSTANCE_DIMENSION, NAMESPACE, TASK_DIMENSION};
/// GetMetricData accepts at most this many queries per request.
const MAX_QUERIES_PER_REQUEST: usize = 500;

/// What one query of the batch reads.
#[derive(Debug, Clone)]
enum Target {
    Instance {
        instance: String,
        metric: CloudWatchMetric,
    },
    Task {
        task: String,
        metric: CloudWatchMetric,
    },
}

impl Target {
    fn metric(&self) -> CloudWatchMetric {
        match self {
            Target::Instance { metric, .. } | Target::Task { metric, .. } => *metric,
        }
    }

    fn resource(&self) -> &str {
        match self {
            Target::Instance { instance, .. } => instance,
            Target::Task { task, .. } => task,
        }
    }
}

/// The CloudWatch probe, with its cache of task name -> resource id.
pub struct CloudWatchProbe {
    config: Arc<Config>,
    cloudwatch: aws_sdk_cloudwatch::Client,
    dms: aws_sdk_databasemigration::Client,
    resource_ids: HashMap<String, String>,
    metrics: CloudWatchMetrics,
    progress: ProgressBoard,
    /// Per task, its latest start date and the earliest latency period seen after it: when
    /// the task ran again (`FrontierConfig::running_since`).
    running_since: HashMap<String, (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)>,
}

impl CloudWatchProbe {
    pub fn new(
        config: Arc<Config>,
        cloudwatch: aws_sdk_cloudwatch::Client,
        dms: aws_sdk_databasemigration::Client,
        metrics: CloudWatchMetrics,
        progress: ProgressBoard,
    ) -> Self {
        Self {
            config,
            cloudwatch,
            dms,
            resource_ids: HashMap::new(),
            metrics,
            progress,
            running_since: HashMap::new(),
        }
    }

    /// Fills the resource id cache for configured tasks not in it yet (one describe call).
    async fn resolve_task_ids(&mut self) -> Result<(), ProbeError> {
        if self
            .config
            .tasks
            .iter()
            .all(|t| self.resource_ids.contains_key(&t.name))
        {
            return Ok(());
        }
        for task in describe_tasks(&self.dms).await? {
            if let (Some(name), Some(arn)) = (
                task.replication_task_identifier(),
                task.replication_task_arn(),
            ) {
                if self.config.task(name).is_some() {
                    self.resource_ids
                        .insert(name.to_owned(), resource_id(arn).to_owned());
                }
            }
        }
        Ok(())
    }

    /// The batch: three memory metrics per instance, three CDC metrics per resolved task.
    fn targets(&self) -> Vec<(Target, Metric)> {
        let mut instances: Vec<&str> = self
            .config
            .tasks
            .iter()
            .map(|t| t.replication_instance.as_str())
            .collect();
        instances.sort_unstable();
        instances.dedup();
        let mut out = Vec::new();
        for instance in instances {
            for metric in CloudWatchMetric::INSTANCE {
                out.push((
                    Target::Instance {
                        instance: instance.to_owned(),
                        metric,
                    },
                    cw_metric(metric, vec![dimension(INSTANCE_DIMENSION, instance)]),
                ));
            }
        }
        for task in &self.config.tasks {
            let Some(id) = self.resource_ids.get(&task.name) else {
                continue;
            };
            for metric in CloudWatchMetric::TASK {
                out.push((
                    Target::Task {
                        task: task.name.clone(),
                        metric,
                    },
                    cw_metric(
                        metric,
                        vec![
                            dimension(INSTANCE_DIMENSION, &task.replication_instance),
                            dimension(TASK_DIMENSION, id),
                        ],
                    ),
                ));
            }
        }
        out
    }

    /// The latest (timestamp, value) per query id, over every page of the batch.
    async fn fetch(
        &self,
        queries: &[(Target, Metric)],
    ) -> Result<HashMap<String, (DateTime, f64)>, ProbeError> {
        let now = SystemTime::now();
        let start = now - self.config.exporter.cloudwatch_window;
        let mut latest: HashMap<String, (DateTime, f64)> = HashMap::new();
        let mut offset = 0;
        for chunk in queries.chunks(MAX_QUERIES_PER_REQUEST) {
            let data_queries: Vec<MetricDataQuery> = chunk
                .iter()
                .enumerate()
                .map(|(i, (target, metric))| {
                    MetricDataQuery::builder()
                        .id(query_id(offset + i))
                        .metric_stat(
                            MetricStat::builder()
                                .metric(metric.clone())
                                .period(self.config.frontier.period_seconds())
                                .stat(statistic(target.metric()))
                                .build(),
                        )
                        .return_data(true)
                        .build()
                })
                .collect();
            offset += chunk.len();
            let mut token: Option<String> = None;
            loop {
                let out = self
                    .cloudwatch
                    .get_metric_data()
                    .start_time(DateTime::from(start))
                    .end_time(DateTime::from(now + Duration::from_secs(60)))
                    .scan_by(ScanBy::TimestampDescending)
                    .set_metric_data_queries(Some(data_queries.clone()))
                    .set_next_token(token.take())
                    .send()
                    .await
                    .map_err(|e| ProbeError::aws("GetMetricData", e))?;
                for result in out.metric_data_results() {
                    let Some(id) = result.id() else { continue };
                    let newest = result
                        .timestamps()
                        .iter()
                        .zip(result.values())
                        .max_by_key(|(t, _)| (t.secs(), t.subsec_nanos()));
                    if let Some((t, v)) = newest {
                        let entry = latest.entry(id.to_owned()).or_insert((*t, *v));
                        if (t.secs(), t.subsec_nanos()) > (entry.0.secs(), entry.0.subsec_nanos()) {
                            *entry = (*t, *v);
                        }
                    }
                }
                match out.next_token() {
                    Some(next) if !next.is_empty() => token = Some(next.to_owned()),
                    _ => break,
                }
            }
        }
        Ok(latest)
    }

    fn export(
        &mut self,
        targets: &[(Target, Metric)],
        latest: &HashMap<String, (DateTime, f64)>,
        starts: Option<&TaskStarts>,
    ) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        for (i, (target, _)) in targets.iter().enumerate() {
            let age_labels = DatapointLabels {
                metric: target.metric(),
                resource: target.resource().to_owned(),
            };
            let point = latest.get(&query_id(i));
            match target {
                Target::Instance { instance, metric } => {
                    let labels = InstanceLabels {
                        replication_instance: instance.clone(),
                    };
                    if let Some(family) = self.metrics.instance_family(*metric) {
                        match point {
                            Some((_, v)) => {
                                family.get_or_create(&labels).set(*v);
                            }
                            None => {
                                family.remove(&labels);
                            }
                        }
                    }
                }
                Target::Task { task, metric } => {
                    if let (CloudWatchMetric::CdcLatencyTarget, Some((t, v)), Some(starts)) =
                        (metric, point, starts)
                    {
                        let started = starts.started.get(task).copied().flatten();
                        if let Some(start) =
                            chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())
                        {
                            // Whether DMS publishes latency while a task is `starting` is not
                            // documented: only a running task's datapoints date its run.
                            let is_running = starts.running.contains(task.as_str());
                            let running_since = started.filter(|_| is_running).and_then(|s| {
                                let frontier = &self.config.frontier;
                                let seen = match self.running_since.get(task) {
                                    Some((known, first)) if *known == s => Some(*first),
                                    _ => None,
                                };
                                let first =
                                    frontier.running_since(s, seen.into_iter().chain([start]))?;
                                self.running_since.insert(task.clone(), (s, first));
                                Some(first)
                            });
                            if self.config.frontier.trusted(
                                start,
                                starts.fetched_at,
                                started,
                                running_since,
                            ) {
                                self.progress
                                    .record(task, progress_from_datapoint(start, *v));
                            } else {
                                tracing::debug!(task, "Latency datapoint within the restart settle time: not progress.");
                            }
                        }
                    }
                    let labels = TaskLabels { task: task.clone() };
                    if let Some(family) = self.metrics.task_family(*metric) {
                        match point {
                            Some((_, v)) => {
                                family.get_or_create(&labels).set(*v);
                            }
                            None => {
                                family.remove(&labels);
                            }
                        }
                    }
                }
            }
            match point {
                Some((t, _)) => {
                    let at = t.secs() as f64 + f64::from(t.subsec_nanos()) / 1e9;
                    self.metrics
                        .datapoint_age
                        .get_or_create(&age_labels)
                        .set((now - at).max(0.0));
                }
                None => {
                    self.metrics.datapoint_age.remove(&age_labels);
                }
            }
        }
    }
}

/// Each task's latest `ReplicationTaskStartDate`, read after the datapoints were fetched.
struct TaskStarts {
    fetched_at: chrono::DateTime<chrono::Utc>,
    started: HashMap<String, Option<chrono::DateTime<chrono::Utc>>>,
    /// The tasks DescribeReplicationTasks reported `running`.
    running: std::collections::HashSet<String>,
}

impl Probe for CloudWatchProbe {
    fn name(&self) -> ProbeName {
        ProbeName::Cloudwatch
    }

    async fn refresh(&mut self) -> Result<(), ProbeError> {
        self.resolve_task_ids().await?;
        let targets = self.targets();
        if targets.is_empty() {
            return Ok(());
        }
        let latest = self.fetch(&targets).await?;
        let fetched_at = chrono::Utc::now();
        // Start dates read after the fetch, so a restart before it is known (see
        // `FrontierConfig::trusted`). Without them no datapoint counts as progress this time.
        let starts = match describe_tasks(&self.dms).await {
            Ok(tasks) => Some(TaskStarts {
                fetched_at,
                started: tasks
                    .iter()
                    .filter_map(|t| {
                        let name = t.replication_task_identifier()?;
                        let start = t.replication_task_start_date().and_then(|d| {
                            chrono::DateTime::from_timestamp(d.secs(), d.subsec_nanos())
                        });
                        Some((name.to_owned(), start))
                    })
                    .collect(),
                running: tasks
                    .iter()
                    .filter(|t| t.status() == Some("running"))
                    .filter_map(|t| t.replication_task_identifier().map(str::to_owned))
                    .collect(),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "Task start dates unknown: progress not updated.");
                None
            }
        };
        self.export(&targets, &latest, starts.as_ref());
        Ok(())
    }
}

/// The statistic a metric is read with: target latency with the frontier's (the worst of the
/// period, see `dmsguard_pipeline::frontier`), the others averaged.
fn statistic(metric: CloudWatchMetric) -> &'static str {
    match metric {
        CloudWatchMetric::CdcLatencyTarget => LATENCY_STATISTIC,
        _ => "Average",
    }
}

fn query_id(i: usize) -> String {
    format!("m{i}")
}

fn dimension(name: &str, value: &str) -> Dimension {
    Dimension::builder().name(name).value(value).build()
}

fn cw_metric(metric: CloudWatchMetric, dimensions: Vec<Dimension>) -> Metric {
    Metric::builder()
        .namespace(NAMESPACE)
        .metric_name(metric.as_str())
        .set_dimensions(Some(dimensions))
        .build()
}
