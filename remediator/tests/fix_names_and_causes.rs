//! `missing_rows` through the `dmsguard-remediator` binary on the lab's PostgreSQL
//! (`source tests/lab/env.sh` first), for what a name or a failure must carry: a table whose
//! name needs quoting is configured, named on the CLI and repaired; a repair against a target
//! table that does not exist fails with the server's own message and SQLSTATE in the ledger,
//! the CLI and the logs, never a bare "db error" (the preflight gate refuses it first with the
//! same message; `--skip-preflight` reaches the fix).

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

    let args = [
        "run",
        "missing_rows",
        "--table",
        "public.orders",
        "--from-id",
        "1",
        "--to-id",
        "20",
    ];
    let cause = "relation \"public.absent_orders\" does not exist (SQLSTATE 42P01)";
    // The preflight gate refuses the run first, with the same cause.
    let out = run_binary(&config, &args)?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("outcome: refused") && stdout.contains(cause),
        "{stdout}"
    );
    // Past the gate, the fix itself fails with it.
    let out = run_binary(&config, &[&args[..], &["--skip-preflight"]].concat())?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
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
        .query_one(
            "SELECT outcome, error FROM dmsguard.jobs ORDER BY id DESC LIMIT 1",
            &[],
        )
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

/// Source and target of a table whose name needs quoting, with a column that does too.
const QUOTED_SOURCE_DDL: &str = "CREATE TABLE public.\"Subscriber Events\" (\n\
       id bigint PRIMARY KEY,\n\
       created_at timestamptz NOT NULL,\n\
       \"Kind\" text,\n\
       payload jsonb\n\
     );\n\
     INSERT INTO public.\"Subscriber Events\" \
       SELECT g, timestamptz '2026-01-02 00:00:00+00' + g * interval '1 minute', \
              CASE WHEN g % 3 = 0 THEN NULL ELSE 'kind \"' || g || '\"' END, \
              jsonb_build_object('g', g) \
       FROM generate_series(1, 30) g;";

const QUOTED_TARGET_DDL: &str = "CREATE TABLE public.\"Subscriber Events\" (\n\
       id bigint NOT NULL,\n\
       created_at timestamptz,\n\
       kind varchar(256),\n\
       payload varchar(65535)\n\
     );";

/// The table's rows as text, in id order; an independent comparison of both sides.
async fn quoted_rows(
    client: &tokio_postgres::Client,
    kind: &str,
) -> anyhow::Result<Vec<(i64, String, Option<String>, String)>> {
    Ok(client
        .query(
            &format!(
                "SELECT id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), {kind}, payload::text \
                 FROM public.\"Subscriber Events\" ORDER BY id"
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

#[tokio::test]
async fn a_table_whose_name_needs_quoting_is_configured_and_repaired() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("fix_quoted").await?;
    let source = dbs.source_client().await?;
    let target = dbs.redshift_client().await?;
    source.batch_execute(QUOTED_SOURCE_DDL).await?;
    target.batch_execute(QUOTED_TARGET_DDL).await?;
    // Copy every row as DMS would (text into varchar), then lose 4 of them (not the newest).
    let rows = source
        .query(
            "SELECT id, created_at, \"Kind\", payload::text FROM public.\"Subscriber Events\" ORDER BY id",
            &[],
        )
        .await?;
    for row in &rows {
        let (id, at, kind, payload): (i64, chrono::DateTime<chrono::Utc>, Option<String>, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        target
            .execute(
                "INSERT INTO public.\"Subscriber Events\" (id, created_at, kind, payload) VALUES ($1, $2, $3, $4)",
                &[&id, &at, &kind, &payload],
            )
            .await?;
    }
    target
        .execute(
            "DELETE FROM public.\"Subscriber Events\" WHERE id IN (3, 4, 17, 25)",
            &[],
        )
        .await?;
    // Written with an upper-case schema: unquoted parts fold to lower case.
    let config = config_text(
        &dbs,
        None,
        "",
        "[[tables]]\nsource = 'PUBLIC.\"Subscriber Events\"'\nday_column = \"created_at\"\n",
    );

    let out = run_binary(
        &config,
        &[
            "run",
            "missing_rows",
            "--table",
            "public.\"Subscriber Events\"",
            "--from-id",
            "1",
            "--to-id",
            "30",
        ],
    )?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Missing ids (4): 3, 4, 17, 25."),
        "{stdout}"
    );
    assert!(
        stdout.contains("INSERT INTO \"public\".\"Subscriber Events\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("4 found, 4 inserted, 0 already present"),
        "{stdout}"
    );
    let expected = quoted_rows(&source, "\"Kind\"").await?;
    assert_eq!(expected.len(), 30);
    assert_eq!(quoted_rows(&target, "kind").await?, expected);

    // The job's target is the canonical name, whichever way it was written.
    let ledger = dbs.source_client().await?;
    let key: String = ledger
        .query_one("SELECT target FROM dmsguard.jobs", &[])
        .await?
        .get(0);
    assert_eq!(key, "public.\"Subscriber Events\"");

    // Unquoted, the name is refused with the reason.
    let unquoted = config_text(
        &dbs,
        None,
        "",
        "[[tables]]\nsource = \"public.Subscriber Events\"\n",
    );
    let out = run_binary(&unquoted, &["--check-config"])?;
    let (stdout, stderr) = text(&out);
    assert_ne!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("tables[0].source") && stderr.contains("double quotes"),
        "{stderr}"
    );
    drop((source, target, ledger));
    dbs.drop().await
}
