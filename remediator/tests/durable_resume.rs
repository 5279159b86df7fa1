//! Fixes that stop a task on a control plane that behaves like AWS (`source tests/lab/env.sh`
//! first): stops and starts take seconds through `stopping`/`starting`, DescribeReplicationTasks
//! throttles in bursts, a task fails while stopping, a stop outlasts `task_state_timeout`, the
//! remediator is killed between the stop and the resume. Every task a fix stopped runs again, or
//! its job says `needs_human` with DMS's reason; the ledger's resume obligations show which.

mod sim_lab;
mod support;

use std::time::{Duration, Instant};

use chrono::Utc;
use dmsguard_lab::harness::{
    eventually, Burst, FailWhen, LabControl, DESCRIBE_REPLICATION_TASKS, STOP_REASON_FATAL,
};
use dmsguard_lab::simulator::Fault;
use dmsguard_pipeline::config::Config;
use serde_json::json;
use sim_lab::*;
use support::{alert, body, payload, Running};

/// How long a stop and a start take in these tests: 4 s each, or
/// `DMSGUARD_TEST_DMS_SECONDS` (e.g. 30 to measure with realistic timings).
fn dms_seconds() -> Duration {
    Duration::from_secs(
        std::env::var("DMSGUARD_TEST_DMS_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(4),
    )
}
/// The sweeper looks again this often.
const EXTRA: &str = "resume_retry_interval = \"1s\"\n";

/// One resume obligation of the ledger.
#[derive(Debug, Clone)]
struct Owed {
    job_id: i64,
    fix: String,
    task: String,
    state: String,
    reason: Option<String>,
}

async fn obligations(lab: &SimLab) -> anyhow::Result<Vec<Owed>> {
    let client = lab.dbs.source_client().await?;
    Ok(client
        .query(
            "SELECT job_id, fix, task, state, reason FROM dmsguard.resume_obligations ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| Owed {
            job_id: r.get(0),
            fix: r.get(1),
            task: r.get(2),
            state: r.get(3),
            reason: r.get(4),
        })
        .collect())
}

