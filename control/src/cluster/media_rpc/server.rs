//! The media node's end of a media channel: `GET /v1/cluster/media`, applying a home's
//! operations to this node's media plane and tearing down what the channel created when it ends.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::ws::{Message as AxMessage, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use greenroom_proto::CallCid;
use greenroom_sfu::{JoinOptions, RelayNode};
use tokio::sync::mpsc;

use super::wire::{Frame, Hello, Op, Request, WireEvent};
use super::QUEUE;
use crate::auth::AuthError;
use crate::error::ApiError;
use crate::state::AppState;

/// `GET /v1/cluster/media`: a home node's media channel to this node (admin token signed by
/// the shared key; 401 otherwise, 404 outside cluster mode).
pub async fn handler(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    if state.cluster.get().is_none() {
        return Err(ApiError::NotFound("cluster mode is off".into()));
    }
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or(AuthError::Missing)?;
    let claims = state.auth.verify(token)?;
    if !claims.admin {
        return Err(ApiError::Forbidden(
            "the media channel needs a node token".into(),
        ));
    }
    Ok(ws
        .max_message_size(16 << 20)
        .on_upgrade(move |socket| serve(state, socket)))
}

/// What one served channel created on this node (torn down when it ends).
#[derive(Default)]
struct Created {
    /// Participants (local and remote) and their call.
    pids: HashMap<String, CallCid>,
    /// Calls with participants or a node set here.
    calls: HashSet<CallCid>,
}

impl Created {
    /// Forgets a participant; returns its call when no other participant of it is left here.
    fn remove(&mut self, pid: &str) -> Option<CallCid> {
        let call = self.pids.remove(pid)?;
        if self.pids.values().any(|c| *c == call) {
            return None;
        }
        self.calls.remove(&call);
        Some(call)
    }
}

