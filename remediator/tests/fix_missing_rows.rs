//! F4 through the `dmsguard-remediator run missing_rows` binary on the lab's PostgreSQL
//! (`source tests/lab/env.sh` first): rows dropped from a DMS-typed target come back equal to the
//! source for the window asked, a second run inserts nothing, dry-run prints the SQL and changes
//! nothing.

mod repair_lab;

use dmsguard_lab::harness::TestDatabases;
use dmsguard_pipeline::statement_parser::is_valid_redshift_sql;
use repair_lab::*;

const PADS: usize = 2;
const ROWS: i64 = 300;
const YESTERDAY_ROWS: i64 = 200;

const TABLES: &str = "[[tables]]\nsource = \"public.orders\"\nday_column = \"created_at\"\n";

async fn lab() -> anyhow::Result<(
    TestDatabases,
    tokio_postgres::Client,
    tokio_postgres::Client,
)> {
    let dbs = TestDatabases::create("fix_missing_rows").await?;
    let source = dbs.source_client().await?;
    let target = dbs.redshift_client().await?;
    source.batch_execute(&source_ddl(PADS)).await?;
    target.batch_execute(&target_ddl(PADS)).await?;
    fill_source(&source, ROWS, YESTERDAY_ROWS, PADS).await?;
    let all: Vec<i64> = (1..=ROWS).collect();
    copy_as_dms(&source, &target, &all, PADS).await?;
    Ok((dbs, source, target))
}

#[tokio::test]
async fn missing_rows_of_yesterday_come_back_once_and_dry_run_changes_nothing() -> anyhow::Result<()>
{
    let (dbs, source, target) = lab().await?;
    // Yesterday's rows 5, 17, 150 (a NULL-heavy row), 200 (the day's last); today's row 250.
    let dropped_yesterday = [5_i64, 17, 150, 200];
    target
        .execute(
            "DELETE FROM public.orders WHERE id = ANY($1) OR id = 250",
            &[&dropped_yesterday.to_vec()],
        )
        .await?;
    let config = config_text(
        &dbs,
        None,
        "",
        &format!("{TABLES}[remediator]\ninsert_batch_rows = 3\n"),
    );

    // Dry run: the plan names the ids and prints the INSERT; nothing is written.
    let out = run_binary(
        &config,
        &[
            "run",
            "missing_rows",
            "--table",
            "public.orders",
            "--dry-run",
        ],
    )?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Missing ids (4): 5, 17, 150, 200."),
        "{stdout}"
    );
    assert!(stdout.contains("outcome: dry_run"), "{stdout}");
    // The plan prints every statement of the write path: the stage, its load, the move.
    let line = |prefix: &str| {
        stdout
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in the plan:\n{stdout}"))
            .trim_end_matches(';')
            .to_owned()
    };
    let load = line("INSERT INTO \"dmsguard_stage_");
    let moved = line("INSERT INTO \"public\".\"orders\"");
    assert_eq!(line("SET query_group"), "SET query_group TO 'dmsguard'");
    for sql in [
        line("CREATE TEMP TABLE"),
        load.clone(),
        line("LOCK"),
        moved.clone(),
    ] {
        is_valid_redshift_sql(&sql).map_err(anyhow::Error::msg)?;
    }
    assert!(
        load.contains("$1") && !load.contains("héllo"),
        "values are bound: {load}"
    );
    assert!(
        moved.contains("FROM \"dmsguard_stage_") && moved.contains("WHERE NOT EXISTS"),
        "{moved}"
    );
    assert_eq!(
        target_ids(&target).await?.len() as i64,
        ROWS - 5,
        "dry run wrote nothing"
    );

    // The repair: yesterday (the default window) only, in batches of 3, logged line by line.
    let out = run_binary(
        &config,
        &["run", "missing_rows", "--table", "public.orders"],
    )?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("outcome: succeeded"), "{stdout}");
    assert!(
        stdout.contains("4 found, 4 inserted, 0 already present"),
        "{stdout}"
    );
    assert!(
        stderr.contains("Repair progress."),
        "progress as log lines off a terminal: {stderr}"
    );
    // The lab's PostgreSQL has no query_group: said once, and the repair goes on.
    assert!(
        stderr.contains("no query_group setting"),
        "the query group was set: {stderr}"
    );
    let yesterday: Vec<i64> = (1..=YESTERDAY_ROWS).collect();
    assert_target_equals_source(&source, &target, &yesterday, PADS).await?;
    assert_eq!(
        count_id(&target, 250).await?,
        0,
        "today is outside the window"
    );

    // A second run finds nothing and changes nothing.
    let out = run_binary(
        &config,
        &["run", "missing_rows", "--table", "public.orders"],
    )?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("nothing inserted"), "{stdout}");
    assert_eq!(target_ids(&target).await?.len() as i64, ROWS - 1);

    // By ids: today's row.
    let out = run_binary(
        &config,
        &[
            "run",
            "missing_rows",
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
    assert!(stdout.contains("1 found, 1 inserted"), "{stdout}");
    let all: Vec<i64> = (1..=ROWS).collect();
    assert_target_equals_source(&source, &target, &all, PADS).await?;

    // The ledger holds the plan and the outcome's counts.
    let jobs = finished_jobs(&dbs, 4).await?;
    let outcomes: Vec<&str> = jobs.iter().map(|j| j.0.as_str()).collect();
    assert_eq!(outcomes, ["dry_run", "succeeded", "succeeded", "succeeded"]);
    assert_eq!(jobs[1].2["found"], 4);
    assert_eq!(jobs[1].2["inserted"], 4);
    assert_eq!(jobs[2].2["inserted"], 0);
    drop((source, target));
    dbs.drop().await
}

#[tokio::test]
async fn rows_that_do_not_fit_fail_by_name_and_the_others_are_inserted() -> anyhow::Result<()> {
    let (dbs, source, target) = lab().await?;
    target
        .batch_execute("DELETE FROM public.orders WHERE id IN (7, 8); ALTER TABLE public.orders ALTER COLUMN note TYPE varchar(12) USING left(note, 12);")
        .await?;
    // Row 8's note is 'héllo 8\nline; DROP…' (over 12 bytes) once the column narrows; row 7's too,
    // so shorten row 7 at the source.
    source
        .execute("UPDATE public.orders SET note = 'short' WHERE id = 7", &[])
        .await?;
    let config = config_text(&dbs, None, "", TABLES);
    let out = run_binary(
        &config,
        &[
            "run",
            "missing_rows",
            "--table",
            "public.orders",
            "--from-id",
            "1",
            "--to-id",
            "20",
        ],
    )?;
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed row fails the job:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("2 found, 1 inserted, 0 already present, 0 gone from the source, 1 failed"),
        "{stdout}"
    );
    let jobs = finished_jobs(&dbs, 1).await?;
    let errors = jobs[0].2["errors"].as_array().unwrap().clone();
    assert_eq!(errors.len(), 1);
    let error = errors[0].as_str().unwrap();
    assert!(error.contains("public.orders.note id 8"), "{error}");
    assert_eq!(
        (count_id(&target, 7).await?, count_id(&target, 8).await?),
        (1, 0)
    );

    let unknown = run_binary(&config, &["run", "missing_rows", "--table", "public.nope"])?;
    let (stdout, _) = text(&unknown);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stdout.contains("table `public.nope` is not in [[tables]]"),
        "{stdout}"
    );
    drop((source, target));
    dbs.drop().await
}
