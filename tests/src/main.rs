//! `dmsguard-lab`: drives the lab from the command line (used by the demo).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use dmsguard_lab::simulator::{
    BatchLimits, Fault, MemoryModel, SimConfig, SimTable, SimTask, Simulator,
};

/// Control-file content that pauses the workload.
const PAUSE: &str = "pause";

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
    /// Create dmsguard's least-privilege users with exactly the SQL of `docs/grants.md`: its
    /// Redshift blocks on the stand-in (creating the stand-in's system views first), its
    /// PostgreSQL blocks on the source. Passwords are the lab's (PGPASSWORD).
    Grants {
        /// Connection URL of the source database, as its owner.
        #[arg(long, env = "DMSGUARD_SOURCE_URL")]
        source_url: String,
        /// Connection URL of the Redshift stand-in, as its owner.
        #[arg(long, env = "DMSGUARD_REDSHIFT_URL")]
        redshift_url: String,
    },
    /// Run the DMS simulator: workload on the source, batch apply into the Redshift stand-in,
    /// tasks and metrics in moto. Runs until SIGINT/SIGTERM.
    Simulate(SimulateArgs),
    /// Measure the simulator's sustained apply rate on fresh databases and a private moto.
    Bench(BenchArgs),
    /// Compare a replicated table row by row, every column, source against the Redshift
    /// stand-in (after DMS's type conversion); exits 1 when they differ.
    Compare {
        #[arg(long, env = "DMSGUARD_SOURCE_URL")]
        source_url: String,
        #[arg(long, env = "DMSGUARD_REDSHIFT_URL")]
        redshift_url: String,
        #[arg(long, default_value = "public.orders")]
        table: String,
    },
    /// Write lab copies of `alerts/`: the rules and the example Alertmanager config with every
    /// duration divided by `--speedup`, delivering to the given remediator.
    Alerting(AlertingArgs),
    /// Check every statement dmsguard's users sent to a Redshift stand-in (the lab PostgreSQL's
    /// log from byte `--from-byte` on) against Redshift's unsupported features; exits 1 naming
    /// each statement and rule it breaks.
    AuditStatements {
        /// The lab PostgreSQL's log.
        #[arg(long)]
        log: PathBuf,
        /// Where this run's part of the log starts.
        #[arg(long, default_value_t = 0)]
        from_byte: u64,
    },
}

#[derive(Debug, clap::Args)]
struct AlertingArgs {
    /// The repository's `alerts/` directory.
    #[arg(long, default_value = "alerts")]
    alerts_dir: PathBuf,
    /// Where to write `dmsguard.rules.yml` and `alertmanager.yml`.
    #[arg(long)]
    out: PathBuf,
    /// Divide every `for`, range, offset and Alertmanager timer by this.
    #[arg(long, default_value_t = 20)]
    speedup: u32,
    /// The remediator's webhook URL.
    #[arg(long)]
    remediator_url: String,
    /// File holding the remediator's bearer token.
    #[arg(long)]
    token_file: PathBuf,
    /// Where the on-call receiver delivers.
    #[arg(long, default_value = "http://127.0.0.1:9/oncall")]
    oncall_url: String,
}

