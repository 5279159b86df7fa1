//! Set-up shared by the chain scenarios: a test's databases, moto, the DMS simulator and the
//! whole stack over them, and the end-of-scenario checks.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use aws_sdk_redshift::error::DisplayErrorContext;
use dmsguard_lab::harness::{
    aws_config, eventually, LabControl, Moto, TcpProxy, TestDatabases, Violation,
};
use dmsguard_lab::simulator::{SimConfig, SimHandle, Simulator};
use dmsguard_lab::stack::{Stack, StackSpec};
use dmsguard_pipeline::aws::AwsClients;

/// The table every scenario replicates.
pub const TABLE: &str = "public.orders";
pub const TASK: &str = "lab-task";
pub const INSTANCE: &str = "lab-instance";
/// The Redshift cluster of scenarios that set `StackSpec::cluster_identifier` to it.
pub const CLUSTER: &str = "lab-cluster";

/// How long the lab's DMS keeps a task `stopping` after `StopReplicationTask` and `starting`
/// after `StartReplicationTask` in every chain scenario. DMS's stop and start are asynchronous
/// and take minutes (`Status` in
/// <https://docs.aws.amazon.com/dms/latest/APIReference/API_ReplicationTask.html>), so no
/// scenario may depend on moto's instant transitions: by default each stop and start takes 2 s
/// (every scenario goes through both states at little cost), and
/// `DMSGUARD_TEST_DMS_SECONDS=30` runs every scenario with 30 s stops and starts
/// (`make test-realistic`).
pub fn dms_seconds() -> Duration {
    std::env::var("DMSGUARD_TEST_DMS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(2), Duration::from_secs)
}

/// One scenario's lab: databases, moto, simulator and stack.
pub struct ChainLab {
    pub dbs: TestDatabases,
    pub moto: Moto,
    /// In front of moto when started with [`ChainLab::start_behind_proxy`].
    pub proxy: Option<TcpProxy>,
    pub sim: SimHandle,
    pub stack: Stack,
    pub started: Instant,
    /// How long each DMS stop and start takes in this lab ([`dms_seconds`]).
    pub dms: Duration,
}

impl ChainLab {
    /// Starts everything; `sim` and `spec` adjust the simulator's and the stack's settings.
    pub async fn start(
        tag: &str,
        sim: impl FnOnce(&mut SimConfig),
        spec: impl FnOnce(&mut StackSpec),
    ) -> anyhow::Result<Self> {
        Self::launch(tag, false, sim, spec).await
    }

    /// As [`ChainLab::start`], with every AWS call (simulator, exporter, remediator) going
    /// through a proxy the test can cut.
    pub async fn start_behind_proxy(
        tag: &str,
        sim: impl FnOnce(&mut SimConfig),
        spec: impl FnOnce(&mut StackSpec),
    ) -> anyhow::Result<Self> {
        Self::launch(tag, true, sim, spec).await
    }

    async fn launch(
        tag: &str,
        behind_proxy: bool,
        sim: impl FnOnce(&mut SimConfig),
        spec: impl FnOnce(&mut StackSpec),
    ) -> anyhow::Result<Self> {
        let started = Instant::now();
        let dbs = TestDatabases::create(tag).await?;
        let moto = Moto::spawn().await?;
        let dms = dms_seconds();
        LabControl::new(&moto.url())
            .set_dms_timing(dms, dms)
            .await?;
        let proxy = if behind_proxy {
            let addr = moto.url().trim_start_matches("http://").parse()?;
            Some(TcpProxy::start(addr).await?)
        } else {
            None
        };
        let aws_url = proxy.as_ref().map_or_else(|| moto.url(), TcpProxy::url);
        let mut sim_config = SimConfig::for_test(&dbs, &aws_url);
        sim_config.rate = 200;
        // DMS applies a backlog in bounded batches (`BatchApplyTimeoutMax`,
        // `BatchApplyMemoryLimit`, `BatchSplitSize`: "Change processing tuning settings",
        // https://docs.aws.amazon.com/dms/latest/userguide/CHAP_Tasks.CustomizingTasks.TaskSettings.ChangeProcessingTuning.html);
        // one batch of a whole backlog would be a silence of many scaled minutes here.
        sim_config.batch.max_changes = 2_000;
        sim(&mut sim_config);
        let sim = Simulator::start(sim_config).await?;
        let mut stack_spec = StackSpec::for_simulator(&dbs, &aws_url, sim.config());
        // A fix waits for `stopped` and `running` longer than a stop or a start takes.
        stack_spec.task_state_timeout = stack_spec.task_state_timeout.max(dms * 3);
        spec(&mut stack_spec);
        if let Some(cluster) = &stack_spec.cluster_identifier {
            create_cluster(&aws_url, cluster).await?;
        }
        let stack = Stack::start(stack_spec).await?;
        let lab = Self {
            dbs,
            moto,
            proxy,
            sim,
            stack,
            started,
            dms,
        };
        lab.wait_healthy().await?;
        eprintln!("lab up after {:.1} s", lab.started.elapsed().as_secs_f64());
        Ok(lab)
    }

    /// `within` plus the time one stop and one start of a task take in this lab: the wait for
    /// anything that follows a fix's stop and resume.
    pub fn after_restart(&self, within: Duration) -> Duration {
        within + self.dms * 2
    }

    /// Waits until Prometheus sees the task running and, with a workload, statements counted.
    pub async fn wait_healthy(&self) -> anyhow::Result<()> {
        self.stack
            .wait_value(
                &format!("dmsguard_dms_task_status{{task=\"{TASK}\",status=\"running\"}}"),
                self.after_restart(Duration::from_secs(60)),
                |v| v == 1.0,
            )
            .await?;
        if self.sim.config().rate == 0 {
            return Ok(());
        }
        eventually("replication to flow", Duration::from_secs(60), || async {
            Ok((self.sim.stats().applied() > 0).then_some(()))
        })
        .await?;
        self.stack
            .wait_value(
                &format!("sum(dmsguard_redshift_dms_statements_total{{table=\"{TABLE}\"}})"),
                Duration::from_secs(60),
                |v| v > 0.0,
            )
            .await?;
        Ok(())
    }

    /// Prints a step with the time since the lab started.
    pub fn step(&self, what: &str) {
        eprintln!("[{:6.1} s] {what}", self.started.elapsed().as_secs_f64());
    }

    /// Stops the workload, waits for replication to catch up and requires target = source for
    /// every table of every task.
    pub async fn assert_target_equals_source(&self) -> anyhow::Result<()> {
        self.sim.stop_workload().await?;
        self.sim.wait_caught_up(Duration::from_secs(60)).await?;
        for table in self.sim.config().tables() {
            let table = table.dotted();
            let diff = self.sim.compare_source_target(&table).await?;
            anyhow::ensure!(
                diff.is_empty(),
                "{table}: target differs from source: {diff:?}"
            );
        }
        Ok(())
    }

    /// Waits until the simulator has seen `n` stop/resume cycles of the task in moto (it
    /// polls moto every 200 ms).
    pub async fn wait_restarts(&self, n: u64) -> anyhow::Result<()> {
        self.wait_task_restarts(TASK, n).await
    }

    /// As [`ChainLab::wait_restarts`], for task `task`.
    pub async fn wait_task_restarts(&self, task: &str, n: u64) -> anyhow::Result<()> {
        eventually(
            &format!("the simulator to see {n} restart(s) of {task}"),
            self.after_restart(Duration::from_secs(10)),
            || async {
                let restarts = self.sim.stats().task(task).map_or(0, |t| t.restarts);
                anyhow::ensure!(
                    restarts <= n,
                    Violation(format!("{restarts} restarts, expected {n}"))
                );
                Ok((restarts == n).then_some(()))
            },
        )
        .await
    }

    /// The number of jobs of `fix` in the ledger.
    pub async fn job_count(&self, fix: &str) -> anyhow::Result<usize> {
        Ok(self
            .stack
            .jobs()
            .await?
            .iter()
            .filter(|j| j.fix == fix)
            .count())
    }

    /// Makes the scenario's cluster report maintenance starting `lead` from now (to the whole
    /// second) as `NextMaintenanceWindowStartTime`, and returns that start. Called once the
    /// stack is up, so the scenario's timing does not depend on how long start-up took.
    pub async fn schedule_maintenance(
        &self,
        lead: Duration,
    ) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
        use chrono::SubsecRound;
        let start = (chrono::Utc::now() + chrono::Duration::from_std(lead)?).trunc_subsecs(0)
            + chrono::Duration::seconds(1);
        LabControl::new(&self.moto.url())
            .set_maintenance(CLUSTER, Some(start), &[])
            .await?;
        Ok(start)
    }

    pub async fn finish(self) -> anyhow::Result<()> {
        let took = self.started.elapsed();
        self.stack.stop().await?;
        self.sim.stop().await?;
        self.dbs.drop().await?;
        eprintln!("scenario wall time {:.1} s", took.as_secs_f64());
        Ok(())
    }
}

/// Creates `cluster` in moto with a one-minute weekly window half a week from now, so only a
/// start the scenario sets through the lab's control plane brings maintenance near.
async fn create_cluster(aws_url: &str, cluster: &str) -> anyhow::Result<()> {
    use chrono::{Datelike, Timelike};
    let week_time = |t: chrono::DateTime<chrono::Utc>| {
        let day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
            [t.weekday().num_days_from_monday() as usize];
        format!("{day}:{:02}:{:02}", t.hour(), t.minute())
    };
    let far = chrono::Utc::now() + chrono::Duration::hours(84);
    let window = format!(
        "{}-{}",
        week_time(far),
        week_time(far + chrono::Duration::minutes(1))
    );
    let aws = AwsClients::new(&aws_config(aws_url)).await;
    aws.redshift
        .create_cluster()
        .cluster_identifier(cluster)
        .node_type("ra3.xlplus")
        .master_username("admin")
        .master_user_password("Passw0rd!")
        .preferred_maintenance_window(window)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("creating cluster {cluster}: {}", DisplayErrorContext(&e)))?;
    LabControl::new(aws_url)
        .set_maintenance(cluster, None, &[])
        .await
}
