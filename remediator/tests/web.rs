//! The real `dmsguard-remediator` binary serving its API over TLS with an exporter-toolkit web
//! config: basic auth users and the webhook's bearer token side by side, client certificates
//! verified when given, build and process metrics, and a real Alertmanager delivering to it
//! over TLS with the token, as `alerts/alertmanager.example.yml` shows.

mod support;

use std::time::Duration;

use dmsguard_lab::harness::{eventually, free_port, Alertmanager, BinaryProcess, WebFixture};
use reqwest::StatusCode;
use serde_json::Value;
use support::{alert, payload, Lab, TOKEN};

struct Served {
    process: BinaryProcess,
    base: String,
    listen: String,
}

/// Starts the binary on a free port with `config_text` and `web_config`.
async fn serve(
    fixture: &WebFixture,
    config_text: &str,
    web_config: &std::path::Path,
    name: &str,
) -> anyhow::Result<Served> {
    let config = fixture.dir().join(format!("{name}.toml"));
    std::fs::write(&config, config_text)?;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut process = BinaryProcess::start(
        env!("CARGO_BIN_EXE_dmsguard-remediator").as_ref(),
        &[
            "-c",
            &config.display().to_string(),
            "--web.listen-address",
            &listen,
            "--web.config.file",
            &web_config.display().to_string(),
            "serve",
        ],
        fixture.dir().join(format!("{name}.log")),
    )?;
    let base = format!("https://{listen}");
    let client = fixture.client(None)?;
    eventually(
        "the remediator to serve HTTPS",
        Duration::from_secs(30),
        || {
            let (client, url) = (&client, format!("{base}/healthz"));
            let running = process.ensure_running();
            async move {
                running?;
                Ok(client
                    .get(&url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status() == StatusCode::OK)
                    .map(|_| ()))
            }
        },
    )
    .await?;
    Ok(Served {
        process,
        base,
        listen,
    })
}

fn stalled(fingerprint: &str) -> Value {
    alert(
        "DMSTaskStalled",
        &[("task", "web-task")],
        fingerprint,
        &chrono::Utc::now().to_rfc3339(),
    )
}

