//! Every metric the exporter serves: names as constants, typed labels, one struct per probe.
//!
//! The registry carries the `dmsguard` prefix; counters get `_total` and unit-registered
//! metrics their unit suffix from prometheus-client, so the constants below are the names
//! without prefix and suffix (the doc comment of each gives the exported name).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// Prefix of every metric name.
pub const PREFIX: &str = "dmsguard";

/// `dmsguard_redshift_dms_statements_total`
pub const REDSHIFT_DMS_STATEMENTS: &str = "redshift_dms_statements";
/// `dmsguard_redshift_dms_rolled_back_updates_total`
pub const REDSHIFT_DMS_ROLLED_BACK_UPDATES: &str = "redshift_dms_rolled_back_updates";
/// `dmsguard_redshift_dms_statements_unparsed_total`
pub const REDSHIFT_DMS_STATEMENTS_UNPARSED: &str = "redshift_dms_statements_unparsed";
/// `dmsguard_redshift_apply_exceptions_total`
pub const REDSHIFT_APPLY_EXCEPTIONS: &str = "redshift_apply_exceptions";
/// `dmsguard_dms_instance_freeable_memory_bytes`
pub const DMS_INSTANCE_FREEABLE_MEMORY: &str = "dms_instance_freeable_memory";
/// `dmsguard_dms_instance_available_memory_bytes`
pub const DMS_INSTANCE_AVAILABLE_MEMORY: &str = "dms_instance_available_memory";
/// `dmsguard_dms_instance_swap_usage_bytes`
pub const DMS_INSTANCE_SWAP_USAGE: &str = "dms_instance_swap_usage";
/// `dmsguard_dms_task_cdc_latency_source_seconds`
pub const DMS_TASK_CDC_LATENCY_SOURCE: &str = "dms_task_cdc_latency_source";
/// `dmsguard_dms_task_cdc_latency_target_seconds`
pub const DMS_TASK_CDC_LATENCY_TARGET: &str = "dms_task_cdc_latency_target";
/// `dmsguard_dms_task_cdc_incoming_changes`
pub const DMS_TASK_CDC_INCOMING_CHANGES: &str = "dms_task_cdc_incoming_changes";
/// `dmsguard_cloudwatch_datapoint_age_seconds`
pub const CLOUDWATCH_DATAPOINT_AGE: &str = "cloudwatch_datapoint_age";
/// `dmsguard_dms_task_status`
pub const DMS_TASK_STATUS: &str = "dms_task_status";
/// `dmsguard_dms_task_start_time_seconds`
pub const DMS_TASK_START_TIME: &str = "dms_task_start_time";
/// `dmsguard_dms_task_stop_info`
pub const DMS_TASK_STOP_INFO: &str = "dms_task_stop_info";
/// `dmsguard_dms_instance_status_info`
pub const DMS_INSTANCE_STATUS_INFO: &str = "dms_instance_status_info";
/// `dmsguard_table_missing_ids`
pub const TABLE_MISSING_IDS: &str = "table_missing_ids";
/// `dmsguard_table_extra_ids`
pub const TABLE_EXTRA_IDS: &str = "table_extra_ids";
/// `dmsguard_table_max_id_lag`
pub const TABLE_MAX_ID_LAG: &str = "table_max_id_lag";
/// `dmsguard_table_divergent_rows`
pub const TABLE_DIVERGENT_ROWS: &str = "table_divergent_rows";
/// `dmsguard_table_frontier_id`
pub const TABLE_FRONTIER_ID: &str = "table_frontier_id";
/// `dmsguard_table_scan_progress_ratio`
pub const TABLE_SCAN_PROGRESS: &str = "table_scan_progress_ratio";
/// `dmsguard_table_scan_pass_completed_timestamp_seconds`
pub const TABLE_SCAN_PASS_COMPLETED_TIMESTAMP: &str = "table_scan_pass_completed_timestamp";
/// `dmsguard_table_scanned_ids_total`
pub const TABLE_SCANNED_IDS: &str = "table_scanned_ids";
/// `dmsguard_source_replica_lag_seconds`
pub const SOURCE_REPLICA_LAG: &str = "source_replica_lag";
/// `dmsguard_config_memory_threshold_bytes`
pub const CONFIG_MEMORY_THRESHOLD: &str = "config_memory_threshold";
/// `dmsguard_config_maintenance_stop_before_seconds`
pub const CONFIG_MAINTENANCE_STOP_BEFORE: &str = "config_maintenance_stop_before";
/// `dmsguard_redshift_maintenance_next_start_seconds`
pub const REDSHIFT_MAINTENANCE_NEXT_START: &str = "redshift_maintenance_next_start";
/// `dmsguard_redshift_maintenance_active`
pub const REDSHIFT_MAINTENANCE_ACTIVE: &str = "redshift_maintenance_active";
/// `dmsguard_redshift_maintenance_next_start_timestamp_seconds`
pub const REDSHIFT_MAINTENANCE_NEXT_START_TIMESTAMP: &str =
    "redshift_maintenance_next_start_timestamp";
