//! Benchmark of `dmsguard-exporter`: `/metrics` latency (p50/p99) and RSS at 200 tables.
//!
//! Sets up the lab with 200 replicated tables (rows missing in each), DMS statements and apply
//! exceptions for each in the Redshift stand-in, and tasks with CloudWatch datapoints in a moto
//! of its own; starts the real exporter binary on that config, waits until every probe has
//! filled its metrics, then scrapes `/metrics` sequentially and prints a comparison table with
//! the bars of docs/architecture.md.
//!
//! `cargo build --release -p dmsguard-exporter && cargo run --release -p dmsguard-lab --bin bench_exporter`

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum};
use clap::Parser;
use dmsguard_lab::harness::{self, eventually, Moto, TestDatabases};
use dmsguard_pipeline::aws::AwsClients;

/// Bars from docs/architecture.md.
const P99_BAR_MS: f64 = 10.0;
const RSS_BAR_MB: f64 = 50.0;
const COMMENT: &str = "/* Applied by AWS DMS 3.5.3 */ ";

#[derive(Debug, clap::Parser)]
#[command(about = "Benchmark dmsguard-exporter's /metrics latency and RSS")]
struct Args {
    /// The exporter binary to run.
    #[arg(long, env = "DMSGUARD_EXPORTER_BIN", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/dmsguard-exporter"))]
    exporter_bin: std::path::PathBuf,
    /// Configured tables.
    #[arg(long, default_value_t = 200)]
    tables: usize,
    /// Configured DMS tasks (spread over two replication instances).
    #[arg(long, default_value_t = 10)]
    tasks: usize,
    /// Rows per table and day.
    #[arg(long, default_value_t = 100)]
    rows: i64,
    /// Timed scrapes.
    #[arg(long, default_value_t = 2000)]
    scrapes: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.exporter_bin.exists(),
        "{} not found: build it first (cargo build --release -p dmsguard-exporter)",
        args.exporter_bin.display()
    );
    let setup = Instant::now();
    let dbs = TestDatabases::create("bench_exporter").await?;
    let result = run(&args, &dbs, setup).await;
    dbs.drop().await?;
    result
}

async fn run(args: &Args, dbs: &TestDatabases, setup: Instant) -> anyhow::Result<()> {
    seed_tables(dbs, args.tables, args.rows).await?;
    seed_statements(dbs, args.tables).await?;
    let moto = Moto::spawn().await?;
    let aws = AwsClients::new(&harness::aws_config(&moto.url())).await;
    let tasks = seed_aws(&aws, args.tasks).await?;

    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("dmsguard.toml");
    let port = harness::free_port();
    std::fs::write(
        &config_path,
        config_text(dbs, &moto.url(), port, args.tables, &tasks),
    )?;
    let mut child = tokio::process::Command::new(&args.exporter_bin)
        .arg("--config")
        .arg(&config_path)
        .env("BENCH_PG_PASSWORD", &dbs.env.pg_password)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the exporter")?;
    let pid = child.id().context("exporter pid")?;
    let url = format!("http://127.0.0.1:{port}/metrics");
    let http = reqwest::Client::new();
    let expected_gap_series = args.tables * 2;
    let ready = eventually(
        "every probe up and every table's metrics filled",
        Duration::from_secs(300),
        || async {
            let body = http.get(&url).send().await?.text().await?;
            let probes_ok = body
                .lines()
                .filter(|l| l.starts_with("dmsguard_probe_success{") && l.ends_with(" 1"))
                .count();
            let gap_series = body
                .lines()
                .filter(|l| l.starts_with("dmsguard_table_missing_ids{"))
                .count();
            let memory = body.contains("dmsguard_dms_instance_freeable_memory_bytes{");
            Ok((probes_ok == 5 && gap_series == expected_gap_series && memory).then_some(body))
        },
    )
    .await?;
    let setup_took = setup.elapsed();
    let series = ready
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();

    for _ in 0..50 {
        http.get(&url).send().await?.bytes().await?;
    }
    let mut took = Vec::with_capacity(args.scrapes);
    let mut bytes = 0;
    for _ in 0..args.scrapes {
        let start = Instant::now();
        let body = http
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        took.push(start.elapsed().as_secs_f64() * 1000.0);
        bytes = body.len();
    }
    took.sort_by(f64::total_cmp);
    let pct = |p: f64| took[((took.len() as f64 * p).ceil() as usize).clamp(1, took.len()) - 1];
    let (p50, p99, max) = (pct(0.50), pct(0.99), took[took.len() - 1]);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let (rss, hwm) = (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0);
    child.kill().await.ok();

    println!();
    println!(
        "dmsguard-exporter, {} tables, {} tasks, {} series, {} bytes per scrape, {} sequential scrapes (setup {:.1} s)",
        args.tables,
        args.tasks,
        series,
        bytes,
        args.scrapes,
        setup_took.as_secs_f64()
    );
    println!("| measure | value | bar | ratio to bar | meets |");
    println!("|---|---|---|---|---|");
    let row = |name: &str, v: f64, unit: &str, bar: Option<f64>| match bar {
        Some(bar) => println!(
            "| {name} | {v:.2} {unit} | < {bar} {unit} | {:.3} | {} |",
            v / bar,
            if v < bar { "yes" } else { "NO" }
        ),
        None => println!("| {name} | {v:.2} {unit} | - | - | - |"),
    };
    row("/metrics p50", p50, "ms", None);
    row("/metrics p99", p99, "ms", Some(P99_BAR_MS));
    row("/metrics max", max, "ms", None);
    row("RSS after scrapes", rss, "MB", Some(RSS_BAR_MB));
    row("RSS peak (VmHWM)", hwm, "MB", Some(RSS_BAR_MB));
    Ok(())
}

