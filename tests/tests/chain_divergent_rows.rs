//! Lost UPDATEs and DELETEs through the whole chain, in one lab run: DMS (the simulator) skips
//! some UPDATEs (`skip_update`), then some DELETEs (`skip_delete`), silently; the exporter's
//! content comparison of the table (`divergent_rows = true`, `delete_extra = true`) counts the
//! stale rows once two comparisons past the replication latency saw them, Prometheus fires
//! `RedshiftDivergentRows` (the real rule, timings scaled), Alertmanager routes it to the
//! remediator, the `divergent_rows` fix rewrites the stale rows and deletes the extra ids, the
//! alert resolves, and the target equals the source column for column (compared in SQL on both
//! sides by the simulator's comparison, not by the code under test).

mod chain_support;

use std::time::Duration;

use chain_support::{ChainLab, TABLE};
use dmsguard_lab::harness::{apply_grants, eventually};
use dmsguard_lab::simulator::Fault;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skipped_updates_and_deletes_are_repaired_through_the_chain() -> anyhow::Result<()> {
    let lab = ChainLab::start(
        "chain_divergent",
        |_| {},
        |spec| spec.table_settings = "divergent_rows = true\ndelete_extra = true\n".to_owned(),
    )
    .await?;
    // The grant docs/grants.md asks for on tables that enable the fix.
    apply_grants(
        &lab.dbs.redshift_client().await?,
        &["redshift-remediator-divergent-rows"],
        &[("<table>", TABLE)],
    )
    .await?;

    lab.step("injecting skip_update:3, then skip_delete:3");
    lab.sim.set_fault(Fault::SkipUpdate { every: 3 });
    eventually("updates skipped", Duration::from_secs(30), || async {
        Ok((lab.sim.stats().skipped_updates().len() >= 3).then_some(()))
    })
    .await?;
    lab.sim.set_fault(Fault::SkipDelete { every: 3 });
    eventually("deletes skipped", Duration::from_secs(30), || async {
        Ok((lab.sim.stats().skipped_deletes().len() >= 2).then_some(()))
    })
    .await?;
    lab.sim.clear_fault();
    lab.sim.stop_workload().await?;
    lab.sim.wait_caught_up(Duration::from_secs(60)).await?;
    let diff = lab.sim.compare_source_target(TABLE).await?;
    lab.step(&format!(
        "{} stale rows, {} extra ids in the target",
        diff.mismatched.len(),
        diff.extra_in_target.len()
    ));
    assert!(!diff.mismatched.is_empty(), "{diff:?}");
    assert!(!diff.extra_in_target.is_empty(), "{diff:?}");
    assert!(diff.missing_in_target.is_empty(), "{diff:?}");

    let alert = lab
        .stack
        .wait_alert_firing("RedshiftDivergentRows", Duration::from_secs(90))
        .await?;
    lab.step("RedshiftDivergentRows firing");
    assert_eq!(alert.label("table"), Some(TABLE));
    assert_eq!(alert.value.parse::<f64>()?, diff.mismatched.len() as f64);

    let job = lab
        .stack
        .wait_job("divergent_rows", "succeeded", Duration::from_secs(90))
        .await?;
    lab.step("divergent_rows job succeeded");
    assert_eq!(job.alertname.as_deref(), Some("RedshiftDivergentRows"));
    let details = job.details.clone().unwrap_or_default();
    assert_eq!(
        details["rewritten"],
        serde_json::json!(diff.mismatched.len()),
        "{job:?}"
    );
    assert_eq!(
        details["extra_deleted"],
        serde_json::json!(diff.extra_in_target.len()),
        "{job:?}"
    );
    // The rows are counted on the remediator's /metrics as they are, by outcome.
    let metrics = reqwest::get(format!("{}/metrics", lab.stack.remediator_url()))
        .await?
        .text()
        .await?;
    let rows = |outcome: &str| -> Option<f64> {
        let series = format!(
            "dmsguard_remediator_repair_rows_total{{table=\"{TABLE}\",outcome=\"{outcome}\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse().ok())
    };
    assert_eq!(
        rows("rewritten"),
        Some(diff.mismatched.len() as f64),
        "{metrics}"
    );
    assert_eq!(
        rows("extra_deleted"),
        Some(diff.extra_in_target.len() as f64),
        "{metrics}"
    );
    assert_eq!(rows("failed"), Some(0.0), "{metrics}");
    let after = lab.sim.compare_source_target(TABLE).await?;
    assert!(
        after.is_empty(),
        "target equals source after the fix: {after:?}"
    );

    lab.stack
        .wait_alert_resolved("RedshiftDivergentRows", Duration::from_secs(60))
        .await?;
    lab.step("RedshiftDivergentRows resolved");
    let jobs: Vec<_> = lab
        .stack
        .jobs()
        .await?
        .into_iter()
        .filter(|j| j.fix == "divergent_rows")
        .collect();
    assert_eq!(jobs.len(), 1, "one job: {jobs:#?}");
    lab.assert_target_equals_source().await?;
    lab.step("target equals source");
    lab.finish().await
}
