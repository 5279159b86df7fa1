//! The whole detection-and-repair chain on the lab: exporter -> Prometheus (the real
//! `alerts/dmsguard.rules.yml`) -> Alertmanager (the real `alerts/alertmanager.example.yml`)
//! -> remediator, on a test's databases and moto (usually with the DMS simulator replicating).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use dmsguard_lab::harness::{Moto, TestDatabases};
//! use dmsguard_lab::simulator::{Fault, SimConfig, Simulator};
//! use dmsguard_lab::stack::{Stack, StackSpec};
//! let dbs = TestDatabases::create("demo").await?;
//! let moto = Moto::spawn().await?;
//! let sim = Simulator::start(SimConfig::for_test(&dbs, &moto.url())).await?;
//! let stack = Stack::start(StackSpec::for_simulator(&dbs, &moto.url(), sim.config())).await?;
//! sim.set_fault(Fault::Stall);
//! stack.wait_alert_firing("DMSTaskStalled", std::time::Duration::from_secs(90)).await?;
//! # Ok(()) }
//! ```
//!
//! Shorter intervals come from configuration only: the rules and the Alertmanager config are
//! copies of the real files with durations divided by [`StackSpec::time_scale`] (see
//! [`rewrite`]), Prometheus scrapes and evaluates every second, and the dmsguard TOML config
//! sets short probe intervals. The exporter and the remediator run as the real binaries
//! (`dmsguard-exporter`, `dmsguard-remediator serve`), separate processes on their own
//! multi-threaded runtimes as in production; each writes its log into the stack's directory.
//! Alertmanager's receivers other than the remediator go to an on-call sink the stack serves,
//! so tests can see what people would be told.

pub mod rewrite;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use dmsguard_pipeline::config::{Config, DatabaseConfig};
use serde_json::Value;
use tokio::task::JoinHandle;

pub use rewrite::{alertmanager_for_test, rules_for_test, AlertmanagerTiming};

use crate::harness::{
    eventually, free_port, workspace_binary, Alertmanager, Prometheus, TestDatabases,
    EXPORTER_USER, REMEDIATOR_USER,
};
use crate::simulator::SimConfig;

/// A file of the repository, by path from its root.
pub fn repo_file(path: &str) -> anyhow::Result<String> {
    let full = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).with_context(|| format!("reading {full}"))
}

/// What to start.
#[derive(Debug, Clone)]
pub struct StackSpec {
    pub dbs: TestDatabases,
    /// The AWS endpoint (moto, or a proxy in front of it) the exporter and remediator use.
    pub aws_endpoint: String,
    /// Attempts per AWS call (the `[aws] max_attempts` key).
    pub aws_max_attempts: u32,
    /// DMS tasks as (task, replication instance).
    pub tasks: Vec<(String, String)>,
    /// Replicated tables as (`schema.table`, task); `created_at` is their day column.
    pub tables: Vec<(String, String)>,
    /// Rule and Alertmanager durations are divided by this (60: a minute becomes a second).
    pub time_scale: u32,
    pub alertmanager: AlertmanagerTiming,
    /// `redshift.maintenance_window`, if any.
    pub maintenance_window: Option<String>,
    /// `redshift.cluster_identifier`, if any: maintenance from the cluster's schedule
    /// (`DescribeClusters`; set it in the lab with `LabControl::set_maintenance`).
    pub cluster_identifier: Option<String>,
    /// Extra lines of the `[remediator]` section (e.g. `maintenance_hold = "10s"`).
    pub remediator_settings: String,
    /// Extra sections after `[remediator]` (e.g. `[remediator.fixes.memory]`).
    pub extra_sections: String,
    /// `[clock] start`: the calendar day windows are computed with, if not the system's.
    pub clock_start: Option<DateTime<Utc>>,
    /// `remediator.task_state_timeout`: how long a fix waits for `stopped` / `running` (raise
    /// it above the lab's DMS stop and start times, see `LabControl::set_dms_timing`).
    pub task_state_timeout: Duration,
    /// Extra lines of every `[[tables]]` entry (e.g. `divergent_rows = true`).
    pub table_settings: String,
}

