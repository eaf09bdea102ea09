//! A model's own tokenizer in the router (`[routing] tokenizers = { "MODEL" = "DIR" }`): DIR
//! holds the model's `tokenizer.json` and `tokenizer_config.json` (and `chat_template.jinja`
//! when the template is kept apart), as on the Hugging Face Hub.
//!
//! A chat is rendered as vLLM renders it through transformers' `apply_chat_template`: Jinja
//! with `trim_blocks` and `lstrip_blocks`, loop controls, Python's string methods, the
//! context `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `tools` and the
//! request's `chat_template_kwargs`, the functions `raise_exception` and `strftime_now`, and a
//! `tojson` that writes what Python's `json.dumps` writes (`", "` and `": "` separators, keys
//! in their order, no ASCII escaping) since the rendered text must be byte for byte the
//! server's. The text is then encoded without special tokens (the template writes them), a
//! completion's prompt with them, as vLLM does. A message's content given as a list of text
//! parts is joined with newlines (vLLM's "string" content format). A request that brings its
//! own `chat_template` is not rendered here (it is routed on the approximate estimate).

use std::fmt;
use std::path::{Path, PathBuf};

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Value};
use serde_json::value::RawValue;

use super::Options;

/// The most a tokenizer file may hold.
const MAX_TOKENIZER_FILE: u64 = 256 * 1024 * 1024;

pub struct LocalTokenizer {
    dir: PathBuf,
    tokenizer: tokenizers::Tokenizer,
    /// The chat template, compiled under the name "chat"; `None` when the model has none.
    env: Option<Environment<'static>>,
    bos_token: String,
    eos_token: String,
    /// A hash of the files, so that a reload knows whether they changed.
    fingerprint: u64,
}

impl fmt::Debug for LocalTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalTokenizer({})", self.dir.display())
    }
}

impl PartialEq for LocalTokenizer {
    fn eq(&self, other: &Self) -> bool {
        self.dir == other.dir && self.fingerprint == other.fingerprint
    }
}

impl LocalTokenizer {
    /// Loads the tokenizer in `dir`; returns it and the files it read (watched for changes).
    pub fn load(dir: &Path) -> Result<(LocalTokenizer, Vec<PathBuf>), String> {
        let mut files = Vec::new();
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let tokenizer_file = dir.join("tokenizer.json");
        let bytes = crate::config::read_small(&tokenizer_file, MAX_TOKENIZER_FILE)?;
        hasher.update(&bytes);
        let tokenizer = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| format!("{} is not a tokenizer.json: {e}", tokenizer_file.display()))?;
        files.push(tokenizer_file);

