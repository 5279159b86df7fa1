//! Test copies of the real alert rules and Alertmanager routing: same expressions and routes,
//! shorter durations, receivers pointed at a test's remediator and on-call sink.
//!
//! Only durations change. In the rules: every `for:`, every range (`[5m]`, subquery `[10m:1m]`)
//! and every `offset` in an expression is divided by the time scale; value thresholds (seconds
//! until maintenance, latency seconds, bytes) stay as written, because they compare against
//! what the lab reports, not against time spent waiting.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_norway::Value;

/// How long Alertmanager waits before it sends a new group, between updates of a group, and
/// before it repeats an unchanged group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertmanagerTiming {
    pub group_wait: Duration,
    pub group_interval: Duration,
    pub repeat_interval: Duration,
}

impl Default for AlertmanagerTiming {
    fn default() -> Self {
        Self {
            group_wait: Duration::from_secs(1),
            group_interval: Duration::from_secs(1),
            repeat_interval: Duration::from_secs(60),
        }
    }
}

/// `rules_yaml` (a Prometheus rule file) with every duration divided by `time_scale`.
pub fn rules_for_test(rules_yaml: &str, time_scale: u32) -> anyhow::Result<String> {
    anyhow::ensure!(time_scale >= 1, "the time scale must be at least 1");
    let mut doc: Value = serde_norway::from_str(rules_yaml).context("parsing the rule file")?;
    let groups = doc
        .get_mut("groups")
        .and_then(Value::as_sequence_mut)
        .context("the rule file has no `groups` list")?;
    let mut rules_seen = 0;
    for group in groups {
        let name = group
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        let rules = group
            .get_mut("rules")
            .and_then(Value::as_sequence_mut)
            .with_context(|| format!("group {name} has no `rules` list"))?;
        for rule in rules {
            rules_seen += 1;
            if let Some(value) = rule.get_mut("for") {
                let text = value.as_str().context("`for` is not a string")?;
                *value = Value::String(scale_duration(text, time_scale)?);
            }
            let expr = rule.get_mut("expr").context("a rule without `expr`")?;
            let text = expr.as_str().context("`expr` is not a string")?;
            *expr = Value::String(scale_promql_durations(text, time_scale)?);
        }
    }
    anyhow::ensure!(rules_seen > 0, "the rule file has no rules");
    Ok(serde_norway::to_string(&doc)?)
}

/// `am_yaml` (an Alertmanager config) with the timing of every route set to `timing`, the
/// `dmsguard-remediator` receiver's webhooks sent to `remediator_url` with the bearer token
/// read from `token_file`, and every other receiver's webhooks sent to `oncall_url`.
pub fn alertmanager_for_test(
    am_yaml: &str,
    remediator_url: &str,
    token_file: &Path,
    oncall_url: &str,
    timing: AlertmanagerTiming,
) -> anyhow::Result<String> {
    let mut doc: Value =
        serde_norway::from_str(am_yaml).context("parsing the Alertmanager config")?;
    let route = doc
        .get_mut("route")
        .context("the Alertmanager config has no `route`")?;
    set_timing(route, timing, true);
    let receivers = doc
        .get_mut("receivers")
        .and_then(Value::as_sequence_mut)
        .context("the Alertmanager config has no `receivers` list")?;
    let mut remediator_hooks = 0;
    for receiver in receivers {
        let is_remediator =
            receiver.get("name").and_then(Value::as_str) == Some("dmsguard-remediator");
        let Some(hooks) = receiver
            .get_mut("webhook_configs")
            .and_then(Value::as_sequence_mut)
        else {
            continue;
        };
        for hook in hooks {
            let map = hook
                .as_mapping_mut()
                .context("a webhook_configs entry is not a mapping")?;
            if is_remediator {
                map.insert("url".into(), remediator_url.into());
                let auth = hook
                    .get_mut("http_config")
                    .and_then(|h| h.get_mut("authorization"))
                    .and_then(Value::as_mapping_mut)
                    .context("the remediator webhook has no http_config.authorization")?;
                anyhow::ensure!(
                    auth.contains_key("credentials_file"),
                    "the remediator webhook's token is not read from credentials_file"
                );
                auth.insert(
                    "credentials_file".into(),
                    token_file.display().to_string().into(),
                );
                remediator_hooks += 1;
            } else {
                map.insert("url".into(), oncall_url.into());
            }
        }
    }
    anyhow::ensure!(
        remediator_hooks > 0,
        "no webhook of a `dmsguard-remediator` receiver found"
    );
    Ok(serde_norway::to_string(&doc)?)
}

