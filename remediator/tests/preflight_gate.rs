//! The preflight gate through the real `dmsguard-remediator` binary on the lab, connected as the
//! remediator's least-privilege user: with SELECT on the source table revoked, `missing_rows`
//! is disabled (`dmsguard_remediator_fix_enabled` 0, `dmsguard_remediator_fix_failed_checks` 1)
//! while the fixes that do not read the source
//! stay enabled; its alert is acknowledged (2xx) and recorded as a `refused` job naming the
//! failed check and its GRANT; a hand run is refused too unless `--skip-preflight`. Once the
//! grant is back, a SIGHUP rechecks, the fix is enabled again and the alert's repeat repairs
//! the rows; with a 1s `preflight_interval` (applied by a reload) a grant taken away again
//! disables it with no signal.

// Both support modules load the alert rules' helpers.
#![allow(clippy::duplicate_mod)]

mod repair_lab;
mod support;

use std::time::Duration;

use dmsguard_lab::harness::{eventually, free_port, BinaryProcess};
use repair_lab::{copy_as_dms, fill_source, run_binary, source_ddl, target_ddl, target_ids, text};
use support::{body, metric_value, payload, post_alerts, rule_alert, Lab, TOKEN};

const PADS: usize = 1;
const ROWS: i64 = 120;
const YESTERDAY_ROWS: i64 = 100;
const USER: &str = "dmsguard_remediator";

async fn metrics(base: &str) -> anyhow::Result<String> {
    Ok(reqwest::get(format!("{base}/metrics"))
        .await?
        .text()
        .await?)
}

/// Waits until `series` reads `value` on the remediator's `/metrics`.
async fn wait_metric(
    process: &mut BinaryProcess,
    base: &str,
    series: &str,
    value: f64,
) -> anyhow::Result<()> {
    eventually(
        &format!("{series} = {value}"),
        Duration::from_secs(60),
        || {
            let running = process.ensure_running();
            async move {
                running?;
                let Ok(text) = metrics(base).await else {
                    return Ok(None);
                };
                Ok(metric_value(&text, series)
                    .ok()
                    .filter(|v| *v == value)
                    .map(|_| ()))
            }
        },
    )
    .await
}

fn enabled(fix: &str) -> String {
    format!("dmsguard_remediator_fix_enabled{{fix=\"{fix}\"}}")
}

