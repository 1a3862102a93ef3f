//! What one simulated run is: the cluster's settings, its workload and the
//! fault events to inject, all resolved (a scenario file plus a seed
//! resolve to one of these).

use crate::trace::Side;
pub use faults::scenario::GuestKind;
use protocol::Level;

/// A VM host, named by what it is when an event fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostRef {
    /// Whoever is primary at that moment (host `a` if nobody is).
    Primary,
    /// Whoever is not the primary.
    Backup,
    /// Host `a` (index 0).
    A,
    /// Host `b` (index 1).
    B,
    /// The host the beginning of fault `id` struck (what its restart,
    /// resume, NIC repair or disk heal must reach, whatever its role is
    /// now).
    Struck(u32),
}

/// An end of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    /// A VM host.
    Host(HostRef),
    /// The witness.
    Witness,
    /// The switch that carries client traffic.
    Switch,
    /// A client.
    Client(u16),
}

/// What goes wrong with a disk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DiskFault {
    /// I/O fails: each with probability `rate`, or every one after
    /// `after_writes` more writes.
    Eio {
        /// Probability per I/O.
        rate: Option<f64>,
        /// Writes that still succeed.
        after_writes: Option<u64>,
    },
    /// Each I/O takes this much longer.
    Latency {
        /// Added milliseconds.
        ms: u64,
    },
    /// The next write lands torn (a prefix of it) and reports success.
    TornWrite,
    /// A crash loses writes not yet flushed.
    LostUnsyncedWrites,
    /// Reads return a flipped bit with this probability.
    Corruption {
        /// Probability per read.
        rate: f64,
    },
}

impl DiskFault {
    /// The catalogue's fault, as the faulty store takes it.
    pub fn kind(self) -> faults::FaultKind {
        use faults::catalogue::Rate;
        let target = faults::Target::Primary; // the store ignores it
        match self {
            DiskFault::Eio { rate, after_writes } => faults::FaultKind::DiskEio {
                target,
                rate: rate.and_then(Rate::new),
                after_writes,
            },
            DiskFault::Latency { ms } => faults::FaultKind::DiskLatency { target, ms },
            DiskFault::TornWrite => faults::FaultKind::TornWrite { target },
            DiskFault::LostUnsyncedWrites => faults::FaultKind::LostUnsyncedWrites { target },
            DiskFault::Corruption { rate } => faults::FaultKind::DiskCorruption {
                target,
                rate: Rate::new(rate).expect("scenario rates are validated probabilities"),
            },
        }
    }
}

/// What goes wrong on a link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LinkFaultKind {
    /// Each message is lost with this probability (0 to 1).
    Loss(f64),
    /// Each message is sent twice with this probability (0 to 1).
    Duplicate(f64),
    /// Each message takes this long.
    Delay {
        /// Latency in milliseconds.
        ms: u64,
    },
    /// Messages take 0 to `ms` ms at random, so they overtake each other.
    Jitter {
        /// Largest latency in milliseconds.
        ms: u64,
    },
}

/// A primitive fault event at the simulator's boundaries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event {
    /// The host dies (its guest, memory and protocol state are gone); `id`
    /// numbers the fault for its end.
    Crash {
        /// The host.
        host: HostRef,
        /// The fault's number.
        id: u32,
    },
    /// A crashed host boots again, empty, and asks to rejoin.
    Restart(HostRef),
    /// The host freezes: it runs nothing and answers nothing.
    Pause {
        /// The host.
        host: HostRef,
        /// The fault's number.
        id: u32,
    },
    /// A paused host runs again as if no time had passed for it.
    Resume(HostRef),
    /// The witness dies (it keeps its persisted grant).
    WitnessCrash,
    /// The witness is back.
    WitnessRestart,
    /// No message crosses from `from` to `to` (and back unless `oneway`);
    /// `id` numbers it for its repair.
    Partition {
        /// The partition's number.
        id: u32,
        /// One end.
        from: Endpoint,
        /// The other end.
        to: Endpoint,
        /// Only from `from` to `to`.
        oneway: bool,
    },
    /// Undo the partition (or isolation) numbered `id`: the hosts its ends
    /// resolved to when it began, whatever their roles are now.
    Repair {
        /// The partition's number.
        id: u32,
    },
    /// Cut `endpoint` off from everyone; `id` numbers it for its repair.
    Isolate {
        /// The host, witness, switch or client.
        endpoint: Endpoint,
        /// The isolation's number.
        id: u32,
    },
    /// A fault on the link between the ends (both ways), numbered `id`
    /// for its end.
    Link {
        /// The fault's number.
        id: u32,
        /// One end.
        from: Endpoint,
        /// The other end.
        to: Endpoint,
        /// What goes wrong.
        fault: LinkFaultKind,
    },
    /// Undo the link fault numbered `id`, on the hosts its ends resolved to
    /// when it began.
    LinkHeal {
        /// The fault's number.
        id: u32,
    },
    /// The host's NIC is down: no frame and no client packet in or out.
    NicDown {
        /// The host.
        host: HostRef,
        /// The fault's number.
        id: u32,
    },
    /// The host's NIC is up again.
    NicUp(HostRef),
    /// A fault armed on the host's disk (until [`Event::DiskHeal`]).
    Disk {
        /// The host.
        host: HostRef,
        /// What goes wrong.
        fault: DiskFault,
        /// The fault's number.
        id: u32,
    },
    /// The host's disk works again.
    DiskHeal(HostRef),
    /// One vCPU of the host's guest makes no progress for `ms`.
    VcpuStall {
        /// The host.
        host: HostRef,
        /// The fault's number.
        id: u32,
        /// The vCPU.
        vcpu: u16,
        /// How long, in guest (= simulated) milliseconds.
        ms: u64,
    },
}

