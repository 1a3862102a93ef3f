//! `lockstep node`: one VM host on a real machine. The driver (`VmHost`)
//! runs inside the shared body ([`super::body::serve`]) on this thread;
//! tokio's worker threads serve the sockets meanwhile. On KVM the vCPUs
//! run on threads of their own and go on computing while this thread
//! takes an input; they stop only for a capture (see
//! [`machine::Engine::keep_running`]). Durable state lives
//! in the node's state directory: the generation (replaced atomically),
//! the guest disk on a file whose records carry their checksums and whose
//! label says which checkpoint it holds, a status file for operators and
//! tools, and on a clean stop the primary's final checkpoint.

use super::address::ServiceAddress;
use super::body::{serve, Ended, Input, Seam, Service};
use super::durable::{self, DurableError};
use super::net::{self, ClientBook, LinkCounters};
use crate::driver::{HostError, Pace, VmHost};
use machine::devices::{BlockStore, FileStore, Packet, SharedStore, LABEL_BYTES};
use machine::{Engine, Kind, Machine};
use protocol::wire::Unsealed;
use protocol::{
    CheckpointId, Config, Epoch, Generation, NodeId, Protection, RoleKind, Start, Time,
};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

/// How often the status file is rewritten, at most.
pub const STATUS_INTERVAL: Duration = Duration::from_millis(20);

/// Which role a node takes the very first time the cluster starts (no
/// state in its directory yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrap {
    /// Runs the guest from its image.
    Primary,
    /// Holds the boot image as the primary's backup.
    Backup,
}

/// Everything a node daemon needs, as its configuration file says.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// The protocol's configuration (ids, level, timings).
    pub protocol: Config,
    /// The keys of the links to the peer and to the witness.
    pub keys: super::keys::LinkKeys,
    /// Where the peer's replication connections and the witness's
    /// datagrams arrive (TCP and UDP on the same address).
    pub listen: SocketAddr,
    /// The peer's `listen` address.
    pub peer: SocketAddr,
    /// The witness's address (UDP).
    pub witness: SocketAddr,
    /// Where client requests arrive (UDP).
    pub service: SocketAddr,
    /// The address clients use, moved to whichever host is primary.
    pub address: Option<ServiceAddress>,
    /// The node's durable state.
    pub state_dir: PathBuf,
    /// Blocks of the guest disk (created at first start).
    pub disk_blocks: u64,
    /// First start's role.
    pub bootstrap: Bootstrap,
    /// Longest run of the guest between looks at the network.
    pub slice_ns: u64,
}

