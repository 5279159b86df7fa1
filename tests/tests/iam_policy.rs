//! `docs/iam-policy.md` lists exactly the AWS actions the code calls: the actions are derived
//! from the SDK calls in the binaries' sources (`.operation_name()` builders that end in
//! `.send()`), so a new call without a policy line, or a stale line, fails here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Actions that need no IAM permission (sts:GetCallerIdentity:
/// https://docs.aws.amazon.com/STS/latest/APIReference/API_GetCallerIdentity.html).
const PERMISSION_FREE: &[&str] = &["sts:GetCallerIdentity"];

/// Actions called only for IAM database credentials (`iam` in a database section): listed in
/// the doc's own `iam-database` policy, not in the exporter's and remediator's.
const DATABASE_LOGIN: &[&str] = &[
    "redshift:GetClusterCredentials",
    "redshift-serverless:GetCredentials",
];

/// The only actions that change something; only the remediator may have them.
const MUTATING: &[&str] = &["dms:StartReplicationTask", "dms:StopReplicationTask"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `describe_replication_tasks` -> `DescribeReplicationTasks`.
fn pascal(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The IAM service prefix of an SDK operation of the clients dmsguard builds.
fn service(op: &str) -> &'static str {
    if op.contains("replication") {
        "dms"
    } else if op.contains("metric") {
        "cloudwatch"
    } else if op.contains("cluster") {
        "redshift"
    } else if op == "get_credentials" {
        // Redshift Serverless's only call: GetCredentials (the cluster API's is
        // get_cluster_credentials, above).
        "redshift-serverless"
    } else if op.contains("caller_identity") || op.contains("assume_role") {
        "sts"
    } else {
        panic!("SDK call `{op}`: which service? Extend service() in this test and the policy")
    }
}

const VERBS: &[&str] = &[
    "describe", "get", "list", "start", "stop", "put", "create", "delete", "modify", "reboot",
    "update", "assume", "batch", "tag", "untag", "run", "cancel", "reset",
];

/// `service:Action` of every SDK call in `text`: a `.verb_noun()` builder whose statement ends
/// in `.send()` (or a paginator) before the next `;`.
fn sdk_actions(text: &str, found: &mut BTreeSet<String>) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find('.') {
        let start = i + at + 1;
        i = start;
        let mut j = start;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        let name_start = j;
        while j < bytes.len()
            && (bytes[j].is_ascii_lowercase() || bytes[j].is_ascii_digit() || bytes[j] == b'_')
        {
            j += 1;
        }
        let name = &text[name_start..j];
        if !text[j..].starts_with("()") {
            continue;
        }
        let Some((verb, _)) = name.split_once('_') else {
            continue;
        };
        if !VERBS.contains(&verb) {
            continue;
        }
        let statement = &text[j..text[j..].find(';').map_or(text.len(), |e| j + e)];
        if statement.contains(".send()") || statement.contains(".into_paginator()") {
            found.insert(format!("{}:{}", service(name), pascal(name)));
        }
    }
}

fn called_actions() -> BTreeSet<String> {
    let mut files = Vec::new();
    for dir in ["pipeline/src", "exporter/src", "remediator/src"] {
        rust_files(&workspace().join(dir), &mut files);
    }
    let mut found = BTreeSet::new();
    for file in files {
        sdk_actions(&std::fs::read_to_string(&file).unwrap(), &mut found);
    }
    found
}

/// The JSON block after `<!-- policy: NAME -->` in the doc.
fn policy(doc: &str, name: &str) -> serde_json::Value {
    let marker = format!("<!-- policy: {name} -->");
    let at = doc.find(&marker).unwrap_or_else(|| panic!("no {marker}"));
    let rest = &doc[at + marker.len()..];
    let body_start = rest.find("```json\n").expect("a ```json block follows") + 8;
    let body_end = body_start + rest[body_start..].find("\n```").unwrap();
    serde_json::from_str(&rest[body_start..body_end])
        .unwrap_or_else(|e| panic!("policy {name} is not JSON: {e}"))
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(a) => a.iter().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

/// Allowed actions of a policy, each with the resources of its statement.
fn allowed(policy: &serde_json::Value) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for st in policy["Statement"].as_array().expect("Statement array") {
        assert_eq!(st["Effect"], "Allow", "{st}");
        for action in strings(&st["Action"]) {
            out.push((action, strings(&st["Resource"])));
        }
    }
    out
}

