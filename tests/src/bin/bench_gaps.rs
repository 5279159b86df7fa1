//! `bench-gaps`: times the gap finder against dump-and-join, reladiff and a bare `count(*)`.
//!
//! Builds, on the lab's PostgreSQL, a source database and a target database (as in production),
//! each size's source table and one target table per missing fraction, then runs every method
//! on the same tables in one run and prints seconds, ratios to the gap finder and rows moved.
//! Each method's answer is checked against the ids the generator removed. Needs `tests/lab/up`
//! (PostgreSQL and the venv with reladiff). Not run in CI; build it with `--release`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use dmsguard_lab::harness::{apply_grants, LabEnv, TestDatabases, EXPORTER_USER};
use dmsguard_pipeline::config::{DatabaseConfig, QualifiedName};
use dmsguard_pipeline::gap_finder::{
    FingerprintQuery, GapFinder, GapFinderOptions, GapReport, IdRange, TableSpec,
};
use futures::{SinkExt, StreamExt};
use tokio_postgres::Client;

/// Benchmark of the gap finder (docs/architecture.md).
#[derive(Debug, Parser)]
#[command(name = "bench-gaps")]
struct Args {
    /// Table sizes in rows.
    #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
    sizes: Vec<i64>,
    /// Fractions of ids missing in the target, in percent.
    #[arg(long, value_delimiter = ',', default_value = "0.01,1")]
    missing: Vec<f64>,
    /// Runs per method and table (the median is reported); reladiff runs once.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// The reladiff executable (from the lab's venv).
    #[arg(long, env = "DMSGUARD_RELADIFF")]
    reladiff: Option<String>,
    /// Leave the bench databases in place.
    #[arg(long)]
    keep: bool,
    /// Use the fixed databases `bench_gaps_src` and `bench_gaps_tgt`, build only the tables
    /// they lack and keep everything afterwards, so repeated runs skip the (slow) build.
    #[arg(long, conflicts_with = "cleanup")]
    reuse: bool,
    /// Drop the `--reuse` databases and exit.
    #[arg(long)]
    cleanup: bool,
    /// Methods to time (the gap finder always runs: ratios are to it).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "grouped,dump-and-join,reladiff,count"
    )]
    methods: Vec<Method>,
    /// Time the content comparison instead (issue: rows whose values diverged): tables of
    /// several column types, `--stale` percent of the target's rows holding old values, against
    /// reladiff's content diff, a row-by-row comparison in the client and `count(*)`.
    #[arg(long)]
    content: bool,
    /// With `--content`: percent of the target's rows left stale.
    #[arg(long, value_delimiter = ',', default_value = "0.01,1")]
    stale: Vec<f64>,
}

/// A method timed against the gap finder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Method {
    /// The gap finder with Redshift's grouped fingerprint query on both sides.
    Grouped,
    DumpAndJoin,
    Reladiff,
    Count,
}

/// The databases `--reuse` keeps between runs.
const REUSED_DATABASES: [&str; 2] = ["bench_gaps_src", "bench_gaps_tgt"];

/// The machine's 1, 5 and 15-minute load averages (timings on a shared machine need them).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Ids removed from the target: a scattered, reproducible choice of `per_million` in a million.
fn is_missing(id: i64, per_million: i64) -> bool {
    (id * 2_654_435_761) % 1_000_000 < per_million
}

const MISSING_SQL: &str = "(g * 2654435761) % 1000000 < ";

fn per_million(percent: f64) -> i64 {
    (percent * 10_000.0).round() as i64
}

