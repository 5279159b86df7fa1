//! Command line of `dmsguard-remediator`.

use std::path::PathBuf;

use anyhow::Context;
use dmsguard_pipeline::config::{Config, FixName, TableConfig};
use dmsguard_pipeline::db;
use dmsguard_pipeline::ddl::{self, CompressionFile, DdlOptions};
use dmsguard_pipeline::service::{LogFormat, LogLevel};

#[derive(Debug, clap::Parser)]
#[command(name = "dmsguard-remediator", version, about)]
pub struct Cli {
    /// Path of the TOML config file.
    #[arg(
        long,
        short,
        global = true,
        env = "DMSGUARD_CONFIG",
        default_value = "dmsguard.toml"
    )]
    pub config: PathBuf,
    /// Validate the config and exit (0 if valid, 64 if not).
    #[arg(long, global = true)]
    pub check_config: bool,
    /// Log format: text, logfmt or json.
    #[arg(
        long = "log.format",
        alias = "log-format",
        global = true,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Least severe level logged: debug, info, warn or error (`RUST_LOG`, when set, wins).
    #[arg(long = "log.level", global = true, default_value = "info")]
    pub log_level: LogLevel,
    /// Address to serve on; overrides `remediator.listen`.
    #[arg(long = "web.listen-address", global = true, value_name = "ADDR")]
    pub web_listen_address: Option<std::net::SocketAddr>,
    /// exporter-toolkit web configuration file (TLS, client CA, basic auth users); overrides
    /// `remediator.web_config_file`.
    #[arg(long = "web.config.file", global = true, value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// The config with the `--web.*` flags applied over the TOML's settings.
    pub fn apply_flags(&self, mut config: Config) -> Config {
        if let Some(addr) = self.web_listen_address {
            config.remediator.listen = addr;
        }
        if let Some(file) = &self.web_config_file {
            config.remediator.web_config_file = Some(file.clone());
        }
        config
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Serve the webhook API (the default).
    Serve,
    /// Run a fix by hand, through the same code path as alerts, recorded in the ledger.
    Run {
        /// The fix: one_by_one, memory, maintenance, missing_rows, stalled_task or divergent_rows.
        fix: FixName,
        /// The DMS task (one_by_one, stalled_task).
        #[arg(long)]
        task: Option<String>,
        /// The table as `schema.table` (missing_rows, divergent_rows); quote a part as PostgreSQL does:
        /// `'public."Subscriber Events"'`.
        #[arg(long)]
        table: Option<String>,
        /// The replication instance identifier (memory).
        #[arg(long)]
        replication_instance: Option<String>,
        /// missing_rows, divergent_rows: repair this UTC day (YYYY-MM-DD) through the table's day_column;
        /// default yesterday (the whole id range for a table without day_column).
        #[arg(long, conflicts_with_all = ["from_id", "to_id"])]
        day: Option<String>,
        /// missing_rows, divergent_rows: repair ids from this one (with --to-id), inclusive.
        #[arg(long, requires = "to_id")]
        from_id: Option<i64>,
        /// missing_rows, divergent_rows: repair ids up to this one (with --from-id), inclusive.
        #[arg(long, requires = "from_id")]
        to_id: Option<i64>,
        /// Print the plan and its SQL; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Run even if the preflight checks this fix needs fail (by default the run is refused,
        /// recorded as a `refused` job, and exits 1 naming each failed check and its fix).
        #[arg(long)]
        skip_preflight: bool,
    },
    /// List recent jobs from the ledger.
    Jobs {
        /// How many jobs to list, newest first.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Print Redshift CREATE TABLE statements for the configured tables (never executes them).
    Ddl(DdlArgs),
    /// Print the ids missing from (and extra in) a table's target; changes nothing.
    Gaps(crate::commands::gaps::GapsArgs),
    /// Check every connection (ledger included), table grant, system view and AWS call the
    /// config needs; print a checklist with a fix per failure (exit 0 if all pass, 1 if not).
    Preflight,
}

/// Options of `dmsguard-remediator ddl`.
#[derive(Debug, clap::Args)]
pub struct DdlArgs {
    /// Only this configured table (source `schema.table`, parts quoted as PostgreSQL does);
    /// repeatable. Default: every table.
    #[arg(long = "table", value_name = "SCHEMA.TABLE")]
    pub tables: Vec<String>,
    /// Reproduce the types DMS creates (booleans and json as VARCHAR, …) to match existing tables.
    #[arg(long)]
    pub dms_compatible: bool,
    /// `ANALYZE COMPRESSION` result rows (table, column, encoding, est_reduction_pct) as CSV or
    /// TSV; their encodings replace the defaults.
    #[arg(long, value_name = "FILE")]
    pub compression: Option<PathBuf>,
    /// Leave out Redshift-only clauses and types (ENCODE, DISTSTYLE, DISTKEY, SORTKEY, SUPER,
    /// VARBYTE) so the DDL can be tried on PostgreSQL.
    #[arg(long)]
    pub postgres_check: bool,
}

impl DdlArgs {
    /// Reads the source catalogue and prints one `CREATE TABLE` per table to stdout; warnings
    /// go to the log (stderr) as well as into the SQL as comments.
    pub async fn run(&self, config: &Config) -> anyhow::Result<()> {
        let tables: Vec<TableConfig> = if self.tables.is_empty() {
            config.tables.clone()
        } else {
            self.tables
                .iter()
                .map(|name| {
                    config.table(name).cloned().with_context(|| {
                        format!("table `{name}` is not in the config's [[tables]]")
                    })
                })
                .collect::<anyhow::Result<_>>()?
        };
        anyhow::ensure!(!tables.is_empty(), "no [[tables]] configured");
        let compression = match &self.compression {
            Some(path) => Some(CompressionFile::load(path)?),
            None => None,
        };
        let options = DdlOptions {
            dms_compatible: self.dms_compatible,
            postgres_check: self.postgres_check,
            compression,
        };
        let source = db::connect(config.source_reads())
            .await
            .context("connecting to the source database")?;
        let statements = ddl::create_tables(&source, &tables, &options).await?;
        for statement in &statements {
            for warning in &statement.warnings {
                tracing::warn!(table = %statement.target, warning = %warning, "Redshift limit applies.");
            }
        }
        let text: Vec<&str> = statements.iter().map(|s| s.sql.as_str()).collect();
        println!("{}", text.join("\n"));
        Ok(())
    }
}
