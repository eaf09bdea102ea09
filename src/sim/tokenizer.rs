//! A deterministic stand-in for a tokenizer: about four bytes of text per token.
//!
//! Only two properties matter to the simulation: token counts grow with text length roughly as
//! a real BPE tokenizer's do, and identical text prefixes give identical token prefixes (so the
//! prefix cache behaves as it does on a real server).

use std::hash::{DefaultHasher, Hash, Hasher};

/// Bytes of text per token, roughly what BPE tokenizers give for English.
const BYTES_PER_TOKEN: usize = 4;

/// Splits text into tokens of up to four bytes, never splitting a character.
pub fn tokenize(text: &str) -> Vec<u32> {
    let mut tokens = Vec::with_capacity(text.len() / BYTES_PER_TOKEN + 1);
    let mut start = 0;
    for (index, ch) in text.char_indices() {
        let end = index + ch.len_utf8();
        if end - start >= BYTES_PER_TOKEN {
            tokens.push(token_id(&text.as_bytes()[start..end]));
            start = end;
        }
    }
    if start < text.len() {
        tokens.push(token_id(&text.as_bytes()[start..]));
    }
    tokens
}

fn token_id(piece: &[u8]) -> u32 {
    let mut hasher = DefaultHasher::new();
    piece.hash(&mut hasher);
    // Keep ids in a realistic vocabulary range.
    (hasher.finish() % 150_000) as u32
}

/// The text a chat template would produce: role markers around each message, then the start of
/// the assistant's turn. Earlier turns are a prefix of later ones, as in real templates.
pub fn chat_prompt<'a>(messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    chat_prompt_with(messages, true, false)
}

/// `chat_prompt` with vLLM's two template switches: `add_generation_prompt` (start the
/// assistant's turn at the end) and `continue_final_message` (leave the last message, an
/// assistant's, open so that generation continues it).
pub fn chat_prompt_with<'a>(
    messages: impl IntoIterator<Item = (&'a str, &'a str)>,
    add_generation_prompt: bool,
    continue_final_message: bool,
) -> String {
    let messages: Vec<(&str, &str)> = messages.into_iter().collect();
    let mut prompt = String::new();
    for (i, (role, content)) in messages.iter().enumerate() {
        prompt.push_str("<|im_start|>");
        prompt.push_str(role);
        prompt.push('\n');
        prompt.push_str(content);
        if !(continue_final_message && i + 1 == messages.len()) {
            prompt.push_str("<|im_end|>\n");
        }
    }
    if add_generation_prompt && !continue_final_message {
        prompt.push_str("<|im_start|>assistant\n");
    }
    prompt
}

/// Short words, each standing for one generated token.
const WORDS: &[&str] = &[
    " the", " a", " of", " to", " and", " in", " is", " it", " on", " GPU", " KV", " we", " by",
    " as", " at", " an", " or", " be", " so", " if", " no", " up", " do", " go", " my", " all",
    " can", " one", " new", " way", " per", " use", " run", " set", " key", " map", " row", " bit",
    " top", " log", " cat", " sun", " sky", " sea", " day", " end", " yes", " box", " hot", " ten",
    ".", ",", " fast", " load", " token", " cache", " batch", " queue", " model", " serve",
    " route", " prefix", " stream", " server",
];

/// The text of output token `index` (0-based) of a request: deterministic in the simulator's
/// seed, the prompt, and the position.
pub fn output_token(seed: u64, prompt_key: u64, index: u32) -> &'static str {
    let mut x =
        seed ^ prompt_key.rotate_left(17) ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x = splitmix64(x);
    WORDS[(x % WORDS.len() as u64) as usize]
}

/// A key for "the same prompt", to make outputs repeatable per prompt.
pub fn prompt_key(tokens: &[u32]) -> u64 {
    let mut hasher = DefaultHasher::new();
    tokens.hash(&mut hasher);
    hasher.finish()
}

/// A deterministic embedding of unit length for a token sequence.
pub fn embedding(seed: u64, tokens: &[u32], dim: usize) -> Vec<f32> {
    let key = prompt_key(tokens) ^ seed;
    let mut values: Vec<f32> = (0..dim as u64)
        .map(|i| {
            let x = splitmix64(key ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03));
            // Uniform in [-1, 1).
            (x >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0
        })
        .collect();
    let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        values.iter_mut().for_each(|v| *v /= norm);
    }
    values
}

/// SplitMix64: a tiny, well-mixed hash of a 64-bit value (for deterministic pseudo-randomness).
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn about_four_bytes_per_token_without_splitting_characters() {
        assert_eq!(tokenize("").len(), 0);
        assert_eq!(tokenize("abcd").len(), 1);
        assert_eq!(tokenize("abcdefghi").len(), 3);
        assert_eq!(tokenize(&"x".repeat(4000)).len(), 1000);
        // Three-byte characters: two per token (six bytes), never half of one.
        assert_eq!(tokenize("東京都庁").len(), 2);
    }

    #[test]
    fn shared_text_prefix_gives_shared_token_prefix() {
        let a = tokenize(&chat_prompt([("system", "You are terse."), ("user", "Hi")]));
        let b = tokenize(&chat_prompt([
            ("system", "You are terse."),
            ("user", "Hello there"),
        ]));
        let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        assert!(common >= 8, "only {common} tokens in common");
    }

    #[test]
    fn outputs_and_embeddings_are_deterministic() {
        assert_eq!(output_token(1, 2, 3), output_token(1, 2, 3));
        let e = embedding(7, &[1, 2, 3], 16);
        assert_eq!(e, embedding(7, &[1, 2, 3], 16));
        let norm: f32 = e.iter().map(|v| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}
