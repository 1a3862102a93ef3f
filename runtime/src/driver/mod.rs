//! The node driver: one VM host's protocol node, its machine and its
//! output buffer, joined. It carries out the protocol's actions on the
//! machine (pause, capture, apply, restore, release) and runs the guest in
//! step with time.
//!
//! Time: the protocol's `now` and guest time advance together; the guest
//! runs one instruction per nanosecond of host time while it is not paused
//! (the emulated engine counts guest time that way; see `machine::Engine`).

mod copy;
mod outputs;
mod reaper;
mod witness;

pub use outputs::HELD_PACKETS_MAX;
pub use witness::WitnessHost;

use copy::{CopyStream, FirstRound};
use machine::devices::{Packet, RX_QUEUE_MAX};
use machine::{
    Checkpoint, CheckpointRef, Engine, Instructions, Kind, Machine, MachineError, RunExit,
    CHECKPOINT_BYTES_MAX,
};
use outputs::Outputs;
use protocol::wire::Unsealed;
use protocol::{
    Action, BlockIndex, Capture, CheckpointId, Codec, Config, ConfigError, Digest, DiskCopy,
    Envelope, Generation, Node, NodeId, Protection, RoleKind, Start, Time,
};
use std::collections::{BTreeSet, VecDeque};

/// Who waits for the disk reads of a capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiskWait {
    /// The guest stays paused until they are done (an epoch's delta, the
    /// last copy round).
    Guest,
    /// The guest runs on; the capture is reported when they are done (a
    /// pre-copy round, read in the background as live migration reads).
    Background,
}

/// Something the host sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A protocol frame for another host (the peer or the witness).
    Frame {
        /// Addressee.
        to: NodeId,
        /// The frame, stamped: whoever sends it seals it (encodes and
        /// tags it), on the link's own thread.
        frame: Unsealed,
    },
    /// A guest output the protocol released to the outside world.
    Output(Packet),
}

/// What the host needs done, in order. The daemon completes each effect
/// before it takes the next: a frame that follows a `PersistGeneration`
/// (a heartbeat naming the new generation, a grant request) leaves only
/// once the generation is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Make `generation` durable: a restart starts from it.
    PersistGeneration(Generation),
    /// The local disk durably holds this checkpoint (flushed), or none
    /// whole: record it beside the disk's data, for a restart to claim.
    DiskHolds(Option<CheckpointId>),
    /// Send this.
    Transmit(Transmit),
}

/// How the guest's time relates to the host's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Guest time follows the clock exactly: each call runs the guest for
    /// all the time since the last (the simulator, where the clock is
    /// simulated and guest execution is what advances it).
    Lockstep,
    /// Each call runs the guest for at most `slice_ns` (a real host: the
    /// guest may run slower than the wall clock, and time it did not get
    /// is not owed; a short slice keeps frames and heartbeats waiting at
    /// most that long).
    Slices {
        /// Longest run of the guest per call.
        slice_ns: u64,
    },
}

/// Why a host cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The protocol configuration is invalid.
    #[error("protocol configuration: {0}")]
    Config(#[from] ConfigError),
    /// The machine failed (a guest fault, a bad checkpoint).
    #[error("machine: {0}")]
    Machine(MachineError),
    /// Promoted while the standby image had failed to apply a delta.
    #[error("standby image is inconsistent ({0}); refusing to resume it")]
    BrokenStandby(String),
    /// The local disk failed: the host stops (fail-stop) before the output
    /// of the epoch that saw the failure can be released, and the peer
    /// takes over.
    #[error("local disk failed ({0}); stopping this host")]
    DiskFailed(String),
    /// The guest image could not be had (a missing kernel, a boot that
    /// did not reach its service).
    #[error("guest image: {0}")]
    Guest(String),
}

impl From<MachineError> for HostError {
    /// A failing disk store is the host's disk failing, whatever operation
    /// met it (a guest command, a capture reading blocks, a restore).
    fn from(error: MachineError) -> HostError {
        match error {
            MachineError::Store(e) => HostError::DiskFailed(e.to_string()),
            other => HostError::Machine(other),
        }
    }
}

