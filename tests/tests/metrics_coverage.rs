//! Every metric the alert rules and the dashboard name has data in a real Prometheus that loads
//! the rules and scrapes the real exporter (on the DMS simulator) and the real remediator.

use std::collections::BTreeSet;
use std::time::Duration;

use dmsguard_lab::harness::{eventually, Moto, Prometheus, TestDatabases};
use dmsguard_lab::simulator::{Fault, SimConfig, Simulator};
use dmsguard_pipeline::config::Config;

fn repo_file(path: &str) -> String {
    let full = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {full}: {e}"))
}

/// Metric and recording-rule names (`dmsguard_…`, `dmsguard:…`) named in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("dmsguard") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let recording_rule = name.starts_with("dmsguard:") && name.matches(':').count() >= 2;
        if name.starts_with("dmsguard_") && name.len() > "dmsguard_".len() || recording_rule {
            names.insert(name.to_owned());
        }
        rest = &tail[end.max(1)..];
    }
    names
}

fn config(dbs: &TestDatabases, moto_url: &str) -> Config {
    let text = format!(
        r#"
[source]
url = "{source}"
password = "{pw}"
[redshift]
url = "{redshift}"
password = "{pw}"
maintenance_window = "sun:05:00-sun:05:30"
[aws]
endpoint_url = "{moto_url}"
max_attempts = 1
[[tasks]]
name = "lab-task"
replication_instance = "lab-instance"
[[tables]]
source = "public.orders"
day_column = "created_at"
task = "lab-task"
divergent_rows = true
[frontier]
margin = "2s"
cloudwatch_period = "5s"
restart_settle = "10s"
[exporter]
listen = "127.0.0.1:0"
[exporter.redshift_statements]
interval = "300ms"
timeout = "5s"
[exporter.cloudwatch]
interval = "300ms"
timeout = "5s"
[exporter.dms]
interval = "300ms"
timeout = "5s"
[exporter.gaps]
interval = "500ms"
timeout = "10s"
[exporter.maintenance]
interval = "300ms"
timeout = "5s"
[remediator]
listen = "127.0.0.1:0"
token = "coverage-token"
{ledger}"#,
        // Never a superuser: the remediator's user of docs/grants.md (this one file serves the
        // in-process exporter too, which needs less).
        source = dbs.remediator_source().url,
        redshift = dbs.remediator_redshift().url,
        pw = dbs.env.pg_password,
        ledger = dbs.ledger_section(),
    );
    Config::from_toml(&text, &|_| None).expect("test config parses")
}

