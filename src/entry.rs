//! Where every request starts, once front_door.rs has read its header.
//!
//! [`Router::handle`] answers it: the router's own endpoints in place, everything under `/v1/`
//! (and vLLM's `/tokenize`, `/detokenize`) by forward.rs, which does its own upstream I/O (see
//! forward.rs for why Pingora's proxy phases are not used). Its context is a
//! [`RequestContext`], born in [`Router::new_ctx`] and dropped when the connection has been
//! handed back for the next request.
//!
//! Calls go one way: entry → {api, forward} → {policy, upstream, respond, retry}; the context
//! carries the facts down, and its drop reports them to [`Recorder`] (stats hub, access log).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::pool::UpstreamPool;
use pingora::http::Method;
use pingora::prelude::Session;

use crate::access::Refused;
use crate::access_log::AccessLog;
use crate::api;
use crate::backend::ServerView;
use crate::cluster::{Cluster, Snapshot};
use crate::config::Limits;
use crate::context::{Finish, LocalRoute, Outcome, RequestContext};
use crate::decisions::DecisionLog;
use crate::features;
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
        if let Some(pass) = &request.pass {
            let usage = &request.usage;
            let tokens = usage.prompt_tokens.unwrap_or(0) + usage.completion_tokens.unwrap_or(0);
            pass.used_tokens(tokens, std::time::Instant::now());
        }
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
    pool: Arc<UpstreamPool>,
    recorder: Arc<Recorder>,
    /// The admin listener (`admin_address`, read at start), if there is one.
    admin: Option<SocketAddr>,
    /// The trace exporter, when traces are on.
    traces: Option<Arc<Traces>>,
}

