//! Set-up shared by the fix tests on the DMS simulator: a test's own databases and moto, the
//! simulator replicating with a workload, the remediator's config for its tasks and tables,
//! moto task facts, the job ledger, the CLI binary, and the final source/target check.

#![allow(dead_code)]

use std::process::Output;
use std::time::Duration;

use dmsguard_lab::harness::{self, eventually, Moto, TestDatabases};
use dmsguard_lab::simulator::{SimConfig, SimHandle, SimTable, SimTask, Simulator};
use dmsguard_pipeline::aws::AwsClients;
use dmsguard_pipeline::config::Config;
use dmsguard_pipeline::dms_tasks::DmsTasks;
use serde_json::Value;

/// The first task (`SimConfig::for_test`): `public.orders` on `lab-instance`.
pub const TASK: &str = "lab-task";
/// The second task of two-task labs: `public.items` on the same instance.
pub const TASK_B: &str = "lab-task-b";
pub const INSTANCE: &str = "lab-instance";
pub const ORDERS: &str = "public.orders";
pub const ITEMS: &str = "public.items";
pub const TOKEN: &str = "simulator-fixes-token-0123456789abcdef";

/// A task as moto reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct MotoTask {
    pub status: String,
    /// `ReplicationTaskStartDate`: moto sets it at every start or resume.
    pub started: Option<f64>,
    /// `ReplicationTaskStats.StopDate`: the last stop.
    pub stopped: Option<f64>,
}

/// One job of the ledger.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: i64,
    pub fix: String,
    pub state: String,
    pub outcome: Option<String>,
    pub summary: Option<String>,
    pub error: Option<String>,
    pub details: Value,
}

impl JobRow {
    pub fn outcome(&self) -> &str {
        self.outcome.as_deref().unwrap_or("")
    }
}

/// A running simulator on a test's own databases and moto.
pub struct SimLab {
    pub dbs: TestDatabases,
    pub moto: Moto,
    pub aws: AwsClients,
    pub sim: SimHandle,
}

impl SimLab {
    /// Starts the simulator (workload at 300 changes/s) on fresh databases and a fresh moto;
    /// `two_tasks` adds task `lab-task-b` replicating `public.items` on the same instance.
    pub async fn start(
        tag: &str,
        two_tasks: bool,
        tune: impl FnOnce(&mut SimConfig),
    ) -> anyhow::Result<Self> {
        let dbs = TestDatabases::create(tag).await?;
        let moto = Moto::spawn().await?;
        let aws = AwsClients::new(&harness::aws_config(&moto.url())).await;
        let mut config = SimConfig::for_test(&dbs, &moto.url());
        config.rate = 300;
        if two_tasks {
            config.tasks.push(SimTask {
                name: TASK_B.to_owned(),
                tables: vec![SimTable::new(ITEMS)?],
            });
        }
        tune(&mut config);
        let sim = Simulator::start(config).await?;
        Ok(Self {
            dbs,
            moto,
            aws,
            sim,
        })
    }

    /// The config file: the simulator's tasks and tables (day column `created_at`) and
    /// `[remediator]` with `extra` keys appended.
    pub fn config_text(&self, extra: &str) -> String {
        let pw = &self.dbs.env.pg_password;
        let mut text = format!(
            "[source]\nurl = \"{}\"\npassword = \"{pw}\"\n\n[redshift]\nurl = \"{}\"\npassword = \"{pw}\"\n\n\
             [aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nmax_attempts = 2\ntimeout = \"10s\"\n\n",
            // The remediator's least-privilege user of docs/grants.md, never a superuser.
            self.dbs.remediator_source().url,
            self.dbs.remediator_redshift().url,
            self.moto.url()
        );
        let sim = self.sim.config();
        for task in &sim.tasks {
            text.push_str(&format!(
                "[[tasks]]\nname = \"{}\"\nreplication_instance = \"{}\"\n\n",
                task.name, sim.instance
            ));
        }
        for task in &sim.tasks {
            for table in &task.tables {
                text.push_str(&format!(
                    "[[tables]]\nsource = \"{}\"\nday_column = \"created_at\"\ntask = \"{}\"\n\n",
                    table.dotted(),
                    task.name
                ));
            }
        }
        text.push_str(
            "[frontier]\nmargin = \"2s\"\ncloudwatch_period = \"5s\"\nrestart_settle = \"10s\"\nwait = \"90s\"\n\n",
        );
        text.push_str(&format!(
            "[remediator]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\ntask_state_timeout = \"20s\"\n{extra}"
        ));
        text.push_str(&self.dbs.ledger_section());
        text
    }

    pub fn config(&self, extra: &str) -> Config {
        Config::from_toml(&self.config_text(extra), &|_| None).expect("test config is valid")
    }

    /// Task operations straight on moto (as an operator would do them).
    pub fn tasks_api(&self) -> DmsTasks {
        DmsTasks::new(self.aws.dms.clone(), Duration::from_secs(20))
            .with_poll_interval(Duration::from_millis(100))
    }

