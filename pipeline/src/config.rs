//! The one TOML configuration both binaries read (`dmsguard.toml`).
//!
//! Loading is three steps: parse the TOML, expand `${ENV}` references in string values, then
//! deserialize into this tree with unknown keys rejected. Every error names the offending key.
//! Each field's doc comment is the user's documentation; `dmsguard.example.toml` mirrors it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::iam_auth::IamMethod;
use crate::secret::Secret;

/// Exit code for an invalid configuration (`EX_USAGE` from sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

/// A configuration that could not be loaded; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config is not valid TOML: {0}")]
    Syntax(#[from] toml::de::Error),
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
}

impl ConfigError {
    fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Key {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The production PostgreSQL database DMS replicates from.
    pub source: DatabaseConfig,
    /// `[source.replica]`: a read replica of the source, with the same keys as `[source]`
    /// (url, password or password_file, sslmode, sslrootcert, iam, …). When set, every read of
    /// the source (the gap finder, the exporter's source probes, the repairs' row reads, the
    /// DDL generator) goes to it and the primary is only checked by preflight; replication
    /// progress is bounded by the replica's replay point (`dmsguard_pipeline::replica`).
    #[serde(skip)]
    pub source_replica: Option<DatabaseConfig>,
    /// The Amazon Redshift target DMS writes to.
    pub redshift: RedshiftConfig,
    /// How to reach the AWS APIs (DMS, CloudWatch, Redshift).
    #[serde(default)]
    pub aws: AwsConfig,
    /// The DMS replication tasks to watch and repair.
    #[serde(default)]
    pub tasks: Vec<TaskConfig>,
    /// The replicated tables to check for missing rows and to repair.
    #[serde(default)]
    pub tables: Vec<TableConfig>,
    /// Settings of `dmsguard-exporter`.
    #[serde(default)]
    pub exporter: ExporterConfig,
    /// Settings of `dmsguard-remediator`.
    #[serde(default)]
    pub remediator: RemediatorConfig,
    /// When a source row must have reached Redshift (replication progress).
    #[serde(default)]
    pub frontier: crate::frontier::FrontierConfig,
    /// The calendar of day windows; for tests and demos only.
    #[serde(default)]
    pub clock: crate::clock::ClockConfig,
}

/// A PostgreSQL-protocol database connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Connection URL without the password, e.g. `postgresql://dmsguard@db.internal:5432/app`.
    pub url: String,
    /// The password, usually as `${ENV_VAR}`. Mutually exclusive with `password_file`.
    pub password: Option<Secret>,
    /// A file whose content (trailing newline stripped) is the password.
    pub password_file: Option<PathBuf>,
    /// TLS: `disable`, `prefer` (default: TLS when the server offers it, unverified),
    /// `require` (TLS, unverified unless `sslrootcert` is set), `verify-ca` (certificate signed
    /// by a CA in `sslrootcert`) or `verify-full` (and naming the host); libpq's meanings. May be
    /// given in `url` instead (`?sslmode=verify-full`), not in both with different values.
    pub sslmode: Option<crate::tls::SslMode>,
    /// PEM file of the CA certificates that sign the server's certificate (for RDS/Aurora
    /// Amazon's `global-bundle.pem`, for Redshift `amazon-trust-ca-bundle.crt`), or `system`
    /// for the operating system's trust store. May be given in `url` instead.
    pub sslrootcert: Option<String>,
    /// How long to wait for a connection.
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout` set on every session; 0 disables it.
    #[serde(default = "defaults::statement_timeout", with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Log in with IAM database credentials instead of a password (then leave out `password`
    /// and `password_file`): `method = "rds"` for an RDS/Aurora IAM authentication token,
    /// `method = "redshift"` with `cluster_identifier` for `GetClusterCredentials`,
    /// `method = "redshift_serverless"` with `workgroup_name` for Redshift Serverless
    /// `GetCredentials`. Obtained for each new connection and reused until shortly before they
    /// expire.
    pub iam: Option<crate::iam_auth::IamAuthConfig>,
}

/// Which family of Redshift system views to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SystemViews {
    /// `SYS_QUERY_HISTORY`, `SYS_TRANSACTION_HISTORY`, `SYS_QUERY_TEXT` (current; default).
    #[default]
    Sys,
    /// `STL_QUERY`, `STL_QUERYTEXT` (provisioned clusters, older).
    Stl,
}

/// The Redshift target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedshiftConfig {
    /// Connection URL without the password, e.g. `postgresql://dmsguard@cluster.xyz.redshift.amazonaws.com:5439/dev`.
    pub url: String,
    /// The password, usually as `${ENV_VAR}`. Mutually exclusive with `password_file`.
    pub password: Option<Secret>,
    /// A file whose content (trailing newline stripped) is the password.
    pub password_file: Option<PathBuf>,
    /// TLS: `disable`, `prefer` (default: TLS when the server offers it, unverified),
    /// `require` (TLS, unverified unless `sslrootcert` is set), `verify-ca` (certificate signed
    /// by a CA in `sslrootcert`) or `verify-full` (and naming the host); libpq's meanings. May be
    /// given in `url` instead (`?sslmode=verify-full`), not in both with different values.
    pub sslmode: Option<crate::tls::SslMode>,
    /// PEM file of the CA certificates that sign the server's certificate (for RDS/Aurora
    /// Amazon's `global-bundle.pem`, for Redshift `amazon-trust-ca-bundle.crt`), or `system`
    /// for the operating system's trust store. May be given in `url` instead.
    pub sslrootcert: Option<String>,
    /// How long to wait for a connection.
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout` set on every session; 0 disables it.
    #[serde(default = "defaults::statement_timeout", with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Log in with IAM database credentials instead of a password (then leave out `password`
    /// and `password_file`): `method = "redshift"` with `cluster_identifier` calls
    /// `GetClusterCredentials`; the login user is the `IAM:`-prefixed name it returns. With
    /// `serverless = true`, `method = "redshift_serverless"` with `workgroup_name` calls
    /// Redshift Serverless `GetCredentials` for the URL's database; the login user is the one
    /// it maps the AWS identity to.
    pub iam: Option<crate::iam_auth::IamAuthConfig>,
    /// System views to read statements from: `sys` (default) or `stl`.
    #[serde(default)]
    pub system_views: SystemViews,
    /// SQL `LIKE` pattern matching the comment DMS puts in its statements.
    #[serde(default = "defaults::dms_comment_like")]
    pub dms_comment_like: String,
    /// How long a completed DMS statement whose transaction's end (COMMIT or ROLLBACK) is not
    /// yet in the system views waits before it is counted as committed. A transaction still
    /// open (DMS applying a long batch, or one statement at a time) logs its statements as
    /// they complete and its end only later; autocommit statements may never get one. The
    /// system-view pages say when a row appears, not how long an open transaction may last:
    /// default 5 minutes.
    #[serde(default = "defaults::statement_settle", with = "humantime_serde")]
    pub statement_settle: Duration,
    /// The database user of the DMS target endpoint (e.g. `dms_user`). When set, a statement
    /// counts as DMS's only if that user ran it as well as carrying the comment: no AWS
    /// document gives the comment's exact form, the endpoint's user is a firmer signal.
    pub dms_user: Option<String>,
    /// The schema holding DMS's control tables on the target (the task setting
    /// `ControlSchema`, e.g. `dmslogs`), where DMS always creates `awsdms_apply_exceptions`.
    #[serde(default = "defaults::control_schema")]
    pub control_schema: String,
    /// The Redshift cluster identifier, used to read the maintenance window with `DescribeClusters`.
    pub cluster_identifier: Option<String>,
    /// The maintenance window as `ddd:hh24:mi-ddd:hh24:mi` in UTC (e.g. `sun:05:00-sun:05:30`);
    /// takes precedence over `DescribeClusters`.
    pub maintenance_window: Option<String>,
    /// The target is Redshift Serverless: it has no maintenance window (AWS updates serverless
    /// workgroups during idle periods), so the maintenance probe does not run and F3 stops
    /// nothing. Exclusive with `cluster_identifier` and `maintenance_window`.
    #[serde(default)]
    pub serverless: bool,
}

impl RedshiftConfig {
    /// The connection part of this section.
    pub fn database(&self) -> DatabaseConfig {
        DatabaseConfig {
            url: self.url.clone(),
            password: self.password.clone(),
            password_file: self.password_file.clone(),
            sslmode: self.sslmode,
            sslrootcert: self.sslrootcert.clone(),
            connect_timeout: self.connect_timeout,
            statement_timeout: self.statement_timeout,
            iam: self.iam.clone(),
        }
    }
}

/// AWS API access. Credentials come from the standard AWS chain (environment variables, shared
/// profile, web identity token / IRSA, ECS container or EC2 instance role), optionally used
/// only to assume `role_arn`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// AWS region of the DMS replication instance and the Redshift cluster.
    #[serde(default = "defaults::region")]
    pub region: String,
    /// Override the API endpoint (for tests against a local AWS stand-in).
    pub endpoint_url: Option<String>,
    /// Attempts per API call, including the first (throttling and 5xx are retried with backoff).
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    /// Timeout of one API call attempt.
    #[serde(default = "defaults::api_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// An IAM role to assume with STS `AssumeRole` (e.g. a role in the production account when
    /// dmsguard runs in a monitoring account); the credential chain's identity only assumes it.
    /// Used for the DMS, CloudWatch and Redshift APIs. The temporary credentials are refreshed
    /// before they expire.
    pub role_arn: Option<String>,
    /// The external ID the role's trust policy requires (`sts:ExternalId`), if any.
    pub external_id: Option<String>,
    /// The role session name, shown in CloudTrail; default `dmsguard`.
    pub session_name: Option<String>,
}

impl Default for AwsConfig {
    fn default() -> Self {
        Self {
            region: defaults::region(),
            endpoint_url: None,
            max_attempts: defaults::max_attempts(),
            timeout: defaults::api_timeout(),
            role_arn: None,
            external_id: None,
            session_name: None,
        }
    }
}

impl AwsConfig {
    /// The role session name used when assuming `role_arn`.
    pub fn session_name(&self) -> &str {
        self.session_name.as_deref().unwrap_or("dmsguard")
    }

    // Limits from the AssumeRole API reference:
    // https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRole.html
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(arn) = &self.role_arn {
            let parts: Vec<&str> = arn.splitn(6, ':').collect();
            if parts.len() != 6
                || parts[0] != "arn"
                || parts[2] != "iam"
                || !parts[5].starts_with("role/")
            {
                return Err(ConfigError::key(
                    "aws.role_arn",
                    format!("`{arn}` is not an IAM role ARN (arn:aws:iam::123456789012:role/name)"),
                ));
            }
        } else {
            for (key, set) in [
                ("external_id", self.external_id.is_some()),
                ("session_name", self.session_name.is_some()),
            ] {
                if set {
                    return Err(ConfigError::key(
                        format!("aws.{key}"),
                        "only used with `role_arn`, which is not set",
                    ));
                }
            }
        }
        let name = self.session_name();
        let name_ok = (2..=64).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c));
        if !name_ok {
            return Err(ConfigError::key(
                "aws.session_name",
                "2 to 64 characters of letters, digits and _+=,.@-",
            ));
        }
        if let Some(id) = &self.external_id {
            let id_ok = (2..=1224).contains(&id.len())
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c));
            if !id_ok {
                return Err(ConfigError::key(
                    "aws.external_id",
                    "2 to 1224 characters of letters, digits and _+=,.@:/-",
                ));
            }
        }
        Ok(())
    }
}

/// A DMS replication task.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    /// The task identifier (the name shown in the console), used as the `task` label.
    pub name: String,
    /// The replication instance identifier the task runs on, used as the `instance` label.
    pub replication_instance: String,
}

/// A replicated table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// Source table as `schema.table`; also the `table` label. A part that needs quoting is
    /// written as PostgreSQL writes it: `public."Subscriber Events"` (`""` for a quote inside;
    /// unquoted parts fold to lower case). Normalised on load to its canonical form.
    pub source: String,
    /// Target table in Redshift as `schema.table` (quoted like `source`); defaults to `source`.
    /// Redshift folds even quoted names to lower case unless `enable_case_sensitive_identifier`
    /// is on (<https://docs.aws.amazon.com/redshift/latest/dg/r_names.html>,
    /// <https://docs.aws.amazon.com/redshift/latest/dg/r_enable_case_sensitive_identifier.html>):
    /// SQL names the table quoted as written, and its columns are looked up as written, then in
    /// lower case.
    pub target: Option<String>,
    /// The monotonically increasing bigint key column.
    #[serde(default = "defaults::id_column")]
    pub id_column: String,
    /// A source timestamp column used to map a UTC day to an id range (e.g. `created_at`).
    /// Without it, windows are not checked and only the whole id range is compared.
    pub day_column: Option<String>,
    /// The DMS task replicating this table (for the fixes that restart it).
    pub task: Option<String>,
    /// Whether the `divergent_rows` fix may rewrite this table's rows whose content diverged
    /// from the source (delete and insert of the id under the table's lock). The remediator's
    /// Redshift user then needs `DELETE` on the target table (`docs/grants.md`); the preflight
    /// checks it only for tables that set this.
    #[serde(default)]
    pub divergent_rows: bool,
    /// With `divergent_rows`: also delete ids the target holds and the source no longer has
    /// (a DELETE DMS lost), each only if the source still lacks it at repair time. Off by
    /// default: such ids are reported and left alone.
    #[serde(default)]
    pub delete_extra: bool,
    /// The most ids of this table the gaps probe reads per side in one run, across its day
    /// windows; overrides `[exporter] gaps_scan_budget_rows`. A window larger than its share
    /// is read in slices over successive runs. With `divergent_rows`, each id is read twice
    /// (ids, then content) and counts twice.
    pub scan_budget_rows: Option<u64>,
}

impl TableConfig {
    /// The target table name (`target`, or `source` when unset).
    pub fn target_name(&self) -> &str {
        self.target.as_deref().unwrap_or(&self.source)
    }

    /// The ids of this table the gaps probe reads per side in one run.
    pub fn scan_budget(&self, exporter: &ExporterConfig) -> u64 {
        self.scan_budget_rows
            .unwrap_or(exporter.gaps_scan_budget_rows)
    }
}

/// How often a probe refreshes and how long one refresh may take.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSchedule {
    /// Whether the probe runs.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// Time between refreshes.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Timeout of one refresh; a refresh that takes longer counts as a failure.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl ProbeSchedule {
    fn every(interval_secs: u64, timeout_secs: u64) -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(interval_secs),
            timeout: Duration::from_secs(timeout_secs),
        }
    }
}

/// Settings of `dmsguard-exporter`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExporterConfig {
    /// Address `/metrics` is served on (`--web.listen-address` overrides it).
    #[serde(default = "defaults::exporter_listen")]
    pub listen: SocketAddr,
    /// Path the metrics are served on (`--web.telemetry-path` overrides it).
    #[serde(default = "defaults::telemetry_path")]
    pub telemetry_path: String,
    /// exporter-toolkit web configuration file (YAML: TLS certificate and key, client CA,
    /// basic auth users with bcrypt hashes); relative to the working directory. Unset: plain
    /// HTTP without authentication. `--web.config.file` overrides it.
    pub web_config_file: Option<PathBuf>,
    /// How far back the statements probe looks on its first run.
    #[serde(default = "defaults::lookback", with = "humantime_serde")]
    pub statements_lookback: Duration,
    /// How far back CloudWatch is asked for datapoints.
    #[serde(default = "defaults::cloudwatch_window", with = "humantime_serde")]
    pub cloudwatch_window: Duration,
    /// Probe of DMS statements in the Redshift system views.
    #[serde(default = "defaults::statements_probe")]
    pub redshift_statements: ProbeSchedule,
    /// Probe of CloudWatch memory and latency metrics.
    #[serde(default = "defaults::cloudwatch_probe")]
    pub cloudwatch: ProbeSchedule,
    /// Probe of DMS task and instance state.
    #[serde(default = "defaults::dms_probe")]
    pub dms: ProbeSchedule,
    /// Probe of missing rows (gap finder); slow by design.
    #[serde(default = "defaults::gaps_probe")]
    pub gaps: ProbeSchedule,
    /// How often the gaps probe re-reads a finished day window (yesterday) in full once a read
    /// covered all of it (replication had passed its last id) and found nothing missing or
    /// extra. Such a window changes rarely; re-reading it on every `gaps` interval doubles what
    /// the probe scans. A window not yet read in full, or whose last read found differences
    /// (e.g. before a repair), is read on every interval. `0s` reads it every interval.
    #[serde(
        default = "defaults::finished_window_interval",
        with = "humantime_serde"
    )]
    pub finished_window_interval: Duration,
    /// The most ids per table the gaps probe reads per side in one run, today's and
    /// yesterday's windows together (a table's `scan_budget_rows` overrides it). A window
    /// larger than its share is read in slices of consecutive ids over successive runs, and its
    /// counts are those of each slice's latest read (up to one pass old);
    /// `dmsguard_table_scan_progress_ratio` says how far the current pass got. With
    /// `divergent_rows`, each id is read twice (ids, then content) and counts twice. The default
    /// (10,000,000) reads both windows of a table of up to about 5 million rows a day in full
    /// on every run, as without a budget, and bounds what a larger table costs the source.
    #[serde(default = "defaults::gaps_scan_budget_rows")]
    pub gaps_scan_budget_rows: u64,
    /// Probe of the Redshift maintenance window.
    #[serde(default = "defaults::maintenance_probe")]
    pub maintenance: ProbeSchedule,
    /// Run the `--preflight` checks once at start-up, log them and export
    /// `dmsguard_preflight_ok{check}` (default true; the exporter runs on whatever they find).
    #[serde(default = "defaults::yes")]
    pub preflight: bool,
}

impl Default for ExporterConfig {
    fn default() -> Self {
        Self {
            listen: defaults::exporter_listen(),
            telemetry_path: defaults::telemetry_path(),
            web_config_file: None,
            statements_lookback: defaults::lookback(),
            cloudwatch_window: defaults::cloudwatch_window(),
            redshift_statements: defaults::statements_probe(),
            cloudwatch: defaults::cloudwatch_probe(),
            dms: defaults::dms_probe(),
            gaps: defaults::gaps_probe(),
            finished_window_interval: defaults::finished_window_interval(),
            gaps_scan_budget_rows: defaults::gaps_scan_budget_rows(),
            maintenance: defaults::maintenance_probe(),
            preflight: true,
        }
    }
}

/// The fixes the remediator knows, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FixName {
    /// F1: repair the missing row behind one-by-one mode, then stop and resume the task.
    OneByOne,
    /// F2: stop and resume every task on a replication instance low on memory.
    Memory,
    /// F3: stop tasks before Redshift maintenance and resume them after.
    Maintenance,
    /// F4: insert rows missing in the target.
    MissingRows,
    /// F5: restart a task that says running but applies nothing.
    StalledTask,
    /// Rewrite rows whose content diverged from the source (missed UPDATEs) and, where
    /// configured, delete ids the source no longer has (missed DELETEs).
    DivergentRows,
}

impl FixName {
    pub const ALL: [FixName; 6] = [
        FixName::OneByOne,
        FixName::Memory,
        FixName::Maintenance,
        FixName::MissingRows,
        FixName::StalledTask,
        FixName::DivergentRows,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FixName::OneByOne => "one_by_one",
            FixName::Memory => "memory",
            FixName::Maintenance => "maintenance",
            FixName::MissingRows => "missing_rows",
            FixName::StalledTask => "stalled_task",
            FixName::DivergentRows => "divergent_rows",
        }
    }

    /// The alert that triggers this fix by default.
    pub fn default_alert(self) -> &'static str {
        match self {
            FixName::OneByOne => "DMSOneByOneMode",
            FixName::Memory => "DMSInstanceMemoryLow",
            FixName::Maintenance => "RedshiftMaintenanceImminent",
            FixName::MissingRows => "RedshiftMissingRows",
            FixName::StalledTask => "DMSTaskStalled",
            FixName::DivergentRows => "RedshiftDivergentRows",
        }
    }
}

impl std::fmt::Display for FixName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for FixName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FixName::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown fix `{s}` (known: {})",
                    FixName::ALL.map(FixName::as_str).join(", ")
                )
            })
    }
}

/// Per-fix switches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixConfig {
    /// Whether alerts may trigger this fix.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// Plan only: record and log the plan, change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Minimum time between two runs of this fix on the same task (or table).
    #[serde(default = "defaults::cooldown", with = "humantime_serde")]
    pub cooldown: Duration,
    /// Jobs of this fix running at once, across tasks.
    #[serde(default = "defaults::max_concurrency")]
    pub max_concurrency: usize,
}

impl Default for FixConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dry_run: false,
            cooldown: defaults::cooldown(),
            max_concurrency: defaults::max_concurrency(),
        }
    }
}

/// Settings of each fix.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixesConfig {
    #[serde(default)]
    pub one_by_one: FixConfig,
    #[serde(default)]
    pub memory: FixConfig,
    #[serde(default)]
    pub maintenance: FixConfig,
    #[serde(default)]
    pub missing_rows: FixConfig,
    #[serde(default)]
    pub stalled_task: FixConfig,
    #[serde(default)]
    pub divergent_rows: FixConfig,
}

impl FixesConfig {
    pub fn get(&self, fix: FixName) -> &FixConfig {
        match fix {
            FixName::OneByOne => &self.one_by_one,
            FixName::Memory => &self.memory,
            FixName::Maintenance => &self.maintenance,
            FixName::MissingRows => &self.missing_rows,
            FixName::StalledTask => &self.stalled_task,
            FixName::DivergentRows => &self.divergent_rows,
        }
    }
}

/// Settings of `dmsguard-remediator`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemediatorConfig {
    /// Address the webhook API, `/metrics` and the status page are served on
    /// (`--web.listen-address` overrides it).
    #[serde(default = "defaults::remediator_listen")]
    pub listen: SocketAddr,
    /// exporter-toolkit web configuration file (YAML: TLS certificate and key, client CA,
    /// basic auth users with bcrypt hashes) for the API; relative to the working directory.
    /// With basic auth users, `/alerts` and `/-/reload` take either a user or the bearer
    /// token. Unset: plain HTTP. `--web.config.file` overrides it.
    pub web_config_file: Option<PathBuf>,
    /// Bearer token Alertmanager must send, usually as `${ENV_VAR}`. Exclusive with `token_file`.
    pub token: Option<Secret>,
    /// A file whose content (trailing newline stripped) is the bearer token.
    pub token_file: Option<PathBuf>,
    /// Largest webhook body accepted, in bytes.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
    /// The PostgreSQL database holding the job ledger (schema `dmsguard`, created at start).
    /// Required by `dmsguard-remediator`; give it a small database of its own, never the
    /// production source (that needs CREATE there, and a wildcard DMS table mapping would
    /// replicate the ledger into Redshift).
    pub ledger: Option<DatabaseConfig>,
    /// Alert name -> fix. Defaults route each fix's own alert (`DMSOneByOneMode` -> `one_by_one`, …).
    #[serde(default = "defaults::routes")]
    pub routes: BTreeMap<String, FixName>,
    /// Per-fix switches.
    #[serde(default)]
    pub fixes: FixesConfig,
    /// F2: stop and resume tasks when the instance's freeable memory is below this many bytes.
    #[serde(default = "defaults::memory_threshold_bytes")]
    pub memory_threshold_bytes: u64,
    /// F3: how long before the maintenance window the tasks are stopped (the alert's lead time).
    #[serde(
        default = "defaults::maintenance_stop_before",
        with = "humantime_serde"
    )]
    pub maintenance_stop_before: Duration,
    /// F3: how long after the stop the tasks are resumed.
    #[serde(default = "defaults::maintenance_hold", with = "humantime_serde")]
    pub maintenance_hold: Duration,
    /// Repairs that insert rows: rows read from the source per query.
    #[serde(default = "defaults::insert_batch_rows")]
    pub insert_batch_rows: usize,
    /// Repairs that insert rows: most rows per multi-row `INSERT … VALUES` loading the
    /// session's staging table (fewer when the 32,767 bound parameters or
    /// `repair_statement_bytes` are reached first). On the lab's PostgreSQL about a thousand
    /// rows a statement loaded fastest (`tests/BENCH-REPAIR.md`).
    #[serde(default = "defaults::repair_statement_rows")]
    pub repair_statement_rows: usize,
    /// Repairs that insert rows: rows moved from the staging table into the target per
    /// transaction. Each move holds the target's `LOCK` (blocking DMS's apply to that table)
    /// while it runs; progress is recorded after each.
    #[serde(default = "defaults::repair_move_rows")]
    pub repair_move_rows: usize,
    /// Repairs that insert rows: most bytes of one statement loading the staging table, its
    /// SQL text and bound values counted together (Redshift refuses statements over 16 MB).
    #[serde(default = "defaults::repair_statement_bytes")]
    pub repair_statement_bytes: usize,
    /// Repairs that insert rows: at most this many rows per second are read and written
    /// (averaged over the repair), so that a large repair leaves Redshift and DMS's own apply
    /// room; unset: as fast as the databases allow.
    #[serde(default)]
    pub repair_rows_per_second: Option<u64>,
    /// Repairs that insert rows: the Redshift query group their session sets
    /// (`SET query_group TO '…'`), so that a WLM queue can take them (and its rules limit them)
    /// and `SYS_QUERY_HISTORY.query_label` names them; empty: not set.
    #[serde(default = "defaults::repair_query_group")]
    pub repair_query_group: String,
    /// How long to wait for a DMS task to reach `stopped` or `running`.
    #[serde(default = "defaults::task_state_timeout", with = "humantime_serde")]
    pub task_state_timeout: Duration,
    /// F1: how far back the system views are searched for the rolled-back DMS UPDATE.
    #[serde(default = "defaults::one_by_one_lookback", with = "humantime_serde")]
    pub one_by_one_lookback: Duration,
    /// Every fix that stops a task records in the ledger, before the stop, that the task is
    /// owed a resume; a background sweeper carries it out (across timeouts, throttling and
    /// restarts) once the task is stopped. How often the sweeper looks again at a task it could
    /// not resume yet (still `stopping`, throttled, …).
    #[serde(default = "defaults::resume_retry_interval", with = "humantime_serde")]
    pub resume_retry_interval: Duration,
    /// How long an owed resume is tried before the job is marked `needs_human` (counted from
    /// the stop, or from the planned resume time for F3).
    #[serde(default = "defaults::resume_give_up_after", with = "humantime_serde")]
    pub resume_give_up_after: Duration,
    /// F3: added to the maintenance window's length to make the hold when the cluster's
    /// schedule is known (`NextMaintenanceWindowStartTime` and the preferred window's length).
    #[serde(default = "defaults::maintenance_margin", with = "humantime_serde")]
    pub maintenance_margin: Duration,
    /// Run the `preflight` checks (with the remediator's: ledger, INSERT on the targets) once
    /// at start-up and log each result (default true).
    #[serde(default = "defaults::yes")]
    pub preflight: bool,
    /// How often the remediator runs the preflight checks again (also after each reload), so
    /// that a grant given or taken away enables or disables the fixes needing it without a
    /// restart. A fix whose checks fail is disabled: its alerts are recorded as `refused` jobs;
    /// while one is, the checks run at least every minute.
    #[serde(default = "defaults::preflight_interval", with = "humantime_serde")]
    pub preflight_interval: Duration,
}

impl Default for RemediatorConfig {
    fn default() -> Self {
        Self {
            listen: defaults::remediator_listen(),
            web_config_file: None,
            token: None,
            token_file: None,
            max_body_bytes: defaults::max_body_bytes(),
            ledger: None,
            routes: defaults::routes(),
            fixes: FixesConfig::default(),
            memory_threshold_bytes: defaults::memory_threshold_bytes(),
            maintenance_stop_before: defaults::maintenance_stop_before(),
            maintenance_hold: defaults::maintenance_hold(),
            insert_batch_rows: defaults::insert_batch_rows(),
            repair_statement_rows: defaults::repair_statement_rows(),
            repair_move_rows: defaults::repair_move_rows(),
            repair_statement_bytes: defaults::repair_statement_bytes(),
            repair_rows_per_second: None,
            repair_query_group: defaults::repair_query_group(),
            task_state_timeout: defaults::task_state_timeout(),
            one_by_one_lookback: defaults::one_by_one_lookback(),
            resume_retry_interval: defaults::resume_retry_interval(),
            resume_give_up_after: defaults::resume_give_up_after(),
            maintenance_margin: defaults::maintenance_margin(),
            preflight: true,
            preflight_interval: defaults::preflight_interval(),
        }
    }
}

/// A metrics path must start with `/` and not take the landing page's or `/healthz`'s place.
pub fn check_telemetry_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.len() < 2 {
        return Err(format!(
            "`{path}` must start with `/` and name a path (e.g. /metrics)"
        ));
    }
    if ["/healthz", "/-/reload"].contains(&path) {
        return Err(format!("`{path}` is taken by the exporter itself"));
    }
    Ok(())
}

/// Named defaults, one function each so serde and `Default` share them.
pub mod defaults {
    use super::*;

    pub fn yes() -> bool {
        true
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn statement_timeout() -> Duration {
        Duration::from_secs(300)
    }
    pub fn statement_settle() -> Duration {
        Duration::from_secs(300)
    }
    pub fn dms_comment_like() -> String {
        "%AWS DMS%".to_owned()
    }
    pub fn control_schema() -> String {
        "public".to_owned()
    }
    pub fn region() -> String {
        "us-east-1".to_owned()
    }
    pub fn max_attempts() -> u32 {
        3
    }
    pub fn api_timeout() -> Duration {
        Duration::from_secs(20)
    }
    pub fn id_column() -> String {
        "id".to_owned()
    }
    pub fn exporter_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9854))
    }
    pub fn telemetry_path() -> String {
        "/metrics".into()
    }
    pub fn remediator_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9855))
    }
    pub fn lookback() -> Duration {
        Duration::from_secs(3600)
    }
    pub fn cloudwatch_window() -> Duration {
        Duration::from_secs(900)
    }
    pub fn statements_probe() -> ProbeSchedule {
        ProbeSchedule::every(30, 25)
    }
    pub fn cloudwatch_probe() -> ProbeSchedule {
        ProbeSchedule::every(60, 30)
    }
    pub fn dms_probe() -> ProbeSchedule {
        ProbeSchedule::every(30, 20)
    }
    pub fn gaps_probe() -> ProbeSchedule {
        ProbeSchedule::every(300, 240)
    }
    pub fn finished_window_interval() -> Duration {
        Duration::from_secs(60 * 60)
    }
    pub fn gaps_scan_budget_rows() -> u64 {
        10_000_000
    }
    pub fn maintenance_probe() -> ProbeSchedule {
        ProbeSchedule::every(60, 20)
    }
    pub fn cooldown() -> Duration {
        Duration::from_secs(15 * 60)
    }
    pub fn max_concurrency() -> usize {
        2
    }
    pub fn max_body_bytes() -> usize {
        1024 * 1024
    }
    pub fn routes() -> BTreeMap<String, FixName> {
        FixName::ALL
            .into_iter()
            .map(|f| (f.default_alert().to_owned(), f))
            .collect()
    }
    pub fn memory_threshold_bytes() -> u64 {
        1_500_000_000
    }
    pub fn maintenance_stop_before() -> Duration {
        Duration::from_secs(5 * 60)
    }
    pub fn maintenance_hold() -> Duration {
        Duration::from_secs(35 * 60)
    }
    pub fn insert_batch_rows() -> usize {
        5000
    }
    pub fn repair_statement_rows() -> usize {
        1000
    }
    pub fn repair_move_rows() -> usize {
        50_000
    }
    pub fn repair_query_group() -> String {
        "dmsguard".to_owned()
    }
    pub fn repair_statement_bytes() -> usize {
        8 * 1024 * 1024
    }
    pub fn resume_retry_interval() -> Duration {
        Duration::from_secs(15)
    }
    pub fn resume_give_up_after() -> Duration {
        Duration::from_secs(3600)
    }
    pub fn preflight_interval() -> Duration {
        Duration::from_secs(5 * 60)
    }
    pub fn maintenance_margin() -> Duration {
        Duration::from_secs(5 * 60)
    }
    pub fn task_state_timeout() -> Duration {
        Duration::from_secs(600)
    }
    pub fn one_by_one_lookback() -> Duration {
        Duration::from_secs(2 * 3600)
    }
}

impl Config {
    /// Reads, expands and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, &|name| std::env::var(name).ok())
    }

    /// Parses config text; `env` resolves `${NAME}` references.
    pub fn from_toml(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text)?;
        expand_table(&mut table, "", env)?;
        // `[source.replica]` is a database of its own: taken out before `[source]` is read.
        let replica = table
            .get_mut("source")
            .and_then(toml::Value::as_table_mut)
            .and_then(|source| source.remove("replica"));
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError::key(e.path().to_string(), e.inner().to_string()))?;
        if let Some(replica) = replica {
            config.source_replica =
                Some(serde_path_to_error::deserialize(replica).map_err(|e| {
                    let path = e.path().to_string();
                    let key = if path == "." || path.is_empty() {
                        "source.replica".to_owned()
                    } else {
                        format!("source.replica.{path}")
                    };
                    ConfigError::key(key, e.inner().to_string())
                })?);
        }
        config.normalise_table_names()?;
        config.validate()?;
        config.attach_aws_to_iam();
        Ok(config)
    }

    /// Gives each database that logs in with IAM credentials the `[aws]` settings to get them with.
    fn attach_aws_to_iam(&mut self) {
        let aws = self.aws.clone();
        for iam in [
            self.source.iam.as_mut(),
            self.source_replica
                .as_mut()
                .and_then(|replica| replica.iam.as_mut()),
            self.redshift.iam.as_mut(),
            self.remediator
                .ledger
                .as_mut()
                .and_then(|ledger| ledger.iam.as_mut()),
        ]
        .into_iter()
        .flatten()
        {
            iam.aws = Some(aws.clone());
        }
    }

    /// Rewrites every `[[tables]]` source and target to its canonical text (see
    /// [`QualifiedName`]'s `Display`), so labels and lookups agree however a name was written.
    fn normalise_table_names(&mut self) -> Result<(), ConfigError> {
        for (i, table) in self.tables.iter_mut().enumerate() {
            for (field, value) in [
                ("source", Some(&mut table.source)),
                ("target", table.target.as_mut()),
            ] {
                if let Some(value) = value {
                    let name = QualifiedName::parse_detailed(value)
                        .map_err(|e| ConfigError::key(format!("tables[{i}].{field}"), e))?;
                    *value = name.to_string();
                }
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        check_telemetry_path(&self.exporter.telemetry_path)
            .map_err(|m| ConfigError::key("exporter.telemetry_path", m))?;
        check_secret_pair("source", &self.source.password, &self.source.password_file)?;
        check_secret_pair(
            "redshift",
            &self.redshift.password,
            &self.redshift.password_file,
        )?;
        if let Some(ledger) = &self.remediator.ledger {
            check_secret_pair("remediator.ledger", &ledger.password, &ledger.password_file)?;
        }
        if let Some(replica) = &self.source_replica {
            check_secret_pair("source.replica", &replica.password, &replica.password_file)?;
            check_iam("source.replica", replica, IamMethod::Rds)?;
            check_tls("source.replica", replica)?;
        }
        self.aws.validate()?;
        check_iam("source", &self.source, IamMethod::Rds)?;
        check_iam(
            "redshift",
            &self.redshift.database(),
            if self.redshift.serverless {
                IamMethod::RedshiftServerless
            } else {
                IamMethod::Redshift
            },
        )?;
        if let Some(ledger) = &self.remediator.ledger {
            check_iam("remediator.ledger", ledger, IamMethod::Rds)?;
        }
        check_tls("source", &self.source)?;
        check_tls("redshift", &self.redshift.database())?;
        if let Some(ledger) = &self.remediator.ledger {
            check_tls("remediator.ledger", ledger)?;
        }
        check_pair(
            "remediator",
            "token",
            &self.remediator.token,
            &self.remediator.token_file,
        )?;
        let mut names = std::collections::HashSet::new();
        for (i, task) in self.tasks.iter().enumerate() {
            if task.name.is_empty() {
                return Err(ConfigError::key(
                    format!("tasks[{i}].name"),
                    "must not be empty",
                ));
            }
            if !names.insert(task.name.as_str()) {
                return Err(ConfigError::key(
                    format!("tasks[{i}].name"),
                    format!("duplicate task `{}`", task.name),
                ));
            }
        }
        let mut tables = std::collections::HashSet::new();
        for (i, table) in self.tables.iter().enumerate() {
            if !tables.insert(table.source.as_str()) {
                return Err(ConfigError::key(
                    format!("tables[{i}].source"),
                    format!("duplicate table `{}`", table.source),
                ));
            }
            if let Some(task) = &table.task {
                if !names.contains(task.as_str()) {
                    return Err(ConfigError::key(
                        format!("tables[{i}].task"),
                        format!("no [[tasks]] entry is named `{task}`"),
                    ));
                }
            }
            if table.scan_budget_rows == Some(0) {
                return Err(ConfigError::key(
                    format!("tables[{i}].scan_budget_rows"),
                    "must be above 0",
                ));
            }
        }
        if self.exporter.gaps_scan_budget_rows == 0 {
            return Err(ConfigError::key(
                "exporter.gaps_scan_budget_rows",
                "must be above 0",
            ));
        }
        if self.redshift.serverless
            && (self.redshift.cluster_identifier.is_some()
                || self.redshift.maintenance_window.is_some())
        {
            return Err(ConfigError::key(
                "redshift.serverless",
                "Redshift Serverless has no maintenance window: leave out cluster_identifier and maintenance_window",
            ));
        }
        if let Some(window) = &self.redshift.maintenance_window {
            if let Err(e) = crate::config::MaintenanceWindow::parse(window) {
                return Err(ConfigError::key("redshift.maintenance_window", e));
            }
        }
        for (section, s) in [
            (
                "exporter.redshift_statements",
                &self.exporter.redshift_statements,
            ),
            ("exporter.cloudwatch", &self.exporter.cloudwatch),
            ("exporter.dms", &self.exporter.dms),
            ("exporter.gaps", &self.exporter.gaps),
            ("exporter.maintenance", &self.exporter.maintenance),
        ] {
            if s.interval.is_zero() {
                return Err(ConfigError::key(
                    format!("{section}.interval"),
                    "must be above 0",
                ));
            }
            if s.timeout.is_zero() {
                return Err(ConfigError::key(
                    format!("{section}.timeout"),
                    "must be above 0",
                ));
            }
        }
        if self.remediator.insert_batch_rows == 0 {
            return Err(ConfigError::key(
                "remediator.insert_batch_rows",
                "must be above 0",
            ));
        }
        if self.remediator.repair_statement_rows == 0 {
            return Err(ConfigError::key(
                "remediator.repair_statement_rows",
                "must be above 0",
            ));
        }
        if self.remediator.repair_move_rows == 0 {
            return Err(ConfigError::key(
                "remediator.repair_move_rows",
                "must be above 0",
            ));
        }
        // A query group is a label of at most 320 characters (`SYS_QUERY_HISTORY.query_label`).
        if self.remediator.repair_query_group.chars().count() > 320
            || self.remediator.repair_query_group.contains(['\'', '\\'])
        {
            return Err(ConfigError::key(
                "remediator.repair_query_group",
                "must be at most 320 characters, without quotes or backslashes",
            ));
        }
        if self.remediator.preflight_interval < Duration::from_secs(1) {
            return Err(ConfigError::key(
                "remediator.preflight_interval",
                "must be at least 1s",
            ));
        }
        if self.remediator.repair_rows_per_second == Some(0) {
            return Err(ConfigError::key(
                "remediator.repair_rows_per_second",
                "must be above 0 (leave it out for no limit)",
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.remediator.repair_statement_bytes) {
            return Err(ConfigError::key(
                "remediator.repair_statement_bytes",
                "must be between 1024 and 16777216 (Redshift's 16 MB statement limit)",
            ));
        }
        for fix in FixName::ALL {
            if self.remediator.fixes.get(fix).max_concurrency == 0 {
                return Err(ConfigError::key(
                    format!("remediator.fixes.{fix}.max_concurrency"),
                    "must be above 0",
                ));
            }
        }
        Ok(())
    }

    /// The ledger database, `[remediator.ledger]`; an error naming the key when it is unset
    /// (the remediator needs it; the exporter does not).
    pub fn ledger_database(&self) -> Result<&DatabaseConfig, ConfigError> {
        self.remediator.ledger.as_ref().ok_or_else(|| {
            ConfigError::key(
                "remediator.ledger",
                "missing: dmsguard-remediator keeps its job ledger (schema `dmsguard`) in a \
                 PostgreSQL database of its own; add a [remediator.ledger] section with `url` \
                 and `password` or `password_file`, e.g. url = \"postgresql://dmsguard@ops-db:5432/dmsguard\". \
                 It no longer defaults to [source]: that needed CREATE on the production \
                 database, and a wildcard DMS table mapping replicated the ledger into Redshift",
            )
        })
    }

    /// The database every read of the source goes to: `[source.replica]` when set, else
    /// `[source]`. Nothing dmsguard does writes the source.
    pub fn source_reads(&self) -> &DatabaseConfig {
        self.source_replica.as_ref().unwrap_or(&self.source)
    }

    /// Whether the ledger is the same database as `[source]` (same host, port and database).
    pub fn ledger_is_source(&self) -> bool {
        self.remediator
            .ledger
            .as_ref()
            .is_some_and(|l| crate::db::describe(l) == crate::db::describe(&self.source))
    }

    /// The configured table whose source or target name is `name`, compared as PostgreSQL
    /// would (`Public.Orders` is `public.orders`; `public."Subscriber Events"` keeps its case).
    pub fn table(&self, name: &str) -> Option<&TableConfig> {
        let canonical = QualifiedName::parse(name).map(|n| n.to_string());
        let name = canonical.as_deref().unwrap_or(name);
        self.tables
            .iter()
            .find(|t| t.source == name || t.target_name() == name)
    }

    /// The configured task named `name`.
    pub fn task(&self, name: &str) -> Option<&TaskConfig> {
        self.tasks.iter().find(|t| t.name == name)
    }
}

/// `sslmode`/`sslrootcert` of a database are valid and agree between its URL and its keys.
fn check_tls(section: &str, db: &DatabaseConfig) -> Result<(), ConfigError> {
    use crate::tls::TlsError;
    let settings = crate::db::tls_settings(db).map_err(|e| {
        let key = match &e {
            TlsError::Conflict { key, .. } => key,
            _ => "url",
        };
        ConfigError::key(format!("{section}.{key}"), e.to_string())
    })?;
    if settings.mode.verifies() && settings.root_cert.is_none() {
        return Err(ConfigError::key(
            format!("{section}.sslrootcert"),
            TlsError::RootCertMissing(settings.mode).to_string(),
        ));
    }
    Ok(())
}

/// A database logging in with IAM has no password, the method its kind of database takes,
/// and the method's settings.
fn check_iam(section: &str, db: &DatabaseConfig, method: IamMethod) -> Result<(), ConfigError> {
    let Some(iam) = &db.iam else {
        return Ok(());
    };
    if db.password.is_some() || db.password_file.is_some() {
        return Err(ConfigError::key(
            format!("{section}.iam"),
            "IAM database credentials replace the password: leave out `password` and `password_file`",
        ));
    }
    if iam.method != method {
        let why = match (iam.method, method) {
            (IamMethod::Redshift, IamMethod::RedshiftServerless) => {
                "Redshift Serverless (`redshift.serverless = true`) issues logins with \
                 GetCredentials: use `method = \"redshift_serverless\"` with `workgroup_name`"
                    .to_owned()
            }
            (IamMethod::RedshiftServerless, IamMethod::Redshift) => {
                "`redshift_serverless` needs `redshift.serverless = true`; a provisioned cluster \
                 uses `method = \"redshift\"` with `cluster_identifier`"
                    .to_owned()
            }
            _ => format!("`{}` does not apply here; use `{method}`", iam.method),
        };
        return Err(ConfigError::key(format!("{section}.iam.method"), why));
    }
    // The keys each method takes; any other is refused.
    let keys = [
        ("cluster_identifier", iam.cluster_identifier.is_some()),
        ("workgroup_name", iam.workgroup_name.is_some()),
        ("db_user", iam.db_user.is_some()),
        ("auto_create", iam.auto_create),
        ("db_groups", !iam.db_groups.is_empty()),
    ];
    let takes: &[&str] = match iam.method {
        IamMethod::Redshift => &["cluster_identifier", "db_user", "auto_create", "db_groups"],
        IamMethod::RedshiftServerless => &["workgroup_name"],
        IamMethod::Rds => &[],
    };
    if let Some((key, _)) = keys.iter().find(|(key, set)| *set && !takes.contains(key)) {
        let why = match iam.method {
            IamMethod::RedshiftServerless => {
                "not taken by `method = \"redshift_serverless\"`: GetCredentials logs in as the \
                 user mapped to the AWS identity"
            }
            IamMethod::Redshift => "not taken by `method = \"redshift\"`",
            IamMethod::Rds => "not taken by `method = \"rds\"`",
        };
        return Err(ConfigError::key(format!("{section}.iam.{key}"), why));
    }
    match iam.method {
        IamMethod::Redshift | IamMethod::RedshiftServerless => {
            let (key, value, api) = if iam.method == IamMethod::Redshift {
                (
                    "cluster_identifier",
                    &iam.cluster_identifier,
                    "`method = \"redshift\"` (GetClusterCredentials)",
                )
            } else {
                (
                    "workgroup_name",
                    &iam.workgroup_name,
                    "`method = \"redshift_serverless\"` (GetCredentials)",
                )
            };
            if value.as_deref().unwrap_or("").is_empty() {
                return Err(ConfigError::key(
                    format!("{section}.iam.{key}"),
                    format!("required by {api}"),
                ));
            }
            // DurationSeconds: 900 to 3600, for both APIs
            // (https://docs.aws.amazon.com/redshift/latest/APIReference/API_GetClusterCredentials.html,
            // https://docs.aws.amazon.com/redshift-serverless/latest/APIReference/API_GetCredentials.html).
            if !(900..=3600).contains(&iam.duration.as_secs()) {
                return Err(ConfigError::key(
                    format!("{section}.iam.duration"),
                    "must be between 15 and 60 minutes",
                ));
            }
        }
        IamMethod::Rds => {
            // RDS accepts IAM tokens only over TLS
            // (https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/UsingWithRDS.IAMDBAuth.html).
            if crate::db::tls_settings(db).is_ok_and(|t| t.mode == crate::tls::SslMode::Disable) {
                return Err(ConfigError::key(
                    format!("{section}.sslmode"),
                    "RDS accepts IAM authentication tokens only over TLS: use `require` or `verify-full`",
                ));
            }
        }
    }
    Ok(())
}

