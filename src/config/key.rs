//! How a config key is declared, once: its kind (what values it takes, with range), its
//! default and its description. Parsing, range checks, error texts, defaults and
//! `check-config`'s listing all come from that one declaration; the keys themselves are in
//! `sections.rs`.

use std::fmt::Display;
use std::time::Duration;

use serde::Deserialize;
use toml::de::{DeValue, ValueDeserializer};
use toml::Spanned;

/// Why a value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// Not even the right TOML type (serde's words: "invalid type: string \"30s\", expected a
    /// number"). Reported with the key as written.
    WrongType(String),
    /// The right type, but not an allowed value. Reported with the key's full path.
    NotAllowed(String),
}

/// What values a key takes.
pub trait Kind {
    type Value;
    fn default_value(&self) -> Self::Value;
    fn read(&self, value: &Spanned<DeValue<'_>>) -> Result<Self::Value, ReadError>;
    /// What is allowed, in words ("a number of seconds from 0.05 to 604800").
    fn allowed(&self) -> String;
    /// A value as `check-config` shows it.
    fn show(&self, value: &Self::Value) -> String;
}

/// A key as `check-config --keys`, the docs test and error messages see it.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub name: &'static str,
    /// The declaration's doc comment, one entry per line.
    pub doc: &'static [&'static str],
    pub default: String,
    pub allowed: String,
}

impl KeyInfo {
    /// The doc comment as one line of text.
    pub fn description(&self) -> String {
        let words: Vec<&str> = self.doc.iter().map(|line| line.trim()).collect();
        words.join(" ")
    }
}

/// A table of declared keys (`[config]`, `[routing]`, one server entry).
pub trait Section: Default {
    /// The table's name in servers.toml, used to qualify keys in messages.
    const NAME: &'static str;
    /// Keys accepted for compatibility that have no effect, and why.
    const IGNORED: &'static [&'static str];
    const IGNORED_WHY: &'static str;
    fn keys() -> Vec<KeyInfo>;
    /// Sets `key` from `value`; `None` if the section has no such key.
    fn set(&mut self, key: &str, value: &Spanned<DeValue<'_>>) -> Option<Result<(), ReadError>>;
    /// Every key with its current value, as `check-config` shows them.
    fn values(&self) -> Vec<(&'static str, String)>;
}

/// Declares a section: the struct (one field per key, documented), its defaults, and the
/// [`Section`] impl that reads it. A key is one line: `name: Type = Kind { … },` under its
/// doc comment, which is also what `check-config` prints for it.
macro_rules! section {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident in $section:literal {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $ty:ty = $kind:expr,
            )*
        }
        $(ignored [$($ignored:literal),* $(,)?] because $why:literal)?
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                use $crate::config::key::Kind as _;
                $name { $( $field: ($kind).default_value(), )* }
            }
        }

        impl $crate::config::key::Section for $name {
            const NAME: &'static str = $section;
            const IGNORED: &'static [&'static str] = &[$($($ignored),*)?];
            const IGNORED_WHY: &'static str = concat!("" $(, $why)?);

            fn keys() -> Vec<$crate::config::key::KeyInfo> {
                use $crate::config::key::Kind as _;
                vec![$(
                    $crate::config::key::KeyInfo {
                        name: stringify!($field),
                        doc: &[$($doc),*],
                        default: ($kind).show(&($kind).default_value()),
                        allowed: ($kind).allowed(),
                    },
                )*]
            }

            fn set(
                &mut self,
                key: &str,
                value: &toml::Spanned<toml::de::DeValue<'_>>,
            ) -> Option<Result<(), $crate::config::key::ReadError>> {
                use $crate::config::key::Kind as _;
                match key {
                    $( stringify!($field) => Some(($kind).read(value).map(|v| self.$field = v)), )*
                    _ => None,
                }
            }

            fn values(&self) -> Vec<(&'static str, String)> {
                use $crate::config::key::Kind as _;
                vec![$( (stringify!($field), ($kind).show(&self.$field)), )*]
            }
        }
    };
}
pub(crate) use section;

/// Reads a value with serde, as the TOML type `T`; serde's message names what was expected.
fn typed<'de, T: Deserialize<'de>>(value: &Spanned<DeValue<'de>>) -> Result<T, ReadError> {
    T::deserialize(ValueDeserializer::from(value.clone())).map_err(|e| {
        ReadError::WrongType(
            e.message()
                .trim_end()
                .replace("expected f64", "expected a number")
                .replace("expected i64", "expected a whole number")
                .replace("expected a string", "expected a string in quotes"),
        )
    })
}

