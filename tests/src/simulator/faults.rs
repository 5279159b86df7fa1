//! Faults the simulator can inject, and how they are written on the command line.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A fault to inject. See `tests/SIMULATOR.md` for each one's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Healthy replication.
    #[default]
    None,
    /// Every `every`-th captured insert never reaches the target (F4). Lasts while set.
    DropRows { every: u32 },
    /// The next captured insert is dropped and the workload keeps updating that row, so every
    /// batch's bulk UPDATE touches one row too few and the task stays in one-by-one mode (F1)
    /// until the row exists in the target.
    MissingThenUpdate,
    /// Instance memory falls by `bytes_per_second` for each running task; stopping and
    /// resuming a task gives its memory back (F2). Lasts while set.
    MemoryLeak { bytes_per_second: u64 },
    /// Every `every`-th captured UPDATE never reaches the target, silently: the target row
    /// keeps its old values (a divergent row). Lasts while set; a later UPDATE of the same row
    /// applies again (and heals it, since DMS's UPDATE sets every column).
    SkipUpdate { every: u32 },
    /// Every `every`-th captured DELETE never reaches the target, silently: the row stays in
    /// the target although the source no longer has it (an extra id). Lasts while set.
    SkipDelete { every: u32 },
    /// Every running task stops applying while staying `running` in DMS, until it is stopped
    /// and resumed (F5). Latched when set.
    Stall,
    /// The target refuses connections for `seconds`; apply retries; afterwards every running
    /// task silently stops applying until it is stopped and resumed (F3). Runs once when set.
    RedshiftRestart { seconds: u32 },
}

/// Default `every` of `drop_rows`.
pub const DEFAULT_DROP_EVERY: u32 = 50;
/// Default `every` of `skip_update` and `skip_delete`.
pub const DEFAULT_SKIP_EVERY: u32 = 20;
/// Default leak of `memory_leak`: 64 MiB/s.
pub const DEFAULT_LEAK_BYTES_PER_SECOND: u64 = 64 << 20;
/// Default outage of `redshift_restart`.
pub const DEFAULT_RESTART_SECONDS: u32 = 10;

impl Fault {
    /// The fault's name as written on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::DropRows { .. } => "drop_rows",
            Fault::MissingThenUpdate => "missing_then_update",
            Fault::SkipUpdate { .. } => "skip_update",
            Fault::SkipDelete { .. } => "skip_delete",
            Fault::MemoryLeak { .. } => "memory_leak",
            Fault::Stall => "stall",
            Fault::RedshiftRestart { .. } => "redshift_restart",
        }
    }

    /// How long the target stays down, for `redshift_restart`.
    pub fn outage(&self) -> Option<Duration> {
        match self {
            Fault::RedshiftRestart { seconds } => Some(Duration::from_secs(u64::from(*seconds))),
            _ => None,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::DropRows { every } => write!(f, "drop_rows:{every}"),
            Fault::SkipUpdate { every } => write!(f, "skip_update:{every}"),
            Fault::SkipDelete { every } => write!(f, "skip_delete:{every}"),
            Fault::MemoryLeak { bytes_per_second } => write!(f, "memory_leak:{bytes_per_second}"),
            Fault::RedshiftRestart { seconds } => write!(f, "redshift_restart:{seconds}"),
            other => f.write_str(other.name()),
        }
    }
}

/// A fault specification that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultParseError {
    #[error("unknown fault `{0}` (known: none, drop_rows[:N], missing_then_update, skip_update[:N], skip_delete[:N], memory_leak[:BYTES_PER_S], stall, redshift_restart[:SECONDS])")]
    Unknown(String),
    #[error("fault `{name}`: `{value}` is not a positive whole number")]
    BadArgument { name: String, value: String },
    #[error("fault `{0}` takes no argument")]
    UnexpectedArgument(String),
}

impl FromStr for Fault {
    type Err = FaultParseError;

