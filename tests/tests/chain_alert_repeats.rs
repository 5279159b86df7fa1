//! Alertmanager re-sending the same firing alert through the whole chain makes exactly one job:
//! `RedshiftMaintenanceImminent` fires from the real rule and keeps firing until the window
//! starts while Alertmanager repeats it every 2 s; the remediator stops the task once, every
//! repeat is counted as a duplicate, and after the window the task is resumed once.

mod chain_support;

use std::time::Duration;

use chain_support::{ChainLab, CLUSTER, TASK};
use dmsguard_lab::harness::eventually;
use dmsguard_lab::stack::AlertmanagerTiming;

const DUPLICATES: &str = "dmsguard_remediator_webhooks_total{result=\"duplicate\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeated_alert_makes_one_job_through_the_chain() -> anyhow::Result<()> {
    let lab = ChainLab::start(
        "chain_repeat",
        |_| {},
        |spec| {
            spec.cluster_identifier = Some(CLUSTER.to_owned());
            spec.remediator_settings = "maintenance_margin = \"2s\"\n".to_owned();
            spec.alertmanager = AlertmanagerTiming {
                group_wait: Duration::from_secs(1),
                group_interval: Duration::from_secs(1),
                repeat_interval: Duration::from_secs(2),
            };
        },
    )
    .await?;
    // Chosen once the stack is up: the alert fires at once and stays firing for a minute.
    let start = lab.schedule_maintenance(Duration::from_secs(60)).await?;
    lab.stack
        .wait_alert_firing("RedshiftMaintenanceImminent", Duration::from_secs(60))
        .await?;
    lab.step("RedshiftMaintenanceImminent firing");
    let job = lab
        .stack
        .wait_job(
            "maintenance",
            "succeeded",
            lab.after_restart(Duration::from_secs(60)),
        )
        .await?;
    lab.step("maintenance job succeeded");
    let after_job = lab.stack.query_value(DUPLICATES).await?.unwrap_or(0.0);
    lab.stack
        .wait_value(DUPLICATES, Duration::from_secs(30), |v| {
            v >= after_job + 3.0
        })
        .await?;
    lab.step("three more repeats after the job");
    assert!(chrono::Utc::now() < start, "the alert was still firing");
    lab.stack
        .wait_alert_firing("RedshiftMaintenanceImminent", Duration::from_secs(1))
        .await?;
    let jobs = lab.stack.jobs().await?;
    assert_eq!(jobs.len(), 1, "one job for the repeated alert: {jobs:?}");
    assert_eq!(jobs[0].id, job.id);
    let stats = lab.sim.stats();
    assert_eq!(stats.task(TASK).unwrap().restarts, 0, "not resumed yet");

    let step = eventually(
        "the resume step done",
        lab.after_restart(Duration::from_secs(150)),
        || async {
            let steps = lab.stack.scheduled_steps().await?;
            Ok(steps.into_iter().find(|s| s.state == "done"))
        },
    )
    .await?;
    lab.step("task resumed after the window");
    assert_eq!(lab.stack.jobs().await?.len(), 1, "still one job");
    assert_eq!(lab.stack.scheduled_steps().await?.len(), 1);
    assert_eq!(
        step.result.as_deref(),
        Some(format!("Resumed {TASK}.").as_str())
    );
    eventually(
        "the task running again",
        lab.after_restart(Duration::from_secs(10)),
        || async {
            let stats = lab.sim.stats();
            let task = stats.task(TASK).unwrap();
            Ok((task.status == "running").then_some(()))
        },
    )
    .await?;
    assert_eq!(
        lab.sim.stats().task(TASK).unwrap().restarts,
        1,
        "stopped once, not again on repeats"
    );
    assert_eq!(
        lab.stack
            .query_value("dmsguard_remediator_webhooks_total{result=\"accepted\"}")
            .await?,
        Some(1.0)
    );
    lab.assert_target_equals_source().await?;
    lab.finish().await
}
