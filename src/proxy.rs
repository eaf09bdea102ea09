//! The router's request path, as a Pingora `ProxyHttp`.
//!
//! Every request is answered inside `request_filter`: the router's own endpoints in place,
//! everything under `/v1/` (and vLLM's `/tokenize`, `/detokenize`) by `forward.rs`, which
//! does the upstream exchange itself with Pingora's connection pool. Pingora's own proxy
//! phase is never reached (see forward.rs for why).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::connectors::http::v1::Connector;
use pingora::http::{Method, ResponseHeader};
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};

use crate::api;
use crate::balance::Policy;
use crate::cluster::Cluster;
use crate::forward;
use crate::openai::ApiError;

/// The router: shared cluster state, the balancing policy, and the upstream connection pool.
pub struct Router {
    pub cluster: Arc<Cluster>,
    pub policy: Box<dyn Policy>,
    pub connector: Connector,
    /// Requests being answered right now (for draining on shutdown).
    active: Arc<AtomicUsize>,
}

/// Counts a request as active while it lives.
struct Active<'a>(&'a AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Router {
    pub fn new(
        cluster: Arc<Cluster>,
        policy: Box<dyn Policy>,
        connector: Connector,
        active: Arc<AtomicUsize>,
    ) -> Router {
        Router {
            cluster,
            policy,
            connector,
            active,
        }
    }

    async fn handle(&self, session: &mut Session) {
        self.active.fetch_add(1, Relaxed);
        let _active = Active(&self.active);
        let header = session.req_header();
        let path = header.uri.path();
        let method = header.method.clone();
        let result = match (method, path) {
            (Method::GET, "/health") => {
                let (status, body) = api::health(&self.cluster);
                respond_json(session, status, &body).await
            }
            (Method::GET, "/load-stats") => {
                respond_json(session, 200, &api::load_stats(&self.cluster)).await
            }
            (Method::GET, "/v1/models") => {
                respond_json(session, 200, &api::models(&self.cluster)).await
            }
            (_, p) if p.starts_with("/v1/") || p == "/tokenize" || p == "/detokenize" => {
                forward::forward(self, session).await;
                Ok(())
            }
            (method, p) => {
                let error = ApiError::not_found(format!(
                    "No route for {method} {p}: the router serves /v1/*, /tokenize, /detokenize, /health and /load-stats"
                ));
                respond_error(session, &error, &[]).await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "could not answer the client");
        }
    }
}

/// Writes a whole JSON response.
pub async fn respond_json(
    session: &mut Session,
    status: u16,
    body: &serde_json::Value,
) -> Result<()> {
    let bytes = serde_json::to_vec(body).expect("JSON values always serialize");
    respond(session, status, "application/json", Bytes::from(bytes), &[]).await
}

/// Writes an OpenAI-shaped error, with extra headers (e.g. `Retry-After`).
pub async fn respond_error(
    session: &mut Session,
    error: &ApiError,
    extra: &[(&str, String)],
) -> Result<()> {
    respond(
        session,
        error.status,
        "application/json",
        Bytes::from(error.to_json()),
        extra,
    )
    .await
}

pub async fn respond(
    session: &mut Session,
    status: u16,
    content_type: &str,
    body: Bytes,
    extra: &[(&str, String)],
) -> Result<()> {
    let mut header = ResponseHeader::build(status, Some(3 + extra.len()))?;
    header.insert_header("content-type", content_type)?;
    header.insert_header("content-length", body.len().to_string())?;
    for (name, value) in extra {
        header.insert_header(name.to_string(), value.as_str())?;
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await
}

#[async_trait]
impl ProxyHttp for Router {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        self.handle(session).await;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        // Unreachable: request_filter answers every request.
        Error::e_explain(
            ErrorType::InternalError,
            "every request is answered in request_filter",
        )
    }
}
