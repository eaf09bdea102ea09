//! The simulated engines in real time: one task per data-parallel engine, each driving its
//! [`Scheduler`] step by step, sleeping for as long as the step would take on a GPU, and
//! handing every output token to the request that owns it.
//!
//! A [`Generation`] is a request's side of that: a stream of token events. Dropping it before
//! the last token (a client that disconnected, say) aborts the request in its engine, which
//! frees the sequence slot and KV blocks at once.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::metrics::{EngineMetrics, FinishedReason, SimMetrics};
use super::scheduler::{Scheduler, SeqRequest, StepReport};
use crate::kv_events::wire::Event;

/// How long engine steps take.
#[derive(Debug, Clone, Copy)]
pub struct StepCost {
    /// Decode step time with one running request.
    pub itl: Duration,
    /// Extra step time per additional running request, as a fraction of `itl`.
    pub batch_slope: f64,
    /// Extra step time per prompt token prefilled in the step.
    pub prefill_per_token: Duration,
}

impl StepCost {
    pub fn step_time(&self, batch_size: usize, prefill_tokens: usize) -> Duration {
        let batch_factor = 1.0 + self.batch_slope * batch_size.saturating_sub(1) as f64;
        self.itl.mul_f64(batch_factor) + self.prefill_per_token * prefill_tokens as u32
    }
}

/// Engine sizes, shared by every engine of a server.
#[derive(Debug, Clone, Copy)]
pub struct EngineShape {
    pub max_num_seqs: usize,
    pub num_gpu_blocks: usize,
    pub block_size: usize,
}

/// A request for the engines.
#[derive(Debug, Clone)]
pub struct GenRequest {
    pub prompt_len: usize,
    pub prompt_hashes: Vec<u64>,
    /// The prompt's tokens (for KV cache events).
    pub prompt_tokens: Arc<[u32]>,
    pub output_len: u32,
    /// Counted in `vllm:request_success_total` when the request completes.
    pub finish: FinishedReason,
}

/// One output token of a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenEvent {
    /// Tokens generated so far, this one included.
    pub generated: u32,
    pub finished: bool,
}

enum Command {
    Submit {
        request: SeqRequest,
        finish: FinishedReason,
        events: mpsc::UnboundedSender<TokenEvent>,
        arrived: Instant,
    },
    Abort(u64),
    /// Forget every cached prefix; answers whether it could (no request holds blocks).
    ResetPrefixCache(tokio::sync::oneshot::Sender<bool>),
}

struct EngineHandle {
    commands: mpsc::UnboundedSender<Command>,
    /// Requests submitted and not yet finished or aborted.
    outstanding: Arc<AtomicUsize>,
}

/// All engines of one simulated server.
pub struct Engines {
    engines: Vec<EngineHandle>,
    next_id: AtomicU64,
    /// Serialises choosing an engine (see `submit`).
    choosing: std::sync::Mutex<()>,
}

impl Engines {
    /// Starts one engine task per entry of `metrics`' engines on the current tokio runtime.
    /// `slowdown` multiplies every step's time (f64 bits; the sim's `slowdown` fault). With
    /// KV cache events on, `kv_events` has one channel per engine, to its publisher; each
    /// step's events go there as one batch.
    pub fn start(
        count: usize,
        shape: EngineShape,
        cost: StepCost,
        metrics: &SimMetrics,
        slowdown: Arc<AtomicU64>,
        kv_events: &[mpsc::UnboundedSender<Vec<Event>>],
    ) -> Self {
        let engines = (0..count)
            .map(|index| {
                let (commands, inbox) = mpsc::unbounded_channel();
                let outstanding = Arc::new(AtomicUsize::new(0));
                let mut scheduler =
                    Scheduler::new(shape.max_num_seqs, shape.num_gpu_blocks, shape.block_size);
                let kv_events = kv_events.get(index).cloned();
                if kv_events.is_some() {
                    scheduler.kv_cache_mut().record_events();
                }
                let driver = Driver {
                    scheduler,
                    kv_events,
                    inbox,
                    cost,
                    slowdown: Arc::clone(&slowdown),
                    metrics: metrics.engine(index),
                    outstanding: Arc::clone(&outstanding),
                    live: HashMap::new(),
                };
                tokio::spawn(driver.run());
                EngineHandle {
                    commands,
                    outstanding,
                }
            })
            .collect();
        Engines {
            engines,
            next_id: AtomicU64::new(1),
            choosing: std::sync::Mutex::new(()),
        }
    }

    /// How many engines there are (vLLM's data-parallel size).
    pub fn count(&self) -> usize {
        self.engines.len()
    }

    /// Asks every engine to forget its cached prefixes; true if all could.
    pub async fn reset_prefix_cache(&self) -> bool {
        let mut all = true;
        for engine in &self.engines {
            let (answer, answered) = tokio::sync::oneshot::channel();
            let _ = engine.commands.send(Command::ResetPrefixCache(answer));
            all &= answered.await.unwrap_or(false);
        }
        all
    }