#[derive(Debug, clap::Args)]
struct SimulateArgs {
    /// Source database URL (password from PGPASSWORD or DMSGUARD_PG_PASSWORD, never the URL
    /// in production).
    #[arg(long, env = "DMSGUARD_SOURCE_URL")]
    source_url: String,
    /// Redshift stand-in database URL.
    #[arg(long, env = "DMSGUARD_REDSHIFT_URL")]
    redshift_url: String,
    /// moto endpoint (DMS and CloudWatch).
    #[arg(long, env = "DMSGUARD_MOTO_URL")]
    moto_url: String,
    /// Workload changes per second over all tables (0: no workload).
    #[arg(long, default_value_t = 800)]
    rate: u32,
    /// A replicated table, `schema.table` or `schema.table:N` with N extra wide columns.
    #[arg(long = "table", default_values_t = vec!["public.orders".to_owned()])]
    tables: Vec<String>,
    /// A task: `name` (replicates every table) or `name=schema.t1,schema.t2`.
    #[arg(long = "task", default_values_t = vec!["lab-task".to_owned()])]
    tasks: Vec<String>,
    /// Replication instance identifier.
    #[arg(long, default_value = "lab-instance")]
    instance: String,
    /// Fault active at start: none, drop_rows[:N], missing_then_update, skip_update[:N],
    /// skip_delete[:N], memory_leak[:BYTES_PER_S], stall, redshift_restart[:SECONDS].
    #[arg(long, default_value = "none")]
    fault: Fault,
    /// A file holding the fault to switch to; read every 500 ms, applied when its content
    /// changes (e.g. `echo stall > FILE`; empty for none). `pause` stops the workload (and
    /// clears the fault) until the file names a fault or is emptied again.
    #[arg(long)]
    control_file: Option<PathBuf>,
    /// Create the workload's rows this far in the past (`created_at`), e.g. `20h` to make
    /// them yesterday's (UTC) for the day-windowed gap metrics.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    created_age: Duration,
    /// After a task resumes, publish its CDC latencies as 0 for this long (what DMS publishes
    /// before a backlog reaches the target is undocumented; 0 is the hostile reading).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    latency_blind_after_resume: Duration,
    /// Least time between two batches (DMS BatchApplyTimeoutMin).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    batch_interval: Duration,
    /// Most changes read into one batch.
    #[arg(long, default_value_t = 50_000)]
    batch_max_changes: u32,
    /// Simulated cost of one statement in one-by-one mode.
    #[arg(long, default_value = "2ms", value_parser = humantime::parse_duration)]
    one_by_one_cost: Duration,
    /// How often datapoints are pushed to CloudWatch.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    metrics_interval: Duration,
    /// How often task status is read from DMS.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: dmsguard_pipeline::service::LogFormat,
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Workload rates to try, changes per second.
    #[arg(long, value_delimiter = ',', default_values_t = vec![800, 1600, 3200])]
    rates: Vec<u32>,
    /// How long each rate runs.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// A replicated table (as for `simulate`).
    #[arg(long = "table", default_values_t = vec!["public.orders".to_owned()])]
    tables: Vec<String>,
}

fn parse_tasks(tasks: &[String], tables: &[SimTable]) -> anyhow::Result<Vec<SimTask>> {
    tasks
        .iter()
        .map(|spec| {
            let (name, list) = match spec.split_once('=') {
                Some((n, l)) => (n, Some(l)),
                None => (spec.as_str(), None),
            };
            let tables = match list {
                None => tables.to_vec(),
                Some(l) => l
                    .split(',')
                    .map(|t| {
                        tables
                            .iter()
                            .find(|x| x.dotted() == t.trim())
                            .cloned()
                            .ok_or_else(|| anyhow::anyhow!("task `{name}`: `{t}` is not a --table"))
                    })
                    .collect::<anyhow::Result<_>>()?,
            };
            Ok(SimTask {
                name: name.to_owned(),
                tables,
            })
        })
        .collect()
}

