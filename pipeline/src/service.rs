//! Service plumbing shared by both binaries: logging, shutdown signals, HTTP serving.

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format `{other}` (text or json)")),
        }
    }
}

/// Sets up `tracing` to stderr; `RUST_LOG` filters (default `info`).
pub fn init_telemetry(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("Shutdown signal received.");
}

/// Binds `addr` (port 0 picks a free port); returns the listener and its real address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The OpenMetrics content type `/metrics` answers with.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Loads the config for a binary; on error prints the reason and exits with [`EXIT_CONFIG`].
///
/// [`EXIT_CONFIG`]: crate::config::EXIT_CONFIG
pub fn load_config_or_exit(path: &std::path::Path) -> crate::config::Config {
    match crate::config::Config::load(path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!(
                "error: invalid configuration: {}",
                crate::report::error_chain(&error)
            );
            std::process::exit(crate::config::EXIT_CONFIG);
        }
    }
}

/// The exit code of a binary's run; an error is logged and printed with its whole cause chain
/// (for a database error the server's message, SQLSTATE, detail and hint).
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            let text = crate::report::error_chain(error.as_ref());
            tracing::error!(error = %text, "Exiting on an error.");
            eprintln!("error: {text}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `/metrics`: the registry encoded as OpenMetrics text, or 500 if encoding fails.
pub fn metrics_response(
    registry: &prometheus_client::registry::Registry,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut body = String::with_capacity(64 * 1024);
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => (
            [(axum::http::header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
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
