//! Alert -> fix routing from `remediator.routes`, and the labels each fix needs.

use dmsguard_pipeline::config::{Config, FixConfig, FixName, QualifiedName};
use dmsguard_pipeline::reload::LiveConfig;

use crate::alerts::Alert;

/// Where a firing alert goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A fix handles it; `target` is what its cooldown is counted on.
    Fix {
        fix: FixName,
        target: JobTarget,
        enabled: bool,
        dry_run: bool,
    },
    /// No route for this alert name: acknowledged and counted, nothing runs.
    Unknown,
    /// Routed, but the alert names a table, task or replication instance the config does not
    /// have: acknowledged and counted with `reason`, nothing runs.
    UnknownTarget { fix: FixName, reason: String },
}

/// What a job acts on: the labels it was given, and the key its cooldown counts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobTarget {
    pub task: Option<String>,
    pub table: Option<String>,
    pub replication_instance: Option<String>,
    /// Cooldown key: the task, table or instance, or `cluster` for the whole pipeline.
    pub key: String,
}

/// The key cooldowns of whole-pipeline fixes (maintenance) count on.
pub const CLUSTER_KEY: &str = "cluster";

impl JobTarget {
    /// Builds the target of `fix` from the given labels; `Err` names the missing one.
    pub fn for_fix(
        fix: FixName,
        task: Option<&str>,
        table: Option<&str>,
        replication_instance: Option<&str>,
    ) -> Result<Self, String> {
        let need = |value: Option<&str>, label: &str| {
            value
                .map(str::to_owned)
                .ok_or_else(|| format!("fix `{fix}` needs label `{label}`"))
        };
        // A table named as PostgreSQL allows (`Public."Subscriber Events"`) counts under its
        // canonical name, the one the exporter labels it with.
        let table = table
            .map(|t| QualifiedName::parse(t).map_or_else(|| t.to_owned(), |name| name.to_string()));
        let table = table.as_deref();
        let key = match fix {
            FixName::OneByOne | FixName::StalledTask => need(task, "task")?,
            FixName::Memory => need(replication_instance, "replication_instance")?,
            FixName::MissingRows | FixName::DivergentRows => need(table, "table")?,
            FixName::Maintenance => CLUSTER_KEY.to_owned(),
        };
        Ok(Self {
            task: task.map(str::to_owned),
            table: table.map(str::to_owned),
            replication_instance: replication_instance.map(str::to_owned),
            key,
        })
    }
}

/// Routes alerts by name to fixes, with each fix's switches, as the configuration in force
/// says (a reload changes routes and switches for the next alert).
#[derive(Clone)]
pub struct Router {
    config: LiveConfig,
}

impl Router {
    pub fn new(config: std::sync::Arc<Config>) -> Self {
        Self::live(LiveConfig::new(config))
    }

    /// A router reading `config` on each alert.
    pub fn live(config: LiveConfig) -> Self {
        Self { config }
    }

    /// The route of a firing alert; `Err` says which label its fix lacks. An alert about a
    /// table (DMSOneByOneMode) acts on the task configured for that table when it has no `task`
    /// label: the table metrics it fires on carry none.
    pub fn route(&self, alert: &Alert) -> Result<Route, String> {
        let config = self.config.current();
        let Some(&fix) = config.remediator.routes.get(&alert.alertname) else {
            return Ok(Route::Unknown);
        };
        let table = alert.label("table");
        if let Some(reason) = unknown_target(&config, fix, alert) {
            return Ok(Route::UnknownTarget { fix, reason });
        }
        let task = alert.label("task").or_else(|| {
            table
                .and_then(|t| config.table(t))
                .and_then(|t| t.task.as_deref())
        });
        let target = JobTarget::for_fix(fix, task, table, alert.label("replication_instance"))
            .map_err(|e| format!("alert `{}`: {e}", alert.alertname))?;
        let FixConfig {
            enabled, dry_run, ..
        } = *config.remediator.fixes.get(fix);
        Ok(Route::Fix {
            fix,
            target,
            enabled,
            dry_run,
        })
    }
}

