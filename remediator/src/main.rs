//! `dmsguard-remediator`: receives Alertmanager webhooks and runs the matching fix.

use clap::Parser;
use dmsguard_pipeline::service;
use dmsguard_remediator::cli::{Cli, Command};
use dmsguard_remediator::commands;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    service::exit_code(run().await)
}

async fn run() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    service::init_logging(cli.log_format, cli.log_level);
    let config = cli.apply_flags(service::load_config_or_exit(&cli.config));
    let path = cli.config.clone();
    let needs_ledger = cli.check_config
        || matches!(
            cli.command,
            None | Some(Command::Serve | Command::Run { .. } | Command::Jobs { .. })
        );
    if needs_ledger {
        if let Err(e) = config.ledger_database() {
            eprintln!("error: invalid configuration: {e}");
            std::process::exit(dmsguard_pipeline::config::EXIT_CONFIG);
        }
    }
    if cli.check_config {
        if let Some(web) = &config.remediator.web_config_file {
            if let Err(error) = dmsguard_pipeline::web::WebConfig::load(web) {
                eprintln!("error: invalid web configuration: {error}");
                std::process::exit(dmsguard_pipeline::config::EXIT_CONFIG);
            }
        }
        println!("config ok: {}", cli.config.display());
        return Ok(());
    }
    match cli.command.take().unwrap_or(Command::Serve) {
        Command::Serve => {
            let (cli, path) = (std::sync::Arc::new(cli), path);
            let loader = std::sync::Arc::new(move || {
                let config = dmsguard_pipeline::config::Config::load(&path)?;
                Ok(cli.apply_flags(config))
            });
            let app = dmsguard_remediator::Remediator::build(config)
                .await?
                .reload_from(loader);
            app.run_until(service::shutdown_signal()).await
        }
        Command::Run {
            fix,
            task,
            table,
            replication_instance,
            day,
            from_id,
            to_id,
            dry_run,
            skip_preflight,
        } => {
            let target = commands::target(fix, task, table, replication_instance)?;
            let window = commands::RunOptions {
                day,
                from_id,
                to_id,
                skip_preflight,
            };
            let code = commands::run_fix_with(config, fix, target, dry_run, window).await?;
            std::process::exit(code);
        }
        Command::Jobs { limit } => commands::list_jobs(config, limit).await,
        Command::Ddl(args) => args.run(&config).await,
        Command::Preflight => {
            let report = dmsguard_pipeline::preflight::run(&config, true).await;
            print!("{}", report.render());
            std::process::exit(if report.ok() { 0 } else { 1 });
        }
        Command::Gaps(args) => {
            dmsguard_remediator::commands::gaps::run(&config, &args, &mut std::io::stdout())
                .await
                .map(|_| ())
        }
    }
}
