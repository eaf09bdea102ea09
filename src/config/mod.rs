//! `servers.toml`: the vLLM servers behind the router and the router's settings.
//!
//! The format is the Python mvllm's, so existing files keep working:
//!
//! ```toml
//! [servers]
//! servers = [
//!     { url = "http://gpu-1:8000", max_concurrent_requests = 16 },
//!     { url = "http://gpu-2:8000", max_concurrent_requests = 4, api_key = "token" },
//! ]
//!
//! [config]
//! health_check_interval = 10
//! request_timeout = 600
//! max_retries = 3
//!
//! [routing]
//! policy = "least-load"
//! ```
//!
//! Every key is declared once, in `sections.rs`; this file walks the document and reports
//! every mistake with the file, the line, the key and what is allowed. Unknown keys are
//! mistakes too (a misspelt setting must not silently fall back to its default).

mod files;
mod key;
mod sections;

use std::fmt::{self, Display};
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

pub use files::{
    cert_and_key as load_cert_and_key, certificates as load_certificates, read_small,
    resolve as resolve_path, CertAndKey, SecretKey, ServerTls,
};
pub use key::{parse_server_url, KeyInfo, Section, Url};
pub use sections::{Auth, ClientKeyEntry, Limits, Routing, ServerEntry, Settings, TlsListener};

use key::ReadError;

/// One vLLM (or SGLang) server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerConfig {
    /// `http://host:port`, without a trailing slash.
    pub url: String,
    pub host: String,
    pub port: u16,
    /// Requests the server is sized for: the denominator of its load score.
    pub max_concurrent_requests: u32,
    /// Sent to this server as `Authorization: Bearer <key>` (its `--api-key`).
    pub api_key: Option<String>,
    /// What serves it (declared, or `Auto`: told by its `/metrics`).
    pub engine: Engine,
    /// Each address of `host` is a server of its own (see discovery.rs).
    pub dns_discovery: bool,
    /// For a server found by DNS discovery: the URL of the entry that named it.
    pub discovered_from: Option<String>,
    /// For an `https://` server: how it is reached.
    pub tls: Option<ServerTls>,
    /// Its KV cache events and their replay socket, when set on the server itself
    /// (`[routing] kv_events_port` applies to the others: see [`ServerConfig::kv_events`]).
    pub kv_events: Option<String>,
    pub kv_events_replay: Option<String>,
}

/// Where a server's KV cache events are read (engine 0's; engine N's ports are N higher).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEventsSource {
    pub live: String,
    pub replay: Option<String>,
}

impl ServerConfig {
    /// Where its KV cache events are, if anywhere: its own `kv_events`, else `[routing]`'s
    /// ports on its host. A server found by DNS discovery takes the port of its entry's
    /// `kv_events` on its own address (the entry's host names all of them).
    pub fn kv_events(&self, routing: &Routing) -> Option<KvEventsSource> {
        let on_host = |port: u16| {
            (port > 0).then(|| {
                if self.host.contains(':') {
                    format!("tcp://[{}]:{port}", self.host)
                } else {
                    format!("tcp://{}:{port}", self.host)
                }
            })
        };
        let own = |endpoint: &Option<String>| match (&self.discovered_from, endpoint) {
            (Some(_), Some(endpoint)) => endpoint
                .rsplit_once(':')
                .and_then(|(_, port)| port.parse().ok())
                .and_then(on_host),
            (_, endpoint) => endpoint.clone(),
        };
        let live = own(&self.kv_events).or_else(|| on_host(routing.kv_events_port))?;
        let replay = own(&self.kv_events_replay).or_else(|| on_host(routing.kv_events_replay_port));
        Some(KvEventsSource { live, replay })
    }
}

/// A client key of `[auth] keys`, with the key itself read (from the config, a file or the
/// environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKey {
    pub name: String,
    pub key: SecretKey,
    /// The models it may use; empty: every model.
    pub models: Vec<String>,
    /// 0: no limit.
    pub requests_per_minute: u32,
    /// 0: no limit.
    pub max_concurrent_requests: u32,
    /// 0: no limit.
    pub tokens_per_minute: u64,
}

/// The `engine` values a server entry allows.
pub const ENGINES: &[&str] = &["auto", "vllm", "sglang"];

/// The server software behind a server entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    #[default]
    Auto,
    Vllm,
    Sglang,
}

impl Engine {
    fn named(name: &str) -> Engine {
        match name {
            "vllm" => Engine::Vllm,
            "sglang" => Engine::Sglang,
            _ => Engine::Auto,
        }
    }
}

