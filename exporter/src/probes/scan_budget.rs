//! How much of a day window the gaps probe reads per run: the scan budget and the slice walk.
//!
//! Each run may read at most the table's budget of ids per side (`[exporter]
//! gaps_scan_budget_rows`, `[[tables]] scan_budget_rows`), shared by the windows read that run
//! ([`split`]). A window larger than its share is read in slices of consecutive ids over
//! successive runs ([`WindowWalk`]): a pass starts at the window's first judged id and ends at
//! its last, the next run after a pass starts the next one at the first id again. Slice
//! boundaries come from the window's id range and the share, never from the clock. The window's
//! counts are those of each slice's latest read: an id counts as missing, extra or divergent
//! as the last read of the slice holding it saw it, so a count may be up to one pass old.
//! Pure: ranges, findings and instants are passed in.

use std::collections::BTreeSet;

use chrono::{DateTime, NaiveDate, Utc};
use dmsguard_pipeline::gap_finder::IdRange;

/// Ids in `range` (`hi - lo + 1`), saturating.
pub fn span(range: IdRange) -> u64 {
    u64::try_from(i128::from(range.hi) - i128::from(range.lo) + 1).unwrap_or(u64::MAX)
}

/// Splits `budget` among windows whose reads in full would cost `needs`: each gets its need
/// when all fit; otherwise the budget is shared equally, and what a window needs less than its
/// share goes to the others (so a small window never starves a large one, nor the reverse).
pub fn split(budget: u64, needs: &[u64]) -> Vec<u64> {
    let mut order: Vec<usize> = (0..needs.len()).collect();
    order.sort_by_key(|&i| needs[i]);
    let mut shares = vec![0; needs.len()];
    let mut left = budget;
    for (done, &i) in order.iter().enumerate() {
        let share = left / u64::try_from(needs.len() - done).unwrap_or(u64::MAX);
        shares[i] = needs[i].min(share);
        left -= shares[i];
    }
    shares
}

/// What one read of a slice found, ids ascending or not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// In the source only (the gap finder).
    pub missing: Vec<i64>,
    /// In the target only (the gap finder).
    pub extra: Vec<i64>,
    /// Content differences that count (persisted past the replication latency).
    pub divergent: Vec<i64>,
    /// Every difference the content comparison saw, counted or not yet: a window showing any
    /// is not clean (a repair may be under way).
    pub unconfirmed: Vec<i64>,
}

/// A window's counts: over each slice's latest read, within the judged range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub missing: u64,
    pub extra: u64,
    pub divergent: u64,
    /// Whether no id of the range shows any difference.
    pub clean: bool,
}

/// How a read ended a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassEnd {
    /// Whether the window's source id range was the same when the pass began: a range that
    /// changed meanwhile (rows of the day committed late) may hold ids read before they existed.
    pub range_unchanged: bool,
}

/// One table's walk through one day window.
#[derive(Debug, Clone, Default)]
pub struct WindowWalk {
    day: Option<NaiveDate>,
    /// The next id to read in the current pass; `None`: the next read starts a pass.
    next: Option<i64>,
    /// The window's source id range when the current pass began.
    pass_window: Option<IdRange>,
    missing: BTreeSet<i64>,
    extra: BTreeSet<i64>,
    divergent: BTreeSet<i64>,
    unconfirmed: BTreeSet<i64>,
    /// When the last pass ended.
    completed_at: Option<DateTime<Utc>>,
}

impl WindowWalk {
    /// Makes the walk follow the window's day `day`: a new day is a new window, walked from
    /// its start with nothing known. Returns whether it was a new day.
    pub fn follow_day(&mut self, day: NaiveDate) -> bool {
        if self.day == Some(day) {
            return false;
        }
        *self = Self {
            day: Some(day),
            ..Self::default()
        };
        true
    }

    /// Where the next read starts within `judged`: the cursor, or the first id when a pass
    /// begins (also when the range moved past the cursor).
    fn start(&self, judged: IdRange) -> i64 {
        match self.next {
            Some(next) if judged.contains(next) => next,
            _ => judged.lo,
        }
    }

    /// Ids left to read in the current pass over `judged`.
    pub fn remaining(&self, judged: IdRange) -> u64 {
        span(IdRange {
            lo: self.start(judged),
            hi: judged.hi,
        })
    }

    /// The next slice of `judged` to read: at most `width` ids (at least one) from the cursor.
    pub fn next_slice(&self, judged: IdRange, width: u64) -> IdRange {
        let lo = self.start(judged);
        let width = i64::try_from(width.max(1)).unwrap_or(i64::MAX);
        IdRange {
            lo,
            hi: lo.saturating_add(width - 1).min(judged.hi),
        }
    }

