//! The OpenAI request and response bodies the simulator reads and writes, in vLLM's shapes
//! (field order included: clients and routers see exactly what a vLLM server sends).

use serde::{Deserialize, Serialize};

use crate::openai::ApiError;

// ---------------------------------------------------------------- requests

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
    #[serde(default)]
    pub continuous_usage_stats: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    /// A string, a list of content parts, or null.
    #[serde(default)]
    pub content: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// vLLM's: end the prompt with the start of the assistant's turn (default true).
    #[serde(default)]
    pub add_generation_prompt: Option<bool>,
    /// vLLM's: the last message is an assistant message to continue, left open (default false).
    #[serde(default)]
    pub continue_final_message: Option<bool>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<u32>,
    #[serde(default)]
    pub tools: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    pub tool_choice: Option<serde_json::Value>,
}

/// A completion prompt or embedding input: text, texts, token ids, or lists of token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub prompt: Option<Prompt>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// How many alternatives per token to report with its log-probability.
    #[serde(default)]
    pub logprobs: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub input: Option<Prompt>,
    #[serde(default)]
    pub encoding_format: Option<String>,
}

/// Parses a JSON body, answering like vLLM when it is not valid.
pub fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "The request body is not valid JSON"
        } else {
            "The request body does not match the API"
        };
        ApiError::bad_request(format!("{what}: {e}"))
    })
}

/// The text of a message's content: a string, or the text parts of a list of parts (other
/// parts, such as images, count as a short placeholder).
pub fn message_text(content: &Option<serde_json::Value>) -> Result<String, ApiError> {
    use serde_json::Value;
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    // "input_text" and "output_text" are the Responses API's names.
                    Some("text" | "input_text" | "output_text") => {
                        match part.get("text").and_then(Value::as_str) {
                            Some(t) => text.push_str(t),
                            None => {
                                return Err(ApiError::bad_request(
                                    "a content part of type \"text\" needs a string \"text\"",
                                )
                                .with_param("messages"))
                            }
                        }
                    }
                    Some(_) => text.push_str("<media>"),
                    None => {
                        return Err(ApiError::bad_request("every content part needs a \"type\"")
                            .with_param("messages"))
                    }
                }
            }
            Ok(text)
        }
        Some(_) => Err(ApiError::bad_request(
            "message content must be a string, a list of content parts, or null",
        )
        .with_param("messages")),
    }
}

// ---------------------------------------------------------------- responses

/// vLLM's usage object (its key order: prompt, total, completion).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
    pub completion_tokens: usize,
    pub prompt_tokens_details: Option<()>,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Usage {
            prompt_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            completion_tokens,
            prompt_tokens_details: None,
        }
    }
}

/// Streamed usage has no `prompt_tokens_details` in vLLM.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StreamUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
    pub completion_tokens: usize,
}

impl From<Usage> for StreamUsage {
    fn from(u: Usage) -> Self {
        StreamUsage {
            prompt_tokens: u.prompt_tokens,
            total_tokens: u.total_tokens,
            completion_tokens: u.completion_tokens,
        }
    }
}

#[derive(Serialize)]
pub struct AssistantMessage<'a> {
    pub role: &'static str,
    pub reasoning_content: Option<()>,
    pub content: Option<&'a str>,
    pub tool_calls: Vec<serde_json::Value>,
}

#[derive(Serialize)]
pub struct ChatChoice<'a> {
    pub index: u32,
    pub message: AssistantMessage<'a>,
    pub logprobs: Option<serde_json::Value>,
    pub finish_reason: &'static str,
    pub stop_reason: Option<()>,
}

#[derive(Serialize)]
pub struct ChatCompletion<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<ChatChoice<'a>>,
    pub usage: Usage,
    pub prompt_logprobs: Option<()>,
    pub kv_transfer_params: Option<()>,
}

#[derive(Serialize)]
pub struct CompletionChoice<'a> {
    pub index: u32,
    pub text: &'a str,
    pub logprobs: Option<serde_json::Value>,
    pub finish_reason: &'static str,
    pub stop_reason: Option<()>,
    pub prompt_logprobs: Option<()>,
}

#[derive(Serialize)]
pub struct Completion<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<CompletionChoice<'a>>,
    pub usage: Usage,
    pub kv_transfer_params: Option<()>,
}

#[derive(Serialize)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Floats(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
pub struct EmbeddingData {
    pub index: u32,
    pub object: &'static str,
    pub embedding: EmbeddingVector,
}

