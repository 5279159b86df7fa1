//! Where "now" stands relative to a weekly Redshift maintenance window (UTC week math), and the
//! cluster's real schedule as `DescribeClusters` reports it: `NextMaintenanceWindowStartTime`
//! (when maintenance can actually begin) and `DeferredMaintenanceWindows` (periods with no
//! maintenance), <https://docs.aws.amazon.com/redshift/latest/APIReference/API_Cluster.html>.
//!
//! Redshift Serverless has no maintenance window of this kind: "Amazon Redshift updates
//! provisioned clusters during the specified maintenance window, and usually updates serverless
//! workgroups during idle periods" (<https://docs.aws.amazon.com/redshift/latest/mgmt/tracks.html>).
//! With `redshift.serverless = true` nothing is probed and F3 stops nothing.

use chrono::{DateTime, Datelike, Timelike, Utc};

use crate::config::MaintenanceWindow;

/// One of the cluster's `DeferredMaintenanceWindows`: no maintenance starts inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferral {
    pub id: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// A maintenance occurrence: when it starts and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occurrence {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// What the cluster says about its maintenance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The weekly `PreferredMaintenanceWindow` (or the configured one): its length is the
    /// length of every occurrence.
    pub window: MaintenanceWindow,
    /// `NextMaintenanceWindowStartTime`, when the cluster reports it.
    pub next_start: Option<DateTime<Utc>>,
    pub deferred: Vec<Deferral>,
}

/// Deferrals last at most 45 days (ModifyClusterMaintenance, `DeferMaintenanceDuration`): ten
/// weekly occurrences always reach past one.
const WEEKS_LOOKED_AHEAD: i64 = 10;

impl Schedule {
    /// A schedule from the weekly window alone (a configured window; nothing deferred).
    pub fn weekly(window: MaintenanceWindow) -> Self {
        Self {
            window,
            next_start: None,
            deferred: Vec::new(),
        }
    }

    fn length(&self) -> chrono::Duration {
        chrono::Duration::minutes(i64::from(self.window.duration_minutes()))
    }

    /// The deferral covering `t`, if any.
    pub fn deferral_at(&self, t: DateTime<Utc>) -> Option<&Deferral> {
        self.deferred.iter().find(|d| d.start <= t && t < d.end)
    }

    /// The occurrence in progress at `now` (started, not ended, not deferred), if any: the
    /// one starting at `NextMaintenanceWindowStartTime` when the cluster reported one (AWS
    /// may move maintenance off the weekly window's usual time), else the weekly window's.
    pub fn active(&self, now: DateTime<Utc>) -> Option<Occurrence> {
        if let Some(start) = self.next_start {
            if start <= now && now < start + self.length() && self.deferral_at(start).is_none() {
                return Some(Occurrence {
                    start,
                    end: start + self.length(),
                });
            }
        }
        if !is_active(&self.window, now) {
            return None;
        }
        let into = (week_second(now) - i64::from(self.window.start_minute) * 60)
            .rem_euclid(SECONDS_PER_WEEK);
        let start = now - chrono::Duration::seconds(into);
        (self.deferral_at(start).is_none()).then(|| Occurrence {
            start,
            end: start + self.length(),
        })
    }

    /// The next occurrence starting after `now` that no deferral covers: from
    /// `NextMaintenanceWindowStartTime` when given, else from the weekly window; `None` if
    /// every occurrence of the next ten weeks is deferred.
    pub fn next(&self, now: DateTime<Utc>) -> Option<Occurrence> {
        let first = match self.next_start {
            Some(t) if t > now => t,
            _ => now + chrono::Duration::seconds(seconds_until_next_start(&self.window, now)),
        };
        (0..WEEKS_LOOKED_AHEAD)
            .map(|k| first + chrono::Duration::weeks(k))
            .find(|start| self.deferral_at(*start).is_none())
            .map(|start| Occurrence {
                start,
                end: start + self.length(),
            })
    }
}

/// Why the cluster's schedule could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("DescribeClusters for `{cluster}` failed: {message}")]
    Api { cluster: String, message: String },
    #[error("cluster `{0}` not found or has no PreferredMaintenanceWindow")]
    NoWindow(String),
    #[error("cluster `{cluster}`: {message}")]
    Invalid { cluster: String, message: String },
}

