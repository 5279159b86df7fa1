//! Command line of `dmsguard-remediator`.

use std::path::PathBuf;

use dmsguard_pipeline::config::FixName;
use dmsguard_pipeline::service::LogFormat;

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
    /// Log format: text or json.
    #[arg(long, global = true, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Serve the webhook API (the default).
    Serve,
    /// Run a fix by hand, through the same code path as alerts, recorded in the ledger.
    Run {
        /// The fix: one_by_one, memory, maintenance, missing_rows or stalled_task.
        fix: FixName,
        /// The DMS task (one_by_one, stalled_task).
        #[arg(long)]
        task: Option<String>,
        /// The table as `schema.table` (missing_rows).
        #[arg(long)]
        table: Option<String>,
        /// The replication instance identifier (memory).
        #[arg(long)]
        replication_instance: Option<String>,
        /// Print the plan and its SQL; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List recent jobs from the ledger.
    Jobs {
        /// How many jobs to list, newest first.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
}
