//! AWS (moto) unreachable for a while, with the whole chain running: the exporter's DMS and
//! CloudWatch probes report down while the others keep reporting, people get
//! `DmsguardProbeDown`, a fix that needs DMS meanwhile fails with a clear error (after the
//! SDK's retries) and people get `DmsguardRemediationFailing`; nothing crashes, replication
//! goes on, and once AWS is back the probes recover and the alert resolves.

mod chain_support;

use std::time::Duration;

use chain_support::{ChainLab, TASK};
use dmsguard_lab::harness::eventually;

fn probe(name: &str) -> String {
    format!("dmsguard_probe_success{{probe=\"{name}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aws_outage_is_reported_survived_and_recovered_from() -> anyhow::Result<()> {
    let lab = ChainLab::start_behind_proxy(
        "chain_aws",
        |_| {},
        |spec| {
            spec.aws_max_attempts = 3;
        },
    )
    .await?;
    for p in ["dms", "cloudwatch", "redshift_statements", "gaps"] {
        lab.stack
            .wait_value(&probe(p), Duration::from_secs(30), |v| v == 1.0)
            .await?;
    }
    let proxy = lab.proxy.as_ref().expect("started behind a proxy");

    lab.step("cutting AWS");
    proxy.cut();
    for p in ["dms", "cloudwatch"] {
        lab.stack
            .wait_value(&probe(p), Duration::from_secs(30), |v| v == 0.0)
            .await?;
    }
    lab.step("dms and cloudwatch probes down");
    for p in ["redshift_statements", "gaps"] {
        assert_eq!(
            lab.stack.query_value(&probe(p)).await?,
            Some(1.0),
            "{p} unaffected"
        );
    }

    // Alertmanager delivers a stalled-task alert (as Prometheus would): the fix needs DMS.
    lab.stack
        .alertmanager
        .post_alerts(&serde_json::json!([{
            "labels": {"alertname": "DMSTaskStalled", "task": TASK, "severity": "critical"},
            "annotations": {"summary": "posted during the AWS outage"},
            "startsAt": chrono::Utc::now().to_rfc3339(),
        }]))
        .await?;
    let job = lab
        .stack
        .wait_job("stalled_task", "failed", Duration::from_secs(60))
        .await?;
    let error = job.error.clone().unwrap_or_default();
    lab.step(&format!("stalled_task job failed: {error}"));
    assert!(
        error.contains("DescribeReplicationTasks") && error.contains(TASK),
        "the error names the call and the task: {error}"
    );
    let down = lab
        .stack
        .wait_oncall("DmsguardProbeDown", "firing", Duration::from_secs(60))
        .await?;
    lab.step("people told DmsguardProbeDown");
    let probe_label = down["labels"]["probe"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        probe_label == "dms" || probe_label == "cloudwatch",
        "{down}"
    );
    lab.stack
        .wait_oncall(
            "DmsguardRemediationFailing",
            "firing",
            Duration::from_secs(60),
        )
        .await?;
    lab.step("people told DmsguardRemediationFailing");

    // Nothing crashed: both services answer, replication went on from the last known status.
    let applied = lab.sim.stats().applied();
    eventually(
        "replication during the outage",
        Duration::from_secs(20),
        || async { Ok((lab.sim.stats().applied() > applied).then_some(())) },
    )
    .await?;
    for url in [
        format!("{}/metrics", lab.stack.exporter_url()),
        format!("{}/healthz", lab.stack.remediator_url()),
    ] {
        let status = reqwest::get(&url).await?.status();
        assert!(status.is_success(), "{url}: {status}");
    }

    lab.step("restoring AWS");
    proxy.restore();
    for p in ["dms", "cloudwatch"] {
        lab.stack
            .wait_value(&probe(p), Duration::from_secs(30), |v| v == 1.0)
            .await?;
    }
    lab.step("probes up");
    lab.stack
        .wait_value(
            &format!("dmsguard_dms_task_status{{task=\"{TASK}\",status=\"running\"}}"),
            Duration::from_secs(30),
            |v| v == 1.0,
        )
        .await?;
    lab.stack
        .wait_alert_resolved("DmsguardProbeDown", Duration::from_secs(60))
        .await?;
    lab.stack
        .wait_oncall("DmsguardProbeDown", "resolved", Duration::from_secs(60))
        .await?;
    lab.step("DmsguardProbeDown resolved");
    assert_eq!(lab.job_count("stalled_task").await?, 1, "no retry loop");
    assert_eq!(lab.sim.stats().task(TASK).unwrap().restarts, 0);
    lab.assert_target_equals_source().await?;
    lab.finish().await
}
