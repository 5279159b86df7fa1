//! The HTTP API: `POST /alerts` (Alertmanager webhook), `/metrics`, `/healthz`, `/` status page,
//! `GET /jobs` (recent jobs with their resume obligations, as JSON).
//!
//! The webhook only validates, records jobs in the ledger and wakes the worker: no fix ever
//! runs on the request path, so acknowledgements stay fast whatever the fixes do.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use dmsguard_pipeline::reload::Reloader;
use dmsguard_pipeline::report::error_chain;
use dmsguard_pipeline::secret::Secret;
use dmsguard_pipeline::web::AuthenticatedUser;
use prometheus_client::registry::Registry;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::alerts::{parse_payload, AlertStatus};
use crate::ledger::{Admission, AlertRef, Ledger, NewJob};
use crate::metrics::{Metrics, WebhookResult};
use crate::preflight_gate::Verdict;
use crate::routing::{Route, Router};
use crate::status_page;
use crate::worker::Worker;

/// Paths that check the bearer token themselves: with basic auth users configured, a request
/// there may carry either a user's credentials or the token.
pub const BEARER_PATHS: &[&str] = &["/alerts", "/-/reload"];

/// Shared state of the handlers.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

struct Inner {
    token: Secret,
    ledger: Ledger,
    router: Router,
    metrics: Metrics,
    registry: Registry,
    worker: Worker,
    reloader: Option<Reloader>,
}

impl ApiState {
    /// Serves `POST /-/reload` with `reloader`.
    pub fn with_reloader(self, reloader: Option<Reloader>) -> Self {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|_| {
            unreachable!("with_reloader is called once, before the state is shared")
        });
        Self {
            inner: Arc::new(Inner { reloader, ..inner }),
        }
    }

    pub fn new(
        token: Secret,
        ledger: Ledger,
        router: Router,
        metrics: Metrics,
        registry: Registry,
        worker: Worker,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                token,
                ledger,
                router,
                metrics,
                registry,
                worker,
                reloader: None,
            }),
        }
    }
}

/// The API's routes; bodies of `POST /alerts` above `max_body_bytes` get 413.
pub fn router(state: ApiState, max_body_bytes: usize) -> axum::Router {
    axum::Router::new()
        .route(
            "/alerts",
            post(receive_alerts).layer(DefaultBodyLimit::max(max_body_bytes)),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/", get(status))
        .route("/jobs", get(jobs))
        .route("/-/reload", post(reload))
        .with_state(state)
}

/// A refused request: status, metric result and the reason returned to the sender.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    result: Option<WebhookResult>,
    reason: String,
}

impl Refusal {
    fn new(status: StatusCode, result: WebhookResult, reason: impl Into<String>) -> Self {
        Self {
            status,
            result: Some(result),
            reason: reason.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({ "status": "error", "reason": self.reason })),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Whether the request carries `Authorization: Bearer <token>`, compared in constant time.
fn authorized(headers: &HeaderMap, token: &Secret) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, provided)) = value.split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && bool::from(provided.trim().as_bytes().ct_eq(token.expose().as_bytes()))
}

async fn receive_alerts(
    State(state): State<ApiState>,
    user: Option<Extension<AuthenticatedUser>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match handle_alerts(&state, user.is_some(), &headers, body).await {
        Ok(response) => response,
        Err(refusal) => {
            if let Some(result) = refusal.result {
                state.inner.metrics.webhook(result);
            }
            if refusal.status.is_server_error() {
                tracing::error!(status = %refusal.status, reason = %refusal.reason, "Webhook not recorded.");
            } else {
                tracing::warn!(status = %refusal.status, reason = %refusal.reason, "Webhook refused.");
            }
            refusal.into_response()
        }
    }
}

