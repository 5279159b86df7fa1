//! The lab's DMS simulator: a source workload, batch apply into the Redshift stand-in through
//! an `awsdms_changes<hash>` table, one-by-one fallback, a moto control plane, and faults.
//!
//! `tests/SIMULATOR.md` documents the type mapping, the statements and each fault's signature.

pub mod control_plane;
pub mod faults;
pub mod replication;
pub mod target_schema;
pub mod workload;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use dmsguard_pipeline::config::{AwsConfig, DatabaseConfig, QualifiedName};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use faults::{Fault, FaultParseError};
pub use target_schema::{
    compare_tables, copy_rows, Column, ColumnKind, Diff, RowMismatch, SimTable,
};
pub use workload::{HotRows, Workload, WorkloadConfig, WorkloadCounters, WorkloadHandle};

use crate::harness::{eventually, TestDatabases};

/// The database role the simulator's DMS runs its statements as (the DMS endpoint's user);
/// `tests/sql/redshift_standin.sql` creates it.
pub const DMS_ROLE: &str = "lab_dms";

/// The version comment DMS puts at the start of every statement.
pub const DMS_COMMENT: &str = "/* Applied by AWS DMS 3.5.3 */";

/// A DMS task the simulator plays, and the tables it replicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimTask {
    pub name: String,
    pub tables: Vec<SimTable>,
}

/// Batch apply limits, like DMS's `BatchApplyTimeoutMin` and `BatchApplyMemoryLimit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Least time between the starts of two batches.
    pub min_interval: Duration,
    /// Most source changes read into one batch (whole transactions, so it may go a bit over).
    pub max_changes: u32,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            min_interval: Duration::from_secs(1),
            max_changes: 50_000,
        }
    }
}

/// The replication instance's memory, as its CloudWatch metrics report it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryModel {
    /// `FreeableMemory` of a healthy instance.
    pub freeable_bytes: f64,
    /// `AvailableMemory` of a healthy instance.
    pub available_bytes: f64,
    /// The least either falls to.
    pub floor_bytes: f64,
}

impl Default for MemoryModel {
    fn default() -> Self {
        Self {
            freeable_bytes: 4.0 * GIB,
            available_bytes: 5.0 * GIB,
            floor_bytes: 64.0 * MIB,
        }
    }
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const MIB: f64 = 1024.0 * 1024.0;

/// Everything the simulator needs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub source: DatabaseConfig,
    pub redshift: DatabaseConfig,
    /// moto (DMS and CloudWatch).
    pub aws: AwsConfig,
    /// The replication instance identifier.
    pub instance: String,
    pub tasks: Vec<SimTask>,
    /// Changes per second of the built-in workload over all tables; 0 runs none.
    pub rate: u32,
    pub batch: BatchLimits,
    /// Simulated cost of one statement in one-by-one mode (DMS is slow there).
    pub one_by_one_statement_cost: Duration,
    /// How often task status is read from moto.
    pub poll_interval: Duration,
    /// How often datapoints are pushed to CloudWatch.
    pub metrics_interval: Duration,
    pub memory: MemoryModel,
    /// The fault active from the start.
    pub initial_fault: Fault,
    /// Start (or resume) the tasks in moto at start-up.
    pub start_tasks: bool,
    /// How far in the past the workload's new rows are created (`created_at`); 0 for now.
    pub created_age: Duration,
    /// For this long after a task resumes, its `CDCLatencySource` and `CDCLatencyTarget` are
    /// published as 0 whatever the backlog: nothing has reached the target yet, so nothing is
    /// "waiting to be committed" there. DMS's documentation does not say what it publishes
    /// then; 0 is the hostile reading the frontier must survive.
    pub latency_blind_after_resume: Duration,
}

