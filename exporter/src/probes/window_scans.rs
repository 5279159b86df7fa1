//! When the gaps probe reads a finished day window (yesterday) again.
//!
//! Today's window changes all day and is read on every run. Yesterday's is finished: once a read
//! covered all of it (replication had passed its last id) and found nothing missing or extra,
//! it is read again only after `finished_window_interval`, and its gauges keep the last values
//! meanwhile. A window not yet read in full, whose last read found differences (a repair may
//! be under way and the alert must resolve when it is done), or whose source id range changed
//! since (rows of that day committed late, e.g. a long transaction or a backfill), is read on
//! every run. Pure: the instant and the range are passed in.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use dmsguard_pipeline::gap_finder::IdRange;

/// The last complete read of a table's finished window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FullRead {
    day: NaiveDate,
    /// The window's source id range then (None: no rows).
    range: Option<IdRange>,
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

    /// Whether `table`'s finished window `day`, whose source ids are now `range`, must be
    /// read at `now`.
    pub fn due(
        &self,
        table: &str,
        day: NaiveDate,
        range: Option<IdRange>,
        now: DateTime<Utc>,
    ) -> bool {
        match self.last.get(table) {
            Some(read) if read.day == day && read.clean && read.range == range => {
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
        range: Option<IdRange>,
        now: DateTime<Utc>,
        complete: bool,
        clean: bool,
    ) {
        if complete {
            self.last.insert(
                table.to_owned(),
                FullRead {
                    day,
                    range,
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

    /// The window's source ids in the tests' reads.
    const R: Option<IdRange> = Some(IdRange { lo: 100, hi: 200 });

    #[test]
    fn a_window_whose_ids_changed_is_read_again_at_once() {
        let mut scans = WindowScans::new(Duration::from_secs(3600));
        // Read in full and clean while the day had no rows yet.
        scans.record("t", day(1), None, at(0), true, true);
        assert!(!scans.due("t", day(1), None, at(5)));
        // Rows of that day committed since: read at once.
        assert!(scans.due("t", day(1), R, at(5)));
        scans.record("t", day(1), R, at(5), true, true);
        assert!(!scans.due("t", day(1), R, at(6)));
        let grown = Some(IdRange { lo: 100, hi: 201 });
        assert!(scans.due("t", day(1), grown, at(6)));
    }

    #[test]
    fn a_clean_complete_window_waits_for_its_interval() {
        let mut scans = WindowScans::new(Duration::from_secs(3600));
        assert!(scans.due("t", day(1), R, at(0)), "never read");
        scans.record("t", day(1), R, at(0), true, true);
        assert!(!scans.due("t", day(1), R, at(5)));
        assert!(!scans.due("t", day(1), R, at(59)));
        assert!(scans.due("t", day(1), R, at(60)));
        assert!(scans.due("other", day(1), R, at(5)), "per table");
        assert!(
            scans.due("t", day(2), R, at(5)),
            "a new day is a new window"
        );
        assert_eq!(scans.last_full_read("t"), Some(at(0)));
    }

    #[test]
    fn an_incomplete_or_unclean_window_is_read_every_run() {
        let mut scans = WindowScans::new(Duration::from_secs(3600));
        scans.record("t", day(1), R, at(0), false, true);
        assert!(
            scans.due("t", day(1), R, at(1)),
            "replication had not passed it all"
        );
        scans.record("t", day(1), R, at(1), true, false);
        assert!(
            scans.due("t", day(1), R, at(2)),
            "differences: watch the repair"
        );
        scans.record("t", day(1), R, at(2), true, true);
        assert!(!scans.due("t", day(1), R, at(3)));
        // A read that turns incomplete again (e.g. the frontier went back after a restart)
        // forgets the full read.
        scans.record("t", day(1), R, at(3), false, true);
        assert!(scans.due("t", day(1), R, at(4)));
        assert_eq!(scans.last_full_read("t"), None);
    }

    #[test]
    fn zero_reads_every_run_and_a_clock_going_back_reads_again() {
        let mut scans = WindowScans::new(Duration::ZERO);
        scans.record("t", day(1), R, at(10), true, true);
        assert!(scans.due("t", day(1), R, at(10)));
        let mut scans = WindowScans::new(Duration::from_secs(3600));
        scans.record("t", day(1), R, at(10), true, true);
        assert!(scans.due("t", day(1), R, at(9)));
    }
}
