//! The update endpoints: plans and operations, maintenance mode, the audit
//! log and the server-sent event stream. Input is checked here (JSON shape,
//! limits, identifiers); the node validates plans against the cluster.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::{Extension, Json};
use futures::Stream;
use plexi_util::types::{NodeId, UpdateStrategy, UpdateType};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::model::{
    AuditList, AuditVerifyReport, ClusterEvent, EventTicket, Maintenance, MaintenanceRequest,
    PlanRequest, UpdateList, UpdateOperation,
};
use crate::rules;
use crate::Shared;

/// Keep-alive comment period of the event stream.
pub const EVENTS_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Query with an optional `limit`, parsed here so a bad value gets the JSON
/// error shape.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LimitQuery {
    /// How many entries, newest first.
    pub limit: Option<String>,
}

/// The `limit` query parameter under `rule`, `default` when absent.
pub(crate) fn parse_limit(
    q: Result<Query<LimitQuery>, QueryRejection>,
    rule: rules::IntRule,
    default: u64,
) -> Result<usize, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    match q.limit {
        None => Ok(default as usize),
        Some(raw) => Ok(rule.parse(&raw)? as usize),
    }
}

/// A JSON body, or the JSON error shape: 415 without a JSON content type,
/// 413 past the body limit, 400 for anything else (syntax, wrong types,
/// unknown fields).
pub(crate) fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    match body {
        Ok(Json(v)) => Ok(v),
        Err(JsonRejection::MissingJsonContentType(e)) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            e.body_text(),
        )),
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            e.body_text(),
        )),
        Err(e) => Err(ApiError::bad_request("invalid_body", e.body_text())),
    }
}

fn operation_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) =
        path.map_err(|e| ApiError::bad_request("invalid_operation_id", e.body_text()))?;
    rules::OPERATION_ID.check(&id)?;
    Ok(id)
}

fn actor(caller: Option<Extension<Caller>>) -> String {
    caller.map(|Extension(c)| c.name).unwrap_or_default()
}

/// The body of `POST .../updates/plan` as sent: [`PlanRequest`] with its
/// names still text, so that a wrong `update_type` or `strategy` gets its
/// own error code naming the field and the allowed values, rather than the
/// generic `invalid_body` a typed field would give. Same fields, defaults
/// and unknown-field rule as [`PlanRequest`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlanBody {
    target_version: String,
    #[serde(default = "default_update_type")]
    update_type: String,
    #[serde(default = "default_strategy")]
    strategy: String,
    #[serde(default)]
    target_nodes: Vec<String>,
    #[serde(default)]
    force: bool,
}

fn default_update_type() -> String {
    UpdateType::Upgrade.to_string()
}

fn default_strategy() -> String {
    UpdateStrategy::Rolling.to_string()
}

/// `value` as one of the names of `T`, else 400 `code` naming `field` and
/// the allowed values.
fn one_of<T: std::str::FromStr>(
    code: &'static str,
    field: &str,
    value: &str,
    allowed: &[&str],
) -> Result<T, ApiError> {
    value.parse().map_err(|_| {
        ApiError::bad_request(
            code,
            format!("{field} {value:?} is not one of {}", allowed.join(", ")),
        )
    })
}

fn check_plan(body: PlanBody) -> Result<PlanRequest, ApiError> {
    rules::VERSION.check(&body.target_version)?;
    let update_type = one_of(
        "invalid_update_type",
        "update_type",
        &body.update_type,
        UpdateType::NAMES,
    )?;
    let strategy = one_of(
        "invalid_strategy",
        "strategy",
        &body.strategy,
        UpdateStrategy::NAMES,
    )?;
    for node in &body.target_nodes {
        rules::TARGET_NODE.check(node)?;
    }
    Ok(PlanRequest {
        target_version: body.target_version,
        update_type,
        strategy,
        target_nodes: body.target_nodes.into_iter().map(NodeId::from).collect(),
        force: body.force,
    })
}

/// Plans an update: checks the release, the targets and compatibility, and
/// stores the operation in the cluster with status `planned`. Breaking
/// changes without `force`: 409 naming them.
#[utoipa::path(
    post,
    path = "/api/v1/clustering/updates/plan",
    request_body = PlanRequest,
    responses(
        (status = 201, body = UpdateOperation),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "No such release or node"),
        (status = 409, body = ErrorBody, description = "Breaking changes without force, or another operation is active"),
    )
)]
pub(crate) async fn plan_update(
    State(state): State<Shared>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<PlanBody>, JsonRejection>,
) -> Result<(StatusCode, Json<UpdateOperation>), ApiError> {
    let req = check_plan(json_body(body)?)?;
    let op = state.updates.plan(req, &actor(caller)).await?;
    Ok((StatusCode::CREATED, Json(op)))
}

