//! A task restarted with a backlog: while DMS catches up, the gap finder must not count a
//! single row as missing. No fault is injected, so every id is either applied or in flight;
//! a non-zero `dmsguard_table_missing_ids` would send the `missing_rows` fix to insert rows
//! DMS is about to apply (duplicates in Redshift, which enforces no key).
//!
//! What DMS publishes as `CDCLatencyTarget` in the first moments after a resume, before the
//! backlog reaches the target, is not documented; the simulator keeps publishing the latency
//! of the last batch it applied before the stop, a plausible worst case. The exporter
//! scraped directly (every probe result, not Prometheus' samples) must stay at 0 throughout,
//! and the frontier must move past the restart once DMS has caught up.

mod chain_support;

use std::time::Duration;

use aws_sdk_databasemigration::error::DisplayErrorContext;
use aws_sdk_databasemigration::types::StartReplicationTaskTypeValue;
use chain_support::{ChainLab, TABLE, TASK};
use dmsguard_lab::harness::{aws_config, eventually, LabControl, Violation};
use dmsguard_pipeline::aws::AwsClients;

/// Backlog built while the task is stopped, in source rows.
const BACKLOG_ROWS: i64 = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_row_counts_as_missing_while_a_restarted_task_catches_up() -> anyhow::Result<()> {
    // DMS applies the backlog in batches of at most 200 changes every 500 ms, so catching up
    // takes several CloudWatch periods (5 s here) and outlasts the simulator's 5 s of blind
    // latency after the resume.
    let lab = ChainLab::start(
        "chain_backlog",
        |sim| {
            sim.rate = 100;
            sim.batch.max_changes = 200;
        },
        |_| {},
    )
    .await?;
    let aws = AwsClients::new(&aws_config(&lab.moto.url())).await;
    let arn = lab.sim.task_arn(TASK).expect("the task's ARN");
    let source = lab.dbs.source_client().await?;
    let target = lab.dbs.redshift_client().await?;
    let source_max = || async {
        let row = source
            .query_one(
                "SELECT coalesce(max(id), 0)::bigint FROM public.orders",
                &[],
            )
            .await?;
        anyhow::Ok(row.get::<_, i64>(0))
    };
    let target_max = || async {
        let row = target
            .query_one(
                "SELECT coalesce(max(id), 0)::bigint FROM public.orders",
                &[],
            )
            .await?;
        anyhow::Ok(row.get::<_, i64>(0))
    };
    let http = reqwest::Client::new();
    let missing = || async {
        let page = http
            .get(format!("{}/metrics", lab.stack.exporter_url()))
            .send()
            .await?
            .text()
            .await?;
        let mut total = 0.0;
        let mut seen = false;
        for line in page.lines() {
            if line.starts_with("dmsguard_table_missing_ids{") && line.contains(TABLE) {
                seen = true;
                total += line
                    .rsplit(' ')
                    .next()
                    .unwrap_or("0")
                    .parse::<f64>()
                    .unwrap_or(f64::NAN);
            }
        }
        anyhow::Ok(seen.then_some(total))
    };
    eventually(
        "the gap finder to judge the table",
        Duration::from_secs(60),
        missing,
    )
    .await?;

    lab.step("stopping the task");
    aws.dms
        .stop_replication_task()
        .replication_task_arn(&arn)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(&e)))?;
    lab.wait_restarts(0).await?;
    // The stop is asynchronous (`stopping` first); a resume is refused until `stopped`.
    let control = LabControl::new(&lab.moto.url());
    eventually(
        "the task stopped",
        lab.after_restart(Duration::from_secs(10)),
        || async {
            let status = control.state().await?.tasks.get(TASK).cloned();
            Ok((status.as_deref() == Some("stopped")).then_some(()))
        },
    )
    .await?;
    let stopped_at = target_max().await?;
    eventually("a backlog to build", Duration::from_secs(120), || async {
        let (s, t) = (source_max().await?, target_max().await?);
        let m = missing().await?.unwrap_or(0.0);
        anyhow::ensure!(
            m == 0.0,
            Violation(format!(
                "{m} ids counted missing while the task was stopped"
            ))
        );
        Ok((s - t >= BACKLOG_ROWS).then_some(()))
    })
    .await?;
    let resumed_source_max = source_max().await?;
    lab.step(&format!(
        "resuming with ids {stopped_at}..{resumed_source_max} not applied"
    ));
    aws.dms
        .start_replication_task()
        .replication_task_arn(&arn)
        .start_replication_task_type(StartReplicationTaskTypeValue::ResumeProcessing)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(&e)))?;
    lab.wait_restarts(1).await?;

    // Until DMS has applied everything written before the resume, and a while after, every
    // probe result must count nothing missing.
    eventually("DMS to catch up the backlog", Duration::from_secs(180), || async {
        let m = missing().await?.unwrap_or(0.0);
        if m != 0.0 {
            return Err(Violation(format!(
                "{m} ids counted missing while the restarted task was catching up (target max id {})",
                target_max().await?
            ))
            .into());
        }
        Ok((target_max().await? >= resumed_source_max).then_some(()))
    })
    .await?;
    lab.step("backlog applied");
    // The frontier moves past the restart once the latency means something again: ids
    // written before the resume get judged (and none of them is missing).
    let frontier_id = || async {
        let page = http
            .get(format!("{}/metrics", lab.stack.exporter_url()))
            .send()
            .await?
            .text()
            .await?;
        let value = page
            .lines()
            .find(|l| l.starts_with("dmsguard_table_frontier_id{") && l.contains(TABLE))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok());
        anyhow::Ok(value)
    };
    eventually(
        "the frontier to pass the backlog",
        Duration::from_secs(90),
        || async {
            let m = missing().await?.unwrap_or(0.0);
            anyhow::ensure!(
                m == 0.0,
                Violation(format!("{m} ids counted missing after the catch-up"))
            );
            Ok(frontier_id()
                .await?
                .filter(|f| *f >= resumed_source_max as f64)
                .map(|_| ()))
        },
    )
    .await?;
    lab.step("frontier past the backlog");
    lab.assert_target_equals_source().await?;
    lab.finish().await
}
