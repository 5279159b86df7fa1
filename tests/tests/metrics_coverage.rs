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
"#,
        source = dbs.source.url,
        redshift = dbs.redshift.url,
        pw = dbs.env.pg_password,
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

    let mut names = names_in(&repo_file("alerts/dmsguard.rules.yml"));
    names.extend(names_in(&repo_file("dashboards/dmsguard.json")));
    assert!(names.len() >= 20, "names found: {names:?}");
    let missing = eventually(
        "every named metric to have data",
        Duration::from_secs(90),
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

    let _ = stop.send(true);
    sim.stop().await?;
    dbs.drop().await?;
    missing
}
