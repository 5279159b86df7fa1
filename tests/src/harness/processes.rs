//! Per-test service processes: moto, Prometheus, Alertmanager. Each is killed on drop.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

use super::{free_port, LabEnv};

enum StartError {
    /// The child exited before it was ready (e.g. its port was taken): worth another port.
    Exited(anyhow::Error),
    Other(anyhow::Error),
}

/// A service process bound to a loopback port, with its work directory.
struct Service {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

/// Attempts at starting a service, each on a new port, when the child exits early (another
/// process took its port between [`free_port`] and the child's bind).
const START_ATTEMPTS: u32 = 3;

impl Service {
    /// Starts `command(port)` on a free port and waits until `ready_path` answers; fails at
    /// once when the child exits, and tries again on another port (up to [`START_ATTEMPTS`]).
    async fn start(
        name: &str,
        mut command: impl FnMut(u16, &std::path::Path) -> Command,
        ready_path: &str,
    ) -> anyhow::Result<Self> {
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let dir = tempfile::tempdir()?;
            match Self::start_once(name, command(port, dir.path()), port, dir, ready_path).await {
                Ok(service) => return Ok(service),
                Err(StartError::Exited(e)) => last = Some(e),
                Err(StartError::Other(e)) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("{name} did not start")))
    }

    async fn start_once(
        name: &str,
        mut command: Command,
        port: u16,
        dir: tempfile::TempDir,
        ready_path: &str,
    ) -> Result<Self, StartError> {
        let log = dir.path().join(format!("{name}.log"));
        let out = std::fs::File::create(&log).map_err(|e| StartError::Other(e.into()))?;
        let err = out.try_clone().map_err(|e| StartError::Other(e.into()))?;
        let child = command
            .stdout(err)
            .stderr(out)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name} (is the lab installed? run tests/lab/up)"))
            .map_err(StartError::Other)?;
        let mut service = Self {
            child,
            port,
            _dir: dir,
            log,
        };
        let url = format!("http://127.0.0.1:{port}{ready_path}");
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            // The child first: a service that exited cannot be ready, whoever answers the port.
            if let Ok(Some(status)) = service.child.try_wait() {
                return Err(StartError::Exited(anyhow::anyhow!(
                    "{name} exited ({status}) before it was ready on port {port}\n{}",
                    service.log_tail()
                )));
            }
            let last = match http.get(&url).send().await {
                Ok(resp) if resp.status().is_success() => return Ok(service),
                Ok(resp) => format!("HTTP {}", resp.status()),
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                let _ = service.child.kill().await;
                return Err(StartError::Other(anyhow::anyhow!(
                    "{name} not ready on port {port} after 30 s: {last}\n{}",
                    service.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_tail(&self) -> String {
        let tail = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: String = tail.lines().rev().take(20).collect::<Vec<_>>().join("\n");
        format!("log (last lines, newest first):\n{tail}")
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
        let command = |port: u16, dir: &std::path::Path| {
            let mut cmd = child_command(&env.moto_python);
            cmd.arg(&env.moto_launcher)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .current_dir(dir);
            cmd
        };
        let service = Service::start("moto", command, "/moto-api/").await?;
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
        let command = |port: u16, dir: &std::path::Path| {
            let config_path = dir.join("prometheus.yml");
            let mut cmd = child_command("prometheus");
            if let Err(e) = std::fs::write(&config_path, config) {
                // Prometheus then exits naming the missing file; say why too.
                eprintln!("writing {}: {e}", config_path.display());
            }
            cmd.arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--web.enable-lifecycle");
            cmd
        };
        let service = Service::start("prometheus", command, "/-/ready").await?;
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
        let command = |port: u16, dir: &std::path::Path| {
            let config_path = dir.join("alertmanager.yml");
            if let Err(e) = std::fs::write(&config_path, config) {
                eprintln!("writing {}: {e}", config_path.display());
            }
            let mut cmd = child_command("prometheus-alertmanager");
            cmd.arg(format!("--config.file={}", config_path.display()))
                .arg(format!("--storage.path={}", dir.join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--cluster.listen-address=");
            cmd
        };
        let service = Service::start("alertmanager", command, "/-/ready").await?;
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

/// A command for a child the harness starts, which dies with the test process however that
/// ends: a test killed from outside (a CI timeout, ^C, SIGKILL) runs no destructor, so
/// `kill_on_drop` alone would leave moto, Prometheus, Alertmanager and dmsguard running.
/// util-linux's `setpriv --pdeathsig KILL` sets Linux's parent-death signal and then execs the
/// program (same pid), so the child gets SIGKILL when the thread that started it exits.
pub fn child_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("setpriv");
    command.args(["--pdeathsig", "KILL", "--"]).arg(program);
    command
}
