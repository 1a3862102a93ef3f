//! The primary: runs the guest in epochs, ships deltas, releases output,
//! secedes from a failed backup; `reprotect` brings a joining one in.

mod reprotect;

use reprotect::Copy;

use super::assembly::Transfer;
use super::lineage::{DiskHistory, Lineage};
use super::{Node, Protection, Role};
use crate::action::{Action, Capture};
use crate::config::Config;
use crate::types::{CheckpointId, Digest, Epoch, Generation, Level, NodeId, Time};
use crate::wire::{Message, PeerRole};
use std::collections::BTreeMap;

/// A joiner may be silent this many times `suspect_after_ns` before its
/// copy session is given up (see `Primary::peer_patience_ns`).
pub const JOINER_PATIENCE: u64 = 8;

/// Doublings of the retransmit wait at most (32 times `retransmit_after_ns`).
pub const RETRANSMIT_BACKOFF_MAX: u32 = 5;

/// Where the primary's guest is in its epoch cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Phase {
    /// The guest runs; the open epoch accumulates.
    Running,
    /// Paused; the driver captures the open epoch's delta.
    Capturing { ship: bool },
    /// Paused; the driver captures the final copy round, which ends the epoch.
    CapturingFinal,
    /// Paused because `deltas_in_flight_max` deltas await their ack.
    Held,
}

/// The primary's relation to a backup.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Pairing {
    /// A certified backup receives every delta.
    Paired { backup: NodeId },
    /// The backup is suspected; we asked the witness for a generation alone.
    Seceding,
    /// We hold the generation alone.
    Solo,
    /// Pre-copy rounds to a joiner while the guest runs.
    Copying(Copy),
    /// The final round is out; deltas follow it.
    Catching(Copy),
    /// The joiner holds the final round; we asked the witness to certify it.
    Certifying { joiner: NodeId },
}

/// State of a primary.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Primary {
    pub(super) epoch: Epoch,
    epoch_started: Time,
    phase: Phase,
    pairing: Pairing,
    /// The generation whose backup may acknowledge deltas (acks from an
    /// older incarnation of the peer carry an older one).
    pairing_generation: Generation,
    unacked: BTreeMap<Epoch, Transfer>,
    acked: Epoch,
    last_shipped: Time,
    /// Retransmissions since the peer last acknowledged anything: each
    /// doubles the wait before the next (see `retransmit_wait_ns`).
    retransmits_unanswered: u32,
    pub(super) released: Epoch,
    lineage: Lineage,
    history: DiskHistory,
    /// A grant asked of the witness; never abandoned before it is answered.
    grant_wanted: Option<(Generation, Option<NodeId>)>,
    witness_heard: Time,
    /// The guest went idle in the open epoch with output held: the epoch
    /// ends as soon as it may (see [`Node::handle_guest_idle`]).
    idle_end_wanted: bool,
}

impl Primary {
    pub(super) fn bootstrap(config: &Config, boot: CheckpointId, now: Time) -> Primary {
        Primary::running(
            config,
            Lineage::starting_at(boot),
            Pairing::Paired {
                backup: config.peer,
            },
            boot.generation,
            now,
        )
    }

    /// A primary that resumes after the head of `lineage`.
    pub(in crate::node) fn running(
        config: &Config,
        lineage: Lineage,
        pairing: Pairing,
        pairing_generation: Generation,
        now: Time,
    ) -> Primary {
        let from = lineage.head();
        Primary {
            epoch: from.epoch.next(),
            epoch_started: now,
            phase: Phase::Running,
            pairing,
            pairing_generation,
            unacked: BTreeMap::new(),
            acked: from.epoch,
            last_shipped: now,
            retransmits_unanswered: 0,
            released: from.epoch,
            lineage,
            history: DiskHistory::new(from.epoch.next(), config.disk_history_blocks_max),
            grant_wanted: None,
            witness_heard: now,
            idle_end_wanted: false,
        }
    }

