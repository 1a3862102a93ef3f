//! From a scenario file and a seed to a resolved run: the workload spread
//! over the safety phase, and each fault of the plan turned into the
//! primitive events that start and end it.

use crate::spec::{DiskFault, Endpoint, Event, HostRef, RunSpec};
use faults::scenario::{Level as FileLevel, Scenario};
use faults::{FaultKind, ScheduledFault, Target};
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
    let file_level = match scenario.protection.level {
        FileLevel::Ft => Level::Ft,
        FileLevel::Ha => Level::Ha,
    };
    let requests = u64::from(scenario.workload.requests);
    let mut spec = RunSpec {
        scenario: scenario.name.clone(),
        seed,
        level: level.unwrap_or(file_level),
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
    for (id, fault) in scenario.fault_schedule(seed).iter().enumerate() {
        let id = u32::try_from(id).expect("few faults");
        events_of(&scenario.name, &hosts, id, fault, &mut spec.events)?;
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

fn events_of(
    scenario: &str,
    hosts: &[String; 2],
    id: u32,
    fault: &ScheduledFault,
    out: &mut Vec<(u64, Event)>,
) -> Result<(), Unsupported> {
    let at = fault.at_ms;
    let end = faults::timeline::end_ms(fault);
    let mut until = |event: Event| {
        if let Some(end) = end {
            out.push((end, event));
        }
    };
    let unsupported = || Unsupported {
        scenario: scenario.to_string(),
        kind: format!("{:?}", fault.fault.name()),
    };
    let mut starts = Vec::new();
    let mut disk = |target: &Target, what: DiskFault| {
        let host = host(hosts, target).ok_or_else(unsupported)?;
        starts.push(Event::Disk { host, fault: what });
        until(Event::DiskHeal(HostRef::LastStruck));
        Ok::<(), Unsupported>(())
    };
    match &fault.fault {
        FaultKind::Crash {
            target: Target::Witness,
            ..
        } => {
            starts.push(Event::WitnessCrash);
            until(Event::WitnessRestart);
        }
        FaultKind::Crash { target, .. } => {
            starts.push(Event::Crash(host(hosts, target).ok_or_else(unsupported)?));
            until(Event::Restart(HostRef::LastStruck));
        }
        FaultKind::Pause { target } => {
            starts.push(Event::Pause(host(hosts, target).ok_or_else(unsupported)?));
            until(Event::Resume(HostRef::LastStruck));
        }
        FaultKind::Partition { between, direction } => {
            let (from, to) = (endpoint(hosts, &between[0]), endpoint(hosts, &between[1]));
            starts.push(Event::Partition {
                id,
                from,
                to,
                oneway: bool::from(*direction),
            });
            until(Event::Repair { id });
        }
        FaultKind::Isolate { target } => {
            starts.push(Event::Isolate {
                endpoint: endpoint(hosts, target),
                id,
            });
            until(Event::Repair { id });
        }
        FaultKind::Loss { between, rate } => {
            let (from, to) = (endpoint(hosts, &between[0]), endpoint(hosts, &between[1]));
            starts.push(Event::Loss {
                from,
                to,
                rate: rate.get(),
            });
            until(Event::Loss {
                from,
                to,
                rate: 0.0,
            });
        }
        FaultKind::Duplicate { between, rate } => {
            let (from, to) = (endpoint(hosts, &between[0]), endpoint(hosts, &between[1]));
            starts.push(Event::Duplicate {
                from,
                to,
                rate: rate.get(),
            });
            until(Event::Duplicate {
                from,
                to,
                rate: 0.0,
            });
        }
        FaultKind::Delay { between, ms } => {
            let (from, to) = (endpoint(hosts, &between[0]), endpoint(hosts, &between[1]));
            starts.push(Event::Delay { from, to, ms: *ms });
            until(Event::Delay { from, to, ms: 0 });
        }
        FaultKind::Reorder { between } => {
            let (from, to) = (endpoint(hosts, &between[0]), endpoint(hosts, &between[1]));
            starts.push(Event::Jitter { from, to, ms: 8 });
            until(Event::Jitter { from, to, ms: 1 });
        }
        FaultKind::Flap { between, period_ms } => {
            let (from, to) = (endpoint(hosts, &between[0]), endpoint(hosts, &between[1]));
            let period = (*period_ms).max(1);
            let stop = end.unwrap_or(at + 20 * period);
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
        }
        FaultKind::NicFailure { target } => {
            starts.push(Event::NicDown(host(hosts, target).ok_or_else(unsupported)?));
            until(Event::NicUp(HostRef::LastStruck));
        }
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
            disk(target, DiskFault::Corruption { rate: rate.get() })?;
        }
        FaultKind::VcpuStall { target, vcpu, ms } => {
            let host = host(hosts, target).ok_or_else(unsupported)?;
            starts.push(Event::VcpuStall {
                host,
                vcpu: *vcpu,
                ms: *ms,
            });
        }
    }
    out.extend(starts.into_iter().map(|e| (at, e)));
    Ok(())
}
