//! The gap finder against real PostgreSQL: random tables with random gaps return exactly the
//! missing and extra ids; day ranges; the `gaps` command of the remediator.

use std::collections::BTreeSet;

use chrono::NaiveDate;
use dmsguard_lab::harness::TestDatabases;
use dmsguard_pipeline::config::{Config, QualifiedName};
use dmsguard_pipeline::gap_finder::{
    id_range_for_day, id_range_of_tables, FingerprintQuery, GapError, GapFinder, GapFinderOptions,
    IdRange, TableSpec,
};
use tokio_postgres::Client;

/// The gap finder's connections: the exporter's least-privilege user of `docs/grants.md`,
/// never the superuser that builds the tables.
async fn as_exporter(dbs: &TestDatabases) -> anyhow::Result<(Client, Client)> {
    Ok((
        dmsguard_pipeline::db::connect(&dbs.exporter_source()).await?,
        dmsguard_pipeline::db::connect(&dbs.exporter_redshift()).await?,
    ))
}

fn spec() -> TableSpec {
    TableSpec {
        source: QualifiedName::parse("public.orders").unwrap(),
        target: QualifiedName::parse("public.orders").unwrap(),
        id_column: "id".to_owned(),
    }
}

/// A small deterministic generator, so a failure names its seed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

async fn create_tables(source: &Client, target: &Client) -> anyhow::Result<()> {
    source
        .batch_execute(
            "CREATE TABLE public.orders (id bigint PRIMARY KEY, status varchar(20), created_at timestamptz)",
        )
        .await?;
    // As DMS creates it in Redshift: same key, other columns as varchar.
    target
        .batch_execute(
            "CREATE TABLE public.orders (id bigint PRIMARY KEY, status varchar(20), created_at varchar(40))",
        )
        .await?;
    Ok(())
}

async fn fill(client: &Client, ids: &BTreeSet<i64>) -> anyhow::Result<()> {
    let ids: Vec<i64> = ids.iter().copied().collect();
    client.batch_execute("TRUNCATE public.orders").await?;
    client
        .execute(
            "INSERT INTO public.orders (id, status) SELECT unnest($1::bigint[]), 'new'",
            &[&ids],
        )
        .await?;
    client.batch_execute("ANALYZE public.orders").await?;
    Ok(())
}

fn difference(a: &BTreeSet<i64>, b: &BTreeSet<i64>, range: IdRange) -> Vec<i64> {
    a.difference(b)
        .copied()
        .filter(|&id| range.contains(id))
        .collect()
}

/// Options that force several rounds, narrow buckets and many small queries.
fn deep_options() -> GapFinderOptions {
    GapFinderOptions {
        max_buckets_per_query: 64,
        min_first_width: 16,
        fanout: 4,
        list_threshold: 3,
        max_ranges_per_query: 7,
        max_span_per_query: 1 << 12,
        max_list_span_per_query: 64,
        ..GapFinderOptions::default()
    }
}

/// `options` with each pair of fingerprint queries: what the lab detects (PostgreSQL on both
/// sides: per bucket), Redshift's grouped query on both, and production's mix (PostgreSQL
/// source, Redshift target), which only works if both shapes give the same fingerprints.
fn with_each_fingerprint_query(options: GapFinderOptions) -> [GapFinderOptions; 3] {
    use FingerprintQuery::{Detect, Grouped, PerBucket};
    [(Detect, Detect), (Grouped, Grouped), (PerBucket, Grouped)].map(|(source, target)| {
        GapFinderOptions {
            source_query: source,
            target_query: target,
            ..options
        }
    })
}

