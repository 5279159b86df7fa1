//! F4 through the whole chain: DMS silently drops rows created yesterday (UTC), among them the
//! day's last rows, and nothing writes to the table afterwards; the exporter's gap finder counts
//! them (its frontier follows replication progress, not the target's newest id, so the quiet
//! table's last rows count too), Prometheus fires `RedshiftMissingRows` (the real rule, window
//! `yesterday`), Alertmanager routes it to the remediator, the `missing_rows` fix inserts the
//! rows from the source, the count goes back to 0, the alert resolves and the target equals
//! the source row for row.
//!
//! The stack's calendar (`[clock] start`) shows noon when it starts, so "yesterday" is the same
//! day for the seed rows, the exporter and the fix whatever the time of day the test runs.

mod chain_support;

use std::time::Duration;

use chain_support::{ChainLab, TABLE};
use chrono::{Duration as Days, NaiveTime, Utc};
use dmsguard_lab::harness::eventually;
use dmsguard_lab::simulator::{Fault, HotRows, Workload, WorkloadConfig};

const MISSING_YESTERDAY: &str =
    "dmsguard_table_missing_ids{table=\"public.orders\",window=\"yesterday\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_missing_yesterday_are_inserted_through_the_chain() -> anyhow::Result<()> {
    // Yesterday is a finished day: its rows are written in one short burst (dated yesterday
    // between 11:00 and 12:00 UTC) while DMS drops some, then nothing writes to it again.
    // A workload writing yesterday's rows all along would keep rows in flight, which the gap
    // finder rightly counts as missing until they arrive.
    let now = Utc::now();
    let noon = now
        .date_naive()
        .and_time(NaiveTime::from_hms_opt(12, 0, 0).expect("noon"))
        .and_utc();
    // Rows dated yesterday noon on the stack's calendar, then a few seconds later each.
    let backdate = (now - (noon - Days::days(1))).to_std()?;
    let lab = ChainLab::start(
        "chain_f4",
        |sim| sim.rate = 0,
        |spec| spec.clock_start = Some(noon),
    )
    .await?;
    lab.stack
        .wait_value(MISSING_YESTERDAY, Duration::from_secs(30), |v| v == 0.0)
        .await?;

    lab.step("injecting drop_rows:10 and writing yesterday's rows");
    lab.sim.set_fault(Fault::DropRows { every: 10 });
    let mut burst = WorkloadConfig::new(lab.dbs.source.clone(), lab.sim.config().tables(), 400);
    burst.created_age = backdate;
    let burst = Workload::start(burst, HotRows::default()).await?;
    eventually("rows dropped", Duration::from_secs(30), || async {
        Ok((lab.sim.stats().dropped_ids().len() >= 5).then_some(()))
    })
    .await?;
    let written = burst.stop().await?;
    lab.sim.wait_caught_up(Duration::from_secs(60)).await?;

    // The day's last rows: DMS drops every one of them, and nothing is written afterwards.
    lab.step("dropping the day's last rows");
    let dropped_before = lab.sim.stats().dropped_ids().len();
    lab.sim.set_fault(Fault::DropRows { every: 1 });
    let mut last = WorkloadConfig::new(lab.dbs.source.clone(), lab.sim.config().tables(), 20);
    last.created_age = backdate;
    last.inserts_only = true;
    let last = Workload::start(last, HotRows::default()).await?;
    eventually("the last rows dropped", Duration::from_secs(30), || async {
        Ok((lab.sim.stats().dropped_ids().len() >= dropped_before + 3).then_some(()))
    })
    .await?;
    let written = written + last.stop().await?;
    lab.sim.wait_caught_up(Duration::from_secs(60)).await?;
    lab.sim.clear_fault();
    let diff = lab.sim.compare_source_target(TABLE).await?;
    let missing = diff.missing_in_target.len();
    lab.step(&format!(
        "{written} changes written, {missing} rows missing in the target"
    ));
    assert!(missing >= 4, "{diff:?}");
    assert!(diff.extra_in_target.is_empty() && diff.mismatched.is_empty());
    let newest: i64 = lab
        .dbs
        .source_client()
        .await?
        .query_one("SELECT max(id)::bigint FROM public.orders", &[])
        .await?
        .get(0);
    assert!(
        diff.missing_in_target.contains(&newest),
        "the table's newest row {newest} is among the missing: {diff:?}"
    );

    let alert = lab
        .stack
        .wait_alert_firing("RedshiftMissingRows", Duration::from_secs(90))
        .await?;
    lab.step("RedshiftMissingRows firing");
    assert_eq!(alert.label("table"), Some(TABLE));
    assert_eq!(alert.value.parse::<f64>()?, missing as f64);

    let job = lab
        .stack
        .wait_job("missing_rows", "succeeded", Duration::from_secs(60))
        .await?;
    lab.step("missing_rows job succeeded");
    assert_eq!(job.alertname.as_deref(), Some("RedshiftMissingRows"));
    assert!(job.target.contains(TABLE), "{job:?}");
    let inserted = job.details.as_ref().map(|d| d["inserted"].clone());
    assert_eq!(inserted, Some(serde_json::json!(missing)), "{job:?}");
    let diff = lab.sim.compare_source_target(TABLE).await?;
    assert!(
        diff.is_empty(),
        "target equals source after the fix: {diff:?}"
    );

    lab.stack
        .wait_value(MISSING_YESTERDAY, Duration::from_secs(30), |v| v == 0.0)
        .await?;
    lab.stack
        .wait_alert_resolved("RedshiftMissingRows", Duration::from_secs(60))
        .await?;
    // The example routing also tells people (`continue: true` on the remediator's route).
    for status in ["firing", "resolved"] {
        lab.stack
            .wait_oncall("RedshiftMissingRows", status, Duration::from_secs(30))
            .await?;
    }
    lab.step("RedshiftMissingRows resolved");
    assert_eq!(lab.job_count("missing_rows").await?, 1, "one job");
    lab.stack
        .wait_value(
            "dmsguard_remediator_jobs_total{fix=\"missing_rows\",outcome=\"succeeded\"}",
            Duration::from_secs(30),
            |v| v == 1.0,
        )
        .await?;
    lab.assert_target_equals_source().await?;
    lab.step("target equals source");
    lab.finish().await
}
