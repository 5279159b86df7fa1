//! The alerting artifacts checked with their real consumers: promtool runs the rules and their
//! unit tests, amtool checks and routes the example Alertmanager config, a real Alertmanager
//! delivers to a webhook with the bearer token, and the rules and dashboard name only metrics
//! the exporter and remediator export.

use dmsguard_lab::dashboard::{
    all_panels, dashboard_queries, expand_grafana_variables, grafana_variables,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::routing::post;
use dmsguard_lab::alerting::{lab_alertmanager, write_lab_alerting, Receivers};
use dmsguard_lab::harness::{eventually, Alertmanager, Prometheus};
use promql_parser::parser::Expr;
use promql_parser::util::{walk_expr, ExprVisitor};
use serde_json::Value as Json;
use serde_norway::Value as Yaml;
use tokio::sync::Mutex;

/// Every metric the exporter and the remediator export (the shared metrics contract). Rules and
/// dashboard queries may name these, the histograms' series below and recording rules only.
const EXPORTED_METRICS: &[&str] = &[
    // Exporter.
    "dmsguard_redshift_dms_statements_total",
    "dmsguard_redshift_dms_rolled_back_updates_total",
    "dmsguard_redshift_apply_exceptions_total",
    "dmsguard_dms_instance_freeable_memory_bytes",
    "dmsguard_dms_instance_available_memory_bytes",
    "dmsguard_dms_instance_swap_usage_bytes",
    "dmsguard_dms_task_cdc_latency_source_seconds",
    "dmsguard_dms_task_cdc_latency_target_seconds",
    "dmsguard_dms_task_cdc_incoming_changes",
    "dmsguard_cloudwatch_datapoint_age_seconds",
    "dmsguard_dms_task_status",
    "dmsguard_dms_task_start_time_seconds",
    "dmsguard_table_missing_ids",
    "dmsguard_table_extra_ids",
    "dmsguard_table_divergent_rows",
    "dmsguard_table_scan_progress_ratio",
    "dmsguard_table_scan_pass_completed_timestamp_seconds",
    "dmsguard_table_scanned_ids_total",
    "dmsguard_table_max_id_lag",
    "dmsguard_redshift_maintenance_next_start_seconds",
    "dmsguard_redshift_maintenance_active",
    "dmsguard_config_memory_threshold_bytes",
    "dmsguard_config_maintenance_stop_before_seconds",
    "dmsguard_redshift_maintenance_next_start_timestamp_seconds",
    "dmsguard_redshift_maintenance_next_end_timestamp_seconds",
    "dmsguard_redshift_maintenance_deferred",
    "dmsguard_probe_success",
    "dmsguard_probe_duration_seconds",
    "dmsguard_probe_last_success_timestamp_seconds",
    "dmsguard_preflight_ok",
    "dmsguard_source_replica_lag_seconds",
    // Remediator.
    "dmsguard_remediator_webhooks_total",
    "dmsguard_remediator_jobs_total",
    "dmsguard_remediator_jobs_in_flight",
    "dmsguard_remediator_scheduled_steps_pending",
    "dmsguard_remediator_resumes_owed",
    "dmsguard_remediator_resumes_total",
    "dmsguard_remediator_repair_rows_total",
    "dmsguard_remediator_repair_rows_remaining",
    "dmsguard_remediator_fix_enabled",
    "dmsguard_remediator_alerts_refused_total",
    "dmsguard_remediator_fix_failed_checks",
    "dmsguard_remediator_preflight_last_run_timestamp_seconds",
    // Both binaries.
    "dmsguard_build_info",
    "dmsguard_config_last_reload_successful",
    "dmsguard_config_last_reload_success_timestamp_seconds",
    "dmsguard_config_reloads_total",
];

/// Exported histograms: queries use their `_bucket`, `_sum` and `_count` series.
const EXPORTED_HISTOGRAMS: &[&str] = &["dmsguard_remediator_job_duration_seconds"];

/// The alerts of docs/architecture.md: name, whether the remediator fixes it, and the label its
/// fix acts on (the Alertmanager group key).
const ALERTS: &[(&str, bool, Option<&str>)] = &[
    ("DMSOneByOneMode", true, Some("table")),
    ("DMSInstanceMemoryLow", true, Some("replication_instance")),
    ("RedshiftMaintenanceImminent", true, None),
    ("RedshiftMissingRows", true, Some("table")),
    ("RedshiftDivergentRows", true, Some("table")),
    ("RedshiftExtraRows", false, None),
    ("DMSTaskStalled", true, Some("task")),
    ("DMSTargetLatencyHigh", false, None),
    ("DmsguardProbeDown", false, None),
    ("DmsguardRemediationFailing", false, None),
    ("DmsguardRemediatorFixDisabled", false, None),
];

const RUNBOOK_URL_BASE: &str = "https://github.com/dmsguard/dmsguard/blob/main/alerts/runbooks/";
const REMEDIATOR_RECEIVER: &str = "dmsguard-remediator";
const HUMAN_RECEIVER: &str = "oncall";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the lab crate lives in the workspace")
        .to_owned()
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn promtool() -> String {
    env_or("DMSGUARD_PROMTOOL_BIN", "/usr/bin/promtool")
}

fn amtool() -> String {
    env_or("DMSGUARD_AMTOOL_BIN", "/usr/bin/amtool")
}

fn rules_path() -> PathBuf {
    repo().join("alerts/dmsguard.rules.yml")
}

fn alertmanager_path() -> PathBuf {
    repo().join("alerts/alertmanager.example.yml")
}

fn read_yaml(path: &Path) -> Yaml {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dashboard() -> Json {
    let path = repo().join("dashboards/dmsguard.json");
    let text = std::fs::read_to_string(&path).expect("dashboards/dmsguard.json");
    serde_json::from_str(&text).expect("the dashboard is valid JSON")
}

/// The promtool unit-test files, sorted.
fn rule_test_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("alerts/tests"))
        .expect("alerts/tests")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "alerts/tests has no *.yml unit tests");
    files
}

