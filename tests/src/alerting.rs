//! Lab copies of the real alerting files: `alerts/dmsguard.rules.yml` with every duration (`for`,
//! range selectors, `offset`) divided by a speed-up factor, and `alerts/alertmanager.example.yml`
//! with its timers divided the same way and its receivers pointed at a lab remediator.
//!
//! The rule expressions, thresholds and routes stay the real ones: the lab shortens time, it does
//! not take other code paths. The demo and the chain tests load what this writes.

use std::path::{Path, PathBuf};

/// A file this module cannot rewrite as expected.
#[derive(Debug, thiserror::Error)]
pub enum AlertingError {
    #[error("line {line}: `{text}` is not a Prometheus duration")]
    Duration { line: usize, text: String },
    #[error("the Alertmanager config has no `{0}` receiver with a webhook url")]
    MissingReceiver(&'static str),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the lab Alertmanager delivers.
#[derive(Debug, Clone)]
pub struct Receivers {
    /// The remediator's webhook, e.g. `http://127.0.0.1:9855/alerts`.
    pub remediator_url: String,
    /// File holding the remediator's bearer token.
    pub token_file: PathBuf,
    /// Where the on-call receiver's webhooks go (any URL; failed deliveries are only logged).
    pub oncall_url: String,
}

/// The rules with every `for:`, `[range]` and `offset` divided by `factor`.
pub fn scale_rules(rules: &str, factor: u32) -> Result<String, AlertingError> {
    let mut out = String::with_capacity(rules.len());
    for (n, line) in rules.lines().enumerate() {
        let line_no = n + 1;
        let trimmed = line.trim_start();
        let scaled = if let Some(value) = trimmed.strip_prefix("for:") {
            let indent = &line[..line.len() - trimmed.len()];
            format!(
                "{indent}for: {}",
                scale_duration(value.trim(), factor, line_no)?
            )
        } else if trimmed.starts_with('#') {
            line.to_owned()
        } else {
            scale_promql_durations(line, factor, line_no)?
        };
        out.push_str(&scaled);
        out.push('\n');
    }
    Ok(out)
}

/// The example Alertmanager config with its timers divided by `factor` and its two receivers
/// (`dmsguard-remediator`, `oncall`) delivering to `receivers`.
pub fn lab_alertmanager(
    example: &str,
    receivers: &Receivers,
    factor: u32,
) -> Result<String, AlertingError> {
    const TIMERS: [&str; 4] = [
        "group_wait:",
        "group_interval:",
        "repeat_interval:",
        "resolve_timeout:",
    ];
    let mut out = String::with_capacity(example.len());
    let mut receiver: Option<String> = None;
    let (mut remediator_seen, mut oncall_seen) = (false, false);
    for (n, line) in example.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if let Some(name) = trimmed.strip_prefix("- name:") {
            receiver = Some(name.trim().trim_matches('"').to_owned());
        }
        let timer = TIMERS.iter().find(|t| trimmed.starts_with(**t));
        let rewritten = match (timer, receiver.as_deref()) {
            (Some(key), _) => {
                let value = trimmed[key.len()..].trim();
                format!("{indent}{key} {}", scale_duration(value, factor, n + 1)?)
            }
            (None, Some("dmsguard-remediator")) if trimmed.starts_with("- url:") => {
                remediator_seen = true;
                format!("{indent}- url: {}", receivers.remediator_url)
            }
            (None, Some("dmsguard-remediator")) if trimmed.starts_with("credentials_file:") => {
                format!(
                    "{indent}credentials_file: {}",
                    receivers.token_file.display()
                )
            }
            (None, Some("oncall")) if trimmed.starts_with("- url:") => {
                oncall_seen = true;
                format!("{indent}- url: {}", receivers.oncall_url)
            }
            _ => line.to_owned(),
        };
        out.push_str(&rewritten);
        out.push('\n');
    }
    if !remediator_seen {
        return Err(AlertingError::MissingReceiver("dmsguard-remediator"));
    }
    if !oncall_seen {
        return Err(AlertingError::MissingReceiver("oncall"));
    }
    Ok(out)
}

/// Writes `dmsguard.rules.yml` and `alertmanager.yml` for the lab into `dir`, from the repo's
/// `alerts/` directory; returns their paths.
pub fn write_lab_alerting(
    alerts_dir: &Path,
    dir: &Path,
    receivers: &Receivers,
    factor: u32,
) -> Result<(PathBuf, PathBuf), AlertingError> {
    let read = |name: &str| {
        let path = alerts_dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| AlertingError::Io { path, source })
    };
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| AlertingError::Io {
            path: path.clone(),
            source,
        })?;
        Ok::<_, AlertingError>(path)
    };
    let rules = scale_rules(&read("dmsguard.rules.yml")?, factor)?;
    let am = lab_alertmanager(&read("alertmanager.example.yml")?, receivers, factor)?;
    Ok((
        write("dmsguard.rules.yml", rules)?,
        write("alertmanager.yml", am)?,
    ))
}