    pub(super) fn protection(&self) -> Protection {
        match self.pairing {
            Pairing::Paired { .. } => Protection::Protected,
            Pairing::Copying(_) | Pairing::Catching(_) | Pairing::Certifying { .. } => {
                Protection::Resyncing
            }
            Pairing::Seceding | Pairing::Solo => Protection::Unprotected,
        }
    }

    /// The peer that receives our deltas, if any.
    fn shipping_to(&self) -> Option<NodeId> {
        match &self.pairing {
            Pairing::Paired { backup } => Some(*backup),
            Pairing::Catching(copy) => Some(copy.joiner),
            Pairing::Certifying { joiner } => Some(*joiner),
            Pairing::Seceding | Pairing::Solo | Pairing::Copying(_) => None,
        }
    }

    /// The peer whose silence we watch.
    fn watching(&self) -> Option<NodeId> {
        match &self.pairing {
            Pairing::Paired { backup } => Some(*backup),
            Pairing::Copying(copy) | Pairing::Catching(copy) => Some(copy.joiner),
            // Certifying: once asked, the grant request is answered first,
            // whatever the joiner does; before, a joiner that stopped
            // acknowledging is given up as in a copy.
            Pairing::Certifying { joiner } if self.grant_wanted.is_none() => Some(*joiner),
            Pairing::Certifying { .. } | Pairing::Seceding | Pairing::Solo => None,
        }
    }

    /// How long to wait for an ack before sending again: `retransmit_after_ns`,
    /// doubled for each retransmission the peer has not answered (a peer
    /// that is slow to apply is not flooded).
    /// Beyond that, what is in flight is given the time it takes at
    /// `transfer_bytes_per_sec_min`: a round of hundreds of MiB is not sent
    /// again before it could have arrived.
    fn retransmit_wait_ns(&self, config: &Config) -> u64 {
        let copy = match &self.pairing {
            Pairing::Copying(c) | Pairing::Catching(c) => {
                c.in_flight.as_ref().map_or(0, Transfer::len)
            }
            _ => 0,
        };
        let bytes = self.unacked.values().map(Transfer::len).sum::<usize>() + copy;
        let transfer_ns = (bytes as u128 * 1_000_000_000
            / u128::from(config.transfer_bytes_per_sec_min))
        .min(u128::from(u64::MAX)) as u64;
        config
            .retransmit_after_ns
            .saturating_mul(1 << self.retransmits_unanswered.min(RETRANSMIT_BACKOFF_MAX))
            .saturating_add(transfer_ns)
    }

    /// How long the watched peer may be silent before it is lost. A backup
    /// gets `suspect_after_ns`. A joiner gets `JOINER_PATIENCE` times that:
    /// it may be busy applying a whole copy round, and while it copies our
    /// releases rest on the witness lease, not on it, so waiting costs
    /// nothing but the copy's time.
    fn peer_patience_ns(&self, config: &Config) -> u64 {
        match self.pairing {
            Pairing::Copying(_) | Pairing::Catching(_) | Pairing::Certifying { .. } => {
                config.suspect_after_ns.saturating_mul(JOINER_PATIENCE)
            }
            _ => config.suspect_after_ns,
        }
    }

    /// Whether the primary's tick asks the witness anyway (a lease ping or
    /// a grant request), so that a claim needs no ping of its own.
    pub(super) fn asks_witness(&self) -> bool {
        self.needs_lease() || self.grant_wanted.is_some()
    }

    /// Whether releasing depends on the witness lease (no backup to ack).
    fn needs_lease(&self) -> bool {
        matches!(
            self.pairing,
            Pairing::Solo | Pairing::Copying(_) | Pairing::Catching(_)
        )
    }

    fn lease_valid(&self, config: &Config, now: Time) -> bool {
        now < self.witness_heard.add_ns(config.suspect_after_ns)
    }

    /// The newest epoch whose output may go out now.
    fn release_target(&self, config: &Config, now: Time) -> Epoch {
        match self.pairing {
            #[cfg(feature = "mutants")]
            Pairing::Paired { .. }
                if config.mutant == Some(crate::config::Mutant::ReleaseBeforeAck) =>
            {
                self.epoch
            }
            Pairing::Paired { .. } => match config.level {
                Level::Ft => self.acked,
                Level::Ha => self.epoch,
            },
            Pairing::Seceding | Pairing::Certifying { .. } => self.acked.min(self.released),
            Pairing::Solo | Pairing::Copying(_) | Pairing::Catching(_) => {
                if self.lease_valid(config, now) {
                    self.epoch
                } else {
                    self.released
                }
            }
        }
    }

