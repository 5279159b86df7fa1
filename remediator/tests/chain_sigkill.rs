//! The remediator binary SIGKILLed while tasks are paused for Redshift maintenance, through the
//! whole chain (simulator -> exporter -> Prometheus -> Alertmanager -> remediator): the resume
//! is in the ledger, nothing resumes while no remediator runs, and the restarted process
//! resumes exactly the task it stopped; replication then catches up with nothing lost.

use std::time::{Duration, Instant};

use chrono::{Datelike, Timelike, Utc};
use dmsguard_lab::harness::{eventually, Moto, TestDatabases};
use dmsguard_lab::simulator::{SimConfig, Simulator};
use dmsguard_lab::stack::{Stack, StackSpec};

const TASK: &str = "lab-task";
const HOLD_SECONDS: i64 = 15;

/// A one-minute window starting 2-3 minutes from now: `RedshiftMaintenanceImminent` fires at
/// once and keeps firing through the test.
fn window_soon() -> String {
    let week_time = |t: chrono::DateTime<Utc>| {
        let day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
            [t.weekday().num_days_from_monday() as usize];
        format!("{day}:{:02}:{:02}", t.hour(), t.minute())
    };
    let start = (Utc::now() + chrono::Duration::seconds(180))
        .with_second(0)
        .expect("a whole minute");
    format!(
        "{}-{}",
        week_time(start),
        week_time(start + chrono::Duration::minutes(1))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn maintenance_resume_survives_sigkill_through_the_chain() -> anyhow::Result<()> {
    let began = Instant::now();
    let dbs = TestDatabases::create("chain_sigkill").await?;
    let moto = Moto::spawn().await?;
    let mut sim_config = SimConfig::for_test(&dbs, &moto.url());
    sim_config.rate = 200;
    let sim = Simulator::start(sim_config).await?;
    let mut spec = StackSpec::for_simulator(&dbs, &moto.url(), sim.config());
    spec.maintenance_window = Some(window_soon());
    spec.remediator_settings = format!("maintenance_hold = \"{HOLD_SECONDS}s\"\n");
    spec.alertmanager.repeat_interval = Duration::from_secs(5);
    let mut stack = Stack::start(spec).await?;

    stack
        .wait_alert_firing("RedshiftMaintenanceImminent", Duration::from_secs(60))
        .await?;
    let job = stack
        .wait_job("maintenance", "succeeded", Duration::from_secs(60))
        .await?;
    stack.kill_remediator().await?; // SIGKILL
    let killed_at = Utc::now();
    eprintln!(
        "[{:5.1} s] job {} stopped the task; remediator killed",
        began.elapsed().as_secs_f64(),
        job.id
    );
    eventually(
        "the simulator to see the stop",
        Duration::from_secs(10),
        || async { Ok((sim.stats().task(TASK).unwrap().status == "stopped").then_some(())) },
    )
    .await?;
    let steps = stack.scheduled_steps().await?;
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert_eq!(steps[0].state, "pending");
    assert!(
        steps[0].run_at > killed_at,
        "the resume was still ahead at the kill"
    );
    assert_eq!(steps[0].tasks, vec![TASK.to_owned()]);

    // The resume falls due while no remediator runs: nothing resumes the task.
    let due = steps[0].run_at;
    eventually(
        "the resume to fall due",
        Duration::from_secs(HOLD_SECONDS as u64 + 10),
        || async { Ok((Utc::now() > due + chrono::Duration::seconds(2)).then_some(())) },
    )
    .await?;
    assert_eq!(sim.stats().task(TASK).unwrap().status, "stopped");
    assert_eq!(stack.scheduled_steps().await?[0].state, "pending");

    stack.start_remediator().await?;
    eprintln!(
        "[{:5.1} s] remediator restarted",
        began.elapsed().as_secs_f64()
    );
    let step = eventually("the resume step done", Duration::from_secs(60), || async {
        let steps = stack.scheduled_steps().await?;
        Ok(steps.into_iter().find(|s| s.state == "done"))
    })
    .await?;
    assert_ne!(step.runner, job.runner, "the restarted process ran it");
    assert_eq!(
        step.result.as_deref(),
        Some(format!("Resumed {TASK}.").as_str())
    );
    eventually(
        "the task running again",
        Duration::from_secs(10),
        || async {
            let stats = sim.stats();
            let task = stats.task(TASK).unwrap();
            Ok((task.status == "running" && task.restarts == 1).then_some(()))
        },
    )
    .await?;
    eprintln!(
        "[{:5.1} s] task resumed by the restarted remediator",
        began.elapsed().as_secs_f64()
    );

    // Alertmanager still repeats the firing alert to the new process: still one job.
    stack
        .wait_value(
            "dmsguard_remediator_webhooks_total{result=\"duplicate\"}",
            Duration::from_secs(90),
            |v| v >= 1.0,
        )
        .await?;
    assert_eq!(stack.jobs().await?.len(), 1, "one job");

    sim.stop_workload().await?;
    sim.wait_caught_up(Duration::from_secs(60)).await?;
    let diff = sim.compare_source_target("public.orders").await?;
    assert!(diff.is_empty(), "target equals source: {diff:?}");
    stack.stop().await?;
    sim.stop().await?;
    dbs.drop().await?;
    eprintln!("wall time {:.1} s", began.elapsed().as_secs_f64());
    Ok(())
}
