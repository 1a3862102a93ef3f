//! The software of each turmoil host: VM hosts, the witness, the switch and
//! the clients. Each is a loop over its sockets and a timer; all state lives
//! in the shared [`World`], borrowed only between awaits.

use crate::trace::Kind;
use crate::world::{
    client_name, World, CLAIM_PORT, CLIENT_PORT, FRAME_PORT, HOST_NAMES, SERVICE_PORT,
};
use cpu_model::EmuEngine;
use protocol::wire::Unsealed;
use protocol::{CheckpointId, Generation, NodeId, Time};
use runtime::daemon::{Input, Service};
use runtime::{HostError, VmHost};
use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::Duration;
use turmoil::net::UdpSocket;

/// Largest datagram: a protocol frame with a full chunk.
const DATAGRAM_BYTES_MAX: usize = 64 * 1024;
/// A VM host wakes at least this often to run its guest.
const GUEST_QUANTUM_NS: u64 = 1_000_000;

/// Simulated time since the start of the run.
pub fn now() -> Time {
    let elapsed = turmoil::sim_elapsed().unwrap_or_default();
    Time(u64::try_from(elapsed.as_nanos()).expect("runs are shorter than 584 years"))
}

async fn bind(port: u16) -> std::io::Result<UdpSocket> {
    UdpSocket::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)).await
}

async fn send_all(socket: &UdpSocket, sends: Vec<(String, u16, Vec<u8>)>) {
    for (host, port, bytes) in sends {
        // A full socket buffer or an unknown peer loses the datagram, as a
        // real network would; the protocol retransmits what matters.
        let _ = socket.send_to(&bytes, (host.as_str(), port)).await;
    }
}

async fn sleep_until(at: Time) {
    let now = now();
    tokio::time::sleep(Duration::from_nanos(at.0.saturating_sub(now.0).max(1))).await;
}

/// A VM host: boots (or reboots empty), then runs the node daemon's body
/// over this simulated world until it is crashed.
pub async fn vm_host(world: Rc<RefCell<World>>, index: usize) -> turmoil::Result {
    let frames = bind(FRAME_PORT).await?;
    let service = bind(SERVICE_PORT).await?;
    world.borrow_mut().boot_host(index, now());
    let mut seam = SimSeam {
        world,
        index,
        frames,
        service,
        buf: vec![0u8; DATAGRAM_BYTES_MAX],
        buf2: vec![0u8; DATAGRAM_BYTES_MAX],
    };
    runtime::daemon::serve(&mut seam).await;
    // The host failed (fail-stop): its sockets stay bound and read
    // nothing, as a dead machine's would, until the host restarts.
    loop {
        tokio::select! {
            r = seam.frames.recv_from(&mut seam.buf) => { r?; }
            r = seam.service.recv_from(&mut seam.buf2) => { r?; }
        }
    }
}

/// The daemon's seam in the simulated world: turmoil sockets, simulated
/// time, the world's fault tables, and the oracle's bookkeeping.
struct SimSeam {
    world: Rc<RefCell<World>>,
    index: usize,
    frames: UdpSocket,
    service: UdpSocket,
    /// Receive buffers of the frame and the service socket.
    buf: Vec<u8>,
    buf2: Vec<u8>,
}

impl SimSeam {
    async fn send(&self, sends: Vec<(String, u16, Vec<u8>)>) {
        send_all(&self.frames, sends).await;
    }

    /// Frozen by a pause fault: reads nothing (what arrives meanwhile is
    /// lost) until resumed.
    async fn wait_while_paused(&mut self) {
        while self.world.borrow().hosts[self.index].paused {
            tokio::time::sleep(Duration::from_nanos(GUEST_QUANTUM_NS)).await;
            while self.frames.try_recv_from(&mut self.buf).is_ok() {}
            while self.service.try_recv_from(&mut self.buf2).is_ok() {}
        }
    }
}

impl runtime::daemon::Seam for SimSeam {
    type Engine = EmuEngine;

    fn now(&self) -> Time {
        now()
    }

    fn with_host<R>(
        &mut self,
        now: Time,
        step: impl FnOnce(&mut VmHost<EmuEngine>) -> Result<R, HostError>,
    ) -> Option<R> {
        self.world.borrow_mut().with_host(self.index, now, step)
    }

