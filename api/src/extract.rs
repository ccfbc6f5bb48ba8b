//! Extractors whose rejections are the API's JSON error shape: axum's own
//! `Path` and `Query` answer a malformed path segment (bad percent-encoding,
//! invalid UTF-8) or query string with a plain-text 400; these answer
//! `400 invalid_path` / `400 invalid_query` with the usual JSON body.
//! (Found by the `api_request` fuzz target.)

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// `Path<T>` with a JSON rejection.
pub struct ApiPath<T>(pub T);

/// `Query<T>` with a JSON rejection.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))
    }
}

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
    }
}