        let config_file = dir.join("tokenizer_config.json");
        let config: serde_json::Value = if config_file.exists() {
            let bytes = crate::config::read_small(&config_file, MAX_TOKENIZER_FILE)?;
            hasher.update(&bytes);
            files.push(config_file.clone());
            serde_json::from_slice(&bytes)
                .map_err(|e| format!("{} is not JSON: {e}", config_file.display()))?
        } else {
            serde_json::Value::Null
        };
        let template_file = dir.join("chat_template.jinja");
        let template = if template_file.exists() {
            let bytes = crate::config::read_small(&template_file, MAX_TOKENIZER_FILE)?;
            hasher.update(&bytes);
            files.push(template_file.clone());
            Some(
                String::from_utf8(bytes)
                    .map_err(|_| format!("{} is not UTF-8 text", template_file.display()))?,
            )
        } else {
            chat_template_of(&config)
        };
        let env = match template {
            Some(source) => Some(environment(source).map_err(|e| {
                format!(
                    "the chat template of {} does not compile: {e}",
                    dir.display()
                )
            })?),
            None => None,
        };
        let token = |name: &str| match &config[name] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Object(o) => o
                .get("content")
                .and_then(|c| c.as_str())
                .unwrap_or_default()
                .to_string(),
            _ => String::new(),
        };
        Ok((
            LocalTokenizer {
                dir: dir.to_path_buf(),
                tokenizer,
                env,
                bos_token: token("bos_token"),
                eos_token: token("eos_token"),
                fingerprint: hasher.digest(),
            },
            files,
        ))
    }

    /// The prompt's token ids: a chat's `messages` rendered and encoded, or a completion's
    /// `prompt` (text) encoded.
    pub(crate) fn tokenize(
        &self,
        messages: Option<&[&RawValue]>,
        prompt: Option<&RawValue>,
        options: &Options,
    ) -> Result<Vec<u32>, String> {
        let flag =
            |raw: Option<&RawValue>| raw.and_then(|r| serde_json::from_str::<bool>(r.get()).ok());
        let (text, special) = match (messages, prompt) {
            (Some(messages), _) => {
                if options.chat_template.is_some() {
                    return Err("the request brings its own chat_template".into());
                }
                let text = self.render(messages, options)?;
                (text, flag(options.add_special_tokens).unwrap_or(false))
            }
            (None, Some(prompt)) => {
                if let Ok(ids) = serde_json::from_str::<Vec<u32>>(prompt.get()) {
                    return Ok(ids);
                }
                let text: String = serde_json::from_str(prompt.get())
                    .map_err(|_| "a prompt that is not one text".to_string())?;
                (text, flag(options.add_special_tokens).unwrap_or(true))
            }
            (None, None) => return Err("no prompt".into()),
        };
        self.encode(&text, special)
    }

    /// Encodes text to token ids. (`encode_fast` skips the character offsets routing does not
    /// use. Profiled (bench/tokenize.rs): about half the time is the crate allocating a string
    /// per token, a tenth its pre-tokenizing regex; its API has no ids-only path.)
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, String> {
        self.tokenizer
            .encode_fast(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| e.to_string())
    }

    /// A chat's prompt text, as the server's chat template makes it.
    pub(crate) fn render(
        &self,
        messages: &[&RawValue],
        options: &Options,
    ) -> Result<String, String> {
        let env = self
            .env
            .as_ref()
            .ok_or_else(|| format!("{} has no chat template", self.dir.display()))?;
        let flag = |raw: Option<&RawValue>, default: bool| {
            raw.and_then(|r| serde_json::from_str::<bool>(r.get()).ok())
                .unwrap_or(default)
        };
        let continue_final = flag(options.continue_final_message, false);
        let add_generation_prompt = flag(options.add_generation_prompt, true) && !continue_final;
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| serde_json::from_str::<Value>(m.get()).map(text_content))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("a message is not a JSON object: {e}"))?;
        let tools = match options.tools {
            Some(raw) => serde_json::from_str::<Value>(raw.get()).map_err(|e| e.to_string())?,
            None => Value::from(()),
        };
        let mut context: Vec<(String, Value)> = vec![
            ("messages".into(), Value::from(messages.clone())),
            (
                "add_generation_prompt".into(),
                Value::from(add_generation_prompt),
            ),
            ("bos_token".into(), Value::from(self.bos_token.clone())),
            ("eos_token".into(), Value::from(self.eos_token.clone())),
            ("tools".into(), tools),
        ];
        if let Some(raw) = options.chat_template_kwargs {
            let extra: Value = serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
            if let Ok(keys) = extra.try_iter() {
                for key in keys {
                    if let (Some(name), Ok(value)) = (key.as_str(), extra.get_item(&key)) {
                        context.push((name.to_string(), value));
                    }
                }
            }
        }
        let template = env.get_template("chat").map_err(|e| e.to_string())?;
        let rendered = template
            .render(Value::from_iter(context))
            .map_err(|e| format!("the chat template failed: {e}"))?;
        if !continue_final {
            return Ok(rendered);
        }
        // As transformers: cut after the final message's text, leaving it open.
        let last = messages
            .last()
            .and_then(|m| m.get_attr("content").ok())
            .and_then(|c| c.as_str().map(|s| s.trim().to_string()))
            .unwrap_or_default();
        match rendered.rfind(&last) {
            Some(at) if !last.is_empty() => Ok(rendered[..at + last.len()].to_string()),
            _ => Err(
                "continue_final_message: the final message is not in the rendered prompt".into(),
            ),
        }
    }
}

/// The template in a `tokenizer_config.json`: a string, or a list of named ones (the
/// "default").
fn chat_template_of(config: &serde_json::Value) -> Option<String> {
    match &config["chat_template"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(named) => named
            .iter()
            .find(|t| t["name"] == "default")
            .or_else(|| named.first())
            .and_then(|t| t["template"].as_str())
            .map(str::to_string),
        _ => None,
    }
}

/// A message whose content is a list of text parts, with the parts joined by newlines.
fn text_content(message: Value) -> Value {
    let Ok(content) = message.get_attr("content") else {
        return message;
    };
    if content.kind() != ValueKind::Seq {
        return message;
    }
    let Ok(parts) = content.try_iter() else {
        return message;
    };
    let texts: Option<Vec<String>> = parts
        .map(|p| {
            p.get_attr("text")
                .ok()
                .and_then(|t| t.as_str().map(str::to_string))
        })
        .collect();
    let Some(texts) = texts else {
        return message;
    };
    let Ok(keys) = message.try_iter() else {
        return message;
    };
    Value::from_iter(keys.map(|key| {
        let value = if key.as_str() == Some("content") {
            Value::from(texts.join("\n"))
        } else {
            message.get_item(&key).unwrap_or_default()
        };
        (key, value)
    }))
}

/// The Jinja environment transformers renders chat templates in, with `source` as "chat".
fn environment(source: String) -> Result<Environment<'static>, Error> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_filter("tojson", tojson);
    env.add_function(
        "raise_exception",
        |message: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    env.add_function("strftime_now", |format: String| strftime_now(&format));
    env.add_template_owned("chat", source)?;
    Ok(env)
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let mut out = String::new();
    py_json(&value, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn py_json(
    value: &Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> Result<(), Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * depth));
        }
    };
    let separator = if indent.is_some() { "," } else { ", " };
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            let text = value.to_string();
            // Python writes a float with a fractional part ("1.0").
            let is_float = value.as_i64().is_none() && !text.contains(['.', 'e', 'E', 'n', 'i']);
            out.push_str(&text);
            if is_float {
                out.push_str(".0");
            }
        }
        ValueKind::String => py_string(value.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, depth + 1);
                py_json(item, indent, depth + 1, out)?;
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = value.try_iter()?.collect();
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, depth + 1);
                py_string(&key.to_string(), out);
                out.push_str(": ");
                py_json(&value.get_item(key)?, indent, depth + 1, out)?;
            }
            if !keys.is_empty() {
                newline(out, depth);
            }
            out.push('}');
        }
        _ => py_string(&value.to_string(), out),
    }
    Ok(())
}

