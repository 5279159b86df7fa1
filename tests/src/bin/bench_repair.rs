//! `bench-repair`: times repairing rows of an awkward table into an empty DMS-typed target
//! through the staged write path (`dmsguard_pipeline::staging`), through the former
//! one-statement path (`Translator::insert_absent`), and the floor: PostgreSQL `COPY` (text
//! format) of the same rows, source to target. See `tests/BENCH-REPAIR.md`.
//!
//! Runs on the lab's PostgreSQL (`tests/lab/up --pg-only`) in a fresh database pair, the
//! repairs as the remediator's least-privilege user. Each path's result is checked against the
//! COPY of the same rows, every column. Not run in CI; build it with `--release`.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Parser;
use dmsguard_lab::harness::{TestDatabases, REMEDIATOR_USER};
use dmsguard_pipeline::catalogue::Catalogue;
use dmsguard_pipeline::config::QualifiedName;
use dmsguard_pipeline::staging::{StageLimits, StagedWriter};
use dmsguard_pipeline::type_translator::{fetch_source_rows, Translator};
use futures::{SinkExt, StreamExt};
use tokio_postgres::Client;

/// Benchmark of the repair write path (issue: repairs at the scale DMS loses rows).
#[derive(Debug, Parser)]
#[command(name = "bench-repair")]
struct Args {
    /// Rows repaired through the staged path and copied with COPY.
    #[arg(long, default_value_t = 1_000_000)]
    rows: i64,
    /// Rows repaired through the former one-statement path (about 420 rows/s: a million
    /// would take the better part of an hour); its rate is compared.
    #[arg(long, default_value_t = 20_000)]
    old_rows: i64,
    /// Rows read from the source per query (`insert_batch_rows`).
    #[arg(long, default_value_t = 5000)]
    batch_rows: usize,
    /// Most rows per staging statement (`repair_statement_rows`).
    #[arg(long, default_value_t = 1000)]
    statement_rows: usize,
    /// Rows per locked move (`repair_move_rows`).
    #[arg(long, default_value_t = 50_000)]
    move_rows: usize,
    /// Bytes per staging statement (`repair_statement_bytes`).
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    statement_bytes: usize,
    /// Leave the bench databases in place.
    #[arg(long)]
    keep: bool,
    /// Also repair the rows end to end with this `dmsguard-remediator` (`run missing_rows`:
    /// gap finder, staged path, ledger progress), timed with its peak RSS by `/usr/bin/time`.
    /// Default: the one next to this executable, if built (`cargo build --release -p
    /// dmsguard-remediator`).
    #[arg(long)]
    remediator: Option<std::path::PathBuf>,
}

const SOURCE_DDL: &str = r#"
CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped');
CREATE TABLE public.awkward (
    id bigint PRIMARY KEY,
    ref uuid,
    at timestamptz,
    amount numeric(38,10),
    flag boolean,
    tags text[],
    doc jsonb,
    status order_status,
    note text,
    blob bytea
);
"#;

const FILL: &str = r#"
INSERT INTO public.awkward
SELECT g,
       CASE WHEN g % 4 = 0 THEN NULL ELSE md5(g::text)::uuid END,
       '2024-02-29 23:59:59.123456+02'::timestamptz + g * interval '1 second',
       g * 12345.6789012345,
       g % 2 = 0,
       ARRAY['t' || g, 'quote"d', NULL, 'back\slash'],
       CASE WHEN g % 3 = 0 THEN NULL ELSE jsonb_build_object('n', g, 'ü', 'größe ✓', 'q', 'it''s') END,
       (ARRAY['new','paid','shipped'])[1 + g % 3]::order_status,
       E'tab\there ' || g || E'\nnew line; DROP TABLE x; --',
       CASE WHEN g % 5 = 0 THEN NULL ELSE decode(lpad(to_hex(g), 8, '0'), 'hex') END
FROM generate_series(1, $1::bigint) g
"#;

/// The target as DMS creates it: everything awkward as varchar, no key.
fn target_ddl(name: &str) -> String {
    format!(
        "CREATE TABLE public.{name} (
            id bigint NOT NULL,
            ref varchar(36),
            at timestamptz,
            amount numeric(38,10),
            flag varchar(5),
            tags varchar(65535),
            doc varchar(65535),
            status varchar(65535),
            note varchar(65535),
            blob varchar(65535)
        );
        GRANT SELECT, INSERT, UPDATE ON public.{name} TO {REMEDIATOR_USER};"
    )
}

