//! `mvllm sim` flags, named like vLLM's own where vLLM has one, and their validation.

use std::time::Duration;

use clap::Args;

use super::engine::{EngineShape, StepCost};
use super::faults::Faults;

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Server (as vLLM)")]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 picks a free one (the chosen address is printed on stdout).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The model "loaded" (reported as `root` in /v1/models).
    #[arg(long, default_value = "mvllm/sim-model")]
    pub model: String,
    /// Names the model is served under (one or more); the first one labels /metrics.
    /// Defaults to --model.
    #[arg(long, num_args = 1.., value_name = "NAME")]
    pub served_model_name: Vec<String>,
    /// LoRA adapters to serve, as NAME=PATH (one or more); listed in /v1/models with the
    /// base model as parent, and accepted as a request's `model`.
    #[arg(long, num_args = 1.., value_name = "NAME=PATH")]
    pub lora_modules: Vec<String>,
    /// Maximum number of requests running at once per engine (sequence slots).
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: usize,
    /// Maximum prompt + output tokens of one request.
    #[arg(long, default_value_t = 8192)]
    pub max_model_len: usize,
    /// Require `Authorization: Bearer KEY` on /v1/* (like vLLM; /health and /metrics stay open).
    #[arg(long, env = "VLLM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Tokens per KV cache block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// KV cache capacity per engine, in blocks.
    #[arg(long, default_value_t = 8192)]
    pub num_gpu_blocks: usize,
    /// Number of engines, each with its own scheduler and KV cache, reported with its own
    /// `engine` label in /metrics.
    #[arg(long, default_value_t = 1)]
    pub data_parallel_size: usize,
    /// The server imitated: `vllm`, or `sglang` (SGLang's metric names and labels,
    /// `/get_model_info`, `owned_by: "sglang"`, and /metrics only with --enable-metrics).
    #[arg(long, value_enum, default_value_t = SimEngine::Vllm)]
    pub engine: SimEngine,
    /// Serve HTTPS with this certificate chain (PEM), as vLLM's --ssl-certfile.
    #[arg(long, requires = "ssl_keyfile")]
    pub ssl_certfile: Option<std::path::PathBuf>,
    /// The private key (PEM) of --ssl-certfile, as vLLM's --ssl-keyfile.
    #[arg(long, requires = "ssl_certfile")]
    pub ssl_keyfile: Option<std::path::PathBuf>,
    /// Require a client certificate signed by these CAs (PEM), as vLLM's --ssl-ca-certs with
    /// --ssl-cert-reqs 2.
    #[arg(long, requires = "ssl_certfile")]
    pub ssl_ca_certs: Option<std::path::PathBuf>,
    /// SGLang's flag: serve /metrics (an `--engine sglang` sim has none without it, as SGLang;
    /// vLLM always has them).
    #[arg(long)]
    pub enable_metrics: bool,
    /// Publish KV cache events over ZeroMQ, as vLLM's --kv-events-config (the same JSON:
    /// `{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:5557",
    /// "replay_endpoint": "tcp://*:5558"}`; data-parallel engine N uses each port + N).
    #[arg(long, value_name = "JSON")]
    pub kv_events_config: Option<String>,
    /// Tokenize prompts with a real model's tokenizer: a folder holding its tokenizer.json and
    /// tokenizer_config.json (chat template), as vLLM's --tokenizer. Without it, a stand-in
    /// tokenizer (about four bytes a token) and a ChatML-like template are used.
    #[arg(long, value_name = "FOLDER")]
    pub tokenizer: Option<std::path::PathBuf>,

    /// Decode step time with one running request, in milliseconds (inter-token latency).
    #[arg(long, default_value_t = 10.0, help_heading = "Simulation")]
    pub itl_ms: f64,
    /// Extra step time per additional running request, as a fraction of --itl-ms
    /// (0.01: a batch of 101 steps twice as slowly as a batch of 1).
    #[arg(long, default_value_t = 0.01, help_heading = "Simulation")]
    pub batch_slope: f64,
    /// Prefill cost per prompt token not found in the prefix cache, in microseconds; added to
    /// the step that admits the request, so it lengthens time to first token.
    #[arg(long, default_value_t = 100.0, help_heading = "Simulation")]
    pub prefill_us_per_token: f64,
    /// Output length when a request sets neither max_tokens nor max_completion_tokens
    /// (it then finishes with "stop"; with a limit it finishes with "length").
    #[arg(long, default_value_t = 64, help_heading = "Simulation")]
    pub default_max_tokens: u32,
    /// Dimensions of the vectors /v1/embeddings returns.
    #[arg(long, default_value_t = 384, help_heading = "Simulation")]
    pub embedding_dim: usize,
    /// Seed for generated text, embeddings and which requests a fault rate hits.
    #[arg(long, default_value_t = 0, help_heading = "Simulation")]
    pub seed: u64,

    #[command(
        flatten,
        next_help_heading = "Fault injection (also at run time: /sim/faults)"
    )]
    pub faults: Faults,
}

/// A served LoRA adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraModule {
    pub name: String,
    pub path: String,
}

