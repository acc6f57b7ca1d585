//! What the load tester's integration tests share: log setup and the whole Greenroom server
//! (HTTP, signaling and media plane) started in the test's process on ephemeral ports.
// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::sync::Arc;

use greenroom_control::config::Config;
use greenroom_control::AppState;

/// Logs to the test's output, filtered by `RUST_LOG` (default `warn`); once per process.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The default configuration with the media plane on an ephemeral UDP port of 127.0.0.1.
pub fn local_config() -> Config {
    let mut config = Config::default();
    config.rtc.udp_addr = "127.0.0.1:0".parse().unwrap();
    config
}

/// Starts the whole server with `config` (HTTP on an ephemeral port); returns its base URL
/// and its state.
pub async fn server_with(config: Config) -> (String, Arc<AppState>) {
    let state = greenroom_control::start_state(config, true).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = greenroom_control::app(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), state)
}

/// Starts the whole server with [`local_config`]; returns its base URL.
pub async fn server() -> String {
    server_with(local_config()).await.0
}
