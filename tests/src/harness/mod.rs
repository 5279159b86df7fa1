//! Test harness: fresh databases, per-test moto / Prometheus / Alertmanager processes, polling.
//!
//! Reads the lab's environment (see `tests/lab/env.sh`); `tests/lab/up` must have started
//! PostgreSQL and installed the other services' binaries.

mod binaries;
mod dms;
mod grants;
mod lab_control;
pub(crate) mod processes;
mod proxy;
mod web;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use dmsguard_pipeline::config::{AwsConfig, DatabaseConfig};
use dmsguard_pipeline::secret::Secret;
use tokio_postgres::Client;

pub use binaries::workspace_binary;
pub use dms::{create_dms_task, start_dms_task};
pub use grants::{apply_grants, grant_statements, grants_block, EXPORTER_USER, REMEDIATOR_USER};
pub use lab_control::{
    Burst, DeferredWindow, FailWhen, LabControl, LabControlState, DESCRIBE_CLUSTERS,
    DESCRIBE_REPLICATION_TASKS, GET_METRIC_DATA, STOP_REASON_FATAL, STOP_REASON_RECOVERABLE,
};
pub use processes::{Alertmanager, Moto, Prometheus};
pub use proxy::TcpProxy;
pub use web::{BinaryProcess, WebFixture};

/// The Redshift stand-in schema (system views as tables).
pub const REDSHIFT_STANDIN_SQL: &str = include_str!("../../sql/redshift_standin.sql");

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Where the lab lives, read from the environment with `tests/lab/env.sh`'s defaults.
#[derive(Debug, Clone)]
pub struct LabEnv {
    pub dir: std::path::PathBuf,
    pub pg_host: String,
    pub pg_port: u16,
    pub pg_user: String,
    pub pg_password: String,
    pub moto_python: String,
    pub moto_launcher: String,
}

impl LabEnv {
    pub fn from_env() -> Self {
        let dir = std::path::PathBuf::from(env_or("DMSGUARD_LAB_DIR", "/tmp/dmsguard-lab"));
        let launcher_default = concat!(env!("CARGO_MANIFEST_DIR"), "/lab/moto_launcher.py");
        let venv = env_or("DMSGUARD_LAB_VENV", &dir.join("venv").display().to_string());
        Self {
            pg_host: env_or("DMSGUARD_PG_HOST", "127.0.0.1"),
            pg_port: env_or("DMSGUARD_PG_PORT", "55432")
                .parse()
                .expect("DMSGUARD_PG_PORT"),
            pg_user: env_or("DMSGUARD_PG_USER", "postgres"),
            pg_password: env_or("DMSGUARD_PG_PASSWORD", "lab"),
            moto_python: env_or("DMSGUARD_MOTO_PYTHON", &format!("{venv}/bin/python")),
            moto_launcher: env_or("DMSGUARD_MOTO_LAUNCHER", launcher_default),
            dir,
        }
    }

    /// A connection config for database `db` on the lab's PostgreSQL.
    pub fn database(&self, db: &str) -> DatabaseConfig {
        DatabaseConfig {
            url: format!(
                "postgresql://{}@{}:{}/{}",
                self.pg_user, self.pg_host, self.pg_port, db
            ),
            password: Some(Secret::new(self.pg_password.clone())),
            password_file: None,
            sslmode: None,
            sslrootcert: None,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(120),
            iam: None,
        }
    }
}

/// A connection config from a URL, with the password from `PGPASSWORD` or the lab's.
pub fn database_config(url: &str) -> DatabaseConfig {
    DatabaseConfig {
        url: url.to_owned(),
        password: Some(Secret::new(env_or(
            "PGPASSWORD",
            &env_or("DMSGUARD_PG_PASSWORD", "lab"),
        ))),
        password_file: None,
        sslmode: None,
        sslrootcert: None,
        connect_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(0),
        iam: None,
    }
}

/// Creates the system-view stand-in tables in a Redshift stand-in database.
pub async fn install_redshift_standin(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(REDSHIFT_STANDIN_SQL).await
}

