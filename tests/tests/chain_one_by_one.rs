//! F1 through the whole chain: a row is missing in the target and then updated, so every bulk
//! UPDATE rolls back and DMS applies one by one; the exporter counts the rollbacks and the
//! UPDATE jump, Prometheus fires `DMSOneByOneMode` (the real rule), Alertmanager routes it to
//! the remediator, the `one_by_one` fix inserts the missing row from the source and restarts
//! the task, batches go bulk again, the alert resolves and the target equals the source.

mod chain_support;

use std::time::Duration;

use chain_support::{ChainLab, TABLE, TASK};
use dmsguard_lab::harness::eventually;
use dmsguard_lab::simulator::Fault;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_by_one_mode_is_repaired_through_the_chain() -> anyhow::Result<()> {
    let lab = ChainLab::start("chain_f1", |_| {}, |_| {}).await?;

    lab.step("injecting missing_then_update");
    lab.sim.set_fault(Fault::MissingThenUpdate);
    let alert = lab
        .stack
        .wait_alert_firing("DMSOneByOneMode", Duration::from_secs(90))
        .await?;
    lab.step("DMSOneByOneMode firing");
    assert_eq!(alert.label("table"), Some(TABLE));
    let dropped = lab.sim.stats().dropped_ids();
    assert_eq!(
        dropped.len(),
        1,
        "one row kept from the target: {dropped:?}"
    );
    assert!(lab.sim.stats().one_by_one_batches() > 0);

    let job = lab
        .stack
        .wait_job(
            "one_by_one",
            "succeeded",
            lab.after_restart(Duration::from_secs(60)),
        )
        .await?;
    lab.step("one_by_one job succeeded");
    assert_eq!(job.alertname.as_deref(), Some("DMSOneByOneMode"));
    let details = job.details.clone().unwrap_or_default().to_string();
    assert!(
        details.contains(&dropped[0].1.to_string()),
        "the job names the missing id {}: {details}",
        dropped[0].1
    );
    lab.wait_restarts(1).await?;

    // The workload still updates the row every round: batches are bulk again.
    let one_by_one = lab.sim.stats().one_by_one_batches();
    let bulk = lab.sim.stats().task(TASK).unwrap().bulk_batches;
    eventually("bulk batches again", Duration::from_secs(30), || async {
        let s = lab.sim.stats();
        Ok((s.task(TASK).unwrap().bulk_batches >= bulk + 3).then_some(()))
    })
    .await?;
    assert!(
        lab.sim.stats().one_by_one_batches() <= one_by_one + 1,
        "no more one-by-one batches after the repair"
    );
    lab.stack
        .wait_alert_resolved(
            "DMSOneByOneMode",
            lab.after_restart(Duration::from_secs(60)),
        )
        .await?;
    // The example routing also tells people (`continue: true` on the remediator's route).
    for status in ["firing", "resolved"] {
        lab.stack
            .wait_oncall("DMSOneByOneMode", status, Duration::from_secs(30))
            .await?;
    }
    lab.step("DMSOneByOneMode resolved");
    lab.sim.clear_fault();
    // One job acted. If the fix outlasted the rule's (scaled) window, the alert resolved in
    // between and a last counted rollback fired it anew: that job must not act again (the
    // fix's cooldown hands it to a human), and no other fix may act.
    let jobs = eventually("every job finished", Duration::from_secs(60), || async {
        let jobs = lab.stack.jobs().await?;
        Ok(jobs.iter().all(|j| j.finished_at.is_some()).then_some(jobs))
    })
    .await?;
    let acted: Vec<_> = jobs.iter().filter(|j| j.state == "succeeded").collect();
    assert_eq!(acted.len(), 1, "one job acted: {jobs:#?}");
    assert_eq!(acted[0].id, job.id);
    for other in jobs.iter().filter(|j| j.id != job.id) {
        assert_eq!(other.fix, "one_by_one", "no other fix acted: {jobs:#?}");
        assert_eq!(other.outcome.as_deref(), Some("needs_human"), "{other:#?}");
        assert!(
            other
                .summary
                .as_deref()
                .is_some_and(|s| s.contains("within the cooldown")),
            "{other:#?}"
        );
    }
    assert_eq!(
        lab.sim.stats().task(TASK).unwrap().restarts,
        1,
        "one restart"
    );
    lab.stack
        .wait_value(
            "dmsguard_remediator_jobs_total{fix=\"one_by_one\",outcome=\"succeeded\"}",
            Duration::from_secs(30),
            |v| v == 1.0,
        )
        .await?;
    lab.assert_target_equals_source().await?;
    lab.step("target equals source");
    lab.finish().await
}