/// The longest setting, in seconds (a week).
pub const MAX_SECONDS: f64 = 604_800.0;

/// A duration written as seconds (fractions allowed).
pub struct Seconds {
    pub default: f64,
    pub min: f64,
}

impl Kind for Seconds {
    type Value = Duration;
    fn default_value(&self) -> Duration {
        Duration::from_secs_f64(self.default)
    }
    fn read(&self, value: &Spanned<DeValue<'_>>) -> Result<Duration, ReadError> {
        let v: f64 = typed(value)?;
        if !(self.min..=MAX_SECONDS).contains(&v) {
            return Err(ReadError::NotAllowed(format!(
                "must be {}, got {v}",
                self.allowed()
            )));
        }
        Ok(Duration::from_secs_f64(v))
    }
    fn allowed(&self) -> String {
        format!("a number of seconds from {} to {MAX_SECONDS}", self.min)
    }
    fn show(&self, value: &Duration) -> String {
        format!("{value:?}")
    }
}

/// A whole number in a range.
pub struct Whole<T> {
    pub default: T,
    pub min: T,
    pub max: T,
}

impl<T> Kind for Whole<T>
where
    T: Copy + Display + Into<i128> + TryFrom<i128>,
{
    type Value = T;
    fn default_value(&self) -> T {
        self.default
    }
    fn read(&self, value: &Spanned<DeValue<'_>>) -> Result<T, ReadError> {
        let v: i64 = typed(value)?;
        let wide = i128::from(v);
        if wide < self.min.into() || wide > self.max.into() {
            return Err(ReadError::NotAllowed(format!(
                "must be {}, got {v}",
                self.allowed()
            )));
        }
        T::try_from(wide).map_err(|_| ReadError::NotAllowed(self.allowed()))
    }
    fn allowed(&self) -> String {
        format!("a whole number from {} to {}", self.min, self.max)
    }
    fn show(&self, value: &T) -> String {
        value.to_string()
    }
}

/// On or off.
pub struct Flag {
    pub default: bool,
}

impl Kind for Flag {
    type Value = bool;
    fn default_value(&self) -> bool {
        self.default
    }
    fn read(&self, value: &Spanned<DeValue<'_>>) -> Result<bool, ReadError> {
        typed(value)
    }
    fn allowed(&self) -> String {
        "true or false".into()
    }
    fn show(&self, value: &bool) -> String {
        value.to_string()
    }
}

/// An optional listening address, `IP:PORT`.
pub struct ListenAddress;

impl Kind for ListenAddress {
    type Value = Option<std::net::SocketAddr>;
    fn default_value(&self) -> Option<std::net::SocketAddr> {
        None
    }
    fn read(&self, value: &Spanned<DeValue<'_>>) -> Result<Self::Value, ReadError> {
        optional_address(value, None, &self.allowed())
    }
    fn allowed(&self) -> String {
        "an IP:PORT to listen on, e.g. \"127.0.0.1:9888\", or \"\" for none".into()
    }
    fn show(&self, value: &Self::Value) -> String {
        value.map_or("none".into(), |a| a.to_string())
    }
}

/// `IP:PORT`, or `""` for none; with a `default_port`, a bare `IP` too.
fn optional_address(
    value: &Spanned<DeValue<'_>>,
    default_port: Option<u16>,
    allowed: &str,
) -> Result<Option<std::net::SocketAddr>, ReadError> {
    let v: String = typed(value)?;
    if v.is_empty() {
        return Ok(None);
    }
    if let (Some(port), Ok(ip)) = (default_port, v.parse::<std::net::IpAddr>()) {
        return Ok(Some(std::net::SocketAddr::new(ip, port)));
    }
    v.parse()
        .map(Some)
        .map_err(|_| ReadError::NotAllowed(format!("must be {allowed}, got {v:?}")))
}

/// An optional DNS server, `IP` or `IP:PORT` (port 53 if none is given).
pub struct DnsServer;