/// The source's rows as the text DMS writes (the COPY floor's SELECT).
const SOURCE_AS_DMS: &str = "SELECT id, ref::text, at, amount, flag::text, tags::text, doc::text, \
    status::text, note, '\\x' || encode(blob, 'hex') FROM public.awkward";

/// The machine's 1, 5 and 15-minute load averages (timings on a shared machine need them).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// This process's peak resident memory (`VmHWM`), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

struct Timing {
    method: &'static str,
    rows: i64,
    elapsed: Duration,
}

impl Timing {
    fn rate(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    ensure!(
        args.rows > 0 && args.old_rows >= 0,
        "--rows must be above 0"
    );
    let dbs = TestDatabases::create("bench_repair")
        .await
        .context("creating the bench databases (is the lab up? tests/lab/up --pg-only)")?;
    let result = run(&args, &dbs).await;
    if args.keep {
        println!(
            "Kept databases {} and {}.",
            dbs.source_name, dbs.redshift_name
        );
    } else {
        dbs.drop().await?;
    }
    result
}

async fn run(args: &Args, dbs: &TestDatabases) -> anyhow::Result<()> {
    let source_admin = dbs.source_client().await?;
    let target_admin = dbs.redshift_client().await?;
    // The lab logs every statement of the remediator in the stand-in for the statement audit;
    // a million rows of bound values would flood the log and time the logging.
    target_admin
        .batch_execute(&format!(
            "DO $$ BEGIN EXECUTE format('ALTER ROLE {REMEDIATOR_USER} IN DATABASE %I RESET log_statement', current_database()); END $$;"
        ))
        .await?;
    source_admin.batch_execute(SOURCE_DDL).await?;
    let started = Instant::now();
    source_admin.execute(FILL, &[&args.rows]).await?;
    source_admin
        .batch_execute(&format!(
            "GRANT SELECT ON public.awkward TO {REMEDIATOR_USER}"
        ))
        .await?;
    source_admin
        .batch_execute("VACUUM ANALYZE public.awkward")
        .await?;
    for name in ["awkward_new", "awkward_old", "awkward_copy", "awkward_e2e"] {
        target_admin.batch_execute(&target_ddl(name)).await?;
    }
    println!(
        "Source: {} rows of public.awkward built in {:.1} s. Load average at start: {}",
        args.rows,
        started.elapsed().as_secs_f64(),
        load_average()
    );

    let mut timings = Vec::new();
    let rss_before = peak_rss_mib();
    timings.push(staged(args, dbs).await?);
    let rss_after = peak_rss_mib();
    println!(
        "Peak RSS of the bench process: {:.1} MiB before the staged repair, {:.1} MiB after it.",
        rss_before.unwrap_or(f64::NAN),
        rss_after.unwrap_or(f64::NAN)
    );
    let remediator = args.remediator.clone().or_else(|| {
        let sibling = std::env::current_exe()
            .ok()?
            .with_file_name("dmsguard-remediator");
        sibling.exists().then_some(sibling)
    });
    let mut checked = vec![("awkward_new", args.rows)];
    if let Some(remediator) = &remediator {
        timings.push(end_to_end(args, dbs, remediator).await?);
        checked.push(("awkward_e2e", args.rows));
    }
    if args.old_rows > 0 {
        timings.push(one_statement(args, dbs).await?);
        checked.push(("awkward_old", args.old_rows));
    }
    timings.push(copy(dbs, &source_admin, &target_admin, args.rows).await?);

    // Every path wrote what COPY wrote, every column.
    for (table, rows) in checked {
        let row = target_admin
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM public.{table}), \
                     (SELECT count(DISTINCT id) FROM public.{table}), \
                     (SELECT count(*) FROM (SELECT * FROM public.{table} EXCEPT ALL \
                      SELECT * FROM public.awkward_copy WHERE id <= $1) d)"
                ),
                &[&rows],
            )
            .await?;
        let (n, distinct, differ): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        ensure!(
            n == rows && distinct == rows && differ == 0,
            "{table}: {n} rows, {distinct} distinct ids, {differ} differing from COPY's (expected {rows})"
        );
    }
    println!("Checked: each path wrote every row once, equal to COPY's in every column.");
    println!("Load average at end: {}", load_average());

    let new_rate = timings[0].rate();
    let copy_rate = timings.last().map_or(f64::NAN, Timing::rate);
    println!();
    println!("| method | rows | seconds | rows/s | staged path is x faster | x slower than COPY |");
    println!("|---|---:|---:|---:|---:|---:|");
    for t in &timings {
        println!(
            "| {} | {} | {:.1} | {:.0} | {:.1} | {:.2} |",
            t.method,
            t.rows,
            t.elapsed.as_secs_f64(),
            t.rate(),
            new_rate / t.rate(),
            copy_rate / t.rate()
        );
    }
    Ok(())
}