fn table_name(i: usize) -> String {
    format!("public.bench_{i:03}")
}

/// Each table: `rows` ids yesterday and `rows` today in the source; the target lacks ids
/// 3 and rows + 5 (one per day) and the newest id.
async fn seed_tables(dbs: &TestDatabases, tables: usize, rows: i64) -> anyhow::Result<()> {
    let source = dbs.source_client().await?;
    let target = dbs.redshift_client().await?;
    for i in 0..tables {
        let name = table_name(i);
        source
            .batch_execute(&format!(
                "CREATE TABLE {name} (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, v text);
                 INSERT INTO {name} SELECT g,
                   date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                     + CASE WHEN g <= {rows} THEN interval '-1 day' ELSE interval '0' END
                     + (g % {rows}) * interval '1 second', 'x'
                 FROM generate_series(1, {total}) g;",
                total = rows * 2
            ))
            .await?;
        target
            .batch_execute(&format!(
                "CREATE TABLE {name} (id bigint, created_at timestamp, v varchar(10));
                 INSERT INTO {name} SELECT g, NULL, 'x' FROM generate_series(1, {last}) g
                 WHERE g NOT IN (3, {skip});",
                last = rows * 2 - 1,
                skip = rows + 5
            ))
            .await?;
    }
    Ok(())
}

/// Per table: a committed INSERT, DELETE and UPDATE, a rolled-back UPDATE, and one apply
/// exception, as Redshift records them.
async fn seed_statements(dbs: &TestDatabases, tables: usize) -> anyhow::Result<()> {
    let rs = dbs.redshift_client().await?;
    let now = chrono::Utc::now().naive_utc();
    for i in 0..tables {
        let name = table_name(i);
        let (schema, table) = name.split_once('.').unwrap_or(("public", &name));
        let target = format!("\"{schema}\".\"{table}\"");
        let changes = "\"public\".\"awsdms_changes0bench00\"";
        let statements = [
            (format!("{COMMENT}INSERT INTO {target} (\"id\",\"v\") SELECT CAST(changes.\"seg1\" AS bigint), changes.\"c2\" FROM {changes} changes WHERE changes.\"tbl\" = '{name}' AND changes.\"op\" = 'I' AND changes.\"seq\" >= 1 AND changes.\"seq\" <= 9"), "committed"),
            (format!("{COMMENT}DELETE FROM {target} USING {changes} changes WHERE {target}.\"id\" = CAST(changes.\"seg1\" AS bigint) AND changes.\"tbl\" = '{name}' AND changes.\"op\" = 'D' AND changes.\"seq\" >= 10 AND changes.\"seq\" <= 12"), "committed"),
            (format!("{COMMENT}UPDATE {target} SET \"v\" = changes.\"c2\" FROM {changes} changes WHERE {target}.\"id\" = CAST(changes.\"seg1\" AS bigint) AND changes.\"tbl\" = '{name}' AND changes.\"op\" = 'U' AND changes.\"seq\" >= 13 AND changes.\"seq\" <= 20"), "committed"),
            (format!("{COMMENT}UPDATE {target} SET \"v\" = changes.\"c2\" FROM {changes} changes WHERE {target}.\"id\" = CAST(changes.\"seg1\" AS bigint) AND changes.\"tbl\" = '{name}' AND changes.\"op\" = 'U' AND changes.\"seq\" >= 21 AND changes.\"seq\" <= 30"), "rolledback"),
        ];
        for (sql, outcome) in statements {
            let ids = rs
                .query_one(
                    "SELECT nextval('lab_query_id_seq'), nextval('lab_transaction_id_seq')",
                    &[],
                )
                .await?;
            let (query_id, txn): (i64, i64) = (ids.get(0), ids.get(1));
            rs.execute(
                "INSERT INTO sys_query_history (query_id, transaction_id, status, start_time, end_time, query_text) \
                 VALUES ($1, $2, 'success', $3, $3, $4)",
                &[&query_id, &txn, &now, &sql],
            )
            .await?;
            rs.execute(
                "INSERT INTO sys_transaction_history (transaction_id, status) VALUES ($1, $2)",
                &[&txn, &outcome],
            )
            .await?;
        }
        rs.execute(
            "INSERT INTO awsdms_apply_exceptions VALUES ('bench', $1, $2, $3, 'UPDATE ...', 'error')",
            &[&schema, &table, &now],
        )
        .await?;
    }
    Ok(())
}