#[tokio::test]
async fn remediator_api_over_tls_takes_users_or_the_token_and_alertmanager_delivers(
) -> anyhow::Result<()> {
    let lab = Lab::start("rem_web", &[("web-task", "web-instance")]).await?;
    let fixture = WebFixture::create()?;
    let web_config = fixture.write_web_config(
        "web.yml",
        Some("VerifyClientCertIfGiven"),
        &[("ops", "s3cret-ops")],
    )?;
    // The fix only plans: this test is about who may ask, not about the fix.
    let config = lab.config_text(&format!(
        "[remediator]\ntoken = \"{TOKEN}\"\npreflight = false\n[remediator.fixes.stalled_task]\ndry_run = true\n"
    ));
    let mut served = serve(&fixture, &config, &web_config, "remediator").await?;
    let base = &served.base;
    let client = fixture.client(None)?;

    // The webhook: the bearer token, or a web config user; anything else is 401.
    let post = |auth: &str, fingerprint: &str| {
        let request = client
            .post(format!("{base}/alerts"))
            .json(&payload(vec![stalled(fingerprint)]));
        match auth {
            "token" => request.bearer_auth(TOKEN),
            "wrong-token" => request.bearer_auth("not-the-token"),
            "user" => request.basic_auth("ops", Some("s3cret-ops")),
            "wrong-user" => request.basic_auth("ops", Some("guess")),
            _ => request,
        }
        .send()
    };
    assert_eq!(
        post("token", "a000000000000001").await?.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        post("user", "a000000000000002").await?.status(),
        StatusCode::ACCEPTED
    );
    for refused in ["wrong-token", "wrong-user", "none"] {
        assert_eq!(
            post(refused, "a000000000000003").await?.status(),
            StatusCode::UNAUTHORIZED,
            "{refused}"
        );
    }

    // Everything else needs a user: the token does not open the job list.
    let jobs = client.get(format!("{base}/jobs")).send().await?;
    assert_eq!(jobs.status(), StatusCode::UNAUTHORIZED);
    let jobs = client
        .get(format!("{base}/jobs"))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    assert_eq!(jobs.status(), StatusCode::UNAUTHORIZED);
    let jobs: Value = client
        .get(format!("{base}/jobs"))
        .basic_auth("ops", Some("s3cret-ops"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(2), "{jobs}");
    for job in jobs["jobs"].as_array().unwrap() {
        assert_eq!(job["dry_run"], true, "{job}");
    }

    // Metrics: the remediator's own, build info and process metrics.
    let metrics = fixture
        .trusted_client()?
        .get(format!("{base}/metrics"))
        .basic_auth("ops", Some("s3cret-ops"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    for name in [
        "dmsguard_build_info{",
        "dmsguard_remediator_webhooks_total{",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_start_time_seconds ",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }

    // A client certificate is optional here, but one from an untrusted CA is refused.
    let stranger = fixture.client(Some((&fixture.stranger_cert, &fixture.stranger_key)))?;
    assert!(stranger
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_err());

    // A real Alertmanager delivers over TLS, trusting the lab CA and sending the token.
    let token_file = fixture.dir().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n"))?;
    let am = Alertmanager::spawn(&format!(
        "route:\n  receiver: dmsguard-remediator\n  group_by: [alertname, task]\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: dmsguard-remediator\n    webhook_configs:\n      - url: https://{listen}/alerts\n        send_resolved: true\n        http_config:\n          authorization:\n            type: Bearer\n            credentials_file: {token}\n          tls_config:\n            ca_file: {ca}\n",
        listen = served.listen,
        token = token_file.display(),
        ca = fixture.ca.display(),
    ))
    .await?;
    am.post_alerts(&serde_json::json!([
        {"labels": {"alertname": "DMSTaskStalled", "task": "web-task", "severity": "critical"}}
    ]))
    .await?;
    let user = fixture.client(None)?;
    eventually(
        "Alertmanager's webhook to make a job",
        Duration::from_secs(30),
        || async {
            let jobs: Value = user
                .get(format!("{base}/jobs"))
                .basic_auth("ops", Some("s3cret-ops"))
                .send()
                .await?
                .json()
                .await?;
            Ok((jobs["jobs"].as_array().map(Vec::len) == Some(3)).then_some(()))
        },
    )
    .await?;
    served.process.ensure_running()?;
    let log = served.process.log_text();
    assert!(log.contains("Remediator listening."), "{log}");
    assert!(log.contains("https"), "{log}");
    drop(am);
    drop(served);
    lab.dbs.drop().await
}

/// The newest job of alert `alertname`, from `GET /jobs` (a web config user's view).
async fn job_of(
    client: &reqwest::Client,
    base: &str,
    alertname: &str,
) -> anyhow::Result<Option<Value>> {
    let jobs: Value = client
        .get(format!("{base}/jobs"))
        .basic_auth("ops", Some("s3cret-ops"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(jobs["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|j| j["alertname"] == alertname)
        .cloned())
}

/// The value of an unlabelled sample, or of the series whose labels contain `labels`.
fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .find(|l| l.contains(labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn sighup_and_post_reload_change_switches_and_routes_and_a_bad_config_is_refused(
) -> anyhow::Result<()> {
    let lab = Lab::start("rem_reload", &[("web-task", "web-instance")]).await?;
    let fixture = WebFixture::create()?;
    let web_config = fixture.write_web_config("web.yml", None, &[("ops", "s3cret-ops")])?;
    let section = |fixes: &str, routes: &str| {
        lab.config_text(&format!(
            "[remediator]\ntoken = \"{TOKEN}\"\npreflight = false\n{routes}[remediator.fixes.stalled_task]\n{fixes}"
        ))
    };
    // At start: the fix is switched off, so an alert only records a disabled job.
    let mut served = serve(
        &fixture,
        &section("enabled = false\ndry_run = false\n", ""),
        &web_config,
        "remediator",
    )
    .await?;
    let config_path = fixture.dir().join("remediator.toml");
    let base = served.base.clone();
    let client = fixture.client(None)?;
    let post = |alertname: &'static str, fingerprint: &'static str| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let alert = alert(
                alertname,
                &[("task", "web-task")],
                fingerprint,
                &chrono::Utc::now().to_rfc3339(),
            );
            let status = client
                .post(format!("{base}/alerts"))
                .bearer_auth(TOKEN)
                .json(&payload(vec![alert]))
                .send()
                .await?
                .status();
            anyhow::ensure!(status == StatusCode::ACCEPTED, "webhook: {status}");
            anyhow::Ok(())
        }
    };
    let metrics = || async {
        anyhow::Ok(
            client
                .get(format!("{base}/metrics"))
                .basic_auth("ops", Some("s3cret-ops"))
                .send()
                .await?
                .text()
                .await?,
        )
    };
    post("DMSTaskStalled", "b000000000000001").await?;
    let first = job_of(&client, &base, "DMSTaskStalled")
        .await?
        .expect("a job");
    assert_eq!(first["dry_run"], false, "{first}");
    assert_eq!(first["outcome"], "disabled", "{first}");
    assert_eq!(
        metric(
            &metrics().await?,
            "dmsguard_config_last_reload_successful",
            ""
        ),
        Some(1.0)
    );

    // SIGHUP with the fix switched on in dry-run mode: the next alert's job only plans.
    std::fs::write(
        &config_path,
        section("enabled = true\ndry_run = true\n", ""),
    )?;
    served.process.signal("HUP")?;
    eventually("the SIGHUP reload", Duration::from_secs(20), || async {
        let text = metrics().await?;
        Ok(
            (metric(&text, "dmsguard_config_reloads_total", "result=\"applied\"") == Some(1.0))
                .then_some(()),
        )
    })
    .await?;
    post("DMSTaskStalled", "b000000000000002").await?;
    let second = eventually(
        "the dry-run job to finish",
        Duration::from_secs(30),
        || async {
            let job = job_of(&client, &base, "DMSTaskStalled").await?;
            Ok(job.filter(|j| j["id"] != first["id"] && j["outcome"] == "dry_run"))
        },
    )
    .await?;
    assert_eq!(second["dry_run"], true, "{second}");
    assert_eq!(
        lab.task("web-task").await?.status,
        "running",
        "a dry run changes nothing"
    );

    // A config that does not parse is refused: 500 naming the key, the metric says so, and
    // the previous configuration keeps routing.
    std::fs::write(
        &config_path,
        section("enabled = true\ndry_run = false\ncooldwn = \"1m\"\n", ""),
    )?;
    let refused = client
        .post(format!("{base}/-/reload"))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    assert_eq!(refused.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let reason = refused.text().await?;
    assert!(reason.contains("cooldwn"), "{reason}");
    let text = metrics().await?;
    assert_eq!(
        metric(&text, "dmsguard_config_last_reload_successful", ""),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "dmsguard_config_reloads_total", "result=\"refused\""),
        Some(1.0)
    );
    assert!(metric(
        &text,
        "dmsguard_config_last_reload_success_timestamp_seconds",
        ""
    )
    .is_some());
    // /-/reload wants the token or a user, like the webhook.
    let anonymous = client.post(format!("{base}/-/reload")).send().await?;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // A new route through POST /-/reload (a web config user this time): an alert that had no
    // route gets a job.
    post("LabCustomStall", "b000000000000003").await?;
    assert!(
        job_of(&client, &base, "LabCustomStall").await?.is_none(),
        "no route yet"
    );
    std::fs::write(
        &config_path,
        section(
            "enabled = true\ndry_run = true\n",
            "[remediator.routes]\nLabCustomStall = \"stalled_task\"\nDMSTaskStalled = \"stalled_task\"\n",
        ),
    )?;
    // The same reload re-reads the web config file: a new user can log in afterwards.
    let oncall = || async {
        anyhow::Ok(
            client
                .get(format!("{base}/jobs"))
                .basic_auth("oncall", Some("pager"))
                .send()
                .await?
                .status(),
        )
    };
    assert_eq!(oncall().await?, StatusCode::UNAUTHORIZED);
    fixture.write_web_config(
        "web.yml",
        None,
        &[("ops", "s3cret-ops"), ("oncall", "pager")],
    )?;
    let applied = client
        .post(format!("{base}/-/reload"))
        .basic_auth("ops", Some("s3cret-ops"))
        .send()
        .await?;
    assert_eq!(
        applied.status(),
        StatusCode::OK,
        "{}",
        applied.text().await?
    );
    assert_eq!(oncall().await?, StatusCode::OK);
    assert_eq!(
        metric(
            &metrics().await?,
            "dmsguard_config_last_reload_successful",
            ""
        ),
        Some(1.0)
    );
    post("LabCustomStall", "b000000000000004").await?;
    let routed = job_of(&client, &base, "LabCustomStall")
        .await?
        .expect("routed now");
    assert_eq!(routed["fix"], "stalled_task", "{routed}");

    served.process.ensure_running()?;
    let log = served.process.log_text();
    assert!(log.contains("Configuration reloaded."), "{log}");
    assert!(log.contains("SIGHUP"), "{log}");
    assert!(log.contains("New configuration refused"), "{log}");
    drop(served);
    lab.dbs.drop().await
}