/// Counters of one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostStats {
    /// Guest instructions run (guest time, in ns).
    pub guest_ns: u64,
    /// Outputs released to the outside.
    pub outputs_released: u64,
    /// Outputs discarded unreleased at the end of a term.
    pub outputs_discarded: u64,
    /// Client packets dropped (not primary, guest stopped, its NIC and
    /// the backlog before it full).
    pub inputs_dropped: u64,
    /// Deltas captured (shipped or not).
    pub captures: u64,
    /// Pages in captured deltas.
    pub captured_pages: u64,
    /// Bytes of shipped deltas and copy rounds.
    pub shipped_bytes: u64,
    /// Deltas and copy rounds applied to the standby image.
    pub applied: u64,
    /// Pages of each shipped delta, the most recent `DELTA_PAGES_KEPT`.
    pub delta_pages: Vec<u64>,
    /// Disk time (simulated ns) each of those captures held the guest
    /// paused for, beside its pages.
    pub delta_disk_ns: Vec<u64>,
    /// Disk blocks in copy rounds sent to joiners.
    pub copied_blocks: u64,
    /// Copy sessions whose first round carried only the blocks the
    /// joiner's disk lacked.
    pub block_resyncs: u64,
    /// Simulated time the host waited on its disk outside guest commands
    /// (captures, applies), in ns.
    pub disk_wait_ns: u64,
}

/// Per-delta page counts kept in [`HostStats::delta_pages`].
pub const DELTA_PAGES_KEPT: usize = 4096;

/// Client packets held for a guest whose NIC is full, at most; beyond it
/// they are dropped (and counted) and the client retries.
pub const INPUT_BACKLOG_MAX: usize = 4096;

/// Pages of a copy session's round 0 read at a time (1 MiB): round 0 of a
/// large guest is read while the guest runs, this much at a time.
pub const COPY_PART_PAGES: u32 = 256;
/// Guest time between two parts of round 0 (1 ms).
pub const COPY_PART_NS: u64 = 1_000_000;

/// What the host's guest is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guest {
    /// Runs (unless paused by the protocol): this host is primary.
    Running,
    /// The machine is a standby image that deltas are applied to.
    Standby,
    /// No usable guest state (joining, or stepped down).
    Stopped,
}

/// One VM host.
#[derive(Debug)]
pub struct VmHost<E: Engine> {
    node: Node,
    machine: Machine<E>,
    guest: Guest,
    paused: bool,
    outputs: Outputs,
    /// Client packets the guest's NIC had no room for, oldest first: they
    /// go in as the guest drains it (a host's tap queue), not to the floor.
    backlog: VecDeque<Packet>,
    /// In slices: the last run found every vCPU asleep with nothing due
    /// before this (host time); until an input or then, running the guest
    /// again would only spin.
    idle_until: Option<Time>,
    copy: Option<CopyStream>,
    /// What to do, in order, each not before its time (an ack waits for
    /// the disk writes of what it acknowledges).
    effects: VecDeque<(Time, Effect)>,
    pace: Pace,
    last_run: Time,
    /// The disk's error count already seen.
    disk_errors_seen: u64,
    /// The engine's dirty-fault counter at the last capture.
    dirty_mark: u64,
    persisted: Generation,
    /// The checkpoint the local disk durably holds, if it holds one whole:
    /// what a restart claims in its `Join`.
    disk_checkpoint: Option<CheckpointId>,
    /// The guest does not run before this (the host waits on its disk).
    guest_held_until: Time,
    /// The disk is busy with the standby's writes until then.
    disk_free_at: Time,
    /// A pre-copy round whose disk reads are still under way (the guest
    /// runs on meanwhile): the node hears of it when they are done.
    copy_reading: Option<(Time, u32, Capture)>,
    broken: Option<String>,
    stats: HostStats,
    /// Large rounds the protocol holds until they are acknowledged.
    handed: reaper::Handed,
}

