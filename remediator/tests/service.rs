//! The remediator service against the real lab: PostgreSQL ledger, moto DMS, Alertmanager,
//! and the real binary for restarts and the CLI.

mod support;

use std::time::Duration;

use dmsguard_lab::harness::{self, eventually, Alertmanager};
use dmsguard_remediator::ledger::Ledger;
use serde_json::{json, Value};
use support::{
    alert, body, metric_value, payload, remediator_section, rule_alert, Lab, Running, TOKEN,
};

const WEBHOOKS: &str = "dmsguard_remediator_webhooks_total";

fn series(result: &str) -> String {
    format!("{WEBHOOKS}{{result=\"{result}\"}}")
}

#[tokio::test]
async fn wrong_or_missing_token_is_refused() -> anyhow::Result<()> {
    let lab = Lab::start("rem_token", &[("t1", "i1")]).await?;
    let app = Running::spawn(lab.config(&remediator_section("127.0.0.1:0", ""))).await?;
    let valid = body(&payload(vec![rule_alert(
        "DMSTaskStalled",
        &[("task", "t1")],
        "f1",
        "2026-11-25T01:00:00Z",
    )]));
    for token in [
        None,
        Some("wrong"),
        Some(""),
        Some(&TOKEN[..TOKEN.len() - 1]),
    ] {
        let (status, text) = app.post(token, valid.clone()).await?;
        assert_eq!(status, 401, "token {token:?}: {text}");
        assert!(text.contains("bearer token"), "{text}");
    }
    // A Basic header carrying the token is not a bearer token.
    let response = reqwest::Client::new()
        .post(app.url("/alerts"))
        .basic_auth(TOKEN, None::<&str>)
        .body(valid.clone())
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(app.metric(&series("unauthorized")).await?, 5.0);
    assert!(lab.jobs().await?.is_empty(), "no job from a refused call");

    let (status, text) = app.post(Some(TOKEN), valid).await?;
    assert_eq!(status, 202, "{text}");
    assert_eq!(app.metric(&series("accepted")).await?, 1.0);
    app.stop().await?;
    lab.dbs.drop().await
}

