//! The exporter on the lab's DMS simulator, scraped by a real Prometheus: each injected fault
//! moves the metric that should show it.

mod support;

use std::time::Duration;

use dmsguard_lab::harness::{self, eventually, Moto, Prometheus, TestDatabases};
use dmsguard_lab::simulator::{Fault, SimConfig, Simulator};
use dmsguard_pipeline::aws::AwsClients;
use dmsguard_pipeline::dms_tasks::DmsTasks;

const TABLES: &str = r#"
[[tasks]]
name = "lab-task"
replication_instance = "lab-instance"
[[tables]]
source = "public.orders"
day_column = "created_at"
task = "lab-task"
"#;

/// The value of the single series `promql` returns, if any.
async fn value(prometheus: &Prometheus, promql: &str) -> anyhow::Result<Option<f64>> {
    let result = prometheus.query(promql).await?;
    Ok(match result.as_slice() {
        [one] => one["value"][1].as_str().and_then(|v| v.parse().ok()),
        _ => None,
    })
}

/// Polls Prometheus until `promql` has a value satisfying `ok`; returns it.
async fn wait_value(
    prometheus: &Prometheus,
    promql: &str,
    ok: impl Fn(f64) -> bool,
) -> anyhow::Result<f64> {
    eventually(promql, Duration::from_secs(60), || async {
        Ok(value(prometheus, promql).await?.filter(|v| ok(*v)))
    })
    .await
}

#[tokio::test]
async fn injected_faults_show_in_prometheus() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("exp_sim").await?;
    let moto = Moto::spawn().await?;
    let sim = Simulator::start(SimConfig::for_test(&dbs, &moto.url())).await?;
    let exporter =
        support::spawn_exporter(support::config(&dbs, Some(&moto.url()), TABLES)).await?;
    let prometheus = Prometheus::spawn(&format!(
        "global: {{scrape_interval: 500ms, evaluation_interval: 500ms}}\nscrape_configs:\n  - job_name: dmsguard\n    static_configs:\n      - targets: ['{}']\n",
        exporter.addr
    ))
    .await?;

    for probe in ["redshift_statements", "cloudwatch", "dms", "gaps"] {
        wait_value(
            &prometheus,
            &format!("dmsguard_probe_success{{probe=\"{probe}\"}}"),
            |v| v == 1.0,
        )
        .await?;
    }
    wait_value(
        &prometheus,
        r#"dmsguard_redshift_dms_statements_total{table="public.orders",kind="insert"}"#,
        |v| v > 0.0,
    )
    .await?;

    // F2: memory falls while the instance leaks.
    let memory =
        r#"dmsguard_dms_instance_freeable_memory_bytes{replication_instance="lab-instance"}"#;
    let before = wait_value(&prometheus, memory, |v| v > 0.0).await?;
    sim.set_fault(Fault::MemoryLeak {
        bytes_per_second: 512 << 20,
    });
    let after = wait_value(&prometheus, memory, |v| v < before - 500e6).await?;
    sim.clear_fault();
    assert!(after < before, "freeable memory fell: {before} -> {after}");

    // F1: a row missing in the target and then updated makes bulk UPDATEs roll back.
    let rolled_back = r#"dmsguard_redshift_dms_rolled_back_updates_total{table="public.orders"}"#;
    let rolled_before = value(&prometheus, rolled_back).await?.unwrap_or(0.0);
    sim.set_fault(Fault::MissingThenUpdate);
    wait_value(&prometheus, rolled_back, |v| v > rolled_before).await?;
    sim.clear_fault();

    // F4: dropped inserts are exactly the missing ids, once the pipeline is quiet.
    sim.set_fault(Fault::DropRows { every: 7 });
    eventually("a few dropped rows", Duration::from_secs(120), || async {
        let s = sim.stats();
        anyhow::ensure!(s.dropped_ids().len() >= 5, "{s:?}");
        Ok(Some(()))
    })
    .await?;
    sim.clear_fault();
    sim.stop_workload().await?;
    sim.wait_caught_up(Duration::from_secs(60)).await?;
    let diff = sim.compare_source_target("public.orders").await?;
    assert!(
        diff.missing_in_target.len() >= 6,
        "dropped rows plus the row behind one-by-one mode: {:?}",
        diff.missing_in_target
    );
    let expected = diff.missing_in_target.len() as f64;
    wait_value(
        &prometheus,
        r#"sum(dmsguard_table_missing_ids{table="public.orders"})"#,
        |v| v == expected,
    )
    .await?;

    // Task status follows a stop in DMS.
    let aws = AwsClients::new(&harness::aws_config(&moto.url())).await;
    DmsTasks::new(aws.dms.clone(), Duration::from_secs(30))
        .stop("lab-task")
        .await?;
    wait_value(
        &prometheus,
        r#"dmsguard_dms_task_status{task="lab-task",status="stopped"}"#,
        |v| v == 1.0,
    )
    .await?;
    assert_eq!(
        value(
            &prometheus,
            r#"dmsguard_dms_task_status{task="lab-task",status="running"}"#
        )
        .await?,
        Some(0.0)
    );

    sim.stop().await?;
    drop(exporter);
    dbs.drop().await
}