impl Kind for DnsServer {
    type Value = Option<std::net::SocketAddr>;
    fn default_value(&self) -> Option<std::net::SocketAddr> {
        None
    }
    fn read(&self, value: &Spanned<DeValue<'_>>) -> Result<Self::Value, ReadError> {
        optional_address(value, Some(53), &self.allowed())
    }
    fn allowed(&self) -> String {
        "a DNS server's IP or IP:PORT, e.g. \"10.96.0.10\", or \"\" for the system's".into()
    }
    fn show(&self, value: &Self::Value) -> String {
        value.map_or("the system's".into(), |a| a.to_string())
    }
}

/// One of a fixed list of names.
pub struct OneOf {
    pub default: &'static str,
    pub allowed: &'static [&'static str],
}

impl Kind for OneOf {
    type Value = &'static str;
    fn default_value(&self) -> &'static str {
        self.default
    }
    fn read(&self, value: &Spanned<DeValue<'_>>) -> Result<&'static str, ReadError> {
        let v: String = typed(value)?;
        self.allowed
            .iter()
            .find(|name| **name == v)
            .copied()
            .ok_or_else(|| ReadError::NotAllowed(format!("must be {}, got {v:?}", self.allowed())))
    }
    fn allowed(&self) -> String {
        let names: Vec<String> = self.allowed.iter().map(|n| format!("{n:?}")).collect();
        format!("one of {}", names.join(", "))
    }
    fn show(&self, value: &&'static str) -> String {
        value.to_string()
    }
}

/// A secret string (an API key): optional, never shown.
pub struct Secret;

impl Kind for Secret {
    type Value = Option<String>;
    fn default_value(&self) -> Option<String> {
        None
    }
    fn read(&self, value: &Spanned<DeValue<'_>>) -> Result<Option<String>, ReadError> {
        let v: String = typed(value)?;
        // It is sent in a header: visible ASCII only (the value itself is never echoed).
        if !v.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ReadError::NotAllowed(format!("must be {}", self.allowed())));
        }
        Ok(Some(v).filter(|k| !k.is_empty()))
    }
    fn allowed(&self) -> String {
        "a string of visible ASCII characters, no spaces (never shown)".into()
    }
    fn show(&self, value: &Option<String>) -> String {
        if value.is_some() { "set" } else { "none" }.into()
    }
}

/// A number (fractions allowed) in a range.
pub struct Number {
    pub default: f64,
    pub min: f64,
    pub max: f64,
}

impl Kind for Number {
    type Value = f64;
    fn default_value(&self) -> f64 {
        self.default
    }
    fn read(&self, value: &Spanned<DeValue<'_>>) -> Result<f64, ReadError> {
        let v: f64 = typed(value)?;
        if !(self.min..=self.max).contains(&v) {
            return Err(ReadError::NotAllowed(format!(
                "must be {}, got {v}",
                self.allowed()
            )));
        }
        Ok(v)
    }
    fn allowed(&self) -> String {
        format!("a number from {} to {}", self.min, self.max)
    }
    fn show(&self, value: &f64) -> String {
        value.to_string()
    }
}

/// The name of an HTTP request header (case-insensitive; kept in lower case).
pub struct Header {
    pub default: &'static str,
}

impl Kind for Header {
    type Value = String;
    fn default_value(&self) -> String {
        self.default.to_string()
    }
    fn read(&self, value: &Spanned<DeValue<'_>>) -> Result<String, ReadError> {
        let v: String = typed(value)?;
        match http::HeaderName::from_bytes(v.as_bytes()) {
            Ok(name) => Ok(name.as_str().to_string()),
            Err(_) => Err(ReadError::NotAllowed(format!(
                "must be {}, got {v:?}",
                self.allowed()
            ))),
        }
    }
    fn allowed(&self) -> String {
        "an HTTP header name, e.g. \"x-session-id\"".into()
    }
    fn show(&self, value: &String) -> String {
        value.clone()
    }
}

/// A table of model names to policy names, e.g. `{ "llama-70b" = "session" }`.
pub struct ModelPolicies {
    pub allowed: &'static [&'static str],
}

