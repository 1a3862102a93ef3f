//! One run: build the turmoil simulation, inject the events, heal, judge.

use crate::hosts;
use crate::oracle::{judge, Violation, ViolationKind};
use crate::spec::{Endpoint, Event, HostRef, LinkFaultKind, RunSpec};
use crate::trace::{Kind, TraceEvent};
use crate::world::{client_name, World, HOST_NAMES};
use protocol::Generation;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// Simulation tick.
const TICK: Duration = Duration::from_micros(250);
/// After the last request is answered the run goes on this long, so late
/// duplicates and contradictions still show.
const SETTLE_MS: u64 = 50;

/// What a run did and what the oracle found.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The scenario.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// Protection level.
    pub level: protocol::Level,
    /// Hash of the whole trace.
    pub trace_hash: u64,
    /// Events traced.
    pub trace_events: u64,
    /// The trace, when asked for.
    pub trace: Vec<TraceEvent>,
    /// Oracle violations; empty when the run passed.
    pub violations: Vec<Violation>,
    /// Simulated time, ms.
    pub sim_ms: u64,
    /// Failover times, ms.
    pub failover_ms: Vec<f64>,
    /// Epochs closed by every primary together.
    pub epochs: u64,
    /// Bytes of deltas and copy rounds shipped.
    pub shipped_bytes: u64,
    /// Requests sent by clients, retries included.
    pub requests_sent: u64,
    /// Distinct replies received.
    pub replies_received: u64,
    /// Why the VM was lost, if the faults left no host with its state.
    pub vm_lost: Option<String>,
    /// Pages per captured delta, by count (for pause figures).
    pub capture_pages: Vec<u64>,
    /// Disk time each of those captures took (simulated ns), in the same
    /// order.
    pub capture_disk_ns: Vec<u64>,
    /// On a violation: each vCPU of each live VM host, disassembled at rip.
    pub listings: Vec<String>,
    /// What the disks went through, both hosts together.
    pub disk: DiskCounts,
}

/// Disk faults injected and what caught them, summed over both hosts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskCounts {
    /// Injected: I/Os failed with EIO.
    pub eio: u64,
    /// Injected: writes torn.
    pub torn_writes: u64,
    /// Injected: unsynced writes a crash reverted.
    pub lost_writes: u64,
    /// Injected: reads returned with a flipped bit.
    pub corrupted_reads: u64,
    /// Caught: reads that failed their checksum and were read again.
    pub read_retries: u64,
    /// Caught: writes that did not read back whole and were written again.
    pub write_retries: u64,
    /// Blocks given up on as corrupt.
    pub corrupt: u64,
    /// Copy sessions that sent only the blocks the joiner lacked (live
    /// hosts at the end).
    pub block_resyncs: u64,
    /// Disk blocks sent in copy rounds (live hosts at the end).
    pub copied_blocks: u64,
}

impl RunOutcome {
    /// Whether the oracle found nothing.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Runs `spec` as [`run`] does; a panic in the run (a bug of the
/// simulator or of the code it runs) is caught and becomes the run's
/// violation, so that a suite goes on and reports it with its seed.
pub fn run_catching(spec: &RunSpec, keep_trace: bool) -> RunOutcome {
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(spec, keep_trace)));
    ran.unwrap_or_else(|payload| {
        let why = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        RunOutcome::panicked(spec, &why)
    })
}

impl RunOutcome {
    /// The outcome of a run of `spec` that panicked with `why`: a
    /// violation of oracle 3 (nothing of the run's state can be judged).
    pub fn panicked(spec: &RunSpec, why: &str) -> RunOutcome {
        RunOutcome {
            scenario: spec.scenario.clone(),
            seed: spec.seed,
            level: spec.level,
            trace_hash: 0,
            trace_events: 0,
            trace: Vec::new(),
            violations: vec![Violation::new(
                ViolationKind::RunPanicked,
                format!("the run panicked: {why}"),
            )],
            sim_ms: 0,
            failover_ms: Vec::new(),
            epochs: 0,
            shipped_bytes: 0,
            requests_sent: 0,
            replies_received: 0,
            vm_lost: None,
            capture_pages: Vec::new(),
            capture_disk_ns: Vec::new(),
            listings: Vec::new(),
            disk: DiskCounts::default(),
        }
    }
}

