//! DMS objects in a test's moto: replication instance, endpoints and tasks.

use aws_sdk_databasemigration::types::{
    MigrationTypeValue, ReplicationEndpointTypeValue, StartReplicationTaskTypeValue,
};
use dmsguard_pipeline::aws::AwsClients;

/// Creates a replication instance, two endpoints and a CDC task in moto; returns the task ARN.
pub async fn create_dms_task(
    aws: &AwsClients,
    instance: &str,
    task: &str,
) -> anyhow::Result<String> {
    let instances = aws.dms.describe_replication_instances().send().await?;
    let instance_arn = match instances
        .replication_instances()
        .iter()
        .find(|i| i.replication_instance_identifier() == Some(instance))
    {
        Some(i) => i.replication_instance_arn().unwrap_or_default().to_owned(),
        None => aws
            .dms
            .create_replication_instance()
            .replication_instance_identifier(instance)
            .replication_instance_class("dms.t3.medium")
            .send()
            .await?
            .replication_instance()
            .and_then(|i| i.replication_instance_arn())
            .unwrap_or_default()
            .to_owned(),
    };
    let mut endpoints = Vec::new();
    for (suffix, kind, engine) in [
        ("src", ReplicationEndpointTypeValue::Source, "postgres"),
        ("dst", ReplicationEndpointTypeValue::Target, "redshift"),
    ] {
        let e = aws
            .dms
            .create_endpoint()
            .endpoint_identifier(format!("{task}-{suffix}"))
            .endpoint_type(kind)
            .engine_name(engine)
            .send()
            .await?;
        endpoints.push(
            e.endpoint()
                .and_then(|e| e.endpoint_arn())
                .unwrap_or_default()
                .to_owned(),
        );
    }
    let out = aws
        .dms
        .create_replication_task()
        .replication_task_identifier(task)
        .source_endpoint_arn(&endpoints[0])
        .target_endpoint_arn(&endpoints[1])
        .replication_instance_arn(&instance_arn)
        .migration_type(MigrationTypeValue::Cdc)
        .table_mappings(r#"{"rules":[]}"#)
        .send()
        .await?;
    Ok(out
        .replication_task()
        .and_then(|t| t.replication_task_arn())
        .unwrap_or_default()
        .to_owned())
}

/// Starts a task (`start-replication`); moto sets it `running` at once.
pub async fn start_dms_task(aws: &AwsClients, task_arn: &str) -> anyhow::Result<()> {
    aws.dms
        .start_replication_task()
        .replication_task_arn(task_arn)
        .start_replication_task_type(StartReplicationTaskTypeValue::StartReplication)
        .send()
        .await?;
    Ok(())
}
