//! AWS SDK clients built from `[aws]`: region, optional endpoint, retries with backoff, timeouts,
//! and credentials from the standard chain, optionally used to assume `role_arn`.

use aws_config::retry::RetryConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_types::sdk_config::SharedCredentialsProvider;

use crate::config::AwsConfig;

/// Loads the shared SDK config. Credentials: the default chain (environment, shared profile,
/// web identity token / IRSA, ECS container role, EC2 instance role; see
/// https://docs.aws.amazon.com/sdk-for-rust/latest/dg/credproviders.html). With `role_arn`,
/// that identity only calls STS `AssumeRole`
/// (https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRole.html) and every client
/// uses the role's temporary credentials, which the SDK's identity cache refreshes before they
/// expire.
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
    let base = loader.load().await;
    let Some(role_arn) = &config.role_arn else {
        return base;
    };
    let mut role = AssumeRoleProvider::builder(role_arn)
        .session_name(config.session_name())
        .configure(&base);
    if let Some(external_id) = &config.external_id {
        role = role.external_id(external_id);
    }
    let provider = role.build().await;
    base.into_builder()
        .credentials_provider(SharedCredentialsProvider::new(provider))
        .build()
}

/// Why the caller's identity could not be read.
#[derive(Debug, thiserror::Error)]
#[error("sts:GetCallerIdentity failed: {0}")]
pub struct IdentityError(String);

/// The ARN of the identity the clients act as (`sts:GetCallerIdentity`, which needs no IAM
/// permission: https://docs.aws.amazon.com/STS/latest/APIReference/API_GetCallerIdentity.html).
pub async fn caller_identity(sdk: &SdkConfig) -> Result<String, IdentityError> {
    let out = aws_sdk_sts::Client::new(sdk)
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| IdentityError(aws_sdk_sts::error::DisplayErrorContext(e).to_string()))?;
    Ok(out.arn().unwrap_or_default().to_owned())
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
        Self::from_sdk(&sdk_config(config).await)
    }

    /// The clients over an already loaded SDK config.
    pub fn from_sdk(sdk: &SdkConfig) -> Self {
        Self {
            dms: aws_sdk_databasemigration::Client::new(sdk),
            cloudwatch: aws_sdk_cloudwatch::Client::new(sdk),
            redshift: aws_sdk_redshift::Client::new(sdk),
        }
    }
}