/// Sets the timing on the root route and on every child route that sets its own.
fn set_timing(route: &mut Value, timing: AlertmanagerTiming, root: bool) {
    if let Some(map) = route.as_mapping_mut() {
        for (key, value) in [
            ("group_wait", timing.group_wait),
            ("group_interval", timing.group_interval),
            ("repeat_interval", timing.repeat_interval),
        ] {
            if root || map.contains_key(key) {
                map.insert(key.into(), format_duration(value).into());
            }
        }
    }
    if let Some(children) = route.get_mut("routes").and_then(Value::as_sequence_mut) {
        for child in children {
            set_timing(child, timing, false);
        }
    }
}

/// A Prometheus duration (`90s`, `1h30m`, `500ms`) divided by `scale`, at least 1 ms unless 0.
pub fn scale_duration(text: &str, scale: u32) -> anyhow::Result<String> {
    let ms = parse_duration_ms(text)?;
    let scaled = if ms == 0 {
        0
    } else {
        (ms / u64::from(scale)).max(1)
    };
    Ok(format_duration(Duration::from_millis(scaled)))
}

/// `d` as a Prometheus duration: whole seconds as `Ns`, otherwise `Nms`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn parse_duration_ms(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    if text.is_empty() {
        bail!("empty duration");
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            bail!("`{text}` is not a duration");
        }
        let n: u64 = rest[..digits].parse()?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else {
            let unit = match rest.chars().next() {
                Some('s') => 1_000,
                Some('m') => 60_000,
                Some('h') => 3_600_000,
                Some('d') => 86_400_000,
                Some('w') => 7 * 86_400_000,
                Some('y') => 365 * 86_400_000,
                _ => bail!("`{text}` is not a duration (unit missing or unknown)"),
            };
            (unit, 1)
        };
        total += n * unit_ms;
        rest = &rest[len..];
    }
    Ok(total)
}

