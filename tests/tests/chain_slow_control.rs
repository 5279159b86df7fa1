//! The whole chain (exporter -> Prometheus -> Alertmanager -> remediator webhook -> fix) on a
//! DMS control plane with realistic timings: `StopReplicationTask` leaves the task `stopping`
//! and `StartReplicationTask` leaves it `starting` for 30 s each (`LabControl::set_dms_timing`,
//! override with `DMSGUARD_TEST_DMS_SECONDS`), as the DMS API reference describes the statuses
//! (<https://docs.aws.amazon.com/dms/latest/APIReference/API_ReplicationTask.html>). For F2
//! (memory) and F3 (maintenance): every task the fix stopped runs again at the end, its resume
//! obligation is settled `resumed`, and the time from the alert to the task running again is
//! printed (`alert -> running`).

mod chain_support;

use std::time::Duration;

use chain_support::{ChainLab, CLUSTER, INSTANCE, TASK};
use chrono::{DateTime, Utc};
use dmsguard_lab::harness::{eventually, LabControl};
use dmsguard_lab::simulator::Fault;

const FREEABLE: &str =
    "dmsguard_dms_instance_freeable_memory_bytes{replication_instance=\"lab-instance\"}";

/// How long a stop and a start take: 30 s each, or `DMSGUARD_TEST_DMS_SECONDS`.
fn dms_seconds() -> Duration {
    Duration::from_secs(
        std::env::var("DMSGUARD_TEST_DMS_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30),
    )
}

/// DMS applies a backlog in bounded batches (batch apply is bounded by `BatchApplyTimeoutMax`,
/// `BatchApplyMemoryLimit` and `BatchSplitSize`, "Change processing tuning settings",
/// <https://docs.aws.amazon.com/dms/latest/userguide/CHAP_Tasks.CustomizingTasks.TaskSettings.ChangeProcessingTuning.html>).
/// With the simulator's default (50 000 changes) the whole backlog of a pause of a minute and
/// more goes in one batch that takes over 10 s here; at the stack's time scale that is a
/// 10-minute silence, and `DMSTaskStalled` fires on the task that was just resumed.
fn bounded_batches(sim: &mut dmsguard_lab::simulator::SimConfig) {
    sim.batch.max_changes = 2_000;
}

/// Requires that only `fix` acted: no other fix took the pause or the catch-up for a fault.
async fn only_jobs_of(lab: &ChainLab, fix: &str) -> anyhow::Result<()> {
    let jobs = lab.stack.jobs().await?;
    let others: Vec<String> = jobs
        .iter()
        .filter(|j| j.fix != fix)
        .map(|j| format!("{} {} {:?} {:?}", j.id, j.fix, j.alertname, j.state))
        .collect();
    anyhow::ensure!(others.is_empty(), "other fixes acted: {others:?}");
    Ok(())
}

/// The task's status as the lab's DescribeReplicationTasks reports it.
async fn moto_status(control: &LabControl) -> anyhow::Result<String> {
    Ok(control
        .state()
        .await?
        .tasks
        .get(TASK)
        .cloned()
        .unwrap_or_default())
}

/// Waits until the lab reports the task `status`; returns when that was first seen.
async fn wait_moto_status(
    control: &LabControl,
    status: &str,
    within: Duration,
) -> anyhow::Result<DateTime<Utc>> {
    eventually(&format!("{TASK} {status} in moto"), within, || async {
        let now = moto_status(control).await?;
        Ok((now == status).then(Utc::now))
    })
    .await
}

/// The task's resume obligations in the ledger as (fix, state).
async fn obligations(lab: &ChainLab) -> anyhow::Result<Vec<(String, String)>> {
    let client = lab.dbs.source_client().await?;
    Ok(client
        .query(
            "SELECT fix, state FROM dmsguard.resume_obligations WHERE task = $1 ORDER BY id",
            &[&TASK],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// The stop went out (`stopping` seen), lasted about the configured time, then the start did.
fn report(
    fix: &str,
    alert_active: DateTime<Utc>,
    firing_seen: DateTime<Utc>,
    stopping_seen: DateTime<Utc>,
    running_again: DateTime<Utc>,
) {
    let secs = |d: chrono::Duration| d.num_milliseconds() as f64 / 1000.0;
    eprintln!(
        "{fix} with a {:?} stop and a {:?} start: alert active (Prometheus activeAt) -> running again {:.1} s; \
         firing seen -> running again {:.1} s; firing seen -> stop sent (stopping seen) {:.1} s",
        dms_seconds(),
        dms_seconds(),
        secs(running_again - alert_active),
        secs(running_again - firing_seen),
        secs(stopping_seen - firing_seen),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f2_restart_with_30_s_stops_and_starts_through_the_chain() -> anyhow::Result<()> {
    let slow = dms_seconds();
    let lab = ChainLab::start("chain_slow_f2", bounded_batches, |spec| {
        // The fix waits longer than a stop or a start takes.
        spec.task_state_timeout = slow * 3;
    })
    .await?;
    let control = LabControl::new(&lab.moto.url());
    control.set_dms_timing(slow, slow).await?;
    lab.stack
        .wait_value(FREEABLE, Duration::from_secs(30), |v| v > 4e9)
        .await?;
    lab.sim.set_fault(Fault::MemoryLeak {
        bytes_per_second: 1 << 30,
    });
    lab.stack
        .wait_value(FREEABLE, Duration::from_secs(60), |v| v < 1.5e9)
        .await?;
    // Leaked memory stays leaked until the task restarts.
    lab.sim.clear_fault();
    lab.step("memory below the threshold; leak stopped");

    let alert = lab
        .stack
        .wait_alert_firing("DMSInstanceMemoryLow", Duration::from_secs(60))
        .await?;
    let firing_seen = Utc::now();
    lab.step("DMSInstanceMemoryLow firing");
    assert_eq!(alert.label("replication_instance"), Some(INSTANCE));
    let active = alert.active_at.expect("Prometheus reports activeAt");

    let stopping_seen = wait_moto_status(&control, "stopping", Duration::from_secs(30)).await?;
    lab.step("stopping");
    // Stopping lasts the configured time: still not stopped well inside it.
    let stopped_seen = wait_moto_status(&control, "stopped", slow * 2).await?;
    assert!(
        stopped_seen - stopping_seen >= chrono::Duration::from_std(slow)? / 2,
        "stopping lasted {:?}",
        stopped_seen - stopping_seen
    );
    // A stopped task owes its resume in the ledger.
    assert_eq!(
        obligations(&lab).await?,
        vec![("memory".to_owned(), "owed".to_owned())]
    );
    let running_again = wait_moto_status(&control, "running", slow * 3).await?;
    lab.step("running again");
    report("F2", active, firing_seen, stopping_seen, running_again);
    assert!(
        running_again - stopping_seen >= chrono::Duration::from_std(slow * 2)? * 3 / 4,
        "a stop and a start took {:?}",
        running_again - stopping_seen
    );

    let job = lab
        .stack
        .wait_job("memory", "succeeded", Duration::from_secs(60))
        .await?;
    assert_eq!(job.alertname.as_deref(), Some("DMSInstanceMemoryLow"));
    assert_eq!(
        job.details.as_ref().map(|d| d["restarted"].clone()),
        Some(serde_json::json!([TASK])),
        "{job:?}"
    );
    assert_eq!(
        obligations(&lab).await?,
        vec![("memory".to_owned(), "resumed".to_owned())]
    );
    lab.wait_restarts(1).await?;
    lab.stack
        .wait_value(FREEABLE, Duration::from_secs(60), |v| v > 4e9)
        .await?;
    lab.stack
        .wait_alert_resolved("DMSInstanceMemoryLow", Duration::from_secs(90))
        .await?;
    lab.step("DMSInstanceMemoryLow resolved");
    assert_eq!(lab.job_count("memory").await?, 1, "one job");
    only_jobs_of(&lab, "memory").await?;
    lab.stack
        .wait_value(
            "dmsguard_remediator_resumes_owed",
            Duration::from_secs(30),
            |v| v == 0.0,
        )
        .await?;
    assert_eq!(moto_status(&control).await?, "running");
    lab.assert_target_equals_source().await?;
    only_jobs_of(&lab, "memory").await?;
    lab.step("target equals source");
    lab.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f3_pause_with_30_s_stops_and_starts_through_the_chain() -> anyhow::Result<()> {
    let slow = dms_seconds();
    // Maintenance can begin a stop plus 30 s after the stack is up (the cluster reports it),
    // so the stop ends before it; the resume comes at the window's end (a minute) plus 5 s.
    let lab = ChainLab::start("chain_slow_f3", bounded_batches, |spec| {
        spec.cluster_identifier = Some(CLUSTER.to_owned());
        spec.remediator_settings = "maintenance_margin = \"5s\"\n".to_owned();
        spec.task_state_timeout = slow * 3;
    })
    .await?;
    let control = LabControl::new(&lab.moto.url());
    control.set_dms_timing(slow, slow).await?;
    let start = lab
        .schedule_maintenance(slow + Duration::from_secs(30))
        .await?;
    lab.step(&format!("maintenance at {start}"));

    let alert = lab
        .stack
        .wait_alert_firing("RedshiftMaintenanceImminent", Duration::from_secs(60))
        .await?;
    let firing_seen = Utc::now();
    lab.step("RedshiftMaintenanceImminent firing");
    let active = alert.active_at.expect("Prometheus reports activeAt");
    let stopping_seen = wait_moto_status(&control, "stopping", Duration::from_secs(30)).await?;
    let stopped_seen = wait_moto_status(&control, "stopped", slow * 2).await?;
    lab.step("stopped");
    assert!(
        stopped_seen - stopping_seen >= chrono::Duration::from_std(slow)? / 2,
        "stopping lasted {:?}",
        stopped_seen - stopping_seen
    );
    assert!(stopped_seen < start, "the task stopped before the window");
    let job = lab
        .stack
        .wait_job("maintenance", "succeeded", Duration::from_secs(60))
        .await?;
    assert_eq!(
        job.details.as_ref().map(|d| d["stopped"].clone()),
        Some(serde_json::json!([TASK])),
        "{job:?}"
    );
    assert_eq!(
        obligations(&lab).await?,
        vec![("maintenance".to_owned(), "owed".to_owned())]
    );
    eventually(
        "the simulator to see the stop",
        Duration::from_secs(10),
        || async { Ok((lab.sim.stats().task(TASK).unwrap().status == "stopped").then_some(())) },
    )
    .await?;

    lab.stack
        .wait_alert_resolved("RedshiftMaintenanceImminent", Duration::from_secs(180))
        .await?;
    lab.step("RedshiftMaintenanceImminent resolved (window started)");
    // The resume goes out after the window started and takes the start's time.
    let starting_seen = wait_moto_status(&control, "starting", Duration::from_secs(150)).await?;
    assert!(
        starting_seen >= start + chrono::Duration::seconds(60),
        "resumed after the window ended"
    );
    let running_again = wait_moto_status(&control, "running", slow * 3).await?;
    lab.step("running again");
    report("F3", active, firing_seen, stopping_seen, running_again);
    eprintln!(
        "F3: of which the hold (stop sent -> resume sent) {:.1} s and the start {:.1} s",
        (starting_seen - stopping_seen).num_milliseconds() as f64 / 1000.0,
        (running_again - starting_seen).num_milliseconds() as f64 / 1000.0,
    );
    assert!(
        running_again - starting_seen >= chrono::Duration::from_std(slow)? / 2,
        "starting lasted {:?}",
        running_again - starting_seen
    );
    let step = eventually("the resume step done", Duration::from_secs(60), || async {
        let steps = lab.stack.scheduled_steps().await?;
        Ok(steps.into_iter().find(|s| s.state == "done"))
    })
    .await?;
    assert_eq!(
        step.result.as_deref(),
        Some(format!("Resumed {TASK}.").as_str())
    );
    eventually(
        "the obligation settled",
        Duration::from_secs(20),
        || async {
            Ok(
                (obligations(&lab).await?
                    == vec![("maintenance".to_owned(), "resumed".to_owned())])
                .then_some(()),
            )
        },
    )
    .await?;
    eventually(
        "the simulator applying again",
        Duration::from_secs(10),
        || async {
            let stats = lab.sim.stats();
            let task = stats.task(TASK).unwrap();
            Ok((task.status == "running" && task.restarts == 1).then_some(()))
        },
    )
    .await?;
    assert_eq!(lab.job_count("maintenance").await?, 1, "one job");
    only_jobs_of(&lab, "maintenance").await?;
    assert_eq!(moto_status(&control).await?, "running");
    if let Err(error) = lab.assert_target_equals_source().await {
        for job in lab.stack.jobs().await? {
            eprintln!("job {job:?}");
        }
        eprintln!(
            "remediator status page:\n{}",
            reqwest::get(lab.stack.remediator_url())
                .await?
                .text()
                .await?
        );
        return Err(error);
    }
    only_jobs_of(&lab, "maintenance").await?;
    lab.step("target equals source");
    lab.finish().await
}
