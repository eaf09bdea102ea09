//! The inference endpoints: /v1/chat/completions, /v1/completions, /v1/responses and
//! /v1/embeddings.
//!
//! Each request is checked like vLLM checks it, turned into prompt tokens, queued on an engine
//! (one generation per choice), and answered either at the end as one JSON body or token by
//! token as server-sent events.

use std::io;

use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, select_all, StreamExt};

use super::engine::{GenRequest, Generation, TokenEvent};
use super::kv_cache::prefix_block_hashes;
use super::logprobs::{self, Wanted};
use super::metrics::FinishedReason;
use super::protocol::*;
use super::responses::{self, ResponsesRequest};
use super::server::{
    body_bytes, client_request_id, inject_faults, unix_now, with_request_id, ConnKill, Shared,
    SimState,
};
use super::tokenizer::{chat_prompt_with, embedding, output_token, prompt_key, tokenize};
use super::tools::{self, Forced};
use crate::openai::ApiError;

/// Most choices one request may ask for (`n`, times the prompts of a batch).
const MAX_CHOICES: usize = 128;

/// One prompt, tokenized.
pub struct PromptTokens {
    pub tokens: Vec<u32>,
}

/// What one choice generates.
#[derive(Clone, Copy)]
struct ChoicePlan {
    prompt_key: u64,
    output_len: u32,
    finish: FinishedReason,
}

impl ChoicePlan {
    fn finish_reason(&self) -> &'static str {
        match self.finish {
            FinishedReason::Length => "length",
            _ => "stop",
        }
    }

    /// Text of the `generated`-th token (1-based). A "stop" ends on an end-of-sequence token
    /// whose text is empty, as in vLLM.
    fn token_text(&self, seed: u64, generated: u32) -> &'static str {
        if self.finish == FinishedReason::Stop && generated >= self.output_len {
            ""
        } else {
            output_token(seed, self.prompt_key, generated - 1)
        }
    }

    fn full_text(&self, seed: u64, generated: u32) -> String {
        (1..=generated).map(|g| self.token_text(seed, g)).collect()
    }

    fn tokens(&self, seed: u64, generated: u32) -> Vec<&'static str> {
        (1..=generated).map(|g| self.token_text(seed, g)).collect()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Completion,
    Responses,
}

/// Everything needed to answer a generation request once its tokens come out.
struct Answer {
    api: Api,
    id: String,
    model: String,
    created: u64,
    seed: u64,
    prompt_tokens: usize,
    choices: Vec<ChoicePlan>,
    /// Log-probabilities asked for.
    logprobs: Option<Wanted>,
    /// The function every choice calls, when `tool_choice` forces one.
    tool: Option<Forced>,
    /// The Responses API's echoes of the request.
    instructions: Option<String>,
    max_output_tokens: Option<u32>,
}

pub async fn chat(
    State(state): State<Shared>,
    kill: Option<Extension<ConnKill>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(Endpoint::Chat, state, kill.map(|k| k.0), headers, body).await
}

pub async fn responses(
    State(state): State<Shared>,
    kill: Option<Extension<ConnKill>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(Endpoint::Responses, state, kill.map(|k| k.0), headers, body).await
}

pub async fn completions(
    State(state): State<Shared>,
    kill: Option<Extension<ConnKill>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(
        Endpoint::Completions,
        state,
        kill.map(|k| k.0),
        headers,
        body,
    )
    .await
}

pub async fn embeddings(
    State(state): State<Shared>,
    kill: Option<Extension<ConnKill>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(
        Endpoint::Embeddings,
        state,
        kill.map(|k| k.0),
        headers,
        body,
    )
    .await
}

#[derive(Clone, Copy)]
enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    Responses,
}