/// Scales the durations inside `[...]` range selectors and after `offset` in one PromQL line.
fn scale_promql_durations(
    line: &str,
    factor: u32,
    line_no: usize,
) -> Result<String, AlertingError> {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    loop {
        let bracket = rest.find('[');
        let offset = find_word(rest, "offset ");
        match (bracket, offset) {
            (Some(b), o) if o.is_none_or(|o| b < o) => {
                let Some(close) = rest[b..].find(']') else {
                    out.push_str(rest);
                    break;
                };
                let inner = &rest[b + 1..b + close];
                out.push_str(&rest[..=b]);
                if parse_duration(inner).is_some() {
                    out.push_str(&scale_duration(inner, factor, line_no)?);
                } else {
                    out.push_str(inner);
                }
                out.push(']');
                rest = &rest[b + close + 1..];
            }
            (_, Some(o)) => {
                let start = o + "offset ".len();
                let len = rest[start..]
                    .find(|c: char| !c.is_ascii_alphanumeric())
                    .unwrap_or(rest.len() - start);
                out.push_str(&rest[..start]);
                out.push_str(&scale_duration(&rest[start..start + len], factor, line_no)?);
                rest = &rest[start + len..];
            }
            (None, None) => {
                out.push_str(rest);
                break;
            }
            (Some(_), None) => unreachable!("matched by the first arm"),
        }
    }
    Ok(out)
}

/// Byte offset of `word` in `text` where it starts a word.
fn find_word(text: &str, word: &str) -> Option<usize> {
    text.match_indices(word)
        .map(|(i, _)| i)
        .find(|&i| i == 0 || !text.as_bytes()[i - 1].is_ascii_alphanumeric())
}

fn scale_duration(text: &str, factor: u32, line: usize) -> Result<String, AlertingError> {
    let ms = parse_duration(text).ok_or_else(|| AlertingError::Duration {
        line,
        text: text.to_owned(),
    })?;
    Ok(format_duration(ms / u64::from(factor.max(1))))
}

/// A Prometheus duration (`1h30m`, `500ms`, `0m`) in milliseconds.
fn parse_duration(text: &str) -> Option<u64> {
    const UNITS: [(&str, u64); 7] = [
        ("ms", 1),
        ("s", 1_000),
        ("m", 60_000),
        ("h", 3_600_000),
        ("d", 86_400_000),
        ("w", 604_800_000),
        ("y", 31_536_000_000),
    ];
    let text = text.trim().trim_matches('"');
    if text.is_empty() {
        return None;
    }
    let mut total = 0u64;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, scale) = UNITS.iter().find(|(u, _)| rest.starts_with(u))?;
        total += number * scale;
        rest = &rest[unit.len()..];
    }
    Some(total)
}

fn format_duration(ms: u64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_scale() {
        assert_eq!(parse_duration("1h30m"), Some(5_400_000));
        assert_eq!(parse_duration("500ms"), Some(500));
        assert_eq!(parse_duration("0m"), Some(0));
        assert_eq!(parse_duration("m5"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(scale_duration("10s", 20, 1).unwrap(), "500ms");
        assert_eq!(scale_duration("1h", 20, 1).unwrap(), "180s");
    }

    #[test]
    fn rules_keep_expressions_and_scale_time() {
        let rules = "      - record: x:rate5m\n        expr: sum(rate(a[5m])) > 3 * rate(a[1h] offset 5m) and b[10m:1m]\n        for: 10m\n  # [5m] in a comment\n";
        let out = scale_rules(rules, 20).unwrap();
        assert_eq!(
            out,
            "      - record: x:rate5m\n        expr: sum(rate(a[15s])) > 3 * rate(a[180s] offset 15s) and b[10m:1m]\n        for: 30s\n  # [5m] in a comment\n"
        );
        assert!(matches!(
            scale_rules("for: soon\n", 2),
            Err(AlertingError::Duration { line: 1, .. })
        ));
    }

    #[test]
    fn alertmanager_receivers_are_rewritten() {
        let example = "route:\n  group_wait: 30s\nreceivers:\n  - name: dmsguard-remediator\n    webhook_configs:\n      - url: http://127.0.0.1:9855/alerts\n        http_config:\n          authorization:\n            credentials_file: /etc/x\n  - name: oncall\n    webhook_configs:\n      - url: http://127.0.0.1:9099/oncall\n";
        let receivers = Receivers {
            remediator_url: "http://127.0.0.1:1/alerts".into(),
            token_file: "/tmp/t".into(),
            oncall_url: "http://127.0.0.1:2/oncall".into(),
        };
        let out = lab_alertmanager(example, &receivers, 10).unwrap();
        assert!(out.contains("  group_wait: 3s\n"));
        assert!(out.contains("      - url: http://127.0.0.1:1/alerts\n"));
        assert!(out.contains("            credentials_file: /tmp/t\n"));
        assert!(out.contains("      - url: http://127.0.0.1:2/oncall\n"));
        assert!(matches!(
            lab_alertmanager("receivers:\n  - name: oncall\n", &receivers, 1),
            Err(AlertingError::MissingReceiver("dmsguard-remediator"))
        ));
    }
}
