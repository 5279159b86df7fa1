//! Exports the Redshift maintenance schedule: seconds until and times of the next maintenance
//! that is not deferred, whether one is active, whether maintenance is deferred now. From
//! `redshift.maintenance_window`, or the cluster's `DescribeClusters`:
//! `NextMaintenanceWindowStartTime`, `DeferredMaintenanceWindows` and the
//! `PreferredMaintenanceWindow`'s length
//! (<https://docs.aws.amazon.com/redshift/latest/APIReference/API_Cluster.html>).

use dmsguard_pipeline::config::{Config, MaintenanceWindow};
use dmsguard_pipeline::maintenance::{self, Schedule};

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
    /// The last schedule read: the countdown keeps going while `DescribeClusters` fails.
    last: Option<Schedule>,
    metrics: MaintenanceMetrics,
}

impl MaintenanceProbe {
    pub fn new(source: WindowSource, metrics: MaintenanceMetrics) -> Self {
        Self {
            source,
            last: None,
            metrics,
        }
    }

    async fn schedule(&self) -> Result<Schedule, ProbeError> {
        match &self.source {
            WindowSource::Configured(w) => Ok(Schedule::weekly(*w)),
            WindowSource::Cluster {
                client,
                cluster_identifier,
            } => maintenance::describe_schedule(client, cluster_identifier)
                .await
                .map_err(|e| ProbeError::Invalid(e.to_string())),
        }
    }
}

impl Probe for MaintenanceProbe {
    fn name(&self) -> ProbeName {
        ProbeName::Maintenance
    }

    async fn refresh(&mut self) -> Result<(), ProbeError> {
        let read = self.schedule().await;
        if let Ok(schedule) = &read {
            self.last = Some(schedule.clone());
        }
        if let Some(schedule) = &self.last {
            let now = chrono::Utc::now();
            let seconds = |t: chrono::DateTime<chrono::Utc>| t.timestamp_millis() as f64 / 1000.0;
            match schedule.next(now) {
                Some(next) => {
                    self.metrics
                        .next_start
                        .set(((next.start - now).num_milliseconds() as f64 / 1000.0).max(0.0));
                    self.metrics.next_start_timestamp.set(seconds(next.start));
                    self.metrics.next_end_timestamp.set(seconds(next.end));
                }
                None => {
                    // Deferred as far as the schedule goes: no maintenance ahead.
                    self.metrics.next_start.set(f64::INFINITY);
                    self.metrics.next_start_timestamp.set(f64::INFINITY);
                    self.metrics.next_end_timestamp.set(f64::INFINITY);
                }
            }
            self.metrics.active.set(if schedule.active(now).is_some() {
                1.0
            } else {
                0.0
            });
            self.metrics
                .deferred
                .set(if schedule.deferral_at(now).is_some() {
                    1.0
                } else {
                    0.0
                });
        }
        read.map(|_| ())
    }
}
