//! The type translator through real PostgreSQL: every awkward source type read from the source,
//! translated for a target typed as DMS creates it, inserted idempotently and read back.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use dmsguard_lab::harness::TestDatabases;
use dmsguard_pipeline::catalogue::{Catalogue, SourceTypeKind};
use dmsguard_pipeline::config::QualifiedName;
use dmsguard_pipeline::statement_parser::is_valid_redshift_sql;
use dmsguard_pipeline::type_translator::{fetch_source_rows, TranslateError, Translator};

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
    blob bytea
);
INSERT INTO public.awkward VALUES
 (1, true, '{"b": [true, null], "a": 1}', ARRAY['x', 'y z', 'quote"d'],
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29 23:59:59.123456+02', '2024-01-01 00:00:00',
  '2024-03-01', 1234567890.12, 0.1, -32768, 'héllo, wörld', 'paid', 42, 'MiXeD', '\x00ff10'),
 (2, false, '[]', '{}', NULL, NULL, NULL, NULL, -0.5, 1e300, 32767, '', 'new', NULL, NULL, NULL),
 (3, false, NULL, NULL, NULL, '1970-01-01 00:00:00+00', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, ''),
 (4, true, '"just a string"', ARRAY[NULL, 'a'], 'ffffffff-ffff-ffff-ffff-ffffffffffff', NULL, NULL, NULL, 0, -0.0, 0,
  'it''s; DROP TABLE awkward; --', 'shipped', -1, 'a', NULL),
 (5, true, '{"nested": {"deep": [1, 2.5, "x"]}}', ARRAY['only'], NULL, NULL, NULL, NULL, 99.99, NULL, NULL, NULL, NULL, 7, NULL, NULL),
 (6, false, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'this note is far longer than thirty bytes', NULL, NULL, NULL, NULL);
"#;

/// As DMS creates the target: booleans, json, arrays, uuids, enums and bytea as varchar; an
/// unquoted (lower-cased) name for the mixed-case column. `note` is deliberately narrower than
/// the source's text so one row does not fit.
const TARGET_DDL: &str = r#"
CREATE TABLE public.awkward (
    id bigint NOT NULL,
    flag varchar(5),
    doc varchar(65535),
    tags varchar(65535),
    ref varchar(36),
    at timestamptz,
    local_at timestamp,
    day date,
    amount numeric(12,2),
    ratio double precision,
    small smallint,
    note varchar(30),
    status varchar(65535),
    maybe integer,
    mixedcase varchar(10),
    blob varchar(65535)
);
"#;

const TEXT_COLUMNS: &str =
    "id, flag, doc, tags, ref, amount::text, note, status, mixedcase, blob, maybe, small";

