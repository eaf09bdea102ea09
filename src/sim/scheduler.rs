//! The continuous-batching scheduler of one simulated engine, without clocks or I/O.
//!
//! Each call to [`Scheduler::step`] is one engine iteration, as in vLLM: first admit waiting
//! requests in arrival order while a sequence slot and enough KV blocks are free (the queue
//! head blocks the ones behind it, like vLLM's FCFS policy), then produce one token for every
//! running request. A newly admitted request spends its step on prefill (only the prompt tokens
//! the prefix cache does not already hold) and its first token comes out of that same step.
//! The engine driver (engine.rs) turns each step's work into a duration and real time.

use std::collections::VecDeque;
use std::sync::Arc;

use super::kv_cache::{BlockId, KvCache};

/// A request as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct SeqRequest {
    pub id: u64,
    pub prompt_len: usize,
    /// Chained hashes of the prompt's full blocks (see `kv_cache::prefix_block_hashes`).
    pub prompt_hashes: Vec<u64>,
    /// The prompt's tokens (for KV cache events).
    pub prompt_tokens: Arc<[u32]>,
    /// Output tokens to generate, at least 1.
    pub output_len: u32,
}

#[derive(Debug)]
struct RunningSeq {
    id: u64,
    blocks: Vec<BlockId>,
    output_len: u32,
    generated: u32,
}

/// A request that left the queue and joined the batch this step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub id: u64,
    pub prompt_len: usize,
    pub cached_tokens: usize,
}

/// One output token of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenOut {
    pub id: u64,
    /// Tokens generated so far, this one included.
    pub generated: u32,
    pub finished: bool,
}

/// What one engine iteration did.
#[derive(Debug, Default)]
pub struct StepReport {
    pub admitted: Vec<Admission>,
    /// Prompt tokens computed in this step (cache hits excluded).
    pub prefill_tokens: usize,
    /// Requests in the batch during this step.
    pub batch_size: usize,
    pub tokens: Vec<TokenOut>,
}

/// Where an aborted request was when it was aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aborted {
    Waiting,
    Running,
}

#[derive(Debug)]
pub struct Scheduler {
    max_num_seqs: usize,
    kv: KvCache,
    waiting: VecDeque<SeqRequest>,
    running: Vec<RunningSeq>,
}

impl Scheduler {
    pub fn new(max_num_seqs: usize, num_blocks: usize, block_size: usize) -> Self {
        Scheduler {
            max_num_seqs,
            kv: KvCache::new(num_blocks, block_size),
            waiting: VecDeque::new(),
            running: Vec::new(),
        }
    }

    pub fn submit(&mut self, request: SeqRequest) {
        self.waiting.push_back(request);
    }

