//! The simulator's HTTP server: connection handling, routes, API-key check, and the small
//! endpoints (/health, /metrics, /version, /v1/models, /sim/faults). The inference endpoints
//! are in inference.rs.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower::ServiceExt;

use super::args::{SimConfig, SimEngine};
use super::engine::Engines;
use super::faults::{Action, FaultState, Faults, MetricsFault};
use super::inference;
use super::lagged::{keep_history, MetricsHistory};
use super::metrics::SimMetrics;
use super::protocol::{ModelCard, ModelList, ModelPermission};
use super::tokenizer::splitmix64;
use crate::openai::ApiError;

/// Request bodies above this are refused with 413 (vLLM itself has no limit this low).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Everything the handlers share.
pub struct SimState {
    pub cfg: SimConfig,
    pub engines: Engines,
    pub metrics: SimMetrics,
    pub faults: Arc<FaultState>,
    /// Past renderings of /metrics, while `metrics_lag_ms` is set (lagged.rs).
    pub lagged: MetricsHistory,
    /// Unix time the server started (`created` of model cards).
    pub started: u64,
    ids: AtomicU64,
}

pub type Shared = Arc<SimState>;

impl SimState {
    /// Builds the state and starts the engines on the current runtime; with KV cache events
    /// on, `kv_events` are the engines' publishers (kv_publisher.rs).
    pub fn start(
        cfg: SimConfig,
        faults: Arc<FaultState>,
        kv_events: &[tokio::sync::mpsc::UnboundedSender<Vec<crate::kv_events::wire::Event>>],
    ) -> Shared {
        let metrics = SimMetrics::new(
            &cfg.served_model_names[0],
            cfg.engines,
            cfg.shape.block_size,
            cfg.shape.num_gpu_blocks,
        );
        let engines = Engines::start(
            cfg.engines,
            cfg.shape,
            cfg.cost,
            &metrics,
            faults.slowdown(),
            kv_events,
        );
        let started = unix_now();
        let state = Arc::new(SimState {
            engines,
            metrics,
            faults,
            lagged: MetricsHistory::default(),
            started,
            ids: AtomicU64::new(splitmix64(started ^ std::process::id() as u64)),
            cfg,
        });
        keep_history(Arc::downgrade(&state));
        state
    }

    /// The names requests may use: served names and LoRA adapters, or the fault override.
    pub fn model_names(&self) -> Vec<String> {
        if let Some(models) = &self.faults.get().models {
            return models.clone();
        }
        let mut names = self.cfg.served_model_names.clone();
        names.extend(self.cfg.lora_modules.iter().map(|l| l.name.clone()));
        names
    }

    /// The model a request names, checked; no `model` means the first served name.
    pub fn resolve_model(&self, requested: Option<&str>) -> Result<String, ApiError> {
        let names = self.model_names();
        match requested {
            None => Ok(names[0].clone()),
            Some(name) if names.iter().any(|n| n == name) => Ok(name.to_string()),
            Some(name) => Err(ApiError::not_found(format!(
                "The model `{name}` does not exist. Valid aliases: {}.",
                names.join(", ")
            ))
            .with_param("model")),
        }
    }

    /// /metrics as the imitated server prints it.
    pub fn render_metrics(&self) -> String {
        match self.cfg.engine {
            SimEngine::Vllm => self.metrics.render(),
            SimEngine::Sglang => self.metrics.render_sglang(),
        }
    }

    /// A fresh 32-hex-digit id.
    pub fn random_id(&self) -> String {
        let n = self.ids.fetch_add(1, Relaxed);
        format!("{:016x}{:016x}", splitmix64(n), splitmix64(!n))
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            self.to_json(),
        )
            .into_response()
    }
}

/// Turns axum's body rejections (too large, unreadable) into OpenAI-shaped errors.
pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status().as_u16();
        let kind = if status == 413 {
            "RequestEntityTooLarge"
        } else {
            "BadRequestError"
        };
        ApiError::new(status, kind, rejection.body_text())
    })
}

/// Closes the connection a request arrived on (the "close" fault).
#[derive(Clone, Default)]
pub struct ConnKill(Arc<Notify>);

impl ConnKill {
    pub fn close(&self) {
        self.0.notify_one();
    }
}

