//! A read replica of the source (`[source.replica]`): how far its replay has come, and how that
//! bounds replication progress.
//!
//! Reads from a replica see the primary as it was at the replica's replay point. Rows DMS
//! already replicated but the replica has not replayed yet look EXTRA in Redshift, and a row
//! committed after the replay point is not seen at all: a missing row the replica lacks is not
//! found until it replays. So a source read is judged only once both DMS (its task's progress)
//! and the replica have passed the instant it was made plus `[frontier] margin`: the progress the
//! frontier uses is the earlier of the two ([`bound_progress`]).
//!
//! The replay point follows Amazon RDS's own definition of `ReplicaLag` for RDS for PostgreSQL
//! ("Monitoring and tuning the replication process",
//! <https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/USER_PostgreSQL.Replication.ReadReplicas.Monitor.html>:
//! `now() - pg_last_xact_replay_timestamp()`), except that a replica that has replayed all it
//! received (`pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()`) counts as caught up: on an
//! idle primary the last replayed commit grows old though nothing is missing. A server not in
//! recovery (the primary itself, or any server that is not a standby) sees every commit: lag 0.
//! For Aurora PostgreSQL readers AWS documents `aurora_replica_status()` and the CloudWatch
//! `AuroraReplicaLag` metric instead
//! (<https://docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/aurora_replica_status.html>);
//! the AWS documentation does not say whether `pg_last_xact_replay_timestamp()` answers on an
//! Aurora reader: when it returns NULL there, the replay point is unknown and no read is judged.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

/// The replay state query: in recovery, the server's clock, the last replayed commit, whether
/// everything received is replayed.
pub const REPLAY_SQL: &str = "SELECT pg_is_in_recovery(), now(), \
     pg_last_xact_replay_timestamp(), \
     coalesce(pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn(), false)";

/// Why the replay point is not known.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("reading the source replica's replay point: {0}")]
    Query(String),
    #[error(
        "the source replica is in recovery but reports no replayed transaction \
         (pg_last_xact_replay_timestamp() is NULL): its replay point is unknown"
    )]
    Unknown,
}

/// How far a replica has replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayState {
    /// Whether the server is a standby.
    pub in_recovery: bool,
    /// How far behind the primary it is (0 when caught up or not a standby).
    pub lag: Duration,
    /// Every commit of the primary before this instant is visible on the replica.
    pub replayed_until: DateTime<Utc>,
}

impl ReplayState {
    /// The state from the query's answers (see the module docs).
    pub fn from_parts(
        now: DateTime<Utc>,
        in_recovery: bool,
        last_replay: Option<DateTime<Utc>>,
        caught_up: bool,
    ) -> Result<Self, ReplicaError> {
        if !in_recovery || caught_up {
            return Ok(Self {
                in_recovery,
                lag: Duration::ZERO,
                replayed_until: now,
            });
        }
        let replayed = last_replay.ok_or(ReplicaError::Unknown)?;
        let replayed_until = replayed.min(now);
        Ok(Self {
            in_recovery,
            lag: (now - replayed_until).to_std().unwrap_or(Duration::ZERO),
            replayed_until,
        })
    }

    /// The replay point as of `now` on this machine: `now - lag` (the replica's and this
    /// machine's clocks need not agree; the lag is a difference on one clock).
    pub fn replayed_as_of(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - chrono::Duration::from_std(self.lag).unwrap_or(chrono::Duration::MAX)
    }
}

/// Reads the replay state of the replica `client` is connected to.
pub async fn replay_state(client: &Client) -> Result<ReplayState, ReplicaError> {
    let row = client
        .query_one(REPLAY_SQL, &[])
        .await
        .map_err(|e| ReplicaError::Query(crate::db::error_chain(&e)))?;
    ReplayState::from_parts(row.get(1), row.get(0), row.get(2), row.get(3))
}

/// The progress a source read may be judged against: the earlier of the task's progress and
/// the replica's replay point (no replica: the task's progress).
pub fn bound_progress(progress: DateTime<Utc>, replica: Option<DateTime<Utc>>) -> DateTime<Utc> {
    replica.map_or(progress, |replayed| progress.min(replayed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + s, 0).expect("a valid instant")
    }

    #[test]
    fn a_lagging_replica_is_behind_by_its_last_replayed_commit() {
        let s = ReplayState::from_parts(at(100), true, Some(at(70)), false).unwrap();
        assert_eq!(s.lag, Duration::from_secs(30));
        assert_eq!(s.replayed_until, at(70));
        assert_eq!(s.replayed_as_of(at(500)), at(470));
    }

    #[test]
    fn caught_up_or_not_a_standby_means_no_lag() {
        for (in_recovery, caught_up) in [(false, false), (true, true)] {
            let s = ReplayState::from_parts(at(100), in_recovery, Some(at(10)), caught_up).unwrap();
            assert_eq!(s.lag, Duration::ZERO, "{in_recovery} {caught_up}");
            assert_eq!(s.replayed_until, at(100));
        }
        // A commit timestamp ahead of the replica's clock (clock skew) is no negative lag.
        let s = ReplayState::from_parts(at(100), true, Some(at(105)), false).unwrap();
        assert_eq!(s.lag, Duration::ZERO);
    }

    #[test]
    fn an_unknown_replay_point_is_an_error() {
        assert!(matches!(
            ReplayState::from_parts(at(100), true, None, false),
            Err(ReplicaError::Unknown)
        ));
    }

    #[test]
    fn progress_is_bounded_by_the_replica() {
        // DMS has applied up to 90, the replica replayed up to 60: a read at 50 with a margin
        // of 5 is settled (55 <= 60); a read at 58 is not, though DMS is past it.
        let c = crate::frontier::FrontierConfig {
            margin: Duration::from_secs(5),
            ..Default::default()
        };
        let progress = bound_progress(at(90), Some(at(60)));
        assert_eq!(progress, at(60));
        assert!(c.settled(at(50), progress));
        assert!(!c.settled(at(58), progress));
        assert!(c.settled(at(58), at(90)), "without the replica it would be");
        assert_eq!(bound_progress(at(90), None), at(90));
        assert_eq!(bound_progress(at(40), Some(at(60))), at(40));
    }
}