async fn serve(state: Arc<AppState>, socket: WebSocket) {
    let conn = state.media.next_conn_id();
    let (ev_tx, mut ev_rx) = mpsc::channel::<WireEvent>(QUEUE);
    let (mut sink, mut stream) = socket.split();
    let mut created = Created::default();
    let mut home = String::new();
    loop {
        tokio::select! {
            ev = ev_rx.recv() => {
                let Some(event) = ev else { break };
                let Ok(text) = serde_json::to_string(&Frame::Event { event }) else { continue };
                if sink.send(AxMessage::Text(text.into())).await.is_err() {
                    break;
                }
            }
            m = stream.next() => {
                let text = match m {
                    Some(Ok(AxMessage::Text(t))) => t,
                    Some(Ok(AxMessage::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => continue,
                };
                let req: Request = match serde_json::from_str(text.as_str()) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!("media channel: bad request: {e}");
                        continue;
                    }
                };
                if let Op::Hello { node_id } = &req.op {
                    home = node_id.clone();
                    tracing::info!(home = %home, "media channel from a home node");
                }
                let id = req.id;
                let result = apply(&state, conn, &ev_tx, &mut created, req.op).await;
                if let Some(id) = id {
                    let frame = match result {
                        Ok(v) => Frame::Reply { id, result: Some(v), error: None },
                        Err(e) => Frame::Reply { id, result: None, error: Some(e) },
                    };
                    let Ok(text) = serde_json::to_string(&frame) else { continue };
                    if sink.send(AxMessage::Text(text.into())).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    tracing::info!(home = %home, participants = created.pids.len(), "media channel ended: tearing down");
    if let Some(sfu) = &state.sfu {
        for pid in created.pids.keys() {
            sfu.leave(pid);
        }
        for call in &created.calls {
            sfu.set_call_nodes(call, Vec::new());
        }
    }
    let pids: HashSet<String> = created.pids.into_keys().collect();
    state.media.unserve(conn, &pids, &created.calls);
}

/// Applies one operation to this node's media plane.
async fn apply(
    state: &AppState,
    conn: u64,
    events: &mpsc::Sender<WireEvent>,
    created: &mut Created,
    op: Op,
) -> Result<serde_json::Value, String> {
    let sfu = state
        .sfu
        .as_ref()
        .ok_or_else(|| "the media plane is not running".to_owned())?;
    match op {
        Op::Hello { .. } => {
            let node_id = state.media.node_id().unwrap_or_default().to_owned();
            serde_json::to_value(Hello {
                node_id,
                relay_addr: state.media.relay_advertise(),
            })
            .map_err(|e| e.to_string())
        }
        Op::Join {
            call,
            pid,
            user_id,
            gate,
            version,
            bandwidth_estimation,
        } => {
            state.media.serve(conn, &pid, &call, events.clone());
            let options = JoinOptions {
                bandwidth_estimation,
            };
            sfu.join_with(&call, &pid, &user_id, gate.into(), options);
            sfu.set_gate_versioned(&pid, gate.into(), version);
            created.pids.insert(pid, call.clone());
            created.calls.insert(call);
            Ok(serde_json::Value::Null)
        }
        Op::JoinRemote {
            call,
            pid,
            user_id,
            node_id,
            gate,
            version,
        } => {
            state.media.serve(conn, &pid, &call, events.clone());
            sfu.join_remote(&call, &pid, &user_id, &node_id, gate.into(), version);
            created.pids.insert(pid, call.clone());
            created.calls.insert(call);
            Ok(serde_json::Value::Null)
        }
        Op::SetCallNodes { call, nodes } => {
            let forget = nodes.is_empty() && !created.pids.values().any(|c| *c == call);
            let nodes = nodes
                .into_iter()
                .map(|n| RelayNode {
                    node_id: n.node_id,
                    addr: n.addr,
                })
                .collect();
            sfu.set_call_nodes(&call, nodes);
            if forget {
                // The node left the call: nothing of it stays here.
                created.calls.remove(&call);
                state
                    .media
                    .unserve(conn, &HashSet::new(), &HashSet::from([call]));
            } else {
                state.media.serve_call(conn, &call, events.clone());
                created.calls.insert(call);
            }
            Ok(serde_json::Value::Null)
        }
        Op::SetGate { pid, gate, version } => {
            Ok(sfu.set_gate_versioned(&pid, gate.into(), version).into())
        }
        Op::Publish { pid, sdp, tracks } => sfu
            .publish(&pid, sdp, tracks)
            .await
            .map(serde_json::Value::String)
            .map_err(|e| e.to_string()),
        Op::SubscriberAnswer { pid, sdp } => sfu
            .subscriber_answer(&pid, sdp)
            .await
            .map(|()| serde_json::Value::Null)
            .map_err(|e| e.to_string()),
        Op::IceCandidate {
            pid,
            target,
            candidate,
        } => {
            sfu.ice_candidate(&pid, target, candidate);
            Ok(serde_json::Value::Null)
        }
        Op::Unpublish { pid, source } => {
            sfu.unpublish(&pid, source);
            Ok(serde_json::Value::Null)
        }
        Op::SetSubscribed {
            pid,
            track_id,
            subscribed,
        } => {
            sfu.set_subscribed(&pid, &track_id, subscribed);
            Ok(serde_json::Value::Null)
        }
        Op::SetQuality {
            pid,
            track_id,
            quality,
        } => {
            sfu.set_quality(&pid, &track_id, quality);
            Ok(serde_json::Value::Null)
        }
        Op::RestartIce { pid } => {
            sfu.restart_subscriber_ice(&pid);
            Ok(serde_json::Value::Null)
        }
        Op::Leave { pid } => {
            sfu.leave(&pid);
            // The last participant of a call here: its speaker events stop being routed (the
            // home sends the call's empty node set itself).
            let gone: HashSet<CallCid> = created.remove(&pid).into_iter().collect();
            state.media.unserve(conn, &HashSet::from([pid]), &gone);
            Ok(serde_json::Value::Null)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_forgotten_with_its_last_participant_here() {
        let call: CallCid = "default:x".parse().unwrap();
        let other: CallCid = "default:y".parse().unwrap();
        let mut c = Created::default();
        c.pids.insert("l".into(), call.clone());
        c.pids.insert("s".into(), call.clone());
        c.pids.insert("o".into(), other.clone());
        c.calls.extend([call.clone(), other.clone()]);
        assert_eq!(c.remove("l"), None, "s is still in the call");
        assert_eq!(c.remove("s"), Some(call.clone()));
        assert!(!c.calls.contains(&call));
        assert!(c.calls.contains(&other));
        assert_eq!(c.remove("s"), None, "a second leave is a no-op");
    }
}