/// Runs a tool and returns its stdout, failing the test with both streams if it fails.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("running {program} (is the lab installed? tests/lab/up): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn str_of<'a>(v: &'a Yaml, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Yaml::as_str)
}

/// Every rule of the rules file (recording rules and alerts).
fn rules() -> Vec<Yaml> {
    let doc = read_yaml(&rules_path());
    doc["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").clone())
        .collect()
}

fn alert_rules() -> BTreeMap<String, Yaml> {
    rules()
        .into_iter()
        .filter_map(|r| str_of(&r, "alert").map(|n| (n.to_owned(), r.clone())))
        .collect()
}

fn recording_rules() -> BTreeMap<String, String> {
    rules()
        .iter()
        .filter_map(|r| {
            let name = str_of(r, "record")?;
            Some((name.to_owned(), str_of(r, "expr").expect("expr").to_owned()))
        })
        .collect()
}

/// Metric names the rules and dashboard may use: the contract plus the recording rules.
fn known_metric_names() -> BTreeSet<String> {
    let mut known: BTreeSet<String> = EXPORTED_METRICS.iter().map(|m| m.to_string()).collect();
    for h in EXPORTED_HISTOGRAMS {
        for suffix in ["_bucket", "_sum", "_count"] {
            known.insert(format!("{h}{suffix}"));
        }
    }
    known.extend(recording_rules().into_keys());
    known
}

/// Collects the metric names of every selector in a PromQL expression.
#[derive(Default)]
struct MetricNames(BTreeSet<String>);

impl ExprVisitor for MetricNames {
    type Error = String;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        let selector = match expr {
            Expr::VectorSelector(vs) => vs,
            Expr::MatrixSelector(ms) => &ms.vs,
            _ => return Ok(true),
        };
        let name = selector
            .name
            .clone()
            .ok_or_else(|| format!("selector without a metric name: {selector}"))?;
        self.0.insert(name);
        Ok(true)
    }
}

fn metric_names(promql: &str) -> Result<BTreeSet<String>, String> {
    let expr = promql_parser::parser::parse(promql).map_err(|e| format!("{promql:?}: {e}"))?;
    let mut names = MetricNames::default();
    walk_expr(&mut names, &expr)?;
    Ok(names.0)
}

#[test]
fn rules_pass_promtool_check_and_unit_tests() {
    let rules = rules_path();
    let out = run(
        &promtool(),
        &["check", "rules", rules.to_str().expect("utf-8 path")],
    );
    assert!(out.contains("SUCCESS"), "promtool check rules: {out}");

    let files = rule_test_files();
    let mut args = vec!["test".to_owned(), "rules".to_owned()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&promtool(), &args);
    assert_eq!(
        out.matches("SUCCESS").count(),
        files.len(),
        "every unit-test file passes:\n{out}"
    );
}

