//! `bench-gaps --content`: the content comparison against reladiff's content diff, a row-by-row
//! comparison in the client, and `count(*)` on both sides, on tables where a fraction of the
//! target's rows hold old values (missed UPDATEs).

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::{bail, Context};
use dmsguard_pipeline::config::QualifiedName;
use dmsguard_pipeline::content::{ContentComparer, ContentOptions, ContentReport};
use dmsguard_pipeline::gap_finder::{IdRange, TableSpec};
use futures::{Stream, StreamExt};
use tokio_postgres::Client;

use super::{
    connect, connect_as_exporter, load_average, median, per_million, Args, LabEnv, Measurement,
};

/// Rows left stale in the target: a scattered, reproducible choice of `per_million` in a million.
fn is_stale(id: i64, per_million: i64) -> bool {
    (id * 40_503) % 1_000_000 < per_million
}

const STALE_SQL: &str = "(g * 40503) % 1000000 < ";
const COLUMNS: [&str; 5] = ["status", "amount", "qty", "note", "created_at"];

pub(super) async fn run(
    args: &Args,
    env: &LabEnv,
    src_db: &str,
    tgt_db: &str,
) -> anyhow::Result<()> {
    let source = connect(env, src_db).await?;
    let target = connect(env, tgt_db).await?;
    // The measured comparison connects as the exporter's user, never a superuser.
    let cmp_source = connect_as_exporter(env, src_db).await?;
    let cmp_target = connect_as_exporter(env, tgt_db).await?;
    let mut rows = Vec::new();
    for &size in &args.sizes {
        let started = Instant::now();
        let source_table = format!("cs_{size}");
        let targets: Vec<(f64, String)> = args
            .stale
            .iter()
            .map(|&pct| (pct, format!("ct_{size}_{}", per_million(pct))))
            .collect();
        tokio::try_join!(
            build(&source, &source_table, size, None, args.reuse),
            async {
                for (pct, name) in &targets {
                    build(&target, name, size, Some(per_million(*pct)), args.reuse).await?;
                }
                Ok(())
            }
        )?;
        eprintln!(
            "Built {size}-row content tables in {:.1} s.",
            started.elapsed().as_secs_f64()
        );
        for (pct, target_table) in &targets {
            let expected: BTreeSet<i64> = (1..=size)
                .filter(|&id| is_stale(id, per_million(*pct)))
                .collect();
            let case = Case {
                source: &source,
                target: &target,
                cmp_source: &cmp_source,
                cmp_target: &cmp_target,
                src_db,
                tgt_db,
                source_table: &source_table,
                target_table,
                range: IdRange::new(1, size)?,
                expected: &expected,
                env,
            };
            case.count_both().await?;
            let measurements = case.measure(args).await?;
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
    print_table(&rows);
    check_bars(&rows);
    println!("Load average after the content cases: {}", load_average());
    Ok(())
}

/// A table of `size` rows with text, numeric, integer and timestamp columns; with `stale`, the
/// chosen rows carry an older `amount` (and `status`), as a target that missed their UPDATE.
async fn build(
    client: &Client,
    name: &str,
    size: i64,
    stale: Option<i64>,
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
    let (amount, status) = match stale {
        Some(m) => (
            format!("CASE WHEN {STALE_SQL}{m} THEN (g % 100000) / 100.0 + 1 ELSE (g % 100000) / 100.0 END"),
            format!("CASE WHEN {STALE_SQL}{m} THEN 'new' ELSE (ARRAY['new', 'paid', 'shipped'])[1 + g % 3] END"),
        ),
        None => (
            "(g % 100000) / 100.0".to_owned(),
            "(ARRAY['new', 'paid', 'shipped'])[1 + g % 3]".to_owned(),
        ),
    };
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {name};
             CREATE TABLE {name} (id bigint NOT NULL, status varchar(20), amount numeric(12,2),
               qty integer, note varchar(200), created_at timestamp);
             INSERT INTO {name}
               SELECT g, {status}, {amount}, g % 1000, 'note ' || md5(g::text),
                 timestamp '2026-11-01 00:00:00' + g * interval '10 ms'
               FROM generate_series(CAST(1 AS BIGINT), {size}) g;
             ALTER TABLE {name} ADD PRIMARY KEY (id);"
        ))
        .await
        .with_context(|| format!("building {name}"))?;
    client
        .batch_execute(&format!("VACUUM ANALYZE {name}"))
        .await
        .with_context(|| format!("vacuuming {name}"))
}

