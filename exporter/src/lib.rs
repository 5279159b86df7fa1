//! dmsguard-exporter: observes a DMS pipeline and exports what it sees as Prometheus metrics.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use dmsguard_pipeline::config::Config;
use dmsguard_pipeline::service::{self, LogFormat};
use prometheus_client::registry::Registry;

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
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    pub log_format: LogFormat,
}

/// The built exporter: bound listener and shared state.
pub struct Exporter {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    state: Arc<AppState>,
}

struct AppState {
    registry: Registry,
}

impl Exporter {
    /// Binds the listen address from the config (port 0 picks a free port).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let (listener, addr) = service::bind(config.exporter.listen)
            .await
            .with_context(|| format!("binding {}", config.exporter.listen))?;
        let registry = Registry::with_prefix("dmsguard");
        Ok(Self {
            listener,
            addr,
            state: Arc::new(AppState { registry }),
        })
    }

    /// The address `/metrics` is served on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.addr, "Exporter listening.");
        let router = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .with_state(self.state);
        service::serve(self.listener, router, shutdown)
            .await
            .context("serving HTTP")
    }
}

async fn metrics(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
) -> axum::response::Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            [(header::CONTENT_TYPE, service::OPENMETRICS_CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "Encoding metrics failed.");
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "encoding failed\n",
            )
                .into_response()
        }
    }
}
