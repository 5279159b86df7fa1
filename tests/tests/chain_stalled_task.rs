//! F5 through the whole chain: a task stalls while DMS says running; the exporter sees latency
//! rise with no statements, Prometheus fires `DMSTaskStalled` (the real rule), Alertmanager
//! routes it to the remediator, the `stalled_task` fix restarts the task, replication resumes,
//! the alert resolves and the target equals the source.

mod chain_support;

use std::time::Duration;

use chain_support::{ChainLab, TASK};
use dmsguard_lab::simulator::{Fault, SimTable, SimTask};

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
        .wait_job(
            "stalled_task",
            "succeeded",
            lab.after_restart(Duration::from_secs(60)),
        )
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
        .wait_alert_resolved("DMSTaskStalled", lab.after_restart(Duration::from_secs(90)))
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

/// The second task of the two-task scenario and its table.
const TASK2: &str = "lab-task-2";
const TABLE2: &str = "public.customers";

/// Two tasks on one instance, each with its own table; `lab-task-2` stalls while `lab-task`
/// keeps applying. Statements carry their table's task, so the real rule fires for
/// `lab-task-2` alone, and only `lab-task-2` is restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_stalled_task_among_two_is_restarted_alone() -> anyhow::Result<()> {
    let lab = ChainLab::start(
        "chain_f5_two",
        |sim| {
            sim.tasks.push(SimTask {
                name: TASK2.to_owned(),
                tables: vec![SimTable::new(TABLE2).expect("a valid table name")],
            });
        },
        |_| {},
    )
    .await?;
    lab.stack
        .wait_value(
            &format!("sum(dmsguard_redshift_dms_statements_total{{task=\"{TASK2}\"}})"),
            Duration::from_secs(60),
            |v| v > 0.0,
        )
        .await?;
    lab.step("both tasks apply");

    lab.sim.stall_task(TASK2)?;
    lab.step("lab-task-2 stalled");
    let alert = lab
        .stack
        .wait_alert_firing("DMSTaskStalled", Duration::from_secs(120))
        .await?;
    lab.step("DMSTaskStalled firing");
    assert_eq!(alert.label("task"), Some(TASK2), "{alert:?}");

    let job = lab
        .stack
        .wait_job(
            "stalled_task",
            "succeeded",
            lab.after_restart(Duration::from_secs(60)),
        )
        .await?;
    lab.step("stalled_task job succeeded");
    assert!(job.target.contains(TASK2), "{job:?}");
    lab.wait_task_restarts(TASK2, 1).await?;
    lab.stack
        .wait_alert_resolved("DMSTaskStalled", lab.after_restart(Duration::from_secs(90)))
        .await?;
    lab.step("DMSTaskStalled resolved");

    // The healthy task never fired and was never touched. (Under a load of 20 on two cores a
    // healthy task's apply can pause for the rule's scaled ten seconds and the alert go
    // pending for an evaluation; its `for` is what keeps that from acting.)
    let stats = lab.sim.stats();
    let healthy = stats.task(TASK).expect("lab-task");
    assert_eq!(healthy.restarts, 0, "{healthy:?}");
    assert_eq!(healthy.status, "running");
    assert_eq!(
        lab.stack
            .query_value(&format!(
                "count_over_time(ALERTS{{alertname=\"DMSTaskStalled\",alertstate=\"firing\",task=\"{TASK}\"}}[1h])"
            ))
            .await?,
        None,
        "DMSTaskStalled never fired for {TASK}"
    );
    let jobs = lab.stack.jobs().await?;
    assert_eq!(jobs.len(), 1, "one job: {jobs:?}");
    lab.assert_target_equals_source().await?;
    lab.step("both targets equal their sources");
    lab.finish().await
}