impl<E: Engine> VmHost<E> {
    /// A host starting as `start`, with `machine` booted from the guest
    /// image (primary: it runs; backup: it is the standby image at epoch 0;
    /// restart: it waits for a copy).
    pub fn new(
        config: Config,
        codec: Codec,
        start: Start,
        machine: Machine<E>,
        now: Time,
    ) -> Result<VmHost<E>, HostError> {
        let node = Node::new(config, codec, start, now)?;
        let (guest, disk_holds) = match start {
            Start::Primary { .. } => (Guest::Running, None),
            // A backup boots from the same image as the primary: its disk
            // is the boot checkpoint.
            Start::Backup { .. } => (Guest::Standby, node.applied()),
            Start::Restart { disk, .. } => (Guest::Stopped, disk),
        };
        let dirty_mark = machine.engine().stats().dirty_faults;
        let mut host = VmHost {
            persisted: node.generation(),
            disk_checkpoint: None,
            guest_held_until: now,
            disk_free_at: now,
            copy_reading: None,
            node,
            machine,
            guest,
            paused: false,
            outputs: Outputs::default(),
            backlog: VecDeque::new(),
            idle_until: None,
            copy: None,
            effects: VecDeque::new(),
            pace: Pace::Lockstep,
            last_run: now,
            disk_errors_seen: 0,
            dirty_mark,
            broken: None,
            stats: HostStats::default(),
            handed: reaper::Handed::default(),
        };
        // What the disk holds at the start is said once, whatever it is.
        host.disk_checkpoint = disk_holds;
        host.effects.push_back((now, Effect::DiskHolds(disk_holds)));
        host.carry_out(now)?;
        Ok(host)
    }

    /// Sets how guest time follows the clock (default [`Pace::Lockstep`]).
    pub fn set_pace(&mut self, pace: Pace) {
        if let Pace::Slices { slice_ns } = pace {
            assert!(slice_ns > 0, "a slice runs the guest");
        }
        self.pace = pace;
    }

    /// Whether the guest runs now (a running primary, not paused for a
    /// capture or its disk).
    pub fn guest_runs(&self, now: Time) -> bool {
        self.guest == Guest::Running && !self.paused && now >= self.guest_held_until
    }

    /// The disk now holds `holds`: an effect for the daemon if it changed.
    fn note_disk(&mut self, now: Time, holds: Option<CheckpointId>) {
        if self.disk_checkpoint != holds {
            self.disk_checkpoint = holds;
            self.effects.push_back((now, Effect::DiskHolds(holds)));
        }
    }

    /// The protocol node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The machine (the running guest on a primary, the standby image on a
    /// backup).
    pub fn machine(&mut self) -> &mut Machine<E> {
        &mut self.machine
    }

    /// The generation last persisted: what a restart starts from.
    pub fn persisted_generation(&self) -> Generation {
        self.persisted
    }

    /// The checkpoint the local disk durably holds (flushed), if it holds
    /// one whole: a restart with this disk may claim it. `None` once the
    /// disk is written past it (a running guest, a copy under way).
    pub fn disk_checkpoint(&self) -> Option<CheckpointId> {
        self.disk_checkpoint
    }

    /// Counters.
    pub fn stats(&self) -> &HostStats {
        &self.stats
    }

    /// Outputs held, waiting for their epoch's release.
    pub fn outputs_held(&self) -> usize {
        self.outputs.held()
    }

    /// Whether this host's guest runs.
    pub fn is_running(&self) -> bool {
        self.guest == Guest::Running
    }

    /// On a real host (see [`Pace::Slices`]): the guest sleeps with nothing
    /// due before this time, so the host may wait for an input until then
    /// instead of running it. `None`: it may have work now (or the host
    /// keeps lockstep with the guest, as the simulator does).
    pub fn guest_idle_until(&self) -> Option<Time> {
        self.idle_until
    }

