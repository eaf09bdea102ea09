//! The Responses API (`POST /v1/responses`), as vLLM serves it: the request's `instructions`
//! and `input` become a chat prompt, and the answer is one `message` output item, whole or
//! streamed as the API's named events (`event: response.output_text.delta` …, ending with
//! `response.completed` and no `[DONE]`). Stored responses (`previous_response_id`) and tools
//! are refused with a clear 400: the sim covers what a router must pass through, not the whole
//! API.

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

/// The response object, finished.
pub fn body(g: &Generated<'_>) -> Value {
    let mut body = in_progress(g);
    body["status"] = json!(if g.cut { "incomplete" } else { "completed" });
    body["incomplete_details"] = match g.cut {
        true => json!({"reason": "max_output_tokens"}),
        false => Value::Null,
    };
    body["output"] = json!([message(g, "completed")]);
    body["usage"] = json!({
        "input_tokens": g.input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": g.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": g.input_tokens + g.output_tokens,
    });
    body
}

fn message(g: &Generated<'_>, status: &str) -> Value {
    json!({
        "id": format!("msg_{}", g.id),
        "content": [text_part(g.text)],
        "role": "assistant",
        "status": status,
        "type": "message",
    })
}

fn text_part(text: &str) -> Value {
    json!({"annotations": [], "text": text, "type": "output_text", "logprobs": null})
}

/// The response object as the stream opens it: no output yet.
fn in_progress(g: &Generated<'_>) -> Value {
    json!({
        "id": format!("resp_{}", g.id),
        "created_at": g.created,
        "incomplete_details": null,
        "instructions": g.instructions,
        "metadata": null,
        "model": g.model,
        "object": "response",
        "output": [],
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
        "status": "in_progress",
        "text": null,
        "truncation": "disabled",
        "usage": null,
        "user": null,
    })
}

/// The events of a streamed response, numbered in order.
#[derive(Default)]
pub struct EventWriter {
    sequence: u64,
}

impl EventWriter {
    fn event(&mut self, out: &mut Vec<u8>, kind: &str, mut fields: Value) {
        fields["type"] = json!(kind);
        fields["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        out.extend_from_slice(format!("event: {kind}\ndata: {fields}\n\n").as_bytes());
    }

    /// What comes before the first text: the response created and in progress, its message
    /// and text part added (empty).
    pub fn opening(&mut self, g: &Generated<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        let response = in_progress(g);
        self.event(&mut out, "response.created", json!({"response": response}));
        self.event(
            &mut out,
            "response.in_progress",
            json!({"response": response}),
        );
        let empty = Generated { text: "", ..*g };
        let mut item = message(&empty, "in_progress");
        item["content"] = json!([]);
        self.event(
            &mut out,
            "response.output_item.added",
            json!({"output_index": 0, "item": item}),
        );
        self.event(
            &mut out,
            "response.content_part.added",
            json!({
                "item_id": format!("msg_{}", g.id), "output_index": 0, "content_index": 0,
                "part": text_part(""),
            }),
        );
        out
    }

    /// One piece of text.
    pub fn delta(&mut self, g: &Generated<'_>, delta: &str) -> Vec<u8> {
        let mut out = Vec::new();
        self.event(
            &mut out,
            "response.output_text.delta",
            json!({
                "item_id": format!("msg_{}", g.id), "output_index": 0, "content_index": 0,
                "delta": delta, "logprobs": [],
            }),
        );
        out
    }

    /// The text, part and message done, and the response completed (`g` whole).
    pub fn closing(&mut self, g: &Generated<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        let item_id = format!("msg_{}", g.id);
        self.event(&mut out, "response.output_text.done", json!({
            "item_id": item_id, "output_index": 0, "content_index": 0, "text": g.text, "logprobs": [],
        }));
        self.event(&mut out, "response.content_part.done", json!({
            "item_id": item_id, "output_index": 0, "content_index": 0, "part": text_part(g.text),
        }));
        self.event(
            &mut out,
            "response.output_item.done",
            json!({"output_index": 0, "item": message(g, "completed")}),
        );
        let kind = if g.cut {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.event(&mut out, kind, json!({"response": body(g)}));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generated(text: &str) -> Generated<'_> {
        Generated {
            id: "r1",
            model: "m",
            created: 7,
            text,
            input_tokens: 3,
            output_tokens: 2,
            cut: false,
            max_output_tokens: None,
            instructions: None,
        }
    }

    #[test]
    fn a_streamed_response_is_named_events_numbered_in_order() {
        let mut events = EventWriter::default();
        let mut out = events.opening(&generated(""));
        out.extend(events.delta(&generated(""), "Hel"));
        out.extend(events.delta(&generated(""), "lo"));
        out.extend(events.closing(&generated("Hello")));
        let text = String::from_utf8(out).unwrap();
        let blocks: Vec<&str> = text.split_terminator("\n\n").collect();
        let kinds: Vec<&str> = blocks
            .iter()
            .map(|b| b.lines().next().unwrap().trim_start_matches("event: "))
            .collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (n, block) in blocks.iter().enumerate() {
            let data: Value =
                serde_json::from_str(block.lines().nth(1).unwrap().trim_start_matches("data: "))
                    .unwrap();
            assert_eq!(data["type"], kinds[n]);
            assert_eq!(data["sequence_number"], n);
        }
        let last: Value = serde_json::from_str(
            blocks[9]
                .lines()
                .nth(1)
                .unwrap()
                .trim_start_matches("data: "),
        )
        .unwrap();
        assert_eq!(last["response"]["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(last["response"]["usage"]["total_tokens"], 5);
        assert!(!text.contains("[DONE]"));
    }

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
            .is_ok());
        assert!(
            request(json!({"input": "x", "previous_response_id": "resp_1"}))
                .messages()
                .is_err()
        );
    }
}
