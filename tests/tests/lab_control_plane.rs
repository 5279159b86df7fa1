//! The lab's DMS and Redshift control planes behave as the AWS API reference says: stops and
//! starts go through `stopping` / `starting` and take the configured time, a start in the wrong
//! state is refused, tasks fail with `StopReason` and `LastFailureMessage`, operations throttle,
//! and clusters report `NextMaintenanceWindowStartTime` and deferred windows. Also checks the
//! pipeline's task waits against them (transient errors retried, `failed` ends a wait at once).

use std::time::Duration;

use chrono::{TimeZone, Utc};
use dmsguard_lab::harness::{
    self, Burst, DeferredWindow, FailWhen, LabControl, Moto, DESCRIBE_REPLICATION_TASKS,
    GET_METRIC_DATA, STOP_REASON_FATAL,
};
use dmsguard_pipeline::aws::AwsClients;
use dmsguard_pipeline::dms_tasks::{DmsTaskError, DmsTasks, STOPPED};

async fn lab(task: &str) -> anyhow::Result<(Moto, AwsClients, LabControl, String)> {
    let moto = Moto::spawn().await?;
    let aws = AwsClients::new(&harness::aws_config(&moto.url())).await;
    let arn = harness::create_dms_task(&aws, "i1", task).await?;
    harness::start_dms_task(&aws, &arn).await?;
    let control = LabControl::new(&moto.url());
    Ok((moto, aws, control, arn))
}

async fn status(aws: &AwsClients, arn: &str) -> anyhow::Result<String> {
    let out = aws.dms.describe_replication_tasks().send().await?;
    Ok(out
        .replication_tasks()
        .iter()
        .find(|t| t.replication_task_arn() == Some(arn))
        .and_then(|t| t.status())
        .unwrap_or_default()
        .to_owned())
}

#[tokio::test]
async fn stop_and_start_go_through_stopping_and_starting() -> anyhow::Result<()> {
    let (_moto, aws, control, arn) = lab("cp-timing").await?;
    // Defaults stay instant (what the other tests rely on).
    assert_eq!(status(&aws, &arn).await?, "running");
    control
        .set_dms_timing(Duration::from_secs(2), Duration::from_secs(2))
        .await?;
    let stop = aws
        .dms
        .stop_replication_task()
        .replication_task_arn(&arn)
        .send()
        .await?;
    assert_eq!(
        stop.replication_task().and_then(|t| t.status()),
        Some("stopping")
    );
    // A start while stopping is refused as AWS refuses it.
    let refused = aws
        .dms
        .start_replication_task()
        .replication_task_arn(&arn)
        .start_replication_task_type(
            aws_sdk_databasemigration::types::StartReplicationTaskTypeValue::ResumeProcessing,
        )
        .send()
        .await
        .unwrap_err();
    assert!(
        refused
            .as_service_error()
            .is_some_and(|e| e.is_invalid_resource_state_fault()),
        "{refused:?}"
    );
    assert_eq!(status(&aws, &arn).await?, "stopping");
    harness::eventually("the task stopped", Duration::from_secs(10), || async {
        Ok((status(&aws, &arn).await? == "stopped").then_some(()))
    })
    .await?;
    // The pipeline's resume goes starting -> running and waits for it.
    let tasks = DmsTasks::new(aws.dms.clone(), Duration::from_secs(20))
        .with_poll_interval(Duration::from_millis(200));
    let sent = tasks.send_resume("cp-timing").await?;
    assert_eq!(sent.status, "starting");
    let started = std::time::Instant::now();
    assert!(tasks.wait_for("cp-timing", "running").await?.is_running());
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // Stop and start on the task, state by state, as the pipeline sees them.
    let stopped = tasks.stop("cp-timing").await?;
    assert!(stopped.is_stopped());
    Ok(())
}

