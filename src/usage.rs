//! Token counts, read from a response as it streams past: vLLM's non-streamed answers end
//! with `"usage":{"prompt_tokens":N,…,"completion_tokens":M}`, and a stream carries the same
//! in its last chunk when the client asked for `stream_options.include_usage` (in every chunk
//! with `continuous_usage_stats`). The router does not buffer or parse the answer for them: it
//! searches each chunk for the two keys, and the last value seen wins.
//!
//! The Responses API names them `input_tokens` and `output_tokens` (in its answer, and in the
//! `response.completed` event that ends its stream); a scanner made for `/v1/responses` looks
//! for those instead.
//!
//! A key found this way is a real key, never text inside a string: inside a JSON string a
//! quote is escaped (`\"`), so `"prompt_tokens":` cannot match there.

use std::sync::LazyLock;

use memchr::memmem::Finder;

/// The keys, built once. (A forward search, vectorised, taking the last match, is several
/// times cheaper than a search from the end; a chunk holds one usage object at most.)
static PROMPT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"prompt_tokens\":"));
static COMPLETION: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"completion_tokens\":"));
static INPUT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"input_tokens\":"));
static OUTPUT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"output_tokens\":"));

/// Prompt and completion tokens, when the response told them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

/// Enough of the previous chunk to find a key and its number split across two chunks.
const CARRY: usize = 48;

/// Reads [`Usage`] out of a response body, chunk by chunk.
pub struct UsageScanner {
    /// The stream's last bytes before the current chunk, and how many are valid.
    carry: [u8; CARRY],
    carried: usize,
    /// The keys of the prompt's and the answer's counts.
    keys: [&'static LazyLock<Finder<'static>>; 2],
    pub usage: Usage,
}

impl Default for UsageScanner {
    fn default() -> Self {
        UsageScanner {
            carry: [0; CARRY],
            carried: 0,
            keys: [&PROMPT, &COMPLETION],
            usage: Usage::default(),
        }
    }
}

impl UsageScanner {
    /// A scanner for the answer to a request for `path`.
    pub fn for_path(path: &str) -> UsageScanner {
        let mut scanner = UsageScanner::default();
        if path == "/v1/responses" {
            scanner.keys = [&INPUT, &OUTPUT];
        }
        scanner
    }

    /// Looks at the next chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.carried > 0 {
            // A key (or its number) that straddles the boundary: look at the seam.
            let mut seam = [0u8; 2 * CARRY];
            let head = chunk.len().min(CARRY);
            seam[..self.carried].copy_from_slice(&self.carry[..self.carried]);
            seam[self.carried..self.carried + head].copy_from_slice(&chunk[..head]);
            self.scan(&seam[..self.carried + head], true);
        }
        self.scan(chunk, false);
        // Keep the stream's last CARRY bytes (across small chunks, too).
        if chunk.len() >= CARRY {
            self.carry.copy_from_slice(&chunk[chunk.len() - CARRY..]);
            self.carried = CARRY;
        } else {
            let old = self.carried.min(CARRY - chunk.len());
            self.carry.copy_within(self.carried - old..self.carried, 0);
            self.carry[old..old + chunk.len()].copy_from_slice(chunk);
            self.carried = old + chunk.len();
        }
    }

    fn scan(&mut self, bytes: &[u8], seam: bool) {
        if let Some(n) = last_number(self.keys[0], bytes, seam) {
            self.usage.prompt_tokens = Some(n);
        }
        if let Some(n) = last_number(self.keys[1], bytes, seam) {
            self.usage.completion_tokens = Some(n);
        }
    }
}

/// The number after the last occurrence of `key` in `bytes`, if it is complete there. In a
/// seam, a number that runs to the end of the seam may be cut off: it is left to the chunk.
fn last_number(key: &Finder<'_>, bytes: &[u8], seam: bool) -> Option<u64> {
    let at = key.find_iter(bytes).last()? + key.needle().len();
    let rest = &bytes[at..];
    let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    let digits = rest[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 || (seam && start + digits == rest.len()) {
        return None;
    }
    // Within 20 digits, or it is not a token count.
    std::str::from_utf8(&rest[start..start + digits])
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> Usage {
        let mut scanner = UsageScanner::default();
        for chunk in chunks {
            scanner.feed(chunk);
        }
        scanner.usage
    }

    #[test]
    fn the_responses_api_names_them_otherwise() {
        let completed = b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":9,\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":4,\"total_tokens\":13}}}\n\n";
        let mut scanner = UsageScanner::for_path("/v1/responses");
        scanner.feed(completed);
        assert_eq!(
            scanner.usage,
            Usage {
                prompt_tokens: Some(9),
                completion_tokens: Some(4)
            }
        );
        let mut chat = UsageScanner::for_path("/v1/chat/completions");
        chat.feed(completed);
        assert_eq!(chat.usage, Usage::default());
    }

    #[test]
    fn a_whole_answer() {
        let body = br#"{"id":"x","choices":[{"text":"hi"}],"usage":{"prompt_tokens":12,"total_tokens":15,"completion_tokens":3}}"#;
        assert_eq!(
            scan(&[body]),
            Usage {
                prompt_tokens: Some(12),
                completion_tokens: Some(3)
            }
        );
    }

    #[test]
    fn split_anywhere_and_the_last_value_wins() {
        let body = b"data: {\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}\n\ndata: {\"usage\":{\"prompt_tokens\": 5,\"completion_tokens\":123456}}\n\ndata: [DONE]\n\n";
        for split in 1..body.len() {
            let (a, b) = body.split_at(split);
            assert_eq!(
                scan(&[a, b]),
                Usage {
                    prompt_tokens: Some(5),
                    completion_tokens: Some(123456)
                },
                "split at {split}"
            );
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(scan(&bytes).completion_tokens, Some(123456));
    }

    #[test]
    fn text_that_mentions_the_keys_is_not_usage() {
        let body = br#"{"choices":[{"text":"say \"prompt_tokens\":99"}]}"#;
        assert_eq!(scan(&[body]), Usage::default());
        assert_eq!(scan(&[b"\"prompt_tokens\":null"]), Usage::default());
    }
}
