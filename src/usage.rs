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
            self.scan(&seam[..self.carried + head]);
        }
        self.scan(chunk);
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

    fn scan(&mut self, bytes: &[u8]) {
        if let Some(n) = last_number(self.keys[0], bytes) {
            self.usage.prompt_tokens = Some(n);
        }
        if let Some(n) = last_number(self.keys[1], bytes) {
            self.usage.completion_tokens = Some(n);
        }
    }
}

/// Blanks allowed between a key and its number (vLLM writes none, other servers one).
const MAX_BLANKS: usize = 4;
/// Digits of a count (u64 has 20).
const MAX_DIGITS: usize = 20;

/// The number after the last occurrence of `key` in `bytes` that has one there: at most
/// `MAX_BLANKS` blanks, 1 to `MAX_DIGITS` digits, and the byte after them in `bytes` (a number
/// running to the end of `bytes` may go on in the next chunk). The whole of such a match is at
/// most `CARRY` bytes long, so wherever the stream is split it lies whole in one chunk or in
/// one seam, and the answer does not depend on where the stream was split (an occurrence
/// without a number hides no earlier one).
fn last_number(key: &Finder<'_>, bytes: &[u8]) -> Option<u64> {
    let after = key.needle().len();
    key.find_iter(bytes)
        .filter_map(|at| number_at(&bytes[at + after..]))
        .last()
}

/// The number at the start of `rest` (after blanks), if it is complete there.
fn number_at(rest: &[u8]) -> Option<u64> {
    let start = rest
        .iter()
        .take(MAX_BLANKS + 1)
        .position(|b| !b.is_ascii_whitespace())?;
    let digits = rest[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 || digits > MAX_DIGITS || start + digits == rest.len() {
        return None;
    }
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
    fn a_key_without_a_number_hides_no_earlier_value() {
        // Found by the `sse` fuzz target: split every 3 bytes, the first value was read from
        // its own chunk; whole, the later bare key hid it.
        let body = br#"{"completion_tokens":2,"x":{"completion_tokens":"n/a"}}"#;
        let expected = Usage {
            prompt_tokens: None,
            completion_tokens: Some(2),
        };
        assert_eq!(scan(&[body]), expected);
        for step in 1..body.len() {
            let chunks: Vec<&[u8]> = body.chunks(step).collect();
            assert_eq!(scan(&chunks), expected, "split every {step}");
        }
    }

    #[test]
    fn what_counts_does_not_depend_on_the_split() {
        // Found by the `sse` fuzz target: a number at the very end of the stream (read whole,
        // but missed when its last digit came alone), and 21 digits (read whole as nothing, but
        // split, its first 20 were taken before the 21st came). A number counts once the byte
        // after it has arrived, and has at most 20 digits; JSON always has that byte.
        for body in [
            &br#"{"prompt_tokens":4} {"prompt_tokens":3"#[..],
            &br#"{"prompt_tokens":4} {"prompt_tokens":111111111111111111111}"#[..],
            &br#"{"prompt_tokens":4} {"prompt_tokens":      3}"#[..],
        ] {
            for step in 1..=body.len() {
                let chunks: Vec<&[u8]> = body.chunks(step).collect();
                assert_eq!(scan(&chunks).prompt_tokens, Some(4), "split every {step}");
            }
        }
        // Digits that keep coming are read whole, blanks before them too.
        assert_eq!(
            scan(&[b"\"prompt_tokens\": 1", b"2", b"3}"]).prompt_tokens,
            Some(123)
        );
        assert_eq!(
            scan(&[b"\"prompt_tokens\":18446744073709551615}"]).prompt_tokens,
            Some(u64::MAX)
        );
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