fn check_secret_pair(
    section: &str,
    value: &Option<Secret>,
    file: &Option<PathBuf>,
) -> Result<(), ConfigError> {
    check_pair(section, "password", value, file)
}

fn check_pair(
    section: &str,
    name: &str,
    value: &Option<Secret>,
    file: &Option<PathBuf>,
) -> Result<(), ConfigError> {
    if value.is_some() && file.is_some() {
        return Err(ConfigError::key(
            format!("{section}.{name}"),
            format!("set either `{name}` or `{name}_file`, not both"),
        ));
    }
    Ok(())
}

/// Reads a secret given inline or in a file (trailing newline stripped).
pub fn resolve_secret(
    value: &Option<Secret>,
    file: &Option<PathBuf>,
) -> Result<Option<Secret>, std::io::Error> {
    match (value, file) {
        (Some(v), _) => Ok(Some(v.clone())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)?;
            Ok(Some(Secret::new(text.trim_end_matches(['\n', '\r']))))
        }
        (None, None) => Ok(None),
    }
}

fn expand_table(
    table: &mut toml::Table,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    for (key, value) in table.iter_mut() {
        let here = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        expand_value(value, &here, env)?;
    }
    Ok(())
}

fn expand_value(
    value: &mut toml::Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(s) => {
            *s = expand_env(s, env).map_err(|m| ConfigError::key(path, m))?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_value(item, &format!("{path}[{i}]"), env)?;
            }
        }
        toml::Value::Table(t) => expand_table(t, path, env)?,
        _ => {}
    }
    Ok(())
}