impl StackSpec {
    /// The tasks, instance and tables of a simulator's config, against `aws_endpoint`.
    pub fn for_simulator(dbs: &TestDatabases, aws_endpoint: &str, sim: &SimConfig) -> Self {
        Self {
            dbs: dbs.clone(),
            aws_endpoint: aws_endpoint.to_owned(),
            aws_max_attempts: 1,
            tasks: sim
                .tasks
                .iter()
                .map(|t| (t.name.clone(), sim.instance.clone()))
                .collect(),
            tables: sim
                .tasks
                .iter()
                .flat_map(|t| t.tables.iter().map(|tb| (tb.dotted(), t.name.clone())))
                .collect(),
            time_scale: 60,
            alertmanager: AlertmanagerTiming::default(),
            maintenance_window: None,
            cluster_identifier: None,
            remediator_settings: String::new(),
            extra_sections: String::new(),
            clock_start: None,
            task_state_timeout: Duration::from_secs(30),
            table_settings: String::new(),
        }
    }

    /// The dmsguard config file, connecting as database user `user` (the exporter's or the
    /// remediator's least-privilege user of `docs/grants.md`: each binary gets its own file).
    fn config_text(
        &self,
        exporter: SocketAddr,
        remediator: SocketAddr,
        token_file: &str,
        user: &str,
    ) -> String {
        let pw = &self.dbs.env.pg_password;
        let mut text = format!(
            "[source]\nurl = \"{}\"\npassword = \"{pw}\"\n\n[redshift]\nurl = \"{}\"\npassword = \"{pw}\"\n",
            TestDatabases::as_user(&self.dbs.source, user).url,
            TestDatabases::as_user(&self.dbs.redshift, user).url,
        );
        // `statement_settle` (5 minutes) at the stack's time scale, as its rules' windows are.
        text.push_str(&format!(
            "statement_settle = \"{}ms\"\n",
            300_000 / u64::from(self.time_scale.max(1))
        ));
        if let Some(window) = &self.maintenance_window {
            text.push_str(&format!("maintenance_window = \"{window}\"\n"));
        }
        if let Some(cluster) = &self.cluster_identifier {
            text.push_str(&format!("cluster_identifier = \"{cluster}\"\n"));
        }
        text.push_str(&format!(
            "\n[aws]\nendpoint_url = \"{}\"\nmax_attempts = {}\ntimeout = \"5s\"\n\n",
            self.aws_endpoint, self.aws_max_attempts
        ));
        for (task, instance) in &self.tasks {
            text.push_str(&format!(
                "[[tasks]]\nname = \"{task}\"\nreplication_instance = \"{instance}\"\n\n"
            ));
        }
        for (table, task) in &self.tables {
            text.push_str(&format!(
                "[[tables]]\nsource = \"{table}\"\nday_column = \"created_at\"\ntask = \"{task}\"\n{}\n",
                self.table_settings
            ));
        }
        // The simulator publishes CloudWatch datapoints every second: short periods let the
        // frontier follow replication within seconds.
        text.push_str(
            "[frontier]\nmargin = \"2s\"\ncloudwatch_period = \"5s\"\nrestart_settle = \"10s\"\nwait = \"90s\"\n\n",
        );
        if let Some(start) = self.clock_start {
            text.push_str(&format!("[clock]\nstart = \"{}\"\n\n", start.to_rfc3339()));
        }
        text.push_str(&format!(
            "[exporter]\nlisten = \"{exporter}\"\nstatements_lookback = \"10m\"\n\
             [exporter.redshift_statements]\ninterval = \"500ms\"\ntimeout = \"5s\"\n\
             [exporter.cloudwatch]\ninterval = \"500ms\"\ntimeout = \"5s\"\n\
             [exporter.dms]\ninterval = \"500ms\"\ntimeout = \"5s\"\n\
             [exporter.gaps]\ninterval = \"1s\"\ntimeout = \"20s\"\n\
             [exporter.maintenance]\ninterval = \"500ms\"\ntimeout = \"5s\"\n\n\
             [remediator]\nlisten = \"{remediator}\"\ntoken_file = \"{token_file}\"\n\
             task_state_timeout = \"{}ms\"\n{}\n{}\n",
            self.task_state_timeout.as_millis(),
            self.remediator_settings,
            self.extra_sections
        ));
        text.push_str(&self.dbs.ledger_section());
        text
    }
}

