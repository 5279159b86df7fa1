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

/// The landing page's cells for `probe`: name, state, interval, runs, ….
fn probe_row(page: &str, probe: &str) -> Option<Vec<String>> {
    let start = page.find(&format!("<tr><td>{probe}</td>"))?;
    let row = &page[start..start + page[start..].find("</tr>")?];
    Some(
        row.split("<td>")
            .skip(1)
            .map(|cell| cell.trim_end_matches("</td>").to_owned())
            .collect(),
    )
}

fn maintenance_config(schedule: &str) -> String {
    let base = CONFIG.replace(
        "[exporter.maintenance]\nenabled = false\ninterval = \"1m\"\ntimeout = \"10s\"\n",
        "",
    );
    format!(
        "{}[exporter.maintenance]\n{schedule}",
        base.replace(
            "password = \"unused\"\n[aws]",
            "password = \"unused\"\nmaintenance_window = \"sun:05:00-sun:05:30\"\n[aws]"
        )
    )
}

#[tokio::test]
async fn sighup_and_post_reload_change_probe_schedules_and_a_bad_config_is_refused(
) -> anyhow::Result<()> {
    dmsguard_lab::harness::ensure_test_credentials();
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("dmsguard.toml");
    // The maintenance probe needs neither a database nor AWS with a fixed window.
    std::fs::write(
        &config,
        maintenance_config("interval = \"1h\"\ntimeout = \"5s\"\n"),
    )?;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut exporter = BinaryProcess::start(
        env!("CARGO_BIN_EXE_dmsguard-exporter").as_ref(),
        &[
            "-c",
            &config.display().to_string(),
            "--web.listen-address",
            &listen,
        ],
        dir.path().join("exporter.log"),
    )?;
    let base = format!("http://{listen}");
    let client = reqwest::Client::new();
    let row = || async {
        let page = client.get(format!("{base}/")).send().await?.text().await?;
        probe_row(&page, "maintenance").ok_or_else(|| anyhow::anyhow!("no row in {page}"))
    };
    let metrics = || async {
        anyhow::Ok(
            client
                .get(format!("{base}/metrics"))
                .send()
                .await?
                .text()
                .await?,
        )
    };
    let first = eventually("the first maintenance run", Duration::from_secs(20), || {
        let running = exporter.ensure_running();
        async move {
            running?;
            let row = row().await?;
            Ok((row[1] == "ok").then_some(row))
        }
    })
    .await?;
    assert_eq!(
        (first[2].as_str(), first[3].as_str()),
        ("1h", "1"),
        "{first:?}"
    );

    // SIGHUP with a 200 ms interval: the probe runs again and again without a restart.
    std::fs::write(
        &config,
        maintenance_config("interval = \"200ms\"\ntimeout = \"5s\"\n"),
    )?;
    exporter.signal("HUP")?;
    let faster = eventually(
        "runs on the new interval",
        Duration::from_secs(20),
        || async {
            let row = row().await?;
            Ok((row[2] == "200ms" && row[3].parse::<u64>()? >= 4).then_some(row))
        },
    )
    .await?;
    assert_eq!(faster[1], "ok", "{faster:?}");
    let text = metrics().await?;
    assert_eq!(
        sample(&text, "dmsguard_config_last_reload_successful"),
        Some(1.0)
    );

    // POST /-/reload switching the probe off: it pauses.
    std::fs::write(
        &config,
        maintenance_config("enabled = false\ninterval = \"200ms\"\ntimeout = \"5s\"\n"),
    )?;
    let applied = client.post(format!("{base}/-/reload")).send().await?;
    assert_eq!(applied.status(), StatusCode::OK);
    let paused = eventually("the probe to pause", Duration::from_secs(10), || async {
        let row = row().await?;
        Ok((row[1] == "off").then_some(row))
    })
    .await?;
    let runs: u64 = paused[3].parse()?;

    // An invalid file is refused: 500 naming the key, the metric drops to 0, and the running
    // configuration stays (still paused, same interval).
    std::fs::write(
        &config,
        maintenance_config("interval = \"200ms\"\ntimeout = \"5s\"\nevery = \"1s\"\n"),
    )?;
    let refused = client.post(format!("{base}/-/reload")).send().await?;
    assert_eq!(refused.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let reason = refused.text().await?;
    assert!(reason.contains("exporter.maintenance.every"), "{reason}");
    let text = metrics().await?;
    assert_eq!(
        sample(&text, "dmsguard_config_last_reload_successful"),
        Some(0.0)
    );
    assert!(
        text.contains("dmsguard_config_reloads_total{result=\"refused\"} 1"),
        "{text}"
    );
    assert!(sample(
        &text,
        "dmsguard_config_last_reload_success_timestamp_seconds"
    )
    .is_some());
    // The reload answered after deciding: the refused file (which would switch the probe back
    // on) left it paused, with the run count it had.
    let row = row().await?;
    assert_eq!(
        (row[1].as_str(), row[2].as_str()),
        ("off", "200ms"),
        "{row:?}"
    );
    assert_eq!(row[3].parse::<u64>()?, runs, "{row:?}");

    exporter.ensure_running()?;
    let log = exporter.log_text();
    assert!(log.contains("Probe schedule changed."), "{log}");
    assert!(log.contains("New configuration refused"), "{log}");
    Ok(())
}
