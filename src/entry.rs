//! The Pingora entry point: every request starts here.
//!
//! [`Router`] is the `ProxyHttp` implementation. Its context is a [`RequestContext`], born in
//! `new_ctx` and dropped by Pingora when the request is over. Every request is answered inside
//! `request_filter`: the router's own endpoints in place, everything under `/v1/` (and vLLM's
//! `/tokenize`, `/detokenize`) by forward.rs. Pingora's own proxy phase is never reached (see
//! forward.rs for why).
//!
//! Calls go one way: entry → {api, forward} → {policy, upstream, respond, retry}; the context
//! carries the facts down, and its drop reports them to [`Recorder`] (stats hub, access log).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::connectors::http::v1::Connector;
use pingora::http::Method;
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};

use crate::access_log::AccessLog;
use crate::api;
use crate::backend::ServerView;
use crate::cluster::Cluster;
use crate::context::{Finish, LocalRoute, RequestContext};
use crate::decisions::DecisionLog;
use crate::forward;
use crate::openai::ApiError;
use crate::respond;
use crate::traces::Traces;

/// Where finished requests are recorded, and how many are being answered.
pub struct Recorder {
    cluster: Arc<Cluster>,
    access_log: Option<AccessLog>,
    /// The monitor's why view, while it runs.
    decisions: Option<DecisionLog>,
    /// Requests being answered right now (low 32 bits; the drain on shutdown waits for 0),
    /// and requests begun so far (high 32 bits, wrapping; the drain waits for them to stop
    /// coming): one atomic add per request for both.
    counts: AtomicU64,
}

/// One request begun and being answered, in `Recorder::counts`.
const BEGUN_AND_ACTIVE: u64 = (1 << 32) + 1;

impl Recorder {
    pub fn new(
        cluster: Arc<Cluster>,
        access_log: Option<AccessLog>,
        decisions: Option<DecisionLog>,
    ) -> Recorder {
        Recorder {
            cluster,
            access_log,
            decisions,
            counts: AtomicU64::new(0),
        }
    }

    /// Requests being answered right now.
    pub fn active(&self) -> usize {
        (self.counts.load(Relaxed) & u64::from(u32::MAX)) as usize
    }

    /// Requests begun so far (wrapping): compared between two readings, whether any began.
    pub fn begun(&self) -> u32 {
        (self.counts.load(Relaxed) >> 32) as u32
    }
}

impl Finish for Recorder {
    fn started(&self) {
        self.counts.fetch_add(BEGUN_AND_ACTIVE, Relaxed);
    }

    fn finished(&self, request: &RequestContext) {
        self.cluster.stats().record(request);
        crate::speed::learn(request);
        if let Some(log) = &self.access_log {
            log.write(request);
        }
        if let Some(decisions) = &self.decisions {
            decisions.record(request);
        }
        self.counts.fetch_sub(1, Relaxed);
    }
}

/// The router: the cluster, the upstream connection pool, and where requests are recorded.
pub struct Router {
    cluster: Arc<Cluster>,
    connector: Connector,
    recorder: Arc<Recorder>,
    /// The admin listener (`admin_address`, read at start), if there is one.
    admin: Option<SocketAddr>,
    /// The trace exporter, when traces are on.
    traces: Option<Arc<Traces>>,
}

impl Router {
    pub fn new(
        cluster: Arc<Cluster>,
        connector: Connector,
        recorder: Arc<Recorder>,
        admin: Option<SocketAddr>,
        traces: Option<Arc<Traces>>,
    ) -> Router {
        Router {
            cluster,
            connector,
            recorder,
            admin,
            traces,
        }
    }

    /// Whether `session` came in on the admin listener.
    fn on_admin_listener(&self, session: &Session) -> bool {
        let Some(admin) = self.admin else {
            return false;
        };
        let local = session.server_addr().and_then(|a| a.as_inet());
        local.is_some_and(|l| {
            l.port() == admin.port() && (admin.ip().is_unspecified() || l.ip() == admin.ip())
        })
    }