/// Defines [`Config`], with a field for each declared table besides `[servers]`, and what
/// reads, lists and describes those tables. Adding a table to servers.toml (`[auth]`, say) is
/// one `section!` declaration in sections.rs and one line here.
macro_rules! config_with_tables {
    ($($field:ident: $ty:ty),* $(,)?) => {
        /// A validated `servers.toml`.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Config {
            pub source: PathBuf,
            pub servers: Vec<ServerConfig>,
            $(pub $field: $ty,)*
            /// `[auth] keys`, read.
            pub clients: Vec<ClientKey>,
            /// The operator's key (`[auth] admin_key`, `_file` or `_env`), read.
            pub admin_key: Option<SecretKey>,
            /// Files the config names (keys, certificates): a change in one is a change of
            /// the config (watcher.rs).
            pub files: Vec<PathBuf>,
            /// Keys of the Python mvllm that are accepted but have no effect here, with why.
            pub ignored: Vec<Ignored>,
            /// `[routing] tokenizers`, loaded.
            pub tokenizers: Vec<(String, std::sync::Arc<crate::prompt_tokens::local::LocalTokenizer>)>,
        }

        impl Config {
            /// The top-level tables, in the order `check-config` lists them.
            const TABLES: &'static [&'static str] = &["servers", $(<$ty as Section>::NAME,)*];

            /// A config with no servers and every default (`path` names it in messages).
            pub fn empty(path: &Path) -> Config {
                Config {
                    source: path.to_path_buf(),
                    servers: Vec::new(),
                    $($field: <$ty>::default(),)*
                    clients: Vec::new(),
                    admin_key: None,
                    files: Vec::new(),
                    ignored: Vec::new(),
                    tokenizers: Vec::new(),
                }
            }

            /// Reads the declared table `name`; `false` if none is declared by that name.
            fn read_table(
                &mut self,
                source: &Source<'_>,
                name: &str,
                table: &DeTable<'_>,
            ) -> Result<bool, ConfigError> {
                $(
                    if name == <$ty as Section>::NAME {
                        let (section, ignored) = source.section::<$ty>(name, table)?;
                        self.$field = section;
                        self.ignored.extend(ignored);
                        return Ok(true);
                    }
                )*
                Ok(false)
            }

            fn table_keys() -> Vec<(&'static str, Vec<KeyInfo>)> {
                vec![$((<$ty as Section>::NAME, <$ty>::keys()),)*]
            }

            fn describe_tables(&self, out: &mut String) {
                $(describe_section(out, &self.$field);)*
            }
        }
    };
}

config_with_tables! {
    settings: Settings,
    routing: Routing,
    auth: Auth,
    limits: Limits,
    tls: TlsListener,
}

