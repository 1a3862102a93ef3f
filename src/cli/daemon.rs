//! `lockstep node` and `lockstep witness`: the daemons of a real
//! deployment, and their configuration files (TOML, with errors that name
//! file, line and field, as scenario files get).

use anyhow::Context;
use cpu_model::{emulated_machine, EmuConfig, Quantum};
use faults::{field_error, parse_toml, FileError};
use machine::guests::ledger_load::LedgerConfig;
use machine::guests::Guest;
use machine::Shape;
use protocol::{Config, Level, NodeId};
use runtime::daemon::address::ServiceAddress;
use runtime::daemon::node::{Bootstrap, NodeSettings};
use runtime::daemon::witness::WitnessSettings;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Longest key file read.
const KEY_BYTES_MAX: usize = 4096;
/// Shortest key accepted.
const KEY_BYTES_MIN: usize = 16;

#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// The node's configuration file.
    #[arg(long)]
    config: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct WitnessArgs {
    /// The witness's configuration file.
    #[arg(long)]
    config: PathBuf,
}

/// A node's configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    pub node: NodeSection,
    pub net: NetSection,
    #[serde(default)]
    pub guest: GuestSection,
    #[serde(default)]
    pub protocol: ProtocolSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// This host's id.
    pub id: u8,
    /// The other VM host's id.
    pub peer_id: u8,
    /// The witness's id.
    pub witness_id: u8,
    /// Role at the very first start: "primary" or "backup".
    pub bootstrap: String,
    /// Durable state: generation, guest disk, status.
    pub state_dir: PathBuf,
    /// The key of the link to the peer (the same file on both VM hosts);
    /// must not be readable by group or others.
    pub peer_key_file: PathBuf,
    /// The key of this host's link to the witness (the witness holds it
    /// too, as this member's `key_file`); same rule.
    pub witness_key_file: PathBuf,
    /// "kvm", "emu", or "auto" (kvm where /dev/kvm works).
    #[serde(default = "auto")]
    pub engine: String,
}

