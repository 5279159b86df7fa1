//! Progress of long repairs: a bar on a terminal, plain log lines everywhere else.
//!
//! A fix reports rows as it goes; the sink decides how to show them. The service and non-terminal
//! CLI runs log one line per batch with the rate and the time left; a CLI run on a terminal draws
//! an `indicatif` bar on stderr instead.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where a fix reports how far a row-by-row repair has got.
pub trait Progress: Send + Sync {
    /// A repair of `total` rows starts; `what` names it ("Inserting missing rows of public.orders").
    fn start(&self, what: &str, total: u64);
    /// `done` rows of `total` are handled so far, `inserted` of them written.
    fn update(&self, done: u64, inserted: u64);
    /// The repair ended; `summary` says how.
    fn finish(&self, summary: &str);
}

/// Rows per second and the time left, from `done` rows in `elapsed`.
pub fn rate_and_eta(elapsed: Duration, done: u64, total: u64) -> (f64, Option<Duration>) {
    let secs = elapsed.as_secs_f64();
    if done == 0 || secs <= 0.0 {
        return (0.0, None);
    }
    let rate = done as f64 / secs;
    let left = total.saturating_sub(done) as f64 / rate;
    (rate, Some(Duration::from_secs_f64(left)))
}

#[derive(Default)]
struct LogState {
    what: String,
    total: u64,
    started: Option<Instant>,
}

/// Logs one structured line per update (service and non-terminal CLI runs).
#[derive(Default)]
pub struct LogProgress {
    state: Mutex<LogState>,
}

impl Progress for LogProgress {
    fn start(&self, what: &str, total: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *state = LogState {
            what: what.to_owned(),
            total,
            started: Some(Instant::now()),
        };
        tracing::info!(what, found = total, "Repair started.");
    }

    fn update(&self, done: u64, inserted: u64) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = state.started.map(|s| s.elapsed()).unwrap_or_default();
        let (rate, eta) = rate_and_eta(elapsed, done, state.total);
        tracing::info!(
            what = %state.what,
            found = state.total,
            done,
            inserted,
            rows_per_second = format!("{rate:.0}"),
            eta_seconds = eta.map(|d| d.as_secs()),
            "Repair progress."
        );
    }

    fn finish(&self, summary: &str) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        tracing::info!(what = %state.what, summary, "Repair finished.");
    }
}

/// Draws a progress bar on stderr (CLI runs on a terminal).
pub struct TerminalProgress {
    bar: indicatif::ProgressBar,
}

impl Default for TerminalProgress {
    fn default() -> Self {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(0),
            indicatif::ProgressDrawTarget::stderr(),
        );
        let style = indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} rows, {msg}, {per_sec}, ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        Self { bar }
    }
}

impl Progress for TerminalProgress {
    fn start(&self, what: &str, total: u64) {
        self.bar.set_prefix(what.to_owned());
        self.bar.set_length(total);
        self.bar.set_position(0);
        self.bar.reset_eta();
        self.bar.set_message("0 inserted");
    }

    fn update(&self, done: u64, inserted: u64) {
        self.bar.set_position(done);
        self.bar.set_message(format!("{inserted} inserted"));
    }

    fn finish(&self, summary: &str) {
        self.bar.finish_with_message(summary.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_follows_the_rate() {
        let (rate, eta) = rate_and_eta(Duration::from_secs(10), 100, 300);
        assert_eq!(rate, 10.0);
        assert_eq!(eta, Some(Duration::from_secs(20)));
        let (rate, eta) = rate_and_eta(Duration::from_millis(250), 50, 50);
        assert_eq!((rate, eta), (200.0, Some(Duration::ZERO)));
        assert_eq!(rate_and_eta(Duration::from_secs(3), 0, 10), (0.0, None));
        assert_eq!(rate_and_eta(Duration::ZERO, 5, 10), (0.0, None));
    }
}