/// One alert as Prometheus reports it (`/api/v1/alerts`).
#[derive(Debug, Clone)]
pub struct ActiveAlert {
    pub labels: serde_json::Map<String, Value>,
    /// `pending` or `firing`.
    pub state: String,
    pub active_at: Option<DateTime<Utc>>,
    pub value: String,
}

impl ActiveAlert {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).and_then(Value::as_str)
    }
}

/// One row of the remediator's job ledger.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub id: i64,
    pub fix: String,
    pub alertname: Option<String>,
    pub alert_fingerprint: Option<String>,
    pub target: String,
    pub state: String,
    pub outcome: Option<String>,
    pub summary: Option<String>,
    pub error: Option<String>,
    pub details: Option<Value>,
    pub runner: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// One row of the ledger's scheduled steps (e.g. a maintenance resume).
#[derive(Debug, Clone)]
pub struct StepRecord {
    pub id: i64,
    pub job_id: i64,
    pub state: String,
    pub run_at: DateTime<Utc>,
    pub tasks: Vec<String>,
    pub runner: Option<String>,
    pub result: Option<String>,
    pub error: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
}

enum RemediatorRun {
    Process(tokio::process::Child),
    Down,
}

/// Webhook payloads Alertmanager sent to the receivers meant for people.
#[derive(Clone, Default)]
struct OncallInbox(Arc<Mutex<Vec<Value>>>);

/// The running chain. Dropping it kills the processes; [`Stack::stop`] shuts down cleanly.
pub struct Stack {
    dir: tempfile::TempDir,
    pub config: Config,
    config_path: PathBuf,
    pub token: String,
    exporter_addr: SocketAddr,
    remediator_addr: SocketAddr,
    remediator_binary: PathBuf,
    remediator: RemediatorRun,
    remediator_starts: u32,
    exporter: tokio::process::Child,
    oncall: OncallInbox,
    oncall_server: JoinHandle<()>,
    oncall_url: String,
    pub prometheus: Prometheus,
    pub alertmanager: Alertmanager,
    ledger: DatabaseConfig,
}