/// Creates the exporter's and the remediator's users with exactly the grants of
/// `docs/grants.md`, on the source database `source_name` and the stand-in `redshift`.
pub async fn install_least_privilege_users(
    env: &LabEnv,
    source_name: &str,
    redshift: &Client,
) -> anyhow::Result<()> {
    let substitutions = [
        ("<password>", env.pg_password.as_str()),
        ("<dms_user>", crate::simulator::DMS_ROLE),
        ("<table_owner>", env.pg_user.as_str()),
        ("<source_db>", source_name),
    ];
    apply_grants(
        redshift,
        &["redshift-exporter", "redshift-remediator"],
        &substitutions,
    )
    .await?;
    // Every statement these users send to the stand-in is logged for the statement audit.
    crate::audit::enable(redshift).await?;
    let source = dmsguard_pipeline::db::connect(&env.database(source_name)).await?;
    apply_grants(
        &source,
        &["postgresql-exporter", "postgresql-remediator"],
        &substitutions,
    )
    .await
}

/// Makes the next `times` INSERT statements of database user `user` into `table` fail as
/// Redshift fails a transaction it cannot serialize (SQLSTATE `XX000`, message `1023`, detail
/// "Serializable isolation violation on table - …"). Returns the stand-in's conflict counter
/// before arming: [`injected_violations`] counts from it.
pub async fn inject_serializable_violations(
    redshift: &Client,
    table: &dmsguard_pipeline::config::QualifiedName,
    user: &str,
    times: i64,
) -> anyhow::Result<i64> {
    let has_trigger: bool = redshift
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'lab_injected_conflict' \
             AND tgrelid = $1::text::regclass)",
            &[&table.quoted()],
        )
        .await?
        .get(0);
    if !has_trigger {
        redshift
            .batch_execute(&format!(
                "CREATE TRIGGER lab_injected_conflict BEFORE INSERT ON {} \
                 FOR EACH STATEMENT EXECUTE FUNCTION lab_injected_conflict()",
                table.quoted()
            ))
            .await?;
    }
    let base: i64 = redshift
        .query_one("SELECT nextval('lab_injected_conflict_seq')", &[])
        .await?
        .get(0);
    redshift
        .execute(
            "INSERT INTO lab_injected_conflicts (usename, fail_up_to) VALUES ($1, $2) \
             ON CONFLICT (usename) DO UPDATE SET fail_up_to = excluded.fail_up_to",
            &[&user, &(base + times)],
        )
        .await?;
    Ok(base)
}

/// How many armed INSERTs ran since [`inject_serializable_violations`] returned `base` (the
/// failed ones and the ones after them).
pub async fn injected_violations(redshift: &Client, base: i64) -> anyhow::Result<i64> {
    let last: i64 = redshift
        .query_one("SELECT last_value FROM lab_injected_conflict_seq", &[])
        .await?
        .get(0);
    Ok(last - base)
}

/// A test's own pair of fresh databases: a source and a Redshift stand-in. They are dropped
/// (with their replication slots) by [`TestDatabases::drop`], or when the last clone goes
/// away without it (a test that failed early), so that no test leaks a slot into the next.
#[derive(Debug, Clone)]
pub struct TestDatabases {
    pub env: LabEnv,
    pub source_name: String,
    pub redshift_name: String,
    pub source: DatabaseConfig,
    pub redshift: DatabaseConfig,
    cleanup: std::sync::Arc<Cleanup>,
}

/// Drops a test's databases when the last [`TestDatabases`] clone is dropped, unless
/// [`TestDatabases::drop`] already did.
#[derive(Debug)]
struct Cleanup {
    env: LabEnv,
    names: Vec<String>,
    /// The stand-in database and where the server log stood when it was created: its
    /// statements' inferred parameter types are audited before it is dropped.
    audit: Option<(String, u64)>,
    done: std::sync::atomic::AtomicBool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.done.load(Ordering::SeqCst) {
            return;
        }
        let env = self.env.clone();
        let names = self.names.clone();
        let audit = self.audit.clone();
        // Drop may run inside the test's runtime: clean up on a thread with a runtime of its own.
        let cleaned = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(drop_databases(&env, &names, audit.as_ref()))
        })
        .join();
        match cleaned {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("cleaning up test databases {:?}: {e:#}", self.names),
            Err(_) => eprintln!("cleaning up test databases {:?} panicked", self.names),
        }
    }
}

/// The lab PostgreSQL's server log (`tests/lab/up` starts the server with it).
pub fn server_log(env: &LabEnv) -> std::path::PathBuf {
    env.dir.join("logs").join("postgres.log")
}