#[derive(Serialize)]
pub struct EmbeddingResponse<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub data: Vec<EmbeddingData>,
    pub usage: Usage,
}

/// A model card of /v1/models, as vLLM writes it.
#[derive(Serialize)]
pub struct ModelCard<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    pub root: &'a str,
    pub parent: Option<&'a str>,
    pub max_model_len: Option<usize>,
    pub permission: [ModelPermission; 1],
}

#[derive(Serialize)]
pub struct ModelPermission {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub allow_create_engine: bool,
    pub allow_sampling: bool,
    pub allow_logprobs: bool,
    pub allow_search_indices: bool,
    pub allow_view: bool,
    pub allow_fine_tuning: bool,
    pub organization: &'static str,
    pub group: Option<()>,
    pub is_blocking: bool,
}

impl ModelPermission {
    pub fn new(id: String, created: u64) -> Self {
        ModelPermission {
            id,
            object: "model_permission",
            created,
            allow_create_engine: false,
            allow_sampling: true,
            allow_logprobs: true,
            allow_search_indices: false,
            allow_view: true,
            allow_fine_tuning: false,
            organization: "*",
            group: None,
            is_blocking: false,
        }
    }
}

#[derive(Serialize)]
pub struct ModelList<'a> {
    pub object: &'static str,
    pub data: Vec<ModelCard<'a>>,
}

// ---------------------------------------------------------------- stream chunks

#[derive(Serialize)]
pub struct ChatDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    pub content: &'a str,
}

#[derive(Serialize)]
pub struct ChatChunkChoice<'a> {
    pub index: u32,
    pub delta: ChatDelta<'a>,
    pub logprobs: Option<serde_json::Value>,
    pub finish_reason: Option<&'static str>,
    /// vLLM adds `stop_reason` only to the chunk that finishes a choice.
    #[serde(skip_serializing_if = "is_false", serialize_with = "null")]
    pub stop_reason: bool,
}

#[derive(Serialize)]
pub struct CompletionChunkChoice<'a> {
    pub index: u32,
    pub text: &'a str,
    pub logprobs: Option<serde_json::Value>,
    pub finish_reason: Option<&'static str>,
    pub stop_reason: Option<()>,
}

#[derive(Serialize)]
pub struct Chunk<'a, C> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: C,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<StreamUsage>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

fn null<S: serde::Serializer>(_: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_none()
}

/// One SSE event, `data: <json>\n\n`, in a single buffer (one write on the socket).
pub fn sse_event<T: Serialize>(payload: &T) -> bytes::Bytes {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut buf, payload).expect("response structs always serialize");
    buf.extend_from_slice(b"\n\n");
    buf.into()
}

pub const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_chunks_match_vllm_byte_for_byte() {
        let first = Chunk {
            id: "chatcmpl-1",
            object: "chat.completion.chunk",
            created: 7,
            model: "m",
            choices: [ChatChunkChoice {
                index: 0,
                delta: ChatDelta {
                    role: Some("assistant"),
                    content: "",
                },
                logprobs: None,
                finish_reason: None,
                stop_reason: false,
            }],
            usage: None,
        };
        assert_eq!(
            &sse_event(&first)[..],
            b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n"
        );
        let last = Chunk {
            choices: [ChatChunkChoice {
                index: 0,
                delta: ChatDelta {
                    role: None,
                    content: "",
                },
                logprobs: None,
                finish_reason: Some("stop"),
                stop_reason: true,
            }],
            ..first
        };
        let text = String::from_utf8(sse_event(&last).to_vec()).unwrap();
        assert!(text.ends_with(
            "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"logprobs\":null,\"finish_reason\":\"stop\",\"stop_reason\":null}]}\n\n"
        ));
    }

    #[test]
    fn prompts_of_every_shape_parse() {
        for (json, ok) in [
            (r#""hi""#, true),
            (r#"["a","b"]"#, true),
            (r#"[1,2,3]"#, true),
            (r#"[[1],[2,3]]"#, true),
            (r#"{"x":1}"#, false),
        ] {
            assert_eq!(serde_json::from_str::<Prompt>(json).is_ok(), ok, "{json}");
        }
    }

    #[test]
    fn content_parts_are_flattened() {
        let parts = serde_json::json!([{"type": "text", "text": "a"}, {"type": "image_url"}]);
        assert_eq!(message_text(&Some(parts)).unwrap(), "a<media>");
        assert!(message_text(&Some(serde_json::json!(5))).is_err());
    }
}
