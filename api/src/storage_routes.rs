//! The storage endpoints: PUT, GET, DELETE and info of an object through
//! any node (input validated here into a [`PutRequest`]; the node
//! coordinates), and the cluster's overview, nodes, distribution,
//! rebalance and cleanup jobs.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::model::{DataInfo, PutRequest, PutResult};
use crate::ApiState;
use plexi_util::types::{Consistency, JobKind};

/// Query of `PUT .../data/{data_id}`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct PutQuery {
    /// Free-form type stored with the object (default `application/octet-stream`).
    pub data_type: Option<String>,
    /// strong | eventual | weak (default: the cluster's consistency_level).
    pub consistency: Option<String>,
    /// Total copies, 1..=max_replication_factor (default: the cluster's).
    pub replication_factor: Option<String>,
}

/// Query of `GET .../data/{data_id}`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct GetQuery {
    pub consistency: Option<String>,
}

use plexi_util::limits::{MAX_DATA_ID_BYTES, MAX_DATA_TYPE_BYTES};

pub fn validate_data_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_DATA_ID_BYTES || id.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad_request(
            "invalid_data_id",
            format!("data_id must be 1-{MAX_DATA_ID_BYTES} bytes without control characters"),
        ));
    }
    Ok(())
}

/// The `consistency` query parameter as the shared type (400 when unknown).
fn parse_consistency(c: &Option<String>) -> Result<Option<Consistency>, ApiError> {
    c.as_deref()
        .map(|s| {
            s.parse::<Consistency>().map_err(|e| {
                ApiError::bad_request("invalid_consistency", format!("consistency {e}"))
            })
        })
        .transpose()
}

#[utoipa::path(
    put,
    path = "/api/v1/clustering/storage/data/{data_id}",
    params(("data_id" = String, Path), PutQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, body = PutResult),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub(crate) async fn put_data(
    State(state): State<ApiState>,
    Path(data_id): Path<String>,
    Query(q): Query<PutQuery>,
    caller: Option<Extension<Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<PutResult>), ApiError> {
    let storage = &state.storage;
    validate_data_id(&data_id)?;
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the body exceeds the limit of {} bytes",
                    storage.max_object_bytes()
                ),
            )
        } else {
            ApiError::bad_request("invalid_body", e.body_text())
        }
    })?;
    let consistency = parse_consistency(&q.consistency)?;
    let replication_factor = match q.replication_factor.as_deref() {
        None => None,
        Some(s) => Some(s.parse::<u32>().map_err(|_| {
            ApiError::bad_request(
                "invalid_replication_factor",
                format!("replication_factor {s:?} is not a whole number"),
            )
        })?),
    };
    let data_type = q
        .data_type
        .unwrap_or_else(|| "application/octet-stream".into());
    if data_type.is_empty()
        || data_type.len() > MAX_DATA_TYPE_BYTES
        || data_type.chars().any(|c| c.is_control())
    {
        return Err(ApiError::bad_request(
            "invalid_data_type",
            format!("data_type must be 1-{MAX_DATA_TYPE_BYTES} bytes without control characters"),
        ));
    }
    let req = PutRequest {
        data_id,
        data_type,
        consistency,
        replication_factor,
        bytes,
        actor: caller.map(|Extension(c)| c.name).unwrap_or_default(),
    };
    let res = storage.put(req).await?;
    Ok((StatusCode::CREATED, Json(res)))
}

#[utoipa::path(
    get,
    path = "/api/v1/clustering/storage/data/{data_id}",
    params(("data_id" = String, Path), GetQuery),
    responses(
        (status = 200, description = "The object's bytes; ETag = blake3 checksum, X-Data-Type", content_type = "application/octet-stream"),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
pub(crate) async fn get_data(
    State(state): State<ApiState>,
    Path(data_id): Path<String>,
    Query(q): Query<GetQuery>,
) -> Result<Response, ApiError> {
    let storage = &state.storage;
    validate_data_id(&data_id)?;
    let consistency = parse_consistency(&q.consistency)?;
    let obj = storage.get(&data_id, consistency).await?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", obj.checksum)) {
        headers.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&obj.data_type) {
        headers.insert("x-data-type", v);
    }
    if let Ok(v) = HeaderValue::from_str(&obj.version) {
        headers.insert("x-data-version", v);
    }
    Ok((headers, obj.bytes).into_response())
}