#[tokio::test]
async fn random_tables_give_exactly_the_missing_and_extra_ids() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("gaps_random").await?;
    let (source, target) = (dbs.source_client().await?, dbs.redshift_client().await?);
    let (finder_source, finder_target) = as_exporter(&dbs).await?;
    create_tables(&source, &target).await?;
    for seed in 1..=12u64 {
        let mut rng = Lcg(seed);
        let base = [1i64, -5_000, 10_000_000_000, i64::MAX - 20_000][seed as usize % 4];
        let len = 1_000 + rng.below(15_000) as i64;
        let (hole, missing, extra) = (rng.below(30), rng.below(5) + (seed % 3) * 10, rng.below(5));
        let (mut src, mut tgt) = (BTreeSet::new(), BTreeSet::new());
        for id in base..base + len {
            if rng.below(100) < hole {
                if rng.below(100) < extra {
                    tgt.insert(id); // deleted at the source, still in the target
                }
                continue;
            }
            src.insert(id);
            if rng.below(1_000) >= missing {
                tgt.insert(id);
            }
        }
        // First and last ids of the table missing in the target.
        if seed % 2 == 0 {
            for id in [src.first().copied(), src.last().copied()]
                .into_iter()
                .flatten()
            {
                tgt.remove(&id);
            }
        }
        fill(&source, &src).await?;
        fill(&target, &tgt).await?;
        let ranges = [
            IdRange::new(base, base + len - 1)?,
            IdRange::new(base + len / 3, base + len / 2)?,
            IdRange::new(base - 100, base + len + 100)?,
        ];
        for range in ranges {
            for options in [GapFinderOptions::default(), deep_options()]
                .into_iter()
                .flat_map(with_each_fingerprint_query)
            {
                let report = GapFinder::new(options)?
                    .find(&finder_source, &finder_target, &spec(), range)
                    .await?;
                assert_eq!(
                    report.missing,
                    difference(&src, &tgt, range),
                    "seed {seed} range {range} {options:?}"
                );
                assert_eq!(
                    report.extra,
                    difference(&tgt, &src, range),
                    "seed {seed} range {range} {options:?}"
                );
                if options == GapFinderOptions::default() {
                    // The source is PostgreSQL with at least 70% of the ids present (at least 44
                    // in a first-round bucket of 64; the deep options' buckets of 16 are too
                    // narrow for the per-bucket query); the stand-in's `version()` says
                    // Redshift, so the target takes Redshift's grouped query.
                    assert_eq!(
                        (report.stats.source_query, report.stats.target_query),
                        (FingerprintQuery::PerBucket, FingerprintQuery::Grouped),
                        "seed {seed} range {range}"
                    );
                }
            }
        }
    }
    dbs.drop().await
}

#[tokio::test]
async fn empty_ranges_all_missing_and_only_extra() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("gaps_edges").await?;
    let (source, target) = (dbs.source_client().await?, dbs.redshift_client().await?);
    let (finder_source, finder_target) = as_exporter(&dbs).await?;
    create_tables(&source, &target).await?;
    let finder = GapFinder::new(deep_options())?;
    let all: BTreeSet<i64> = (1..=5_000).collect();

    // Both sides empty, and a range past the data.
    fill(&source, &BTreeSet::new()).await?;
    let report = finder
        .find(
            &finder_source,
            &finder_target,
            &spec(),
            IdRange::new(1, 1_000_000)?,
        )
        .await?;
    assert!(report.missing.is_empty() && report.extra.is_empty());
    fill(&source, &all).await?;
    fill(&target, &all).await?;
    let report = finder
        .find(
            &finder_source,
            &finder_target,
            &spec(),
            IdRange::new(6_000, 9_000)?,
        )
        .await?;
    assert!(report.missing.is_empty() && report.extra.is_empty());
    assert_eq!(report.stats.rows_transferred, 0);

    // Every id missing.
    fill(&target, &BTreeSet::new()).await?;
    let range = IdRange::new(1, 5_000)?;
    let report = finder
        .find(&finder_source, &finder_target, &spec(), range)
        .await?;
    assert_eq!(report.missing, all.iter().copied().collect::<Vec<_>>());
    assert!(report.extra.is_empty());

    // Every id extra (deleted at the source).
    fill(&source, &BTreeSet::new()).await?;
    fill(&target, &all).await?;
    let report = finder
        .find(&finder_source, &finder_target, &spec(), range)
        .await?;
    assert!(report.missing.is_empty());
    assert_eq!(report.extra.len(), 5_000);

    // Identical tables: one round, a handful of rows per bucket side.
    fill(&source, &all).await?;
    let report = GapFinder::default()
        .find(&finder_source, &finder_target, &spec(), range)
        .await?;
    assert!(report.missing.is_empty() && report.extra.is_empty());
    assert_eq!(report.stats.rounds, 1);
    dbs.drop().await
}