    /// The next thing to do at `now`: the oldest effect that is due (an
    /// ack whose disk writes are still under way waits; a later heartbeat
    /// does not wait for it). Only frames ever wait, so an effect that
    /// must be durable first is never overtaken by one queued after it.
    pub fn poll_effect(&mut self, now: Time) -> Option<Effect> {
        let due = self.effects.iter().position(|(at, _)| *at <= now)?;
        self.effects.remove(due).map(|(_, e)| e)
    }

    /// The next thing to send at `now`, completing every durable effect
    /// due before it at once (for drivers with nothing to make durable:
    /// tests and tools).
    pub fn poll_transmit(&mut self, now: Time) -> Option<Transmit> {
        loop {
            match self.poll_effect(now)? {
                Effect::Transmit(t) => return Some(t),
                Effect::PersistGeneration(_) | Effect::DiskHolds(_) => {}
            }
        }
    }

    /// When to call [`VmHost::advance`] next, at the latest (and so to
    /// poll what became due).
    pub fn next_deadline(&self) -> Time {
        let part = self
            .copy
            .as_ref()
            .and_then(|c| c.first.as_ref())
            .map(|first| first.next_part);
        let reading = self.copy_reading.as_ref().map(|(at, _, _)| *at);
        let timeout = [part, reading]
            .into_iter()
            .flatten()
            .fold(self.node.poll_timeout(), Time::min);
        self.effects
            .iter()
            .map(|(at, _)| *at)
            .filter(|at| *at > self.last_run)
            .fold(timeout, Time::min)
    }

    /// A frame arrived from another host.
    pub fn handle_frame(&mut self, now: Time, bytes: &[u8]) -> Result<(), HostError> {
        self.idle_until = None;
        self.catch_up(now)?;
        self.node.handle_bytes(now, bytes);
        self.carry_out(now)
    }

    /// A packet from a client for the guest. Only a running primary takes
    /// it; elsewhere it is dropped, as the client will retry.
    pub fn handle_client_packet(&mut self, now: Time, packet: Packet) -> Result<(), HostError> {
        self.idle_until = None;
        self.catch_up(now)?;
        if self.guest != Guest::Running {
            self.stats.inputs_dropped += 1;
            return Ok(());
        }
        self.feed_nic();
        if self.backlog.is_empty() && self.machine.bus().nic.rx_len() < RX_QUEUE_MAX {
            self.deliver(packet);
        } else if self.backlog.len() < INPUT_BACKLOG_MAX {
            self.backlog.push_back(packet);
        } else {
            self.stats.inputs_dropped += 1;
        }
        Ok(())
    }

    /// Moves held client packets into the guest's NIC while it has room.
    fn feed_nic(&mut self) {
        while self.machine.bus().nic.rx_len() < RX_QUEUE_MAX {
            let Some(packet) = self.backlog.pop_front() else {
                return;
            };
            self.deliver(packet);
        }
    }

    fn deliver(&mut self, packet: Packet) {
        if self.machine.bus().deliver_client(packet).is_err() {
            // Longer than the NIC takes.
            self.stats.inputs_dropped += 1;
        }
    }

    /// Before an input: in lockstep the guest and the timers catch up to
    /// `now` first (the input arrives at `now` in guest time too). On a real
    /// host nothing runs first: after a long step (a big capture or apply)
    /// the inputs that waited meanwhile are taken before any timer fires,
    /// so a peer whose heartbeats sat in our queue is not suspected for
    /// our own slowness.
    fn catch_up(&mut self, now: Time) -> Result<(), HostError> {
        match self.pace {
            Pace::Lockstep => self.advance(now),
            Pace::Slices { .. } => Ok(()),
        }
    }

    /// The host was frozen (a stopped process, a paused VM host) until
    /// `now`: its guest ran no instructions meanwhile. Protocol deadlines
    /// that passed fire at the next [`VmHost::advance`].
    pub fn thaw(&mut self, now: Time) {
        assert!(now >= self.last_run, "time does not go backwards");
        self.idle_until = None;
        self.last_run = now;
    }

