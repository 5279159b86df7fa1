//! Every fix on the lab's DMS simulator (`source tests/lab/env.sh` first): the fault is injected
//! while the workload runs, the fix runs through the remediator (webhook to an in-process
//! `Remediator`, or the `dmsguard-remediator run` binary), and the outcome is checked against the
//! source, in moto and in the Redshift stand-in's system views. Each test also runs the fix a
//! second time (nothing changes) and as a dry run (the plan and its SQL, nothing changes).

mod sim_lab;
mod support;

use std::time::Duration;

use chrono::Utc;
use dmsguard_lab::harness::eventually;
use dmsguard_lab::simulator::{Fault, SimTable};
use dmsguard_pipeline::config::quote_ident;
use dmsguard_pipeline::statement_parser::is_valid_redshift_sql;
use serde_json::{json, Value};
use sim_lab::*;
use support::{body, payload, rule_alert, Running};

const JOBS_TOTAL: &str = "dmsguard_remediator_jobs_total";

fn jobs_series(fix: &str, outcome: &str) -> String {
    format!("{JOBS_TOTAL}{{fix=\"{fix}\",outcome=\"{outcome}\"}}")
}

/// Posts one firing alert with the labels the real rule gives it (`labels` set the values of
/// the ones naming things); asserts it was accepted.
async fn fire(
    app: &Running,
    name: &str,
    labels: &[(&str, &str)],
    fingerprint: &str,
) -> anyhow::Result<()> {
    let starts_at = Utc::now().to_rfc3339();
    let (status, text) = app
        .post(
            Some(TOKEN),
            body(&payload(vec![rule_alert(
                name,
                labels,
                fingerprint,
                &starts_at,
            )])),
        )
        .await?;
    assert_eq!(status, 202, "{name}: {text}");
    Ok(())
}