/// What every inference endpoint does around its own work: faults first (a failing server
/// fails before it reads anything), then the request id, then the answer.
async fn handle(
    endpoint: Endpoint,
    state: Shared,
    kill: Option<ConnKill>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let cut = match inject_faults(&state, kill.as_ref()).await {
        Ok(cut) => cut,
        Err(response) => return response,
    };
    let request_id = client_request_id(&headers).unwrap_or_else(|| state.random_id());
    let rank = match data_parallel_rank(&headers, state.engines.count()) {
        Ok(rank) => rank,
        Err(error) => return with_request_id(error.into_response(), &request_id),
    };
    let planned = match endpoint {
        Endpoint::Chat => plan_chat(&state, &request_id, body),
        Endpoint::Completions => plan_completion(&state, &request_id, body),
        Endpoint::Responses => plan_responses(&state, &request_id, body),
        Endpoint::Embeddings => {
            let answer = embed(&state, &request_id, body).await;
            return with_request_id(
                answer.unwrap_or_else(IntoResponse::into_response),
                &request_id,
            );
        }
    };
    let response = match planned {
        Ok((answer, requests, streaming)) => {
            respond(&state, answer, requests, rank, streaming, cut, kill).await
        }
        Err(error) => error.into_response(),
    };
    with_request_id(response, &request_id)
}

/// The engine a request asks for with vLLM's `X-data-parallel-rank` header: a number below
/// the data-parallel size, else 400 (as vLLM answers).
fn data_parallel_rank(headers: &HeaderMap, engines: usize) -> Result<Option<usize>, ApiError> {
    let Some(value) = headers.get("x-data-parallel-rank") else {
        return Ok(None);
    };
    match value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        Some(rank) if rank < engines => Ok(Some(rank)),
        _ => Err(ApiError::bad_request(format!(
            "X-data-parallel-rank must be a data parallel rank from 0 to {}",
            engines - 1
        ))),
    }
}

/// (what to answer, what to generate, whether to stream)
type Planned = (Answer, Vec<GenRequest>, Streaming);

#[derive(Clone, Copy)]
struct Streaming {
    enabled: bool,
    include_usage: bool,
    continuous_usage: bool,
}

impl Streaming {
    fn new(stream: Option<bool>, options: Option<&StreamOptions>) -> Self {
        let enabled = stream.unwrap_or(false);
        Streaming {
            enabled,
            include_usage: enabled && options.and_then(|o| o.include_usage).unwrap_or(false),
            continuous_usage: enabled
                && options
                    .and_then(|o| o.continuous_usage_stats)
                    .unwrap_or(false),
        }
    }
}

fn plan_chat(
    state: &SimState,
    request_id: &str,
    body: Result<Bytes, BytesRejection>,
) -> Result<Planned, ApiError> {
    let body = body_bytes(body)?;
    let request: ChatRequest = parse_json(&body)?;
    let model = state.resolve_model(request.model.as_deref())?;
    let prompts = vec![PromptTokens {
        tokens: chat_tokens(state, &body, &request)?,
    }];
    let max_tokens = request.max_completion_tokens.or(request.max_tokens);
    let streaming = Streaming::new(request.stream, request.stream_options.as_ref());
    let wanted = Wanted::chat(request.logprobs, request.top_logprobs)?;
    let tool = tools::forced(request.tools.as_deref(), request.tool_choice.as_ref())?;
    if tool.is_some() && streaming.enabled {
        return Err(ApiError::bad_request(
            "mvllm sim answers a forced tool_choice only without stream",
        )
        .with_param("stream"));
    }
    let (mut answer, requests) = plan_generation(
        state,
        Api::Chat,
        format!("chatcmpl-{request_id}"),
        model,
        &prompts,
        max_tokens,
        request.n,
    )?;
    answer.logprobs = wanted;
    answer.tool = tool;
    Ok((answer, requests, streaming))
}