async fn handle_alerts(
    state: &ApiState,
    basic_auth_user: bool,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refusal> {
    let inner = &state.inner;
    // A web config basic auth user (checked by the web layer) stands in for the token.
    if !basic_auth_user && !authorized(headers, &inner.token) {
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            WebhookResult::Unauthorized,
            "missing or wrong bearer token",
        ));
    }
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                WebhookResult::TooLarge,
                "body is larger than remediator.max_body_bytes",
            )
        } else {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                WebhookResult::Invalid,
                rejection.body_text(),
            )
        }
    })?;
    let alerts = parse_payload(&body).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            WebhookResult::Invalid,
            error_chain(&e),
        )
    })?;
    // Route everything first: a payload is taken whole or refused whole.
    let mut routed = Vec::with_capacity(alerts.len());
    for (index, alert) in alerts.into_iter().enumerate() {
        let route = match alert.status {
            AlertStatus::Resolved => None,
            AlertStatus::Firing => Some(inner.router.route(&alert).map_err(|reason| {
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    WebhookResult::Invalid,
                    format!("alerts[{index}]: {reason}"),
                )
            })?),
        };
        routed.push((alert, route));
    }

    let ledger_down = |error: crate::ledger::LedgerError| Refusal {
        status: StatusCode::SERVICE_UNAVAILABLE,
        result: None,
        reason: format!("job ledger unavailable: {}", error_chain(&error)),
    };
    let mut jobs = Vec::new();
    let mut ignored = Vec::new();
    let mut refusals = Vec::new();
    let (mut duplicates, mut resolved, mut unknown) = (0u32, 0u32, 0u32);
    for (alert, route) in routed {
        let alert_ref = AlertRef {
            fingerprint: alert.fingerprint.clone(),
            starts_at: alert.starts_at,
            alertname: alert.alertname.clone(),
        };
        let labels = serde_json::to_value(&alert.labels).unwrap_or_else(|_| json!({}));
        match route {
            None => {
                inner
                    .ledger
                    .record_resolution(&alert_ref, alert.ends_at, &labels)
                    .await
                    .map_err(ledger_down)?;
                tracing::info!(alertname = %alert.alertname, fingerprint = %alert.fingerprint, "Alert resolved.");
                inner.metrics.webhook(WebhookResult::Resolved);
                resolved += 1;
            }
            Some(Route::Unknown) => {
                tracing::info!(alertname = %alert.alertname, fingerprint = %alert.fingerprint, "Alert has no route; acknowledged, nothing runs.");
                inner.metrics.webhook(WebhookResult::UnknownAlert);
                unknown += 1;
            }
            Some(Route::UnknownTarget { fix, reason }) => {
                tracing::warn!(alertname = %alert.alertname, fingerprint = %alert.fingerprint, fix = %fix, %reason, "Alert names nothing configured; ignored, no job.");
                inner.metrics.webhook(WebhookResult::UnknownTarget);
                ignored.push(json!({
                    "alertname": alert.alertname,
                    "fingerprint": alert.fingerprint,
                    "result": WebhookResult::UnknownTarget.as_str(),
                    "reason": reason,
                }));
            }
            Some(Route::Fix {
                fix,
                target,
                enabled,
                dry_run,
            }) => {
                // A fix the preflight checks disabled: the alert is recorded as a refused job
                // naming the failed checks and acknowledged (2xx), so Alertmanager does not
                // retry it; a repeat once the fix is enabled again queues it.
                let refused = match inner.worker.gate().verdict(fix) {
                    Verdict::Refused(failed) if enabled => {
                        Some(crate::preflight_gate::refusal(fix, &failed))
                    }
                    _ => None,
                };
                let admission = match (&refused, enabled) {
                    (Some((summary, details)), _) => Admission::Refused {
                        summary: summary.clone(),
                        details: details.clone(),
                    },
                    (None, true) => Admission::Queued,
                    (None, false) => Admission::Disabled,
                };
                let new = NewJob {
                    alert: Some(alert_ref),
                    fix,
                    target,
                    labels,
                    dry_run,
                    manual: false,
                    admission,
                };
                match inner.ledger.insert_job(&new).await.map_err(ledger_down)? {
                    Some(job) if refused.is_some() => {
                        let reason = refused.map(|(summary, _)| summary).unwrap_or_default();
                        tracing::warn!(job = job.id, alertname = %alert.alertname, fix = %fix, target = %job.target.key, %reason, "Alert refused: its fix is disabled by failing preflight checks.");
                        inner.metrics.webhook(WebhookResult::Refused);
                        inner.worker.gate().count_refused(fix);
                        refusals.push(json!({
                            "alertname": alert.alertname,
                            "fingerprint": alert.fingerprint,
                            "fix": fix.as_str(),
                            "job": job.id,
                            "reason": reason,
                        }));
                    }
                    Some(job) => {
                        tracing::info!(job = job.id, alertname = %alert.alertname, fix = %fix, target = %job.target.key, enabled, dry_run, "Job queued.");
                        inner.metrics.webhook(WebhookResult::Accepted);
                        jobs.push(job.id);
                    }
                    None => {
                        tracing::debug!(alertname = %alert.alertname, fingerprint = %alert.fingerprint, "Alert already has a job.");
                        inner.metrics.webhook(WebhookResult::Duplicate);
                        duplicates += 1;
                    }
                }
            }
        }
    }
    if !jobs.is_empty() {
        inner.worker.wake();
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "status": "accepted",
            "jobs": jobs,
            "duplicates": duplicates,
            "resolved": resolved,
            "unknown": unknown,
            "ignored": ignored,
            "refused": refusals,
        })),
    )
        .into_response())
}