/// `dmsguard_redshift_maintenance_next_end_timestamp_seconds`
pub const REDSHIFT_MAINTENANCE_NEXT_END_TIMESTAMP: &str = "redshift_maintenance_next_end_timestamp";
/// `dmsguard_redshift_maintenance_deferred`
pub const REDSHIFT_MAINTENANCE_DEFERRED: &str = "redshift_maintenance_deferred";
/// `dmsguard_probe_success`
pub const PROBE_SUCCESS: &str = "probe_success";
/// `dmsguard_probe_duration_seconds`
pub const PROBE_DURATION: &str = "probe_duration";
/// `dmsguard_probe_last_success_timestamp_seconds`
pub const PROBE_LAST_SUCCESS_TIMESTAMP: &str = "probe_last_success_timestamp";

/// `dmsguard_preflight_ok`
pub const PREFLIGHT_OK: &str = "preflight_ok";

/// A gauge holding a float.
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// A gauge without a sample until first set: before the first refresh, absent says "not known"
/// where a 0 would say something false (a window starting now).
#[derive(Debug, Clone, Default)]
pub struct OptionalGauge(Arc<Mutex<Option<f64>>>);

impl OptionalGauge {
    pub fn set(&self, value: f64) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
    }

    pub fn get(&self) -> Option<f64> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl EncodeMetric for OptionalGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        match self.get() {
            Some(value) => encoder.encode_gauge(&value),
            None => Ok(()),
        }
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// Implements `EncodeLabelValue` for a closed enum through its `as_str`.
macro_rules! label_value_via_as_str {
    ($ty:ty) => {
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// The probes, as the `probe` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeName {
    RedshiftStatements,
    Cloudwatch,
    Dms,
    Gaps,
    Maintenance,
}

impl ProbeName {
    pub const ALL: [ProbeName; 5] = [
        ProbeName::RedshiftStatements,
        ProbeName::Cloudwatch,
        ProbeName::Dms,
        ProbeName::Gaps,
        ProbeName::Maintenance,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProbeName::RedshiftStatements => "redshift_statements",
            ProbeName::Cloudwatch => "cloudwatch",
            ProbeName::Dms => "dms",
            ProbeName::Gaps => "gaps",
            ProbeName::Maintenance => "maintenance",
        }
    }
}
label_value_via_as_str!(ProbeName);

/// Kinds of DMS statements, as the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatementKind {
    Insert,
    Update,
    Delete,
}

impl StatementKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StatementKind::Insert => "insert",
            StatementKind::Update => "update",
            StatementKind::Delete => "delete",
        }
    }
}
label_value_via_as_str!(StatementKind);