#[tokio::test]
async fn prometheus_loads_and_evaluates_every_rule() -> anyhow::Result<()> {
    let prometheus = Prometheus::spawn(&format!(
        "global: {{evaluation_interval: 1s}}\nrule_files:\n  - '{}'\n",
        rules_path().display()
    ))
    .await?;
    let expected = rules().len();
    let http = reqwest::Client::new();
    let rules = eventually("every rule evaluated", Duration::from_secs(30), || async {
        let body: Json = http
            .get(format!("{}/api/v1/rules", prometheus.url()))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let rules: Vec<Json> = body["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = rules.len() == expected && rules.iter().all(|r| r["health"] != "unknown");
        Ok(evaluated.then_some(rules))
    })
    .await?;
    for rule in &rules {
        assert_eq!(
            rule["health"], "ok",
            "{} evaluates: {}",
            rule["name"], rule["lastError"]
        );
    }
    // Nothing is scraped: the probe-down alert's `absent` branch must be counting down.
    let probe_down = rules
        .iter()
        .find(|r| r["name"] == "DmsguardProbeDown")
        .expect("DmsguardProbeDown loaded");
    assert_eq!(probe_down["state"], "pending");
    Ok(())
}

#[test]
fn every_alert_is_unit_tested_firing_and_not_firing() {
    let mut firing: BTreeMap<String, Vec<Yaml>> = BTreeMap::new();
    let mut quiet: BTreeSet<String> = BTreeSet::new();
    for file in rule_test_files() {
        let doc = read_yaml(&file);
        let rule_files: Vec<&str> = doc["rule_files"]
            .as_sequence()
            .expect("rule_files")
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        assert_eq!(
            rule_files,
            ["../dmsguard.rules.yml"],
            "{} tests the real rules file",
            file.display()
        );
        for test in doc["tests"].as_sequence().expect("tests") {
            for case in test["alert_rule_test"].as_sequence().into_iter().flatten() {
                let name = str_of(case, "alertname").expect("alertname").to_owned();
                let expected = case["exp_alerts"]
                    .as_sequence()
                    .cloned()
                    .unwrap_or_default();
                if expected.is_empty() {
                    quiet.insert(name);
                } else {
                    firing.entry(name).or_default().extend(expected);
                }
            }
        }
    }
    for (name, _, routing_label) in ALERTS {
        let fired = firing
            .get(*name)
            .unwrap_or_else(|| panic!("no unit test expects {name} to fire"));
        assert!(
            quiet.contains(*name),
            "no unit test expects {name} not to fire"
        );
        if let Some(label) = routing_label {
            assert!(
                fired.iter().all(|a| a["exp_labels"].get(*label).is_some()),
                "{name} fires with its routing label `{label}` in every unit test"
            );
        }
    }
}

#[test]
fn alerts_are_the_designed_set_with_for_severity_annotations_and_runbooks() {
    let alerts = alert_rules();
    let names: BTreeSet<&str> = alerts.keys().map(String::as_str).collect();
    let designed: BTreeSet<&str> = ALERTS.iter().map(|(n, _, _)| *n).collect();
    assert_eq!(
        names, designed,
        "the rules define exactly the alerts of docs/architecture.md"
    );

    for (name, rule) in &alerts {
        assert!(str_of(rule, "for").is_some(), "{name} has a `for`");
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name} has a severity label, got {severity:?}"
        );
        for key in ["summary", "description"] {
            let text = rule["annotations"][key].as_str().unwrap_or_default();
            assert!(text.len() > 20, "{name} has a {key} annotation: {text:?}");
        }
        assert_eq!(
            rule["annotations"]["runbook_url"].as_str(),
            Some(format!("{RUNBOOK_URL_BASE}{name}.md").as_str()),
            "{name}'s runbook_url"
        );
        let runbook = repo().join(format!("alerts/runbooks/{name}.md"));
        let text = std::fs::read_to_string(&runbook)
            .unwrap_or_else(|e| panic!("{name}'s runbook {}: {e}", runbook.display()));
        assert!(
            text.starts_with(&format!("# {name}\n")),
            "{} is titled with the alert name",
            runbook.display()
        );
        for section in [
            "## Meaning",
            "## What dmsguard does automatically",
            "## Check by hand",
            "## Fix by hand",
        ] {
            assert!(
                text.contains(&format!("\n{section}\n")),
                "{name}'s runbook has a {section:?} section"
            );
        }
        assert!(
            text.contains("```sh\ndmsguard-"),
            "{name}'s runbook shows the dmsguard commands to run"
        );
    }

    let runbooks: BTreeSet<String> = std::fs::read_dir(repo().join("alerts/runbooks"))
        .expect("alerts/runbooks")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let expected: BTreeSet<String> = designed.iter().map(|n| format!("{n}.md")).collect();
    assert_eq!(runbooks, expected, "one runbook per alert, no others");
}

