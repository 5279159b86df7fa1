//! The content comparison against real PostgreSQL: a source table of every awkward type, its
//! target written as DMS writes it (through the type translator, into DMS's types), random
//! missed UPDATEs, DELETEs and INSERTs; exactly the edited ids are reported, as the exporter's
//! least-privilege user. `DMSGUARD_CONTENT_CASES=N` runs N random cases after the fixed seeds.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use dmsguard_lab::harness::TestDatabases;
use dmsguard_pipeline::catalogue::Catalogue;
use dmsguard_pipeline::config::QualifiedName;
use dmsguard_pipeline::content::{
    ContentComparer, ContentError, ContentOptions, ContentReport, Exclusion,
};
use dmsguard_pipeline::gap_finder::{
    FingerprintQuery, GapError, GapFinderOptions, IdRange, TableSpec,
};
use dmsguard_pipeline::type_translator::{fetch_source_rows, Translator};
use tokio_postgres::Client;

const SOURCE_DDL: &str = r#"
CREATE TYPE lab_kind AS ENUM ('retail', 'wholesale', 'internal');
CREATE TABLE public.items (
    id bigint PRIMARY KEY,
    flag boolean,
    amount numeric(12,2),
    qty integer,
    note text,
    tags text[],
    doc jsonb,
    at timestamptz,
    local_at timestamp,
    day date,
    ref uuid,
    kind lab_kind,
    code char(4),
    ratio double precision,
    blob bytea,
    updated_at timestamptz NOT NULL DEFAULT '2026-01-01 00:00:00+00'
);
"#;

/// As DMS creates the target in Redshift: booleans, json, arrays, uuids, enums and bytea as
/// varchar, `timestamptz` as a UTC `timestamp`.
const TARGET_DDL: &str = r#"
CREATE TABLE public.items (
    id bigint NOT NULL,
    flag varchar(5),
    amount numeric(12,2),
    qty integer,
    note varchar(65535),
    tags varchar(65535),
    doc varchar(65535),
    at timestamp,
    local_at timestamp,
    day date,
    ref varchar(36),
    kind varchar(65535),
    code varchar(4),
    ratio double precision,
    blob varchar(65535),
    updated_at timestamp
);
"#;

/// Rows `lo..=hi` with every awkward value: NULLs next to empty strings, the separator `|`, a
/// lone `N`, quotes, backslashes, newlines, multi-byte text, arrays with NULL and quoted
/// elements, nested JSON, microseconds, negative amounts.
fn insert_sql(lo: i64, hi: i64) -> String {
    format!(
        r#"INSERT INTO public.items (id, flag, amount, qty, note, tags, doc, at, local_at, day, ref, kind, code, ratio, blob)
SELECT g,
  CASE g % 3 WHEN 0 THEN NULL WHEN 1 THEN true ELSE false END,
  CASE WHEN g % 11 = 0 THEN NULL ELSE ((g * 7919) % 200000 - 100000) / 100.0 END,
  CASE WHEN g % 13 = 0 THEN NULL ELSE (g * 31) % 1000 - 500 END,
  CASE g % 8 WHEN 0 THEN NULL WHEN 1 THEN '' WHEN 2 THEN 'a|b' WHEN 3 THEN 'N'
    WHEN 4 THEN E'it''s \\ "quoted"\nnext line' WHEN 5 THEN 'héllo wörld ✓' WHEN 6 THEN '3:abc' ELSE 'note ' || g END,
  CASE g % 5 WHEN 0 THEN NULL WHEN 1 THEN ARRAY['x', 'y z', 'quote"d'] WHEN 2 THEN ARRAY[NULL, 'a'] WHEN 3 THEN '{{}}'::text[] ELSE ARRAY['t' || g] END,
  CASE g % 4 WHEN 0 THEN NULL WHEN 1 THEN '{{"b": [true, null], "a": 1}}'::jsonb WHEN 2 THEN '"just a string"'::jsonb ELSE jsonb_build_object('n', g, 'deep', jsonb_build_array(1, 2.5, 'x')) END,
  CASE WHEN g % 9 = 0 THEN NULL ELSE timestamptz '2024-02-29 23:59:59.123456+02' + (g % 100000) * interval '1 hour 1.000001 second' END,
  CASE WHEN g % 10 = 0 THEN NULL ELSE timestamp '2024-01-01 00:00:00' + (g % 100000) * interval '37 minutes 0.5 second' END,
  CASE WHEN g % 12 = 0 THEN NULL ELSE date '2024-03-01' + (g % 400)::int END,
  CASE WHEN g % 6 = 0 THEN NULL ELSE md5(g::text)::uuid END,
  CASE WHEN g % 7 = 0 THEN NULL ELSE (ARRAY['retail', 'wholesale', 'internal']::lab_kind[])[1 + g % 3] END,
  CASE WHEN g % 5 = 0 THEN NULL ELSE left('c' || g, 4) END,
  g / 3.0,
  CASE g % 4 WHEN 0 THEN NULL WHEN 1 THEN ''::bytea ELSE decode(lpad(to_hex(g), 8, '0'), 'hex') END
FROM generate_series({lo}, {hi}) AS g"#
    )
}