/// 50 malformed payloads, each a 4xx with a reason; the server keeps serving.
fn malformed_payloads() -> Vec<(String, Vec<u8>, u16)> {
    let good = payload(vec![rule_alert(
        "DMSTaskStalled",
        &[("task", "t1")],
        "f1",
        "2026-11-25T01:00:00Z",
    )]);
    let good_bytes = body(&good);
    let mut cases: Vec<(String, Vec<u8>, u16)> = Vec::new();
    for i in 1..=15 {
        let cut = good_bytes.len() * i / 16;
        cases.push((
            format!("truncated at {cut}"),
            good_bytes[..cut].to_vec(),
            400,
        ));
    }
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        body(&v)
    };
    let typed: Vec<(&str, Vec<u8>)> = vec![
        ("version as number", with(&|v| v["version"] = json!(4))),
        ("alerts as object", with(&|v| v["alerts"] = json!({}))),
        ("alerts as string", with(&|v| v["alerts"] = json!("x"))),
        (
            "labels as array",
            with(&|v| v["alerts"][0]["labels"] = json!([])),
        ),
        (
            "label value as number",
            with(&|v| v["alerts"][0]["labels"]["task"] = json!(7)),
        ),
        (
            "startsAt as number",
            with(&|v| v["alerts"][0]["startsAt"] = json!(123)),
        ),
        (
            "fingerprint null",
            with(&|v| v["alerts"][0]["fingerprint"] = Value::Null),
        ),
        (
            "status as bool",
            with(&|v| v["alerts"][0]["status"] = json!(true)),
        ),
        ("top-level array", b"[1,2,3]".to_vec()),
        ("top-level string", b"\"alerts\"".to_vec()),
    ];
    let huge: Vec<(&str, Vec<u8>)> = vec![
        (
            "label value 1025 chars",
            with(&|v| v["alerts"][0]["labels"]["task"] = json!("t".repeat(1025))),
        ),
        (
            "label value 500 KB",
            with(&|v| v["alerts"][0]["labels"]["task"] = json!("t".repeat(500_000))),
        ),
        (
            "100 labels",
            with(&|v| {
                for i in 0..100 {
                    v["alerts"][0]["labels"][format!("l{i}")] = json!("x");
                }
            }),
        ),
        (
            "label name 200 chars",
            with(&|v| v["alerts"][0]["labels"]["n".repeat(200)] = json!("x")),
        ),
        (
            "alertname 2000 chars",
            with(&|v| v["alerts"][0]["labels"]["alertname"] = json!("A".repeat(2000))),
        ),
    ];
    let missing: Vec<(&str, Vec<u8>)> = vec![
        (
            "no labels",
            with(&|v| {
                v["alerts"][0].as_object_mut().unwrap().remove("labels");
            }),
        ),
        (
            "no alertname",
            with(&|v| v["alerts"][0]["labels"] = json!({"task": "t1"})),
        ),
        (
            "stalled alert without task",
            with(&|v| v["alerts"][0]["labels"] = json!({"alertname": "DMSTaskStalled"})),
        ),
        (
            "memory alert without replication_instance",
            with(&|v| {
                v["alerts"][0]["labels"] =
                    json!({"alertname": "DMSInstanceMemoryLow", "instance": "10.0.0.1:9854"})
            }),
        ),
        (
            "missing-rows alert without table",
            with(&|v| v["alerts"][0]["labels"] = json!({"alertname": "RedshiftMissingRows"})),
        ),
    ];
    let versions: Vec<(&str, Vec<u8>)> = vec![
        ("version 3", with(&|v| v["version"] = json!("3"))),
        ("version empty", with(&|v| v["version"] = json!(""))),
        ("version 4.0", with(&|v| v["version"] = json!("4.0"))),
        (
            "no version",
            with(&|v| {
                v.as_object_mut().unwrap().remove("version");
            }),
        ),
        ("version null", with(&|v| v["version"] = Value::Null)),
    ];
    let other: Vec<(&str, Vec<u8>)> = vec![
        ("empty body", Vec::new()),
        ("json null", b"null".to_vec()),
        ("not json", b"alerts please".to_vec()),
        ("invalid utf-8", vec![0x7b, 0xff, 0xfe, 0x7d]),
        ("no alerts", with(&|v| v["alerts"] = json!([]))),
        (
            "status pending",
            with(&|v| v["alerts"][0]["status"] = json!("pending")),
        ),
        (
            "startsAt yesterday",
            with(&|v| v["alerts"][0]["startsAt"] = json!("yesterday")),
        ),
        (
            "empty fingerprint",
            with(&|v| v["alerts"][0]["fingerprint"] = json!("")),
        ),
    ];
    for (name, bytes) in typed
        .into_iter()
        .chain(huge)
        .chain(missing)
        .chain(versions)
        .chain(other)
    {
        cases.push((name.to_owned(), bytes, 400));
    }
    let big_annotation = |size: usize| {
        with(&|v| v["alerts"][0]["annotations"]["description"] = json!("d".repeat(size)))
    };
    cases.push(("10 MB body".into(), big_annotation(10 * 1024 * 1024), 413));
    cases.push(("2 MB body".into(), big_annotation(2 * 1024 * 1024), 413));
    cases
}

