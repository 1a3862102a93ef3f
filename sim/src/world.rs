//! The simulated world shared by the turmoil hosts and the runner: the VM
//! hosts' drivers and what survives their crashes, the witness, the
//! clients, the switch's table, link faults at our boundary, the trace and
//! what the oracle needs.

use crate::client::Client;
use crate::spec::{Endpoint, GuestKind, HostRef, LinkFaultKind, RunSpec};
use crate::trace::{digest, Kind, Trace};
use cpu_model::linux::{self, LinuxGuest};
use cpu_model::{emulated_machine, EmuConfig, EmuEngine, Quantum};
use faults::FaultyStore;
use machine::devices::{BlockStore, IntegrityStore, MemStore, SharedStore};
use machine::guests::ledger_load::LedgerConfig;
use machine::guests::Guest;
use machine::layout::MEMORY_BYTES_MIN;
use machine::rng::SplitMix64;
use machine::{Machine, Shape};
use protocol::{CheckpointId, Codec, Config, Generation, Grant, NodeId, RoleKind, Start, Time};
use runtime::{HostError, Transmit, VmHost, WitnessHost};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::OnceLock;

/// Port of protocol frames on VM hosts and the witness.
pub const FRAME_PORT: u16 = 7000;
/// Port of client requests: on the switch (from clients) and on VM hosts
/// (from the switch).
pub const SERVICE_PORT: u16 = 8000;
/// Port of the switch where a primary claims the service address.
pub const CLAIM_PORT: u16 = 8001;
/// Port of clients, for replies.
pub const CLIENT_PORT: u16 = 9000;
/// The VM hosts' names.
pub const HOST_NAMES: [&str; 2] = ["a", "b"];
/// The witness's node id.
pub const WITNESS: NodeId = NodeId(2);

/// The Linux guest's image (`cpu_model::linux::LinuxGuest::from_env`),
/// read once per process.
fn linux_guest() -> Result<&'static LinuxGuest, HostError> {
    static GUEST: OnceLock<Result<LinuxGuest, String>> = OnceLock::new();
    GUEST
        .get_or_init(|| LinuxGuest::from_env().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| HostError::Guest(e.clone()))
}

/// The key of the simulated link between `a` and `b`: one per pair.
fn link_key(a: NodeId, b: NodeId) -> Vec<u8> {
    let (lo, hi) = (a.min(b), a.max(b));
    format!("lockstep simulated link {lo}-{hi}").into_bytes()
}

/// Node `me`'s codec: a key for each link to the other two nodes, stamped
/// with `session` (the simulated time it booted at, which grows from one
/// boot to the next).
fn codec_of(me: NodeId, session: u64) -> Codec {
    let keys = (0..3)
        .map(NodeId)
        .filter(|n| *n != me)
        .map(|n| (n, link_key(me, n)))
        .collect();
    Codec::per_pair(keys).with_session(session)
}
use faults::scenario::DISK_BLOCKS;

/// A frame as the trace shows it: the message without bulk data, and a
/// digest of the bytes.
pub fn describe_frame(bytes: &[u8]) -> String {
    use protocol::Message;
    let digest = digest(bytes);
    // Whoever it is for, one of the three nodes' keys opens it.
    let opened = (0..3)
        .map(|n| codec_of(NodeId(n), 0).open(bytes))
        .find(Result::is_ok)
        .unwrap_or_else(|| codec_of(NodeId(0), 0).open(bytes));
    match opened.map(|o| o.envelope) {
        Ok(envelope) => match envelope.msg {
            Message::Delta { generation, epoch, chunk } => {
                format!("Delta {generation} {epoch} chunk {}/{} {digest:016x}", chunk.index, chunk.count)
            }
            Message::Copy { generation, session, round, base, chunk } => format!(
                "Copy {generation} session {session} round {round} base {base:?} chunk {}/{} {digest:016x}",
                chunk.index, chunk.count
            ),
            other => format!("{other:?} {digest:016x}"),
        },
        Err(e) => format!("undecodable ({e}) {digest:016x}"),
    }
}

