//! plexi-api: the REST API every node serves (axum).
//!
//! Owns routing, bearer auth, the API's limits (concurrency, rate per
//! token, body sizes: `limits.rs`), the JSON error shape, the drain gate,
//! request metrics and the OpenAPI document. It knows the node only through the
//! [`Cluster`], [`Storage`] and [`Updates`] traits, which the binary
//! implements in `src/node/api/` (the one place service errors become
//! [`ApiError`]); it never sees libp2p or sled types.

pub mod auth;
pub mod error;
pub mod extract;
pub mod limits;
pub mod model;
pub mod panel;
mod routes;
pub mod rules;
pub mod schema;
pub mod storage_routes;
pub mod update_routes;

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

pub use auth::{Caller, EventTickets, Role, TokenEntry, TokenSet};
pub use error::ApiError;
pub use limits::{ApiLimits, Limiter};
pub use plexi_util::types::Consistency;
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
    /// Active alerts and at most `limit` recently resolved ones.
    async fn alerts(&self, limit: usize) -> Result<model::AlertList, ApiError>;
}

/// What the data endpoints need from the node. Implemented by the binary.
#[async_trait::async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Largest accepted object body, in bytes (larger: 413).
    fn max_object_bytes(&self) -> usize;
    /// Largest accepted `replication_factor` (the cluster's `max_replication_factor`).
    fn max_replication_factor(&self) -> u32;
    async fn put(&self, req: model::PutRequest) -> Result<model::PutResult, ApiError>;
    async fn get(
        &self,
        data_id: &str,
        consistency: Option<Consistency>,
    ) -> Result<model::DataObject, ApiError>;
    async fn delete(&self, data_id: &str, consistency: Option<Consistency>)
        -> Result<(), ApiError>;
    async fn info(&self, data_id: &str) -> Result<model::DataInfo, ApiError>;
    /// One page of live objects whose id starts with `prefix`, after
    /// `after`, at most `limit` (1..=1000, checked by the route).
    async fn list(
        &self,
        prefix: &str,
        after: Option<String>,
        limit: u32,
    ) -> Result<model::ObjectList, ApiError>;
    async fn overview(&self) -> Result<model::StorageOverview, ApiError>;
    async fn nodes(&self) -> Result<model::StorageNodes, ApiError>;
    async fn distribution(&self) -> Result<model::Distribution, ApiError>;
    /// Starts a cluster-wide job (`rebalance`, `cleanup` or `reencrypt`).
    async fn start_job(
        &self,
        kind: plexi_util::types::JobKind,
        actor: &str,
    ) -> Result<model::Job, ApiError>;
    async fn job(&self, job_id: &str) -> Result<model::Job, ApiError>;
}

/// Releases, update operations, maintenance mode, the audit log and the
/// event stream. Implemented by the binary (`src/node/api/updates.rs`).
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
    /// Every audit chain this node holds, checked from its first entry.
    async fn audit_verify(&self) -> Result<model::AuditVerifyReport, ApiError>;
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

/// What handlers and middleware hold: the state behind one `Arc`.
pub type Shared = Arc<ApiState>;

#[derive(Clone)]
pub struct ApiState {
    pub cluster: Arc<dyn Cluster>,
    pub storage: Arc<dyn Storage>,
    pub updates: Arc<dyn Updates>,
    pub tokens: Arc<TokenSet>,
    pub registry: Arc<Registry>,
    pub metrics: ApiMetrics,
    /// Data-path requests being served right now (see [`InFlight`]).
    pub in_flight: InFlight,
    /// Concurrency and per-token rate bounds (see [`limits`]).
    pub limiter: Limiter,
    /// Event-stream tickets, under a key only this process holds.
    pub tickets: Arc<auth::EventTickets>,
}

