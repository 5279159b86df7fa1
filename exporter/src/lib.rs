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
use std::collections::BTreeMap;

use dmsguard_pipeline::config::{Config, ConfigError, ExporterConfig, ProbeSchedule};
use dmsguard_pipeline::frontier::ProgressBoard;
use dmsguard_pipeline::reload::{ConfigApplier, ConfigLoader, LiveConfig, ReloadMetrics, Reloader};
use dmsguard_pipeline::service::{self, LogFormat, LogLevel};
use dmsguard_pipeline::web::{WebConfig, WebHandle};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
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

/// The schedule senders of the probes that run, by probe.
type Schedules = BTreeMap<ProbeName, watch::Sender<ProbeSchedule>>;

/// Starts `probe` on a schedule a reload can change, recording its sender in `schedules`.
fn start_live<P: probes::Probe>(
    schedules: &mut Schedules,
    probe: P,
    schedule: &ProbeSchedule,
    metrics: metrics::ProbeMetrics,
    board: Arc<StatusBoard>,
) -> JoinHandle<()> {
    let (tx, rx) = watch::channel(schedule.clone());
    schedules.insert(probe.name(), tx);
    probes::spawn_live(probe, rx, metrics, board)
}

/// The `[exporter.<probe>]` schedule of `name`.
fn schedule_mut(e: &mut ExporterConfig, name: ProbeName) -> &mut ProbeSchedule {
    match name {
        ProbeName::RedshiftStatements => &mut e.redshift_statements,
        ProbeName::Cloudwatch => &mut e.cloudwatch,
        ProbeName::Dms => &mut e.dms,
        ProbeName::Gaps => &mut e.gaps,
        ProbeName::Maintenance => &mut e.maintenance,
    }
}

/// The `[exporter.<probe>]` schedule of `name`, read only.
fn schedule_of(e: &ExporterConfig, name: ProbeName) -> &ProbeSchedule {
    match name {
        ProbeName::RedshiftStatements => &e.redshift_statements,
        ProbeName::Cloudwatch => &e.cloudwatch,
        ProbeName::Dms => &e.dms,
        ProbeName::Gaps => &e.gaps,
        ProbeName::Maintenance => &e.maintenance,
    }
}

/// What a reload applies: each running probe's `enabled`, `interval` and `timeout`, and the
/// web config file; everything else keeps its start-up value until a restart (logged). A probe
/// that did not start cannot be started by a reload.
fn live_settings(live: LiveConfig, schedules: Schedules, web: WebHandle) -> ConfigApplier {
    Arc::new(move |new: Config| {
        // Everything is checked before anything is applied.
        let web_config = match &new.exporter.web_config_file {
            Some(path) => WebConfig::load(path)?,
            None => WebConfig::default(),
        };
        let old = live.current();
        let keep_live = |config: &mut Config, from: &Config| {
            for name in ProbeName::ALL {
                *schedule_mut(&mut config.exporter, name) =
                    schedule_of(&from.exporter, name).clone();
            }
            config.exporter.web_config_file = from.exporter.web_config_file.clone();
        };
        // Refuses turning TLS on or off, before any schedule changes.
        web.replace(web_config)?;
        for (name, sender) in &schedules {
            let schedule = schedule_of(&new.exporter, *name);
            if probes::schedule_changed(&sender.borrow(), schedule) {
                sender.send_replace(schedule.clone());
            }
        }
        for name in ProbeName::ALL {
            let switched_on = schedule_of(&new.exporter, name).enabled
                && !schedule_of(&old.exporter, name).enabled;
            if switched_on && !schedules.contains_key(&name) {
                tracing::warn!(
                    probe = %name,
                    "The probe was disabled at start-up; a reload cannot start it: restart the exporter."
                );
            }
        }
        if dmsguard_pipeline::reload::restart_needed(&old, &new, keep_live) {
            tracing::warn!(
                "The new configuration changes settings only a restart applies (databases, AWS, \
                 tasks, tables, listen address, telemetry path); they keep their start-up values \
                 until then."
            );
        }
        let mut applied = (*old).clone();
        keep_live(&mut applied, &new);
        live.replace(applied);
        Ok(())
    })
}