/// The source rows of `chunk`, if there is one.
async fn fetch(
    source: &Client,
    table: &dmsguard_pipeline::catalogue::SourceTable,
    chunk: Option<&[i64]>,
) -> anyhow::Result<Option<Vec<dmsguard_pipeline::type_translator::SourceRow>>> {
    Ok(match chunk {
        Some(chunk) => Some(fetch_source_rows(source, table, "id", chunk).await?),
        None => None,
    })
}

/// Source rows `ids`, translated for `target`, through the staged path as the remediator.
async fn staged(args: &Args, dbs: &TestDatabases) -> anyhow::Result<Timing> {
    let source = dmsguard_pipeline::db::connect(&dbs.remediator_source()).await?;
    let mut target = dmsguard_pipeline::db::connect(&dbs.remediator_redshift()).await?;
    let (source_table, translator) = translator(&source, &target, "awkward_new").await?;
    let limits = StageLimits {
        move_rows: args.move_rows,
        statement_rows: args.statement_rows,
        statement_bytes: args.statement_bytes,
        max_attempts: 5,
    };
    let started = Instant::now();
    // As the repair holds them: the missing ids, all of them, ascending.
    let ids: Vec<i64> = (1..=args.rows).collect();
    let mut writer = StagedWriter::new(&translator, limits);
    let mut inserted = 0;
    let mut moves = 0;
    // Where the time goes: waiting for the source (beyond the writes it overlaps, as in
    // `dmsguard-remediator`: the next chunk is read while the current one is written),
    // translating, loading the stage, moving.
    let mut phases = [Duration::ZERO; 4];
    let mut chunks = ids.chunks(args.batch_rows.max(1));
    let mut next = chunks.next();
    let t = Instant::now();
    let mut fetched = fetch(&source, &source_table, next).await?;
    phases[0] += t.elapsed();
    while let Some(rows) = fetched.take() {
        let t = Instant::now();
        let (good, bad) = translator.translate_all(&rows);
        ensure!(bad.is_empty(), "{bad:?}");
        phases[1] += t.elapsed();
        next = chunks.next();
        let t = Instant::now();
        let write = async {
            let t = Instant::now();
            writer.stage(&target, &good).await?;
            let load = t.elapsed();
            let t = Instant::now();
            let moved = if writer.is_full() {
                Some(writer.move_staged(&mut target).await?.inserted)
            } else {
                None
            };
            anyhow::Ok((load, moved, t.elapsed()))
        };
        let (written, prefetched) = tokio::join!(write, fetch(&source, &source_table, next));
        let (load, moved, moving) = written?;
        fetched = prefetched?;
        phases[2] += load;
        phases[3] += moving;
        phases[0] += t.elapsed().saturating_sub(load + moving);
        if let Some(moved) = moved {
            inserted += moved;
            moves += 1;
        }
    }
    let statements = writer.load_statements();
    let t = Instant::now();
    inserted += writer.finish(&mut target).await?.inserted;
    phases[3] += t.elapsed();
    let elapsed = started.elapsed();
    ensure!(inserted == args.rows as u64, "inserted {inserted}");
    println!(
        "Staged: {inserted} rows in {statements} load statements and {} moves, {:.1} s: \
         waiting for the source {:.1} s, translate {:.1} s, load {:.1} s, move {:.1} s.",
        moves + 1,
        elapsed.as_secs_f64(),
        phases[0].as_secs_f64(),
        phases[1].as_secs_f64(),
        phases[2].as_secs_f64(),
        phases[3].as_secs_f64(),
    );
    Ok(Timing {
        method: "staged (temp table + locked move)",
        rows: args.rows,
        elapsed,
    })
}

