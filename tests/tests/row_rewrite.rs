//! The rewrite of divergent rows and extra ids (`dmsguard_pipeline::rewrite`) through real
//! PostgreSQL, as the remediator's least-privilege user: stale rows (a duplicated id and the
//! last id among them) become equal to the source column for column, extra ids go only with
//! `delete_extra` and only while the source still lacks them, ids the target lost or the source
//! deleted are left alone, a second run changes nothing, and without the documented `DELETE`
//! grant the rewrite fails with the server's own message and changes nothing.

use dmsguard_lab::harness::{apply_grants, TestDatabases, REMEDIATOR_USER};
use dmsguard_pipeline::catalogue::Catalogue;
use dmsguard_pipeline::config::QualifiedName;
use dmsguard_pipeline::report::ErrorChain;
use dmsguard_pipeline::rewrite::{RewriteError, Rewritten, RowRewriter};
use dmsguard_pipeline::staging::{StageLimits, StagedWriter};
use dmsguard_pipeline::type_translator::{fetch_source_rows, Translator};

const SOURCE_DDL: &str = r#"
CREATE TABLE public.awkward (
    id bigint PRIMARY KEY,
    at timestamptz,
    amount numeric(38,10),
    flag boolean,
    tags text[],
    doc jsonb,
    note text
);
INSERT INTO public.awkward
SELECT g,
       '2024-02-29 23:59:59.123456+02'::timestamptz + g * interval '1 minute',
       g * 12345.6789012345,
       g % 2 = 0,
       ARRAY['t' || g, 'quote"d', NULL, 'back\slash'],
       CASE WHEN g % 3 = 0 THEN NULL ELSE jsonb_build_object('n', g, 'ü', 'größe ✓', 'q', 'it''s') END,
       E'tab\there ' || g || E'\nnew line'
FROM generate_series(1, 40) g;
"#;

/// As DMS creates the target: booleans, arrays and json as varchar, no key.
const TARGET_DDL: &str = r#"
CREATE TABLE public.awkward (
    id bigint NOT NULL,
    at timestamp,
    amount numeric(38,10),
    flag varchar(5),
    tags varchar(65535),
    doc varchar(65535),
    note varchar(65535)
);
"#;

/// Each side's row as DMS's text, compared in SQL on both sides.
const SOURCE_TEXT: &str = "id, (at AT TIME ZONE 'UTC')::text, amount::text, \
    CASE WHEN flag THEN 'true' ELSE 'false' END, tags::text, doc::text, note";
const TARGET_TEXT: &str = "id, at::text, amount::text, flag, tags, doc, note";

async fn rows(client: &tokio_postgres::Client, select: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let sql = format!("SELECT {select} FROM public.awkward ORDER BY id");
    Ok(client
        .query(&sql, &[])
        .await?
        .iter()
        .map(|r| {
            let mut v = vec![r.get::<_, i64>(0).to_string()];
            v.extend((1..7).map(|i| r.get::<_, Option<String>>(i).unwrap_or("NULL".into())));
            v
        })
        .collect())
}

fn ids(rows: &[Vec<String>]) -> Vec<i64> {
    rows.iter().map(|r| r[0].parse().unwrap()).collect()
}

