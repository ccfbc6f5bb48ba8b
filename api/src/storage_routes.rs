//! The storage endpoints: PUT, GET, DELETE and info of an object through
//! any node (input validated here into a [`PutRequest`]; the node
//! coordinates), and the cluster's overview, nodes, distribution,
//! rebalance, cleanup and re-encryption jobs.

use crate::extract::{ApiPath, ApiQuery};
use crate::Shared;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::model::{DataInfo, PutRequest, PutResult};
use crate::rules;
use plexi_util::types::{Consistency, JobKind};

/// Query of `PUT .../data/{data_id}`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
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
#[into_params(parameter_in = Query)]
pub struct GetQuery {
    pub consistency: Option<String>,
}

/// 400 `invalid_data_id` unless `id` keeps [`rules::DATA_ID`].
pub fn validate_data_id(id: &str) -> Result<(), ApiError> {
    rules::DATA_ID.check(id)
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
    State(state): State<Shared>,
    ApiPath(data_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PutQuery>,
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
    let replication_factor = q
        .replication_factor
        .as_deref()
        .map(|raw| {
            rules::REPLICATION_FACTOR
                .up_to(u64::from(storage.max_replication_factor()))
                .parse(raw)
                .map(|n| n as u32)
        })
        .transpose()?;
    let data_type = q
        .data_type
        .unwrap_or_else(|| "application/octet-stream".into());
    rules::DATA_TYPE.check(&data_type)?;
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

/// Query of `GET .../storage/data` (the listing).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only ids starting with this (default: every id).
    pub prefix: Option<String>,
    /// Only ids sorting after this one: a page's `next_after`.
    pub after: Option<String>,
    /// Objects in the page (default 100).
    pub limit: Option<u32>,
}

/// Objects in a listing page when the query names no limit.
pub const DEFAULT_LIST_LIMIT: u32 = 100;

/// One page of the cluster's live objects in byte order of their ids, from
/// every reachable member (deleted objects are not listed). Not refused
/// while this node drains: it reads metadata only and serves no object
/// bytes, so the panel and `plexi ls` keep working through an update.
#[utoipa::path(
    get,
    path = "/api/v1/clustering/storage/data",
    params(ListQuery),
    responses(
        (status = 200, body = crate::model::ObjectList),
        (status = 400, description = "invalid_query: prefix or after too long or with control characters, limit outside 1..=1000", body = ErrorBody),
    )
)]
pub(crate) async fn list_data(
    State(state): State<Shared>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<crate::model::ObjectList>, ApiError> {
    for v in [&q.prefix, &q.after].into_iter().flatten() {
        rules::LIST_PREFIX.check(v)?;
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    rules::LIST_LIMIT.check(u64::from(limit))?;
    state
        .storage
        .list(q.prefix.as_deref().unwrap_or(""), q.after, limit)
        .await
        .map(Json)
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
    State(state): State<Shared>,
    ApiPath(data_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<GetQuery>,
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
    State(state): State<Shared>,
    ApiPath(data_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<GetQuery>,
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
    State(state): State<Shared>,
    ApiPath(data_id): ApiPath<String>,
) -> Result<Json<DataInfo>, ApiError> {
    let storage = &state.storage;
    validate_data_id(&data_id)?;
    storage.info(&data_id).await.map(Json)
}

#[utoipa::path(get, path = "/api/v1/clustering/storage/overview", responses((status = 200, body = crate::model::StorageOverview)))]
pub(crate) async fn overview(
    State(state): State<Shared>,
) -> Result<Json<crate::model::StorageOverview>, ApiError> {
    state.storage.overview().await.map(Json)
}

#[utoipa::path(get, path = "/api/v1/clustering/storage/nodes", responses((status = 200, body = crate::model::StorageNodes)))]
pub(crate) async fn storage_nodes(
    State(state): State<Shared>,
) -> Result<Json<crate::model::StorageNodes>, ApiError> {
    state.storage.nodes().await.map(Json)
}

#[utoipa::path(get, path = "/api/v1/clustering/storage/distribution", responses((status = 200, body = crate::model::Distribution)))]
pub(crate) async fn distribution(
    State(state): State<Shared>,
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
    State(state): State<Shared>,
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
    State(state): State<Shared>,
    caller: Option<Extension<Caller>>,
) -> Result<(StatusCode, Json<crate::model::Job>), ApiError> {
    let job = state
        .storage
        .start_job(JobKind::Cleanup, &actor(caller))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// Starts a cluster-wide re-encryption (after a data key rotation): every
/// node rewrites each value not sealed under its current data key. Follow
/// it with `GET /api/v1/clustering/storage/jobs/{job_id}`.
#[utoipa::path(post, path = "/api/v1/clustering/storage/reencrypt", responses((status = 202, body = crate::model::Job), (status = 403, body = ErrorBody)))]
pub(crate) async fn reencrypt(
    State(state): State<Shared>,
    caller: Option<Extension<Caller>>,
) -> Result<(StatusCode, Json<crate::model::Job>), ApiError> {
    let job = state
        .storage
        .start_job(JobKind::Reencrypt, &actor(caller))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

#[utoipa::path(get, path = "/api/v1/clustering/storage/jobs/{job_id}", params(("job_id" = String, Path)), responses((status = 200, body = crate::model::Job), (status = 404, body = ErrorBody)))]
pub(crate) async fn job(
    State(state): State<Shared>,
    ApiPath(job_id): ApiPath<String>,
) -> Result<Json<crate::model::Job>, ApiError> {
    rules::JOB_ID.check(&job_id)?;
    state.storage.job(&job_id).await.map(Json)
}