/// Applies the fault plan of one inference request. `Ok(cut_stream_after)` means "serve it".
pub async fn inject_faults(
    state: &SimState,
    kill: Option<&ConnKill>,
) -> Result<Option<u32>, Response> {
    let plan = state.faults.plan();
    if let Some(delay) = plan.delay {
        tokio::time::sleep(delay).await;
    }
    match plan.action {
        Action::Serve => Ok(plan.cut_stream_after),
        Action::Fail(status) => {
            let mut response = injected_error(status).into_response();
            if status == 429 {
                // What a rate limiter in front of vLLM says: when to come back.
                let seconds = HeaderValue::from(state.faults.get().retry_after);
                response.headers_mut().insert(header::RETRY_AFTER, seconds);
            }
            Err(response)
        }
        Action::Close => {
            if let Some(kill) = kill {
                kill.close();
            }
            std::future::pending().await
        }
        // Held until the client gives up; hyper then drops this future.
        Action::Hang => std::future::pending().await,
    }
}

fn injected_error(status: u16) -> ApiError {
    match status {
        503 => ApiError::new(
            503,
            "Service Unavailable",
            "The engine is currently busy and cannot accept new requests. Please try again later or on a different instance.",
        ),
        429 => ApiError::new(429, "RateLimitError", "Too many requests (injected fault)."),
        s if s >= 500 => ApiError::new(s, "InternalServerError", "Internal server error (injected fault)."),
        s => ApiError::new(s, "BadRequestError", "Request refused (injected fault)."),
    }
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/metrics", get(metrics))
        .route("/version", get(version))
        .route("/v1/models", get(list_models))
        .route("/get_model_info", get(model_info))
        .route("/v1/chat/completions", post(inference::chat))
        .route("/v1/completions", post(inference::completions))
        .route("/v1/responses", post(inference::responses))
        .route("/v1/embeddings", post(inference::embeddings))
        .route("/tokenize", post(super::tokenize::tokenize_handler))
        .route(
            "/reset_prefix_cache",
            post(super::tokenize::reset_prefix_cache),
        )
        .route(
            "/sim/faults",
            get(show_faults)
                .post(merge_faults)
                .put(replace_faults)
                .delete(clear_faults),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_api_key,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Like vLLM: with an API key set, every /v1 path needs `Authorization: Bearer <key>`.
async fn require_api_key(State(state): State<Shared>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.cfg.api_key {
        if request.uri().path().starts_with("/v1") {
            let presented = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if presented != Some(key.as_str()) {
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::CONTENT_TYPE, "application/json")],
                    r#"{"error":"Unauthorized"}"#,
                )
                    .into_response();
            }
        }
    }
    next.run(request).await
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "No route for {} {}",
        request.method(),
        request.uri().path()
    ))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        405,
        "MethodNotAllowed",
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn version() -> Response {
    let body = format!(
        "{{\"version\":\"0.11.0+mvllm.sim.{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn metrics(State(state): State<Shared>) -> Response {
    if !state.cfg.serve_metrics {
        // SGLang without --enable-metrics: FastAPI's answer for a route that is not there.
        let json = [(header::CONTENT_TYPE, "application/json")];
        return (StatusCode::NOT_FOUND, json, r#"{"detail":"Not Found"}"#).into_response();
    }
    let faults = state.faults.get();
    if faults.metrics_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.metrics_delay_ms)).await;
    }
    let text_plain = "text/plain; version=0.0.4; charset=utf-8";
    match faults.metrics {
        MetricsFault::Ok if faults.metrics_lag_ms > 0 => {
            let then = Instant::now().checked_sub(Duration::from_millis(faults.metrics_lag_ms));
            let text = then.and_then(|t| state.lagged.as_of(t));
            let text = text.map_or_else(|| state.render_metrics(), |t| t.to_string());
            ([(header::CONTENT_TYPE, text_plain)], text).into_response()
        }
        MetricsFault::Ok => {
            ([(header::CONTENT_TYPE, text_plain)], state.render_metrics()).into_response()
        }
        MetricsFault::Empty => ([(header::CONTENT_TYPE, text_plain)], "").into_response(),
        MetricsFault::Garbage => {
            ([(header::CONTENT_TYPE, text_plain)], GARBAGE_METRICS).into_response()
        }
        MetricsFault::Error => {
            (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response()
        }
    }
}

/// What a broken exporter or a proxy error page might serve instead of metrics.
const GARBAGE_METRICS: &str = "<html><body><h1>502 Bad Gateway</h1></body></html>\n\
vllm:num_requests_running{engine=\"0\" 3.0\n\
vllm:num_requests_waiting{engine=\"0\",model_name=\"x\"} many\n\
vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"x\"} 0.5 0.6 0.7 extra\n\
# TYPE vllm:num_requests_running gauge gauge\n\
\u{fffd}\u{fffd}\u{7}\t{}}}=\"\n";

