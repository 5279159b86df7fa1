//! What the exporter's gaps probe costs the source (and the Redshift stand-in) per hour, per
//! configuration, measured by PostgreSQL's own statistics.
//!
//! Builds one table of `--rows-per-day` ids a day (yesterday in full, today up to
//! `--hour` UTC), replicated clean, with an index on its day column as a production table
//! has. For each configuration it runs the real `GapsProbe` as the exporter's least-privilege
//! user at injected instants `--interval-minutes` apart for `--hours` simulated hours and
//! reads, as the lab's superuser, the table's statistics (`pg_stat_user_tables`,
//! `pg_stat_user_indexes`) and the database's committed transactions (`pg_stat_database`)
//! around the last hour (the first warms the schedule up). The probe's backends are ended at
//! each measurement so that they flush their statistics. Prints one comparison table.
//!
//! `cargo run --release -p dmsguard-lab --bin bench_probe_cost -- --rows-per-day 1000000`

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::Parser;
use dmsguard_exporter::metrics::GapMetrics;
use dmsguard_exporter::probes::gaps::GapsProbe;
use dmsguard_lab::harness::{eventually, TestDatabases, EXPORTER_USER};
use dmsguard_pipeline::config::Config;
use dmsguard_pipeline::frontier::ProgressBoard;
use tokio_postgres::Client;

#[derive(Debug, clap::Parser)]
#[command(about = "Measure the gaps probe's reads of the source per hour")]
struct Args {
    /// Ids a day.
    #[arg(long, default_value_t = 1_000_000)]
    rows_per_day: i64,
    /// The UTC hour of today the runs happen at (today's window holds this many hours).
    #[arg(long, default_value_t = 12)]
    hour: i64,
    /// Minutes between probe runs (`[exporter.gaps] interval`).
    #[arg(long, default_value_t = 5)]
    interval_minutes: i64,
    /// Days of older rows before yesterday (a production table has history).
    #[arg(long, default_value_t = 3)]
    history_days: i64,
    /// Simulated hours per configuration; the last is measured.
    #[arg(long, default_value_t = 2)]
    hours: i64,
    /// A small budget to show slices with (ids per run and side).
    #[arg(long, default_value_t = 250_000)]
    small_budget: u64,
    /// Also measure a table with `divergent_rows = true` (the content comparison).
    #[arg(long)]
    content: bool,
    /// Index the day column together with the id (`(created_at, id)`), so that the day-bounds
    /// query can read the index only, instead of `(created_at)` alone.
    #[arg(long)]
    covering_index: bool,
}

/// The largest budget TOML can say (its integers are 64-bit signed): no budget in effect.
const NO_BUDGET: u64 = i64::MAX as u64;

/// One configuration measured.
struct Case {
    name: String,
    finished_window_interval: &'static str,
    budget: u64,
    divergent_rows: bool,
}

/// Cumulative statistics of the table on one side.
#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    /// Heap rows read: sequential scans' plus index scans' fetches.
    heap_rows: i64,
    /// Index entries read (index-only scans read no heap row).
    index_entries: i64,
    /// Scans of the table or its indexes started.
    scans: i64,
    /// Committed transactions in the database (each probe statement is one).
    commits: i64,
}