    /// Runs the guest up to `now` and acts on every protocol deadline due.
    pub fn advance(&mut self, now: Time) -> Result<(), HostError> {
        assert!(now >= self.last_run, "time does not go backwards");
        let from = self.last_run.max(self.guest_held_until);
        let may_run = self.guest == Guest::Running && !self.paused && now >= self.guest_held_until;
        if !may_run {
            // vCPUs kept running between runs (see `Machine::keep_running`)
            // stop while the guest must not run.
            self.machine.settle()?;
        }
        if may_run && now > from {
            self.feed_nic();
            let budget = match self.pace {
                Pace::Lockstep => now.0 - from.0,
                Pace::Slices { slice_ns } => (now.0 - from.0).min(slice_ns),
            };
            let started = self.machine.engine().now();
            let exit = self.machine.run(Instructions(budget))?;
            self.idle_until = match (exit, self.pace) {
                (RunExit::Idle, Pace::Slices { .. }) => {
                    let guest_now = self.machine.engine().now().0;
                    Some(match self.machine.bus().next_deadline() {
                        Some(at) => now.add_ns(at.0.saturating_sub(guest_now)),
                        None => Time(u64::MAX),
                    })
                }
                _ => None,
            };
            self.stats.guest_ns += match exit {
                // Woken for an input: it ran what the engine's clock says.
                RunExit::Woken => self.machine.engine().now().0 - started.0,
                RunExit::BudgetSpent | RunExit::Idle => budget,
            };
            let errors = self.machine.bus().disk.errors();
            if errors > self.disk_errors_seen {
                return Err(HostError::DiskFailed(format!(
                    "{errors} failed disk commands"
                )));
            }
            self.collect_outputs(now);
            let dirty = self.machine.engine().stats().dirty_faults - self.dirty_mark;
            self.node.handle_dirty_pages(now, dirty);
            // A guest that sleeps with its replies held: the protocol may
            // end the epoch early, so they leave at the backup's ack rather
            // than at the epoch's timer.
            let open = self.node.epoch();
            if matches!(exit, RunExit::Idle) && open.is_some_and(|e| self.outputs.holds(e)) {
                self.node.handle_guest_idle(now);
            }
        }
        self.last_run = now;
        self.read_first_round(now)?;
        if self
            .copy_reading
            .as_ref()
            .is_some_and(|(at, _, _)| *at <= now)
        {
            let (_, round, capture) = self.copy_reading.take().expect("just seen");
            self.node.handle_copy_captured(now, round, capture);
        }
        if self.node.poll_timeout() <= now {
            self.node.handle_timeout(now);
        }
        self.carry_out(now)
    }

    /// Reads the next part of a copy session's round 0 if it is due; once
    /// it is read whole, the protocol has it.
    fn read_first_round(&mut self, now: Time) -> Result<(), HostError> {
        let Some(first) = self.copy.as_mut().and_then(|c| c.first.as_mut()) else {
            return Ok(());
        };
        if first.next_part > now {
            return Ok(());
        }
        let done = self
            .machine
            .stream_full(&mut first.stream, COPY_PART_PAGES)?;
        // The guest runs on while the disk reads the part's blocks; the
        // next part (or the round's report) waits for them.
        let busy = self.machine.bus().store().take_busy_ns();
        self.stats.disk_wait_ns += busy;
        first.next_part = now.add_ns(COPY_PART_NS.max(busy));
        if !done {
            return Ok(());
        }
        let first = self
            .copy
            .as_mut()
            .and_then(|c| c.first.take())
            .expect("read just now");
        let read = self.machine.finish_full(first.stream);
        self.stats.captures += 1;
        self.stats.captured_pages += read.pages;
        self.stats.copied_blocks += read.blocks.len() as u64;
        self.stats.shipped_bytes += read.bytes.len() as u64;
        let bytes = bytes::Bytes::from(read.bytes);
        self.handed.note(&bytes);
        let capture = Capture {
            bytes,
            digest: Some(Digest(read.sha256)),
            disk_blocks: first.written,
            pages: read.pages,
        };
        if busy > 0 {
            self.copy_reading = Some((now.add_ns(busy), 0, capture));
        } else {
            self.node.handle_copy_captured(now, 0, capture);
        }
        Ok(())
    }