#[tokio::test]
async fn cost_follows_missing_rows_not_table_size() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("gaps_cost").await?;
    let (source, target) = (dbs.source_client().await?, dbs.redshift_client().await?);
    let (finder_source, finder_target) = as_exporter(&dbs).await?;
    for client in [&source, &target] {
        client
            .batch_execute(
                "CREATE TABLE public.orders (id bigint PRIMARY KEY);
                 INSERT INTO public.orders SELECT generate_series(1, 200000);",
            )
            .await?;
    }
    let lost = [1i64, 777, 50_001, 123_456, 200_000];
    for id in lost {
        target
            .execute("DELETE FROM public.orders WHERE id = $1", &[&id])
            .await?;
    }
    let report = GapFinder::default()
        .find(
            &finder_source,
            &finder_target,
            &spec(),
            IdRange::new(1, 200_000)?,
        )
        .await?;
    assert_eq!(report.missing, lost);
    // First round: 200000 / 64 buckets per side; then each missing id's bucket as two
    // bitmap words per side.
    assert!(
        report.stats.rows_transferred <= 2 * 3_125 + 5 * 4,
        "{:?}",
        report.stats
    );
    assert_eq!(report.stats.rounds, 2, "{:?}", report.stats);
    dbs.drop().await
}

#[tokio::test]
async fn duplicated_target_ids_read_as_present_and_wide_id_spreads_work() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("gaps_dups").await?;
    let (source, target) = (dbs.source_client().await?, dbs.redshift_client().await?);
    let (finder_source, finder_target) = as_exporter(&dbs).await?;
    source
        .batch_execute("CREATE TABLE public.orders (id bigint PRIMARY KEY)")
        .await?;
    // Redshift does not enforce keys: DMS can leave an id twice in the target.
    target
        .batch_execute("CREATE TABLE public.orders (id bigint NOT NULL)")
        .await?;
    // Ids spread over more than 2^31, so one query's ranges lie far apart.
    let mut ids: BTreeSet<i64> = (1..=3_000).collect();
    ids.extend((1..=3_000).map(|i| 5_000_000_000 + i));
    source
        .execute(
            "INSERT INTO public.orders (id) SELECT unnest($1::bigint[])",
            &[&ids.iter().copied().collect::<Vec<_>>()],
        )
        .await?;
    let lost = [17i64, 2_999, 5_000_000_100, 5_000_002_000];
    let mut tgt: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| !lost.contains(id))
        .collect();
    // Duplicates, one in the same bucket as a lost id (equal count there).
    tgt.extend([18, 5_000_000_101, 1_000]);
    target
        .execute(
            "INSERT INTO public.orders (id) SELECT unnest($1::bigint[])",
            &[&tgt],
        )
        .await?;
    for client in [&source, &target] {
        client.batch_execute("ANALYZE public.orders").await?;
    }
    // Later rounds batch differing buckets from both ends of the table into one query; a
    // fanout of 2 splits them (grouped queries) before reading bitmaps.
    let splitting = GapFinderOptions {
        fanout: 2,
        list_threshold: 0,
        ..GapFinderOptions::default()
    };
    // Ids this sparse would cost an index probe per empty bucket: detection groups instead.
    // (The per-bucket query is checked on dense tables above.)
    let grouped = |options| GapFinderOptions {
        target_query: FingerprintQuery::Grouped,
        ..options
    };
    for options in [GapFinderOptions::default(), splitting, grouped(splitting)] {
        let report = GapFinder::new(options)?
            .find(
                &finder_source,
                &finder_target,
                &spec(),
                IdRange::new(1, 5_000_003_000)?,
            )
            .await?;
        assert_eq!(report.missing, lost, "{options:?}");
        assert_eq!(report.stats.source_query, FingerprintQuery::Grouped);
        assert!(report.extra.is_empty(), "{options:?}");
        assert!(report.stats.rounds >= 2, "{options:?}");
    }
    dbs.drop().await
}

