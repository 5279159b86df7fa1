//! dmsguard-remediator: turns Alertmanager webhooks into fixes, recorded in a durable ledger.

pub mod alerts;
pub mod api;
pub mod cli;
pub mod commands;
pub mod fixes;
pub mod ledger;
pub mod metrics;
pub mod preflight_gate;
pub mod progress;
pub mod routing;
pub mod status_page;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use dmsguard_pipeline::aws::AwsClients;
use dmsguard_pipeline::config::{resolve_secret, Config};
use dmsguard_pipeline::reload::{ConfigLoader, LiveConfig, ReloadMetrics, Reloader};
use dmsguard_pipeline::service;
use dmsguard_pipeline::web::{WebConfig, WebHandle};
use prometheus_client::registry::Registry;

use crate::fixes::{FixContext, FixRegistry};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::metrics::RepairRowOutcome;
use crate::worker::Worker;

/// The parts every mode shares: config, ledger (migrated), fix context, worker, metrics.
pub struct Core {
    pub config: Arc<Config>,
    pub ledger: Ledger,
    pub worker: Worker,
    pub metrics: Metrics,
    registry: Registry,
}

impl Core {
    /// Connects the ledger (applying migrations) and builds the worker over `fixes`.
    pub async fn open(config: Config, fixes: FixRegistry) -> anyhow::Result<Self> {
        Self::open_with_progress(config, fixes, None).await
    }

    /// [`Core::open`], with fixes reporting row progress to `progress` (default: log lines).
    pub async fn open_with_progress(
        config: Config,
        fixes: FixRegistry,
        progress: Option<Arc<dyn progress::Progress>>,
    ) -> anyhow::Result<Self> {
        let config = Arc::new(config);
        let ledger_db = config.ledger_database()?;
        if config.ledger_is_source() {
            tracing::warn!(
                ledger = %dmsguard_pipeline::db::describe(ledger_db),
                "The job ledger is the [source] database: that needs CREATE there, and a \
                 wildcard DMS table mapping replicates it into Redshift; give it a database of its own."
            );
        }
        let ledger = Ledger::open(ledger_db).await.with_context(|| {
            format!(
                "opening the job ledger on {}",
                dmsguard_pipeline::db::describe(ledger_db)
            )
        })?;
        let aws = AwsClients::new(&config.aws).await;
        let mut ctx = FixContext::new(config.clone(), aws, ledger.clone());
        if let Some(progress) = progress {
            ctx = ctx.with_progress(progress);
        }
        let mut registry = Registry::with_prefix("dmsguard");
        let metrics = Metrics::register(&mut registry);
        // Every configured table's repair series exist from the start, at 0.
        for table in &config.tables {
            metrics.set_repair_rows_remaining(&table.source, 0, &RepairRowOutcome::INSERTS);
            if table.divergent_rows {
                metrics.set_repair_rows_remaining(&table.source, 0, &RepairRowOutcome::REWRITES);
            }
        }
        let gate = preflight_gate::FixGate::new(&config, metrics.clone());
        let worker = Worker::new(
            config.clone(),
            ledger.clone(),
            fixes,
            ctx,
            metrics.clone(),
            gate,
        );
        Ok(Self {
            config,
            ledger,
            worker,
            metrics,
            registry,
        })
    }
}

/// The built remediator: bound listener, migrated ledger, worker.
pub struct Remediator {
    core: Core,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    token: dmsguard_pipeline::secret::Secret,
    web: WebHandle,
    reload: Option<ConfigLoader>,
}