#[tokio::test]
async fn fifty_malformed_payloads_get_4xx_and_the_server_keeps_serving() -> anyhow::Result<()> {
    let lab = Lab::start("rem_fuzz", &[("t1", "i1")]).await?;
    let app = Running::spawn(lab.config(&remediator_section("127.0.0.1:0", ""))).await?;
    let cases = malformed_payloads();
    assert_eq!(cases.len(), 50);
    for (name, bytes, expected) in &cases {
        let (status, text) = app.post(Some(TOKEN), bytes.clone()).await?;
        assert_eq!(status, *expected, "{name}: {text}");
        let reason: Value = serde_json::from_str(&text)?;
        assert!(
            reason["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{name}: no reason in {text}"
        );
        let health = reqwest::get(app.url("/healthz")).await?;
        assert_eq!(health.status().as_u16(), 200, "after {name}");
    }
    assert_eq!(app.metric(&series("invalid")).await?, 48.0);
    assert_eq!(app.metric(&series("too_large")).await?, 2.0);
    assert!(
        lab.jobs().await?.is_empty(),
        "no job from a malformed payload"
    );
    let good = body(&payload(vec![rule_alert(
        "DMSTaskStalled",
        &[("task", "t1")],
        "f1",
        "2026-11-25T01:00:00Z",
    )]));
    assert_eq!(app.post(Some(TOKEN), good).await?.0, 202);
    app.stop().await?;
    lab.dbs.drop().await
}

#[tokio::test]
async fn same_alert_delivered_20_times_concurrently_runs_one_job() -> anyhow::Result<()> {
    let lab = Lab::start("rem_dedup", &[("t1", "i1")]).await?;
    let app = Running::spawn(lab.config(&remediator_section("127.0.0.1:0", ""))).await?;
    let one = body(&payload(vec![rule_alert(
        "DMSTaskStalled",
        &[("task", "t1")],
        "fp-1",
        "2026-11-25T01:00:00.5Z",
    )]));
    let url = app.url("/alerts");
    let posts = (0..20).map(|_| support::post_alerts(&url, Some(TOKEN), one.clone()));
    for (status, text) in futures::future::try_join_all(posts).await? {
        assert_eq!(status, 202, "{text}");
    }
    let jobs = lab.finished_jobs(1).await?;
    assert_eq!(
        jobs[0].get::<_, &str>("outcome"),
        "succeeded",
        "{:?}",
        jobs[0].get::<_, Option<String>>("error")
    );
    assert_eq!(app.metric(&series("accepted")).await?, 1.0);
    assert_eq!(app.metric(&series("duplicate")).await?, 19.0);
    assert!(lab.was_stopped("t1").await?, "the one job restarted t1");
    assert!(lab.task("t1").await?.is_running());
    assert_eq!(
        app.metric("dmsguard_remediator_jobs_total{fix=\"stalled_task\",outcome=\"succeeded\"}")
            .await?,
        1.0
    );
    app.stop().await?;
    lab.dbs.drop().await
}

#[tokio::test]
async fn alertmanager_repeats_make_one_job_and_resolution_is_recorded() -> anyhow::Result<()> {
    let lab = Lab::start("rem_am", &[("t1", "i1")]).await?;
    let app = Running::spawn(lab.config(&remediator_section("127.0.0.1:0", ""))).await?;
    let am_config = |token: &str| {
        format!(
            "route:\n  receiver: remediator\n  group_by: ['alertname', 'task']\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 2s\n\
             receivers:\n  - name: remediator\n    webhook_configs:\n      - url: {}\n        send_resolved: true\n        http_config:\n          authorization:\n            type: Bearer\n            credentials: {token}\n",
            app.url("/alerts")
        )
    };
    let am = Alertmanager::spawn(&am_config(TOKEN)).await?;
    let am_wrong = Alertmanager::spawn(&am_config("not-the-token")).await?;
    let starts_at = chrono::Utc::now() - chrono::Duration::seconds(5);
    let firing = json!([{
        "labels": support::alert_rules::rule_labels_json("DMSTaskStalled", &[("task", "t1")]),
        "annotations": {"summary": "t1 stalled"},
        "startsAt": starts_at.to_rfc3339(),
    }]);
    am.post_alerts(&firing).await?;
    am_wrong.post_alerts(&firing).await?;

    // Alertmanager sends the group again every repeat interval: one job, then duplicates.
    eventually("Alertmanager repeats", Duration::from_secs(40), || async {
        Ok((app.metric(&series("duplicate")).await? >= 2.0).then_some(()))
    })
    .await?;
    let jobs = lab.finished_jobs(1).await?;
    assert_eq!(jobs[0].get::<_, &str>("state"), "succeeded");
    assert!(
        app.metric(&series("unauthorized")).await? >= 1.0,
        "the wrong token was refused"
    );
    assert_eq!(app.metric(&series("accepted")).await?, 1.0);

    let resolved = json!([{
        "labels": support::alert_rules::rule_labels_json("DMSTaskStalled", &[("task", "t1")]),
        "annotations": {"summary": "t1 stalled"},
        "startsAt": starts_at.to_rfc3339(),
        "endsAt": chrono::Utc::now().to_rfc3339(),
    }]);
    am.post_alerts(&resolved).await?;
    eventually(
        "the resolution recorded on the job",
        Duration::from_secs(40),
        || async {
            let jobs = lab.jobs().await?;
            Ok(jobs[0]
                .get::<_, Option<chrono::DateTime<chrono::Utc>>>("resolved_at")
                .map(|_| ()))
        },
    )
    .await?;
    assert!(app.metric(&series("resolved")).await? >= 1.0);
    assert_eq!(lab.jobs().await?.len(), 1, "still one job");
    app.stop().await?;
    lab.dbs.drop().await
}

#[tokio::test]
async fn stalled_task_restarts_once_then_escalates_and_status_page_shows_it() -> anyhow::Result<()>
{
    let lab = Lab::start("rem_stall", &[("t1", "i1")]).await?;
    let app = Running::spawn(lab.config(&remediator_section("127.0.0.1:0", ""))).await?;
    let first = body(&payload(vec![
        rule_alert(
            "DMSTaskStalled",
            &[("task", "t1")],
            "fp-a",
            "2026-11-25T01:00:00Z",
        ),
        alert(
            "SomeoneElsesAlert",
            &[("task", "<t1>")],
            "fp-x",
            "2026-11-25T01:00:00Z",
        ),
    ]));
    assert_eq!(app.post(Some(TOKEN), first).await?.0, 202);
    let jobs = lab.finished_jobs(1).await?;
    assert_eq!(jobs[0].get::<_, &str>("outcome"), "succeeded");
    assert!(lab.was_stopped("t1").await?);
    assert_eq!(app.metric(&series("unknown_alert")).await?, 1.0);

    // It stalls again within the cooldown: no second restart, a human is needed.
    let again = body(&payload(vec![rule_alert(
        "DMSTaskStalled",
        &[("task", "t1")],
        "fp-a",
        "2026-11-25T01:10:00Z",
    )]));
    assert_eq!(app.post(Some(TOKEN), again).await?.0, 202);
    let jobs = lab.finished_jobs(2).await?;
    assert_eq!(jobs[1].get::<_, &str>("state"), "needs_human");
    assert_eq!(
        jobs[1].get::<_, Option<chrono::DateTime<chrono::Utc>>>("acting_at"),
        None
    );
    assert_eq!(
        app.metric("dmsguard_remediator_jobs_total{fix=\"stalled_task\",outcome=\"needs_human\"}")
            .await?,
        1.0
    );
    assert!(lab.task("t1").await?.is_running());

    let page = reqwest::get(app.url("/")).await?;
    assert!(page.headers()["content-type"]
        .to_str()?
        .starts_with("text/html"));
    let html = page.text().await?;
    assert!(
        html.contains("DMSTaskStalled")
            && html.contains("needs_human")
            && html.contains("Restarted task t1."),
        "{html}"
    );
    let metrics = reqwest::get(app.url("/metrics")).await?;
    assert!(metrics.headers()["content-type"]
        .to_str()?
        .starts_with("application/openmetrics-text"));
    let text = metrics.text().await?;
    assert!(text.ends_with("# EOF\n"));
    assert_eq!(
        metric_value(
            &text,
            "dmsguard_remediator_job_duration_seconds_count{fix=\"stalled_task\"}"
        )?,
        2.0
    );
    assert_eq!(
        metric_value(&text, "dmsguard_remediator_scheduled_steps_pending")?,
        0.0
    );
    app.stop().await?;
    lab.dbs.drop().await
}

#[tokio::test]
async fn memory_fix_restarts_each_running_task_on_the_instance_only() -> anyhow::Result<()> {
    let lab = Lab::start(
        "rem_memory",
        &[("t1", "i1"), ("t2", "i1"), ("t3", "i1"), ("t4", "i2")],
    )
    .await?;
    lab.tasks_api().stop("t3").await?; // stopped by someone else: stays stopped
    let app = Running::spawn(lab.config(&remediator_section("127.0.0.1:0", ""))).await?;
    let alert = body(&payload(vec![rule_alert(
        "DMSInstanceMemoryLow",
        &[("replication_instance", "i1")],
        "fp-m",
        "2026-11-25T01:00:00Z",
    )]));
    assert_eq!(app.post(Some(TOKEN), alert).await?.0, 202);
    let jobs = lab.finished_jobs(1).await?;
    assert_eq!(
        jobs[0].get::<_, &str>("outcome"),
        "succeeded",
        "{:?}",
        jobs[0].get::<_, Option<String>>("error")
    );
    let details: Value = jobs[0].get("details");
    assert_eq!(details["restarted"], json!(["t1", "t2"]));
    for task in ["t1", "t2"] {
        assert!(lab.was_stopped(task).await?, "{task} restarted");
        assert!(lab.task(task).await?.is_running(), "{task} running again");
    }
    assert!(lab.task("t3").await?.is_stopped(), "t3 left stopped");
    assert!(!lab.was_stopped("t4").await?, "t4 is on another instance");
    app.stop().await?;
    lab.dbs.drop().await
}

#[tokio::test]
async fn task_locks_exclude_other_sessions_all_or_none() -> anyhow::Result<()> {
    let dbs = harness::TestDatabases::create("rem_locks").await?;
    let a = Ledger::open(&dbs.remediator_source()).await?;
    let b = Ledger::open(&dbs.remediator_source()).await?; // a second replica; migrations are idempotent
    let t = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let held = a.lock_tasks(&t(&["t1"])).await?.expect("free task locks");
    assert!(
        b.lock_tasks(&t(&["t2", "t1"])).await?.is_none(),
        "t1 is held"
    );
    let t2 = b
        .lock_tasks(&t(&["t2"]))
        .await?
        .expect("t2 was released after the failed attempt");
    held.release().await;
    let again = b
        .lock_tasks(&t(&["t1"]))
        .await?
        .expect("t1 free after release");
    assert!(a.lock_tasks(&t(&["t1"])).await?.is_none());
    drop(again);
    drop(t2);
    eventually(
        "lock freed when its connection closes",
        Duration::from_secs(10),
        || async { Ok(a.lock_tasks(&t(&["t1"])).await?.map(|_| ())) },
    )
    .await?;
    dbs.drop().await
}

#[tokio::test]
async fn two_instances_on_one_ledger_never_act_on_one_task_at_once() -> anyhow::Result<()> {
    let lab = Lab::start("rem_replicas", &[("t1", "i1")]).await?;
    let section = remediator_section(
        "127.0.0.1:0",
        "[remediator.fixes.stalled_task]\ncooldown = \"0s\"\nmax_concurrency = 4\n",
    );
    let a = Running::spawn(lab.config(&section)).await?;
    let b = Running::spawn(lab.config(&section)).await?;
    let n = 16;
    let posts = (0..n).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        let bytes = body(&payload(vec![rule_alert(
            "DMSTaskStalled",
            &[("task", "t1")],
            &format!("fp-{i}"),
            "2026-11-25T01:00:00Z",
        )]));
        let url = app.url("/alerts");
        async move { support::post_alerts(&url, Some(TOKEN), bytes).await }
    });
    for (status, text) in futures::future::try_join_all(posts).await? {
        assert_eq!(status, 202, "{text}");
    }
    let jobs = lab.finished_jobs(n).await?;
    let mut spans: Vec<(
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
        String,
    )> = Vec::new();
    for job in &jobs {
        assert_eq!(
            job.get::<_, &str>("outcome"),
            "succeeded",
            "job {}: {:?}",
            job.get::<_, i64>("id"),
            job.get::<_, Option<String>>("error")
        );
        spans.push((
            job.get("acting_at"),
            job.get("finished_at"),
            job.get("runner"),
        ));
    }
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "overlap on t1: {pair:?}");
    }
    let runners: std::collections::BTreeSet<&str> = spans.iter().map(|s| s.2.as_str()).collect();
    assert_eq!(runners.len(), 2, "both instances ran jobs: {runners:?}");
    assert!(lab.task("t1").await?.is_running());
    a.stop().await?;
    b.stop().await?;
    lab.dbs.drop().await
}

