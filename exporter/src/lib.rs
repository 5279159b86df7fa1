//! dmsguard-exporter: observes a DMS pipeline and exports what it sees as Prometheus metrics.

pub mod metrics;
pub mod probes;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::response::{Html, Response};
use axum::routing::get;
use axum::Router;
use dmsguard_pipeline::aws::AwsClients;
use dmsguard_pipeline::config::{Config, ConfigError};
use dmsguard_pipeline::frontier::ProgressBoard;
use dmsguard_pipeline::service::{self, LogFormat, LogLevel};
use dmsguard_pipeline::web::{WebConfig, WebHandle};
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use crate::metrics::{Metrics, ProbeName};
use crate::probes::cloudwatch::CloudWatchProbe;
use crate::probes::dms::DmsProbe;
use crate::probes::gaps::GapsProbe;
use crate::probes::maintenance::{MaintenanceProbe, WindowSource};
use crate::probes::redshift_statements::RedshiftStatementsProbe;
use crate::probes::StatusBoard;

/// Command line of `dmsguard-exporter`.
#[derive(Debug, clap::Parser)]
#[command(name = "dmsguard-exporter", version, about)]
pub struct Cli {
    /// Path of the TOML config file.
    #[arg(long, short, env = "DMSGUARD_CONFIG", default_value = "dmsguard.toml")]
    pub config: PathBuf,
    /// Validate the config and exit (0 if valid, 64 if not).
    #[arg(long)]
    pub check_config: bool,
    /// Check every connection (TLS state, certificate), table grant, system view and AWS call
    /// the config needs, print a checklist with a fix per failure, and exit (0 if all pass, 1 if not).
    #[arg(long)]
    pub preflight: bool,
    /// Log format: text, logfmt or json.
    #[arg(long = "log.format", alias = "log-format", default_value = "text")]
    pub log_format: LogFormat,
    /// Least severe level logged: debug, info, warn or error (`RUST_LOG`, when set, wins).
    #[arg(long = "log.level", default_value = "info")]
    pub log_level: LogLevel,
    /// Address to serve on; overrides `exporter.listen`.
    #[arg(long = "web.listen-address", value_name = "ADDR")]
    pub web_listen_address: Option<SocketAddr>,
    /// exporter-toolkit web configuration file (TLS, client CA, basic auth users); overrides
    /// `exporter.web_config_file`.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,
    /// Path the metrics are served on; overrides `exporter.telemetry_path`.
    #[arg(long = "web.telemetry-path", value_name = "PATH")]
    pub web_telemetry_path: Option<String>,
}

impl Cli {
    /// The config with the `--web.*` flags applied over the TOML's settings.
    pub fn apply_flags(&self, mut config: Config) -> Result<Config, ConfigError> {
        if let Some(addr) = self.web_listen_address {
            config.exporter.listen = addr;
        }
        if let Some(file) = &self.web_config_file {
            config.exporter.web_config_file = Some(file.clone());
        }
        if let Some(path) = &self.web_telemetry_path {
            dmsguard_pipeline::config::check_telemetry_path(path).map_err(|message| {
                ConfigError::Key {
                    key: "--web.telemetry-path".into(),
                    message,
                }
            })?;
            config.exporter.telemetry_path = path.clone();
        }
        Ok(config)
    }
}

/// The built exporter: bound listener, metrics, and the probes' clients.
pub struct Exporter {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    config: Arc<Config>,
    aws: AwsClients,
    metrics: Metrics,
    state: Arc<AppState>,
    web: WebHandle,
}

struct AppState {
    registry: Registry,
    board: Arc<StatusBoard>,
    telemetry_path: String,
}