/// The ids listed on a plan's `Missing ids (N): …` line.
fn planned_missing(stdout: &str) -> Vec<i64> {
    stdout
        .lines()
        .map(str::trim)
        .find_map(|l| {
            l.split_once("Missing ids (")
                .map(|(_, rest)| rest.to_owned())
        })
        .and_then(|rest| rest.split_once("): ").map(|(_, ids)| ids.to_owned()))
        .map(|ids| {
            ids.trim_end_matches('.')
                .split(", ")
                .filter_map(|id| id.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Every SQL line of a printed plan parses in the Redshift dialect; returns how many there were.
fn plan_sql_is_redshift(stdout: &str) -> anyhow::Result<usize> {
    let lines: Vec<&str> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("SELECT") || l.starts_with("INSERT"))
        .collect();
    for line in &lines {
        is_valid_redshift_sql(line).map_err(|e| anyhow::anyhow!("{line}: {e}"))?;
    }
    Ok(lines.len())
}

fn ids(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default()
}

/// Dropped ids of `table` that the source still has (later deletes remove some).
async fn dropped_in_source(lab: &SimLab, table: &str) -> anyhow::Result<Vec<i64>> {
    let dropped: Vec<i64> = lab
        .sim
        .stats()
        .dropped_ids()
        .into_iter()
        .filter(|(t, _)| t == table)
        .map(|(_, id)| id)
        .collect();
    let source = lab.dbs.source_client().await?;
    Ok(source
        .query(
            &format!("SELECT id FROM {table} WHERE id = ANY($1) ORDER BY id"),
            &[&dropped],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// F1 one_by_one

type NamedTexts = Vec<(String, Option<String>)>;

/// One row of a simulated table, every column as text: the source converted as DMS writes it,
/// the target as stored.
async fn row_texts(lab: &SimLab, table: &str, id: i64) -> anyhow::Result<(NamedTexts, NamedTexts)> {
    let table: SimTable = table.parse()?;
    let columns = table.columns();
    let read = |exprs: Vec<String>, client: tokio_postgres::Client| {
        let sql = format!(
            "SELECT {} FROM {} WHERE id = $1",
            exprs.join(", "),
            table.name.quoted()
        );
        let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
        async move {
            let row = client.query_one(&sql, &[&id]).await?;
            Ok::<_, anyhow::Error>(
                names
                    .into_iter()
                    .enumerate()
                    .map(|(i, n)| (n, row.get::<_, Option<String>>(i)))
                    .collect::<NamedTexts>(),
            )
        }
    };
    let source = read(
        columns.iter().map(|c| c.source_text_expr()).collect(),
        lab.dbs.source_client().await?,
    )
    .await?;
    let target = read(
        columns
            .iter()
            .map(|c| format!("{}::text", quote_ident(&c.name)))
            .collect(),
        lab.dbs.redshift_client().await?,
    )
    .await?;
    Ok((source, target))
}

/// How many DMS UPDATEs the stand-in's system views logged: bulk ones committed, bulk ones
/// rolled back, and one-by-one ones (single row, literal key).
async fn update_counts(lab: &SimLab) -> anyhow::Result<(i64, i64, i64)> {
    let rs = lab.dbs.redshift_client().await?;
    let row = rs
        .query_one(
            "SELECT
               sum(CASE WHEN t.status = 'committed' AND h.query_text LIKE '%FROM \"public\".\"awsdms_changes%' THEN 1 ELSE 0 END),
               sum(CASE WHEN t.status = 'rolledback' AND h.query_text LIKE '%FROM \"public\".\"awsdms_changes%' THEN 1 ELSE 0 END),
               sum(CASE WHEN h.query_text LIKE '%WHERE \"id\"=%' THEN 1 ELSE 0 END)
             FROM sys_query_history h JOIN sys_transaction_history t ON t.transaction_id = h.transaction_id
             WHERE h.query_type = 'UPDATE' AND h.query_text LIKE '%AWS DMS%'",
            &[],
        )
        .await?;
    let get = |i: usize| row.get::<_, Option<i64>>(i).unwrap_or(0);
    Ok((get(0), get(1), get(2)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_one_by_one_inserts_the_missing_row_and_bulk_apply_returns() -> anyhow::Result<()> {
    let lab = SimLab::start("simfix_f1", false, |_| {}).await?;
    run_scenario(lab, |lab| Box::pin(f1(lab))).await
}

async fn f1(lab: &SimLab) -> anyhow::Result<()> {
    lab.applied_more(300).await?;
    // The simulator drops the next insert it captures; the workload may delete that row before
    // it starts updating it, and then nothing ever goes one by one: arm the fault again.
    for attempt in 1..=3 {
        lab.sim.set_fault(Fault::MissingThenUpdate);
        let started = eventually(
            "two one-by-one batches",
            Duration::from_secs(10),
            || async {
                let s = lab.sim.stats();
                if s.one_by_one_batches() >= 2 {
                    Ok(Some(()))
                } else {
                    anyhow::bail!("stats {s:?}")
                }
            },
        )
        .await;
        match started {
            Ok(()) => break,
            Err(error) if attempt == 3 => return Err(error),
            Err(_) => {}
        }
    }
    let live = dropped_in_source(lab, ORDERS).await?;
    assert_eq!(
        live.len(),
        1,
        "one dropped row still in the source: {live:?}"
    );
    let missing = live[0];
    eventually(
        "a rolled-back UPDATE in the system views",
        Duration::from_secs(20),
        || async { Ok((update_counts(lab).await?.1 >= 1).then_some(())) },
    )
    .await?;
    let before = lab.moto_task(TASK).await?;
    let config = lab.config_text("");

    // Dry run: the plan names the row and prints its SQL; nothing changes.
    let (code, out, err) =
        run_cli(&config, &["run", "one_by_one", "--task", TASK, "--dry-run"]).await?;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("outcome: dry_run"), "{out}");
    assert!(planned_missing(&out).contains(&missing), "{missing}: {out}");
    assert!(out.contains("LEFT JOIN"), "{out}");
    assert!(plan_sql_is_redshift(&out)? >= 3, "{out}");
    assert_eq!(
        lab.target_count(ORDERS, &[missing]).await?,
        0,
        "dry run inserts nothing"
    );
    assert_eq!(
        lab.moto_task(TASK).await?,
        before,
        "dry run leaves the task alone"
    );

    // The alert, through the webhook.
    let app = Running::spawn(lab.config("")).await?;
    fire(&app, "DMSOneByOneMode", &[("table", ORDERS)], "f1-first").await?;
    let jobs = lab.finished_jobs(2).await?;
    let job = &jobs[1];
    assert_eq!(job.outcome(), "succeeded", "{job:?}");
    assert!(
        ids(&job.details["missing"]["ids"]).contains(&missing),
        "{job:?}"
    );
    assert!(job.details["inserted"].as_u64() >= Some(1), "{job:?}");
    assert_eq!(job.details["restarted"], json!(true), "{job:?}");
    assert_eq!(lab.target_count(ORDERS, &[missing]).await?, 1);
    // Column for column as DMS writes it, read right after the insert. The workload keeps
    // bumping `quantity` of this row; every other column stays as the fix wrote it, or as a
    // later DMS UPDATE writes the same values.
    let (source_row, target_row) = row_texts(lab, ORDERS, missing).await?;
    let differing: Vec<_> = source_row
        .iter()
        .zip(&target_row)
        .filter(|((name, s), (_, t))| name != "quantity" && s != t)
        .collect();
    assert!(differing.is_empty(), "row {missing}: {differing:?}");
    let after = lab.moto_task(TASK).await?;
    assert_eq!(after.status, "running");
    assert!(
        after.started > before.started,
        "resumed: {before:?} -> {after:?}"
    );
    assert!(after.stopped.is_some(), "stopped first: {after:?}");
    eventually(
        "the simulator to see the restart",
        Duration::from_secs(10),
        || async { Ok((lab.sim.stats().task(TASK).unwrap().restarts >= 1).then_some(())) },
    )
    .await?;

    // Bulk apply is back: new committed bulk UPDATEs, while rolled-back ones and one-by-one
    // statements stop growing (one batch may have been in flight during the fix).
    let (bulk0, _, _) = update_counts(lab).await?;
    let (_, rolled1, single1) = eventually(
        "three more committed bulk UPDATEs",
        Duration::from_secs(30),
        || async {
            let counts = update_counts(lab).await?;
            Ok((counts.0 >= bulk0 + 3).then_some(counts))
        },
    )
    .await?;
    let (bulk2, rolled2, single2) = eventually(
        "three more committed bulk UPDATEs",
        Duration::from_secs(30),
        || async {
            let counts = update_counts(lab).await?;
            Ok((counts.0 >= bulk0 + 6).then_some(counts))
        },
    )
    .await?;
    assert_eq!(
        (rolled2, single2),
        (rolled1, single1),
        "no rollback nor one-by-one statement over three bulk batches ({bulk2} bulk UPDATEs)"
    );
    assert!(lab.sim.stats().task(TASK).unwrap().bulk_batches > 0);

    // Second run, by hand: nothing missing, nothing inserted, the task left alone.
    let (code, out, err) = run_cli(&config, &["run", "one_by_one", "--task", TASK]).await?;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("Nothing missing any more"), "{out}");
    let jobs = lab.finished_jobs(3).await?;
    assert_eq!(jobs[2].details["inserted"], json!(0), "{:?}", jobs[2]);
    assert_eq!(jobs[2].details["restarted"], json!(false), "{:?}", jobs[2]);
    assert_eq!(
        lab.moto_task(TASK).await?.started,
        after.started,
        "not restarted again"
    );

    // Another one-by-one alert within the cooldown: a human looks, nothing is restarted.
    fire(&app, "DMSOneByOneMode", &[("table", ORDERS)], "f1-second").await?;
    let jobs = lab.finished_jobs(4).await?;
    assert_eq!(jobs[3].outcome(), "needs_human", "{:?}", jobs[3]);
    assert_eq!(
        app.metric(&jobs_series("one_by_one", "needs_human"))
            .await?,
        1.0
    );
    assert_eq!(
        lab.moto_task(TASK).await?.started,
        after.started,
        "not restarted by the escalated job"
    );
    app.stop().await?;

    lab.sim.clear_fault();
    lab.assert_converges().await
}

// ---------------------------------------------------------------------------------------------
// F2 memory

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f2_memory_restarts_every_task_of_the_instance_without_loss() -> anyhow::Result<()> {
    let lab = SimLab::start("simfix_f2", true, |_| {}).await?;
    run_scenario(lab, |lab| Box::pin(f2(lab))).await
}

async fn f2(lab: &SimLab) -> anyhow::Result<()> {
    lab.applied_more(200).await?;
    let threshold = lab.config("").remediator.memory_threshold_bytes as f64;
    lab.sim.set_fault(Fault::MemoryLeak {
        bytes_per_second: 256 << 20,
    });
    eventually(
        "freeable memory below the threshold",
        Duration::from_secs(30),
        || async { Ok((lab.sim.memory().0 < threshold).then_some(())) },
    )
    .await?;
    let before = [lab.moto_task(TASK).await?, lab.moto_task(TASK_B).await?];
    let config = lab.config_text("");

    let (code, out, err) = run_cli(
        &config,
        &[
            "run",
            "memory",
            "--replication-instance",
            INSTANCE,
            "--dry-run",
        ],
    )
    .await?;
    assert_eq!(code, 0, "{out}\n{err}");
    for task in [TASK, TASK_B] {
        assert!(out.contains(&format!("Stop task {task} and wait")), "{out}");
    }
    assert!(out.contains("outcome: dry_run"), "{out}");
    assert_eq!(
        [lab.moto_task(TASK).await?, lab.moto_task(TASK_B).await?],
        before,
        "dry run leaves the tasks alone"
    );

    let app = Running::spawn(lab.config("")).await?;
    fire(
        &app,
        "DMSInstanceMemoryLow",
        &[("replication_instance", INSTANCE)],
        "f2-first",
    )
    .await?;
    let jobs = lab.finished_jobs(2).await?;
    lab.sim.clear_fault();
    let job = &jobs[1];
    assert_eq!(job.outcome(), "succeeded", "{job:?}");
    assert_eq!(job.details["restarted"], json!([TASK, TASK_B]), "{job:?}");
    let after = [lab.moto_task(TASK).await?, lab.moto_task(TASK_B).await?];
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.status, "running");
        assert!(a.started > b.started, "resumed: {b:?} -> {a:?}");
        assert!(a.stopped >= b.started, "stopped first: {b:?} -> {a:?}");
    }
    // One at a time: the first task was running again before the second was stopped.
    assert!(after[0].started <= after[1].stopped, "{after:?}");
    eventually(
        "the simulator to see both restarts",
        Duration::from_secs(10),
        || async {
            let s = lab.sim.stats();
            Ok(
                (s.task(TASK).unwrap().restarts >= 1 && s.task(TASK_B).unwrap().restarts >= 1)
                    .then_some(()),
            )
        },
    )
    .await?;
    let (freeable, _, _) = lab.sim.memory();
    assert!(freeable > threshold * 2.0, "memory given back: {freeable}");

    // The alert again (a new alert group) within the cooldown: no second restart.
    let (status, text) = app
        .post(
            Some(TOKEN),
            body(&payload(vec![rule_alert(
                "DMSInstanceMemoryLow",
                &[("replication_instance", INSTANCE)],
                "f2-second",
                &Utc::now().to_rfc3339(),
            )])),
        )
        .await?;
    assert_eq!(status, 202, "{text}");
    let jobs = lab.finished_jobs(3).await?;
    assert_eq!(jobs[2].outcome(), "skipped_cooldown", "{:?}", jobs[2]);
    assert_eq!(
        [lab.moto_task(TASK).await?, lab.moto_task(TASK_B).await?],
        after,
        "no second restart"
    );
    app.stop().await?;
    lab.assert_converges().await
}

// ---------------------------------------------------------------------------------------------
// F3 maintenance

const HOLD_SECS: f64 = 4.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_maintenance_stops_and_resumes_its_tasks_across_a_restart() -> anyhow::Result<()> {
    let lab = SimLab::start("simfix_f3", true, |_| {}).await?;
    run_scenario(lab, |lab| Box::pin(f3(lab))).await
}

async fn f3(lab: &SimLab) -> anyhow::Result<()> {
    lab.applied_more(200).await?;
    // Someone else stopped task B: the fix must leave it stopped.
    lab.tasks_api().stop(TASK_B).await?;
    eventually(
        "the simulator to see task B stopped",
        Duration::from_secs(10),
        || async { Ok((lab.sim.stats().task(TASK_B).unwrap().status == "stopped").then_some(())) },
    )
    .await?;
    let extra = format!("maintenance_hold = \"{HOLD_SECS}s\"\n");
    let config = lab.config_text(&extra);
    let before = [lab.moto_task(TASK).await?, lab.moto_task(TASK_B).await?];

    let (code, out, err) = run_cli(&config, &["run", "maintenance", "--dry-run"]).await?;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(&format!("Stop task {TASK} and wait")), "{out}");
    assert!(out.contains(&format!("Leave task {TASK_B} alone")), "{out}");
    assert!(out.contains("outcome: dry_run"), "{out}");
    assert_eq!(
        [lab.moto_task(TASK).await?, lab.moto_task(TASK_B).await?],
        before,
        "dry run leaves the tasks alone"
    );

    let app = Running::spawn(lab.config(&extra)).await?;
    fire(&app, "RedshiftMaintenanceImminent", &[], "f3-first").await?;
    let jobs = lab.finished_jobs(2).await?;
    let job = &jobs[1];
    assert_eq!(job.outcome(), "succeeded", "{job:?}");
    assert_eq!(job.details["stopped"], json!([TASK]), "{job:?}");
    assert_eq!(
        job.details["left_alone"][0]["task"],
        json!(TASK_B),
        "{job:?}"
    );
    // The remediator restarts during the hold: the resume is in the ledger, not in memory.
    app.stop().await?;
    let stopped = lab.moto_task(TASK).await?;
    assert_eq!(stopped.status, "stopped", "{stopped:?}");
    eventually(
        "the simulator to see the task stopped",
        Duration::from_secs(10),
        || async { Ok((lab.sim.stats().task(TASK).unwrap().status == "stopped").then_some(())) },
    )
    .await?;

    // Run again during the hold: nothing is running, nothing stopped, nothing scheduled.
    let (code, out, err) = run_cli(&config, &["run", "maintenance"]).await?;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("No task was running; nothing stopped."),
        "{out}"
    );
    let source = lab.dbs.source_client().await?;
    let steps: i64 = source
        .query_one("SELECT count(*) FROM dmsguard.scheduled_steps", &[])
        .await?
        .get(0);
    assert_eq!(steps, 1, "one scheduled resume");
    assert_eq!(
        lab.moto_task(TASK).await?.status,
        "stopped",
        "not resumed early"
    );

    let app = Running::spawn(lab.config(&extra)).await?;
    let resumed = eventually(
        "task resumed after the hold",
        Duration::from_secs(30),
        || async {
            let t = lab.moto_task(TASK).await?;
            Ok((t.status == "running").then_some(t))
        },
    )
    .await?;
    let (stop, start) = (stopped.stopped.unwrap(), resumed.started.unwrap());
    assert!(
        start - stop >= HOLD_SECS - 0.5,
        "resumed {:.1}s after the stop, hold {HOLD_SECS}s",
        start - stop
    );
    // The task runs as soon as StartReplicationTask returns; the step is recorded done after the
    // remediator has seen it running, so wait for that record.
    let step = eventually(
        "the resume step recorded done",
        Duration::from_secs(30),
        || async {
            let step = source
                .query_one(
                    "SELECT state, runner, result FROM dmsguard.scheduled_steps",
                    &[],
                )
                .await?;
            Ok((step.get::<_, String>(0) == "done").then_some(step))
        },
    )
    .await?;
    assert_eq!(step.get::<_, String>(0), "done");
    assert_eq!(
        step.get::<_, Option<String>>(1).as_deref(),
        Some(app.runner.as_str())
    );
    assert!(
        step.get::<_, Option<String>>(2)
            .unwrap_or_default()
            .contains(&format!("Resumed {TASK}")),
        "{:?}",
        step.get::<_, Option<String>>(2)
    );
    app.stop().await?;
    let b = lab.moto_task(TASK_B).await?;
    assert_eq!(b, before[1], "task B stays as its operator left it");

    lab.tasks_api().resume(TASK_B).await?;
    lab.assert_converges().await
}

// ---------------------------------------------------------------------------------------------
// F4 missing_rows

async fn drop_rows(lab: &SimLab, every: u32, at_least: usize) -> anyhow::Result<Vec<i64>> {
    lab.applied_more(200).await?;
    lab.sim.set_fault(Fault::DropRows { every });
    eventually(
        &format!("{at_least} dropped rows"),
        Duration::from_secs(30),
        || async { Ok((lab.sim.stats().dropped_ids().len() >= at_least).then_some(())) },
    )
    .await?;
    lab.sim.clear_fault();
    // The replication frontier moves past the dropped rows.
    lab.applied_more(300).await?;
    let missing = dropped_in_source(lab, ORDERS).await?;
    assert!(!missing.is_empty());
    assert_eq!(lab.target_count(ORDERS, &missing).await?, 0);
    Ok(missing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f4_missing_rows_of_today_come_back_while_dms_applies() -> anyhow::Result<()> {
    let lab = SimLab::start("simfix_f4", false, |_| {}).await?;
    run_scenario(lab, |lab| Box::pin(f4(lab))).await
}

async fn f4(lab: &SimLab) -> anyhow::Result<()> {
    let missing = drop_rows(lab, 5, 20).await?;
    let today = Utc::now().date_naive().to_string();
    let config = lab.config_text("");

    let (code, out, err) = run_cli(
        &config,
        &[
            "run",
            "missing_rows",
            "--table",
            ORDERS,
            "--day",
            &today,
            "--dry-run",
        ],
    )
    .await?;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("outcome: dry_run"), "{out}");
    let planned = planned_missing(&out);
    let dropped: Vec<i64> = lab
        .sim
        .stats()
        .dropped_ids()
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    assert!(!planned.is_empty(), "{out}");
    assert!(
        planned.iter().all(|id| dropped.contains(id)),
        "only dropped rows are planned: {out}\ndropped {dropped:?}"
    );
    assert!(plan_sql_is_redshift(&out)? >= 1, "{out}");
    assert_eq!(
        lab.target_count(ORDERS, &missing).await?,
        0,
        "dry run inserts nothing"
    );

    // Today's window by hand, while DMS keeps applying (the alert only ever names yesterday).
    let (code, out, err) = run_cli(
        &config,
        &["run", "missing_rows", "--table", ORDERS, "--day", &today],
    )
    .await?;
    assert_eq!(code, 0, "{out}\n{err}");
    let jobs = lab.finished_jobs(2).await?;
    let job = &jobs[1];
    assert_eq!(job.outcome(), "succeeded", "{job:?}");
    // Only dropped rows were inserted: rows still on their way from DMS were left to it.
    let dropped: Vec<i64> = lab
        .sim
        .stats()
        .dropped_ids()
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    let inserted = ids(&job.details["missing"]["ids"]);
    assert!(!inserted.is_empty(), "{job:?}");
    assert!(
        inserted.iter().all(|id| dropped.contains(id)),
        "{inserted:?} vs dropped {dropped:?}"
    );
    assert_eq!(job.details["inserted"], json!(inserted.len()), "{job:?}");
    assert_eq!(lab.duplicated_ids(ORDERS).await?, Vec::<i64>::new());
    // Quiet the source (its deletes would race the count), then every dropped row the source
    // still has is in the target once.
    lab.sim.stop_workload().await?;
    lab.sim.wait_caught_up(Duration::from_secs(30)).await?;
    let still = dropped_in_source(lab, ORDERS).await?;
    assert_eq!(
        lab.target_count(ORDERS, &still).await?,
        still.len() as i64,
        "every dropped row is back once"
    );

    // Second run: nothing missing, nothing inserted.
    let (code, out, err) = run_cli(
        &config,
        &["run", "missing_rows", "--table", ORDERS, "--day", &today],
    )
    .await?;
    assert_eq!(code, 0, "{out}\n{err}");
    let jobs = lab.finished_jobs(3).await?;
    assert_eq!(
        jobs[2].details["inserted"],
        json!(0),
        "{:?}\n{out}",
        jobs[2]
    );
    lab.assert_converges().await
}

/// Redshift becomes unreachable in the middle of an F4 fill: the job fails clearly, the next run
/// completes, and no row is ever duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redshift_down_mid_fill_fails_clearly_and_the_next_run_completes() -> anyhow::Result<()> {
    let lab = SimLab::start("simfix_f4_down", false, |c| c.rate = 600).await?;
    run_scenario(lab, |lab| Box::pin(redshift_down(lab))).await
}

async fn redshift_down(lab: &SimLab) -> anyhow::Result<()> {
    let missing = drop_rows(lab, 2, 300).await?;
    let total = missing.len() as i64;
    // One row per read and per locked move (each its own transaction): the fill takes long
    // enough to be cut.
    let extra = "insert_batch_rows = 1\nrepair_move_rows = 1\n";
    // Today's window by hand (the alert only ever names yesterday), cut while it fills.
    let today = Utc::now().date_naive().to_string();
    let config = lab.config_text(extra);
    let fill = tokio::spawn(async move {
        run_cli(
            &config,
            &["run", "missing_rows", "--table", ORDERS, "--day", &today],
        )
        .await
    });
    // The run first waits for replication to pass the window's sighting; on a loaded machine
    // (CI runs several test binaries at once) that alone can take tens of seconds.
    let at_cut = eventually("the fill to start", Duration::from_secs(120), || async {
        let n = lab.target_count(ORDERS, &missing).await?;
        Ok((n > 0).then_some(n))
    })
    .await?;
    lab.sim.set_fault(Fault::RedshiftRestart { seconds: 3 });
    let jobs = lab.finished_jobs(1).await?;
    let job = &jobs[0];
    assert_eq!(job.outcome(), "failed", "{job:?}");
    let error = job.error.clone().unwrap_or_default();
    // e.g. "inserting into public.orders failed: connection closed"
    assert!(
        error.contains("public.orders") && error.contains("failed"),
        "the failure says what and why: {job:?}"
    );
    let (code, out, err) = fill.await??;
    assert_eq!(code, 1, "the failed fill fails the run:\n{out}\n{err}");
    assert!(
        out.contains(&error),
        "the CLI shows the ledger's error:\n{out}"
    );
    assert!(at_cut < total, "cut mid-fill: {at_cut} of {total}");

    eventually("Redshift back", Duration::from_secs(30), || async {
        Ok(lab.dbs.redshift_client().await.ok().map(|_| ()))
    })
    .await?;
    let partial = lab.target_count(ORDERS, &missing).await?;
    assert!(partial < total, "the fill was cut: {partial} of {total}");
    assert_eq!(lab.duplicated_ids(ORDERS).await?, Vec::<i64>::new());

    // The next run, on a quiet source (its deletes would race the counts). After the restart
    // DMS silently stops applying (as after a Redshift reboot) until the task is restarted;
    // until then replication passes nothing and the fix rightly waits, so restart it first.
    lab.sim.stop_workload().await?;
    lab.tasks_api().stop(TASK).await?;
    lab.tasks_api().resume(TASK).await?;
    lab.sim.clear_fault();
    lab.sim.wait_caught_up(Duration::from_secs(60)).await?;
    let today = Utc::now().date_naive().to_string();
    let (code, out, err) = run_cli(
        &lab.config_text(""),
        &["run", "missing_rows", "--table", ORDERS, "--day", &today],
    )
    .await?;
    assert_eq!(code, 0, "{out}\n{err}");
    let jobs = lab.finished_jobs(2).await?;
    assert_eq!(jobs[1].outcome(), "succeeded", "{:?}", jobs[1]);
    assert!(
        jobs[1].details["inserted"].as_i64() >= Some(1),
        "{:?}",
        jobs[1]
    );
    let still = dropped_in_source(lab, ORDERS).await?;
    assert_eq!(lab.target_count(ORDERS, &still).await?, still.len() as i64);
    assert_eq!(lab.duplicated_ids(ORDERS).await?, Vec::<i64>::new());
    lab.assert_converges().await
}

// ---------------------------------------------------------------------------------------------
// F5 stalled_task

async fn stall(lab: &SimLab) -> anyhow::Result<()> {
    lab.sim.set_fault(Fault::Stall);
    eventually("the task to stall", Duration::from_secs(10), || async {
        let s = lab.sim.stats();
        Ok((s.task(TASK).unwrap().blocked.as_deref() == Some("stall")).then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f5_stalled_task_restarts_once_then_escalates() -> anyhow::Result<()> {
    let lab = SimLab::start("simfix_f5", false, |_| {}).await?;
    run_scenario(lab, |lab| Box::pin(f5(lab))).await
}

async fn f5(lab: &SimLab) -> anyhow::Result<()> {
    lab.applied_more(200).await?;
    stall(lab).await?;
    let stalled_at = lab.sim.stats().task(TASK).unwrap().applied;
    let before = lab.moto_task(TASK).await?;
    assert_eq!(before.status, "running", "a stalled task says running");
    let config = lab.config_text("");

    let (code, out, err) = run_cli(
        &config,
        &["run", "stalled_task", "--task", TASK, "--dry-run"],
    )
    .await?;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(&format!("Stop task {TASK} and wait")), "{out}");
    assert!(out.contains("outcome: dry_run"), "{out}");
    assert_eq!(
        lab.moto_task(TASK).await?,
        before,
        "dry run leaves the task alone"
    );
    let s = lab.sim.stats();
    assert_eq!(s.task(TASK).unwrap().blocked.as_deref(), Some("stall"));
    assert_eq!(s.task(TASK).unwrap().applied, stalled_at, "still stalled");

    let app = Running::spawn(lab.config("")).await?;
    fire(&app, "DMSTaskStalled", &[("task", TASK)], "f5-first").await?;
    let jobs = lab.finished_jobs(2).await?;
    assert_eq!(jobs[1].outcome(), "succeeded", "{:?}", jobs[1]);
    let after = lab.moto_task(TASK).await?;
    assert_eq!(after.status, "running");
    assert!(
        after.started > before.started,
        "resumed: {before:?} -> {after:?}"
    );
    assert!(after.stopped >= before.started, "stopped first: {after:?}");
    eventually("apply to resume", Duration::from_secs(20), || async {
        let t = lab.sim.stats().task(TASK).cloned().unwrap();
        Ok((t.restarts == 1 && t.blocked.is_none() && t.applied > stalled_at).then_some(()))
    })
    .await?;
    // The target catches up with everything committed so far, the workload still running.
    lab.sim.wait_caught_up(Duration::from_secs(30)).await?;

    // A second stall within the cooldown: a human looks, the task is not restarted again.
    stall(lab).await?;
    fire(&app, "DMSTaskStalled", &[("task", TASK)], "f5-second").await?;
    let jobs = lab.finished_jobs(3).await?;
    assert_eq!(jobs[2].outcome(), "needs_human", "{:?}", jobs[2]);
    assert_eq!(
        app.metric(&jobs_series("stalled_task", "needs_human"))
            .await?,
        1.0
    );
    assert_eq!(
        app.metric(&jobs_series("stalled_task", "succeeded"))
            .await?,
        1.0
    );
    assert_eq!(lab.moto_task(TASK).await?, after, "not restarted again");
    let t = lab.sim.stats().task(TASK).cloned().unwrap();
    assert_eq!((t.restarts, t.blocked.as_deref()), (1, Some("stall")));
    app.stop().await?;

    // The human restarts it; nothing was lost.
    lab.tasks_api().stop(TASK).await?;
    lab.tasks_api().resume(TASK).await?;
    lab.sim.clear_fault();
    lab.assert_converges().await
}