/// `tasks` CDC tasks over two instances, each with one datapoint per CloudWatch metric.
async fn seed_aws(aws: &AwsClients, tasks: usize) -> anyhow::Result<Vec<(String, String)>> {
    let now = SystemTime::now();
    let mut out = Vec::new();
    for t in 0..tasks {
        let instance = format!("bench-inst-{}", t % 2);
        let name = format!("bench-task-{t:02}");
        let arn = dmsguard_lab::harness::create_dms_task(aws, &instance, &name).await?;
        let resource_id = arn.rsplit(':').next().unwrap_or_default().to_owned();
        for metric in ["CDCLatencySource", "CDCLatencyTarget", "CDCIncomingChanges"] {
            put(
                aws,
                metric,
                &[
                    ("ReplicationInstanceIdentifier", &instance),
                    ("ReplicationTaskIdentifier", &resource_id),
                ],
                5.0,
                now,
            )
            .await?;
        }
        out.push((name, instance));
    }
    for instance in ["bench-inst-0", "bench-inst-1"] {
        for metric in ["FreeableMemory", "AvailableMemory", "SwapUsage"] {
            put(
                aws,
                metric,
                &[("ReplicationInstanceIdentifier", instance)],
                2.0e9,
                now,
            )
            .await?;
        }
    }
    Ok(out)
}

async fn put(
    aws: &AwsClients,
    metric: &str,
    dims: &[(&str, &str)],
    value: f64,
    at: SystemTime,
) -> anyhow::Result<()> {
    let dims = dims
        .iter()
        .map(|(k, v)| Dimension::builder().name(*k).value(*v).build())
        .collect();
    aws.cloudwatch
        .put_metric_data()
        .namespace("AWS/DMS")
        .metric_data(
            MetricDatum::builder()
                .metric_name(metric)
                .set_dimensions(Some(dims))
                .value(value)
                .timestamp(at.into())
                .build(),
        )
        .send()
        .await?;
    Ok(())
}

fn config_text(
    dbs: &TestDatabases,
    moto_url: &str,
    port: u16,
    tables: usize,
    tasks: &[(String, String)],
) -> String {
    let mut text = format!(
        r#"[source]
url = "{source}"
password = "${{BENCH_PG_PASSWORD}}"
[redshift]
url = "{redshift}"
password = "${{BENCH_PG_PASSWORD}}"
maintenance_window = "sun:05:00-sun:05:30"
[aws]
endpoint_url = "{moto_url}"
max_attempts = 1
[exporter]
listen = "127.0.0.1:{port}"
[exporter.redshift_statements]
interval = "2s"
timeout = "10s"
[exporter.cloudwatch]
interval = "2s"
timeout = "10s"
[exporter.dms]
interval = "2s"
timeout = "10s"
[exporter.gaps]
interval = "10s"
timeout = "60s"
[exporter.maintenance]
interval = "2s"
timeout = "10s"
"#,
        // The exporter's least-privilege user of docs/grants.md, as in production.
        source = dbs.exporter_source().url,
        redshift = dbs.exporter_redshift().url,
    );
    for (name, instance) in tasks {
        text.push_str(&format!(
            "[[tasks]]\nname = \"{name}\"\nreplication_instance = \"{instance}\"\n"
        ));
    }
    for i in 0..tables {
        text.push_str(&format!(
            "[[tables]]\nsource = \"{}\"\nday_column = \"created_at\"\n",
            table_name(i)
        ));
    }
    text
}
