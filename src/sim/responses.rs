//! The Responses API (`POST /v1/responses`), as vLLM serves it: the request's `instructions`
//! and `input` become a chat prompt, and the answer is one `message` output item. Streaming,
//! stored responses (`previous_response_id`) and tools are refused with a clear 400: the sim
//! covers what a router must pass through, not the whole API.

use serde::Deserialize;
use serde_json::{json, Value};

use super::protocol::message_text;
use crate::openai::ApiError;

#[derive(Debug, Deserialize)]
pub struct ResponsesRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub input: Option<Value>,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
}

impl ResponsesRequest {
    /// The conversation it asks about: (role, text) pairs, instructions first.
    pub fn messages(&self) -> Result<Vec<(String, String)>, ApiError> {
        if self.stream == Some(true) {
            return Err(unsupported("stream", "streamed responses"));
        }
        if self.previous_response_id.is_some() {
            return Err(unsupported("previous_response_id", "stored responses"));
        }
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(unsupported("tools", "tools in the Responses API"));
        }
        let mut messages = Vec::new();
        if let Some(instructions) = &self.instructions {
            messages.push(("system".to_string(), instructions.clone()));
        }
        match &self.input {
            Some(Value::String(text)) => messages.push(("user".into(), text.clone())),
            Some(Value::Array(items)) if !items.is_empty() => {
                for item in items {
                    let role = item.get("role").and_then(Value::as_str).ok_or_else(|| {
                        ApiError::bad_request("each input item needs a \"role\"")
                            .with_param("input")
                    })?;
                    let content = item.get("content").cloned();
                    messages.push((role.to_string(), message_text(&content)?));
                }
            }
            _ => {
                return Err(ApiError::bad_request(
                    "input must be a string or a non-empty list of messages",
                )
                .with_param("input"))
            }
        }
        Ok(messages)
    }
}

fn unsupported(param: &str, what: &str) -> ApiError {
    ApiError::bad_request(format!("mvllm sim does not serve {what}")).with_param(param)
}

/// What was generated for a response.
pub struct Generated<'a> {
    pub id: &'a str,
    pub model: &'a str,
    pub created: u64,
    pub text: &'a str,
    pub input_tokens: usize,
    pub output_tokens: usize,
    /// Whether `max_output_tokens` cut it short.
    pub cut: bool,
    pub max_output_tokens: Option<u32>,
    pub instructions: Option<&'a str>,
}

/// The response object.
pub fn body(g: &Generated<'_>) -> Value {
    json!({
        "id": format!("resp_{}", g.id),
        "created_at": g.created,
        "incomplete_details": if g.cut { json!({"reason": "max_output_tokens"}) } else { Value::Null },
        "instructions": g.instructions,
        "metadata": null,
        "model": g.model,
        "object": "response",
        "output": [{
            "id": format!("msg_{}", g.id),
            "content": [{"annotations": [], "text": g.text, "type": "output_text", "logprobs": null}],
            "role": "assistant",
            "status": "completed",
            "type": "message",
        }],
        "parallel_tool_calls": true,
        "temperature": 1.0,
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "background": false,
        "max_output_tokens": g.max_output_tokens,
        "previous_response_id": null,
        "reasoning": null,
        "service_tier": "auto",
        "status": if g.cut { "incomplete" } else { "completed" },
        "text": null,
        "truncation": "disabled",
        "usage": {
            "input_tokens": g.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": g.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": g.input_tokens + g.output_tokens,
        },
        "user": null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(value: Value) -> ResponsesRequest {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn input_of_every_shape() {
        let r = request(json!({"input": "hi", "instructions": "be brief"}));
        assert_eq!(
            r.messages().unwrap(),
            vec![
                ("system".into(), "be brief".into()),
                ("user".into(), "hi".into())
            ]
        );
        let r = request(
            json!({"input": [{"role": "user", "content": [{"type": "input_text", "text": "a"}]}]}),
        );
        assert_eq!(r.messages().unwrap()[0].1, "a");
        assert!(request(json!({"input": []})).messages().is_err());
        assert!(request(json!({"input": "x", "stream": true}))
            .messages()
            .is_err());
        assert!(
            request(json!({"input": "x", "previous_response_id": "resp_1"}))
                .messages()
                .is_err()
        );
    }
}