/// The prompt text of a chat request: its messages through the (simulated) chat template,
/// with vLLM's `add_generation_prompt` and `continue_final_message`.
pub fn chat_text(request: &ChatRequest) -> Result<String, ApiError> {
    let messages = request
        .messages
        .as_ref()
        .ok_or_else(|| ApiError::bad_request("Field required: messages").with_param("messages"))?;
    if messages.is_empty() {
        return Err(ApiError::bad_request("messages must not be empty").with_param("messages"));
    }
    let mut texts = Vec::with_capacity(messages.len());
    for message in messages {
        texts.push((message.role.as_str(), message_text(&message.content)?));
    }
    let continue_final = request.continue_final_message.unwrap_or(false);
    if continue_final && texts.last().is_none_or(|(role, _)| *role != "assistant") {
        return Err(ApiError::bad_request(
            "continue_final_message is set, but the last message is not an assistant message",
        )
        .with_param("continue_final_message"));
    }
    Ok(chat_prompt_with(
        texts.iter().map(|(role, text)| (*role, text.as_str())),
        request.add_generation_prompt.unwrap_or(true),
        continue_final,
    ))
}

/// A chat's prompt tokens: with `--tokenizer`, the model's chat template and tokenizer (as
/// the router's local tokenizer makes them); else the stand-in template and tokenizer.
pub fn chat_tokens(
    state: &SimState,
    body: &[u8],
    request: &ChatRequest,
) -> Result<Vec<u32>, ApiError> {
    match &state.cfg.tokenizer {
        Some(local) => crate::prompt_tokens::tokenize_body(local, body)
            .map_err(|why| ApiError::bad_request(format!("The prompt cannot be tokenized: {why}"))),
        None => Ok(tokenize(&chat_text(request)?)),
    }
}

/// A text prompt's tokens (with the model's tokenizer under `--tokenizer`).
fn text_tokens(state: &SimState, text: &str) -> Result<Vec<u32>, ApiError> {
    match &state.cfg.tokenizer {
        Some(local) => local
            .encode(text, true)
            .map_err(|why| ApiError::bad_request(format!("The prompt cannot be tokenized: {why}"))),
        None => Ok(tokenize(text)),
    }
}

fn plan_completion(
    state: &SimState,
    request_id: &str,
    body: Result<Bytes, BytesRejection>,
) -> Result<Planned, ApiError> {
    let body = body_bytes(body)?;
    let request: CompletionRequest = parse_json(&body)?;
    let model = state.resolve_model(request.model.as_deref())?;
    let prompt = request
        .prompt
        .ok_or_else(|| ApiError::bad_request("Field required: prompt").with_param("prompt"))?;
    let prompts = prompt_list(state, prompt, "prompt")?;
    let streaming = Streaming::new(request.stream, request.stream_options.as_ref());
    let wanted = Wanted::completion(request.logprobs)?;
    let (mut answer, requests) = plan_generation(
        state,
        Api::Completion,
        format!("cmpl-{request_id}"),
        model,
        &prompts,
        request.max_tokens,
        request.n,
    )?;
    answer.logprobs = wanted;
    Ok((answer, requests, streaming))
}

fn plan_responses(
    state: &SimState,
    request_id: &str,
    body: Result<Bytes, BytesRejection>,
) -> Result<Planned, ApiError> {
    let body = body_bytes(body)?;
    let request: ResponsesRequest = parse_json(&body)?;
    let model = state.resolve_model(request.model.as_deref())?;
    let messages = request.messages()?;
    let prompt = chat_prompt_with(
        messages
            .iter()
            .map(|(role, text)| (role.as_str(), text.as_str())),
        true,
        false,
    );
    let prompts = vec![PromptTokens {
        tokens: tokenize(&prompt),
    }];
    let (mut answer, requests) = plan_generation(
        state,
        Api::Responses,
        request_id.to_string(),
        model,
        &prompts,
        request.max_output_tokens,
        None,
    )?;
    answer.instructions = request.instructions;
    answer.max_output_tokens = request.max_output_tokens;
    Ok((answer, requests, Streaming::new(request.stream, None)))
}