impl Kind for ModelPolicies {
    type Value = Vec<(String, &'static str)>;
    fn default_value(&self) -> Self::Value {
        Vec::new()
    }
    fn read(&self, value: &Spanned<DeValue<'_>>) -> Result<Self::Value, ReadError> {
        let table: std::collections::BTreeMap<String, String> = typed(value)?;
        table
            .into_iter()
            .map(
                |(model, policy)| match self.allowed.iter().find(|name| **name == policy) {
                    Some(name) => Ok((model, *name)),
                    None => Err(ReadError::NotAllowed(format!(
                        "{model:?} = {policy:?}: the policy must be one of {}",
                        self.names()
                    ))),
                },
            )
            .collect()
    }
    fn allowed(&self) -> String {
        format!(
            "a table of model = policy, e.g. {{ \"llama-70b\" = \"session\" }}, each policy one of {}",
            self.names()
        )
    }
    fn show(&self, value: &Self::Value) -> String {
        show_table(value.iter().map(|(m, p)| (m.as_str(), *p)))
    }
}

impl ModelPolicies {
    fn names(&self) -> String {
        let names: Vec<String> = self.allowed.iter().map(|n| format!("{n:?}")).collect();
        names.join(", ")
    }
}

/// A table of model names to values as servers.toml writes it, or "none".
fn show_table<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let pairs: Vec<String> = pairs.map(|(m, v)| format!("{m:?} = {v:?}")).collect();
    if pairs.is_empty() {
        return "none".into();
    }
    format!("{{ {} }}", pairs.join(", "))
}

/// A table of model names to paths, e.g. `{ "llama-70b" = "/models/llama-70b" }`.
pub struct ModelPaths;

impl Kind for ModelPaths {
    type Value = Vec<(String, String)>;
    fn default_value(&self) -> Self::Value {
        Vec::new()
    }
    fn read(&self, value: &Spanned<DeValue<'_>>) -> Result<Self::Value, ReadError> {
        let table: std::collections::BTreeMap<String, String> = typed(value)?;
        Ok(table.into_iter().collect())
    }
    fn allowed(&self) -> String {
        "a table of model = folder, e.g. { \"llama-70b\" = \"/models/llama-70b\" }".into()
    }
    fn show(&self, value: &Self::Value) -> String {
        show_table(value.iter().map(|(m, p)| (m.as_str(), p.as_str())))
    }
}

/// An optional HTTP endpoint of a collector: `http://HOST[:PORT][/PATH]`.
pub struct Endpoint;

impl Kind for Endpoint {
    type Value = Option<String>;
    fn default_value(&self) -> Option<String> {
        None
    }
    fn read(&self, value: &Spanned<DeValue<'_>>) -> Result<Option<String>, ReadError> {
        let v: String = typed(value)?;
        if v.is_empty() {
            return Ok(None);
        }
        let uri: http::Uri = v
            .parse()
            .map_err(|_| ReadError::NotAllowed(format!("must be {}, got {v:?}", self.allowed())))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none_or(str::is_empty) {
            return Err(ReadError::NotAllowed(format!(
                "must be {}, got {v:?}",
                self.allowed()
            )));
        }
        Ok(Some(v.trim_end_matches('/').to_string()))
    }
    fn allowed(&self) -> String {
        "http://HOST[:PORT][/PATH], e.g. \"http://127.0.0.1:4318\", or \"\" for none".into()
    }
    fn show(&self, value: &Option<String>) -> String {
        value.clone().unwrap_or_else(|| "none".into())
    }
}

/// A ZeroMQ TCP endpoint to connect to, `tcp://HOST:PORT` (vLLM's KV cache events), or none.
pub struct ZmqEndpoint;