struct Case<'a> {
    source: &'a Client,
    target: &'a Client,
    cmp_source: &'a Client,
    cmp_target: &'a Client,
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
        use super::Method;
        let timed = |m: Method| args.methods.contains(&m);
        let (mut ours, mut by_row, mut count) = (Vec::new(), Vec::new(), Vec::new());
        let (mut ours_exact, mut by_row_exact) = (true, true);
        let (mut ours_rows, mut by_row_rows) = (0, 0);
        let mut note = String::new();
        for _ in 0..args.repeat.max(1) {
            if timed(Method::Count) {
                let t = Instant::now();
                self.count_both().await?;
                count.push(t.elapsed().as_secs_f64());
            }
            let t = Instant::now();
            let report = self.compare().await?;
            ours.push(t.elapsed().as_secs_f64());
            ours_exact &= report
                .divergent_ids
                .iter()
                .copied()
                .eq(self.expected.iter().copied())
                && report.extra_ids.is_empty()
                && report.missing_ids.is_empty();
            ours_rows = report.stats.rows_transferred;
            note = format!(
                "{} queries, {} rounds, {} rows scanned, {} bytes received",
                report.stats.queries,
                report.stats.rounds,
                report.stats.rows_scanned,
                report.stats.bytes_transferred
            );
            if timed(Method::DumpAndJoin) {
                let t = Instant::now();
                let (stale, moved) = self.row_by_row().await?;
                by_row.push(t.elapsed().as_secs_f64());
                by_row_exact &= stale == *self.expected;
                by_row_rows = moved;
            }
        }
        let mut out = vec![Measurement {
            method: "content comparison",
            seconds: median(ours),
            rows_moved: Some(ours_rows),
            exact: ours_exact,
            note,
        }];
        if timed(Method::DumpAndJoin) {
            out.push(Measurement {
                method: "row by row in the client",
                seconds: median(by_row),
                rows_moved: Some(by_row_rows),
                exact: by_row_exact,
                note: "both sides' rows ordered by id (COPY out), compared in the client"
                    .to_owned(),
            });
        }
        match &args.reladiff {
            Some(reladiff) if timed(Method::Reladiff) => {
                let t = Instant::now();
                let stale = self.reladiff(reladiff).await?;
                out.push(Measurement {
                    method: "reladiff -c",
                    seconds: t.elapsed().as_secs_f64(),
                    rows_moved: None,
                    exact: stale == *self.expected,
                    note: "one run, default options, every column compared".to_owned(),
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

    async fn compare(&self) -> anyhow::Result<ContentReport> {
        let spec = TableSpec {
            source: QualifiedName::parse(&format!("public.{}", self.source_table)).unwrap(),
            target: QualifiedName::parse(&format!("public.{}", self.target_table)).unwrap(),
            id_column: "id".to_owned(),
        };
        let comparer = ContentComparer::load(
            self.cmp_source,
            self.cmp_target,
            &spec,
            ContentOptions::default(),
        )
        .await?;
        Ok(comparer
            .compare(self.cmp_source, self.cmp_target, self.range)
            .await?)
    }

    async fn count_both(&self) -> anyhow::Result<()> {
        let sql = |t: &str| format!("SELECT count(*) FROM {t} WHERE id >= $1 AND id <= $2");
        let bounds: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
            [&self.range.lo, &self.range.hi];
        let (s, t) = (sql(self.source_table), sql(self.target_table));
        let (a, b) = tokio::try_join!(
            self.source.query_one(&s, &bounds),
            self.target.query_one(&t, &bounds),
        )?;
        let (a, b): (i64, i64) = (a.get(0), b.get(0));
        if a != b {
            bail!("count(*) {a} in the source, {b} in the target");
        }
        Ok(())
    }

    /// The obvious way: both sides' rows in id order, compared line by line in the client.
    async fn row_by_row(&self) -> anyhow::Result<(BTreeSet<i64>, u64)> {
        let copy = |t: &str| {
            format!(
                "COPY (SELECT id, {} FROM {t} WHERE id >= {} AND id <= {} ORDER BY id) TO STDOUT",
                COLUMNS.join(", "),
                self.range.lo,
                self.range.hi
            )
        };
        let (s, t) = (copy(self.source_table), copy(self.target_table));
        let (s, t) = tokio::try_join!(self.source.copy_out(&s), self.target.copy_out(&t))?;
        let mut s = Lines::new(Box::pin(s));
        let mut t = Lines::new(Box::pin(t));
        let mut stale = BTreeSet::new();
        let mut moved = 0u64;
        let (mut a, mut b) = (s.next().await?, t.next().await?);
        loop {
            match (&a, &b) {
                (None, None) => break,
                (Some(x), Some(y)) => {
                    moved += 2;
                    let (ix, iy) = (line_id(x)?, line_id(y)?);
                    if ix == iy {
                        if x != y {
                            stale.insert(ix);
                        }
                        a = s.next().await?;
                        b = t.next().await?;
                    } else if ix < iy {
                        stale.insert(ix);
                        a = s.next().await?;
                    } else {
                        stale.insert(iy);
                        b = t.next().await?;
                    }
                }
                (Some(x), None) => {
                    moved += 1;
                    stale.insert(line_id(x)?);
                    a = s.next().await?;
                }
                (None, Some(y)) => {
                    moved += 1;
                    stale.insert(line_id(y)?);
                    b = t.next().await?;
                }
            }
        }
        Ok((stale, moved))
    }

    /// reladiff's content diff: every column compared (`-c`), JSON lines parsed; an id on both
    /// sides of the diff is a stale row.
    async fn reladiff(&self, reladiff: &str) -> anyhow::Result<BTreeSet<i64>> {
        let url = |db: &str| {
            format!(
                "postgresql://{}@{}:{}/{db}",
                self.env.pg_user, self.env.pg_host, self.env.pg_port
            )
        };
        let mut command = tokio::process::Command::new(reladiff);
        command
            .arg(url(self.src_db))
            .arg(self.source_table)
            .arg(url(self.tgt_db))
            .arg(self.target_table)
            .args(["-k", "id", "--json"]);
        for c in COLUMNS {
            command.args(["-c", c]);
        }
        let output = command
            // The password goes through the environment, never the command line.
            .env("PGPASSWORD", &self.env.pg_password)
            // Its JSON goes through a console that wraps lines at the terminal's width.
            .env("COLUMNS", "1000000")
            .output()
            .await
            .with_context(|| format!("running {reladiff}"))?;
        if !output.status.success() {
            bail!(
                "reladiff failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let mut ids = BTreeSet::new();
        for line in String::from_utf8(output.stdout)?.lines() {
            let value: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("reladiff line `{line}`"))?;
            let id: i64 = value[1][0]
                .as_str()
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("reladiff line `{line}`"))?;
            ids.insert(id);
        }
        Ok(ids)
    }
}

fn line_id(line: &[u8]) -> anyhow::Result<i64> {
    let end = line.iter().position(|&b| b == b'\t').unwrap_or(line.len());
    Ok(std::str::from_utf8(&line[..end])?.parse()?)
}

/// Lines of a COPY text stream.
struct Lines<S> {
    stream: S,
    buffer: Vec<u8>,
    start: usize,
    done: bool,
}

impl<S, B, E> Lines<S>
where
    S: Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::error::Error + Send + Sync + 'static,
{
    fn new(stream: S) -> Self {
        Self {
            stream,
            buffer: Vec::new(),
            start: 0,
            done: false,
        }
    }

    async fn next(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        loop {
            if let Some(pos) = self.buffer[self.start..].iter().position(|&b| b == b'\n') {
                let line = self.buffer[self.start..self.start + pos].to_vec();
                self.start += pos + 1;
                return Ok(Some(line));
            }
            if self.done {
                return Ok(None);
            }
            self.buffer.drain(..self.start);
            self.start = 0;
            match self.stream.next().await {
                Some(chunk) => self.buffer.extend_from_slice(chunk?.as_ref()),
                None => self.done = true,
            }
        }
    }
}

type Row = (i64, f64, usize, Vec<Measurement>);

fn print_table(rows: &[Row]) {
    println!(
        "| method | rows | stale | stale rows | seconds | x content comparison | rows moved | exact | note |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|---|");
    for (size, pct, stale, ms) in rows {
        let ours = ms[0].seconds;
        for m in ms {
            println!(
                "| {} | {size} | {pct}% | {stale} | {:.3} | {:.2} | {} | {} | {} |",
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

/// The bars, on the largest table with the smallest stale fraction.
fn check_bars(rows: &[Row]) {
    let Some((size, pct, _, ms)) = rows
        .iter()
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)))
    else {
        return;
    };
    let time = |name: &str| ms.iter().find(|m| m.method == name).map(|m| m.seconds);
    let ours = ms[0].seconds;
    println!();
    println!("Bars on {size} rows, {pct}% stale (content comparison {ours:.3} s):");
    let bar = |what: &str, ok: Option<f64>, good: bool| {
        let verdict = match ok {
            Some(r) if good => format!("met ({r:.2}x)"),
            Some(r) => format!("NOT met ({r:.2}x)"),
            None => "not measured".to_owned(),
        };
        println!("- {what}: {verdict}");
    };
    let reladiff = time("reladiff -c").map(|r| r / ours);
    bar(
        "at least 10x faster than reladiff",
        reladiff,
        reladiff.is_some_and(|r| r >= 10.0),
    );
    let count = time("count(*) both").map(|c| ours / c);
    bar(
        "at most 3x count(*) on both sides",
        count,
        count.is_some_and(|r| r <= 3.0),
    );
    println!(
        "- every method exact: {}",
        if ms.iter().all(|m| m.exact) {
            "yes"
        } else {
            "NO"
        }
    );
}
