//! The model: state, actions, the driver that carries out protocol actions,
//! and the properties.

use protocol::{
    Action, Capture, CheckpointId, Codec, Config, Epoch, Generation, Grant, Level, Message, Node,
    NodeId, RoleKind, Start, Time, Witness,
};
use stateright::{Model, Property};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

const HOSTS: [NodeId; 2] = [NodeId(0), NodeId(1)];
const WITNESS: NodeId = NodeId(2);
/// Protocol actions carried out for one input, at most (a runaway loop in
/// the protocol is a bug the model reports).
const DRIVER_STEPS_MAX: usize = 256;

/// Bounds of the explored space and the faults allowed in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Protection level under check.
    pub level: Level,
    /// Host crashes, in total.
    pub crashes_max: u8,
    /// Host restarts, in total.
    pub restarts_max: u8,
    /// Messages lost, in total.
    pub losses_max: u8,
    /// Messages delivered twice, in total.
    pub duplicates_max: u8,
    /// Chunks a hostile peer delivers spoiled (other bytes, or another
    /// chunk count) ahead of the real one, in total.
    pub spoils_max: u8,
    /// Heartbeats a hostile peer forges that claim the generation after
    /// the witness's grant (not granted when sent), naming the receiver
    /// its certified backup, in total.
    pub claims_max: u8,
    /// Guest outputs, in total.
    pub outputs_max: u8,
    /// Messages in flight at once; a send beyond it is lost.
    pub in_flight_max: usize,
    /// Witness outages (it keeps its grant: it persists it).
    pub witness_outages_max: u8,
    /// Fair scheduling: time advances only when nothing is in flight, and
    /// no message is lost (the liveness variant).
    pub fair: bool,
    /// Logical time bound of the fair variant, in heartbeat intervals.
    pub time_max_ticks: u64,
}

impl Bounds {
    /// The safety variant: loss, duplication, reordering, crashes, restarts,
    /// a witness outage, arbitrary relative timing.
    pub fn safety(level: Level) -> Bounds {
        Bounds {
            level,
            crashes_max: 2,
            restarts_max: 1,
            losses_max: 2,
            duplicates_max: 1,
            spoils_max: 1,
            claims_max: 0,
            outputs_max: 2,
            in_flight_max: 6,
            witness_outages_max: 1,
            fair: false,
            time_max_ticks: u64::MAX,
        }
    }

    /// The hostile-claim variant of [`Bounds::safety`]: a peer forges one
    /// claim of a generation the witness has not granted. The claim can
    /// come at any step, to either host, which multiplies the states, so
    /// the other faults are fewer: one loss, no spoiled chunk.
    pub fn hostile(level: Level) -> Bounds {
        Bounds {
            losses_max: 1,
            spoils_max: 0,
            claims_max: 1,
            ..Bounds::safety(level)
        }
    }

    /// The re-protection variant: fair delivery, one crash and one restart,
    /// long enough for the restarted host to be copied and certified.
    pub fn reprotect(level: Level) -> Bounds {
        Bounds {
            restarts_max: 1,
            time_max_ticks: 36,
            ..Bounds::fair(level)
        }
    }

    /// The liveness variant: one crash, no loss, fair delivery.
    pub fn fair(level: Level) -> Bounds {
        Bounds {
            level,
            crashes_max: 1,
            restarts_max: 0,
            losses_max: 0,
            duplicates_max: 0,
            spoils_max: 0,
            claims_max: 0,
            outputs_max: 1,
            in_flight_max: 16,
            witness_outages_max: 0,
            fair: true,
            time_max_ticks: 14,
        }
    }
}

/// The model of two VM hosts and a witness.
#[derive(Clone, Debug)]
pub struct LockstepModel {
    /// Its bounds.
    pub bounds: Bounds,
}

/// One VM host: its node while up, and what survives a crash.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Host {
    /// The protocol node; `None` while the host is down.
    pub node: Option<Node>,
    /// The generation persisted with `PersistGeneration`.
    pub persisted: Generation,
    /// Epochs of the current primary term in which the guest made output.
    pub outputs: BTreeSet<Epoch>,
    /// Release watermark of the current primary term.
    pub released: Option<Epoch>,
    /// The guest made an output in the current primary term.
    pub term_output: bool,
    /// Highest generation this host ever had (S3).
    pub generation_max: Generation,
}