impl Kind for ZmqEndpoint {
    type Value = Option<String>;
    fn default_value(&self) -> Option<String> {
        None
    }
    fn read(&self, value: &Spanned<DeValue<'_>>) -> Result<Option<String>, ReadError> {
        let v: String = typed(value)?;
        if v.is_empty() {
            return Ok(None);
        }
        let fits = v
            .strip_prefix("tcp://")
            .and_then(|rest| rest.rsplit_once(':'))
            .is_some_and(|(host, port)| {
                !host.is_empty()
                    && host != "*"
                    && !host.contains(['/', ' '])
                    && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
        allowed_if(fits, v, &self.allowed()).map(Some)
    }
    fn allowed(&self) -> String {
        "tcp://HOST:PORT, e.g. \"tcp://10.0.0.5:5557\", or \"\" for none".into()
    }
    fn show(&self, value: &Option<String>) -> String {
        value.clone().unwrap_or_else(|| "none".into())
    }
}

/// `value` if it `fits`, else the error saying what is `allowed`.
fn allowed_if(fits: bool, value: String, allowed: &str) -> Result<String, ReadError> {
    if fits {
        Ok(value)
    } else {
        Err(ReadError::NotAllowed(format!(
            "must be {allowed}, got {value:?}"
        )))
    }
}

/// A name used in logs and metric labels (a client key's): letters, digits, `-`, `_`, `.`.
pub struct Name;

impl Kind for Name {
    type Value = Option<String>;
    fn default_value(&self) -> Option<String> {
        None
    }
    fn read(&self, value: &Spanned<DeValue<'_>>) -> Result<Option<String>, ReadError> {
        let v: String = typed(value)?;
        let fits = (1..=64).contains(&v.len())
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        allowed_if(fits, v, &self.allowed()).map(Some)
    }
    fn allowed(&self) -> String {
        "1 to 64 letters, digits, '-', '_' or '.' (required)".into()
    }
    fn show(&self, value: &Option<String>) -> String {
        value.clone().unwrap_or_else(|| "missing".into())
    }
}

/// An optional file path (relative paths are relative to servers.toml's folder).
pub struct FilePath;

impl Kind for FilePath {
    type Value = Option<String>;
    fn default_value(&self) -> Option<String> {
        None
    }
    fn read(&self, value: &Spanned<DeValue<'_>>) -> Result<Option<String>, ReadError> {
        let v: String = typed(value)?;
        Ok(Some(v).filter(|p| !p.is_empty()))
    }
    fn allowed(&self) -> String {
        "a file path (relative to servers.toml's folder), or \"\" for none".into()
    }
    fn show(&self, value: &Option<String>) -> String {
        value.clone().unwrap_or_else(|| "none".into())
    }
}

/// An optional environment variable's name.
pub struct EnvName;

impl Kind for EnvName {
    type Value = Option<String>;
    fn default_value(&self) -> Option<String> {
        None
    }
    fn read(&self, value: &Spanned<DeValue<'_>>) -> Result<Option<String>, ReadError> {
        let v: String = typed(value)?;
        if v.is_empty() {
            return Ok(None);
        }
        let fits = !v.starts_with(|c: char| c.is_ascii_digit())
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        allowed_if(fits, v, &self.allowed()).map(Some)
    }
    fn allowed(&self) -> String {
        "an environment variable's name (letters, digits, '_'), or \"\" for none".into()
    }
    fn show(&self, value: &Option<String>) -> String {
        value.clone().unwrap_or_else(|| "none".into())
    }
}

/// A list of model names; empty means every model.
pub struct Models;

impl Kind for Models {
    type Value = Vec<String>;
    fn default_value(&self) -> Vec<String> {
        Vec::new()
    }
    fn read(&self, value: &Spanned<DeValue<'_>>) -> Result<Vec<String>, ReadError> {
        let v: Vec<String> = typed(value)?;
        if v.iter().any(String::is_empty) {
            return Err(ReadError::NotAllowed(format!("must be {}", self.allowed())));
        }
        Ok(v)
    }
    fn allowed(&self) -> String {
        "a list of model names, e.g. [\"llama-3-8b\"]; [] for every model".into()
    }
    fn show(&self, value: &Vec<String>) -> String {
        if value.is_empty() {
            "every model".into()
        } else {
            value.join(", ")
        }
    }
}

/// A list of tables whose entries are read on their own (`[auth] keys`, with each entry's
/// line in messages); here only its shape is checked, and its length kept.
pub struct TableList {
    /// What one entry is, for messages ("client key").
    pub entry: &'static str,
}

impl Kind for TableList {
    type Value = usize;
    fn default_value(&self) -> usize {
        0
    }
    fn read(&self, value: &Spanned<DeValue<'_>>) -> Result<usize, ReadError> {
        let Some(entries) = value.get_ref().as_array() else {
            return Err(ReadError::WrongType(format!(
                "expected a list of {} tables, got a {}",
                self.entry,
                value.get_ref().type_str()
            )));
        };
        Ok(entries.len())
    }
    fn allowed(&self) -> String {
        format!("a list of {} tables", self.entry)
    }
    fn show(&self, value: &usize) -> String {
        value.to_string()
    }
}

/// A server's address: `http://HOST[:PORT]`. Required (its default is "missing").
pub struct ServerUrl;

/// A checked server URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `http[s]://host:port` as written, without a trailing slash.
    pub url: String,
    pub host: String,
    pub port: u16,
    /// `https://`: the server is reached over TLS.
    pub tls: bool,
}

impl Kind for ServerUrl {
    type Value = Option<Url>;
    fn default_value(&self) -> Option<Url> {
        None
    }
    fn read(&self, value: &Spanned<DeValue<'_>>) -> Result<Option<Url>, ReadError> {
        let v: String = typed(value)?;
        parse_server_url(&v)
            .map(Some)
            .map_err(ReadError::NotAllowed)
    }
    fn allowed(&self) -> String {
        "http://HOST[:PORT] or https://HOST[:PORT] (required)".into()
    }
    fn show(&self, value: &Option<Url>) -> String {
        value.as_ref().map_or("missing".into(), |u| u.url.clone())
    }
}

/// Checks a server URL: `http[s]://host[:port]`, nothing after the authority but an optional `/`.
pub fn parse_server_url(url: &str) -> Result<Url, String> {
    let allowed =
        "expected http://HOST[:PORT] or https://HOST[:PORT], e.g. \"http://10.0.0.5:8000\"";
    let (rest, tls) = if let Some(rest) = url.strip_prefix("http://") {
        (rest, false)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (rest, true)
    } else {
        return Err(format!("{url:?} is not an http or https URL; {allowed}"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!(
            "{url:?} has no host, or has a path, query or user; {allowed}"
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        // An IPv6 literal like [::1] without a port has colons but ends with ']'.
        Some((host, port)) if !authority.ends_with(']') => {
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    format!("{url:?} has port {port:?}; a port is a number from 1 to 65535")
                })?;
            (host, port)
        }
        _ => (authority, if tls { 443 } else { 80 }),
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host; {allowed}"));
    }
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok(Url {
        url: format!("{}://{authority}", if tls { "https" } else { "http" }),
        host,
        port,
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> Spanned<DeValue<'_>> {
        DeValue::parse(text).unwrap()
    }

    #[test]
    fn kinds_read_check_and_show() {
        let s = Seconds {
            default: 1.0,
            min: 0.5,
        };
        assert_eq!(s.read(&value("2")), Ok(Duration::from_secs(2)));
        assert_eq!(s.read(&value("0.75")), Ok(Duration::from_millis(750)));
        assert_eq!(
            s.read(&value("0.1")),
            Err(ReadError::NotAllowed(
                "must be a number of seconds from 0.5 to 604800, got 0.1".into()
            ))
        );
        assert!(
            matches!(s.read(&value("\"1s\"")), Err(ReadError::WrongType(m)) if m.contains("expected a number"))
        );

        let w = Whole::<u32> {
            default: 2,
            min: 1,
            max: 100,
        };
        assert_eq!(w.read(&value("100")), Ok(100));
        assert!(matches!(
            w.read(&value("101")),
            Err(ReadError::NotAllowed(_))
        ));
        assert!(
            matches!(w.read(&value("1.5")), Err(ReadError::WrongType(m)) if m.contains("whole number"))
        );

        let o = OneOf {
            default: "a",
            allowed: &["a", "b"],
        };
        assert_eq!(o.read(&value("\"b\"")), Ok("b"));
        assert_eq!(
            o.read(&value("\"c\"")),
            Err(ReadError::NotAllowed(
                "must be one of \"a\", \"b\", got \"c\"".into()
            ))
        );
        assert_eq!(
            Secret.show(&Some("k".into())),
            "set",
            "keys are never shown"
        );
    }

    #[test]
    fn server_urls() {
        let url = |u| parse_server_url(u).map(|u| (u.host, u.port, u.url));
        assert_eq!(
            url("http://h").unwrap(),
            ("h".into(), 80, "http://h".into())
        );
        assert_eq!(
            url("http://[::1]:9000/").unwrap(),
            ("::1".into(), 9000, "http://[::1]:9000".into())
        );
        assert_eq!(
            url("https://h").unwrap(),
            ("h".into(), 443, "https://h".into())
        );
        assert!(parse_server_url("https://h:8443").unwrap().tls);
        assert!(url("http://h/v1").is_err());
        assert!(url("http://h:0").is_err());
        assert!(url("http://h:99999").is_err());
        assert!(url("http://:80").is_err());
        assert!(url("ftp://h").is_err());
    }
}
