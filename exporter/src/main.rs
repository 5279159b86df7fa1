//! `dmsguard-exporter`: loads the config, starts the probes and serves `/metrics`.

use clap::Parser;
use dmsguard_exporter::{Cli, Exporter};
use dmsguard_pipeline::service;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    service::exit_code(run().await)
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    service::init_logging(cli.log_format, cli.log_level);
    let config = service::load_config_or_exit(&cli.config);
    let config = match cli.apply_flags(config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: invalid configuration: {error}");
            std::process::exit(dmsguard_pipeline::config::EXIT_CONFIG);
        }
    };
    if cli.check_config {
        if let Some(web) = &config.exporter.web_config_file {
            if let Err(error) = dmsguard_pipeline::web::WebConfig::load(web) {
                eprintln!("error: invalid web configuration: {error}");
                std::process::exit(dmsguard_pipeline::config::EXIT_CONFIG);
            }
        }
        println!("config ok: {}", cli.config.display());
        return Ok(());
    }
    if cli.preflight {
        let report = dmsguard_pipeline::preflight::run(&config, false).await;
        print!("{}", report.render());
        std::process::exit(if report.ok() { 0 } else { 1 });
    }
    let cli = std::sync::Arc::new(cli);
    let loader = {
        let cli = cli.clone();
        std::sync::Arc::new(move || {
            let config = dmsguard_pipeline::config::Config::load(&cli.config)?;
            Ok(cli.apply_flags(config)?)
        })
    };
    let exporter = Exporter::build(config).await?.reload_from(loader);
    exporter.run_until(service::shutdown_signal()).await
}