    fn collect_outputs(&mut self, now: Time) {
        let epoch = self.node.epoch().expect("a running guest is on a primary");
        let packets = self.machine.bus().take_client_output();
        let (effects, stats) = (&mut self.effects, &mut self.stats);
        for packet in packets {
            self.outputs.push(epoch, packet, &mut |p| {
                stats.outputs_released += 1;
                effects.push_back((now, Effect::Transmit(Transmit::Output(p))));
            });
        }
    }

    /// Carries out every action the protocol has for us, in order.
    fn carry_out(&mut self, now: Time) -> Result<(), HostError> {
        let (mut applied, queued) = (false, self.effects.len());
        while let Some(action) = self.node.poll_action() {
            applied |= matches!(action, Action::ApplyDelta { .. } | Action::ApplyCopy { .. });
            self.act(now, action)?;
        }
        if applied {
            let busy = self.settle_disk(now)?;
            if busy > 0 {
                // The disk takes the writes one after the other; what this
                // step sends (its acks) leaves when they are done.
                self.disk_free_at = self.disk_free_at.max(now).add_ns(busy);
                for (at, effect) in self.effects.iter_mut().skip(queued) {
                    if matches!(effect, Effect::Transmit(Transmit::Frame { .. })) {
                        *at = self.disk_free_at;
                    }
                }
            }
        }
        if self.copy.is_some() && self.node.protection() != Some(Protection::Resyncing) {
            // The copy session was abandoned: a round 0 still being read
            // holds a buffer of the whole memory.
            if let Some(copy) = self.copy.take() {
                let len = copy.first.as_ref().map_or(0, |f| f.stream.bytes_held());
                reaper::free(copy, len);
            }
        }
        self.handed.free_released();
        Ok(())
    }

