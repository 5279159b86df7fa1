//! Exactly the grants of `docs/grants.md` suffice, through the `dmsguard-remediator` binary on
//! the lab's PostgreSQL (`source tests/lab/env.sh` first): with one grant taken away the fix it
//! serves fails with the server's own message and SQLSTATE, changing nothing (the preflight
//! gate refuses it first, naming the check, where a check covers the grant; `--skip-preflight`
//! reaches the fix); with the documented grants (the ledger included) the same repair inserts
//! every missing row.

mod repair_lab;

use dmsguard_lab::harness::{TestDatabases, REMEDIATOR_USER};
use repair_lab::*;

/// The CLI's `error: ` line of a failed job, asserting the exit code and outcome.
fn failed_with(out: &std::process::Output) -> String {
    let (stdout, stderr) = text(out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("outcome: failed"), "{stdout}");
    stdout
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line:\n{stdout}\n{stderr}"))
        .to_owned()
}

#[tokio::test]
async fn each_documented_grant_of_the_repair_is_needed_and_its_absence_is_named(
) -> anyhow::Result<()> {
    let dbs = TestDatabases::create("fix_grants").await?;
    let source = dbs.source_client().await?;
    let target = dbs.redshift_client().await?;
    source.batch_execute(&source_ddl(0)).await?;
    target.batch_execute(&target_ddl(0)).await?;
    fill_source(&source, 20, 10, 0).await?;
    let config = config_text(
        &dbs,
        None,
        "",
        "[[tables]]\nsource = \"public.orders\"\nday_column = \"created_at\"\n",
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
    // Past the preflight gate, to see what the fix itself says.
    let repair = || run_binary(&config, &[&args[..], &["--skip-preflight"]].concat());
    // The gate's refusal names the check that fails, before the fix runs.
    let refused_naming = |check: &str| -> anyhow::Result<()> {
        let out = run_binary(&config, &args)?;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
        assert!(stdout.contains("outcome: refused"), "{stdout}");
        assert!(stdout.contains(&format!("[FAIL] {check}")), "{stdout}");
        Ok(())
    };
    let denied = "permission denied for table orders (SQLSTATE 42501)";

    // Without INSERT on the target table (redshift-remediator's GRANT INSERT).
    target
        .batch_execute(&format!(
            "REVOKE INSERT ON public.orders FROM {REMEDIATOR_USER}"
        ))
        .await?;
    refused_naming("target table public.orders insert")?;
    let error = failed_with(&repair()?);
    assert!(error.contains(denied), "no INSERT on the target: {error}");
    assert!(error.contains("public.orders"), "names the table: {error}");
    assert!(target_ids(&target).await?.is_empty(), "nothing inserted");
    target
        .batch_execute(&format!(
            "GRANT INSERT ON public.orders TO {REMEDIATOR_USER}"
        ))
        .await?;

    // Without SELECT on the source table (postgresql-remediator's GRANT SELECT).
    source
        .batch_execute(&format!(
            "REVOKE SELECT ON public.orders FROM {REMEDIATOR_USER}"
        ))
        .await?;
    refused_naming("source table public.orders")?;
    let error = failed_with(&repair()?);
    assert!(error.contains(denied), "no SELECT on the source: {error}");
    assert!(target_ids(&target).await?.is_empty(), "nothing inserted");
    source
        .batch_execute(&format!(
            "GRANT SELECT ON public.orders TO {REMEDIATOR_USER}"
        ))
        .await?;

    // Without UPDATE on the target (the lab's stand-in for what Redshift's LOCK needs): the
    // LOCK before the insert is refused.
    target
        .batch_execute(&format!(
            "REVOKE UPDATE ON public.orders FROM {REMEDIATOR_USER}"
        ))
        .await?;
    let error = failed_with(&repair()?);
    assert!(error.contains(denied), "no UPDATE for LOCK: {error}");
    assert!(target_ids(&target).await?.is_empty(), "nothing inserted");
    target
        .batch_execute(&format!(
            "GRANT UPDATE ON public.orders TO {REMEDIATOR_USER}"
        ))
        .await?;

    // Exactly the documented grants again: the same repair, gate included, inserts all 20 rows.
    let out = run_binary(&config, &args)?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(target_ids(&target).await?, (1..=20).collect::<Vec<i64>>());
    let superuser: bool = source
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = $1",
            &[&REMEDIATOR_USER],
        )
        .await?
        .get(0);
    assert!(!superuser);
    drop((source, target));
    dbs.drop().await
}
