//! What servers.toml names but does not hold: secrets in files or environment variables, and
//! TLS certificates and keys. Read when the config is read (so a mistake is reported with the
//! line and key that named the file) and again at every reload.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A secret (an API key): compared, sent, never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    pub fn new(key: String) -> SecretKey {
        SecretKey(key)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// A path as written in servers.toml, made absolute against the file's folder.
pub fn resolve(config: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    match config.parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

/// The most a key file may hold, and a certificate or key file.
const MAX_SECRET_FILE: u64 = 64 * 1024;
const MAX_PEM_FILE: u64 = 1024 * 1024;

/// Reads a file the config names: a regular file (a symlink to one, as Kubernetes mounts
/// secrets, is fine) of at most `limit` bytes, so that a mistake (`/dev/zero`, a FIFO, a huge
/// file) is an error, not a hang or the memory filled.
pub fn read_small(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let mut bytes = Vec::with_capacity(meta.len().min(limit) as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > limit {
        return Err(format!(
            "{} is larger than {limit} bytes; is it the right file?",
            path.display()
        ));
    }
    Ok(bytes)
}

/// A key read from a file: its one line, without surrounding whitespace.
pub fn secret_from_file(path: &Path) -> Result<SecretKey, String> {
    let bytes = read_small(path, MAX_SECRET_FILE)?;
    let text =
        String::from_utf8(bytes).map_err(|_| format!("{} is not text (UTF-8)", path.display()))?;
    checked_secret(text.trim(), &format!("the file {}", path.display()))
}

/// A key read from an environment variable.
pub fn secret_from_env(name: &str) -> Result<SecretKey, String> {
    let value = std::env::var(name).map_err(|e| match e {
        std::env::VarError::NotPresent => format!("the environment variable {name} is not set"),
        std::env::VarError::NotUnicode(_) => {
            format!("the environment variable {name} is not valid UTF-8")
        }
    })?;
    checked_secret(value.trim(), &format!("the environment variable {name}"))
}

/// A key is sent in a header: visible ASCII only (the value itself is never echoed).
fn checked_secret(key: &str, source: &str) -> Result<SecretKey, String> {
    if key.is_empty() {
        return Err(format!("{source} is empty"));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{source} holds characters other than visible ASCII (a key must have no spaces)"
        ));
    }
    Ok(SecretKey(key.to_string()))
}

/// A certificate chain with its private key (PEM files), checked to belong together.
#[derive(Clone)]
pub struct CertAndKey {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    /// Both files' text, as read (reqwest takes an identity as PEM).
    pub pem: Vec<u8>,
}

impl PartialEq for CertAndKey {
    fn eq(&self, other: &CertAndKey) -> bool {
        self.pem == other.pem
    }
}

impl Eq for CertAndKey {}

impl fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertAndKey({} certificates, key)", self.chain.len())
    }
}

/// How the router reaches an `https://` server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerTls {
    /// The name sent as SNI and checked against the certificate: the URL's host (for a
    /// server found by DNS discovery, the entry's host, not the address).
    pub server_name: String,
    /// Trusted roots instead of the system's (`ca_file`).
    pub ca: Option<Vec<CertificateDer<'static>>>,
    /// The router's client certificate (`client_cert_file`, `client_key_file`).
    pub client: Option<CertAndKey>,
}

/// The certificates of a PEM file: at least one, each one a certificate rustls and Pingora
/// can parse (Pingora panics on one it cannot, so it is checked here).
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read_small(path, MAX_PEM_FILE)?;
    certificates_in(&bytes).map_err(|why| format!("{}: {why}", path.display()))
}

fn certificates_in(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("not a valid PEM certificate ({e})"))?;
        x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| format!("holds a certificate that cannot be parsed ({e})"))?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certs)
}

/// A certificate chain and its key, checked to match.
pub fn cert_and_key(cert_path: &Path, key_path: &Path) -> Result<CertAndKey, String> {
    let chain = certificates(cert_path)?;
    let key_pem = read_small(key_path, MAX_PEM_FILE)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{}: holds no PEM private key ({e})", key_path.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("{}: unusable private key ({e})", key_path.display()))?;
    rustls::sign::CertifiedKey::new(chain.clone(), signing)
        .keys_match()
        .map_err(|e| {
            format!(
                "{} is not the key of {} ({e})",
                key_path.display(),
                cert_path.display()
            )
        })?;
    let mut pem = read_small(cert_path, MAX_PEM_FILE)?;
    pem.push(b'\n');
    pem.extend_from_slice(&key_pem);
    Ok(CertAndKey {
        chain,
        key: Arc::new(key),
        pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_trimmed_checked_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("mvllm-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, "sk-abc\n").unwrap();
        let key = secret_from_file(&file).unwrap();
        assert_eq!(key.expose(), "sk-abc");
        assert_eq!(format!("{key:?}"), "SecretKey(..)");
        std::fs::write(&file, "two words\n").unwrap();
        assert!(secret_from_file(&file)
            .unwrap_err()
            .contains("visible ASCII"));
        std::fs::write(&file, "\n").unwrap();
        assert!(secret_from_file(&file).unwrap_err().contains("empty"));
        assert!(secret_from_file(&dir.join("missing"))
            .unwrap_err()
            .contains("cannot read"));
        assert!(secret_from_file(Path::new("/dev/zero"))
            .unwrap_err()
            .contains("not a regular file"));
        std::fs::write(&file, vec![b'a'; 70 * 1024]).unwrap();
        assert!(secret_from_file(&file).unwrap_err().contains("larger than"));
        assert!(secret_from_env("MVLLM_TEST_SURELY_UNSET_VARIABLE")
            .unwrap_err()
            .contains("not set"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn relative_paths_are_relative_to_the_config() {
        let config = Path::new("/etc/mvllm/servers.toml");
        assert_eq!(resolve(config, "key"), Path::new("/etc/mvllm/key"));
        assert_eq!(resolve(config, "/run/key"), Path::new("/run/key"));
    }

    #[test]
    fn bad_pem_is_refused_not_a_panic() {
        assert!(certificates_in(b"").unwrap_err().contains("no PEM"));
        let junk = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(certificates_in(junk)
            .unwrap_err()
            .contains("cannot be parsed"));
    }
}