/// What the properties read: facts about the run so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ghost {
    /// Which host released output in each generation.
    pub releasers: BTreeMap<Generation, NodeId>,
    /// Newest epoch with an output that was released.
    pub released_max: Option<Epoch>,
    /// S1 broken.
    pub two_releasers: bool,
    /// S2 broken: a restore from a checkpoint older than a released output.
    pub lost_output: bool,
    /// S3 broken.
    pub generation_went_back: bool,
    /// S4 broken: a host held a generation the witness never granted.
    pub ungranted_generation: bool,
    /// S5 broken: a primary stopped its guest while the witness had
    /// granted no generation newer than the primary's.
    pub deposed_without_grant: bool,
    /// A protocol assertion failed (message).
    pub assertion: Option<String>,
    /// Output released by the primary that holds the witness's current grant,
    /// produced in that term (the liveness goal).
    pub live_release: bool,
    /// The holder of the current grant closed an epoch after the crash
    /// window of the fair variants: its guest runs on.
    pub progress_after_faults: bool,
}

/// The whole system.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModelState {
    /// The VM hosts.
    pub hosts: [Host; 2],
    /// The witness.
    pub witness: Witness,
    /// Whether the witness is reachable.
    pub witness_up: bool,
    /// Messages in flight: (from, to, message) with multiplicity.
    pub network: BTreeMap<(NodeId, NodeId, Message), u8>,
    /// Fair variant's global clock.
    pub clock: Time,
    /// Fault budgets used.
    pub crashes: u8,
    /// Restarts used.
    pub restarts: u8,
    losses: u8,
    duplicates: u8,
    spoils: u8,
    claims: u8,
    outputs: u8,
    witness_outages: u8,
    /// Facts for the properties.
    pub ghost: Ghost,
}

/// A step of the model.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ModelAction {
    /// Deliver one copy of a message.
    Deliver(NodeId, NodeId, Message),
    /// Deliver a message and keep a copy in flight.
    Duplicate(NodeId, NodeId, Message),
    /// A hostile peer delivers a spoiled copy of a chunk in flight (the
    /// real one stays in flight).
    Spoil(NodeId, NodeId, Message),
    /// Lose a message.
    Lose(NodeId, NodeId, Message),
    /// A hostile peer (the first host) forges a heartbeat to the second
    /// that claims a generation the witness has not granted.
    Claim(NodeId, NodeId, Message),
    /// A host's next deadline passes (safety variant: hosts' clocks are
    /// independent, so any host can run ahead).
    Timeout(NodeId),
    /// Global time advances to the next deadline (fair variant).
    Tick,
    /// The primary's guest makes an output.
    Output(NodeId),
    /// A host dies.
    Crash(NodeId),
    /// A dead host starts again, without its guest state.
    Restart(NodeId),
    /// The witness becomes unreachable.
    WitnessDown,
    /// The witness is reachable again.
    WitnessUp,
}

impl fmt::Display for ModelAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelAction::Deliver(from, to, msg) => write!(f, "deliver {from}->{to} {}", brief(msg)),
            ModelAction::Duplicate(from, to, msg) => {
                write!(f, "deliver and duplicate {from}->{to} {}", brief(msg))
            }
            ModelAction::Lose(from, to, msg) => write!(f, "lose {from}->{to} {}", brief(msg)),
            ModelAction::Spoil(from, to, msg) => {
                write!(f, "hostile {from}->{to}: spoiled {}", brief(msg))
            }
            ModelAction::Claim(from, to, msg) => {
                write!(f, "hostile {from}->{to}: forged {}", brief(msg))
            }
            ModelAction::Timeout(n) => write!(f, "timeout on {n}"),
            ModelAction::Tick => write!(f, "time advances"),
            ModelAction::Output(n) => write!(f, "guest on {n} makes an output"),
            ModelAction::Crash(n) => write!(f, "{n} crashes"),
            ModelAction::Restart(n) => write!(f, "{n} restarts"),
            ModelAction::WitnessDown => write!(f, "witness unreachable"),
            ModelAction::WitnessUp => write!(f, "witness reachable"),
        }
    }
}

fn brief(msg: &Message) -> String {
    match msg {
        Message::Delta {
            generation, epoch, ..
        } => format!("Delta {{ {generation}, {epoch} }}"),
        Message::Copy {
            generation,
            session,
            round,
            base,
            ..
        } => {
            format!("Copy {{ {generation}, session {session}, round {round}, base {base:?} }}")
        }
        other => format!("{other:?}"),
    }
}

