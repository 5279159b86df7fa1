//! The target DDL generator on the lab: DDL generated from a real source catalogue matches the
//! golden files, and with Redshift-only clauses left out it creates tables in the Redshift
//! stand-in into which the type translator inserts every source row.

use dmsguard_lab::harness::{apply_grants, TestDatabases};
use dmsguard_lab::simulator::DMS_ROLE;
use dmsguard_pipeline::catalogue::Catalogue;
use dmsguard_pipeline::config::QualifiedName;
use dmsguard_pipeline::ddl::{create_table, CompressionFile, DdlOptions};
use dmsguard_pipeline::statement_parser::is_valid_redshift_sql;
use dmsguard_pipeline::type_translator::{fetch_source_rows, TranslateError, Translator};
use tokio_postgres::Client;

const GOLDEN_REDSHIFT: &str = include_str!("../../pipeline/tests/golden/awkward.redshift.sql");
const GOLDEN_DMS: &str = include_str!("../../pipeline/tests/golden/awkward.dms.sql");
const GOLDEN_COMPRESSION: &str =
    include_str!("../../pipeline/tests/golden/awkward.compression.sql");
const COMPRESSION_CSV: &str = include_str!("../../pipeline/tests/golden/awkward.compression.csv");

/// Every type the lab uses, in the golden files' column order.
const SOURCE_DDL: &str = r#"
CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped');
CREATE TABLE public.awkward (
    id bigint PRIMARY KEY,
    flag boolean NOT NULL,
    doc jsonb,
    tags text[],
    ref uuid,
    at timestamptz,
    local_at timestamp,
    day date,
    amount numeric(12,2),
    ratio double precision,
    small smallint,
    note text,
    status order_status,
    maybe integer,
    "MixedCase" varchar(10),
    blob bytea,
    code char(3),
    huge_text varchar(20000),
    wide_number numeric(50,4),
    any_number numeric,
    opens time,
    took interval,
    score real,
    raw_json json
);
INSERT INTO public.awkward VALUES
 (1, true, '{"b": [true, null], "a": 1}', ARRAY['x', 'y z', 'quote"d'],
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29 23:59:59.123456+02', '2024-01-01 00:00:00',
  '2024-03-01', 1234567890.12, 0.1, -32768, 'héllo, wörld', 'paid', 42, 'ÄÖÜäöüßéèê', '\x00ff10',
  'ab', repeat('é', 20000), 12345678901234567890123456789012.1234, 3.14159,
  '23:59:59.5', '1 year 2 mons 3 days 04:05:06', 1.5, '{"k": [1, "v"]}'),
 (2, false, '[]', '{}', NULL, NULL, NULL, NULL, -0.5, 1e300, 32767, '', 'new', NULL, NULL, '',
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (3, true, NULL, ARRAY[NULL, 'a'], NULL, '1970-01-01 00:00:00+00', NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, -1.5, 0, NULL, NULL, NULL, '"s"');
"#;

async fn insert_all(
    source: &Client,
    target: &Client,
    table: &QualifiedName,
    target_name: &QualifiedName,
) -> anyhow::Result<(Vec<TranslateError>, u64, u64)> {
    let source_table = Catalogue::load_source(source, table).await?;
    let target_table = Catalogue::load(target, target_name).await?;
    let translator = Translator::new(&source_table, &target_table, "id")?;
    let rows = fetch_source_rows(source, &source_table, "id", &[1, 2, 3]).await?;
    let (good, bad) = translator.translate_all(&rows);
    let mut counts = (0, 0);
    for pass in [&mut counts.0, &mut counts.1] {
        for statement in translator.build_inserts(&good, 2) {
            is_valid_redshift_sql(&statement.sql).map_err(anyhow::Error::msg)?;
            *pass += statement.execute(target).await?;
        }
    }
    Ok((bad, counts.0, counts.1))
}

#[tokio::test]
async fn generated_ddl_creates_tables_the_translator_fills() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("target_ddl").await?;
    let source = dbs.source_client().await?;
    let target = dbs.redshift_client().await?;
    source.batch_execute(SOURCE_DDL).await?;
    let table = QualifiedName::parse("public.awkward").unwrap();
    let source_table = Catalogue::load_source(&source, &table).await?;

    // The real catalogue gives exactly what the golden files were made from.
    let generate = |options: &DdlOptions, target: &QualifiedName| {
        create_table(&source_table, target, "id", options).map(|d| d.sql)
    };
    assert_eq!(generate(&DdlOptions::default(), &table)?, GOLDEN_REDSHIFT);
    let dms = DdlOptions {
        dms_compatible: true,
        ..DdlOptions::default()
    };
    assert_eq!(generate(&dms, &table)?, GOLDEN_DMS);
    let compressed = DdlOptions {
        compression: Some(CompressionFile::parse(COMPRESSION_CSV)?),
        ..DdlOptions::default()
    };
    assert_eq!(generate(&compressed, &table)?, GOLDEN_COMPRESSION);

    // Recommended types in public, DMS-compatible types in schema dms.
    let recommended_target = table.clone();
    let dms_target = QualifiedName::parse("dms.awkward").unwrap();
    target.batch_execute("CREATE SCHEMA dms").await?;
    // The remediator inserts as its least-privilege user: docs/grants.md's Redshift block,
    // repeated for schema dms as the page says.
    let (pw, owner) = (dbs.env.pg_password.as_str(), dbs.env.pg_user.as_str());
    apply_grants(
        &target,
        &["redshift-remediator"],
        &[
            ("<password>", pw),
            ("<dms_user>", DMS_ROLE),
            ("<table_owner>", owner),
            ("SCHEMA public", "SCHEMA dms"),
        ],
    )
    .await?;
    let repair_source = dmsguard_pipeline::db::connect(&dbs.remediator_source()).await?;
    let repair_target = dmsguard_pipeline::db::connect(&dbs.remediator_redshift()).await?;
    let recommended = DdlOptions {
        postgres_check: true,
        ..DdlOptions::default()
    };
    target
        .batch_execute(&generate(&recommended, &recommended_target)?)
        .await?;
    let (bad, first, second) =
        insert_all(&repair_source, &repair_target, &table, &recommended_target).await?;
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!((first, second), (3, 0), "three rows, then none");

    // DMS keeps varchar(10) as VARCHAR(10) bytes: ten umlauts do not fit, and the row is
    // refused by name instead of truncated (the recommended mapping sizes it 4n).
    let dms_check = DdlOptions {
        postgres_check: true,
        ..dms
    };
    target
        .batch_execute(&generate(&dms_check, &dms_target)?)
        .await?;
    let (bad, first, second) =
        insert_all(&repair_source, &repair_target, &table, &dms_target).await?;
    assert_eq!(
        bad,
        vec![TranslateError::TooLong {
            table: "dms.awkward".to_owned(),
            column: "mixedcase".to_owned(),
            id: 1,
            bytes: 20,
            max: 10
        }]
    );
    assert_eq!((first, second), (2, 0), "two rows, then none");

    // Typed columns hold the source's values.
    let expected = source
        .query(
            "SELECT id, flag, doc, array_to_json(tags)::jsonb, ref::text, blob, \"MixedCase\", \
             huge_text, trim_scale(wide_number)::text, trim_scale(any_number)::text, opens::text, took::text, raw_json::jsonb, at \
             FROM public.awkward ORDER BY id",
            &[],
        )
        .await?;
    let actual = target
        .query(
            "SELECT id, flag, doc, tags, ref, blob, mixedcase, huge_text, trim_scale(wide_number)::text, \
             trim_scale(any_number)::text, opens::text, took, raw_json, at FROM public.awkward ORDER BY id",
            &[],
        )
        .await?;
    assert_eq!(expected.len(), 3);
    assert_eq!(actual.len(), 3);
    for (e, a) in expected.iter().zip(&actual) {
        let id: i64 = e.get(0);
        assert_eq!(id, a.get::<_, i64>(0));
        assert_eq!(e.get::<_, bool>(1), a.get::<_, bool>(1), "id {id} flag");
        for i in [2, 3, 12] {
            assert_eq!(
                e.get::<_, Option<serde_json::Value>>(i),
                a.get::<_, Option<serde_json::Value>>(i),
                "id {id} column {i}"
            );
        }
        assert_eq!(e.get::<_, Option<&str>>(4), a.get::<_, Option<&str>>(4));
        assert_eq!(
            e.get::<_, Option<Vec<u8>>>(5),
            a.get::<_, Option<Vec<u8>>>(5)
        );
        for i in 6..12 {
            assert_eq!(
                e.get::<_, Option<&str>>(i),
                a.get::<_, Option<&str>>(i),
                "id {id} column {i}"
            );
        }
        assert_eq!(
            e.get::<_, Option<chrono::DateTime<chrono::Utc>>>(13),
            a.get::<_, Option<chrono::DateTime<chrono::Utc>>>(13)
        );
    }
    // DMS-compatible: booleans as text, json as text.
    let row = target
        .query_one(
            "SELECT flag, doc, at::text FROM dms.awkward WHERE id = 3",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, &str>(0), "true");
    assert_eq!(row.get::<_, Option<&str>>(1), None);
    assert_eq!(row.get::<_, &str>(2), "1970-01-01 00:00:00");
    let row = target
        .query_one("SELECT flag, doc, tags FROM dms.awkward WHERE id = 2", &[])
        .await?;
    assert_eq!(row.get::<_, &str>(0), "false");
    assert_eq!(row.get::<_, &str>(1), "[]");
    assert_eq!(
        row.get::<_, &str>(2),
        "{}",
        "arrays as DMS writes them: PostgreSQL's text form"
    );
    dbs.drop().await
}
