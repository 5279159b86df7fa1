//! Shared set-up of the remediator tests: a lab (databases, moto with DMS tasks), configs,
//! in-process remediators, webhook payloads and metric reading.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use dmsguard_lab::harness::{self, eventually, Moto, TestDatabases};
use dmsguard_pipeline::aws::AwsClients;
use dmsguard_pipeline::config::Config;
use dmsguard_pipeline::dms_tasks::{DmsTasks, TaskState};
use dmsguard_remediator::Remediator;
use serde_json::{json, Value};

#[path = "../alert_rules/mod.rs"]
pub mod alert_rules;

pub const TOKEN: &str = "webhook-token-for-tests-0123456789";

/// A test's databases and moto, with DMS tasks created and running.
pub struct Lab {
    pub dbs: TestDatabases,
    pub moto: Moto,
    pub aws: AwsClients,
    pub tasks: Vec<(String, String)>,
}

impl Lab {
    /// Creates fresh databases, a moto, and `tasks` as (task, replication instance), all running.
    pub async fn start(tag: &str, tasks: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dbs = TestDatabases::create(tag).await?;
        let moto = Moto::spawn().await?;
        let aws = AwsClients::new(&harness::aws_config(&moto.url())).await;
        for (task, instance) in tasks {
            let arn = harness::create_dms_task(&aws, instance, task).await?;
            harness::start_dms_task(&aws, &arn).await?;
        }
        Ok(Self {
            dbs,
            moto,
            aws,
            tasks: tasks
                .iter()
                .map(|(t, i)| (t.to_string(), i.to_string()))
                .collect(),
        })
    }

    /// The config file text; `remediator` is the `[remediator]` section and its subsections.
    pub fn config_text(&self, remediator: &str) -> String {
        let pw = &self.dbs.env.pg_password;
        let mut text = format!(
            "[source]\nurl = \"{}\"\npassword = \"{pw}\"\n\n[redshift]\nurl = \"{}\"\npassword = \"{pw}\"\n\n\
             [aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nmax_attempts = 1\ntimeout = \"10s\"\n\n",
            // The remediator's least-privilege user of docs/grants.md, never a superuser.
            self.dbs.remediator_source().url,
            self.dbs.remediator_redshift().url,
            self.moto.url()
        );
        for (task, instance) in &self.tasks {
            text.push_str(&format!(
                "[[tasks]]\nname = \"{task}\"\nreplication_instance = \"{instance}\"\n\n"
            ));
        }
        text.push_str(remediator);
        text.push_str(&self.dbs.ledger_section());
        text
    }

    pub fn config(&self, remediator: &str) -> Config {
        Config::from_toml(&self.config_text(remediator), &|_| None).expect("test config is valid")
    }

    pub fn tasks_api(&self) -> DmsTasks {
        DmsTasks::new(self.aws.dms.clone(), Duration::from_secs(10))
    }

    pub async fn task(&self, name: &str) -> anyhow::Result<TaskState> {
        Ok(self.tasks_api().describe(name).await?)
    }

    /// Whether the task was ever stopped (moto records the stop date).
    pub async fn was_stopped(&self, name: &str) -> anyhow::Result<bool> {
        let out = self.aws.dms.describe_replication_tasks().send().await?;
        let task = out
            .replication_tasks()
            .iter()
            .find(|t| t.replication_task_identifier() == Some(name))
            .expect("task exists");
        Ok(task
            .replication_task_stats()
            .and_then(|s| s.stop_date())
            .is_some())
    }

    /// Rows of the ledger's job table (the tests' ledger is their source database).
    pub async fn jobs(&self) -> anyhow::Result<Vec<tokio_postgres::Row>> {
        let client = self.dbs.source_client().await?;
        Ok(client
            .query(
                "SELECT id, state, outcome, runner, acting_at, finished_at, details, resolved_at, fix, summary, error
                 FROM dmsguard.jobs ORDER BY id",
                &[],
            )
            .await?)
    }

    /// Waits until `n` jobs exist and none is queued or running; returns them.
    pub async fn finished_jobs(&self, n: usize) -> anyhow::Result<Vec<tokio_postgres::Row>> {
        eventually(
            &format!("{n} finished jobs"),
            Duration::from_secs(60),
            || async {
                let jobs = self.jobs().await?;
                let done = jobs.len() == n
                    && jobs.iter().all(|r| {
                        let state: &str = r.get("state");
                        state != "queued" && state != "running"
                    });
                Ok(done.then_some(jobs))
            },
        )
        .await
    }
}

/// The `[remediator]` section tests start from, listening on `listen`.
pub fn remediator_section(listen: &str, extra: &str) -> String {
    format!(
        "[remediator]\nlisten = \"{listen}\"\ntoken = \"{TOKEN}\"\ntask_state_timeout = \"20s\"\n{extra}"
    )
}

/// A remediator running in this process.
pub struct Running {
    pub addr: SocketAddr,
    pub runner: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn spawn(config: Config) -> anyhow::Result<Self> {
        let app = Remediator::build(config).await?;
        let addr = app.addr();
        let runner = app.runner().to_owned();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(app.run_until(async move {
            let _ = rx.await;
        }));
        Ok(Self {
            addr,
            runner,
            stop: Some(tx),
            handle,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn post(&self, token: Option<&str>, body: Vec<u8>) -> anyhow::Result<(u16, String)> {
        post_alerts(&self.url("/alerts"), token, body).await
    }

    pub async fn metric(&self, series: &str) -> anyhow::Result<f64> {
        let text = reqwest::get(self.url("/metrics")).await?.text().await?;
        metric_value(&text, series)
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.handle.await?
    }
}

pub async fn post_alerts(
    url: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> anyhow::Result<(u16, String)> {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

/// The value of one series (`name{labels}` exactly as exposed) in an exposition.
pub fn metric_value(text: &str, series: &str) -> anyhow::Result<f64> {
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(series) {
            if let Some(value) = rest.strip_prefix(' ') {
                return Ok(value.split_whitespace().next().unwrap_or("").parse()?);
            }
        }
    }
    anyhow::bail!("series {series} not found in:\n{text}")
}

/// One alert as Alertmanager sends it.
pub fn alert(name: &str, labels: &[(&str, &str)], fingerprint: &str, starts_at: &str) -> Value {
    let mut l = serde_json::Map::new();
    l.insert("alertname".into(), json!(name));
    for (k, v) in labels {
        l.insert(k.to_string(), json!(v));
    }
    json!({
        "status": "firing",
        "labels": l,
        "annotations": {"summary": "test"},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": fingerprint,
    })
}

/// A version 4 webhook body carrying `alerts`.
pub fn payload(alerts: Vec<Value>) -> Value {
    json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"test\"}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "remediator",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager",
        "alerts": alerts,
    })
}

pub fn body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// A firing alert with the labels the real rule gives it (see [`alert_rules::rule_labels`]).
pub fn rule_alert(
    alertname: &str,
    values: &[(&str, &str)],
    fingerprint: &str,
    starts_at: &str,
) -> Value {
    let labels = alert_rules::rule_labels(alertname, values);
    let pairs: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    alert(alertname, &pairs, fingerprint, starts_at)
}
