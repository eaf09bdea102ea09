//! The routing decisions the monitor's "why" view shows: for the last requests, which servers
//! could take each attempt and with what score, which one was chosen, and how it ended.
//!
//! Kept only while the monitor runs (`RequestContext::explain`): otherwise nothing here is
//! made. The request path hands each finished request's decision to a bounded channel with
//! `try_send` (std's channel is lock-free); when the monitor falls behind, decisions are
//! dropped, never waited for. The monitor drains the channel into its own list of recent ones.

use std::collections::VecDeque;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use crate::backend::Backend;
use crate::context::RequestContext;
use crate::features::RequestFeatures;
use crate::policy::Policy;

/// Most candidates kept per attempt: the best-scored ones (and the chosen one among them).
pub const MAX_CANDIDATES: usize = 8;

/// Decisions waiting for the monitor; more are dropped.
const CHANNEL_SLOTS: usize = 512;

/// A server that could have taken an attempt, and its score (lower wins).
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub server: String,
    pub score: f64,
}

/// One attempt of a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct DecidedAttempt {
    pub server: String,
    /// The candidates, best first (at most `MAX_CANDIDATES`).
    pub candidates: Vec<Candidate>,
    /// How it ended (`AttemptResult::as_str`), or `running`.
    pub result: &'static str,
    pub why: Option<String>,
}

/// One request's routing, as the why view shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub at: SystemTime,
    pub id: String,
    pub model: String,
    pub policy: &'static str,
    pub attempts: Vec<DecidedAttempt>,
    pub status: Option<u16>,
    pub outcome: &'static str,
    pub ttft: Option<Duration>,
}

/// The scores `policy` gave the `candidates` of one attempt, best first, at most
/// `MAX_CANDIDATES` of them and always including `chosen`.
pub fn scores(
    policy: &dyn Policy,
    candidates: &[&Backend],
    chosen: &Backend,
    request: &RequestFeatures,
) -> Vec<Candidate> {
    let mut all: Vec<Candidate> = candidates
        .iter()
        .zip(policy.scores(candidates, request))
        .map(|(b, score)| Candidate {
            server: b.cfg.url.clone(),
            score,
        })
        .collect();
    all.sort_by(|a, b| a.score.total_cmp(&b.score));
    if let Some(at) = all.iter().position(|c| c.server == chosen.cfg.url) {
        if at >= MAX_CANDIDATES {
            all.swap(at, MAX_CANDIDATES - 1);
        }
    }
    all.truncate(MAX_CANDIDATES);
    all
}

/// The request path's end of the channel.
pub struct DecisionLog {
    tx: SyncSender<Decision>,
}

/// The monitor's end: the recent decisions, newest first.
pub struct RecentDecisions {
    rx: Receiver<Decision>,
    pub recent: VecDeque<Decision>,
    capacity: usize,
}

/// A connected pair; `keep` is how many decisions the reader keeps.
pub fn channel(keep: usize) -> (DecisionLog, RecentDecisions) {
    let (tx, rx) = sync_channel(CHANNEL_SLOTS);
    (
        DecisionLog { tx },
        RecentDecisions {
            rx,
            recent: VecDeque::with_capacity(keep),
            capacity: keep.max(1),
        },
    )
}

impl DecisionLog {
    /// Hands a finished request's decision to the monitor, if it has room.
    pub fn record(&self, request: &RequestContext) {
        if request.local.is_some() {
            return;
        }
        let decision = Decision {
            at: SystemTime::now(),
            id: request.id.as_str().to_string(),
            model: request.features.model.clone().unwrap_or_default(),
            policy: request.policy,
            attempts: request
                .attempts
                .iter()
                .map(|a| DecidedAttempt {
                    server: a.server().url.to_string(),
                    candidates: a.candidates.clone(),
                    result: a.result.map_or("running", |r| r.as_str()),
                    why: a.why.clone(),
                })
                .collect(),
            status: request.status,
            outcome: request.outcome.as_str(),
            ttft: request.time_to_first_byte(),
        };
        match self.tx.try_send(decision) {
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl RecentDecisions {
    /// Takes what arrived since the last call.
    pub fn refresh(&mut self) {
        while let Ok(decision) = self.rx.try_recv() {
            if self.recent.len() == self.capacity {
                self.recent.pop_back();
            }
            self.recent.push_front(decision);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests::healthy;
    use crate::policy::LeastLoad;

    #[test]
    fn scores_are_best_first_bounded_and_keep_the_chosen_one() {
        let servers: Vec<Backend> = (0..12)
            .map(|i| healthy(&format!("http://s{i}"), 10, &["m"], f64::from(i)))
            .collect();
        let all: Vec<&Backend> = servers.iter().collect();
        let request = RequestFeatures::default();
        let got = scores(&LeastLoad::default(), &all, &servers[0], &request);
        assert_eq!(got.len(), MAX_CANDIDATES);
        assert_eq!(got[0].server, "http://s0");
        assert!(got.windows(2).all(|w| w[0].score <= w[1].score));
        // A chosen server outside the best eight still shows.
        let got = scores(&LeastLoad::default(), &all, &servers[11], &request);
        assert_eq!(got.len(), MAX_CANDIDATES);
        assert!(got.iter().any(|c| c.server == "http://s11"));
    }

    #[test]
    fn the_reader_keeps_the_newest_and_the_writer_never_waits() {
        let (log, mut reader) = channel(3);
        let finish = std::sync::Arc::new(crate::context::tests::NoFinish);
        for i in 0..(CHANNEL_SLOTS + 10) {
            let mut ctx = RequestContext::new(finish.clone());
            ctx.id = crate::request_id::RequestId::from_client(Some(
                &http::HeaderValue::from_str(&format!("r{i}")).unwrap(),
            ));
            ctx.outcome = crate::context::Outcome::NoServer;
            log.record(&ctx);
        }
        reader.refresh();
        let ids: Vec<&str> = reader.recent.iter().map(|d| d.id.as_str()).collect();
        // The channel held the first CHANNEL_SLOTS; the rest were dropped, not waited for.
        let last = CHANNEL_SLOTS - 1;
        assert_eq!(
            ids,
            [
                format!("r{last}"),
                format!("r{}", last - 1),
                format!("r{}", last - 2)
            ]
        );
        assert_eq!(reader.recent[0].outcome, "no_server");
    }
}