    /// Records a read of `slice` (from [`Self::next_slice`]) of `judged`, while the window's
    /// source ids were `window`, at `now`: its findings replace what earlier reads found in
    /// the slice. Returns how the pass ended, when this read ended one.
    pub fn record(
        &mut self,
        slice: IdRange,
        judged: IdRange,
        window: Option<IdRange>,
        found: &Found,
        now: DateTime<Utc>,
    ) -> Option<PassEnd> {
        if slice.lo == judged.lo {
            self.pass_window = window;
        }
        for (set, ids) in [
            (&mut self.missing, &found.missing),
            (&mut self.extra, &found.extra),
            (&mut self.divergent, &found.divergent),
            (&mut self.unconfirmed, &found.unconfirmed),
        ] {
            let old: Vec<i64> = set.range(slice.lo..=slice.hi).copied().collect();
            for id in old {
                set.remove(&id);
            }
            set.extend(ids.iter().copied().filter(|id| slice.contains(*id)));
        }
        if slice.hi >= judged.hi {
            self.next = None;
            self.completed_at = Some(now);
            Some(PassEnd {
                range_unchanged: self.pass_window == window,
            })
        } else {
            self.next = Some(slice.hi + 1);
            None
        }
    }

    /// The window's counts within `judged`.
    pub fn counts(&self, judged: IdRange) -> Counts {
        let within = |set: &BTreeSet<i64>| {
            u64::try_from(set.range(judged.lo..=judged.hi).count()).unwrap_or(u64::MAX)
        };
        let (missing, extra, divergent) = (
            within(&self.missing),
            within(&self.extra),
            within(&self.divergent),
        );
        Counts {
            missing,
            extra,
            divergent,
            clean: missing == 0 && extra == 0 && divergent == 0 && within(&self.unconfirmed) == 0,
        }
    }

    /// The fraction of `judged` the current pass has covered: 1 once a pass ended and until the
    /// next one starts, 0 before any read.
    pub fn progress(&self, judged: IdRange) -> f64 {
        match self.next {
            Some(next) if judged.contains(next) => {
                // Ratios of id counts: f64's precision is ample for a fraction.
                #[allow(clippy::cast_precision_loss)]
                let ratio = span(IdRange {
                    lo: judged.lo,
                    hi: next - 1,
                }) as f64
                    / span(judged) as f64;
                ratio
            }
            Some(_) => 0.0,
            None if self.completed_at.is_some() => 1.0,
            None => 0.0,
        }
    }

