//! A small deterministic driver for whole-protocol tests: two VM hosts and
//! a witness, a FIFO network with cut links, captures done at once, every
//! action recorded.
#![allow(dead_code)]

use protocol::{
    Action, Capture, Codec, Config, Epoch, Generation, Grant, Level, Message, Node, NodeId, Start,
    Time, Witness,
};
use std::collections::{BTreeSet, VecDeque};

pub const A: NodeId = NodeId(0);
pub const B: NodeId = NodeId(1);
pub const W: NodeId = NodeId(2);
pub const MS: u64 = 1_000_000;

pub fn config(me: NodeId, level: Level) -> Config {
    let peer = if me == A { B } else { A };
    let mut config = Config::new(me, peer, W, level);
    config.chunk_bytes_max = 4;
    // Deltas here are 10 bytes, copy rounds 9: a small limit makes the
    // bound on what a node assembles one the hostile tests can check.
    config.transfer_bytes_max = 1024;
    config
}

pub struct Cluster {
    pub now: Time,
    pub nodes: [Option<Node>; 2],
    pub witness: Witness,
    pub network: VecDeque<(NodeId, NodeId, Vec<u8>)>,
    /// Links that drop everything: (from, to).
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Every action each host yielded, in order.
    pub log: [Vec<Action>; 2],
    pub codec: Codec,
    pub level: Level,
    /// Drop the delta chunk with this index (to make deltas incomplete).
    pub drop_delta_chunk: Option<u32>,
    /// Once this host takes its first copy chunk, it goes silent (its
    /// links out are cut): a joiner busy applying a copy.
    pub silence_after_copy: Option<NodeId>,
    pub captures: u8,
    /// Round 0 captures wait for `release_first_round` (a large guest's
    /// round 0 is read over many epochs).
    pub hold_first_round: bool,
    /// A round-0 capture held back: (host, round).
    pub first_round_held: Option<usize>,
    /// Bytes of each round-0 capture.
    pub first_round_bytes: usize,
    /// Applied to every host's configuration.
    pub tune: fn(&mut Config),
}

impl Cluster {
    pub fn new(level: Level) -> Cluster {
        Cluster::with_codec(level, Codec::plain())
    }

    pub fn with_codec(level: Level, codec: Codec) -> Cluster {
        Cluster::tuned(level, codec, |_| {})
    }

    /// A cluster whose hosts' configurations `tune` changes.
    pub fn tuned(level: Level, codec: Codec, tune: fn(&mut Config)) -> Cluster {
        let config = |me| {
            let mut c = config(me, level);
            tune(&mut c);
            c
        };
        let g1 = Generation(1);
        let a = Node::new(
            config(A),
            codec.clone(),
            Start::Primary { generation: g1 },
            Time(0),
        )
        .unwrap();
        let b = Node::new(
            config(B),
            codec.clone(),
            Start::Backup { generation: g1 },
            Time(0),
        )
        .unwrap();
        let witness = Witness::new(
            W,
            [A, B],
            Grant {
                generation: g1,
                holder: A,
                backup: Some(B),
            },
            codec.clone(),
        );
        let mut cluster = Cluster {
            now: Time(0),
            nodes: [Some(a), Some(b)],
            witness,
            network: VecDeque::new(),
            cut: BTreeSet::new(),
            log: [Vec::new(), Vec::new()],
            codec,
            level,
            drop_delta_chunk: None,
            silence_after_copy: None,
            captures: 0,
            hold_first_round: false,
            first_round_held: None,
            first_round_bytes: 9,
            tune,
        };
        cluster.drain(0);
        cluster.drain(1);
        cluster
    }

    pub fn node(&self, id: NodeId) -> &Node {
        self.nodes[id.0 as usize].as_ref().expect("host is up")
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.nodes[id.0 as usize].as_mut().expect("host is up")
    }

    pub fn crash(&mut self, id: NodeId) {
        self.nodes[id.0 as usize] = None;
    }

    pub fn restart(&mut self, id: NodeId, generation: Generation) {
        let start = Start::Restart {
            generation,
            disk: None,
        };
        let mut config = config(id, self.level);
        (self.tune)(&mut config);
        let node = Node::new(config, self.codec.clone(), start, self.now).unwrap();
        self.nodes[id.0 as usize] = Some(node);
        self.drain(id.0 as usize);
    }