/// Prepares, in the stand-in `db`, the parameterised statements the server log holds from
/// `from_byte` on, and logs the array parameters the server infers for the statement audit
/// ([`crate::audit::record_inferred_array_parameters`]).
async fn audit_inferred_parameters(env: &LabEnv, db: &str, from_byte: u64) -> anyhow::Result<()> {
    let bytes = match std::fs::read(server_log(env)) {
        Ok(bytes) => bytes,
        // No server log (a lab started some other way): nothing to audit.
        Err(_) => return Ok(()),
    };
    let from = (from_byte as usize).min(bytes.len());
    let log = String::from_utf8_lossy(&bytes[from..]);
    let client = dmsguard_pipeline::db::connect(&env.database(db)).await?;
    crate::audit::record_inferred_array_parameters(&client, &log).await?;
    Ok(())
}

/// Drops `names` and their replication slots (terminating whoever still uses a slot); first
/// audits the stand-in's statements' inferred parameter types (`audit`: the stand-in and the
/// server log's length when it was created).
async fn drop_databases(
    env: &LabEnv,
    names: &[String],
    audit: Option<&(String, u64)>,
) -> anyhow::Result<()> {
    if let Some((db, from_byte)) = audit {
        if let Err(e) = audit_inferred_parameters(env, db, *from_byte).await {
            eprintln!("statement audit of {db}'s inferred parameter types: {e:#}");
        }
    }
    let admin = dmsguard_pipeline::db::connect(&env.database("postgres")).await?;
    for db in names {
        admin
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                 WHERE database = $1 AND active_pid IS NOT NULL",
                &[db],
            )
            .await?;
        // A terminated walsender releases its slot a moment later.
        eventually("the slots released", Duration::from_secs(10), || async {
            admin
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE database = $1 AND active_pid IS NULL",
                    &[db],
                )
                .await?;
            let left = admin
                .query_one(
                    "SELECT count(*) FROM pg_replication_slots WHERE database = $1",
                    &[db],
                )
                .await?
                .get::<_, i64>(0);
            Ok((left == 0).then_some(()))
        })
        .await?;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
            .await?;
    }
    Ok(())
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A database name unique to this process and call, derived from `tag`.
pub fn unique_name(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tag: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    format!("t_{tag}_{}_{n}", std::process::id())
}

impl TestDatabases {
    /// Creates `<tag>…_source` and `<tag>…_redshift` (with the stand-in system views).
    pub async fn create(tag: &str) -> anyhow::Result<Self> {
        let env = LabEnv::from_env();
        let base = unique_name(tag);
        let log_start = std::fs::metadata(server_log(&env)).map_or(0, |m| m.len());
        let source_name = format!("{base}_source");
        let redshift_name = format!("{base}_redshift");
        let admin = dmsguard_pipeline::db::connect(&env.database("postgres"))
            .await
            .map_err(|e| anyhow::anyhow!("{e} (is the lab up? run tests/lab/up)"))?;
        // From here on a failure drops whatever was created.
        let cleanup = std::sync::Arc::new(Cleanup {
            env: env.clone(),
            names: vec![source_name.clone(), redshift_name.clone()],
            audit: Some((redshift_name.clone(), log_start)),
            done: std::sync::atomic::AtomicBool::new(false),
        });
        for db in [&source_name, &redshift_name] {
            admin
                .batch_execute(&format!("CREATE DATABASE \"{db}\""))
                .await?;
        }
        let redshift = env.database(&redshift_name);
        let client = dmsguard_pipeline::db::connect(&redshift).await?;
        install_redshift_standin(&client).await?;
        install_least_privilege_users(&env, &source_name, &client).await?;
        Ok(Self {
            source: env.database(&source_name),
            redshift,
            cleanup,
            source_name,
            redshift_name,
            env,
        })
    }

    /// A `[remediator.ledger]` section keeping the job ledger in this pair's source database
    /// (one database pair per test; production gives the ledger a database of its own), as the
    /// remediator's least-privilege user (`docs/grants.md` lets it create schema `dmsguard`).
    /// Put it last in a config file, so that no `[remediator]` key lands in it.
    pub fn ledger_section(&self) -> String {
        format!(
            "\n[remediator.ledger]\nurl = \"{}\"\npassword = \"{}\"\n",
            self.remediator_source().url,
            self.env.pg_password
        )
    }

