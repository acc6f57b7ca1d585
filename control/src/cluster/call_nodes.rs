//! Which node carries the media of each participant of a call homed here, and the media
//! commands every change of the call means for each node (a pure state machine: no sockets, no
//! clock; [`crate::media_plane`] carries the commands out).
//!
//! The home keeps, per call, each participant's media node, user and gate, and one **version**
//! that grows at every change. Rules:
//!
//! * every node of the call (a node hosting at least one participant's media) knows the others
//!   (`set_call_nodes`): its local tracks are relayed once to each of them;
//! * every node knows every participant hosted elsewhere (`join_remote`, with its gate and the
//!   current version), so a relayed track is fanned out there under the publisher's gate;
//! * every gate change is sent to every node of the call with a new version (`set_gate`);
//! * a participant leaving is removed on every node; a node left with no participant of the
//!   call forgets the call (`leave` of every remote participant, `set_call_nodes` empty);
//! * a node lost (its media channel broke) loses its participants: the others forget them and
//!   the node.
//!
//! Commands to one node are produced in the order they must be applied and are sent over one
//! ordered channel, so a node sees the versions of a call increase.

use std::collections::{BTreeMap, BTreeSet};

use greenroom_proto::MediaGate;

/// A media command for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeCmd {
    /// The participant's media is hosted on this node: create its peers.
    Join {
        /// Participant id.
        pid: String,
        /// User id.
        user_id: String,
        /// Its gate.
        gate: MediaGate,
        /// The call's version of that gate.
        version: u64,
    },
    /// The participant's media lives on `node_id`: fan its relayed tracks out here.
    JoinRemote {
        /// Participant id.
        pid: String,
        /// User id.
        user_id: String,
        /// The node hosting its media.
        node_id: String,
        /// Its gate.
        gate: MediaGate,
        /// The call's version of that gate.
        version: u64,
    },
    /// The other nodes of the call (node ids; the carrier resolves their relay addresses).
    SetCallNodes(Vec<String>),
    /// A participant's new gate at a new version.
    SetGate {
        /// Participant id.
        pid: String,
        /// The gate.
        gate: MediaGate,
        /// The call's version.
        version: u64,
    },
    /// Removes a (local or remote) participant.
    Leave {
        /// Participant id.
        pid: String,
    },
}

/// Commands, each for one node (by id), in order.
pub type Commands = Vec<(String, NodeCmd)>;

#[derive(Debug, Clone)]
struct Member {
    node: String,
    user_id: String,
    gate: MediaGate,
}

/// The media membership of one call, at its home.
#[derive(Debug, Default)]
pub struct CallNodes {
    version: u64,
    members: BTreeMap<String, Member>,
}

impl CallNodes {
    /// The call's current version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether no participant is left.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The node hosting a participant's media.
    pub fn node_of(&self, pid: &str) -> Option<&str> {
        self.members.get(pid).map(|m| m.node.as_str())
    }

    /// The nodes of the call, sorted.
    pub fn nodes(&self) -> BTreeSet<String> {
        self.members.values().map(|m| m.node.clone()).collect()
    }

    /// Each node's `set_call_nodes` for a node set.
    fn call_nodes_cmds(nodes: &BTreeSet<String>, out: &mut Commands) {
        for n in nodes {
            let others = nodes.iter().filter(|o| *o != n).cloned().collect();
            out.push((n.clone(), NodeCmd::SetCallNodes(others)));
        }
    }

    /// A participant joins with its media on `node`.
    pub fn join(&mut self, pid: &str, user_id: &str, node: &str, gate: MediaGate) -> Commands {
        let mut out = Vec::new();
        if self.members.contains_key(pid) {
            out.extend(self.leave(pid));
        }
        self.version += 1;
        let v = self.version;
        let before = self.nodes();
        let mut after = before.clone();
        after.insert(node.to_owned());
        if after != before {
            Self::call_nodes_cmds(&after, &mut out);
            // The new node learns every participant hosted elsewhere.
            for (p, m) in &self.members {
                out.push((
                    node.to_owned(),
                    NodeCmd::JoinRemote {
                        pid: p.clone(),
                        user_id: m.user_id.clone(),
                        node_id: m.node.clone(),
                        gate: m.gate,
                        version: v,
                    },
                ));
            }
        }
        out.push((
            node.to_owned(),
            NodeCmd::Join {
                pid: pid.to_owned(),
                user_id: user_id.to_owned(),
                gate,
                version: v,
            },
        ));
        for n in before.iter().filter(|n| *n != node) {
            out.push((
                n.clone(),
                NodeCmd::JoinRemote {
                    pid: pid.to_owned(),
                    user_id: user_id.to_owned(),
                    node_id: node.to_owned(),
                    gate,
                    version: v,
                },
            ));
        }
        self.members.insert(
            pid.to_owned(),
            Member {
                node: node.to_owned(),
                user_id: user_id.to_owned(),
                gate,
            },
        );
        out
    }

