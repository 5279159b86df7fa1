//! The real `dmsguard-exporter` binary with an exporter-toolkit web config: HTTPS with the lab
//! CA's certificate, client certificates required and verified, bcrypt basic auth; the
//! `--web.*` and `--log.*` flags; build and process metrics; and a real Prometheus scraping it
//! over TLS with a client certificate and basic auth.

use std::time::Duration;

use dmsguard_lab::harness::{eventually, free_port, BinaryProcess, Prometheus, WebFixture};
use reqwest::StatusCode;

/// No probe runs and nothing is connected to: only the web side is under test.
const CONFIG: &str = r#"
[source]
url = "postgresql://u@127.0.0.1:1/source"
password = "unused"
[redshift]
url = "postgresql://u@127.0.0.1:1/redshift"
password = "unused"
[aws]
endpoint_url = "http://127.0.0.1:1"
[exporter]
listen = "127.0.0.1:1"
preflight = false
[exporter.redshift_statements]
enabled = false
interval = "1m"
timeout = "10s"
[exporter.cloudwatch]
enabled = false
interval = "1m"
timeout = "10s"
[exporter.dms]
enabled = false
interval = "1m"
timeout = "10s"
[exporter.gaps]
enabled = false
interval = "1m"
timeout = "10s"
[exporter.maintenance]
enabled = false
interval = "1m"
timeout = "10s"
"#;

fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn exporter_serves_over_mutual_tls_with_basic_auth_and_prometheus_scrapes_it(
) -> anyhow::Result<()> {
    dmsguard_lab::harness::ensure_test_credentials();
    let fixture = WebFixture::create()?;
    let web_config = fixture.write_web_config(
        "web.yml",
        Some("RequireAndVerifyClientCert"),
        &[("alice", "wonderland")],
    )?;
    let config = fixture.dir().join("dmsguard.toml");
    std::fs::write(&config, CONFIG)?;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut exporter = BinaryProcess::start(
        env!("CARGO_BIN_EXE_dmsguard-exporter").as_ref(),
        &[
            "-c",
            &config.display().to_string(),
            "--web.listen-address",
            &listen,
            "--web.config.file",
            &web_config.display().to_string(),
            "--web.telemetry-path",
            "/probe-metrics",
            "--log.format",
            "logfmt",
            "--log.level",
            "debug",
        ],
        fixture.dir().join("exporter.log"),
    )?;
    let base = format!("https://127.0.0.1:{port}");
    let client = fixture.trusted_client()?;

    // /healthz answers a verified client without credentials (a probe has none).
    eventually(
        "the exporter to serve HTTPS",
        Duration::from_secs(20),
        || {
            let (client, url) = (&client, format!("{base}/healthz"));
            let running = exporter.ensure_running();
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

    // The metrics, on the path the flag chose, with a user.
    let metrics = client
        .get(format!("{base}/probe-metrics"))
        .basic_auth("alice", Some("wonderland"))
        .send()
        .await?;
    assert_eq!(metrics.status(), StatusCode::OK);
    assert_eq!(
        metrics.headers()["x-content-type-options"],
        "nosniff",
        "http_server_config.headers apply"
    );
    let body = metrics.text().await?;
    assert!(
        body.contains(&format!(
            "dmsguard_build_info{{version=\"{}\",revision=\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"), "one OpenMetrics document");
    assert!(
        sample(&body, "process_cpu_seconds_total").is_some(),
        "{body}"
    );
    assert!(sample(&body, "process_resident_memory_bytes").unwrap() > 1e6);
    assert!(sample(&body, "process_open_fds").unwrap() >= 3.0);
    assert!(sample(&body, "process_max_fds").unwrap() >= 3.0);
    let start = sample(&body, "process_start_time_seconds").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    // From /proc's boot time and clock ticks: within a few seconds of the wall clock's start.
    assert!(
        (now - 300.0..now + 5.0).contains(&start),
        "{start} vs {now}"
    );
    for line in body.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).unwrap_or_default();
        assert!(
            body.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
    }
    // The default path is not served when another is chosen.
    let old = client
        .get(format!("{base}/metrics"))
        .basic_auth("alice", Some("wonderland"))
        .send()
        .await?;
    assert_eq!(old.status(), StatusCode::NOT_FOUND);

    // Wrong password, unknown user, no credentials: 401 with a Basic challenge.
    for (user, password) in [("alice", Some("queen")), ("bob", Some("wonderland"))] {
        let r = client
            .get(format!("{base}/probe-metrics"))
            .basic_auth(user, password)
            .send()
            .await?;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{user}");
        assert!(r.headers()["www-authenticate"]
            .to_str()?
            .starts_with("Basic"));
    }
    let r = client.get(format!("{base}/")).send().await?;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // No client certificate, or one from a CA nobody trusts: the handshake is refused.
    let anonymous = fixture.client(None)?;
    let refused = anonymous
        .get(format!("{base}/healthz"))
        .basic_auth("alice", Some("wonderland"))
        .send()
        .await;
    assert!(refused.is_err(), "no client certificate: {refused:?}");
    let stranger = fixture.client(Some((&fixture.stranger_cert, &fixture.stranger_key)))?;
    let refused = stranger.get(format!("{base}/healthz")).send().await;
    assert!(
        refused.is_err(),
        "untrusted client certificate: {refused:?}"
    );
    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.map(|r| r.status() != StatusCode::OK).unwrap_or(true),
        "plain HTTP must not be served"
    );

    // A real Prometheus scrapes it over TLS with a client certificate and basic auth.
    let prometheus = Prometheus::spawn(&format!(
        "global: {{scrape_interval: 500ms}}\nscrape_configs:\n  - job_name: dmsguard-exporter\n    scheme: https\n    metrics_path: /probe-metrics\n    tls_config:\n      ca_file: {ca}\n      cert_file: {cert}\n      key_file: {key}\n    basic_auth:\n      username: alice\n      password: wonderland\n    static_configs:\n      - targets: ['{listen}']\n",
        ca = fixture.ca.display(),
        cert = fixture.client_cert.display(),
        key = fixture.client_key.display(),
    ))
    .await?;
    eventually(
        "Prometheus to scrape the exporter over TLS",
        Duration::from_secs(20),
        || async {
            let up = prometheus
                .query("up{job=\"dmsguard-exporter\"} == 1")
                .await?;
            let build = prometheus
                .query("dmsguard_build_info{job=\"dmsguard-exporter\"}")
                .await?;
            Ok((!up.is_empty() && !build.is_empty()).then_some(()))
        },
    )
    .await?;

    // --log.format logfmt, --log.level debug.
    exporter.ensure_running()?;
    let log = exporter.log_text();
    assert!(
        log.lines().any(|l| l.starts_with("ts=")
            && l.contains(" level=info target=dmsguard_exporter msg=\"Exporter listening.\"")
            && l.contains(" scheme=https")),
        "{log}"
    );
    assert!(log.contains(" level=warn "), "refusals are logged: {log}");
    assert!(log.contains(" level=debug "), "--log.level debug: {log}");
    Ok(())
}

#[test]
fn an_invalid_web_config_is_refused_by_check_config_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dmsguard.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        "tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  client_auth_type: RequireAnyClientCert\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dmsguard-exporter"))
        .args(["--check-config", "-c"])
        .arg(&config)
        .arg("--web.config.file")
        .arg(&web)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls_server_config.client_auth_type"), "{err}");
}
