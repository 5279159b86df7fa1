//! Connections to the PostgreSQL-protocol databases (source, Redshift, ledger).

use std::str::FromStr;

use tokio_postgres::{Client, NoTls};

use crate::config::{resolve_secret, DatabaseConfig};
use crate::report::ErrorChain;

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid database url: {0}")]
    Url(#[source] tokio_postgres::Error),
    #[error("cannot read password file: {0}")]
    PasswordFile(#[source] std::io::Error),
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("cannot set up session on {target}: {source}")]
    Session {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Host, port and database of a config, for messages (never the password).
pub fn describe(config: &DatabaseConfig) -> String {
    match tokio_postgres::Config::from_str(&config.url) {
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

/// Builds the driver config: URL, password from the config or its file, connect timeout.
pub fn client_config(config: &DatabaseConfig) -> Result<tokio_postgres::Config, ConnectError> {
    let mut pg = tokio_postgres::Config::from_str(&config.url).map_err(ConnectError::Url)?;
    if let Some(password) = resolve_secret(&config.password, &config.password_file)
        .map_err(ConnectError::PasswordFile)?
    {
        pg.password(password.expose());
    }
    pg.connect_timeout(config.connect_timeout);
    if pg.get_application_name().is_none() {
        pg.application_name("dmsguard");
    }
    Ok(pg)
}

/// Connects, spawns the connection task and applies the session's statement timeout.
pub async fn connect(config: &DatabaseConfig) -> Result<Client, ConnectError> {
    let target = describe(config);
    let pg = client_config(config)?;
    let (client, connection) = pg
        .connect(NoTls)
        .await
        .map_err(|source| ConnectError::Connect {
            target: target.clone(),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(error = %ErrorChain(&error), "Database connection closed.");
        }
    });
    if !config.statement_timeout.is_zero() {
        let ms = config.statement_timeout.as_millis();
        client
            .batch_execute(&format!("SET statement_timeout = {ms}"))
            .await
            .map_err(|source| ConnectError::Session { target, source })?;
    }
    Ok(client)
}