#[test]
fn rules_and_dashboard_name_only_exported_metrics() {
    let known = known_metric_names();
    let recorded = recording_rules();
    for name in recorded.keys() {
        let parts: Vec<&str> = name.split(':').collect();
        assert!(
            parts.len() == 3 && parts[0] == "dmsguard" && parts.iter().all(|p| !p.is_empty()),
            "recording rule {name} is named dmsguard:<metric>:<operation>"
        );
    }

    let mut unknown = Vec::new();
    let mut used_by_alerts = BTreeSet::new();
    for rule in rules() {
        let expr = str_of(&rule, "expr").expect("every rule has an expr");
        let names = metric_names(expr).expect("every rule parses as PromQL");
        for n in &names {
            if !known.contains(n) {
                unknown.push(format!("rules: {n} in {expr:?}"));
            }
        }
        if rule.get("alert").is_some() {
            used_by_alerts.extend(names);
        }
    }

    let dashboard = dashboard();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() > 20, "the dashboard has its queries");
    let mut used_by_dashboard = BTreeSet::new();
    for (origin, query) in &queries {
        let names = metric_names(&expand_grafana_variables(query))
            .unwrap_or_else(|e| panic!("{origin} does not parse as PromQL: {e}"));
        for n in &names {
            if !known.contains(n) {
                unknown.push(format!("dashboard {origin}: {n} in {query:?}"));
            }
        }
        used_by_dashboard.extend(names);
    }
    assert!(unknown.is_empty(), "unknown metric names:\n{unknown:#?}");

    for name in recorded.keys() {
        assert!(
            used_by_alerts.contains(name) && used_by_dashboard.contains(name),
            "recording rule {name} is shared by an alert and the dashboard"
        );
    }
}

#[test]
fn dashboard_panels_datasources_and_variables_resolve() {
    let dashboard = dashboard();
    assert!(
        dashboard["schemaVersion"].as_u64() >= Some(39),
        "current Grafana schema"
    );
    let panels = all_panels(&dashboard);

    let mut ids = BTreeSet::new();
    for p in &panels {
        let id = p["id"].as_u64().expect("every panel has a numeric id");
        assert!(ids.insert(id), "panel id {id} is used twice");
    }

    let ds_ref = |v: &Json| v["uid"] == "${datasource}" && v["type"] == "prometheus";
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert!(
            ds_ref(&p["datasource"]),
            "panel {:?} uses the datasource variable, has {}",
            p["title"],
            p["datasource"]
        );
        let targets = p["targets"].as_array().expect("a panel has targets");
        assert!(
            !targets.is_empty(),
            "panel {:?} queries something",
            p["title"]
        );
        for t in targets {
            assert!(
                ds_ref(&t["datasource"]),
                "a target of {:?} uses the datasource variable",
                p["title"]
            );
        }
    }

    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    let by_name: BTreeMap<&str, &Json> = variables
        .iter()
        .map(|v| (v["name"].as_str().expect("variable name"), v))
        .collect();
    let datasource = by_name.get("datasource").expect("a datasource variable");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    for (name, metric_label) in [
        ("task", "task"),
        ("replication_instance", "replication_instance"),
        ("table", "table"),
    ] {
        let var = by_name
            .get(name)
            .unwrap_or_else(|| panic!("a {name} variable"));
        assert_eq!(var["type"], "query", "{name} is a query variable");
        assert!(
            ds_ref(&var["datasource"]),
            "{name} queries the datasource variable"
        );
        let query = var["query"]["query"].as_str().unwrap_or_default();
        assert!(
            query.starts_with("label_values(") && query.ends_with(&format!(", {metric_label})")),
            "{name} uses label_values(…, {metric_label}), got {query:?}"
        );
    }

    for a in dashboard["annotations"]["list"]
        .as_array()
        .expect("annotations")
    {
        if a.get("expr").is_some() {
            assert!(
                ds_ref(&a["datasource"]),
                "annotation {:?}'s datasource",
                a["name"]
            );
        }
    }
    let job_annotation = dashboard["annotations"]["list"]
        .as_array()
        .expect("annotations")
        .iter()
        .find_map(|a| {
            a["expr"]
                .as_str()
                .filter(|e| e.contains("dmsguard_remediator_jobs_total"))
        });
    assert!(
        job_annotation.is_some_and(|e| e.contains("changes(")),
        "remediator jobs are shown as annotations from its metrics"
    );

    let mut undefined = Vec::new();
    for (origin, query) in dashboard_queries(&dashboard) {
        for var in grafana_variables(&query) {
            if !var.starts_with("__") && !by_name.contains_key(var.as_str()) {
                undefined.push(format!("{origin}: ${var}"));
            }
        }
    }
    assert!(undefined.is_empty(), "undefined variables: {undefined:?}");

    let rows: Vec<String> = panels
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap_or_default().to_lowercase())
        .collect();
    for mode in [
        "one-by-one",
        "memory",
        "latency",
        "task status",
        "missing",
        "maintenance",
        "remediator jobs",
    ] {
        assert!(
            rows.iter().any(|r| r.contains(mode)),
            "a row for {mode}, rows: {rows:?}"
        );
    }
}