/// The lab's config with `[remediator]` `task_state_timeout` set to `timeout`.
fn config_with_timeout(lab: &SimLab, timeout: &str) -> Config {
    let text = lab.config_text(EXTRA).replace(
        "task_state_timeout = \"20s\"",
        &format!("task_state_timeout = \"{timeout}\""),
    );
    Config::from_toml(&text, &|_| None).expect("test config is valid")
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

/// `GET /jobs` of a running remediator.
async fn jobs_api(app: &Running) -> anyhow::Result<serde_json::Value> {
    Ok(reqwest::get(app.url("/jobs"))
        .await?
        .error_for_status()?
        .json()
        .await?)
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

async fn stall(lab: &SimLab) -> anyhow::Result<u64> {
    lab.sim.set_fault(Fault::Stall);
    eventually("the task to stall", Duration::from_secs(10), || async {
        let t = lab.sim.stats().task(TASK).cloned().unwrap();
        Ok((t.blocked.as_deref() == Some("stall")).then_some(t.applied))
    })
    .await
}

async fn applies_again(lab: &SimLab, task: &str, since: u64) -> anyhow::Result<()> {
    eventually("apply to resume", Duration::from_secs(30), || async {
        let t = lab.sim.stats().task(task).cloned().unwrap();
        Ok((t.status == "running" && t.blocked.is_none() && t.applied > since).then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f5_restart_rides_out_slow_stops_starts_and_throttling() -> anyhow::Result<()> {
    let lab = SimLab::start("durable_f5", false, |_| {}).await?;
    run_scenario(lab, |lab| Box::pin(f5_slow(lab))).await
}

async fn f5_slow(lab: &SimLab) -> anyhow::Result<()> {
    let (stop, start) = (dms_seconds(), dms_seconds());
    lab.applied_more(100).await?;
    let control = LabControl::new(&lab.moto.url());
    control.set_dms_timing(stop, start).await?;
    let stalled_at = stall(lab).await?;
    let timeout = format!("{}s", (stop + start).as_secs() * 2);
    let app = Running::spawn(config_with_timeout(lab, &timeout)).await?;
    let alerted = Instant::now();
    fire(&app, "DMSTaskStalled", &[("task", TASK)], "durable-f5").await?;
    wait_status(lab, TASK, "stopping", Duration::from_secs(10)).await?;
    // A throttling burst while the fix waits for `stopped`.
    control
        .throttle(
            &[DESCRIBE_REPLICATION_TASKS],
            Burst {
                calls: None,
                duration: Some(Duration::from_secs(3)),
            },
        )
        .await?;
    let job = eventually("the job to end", (stop + start) * 3, || async {
        let jobs = lab.jobs().await?;
        Ok(jobs
            .first()
            .filter(|j| j.state != "running" && j.state != "queued")
            .cloned())
    })
    .await?;
    let took = alerted.elapsed();
    assert_eq!(job.outcome(), "succeeded", "{job:?}");
    assert_eq!(lab.moto_task(TASK).await?.status, "running");
    assert!(took >= stop + start, "{took:?}");
    assert!(
        control.state().await?.throttled[DESCRIBE_REPLICATION_TASKS] > 0,
        "the burst hit the wait"
    );
    eprintln!(
        "F5 with a {stop:?} stop, a {start:?} start and a 3 s throttling burst: alert to running again in {:.1} s",
        took.as_secs_f64()
    );
    let owed = obligations(lab).await?;
    assert_eq!(owed.len(), 1, "{owed:?}");
    assert_eq!(
        (
            owed[0].fix.as_str(),
            owed[0].task.as_str(),
            owed[0].state.as_str()
        ),
        ("stalled_task", TASK, "resumed")
    );
    assert_eq!(
        app.metric("dmsguard_remediator_resumes_total{fix=\"stalled_task\",result=\"resumed\"}")
            .await?,
        1.0
    );
    lab.sim.clear_fault();
    applies_again(lab, TASK, stalled_at).await?;
    app.stop().await?;
    lab.assert_converges().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f5_stop_outlasting_the_timeout_is_resumed_by_the_sweeper() -> anyhow::Result<()> {
    let lab = SimLab::start("durable_f5_timeout", false, |_| {}).await?;
    run_scenario(lab, |lab| Box::pin(f5_timeout(lab))).await
}

async fn f5_timeout(lab: &SimLab) -> anyhow::Result<()> {
    lab.applied_more(100).await?;
    let control = LabControl::new(&lab.moto.url());
    // The stop takes longer than the fix waits.
    control
        .set_dms_timing(Duration::from_secs(6), Duration::from_secs(1))
        .await?;
    let stalled_at = stall(lab).await?;
    let app = Running::spawn(config_with_timeout(lab, "2s")).await?;
    let alerted = Instant::now();
    fire(
        &app,
        "DMSTaskStalled",
        &[("task", TASK)],
        "durable-f5-timeout",
    )
    .await?;
    // The job gives up waiting: failed, with the resume owed.
    let job = eventually(
        "the job to give up waiting",
        Duration::from_secs(30),
        || async {
            let jobs = lab.jobs().await?;
            Ok(jobs
                .first()
                .filter(|j| j.state != "running" && j.state != "queued")
                .cloned())
        },
    )
    .await?;
    assert_eq!(job.outcome(), "failed", "{job:?}");
    assert_eq!(job.details["resume_owed"], json!([TASK]), "{job:?}");
    assert!(
        job.summary
            .as_deref()
            .unwrap_or("")
            .contains("resume is owed"),
        "{job:?}"
    );
    // People see the owed resume: the jobs API and the status page (the task is still
    // stopping: the stop takes 6 s, the job gave up after 2 s).
    let listing = jobs_api(&app).await?;
    assert_eq!(listing["jobs"][0]["id"], json!(job.id), "{listing}");
    let resumes = &listing["jobs"][0]["resumes"];
    assert_eq!(resumes[0]["task"], json!(TASK), "{listing}");
    assert_eq!(resumes[0]["state"], json!("owed"), "{listing}");
    assert_eq!(listing["resumes_owed"], json!(1), "{listing}");
    let page = reqwest::get(app.url("/")).await?.text().await?;
    assert!(
        page.contains("1 task(s) stopped by a fix and owed a resume."),
        "{page}"
    );
    assert!(page.contains(&format!("resume owed: {TASK}")), "{page}");
    // The sweeper resumes it once stopped; the job then counts as succeeded.
    wait_status(lab, TASK, "running", Duration::from_secs(30)).await?;
    let took = alerted.elapsed();
    let job = eventually("the job to succeed", Duration::from_secs(10), || async {
        let jobs = lab.jobs().await?;
        Ok(jobs.first().filter(|j| j.outcome() == "succeeded").cloned())
    })
    .await?;
    assert_eq!(job.details["resumed_later"], json!([TASK]), "{job:?}");
    let owed = obligations(lab).await?;
    assert_eq!(owed[0].state, "resumed", "{owed:?}");
    let listing = jobs_api(&app).await?;
    assert_eq!(
        listing["jobs"][0]["outcome"],
        json!("succeeded"),
        "{listing}"
    );
    assert_eq!(
        listing["jobs"][0]["resumes"][0]["state"],
        json!("resumed"),
        "{listing}"
    );
    assert_eq!(listing["resumes_owed"], json!(0), "{listing}");
    let page = reqwest::get(app.url("/")).await?.text().await?;
    assert!(
        page.contains("0 task(s) stopped by a fix and owed a resume."),
        "{page}"
    );
    assert!(page.contains(&format!("resumed: {TASK}")), "{page}");
    eprintln!(
        "F5 with a 6 s stop outlasting a 2 s timeout: alert to running again (by the sweeper) in {:.1} s",
        took.as_secs_f64()
    );
    lab.sim.clear_fault();
    applies_again(lab, TASK, stalled_at).await?;
    app.stop().await?;
    lab.assert_converges().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f2_task_failing_during_its_stop_goes_to_a_human_with_the_reason() -> anyhow::Result<()> {
    let lab = SimLab::start("durable_f2", true, |_| {}).await?;
    run_scenario(lab, |lab| Box::pin(f2_failing(lab))).await
}

async fn f2_failing(lab: &SimLab) -> anyhow::Result<()> {
    lab.applied_more(100).await?;
    let control = LabControl::new(&lab.moto.url());
    control.set_dms_timing(dms_seconds(), dms_seconds()).await?;
    let message =
        "Last Error Replication task out of memory. Stop Reason FATAL_ERROR Error Level FATAL";
    control
        .fail_task(TASK, FailWhen::OnStop, STOP_REASON_FATAL, message)
        .await?;
    // The fix acts only below the configured threshold (it reads FreeableMemory again): set
    // one above the simulator's healthy 4 GiB so the alert is true.
    let mut config = config_with_timeout(lab, "60s");
    config.remediator.memory_threshold_bytes = 8_000_000_000;
    let app = Running::spawn(config).await?;
    let alerted = Instant::now();
    fire(
        &app,
        "DMSInstanceMemoryLow",
        &[("replication_instance", INSTANCE)],
        "durable-f2",
    )
    .await?;
    let jobs = lab.finished_jobs(1).await?;
    // `failed` ends the wait at once, not at the 60 s timeout.
    assert!(
        alerted.elapsed() < Duration::from_secs(30),
        "{:?}",
        alerted.elapsed()
    );
    let job = &jobs[0];
    assert_eq!(job.outcome(), "needs_human", "{job:?}");
    let summary = job.summary.as_deref().unwrap_or("");
    assert!(summary.contains("out of memory"), "{summary}");
    assert!(summary.contains(STOP_REASON_FATAL), "{summary}");
    assert_eq!(lab.moto_task(TASK).await?.status, "failed");
    // One task at a time: the second task was never stopped.
    assert_eq!(lab.moto_task(TASK_B).await?.status, "running");
    let owed = obligations(lab).await?;
    assert_eq!(owed.len(), 1, "{owed:?}");
    assert_eq!(owed[0].state, "needs_human");
    assert!(owed[0]
        .reason
        .as_deref()
        .unwrap_or("")
        .contains("out of memory"));
    assert_eq!(
        app.metric("dmsguard_remediator_resumes_total{fix=\"memory\",result=\"needs_human\"}")
            .await?,
        1.0
    );
    // The gauge follows the ledger on the sweeper's next pass.
    eventually("no resume owed", Duration::from_secs(10), || async {
        Ok((app.metric("dmsguard_remediator_resumes_owed").await? == 0.0).then_some(()))
    })
    .await?;
    // Nothing resumes a failed task behind the human's back.
    let sweeps_later = lab.moto_task(TASK).await?;
    assert_eq!(sweeps_later.status, "failed");
    app.stop().await?;
    // The human resumes it; nothing was lost.
    lab.tasks_api().resume(TASK).await?;
    lab.assert_converges().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_maintenance_with_stops_outlasting_the_timeout_and_throttling() -> anyhow::Result<()> {
    let lab = SimLab::start("durable_f3", true, |_| {}).await?;
    run_scenario(lab, |lab| Box::pin(f3_slow(lab))).await
}

async fn f3_slow(lab: &SimLab) -> anyhow::Result<()> {
    let (stop, start) = (dms_seconds(), dms_seconds());
    lab.applied_more(100).await?;
    let control = LabControl::new(&lab.moto.url());
    control.set_dms_timing(stop, start).await?;
    let text = lab
        .config_text(&format!("{EXTRA}maintenance_hold = \"6s\"\n"))
        .replace(
            "task_state_timeout = \"20s\"",
            "task_state_timeout = \"2s\"",
        )
        // More SDK attempts than the burst has throttled calls: whichever request the burst's
        // calls fall on (that depends on timing), it gets through. With 2 attempts a loaded
        // machine put two of them on one describe and the job failed (its resumes still owed).
        .replace("max_attempts = 2", "max_attempts = 4");
    let app = Running::spawn(Config::from_toml(&text, &|_| None).expect("valid")).await?;
    let alerted = Instant::now();
    fire(&app, "RedshiftMaintenanceImminent", &[], "durable-f3").await?;
    wait_status(lab, TASK, "stopping", Duration::from_secs(10)).await?;
    control
        .throttle(
            &[DESCRIBE_REPLICATION_TASKS],
            Burst {
                calls: Some(3),
                duration: None,
            },
        )
        .await?;
    let jobs = lab.finished_jobs(1).await?;
    let job = &jobs[0];
    assert_eq!(job.outcome(), "succeeded", "{job:?}");
    // Both stops are sent at once; the first task's outlasts the 2 s timeout (the second is
    // awaited after it): it is still owed its resume and scheduled with the other.
    assert_eq!(job.details["stopped"], json!([TASK, TASK_B]), "{job:?}");
    assert_eq!(
        job.details["still_stopping"][0]["task"],
        json!(TASK),
        "{job:?}"
    );
    for task in [TASK, TASK_B] {
        wait_status(lab, task, "running", Duration::from_secs(60)).await?;
    }
    eprintln!(
        "F3 with {stop:?} stops, {start:?} starts, a 6 s hold and a 2 s timeout: alert to both tasks running again in {:.1} s",
        alerted.elapsed().as_secs_f64()
    );
    eventually(
        "every obligation settled",
        Duration::from_secs(20),
        || async {
            let owed = obligations(lab).await?;
            Ok((owed.len() == 2 && owed.iter().all(|o| o.state == "resumed")).then_some(()))
        },
    )
    .await?;
    app.stop().await?;
    lab.assert_converges().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f5_remediator_killed_between_stop_and_resume() -> anyhow::Result<()> {
    let lab = SimLab::start("durable_kill", false, |_| {}).await?;
    run_scenario(lab, |lab| Box::pin(f5_killed(lab))).await
}

async fn f5_killed(lab: &SimLab) -> anyhow::Result<()> {
    lab.applied_more(100).await?;
    let control = LabControl::new(&lab.moto.url());
    control
        .set_dms_timing(Duration::from_secs(5), Duration::from_secs(2))
        .await?;
    let stalled_at = stall(lab).await?;
    // A hand run in its own process, SIGKILLed while the task is stopping.
    dmsguard_lab::harness::ensure_test_credentials();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("dmsguard.toml");
    std::fs::write(&path, lab.config_text(EXTRA))?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dmsguard-remediator"))
        .arg("--config")
        .arg(&path)
        .args(["run", "stalled_task", "--task", TASK])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    wait_status(lab, TASK, "stopping", Duration::from_secs(20)).await?;
    child.kill().await?;
    let owed = obligations(lab).await?;
    assert_eq!(owed.len(), 1, "{owed:?}");
    assert_eq!(
        owed[0].state, "owed",
        "the resume was owed before the stop went out"
    );
    // Nothing resumes the task while no remediator runs.
    wait_status(lab, TASK, "stopped", Duration::from_secs(20)).await?;
    assert_eq!(obligations(lab).await?[0].state, "owed");
    // `jobs` tells people the resume is owed.
    let (code, listing, err) = run_cli(&lab.config_text(EXTRA), &["jobs"]).await?;
    assert_eq!(code, 0, "{listing}\n{err}");
    assert!(listing.contains("resumes owed"), "{listing}");
    assert!(
        listing.contains(&format!("(stalled_task): task {TASK}, since")),
        "{listing}"
    );
    // A remediator starts again: its sweeper resumes the task.
    let restarted = Instant::now();
    let app = Running::spawn(lab.config(EXTRA)).await?;
    wait_status(lab, TASK, "running", Duration::from_secs(30)).await?;
    eprintln!(
        "Remediator restarted: task running again {:.1} s later",
        restarted.elapsed().as_secs_f64()
    );
    eventually(
        "the obligation settled",
        Duration::from_secs(20),
        || async {
            let owed = obligations(lab).await?;
            Ok((owed[0].state == "resumed").then_some(()))
        },
    )
    .await?;
    assert_eq!(
        app.metric("dmsguard_remediator_resumes_total{fix=\"stalled_task\",result=\"resumed\"}")
            .await?,
        1.0
    );
    assert_eq!(obligations(lab).await?[0].job_id, lab.jobs().await?[0].id);
    lab.sim.clear_fault();
    applies_again(lab, TASK, stalled_at).await?;
    app.stop().await?;
    lab.assert_converges().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_follows_the_clusters_schedule_and_skips_a_deferred_window() -> anyhow::Result<()> {
    let lab = SimLab::start("durable_f3_sched", false, |_| {}).await?;
    run_scenario(lab, |lab| Box::pin(f3_schedule(lab))).await
}

async fn f3_schedule(lab: &SimLab) -> anyhow::Result<()> {
    use chrono::{Datelike, Timelike};
    use dmsguard_lab::harness::DeferredWindow;
    lab.applied_more(50).await?;
    let now = Utc::now();
    let start = (now + chrono::Duration::minutes(2))
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .expect("a whole minute");
    let week_time = |t: chrono::DateTime<Utc>| {
        let day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
            [t.weekday().num_days_from_monday() as usize];
        format!("{day}:{:02}:{:02}", t.hour(), t.minute())
    };
    // A 40-minute preferred window starting in about two minutes.
    let window = format!(
        "{}-{}",
        week_time(start),
        week_time(start + chrono::Duration::minutes(40))
    );
    lab.aws
        .redshift
        .create_cluster()
        .cluster_identifier("lab-cluster")
        .node_type("ra3.xlplus")
        .master_username("admin")
        .master_user_password("Passw0rd1")
        .preferred_maintenance_window(&window)
        .send()
        .await?;
    let control = LabControl::new(&lab.moto.url());
    control
        .set_maintenance(
            "lab-cluster",
            Some(start),
            &[DeferredWindow {
                id: "quarter-end".into(),
                start: now - chrono::Duration::hours(1),
                end: now + chrono::Duration::days(10),
            }],
        )
        .await?;
    let text = lab
        .config_text(&format!(
            "{EXTRA}maintenance_margin = \"3m\"\n[remediator.fixes.maintenance]\ncooldown = \"0s\"\n"
        ))
        .replace(
            "[redshift]\n",
            "[redshift]\ncluster_identifier = \"lab-cluster\"\n",
        );
    let app = Running::spawn(Config::from_toml(&text, &|_| None).expect("valid")).await?;
    let before = lab.moto_task(TASK).await?;

    // Deferred: no pause at all.
    fire(&app, "RedshiftMaintenanceImminent", &[], "f3-deferred").await?;
    let jobs = lab.finished_jobs(1).await?;
    assert_eq!(jobs[0].outcome(), "succeeded", "{:?}", jobs[0]);
    let summary = jobs[0].summary.as_deref().unwrap_or("");
    assert!(summary.starts_with("Nothing stopped"), "{summary}");
    assert!(summary.contains("quarter-end"), "{summary}");
    assert_eq!(
        lab.moto_task(TASK).await?,
        before,
        "the task was never stopped"
    );
    assert!(obligations(lab).await?.is_empty());

    // Not deferred: stopped, resumed at the window's end (start + 40 min) plus the 3 min margin.
    control
        .set_maintenance("lab-cluster", Some(start), &[])
        .await?;
    fire(&app, "RedshiftMaintenanceImminent", &[], "f3-due").await?;
    let jobs = lab.finished_jobs(2).await?;
    assert_eq!(jobs[1].outcome(), "succeeded", "{:?}", jobs[1]);
    assert_eq!(jobs[1].details["stopped"], json!([TASK]), "{:?}", jobs[1]);
    let resume_at: chrono::DateTime<Utc> =
        serde_json::from_value(jobs[1].details["resume_at"].clone())?;
    assert_eq!(resume_at, start + chrono::Duration::minutes(43));
    assert_eq!(lab.moto_task(TASK).await?.status, "stopped");
    let owed = obligations(lab).await?;
    assert_eq!(owed.len(), 1);
    assert_eq!(
        owed[0].state, "owed",
        "resumed after the window, not before"
    );
    app.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f5_hand_run_carries_out_the_resume_it_owes_before_it_exits() -> anyhow::Result<()> {
    let lab = SimLab::start("durable_cli", false, |_| {}).await?;
    run_scenario(lab, |lab| Box::pin(f5_cli(lab))).await
}

/// No remediator service runs: a hand run whose stop outlasts `task_state_timeout` resumes the
/// task itself before it exits, and says so.
async fn f5_cli(lab: &SimLab) -> anyhow::Result<()> {
    lab.applied_more(100).await?;
    let control = LabControl::new(&lab.moto.url());
    control
        .set_dms_timing(Duration::from_secs(6), Duration::from_secs(2))
        .await?;
    let stalled_at = stall(lab).await?;
    let text = lab.config_text(EXTRA).replace(
        "task_state_timeout = \"20s\"",
        "task_state_timeout = \"2s\"",
    );
    let started = Instant::now();
    let (code, out, err) = run_cli(&text, &["run", "stalled_task", "--task", TASK]).await?;
    let took = started.elapsed();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("outcome: failed"),
        "the fix gave up waiting: {out}"
    );
    assert!(
        out.contains(&format!("resume of task {TASK} owed")),
        "{out}"
    );
    assert!(
        out.contains(&format!("resume of task {TASK}: resumed")),
        "{out}"
    );
    assert!(out.contains("outcome now: succeeded"), "{out}");
    assert!(
        took >= Duration::from_secs(6),
        "waited for the stop: {took:?}"
    );
    assert_eq!(lab.moto_task(TASK).await?.status, "running");
    let owed = obligations(lab).await?;
    assert_eq!(owed.len(), 1, "{owed:?}");
    assert_eq!(owed[0].state, "resumed", "{owed:?}");
    let jobs = lab.jobs().await?;
    assert_eq!(jobs[0].outcome(), "succeeded", "{:?}", jobs[0]);
    assert_eq!(
        jobs[0].details["resumed_later"],
        json!([TASK]),
        "{:?}",
        jobs[0]
    );
    // `jobs` lists nothing owed any more.
    let (code, listing, err) = run_cli(&text, &["jobs"]).await?;
    assert_eq!(code, 0, "{listing}\n{err}");
    assert!(!listing.contains("resumes owed"), "{listing}");
    eprintln!(
        "Hand run with a 6 s stop outlasting a 2 s timeout: exited with the task running after {:.1} s",
        took.as_secs_f64()
    );
    lab.sim.clear_fault();
    applies_again(lab, TASK, stalled_at).await?;
    lab.assert_converges().await
}
