//! Connections to the PostgreSQL-protocol databases (source, Redshift, ledger), with TLS as
//! `sslmode`/`sslrootcert` ask (see [`crate::tls`]).

use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::{Client, NoTls};

use crate::config::{resolve_secret, DatabaseConfig};
use crate::report::ErrorChain;
use crate::tls::{self, RootCert, SslMode, TlsError, TlsSettings, TlsState};

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid database url: {0}")]
    Url(#[source] tokio_postgres::Error),
    #[error("cannot read password file: {0}")]
    PasswordFile(#[source] std::io::Error),
    #[error(
        "IAM database credentials for {target}: {}",
        crate::report::error_chain(source)
    )]
    Iam {
        target: String,
        #[source]
        source: crate::iam_auth::IamAuthError,
    },
    #[error("TLS settings of {target}: {source}")]
    Tls {
        target: String,
        #[source]
        source: TlsError,
    },
    #[error(
        "cannot connect to {target} ({tls}): {}",
        crate::db::error_chain(source)
    )]
    Connect {
        target: String,
        tls: TlsSettings,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "cannot set up session on {target}: {}",
        crate::db::error_chain(source)
    )]
    Session {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// A tokio-postgres error with its whole cause chain, and for server errors the SQLSTATE,
/// detail and hint (`Display` alone says only "db error" or "error performing TLS handshake").
pub fn error_chain(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut s = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(detail) = db.detail() {
            s.push_str(&format!("; detail: {detail}"));
        }
        if let Some(hint) = db.hint() {
            s.push_str(&format!("; hint: {hint}"));
        }
        return s;
    }
    let mut s = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}

/// Host, port and database of a config, for messages (never the password).
pub fn describe(config: &DatabaseConfig) -> String {
    let url = tls::split_tls_params(&config.url).rest;
    match tokio_postgres::Config::from_str(&url) {
        Ok(c) => {
            let host = c
                .get_hosts()
                .first()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(s) => s.clone(),
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .unwrap_or_default();
            let port = c.get_ports().first().copied().unwrap_or(5432);
            format!("{host}:{port}/{}", c.get_dbname().unwrap_or(""))
        }
        Err(_) => "<invalid url>".to_owned(),
    }
}

/// The TLS settings of a database: `sslmode`/`sslrootcert` from its URL or its config keys
/// (giving one in both places with different values is an error); `prefer` when neither says.
pub fn tls_settings(config: &DatabaseConfig) -> Result<TlsSettings, TlsError> {
    let split = tls::split_tls_params(&config.url);
    let url_mode = split
        .sslmode
        .as_deref()
        .map(SslMode::from_str)
        .transpose()?;
    let mode = match (url_mode, config.sslmode) {
        (Some(a), Some(b)) if a != b => {
            return Err(TlsError::Conflict {
                key: "sslmode",
                url: a.to_string(),
                config: b.to_string(),
            })
        }
        (a, b) => a.or(b).unwrap_or_default(),
    };
    let url_root = split.sslrootcert.as_deref().map(RootCert::parse);
    let config_root = config.sslrootcert.as_deref().map(RootCert::parse);
    let root_cert = match (url_root, config_root) {
        (Some(a), Some(b)) if a != b => {
            return Err(TlsError::Conflict {
                key: "sslrootcert",
                url: a.to_string(),
                config: b.to_string(),
            })
        }
        (a, b) => a.or(b),
    };
    Ok(TlsSettings { mode, root_cert })
}

/// Builds the driver config: URL (without the TLS keys), password from the config or its
/// file, connect timeout, and the driver's own sslmode for `settings`.
pub fn client_config(config: &DatabaseConfig) -> Result<tokio_postgres::Config, ConnectError> {
    let url = tls::split_tls_params(&config.url).rest;
    let mut pg = tokio_postgres::Config::from_str(&url).map_err(ConnectError::Url)?;
    if let Some(password) = resolve_secret(&config.password, &config.password_file)
        .map_err(ConnectError::PasswordFile)?
    {
        pg.password(password.expose());
    }
    pg.connect_timeout(config.connect_timeout);
    if pg.get_application_name().is_none() {
        pg.application_name("dmsguard");
    }
    let mode = tls_settings(config)
        .map(|s| s.mode)
        .unwrap_or(SslMode::Require);
    pg.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    Ok(pg)
}

/// Connects, spawns the connection task and applies the session's statement timeout.
pub async fn connect(config: &DatabaseConfig) -> Result<Client, ConnectError> {
    Ok(connect_with_tls_state(config).await?.0)
}

/// As [`connect`], and says whether the session is encrypted (protocol, cipher, certificate).
pub async fn connect_with_tls_state(
    config: &DatabaseConfig,
) -> Result<(Client, TlsState), ConnectError> {
    let target = describe(config);
    let settings = tls_settings(config).map_err(|source| ConnectError::Tls {
        target: target.clone(),
        source,
    })?;
    let mut pg = client_config(config)?;
    if let Some(iam) = &config.iam {
        let login = iam_login(iam, &pg)
            .await
            .map_err(|source| ConnectError::Iam {
                target: target.clone(),
                source,
            })?;
        pg.user(&login.user);
        pg.password(login.password.expose());
    }
    let rustls = tls::client_config(&settings).map_err(|source| ConnectError::Tls {
        target: target.clone(),
        source,
    })?;
    let connect_error = |source| ConnectError::Connect {
        target: target.clone(),
        tls: settings.clone(),
        source,
    };
    let (client, state) = match rustls {
        None => {
            let (client, connection) = pg.connect(NoTls).await.map_err(connect_error)?;
            spawn_connection(connection);
            (client, TlsState::Plaintext)
        }
        Some(rustls) => {
            let make = tls::MakeRustlsConnect::new(rustls);
            let (client, connection) = pg.connect(make.clone()).await.map_err(connect_error)?;
            spawn_connection(connection);
            (client, make.state())
        }
    };
    tracing::debug!(%target, tls = %state, "Connected.");
    if !config.statement_timeout.is_zero() {
        let ms = config.statement_timeout.as_millis();
        client
            .batch_execute(&format!("SET statement_timeout = {ms}"))
            .await
            .map_err(|source| ConnectError::Session { target, source })?;
    }
    Ok((client, state))
}

/// The IAM login a new connection with `config` would use (`None` when it has no `iam`): the
/// cached one while it is fresh, else a new one from AWS.
pub async fn iam_login_for(
    config: &DatabaseConfig,
) -> Result<Option<crate::iam_auth::Login>, ConnectError> {
    let Some(iam) = &config.iam else {
        return Ok(None);
    };
    let pg = client_config(config)?;
    iam_login(iam, &pg)
        .await
        .map(Some)
        .map_err(|source| ConnectError::Iam {
            target: describe(config),
            source,
        })
}

/// The IAM login for a connection with the driver config `pg` (its first host, port, user and
/// database).
pub async fn iam_login(
    iam: &crate::iam_auth::IamAuthConfig,
    pg: &tokio_postgres::Config,
) -> Result<crate::iam_auth::Login, crate::iam_auth::IamAuthError> {
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => {
            return Err(crate::iam_auth::IamAuthError::Incomplete(
                "IAM database credentials need a TCP host in the URL".into(),
            ))
        }
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let user = pg.get_user().ok_or_else(|| {
        crate::iam_auth::IamAuthError::Incomplete(
            "IAM database credentials need the database user in the URL".into(),
        )
    })?;
    iam.login_to(user, &host, port, pg.get_dbname()).await
}

fn spawn_connection<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(error = %ErrorChain(&error), "Database connection closed.");
        }
    });
}