impl Remediator {
    /// Builds with every standard fix; see [`Remediator::build_with`].
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with(config, FixRegistry::standard()).await
    }

    /// Reads the webhook token and `remediator.web_config_file`, opens the ledger (running
    /// migrations) and binds the listen address (port 0 picks a free port).
    pub async fn build_with(config: Config, fixes: FixRegistry) -> anyhow::Result<Self> {
        let web = match &config.remediator.web_config_file {
            Some(path) => WebConfig::load(path)?,
            None => WebConfig::default(),
        };
        let token = resolve_secret(&config.remediator.token, &config.remediator.token_file)
            .context("reading remediator.token_file")?
            .filter(|t| !t.is_empty())
            .context("remediator.token (or token_file) must be set: the webhook refuses unauthenticated calls")?;
        let listen = config.remediator.listen;
        let core = Core::open(config, fixes).await?;
        let (listener, addr) = service::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        Ok(Self {
            core,
            listener,
            addr,
            token,
            web: WebHandle::new(web, api::BEARER_PATHS),
            reload: None,
        })
    }

    /// Reloads on SIGHUP and `POST /-/reload` with `loader` (the config file and the command
    /// line's overrides). Routes, each fix's `enabled`, `dry_run`, `cooldown`, the resume retry
    /// interval, the preflight interval and the web config file apply from the next alert, job
    /// or connection; other changes need a restart (logged). Every reload runs the preflight
    /// checks again. Without a loader, `/-/reload` answers 404.
    pub fn reload_from(mut self, loader: ConfigLoader) -> Self {
        self.reload = Some(loader);
        self
    }

    /// The address the API is served on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The job ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.core.ledger
    }

    /// This instance's runner id, recorded on the jobs and steps it runs.
    pub fn runner(&self) -> &str {
        self.core.worker.runner()
    }

    /// Serves the API and runs the worker until `shutdown` resolves; then stops taking work
    /// and waits for jobs in flight.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Core {
            config,
            ledger,
            worker,
            metrics,
            mut registry,
        } = self.core;
        let reload_metrics = ReloadMetrics::register(&mut registry);
        let gate = worker.gate().clone();
        let reloader = self.reload.map(|loader| {
            Reloader::new(
                loader,
                live_settings(worker.live_config(), self.web.clone(), gate.clone()),
                reload_metrics,
            )
        });
        let sighup = reloader.as_ref().map(Reloader::on_sighup);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        if config.remediator.preflight {
            // The checks of `dmsguard-remediator preflight`, now, after each reload and every
            // preflight_interval: a fix whose checks fail is disabled until they pass.
            tokio::spawn(gate.run(worker.live_config(), stop_rx.clone()));
        }
        let worker_task = tokio::spawn(worker.clone().run(stop_rx));
        let state = api::ApiState::new(
            self.token,
            ledger,
            routing::Router::live(worker.live_config()),
            metrics,
            registry,
            worker,
        )
        .with_reloader(reloader);
        let router = api::router(state, config.remediator.max_body_bytes);
        let web = self.web.current();
        tracing::info!(
            addr = %self.addr,
            scheme = web.scheme(),
            client_auth = ?web.client_auth,
            basic_auth = web.basic_auth(),
            "Remediator listening."
        );
        let served = dmsguard_pipeline::web::serve(self.listener, router, self.web, shutdown).await;
        if let Some(sighup) = sighup {
            sighup.abort();
        }
        let _ = stop_tx.send(true);
        worker_task.await.context("worker task")?;
        served.context("serving HTTP")
    }
}

/// What a reload applies: the new file's routes, fix switches (`enabled`, `dry_run`,
/// `cooldown`), resume retry interval and web config; everything else keeps its start-up value
/// (databases, AWS, tasks, tables and the listener are held by running parts).
fn live_settings(
    live: LiveConfig,
    web: WebHandle,
    gate: preflight_gate::FixGate,
) -> dmsguard_pipeline::reload::ConfigApplier {
    Arc::new(move |new: Config| {
        let web_config = match &new.remediator.web_config_file {
            Some(path) => WebConfig::load(path)?,
            None => WebConfig::default(),
        };
        let old = live.current();
        let keep_live = |config: &mut Config, from: &Config| {
            config.remediator.routes = from.remediator.routes.clone();
            config.remediator.fixes = from.remediator.fixes.clone();
            config.remediator.resume_retry_interval = from.remediator.resume_retry_interval;
            config.remediator.web_config_file = from.remediator.web_config_file.clone();
            config.remediator.preflight_interval = from.remediator.preflight_interval;
        };
        let mut applied = (*old).clone();
        keep_live(&mut applied, &new);
        // Web first: it refuses turning TLS on or off, and then nothing has changed.
        web.replace(web_config)?;
        if dmsguard_pipeline::reload::restart_needed(&old, &new, keep_live) {
            tracing::warn!(
                "The new configuration changes settings only a restart applies (databases, AWS, \
                 tasks, tables, listen address, token, concurrency, timeouts); they keep their \
                 start-up values until then."
            );
        }
        live.replace(applied);
        // A reload is when an operator says "I fixed it": check again now.
        gate.request_recheck();
        Ok(())
    })
}