    /// When the open epoch of a guest that went idle in it may end early
    /// (see [`Node::handle_guest_idle`]): `None` while it may not (not
    /// asked, not running, no backup, a delta in flight). The one rule for
    /// both the node's timeout and the end itself, so that a deadline is
    /// never set that the end would refuse (the driver would spin on it).
    fn idle_end_at(&self, config: &Config) -> Option<Time> {
        (self.idle_end_wanted
            && self.phase == Phase::Running
            && matches!(self.pairing, Pairing::Paired { .. })
            && self.unacked.is_empty())
        .then(|| self.epoch_started.add_ns(config.epoch_idle_min_ns))
    }

    pub(super) fn deadline(&self, config: &Config, peer_heard: Time, now: Time) -> Option<Time> {
        let mut deadlines = Vec::with_capacity(4);
        if self.phase == Phase::Running {
            deadlines.push(self.epoch_started.add_ns(config.epoch_duration_ns));
            deadlines.extend(self.idle_end_at(config));
        }
        if self.watching().is_some() {
            deadlines.push(peer_heard.add_ns(self.peer_patience_ns(config)));
        }
        let copy_in_flight = matches!(&self.pairing,
            Pairing::Copying(c) | Pairing::Catching(c) if c.in_flight.is_some());
        if !self.unacked.is_empty() || copy_in_flight {
            deadlines.push(self.last_shipped.add_ns(self.retransmit_wait_ns(config)));
        }
        if self.needs_lease() && self.lease_valid(config, now) {
            deadlines.push(self.witness_heard.add_ns(config.suspect_after_ns));
        }
        deadlines.into_iter().min()
    }

    pub(super) fn check_invariants(&self, config: &Config) {
        assert!(
            self.unacked.len() <= config.deltas_in_flight_max as usize,
            "deltas in flight are bounded"
        );
        assert!(
            self.acked < self.epoch,
            "only closed epochs are acknowledged"
        );
        assert!(
            self.released <= self.epoch,
            "only opened epochs are released"
        );
        #[cfg(feature = "mutants")]
        let mutated = config.mutant.is_some();
        #[cfg(not(feature = "mutants"))]
        let mutated = false;
        if config.level == Level::Ft && matches!(self.pairing, Pairing::Paired { .. }) && !mutated {
            assert!(
                self.released <= self.acked,
                "ft: output waits for the backup"
            );
        }
        if let Some(first) = self.unacked.keys().next() {
            assert!(*first > self.acked, "acknowledged deltas are dropped");
        }
        assert!(self.history.blocks() <= config.disk_history_blocks_max);
        if let Pairing::Copying(c) = &self.pairing {
            assert!(
                !c.final_due || c.in_flight.is_none(),
                "one copy round in flight at a time"
            );
            assert!(
                !c.capturing || c.in_flight.is_none(),
                "one copy round in flight at a time"
            );
        }
        assert!(
            self.lineage.head().epoch < self.epoch,
            "the lineage ends before the open epoch"
        );
    }
}

impl Node {
    fn primary(&self) -> &Primary {
        match &self.role {
            Role::Primary(p) => p,
            _ => unreachable!("called on a primary only"),
        }
    }

    fn primary_mut(&mut self) -> &mut Primary {
        match &mut self.role {
            Role::Primary(p) => p,
            _ => unreachable!("called on a primary only"),
        }
    }

    pub(super) fn primary_tick(&mut self) {
        let (peer, witness, generation) = (self.config.peer, self.config.witness, self.generation);
        let p = self.primary();
        let ping = p.needs_lease();
        let wanted = p.grant_wanted;
        let heartbeat = self.primary_heartbeat();
        self.send(peer, heartbeat);
        if ping {
            self.send(witness, Message::WitnessPing { generation });
        }
        if let Some((want, backup)) = wanted {
            self.request_grant(want, backup);
        }
    }

