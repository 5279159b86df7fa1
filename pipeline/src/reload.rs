//! Configuration reload, as Prometheus and its exporters do it: on SIGHUP or `POST /-/reload`
//! the binary reads its config file again (with the command line's overrides), checks it whole,
//! and either applies the settings that can change while it runs or refuses the new file,
//! logs why, and keeps the configuration it had. `dmsguard_config_last_reload_successful` and
//! `dmsguard_config_last_reload_success_timestamp_seconds` say how the last attempt went, with
//! Prometheus's own names (`prometheus_config_last_reload_successful`, …).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::config::{Config, ConfigError};
use crate::report::error_chain;
use crate::web::WebConfigError;

/// `dmsguard_config_last_reload_successful` (registered under the `dmsguard` prefix).
pub const LAST_RELOAD_SUCCESSFUL: &str = "config_last_reload_successful";
/// `dmsguard_config_last_reload_success_timestamp_seconds`.
pub const LAST_RELOAD_SUCCESS_TIMESTAMP: &str = "config_last_reload_success_timestamp_seconds";
/// `dmsguard_config_reloads_total{result}`.
pub const RELOADS: &str = "config_reloads";

/// Why a new configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("invalid web configuration: {0}")]
    Web(#[from] WebConfigError),
}

/// The configuration in force, replaced by a reload; readers take the current one per use.
#[derive(Clone)]
pub struct LiveConfig {
    inner: Arc<RwLock<Arc<Config>>>,
}

impl LiveConfig {
    pub fn new(config: Arc<Config>) -> Self {
        Self {
            inner: Arc::new(RwLock::new(config)),
        }
    }

    /// The configuration in force now.
    pub fn current(&self) -> Arc<Config> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `config` in force.
    pub fn replace(&self, config: Config) {
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The reload metrics of one binary.
#[derive(Clone)]
pub struct ReloadMetrics {
    successful: Gauge,
    success_timestamp: Gauge<f64, AtomicU64>,
    reloads: Family<ResultLabels, Counter>,
}

impl ReloadMetrics {
    /// Registers the metrics on a `dmsguard`-prefixed registry; the start-up load counts as a
    /// success.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            successful: Gauge::default(),
            success_timestamp: Gauge::default(),
            reloads: Family::default(),
        };
        registry.register(
            LAST_RELOAD_SUCCESSFUL,
            "Whether the last configuration reload attempt succeeded (1) or was refused (0).",
            metrics.successful.clone(),
        );
        registry.register(
            LAST_RELOAD_SUCCESS_TIMESTAMP,
            "Unix time of the last successful configuration load (start-up or reload).",
            metrics.success_timestamp.clone(),
        );
        registry.register(
            RELOADS,
            "Configuration reload attempts, by result (applied, refused).",
            metrics.reloads.clone(),
        );
        for result in ["applied", "refused"] {
            let _ = metrics.reloads.get_or_create(&ResultLabels { result });
        }
        metrics.succeeded();
        metrics
    }

    fn succeeded(&self) {
        self.successful.set(1);
        self.success_timestamp.set(unix_now());
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Reads the config again: the file plus the command line's overrides.
pub type ConfigLoader = Arc<dyn Fn() -> Result<Config, ReloadError> + Send + Sync>;

/// Checks a new configuration whole and then applies it, or refuses it untouched.
pub type ConfigApplier = Arc<dyn Fn(Config) -> Result<(), ReloadError> + Send + Sync>;

/// Runs reloads one at a time, from SIGHUP or the API.
#[derive(Clone)]
pub struct Reloader {
    inner: Arc<ReloaderInner>,
}

struct ReloaderInner {
    load: ConfigLoader,
    apply: ConfigApplier,
    metrics: ReloadMetrics,
    running: tokio::sync::Mutex<()>,
}

impl Reloader {
    pub fn new(load: ConfigLoader, apply: ConfigApplier, metrics: ReloadMetrics) -> Self {
        Self {
            inner: Arc::new(ReloaderInner {
                load,
                apply,
                metrics,
                running: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Reads, checks and applies the configuration; `trigger` (`SIGHUP`, `POST /-/reload`) is
    /// logged. A refused configuration changes nothing, is logged with its reason and counted.
    pub async fn reload(&self, trigger: &str) -> Result<(), ReloadError> {
        let inner = &self.inner;
        let _one_at_a_time = inner.running.lock().await;
        let result = (inner.load)().and_then(|config| (inner.apply)(config));
        match &result {
            Ok(()) => {
                inner.metrics.succeeded();
                inner
                    .metrics
                    .reloads
                    .get_or_create(&ResultLabels { result: "applied" })
                    .inc();
                tracing::info!(trigger, "Configuration reloaded.");
            }
            Err(error) => {
                inner.metrics.successful.set(0);
                inner
                    .metrics
                    .reloads
                    .get_or_create(&ResultLabels { result: "refused" })
                    .inc();
                tracing::error!(
                    trigger,
                    error = %error_chain(error),
                    "New configuration refused; the previous one stays in force."
                );
            }
        }
        result
    }

    /// Reloads on every SIGHUP until the returned task is aborted.
    pub fn on_sighup(&self) -> tokio::task::JoinHandle<()> {
        let reloader = self.clone();
        tokio::spawn(async move {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{signal, SignalKind};
                match signal(SignalKind::hangup()) {
                    Ok(mut hangups) => {
                        while hangups.recv().await.is_some() {
                            let _ = reloader.reload("SIGHUP").await;
                        }
                    }
                    Err(error) => tracing::warn!(%error, "Cannot listen for SIGHUP."),
                }
            }
            #[cfg(not(unix))]
            let _ = reloader;
        })
    }
}

/// `POST /-/reload`: 200 when the configuration was applied, 500 with the reason when refused
/// (as Prometheus answers).
pub async fn reload_response(reloader: &Reloader) -> axum::response::Response {
    use axum::response::IntoResponse;
    match reloader.reload("POST /-/reload").await {
        Ok(()) => (axum::http::StatusCode::OK, "configuration reloaded\n").into_response(),
        Err(error) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("configuration refused: {}\n", error_chain(&error)),
        )
            .into_response(),
    }
}

/// The settings of `new` that a running binary cannot take, named for the log: every part of
/// the configuration except `keep_live` (the paths the binary applies live) compared as
/// `Debug` text (secrets print as `***`).
pub fn restart_needed(
    old: &Config,
    new: &Config,
    keep_live: impl Fn(&mut Config, &Config),
) -> bool {
    let mut masked = new.clone();
    keep_live(&mut masked, old);
    format!("{masked:?}") != format!("{old:?}")
}