    /// New gates (one outcome's): one new version, sent to every node of the call. Gates of
    /// participants not (or no longer) in the call are ignored.
    pub fn set_gates(&mut self, gates: &[(String, MediaGate)]) -> Commands {
        let mut out = Vec::new();
        let known: Vec<_> = gates
            .iter()
            .filter(|(p, _)| self.members.contains_key(p))
            .collect();
        if known.is_empty() {
            return out;
        }
        self.version += 1;
        let v = self.version;
        let nodes = self.nodes();
        for (pid, gate) in known {
            if let Some(m) = self.members.get_mut(pid) {
                m.gate = *gate;
            }
            for n in &nodes {
                out.push((
                    n.clone(),
                    NodeCmd::SetGate {
                        pid: pid.clone(),
                        gate: *gate,
                        version: v,
                    },
                ));
            }
        }
        out
    }

    /// A participant leaves: removed on every node; a node left without participants forgets
    /// the call.
    pub fn leave(&mut self, pid: &str) -> Commands {
        let mut out = Vec::new();
        let before = self.nodes();
        if self.members.remove(pid).is_none() {
            return out;
        }
        self.version += 1;
        for n in &before {
            out.push((
                n.clone(),
                NodeCmd::Leave {
                    pid: pid.to_owned(),
                },
            ));
        }
        let after = self.nodes();
        for gone in before.difference(&after) {
            for p in self.members.keys() {
                out.push((gone.clone(), NodeCmd::Leave { pid: p.clone() }));
            }
            out.push((gone.clone(), NodeCmd::SetCallNodes(Vec::new())));
        }
        if after != before {
            Self::call_nodes_cmds(&after, &mut out);
        }
        out
    }