#[test]
fn alertmanager_example_passes_amtool_and_routes_fixable_alerts_to_both_receivers() {
    let config = alertmanager_path();
    let config = config.to_str().expect("utf-8 path");
    let out = run(&amtool(), &["check-config", config]);
    assert!(out.contains("SUCCESS"), "amtool check-config: {out}");

    for (name, fixable, routing_label) in ALERTS {
        let mut args = vec![
            "config".to_owned(),
            "routes".to_owned(),
            "test".to_owned(),
            format!("--config.file={config}"),
            format!("alertname={name}"),
        ];
        if let Some(label) = routing_label {
            args.push(format!("{label}=x"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let receivers = run(&amtool(), &args);
        let expected = if *fixable {
            format!("{REMEDIATOR_RECEIVER},{HUMAN_RECEIVER}")
        } else {
            HUMAN_RECEIVER.to_owned()
        };
        assert_eq!(receivers.trim(), expected, "receivers of {name}");
    }

    let doc = read_yaml(&alertmanager_path());
    let receiver = doc["receivers"]
        .as_sequence()
        .expect("receivers")
        .iter()
        .find(|r| r["name"] == REMEDIATOR_RECEIVER)
        .expect("the remediator receiver");
    let hook = &receiver["webhook_configs"][0];
    assert!(
        hook["url"].as_str().is_some_and(|u| u.ends_with("/alerts")),
        "the remediator's POST /alerts"
    );
    let auth = &hook["http_config"]["authorization"];
    assert_eq!(auth["type"], "Bearer");
    assert!(
        auth["credentials_file"].as_str().is_some() && auth.get("credentials").is_none(),
        "the token comes from a file, never inline"
    );
    for route in doc["route"]["routes"].as_sequence().expect("routes") {
        if route["receiver"] != REMEDIATOR_RECEIVER {
            continue;
        }
        assert_eq!(route["continue"], Yaml::Bool(true), "{route:?} continues");
        let group_by: Vec<&str> = route["group_by"]
            .as_sequence()
            .expect("group_by")
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        assert!(
            group_by.contains(&"alertname"),
            "{route:?} groups by alertname"
        );
        for (name, _, label) in ALERTS {
            let matchers = format!("{:?}", route["matchers"]);
            if let (true, Some(label)) = (matchers.contains(name), label) {
                assert!(group_by.contains(label), "{name}'s route groups by {label}");
            }
        }
    }
}

/// The lab copy of the example config (`dmsguard_lab::alerting`): receivers pointed at `hooks`,
/// timers divided by 10; routing, grouping and authorization unchanged.
fn example_alertmanager_for_test(hooks: &str, token_file: &Path) -> String {
    let receivers = Receivers {
        remediator_url: format!("{hooks}/{REMEDIATOR_RECEIVER}"),
        token_file: token_file.to_owned(),
        oncall_url: format!("{hooks}/{HUMAN_RECEIVER}"),
    };
    let example = std::fs::read_to_string(alertmanager_path()).expect("example config");
    lab_alertmanager(&example, &receivers, 10).expect("lab Alertmanager config")
}

#[test]
fn lab_copies_of_rules_and_alertmanager_config_pass_promtool_and_amtool() {
    let dir = tempfile::tempdir().expect("temp dir");
    let receivers = Receivers {
        remediator_url: "http://127.0.0.1:9855/alerts".into(),
        token_file: dir.path().join("token"),
        oncall_url: "http://127.0.0.1:9/oncall".into(),
    };
    let (rules, am) =
        write_lab_alerting(&repo().join("alerts"), dir.path(), &receivers, 20).expect("lab copies");
    let rules = rules.display().to_string();
    let out = run(&promtool(), &["check", "rules", &rules]);
    // The lab copy keeps every rule of the real file.
    let expected = format!("SUCCESS: {} rules found", self::rules().len());
    assert!(out.contains(&expected), "{out}");
    let lab = read_yaml(Path::new(&rules));
    let real = read_yaml(&rules_path());
    let fors = |doc: &Yaml| -> Vec<String> {
        doc["groups"]
            .as_sequence()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
            .filter_map(|r| str_of(&r, "for").map(str::to_owned))
            .collect()
    };
    assert_eq!(fors(&real).len(), fors(&lab).len());
    assert!(
        fors(&lab).iter().all(|f| f == "0s" || f.ends_with('s')),
        "{:?}",
        fors(&lab)
    );
    let am = am.display().to_string();
    run(&amtool(), &["check-config", &am]);
}

#[tokio::test]
async fn alertmanager_sends_fixable_alerts_to_the_remediator_with_the_bearer_token(
) -> anyhow::Result<()> {
    type Received = Arc<Mutex<Vec<(String, Option<String>, Json)>>>;
    let received: Received = Arc::default();
    let app = axum::Router::new()
        .route(
            "/{receiver}",
            post(
                |axum::extract::State(received): axum::extract::State<Received>,
                 axum::extract::Path(receiver): axum::extract::Path<String>,
                 headers: HeaderMap,
                 axum::Json(body): axum::Json<Json>| async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    received.lock().await.push((receiver, auth, body));
                    "ok"
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hooks = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir()?;
    let token = "lab-webhook-token";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n"))?;
    let am = Alertmanager::spawn(&example_alertmanager_for_test(&hooks, &token_file)).await?;
    am.post_alerts(&serde_json::json!([
        {"labels": {"alertname": "DMSOneByOneMode", "table": "public.orders", "severity": "critical"}},
        {"labels": {"alertname": "DMSTargetLatencyHigh", "task": "orders-cdc", "severity": "warning"}},
    ]))
    .await?;

    let names = |receiver: &'static str| {
        let received = received.clone();
        async move {
            let received = received.lock().await;
            received
                .iter()
                .filter(|(r, _, _)| r == receiver)
                .flat_map(|(_, _, body)| body["alerts"].as_array().cloned().unwrap_or_default())
                .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_owned))
                .collect::<BTreeSet<String>>()
        }
    };
    let wanted_by_people: BTreeSet<String> = ["DMSOneByOneMode", "DMSTargetLatencyHigh"]
        .map(String::from)
        .into();
    eventually("both alerts delivered", Duration::from_secs(30), || async {
        let remediator = names(REMEDIATOR_RECEIVER).await;
        let people = names(HUMAN_RECEIVER).await;
        Ok((remediator.contains("DMSOneByOneMode") && people == wanted_by_people).then_some(()))
    })
    .await?;

    let received = received.lock().await;
    for (receiver, auth, body) in received.iter() {
        if receiver == REMEDIATOR_RECEIVER {
            assert_eq!(auth.as_deref(), Some("Bearer lab-webhook-token"));
            assert_eq!(body["groupLabels"]["table"], "public.orders");
            for alert in body["alerts"].as_array().expect("alerts") {
                assert_eq!(
                    alert["labels"]["alertname"], "DMSOneByOneMode",
                    "only fixable alerts reach the remediator"
                );
            }
        } else {
            assert_eq!(receiver, HUMAN_RECEIVER);
            assert_eq!(auth, &None, "the token goes to the remediator only");
        }
    }
    Ok(())
}
