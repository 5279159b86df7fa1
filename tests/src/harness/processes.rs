//! Per-test service processes: moto, Prometheus, Alertmanager. Each is killed on drop.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

use super::{eventually, free_port, LabEnv};

/// A service process bound to a loopback port, with its work directory.
struct Service {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Service {
    async fn start(
        name: &str,
        mut command: Command,
        port: u16,
        dir: tempfile::TempDir,
        ready_path: &str,
    ) -> anyhow::Result<Self> {
        let log = dir.path().join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = command
            .stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name} (is the lab installed? run tests/lab/up)"))?;
        let mut service = Self {
            child,
            port,
            _dir: dir,
            log,
        };
        let url = format!("http://127.0.0.1:{port}{ready_path}");
        let http = reqwest::Client::new();
        let ready = eventually(&format!("{name} ready"), Duration::from_secs(30), || {
            let http = http.clone();
            let url = url.clone();
            async move {
                let resp = http.get(&url).send().await?;
                Ok(resp.status().is_success().then_some(()))
            }
        })
        .await;
        if let Err(e) = ready {
            let _ = service.child.kill().await;
            let tail = std::fs::read_to_string(&service.log).unwrap_or_default();
            let tail: String = tail.lines().rev().take(20).collect::<Vec<_>>().join("\n");
            anyhow::bail!("{e}\n{name} log (last lines, newest first):\n{tail}");
        }
        Ok(service)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A moto server of this test's own: fresh AWS state.
pub struct Moto {
    service: Service,
}

impl Moto {
    pub async fn spawn() -> anyhow::Result<Self> {
        super::ensure_test_credentials();
        let env = LabEnv::from_env();
        let port = free_port();
        let dir = tempfile::tempdir()?;
        let mut cmd = Command::new(&env.moto_python);
        cmd.arg(&env.moto_launcher)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(dir.path());
        let service = Service::start("moto", cmd, port, dir, "/moto-api/").await?;
        Ok(Self { service })
    }

    pub fn url(&self) -> String {
        self.service.url()
    }

    /// Kills the server (to test how callers behave while AWS is unreachable).
    pub async fn kill(&mut self) {
        let _ = self.service.child.kill().await;
    }
}

/// A Prometheus of this test's own, with the given `prometheus.yml` content.
pub struct Prometheus {
    service: Service,
}

impl Prometheus {
    /// Starts Prometheus; `config` may reference rule files by absolute path.
    pub async fn spawn(config: &str) -> anyhow::Result<Self> {
        let port = free_port();
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-lifecycle");
        let service = Service::start("prometheus", cmd, port, dir, "/-/ready").await?;
        Ok(Self { service })
    }

    pub fn url(&self) -> String {
        self.service.url()
    }

    /// Runs an instant query and returns the `data.result` array.
    pub async fn query(&self, promql: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let resp: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url()))
            .query(&[("query", promql)])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(resp["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

/// An Alertmanager of this test's own, with the given `alertmanager.yml` content.
pub struct Alertmanager {
    service: Service,
}

impl Alertmanager {
    pub async fn spawn(config: &str) -> anyhow::Result<Self> {
        let port = free_port();
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("alertmanager.yml");
        std::fs::write(&config_path, config)?;
        let mut cmd = Command::new("prometheus-alertmanager");
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=");
        let service = Service::start("alertmanager", cmd, port, dir, "/-/ready").await?;
        Ok(Self { service })
    }

    pub fn url(&self) -> String {
        self.service.url()
    }

    /// Posts alerts to Alertmanager's v2 API, as Prometheus would.
    pub async fn post_alerts(&self, alerts: &serde_json::Value) -> anyhow::Result<()> {
        reqwest::Client::new()
            .post(format!("{}/api/v2/alerts", self.url()))
            .json(alerts)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}
