//! The checks a scenario must pass beyond its shape: every number within
//! its named bound, every target one the scenario has, every fault inside
//! the safety phase.

use machine::layout::VCPUS_MAX;

use super::{GuestKind, ScenarioFile, Topology, LINUX_ACCOUNTS};
use crate::catalogue::{FaultKind, ScheduledFault, Target};
use crate::plan::{Swarm, SWARM_FAULTS_MAX};
use crate::spans::FieldPath;

/// Most ledger accounts (what the guest keeps).
pub const ACCOUNTS_MAX: u32 = machine::guests::ledger::ACCOUNTS_MAX as u32;
/// Blocks of each simulated VM host's disk.
pub const DISK_BLOCKS: u64 = 1024;
/// Most requests of all clients together: each is one journal record on
/// the disk, and one slot of the guest's reply table (ids 1 ..= total).
pub const REQUESTS_TOTAL_MAX: u64 = {
    let journal = DISK_BLOCKS * machine::guests::ledger::RECORDS_PER_BLOCK;
    let table = machine::guests::ledger::TABLE_ENTRIES - 1;
    if journal < table {
        journal
    } else {
        table
    }
};
/// Most clients in a workload.
pub const CLIENTS_MAX: u16 = 64;
/// Most requests one client sends.
pub const REQUESTS_MAX: u32 = 1_000_000;
/// Most requests a client keeps outstanding.
pub const WINDOW_MAX: u32 = 64;
/// Longest phase (safety or liveness), in simulated milliseconds.
pub const PHASE_MS_MAX: u64 = 3_600_000;
/// Most scripted faults in one scenario.
pub const SCRIPTED_FAULTS_MAX: usize = 256;
/// Longest scenario name.
pub const NAME_BYTES_MAX: usize = 64;

pub(super) type Invalid = (FieldPath, String);

fn check(ok: bool, field: FieldPath, message: impl FnOnce() -> String) -> Result<(), Invalid> {
    if ok {
        Ok(())
    } else {
        Err((field, message()))
    }
}

fn within<T: PartialOrd + std::fmt::Display>(
    field: &[&str],
    value: T,
    low: T,
    high: T,
) -> Result<(), Invalid> {
    check(
        value >= low && value <= high,
        FieldPath::keys(field),
        || format!("must be {low}..={high}, got {value}"),
    )
}

/// A name as files and commands spell it: `a-z`, `0-9`, `-`.
pub(super) fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

