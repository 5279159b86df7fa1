//! A large `missing_rows` repair killed midway continues where it stopped: the real
//! `dmsguard-remediator run missing_rows` binary, as the remediator's least-privilege users,
//! repairs 200,000 rows of the awkward table into an empty DMS-typed target and is SIGKILLed
//! once the ledger shows progress; the next run searches only the ids after the recorded
//! progress and completes the window with exactly one copy of every row.

mod repair_lab;

use std::time::Duration;

use dmsguard_lab::harness::{self, eventually, TestDatabases};
use repair_lab::*;

const ROWS: i64 = 200_000;
const TABLES: &str = "[[tables]]\nsource = \"public.orders\"\n";

/// The ledger's recorded progress of the repair: (done_through, inserted), if any.
async fn recorded(dbs: &TestDatabases) -> anyhow::Result<Option<(i64, i64)>> {
    let ledger = dbs.source_client().await?;
    Ok(ledger
        .query_opt(
            "SELECT done_through, inserted FROM dmsguard.repair_progress \
             WHERE fix = 'missing_rows' AND table_name = 'public.orders'",
            &[],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

/// (rows, distinct ids) of the target.
async fn counts(target: &tokio_postgres::Client) -> anyhow::Result<(i64, i64)> {
    let row = target
        .query_one(
            "SELECT count(*), count(DISTINCT id) FROM public.orders",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

#[tokio::test]
async fn a_repair_killed_midway_continues_from_its_progress_and_writes_each_row_once(
) -> anyhow::Result<()> {
    let dbs = TestDatabases::create("repair_resume").await?;
    let source = dbs.source_client().await?;
    let target = dbs.redshift_client().await?;
    source.batch_execute(&source_ddl(0)).await?;
    target.batch_execute(&target_ddl(0)).await?;
    fill_source(&source, ROWS, 0, 0).await?;
    // Progress is recorded after each move of 5,000 rows; the rate limit (averaged over the
    // run) keeps the repair going long enough to be killed midway.
    let config = config_text(
        &dbs,
        None,
        "",
        &format!(
            "{TABLES}[remediator]\ninsert_batch_rows = 2500\nrepair_move_rows = 5000\nrepair_rows_per_second = 40000\n"
        ),
    );
    let args = [
        "run",
        "missing_rows",
        "--table",
        "public.orders",
        "--from-id",
        "1",
        "--to-id",
        &ROWS.to_string(),
    ];
    harness::ensure_test_credentials();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("dmsguard.toml");
    std::fs::write(&path, &config)?;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dmsguard-remediator"))
        .arg("--config")
        .arg(&path)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // Killed once at least two moves are recorded.
    let waited = eventually(
        "the repair records progress",
        Duration::from_secs(60),
        || async { Ok(recorded(&dbs).await?.filter(|(done, _)| *done >= 20_000)) },
    )
    .await;
    child.kill()?; // SIGKILL
    child.wait()?;
    waited?;
    let (done_through, inserted_before) = recorded(&dbs).await?.expect("progress recorded");
    let (rows, distinct) = counts(&target).await?;
    assert!(
        done_through < ROWS && rows < ROWS,
        "killed midway: progress {done_through}, {rows} rows"
    );
    assert_eq!(rows, distinct, "no row twice");
    assert!(
        rows >= done_through && inserted_before == done_through,
        "every id up to the recorded progress is in the target: {rows} rows, progress {done_through}, {inserted_before} inserted"
    );

    // The next run continues after the recorded progress and completes the window.
    let out = run_binary(&config, &args)?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("outcome: succeeded"), "{stdout}");
    assert_eq!(counts(&target).await?, (ROWS, ROWS), "every row once");
    let ledger = dbs.source_client().await?;
    let details: serde_json::Value = ledger
        .query_one(
            "SELECT details FROM dmsguard.jobs WHERE state = 'succeeded' ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(details["resumed_from"], done_through + 1, "{details}");
    assert_eq!(
        details["searched"]["from"],
        done_through + 1,
        "only the ids after the progress are read again: {details}"
    );
    assert_eq!(details["missing"]["count"], ROWS - rows, "{details}");
    assert_eq!(details["inserted"], ROWS - rows, "{details}");
    assert_eq!(
        recorded(&dbs).await?,
        None,
        "a finished repair forgets its progress"
    );
    // Every column as DMS writes it, on a spread of ids before and after the kill.
    let sample: Vec<i64> = (1..=ROWS).step_by(499).chain([ROWS]).collect();
    assert_target_equals_source(&source, &target, &sample, 0).await?;
    drop((source, target, ledger));
    dbs.drop().await
}