    fn act(&mut self, now: Time, action: Action) -> Result<(), HostError> {
        match action {
            Action::Send { to, msg } => {
                let envelope = Envelope {
                    from: self.node.config().me,
                    to,
                    msg,
                };
                let frame = self.node.codec_mut().stamp(envelope);
                self.effects
                    .push_back((now, Effect::Transmit(Transmit::Frame { to, frame })));
            }
            Action::PauseGuest => {
                self.paused = true;
                // vCPUs kept running between runs stop now, not at the
                // capture.
                self.machine.settle()?;
            }
            Action::ResumeGuest => self.paused = false,
            Action::CaptureDelta { epoch, ship } => {
                let (checkpoint, disk_ns) = self.capture(Kind::Delta)?;
                let capture = describe(&checkpoint, ship);
                self.stats.shipped_bytes += capture.bytes.len() as u64;
                if ship && self.stats.delta_pages.len() < DELTA_PAGES_KEPT {
                    self.stats.delta_pages.push(capture.pages);
                    self.stats.delta_disk_ns.push(disk_ns);
                }
                if let Some(copy) = &mut self.copy {
                    copy.absorb(checkpoint);
                }
                self.node.handle_delta_captured(now, epoch, capture);
            }
            Action::CaptureCopy {
                round: 0,
                disk,
                last: false,
            } => {
                // Round 0 copies all memory and the disk the joiner lacks
                // (all of it, or the blocks written since the checkpoint
                // its disk holds), read a part at a time while the guest
                // runs on; the deltas taken meanwhile go in round 1.
                let written = self.written_blocks();
                let only: Option<BTreeSet<u64>> = match disk {
                    DiskCopy::Full => None,
                    DiskCopy::Blocks(blocks) => {
                        self.stats.block_resyncs += 1;
                        Some(blocks.iter().map(|b| b.0).collect())
                    }
                };
                let stream = self.machine.begin_full(only.as_ref())?;
                // A new session replaces a round still being read.
                self.copy_reading = None;
                self.dirty_mark = self.machine.engine().stats().dirty_faults;
                self.copy = Some(CopyStream::reading(FirstRound {
                    stream,
                    next_part: now,
                    written,
                }));
                self.read_first_round(now)?;
            }
            Action::CaptureCopy { round, disk, last } => {
                let written = self.written_blocks();
                // Pre-copy rounds are read while the guest runs (a whole
                // disk on a slow one takes long); only the last, paused
                // round keeps the guest waiting for its reads.
                let wait = if last {
                    DiskWait::Guest
                } else {
                    DiskWait::Background
                };
                let checkpoint = match (round, disk) {
                    (0, DiskCopy::Full) => self.machine.checkpoint(Kind::Full)?,
                    (0, DiskCopy::Blocks(blocks)) => {
                        self.stats.block_resyncs += 1;
                        let blocks: BTreeSet<u64> = blocks.iter().map(|b| b.0).collect();
                        self.machine.checkpoint_with_blocks(&blocks)?
                    }
                    _ => self.machine.checkpoint(Kind::Delta)?,
                };
                let (checkpoint, busy) = self.captured(checkpoint, wait);
                let copy = self.copy.get_or_insert_with(CopyStream::default);
                copy.absorb(checkpoint);
                let round_checkpoint = copy.take_round().expect("absorbed just now");
                let mut capture = describe(&round_checkpoint, true);
                self.handed.note(&capture.bytes);
                self.stats.copied_blocks += capture.disk_blocks.len() as u64;
                capture.disk_blocks = written;
                self.stats.shipped_bytes += capture.bytes.len() as u64;
                if last {
                    self.copy = None;
                }
                // A newer round replaces one still being read (its session
                // was given up).
                self.copy_reading = None;
                if wait == DiskWait::Background && busy > 0 {
                    self.copy_reading = Some((now.add_ns(busy), round, capture));
                } else {
                    self.node.handle_copy_captured(now, round, capture);
                }
            }
            Action::ApplyDelta { delta: bytes, .. } => self.apply(&bytes)?,
            Action::ApplyCopy { copy: bytes, .. } => {
                // The copy overwrites the disk: whatever checkpoint it held
                // is gone until the copy completes.
                self.note_disk(now, None);
                self.apply(&bytes)?;
                let len = bytes.len();
                reaper::free(bytes, len);
            }
            Action::ReleaseOutput { upto } => {
                let (effects, stats) = (&mut self.effects, &mut self.stats);
                self.outputs.release(upto, &mut |p| {
                    stats.outputs_released += 1;
                    effects.push_back((now, Effect::Transmit(Transmit::Output(p))));
                });
            }
            Action::RestoreAndResume { checkpoint } => {
                if let Some(problem) = self.broken.take() {
                    return Err(HostError::BrokenStandby(problem));
                }
                tracing::info!(node = %self.node.config().me, ?checkpoint, "resuming the standby image");
                self.end_term();
                // The guest writes past the checkpoint from now on.
                self.note_disk(now, None);
                self.guest = Guest::Running;
                self.paused = false;
                self.last_run = now;
                self.disk_errors_seen = self.machine.bus().disk.errors();
                self.dirty_mark = self.machine.engine().stats().dirty_faults;
            }
            Action::StopGuest => {
                self.machine.settle()?;
                self.end_term();
                self.note_disk(now, None);
                self.guest = Guest::Stopped;
            }
            Action::PersistGeneration(generation) => {
                self.persisted = generation;
                self.effects
                    .push_back((now, Effect::PersistGeneration(generation)));
            }
            Action::PersistGrant(_) => unreachable!("only the witness grants"),
        }
        Ok(())
    }

    /// A checkpoint of `kind`, and the disk time (simulated ns) it took.
    fn capture(&mut self, kind: Kind) -> Result<(Checkpoint, u64), HostError> {
        let checkpoint = self.machine.checkpoint(kind)?;
        Ok(self.captured(checkpoint, DiskWait::Guest))
    }