pub(super) fn scenario(raw: &ScenarioFile, stem: Option<&str>) -> Result<(), Invalid> {
    check(is_name(&raw.name), FieldPath::keys(&["name"]), || {
        format!(
            "{:?} must be 1..={NAME_BYTES_MAX} of a-z, 0-9, '-'",
            raw.name
        )
    })?;
    if let Some(stem) = stem {
        check(raw.name == stem, FieldPath::keys(&["name"]), || {
            format!("{:?} must match the file name {stem:?}", raw.name)
        })?;
    }
    let [a, b] = &raw.topology.hosts;
    check(a != b, FieldPath::keys(&["topology", "hosts"]), || {
        format!("the two hosts must differ, both are \"{a}\"")
    })?;
    within(&["guest", "vcpus"], raw.guest.vcpus, 1, VCPUS_MAX)?;
    within(&["guest", "accounts"], raw.guest.accounts, 2, ACCOUNTS_MAX)?;
    if raw.guest.kind == GuestKind::Linux {
        check(
            raw.guest.accounts == LINUX_ACCOUNTS,
            FieldPath::keys(&["guest", "accounts"]),
            || {
                format!(
                    "the Linux guest's ledger keeps {LINUX_ACCOUNTS} accounts, not {}",
                    raw.guest.accounts
                )
            },
        )?;
    }
    within(
        &["workload", "clients"],
        raw.workload.clients,
        1,
        CLIENTS_MAX,
    )?;
    within(
        &["workload", "requests"],
        raw.workload.requests,
        1,
        REQUESTS_MAX,
    )?;
    let total = u64::from(raw.workload.requests) * u64::from(raw.workload.clients);
    check(
        total <= REQUESTS_TOTAL_MAX,
        FieldPath::keys(&["workload", "requests"]),
        || {
            format!(
                "clients × requests must be at most {REQUESTS_TOTAL_MAX} (the journal disk and the reply table), got {} × {} = {total}",
                raw.workload.clients, raw.workload.requests
            )
        },
    )?;
    within(&["workload", "window"], raw.workload.window, 1, WINDOW_MAX)?;
    within(
        &["workload", "retry_after_ms"],
        raw.workload.retry_after_ms,
        1,
        PHASE_MS_MAX,
    )?;
    within(
        &["workload", "think_ms"],
        raw.workload.think_ms,
        0,
        PHASE_MS_MAX,
    )?;
    protection(raw)?;
    within(&["duration_ms"], raw.duration_ms, 1, PHASE_MS_MAX)?;
    within(&["liveness_ms"], raw.liveness_ms, 1, PHASE_MS_MAX)?;
    check(
        raw.faults.len() <= SCRIPTED_FAULTS_MAX,
        FieldPath::keys(&["faults"]),
        || {
            format!(
                "at most {SCRIPTED_FAULTS_MAX} faults, got {}",
                raw.faults.len()
            )
        },
    )?;
    if let Some(swarm) = &raw.swarm {
        check(raw.faults.is_empty(), FieldPath::keys(&["swarm"]), || {
            "a scenario has [[faults]] or [swarm], not both".to_string()
        })?;
        self::swarm(swarm, raw.duration_ms)?;
    }
    for (i, fault) in raw.faults.iter().enumerate() {
        scheduled(raw, &FieldPath::keys(&["faults"]).index(i), fault)?;
    }
    Ok(())
}

fn protection(raw: &ScenarioFile) -> Result<(), Invalid> {
    let p = &raw.protection;
    within(&["protection", "epoch_ms"], p.epoch_ms, 1, PHASE_MS_MAX)?;
    within(
        &["protection", "heartbeat_ms"],
        p.heartbeat_ms,
        1,
        PHASE_MS_MAX,
    )?;
    check(
        p.suspect_after_ms > p.heartbeat_ms && p.suspect_after_ms <= PHASE_MS_MAX,
        FieldPath::keys(&["protection", "suspect_after_ms"]),
        || {
            format!(
                "must be more than heartbeat_ms ({}) and at most {PHASE_MS_MAX}, got {}",
                p.heartbeat_ms, p.suspect_after_ms
            )
        },
    )
}

fn swarm(swarm: &Swarm, duration_ms: u64) -> Result<(), Invalid> {
    within(&["swarm", "faults"], swarm.faults, 1, SWARM_FAULTS_MAX)?;
    within(&["swarm", "window_ms"], swarm.window_ms, 1, duration_ms)?;
    for (i, kind) in swarm.kinds.iter().enumerate() {
        check(
            !swarm.kinds[..i].contains(kind),
            FieldPath::keys(&["swarm", "kinds"]).index(i),
            || format!("{} is listed twice", kind.as_str()),
        )?;
    }
    Ok(())
}

fn scheduled(raw: &ScenarioFile, field: &FieldPath, fault: &ScheduledFault) -> Result<(), Invalid> {
    check(fault.at_ms <= fault.latest_ms(), field.key("at_ms"), || {
        format!(
            "the window [{}, {}] ends before it begins",
            fault.at_ms,
            fault.latest_ms()
        )
    })?;
    check(
        fault.latest_ms() < raw.duration_ms,
        field.key("at_ms"),
        || {
            format!(
                "{} is not within the safety phase (duration_ms = {})",
                fault.latest_ms(),
                raw.duration_ms
            )
        },
    )?;
    if let Some(duration_ms) = fault.duration_ms {
        within_field(field.key("duration_ms"), duration_ms, 1, PHASE_MS_MAX)?;
    }
    let own_length = match fault.fault {
        FaultKind::Crash { .. } => Some("restart_after_ms"),
        FaultKind::VcpuStall { .. } => Some("ms"),
        _ => None,
    };
    if let Some(own) = own_length {
        check(
            fault.duration_ms.is_none(),
            field.key("duration_ms"),
            || {
                format!(
                    "{} lasts its {own}: drop duration_ms",
                    fault.fault.name().as_str()
                )
            },
        )?;
    }
    check(
        fault.duration_ms.is_some() || fault.fault.name() != crate::catalogue::KindName::Pause,
        field.key("duration_ms"),
        || "a pause needs duration_ms (how long the host stays frozen)".to_string(),
    )?;
    targets(raw, field, &fault.fault)?;
    kind_fields(raw, field, fault.latest_ms(), &fault.fault)
}

