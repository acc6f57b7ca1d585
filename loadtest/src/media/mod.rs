//! The media layer, without signaling: a [`Publisher`] that offers send-only Opus/VP8
//! transceivers and sends synthetic RTP, and a [`Subscriber`] that answers offers and counts
//! what arrives. Both are webrtc-rs 0.21 connections bound to one UDP socket on a concrete
//! address (127.0.0.1 by default), without trickle ICE: SDPs are returned once gathering is
//! complete.

mod peer;
mod publisher;
mod subscriber;

pub use peer::{IceConfig, Pc, MIME_OPUS, MIME_VP8, OPUS_PT, VP8_PT};
pub use publisher::{
    default_payload_type, AudioParams, Publisher, PublisherConfig, SentStats, VideoParams,
};
pub(crate) use subscriber::poll_stats;
pub use subscriber::{Subscriber, SubscriberConfig};
