//! `[aws] role_arn`: the clients act as the assumed role (STS `AssumeRole` against moto's STS,
//! with the lab's static keys as the base identity of the default credential chain).

use dmsguard_lab::harness::{self, Moto};
use dmsguard_pipeline::aws::{caller_identity, sdk_config, AwsClients};
use dmsguard_pipeline::config::AwsConfig;

const ROLE: &str = "arn:aws:iam::123456789012:role/dmsguard-exporter";

#[tokio::test]
async fn the_clients_act_as_the_assumed_role() -> anyhow::Result<()> {
    let moto = Moto::spawn().await?;
    let base = harness::aws_config(&moto.url());

    // Without a role: the chain's own identity (moto's default user for static keys).
    let plain = caller_identity(&sdk_config(&base).await).await?;
    assert!(!plain.contains("assumed-role"), "{plain}");

    let aws = AwsConfig {
        role_arn: Some(ROLE.to_owned()),
        external_id: Some("dmsguard-ext-1".to_owned()),
        session_name: Some("dmsguard-test".to_owned()),
        ..base.clone()
    };
    let sdk = sdk_config(&aws).await;
    let arn = caller_identity(&sdk).await?;
    assert_eq!(
        arn,
        "arn:aws:sts::123456789012:assumed-role/dmsguard-exporter/dmsguard-test"
    );

    // The API clients dmsguard uses sign with the role's credentials and work.
    let clients = AwsClients::from_sdk(&sdk);
    let tasks = clients.dms.describe_replication_tasks().send().await?;
    assert!(tasks.replication_tasks().is_empty());
    clients.cloudwatch.list_metrics().send().await?;
    clients.redshift.describe_clusters().send().await?;

    // The default session name.
    let aws = AwsConfig {
        session_name: None,
        external_id: None,
        ..aws
    };
    let arn = caller_identity(&sdk_config(&aws).await).await?;
    assert!(
        arn.ends_with("assumed-role/dmsguard-exporter/dmsguard"),
        "{arn}"
    );
    Ok(())
}