impl SimConfig {
    /// One task `lab-task` on instance `lab-instance` replicating `public.orders`, against a
    /// test's databases and moto, with short intervals for tests.
    pub fn for_test(dbs: &TestDatabases, moto_url: &str) -> Self {
        Self {
            source: dbs.source.clone(),
            redshift: dbs.redshift.clone(),
            aws: crate::harness::aws_config(moto_url),
            instance: "lab-instance".to_owned(),
            tasks: vec![SimTask {
                name: "lab-task".to_owned(),
                tables: vec![SimTable::new("public.orders").expect("valid table name")],
            }],
            rate: 400,
            batch: BatchLimits {
                min_interval: Duration::from_millis(500),
                max_changes: 50_000,
            },
            one_by_one_statement_cost: Duration::from_millis(1),
            poll_interval: Duration::from_millis(200),
            metrics_interval: Duration::from_secs(1),
            memory: MemoryModel::default(),
            initial_fault: Fault::None,
            start_tasks: true,
            created_age: Duration::ZERO,
            latency_blind_after_resume: Duration::from_secs(5),
        }
    }

    /// The built-in workload's configuration.
    pub fn workload(&self) -> WorkloadConfig {
        WorkloadConfig {
            created_age: self.created_age,
            ..WorkloadConfig::new(self.source.clone(), self.tables(), self.rate)
        }
    }

    /// Every table of every task.
    pub fn tables(&self) -> Vec<SimTable> {
        self.tasks
            .iter()
            .flat_map(|t| t.tables.iter().cloned())
            .collect()
    }
}

/// What one task has done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskStats {
    pub task: String,
    /// Status last read from moto.
    pub status: String,
    /// Why the task does not apply although `running` (`stall`, `redshift_restart`), if so.
    pub blocked: Option<String>,
    /// Source changes (rows inserted, updated, deleted) read from the slot.
    pub captured: u64,
    /// Source changes in batches committed on the target.
    pub applied: u64,
    /// Source changes the faults kept from the target.
    pub dropped_changes: u64,
    /// Inserts dropped by a fault, as (`schema.table`, id).
    pub dropped_ids: Vec<(String, i64)>,
    /// UPDATEs `skip_update` kept from the target, as (`schema.table`, id), in capture order.
    pub skipped_updates: Vec<(String, i64)>,
    /// DELETEs `skip_delete` kept from the target, as (`schema.table`, id).
    pub skipped_deletes: Vec<(String, i64)>,
    pub batches: u64,
    pub bulk_batches: u64,
    pub one_by_one_batches: u64,
    /// Bulk UPDATEs rolled back because they touched too few rows.
    pub rolled_back_updates: u64,
    /// Rows written to `awsdms_apply_exceptions`.
    pub apply_exceptions: u64,
    /// DMS statements run on the target (committed or not).
    pub statements: u64,
    /// `seq` of the last change applied (monotonic across batches).
    pub last_applied_seq: i64,
    /// Batches that failed and were retried (target down, …).
    pub apply_retries: u64,
    /// Stop/resume cycles seen in moto.
    pub restarts: u64,
}

/// What the simulator has done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Changes the built-in workload committed on the source.
    pub generated: u64,
    pub tasks: Vec<TaskStats>,
}

impl SimStats {
    fn sum(&self, f: impl Fn(&TaskStats) -> u64) -> u64 {
        self.tasks.iter().map(f).sum()
    }
    pub fn captured(&self) -> u64 {
        self.sum(|t| t.captured)
    }
    pub fn applied(&self) -> u64 {
        self.sum(|t| t.applied)
    }
    pub fn dropped_changes(&self) -> u64 {
        self.sum(|t| t.dropped_changes)
    }
    pub fn batches(&self) -> u64 {
        self.sum(|t| t.batches)
    }
    pub fn one_by_one_batches(&self) -> u64 {
        self.sum(|t| t.one_by_one_batches)
    }
    pub fn rolled_back_updates(&self) -> u64 {
        self.sum(|t| t.rolled_back_updates)
    }
    pub fn dropped_ids(&self) -> Vec<(String, i64)> {
        self.tasks
            .iter()
            .flat_map(|t| t.dropped_ids.iter().cloned())
            .collect()
    }
    /// UPDATEs `skip_update` kept from the target, as (`schema.table`, id).
    pub fn skipped_updates(&self) -> Vec<(String, i64)> {
        self.tasks
            .iter()
            .flat_map(|t| t.skipped_updates.iter().cloned())
            .collect()
    }
    /// DELETEs `skip_delete` kept from the target, as (`schema.table`, id).
    pub fn skipped_deletes(&self) -> Vec<(String, i64)> {
        self.tasks
            .iter()
            .flat_map(|t| t.skipped_deletes.iter().cloned())
            .collect()
    }
    /// The highest `seq` applied by any task.
    pub fn last_applied_seq(&self) -> i64 {
        self.tasks
            .iter()
            .map(|t| t.last_applied_seq)
            .max()
            .unwrap_or(0)
    }
    pub fn task(&self, name: &str) -> Option<&TaskStats> {
        self.tasks.iter().find(|t| t.task == name)
    }
}

