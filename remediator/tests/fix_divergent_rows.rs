//! `divergent_rows` through the `dmsguard-remediator run` binary on the lab's PostgreSQL, as the
//! remediator's least-privilege user (`source tests/lab/env.sh` first): rows whose UPDATE DMS
//! lost come back equal to the source column for column, ids whose DELETE it lost go only with
//! `delete_extra`, a second run changes nothing, dry-run prints the ids and the SQL and changes
//! nothing, an id range can be repaired by hand, and a table that does not enable the fix is
//! refused.

mod repair_lab;

use dmsguard_lab::harness::{apply_grants, TestDatabases};
use dmsguard_pipeline::statement_parser::is_valid_redshift_sql;
use repair_lab::*;

const PADS: usize = 2;
const ROWS: i64 = 300;
const YESTERDAY_ROWS: i64 = 200;

fn tables(enabled: bool) -> String {
    format!(
        "[[tables]]\nsource = \"public.orders\"\nday_column = \"created_at\"\ndivergent_rows = {enabled}\ndelete_extra = true\n"
    )
}

#[tokio::test]
async fn divergent_rows_are_rewritten_once_and_extra_ids_deleted() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("fix_divergent_rows").await?;
    let source = dbs.source_client().await?;
    let target = dbs.redshift_client().await?;
    source.batch_execute(&source_ddl(PADS)).await?;
    target.batch_execute(&target_ddl(PADS)).await?;
    fill_source(&source, ROWS, YESTERDAY_ROWS, PADS).await?;
    let all: Vec<i64> = (1..=ROWS).collect();
    copy_as_dms(&source, &target, &all, PADS).await?;
    apply_grants(
        &target,
        &["redshift-remediator-divergent-rows"],
        &[("<table>", "public.orders")],
    )
    .await?;
    // DMS lost UPDATEs of yesterday's 3, 151 and 200 (the day's last) and today's 250, and
    // the DELETEs of yesterday's 50 and 120.
    target
        .batch_execute(
            "UPDATE public.orders SET note = 'stale' WHERE id = 3;
             UPDATE public.orders SET doc = NULL, paid = 'true' WHERE id = 151;
             UPDATE public.orders SET amount = 0 WHERE id IN (200, 250);",
        )
        .await?;
    source
        .batch_execute("DELETE FROM public.orders WHERE id IN (50, 120)")
        .await?;
    let config = config_text(
        &dbs,
        None,
        "",
        &format!("{}[remediator]\ninsert_batch_rows = 2\n", tables(true)),
    );

    // Dry run: the ids and every statement; nothing written.
    let out = run_binary(
        &config,
        &[
            "run",
            "divergent_rows",
            "--table",
            "public.orders",
            "--dry-run",
        ],
    )?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Divergent ids (3): 3, 151, 200."),
        "{stdout}"
    );
    assert!(
        stdout.contains("Extra ids (2): 50, 120, deleted if the source still lacks them."),
        "{stdout}"
    );
    assert!(stdout.contains("outcome: dry_run"), "{stdout}");
    let line = |prefix: &str| {
        stdout
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in the plan:\n{stdout}"))
            .trim_end_matches(';')
            .to_owned()
    };
    let replace = line("DELETE FROM \"public\".\"orders\" USING");
    for sql in [
        line("LOCK"),
        line("SELECT DISTINCT"),
        replace.clone(),
        line("INSERT INTO \"public\".\"orders\""),
        line("DELETE FROM \"public\".\"orders\" WHERE"),
    ] {
        is_valid_redshift_sql(&sql).map_err(anyhow::Error::msg)?;
    }
    assert!(replace.contains("\"dmsguard_stage_"), "{replace}");
    let stale: i64 = target
        .query_one(
            "SELECT count(*) FROM public.orders WHERE note = 'stale' OR amount = 0",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(stale, 3, "dry run wrote nothing");

    // The repair: yesterday (the default window).
    let out = run_binary(
        &config,
        &["run", "divergent_rows", "--table", "public.orders"],
    )?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("outcome: succeeded"), "{stdout}");
    assert!(
        stdout.contains("3 divergent, 2 extra; 3 rewritten, 2 extra deleted"),
        "{stdout}"
    );
    let yesterday: Vec<i64> = (1..=YESTERDAY_ROWS)
        .filter(|id| ![50, 120].contains(id))
        .collect();
    assert_target_equals_source(&source, &target, &yesterday, PADS).await?;
    assert_eq!(
        count_id(&target, 50).await? + count_id(&target, 120).await?,
        0
    );
    let amount: String = target
        .query_one("SELECT amount::text FROM public.orders WHERE id = 250", &[])
        .await?
        .get(0);
    assert_eq!(amount, "0.00", "today is outside the window");

    // A second run finds nothing and changes nothing.
    let out = run_binary(
        &config,
        &["run", "divergent_rows", "--table", "public.orders"],
    )?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("No row of public.orders diverged"),
        "{stdout}"
    );

    // By hand, an id range: today's 250.
    let out = run_binary(
        &config,
        &[
            "run",
            "divergent_rows",
            "--table",
            "public.orders",
            "--from-id",
            "240",
            "--to-id",
            "260",
        ],
    )?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 divergent, 0 extra; 1 rewritten"),
        "{stdout}"
    );
    let every: Vec<i64> = (1..=ROWS).filter(|id| ![50, 120].contains(id)).collect();
    assert_target_equals_source(&source, &target, &every, PADS).await?;

    // A table that does not enable the fix is refused, by name.
    let refused = config_text(&dbs, None, "", &tables(false));
    let out = run_binary(
        &refused,
        &["run", "divergent_rows", "--table", "public.orders"],
    )?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("does not enable the divergent_rows fix"),
        "{stdout}\n{stderr}"
    );
    dbs.drop().await
}