/// SGLang's `/get_model_info` (not on a vLLM sim).
async fn model_info(State(state): State<Shared>, request: Request) -> Response {
    if state.cfg.engine != SimEngine::Sglang {
        return not_found(request).await.into_response();
    }
    axum::Json(serde_json::json!({
        "model_path": state.cfg.model,
        "tokenizer_path": state.cfg.model,
        "is_generation": true,
        "preferred_sampling_params": null,
        "weight_version": "default",
    }))
    .into_response()
}

async fn list_models(State(state): State<Shared>) -> Response {
    let cfg = &state.cfg;
    let created = state.started;
    let card =
        |id: &str, root: &str, parent: Option<&str>, max_len: Option<usize>, state: &SimState| {
            (
                id.to_string(),
                root.to_string(),
                parent.map(str::to_string),
                max_len,
                format!("modelperm-{}", &state.random_id()[..16]),
            )
        };
    let mut cards = Vec::new();
    if let Some(models) = &state.faults.get().models {
        for name in models {
            cards.push(card(
                name,
                &cfg.model,
                None,
                Some(cfg.max_model_len),
                &state,
            ));
        }
    } else {
        for name in &cfg.served_model_names {
            cards.push(card(
                name,
                &cfg.model,
                None,
                Some(cfg.max_model_len),
                &state,
            ));
        }
        for lora in &cfg.lora_modules {
            cards.push(card(
                &lora.name,
                &lora.path,
                Some(&cfg.served_model_names[0]),
                None,
                &state,
            ));
        }
    }
    let list = ModelList {
        object: "list",
        data: cards
            .iter()
            .map(|(id, root, parent, max_model_len, perm)| ModelCard {
                id,
                object: "model",
                created,
                owned_by: match state.cfg.engine {
                    SimEngine::Vllm => "vllm",
                    SimEngine::Sglang => "sglang",
                },
                root,
                parent: parent.as_deref(),
                max_model_len: *max_model_len,
                permission: [ModelPermission::new(perm.clone(), created)],
            })
            .collect(),
    };
    axum::Json(list).into_response()
}

async fn show_faults(State(state): State<Shared>) -> Response {
    axum::Json(&*state.faults.get()).into_response()
}

fn faults_answer(result: Result<Faults, String>) -> Response {
    match result {
        Ok(faults) => {
            tracing::info!(?faults, "faults changed");
            axum::Json(faults).into_response()
        }
        Err(message) => ApiError::bad_request(message).into_response(),
    }
}

async fn merge_faults(
    State(state): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let patch = body_bytes(body).and_then(|b| super::protocol::parse_json::<serde_json::Value>(&b));
    match patch {
        Ok(patch) => faults_answer(state.faults.merge(patch)),
        Err(e) => e.into_response(),
    }
}

async fn replace_faults(
    State(state): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let faults = body_bytes(body).and_then(|b| super::protocol::parse_json::<Faults>(&b));
    match faults {
        Ok(faults) => faults_answer(state.faults.set(faults.clone()).map(|()| faults)),
        Err(e) => e.into_response(),
    }
}

async fn clear_faults(State(state): State<Shared>) -> Response {
    faults_answer(
        state
            .faults
            .set(Faults::default())
            .map(|()| Faults::default()),
    )
}

/// The `X-Request-Id` a client sent, if it is usable as an id.
pub fn client_request_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("x-request-id")?.to_str().ok()?;
    crate::request_id::is_usable(value).then(|| value.to_string())
}

/// Adds `X-Request-Id` to a response.
pub fn with_request_id(mut response: Response, request_id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Serves HTTP/1.1 (over TLS with `tls`) on `listener` until `shutdown` completes. Each
/// connection gets a [`ConnKill`] in its requests' extensions, so a handler can drop the
/// connection.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, app).await,
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout(Duration::from_secs(10), handshake).await {
                        Ok(Ok(stream)) => serve_connection(stream, app).await,
                        Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn serve_connection<S>(stream: S, app: Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let kill = ConnKill::default();
    let for_requests = kill.clone();
    let service = hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(for_requests.clone());
        let app = app.clone();
        async move { Ok::<_, Infallible>(app.oneshot(request.map(Body::new)).await.into_response()) }
    });
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        () = kill.0.notified() => {}
    }
}