/// Why a running task applies nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Block {
    Stall,
    AfterRedshiftRestart,
}

impl Block {
    fn name(self) -> &'static str {
        match self {
            Block::Stall => "stall",
            Block::AfterRedshiftRestart => "redshift_restart",
        }
    }
}

/// Latency and backlog the replicator last saw, for CloudWatch.
#[derive(Debug, Clone, Default)]
pub(crate) struct Lag {
    /// Changes read or waiting in the slot, not yet applied.
    pub pending: u64,
    /// Commit time of the oldest change not yet applied.
    pub oldest_pending: Option<chrono::DateTime<chrono::Utc>>,
    /// Seconds between a change's commit and its capture, for the last batch read.
    pub source_latency: f64,
    /// Seconds between the oldest commit of the last batch and its apply.
    pub last_batch_latency: f64,
    /// Every change committed before this instant is applied (set by each batch).
    pub applied_through: Option<chrono::DateTime<chrono::Utc>>,
}

/// One task's live state, shared by its replicator, the control plane and the handle.
#[derive(Debug)]
pub(crate) struct TaskRuntime {
    pub task: SimTask,
    pub slot: String,
    pub changes_table: QualifiedName,
    pub arn: Mutex<Option<String>>,
    pub status: Mutex<String>,
    pub start_date: Mutex<Option<f64>>,
    /// Whether the task has been seen `running` since the simulator started: the first
    /// `starting` -> `running` (a start that takes time) is not a restart.
    pub seen_running: Mutex<bool>,
    pub block: Mutex<Option<Block>>,
    pub leaked_bytes: Mutex<f64>,
    pub stats: Mutex<TaskStats>,
    pub lag: Mutex<Lag>,
    /// Every source change up to this WAL position is applied (or known irrelevant).
    pub processed_lsn: AtomicU64,
    /// When the task last resumed (a stop and start seen in moto).
    pub resumed_at: Mutex<Option<std::time::Instant>>,
}

impl TaskRuntime {
    fn new(task: SimTask, source_db: &str) -> Self {
        let slot = format!(
            "lab_{:016x}",
            fnv1a64(format!("{source_db}/{}", task.name).as_bytes())
        );
        let changes_table = changes_table_name(&task.name);
        let stats = TaskStats {
            task: task.name.clone(),
            ..TaskStats::default()
        };
        Self {
            task,
            slot,
            changes_table,
            arn: Mutex::new(None),
            status: Mutex::new("unknown".to_owned()),
            start_date: Mutex::new(None),
            seen_running: Mutex::new(false),
            block: Mutex::new(None),
            leaked_bytes: Mutex::new(0.0),
            stats: Mutex::new(stats),
            lag: Mutex::new(Lag::default()),
            processed_lsn: AtomicU64::new(0),
            resumed_at: Mutex::new(None),
        }
    }

    /// Applies only while `running` in moto and not blocked by a fault.
    pub fn applying(&self) -> bool {
        *lock(&self.status) == "running" && lock(&self.block).is_none()
    }

    pub fn with_stats(&self, f: impl FnOnce(&mut TaskStats)) {
        f(&mut lock(&self.stats));
    }

    fn snapshot(&self) -> TaskStats {
        let mut s = lock(&self.stats).clone();
        s.status = lock(&self.status).clone();
        s.blocked = lock(&self.block).map(|b| b.name().to_owned());
        s
    }

