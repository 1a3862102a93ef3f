//! The protocol node of a VM host: primary, backup or joiner.
//!
//! Inputs are `handle_*(now, ...)` calls; outputs are polled with
//! [`Node::poll_action`]; [`Node::poll_timeout`] says when to call
//! [`Node::handle_timeout`] next. Every `handle_*` ends by checking the
//! node's invariants.
//!
//! Generations come from the witness only. A node takes a generation the
//! witness stated to it (a grant, the answer to a request or ping, or the
//! announcement of a grant that certifies us its backup), never one its peer
//! names: a newer generation from the peer is a *claim*, which the node
//! asks the witness about and acts on the answer. So no frame of the peer,
//! forged by a keyholder or merely stale and reordered, makes a node step
//! down, drop its copy or persist a generation that was never granted.
//!
//! ```text
//!            restart                      final copy round applied
//!   (any) ----------> Joining ----------------------------------> Backup
//!                       ^  ^                                      |  |
//!     newer generation  |  |  primary moved on without us         |  | witness grants g+1
//!     seen (step down)  |  +--------------------------------------+  | (we are its backup)
//!                       |                                            v
//!                       +------------------------------------- Primary
//! ```
//!
//! A primary's pairing with its backup goes
//! `Paired -> Seceding -> Solo -> Copying -> Catching -> Certifying -> Paired`:
//! a suspected backup makes it ask the witness for a generation alone
//! (`Seceding`, output held); granted, it runs `Solo` and releases output
//! while its witness lease is fresh; a joiner gets pre-copy rounds while the
//! guest runs (`Copying`), a final paused round that makes it the backup of
//! one checkpoint (`Catching`, deltas follow), and once every released output
//! is in a checkpoint the joiner holds, the witness certifies the pair under
//! a new generation (`Certifying`, output held meanwhile) and it is
//! `Protected` again.

mod assembly;
mod backup;
mod lineage;
mod primary;
mod validate;

pub use validate::{COUNTER_MAX, ROUND_MAX};

use crate::action::{Action, Capture};
use crate::config::{Config, ConfigError};
use crate::stats::Stats;
use crate::types::{CheckpointId, Digest, Epoch, Generation, NodeId, Time};
use crate::wire::{Codec, Envelope, Message, PeerRole};
use backup::{Backup, Joining};
use primary::Primary;
use std::collections::VecDeque;

/// Actions queued and not yet polled, at most, beside the chunks of the
/// transfers one input may start (see [`Node::push`]); the driver drains
/// them after every input.
const ACTIONS_MAX: usize = 4096;

/// What a node holds of transfers in progress (see [`Node::assembling`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Assembling {
    /// Deltas or copy rounds being assembled.
    pub transfers: usize,
    /// Chunks held.
    pub chunks: usize,
    /// Bytes held.
    pub bytes: u64,
}

/// How a node starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Start {
    /// First start of the cluster: this host runs the guest from the boot
    /// image (epoch 0), with the peer as its backup, in `generation`.
    Primary {
        /// The bootstrap generation the witness starts with.
        generation: Generation,
    },
    /// First start of the cluster: this host holds the boot image as the
    /// backup of the peer.
    Backup {
        /// The bootstrap generation the witness starts with.
        generation: Generation,
    },
    /// Restart after a crash: no guest state survives, only the persisted
    /// generation and, if the driver knows it, the checkpoint the local disk
    /// holds (a host that ran as primary wrote past any checkpoint: `None`).
    Restart {
        /// The last generation persisted with `PersistGeneration`.
        generation: Generation,
        /// The checkpoint the local disk is known to hold.
        disk: Option<CheckpointId>,
    },
}

/// What a node is, as seen from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RoleKind {
    /// Runs the guest.
    Primary,
    /// Holds a standby copy of the guest.
    Backup,
    /// Has no usable state and asks its peer to re-protect it.
    Joining,
}

/// Whether the VM survives the loss of its primary, as the primary sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protection {
    /// A certified backup holds every checkpoint whose output was released.
    Protected,
    /// A backup is being brought in (copy rounds, certification).
    Resyncing,
    /// No backup.
    Unprotected,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Role {
    Primary(Box<Primary>),
    Backup(Backup),
    Joining(Joining),
}

/// A newer generation the peer named, and when we heard it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Claim {
    pub(crate) generation: Generation,
    pub(crate) heard: Time,
}

/// The protocol state machine of one VM host.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    config: Config,
    codec: Codec,
    now: Time,
    generation: Generation,
    /// The newest generation the witness stated to us (or the one we
    /// started in, which it stated before): ours is never newer.
    witnessed: Generation,
    /// A newer generation the peer claimed, asked of the witness and not
    /// yet answered.
    claim: Option<Claim>,
    role: Role,
    /// Last time the peer showed it is alive in our generation.
    peer_heard: Time,
    /// Next heartbeat, ping and request retry.
    next_tick: Time,
    actions: VecDeque<Action>,
    stats: Stats,
}