/// Missed UPDATEs: each changes one column to a value it did not hold (NULL and '' swap).
const UPDATES: [&str; 13] = [
    "flag = CASE WHEN flag IS NULL THEN true WHEN flag THEN false ELSE NULL END",
    "amount = COALESCE(amount + 0.01, 0)",
    "qty = COALESCE(qty + 1, 0)",
    "note = CASE WHEN note IS NULL THEN '' WHEN note = '' THEN NULL ELSE note || '|' END",
    "tags = CASE WHEN tags IS NULL THEN '{}'::text[] ELSE tags || 'z'::text END",
    "doc = CASE WHEN doc IS NULL THEN 'null'::jsonb ELSE jsonb_build_array(doc) END",
    "at = COALESCE(at + interval '1 microsecond', now())",
    "local_at = COALESCE(local_at - interval '1 microsecond', '2000-01-01')",
    "day = COALESCE(day + 1, '2000-01-01')",
    "ref = CASE WHEN ref IS NULL THEN md5('x')::uuid ELSE NULL END",
    "kind = CASE WHEN kind = 'retail' THEN 'internal'::lab_kind ELSE 'retail'::lab_kind END",
    "code = CASE WHEN code IS NULL THEN 'z' ELSE NULL END",
    "blob = CASE WHEN blob IS NULL THEN '\\x00'::bytea ELSE blob || '\\x00'::bytea END",
];

/// Edits of excluded columns (floating point), no-op updates and trailing blanks of a
/// `char(n)` (padding, not data): never reported.
const SILENT_UPDATES: [&str; 3] = [
    "ratio = ratio + 1",
    "note = note",
    "code = rtrim(code) || ' '",
];

struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n.max(1)
    }
}

fn spec() -> TableSpec {
    TableSpec {
        source: QualifiedName::parse("public.items").unwrap(),
        target: QualifiedName::parse("public.items").unwrap(),
        id_column: "id".to_owned(),
    }
}

/// Writes the source's rows `ids` into the target as DMS would: read from the source, through
/// the type translator, into DMS's column types.
async fn replicate(source: &Client, target: &Client, ids: &[i64]) -> anyhow::Result<()> {
    let table = QualifiedName::parse("public.items").unwrap();
    let s = Catalogue::load_source(source, &table).await?;
    let t = Catalogue::load(target, &table).await?;
    let translator = Translator::new(&s, &t, "id")?;
    for chunk in ids.chunks(2_000) {
        let rows = fetch_source_rows(source, &s, "id", chunk).await?;
        let (good, bad) = translator.translate_all(&rows);
        assert!(bad.is_empty(), "{bad:?}");
        for statement in translator.build_inserts(&good, 500) {
            statement.execute(target).await?;
        }
    }
    Ok(())
}

/// One case: a fresh table of `len` rows from `base`, replicated, then edited at the source
/// only (the changes DMS lost). Returns the expected report's ids.
struct Case {
    range: IdRange,
    divergent: Vec<i64>,
    extra: Vec<i64>,
    missing: Vec<i64>,
}