/// Runs `spec`, keeping the trace's events if `keep_trace`.
pub fn run(spec: &RunSpec, keep_trace: bool) -> RunOutcome {
    let world = Rc::new(RefCell::new(World::new(spec.clone(), keep_trace)));
    let total_ms = spec.safety_ms + spec.liveness_ms;
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_millis(total_ms + 1000))
        .tick_duration(TICK)
        .min_message_latency(Duration::from_millis(0))
        .max_message_latency(Duration::from_millis(1))
        .udp_capacity(4096)
        .rng_seed(spec.seed)
        .build();
    for (index, name) in HOST_NAMES.iter().enumerate() {
        let w = world.clone();
        sim.host(*name, move || hosts::vm_host(w.clone(), index));
    }
    let w = world.clone();
    sim.host("witness", move || hosts::witness(w.clone()));
    let w = world.clone();
    sim.host("switch", move || hosts::switch(w.clone()));
    for k in 0..spec.clients {
        let w = world.clone();
        sim.host(client_name(k), move || hosts::client(w.clone(), k));
    }
    let mut events = spec.events.clone();
    events.sort_by_key(|(at, _)| *at);
    let mut next_event = 0;
    let mut healed = false;
    let mut done_at: Option<u64> = None;
    loop {
        let now_ms = u64::try_from(sim.elapsed().as_millis()).expect("short runs");
        while next_event < events.len() && events[next_event].0 <= now_ms && !healed {
            apply(&mut sim, &world, events[next_event].1, now_ms);
            next_event += 1;
        }
        if !healed && now_ms >= spec.safety_ms {
            heal(&mut sim, &world, now_ms);
            healed = true;
        }
        let all_answered = world.borrow().clients.iter().all(|c| c.done());
        if healed && all_answered {
            let at = *done_at.get_or_insert(now_ms);
            if now_ms >= at + SETTLE_MS {
                break;
            }
        }
        if now_ms >= total_ms {
            break;
        }
        if let Err(e) = sim.step() {
            world
                .borrow_mut()
                .host_errors
                .push(format!("simulation: {e}"));
            break;
        }
    }
    let sim_ms = u64::try_from(sim.elapsed().as_millis()).expect("short runs");
    drop(sim);
    let mut world = Rc::try_unwrap(world)
        .expect("the simulation is gone")
        .into_inner();
    let violations = judge(&mut world);
    let listings = if violations.is_empty() {
        Vec::new()
    } else {
        (0..2)
            .flat_map(|i| crate::oracle::vcpu_listings(&mut world, i))
            .collect()
    };
    let mut outcome = outcome(spec, world, violations, sim_ms);
    outcome.listings = listings;
    outcome
}

fn outcome(spec: &RunSpec, world: World, violations: Vec<Violation>, sim_ms: u64) -> RunOutcome {
    let hosts = world.hosts.iter().filter_map(|h| h.host.as_ref());
    let (mut epochs, mut shipped) = (0, 0);
    let (mut capture_pages, mut capture_disk_ns) = (Vec::new(), Vec::new());
    let mut disk = DiskCounts::default();
    for host in hosts {
        epochs += host.node().stats().epochs;
        shipped += host.stats().shipped_bytes;
        capture_pages.extend_from_slice(&host.stats().delta_pages);
        capture_disk_ns.extend_from_slice(&host.stats().delta_disk_ns);
        disk.block_resyncs += host.stats().block_resyncs;
        disk.copied_blocks += host.stats().copied_blocks;
    }
    for store in world.hosts.iter().filter_map(|h| h.disk.as_ref()) {
        let store = store.borrow();
        let (injected, caught) = (store.inner().injected(), store.stats());
        disk.eio += injected.eio;
        disk.torn_writes += injected.torn_writes;
        disk.lost_writes += injected.lost_writes;
        disk.corrupted_reads += injected.corrupted_reads;
        disk.read_retries += caught.read_retries;
        disk.write_retries += caught.write_retries;
        disk.corrupt += caught.corrupt;
    }
    RunOutcome {
        scenario: spec.scenario.clone(),
        seed: spec.seed,
        level: spec.level,
        trace_hash: world.trace.hash(),
        trace_events: world.trace.len(),
        trace: world.trace.events().to_vec(),
        violations,
        sim_ms,
        failover_ms: world
            .failover_ns
            .iter()
            .map(|ns| *ns as f64 / 1e6)
            .collect(),
        epochs,
        shipped_bytes: shipped,
        requests_sent: world.clients.iter().map(|c| c.sent).sum(),
        replies_received: world.clients.iter().map(|c| c.replies.len() as u64).sum(),
        capture_pages,
        capture_disk_ns,
        listings: Vec::new(),
        vm_lost: world.vm_lost.clone(),
        disk,
    }
}

