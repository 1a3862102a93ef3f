//! The fault catalogue: what can go wrong, where, as plain data that a
//! scenario file spells and the simulator applies at its boundaries.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest host name a topology may use.
pub const HOST_NAME_BYTES_MAX: usize = 16;

/// Where a fault strikes. `Primary` and `Backup` are roles, resolved by the
/// simulator when the fault fires (whoever is primary at that moment); a
/// `Host` names one machine whatever its role.
///
/// Spelled in files as `"primary"`, `"backup"`, `"witness"`, `"client:N"` or
/// a host name from the topology (`"a"`, `"b"`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Target {
    /// The host that is primary when the fault fires.
    Primary,
    /// The host that is backup when the fault fires.
    Backup,
    /// The witness (quorum server).
    Witness,
    /// A client, by index into the workload's clients.
    Client(ClientIndex),
    /// A VM host by its topology name.
    Host(HostName),
}

/// Index of a client in a scenario's workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientIndex(pub u16);

/// Name of a VM host in a topology: 1 to 16 of `a-z`, `0-9`, `-`, starting
/// with a letter, and none of the role words.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostName(String);

impl HostName {
    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HostName {
    type Error = String;

    fn try_from(name: String) -> Result<HostName, String> {
        let reserved = ["primary", "backup", "witness"];
        let well_formed = !name.is_empty()
            && name.len() <= HOST_NAME_BYTES_MAX
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !well_formed {
            return Err(format!(
                "host name {name:?} must be 1..={HOST_NAME_BYTES_MAX} of a-z, 0-9, '-', starting with a letter"
            ));
        }
        if reserved.contains(&name.as_str()) || name.starts_with("client") {
            return Err(format!("host name {name:?} is a role, not a host"));
        }
        Ok(HostName(name))
    }
}

impl From<HostName> for String {
    fn from(name: HostName) -> String {
        name.0
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Target {
    type Error = String;

    fn try_from(text: String) -> Result<Target, String> {
        match text.as_str() {
            "primary" => return Ok(Target::Primary),
            "backup" => return Ok(Target::Backup),
            "witness" => return Ok(Target::Witness),
            _ => {}
        }
        if let Some(index) = text.strip_prefix("client:") {
            return index
                .parse::<u16>()
                .map(|i| Target::Client(ClientIndex(i)))
                .map_err(|_| format!("target {text:?}: client index must be a number (client:0)"));
        }
        HostName::try_from(text)
            .map(Target::Host)
            .map_err(|e| format!("target: {e}; or use primary, backup, witness, client:N"))
    }
}

impl From<Target> for String {
    fn from(target: Target) -> String {
        target.to_string()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Primary => f.write_str("primary"),
            Target::Backup => f.write_str("backup"),
            Target::Witness => f.write_str("witness"),
            Target::Client(ClientIndex(i)) => write!(f, "client:{i}"),
            Target::Host(name) => f.write_str(name.as_str()),
        }
    }
}

impl Target {
    /// Whether the target runs the VM (and so has a disk, vCPUs and a NIC
    /// the guest uses): a role or a named VM host.
    pub fn is_vm_host(&self) -> bool {
        matches!(self, Target::Primary | Target::Backup | Target::Host(_))
    }
}

/// A probability in `0.0..=1.0`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Rate(f64);

impl Rate {
    /// The probability.
    pub fn get(self) -> f64 {
        self.0
    }

    /// A rate, if `p` is within `0.0..=1.0`.
    pub fn new(p: f64) -> Option<Rate> {
        (0.0..=1.0).contains(&p).then_some(Rate(p))
    }
}

impl TryFrom<f64> for Rate {
    type Error = String;