impl Stack {
    /// Writes the configs, starts the remediator, the exporter, the on-call sink,
    /// Alertmanager and Prometheus, and waits until Prometheus scrapes both services.
    pub async fn start(spec: StackSpec) -> anyhow::Result<Self> {
        crate::harness::ensure_test_credentials();
        let dir = tempfile::tempdir()?;
        let token = format!("chain-{}", run_token());
        let token_path = dir.path().join("remediator-token");
        std::fs::write(&token_path, format!("{token}\n"))?;
        let exporter_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let remediator_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let token_file = token_path.display().to_string();
        // The remediator's file; the exporter gets the same with its own database user.
        let config_text =
            spec.config_text(exporter_addr, remediator_addr, &token_file, REMEDIATOR_USER);
        let config_path = dir.path().join("dmsguard.toml");
        std::fs::write(&config_path, &config_text)?;
        let config = Config::from_toml(&config_text, &|_| None)
            .map_err(|e| anyhow::anyhow!("the stack's dmsguard config: {e}"))?;
        let exporter_text =
            spec.config_text(exporter_addr, remediator_addr, &token_file, EXPORTER_USER);
        let exporter_config_path = dir.path().join("dmsguard-exporter.toml");
        std::fs::write(&exporter_config_path, &exporter_text)?;
        Config::from_toml(&exporter_text, &|_| None)
            .map_err(|e| anyhow::anyhow!("the stack's exporter config: {e}"))?;
        let ledger = config
            .ledger_database()
            .map_err(|e| anyhow::anyhow!("the stack's dmsguard config: {e}"))?
            .clone();

        let exporter_binary = workspace_binary("dmsguard-exporter")?;
        let remediator_binary = workspace_binary("dmsguard-remediator")?;
        let mut exporter = service_command(&exporter_binary, &dir.path().join("exporter.log"))?
            .arg("--config")
            .arg(&exporter_config_path)
            .spawn()
            .with_context(|| format!("starting {}", exporter_binary.display()))?;
        wait_healthy(
            "the exporter",
            &mut exporter,
            &format!("http://{exporter_addr}/metrics"),
            &dir.path().join("exporter.log"),
        )
        .await?;

        let (oncall, oncall_server, oncall_url) = serve_oncall().await?;
        let rules = rules_for_test(&repo_file("alerts/dmsguard.rules.yml")?, spec.time_scale)?;
        let rules_path = dir.path().join("dmsguard.rules.yml");
        std::fs::write(&rules_path, rules)?;
        let am_config = alertmanager_for_test(
            &repo_file("alerts/alertmanager.example.yml")?,
            &format!("http://{remediator_addr}/alerts"),
            &token_path,
            &oncall_url,
            spec.alertmanager,
        )?;
        std::fs::write(dir.path().join("alertmanager.yml"), &am_config)?;
        let alertmanager = Alertmanager::spawn(&am_config).await?;
        let am_target = alertmanager.url().trim_start_matches("http://").to_owned();
        let prometheus_config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: ['{}']\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{am_target}']\n\
             scrape_configs:\n  - job_name: dmsguard-exporter\n    static_configs:\n      - targets: ['{exporter_addr}']\n\
             \x20 - job_name: dmsguard-remediator\n    static_configs:\n      - targets: ['{remediator_addr}']\n",
            rules_path.display()
        );
        std::fs::write(dir.path().join("prometheus.yml"), &prometheus_config)?;
        let prometheus = Prometheus::spawn(&prometheus_config).await?;