struct Measurement {
    method: &'static str,
    seconds: f64,
    rows_moved: Option<u64>,
    exact: bool,
    note: String,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn config(env: &LabEnv, db: &str) -> DatabaseConfig {
    DatabaseConfig {
        statement_timeout: Duration::ZERO,
        iam: None,
        ..env.database(db)
    }
}

async fn connect(env: &LabEnv, db: &str) -> anyhow::Result<Client> {
    dmsguard_pipeline::db::connect(&config(env, db))
        .await
        .with_context(|| format!("connecting to {db} (is the lab up? tests/lab/up --pg-only)"))
}

/// `db` as the exporter's least-privilege user of `docs/grants.md`: the gap finder runs as it.
async fn connect_as_exporter(env: &LabEnv, db: &str) -> anyhow::Result<Client> {
    dmsguard_pipeline::db::connect(&TestDatabases::as_user(&config(env, db), EXPORTER_USER))
        .await
        .with_context(|| format!("connecting to {db} as {EXPORTER_USER}"))
}

/// Creates the exporter's user on both databases with `docs/grants.md`'s PostgreSQL block
/// (this bench's target is plain PostgreSQL, without the Redshift stand-in's system views).
async fn grant_exporter(env: &LabEnv, dbs: [&str; 2]) -> anyhow::Result<()> {
    for db in dbs {
        let owner = connect(env, db).await?;
        apply_grants(
            &owner,
            &["postgresql-exporter"],
            &[
                ("<password>", env.pg_password.as_str()),
                ("<table_owner>", env.pg_user.as_str()),
            ],
        )
        .await
        .with_context(|| format!("granting the exporter's user on {db}"))?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // RUST_LOG=dmsguard_pipeline::gap_finder=debug shows each round's time on stderr.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let env = LabEnv::from_env();
    let admin = connect(&env, "postgres").await?;
    if args.cleanup {
        for db in REUSED_DATABASES {
            admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                .await?;
        }
        return Ok(());
    }
    let (src_db, tgt_db) = if args.reuse {
        (
            REUSED_DATABASES[0].to_owned(),
            REUSED_DATABASES[1].to_owned(),
        )
    } else {
        let pid = std::process::id();
        (
            format!("bench_gaps_src_{pid}"),
            format!("bench_gaps_tgt_{pid}"),
        )
    };
    for db in [&src_db, &tgt_db] {
        let exists = admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[db])
            .await?
            .is_some();
        if !(args.reuse && exists) {
            admin
                .batch_execute(&format!("CREATE DATABASE \"{db}\""))
                .await?;
        }
    }
    grant_exporter(&env, [&src_db, &tgt_db]).await?;
    println!("Load average at start: {}", load_average());
    let result = if args.content {
        content::run(&args, &env, &src_db, &tgt_db).await
    } else {
        run(&args, &env, &src_db, &tgt_db).await
    };
    println!("Load average at end: {}", load_average());
    if !args.keep && !args.reuse {
        for db in [&src_db, &tgt_db] {
            admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                .await?;
        }
    }
    result
}

async fn run(args: &Args, env: &LabEnv, src_db: &str, tgt_db: &str) -> anyhow::Result<()> {
    let conns = Conns::open(env, src_db, tgt_db).await?;
    let suite = Suite {
        labels: Labels {
            what: "missing",
            ours: "gap finder",
        },
        source_table: |size| format!("s_{size}"),
        target_table: |size, m| format!("t_{size}_{m}"),
        chosen: is_missing,
    };
    let rows = suite
        .run(
            args,
            &args.missing,
            &conns,
            build_table,
            async |case: Case<'_>| {
                // Warm both tables' caches so the first method timed does not pay for them.
                case.count_both().await?;
                case.measure(args).await
            },
        )
        .await?;
    print_table(&suite.labels, &rows);
    check_bars(&suite.labels, &rows);
    Ok(())
}

/// The names of one benchmark's tables and answers; [`Suite::run`] is the loop both share.
struct Suite {
    labels: Labels,
    source_table: fn(i64) -> String,
    /// The target's table for a size and a fraction (per million).
    target_table: fn(i64, i64) -> String,
    /// Whether the generator made `id` differ at that fraction (per million).
    chosen: fn(i64, i64) -> bool,
}