    /// When the last pass over the window ended.
    pub fn completed_at(&self) -> Option<DateTime<Utc>> {
        self.completed_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2027, 1, d).unwrap()
    }

    fn r(lo: i64, hi: i64) -> IdRange {
        IdRange::new(lo, hi).unwrap()
    }

    fn missing(ids: &[i64]) -> Found {
        Found {
            missing: ids.to_vec(),
            ..Found::default()
        }
    }

    #[test]
    fn split_gives_each_its_need_when_all_fit_and_equal_shares_otherwise() {
        assert_eq!(split(100, &[30, 50]), vec![30, 50]);
        assert_eq!(split(100, &[300, 500]), vec![50, 50]);
        // What the small window does not need goes to the large one.
        assert_eq!(split(100, &[10, 500]), vec![10, 90]);
        assert_eq!(split(100, &[500, 10]), vec![90, 10]);
        assert_eq!(split(100, &[0, 500]), vec![0, 100]);
        assert_eq!(split(101, &[300, 500, 7]), vec![47, 47, 7]);
        assert_eq!(split(1, &[5, 5]), vec![0, 1]);
        assert_eq!(split(u64::MAX, &[u64::MAX, 3]), vec![u64::MAX - 3, 3]);
        assert!(split(100, &[]).is_empty());
    }

    #[test]
    fn a_window_larger_than_the_width_is_covered_in_slices_and_wraps_around() {
        let mut walk = WindowWalk::default();
        walk.follow_day(day(1));
        let judged = r(1, 10);
        let window = Some(judged);
        assert_eq!(walk.progress(judged), 0.0);
        assert_eq!(walk.remaining(judged), 10);
        let mut slices = Vec::new();
        let mut ends = Vec::new();
        for run in 0..5 {
            let slice = walk.next_slice(judged, 4);
            slices.push(slice);
            ends.push(walk.record(slice, judged, window, &Found::default(), at(run)));
            if run == 0 {
                assert_eq!(walk.progress(judged), 0.4);
                assert_eq!(walk.remaining(judged), 6);
            }
        }
        assert_eq!(
            slices,
            vec![r(1, 4), r(5, 8), r(9, 10), r(1, 4), r(5, 8)],
            "the last slice is short, then the next pass starts at the first id"
        );
        let done = Some(PassEnd {
            range_unchanged: true,
        });
        assert_eq!(ends, vec![None, None, done, None, None]);
        assert_eq!(walk.completed_at(), Some(at(2)));
        assert_eq!(walk.progress(judged), 0.8);
    }

    #[test]
    fn counts_are_each_slices_latest_read() {
        let mut walk = WindowWalk::default();
        walk.follow_day(day(1));
        let judged = r(1, 100);
        let w = Some(judged);
        // First and last slices each hold a missing id; the middle one an extra id.
        let s = walk.next_slice(judged, 40);
        walk.record(s, judged, w, &missing(&[1, 7]), at(0));
        assert_eq!(walk.counts(judged).missing, 2, "after one slice");
        let s = walk.next_slice(judged, 40);
        let extra = Found {
            extra: vec![50],
            ..Found::default()
        };
        walk.record(s, judged, w, &extra, at(1));
        let s = walk.next_slice(judged, 40);
        assert_eq!(s, r(81, 100));
        assert!(walk.record(s, judged, w, &missing(&[100]), at(2)).is_some());
        let c = walk.counts(judged);
        assert_eq!((c.missing, c.extra, c.divergent, c.clean), (3, 1, 0, false));
        // The first slice is repaired: its count drops at its next read, the others stay.
        let s = walk.next_slice(judged, 40);
        assert_eq!(s, r(1, 40));
        walk.record(s, judged, w, &Found::default(), at(3));
        let c = walk.counts(judged);
        assert_eq!((c.missing, c.extra), (1, 1));
        // Ids outside the judged range do not count (the frontier went back).
        assert_eq!(walk.counts(r(1, 99)).missing, 0);
        // Findings outside the slice read are ignored.
        let s = walk.next_slice(judged, 40);
        walk.record(s, judged, w, &missing(&[3]), at(4));
        assert_eq!(walk.counts(judged).missing, 1);
    }

    #[test]
    fn unconfirmed_differences_make_a_window_unclean_without_counting() {
        let mut walk = WindowWalk::default();
        walk.follow_day(day(1));
        let judged = r(1, 10);
        let found = Found {
            unconfirmed: vec![4],
            ..Found::default()
        };
        walk.record(judged, judged, Some(judged), &found, at(0));
        let c = walk.counts(judged);
        assert_eq!((c.missing, c.extra, c.divergent, c.clean), (0, 0, 0, false));
        walk.record(judged, judged, Some(judged), &Found::default(), at(1));
        assert!(walk.counts(judged).clean);
    }

    #[test]
    fn a_growing_window_is_walked_to_its_current_end_then_from_the_start() {
        let mut walk = WindowWalk::default();
        walk.follow_day(day(1));
        let s = walk.next_slice(r(1, 10), 6);
        walk.record(s, r(1, 10), Some(r(1, 10)), &Found::default(), at(0));
        // Today grew to 1..=20: the pass goes on to 20, then starts again at 1 (never only
        // reading new ids).
        let s = walk.next_slice(r(1, 20), 6);
        assert_eq!(s, r(7, 12));
        assert_eq!(
            walk.record(s, r(1, 20), Some(r(1, 20)), &Found::default(), at(1)),
            None
        );
        assert_eq!(walk.progress(r(1, 20)), 0.6);
        let s = walk.next_slice(r(1, 20), 8);
        assert_eq!(s, r(13, 20));
        assert_eq!(
            walk.record(s, r(1, 20), Some(r(1, 20)), &Found::default(), at(2)),
            Some(PassEnd {
                range_unchanged: false
            }),
            "the range grew during the pass"
        );
        assert_eq!(walk.progress(r(1, 25)), 1.0, "until the next pass starts");
        assert_eq!(walk.next_slice(r(1, 25), 6), r(1, 6));
    }

    #[test]
    fn a_cursor_outside_the_range_restarts_and_a_new_day_forgets() {
        let mut walk = WindowWalk::default();
        assert!(walk.follow_day(day(1)));
        assert!(!walk.follow_day(day(1)));
        let s = walk.next_slice(r(1, 100), 50);
        walk.record(s, r(1, 100), Some(r(1, 100)), &missing(&[2]), at(0));
        // The frontier went back below the cursor: start at the first id.
        assert_eq!(walk.next_slice(r(1, 40), 50), r(1, 40));
        assert_eq!(walk.progress(r(1, 40)), 0.0);
        // Width 0 still reads one id; a huge width stops at the end.
        assert_eq!(walk.next_slice(r(1, 40), 0), r(1, 1));
        assert_eq!(walk.next_slice(r(51, i64::MAX), u64::MAX), r(51, i64::MAX));
        assert!(walk.follow_day(day(2)));
        assert_eq!(walk.counts(r(1, 100)).missing, 0);
        assert_eq!(walk.completed_at(), None);
        assert_eq!(walk.progress(r(1, 100)), 0.0);
    }

    #[test]
    fn span_saturates() {
        assert_eq!(span(r(5, 5)), 1);
        assert_eq!(span(r(i64::MIN, i64::MAX)), u64::MAX);
    }
}
