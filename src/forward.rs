//! Forwarding one request: choose a server, try it, and on failure decide (retry.rs) whether
//! to try another, while the client has seen nothing.
//!
//! Why the router does the upstream exchange itself instead of using Pingora's proxy phase:
//! Pingora replays a request body on retry only from a 64 KiB buffer (bodies above it are
//! silently not sent again), never retries a POST once connected, and does not stop retrying
//! after response headers went downstream. LLM requests are POSTs with bodies far above 64 KiB.
//! So the body is read once (bounded by `max_body_bytes`), and each attempt writes it whole
//! over the router's connection pool (upstream.rs, pool.rs), waits for the response header
//! (`first_byte_timeout`), and only then commits to that server by writing to the client.

use std::sync::Arc;

use crate::pool::UpstreamPool;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::Session;

use crate::backend::Backend;
use crate::cluster::{Cluster, Snapshot};
use crate::context::{Outcome, RequestContext};
use crate::decisions;
use crate::features::{self, BodyError};
use crate::headers;
use crate::openai::ApiError;
use crate::policy::{self, NoBackend};
use crate::respond;
use crate::resume::{self, Transcript};
use crate::retry::{self, AttemptResult, Decision, Facts};
use crate::stats::Refusal;
use crate::upstream::{self, Answer, NoAnswer};

/// A failed attempt, kept to answer the client if every attempt fails.
enum Failure {
    /// The server answered with an error status (5xx or 429); its status, the headers worth
    /// passing on, and (up to 64 KiB of) its body.
    Answered {
        status: u16,
        content_type: String,
        retry_after: Option<String>,
        body: Bytes,
    },
    /// No usable answer: connect error, reset, timeout.
    NoAnswer { result: AttemptResult, why: String },
}

impl Failure {
    /// What went wrong, in words, for the logs and the server's `last_error`.
    fn why(&self) -> String {
        match self {
            Failure::Answered { status, .. } => format!("HTTP {status}"),
            Failure::NoAnswer { why, .. } => why.clone(),
        }
    }
}

/// Answers `session`'s request from a server of `snapshot`.
pub async fn forward(
    session: &mut Session,
    ctx: &mut RequestContext,
    cluster: &Cluster,
    snapshot: &Arc<Snapshot>,
    pool: &UpstreamPool,
) {
    let settings = &snapshot.settings;
    let deadline = tokio::time::Instant::from_std(ctx.received) + settings.request_timeout;

    let limit = (settings.max_body_bytes, snapshot.limits.body_timeout);
    let body = match features::read_body(session, limit.0, limit.1).await {
        Ok(body) => body,
        Err(BodyError::Refused(error)) => {
            // The rest of the body was not read (too large, or broken framing): the
            // connection cannot carry another request.
            session.set_keepalive(None);
            return reject(session, ctx, &error).await;
        }
        Err(BodyError::ClientGone) => {
            ctx.outcome = Outcome::ClientGone;
            return;
        }
    };
    let client = ctx.features.client;
    let session_header = &snapshot.routing.session_header;
    ctx.features = match features::extract(session.req_header(), body, client, session_header) {
        Ok(features) => features,
        Err(error) => return reject(session, ctx, &error).await,
    };
    if let Some(pass) = &ctx.pass {
        let model = ctx.features.model.as_deref();
        if !pass.client.allows_model(model) {
            cluster
                .stats()
                .refused(Some(&pass.client.state.stats), Refusal::Model);
            let error = unknown_model(model.unwrap_or_default(), pass.client.models());
            return reject(session, ctx, &error).await;
        }
    }

    // The prompt's token ids, for a policy that matches them with servers' KV cache events.
    if snapshot
        .policy
        .for_model(ctx.features.model.as_deref())
        .uses_prompt_tokens()
    {
        let model = ctx.features.model.as_deref();
        if let Ok(candidates) = policy::eligible(&snapshot.backends, model, |_| false) {
            let tokenization = cluster.tokenization();
            let tokens = tokenization
                .for_request(snapshot, &ctx.features, &candidates)
                .await;
            ctx.features.tokens = tokens;
        }
    }

    let budget = cluster.retry_budget();
    budget.request();
    let mut last_failure = None;
    loop {
        let chosen = {
            let model = ctx.features.model.as_deref();
            let policy = snapshot.policy.for_model(model);
            ctx.policy = policy.name();
            if ctx.attempts.is_empty() && !ctx.explain {
                policy.choose(&snapshot.backends, model, &ctx.features)
            } else {
                // A retry (some servers tried), or a choice the decision log explains: every
                // candidate is listed and scored.
                policy::eligible(&snapshot.backends, model, |b| ctx.tried(b)).map(|candidates| {
                    let chosen = policy.pick(&candidates, &ctx.features);
                    if ctx.explain {
                        let scored = decisions::scores(policy, &candidates, chosen, &ctx.features);
                        ctx.next_candidates = scored;
                    }
                    chosen
                })
            }
        };
        let backend = match chosen {
            Ok(backend) => backend,
            Err(NoBackend::UnknownModel(mut known)) if ctx.attempts.is_empty() => {
                // A key limited to some models is told only of those.
                if let Some(pass) = &ctx.pass {
                    known.retain(|m| pass.client.allows_model(Some(m)));
                }
                let model = ctx.features.model.as_deref().unwrap_or_default();
                return reject(session, ctx, &unknown_model(model, &known)).await;
            }
            Err(_) if ctx.attempts.is_empty() => return no_server(session, ctx, snapshot).await,
            // Every eligible server has been tried.
            Err(_) => break,
        };
        ctx.model_listed = true;
        if !ctx.attempts.is_empty() {
            // A retry: only if the router-wide budget has one to spare, and after a short
            // random wait (not past the deadline).
            if !budget.try_retry(settings.retry_budget_percent, settings.retry_budget_floor) {
                cluster.stats().retry_denied();
                tracing::warn!(request_id = %ctx.id, "retry budget spent: the failure goes to the client");
                break;
            }
            let retry = ctx.attempts.len() as u32;
            let wait = retry::backoff(retry, settings.retry_backoff, fastrand::f64());
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + wait)).await;
        }
        match attempt(session, ctx, snapshot, pool, backend, deadline).await {
            Step::Finished => return,
            Step::Failed(failure) => last_failure = Some(failure),
            Step::GiveUp(failure) => {
                last_failure = Some(failure);
                break;
            }
        }
    }
    give_up(session, ctx, snapshot, last_failure).await;
}