/// The connections of a benchmark: as the lab's superuser to build and time the other methods,
/// and as the exporter's least-privilege user for ours.
struct Conns<'e> {
    source: Client,
    target: Client,
    exporter_source: Client,
    exporter_target: Client,
    src_db: &'e str,
    tgt_db: &'e str,
    env: &'e LabEnv,
}

impl<'e> Conns<'e> {
    async fn open(env: &'e LabEnv, src_db: &'e str, tgt_db: &'e str) -> anyhow::Result<Conns<'e>> {
        Ok(Conns {
            source: connect(env, src_db).await?,
            target: connect(env, tgt_db).await?,
            exporter_source: connect_as_exporter(env, src_db).await?,
            exporter_target: connect_as_exporter(env, tgt_db).await?,
            src_db,
            tgt_db,
            env,
        })
    }
}

impl Suite {
    /// Per size: builds the source table and one target per fraction (`build(client, name,
    /// size, per million or None for the source, reuse)`), measures each case, and drops the
    /// tables unless `--reuse`.
    async fn run(
        &self,
        args: &Args,
        fractions: &[f64],
        conns: &Conns<'_>,
        build: impl AsyncFn(&Client, &str, i64, Option<i64>, bool) -> anyhow::Result<()>,
        measure: impl AsyncFn(Case<'_>) -> anyhow::Result<Vec<Measurement>>,
    ) -> anyhow::Result<Vec<Row>> {
        let (source, target) = (&conns.source, &conns.target);
        let mut rows = Vec::new();
        for &size in &args.sizes {
            let started = Instant::now();
            let source_table = (self.source_table)(size);
            let targets: Vec<(f64, String)> = fractions
                .iter()
                .map(|&pct| (pct, (self.target_table)(size, per_million(pct))))
                .collect();
            tokio::try_join!(
                build(source, &source_table, size, None, args.reuse),
                async {
                    for (pct, name) in &targets {
                        build(target, name, size, Some(per_million(*pct)), args.reuse).await?;
                    }
                    Ok(())
                }
            )?;
            eprintln!(
                "Built {size}-row tables ({}) in {:.1} s.",
                self.labels.ours,
                started.elapsed().as_secs_f64()
            );
            for (pct, target_table) in &targets {
                let expected: BTreeSet<i64> = (1..=size)
                    .filter(|&id| (self.chosen)(id, per_million(*pct)))
                    .collect();
                let measurements = measure(Case {
                    source,
                    target,
                    exporter_source: &conns.exporter_source,
                    exporter_target: &conns.exporter_target,
                    src_db: conns.src_db,
                    tgt_db: conns.tgt_db,
                    source_table: &source_table,
                    target_table,
                    range: IdRange::new(1, size)?,
                    expected: &expected,
                    env: conns.env,
                })
                .await?;
                rows.push((size, *pct, expected.len(), measurements));
            }
            if !args.reuse {
                source
                    .batch_execute(&format!("DROP TABLE {source_table}"))
                    .await?;
                for (_, name) in &targets {
                    target.batch_execute(&format!("DROP TABLE {name}")).await?;
                }
            }
        }
        Ok(rows)
    }
}

/// Creates `name` with ids 1..=size (minus the missing ones) and a payload, keyed and analysed;
/// with `reuse`, keeps an existing `name` (its contents are checked by the first `count(*)`).
async fn build_table(
    client: &Client,
    name: &str,
    size: i64,
    missing_per_million: Option<i64>,
    reuse: bool,
) -> anyhow::Result<()> {
    if reuse {
        let row = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
            .await?;
        if row.get::<_, bool>(0) {
            return Ok(());
        }
    }
    let filter = missing_per_million
        .map(|m| format!("WHERE NOT ({MISSING_SQL}{m})"))
        .unwrap_or_default();
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {name};
             CREATE TABLE {name} (id bigint NOT NULL, payload text, created_at timestamptz);
             INSERT INTO {name}
               SELECT g, md5(g::text), timestamptz '2026-11-01 00:00:00+00' + g * interval '10 ms'
               FROM generate_series(1, {size}) g {filter};
             ALTER TABLE {name} ADD PRIMARY KEY (id);"
        ))
        .await
        .with_context(|| format!("building {name}"))?;
    // VACUUM cannot share a transaction with the statements above.
    client
        .batch_execute(&format!("VACUUM ANALYZE {name}"))
        .await
        .with_context(|| format!("vacuuming {name}"))
}

