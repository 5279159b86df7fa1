//! Service plumbing shared by both binaries: logging, shutdown signals, HTTP serving.

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Log output format (`--log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// `key=value` pairs, one event a line, as Prometheus and its exporters log.
    Logfmt,
    /// One JSON object per line, for log shippers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "logfmt" => Ok(Self::Logfmt),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "unknown log format `{other}` (text, logfmt or json)"
            )),
        }
    }
}

/// Least severe level logged (`--log.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    fn directive(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

impl std::str::FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "debug" => Ok(Self::Debug),
            "info" => Ok(Self::Info),
            "warn" => Ok(Self::Warn),
            "error" => Ok(Self::Error),
            other => Err(format!(
                "unknown log level `{other}` (debug, info, warn or error)"
            )),
        }
    }
}

/// Sets up `tracing` to stderr at level `info`; `RUST_LOG` filters instead when set.
pub fn init_telemetry(format: LogFormat) {
    init_logging(format, LogLevel::Info);
}

/// Sets up `tracing` to stderr in `format` from `level` up; `RUST_LOG`, when set, filters
/// instead (it can name targets).
pub fn init_logging(format: LogFormat, level: LogLevel) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level.directive()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Logfmt => builder.event_format(logfmt::Logfmt).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

mod logfmt {
    //! `ts=… level=… target=… msg="…" key=value` lines.

    use std::fmt::{self, Write as _};

    use tracing::field::{Field, Visit};
    use tracing::{Event, Subscriber};
    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
    use tracing_subscriber::registry::LookupSpan;

    pub struct Logfmt;

    impl<S, N> FormatEvent<S, N> for Logfmt
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        fn format_event(
            &self,
            _ctx: &FmtContext<'_, S, N>,
            mut writer: Writer<'_>,
            event: &Event<'_>,
        ) -> fmt::Result {
            let meta = event.metadata();
            write!(
                writer,
                "ts={} level={} target={}",
                chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                meta.level().as_str().to_ascii_lowercase(),
                meta.target()
            )?;
            let mut fields = Fields(String::new());
            event.record(&mut fields);
            writeln!(writer, "{}", fields.0)
        }
    }

    struct Fields(String);

    impl Fields {
        fn push(&mut self, field: &Field, value: &str) {
            let key = match field.name() {
                "message" => "msg",
                name => name,
            };
            let _ = write!(self.0, " {key}={}", quote(value));
        }
    }

    impl Visit for Fields {
        fn record_str(&mut self, field: &Field, value: &str) {
            self.push(field, value);
        }

        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            self.push(field, &format!("{value:?}"));
        }
    }

    /// The value as is when it is a plain word, else in double quotes with `"`, `\` and
    /// control characters escaped.
    pub(super) fn quote(value: &str) -> String {
        let plain = !value.is_empty()
            && !value
                .chars()
                .any(|c| c == ' ' || c == '=' || c == '"' || c == '\\' || c.is_control());
        if plain {
            return value.to_owned();
        }
        let mut out = String::with_capacity(value.len() + 2);
        out.push('"');
        for c in value.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => {
                    let _ = write!(out, "\\u{{{:04x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn values_are_quoted_only_when_needed() {
            assert_eq!(super::quote("ok"), "ok");
            assert_eq!(super::quote(""), "\"\"");
            assert_eq!(super::quote("a b"), "\"a b\"");
            assert_eq!(super::quote("say \"hi\"\n"), "\"say \\\"hi\\\"\\n\"");
        }
    }
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

/// `/metrics`: the registry encoded as OpenMetrics text, followed by the build and process
/// metrics of [`crate::process`], or 500 if encoding fails.
pub fn metrics_response(
    registry: &prometheus_client::registry::Registry,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use prometheus_client::encoding::text::{encode_eof, encode_registry};
    let mut body = String::with_capacity(64 * 1024);
    // The binary's own metrics, then `dmsguard_build_info` and `process_*`.
    let encoded = encode_registry(&mut body, registry)
        .and_then(|()| encode_registry(&mut body, crate::process::registry()))
        .and_then(|()| encode_eof(&mut body));
    match encoded {
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
