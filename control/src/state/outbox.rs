//! One signaling socket's way out: a bounded queue of pre-serialized messages drained by the
//! socket's writer task, a close signal beside the queue (so a full queue can still close the
//! socket), and a side channel of removal notices for the socket's reader.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use greenroom_proto::{CallCid, ServerMessage};
use tokio::sync::{mpsc, watch};

/// How many messages may wait for a slow client before it is closed (1008).
pub const SESSION_QUEUE: usize = 1024;

/// The close code and reason of a socket the server closes.
pub type CloseReason = (u16, String);

/// What a socket's writer task receives.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A message already serialized to JSON text (shared by every recipient of an event).
    /// Boxed: the queue preallocates a block of 32 slots per socket, 8 bytes each instead of
    /// 32 (0.3 KiB instead of 1.0 KiB per socket; docs/BENCHMARKS.md, *Memory per audio
    /// listener, third pass*). A message costs one small allocation per recipient.
    Text(Box<Utf8Bytes>),
}

/// A session was removed from its call by someone else (kick, block, end of call). Names the
/// session, so a socket that has left and joined again ignores a notice for its old session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    /// The call.
    pub call_cid: CallCid,
    /// The removed session.
    pub participant_id: String,
    /// Why: `kicked`, `blocked`, `call_ended`.
    pub reason: &'static str,
}

/// Something the server tells a socket's reader (beside the message queue).
#[derive(Debug, Clone)]
pub enum Notice {
    /// One of its sessions was removed from its call by someone else.
    Removed(Removal),
    /// The media plane offers (or renegotiates) a session's subscriber connection: the reader
    /// queues it and sends it again if no answer comes in time.
    Offer {
        /// The session.
        participant_id: String,
        /// The serialized `subscriber_offer` message.
        text: Utf8Bytes,
    },
}

/// The sending side of one socket; cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tx: mpsc::Sender<Outbound>,
    close: watch::Sender<Option<CloseReason>>,
    /// Boxed: the channel preallocates a block of 32 slots per socket (2.8 KiB of `Notice`s,
    /// 0.3 KiB of boxes; docs/BENCHMARKS.md, *Where the RSS per listener goes*).
    notices: mpsc::UnboundedSender<Box<Notice>>,
    closing: AtomicBool,
}

/// The receiving side of one socket, owned by its reader and writer tasks.
#[derive(Debug)]
pub struct Inbox {
    /// Messages for the writer.
    pub queue: mpsc::Receiver<Outbound>,
    /// The close signal (for the writer; clone for the reader).
    pub close: watch::Receiver<Option<CloseReason>>,
    /// Removal notices and subscriber offers for the reader.
    pub notices: mpsc::UnboundedReceiver<Box<Notice>>,
}

impl Outbox {
    /// A new socket's outbox and inbox with a queue of `capacity` messages.
    pub fn new(capacity: usize) -> (Outbox, Inbox) {
        let (tx, queue) = mpsc::channel(capacity.max(1));
        let (close, close_rx) = watch::channel(None);
        let (notices, notices_rx) = mpsc::unbounded_channel();
        (
            Outbox {
                inner: Arc::new(Inner {
                    tx,
                    close,
                    notices,
                    closing: AtomicBool::new(false),
                }),
            },
            Inbox {
                queue,
                close: close_rx,
                notices: notices_rx,
            },
        )
    }

    /// Queues a serialized message. A full queue closes the socket with 1008 ("too slow"): the
    /// client missed messages and must reconnect; nothing is dropped silently.
    pub fn send_text(&self, text: Utf8Bytes) {
        if self.is_closing() {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) =
            self.inner.tx.try_send(Outbound::Text(Box::new(text)))
        {
            tracing::warn!("client too slow, closing its connection");
            self.close(1008, "too slow");
        }
    }

    /// Serializes and queues a message (see [`Outbox::send_text`]).
    pub fn send(&self, msg: &ServerMessage) {
        if let Some(text) = serialize(msg) {
            self.send_text(text);
        }
    }

    /// Closes the socket with a code and reason; the first close wins. Works with a full queue:
    /// the writer and reader watch this signal beside the queue.
    pub fn close(&self, code: u16, reason: &str) {
        if self.inner.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner
            .close
            .send_replace(Some((code, reason.to_owned())));
    }

    /// Whether the socket is being closed.
    pub fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
    }

    /// Tells the socket's reader something (a removal, a subscriber offer).
    pub fn notify(&self, notice: Notice) {
        let _ = self.inner.notices.send(Box::new(notice));
    }

    /// Whether two outboxes are the same socket's.
    pub fn same(&self, other: &Outbox) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

/// A server message as shared JSON text; `None` (logged) if it cannot be serialized.
pub fn serialize(msg: &ServerMessage) -> Option<Utf8Bytes> {
    match serde_json::to_string(msg) {
        Ok(t) => Some(t.into()),
        Err(e) => {
            tracing::error!("cannot serialize message: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_raises_the_close_signal_beside_it() {
        let (out, mut inbox) = Outbox::new(2);
        out.send_text("a".into());
        out.send_text("b".into());
        assert!(inbox.close.borrow().is_none());
        out.send_text("c".into());
        assert_eq!(
            *inbox.close.borrow_and_update(),
            Some((1008, "too slow".into()))
        );
        // The queue keeps what fit; later messages are not queued once closing.
        out.send_text("d".into());
        let mut got = Vec::new();
        while let Ok(Outbound::Text(t)) = inbox.queue.try_recv() {
            got.push(t.as_str().to_owned());
        }
        assert_eq!(got, vec!["a", "b"]);
    }

    #[test]
    fn a_queue_slot_is_one_pointer() {
        // tokio's channels allocate their first block of 32 slots with the channel: every
        // socket pays 32 slots of each queue whether it is used or not.
        assert_eq!(
            std::mem::size_of::<Outbound>(),
            std::mem::size_of::<usize>()
        );
        assert_eq!(
            std::mem::size_of::<Box<Notice>>(),
            std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn the_first_close_wins() {
        let (out, inbox) = Outbox::new(4);
        out.close(1001, "going away");
        out.close(1008, "too slow");
        assert_eq!(*inbox.close.borrow(), Some((1001, "going away".into())));
    }
}