struct Case<'a> {
    source: &'a Client,
    target: &'a Client,
    /// The measured method's connections, as the exporter's least-privilege user.
    exporter_source: &'a Client,
    exporter_target: &'a Client,
    src_db: &'a str,
    tgt_db: &'a str,
    source_table: &'a str,
    target_table: &'a str,
    range: IdRange,
    expected: &'a BTreeSet<i64>,
    env: &'a LabEnv,
}

impl Case<'_> {
    async fn measure(&self, args: &Args) -> anyhow::Result<Vec<Measurement>> {
        let timed = |m: Method| args.methods.contains(&m);
        let (mut ours, mut dump, mut count) = (Vec::new(), Vec::new(), Vec::new());
        let (mut grouped, mut grouped_rows, mut grouped_exact) = (Vec::new(), 0, true);
        let (mut ours_rows, mut dump_rows) = (0, 0);
        let (mut ours_exact, mut dump_exact) = (true, true);
        let mut ours_note = String::new();
        // Each repetition runs the methods back to back, so they share the machine's load.
        for _ in 0..args.repeat.max(1) {
            if timed(Method::Count) {
                let t = Instant::now();
                self.count_both().await?;
                count.push(t.elapsed().as_secs_f64());
            }

            let t = Instant::now();
            let report = self.gap_finder().await?;
            ours.push(t.elapsed().as_secs_f64());
            ours_rows = report.stats.rows_transferred;
            ours_exact &= self.is_exact(&report);
            ours_note = format!(
                "{} queries, {} rounds, fingerprints {:?}/{:?}",
                report.stats.queries,
                report.stats.rounds,
                report.stats.source_query,
                report.stats.target_query
            );

            if timed(Method::Grouped) {
                let options = GapFinderOptions {
                    source_query: FingerprintQuery::Grouped,
                    target_query: FingerprintQuery::Grouped,
                    ..GapFinderOptions::default()
                };
                let t = Instant::now();
                let report = self.gap_finder_with(options).await?;
                grouped.push(t.elapsed().as_secs_f64());
                grouped_rows = report.stats.rows_transferred;
                grouped_exact &= self.is_exact(&report);
            }

            if timed(Method::DumpAndJoin) {
                let t = Instant::now();
                let (missing, moved) = self.dump_and_join().await?;
                dump.push(t.elapsed().as_secs_f64());
                dump_rows = moved;
                dump_exact &= missing == *self.expected;
            }
        }
        let mut out = vec![Measurement {
            method: "gap finder",
            seconds: median(ours),
            rows_moved: Some(ours_rows),
            exact: ours_exact,
            note: ours_note,
        }];
        if timed(Method::Grouped) {
            out.push(Measurement {
                method: "gap finder, grouped",
                seconds: median(grouped),
                rows_moved: Some(grouped_rows),
                exact: grouped_exact,
                note: "Redshift's fingerprint query (GROUP BY) on both sides".to_owned(),
            });
        }
        if timed(Method::DumpAndJoin) {
            out.push(Measurement {
                method: "dump-and-join",
                seconds: median(dump),
                rows_moved: Some(dump_rows),
                exact: dump_exact,
                note: "COPY out, COPY in, LEFT JOIN".to_owned(),
            });
        }
        match &args.reladiff {
            Some(reladiff) if timed(Method::Reladiff) => {
                let t = Instant::now();
                let (missing, extra) = self.reladiff(reladiff).await?;
                out.push(Measurement {
                    method: "reladiff",
                    seconds: t.elapsed().as_secs_f64(),
                    rows_moved: None,
                    exact: missing == *self.expected && extra.is_empty(),
                    note: "one run, default options".to_owned(),
                });
            }
            Some(_) => {}
            None => eprintln!("DMSGUARD_RELADIFF is not set: reladiff skipped."),
        }
        if timed(Method::Count) {
            out.push(Measurement {
                method: "count(*) both",
                seconds: median(count),
                rows_moved: Some(2),
                exact: true,
                note: "floor: one scan per side, both sides concurrently".to_owned(),
            });
        }
        Ok(out)
    }

    fn spec(&self) -> TableSpec {
        TableSpec {
            source: QualifiedName::parse(&format!("public.{}", self.source_table)).unwrap(),
            target: QualifiedName::parse(&format!("public.{}", self.target_table)).unwrap(),
            id_column: "id".to_owned(),
        }
    }

    async fn gap_finder(&self) -> anyhow::Result<GapReport> {
        self.gap_finder_with(GapFinderOptions::default()).await
    }

    async fn gap_finder_with(&self, options: GapFinderOptions) -> anyhow::Result<GapReport> {
        Ok(GapFinder::new(options)?
            .find(
                self.exporter_source,
                self.exporter_target,
                &self.spec(),
                self.range,
            )
            .await?)
    }

    fn is_exact(&self, report: &GapReport) -> bool {
        report
            .missing
            .iter()
            .copied()
            .eq(self.expected.iter().copied())
            && report.extra.is_empty()
    }

    /// `count(*)` of the range on both sides concurrently, each on its own connection.
    async fn counts(&self) -> anyhow::Result<(i64, i64)> {
        let sql = |t: &str| format!("SELECT count(*) FROM {t} WHERE id >= $1 AND id <= $2");
        let (s, t) = (sql(self.source_table), sql(self.target_table));
        let bounds: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
            [&self.range.lo, &self.range.hi];
        let (a, b) = tokio::try_join!(
            self.source.query_one(&s, &bounds),
            self.target.query_one(&t, &bounds),
        )?;
        Ok((a.get(0), b.get(0)))
    }

    async fn count_both(&self) -> anyhow::Result<()> {
        let (a, b) = self.counts().await?;
        if a - b != self.expected.len() as i64 {
            bail!(
                "count(*) difference {} but {} ids missing",
                a - b,
                self.expected.len()
            );
        }
        Ok(())
    }

    /// The usual method: every source id out with COPY, into a temporary target table with
    /// COPY, then a LEFT JOIN against the target.
    async fn dump_and_join(&self) -> anyhow::Result<(BTreeSet<i64>, u64)> {
        self.target
            .batch_execute("CREATE TEMPORARY TABLE bench_source_ids (id bigint)")
            .await?;
        let out = self
            .source
            .copy_out(&format!(
                "COPY (SELECT id FROM {} WHERE id >= {} AND id <= {}) TO STDOUT",
                self.source_table, self.range.lo, self.range.hi
            ))
            .await?;
        let sink = self
            .target
            .copy_in("COPY bench_source_ids (id) FROM STDIN")
            .await?;
        futures::pin_mut!(out);
        futures::pin_mut!(sink);
        while let Some(chunk) = out.next().await {
            // `feed` leaves batching to the sink (it sends in 4 KiB messages) instead of
            // flushing every row.
            sink.feed(chunk?).await?;
        }
        let loaded = sink.as_mut().finish().await?;
        let rows = self
            .target
            .query(
                &format!(
                    "SELECT s.id FROM bench_source_ids s LEFT JOIN {} t ON t.id = s.id \
                     WHERE t.id IS NULL",
                    self.target_table
                ),
                &[],
            )
            .await?;
        self.target
            .batch_execute("DROP TABLE bench_source_ids")
            .await?;
        let missing: BTreeSet<i64> = rows.iter().map(|r| r.get(0)).collect();
        // Each id crosses twice (out of the source, into the target), plus the answer.
        Ok((missing, 2 * loaded + rows.len() as u64))
    }

    async fn reladiff(&self, reladiff: &str) -> anyhow::Result<(BTreeSet<i64>, BTreeSet<i64>)> {
        let url = |db: &str| {
            format!(
                "postgresql://{}@{}:{}/{db}",
                self.env.pg_user, self.env.pg_host, self.env.pg_port
            )
        };
        let output = tokio::process::Command::new(reladiff)
            .arg(url(self.src_db))
            .arg(self.source_table)
            .arg(url(self.tgt_db))
            .arg(self.target_table)
            .args(["-k", "id", "--json"])
            // The password goes through the environment, never the command line.
            .env("PGPASSWORD", &self.env.pg_password)
            .output()
            .await
            .with_context(|| format!("running {reladiff}"))?;
        if !output.status.success() {
            bail!(
                "reladiff failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let (mut missing, mut extra) = (BTreeSet::new(), BTreeSet::new());
        for line in String::from_utf8(output.stdout)?.lines() {
            // JSONL: ["-", ["<id>"]] only in the first table, ["+", ["<id>"]] only in the second.
            let value: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("reladiff line `{line}`"))?;
            let sign = value[0].as_str().unwrap_or_default();
            let id: i64 = value[1][0]
                .as_str()
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("reladiff line `{line}`"))?;
            match sign {
                "-" => missing.insert(id),
                "+" => extra.insert(id),
                other => bail!("reladiff sign `{other}` in `{line}`"),
            };
        }
        Ok((missing, extra))
    }
}