/// How many data-path requests (`/api/v1/clustering/storage/data/...`) this
/// node is serving: counted from the moment one passes the drain check until
/// its response body is sent (or the client goes away). Clones share the
/// count, so the node keeps one to wait for the drain to finish.
#[derive(Clone, Debug, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// Counts one request until the guard is dropped.
    pub fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.0.clone())
    }

    /// Waits until no data request is in flight, polling every 20 ms; false
    /// if some still are after `timeout`.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.count() == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One counted request; dropping it uncounts it.
#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted until it is sent or dropped.
struct GuardedBody {
    inner: Body,
    _guard: InFlightGuard,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The data path: what this node coordinates for clients, and what a
/// drained node refuses so clients go to another node.
pub const DATA_PATH_PREFIX: &str = "/api/v1/clustering/storage/data/";

/// Middleware: while the node drains for an update, data requests get 503
/// `draining` with `Retry-After`; every other route keeps working. Requests
/// admitted before the drain began run to the end, and are counted in
/// [`ApiState::in_flight`] until their response is sent.
async fn drain_gate(State(state): State<Shared>, req: Request, next: Next) -> Response {
    if !req.uri().path().starts_with(DATA_PATH_PREFIX) {
        return next.run(req).await;
    }
    if let Some(secs) = state.updates.draining() {
        let mut res = ApiError::unavailable(
            "draining",
            format!(
                "this node is draining for an update; send the request to another node, or retry here after {secs} s"
            ),
        )
        .into_response();
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return res;
    }
    let guard = state.in_flight.enter();
    let res = next.run(req).await;
    res.map(|inner| {
        Body::new(GuardedBody {
            inner,
            _guard: guard,
        })
    })
}

async fn count_requests(State(state): State<Shared>, req: Request, next: Next) -> Response {
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

/// API paths served without a token: liveness only. The panel's page and
/// assets are public too ([`panel::is_panel_path`]): they hold no data.
pub const PUBLIC_PATHS: [&str; 1] = ["/health"];

/// `err` as a response with a Retry-After of `secs` (at least 1).
pub(crate) fn retry_after(err: ApiError, secs: u64) -> Response {
    let mut res = err.into_response();
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    res
}

/// Middleware: at most [`ApiLimits::max_concurrent_requests`] requests in
/// handlers at once (authenticated or not, so a flood of bad tokens is
/// bounded too); past it 503 `overloaded` with Retry-After, at once.
/// `/health` is never refused, so liveness stays visible under load.
async fn concurrency_gate(State(state): State<Shared>, req: Request, next: Next) -> Response {
    if PUBLIC_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let Some(permit) = state.limiter.admit() else {
        let max = state.limiter.limits().max_concurrent_requests;
        return retry_after(
            ApiError::unavailable(
                "overloaded",
                format!("this node is serving its maximum of {max} requests at once; retry shortly or use another node"),
            ),
            limits::OVERLOADED_RETRY_AFTER_SECONDS,
        );
    };
    let res = next.run(req).await;
    drop(permit);
    res
}

/// The whole API. Outermost, the concurrency gate; then auth wraps every
/// route (matched or not) except [`PUBLIC_PATHS`], so a read token is
/// refused any change with 403 before routing, an unknown path reveals
/// nothing without a token, and each token is held to its rate. Inside
/// auth, the drain gate turns data requests away while the node drains.
/// JSON bodies are capped at [`limits::MAX_JSON_BODY_BYTES`]; the data
/// route sets its own cap (`max_object_bytes`).
pub fn router(state: ApiState) -> Router {
    // One allocation shared by every request (a clone of the whole state
    // per request and middleware was about 3 % of a 4 KiB get's CPU).
    let state: Shared = Arc::new(state);
    Router::new()
        .route("/health", get(routes::liveness))
        .route("/metrics", get(routes::metrics))
        .route("/api/v1/openapi.json", get(routes::openapi))
        .route("/", get(panel::index))
        .route("/panel/{asset}", get(panel::asset))
        .merge(routes::protected(state.storage.max_object_bytes()))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), drain_gate))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            concurrency_gate,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(
            limits::MAX_JSON_BODY_BYTES,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}
