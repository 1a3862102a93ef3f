//! From a scenario file and a seed to a resolved run: the workload spread
//! over the safety phase, and each fault of the plan turned into the
//! primitive events that start and end it.

use crate::spec::{DiskFault, Endpoint, Event, HostRef, LinkFaultKind, RunSpec};
use faults::scenario::Scenario;
use faults::{FaultKind, Phase, ScheduledFault, Target};
use protocol::Level;

/// A fault the simulator cannot inject: its target is not a VM host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scenario {scenario}: fault kind `{kind}` cannot strike that target in this simulator")]
pub struct Unsupported {
    /// The scenario.
    pub scenario: String,
    /// The fault kind.
    pub kind: String,
}

/// The run of `scenario` with `seed`; `level` overrides the file's.
pub fn resolve(
    scenario: &Scenario,
    seed: u64,
    level: Option<Level>,
) -> Result<RunSpec, Unsupported> {
    let requests = u64::from(scenario.workload.requests);
    let mut spec = RunSpec {
        scenario: scenario.name.clone(),
        seed,
        level: level.unwrap_or(scenario.protection.level),
        guest: scenario.guest.kind,
        vcpus: scenario.guest.vcpus,
        accounts: u64::from(scenario.guest.accounts),
        clients: scenario.workload.clients,
        requests_per_client: requests,
        window: u64::from(scenario.workload.window),
        retry_after_ms: scenario.workload.retry_after_ms,
        // Clients spread their requests over the safety phase, so faults
        // strike a service under load (unless the file sets think_ms).
        think_ms: match scenario.workload.think_ms {
            0 => (scenario.duration_ms / requests.max(1)).max(1),
            ms => ms,
        },
        epoch_ms: scenario.protection.epoch_ms,
        heartbeat_ms: scenario.protection.heartbeat_ms,
        suspect_after_ms: scenario.protection.suspect_after_ms,
        safety_ms: scenario.duration_ms,
        liveness_ms: scenario.liveness_ms,
        events: Vec::new(),
        config_hook: None,
        disk_verify: machine::devices::Verify::ReadsAndWrites,
    };
    let hosts = [
        scenario.topology.hosts[0].as_str().to_string(),
        scenario.topology.hosts[1].as_str().to_string(),
    ];
    let schedule = scenario.fault_schedule(seed);
    for step in faults::timeline(&schedule) {
        let id = u32::try_from(step.index).expect("few faults");
        let fault = &schedule[step.index];
        let events = match step.phase {
            Phase::Begin => begin(&scenario.name, &hosts, id, fault)?,
            Phase::End => end(id, step.fault),
        };
        spec.events
            .extend(events.into_iter().map(|e| (step.at_ms, e)));
        if step.phase == Phase::Begin {
            spec.events.extend(flap(&hosts, id, fault));
        }
    }
    spec.events.sort_by_key(|(at, _)| *at);
    Ok(spec)
}

fn host(hosts: &[String; 2], target: &Target) -> Option<HostRef> {
    match target {
        Target::Primary => Some(HostRef::Primary),
        Target::Backup => Some(HostRef::Backup),
        Target::Host(name) if name.as_str() == hosts[0] => Some(HostRef::A),
        Target::Host(name) if name.as_str() == hosts[1] => Some(HostRef::B),
        _ => None,
    }
}

fn endpoint(hosts: &[String; 2], target: &Target) -> Endpoint {
    match target {
        Target::Witness => Endpoint::Witness,
        Target::Client(index) => Endpoint::Client(index.0),
        other => Endpoint::Host(host(hosts, other).unwrap_or(HostRef::A)),
    }
}

/// What a fault's end undoes: the host its beginning struck (`Struck`),
/// the partition it numbered, a link back to normal.
fn end(id: u32, fault: &FaultKind) -> Vec<Event> {
    let struck = HostRef::Struck(id);
    match fault {
        FaultKind::Crash {
            target: Target::Witness,
            ..
        } => vec![Event::WitnessRestart],
        FaultKind::Crash { .. } => vec![Event::Restart(struck)],
        FaultKind::Pause { .. } => vec![Event::Resume(struck)],
        FaultKind::NicFailure { .. } => vec![Event::NicUp(struck)],
        FaultKind::DiskEio { .. }
        | FaultKind::DiskLatency { .. }
        | FaultKind::TornWrite { .. }
        | FaultKind::LostUnsyncedWrites { .. }
        | FaultKind::DiskCorruption { .. } => vec![Event::DiskHeal(struck)],
        FaultKind::Partition { .. } | FaultKind::Isolate { .. } => vec![Event::Repair { id }],
        FaultKind::Loss { .. }
        | FaultKind::Duplicate { .. }
        | FaultKind::Delay { .. }
        | FaultKind::Reorder { .. } => vec![Event::LinkHeal { id }],
        // A flap schedules its own repairs; a stall ends by itself.
        FaultKind::Flap { .. } | FaultKind::VcpuStall { .. } => Vec::new(),
    }
}