    async fn next_input(&mut self, wake: Time) -> Option<Input> {
        if self.world.borrow().hosts[self.index].paused {
            self.wait_while_paused().await;
            return Some(Input::Thawed);
        }
        loop {
            tokio::select! {
                biased;
                received = self.frames.recv_from(&mut self.buf) => {
                    let (n, _) = received.ok()?;
                    // A NIC that is down takes nothing in, frames neither.
                    if !self.world.borrow().hosts[self.index].nic_down {
                        return Some(Input::Frame(self.buf[..n].to_vec()));
                    }
                }
                received = self.service.recv_from(&mut self.buf2) => {
                    let (n, _) = received.ok()?;
                    // A NIC that is down takes nothing in.
                    if !self.world.borrow().hosts[self.index].nic_down {
                        return Some(Input::Client(self.buf2[..n].to_vec()));
                    }
                }
                () = sleep_until(wake) => return Some(Input::Wake),
            }
        }
    }

    async fn send_frame(&mut self, to: NodeId, frame: Unsealed) {
        let sends = self
            .world
            .borrow_mut()
            .host_frame(self.index, now(), to, frame.seal());
        self.send(sends).await;
    }

    async fn send_output(&mut self, generation: Generation, packet: Vec<u8>) {
        let sends = self
            .world
            .borrow_mut()
            .host_output(self.index, now(), generation, packet);
        self.send(sends).await;
    }

    async fn persist_generation(&mut self, generation: Generation) -> bool {
        self.world.borrow_mut().hosts[self.index].persisted = generation;
        true
    }

    async fn record_disk(&mut self, checkpoint: Option<CheckpointId>) -> bool {
        self.world.borrow_mut().hosts[self.index].disk_checkpoint = checkpoint;
        true
    }

    async fn service(&mut self, want: Service) {
        // The switch follows the last claim; dropping the address is the
        // next primary's claim.
        let Service::Hold(generation) = want else {
            return;
        };
        let nic_down = self.world.borrow().hosts[self.index].nic_down;
        if !nic_down {
            let claim = generation.0.to_le_bytes();
            let _ = self.frames.send_to(&claim, ("switch", CLAIM_PORT)).await;
        }
    }

    fn guest_quantum_ns(&self) -> u64 {
        GUEST_QUANTUM_NS
    }
}

/// The witness: answers frames; its grant survives crashes.
pub async fn witness(world: Rc<RefCell<World>>) -> turmoil::Result {
    let socket = bind(FRAME_PORT).await?;
    world.borrow_mut().boot_witness(now());
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    loop {
        let (n, _) = socket.recv_from(&mut buf).await?;
        let t = now();
        let sends = {
            let mut w = world.borrow_mut();
            if let Some(witness) = w.witness.host.as_mut() {
                witness.handle_frame(t, &buf[..n]);
            }
            w.witness_sends(t)
        };
        send_all(&socket, sends).await;
    }
}

/// The switch: the host that last claimed the service address gets the
/// clients' requests (as a gratuitous ARP moves a virtual IP). Clients
/// then send to that host directly, so a link fault between a client and
/// a host strikes requests and replies alike.
pub async fn switch(world: Rc<RefCell<World>>) -> turmoil::Result {
    let claims = bind(CLAIM_PORT).await?;
    let mut claim = [0u8; 64];
    loop {
        let (_, from) = claims.recv_from(&mut claim).await?;
        let name = turmoil::reverse_lookup(from.ip());
        let owner = HOST_NAMES.iter().position(|h| name.as_deref() == Some(*h));
        let mut w = world.borrow_mut();
        if owner.is_some() && w.switch_owner != owner {
            let t = now();
            w.trace.record(t.0, "switch", Kind::ServiceAddress, || {
                format!("service address now at {owner:?}")
            });
            w.switch_owner = owner;
        }
    }
}

/// A client: sends its requests through the switch, retries, records.
pub async fn client(world: Rc<RefCell<World>>, index: u16) -> turmoil::Result {
    let socket = bind(CLIENT_PORT).await?;
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    loop {
        let t = now();
        let (sends, next) = {
            let mut w = world.borrow_mut();
            let client = &mut w.clients[usize::from(index)];
            let packets = client.sends(t);
            let next = client.next_retry();
            (w.client_sends(index, t, packets), next)
        };
        send_all(&socket, sends).await;
        let wake = next.unwrap_or(t.add_ns(50_000_000));
        tokio::select! {
            biased;
            received = socket.recv_from(&mut buf) => {
                let (n, _) = received?;
                let t = now();
                let mut w = world.borrow_mut();
                let name = client_name(index);
                w.trace.record(t.0, &name, Kind::Reply, || format!("reply {:016x}", crate::trace::digest(&buf[..n])));
                w.clients[usize::from(index)].receive(t, &buf[..n]);
            }
            () = sleep_until(wake) => {}
        }
    }
}