/// What one attempt came to, for the loop.
enum Step {
    /// The request is over: answered, or the client left.
    Finished,
    /// Nothing reached the client; another server may be tried.
    Failed(Failure),
    /// Nothing reached the client, and no attempt or time is left.
    GiveUp(Failure),
}

/// One try on `backend`: send, wait for the header, then decide.
async fn attempt(
    session: &mut Session,
    ctx: &mut RequestContext,
    snapshot: &Snapshot,
    pool: &UpstreamPool,
    backend: &Backend,
    deadline: tokio::time::Instant,
) -> Step {
    let settings = &snapshot.settings;
    let index = ctx.attempts.len();
    ctx.begin_attempt(backend);
    let first_byte_deadline =
        deadline.min(tokio::time::Instant::now() + settings.first_byte_timeout);
    let sent = upstream::request(
        pool,
        session,
        backend,
        &ctx.features.body,
        &ctx.id,
        headers::AttemptHeaders {
            traceparent: ctx.trace.as_ref().and_then(|t| t.traceparent()),
            data_parallel_rank: ctx.features.engine.on(backend.state.id),
        },
        first_byte_deadline,
    )
    .await;

    let (result, reused) = match &sent {
        Ok(answer) => {
            let status = answer.header.status.as_u16();
            let times = (
                Some(answer.connected),
                Some(answer.sent),
                Some(answer.received),
            );
            ctx.attempts[index].timed(times);
            (AttemptResult::Status(status), answer.reused)
        }
        Err(no) => {
            ctx.attempts[index].timed((no.connected, no.sent, None));
            (no.result, no.reused)
        }
    };
    let facts = Facts {
        result,
        client_has_bytes: false,
        attempts_left: (1 + settings.max_retries).saturating_sub(ctx.attempts.len() as u32),
        time_left: tokio::time::Instant::now() < deadline,
    };
    match (retry::decide(&facts), sent) {
        (Decision::Deliver, Ok(answer)) => {
            let status = answer.header.status.as_u16();
            let routing = settings.expose_routing_headers.then(|| headers::Routing {
                server: &backend.headers,
                attempts: ctx.attempts.len(),
            });
            // A stream that may be resumed on another server if this one dies (resume.rs).
            let api = settings
                .resume_streams
                .then(|| resume::resumable_api(&ctx.path, &ctx.features.body))
                .flatten();
            let mut transcript = api.map(Transcript::new);
            let delivered = upstream::deliver(
                pool,
                session,
                ctx,
                answer,
                routing,
                transcript.as_mut(),
                deadline,
            )
            .await;
            let left_open = delivered.left_open;
            finish_delivery(
                ctx,
                index,
                backend,
                snapshot,
                status,
                delivered.result,
                delivered.why,
            );
            if let (true, Some(api), Some(transcript)) = (left_open, api, transcript.as_mut()) {
                resume_stream(session, ctx, snapshot, pool, api, transcript, deadline).await;
            }
            Step::Finished
        }
        (decision @ (Decision::Retry | Decision::GiveUp), sent) => {
            let failure = match sent {
                Ok(mut answer) => answered_failure(&mut answer, deadline).await,
                Err(NoAnswer { result, why, .. }) => Failure::NoAnswer { result, why },
            };
            let why = failure.why();
            if retry::counts_against_server(result, reused) {
                backend.state.request_failed(why.clone(), settings);
            }
            let next = if decision == Decision::Retry {
                "another server may take it"
            } else {
                "no attempt or time left"
            };
            tracing::warn!(request_id = %ctx.id, server = %backend.cfg.url, %why, "attempt failed; {next}");
            ctx.attempts[index].end(result, Some(why));
            if decision == Decision::Retry {
                Step::Failed(failure)
            } else {
                Step::GiveUp(failure)
            }
        }
        // The client left while the server was still thinking.
        (_, _) => {
            ctx.attempts[index].end(result, None);
            ctx.outcome = Outcome::ClientGone;
            Step::Finished
        }
    }
}

