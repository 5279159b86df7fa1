//! The label sets the real alert rules produce, for webhook tests: read from the rules file and
//! promtool's tests of it, so a test cannot send a label set no rule emits.

#![allow(dead_code)]

/// The labels the real rule `alertname` of `alerts/dmsguard.rules.yml` gives its alerts, as
/// promtool's tests of that file (`alerts/tests/*.yml`, run by `scripts/test`) expect them,
/// with `values` replacing the values of the labels that name things (task, table, …).
/// Panics when `values` names a label the rule's alerts never carry: a webhook test then sends
/// only what the real rule can produce.
pub fn rule_labels(alertname: &str, values: &[(&str, &str)]) -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../alerts");
    let rules = std::fs::read_to_string(root.join("dmsguard.rules.yml")).expect("rules file");
    assert!(
        rules
            .lines()
            .any(|l| l.trim() == format!("- alert: {alertname}")),
        "no rule `{alertname}` in alerts/dmsguard.rules.yml"
    );
    let mut files: Vec<_> = std::fs::read_dir(root.join("tests"))
        .expect("alerts/tests")
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    let labels = files
        .iter()
        .find_map(|path| expected_labels(&std::fs::read_to_string(path).ok()?, alertname))
        .unwrap_or_else(|| panic!("no promtool test expects an `{alertname}` alert"));
    let start = format!("- alert: {alertname}");
    let statics = block_labels(&rules, &start, "labels:");
    for (key, value) in &statics {
        assert!(
            labels.iter().any(|(k, v)| k == key && v == value),
            "rule `{alertname}` sets {key}={value}; promtool's tests expect {labels:?}"
        );
    }
    let pinned: Vec<(String, String)> = statics
        .into_iter()
        .chain(selector_matchers(&rule_block(&rules, &start)))
        .collect();
    for (key, value) in values {
        assert!(
            labels.iter().any(|(k, _)| k == key),
            "rule `{alertname}` never sets label `{key}`; it sets {labels:?}"
        );
        if let Some((_, fixed)) = pinned.iter().find(|(k, _)| k == key) {
            assert_eq!(
                value, fixed,
                "rule `{alertname}` only ever sends {key}={fixed}"
            );
        }
    }
    labels
        .into_iter()
        .map(|(k, v)| {
            let v = values
                .iter()
                .find(|(key, _)| *key == k)
                .map_or(v, |(_, value)| value.to_string());
            (k, v)
        })
        .collect()
}

/// The first `exp_labels` of an expected `alertname` alert in a promtool test file.
fn expected_labels(text: &str, alertname: &str) -> Option<Vec<(String, String)>> {
    let mut current = None;
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim().trim_start_matches("- ");
        if let Some(name) = trimmed.strip_prefix("alertname:") {
            current = Some(name.trim().to_owned());
        }
        // `exp_labels: &anchor` names the map for later `*anchor` aliases: read it as is.
        let is_labels = trimmed == "exp_labels:" || trimmed.starts_with("exp_labels: &");
        if !is_labels || current.as_deref() != Some(alertname) {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let mut labels = Vec::new();
        while let Some(next) = lines.peek() {
            let next_indent = next.len() - next.trim_start().len();
            if next.trim().is_empty() || next_indent <= indent {
                break;
            }
            let (k, v) = next.trim().split_once(':')?;
            labels.push((k.trim().to_owned(), v.trim().trim_matches('"').to_owned()));
            lines.next();
        }
        return Some(labels);
    }
    None
}

/// The `key: value` lines under the first `section` line after the line `start` in `text`.
fn block_labels(text: &str, start: &str, section: &str) -> Vec<(String, String)> {
    let mut lines = text
        .lines()
        .skip_while(|l| l.trim() != start)
        .skip(1)
        .take_while(|l| !l.trim().starts_with("- alert:"))
        .skip_while(|l| l.trim() != section)
        .peekable();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let indent = header.len() - header.trim_start().len();
    lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect()
}

/// [`rule_labels`] as an Alertmanager `labels` object, `alertname` included.
pub fn rule_labels_json(alertname: &str, values: &[(&str, &str)]) -> serde_json::Value {
    let mut labels = serde_json::Map::new();
    labels.insert("alertname".into(), alertname.into());
    for (k, v) in rule_labels(alertname, values) {
        labels.insert(k, v.into());
    }
    serde_json::Value::Object(labels)
}

/// The lines of the rule that starts with the line `start`, up to the next rule.
fn rule_block(text: &str, start: &str) -> String {
    text.lines()
        .skip_while(|l| l.trim() != start)
        .skip(1)
        .take_while(|l| !l.trim().starts_with("- alert:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `label="value"` equality matchers of the series selectors in `text` (an alert's
/// expression): labels every alert of the rule carries with exactly that value.
fn selector_matchers(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for selector in text.split('{').skip(1) {
        let Some((inner, _)) = selector.split_once('}') else {
            continue;
        };
        for matcher in inner.split(',') {
            let Some((key, value)) = matcher.split_once('=') else {
                continue;
            };
            let key = key.trim();
            if key.ends_with('!') || value.starts_with('~') || key.is_empty() {
                continue;
            }
            if key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                out.push((key.to_owned(), value.trim().trim_matches('"').to_owned()));
            }
        }
    }
    out
}
