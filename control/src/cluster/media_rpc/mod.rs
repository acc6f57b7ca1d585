//! The media RPC: how a call's home drives the media plane of another node (a call spanning
//! nodes: a participant's media lives on the node its socket reached, its session at the home).
//!
//! One WebSocket per (home, media node) pair, opened by the home to the media node's
//! `GET /v1/cluster/media` with an admin token signed by the cluster's shared key. Text frames
//! of JSON:
//!
//! * home → node: [`Request`] `{"id":7,"op":"publish",...}`; `id` only on requests that want a
//!   [`Frame::Reply`] (`hello`, `publish`, `subscriber_answer`); the others are applied in order
//!   and answered only by their effects;
//! * node → home: [`Frame::Reply`] `{"kind":"reply","id":7,"result":...}` or with `error`, and
//!   [`Frame::Event`] `{"kind":"event","event":{...}}`: the node's media events (subscriber
//!   offers, peer failures, speakers) for the participants and calls this channel created.
//!
//! One channel is ordered both ways, so a node applies one call's commands in the order the
//! home produced them. When the channel ends, the media node tears down everything it created
//! (participants, remote participants, call node sets), and the home treats the node's
//! participants as failed ([`crate::media_plane::MediaPlane::node_lost`]).
//!
//! [`wire`] has the frames, [`client`] the home's end, [`server`] the media node's end.

mod client;
mod server;
mod wire;

use std::time::Duration;

pub use client::{connect, RpcClient, RpcError};
pub use server::handler;
pub use wire::{Frame, Hello, Op, Request, WireEvent, WireGate, WireRelayNode};

/// The media RPC endpoint on every cluster node.
pub const PATH: &str = "/v1/cluster/media";
/// How long opening a channel (and its `hello`) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);
/// Frames queued per direction before the channel is considered stuck and closed (the home
/// then treats the node as lost).
const QUEUE: usize = 8192;
/// The user id of the tokens nodes sign for each other's media channel.
const NODE_USER: &str = "greenroom-node";
