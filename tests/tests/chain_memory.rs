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

#[tokio::test]
async fn leaking_instance_gets_its_tasks_restarted_through_the_chain() -> anyhow::Result<()> {
    let lab = ChainLab::start("chain_f2", |_| {}, |_| {}).await?;
    let healthy = lab
        .stack
        .wait_value(FREEABLE, Duration::from_secs(30), |v| v > 4e9)
        .await?;
    lab.step(&format!("freeable memory {healthy:.0} B; injecting a leak"));
    lab.sim.set_fault(Fault::MemoryLeak {
        bytes_per_second: 1 << 30,
    });
    // Leaked memory stays leaked until the task restarts: stop leaking once it is below the
    // threshold, so only the fix can bring it back.
    lab.stack
        .wait_value(FREEABLE, Duration::from_secs(60), |v| v < 1.5e9)
        .await?;
    lab.sim.clear_fault();
    lab.step("memory below 1.5 GB; leak stopped, leaked memory kept");

    let alert = lab
        .stack
        .wait_alert_firing("DMSInstanceMemoryLow", Duration::from_secs(60))
        .await?;
    lab.step("DMSInstanceMemoryLow firing");
    assert_eq!(alert.label("replication_instance"), Some(INSTANCE));

    let job = lab
        .stack
        .wait_job("memory", "succeeded", Duration::from_secs(60))
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
        .wait_alert_resolved("DMSInstanceMemoryLow", Duration::from_secs(90))
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
