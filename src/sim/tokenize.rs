//! `/tokenize` and `/reset_prefix_cache`, as vLLM serves them.
//!
//! `/tokenize` returns exactly the token ids the engines would compute for the same request:
//! a completion's `prompt`, or a chat's `messages` through the chat template (with
//! `add_generation_prompt` and `continue_final_message`), so that a router matching prompts
//! against KV cache events sees what the engine cached.

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;

use super::inference::{chat_tokens, prompt_list};
use super::protocol::{ChatMessage, ChatRequest, Prompt};
use super::server::{body_bytes, Shared};
use crate::openai::ApiError;

/// vLLM's `TokenizeRequest`: a completion prompt or chat messages.
#[derive(Debug, Deserialize)]
struct TokenizeRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    prompt: Option<Prompt>,
    #[serde(default)]
    messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    add_generation_prompt: Option<bool>,
    #[serde(default)]
    continue_final_message: Option<bool>,
}

pub async fn tokenize_handler(
    State(state): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match tokens_of(&state, body) {
        Ok(tokens) => Json(serde_json::json!({
            "count": tokens.len(),
            "max_model_len": state.cfg.max_model_len,
            "tokens": tokens,
            "token_strs": null,
        }))
        .into_response(),
        Err(error) => error.into_response(),
    }
}

fn tokens_of(state: &Shared, body: Result<Bytes, BytesRejection>) -> Result<Vec<u32>, ApiError> {
    let body = body_bytes(body)?;
    let request: TokenizeRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("Invalid JSON body: {e}")))?;
    state.resolve_model(request.model.as_deref())?;
    match (request.prompt, request.messages) {
        (Some(prompt), None) => {
            let mut prompts = prompt_list(state, prompt, "prompt")?;
            if prompts.len() != 1 {
                return Err(ApiError::bad_request("prompt must be one prompt").with_param("prompt"));
            }
            Ok(prompts.remove(0).tokens)
        }
        (None, Some(messages)) => {
            let chat = ChatRequest {
                messages: Some(messages),
                add_generation_prompt: request.add_generation_prompt,
                continue_final_message: request.continue_final_message,
                ..ChatRequest::default()
            };
            chat_tokens(state, &body, &chat)
        }
        _ => Err(ApiError::bad_request(
            "Either prompt or messages must be given, not both",
        )),
    }
}

/// vLLM's `POST /reset_prefix_cache`: every engine forgets its cached prefixes (an
/// `AllBlocksCleared` event each). Refused while requests are running.
pub async fn reset_prefix_cache(State(state): State<Shared>) -> Response {
    if state.engines.reset_prefix_cache().await {
        StatusCode::OK.into_response()
    } else {
        ApiError::bad_request("the prefix cache cannot be reset while requests are running")
            .into_response()
    }
}