    /// Queues a request on the least busy engine (as vLLM's data-parallel front end does).
    pub fn submit(&self, request: GenRequest) -> Generation {
        self.submit_to(request, None)
    }

    /// Queues a request on engine `rank` (vLLM's `X-data-parallel-rank` header; the caller
    /// checked it is below [`Engines::count`]), or with `None` on the least busy engine.
    pub fn submit_to(&self, request: GenRequest, rank: Option<usize>) -> Generation {
        if let Some(engine) = rank.and_then(|r| self.engines.get(r)) {
            engine.outstanding.fetch_add(1, Relaxed);
            return self.queue(engine, request);
        }
        let engine = {
            // Choosing and counting are one step, so that requests arriving together on
            // different threads do not all see the same "least busy" engine. (A std mutex:
            // held for a few instructions, never across an await.)
            let _choosing = self.choosing.lock().unwrap_or_else(|e| e.into_inner());
            let engine = self
                .engines
                .iter()
                .min_by_key(|e| e.outstanding.load(Relaxed))
                .expect("at least one engine is validated at start-up");
            engine.outstanding.fetch_add(1, Relaxed);
            engine
        };
        self.queue(engine, request)
    }

    fn queue(&self, engine: &EngineHandle, request: GenRequest) -> Generation {
        let id = self.next_id.fetch_add(1, Relaxed);
        let (events_tx, events) = mpsc::unbounded_channel();
        let sent = engine.commands.send(Command::Submit {
            request: SeqRequest {
                id,
                prompt_len: request.prompt_len,
                prompt_hashes: request.prompt_hashes,
                prompt_tokens: request.prompt_tokens,
                output_len: request.output_len.max(1),
            },
            finish: request.finish,
            events: events_tx,
            arrived: Instant::now(),
        });
        if sent.is_err() {
            // The engine task is gone (runtime shutting down): the generation ends empty.
            engine.outstanding.fetch_sub(1, Relaxed);
        }
        Generation {
            id,
            commands: engine.commands.clone(),
            events,
            finished: false,
        }
    }
}

/// A request's stream of output tokens. Ends after the token marked `finished`; ends early
/// only if the engine stops. Dropping it early aborts the request.
pub struct Generation {
    id: u64,
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::UnboundedReceiver<TokenEvent>,
    finished: bool,
}

impl Generation {
    /// Waits for the last token; returns how many tokens were generated.
    pub async fn complete(mut self) -> u32 {
        let mut generated = 0;
        while let Some(event) = self.events.recv().await {
            generated = event.generated;
            if event.finished {
                self.finished = true;
                break;
            }
        }
        generated
    }
}

impl Stream for Generation {
    type Item = TokenEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<TokenEvent>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let polled = self.events.poll_recv(cx);
        if let Poll::Ready(Some(event)) = polled {
            self.finished = event.finished;
        }
        polled
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.commands.send(Command::Abort(self.id));
        }
    }
}

struct LiveRequest {
    events: mpsc::UnboundedSender<TokenEvent>,
    arrived: Instant,
    finish: FinishedReason,
}

/// The task that owns one engine's scheduler.
struct Driver {
    scheduler: Scheduler,
    /// Where each step's KV cache events go, when they are on.
    kv_events: Option<mpsc::UnboundedSender<Vec<Event>>>,
    inbox: mpsc::UnboundedReceiver<Command>,
    cost: StepCost,
    slowdown: Arc<AtomicU64>,
    metrics: Arc<EngineMetrics>,
    outstanding: Arc<AtomicUsize>,
    live: HashMap<u64, LiveRequest>,
}

/// How far behind schedule the engine may run and still catch up by skipping sleeps. Timers
/// are millisecond-grained, so sub-millisecond steps only keep their average pace this way.
const MAX_CATCH_UP: Duration = Duration::from_millis(5);

impl Driver {
    async fn run(mut self) {
        // When the step in progress ends, in engine time.
        let mut clock = Instant::now();
        loop {
            if self.scheduler.is_idle() {
                let Some(command) = self.inbox.recv().await else {
                    return;
                };
                self.apply(command);
                clock = Instant::now();
            }
            while let Ok(command) = self.inbox.try_recv() {
                self.apply(command);
            }
            if self.scheduler.is_idle() {
                self.publish_gauges();
                continue;
            }

            let now = Instant::now();
            let start = if clock + MAX_CATCH_UP < now {
                now
            } else {
                clock
            };
            let report = self.scheduler.step();
            self.send_kv_events();
            self.publish_gauges();
            let slowdown = f64::from_bits(self.slowdown.load(Relaxed));
            let end = start
                + self
                    .cost
                    .step_time(report.batch_size, report.prefill_tokens)
                    .mul_f64(slowdown);
            if end > Instant::now() {
                tokio::time::sleep_until(end).await;
            } else {
                tokio::task::yield_now().await;
            }
            clock = end;
            self.deliver(start, report);
            self.publish_gauges();
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Submit {
                request,
                finish,
                events,
                arrived,
            } => {
                self.live.insert(
                    request.id,
                    LiveRequest {
                        events,
                        arrived,
                        finish,
                    },
                );
                self.scheduler.submit(request);
            }
            Command::Abort(id) => self.abort(id),
            Command::ResetPrefixCache(answer) => {
                let done = self.scheduler.kv_cache_mut().reset_prefix_cache();
                self.send_kv_events();
                let _ = answer.send(done);
            }
        }
    }