impl Exporter {
    /// Registers the metrics, builds the AWS clients, reads `exporter.web_config_file` and
    /// binds the listen address from the config (port 0 picks a free port). Probes start with
    /// [`Exporter::run_until`].
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let web = match &config.exporter.web_config_file {
            Some(path) => WebConfig::load(path)?,
            None => WebConfig::default(),
        };
        let (listener, addr) = service::bind(config.exporter.listen)
            .await
            .with_context(|| format!("binding {}", config.exporter.listen))?;
        let mut registry = Registry::with_prefix(metrics::PREFIX);
        let metrics = Metrics::register(&mut registry);
        metrics.thresholds.set(&config.remediator);
        let aws = AwsClients::new(&config.aws).await;
        Ok(Self {
            listener,
            addr,
            aws,
            metrics,
            state: Arc::new(AppState {
                registry,
                board: Arc::new(StatusBoard::default()),
                telemetry_path: config.exporter.telemetry_path.clone(),
            }),
            web: WebHandle::new(web, &[]),
            config: Arc::new(config),
        })
    }

    /// The address `/metrics` is served on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts every enabled probe in the background.
    fn start_probes(&self) -> anyhow::Result<Vec<JoinHandle<()>>> {
        let c = &self.config;
        let e = &c.exporter;
        let board = &self.state.board;
        let probe_metrics = || self.metrics.probes.clone();
        let mut handles = Vec::new();
        // CloudWatch's target latency tells the gaps probe how far replication has got.
        let progress = ProgressBoard::default();
        let off = |name: ProbeName, reason: &str| {
            tracing::info!(probe = %name, reason, "Probe not started.");
            board.disabled(name, reason);
        };
        if e.redshift_statements.enabled {
            let probe = RedshiftStatementsProbe::new(c.clone(), self.metrics.statements.clone());
            handles.push(probes::spawn(
                probe,
                &e.redshift_statements,
                probe_metrics(),
                board.clone(),
            ));
        } else {
            off(ProbeName::RedshiftStatements, "disabled in config");
        }
        if !e.cloudwatch.enabled {
            off(ProbeName::Cloudwatch, "disabled in config");
        } else if c.tasks.is_empty() {
            off(ProbeName::Cloudwatch, "no [[tasks]] configured");
        } else {
            let probe = CloudWatchProbe::new(
                c.clone(),
                self.aws.cloudwatch.clone(),
                self.aws.dms.clone(),
                self.metrics.cloudwatch.clone(),
                progress.clone(),
            );
            handles.push(probes::spawn(
                probe,
                &e.cloudwatch,
                probe_metrics(),
                board.clone(),
            ));
        }
        if !e.dms.enabled {
            off(ProbeName::Dms, "disabled in config");
        } else if c.tasks.is_empty() {
            off(ProbeName::Dms, "no [[tasks]] configured");
        } else {
            let probe = DmsProbe::new(c.clone(), self.aws.dms.clone(), self.metrics.dms.clone());
            handles.push(probes::spawn(probe, &e.dms, probe_metrics(), board.clone()));
        }
        if !e.gaps.enabled {
            off(ProbeName::Gaps, "disabled in config");
        } else if c.tables.is_empty() {
            off(ProbeName::Gaps, "no [[tables]] configured");
        } else {
            let probe = GapsProbe::new(c.clone(), self.metrics.gaps.clone(), progress)
                .context("configuring the gaps probe")?;
            handles.push(probes::spawn(
                probe,
                &e.gaps,
                probe_metrics(),
                board.clone(),
            ));
        }
        match WindowSource::from_config(c, &self.aws.redshift) {
            _ if !e.maintenance.enabled => off(ProbeName::Maintenance, "disabled in config"),
            None if c.redshift.serverless => off(
                ProbeName::Maintenance,
                "Redshift Serverless has no maintenance window (workgroups are updated during idle periods)",
            ),
            None => off(
                ProbeName::Maintenance,
                "neither redshift.maintenance_window nor redshift.cluster_identifier is set",
            ),
            Some(source) => {
                let probe = MaintenanceProbe::new(source, self.metrics.maintenance.clone());
                handles.push(probes::spawn(
                    probe,
                    &e.maintenance,
                    probe_metrics(),
                    board.clone(),
                ));
            }
        }
        Ok(handles)
    }

    /// Starts the probes and serves `/metrics`, `/` and `/healthz` until `shutdown` resolves.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let mut handles = self.start_probes()?;
        let probes = handles.len();
        // The same checks as `--preflight`, once at start-up: logged, and exported as
        // `dmsguard_preflight_ok{check}`; the exporter keeps running whatever they find.
        let (config, preflight) = (self.config.clone(), self.metrics.preflight.clone());
        if config.exporter.preflight {
            handles.push(tokio::spawn(async move {
                let report = dmsguard_pipeline::preflight::run(&config, false).await;
                report.log("dmsguard-exporter");
                for check in &report.checks {
                    preflight
                        .get_or_create(&metrics::PreflightLabels {
                            check: check.name.clone(),
                        })
                        .set(i64::from(check.ok));
                }
            }));
        }
        let web = self.web.current();
        tracing::info!(
            addr = %self.addr,
            scheme = web.scheme(),
            client_auth = ?web.client_auth,
            basic_auth = web.basic_auth(),
            path = %self.state.telemetry_path,
            probes,
            "Exporter listening."
        );
        let router = Router::new()
            .route(&self.state.telemetry_path, get(metrics))
            .route("/", get(landing))
            .route("/healthz", get(|| async { "ok\n" }))
            .with_state(self.state);
        let served = dmsguard_pipeline::web::serve(self.listener, router, self.web, shutdown)
            .await
            .context("serving HTTP");
        for handle in handles {
            handle.abort();
        }
        served
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    service::metrics_response(&state.registry)
}

/// The landing page: every probe with its last result, duration and error.
async fn landing(State(state): State<Arc<AppState>>) -> Html<String> {
    let path = escape_html(&state.telemetry_path);
    let mut page = format!(
        "<!doctype html><html><head><title>dmsguard-exporter</title></head><body>\
         <h1>dmsguard-exporter</h1><p><a href=\"{path}\">{path}</a> · \
         <a href=\"/healthz\">/healthz</a></p><table border=\"1\" cellpadding=\"4\">\
         <tr><th>probe</th><th>state</th><th>interval</th><th>runs</th><th>last run (UTC)</th>\
         <th>duration</th><th>last success (UTC)</th><th>error</th></tr>",
    );
    for (name, s) in state.board.snapshot() {
        let result = match (s.enabled, s.last_ok) {
            (false, _) => "off",
            (true, None) => "pending",
            (true, Some(true)) => "ok",
            (true, Some(false)) => "failing",
        };
        let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
            t.map_or_else(
                || "-".to_owned(),
                |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
            )
        };
        let _ = write!(
            page,
            "<tr><td>{name}</td><td>{result}</td><td>{interval}</td><td>{runs}</td>\
             <td>{last}</td><td>{took}</td><td>{success}</td><td>{error}</td></tr>",
            interval = humantime::format_duration(s.interval),
            runs = s.runs,
            last = time(s.last_run),
            took = s
                .last_duration
                .map_or_else(|| "-".to_owned(), |d| format!("{:.3} s", d.as_secs_f64())),
            success = time(s.last_success),
            error = escape_html(s.last_error.as_deref().unwrap_or("")),
        );
    }
    page.push_str("</table></body></html>\n");
    Html(page)
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}