fn utc(t: &aws_sdk_redshift::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

/// Reads the cluster's schedule with `DescribeClusters`.
pub async fn describe_schedule(
    client: &aws_sdk_redshift::Client,
    cluster: &str,
) -> Result<Schedule, ScheduleError> {
    let out = client
        .describe_clusters()
        .cluster_identifier(cluster)
        .send()
        .await
        .map_err(|e| ScheduleError::Api {
            cluster: cluster.to_owned(),
            message: aws_sdk_redshift::error::DisplayErrorContext(&e).to_string(),
        })?;
    let c = out
        .clusters()
        .first()
        .ok_or_else(|| ScheduleError::NoWindow(cluster.to_owned()))?;
    let text = c
        .preferred_maintenance_window()
        .ok_or_else(|| ScheduleError::NoWindow(cluster.to_owned()))?;
    let window = MaintenanceWindow::parse(text).map_err(|message| ScheduleError::Invalid {
        cluster: cluster.to_owned(),
        message,
    })?;
    let deferred = c
        .deferred_maintenance_windows()
        .iter()
        .filter_map(|d| {
            Some(Deferral {
                id: d
                    .defer_maintenance_identifier()
                    .unwrap_or_default()
                    .to_owned(),
                start: utc(d.defer_maintenance_start_time()?)?,
                end: utc(d.defer_maintenance_end_time()?)?,
            })
        })
        .collect();
    Ok(Schedule {
        window,
        next_start: c.next_maintenance_window_start_time().and_then(utc),
        deferred,
    })
}

/// Seconds in one week.
pub const SECONDS_PER_WEEK: i64 = 7 * 24 * 3600;

/// Seconds since Monday 00:00:00 UTC of the week `now` falls in (fractions dropped).
pub fn week_second(now: DateTime<Utc>) -> i64 {
    i64::from(now.weekday().num_days_from_monday()) * 86_400
        + i64::from(now.num_seconds_from_midnight())
}

/// Seconds from `now` until the window's next start; 0 at the very second it starts.
///
/// While a window is active this is the time until next week's start, so "imminent" never
/// fires during the window itself.
pub fn seconds_until_next_start(window: &MaintenanceWindow, now: DateTime<Utc>) -> i64 {
    let start = i64::from(window.start_minute) * 60;
    (start - week_second(now)).rem_euclid(SECONDS_PER_WEEK)
}

/// Whether `now` lies inside the window (start included, end excluded), wrapping around the
/// end of the week (`sun:23:30-mon:00:15`).
pub fn is_active(window: &MaintenanceWindow, now: DateTime<Utc>) -> bool {
    let start = i64::from(window.start_minute) * 60;
    let length = i64::from(window.duration_minutes()) * 60;
    (week_second(now) - start).rem_euclid(SECONDS_PER_WEEK) < length
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32, hh: u32, mm: u32, ss: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, hh, mm, ss).unwrap()
    }

    fn window(s: &str) -> MaintenanceWindow {
        MaintenanceWindow::parse(s).unwrap()
    }

    // 2026-11-23 is a Monday.
    #[test]
    fn week_second_counts_from_monday_midnight() {
        assert_eq!(week_second(at(2026, 11, 23, 0, 0, 0)), 0);
        assert_eq!(
            week_second(at(2026, 11, 29, 23, 59, 59)),
            SECONDS_PER_WEEK - 1
        );
        assert_eq!(week_second(at(2026, 11, 25, 1, 2, 3)), 2 * 86_400 + 3723);
    }

    #[test]
    fn next_start_later_the_same_week() {
        let w = window("sun:05:00-sun:05:30");
        // Wednesday 05:00 -> Sunday 05:00 is four days.
        assert_eq!(
            seconds_until_next_start(&w, at(2026, 11, 25, 5, 0, 0)),
            4 * 86_400
        );
        assert!(!is_active(&w, at(2026, 11, 25, 5, 0, 0)));
    }

    #[test]
    fn next_start_wraps_into_next_week() {
        let w = window("mon:01:00-mon:01:30");
        // Sunday 23:00 -> Monday 01:00 is two hours, across the week boundary.
        assert_eq!(
            seconds_until_next_start(&w, at(2026, 11, 29, 23, 0, 0)),
            7200
        );
        // Monday 01:10 is inside; the next start is a week minus ten minutes away.
        assert!(is_active(&w, at(2026, 11, 30, 1, 10, 0)));
        assert_eq!(
            seconds_until_next_start(&w, at(2026, 11, 30, 1, 10, 0)),
            SECONDS_PER_WEEK - 600
        );
    }

    #[test]
    fn window_spanning_the_week_boundary_is_active_on_both_sides() {
        let w = window("sun:23:30-mon:00:15");
        assert!(!is_active(&w, at(2026, 11, 29, 23, 29, 59)));
        assert!(is_active(&w, at(2026, 11, 29, 23, 30, 0)));
        assert!(is_active(&w, at(2026, 11, 29, 23, 59, 59)));
        assert!(is_active(&w, at(2026, 11, 30, 0, 0, 0)));
        assert!(is_active(&w, at(2026, 11, 30, 0, 14, 59)));
        assert!(!is_active(&w, at(2026, 11, 30, 0, 15, 0)));
        assert_eq!(
            seconds_until_next_start(&w, at(2026, 11, 29, 23, 25, 0)),
            300
        );
    }

    #[test]
    fn start_second_itself_is_zero_and_active() {
        let w = window("wed:02:00-wed:02:30");
        let now = at(2026, 11, 25, 2, 0, 0);
        assert_eq!(seconds_until_next_start(&w, now), 0);
        assert!(is_active(&w, now));
    }

    #[test]
    fn schedule_skips_deferred_occurrences_and_uses_next_start() {
        let w = window("sun:05:00-sun:05:30");
        // Wednesday; the cluster says the next maintenance is Sunday 05:00.
        let now = at(2026, 11, 25, 5, 0, 0);
        let sunday = at(2026, 11, 29, 5, 0, 0);
        let mut s = Schedule {
            window: w,
            next_start: Some(sunday),
            deferred: Vec::new(),
        };
        assert_eq!(
            s.next(now),
            Some(Occurrence {
                start: sunday,
                end: at(2026, 11, 29, 5, 30, 0)
            })
        );
        // Deferred over that Sunday and the next: the one after.
        s.deferred.push(Deferral {
            id: "d".into(),
            start: at(2026, 11, 28, 0, 0, 0),
            end: at(2026, 12, 8, 0, 0, 0),
        });
        assert_eq!(
            s.next(now).map(|o| o.start),
            Some(at(2026, 12, 13, 5, 0, 0))
        );
        // Inside a deferred occurrence nothing is active.
        assert!(s.active(at(2026, 11, 29, 5, 10, 0)).is_none());
        assert!(Schedule::weekly(w)
            .active(at(2026, 11, 29, 5, 10, 0))
            .is_some());
        // Without NextMaintenanceWindowStartTime the weekly window decides.
        s.next_start = None;
        s.deferred.clear();
        assert_eq!(s.next(now).map(|o| o.start), Some(sunday));
    }

    #[test]
    fn empty_window_is_never_active() {
        let w = window("wed:02:00-wed:02:00");
        assert!(!is_active(&w, at(2026, 11, 25, 2, 0, 0)));
    }

    #[test]
    fn the_reported_next_start_is_active_for_the_window_length() {
        // Weekly window on Sundays; the cluster reports maintenance on a Wednesday instead.
        let start = at(2026, 12, 2, 10, 0, 0);
        let schedule = Schedule {
            window: window("sun:05:00-sun:05:30"),
            next_start: Some(start),
            deferred: Vec::new(),
        };
        assert!(schedule.active(at(2026, 12, 2, 9, 59, 59)).is_none());
        let active = schedule.active(start).expect("active at its start");
        assert_eq!(
            (active.start, active.end),
            (start, at(2026, 12, 2, 10, 30, 0))
        );
        assert!(schedule.active(at(2026, 12, 2, 10, 29, 59)).is_some());
        assert!(schedule.active(at(2026, 12, 2, 10, 30, 0)).is_none());
        // The weekly window still counts.
        assert!(schedule.active(at(2026, 12, 6, 5, 10, 0)).is_some());
    }
}