/// A VM host's disk: checksummed blocks over a store that injects faults.
pub type HostDisk = IntegrityStore<FaultyStore<MemStore>>;

/// A client's host name.
pub fn client_name(index: u16) -> String {
    format!("client{index}")
}

/// One VM host's slot: its driver while it runs, and what survives.
#[derive(Debug, Default)]
pub struct HostSlot {
    /// The driver; `None` while crashed.
    pub host: Option<VmHost<EmuEngine>>,
    /// The generation on its durable storage.
    pub persisted: Generation,
    /// Booted at least once (later boots are restarts).
    pub booted: bool,
    /// Frozen by a pause fault.
    pub paused: bool,
    /// NIC down.
    pub nic_down: bool,
    /// Last (role, generation) seen, to trace changes.
    pub last_role: Option<(RoleKind, Generation)>,
    /// The host's disk, shared with its machine so faults can be armed;
    /// it survives the host's crashes.
    pub disk: Option<Rc<RefCell<HostDisk>>>,
    /// The checkpoint the disk durably holds, as the driver last said.
    pub disk_checkpoint: Option<CheckpointId>,
}

/// The witness's slot.
#[derive(Debug)]
pub struct WitnessSlot {
    /// The witness while it runs.
    pub host: Option<WitnessHost>,
    /// Its persisted grant.
    pub grant: Grant,
}

/// Per-link faults applied where our hosts send.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkFault {
    /// Probability a message is lost.
    pub loss: f64,
    /// Probability a message is sent twice.
    pub duplicate: f64,
}

/// Everything the hosts and the runner share.
#[derive(Debug)]
pub struct World {
    /// The run.
    pub spec: RunSpec,
    /// The VM hosts.
    pub hosts: [HostSlot; 2],
    /// The witness.
    pub witness: WitnessSlot,
    /// The clients.
    pub clients: Vec<Client>,
    /// The host the switch sends the service address to.
    pub switch_owner: Option<usize>,
    /// Link faults by (from, to) host name.
    pub links: BTreeMap<(String, String), LinkFault>,
    rng: SplitMix64,
    /// The trace.
    pub trace: Trace,
    /// Oracle 2: hosts that released output in each generation.
    pub releases: BTreeMap<Generation, BTreeSet<usize>>,
    /// Errors the hosts hit (guest faults, inconsistent standby).
    pub host_errors: Vec<String>,
    /// When the primary was lost (crash, pause, isolation), for failover time.
    pub primary_lost: Option<(u64, Generation)>,
    /// Failover times: primary lost to first output of the next generation.
    pub failover_ns: Vec<u64>,
    /// Partitions in force, by number: the host-name pairs they cut.
    pub partitions: BTreeMap<u32, Vec<(String, String)>>,
    /// The host each host fault's beginning struck, by fault number: where
    /// its end goes.
    pub struck: BTreeMap<u32, usize>,
    /// Link faults in force, by number: the host names their ends resolved
    /// to when they began, and what they do.
    pub link_faults: BTreeMap<u32, (String, String, LinkFaultKind)>,
    /// Set when the faults left no host with the VM's state.
    pub vm_lost: Option<String>,
}

impl World {
    /// The world of `spec` before anything runs.
    pub fn new(spec: RunSpec, keep_trace: bool) -> World {
        let grant = Grant {
            generation: Generation(1),
            holder: NodeId(0),
            backup: Some(NodeId(1)),
        };
        let clients = (0..spec.clients)
            .map(|k| {
                Client::new(
                    k,
                    spec.clients,
                    spec.requests_per_client,
                    spec.window,
                    spec.retry_after_ms * 1_000_000,
                    spec.think_ms * 1_000_000,
                    spec.accounts,
                    spec.seed,
                )
            })
            .collect();
        // The disks exist before the hosts boot (a fault may be armed at
        // time 0) and outlive their crashes.
        let disk = |index: u64| {
            let faulty = FaultyStore::new(MemStore::new(DISK_BLOCKS), spec.seed ^ (0xD15C + index));
            let disk = IntegrityStore::format(faulty, spec.disk_verify)
                .expect("a new store in memory reads");
            Some(Rc::new(RefCell::new(disk)))
        };
        let hosts = [
            HostSlot {
                disk: disk(0),
                ..HostSlot::default()
            },
            HostSlot {
                disk: disk(1),
                ..HostSlot::default()
            },
        ];
        World {
            rng: SplitMix64::new(spec.seed ^ 0x51_4D_4C_49_4E_4B),
            spec,
            hosts,
            witness: WitnessSlot { host: None, grant },
            clients,
            switch_owner: None,
            links: BTreeMap::new(),
            trace: Trace::new(keep_trace),
            releases: BTreeMap::new(),
            host_errors: Vec::new(),
            primary_lost: None,
            failover_ns: Vec::new(),
            partitions: BTreeMap::new(),
            struck: BTreeMap::new(),
            link_faults: BTreeMap::new(),
            vm_lost: None,
        }
    }