impl Router {
    pub fn new(
        cluster: Arc<Cluster>,
        pool: Arc<UpstreamPool>,
        recorder: Arc<Recorder>,
        admin: Option<SocketAddr>,
        traces: Option<Arc<Traces>>,
    ) -> Router {
        Router {
            cluster,
            pool,
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

    /// A new request's context.
    pub fn new_ctx(&self) -> RequestContext {
        let mut ctx = RequestContext::new(Arc::clone(&self.recorder) as Arc<dyn Finish>);
        ctx.explain = self.recorder.decisions.is_some();
        ctx
    }

    /// Answers one request whose header has been read (front_door.rs reads it).
    pub async fn handle(&self, session: &mut Session, ctx: &mut RequestContext) {
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.begin(session.req_header(), client);
        let header = session.req_header();
        let snapshot = self.cluster.snapshot();
        if let Some(error) = oversized_header(session.req_header(), &snapshot.limits) {
            return answer_unread(session, ctx, &snapshot, &error, None).await;
        }
        // With an admin listener, the operator's endpoints are there and only there.
        let admin = self.on_admin_listener(session);
        let operator = self.admin.is_none() || admin;
        // `None`: forwarded to a server.
        let route = match (&header.method, header.uri.path()) {
            (&Method::GET, "/health") => Some(LocalRoute::Health),
            (&Method::GET, "/load-stats") if operator => Some(LocalRoute::LoadStats),
            (&Method::GET, "/metrics") if operator => Some(LocalRoute::Metrics),
            _ if admin => Some(LocalRoute::NotFound),
            (&Method::GET, "/v1/models") => Some(LocalRoute::Models),
            (&Method::GET, p) if p.starts_with("/v1/models/") => Some(LocalRoute::Model),
            (_, p) if p.starts_with("/v1/") || p == "/tokenize" || p == "/detokenize" => None,
            _ => Some(LocalRoute::NotFound),
        };
        let Some(route) = route else {
            if let Err(refused) = self.admit(session, ctx, &snapshot) {
                return self.refuse(session, ctx, &snapshot, refused).await;
            }
            if let Some(traces) = &self.traces {
                let headers = &session.req_header().headers;
                ctx.trace = Some(Box::new(traces.begin(ctx, headers)));
            }
            return forward::forward(session, ctx, &self.cluster, &snapshot, &self.pool).await;
        };
        ctx.local = Some(route);
        // The operator's endpoints may need the admin key; the model list, a client key
        // (and it lists only the models that key may use).
        let access = &snapshot.access;
        let client = match route {
            LocalRoute::LoadStats | LocalRoute::Metrics => {
                access.admin_allows(session.req_header()).map(|()| None)
            }
            LocalRoute::Models | LocalRoute::Model => access.identify(session.req_header()),
            _ => Ok(None),
        };
        let client = match client {
            Ok(client) => client,
            Err(refused) => return self.refuse(session, ctx, &snapshot, refused).await,
        };
        ctx.client = client.as_ref().map(|c| Arc::clone(&c.name));
        let allowed = |id: &str| client.as_ref().is_none_or(|c| c.allows_model(Some(id)));
        let written = match route {
            LocalRoute::Health => {
                let error = self.cluster.config_error();
                let (status, body) = api::health(&snapshot, error.as_deref().map(String::as_str));
                respond::json(session, ctx, status, &body).await
            }
            LocalRoute::LoadStats => {
                respond::json(
                    session,
                    ctx,
                    200,
                    &api::load_stats(&snapshot, self.cluster.tokenization()),
                )
                .await
            }
            LocalRoute::Models => {
                respond::json(session, ctx, 200, &api::models(&snapshot, allowed)).await
            }
            LocalRoute::Model => {
                let id = api::model_id(&ctx.path);
                match api::model(&snapshot, &id).filter(|_| allowed(&id)) {
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

    /// Admits an inference request: its client key, if the router checks keys, and that
    /// key's limits. The key's [`Pass`](crate::access::Pass) goes into the context; the
    /// client's `Authorization` (a key for the router, not the servers) is dropped.
    fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
        snapshot: &Snapshot,
    ) -> std::result::Result<(), Refused> {
        let access = &snapshot.access;
        let Some(client) = access.identify(session.req_header())? else {
            return Ok(());
        };
        // A key was checked (never with `forward_client_authorization`): it was for the router.
        session
            .req_header_mut()
            .remove_header(&http::header::AUTHORIZATION);
        ctx.client = Some(Arc::clone(&client.name));
        ctx.pass = Some(client.admit(std::time::Instant::now())?);
        Ok(())
    }

    /// Refuses a request before routing it (a wrong key, a limit).
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
        snapshot: &Snapshot,
        refused: Refused,
    ) {
        let client = refused.client.as_ref().map(|c| &c.state.stats);
        self.cluster.stats().refused(client, refused.why);
        let retry_after = refused.retry_after.map(|s| s.to_string());
        answer_unread(session, ctx, snapshot, &refused.error, retry_after).await;
    }
}

/// Answers a request with an error before its body was read: the body is read and dropped
/// first, so that the client gets the answer rather than a reset from a socket closed with its
/// body unread, and the connection stays usable.
async fn answer_unread(
    session: &mut Session,
    ctx: &mut RequestContext,
    snapshot: &Snapshot,
    error: &ApiError,
    retry_after: Option<String>,
) {
    ctx.outcome = Outcome::Rejected;
    let limit = (
        snapshot.settings.max_body_bytes,
        snapshot.limits.body_timeout,
    );
    if features::read_body(session, limit.0, limit.1)
        .await
        .is_err()
    {
        session.set_keepalive(None);
    }
    let extra: Vec<(&str, String)> = retry_after
        .map(|s| ("retry-after", s))
        .into_iter()
        .collect();
    if let Err(e) = respond::error(session, ctx, error, &extra).await {
        tracing::debug!(error = %e, "could not answer the client");
    }
}

/// 431 for a request header over `[limits]`' size or field count.
fn oversized_header(header: &pingora::http::RequestHeader, limits: &Limits) -> Option<ApiError> {
    let fields = header.headers.len();
    let target = header.uri.path_and_query().map_or(1, |p| p.as_str().len());
    let bytes = header.method.as_str().len()
        + target
        + 12
        + header
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>();
    let why = if fields > limits.max_headers as usize {
        format!(
            "The request has {fields} header fields; the router takes at most {} (max_headers).",
            limits.max_headers
        )
    } else if bytes > limits.max_header_bytes as usize {
        format!(
            "The request header is about {bytes} bytes; the router takes at most {} (max_header_bytes).",
            limits.max_header_bytes
        )
    } else {
        return None;
    };
    Some(ApiError::new(431, "RequestHeaderFieldsTooLargeError", why))
}
