//! Command line of `dmsguard-remediator`.

use std::path::PathBuf;

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
    /// Print the ids missing from (and extra in) a table's target; changes nothing.
    Gaps(crate::commands::gaps::GapsArgs),
}