/// The CloudWatch metrics read, as the `metric` label (their CloudWatch names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloudWatchMetric {
    FreeableMemory,
    AvailableMemory,
    SwapUsage,
    CdcLatencySource,
    CdcLatencyTarget,
    CdcIncomingChanges,
}

impl CloudWatchMetric {
    pub const INSTANCE: [CloudWatchMetric; 3] = [
        CloudWatchMetric::FreeableMemory,
        CloudWatchMetric::AvailableMemory,
        CloudWatchMetric::SwapUsage,
    ];
    pub const TASK: [CloudWatchMetric; 3] = [
        CloudWatchMetric::CdcLatencySource,
        CloudWatchMetric::CdcLatencyTarget,
        CloudWatchMetric::CdcIncomingChanges,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloudWatchMetric::FreeableMemory => "FreeableMemory",
            CloudWatchMetric::AvailableMemory => "AvailableMemory",
            CloudWatchMetric::SwapUsage => "SwapUsage",
            CloudWatchMetric::CdcLatencySource => "CDCLatencySource",
            CloudWatchMetric::CdcLatencyTarget => "CDCLatencyTarget",
            CloudWatchMetric::CdcIncomingChanges => "CDCIncomingChanges",
        }
    }
}
label_value_via_as_str!(CloudWatchMetric);

/// DMS replication task states, as the `status` label of the state set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    Creating,
    Ready,
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
    Deleting,
    Modifying,
    Moving,
    FailedMove,
    Testing,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 12] = [
        TaskStatus::Creating,
        TaskStatus::Ready,
        TaskStatus::Starting,
        TaskStatus::Running,
        TaskStatus::Stopping,
        TaskStatus::Stopped,
        TaskStatus::Failed,
        TaskStatus::Deleting,
        TaskStatus::Modifying,
        TaskStatus::Moving,
        TaskStatus::FailedMove,
        TaskStatus::Testing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Creating => "creating",
            TaskStatus::Ready => "ready",
            TaskStatus::Starting => "starting",
            TaskStatus::Running => "running",
            TaskStatus::Stopping => "stopping",
            TaskStatus::Stopped => "stopped",
            TaskStatus::Failed => "failed",
            TaskStatus::Deleting => "deleting",
            TaskStatus::Modifying => "modifying",
            TaskStatus::Moving => "moving",
            TaskStatus::FailedMove => "failed-move",
            TaskStatus::Testing => "testing",
        }
    }

    /// The state DMS reports as `s`, if it is one we know.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}
label_value_via_as_str!(TaskStatus);

/// The UTC day a gap count covers, as the `window` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DayWindow {
    Today,
    Yesterday,
}

impl DayWindow {
    pub const ALL: [DayWindow; 2] = [DayWindow::Today, DayWindow::Yesterday];

    pub fn as_str(self) -> &'static str {
        match self {
            DayWindow::Today => "today",
            DayWindow::Yesterday => "yesterday",
        }
    }

    /// Its position in [`Self::ALL`].
    pub fn index(self) -> usize {
        match self {
            DayWindow::Today => 0,
            DayWindow::Yesterday => 1,
        }
    }

    /// Whether the day is over (its rows change rarely: late commits, backfills).
    pub fn is_finished(self) -> bool {
        self == DayWindow::Yesterday
    }

    /// How many days before today this window is.
    pub fn days_back(self) -> i64 {
        match self {
            DayWindow::Today => 0,
            DayWindow::Yesterday => 1,
        }
    }
}
label_value_via_as_str!(DayWindow);

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ProbeLabels {
    pub probe: ProbeName,
}