fn auto() -> String {
    "auto".to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSection {
    /// Replication (TCP) and witness (UDP) frames arrive here.
    pub listen: String,
    /// The peer's `listen`.
    pub peer: String,
    /// The witness's `listen`.
    pub witness: String,
    /// Client requests arrive here (UDP).
    pub service: String,
    /// The address clients use, `10.77.0.100/24`, moved with the primary.
    #[serde(default)]
    pub service_address: Option<String>,
    /// The interface the service address goes on.
    #[serde(default)]
    pub service_interface: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuestSection {
    pub vcpus: u16,
    pub memory_mib: u64,
    pub accounts: u64,
    pub disk_blocks: u64,
    /// Seed of the emulated engine's scheduler and rdrand.
    pub seed: u64,
    /// MiB of guest memory, from `DATA_FROM_MIB` up, that hold data at
    /// boot (seeded pseudo-random bytes the ledger never touches): a guest
    /// whose memory is in use, as a real one's is, for re-protection to
    /// copy; 0 leaves it zero.
    pub data_mib: u64,
}

impl Default for GuestSection {
    fn default() -> GuestSection {
        GuestSection {
            vcpus: 2,
            memory_mib: 4,
            accounts: 16,
            disk_blocks: 8192,
            seed: 7,
            data_mib: 0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtocolSection {
    /// "ft" or "ha".
    pub level: String,
    pub epoch_ms: u64,
    /// At `ft`, an epoch whose guest sleeps with replies held ends once
    /// this old (and no delta is in flight).
    pub epoch_idle_min_us: u64,
    pub heartbeat_ms: u64,
    pub suspect_after_ms: u64,
    /// Longest run of the guest between looks at the network.
    pub slice_us: u64,
    /// The slowest the replication link and the peer are expected to take
    /// in a transfer, MiB/s: a copy round is not sent again sooner than it
    /// could arrive at this rate.
    pub transfer_mib_per_s: u64,
}

impl Default for ProtocolSection {
    fn default() -> ProtocolSection {
        ProtocolSection {
            level: "ft".to_string(),
            epoch_ms: 20,
            epoch_idle_min_us: 1000,
            heartbeat_ms: 20,
            suspect_after_ms: 150,
            slice_us: 1000,
            transfer_mib_per_s: 50,
        }
    }
}

/// A witness's configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessFile {
    pub witness: WitnessSection,
    pub members: Vec<MemberSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessSection {
    pub id: u8,
    pub listen: String,
    pub state_dir: PathBuf,
    /// The member that is primary at the very first start.
    pub bootstrap_primary: u8,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSection {
    pub id: u8,
    /// The member's `net.listen`.
    pub address: String,
    /// The key of the link to this member (its `witness_key_file`); must
    /// not be readable by group or others.
    pub key_file: PathBuf,
}

/// A configuration file, read: its text kept for error positions.
struct ConfigText {
    path: PathBuf,
    text: String,
}

impl ConfigText {
    fn read(path: &Path) -> anyhow::Result<ConfigText> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        Ok(ConfigText {
            path: path.to_path_buf(),
            text,
        })
    }

    fn error(&self, keys: &[&str], message: impl Into<String>) -> FileError {
        field_error(&self.path, &self.text, keys, message)
    }

    fn addr(&self, keys: &[&str], value: &str) -> Result<SocketAddr, FileError> {
        value
            .parse()
            .map_err(|e| self.error(keys, format!("not an address (ip:port): {e}")))
    }

    /// The key in `path`, refused if others may read it.
    fn key(&self, keys: &[&str], path: &Path) -> Result<Vec<u8>, FileError> {
        use std::os::unix::fs::PermissionsExt;
        let at = |m: String| self.error(keys, format!("{}: {m}", path.display()));
        let meta = std::fs::metadata(path).map_err(|e| at(format!("cannot read: {e}")))?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(at(format!(
                "readable by others (mode {:o}): chmod 600 it",
                mode & 0o777
            )));
        }
        if meta.len() > KEY_BYTES_MAX as u64 {
            return Err(at(format!("longer than {KEY_BYTES_MAX} bytes")));
        }
        let bytes = std::fs::read(path).map_err(|e| at(format!("cannot read: {e}")))?;
        let key = bytes.trim_ascii().to_vec();
        if key.len() < KEY_BYTES_MIN {
            return Err(at(format!("a key has at least {KEY_BYTES_MIN} bytes")));
        }
        Ok(key)
    }
}

/// Which engine runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineChoice {
    Emu,
    Kvm,
}

/// A node's settings from its file, and the guest to boot.
pub struct NodePlan {
    pub settings: NodeSettings,
    pub engine: EngineChoice,
    pub shape: Shape,
    pub ledger: LedgerConfig,
    pub seed: u64,
    /// Bytes of data written into guest memory at a first boot.
    pub data_bytes: u64,
}

/// Reads and checks a node's configuration file.
pub fn node_plan(path: &Path) -> anyhow::Result<NodePlan> {
    let file = ConfigText::read(path)?;
    let parsed: NodeFile = parse_toml(&file.path, &file.text)?;
    Ok(plan_of(&file, parsed)?)
}

fn plan_of(file: &ConfigText, f: NodeFile) -> Result<NodePlan, FileError> {
    let bootstrap = match f.node.bootstrap.as_str() {
        "primary" => Bootstrap::Primary,
        "backup" => Bootstrap::Backup,
        other => {
            return Err(file.error(
                &["node", "bootstrap"],
                format!("\"primary\" or \"backup\", not {other:?}"),
            ))
        }
    };
    let engine = match f.node.engine.as_str() {
        "emu" => EngineChoice::Emu,
        "kvm" => EngineChoice::Kvm,
        "auto" if kvm_usable() => EngineChoice::Kvm,
        "auto" => EngineChoice::Emu,
        other => {
            return Err(file.error(
                &["node", "engine"],
                format!("\"kvm\", \"emu\" or \"auto\", not {other:?}"),
            ))
        }
    };
    let level: Level = f
        .protocol
        .level
        .parse()
        .map_err(|why: String| file.error(&["protocol", "level"], why))?;
    let mut protocol = Config::new(
        NodeId(f.node.id),
        NodeId(f.node.peer_id),
        NodeId(f.node.witness_id),
        level,
    );
    let p = &f.protocol;
    protocol.epoch_duration_ns = p.epoch_ms.saturating_mul(1_000_000);
    protocol.epoch_idle_min_ns = p.epoch_idle_min_us.saturating_mul(1_000);
    protocol.heartbeat_interval_ns = p.heartbeat_ms.saturating_mul(1_000_000);
    protocol.suspect_after_ns = p.suspect_after_ms.saturating_mul(1_000_000);
    protocol.retransmit_after_ns = p.heartbeat_ms.saturating_mul(3_000_000);
    protocol.transfer_bytes_per_sec_min = p.transfer_mib_per_s.saturating_mul(1 << 20);
    if p.transfer_mib_per_s == 0 {
        return Err(file.error(&["protocol", "transfer_mib_per_s"], "must be positive"));
    }
    if let Err(e) = protocol.validate() {
        return Err(file.error(&["protocol"], e.to_string()));
    }
    if p.slice_us == 0 || p.slice_us > 100_000 {
        return Err(file.error(&["protocol", "slice_us"], "must be 1..=100000"));
    }
    let g = &f.guest;
    let shape = Shape::new(g.vcpus, g.memory_mib.saturating_mul(1 << 20))
        .map_err(|e| file.error(&["guest"], e.to_string()))?;
    if g.accounts < 2 || g.accounts > machine::guests::ledger::ACCOUNTS_MAX {
        return Err(file.error(
            &["guest", "accounts"],
            format!("must be 2..={}", machine::guests::ledger::ACCOUNTS_MAX),
        ));
    }
    if g.data_mib > g.memory_mib.saturating_sub(DATA_FROM_MIB) {
        return Err(file.error(
            &["guest", "data_mib"],
            format!(
                "at most memory_mib - {DATA_FROM_MIB} ({})",
                g.memory_mib.saturating_sub(DATA_FROM_MIB)
            ),
        ));
    }
    if !(64..=1 << 24).contains(&g.disk_blocks) {
        return Err(file.error(&["guest", "disk_blocks"], "must be 64..=16777216"));
    }
    let address = match (&f.net.service_address, &f.net.service_interface) {
        (Some(cidr), Some(interface)) => Some(ServiceAddress::new(cidr.clone(), interface.clone())),
        (None, None) => None,
        _ => {
            return Err(file.error(
                &["net", "service_address"],
                "service_address and service_interface go together",
            ))
        }
    };
    let peer_key = file.key(&["node", "peer_key_file"], &f.node.peer_key_file)?;
    let witness_key = file.key(&["node", "witness_key_file"], &f.node.witness_key_file)?;
    if peer_key == witness_key {
        return Err(file.error(
            &["node", "witness_key_file"],
            "the witness link needs a key of its own, not the peer link's",
        ));
    }
    let settings = NodeSettings {
        keys: [
            (NodeId(f.node.peer_id), peer_key),
            (NodeId(f.node.witness_id), witness_key),
        ]
        .into(),
        listen: file.addr(&["net", "listen"], &f.net.listen)?,
        peer: file.addr(&["net", "peer"], &f.net.peer)?,
        witness: file.addr(&["net", "witness"], &f.net.witness)?,
        service: file.addr(&["net", "service"], &f.net.service)?,
        address,
        state_dir: f.node.state_dir,
        disk_blocks: g.disk_blocks,
        bootstrap,
        slice_ns: p.slice_us * 1000,
        protocol,
    };
    let ledger = LedgerConfig {
        accounts: g.accounts,
        ..LedgerConfig::with_requests(0)
    };
    Ok(NodePlan {
        settings,
        engine,
        shape,
        ledger,
        seed: g.seed,
        data_bytes: g.data_mib << 20,
    })
}

/// Whether /dev/kvm can be opened.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

pub fn node(args: NodeArgs) -> anyhow::Result<ExitCode> {
    let plan = node_plan(&args.config)?;
    let image = Guest::Ledger.image(plan.ledger.params())?;
    let (shape, seed) = (plan.shape, plan.seed);
    tracing::info!(engine = ?plan.engine, "node starts");
    let ran = match plan.engine {
        EngineChoice::Emu => runtime::daemon::node::run(plan.settings, |store, start| {
            let config = EmuConfig {
                seed,
                quantum: Quantum::default(),
            };
            let mut machine =
                emulated_machine(shape, &image, config, store).map_err(|e| e.to_string())?;
            boot_data(&mut machine, start, plan.data_bytes, seed)?;
            Ok(machine)
        }),
        EngineChoice::Kvm => runtime::daemon::node::run(plan.settings, |store, start| {
            let mut machine =
                runtime::kvm::kvm_machine(shape, &image, store).map_err(|e| e.to_string())?;
            boot_data(&mut machine, start, plan.data_bytes, seed)?;
            Ok(machine)
        }),
    };
    ran?;
    Ok(ExitCode::SUCCESS)
}

/// Where the data of `[guest] data_mib` begins: above all the ledger uses.
pub const DATA_FROM_MIB: u64 = 16;

/// At a first boot (both hosts boot the same image), writes `bytes` of
/// pseudo-random data from `seed` into guest memory at `DATA_FROM_MIB`. A
/// restarted host does not: the copy from its peer brings it.
fn boot_data<E: machine::Engine>(
    machine: &mut machine::Machine<E>,
    start: &protocol::Start,
    bytes: u64,
    seed: u64,
) -> Result<(), String> {
    if bytes == 0 || matches!(start, protocol::Start::Restart { .. }) {
        return Ok(());
    }
    let mut rng = machine::rng::SplitMix64::new(seed ^ 0xDA7A);
    let mut part = vec![0u8; 1 << 20];
    for offset in (0..bytes).step_by(part.len()) {
        for word in part.chunks_mut(8) {
            word.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        let gpa = machine::Gpa((DATA_FROM_MIB << 20) + offset);
        machine
            .engine_mut()
            .write_memory(gpa, &part)
            .map_err(|e| format!("guest data: {e}"))?;
    }
    // Part of the image both hosts boot, not a change of the guest's: the
    // first delta does not carry it (it did, all of it, in one step of
    // half a second).
    machine
        .engine_mut()
        .take_dirty_pages()
        .map_err(|e| format!("guest data: {e}"))?;
    Ok(())
}

/// Reads and checks a witness's configuration file.
pub fn witness_settings(path: &Path) -> anyhow::Result<WitnessSettings> {
    let file = ConfigText::read(path)?;
    let f: WitnessFile = parse_toml(&file.path, &file.text)?;
    let [a, b] = f.members.as_slice() else {
        return Err(file
            .error(&["members"], "a witness has exactly two members")
            .into());
    };
    let member = |i: usize, m: &MemberSection| -> Result<(NodeId, SocketAddr), FileError> {
        let addr = m.address.parse().map_err(|e| {
            field_error(
                &file.path,
                &file.text,
                &["members"],
                format!("members[{i}].address: not an address (ip:port): {e}"),
            )
        })?;
        Ok((NodeId(m.id), addr))
    };
    let key = |i: usize, m: &MemberSection| -> Result<(NodeId, Vec<u8>), FileError> {
        let key = file.key(&["members"], &m.key_file).map_err(|e| {
            field_error(
                &file.path,
                &file.text,
                &["members"],
                format!("members[{i}].key_file: {e}"),
            )
        })?;
        Ok((NodeId(m.id), key))
    };
    let keys = [key(0, a)?, key(1, b)?];
    if keys[0].1 == keys[1].1 {
        return Err(file
            .error(&["members"], "each member's link needs a key of its own")
            .into());
    }
    let w = &f.witness;
    Ok(WitnessSettings {
        me: NodeId(w.id),
        members: [member(0, a)?, member(1, b)?],
        bootstrap_primary: NodeId(w.bootstrap_primary),
        listen: file.addr(&["witness", "listen"], &w.listen)?,
        state_dir: w.state_dir.clone(),
        keys: keys.into(),
    })
}

pub fn witness(args: WitnessArgs) -> anyhow::Result<ExitCode> {
    let settings = witness_settings(&args.config)?;
    runtime::daemon::witness::run(settings)?;
    Ok(ExitCode::SUCCESS)
}
