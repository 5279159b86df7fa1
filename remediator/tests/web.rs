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