#[tokio::test]
async fn awkward_types_translate_and_insert_once() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("type_translator").await?;
    let source = dbs.source_client().await?;
    let target = dbs.redshift_client().await?;
    source.batch_execute(SOURCE_DDL).await?;
    target.batch_execute(TARGET_DDL).await?;
    // DMS already applied row 2: the repair must not duplicate it.
    target
        .batch_execute("INSERT INTO public.awkward (id, flag) VALUES (2, 'false')")
        .await?;
    let table = QualifiedName::parse("public.awkward").unwrap();

    let source_table = Catalogue::load_source(&source, &table).await?;
    assert_eq!(source_table.primary_key, ["id"]);
    let tags = &source_table.columns[3];
    assert_eq!(
        (tags.kind, tags.element_type.as_deref()),
        (SourceTypeKind::Array, Some("text"))
    );
    assert_eq!(source_table.columns[12].kind, SourceTypeKind::Enum);
    assert_eq!(
        (
            source_table.columns[8].numeric_precision,
            source_table.columns[8].numeric_scale
        ),
        (Some(12), Some(2))
    );
    let target_table = Catalogue::load(&target, &table).await?;
    // Quoted `"Public"."AWKWARD"` (parsing folds unquoted names already): Redshift folds even
    // quoted names unless case sensitivity is on, so the catalogue looks again in lower case.
    let quoted = QualifiedName {
        schema: "Public".to_owned(),
        table: "AWKWARD".to_owned(),
    };
    let folded = Catalogue::load(&target, &quoted).await?;
    assert_eq!(
        folded.columns, target_table.columns,
        "names fold as on Redshift"
    );
    assert!(matches!(
        Catalogue::load(&target, &QualifiedName::parse("public.absent").unwrap()).await,
        Err(dmsguard_pipeline::catalogue::CatalogueError::TableNotFound(
            _
        ))
    ));
    assert_eq!(target_table.columns[1].char_max_length, Some(5));
    assert!(!target_table.columns[0].nullable);

    let translator = Translator::new(&source_table, &target_table, "id")?;
    let rows = fetch_source_rows(&source, &source_table, "id", &[6, 5, 4, 3, 2, 1, 99]).await?;
    assert_eq!(
        rows.iter().map(|r| r.id).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    let (good, bad) = translator.translate_all(&rows);
    assert_eq!(
        bad,
        vec![TranslateError::TooLong {
            table: table.to_string(),
            column: "note".to_owned(),
            id: 6,
            bytes: 41,
            max: 30
        }]
    );

    let mut inserted = 0;
    for statement in translator.build_inserts(&good, 2) {
        is_valid_redshift_sql(&statement.sql).map_err(anyhow::Error::msg)?;
        inserted += statement.execute(&target).await?;
    }
    assert_eq!(inserted, 4, "rows 1, 3, 4, 5 (2 was there, 6 does not fit)");
    let mut again = 0;
    for statement in translator.build_inserts(&good, 100) {
        again += statement.execute(&target).await?;
    }
    assert_eq!(again, 0, "a second run inserts nothing");
    let ids: Vec<i64> = target
        .query("SELECT id FROM public.awkward ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);

    // Row 1, spelled out: what DMS's varchar columns hold.
    let row = target
        .query_one(
            &format!("SELECT {TEXT_COLUMNS} FROM public.awkward WHERE id = 1"),
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, &str>(1), "true");
    assert_eq!(row.get::<_, &str>(2), r#"{"a": 1, "b": [true, null]}"#);
    assert_eq!(row.get::<_, &str>(3), r#"{x,"y z","quote\"d"}"#);
    assert_eq!(
        row.get::<_, &str>(4),
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    );
    assert_eq!(row.get::<_, &str>(5), "1234567890.12");
    assert_eq!(row.get::<_, &str>(6), "héllo, wörld");
    assert_eq!(row.get::<_, &str>(7), "paid");
    assert_eq!(row.get::<_, &str>(8), "MiXeD");
    assert_eq!(row.get::<_, &str>(9), "\\x00ff10");
    assert_eq!(row.get::<_, i32>(10), 42);
    assert_eq!(row.get::<_, i16>(11), -32768);

    // Every row: the target equals the source read through an independent query.
    let expected = source
        .query(
            "SELECT id, flag::text, doc::text, tags::text, ref::text, amount::text, note, \
             status::text, \"MixedCase\", '\\x' || encode(blob, 'hex'), maybe, small, \
             at, local_at, day, ratio \
             FROM public.awkward WHERE id IN (1, 3, 4, 5) ORDER BY id",
            &[],
        )
        .await?;
    let actual = target
        .query(
            &format!(
                "SELECT {TEXT_COLUMNS}, at, local_at, day, ratio FROM public.awkward \
                 WHERE id IN (1, 3, 4, 5) ORDER BY id"
            ),
            &[],
        )
        .await?;
    assert_eq!(expected.len(), actual.len());
    for (e, a) in expected.iter().zip(&actual) {
        let id: i64 = e.get(0);
        assert_eq!(id, a.get::<_, i64>(0));
        for i in 1..10 {
            assert_eq!(
                e.get::<_, Option<String>>(i),
                a.get::<_, Option<String>>(i),
                "id {id} column {i}"
            );
        }
        assert_eq!(e.get::<_, Option<i32>>(10), a.get::<_, Option<i32>>(10));
        assert_eq!(e.get::<_, Option<i16>>(11), a.get::<_, Option<i16>>(11));
        assert_eq!(
            e.get::<_, Option<DateTime<Utc>>>(12),
            a.get::<_, Option<DateTime<Utc>>>(12),
            "id {id} at"
        );
        assert_eq!(
            e.get::<_, Option<NaiveDateTime>>(13),
            a.get::<_, Option<NaiveDateTime>>(13)
        );
        assert_eq!(
            e.get::<_, Option<NaiveDate>>(14),
            a.get::<_, Option<NaiveDate>>(14)
        );
        assert_eq!(e.get::<_, Option<f64>>(15), a.get::<_, Option<f64>>(15));
    }
    dbs.drop().await
}

/// Two writers inserting the same rows at once (a second run, or DMS catching up) never
/// duplicate one: with serializable transactions the later committer fails, retries and finds
/// the rows present. (Under READ COMMITTED both would commit and every row would be doubled.)
#[tokio::test]
async fn concurrent_inserts_of_the_same_ids_never_duplicate() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("translator_concurrent").await?;
    let source = dbs.source_client().await?;
    source
        .batch_execute(
            "CREATE TABLE public.events (id bigint PRIMARY KEY, kind text NOT NULL);
             INSERT INTO public.events SELECT g, 'kind ' || g FROM generate_series(1, 50) g;",
        )
        .await?;
    let mut first = dbs.redshift_client().await?;
    let mut second = dbs.redshift_client().await?;
    // As DMS creates it: no primary key, nothing in the database stops a duplicate.
    first
        .batch_execute("CREATE TABLE public.events (id bigint NOT NULL, kind varchar(65535))")
        .await?;
    let table = QualifiedName::parse("public.events").unwrap();
    let source_table = Catalogue::load_source(&source, &table).await?;
    let target_table = Catalogue::load(&first, &table).await?;
    let translator = Translator::new(&source_table, &target_table, "id")?;
    let ids: Vec<i64> = (1..=50).collect();
    let rows = fetch_source_rows(&source, &source_table, "id", &ids).await?;
    let (good, bad) = translator.translate_all(&rows);
    assert!(bad.is_empty());
    let [statement] = &translator.build_inserts(&good, 100)[..] else {
        panic!("one statement for 50 rows");
    };

    // The first writer has checked and inserted, but not committed yet...
    let tx = first
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::Serializable)
        .start()
        .await?;
    assert_eq!(statement.execute(&tx).await?, 50);
    // ...when the second writer inserts the same rows and commits.
    assert_eq!(
        translator.insert_absent(&mut second, &good, 10, 5).await?,
        50
    );
    // The first writer's commit now fails instead of duplicating; its retry inserts nothing.
    let err = tx.commit().await.expect_err("commit must conflict");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE)
    );
    assert_eq!(translator.insert_absent(&mut first, &good, 10, 5).await?, 0);

    let row = first
        .query_one(
            "SELECT count(*), count(DISTINCT id) FROM public.events",
            &[],
        )
        .await?;
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (50, 50));
    dbs.drop().await
}