/// Replaces `${NAME}` with the variable's value; `$${` escapes a literal `${`.
pub fn expand_env(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| "unterminated `${` reference".to_owned())?;
            let name = &tail[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`${{{name}}}` is not a valid variable reference"));
            }
            let val =
                env(name).ok_or_else(|| format!("environment variable `{name}` is not set"))?;
            out.push_str(&val);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A `schema.table` name, each part as PostgreSQL resolves it: an unquoted part folded to lower
/// case, a quoted part exactly as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QualifiedName {
    pub schema: String,
    pub table: String,
}

impl QualifiedName {
    /// Parses `schema.table` with PostgreSQL's rules for identifiers: a part is either plain
    /// (`[A-Za-z_][A-Za-z0-9_$]*`, folded to lower case) or double-quoted (any characters, `""`
    /// for a quote inside, case kept, never empty). `public.orders`, `Public.Orders` and
    /// `"public"."orders"` name the same table; `public."Subscriber Events"` another.
    pub fn parse(s: &str) -> Option<Self> {
        Self::parse_detailed(s).ok()
    }

    /// [`QualifiedName::parse`], saying what is wrong.
    pub fn parse_detailed(s: &str) -> Result<Self, String> {
        let (schema, rest) = identifier_part(s)?;
        let rest = rest
            .strip_prefix('.')
            .ok_or_else(|| format!("`{s}` is not `schema.table`"))?;
        let (table, rest) = identifier_part(rest)?;
        if !rest.is_empty() {
            return Err(format!(
                "`{s}` is not `schema.table` (unexpected `{rest}` after the table)"
            ));
        }
        Ok(Self { schema, table })
    }

