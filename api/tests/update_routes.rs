//! The update endpoints, the event stream and the drain gate, against a
//! router over stub traits (no node): roles, the JSON error shape for bad
//! input, limits, the actor handed to the node, SSE framing, and draining.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use futures::StreamExt;
use plexi_api::model::PutRequest;
use plexi_api::model::*;
use plexi_api::{
    ApiError, ApiLimits, ApiMetrics, ApiState, Caller, Cluster, EventTickets, InFlight, Limiter,
    Role, Storage, TokenEntry, TokenSet, Updates,
};
use plexi_util::types::{OperationStatus, UpdateStrategy, UpdateType};
use serde_json::{json, Value};
use tokio::sync::{broadcast, Notify};
use tower::ServiceExt;

const ADMIN: &str = "admin-secret";
const READ: &str = "read-secret";
/// The fixture's ticket key (a node draws a random one).
const TICKET_KEY: [u8; 32] = [42; 32];

struct StubCluster;

#[async_trait::async_trait]
impl Cluster for StubCluster {
    fn local_node_id(&self) -> String {
        "n1".into()
    }
    fn version(&self) -> String {
        "0.1.0".into()
    }
    fn nodes(&self) -> Vec<NodeView> {
        vec![]
    }
    async fn node_health(&self, _: &str) -> Result<HealthReport, ApiError> {
        Err(ApiError::not_found("stub"))
    }
    async fn alerts(&self, _: usize) -> Result<plexi_api::model::AlertList, ApiError> {
        Err(ApiError::not_found("stub"))
    }
}

/// Storage whose GET waits for `release` once `hold` is set.
#[derive(Default)]
struct StubStorage {
    hold: std::sync::atomic::AtomicBool,
    entered: Notify,
    release: Notify,
}

fn stub_err() -> ApiError {
    ApiError::unavailable("stub", "not in this test")
}

