//! plexi-api: the REST API every node serves (axum).
//!
//! Owns routing, bearer auth, the JSON error shape, request metrics and the
//! OpenAPI document. It knows the cluster only through the [`Cluster`] trait,
//! which the binary implements; it never sees libp2p or sled types.

pub mod auth;
pub mod error;
pub mod model;
mod routes;
pub mod storage_routes;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

pub use auth::{Caller, Role, TokenEntry, TokenSet};
pub use error::ApiError;
pub use routes::ApiDoc;

/// What the API needs from the node. Implemented by the binary.
#[async_trait::async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// The answering node's name.
    fn local_node_id(&self) -> String;
    fn version(&self) -> String;
    /// Every known member, this node included.
    fn nodes(&self) -> Vec<model::NodeView>;
    /// Health of any member, asked of that member when it must come from it.
    async fn node_health(&self, node_id: &str) -> Result<model::HealthReport, ApiError>;
}

/// What the data endpoints need from the node. Implemented by the binary.
#[async_trait::async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Largest accepted object body, in bytes (larger: 413).
    fn max_object_bytes(&self) -> usize;
    async fn put(&self, req: storage_routes::PutRequest) -> Result<model::PutResult, ApiError>;
    async fn get(
        &self,
        data_id: &str,
        consistency: Option<&str>,
    ) -> Result<model::DataObject, ApiError>;
    async fn delete(&self, data_id: &str, consistency: Option<&str>) -> Result<(), ApiError>;
    async fn info(&self, data_id: &str) -> Result<model::DataInfo, ApiError>;
    async fn overview(&self) -> Result<model::StorageOverview, ApiError>;
    async fn nodes(&self) -> Result<model::StorageNodes, ApiError>;
    async fn distribution(&self) -> Result<model::Distribution, ApiError>;
    /// Starts a cluster-wide job (`rebalance` or `cleanup`).
    async fn start_job(&self, kind: &str, actor: &str) -> Result<model::Job, ApiError>;
    async fn job(&self, job_id: &str) -> Result<model::Job, ApiError>;
}

/// Releases and (later) update operations. Implemented by the binary.
#[async_trait::async_trait]
pub trait Updates: Send + Sync + 'static {
    async fn releases(&self) -> Result<model::ReleaseList, ApiError>;
    /// Verifies and publishes a signed manifest whose binary is already stored.
    async fn publish_release(
        &self,
        signed: model::SignedRelease,
        actor: &str,
    ) -> Result<model::ReleaseView, ApiError>;
    /// Validates a plan and stores the operation in the cluster (status planned).
    async fn plan(
        &self,
        req: model::PlanRequest,
        actor: &str,
    ) -> Result<model::UpdateOperation, ApiError>;
    async fn execute(
        &self,
        operation_id: &str,
        actor: &str,
    ) -> Result<model::UpdateOperation, ApiError>;
    async fn status(&self, operation_id: &str) -> Result<model::UpdateOperation, ApiError>;
    async fn rollback(
        &self,
        operation_id: &str,
        actor: &str,
    ) -> Result<model::UpdateOperation, ApiError>;
    async fn active(&self) -> Result<model::UpdateList, ApiError>;
    /// Newest first.
    async fn history(&self, limit: usize) -> Result<model::UpdateList, ApiError>;
    async fn maintenance(&self) -> Result<model::Maintenance, ApiError>;
    async fn set_maintenance(
        &self,
        req: model::MaintenanceRequest,
        actor: &str,
    ) -> Result<model::Maintenance, ApiError>;
    /// Newest first, at most `limit`.
    async fn audit(&self, limit: usize) -> Result<model::AuditList, ApiError>;
    /// Cluster events for the server-sent event stream.
    fn events(&self) -> tokio::sync::broadcast::Receiver<model::ClusterEvent>;
    /// `Some(retry_after_seconds)` while this node is drained for an update:
    /// data requests get 503 with Retry-After so clients go to another node.
    fn draining(&self) -> Option<u64>;
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    status: u16,
}

/// Counters the API keeps in the node's registry.
#[derive(Clone)]
pub struct ApiMetrics {
    requests: Family<HttpLabels, Counter>,
}

impl ApiMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "plexi_http_requests",
            "HTTP requests served, by method and status",
            requests.clone(),
        );
        ApiMetrics { requests }
    }
}

#[derive(Clone)]
pub struct ApiState {
    pub cluster: Arc<dyn Cluster>,
    pub storage: Arc<dyn Storage>,
    pub updates: Arc<dyn Updates>,
    pub tokens: Arc<TokenSet>,
    pub registry: Arc<Registry>,
    pub metrics: ApiMetrics,
}

async fn count_requests(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let res = next.run(req).await;
    state
        .metrics
        .requests
        .get_or_create(&HttpLabels {
            method,
            status: res.status().as_u16(),
        })
        .inc();
    res
}

/// Paths served without a token.
pub const PUBLIC_PATHS: [&str; 3] = ["/health", "/metrics", "/api/v1/openapi.json"];

/// The whole API. Auth wraps every route (matched or not) except
/// [`PUBLIC_PATHS`], so a read token is refused any change with 403 before
/// routing, and an unknown path reveals nothing without a token.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/health", get(routes::liveness))
        .route("/metrics", get(routes::metrics))
        .route("/api/v1/openapi.json", get(routes::openapi))
        .merge(routes::protected(state.storage.max_object_bytes()))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}