/// A key accepted for compatibility that has no effect: its full name, and why.
pub type Ignored = (String, &'static str);

/// A config mistake, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The document being read: its text (for line numbers) and its path (for messages).
struct Source<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Source<'_> {
    fn error(&self, message: String) -> ConfigError {
        ConfigError {
            file: self.path.to_path_buf(),
            message,
        }
    }

    fn line(&self, offset: usize) -> usize {
        line_of(self.text, offset)
    }

    /// `line L, key K: message`.
    fn at(&self, offset: usize, key: &str, message: impl Display) -> ConfigError {
        self.error(format!("line {}, key {key}: {message}", self.line(offset)))
    }

    /// An unknown key, with the keys that are allowed where it stands.
    fn unknown(&self, key: &Spanned<std::borrow::Cow<'_, str>>, allowed: &[&str]) -> ConfigError {
        let allowed: Vec<String> = allowed.iter().map(|k| format!("`{k}`")).collect();
        self.at(
            key.span().start,
            key.get_ref(),
            format!(
                "unknown field `{}`, expected one of {}",
                key.get_ref(),
                allowed.join(", ")
            ),
        )
    }

    /// A value that is not a table where one is needed.
    fn not_a_table(&self, key: &str, value: &Spanned<DeValue<'_>>) -> ConfigError {
        self.at(
            value.span().start,
            key,
            format!("expected a table, got a {}", value.get_ref().type_str()),
        )
    }

    /// Reads a declared table; `path` qualifies its keys in messages (`config`,
    /// `servers.servers[2]`). Returns the section and the ignored keys it held.
    fn section<S: Section>(
        &self,
        path: &str,
        table: &DeTable<'_>,
    ) -> Result<(S, Vec<Ignored>), ConfigError> {
        let mut section = S::default();
        let mut ignored = Vec::new();
        for (key, value) in table.iter() {
            let name = key.get_ref().as_ref();
            match section.set(name, value) {
                Some(Ok(())) => {}
                Some(Err(ReadError::WrongType(why))) => {
                    return Err(self.at(value.span().start, name, why))
                }
                Some(Err(ReadError::NotAllowed(why))) => {
                    return Err(self.at(value.span().start, &format!("{path}.{name}"), why))
                }
                None if S::IGNORED.contains(&name) => {
                    ignored.push((format!("{path}.{name}"), S::IGNORED_WHY));
                }
                None => {
                    let keys = S::keys();
                    let allowed: Vec<&str> = keys.iter().map(|k| k.name).collect();
                    return Err(self.unknown(key, &allowed));
                }
            }
        }
        Ok((section, ignored))
    }

    /// `[servers] servers = [ {...}, ... ]`; the files they name are added to `files`.
    fn servers(
        &self,
        table: &DeTable<'_>,
        files: &mut Vec<PathBuf>,
    ) -> Result<Vec<ServerConfig>, ConfigError> {
        let mut servers: Vec<ServerConfig> = Vec::new();
        for (key, value) in table.iter() {
            if key.get_ref() != "servers" {
                return Err(self.unknown(key, &["servers"]));
            }
            let Some(entries) = value.get_ref().as_array() else {
                return Err(self.at(
                    value.span().start,
                    "servers",
                    format!(
                        "expected a list of server tables, got a {}",
                        value.get_ref().type_str()
                    ),
                ));
            };
            for (index, entry) in entries.iter().enumerate() {
                let path = format!("servers.servers[{index}]");
                let Some(fields) = entry.get_ref().as_table() else {
                    return Err(self.not_a_table(&path, entry));
                };
                let (entry_keys, _) = self.section::<ServerEntry>(&path, fields)?;
                let Some(url) = entry_keys.url.clone() else {
                    return Err(self.at(
                        entry.span().start,
                        &path,
                        "has no url; every server needs url = \"http://HOST[:PORT]\"",
                    ));
                };
                if servers.iter().any(|s| s.url == url.url) {
                    let offset = fields
                        .get("url")
                        .map_or(entry.span().start, |v| v.span().start);
                    return Err(self.at(
                        offset,
                        &format!("{path}.url"),
                        format!("{} is listed twice; each server may appear once", url.url),
                    ));
                }
                let tls = self.server_tls(&path, fields, &url, &entry_keys, files)?;
                servers.push(ServerConfig {
                    url: url.url,
                    host: url.host,
                    port: url.port,
                    max_concurrent_requests: entry_keys.max_concurrent_requests,
                    api_key: entry_keys.api_key,
                    engine: Engine::named(entry_keys.engine),
                    dns_discovery: entry_keys.dns_discovery,
                    discovered_from: None,
                    tls,
                    kv_events: entry_keys.kv_events,
                    kv_events_replay: entry_keys.kv_events_replay,
                });
            }
        }
        Ok(servers)
    }

    /// Where the value of `key` starts in `table` (or `fallback`), for messages.
    fn offset_of(table: &DeTable<'_>, key: &str, fallback: usize) -> usize {
        table.get(key).map_or(fallback, |v| v.span().start)
    }

    /// An `https://` server's TLS settings, its files read; `None` for `http://`.
    fn server_tls(
        &self,
        path: &str,
        fields: &DeTable<'_>,
        url: &Url,
        entry: &ServerEntry,
        files: &mut Vec<PathBuf>,
    ) -> Result<Option<ServerTls>, ConfigError> {
        let named = [
            ("ca_file", &entry.ca_file),
            ("client_cert_file", &entry.client_cert_file),
            ("client_key_file", &entry.client_key_file),
        ];
        let at = |key: &str, why: String| {
            let offset = Source::offset_of(fields, key, 0);
            self.at(offset, &format!("{path}.{key}"), why)
        };
        if !url.tls {
            if let Some((key, _)) = named.iter().find(|(_, v)| v.is_some()) {
                return Err(at(
                    key,
                    format!("is for https:// servers; {} is plain http", url.url),
                ));
            }
            return Ok(None);
        }
        let ca = match &entry.ca_file {
            Some(file) => {
                let file = files::resolve(self.path, file);
                let certs = files::certificates(&file).map_err(|why| at("ca_file", why))?;
                files.push(file);
                Some(certs)
            }
            None => None,
        };
        let client = match (&entry.client_cert_file, &entry.client_key_file) {
            (Some(cert), Some(key)) => {
                let (cert, key) = (
                    files::resolve(self.path, cert),
                    files::resolve(self.path, key),
                );
                let pair =
                    files::cert_and_key(&cert, &key).map_err(|why| at("client_cert_file", why))?;
                files.extend([cert, key]);
                Some(pair)
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(at("client_cert_file", "needs client_key_file too".into()))
            }
            (None, Some(_)) => {
                return Err(at("client_key_file", "needs client_cert_file too".into()))
            }
        };
        Ok(Some(ServerTls {
            server_name: url.host.clone(),
            ca,
            client,
        }))
    }

    /// A secret given one of three ways (`key`, `key_file`, `key_env`): exactly one for a
    /// client key (`required`), at most one for the admin key.
    #[allow(clippy::too_many_arguments)]
    fn secret(
        &self,
        path: &str,
        fields: &DeTable<'_>,
        names: [&str; 3],
        given: (&Option<String>, &Option<String>, &Option<String>),
        required: bool,
        fallback: usize,
        files: &mut Vec<PathBuf>,
    ) -> Result<Option<SecretKey>, ConfigError> {
        let at = |key: &str, why: String| {
            let offset = Source::offset_of(fields, key, fallback);
            self.at(offset, &format!("{path}{key}"), why)
        };
        let set: Vec<&str> = names
            .iter()
            .zip([given.0.is_some(), given.1.is_some(), given.2.is_some()])
            .filter(|(_, set)| *set)
            .map(|(name, _)| *name)
            .collect();
        match (set.len(), given) {
            (0, _) if required => Err(at(
                names[0],
                format!("is missing; give one of {}", names.join(", ")),
            )),
            (0, _) => Ok(None),
            (1, (Some(key), _, _)) => Ok(Some(SecretKey::new(key.clone()))),
            (1, (_, Some(file), _)) => {
                let file = files::resolve(self.path, file);
                let key = files::secret_from_file(&file).map_err(|why| at(names[1], why))?;
                files.push(file);
                Ok(Some(key))
            }
            (1, (_, _, Some(var))) => files::secret_from_env(var)
                .map(Some)
                .map_err(|why| at(names[2], why)),
            _ => Err(at(
                set[1],
                format!(
                    "give only one of {} (this sets {})",
                    names.join(", "),
                    set.join(" and ")
                ),
            )),
        }
    }

    /// `[routing] tokenizers`, each loaded from its folder.
    fn tokenizers(
        &self,
        routing: &Routing,
        table: &DeTable<'_>,
        fallback: usize,
        files: &mut Vec<PathBuf>,
    ) -> Result<
        Vec<(
            String,
            std::sync::Arc<crate::prompt_tokens::local::LocalTokenizer>,
        )>,
        ConfigError,
    > {
        let offset = Source::offset_of(table, "tokenizers", fallback);
        routing
            .tokenizers
            .iter()
            .map(|(model, folder)| {
                let dir = files::resolve(self.path, folder);
                let (tokenizer, read) = crate::prompt_tokens::local::LocalTokenizer::load(&dir)
                    .map_err(|why| {
                        self.at(offset, &format!("routing.tokenizers.{model:?}"), why)
                    })?;
                files.extend(read);
                Ok((model.clone(), std::sync::Arc::new(tokenizer)))
            })
            .collect()
    }

    /// `[auth]`'s client keys, each read with its secret.
    fn client_keys(
        &self,
        auth: &DeTable<'_>,
        files: &mut Vec<PathBuf>,
    ) -> Result<Vec<ClientKey>, ConfigError> {
        let mut keys: Vec<ClientKey> = Vec::new();
        let Some(entries) = auth.get("keys").and_then(|v| v.get_ref().as_array()) else {
            return Ok(keys);
        };
        for (index, entry) in entries.iter().enumerate() {
            let path = format!("auth.keys[{index}]");
            let Some(fields) = entry.get_ref().as_table() else {
                return Err(self.not_a_table(&path, entry));
            };
            let (read, _) = self.section::<ClientKeyEntry>(&path, fields)?;
            let start = entry.span().start;
            let Some(name) = read.name else {
                return Err(self.at(
                    start,
                    &path,
                    "has no name; every client key needs name = \"...\" (shown in logs and metrics)",
                ));
            };
            let Some(key) = self.secret(
                &format!("{path}."),
                fields,
                ["key", "key_file", "key_env"],
                (&read.key, &read.key_file, &read.key_env),
                true,
                start,
                files,
            )?
            else {
                unreachable!("a required secret is there or an error");
            };
            let offset = Source::offset_of(fields, "name", start);
            if keys.iter().any(|k| k.name == name) {
                return Err(self.at(
                    offset,
                    &format!("{path}.name"),
                    format!("{name:?} is used twice; each client key needs its own name"),
                ));
            }
            if let Some(other) = keys.iter().find(|k| k.key == key) {
                return Err(self.at(
                    offset,
                    &path,
                    format!(
                        "has the same key as {:?}; each client needs its own key",
                        other.name
                    ),
                ));
            }
            keys.push(ClientKey {
                name,
                key,
                models: read.models,
                requests_per_minute: read.requests_per_minute,
                max_concurrent_requests: read.max_concurrent_requests,
                tokens_per_minute: read.tokens_per_minute,
            });
        }
        Ok(keys)
    }

    /// `[tls]`: a listener needs both files, and they must load.
    fn tls_listener(
        &self,
        tls: &TlsListener,
        table: &DeTable<'_>,
        fallback: usize,
    ) -> Result<(), ConfigError> {
        let at = |key: &str, why: String| {
            self.at(
                Source::offset_of(table, key, fallback),
                &format!("tls.{key}"),
                why,
            )
        };
        match (&tls.listen, &tls.cert_file, &tls.key_file) {
            (None, None, None) => Ok(()),
            (Some(_), Some(cert), Some(key)) => {
                let (cert, key) = (
                    files::resolve(self.path, cert),
                    files::resolve(self.path, key),
                );
                files::cert_and_key(&cert, &key).map_err(|why| at("cert_file", why))?;
                Ok(())
            }
            (None, _, _) => Err(at(
                "cert_file",
                "is set but tls.listen is not; give the address to serve HTTPS on".into(),
            )),
            (Some(_), None, _) => Err(at("listen", "needs tls.cert_file and tls.key_file".into())),
            (Some(_), _, None) => Err(at("listen", "needs tls.key_file and tls.cert_file".into())),
        }
    }

    /// A syntax error (or a duplicate key) from the TOML parser, placed at its line and key.
    fn syntax(&self, e: &toml::de::Error) -> ConfigError {
        let message = e.message().trim_end();
        let place = match e.span() {
            Some(span) => {
                // A value's error names the key before it; a key's error (a duplicate, say)
                // spans the key itself.
                let spanned = self
                    .text
                    .get(span.clone())
                    .map(str::trim)
                    .filter(|k| !k.is_empty() && k.len() <= 64 && !k.contains(['\n', '=']));
                match key_before(self.text, span.start).or(spanned) {
                    Some(key) => format!("line {}, key {key}: ", self.line(span.start)),
                    None => format!("line {}: ", self.line(span.start)),
                }
            }
            None => String::new(),
        };
        self.error(format!("{place}{message}"))
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_text(path).map(|(config, _)| config)
    }

    /// Reads and validates a config file; also returns the text it was read from, so that
    /// the watcher compares later edits with exactly what is running (the file is read once).
    pub fn load_with_text(path: &Path) -> Result<(Config, String), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            message: format!("cannot read it: {e}"),
        })?;
        let config = Config::parse(&text, path)?;
        Ok((config, text))
    }

    /// Validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let source = Source { text, path };
        let document = DeTable::parse(text).map_err(|e| source.syntax(&e))?;
        let mut config = Config::empty(path);
        let mut files = Vec::new();
        for (key, value) in document.get_ref().iter() {
            let name = key.get_ref().as_ref();
            if !Config::TABLES.contains(&name) {
                return Err(source.unknown(key, Config::TABLES));
            }
            let Some(table) = value.get_ref().as_table() else {
                return Err(source.not_a_table(name, value));
            };
            let start = value.span().start;
            match name {
                "servers" => config.servers = source.servers(table, &mut files)?,
                "auth" => {
                    config.read_table(&source, name, table)?;
                    config.clients = source.client_keys(table, &mut files)?;
                    let auth = &config.auth;
                    config.admin_key = source.secret(
                        "auth.",
                        table,
                        ["admin_key", "admin_key_file", "admin_key_env"],
                        (&auth.admin_key, &auth.admin_key_file, &auth.admin_key_env),
                        false,
                        start,
                        &mut files,
                    )?;
                }
                "tls" => {
                    config.read_table(&source, name, table)?;
                    source.tls_listener(&config.tls, table, start)?;
                }
                "routing" => {
                    config.read_table(&source, name, table)?;
                    config.tokenizers =
                        source.tokenizers(&config.routing, table, start, &mut files)?;
                }
                _ => {
                    config.read_table(&source, name, table)?;
                }
            }
        }
        if let Some(tls) = config.tls.listen {
            let clash = [config.settings.admin_address]
                .into_iter()
                .flatten()
                .any(|a| a.port() == tls.port());
            if clash {
                return Err(source.error(format!(
                    "tls.listen {tls} uses the admin_address's port; give it another"
                )));
            }
        }
        config.files = files;
        Ok(config)
    }

    /// Every declared key of every table, for `check-config --keys` and the docs test.
    pub fn keys() -> Vec<(&'static str, Vec<KeyInfo>)> {
        let mut keys = vec![("servers.servers[]", ServerEntry::keys())];
        keys.extend(Config::table_keys());
        keys
    }

    /// A human-readable summary, for `mvllm check-config`: the servers, then every setting
    /// with its value and what it does.
    pub fn describe(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let n = self.servers.len();
        let _ = writeln!(
            out,
            "{}: valid, {n} server{}",
            self.source.display(),
            if n == 1 { "" } else { "s" }
        );
        for server in &self.servers {
            let key = if server.api_key.is_some() {
                ", api key set"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  {:<32} capacity {}{key}",
                server.url, server.max_concurrent_requests
            );
        }
        if n == 0 {
            let _ = writeln!(
                out,
                "  (no servers: the router would answer every request with 503)"
            );
        }
        for key in &self.clients {
            let mut limits = Vec::new();
            if !key.models.is_empty() {
                limits.push(format!("models {}", key.models.join(", ")));
            }
            for (n, what) in [
                (u64::from(key.requests_per_minute), "requests/min"),
                (u64::from(key.max_concurrent_requests), "at once"),
                (key.tokens_per_minute, "tokens/min"),
            ] {
                if n > 0 {
                    limits.push(format!("{n} {what}"));
                }
            }
            let limits = if limits.is_empty() {
                "no limits".to_string()
            } else {
                limits.join(", ")
            };
            let _ = writeln!(out, "  client key {:<21} {limits}", key.name);
        }
        self.describe_tables(&mut out);
        for (key, why) in &self.ignored {
            let _ = writeln!(out, "note: {key} is accepted but has no effect ({why})");
        }
        out
    }

    /// Every key with its default, what is allowed and what it does (`check-config --keys`).
    pub fn describe_keys() -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for (table, keys) in Config::keys() {
            let _ = writeln!(out, "[{table}]");
            for key in keys {
                let _ = writeln!(
                    out,
                    "  {:<24} default {}; {}\n  {:<24} {}",
                    key.name,
                    key.default,
                    key.allowed,
                    "",
                    key.description()
                );
            }
        }
        out
    }
}