/// Divides the durations of a PromQL expression's ranges, subqueries and offsets by `scale`;
/// string literals are left alone.
pub fn scale_promql_durations(expr: &str, scale: u32) -> anyhow::Result<String> {
    let mut out = String::with_capacity(expr.len());
    let mut chars = expr.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                out.push(c);
                let mut escaped = false;
                for (_, d) in chars.by_ref() {
                    out.push(d);
                    if escaped {
                        escaped = false;
                    } else if d == '\\' && c != '`' {
                        escaped = true;
                    } else if d == c {
                        break;
                    }
                }
            }
            '[' => {
                let close = expr[i..]
                    .find(']')
                    .map(|j| i + j)
                    .with_context(|| format!("unclosed `[` in {expr}"))?;
                let inner = &expr[i + 1..close];
                let parts = inner
                    .split(':')
                    .map(|p| {
                        if p.trim().is_empty() {
                            Ok(String::new())
                        } else {
                            scale_duration(p, scale)
                        }
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                out.push('[');
                out.push_str(&parts.join(":"));
                out.push(']');
                while chars.peek().is_some_and(|(j, _)| *j <= close) {
                    chars.next();
                }
            }
            _ if c.is_ascii_alphabetic() || c == '_' => {
                let end = expr[i..]
                    .find(|d: char| !(d.is_ascii_alphanumeric() || d == '_' || d == ':'))
                    .map_or(expr.len(), |j| i + j);
                let word = &expr[i..end];
                out.push_str(word);
                while chars.peek().is_some_and(|(j, _)| *j < end) {
                    chars.next();
                }
                if word == "offset" {
                    while let Some((_, d)) = chars.next_if(|(_, d)| d.is_whitespace()) {
                        out.push(d);
                    }
                    if let Some((_, d)) = chars.next_if(|(_, d)| *d == '-') {
                        out.push(d);
                    }
                    let start = chars.peek().map_or(expr.len(), |(j, _)| *j);
                    let stop = expr[start..]
                        .find(|d: char| !d.is_ascii_alphanumeric())
                        .map_or(expr.len(), |j| start + j);
                    out.push_str(&scale_duration(&expr[start..stop], scale)?);
                    while chars.peek().is_some_and(|(j, _)| *j < stop) {
                        chars.next();
                    }
                }
            }
            _ => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_scale_and_format() {
        assert_eq!(scale_duration("10m", 60).unwrap(), "10s");
        assert_eq!(scale_duration("1h", 60).unwrap(), "60s");
        assert_eq!(scale_duration("0m", 60).unwrap(), "0s");
        assert_eq!(scale_duration("1m30s", 60).unwrap(), "1500ms");
        assert_eq!(scale_duration("5m", 1).unwrap(), "300s");
        assert!(scale_duration("5x", 60).is_err());
        assert!(scale_duration("m", 60).is_err());
    }

    #[test]
    fn ranges_subqueries_and_offsets_scale_but_strings_do_not() {
        let expr = r#"rate(x{a="[5m] offset 1h"}[1h] offset 5m) > 3 * max_over_time(y[10m:1m]) and z offset -2m"#;
        assert_eq!(
            scale_promql_durations(expr, 60).unwrap(),
            r#"rate(x{a="[5m] offset 1h"}[60s] offset 5s) > 3 * max_over_time(y[10s:1s]) and z offset -2s"#
        );
        assert_eq!(
            scale_promql_durations("dmsguard:probe_last_success:age_seconds > 1800", 60).unwrap(),
            "dmsguard:probe_last_success:age_seconds > 1800"
        );
    }

    #[test]
    fn alertmanager_timing_and_receivers_are_rewritten() {
        let yaml = "route:\n  receiver: oncall\n  group_wait: 30s\n  routes:\n    - receiver: dmsguard-remediator\n      group_interval: 1m\n      continue: true\n    - receiver: oncall\nreceivers:\n  - name: dmsguard-remediator\n    webhook_configs:\n      - url: http://127.0.0.1:9855/alerts\n        http_config:\n          authorization:\n            type: Bearer\n            credentials_file: /etc/x\n  - name: oncall\n    webhook_configs:\n      - url: http://127.0.0.1:9099/oncall\n";
        let out = alertmanager_for_test(
            yaml,
            "http://127.0.0.1:1/alerts",
            Path::new("/tmp/token"),
            "http://127.0.0.1:2/oncall",
            AlertmanagerTiming::default(),
        )
        .unwrap();
        let doc: Value = serde_norway::from_str(&out).unwrap();
        assert_eq!(doc["route"]["group_wait"].as_str(), Some("1s"));
        assert_eq!(doc["route"]["repeat_interval"].as_str(), Some("60s"));
        assert_eq!(
            doc["route"]["routes"][0]["group_interval"].as_str(),
            Some("1s")
        );
        assert!(doc["route"]["routes"][0].get("group_wait").is_none());
        assert_eq!(doc["route"]["routes"][0]["continue"].as_bool(), Some(true));
        let hook = &doc["receivers"][0]["webhook_configs"][0];
        assert_eq!(hook["url"].as_str(), Some("http://127.0.0.1:1/alerts"));
        assert_eq!(
            hook["http_config"]["authorization"]["credentials_file"].as_str(),
            Some("/tmp/token")
        );
        assert_eq!(
            doc["receivers"][1]["webhook_configs"][0]["url"].as_str(),
            Some("http://127.0.0.1:2/oncall")
        );
    }
}
