//! TLS on both sides, with rustls (Pingora's `rustls` feature, ring as the provider).
//!
//! - To servers (`https://` URLs): [`BackendTls`] is what a Pingora peer needs (SNI, the
//!   configured CA bundle or else the system's roots, the client certificate for mTLS), made
//!   once per config; [`scrape_client`] builds the poller's HTTP client with the same trust.
//! - From clients (`[tls]`): [`ClientListener`] is a TLS listener whose certificate is read
//!   again whenever its files change ([`CertReloader`], a background service), so a renewal
//!   (certbot, cert-manager) needs no restart. A renewal that does not load (a key that does
//!   not match, a half-written file) is logged and the certificate in use stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::tls::CaType;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::utils::tls::{CertKey, WrappedX509};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{CertAndKey, ServerTls, TlsListener};

/// What a peer of an `https://` server carries.
#[derive(Clone)]
pub struct BackendTls {
    /// SNI, and the name the certificate must carry.
    pub server_name: String,
    /// Trusted roots instead of the system's.
    pub ca: Option<Arc<CaType>>,
    /// The router's client certificate.
    pub client: Option<Arc<CertKey>>,
}

impl BackendTls {
    /// From a server's TLS settings (their certificates were checked when the config was
    /// read, so Pingora's parsing of them cannot fail).
    pub fn new(tls: &ServerTls) -> BackendTls {
        let ca = tls.ca.as_ref().map(|certs| {
            let wrapped: Vec<WrappedX509> = certs
                .iter()
                .map(|c| WrappedX509::new(c.to_vec(), pingora::utils::tls::parse_x509))
                .collect();
            Arc::<CaType>::from(wrapped.into_boxed_slice())
        });
        let client = tls.client.as_ref().map(|pair| {
            let chain = pair.chain.iter().map(|c| c.to_vec()).collect();
            Arc::new(CertKey::new(chain, pair.key.secret_der().to_vec()))
        });
        BackendTls {
            server_name: tls.server_name.clone(),
            ca,
            client,
        }
    }
}

/// The poller's client for one server: plain, or with the server's TLS trust and client
/// certificate. `resolve` pins the server's name to an address (a server found by DNS
/// discovery is reached at its address but named by its entry's host, which its certificate
/// carries).
pub fn scrape_client(
    builder: reqwest::ClientBuilder,
    tls: Option<&ServerTls>,
    resolve: Option<std::net::SocketAddr>,
) -> Result<reqwest::Client, String> {
    let mut builder = builder;
    let Some(tls) = tls else {
        // Plain http: no trust store to load (the system's roots cost ~20M instructions and
        // a few hundred KiB per client).
        return builder
            .tls_built_in_root_certs(false)
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"));
    };
    if let Some(ca) = &tls.ca {
        builder = builder.tls_built_in_root_certs(false);
        for cert in ca {
            let cert =
                reqwest::Certificate::from_der(cert).map_err(|e| format!("CA certificate: {e}"))?;
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some(pair) = &tls.client {
        let identity = reqwest::Identity::from_pem(&pair.pem)
            .map_err(|e| format!("client certificate: {e}"))?;
        builder = builder.identity(identity);
    }
    if let Some(addr) = resolve {
        builder = builder.resolve(&tls.server_name, addr);
    }
    builder = builder.use_rustls_tls();
    builder
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// The TLS listener for clients: its address and Pingora's settings (with the reloading
/// certificate resolver).
pub struct ClientListener {
    pub address: std::net::SocketAddr,
    pub settings: TlsSettings,
    pub reloader: CertReloader,
}

impl ClientListener {
    /// The listener `[tls]` asks for, if any (`config_path` places relative file names).
    pub fn from_config(tls: &TlsListener, config_path: &Path) -> anyhow::Result<Option<Self>> {
        let (Some(address), Some(cert), Some(key)) = (tls.listen, &tls.cert_file, &tls.key_file)
        else {
            return Ok(None);
        };
        let resolve = |p: &str| crate::config::resolve_path(config_path, p);
        let (cert_path, key_path) = (resolve(cert), resolve(key));
        let pair = crate::config::load_cert_and_key(&cert_path, &key_path)
            .map_err(|why| anyhow::anyhow!("error: tls: {why}"))?;
        let current = Arc::new(CurrentCert(ArcSwap::from_pointee(certified(&pair)?)));
        let mut settings =
            TlsSettings::intermediate(&cert_path.to_string_lossy(), &key_path.to_string_lossy())
                .map_err(|e| anyhow::anyhow!("error: tls: {e}"))?;
        settings.set_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        Ok(Some(ClientListener {
            address,
            settings,
            reloader: CertReloader {
                cert_path,
                key_path,
                current,
                seen: std::sync::Mutex::new(None),
            },
        }))
    }
}

fn certified(pair: &CertAndKey) -> anyhow::Result<CertifiedKey> {
    let signing = rustls::crypto::ring::sign::any_supported_type(&pair.key)
        .map_err(|e| anyhow::anyhow!("unusable private key: {e}"))?;
    Ok(CertifiedKey::new(pair.chain.clone(), signing))
}

/// The certificate the listener presents now.
#[derive(Debug)]
pub struct CurrentCert(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// Reads the listener's certificate and key again when either file changes.
pub struct CertReloader {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: Arc<CurrentCert>,
    /// The files' contents (hashed) last loaded or tried.
    seen: std::sync::Mutex<Option<u64>>,
}

/// How often the files are looked at: cheap (two small reads), and a renewal shows within it.
const CHECK_EVERY: Duration = Duration::from_secs(1);

impl CertReloader {
    /// Loads the files if they changed since last time; returns whether a new certificate
    /// was put in use.
    pub fn check(&self) -> bool {
        let (Ok(cert), Ok(key)) = (
            crate::config::read_small(&self.cert_path, 1 << 20),
            crate::config::read_small(&self.key_path, 1 << 20),
        ) else {
            return false; // mid-rename, or gone: keep what is in use
        };
        let hash = xxhash_rust::xxh3::xxh3_64(&[cert, key].concat());
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.is_none() {
            *seen = Some(hash); // the files loaded at start
            return false;
        }
        if *seen == Some(hash) {
            return false;
        }
        *seen = Some(hash);
        let loaded = crate::config::load_cert_and_key(&self.cert_path, &self.key_path)
            .map_err(anyhow::Error::msg)
            .and_then(|pair| certified(&pair));
        match loaded {
            Ok(certified) => {
                self.current.0.store(Arc::new(certified));
                tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::error!(cert = %self.cert_path.display(), error = %e, "TLS certificate NOT reloaded, the one in use stays");
                false
            }
        }
    }
}

#[async_trait]
impl BackgroundService for CertReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.check();
        let mut every = tokio::time::interval(CHECK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = every.tick() => {}
            }
            // Two small file reads (and a key parse when they changed): cheap enough to do
            // here.
            self.check();
        }
    }
}