    /// The ledger's configuration.
    pub fn ledger(&self) -> LedgerConfig {
        LedgerConfig {
            accounts: self.spec.accounts,
            initial_balance: 1000,
            requests: self.spec.requests_total(),
            window: self.spec.window,
            repeat_percent: 0,
        }
    }

    fn machine(&mut self, index: usize) -> Result<Machine<EmuEngine>, HostError> {
        let seed = self.spec.seed ^ (index as u64 + 1);
        let disk = Rc::clone(
            self.hosts[index]
                .disk
                .as_ref()
                .expect("made with the world"),
        );
        let store = Box::new(SharedStore(disk));
        match self.spec.guest {
            GuestKind::Ledger => {
                let image = Guest::Ledger
                    .image(self.ledger().params())
                    .expect("the ledger assembles");
                let shape = Shape::new(self.spec.vcpus, MEMORY_BYTES_MIN)
                    .expect("scenario vCPUs are validated");
                let config = EmuConfig {
                    seed,
                    quantum: Quantum::default(),
                };
                emulated_machine(shape, &image, config, store)
                    .map_err(|e| HostError::Machine(e.into()))
            }
            GuestKind::Linux => {
                // Both hosts, and every run of the process, start from the
                // one booted checkpoint: the backup's standby image is the
                // primary's first.
                let blocks = store.block_count();
                let booted = linux::booted(linux_guest()?, self.spec.vcpus, blocks)
                    .map_err(|e| HostError::Guest(e.to_string()))?;
                linux::restored(&booted, seed, store).map_err(|e| HostError::Guest(e.to_string()))
            }
        }
    }

    fn config(&self, index: usize) -> Config {
        let me = NodeId(index as u8);
        let peer = NodeId(1 - index as u8);
        let mut config = Config::new(me, peer, WITNESS, self.spec.level);
        config.epoch_duration_ns = self.spec.epoch_ms * 1_000_000;
        config.heartbeat_interval_ns = self.spec.heartbeat_ms * 1_000_000;
        config.suspect_after_ns = self.spec.suspect_after_ms * 1_000_000;
        config.retransmit_after_ns = self.spec.heartbeat_ms * 3 * 1_000_000;
        // Small chunks: most deltas travel in several pieces, so incomplete
        // deltas happen and are exercised.
        config.chunk_bytes_max = 8 * 1024;
        if let Some(hook) = self.spec.config_hook {
            hook(&mut config);
        }
        config
    }

    /// Host `index` dies: its driver is gone; its disk stays, losing what
    /// the disk's faults make a crash lose.
    pub fn crash_host(&mut self, index: usize, now_ns: u64) {
        self.hosts[index].host = None;
        let Some(disk) = self.hosts[index].disk.clone() else {
            return;
        };
        let lost = disk.borrow_mut().inner_mut().crash();
        match lost {
            Ok(blocks) if blocks.is_empty() => {}
            Ok(blocks) => self
                .trace
                .record(now_ns, HOST_NAMES[index], Kind::CrashDisk, || {
                    format!("crash lost unsynced writes to blocks {blocks:?}")
                }),
            Err(e) => self
                .trace
                .record(now_ns, HOST_NAMES[index], Kind::CrashDisk, || {
                    format!("crash: disk failed reverting writes: {e}")
                }),
        }
    }