/// A node that cannot start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A durable record failed.
    #[error(transparent)]
    Durable(#[from] DurableError),
    /// The guest disk failed.
    #[error("guest disk {}: {why}", path.display())]
    Disk {
        /// The disk file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A socket could not be set up.
    #[error("{what} {addr}: {source}")]
    Socket {
        /// Which socket.
        what: &'static str,
        /// Its address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The state directory is unusable.
    #[error("state directory {}: {source}", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The async runtime could not start.
    #[error("async runtime: {0}")]
    Runtime(std::io::Error),
    /// The machine could not be built.
    #[error("machine: {0}")]
    Machine(String),
    /// The host failed (fail-stop): the peer takes over.
    #[error(transparent)]
    Host(#[from] HostError),
}

/// The node's files.
#[derive(Debug, Clone)]
pub struct StatePaths {
    /// The persisted generation.
    pub generation: PathBuf,
    /// The guest disk.
    pub disk: PathBuf,
    /// The status, rewritten as it changes (JSON).
    pub status: PathBuf,
    /// The final checkpoint a primary writes on a clean stop.
    pub final_checkpoint: PathBuf,
}

impl StatePaths {
    /// The files in `dir`.
    pub fn new(dir: &Path) -> StatePaths {
        StatePaths {
            generation: dir.join("generation"),
            disk: dir.join("disk.img"),
            status: dir.join("status.json"),
            final_checkpoint: dir.join("final.ckpt"),
        }
    }
}

/// The status file's contents.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Status {
    /// The daemon's process id.
    pub pid: u32,
    /// Role: primary, backup, joining, stopped.
    pub role: String,
    /// The generation the node is in.
    pub generation: u64,
    /// On a primary: protected, resyncing, unprotected.
    pub protection: Option<String>,
    /// On a primary: the open epoch.
    pub epoch: Option<u64>,
    /// Whether the guest runs here.
    pub running: bool,
    /// Outputs released to clients.
    pub outputs_released: u64,
    /// Frames the protocol dropped (malformed, unauthenticated, stale).
    pub frames_dropped: u64,
    /// Client requests dropped before the guest (not primary, guest
    /// stopped, its NIC's receive queue full): the client retries them.
    pub inputs_dropped: u64,
    /// The same, by reason (replayed, out_of_range, contradicting...).
    #[serde(default)]
    pub frames_dropped_by: std::collections::BTreeMap<String, u64>,
    /// What the links dropped, by reason.
    pub links: std::collections::BTreeMap<String, u64>,
    /// The longest single step of the driver while this host ran the guest
    /// (a capture, a copy round, an apply), µs: the guest's longest pause
    /// is at most this.
    pub longest_step_us: u64,
    /// The longest single step of the driver while this host, as primary,
    /// re-protected the guest (from the joiner's first copy round to its
    /// certification), for the last or current re-protection, µs: the
    /// guest's longest pause while it was copied.
    #[serde(default)]
    pub resync_longest_step_us: Option<u64>,
    /// Since when (Unix time, ns) this host runs the guest as primary, if
    /// it does: every reply after it is this host's.
    #[serde(default)]
    pub primary_since_unix_ns: Option<u64>,
}

/// A disk label from a checkpoint id, and back.
fn label(checkpoint: Option<CheckpointId>) -> Option<[u8; LABEL_BYTES]> {
    checkpoint.map(|c| {
        let mut label = [0u8; LABEL_BYTES];
        label[..8].copy_from_slice(&c.generation.0.to_le_bytes());
        label[8..16].copy_from_slice(&c.epoch.0.to_le_bytes());
        label
    })
}

fn checkpoint_of(label: [u8; LABEL_BYTES]) -> CheckpointId {
    let word = |i: usize| u64::from_le_bytes(label[i..i + 8].try_into().expect("8 bytes"));
    CheckpointId {
        generation: Generation(word(0)),
        epoch: Epoch(word(8)),
    }
}

/// How the node starts, from what its state directory holds: the first
/// start takes its bootstrap role; a restart claims the checkpoint its
/// disk holds if a scrub finds every block whole.
fn start_of(
    settings: &NodeSettings,
    paths: &StatePaths,
    disk: &mut FileStore,
) -> Result<Start, NodeError> {
    let g1 = Generation(1);
    let Some(generation) = durable::read_generation(&paths.generation)? else {
        durable::write_generation(&paths.generation, g1)?;
        return Ok(match settings.bootstrap {
            Bootstrap::Primary => Start::Primary { generation: g1 },
            Bootstrap::Backup => Start::Backup { generation: g1 },
        });
    };
    let bad = disk.scrub().map_err(|e| NodeError::Disk {
        path: paths.disk.clone(),
        why: e.to_string(),
    })?;
    let claim = match (bad.is_empty(), disk.label()) {
        (true, Some(label)) => Some(checkpoint_of(label)),
        (false, _) => {
            tracing::warn!(
                blocks = bad.len(),
                "scrub found bad blocks: the disk claims nothing"
            );
            None
        }
        (true, None) => None,
    };
    tracing::info!(?generation, ?claim, "restart");
    Ok(Start::Restart {
        generation,
        disk: claim,
    })
}

/// Runs a node daemon until it is stopped (SIGTERM, SIGINT) or its host
/// fails. `build` makes the machine on the given disk for the given start
/// (the engine is the caller's choice). On a clean stop a running primary writes its final
/// checkpoint.
pub fn run<E: Engine>(
    settings: NodeSettings,
    build: impl FnOnce(Box<dyn BlockStore>, &Start) -> Result<Machine<E>, String>,
) -> Result<(), NodeError> {
    std::fs::create_dir_all(&settings.state_dir).map_err(|source| NodeError::StateDir {
        path: settings.state_dir.clone(),
        source,
    })?;
    let paths = StatePaths::new(&settings.state_dir);
    let disk_error = |why: String| NodeError::Disk {
        path: paths.disk.clone(),
        why,
    };
    let mut disk = FileStore::open_or_create(&paths.disk, settings.disk_blocks)
        .map_err(|e| disk_error(e.to_string()))?;
    let start = start_of(&settings, &paths, &mut disk)?;
    let disk = Rc::new(RefCell::new(disk));
    let mut machine =
        build(Box::new(SharedStore(Rc::clone(&disk))), &start).map_err(NodeError::Machine)?;
    // The vCPUs compute while this thread takes frames and requests (on
    // KVM; the emulated engine runs the guest on this thread, between
    // them); every input ends the guest's run at once.
    machine.keep_running(true).map_err(HostError::from)?;
    // A host's memory is the guest's: back it all now, so that a copy or
    // the guest itself does not take it a page at a time.
    machine.engine_mut().back_memory();
    let waker = machine.engine().waker();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(NodeError::Runtime)?;
    let clock = Instant::now();
    let now = Time(0);
    let mut host = VmHost::new(
        settings.protocol.clone(),
        super::keys::codec(&settings.keys),
        start,
        machine,
        now,
    )?;
    host.set_pace(Pace::Slices {
        slice_ns: settings.slice_ns,
    });
    runtime.block_on(async move {
        let mut seam = RealSeam::open(&settings, paths, disk, host, clock, waker).await?;
        let ended = serve(&mut seam).await;
        seam.finish(ended).await
    })
}

/// Inputs taken at most while the wake time is past, before the timers
/// and the guest get their turn.
const INPUTS_PER_WAKE: u32 = 16;

/// A step this long is logged.
const LONG_STEP: Duration = Duration::from_millis(100);

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The seam on a real host.
struct RealSeam<E: Engine> {
    host: Option<VmHost<E>>,
    failed: Option<HostError>,
    clock: Instant,
    inputs: mpsc::Receiver<Input>,
    to_peer: net::PeerQueue,
    witness_socket: Arc<UdpSocket>,
    witness: SocketAddr,
    peer_id: NodeId,
    service_socket: Arc<UdpSocket>,
    book: Arc<Mutex<ClientBook>>,
    counters: Arc<LinkCounters>,
    address: Option<ServiceAddress>,
    disk: Rc<RefCell<FileStore>>,
    paths: StatePaths,
    stop: Arc<AtomicBool>,
    next_status: Instant,
    last_status: Option<Status>,
    longest_step: Duration,
    /// The longest step of the last or current re-protection.
    resync_longest_step: Option<Duration>,
    /// Since when this host runs the guest as primary (Unix ns).
    primary_since: Option<u64>,
    /// Inputs taken since the last wake.
    inputs_since_wake: u32,
}

impl<E: Engine> RealSeam<E> {
    async fn open(
        settings: &NodeSettings,
        paths: StatePaths,
        disk: Rc<RefCell<FileStore>>,
        host: VmHost<E>,
        clock: Instant,
        waker: Option<machine::RunWaker>,
    ) -> Result<RealSeam<E>, NodeError> {
        let socket = |what, addr| move |source| NodeError::Socket { what, addr, source };
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(socket("replication listener", settings.listen))?;
        let witness_socket = UdpSocket::bind(settings.listen)
            .await
            .map_err(socket("witness link", settings.listen))?;
        let service_socket =
            net::bind_service(settings.service).map_err(socket("service", settings.service))?;
        let (witness_socket, service_socket) = (Arc::new(witness_socket), Arc::new(service_socket));
        let (input_tx, inputs) = mpsc::channel(net::INPUTS_MAX);
        let inbox = net::Inbox::new(input_tx, waker);
        let (to_peer, queue) = net::PeerQueue::new();
        let counters = Arc::new(LinkCounters::default());
        let book = Arc::new(Mutex::new(ClientBook::default()));
        tokio::spawn(net::accept_frames(
            listener,
            inbox.clone(),
            Arc::clone(&counters),
        ));
        tokio::spawn(net::send_frames(
            settings.peer,
            queue,
            Arc::clone(&counters),
        ));
        tokio::spawn(net::read_datagrams(
            Arc::clone(&witness_socket),
            inbox.clone(),
        ));
        tokio::spawn(net::read_requests(
            Arc::clone(&service_socket),
            inbox.clone(),
            Arc::clone(&book),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        tokio::spawn(stop_on_signal(Arc::clone(&stop), inbox));
        let mut address = settings.address.clone();
        if let Some(address) = &mut address {
            // Whatever a previous life of this host held is not ours now.
            address.release().await;
        }
        Ok(RealSeam {
            host: Some(host),
            failed: None,
            clock,
            inputs,
            to_peer,
            witness_socket,
            witness: settings.witness,
            peer_id: settings.protocol.peer,
            service_socket,
            book,
            counters,
            address,
            disk,
            paths,
            stop,
            next_status: Instant::now(),
            last_status: None,
            longest_step: Duration::ZERO,
            resync_longest_step: None,
            primary_since: None,
            inputs_since_wake: 0,
        })
    }

    /// After the body ended: a clean stop writes the primary's final
    /// checkpoint and lets the address go; a failure is the error.
    async fn finish(mut self, ended: Ended) -> Result<(), NodeError> {
        if let Some(address) = &mut self.address {
            address.release().await;
        }
        if let Some(error) = self.failed.take() {
            return Err(error.into());
        }
        if ended == Ended::Stopped {
            if let Some(host) = self.host.as_mut() {
                if host.role() == RoleKind::Primary && host.is_running() {
                    let checkpoint = host
                        .machine()
                        .checkpoint(Kind::Full)
                        .map_err(HostError::from)?;
                    // Whole or not at all: written aside, then renamed.
                    let path = &self.paths.final_checkpoint;
                    let tmp = path.with_extension("tmp");
                    std::fs::write(&tmp, checkpoint.encode())
                        .and_then(|()| std::fs::rename(&tmp, path))
                        .map_err(|source| NodeError::StateDir {
                            path: path.clone(),
                            source,
                        })?;
                }
            }
            self.write_status(true);
        }
        Ok(())
    }

    /// Durable state could not be written: the host stops (fail-stop) and
    /// the peer takes over. Always `false`, for the seam's answer.
    fn fail_stop(&mut self, what: &str, error: String) -> bool {
        tracing::error!(%error, "{what}: stopping");
        self.failed = Some(HostError::DiskFailed(format!("{what}: {error}")));
        self.host = None;
        false
    }

    fn status(&self) -> Option<Status> {
        let host = self.host.as_ref()?;
        let node = host.node();
        let role = match host.role() {
            RoleKind::Primary => "primary",
            RoleKind::Backup => "backup",
            RoleKind::Joining => "joining",
        };
        Some(Status {
            pid: std::process::id(),
            role: role.to_string(),
            generation: node.generation().0,
            protection: node.protection().map(|p| format!("{p:?}").to_lowercase()),
            epoch: node.epoch().map(|e| e.0),
            running: host.is_running(),
            outputs_released: host.stats().outputs_released,
            inputs_dropped: host.stats().inputs_dropped,
            frames_dropped: node.stats().dropped_total(),
            frames_dropped_by: node
                .stats()
                .dropped_by_reason()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            links: self
                .counters
                .snapshot()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            longest_step_us: micros(self.longest_step),
            resync_longest_step_us: self.resync_longest_step.map(micros),
            primary_since_unix_ns: self.primary_since,
        })
    }

    /// Rewrites the status file if it changed (at most every
    /// `STATUS_INTERVAL` unless `force`). Write then rename: a reader sees
    /// a whole file.
    fn write_status(&mut self, force: bool) {
        let now = Instant::now();
        if !force && now < self.next_status {
            return;
        }
        self.next_status = now + STATUS_INTERVAL;
        let Some(status) = self.status() else {
            return;
        };
        if !force && self.last_status.as_ref() == Some(&status) {
            return;
        }
        let tmp = self.paths.status.with_extension("tmp");
        let json = serde_json::to_vec(&status).expect("a status serialises");
        if std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, &self.paths.status))
            .is_err()
        {
            tracing::warn!("status file not written");
        }
        self.last_status = Some(status);
    }
}

/// Now, as Unix time in ns (0 before 1970).
fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

async fn stop_on_signal(stop: Arc<AtomicBool>, wake: net::Inbox) {
    super::stop_signal().await;
    stop.store(true, Ordering::SeqCst);
    wake.put(Input::Wake).await;
}

impl<E: Engine> Seam for RealSeam<E> {
    type Engine = E;

    fn now(&self) -> Time {
        Time(u64::try_from(self.clock.elapsed().as_nanos()).expect("uptime below 584 years"))
    }

    fn with_host<R>(
        &mut self,
        _now: Time,
        step: impl FnOnce(&mut VmHost<E>) -> Result<R, HostError>,
    ) -> Option<R> {
        let host = self.host.as_mut()?;
        let resyncing = |host: &VmHost<E>| {
            host.is_running() && host.node().protection() == Some(Protection::Resyncing)
        };
        let resyncing_before = resyncing(host);
        let started = Instant::now();
        let stepped = step(host);
        let took = started.elapsed();
        if host.is_running() {
            self.longest_step = self.longest_step.max(took);
        }
        // A step that begins or ends a re-protection is part of it (the
        // final copy round pauses the guest in the step that certifies).
        let resyncing_after = resyncing(host);
        if resyncing_before || resyncing_after {
            // A re-protection that begins in this step forgets the last.
            let longest = self.resync_longest_step.filter(|_| resyncing_before);
            self.resync_longest_step = Some(longest.map_or(took, |l| l.max(took)));
        }
        let primary = host.is_running() && host.role() == RoleKind::Primary;
        match (primary, self.primary_since) {
            (true, None) => self.primary_since = Some(unix_ns()),
            (false, Some(_)) => self.primary_since = None,
            _ => {}
        }
        if took >= LONG_STEP {
            // Longer than a peer's patience allows for long: worth a line.
            tracing::info!(ms = took.as_millis() as u64, role = ?host.role(), "a long step");
        }
        match stepped {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(error = %e, "host failed: stopping (fail-stop)");
                self.failed = Some(e);
                self.host = None;
                None
            }
        }
    }

    async fn next_input(&mut self, wake: Time) -> Option<Input> {
        self.write_status(false);
        if self.stop.load(Ordering::SeqCst) {
            return None;
        }
        let wait = wake.0.saturating_sub(self.now().0);
        // Inputs that queued during a long step come before the timers
        // (see `Pace::Slices`), but not for ever: under a stream of frames
        // (a copy round's thousand chunks, a flood of requests) the timers
        // and the guest still get every `INPUTS_PER_WAKE`-th turn.
        if wait == 0 && self.inputs_since_wake >= INPUTS_PER_WAKE {
            self.inputs_since_wake = 0;
            return Some(Input::Wake);
        }
        if let Ok(input) = self.inputs.try_recv() {
            self.inputs_since_wake += 1;
            return Some(input);
        }
        if wait == 0 {
            self.inputs_since_wake = 0;
            return Some(Input::Wake);
        }
        let wait = Duration::from_nanos(wait).min(STATUS_INTERVAL);
        match tokio::time::timeout(wait, self.inputs.recv()).await {
            Ok(Some(input)) => {
                self.inputs_since_wake += 1;
                Some(input)
            }
            Ok(None) => None,
            Err(_) => Some(Input::Wake),
        }
    }

    async fn send_frame(&mut self, to: NodeId, frame: Unsealed) {
        if to == self.peer_id {
            // Sealed by the link's task, off this thread: a copy round
            // is hundreds of MiB to encode and tag.
            if !self.to_peer.push(frame) {
                self.counters
                    .send_queue_full
                    .fetch_add(1, Ordering::Relaxed);
            }
        } else if self
            .witness_socket
            .try_send_to(&frame.seal(), self.witness)
            .is_err()
        {
            self.counters
                .datagrams_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn send_output(&mut self, _generation: Generation, packet: Packet) {
        let to = net::request_id(&packet).and_then(|id| {
            self.book
                .lock()
                .expect("no panics hold the book")
                .address(id)
        });
        let Some(to) = to else {
            self.counters
                .replies_unaddressed
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        if self.service_socket.try_send_to(&packet, to).is_err() {
            self.counters
                .datagrams_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn persist_generation(&mut self, generation: Generation) -> bool {
        match durable::write_generation(&self.paths.generation, generation) {
            Ok(()) => true,
            Err(e) => self.fail_stop("cannot persist the generation", e.to_string()),
        }
    }

    async fn record_disk(&mut self, checkpoint: Option<CheckpointId>) -> bool {
        let labelled = self.disk.borrow_mut().set_label(label(checkpoint));
        match labelled {
            Ok(()) => true,
            Err(e) => self.fail_stop("cannot label the disk", e.to_string()),
        }
    }

    async fn service(&mut self, want: Service) {
        let Some(address) = &mut self.address else {
            return;
        };
        match want {
            Service::Hold(generation) => address.hold(generation).await,
            Service::Drop => address.release().await,
        }
    }

    fn guest_quantum_ns(&self) -> u64 {
        // A running guest runs whenever no input waits.
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_carry_the_checkpoint() {
        let id = CheckpointId {
            generation: Generation(7),
            epoch: Epoch(123_456),
        };
        let l = label(Some(id)).expect("a label");
        assert_eq!(checkpoint_of(l), id);
        assert_eq!(label(None), None);
    }
}
