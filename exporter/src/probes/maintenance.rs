//! Exports the seconds until the next Redshift maintenance window and whether one is active,
//! from `redshift.maintenance_window` or the cluster's `PreferredMaintenanceWindow`.

use dmsguard_pipeline::config::{Config, MaintenanceWindow};
use dmsguard_pipeline::maintenance;

use super::{Probe, ProbeError};
use crate::metrics::{MaintenanceMetrics, ProbeName};

/// Where the window comes from.
#[derive(Debug, Clone)]
pub enum WindowSource {
    /// `redshift.maintenance_window`.
    Configured(MaintenanceWindow),
    /// `DescribeClusters` of `redshift.cluster_identifier`, read on every refresh.
    Cluster {
        client: aws_sdk_redshift::Client,
        cluster_identifier: String,
    },
}

impl WindowSource {
    /// The source the config names, if any (the configured window wins).
    pub fn from_config(config: &Config, client: &aws_sdk_redshift::Client) -> Option<Self> {
        if let Some(text) = &config.redshift.maintenance_window {
            // Validated when the config was loaded.
            return MaintenanceWindow::parse(text)
                .ok()
                .map(WindowSource::Configured);
        }
        config
            .redshift
            .cluster_identifier
            .as_ref()
            .map(|id| WindowSource::Cluster {
                client: client.clone(),
                cluster_identifier: id.clone(),
            })
    }
}

/// The maintenance probe.
pub struct MaintenanceProbe {
    source: WindowSource,
    /// The last window read: the countdown keeps going while `DescribeClusters` fails.
    last_window: Option<MaintenanceWindow>,
    metrics: MaintenanceMetrics,
}

impl MaintenanceProbe {
    pub fn new(source: WindowSource, metrics: MaintenanceMetrics) -> Self {
        Self {
            source,
            last_window: None,
            metrics,
        }
    }

    async fn window(&self) -> Result<MaintenanceWindow, ProbeError> {
        match &self.source {
            WindowSource::Configured(w) => Ok(*w),
            WindowSource::Cluster {
                client,
                cluster_identifier,
            } => {
                let out = client
                    .describe_clusters()
                    .cluster_identifier(cluster_identifier)
                    .send()
                    .await
                    .map_err(|e| ProbeError::aws("DescribeClusters", e))?;
                let text = out
                    .clusters()
                    .first()
                    .and_then(|c| c.preferred_maintenance_window())
                    .ok_or_else(|| {
                        ProbeError::Invalid(format!(
                            "cluster `{cluster_identifier}` has no PreferredMaintenanceWindow"
                        ))
                    })?;
                MaintenanceWindow::parse(text).map_err(|e| {
                    ProbeError::Invalid(format!("cluster `{cluster_identifier}`: {e}"))
                })
            }
        }
    }
}

impl Probe for MaintenanceProbe {
    fn name(&self) -> ProbeName {
        ProbeName::Maintenance
    }

    async fn refresh(&mut self) -> Result<(), ProbeError> {
        let read = self.window().await;
        if let Ok(window) = &read {
            self.last_window = Some(*window);
        }
        if let Some(window) = &self.last_window {
            let now = chrono::Utc::now();
            self.metrics
                .next_start
                .set(maintenance::seconds_until_next_start(window, now) as f64);
            self.metrics
                .active
                .set(if maintenance::is_active(window, now) {
                    1.0
                } else {
                    0.0
                });
        }
        read.map(|_| ())
    }
}