/// The real binary: serve, SIGKILL, restart; the scheduled resume still runs.
#[tokio::test]
async fn maintenance_resume_runs_after_sigkill_and_restart() -> anyhow::Result<()> {
    let lab = Lab::start("rem_sigkill", &[("t1", "i1"), ("t2", "i1"), ("t3", "i2")]).await?;
    lab.tasks_api().stop("t3").await?; // someone else's stop: must stay stopped
    let dir = tempfile::tempdir()?;
    let start = |port: u16, name: &str| -> anyhow::Result<tokio::process::Child> {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            lab.config_text(&remediator_section(
                &format!("127.0.0.1:{port}"),
                "maintenance_hold = \"8s\"\n",
            )),
        )?;
        let log = std::fs::File::create(dir.path().join(format!("{name}.log")))?;
        Ok(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_dmsguard-remediator"))
                .args(["serve", "--config"])
                .arg(&path)
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()?,
        )
    };
    let healthy = |port: u16| async move {
        eventually(
            "remediator healthy",
            Duration::from_secs(30),
            || async move {
                let r = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await;
                Ok(r.ok().filter(|r| r.status().is_success()).map(|_| ()))
            },
        )
        .await
    };
    let port = harness::free_port();
    let mut first = start(port, "first")?;
    healthy(port).await?;
    let alert = body(&payload(vec![rule_alert(
        "RedshiftMaintenanceImminent",
        &[],
        "fp-maint",
        "2026-11-25T01:00:00Z",
    )]));
    let (status, text) = support::post_alerts(
        &format!("http://127.0.0.1:{port}/alerts"),
        Some(TOKEN),
        alert,
    )
    .await?;
    assert_eq!(status, 202, "{text}");
    let jobs = lab.finished_jobs(1).await?;
    assert_eq!(
        jobs[0].get::<_, &str>("outcome"),
        "succeeded",
        "{:?}",
        jobs[0].get::<_, Option<String>>("error")
    );
    let first_runner: String = jobs[0].get("runner");
    assert!(lab.task("t1").await?.is_stopped() && lab.task("t2").await?.is_stopped());

    first.kill().await?; // SIGKILL
    let ledger = lab.dbs.source_client().await?;
    let step = ledger
        .query_one(
            "SELECT id, state, run_at > now(), tasks FROM dmsguard.scheduled_steps",
            &[],
        )
        .await?;
    assert_eq!(step.get::<_, &str>(1), "pending");
    assert!(
        step.get::<_, bool>(2),
        "the resume was still ahead when the remediator died"
    );
    assert_eq!(step.get::<_, Vec<String>>(3), vec!["t1", "t2"]);

    let port = harness::free_port();
    let mut second = start(port, "second")?;
    healthy(port).await?;
    let done = eventually(
        "the resume step done after restart",
        Duration::from_secs(40),
        || async {
            let row = ledger
                .query_one(
                    "SELECT state, runner, result FROM dmsguard.scheduled_steps",
                    &[],
                )
                .await?;
            Ok((row.get::<_, &str>(0) == "done")
                .then(|| (row.get::<_, String>(1), row.get::<_, String>(2))))
        },
    )
    .await?;
    assert_ne!(done.0, first_runner, "the restarted process ran it");
    assert_eq!(done.1, "Resumed t1, t2.");
    assert!(lab.task("t1").await?.is_running() && lab.task("t2").await?.is_running());
    assert!(
        lab.task("t3").await?.is_stopped(),
        "t3 was stopped by someone else: left stopped"
    );
    second.kill().await?;
    lab.dbs.drop().await
}

