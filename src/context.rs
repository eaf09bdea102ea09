//! One request's context: born when the request arrives, dropped when it ends.
//!
//! It carries what is known about the request — its id, method and path, the features read
//! from its body, its timings, every attempt (which server, how it ended, why) and the final
//! outcome — and its drop is the one place where a request ends: the in-flight counts of its
//! attempts end and the request is recorded (stats hub, access log), whichever way it ended:
//! answered, refused, failed, or abandoned by the client or by shutdown.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::http::{Method, RequestHeader};
use smallvec::SmallVec;

use crate::access::Pass;
use crate::backend::{Backend, InFlight, ServerState};
use crate::decisions::Candidate;
use crate::features::RequestFeatures;
use crate::request_id::{self, RequestId};
use crate::retry::AttemptResult;
use crate::traces::RequestTrace;
use crate::usage::Usage;

/// Where finished requests go (the stats hub and the access log; see entry.rs). A trait so
/// that this module, which everything on the request path uses, depends on none of them.
pub trait Finish: Send + Sync {
    /// A request has arrived.
    fn started(&self);
    /// A request has ended; `request` is complete.
    fn finished(&self, request: &RequestContext);
}

/// How a request ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It never got an answer (the router shut down under it).
    Unfinished,
    /// A server's answer was delivered whole (2xx or 3xx).
    Ok,
    /// A server's 4xx was passed on: the client's mistake (a prompt too long, say).
    ClientError,
    /// The router refused it itself: not JSON, too large, unknown model.
    Rejected,
    /// No healthy server could take it (503).
    NoServer,
    /// Every attempt failed: the last server's 5xx or 429, or the router's 502/504.
    UpstreamFailed,
    /// The server broke off after the client had part of the answer.
    BrokeOff,
    /// `request_timeout` ran out after the client had part of the answer.
    Timeout,
    /// The client went away before the end.
    ClientGone,
}

impl Outcome {
    pub const ALL: [Outcome; 9] = [
        Outcome::Unfinished,
        Outcome::Ok,
        Outcome::ClientError,
        Outcome::Rejected,
        Outcome::NoServer,
        Outcome::UpstreamFailed,
        Outcome::BrokeOff,
        Outcome::Timeout,
        Outcome::ClientGone,
    ];

    /// The label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Unfinished => "unfinished",
            Outcome::Ok => "ok",
            Outcome::ClientError => "client_error",
            Outcome::Rejected => "rejected",
            Outcome::NoServer => "no_server",
            Outcome::UpstreamFailed => "upstream_failed",
            Outcome::BrokeOff => "broke_off",
            Outcome::Timeout => "timeout",
            Outcome::ClientGone => "client_gone",
        }
    }
}

/// The router's own endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalRoute {
    Health,
    LoadStats,
    Models,
    /// `/v1/models/{id}`: one model's card.
    Model,
    Metrics,
    NotFound,
}

impl LocalRoute {
    pub const ALL: [LocalRoute; 6] = [
        LocalRoute::Health,
        LocalRoute::LoadStats,
        LocalRoute::Models,
        LocalRoute::Model,
        LocalRoute::Metrics,
        LocalRoute::NotFound,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LocalRoute::Health => "health",
            LocalRoute::LoadStats => "load_stats",
            LocalRoute::Models => "models",
            LocalRoute::Model => "model",
            LocalRoute::Metrics => "metrics",
            LocalRoute::NotFound => "not_found",
        }
    }
}

/// One try of the request on one server.
pub struct Attempt {
    /// Counts the request in the server's in-flight load until the attempt ends.
    in_flight: InFlight,
    pub started: Instant,
    /// When a connection to the server was had (made, or taken from the pool).
    pub connected: Option<Instant>,
    /// When the request (header and body) had been written to the server.
    pub sent: Option<Instant>,
    /// When the server's response header arrived.
    pub header: Option<Instant>,
    /// How it ended; `None` while it runs.
    pub result: Option<AttemptResult>,
    /// What went wrong, in words, for the logs.
    pub why: Option<String>,
    /// The servers it was chosen among, with their scores (only while `explain`).
    pub candidates: Vec<Candidate>,
}

impl Attempt {
    pub fn server(&self) -> &Arc<ServerState> {
        self.in_flight.server()
    }

    /// When it connected, had sent the request, and got the response header.
    pub fn timed(
        &mut self,
        (connected, sent, header): (Option<Instant>, Option<Instant>, Option<Instant>),
    ) {
        (self.connected, self.sent, self.header) = (connected, sent, header);
    }

    /// The server has sent its whole answer: its share of the server's load ends now, before
    /// the end of the answer reaches the client (who may send its next request at once and
    /// must find the server as unloaded as it is). The attempt itself ends with [`end`].
    ///
    /// [`end`]: Attempt::end
    pub fn server_done(&mut self) {
        self.in_flight.end();
    }

    /// Ends the attempt: its share of the server's load ends now.
    pub fn end(&mut self, result: AttemptResult, why: Option<String>) {
        self.result = Some(result);
        self.why = why;
        self.in_flight.end();
    }
}

