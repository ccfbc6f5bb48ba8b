//! Fuzz target: one HTTP request (method, token, path and query, body)
//! through the whole API router, over services that know nothing (every
//! call answers 404). Path and query extraction, validation, auth and the
//! limits run for real. No answer may be a 5xx, and every error answer
//! must carry the API's JSON error body.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{header, Method, Request};
use libfuzzer_sys::fuzz_target;
use plexi_api::limits::{ApiLimits, Limiter};
use plexi_api::model::*;
use plexi_api::{
    ApiError, ApiMetrics, ApiState, Cluster, InFlight, Role, Storage, TokenEntry, TokenSet, Updates,
};
use tower::ServiceExt;

const ADMIN: &str = "fuzz-admin-token-0123456789";
const READ: &str = "fuzz-read-token-0123456789";

fn none() -> ApiError {
    ApiError::not_found("nothing here (fuzz stub)")
}

struct Nothing {
    events: tokio::sync::broadcast::Sender<ClusterEvent>,
}

#[async_trait::async_trait]
impl Cluster for Nothing {
    fn local_node_id(&self) -> String {
        "fuzz".into()
    }
    fn version(&self) -> String {
        "0.0.0".into()
    }
    fn nodes(&self) -> Vec<NodeView> {
        Vec::new()
    }
    async fn node_health(&self, _: &str) -> Result<HealthReport, ApiError> {
        Err(none())
    }
    async fn alerts(&self, _: usize) -> Result<AlertList, ApiError> {
        Err(none())
    }
}

#[async_trait::async_trait]
impl Storage for Nothing {
    fn max_object_bytes(&self) -> usize {
        64 * 1024
    }
    fn max_replication_factor(&self) -> u32 {
        5
    }
    async fn put(&self, _: PutRequest) -> Result<PutResult, ApiError> {
        Err(none())
    }
    async fn get(
        &self,
        _: &str,
        _: Option<plexi_api::Consistency>,
    ) -> Result<DataObject, ApiError> {
        Err(none())
    }
    async fn delete(&self, _: &str, _: Option<plexi_api::Consistency>) -> Result<(), ApiError> {
        Err(none())
    }
    async fn info(&self, _: &str) -> Result<DataInfo, ApiError> {
        Err(none())
    }
    async fn list(&self, _: &str, _: Option<String>, _: u32) -> Result<ObjectList, ApiError> {
        Err(none())
    }
    async fn overview(&self) -> Result<StorageOverview, ApiError> {
        Err(none())
    }
    async fn nodes(&self) -> Result<StorageNodes, ApiError> {
        Err(none())
    }
    async fn distribution(&self) -> Result<Distribution, ApiError> {
        Err(none())
    }
    async fn start_job(&self, _: plexi_util::types::JobKind, _: &str) -> Result<Job, ApiError> {
        Err(none())
    }
    async fn job(&self, _: &str) -> Result<Job, ApiError> {
        Err(none())
    }
}

#[async_trait::async_trait]
impl Updates for Nothing {
    async fn releases(&self) -> Result<ReleaseList, ApiError> {
        Err(none())
    }
    async fn publish_release(&self, _: SignedRelease, _: &str) -> Result<ReleaseView, ApiError> {
        Err(none())
    }
    async fn plan(&self, _: PlanRequest, _: &str) -> Result<UpdateOperation, ApiError> {
        Err(none())
    }
    async fn execute(&self, _: &str, _: &str) -> Result<UpdateOperation, ApiError> {
        Err(none())
    }
    async fn status(&self, _: &str) -> Result<UpdateOperation, ApiError> {
        Err(none())
    }
    async fn rollback(&self, _: &str, _: &str) -> Result<UpdateOperation, ApiError> {
        Err(none())
    }
    async fn active(&self) -> Result<UpdateList, ApiError> {
        Err(none())
    }
    async fn history(&self, _: usize) -> Result<UpdateList, ApiError> {
        Err(none())
    }
    async fn maintenance(&self) -> Result<Maintenance, ApiError> {
        Err(none())
    }
    async fn set_maintenance(
        &self,
        _: MaintenanceRequest,
        _: &str,
    ) -> Result<Maintenance, ApiError> {
        Err(none())
    }
    async fn audit(&self, _: usize) -> Result<AuditList, ApiError> {
        Err(none())
    }
    async fn audit_verify(&self) -> Result<AuditVerifyReport, ApiError> {
        Err(none())
    }
    fn events(&self) -> tokio::sync::broadcast::Receiver<ClusterEvent> {
        self.events.subscribe()
    }
    fn draining(&self) -> Option<u64> {
        None
    }
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    app: axum::Router,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let nothing = Arc::new(Nothing {
            events: tokio::sync::broadcast::channel(16).0,
        });
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = ApiMetrics::register(&mut registry);
        let state = ApiState {
            cluster: nothing.clone(),
            storage: nothing.clone(),
            updates: nothing,
            tokens: Arc::new(TokenSet::new(vec![
                TokenEntry {
                    name: "admin".into(),
                    role: Role::Admin,
                    hash: blake3::hash(ADMIN.as_bytes()),
                },
                TokenEntry {
                    name: "read".into(),
                    role: Role::Read,
                    hash: blake3::hash(READ.as_bytes()),
                },
            ])),
            registry: Arc::new(registry),
            metrics,
            in_flight: InFlight::default(),
            limiter: Limiter::new(ApiLimits::default()),
            tickets: Arc::new(plexi_api::EventTickets::new([7; 32])),
        };
        Fixture {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            app: plexi_api::router(state),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let [m, t, rest @ ..] = data else { return };
    let method = [
        Method::GET,
        Method::PUT,
        Method::POST,
        Method::DELETE,
        Method::HEAD,
    ][*m as usize % 5]
        .clone();
    let (target, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(target) = std::str::from_utf8(target) else {
        return;
    };
    // Steer most inputs into the API's own paths.
    let uri = if t & 0x80 == 0 {
        format!("/api/v1/clustering/{target}")
    } else {
        target.to_string()
    };
    let is_head = method == Method::HEAD;
    let mut req = Request::builder().method(method).uri(uri.as_str());
    match t % 4 {
        0 => {}
        1 => req = req.header(header::AUTHORIZATION, format!("Bearer {READ}")),
        2 => req = req.header(header::AUTHORIZATION, format!("Bearer {ADMIN}")),
        _ => req = req.header(header::AUTHORIZATION, "Bearer \u{0}x"),
    }
    if t & 0x40 != 0 {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let Ok(req) = req.body(Body::from(body.to_vec())) else {
        return;
    };
    let f = fixture();
    let res = f
        .runtime
        .block_on(f.app.clone().oneshot(req))
        .expect("the router is infallible");
    let status = res.status();
    assert!(!status.is_server_error(), "{status} for {uri}");
    // (A HEAD answer carries no body.)
    if status.is_client_error() && !is_head {
        let bytes = f
            .runtime
            .block_on(axum::body::to_bytes(res.into_body(), 1 << 20))
            .expect("error bodies are small");
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        assert!(
            body["error"]["code"].is_string() && body["error"]["message"].is_string(),
            "{status} for {uri}: not the JSON error shape: {:?}",
            String::from_utf8_lossy(&bytes)
        );
    }
});