    /// The name quoted for SQL: `"schema"."table"`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }
}

/// One identifier at the start of `s` and what follows it.
fn identifier_part(s: &str) -> Result<(String, &str), String> {
    if let Some(body) = s.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '"' {
                name.push(c);
                continue;
            }
            if body[i + 1..].starts_with('"') {
                name.push('"');
                chars.next();
                continue;
            }
            if name.is_empty() {
                return Err(format!("`{s}`: a quoted identifier must not be empty"));
            }
            return Ok((name, &body[i + 1..]));
        }
        return Err(format!("`{s}`: unterminated quoted identifier"));
    }
    let end = s.find(['.', '"']).unwrap_or(s.len());
    let part = &s[..end];
    if !is_identifier(part) {
        return Err(format!(
            "`{part}` is not an identifier (letters, digits, `_`, `$`, not starting with a digit; \
             quote any other name with double quotes)"
        ));
    }
    Ok((part.to_ascii_lowercase(), &s[end..]))
}

/// A part written bare when PostgreSQL would read it back unchanged, quoted otherwise.
fn display_part(part: &str) -> std::borrow::Cow<'_, str> {
    let plain = is_identifier(part) && !part.chars().any(|c| c.is_ascii_uppercase());
    if plain {
        part.into()
    } else {
        quote_ident(part).into()
    }
}