/// `[name]` and each key's value, marked when it is not the default, with its description.
fn describe_section<S: Section>(out: &mut String, section: &S) {
    use std::fmt::Write as _;
    let defaults = S::default().values();
    let keys = S::keys();
    let _ = writeln!(out, "[{}]", S::NAME);
    for ((name, value), ((_, default), key)) in
        section.values().into_iter().zip(defaults.iter().zip(&keys))
    {
        let mark = if value == *default { ' ' } else { '*' };
        let _ = writeln!(
            out,
            " {mark}{name:<24} {value:<12} {}",
            first_sentence(&key.description())
        );
    }
}

fn first_sentence(text: &str) -> &str {
    match text.find(". ") {
        Some(end) => &text[..end + 1],
        None => text,
    }
}

/// The key whose value starts at `offset`: the name before the nearest `=` on that line.
fn key_before(text: &str, offset: usize) -> Option<&str> {
    let before = text.get(..offset)?;
    let line = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
    let (lhs, _) = line.rsplit_once('=')?;
    let key = lhs
        .trim_end()
        .rsplit(|c: char| c == '{' || c == ',' || c.is_whitespace())
        .next()?;
    (!key.is_empty()).then_some(key)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("servers.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_python_mvllm_example_loads() {
        let text = r#"
[servers]
servers = [
    { url = "http://localhost:8801", max_concurrent_requests = 10 },
    { url = "http://localhost:8802", max_concurrent_requests = 3 },
    { url = "http://localhost:8803" },
]

[config]
health_check_interval = 10
config_reload_interval = 30
request_timeout = 30
health_check_timeout = 5
max_retries = 3
failure_threshold = 2
auto_recovery_threshold = 60
enable_active_health_check = true
health_check_max_response_time = 10.0
health_check_min_success_rate = 0.8
health_check_window_size = 10
health_check_consecutive_failures = 3
"#;
        let c = parse(text).unwrap();
        assert_eq!(c.servers.len(), 3);
        assert_eq!(c.servers[0].url, "http://localhost:8801");
        assert_eq!(
            (c.servers[0].host.as_str(), c.servers[0].port),
            ("localhost", 8801)
        );
        assert_eq!(
            c.servers[2].max_concurrent_requests, 3,
            "the seed's default"
        );
        assert_eq!(c.settings.request_timeout, Duration::from_secs(30));
        assert_eq!(c.settings.health_check_interval, Duration::from_secs(10));
        assert_eq!(c.settings.metrics_interval, Duration::from_secs(1));
        assert_eq!(c.ignored.len(), 6);
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let c = parse(include_str!("../../servers.example.toml")).unwrap();
        assert_eq!(c.servers.len(), 3);
        assert!(c.ignored.is_empty(), "the example uses no ignored keys");
        assert_eq!(
            c.settings,
            Settings::default(),
            "the example shows the defaults"
        );
    }

    #[test]
    fn empty_file_means_no_servers_and_defaults() {
        let c = parse("").unwrap();
        assert!(c.servers.is_empty());
        assert_eq!(c.settings, Settings::default());
    }

    #[test]
    fn kv_events_per_server_or_by_port_and_their_mistakes() {
        let c = parse(
            "[servers]\nservers = [{ url = \"http://a:8000\" }, { url = \"http://[::1]:8000\" }, \
             { url = \"http://c:8000\", kv_events = \"tcp://10.0.0.9:6000\" }]\n\
             [routing]\nkv_events_port = 5557\nkv_events_replay_port = 5558\n",
        )
        .unwrap();
        let sources: Vec<_> = c.servers.iter().map(|s| s.kv_events(&c.routing)).collect();
        assert_eq!(
            sources[0],
            Some(KvEventsSource {
                live: "tcp://a:5557".into(),
                replay: Some("tcp://a:5558".into())
            })
        );
        assert_eq!(sources[1].as_ref().unwrap().live, "tcp://[::1]:5557");
        assert_eq!(
            sources[2],
            Some(KvEventsSource {
                live: "tcp://10.0.0.9:6000".into(),
                replay: Some("tcp://c:5558".into())
            }),
            "its own endpoint wins"
        );
        let pod = ServerConfig {
            host: "10.1.2.3".into(),
            discovered_from: Some("http://vllm-headless:8000".into()),
            ..c.servers[2].clone()
        };
        assert_eq!(
            pod.kv_events(&c.routing).unwrap().live,
            "tcp://10.1.2.3:6000",
            "a discovered pod: the entry's port on its own address"
        );
        let none = parse("[servers]\nservers = [{ url = \"http://a:8000\" }]\n").unwrap();
        assert_eq!(
            none.servers[0].kv_events(&none.routing),
            None,
            "off by default"
        );
        let bad = parse(
            "[servers]\nservers = [{ url = \"http://a:8000\", kv_events = \"tcp://*:5557\" }]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            bad.contains("line 2, key servers.servers[0].kv_events: must be tcp://HOST:PORT"),
            "{bad}"
        );
        let missing = parse("[routing]\ntokenizers = { m = \"/nonexistent\" }\n")
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains(
                "line 2, key routing.tokenizers.\"m\": cannot read /nonexistent/tokenizer.json"
            ),
            "{missing}"
        );
    }

    #[test]
    fn router_settings_and_api_keys() {
        let c = parse(
            "[servers]\nservers = [{ url = \"http://[::1]:9000/\", api_key = \"k\" }]\n\
             [config]\nmetrics_interval = 0.5\nmax_body_bytes = 1048576\nfirst_byte_timeout = 20\n",
        )
        .unwrap();
        assert_eq!(c.servers[0].url, "http://[::1]:9000");
        assert_eq!(c.servers[0].host, "::1");
        assert_eq!(c.servers[0].api_key.as_deref(), Some("k"));
        assert_eq!(c.settings.metrics_interval, Duration::from_millis(500));
        assert_eq!(c.settings.max_body_bytes, 1 << 20);
        assert_eq!(c.settings.first_byte_timeout, Duration::from_secs(20));
    }

    #[test]
    fn engines_discovery_and_dns_servers() {
        let c = parse(
            "[servers]\nservers = [\n{ url = \"http://a:1\", engine = \"sglang\" },\n\
             { url = \"http://pods:8000\", dns_discovery = true },\n]\n\
             [config]\ndns_server = \"10.96.0.10\"\n",
        )
        .unwrap();
        assert_eq!(c.servers[0].engine, Engine::Sglang);
        assert!(!c.servers[0].dns_discovery);
        assert_eq!(c.servers[1].engine, Engine::Auto);
        assert!(c.servers[1].dns_discovery);
        assert_eq!(
            c.settings.dns_server,
            Some("10.96.0.10:53".parse().unwrap())
        );
        let c = parse("[config]\ndns_server = \"127.0.0.1:5353\"\n").unwrap();
        assert_eq!(
            c.settings.dns_server,
            Some("127.0.0.1:5353".parse().unwrap())
        );
        let bad = parse("[config]\ndns_server = \"dns.local\"\n").unwrap_err();
        assert!(
            bad.contains("line 2") && bad.contains("dns_server") && bad.contains("IP:PORT"),
            "{bad}"
        );
        let bad = parse("[servers]\nservers = [{ url = \"http://a:1\", engine = \"tgi\" }]\n")
            .unwrap_err();
        assert!(bad.contains("engine") && bad.contains("sglang"), "{bad}");
    }

    #[test]
    fn mistakes_name_file_line_key_and_what_is_allowed() {
        let unknown = parse("[config]\nmax_retrys = 3\n").unwrap_err();
        assert!(unknown.starts_with("servers.toml: line 2"), "{unknown}");
        assert!(unknown.contains("unknown field `max_retrys`"), "{unknown}");
        assert!(
            unknown.contains("max_retries"),
            "lists the allowed keys: {unknown}"
        );

        let wrong_type = parse("[config]\n\nrequest_timeout = \"30s\"\n").unwrap_err();
        assert_eq!(
            wrong_type,
            "servers.toml: line 3, key request_timeout: invalid type: string \"30s\", expected a number"
        );
        let in_table = parse(
            "[servers]\nservers = [{ url = \"http://a:1\", max_concurrent_requests = \"8\" }]\n",
        )
        .unwrap_err();
        assert!(
            in_table.contains("line 2, key max_concurrent_requests: invalid type"),
            "{in_table}"
        );

        let twice = parse("[config]\nmax_retries = 1\nmax_retries = 2\n").unwrap_err();
        assert!(
            twice.starts_with("servers.toml: line 3, key max_retries: duplicate key"),
            "{twice}"
        );

        let range = parse("[config]\nmax_retries = -1\n").unwrap_err();
        assert_eq!(
            range,
            "servers.toml: line 2, key config.max_retries: must be a whole number from 0 to 100, got -1"
        );

        let url = parse(
            "[servers]\nservers = [\n { url = \"http://a:1\" },\n { url = \"gpu-2:8000\" },\n]\n",
        )
        .unwrap_err();
        assert!(url.starts_with("servers.toml: line 4, key servers.servers[1].url: \"gpu-2:8000\" is not an http or https URL"), "{url}");

        let capacity =
            parse("[servers]\nservers = [{ url = \"http://a:1\", max_concurrent_requests = 0 }]\n")
                .unwrap_err();
        assert!(
            capacity.contains(
                "key servers.servers[0].max_concurrent_requests: must be a whole number from 1"
            ),
            "{capacity}"
        );

        let twice =
            parse("[servers]\nservers = [{ url = \"http://a:1\" }, { url = \"http://a:1/\" }]\n")
                .unwrap_err();
        assert!(twice.contains("listed twice"), "{twice}");

        let unknown_server_key =
            parse("[servers]\nservers = [{ url = \"http://a:1\", weight = 2 }]\n").unwrap_err();
        assert!(
            unknown_server_key.contains("unknown field `weight`"),
            "{unknown_server_key}"
        );
    }

    #[test]
    fn auth_keys_come_from_the_file_a_file_or_the_environment() {
        let dir = std::env::temp_dir().join(format!("mvllm-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("b.key"), "sk-from-file\n").unwrap();
        std::env::set_var("MVLLM_TEST_KEY_C", "sk-from-env");
        let text = r#"
[auth]
admin_key_file = "b.key"
keys = [
  { name = "a", key = "sk-a", models = ["llama"], requests_per_minute = 60 },
  { name = "b", key_file = "b.key" },
  { name = "c", key_env = "MVLLM_TEST_KEY_C", max_concurrent_requests = 2 },
]
"#;
        let path = dir.join("servers.toml");
        let c = Config::parse(text, &path).unwrap();
        let keys: Vec<(&str, &str)> = c
            .clients
            .iter()
            .map(|k| (k.name.as_str(), k.key.expose()))
            .collect();
        assert_eq!(
            keys,
            [("a", "sk-a"), ("b", "sk-from-file"), ("c", "sk-from-env")]
        );
        assert_eq!(c.clients[0].models, ["llama"]);
        assert_eq!(
            c.admin_key.as_ref().map(|k| k.expose()),
            Some("sk-from-file")
        );
        assert_eq!(c.files, [dir.join("b.key"), dir.join("b.key")]);
        assert!(!c.describe().contains("sk-"), "keys are never shown");

        let err = |t: &str| Config::parse(t, &path).unwrap_err().to_string();
        let missing = err("[auth]\nkeys = [\n { name = \"a\" },\n]\n");
        assert!(
            missing.contains(
                "line 3, key auth.keys[0].key: is missing; give one of key, key_file, key_env"
            ),
            "{missing}"
        );
        let both = err("[auth]\nkeys = [{ name = \"a\", key = \"k\", key_env = \"X\" }]\n");
        assert!(
            both.contains("give only one of key, key_file, key_env"),
            "{both}"
        );
        let unnamed = err("[auth]\nkeys = [{ key = \"k\" }]\n");
        assert!(unnamed.contains("auth.keys[0]: has no name"), "{unnamed}");
        let twice =
            err("[auth]\nkeys = [{ name = \"a\", key = \"k\" }, { name = \"b\", key = \"k\" }]\n");
        assert!(
            twice.contains("same key as \"a\"") && !twice.contains("\"k\""),
            "{twice}"
        );
        let no_file = err("[auth]\nkeys = [{ name = \"a\", key_file = \"nope\" }]\n");
        assert!(
            no_file.contains("key auth.keys[0].key_file: cannot read"),
            "{no_file}"
        );
        let env = err("[auth]\nadmin_key_env = \"MVLLM_TEST_SURELY_UNSET\"\n");
        assert!(env.contains("line 2, key auth.admin_key_env: the environment variable MVLLM_TEST_SURELY_UNSET is not set"), "{env}");
        let bad_name = err("[auth]\nkeys = [{ name = \"a b\", key = \"k\" }]\n");
        assert!(
            bad_name.contains("auth.keys[0].name: must be 1 to 64 letters"),
            "{bad_name}"
        );
        let unknown = err("[auth]\nkeys = [{ name = \"a\", key = \"k\", rpm = 1 }]\n");
        assert!(unknown.contains("unknown field `rpm`"), "{unknown}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tls_settings_need_https_and_their_files() {
        let plain =
            parse("[servers]\nservers = [{ url = \"http://a:1\", ca_file = \"ca.pem\" }]\n")
                .unwrap_err();
        assert!(
            plain.contains("servers.servers[0].ca_file: is for https:// servers"),
            "{plain}"
        );
        let missing = parse(
            "[servers]\nservers = [{ url = \"https://a\", ca_file = \"/nonexistent/ca.pem\" }]\n",
        )
        .unwrap_err();
        assert!(
            missing.contains(
                "line 2, key servers.servers[0].ca_file: cannot read /nonexistent/ca.pem"
            ),
            "{missing}"
        );
        let half =
            parse("[servers]\nservers = [{ url = \"https://a\", client_key_file = \"k.pem\" }]\n")
                .unwrap_err();
        assert!(half.contains("needs client_cert_file too"), "{half}");
        let https = parse("[servers]\nservers = [{ url = \"https://gpu-1\" }]\n").unwrap();
        let tls = https.servers[0].tls.as_ref().unwrap();
        assert_eq!(
            (tls.server_name.as_str(), https.servers[0].port),
            ("gpu-1", 443)
        );
        let listener = parse("[tls]\nlisten = \"127.0.0.1:8443\"\n").unwrap_err();
        assert!(
            listener.contains("key tls.listen: needs tls.cert_file and tls.key_file"),
            "{listener}"
        );
    }

    #[test]
    fn every_key_has_a_default_a_range_and_a_description() {
        for (table, keys) in Config::keys() {
            assert!(!keys.is_empty(), "[{table}] declares no key");
            for key in keys {
                assert!(!key.default.is_empty(), "{table}.{}: no default", key.name);
                assert!(!key.allowed.is_empty(), "{table}.{}: no range", key.name);
                assert!(
                    key.description().len() > 20,
                    "{table}.{}: no description",
                    key.name
                );
            }
        }
        let listing = Config::describe_keys();
        assert!(listing.contains("[routing]\n  policy"), "{listing}");
        assert!(
            listing.contains("a whole number from 0 to 100"),
            "max_retries' range: {listing}"
        );
    }

    #[test]
    fn every_key_is_documented_in_the_readme_and_the_example() {
        let readme = include_str!("../../README.md");
        let example = include_str!("../../servers.example.toml");
        for (table, keys) in Config::keys() {
            for key in keys {
                let cell = format!("| `{}`", key.name);
                assert!(readme.contains(&cell), "README lacks {table}.{}", key.name);
                assert!(
                    example.contains(key.name),
                    "servers.example.toml lacks {table}.{}",
                    key.name
                );
            }
        }
    }

    #[test]
    fn routing_policy_and_unknown_tables() {
        let c = parse("[routing]\npolicy = \"least-load\"\n").unwrap();
        assert_eq!(c.routing.policy, "least-load");
        let bad = parse("[routing]\npolicy = \"fastest\"\n").unwrap_err();
        assert_eq!(
            bad,
            "servers.toml: line 2, key routing.policy: must be one of \"least-load\", \
             \"power-of-two\", \"round-robin\", \"random\", \"session\", \"cache-aware\", got \"fastest\""
        );
        let c = parse(
            "[routing]\nmodel_policies = { \"llama-70b\" = \"session\", chat = \"power-of-two\" }\n\
             session_header = \"X-Conversation\"\nsession_load_bound = 1.5\n",
        )
        .unwrap();
        assert_eq!(
            c.routing.model_policies,
            [
                ("chat".into(), "power-of-two"),
                ("llama-70b".into(), "session")
            ]
        );
        assert_eq!(c.routing.session_header, "x-conversation");
        assert_eq!(c.routing.session_load_bound, 1.5);
        let bad = parse("[routing]\nmodel_policies = { m = \"fastest\" }\n").unwrap_err();
        assert!(
            bad.starts_with("servers.toml: line 2, key routing.model_policies: \"m\" = \"fastest\": the policy must be one of \"least-load\""),
            "{bad}"
        );
        let bad = parse("[routing]\nsession_header = \"bad header\"\n").unwrap_err();
        assert!(
            bad.contains("key routing.session_header: must be an HTTP header name"),
            "{bad}"
        );
        let bad = parse("[routing]\nsession_load_bound = 0.5\n").unwrap_err();
        assert!(
            bad.contains("must be a number from 1 to 10, got 0.5"),
            "{bad}"
        );
        let table = parse("[server]\nservers = []\n").unwrap_err();
        assert!(
            table.starts_with("servers.toml: line 1, key server: unknown field `server`, expected one of `servers`, `config`, `routing`"),
            "{table}"
        );
        let not_table = parse("config = 3\n").unwrap_err();
        assert!(
            not_table.contains("line 1, key config: expected a table"),
            "{not_table}"
        );
        let no_url = parse("[servers]\nservers = [{ max_concurrent_requests = 2 }]\n").unwrap_err();
        assert!(
            no_url.contains("key servers.servers[0]: has no url"),
            "{no_url}"
        );
        let c = parse("[config]\nmax_retries = 0\n").unwrap();
        let summary = c.describe();
        assert!(
            summary.contains(" *max_retries"),
            "changed values are marked: {summary}"
        );
        assert!(summary.contains("[routing]"), "{summary}");
    }
}
