//! The `Engine` trait: what the machine needs from whatever executes the
//! guest. `cpu-model` implements it on unicorn, `runtime` on KVM.
//!
//! Port I/O reaches devices through the [`DeviceBus`] the machine owns and
//! lends to [`Engine::run`]: the emulated engine calls it from its `in`/`out`
//! hooks, the KVM engine from its `KVM_EXIT_IO` handling. No device code
//! lives in an engine.
//!
//! Pausing: `run` returns with every vCPU stopped at an instruction
//! boundary, and the machine is paused until the next `run`. The emulated
//! engine gets this for free (one thread); a threaded engine (KVM: one host
//! thread per vCPU) stops its vCPU threads (signal + `immediate_exit`) and
//! collects their state before `run` returns, and forwards its vCPU
//! threads' port I/O exits to the thread that holds the bus.

use crate::codec::{DecodeError, Reader, Writer};
use crate::devices::DeviceBus;
use crate::units::{Gpa, GuestNs, Instructions, PageIndex, VcpuId};
use crate::vcpu::VcpuState;

/// Why a guest stopped for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// An instruction the engine does not execute.
    InvalidOpcode,
    /// A memory access outside guest memory.
    MemoryOutOfRange {
        /// The address accessed.
        address: u64,
    },
    /// An exception the guest cannot handle (it has no IDT): a triple fault.
    TripleFault {
        /// The exception vector.
        vector: u32,
    },
    /// Anything else the engine reports.
    Other(String),
}

/// Error from an engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The guest faulted; the run cannot go on.
    #[error("guest fault on vCPU {vcpu} at rip {rip:#x}: {kind:?}\n{disassembly}", vcpu = vcpu.0)]
    GuestFault {
        /// The faulting vCPU.
        vcpu: VcpuId,
        /// Its instruction pointer.
        rip: u64,
        /// What went wrong.
        kind: FaultKind,
        /// The instructions at rip, disassembled.
        disassembly: String,
    },
    /// A guest-physical range outside memory.
    #[error("address range {gpa:#x}+{len} is outside guest memory", gpa = gpa.0)]
    OutOfRange {
        /// Start of the range.
        gpa: Gpa,
        /// Length in bytes.
        len: usize,
    },
    /// No such vCPU.
    #[error("no vCPU {0}")]
    NoSuchVcpu(u16),
    /// Saved engine state that cannot be restored.
    #[error("bad engine state: {0}")]
    BadState(String),
    /// The backend (unicorn, KVM) failed.
    #[error("engine backend: {0}")]
    Backend(String),
    /// An interrupt raised on a vCPU that does not deliver through an IDT
    /// (its guest has none).
    #[error("vCPU {0} has no IDT to deliver an interrupt through")]
    NoInterruptDelivery(u16),
}

/// How a call to [`Engine::run`] ended. The guest is paused either way,
/// unless the engine was told to keep its vCPUs running
/// ([`Engine::keep_running`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunExit {
    /// The budget is spent.
    BudgetSpent,
    /// The budget is spent and every vCPU sleeps in `hlt` with no wake
    /// event pending: the machine waits for input.
    Idle,
    /// The run's [`RunWaker`] was called: the run ended before its budget
    /// was spent (the host has input to take).
    Woken,
}

/// Ends an engine's current run early, from any thread: a host whose
/// network threads queue an input for the thread that runs the guest
/// calls it, so the input waits microseconds, not the rest of a slice. A
/// wake while no run is under way ends the next run at once.
#[derive(Clone)]
pub struct RunWaker(std::sync::Arc<dyn Fn() + Send + Sync>);

impl RunWaker {
    /// A waker that calls `wake`.
    pub fn new(wake: impl Fn() + Send + Sync + 'static) -> RunWaker {
        RunWaker(std::sync::Arc::new(wake))
    }

    /// Ends the current (or next) run.
    pub fn wake(&self) {
        (self.0)();
    }
}

impl std::fmt::Debug for RunWaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunWaker")
    }
}

/// Counters an engine keeps about its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineStats {
    /// Guest instructions retired, all vCPUs together.
    pub instructions: Instructions,
    /// Times the engine switched from one vCPU to another.
    pub vcpu_switches: u64,
    /// Write-protection faults taken for dirty tracking.
    pub dirty_faults: u64,
}