    fn try_from(p: f64) -> Result<Rate, String> {
        Rate::new(p).ok_or_else(|| format!("rate {p} is not within 0.0..=1.0"))
    }
}

impl From<Rate> for f64 {
    fn from(rate: Rate) -> f64 {
        rate.0
    }
}

/// Which way a partition cuts. Spelled in files as `oneway = false|true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "bool", into = "bool")]
pub enum Direction {
    /// Neither side hears the other.
    #[default]
    Both,
    /// The first named side's messages to the second are lost; the other
    /// way still works.
    OneWay,
}

impl From<bool> for Direction {
    fn from(oneway: bool) -> Direction {
        if oneway {
            Direction::OneWay
        } else {
            Direction::Both
        }
    }
}

impl From<Direction> for bool {
    fn from(direction: Direction) -> bool {
        direction == Direction::OneWay
    }
}

/// One fault. In files: a table with `kind = "..."` and the kind's fields.
/// Link faults name their two ends in `between`; host faults their `target`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultKind {
    /// The host dies; with `restart_after_ms` it boots again empty.
    Crash {
        target: Target,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        restart_after_ms: Option<u64>,
    },
    /// The host freezes for the fault's `duration_ms`, then resumes as if
    /// nothing happened: a primary must find out it was replaced and step down.
    Pause { target: Target },
    /// No message crosses between the two ends (or one way only).
    Partition {
        between: [Target; 2],
        #[serde(default, rename = "oneway")]
        direction: Direction,
    },
    /// The host hears and reaches nobody.
    Isolate { target: Target },
    /// Each message on the link is lost with probability `rate`.
    Loss { between: [Target; 2], rate: Rate },
    /// Each message on the link arrives `ms` late.
    Delay { between: [Target; 2], ms: u64 },
    /// Each message on the link arrives twice with probability `rate`.
    Duplicate { between: [Target; 2], rate: Rate },
    /// Messages on the link may overtake each other.
    Reorder { between: [Target; 2] },
    /// The link goes down and up every `period_ms`.
    Flap {
        between: [Target; 2],
        period_ms: u64,
    },
    /// Disk I/O fails with EIO: each with probability `rate`, or every one
    /// after the first `after_writes` writes. Exactly one of the two is set.
    DiskEio {
        target: Target,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate: Option<Rate>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_writes: Option<u64>,
    },
    /// Each disk I/O takes `ms` longer.
    DiskLatency { target: Target, ms: u64 },
    /// The next write is torn at a sector boundary: its first part lands,
    /// the rest keeps the old bytes, and the write reports success.
    TornWrite { target: Target },
    /// When the host crashes, writes it has not made durable are lost.
    LostUnsyncedWrites { target: Target },
    /// Reads return silently flipped bits with probability `rate`.
    DiskCorruption { target: Target, rate: Rate },
    /// The host's NIC goes down (guest traffic and replication link).
    NicFailure { target: Target },
    /// One vCPU of the guest makes no progress for `ms`.
    VcpuStall { target: Target, vcpu: u16, ms: u64 },
}

/// The name of a fault kind, as `kind = "..."` spells it: what a swarm may
/// draw from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KindName {
    Crash,
    Pause,
    Partition,
    Isolate,
    Loss,
    Delay,
    Duplicate,
    Reorder,
    Flap,
    DiskEio,
    DiskLatency,
    TornWrite,
    LostUnsyncedWrites,
    DiskCorruption,
    NicFailure,
    VcpuStall,
}

impl KindName {
    /// The name as `kind = "..."` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            KindName::Crash => "crash",
            KindName::Pause => "pause",
            KindName::Partition => "partition",
            KindName::Isolate => "isolate",
            KindName::Loss => "loss",
            KindName::Delay => "delay",
            KindName::Duplicate => "duplicate",
            KindName::Reorder => "reorder",
            KindName::Flap => "flap",
            KindName::DiskEio => "disk_eio",
            KindName::DiskLatency => "disk_latency",
            KindName::TornWrite => "torn_write",
            KindName::LostUnsyncedWrites => "lost_unsynced_writes",
            KindName::DiskCorruption => "disk_corruption",
            KindName::NicFailure => "nic_failure",
            KindName::VcpuStall => "vcpu_stall",
        }
    }

    /// Every kind, in catalogue order.
    pub const ALL: [KindName; 16] = [
        KindName::Crash,
        KindName::Pause,
        KindName::Partition,
        KindName::Isolate,
        KindName::Loss,
        KindName::Delay,
        KindName::Duplicate,
        KindName::Reorder,
        KindName::Flap,
        KindName::DiskEio,
        KindName::DiskLatency,
        KindName::TornWrite,
        KindName::LostUnsyncedWrites,
        KindName::DiskCorruption,
        KindName::NicFailure,
        KindName::VcpuStall,
    ];
}

impl FaultKind {
    /// The kind's name.
    pub fn name(&self) -> KindName {
        match self {
            FaultKind::Crash { .. } => KindName::Crash,
            FaultKind::Pause { .. } => KindName::Pause,
            FaultKind::Partition { .. } => KindName::Partition,
            FaultKind::Isolate { .. } => KindName::Isolate,
            FaultKind::Loss { .. } => KindName::Loss,
            FaultKind::Delay { .. } => KindName::Delay,
            FaultKind::Duplicate { .. } => KindName::Duplicate,
            FaultKind::Reorder { .. } => KindName::Reorder,
            FaultKind::Flap { .. } => KindName::Flap,
            FaultKind::DiskEio { .. } => KindName::DiskEio,
            FaultKind::DiskLatency { .. } => KindName::DiskLatency,
            FaultKind::TornWrite { .. } => KindName::TornWrite,
            FaultKind::LostUnsyncedWrites { .. } => KindName::LostUnsyncedWrites,
            FaultKind::DiskCorruption { .. } => KindName::DiskCorruption,
            FaultKind::NicFailure { .. } => KindName::NicFailure,
            FaultKind::VcpuStall { .. } => KindName::VcpuStall,
        }
    }