/// Splits a prompt or input into its tokenized prompts (a batch has several).
pub fn prompt_list(
    state: &SimState,
    prompt: Prompt,
    param: &str,
) -> Result<Vec<PromptTokens>, ApiError> {
    let prompts: Vec<PromptTokens> = match prompt {
        Prompt::Text(text) => vec![PromptTokens {
            tokens: text_tokens(state, &text)?,
        }],
        Prompt::Texts(texts) => texts
            .iter()
            .map(|t| text_tokens(state, t).map(|tokens| PromptTokens { tokens }))
            .collect::<Result<_, _>>()?,
        Prompt::Tokens(tokens) => vec![PromptTokens { tokens }],
        Prompt::TokenLists(lists) => lists
            .into_iter()
            .map(|tokens| PromptTokens { tokens })
            .collect(),
    };
    if prompts.is_empty() {
        return Err(
            ApiError::bad_request(format!("{param} must not be an empty list")).with_param(param),
        );
    }
    Ok(prompts)
}

/// Checks lengths against --max-model-len and decides every choice's output.
fn plan_generation(
    state: &SimState,
    api: Api,
    id: String,
    model: String,
    prompts: &[PromptTokens],
    max_tokens: Option<u32>,
    n: Option<u32>,
) -> Result<(Answer, Vec<GenRequest>), ApiError> {
    let cfg = &state.cfg;
    let n = n.unwrap_or(1) as usize;
    if n == 0 || n * prompts.len() > MAX_CHOICES {
        return Err(ApiError::bad_request(format!(
            "n must be from 1 to {MAX_CHOICES} (across all prompts), got {n}"
        ))
        .with_param("n"));
    }
    let limit = cfg.max_model_len;
    let mut answer = Answer {
        api,
        id,
        model,
        created: unix_now(),
        seed: cfg.seed,
        prompt_tokens: 0,
        choices: Vec::with_capacity(n * prompts.len()),
        logprobs: None,
        tool: None,
        instructions: None,
        max_output_tokens: None,
    };
    let mut requests = Vec::with_capacity(n * prompts.len());
    for prompt in prompts {
        let prompt_len = prompt.tokens.len();
        let (output_len, finish) = match max_tokens {
            Some(0) => {
                return Err(ApiError::bad_request("max_tokens must be at least 1, got 0.").with_param("max_tokens"))
            }
            Some(m) if prompt_len + m as usize > limit => {
                return Err(ApiError::bad_request(format!(
                    "This model's maximum context length is {limit} tokens. However, you requested {} tokens ({prompt_len} in the messages, {m} in the completion). Please reduce the length of the messages or completion.",
                    prompt_len + m as usize
                )))
            }
            Some(m) => (m, FinishedReason::Length),
            None if prompt_len >= limit => {
                return Err(ApiError::bad_request(format!(
                    "This model's maximum context length is {limit} tokens. However, your request has {prompt_len} input tokens. Please reduce the length of the input messages."
                )))
            }
            None => {
                let room = (limit - prompt_len) as u32;
                if cfg.default_max_tokens > room {
                    (room, FinishedReason::Length)
                } else {
                    (cfg.default_max_tokens, FinishedReason::Stop)
                }
            }
        };
        let key = prompt_key(&prompt.tokens);
        let hashes = prefix_block_hashes(&prompt.tokens, cfg.shape.block_size);
        let tokens: std::sync::Arc<[u32]> = prompt.tokens.as_slice().into();
        answer.prompt_tokens += prompt_len;
        for choice in 0..n {
            answer.choices.push(ChoicePlan {
                prompt_key: key ^ choice as u64,
                output_len,
                finish,
            });
            requests.push(GenRequest {
                prompt_len,
                prompt_hashes: hashes.clone(),
                prompt_tokens: std::sync::Arc::clone(&tokens),
                output_len,
                finish,
            });
        }
    }
    Ok((answer, requests))
}