/// Runs a machine's vCPUs over its memory.
pub trait Engine {
    /// Runs the vCPUs until `budget` of guest time is spent (one
    /// instruction counts one nanosecond on the emulated engine), calling
    /// `bus` for every port access. Returns with all vCPUs paused.
    fn run(&mut self, bus: &mut DeviceBus, budget: Instructions) -> Result<RunExit, EngineError>;
    /// Current guest time.
    fn now(&self) -> GuestNs;
    /// Reads guest memory.
    fn read_memory(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), EngineError>;
    /// Writes guest memory; the pages count as dirty.
    fn write_memory(&mut self, gpa: Gpa, bytes: &[u8]) -> Result<(), EngineError>;
    /// The pages written since the last call (or since boot), sorted; then
    /// starts tracking afresh.
    fn take_dirty_pages(&mut self) -> Result<Vec<PageIndex>, EngineError>;
    /// The state of one vCPU.
    fn vcpu_state(&self, vcpu: VcpuId) -> Result<VcpuState, EngineError>;
    /// Replaces the state of one vCPU.
    fn set_vcpu_state(&mut self, vcpu: VcpuId, state: &VcpuState) -> Result<(), EngineError>;
    /// Engine-private state a checkpoint must carry for the run to go on
    /// identically (the emulated engine's clock, scheduler and rng).
    fn save_engine_state(&self) -> Vec<u8>;
    /// Restores what [`Engine::save_engine_state`] returned.
    fn restore_engine_state(&mut self, bytes: &[u8]) -> Result<(), EngineError>;
    /// Names the format of [`Engine::save_engine_state`]: a checkpoint's
    /// engine state is restored only on an engine of the same name.
    fn engine_name(&self) -> &'static str {
        std::any::type_name::<Self>()
    }
    /// Takes over a checkpoint written by another engine (see
    /// [`Engine::engine_name`]): only guest time carries over, so the
    /// clock and the devices' deadlines stay one time line; the engine
    /// resets its private state around `now`.
    fn adopt_foreign_state(&mut self, now: GuestNs) -> Result<(), EngineError> {
        Err(EngineError::BadState(format!(
            "{} cannot take over another engine's checkpoint at {} ns",
            self.engine_name(),
            now.0
        )))
    }
    /// Counters.
    fn stats(&self) -> EngineStats;
    /// Whether the vCPUs go on running after [`Engine::run`] returns, until
    /// the next run serves their port accesses or [`Engine::settle`] stops
    /// them (a real host: the guest computes while the host's thread
    /// handles a frame). Off by default; an engine whose vCPUs cannot run
    /// outside the call (the emulated engine runs them on the caller's
    /// thread) ignores it.
    fn keep_running(&mut self, _keep: bool) {}
    /// Stops every vCPU a run left running (see [`Engine::keep_running`]),
    /// serving their last port accesses on `bus`. Reading or writing vCPU
    /// state and saving the engine's state need it first; guest memory
    /// and the dirty log may be read while the vCPUs run.
    fn settle(&mut self, _bus: &mut DeviceBus) -> Result<(), EngineError> {
        Ok(())
    }
    /// A waker that ends this engine's runs early, if it has one.
    fn waker(&self) -> Option<RunWaker> {
        None
    }
    /// Backs all of guest memory with host pages now, in the background,
    /// leaving its bytes as they are. A real host that will receive the
    /// whole guest (a joiner's copy, a backup's deltas) then does not pay
    /// for each page as the copy first touches it: on a virtualised host
    /// that is microseconds a page, most of a second for 256 MiB, and all
    /// of it inside the joiner's apply step. Not called in the simulator,
    /// where every machine costs the memory its guest uses. An engine
    /// that cannot does nothing.
    fn back_memory(&mut self) {}
}

/// The engine part of a checkpoint: the writing engine's name and guest
/// time, engine-neutral, around the engine's private bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineEnvelope {
    /// [`Engine::engine_name`] of the engine that wrote it.
    pub name: String,
    /// Guest time at the checkpoint.
    pub now: GuestNs,
    /// What [`Engine::save_engine_state`] returned.
    pub private: Vec<u8>,
}

impl EngineEnvelope {
    /// The envelope of `engine`'s current state.
    pub fn of<E: Engine + ?Sized>(engine: &E) -> EngineEnvelope {
        EngineEnvelope {
            name: engine.engine_name().to_string(),
            now: engine.now(),
            private: engine.save_engine_state(),
        }
    }

    /// Encodes the envelope.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.blob(self.name.as_bytes());
        w.u64(self.now.0);
        w.blob(&self.private);
        w.into_bytes()
    }

    /// Decodes what [`EngineEnvelope::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<EngineEnvelope, DecodeError> {
        let mut r = Reader::new(bytes);
        let name = std::str::from_utf8(r.blob()?)
            .map_err(|_| DecodeError::Invalid("engine name".to_string()))?
            .to_string();
        let now = GuestNs(r.u64()?);
        let private = r.blob()?.to_vec();
        r.finish()?;
        Ok(EngineEnvelope { name, now, private })
    }

    /// Restores this envelope into `engine`: its own private state if it
    /// wrote it, else only guest time.
    pub fn restore_into<E: Engine + ?Sized>(&self, engine: &mut E) -> Result<(), EngineError> {
        if self.name == engine.engine_name() {
            engine.restore_engine_state(&self.private)
        } else {
            engine.adopt_foreign_state(self.now)
        }
    }
}
