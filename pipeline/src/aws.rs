//! AWS SDK clients built from `[aws]`: region, optional endpoint, retries with backoff, timeouts.

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

use crate::config::AwsConfig;

/// Loads the shared SDK config (credentials from the standard chain).
pub async fn sdk_config(config: &AwsConfig) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(config.region.clone()))
        .retry_config(RetryConfig::standard().with_max_attempts(config.max_attempts.max(1)))
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(config.timeout)
                .build(),
        );
    if let Some(endpoint) = &config.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    loader.load().await
}

/// The three API clients dmsguard uses.
#[derive(Clone, Debug)]
pub struct AwsClients {
    pub dms: aws_sdk_databasemigration::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub redshift: aws_sdk_redshift::Client,
}

impl AwsClients {
    pub async fn new(config: &AwsConfig) -> Self {
        let sdk = sdk_config(config).await;
        Self {
            dms: aws_sdk_databasemigration::Client::new(&sdk),
            cloudwatch: aws_sdk_cloudwatch::Client::new(&sdk),
            redshift: aws_sdk_redshift::Client::new(&sdk),
        }
    }
}
