//! When a difference counts: seen in two comparisons separated by more than the replication
//! latency, so a change still on its way to the target is never reported.
//!
//! A comparison sees each row at some instant between its start and its end. A difference first
//! seen by a comparison that finished at `t0` and still seen by one that started at `t1` with
//! `t1 - t0 > latency` has outlived every change committed before `t1 - latency`, so it is no
//! change in flight (unless the row was changed again meanwhile, which is indistinguishable
//! without an `updated_at` column). Pure: time is passed in, never read from the clock.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::ContentReport;
use crate::gap_finder::IdRange;

/// What kind of difference an id shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DifferenceKind {
    /// On both sides with different content.
    Divergent,
    /// In the target only.
    Extra,
    /// In the source only.
    Missing,
}

/// The differences that count after one observation, ascending.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confirmed {
    pub divergent_ids: Vec<i64>,
    pub extra_ids: Vec<i64>,
    pub missing_ids: Vec<i64>,
}

impl Confirmed {
    pub fn is_empty(&self) -> bool {
        self.divergent_ids.is_empty() && self.extra_ids.is_empty() && self.missing_ids.is_empty()
    }
}

/// Tracks the differences of one table across comparisons (which may each cover a slice).
#[derive(Debug, Clone, Default)]
pub struct Persistence {
    /// Per id: its kind and when the comparison that first saw it (continuously since) finished.
    seen: BTreeMap<i64, (DifferenceKind, DateTime<Utc>)>,
}

impl Persistence {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a comparison of `report.range` that ran from `started` to `finished`, while the
    /// replication latency was `latency`, and returns the differences that count now: those
    /// first seen (with the same kind) by a comparison that finished more than `latency`
    /// before `started`. Differences of the range no longer seen are forgotten; ids outside it
    /// keep their state.
    pub fn observe(
        &mut self,
        report: &ContentReport,
        started: DateTime<Utc>,
        finished: DateTime<Utc>,
        latency: Duration,
    ) -> Confirmed {
        let latency = chrono::Duration::from_std(latency).unwrap_or(chrono::Duration::MAX);
        let range: IdRange = report.range;
        let mut now: BTreeMap<i64, DifferenceKind> = BTreeMap::new();
        for (ids, kind) in [
            (&report.divergent_ids, DifferenceKind::Divergent),
            (&report.extra_ids, DifferenceKind::Extra),
            (&report.missing_ids, DifferenceKind::Missing),
        ] {
            for &id in ids {
                now.insert(id, kind);
            }
        }
        // Forget what this range no longer shows (or shows as another kind).
        let stale: Vec<i64> = self
            .seen
            .range(range.lo..=range.hi)
            .filter(|(id, (kind, _))| now.get(id) != Some(kind))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.seen.remove(&id);
        }
        let mut confirmed = Confirmed::default();
        for (id, kind) in now {
            let first = self.seen.entry(id).or_insert((kind, finished)).1;
            // `started - first > latency`, without overflow for far-apart instants.
            if first < started && started.signed_duration_since(first) > latency {
                match kind {
                    DifferenceKind::Divergent => confirmed.divergent_ids.push(id),
                    DifferenceKind::Extra => confirmed.extra_ids.push(id),
                    DifferenceKind::Missing => confirmed.missing_ids.push(id),
                }
            }
        }
        confirmed
    }

    /// Differences tracked (seen and not yet gone).
    pub fn tracked(&self) -> usize {
        self.seen.len()
    }

    /// Forgets an id (after it was repaired).
    pub fn forget(&mut self, id: i64) {
        self.seen.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn report(
        range: (i64, i64),
        divergent: &[i64],
        extra: &[i64],
        missing: &[i64],
    ) -> ContentReport {
        ContentReport {
            range: IdRange::new(range.0, range.1).unwrap(),
            divergent_ids: divergent.to_vec(),
            extra_ids: extra.to_vec(),
            missing_ids: missing.to_vec(),
            ..ContentReport::default()
        }
    }

    const LATENCY: Duration = Duration::from_secs(60);

    #[test]
    fn a_difference_counts_only_when_seen_again_after_the_latency() {
        let mut p = Persistence::new();
        let r = report((1, 100), &[5], &[7], &[9]);
        assert!(p.observe(&r, at(0), at(10), LATENCY).is_empty());
        // Started 60 s after the first finished: not more than the latency.
        assert!(p.observe(&r, at(70), at(80), LATENCY).is_empty());
        let c = p.observe(&r, at(71), at(80), LATENCY);
        assert_eq!(c.divergent_ids, vec![5]);
        assert_eq!(c.extra_ids, vec![7]);
        assert_eq!(c.missing_ids, vec![9]);
    }

    #[test]
    fn a_difference_that_goes_away_starts_over() {
        let mut p = Persistence::new();
        p.observe(&report((1, 100), &[5], &[], &[]), at(0), at(1), LATENCY);
        p.observe(&report((1, 100), &[], &[], &[]), at(30), at(31), LATENCY);
        assert_eq!(p.tracked(), 0);
        let c = p.observe(&report((1, 100), &[5], &[], &[]), at(100), at(101), LATENCY);
        assert!(c.is_empty(), "seen again, but only once since it went away");
        let c = p.observe(&report((1, 100), &[5], &[], &[]), at(200), at(201), LATENCY);
        assert_eq!(c.divergent_ids, vec![5]);
    }

    #[test]
    fn a_changed_kind_starts_over_and_other_slices_keep_their_state() {
        let mut p = Persistence::new();
        p.observe(&report((1, 100), &[5], &[], &[]), at(0), at(1), LATENCY);
        p.observe(&report((101, 200), &[150], &[], &[]), at(0), at(1), LATENCY);
        // Row 5 was deleted at the source meanwhile: now extra, a new difference.
        let c = p.observe(&report((1, 100), &[], &[5], &[]), at(100), at(101), LATENCY);
        assert!(c.is_empty());
        // The other slice, compared later, still remembers 150.
        let c = p.observe(
            &report((101, 200), &[150], &[], &[]),
            at(100),
            at(101),
            LATENCY,
        );
        assert_eq!(c.divergent_ids, vec![150]);
        let c = p.observe(&report((1, 100), &[], &[5], &[]), at(200), at(201), LATENCY);
        assert_eq!(c.extra_ids, vec![5]);
    }

    #[test]
    fn a_longer_latency_needs_a_longer_separation() {
        let mut p = Persistence::new();
        let r = report((1, 10), &[3], &[], &[]);
        p.observe(&r, at(0), at(5), LATENCY);
        assert!(p
            .observe(&r, at(100), at(105), Duration::from_secs(600))
            .is_empty());
        assert_eq!(
            p.observe(&r, at(606), at(610), Duration::from_secs(600))
                .divergent_ids,
            vec![3]
        );
        p.forget(3);
        assert_eq!(p.tracked(), 0);
    }
}