#[test]
fn the_policies_list_exactly_the_actions_the_code_calls() {
    let doc = std::fs::read_to_string(workspace().join("docs/iam-policy.md")).unwrap();
    let called = called_actions();
    // The scanner finds the calls it must (it cannot pass by finding nothing).
    for known in [
        "dms:DescribeReplicationTasks",
        "dms:StopReplicationTask",
        "sts:GetCallerIdentity",
    ] {
        assert!(called.contains(known), "{known} not found in {called:?}");
    }
    let needed: BTreeSet<String> = called
        .iter()
        .filter(|a| !PERMISSION_FREE.contains(&a.as_str()) && !DATABASE_LOGIN.contains(&a.as_str()))
        .cloned()
        .collect();
    // The IAM database credentials policy: the login API the code calls, and RDS's `connect`
    // (no API call: the token is signed locally and RDS checks this permission when it is used).
    for login in DATABASE_LOGIN {
        assert!(called.contains(*login), "{login} is no longer called");
    }
    let database: BTreeSet<String> = allowed(&policy(&doc, "iam-database"))
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    let mut expected: BTreeSet<String> = DATABASE_LOGIN.iter().map(|s| s.to_string()).collect();
    expected.insert("rds-db:connect".to_owned());
    assert_eq!(database, expected, "iam-database policy");
    let mutating: BTreeSet<String> = needed
        .iter()
        .filter(|a| {
            let op = a.split_once(':').unwrap().1;
            !["Describe", "Get", "List"]
                .iter()
                .any(|p| op.starts_with(p))
        })
        .cloned()
        .collect();
    assert_eq!(
        mutating,
        MUTATING.iter().map(|s| s.to_string()).collect(),
        "the code calls actions that change something besides stopping and starting tasks"
    );

    let remediator = allowed(&policy(&doc, "remediator"));
    let remediator_actions: BTreeSet<String> = remediator.iter().map(|(a, _)| a.clone()).collect();
    assert_eq!(
        remediator_actions, needed,
        "remediator policy vs the code's calls"
    );
    for (action, resources) in &remediator {
        if mutating.contains(action) {
            assert!(
                !resources.is_empty()
                    && resources
                        .iter()
                        .all(|r| r.starts_with("arn:aws:dms:") && r.contains(":task:")),
                "{action} must be limited to task ARNs, not {resources:?}"
            );
        }
    }

    let exporter: BTreeSet<String> = allowed(&policy(&doc, "exporter"))
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    let read_only: BTreeSet<String> = needed.difference(&mutating).cloned().collect();
    assert_eq!(
        exporter, read_only,
        "exporter policy vs the code's read-only calls"
    );

    // The assumed-role pieces: the caller may only assume the role; the trust policy wants the
    // external ID.
    let caller = allowed(&policy(&doc, "caller"));
    assert_eq!(caller.len(), 1);
    assert_eq!(caller[0].0, "sts:AssumeRole");
    let trust = policy(&doc, "trust");
    assert!(trust["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"].is_string());
}

#[test]
fn the_scanner_reads_builder_chains() {
    let mut found = BTreeSet::new();
    sdk_actions(
        "let out = self\n    .client\n    .stop_replication_task()\n    .replication_task_arn(&a)\n    .send()\n    .await;\n\
         let x = c.describe_tasks(&d); let y = s.get_ref(); cw.get_metric_data().set_x(1).send().await;",
        &mut found,
    );
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["cloudwatch:GetMetricData", "dms:StopReplicationTask"]
    );
}