    /// The primary's heartbeat: its generation and its certified backup.
    fn primary_heartbeat(&self) -> Message {
        let backup = match self.primary().pairing {
            Pairing::Paired { backup } => Some(backup),
            _ => None,
        };
        Message::Heartbeat {
            generation: self.generation,
            role: PeerRole::Primary,
            backup,
        }
    }

    pub(super) fn primary_timeouts(&mut self) {
        let (config, now, peer_heard) = (self.config.clone(), self.now, self.peer_heard);
        let p = self.primary();
        if p.phase == Phase::Running && now >= p.epoch_started.add_ns(config.epoch_duration_ns) {
            self.end_epoch();
        }
        self.end_idle_epoch();
        let p = self.primary();
        if p.watching().is_some() && now >= peer_heard.add_ns(p.peer_patience_ns(&config)) {
            self.peer_lost();
        }
        let p = self.primary();
        if now >= p.last_shipped.add_ns(p.retransmit_wait_ns(&config)) {
            let p = self.primary_mut();
            p.retransmits_unanswered = (p.retransmits_unanswered + 1).min(RETRANSMIT_BACKOFF_MAX);
            self.retransmit();
        }
        let p = self.primary();
        if p.needs_lease() && !p.lease_valid(&config, now) && p.released >= p.epoch {
            // Reaching neither backup nor witness: hold output from here on.
            self.end_epoch();
        }
    }

    /// The backup or joiner is gone (silent, or restarted without state).
    fn peer_lost(&mut self) {
        let (me, want) = (self.config.me, self.generation.next());
        let p = self.primary_mut();
        match p.pairing {
            Pairing::Paired { .. } => {
                tracing::info!(node = %me, "backup suspected: asking the witness to go on alone");
                p.pairing = Pairing::Seceding;
                p.unacked.clear();
                p.grant_wanted = Some((want, None));
                self.request_grant(want, None);
                self.hold_output();
            }
            Pairing::Copying(_) | Pairing::Catching(_) | Pairing::Certifying { .. }
                if p.grant_wanted.is_none() =>
            {
                // The joiner was never certified (nor asked to be): we
                // still hold our generation alone.
                tracing::info!(node = %me, "joiner silent: copy abandoned");
                p.pairing = Pairing::Solo;
                p.unacked.clear();
            }
            Pairing::Copying(_)
            | Pairing::Catching(_)
            | Pairing::Certifying { .. }
            | Pairing::Seceding
            | Pairing::Solo => {}
        }
        // Held for acks that will never come: close the epoch unshipped.
        if self.primary().phase == Phase::Held {
            self.end_epoch();
        }
    }

    /// Stop releasing the open epoch: if it was released, end it now so that
    /// new output falls into an epoch that is not.
    fn hold_output(&mut self) {
        let p = self.primary();
        if p.released >= p.epoch {
            self.end_epoch();
        }
    }

    fn retransmit(&mut self) {
        let (peer, generation, chunk_max) = (
            self.config.peer,
            self.generation,
            self.config.chunk_bytes_max,
        );
        let now = self.now;
        let p = self.primary_mut();
        p.last_shipped = now;
        let mut sends = Vec::new();
        if let Some(to) = p.shipping_to() {
            for (epoch, transfer) in &p.unacked {
                for chunk in transfer.chunks(chunk_max) {
                    sends.push((
                        to,
                        Message::Delta {
                            generation,
                            epoch: *epoch,
                            chunk,
                        },
                    ));
                }
            }
        }
        if let Pairing::Copying(c) | Pairing::Catching(c) = &p.pairing {
            if let Some(transfer) = &c.in_flight {
                for chunk in transfer.chunks(chunk_max) {
                    sends.push((
                        c.joiner,
                        Message::Copy {
                            generation,
                            session: c.session,
                            round: c.round,
                            base: c.base,
                            chunk,
                        },
                    ));
                }
            }
        }
        debug_assert!(sends.iter().all(|(to, _)| *to == peer));
        self.stats.retransmits += sends.len() as u64;
        for (to, msg) in sends {
            self.send(to, msg);
        }
    }

