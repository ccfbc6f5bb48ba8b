//! Handlers, each annotated for the OpenAPI document.

use crate::extract::ApiPath;
use crate::Shared;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ApiError, ErrorBody};
use crate::model::{HealthCheck, HealthReport, Liveness, NodeList, NodeView};

#[derive(OpenApi)]
#[openapi(
    info(title = "plexi", description = "Self-managing storage cluster: every node serves the whole API."),
    paths(
        liveness,
        metrics,
        openapi,
        whoami,
        list_nodes,
        node_health,
        crate::storage_routes::list_data,
        crate::storage_routes::put_data,
        crate::storage_routes::get_data,
        crate::storage_routes::delete_data,
        crate::storage_routes::data_info,
        crate::storage_routes::overview,
        crate::storage_routes::storage_nodes,
        crate::storage_routes::distribution,
        crate::storage_routes::rebalance,
        crate::storage_routes::cleanup,
        crate::storage_routes::reencrypt,
        crate::storage_routes::job,
        list_releases,
        publish_release,
        crate::update_routes::plan_update,
        crate::update_routes::execute_update,
        crate::update_routes::update_status,
        crate::update_routes::rollback_update,
        crate::update_routes::active_updates,
        crate::update_routes::update_history,
        crate::update_routes::get_maintenance,
        crate::update_routes::set_maintenance,
        crate::update_routes::audit,
        crate::update_routes::audit_verify,
        crate::update_routes::events,
        crate::update_routes::events_ticket,
        alerts,
    ),
    components(schemas(
        ErrorBody, crate::model::WhoAmI, crate::auth::Role, NodeList, NodeView, HealthReport, HealthCheck, Liveness,
        crate::model::ObjectList, crate::model::ObjectSummary, plexi_util::types::ReplicaHealth,
        crate::model::PutResult, crate::model::DataInfo, crate::model::ReplicaInfo,
        crate::model::StorageOverview, crate::model::StorageNodes, crate::model::StorageNode,
        crate::model::Distribution, crate::model::NodeHolding, crate::model::Holding,
        crate::model::Job, crate::model::JobPart,
        crate::model::ReleaseManifest, crate::model::SignedRelease,
        crate::model::ReleaseView, crate::model::ReleaseList,
        crate::model::PlanRequest, crate::model::UpdateOperation,
        crate::model::NodeUpdateStatus, crate::model::LeaseView, crate::model::UpdateList,
        crate::model::Maintenance, crate::model::MaintenanceRequest,
        crate::model::AuditEntry, crate::model::AuditList, crate::model::ClusterEvent,
        crate::model::AuditVerifyReport, crate::model::AuditChainReport,
        crate::model::AuditProblem, crate::model::AuditFault, crate::model::AuditChainStatus,
        crate::model::Alert, crate::model::AlertList, crate::model::EventTicket,
        crate::model::MemberEvent,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        add_guard_responses(openapi);
    }
}

/// The answers the middleware can give on every protected route, added to
/// each operation so the document lists every status the server has: 401
/// (no or unknown token), 403 (a read token on a mutating route), 429 (the
/// token is over its rate) and 503 (the node is at its concurrency bound).
fn add_guard_responses(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{Content, Ref, ResponseBuilder};
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                Content::new(Some(Ref::from_schema_name("ErrorBody"))),
            )
            .build()
    };
    for (path, item) in openapi.paths.paths.iter_mut() {
        if crate::PUBLIC_PATHS.contains(&path.as_str()) {
            continue;
        }
        let ops = [
            (&mut item.get, false),
            (&mut item.head, false),
            (&mut item.put, true),
            (&mut item.post, true),
            (&mut item.delete, true),
            (&mut item.patch, true),
        ];
        for (op, mutating) in ops {
            let Some(op) = op.as_mut() else { continue };
            let r = &mut op.responses.responses;
            r.entry("401".into())
                .or_insert_with(|| error("No token, or one no node knows").into());
            if mutating {
                r.entry("403".into())
                    .or_insert_with(|| error("The token's role may not change anything").into());
            }
            r.entry("429".into()).or_insert_with(|| {
                error("The token is over its request rate (Retry-After)").into()
            });
            r.entry("503".into()).or_insert_with(|| {
                error("Overloaded (too many requests at once) or draining (Retry-After)").into()
            });
        }
    }
}

