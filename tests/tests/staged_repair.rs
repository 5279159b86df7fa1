//! The staged write path of repairs (`dmsguard_pipeline::staging`) through real PostgreSQL, as
//! the remediator's least-privilege user: awkward types arrive equal to the source in
//! statements split by rows and by bytes, a move racing DMS's own INSERT of the same ids never
//! duplicates, and a move Redshift cannot serialize is retried whole.

use dmsguard_lab::harness::{
    inject_serializable_violations, injected_violations, TestDatabases, REMEDIATOR_USER,
};
use dmsguard_lab::simulator::DMS_ROLE;
use dmsguard_pipeline::catalogue::Catalogue;
use dmsguard_pipeline::config::QualifiedName;
use dmsguard_pipeline::staging::{StageLimits, StagedWriter};
use dmsguard_pipeline::type_translator::{fetch_source_rows, InsertError, Translator};

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
INSERT INTO public.awkward
SELECT g,
       CASE WHEN g % 4 = 0 THEN NULL ELSE md5(g::text)::uuid END,
       '2024-02-29 23:59:59.123456+02'::timestamptz + g * interval '1 minute',
       g * 12345.6789012345,
       g % 2 = 0,
       ARRAY['t' || g, 'quote"d', NULL, 'back\slash'],
       CASE WHEN g % 3 = 0 THEN NULL ELSE jsonb_build_object('n', g, 'ü', 'größe ✓', 'q', 'it''s') END,
       (ARRAY['new','paid','shipped'])[1 + g % 3]::order_status,
       E'tab\there ' || g || E'\nnew line; DROP TABLE x; --',
       CASE WHEN g % 5 = 0 THEN NULL ELSE decode(lpad(to_hex(g), 4, '0'), 'hex') END
FROM generate_series(1, 40) g;
"#;

/// As DMS creates the target: everything awkward as varchar, no key.
const TARGET_DDL: &str = r#"
CREATE TABLE public.awkward (
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
"#;

const SOURCE_TEXT: &str = "id, ref::text, at, amount::text, flag::text, tags::text, doc::text, \
    status::text, note, '\\x' || encode(blob, 'hex')";
const TARGET_TEXT: &str = "id, ref, at, amount::text, flag, tags, doc, status, note, blob";

async fn translator(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    table: &QualifiedName,
) -> anyhow::Result<(dmsguard_pipeline::catalogue::SourceTable, Translator)> {
    let source_table = Catalogue::load_source(source, table).await?;
    let target_table = Catalogue::load(target, table).await?;
    let translator = Translator::new(&source_table, &target_table, "id")?;
    Ok((source_table, translator))
}

#[tokio::test]
async fn awkward_rows_arrive_equal_in_statements_split_by_rows_and_by_bytes() -> anyhow::Result<()>
{
    let dbs = TestDatabases::create("staged_awkward").await?;
    dbs.source_client().await?.batch_execute(SOURCE_DDL).await?;
    let admin = dbs.redshift_client().await?;
    admin.batch_execute(TARGET_DDL).await?;
    // DMS already applied rows 2 and 17.
    admin
        .batch_execute("INSERT INTO public.awkward (id, flag) VALUES (2, 'false'), (17, 'true')")
        .await?;
    let table = QualifiedName::parse("public.awkward").unwrap();
    let source = dmsguard_pipeline::db::connect(&dbs.remediator_source()).await?;
    let mut target = dmsguard_pipeline::db::connect(&dbs.remediator_redshift()).await?;
    let (source_table, translator) = translator(&source, &target, &table).await?;
    let ids: Vec<i64> = (1..=40).collect();
    let rows = fetch_source_rows(&source, &source_table, "id", &ids).await?;
    let (good, bad) = translator.translate_all(&rows);
    assert!(bad.is_empty(), "{bad:?}");

    // Rows: at most 3 a statement, moved every 10.
    let mut writer = StagedWriter::new(
        &translator,
        StageLimits {
            move_rows: 10,
            statement_rows: 3,
            ..StageLimits::default()
        },
    );
    let mut inserted = 0;
    let mut present = 0;
    for chunk in good[..20].chunks(5) {
        writer.stage(&target, chunk).await?;
        // The same rows again (a retried batch): staged once.
        writer.stage(&target, chunk).await?;
        if writer.is_full() {
            let moved = writer.move_staged(&mut target).await?;
            inserted += moved.inserted;
            present += moved.already_present();
        }
    }
    assert_eq!(
        writer.load_statements(),
        4 * 2,
        "5 rows take two statements of 3"
    );
    let moved = writer.finish(&mut target).await?;
    assert_eq!(moved.staged, 0, "moved in full batches");
    assert_eq!((inserted, present), (18, 2), "rows 2 and 17 were there");

    // Bytes: a budget of 600 bytes fits one of these rows (SQL and values) per statement.
    let mut writer = StagedWriter::new(
        &translator,
        StageLimits {
            statement_bytes: 600,
            ..StageLimits::default()
        },
    );
    writer.stage(&target, &good[20..]).await?;
    assert_eq!(writer.load_statements(), 20, "one row per statement");
    let moved = writer.finish(&mut target).await?;
    assert_eq!((moved.staged, moved.inserted), (20, 20));

    // A second run of everything inserts nothing.
    let mut writer = StagedWriter::new(&translator, StageLimits::default());
    writer.stage(&target, &good).await?;
    assert_eq!(writer.load_statements(), 1);
    let moved = writer.finish(&mut target).await?;
    assert_eq!((moved.staged, moved.inserted), (40, 0));

    let count: i64 = admin
        .query_one("SELECT count(*) FROM public.awkward", &[])
        .await?
        .get(0);
    assert_eq!(count, 40, "one copy of each row");
    let expected = source
        .query(
            &format!(
                "SELECT {SOURCE_TEXT} FROM public.awkward WHERE id NOT IN (2, 17) ORDER BY id"
            ),
            &[],
        )
        .await?;
    let actual = admin
        .query(
            &format!(
                "SELECT {TARGET_TEXT} FROM public.awkward WHERE id NOT IN (2, 17) ORDER BY id"
            ),
            &[],
        )
        .await?;
    assert_eq!(expected.len(), 38);
    assert_eq!(actual.len(), 38);
    for (e, a) in expected.iter().zip(&actual) {
        let id: i64 = e.get(0);
        assert_eq!(id, a.get::<_, i64>(0));
        assert_eq!(
            e.get::<_, Option<chrono::DateTime<chrono::Utc>>>(2),
            a.get::<_, Option<chrono::DateTime<chrono::Utc>>>(2),
            "id {id} at"
        );
        for i in (1..10).filter(|i| *i != 2) {
            let e = e.get::<_, Option<String>>(i);
            let a = a.get::<_, Option<String>>(i);
            assert_eq!(e, a, "id {id} column {i}");
        }
    }
    // The stage was a temporary table of the repair's session: nothing is left behind.
    let stages: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'dmsguard_stage_%'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(stages, 0);
    drop((source, target, admin));
    dbs.drop().await
}

/// The events table (`n` rows) on both sides, the target as DMS creates it (no key); the DMS
/// role may write the target.
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
    let (_, translator) = translator(&source, &admin, &table).await?;
    Ok((source, admin, translator))
}