    /// What a restarting host's disk may claim: the checkpoint it durably
    /// holds, if a scrub finds every block whole (a block that fails its
    /// checksum, torn or lost by the crash, makes the primary copy it all).
    fn disk_claim(&mut self, index: usize, now: Time) -> Option<CheckpointId> {
        let claim = self.hosts[index].disk_checkpoint?;
        let disk = self.hosts[index].disk.clone()?;
        let mut disk = disk.borrow_mut();
        let scrubbed = disk.scrub();
        // The scrub runs before the host is back: its disk time is not
        // charged to the guest.
        disk.take_busy_ns();
        let name = HOST_NAMES[index];
        match scrubbed {
            Ok(bad) if bad.is_empty() => {
                self.trace
                    .record(now.0, name, Kind::Scrub { clean: true }, || {
                        format!("scrub clean, disk holds {claim:?}")
                    });
                Some(claim)
            }
            Ok(bad) => {
                self.trace
                    .record(now.0, name, Kind::Scrub { clean: false }, || {
                        format!("scrub found bad blocks {bad:?}: disk claims nothing")
                    });
                None
            }
            Err(e) => {
                self.trace
                    .record(now.0, name, Kind::Scrub { clean: false }, || {
                        format!("scrub failed ({e}): disk claims nothing")
                    });
                None
            }
        }
    }

    /// Host `index` starts (first boot) or restarts (empty, rejoining with
    /// the disk it had).
    pub fn boot_host(&mut self, index: usize, now: Time) {
        let g1 = Generation(1);
        let start = match (self.hosts[index].booted, index) {
            (false, 0) => Start::Primary { generation: g1 },
            (false, _) => Start::Backup { generation: g1 },
            (true, _) => Start::Restart {
                generation: self.hosts[index].persisted,
                disk: self.disk_claim(index, now),
            },
        };
        let built = self.machine(index).and_then(|m| {
            VmHost::new(
                self.config(index),
                codec_of(NodeId(index as u8), now.0),
                start,
                m,
                now,
            )
        });
        self.trace.record(now.0, HOST_NAMES[index], Kind::Boot, || {
            format!("boot {start:?}")
        });
        let slot = &mut self.hosts[index];
        slot.booted = true;
        slot.paused = false;
        match built {
            Ok(host) => slot.host = Some(host),
            Err(e) => self
                .host_errors
                .push(format!("{}: boot: {e}", HOST_NAMES[index])),
        }
    }

    /// The witness starts from its persisted grant.
    pub fn boot_witness(&mut self, now: Time) {
        let grant = self.witness.grant;
        self.trace
            .record(now.0, "witness", Kind::Boot, || format!("boot {grant:?}"));
        self.witness.host = Some(WitnessHost::new(
            WITNESS,
            [NodeId(0), NodeId(1)],
            grant,
            codec_of(WITNESS, now.0),
        ));
    }

    /// Which host an event's reference means now.
    pub fn resolve(&self, host: HostRef) -> usize {
        // The primary is the running one of the newest generation: a
        // frozen old primary still thinks it is one until it hears better.
        let primary = (0..2)
            .filter_map(|i| {
                let h = self.hosts[i].host.as_ref()?;
                let running = h.role() == RoleKind::Primary && h.is_running();
                let awake = !self.hosts[i].paused;
                running.then(|| (awake, h.node().generation(), i))
            })
            .max_by_key(|(awake, generation, i)| (*awake, *generation, std::cmp::Reverse(*i)))
            .map(|(_, _, i)| i);
        match host {
            HostRef::A => 0,
            HostRef::B => 1,
            HostRef::Primary => primary.unwrap_or(0),
            HostRef::Backup => primary.map_or(1, |p| 1 - p),
            HostRef::Struck(id) => *self
                .struck
                .get(&id)
                .expect("a fault's end comes after its beginning"),
        }
    }