async fn respond(
    state: &SimState,
    answer: Answer,
    requests: Vec<GenRequest>,
    rank: Option<usize>,
    streaming: Streaming,
    cut: Option<u32>,
    kill: Option<ConnKill>,
) -> Response {
    let generations: Vec<Generation> = requests
        .into_iter()
        .map(|r| state.engines.submit_to(r, rank))
        .collect();
    if streaming.enabled {
        return stream_answer(answer, generations, streaming, cut, kill);
    }
    let counts =
        futures_util::future::join_all(generations.into_iter().map(Generation::complete)).await;
    let texts: Vec<String> = answer
        .choices
        .iter()
        .zip(&counts)
        .map(|(plan, &count)| plan.full_text(answer.seed, count))
        .collect();
    let usage = Usage::new(
        answer.prompt_tokens,
        counts.iter().map(|&c| c as usize).sum(),
    );
    match answer.api {
        Api::Responses => axum::Json(responses::body(&responses::Generated {
            id: &answer.id,
            model: &answer.model,
            created: answer.created,
            text: &texts[0],
            input_tokens: answer.prompt_tokens,
            output_tokens: counts[0] as usize,
            cut: answer.choices[0].finish == FinishedReason::Length,
            max_output_tokens: answer.max_output_tokens,
            instructions: answer.instructions.as_deref(),
        }))
        .into_response(),
        Api::Chat => axum::Json(ChatCompletion {
            id: &answer.id,
            object: "chat.completion",
            created: answer.created,
            model: &answer.model,
            choices: answer
                .choices
                .iter()
                .zip(&texts)
                .enumerate()
                .zip(&counts)
                .map(|((index, (plan, text)), &count)| {
                    let seed = answer.seed;
                    let calls = answer.tool.as_ref().map(|tool| {
                        let id = answer.id.strip_prefix("chatcmpl-").unwrap_or(&answer.id);
                        tools::calls(tool, &format!("{id}{index}"), seed, plan.prompt_key)
                    });
                    ChatChoice {
                        index: index as u32,
                        message: AssistantMessage {
                            role: "assistant",
                            reasoning_content: None,
                            content: calls.is_none().then_some(text.as_str()),
                            tool_calls: calls.clone().unwrap_or_default(),
                        },
                        logprobs: answer.logprobs.map(|wanted| {
                            logprobs::chat(seed, plan.prompt_key, &plan.tokens(seed, count), wanted)
                        }),
                        finish_reason: match calls {
                            Some(_) => "tool_calls",
                            None => plan.finish_reason(),
                        },
                        stop_reason: None,
                    }
                })
                .collect(),
            usage,
            prompt_logprobs: None,
            kv_transfer_params: None,
        })
        .into_response(),
        Api::Completion => axum::Json(Completion {
            id: &answer.id,
            object: "text_completion",
            created: answer.created,
            model: &answer.model,
            choices: answer
                .choices
                .iter()
                .zip(&texts)
                .enumerate()
                .zip(&counts)
                .map(|((index, (plan, text)), &count)| CompletionChoice {
                    index: index as u32,
                    text,
                    logprobs: answer.logprobs.map(|wanted| {
                        let tokens = plan.tokens(answer.seed, count);
                        logprobs::completion(answer.seed, plan.prompt_key, 1, &tokens, 0, wanted)
                    }),
                    finish_reason: plan.finish_reason(),
                    stop_reason: None,
                    prompt_logprobs: None,
                })
                .collect(),
            usage,
            kv_transfer_params: None,
        })
        .into_response(),
    }
}

/// The state of one SSE response.
struct SseWriter {
    answer: Answer,
    streaming: Streaming,
    generated: Vec<u32>,
    /// Token events written so far (for the cut-stream fault).
    events_written: u32,
    /// A streamed Responses API answer's event numbering.
    response_events: responses::EventWriter,
}

impl SseWriter {
    fn chunk<C: serde::Serialize>(&self, choices: C, usage: Option<StreamUsage>) -> Bytes {
        sse_event(&Chunk {
            id: &self.answer.id,
            object: match self.answer.api {
                // (a streamed Responses answer has its own events: responses.rs)
                Api::Chat | Api::Responses => "chat.completion.chunk",
                Api::Completion => "text_completion",
            },
            created: self.answer.created,
            model: &self.answer.model,
            choices,
            usage,
        })
    }

