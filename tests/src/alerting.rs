//! Lab copies of the real alerting files on disk, for the demo and `dmsguard-lab alerting`:
//! `alerts/dmsguard.rules.yml` with every duration divided by a speed-up factor, and
//! `alerts/alertmanager.example.yml` with its timers divided the same way and its receivers
//! pointed at a lab remediator. The rewriting itself is [`crate::stack`]'s, shared with the
//! chain tests, so the tests and the demo shorten time the same way.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::stack::{alertmanager_for_test, rules_for_test, AlertmanagerTiming};

/// Where the lab Alertmanager delivers.
#[derive(Debug, Clone)]
pub struct Receivers {
    /// The remediator's webhook, e.g. `http://127.0.0.1:9855/alerts`.
    pub remediator_url: String,
    /// File holding the remediator's bearer token.
    pub token_file: PathBuf,
    /// Where the other receivers' webhooks go (any URL; failed deliveries are only logged).
    pub oncall_url: String,
}

/// The example config's remediator-route timing (10 s, 1 m, 30 m) divided by `speedup`.
pub fn timing(speedup: u32) -> AlertmanagerTiming {
    let s = speedup.max(1);
    AlertmanagerTiming {
        group_wait: Duration::from_secs(10) / s,
        group_interval: Duration::from_secs(60) / s,
        repeat_interval: Duration::from_secs(1800) / s,
    }
}

/// The example Alertmanager config for the lab: receivers pointed at `receivers`, timers
/// divided by `speedup`; routes, grouping and authorization unchanged.
pub fn lab_alertmanager(
    example: &str,
    receivers: &Receivers,
    speedup: u32,
) -> anyhow::Result<String> {
    alertmanager_for_test(
        example,
        &receivers.remediator_url,
        &receivers.token_file,
        &receivers.oncall_url,
        timing(speedup),
    )
}

/// Writes `dmsguard.rules.yml` and `alertmanager.yml` for the lab into `dir`, from the repo's
/// `alerts/` directory; returns their paths.
pub fn write_lab_alerting(
    alerts_dir: &Path,
    dir: &Path,
    receivers: &Receivers,
    speedup: u32,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let read = |name: &str| {
        let path = alerts_dir.join(name);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        anyhow::Ok(path)
    };
    let rules = rules_for_test(&read("dmsguard.rules.yml")?, speedup)?;
    let am = lab_alertmanager(&read("alertmanager.example.yml")?, receivers, speedup)?;
    Ok((
        write("dmsguard.rules.yml", rules)?,
        write("alertmanager.yml", am)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_divides_the_remediator_route_timers() {
        let t = timing(20);
        assert_eq!(t.group_wait, Duration::from_millis(500));
        assert_eq!(t.group_interval, Duration::from_secs(3));
        assert_eq!(t.repeat_interval, Duration::from_secs(90));
        assert_eq!(timing(0), timing(1));
    }
}