/// `dmsguard-remediator run missing_rows` over ids 1..=rows into the empty `awkward_e2e`, as
/// the remediator's users, its ledger in the source database; wall time and peak RSS from
/// `/usr/bin/time`.
async fn end_to_end(
    args: &Args,
    dbs: &TestDatabases,
    remediator: &std::path::Path,
) -> anyhow::Result<Timing> {
    let pw = &dbs.env.pg_password;
    let config = format!(
        "[source]\nurl = \"{}\"\npassword = \"{pw}\"\n\n[redshift]\nurl = \"{}\"\npassword = \"{pw}\"\n\n\
         [frontier]\nmargin = \"0s\"\nfallback_latency = \"0s\"\n\n\
         [[tables]]\nsource = \"public.awkward\"\ntarget = \"public.awkward_e2e\"\n\n\
         [remediator]\ninsert_batch_rows = {}\nrepair_statement_rows = {}\nrepair_move_rows = {}\nrepair_statement_bytes = {}\n{}",
        dbs.remediator_source().url,
        dbs.remediator_redshift().url,
        args.batch_rows,
        args.statement_rows,
        args.move_rows,
        args.statement_bytes,
        dbs.ledger_section(),
    );
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("dmsguard.toml");
    std::fs::write(&path, config)?;
    let started = Instant::now();
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "bench-repair-time %M %e"])
        .arg(remediator)
        .arg("--config")
        .arg(&path)
        .args([
            "run",
            "missing_rows",
            "--table",
            "public.awkward",
            "--from-id",
            "1",
        ])
        .args(["--to-id", &args.rows.to_string()])
        .env("RUST_LOG", "warn")
        .output()
        .context("running dmsguard-remediator under /usr/bin/time")?;
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && stdout.contains("outcome: succeeded"),
        "dmsguard-remediator failed:\n{stdout}\n{stderr}"
    );
    let max_rss_kib: f64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("bench-repair-time "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN);
    println!(
        "End to end (dmsguard-remediator run missing_rows): {:.1} s, peak RSS {:.1} MiB; {}",
        elapsed.as_secs_f64(),
        max_rss_kib / 1024.0,
        stdout
            .lines()
            .find(|l| l.contains("found,"))
            .unwrap_or_default()
            .trim()
    );
    Ok(Timing {
        method: "dmsguard-remediator run missing_rows (gap finder + staged)",
        rows: args.rows,
        elapsed,
    })
}

/// The first `old_rows` source rows through the former path: 500 rows a statement, each one
/// `INSERT … SELECT … UNION ALL … WHERE NOT EXISTS` in its own locked transaction.
async fn one_statement(args: &Args, dbs: &TestDatabases) -> anyhow::Result<Timing> {
    let source = dmsguard_pipeline::db::connect(&dbs.remediator_source()).await?;
    let mut target = dmsguard_pipeline::db::connect(&dbs.remediator_redshift()).await?;
    let (source_table, translator) = translator(&source, &target, "awkward_old").await?;
    let started = Instant::now();
    let ids: Vec<i64> = (1..=args.old_rows).collect();
    let mut inserted = 0;
    for chunk in ids.chunks(500) {
        let rows = fetch_source_rows(&source, &source_table, "id", chunk).await?;
        let (good, _) = translator.translate_all(&rows);
        inserted += translator.insert_absent(&mut target, &good, 500, 5).await?;
    }
    let elapsed = started.elapsed();
    ensure!(inserted == args.old_rows as u64, "inserted {inserted}");
    Ok(Timing {
        method: "one statement (UNION ALL, former path)",
        rows: args.old_rows,
        elapsed,
    })
}

/// `COPY (SELECT … as DMS writes it) TO STDOUT` from the source into `COPY … FROM STDIN` of the
/// target, text format.
async fn copy(
    _dbs: &TestDatabases,
    source: &Client,
    target: &Client,
    rows: i64,
) -> anyhow::Result<Timing> {
    let started = Instant::now();
    let out = source
        .copy_out(&format!(
            "COPY ({SOURCE_AS_DMS} WHERE id <= {rows} ORDER BY id) TO STDOUT"
        ))
        .await?;
    let sink = target
        .copy_in("COPY public.awkward_copy FROM STDIN")
        .await?;
    futures::pin_mut!(out);
    futures::pin_mut!(sink);
    while let Some(chunk) = out.next().await {
        sink.feed(chunk?).await?;
    }
    let loaded = sink.as_mut().finish().await?;
    let elapsed = started.elapsed();
    ensure!(loaded == rows as u64, "COPY loaded {loaded}");
    Ok(Timing {
        method: "COPY text, source to target (floor)",
        rows,
        elapsed,
    })
}

async fn translator(
    source: &Client,
    target: &Client,
    target_table: &str,
) -> anyhow::Result<(dmsguard_pipeline::catalogue::SourceTable, Translator)> {
    let name = |table: &str| QualifiedName {
        schema: "public".to_owned(),
        table: table.to_owned(),
    };
    let source_table = Catalogue::load_source(source, &name("awkward")).await?;
    let target_table = Catalogue::load(target, &name(target_table)).await?;
    Ok((
        source_table.clone(),
        Translator::new(&source_table, &target_table, "id")?,
    ))
}
