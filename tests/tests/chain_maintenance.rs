//! F3 through the whole chain: the Redshift cluster reports maintenance starting within five
//! minutes (`NextMaintenanceWindowStartTime`); the exporter reports the seconds until it,
//! Prometheus fires `RedshiftMaintenanceImminent` (the real rule), Alertmanager routes it to the
//! remediator, the `maintenance` fix stops the task and schedules its resume for the window's
//! end plus the margin; the alert resolves when the window starts, the resume runs after the
//! window, replication catches up and the target equals the source.

mod chain_support;

use std::time::Duration;

use chain_support::{ChainLab, CLUSTER, TASK};
use chrono::Utc;
use dmsguard_lab::harness::eventually;
use dmsguard_lab::simulator::Fault;

/// The cluster's weekly window lasts a minute (`chain_support::create_cluster`).
const WINDOW: chrono::Duration = chrono::Duration::seconds(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_pause_over_the_maintenance_window_through_the_chain() -> anyhow::Result<()> {
    let lab = ChainLab::start(
        "chain_f3",
        |_| {},
        |spec| {
            spec.cluster_identifier = Some(CLUSTER.to_owned());
            spec.remediator_settings = "maintenance_margin = \"5s\"\n".to_owned();
        },
    )
    .await?;
    assert_eq!(lab.sim.fault(), Fault::None);
    // Chosen once the stack is up: nothing before depends on how long start-up took.
    let start = lab.schedule_maintenance(Duration::from_secs(60)).await?;
    lab.step(&format!("maintenance scheduled at {start}"));

    let alert = lab
        .stack
        .wait_alert_firing("RedshiftMaintenanceImminent", Duration::from_secs(60))
        .await?;
    lab.step("RedshiftMaintenanceImminent firing");
    assert!(alert.value.parse::<f64>()? <= 300.0, "{alert:?}");
    let job = lab
        .stack
        .wait_job(
            "maintenance",
            "succeeded",
            lab.after_restart(Duration::from_secs(60)),
        )
        .await?;
    lab.step("maintenance job succeeded: task stopped");
    assert_eq!(
        job.alertname.as_deref(),
        Some("RedshiftMaintenanceImminent")
    );
    assert_eq!(
        job.details.as_ref().map(|d| d["stopped"].clone()),
        Some(serde_json::json!([TASK])),
        "{job:?}"
    );
    assert!(
        job.finished_at.expect("a finished job") < start,
        "the task stopped before the window: {job:?}"
    );
    eventually(
        "the simulator to see the stop",
        lab.after_restart(Duration::from_secs(10)),
        || async { Ok((lab.sim.stats().task(TASK).unwrap().status == "stopped").then_some(())) },
    )
    .await?;
    let steps = lab.stack.scheduled_steps().await?;
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert_eq!(steps[0].state, "pending");
    assert_eq!(steps[0].tasks, vec![TASK.to_owned()]);

    lab.stack
        .wait_alert_resolved("RedshiftMaintenanceImminent", Duration::from_secs(120))
        .await?;
    // The example routing also tells people (`continue: true` on the remediator's route).
    for status in ["firing", "resolved"] {
        lab.stack
            .wait_oncall(
                "RedshiftMaintenanceImminent",
                status,
                Duration::from_secs(30),
            )
            .await?;
    }
    lab.step("RedshiftMaintenanceImminent resolved");
    assert!(Utc::now() >= start, "resolved when the window started");
    lab.stack
        .wait_value(
            "dmsguard_redshift_maintenance_active",
            Duration::from_secs(10),
            |v| v == 1.0,
        )
        .await?;

    let step = eventually(
        "the resume step done",
        lab.after_restart(Duration::from_secs(120)),
        || async {
            let steps = lab.stack.scheduled_steps().await?;
            Ok(steps.into_iter().find(|s| s.state == "done"))
        },
    )
    .await?;
    lab.step("resume step done");
    assert!(
        step.finished_at.unwrap() >= start + WINDOW,
        "resumed after the window ended: {step:?}"
    );
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
            Ok((task.status == "running" && task.restarts == 1).then_some(()))
        },
    )
    .await?;
    assert_eq!(lab.job_count("maintenance").await?, 1, "one job");
    lab.assert_target_equals_source().await?;
    lab.step("target equals source");
    lab.finish().await
}