#[tokio::test]
async fn a_fix_missing_a_grant_is_refused_until_a_recheck_finds_it_back() -> anyhow::Result<()> {
    let lab = Lab::start("pf_gate", &[("gate-task", "gate-instance")]).await?;
    let source = lab.dbs.source_client().await?;
    let target = lab.dbs.redshift_client().await?;
    source.batch_execute(&source_ddl(PADS)).await?;
    target.batch_execute(&target_ddl(PADS)).await?;
    fill_source(&source, ROWS, YESTERDAY_ROWS, PADS).await?;
    let all: Vec<i64> = (1..=ROWS).collect();
    copy_as_dms(&source, &target, &all, PADS).await?;
    let dropped = [7_i64, 42, 99];
    target
        .execute(
            "DELETE FROM public.orders WHERE id = ANY($1)",
            &[&dropped.to_vec()],
        )
        .await?;
    // The grant missing_rows needs (docs/grants.md gives it), taken away.
    source
        .batch_execute(&format!("REVOKE SELECT ON public.orders FROM {USER}"))
        .await?;

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let config = lab.config_text(&format!(
        "[[tables]]\nsource = \"public.orders\"\nday_column = \"created_at\"\n\n{}\
         [remediator]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\ntask_state_timeout = \"20s\"\n\
         preflight_interval = \"1h\"\n",
        repair_lab::FRONTIER
    ));
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("dmsguard.toml");
    std::fs::write(&path, &config)?;

    // A hand run is refused before the service starts, naming the check and its fix.
    let out = run_binary(
        &config,
        &["run", "missing_rows", "--table", "public.orders"],
    )?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("outcome: refused"), "{stdout}");
    assert!(
        stdout.contains("[FAIL] source table public.orders: ERROR: permission denied for table orders (SQLSTATE 42501)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "fix: GRANT USAGE ON SCHEMA \"public\" TO {USER}; GRANT SELECT ON \"public\".\"orders\" TO {USER};"
        )),
        "{stdout}"
    );
    // --skip-preflight gets past the gate: the plan itself then meets the database's refusal.
    let out = run_binary(
        &config,
        &[
            "run",
            "missing_rows",
            "--table",
            "public.orders",
            "--dry-run",
            "--skip-preflight",
        ],
    )?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("outcome: failed"), "{stdout}");
    assert!(
        stdout.contains("permission denied for table orders"),
        "{stdout}"
    );

    let mut process = BinaryProcess::start(
        env!("CARGO_BIN_EXE_dmsguard-remediator").as_ref(),
        &["-c", &path.display().to_string(), "serve"],
        dir.path().join("remediator.log"),
    )?;
    wait_metric(&mut process, &base, &enabled("missing_rows"), 0.0).await?;
    // What DmsguardRemediatorFixDisabled fires on: the one failed check it needs.
    let failed_checks =
        |fix: &str| format!("dmsguard_remediator_fix_failed_checks{{fix=\"{fix}\"}}");
    // (0 until the first checks finish: `fix_enabled` 0 alone may still be that.)
    wait_metric(&mut process, &base, &failed_checks("missing_rows"), 1.0).await?;
    assert_eq!(
        metric_value(&metrics(&base).await?, &failed_checks("stalled_task"))?,
        0.0
    );
    // The fixes that do not read the source stay enabled meanwhile.
    for fix in ["stalled_task", "memory", "maintenance"] {
        wait_metric(&mut process, &base, &enabled(fix), 1.0).await?;
    }
    assert_eq!(
        metric_value(&metrics(&base).await?, &enabled("one_by_one"))?,
        0.0,
        "one_by_one reads the source too"
    );
    assert!(
        process
            .log_text()
            .contains("Fix disabled: preflight checks it needs fail"),
        "start-up log:\n{}",
        process.log_text()
    );

    // The alert: acknowledged, recorded as refused, nothing inserted.
    let starts_at = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let alert = payload(vec![rule_alert(
        "RedshiftMissingRows",
        &[("table", "public.orders"), ("window", "yesterday")],
        "gate-fp",
        &starts_at,
    )]);
    let (status, response) =
        post_alerts(&format!("{base}/alerts"), Some(TOKEN), body(&alert)).await?;
    assert_eq!(status, 202, "{response}");
    let response: serde_json::Value = serde_json::from_str(&response)?;
    assert_eq!(response["jobs"], serde_json::json!([]), "{response}");
    let refused = &response["refused"][0];
    assert_eq!(refused["fix"], "missing_rows", "{response}");
    let job_id = refused["job"].as_i64().expect("a job id");
    let jobs = lab.jobs().await?;
    let job = jobs
        .iter()
        .find(|r| r.get::<_, i64>("id") == job_id)
        .expect("the refused job is in the ledger");
    assert_eq!(job.get::<_, &str>("state"), "skipped");
    assert_eq!(job.get::<_, Option<&str>>("outcome"), Some("refused"));
    let summary: &str = job.get("summary");
    assert!(
        summary.contains("source table public.orders")
            && summary.contains("permission denied")
            && summary.contains("GRANT SELECT ON \"public\".\"orders\""),
        "{summary}"
    );
    let text = metrics(&base).await?;
    assert_eq!(
        metric_value(
            &text,
            "dmsguard_remediator_alerts_refused_total{fix=\"missing_rows\"}"
        )?,
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            "dmsguard_remediator_webhooks_total{result=\"refused\"}"
        )?,
        1.0
    );
    let listing: serde_json::Value = reqwest::get(format!("{base}/jobs")).await?.json().await?;
    assert_eq!(listing["jobs"][0]["outcome"], "refused", "{listing}");
    let page = reqwest::get(format!("{base}/")).await?.text().await?;
    assert!(page.contains("refused"), "status page shows the refusal");
    assert_eq!(
        target_ids(&target).await?.len() as i64,
        ROWS - 3,
        "nothing inserted"
    );

    // The grant is back; a SIGHUP (config reload) rechecks without a restart.
    source
        .batch_execute(&format!("GRANT SELECT ON public.orders TO {USER}"))
        .await?;
    process.signal("HUP")?;
    wait_metric(&mut process, &base, &enabled("missing_rows"), 1.0).await?;
    wait_metric(&mut process, &base, &enabled("one_by_one"), 1.0).await?;
    assert_eq!(
        metric_value(&metrics(&base).await?, &failed_checks("missing_rows"))?,
        0.0
    );

    // Alertmanager's repeat of the same alert now runs the fix on the same job.
    let (status, response) =
        post_alerts(&format!("{base}/alerts"), Some(TOKEN), body(&alert)).await?;
    assert_eq!(status, 202, "{response}");
    let response: serde_json::Value = serde_json::from_str(&response)?;
    assert_eq!(response["jobs"], serde_json::json!([job_id]), "{response}");
    let job = eventually("the job to finish", Duration::from_secs(60), || async {
        let jobs = lab.jobs().await?;
        Ok(jobs.into_iter().find(|r| {
            r.get::<_, i64>("id") == job_id
                && !["queued", "running"].contains(&r.get::<_, &str>("state"))
        }))
    })
    .await?;
    assert_eq!(
        job.get::<_, Option<&str>>("outcome"),
        Some("succeeded"),
        "{:?}",
        job.get::<_, Option<&str>>("error")
    );
    let details: serde_json::Value = job.get("details");
    assert!(
        details["refused_earlier"]
            .as_str()
            .is_some_and(|s| s.contains("permission denied")),
        "{details}"
    );
    let ids = target_ids(&target).await?;
    assert_eq!(ids, all, "every row is back, once");

    // The periodic recheck: a reload shortens `preflight_interval` to 1s; the grant taken away
    // again disables the fix with no signal, and only missing_rows and one_by_one.
    std::fs::write(
        &path,
        config.replace("preflight_interval = \"1h\"", "preflight_interval = \"1s\""),
    )?;
    let reloaded_at = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    process.signal("HUP")?;
    // The recheck the reload asked for has run; later ones come from the interval alone.
    eventually(
        "the recheck after the reload",
        Duration::from_secs(60),
        || async {
            let text = metrics(&base).await?;
            Ok(metric_value(
                &text,
                "dmsguard_remediator_preflight_last_run_timestamp_seconds",
            )
            .ok()
            .filter(|t| *t > reloaded_at)
            .map(|_| ()))
        },
    )
    .await?;
    source
        .batch_execute(&format!("REVOKE SELECT ON public.orders FROM {USER}"))
        .await?;
    wait_metric(&mut process, &base, &enabled("missing_rows"), 0.0).await?;
    assert_eq!(
        metric_value(&metrics(&base).await?, &enabled("stalled_task"))?,
        1.0
    );
    process.signal("TERM")?;
    Ok(())
}
