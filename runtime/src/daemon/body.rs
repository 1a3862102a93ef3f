//! The node daemon's body: the event loop of one VM host, written once over
//! a small seam (a transport, a clock, durable storage, the service
//! address). `lockstep node` runs it over tokio sockets and the OS clock;
//! the simulator runs the very same loop over turmoil and simulated time.
//! The loop owns the order of things: an input, the driver's step, then
//! every effect the step produced, each completed before the next (a
//! generation is durable before the frame that names it leaves).

use crate::driver::{Effect, Transmit, VmHost};
use machine::devices::Packet;
use machine::Engine;
use protocol::wire::Unsealed;
use protocol::{CheckpointId, Generation, NodeId, RoleKind, Time};

/// Effects completed after one input at most; a step produces a handful
/// (a delta's chunks, its acks, released outputs), so this only bounds a
/// driver that would loop.
pub const EFFECTS_PER_STEP_MAX: usize = 1 << 20;

/// What woke the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A protocol frame from the peer or the witness.
    Frame(Vec<u8>),
    /// A client's packet for the guest.
    Client(Packet),
    /// The wake time passed: run the guest, fire the protocol's timers.
    Wake,
    /// The host was frozen (a stopped process, a paused machine) and runs
    /// again: the guest ran no instructions meanwhile.
    Thawed,
}

/// The service address, as the loop wants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// This host is the running primary of `generation`: hold the address
    /// and announce it (again: the loop repeats it every heartbeat).
    Hold(Generation),
    /// This host is no longer primary: let the address go.
    Drop,
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The seam has no host any more (it failed, or the seam stopped it).
    HostGone,
    /// The seam was asked to stop.
    Stopped,
}

/// What the loop needs from its world. Every method that can fail reports
/// the failure to its world and answers with `None`/`false` (the host is
/// gone) rather than bubbling an error: what a failure means (a fail-stop
/// in the simulator, an exit on a real host) is the world's to say.
#[allow(async_fn_in_trait)]
pub trait Seam {
    /// The engine the host's guest runs on.
    type Engine: Engine;

    /// The host's clock.
    fn now(&self) -> Time;

    /// Runs one step of the driver. `None`: there is no host (it failed in
    /// this step or before; the seam has recorded why).
    fn with_host<R>(
        &mut self,
        now: Time,
        step: impl FnOnce(&mut VmHost<Self::Engine>) -> Result<R, crate::HostError>,
    ) -> Option<R>;

    /// The next input, waiting at most until `wake` (an input already
    /// there comes first). `None`: stop.
    async fn next_input(&mut self, wake: Time) -> Option<Input>;

    /// Sends a protocol frame to `to`. A full queue or a lost link loses
    /// it: the protocol retransmits what matters.
    async fn send_frame(&mut self, to: NodeId, frame: Unsealed);

    /// Sends a guest output the protocol released in `generation`.
    async fn send_output(&mut self, generation: Generation, packet: Packet);

    /// Makes `generation` durable before returning. `false`: it could not
    /// (the host must not go on).
    async fn persist_generation(&mut self, generation: Generation) -> bool;

    /// Records durably that the disk holds `checkpoint`. `false`: it could
    /// not (the host must not go on).
    async fn record_disk(&mut self, checkpoint: Option<CheckpointId>) -> bool;

    /// Holds or drops the service address.
    async fn service(&mut self, want: Service);

    /// How long the loop may wait with nothing to do while the guest runs
    /// (the simulator wakes every simulated millisecond to run the guest;
    /// a real host with a running guest does not wait at all).
    fn guest_quantum_ns(&self) -> u64;
}

/// Runs the host behind `seam` until the seam has no host or stops.
pub async fn serve<S: Seam>(seam: &mut S) -> Ended {
    let mut address = AddressState::default();
    loop {
        let now = seam.now();
        let quantum = seam.guest_quantum_ns();
        let Some(wake) = seam.with_host(now, |h| Ok(wake_time(h, now, quantum))) else {
            return Ended::HostGone;
        };
        let Some(input) = seam.next_input(wake).await else {
            return Ended::Stopped;
        };
        let now = seam.now();
        let stepped = seam.with_host(now, |h| match input {
            Input::Frame(bytes) => h.handle_frame(now, &bytes),
            Input::Client(packet) => h.handle_client_packet(now, packet),
            Input::Wake => h.advance(now),
            Input::Thawed => {
                h.thaw(now);
                Ok(())
            }
        });
        if stepped.is_none() || !complete_effects(seam, now).await {
            return Ended::HostGone;
        }
        if !address.update(seam, now).await {
            return Ended::HostGone;
        }
    }
}

/// When the loop must wake at the latest: the driver's next deadline, and
/// at least every `quantum_ns` while the guest runs, unless it sleeps with
/// nothing due (then its next device deadline; an input wakes the loop
/// anyway).
fn wake_time<E: Engine>(host: &VmHost<E>, now: Time, quantum_ns: u64) -> Time {
    let deadline = host.next_deadline();
    if !host.is_running() {
        return deadline;
    }
    match host.guest_idle_until() {
        Some(until) => deadline.min(until),
        None => deadline.min(now.add_ns(quantum_ns)),
    }
}

/// Completes every effect that is due, in order. `false`: the host is gone
/// or a durable effect failed.
async fn complete_effects<S: Seam>(seam: &mut S, now: Time) -> bool {
    for _ in 0..EFFECTS_PER_STEP_MAX {
        let Some(next) = seam.with_host(now, |h| {
            Ok(h.poll_effect(now).map(|e| (e, h.node().generation())))
        }) else {
            return false;
        };
        let Some((effect, generation)) = next else {
            return true;
        };
        let done = match effect {
            Effect::Transmit(Transmit::Frame { to, frame }) => {
                seam.send_frame(to, frame).await;
                true
            }
            Effect::Transmit(Transmit::Output(packet)) => {
                seam.send_output(generation, packet).await;
                true
            }
            Effect::PersistGeneration(g) => seam.persist_generation(g).await,
            Effect::DiskHolds(checkpoint) => seam.record_disk(checkpoint).await,
        };
        if !done {
            return false;
        }
    }
    panic!("more than {EFFECTS_PER_STEP_MAX} effects after one input: the driver loops")
}

/// The service address as last asked of the seam.
#[derive(Debug, Default)]
struct AddressState {
    /// Held in this generation; `None` when not held.
    held: Option<Generation>,
    /// When to announce it again.
    next_announce: Time,
}

impl AddressState {
    /// Holds the address while the host is the running primary (announced
    /// again every heartbeat), drops it once it is not. `false`: no host.
    async fn update<S: Seam>(&mut self, seam: &mut S, now: Time) -> bool {
        let Some((primary, heartbeat_ns)) = seam.with_host(now, |h| {
            let primary =
                (h.role() == RoleKind::Primary && h.is_running()).then(|| h.node().generation());
            Ok((primary, h.node().config().heartbeat_interval_ns))
        }) else {
            return false;
        };
        match primary {
            Some(generation) if now >= self.next_announce || self.held != Some(generation) => {
                self.held = Some(generation);
                self.next_announce = now.add_ns(heartbeat_ns);
                seam.service(Service::Hold(generation)).await;
            }
            Some(_) => {}
            None if self.held.is_some() => {
                self.held = None;
                seam.service(Service::Drop).await;
            }
            None => {}
        }
        true
    }
}
