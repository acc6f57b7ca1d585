//! HTTPS and WSS through the real `greenroom` binary: a certificate generated here (rcgen) and
//! configured in `[server.tls]` is the only trust anchor of the clients, so the handshake really
//! checks the server's certificate; and `serve --dev-tls` answers HTTPS with its own certificate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ops_support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use greenroom_proto::Role;
use ops_support::{command, free_tcp, free_udp, temp_dir, token, wait_ready, Server};
use rustls::pki_types::ServerName;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn https_and_wss_join_with_a_configured_certificate() {
    let dir = temp_dir("tls");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, ck.cert.pem()).unwrap();
    std::fs::write(&key_path, ck.signing_key.serialize_pem()).unwrap();
    let http = free_tcp();
    let file = dir.join("greenroom.toml");
    std::fs::write(
        &file,
        format!(
            "[server.tls]\ncert_path = {:?}\nkey_path = {:?}\n",
            cert_path.display().to_string(),
            key_path.display().to_string()
        ),
    )
    .unwrap();
    let mut cmd = command();
    cmd.arg("--config").arg(&file).args([
        "serve",
        "--http-addr",
        &http.to_string(),
        "--udp-addr",
        &free_udp().to_string(),
    ]);
    let mut server = Server::spawn(&mut cmd, http, &dir);

    // HTTPS, trusting only the generated certificate.
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", http)
        .build()
        .unwrap();
    let base = format!("https://localhost:{}", http.port());
    wait_ready(&mut server, &client, &format!("{base}/healthz")).await;
    let health: serde_json::Value = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{http}/healthz"))
        .timeout(Duration::from_secs(3))
        .send()
        .await;
    assert!(
        plain.map(|r| !r.status().is_success()).unwrap_or(true),
        "plain HTTP served"
    );
    // A client that does not trust the certificate is refused.
    let untrusting = reqwest::Client::builder()
        .resolve("localhost", http)
        .build()
        .unwrap();
    assert!(untrusting
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_err());

    // WSS join over rustls trusting the same certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(http).await.unwrap();
    let stream = timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .unwrap()
    .unwrap();
    let url = format!(
        "wss://localhost:{}/v1/signal?token={}",
        http.port(),
        token("alice", Role::User)
    );
    let (mut ws, _) = timeout(WAIT, tokio_tungstenite::client_async(url, stream))
        .await
        .unwrap()
        .unwrap();
    ws.send(Message::text(
        r#"{"type":"join","call_cid":"default:tls-room","create":true}"#,
    ))
    .await
    .unwrap();
    let joined = timeout(WAIT, async {
        while let Some(m) = ws.next().await {
            if let Message::Text(t) = m.unwrap() {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "joined" {
                    return v;
                }
                assert_ne!(v["type"], "error", "{v}");
            }
        }
        panic!("socket closed before joined:\n{}", server.log());
    })
    .await
    .expect("no joined message");
    assert_eq!(joined["call"]["cid"], "default:tls-room", "{joined}");
    let _ = ws.close(None).await;
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn dev_tls_serves_https_with_a_generated_certificate() {
    let dir = temp_dir("devtls");
    let http = free_tcp();
    let mut cmd = command();
    cmd.args([
        "serve",
        "--dev-tls",
        "--http-addr",
        &http.to_string(),
        "--udp-addr",
        &free_udp().to_string(),
    ]);
    let mut server = Server::spawn(&mut cmd, http, &dir);
    // The certificate is made at start-up, so only an accept-anything client can check it works.
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    wait_ready(&mut server, &client, &format!("https://{http}/healthz")).await;
    // ...and a verifying client refuses it (it is not a publicly trusted certificate).
    assert!(reqwest::Client::new()
        .get(format!("https://{http}/healthz"))
        .send()
        .await
        .is_err());
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}
