//! Where "now" stands relative to a weekly Redshift maintenance window (UTC week math).

use chrono::{DateTime, Datelike, Timelike, Utc};

use crate::config::MaintenanceWindow;

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
    fn empty_window_is_never_active() {
        let w = window("wed:02:00-wed:02:00");
        assert!(!is_active(&w, at(2026, 11, 25, 2, 0, 0)));
    }
}