#[tokio::test]
async fn every_metric_named_in_alerts_and_dashboards_has_data() -> anyhow::Result<()> {
    dmsguard_lab::harness::ensure_test_credentials();
    let dbs = TestDatabases::create("coverage").await?;
    let moto = Moto::spawn().await?;
    let sim = Simulator::start(SimConfig::for_test(&dbs, &moto.url())).await?;
    let config = config(&dbs, &moto.url());

    let exporter = dmsguard_exporter::Exporter::build(config.clone()).await?;
    let remediator = dmsguard_remediator::Remediator::build(config).await?;
    let (exporter_addr, remediator_addr) = (exporter.addr(), remediator.addr());
    let (stop, _) = tokio::sync::watch::channel(false);
    let mut rx1 = stop.subscribe();
    let mut rx2 = stop.subscribe();
    tokio::spawn(exporter.run_until(async move {
        let _ = rx1.changed().await;
    }));
    tokio::spawn(remediator.run_until(async move {
        let _ = rx2.changed().await;
    }));

    let rules = format!(
        "{}/../alerts/dmsguard.rules.yml",
        env!("CARGO_MANIFEST_DIR")
    );
    let prometheus = Prometheus::spawn(&format!(
        "global: {{scrape_interval: 500ms, evaluation_interval: 500ms}}\nrule_files: ['{rules}']\nscrape_configs:\n  - job_name: dmsguard\n    static_configs:\n      - targets: ['{exporter_addr}', '{remediator_addr}']\n"
    ))
    .await?;

    // Once replication flows, one-by-one mode adds rollbacks and apply exceptions.
    eventually("replication to flow", Duration::from_secs(60), || async {
        Ok((sim.stats().applied() > 0).then_some(()))
    })
    .await?;
    sim.set_fault(Fault::MissingThenUpdate);

    // One remediation so the jobs panels and annotations have something to show, sent once
    // Prometheus holds the job counters at 0 (an increase needs a sample before it).
    eventually(
        "a first scrape of the remediator",
        Duration::from_secs(30),
        || async {
            Ok((!prometheus
                .query("dmsguard_remediator_jobs_total")
                .await?
                .is_empty())
            .then_some(()))
        },
    )
    .await?;
    let webhook = serde_json::json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"DMSTaskStalled\"}",
        "status": "firing",
        "receiver": "dmsguard-remediator",
        "groupLabels": {"alertname": "DMSTaskStalled"},
        "commonLabels": {"alertname": "DMSTaskStalled", "task": "lab-task"},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1",
        "truncatedAlerts": 0,
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "DMSTaskStalled", "task": "lab-task"},
            "annotations": {"summary": "coverage"},
            "startsAt": chrono::Utc::now().to_rfc3339(),
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://127.0.0.1",
            "fingerprint": "c0ffee0000000001"
        }]
    });
    let response = reqwest::Client::new()
        .post(format!("http://{remediator_addr}/alerts"))
        .bearer_auth("coverage-token")
        .json(&webhook)
        .send()
        .await?;
    assert!(
        response.status().is_success(),
        "webhook: {}",
        response.status()
    );

    let mut names = names_in(&repo_file("alerts/dmsguard.rules.yml"));
    names.extend(names_in(&repo_file("dashboards/dmsguard.json")));
    assert!(names.len() >= 20, "names found: {names:?}");
    let missing = eventually(
        "every named metric to have data",
        // The gaps probe and the content comparison need the simulator's rows replicated and
        // read twice; on a loaded machine that has taken over 90 s.
        Duration::from_secs(180),
        || {
            let names = names.clone();
            let prometheus = &prometheus;
            async move {
                let mut without = Vec::new();
                for name in &names {
                    let query = format!("count({{__name__=\"{name}\"}})");
                    if prometheus.query(&query).await?.is_empty() {
                        without.push(name.clone());
                    }
                }
                if without.is_empty() {
                    Ok(Some(()))
                } else {
                    Err(anyhow::anyhow!("no data yet for {without:?}"))
                }
            }
        },
    )
    .await;

    let missing = match missing {
        Ok(()) => every_dashboard_query_has_data(&prometheus).await,
        Err(e) => Err(e),
    };

    let _ = stop.send(true);
    sim.stop().await?;
    dbs.drop().await?;
    missing
}

/// Runs every panel and variable query of the dashboard (label variables `.*`, intervals `1m`)
/// and requires data; annotation queries mark events, so they need only run without error.
async fn every_dashboard_query_has_data(prometheus: &Prometheus) -> anyhow::Result<()> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&repo_file("dashboards/dmsguard.json"))?;
    let queries = dmsguard_lab::dashboard::dashboard_queries(&dashboard);
    assert!(queries.len() >= 10, "dashboard queries: {queries:?}");
    eventually(
        "every dashboard query to return data",
        Duration::from_secs(120),
        || {
            let queries = queries.clone();
            async move {
                let mut empty = Vec::new();
                for (origin, query) in &queries {
                    let promql = dmsguard_lab::dashboard::expand_with(query, ".*", "1m");
                    let result = prometheus.query(&promql).await?;
                    if result.is_empty() && !origin.starts_with("annotation") {
                        empty.push(format!("{origin}: {promql}"));
                    }
                }
                if empty.is_empty() {
                    Ok(Some(()))
                } else {
                    Err(anyhow::anyhow!("no data yet for {empty:#?}"))
                }
            }
        },
    )
    .await
}