    fn usage(&self) -> Usage {
        Usage::new(
            self.answer.prompt_tokens,
            self.generated.iter().map(|&g| g as usize).sum(),
        )
    }

    /// The SSE bytes for one token of choice `index`.
    fn token(&mut self, index: usize, event: TokenEvent) -> Bytes {
        self.generated[index] = event.generated;
        self.events_written += 1;
        let plan = self.answer.choices[index];
        let text = plan.token_text(self.answer.seed, event.generated);
        let finish_reason = event.finished.then(|| plan.finish_reason());
        let seed = self.answer.seed;
        let wanted = self.answer.logprobs;
        let usage = self.streaming.continuous_usage.then(|| {
            // vLLM's per-chunk usage counts this choice's tokens so far.
            StreamUsage::from(Usage::new(
                self.answer.prompt_tokens,
                event.generated as usize,
            ))
        });
        if self.answer.api == Api::Responses {
            return self.response_token(event.generated, text);
        }
        let index = index as u32;
        match self.answer.api {
            Api::Chat | Api::Responses => {
                let mut out = BytesMut::new();
                if event.generated == 1 {
                    // The first chunk of a choice carries the role, and no text.
                    out.extend_from_slice(&self.chunk(
                        [ChatChunkChoice {
                            index,
                            delta: ChatDelta {
                                role: Some("assistant"),
                                content: "",
                            },
                            logprobs: None,
                            finish_reason: None,
                            stop_reason: false,
                        }],
                        None,
                    ));
                }
                out.extend_from_slice(&self.chunk(
                    [ChatChunkChoice {
                        index,
                        delta: ChatDelta {
                            role: None,
                            content: text,
                        },
                        logprobs: wanted.map(|w| {
                            let entry = logprobs::chat_entry(
                                seed,
                                plan.prompt_key,
                                event.generated,
                                text,
                                w,
                            );
                            serde_json::json!({ "content": [entry] })
                        }),
                        finish_reason,
                        stop_reason: event.finished,
                    }],
                    usage,
                ));
                out.freeze()
            }
            Api::Completion => self.chunk(
                [CompletionChunkChoice {
                    index,
                    text,
                    logprobs: wanted.map(|w| {
                        let offset = plan.full_text(seed, event.generated - 1).len();
                        logprobs::completion(
                            seed,
                            plan.prompt_key,
                            event.generated,
                            &[text],
                            offset,
                            w,
                        )
                    }),
                    finish_reason,
                    stop_reason: None,
                }],
                usage,
            ),
        }
    }

    /// A Responses API answer as it stands with `text` (its one choice).
    fn response<'a>(&'a self, text: &'a str) -> responses::Generated<'a> {
        responses::Generated {
            id: &self.answer.id,
            model: &self.answer.model,
            created: self.answer.created,
            text,
            input_tokens: self.answer.prompt_tokens,
            output_tokens: self.generated[0] as usize,
            cut: self.answer.choices[0].finish == FinishedReason::Length,
            max_output_tokens: self.answer.max_output_tokens,
            instructions: self.answer.instructions.as_deref(),
        }
    }

    /// The events of one token of a streamed Responses API answer (the opening ones first).
    fn response_token(&mut self, generated: u32, text: &str) -> Bytes {
        let mut events = std::mem::take(&mut self.response_events);
        let mut out = Vec::new();
        if generated == 1 {
            out.extend(events.opening(&self.response("")));
        }
        out.extend(events.delta(&self.response(""), text));
        self.response_events = events;
        Bytes::from(out)
    }