    /// Close the open epoch: pause the guest and capture, unless too many
    /// deltas are in flight (then hold the guest until an ack).
    /// The guest went idle with output of the open epoch held: at `ft`
    /// with a backup, the epoch is to end as soon as it may.
    pub(super) fn guest_idle(&mut self) {
        let level = self.config.level;
        let Role::Primary(p) = &mut self.role else {
            return;
        };
        if level == Level::Ft
            && p.phase == Phase::Running
            && matches!(p.pairing, Pairing::Paired { .. })
        {
            p.idle_end_wanted = true;
        }
        self.end_idle_epoch();
    }

    /// Ends the open epoch early if its guest went idle in it, it is
    /// `epoch_idle_min_ns` old and no delta is in flight (an early end then
    /// never holds the guest for acks, and at most one early delta is
    /// unacknowledged).
    fn end_idle_epoch(&mut self) {
        let Role::Primary(p) = &self.role else {
            return;
        };
        if p.idle_end_at(&self.config).is_some_and(|at| self.now >= at) {
            self.stats.idle_epoch_ends += 1;
            self.end_epoch();
        }
    }

    pub(super) fn end_epoch(&mut self) {
        let max = self.config.deltas_in_flight_max as usize;
        let p = self.primary_mut();
        if p.phase != Phase::Running && p.phase != Phase::Held {
            return;
        }
        let was_running = p.phase == Phase::Running;
        let final_due = matches!(&p.pairing, Pairing::Copying(c) if c.final_due && !c.capturing);
        let ship = p.shipping_to().is_some();
        let epoch = p.epoch;
        if final_due {
            let Pairing::Copying(copy) = &mut p.pairing else {
                unreachable!()
            };
            copy.capturing = true;
            let (round, disk) = (copy.round, copy.disk.clone());
            p.phase = Phase::CapturingFinal;
            if was_running {
                self.push(Action::PauseGuest);
            }
            self.push(Action::CaptureCopy {
                round,
                disk,
                last: true,
            });
        } else if ship && p.unacked.len() >= max {
            if was_running {
                p.phase = Phase::Held;
                self.stats.backpressure_holds += 1;
                self.push(Action::PauseGuest);
            }
        } else {
            p.phase = Phase::Capturing { ship };
            if was_running {
                self.push(Action::PauseGuest);
            }
            self.push(Action::CaptureDelta { epoch, ship });
        }
    }

    pub(super) fn on_delta_captured(&mut self, epoch: Epoch, capture: Capture) {
        let (generation, now, chunk_max) = (self.generation, self.now, self.config.chunk_bytes_max);
        let Role::Primary(p) = &mut self.role else {
            // A step-down raced with the capture: nothing to ship.
            return;
        };
        let Phase::Capturing { ship } = p.phase else {
            panic!("CaptureDelta reported without being asked");
        };
        assert_eq!(epoch, p.epoch, "the capture ends the open epoch");
        assert!(capture.bytes.len() as u64 <= self.config.transfer_bytes_max);
        p.history.record(epoch, &capture.disk_blocks);
        p.lineage.extend(generation, epoch);
        self.stats.epochs += 1;
        let to = p.shipping_to().filter(|_| ship);
        if let Some(to) = to {
            self.stats.deltas_shipped += 1;
            self.stats.delta_bytes_shipped += capture.bytes.len() as u64;
            let transfer = Transfer::of(capture);
            let chunks = transfer.chunks(chunk_max);
            p.unacked.insert(epoch, transfer);
            p.last_shipped = now;
            for chunk in chunks {
                self.send(
                    to,
                    Message::Delta {
                        generation,
                        epoch,
                        chunk,
                    },
                );
            }
        }
        self.open_next_epoch();
    }

    fn open_next_epoch(&mut self) {
        let now = self.now;
        let p = self.primary_mut();
        p.epoch = p.epoch.next();
        p.epoch_started = now;
        p.phase = Phase::Running;
        p.idle_end_wanted = false;
        self.push(Action::ResumeGuest);
        if matches!(&self.primary().pairing, Pairing::Copying(c) if c.final_due) {
            self.end_epoch();
        }
    }

