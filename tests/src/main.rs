//! `dmsguard-lab`: drives the lab from the command line (used by the demo).

use clap::Parser;

/// Lab commands.
#[derive(Debug, clap::Parser)]
#[command(name = "dmsguard-lab", version, about)]
enum Cli {
    /// Create the Redshift stand-in system views in a database.
    InitRedshift {
        /// Connection URL of the database (password from PGPASSWORD).
        #[arg(long, env = "DMSGUARD_REDSHIFT_URL")]
        url: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse() {
        Cli::InitRedshift { url } => {
            let config = dmsguard_lab::harness::database_config(&url);
            let client = dmsguard_pipeline::db::connect(&config).await?;
            dmsguard_lab::harness::install_redshift_standin(&client).await?;
            println!("Redshift stand-in system views installed.");
        }
    }
    Ok(())
}
