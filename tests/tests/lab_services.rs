//! The lab's real services answer: PostgreSQL (both roles, wal2json), moto DMS and CloudWatch
//! through the Rust SDKs, Prometheus scraping a target, Alertmanager delivering a webhook.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::types::{
    Dimension, Metric, MetricDataQuery, MetricDatum, MetricStat, StandardUnit,
};
use aws_sdk_databasemigration::types::{
    MigrationTypeValue, ReplicationEndpointTypeValue, StartReplicationTaskTypeValue,
};
use axum::routing::{get, post};
use dmsguard_lab::harness::{self, eventually, Alertmanager, Moto, Prometheus, TestDatabases};
use dmsguard_pipeline::aws::AwsClients;
use tokio::sync::Mutex;

#[tokio::test]
async fn postgres_source_and_redshift_standin_answer() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("pg_both").await?;
    let source = dbs.source_client().await?;
    let redshift = dbs.redshift_client().await?;
    let version: String = source.query_one("SHOW server_version", &[]).await?.get(0);
    assert!(version.starts_with("15"), "source is PostgreSQL {version}");
    for view in [
        "sys_query_history",
        "sys_transaction_history",
        "sys_query_text",
        "stl_query",
        "stl_querytext",
        "pg_table_def",
        "awsdms_apply_exceptions",
    ] {
        let n: i64 = redshift
            .query_one(&format!("SELECT count(*) FROM {view}"), &[])
            .await?
            .get(0);
        assert_eq!(n, 0, "{view} starts empty");
    }
    dbs.drop().await
}

#[tokio::test]
async fn wal2json_slot_yields_inserted_row() -> anyhow::Result<()> {
    let dbs = TestDatabases::create("wal2json").await?;
    let source = dbs.source_client().await?;
    source
        .batch_execute("CREATE TABLE t (id bigint PRIMARY KEY, name text)")
        .await?;
    source
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'wal2json')",
            &[&format!("{}_slot", dbs.source_name)],
        )
        .await?;
    source
        .batch_execute("INSERT INTO t VALUES (42, 'answer')")
        .await?;
    let rows = source
        .query(
            "SELECT data FROM pg_logical_slot_get_changes($1, NULL, NULL, 'format-version', '2')",
            &[&format!("{}_slot", dbs.source_name)],
        )
        .await?;
    let changes: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)))
        .collect::<Result<_, _>>()?;
    let insert = changes
        .iter()
        .find(|c| c["action"] == "I")
        .expect("an insert change");
    assert_eq!(insert["table"], "t");
    assert_eq!(insert["columns"][0]["value"], 42);
    dbs.drop().await
}