/// `POST /-/reload`: the bearer token or a web config user; 200 applied, 500 refused.
async fn reload(
    State(state): State<ApiState>,
    user: Option<Extension<AuthenticatedUser>>,
    headers: HeaderMap,
) -> Response {
    if user.is_none() && !authorized(&headers, &state.inner.token) {
        return Refusal {
            status: StatusCode::UNAUTHORIZED,
            result: None,
            reason: "missing or wrong bearer token".into(),
        }
        .into_response();
    }
    match &state.inner.reloader {
        Some(reloader) => dmsguard_pipeline::reload::reload_response(reloader).await,
        None => (StatusCode::NOT_FOUND, "reload is not set up\n").into_response(),
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    dmsguard_pipeline::service::metrics_response(&state.inner.registry)
}

/// Healthy when the ledger answers: without it no alert can be recorded.
async fn healthz(State(state): State<ApiState>) -> Response {
    let check = tokio::time::timeout(
        Duration::from_secs(2),
        state.inner.ledger.pending_step_count(),
    )
    .await;
    match check {
        Ok(Ok(_)) => (StatusCode::OK, "ok\n").into_response(),
        Ok(Err(error)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("ledger unavailable: {}\n", error_chain(&error)),
        )
            .into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "ledger timed out\n").into_response(),
    }
}

async fn status(State(state): State<ApiState>) -> Response {
    let ledger = &state.inner.ledger;
    let page = async {
        let jobs = ledger.recent_jobs(50).await?;
        let steps = ledger.steps(false, 100).await?;
        let mut resumes = ledger.resumes(true, 100).await?;
        let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
        for r in ledger.resumes_of_jobs(&ids).await? {
            if r.state != "owed" {
                resumes.push(r);
            }
        }
        Ok::<_, crate::ledger::LedgerError>(status_page::render(
            &jobs,
            &steps,
            &resumes,
            chrono::Utc::now(),
        ))
    };
    match page.await {
        Ok(html) => Html(html).into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("ledger unavailable: {}\n", error_chain(&error)),
        )
            .into_response(),
    }
}

/// Query of `GET /jobs`.
#[derive(Debug, serde::Deserialize)]
struct JobsQuery {
    /// How many jobs, newest first (default 50, at most 500).
    limit: Option<i64>,
}

/// Recent jobs, newest first, each with the resume obligations it left (`resumes`), and the
/// number of resumes owed now (`resumes_owed`).
async fn jobs(State(state): State<ApiState>, Query(query): Query<JobsQuery>) -> Response {
    let ledger = &state.inner.ledger;
    let listing = async {
        let jobs = ledger
            .recent_jobs(query.limit.unwrap_or(50).clamp(1, 500))
            .await?;
        let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
        let resumes = ledger.resumes_of_jobs(&ids).await?;
        let owed = ledger.owed_resume_count().await?;
        Ok::<_, crate::ledger::LedgerError>(json!({
            "jobs": jobs
                .iter()
                .map(|j| {
                    let mut job = serde_json::to_value(j).unwrap_or_else(|_| json!({}));
                    job["resumes"] = json!(resumes
                        .iter()
                        .filter(|r| r.job_id == j.id)
                        .collect::<Vec<_>>());
                    job
                })
                .collect::<Vec<_>>(),
            "resumes_owed": owed,
        }))
    };
    match listing.await {
        Ok(body) => Json(body).into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("ledger unavailable: {}\n", error_chain(&error)),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn bearer_token_must_match_exactly() {
        let token = Secret::new("s3cret");
        assert!(authorized(&headers("Bearer s3cret"), &token));
        assert!(authorized(&headers("bearer s3cret"), &token));
        assert!(!authorized(&headers("Bearer s3cre"), &token));
        assert!(!authorized(&headers("Bearer s3cretx"), &token));
        assert!(!authorized(&headers("Basic s3cret"), &token));
        assert!(!authorized(&headers("s3cret"), &token));
        assert!(!authorized(&HeaderMap::new(), &token));
    }
}