/// A JSON string as Python writes it with `ensure_ascii=False`.
fn py_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// transformers' `strftime_now`: the current UTC time in a `strftime` format (the fields chat
/// templates use: %d %m %Y %y %b %B %H %M %S %%).
fn strftime_now(format: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    strftime(format, secs)
}

fn strftime(format: &str, secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let days = secs.div_euclid(86_400);
    let rest = secs.rem_euclid(86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('b') => out.push_str(&month_name[..3]),
            Some('B') => out.push_str(month_name),
            Some('H') => out.push_str(&format!("{:02}", rest / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rest / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", rest % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tokenizer");

    /// Every case of tests/fixtures/tokenizer: the text and token ids transformers'
    /// `apply_chat_template` and the Python tokenizer gave (make.py) are what this gives.
    #[test]
    fn renders_and_encodes_as_transformers_does() {
        let (local, files) = LocalTokenizer::load(Path::new(FIXTURE)).unwrap();
        assert_eq!(
            files.len(),
            2,
            "tokenizer.json and tokenizer_config.json: {files:?}"
        );
        let read = |name: &str| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(Path::new(FIXTURE).join(name)).unwrap())
                .unwrap()
        };
        // The requests as written (a JSON value would sort their keys).
        #[derive(serde::Deserialize)]
        struct Case {
            name: String,
            request: Box<RawValue>,
        }
        let text = std::fs::read_to_string(Path::new(FIXTURE).join("cases.json")).unwrap();
        let cases: Vec<Case> = serde_json::from_str(&text).unwrap();
        let expected = read("expected.json");
        assert_eq!(cases.len(), 8);
        for (case, want) in cases.iter().zip(expected.as_array().unwrap()) {
            let name = &case.name;
            let request: super::super::Request = serde_json::from_str(case.request.get()).unwrap();
            if let Some(messages) = &request.messages {
                let text = local.render(messages, &request.options()).unwrap();
                assert_eq!(text, want["text"].as_str().unwrap(), "{name}");
            }
            let ids = local
                .tokenize(
                    request.messages.as_deref(),
                    request.prompt,
                    &request.options(),
                )
                .unwrap();
            let want_ids: Vec<u32> = serde_json::from_value(want["ids"].clone()).unwrap();
            assert_eq!(ids, want_ids, "{name}");
        }
    }

    #[test]
    fn a_request_bringing_its_own_template_or_an_unknown_role_is_not_tokenized_here() {
        let (local, _) = LocalTokenizer::load(Path::new(FIXTURE)).unwrap();
        let own: super::super::Request = serde_json::from_str(
            r#"{"chat_template":"{{ messages }}","messages":[{"role":"user","content":"x"}]}"#,
        )
        .unwrap();
        assert!(local
            .tokenize(own.messages.as_deref(), None, &own.options())
            .is_err());
        let odd: super::super::Request =
            serde_json::from_str(r#"{"messages":[{"role":"wizard","content":"x"}]}"#).unwrap();
        let why = local
            .tokenize(odd.messages.as_deref(), None, &odd.options())
            .unwrap_err();
        assert!(why.contains("Unknown role: wizard"), "{why}");
        let missing = LocalTokenizer::load(Path::new("/nonexistent")).unwrap_err();
        assert!(missing.contains("/nonexistent/tokenizer.json"), "{missing}");
    }

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        let value: Value = serde_json::from_str(
            r#"{"name":"get_weather","parameters":{"b":1,"a":[1.5,"é\n"]},"x":null,"t":true}"#,
        )
        .unwrap();
        let mut out = String::new();
        py_json(&value, None, 0, &mut out).unwrap();
        assert_eq!(
            out,
            r#"{"name": "get_weather", "parameters": {"b": 1, "a": [1.5, "é\n"]}, "x": null, "t": true}"#
        );
        let mut out = String::new();
        py_json(
            &serde_json::from_str::<Value>(r#"{"a":[1,2],"b":{}}"#).unwrap(),
            Some(2),
            0,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {}\n}");
    }

    #[test]
    fn strftime_knows_the_calendar() {
        // 2024-02-29 13:05:09 UTC
        assert_eq!(
            strftime("%d %b %Y %H:%M:%S %B %m %y %%", 1_709_211_909),
            "29 Feb 2024 13:05:09 February 02 24 %"
        );
        assert_eq!(strftime("%Y-%m-%d", 0), "1970-01-01");
    }
}