fn within_field(field: FieldPath, value: u64, low: u64, high: u64) -> Result<(), Invalid> {
    check(value >= low && value <= high, field, || {
        format!("must be {low}..={high}, got {value}")
    })
}

fn targets(raw: &ScenarioFile, field: &FieldPath, fault: &FaultKind) -> Result<(), Invalid> {
    let targets = fault.targets();
    let link = targets.len() == 2;
    for (i, target) in targets.iter().enumerate() {
        let at = if link {
            field.key("between").index(i)
        } else {
            field.key("target")
        };
        target_exists(&raw.topology, raw.workload.clients, &at, target)?;
        check(!fault.needs_vm_host() || target.is_vm_host(), at, || {
            format!("{target} has no disk, vCPU or guest NIC: use primary, backup or a host name")
        })?;
    }
    if link {
        check(targets[0] != targets[1], field.key("between"), || {
            format!("a link joins two different ends, both are {}", targets[0])
        })?;
    }
    Ok(())
}

fn target_exists(
    topology: &Topology,
    clients: u16,
    field: &FieldPath,
    target: &Target,
) -> Result<(), Invalid> {
    match target {
        Target::Host(name) => check(topology.hosts.contains(name), field.clone(), || {
            let [a, b] = &topology.hosts;
            format!("unknown host \"{name}\": the topology has \"{a}\" and \"{b}\"")
        }),
        Target::Client(index) => check(index.0 < clients, field.clone(), || {
            format!(
                "client:{} does not exist: the workload has {clients} clients",
                index.0
            )
        }),
        Target::Primary | Target::Backup | Target::Witness => Ok(()),
    }
}

fn kind_fields(
    raw: &ScenarioFile,
    field: &FieldPath,
    at_ms: u64,
    fault: &FaultKind,
) -> Result<(), Invalid> {
    match fault {
        FaultKind::DiskEio {
            rate, after_writes, ..
        } => check(
            rate.is_some() != after_writes.is_some(),
            field.key("rate"),
            || "disk_eio needs exactly one of rate and after_writes".to_string(),
        ),
        FaultKind::Flap { period_ms, .. } => {
            within_field(field.key("period_ms"), *period_ms, 1, PHASE_MS_MAX)
        }
        FaultKind::Delay { ms, .. } | FaultKind::DiskLatency { ms, .. } => {
            within_field(field.key("ms"), *ms, 1, PHASE_MS_MAX)
        }
        FaultKind::VcpuStall { vcpu, ms, .. } => {
            check(*vcpu < raw.guest.vcpus, field.key("vcpu"), || {
                format!(
                    "vCPU {vcpu} does not exist: the guest has {}",
                    raw.guest.vcpus
                )
            })?;
            within_field(field.key("ms"), *ms, 1, PHASE_MS_MAX)?;
            // The liveness phase heals everything; a stall cannot be
            // undone, so it must end within the safety phase.
            check(
                at_ms.saturating_add(*ms) <= raw.duration_ms,
                field.key("ms"),
                || {
                    format!(
                    "a stall from {at_ms} ms for {ms} ms outlives the safety phase (duration_ms = {})",
                    raw.duration_ms
                )
                },
            )
        }
        FaultKind::Crash {
            restart_after_ms: Some(ms),
            ..
        } => within_field(field.key("restart_after_ms"), *ms, 1, PHASE_MS_MAX),
        _ => Ok(()),
    }
}