impl std::ops::Sub for Stats {
    type Output = Stats;
    fn sub(self, o: Stats) -> Stats {
        Stats {
            heap_rows: self.heap_rows - o.heap_rows,
            index_entries: self.index_entries - o.index_entries,
            scans: self.scans - o.scans,
            commits: self.commits - o.commits,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dbs = TestDatabases::create("bench_probe_cost").await?;
    let result = run(&args, &dbs).await;
    dbs.drop().await?;
    result
}

async fn run(args: &Args, dbs: &TestDatabases) -> anyhow::Result<()> {
    let today = Utc::now().date_naive();
    let start = today.and_hms_opt(0, 0, 0).expect("midnight").and_utc()
        + chrono::Duration::hours(args.hour);
    let source = dbs.source_client().await?;
    let target = dbs.redshift_client().await?;
    let built = Instant::now();
    let r = args.rows_per_day;
    let today_rows = r * args.hour / 24;
    // Ids spread evenly over the history, yesterday and today up to `hour`.
    let step_us = 86_400_000_000 / r;
    let first_day = 1 + args.history_days;
    let rows = |ts: &str| {
        format!(
            "SELECT i, {ts} '{today} 00:00:00' - interval '{first_day} days' + (i - 1) * interval '{step_us} microseconds', 'status ' || (i % 7)
             FROM generate_series(1, {total}) i",
            total = r * first_day + today_rows
        )
    };
    source
        .batch_execute(&format!(
            "CREATE TABLE public.orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, status text);
             INSERT INTO public.orders {};
             CREATE INDEX orders_created_at ON public.orders ({index});",
            rows("TIMESTAMPTZ"),
            index = if args.covering_index { "created_at, id" } else { "created_at" }
        ))
        .await?;
    // One statement per call: VACUUM refuses to run in the implicit transaction of a batch.
    source.batch_execute("VACUUM ANALYZE public.orders").await?;
    target
        .batch_execute(&format!(
            "CREATE TABLE public.orders (id bigint, created_at timestamp, status varchar(40));
             INSERT INTO public.orders {};",
            rows("TIMESTAMP")
        ))
        .await?;
    target.batch_execute("VACUUM ANALYZE public.orders").await?;
    eprintln!(
        "tables built in {:.1} s: {} ids a day for {} days before yesterday, {} yesterday, {} today (to {:02}:00 UTC)",
        built.elapsed().as_secs_f64(),
        r,
        args.history_days,
        r,
        today_rows,
        args.hour
    );
    let bounds = day_bounds_side_by_side(dbs, &source, today).await?;

    let mut cases = vec![
        Case {
            name: "before: both windows every run, no budget".to_owned(),
            finished_window_interval: "0s",
            budget: NO_BUDGET,
            divergent_rows: false,
        },
        Case {
            name: "finished_window_interval = 1h, no budget".to_owned(),
            finished_window_interval: "1h",
            budget: NO_BUDGET,
            divergent_rows: false,
        },
        Case {
            name: "1h, default budget (10,000,000)".to_owned(),
            finished_window_interval: "1h",
            budget: 10_000_000,
            divergent_rows: false,
        },
        Case {
            name: format!("1h, budget {}", args.small_budget),
            finished_window_interval: "1h",
            budget: args.small_budget,
            divergent_rows: false,
        },
    ];
    if args.content {
        cases.push(Case {
            name: "1h, default budget, divergent_rows = true".to_owned(),
            finished_window_interval: "1h",
            budget: 10_000_000,
            divergent_rows: true,
        });
    }
    let runs_per_hour = 60 / args.interval_minutes;
    let mut lines = Vec::new();
    for case in &cases {
        let took = Instant::now();
        let config = config(dbs, case)?;
        let metrics = GapMetrics::register(&mut prometheus_client::registry::Registry::default());
        let mut probe = GapsProbe::new(Arc::new(config), metrics, ProgressBoard::default())?;
        let mut before = (Stats::default(), Stats::default());
        for run in 0..runs_per_hour * args.hours {
            if run == runs_per_hour * (args.hours - 1) {
                before = (flushed(&source).await?, flushed(&target).await?);
            }
            let at: DateTime<Utc> = start + chrono::Duration::minutes(args.interval_minutes * run);
            // A run right after its backends were ended may find its connection closed:
            // the next attempt reconnects.
            if let Err(e) = probe.refresh_at(at).await {
                eprintln!("run {run}: {e}; retrying");
                probe.refresh_at(at).await?;
            }
        }
        let after = (flushed(&source).await?, flushed(&target).await?);
        let (s, t) = (after.0 - before.0, after.1 - before.1);
        eprintln!("{}: {:.1} s", case.name, took.elapsed().as_secs_f64());
        lines.push((case.name.clone(), s, t));
    }
    let base = lines[0].1;
    println!(
        "\nGaps probe, one table of {r} ids/day at {:02}:00 UTC (today {today_rows} ids), index on {}, a run every {} min, per hour:\n",
        args.hour,
        if args.covering_index { "(created_at, id)" } else { "(created_at)" },
        args.interval_minutes
    );
    println!(
        "| config | source heap rows | source index entries | source rows read (sum) | vs before | source scans | source queries | target rows read |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, s, t) in &lines {
        let read = s.heap_rows + s.index_entries;
        #[allow(clippy::cast_precision_loss)]
        let ratio = read as f64 / (base.heap_rows + base.index_entries).max(1) as f64;
        println!(
            "| {name} | {} | {} | {} | {ratio:.2} | {} | {} | {} |",
            s.heap_rows,
            s.index_entries,
            read,
            s.scans,
            s.commits,
            t.heap_rows + t.index_entries
        );
    }
    println!("\nThe day-bounds query alone, both windows once, as the exporter's user:\n");
    println!("| day-bounds query | source heap rows | source index entries | ms |");
    println!("|---|---|---|---|");
    for (name, stats, ms) in bounds {
        println!(
            "| {name} | {} | {} | {ms:.0} |",
            stats.heap_rows, stats.index_entries
        );
    }
    Ok(())
}

/// The day-bounds query as it was (PostgreSQL answers MIN/MAX by walking the id index) and as
/// the gap finder runs it now (the day's rows aggregated behind `OFFSET 0`), for yesterday and
/// today, measured side by side.
async fn day_bounds_side_by_side(
    dbs: &TestDatabases,
    superuser: &Client,
    today: chrono::NaiveDate,
) -> anyhow::Result<Vec<(&'static str, Stats, f64)>> {
    let before = "SELECT CAST(MIN(id) AS BIGINT), CAST(MAX(id) AS BIGINT) FROM public.orders \
                  WHERE created_at >= $1 AND created_at < $2";
    let now = "SELECT CAST(MIN(d.id) AS BIGINT), CAST(MAX(d.id) AS BIGINT) FROM \
               (SELECT id FROM public.orders WHERE created_at >= $1 AND created_at < $2 OFFSET 0) d";
    let mut out = Vec::new();
    for (name, sql) in [
        ("before (MIN/MAX over the day's filter)", before),
        ("now (OFFSET 0 fence)", now),
    ] {
        let start = flushed(superuser).await?;
        let took = Instant::now();
        {
            let client = dmsguard_pipeline::db::connect(&dbs.exporter_source()).await?;
            for day in [today - chrono::Duration::days(1), today] {
                let lo = day.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
                let hi = lo + chrono::Duration::days(1);
                client.query_one(sql, &[&lo, &hi]).await?;
            }
        }
        let ms = took.elapsed().as_secs_f64() * 1000.0;
        out.push((name, flushed(superuser).await? - start, ms));
    }
    Ok(out)
}

fn config(dbs: &TestDatabases, case: &Case) -> anyhow::Result<Config> {
    let text = format!(
        r#"
[source]
url = "{source}"
password = "{pw}"
[redshift]
url = "{redshift}"
password = "{pw}"
[frontier]
margin = "0s"
fallback_latency = "0s"
[exporter]
listen = "127.0.0.1:0"
preflight = false
finished_window_interval = "{fwi}"
gaps_scan_budget_rows = {budget}
[[tables]]
source = "public.orders"
day_column = "created_at"
divergent_rows = {divergent}
"#,
        // The exporter's least-privilege user of docs/grants.md, never a superuser.
        source = dbs.exporter_source().url,
        redshift = dbs.exporter_redshift().url,
        pw = dbs.env.pg_password,
        fwi = case.finished_window_interval,
        budget = case.budget,
        divergent = case.divergent_rows,
    );
    Ok(Config::from_toml(&text, &|_| None)?)
}

/// Ends the exporter user's backends on `client`'s database (a backend flushes its statistics
/// when it exits), waits until they are gone, then reads the table's statistics.
async fn flushed(client: &Client) -> anyhow::Result<Stats> {
    client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE usename = $1 AND datname = current_database()",
            &[&EXPORTER_USER],
        )
        .await?;
    eventually("the probe's backends ended", Duration::from_secs(30), || async {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = current_database()",
                &[&EXPORTER_USER],
            )
            .await?
            .get(0);
        Ok((n == 0).then_some(()))
    })
    .await?;
    client
        .batch_execute("SELECT pg_stat_clear_snapshot()")
        .await?;
    let row = client
        .query_one(
            "SELECT CAST(COALESCE(t.seq_tup_read, 0) + COALESCE(t.idx_tup_fetch, 0) AS BIGINT),
                    CAST((SELECT COALESCE(SUM(i.idx_tup_read), 0) FROM pg_stat_user_indexes i WHERE i.relid = t.relid) AS BIGINT),
                    CAST(COALESCE(t.seq_scan, 0) + COALESCE(t.idx_scan, 0) AS BIGINT),
                    (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())
             FROM pg_stat_user_tables t WHERE t.schemaname = 'public' AND t.relname = 'orders'",
            &[],
        )
        .await?;
    Ok(Stats {
        heap_rows: row.get(0),
        index_entries: row.get(1),
        scans: row.get(2),
        commits: row.get(3),
    })
}
