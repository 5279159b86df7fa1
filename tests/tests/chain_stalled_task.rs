//! F5 through the whole chain: a task stalls while DMS says running; the exporter sees latency
//! rise with no statements, Prometheus fires `DMSTaskStalled` (the real rule), Alertmanager
//! routes it to the remediator, the `stalled_task` fix restarts the task, replication resumes,
//! the alert resolves and the target equals the source.

mod chain_support;

use std::time::Duration;

use chain_support::{ChainLab, TASK};
use dmsguard_lab::simulator::Fault;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_task_is_restarted_through_the_chain() -> anyhow::Result<()> {
    let lab = ChainLab::start("chain_f5", |_| {}, |_| {}).await?;
    assert!(
        lab.stack.jobs().await?.is_empty(),
        "no job before the fault"
    );

    lab.step("injecting stall");
    lab.sim.set_fault(Fault::Stall);
    let alert = lab
        .stack
        .wait_alert_firing("DMSTaskStalled", Duration::from_secs(120))
        .await?;
    lab.step("DMSTaskStalled firing");
    assert_eq!(alert.label("task"), Some(TASK));
    assert_eq!(lab.sim.stats().task(TASK).unwrap().restarts, 0);

    let job = lab
        .stack
        .wait_job("stalled_task", "succeeded", Duration::from_secs(60))
        .await?;
    lab.step("stalled_task job succeeded");
    assert_eq!(job.alertname.as_deref(), Some("DMSTaskStalled"));
    assert!(job.target.contains(TASK), "{job:?}");
    lab.wait_restarts(1).await?;
    assert_eq!(
        lab.sim.stats().task(TASK).unwrap().blocked,
        None,
        "the restart cleared the stall"
    );

    lab.stack
        .wait_alert_resolved("DMSTaskStalled", Duration::from_secs(90))
        .await?;
    // The example routing also tells people (`continue: true` on the remediator's route).
    for status in ["firing", "resolved"] {
        lab.stack
            .wait_oncall("DMSTaskStalled", status, Duration::from_secs(30))
            .await?;
    }
    lab.step("DMSTaskStalled resolved");
    lab.stack
        .wait_value(
            "dmsguard_remediator_jobs_total{fix=\"stalled_task\",outcome=\"succeeded\"}",
            Duration::from_secs(30),
            |v| v == 1.0,
        )
        .await?;
    assert_eq!(lab.job_count("stalled_task").await?, 1, "one job");
    lab.assert_target_equals_source().await?;
    lab.step("target equals source");
    lab.finish().await
}