/// A preflight check, named as the checklist names it (e.g. `source table public.orders`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PreflightLabels {
    pub check: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TableKindLabels {
    pub table: String,
    pub kind: StatementKind,
    /// The DMS task the table is configured with (`[[tables]] task`); empty when none is, or
    /// for a table that is not configured.
    pub task: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TableLabels {
    pub table: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TableWindowLabels {
    pub table: String,
    pub window: DayWindow,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct InstanceLabels {
    pub replication_instance: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TaskLabels {
    pub task: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DatapointLabels {
    pub metric: CloudWatchMetric,
    /// The replication instance or task name.
    pub resource: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TaskStatusLabels {
    pub task: String,
    pub status: TaskStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TaskStopLabels {
    pub task: String,
    pub stop_reason: String,
    pub last_failure_message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct InstanceStatusLabels {
    pub replication_instance: String,
    pub status: String,
}

/// Per-probe health, shared by the scheduler.
#[derive(Debug, Clone)]
pub struct ProbeMetrics {
    pub success: Family<ProbeLabels, Gauge>,
    pub duration: Family<ProbeLabels, FloatGauge>,
    pub last_success: Family<ProbeLabels, FloatGauge>,
}

impl ProbeMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            success: Family::default(),
            duration: Family::default(),
            last_success: Family::default(),
        };
        registry.register(
            PROBE_SUCCESS,
            "Whether the probe's last refresh succeeded (1) or failed (0).",
            m.success.clone(),
        );
        registry.register_with_unit(
            PROBE_DURATION,
            "How long the probe's last refresh took.",
            Unit::Seconds,
            m.duration.clone(),
        );
        registry.register_with_unit(
            PROBE_LAST_SUCCESS_TIMESTAMP,
            "Unix time of the probe's last successful refresh.",
            Unit::Seconds,
            m.last_success.clone(),
        );
        m
    }
}

/// DMS statements seen in the Redshift system views.
#[derive(Debug, Clone)]
pub struct StatementMetrics {
    pub statements: Family<TableKindLabels, Counter>,
    pub rolled_back_updates: Family<TableLabels, Counter>,
    pub unparsed: Counter,
    pub apply_exceptions: Family<TableLabels, Counter>,
}

impl StatementMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            statements: Family::default(),
            rolled_back_updates: Family::default(),
            unparsed: Counter::default(),
            apply_exceptions: Family::default(),
        };
        registry.register(
            REDSHIFT_DMS_STATEMENTS,
            "DMS statements run on Redshift, by target table, kind (committed or not) and the table's task.",
            m.statements.clone(),
        );
        registry.register(
            REDSHIFT_DMS_ROLLED_BACK_UPDATES,
            "DMS UPDATE statements that failed or were rolled back (the one-by-one signal).",
            m.rolled_back_updates.clone(),
        );
        registry.register(
            REDSHIFT_DMS_STATEMENTS_UNPARSED,
            "Statements matching the DMS comment that could not be parsed.",
            m.unparsed.clone(),
        );
        registry.register(
            REDSHIFT_APPLY_EXCEPTIONS,
            "New rows in DMS's awsdms_apply_exceptions table, by table.",
            m.apply_exceptions.clone(),
        );
        m
    }
}

/// Latest CloudWatch datapoints of replication instances and tasks.
#[derive(Debug, Clone)]
pub struct CloudWatchMetrics {
    pub freeable_memory: Family<InstanceLabels, FloatGauge>,
    pub available_memory: Family<InstanceLabels, FloatGauge>,
    pub swap_usage: Family<InstanceLabels, FloatGauge>,
    pub latency_source: Family<TaskLabels, FloatGauge>,
    pub latency_target: Family<TaskLabels, FloatGauge>,
    pub incoming_changes: Family<TaskLabels, FloatGauge>,
    pub datapoint_age: Family<DatapointLabels, FloatGauge>,
}

impl CloudWatchMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            freeable_memory: Family::default(),
            available_memory: Family::default(),
            swap_usage: Family::default(),
            latency_source: Family::default(),
            latency_target: Family::default(),
            incoming_changes: Family::default(),
            datapoint_age: Family::default(),
        };
        registry.register_with_unit(
            DMS_INSTANCE_FREEABLE_MEMORY,
            "Latest CloudWatch FreeableMemory of the replication instance.",
            Unit::Bytes,
            m.freeable_memory.clone(),
        );
        registry.register_with_unit(
            DMS_INSTANCE_AVAILABLE_MEMORY,
            "Latest CloudWatch AvailableMemory of the replication instance.",
            Unit::Bytes,
            m.available_memory.clone(),
        );
        registry.register_with_unit(
            DMS_INSTANCE_SWAP_USAGE,
            "Latest CloudWatch SwapUsage of the replication instance.",
            Unit::Bytes,
            m.swap_usage.clone(),
        );
        registry.register_with_unit(
            DMS_TASK_CDC_LATENCY_SOURCE,
            "Latest CloudWatch CDCLatencySource of the task.",
            Unit::Seconds,
            m.latency_source.clone(),
        );
        registry.register_with_unit(
            DMS_TASK_CDC_LATENCY_TARGET,
            "Latest CloudWatch CDCLatencyTarget of the task.",
            Unit::Seconds,
            m.latency_target.clone(),
        );
        registry.register(
            DMS_TASK_CDC_INCOMING_CHANGES,
            "Latest CloudWatch CDCIncomingChanges of the task (changes waiting to apply).",
            m.incoming_changes.clone(),
        );
        registry.register_with_unit(
            CLOUDWATCH_DATAPOINT_AGE,
            "Age of the latest CloudWatch datapoint exported, by metric and resource.",
            Unit::Seconds,
            m.datapoint_age.clone(),
        );
        m
    }

    /// The instance gauge family of an instance metric.
    pub fn instance_family(
        &self,
        metric: CloudWatchMetric,
    ) -> Option<&Family<InstanceLabels, FloatGauge>> {
        match metric {
            CloudWatchMetric::FreeableMemory => Some(&self.freeable_memory),
            CloudWatchMetric::AvailableMemory => Some(&self.available_memory),
            CloudWatchMetric::SwapUsage => Some(&self.swap_usage),
            _ => None,
        }
    }

    /// The task gauge family of a task metric.
    pub fn task_family(&self, metric: CloudWatchMetric) -> Option<&Family<TaskLabels, FloatGauge>> {
        match metric {
            CloudWatchMetric::CdcLatencySource => Some(&self.latency_source),
            CloudWatchMetric::CdcLatencyTarget => Some(&self.latency_target),
            CloudWatchMetric::CdcIncomingChanges => Some(&self.incoming_changes),
            _ => None,
        }
    }
}