fn node_config(me: NodeId, peer: NodeId, level: Level) -> Config {
    let mut config = Config::new(me, peer, WITNESS, level);
    config.epoch_duration_ns = 2;
    config.heartbeat_interval_ns = 1;
    config.suspect_after_ns = 3;
    config.retransmit_after_ns = 2;
    config.deltas_in_flight_max = 1;
    config.precopy_rounds_max = 2;
    config.precopy_pages_threshold = 0;
    config.disk_history_blocks_max = 8;
    config
}

fn index(id: NodeId) -> usize {
    usize::from(id.0)
}

impl LockstepModel {
    fn config(&self, i: usize) -> Config {
        node_config(HOSTS[i], HOSTS[1 - i], self.bounds.level)
    }

    /// Runs `input` on host `i`'s node, then carries out every action it
    /// yields (as a driver would), catching protocol assertion failures.
    fn drive(&self, state: &mut ModelState, i: usize, input: impl FnOnce(&mut Node)) {
        let mut node = state.hosts[i].node.take().expect("drive a live host");
        let before = node.generation();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            input(&mut node);
            self.carry_out(state, i, &mut node, before);
        }));
        if let Err(panic) = outcome {
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".to_string());
            state.ghost.assertion.get_or_insert(text);
        }
        if node.generation() > state.witness.grant().generation {
            state.ghost.ungranted_generation = true;
        }
        let host = &mut state.hosts[i];
        if node.generation() < host.generation_max {
            state.ghost.generation_went_back = true;
        }
        host.generation_max = host.generation_max.max(node.generation());
        host.node = Some(node);
    }

    /// `before`: the node's generation before the input.
    fn carry_out(&self, state: &mut ModelState, i: usize, node: &mut Node, before: Generation) {
        let me = HOSTS[i];
        for _ in 0..DRIVER_STEPS_MAX {
            let Some(action) = node.poll_action() else {
                return;
            };
            let now = node_now(node);
            match action {
                Action::Send { to, msg } => self.send(state, me, to, msg),
                Action::CaptureDelta { epoch, .. } => {
                    self.note_progress(state, i, node);
                    let capture = Capture {
                        bytes: vec![epoch.0 as u8].into(),
                        ..Capture::default()
                    };
                    node.handle_delta_captured(now, epoch, capture);
                }
                Action::CaptureCopy { round, .. } => {
                    let capture = Capture {
                        bytes: vec![round as u8].into(),
                        ..Capture::default()
                    };
                    node.handle_copy_captured(now, round, capture);
                }
                Action::ReleaseOutput { upto } => self.release(state, i, node, upto),
                Action::RestoreAndResume { checkpoint } => self.restore(state, i, checkpoint),
                Action::StopGuest => {
                    if state.witness.grant().generation <= before {
                        state.ghost.deposed_without_grant = true;
                    }
                    state.hosts[i].outputs.clear();
                    state.hosts[i].released = None;
                    state.hosts[i].term_output = false;
                }
                Action::PersistGeneration(generation) => state.hosts[i].persisted = generation,
                Action::PauseGuest
                | Action::ResumeGuest
                | Action::ApplyDelta { .. }
                | Action::ApplyCopy { .. }
                | Action::PersistGrant(_) => {}
            }
        }
        panic!("the protocol yielded more than {DRIVER_STEPS_MAX} actions for one input");
    }

    fn send(&self, state: &mut ModelState, from: NodeId, to: NodeId, msg: Message) {
        let in_flight: usize = state.network.values().map(|n| usize::from(*n)).sum();
        if in_flight >= self.bounds.in_flight_max {
            return; // the network is full: the message is lost
        }
        let count = state.network.entry((from, to, msg)).or_insert(0);
        *count = count.saturating_add(1);
    }

    fn release(&self, state: &mut ModelState, i: usize, node: &Node, upto: Epoch) {
        let me = HOSTS[i];
        let generation = node.generation();
        match state.ghost.releasers.get(&generation) {
            Some(other) if *other != me => state.ghost.two_releasers = true,
            _ => {
                state.ghost.releasers.insert(generation, me);
            }
        }
        let host = &mut state.hosts[i];
        host.released = Some(upto);
        let newest = host.outputs.range(..=upto).next_back().copied();
        if let Some(epoch) = newest {
            state.ghost.released_max = state.ghost.released_max.max(Some(epoch));
            self.note_live_release(state, i, generation);
        }
    }

    fn note_progress(&self, state: &mut ModelState, i: usize, node: &Node) {
        let grant = state.witness.grant();
        let after_window = node.now().0 > self.bounds.time_max_ticks / 2;
        if after_window && grant.holder == HOSTS[i] && grant.generation == node.generation() {
            state.ghost.progress_after_faults = true;
        }
    }

    fn note_live_release(&self, state: &mut ModelState, i: usize, generation: Generation) {
        let grant = state.witness.grant();
        if grant.holder == HOSTS[i] && grant.generation == generation {
            state.ghost.live_release = true;
        }
    }

    fn restore(&self, state: &mut ModelState, i: usize, checkpoint: CheckpointId) {
        if state
            .ghost
            .released_max
            .is_some_and(|e| e > checkpoint.epoch)
        {
            state.ghost.lost_output = true;
        }
        state.hosts[i].outputs.clear();
        state.hosts[i].released = None;
        state.hosts[i].term_output = false;
    }

    fn deliver(&self, state: &mut ModelState, from: NodeId, to: NodeId, msg: Message) {
        if to == WITNESS {
            if !state.witness_up {
                return;
            }
            let now = state.clock;
            state.witness.handle_message(now, from, msg);
            while let Some(action) = state.witness.poll_action() {
                if let Action::Send { to, msg } = action {
                    self.send(state, WITNESS, to, msg);
                }
            }
            return;
        }
        let i = index(to);
        if state.hosts[i].node.is_none() {
            return; // delivered to a dead host: gone
        }
        self.drive(state, i, |node| {
            let now = node_now(node);
            node.handle_message(now, from, msg);
        });
    }

    fn output(&self, state: &mut ModelState, i: usize) {
        let node = state.hosts[i].node.as_ref().expect("output on a live host");
        let epoch = node.epoch().expect("output on a primary");
        let generation = node.generation();
        let host = &mut state.hosts[i];
        host.outputs.insert(epoch);
        host.term_output = true;
        if host.released.is_some_and(|r| r >= epoch) {
            // Released at once: the open epoch's output may go out.
            state.ghost.released_max = state.ghost.released_max.max(Some(epoch));
            self.note_live_release(state, i, generation);
        }
    }
}

