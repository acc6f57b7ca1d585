//! End-to-end use of the ringing state machine with the SQLite call history, through the public
//! API only: a driver loop that delivers outputs, persists records and fires deadlines, and a
//! restart that reads the history back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::PathBuf;

use greenroom_control::history::HistoryStore;
use greenroom_control::ring::{Groups, InitiateRequest, Ringer, Step};
use greenroom_proto::{CallCid, CallKind, RejectReason, RingEvent, RingOutcome};

/// Devices per user, and what each device received.
#[derive(Default)]
struct Inboxes {
    devices: HashMap<String, Vec<String>>,
    got: HashMap<(String, String), Vec<RingEvent>>,
}

impl Inboxes {
    fn connect(&mut self, user: &str, device: &str) {
        self.devices
            .entry(user.to_owned())
            .or_default()
            .push(device.to_owned());
    }

    /// Delivers a step's outputs and persists its records, as the socket layer will.
    fn apply(&mut self, step: Step, store: &HistoryStore) {
        for o in &step.outputs {
            for d in self.devices.get(o.to.user_id()).into_iter().flatten() {
                if o.to.includes(o.to.user_id(), d) {
                    self.got
                        .entry((o.to.user_id().to_owned(), d.clone()))
                        .or_default()
                        .push(o.event.clone());
                }
            }
        }
        store.upsert_all(&step.records).unwrap();
    }

    fn kinds(&self, user: &str, device: &str) -> Vec<&'static str> {
        self.got
            .get(&(user.to_owned(), device.to_owned()))
            .map(|v| v.iter().map(RingEvent::kind).collect())
            .unwrap_or_default()
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn calls_ring_resolve_and_are_listed_after_a_restart() {
    let dir = TempDir(std::env::temp_dir().join(format!(
        "greenroom-ring-flow-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    )));
    let path = dir.0.join("history.sqlite3");
    let store = HistoryStore::open(&path).unwrap();
    let mut ringer = Ringer::new();
    let mut inbox = Inboxes::default();
    for (u, d) in [
        ("alice", "laptop"),
        ("bob", "phone"),
        ("bob", "laptop"),
        ("carol", "phone"),
        ("dave", "phone"),
    ] {
        inbox.connect(u, d);
    }
    let t0 = 1_700_000_000_000u64;

    // 1. alice rings bob (video); bob's phone accepts, his laptop stops ringing; bob ends.
    let c1: CallCid = "default:one".parse().unwrap();
    let (info, step) = ringer
        .initiate(
            InitiateRequest::to_users(c1.clone(), "alice", &["bob".into()], CallKind::Video),
            t0,
        )
        .unwrap();
    assert!(!info.session_id.is_empty());
    inbox.apply(step, &store);
    assert_eq!(inbox.kinds("bob", "phone"), ["call.ring"]);
    assert_eq!(inbox.kinds("bob", "laptop"), ["call.ring"]);
    let step = ringer.accept(&c1, "bob", "phone", t0 + 3_000).unwrap();
    inbox.apply(step, &store);
    assert!(ringer.accept(&c1, "bob", "laptop", t0 + 3_001).is_err());
    assert_eq!(
        inbox.kinds("bob", "laptop"),
        ["call.ring", "call.stop_ringing"]
    );
    assert_eq!(inbox.kinds("alice", "laptop"), ["call.accepted"]);
    let step = ringer.end(&c1, "bob", t0 + 63_000).unwrap();
    assert_eq!(step.end_sessions, vec![c1.clone()]);
    inbox.apply(step, &store);
    assert_eq!(
        inbox.kinds("alice", "laptop"),
        ["call.accepted", "call.ended"]
    );

    // 2. carol rings the team; bob rejects, nobody else answers: missed, driven by deadlines.
    let mut groups = Groups::new();
    groups
        .create(
            "team",
            &["alice".into(), "bob".into(), "carol".into(), "dave".into()],
        )
        .unwrap();
    let c2: CallCid = "default:two".parse().unwrap();
    let req = InitiateRequest::to_group(
        c2.clone(),
        "carol",
        groups.get("team").unwrap(),
        CallKind::Audio,
    )
    .unwrap()
    .with_ring_timeout_ms(20_000);
    let (_, step) = ringer.initiate(req, t0 + 100_000).unwrap();
    inbox.apply(step, &store);
    let step = ringer
        .reject(
            &c2,
            "bob",
            Some("phone"),
            RejectReason::Declined,
            t0 + 101_000,
        )
        .unwrap();
    inbox.apply(step, &store);
    let mut now = t0 + 101_000;
    while let Some(deadline) = ringer.next_deadline() {
        now = deadline;
        let step = ringer.poll_timeout(now);
        inbox.apply(step, &store);
    }
    assert_eq!(now, t0 + 120_000);
    assert!(ringer.is_empty());
    assert_eq!(inbox.kinds("dave", "phone"), ["call.ring", "call.missed"]);
    assert_eq!(
        inbox.kinds("carol", "phone"),
        ["call.rejected", "call.missed"]
    );

    // Restart: the history is still there, newest first.
    drop(store);
    let store = HistoryStore::open(&path).unwrap();
    let page = store.list_for_user("bob", 10, None).unwrap();
    let outcomes: Vec<_> = page.records.iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes, [RingOutcome::Missed, RingOutcome::Accepted]);
    let first = &page.records[1];
    assert_eq!(first.kind, CallKind::Video);
    assert_eq!(first.duration_ms, Some(60_000));
    assert_eq!(first.participants, ["alice", "bob"]);
    assert_eq!(page.records[0].group_id.as_deref(), Some("team"));
    let page = store.list_for_user("dave", 1, None).unwrap();
    assert_eq!(page.records.len(), 1);
    assert!(page.next.is_none());
}