/// Continues a stream whose server broke off on other servers, until it ends or no server,
/// attempt or time is left (then the client gets the error event).
async fn resume_stream(
    session: &mut Session,
    ctx: &mut RequestContext,
    snapshot: &Snapshot,
    pool: &UpstreamPool,
    api: resume::Api,
    transcript: &mut Transcript,
    deadline: tokio::time::Instant,
) {
    let settings = &snapshot.settings;
    loop {
        let attempts_left = (ctx.attempts.len() as u32) <= settings.max_retries;
        let next = if attempts_left && tokio::time::Instant::now() < deadline {
            let model = ctx.features.model.as_deref();
            policy::eligible(&snapshot.backends, model, |b| ctx.tried(b))
                .ok()
                .map(|candidates| {
                    let policy = snapshot.policy.for_model(model);
                    policy.pick(&candidates, &ctx.features)
                })
        } else {
            None
        };
        let body = next.and_then(|_| resume::continuation(&ctx.features.body, api, transcript));
        let (Some(backend), Some(body)) = (next, body) else {
            let why = "the server broke off the stream and no other server could continue it";
            let error = ApiError::new(502, "BadGateway", why);
            upstream::end_broken_answer(session, true, true, &error).await;
            return;
        };
        tracing::info!(request_id = %ctx.id, server = %backend.cfg.url, tokens = transcript.tokens, "resuming the stream on another server");
        let index = ctx.attempts.len();
        ctx.begin_attempt(backend);
        let first_byte_deadline =
            deadline.min(tokio::time::Instant::now() + settings.first_byte_timeout);
        let body = Bytes::from(body);
        let sent = upstream::request(
            pool,
            session,
            backend,
            &body,
            &ctx.id,
            headers::AttemptHeaders {
                traceparent: ctx.trace.as_ref().and_then(|t| t.traceparent()),
                data_parallel_rank: ctx.features.engine.on(backend.state.id),
            },
            first_byte_deadline,
        )
        .await;
        match sent {
            Ok(answer) if answer.header.status.as_u16() == 200 => {
                let times = (
                    Some(answer.connected),
                    Some(answer.sent),
                    Some(answer.received),
                );
                ctx.attempts[index].timed(times);
                transcript.continue_on_another_server();
                let delivered =
                    upstream::pump(pool, session, ctx, answer, Some(&mut *transcript), deadline)
                        .await;
                let (result, left_open) = (delivered.result, delivered.left_open);
                finish_delivery(ctx, index, backend, snapshot, 200, result, delivered.why);
                if left_open {
                    continue;
                }
                ctx.resumed = result == AttemptResult::Delivered;
                return;
            }
            Ok(answer) => {
                let status = answer.header.status.as_u16();
                let result = AttemptResult::Status(status);
                if retry::counts_against_server(result, answer.reused) {
                    backend
                        .state
                        .request_failed(format!("HTTP {status}"), settings);
                }
                ctx.attempts[index].end(result, Some(format!("HTTP {status}")));
            }
            Err(no) => {
                if no.result == AttemptResult::ClientGone {
                    ctx.attempts[index].end(no.result, None);
                    ctx.outcome = Outcome::ClientGone;
                    return;
                }
                if retry::counts_against_server(no.result, no.reused) {
                    backend.state.request_failed(no.why.clone(), settings);
                }
                ctx.attempts[index].end(no.result, Some(no.why));
            }
        }
    }
}

