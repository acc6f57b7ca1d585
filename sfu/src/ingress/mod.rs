//! The receive side of a publisher's RTP, as pure state machines (docs/ARCHITECTURE.md,
//! "Publisher ingress"): the feedback str0m writes about the RTP it receives, written by the
//! engine instead once the engine opens a publisher's SRTP itself.
//!
//! * [`twcc`]: transport-wide congestion control feedback, one per publisher peer.
//! * [`nack`]: generic NACKs for one video stream, sent when a gap is seen and retried only
//!   while something is missing.
//! * [`report`]: the receiver report block about one stream (loss, extended highest sequence
//!   number, jitter, LSR/DLSR).
//! * [`feedback`]: the three together for one publisher peer, written as one compound RTCP
//!   packet (receiver report, NACKs, transport feedback) when due.
//! * [`rtcp`]: keyframe requests to the publisher (PLI, FIR) and the NTP time of its sender
//!   reports (for LSR).
//! * [`packet`]: reading an opened RTP packet (header, the extensions the fan-out and the
//!   feedback need, payload without padding, RTX's original sequence number).
//!
//! No sockets and no clock: every time is passed in, so each is tested on a virtual clock.
//! The engine wires them (`engine::ingress`); a few accessors serve only the tests.

pub(crate) mod feedback;
pub(crate) mod nack;
pub(crate) mod packet;
pub(crate) mod report;
pub(crate) mod rtcp;
pub(crate) mod twcc;