#[tokio::test]
async fn divergent_rows_are_rewritten_and_extra_ids_deleted_only_when_allowed() -> anyhow::Result<()>
{
    let dbs = TestDatabases::create("row_rewrite").await?;
    let admin_source = dbs.source_client().await?;
    admin_source.batch_execute(SOURCE_DDL).await?;
    let admin = dbs.redshift_client().await?;
    admin.batch_execute(TARGET_DDL).await?;
    let table = QualifiedName::parse("public.awkward").unwrap();
    let source = dmsguard_pipeline::db::connect(&dbs.remediator_source()).await?;
    let mut target = dmsguard_pipeline::db::connect(&dbs.remediator_redshift()).await?;
    let source_table = Catalogue::load_source(&source, &table).await?;
    let translator = Translator::new(
        &source_table,
        &Catalogue::load(&target, &table).await?,
        "id",
    )?;

    // DMS replicated every row (the repair path's own insert stands in for it).
    let all: Vec<i64> = (1..=40).collect();
    let (good, bad) =
        translator.translate_all(&fetch_source_rows(&source, &source_table, "id", &all).await?);
    assert!(bad.is_empty(), "{bad:?}");
    let mut writer = StagedWriter::new(&translator, StageLimits::default());
    writer.stage(&target, &good).await?;
    writer.finish(&mut target).await?;
    assert_eq!(
        rows(&admin_source, SOURCE_TEXT).await?,
        rows(&admin, TARGET_TEXT).await?
    );

    // Then DMS lost changes: UPDATEs of 3, 7, 40 (the last id) and a duplicate of 5 with old
    // values; DELETEs of 41 and 42 (the target keeps them); 9 deleted at the source since it
    // was found divergent; 11 gone from the target since.
    admin
        .batch_execute(
            "INSERT INTO public.awkward SELECT id + 37, at, amount, flag, tags, doc, note FROM public.awkward WHERE id IN (4, 5);
             UPDATE public.awkward SET note = 'stale', flag = 'true' WHERE id = 3;
             UPDATE public.awkward SET doc = NULL, tags = '{}' WHERE id = 7;
             UPDATE public.awkward SET amount = 0, at = '2001-01-01' WHERE id = 40;
             INSERT INTO public.awkward SELECT id, at, amount, flag, tags, doc, 'old' FROM public.awkward WHERE id = 5;
             UPDATE public.awkward SET note = 'stale' WHERE id IN (9, 11);
             DELETE FROM public.awkward WHERE id = 11;",
        )
        .await?;
    admin_source
        .batch_execute("DELETE FROM public.awkward WHERE id = 9")
        .await?;
    let before = rows(&admin, TARGET_TEXT).await?;
    let divergent = [3, 5, 7, 9, 11, 40];
    let extra = [41, 42];
    let mut rewriter = RowRewriter::new(
        source_table.clone(),
        "id",
        &translator,
        StageLimits::default(),
        4,
    );

    // Without DELETE on the table: the server's own message, nothing changed.
    let error = rewriter
        .rewrite(&source, &mut target, &divergent, &extra, false, |_, _| {})
        .await
        .unwrap_err();
    let text = ErrorChain(&error).to_string();
    assert!(matches!(error, RewriteError::Query { .. }), "{text}");
    assert!(
        text.contains("permission denied for table awkward") && text.contains("42501"),
        "{text}"
    );
    assert_eq!(rows(&admin, TARGET_TEXT).await?, before, "rolled back");

    // With the documented grant (docs/grants.md, tables that enable the fix).
    apply_grants(
        &admin,
        &["redshift-remediator-divergent-rows"],
        &[("<table>", "public.awkward")],
    )
    .await?;
    let mut progress = Vec::new();
    let done = rewriter
        .rewrite(&source, &mut target, &divergent, &extra, false, |id, r| {
            progress.push((id, r.rewritten))
        })
        .await?;
    assert_eq!(
        done,
        Rewritten {
            rewritten: 4,
            extra_kept: 2,
            gone_from_source: 1,
            absent_in_target: 1,
            ..Rewritten::default()
        }
    );
    // Batches of 4 ids: 3 5 7 9 | 11 40 41 42.
    assert_eq!(progress, vec![(9, 3), (42, 4)]);
    let after = rows(&admin, TARGET_TEXT).await?;
    let expected = rows(&admin_source, SOURCE_TEXT).await?;
    // Equal to the source but for 9 (the source deleted it: DMS's DELETE is still to come),
    // 11 (lost: missing_rows' business) and the kept extras 41 and 42; 5 is one row again.
    let mut expected_ids: Vec<i64> = (1..=42).filter(|id| *id != 11).collect();
    assert_eq!(ids(&after), expected_ids);
    let without = |rows: &[Vec<String>], skip: &[i64]| -> Vec<Vec<String>> {
        rows.iter()
            .filter(|r| !skip.contains(&r[0].parse().unwrap()))
            .cloned()
            .collect()
    };
    assert_eq!(without(&after, &[9, 41, 42]), without(&expected, &[11]));

    // Again, now allowed to delete extras (9 is extra now): the rest is written the same.
    let done = rewriter
        .rewrite(
            &source,
            &mut target,
            &[3, 40],
            &[9, 41, 42],
            true,
            |_, _| {},
        )
        .await?;
    assert_eq!((done.rewritten, done.extra_deleted), (2, 3), "{done:?}");
    expected_ids.retain(|id| ![9, 41, 42].contains(id));
    let after = rows(&admin, TARGET_TEXT).await?;
    assert_eq!(ids(&after), expected_ids);
    assert_eq!(after, without(&expected, &[11]));

    // An extra id the source has again (re-inserted meanwhile) is rewritten, not deleted.
    admin_source
        .batch_execute("INSERT INTO public.awkward (id, note) VALUES (43, 'back')")
        .await?;
    admin
        .batch_execute("INSERT INTO public.awkward (id, note) VALUES (43, 'gone?')")
        .await?;
    let done = rewriter
        .rewrite(&source, &mut target, &[], &[43], true, |_, _| {})
        .await?;
    assert_eq!((done.rewritten, done.extra_deleted), (1, 0), "{done:?}");
    let note: Option<String> = admin
        .query_one("SELECT note FROM public.awkward WHERE id = 43", &[])
        .await?
        .get(0);
    assert_eq!(note.as_deref(), Some("back"));
    rewriter.finish(&target).await?;

    // The remediator's user stayed a regular one.
    let superuser: bool = admin
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = $1",
            &[&REMEDIATOR_USER],
        )
        .await?
        .get(0);
    assert!(!superuser);
    drop(target);
    dbs.drop().await?;
    Ok(())
}