#[tokio::test]
async fn moto_dms_describe_start_stop_through_sdk() -> anyhow::Result<()> {
    let moto = Moto::spawn().await?;
    let aws = AwsClients::new(&harness::aws_config(&moto.url())).await;
    let instance = aws
        .dms
        .create_replication_instance()
        .replication_instance_identifier("lab-instance")
        .replication_instance_class("dms.t3.medium")
        .send()
        .await?;
    let instance_arn = instance
        .replication_instance()
        .and_then(|i| i.replication_instance_arn())
        .expect("instance arn")
        .to_owned();
    let mut endpoints = Vec::new();
    for (id, kind, engine) in [
        ("src", ReplicationEndpointTypeValue::Source, "postgres"),
        ("dst", ReplicationEndpointTypeValue::Target, "redshift"),
    ] {
        let e = aws
            .dms
            .create_endpoint()
            .endpoint_identifier(id)
            .endpoint_type(kind)
            .engine_name(engine)
            .send()
            .await?;
        endpoints.push(
            e.endpoint()
                .and_then(|e| e.endpoint_arn())
                .unwrap()
                .to_owned(),
        );
    }
    let task = aws
        .dms
        .create_replication_task()
        .replication_task_identifier("lab-task")
        .source_endpoint_arn(&endpoints[0])
        .target_endpoint_arn(&endpoints[1])
        .replication_instance_arn(&instance_arn)
        .migration_type(MigrationTypeValue::Cdc)
        .table_mappings(r#"{"rules":[]}"#)
        .send()
        .await?;
    let task_arn = task
        .replication_task()
        .and_then(|t| t.replication_task_arn())
        .unwrap()
        .to_owned();

    let status = |aws: AwsClients| async move {
        let out = aws.dms.describe_replication_tasks().send().await?;
        let t = &out.replication_tasks()[0];
        assert!(
            t.replication_task_creation_date().is_some(),
            "dates deserialize (moto launcher converts them)"
        );
        anyhow::Ok(t.status().unwrap_or_default().to_owned())
    };
    assert_ne!(status(aws.clone()).await?, "running");
    aws.dms
        .start_replication_task()
        .replication_task_arn(&task_arn)
        .start_replication_task_type(StartReplicationTaskTypeValue::StartReplication)
        .send()
        .await?;
    assert_eq!(status(aws.clone()).await?, "running");
    aws.dms
        .stop_replication_task()
        .replication_task_arn(&task_arn)
        .send()
        .await?;
    assert_eq!(status(aws.clone()).await?, "stopped");
    let instances = aws.dms.describe_replication_instances().send().await?;
    assert_eq!(
        instances.replication_instances()[0].replication_instance_identifier(),
        Some("lab-instance")
    );
    Ok(())
}

#[tokio::test]
async fn moto_cloudwatch_put_and_get_through_sdk() -> anyhow::Result<()> {
    let moto = Moto::spawn().await?;
    let aws = AwsClients::new(&harness::aws_config(&moto.url())).await;
    let dimension = Dimension::builder()
        .name("ReplicationInstanceIdentifier")
        .value("lab-instance")
        .build();
    let now = SystemTime::now();
    aws.cloudwatch
        .put_metric_data()
        .namespace("AWS/DMS")
        .metric_data(
            MetricDatum::builder()
                .metric_name("FreeableMemory")
                .dimensions(dimension.clone())
                .value(1.25e9)
                .unit(StandardUnit::Bytes)
                .timestamp(now.into())
                .build(),
        )
        .send()
        .await?;
    let out = aws
        .cloudwatch
        .get_metric_data()
        .start_time((now - Duration::from_secs(600)).into())
        .end_time((now + Duration::from_secs(60)).into())
        .metric_data_queries(
            MetricDataQuery::builder()
                .id("m0")
                .metric_stat(
                    MetricStat::builder()
                        .metric(
                            Metric::builder()
                                .namespace("AWS/DMS")
                                .metric_name("FreeableMemory")
                                .dimensions(dimension)
                                .build(),
                        )
                        .period(60)
                        .stat("Minimum")
                        .build(),
                )
                .build(),
        )
        .send()
        .await?;
    let result = &out.metric_data_results()[0];
    assert_eq!(result.values(), &[1.25e9]);
    Ok(())
}

#[tokio::test]
async fn prometheus_scrapes_a_target() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = axum::Router::new().route(
        "/metrics",
        get(|| async { "# TYPE lab_probe gauge\nlab_probe 7\n" }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let prometheus = Prometheus::spawn(&format!(
        "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: lab\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
    ))
    .await?;
    let value = eventually(
        "Prometheus to scrape lab_probe",
        Duration::from_secs(30),
        || async {
            let result = prometheus.query("lab_probe").await?;
            Ok(result
                .first()
                .map(|r| r["value"][1].as_str().unwrap_or("").to_owned()))
        },
    )
    .await?;
    assert_eq!(value, "7");
    Ok(())
}

#[tokio::test]
async fn alertmanager_delivers_a_webhook() -> anyhow::Result<()> {
    let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let sink = received.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = axum::Router::new().route(
        "/hook",
        post(move |body: axum::Json<serde_json::Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().await.push(body.0);
                "ok"
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let am = Alertmanager::spawn(&format!(
        "route:\n  receiver: hook\n  group_wait: 1s\n  group_interval: 1s\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: http://127.0.0.1:{port}/hook\n"
    ))
    .await?;
    am.post_alerts(&serde_json::json!([{
        "labels": {"alertname": "LabTest", "task": "lab-task"},
        "annotations": {"summary": "lab"}
    }]))
    .await?;
    let payload = eventually("Alertmanager webhook", Duration::from_secs(30), || async {
        Ok(received.lock().await.first().cloned())
    })
    .await?;
    assert_eq!(payload["version"], "4");
    assert_eq!(payload["alerts"][0]["labels"]["alertname"], "LabTest");
    assert_eq!(payload["alerts"][0]["labels"]["task"], "lab-task");
    Ok(())
}