    /// The turmoil host name of an endpoint.
    pub fn endpoint_name(&self, endpoint: Endpoint) -> String {
        match endpoint {
            Endpoint::Host(h) => HOST_NAMES[self.resolve(h)].to_string(),
            Endpoint::Witness => "witness".to_string(),
            Endpoint::Switch => "switch".to_string(),
            Endpoint::Client(k) => client_name(k),
        }
    }

    /// At the end of the safety phase: if no VM host holds the guest (a
    /// running primary, or a backup with a checkpoint), the faults went
    /// beyond the single host failure the system survives.
    pub fn note_if_vm_lost(&mut self) {
        // A host holds the VM only if no later generation has superseded
        // it: the witness's grant names the pair that may go on, and a
        // primary or backup the grant left out (fenced, or frozen while
        // the other went on) holds a stale copy.
        let grant = self.witness.grant;
        let holds = self.hosts.iter().enumerate().any(|(i, slot)| {
            slot.host.as_ref().is_some_and(|h| {
                let me = NodeId(i as u8);
                let named = grant.holder == me || grant.backup == Some(me);
                let has_state = (h.role() == RoleKind::Primary && h.is_running())
                    || h.role() == RoleKind::Backup;
                named && has_state
            })
        });
        if !holds {
            let states: Vec<String> = self
                .hosts
                .iter()
                .zip(HOST_NAMES)
                .map(|(slot, name)| match &slot.host {
                    None => format!("{name} down"),
                    Some(h) => format!("{name} {:?} in {}", h.role(), h.node().generation()),
                })
                .collect();
            self.vm_lost = Some(format!(
                "no host holds the VM ({}; the witness grants {} to {:?} with backup {:?})",
                states.join(", "),
                grant.generation,
                grant.holder,
                grant.backup
            ));
        }
    }

    /// Every endpoint's host name but `name`'s.
    pub fn everyone_but(&self, name: &str) -> Vec<String> {
        let mut all: Vec<String> = HOST_NAMES.iter().map(|h| h.to_string()).collect();
        all.extend(["witness".to_string(), "switch".to_string()]);
        all.extend((0..self.spec.clients).map(client_name));
        all.retain(|n| n != name);
        all
    }

    /// Runs a step of host `index`'s driver: `step` then the bookkeeping
    /// after it. A host error is recorded and the host stops (it crashed):
    /// `None`, as when there is no host.
    pub fn with_host<R>(
        &mut self,
        index: usize,
        now: Time,
        step: impl FnOnce(&mut VmHost<EmuEngine>) -> Result<R, HostError>,
    ) -> Option<R> {
        let slot = &mut self.hosts[index];
        let host = slot.host.as_mut()?;
        let was_primary = host.role() == RoleKind::Primary && host.is_running();
        let generation = host.node().generation();
        let result = match step(host) {
            Ok(result) => result,
            Err(HostError::DiskFailed(why)) => {
                // Fail-stop, by design: the host is gone as if it crashed.
                self.trace
                    .record(now.0, HOST_NAMES[index], Kind::FailStop, || {
                        format!("fail-stop: {why}")
                    });
                if was_primary && self.primary_lost.is_none() {
                    self.primary_lost = Some((now.0, generation));
                }
                self.hosts[index].host = None;
                return None;
            }
            Err(e) => {
                self.host_errors
                    .push(format!("{} at {} ns: {e}", HOST_NAMES[index], now.0));
                self.hosts[index].host = None;
                return None;
            }
        };
        let role = (host.role(), host.node().generation());
        if slot.last_role != Some(role) {
            slot.last_role = Some(role);
            self.trace.record(now.0, HOST_NAMES[index], Kind::Role, || {
                format!("role {:?} {}", role.0, role.1)
            });
        }
        Some(result)
    }