type Row = (i64, f64, usize, Vec<Measurement>);

#[path = "bench_gaps/content.rs"]
mod content;

/// The words of one benchmark's table: what the target's chosen rows are, and our method.
struct Labels {
    what: &'static str,
    ours: &'static str,
}

fn print_table(labels: &Labels, rows: &[Row]) {
    let Labels { what, ours } = labels;
    println!(
        "| method | rows | {what} | {what} rows | seconds | x {ours} | rows moved | exact | note |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|---|");
    for (size, pct, chosen, ms) in rows {
        let ours = ms[0].seconds;
        for m in ms {
            println!(
                "| {} | {size} | {pct}% | {chosen} | {:.3} | {:.2} | {} | {} | {} |",
                m.method,
                m.seconds,
                m.seconds / ours,
                m.rows_moved.map_or("n/a".to_owned(), |r| r.to_string()),
                if m.exact { "yes" } else { "NO" },
                m.note
            );
        }
    }
}

/// The case the bars are judged on: the largest table with the smallest fraction. Prints the
/// bars' heading; returns the case's measurements.
fn bars_case<'r>(labels: &Labels, rows: &'r [Row]) -> Option<&'r [Measurement]> {
    let (size, pct, _, ms) = rows
        .iter()
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)))?;
    println!();
    println!(
        "Bars on {size} rows, {pct}% {} ({} {:.3} s):",
        labels.what, labels.ours, ms[0].seconds
    );
    Some(ms)
}

/// The seconds of `method` in a case, if it was measured.
fn seconds(ms: &[Measurement], method: &str) -> Option<f64> {
    ms.iter().find(|m| m.method == method).map(|m| m.seconds)
}

/// docs/architecture.md, on the largest table with the smallest missing fraction.
fn check_bars(labels: &Labels, rows: &[Row]) {
    let Some(ms) = bars_case(labels, rows) else {
        return;
    };
    let time = |name: &str| seconds(ms, name);
    let ours = ms[0].seconds;
    let bar = |what: &str, ok: Option<bool>| {
        let verdict = match ok {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        };
        println!("- {what}: {verdict}");
    };
    bar(
        "at least 5x faster than dump-and-join",
        time("dump-and-join").map(|d| d >= 5.0 * ours),
    );
    bar("faster than reladiff", time("reladiff").map(|r| r > ours));
    bar(
        "at most 1.5x count(*) on both sides",
        time("count(*) both").map(|c| ours <= 1.5 * c),
    );
    bar("every method exact", Some(ms.iter().all(|m| m.exact)));
}