    pub(super) fn on_primary_message(&mut self, msg: Message) {
        let peer = self.config.peer;
        let pairing_generation = self.primary().pairing_generation;
        match msg {
            Message::DeltaAck {
                generation: g,
                epoch,
                digest,
            } if g >= pairing_generation => {
                self.peer_heard = self.now;
                self.on_delta_ack(epoch, digest);
            }
            Message::CopyAck {
                generation: g,
                session,
                round,
                digest,
            } if g >= pairing_generation => {
                self.peer_heard = self.now;
                self.on_copy_ack(session, round, digest);
            }
            Message::Heartbeat {
                generation: g,
                role,
                ..
            } if g >= pairing_generation => {
                match role {
                    PeerRole::Primary => self.stats.dropped_unexpected += 1,
                    // A joiner that still waits for a session we gave up
                    // (it went silent too long): it only heartbeats now,
                    // so its heartbeat is its Join.
                    PeerRole::Joining if matches!(self.primary().pairing, Pairing::Solo) => {
                        self.on_join(g, None)
                    }
                    _ => self.peer_heard = self.now,
                }
            }
            Message::Join {
                generation: g,
                disk,
            } => self.on_join(g, disk),
            Message::Delta { .. } | Message::Copy { .. } => {
                // An older primary still ships: tell it our generation.
                self.stats.dropped_stale += 1;
                let heartbeat = self.primary_heartbeat();
                self.send(peer, heartbeat);
            }
            _ => self.stats.dropped_stale += 1,
        }
    }

    fn on_delta_ack(&mut self, epoch: Epoch, digest: Digest) {
        let p = self.primary_mut();
        if p.shipping_to().is_none() || epoch >= p.epoch {
            self.stats.dropped_unexpected += 1;
            return;
        }
        // Every epoch past the acknowledged ones is in flight: an ack that
        // moves on names one of them and the digest of what we shipped for
        // it. Any other (stale, forged, of content we never sent) releases
        // nothing.
        let shipped = p.unacked.get(&epoch).map(Transfer::digest);
        if epoch > p.acked && shipped != Some(digest) {
            self.stats.dropped_contradicting += 1;
            return;
        }
        if epoch > p.acked {
            p.retransmits_unanswered = 0;
            p.acked = epoch;
            p.unacked = p.unacked.split_off(&epoch.next());
        }
        if p.phase == Phase::Held {
            self.end_epoch();
        }
        self.end_idle_epoch();
        self.maybe_request_certification();
    }

    pub(super) fn primary_witness_state(
        &mut self,
        generation: Generation,
        holder: NodeId,
        backup: Option<NodeId>,
    ) {
        let (me, now, current) = (self.config.me, self.now, self.generation);
        let p = self.primary_mut();
        if generation == current && holder == me {
            p.witness_heard = now;
        }
        match p.grant_wanted {
            Some((want, wanted_backup))
                if generation == want
                    && generation > current
                    && holder == me
                    && backup == wanted_backup =>
            {
                p.grant_wanted = None;
                p.witness_heard = now;
                p.pairing = match &p.pairing {
                    Pairing::Certifying { joiner } => Pairing::Paired { backup: *joiner },
                    Pairing::Seceding => Pairing::Solo,
                    other => {
                        unreachable!("a grant is wanted only seceding or certifying, not {other:?}")
                    }
                };
                self.adopt_generation(generation);
                let protection = self.primary().protection();
                tracing::info!(node = %me, %generation, ?protection, "granted");
                self.primary_tick();
            }
            _ if generation > current => self.step_down(Some(generation)),
            _ => {}
        }
    }

    /// Emit `ReleaseOutput` when the release watermark can advance.
    pub(super) fn update_release(&mut self) {
        let (config, now) = (&self.config, self.now);
        let Role::Primary(p) = &mut self.role else {
            return;
        };
        let target = p.release_target(config, now);
        if target > p.released {
            p.released = target;
            self.push(Action::ReleaseOutput { upto: target });
        }
    }
}
