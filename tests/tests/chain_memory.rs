//! F2 through the whole chain: the replication instance leaks memory; the exporter reads
//! `FreeableMemory` from CloudWatch, Prometheus fires `DMSInstanceMemoryLow` (the real rule),
//! Alertmanager routes it to the remediator, the `memory` fix stops and resumes the instance's
//! task (no reboot), the memory comes back, the alert resolves and nothing was lost.

mod chain_support;

use std::time::Duration;

use chain_support::{ChainLab, INSTANCE, TASK};
use dmsguard_lab::simulator::Fault;

const FREEABLE: &str =
    "dmsguard_dms_instance_freeable_memory_bytes{replication_instance=\"lab-instance\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leaking_instance_gets_its_tasks_restarted_through_the_chain() -> anyhow::Result<()> {
    leak_and_restart("chain_f2", None).await
}

/// `memory_threshold_bytes = 3e9`: the leak stops between 1.5 GB (the default) and 3 GB, so
/// only a rule that reads the configured threshold fires, and the fix acts on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_alert_and_the_fix_follow_the_configured_threshold() -> anyhow::Result<()> {
    leak_and_restart("chain_f2_threshold", Some(3e9)).await
}

async fn leak_and_restart(tag: &str, threshold: Option<f64>) -> anyhow::Result<()> {
    let lab = ChainLab::start(
        tag,
        |_| {},
        |spec| {
            if let Some(t) = threshold {
                spec.remediator_settings = format!("memory_threshold_bytes = {t:.0}\n");
            }
        },
    )
    .await?;
    let below = threshold.unwrap_or(1.5e9);
    let exported = lab
        .stack
        .wait_value(
            "dmsguard_config_memory_threshold_bytes",
            Duration::from_secs(30),
            |v| v > 0.0,
        )
        .await?;
    assert_eq!(
        exported, below,
        "the exporter exports the configured threshold"
    );
    let healthy = lab
        .stack
        .wait_value(FREEABLE, Duration::from_secs(30), |v| v > 4e9)
        .await?;
    lab.step(&format!("freeable memory {healthy:.0} B; injecting a leak"));
    // Slowly enough, with a threshold of its own, that the leak stops well above 1.5 GB.
    lab.sim.set_fault(Fault::MemoryLeak {
        bytes_per_second: if threshold.is_some() {
            100 << 20
        } else {
            1 << 30
        },
    });
    // Leaked memory stays leaked until the task restarts: stop leaking once it is below the
    // threshold, so only the fix can bring it back.
    let low = lab
        .stack
        .wait_value(FREEABLE, Duration::from_secs(60), |v| v < below)
        .await?;
    lab.sim.clear_fault();
    lab.step(&format!(
        "memory {low:.0} B below the threshold {below:.0} B; leak stopped, leaked memory kept"
    ));
    if threshold.is_some() {
        assert!(
            low > 1.5e9,
            "the leak stopped above the default threshold: {low}"
        );
    }

    let alert = lab
        .stack
        .wait_alert_firing("DMSInstanceMemoryLow", Duration::from_secs(60))
        .await?;
    lab.step("DMSInstanceMemoryLow firing");
    assert_eq!(alert.label("replication_instance"), Some(INSTANCE));

    let job = lab
        .stack
        .wait_job(
            "memory",
            "succeeded",
            lab.after_restart(Duration::from_secs(60)),
        )
        .await?;
    lab.step("memory job succeeded");
    assert_eq!(job.alertname.as_deref(), Some("DMSInstanceMemoryLow"));
    assert!(job.target.contains(INSTANCE), "{job:?}");
    let restarted = job.details.as_ref().map(|d| d["restarted"].clone());
    assert_eq!(restarted, Some(serde_json::json!([TASK])), "{job:?}");
    lab.wait_restarts(1).await?;

    lab.stack
        .wait_value(FREEABLE, Duration::from_secs(60), |v| v > 4e9)
        .await?;
    lab.step("memory back");
    lab.stack
        .wait_alert_resolved(
            "DMSInstanceMemoryLow",
            lab.after_restart(Duration::from_secs(90)),
        )
        .await?;
    // The example routing also tells people (`continue: true` on the remediator's route).
    for status in ["firing", "resolved"] {
        lab.stack
            .wait_oncall("DMSInstanceMemoryLow", status, Duration::from_secs(30))
            .await?;
    }
    lab.step("DMSInstanceMemoryLow resolved");
    assert_eq!(lab.job_count("memory").await?, 1, "one job");
    lab.stack
        .wait_value(
            "dmsguard_remediator_jobs_total{fix=\"memory\",outcome=\"succeeded\"}",
            Duration::from_secs(30),
            |v| v == 1.0,
        )
        .await?;
    lab.assert_target_equals_source().await?;
    lab.step("target equals source");
    lab.finish().await
}