/// Starts a planned operation; follow it with the status endpoint or the
/// event stream.
#[utoipa::path(
    post,
    path = "/api/v1/clustering/updates/{operation_id}/execute",
    params(("operation_id" = String, Path)),
    responses(
        (status = 202, body = UpdateOperation),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Not planned, or maintenance mode is on"),
    )
)]
pub(crate) async fn execute_update(
    State(state): State<Shared>,
    caller: Option<Extension<Caller>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<UpdateOperation>), ApiError> {
    let id = operation_id(path)?;
    let op = state.updates.execute(&id, &actor(caller)).await?;
    Ok((StatusCode::ACCEPTED, Json(op)))
}

/// The operation as it stands: status, phase and progress of every node.
#[utoipa::path(
    get,
    path = "/api/v1/clustering/updates/{operation_id}/status",
    params(("operation_id" = String, Path)),
    responses((status = 200, body = UpdateOperation), (status = 404, body = ErrorBody))
)]
pub(crate) async fn update_status(
    State(state): State<Shared>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<UpdateOperation>, ApiError> {
    let id = operation_id(path)?;
    state.updates.status(&id).await.map(Json)
}

/// Rolls an operation back (running, failed or completed); repeating it is
/// harmless.
#[utoipa::path(
    post,
    path = "/api/v1/clustering/updates/{operation_id}/rollback",
    params(("operation_id" = String, Path)),
    responses(
        (status = 202, body = UpdateOperation),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    )
)]
pub(crate) async fn rollback_update(
    State(state): State<Shared>,
    caller: Option<Extension<Caller>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<UpdateOperation>), ApiError> {
    let id = operation_id(path)?;
    let op = state.updates.rollback(&id, &actor(caller)).await?;
    Ok((StatusCode::ACCEPTED, Json(op)))
}

/// Operations that are planned, running or rolling back.
#[utoipa::path(get, path = "/api/v1/clustering/updates/active", responses((status = 200, body = UpdateList)))]
pub(crate) async fn active_updates(
    State(state): State<Shared>,
) -> Result<Json<UpdateList>, ApiError> {
    state.updates.active().await.map(Json)
}

/// Past and present operations, newest first (`limit` 1-1000, default 10).
#[utoipa::path(
    get,
    path = "/api/v1/clustering/updates/history",
    params(LimitQuery),
    responses((status = 200, body = UpdateList), (status = 400, body = ErrorBody))
)]
pub(crate) async fn update_history(
    State(state): State<Shared>,
    q: Result<Query<LimitQuery>, QueryRejection>,
) -> Result<Json<UpdateList>, ApiError> {
    let limit = parse_limit(q, rules::HISTORY_LIMIT, rules::HISTORY_LIMIT_DEFAULT)?;
    state.updates.history(limit).await.map(Json)
}

/// Whether the cluster is in maintenance mode, since when and until when.
#[utoipa::path(get, path = "/api/v1/clustering/maintenance", responses((status = 200, body = Maintenance)))]
pub(crate) async fn get_maintenance(
    State(state): State<Shared>,
) -> Result<Json<Maintenance>, ApiError> {
    state.updates.maintenance().await.map(Json)
}

/// Enters (`enabled: true`) or leaves maintenance mode. It ends by itself
/// after `timeout_seconds` (default `maintenance_mode_timeout_seconds`).
#[utoipa::path(
    post,
    path = "/api/v1/clustering/maintenance",
    request_body = MaintenanceRequest,
    responses(
        (status = 200, body = Maintenance),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
    )
)]
pub(crate) async fn set_maintenance(
    State(state): State<Shared>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<MaintenanceRequest>, JsonRejection>,
) -> Result<Json<Maintenance>, ApiError> {
    let req = json_body(body)?;
    if let Some(t) = req.timeout_seconds {
        rules::MAINTENANCE_TIMEOUT.check(t)?;
    }
    if let Some(r) = &req.reason {
        rules::REASON.check(r)?;
    }
    state
        .updates
        .set_maintenance(req, &actor(caller))
        .await
        .map(Json)
}

/// The audit log of every change, newest first (`limit` 1-10000, default
/// 100), and whether every hash chain this node holds verifies.
#[utoipa::path(
    get,
    path = "/api/v1/clustering/audit",
    params(LimitQuery),
    responses((status = 200, body = AuditList), (status = 400, body = ErrorBody))
)]
pub(crate) async fn audit(
    State(state): State<Shared>,
    q: Result<Query<LimitQuery>, QueryRejection>,
) -> Result<Json<AuditList>, ApiError> {
    let limit = parse_limit(q, rules::AUDIT_LIMIT, rules::AUDIT_LIMIT_DEFAULT)?;
    state.updates.audit(limit).await.map(Json)
}