async fn build_case(source: &Client, target: &Client, seed: u64) -> anyhow::Result<Case> {
    let mut rng = Lcg(seed);
    let base = [1i64, -3_000, 5_000_000_000][seed as usize % 3];
    let len = 100 + rng.below(900) as i64;
    let (lo, hi) = (base, base + len - 1);
    source.batch_execute("TRUNCATE public.items").await?;
    target.batch_execute("TRUNCATE public.items").await?;
    source.batch_execute(&insert_sql(lo, hi)).await?;
    let all: Vec<i64> = (lo..=hi).collect();
    replicate(source, target, &all).await?;

    let mut divergent = BTreeSet::new();
    let mut extra = BTreeSet::new();
    let mut missing = BTreeSet::new();
    let edits = 1 + rng.below(if seed % 4 == 0 { 60 } else { 12 });
    let pick = |rng: &mut Lcg| match rng.below(8) {
        0 => lo,
        1 => hi,
        _ => lo + rng.below(len as u64) as i64,
    };
    for _ in 0..edits {
        let id = pick(&mut rng);
        if divergent.contains(&id) || extra.contains(&id) {
            continue;
        }
        match rng.below(5) {
            0 => {
                // A missed DELETE: the target keeps the row.
                source
                    .execute("DELETE FROM public.items WHERE id = $1", &[&id])
                    .await?;
                extra.insert(id);
            }
            1 => {
                let silent = SILENT_UPDATES[rng.below(SILENT_UPDATES.len() as u64) as usize];
                source
                    .execute(
                        &format!("UPDATE public.items SET {silent} WHERE id = $1"),
                        &[&id],
                    )
                    .await?;
            }
            _ => {
                // A missed UPDATE.
                let update = UPDATES[rng.below(UPDATES.len() as u64) as usize];
                source
                    .execute(
                        &format!("UPDATE public.items SET {update} WHERE id = $1"),
                        &[&id],
                    )
                    .await?;
                divergent.insert(id);
            }
        }
    }
    // Missed INSERTs, one past the last id and one inside a hole the deletes made.
    let new_id = hi + 1;
    source.batch_execute(&insert_sql(new_id, new_id)).await?;
    missing.insert(new_id);
    if let Some(&hole) = extra.iter().next() {
        // The row was deleted and inserted again with other values: divergent, not extra.
        source.batch_execute(&insert_sql(hole, hole)).await?;
        source
            .execute(
                "UPDATE public.items SET qty = -999999 WHERE id = $1",
                &[&hole],
            )
            .await?;
        extra.remove(&hole);
        divergent.insert(hole);
    }
    source.batch_execute("ANALYZE public.items").await?;
    target.batch_execute("ANALYZE public.items").await?;
    Ok(Case {
        range: IdRange::new(lo, new_id)?,
        divergent: divergent.into_iter().collect(),
        extra: extra.into_iter().collect(),
        missing: missing.into_iter().collect(),
    })
}

fn deep_walk() -> GapFinderOptions {
    GapFinderOptions {
        max_buckets_per_query: 32,
        min_first_width: 8,
        fanout: 4,
        list_threshold: 2,
        max_ranges_per_query: 5,
        max_span_per_query: 1 << 10,
        max_list_span_per_query: 64,
        ..GapFinderOptions::default()
    }
}

fn options(walk: GapFinderOptions, salt: u64) -> ContentOptions {
    ContentOptions {
        walk,
        salt: Some(salt),
        updated_at_column: Some("updated_at".to_owned()),
        exclude_columns: vec!["updated_at".to_owned()],
        ..ContentOptions::default()
    }
}

async fn as_exporter(dbs: &TestDatabases) -> anyhow::Result<(Client, Client)> {
    Ok((
        dmsguard_pipeline::db::connect(&dbs.exporter_source()).await?,
        dmsguard_pipeline::db::connect(&dbs.exporter_redshift()).await?,
    ))
}

fn check(case: &Case, report: &ContentReport, what: &str) {
    assert_eq!(report.divergent_ids, case.divergent, "divergent, {what}");
    assert_eq!(report.extra_ids, case.extra, "extra, {what}");
    assert_eq!(report.missing_ids, case.missing, "missing, {what}");
}