/// The node's own notion of now: the model's nodes keep their clocks inside.
fn node_now(node: &Node) -> Time {
    node.now()
}

impl Model for LockstepModel {
    type State = ModelState;
    type Action = ModelAction;

    fn init_states(&self) -> Vec<ModelState> {
        let generation = Generation(1);
        let start = [Start::Primary { generation }, Start::Backup { generation }];
        let mut state = ModelState {
            hosts: [0, 1].map(|i| Host {
                node: Some(
                    Node::new(self.config(i), Codec::plain(), start[i], Time(0))
                        .expect("the model's configuration is valid"),
                ),
                persisted: generation,
                outputs: BTreeSet::new(),
                released: None,
                term_output: false,
                generation_max: generation,
            }),
            witness: Witness::new(
                WITNESS,
                HOSTS,
                Grant {
                    generation,
                    holder: HOSTS[0],
                    backup: Some(HOSTS[1]),
                },
                Codec::plain(),
            ),
            witness_up: true,
            network: BTreeMap::new(),
            clock: Time(0),
            crashes: 0,
            restarts: 0,
            losses: 0,
            duplicates: 0,
            spoils: 0,
            claims: 0,
            outputs: 0,
            witness_outages: 0,
            ghost: Ghost::default(),
        };
        for i in 0..2 {
            self.drive(&mut state, i, |_| {});
        }
        vec![state]
    }

