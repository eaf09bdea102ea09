//! Stream resumption (opt-in, `[config] resume_streams = true`): when a server dies in the
//! middle of a stream, the request goes on another server as a continuation of what the client
//! already has, and the client sees one uninterrupted stream.
//!
//! While a resumable stream is delivered, [`Transcript`] passes its events through whole (a
//! partial event is held back until it is complete, so a break never leaves half an event) and
//! keeps what a continuation needs: the response id, the text so far and how many content
//! events (tokens) it had. [`continuation`] makes the next request: for chat, the messages plus
//! a last assistant message with the text so far, `continue_final_message: true` and
//! `add_generation_prompt: false` (vLLM's way to continue a message); for completions, the
//! prompt followed by the text so far; `max_tokens` lowered by the tokens already sent. The
//! continuation's events are rewritten to carry the first response's id, and its opening role
//! event is dropped.
//!
//! Only `/v1/chat/completions` and `/v1/completions` streams with one choice (`n` 1) and no
//! logprobs are resumed, and not once a tool call has begun; anything else ends with the error
//! event, as without resumption.

use serde_json::{Map, Value};

/// Which API a stream belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Chat,
    Completions,
}

/// Whether a request may be resumed, from its path and body.
pub fn resumable_api(path: &str, body: &[u8]) -> Option<Api> {
    let api = match path {
        "/v1/chat/completions" => Api::Chat,
        "/v1/completions" => Api::Completions,
        _ => return None,
    };
    let request: Map<String, Value> = serde_json::from_slice(body).ok()?;
    let one_choice = request.get("n").is_none_or(|n| n.as_u64() == Some(1));
    let no_logprobs = ["logprobs", "top_logprobs"].iter().all(|k| {
        request
            .get(*k)
            .is_none_or(|v| v.is_null() || v == &Value::Bool(false))
    });
    let prompt_ok = api == Api::Chat || request.get("prompt").is_some_and(Value::is_string);
    (request.get("stream") == Some(&Value::Bool(true)) && one_choice && no_logprobs && prompt_ok)
        .then_some(api)
}

/// The longest event waited for; beyond it the stream is passed through as it is.
const MAX_EVENT: usize = 256 * 1024;

/// What has been delivered of a resumable stream.
pub struct Transcript {
    api: Api,
    /// Bytes of an event not yet complete.
    pending: Vec<u8>,
    /// The first response's id: every event the client gets carries it.
    pub id: Option<String>,
    /// The text delivered so far.
    pub text: String,
    /// Content events delivered so far (one token each, as vLLM streams them).
    pub tokens: u32,
    /// The stream reached its end (a finish reason, or `[DONE]`).
    pub finished: bool,
    /// Something that cannot be continued was delivered (a tool call).
    stuck: bool,
    /// Events of a continuation: rewrite the id, drop the opening role event.
    continuing: bool,
    /// Tokens delivered before the current continuation began (its prompt holds them).
    tokens_before: u32,
}

impl Transcript {
    pub fn new(api: Api) -> Transcript {
        Transcript {
            api,
            pending: Vec::new(),
            id: None,
            text: String::new(),
            tokens: 0,
            finished: false,
            stuck: false,
            continuing: false,
            tokens_before: 0,
        }
    }

    /// Whether a break now could be resumed.
    pub fn can_resume(&self) -> bool {
        !self.finished && !self.stuck && self.id.is_some()
    }

    /// The next events come from a continuation.
    pub fn continue_on_another_server(&mut self) {
        self.pending.clear();
        self.continuing = true;
        self.tokens_before = self.tokens;
    }

