//! Scenario files: a guest, a workload, a protection level, how long the
//! safety and liveness phases last, and a fault plan. One scenario a file,
//! `scenarios/<name>.toml`; suites and regressions in [`suite`].

mod error;
pub mod suite;
mod validate;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use error::{field_error, parse_toml, FileError, ScenarioError};
pub use suite::{
    load_dir, load_suite, Catalogue, Origin, Regression, Run, Seeds, Selection, Suite,
};
pub use validate::{
    ACCOUNTS_MAX, CLIENTS_MAX, DISK_BLOCKS, REQUESTS_MAX, REQUESTS_TOTAL_MAX, WINDOW_MAX,
};

use crate::catalogue::{HostName, ScheduledFault};
use crate::plan::{FaultPlan, PlanBounds, Swarm};
use error::Source;

/// One scenario, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// The file's stem.
    pub name: String,
    /// What the scenario shows, for people.
    pub description: String,
    /// The VM hosts.
    pub topology: Topology,
    /// The protected guest.
    pub guest: Guest,
    /// What the clients send.
    pub workload: Workload,
    /// How the VM is protected.
    pub protection: Protection,
    /// Length of the safety phase, with faults.
    pub duration_ms: u64,
    /// After the safety phase everything heals; the service must answer
    /// within this long.
    pub liveness_ms: u64,
    /// What goes wrong.
    pub faults: FaultPlan,
}

impl Scenario {
    /// The faults of the run with `seed`, sorted by time.
    pub fn fault_schedule(&self, seed: u64) -> Vec<ScheduledFault> {
        self.faults.resolve(seed, self.bounds())
    }

    /// What the fault plan needs to know of this scenario.
    pub fn bounds(&self) -> PlanBounds {
        PlanBounds {
            duration_ms: self.duration_ms,
            vcpus: self.guest.vcpus,
            clients: self.workload.clients,
        }
    }
}

/// The two VM hosts; the first starts as primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Host names, as fault targets spell them.
    pub hosts: [HostName; 2],
}

impl Default for Topology {
    fn default() -> Topology {
        let name = |n: &str| HostName::try_from(n.to_string()).expect("a valid host name");
        Topology {
            hosts: [name("a"), name("b")],
        }
    }
}

/// Which guest image runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestKind {
    /// Transfers between accounts under a spinlock, journalled to disk.
    Ledger,
    /// Debian's unmodified kernel and Lockstep's initramfs, whose C ledger
    /// serves the same transfers over UDP on a virtio NIC and journals
    /// them on a virtio disk (`guest-linux/`).
    Linux,
}

/// The accounts the Linux guest's ledger keeps (`lockstep-ledger`'s
/// default, which its init does not change).
pub const LINUX_ACCOUNTS: u32 = 16;

/// The protected guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guest {
    /// Which image.
    pub kind: GuestKind,
    /// vCPUs, `1..=machine::layout::VCPUS_MAX`.
    pub vcpus: u16,
    /// Ledger accounts.
    pub accounts: u32,
}

/// What the clients send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Number of clients.
    pub clients: u16,
    /// Requests each client sends.
    pub requests: u32,
    /// Requests a client may have outstanding.
    pub window: u32,
    /// A client resends a request unanswered for this long.
    pub retry_after_ms: u64,
    /// A client waits this long between two new requests, so that the load
    /// spans the safety phase; 0 sends as fast as the window allows.
    #[serde(default)]
    pub think_ms: u64,
}

/// Protection level: the protocol's own, so that a scenario, the command
/// line and the reports name one thing.
pub use protocol::Level;

/// How the VM is protected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protection {
    /// `ft` or `ha`.
    pub level: Level,
    /// Length of an epoch.
    pub epoch_ms: u64,
    /// Heartbeat interval on the replication link.
    pub heartbeat_ms: u64,
    /// A peer silent this long is suspected.
    pub suspect_after_ms: u64,
}

/// A scenario file as written, before its checks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: String,
    description: String,
    #[serde(default)]
    topology: Topology,
    guest: Guest,
    workload: Workload,
    protection: Protection,
    duration_ms: u64,
    liveness_ms: u64,
    #[serde(default)]
    faults: Vec<ScheduledFault>,
    swarm: Option<Swarm>,
}

/// Reads and checks one scenario file; its `name` must be its file stem.
pub fn load_scenario(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    let stem = path.file_stem().and_then(|s| s.to_str());
    Ok(parse_scenario(path, &text, stem)?)
}

/// Checks a scenario given as text; `file` only names it in errors. With
/// `stem`, the scenario's name must equal it.
pub fn parse_scenario(file: &Path, text: &str, stem: Option<&str>) -> Result<Scenario, FileError> {
    let source = Source { file, text };
    let raw: ScenarioFile = toml::from_str(text).map_err(|e| source.toml_error(&e))?;
    validate::scenario(&raw, stem).map_err(|(field, message)| source.at_field(&field, message))?;
    let faults = match raw.swarm {
        Some(swarm) => FaultPlan::Swarm(swarm),
        None => FaultPlan::Scripted(raw.faults),
    };
    Ok(Scenario {
        name: raw.name,
        description: raw.description.trim().to_string(),
        topology: raw.topology,
        guest: raw.guest,
        workload: raw.workload,
        protection: raw.protection,
        duration_ms: raw.duration_ms,
        liveness_ms: raw.liveness_ms,
        faults,
    })
}