/// Why `fix` cannot act on what `alert` names, if the config lacks it: the labels the fix
/// acts on must name a `[[tables]]` entry, a `[[tasks]]` entry, or the replication
/// instance of one. A job for anything else could only fail.
fn unknown_target(config: &Config, fix: FixName, alert: &Alert) -> Option<String> {
    {
        let (uses_table, uses_task, uses_instance) = match fix {
            FixName::MissingRows | FixName::DivergentRows => (true, false, false),
            FixName::OneByOne => (true, true, false),
            FixName::StalledTask => (false, true, false),
            FixName::Memory => (false, false, true),
            FixName::Maintenance => (false, false, false),
        };
        let name = &alert.alertname;
        if uses_table {
            if let Some(table) = alert.label("table") {
                if config.table(table).is_none() {
                    return Some(format!(
                        "alert `{name}` names table `{table}`, which is not in [[tables]]"
                    ));
                }
            }
        }
        if fix == FixName::OneByOne && alert.label("task").is_none() {
            if let Some(table) = alert.label("table").and_then(|t| config.table(t)) {
                if table.task.is_none() {
                    return Some(format!(
                        "alert `{name}` names table `{}`, which has no `task` in [[tables]]",
                        table.source
                    ));
                }
            }
        }
        if uses_task {
            if let Some(task) = alert.label("task") {
                if config.task(task).is_none() {
                    return Some(format!(
                        "alert `{name}` names task `{task}`, which is not in [[tasks]]"
                    ));
                }
            }
        }
        if uses_instance {
            if let Some(instance) = alert.label("replication_instance") {
                if !config
                    .tasks
                    .iter()
                    .any(|t| t.replication_instance == instance)
                {
                    return Some(format!(
                        "alert `{name}` names replication instance `{instance}`, which no [[tasks]] entry runs on"
                    ));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::AlertStatus;

    fn config(extra: &str) -> std::sync::Arc<Config> {
        let text = format!(
            "[source]\nurl = \"postgresql://u@h/s\"\n[redshift]\nurl = \"postgresql://u@h/r\"\n{extra}"
        );
        std::sync::Arc::new(Config::from_toml(&text, &|_| None).unwrap())
    }

    fn alert(name: &str, labels: &[(&str, &str)]) -> Alert {
        let mut l: std::collections::BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.insert("alertname".into(), name.into());
        Alert {
            status: AlertStatus::Firing,
            alertname: name.into(),
            labels: l,
            starts_at: chrono::Utc::now(),
            ends_at: None,
            fingerprint: "f".into(),
        }
    }

    #[test]
    fn routes_default_alerts_and_needs_labels() {
        let router = Router::new(config(
            "[[tasks]]\nname = \"t1\"\nreplication_instance = \"i1\"\n[[tables]]\nsource = \"public.orders\"\n",
        ));
        let route = router
            .route(&alert("DMSTaskStalled", &[("task", "t1")]))
            .unwrap();
        assert!(
            matches!(route, Route::Fix { fix: FixName::StalledTask, ref target, enabled: true, dry_run: false } if target.key == "t1")
        );
        let err = router
            .route(&alert("DMSInstanceMemoryLow", &[("instance", "x")]))
            .unwrap_err();
        assert!(err.contains("replication_instance"), "{err}");
        assert_eq!(
            router.route(&alert("SomethingElse", &[])).unwrap(),
            Route::Unknown
        );
        let err = router.route(&alert("DMSOneByOneMode", &[])).unwrap_err();
        assert!(err.contains("`task`"), "{err}");
        let no_task = router
            .route(&alert("DMSOneByOneMode", &[("table", "public.orders")]))
            .unwrap();
        assert!(
            matches!(no_task, Route::UnknownTarget { ref reason, .. } if reason.contains("has no `task`")),
            "{no_task:?}"
        );
        let maintenance = router
            .route(&alert("RedshiftMaintenanceImminent", &[]))
            .unwrap();
        assert!(matches!(maintenance, Route::Fix { ref target, .. } if target.key == CLUSTER_KEY));
    }

    #[test]
    fn a_table_alert_acts_on_the_table_s_task() {
        let router = Router::new(config(
            "[[tasks]]\nname = \"t1\"\nreplication_instance = \"i\"\n[[tasks]]\nname = \"t2\"\nreplication_instance = \"i\"\n\
             [[tables]]\nsource = \"public.orders\"\ntask = \"t1\"\n",
        ));
        let route = router
            .route(&alert("DMSOneByOneMode", &[("table", "public.orders")]))
            .unwrap();
        assert!(
            matches!(route, Route::Fix { fix: FixName::OneByOne, ref target, .. } if target.key == "t1" && target.table.as_deref() == Some("public.orders"))
        );
        let explicit = router
            .route(&alert(
                "DMSOneByOneMode",
                &[("table", "public.orders"), ("task", "t2")],
            ))
            .unwrap();
        assert!(matches!(explicit, Route::Fix { ref target, .. } if target.key == "t2"));
    }

    #[test]
    fn custom_routes_and_switches_apply() {
        let router = Router::new(config(
            "[[tasks]]\nname = \"t\"\nreplication_instance = \"i\"\n[remediator.routes]\nMyStall = \"stalled_task\"\n[remediator.fixes.stalled_task]\ndry_run = true\nenabled = false\n",
        ));
        let route = router.route(&alert("MyStall", &[("task", "t")])).unwrap();
        assert!(matches!(
            route,
            Route::Fix {
                enabled: false,
                dry_run: true,
                ..
            }
        ));
        assert_eq!(
            router
                .route(&alert("DMSTaskStalled", &[("task", "t")]))
                .unwrap(),
            Route::Unknown
        );
    }

    #[test]
    fn alerts_naming_nothing_configured_are_unknown_targets() {
        let router = Router::new(config(
            "[[tasks]]\nname = \"t1\"\nreplication_instance = \"i1\"\n\
             [[tables]]\nsource = 'public.\"Subscriber Events\"'\ntask = \"t1\"\n",
        ));
        for (name, labels, needle) in [
            ("DMSTaskStalled", vec![("task", "t9")], "task `t9`"),
            (
                "DMSOneByOneMode",
                vec![("table", "public.nope")],
                "table `public.nope`",
            ),
            (
                "DMSOneByOneMode",
                vec![("table", "public.\"Subscriber Events\""), ("task", "t9")],
                "task `t9`",
            ),
            (
                "RedshiftMissingRows",
                vec![
                    ("table", "public.subscriber_events"),
                    ("window", "yesterday"),
                ],
                "table `public.subscriber_events`",
            ),
            (
                "DMSInstanceMemoryLow",
                vec![("replication_instance", "i9")],
                "replication instance `i9`",
            ),
        ] {
            match router.route(&alert(name, &labels)).unwrap() {
                Route::UnknownTarget { reason, .. } => {
                    assert!(reason.contains(needle), "{name}: {reason}");
                    assert!(reason.contains(name), "{name}: {reason}");
                }
                other => panic!("{name} {labels:?}: {other:?}"),
            }
        }
        // Configured names route, a quoted table however it is written.
        let route = router
            .route(&alert(
                "RedshiftMissingRows",
                &[
                    ("table", "PUBLIC.\"Subscriber Events\""),
                    ("window", "yesterday"),
                ],
            ))
            .unwrap();
        assert!(
            matches!(route, Route::Fix { fix: FixName::MissingRows, ref target, .. } if target.key == "public.\"Subscriber Events\""),
            "{route:?}"
        );
        let route = router
            .route(&alert(
                "DMSInstanceMemoryLow",
                &[("replication_instance", "i1")],
            ))
            .unwrap();
        assert!(
            matches!(
                route,
                Route::Fix {
                    fix: FixName::Memory,
                    ..
                }
            ),
            "{route:?}"
        );
    }
}