    /// Takes bytes from the server; returns the complete events to send to the client.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(self.pending.len());
        while let Some(end) = find(&self.pending, b"\n\n") {
            let event: Vec<u8> = self.pending.drain(..end + 2).collect();
            if let Some(event) = self.event(&event) {
                out.extend_from_slice(&event);
            }
        }
        if self.pending.len() > MAX_EVENT {
            // Not events as vLLM writes them: pass the bytes on as they are, and give up
            // resuming this stream rather than hold its answer back.
            self.stuck = true;
            out.append(&mut self.pending);
        }
        out
    }

    /// One event: noted, and returned as the client should get it (or dropped).
    fn event(&mut self, event: &[u8]) -> Option<Vec<u8>> {
        let Some(data) = event.strip_prefix(b"data: ") else {
            return Some(event.to_vec());
        };
        let data = &data[..data.len() - 2];
        if data == b"[DONE]" {
            self.finished = true;
            return Some(event.to_vec());
        }
        let Ok(mut value) = serde_json::from_slice::<Value>(data) else {
            return Some(event.to_vec());
        };
        let choice = value.get("choices").and_then(|c| c.get(0)).cloned();
        if self.continuing {
            if let (Some(id), Some(object)) = (&self.id, value.as_object_mut()) {
                object.insert("id".into(), Value::String(id.clone()));
            }
            if let Some(usage) = value.get_mut("usage").and_then(Value::as_object_mut) {
                // The continuation's prompt holds the tokens already sent: count them as output.
                let sent = u64::from(self.tokens_before);
                if let Some(Value::Number(n)) = usage.get("completion_tokens").cloned() {
                    usage.insert(
                        "completion_tokens".into(),
                        (n.as_u64().unwrap_or(0) + sent).into(),
                    );
                }
                if let Some(Value::Number(n)) = usage.get("prompt_tokens").cloned() {
                    usage.insert(
                        "prompt_tokens".into(),
                        n.as_u64().unwrap_or(0).saturating_sub(sent).into(),
                    );
                }
            }
        } else if self.id.is_none() {
            self.id = value.get("id").and_then(Value::as_str).map(str::to_string);
        }
        let mut content = None;
        if let Some(choice) = &choice {
            if !choice.get("finish_reason").is_none_or(Value::is_null) {
                self.finished = true;
            }
            match self.api {
                Api::Chat => {
                    let delta = choice.get("delta");
                    if delta.and_then(|d| d.get("tool_calls")).is_some() {
                        self.stuck = true;
                    }
                    let opening = delta.and_then(|d| d.get("role")).is_some();
                    if opening && self.continuing {
                        // The continuation's own opening: the client had one already.
                        return None;
                    }
                    content = delta.and_then(|d| d.get("content")).and_then(Value::as_str);
                }
                Api::Completions => content = choice.get("text").and_then(Value::as_str),
            }
        }
        if let Some(text) = content.filter(|t| !t.is_empty()) {
            self.text.push_str(text);
            self.tokens += 1;
        }
        if self.continuing {
            let mut out = b"data: ".to_vec();
            out.extend_from_slice(serde_json::to_string(&value).ok()?.as_bytes());
            out.extend_from_slice(b"\n\n");
            return Some(out);
        }
        Some(event.to_vec())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// The request that continues `original` (its JSON body) after `delivered`.
pub fn continuation(original: &[u8], api: Api, delivered: &Transcript) -> Option<Vec<u8>> {
    let mut request: Map<String, Value> = serde_json::from_slice(original).ok()?;
    match api {
        Api::Chat => {
            let messages = request.get_mut("messages")?.as_array_mut()?;
            messages.push(serde_json::json!({"role": "assistant", "content": delivered.text}));
            request.insert("continue_final_message".into(), Value::Bool(true));
            request.insert("add_generation_prompt".into(), Value::Bool(false));
        }
        Api::Completions => {
            let prompt = request.get("prompt")?.as_str()?.to_string() + &delivered.text;
            request.insert("prompt".into(), Value::String(prompt));
        }
    }
    for key in ["max_tokens", "max_completion_tokens"] {
        if let Some(n) = request.get(key).and_then(Value::as_u64) {
            let left = n.saturating_sub(u64::from(delivered.tokens)).max(1);
            request.insert(key.into(), left.into());
        }
    }
    serde_json::to_vec(&request).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str) -> String {
        format!("data: {json}\n\n")
    }

    #[test]
    fn only_single_choice_streams_without_logprobs_resume() {
        let path = "/v1/chat/completions";
        assert_eq!(
            resumable_api(path, br#"{"stream":true,"messages":[]}"#),
            Some(Api::Chat)
        );
        assert_eq!(
            resumable_api(path, br#"{"stream":false,"messages":[]}"#),
            None
        );
        assert_eq!(resumable_api(path, br#"{"stream":true,"n":2}"#), None);
        assert_eq!(
            resumable_api(path, br#"{"stream":true,"logprobs":true}"#),
            None
        );
        assert_eq!(resumable_api("/v1/embeddings", br#"{"stream":true}"#), None);
        let c = "/v1/completions";
        assert_eq!(
            resumable_api(c, br#"{"stream":true,"prompt":"a"}"#),
            Some(Api::Completions)
        );
        assert_eq!(resumable_api(c, br#"{"stream":true,"prompt":[1,2]}"#), None);
    }

    #[test]
    fn partial_events_are_held_back_and_the_text_is_kept() {
        let mut t = Transcript::new(Api::Chat);
        let role = event(
            r#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
        );
        let hello =
            event(r#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":" hello"}}]}"#);
        let all = role.clone() + &hello;
        let (first, second) = all.as_bytes().split_at(role.len() + 10);
        assert_eq!(t.feed(first), role.as_bytes(), "the partial event waits");
        assert_eq!(t.feed(second), hello.as_bytes());
        assert_eq!(
            (t.id.as_deref(), t.text.as_str(), t.tokens),
            (Some("chatcmpl-1"), " hello", 1)
        );
        assert!(t.can_resume());
    }

    #[test]
    fn a_continuation_carries_the_first_id_and_no_second_opening() {
        let mut t = Transcript::new(Api::Chat);
        t.feed(
            event(r#"{"id":"chatcmpl-1","choices":[{"delta":{"role":"assistant","content":""}}]}"#)
                .as_bytes(),
        );
        t.feed(event(r#"{"id":"chatcmpl-1","choices":[{"delta":{"content":" a"}}]}"#).as_bytes());
        let body = continuation(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"stream":true}"#,
            Api::Chat,
            &t,
        )
        .unwrap();
        let next: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            next["messages"][1],
            serde_json::json!({"role": "assistant", "content": " a"})
        );
        assert_eq!(next["continue_final_message"], true);
        assert_eq!(next["add_generation_prompt"], false);
        assert_eq!(next["max_tokens"], 4);

        t.continue_on_another_server();
        let opening = t.feed(
            event(r#"{"id":"chatcmpl-2","choices":[{"delta":{"role":"assistant","content":""}}]}"#)
                .as_bytes(),
        );
        assert!(opening.is_empty(), "dropped");
        let more = t.feed(event(r#"{"id":"chatcmpl-2","choices":[{"delta":{"content":" b"},"finish_reason":"length"}]}"#).as_bytes());
        let more: Value = serde_json::from_slice(&more[6..more.len() - 2]).unwrap();
        assert_eq!(more["id"], "chatcmpl-1");
        assert_eq!((t.text.as_str(), t.tokens, t.finished), (" a b", 2, true));
    }

    #[test]
    fn the_continuations_usage_counts_the_tokens_sent_before_it() {
        let mut t = Transcript::new(Api::Completions);
        for word in [" a", " b", " c"] {
            t.feed(
                event(&format!(
                    r#"{{"id":"cmpl-1","choices":[{{"text":"{word}"}}]}}"#
                ))
                .as_bytes(),
            );
        }
        t.continue_on_another_server();
        t.feed(
            event(r#"{"id":"cmpl-2","choices":[{"text":" d","finish_reason":"length"}]}"#)
                .as_bytes(),
        );
        let usage = t.feed(
            event(r#"{"id":"cmpl-2","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":1,"total_tokens":11}}"#)
                .as_bytes(),
        );
        let usage: Value = serde_json::from_slice(&usage[6..usage.len() - 2]).unwrap();
        assert_eq!(usage["usage"]["completion_tokens"], 4, "3 before + 1 after");
        assert_eq!(usage["usage"]["prompt_tokens"], 7);
        assert_eq!(usage["id"], "cmpl-1");
    }

    #[test]
    fn bytes_that_are_not_events_are_not_held_back_forever() {
        let mut t = Transcript::new(Api::Chat);
        let blob = vec![b'x'; MAX_EVENT + 1];
        assert_eq!(t.feed(&blob).len(), MAX_EVENT + 1);
        assert!(!t.can_resume());
    }

    #[test]
    fn completions_continue_from_the_prompt_plus_the_text() {
        let mut t = Transcript::new(Api::Completions);
        t.feed(event(r#"{"id":"cmpl-1","choices":[{"text":" once"}]}"#).as_bytes());
        let body = continuation(
            br#"{"prompt":"Tell:","max_tokens":3,"stream":true}"#,
            Api::Completions,
            &t,
        )
        .unwrap();
        let next: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (next["prompt"].as_str(), next["max_tokens"].as_u64()),
            (Some("Tell: once"), Some(2))
        );
    }
}