impl Node {
    /// A node that starts as `start` says at time `now`.
    pub fn new(config: Config, codec: Codec, start: Start, now: Time) -> Result<Node, ConfigError> {
        config.validate()?;
        let generation = match start {
            Start::Primary { generation }
            | Start::Backup { generation }
            | Start::Restart { generation, .. } => generation,
        };
        let boot = CheckpointId {
            generation,
            epoch: Epoch(0),
        };
        let role = match start {
            Start::Primary { .. } => {
                Role::Primary(Box::new(Primary::bootstrap(&config, boot, now)))
            }
            Start::Backup { .. } => Role::Backup(Backup::new(boot, Digest::default())),
            Start::Restart { disk, .. } => Role::Joining(Joining::new(disk)),
        };
        let mut node = Node {
            config,
            codec,
            now,
            generation,
            witnessed: generation,
            claim: None,
            role,
            peer_heard: now,
            next_tick: now,
            actions: VecDeque::new(),
            stats: Stats::default(),
        };
        node.tick();
        node.update_release();
        node.check_invariants(generation);
        Ok(node)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The codec for this node's frames.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// The codec, to encode frames with (encoding stamps each frame with
    /// the next sequence number of its link).
    pub fn codec_mut(&mut self) -> &mut Codec {
        &mut self.codec
    }

    /// The latest `now` this node was given.
    pub fn now(&self) -> Time {
        self.now
    }

    /// The generation this node is in.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// The role.
    pub fn role(&self) -> RoleKind {
        match self.role {
            Role::Primary(_) => RoleKind::Primary,
            Role::Backup(_) => RoleKind::Backup,
            Role::Joining(_) => RoleKind::Joining,
        }
    }

    /// The primary's protection; `None` on other roles.
    pub fn protection(&self) -> Option<Protection> {
        match &self.role {
            Role::Primary(p) => Some(p.protection()),
            _ => None,
        }
    }

    /// The primary's open epoch; `None` on other roles.
    pub fn epoch(&self) -> Option<Epoch> {
        match &self.role {
            Role::Primary(p) => Some(p.epoch),
            _ => None,
        }
    }

    /// The newest epoch whose output the primary released; `None` on other
    /// roles.
    pub fn released(&self) -> Option<Epoch> {
        match &self.role {
            Role::Primary(p) => Some(p.released),
            _ => None,
        }
    }

    /// The checkpoint a backup would restore from if promoted now.
    pub fn applied(&self) -> Option<CheckpointId> {
        match &self.role {
            Role::Backup(b) => Some(b.applied),
            _ => None,
        }
    }

    /// What this node holds of transfers from its peer: the chunks and
    /// bytes of the deltas or the copy round it is assembling.
    pub fn assembling(&self) -> Assembling {
        let assemblies: Vec<&assembly::Assembly> = match &self.role {
            Role::Backup(b) => b.staged().collect(),
            Role::Joining(j) => j.assembly().into_iter().collect(),
            Role::Primary(_) => Vec::new(),
        };
        Assembling {
            transfers: assemblies.len(),
            chunks: assemblies.iter().map(|a| a.chunks()).sum(),
            bytes: assemblies.iter().map(|a| a.bytes()).sum(),
        }
    }

    /// Actions queued and not yet polled.
    pub fn actions_queued(&self) -> usize {
        self.actions.len()
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The next action for the driver, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to call [`Node::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Time {
        let role_deadline = match &self.role {
            Role::Primary(p) => p.deadline(&self.config, self.peer_heard, self.now),
            Role::Backup(b) => b.deadline(&self.config, self.peer_heard),
            Role::Joining(_) => None,
        };
        role_deadline.map_or(self.next_tick, |d| d.min(self.next_tick))
    }

    /// Time passed; act on every deadline that is due.
    pub fn handle_timeout(&mut self, now: Time) {
        let before = self.enter(now);
        if now >= self.next_tick {
            self.tick();
        }
        match self.role {
            Role::Primary(_) => self.primary_timeouts(),
            Role::Backup(_) => self.backup_timeouts(),
            Role::Joining(_) => {}
        }
        self.update_release();
        self.check_invariants(before);
        assert!(self.poll_timeout() > now, "every due deadline was acted on");
    }

    /// A frame arrived from the network. Frames that do not decode, do not
    /// authenticate, or are not addressed to this node are dropped and
    /// counted.
    pub fn handle_bytes(&mut self, now: Time, bytes: &[u8]) {
        match self.codec.decode(bytes) {
            Ok(Envelope { from, to, msg }) if to == self.config.me => {
                self.handle_message(now, from, msg)
            }
            Ok(_) => self.stats.dropped_misaddressed += 1,
            Err(e) => self.stats.count_decode_error(&e),
        }
    }

    /// A decoded message arrived from `from`.
    pub fn handle_message(&mut self, now: Time, from: NodeId, msg: Message) {
        let before = self.enter(now);
        if let Err(refusal) = validate::check(&self.config, &msg) {
            match refusal {
                validate::Refusal::OutOfRange => self.stats.dropped_out_of_range += 1,
                validate::Refusal::Contradicting => self.stats.dropped_contradicting += 1,
            }
        } else if from == self.config.witness {
            match msg {
                Message::WitnessState {
                    generation,
                    holder,
                    backup,
                } => self.on_witness_state(generation, holder, backup),
                _ => self.stats.dropped_unexpected += 1,
            }
        } else if from == self.config.peer {
            self.on_peer_message(msg);
        } else {
            self.stats.dropped_misaddressed += 1;
        }
        self.update_release();
        self.check_invariants(before);
    }

    /// The primary's driver finished `CaptureDelta { epoch, .. }`.
    pub fn handle_delta_captured(&mut self, now: Time, epoch: Epoch, capture: Capture) {
        let before = self.enter(now);
        self.on_delta_captured(epoch, capture);
        self.update_release();
        self.check_invariants(before);
    }

    /// The primary's driver finished `CaptureCopy { round, .. }`.
    pub fn handle_copy_captured(&mut self, now: Time, round: u32, capture: Capture) {
        let before = self.enter(now);
        self.on_copy_captured(round, capture);
        self.update_release();
        self.check_invariants(before);
    }

    /// The guest went idle (it waits for an input or a timer) with output
    /// of the open epoch held for its release. At `ft` with a backup, the
    /// epoch ends early, so that the output leaves at the backup's ack
    /// rather than at the epoch's timer: as soon as it is
    /// `epoch_idle_min_ns` old and no delta is in flight (an early end
    /// never makes the guest wait for acks, and at most one early delta
    /// is unacknowledged); the node's timeout or the ack that empties the
    /// window ends it if it may not end now. A guest at work ends its
    /// epochs as before.
    pub fn handle_guest_idle(&mut self, now: Time) {
        let before = self.enter(now);
        self.guest_idle();
        self.update_release();
        self.check_invariants(before);
    }

    /// The guest has dirtied `pages` pages in the open epoch; the primary
    /// ends the epoch early once it reaches `epoch_dirty_pages_max`.
    pub fn handle_dirty_pages(&mut self, now: Time, pages: u64) {
        let before = self.enter(now);
        if pages >= self.config.epoch_dirty_pages_max {
            self.end_epoch();
        }
        self.update_release();
        self.check_invariants(before);
    }

    fn enter(&mut self, now: Time) -> Generation {
        assert!(now >= self.now, "time does not go backwards");
        self.now = now;
        self.generation
    }

    /// Queues `action`. One input sends at most a round of a copy (or a
    /// delta) and its retransmission, each up to a transfer's chunks: a
    /// copy of a guest of 256 MiB in 8 KiB chunks is 32 Ki sends from one
    /// capture. Beyond that and [`ACTIONS_MAX`], the driver is not
    /// draining.
    fn push(&mut self, action: Action) {
        self.actions.push_back(action);
        let transfers = 2 * validate::transfer_chunks_max(&self.config) as usize;
        assert!(
            self.actions.len() <= ACTIONS_MAX.saturating_add(transfers),
            "the driver drains actions"
        );
    }

    fn send(&mut self, to: NodeId, msg: Message) {
        self.push(Action::Send { to, msg });
    }

    fn adopt_generation(&mut self, generation: Generation) {
        assert!(generation > self.generation, "generations only grow");
        assert!(
            generation <= self.witnessed,
            "generations come from the witness"
        );
        self.generation = generation;
        self.push(Action::PersistGeneration(generation));
    }

    /// Heartbeat, pings and retries, every heartbeat interval.
    fn tick(&mut self) {
        self.next_tick = self.now.add_ns(self.config.heartbeat_interval_ns);
        let peer = self.config.peer;
        let generation = self.generation;
        if self.ping_due() {
            let witness = self.config.witness;
            self.send(witness, Message::WitnessPing { generation });
        }
        match &self.role {
            Role::Primary(_) => self.primary_tick(),
            Role::Backup(b) => {
                let want = b.grant_wanted;
                self.send(
                    peer,
                    Message::Heartbeat {
                        generation,
                        role: PeerRole::Backup,
                        backup: None,
                    },
                );
                if let Some(want) = want {
                    self.request_grant(want, None);
                }
            }
            // A joiner asks its peer for a copy only once the witness told
            // it the current generation (`ping_due`).
            Role::Joining(j) if j.copy.is_none() && !j.witness_answered => {}
            Role::Joining(j) => {
                let msg = match j.copy {
                    None => Message::Join {
                        generation,
                        disk: j.disk,
                    },
                    Some(_) => Message::Heartbeat {
                        generation,
                        role: PeerRole::Joining,
                        backup: None,
                    },
                };
                self.send(peer, msg);
            }
        }
    }

    /// Whether this tick asks the witness for its state on top of what the
    /// role asks it anyway (a lease ping, a grant request): a claim waits
    /// for its answer; or we join and the witness has not answered since we
    /// began: the Join waits for that answer, so that the copy comes in the
    /// generation it states (a newer one the copy names after it is a
    /// claim).
    fn ping_due(&self) -> bool {
        let role_asks = match &self.role {
            Role::Primary(p) => p.asks_witness(),
            Role::Backup(b) => b.grant_wanted.is_some(),
            Role::Joining(j) => return !j.witness_answered || self.claim.is_some(),
        };
        self.claim.is_some() && !role_asks
    }

    /// The peer named `generation`, newer than ours. Only the witness
    /// grants generations, and the peer may be stale (a reordered frame),
    /// mistaken or hostile: ask the witness, once per answer, and act on
    /// what it says (`on_witness_state`). The message is dropped.
    fn on_claim(&mut self, generation: Generation) {
        assert!(
            generation > self.generation,
            "a claim is of a newer generation"
        );
        self.stats.dropped_unconfirmed += 1;
        let asked = self.claim.is_some();
        let newest = self
            .claim
            .map_or(generation, |c| c.generation.max(generation));
        self.claim = Some(Claim {
            generation: newest,
            heard: self.now,
        });
        if !asked {
            let (witness, known) = (self.config.witness, self.generation);
            self.send(witness, Message::WitnessPing { generation: known });
        }
    }

    fn request_grant(&mut self, want: Generation, backup: Option<NodeId>) {
        let witness = self.config.witness;
        let known = self.generation;
        self.send(
            witness,
            Message::GrantRequest {
                want,
                known,
                backup,
            },
        );
    }

    fn on_peer_message(&mut self, msg: Message) {
        let generation = match &msg {
            Message::Heartbeat { generation, .. }
            | Message::Delta { generation, .. }
            | Message::DeltaAck { generation, .. }
            | Message::Copy { generation, .. }
            | Message::CopyAck { generation, .. }
            | Message::Join { generation, .. } => *generation,
            _ => {
                self.stats.dropped_unexpected += 1;
                return;
            }
        };
        if generation > self.generation {
            return self.on_claim(generation);
        }
        match self.role {
            Role::Primary(_) => self.on_primary_message(msg),
            Role::Backup(_) => self.on_backup_message(msg),
            Role::Joining(_) => self.on_joining_message(msg),
        }
    }

    /// The witness's word: its current grant. It answers the claim we
    /// asked about, if any (a stale answer too: the peer, if right, says
    /// so again and we ask again).
    fn on_witness_state(&mut self, generation: Generation, holder: NodeId, backup: Option<NodeId>) {
        self.witnessed = self.witnessed.max(generation);
        let claim = self.claim.take();
        if claim.is_some_and(|c| c.generation > generation) {
            self.stats.claims_refuted += 1;
        }
        match self.role {
            Role::Primary(_) => self.primary_witness_state(generation, holder, backup),
            Role::Backup(_) => self.backup_witness_state(generation, holder, backup, claim),
            Role::Joining(_) => self.joining_witness_state(generation, holder),
        }
    }

    /// The primary lost its authority: stop the guest and become a joiner.
    fn step_down(&mut self, newer: Option<Generation>) {
        assert!(
            matches!(self.role, Role::Primary(_)),
            "only a primary steps down"
        );
        self.stats.step_downs += 1;
        tracing::info!(node = %self.config.me, generation = %self.generation, ?newer, "stepping down: our authority is gone");
        self.push(Action::StopGuest);
        if let Some(generation) = newer.filter(|g| *g > self.generation) {
            self.adopt_generation(generation);
        }
        // Our disk holds writes past any checkpoint the new primary knows.
        self.role = Role::Joining(Joining::new(None));
        self.tick();
    }

    fn check_invariants(&self, generation_before: Generation) {
        assert!(
            self.generation >= generation_before,
            "generations only grow"
        );
        assert!(
            self.generation <= self.witnessed,
            "generations come from the witness"
        );
        assert!(
            self.claim.is_none_or(|c| c.generation > self.generation),
            "a claim pending is of a newer generation"
        );
        match &self.role {
            Role::Primary(p) => p.check_invariants(&self.config),
            Role::Backup(b) => b.check_invariants(&self.config),
            Role::Joining(j) => j.check_invariants(&self.config),
        }
    }
}