#[utoipa::path(
    delete,
    path = "/api/v1/clustering/storage/data/{data_id}",
    params(("data_id" = String, Path), GetQuery),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody))
)]
pub(crate) async fn delete_data(
    State(state): State<ApiState>,
    Path(data_id): Path<String>,
    Query(q): Query<GetQuery>,
) -> Result<StatusCode, ApiError> {
    let storage = &state.storage;
    validate_data_id(&data_id)?;
    let consistency = parse_consistency(&q.consistency)?;
    storage.delete(&data_id, consistency).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/api/v1/clustering/storage/data/{data_id}/info",
    params(("data_id" = String, Path)),
    responses((status = 200, body = DataInfo), (status = 404, body = ErrorBody))
)]
pub(crate) async fn data_info(
    State(state): State<ApiState>,
    Path(data_id): Path<String>,
) -> Result<Json<DataInfo>, ApiError> {
    let storage = &state.storage;
    validate_data_id(&data_id)?;
    storage.info(&data_id).await.map(Json)
}

#[utoipa::path(get, path = "/api/v1/clustering/storage/overview", responses((status = 200, body = crate::model::StorageOverview)))]
pub(crate) async fn overview(
    State(state): State<ApiState>,
) -> Result<Json<crate::model::StorageOverview>, ApiError> {
    state.storage.overview().await.map(Json)
}

#[utoipa::path(get, path = "/api/v1/clustering/storage/nodes", responses((status = 200, body = crate::model::StorageNodes)))]
pub(crate) async fn storage_nodes(
    State(state): State<ApiState>,
) -> Result<Json<crate::model::StorageNodes>, ApiError> {
    state.storage.nodes().await.map(Json)
}

#[utoipa::path(get, path = "/api/v1/clustering/storage/distribution", responses((status = 200, body = crate::model::Distribution)))]
pub(crate) async fn distribution(
    State(state): State<ApiState>,
) -> Result<Json<crate::model::Distribution>, ApiError> {
    state.storage.distribution().await.map(Json)
}

fn actor(caller: Option<Extension<Caller>>) -> String {
    caller.map(|Extension(c)| c.name).unwrap_or_default()
}

/// Starts a cluster-wide rebalance: every node copies what the current
/// placement says it should hold, then drops what it no longer owns.
#[utoipa::path(post, path = "/api/v1/clustering/storage/rebalance", responses((status = 202, body = crate::model::Job), (status = 403, body = ErrorBody)))]
pub(crate) async fn rebalance(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
) -> Result<(StatusCode, Json<crate::model::Job>), ApiError> {
    let job = state
        .storage
        .start_job(JobKind::Rebalance, &actor(caller))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// Starts a cluster-wide cleanup: drop replicas no longer owned (once owners
/// confirmed), purge old tombstones, scrub bytes.
#[utoipa::path(post, path = "/api/v1/clustering/storage/cleanup", responses((status = 202, body = crate::model::Job), (status = 403, body = ErrorBody)))]
pub(crate) async fn cleanup(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
) -> Result<(StatusCode, Json<crate::model::Job>), ApiError> {
    let job = state
        .storage
        .start_job(JobKind::Cleanup, &actor(caller))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

#[utoipa::path(get, path = "/api/v1/clustering/storage/jobs/{job_id}", params(("job_id" = String, Path)), responses((status = 200, body = crate::model::Job), (status = 404, body = ErrorBody)))]
pub(crate) async fn job(
    State(state): State<ApiState>,
    Path(job_id): Path<String>,
) -> Result<Json<crate::model::Job>, ApiError> {
    state.storage.job(&job_id).await.map(Json)
}