    /// `config` with `user` in its URL instead of the lab's superuser (the lab's users of
    /// `docs/grants.md` have the lab's password).
    pub fn as_user(config: &DatabaseConfig, user: &str) -> DatabaseConfig {
        let url = match config.url.split_once("://") {
            Some((scheme, rest)) => {
                let host = rest.split_once('@').map_or(rest, |(_, h)| h);
                format!("{scheme}://{user}@{host}")
            }
            None => config.url.clone(),
        };
        DatabaseConfig {
            url,
            ..config.clone()
        }
    }

    /// The source as the exporter's least-privilege user.
    pub fn exporter_source(&self) -> DatabaseConfig {
        Self::as_user(&self.source, EXPORTER_USER)
    }

    /// The Redshift stand-in as the exporter's least-privilege user.
    pub fn exporter_redshift(&self) -> DatabaseConfig {
        Self::as_user(&self.redshift, EXPORTER_USER)
    }

    /// The source as the remediator's least-privilege user.
    pub fn remediator_source(&self) -> DatabaseConfig {
        Self::as_user(&self.source, REMEDIATOR_USER)
    }

    /// The Redshift stand-in as the remediator's least-privilege user.
    pub fn remediator_redshift(&self) -> DatabaseConfig {
        Self::as_user(&self.redshift, REMEDIATOR_USER)
    }

    pub async fn source_client(&self) -> anyhow::Result<Client> {
        Ok(dmsguard_pipeline::db::connect(&self.source).await?)
    }

    pub async fn redshift_client(&self) -> anyhow::Result<Client> {
        Ok(dmsguard_pipeline::db::connect(&self.redshift).await?)
    }

    /// Drops both databases (and any replication slots on them).
    pub async fn drop(self) -> anyhow::Result<()> {
        drop_databases(&self.env, &self.cleanup.names, self.cleanup.audit.as_ref()).await?;
        self.cleanup.done.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// An `[aws]` section pointing at a moto server, with retries off (moto answers 500 to
/// calls it does not implement).
pub fn aws_config(endpoint: &str) -> AwsConfig {
    AwsConfig {
        region: "us-east-1".to_owned(),
        endpoint_url: Some(endpoint.to_owned()),
        max_attempts: 1,
        // moto answers its first call of a service only once it has imported it: seconds on a
        // busy machine.
        timeout: Duration::from_secs(30),
        ..AwsConfig::default()
    }
}

/// Sets dummy AWS credentials for the SDK's default chain if none are set.
pub fn ensure_test_credentials() {
    // Tests run in one process; the values are constant, so concurrent calls agree.
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ] {
        if std::env::var_os(k).is_none() {
            // SAFETY-free: std::env::set_var is safe in edition 2021.
            std::env::set_var(k, v);
        }
    }
}

/// A condition that must never hold: returned from an [`eventually`] check, it fails the wait
/// at once instead of being retried like other errors.
#[derive(Debug)]
pub struct Violation(pub String);

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Violation {}

/// Polls `check` until it returns `Some`, or fails after `deadline` with the last reason. An
/// error retries the check (services may be starting), except a [`Violation`], which fails
/// at once.
pub async fn eventually<T, F, Fut>(
    what: &str,
    deadline: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let start = tokio::time::Instant::now();
    loop {
        let last = match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "condition not met".to_owned(),
            Err(e) if e.downcast_ref::<Violation>().is_some() => {
                return Err(e.context(format!("while waiting for {what}")));
            }
            Err(e) => format!("{e:#}"),
        };
        if start.elapsed() >= deadline {
            anyhow::bail!("timed out after {deadline:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ports handed out by [`free_port`] in this process: none is handed out twice.
static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
/// Where [`free_port`] looks: below Linux's ephemeral range (32768-60999), so that no outgoing
/// connection takes a port between the check and the service's own bind.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A free TCP port on loopback for a service a test starts, never one this process handed out
/// before and never one in the ephemeral range. Another process may still take it; services
/// started with it check that their child is alive and retry on another port if not.
pub fn free_port() -> u16 {
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let span = u32::from(PORTS.end - PORTS.start);
    // Test processes running side by side start at different places.
    let start = (std::process::id().wrapping_mul(7919) + handed.len() as u32 * 13) % span;
    for i in 0..span {
        let port = PORTS.start + ((start + i) % span) as u16;
        if handed.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed.push(port);
            return port;
        }
    }
    panic!("no free port in {PORTS:?} on loopback");
}
