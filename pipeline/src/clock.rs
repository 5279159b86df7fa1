//! The calendar dmsguard computes day windows (`today`, `yesterday`) with: the system clock,
//! or one that starts at a configured instant and runs at real speed, so that tests and demos
//! never straddle a UTC midnight.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;

/// `[clock]`: for tests and demos only; leave it out in production.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockConfig {
    /// Day windows are computed as if the clock had shown this instant (RFC 3339) when the
    /// process started, and advanced in real time since. Replication progress and every AWS
    /// call still use the real clock.
    pub start: Option<DateTime<Utc>>,
}

/// A calendar clock: the system's, or one shifted by a fixed offset.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock {
    offset: chrono::Duration,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock that shows `start` now and runs at real speed.
    pub fn starting_at(start: DateTime<Utc>) -> Self {
        Self {
            offset: start - Utc::now(),
        }
    }

    /// The clock `[clock]` asks for.
    pub fn from_config(config: &ClockConfig) -> Self {
        config.start.map_or_else(Self::system, Self::starting_at)
    }

    /// The calendar's current instant.
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.offset
    }

    /// The calendar's current UTC day.
    pub fn today(&self) -> NaiveDate {
        self.now().date_naive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_clock_shows_its_day_whatever_the_system_day() {
        let start: DateTime<Utc> = "2031-02-28T12:00:00Z".parse().expect("an instant");
        let clock = Clock::from_config(&ClockConfig { start: Some(start) });
        assert_eq!(clock.today(), start.date_naive());
        assert!(clock.now() >= start);
    }

    #[test]
    fn without_start_it_is_the_system_clock() {
        let clock = Clock::from_config(&ClockConfig::default());
        let before = Utc::now();
        let now = clock.now();
        assert!(now >= before && now <= Utc::now());
    }
}