    /// A node is lost (its media channel broke): its participants are gone (returned, to leave
    /// the call), the other nodes forget them and the node. Nothing is sent to the lost node.
    pub fn node_lost(&mut self, node: &str) -> (Vec<String>, Commands) {
        let lost: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.node == node)
            .map(|(p, _)| p.clone())
            .collect();
        let mut out = Vec::new();
        if lost.is_empty() {
            return (lost, out);
        }
        self.version += 1;
        for p in &lost {
            self.members.remove(p);
        }
        let after = self.nodes();
        for n in &after {
            for p in &lost {
                out.push((n.clone(), NodeCmd::Leave { pid: p.clone() }));
            }
        }
        Self::call_nodes_cmds(&after, &mut out);
        (lost, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenroom_proto::{SourceSet, TrackSource};

    fn gate(send: bool) -> MediaGate {
        MediaGate {
            send: if send {
                SourceSet::EMPTY.with(TrackSource::Microphone)
            } else {
                SourceSet::EMPTY
            },
            receive: true,
        }
    }

    fn to<'a>(cmds: &'a Commands, node: &str) -> Vec<&'a NodeCmd> {
        cmds.iter()
            .filter(|(n, _)| n == node)
            .map(|(_, c)| c)
            .collect()
    }

    #[test]
    fn a_new_node_learns_the_others_and_they_learn_it() {
        let mut c = CallNodes::default();
        let a = c.join("s", "speaker", "A", gate(true));
        assert_eq!(
            to(&a, "A"),
            vec![
                &NodeCmd::SetCallNodes(vec![]),
                &NodeCmd::Join {
                    pid: "s".into(),
                    user_id: "speaker".into(),
                    gate: gate(true),
                    version: 1
                }
            ]
        );
        let b = c.join("l1", "listener", "B", gate(false));
        assert_eq!(
            to(&b, "A"),
            vec![
                &NodeCmd::SetCallNodes(vec!["B".into()]),
                &NodeCmd::JoinRemote {
                    pid: "l1".into(),
                    user_id: "listener".into(),
                    node_id: "B".into(),
                    gate: gate(false),
                    version: 2
                }
            ]
        );
        assert_eq!(
            to(&b, "B"),
            vec![
                &NodeCmd::SetCallNodes(vec!["A".into()]),
                &NodeCmd::JoinRemote {
                    pid: "s".into(),
                    user_id: "speaker".into(),
                    node_id: "A".into(),
                    gate: gate(true),
                    version: 2
                },
                &NodeCmd::Join {
                    pid: "l1".into(),
                    user_id: "listener".into(),
                    gate: gate(false),
                    version: 2
                }
            ]
        );
        // A second participant on a known node changes no node set.
        let b2 = c.join("l2", "listener2", "B", gate(false));
        assert!(!b2
            .iter()
            .any(|(_, c)| matches!(c, NodeCmd::SetCallNodes(_))));
        assert_eq!(to(&b2, "A").len(), 1, "A learns l2 only");
        assert_eq!(c.nodes().len(), 2);
    }

    #[test]
    fn a_gate_change_reaches_every_node_with_a_growing_version() {
        let mut c = CallNodes::default();
        c.join("s", "speaker", "A", gate(true));
        c.join("l1", "listener", "B", gate(false));
        c.join("l2", "listener", "C", gate(false));
        let mut last = c.version();
        for round in 0..100 {
            let g = gate(round % 2 == 0);
            let cmds = c.set_gates(&[("s".into(), g), ("gone".into(), g)]);
            assert_eq!(
                cmds.len(),
                3,
                "one per node, the unknown participant ignored"
            );
            for n in ["A", "B", "C"] {
                match to(&cmds, n)[..] {
                    [NodeCmd::SetGate { pid, gate, version }] => {
                        assert_eq!((pid.as_str(), *gate), ("s", g));
                        assert!(*version > last);
                    }
                    ref other => panic!("{n}: {other:?}"),
                }
            }
            last = c.version();
        }
        assert!(c.set_gates(&[("nobody".into(), gate(true))]).is_empty());
    }

    #[test]
    fn the_last_participant_of_a_node_leaving_makes_it_forget_the_call() {
        let mut c = CallNodes::default();
        c.join("s", "speaker", "A", gate(true));
        c.join("l1", "listener", "B", gate(false));
        let out = c.leave("l1");
        assert_eq!(
            to(&out, "B"),
            vec![
                &NodeCmd::Leave { pid: "l1".into() },
                &NodeCmd::Leave { pid: "s".into() },
                &NodeCmd::SetCallNodes(vec![])
            ]
        );
        assert_eq!(
            to(&out, "A"),
            vec![
                &NodeCmd::Leave { pid: "l1".into() },
                &NodeCmd::SetCallNodes(vec![])
            ]
        );
        assert!(c.leave("l1").is_empty(), "a second leave is a no-op");
        assert_eq!(c.node_of("s"), Some("A"));
    }

    #[test]
    fn a_lost_node_takes_its_participants_and_the_others_forget_it() {
        let mut c = CallNodes::default();
        c.join("s", "speaker", "A", gate(true));
        c.join("l1", "listener", "B", gate(false));
        c.join("l2", "listener", "B", gate(false));
        c.join("l3", "listener", "C", gate(false));
        let (lost, out) = c.node_lost("B");
        assert_eq!(lost, vec!["l1".to_owned(), "l2".to_owned()]);
        assert!(to(&out, "B").is_empty(), "nothing goes to the lost node");
        assert_eq!(
            to(&out, "C"),
            vec![
                &NodeCmd::Leave { pid: "l1".into() },
                &NodeCmd::Leave { pid: "l2".into() },
                &NodeCmd::SetCallNodes(vec!["A".into()])
            ]
        );
        assert_eq!(c.nodes().len(), 2);
        assert_eq!(c.node_lost("B").0.len(), 0);
    }

    #[test]
    fn joining_again_under_the_same_id_moves_the_participant() {
        let mut c = CallNodes::default();
        c.join("s", "speaker", "A", gate(true));
        let out = c.join("s", "speaker", "B", gate(true));
        assert_eq!(to(&out, "A")[0], &NodeCmd::Leave { pid: "s".into() });
        assert_eq!(c.node_of("s"), Some("B"));
        assert_eq!(c.nodes().len(), 1);
    }
}