    pub async fn moto_task(&self, name: &str) -> anyhow::Result<MotoTask> {
        let out = self.aws.dms.describe_replication_tasks().send().await?;
        let task = out
            .replication_tasks()
            .iter()
            .find(|t| t.replication_task_identifier() == Some(name))
            .ok_or_else(|| anyhow::anyhow!("task {name} is not in moto"))?;
        Ok(MotoTask {
            status: task.status().unwrap_or_default().to_owned(),
            started: task.replication_task_start_date().map(|d| d.as_secs_f64()),
            stopped: task
                .replication_task_stats()
                .and_then(|s| s.stop_date())
                .map(|d| d.as_secs_f64()),
        })
    }

    /// The ledger's jobs (in the source database), in id order.
    pub async fn jobs(&self) -> anyhow::Result<Vec<JobRow>> {
        let client = self.dbs.source_client().await?;
        let rows = client
            .query(
                "SELECT id, fix, state, outcome, summary, error, details FROM dmsguard.jobs ORDER BY id",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| JobRow {
                id: r.get("id"),
                fix: r.get("fix"),
                state: r.get("state"),
                outcome: r.get("outcome"),
                summary: r.get("summary"),
                error: r.get("error"),
                details: r.get::<_, Option<Value>>("details").unwrap_or(Value::Null),
            })
            .collect())
    }

    /// Waits until the ledger holds `n` jobs, none queued or running; returns them.
    pub async fn finished_jobs(&self, n: usize) -> anyhow::Result<Vec<JobRow>> {
        eventually(
            &format!("{n} finished jobs"),
            // A generous bound: a job may wait for DMS stops and starts and for replication,
            // and CI runs several test binaries at once.
            Duration::from_secs(120),
            || async {
                let jobs = self.jobs().await?;
                let done = jobs.len() == n
                    && jobs
                        .iter()
                        .all(|j| j.state != "queued" && j.state != "running");
                Ok(done.then_some(jobs))
            },
        )
        .await
    }

    /// Waits until the simulator has applied `n` more changes than now.
    pub async fn applied_more(&self, n: u64) -> anyhow::Result<()> {
        let from = self.sim.stats().applied();
        eventually(
            &format!("{n} more changes applied"),
            Duration::from_secs(30),
            || async { Ok((self.sim.stats().applied() >= from + n).then_some(())) },
        )
        .await
    }

    /// Stops the workload, waits until every change is applied, and checks every table: the
    /// target equals the source row for row and column for column, no id twice.
    pub async fn assert_converges(&self) -> anyhow::Result<()> {
        self.sim.stop_workload().await?;
        self.sim.wait_caught_up(Duration::from_secs(40)).await?;
        for table in self.sim.config().tables() {
            let diff = self.sim.compare_source_target(&table.dotted()).await?;
            assert!(diff.is_empty(), "{diff}");
            assert!(diff.source_rows > 0, "{diff}");
            assert_eq!(
                self.duplicated_ids(&table.dotted()).await?,
                Vec::<i64>::new()
            );
        }
        Ok(())
    }

    /// Ids present more than once in a target table.
    pub async fn duplicated_ids(&self, table: &str) -> anyhow::Result<Vec<i64>> {
        let client = self.dbs.redshift_client().await?;
        let table: SimTable = table.parse()?;
        Ok(client
            .query(
                &format!(
                    "SELECT id FROM {} GROUP BY id HAVING count(*) > 1 ORDER BY id",
                    table.name.quoted()
                ),
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// How many rows a target table has with these ids.
    pub async fn target_count(&self, table: &str, ids: &[i64]) -> anyhow::Result<i64> {
        let client = self.dbs.redshift_client().await?;
        let table: SimTable = table.parse()?;
        Ok(client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} WHERE id = ANY($1)",
                    table.name.quoted()
                ),
                &[&ids],
            )
            .await?
            .get(0))
    }

    /// Stops the simulator and drops the databases.
    pub async fn finish(self) -> anyhow::Result<()> {
        self.sim.stop().await?;
        self.dbs.drop().await
    }
}

/// Runs `scenario` on `lab`, then always stops the simulator and drops the databases; a panic
/// in the scenario is raised again afterwards.
pub async fn run_scenario<F>(lab: SimLab, scenario: F) -> anyhow::Result<()>
where
    F: for<'a> FnOnce(&'a SimLab) -> futures::future::LocalBoxFuture<'a, anyhow::Result<()>>,
{
    use futures::FutureExt;
    let outcome = std::panic::AssertUnwindSafe(scenario(&lab))
        .catch_unwind()
        .await;
    let finished = lab.finish().await;
    match outcome {
        Ok(result) => result.and(finished),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs the `dmsguard-remediator` binary with `config` and `args`, without blocking the
/// runtime the simulator runs on.
pub async fn run_cli(config: &str, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    harness::ensure_test_credentials();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("dmsguard.toml");
    std::fs::write(&path, config)?;
    let out: Output = tokio::process::Command::new(env!("CARGO_BIN_EXE_dmsguard-remediator"))
        .arg("--config")
        .arg(&path)
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .await?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}