/// DMS task and instance state from the DMS API.
#[derive(Debug, Clone)]
pub struct DmsMetrics {
    pub task_status: Family<TaskStatusLabels, Gauge>,
    pub task_start_time: Family<TaskLabels, FloatGauge>,
    pub task_stop_info: Family<TaskStopLabels, Gauge>,
    pub instance_status: Family<InstanceStatusLabels, Gauge>,
}

impl DmsMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            task_status: Family::default(),
            task_start_time: Family::default(),
            task_stop_info: Family::default(),
            instance_status: Family::default(),
        };
        registry.register(
            DMS_TASK_STATUS,
            "DMS task state set: 1 for the task's current status, 0 for the others.",
            m.task_status.clone(),
        );
        registry.register_with_unit(
            DMS_TASK_START_TIME,
            "Unix time the task was last started.",
            Unit::Seconds,
            m.task_start_time.clone(),
        );
        registry.register(
            DMS_TASK_STOP_INFO,
            "Always 1: the task's stop reason and last failure message as DMS reports them.",
            m.task_stop_info.clone(),
        );
        registry.register(
            DMS_INSTANCE_STATUS_INFO,
            "Always 1: the replication instance's status as DMS reports it.",
            m.instance_status.clone(),
        );
        m
    }
}

/// Missing rows per table, from the gap finder.
#[derive(Debug, Clone)]
pub struct GapMetrics {
    pub missing_ids: Family<TableWindowLabels, Gauge>,
    pub extra_ids: Family<TableWindowLabels, Gauge>,
    pub divergent_rows: Family<TableWindowLabels, Gauge>,
    pub max_id_lag: Family<TableLabels, Gauge>,
    pub frontier_id: Family<TableLabels, Gauge>,
    /// The fraction of the window the current pass of slices has covered.
    pub scan_progress: Family<TableWindowLabels, FloatGauge>,
    /// When the last pass over the window ended (the probe's clock).
    pub scan_pass_completed: Family<TableWindowLabels, FloatGauge>,
    /// Ids read per side, summed over the slices read.
    pub scanned_ids: Family<TableWindowLabels, Counter>,
    /// How far `[source.replica]` is behind the primary; absent without a replica.
    pub replica_lag_seconds: OptionalGauge,
}