        let mut stack = Self {
            dir,
            config,
            config_path,
            token,
            exporter_addr,
            remediator_addr,
            remediator_binary,
            remediator: RemediatorRun::Down,
            remediator_starts: 0,
            exporter,
            oncall,
            oncall_server,
            oncall_url,
            prometheus,
            alertmanager,
            ledger,
        };
        stack.start_remediator().await?;
        stack.wait_scraped(Duration::from_secs(30)).await?;
        Ok(stack)
    }

    /// Starts the remediator (again) on its port, and waits until it answers `/healthz`.
    pub async fn start_remediator(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(
            matches!(self.remediator, RemediatorRun::Down),
            "the remediator is already running"
        );
        self.remediator_starts += 1;
        let log = self
            .dir
            .path()
            .join(format!("remediator-{}.log", self.remediator_starts));
        let mut child = service_command(&self.remediator_binary, &log)?
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .spawn()
            .with_context(|| format!("starting {}", self.remediator_binary.display()))?;
        let started = wait_healthy(
            "the remediator",
            &mut child,
            &format!("http://{}/healthz", self.remediator_addr),
            &log,
        )
        .await;
        self.remediator = RemediatorRun::Process(child);
        started
    }

    /// SIGKILLs the remediator binary (no shutdown, no cleanup).
    pub async fn kill_remediator(&mut self) -> anyhow::Result<()> {
        match std::mem::replace(&mut self.remediator, RemediatorRun::Down) {
            RemediatorRun::Process(mut child) => {
                child.kill().await.context("killing the remediator")?;
                Ok(())
            }
            RemediatorRun::Down => anyhow::bail!("the remediator is not running"),
        }
    }

    /// The log of the remediator binary's `n`-th start (1-based), if it ran as a binary.
    pub fn remediator_log(&self, n: u32) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("remediator-{n}.log")))
            .unwrap_or_default()
    }

    pub fn exporter_url(&self) -> String {
        format!("http://{}", self.exporter_addr)
    }

    pub fn remediator_url(&self) -> String {
        format!("http://{}", self.remediator_addr)
    }

    /// Where the configs live (`dmsguard.toml`, `dmsguard.rules.yml`, `alertmanager.yml`,
    /// `prometheus.yml`, remediator logs).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn oncall_url(&self) -> &str {
        &self.oncall_url
    }

    async fn wait_scraped(&self, deadline: Duration) -> anyhow::Result<()> {
        eventually("Prometheus scraping both services", deadline, || async {
            let up = self.prometheus.query("up == 1").await?;
            Ok((up.len() >= 2).then_some(()))
        })
        .await
    }

    /// Prometheus's alerts (pending and firing).
    pub async fn alerts(&self) -> anyhow::Result<Vec<ActiveAlert>> {
        let resp: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/alerts", self.prometheus.url()))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let alerts = resp["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(alerts
            .into_iter()
            .map(|a| ActiveAlert {
                labels: a["labels"].as_object().cloned().unwrap_or_default(),
                state: a["state"].as_str().unwrap_or_default().to_owned(),
                active_at: a["activeAt"]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc)),
                value: a["value"].as_str().unwrap_or_default().to_owned(),
            })
            .collect())
    }

    /// Waits until Prometheus has alert `name` firing; returns it.
    pub async fn wait_alert_firing(
        &self,
        name: &str,
        deadline: Duration,
    ) -> anyhow::Result<ActiveAlert> {
        eventually(&format!("alert {name} firing"), deadline, || async {
            Ok(self
                .alerts()
                .await?
                .into_iter()
                .find(|a| a.label("alertname") == Some(name) && a.state == "firing"))
        })
        .await
    }

    /// Waits until Prometheus has no alert `name`, firing or pending.
    pub async fn wait_alert_resolved(&self, name: &str, deadline: Duration) -> anyhow::Result<()> {
        eventually(&format!("alert {name} resolved"), deadline, || async {
            let alerts = self.alerts().await?;
            match alerts.iter().find(|a| a.label("alertname") == Some(name)) {
                None => Ok(Some(())),
                Some(a) => Err(anyhow::anyhow!("still {} (value {})", a.state, a.value)),
            }
        })
        .await
    }

    /// Every job in the ledger, oldest first.
    pub async fn jobs(&self) -> anyhow::Result<Vec<JobRecord>> {
        let client = dmsguard_pipeline::db::connect(&self.ledger).await?;
        let exists: bool = client
            .query_one("SELECT to_regclass('dmsguard.jobs') IS NOT NULL", &[])
            .await?
            .get(0);
        if !exists {
            return Ok(Vec::new());
        }
        let rows = client
            .query(
                "SELECT id, fix, alertname, alert_fingerprint, target, state, outcome, summary, error,
                        details, runner, created_at, finished_at, resolved_at
                 FROM dmsguard.jobs ORDER BY id",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| JobRecord {
                id: r.get(0),
                fix: r.get(1),
                alertname: r.get(2),
                alert_fingerprint: r.get(3),
                target: r.get(4),
                state: r.get(5),
                outcome: r.get(6),
                summary: r.get(7),
                error: r.get(8),
                details: r.get(9),
                runner: r.get(10),
                created_at: r.get(11),
                finished_at: r.get(12),
                resolved_at: r.get(13),
            })
            .collect())
    }

    /// Every scheduled step in the ledger, oldest first.
    pub async fn scheduled_steps(&self) -> anyhow::Result<Vec<StepRecord>> {
        let client = dmsguard_pipeline::db::connect(&self.ledger).await?;
        let rows = client
            .query(
                "SELECT id, job_id, state, run_at, tasks, runner, result, error, finished_at
                 FROM dmsguard.scheduled_steps ORDER BY id",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| StepRecord {
                id: r.get(0),
                job_id: r.get(1),
                state: r.get(2),
                run_at: r.get(3),
                tasks: r.get(4),
                runner: r.get(5),
                result: r.get(6),
                error: r.get(7),
                finished_at: r.get(8),
            })
            .collect())
    }

    /// Waits until a job of `fix` ends with `outcome` (`succeeded`, `failed`, …); returns it.
    /// Fails at once if a job of `fix` fails (unless `failed` is what it waits for).
    pub async fn wait_job(
        &self,
        fix: &str,
        outcome: &str,
        deadline: Duration,
    ) -> anyhow::Result<JobRecord> {
        let job = eventually(&format!("a {fix} job {outcome}"), deadline, || async {
            let jobs = self.jobs().await?;
            let mine: Vec<&JobRecord> = jobs.iter().filter(|j| j.fix == fix).collect();
            if let Some(job) = mine.iter().find(|j| j.outcome.as_deref() == Some(outcome)) {
                return Ok(Some(Ok((*job).clone())));
            }
            // A failed job fails the wait at once: retrying through it hides the cause.
            if let Some(failed) = mine.iter().find(|j| j.outcome.as_deref() == Some("failed")) {
                return Ok(Some(Err(anyhow::anyhow!(
                    "job {} ended failed: {:?} {:?}",
                    failed.id,
                    failed.summary,
                    failed.error
                ))));
            }
            let ended: Vec<String> = mine
                .iter()
                .filter(|j| j.outcome.is_some())
                .map(|j| format!("job {} ended {:?}: {:?}", j.id, j.outcome, j.summary))
                .collect();
            let webhooks = self
                .prometheus
                .query("dmsguard_remediator_webhooks_total > 0")
                .await
                .unwrap_or_default();
            let webhooks: Vec<String> = webhooks
                .iter()
                .map(|w| format!("{}={}", w["metric"]["result"], w["value"][1]))
                .collect();
            let states: Vec<String> = jobs
                .iter()
                .map(|j| format!("{} {} {} {}", j.id, j.fix, j.target, j.state))
                .collect();
            Err(anyhow::anyhow!(
                "no such job yet; ended: {ended:?}; jobs: {states:?}; webhooks: {webhooks:?}"
            ))
        })
        .await?;
        job
    }

    /// The value of an instant PromQL query with one result, if it has one.
    pub async fn query_value(&self, promql: &str) -> anyhow::Result<Option<f64>> {
        let result = self.prometheus.query(promql).await?;
        let Some(first) = result.first() else {
            return Ok(None);
        };
        let value = first["value"][1]
            .as_str()
            .context("a sample without a value")?
            .parse()?;
        Ok(Some(value))
    }

    /// Waits until `promql` has a result whose value satisfies `check`; returns the value.
    pub async fn wait_value(
        &self,
        promql: &str,
        deadline: Duration,
        check: impl Fn(f64) -> bool,
    ) -> anyhow::Result<f64> {
        let check = &check;
        eventually(&format!("`{promql}`"), deadline, || async move {
            match self.query_value(promql).await? {
                Some(v) if check(v) => Ok(Some(v)),
                Some(v) => Err(anyhow::anyhow!("value {v}")),
                None => Ok(None),
            }
        })
        .await
    }

    /// Notifications the on-call receivers got so far (Alertmanager webhook bodies).
    pub fn oncall_notifications(&self) -> Vec<Value> {
        self.oncall
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until people were notified of alert `name` with `status` (`firing`/`resolved`).
    pub async fn wait_oncall(
        &self,
        name: &str,
        status: &str,
        deadline: Duration,
    ) -> anyhow::Result<Value> {
        eventually(
            &format!("on-call told {name} {status}"),
            deadline,
            || async {
                Ok(self.oncall_notifications().into_iter().find_map(|n| {
                    n["alerts"].as_array()?.iter().find_map(|a| {
                        (a["labels"]["alertname"].as_str() == Some(name)
                            && a["status"].as_str() == Some(status))
                        .then(|| a.clone())
                    })
                }))
            },
        )
        .await
    }

    /// The exporter's log so far.
    pub fn exporter_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("exporter.log")).unwrap_or_default()
    }

    /// Stops the exporter and the remediator (SIGTERM, as systemd would, and waits for them to
    /// exit), then the other processes. Either exiting unsuccessfully is an error.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let RemediatorRun::Process(mut child) =
            std::mem::replace(&mut self.remediator, RemediatorRun::Down)
        {
            let log = self.remediator_log(self.remediator_starts);
            terminate("the remediator", &mut child, &log).await?;
        }
        let log = self.exporter_log();
        terminate("the exporter", &mut self.exporter, &log).await?;
        self.oncall_server.abort();
        Ok(())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // The children are killed on drop (`kill_on_drop`).
        self.oncall_server.abort();
    }
}