/// Everything known about one request.
pub struct RequestContext {
    pub id: RequestId,
    pub method: Method,
    /// The path, without the query (which may carry secrets). The router's and vLLM's own
    /// paths are static strings; only others are copied.
    pub path: Cow<'static, str>,
    /// `Some` when the router answered the request itself.
    pub local: Option<LocalRoute>,
    pub features: RequestFeatures,
    /// Whether some server lists the request's model (so it may be a metrics label).
    pub model_listed: bool,
    pub received: Instant,
    /// Every attempt, in order (two fit without an allocation).
    pub attempts: SmallVec<[Attempt; 2]>,
    /// When the response header went to the client.
    pub responded: Option<Instant>,
    /// When the first byte of the response body went to the client.
    pub first_byte: Option<Instant>,
    pub ended: Option<Instant>,
    /// The status the client got.
    pub status: Option<u16>,
    pub outcome: Outcome,
    pub usage: Usage,
    /// Whether a stream broken off by its server was completed by another (resume.rs).
    pub resumed: bool,
    /// The policy that chose its server (`[routing]`, per model).
    pub policy: &'static str,
    /// Whether routing decisions are kept for the monitor's why view (decisions.rs).
    pub explain: bool,
    /// The candidates of the attempt about to begin (only while `explain`).
    pub next_candidates: Vec<Candidate>,
    /// Its spans, when traces are on (traces.rs).
    pub trace: Option<Box<RequestTrace>>,
    /// The name of the client key it came with (`[auth] keys`).
    pub client: Option<Arc<str>>,
    /// The client key it came with, holding that key's concurrency slot (access.rs).
    pub pass: Option<Pass>,
    finish: Arc<dyn Finish>,
}

impl RequestContext {
    pub fn new(finish: Arc<dyn Finish>) -> RequestContext {
        finish.started();
        RequestContext {
            // Set by begin(), which every request goes through.
            id: RequestId::unset(),
            method: Method::GET,
            path: Cow::Borrowed(""),
            local: None,
            features: RequestFeatures::default(),
            model_listed: false,
            received: Instant::now(),
            attempts: SmallVec::new(),
            responded: None,
            first_byte: None,
            ended: None,
            status: None,
            outcome: Outcome::Unfinished,
            usage: Usage::default(),
            resumed: false,
            policy: "",
            explain: false,
            next_candidates: Vec::new(),
            trace: None,
            client: None,
            pass: None,
            finish,
        }
    }

    /// Takes what the request header says: the id, the method, the path.
    pub fn begin(&mut self, header: &RequestHeader, client: Option<IpAddr>) {
        self.id = RequestId::from_client(header.headers.get(request_id::HEADER));
        self.method = header.method.clone();
        self.path = known_path(header.uri.path());
        self.features.client = client;
    }

    /// Starts an attempt on `backend`: it counts in the server's load from now on.
    pub fn begin_attempt(&mut self, backend: &Backend) -> &mut Attempt {
        let started = Instant::now();
        if let Some(trace) = &mut self.trace {
            trace.begin_attempt(&backend.cfg.url, self.attempts.len() + 1, started);
        }
        self.attempts.push(Attempt {
            in_flight: backend.state.start_request(),
            started,
            connected: None,
            sent: None,
            header: None,
            result: None,
            why: None,
            candidates: std::mem::take(&mut self.next_candidates),
        });
        let last = self.attempts.len() - 1;
        &mut self.attempts[last]
    }

    /// Whether `backend` was tried already.
    pub fn tried(&self, backend: &Backend) -> bool {
        self.attempts
            .iter()
            .any(|a| Arc::ptr_eq(a.server(), &backend.state))
    }

    /// The model as a metrics label: the model if a server lists it, `none` if the request
    /// named none, `unlisted` otherwise (a client's string is never a label by itself).
    pub fn model_label(&self) -> &str {
        match &self.features.model {
            None => "none",
            Some(model) if self.model_listed => model,
            Some(_) => "unlisted",
        }
    }

    /// From arrival to the first byte of the answer's body.
    pub fn time_to_first_byte(&self) -> Option<Duration> {
        self.first_byte.map(|t| t - self.received)
    }

    /// From arrival to the end (or to now, if it has not ended).
    pub fn elapsed(&self) -> Duration {
        self.ended.unwrap_or_else(Instant::now) - self.received
    }

    /// What the router added before the client got the answer's header: all of the time up
    /// to then, minus the answering server's own wait between the request written and its
    /// response header. Failed attempts before it count as added.
    pub fn router_added(&self) -> Option<Duration> {
        let responded = self.responded?;
        let answer = self.attempts.last()?;
        let server_time = answer.header?.checked_duration_since(answer.sent?)?;
        (responded - self.received).checked_sub(server_time)
    }
}

/// `path` as a static string when it is one of the paths the router serves or forwards
/// most, else copied.
fn known_path(path: &str) -> Cow<'static, str> {
    const KNOWN: &[&str] = &[
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/responses",
        "/v1/score",
        "/v1/rerank",
        "/v1/audio/transcriptions",
        "/tokenize",
        "/detokenize",
        "/health",
        "/load-stats",
        "/metrics",
    ];
    match KNOWN.iter().find(|known| **known == path) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(path.to_string()),
    }
}

impl Drop for RequestContext {
    fn drop(&mut self) {
        self.ended.get_or_insert_with(Instant::now);
        for attempt in &mut self.attempts {
            attempt.in_flight.end();
        }
        if let Some(trace) = self.trace.take() {
            trace.end(self);
        }
        self.finish.finished(self);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A `Finish` that records nothing, for tests that make contexts.
    pub struct NoFinish;

    impl Finish for NoFinish {
        fn started(&self) {}
        fn finished(&self, _: &RequestContext) {}
    }
}