fn apply(sim: &mut turmoil::Sim<'_>, world: &Rc<RefCell<World>>, event: Event, now_ms: u64) {
    let mut w = world.borrow_mut();
    let at_ns = now_ms * 1_000_000;
    let primary_before = w.resolve(HostRef::Primary);
    let generation = w.hosts[primary_before]
        .host
        .as_ref()
        .map_or(Generation(0), |h| h.node().generation());
    // A host fault resolves its target once, when it begins, and keeps the
    // host for its end.
    let strike = |w: &mut World, index: usize, id: Option<u32>| {
        if let Some(id) = id {
            w.struck.insert(id, index);
        }
        if index == primary_before && w.primary_lost.is_none() {
            w.primary_lost = Some((at_ns, generation));
        }
    };
    trace_fault(&mut w, event, at_ns);
    let names =
        |w: &World, from: Endpoint, to: Endpoint| (w.endpoint_name(from), w.endpoint_name(to));
    match event {
        Event::Crash { host, id } => {
            let i = w.resolve(host);
            strike(&mut w, i, Some(id));
            w.crash_host(i, at_ns);
            drop(w);
            sim.crash(HOST_NAMES[i]);
        }
        Event::Restart(h) => {
            let i = w.resolve(h);
            if w.hosts[i].host.is_none() {
                drop(w);
                sim.bounce(HOST_NAMES[i]);
            }
        }
        Event::Pause { host, id } => {
            let i = w.resolve(host);
            strike(&mut w, i, Some(id));
            w.hosts[i].paused = true;
        }
        Event::Resume(h) => {
            let i = w.resolve(h);
            w.hosts[i].paused = false;
        }
        Event::NicDown { host, id } => {
            let i = w.resolve(host);
            strike(&mut w, i, Some(id));
            w.hosts[i].nic_down = true;
        }
        Event::NicUp(h) => {
            let i = w.resolve(h);
            w.hosts[i].nic_down = false;
        }
        Event::Disk { host, fault, id } => {
            let i = w.resolve(host);
            w.struck.insert(id, i);
            if let Some(disk) = &w.hosts[i].disk {
                disk.borrow_mut()
                    .inner_mut()
                    .apply(&fault.kind())
                    .expect("every DiskFault is a disk fault");
            }
        }
        Event::DiskHeal(h) => {
            let i = w.resolve(h);
            if let Some(disk) = &w.hosts[i].disk {
                disk.borrow_mut().inner_mut().heal();
            }
        }
        Event::VcpuStall { host, id, vcpu, ms } => {
            let i = w.resolve(host);
            w.struck.insert(id, i);
            if let Some(h) = w.hosts[i].host.as_mut() {
                // The vCPU index was validated against the guest's shape.
                let _ = h
                    .machine()
                    .engine_mut()
                    .stall_vcpu(machine::VcpuId(vcpu), ms * 1_000_000);
            }
        }
        Event::WitnessCrash => {
            w.witness.host = None;
            drop(w);
            sim.crash("witness");
        }
        Event::WitnessRestart => {
            if w.witness.host.is_none() {
                drop(w);
                sim.bounce("witness");
            }
        }
        Event::Partition {
            id,
            from,
            to,
            oneway,
        } => {
            let (a, b) = names(&w, from, to);
            if [a.as_str(), b.as_str()].contains(&HOST_NAMES[primary_before]) {
                strike(&mut w, primary_before, None);
            }
            w.partitions.insert(id, vec![(a.clone(), b.clone())]);
            drop(w);
            if oneway {
                sim.partition_oneway(a.as_str(), b.as_str());
            } else {
                sim.partition(a.as_str(), b.as_str());
            }
        }
        Event::Isolate { endpoint, id } => {
            let me = w.endpoint_name(endpoint);
            if let Endpoint::Host(h) = endpoint {
                let i = w.resolve(h);
                strike(&mut w, i, None);
            }
            let pairs: Vec<(String, String)> = w
                .everyone_but(&me)
                .into_iter()
                .map(|o| (me.clone(), o))
                .collect();
            w.partitions.insert(id, pairs.clone());
            drop(w);
            for (a, b) in pairs {
                sim.partition(a.as_str(), b.as_str());
            }
        }
        Event::Repair { id } => {
            let pairs = w.partitions.remove(&id).unwrap_or_default();
            drop(w);
            for (a, b) in pairs {
                sim.repair(a.as_str(), b.as_str());
            }
        }
        Event::Link {
            id,
            from,
            to,
            fault,
        } => {
            let (a, b) = names(&w, from, to);
            w.link_faults.insert(id, (a.clone(), b.clone(), fault));
            drop(w);
            set_link(sim, world, &a, &b, fault);
        }
        Event::LinkHeal { id } => {
            let Some((a, b, fault)) = w.link_faults.remove(&id) else {
                return;
            };
            drop(w);
            let undone = match fault {
                LinkFaultKind::Loss(_) => LinkFaultKind::Loss(0.0),
                LinkFaultKind::Duplicate(_) => LinkFaultKind::Duplicate(0.0),
                LinkFaultKind::Delay { .. } => LinkFaultKind::Delay { ms: 0 },
                LinkFaultKind::Jitter { .. } => LinkFaultKind::Jitter { ms: 1 },
            };
            set_link(sim, world, &a, &b, undone);
        }
    }
}