    /// The hosts or clients the fault names: one target, or a link's two ends.
    pub fn targets(&self) -> Vec<&Target> {
        match self {
            FaultKind::Partition { between, .. }
            | FaultKind::Loss { between, .. }
            | FaultKind::Delay { between, .. }
            | FaultKind::Duplicate { between, .. }
            | FaultKind::Reorder { between }
            | FaultKind::Flap { between, .. } => between.iter().collect(),
            FaultKind::Crash { target, .. }
            | FaultKind::Pause { target }
            | FaultKind::Isolate { target }
            | FaultKind::DiskEio { target, .. }
            | FaultKind::DiskLatency { target, .. }
            | FaultKind::TornWrite { target }
            | FaultKind::LostUnsyncedWrites { target }
            | FaultKind::DiskCorruption { target, .. }
            | FaultKind::NicFailure { target }
            | FaultKind::VcpuStall { target, .. } => vec![target],
        }
    }

    /// Whether the fault acts on a VM host's disk, vCPUs or NIC, so its
    /// target must be a VM host.
    pub fn needs_vm_host(&self) -> bool {
        matches!(
            self.name(),
            KindName::DiskEio
                | KindName::DiskLatency
                | KindName::TornWrite
                | KindName::LostUnsyncedWrites
                | KindName::DiskCorruption
                | KindName::NicFailure
                | KindName::VcpuStall
        )
    }
}

/// A fault at a moment of simulated time. In files, `at_ms` and
/// `duration_ms` sit beside the fault's own fields in one `[[faults]]` table;
/// `at_ms = [earliest, latest]` lets the seed pick the moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "ScheduledFaultFile", into = "ScheduledFaultFile")]
pub struct ScheduledFault {
    /// Simulated milliseconds from the start of the run (the earliest, if
    /// `at_latest_ms` gives a window).
    pub at_ms: u64,
    /// The latest moment, if the seed picks one in `at_ms ..= at_latest_ms`
    /// ([`crate::FaultPlan::resolve`] does, so a resolved fault has none).
    pub at_latest_ms: Option<u64>,
    /// How long the fault lasts; `None`: until the liveness phase heals it.
    /// A crash lasts until `restart_after_ms`, a vCPU stall its `ms`
    /// ([`crate::timeline::end_ms`]), so they take no `duration_ms`.
    pub duration_ms: Option<u64>,
    /// What happens.
    pub fault: FaultKind,
}

impl ScheduledFault {
    /// The latest moment the fault may begin.
    pub fn latest_ms(&self) -> u64 {
        self.at_latest_ms.unwrap_or(self.at_ms)
    }
}

/// When a fault begins, as files spell it: a moment, or a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
enum At {
    Moment(u64),
    Window([u64; 2]),
}

/// [`ScheduledFault`] as files spell it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ScheduledFaultFile {
    at_ms: At,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    duration_ms: Option<u64>,
    #[serde(flatten)]
    fault: FaultKind,
}

impl From<ScheduledFaultFile> for ScheduledFault {
    fn from(file: ScheduledFaultFile) -> ScheduledFault {
        let (at_ms, at_latest_ms) = match file.at_ms {
            At::Moment(ms) => (ms, None),
            At::Window([earliest, latest]) => (earliest, Some(latest)),
        };
        ScheduledFault {
            at_ms,
            at_latest_ms,
            duration_ms: file.duration_ms,
            fault: file.fault,
        }
    }
}

impl From<ScheduledFault> for ScheduledFaultFile {
    fn from(fault: ScheduledFault) -> ScheduledFaultFile {
        ScheduledFaultFile {
            at_ms: match fault.at_latest_ms {
                None => At::Moment(fault.at_ms),
                Some(latest) => At::Window([fault.at_ms, latest]),
            },
            duration_ms: fault.duration_ms,
            fault: fault.fault,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_round_trip_through_text() {
        for text in ["primary", "backup", "witness", "client:3", "a", "host-2"] {
            let target = Target::try_from(text.to_string()).unwrap();
            assert_eq!(target.to_string(), text);
        }
    }

    #[test]
    fn bad_targets_are_refused() {
        for text in [
            "",
            "client:x",
            "Primary",
            "1a",
            "a_b",
            "seventeen-chars-x",
            "clientele",
        ] {
            assert!(Target::try_from(text.to_string()).is_err(), "{text}");
        }
    }

    #[test]
    fn rates_are_probabilities() {
        assert!(Rate::new(0.0).is_some());
        assert!(Rate::new(1.0).is_some());
        assert!(Rate::new(1.5).is_none());
        assert!(Rate::new(-0.1).is_none());
        assert!(Rate::new(f64::NAN).is_none());
    }

    #[test]
    fn every_kind_name_is_spelled_as_its_kind() {
        let names: Vec<String> = KindName::ALL.iter().map(kind_text).collect();
        let spelled: Vec<&str> = KindName::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names, spelled);
        assert_eq!(names.len(), 16);
    }

    fn kind_text(kind: &KindName) -> String {
        // toml cannot serialize a bare string; wrap it in a table.
        #[derive(Serialize)]
        struct Wrap<'a> {
            k: &'a KindName,
        }
        let text = toml::to_string(&Wrap { k: kind }).unwrap();
        text.trim()
            .trim_start_matches("k = ")
            .trim_matches('"')
            .to_string()
    }
}