/// The events that begin `fault` (all of a flap's cuts and repairs, at
/// their own times, are returned with the flap's first moment; see
/// [`flap`]).
fn begin(
    scenario: &str,
    hosts: &[String; 2],
    id: u32,
    fault: &ScheduledFault,
) -> Result<Vec<Event>, Unsupported> {
    let unsupported = || Unsupported {
        scenario: scenario.to_string(),
        kind: format!("{:?}", fault.fault.name()),
    };
    let on = |target: &Target| host(hosts, target).ok_or_else(unsupported);
    let link = |between: &[Target; 2]| (endpoint(hosts, &between[0]), endpoint(hosts, &between[1]));
    let disk = |target: &Target, fault: DiskFault| -> Result<Vec<Event>, Unsupported> {
        Ok(vec![Event::Disk {
            host: on(target)?,
            fault,
            id,
        }])
    };
    Ok(match &fault.fault {
        FaultKind::Crash {
            target: Target::Witness,
            ..
        } => vec![Event::WitnessCrash],
        FaultKind::Crash { target, .. } => vec![Event::Crash {
            host: on(target)?,
            id,
        }],
        FaultKind::Pause { target } => vec![Event::Pause {
            host: on(target)?,
            id,
        }],
        FaultKind::Partition { between, direction } => {
            let (from, to) = link(between);
            vec![Event::Partition {
                id,
                from,
                to,
                oneway: bool::from(*direction),
            }]
        }
        FaultKind::Isolate { target } => vec![Event::Isolate {
            endpoint: endpoint(hosts, target),
            id,
        }],
        FaultKind::Loss { between, rate } => {
            let (from, to) = link(between);
            vec![Event::Link {
                id,
                from,
                to,
                fault: LinkFaultKind::Loss(rate.get()),
            }]
        }
        FaultKind::Duplicate { between, rate } => {
            let (from, to) = link(between);
            vec![Event::Link {
                id,
                from,
                to,
                fault: LinkFaultKind::Duplicate(rate.get()),
            }]
        }
        FaultKind::Delay { between, ms } => {
            let (from, to) = link(between);
            vec![Event::Link {
                id,
                from,
                to,
                fault: LinkFaultKind::Delay { ms: *ms },
            }]
        }
        FaultKind::Reorder { between } => {
            let (from, to) = link(between);
            vec![Event::Link {
                id,
                from,
                to,
                fault: LinkFaultKind::Jitter { ms: 8 },
            }]
        }
        FaultKind::Flap { .. } => Vec::new(), // scheduled by `flap`
        FaultKind::NicFailure { target } => vec![Event::NicDown {
            host: on(target)?,
            id,
        }],
        FaultKind::DiskEio {
            target,
            rate,
            after_writes,
        } => disk(
            target,
            DiskFault::Eio {
                rate: rate.map(|r| r.get()),
                after_writes: *after_writes,
            },
        )?,
        FaultKind::DiskLatency { target, ms } => disk(target, DiskFault::Latency { ms: *ms })?,
        FaultKind::TornWrite { target } => disk(target, DiskFault::TornWrite)?,
        FaultKind::LostUnsyncedWrites { target } => disk(target, DiskFault::LostUnsyncedWrites)?,
        FaultKind::DiskCorruption { target, rate } => {
            disk(target, DiskFault::Corruption { rate: rate.get() })?
        }
        FaultKind::VcpuStall { target, vcpu, ms } => vec![Event::VcpuStall {
            host: on(target)?,
            id,
            vcpu: *vcpu,
            ms: *ms,
        }],
    })
}

/// A flap's cuts and repairs: cut for half of each period, from its
/// beginning to its end (or 20 periods).
fn flap(hosts: &[String; 2], id: u32, fault: &ScheduledFault) -> Vec<(u64, Event)> {
    let FaultKind::Flap { between, period_ms } = &fault.fault else {
        return Vec::new();
    };
    let (from, to) = (endpoint(hosts, &between[0]), endpoint(hosts, &between[1]));
    let period = (*period_ms).max(1);
    let at = fault.at_ms;
    let stop = faults::timeline::end_ms(fault).unwrap_or(at + 20 * period);
    let mut out = Vec::new();
    let mut t = at;
    while t < stop {
        out.push((
            t,
            Event::Partition {
                id,
                from,
                to,
                oneway: false,
            },
        ));
        out.push(((t + period / 2).min(stop), Event::Repair { id }));
        t += period;
    }
    out
}