#[tokio::test]
async fn random_edits_give_exactly_the_edited_ids() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("content_random").await?;
    let (source, target) = (dbs.source_client().await?, dbs.redshift_client().await?);
    source.batch_execute(SOURCE_DDL).await?;
    target.batch_execute(TARGET_DDL).await?;
    let (cmp_source, cmp_target) = as_exporter(&dbs).await?;

    let extra_cases: u64 = std::env::var("DMSGUARD_CONTENT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let random_seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    let seeds: Vec<u64> = (1..=4)
        .chain((0..extra_cases).map(|i| random_seed.wrapping_add(i) | 1 << 40))
        .collect();
    for seed in seeds {
        let case = build_case(&source, &target, seed).await?;
        let mut rng = Lcg(seed ^ 0xabc);
        // What the lab detects (PostgreSQL per bucket against the stand-in's Redshift path),
        // grouped on both, and small buckets that force several rounds.
        for (i, walk) in [
            GapFinderOptions::default(),
            GapFinderOptions {
                source_query: FingerprintQuery::Grouped,
                ..deep_walk()
            },
            GapFinderOptions {
                source_query: FingerprintQuery::PerBucket,
                ..deep_walk()
            },
        ]
        .into_iter()
        .enumerate()
        {
            let salt = rng.below(u64::MAX);
            let comparer =
                ContentComparer::load(&cmp_source, &cmp_target, &spec(), options(walk, salt))
                    .await?;
            let report = comparer
                .compare(&cmp_source, &cmp_target, case.range)
                .await?;
            check(&case, &report, &format!("seed {seed}, walk {i}"));
            // The first round reads the whole range on both sides.
            assert!(report.stats.rows_scanned > (case.range.hi - case.range.lo) as u64);
        }
    }
    dbs.drop().await
}

#[tokio::test]
async fn excluded_columns_are_named_and_rechecks_and_frontiers_narrow_the_report(
) -> anyhow::Result<()> {
    let dbs = TestDatabases::create("content_frontier").await?;
    let (source, target) = (dbs.source_client().await?, dbs.redshift_client().await?);
    source.batch_execute(SOURCE_DDL).await?;
    target.batch_execute(TARGET_DDL).await?;
    let case = build_case(&source, &target, 4).await?;
    assert!(case.divergent.len() >= 2, "seed 4 edits several rows");
    let (cmp_source, cmp_target) = as_exporter(&dbs).await?;
    let comparer = ContentComparer::load(
        &cmp_source,
        &cmp_target,
        &spec(),
        options(GapFinderOptions::default(), 7),
    )
    .await?;
    let excluded: Vec<(String, String)> = comparer
        .excluded_columns()
        .iter()
        .map(|e| (e.column.clone(), e.reason.to_string()))
        .collect();
    assert_eq!(excluded.len(), 2, "{excluded:?}");
    assert_eq!(excluded[0].0, "ratio");
    assert!(excluded[0].1.contains("floating-point"), "{excluded:?}");
    assert_eq!(
        (
            excluded[1].0.as_str(),
            &comparer.excluded_columns()[1].reason
        ),
        ("updated_at", &Exclusion::Configured)
    );

    // A re-check of chosen ids (as a repair does first) sees the same differences there.
    let mut ids: Vec<i64> = case.divergent.iter().take(3).copied().collect();
    ids.extend(case.missing.iter().copied());
    let unchanged = (case.range.lo..case.range.hi)
        .find(|id| !case.divergent.contains(id) && !case.extra.contains(id))
        .unwrap();
    ids.push(unchanged);
    let recheck = comparer.compare_ids(&cmp_source, &cmp_target, &ids).await?;
    let want: Vec<i64> = case.divergent.iter().take(3).copied().collect();
    assert_eq!(recheck.divergent_ids, want);
    assert_eq!(recheck.missing_ids, case.missing);

    // Rows the source changed at or after the frontier are left out, whatever their state.
    let frontier: DateTime<Utc> = "2026-06-01T00:00:00Z".parse()?;
    let late = case.divergent[0];
    source
        .execute(
            "UPDATE public.items SET updated_at = $1 WHERE id = $2",
            &[&frontier, &late],
        )
        .await?;
    let report = comparer
        .compare_settled(&cmp_source, &cmp_target, case.range, frontier)
        .await?;
    assert_eq!(report.unsettled_ids, vec![late]);
    let settled: Vec<i64> = case.divergent[1..].to_vec();
    assert_eq!(report.divergent_ids, settled);
    assert_eq!(report.extra_ids, case.extra);

    // Without SELECT on the target, the comparison fails with the server's own reason.
    target
        .batch_execute("REVOKE SELECT ON public.items FROM dmsguard_exporter")
        .await?;
    let err = comparer
        .compare(&cmp_source, &cmp_target, case.range)
        .await
        .unwrap_err();
    let chain = dmsguard_pipeline::report::error_chain(&err);
    assert!(
        matches!(err, ContentError::Walk(GapError::Query { .. })) && chain.contains("42501"),
        "{chain}"
    );
    dbs.drop().await
}