/// The canonical text: `public.orders`, `public."Subscriber Events"`. Parsing it gives the
/// same name back; it is the `table` label and the form the config is normalised to.
impl std::fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{}",
            display_part(&self.schema),
            display_part(&self.table)
        )
    }
}

/// Whether `s` is a plain SQL identifier.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

/// Quotes an identifier for SQL, doubling embedded quotes.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A weekly maintenance window, `ddd:hh24:mi-ddd:hh24:mi` in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaintenanceWindow {
    /// Minutes since Monday 00:00 UTC of the start.
    pub start_minute: u32,
    /// Minutes since Monday 00:00 UTC of the end.
    pub end_minute: u32,
}

impl MaintenanceWindow {
    pub const MINUTES_PER_WEEK: u32 = 7 * 24 * 60;

    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("`{s}` is not `ddd:hh24:mi-ddd:hh24:mi`"))?;
        Ok(Self {
            start_minute: week_minute(a)?,
            end_minute: week_minute(b)?,
        })
    }

    /// Window length in minutes (wraps around the week).
    pub fn duration_minutes(&self) -> u32 {
        (self.end_minute + Self::MINUTES_PER_WEEK - self.start_minute) % Self::MINUTES_PER_WEEK
    }
}

fn week_minute(s: &str) -> Result<u32, String> {
    let parts: Vec<&str> = s.trim().split(':').collect();
    let [day, hh, mm] = parts[..] else {
        return Err(format!("`{s}` is not `ddd:hh24:mi`"));
    };
    let day = match day.to_ascii_lowercase().as_str() {
        "mon" => 0,
        "tue" => 1,
        "wed" => 2,
        "thu" => 3,
        "fri" => 4,
        "sat" => 5,
        "sun" => 6,
        other => return Err(format!("`{other}` is not a day (mon..sun)")),
    };
    let hh: u32 = hh
        .parse()
        .ok()
        .filter(|h| *h < 24)
        .ok_or_else(|| format!("`{hh}` is not an hour 00-23"))?;
    let mm: u32 = mm
        .parse()
        .ok()
        .filter(|m| *m < 60)
        .ok_or_else(|| format!("`{mm}` is not a minute 00-59"))?;
    Ok(day * 24 * 60 + hh * 60 + mm)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [source]
        url = "postgresql://u@localhost/source"
        password = "${PW}"
        [redshift]
        url = "postgresql://u@localhost/redshift"
    "#;

    fn env(name: &str) -> Option<String> {
        (name == "PW").then(|| "s3cret".to_owned())
    }

    #[test]
    fn minimal_config_gets_defaults_and_expands_env() {
        let c = Config::from_toml(MINIMAL, &env).unwrap();
        assert_eq!(c.source.password.unwrap().expose(), "s3cret");
        assert_eq!(
            c.remediator.fixes.one_by_one.cooldown,
            Duration::from_secs(900)
        );
        assert_eq!(c.remediator.routes["DMSOneByOneMode"], FixName::OneByOne);
        assert_eq!(c.redshift.system_views, SystemViews::Sys);
        assert_eq!(c.redshift.statement_settle, Duration::from_secs(300));
        let text = MINIMAL.replace("[redshift]\n", "[redshift]\nstatement_settle = \"5s\"\n");
        let c = Config::from_toml(&text, &env).unwrap();
        assert_eq!(c.redshift.statement_settle, Duration::from_secs(5));
    }

    #[test]
    fn iam_credentials_are_checked_and_get_the_aws_settings() {
        let base = r#"
            [aws]
            region = "eu-west-1"
            [source]
            url = "postgresql://dmsguard@db.example:5432/app"
            sslmode = "require"
            iam = { method = "rds" }
            [redshift]
            url = "postgresql://dmsguard@cluster.example:5439/dev"
            iam = { method = "redshift", cluster_identifier = "prod", duration = "30m" }
        "#;
        let c = Config::from_toml(base, &env).unwrap();
        let source = c.source.iam.as_ref().unwrap();
        assert_eq!(source.method, IamMethod::Rds);
        assert_eq!(source.aws.as_ref().unwrap().region, "eu-west-1");
        let redshift = c.redshift.database().iam.unwrap();
        assert_eq!(redshift.cluster_identifier.as_deref(), Some("prod"));
        assert_eq!(redshift.duration, Duration::from_secs(1800));
        assert!(redshift.aws.is_some());

        for (change, key) in [
            (
                (
                    "iam = { method = \"rds\" }",
                    "iam = { method = \"rds\" }\npassword = \"x\"",
                ),
                "source.iam",
            ),
            (
                (
                    "iam = { method = \"rds\" }",
                    "iam = { method = \"redshift\", cluster_identifier = \"c\" }",
                ),
                "source.iam.method",
            ),
            (
                (
                    "iam = { method = \"rds\" }",
                    "iam = { method = \"rds\", db_user = \"x\" }",
                ),
                "source.iam.db_user",
            ),
            (
                ("sslmode = \"require\"", "sslmode = \"disable\""),
                "source.sslmode",
            ),
            (
                ("cluster_identifier = \"prod\", ", ""),
                "redshift.iam.cluster_identifier",
            ),
            (
                ("duration = \"30m\"", "duration = \"2h\""),
                "redshift.iam.duration",
            ),
        ] {
            let text = base.replacen(change.0, change.1, 1);
            assert_ne!(text, base);
            let err = Config::from_toml(&text, &env).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        }
    }

    #[test]
    fn redshift_serverless_iam_needs_a_workgroup_and_serverless() {
        let base = r#"
            [source]
            url = "postgresql://dmsguard@db.example:5432/app"
            password = "x"
            [redshift]
            url = "postgresql://dmsguard@wg.123456789012.us-east-1.redshift-serverless.amazonaws.com:5439/dev"
            serverless = true
            iam = { method = "redshift_serverless", workgroup_name = "analytics", duration = "20m" }
        "#;
        let c = Config::from_toml(base, &env).unwrap();
        let iam = c.redshift.database().iam.unwrap();
        assert_eq!(iam.method, IamMethod::RedshiftServerless);
        assert_eq!(iam.workgroup_name.as_deref(), Some("analytics"));
        assert_eq!(iam.duration, Duration::from_secs(1200));
        assert!(iam.aws.is_some());

        for (change, key, says) in [
            (
                ("workgroup_name = \"analytics\", ", ""),
                "redshift.iam.workgroup_name",
                "required",
            ),
            (
                ("serverless = true\n", ""),
                "redshift.iam.method",
                "serverless = true",
            ),
            (
                ("method = \"redshift_serverless\"", "method = \"redshift\""),
                "redshift.iam.method",
                "redshift_serverless",
            ),
            (
                ("duration = \"20m\"", "duration = \"5m\""),
                "redshift.iam.duration",
                "15 and 60 minutes",
            ),
            (
                (
                    "workgroup_name = \"analytics\"",
                    "workgroup_name = \"analytics\", cluster_identifier = \"c\"",
                ),
                "redshift.iam.cluster_identifier",
                "redshift_serverless",
            ),
            (
                (
                    "workgroup_name = \"analytics\"",
                    "workgroup_name = \"analytics\", db_user = \"u\"",
                ),
                "redshift.iam.db_user",
                "AWS identity",
            ),
        ] {
            let text = base.replacen(change.0, change.1, 1);
            assert_ne!(text, base);
            let err = Config::from_toml(&text, &env).unwrap_err().to_string();
            assert!(
                err.contains(&format!("`{key}`")) && err.contains(says),
                "{key}: {err}"
            );
        }
        // A provisioned cluster's method does not take a workgroup.
        let text = base
            .replace("serverless = true\n", "")
            .replace("redshift_serverless", "redshift")
            .replace(
                "workgroup_name",
                "cluster_identifier = \"c\", workgroup_name",
            );
        let err = Config::from_toml(&text, &env).unwrap_err().to_string();
        assert!(err.contains("`redshift.iam.workgroup_name`"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let text = format!("{MINIMAL}\n[exporter]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n");
        let err = Config::from_toml(&text, &env).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn bad_value_names_the_key() {
        let text = format!("{MINIMAL}\n[exporter]\nlisten = \"not an address\"\n");
        let err = Config::from_toml(&text, &env).unwrap_err().to_string();
        assert!(err.contains("exporter.listen"), "{err}");
    }

    #[test]
    fn missing_env_var_names_key_and_variable() {
        let err = Config::from_toml(MINIMAL, &|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("source.password") && err.contains("PW"),
            "{err}"
        );
    }

    #[test]
    fn expand_env_handles_escapes_and_errors() {
        let e = |n: &str| (n == "A").then(|| "x".to_owned());
        assert_eq!(expand_env("a${A}b$${A}$c", &e).unwrap(), "axb${A}$c");
        assert!(expand_env("${A", &e).is_err());
        assert!(expand_env("${B}", &e).is_err());
        assert!(expand_env("${a-b}", &e).is_err());
    }

    #[test]
    fn both_password_and_file_is_rejected() {
        let text = MINIMAL.replace(
            "password = \"${PW}\"",
            "password = \"x\"\npassword_file = \"/tmp/x\"",
        );
        let err = Config::from_toml(&text, &env).unwrap_err().to_string();
        assert!(err.contains("source.password"), "{err}");
    }

    #[test]
    fn tls_keys_are_read_checked_and_merged_with_the_url() {
        let text = MINIMAL.replace(
            "[redshift]",
            "sslmode = \"verify-full\"\nsslrootcert = \"/etc/ca.pem\"\n[redshift]",
        );
        let c = Config::from_toml(&text, &env).unwrap();
        let s = crate::db::tls_settings(&c.source).unwrap();
        assert_eq!(s.mode, crate::tls::SslMode::VerifyFull);
        assert_eq!(
            s.root_cert,
            Some(crate::tls::RootCert::File("/etc/ca.pem".into()))
        );
        // The default is libpq's: prefer.
        let r = crate::db::tls_settings(&c.redshift.database()).unwrap();
        assert_eq!(r.mode, crate::tls::SslMode::Prefer);

        let text = MINIMAL.replace("[redshift]", "sslmode = \"verify-ca\"\n[redshift]");
        let err = Config::from_toml(&text, &env).unwrap_err().to_string();
        assert!(err.contains("source.sslrootcert"), "{err}");

        let text = MINIMAL.replace(
            "localhost/redshift\"",
            "localhost/redshift?sslmode=require\"\nsslmode = \"disable\"",
        );
        let err = Config::from_toml(&text, &env).unwrap_err().to_string();
        assert!(
            err.contains("redshift.sslmode") && err.contains("require"),
            "{err}"
        );

        let text = MINIMAL.replace("localhost/source\"", "localhost/source?sslmode=allow\"");
        let err = Config::from_toml(&text, &env).unwrap_err().to_string();
        assert!(err.contains("source.url") && err.contains("allow"), "{err}");

        let text = MINIMAL.replace("[redshift]", "sslmode = \"strict\"\n[redshift]");
        let err = Config::from_toml(&text, &env).unwrap_err().to_string();
        assert!(err.contains("source.sslmode"), "{err}");
    }

    #[test]
    fn a_source_replica_takes_the_source_keys_and_every_read() {
        let env = |n: &str| (n == "PW").then(|| "s3cret".to_owned());
        let c = Config::from_toml(MINIMAL, &env).unwrap();
        assert!(c.source_replica.is_none());
        assert_eq!(c.source_reads().url, c.source.url);
        let text = format!(
            "{MINIMAL}\n[source.replica]\nurl = \"postgresql://ro@replica/source?sslmode=require\"\npassword = \"pw\"\n"
        );
        let c = Config::from_toml(&text, &env).unwrap();
        assert_eq!(
            c.source_reads().url,
            "postgresql://ro@replica/source?sslmode=require"
        );
        assert_eq!(c.source_reads().password.as_ref().unwrap().expose(), "pw");
        assert_ne!(c.source.url, c.source_reads().url);
        let bad =
            format!("{MINIMAL}\n[source.replica]\nurl = \"postgresql://ro@r/s\"\nhost = \"x\"\n");
        let err = Config::from_toml(&bad, &env).unwrap_err().to_string();
        assert!(err.contains("source.replica"), "{err}");
        let both = format!(
            "{MINIMAL}\n[source.replica]\nurl = \"postgresql://ro@r/s\"\npassword = \"a\"\npassword_file = \"/f\"\n"
        );
        let err = Config::from_toml(&both, &env).unwrap_err().to_string();
        assert!(err.contains("source.replica"), "{err}");
    }

    #[test]
    fn the_ledger_is_required_and_never_defaults_to_the_source() {
        let c = Config::from_toml(MINIMAL, &env).unwrap();
        let err = c.ledger_database().unwrap_err().to_string();
        assert!(
            err.contains("remediator.ledger") && err.contains("missing"),
            "{err}"
        );
        assert!(!c.ledger_is_source());
        let text =
            format!("{MINIMAL}\n[remediator.ledger]\nurl = \"postgresql://u@ops/dmsguard\"\n");
        let c = Config::from_toml(&text, &env).unwrap();
        assert_eq!(
            c.ledger_database().unwrap().url,
            "postgresql://u@ops/dmsguard"
        );
        assert!(!c.ledger_is_source());
        let text =
            format!("{MINIMAL}\n[remediator.ledger]\nurl = \"postgresql://u@localhost/source\"\n");
        assert!(Config::from_toml(&text, &env).unwrap().ledger_is_source());
    }

    #[test]
    fn scan_budget_defaults_and_is_overridden_per_table_and_refuses_zero() {
        let tables = "[[tables]]\nsource = \"public.a\"\n[[tables]]\nsource = \"public.b\"\nscan_budget_rows = 5000\n";
        let c = Config::from_toml(&format!("{MINIMAL}\n{tables}"), &env).unwrap();
        assert_eq!(c.exporter.gaps_scan_budget_rows, 10_000_000);
        assert_eq!(c.tables[0].scan_budget(&c.exporter), 10_000_000);
        assert_eq!(c.tables[1].scan_budget(&c.exporter), 5000);
        let text = format!("{MINIMAL}\n[exporter]\ngaps_scan_budget_rows = 700\n{tables}");
        let c = Config::from_toml(&text, &env).unwrap();
        assert_eq!(c.tables[0].scan_budget(&c.exporter), 700);
        assert_eq!(c.tables[1].scan_budget(&c.exporter), 5000);
        let err = Config::from_toml(
            &format!("{MINIMAL}\n[exporter]\ngaps_scan_budget_rows = 0\n"),
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("exporter.gaps_scan_budget_rows"), "{err}");
        let err = Config::from_toml(
            &format!("{MINIMAL}\n[[tables]]\nsource = \"public.a\"\nscan_budget_rows = 0\n"),
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("tables[0].scan_budget_rows"), "{err}");
    }

    #[test]
    fn assumed_role_keys_are_checked() {
        let with = |aws: &str| format!("{MINIMAL}\n[aws]\n{aws}\n");
        let c = Config::from_toml(
            &with(
                "role_arn = \"arn:aws:iam::123456789012:role/dmsguard\"\nexternal_id = \"ext-1\"",
            ),
            &env,
        )
        .unwrap();
        assert_eq!(c.aws.session_name(), "dmsguard");
        assert_eq!(c.aws.external_id.as_deref(), Some("ext-1"));
        for (aws, key) in [
            ("role_arn = \"dmsguard\"", "aws.role_arn"),
            ("role_arn = \"arn:aws:iam::1:user/x\"", "aws.role_arn"),
            ("external_id = \"ext-1\"", "aws.external_id"),
            (
                "role_arn = \"arn:aws:iam::1:role/x\"\nsession_name = \"has space\"",
                "aws.session_name",
            ),
        ] {
            let err = Config::from_toml(&with(aws), &env).unwrap_err().to_string();
            assert!(err.contains(key), "{aws}: {err}");
        }
    }

    #[test]
    fn table_task_must_exist() {
        let text = format!("{MINIMAL}\n[[tables]]\nsource = \"public.orders\"\ntask = \"nope\"\n");
        let err = Config::from_toml(&text, &env).unwrap_err().to_string();
        assert!(err.contains("tables[0].task"), "{err}");
    }

    #[test]
    fn qualified_names_and_quoting() {
        let q = QualifiedName::parse("public.orders").unwrap();
        assert_eq!(q.quoted(), "\"public\".\"orders\"");
        assert!(QualifiedName::parse("orders").is_none());
        assert!(QualifiedName::parse("public.or;ders").is_none());
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn qualified_names_follow_postgres_quoting_rules() {
        let name = |schema: &str, table: &str| QualifiedName {
            schema: schema.to_owned(),
            table: table.to_owned(),
        };
        for (text, expected) in [
            ("public.orders", name("public", "orders")),
            ("Public.ORDERS", name("public", "orders")),
            ("\"public\".\"orders\"", name("public", "orders")),
            (
                "public.\"Subscriber Events\"",
                name("public", "Subscriber Events"),
            ),
            ("\"My Schema\".t_1$", name("My Schema", "t_1$")),
            ("s.\"a\"\"b\"", name("s", "a\"b")),
            ("s.\"x.y\"", name("s", "x.y")),
            ("s.\"\"\"\"", name("s", "\"")),
        ] {
            assert_eq!(QualifiedName::parse(text), Some(expected), "{text}");
        }
        for bad in [
            "orders",
            "public.Subscriber Events",
            "public.or;ders",
            "public.\"\"",
            "public.\"open",
            "public.\"a\"b",
            "public.\"a\".c",
            "a.b.c",
            ".t",
            "s.",
            "1s.t",
            "\"s\"t.u",
        ] {
            assert_eq!(QualifiedName::parse(bad), None, "{bad}");
        }
        let err = QualifiedName::parse_detailed("public.Subscriber Events").unwrap_err();
        assert!(err.contains("double quotes"), "{err}");
    }

    #[test]
    fn qualified_names_display_canonically_and_quote_for_sql() {
        for (text, canonical, sql) in [
            ("Public.Orders", "public.orders", "\"public\".\"orders\""),
            (
                "public.\"Subscriber Events\"",
                "public.\"Subscriber Events\"",
                "\"public\".\"Subscriber Events\"",
            ),
            (
                "\"public\".\"lower\"",
                "public.lower",
                "\"public\".\"lower\"",
            ),
            ("s.\"a\"\"b\"", "s.\"a\"\"b\"", "\"s\".\"a\"\"b\""),
            ("s.\"x.y\"", "s.\"x.y\"", "\"s\".\"x.y\""),
        ] {
            let parsed = QualifiedName::parse(text).unwrap();
            assert_eq!(parsed.to_string(), canonical, "{text}");
            assert_eq!(parsed.quoted(), sql, "{text}");
            assert_eq!(
                QualifiedName::parse(canonical),
                Some(parsed),
                "{text} round trip"
            );
        }
    }

    #[test]
    fn quoted_table_names_are_normalised_and_found() {
        let text = format!(
            "{MINIMAL}\n[[tables]]\nsource = 'Public.\"Subscriber Events\"'\ntarget = 'DMS.\"Subscriber Events\"'\n\n\
             [[tables]]\nsource = \"public.orders\"\n"
        );
        let config = Config::from_toml(&text, &env).unwrap();
        assert_eq!(config.tables[0].source, "public.\"Subscriber Events\"");
        assert_eq!(config.tables[0].target_name(), "dms.\"Subscriber Events\"");
        for name in [
            "public.\"Subscriber Events\"",
            "\"public\".\"Subscriber Events\"",
            "PUBLIC.\"Subscriber Events\"",
            "dms.\"Subscriber Events\"",
        ] {
            assert_eq!(
                config.table(name).map(|t| t.source.as_str()),
                Some("public.\"Subscriber Events\""),
                "{name}"
            );
        }
        assert!(config.table("public.\"subscriber events\"").is_none());
        assert!(config.table("public.subscriber_events").is_none());
        assert_eq!(
            config
                .table("\"public\".\"orders\"")
                .map(|t| t.source.as_str()),
            Some("public.orders")
        );

        let unquoted = format!("{MINIMAL}\n[[tables]]\nsource = \"public.Subscriber Events\"\n");
        let err = Config::from_toml(&unquoted, &env).unwrap_err().to_string();
        assert!(err.contains("tables[0].source"), "{err}");
        let duplicate = format!(
            "{MINIMAL}\n[[tables]]\nsource = \"public.orders\"\n[[tables]]\nsource = 'PUBLIC.\"orders\"'\n"
        );
        let err = Config::from_toml(&duplicate, &env).unwrap_err().to_string();
        assert!(err.contains("duplicate table `public.orders`"), "{err}");
    }

    #[test]
    fn maintenance_window_parses_and_wraps() {
        let w = MaintenanceWindow::parse("sun:23:30-mon:00:15").unwrap();
        assert_eq!(w.duration_minutes(), 45);
        assert!(MaintenanceWindow::parse("xyz:01:00-mon:00:00").is_err());
        assert!(MaintenanceWindow::parse("mon:25:00-mon:26:00").is_err());
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The documented example must stay loadable: every key in it is a real key.
    #[test]
    fn example_config_parses() {
        let text = include_str!("../../dmsguard.example.toml");
        let config = Config::from_toml(text, &|name| Some(format!("value-of-{name}"))).unwrap();
        assert_eq!(config.tasks[0].name, "orders-cdc");
        assert_eq!(config.tables[0].target_name(), "public.orders");
        assert_eq!(
            config.remediator.token.as_ref().unwrap().expose(),
            "value-of-DMSGUARD_WEBHOOK_TOKEN"
        );
        assert!(config.remediator.ledger.is_some());
    }
}