/// A command for a service binary: its output into `log`, killed if the stack is dropped.
fn service_command(
    binary: &std::path::Path,
    log: &std::path::Path,
) -> anyhow::Result<tokio::process::Command> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut command = crate::harness::processes::child_command(binary);
    command
        .env(
            "RUST_LOG",
            std::env::var("DMSGUARD_STACK_LOG").unwrap_or_else(|_| "info".to_owned()),
        )
        .stdout(file.try_clone()?)
        .stderr(file)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    Ok(command)
}

/// Waits until `url` answers 2xx, failing at once (with the log) if the process exits first.
async fn wait_healthy(
    what: &str,
    child: &mut tokio::process::Child,
    url: &str,
    log: &std::path::Path,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        // A process that exited will never be healthy, whoever answers its port.
        if let Ok(Some(status)) = child.try_wait() {
            anyhow::bail!(
                "{what} exited ({status}) before it was healthy:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        let last = match reqwest::get(url).await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => format!("HTTP {}", r.status()),
            Err(e) => e.to_string(),
        };
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{what} not healthy after 60 s ({url}: {last}):\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM, then waits up to 20 s for a clean exit (SIGKILL after that).
async fn terminate(what: &str, child: &mut tokio::process::Child, log: &str) -> anyhow::Result<()> {
    if let Some(pid) = child.id() {
        let sent = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .context("running kill")?;
        anyhow::ensure!(sent.success(), "kill -TERM {pid} failed");
    }
    match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
        Ok(status) => {
            let status = status.with_context(|| format!("waiting for {what}"))?;
            anyhow::ensure!(status.success(), "{what} exited with {status}:\n{log}");
            Ok(())
        }
        Err(_) => {
            let _ = child.kill().await;
            anyhow::bail!("{what} did not stop within 20 s of SIGTERM:\n{log}")
        }
    }
}

/// A webhook receiver standing in for the people on call.
async fn serve_oncall() -> anyhow::Result<(OncallInbox, JoinHandle<()>, String)> {
    use axum::routing::post;
    let inbox = OncallInbox::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/oncall", listener.local_addr()?);
    let app = axum::Router::new()
        .route(
            "/oncall",
            post(
                |axum::extract::State(inbox): axum::extract::State<OncallInbox>,
                 axum::Json(body): axum::Json<Value>| async move {
                    inbox.0.lock().unwrap_or_else(|e| e.into_inner()).push(body);
                    "ok"
                },
            ),
        )
        .with_state(inbox.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((inbox, server, url))
}

/// A random-enough token for one test run.
fn run_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", nanos, std::process::id())
}
