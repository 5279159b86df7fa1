//! `bench-gaps --content`: the content comparison against reladiff's content diff, a row-by-row
//! comparison in the client, and `count(*)` on both sides, on tables where a fraction of the
//! target's rows hold old values (missed UPDATEs).

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::{bail, Context};
use dmsguard_pipeline::config::QualifiedName;
use dmsguard_pipeline::content::{ContentComparer, ContentOptions, ContentReport};
use dmsguard_pipeline::gap_finder::TableSpec;
use futures::{Stream, StreamExt};
use tokio_postgres::Client;

use super::{
    bars_case, load_average, median, print_table, seconds, Args, Case, Conns, LabEnv, Labels,
    Measurement, Row, Suite,
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
    let conns = Conns::open(env, src_db, tgt_db).await?;
    let suite = Suite {
        labels: Labels {
            what: "stale",
            ours: "content comparison",
        },
        source_table: |size| format!("cs_{size}"),
        target_table: |size, m| format!("ct_{size}_{m}"),
        chosen: is_stale,
    };
    let rows = suite
        .run(args, &args.stale, &conns, build, async |case: Case<'_>| {
            case.count_equal().await?;
            case.measure_content(args).await
        })
        .await?;
    print_table(&suite.labels, &rows);
    check_bars(&suite.labels, &rows);
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

impl Case<'_> {
    async fn measure_content(&self, args: &Args) -> anyhow::Result<Vec<Measurement>> {
        use super::Method;
        let timed = |m: Method| args.methods.contains(&m);
        let (mut ours, mut by_row, mut count) = (Vec::new(), Vec::new(), Vec::new());
        let mut md5_floor = Vec::new();
        let (mut ours_exact, mut by_row_exact) = (true, true);
        let (mut ours_rows, mut by_row_rows) = (0, 0);
        let mut note = String::new();
        for _ in 0..args.repeat.max(1) {
            if timed(Method::Count) {
                let t = Instant::now();
                self.count_equal().await?;
                count.push(t.elapsed().as_secs_f64());
                let t = Instant::now();
                self.md5_text_both().await?;
                md5_floor.push(t.elapsed().as_secs_f64());
            }
            let t = Instant::now();
            let report = self.compare_content().await?;
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
                let stale = self.reladiff_content(reladiff).await?;
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
            let (count, md5_floor) = (median(count), median(md5_floor));
            out.push(Measurement {
                method: "count(*) both",
                seconds: count,
                rows_moved: Some(2),
                exact: true,
                note: "floor: one scan per side, both sides concurrently".to_owned(),
            });
            out.push(Measurement {
                method: "MD5 of the text columns",
                seconds: md5_floor,
                rows_moved: Some(2),
                exact: true,
                note: format!(
                    "floor of any comparison hashing text with MD5 (the one hash both engines have): one MD5 per row of the text columns alone, summed; {:.1}x count(*)",
                    md5_floor / count
                ),
            });
        }
        Ok(out)
    }

    async fn compare_content(&self) -> anyhow::Result<ContentReport> {
        let spec = TableSpec {
            source: QualifiedName::parse(&format!("public.{}", self.source_table)).unwrap(),
            target: QualifiedName::parse(&format!("public.{}", self.target_table)).unwrap(),
            id_column: "id".to_owned(),
        };
        let comparer = ContentComparer::load(
            self.exporter_source,
            self.exporter_target,
            &spec,
            ContentOptions::default(),
        )
        .await?;
        Ok(comparer
            .compare(self.exporter_source, self.exporter_target, self.range)
            .await?)
    }

    /// One scan per side, both concurrently, hashing each row's text columns with MD5 as the
    /// comparison does (32-bit prefix read as an integer) and summing: the least any comparison
    /// of these columns pays when text is hashed with MD5.
    async fn md5_text_both(&self) -> anyhow::Result<()> {
        let sql = |t: &str| {
            format!(
                "SELECT sum(CAST(CAST('x' || SUBSTR(MD5(COALESCE(status, '') || '|' || COALESCE(note, '')), 1, 8) AS BIT(32)) AS BIGINT)) \
                 FROM {t} WHERE id >= $1 AND id <= $2"
            )
        };
        let bounds: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
            [&self.range.lo, &self.range.hi];
        let (s, t) = (sql(self.source_table), sql(self.target_table));
        tokio::try_join!(
            self.source.query_one(&s, &bounds),
            self.target.query_one(&t, &bounds),
        )?;
        Ok(())
    }

    /// `count(*)` on both sides, which hold the same ids.
    async fn count_equal(&self) -> anyhow::Result<()> {
        let (a, b) = self.counts().await?;
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
    async fn reladiff_content(&self, reladiff: &str) -> anyhow::Result<BTreeSet<i64>> {
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

/// The bars, on the largest table with the smallest stale fraction.
fn check_bars(labels: &Labels, rows: &[Row]) {
    let Some(ms) = bars_case(labels, rows) else {
        return;
    };
    let time = |name: &str| seconds(ms, name);
    let ours = ms[0].seconds;
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
