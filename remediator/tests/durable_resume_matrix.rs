//! The rest of the matrix of `durable_resume.rs` (`source tests/lab/env.sh` first): each fix
//! that stops a task (F1, F2, F3, F5) against the lab's control plane that behaves as the DMS
//! API reference says (<https://docs.aws.amazon.com/dms/latest/APIReference/API_ReplicationTask.html>:
//! `stopping` / `starting` take time, a task can end `failed` with `StopReason` and
//! `LastFailureMessage`; `ThrottlingException` "Rate exceeded" bursts). Every task a fix
//! stopped runs again at the end, or the job says `needs_human` with DMS's reason.
//!
//! | fix | slow stop/start | throttling | fails during the stop | remediator killed |
//! |---|---|---|---|---|
//! | F1 | here | here | here | here |
//! | F2 | `chain_slow_control` (30 s) | here | `durable_resume` | here |
//! | F3 | `durable_resume`, `chain_slow_control` | `durable_resume` | here | here (before the resume is scheduled), `simulator_fixes` (during the hold) |
//! | F5 | `durable_resume` | `durable_resume` | here | `durable_resume` |

mod sim_lab;
mod support;

use std::time::{Duration, Instant};

use chrono::Utc;
use dmsguard_lab::harness::{
    eventually, Burst, FailWhen, LabControl, DESCRIBE_REPLICATION_TASKS, STOP_REASON_FATAL,
};
use dmsguard_lab::simulator::Fault;
use serde_json::json;
use sim_lab::*;
use support::{alert, body, payload, Running};

/// The sweeper looks again this often.
const EXTRA: &str = "resume_retry_interval = \"1s\"\n";
/// A stop and a start take this long.
const SLOW: Duration = Duration::from_secs(4);
/// DMS's message of the task that fails while stopping.
const MESSAGE: &str =
    "Last Error Replication task out of memory. Stop Reason FATAL_ERROR Error Level FATAL";

