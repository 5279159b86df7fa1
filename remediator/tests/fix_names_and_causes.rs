//! `missing_rows` through the `dmsguard-remediator` binary on the lab's PostgreSQL
//! (`source tests/lab/env.sh` first), for what a name or a failure must carry: a table whose
//! name needs quoting is configured, named on the CLI and repaired; a repair against a target
//! table that does not exist fails with the server's own message and SQLSTATE in the ledger,
//! the CLI and the logs, never a bare "db error".

mod repair_lab;

use dmsguard_lab::harness::TestDatabases;
use repair_lab::*;

#[tokio::test]
async fn a_missing_target_table_fails_with_the_servers_message_everywhere() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("fix_cause").await?;
    let source = dbs.source_client().await?;
    source.batch_execute(&source_ddl(0)).await?;
    fill_source(&source, 20, 10, 0).await?;
    let config = config_text(
        &dbs,
        None,
        "",
        "[[tables]]\nsource = \"public.orders\"\ntarget = \"public.absent_orders\"\nday_column = \"created_at\"\n",
    );

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
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let cause = "relation \"public.absent_orders\" does not exist (SQLSTATE 42P01)";
    assert!(stdout.contains("outcome: failed"), "{stdout}");
    let error_line = stdout
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line:\n{stdout}"));
    assert!(error_line.contains(cause), "CLI: {error_line}");
    assert!(!error_line.contains("db error"), "CLI: {error_line}");
    let log_line = stderr
        .lines()
        .find(|l| l.contains("Job finished."))
        .unwrap_or_else(|| panic!("no job log line:\n{stderr}"));
    assert!(log_line.contains(cause), "log: {log_line}");
    assert!(!log_line.contains("db error"), "log: {log_line}");

    let ledger = dbs.source_client().await?;
    let row = ledger
        .query_one("SELECT outcome, error FROM dmsguard.jobs", &[])
        .await?;
    let (outcome, error): (Option<String>, Option<String>) = (row.get(0), row.get(1));
    assert_eq!(outcome.as_deref(), Some("failed"));
    let error = error.unwrap_or_default();
    assert!(error.contains(cause), "ledger: {error}");
    assert!(!error.contains("db error"), "ledger: {error}");

    // The job listing shows the same cause.
    let jobs = run_binary(&config, &["jobs"])?;
    let (listing, stderr) = text(&jobs);
    assert_eq!(jobs.status.code(), Some(0), "{listing}\n{stderr}");
    assert!(listing.contains(cause), "{listing}");
    drop((source, ledger));
    dbs.drop().await
}