    /// Removes a request wherever it is and frees its blocks. `None` if it is not here
    /// (already finished, or never submitted).
    pub fn abort(&mut self, id: u64) -> Option<Aborted> {
        if let Some(pos) = self.running.iter().position(|s| s.id == id) {
            let seq = self.running.swap_remove(pos);
            self.kv.release(&seq.blocks);
            return Some(Aborted::Running);
        }
        let pos = self.waiting.iter().position(|r| r.id == id)?;
        self.waiting.remove(pos);
        Some(Aborted::Waiting)
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    pub fn kv_usage(&self) -> f64 {
        self.kv.usage()
    }

    pub fn kv_cache(&self) -> &KvCache {
        &self.kv
    }

    pub fn kv_cache_mut(&mut self) -> &mut KvCache {
        &mut self.kv
    }

    /// Runs one engine iteration.
    pub fn step(&mut self) -> StepReport {
        let mut report = StepReport::default();
        while self.running.len() < self.max_num_seqs {
            let Some(next) = self.waiting.front() else {
                break;
            };
            let total = next.prompt_len + next.output_len as usize;
            let Some(allocation) = self.kv.allocate(
                &next.prompt_hashes,
                &next.prompt_tokens,
                next.prompt_len,
                total,
            ) else {
                break;
            };
            let request = self.waiting.pop_front().expect("front() was Some");
            report.prefill_tokens += request.prompt_len - allocation.cached_tokens;
            report.admitted.push(Admission {
                id: request.id,
                prompt_len: request.prompt_len,
                cached_tokens: allocation.cached_tokens,
            });
            self.running.push(RunningSeq {
                id: request.id,
                blocks: allocation.blocks,
                output_len: request.output_len.max(1),
                generated: 0,
            });
        }

        report.batch_size = self.running.len();
        report.tokens.reserve(self.running.len());
        for seq in &mut self.running {
            seq.generated += 1;
            report.tokens.push(TokenOut {
                id: seq.id,
                generated: seq.generated,
                finished: seq.generated >= seq.output_len,
            });
        }
        let kv = &mut self.kv;
        self.running.retain(|seq| {
            let done = seq.generated >= seq.output_len;
            if done {
                kv.release(&seq.blocks);
            }
            !done
        });
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::kv_cache::prefix_block_hashes;

    const BS: usize = 4;

    fn req(id: u64, prompt: &[u32], output_len: u32) -> SeqRequest {
        SeqRequest {
            id,
            prompt_len: prompt.len(),
            prompt_hashes: prefix_block_hashes(prompt, BS),
            prompt_tokens: prompt.into(),
            output_len,
        }
    }

    fn distinct_prompt(id: u64, len: usize) -> Vec<u32> {
        (0..len as u32).map(|i| id as u32 * 1000 + i).collect()
    }

    fn finished(report: &StepReport) -> Vec<u64> {
        report
            .tokens
            .iter()
            .filter(|t| t.finished)
            .map(|t| t.id)
            .collect()
    }

    #[test]
    fn admits_in_arrival_order_up_to_the_slot_limit() {
        let mut s = Scheduler::new(2, 100, BS);
        for id in 1..=3 {
            s.submit(req(id, &distinct_prompt(id, 4), 2));
        }
        let r = s.step();
        let admitted: Vec<u64> = r.admitted.iter().map(|a| a.id).collect();
        assert_eq!(admitted, vec![1, 2]);
        assert_eq!((s.num_running(), s.num_waiting()), (2, 1));
        let r = s.step();
        assert_eq!(finished(&r), vec![1, 2]);
        assert_eq!((s.num_running(), s.num_waiting()), (0, 1));
        let r = s.step();
        assert_eq!(
            r.admitted[0].id, 3,
            "the freed slot goes to the next in line"
        );
    }

    #[test]
    fn kv_blocks_limit_admission_and_the_queue_head_blocks_the_rest() {
        // 4 blocks of 4 tokens. Request 1 needs 3 blocks, request 2 needs 2, request 3 needs 1.
        let mut s = Scheduler::new(10, 4, BS);
        s.submit(req(1, &distinct_prompt(1, 8), 4));
        s.submit(req(2, &distinct_prompt(2, 4), 4));
        s.submit(req(3, &distinct_prompt(3, 2), 2));
        let r = s.step();
        assert_eq!(
            r.admitted.len(),
            1,
            "request 2 does not fit, and 3 waits behind it"
        );
        assert_eq!((s.num_running(), s.num_waiting()), (1, 2));
        assert_eq!(s.kv_usage(), 0.75);
        for _ in 0..3 {
            s.step();
        }
        assert_eq!(s.kv_usage(), 0.0);
        let r = s.step();
        let admitted: Vec<u64> = r.admitted.iter().map(|a| a.id).collect();
        assert_eq!(admitted, vec![2, 3]);
    }

    #[test]
    fn prefix_cache_hit_skips_prefill() {
        let mut s = Scheduler::new(4, 100, BS);
        let system = distinct_prompt(9, 16);
        let mut first = system.clone();
        first.extend([1, 2, 3]);
        let mut second = system.clone();
        second.extend([4, 5, 6]);

        s.submit(req(1, &first, 1));
        let r = s.step();
        assert_eq!(r.prefill_tokens, 19);
        assert_eq!(r.admitted[0].cached_tokens, 0);

        s.submit(req(2, &second, 1));
        let r = s.step();
        assert_eq!(r.admitted[0].cached_tokens, 16);
        assert_eq!(r.prefill_tokens, 3, "only the new suffix is computed");
    }

    #[test]
    fn one_token_per_running_request_per_step() {
        let mut s = Scheduler::new(8, 100, BS);
        s.submit(req(1, &distinct_prompt(1, 5), 3));
        s.submit(req(2, &distinct_prompt(2, 5), 1));
        let r = s.step();
        assert_eq!(r.batch_size, 2);
        assert_eq!(
            r.tokens,
            vec![
                TokenOut {
                    id: 1,
                    generated: 1,
                    finished: false
                },
                TokenOut {
                    id: 2,
                    generated: 1,
                    finished: true
                },
            ]
        );
        let r = s.step();
        assert_eq!(
            r.tokens,
            vec![TokenOut {
                id: 1,
                generated: 2,
                finished: false
            }]
        );
        let r = s.step();
        assert_eq!(
            r.tokens,
            vec![TokenOut {
                id: 1,
                generated: 3,
                finished: true
            }]
        );
        assert!(s.is_idle());
    }

    #[test]
    fn abort_frees_the_slot_and_blocks_wherever_the_request_is() {
        let mut s = Scheduler::new(1, 100, BS);
        s.submit(req(1, &distinct_prompt(1, 8), 50));
        s.submit(req(2, &distinct_prompt(2, 8), 50));
        s.step();
        assert!(s.kv_usage() > 0.0);
        assert_eq!(s.abort(2), Some(Aborted::Waiting));
        assert_eq!(s.abort(1), Some(Aborted::Running));
        assert_eq!(s.abort(1), None);
        assert!(s.is_idle());
        assert_eq!(s.kv_usage(), 0.0);
    }

    /// A scripted load: the running and waiting counts follow the script exactly, nothing is
    /// ever preempted (a running request always finishes), and every block comes back.
    #[test]
    fn running_and_waiting_follow_a_scripted_load() {
        let mut s = Scheduler::new(3, 12, BS);
        // (step at which it arrives, prompt length, output length)
        let script = [
            (0, 4, 3),
            (0, 4, 3),
            (0, 4, 3),
            (0, 4, 2),
            (1, 8, 2),
            (4, 4, 1),
        ];
        let mut observed = Vec::new();
        let mut tokens_seen = std::collections::HashMap::new();
        for step in 0..10 {
            for (id, &(at, prompt, out)) in script.iter().enumerate() {
                if at == step {
                    s.submit(req(id as u64, &distinct_prompt(id as u64, prompt), out));
                }
            }
            let r = s.step();
            for t in r.tokens {
                let prev = tokens_seen.insert(t.id, t.generated).unwrap_or(0);
                assert_eq!(t.generated, prev + 1, "tokens come one per step, none lost");
            }
            observed.push((s.num_running(), s.num_waiting()));
        }
        // Each request holds ceil((prompt + output) / 4) = 2 blocks (request 4: 3 blocks), so
        // the three slots, not the twelve blocks, are the limit at first.
        assert_eq!(
            observed,
            vec![
                (3, 1), // 0,1,2 run; 3 waits
                (3, 2), // 4 arrived and waits
                (0, 2), // 0,1,2 finished after 3 tokens
                (2, 0), // 3 and 4 admitted, first token each
                (0, 0), // 3 and 4 finish; 5 arrives, is admitted and finishes in this step
                (0, 0),
                (0, 0),
                (0, 0),
                (0, 0),
                (0, 0),
            ]
        );
        for (id, &(_, _, out)) in script.iter().enumerate() {
            assert_eq!(tokens_seen[&(id as u64)], out, "request {id} completed");
        }
        assert_eq!(s.kv_cache().blocks_in_use(), 0);
    }
}