pub(crate) fn protected(max_object_bytes: usize) -> Router<Shared> {
    use crate::storage_routes as s;
    use crate::update_routes as u;
    use axum::routing::post;
    Router::new()
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/clustering/nodes", get(list_nodes))
        .route(
            "/api/v1/clustering/nodes/{node_id}/health",
            get(node_health),
        )
        .route("/api/v1/clustering/storage/data", get(s::list_data))
        .route(
            "/api/v1/clustering/storage/data/{data_id}",
            get(s::get_data)
                .put(s::put_data)
                .delete(s::delete_data)
                .layer(DefaultBodyLimit::max(max_object_bytes)),
        )
        .route(
            "/api/v1/clustering/storage/data/{data_id}/info",
            get(s::data_info),
        )
        .route("/api/v1/clustering/storage/overview", get(s::overview))
        .route("/api/v1/clustering/storage/nodes", get(s::storage_nodes))
        .route(
            "/api/v1/clustering/storage/distribution",
            get(s::distribution),
        )
        .route(
            "/api/v1/clustering/storage/rebalance",
            axum::routing::post(s::rebalance),
        )
        .route(
            "/api/v1/clustering/storage/cleanup",
            axum::routing::post(s::cleanup),
        )
        .route(
            "/api/v1/clustering/storage/reencrypt",
            axum::routing::post(s::reencrypt),
        )
        .route("/api/v1/clustering/storage/jobs/{job_id}", get(s::job))
        .route(
            "/api/v1/clustering/updates/releases",
            get(list_releases).post(publish_release),
        )
        .route("/api/v1/clustering/updates/plan", post(u::plan_update))
        .route("/api/v1/clustering/updates/active", get(u::active_updates))
        .route("/api/v1/clustering/updates/history", get(u::update_history))
        .route(
            "/api/v1/clustering/updates/{operation_id}/execute",
            post(u::execute_update),
        )
        .route(
            "/api/v1/clustering/updates/{operation_id}/status",
            get(u::update_status),
        )
        .route(
            "/api/v1/clustering/updates/{operation_id}/rollback",
            post(u::rollback_update),
        )
        .route(
            "/api/v1/clustering/maintenance",
            get(u::get_maintenance).post(u::set_maintenance),
        )
        .route("/api/v1/clustering/audit", get(u::audit))
        .route("/api/v1/clustering/audit/verify", get(u::audit_verify))
        .route("/api/v1/events", get(u::events))
        .route("/api/v1/events/ticket", get(u::events_ticket))
        .route("/api/v1/clustering/alerts", get(alerts))
}

/// Active alerts (newest raised first) and recently resolved ones (newest
/// resolved first, at most `limit`, 1-1000, default 100); every node
/// derives the same alerts from gossiped and replicated facts.
#[utoipa::path(
    get,
    path = "/api/v1/clustering/alerts",
    params(crate::update_routes::LimitQuery),
    responses((status = 200, body = crate::model::AlertList), (status = 400, body = ErrorBody))
)]
pub(crate) async fn alerts(
    State(state): State<Shared>,
    q: Result<
        axum::extract::Query<crate::update_routes::LimitQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<Json<crate::model::AlertList>, ApiError> {
    let limit = crate::update_routes::parse_limit(
        q,
        crate::rules::ALERTS_LIMIT,
        crate::rules::ALERTS_LIMIT_DEFAULT,
    )?;
    state.cluster.alerts(limit).await.map(Json)
}

/// Liveness of the answering node. Needs no token.
#[utoipa::path(get, path = "/health", security(()), responses((status = 200, body = Liveness)))]
pub(crate) async fn liveness(State(state): State<Shared>) -> Json<Liveness> {
    Json(Liveness {
        status: plexi_util::types::LivenessStatus::Ok,
        node_id: state.cluster.local_node_id().into(),
        version: state.cluster.version(),
    })
}

/// Metrics in the Prometheus/OpenMetrics text format (read token).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")))]
pub(crate) async fn metrics(State(state): State<Shared>) -> Response {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &state.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            out,
        )
            .into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics_encoding_failed",
            e.to_string(),
        )
        .into_response(),
    }
}