    fn actions(&self, state: &ModelState, actions: &mut Vec<ModelAction>) {
        let b = &self.bounds;
        for (from, to, msg) in state.network.keys() {
            actions.push(ModelAction::Deliver(*from, *to, msg.clone()));
            if state.duplicates < b.duplicates_max {
                actions.push(ModelAction::Duplicate(*from, *to, msg.clone()));
            }
            if state.losses < b.losses_max {
                actions.push(ModelAction::Lose(*from, *to, msg.clone()));
            }
            if state.spoils < b.spoils_max {
                if let Some(spoiled) = spoiled(msg) {
                    actions.push(ModelAction::Spoil(*from, *to, spoiled));
                }
            }
        }
        if state.claims < b.claims_max {
            for (i, host) in state.hosts.iter().enumerate() {
                if host.node.is_some() {
                    let msg = forged_claim(state, HOSTS[i]);
                    actions.push(ModelAction::Claim(HOSTS[1 - i], HOSTS[i], msg));
                }
            }
        }
        if b.fair {
            let output_due = (0..2).any(|i| self.output_enabled(state, i));
            if state.network.is_empty() && !output_due && state.clock.0 < b.time_max_ticks {
                actions.push(ModelAction::Tick);
            }
        } else {
            for (i, host) in state.hosts.iter().enumerate() {
                if host.node.is_some() {
                    actions.push(ModelAction::Timeout(HOSTS[i]));
                }
            }
        }
        for (i, host) in state.hosts.iter().enumerate() {
            match &host.node {
                Some(_) => {
                    if self.output_enabled(state, i) {
                        actions.push(ModelAction::Output(HOSTS[i]));
                    }
                    let crash_window = !b.fair || state.clock.0 <= b.time_max_ticks / 2;
                    if state.crashes < b.crashes_max && crash_window {
                        actions.push(ModelAction::Crash(HOSTS[i]));
                    }
                }
                None => {
                    if state.restarts < b.restarts_max {
                        actions.push(ModelAction::Restart(HOSTS[i]));
                    }
                }
            }
        }
        if state.witness_up && state.witness_outages < b.witness_outages_max {
            actions.push(ModelAction::WitnessDown);
        }
        if !state.witness_up {
            actions.push(ModelAction::WitnessUp);
        }
    }

    fn next_state(&self, last: &ModelState, action: ModelAction) -> Option<ModelState> {
        let mut state = last.clone();
        match action {
            ModelAction::Deliver(from, to, msg) => {
                take_one(&mut state, &(from, to, msg.clone()));
                self.deliver(&mut state, from, to, msg);
            }
            ModelAction::Duplicate(from, to, msg) => {
                state.duplicates += 1;
                self.deliver(&mut state, from, to, msg);
            }
            ModelAction::Spoil(from, to, msg) => {
                state.spoils += 1;
                self.deliver(&mut state, from, to, msg);
            }
            ModelAction::Claim(from, to, msg) => {
                state.claims += 1;
                self.deliver(&mut state, from, to, msg);
            }
            ModelAction::Lose(from, to, msg) => {
                state.losses += 1;
                take_one(&mut state, &(from, to, msg));
            }
            ModelAction::Timeout(id) => {
                self.drive(&mut state, index(id), |node| {
                    let at = node.poll_timeout().max(node.now());
                    node.handle_timeout(at);
                });
            }
            ModelAction::Tick => self.tick(&mut state)?,
            ModelAction::Output(id) => {
                state.outputs += 1;
                self.output(&mut state, index(id));
            }
            ModelAction::Crash(id) => {
                state.crashes += 1;
                let host = &mut state.hosts[index(id)];
                host.node = None;
                host.outputs.clear();
                host.released = None;
                host.term_output = false;
            }
            ModelAction::Restart(id) => {
                state.restarts += 1;
                let i = index(id);
                let start = Start::Restart {
                    generation: state.hosts[i].persisted,
                    disk: None,
                };
                let now = state.clock;
                let node = Node::new(self.config(i), Codec::plain(), start, now)
                    .expect("the model's configuration is valid");
                state.hosts[i].node = Some(node);
                self.drive(&mut state, i, |_| {});
            }
            ModelAction::WitnessDown => {
                state.witness_outages += 1;
                state.witness_up = false;
            }
            ModelAction::WitnessUp => state.witness_up = true,
        }
        Some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut properties = vec![
            Property::always(
                "S1: one releasing host per generation",
                |_, s: &ModelState| !s.ghost.two_releasers,
            ),
            Property::always("S2: no released output is lost", |_, s: &ModelState| {
                !s.ghost.lost_output
            }),
            Property::always(
                "S3: generations only grow on each host",
                |_, s: &ModelState| !s.ghost.generation_went_back,
            ),
            Property::always(
                "S4: every host's generation is one the witness granted",
                |_, s: &ModelState| !s.ghost.ungranted_generation,
            ),
            Property::always(
                "S5: a primary stops its guest only once a newer generation is granted",
                |_, s: &ModelState| !s.ghost.deposed_without_grant,
            ),
            Property::always("protocol assertions hold", |_, s: &ModelState| {
                s.ghost.assertion.is_none()
            }),
        ];
        if self.bounds.fair {
            properties.push(Property::eventually(
                "L1: with the witness and one host up, output is released",
                |_, s: &ModelState| s.ghost.live_release,
            ));
            properties.push(Property::eventually(
                "L2: after the faults, the holder's guest runs on",
                |_, s: &ModelState| s.ghost.progress_after_faults,
            ));
        }
        if self.bounds.fair && self.bounds.restarts_max > 0 {
            properties.push(Property::sometimes(
                "R1: a restarted host is copied, certified and protects again",
                |_, s: &ModelState| s.restarts > 0 && reprotected(s),
            ));
        }
        properties
    }