/// Records how a committed answer ended.
fn finish_delivery(
    ctx: &mut RequestContext,
    index: usize,
    backend: &Backend,
    snapshot: &Snapshot,
    status: u16,
    ended: AttemptResult,
    why: Option<String>,
) {
    ctx.outcome = match ended {
        AttemptResult::Delivered if status >= 400 => Outcome::ClientError,
        AttemptResult::Delivered => Outcome::Ok,
        AttemptResult::BrokeOff => Outcome::BrokeOff,
        AttemptResult::DeadlineMidBody => Outcome::Timeout,
        _ => Outcome::ClientGone,
    };
    match ended {
        AttemptResult::Delivered => backend.state.record_success(),
        AttemptResult::BrokeOff => {
            let why = why.clone().unwrap_or_default();
            tracing::warn!(request_id = %ctx.id, server = %backend.cfg.url, %why, "server broke off mid-response");
            backend.state.request_failed(why, &snapshot.settings);
        }
        AttemptResult::DeadlineMidBody => {
            tracing::warn!(request_id = %ctx.id, server = %backend.cfg.url, timeout = ?snapshot.settings.request_timeout, "request_timeout reached mid-response; the answer was ended");
        }
        _ => {}
    }
    ctx.attempts[index].end(ended, why);
}

/// Keeps what of a failed answer the client should get if it is the last one.
async fn answered_failure(answer: &mut Answer, deadline: tokio::time::Instant) -> Failure {
    let header: &ResponseHeader = &answer.header;
    let status = header.status.as_u16();
    let content_type = header
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let retry_after = headers::retry_after(header);
    let body = upstream::read_error_body(answer, deadline).await;
    Failure::Answered {
        status,
        content_type,
        retry_after,
        body,
    }
}

/// Every attempt failed: pass the last server's own answer on if it gave one.
async fn give_up(
    session: &mut Session,
    ctx: &mut RequestContext,
    snapshot: &Snapshot,
    last: Option<Failure>,
) {
    ctx.outcome = Outcome::UpstreamFailed;
    let mut extra: Vec<(&str, String)> = Vec::new();
    if snapshot.settings.expose_routing_headers {
        if let Some(attempt) = ctx.attempts.last() {
            extra.push((headers::UPSTREAM_HEADER, attempt.server().url.to_string()));
            extra.push((headers::ATTEMPTS_HEADER, ctx.attempts.len().to_string()));
        }
    }
    let written = match last {
        Some(Failure::Answered {
            status,
            content_type,
            retry_after,
            body,
        }) => {
            extra.extend(retry_after.map(|v| ("retry-after", v)));
            respond::whole(session, ctx, status, &content_type, body, &extra).await
        }
        Some(Failure::NoAnswer { result, why }) => {
            let servers: Vec<&str> = ctx.attempts.iter().map(|a| &*a.server().url).collect();
            let (status, kind) = if result == AttemptResult::FirstByteTimeout {
                (504, "GatewayTimeout")
            } else {
                (502, "BadGateway")
            };
            let error = ApiError::new(
                status,
                kind,
                format!(
                    "No server could answer ({} tried: {}); last error: {why}",
                    servers.len(),
                    servers.join(", ")
                ),
            );
            respond::error(session, ctx, &error, &extra).await
        }
        None => {
            ctx.outcome = Outcome::NoServer;
            let error = no_healthy_server(ctx.features.model.as_deref());
            respond::error(session, ctx, &error, &[("retry-after", "2".into())]).await
        }
    };
    if let Err(e) = written {
        tracing::debug!(error = %e, "could not answer the client");
    }
}

/// Refuses the request with `error` (4xx) before any server saw it.
async fn reject(session: &mut Session, ctx: &mut RequestContext, error: &ApiError) {
    ctx.outcome = Outcome::Rejected;
    if let Err(e) = respond::error(session, ctx, error, &[]).await {
        tracing::debug!(error = %e, "could not answer the client");
    }
}

/// No server may take the request: 503 with `Retry-After`.
async fn no_server(session: &mut Session, ctx: &mut RequestContext, snapshot: &Snapshot) {
    ctx.outcome = Outcome::NoServer;
    let model = ctx.features.model.as_deref();
    // Only on this rare path: is the model one a server lists (a label worth keeping)?
    ctx.model_listed = model.is_some_and(|m| snapshot.backends.iter().any(|b| b.state.serves(m)));
    let error = no_healthy_server(model);
    if let Err(e) = respond::error(session, ctx, &error, &[("retry-after", "2".into())]).await {
        tracing::debug!(error = %e, "could not answer the client");
    }
}

fn unknown_model(model: &str, known: &[String]) -> ApiError {
    let available = if known.is_empty() {
        "none".to_string()
    } else {
        known.join(", ")
    };
    ApiError::not_found(format!(
        "The model `{model}` does not exist. Available models: {available}."
    ))
    .with_param("model")
}

fn no_healthy_server(model: Option<&str>) -> ApiError {
    let message = match model {
        Some(m) => {
            format!("No healthy server is available for model `{m}` right now; try again shortly.")
        }
        None => "No healthy server is available right now; try again shortly.".to_string(),
    };
    ApiError::new(503, "ServiceUnavailableError", message)
}
