//! Greenroom's control plane: calls, roles and capabilities (a pure state machine), tokens, the
//! HTTP API, the signaling WebSocket, and the glue that programs the media plane.

pub mod api;
pub mod auth;
pub mod call;
pub mod cluster;
pub mod config;
pub mod error;
pub mod extract;
pub mod history;
pub mod media_plane;
pub mod metrics;
pub mod policy;
pub mod ring;
pub mod ringing;
pub mod server;
pub mod signal;
pub mod state;
pub mod tls;
pub mod turn;
pub mod webhook;

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;
use tower_http::services::ServeDir;

pub use state::AppState;

/// The folder of the web app and SDK built into this crate.
pub fn default_web_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/web"))
}

/// The whole HTTP application: API, signaling WebSocket and static web app.
pub fn app(state: Arc<AppState>) -> Router {
    let web_root = state
        .config
        .server
        .web_root
        .clone()
        .unwrap_or_else(default_web_root);
    let limit = state.config.limits.max_body_bytes;
    api::routes()
        // Cluster mode: requests for a call homed on another node go there (a no-op otherwise).
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            cluster::proxy::forward_to_home,
        ))
        .route("/v1/signal", get(signal::signal))
        .route(cluster::media_rpc::PATH, get(cluster::media_rpc::handler))
        .route("/metrics", get(metrics::handler))
        .layer(DefaultBodyLimit::max(limit))
        .fallback_service(ServeDir::new(web_root))
        .with_state(state)
}

/// Starts the media plane (when `with_media`) and returns the shared state. Media events are
/// pumped into the state by a background task.
pub async fn start_state(
    mut config: config::Config,
    with_media: bool,
) -> Result<Arc<AppState>, greenroom_sfu::SfuError> {
    if !with_media {
        return Ok(AppState::new(config, None));
    }
    let sfu_config = greenroom_sfu::SfuConfig {
        bind: config.rtc.udp_addr,
        advertise_ip: config.rtc.node_ip,
    };
    let options = greenroom_sfu::SfuOptions {
        shards: config.rtc.shards,
        parallel_fanout_min: config.rtc.parallel_fanout_min,
        parallel_busy: config.rtc.parallel_busy,
        lean_audio: config.rtc.lean_audio,
        lean_video: config.rtc.lean_video,
        lean_ingress: config.rtc.lean_ingress,
        socket_buffer_bytes: config.rtc.socket_buffer_bytes,
        ice_tcp_port: Some(
            config
                .rtc
                .ice_tcp_port
                .unwrap_or(config.rtc.udp_addr.port()),
        )
        .filter(|p| *p != 0),
        relay: relay_options(&mut config),
        ..Default::default()
    };
    let options = match config.rtc.send_batch {
        Some(n) => greenroom_sfu::SfuOptions {
            send_batch: n,
            ..options
        },
        None => options,
    };
    let started = match greenroom_sfu::Sfu::start_with(sfu_config.clone(), options.clone()).await {
        // ICE-TCP on its default port (the UDP port's number) is a convenience: when that TCP
        // port is taken, run without it rather than not at all. A configured port must bind.
        Err(greenroom_sfu::SfuError::BindTcp(addr, e)) if config.rtc.ice_tcp_port.is_none() => {
            tracing::warn!(%addr, "ICE over TCP off: cannot bind its default port: {e}");
            let options = greenroom_sfu::SfuOptions {
                ice_tcp_port: None,
                ..options
            };
            greenroom_sfu::Sfu::start_with(sfu_config, options).await
        }
        other => other,
    };
    let (sfu, mut events) = started?;
    tracing::info!(shards = sfu.shard_count(), "media engine started");
    let state = AppState::new(config, Some(sfu));
    let weak = Arc::downgrade(&state);
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            match weak.upgrade() {
                Some(s) => s.on_sfu_event(ev),
                None => break,
            }
        }
    });
    Ok(state)
}

/// Cluster mode: the node-to-node RTP relay's options (bind address, this node's id, a secret
/// derived from the shared API secret); `None` outside cluster mode or when `cluster.relay_bind`
/// is empty or not an address (logged).
fn relay_options(config: &mut config::Config) -> Option<greenroom_sfu::RelayOptions> {
    use sha2::Digest;
    let node_id = state::resolve_node_id(config)?;
    let c = config.cluster.as_ref()?;
    if c.relay_bind.is_empty() {
        return None;
    }
    let bind = match c.relay_bind.parse() {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(
                "cluster.relay_bind {:?}: {e}: calls will not span nodes",
                c.relay_bind
            );
            return None;
        }
    };
    let mut h = sha2::Sha256::new();
    h.update(b"greenroom-relay-v1\0");
    h.update(config.keys.api_secret.as_bytes());
    Some(greenroom_sfu::RelayOptions {
        bind,
        node_id,
        secret: h.finalize().into(),
    })
}