    async fn handle(&self, session: &mut Session, ctx: &mut RequestContext) {
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.begin(session.req_header(), client);
        let header = session.req_header();
        let snapshot = self.cluster.snapshot();
        // With an admin listener, the operator's endpoints are there and only there.
        let admin = self.on_admin_listener(session);
        let operator = self.admin.is_none() || admin;
        let route = match (&header.method, header.uri.path()) {
            (&Method::GET, "/health") => LocalRoute::Health,
            (&Method::GET, "/load-stats") if operator => LocalRoute::LoadStats,
            (&Method::GET, "/metrics") if operator => LocalRoute::Metrics,
            _ if admin => LocalRoute::NotFound,
            (&Method::GET, "/v1/models") => LocalRoute::Models,
            (&Method::GET, p) if p.starts_with("/v1/models/") => LocalRoute::Model,
            (_, p) if p.starts_with("/v1/") || p == "/tokenize" || p == "/detokenize" => {
                if let Some(traces) = &self.traces {
                    ctx.trace = Some(Box::new(traces.begin(ctx, &header.headers)));
                }
                return forward::forward(session, ctx, &self.cluster, &snapshot, &self.connector)
                    .await;
            }
            _ => LocalRoute::NotFound,
        };
        ctx.local = Some(route);
        let written = match route {
            LocalRoute::Health => {
                let error = self.cluster.config_error();
                let (status, body) = api::health(&snapshot, error.as_deref().map(String::as_str));
                respond::json(session, ctx, status, &body).await
            }
            LocalRoute::LoadStats => {
                respond::json(session, ctx, 200, &api::load_stats(&snapshot)).await
            }
            LocalRoute::Models => respond::json(session, ctx, 200, &api::models(&snapshot)).await,
            LocalRoute::Model => {
                let id = api::model_id(&ctx.path);
                match api::model(&snapshot, &id) {
                    Some(card) => respond::json(session, ctx, 200, &card).await,
                    None => {
                        let error =
                            ApiError::not_found(format!("The model `{id}` does not exist."))
                                .with_param("model");
                        respond::error(session, ctx, &error, &[]).await
                    }
                }
            }
            LocalRoute::Metrics => {
                let views: Vec<ServerView> = snapshot.backends.iter().map(ServerView::of).collect();
                let text = self.cluster.stats().render(&views, self.recorder.active());
                respond::metrics(session, ctx, text).await
            }
            LocalRoute::NotFound => {
                let serves = match (self.admin, admin) {
                    (None, _) => "/v1/*, /tokenize, /detokenize, /health, /load-stats and /metrics",
                    (Some(_), false) => "/v1/*, /tokenize, /detokenize and /health (/load-stats and /metrics are on the admin address)",
                    (Some(_), true) => "/health, /load-stats and /metrics (this is the admin address)",
                };
                let error = ApiError::not_found(format!(
                    "No route for {} {}: the router serves {serves}",
                    ctx.method, ctx.path
                ));
                respond::error(session, ctx, &error, &[]).await
            }
        };
        if let Err(e) = written {
            tracing::debug!(error = %e, "could not answer the client");
        }
    }
}

#[async_trait]
impl ProxyHttp for Router {
    type CTX = RequestContext;

    fn new_ctx(&self) -> RequestContext {
        let mut ctx = RequestContext::new(Arc::clone(&self.recorder) as Arc<dyn Finish>);
        ctx.explain = self.recorder.decisions.is_some();
        ctx
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<bool> {
        self.handle(session, ctx).await;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestContext,
    ) -> Result<Box<HttpPeer>> {
        // Unreachable: request_filter answers every request.
        Error::e_explain(
            ErrorType::InternalError,
            "every request is answered in request_filter",
        )
    }
}
