//! F3 through the whole chain with the cluster's real schedule: `NextMaintenanceWindowStartTime`
//! says maintenance can begin in a minute, but the cluster has a deferred maintenance window
//! covering it (`DeferredMaintenanceWindows`,
//! <https://docs.aws.amazon.com/redshift/latest/APIReference/API_Cluster.html>;
//! set with ModifyClusterMaintenance,
//! <https://docs.aws.amazon.com/redshift/latest/APIReference/API_ModifyClusterMaintenance.html>).
//! The exporter reports the next maintenance that is not deferred (weeks away), Prometheus
//! evaluates `RedshiftMaintenanceImminent` on it and does not fire, and nothing is paused: no
//! job, the task never stopped, replication never stopped. Lifting the deferral makes the same
//! schedule fire the alert.

mod chain_support;

use std::time::Duration;

use chain_support::{ChainLab, CLUSTER, TASK};
use chrono::{DateTime, Utc};
use dmsguard_lab::harness::{eventually, DeferredWindow, LabControl};

/// When Prometheus last evaluated the group holding `RedshiftMaintenanceImminent`.
async fn last_evaluation(lab: &ChainLab) -> anyhow::Result<Option<DateTime<Utc>>> {
    let rules: serde_json::Value =
        reqwest::get(format!("{}/api/v1/rules", lab.stack.prometheus.url()))
            .await?
            .error_for_status()?
            .json()
            .await?;
    let groups = rules["data"]["groups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(groups
        .iter()
        .find(|g| {
            g["rules"].as_array().is_some_and(|rules| {
                rules
                    .iter()
                    .any(|r| r["name"] == "RedshiftMaintenanceImminent")
            })
        })
        .and_then(|g| g["lastEvaluation"].as_str())
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deferred_maintenance_pauses_nothing_through_the_chain() -> anyhow::Result<()> {
    let lab = ChainLab::start(
        "chain_deferred",
        |_| {},
        |spec| spec.cluster_identifier = Some(CLUSTER.to_owned()),
    )
    .await?;
    let control = LabControl::new(&lab.moto.url());
    // Chosen once the stack is up: maintenance can begin in a minute, but a deferral covers it.
    let now = Utc::now();
    let start = now + chrono::Duration::seconds(60);
    control
        .set_maintenance(
            CLUSTER,
            Some(start),
            &[DeferredWindow {
                id: "quarter-end".into(),
                start: now - chrono::Duration::hours(1),
                end: now + chrono::Duration::days(10),
            }],
        )
        .await?;
    lab.step(&format!(
        "next maintenance at {start} (within the 5-minute lead), deferred"
    ));
    let before = control.state().await?.tasks[TASK].clone();
    assert_eq!(before, "running");

    // Prometheus sees the schedule: deferred now, the next maintenance weeks away.
    lab.stack
        .wait_value(
            "dmsguard_redshift_maintenance_deferred",
            Duration::from_secs(30),
            |v| v == 1.0,
        )
        .await?;
    let next = lab
        .stack
        .wait_value(
            "dmsguard_redshift_maintenance_next_start_seconds",
            Duration::from_secs(30),
            |v| v > 7.0 * 86_400.0,
        )
        .await?;
    let seen = Utc::now();
    lab.step(&format!("next maintenance not deferred in {next:.0} s"));
    // The rule was evaluated on it (twice, to be past any evaluation in flight) and fired nothing.
    eventually(
        "two rule evaluations after the schedule was seen",
        Duration::from_secs(30),
        || async {
            Ok(last_evaluation(&lab)
                .await?
                .filter(|t| *t > seen + chrono::Duration::seconds(1)))
        },
    )
    .await?;
    let alerts = lab.stack.alerts().await?;
    assert!(
        alerts
            .iter()
            .all(|a| a.label("alertname") != Some("RedshiftMaintenanceImminent")),
        "{alerts:?}"
    );
    assert!(lab.stack.jobs().await?.is_empty(), "no job");
    assert_eq!(control.state().await?.tasks[TASK], "running");
    let stats = lab.sim.stats();
    let task = stats.task(TASK).expect("the simulator's task");
    assert_eq!((task.status.as_str(), task.restarts), ("running", 0));
    lab.assert_target_equals_source().await?;
    lab.step("nothing paused; target equals source");
    // The same kind of schedule without the deferral is imminent: the alert fires.
    lab.schedule_maintenance(Duration::from_secs(60)).await?;
    let alert = lab
        .stack
        .wait_alert_firing("RedshiftMaintenanceImminent", Duration::from_secs(30))
        .await?;
    assert!(alert.value.parse::<f64>()? <= 300.0, "{alert:?}");
    lab.step("deferral lifted: RedshiftMaintenanceImminent firing");
    lab.finish().await
}
