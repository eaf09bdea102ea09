//! TLS on both sides: `https://` servers (a CA bundle, client certificates, SNI and name
//! checks, errors reported with their reason) and the TLS listener for clients (with a
//! certificate renewed on disk taken without a restart). Every certificate is made here.

mod common;

use std::path::{Path, PathBuf};

use common::{get_json, poll_until, run_mvllm, RouterProcess, Sim};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use serde_json::{json, Value};

/// A test certificate authority and the files of what it signed.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    dir: PathBuf,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let dir = std::env::temp_dir().join(format!("mvllm-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("mvllm test CA {name}"));
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        Ca { cert, key, dir }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn ca_pem(&self) -> Vec<u8> {
        self.cert.pem().into_bytes()
    }

    /// Signs a certificate for `names`, for a server or a client; returns its (cert, key)
    /// files, written as `<file>.pem` and `<file>.key`.
    fn sign(&self, file: &str, names: &[&str], client: bool) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, file);
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (cert_file, key_file) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// A client that trusts only `ca` (and presents `identity`, PEM, if given).
fn client_trusting(ca: &[u8], identity: Option<Vec<u8>>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca).unwrap())
        .no_proxy()
        // A new connection (and handshake) for every request: the listener test looks at
        // the certificate presented now.
        .pool_max_idle_per_host(0)
        .timeout(std::time::Duration::from_secs(10));
    if let Some(pem) = identity {
        builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

fn identity(cert: &Path, key: &Path) -> Vec<u8> {
    let mut pem = std::fs::read(cert).unwrap();
    pem.extend(std::fs::read(key).unwrap());
    pem
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn chat(stream: bool) -> Value {
    json!({
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
        "stream": stream,
    })
}

#[tokio::test]
async fn https_servers_with_a_ca_bundle_and_a_client_certificate() {
    let ca = Ca::new("servers");
    let (cert, key) = ca.sign("server", &["localhost"], false);
    let (client_cert, client_key) = ca.sign("router", &["router"], true);
    let trusting = client_trusting(&ca.ca_pem(), None);
    let with_cert = client_trusting(&ca.ca_pem(), Some(identity(&client_cert, &client_key)));
    let ca_file = ca.ca_file();
    let tls = ["--ssl-certfile", path(&cert), "--ssl-keyfile", path(&key)];
    let common_args = ["--served-model-name", "m", "--itl-ms", "1"];
    let open = Sim::start_tls(&[&common_args[..], &tls[..]].concat(), trusting.clone()).await;
    let mtls = ["--ssl-ca-certs", path(&ca_file)];
    let mutual = Sim::start_tls(
        &[&common_args[..], &tls[..], &mtls[..]].concat(),
        with_cert.clone(),
    )
    .await;
    // The mTLS sim refuses a client without a certificate.
    assert!(trusting.get(mutual.at("/health")).send().await.is_err());

    let text = format!(
        r#"[servers]
servers = [
  {{ url = "https://localhost:{}", ca_file = "{}" }},
  {{ url = "https://localhost:{}", ca_file = "{}", client_cert_file = "{}", client_key_file = "{}" }},
]
[config]
metrics_interval = 0.2
[routing]
policy = "round-robin"
"#,
        port_of(&open.url),
        ca.ca_file().display(),
        port_of(&mutual.url),
        ca.ca_file().display(),
        client_cert.display(),
        client_key.display(),
    );
    let router = RouterProcess::launch_toml(&text).await;
    router.wait_healthy(2).await;
    for _ in 0..4 {
        let response = common::send_json(router.at("/v1/chat/completions"), &chat(false)).await;
        assert_eq!(response.status(), 200);
        let streamed = common::send_json(router.at("/v1/chat/completions"), &chat(true)).await;
        assert_eq!(streamed.status(), 200);
        let body = streamed.text().await.unwrap();
        assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    }
    // Both servers answered, over TLS.
    for sim in [&open, &mutual] {
        let metrics = with_cert
            .get(sim.at("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            common::series(&metrics, "vllm:request_success_total", &[]) >= 4.0,
            "{}: {metrics}",
            sim.url
        );
    }
}

#[tokio::test]
async fn certificate_errors_are_reported_with_their_reason() {
    let ca = Ca::new("errors");
    let (cert, key) = ca.sign("server", &["localhost"], false);
    let trusting = client_trusting(&ca.ca_pem(), None);
    let tls = ["--ssl-certfile", path(&cert), "--ssl-keyfile", path(&key)];
    let sim = Sim::start_tls(&tls, trusting).await;
    let (client_cert, client_key) = ca.sign("probe", &["probe"], true);
    let with_cert = client_trusting(&ca.ca_pem(), Some(identity(&client_cert, &client_key)));
    let ca_file = ca.ca_file();
    let mtls = ["--ssl-ca-certs", path(&ca_file)];
    let mutual = Sim::start_tls(&[&tls[..], &mtls[..]].concat(), with_cert).await;
    let port = port_of(&sim.url);
    let text = format!(
        r#"[servers]
servers = [
  {{ url = "https://localhost:{port}" }},
  {{ url = "https://127.0.0.1:{port}", ca_file = "{ca}" }},
  {{ url = "https://localhost:{mport}", ca_file = "{ca}" }},
]
[config]
metrics_interval = 0.2
"#,
        ca = ca_file.display(),
        mport = port_of(&mutual.url),
    );
    let router = RouterProcess::launch_toml(&text).await;
    let errors = |health: &Value| -> Vec<String> {
        health["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["last_error"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let health_url = router.at("/health");
    poll_until("the TLS failures were never reported".into(), || async {
        // (The router may not listen yet: its address line comes first.)
        let Ok(response) = common::client().get(&health_url).send().await else {
            return false;
        };
        let health: Value = response.json().await.unwrap();
        errors(&health).iter().filter(|e| !e.is_empty()).count() >= 3
    })
    .await;
    let health = get_json(router.at("/health")).await;
    let errors = errors(&health);
    // Not signed by a root the system trusts; the right CA but the wrong name (SNI and the
    // name check follow the URL's host); a server that wants a client certificate.
    assert!(errors[0].contains("UnknownIssuer"), "{errors:?}");
    assert!(
        errors[1].contains("not valid for name \"127.0.0.1\""),
        "{errors:?}"
    );
    assert!(errors[2].contains("CertificateRequired"), "{errors:?}");

    // `mvllm probe` says the same, and succeeds with the CA.
    let url = format!("https://localhost:{port}");
    let (code, out, _) = run_mvllm(&["probe", &url]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("FAILED") && out.contains("UnknownIssuer"),
        "{out}"
    );
    let (code, out, _) = run_mvllm(&["probe", &url, "--ca-file", path(&ca_file)]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("healthy"), "{out}");
}

#[tokio::test]
async fn the_tls_listener_serves_clients_and_takes_a_renewed_certificate() {
    let sim = Sim::start(&["--served-model-name", "m", "--itl-ms", "1"]).await;
    let first = Ca::new("listener-1");
    let (cert, key) = first.sign("router", &["localhost"], false);
    let https_port = common::free_port();
    let text = format!(
        r#"[servers]
servers = [{{ url = "{}" }}]
[config]
metrics_interval = 0.2
[tls]
listen = "127.0.0.1:{https_port}"
cert_file = "{}"
key_file = "{}"
"#,
        sim.url,
        cert.display(),
        key.display()
    );
    let router = RouterProcess::launch_toml(&text).await;
    router.wait_healthy(1).await;
    router.output.wait_stdout("serving https").await;
    let https = format!("https://localhost:{https_port}");
    let old_trust = client_trusting(&first.ca_pem(), None);
    let response = old_trust
        .post(format!("{https}/v1/chat/completions"))
        .json(&chat(false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Plain HTTP is still served on the main port.
    assert_eq!(
        common::send_json(router.at("/v1/chat/completions"), &chat(false))
            .await
            .status(),
        200
    );

    // A renewal (from another CA here, to tell them apart) written over the same files.
    let second = Ca::new("listener-2");
    let (new_cert, new_key) = second.sign("router", &["localhost"], false);
    std::fs::copy(&new_key, &key).unwrap();
    std::fs::copy(&new_cert, &cert).unwrap();
    // A new client for each look: one that resumed its TLS session would not be shown the
    // certificate again.
    let trusted_by = |ca: &Ca| {
        let (ca, url) = (ca.ca_pem(), format!("{https}/health"));
        async move { client_trusting(&ca, None).get(url).send().await.is_ok() }
    };
    poll_until("the renewed certificate was never presented".into(), || {
        trusted_by(&second)
    })
    .await;
    assert!(!trusted_by(&first).await);

    // A broken renewal (a key that is not the certificate's) is refused: the one in use stays.
    let (_, other_key) = second.sign("other", &["localhost"], false);
    let refusals = || {
        router
            .output
            .stderr()
            .matches("TLS certificate NOT reloaded")
            .count()
    };
    let before = refusals();
    std::fs::copy(&other_key, &key).unwrap();
    poll_until("a broken renewal was not reported".into(), || async {
        refusals() > before
    })
    .await;
    assert!(trusted_by(&second).await);
}