/// Traces a fault event as it fires, with the hosts its targets resolve
/// to now (which is where it strikes), or, for a repair or link heal, the
/// hosts its fault began on.
fn trace_fault(w: &mut World, event: Event, at_ns: u64) {
    let on: Vec<String> = if let Some(host) = event.host() {
        vec![HOST_NAMES[w.resolve(host)].to_string()]
    } else if let Some((from, to)) = event.ends() {
        vec![w.endpoint_name(from), w.endpoint_name(to)]
    } else if let Event::Isolate { endpoint, .. } = event {
        vec![w.endpoint_name(endpoint)]
    } else if let Event::Repair { id } = event {
        // The hosts the partition's ends resolved to when it began; an
        // isolation cut its one host from everyone.
        match w.partitions.get(&id).map(Vec::as_slice) {
            Some([(a, b)]) => vec![a.clone(), b.clone()],
            Some([(me, _), ..]) => vec![me.clone()],
            _ => Vec::new(),
        }
    } else if let Event::LinkHeal { id } = event {
        w.link_faults
            .get(&id)
            .map_or(Vec::new(), |(a, b, _)| vec![a.clone(), b.clone()])
    } else {
        Vec::new()
    };
    let text = match on.as_slice() {
        [host] if event.host().is_some() => format!("{event:?} on {host}"),
        [a, b] => format!("{event:?} between {a} and {b}"),
        [me] => format!("{event:?} of {me}"),
        _ => format!("{event:?}"),
    };
    let (side, fault) = event.side();
    w.trace
        .record(at_ns, "faults", Kind::fault(fault, side, on), || text);
}

/// Puts `fault` on the link between hosts `a` and `b`, both ways.
fn set_link(
    sim: &mut turmoil::Sim<'_>,
    world: &Rc<RefCell<World>>,
    a: &str,
    b: &str,
    fault: LinkFaultKind,
) {
    let pairs = [
        (a.to_string(), b.to_string()),
        (b.to_string(), a.to_string()),
    ];
    match fault {
        LinkFaultKind::Loss(rate) => {
            let mut w = world.borrow_mut();
            for key in pairs {
                w.links.entry(key).or_default().loss = rate;
            }
        }
        LinkFaultKind::Duplicate(rate) => {
            let mut w = world.borrow_mut();
            for key in pairs {
                w.links.entry(key).or_default().duplicate = rate;
            }
        }
        LinkFaultKind::Delay { ms } => {
            sim.set_link_latency(a, b, Duration::from_millis(ms));
        }
        LinkFaultKind::Jitter { ms } => {
            // Jitter replaces any fixed delay on the link: the latency is
            // drawn from 0 to `ms` (turmoil needs min <= max).
            sim.set_link_latency(a, b, Duration::ZERO);
            sim.set_link_max_message_latency(a, b, Duration::from_millis(ms.max(1)));
        }
    }
}

/// The liveness phase begins: every link repaired, every host back.
fn heal(sim: &mut turmoil::Sim<'_>, world: &Rc<RefCell<World>>, now_ms: u64) {
    let mut names: Vec<String> = HOST_NAMES.iter().map(|h| h.to_string()).collect();
    names.push("witness".to_string());
    names.push("switch".to_string());
    let clients = world.borrow().spec.clients;
    names.extend((0..clients).map(client_name));
    for a in &names {
        for b in &names {
            if a < b {
                sim.repair(a.as_str(), b.as_str());
                sim.set_link_latency(a.as_str(), b.as_str(), Duration::from_millis(0));
                sim.set_link_max_message_latency(a.as_str(), b.as_str(), Duration::from_millis(1));
            }
        }
    }
    let mut w = world.borrow_mut();
    w.trace
        .record(now_ms * 1_000_000, "faults", Kind::Heal, || {
            "heal".to_string()
        });
    w.note_if_vm_lost();
    w.links.clear();
    w.partitions.clear();
    w.link_faults.clear();
    let mut restart = Vec::new();
    for (i, slot) in w.hosts.iter_mut().enumerate() {
        slot.paused = false;
        slot.nic_down = false;
        if let Some(disk) = &slot.disk {
            disk.borrow_mut().inner_mut().heal();
        }
        if slot.host.is_none() {
            restart.push(HOST_NAMES[i]);
        }
    }
    let witness_down = w.witness.host.is_none();
    drop(w);
    for name in restart {
        sim.bounce(name);
    }
    if witness_down {
        sim.bounce("witness");
    }
}