    /// Carries out host `i`'s actions: sends go on the network, captures
    /// are answered at once with a few bytes.
    pub fn drain(&mut self, i: usize) {
        let me = NodeId(i as u8);
        loop {
            let Some(node) = self.nodes[i].as_mut() else {
                return;
            };
            let Some(action) = node.poll_action() else {
                return;
            };
            self.log[i].push(action.clone());
            let now = self.now;
            match action {
                Action::Send { to, msg } => {
                    let bytes = self.codec.encode(&protocol::Envelope { from: me, to, msg });
                    self.network.push_back((me, to, bytes));
                }
                Action::CaptureDelta { epoch, .. } => {
                    self.captures = self.captures.wrapping_add(1);
                    let bytes = vec![self.captures; 10];
                    let capture = Capture {
                        bytes: bytes.into(),
                        disk_blocks: vec![protocol::BlockIndex(epoch.0 % 5)],
                        pages: 3,
                        digest: None,
                    };
                    node.handle_delta_captured(now, epoch, capture);
                }
                Action::CaptureCopy { round: 0, .. } if self.hold_first_round => {
                    self.first_round_held = Some(i);
                }
                Action::CaptureCopy { round, .. } => {
                    let len = if round == 0 {
                        self.first_round_bytes
                    } else {
                        9
                    };
                    let capture = Capture {
                        bytes: vec![0xC0 + round as u8; len].into(),
                        disk_blocks: vec![],
                        pages: 0,
                        digest: None,
                    };
                    node.handle_copy_captured(now, round, capture);
                }
                _ => {}
            }
        }
    }

    /// Reports the round-0 capture held back, as read whole now.
    pub fn release_first_round(&mut self) {
        self.hold_first_round = false;
        let i = self.first_round_held.take().expect("a round 0 was held");
        let capture = Capture {
            bytes: vec![0xC0; self.first_round_bytes].into(),
            disk_blocks: vec![],
            pages: 0,
            digest: None,
        };
        let now = self.now;
        self.nodes[i]
            .as_mut()
            .expect("host is up")
            .handle_copy_captured(now, 0, capture);
        self.drain(i);
    }

    /// Delivers every message in flight (and those they cause).
    pub fn deliver_all(&mut self) {
        for _ in 0..10_000 {
            let Some((from, to, bytes)) = self.network.pop_front() else {
                return;
            };
            if self.cut.contains(&(from, to)) {
                continue;
            }
            if let Some(skip) = self.drop_delta_chunk {
                if let Ok(opened) = self.codec.open(&bytes) {
                    if matches!(opened.envelope.msg, Message::Delta { ref chunk, .. } if chunk.index == skip)
                    {
                        continue;
                    }
                }
            }
            let now = self.now;
            if to == W {
                self.witness.handle_bytes(now, &bytes);
                while let Some(action) = self.witness.poll_action() {
                    if let Action::Send { to, msg } = action {
                        let bytes = self.codec.encode(&protocol::Envelope { from: W, to, msg });
                        self.network.push_back((W, to, bytes));
                    }
                }
            } else if let Some(node) = self.nodes[to.0 as usize].as_mut() {
                node.handle_bytes(now, &bytes);
                self.drain(to.0 as usize);
                if self.silence_after_copy == Some(to) {
                    let copy = self
                        .codec
                        .open(&bytes)
                        .map(|o| matches!(o.envelope.msg, Message::Copy { .. }));
                    if copy == Ok(true) {
                        self.cut.insert((to, from));
                        self.cut.insert((to, W));
                        self.silence_after_copy = None;
                    }
                }
            }
        }
        panic!("the network never quiesces");
    }

    /// Advances time to `until`, firing every deadline on the way and
    /// delivering messages at once.
    pub fn run_until(&mut self, until: Time) {
        loop {
            self.deliver_all();
            let next = self
                .nodes
                .iter()
                .flatten()
                .map(|n| n.poll_timeout())
                .min()
                .unwrap_or(until);
            if next > until {
                self.now = until;
                return;
            }
            self.now = next.max(self.now);
            for i in 0..2 {
                if let Some(node) = self.nodes[i].as_mut() {
                    if node.poll_timeout() <= self.now {
                        node.handle_timeout(self.now);
                        self.drain(i);
                    }
                }
            }
        }
    }

    pub fn run_for_ms(&mut self, ms: u64) {
        let until = self.now.add_ns(ms * MS);
        self.run_until(until);
    }

    /// Hands `to` a message as if `from` had sent it, and carries out what
    /// it does.
    pub fn inject(&mut self, to: NodeId, from: NodeId, msg: Message) {
        let now = self.now;
        self.node_mut(to).handle_message(now, from, msg);
        self.drain(to.0 as usize);
    }

    pub fn released(&self, id: NodeId) -> Option<Epoch> {
        self.log[id.0 as usize].iter().rev().find_map(|a| match a {
            Action::ReleaseOutput { upto } => Some(*upto),
            _ => None,
        })
    }

    pub fn count(&self, id: NodeId, f: impl Fn(&Action) -> bool) -> usize {
        self.log[id.0 as usize].iter().filter(|a| f(a)).count()
    }
}