    fn within_boundary(&self, state: &ModelState) -> bool {
        state.clock.0 <= self.bounds.time_max_ticks
    }
}

impl LockstepModel {
    /// Whether host `i`'s guest may make an output now. In the fair variant
    /// every primary term makes exactly one, before time moves on; in the
    /// safety variant outputs come at any time, within the budget.
    fn output_enabled(&self, state: &ModelState, i: usize) -> bool {
        let host = &state.hosts[i];
        let primary = host
            .node
            .as_ref()
            .is_some_and(|n| n.role() == RoleKind::Primary);
        if self.bounds.fair {
            primary && host.outputs.is_empty() && !host.term_output
        } else {
            primary && state.outputs < self.bounds.outputs_max
        }
    }

    /// Fair variant: every live host's clock moves to the earliest deadline
    /// among them, and each host whose deadline that is handles its timeout.
    fn tick(&self, state: &mut ModelState) -> Option<()> {
        let next = state
            .hosts
            .iter()
            .filter_map(|h| h.node.as_ref().map(|n| n.poll_timeout()))
            .min()?;
        let now = next.max(state.clock);
        state.clock = now;
        for i in 0..2 {
            if state.hosts[i].node.is_some() {
                self.drive(state, i, |node| node.handle_timeout(now));
            }
        }
        Some(())
    }
}

/// A primary is protected by a backup in its own generation.
fn reprotected(state: &ModelState) -> bool {
    let nodes: Vec<&Node> = state.hosts.iter().filter_map(|h| h.node.as_ref()).collect();
    let [a, b] = nodes[..] else { return false };
    let pair = |p: &Node, q: &Node| {
        p.protection() == Some(protocol::Protection::Protected)
            && q.role() == RoleKind::Backup
            && p.generation() == q.generation()
    };
    pair(a, b) || pair(b, a)
}

fn take_one(state: &mut ModelState, key: &(NodeId, NodeId, Message)) {
    let count = state
        .network
        .get_mut(key)
        .expect("an action names a message in flight");
    *count -= 1;
    if *count == 0 {
        state.network.remove(key);
    }
}

/// The heartbeat a hostile peer forges to `to`: a primary's, of the
/// generation after the witness's grant, naming `to` its certified backup
/// (taken on its word, it deposes a primary, moves a backup or a joiner
/// to a generation the witness never grants).
fn forged_claim(state: &ModelState, to: NodeId) -> Message {
    Message::Heartbeat {
        generation: state.witness.grant().generation.next(),
        role: protocol::wire::PeerRole::Primary,
        backup: Some(to),
    }
}

/// A chunk of `msg` as a hostile peer would spoil it: announcing one chunk
/// more than the transfer has (an index of the real count is then one the
/// sender never fills), so the receiver starts an assembly that only the
/// real chunks can replace. `None` for messages without a chunk.
fn spoiled(msg: &Message) -> Option<Message> {
    let mut msg = msg.clone();
    match &mut msg {
        Message::Delta { chunk, .. } | Message::Copy { chunk, .. } => {
            chunk.count = chunk.count.checked_add(1)?;
            // Every chunk but the last is full: the real last one, now not
            // the last, is refused unless full; keep the spoiled one valid
            // by making it the new last.
            chunk.index = chunk.count - 1;
            if chunk.data.is_empty() {
                chunk.data = vec![0].into();
            }
        }
        _ => return None,
    }
    Some(msg)
}
