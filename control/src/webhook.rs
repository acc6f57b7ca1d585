//! Webhooks: call events POSTed to configured URLs.
//!
//! Each receiver has its own task and bounded queue, so a receiver that is down blocks neither the
//! server nor the other receivers. Deliveries to one receiver are sequential, so events arrive in
//! order (per call and overall). A failed delivery is retried with exponential backoff (capped)
//! until it succeeds or `max_retry_secs` passes. Each delivery carries an id for idempotency and an
//! HMAC-SHA256 signature over `"{timestamp}.{body}"`:
//!
//! ```text
//! X-Greenroom-Webhook-Id: 3f1e...            (same id on every retry)
//! X-Greenroom-Timestamp: 1795262509          (Unix seconds)
//! X-Greenroom-Signature: sha256=<hex>        (HMAC-SHA256(secret, timestamp + "." + body))
//! ```
//!
//! On shutdown the server waits (at most `flush_secs`) for every queued event to be delivered
//! or given up ([`Webhooks::flush`]) before it exits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::auth::{unix_now, unix_now_ms};

/// Webhook configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Receiver URLs; every event goes to each.
    pub urls: Vec<String>,
    /// HMAC secret (defaults to the API secret when empty).
    pub secret: String,
    /// How long one delivery is retried before it is dropped.
    pub max_retry_secs: u64,
    /// Events queued per receiver before the oldest are dropped.
    pub queue_size: usize,
    /// Timeout of one POST.
    pub timeout_ms: u64,
    /// On shutdown, how long to wait for queued events to be delivered before exiting.
    pub flush_secs: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            urls: Vec::new(),
            secret: String::new(),
            max_retry_secs: 600,
            queue_size: 10_000,
            timeout_ms: 5_000,
            flush_secs: 5,
        }
    }
}

/// The JSON body of one webhook delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEnvelope {
    /// Unique id of this event (idempotency key).
    pub id: String,
    /// Monotonic sequence number, per server process.
    pub seq: u64,
    /// The event type, e.g. `call.ended`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Unix milliseconds when the event happened.
    pub created_at_ms: u64,
    /// The event itself.
    pub event: serde_json::Value,
}

/// Computes the signature header value for a body.
pub fn sign(secret: &str, timestamp: u64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so new_from_slice cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks a signature (constant time), for receivers written in Rust and for tests.
pub fn verify(secret: &str, timestamp: u64, body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(raw) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&raw).is_ok()
}

/// Sends events to every configured receiver.
#[derive(Debug)]
pub struct Webhooks {
    senders: Vec<mpsc::Sender<WebhookEnvelope>>,
    seq: std::sync::atomic::AtomicU64,
    /// Deliveries queued or in flight (all receivers).
    pending: Arc<AtomicUsize>,
}

impl Webhooks {
    /// Starts one delivery task per receiver. Must run inside a tokio runtime.
    pub fn start(cfg: &WebhookConfig, default_secret: &str) -> Option<Webhooks> {
        if cfg.urls.is_empty() {
            return None;
        }
        let secret = if cfg.secret.is_empty() {
            default_secret.to_owned()
        } else {
            cfg.secret.clone()
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .build()
            .ok()?;
        let pending = Arc::new(AtomicUsize::new(0));
        let senders = cfg
            .urls
            .iter()
            .map(|url| {
                let (tx, rx) = mpsc::channel(cfg.queue_size.max(1));
                tokio::spawn(deliver_loop(
                    client.clone(),
                    url.clone(),
                    secret.clone(),
                    Duration::from_secs(cfg.max_retry_secs),
                    rx,
                    pending.clone(),
                ));
                tx
            })
            .collect();
        Some(Webhooks {
            senders,
            seq: std::sync::atomic::AtomicU64::new(0),
            pending,
        })
    }

    /// Deliveries queued or in flight, all receivers together.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Waits until every queued event has been delivered (or given up), at most `within`.
    /// Returns whether the queue is empty.
    pub async fn flush(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.pending() > 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    pending = self.pending(),
                    "webhooks not delivered before shutdown: dropped"
                );
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Queues an event for every receiver; never blocks. A full queue drops the event with a
    /// warning (the receiver has been down for longer than the queue can hold).
    pub fn send(&self, kind: &str, event: serde_json::Value) {
        let env = WebhookEnvelope {
            id: uuid::Uuid::new_v4().to_string(),
            seq: self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            kind: kind.to_owned(),
            created_at_ms: unix_now_ms(),
            event,
        };
        for tx in &self.senders {
            // Counted before it is queued, so the delivery task never sees it uncounted.
            self.pending.fetch_add(1, Ordering::SeqCst);
            if tx.try_send(env.clone()).is_err() {
                self.pending.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!(kind, "webhook queue full or closed: event dropped");
                crate::metrics::WEBHOOKS
                    .with_label_values(&["dropped"])
                    .inc();
            }
        }
    }
}

async fn deliver_loop(
    client: reqwest::Client,
    url: String,
    secret: String,
    max_retry: Duration,
    mut rx: mpsc::Receiver<WebhookEnvelope>,
    pending: Arc<AtomicUsize>,
) {
    while let Some(env) = rx.recv().await {
        deliver_one(&client, &url, &secret, max_retry, &env).await;
        pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Delivers one event, retrying until it is accepted or `max_retry` has passed.
async fn deliver_one(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    max_retry: Duration,
    env: &WebhookEnvelope,
) {
    let body = match serde_json::to_vec(env) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("cannot serialize webhook: {e}");
            return;
        }
    };
    let started = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        let ts = unix_now();
        let res = client
            .post(url)
            .header("content-type", "application/json")
            .header("x-greenroom-webhook-id", &env.id)
            .header("x-greenroom-timestamp", ts.to_string())
            .header("x-greenroom-signature", sign(secret, ts, &body))
            .body(body.clone())
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => {
                crate::metrics::WEBHOOKS
                    .with_label_values(&["delivered"])
                    .inc();
                break;
            }
            Ok(r) => tracing::debug!(url, status = %r.status(), "webhook refused, retrying"),
            Err(e) => tracing::debug!(url, "webhook failed, retrying: {e}"),
        }
        crate::metrics::WEBHOOKS
            .with_label_values(&["retried"])
            .inc();
        if started.elapsed() > max_retry {
            tracing::warn!(url, id = env.id, "webhook given up after retries");
            crate::metrics::WEBHOOKS
                .with_label_values(&["dropped"])
                .inc();
            break;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_verifies_and_detects_tampering() {
        let s = sign("k", 100, b"{\"a\":1}");
        assert!(s.starts_with("sha256="));
        assert!(verify("k", 100, b"{\"a\":1}", &s));
        assert!(!verify("k", 101, b"{\"a\":1}", &s));
        assert!(!verify("k", 100, b"{\"a\":2}", &s));
        assert!(!verify("other", 100, b"{\"a\":1}", &s));
        assert!(!verify("k", 100, b"{\"a\":1}", "sha256=zz"));
    }
}