    /// Where host `index`'s frame to `to` goes, as (host name, port,
    /// bytes): through the link faults; nowhere from a frozen host or one
    /// whose NIC is down.
    pub fn host_frame(
        &mut self,
        index: usize,
        now: Time,
        to: NodeId,
        bytes: Vec<u8>,
    ) -> Vec<(String, u16, Vec<u8>)> {
        let mut sends = Vec::new();
        if self.hosts[index].nic_down || self.hosts[index].paused {
            return sends;
        }
        let me = HOST_NAMES[index];
        let name = if to == WITNESS {
            "witness".to_string()
        } else {
            HOST_NAMES[usize::from(to.0)].to_string()
        };
        self.trace.record(now.0, me, Kind::Frame, || {
            format!("to {name}: {}", describe_frame(&bytes))
        });
        self.push_through_link(now, me, name, FRAME_PORT, bytes, &mut sends);
        sends
    }

    /// Where host `index`'s released output goes (its client), recorded
    /// for the oracle; nowhere from a frozen host or one whose NIC is down.
    pub fn host_output(
        &mut self,
        index: usize,
        now: Time,
        generation: Generation,
        packet: Vec<u8>,
    ) -> Vec<(String, u16, Vec<u8>)> {
        if self.hosts[index].nic_down || self.hosts[index].paused {
            return Vec::new();
        }
        self.note_release(index, generation, now);
        let id = packet
            .get(..8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8")));
        let client = client_name(crate::client::Client::owner(id, self.spec.clients));
        let me = HOST_NAMES[index];
        self.trace.record(now.0, me, Kind::Output, || {
            format!("output to {client} {:016x}", digest(&packet))
        });
        let mut sends = Vec::new();
        self.push_through_link(now, me, client, CLIENT_PORT, packet, &mut sends);
        sends
    }

    /// What the witness sends now.
    pub fn witness_sends(&mut self, now: Time) -> Vec<(String, u16, Vec<u8>)> {
        let mut sends = Vec::new();
        let Some(witness) = self.witness.host.as_mut() else {
            return sends;
        };
        let mut frames = Vec::new();
        while let Some(Transmit::Frame { to, frame }) = witness.poll_transmit() {
            frames.push((to, frame.seal()));
        }
        self.witness.grant = witness.persisted();
        for (to, bytes) in frames {
            let name = HOST_NAMES[usize::from(to.0)].to_string();
            self.trace
                .record(now.0, "witness", Kind::WitnessAnswer, || {
                    format!("to {name}: {}", describe_frame(&bytes))
                });
            self.push_through_link(now, "witness", name, FRAME_PORT, bytes, &mut sends);
        }
        sends
    }

    /// Where client `index`'s requests go: to the host holding the service
    /// address (the switch's table), through the link faults between the
    /// client and that host.
    pub fn client_sends(
        &mut self,
        index: u16,
        now: Time,
        packets: Vec<Vec<u8>>,
    ) -> Vec<(String, u16, Vec<u8>)> {
        let mut sends = Vec::new();
        let Some(owner) = self.switch_owner else {
            return sends;
        };
        let me = client_name(index);
        for packet in packets {
            self.push_through_link(
                now,
                &me,
                HOST_NAMES[owner].to_string(),
                SERVICE_PORT,
                packet,
                &mut sends,
            );
        }
        sends
    }

    fn push_through_link(
        &mut self,
        now: Time,
        from: &str,
        to: String,
        port: u16,
        bytes: Vec<u8>,
        sends: &mut Vec<(String, u16, Vec<u8>)>,
    ) {
        let fault = self
            .links
            .get(&(from.to_string(), to.clone()))
            .copied()
            .unwrap_or_default();
        if fault.loss > 0.0 && self.draw() < fault.loss {
            self.trace
                .record(now.0, from, Kind::Lost, || format!("lost frame to {to}"));
            return;
        }
        if fault.duplicate > 0.0 && self.draw() < fault.duplicate {
            sends.push((to.clone(), port, bytes.clone()));
        }
        sends.push((to, port, bytes));
    }

    fn draw(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn note_release(&mut self, index: usize, generation: Generation, now: Time) {
        self.releases.entry(generation).or_default().insert(index);
        if let Some((lost_at, old)) = self.primary_lost {
            if generation > old {
                self.failover_ns.push(now.0.saturating_sub(lost_at));
                self.primary_lost = None;
            }
        }
    }
}