/// Checks every audit chain the answering node holds from its first entry:
/// hash, link, seq continuity, signature, signer = chain owner, and the end
/// against the highest head its owner signed. One report per chain, with
/// the first bad entry; `ok` is false when any chain failed.
#[utoipa::path(
    get,
    path = "/api/v1/clustering/audit/verify",
    responses((status = 200, body = AuditVerifyReport), (status = 503, body = ErrorBody))
)]
pub(crate) async fn audit_verify(
    State(state): State<Shared>,
) -> Result<Json<AuditVerifyReport>, ApiError> {
    state.updates.audit_verify().await.map(Json)
}

/// An SSE event name: the event's kind when it is a plain token, else `message`.
fn event_name(kind: &str) -> &str {
    let plain = !kind.is_empty()
        && kind.len() <= 64
        && kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if plain {
        kind
    } else {
        "message"
    }
}

/// The stream behind `GET /events`: a `connected` comment first (so the
/// headers reach the client at once), then every cluster event. A receiver
/// that fell behind gets an `event: lagged` notice with the number of events
/// it missed and goes on; the stream ends only when the node stops sending.
pub fn event_stream(
    rx: tokio::sync::broadcast::Receiver<ClusterEvent>,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let hello = futures::stream::once(async { Ok(Event::default().comment("connected")) });
    let events = futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(ev) => match Event::default().event(event_name(&ev.kind)).json_data(&ev) {
                    Ok(e) => return Some((Ok(e), rx)),
                    Err(e) => tracing::warn!(error = %e, kind = %ev.kind, "unencodable event"),
                },
                Err(RecvError::Lagged(skipped)) => {
                    let notice = Event::default()
                        .event("lagged")
                        .data(serde_json::json!({ "skipped": skipped }).to_string());
                    return Some((Ok(notice), rx));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    futures::StreamExt::chain(hello, events)
}

/// Query of `GET /events`.
#[derive(Debug, Default, Deserialize)]
pub struct TicketQuery {
    pub ticket: Option<String>,
}

/// Server-sent events: `event: <kind>` with the JSON of a ClusterEvent
/// (update.progress, update.status, maintenance, audit, member,
/// alert.raised, alert.resolved, ...); `event: lagged` when this client
/// fell behind and events were skipped. A browser, whose EventSource cannot
/// send an Authorization header, opens it with `?ticket=` from
/// `GET /events/ticket` instead (this node's ticket, unexpired).
#[utoipa::path(
    get,
    path = "/api/v1/events",
    params(("ticket" = Option<String>, Query, description = "A ticket from GET /api/v1/events/ticket of this node, used instead of the Authorization header; valid for 60 s to open a stream (only this route accepts one)")),
    responses(
        (status = 200, body = ClusterEvent, content_type = "text/event-stream", description = "One `event: <kind>` with the ClusterEvent as JSON data per event; keep-alive comments every 15 s"),
        (status = 400, body = ErrorBody, description = "invalid_ticket: the ticket breaks its schema"),
        (status = 401, body = ErrorBody, description = "No valid token, or the ticket is expired, forged or from another node"),
        (status = 503, body = ErrorBody, description = "Too many event streams open on this node (overloaded)"),
    )
)]
pub(crate) async fn events(
    State(state): State<Shared>,
    crate::extract::ApiQuery(q): crate::extract::ApiQuery<TicketQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // Verified by the auth layer when it stood in for a token; here only
    // its shape, so a bad one is refused even beside a bearer token.
    if let Some(t) = &q.ticket {
        rules::TICKET.check(t)?;
    }
    let Some(permit) = state.limiter.admit_stream() else {
        let max = state.limiter.limits().max_event_streams;
        return Err(ApiError::unavailable(
            "overloaded",
            format!("this node has its maximum of {max} event streams open; use another node or retry later"),
        ));
    };
    // The stream holds the permit until the client goes away.
    let stream = futures::StreamExt::map(event_stream(state.updates.events()), move |e| {
        let _held = &permit;
        e
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(EVENTS_KEEP_ALIVE)))
}

/// A ticket that opens `GET /events?ticket=...` on this node without an
/// Authorization header, for 60 s, as the calling token (its name and
/// role). Any valid token may ask; a stream opened stays open after the
/// ticket expires.
#[utoipa::path(
    get,
    path = "/api/v1/events/ticket",
    responses((status = 200, body = EventTicket))
)]
pub(crate) async fn events_ticket(
    State(state): State<Shared>,
    caller: Option<Extension<Caller>>,
) -> Result<Json<EventTicket>, ApiError> {
    let Some(Extension(caller)) = caller else {
        return Err(ApiError::unauthorized());
    };
    let (ticket, expires_ms) = state.tickets.issue(&caller, plexi_util::clock::wall_ms());
    Ok(Json(EventTicket {
        ticket,
        expires_at: plexi_util::clock::rfc3339_ms(expires_ms),
    }))
}