#[async_trait::async_trait]
impl Storage for StubStorage {
    fn max_object_bytes(&self) -> usize {
        1 << 20
    }
    fn max_replication_factor(&self) -> u32 {
        5
    }
    async fn put(&self, _: PutRequest) -> Result<PutResult, ApiError> {
        Err(stub_err())
    }
    async fn get(
        &self,
        _: &str,
        _: Option<plexi_api::Consistency>,
    ) -> Result<DataObject, ApiError> {
        if self.hold.load(Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
        Ok(DataObject {
            data_type: "t".into(),
            checksum: "c".into(),
            version: "v".into(),
            bytes: vec![7; 1000],
        })
    }
    async fn delete(&self, _: &str, _: Option<plexi_api::Consistency>) -> Result<(), ApiError> {
        Ok(())
    }
    async fn info(&self, _: &str) -> Result<DataInfo, ApiError> {
        Err(stub_err())
    }
    async fn list(
        &self,
        _: &str,
        _: Option<String>,
        _: u32,
    ) -> Result<plexi_api::model::ObjectList, ApiError> {
        Ok(plexi_api::model::ObjectList {
            objects: Vec::new(),
            next_after: None,
            complete: true,
            unreachable_nodes: Vec::new(),
        })
    }
    async fn overview(&self) -> Result<StorageOverview, ApiError> {
        Err(stub_err())
    }
    async fn nodes(&self) -> Result<StorageNodes, ApiError> {
        Err(stub_err())
    }
    async fn distribution(&self) -> Result<Distribution, ApiError> {
        Err(stub_err())
    }
    async fn start_job(&self, _: plexi_util::types::JobKind, _: &str) -> Result<Job, ApiError> {
        Err(stub_err())
    }
    async fn job(&self, _: &str) -> Result<Job, ApiError> {
        Err(stub_err())
    }
}

/// Updates that answer with fixed values and record what they were asked.
struct StubUpdates {
    /// 0: not draining; else the Retry-After seconds.
    draining: AtomicU64,
    calls: Mutex<Vec<String>>,
    events: broadcast::Sender<ClusterEvent>,
}

impl StubUpdates {
    fn record(&self, s: String) {
        self.calls.lock().unwrap().push(s);
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

fn operation(id: &str, status: OperationStatus) -> UpdateOperation {
    UpdateOperation {
        operation_id: id.into(),
        status,
        target_version: "1.2.3".into(),
        update_type: UpdateType::Upgrade,
        strategy: UpdateStrategy::Rolling,
        target_nodes: vec!["n1".into()],
        batches: vec![vec!["n1".into()]],
        current_phase: "waiting".into(),
        overall_progress: 0.0,
        estimated_completion: None,
        breaking_changes: vec![],
        warnings: vec![],
        node_statuses: Default::default(),
        force: false,
        created_at: "2024-01-01T00:00:00Z".into(),
        created_by: "ops".into(),
        started_at: None,
        completed_at: None,
        halted_reason: None,
        leases: vec![],
    }
}

fn maintenance(enabled: bool) -> Maintenance {
    Maintenance {
        enabled,
        reason: String::new(),
        set_by: String::new(),
        started_at: None,
        expires_at: None,
    }
}

#[async_trait::async_trait]
impl Updates for StubUpdates {
    async fn releases(&self) -> Result<ReleaseList, ApiError> {
        Ok(ReleaseList { releases: vec![] })
    }
    async fn publish_release(&self, _: SignedRelease, _: &str) -> Result<ReleaseView, ApiError> {
        Err(stub_err())
    }
    async fn plan(&self, req: PlanRequest, actor: &str) -> Result<UpdateOperation, ApiError> {
        let nodes: Vec<&str> = req.target_nodes.iter().map(|n| n.as_str()).collect();
        self.record(format!(
            "plan {} {} {} {nodes:?} {} by {actor}",
            req.target_version, req.update_type, req.strategy, req.force
        ));
        Ok(operation("op-1", OperationStatus::Planned))
    }
    async fn execute(&self, id: &str, actor: &str) -> Result<UpdateOperation, ApiError> {
        self.record(format!("execute {id} by {actor}"));
        Ok(operation(id, OperationStatus::Running))
    }
    async fn status(&self, id: &str) -> Result<UpdateOperation, ApiError> {
        self.record(format!("status {id}"));
        Ok(operation(id, OperationStatus::Running))
    }
    async fn rollback(&self, id: &str, actor: &str) -> Result<UpdateOperation, ApiError> {
        self.record(format!("rollback {id} by {actor}"));
        Ok(operation(id, OperationStatus::RollingBack))
    }
    async fn active(&self) -> Result<UpdateList, ApiError> {
        Ok(UpdateList { operations: vec![] })
    }
    async fn history(&self, limit: usize) -> Result<UpdateList, ApiError> {
        self.record(format!("history {limit}"));
        Ok(UpdateList { operations: vec![] })
    }
    async fn maintenance(&self) -> Result<Maintenance, ApiError> {
        Ok(maintenance(false))
    }
    async fn set_maintenance(
        &self,
        req: MaintenanceRequest,
        actor: &str,
    ) -> Result<Maintenance, ApiError> {
        self.record(format!(
            "maintenance {} {:?} {:?} by {actor}",
            req.enabled, req.reason, req.timeout_seconds
        ));
        Ok(maintenance(req.enabled))
    }
    async fn audit(&self, limit: usize) -> Result<AuditList, ApiError> {
        self.record(format!("audit {limit}"));
        Ok(AuditList {
            entries: vec![],
            chains_verified: true,
        })
    }
    async fn audit_verify(&self) -> Result<AuditVerifyReport, ApiError> {
        self.record("audit verify".into());
        Ok(AuditVerifyReport {
            node_id: "n1".to_string().into(),
            ok: true,
            chains: vec![],
        })
    }
    fn events(&self) -> broadcast::Receiver<ClusterEvent> {
        self.events.subscribe()
    }
    fn draining(&self) -> Option<u64> {
        match self.draining.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }
}

struct Fixture {
    app: Router,
    updates: Arc<StubUpdates>,
    storage: Arc<StubStorage>,
    in_flight: InFlight,
}

fn fixture(event_capacity: usize) -> Fixture {
    fixture_with(event_capacity, ApiLimits::default())
}

fn fixture_with(event_capacity: usize, limits: ApiLimits) -> Fixture {
    let updates = Arc::new(StubUpdates {
        draining: AtomicU64::new(0),
        calls: Mutex::new(vec![]),
        events: broadcast::channel(event_capacity).0,
    });
    let storage = Arc::new(StubStorage::default());
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ApiMetrics::register(&mut registry);
    let in_flight = InFlight::default();
    let state = ApiState {
        cluster: Arc::new(StubCluster),
        storage: storage.clone(),
        updates: updates.clone(),
        tokens: Arc::new(TokenSet::new(vec![
            TokenEntry {
                name: "ops".into(),
                role: Role::Admin,
                hash: blake3::hash(ADMIN.as_bytes()),
            },
            TokenEntry {
                name: "viewer".into(),
                role: Role::Read,
                hash: blake3::hash(READ.as_bytes()),
            },
        ])),
        registry: Arc::new(registry),
        metrics,
        in_flight: in_flight.clone(),
        limiter: Limiter::new(limits),
        tickets: Arc::new(plexi_api::EventTickets::new(TICKET_KEY)),
    };
    Fixture {
        app: plexi_api::router(state),
        updates,
        storage,
        in_flight,
    }
}

fn request(method: Method, path: &str, token: Option<&str>, json: Option<&str>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    match json {
        Some(j) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(j.to_string()))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("{status}: not JSON: {:?}", String::from_utf8_lossy(&bytes)));
    (status, v)
}

/// A data GET that the stub storage holds inside its handler; returns once
/// the request is in there.
async fn held_get(f: &Fixture) -> tokio::task::JoinHandle<axum::response::Response> {
    f.storage.hold.store(true, Ordering::SeqCst);
    let app = f.app.clone();
    let task = tokio::spawn(async move {
        app.oneshot(request(
            Method::GET,
            "/api/v1/clustering/storage/data/k1",
            Some(READ),
            None,
        ))
        .await
        .unwrap()
    });
    f.storage.entered.notified().await;
    task
}

const OP: &str = "/api/v1/clustering/updates/3f2b1c9e-0000-4000-8000-000000000001";

#[tokio::test]
async fn read_token_reads_admin_token_changes() {
    let f = fixture(16);
    let gets = [
        format!("{OP}/status"),
        "/api/v1/clustering/updates/active".into(),
        "/api/v1/clustering/updates/history".into(),
        "/api/v1/clustering/updates/releases".into(),
        "/api/v1/clustering/maintenance".into(),
        "/api/v1/clustering/audit".into(),
    ];
    for path in &gets {
        let (s, body) = send(&f.app, request(Method::GET, path, None, None)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(body["error"]["code"], "unauthorized");
        let (s, _) = send(&f.app, request(Method::GET, path, Some(READ), None)).await;
        assert_eq!(s, StatusCode::OK, "{path}");
    }
    let plan = r#"{"target_version":"1.2.3"}"#;
    let maint = r#"{"enabled":true}"#;
    let posts = [
        ("/api/v1/clustering/updates/plan".to_string(), Some(plan)),
        (format!("{OP}/execute"), None),
        (format!("{OP}/rollback"), None),
        ("/api/v1/clustering/maintenance".into(), Some(maint)),
    ];
    for (path, body) in &posts {
        let (s, _) = send(&f.app, request(Method::POST, path, None, *body)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}");
        let (s, v) = send(&f.app, request(Method::POST, path, Some(READ), *body)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(v["error"]["code"], "forbidden");
    }
    assert!(
        f.updates.calls().iter().all(|c| !c.contains(" by ")),
        "a refused change reached the node: {:?}",
        f.updates.calls()
    );

    // Admin: the statuses of the contract, and the token name as actor.
    let (s, v) = send(
        &f.app,
        request(
            Method::POST,
            "/api/v1/clustering/updates/plan",
            Some(ADMIN),
            Some(
                r#"{"target_version":"1.2.3","strategy":"parallel","target_nodes":["a","b"],"force":true}"#,
            ),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(v["operation_id"], "op-1");
    let (s, v) = send(
        &f.app,
        request(Method::POST, &format!("{OP}/execute"), Some(ADMIN), None),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(v["status"], "running");
    let (s, _) = send(
        &f.app,
        request(Method::POST, &format!("{OP}/rollback"), Some(ADMIN), None),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, v) = send(
        &f.app,
        request(
            Method::POST,
            "/api/v1/clustering/maintenance",
            Some(ADMIN),
            Some(r#"{"enabled":true,"reason":"disk swap","timeout_seconds":60}"#),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["enabled"], true);
    let calls = f.updates.calls();
    let id = &OP["/api/v1/clustering/updates/".len()..];
    for want in [
        "plan 1.2.3 upgrade parallel [\"a\", \"b\"] true by ops".to_string(),
        format!("execute {id} by ops"),
        format!("rollback {id} by ops"),
        "maintenance true Some(\"disk swap\") Some(60) by ops".into(),
    ] {
        assert!(calls.contains(&want), "{want} not in {calls:?}");
    }
}

/// Found by the `api_request` fuzz target: axum's own extractors answer a
/// path segment that is not UTF-8 once percent-decoded, or a query that
/// does not parse, with plain text; ours answer with the JSON error shape.
#[tokio::test]
async fn bad_paths_and_queries_get_the_json_error_shape() {
    let f = fixture(16);
    for (method, path, code) in [
        (
            Method::GET,
            "/api/v1/clustering/storage/data/%FF%FE",
            "invalid_path",
        ),
        (
            Method::GET,
            "/api/v1/clustering/storage/data/%FF/info",
            "invalid_path",
        ),
        (
            Method::GET,
            "/api/v1/clustering/nodes/%C3%28/health",
            "invalid_path",
        ),
        (
            Method::GET,
            "/api/v1/clustering/storage/jobs/%FF",
            "invalid_path",
        ),
        // Found by the api_request fuzz target: a panel asset name that
        // is not UTF-8 (served without a token, so none is sent below).
        (Method::GET, "/panel/%FFapp.js", "invalid_path"),
        (
            Method::GET,
            "/api/v1/clustering/storage/data/x?consistency=sometimes",
            "invalid_consistency",
        ),
        (
            Method::PUT,
            "/api/v1/clustering/storage/data/x?consistency=weak&consistency=strong",
            "invalid_query",
        ),
    ] {
        let (s, v) = send(&f.app, request(method, path, Some(ADMIN), None)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {v}");
        assert_eq!(v["error"]["code"], code, "{path}: {v}");
    }
}

#[tokio::test]
async fn bad_bodies_get_the_json_error_shape() {
    let f = fixture(16);
    let plan = "/api/v1/clustering/updates/plan";
    for (body, code) in [
        ("{not json", "invalid_body"),
        (
            r#"{"target_version":"1.2.3","colour":"red"}"#,
            "invalid_body",
        ),
        (r#"{"target_version":7}"#, "invalid_body"),
        (r#"{}"#, "invalid_body"),
        (r#"{"target_version":""}"#, "invalid_target_version"),
        (
            r#"{"target_version":"1.2.3","update_type":"sideways"}"#,
            "invalid_update_type",
        ),
        (
            r#"{"target_version":"1.2.3","strategy":"yolo"}"#,
            "invalid_strategy",
        ),
        (
            r#"{"target_version":"1.2.3","target_nodes":[""]}"#,
            "invalid_target_nodes",
        ),
    ] {
        let (s, v) = send(&f.app, request(Method::POST, plan, Some(ADMIN), Some(body))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(v["error"]["code"], code, "{body}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().len() > 5);
    }
    // A wrong name: the field and the allowed values are named.
    for (body, message) in [
        (
            r#"{"target_version":"1.2.3","update_type":"sideways"}"#,
            r#"update_type "sideways" is not one of upgrade, downgrade, reinstall"#,
        ),
        (
            r#"{"target_version":"1.2.3","strategy":"yolo"}"#,
            r#"strategy "yolo" is not one of rolling, parallel, canary"#,
        ),
    ] {
        let (_, v) = send(&f.app, request(Method::POST, plan, Some(ADMIN), Some(body))).await;
        assert_eq!(v["error"]["message"], message, "{body}");
    }
    // No JSON content type: 415, still the JSON shape.
    let req = Request::builder()
        .method(Method::POST)
        .uri(plan)
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .body(Body::from(r#"{"target_version":"1.2.3"}"#))
        .unwrap();
    let (s, v) = send(&f.app, req).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(v["error"]["code"], "unsupported_media_type");

    let m = "/api/v1/clustering/maintenance";
    for body in [
        r#"{"enabled":"yes"}"#,
        r#"{"enabled":true,"why":"x"}"#,
        r#"{"enabled":true,"timeout_seconds":0}"#,
        r#"{"enabled":true,"timeout_seconds":-5}"#,
    ] {
        let (s, v) = send(&f.app, request(Method::POST, m, Some(ADMIN), Some(body))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert!(v["error"]["code"].as_str().unwrap().starts_with("invalid_"));
    }

    // A malformed operation id: 400 before the node is asked.
    let (s, v) = send(
        &f.app,
        request(
            Method::GET,
            "/api/v1/clustering/updates/a%20b/status",
            Some(READ),
            None,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "invalid_operation_id");
    assert!(f.updates.calls().is_empty(), "{:?}", f.updates.calls());
}

#[tokio::test]
async fn limits_are_checked_and_defaulted() {
    let f = fixture(16);
    let h = "/api/v1/clustering/updates/history";
    let a = "/api/v1/clustering/audit";
    for q in [
        "?limit=0",
        "?limit=1001",
        "?limit=abc",
        "?limit=-1",
        "?limit=",
    ] {
        let (s, v) = send(
            &f.app,
            request(Method::GET, &format!("{h}{q}"), Some(READ), None),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}");
        assert_eq!(v["error"]["code"], "invalid_limit");
    }
    for q in ["?limit=0", "?limit=10001"] {
        let (s, _) = send(
            &f.app,
            request(Method::GET, &format!("{a}{q}"), Some(READ), None),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}");
    }
    for path in [
        h.to_string(),
        format!("{h}?limit=1000"),
        a.to_string(),
        format!("{a}?limit=10000"),
    ] {
        let (s, _) = send(&f.app, request(Method::GET, &path, Some(READ), None)).await;
        assert_eq!(s, StatusCode::OK, "{path}");
    }
    assert_eq!(
        f.updates.calls(),
        vec!["history 10", "history 1000", "audit 100", "audit 10000"]
    );
}

/// Reads SSE frames until `n` events (not comments) arrived.
async fn sse_events(body: Body, n: usize) -> Vec<(String, String)> {
    let mut stream = body.into_data_stream();
    let mut text = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("an event within 5 s")
            .expect("stream open")
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = text.find("\n\n") {
            let frame: String = text.drain(..end + 2).collect();
            let mut event = String::new();
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if !event.is_empty() || !data.is_empty() {
                out.push((event, data));
            }
        }
    }
    out
}

fn event(kind: &str, i: u64) -> ClusterEvent {
    ClusterEvent {
        kind: kind.into(),
        at: "2024-01-01T00:00:00Z".into(),
        data: json!({ "i": i }),
    }
}

#[tokio::test]
async fn events_stream_kinds_and_survives_lag() {
    let f = fixture(2);
    let (s, _) = send(
        &f.app,
        request(Method::POST, "/api/v1/events", Some(READ), None),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "POST needs admin before routing");
    let res = f
        .app
        .clone()
        .oneshot(request(Method::GET, "/api/v1/events", None, None))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    let res = f
        .app
        .clone()
        .oneshot(request(Method::GET, "/api/v1/events", Some(READ), None))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    // Five events into a channel of two: the client lags, is told, goes on.
    for i in 0..5 {
        f.updates.events.send(event("update.progress", i)).unwrap();
    }
    let got = sse_events(res.into_body(), 3).await;
    assert_eq!(got[0].0, "lagged");
    assert_eq!(
        serde_json::from_str::<Value>(&got[0].1).unwrap()["skipped"],
        3
    );
    for (i, (name, data)) in got[1..].iter().enumerate() {
        assert_eq!(name, "update.progress");
        let ev: ClusterEvent = serde_json::from_str(data).unwrap();
        assert_eq!(ev, event("update.progress", 3 + i as u64));
    }
}

#[tokio::test]
async fn events_with_odd_kinds_are_still_framed() {
    let f = fixture(16);
    let res = f
        .app
        .clone()
        .oneshot(request(Method::GET, "/api/v1/events", Some(READ), None))
        .await
        .unwrap();
    f.updates.events.send(event("bad\nkind", 1)).unwrap();
    f.updates.events.send(event("maintenance", 2)).unwrap();
    let got = sse_events(res.into_body(), 2).await;
    assert_eq!(got[0].0, "message");
    let ev: ClusterEvent = serde_json::from_str(&got[0].1).unwrap();
    assert_eq!(ev.kind, "bad\nkind", "the data keeps the kind as sent");
    assert_eq!(got[1].0, "maintenance");
}

#[tokio::test]
async fn draining_refuses_data_requests_only() {
    let f = fixture(16);
    let data = "/api/v1/clustering/storage/data/k1";
    let res = f
        .app
        .clone()
        .oneshot(request(Method::GET, data, Some(READ), None))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(f.in_flight.count(), 1, "counted until the body is sent");
    drop(res);

    f.updates.draining.store(7, Ordering::SeqCst);
    for (method, path) in [
        (Method::GET, data.to_string()),
        (Method::PUT, data.to_string()),
        (Method::DELETE, data.to_string()),
        (Method::GET, format!("{data}/info")),
    ] {
        let token = if method == Method::GET { READ } else { ADMIN };
        let res = f
            .app
            .clone()
            .oneshot(request(method.clone(), &path, Some(token), None))
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {path}"
        );
        assert_eq!(res.headers()[header::RETRY_AFTER], "7");
        let body = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "draining");
    }
    // Auth still comes first.
    let res = f
        .app
        .clone()
        .oneshot(request(Method::GET, data, None, None))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // Everything else keeps working.
    for path in [
        "/health",
        "/metrics",
        "/api/v1/clustering/nodes",
        "/api/v1/clustering/updates/active",
        "/api/v1/clustering/maintenance",
        "/api/v1/clustering/audit",
        "/api/v1/openapi.json",
        // The listing reads metadata only: deliberately not drained.
        "/api/v1/clustering/storage/data?prefix=a&limit=5",
    ] {
        let res = f
            .app
            .clone()
            .oneshot(request(Method::GET, path, Some(READ), None))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
    }
    assert_eq!(f.in_flight.count(), 0);
}

#[tokio::test]
async fn requests_admitted_before_the_drain_finish_and_are_counted() {
    let f = fixture(16);
    let task = held_get(&f).await;
    assert_eq!(f.in_flight.count(), 1);
    assert!(!f.in_flight.wait_idle(Duration::from_millis(50)).await);
    // The drain begins while the request is inside the handler.
    f.updates.draining.store(30, Ordering::SeqCst);
    f.storage.release.notify_one();
    let res = task.await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_LENGTH], "1000");
    // Counted until the body is sent.
    assert_eq!(f.in_flight.count(), 1);
    let body = axum::body::to_bytes(res.into_body(), 1 << 16)
        .await
        .unwrap();
    assert_eq!(body.len(), 1000);
    assert!(f.in_flight.wait_idle(Duration::from_secs(1)).await);
    assert_eq!(f.in_flight.count(), 0);

    // A response dropped unsent is uncounted too.
    f.storage.hold.store(false, Ordering::SeqCst);
    f.updates.draining.store(0, Ordering::SeqCst);
    let res = f
        .app
        .clone()
        .oneshot(request(
            Method::GET,
            "/api/v1/clustering/storage/data/k2",
            Some(READ),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(f.in_flight.count(), 1);
    drop(res);
    assert_eq!(f.in_flight.count(), 0);
}

#[tokio::test]
async fn openapi_names_the_update_paths() {
    let f = fixture(16);
    let (s, doc) = send(
        &f.app,
        request(Method::GET, "/api/v1/openapi.json", Some(READ), None),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    for p in [
        "/api/v1/clustering/updates/plan",
        "/api/v1/clustering/updates/{operation_id}/execute",
        "/api/v1/clustering/updates/{operation_id}/status",
        "/api/v1/clustering/updates/{operation_id}/rollback",
        "/api/v1/clustering/updates/active",
        "/api/v1/clustering/updates/history",
        "/api/v1/clustering/maintenance",
        "/api/v1/clustering/audit",
        "/api/v1/events",
    ] {
        assert!(doc["paths"].get(p).is_some(), "openapi lacks {p}");
    }
    let m = &doc["paths"]["/api/v1/clustering/maintenance"];
    assert!(m.get("get").is_some() && m.get("post").is_some());
    for s in [
        "UpdateOperation",
        "PlanRequest",
        "AuditList",
        "ClusterEvent",
    ] {
        assert!(doc["components"]["schemas"].get(s).is_some(), "schema {s}");
    }
}

/// Past the concurrency bound a request is refused at once with 503
/// `overloaded`, Retry-After and the JSON shape; /health still answers; the
/// bound frees as requests finish.
#[tokio::test]
async fn requests_past_the_concurrency_bound_get_503() {
    let f = fixture_with(
        16,
        ApiLimits {
            max_concurrent_requests: 1,
            ..ApiLimits::default()
        },
    );
    let held = held_get(&f).await;
    let res = f
        .app
        .clone()
        .oneshot(request(
            Method::GET,
            "/api/v1/clustering/nodes",
            Some(READ),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()[header::RETRY_AFTER], "1");
    let body = axum::body::to_bytes(res.into_body(), 1 << 16)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "overloaded");
    // Unauthenticated floods are bounded by the same gate.
    let (s, v) = send(
        &f.app,
        request(Method::GET, "/api/v1/clustering/nodes", None, None),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("overloaded"))
    );
    let (s, _) = send(&f.app, request(Method::GET, "/health", None, None)).await;
    assert_eq!(s, StatusCode::OK);
    f.storage.release.notify_one();
    assert_eq!(held.await.unwrap().status(), StatusCode::OK);
    let (s, _) = send(
        &f.app,
        request(Method::GET, "/api/v1/clustering/nodes", Some(READ), None),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
}

/// A token over its rate gets 429 `rate_limited` with Retry-After and the
/// JSON shape naming the token by name, never by value; other tokens keep
/// their own budget.
#[tokio::test]
async fn a_token_over_its_rate_gets_429() {
    let f = fixture_with(
        16,
        ApiLimits {
            token_requests_per_second: 1,
            token_burst: 3,
            ..ApiLimits::default()
        },
    );
    let path = "/api/v1/clustering/nodes";
    for _ in 0..3 {
        let (s, _) = send(&f.app, request(Method::GET, path, Some(READ), None)).await;
        assert_eq!(s, StatusCode::OK);
    }
    let res = f
        .app
        .clone()
        .oneshot(request(Method::GET, path, Some(READ), None))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()[header::RETRY_AFTER], "1");
    let body = axum::body::to_bytes(res.into_body(), 1 << 16)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&body);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "rate_limited");
    assert!(text.contains("viewer") && !text.contains(READ), "{text}");
    let (s, _) = send(&f.app, request(Method::GET, path, Some(ADMIN), None)).await;
    assert_eq!(s, StatusCode::OK);
}

/// Every JSON route refuses a body over the cap with 413 and the JSON shape.
#[tokio::test]
async fn json_bodies_over_the_cap_get_413() {
    let f = fixture(16);
    let big = format!(
        "{{\"notes\": \"{}\"}}",
        "x".repeat(plexi_api::limits::MAX_JSON_BODY_BYTES)
    );
    for path in [
        "/api/v1/clustering/updates/plan",
        "/api/v1/clustering/maintenance",
        "/api/v1/clustering/updates/releases",
    ] {
        let (s, v) = send(&f.app, request(Method::POST, path, Some(ADMIN), Some(&big))).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{path}: {v}");
        assert_eq!(v["error"]["code"], "payload_too_large", "{path}");
    }
}

/// Event streams are bounded per node: past the bound 503 `overloaded`;
/// a closed stream frees its place.
#[tokio::test]
async fn event_streams_are_bounded() {
    let f = fixture_with(
        16,
        ApiLimits {
            max_event_streams: 1,
            ..ApiLimits::default()
        },
    );
    let open = || request(Method::GET, "/api/v1/events", Some(READ), None);
    let first = f.app.clone().oneshot(open()).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let (s, v) = send(&f.app, open()).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("overloaded"))
    );
    drop(first);
    let again = f.app.clone().oneshot(open()).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
}

/// A browser's EventSource sends no header: a ticket from
/// `GET /events/ticket` opens the stream instead, on that route only; a
/// forged, foreign or expired ticket gets 401 with the JSON error body.
#[tokio::test]
async fn event_tickets_open_the_stream_without_a_header() {
    let f = fixture(16);
    let (s, v) = send(
        &f.app,
        request(Method::GET, "/api/v1/events/ticket", None, None),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, v) = send(
        &f.app,
        request(Method::GET, "/api/v1/events/ticket", Some(READ), None),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let ticket = v["ticket"].as_str().unwrap().to_string();
    assert!(v["expires_at"].as_str().unwrap().ends_with('Z'), "{v}");

    let res = f
        .app
        .clone()
        .oneshot(request(
            Method::GET,
            &format!("/api/v1/events?ticket={ticket}"),
            None,
            None,
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    f.updates.events.send(event("alert.raised", 1)).unwrap();
    let got = sse_events(res.into_body(), 1).await;
    assert_eq!(got[0].0, "alert.raised");

    // Refused: on another route, altered, from another node's key, expired.
    let viewer = Caller {
        name: "viewer".into(),
        role: Role::Read,
    };
    let foreign = EventTickets::new([1; 32])
        .issue(&viewer, plexi_util::clock::wall_ms())
        .0;
    let expired = EventTickets::new(TICKET_KEY)
        .issue(&viewer, plexi_util::clock::wall_ms() - 61_000)
        .0;
    let altered = ticket.replace(".read.", ".admin.");
    for (path, why) in [
        (
            format!("/api/v1/clustering/maintenance?ticket={ticket}"),
            "another route",
        ),
        (
            format!("/api/v1/events/ticket?ticket={ticket}"),
            "the ticket route",
        ),
        (format!("/api/v1/events?ticket={altered}"), "altered"),
        (format!("/api/v1/events?ticket={foreign}"), "another node"),
        (format!("/api/v1/events?ticket={expired}"), "expired"),
        ("/api/v1/events?ticket=".to_string(), "empty"),
    ] {
        let (s, v) = send(&f.app, request(Method::GET, &path, None, None)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{why}: {v}");
        assert_eq!(v["error"]["code"], "unauthorized", "{why}: {v}");
    }
    let (_, v) = send(
        &f.app,
        request(
            Method::GET,
            &format!("/api/v1/events?ticket={expired}"),
            None,
            None,
        ),
    )
    .await;
    assert!(
        v["error"]["message"].as_str().unwrap().contains("expired"),
        "{v}"
    );
}

/// Ticket holders are held to their token's rate, by the token's name.
#[tokio::test]
async fn ticket_users_share_their_tokens_rate() {
    let f = fixture_with(
        16,
        ApiLimits {
            token_requests_per_second: 1,
            token_burst: 2,
            ..ApiLimits::default()
        },
    );
    let (s, v) = send(
        &f.app,
        request(Method::GET, "/api/v1/events/ticket", Some(READ), None),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let ticket = v["ticket"].as_str().unwrap().to_string();
    let first = f
        .app
        .clone()
        .oneshot(request(
            Method::GET,
            &format!("/api/v1/events?ticket={ticket}"),
            None,
            None,
        ))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let (s, v) = send(
        &f.app,
        request(
            Method::GET,
            &format!("/api/v1/events?ticket={ticket}"),
            None,
            None,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
}