/// `run` goes through the same path as alerts (recorded in the ledger); `jobs` lists them.
#[tokio::test]
async fn cli_runs_fixes_by_hand_and_lists_jobs() -> anyhow::Result<()> {
    let lab = Lab::start("rem_cli", &[("t1", "i1")]).await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("dmsguard.toml");
    std::fs::write(
        &path,
        lab.config_text(&remediator_section("127.0.0.1:0", "")),
    )?;
    let cli = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dmsguard-remediator"));
        cmd.arg("--config").arg(&path).args(args);
        cmd.output()
    };
    let out = cli(&["run", "stalled_task", "--task", "t1", "--dry-run"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("1. Stop task t1") && stdout.contains("outcome: dry_run"),
        "{stdout}"
    );
    assert!(!lab.was_stopped("t1").await?, "dry run changed nothing");

    let out = cli(&["run", "stalled_task", "--task", "t1"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("outcome: succeeded"), "{stdout}");
    assert!(lab.was_stopped("t1").await? && lab.task("t1").await?.is_running());

    let out = cli(&["run", "one_by_one", "--task", "t1"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("outcome: needs_human") && stdout.contains("nothing repaired"),
        "with no rolled-back UPDATE the fix stops for a human: {stdout}"
    );

    let out = cli(&["run", "memory"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("replication-instance"));

    let out = cli(&["jobs", "--limit", "10"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "header and three jobs: {stdout}");
    assert!(
        lines[1].contains("one_by_one") && lines[1].contains("needs_human"),
        "{stdout}"
    );
    assert!(
        lines[2].contains("stalled_task") && lines[2].contains("succeeded"),
        "{stdout}"
    );
    assert!(
        lines[3].contains("(dry run)") && lines[3].contains("(by hand)"),
        "{stdout}"
    );
    lab.dbs.drop().await
}

#[tokio::test]
async fn dms_task_ops_resolve_stop_resume_and_report_errors() -> anyhow::Result<()> {
    use dmsguard_pipeline::dms_tasks::DmsTaskError;
    let lab = Lab::start("rem_dmsops", &[("t1", "i1")]).await?;
    let tasks = lab.tasks_api();
    assert!(matches!(
        tasks.describe("nope").await,
        Err(DmsTaskError::NotFound(name)) if name == "nope"
    ));
    let state = tasks.describe("t1").await?;
    assert!(state.is_running() && state.arn.ends_with("t1"), "{state:?}");
    assert!(tasks.stop("t1").await?.is_stopped());
    let err = tasks.stop("t1").await.unwrap_err();
    assert!(
        matches!(
            err,
            DmsTaskError::Api {
                operation: "StopReplicationTask",
                ..
            }
        ),
        "{err}"
    );
    assert!(tasks.resume("t1").await?.is_running());
    lab.dbs.drop().await
}

#[tokio::test]
async fn disabled_dry_run_and_cooldown_record_jobs_that_change_nothing() -> anyhow::Result<()> {
    let lab = Lab::start("rem_switches", &[("t1", "i1"), ("t2", "i1")]).await?;
    let app = Running::spawn(lab.config(&remediator_section(
        "127.0.0.1:0",
        "[remediator.fixes.stalled_task]\nenabled = false\n[remediator.fixes.memory]\ndry_run = true\n",
    )))
    .await?;
    let post = |a: Value| {
        let bytes = body(&payload(vec![a]));
        let url = app.url("/alerts");
        async move { support::post_alerts(&url, Some(TOKEN), bytes).await }
    };
    assert_eq!(
        post(rule_alert(
            "DMSTaskStalled",
            &[("task", "t1")],
            "fp-s",
            "2026-11-25T01:00:00Z"
        ))
        .await?
        .0,
        202
    );
    assert_eq!(
        post(rule_alert(
            "DMSInstanceMemoryLow",
            &[("replication_instance", "i1")],
            "fp-m",
            "2026-11-25T01:00:00Z"
        ))
        .await?
        .0,
        202
    );
    let jobs = lab.finished_jobs(2).await?;
    assert_eq!(
        (
            jobs[0].get::<_, &str>("state"),
            jobs[0].get::<_, &str>("outcome")
        ),
        ("skipped", "disabled")
    );
    assert_eq!(
        (
            jobs[1].get::<_, &str>("state"),
            jobs[1].get::<_, &str>("outcome")
        ),
        ("skipped", "dry_run")
    );
    let plan: String = lab
        .dbs
        .source_client()
        .await?
        .query_one(
            "SELECT plan_text FROM dmsguard.jobs WHERE id = $1",
            &[&jobs[1].get::<_, i64>("id")],
        )
        .await?
        .get(0);
    assert!(
        plan.contains("1. Stop task t1") && plan.contains("Resume task t2"),
        "{plan}"
    );
    assert!(
        !lab.was_stopped("t1").await? && !lab.was_stopped("t2").await?,
        "nothing changed"
    );
    assert_eq!(
        app.metric("dmsguard_remediator_jobs_total{fix=\"memory\",outcome=\"dry_run\"}")
            .await?,
        1.0
    );

    // Maintenance acts once; a second alert within the cooldown is skipped.
    assert_eq!(
        post(rule_alert(
            "RedshiftMaintenanceImminent",
            &[],
            "fp-r",
            "2026-11-25T01:00:00Z"
        ))
        .await?
        .0,
        202
    );
    lab.finished_jobs(3).await?;
    assert_eq!(
        post(rule_alert(
            "RedshiftMaintenanceImminent",
            &[],
            "fp-r",
            "2026-11-25T02:00:00Z"
        ))
        .await?
        .0,
        202
    );
    let jobs = lab.finished_jobs(4).await?;
    assert_eq!(jobs[2].get::<_, &str>("outcome"), "succeeded");
    assert_eq!(jobs[3].get::<_, &str>("outcome"), "skipped_cooldown");
    assert!(lab.task("t1").await?.is_stopped() && lab.task("t2").await?.is_stopped());
    eventually(
        "the resume counted as pending",
        Duration::from_secs(10),
        || async {
            Ok((app
                .metric("dmsguard_remediator_scheduled_steps_pending")
                .await?
                == 1.0)
                .then_some(()))
        },
    )
    .await?;
    app.stop().await?;
    lab.dbs.drop().await
}

#[tokio::test]
async fn alerts_naming_nothing_configured_are_ignored_with_a_reason_not_failed_jobs(
) -> anyhow::Result<()> {
    let lab = Lab::start("rem_unknown_target", &[("t1", "i1")]).await?;
    let tables = "[[tables]]\nsource = 'public.\"Subscriber Events\"'\ntask = \"t1\"\n\n";
    let config = dmsguard_pipeline::config::Config::from_toml(
        &format!(
            "{}{tables}{}",
            lab.config_text(""),
            remediator_section("127.0.0.1:0", "")
        ),
        &|_| None,
    )?;
    let app = Running::spawn(config).await?;
    let at = "2026-11-25T01:00:00Z";
    let unknown = body(&payload(vec![
        rule_alert("DMSTaskStalled", &[("task", "t9")], "fp-task", at),
        rule_alert(
            "DMSInstanceMemoryLow",
            &[("replication_instance", "i9")],
            "fp-instance",
            at,
        ),
        rule_alert(
            "RedshiftMissingRows",
            &[("table", "public.subscriber_events")],
            "fp-table",
            at,
        ),
        rule_alert(
            "DMSOneByOneMode",
            &[("table", "public.nope")],
            "fp-table-2",
            at,
        ),
    ]));
    let (status, text) = app.post(Some(TOKEN), unknown).await?;
    assert_eq!(status, 202, "{text}");
    let response: Value = serde_json::from_str(&text)?;
    assert_eq!(response["jobs"], json!([]), "{text}");
    let ignored = response["ignored"].as_array().expect("ignored list");
    let reasons: Vec<(&str, &str, &str)> = ignored
        .iter()
        .map(|i| {
            (
                i["fingerprint"].as_str().unwrap_or_default(),
                i["result"].as_str().unwrap_or_default(),
                i["reason"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(reasons.len(), 4, "{text}");
    for ((fingerprint, result, reason), (want_fp, needle)) in reasons.iter().zip([
        ("fp-task", "task `t9`, which is not in [[tasks]]"),
        (
            "fp-instance",
            "replication instance `i9`, which no [[tasks]] entry runs on",
        ),
        (
            "fp-table",
            "table `public.subscriber_events`, which is not in [[tables]]",
        ),
        (
            "fp-table-2",
            "table `public.nope`, which is not in [[tables]]",
        ),
    ]) {
        assert_eq!((*fingerprint, *result), (want_fp, "unknown_target"));
        assert!(reason.contains(needle), "{reason}");
    }
    assert_eq!(app.metric(&series("unknown_target")).await?, 4.0);
    assert_eq!(app.metric(&series("accepted")).await?, 0.0);
    assert!(lab.jobs().await?.is_empty(), "no job, so no failed job");

    // The configured table, written another way, is accepted and queues one job.
    let known = body(&payload(vec![rule_alert(
        "RedshiftMissingRows",
        &[("table", "PUBLIC.\"Subscriber Events\"")],
        "fp-known",
        at,
    )]));
    let (status, text) = app.post(Some(TOKEN), known).await?;
    assert_eq!(status, 202, "{text}");
    assert_eq!(app.metric(&series("accepted")).await?, 1.0);
    let jobs = lab.jobs().await?;
    assert_eq!(jobs.len(), 1);
    assert_eq!(app.metric(&series("unknown_target")).await?, 4.0);
    app.stop().await?;
    lab.dbs.drop().await
}

#[test]
fn webhook_labels_come_from_the_real_rules() {
    use support::alert_rules::rule_labels;
    let labels = rule_labels("RedshiftMissingRows", &[("table", "public.t")]);
    for pair in [
        ("table", "public.t"),
        ("window", "yesterday"),
        ("severity", "warning"),
    ] {
        assert!(
            labels.iter().any(|(k, v)| (k.as_str(), v.as_str()) == pair),
            "{pair:?} in {labels:?}"
        );
    }
    let stalled = rule_labels("DMSTaskStalled", &[("task", "t1")]);
    assert!(stalled.iter().any(|(k, v)| k == "status" && v == "running"));
    let one_by_one = rule_labels("DMSOneByOneMode", &[("table", "public.t")]);
    assert!(
        one_by_one.iter().all(|(k, _)| k != "task"),
        "{one_by_one:?}"
    );
    // What no rule sends is refused before it reaches a webhook.
    for (name, values) in [
        ("DMSOneByOneMode", vec![("task", "t1")]),
        ("RedshiftMissingRows", vec![("window", "today")]),
        ("DMSTaskStalled", vec![("status", "stopped")]),
        ("NoSuchRule", vec![]),
    ] {
        let refused = std::panic::catch_unwind(|| rule_labels(name, &values));
        assert!(refused.is_err(), "{name} {values:?} was accepted");
    }
}