/// A move racing DMS's own INSERT of the same ids, many times, at snapshot isolation with no
/// key enforced: the stage is loaded and committed first, then the move takes `LOCK`, waits
/// for DMS's transaction, and its `NOT EXISTS` sees DMS's rows.
#[tokio::test]
async fn a_staged_move_racing_dms_inserts_of_the_same_ids_never_duplicates() -> anyhow::Result<()> {
    const ROUNDS: i64 = 30;
    const IDS: i64 = 25;
    let dbs = TestDatabases::create("staged_race").await?;
    let (source, admin, translator) = events(&dbs, ROUNDS * IDS).await?;
    let mut repair = dmsguard_pipeline::db::connect(&dbs.remediator_redshift()).await?;
    let dms = dbs.redshift_client().await?;
    dms.batch_execute(&format!("SET ROLE {DMS_ROLE}")).await?;
    let source_table =
        Catalogue::load_source(&source, &QualifiedName::parse("public.events").unwrap()).await?;
    let mut writer = StagedWriter::new(&translator, StageLimits::default());
    for round in 0..ROUNDS {
        let (lo, hi) = (round * IDS + 1, (round + 1) * IDS);
        let ids: Vec<i64> = (lo..=hi).collect();
        let rows = fetch_source_rows(&source, &source_table, "id", &ids).await?;
        let (good, _) = translator.translate_all(&rows);
        writer.stage(&repair, &good).await?;
        // DMS's batch has inserted the rows; its transaction is still open...
        dms.batch_execute("BEGIN").await?;
        dms.execute(
            "INSERT INTO public.events SELECT g, 'kind ' || g FROM generate_series($1::bigint, $2::bigint) g",
            &[&lo, &hi],
        )
        .await?;
        // ...and commits 0-20 ms into the move (varied on purpose: the race's interleaving,
        // not a wait for a condition).
        let commit_after = std::time::Duration::from_millis((round % 5 * 5) as u64);
        let (moved, committed) = tokio::join!(writer.move_staged(&mut repair), async {
            tokio::time::sleep(commit_after).await;
            dms.batch_execute("COMMIT").await
        });
        committed?;
        let moved = moved?;
        assert_eq!(
            (moved.staged, moved.inserted),
            (IDS as u64, 0),
            "round {round}: DMS's rows were already there"
        );
    }
    writer.finish(&mut repair).await?;
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

/// A move Redshift cannot serialize (SQLSTATE XX000 "1023") is retried whole from the stage,
/// and gives up with a conflict error after its attempts, having inserted nothing.
#[tokio::test]
async fn serializable_violations_of_a_move_are_retried_from_the_stage() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("staged_conflict").await?;
    let (source, admin, translator) = events(&dbs, 50).await?;
    let table = QualifiedName::parse("public.events").unwrap();
    let source_table = Catalogue::load_source(&source, &table).await?;
    let ids: Vec<i64> = (1..=50).collect();
    let rows = fetch_source_rows(&source, &source_table, "id", &ids).await?;
    let (good, _) = translator.translate_all(&rows);
    let mut repair = dmsguard_pipeline::db::connect(&dbs.remediator_redshift()).await?;

    let base = inject_serializable_violations(&admin, &table, REMEDIATOR_USER, 2).await?;
    let mut writer = StagedWriter::new(&translator, StageLimits::default());
    writer.stage(&repair, &good).await?;
    let moved = writer.finish(&mut repair).await?;
    assert_eq!((moved.staged, moved.inserted), (50, 50));
    assert_eq!(
        injected_violations(&admin, base).await?,
        3,
        "two failures, then success"
    );

    admin.batch_execute("TRUNCATE public.events").await?;
    let base = inject_serializable_violations(&admin, &table, REMEDIATOR_USER, 3).await?;
    let mut writer = StagedWriter::new(
        &translator,
        StageLimits {
            max_attempts: 3,
            ..StageLimits::default()
        },
    );
    writer.stage(&repair, &good).await?;
    let err = writer
        .move_staged(&mut repair)
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