/// This document (read token).
#[utoipa::path(get, path = "/api/v1/openapi.json", responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
pub(crate) async fn openapi(State(state): State<Shared>) -> Json<serde_json::Value> {
    Json(crate::schema::document(&crate::schema::DocLimits {
        max_replication_factor: state.storage.max_replication_factor(),
        max_object_bytes: state.storage.max_object_bytes(),
    }))
}

/// The token the request came with: its name and role (the panel shows
/// action buttons only to an admin).
#[utoipa::path(
    get,
    path = "/api/v1/whoami",
    responses((status = 200, body = crate::model::WhoAmI))
)]
pub(crate) async fn whoami(
    caller: Option<axum::Extension<crate::auth::Caller>>,
) -> Result<Json<crate::model::WhoAmI>, ApiError> {
    // Auth runs before every protected route, so a caller is always set.
    let axum::Extension(c) = caller.ok_or_else(ApiError::unauthorized)?;
    Ok(Json(crate::model::WhoAmI {
        name: c.name,
        role: c.role,
    }))
}

/// Every known node with its membership status.
#[utoipa::path(
    get,
    path = "/api/v1/clustering/nodes",
    responses(
        (status = 200, body = NodeList),
        (status = 401, body = ErrorBody),
    )
)]
pub(crate) async fn list_nodes(State(state): State<Shared>) -> Json<NodeList> {
    Json(NodeList {
        nodes: state.cluster.nodes(),
    })
}

/// A node's health checks, answered by any node about any node.
#[utoipa::path(
    get,
    path = "/api/v1/clustering/nodes/{node_id}/health",
    params(("node_id" = String, Path, description = "The node's name or peer id")),
    responses(
        (status = 200, body = HealthReport),
        (status = 404, body = ErrorBody),
    )
)]
pub(crate) async fn node_health(
    State(state): State<Shared>,
    ApiPath(node_id): ApiPath<String>,
) -> Result<Json<HealthReport>, ApiError> {
    crate::rules::NODE_ID.check(&node_id)?;
    state.cluster.node_health(&node_id).await.map(Json)
}

/// Published releases, newest first, with whether this node trusts each.
#[utoipa::path(get, path = "/api/v1/clustering/updates/releases", responses((status = 200, body = crate::model::ReleaseList)))]
pub(crate) async fn list_releases(
    State(state): State<Shared>,
) -> Result<Json<crate::model::ReleaseList>, ApiError> {
    state.updates.releases().await.map(Json)
}

/// Publishes a signed release whose binary was stored first as
/// `release.<version>.bin`. Untrusted keys, bad signatures, hash mismatches
/// and replays of older manifests are refused.
#[utoipa::path(
    post,
    path = "/api/v1/clustering/updates/releases",
    request_body = crate::model::SignedRelease,
    responses(
        (status = 201, body = crate::model::ReleaseView),
        (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody),
    )
)]
pub(crate) async fn publish_release(
    State(state): State<Shared>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    body: Result<Json<crate::model::SignedRelease>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<crate::model::ReleaseView>), ApiError> {
    let signed = crate::update_routes::json_body(body)?;
    let actor = caller.map(|axum::Extension(c)| c.name).unwrap_or_default();
    let view = state.updates.publish_release(signed, &actor).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method",
    )
}