impl GapMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            missing_ids: Family::default(),
            extra_ids: Family::default(),
            divergent_rows: Family::default(),
            max_id_lag: Family::default(),
            frontier_id: Family::default(),
            scan_progress: Family::default(),
            scan_pass_completed: Family::default(),
            scanned_ids: Family::default(),
            replica_lag_seconds: OptionalGauge::default(),
        };
        registry.register_with_unit(
            SOURCE_REPLICA_LAG,
            "How far [source.replica] is behind the primary (now minus the last replayed commit; 0 when it has replayed all it received), read by the gaps probe; bounds the replication frontier.",
            Unit::Seconds,
            m.replica_lag_seconds.clone(),
        );
        registry.register(
            TABLE_MISSING_IDS,
            "Ids in the source but not in the target, among the source rows of the UTC day. A window larger than the scan budget is read in slices over successive runs: the count sums each slice's latest read, so it may be up to one pass old.",
            m.missing_ids.clone(),
        );
        registry.register(
            TABLE_EXTRA_IDS,
            "Ids in the target but not in the source (a DELETE the target missed), within the UTC day's source id range; summed over each slice's latest read (up to one pass old).",
            m.extra_ids.clone(),
        );
        registry.register(
            TABLE_DIVERGENT_ROWS,
            "Ids on both sides whose row differs between source and target, among the UTC day's ids, counted once two content comparisons separated by more than the replication latency saw them (tables with divergent_rows = true); summed over each slice's latest read (up to one pass old).",
            m.divergent_rows.clone(),
        );
        registry.register(
            TABLE_MAX_ID_LAG,
            "Newest source id minus newest target id.",
            m.max_id_lag.clone(),
        );
        registry.register(
            TABLE_FRONTIER_ID,
            "Newest source id replication progress has passed: absent ids up to it count as missing, newer ones are in flight.",
            m.frontier_id.clone(),
        );
        registry.register(
            TABLE_SCAN_PROGRESS,
            "Fraction of the UTC day's judged id range the gaps probe's current pass has read (1 once a pass ended, until the next starts); below 1 for a window read in slices under the scan budget.",
            m.scan_progress.clone(),
        );
        registry.register_with_unit(
            TABLE_SCAN_PASS_COMPLETED_TIMESTAMP,
            "Unix time the gaps probe last finished reading every judged id of the UTC day's window (one pass of slices).",
            Unit::Seconds,
            m.scan_pass_completed.clone(),
        );
        registry.register(
            TABLE_SCANNED_IDS,
            "Ids of the UTC day's window the gaps probe read per side, summed over the slices read (a table with divergent_rows = true reads each id twice, ids then content, and counts it twice).",
            m.scanned_ids.clone(),
        );
        m
    }
}

/// The Redshift maintenance window.
#[derive(Debug, Clone)]
pub struct MaintenanceMetrics {
    pub next_start: OptionalGauge,
    pub active: OptionalGauge,
    pub next_start_timestamp: OptionalGauge,
    pub next_end_timestamp: OptionalGauge,
    pub deferred: OptionalGauge,
}