#[tokio::test]
async fn a_task_failing_during_a_stop_ends_the_wait_at_once_with_its_reason() -> anyhow::Result<()>
{
    let (_moto, aws, control, _arn) = lab("cp-fail").await?;
    control
        .set_dms_timing(Duration::from_secs(1), Duration::ZERO)
        .await?;
    control
        .fail_task(
            "cp-fail",
            FailWhen::OnStop,
            STOP_REASON_FATAL,
            "Last Error Replication task out of memory.",
        )
        .await?;
    // A long timeout: `failed` must end the wait long before it.
    let tasks = DmsTasks::new(aws.dms.clone(), Duration::from_secs(120))
        .with_poll_interval(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let err = tasks.stop("cp-fail").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    match &err {
        DmsTaskError::Failed {
            wanted,
            stop_reason,
            message,
            ..
        } => {
            assert_eq!(wanted, STOPPED);
            assert_eq!(stop_reason.as_deref(), Some(STOP_REASON_FATAL));
            assert_eq!(
                message.as_deref(),
                Some("Last Error Replication task out of memory.")
            );
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(err.to_string().contains("out of memory"), "{err}");
    let state = tasks.describe("cp-fail").await?;
    assert!(state.is_failed(), "{state:?}");
    // A failed task may be resumed (stopped or failed are the startable states).
    assert!(tasks.resume("cp-fail").await?.is_running());
    // And can fail while running.
    control
        .fail_task("cp-fail", FailWhen::Now, STOP_REASON_FATAL, "boom")
        .await?;
    assert_eq!(tasks.describe("cp-fail").await?.status, "failed");
    Ok(())
}

#[tokio::test]
async fn throttling_bursts_are_retried_inside_waits() -> anyhow::Result<()> {
    let (_moto, aws, control, _arn) = lab("cp-throttle").await?;
    control
        .set_dms_timing(Duration::from_secs(2), Duration::ZERO)
        .await?;
    let tasks = DmsTasks::new(aws.dms.clone(), Duration::from_secs(30))
        .with_poll_interval(Duration::from_millis(200));
    tasks.send_stop("cp-throttle").await?;
    control
        .throttle(
            &[DESCRIBE_REPLICATION_TASKS, GET_METRIC_DATA],
            Burst {
                calls: Some(4),
                duration: None,
            },
        )
        .await?;
    // One call alone sees the throttling error as a transient one…
    let err = tasks.describe("cp-throttle").await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("Rate exceeded"), "{err}");
    // …and the wait rides out the rest of the burst.
    assert!(tasks.wait_for("cp-throttle", STOPPED).await?.is_stopped());
    let state = control.state().await?;
    assert_eq!(state.throttled.get(DESCRIBE_REPLICATION_TASKS), Some(&4));
    // CloudWatch throttles too (awsQuery protocol).
    control
        .throttle(
            &[GET_METRIC_DATA],
            Burst {
                calls: None,
                duration: Some(Duration::from_secs(60)),
            },
        )
        .await?;
    let err = aws
        .cloudwatch
        .get_metric_data()
        .start_time(aws_smithy_types::DateTime::from_secs(0))
        .end_time(aws_smithy_types::DateTime::from_secs(60))
        .metric_data_queries(
            aws_sdk_cloudwatch::types::MetricDataQuery::builder()
                .id("q")
                .expression("SELECT AVG(CPUUtilization) FROM \"AWS/EC2\"")
                .period(60)
                .build(),
        )
        .send()
        .await
        .unwrap_err();
    assert!(
        dmsguard_pipeline::dms_tasks::is_transient_sdk_error(&err),
        "{err:?}"
    );
    control.reset().await?;
    assert!(control.state().await?.throttled.is_empty());
    Ok(())
}

#[tokio::test]
async fn clusters_report_their_next_maintenance_and_deferred_windows() -> anyhow::Result<()> {
    let moto = Moto::spawn().await?;
    let aws = AwsClients::new(&harness::aws_config(&moto.url())).await;
    aws.redshift
        .create_cluster()
        .cluster_identifier("c1")
        .node_type("ra3.xlplus")
        .master_username("admin")
        .master_user_password("Passw0rd1")
        .preferred_maintenance_window("sun:05:00-sun:05:30")
        .send()
        .await?;
    let describe = || async {
        let out = aws
            .redshift
            .describe_clusters()
            .cluster_identifier("c1")
            .send()
            .await?;
        anyhow::Ok(out.clusters()[0].clone())
    };
    // By default: the next start of the preferred window, a Sunday at 05:00 UTC.
    let c = describe().await?;
    let next = c
        .next_maintenance_window_start_time()
        .expect("NextMaintenanceWindowStartTime");
    let next = Utc.timestamp_opt(next.secs(), 0).unwrap();
    assert_eq!(next.format("%a %H:%M").to_string(), "Sun 05:00");
    assert!(c.deferred_maintenance_windows().is_empty());
    let control = LabControl::new(&moto.url());
    let start = Utc.with_ymd_and_hms(2026, 12, 6, 5, 0, 0).unwrap();
    control
        .set_maintenance(
            "c1",
            Some(start),
            &[DeferredWindow {
                id: "holiday".into(),
                start: Utc.with_ymd_and_hms(2026, 12, 5, 0, 0, 0).unwrap(),
                end: Utc.with_ymd_and_hms(2026, 12, 20, 0, 0, 0).unwrap(),
            }],
        )
        .await?;
    let c = describe().await?;
    assert_eq!(
        c.next_maintenance_window_start_time().map(|t| t.secs()),
        Some(start.timestamp())
    );
    let deferred = c.deferred_maintenance_windows();
    assert_eq!(deferred.len(), 1);
    assert_eq!(deferred[0].defer_maintenance_identifier(), Some("holiday"));
    assert_eq!(
        deferred[0].defer_maintenance_end_time().map(|t| t.secs()),
        Some(
            Utc.with_ymd_and_hms(2026, 12, 20, 0, 0, 0)
                .unwrap()
                .timestamp()
        )
    );
    Ok(())
}
