//! The type translator through real PostgreSQL: every awkward source type read from the source,
//! translated for a target typed as DMS creates it, inserted idempotently and read back.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use dmsguard_lab::harness::{
    inject_serializable_violations, injected_violations, TestDatabases, REMEDIATOR_USER,
};
use dmsguard_lab::simulator::DMS_ROLE;
use dmsguard_pipeline::catalogue::{Catalogue, SourceTypeKind};
use dmsguard_pipeline::config::QualifiedName;
use dmsguard_pipeline::statement_parser::is_valid_redshift_sql;
use dmsguard_pipeline::type_translator::{
    fetch_source_rows, InsertError, TranslateError, Translator,
};

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
    // From here on dmsguard's code runs as the remediator's least-privilege user, as in
    // production (docs/grants.md); the checks read as that user too.
    let source = dmsguard_pipeline::db::connect(&dbs.remediator_source()).await?;
    let target = dmsguard_pipeline::db::connect(&dbs.remediator_redshift()).await?;

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

/// The events table (`n` rows) on the source and, as DMS creates it (no key: Redshift enforces
/// none), on the target; the translator between them. The DMS role may write the target.
async fn events(
    dbs: &TestDatabases,
    n: i64,
) -> anyhow::Result<(tokio_postgres::Client, tokio_postgres::Client, Translator)> {
    let source = dbs.source_client().await?;
    source
        .batch_execute(&format!(
            "CREATE TABLE public.events (id bigint PRIMARY KEY, kind text NOT NULL);
             INSERT INTO public.events SELECT g, 'kind ' || g FROM generate_series(1, {n}) g;"
        ))
        .await?;
    let admin = dbs.redshift_client().await?;
    admin
        .batch_execute(&format!(
            "CREATE TABLE public.events (id bigint NOT NULL, kind varchar(65535));
             GRANT SELECT, INSERT ON public.events TO {DMS_ROLE};"
        ))
        .await?;
    let table = QualifiedName::parse("public.events").unwrap();
    let source_table = Catalogue::load_source(&source, &table).await?;
    let target_table = Catalogue::load(&admin, &table).await?;
    let translator = Translator::new(&source_table, &target_table, "id")?;
    Ok((source, admin, translator))
}

/// A repair racing DMS's own INSERT of the same ids, many times. The target runs at snapshot
/// isolation (the stand-in's default, as on new Redshift clusters) and enforces no key: a
/// repair that checked for the rows while DMS's transaction was still open would insert them
/// again and both would commit. The repair takes `LOCK table` first, so it waits for DMS's
/// transaction and then sees its rows. The repair runs as the remediator's least-privilege user.
#[tokio::test]
async fn a_repair_racing_dms_inserts_of_the_same_ids_never_duplicates() -> anyhow::Result<()> {
    const ROUNDS: i64 = 40;
    const IDS: i64 = 25;
    let dbs = TestDatabases::create("translator_race").await?;
    let (source, admin, translator) = events(&dbs, ROUNDS * IDS).await?;
    let isolation: String = admin
        .query_one("SHOW default_transaction_isolation", &[])
        .await?
        .get(0);
    assert_eq!(isolation, "repeatable read", "snapshot isolation");
    let mut repair = dmsguard_pipeline::db::connect(&dbs.remediator_redshift()).await?;
    let dms = dbs.redshift_client().await?;
    dms.batch_execute(&format!("SET ROLE {DMS_ROLE}")).await?;
    let source_table =
        Catalogue::load_source(&source, &QualifiedName::parse("public.events").unwrap()).await?;
    for round in 0..ROUNDS {
        let (lo, hi) = (round * IDS + 1, (round + 1) * IDS);
        let ids: Vec<i64> = (lo..=hi).collect();
        let rows = fetch_source_rows(&source, &source_table, "id", &ids).await?;
        let (good, bad) = translator.translate_all(&rows);
        assert!(bad.is_empty());
        // DMS's batch has inserted the rows; its transaction is still open...
        dms.batch_execute("BEGIN").await?;
        dms.execute(
            "INSERT INTO public.events SELECT g, 'kind ' || g FROM generate_series($1::bigint, $2::bigint) g",
            &[&lo, &hi],
        )
        .await?;
        // ...and commits 0-20 ms into the repair (varied on purpose: the race's interleaving,
        // not a wait for a condition).
        let commit_after = std::time::Duration::from_millis((round % 5 * 5) as u64);
        let (inserted, committed) = tokio::join!(
            translator.insert_absent(&mut repair, &good, 100, 5),
            async {
                tokio::time::sleep(commit_after).await;
                dms.batch_execute("COMMIT").await
            }
        );
        committed?;
        assert_eq!(inserted?, 0, "round {round}: DMS's rows were already there");
    }
    let row = admin
        .query_one(
            "SELECT count(*), count(DISTINCT id) FROM public.events",
            &[],
        )
        .await?;
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (ROUNDS * IDS, ROUNDS * IDS),
        "no duplicate"
    );
    drop((source, admin, repair, dms));
    dbs.drop().await
}

/// Redshift reports a transaction it cannot serialize as SQLSTATE XX000 "1023" with
/// "Serializable isolation violation" in the detail, not as 40001: the repair retries it, and
/// gives up with a conflict error after its attempts.
#[tokio::test]
async fn redshift_serializable_violations_are_retried() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("translator_conflict").await?;
    let (source, admin, translator) = events(&dbs, 50).await?;
    let table = QualifiedName::parse("public.events").unwrap();
    let source_table = Catalogue::load_source(&source, &table).await?;
    let ids: Vec<i64> = (1..=50).collect();
    let rows = fetch_source_rows(&source, &source_table, "id", &ids).await?;
    let (good, _) = translator.translate_all(&rows);
    let mut repair = dmsguard_pipeline::db::connect(&dbs.remediator_redshift()).await?;

    let base = inject_serializable_violations(&admin, &table, REMEDIATOR_USER, 2).await?;
    assert_eq!(
        translator.insert_absent(&mut repair, &good, 100, 5).await?,
        50
    );
    assert_eq!(
        injected_violations(&admin, base).await?,
        3,
        "two failures, then success"
    );

    admin.batch_execute("TRUNCATE public.events").await?;
    let base = inject_serializable_violations(&admin, &table, REMEDIATOR_USER, 3).await?;
    let err = translator
        .insert_absent(&mut repair, &good, 100, 3)
        .await
        .expect_err("three violations in three attempts");
    assert!(
        matches!(err, InsertError::Conflict { attempts: 3, .. }),
        "{err}"
    );
    assert_eq!(injected_violations(&admin, base).await?, 3);
    let n: i64 = admin
        .query_one("SELECT count(*) FROM public.events", &[])
        .await?
        .get(0);
    assert_eq!(n, 0, "nothing inserted");
    drop((source, admin, repair));
    dbs.drop().await
}
