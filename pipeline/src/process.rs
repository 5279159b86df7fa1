//! The metrics every Prometheus exporter has besides its own: `dmsguard_build_info` and the
//! standard `process_*` family, read from Linux `/proc` on each scrape with the names and
//! meanings of the Prometheus client libraries' process collector
//! (<https://prometheus.io/docs/instrumenting/writing_clientlibs/#process-metrics>).
//!
//! Both binaries append these to `/metrics` through [`crate::service::metrics_response`].

use std::sync::OnceLock;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

/// `dmsguard_build_info{version, revision}`, always 1.
pub const BUILD_INFO: &str = "dmsguard_build_info";
/// Total user and system CPU time spent, in seconds.
pub const PROCESS_CPU_SECONDS: &str = "process_cpu_seconds";
/// Resident memory size in bytes.
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "process_resident_memory_bytes";
/// Virtual memory size in bytes.
pub const PROCESS_VIRTUAL_MEMORY_BYTES: &str = "process_virtual_memory_bytes";
/// Open file descriptors.
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
/// The soft limit on open file descriptors.
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
/// Start time of the process since the Unix epoch, in seconds.
pub const PROCESS_START_TIME_SECONDS: &str = "process_start_time_seconds";
/// Threads of the process.
pub const PROCESS_THREADS: &str = "process_threads";

/// The version of the workspace this binary was built from.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit the binary was built from: `DMSGUARD_REVISION` at build time (`make dist` sets
/// it from git), else `unknown`.
pub fn revision() -> &'static str {
    option_env!("DMSGUARD_REVISION")
        .filter(|r| !r.is_empty())
        .unwrap_or("unknown")
}

/// Linux reports CPU times in clock ticks of `USER_HZ`, which is 100 on every architecture
/// the kernel's user ABI fixes it for (the Prometheus Go procfs library assumes the same).
const USER_HZ: f64 = 100.0;

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct BuildLabels {
    version: String,
    revision: String,
}

/// The registry of these metrics (unprefixed: `process_*` names are standard), built once.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut registry = Registry::default();
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: VERSION.to_owned(),
                revision: revision().to_owned(),
            })
            .set(1);
        registry.register(
            BUILD_INFO,
            "The version and source revision dmsguard was built from (always 1).",
            build,
        );
        registry.register_collector(Box::new(ProcessCollector));
        registry
    })
}

/// What `/proc/self` says about this process; `None` fields could not be read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
    pub threads: Option<u64>,
}

impl ProcessStats {
    /// Reads `/proc/self/stat`, `/proc/self/status`, `/proc/self/fd`, `/proc/self/limits` and
    /// the boot time in `/proc/stat` (proc(5)).
    pub fn read() -> Self {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let status = std::fs::read_to_string("/proc/self/status").ok();
        let limits = std::fs::read_to_string("/proc/self/limits").ok();
        let boot = std::fs::read_to_string("/proc/stat").ok();
        let mut stats = Self {
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|dir| dir.count() as u64),
            max_fds: limits.as_deref().and_then(max_open_files),
            ..Self::default()
        };
        if let Some(status) = &status {
            stats.resident_bytes = status_kib(status, "VmRSS:").map(|k| k * 1024);
            stats.virtual_bytes = status_kib(status, "VmSize:").map(|k| k * 1024);
            stats.threads = status_kib(status, "Threads:");
        }
        if let Some(fields) = stat.as_deref().and_then(stat_fields) {
            // Fields after the command, numbered as in proc(5) from 3 (state) on.
            let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
            if let (Some(utime), Some(stime)) = (field(14), field(15)) {
                stats.cpu_seconds = Some((utime + stime) as f64 / USER_HZ);
            }
            let btime = boot.as_deref().and_then(|b| {
                b.lines()
                    .find_map(|l| l.strip_prefix("btime "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            });
            if let (Some(start), Some(btime)) = (field(22), btime) {
                stats.start_time_seconds = Some(btime as f64 + start as f64 / USER_HZ);
            }
        }
        stats
    }
}

/// The fields of `/proc/self/stat` after `(comm)`, which may itself hold spaces and parens.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().collect())
}

/// The number after `key` in `/proc/self/status` (`VmRSS:   1234 kB`).
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The soft limit of `Max open files` in `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Reads `/proc` on each scrape.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = ProcessStats::read();
        if let Some(cpu) = stats.cpu_seconds {
            let metric = ConstCounter::new(cpu);
            metric.encode(encoder.encode_descriptor(
                PROCESS_CPU_SECONDS,
                "Total user and system CPU time spent in seconds.",
                None,
                metric.metric_type(),
            )?)?;
        }
        let gauges: [(&str, &str, Option<f64>); 6] = [
            (
                PROCESS_RESIDENT_MEMORY_BYTES,
                "Resident memory size in bytes.",
                stats.resident_bytes.map(|v| v as f64),
            ),
            (
                PROCESS_VIRTUAL_MEMORY_BYTES,
                "Virtual memory size in bytes.",
                stats.virtual_bytes.map(|v| v as f64),
            ),
            (
                PROCESS_OPEN_FDS,
                "Number of open file descriptors.",
                stats.open_fds.map(|v| v as f64),
            ),
            (
                PROCESS_MAX_FDS,
                "Maximum number of open file descriptors.",
                stats.max_fds.map(|v| v as f64),
            ),
            (
                PROCESS_START_TIME_SECONDS,
                "Start time of the process since unix epoch in seconds.",
                stats.start_time_seconds,
            ),
            (
                PROCESS_THREADS,
                "Number of OS threads in the process.",
                stats.threads.map(|v| v as f64),
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let metric = ConstGauge::new(value);
                metric.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    metric.metric_type(),
                )?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_a_command_with_spaces_and_parens() {
        let stat =
            "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 12345 1000 10";
        let fields = stat_fields(stat).unwrap();
        assert_eq!(fields[0], "S");
        assert_eq!(fields[14 - 3], "250");
        assert_eq!(fields[22 - 3], "12345");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_measured() {
        let stats = ProcessStats::read();
        assert!(stats.resident_bytes.unwrap() > 0);
        assert!(stats.open_fds.unwrap() >= 3);
        assert!(stats.max_fds.unwrap() >= stats.open_fds.unwrap());
        assert!(stats.threads.unwrap() >= 1);
        assert!(stats.cpu_seconds.unwrap() >= 0.0);
        // Started after 2020 and not in the future of the boot clock's idea of now.
        assert!(stats.start_time_seconds.unwrap() > 1_577_836_800.0);
    }
}