#[tokio::test]
async fn day_ranges_follow_the_day_column_type() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("gaps_day").await?;
    let source = dbs.source_client().await?;
    source
        .batch_execute(
            "SET TIME ZONE 'America/New_York';
             CREATE TABLE public.orders (id bigint PRIMARY KEY, created_at timestamptz,
                                         created_local timestamp, created_day date, note text);
             INSERT INTO public.orders
               SELECT g, timestamptz '2026-11-23 00:00:00+00' + (g - 1) * interval '1 hour',
                      timestamp '2026-11-23 00:00:00' + (g - 1) * interval '1 hour',
                      date '2026-11-23' + ((g - 1) / 24), 'x'
               FROM generate_series(1, 72) g;",
        )
        .await?;
    // The exporter's user in the same session time zone as the rows were written in.
    let finder_source = dmsguard_pipeline::db::connect(&dbs.exporter_source()).await?;
    finder_source
        .batch_execute("SET TIME ZONE 'America/New_York'")
        .await?;
    let day = NaiveDate::from_ymd_opt(2026, 11, 24).unwrap();
    for column in ["created_at", "created_local", "created_day"] {
        let range = id_range_for_day(&finder_source, &spec(), column, day).await?;
        assert_eq!(range, Some(IdRange::new(25, 48)?), "{column}");
    }
    let empty = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
    assert_eq!(
        id_range_for_day(&finder_source, &spec(), "created_at", empty).await?,
        None
    );
    let err = id_range_for_day(&finder_source, &spec(), "note", day)
        .await
        .unwrap_err();
    assert!(
        matches!(err, GapError::UnsupportedDayColumn { .. }),
        "{err}"
    );
    assert!(id_range_for_day(&finder_source, &spec(), "x; drop", day)
        .await
        .is_err());
    dbs.drop().await
}