/// The built exporter: bound listener, metrics, and the probes' clients.
pub struct Exporter {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    config: Arc<Config>,
    aws: AwsClients,
    metrics: Metrics,
    reload_metrics: ReloadMetrics,
    state: Arc<AppState>,
    web: WebHandle,
    reload: Option<ConfigLoader>,
}

struct AppState {
    registry: Registry,
    board: Arc<StatusBoard>,
    telemetry_path: String,
    reloader: std::sync::OnceLock<Reloader>,
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
        let reload_metrics = ReloadMetrics::register(&mut registry);
        metrics.thresholds.set(&config.remediator);
        let aws = AwsClients::new(&config.aws).await;
        Ok(Self {
            listener,
            addr,
            aws,
            metrics,
            reload_metrics,
            state: Arc::new(AppState {
                registry,
                board: Arc::new(StatusBoard::default()),
                telemetry_path: config.exporter.telemetry_path.clone(),
                reloader: std::sync::OnceLock::new(),
            }),
            web: WebHandle::new(web, &[]),
            reload: None,
            config: Arc::new(config),
        })
    }

    /// Reloads on SIGHUP and `POST /-/reload` with `loader` (the config file and the command
    /// line's overrides): probe schedules and the web config apply live. Without a loader,
    /// `/-/reload` answers 404.
    pub fn reload_from(mut self, loader: ConfigLoader) -> Self {
        self.reload = Some(loader);
        self
    }

    /// The address `/metrics` is served on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts every enabled probe in the background, each on a schedule a reload can change.
    fn start_probes(&self) -> anyhow::Result<(Vec<JoinHandle<()>>, Schedules)> {
        let mut schedules = Schedules::new();
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
            handles.push(start_live(
                &mut schedules,
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
            handles.push(start_live(
                &mut schedules,
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
            handles.push(start_live(
                &mut schedules,
                probe,
                &e.dms,
                probe_metrics(),
                board.clone(),
            ));
        }
        if !e.gaps.enabled {
            off(ProbeName::Gaps, "disabled in config");
        } else if c.tables.is_empty() {
            off(ProbeName::Gaps, "no [[tables]] configured");
        } else {
            let probe = GapsProbe::new(c.clone(), self.metrics.gaps.clone(), progress)
                .context("configuring the gaps probe")?;
            handles.push(start_live(
                &mut schedules,
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
                handles.push(start_live(&mut schedules, probe,
                    &e.maintenance,
                    probe_metrics(),
                    board.clone(),
                ));
            }
        }
        Ok((handles, schedules))
    }

    /// Starts the probes and serves `/metrics`, `/` and `/healthz` until `shutdown` resolves.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (mut handles, schedules) = self.start_probes()?;
        let mut sighup = None;
        if let Some(loader) = self.reload.clone() {
            let metrics = self.reload_metrics.clone();
            let reloader = Reloader::new(
                loader,
                live_settings(
                    LiveConfig::new(self.config.clone()),
                    schedules,
                    self.web.clone(),
                ),
                metrics,
            );
            sighup = Some(reloader.on_sighup());
            let _ = self.state.reloader.set(reloader);
        }
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
            .route("/-/reload", axum::routing::post(reload))
            .with_state(self.state);
        let served = dmsguard_pipeline::web::serve(self.listener, router, self.web, shutdown)
            .await
            .context("serving HTTP");
        for handle in handles.into_iter().chain(sighup) {
            handle.abort();
        }
        served
    }
}

/// `POST /-/reload`: 200 applied, 500 refused (behind basic auth when the web config has users).
async fn reload(State(state): State<Arc<AppState>>) -> Response {
    use axum::response::IntoResponse;
    match state.reloader.get() {
        Some(reloader) => dmsguard_pipeline::reload::reload_response(reloader).await,
        None => (axum::http::StatusCode::NOT_FOUND, "reload is not set up\n").into_response(),
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