impl Event {
    /// The VM host the event names, if it names one.
    pub fn host(&self) -> Option<HostRef> {
        match *self {
            Event::Crash { host, .. }
            | Event::Pause { host, .. }
            | Event::NicDown { host, .. }
            | Event::Disk { host, .. }
            | Event::VcpuStall { host, .. } => Some(host),
            Event::Restart(host)
            | Event::Resume(host)
            | Event::NicUp(host)
            | Event::DiskHeal(host) => Some(host),
            _ => None,
        }
    }

    /// Whether the event begins a fault or ends one, and the fault's
    /// number when the event names it.
    pub fn side(&self) -> (Side, Option<u32>) {
        match *self {
            Event::Crash { id, .. }
            | Event::Pause { id, .. }
            | Event::NicDown { id, .. }
            | Event::Disk { id, .. }
            | Event::VcpuStall { id, .. }
            | Event::Partition { id, .. }
            | Event::Isolate { id, .. }
            | Event::Link { id, .. } => (Side::Begins, Some(id)),
            Event::WitnessCrash => (Side::Begins, None),
            Event::Restart(host)
            | Event::Resume(host)
            | Event::NicUp(host)
            | Event::DiskHeal(host) => match host {
                HostRef::Struck(id) => (Side::Ends, Some(id)),
                _ => (Side::Ends, None),
            },
            Event::Repair { id } | Event::LinkHeal { id } => (Side::Ends, Some(id)),
            Event::WitnessRestart => (Side::Ends, None),
        }
    }

    /// The two ends the event names, if it is a link's.
    pub fn ends(&self) -> Option<(Endpoint, Endpoint)> {
        match *self {
            Event::Partition { from, to, .. } | Event::Link { from, to, .. } => Some((from, to)),
            _ => None,
        }
    }
}

/// One run, fully resolved.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The scenario's name.
    pub scenario: String,
    /// The seed: scheduler, rng, network and workload all follow from it.
    pub seed: u64,
    /// Protection level.
    pub level: Level,
    /// Which guest serves the ledger.
    pub guest: GuestKind,
    /// vCPUs of the ledger guest.
    pub vcpus: u16,
    /// Accounts of the ledger.
    pub accounts: u64,
    /// Clients.
    pub clients: u16,
    /// Distinct requests each client sends.
    pub requests_per_client: u64,
    /// Requests a client keeps outstanding.
    pub window: u64,
    /// A client sends an unanswered request again after this long.
    pub retry_after_ms: u64,
    /// A client waits this long between two new requests (so the load
    /// spans the safety phase).
    pub think_ms: u64,
    /// Epoch length.
    pub epoch_ms: u64,
    /// Heartbeat interval.
    pub heartbeat_ms: u64,
    /// Suspicion timeout.
    pub suspect_after_ms: u64,
    /// The safety phase: faults fire within it.
    pub safety_ms: u64,
    /// After the safety phase everything heals; the service must have
    /// answered every request within this long.
    pub liveness_ms: u64,
    /// Fault events, by time in ms from the start.
    pub events: Vec<(u64, Event)>,
    /// Adjusts each VM host's protocol configuration (tests use it to run
    /// deliberately broken protocols).
    pub config_hook: Option<fn(&mut protocol::Config)>,
    /// How the hosts' disks check their blocks (tests turn it down to show
    /// what the checks catch).
    pub disk_verify: machine::devices::Verify,
}

impl RunSpec {
    /// A run of `scenario` with the usual settings and no faults.
    pub fn baseline(scenario: &str, seed: u64) -> RunSpec {
        RunSpec {
            scenario: scenario.to_string(),
            seed,
            level: Level::Ft,
            guest: GuestKind::Ledger,
            vcpus: 2,
            accounts: 16,
            clients: 2,
            requests_per_client: 150,
            window: 4,
            retry_after_ms: 60,
            think_ms: 3,
            epoch_ms: 5,
            heartbeat_ms: 10,
            suspect_after_ms: 60,
            safety_ms: 600,
            liveness_ms: 1500,
            events: Vec::new(),
            config_hook: None,
            disk_verify: machine::devices::Verify::ReadsAndWrites,
        }
    }

    /// Requests of all clients together.
    pub fn requests_total(&self) -> u64 {
        u64::from(self.clients) * self.requests_per_client
    }
}
