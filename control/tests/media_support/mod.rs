//! A real server (HTTP, signaling, media plane on an ephemeral UDP port) for media tests.

use std::sync::Arc;

use greenroom_control::config::Config;
use greenroom_control::AppState;

/// A running server and its shared state.
pub struct Server {
    /// Base URL, `http://127.0.0.1:<port>`.
    pub url: String,
    /// The server's state (tokens are minted with its `auth`).
    pub state: Arc<AppState>,
}

/// Starts the whole server on ephemeral ports.
pub async fn server() -> Server {
    let mut config = Config::default();
    config.rtc.udp_addr = "127.0.0.1:0".parse().unwrap();
    let state = greenroom_control::start_state(config, true).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = greenroom_control::app(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        url: format!("http://{addr}"),
        state,
    }
}
