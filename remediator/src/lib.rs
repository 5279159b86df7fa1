//! dmsguard-remediator: turns Alertmanager webhooks into fixes, recorded in a durable ledger.

pub mod cli;
pub mod commands;

use std::net::SocketAddr;

use anyhow::Context;
use axum::routing::get;
use axum::Router;
use dmsguard_pipeline::config::Config;
use dmsguard_pipeline::service;

/// The built remediator: bound listener and config.
pub struct Remediator {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
}

impl Remediator {
    /// Binds the listen address from the config (port 0 picks a free port).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let (listener, addr) = service::bind(config.remediator.listen)
            .await
            .with_context(|| format!("binding {}", config.remediator.listen))?;
        Ok(Self { listener, addr })
    }

    /// The address the API is served on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.addr, "Remediator listening.");
        let router = Router::new().route("/healthz", get(|| async { "ok\n" }));
        service::serve(self.listener, router, shutdown)
            .await
            .context("serving HTTP")
    }
}