/// Which server software a sim imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SimEngine {
    Vllm,
    Sglang,
}

/// Validated settings of a simulated server.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub host: String,
    pub port: u16,
    pub model: String,
    pub served_model_names: Vec<String>,
    pub lora_modules: Vec<LoraModule>,
    pub max_model_len: usize,
    pub api_key: Option<String>,
    pub engines: usize,
    pub shape: EngineShape,
    pub cost: StepCost,
    pub default_max_tokens: u32,
    pub embedding_dim: usize,
    pub seed: u64,
    pub faults: Faults,
    pub engine: SimEngine,
    /// Whether /metrics is served (always for vLLM; SGLang's `--enable-metrics`).
    pub serve_metrics: bool,
    /// KV cache events, when on.
    pub kv_events: Option<super::kv_publisher::KvEventsConfig>,
    /// The model's tokenizer (`--tokenizer`), if given.
    pub tokenizer: Option<std::sync::Arc<crate::prompt_tokens::local::LocalTokenizer>>,
    /// HTTPS: (certificate chain, key, CAs for client certificates).
    pub tls: Option<(
        std::path::PathBuf,
        std::path::PathBuf,
        Option<std::path::PathBuf>,
    )>,
}

impl SimArgs {
    /// Checks every flag; the error names the flag and what is allowed.
    pub fn validate(self) -> Result<SimConfig, String> {
        fn positive(flag: &str, value: usize) -> Result<(), String> {
            if value == 0 {
                return Err(format!("--{flag} must be at least 1"));
            }
            Ok(())
        }
        positive("max-num-seqs", self.max_num_seqs)?;
        positive("max-model-len", self.max_model_len)?;
        positive("block-size", self.block_size)?;
        positive("num-gpu-blocks", self.num_gpu_blocks)?;
        positive("data-parallel-size", self.data_parallel_size)?;
        positive("default-max-tokens", self.default_max_tokens as usize)?;
        positive("embedding-dim", self.embedding_dim)?;
        for (flag, value) in [
            ("itl-ms", self.itl_ms),
            ("batch-slope", self.batch_slope),
            ("prefill-us-per-token", self.prefill_us_per_token),
        ] {
            if !(0.0..=3_600_000.0).contains(&value) {
                return Err(format!(
                    "--{flag} must be a number from 0 to 3600000, got {value}"
                ));
            }
        }
        let needed = self.max_model_len.div_ceil(self.block_size);
        if needed > self.num_gpu_blocks {
            return Err(format!(
                "--max-model-len {} needs {needed} KV cache blocks of {} tokens, but \
                 --num-gpu-blocks is {}: raise --num-gpu-blocks or lower --max-model-len",
                self.max_model_len, self.block_size, self.num_gpu_blocks
            ));
        }
        self.faults
            .validate()
            .map_err(|e| format!("--fault-{}", e.replacen('_', "-", 2)))?;

        let kv_events = match &self.kv_events_config {
            Some(json) => super::kv_publisher::KvEventsConfig::parse(json)?,
            None => None,
        };
        let tokenizer = match &self.tokenizer {
            Some(dir) => Some(std::sync::Arc::new(
                crate::prompt_tokens::local::LocalTokenizer::load(dir)
                    .map_err(|e| format!("--tokenizer: {e}"))?
                    .0,
            )),
            None => None,
        };
        let served_model_names = if self.served_model_name.is_empty() {
            vec![self.model.clone()]
        } else {
            self.served_model_name
        };
        let mut lora_modules = Vec::new();
        for spec in &self.lora_modules {
            match spec.split_once('=') {
                Some((name, path)) if !name.is_empty() && !path.is_empty() => {
                    lora_modules.push(LoraModule {
                        name: name.to_string(),
                        path: path.to_string(),
                    })
                }
                _ => {
                    return Err(format!(
                        "--lora-modules takes NAME=PATH entries, got {spec:?}"
                    ))
                }
            }
        }
        Ok(SimConfig {
            host: self.host,
            port: self.port,
            model: self.model,
            served_model_names,
            lora_modules,
            max_model_len: self.max_model_len,
            api_key: self.api_key.filter(|k| !k.is_empty()),
            engines: self.data_parallel_size,
            shape: EngineShape {
                max_num_seqs: self.max_num_seqs,
                num_gpu_blocks: self.num_gpu_blocks,
                block_size: self.block_size,
            },
            cost: StepCost {
                itl: Duration::from_secs_f64(self.itl_ms / 1e3),
                batch_slope: self.batch_slope,
                prefill_per_token: Duration::from_secs_f64(self.prefill_us_per_token / 1e6),
            },
            default_max_tokens: self.default_max_tokens,
            embedding_dim: self.embedding_dim,
            seed: self.seed,
            faults: self.faults,
            engine: self.engine,
            serve_metrics: self.engine == SimEngine::Vllm || self.enable_metrics,
            kv_events,
            tokenizer,
            tls: self
                .ssl_certfile
                .zip(self.ssl_keyfile)
                .map(|(cert, key)| (cert, key, self.ssl_ca_certs)),
        })
    }
}
