//! When the gaps probe reads a finished day window (yesterday) again.
//!
//! Today's window changes all day and is read on every run. Yesterday's is finished: once a read
//! covered all of it (replication had passed its last id) and found nothing missing or extra,
//! it is read again only after `finished_window_interval`, and its gauges keep the last values
//! meanwhile. A window not yet read in full, or whose last read found differences (a repair may
//! be under way and the alert must resolve when it is done), is read on every run. Pure: the
//! instant is passed in.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};

/// The last complete read of a table's finished window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FullRead {
    day: NaiveDate,
    at: DateTime<Utc>,
    clean: bool,
}

/// Per table, the last complete, clean read of its finished window.
#[derive(Debug, Clone)]
pub struct WindowScans {
    every: Duration,
    last: HashMap<String, FullRead>,
}

impl WindowScans {
    /// Finished windows are read again after `every` (`0s`: on every run).
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: HashMap::new(),
        }
    }

    /// Whether `table`'s finished window `day` must be read at `now`.
    pub fn due(&self, table: &str, day: NaiveDate, now: DateTime<Utc>) -> bool {
        match self.last.get(table) {
            Some(read) if read.day == day && read.clean => {
                let every = chrono::Duration::from_std(self.every).unwrap_or(chrono::Duration::MAX);
                now < read.at || now.signed_duration_since(read.at) >= every
            }
            _ => true,
        }
    }

    /// Records a read of `table`'s finished window `day` at `now`: `complete` when it covered
    /// every id of the window, `clean` when nothing was missing or extra. Only a complete read
    /// puts the window on the slow schedule.
    pub fn record(
        &mut self,
        table: &str,
        day: NaiveDate,
        now: DateTime<Utc>,
        complete: bool,
        clean: bool,
    ) {
        if complete {
            self.last.insert(
                table.to_owned(),
                FullRead {
                    day,
                    at: now,
                    clean,
                },
            );
        } else {
            self.last.remove(table);
        }
    }

    /// When `table`'s finished window was last read in full, if it was.
    pub fn last_full_read(&self, table: &str) -> Option<DateTime<Utc>> {
        self.last.get(table).map(|r| r.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + minutes * 60, 0).unwrap()
    }

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2027, 1, d).unwrap()
    }

    #[test]
    fn a_clean_complete_window_waits_for_its_interval() {
        let mut scans = WindowScans::new(Duration::from_secs(3600));
        assert!(scans.due("t", day(1), at(0)), "never read");
        scans.record("t", day(1), at(0), true, true);
        assert!(!scans.due("t", day(1), at(5)));
        assert!(!scans.due("t", day(1), at(59)));
        assert!(scans.due("t", day(1), at(60)));
        assert!(scans.due("other", day(1), at(5)), "per table");
        assert!(scans.due("t", day(2), at(5)), "a new day is a new window");
        assert_eq!(scans.last_full_read("t"), Some(at(0)));
    }

    #[test]
    fn an_incomplete_or_unclean_window_is_read_every_run() {
        let mut scans = WindowScans::new(Duration::from_secs(3600));
        scans.record("t", day(1), at(0), false, true);
        assert!(
            scans.due("t", day(1), at(1)),
            "replication had not passed it all"
        );
        scans.record("t", day(1), at(1), true, false);
        assert!(
            scans.due("t", day(1), at(2)),
            "differences: watch the repair"
        );
        scans.record("t", day(1), at(2), true, true);
        assert!(!scans.due("t", day(1), at(3)));
        // A read that turns incomplete again (e.g. the frontier went back after a restart)
        // forgets the full read.
        scans.record("t", day(1), at(3), false, true);
        assert!(scans.due("t", day(1), at(4)));
        assert_eq!(scans.last_full_read("t"), None);
    }

    #[test]
    fn zero_reads_every_run_and_a_clock_going_back_reads_again() {
        let mut scans = WindowScans::new(Duration::ZERO);
        scans.record("t", day(1), at(10), true, true);
        assert!(scans.due("t", day(1), at(10)));
        let mut scans = WindowScans::new(Duration::from_secs(3600));
        scans.record("t", day(1), at(10), true, true);
        assert!(scans.due("t", day(1), at(9)));
    }
}