    /// Bookkeeping after a capture. The guest is paused for it; the disk
    /// reads it needed take their (simulated) time, which is returned
    /// beside the checkpoint, and `wait` says who waits for them.
    fn captured(&mut self, checkpoint: Checkpoint, wait: DiskWait) -> (Checkpoint, u64) {
        self.dirty_mark = self.machine.engine().stats().dirty_faults;
        self.stats.captures += 1;
        self.stats.captured_pages += checkpoint.pages.len() as u64;
        let busy = self.machine.bus().store().take_busy_ns();
        if busy > 0 {
            self.stats.disk_wait_ns += busy;
            match wait {
                DiskWait::Guest => {
                    let from = self.last_run.max(self.guest_held_until);
                    self.guest_held_until = from.add_ns(busy);
                }
                DiskWait::Background => {}
            }
        }
        (checkpoint, busy)
    }

    /// After deltas or copy rounds were applied: the standby's writes are
    /// flushed, then (a backup) the disk durably holds the checkpoint the
    /// node applied. Returns the disk time the writes took.
    fn settle_disk(&mut self, now: Time) -> Result<u64, HostError> {
        self.machine
            .bus()
            .store()
            .flush()
            .map_err(|e| HostError::DiskFailed(e.to_string()))?;
        let busy = self.machine.bus().store().take_busy_ns();
        self.stats.disk_wait_ns += busy;
        let holds = match (self.node.role(), &self.broken) {
            (RoleKind::Backup, None) => self.node.applied(),
            _ => None,
        };
        self.note_disk(now, holds);
        Ok(busy)
    }

    /// A complete delta or copy round from the primary, onto the standby.
    /// A failure leaves the standby unusable: promotion then refuses.
    fn apply(&mut self, bytes: &[u8]) -> Result<(), HostError> {
        let applied = CheckpointRef::decode(bytes, CHECKPOINT_BYTES_MAX)
            .map_err(|e| e.to_string())
            .and_then(|checkpoint| {
                if checkpoint.kind == Kind::Full {
                    self.broken = None;
                }
                match self.machine.restore_ref(&checkpoint) {
                    Err(MachineError::Store(e)) => Ok(Err(e)),
                    other => other.map(Ok).map_err(|e| e.to_string()),
                }
            });
        match applied {
            Ok(Ok(())) => {
                self.stats.applied += 1;
                self.guest = Guest::Standby;
                Ok(())
            }
            // The standby's own disk failed: stop, as a primary would.
            Ok(Err(store)) => Err(HostError::DiskFailed(store.to_string())),
            Err(problem) => {
                tracing::error!(node = %self.node.config().me, %problem, "standby image broken");
                self.broken.get_or_insert(problem);
                Ok(())
            }
        }
    }

    /// The blocks written since the last capture.
    fn written_blocks(&mut self) -> Vec<BlockIndex> {
        self.machine
            .bus()
            .disk
            .written()
            .iter()
            .map(|b| BlockIndex(*b))
            .collect()
    }

    fn end_term(&mut self) {
        self.stats.outputs_discarded += self.outputs.discard() as u64;
        self.stats.inputs_dropped += self.backlog.len() as u64;
        self.backlog.clear();
        self.copy = None;
        self.copy_reading = None;
        let _ = self.machine.bus().nic.take_tx();
    }

    /// The role of this host's node.
    pub fn role(&self) -> RoleKind {
        self.node.role()
    }
}

fn describe(checkpoint: &Checkpoint, ship: bool) -> Capture {
    let (bytes, digest) = if ship {
        let (bytes, sha256) = checkpoint.encode_hashed();
        (bytes.into(), Some(Digest(sha256)))
    } else {
        (bytes::Bytes::new(), None)
    };
    Capture {
        bytes,
        digest,
        disk_blocks: checkpoint
            .blocks
            .iter()
            .map(|(b, _)| BlockIndex(*b))
            .collect(),
        pages: checkpoint.pages.len() as u64,
    }
}
