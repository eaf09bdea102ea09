//! Log-probabilities of the sim's tokens (`logprobs`, `top_logprobs`), in vLLM's shapes.
//!
//! The numbers are made up but deterministic, and ordered the way a real model's are: the
//! token chosen is the most likely one, each alternative less likely than the one before.

use serde_json::{json, Value};

use super::tokenizer::{output_token, splitmix64};
use crate::openai::ApiError;

/// Most alternatives per token a request may ask for (vLLM's default `--max-logprobs`).
pub const MAX_TOP: u32 = 20;

/// What a request asked for: log-probabilities, with `top` alternatives per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub top: u32,
}

impl Wanted {
    /// A chat request's `logprobs` and `top_logprobs`.
    pub fn chat(logprobs: Option<bool>, top: Option<u32>) -> Result<Option<Wanted>, ApiError> {
        match (logprobs.unwrap_or(false), top) {
            (_, Some(top)) if top > MAX_TOP => Err(too_many("top_logprobs", top)),
            (false, Some(top)) if top > 0 => Err(ApiError::bad_request(
                "top_logprobs is only allowed when logprobs is true",
            )
            .with_param("top_logprobs")),
            (false, _) => Ok(None),
            (true, top) => Ok(Some(Wanted {
                top: top.unwrap_or(0),
            })),
        }
    }

    /// A completion request's `logprobs` (the number of alternatives).
    pub fn completion(logprobs: Option<u32>) -> Result<Option<Wanted>, ApiError> {
        match logprobs {
            Some(top) if top > MAX_TOP => Err(too_many("logprobs", top)),
            Some(top) => Ok(Some(Wanted { top })),
            None => Ok(None),
        }
    }
}

fn too_many(param: &str, top: u32) -> ApiError {
    ApiError::bad_request(format!("{param} must be at most {MAX_TOP}, got {top}")).with_param(param)
}

/// The log-probability of the `index`-th token of a choice, in (-2, 0].
fn logprob(seed: u64, key: u64, index: u32) -> f64 {
    -((splitmix64(seed ^ key ^ u64::from(index)) % 2000) as f64) / 1000.0
}

/// The `top` most likely tokens at `index`, most likely first: the chosen one, then others.
fn alternatives(
    seed: u64,
    key: u64,
    index: u32,
    chosen: &'static str,
    top: u32,
) -> Vec<(&'static str, f64)> {
    let first = logprob(seed, key, index);
    let mut out = vec![(chosen, first)];
    let mut salt = 1u64;
    while out.len() < top as usize && salt <= 64 {
        let token = output_token(
            seed,
            key.wrapping_add(salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            index,
        );
        if !out.iter().any(|(t, _)| *t == token) {
            out.push((token, first - 0.5 * out.len() as f64));
        }
        salt += 1;
    }
    out.truncate(top.max(1) as usize);
    out
}

/// One token's entry in a chat choice's `logprobs.content`.
pub fn chat_entry(seed: u64, key: u64, index: u32, token: &'static str, wanted: Wanted) -> Value {
    let top = alternatives(seed, key, index, token, wanted.top.max(1));
    let entry = |(t, lp): &(&str, f64)| json!({"token": t, "logprob": lp, "bytes": t.as_bytes()});
    let mut value = entry(&top[0]);
    value["top_logprobs"] = match wanted.top {
        0 => json!([]),
        _ => top.iter().map(entry).collect(),
    };
    value
}

/// A chat choice's `logprobs` for its tokens (`tokens[i]` is token `i + 1`).
pub fn chat(seed: u64, key: u64, tokens: &[&'static str], wanted: Wanted) -> Value {
    let content: Vec<Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| chat_entry(seed, key, i as u32 + 1, t, wanted))
        .collect();
    json!({ "content": content })
}

/// A completion choice's `logprobs`, starting at `offset` characters into the text.
pub fn completion(
    seed: u64,
    key: u64,
    first_index: u32,
    tokens: &[&'static str],
    offset: usize,
    wanted: Wanted,
) -> Value {
    let mut text_offset = Vec::with_capacity(tokens.len());
    let mut token_logprobs = Vec::with_capacity(tokens.len());
    let mut top_logprobs = Vec::with_capacity(tokens.len());
    let mut at = offset;
    for (i, token) in tokens.iter().enumerate() {
        let index = first_index + i as u32;
        let top = alternatives(seed, key, index, token, wanted.top.max(1));
        text_offset.push(at);
        at += token.len();
        token_logprobs.push(top[0].1);
        let shown = &top[..(wanted.top as usize).min(top.len())];
        top_logprobs.push(
            shown
                .iter()
                .map(|(t, lp)| (t.to_string(), json!(lp)))
                .collect::<serde_json::Map<_, _>>(),
        );
    }
    json!({
        "text_offset": text_offset,
        "token_logprobs": token_logprobs,
        "tokens": tokens,
        "top_logprobs": top_logprobs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chosen_token_is_the_most_likely_and_alternatives_differ() {
        let top = alternatives(1, 2, 3, "hello", 5);
        assert_eq!(top[0].0, "hello");
        assert!(top.windows(2).all(|w| w[0].1 > w[1].1));
        let mut names: Vec<&str> = top.iter().map(|t| t.0).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), top.len());
        assert!(top.iter().all(|t| t.1 <= 0.0));
    }

    #[test]
    fn requests_are_checked_like_vllm() {
        assert_eq!(Wanted::chat(None, None).unwrap(), None);
        assert_eq!(
            Wanted::chat(Some(true), None).unwrap(),
            Some(Wanted { top: 0 })
        );
        assert!(Wanted::chat(Some(false), Some(2)).is_err());
        assert!(Wanted::chat(Some(true), Some(21)).is_err());
        assert_eq!(
            Wanted::completion(Some(3)).unwrap(),
            Some(Wanted { top: 3 })
        );
    }

    #[test]
    fn shapes() {
        let chat = chat(0, 1, &["a", "b"], Wanted { top: 2 });
        assert_eq!(chat["content"].as_array().unwrap().len(), 2);
        assert_eq!(
            chat["content"][0]["top_logprobs"].as_array().unwrap().len(),
            2
        );
        assert_eq!(chat["content"][1]["token"], "b");
        let c = completion(0, 1, 1, &["ab", "c"], 0, Wanted { top: 1 });
        assert_eq!(c["text_offset"], json!([0, 2]));
        assert_eq!(c["tokens"], json!(["ab", "c"]));
        assert_eq!(c["top_logprobs"][1].as_object().unwrap().len(), 1);
    }
}