    /// A stop and resume in DMS: faults latched on the task clear, leaked memory returns.
    pub fn restarted(&self) {
        *lock(&self.block) = None;
        *lock(&self.leaked_bytes) = 0.0;
        *lock(&self.resumed_at) = Some(std::time::Instant::now());
        self.with_stats(|s| s.restarts += 1);
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The intermediate table of a task: `public.awsdms_changes` + 8 hex digits of its name's hash.
pub fn changes_table_name(task: &str) -> QualifiedName {
    QualifiedName {
        schema: "public".to_owned(),
        table: format!("awsdms_changes{:08x}", fnv1a64(task.as_bytes()) as u32),
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// State shared by every part of a running simulator.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: SimConfig,
    pub fault: Mutex<Fault>,
    /// `missing_then_update` waits for the next insert to drop.
    pub missing_armed: AtomicBool,
    pub hot_rows: HotRows,
    pub target_down: AtomicBool,
    pub tasks: Vec<Arc<TaskRuntime>>,
    pub workload: Mutex<Option<Arc<WorkloadCounters>>>,
}

impl Shared {
    pub fn fault(&self) -> Fault {
        *lock(&self.fault)
    }
}

/// Starts simulators.
pub struct Simulator;

/// A running simulator.
pub struct SimHandle {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    workload: tokio::sync::Mutex<Option<WorkloadHandle>>,
    restart: Mutex<Option<JoinHandle<anyhow::Result<()>>>>,
}

impl Simulator {
    /// Creates the source and target tables, the slots, the moto resources, then starts the
    /// replicators, the control plane and (if `rate` > 0) the workload.
    pub async fn start(config: SimConfig) -> anyhow::Result<SimHandle> {
        anyhow::ensure!(!config.tasks.is_empty(), "the simulator needs a task");
        let source_db = database_name(&config.source.url)?;
        let tables = config.tables();
        {
            let source = dmsguard_pipeline::db::connect(&config.source)
                .await
                .context("connecting to the source")?;
            let redshift = dmsguard_pipeline::db::connect(&config.redshift)
                .await
                .context("connecting to the Redshift stand-in")?;
            crate::harness::install_redshift_standin(&redshift)
                .await
                .context("creating the Redshift stand-in system views")?;
            for t in &tables {
                t.install_source(&source)
                    .await
                    .context("creating source tables")?;
                t.install_target(&redshift)
                    .await
                    .context("creating target tables")?;
            }
            for task in &config.tasks {
                replication::install_task(&source, &redshift, task, &source_db)
                    .await
                    .with_context(|| format!("setting up task {}", task.name))?;
            }
            // What the DMS endpoint's user may do on the target: write the replicated tables and
            // its own intermediate and recovery tables.
            let mut schemas: Vec<String> = tables.iter().map(|t| t.name.schema.clone()).collect();
            schemas.push("public".to_owned());
            schemas.sort();
            schemas.dedup();
            for schema in schemas {
                let schema = dmsguard_pipeline::config::quote_ident(&schema);
                redshift
                    .batch_execute(&format!(
                        "GRANT USAGE, CREATE ON SCHEMA {schema} TO {DMS_ROLE};
                         GRANT ALL ON ALL TABLES IN SCHEMA {schema} TO {DMS_ROLE};"
                    ))
                    .await
                    .context("granting the DMS role its tables")?;
            }
        }
        let runtimes: Vec<Arc<TaskRuntime>> = config
            .tasks
            .iter()
            .map(|t| Arc::new(TaskRuntime::new(t.clone(), &source_db)))
            .collect();
        let aws = dmsguard_pipeline::aws::AwsClients::new(&config.aws).await;
        control_plane::register(&aws, &config, &runtimes)
            .await
            .context("registering the instance and tasks in DMS (moto)")?;
        let initial = config.initial_fault;
        let shared = Arc::new(Shared {
            config,
            fault: Mutex::new(Fault::None),
            missing_armed: AtomicBool::new(false),
            hot_rows: HotRows::default(),
            target_down: AtomicBool::new(false),
            tasks: runtimes,
            workload: Mutex::new(None),
        });
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        for rt in &shared.tasks {
            tasks.push(tokio::spawn(replication::run(
                shared.clone(),
                rt.clone(),
                stopped.clone(),
            )));
        }
        tasks.push(tokio::spawn(control_plane::run(
            shared.clone(),
            aws,
            stopped.clone(),
        )));
        let workload = if shared.config.rate > 0 {
            let handle = Workload::start(shared.config.workload(), shared.hot_rows.clone()).await?;
            *lock(&shared.workload) = Some(handle.counters());
            Some(handle)
        } else {
            None
        };
        let handle = SimHandle {
            shared,
            stop,
            tasks,
            workload: tokio::sync::Mutex::new(workload),
            restart: Mutex::new(None),
        };
        handle.set_fault(initial);
        Ok(handle)
    }
}

/// The database name in a connection URL.
pub fn database_name(url: &str) -> anyhow::Result<String> {
    let c: tokio_postgres::Config = url.parse().context("parsing the source url")?;
    Ok(c.get_dbname().unwrap_or("postgres").to_owned())
}

impl SimHandle {
    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    /// Switches the active fault (see [`Fault`] for which latch and which last).
    pub fn set_fault(&self, fault: Fault) {
        tracing::info!(%fault, "Fault set.");
        *lock(&self.shared.fault) = fault;
        match fault {
            Fault::MissingThenUpdate => self.shared.missing_armed.store(true, Ordering::SeqCst),
            _ => {
                self.shared.missing_armed.store(false, Ordering::SeqCst);
                lock(&self.shared.hot_rows).clear();
            }
        }
        match fault {
            Fault::Stall => {
                for t in &self.shared.tasks {
                    if *lock(&t.status) == "running" {
                        *lock(&t.block) = Some(Block::Stall);
                    }
                }
            }
            Fault::RedshiftRestart { seconds } => {
                let shared = self.shared.clone();
                let job = tokio::spawn(async move {
                    let r = replication::redshift_restart(
                        &shared,
                        Duration::from_secs(u64::from(seconds)),
                    )
                    .await;
                    if let Err(e) = &r {
                        tracing::error!(error = %format!("{e:#}"), "Redshift restart fault failed.");
                    }
                    r
                });
                *lock(&self.restart) = Some(job);
            }
            _ => {}
        }
    }

    /// Stalls task `task` alone (F5 on one task): it stays `running` in DMS and applies
    /// nothing until it is stopped and resumed. The other tasks keep applying.
    pub fn stall_task(&self, task: &str) -> anyhow::Result<()> {
        let t = self
            .shared
            .tasks
            .iter()
            .find(|t| t.task.name == task)
            .ok_or_else(|| anyhow::anyhow!("the simulator has no task {task}"))?;
        anyhow::ensure!(
            *lock(&t.status) == "running",
            "task {task} is {}, not running",
            lock(&t.status)
        );
        tracing::info!(task, "Task stalled.");
        *lock(&t.block) = Some(Block::Stall);
        Ok(())
    }

    /// Back to healthy replication. Latched faults (stall, redshift_restart) stay until the
    /// task is stopped and resumed in DMS, as on AWS.
    pub fn clear_fault(&self) {
        self.set_fault(Fault::None);
    }

    pub fn fault(&self) -> Fault {
        self.shared.fault()
    }

    /// The instance's memory as the next CloudWatch datapoints will report it:
    /// (`FreeableMemory`, `AvailableMemory`, `SwapUsage`) in bytes.
    pub fn memory(&self) -> (f64, f64, f64) {
        control_plane::memory(&self.shared)
    }

    pub fn stats(&self) -> SimStats {
        SimStats {
            generated: lock(&self.shared.workload)
                .as_ref()
                .map(|c| c.generated())
                .unwrap_or(0),
            tasks: self.shared.tasks.iter().map(|t| t.snapshot()).collect(),
        }
    }

    /// The ARN moto gave a task.
    pub fn task_arn(&self, task: &str) -> Option<String> {
        self.shared
            .tasks
            .iter()
            .find(|t| t.task.name == task)
            .and_then(|t| lock(&t.arn).clone())
    }

    /// The replication slot of a task (on the source).
    pub fn slot(&self, task: &str) -> Option<String> {
        self.runtime(task).map(|t| t.slot.clone())
    }

    /// The intermediate table of a task (on the target).
    pub fn changes_table(&self, task: &str) -> Option<QualifiedName> {
        self.runtime(task).map(|t| t.changes_table.clone())
    }

    fn runtime(&self, task: &str) -> Option<&Arc<TaskRuntime>> {
        self.shared.tasks.iter().find(|t| t.task.name == task)
    }

    /// Waits until every task has applied all source changes committed before this call.
    pub async fn wait_caught_up(&self, deadline: Duration) -> anyhow::Result<()> {
        let source = dmsguard_pipeline::db::connect(&self.shared.config.source).await?;
        let lsn: String = source
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
            .get(0);
        let target = replication::parse_lsn(&lsn)?;
        eventually("the simulator to catch up", deadline, || async {
            let behind: Vec<String> = self
                .shared
                .tasks
                .iter()
                .filter(|t| t.processed_lsn.load(Ordering::SeqCst) < target)
                .map(|t| t.task.name.clone())
                .collect();
            if behind.is_empty() {
                Ok(Some(()))
            } else {
                anyhow::bail!("tasks behind {lsn}: {behind:?}; stats {:?}", self.stats())
            }
        })
        .await
    }

    /// Stops the built-in workload (replication goes on); returns the changes it committed.
    pub async fn stop_workload(&self) -> anyhow::Result<u64> {
        match self.workload.lock().await.take() {
            Some(w) => w.stop().await,
            None => Ok(self.stats().generated),
        }
    }

    /// Starts the workload again after [`SimHandle::stop_workload`]; its counts go on from
    /// where they stopped. Does nothing while it runs or when the rate is 0.
    pub async fn resume_workload(&self) -> anyhow::Result<()> {
        let mut workload = self.workload.lock().await;
        if workload.is_some() || self.shared.config.rate == 0 {
            return Ok(());
        }
        let counters = lock(&self.shared.workload).clone().unwrap_or_default();
        let handle = Workload::start_counting(
            self.shared.config.workload(),
            self.shared.hot_rows.clone(),
            counters,
        )
        .await?;
        *lock(&self.shared.workload) = Some(handle.counters());
        *workload = Some(handle);
        Ok(())
    }

    /// Compares a replicated table's source and target rows after type conversion.
    pub async fn compare_source_target(&self, table: &str) -> anyhow::Result<Diff> {
        let table = self
            .shared
            .config
            .tables()
            .into_iter()
            .find(|t| t.dotted() == table || t.to_string() == table)
            .ok_or_else(|| anyhow::anyhow!("`{table}` is not a simulated table"))?;
        compare_source_target(
            &self.shared.config.source,
            &self.shared.config.redshift,
            &table,
        )
        .await
    }

    /// Stops everything; returns the final stats.
    pub async fn stop(mut self) -> anyhow::Result<SimStats> {
        self.stop_workload().await?;
        let _ = self.stop.send(true);
        let restart = lock(&self.restart).take();
        if let Some(job) = restart {
            job.await??;
        }
        for t in std::mem::take(&mut self.tasks) {
            t.await??;
        }
        Ok(SimStats {
            generated: lock(&self.shared.workload)
                .as_ref()
                .map(|c| c.generated())
                .unwrap_or(0),
            tasks: self.shared.tasks.iter().map(|t| t.snapshot()).collect(),
        })
    }
}

impl Drop for SimHandle {
    /// A handle dropped without `stop` still ends its background tasks.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Compares a table's source rows with its target rows after DMS's type conversion.
pub async fn compare_source_target(
    source: &DatabaseConfig,
    redshift: &DatabaseConfig,
    table: &SimTable,
) -> anyhow::Result<Diff> {
    let s = dmsguard_pipeline::db::connect(source).await?;
    let r = dmsguard_pipeline::db::connect(redshift).await?;
    Ok(compare_tables(&s, &r, table).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_table_name_is_stable_and_shaped_like_dms() {
        let a = changes_table_name("lab-task");
        assert_eq!(a, changes_table_name("lab-task"));
        assert_ne!(a, changes_table_name("other-task"));
        assert!(a.table.starts_with("awsdms_changes"));
        let hex = &a.table["awsdms_changes".len()..];
        assert_eq!(hex.len(), 8);
        assert!(hex.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