async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    dmsguard_lab::harness::ensure_test_credentials();
    let tables = args
        .tables
        .iter()
        .map(|t| t.parse())
        .collect::<anyhow::Result<Vec<SimTable>>>()?;
    let config = SimConfig {
        source: dmsguard_lab::harness::database_config(&args.source_url),
        redshift: dmsguard_lab::harness::database_config(&args.redshift_url),
        aws: dmsguard_lab::harness::aws_config(&args.moto_url),
        instance: args.instance,
        tasks: parse_tasks(&args.tasks, &tables)?,
        rate: args.rate,
        batch: BatchLimits {
            min_interval: args.batch_interval,
            max_changes: args.batch_max_changes,
        },
        one_by_one_statement_cost: args.one_by_one_cost,
        poll_interval: args.poll_interval,
        metrics_interval: args.metrics_interval,
        memory: MemoryModel::default(),
        initial_fault: args.fault,
        start_tasks: true,
        created_age: args.created_age,
        latency_blind_after_resume: args.latency_blind_after_resume,
    };
    let sim = Simulator::start(config)
        .await
        .context("starting the simulator")?;
    tracing::info!(fault = %sim.fault(), "Simulator running.");
    let mut last_control: Option<String> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut report = tokio::time::interval(Duration::from_secs(10));
    let shutdown = dmsguard_pipeline::service::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                if let Some(path) = &args.control_file {
                    let content = std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned());
                    if content.is_some() && content != last_control {
                        let text = content.clone().unwrap_or_default();
                        if text == PAUSE {
                            sim.set_fault(Fault::None);
                            sim.stop_workload().await?;
                            tracing::info!("Workload paused.");
                        } else {
                            match text.parse::<Fault>() {
                                Ok(f) => {
                                    sim.resume_workload().await?;
                                    sim.set_fault(f);
                                }
                                Err(e) => tracing::warn!(error = %e, path = %path.display(), "Ignoring control file."),
                            }
                        }
                        last_control = content;
                    }
                }
            }
            _ = report.tick() => {
                let s = sim.stats();
                tracing::info!(generated = s.generated, applied = s.applied(), batches = s.batches(),
                    one_by_one_batches = s.one_by_one_batches(), dropped = s.dropped_changes(),
                    last_seq = s.last_applied_seq(), fault = %sim.fault(), "Simulator progress.");
            }
        }
    }
    let stats = sim.stop().await?;
    tracing::info!(
        generated = stats.generated,
        applied = stats.applied(),
        "Simulator stopped."
    );
    Ok(())
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    use dmsguard_lab::harness::{Moto, TestDatabases};
    let tables = args
        .tables
        .iter()
        .map(|t| t.parse())
        .collect::<anyhow::Result<Vec<SimTable>>>()?;
    let mut results = Vec::new();
    for rate in args.rates {
        let dbs = TestDatabases::create("sim_bench").await?;
        let moto = Moto::spawn().await?;
        let mut config = SimConfig::for_test(&dbs, &moto.url());
        config.rate = rate;
        config.tasks[0].tables = tables.clone();
        config.batch.min_interval = Duration::from_secs(1);
        config.metrics_interval = Duration::from_secs(5);
        let sim = Simulator::start(config).await?;
        let warmup = Duration::from_secs(2);
        tokio::time::sleep(warmup).await;
        let (g0, a0, t0) = (
            sim.stats().generated,
            sim.stats().applied(),
            std::time::Instant::now(),
        );
        // The measurement window itself.
        tokio::time::sleep(args.duration).await;
        let s = sim.stats();
        let secs = t0.elapsed().as_secs_f64();
        let generated = (s.generated - g0) as f64 / secs;
        let applied = (s.applied() - a0) as f64 / secs;
        let backlog = s
            .generated
            .saturating_sub(s.applied() + s.dropped_changes());
        sim.stop_workload().await?;
        let caught_up = std::time::Instant::now();
        sim.wait_caught_up(Duration::from_secs(120)).await?;
        let drain = caught_up.elapsed().as_secs_f64();
        let stats = sim.stop().await?;
        let mut equal = true;
        for t in &tables {
            let diff =
                dmsguard_lab::simulator::compare_source_target(&dbs.source, &dbs.redshift, t)
                    .await?;
            equal &= diff.is_empty();
        }
        results.push((
            rate,
            generated,
            applied,
            backlog,
            drain,
            stats.batches(),
            equal,
        ));
        dbs.drop().await?;
    }
    println!("| target rate | generated/s | applied/s | backlog at end | drain s | batches | target = source |");
    println!("|---:|---:|---:|---:|---:|---:|:---:|");
    for (rate, g, a, b, d, n, eq) in results {
        println!(
            "| {rate} | {g:.0} | {a:.0} | {b} | {d:.1} | {n} | {} |",
            if eq { "yes" } else { "NO" }
        );
    }
    Ok(())
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
        Cli::Grants {
            source_url,
            redshift_url,
        } => {
            let env = dmsguard_lab::harness::LabEnv::from_env();
            let source_config = dmsguard_lab::harness::database_config(&source_url);
            let source_db = dmsguard_lab::simulator::database_name(&source_url)?;
            let substitutions = [
                ("<password>", env.pg_password.as_str()),
                ("<dms_user>", dmsguard_lab::simulator::DMS_ROLE),
                ("<table_owner>", env.pg_user.as_str()),
                ("<source_db>", source_db.as_str()),
            ];
            let redshift = dmsguard_pipeline::db::connect(&dmsguard_lab::harness::database_config(
                &redshift_url,
            ))
            .await?;
            dmsguard_lab::harness::install_redshift_standin(&redshift).await?;
            dmsguard_lab::harness::apply_grants(
                &redshift,
                &["redshift-exporter", "redshift-remediator"],
                &substitutions,
            )
            .await?;
            let source = dmsguard_pipeline::db::connect(&source_config).await?;
            dmsguard_lab::harness::apply_grants(
                &source,
                &["postgresql-exporter", "postgresql-remediator"],
                &substitutions,
            )
            .await?;
            println!(
                "Users {} and {} created with docs/grants.md.",
                dmsguard_lab::harness::EXPORTER_USER,
                dmsguard_lab::harness::REMEDIATOR_USER
            );
        }
        Cli::Simulate(args) => {
            dmsguard_pipeline::service::init_telemetry(args.log_format);
            simulate(args).await?;
        }
        Cli::Bench(args) => {
            dmsguard_pipeline::service::init_telemetry(Default::default());
            bench(args).await?;
        }
        Cli::Compare {
            source_url,
            redshift_url,
            table,
        } => {
            dmsguard_lab::harness::ensure_test_credentials();
            let diff = dmsguard_lab::simulator::compare_source_target(
                &dmsguard_lab::harness::database_config(&source_url),
                &dmsguard_lab::harness::database_config(&redshift_url),
                &table.parse()?,
            )
            .await?;
            println!("{diff}");
            if !diff.is_empty() {
                std::process::exit(1);
            }
        }
        Cli::AuditStatements { log, from_byte } => {
            let bytes =
                std::fs::read(&log).with_context(|| format!("reading {}", log.display()))?;
            let from = usize::try_from(from_byte)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            let text = String::from_utf8_lossy(&bytes[from..]);
            let statements = dmsguard_lab::audit::statements_in_log(&text).len();
            // Statements a test sent on purpose to prove the audit catches them are left out.
            let violations: Vec<_> = dmsguard_lab::audit::audit_log(&text)
                .into_iter()
                .filter(|v| !v.statement.contains(dmsguard_lab::audit::PROBE_MARKER))
                .collect();
            for v in &violations {
                eprintln!("statement audit: {v}");
            }
            println!(
                "statement audit: {statements} statements, {} violations",
                violations.len()
            );
            if !violations.is_empty() {
                std::process::exit(1);
            }
        }
        Cli::Alerting(args) => {
            std::fs::create_dir_all(&args.out)
                .with_context(|| format!("creating {}", args.out.display()))?;
            let receivers = dmsguard_lab::alerting::Receivers {
                remediator_url: args.remediator_url,
                token_file: args.token_file,
                oncall_url: args.oncall_url,
            };
            let (rules, am) = dmsguard_lab::alerting::write_lab_alerting(
                &args.alerts_dir,
                &args.out,
                &receivers,
                args.speedup,
            )?;
            println!("{}\n{}", rules.display(), am.display());
        }
    }
    Ok(())
}