    /// The usage chunk (if asked for) and `[DONE]`; for the Responses API, its closing events
    /// (it sends no `[DONE]`).
    fn tail(&mut self) -> Bytes {
        if self.answer.api == Api::Responses {
            let text = self.answer.choices[0].full_text(self.answer.seed, self.generated[0]);
            let mut events = std::mem::take(&mut self.response_events);
            let out = events.closing(&self.response(&text));
            self.response_events = events;
            return Bytes::from(out);
        }
        let mut out = BytesMut::new();
        if self.streaming.include_usage {
            let no_choices: [(); 0] = [];
            out.extend_from_slice(&self.chunk(no_choices, Some(self.usage().into())));
        }
        out.extend_from_slice(SSE_DONE);
        out.freeze()
    }
}

fn stream_answer(
    answer: Answer,
    generations: Vec<Generation>,
    streaming: Streaming,
    cut: Option<u32>,
    kill: Option<ConnKill>,
) -> Response {
    let writer = SseWriter {
        generated: vec![0; answer.choices.len()],
        answer,
        streaming,
        events_written: 0,
        response_events: responses::EventWriter::default(),
    };
    let events = select_all(
        generations
            .into_iter()
            .enumerate()
            .map(|(index, generation)| generation.map(move |event| (index, event))),
    );
    let body = stream::unfold(Some((writer, events)), move |state| {
        let kill = kill.clone();
        async move {
            let (mut writer, mut events) = state?;
            match events.next().await {
                Some(_) if cut.is_some_and(|n| writer.events_written >= n) => {
                    if let Some(kill) = kill {
                        kill.close();
                    }
                    let cut_off = io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "stream cut (injected fault)",
                    );
                    Some((Err(cut_off), None))
                }
                Some((index, event)) => {
                    let bytes = writer.token(index, event);
                    Some((Ok(bytes), Some((writer, events))))
                }
                None => Some((Ok(writer.tail()), None)),
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")],
        Body::from_stream(body),
    )
        .into_response()
}

async fn embed(
    state: &SimState,
    request_id: &str,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let request: EmbeddingRequest = parse_json(&body)?;
    let model = state.resolve_model(request.model.as_deref())?;
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "encoding_format must be \"float\" or \"base64\", got {other:?}"
            ))
            .with_param("encoding_format"))
        }
    };
    let input = request
        .input
        .ok_or_else(|| ApiError::bad_request("Field required: input").with_param("input"))?;
    let inputs = prompt_list(state, input, "input")?;
    let cfg = &state.cfg;
    if inputs.len() > 2048 {
        return Err(ApiError::bad_request("input may hold at most 2048 items").with_param("input"));
    }
    for input in &inputs {
        if input.tokens.len() > cfg.max_model_len {
            return Err(ApiError::bad_request(format!(
                "This model's maximum context length is {} tokens. However, you requested {} tokens in the input for embedding generation. Please reduce the length of the input.",
                cfg.max_model_len,
                input.tokens.len()
            )));
        }
    }
    // An embedding is a prefill with no decoding: one engine step in the batch.
    let generations: Vec<Generation> = inputs
        .iter()
        .map(|input| {
            state.engines.submit(GenRequest {
                prompt_len: input.tokens.len(),
                prompt_hashes: prefix_block_hashes(&input.tokens, cfg.shape.block_size),
                prompt_tokens: input.tokens.as_slice().into(),
                output_len: 1,
                finish: FinishedReason::Stop,
            })
        })
        .collect();
    futures_util::future::join_all(generations.into_iter().map(Generation::complete)).await;

    let prompt_tokens = inputs.iter().map(|i| i.tokens.len()).sum();
    let data = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = embedding(cfg.seed, &input.tokens, cfg.embedding_dim);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                EmbeddingVector::Floats(vector)
            };
            EmbeddingData {
                index: index as u32,
                object: "embedding",
                embedding,
            }
        })
        .collect();
    let id = format!("embd-{request_id}");
    Ok(axum::Json(EmbeddingResponse {
        id: &id,
        object: "list",
        created: unix_now(),
        model: &model,
        data,
        usage: Usage::new(prompt_tokens, 0),
    })
    .into_response())
}