impl MaintenanceMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            next_start: OptionalGauge::default(),
            active: OptionalGauge::default(),
            next_start_timestamp: OptionalGauge::default(),
            next_end_timestamp: OptionalGauge::default(),
            deferred: OptionalGauge::default(),
        };
        registry.register_with_unit(
            REDSHIFT_MAINTENANCE_NEXT_START_TIMESTAMP,
            "Unix time the next Redshift maintenance that is not deferred starts (NextMaintenanceWindowStartTime when the cluster reports it).",
            Unit::Seconds,
            m.next_start_timestamp.clone(),
        );
        registry.register_with_unit(
            REDSHIFT_MAINTENANCE_NEXT_END_TIMESTAMP,
            "Unix time that next Redshift maintenance ends (its start plus the window's length).",
            Unit::Seconds,
            m.next_end_timestamp.clone(),
        );
        registry.register(
            REDSHIFT_MAINTENANCE_DEFERRED,
            "Whether the cluster's maintenance is deferred now (1: inside one of its DeferredMaintenanceWindows) or not (0).",
            m.deferred.clone(),
        );
        registry.register_with_unit(
            REDSHIFT_MAINTENANCE_NEXT_START,
            "Seconds until the next Redshift maintenance window that is not deferred starts.",
            Unit::Seconds,
            m.next_start.clone(),
        );
        registry.register(
            REDSHIFT_MAINTENANCE_ACTIVE,
            "Whether a Redshift maintenance window is in progress (1) or not (0).",
            m.active.clone(),
        );
        m
    }
}

/// Thresholds of the config the alert rules compare against, so that they are set in one place
/// (`[remediator]`) and the rules and the fixes follow the same values.
#[derive(Debug, Clone, Default)]
pub struct ThresholdMetrics {
    pub memory_threshold: FloatGauge,
    pub maintenance_stop_before: FloatGauge,
}

impl ThresholdMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register_with_unit(
            CONFIG_MEMORY_THRESHOLD,
            "remediator.memory_threshold_bytes: DMSInstanceMemoryLow fires below it.",
            Unit::Bytes,
            m.memory_threshold.clone(),
        );
        registry.register_with_unit(
            CONFIG_MAINTENANCE_STOP_BEFORE,
            "remediator.maintenance_stop_before: RedshiftMaintenanceImminent fires this long before a window.",
            Unit::Seconds,
            m.maintenance_stop_before.clone(),
        );
        m
    }

    /// Sets the gauges from `config`.
    pub fn set(&self, config: &dmsguard_pipeline::config::RemediatorConfig) {
        self.memory_threshold
            .set(config.memory_threshold_bytes as f64);
        self.maintenance_stop_before
            .set(config.maintenance_stop_before.as_secs_f64());
    }
}

/// All of the exporter's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub probes: ProbeMetrics,
    pub statements: StatementMetrics,
    pub cloudwatch: CloudWatchMetrics,
    pub dms: DmsMetrics,
    pub gaps: GapMetrics,
    pub maintenance: MaintenanceMetrics,
    pub thresholds: ThresholdMetrics,
    /// The start-up preflight checklist: 1 passed, 0 failed; absent until it has run.
    pub preflight: Family<PreflightLabels, Gauge>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let preflight = Family::<PreflightLabels, Gauge>::default();
        registry.register(
            PREFLIGHT_OK,
            "Whether the start-up preflight check passed (1) or failed (0); `--preflight` prints the fix.",
            preflight.clone(),
        );
        Self {
            preflight,
            probes: ProbeMetrics::register(registry),
            statements: StatementMetrics::register(registry),
            cloudwatch: CloudWatchMetrics::register(registry),
            dms: DmsMetrics::register(registry),
            gaps: GapMetrics::register(registry),
            maintenance: MaintenanceMetrics::register(registry),
            thresholds: ThresholdMetrics::register(registry),
        }
    }
}