/// One resume obligation of the ledger as (task, state, reason).
async fn obligations(lab: &SimLab) -> anyhow::Result<Vec<(String, String, Option<String>)>> {
    let client = lab.dbs.source_client().await?;
    Ok(client
        .query(
            "SELECT task, state, reason FROM dmsguard.resume_obligations ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

async fn fire(app: &Running, name: &str, labels: &[(&str, &str)], fp: &str) -> anyhow::Result<()> {
    let (status, text) = app
        .post(
            Some(TOKEN),
            body(&payload(vec![alert(
                name,
                labels,
                fp,
                &Utc::now().to_rfc3339(),
            )])),
        )
        .await?;
    assert_eq!(status, 202, "{name}: {text}");
    Ok(())
}

async fn wait_status(
    lab: &SimLab,
    task: &str,
    status: &str,
    within: Duration,
) -> anyhow::Result<()> {
    eventually(&format!("{task} {status}"), within, || async {
        Ok((lab.moto_task(task).await?.status == status).then_some(()))
    })
    .await
}

/// A `needs_human` job names DMS's reason; its obligation says the same; the task stays failed.
async fn assert_needs_human(lab: &SimLab, job: &JobRow, task: &str) -> anyhow::Result<()> {
    assert_eq!(job.outcome(), "needs_human", "{job:?}");
    let summary = job.summary.as_deref().unwrap_or("");
    assert!(summary.contains("out of memory"), "{summary}");
    assert!(summary.contains(STOP_REASON_FATAL), "{summary}");
    let owed = obligations(lab).await?;
    let mine: Vec<_> = owed.iter().filter(|o| o.0 == task).collect();
    assert_eq!(mine.len(), 1, "{owed:?}");
    assert_eq!(mine[0].1, "needs_human", "{owed:?}");
    assert!(
        mine[0].2.as_deref().unwrap_or("").contains("out of memory"),
        "{owed:?}"
    );
    assert_eq!(lab.moto_task(task).await?.status, "failed");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// F1

/// How many DMS UPDATEs the stand-in's system views logged as rolled back.
async fn rolled_back_updates(lab: &SimLab) -> anyhow::Result<i64> {
    let rs = lab.dbs.redshift_client().await?;
    let row = rs
        .query_one(
            "SELECT count(*) FROM sys_query_history h
             JOIN sys_transaction_history t ON t.transaction_id = h.transaction_id
             WHERE h.query_type = 'UPDATE' AND h.query_text LIKE '%AWS DMS%'
               AND t.status = 'rolledback'",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Puts the task into one-by-one mode (a dropped insert, then an update of that row) and waits
/// until the rolled-back bulk UPDATE is in the system views.
async fn one_by_one(lab: &SimLab) -> anyhow::Result<()> {
    lab.applied_more(300).await?;
    // The workload may delete the dropped row before it updates it: arm the fault again.
    for attempt in 1..=3 {
        lab.sim.set_fault(Fault::MissingThenUpdate);
        let started = eventually(
            "two one-by-one batches",
            Duration::from_secs(10),
            || async { Ok((lab.sim.stats().one_by_one_batches() >= 2).then_some(())) },
        )
        .await;
        match started {
            Ok(()) => break,
            Err(error) if attempt == 3 => return Err(error),
            Err(_) => {}
        }
    }
    eventually(
        "a rolled-back UPDATE in the system views",
        Duration::from_secs(20),
        || async { Ok((rolled_back_updates(lab).await? >= 1).then_some(())) },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_repair_rides_out_slow_stops_starts_and_throttling() -> anyhow::Result<()> {
    let lab = SimLab::start("matrix_f1", false, |_| {}).await?;
    run_scenario(lab, |lab| Box::pin(f1_slow(lab))).await
}

async fn f1_slow(lab: &SimLab) -> anyhow::Result<()> {
    one_by_one(lab).await?;
    let control = LabControl::new(&lab.moto.url());
    control.set_dms_timing(SLOW, SLOW).await?;
    let app = Running::spawn(lab.config(EXTRA)).await?;
    let alerted = Instant::now();
    fire(&app, "DMSOneByOneMode", &[("table", ORDERS)], "matrix-f1").await?;
    wait_status(lab, TASK, "stopping", Duration::from_secs(60)).await?;
    control
        .throttle(
            &[DESCRIBE_REPLICATION_TASKS],
            Burst {
                calls: None,
                duration: Some(Duration::from_secs(3)),
            },
        )
        .await?;
    let jobs = lab.finished_jobs(1).await?;
    let took = alerted.elapsed();
    let job = &jobs[0];
    assert_eq!(job.outcome(), "succeeded", "{job:?}");
    assert!(job.details["inserted"].as_u64() >= Some(1), "{job:?}");
    assert_eq!(job.details["restarted"], json!(true), "{job:?}");
    assert_eq!(lab.moto_task(TASK).await?.status, "running");
    assert!(
        control.state().await?.throttled[DESCRIBE_REPLICATION_TASKS] > 0,
        "the burst hit the wait"
    );
    assert!(took >= SLOW * 2, "{took:?}");
    assert_eq!(
        obligations(lab).await?,
        vec![(
            TASK.to_owned(),
            "resumed".to_owned(),
            Some("resumed by the fix".to_owned())
        )]
    );
    eprintln!(
        "F1 with {SLOW:?} stops and starts and a 3 s throttling burst: alert to job done (task running) in {:.1} s",
        took.as_secs_f64()
    );
    app.stop().await?;
    lab.sim.clear_fault();
    lab.assert_converges().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_task_failing_during_its_stop_goes_to_a_human_with_the_reason() -> anyhow::Result<()> {
    let lab = SimLab::start("matrix_f1_fail", false, |_| {}).await?;
    run_scenario(lab, |lab| Box::pin(f1_failing(lab))).await
}

async fn f1_failing(lab: &SimLab) -> anyhow::Result<()> {
    one_by_one(lab).await?;
    let control = LabControl::new(&lab.moto.url());
    control.set_dms_timing(SLOW, SLOW).await?;
    control
        .fail_task(TASK, FailWhen::OnStop, STOP_REASON_FATAL, MESSAGE)
        .await?;
    let app = Running::spawn(lab.config(EXTRA)).await?;
    fire(
        &app,
        "DMSOneByOneMode",
        &[("table", ORDERS)],
        "matrix-f1-fail",
    )
    .await?;
    let jobs = lab.finished_jobs(1).await?;
    assert_needs_human(lab, &jobs[0], TASK).await?;
    // The repair itself was done before the stop.
    assert!(
        jobs[0].details["inserted"].as_u64() >= Some(1),
        "{:?}",
        jobs[0]
    );
    app.stop().await?;
    // The human resumes it; nothing was lost.
    lab.tasks_api().resume(TASK).await?;
    lab.sim.clear_fault();
    lab.assert_converges().await
}

/// Starts a hand run (`dmsguard-remediator run …`) in its own process with `config`, waits until
/// `task` is `stopping` and SIGKILLs it: the remediator dies between the stop and the resume.
async fn kill_hand_run_while_stopping(
    lab: &SimLab,
    config: &str,
    args: &[&str],
    task: &str,
) -> anyhow::Result<()> {
    dmsguard_lab::harness::ensure_test_credentials();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("dmsguard.toml");
    std::fs::write(&path, config)?;
    let log_path = dir.path().join("run.log");
    let log = std::fs::File::create(&log_path)?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dmsguard-remediator"))
        .arg("--config")
        .arg(&path)
        .args(args)
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    // F1 repairs first (waiting for replication to pass the source read), then stops.
    let stopping = wait_status(lab, task, "stopping", Duration::from_secs(150)).await;
    child.kill().await?;
    stopping.map_err(|e| {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        e.context(format!("the hand run's output:\n{log}"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_remediator_killed_between_stop_and_resume() -> anyhow::Result<()> {
    let lab = SimLab::start("matrix_f1_kill", false, |_| {}).await?;
    run_scenario(lab, |lab| Box::pin(f1_killed(lab))).await
}

async fn f1_killed(lab: &SimLab) -> anyhow::Result<()> {
    one_by_one(lab).await?;
    let control = LabControl::new(&lab.moto.url());
    control
        .set_dms_timing(Duration::from_secs(5), Duration::from_secs(2))
        .await?;
    kill_hand_run_while_stopping(
        lab,
        &lab.config_text(EXTRA),
        &["run", "one_by_one", "--task", TASK],
        TASK,
    )
    .await?;
    assert_eq!(
        obligations(lab).await?,
        vec![(TASK.to_owned(), "owed".to_owned(), None)],
        "the resume was owed before the stop went out"
    );
    wait_status(lab, TASK, "stopped", Duration::from_secs(20)).await?;
    let restarted = Instant::now();
    let app = Running::spawn(lab.config(EXTRA)).await?;
    wait_status(lab, TASK, "running", Duration::from_secs(30)).await?;
    eprintln!(
        "F1, remediator killed while stopping: task running again {:.1} s after the restart",
        restarted.elapsed().as_secs_f64()
    );
    eventually(
        "the obligation settled",
        Duration::from_secs(20),
        || async { Ok((obligations(lab).await?[0].1 == "resumed").then_some(())) },
    )
    .await?;
    app.stop().await?;
    lab.sim.clear_fault();
    lab.assert_converges().await
}

// ---------------------------------------------------------------------------------------------
// F2

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f2_remediator_killed_between_stop_and_resume_then_throttled() -> anyhow::Result<()> {
    let lab = SimLab::start("matrix_f2_kill", false, |_| {}).await?;
    run_scenario(lab, |lab| Box::pin(f2_killed(lab))).await
}

async fn f2_killed(lab: &SimLab) -> anyhow::Result<()> {
    lab.applied_more(100).await?;
    let control = LabControl::new(&lab.moto.url());
    control
        .set_dms_timing(Duration::from_secs(5), Duration::from_secs(2))
        .await?;
    // A threshold above the simulator's healthy 4 GiB: the fix acts.
    let extra = format!("{EXTRA}memory_threshold_bytes = 8000000000\n");
    kill_hand_run_while_stopping(
        lab,
        &lab.config_text(&extra),
        &["run", "memory", "--replication-instance", INSTANCE],
        TASK,
    )
    .await?;
    assert_eq!(
        obligations(lab).await?,
        vec![(TASK.to_owned(), "owed".to_owned(), None)],
        "the resume was owed before the stop went out"
    );
    wait_status(lab, TASK, "stopped", Duration::from_secs(20)).await?;
    // A remediator starts again into a throttling burst: its sweeper retries and resumes.
    control
        .throttle(
            &[DESCRIBE_REPLICATION_TASKS],
            Burst {
                calls: None,
                duration: Some(Duration::from_secs(3)),
            },
        )
        .await?;
    let restarted = Instant::now();
    let app = Running::spawn(lab.config(&extra)).await?;
    wait_status(lab, TASK, "running", Duration::from_secs(30)).await?;
    eprintln!(
        "F2, remediator killed while stopping, restarted into a 3 s throttling burst: task running again {:.1} s later",
        restarted.elapsed().as_secs_f64()
    );
    assert!(
        control.state().await?.throttled[DESCRIBE_REPLICATION_TASKS] > 0,
        "the burst hit the sweeper"
    );
    eventually(
        "the obligation settled",
        Duration::from_secs(20),
        || async { Ok((obligations(lab).await?[0].1 == "resumed").then_some(())) },
    )
    .await?;
    assert_eq!(
        app.metric("dmsguard_remediator_resumes_total{fix=\"memory\",result=\"resumed\"}")
            .await?,
        1.0
    );
    app.stop().await?;
    lab.assert_converges().await
}

// ---------------------------------------------------------------------------------------------
// F3

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_task_failing_during_its_stop_goes_to_a_human_the_other_resumes() -> anyhow::Result<()> {
    let lab = SimLab::start("matrix_f3_fail", true, |_| {}).await?;
    run_scenario(lab, |lab| Box::pin(f3_failing(lab))).await
}

async fn f3_failing(lab: &SimLab) -> anyhow::Result<()> {
    lab.applied_more(100).await?;
    let control = LabControl::new(&lab.moto.url());
    control.set_dms_timing(SLOW, SLOW).await?;
    control
        .fail_task(TASK, FailWhen::OnStop, STOP_REASON_FATAL, MESSAGE)
        .await?;
    let app = Running::spawn(lab.config(&format!("{EXTRA}maintenance_hold = \"6s\"\n"))).await?;
    fire(&app, "RedshiftMaintenanceImminent", &[], "matrix-f3-fail").await?;
    let jobs = lab.finished_jobs(1).await?;
    let job = &jobs[0];
    assert_needs_human(lab, job, TASK).await?;
    assert_eq!(job.details["failed"][0]["task"], json!(TASK), "{job:?}");
    assert_eq!(job.details["stopped"], json!([TASK_B]), "{job:?}");
    // The other task comes back after the hold.
    wait_status(lab, TASK_B, "running", Duration::from_secs(60)).await?;
    eventually(
        "the other task's obligation settled",
        Duration::from_secs(20),
        || async {
            let owed = obligations(lab).await?;
            Ok(owed
                .iter()
                .any(|o| o.0 == TASK_B && o.1 == "resumed")
                .then_some(()))
        },
    )
    .await?;
    assert_eq!(
        lab.moto_task(TASK).await?.status,
        "failed",
        "left to the human"
    );
    app.stop().await?;
    lab.tasks_api().resume(TASK).await?;
    lab.assert_converges().await
}

/// Killed after the stops went out and before the resume step was scheduled: the obligations,
/// recorded before the stops and due at the planned resume, bring both tasks back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_remediator_killed_between_stop_and_scheduling_the_resume() -> anyhow::Result<()> {
    let lab = SimLab::start("matrix_f3_kill", true, |_| {}).await?;
    run_scenario(lab, |lab| Box::pin(f3_killed(lab))).await
}

async fn f3_killed(lab: &SimLab) -> anyhow::Result<()> {
    lab.applied_more(100).await?;
    let control = LabControl::new(&lab.moto.url());
    control
        .set_dms_timing(Duration::from_secs(5), Duration::from_secs(2))
        .await?;
    let extra = format!("{EXTRA}maintenance_hold = \"6s\"\n");
    // Both stops are sent before either is awaited: kill once the second one went out.
    kill_hand_run_while_stopping(
        lab,
        &lab.config_text(&extra),
        &["run", "maintenance"],
        TASK_B,
    )
    .await?;
    wait_status(lab, TASK_B, "stopped", Duration::from_secs(20)).await?;
    let client = lab.dbs.source_client().await?;
    let steps: i64 = client
        .query_one("SELECT count(*) FROM dmsguard.scheduled_steps", &[])
        .await?
        .get(0);
    assert_eq!(steps, 0, "killed before the resume step was scheduled");
    let owed = obligations(lab).await?;
    assert_eq!(owed.len(), 2, "{owed:?}");
    assert!(owed.iter().all(|o| o.1 == "owed"), "{owed:?}");
    let restarted = Instant::now();
    let app = Running::spawn(lab.config(&extra)).await?;
    for task in [TASK, TASK_B] {
        wait_status(lab, task, "running", Duration::from_secs(60)).await?;
    }
    eprintln!(
        "F3, remediator killed while stopping (6 s hold): both tasks running again {:.1} s after the restart",
        restarted.elapsed().as_secs_f64()
    );
    eventually(
        "every obligation settled",
        Duration::from_secs(20),
        || async {
            let owed = obligations(lab).await?;
            Ok(owed.iter().all(|o| o.1 == "resumed").then_some(()))
        },
    )
    .await?;
    app.stop().await?;
    lab.assert_converges().await
}

// ---------------------------------------------------------------------------------------------
// F5

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f5_task_failing_during_its_stop_goes_to_a_human_with_the_reason() -> anyhow::Result<()> {
    let lab = SimLab::start("matrix_f5_fail", false, |_| {}).await?;
    run_scenario(lab, |lab| Box::pin(f5_failing(lab))).await
}

async fn f5_failing(lab: &SimLab) -> anyhow::Result<()> {
    lab.applied_more(100).await?;
    let control = LabControl::new(&lab.moto.url());
    control.set_dms_timing(SLOW, SLOW).await?;
    control
        .fail_task(TASK, FailWhen::OnStop, STOP_REASON_FATAL, MESSAGE)
        .await?;
    lab.sim.set_fault(Fault::Stall);
    let app = Running::spawn(lab.config(EXTRA)).await?;
    let alerted = Instant::now();
    fire(&app, "DMSTaskStalled", &[("task", TASK)], "matrix-f5-fail").await?;
    let jobs = lab.finished_jobs(1).await?;
    // `failed` ends the wait at once, not at the 20 s timeout.
    assert!(
        alerted.elapsed() < Duration::from_secs(15),
        "{:?}",
        alerted.elapsed()
    );
    assert_needs_human(lab, &jobs[0], TASK).await?;
    assert_eq!(
        app.metric(
            "dmsguard_remediator_resumes_total{fix=\"stalled_task\",result=\"needs_human\"}"
        )
        .await?,
        1.0
    );
    app.stop().await?;
    lab.sim.clear_fault();
    lab.tasks_api().resume(TASK).await?;
    lab.assert_converges().await
}
