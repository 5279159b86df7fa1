//! A repair's progress on `/metrics` while its job runs: the remediator serving webhooks (as
//! its least-privilege users) repairs 10,000 missing rows for a `RedshiftMissingRows` alert,
//! rate-limited by `repair_rows_per_second`; `dmsguard_remediator_repair_rows_total` counts
//! the rows as each batch commits and `dmsguard_remediator_repair_rows_remaining` falls to 0.

// Both set-ups include the alert-rule helpers; this test needs the repair lab's tables and the
// webhook support.
#[allow(clippy::duplicate_mod)]
mod repair_lab;
#[allow(clippy::duplicate_mod)]
mod support;

use std::time::Duration;

use dmsguard_lab::harness::eventually;
use support::{body, payload, rule_alert, Lab, Running, TOKEN};

const ROWS: i64 = 10_000;
const INSERTED: &str =
    "dmsguard_remediator_repair_rows_total{table=\"public.orders\",outcome=\"inserted\"}";
const PRESENT: &str =
    "dmsguard_remediator_repair_rows_total{table=\"public.orders\",outcome=\"already_present\"}";
const REMAINING: &str = "dmsguard_remediator_repair_rows_remaining{table=\"public.orders\"}";

#[tokio::test]
async fn repair_progress_is_on_metrics_while_the_job_runs() -> anyhow::Result<()> {
    let lab = Lab::start("repair_metrics", &[]).await?;
    let source = lab.dbs.source_client().await?;
    let target = lab.dbs.redshift_client().await?;
    source.batch_execute(&repair_lab::source_ddl(0)).await?;
    target.batch_execute(&repair_lab::target_ddl(0)).await?;
    // Every row created yesterday (the alert's window); the target has none of them.
    repair_lab::fill_source(&source, ROWS, ROWS, 0).await?;
    let config = lab.config(&format!(
        "[[tables]]\nsource = \"public.orders\"\nday_column = \"created_at\"\n\n{}{}",
        repair_lab::FRONTIER,
        support::remediator_section(
            "127.0.0.1:0",
            "insert_batch_rows = 1000\nrepair_move_rows = 2000\nrepair_rows_per_second = 4000\n"
        )
    ));
    let app = Running::spawn(config).await?;
    // The configured table's series exist before any repair, at 0.
    assert_eq!(app.metric(REMAINING).await?, 0.0);
    assert_eq!(app.metric(INSERTED).await?, 0.0);

    let at = chrono::Utc::now().to_rfc3339();
    let alert = body(&payload(vec![rule_alert(
        "RedshiftMissingRows",
        &[("table", "public.orders"), ("window", "yesterday")],
        "fp-repair-metrics",
        &at,
    )]));
    let (status, text) = app.post(Some(TOKEN), alert).await?;
    assert_eq!(status, 202, "{text}");

    // Midway: some rows counted as inserted, the rest still remaining, adding up.
    let (inserted, remaining) = eventually(
        "the repair's progress on /metrics",
        Duration::from_secs(60),
        || async {
            let inserted = app.metric(INSERTED).await?;
            let remaining = app.metric(REMAINING).await?;
            Ok((inserted > 0.0 && remaining > 0.0).then_some((inserted, remaining)))
        },
    )
    .await?;
    assert!(
        inserted + remaining <= ROWS as f64 && remaining < ROWS as f64,
        "inserted {inserted}, remaining {remaining}"
    );
    // Counted per committed move of 2,000 rows.
    assert_eq!(inserted % 2000.0, 0.0, "inserted {inserted}");

    let jobs = lab.finished_jobs(1).await?;
    let outcome: Option<String> = jobs[0].get("outcome");
    assert_eq!(outcome.as_deref(), Some("succeeded"));
    assert_eq!(app.metric(INSERTED).await?, ROWS as f64);
    assert_eq!(app.metric(PRESENT).await?, 0.0);
    assert_eq!(app.metric(REMAINING).await?, 0.0);
    let count: i64 = target
        .query_one("SELECT count(DISTINCT id) FROM public.orders", &[])
        .await?
        .get(0);
    assert_eq!(count, ROWS);
    app.stop().await?;
    drop((source, target));
    lab.dbs.drop().await
}