    /// `name` or `name:N`, e.g. `drop_rows:10`, `redshift_restart:20`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n.trim(), Some(a.trim())),
            None => (s, None),
        };
        let number = |default: u64| -> Result<u64, FaultParseError> {
            match arg {
                None => Ok(default),
                Some(v) => v.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    FaultParseError::BadArgument {
                        name: name.to_owned(),
                        value: v.to_owned(),
                    }
                }),
            }
        };
        let no_arg = |fault: Fault| match arg {
            None => Ok(fault),
            Some(_) => Err(FaultParseError::UnexpectedArgument(name.to_owned())),
        };
        let narrow = |n: u64| -> Result<u32, FaultParseError> {
            u32::try_from(n).map_err(|_| FaultParseError::BadArgument {
                name: name.to_owned(),
                value: n.to_string(),
            })
        };
        match name {
            "none" | "" => no_arg(Fault::None),
            "drop_rows" => Ok(Fault::DropRows {
                every: narrow(number(u64::from(DEFAULT_DROP_EVERY))?)?,
            }),
            "missing_then_update" => no_arg(Fault::MissingThenUpdate),
            "skip_update" => Ok(Fault::SkipUpdate {
                every: narrow(number(u64::from(DEFAULT_SKIP_EVERY))?)?,
            }),
            "skip_delete" => Ok(Fault::SkipDelete {
                every: narrow(number(u64::from(DEFAULT_SKIP_EVERY))?)?,
            }),
            "memory_leak" => Ok(Fault::MemoryLeak {
                bytes_per_second: number(DEFAULT_LEAK_BYTES_PER_SECOND)?,
            }),
            "stall" => no_arg(Fault::Stall),
            "redshift_restart" => Ok(Fault::RedshiftRestart {
                seconds: narrow(number(u64::from(DEFAULT_RESTART_SECONDS))?)?,
            }),
            other => Err(FaultParseError::Unknown(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_arguments() {
        assert_eq!("none".parse::<Fault>().unwrap(), Fault::None);
        assert_eq!(
            "drop_rows".parse::<Fault>().unwrap(),
            Fault::DropRows {
                every: DEFAULT_DROP_EVERY
            }
        );
        assert_eq!(
            " drop_rows:7\n".parse::<Fault>().unwrap(),
            Fault::DropRows { every: 7 }
        );
        assert_eq!(
            "redshift_restart:3".parse::<Fault>().unwrap(),
            Fault::RedshiftRestart { seconds: 3 }
        );
        assert_eq!("stall".parse::<Fault>().unwrap(), Fault::Stall);
        assert_eq!(
            "skip_update".parse::<Fault>().unwrap(),
            Fault::SkipUpdate {
                every: DEFAULT_SKIP_EVERY
            }
        );
        assert_eq!(
            "skip_delete:3".parse::<Fault>().unwrap(),
            Fault::SkipDelete { every: 3 }
        );
        assert!(matches!(
            "skip_delete:0".parse::<Fault>(),
            Err(FaultParseError::BadArgument { .. })
        ));
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        assert!(matches!(
            "explode".parse::<Fault>(),
            Err(FaultParseError::Unknown(_))
        ));
        assert!(matches!(
            "drop_rows:0".parse::<Fault>(),
            Err(FaultParseError::BadArgument { .. })
        ));
        assert!(matches!(
            "stall:3".parse::<Fault>(),
            Err(FaultParseError::UnexpectedArgument(_))
        ));
    }

    #[test]
    fn display_round_trips() {
        for f in [
            Fault::None,
            Fault::DropRows { every: 3 },
            Fault::MissingThenUpdate,
            Fault::SkipUpdate { every: 1 },
            Fault::SkipDelete { every: 9 },
            Fault::MemoryLeak {
                bytes_per_second: 10,
            },
            Fault::Stall,
            Fault::RedshiftRestart { seconds: 4 },
        ] {
            assert_eq!(f.to_string().parse::<Fault>().unwrap(), f);
        }
    }
}
