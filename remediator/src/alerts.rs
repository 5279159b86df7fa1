//! Alertmanager webhook payloads (version 4) and their validation.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;

/// The only webhook payload version accepted.
pub const WEBHOOK_VERSION: &str = "4";
/// Most labels one alert may carry.
pub const MAX_LABELS: usize = 64;
/// Longest label name accepted.
pub const MAX_LABEL_NAME_CHARS: usize = 128;
/// Longest label value accepted (DMS and Redshift identifiers are far shorter).
pub const MAX_LABEL_VALUE_CHARS: usize = 1024;
/// Most alerts one notification may carry.
pub const MAX_ALERTS: usize = 1000;

/// Why a payload was refused; the message is returned to the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("body is not a valid webhook payload: {0}")]
    Json(String),
    #[error("unsupported webhook version `{0}` (expected \"4\")")]
    Version(String),
    #[error("payload has no alerts")]
    NoAlerts,
    #[error("payload has {0} alerts (at most {MAX_ALERTS})")]
    TooManyAlerts(usize),
    #[error("alerts[{index}]: {reason}")]
    Alert { index: usize, reason: String },
}

/// The webhook body Alertmanager posts.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookPayload {
    pub version: String,
    #[serde(default)]
    pub group_key: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub receiver: String,
    pub alerts: Vec<RawAlert>,
}

/// One alert as sent, before validation.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawAlert {
    pub status: String,
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub starts_at: String,
    #[serde(default)]
    pub ends_at: Option<String>,
    pub fingerprint: String,
}

/// Whether the alert fires or has resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertStatus {
    Firing,
    Resolved,
}

/// A validated alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub status: AlertStatus,
    pub alertname: String,
    pub labels: BTreeMap<String, String>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: Option<DateTime<Utc>>,
    pub fingerprint: String,
}

impl Alert {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// Parses and validates a webhook body.
pub fn parse_payload(body: &[u8]) -> Result<Vec<Alert>, PayloadError> {
    let payload: WebhookPayload =
        serde_json::from_slice(body).map_err(|e| PayloadError::Json(e.to_string()))?;
    if payload.version != WEBHOOK_VERSION {
        return Err(PayloadError::Version(truncate(&payload.version, 32)));
    }
    if payload.alerts.is_empty() {
        return Err(PayloadError::NoAlerts);
    }
    if payload.alerts.len() > MAX_ALERTS {
        return Err(PayloadError::TooManyAlerts(payload.alerts.len()));
    }
    payload
        .alerts
        .into_iter()
        .enumerate()
        .map(|(index, raw)| validate(raw).map_err(|reason| PayloadError::Alert { index, reason }))
        .collect()
}

fn validate(raw: RawAlert) -> Result<Alert, String> {
    let status = match raw.status.as_str() {
        "firing" => AlertStatus::Firing,
        "resolved" => AlertStatus::Resolved,
        other => {
            return Err(format!(
                "status `{}` is neither firing nor resolved",
                truncate(other, 32)
            ))
        }
    };
    if raw.labels.len() > MAX_LABELS {
        return Err(format!(
            "{} labels (at most {MAX_LABELS})",
            raw.labels.len()
        ));
    }
    for (name, value) in &raw.labels {
        if name.chars().count() > MAX_LABEL_NAME_CHARS {
            return Err(format!(
                "a label name is longer than {MAX_LABEL_NAME_CHARS} characters"
            ));
        }
        if value.chars().count() > MAX_LABEL_VALUE_CHARS {
            return Err(format!(
                "label `{}` is longer than {MAX_LABEL_VALUE_CHARS} characters",
                truncate(name, 64)
            ));
        }
    }
    let alertname = raw
        .labels
        .get("alertname")
        .filter(|n| !n.is_empty())
        .cloned()
        .ok_or_else(|| "missing label `alertname`".to_owned())?;
    if raw.fingerprint.is_empty() || raw.fingerprint.len() > 64 {
        return Err("fingerprint must be 1 to 64 characters".to_owned());
    }
    let starts_at = parse_time(&raw.starts_at).ok_or_else(|| {
        format!(
            "startsAt `{}` is not an RFC 3339 time",
            truncate(&raw.starts_at, 40)
        )
    })?;
    // Alertmanager sends the zero time for "no end"; anything unparsable is treated the same.
    let ends_at = raw
        .ends_at
        .as_deref()
        .and_then(parse_time)
        .filter(|t| t.timestamp() > 0);
    Ok(Alert {
        status,
        alertname,
        labels: raw.labels,
        starts_at,
        ends_at,
        fingerprint: raw.fingerprint,
    })
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(alert: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "version": "4", "groupKey": "{}:{}", "status": "firing", "receiver": "r",
            "alerts": [alert]
        }))
        .unwrap()
    }

    fn alert() -> serde_json::Value {
        serde_json::json!({
            "status": "firing",
            "labels": {"alertname": "DMSTaskStalled", "task": "orders-cdc"},
            "annotations": {},
            "startsAt": "2026-11-25T01:00:00.123456789Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": "abc123"
        })
    }

    #[test]
    fn accepts_an_alertmanager_payload() {
        let alerts = parse_payload(&payload(alert())).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].alertname, "DMSTaskStalled");
        assert_eq!(alerts[0].label("task"), Some("orders-cdc"));
        assert_eq!(alerts[0].status, AlertStatus::Firing);
        assert_eq!(alerts[0].ends_at, None);
    }

    #[test]
    fn refuses_wrong_version_missing_alertname_bad_time_and_long_labels() {
        let mut body: serde_json::Value = serde_json::from_slice(&payload(alert())).unwrap();
        body["version"] = "3".into();
        assert_eq!(
            parse_payload(&serde_json::to_vec(&body).unwrap()),
            Err(PayloadError::Version("3".into()))
        );

        let mut a = alert();
        a["labels"].as_object_mut().unwrap().remove("alertname");
        let err = parse_payload(&payload(a)).unwrap_err().to_string();
        assert!(err.contains("alertname"), "{err}");

        let mut a = alert();
        a["startsAt"] = "yesterday".into();
        assert!(parse_payload(&payload(a))
            .unwrap_err()
            .to_string()
            .contains("startsAt"));

        let mut a = alert();
        a["labels"]["task"] = "x".repeat(MAX_LABEL_VALUE_CHARS + 1).into();
        assert!(parse_payload(&payload(a))
            .unwrap_err()
            .to_string()
            .contains("`task`"));

        let mut a = alert();
        a["labels"]["task"] = 7.into();
        assert!(matches!(
            parse_payload(&payload(a)),
            Err(PayloadError::Json(_))
        ));
    }
}