#[tokio::test]
async fn gaps_command_prints_missing_and_extra_ids() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("gaps_cli").await?;
    let (source, target) = (dbs.source_client().await?, dbs.redshift_client().await?);
    let (finder_source, finder_target) = as_exporter(&dbs).await?;
    create_tables(&source, &target).await?;
    source
        .batch_execute(
            "INSERT INTO public.orders
               SELECT g, 'new', timestamptz '2026-11-24 00:00:00+00' + g * interval '1 minute'
               FROM generate_series(1, 3000) g;",
        )
        .await?;
    target
        .batch_execute(
            "INSERT INTO public.orders (id, status)
               SELECT g, 'new' FROM generate_series(1, 3000) g WHERE g NOT IN (1, 1500, 3000);
             INSERT INTO public.orders (id, status) VALUES (3001, 'gone');",
        )
        .await?;
    assert_eq!(
        id_range_of_tables(&finder_source, &finder_target, &spec()).await?,
        Some(IdRange::new(1, 3001)?)
    );
    let text = format!(
        r#"
        [source]
        url = "{}"
        password = "${{PW}}"
        [redshift]
        url = "{}"
        password = "${{PW}}"
        [[tables]]
        source = "public.orders"
        day_column = "created_at"
        "#,
        // The remediator's least-privilege user of docs/grants.md, never a superuser.
        dbs.remediator_source().url,
        dbs.remediator_redshift().url
    );
    let password = dbs.env.pg_password.clone();
    let config = Config::from_toml(&text, &|_| Some(password.clone()))?;
    let run = |args: &[&str]| {
        let mut argv = vec!["dmsguard-remediator", "gaps"];
        argv.extend_from_slice(args);
        let cli = <dmsguard_remediator::cli::Cli as clap::Parser>::try_parse_from(argv).unwrap();
        let Some(dmsguard_remediator::cli::Command::Gaps(gaps)) = cli.command else {
            panic!("not the gaps command");
        };
        gaps
    };
    let mut out = Vec::new();
    let args = run(&["--table", "public.orders", "--from", "1", "--to", "3000"]);
    dmsguard_remediator::commands::gaps::run(&config, &args, &mut out).await?;
    let out = String::from_utf8(out)?;
    let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines,
        ["missing\t1", "missing\t1500", "missing\t3000"],
        "{out}"
    );

    // Whole tables: the extra id too.
    let mut out = Vec::new();
    let args = run(&["--table", "public.orders"]);
    let report = dmsguard_remediator::commands::gaps::run(&config, &args, &mut out).await?;
    assert_eq!(report.missing, [1, 1500, 3000]);
    assert_eq!(report.extra, [3001]);
    assert!(String::from_utf8(out)?.contains("extra\t3001"));

    // One UTC day: created_at = 2026-11-24 00:00 + g minutes, so ids 1..=1439 fall on the 24th.
    let mut out = Vec::new();
    let args = run(&["--table", "public.orders", "--day", "2026-11-24"]);
    let report = dmsguard_remediator::commands::gaps::run(&config, &args, &mut out).await?;
    assert_eq!(report.missing, [1]);

    // A table that is not configured is a clear error.
    let args = run(&["--table", "public.nope"]);
    let err = dmsguard_remediator::commands::gaps::run(&config, &args, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("public.nope"), "{err}");
    let parse = <dmsguard_remediator::cli::Cli as clap::Parser>::try_parse_from([
        "dmsguard-remediator",
        "gaps",
        "--table",
        "t",
        "--from",
        "1",
        "--day",
        "2026-11-24",
    ]);
    assert!(parse.is_err());
    dbs.drop().await
}

/// The exporter's documented grants are each needed by the gap finder: without SELECT on the
/// target table, or on the source table, it fails with the server's own message and SQLSTATE
/// (never an empty report); with exactly `docs/grants.md`'s grants it finds the gap.
#[tokio::test]
async fn the_gap_finder_names_a_missing_select_grant_on_either_side() -> anyhow::Result<()> {
    use dmsguard_lab::harness::EXPORTER_USER;
    let dbs = TestDatabases::create("gaps_grants").await?;
    let (source, target) = (dbs.source_client().await?, dbs.redshift_client().await?);
    let (finder_source, finder_target) = as_exporter(&dbs).await?;
    create_tables(&source, &target).await?;
    fill(&source, &(1..=100).collect()).await?;
    fill(&target, &(1..=100).filter(|id| *id != 42).collect()).await?;
    let range = IdRange::new(1, 100)?;
    let find = || async {
        GapFinder::default()
            .find(&finder_source, &finder_target, &spec(), range)
            .await
    };
    let denied = "permission denied for table orders (SQLSTATE 42501)";
    for (side, client) in [("target", &target), ("source", &source)] {
        client
            .batch_execute(&format!(
                "REVOKE SELECT ON public.orders FROM {EXPORTER_USER}"
            ))
            .await?;
        let err = find().await.expect_err(side);
        let chain = dmsguard_pipeline::report::error_chain(&err);
        assert!(chain.contains(denied), "no SELECT on the {side}: {chain}");
        client
            .batch_execute(&format!("GRANT SELECT ON public.orders TO {EXPORTER_USER}"))
            .await?;
    }
    let report = find().await?;
    assert_eq!(report.missing, [42]);
    assert!(report.extra.is_empty());
    drop((source, target, finder_source, finder_target));
    dbs.drop().await
}