    /// Hands the events of the step (or reset) just done to the publisher, as one batch.
    fn send_kv_events(&mut self) {
        if let Some(publisher) = &self.kv_events {
            let events = self.scheduler.kv_cache_mut().take_events();
            if !events.is_empty() {
                let _ = publisher.send(events);
            }
        }
    }

    fn abort(&mut self, id: u64) {
        if self.live.remove(&id).is_some() {
            self.scheduler.abort(id);
            self.metrics.count_finished(FinishedReason::Abort);
            self.outstanding.fetch_sub(1, Relaxed);
        }
    }

    /// Hands out a finished step's tokens and records its metrics.
    fn deliver(&mut self, step_start: Instant, report: StepReport) {
        let now = Instant::now();
        let m = &self.metrics;
        for admission in &report.admitted {
            m.prefix_cache_queries
                .fetch_add(admission.prompt_len as u64, Relaxed);
            m.prefix_cache_hits
                .fetch_add(admission.cached_tokens as u64, Relaxed);
            m.prompt_tokens
                .fetch_add(admission.prompt_len as u64, Relaxed);
            if let Some(live) = self.live.get(&admission.id) {
                let queued = step_start.saturating_duration_since(live.arrived);
                m.queue_time.observe(queued.as_secs_f64());
            }
        }
        m.generation_tokens
            .fetch_add(report.tokens.len() as u64, Relaxed);
        m.iteration_tokens
            .observe((report.prefill_tokens + report.tokens.len()) as f64);

        let mut gone = Vec::new();
        for token in report.tokens {
            let Some(live) = self.live.get(&token.id) else {
                continue;
            };
            let elapsed = now.saturating_duration_since(live.arrived).as_secs_f64();
            if token.generated == 1 {
                self.metrics.time_to_first_token.observe(elapsed);
            }
            let sent = live.events.send(TokenEvent {
                generated: token.generated,
                finished: token.finished,
            });
            if token.finished {
                let finish = live.finish;
                self.live.remove(&token.id);
                self.metrics.e2e_latency.observe(elapsed);
                self.metrics.count_finished(finish);
                self.outstanding.fetch_sub(1, Relaxed);
            } else if sent.is_err() {
                // Nobody is listening any more: stop computing for it.
                gone.push(token.id);
            }
        }
        for id in gone {
            self.abort(id);
        }
    }

    fn publish_gauges(&self) {
        let m = &self.metrics;
        m.running
            .store(self.scheduler.num_running() as u64, Relaxed);
        m.waiting
            .store(self.scheduler.num_waiting() as u64, Relaxed);
        m.kv_cache_usage.set(self.scheduler.kv_usage());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn engines(max_num_seqs: usize, itl_ms: u64) -> (Engines, SimMetrics) {
        let metrics = SimMetrics::new("m", 1, 16, 64);
        let shape = EngineShape {
            max_num_seqs,
            num_gpu_blocks: 64,
            block_size: 16,
        };
        let cost = StepCost {
            itl: Duration::from_millis(itl_ms),
            batch_slope: 0.0,
            prefill_per_token: Duration::ZERO,
        };
        let slowdown = Arc::new(AtomicU64::new(1f64.to_bits()));
        (
            Engines::start(1, shape, cost, &metrics, slowdown, &[]),
            metrics,
        )
    }

    fn request(output_len: u32) -> GenRequest {
        GenRequest {
            prompt_len: 10,
            prompt_hashes: vec![],
            prompt_tokens: Arc::from([]),
            output_len,
            finish: FinishedReason::Length,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_arrive_one_step_apart() {
        let (engines, _metrics) = engines(4, 10);
        let started = Instant::now();
        let events: Vec<TokenEvent> = engines.submit(request(3)).collect().await;
        assert_eq!(events.len(), 3);
        assert!(events[2].finished);
        assert_eq!(started.elapsed(), Duration::from_millis(30));
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_a_generation_frees_its_slot() {
        let (engines, metrics) = engines(1, 10);
        let mut first = engines.submit(request(1000));
        first.next().await.unwrap();
        let second = engines.submit(request(1));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let m = metrics.engine(0);
        assert_eq!((m.running.load(Relaxed), m.waiting.load(Relaxed)), (1, 1));
        drop(first);
        assert_eq!(second.complete().await, 1, "the queued request ran");
        assert_eq!(m.finished(FinishedReason::Abort), 1);
        assert_eq!(m.finished(FinishedReason::Length), 1);
        assert_eq!(m.running.load(Relaxed), 0);
    }
}
